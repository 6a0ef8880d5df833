/* vsock-proxy's allowlist: the YAML file that says which remote services
 * the enclave may reach through an outbound proxy
 * (/etc/nitro_enclaves/vsock-proxy.yaml):
 *
 *   allowlist:
 *   - {address: kms.us-east-1.amazonaws.com, port: 443}
 *   - address: kms-fips.us-east-1.amazonaws.com
 *     port: 443
 *
 * The parser reads exactly that shape, strictly: one `allowlist` key whose
 * value is a block sequence (items at any one indentation, or `[]`) of
 * mappings with `address` (string) and `port` (1..65535), each written in
 * flow style `{...}` or block style.  Comments, blank lines, a leading
 * `---`, CRLF line ends and 'single' or "double" quoted scalars (without
 * escapes) are accepted; tabs, anchors, tags, multi-line values and
 * duplicate keys are rejected with the line number.  Other keys are
 * ignored, as vsock-proxy (which looks up only `allowlist`, and `address`
 * and `port` in each entry) ignores them: at the top level with whatever
 * value, in an entry with a one-line scalar value.
 *
 * Matching follows vsock-proxy: an entry matches when its port equals the
 * remote port and either its address equals the remote host name (byte
 * for byte, as vsock-proxy compares them) or one of the addresses the entry
 * resolves to equals the first address the remote host resolves to. */
#ifndef CLOISTER_ALLOWLIST_H
#define CLOISTER_ALLOWLIST_H

#pragma GCC visibility push(default)

#include "cloister/core/error.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define CL_ALLOWLIST_DEFAULT_PATH "/etc/nitro_enclaves/vsock-proxy.yaml"
#define CL_ALLOWLIST_ADDRESS_MAX 256
#define CL_ALLOWLIST_MAX_ENTRIES 4096
#define CL_ALLOWLIST_MAX_FILE (1024 * 1024)

typedef struct cl_allow_entry {
    char address[CL_ALLOWLIST_ADDRESS_MAX];
    uint16_t port;
    unsigned line; /* where it is in the file, for messages */
} cl_allow_entry;

typedef struct cl_allowlist {
    cl_allow_entry *entries;
    size_t count;
} cl_allowlist;

CL_MUST_CHECK int cl_allowlist_parse(const uint8_t *text, size_t len, cl_allowlist *out);
/* Reads and parses a file; messages name the path and line. */
CL_MUST_CHECK int cl_allowlist_load(const char *path, cl_allowlist *out);
void cl_allowlist_free(cl_allowlist *a);

/* Resolves host into at most max addresses (ports ignored); *n = 0 or an
 * error when it does not resolve. */
typedef int (*cl_allow_resolve_fn)(void *ctx, const char *host, struct sockaddr_storage *addrs, size_t max,
                                   size_t *n);

/* 0 and *matched when host:port is allowed; CL_EVERIFY, with a message
 * naming host:port and how many entries were checked, when it is not.
 * remote is the address host resolved to (the one vsock-proxy compares);
 * NULL skips matching by address.  resolve may be NULL likewise. */
CL_MUST_CHECK int cl_allowlist_check(const cl_allowlist *a, const char *host, uint16_t port,
                                     const struct sockaddr *remote, cl_allow_resolve_fn resolve, void *ctx,
                                     const cl_allow_entry **matched);

#pragma GCC visibility pop

#endif

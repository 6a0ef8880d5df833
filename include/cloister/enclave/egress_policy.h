/* The enclave's egress policy: which destinations the TAP relay forwards.
 *
 * The file is YAML in enclaver's shape, so an enclaver manifest carries
 * over unchanged (its other top-level keys are accepted and ignored):
 *
 *   egress:
 *     allow:
 *       - api.example.com          # a host name
 *       - "*.s3.amazonaws.com"     # * is one label; ** (leftmost) one or more
 *       - 10.0.0.0/8               # a CIDR, IPv4 or IPv6; a bare IP is /32 or /128
 *       - "kms.us-east-1.amazonaws.com:443"   # :PORT or :LO-HI limits a rule
 *       - "[2001:db8::/32]:443"
 *     deny:
 *       - 10.0.0.1
 *
 * Deny by default; a deny rule wins over every allow rule.  A rule with a
 * port matches TCP and UDP to that port only (never ICMP); one without a
 * port matches every protocol.  Names are case-insensitive and a trailing
 * dot is ignored.  Host names are enforced through the addresses DNS
 * answers for them (see egress_packet.h), so a name rule trusts the
 * resolver's answers: it confines the enclave's own software, it does not
 * make the parent honest.
 *
 * The policy is parsed once at start and read-only after, so any thread
 * may query it. */
#ifndef CLOISTER_EGRESS_POLICY_H
#define CLOISTER_EGRESS_POLICY_H
#pragma GCC visibility push(default)

#include "cloister/core/error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CL_EGRESS_MAX_RULES 1024
#define CL_EGRESS_MAX_FILE (1u << 20)
#define CL_EGRESS_NAME_MAX 253

typedef struct cl_egress_policy cl_egress_policy;

/* Parses YAML text; `source` names it in errors ("policy.yaml:7: ...").
 * Errors: CL_EPARSE (not YAML, or not the shape above; the message names
 * the line), CL_ELIMIT (too many rules), CL_ENOMEM. */
CL_MUST_CHECK int cl_egress_policy_parse(const uint8_t *text, size_t len, const char *source,
                                         cl_egress_policy **out);
/* Reads the file (at most CL_EGRESS_MAX_FILE bytes) and parses it. */
CL_MUST_CHECK int cl_egress_policy_load(const char *path, cl_egress_policy **out);
void cl_egress_policy_free(cl_egress_policy *p);

/* SHA-256 of the file's bytes exactly as read: what the enclave is. */
void cl_egress_policy_sha256(const cl_egress_policy *p, uint8_t out[static 32]);
const char *cl_egress_policy_sha256_hex(const cl_egress_policy *p);

/* The rules as written (trimmed), for /enclave/config and logs. */
size_t cl_egress_policy_count(const cl_egress_policy *p, bool deny);
const char *cl_egress_policy_rule(const cl_egress_policy *p, bool deny, size_t i);

/* An address family (AF_INET, AF_INET6) and its 4 or 16 bytes. */
typedef struct cl_egress_addr {
    int family;
    uint8_t b[16];
} cl_egress_addr;

/* port: the TCP/UDP destination port, or -1 for a protocol without ports. */
enum cl_egress_match {
    CL_EGRESS_NO_MATCH = 0,
    CL_EGRESS_MATCH = 1,
    CL_EGRESS_MATCH_OTHER_PORT = 2, /* a rule names the destination, for other ports */
};
/* Allow and deny lists, for an address: IP/CIDR rules only. */
int cl_egress_policy_match_addr(const cl_egress_policy *p, bool deny, const cl_egress_addr *a, int port);
/* For a host name (lower case or not, trailing dot or not): name rules only. */
int cl_egress_policy_match_name(const cl_egress_policy *p, bool deny, const char *name, int port);
/* Whether a name may be resolved at all: some allow rule names it (any
 * port) and no port-less deny rule does. */
bool cl_egress_policy_name_resolvable(const cl_egress_policy *p, const char *name);

/* Address text (inet_ntop) into buf of at least 46 bytes. */
const char *cl_egress_addr_text(const cl_egress_addr *a, char *buf, size_t len);

#pragma GCC visibility pop
#endif

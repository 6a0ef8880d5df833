/* Endpoint addresses: vsock:CID:PORT, unix:PATH, tcp:HOST:PORT.
 * The same code path serves Nitro (vsock) and a laptop (unix sockets). */
#ifndef CLOISTER_ADDRESS_H
#define CLOISTER_ADDRESS_H

#pragma GCC visibility push(default)

#include "cloister/core/error.h"

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

enum cl_address_kind { CL_ADDR_VSOCK, CL_ADDR_UNIX, CL_ADDR_TCP };

#define CL_ADDRESS_HOST_MAX 256
#define CL_ADDRESS_PATH_MAX 108 /* sizeof(sun_path) */

typedef struct cl_address {
    int kind;
    uint32_t cid;                   /* vsock */
    uint32_t port;                  /* vsock, tcp */
    char host[CL_ADDRESS_HOST_MAX]; /* tcp; brackets of [v6] removed */
    char path[CL_ADDRESS_PATH_MAX]; /* unix */
} cl_address;

CL_MUST_CHECK int cl_address_parse(const char *text, cl_address *out);
/* Canonical text form, as accepted by cl_address_parse. */
void cl_address_format(const cl_address *a, char *out, size_t out_len);

/* Stream sockets, close-on-exec.  listen() replaces a stale unix socket
 * file but refuses to replace anything that is not a socket. */
CL_MUST_CHECK int cl_address_listen(const cl_address *a, int backlog, int *fd_out);
CL_MUST_CHECK int cl_address_connect(const cl_address *a, int *fd_out);

/* socket(2) for every kind, except that AF_VSOCK fails with EPERM while
 * CLOISTER_NO_VSOCK is set (to anything but "" or "0").  The test suites
 * set it: on the machines they run on, vsock belongs to the machine's own
 * agent, and no test may open a vsock socket whatever address it is given. */
int cl_socket(int family, int type);
bool cl_vsock_disabled(void);

/* The file of a unix listener, remembered right after listen() so that it
 * is removed at the end only if it is still the one we made (another
 * process may have replaced it since).  Other kinds: nothing to remove. */
typedef struct cl_socket_file {
    char path[CL_ADDRESS_PATH_MAX];
    dev_t dev;
    ino_t ino;
    bool set;
} cl_socket_file;
void cl_socket_file_remember(const cl_address *a, cl_socket_file *f);
void cl_socket_file_remove(cl_socket_file *f);

#pragma GCC visibility pop

#endif

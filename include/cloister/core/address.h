/* Endpoint addresses: vsock:CID:PORT, unix:PATH, tcp:HOST:PORT.
 * The same code path serves Nitro (vsock) and a laptop (unix sockets). */
#ifndef CLOISTER_ADDRESS_H
#define CLOISTER_ADDRESS_H

#pragma GCC visibility push(default)

#include "cloister/core/error.h"

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
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
/* The same, a TCP connection given up after timeout_ms (0: no limit but
 * the kernel's); unix and vsock connections as cl_address_connect. */
CL_MUST_CHECK int cl_address_connect_timeout(const cl_address *a, unsigned timeout_ms, int *fd_out);

/* socket(2) for every kind into *fd: 0, or CL_EIO with errno kept as
 * socket(2) left it.  AF_VSOCK fails with CL_EINVAL (errno EPERM) while
 * CLOISTER_NO_VSOCK is set (to anything but "" or "0").  The test suites
 * set it: on the machines they run on, vsock belongs to the machine's own
 * agent, and no test may open a vsock socket whatever address it is given. */
CL_MUST_CHECK int cl_socket(int family, int type, int *fd);
bool cl_vsock_disabled(void);

/* The vsock stand-in (a seam for tests and `cloister dev`): with
 * CLOISTER_VSOCK_STANDIN=DIR set, every vsock address still goes through
 * the vsock code, and only the last bind()/connect() is made on the unix
 * socket DIR/CID.PORT instead.  A listener on VMADDR_CID_ANY (or CID 1)
 * binds DIR/LOCAL.PORT, LOCAL being CLOISTER_VSOCK_STANDIN_CID (the CID
 * this side has: the enclave's CID inside it, 3 on the parent); a listener
 * on another CID than LOCAL fails as vsock's bind() does.  A dialer naming
 * CID C meets the listener of the side whose CID is C.  No AF_VSOCK socket
 * is opened, so this works with CLOISTER_NO_VSOCK set. */
struct sockaddr;
struct sockaddr_vm;
struct sockaddr_un;
struct sockaddr_storage;
bool cl_vsock_standin_active(void);
/* 0 with *applies (and *out filled) when the stand-in is in use, or a
 * negative cl_err. */
CL_MUST_CHECK int cl_vsock_standin_sockaddr(const struct sockaddr_vm *svm, bool listening, struct sockaddr_un *out,
                                            bool *applies);
/* The address to give the last bind()/connect(): sa itself, or for
 * AF_VSOCK under the stand-in, its unix socket.  Every place that makes a
 * socket from a sockaddr calls it right before socket(). */
CL_MUST_CHECK int cl_sockaddr_final(const struct sockaddr *sa, socklen_t len, bool listening,
                                    struct sockaddr_storage *out, socklen_t *out_len);

/* Links between the enclave and its parent: AF_VSOCK sockets, and under
 * the stand-in the unix sockets in CLOISTER_VSOCK_STANDIN's directory. */
bool cl_socket_is_link(int fd);
/* recv(2) for any socket that may be such a link.  The kernel nitro-cli
 * 1.5.0 gives enclaves (4.14) answers MSG_PEEK on vsock with EOPNOTSUPP;
 * with CLOISTER_LINK_NO_PEEK set, MSG_PEEK on a link fails so here too.
 * recv(2)'s contract (a byte count, or -1 and errno), not a cl_err. */
ssize_t cl_link_recv(int fd, void *buf, size_t len, int flags);
/* CLOISTER_LINK_NO_SPLICE set (read once per process): splice(2) from a
 * link fails with EINVAL, as on the enclave's 4.14 vsock, which has no
 * splice_read; callers that splice check it with cl_socket_is_link. */
bool cl_link_no_splice(void);

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

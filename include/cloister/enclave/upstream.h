/* HTTP/1.1 exchanges with the application behind the enclave's listener,
 * over a per-thread pool of keep-alive connections.
 *
 * An owner (an HTTP/1.1 client connection or an HTTP/2 stream) begins an
 * exchange with a serialized request head, pushes the request body, and
 * receives the response head and the decoded response body through
 * callbacks, with backpressure both ways: cl_upstream_send takes only what
 * fits, on_data returns what the owner took. */
#ifndef CLOISTER_UPSTREAM_H
#define CLOISTER_UPSTREAM_H

#pragma GCC visibility push(default)

#include "cloister/core/address.h"
#include "cloister/core/error.h"
#include "cloister/core/http.h"
#include "cloister/core/loop.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

typedef struct cl_upstream_target {
    int family;
    struct sockaddr_storage sa;
    socklen_t sa_len;
    char text[272]; /* for logs: "127.0.0.1:8081", "unix:/run/app.sock" (a host name is up to 255) */
} cl_upstream_target;

/* "http://HOST:PORT", "unix:PATH" or "tcp:HOST:PORT"; resolved once. */
CL_MUST_CHECK int cl_upstream_target_parse(const char *text, cl_upstream_target *out);

typedef struct cl_upstream_pool cl_upstream_pool;
typedef struct cl_upstream cl_upstream;

typedef struct cl_upstream_limits {
    size_t max_header_bytes;   /* response head */
    unsigned connect_timeout_ms;
    unsigned response_timeout_ms; /* until the response head, and between body reads */
    unsigned idle_timeout_ms;     /* of pooled connections */
    size_t max_idle;              /* pooled connections kept */
    /* Connections to the app at most (connecting, busy and idle; 0: no
     * limit).  Exchanges beyond wait, without buffers or descriptors, for
     * a connection to come free, and fail with 503 after
     * response_timeout_ms. */
    size_t max_connections;
} cl_upstream_limits;

CL_MUST_CHECK int cl_upstream_pool_new(cl_loop *loop, const cl_upstream_target *target,
                                       const cl_upstream_limits *limits, cl_upstream_pool **out);
void cl_upstream_pool_free(cl_upstream_pool *pool);

typedef struct cl_upstream_ops {
    /* Informational (1xx) heads arrive too; a 101 for an upgrade request
     * turns the exchange into a raw tunnel: on_data then carries raw bytes. */
    void (*on_head)(void *owner, const cl_http_head *head);
    size_t (*on_data)(void *owner, const uint8_t *data, size_t len);
    void (*on_end)(void *owner);
    /* Before a head: status 502 (unreachable, reset) or 504 (timeout).
     * After a head: status 0, the response was cut short.  The exchange is
     * finished either way and must not be used again. */
    void (*on_error)(void *owner, int status, const char *why);
    void (*on_send_ready)(void *owner);
} cl_upstream_ops;

/* body: CL_HTTP_BODY_NONE, _LENGTH or _CHUNKED, as the head announces.
 * The head is copied.  Callbacks start from the loop, never from inside
 * this call. */
CL_MUST_CHECK int cl_upstream_begin(cl_upstream_pool *pool, const cl_upstream_ops *ops, void *owner,
                                    const uint8_t *head, size_t head_len, cl_slice method, int body, bool upgrade,
                                    cl_upstream **out);
/* Request body bytes (decoded); returns how many were taken. */
size_t cl_upstream_send(cl_upstream *u, const uint8_t *data, size_t len);
void cl_upstream_send_end(cl_upstream *u);
/* The owner has room again after returning less than offered from on_data. */
void cl_upstream_resume(cl_upstream *u);
/* The owner is gone or lost interest: no more callbacks. */
void cl_upstream_abort(cl_upstream *u);

#pragma GCC visibility pop

#endif

/* The HTTP server inside the enclave: TLS (or plain) HTTP/1.1 and HTTP/2
 * on one listener, one epoll loop per thread, local routes answered in
 * process and everything else streamed to the application.
 *
 * Limits have defaults a user can change; a slow or oversized client only
 * ever costs its own connection. */
#ifndef CLOISTER_SERVER_H
#define CLOISTER_SERVER_H

#pragma GCC visibility push(default)

#include "cloister/core/buf.h"
#include "cloister/core/error.h"
#include "cloister/core/http.h"
#include "cloister/enclave/upstream.h"

#include <openssl/ssl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct cl_server cl_server;

typedef struct cl_request_info {
    const cl_http_head *head; /* for HTTP/2 requests, a synthesized head */
    const uint8_t *body;
    size_t body_len;
    const char *peer; /* client address, "127.0.0.1:51234" */
    bool tls;
    SSL *ssl; /* the connection's TLS (its own certificate), NULL for plain HTTP */
} cl_request_info;

typedef struct cl_response {
    int status;
    const char *content_type; /* NULL: text/plain; charset=utf-8 */
    cl_buf body;
    char etag[72]; /* "": none; else sent as ETag (HTTP/1.1 answers) */
} cl_response;

/* route: a non-negative route id for requests answered in process, or -1
 * for the app.  handle: fills resp for a local route. */
typedef int (*cl_route_fn)(void *ctx, const cl_http_head *head);
typedef void (*cl_handle_fn)(void *ctx, int route, const cl_request_info *req, cl_response *resp);
/* Called once per finished request (route -1: the app), for metrics. */
typedef void (*cl_done_fn)(void *ctx, int route, int status, uint64_t duration_us);

typedef struct cl_server_stats {
    atomic_uint_fast64_t connections_open;
    atomic_uint_fast64_t connections_total;
    atomic_uint_fast64_t tls_handshakes;
    atomic_uint_fast64_t tls_resumptions; /* of tls_handshakes, those that resumed a session */
    atomic_uint_fast64_t tls_handshake_failures;
    atomic_uint_fast64_t connections_refused; /* over max_connections */
} cl_server_stats;

typedef struct cl_server_config {
    const char *name;          /* for logs: "public", "internal" */
    SSL_CTX *tls;              /* NULL: plain HTTP */
    /* when set, instead of tls: a context for each new connection, with a
     * reference the server drops (SSL_CTX_free) once the connection has it */
    SSL_CTX *(*tls_acquire)(void *ctx);
    const cl_upstream_target *app; /* NULL: local routes only, others 404 */
    unsigned threads;          /* 0: one per core */
    size_t max_header_bytes;   /* default 16 KiB */
    size_t max_local_body;     /* default 64 KiB */
    unsigned header_timeout_ms;   /* default 10 s: the whole head must arrive in time */
    unsigned idle_timeout_ms;     /* default 60 s */
    unsigned upstream_timeout_ms; /* default 60 s */
    unsigned max_connections;     /* default 10000 */
    /* What one client can make the app and this process hold:
     * concurrent HTTP/2 streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS,
     * so at most that many app exchanges per connection; default 100),
     * connections to the app over the whole server (shared out evenly
     * among the threads; requests beyond wait for one; default 512), and
     * HTTP/2 request body bytes received and not yet taken by the app, over
     * the whole server (a stream that would go beyond is answered 503;
     * default 128 MiB). */
    unsigned h2_max_streams;
    unsigned max_app_connections;
    size_t max_buffered_body;
    bool disable_keep_alives;
    bool enable_h2;
    /* Every connection starts with a PROXY protocol v2 header, before TLS:
     * required (a connection without a valid one is closed), and its
     * source address is the client's (X-Forwarded-For, logs).  LOCAL
     * headers keep the connection's own peer. */
    bool proxy_protocol;
    cl_route_fn route;
    cl_handle_fn handle;
    cl_done_fn done;
    void *ctx;
    cl_server_stats *stats; /* may be NULL */
} cl_server_config;

/* Starts worker threads serving listen_fd (which the server then owns). */
CL_MUST_CHECK int cl_server_start(const cl_server_config *cfg, int listen_fd, cl_server **out);
/* Stops accepting and lets requests in flight finish (new ones on open
 * connections are refused with Connection: close); after timeout_ms,
 * remaining connections are closed.  Returns at once; see cl_server_wait. */
void cl_server_drain(cl_server *s, unsigned timeout_ms);
/* Waits for the workers to stop and frees the server. */
void cl_server_wait(cl_server *s);

#pragma GCC visibility pop

#endif

/* A connection and its worker thread, shared by the HTTP/1.1 and HTTP/2
 * halves of the server (server.c, h2.c) and their I/O (client_io.c). */
#ifndef CLOISTER_LIB_ENCLAVE_CONNECTION_H
#define CLOISTER_LIB_ENCLAVE_CONNECTION_H

#include "cloister/core/loop.h"
#include "cloister/enclave/server.h"

#include <pthread.h>

typedef struct worker worker;
typedef struct client client;

struct cl_server {
    cl_server_config cfg;
    int listen_fd;
    worker *workers;
    unsigned worker_count;
    atomic_uint open_connections;
    atomic_bool draining;
    /* the first phase of a drain: still accepting, but every response ends
     * its connection (HTTP/1.1 Connection: close, HTTP/2 GOAWAY) */
    atomic_bool closing;
    atomic_size_t buffered_body; /* HTTP/2 request body bytes waiting for the app */
    unsigned drain_timeout_ms;
    cl_server_stats own_stats;
};

struct worker {
    cl_server *server;
    /* server.c's cl_client_close: what h2.c calls to end a connection,
     * through this pointer so that h2.c needs nothing of server.c */
    void (*close_client)(client *c);
    cl_loop *loop;
    pthread_t thread;
    cl_watch listen_watch;
    bool listening;
    cl_upstream_pool *pool;
    client *clients; /* every open connection of this worker */
    unsigned client_count;
    bool draining;
    bool closing; /* this loop has seen cl_server_close_connections */
    cl_timer drain_timer;
    char date[40]; /* "Date: ...\r\n", refreshed each second */
    uint64_t date_ms;
};

enum client_state {
    CLIENT_PROXY_HEADER, /* before TLS: the PROXY protocol v2 header */
    CLIENT_HANDSHAKE,
    CLIENT_READ_HEAD,
    CLIENT_READ_LOCAL_BODY,
    CLIENT_PROXY,
    CLIENT_TUNNEL,
    CLIENT_H2,
    CLIENT_CLOSING,
};

struct client {
    cl_watch watch; /* first: the event callback gets a cl_watch* */
    worker *w;
    SSL *ssl;
    int state;
    client *prev, *next;
    char peer[64];
    cl_timer timer;
    cl_deferred kick, release;
    bool closed;

    /* bytes from the client: the head, then body bytes */
    uint8_t *in;
    size_t in_off, in_len, in_cap;
    bool peer_eof;
    /* bytes to the client */
    uint8_t *out;
    size_t out_off, out_len, out_cap;

    /* the request in progress */
    cl_http_head head;
    bool head_timer_armed;
    int route;
    uint64_t started_us;
    int status;
    int req_body;
    uint64_t req_remaining;
    cl_chunked req_chunked;
    bool req_body_done;
    cl_buf local_body;
    cl_buf local_head; /* a local route's head, copied out of `in` */
    bool keep_alive;
    bool head_request;
    bool is_http10;

    /* the response in progress */
    cl_upstream *up;
    bool resp_head_sent, resp_done, resp_chunked, resp_end_pending, close_after_response, up_blocked;

    void *h2; /* the HTTP/2 session once ALPN chose h2 */
};

/* HTTP/2 (lib/enclave/h2.c): takes over a client whose handshake chose "h2". */
CL_MUST_CHECK int cl_h2_attach(client *c);
void cl_h2_io(client *c);
void cl_h2_free(client *c);
void cl_h2_drain(client *c);
/* Should a response end its connection because the server is going away? */
static inline bool cl_worker_ending(const worker *w)
{
    return w->draining || atomic_load_explicit(&w->server->closing, memory_order_relaxed);
}

/* client_io.c, for server.c and h2.c: reads/writes through the client's TLS.
 * 0 with the byte count in *got / *put (0 bytes: the socket would block), or
 * CL_EIO when the client closed the connection or it failed. */
CL_MUST_CHECK int cl_client_tls_read(client *c, uint8_t *buf, size_t len, size_t *got);
CL_MUST_CHECK int cl_client_tls_write(client *c, const uint8_t *buf, size_t len, size_t *put);
void cl_client_close(client *c);
void cl_client_touch(client *c); /* activity: push the idle timeout back */
/* Room left in c->out, after moving unsent bytes to the front when worth it. */
size_t cl_client_out_room(client *c);

/* Appends X-Forwarded-For/-Proto/-Host to a request head for the app. */
CL_MUST_CHECK int cl_server_forwarded_headers(cl_buf *head, const char *peer, bool tls, cl_slice host);
/* The Date header line of this second. */
const char *cl_server_date(worker *w);
/* Serializes a complete small response (local routes, errors). */
CL_MUST_CHECK int cl_server_simple_response(worker *w, cl_buf *out, int status, const char *content_type,
                                            const uint8_t *body, size_t body_len, bool head_only, bool close);
/* The same with extra header lines ("Name: value\r\n"...), or NULL. */
CL_MUST_CHECK int cl_server_simple_response_ex(worker *w, cl_buf *out, int status, const char *content_type,
                                            const uint8_t *body, size_t body_len, bool head_only, bool close,
                                               const char *extra);

#endif

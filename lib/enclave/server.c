#include "enclave/connection.h"

#include "cloister/core/clock.h"
#include "cloister/core/log.h"
#include "cloister/core/proxy_protocol.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define OUT_CAP (32 * 1024)
#define MAX_LOCAL_RESPONSE (8 * 1024 * 1024)
#define CHUNK_OVERHEAD 24 /* "%zx\r\n" + "\r\n" */

static void client_pump(client *c);
static void schedule_pump(client *c);

/* ---- client I/O ---------------------------------------------------------- */

static void release_client(cl_deferred *d)
{
    client *c = (client *)((char *)d - offsetof(client, release));
    free(c->in);
    free(c->out);
    cl_buf_free(&c->local_body);
    cl_buf_free(&c->local_head);
    free(c);
}

static void maybe_finish_drain(worker *w);

void cl_client_close(client *c)
{
    if (c->closed)
        return;
    c->closed = true;
    worker *w = c->w;
    if (c->up) {
        cl_upstream_abort(c->up);
        c->up = NULL;
    }
    if (c->h2)
        cl_h2_free(c);
    cl_timer_stop(w->loop, &c->timer);
    int fd = c->watch.fd;
    cl_loop_unwatch(w->loop, &c->watch);
    if (c->ssl) {
        if (c->state != CLIENT_HANDSHAKE && c->state != CLIENT_PROXY_HEADER)
            SSL_shutdown(c->ssl); /* best effort close_notify; never waits */
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (fd >= 0)
        close(fd);
    if (c->prev)
        c->prev->next = c->next;
    else
        w->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    w->client_count--;
    atomic_fetch_sub(&w->server->open_connections, 1);
    if (w->server->cfg.stats)
        atomic_fetch_sub(&w->server->cfg.stats->connections_open, 1);
    cl_loop_defer(w->loop, &c->release, release_client);
    maybe_finish_drain(w);
}

static void on_client_timeout(cl_loop *loop, cl_timer *t)
{
    (void)loop;
    client *c = (client *)((char *)t - offsetof(client, timer));
    /* Waiting for the app's answer is not the client being idle: the app
     * has its own timeout (-app-timeout), as on HTTP/2. */
    if (c->state == CLIENT_PROXY && c->up && c->req_body_done && !c->resp_head_sent) {
        cl_client_touch(c);
        return;
    }
    cl_client_close(c);
}

void cl_client_touch(client *c)
{
    const cl_server_config *cfg = &c->w->server->cfg;
    cl_timer_start(c->w->loop, &c->timer, cfg->idle_timeout_ms, on_client_timeout);
}

static void arm_header_timer(client *c)
{
    /* A fixed budget for the whole head: a client trickling bytes (slowloris)
     * does not push it back. */
    cl_timer_stop(c->w->loop, &c->timer);
    cl_timer_start(c->w->loop, &c->timer, c->w->server->cfg.header_timeout_ms, on_client_timeout);
    c->head_timer_armed = true;
}

/* ---- output ---------------------------------------------------------- */

static bool out_append(client *c, const void *data, size_t len)
{
    if (cl_client_out_room(c) < len)
        return false;
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
    return true;
}

/* Writes what it can; false when the connection failed. */
static bool flush_client(client *c, bool *progress)
{
    while (c->out_off < c->out_len) {
        size_t n;
        if (cl_client_tls_write(c, c->out + c->out_off, c->out_len - c->out_off, &n) < 0)
            return false;
        if (n == 0)
            break;
        c->out_off += n;
        *progress = true;
    }
    if (c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    return true;
}

/* A whole response from here (errors, local routes); the connection
 * closes after it when close is set. */
static void respond_simple_ex(client *c, int status, const char *content_type, const uint8_t *body, size_t len,
                              bool close, const char *extra)
{
    cl_buf tmp = CL_BUF_INIT;
    int rc = cl_server_simple_response_ex(c->w, &tmp, status, content_type, body, len, c->head_request, close, extra);
    if (rc == CL_OK && tmp.len > cl_client_out_room(c) && c->out_len + tmp.len <= MAX_LOCAL_RESPONSE) {
        /* a local answer larger than the buffer (the app state, a secret):
         * the buffer grows to hold it, once, for this connection */
        uint8_t *bigger = realloc(c->out, c->out_len + tmp.len);
        if (bigger) {
            c->out = bigger;
            c->out_cap = c->out_len + tmp.len;
        }
    }
    if (rc == CL_OK && tmp.len <= cl_client_out_room(c))
        out_append(c, tmp.data, tmp.len);
    else
        close = true;
    cl_buf_free(&tmp);
    c->status = status;
    c->resp_head_sent = true;
    c->resp_done = true;
    if (close)
        c->close_after_response = true;
}

static void respond_simple(client *c, int status, const char *content_type, const uint8_t *body, size_t len,
                           bool close)
{
    respond_simple_ex(c, status, content_type, body, len, close, NULL);
}

static void respond_error(client *c, int status, const char *message)
{
    char body[256];
    int n = snprintf(body, sizeof body, "%d %s: %s\n", status, cl_http_status_text(status), message);
    respond_simple(c, status, NULL, (const uint8_t *)body, (size_t)n, true);
}

/* ---- upstream callbacks ------------------------------------------------- */

static bool header_is(cl_slice name, const char *text)
{
    return cl_slice_eq_nocase(name, text);
}

static void up_on_head(void *owner, const cl_http_head *h)
{
    client *c = owner;
    cl_buf head = CL_BUF_INIT;
    int rc = CL_OK;
    if (h->status < 200 && h->status != 101) {
        if (h->status == 100 && c->head.expect_continue && !c->is_http10)
            out_append(c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
        schedule_pump(c);
        return;
    }
    char line[128];
    int n = snprintf(line, sizeof line, "HTTP/1.1 %d %.*s\r\n", h->status, (int)(h->reason.len > 64 ? 64 : h->reason.len),
                     h->reason.len ? (const char *)h->reason.data : "");
    rc |= cl_buf_append(&head, line, (size_t)n);
    for (size_t i = 0; i < h->header_count; i++) {
        cl_slice name = h->headers[i].name;
        if (cl_http_is_hop_by_hop(h, name) || header_is(name, "content-length"))
            continue;
        rc |= cl_buf_append(&head, name.data, name.len);
        rc |= cl_buf_append(&head, ": ", 2);
        rc |= cl_buf_append(&head, h->headers[i].value.data, h->headers[i].value.len);
        rc |= cl_buf_append(&head, "\r\n", 2);
    }
    c->status = h->status;
    bool close = c->close_after_response || !c->keep_alive || cl_worker_ending(c->w);
    if (h->status == 101) {
        const cl_slice *upgrade = cl_http_header_get(h, "upgrade");
        rc |= cl_buf_append(&head, "Connection: upgrade\r\nUpgrade: ", 30);
        if (upgrade)
            rc |= cl_buf_append(&head, upgrade->data, upgrade->len);
        rc |= cl_buf_append(&head, "\r\n", 2);
        c->state = CLIENT_TUNNEL;
    } else if (h->body == CL_HTTP_BODY_LENGTH) {
        n = snprintf(line, sizeof line, "Content-Length: %llu\r\n", (unsigned long long)h->content_length);
        rc |= cl_buf_append(&head, line, (size_t)n);
    } else if (h->body == CL_HTTP_BODY_NONE) {
        const cl_slice *cl = cl_http_header_get(h, "content-length");
        if (cl && c->head_request) { /* a HEAD answer tells the length it would have had */
            rc |= cl_buf_append(&head, "Content-Length: ", 16);
            rc |= cl_buf_append(&head, cl->data, cl->len);
            rc |= cl_buf_append(&head, "\r\n", 2);
        }
    } else if (c->is_http10) {
        close = true; /* the end of the body is the end of the connection */
    } else {
        rc |= cl_buf_append(&head, "Transfer-Encoding: chunked\r\n", 28);
        c->resp_chunked = true;
    }
    if (h->status != 101) {
        if (close)
            rc |= cl_buf_append(&head, "Connection: close\r\n", 19);
        else if (c->is_http10)
            rc |= cl_buf_append(&head, "Connection: keep-alive\r\n", 24);
    }
    rc |= cl_buf_append(&head, "\r\n", 2);
    if (close)
        c->close_after_response = true;
    if (rc < 0 || !out_append(c, head.data, head.len)) {
        cl_buf_free(&head);
        cl_upstream_abort(c->up);
        c->up = NULL;
        if (c->resp_head_sent)
            cl_client_close(c);
        else
            respond_error(c, 502, "the app's response head is too large");
        schedule_pump(c);
        return;
    }
    cl_buf_free(&head);
    c->resp_head_sent = true;
    schedule_pump(c);
}

static size_t up_on_data(void *owner, const uint8_t *data, size_t len)
{
    client *c = owner;
    if (c->closed)
        return 0;
    size_t room = cl_client_out_room(c), take;
    if (c->resp_chunked) {
        if (room <= CHUNK_OVERHEAD) {
            c->up_blocked = true;
            return 0;
        }
        take = len < room - CHUNK_OVERHEAD ? len : room - CHUNK_OVERHEAD;
        c->out_len += (size_t)snprintf((char *)c->out + c->out_len, CHUNK_OVERHEAD, "%zx\r\n", take);
        memcpy(c->out + c->out_len, data, take);
        c->out_len += take;
        memcpy(c->out + c->out_len, "\r\n", 2);
        c->out_len += 2;
    } else {
        take = len < room ? len : room;
        memcpy(c->out + c->out_len, data, take);
        c->out_len += take;
    }
    if (take < len)
        c->up_blocked = true;
    /* write now: keeps the buffer small and the latency low */
    bool progress = false;
    if (!flush_client(c, &progress)) {
        cl_client_close(c);
        return take;
    }
    if (progress)
        cl_client_touch(c);
    if (c->up_blocked && cl_client_out_room(c) > c->out_cap / 2)
        schedule_pump(c);
    return take;
}

static void up_on_end(void *owner)
{
    client *c = owner;
    c->up = NULL;
    if (c->resp_chunked)
        c->resp_end_pending = true;
    c->resp_done = true;
    if (c->state == CLIENT_TUNNEL)
        c->close_after_response = true;
    schedule_pump(c);
}

static void up_on_error(void *owner, int status, const char *why)
{
    client *c = owner;
    c->up = NULL;
    if (c->resp_head_sent || status == 0 || c->state == CLIENT_TUNNEL) {
        /* the response was cut short: the client must see that too */
        c->close_after_response = true;
        c->resp_done = true;
        c->out_off = c->out_off; /* pending bytes still go out before the close */
        c->state = CLIENT_CLOSING;
    } else {
        respond_error(c, status, why);
        c->req_body_done = true; /* no point reading more of it */
    }
    schedule_pump(c);
}

static void up_on_send_ready(void *owner)
{
    schedule_pump((client *)owner);
}

static const cl_upstream_ops client_upstream_ops = {
    .on_head = up_on_head,
    .on_data = up_on_data,
    .on_end = up_on_end,
    .on_error = up_on_error,
    .on_send_ready = up_on_send_ready,
};

/* ---- requests ---------------------------------------------------------- */

static int build_upstream_head(client *c, cl_buf *out)
{
    const cl_http_head *h = &c->head;
    int rc = cl_buf_append(out, h->method.data, h->method.len);
    rc |= cl_buf_append(out, " ", 1);
    rc |= cl_buf_append(out, h->target.data, h->target.len);
    rc |= cl_buf_append(out, " HTTP/1.1\r\n", 11);
    for (size_t i = 0; i < h->header_count; i++) {
        cl_slice name = h->headers[i].name;
        if (cl_http_is_hop_by_hop(h, name) || header_is(name, "content-length") || cl_http_is_proxy_owned(name))
            continue;
        rc |= cl_buf_append(out, name.data, name.len);
        rc |= cl_buf_append(out, ": ", 2);
        rc |= cl_buf_append(out, h->headers[i].value.data, h->headers[i].value.len);
        rc |= cl_buf_append(out, "\r\n", 2);
    }
    if (!h->host.len)
        rc |= cl_buf_append(out, "Host: localhost\r\n", 17);
    if (h->upgrade) {
        const cl_slice *upgrade = cl_http_header_get(h, "upgrade");
        rc |= cl_buf_append(out, "Connection: upgrade\r\nUpgrade: ", 30);
        rc |= cl_buf_append(out, upgrade->data, upgrade->len);
        rc |= cl_buf_append(out, "\r\n", 2);
    }
    rc |= cl_server_forwarded_headers(out, c->peer, c->ssl != NULL, h->host);
    if (h->body == CL_HTTP_BODY_LENGTH) {
        char line[64];
        int n = snprintf(line, sizeof line, "Content-Length: %llu\r\n", (unsigned long long)h->content_length);
        rc |= cl_buf_append(out, line, (size_t)n);
    } else if (h->body == CL_HTTP_BODY_CHUNKED) {
        rc |= cl_buf_append(out, "Transfer-Encoding: chunked\r\n", 28);
    }
    rc |= cl_buf_append(out, "\r\n", 2);
    return rc < 0 ? CL_ENOMEM : CL_OK;
}

static void start_request(client *c)
{
    const cl_server_config *cfg = &c->w->server->cfg;
    const cl_http_head *h = &c->head;
    c->started_us = cl_monotonic_us();
    c->resp_head_sent = c->resp_done = c->resp_chunked = c->resp_end_pending = false;
    c->close_after_response = false;
    c->up_blocked = false;
    c->status = 0;
    c->is_http10 = h->version_minor == 0;
    c->head_request = cl_slice_eq(h->method, "HEAD");
    c->keep_alive = h->keep_alive && !cfg->disable_keep_alives && !cl_worker_ending(c->w);
    c->req_body = h->body;
    c->req_remaining = h->content_length;
    memset(&c->req_chunked, 0, sizeof c->req_chunked);
    c->req_body_done = h->body == CL_HTTP_BODY_NONE;
    c->in_off += h->head_len;
    cl_client_touch(c);
    c->head_timer_armed = false;

    c->route = cfg->route ? cfg->route(cfg->ctx, h) : -1;
    if (c->route >= 0) {
        /* The head's slices point into the input buffer, which the body
         * will overwrite: the handler gets a head parsed from a copy. */
        cl_buf_reset(&c->local_head);
        bool complete = false;
        if (cl_buf_append(&c->local_head, c->in + c->in_off - h->head_len, h->head_len) < 0 ||
            cl_http_parse_request(c->local_head.data, c->local_head.len, c->local_head.len, &c->head, &complete) < 0 ||
            !complete) {
            respond_error(c, 500, "out of memory");
            return;
        }
        cl_buf_reset(&c->local_body);
        if (h->body == CL_HTTP_BODY_LENGTH && h->content_length > cfg->max_local_body) {
            respond_error(c, 413, "request body too large");
            return;
        }
        if (c->head.expect_continue && !c->is_http10 && h->body != CL_HTTP_BODY_NONE)
            out_append(c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
        c->state = CLIENT_READ_LOCAL_BODY;
        return;
    }
    if (!cfg->app) {
        c->route = -2;
        respond_simple(c, 404, NULL, (const uint8_t *)"not found\n", 10, !c->keep_alive);
        /* a body we will not use still has to be read past */
        c->state = CLIENT_READ_LOCAL_BODY;
        return;
    }
    if (h->upgrade && h->body != CL_HTTP_BODY_NONE) {
        respond_error(c, 400, "an upgrade request must not have a body");
        return;
    }
    cl_buf head = CL_BUF_INIT;
    int rc = build_upstream_head(c, &head);
    if (rc == CL_OK)
        rc = cl_upstream_begin(c->w->pool, &client_upstream_ops, c, head.data, head.len, h->method, h->body,
                               h->upgrade, &c->up);
    cl_buf_free(&head);
    if (rc < 0) {
        respond_error(c, 502, cl_error_message());
        return;
    }
    c->state = CLIENT_PROXY;
}

static void finish_request(client *c)
{
    const cl_server_config *cfg = &c->w->server->cfg;
    if (cfg->done)
        cfg->done(cfg->ctx, c->route, c->status, cl_monotonic_us() - c->started_us);
    if (c->close_after_response || !c->keep_alive || !c->req_body_done || c->peer_eof) {
        c->state = CLIENT_CLOSING;
        return;
    }
    c->state = CLIENT_READ_HEAD;
    if (c->in_off == c->in_len)
        c->in_off = c->in_len = 0;
    c->route = -1;
    if (c->in_len > c->in_off)
        arm_header_timer(c); /* a pipelined request is already under way */
    else
        cl_client_touch(c);
}

/* Feeds request body bytes from c->in to their destination. */
static bool forward_body(client *c)
{
    bool progress = false;
    while (!c->req_body_done && c->in_off < c->in_len) {
        const uint8_t *p = c->in + c->in_off;
        size_t avail = c->in_len - c->in_off;
        size_t used = 0, off = 0, dlen = 0;
        if (c->req_body == CL_HTTP_BODY_LENGTH) {
            dlen = avail < c->req_remaining ? avail : (size_t)c->req_remaining;
            used = dlen;
        } else if (cl_chunked_next(&c->req_chunked, p, avail, &used, &off, &dlen) < 0) {
            if (c->up) {
                cl_upstream_abort(c->up);
                c->up = NULL;
            }
            if (!c->resp_head_sent)
                respond_error(c, 400, "malformed chunked request body");
            c->req_body_done = true;
            c->close_after_response = true;
            c->resp_done = true;
            return true;
        }
        size_t took = dlen;
        if (dlen) {
            if (c->state == CLIENT_READ_LOCAL_BODY) {
                if (c->route >= 0 && cl_buf_append(&c->local_body, p + off, dlen) < 0)
                    took = 0;
                if (c->route >= 0 && c->local_body.len > c->w->server->cfg.max_local_body) {
                    respond_error(c, 413, "request body too large");
                    c->req_body_done = true;
                    return true;
                }
            } else if (c->up) {
                took = cl_upstream_send(c->up, p + off, dlen);
            } else {
                took = dlen; /* the response is settled: discard */
            }
        }
        if (took < dlen) {
            if (c->req_body == CL_HTTP_BODY_CHUNKED) {
                cl_chunked_unconsume(&c->req_chunked, dlen - took);
                used -= dlen - took;
            } else {
                used = took;
            }
        }
        c->in_off += used;
        if (c->req_body == CL_HTTP_BODY_LENGTH)
            c->req_remaining -= took;
        if (used)
            progress = true;
        if ((c->req_body == CL_HTTP_BODY_LENGTH && c->req_remaining == 0) ||
            (c->req_body == CL_HTTP_BODY_CHUNKED && c->req_chunked.done)) {
            c->req_body_done = true;
            if (c->up)
                cl_upstream_send_end(c->up);
        }
        if (took < dlen || used == 0)
            break;
    }
    if (c->in_off == c->in_len)
        c->in_off = c->in_len = 0;
    return progress;
}

static void answer_local(client *c)
{
    const cl_server_config *cfg = &c->w->server->cfg;
    cl_request_info info = {
        .head = &c->head,
        .body = c->local_body.data,
        .body_len = c->local_body.len,
        .peer = c->peer,
        .tls = c->ssl != NULL,
        .ssl = c->ssl,
    };
    cl_response resp = {.status = 200, .body = CL_BUF_INIT};
    cfg->handle(cfg->ctx, c->route, &info, &resp);
    char extra[96] = "";
    if (resp.etag[0])
        snprintf(extra, sizeof extra, "ETag: %s\r\n", resp.etag);
    respond_simple_ex(c, resp.status, resp.content_type, resp.body.data, resp.body.len, !c->keep_alive,
                      extra[0] ? extra : NULL);
    cl_buf_free(&resp.body);
}

static bool read_client(client *c, bool *progress)
{
    if (c->in_len == c->in_cap && c->in_off) {
        memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
        c->in_len -= c->in_off;
        c->in_off = 0;
    }
    if (c->in_len == c->in_cap || c->peer_eof)
        return true;
    size_t n;
    int rc = cl_client_tls_read(c, c->in + c->in_len, c->in_cap - c->in_len, &n);
    if (rc == CL_OK && n > 0) {
        c->in_len += n;
        *progress = true;
        /* A body arriving is activity, however slowly it comes; the head
         * alone has a fixed budget (arm_header_timer). */
        if (c->state != CLIENT_READ_HEAD)
            cl_client_touch(c);
    } else if (rc < 0) {
        c->peer_eof = true;
        *progress = true;
    }
    return true;
}

static void handshake(client *c)
{
    cl_server_stats *stats = c->w->server->cfg.stats;
    ERR_clear_error();
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        if (stats) {
            atomic_fetch_add(&stats->tls_handshakes, 1);
            if (SSL_session_reused(c->ssl))
                atomic_fetch_add(&stats->tls_resumptions, 1);
        }
        const unsigned char *alpn = NULL;
        unsigned alpn_len = 0;
        SSL_get0_alpn_selected(c->ssl, &alpn, &alpn_len);
        if (alpn_len == 2 && !memcmp(alpn, "h2", 2)) {
            c->state = CLIENT_H2;
            if (cl_h2_attach(c) < 0)
                cl_client_close(c);
            else
                cl_h2_io(c);
            return;
        }
        c->state = CLIENT_READ_HEAD;
        return;
    }
    int err = SSL_get_error(c->ssl, r);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
        return;
    if (stats)
        atomic_fetch_add(&stats->tls_handshake_failures, 1);
    ERR_clear_error();
    cl_client_close(c);
}

static void format_peer(const struct sockaddr_storage *sa, char *out, size_t len);

/* The PROXY v2 header, read with plain reads of exactly the bytes it still
 * lacks (the fixed part, then the length it announces) into c->in, so that
 * not one byte of what follows (TLS) leaves the socket.  Not MSG_PEEK: the
 * enclave kernel of nitro-cli 1.5.0 (4.14) answers it on vsock with
 * EOPNOTSUPP. */
#define MAX_PROXY_HEADER 4096
static void read_proxy_header(client *c)
{
    size_t cap = c->in_cap < MAX_PROXY_HEADER ? c->in_cap : MAX_PROXY_HEADER;
    for (;;) {
        cl_pp2_header h;
        bool complete = false;
        size_t want = cl_pp2_bytes_wanted(c->in, c->in_len);
        int rc = c->in_len ? cl_pp2_parse(c->in, c->in_len, &h, &complete) : CL_OK;
        if (rc < 0 || (!complete && want > cap)) {
            cl_log(CL_LOG_WARN, "proxy_header_refused", "listener", c->w->server->cfg.name, "peer", c->peer, "error",
                   rc < 0 ? cl_error_message() : "header longer than accepted", NULL);
            cl_client_close(c);
            return;
        }
        if (complete) {
            if (h.command == CL_PP2_PROXY && (h.src.ss_family == AF_INET || h.src.ss_family == AF_INET6))
                format_peer(&h.src, c->peer, sizeof c->peer);
            c->in_len = c->in_off = 0;
            c->state = c->ssl ? CLIENT_HANDSHAKE : CLIENT_READ_HEAD;
            return;
        }
        ssize_t n = read(c->watch.fd, c->in + c->in_len, want - c->in_len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return; /* the rest arrives later: a new edge */
        if (n <= 0) {
            cl_client_close(c);
            return;
        }
        c->in_len += (size_t)n;
    }
}

static void client_pump(client *c)
{
    const cl_server_config *cfg = &c->w->server->cfg;
    for (int rounds = 0; !c->closed; rounds++) {
        bool progress = false;
        if (c->state == CLIENT_PROXY_HEADER) {
            read_proxy_header(c);
            if (c->closed || c->state == CLIENT_PROXY_HEADER)
                return;
        }
        if (c->state == CLIENT_HANDSHAKE) {
            handshake(c);
            if (c->closed || c->state == CLIENT_HANDSHAKE || c->state == CLIENT_H2)
                return;
            progress = true;
        }
        if (c->resp_end_pending && out_append(c, "0\r\n\r\n", 5))
            c->resp_end_pending = false;
        if (!flush_client(c, &progress)) {
            cl_client_close(c);
            return;
        }
        if (c->up_blocked && c->up && cl_client_out_room(c) > c->out_cap / 2) {
            c->up_blocked = false;
            cl_upstream_resume(c->up);
        }

        switch (c->state) {
        case CLIENT_READ_HEAD: {
            if (c->in_len > c->in_off && !c->head_timer_armed)
                arm_header_timer(c);
            bool complete = false;
            int rc = c->in_len > c->in_off
                         ? cl_http_parse_request(c->in + c->in_off, c->in_len - c->in_off, cfg->max_header_bytes,
                                                 &c->head, &complete)
                         : CL_OK;
            if (rc == CL_ELIMIT) {
                c->head_request = false;
                respond_error(c, 431, "request head too large");
                c->state = CLIENT_CLOSING;
                progress = true;
                break;
            }
            if (rc < 0) {
                c->head_request = false;
                respond_error(c, 400, cl_error_message());
                c->state = CLIENT_CLOSING;
                progress = true;
                break;
            }
            if (complete) {
                start_request(c);
                progress = true;
                break;
            }
            if (c->peer_eof) {
                cl_client_close(c);
                return;
            }
            if (c->w->draining && c->in_len == c->in_off) {
                cl_client_close(c); /* idle during a drain */
                return;
            }
            read_client(c, &progress);
            break;
        }
        case CLIENT_READ_LOCAL_BODY:
            if (forward_body(c))
                progress = true;
            if (c->req_body_done) {
                if (!c->resp_done)
                    answer_local(c);
                progress = true;
                c->state = CLIENT_PROXY; /* wait for the response to go out */
                break;
            }
            if (c->peer_eof) {
                cl_client_close(c);
                return;
            }
            read_client(c, &progress);
            break;
        case CLIENT_PROXY:
            if (!c->req_body_done) {
                if (forward_body(c))
                    progress = true;
                if (!c->req_body_done) {
                    if (c->peer_eof) {
                        cl_client_close(c); /* the client gave up mid-body */
                        return;
                    }
                    read_client(c, &progress);
                }
            }
            if (c->resp_done && !c->resp_end_pending && c->out_off == c->out_len &&
                (c->req_body_done || c->close_after_response)) {
                finish_request(c);
                progress = true;
            }
            break;
        case CLIENT_TUNNEL:
            if (c->in_off < c->in_len && c->up) {
                size_t took = cl_upstream_send(c->up, c->in + c->in_off, c->in_len - c->in_off);
                c->in_off += took;
                if (took)
                    progress = true;
                if (c->in_off == c->in_len)
                    c->in_off = c->in_len = 0;
            }
            if (c->peer_eof && c->in_off == c->in_len && c->up) {
                cl_upstream_send_end(c->up);
            }
            if (!c->peer_eof)
                read_client(c, &progress);
            if (progress)
                cl_client_touch(c);
            if (c->resp_done && c->out_off == c->out_len) {
                cl_client_close(c);
                return;
            }
            if (c->peer_eof && !c->up && c->out_off == c->out_len) {
                cl_client_close(c);
                return;
            }
            break;
        case CLIENT_CLOSING:
            if (c->out_off == c->out_len && !c->resp_end_pending) {
                cl_client_close(c);
                return;
            }
            break;
        default:
            break;
        }
        if (!progress || rounds > 64) {
            if (rounds > 64)
                schedule_pump(c); /* let other connections have a turn */
            return;
        }
    }
}

static void kick_client(cl_deferred *d)
{
    client *c = (client *)((char *)d - offsetof(client, kick));
    if (c->closed)
        return;
    if (c->state == CLIENT_H2)
        cl_h2_io(c);
    else
        client_pump(c);
}

static void schedule_pump(client *c)
{
    if (!c->closed)
        cl_loop_defer(c->w->loop, &c->kick, kick_client);
}

static void on_client_event(cl_loop *loop, cl_watch *watch, uint32_t events)
{
    (void)loop;
    (void)events;
    client *c = (client *)watch;
    if (c->state == CLIENT_H2)
        cl_h2_io(c);
    else
        client_pump(c);
}

/* ---- accepting ----------------------------------------------------------- */

static void format_peer(const struct sockaddr_storage *sa, char *out, size_t len)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (sa->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
        snprintf(out, len, "%s:%u", ip, ntohs(in->sin_port));
    } else if (sa->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof ip);
        snprintf(out, len, "[%s]:%u", ip, ntohs(in6->sin6_port));
    } else if (sa->ss_family == AF_UNIX) {
        snprintf(out, len, "unix");
    } else {
        snprintf(out, len, "vsock");
    }
}

static void on_accept(cl_loop *loop, cl_watch *watch, uint32_t events)
{
    (void)events;
    worker *w = (worker *)((char *)watch - offsetof(worker, listen_watch));
    cl_server *s = w->server;
    /* The listener is level-triggered and exclusive: what one loop leaves in
     * the backlog wakes another.  So with several loops, each takes a few at
     * a time and none beyond its share, or a burst of connections (a load
     * balancer's, a benchmark's) would all land on the first loop awake. */
    int batch = s->worker_count > 1 ? 4 : 64;
    for (int i = 0; i < batch; i++) {
        if (s->worker_count > 1 && i > 0 &&
            w->client_count > atomic_load(&s->open_connections) / s->worker_count + 2)
            break;
        struct sockaddr_storage sa;
        socklen_t sa_len = sizeof sa;
        int fd = accept4(watch->fd, (struct sockaddr *)&sa, &sa_len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return; /* EAGAIN, or a transient error such as EMFILE: the next event retries */
        if (atomic_load(&s->open_connections) >= s->cfg.max_connections) {
            if (s->cfg.stats)
                atomic_fetch_add(&s->cfg.stats->connections_refused, 1);
            close(fd);
            continue;
        }
        if (sa.ss_family == AF_INET || sa.ss_family == AF_INET6) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        }
        client *c = calloc(1, sizeof *c);
        uint8_t *in = malloc(s->cfg.max_header_bytes + 1024);
        uint8_t *out = malloc(OUT_CAP);
        /* with tls_acquire the identity may change between connections
         * (key sync); each connection keeps the context it started with */
        SSL_CTX *tls = s->cfg.tls_acquire ? s->cfg.tls_acquire(s->cfg.ctx) : s->cfg.tls;
        SSL *ssl = tls ? SSL_new(tls) : NULL;
        if (s->cfg.tls_acquire)
            SSL_CTX_free(tls);
        if (!c || !in || !out || (tls && (!ssl || SSL_set_fd(ssl, fd) != 1))) {
            free(c);
            free(in);
            free(out);
            SSL_free(ssl);
            close(fd);
            continue;
        }
        c->w = w;
        c->ssl = ssl;
        c->in = in;
        c->in_cap = s->cfg.max_header_bytes + 1024;
        c->out = out;
        c->out_cap = OUT_CAP;
        c->route = -1;
        c->state = s->cfg.proxy_protocol ? CLIENT_PROXY_HEADER : ssl ? CLIENT_HANDSHAKE : CLIENT_READ_HEAD;
        if (ssl)
            SSL_set_accept_state(ssl);
        format_peer(&sa, c->peer, sizeof c->peer);
        if (cl_loop_watch(loop, &c->watch, fd, on_client_event) < 0) {
            SSL_free(ssl);
            close(fd);
            free(c);
            free(in);
            free(out);
            continue;
        }
        c->next = w->clients;
        if (w->clients)
            w->clients->prev = c;
        w->clients = c;
        w->client_count++;
        atomic_fetch_add(&s->open_connections, 1);
        if (s->cfg.stats) {
            atomic_fetch_add(&s->cfg.stats->connections_open, 1);
            atomic_fetch_add(&s->cfg.stats->connections_total, 1);
        }
        arm_header_timer(c); /* handshake and first head share one budget */
    }
}

/* ---- workers and draining ----------------------------------------------- */

static void maybe_finish_drain(worker *w)
{
    if (w->draining && w->client_count == 0)
        cl_loop_stop(w->loop);
}

static void on_drain_deadline(cl_loop *loop, cl_timer *t)
{
    (void)loop;
    worker *w = (worker *)((char *)t - offsetof(worker, drain_timer));
    while (w->clients)
        cl_client_close(w->clients);
    cl_loop_stop(w->loop);
}

static void on_wake(cl_loop *loop, void *ctx)
{
    worker *w = ctx;
    if (atomic_load(&w->server->closing) && !w->closing && !w->draining) {
        /* HTTP/1.1 connections end after their next response; HTTP/2 ones
         * are told now, and finish the streams they have */
        w->closing = true;
        for (client *c = w->clients; c; c = c->next)
            if (c->state == CLIENT_H2)
                cl_h2_drain(c);
    }
    if (!atomic_load(&w->server->draining) || w->draining)
        return;
    w->draining = true;
    if (w->listening) {
        cl_loop_unwatch(loop, &w->listen_watch);
        w->listening = false;
    }
    cl_timer_start(loop, &w->drain_timer, w->server->drain_timeout_ms, on_drain_deadline);
    /* idle connections go now; busy ones finish their request first */
    for (client *c = w->clients, *next; c; c = next) {
        next = c->next;
        if (c->state == CLIENT_H2)
            cl_h2_drain(c);
        else if ((c->state == CLIENT_READ_HEAD && c->in_off == c->in_len) || c->state == CLIENT_HANDSHAKE ||
                 c->state == CLIENT_PROXY_HEADER)
            cl_client_close(c);
        else
            c->keep_alive = false;
    }
    maybe_finish_drain(w);
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    int rc = cl_loop_run(w->loop);
    (void)rc;
    while (w->clients)
        cl_client_close(w->clients);
    return NULL;
}

int cl_server_start(const cl_server_config *cfg_in, int listen_fd, cl_server **out)
{
    cl_server *s = calloc(1, sizeof *s);
    CL_ENSURE(s, CL_ENOMEM, "out of memory");
    s->cfg = *cfg_in;
    cl_server_config *cfg = &s->cfg;
    if (!cfg->name)
        cfg->name = "server";
    if (!cfg->threads) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        cfg->threads = n > 0 && n < 64 ? (unsigned)n : 1;
    }
    if (!cfg->max_header_bytes)
        cfg->max_header_bytes = 16 * 1024;
    if (!cfg->max_local_body)
        cfg->max_local_body = 64 * 1024;
    if (!cfg->header_timeout_ms)
        cfg->header_timeout_ms = 10000;
    if (!cfg->idle_timeout_ms)
        cfg->idle_timeout_ms = 60000;
    if (!cfg->upstream_timeout_ms)
        cfg->upstream_timeout_ms = 60000;
    if (!cfg->max_connections)
        cfg->max_connections = 10000;
    if (!cfg->h2_max_streams)
        cfg->h2_max_streams = 100;
    if (!cfg->max_app_connections)
        cfg->max_app_connections = 512;
    if (!cfg->max_buffered_body)
        cfg->max_buffered_body = (size_t)128 << 20;
    s->listen_fd = listen_fd;
    /* several loops wait on one listener: accept must never block */
    int fl = fcntl(listen_fd, F_GETFL);
    if (fl < 0 || fcntl(listen_fd, F_SETFL, fl | O_NONBLOCK) < 0) {
        free(s);
        return cl_error_set(CL_EIO, "listener: %s", strerror(errno));
    }
    s->workers = calloc(cfg->threads, sizeof *s->workers);
    if (!s->workers) {
        free(s);
        return cl_error_set(CL_ENOMEM, "out of memory");
    }
    int rc = CL_OK;
    cl_upstream_limits limits = {
        .max_header_bytes = cfg->max_header_bytes,
        .connect_timeout_ms = 5000,
        .response_timeout_ms = cfg->upstream_timeout_ms,
        .idle_timeout_ms = 30000,
        .max_idle = 256,
        /* each loop its share, so that a connection freed on one loop
         * never has to wake a request waiting on another */
        .max_connections = (cfg->max_app_connections + cfg->threads - 1) / cfg->threads,
    };
    if (limits.max_idle > limits.max_connections)
        limits.max_idle = limits.max_connections;
    for (unsigned i = 0; i < cfg->threads && rc == CL_OK; i++) {
        worker *w = &s->workers[i];
        w->server = s;
        w->close_client = cl_client_close;
        rc = cl_loop_new(&w->loop);
        if (rc == CL_OK && cfg->app)
            rc = cl_upstream_pool_new(w->loop, cfg->app, &limits, &w->pool);
        if (rc == CL_OK)
            rc = cl_loop_watch_listener(w->loop, &w->listen_watch, listen_fd, on_accept);
        if (rc == CL_OK) {
            w->listening = true;
            cl_loop_set_wake_handler(w->loop, on_wake, w);
            s->worker_count++;
        }
    }
    for (unsigned i = 0; i < s->worker_count && rc == CL_OK; i++) {
        if (pthread_create(&s->workers[i].thread, NULL, worker_main, &s->workers[i]) != 0)
            rc = cl_error_set(CL_EIO, "cannot start a worker thread");
    }
    if (rc < 0) {
        /* threads that did start are stopped by the drain in cl_server_wait */
        atomic_store(&s->draining, true);
        s->drain_timeout_ms = 1;
        cl_server_wait(s);
        return rc;
    }
    *out = s;
    return CL_OK;
}

void cl_server_close_connections(cl_server *s)
{
    atomic_store(&s->closing, true);
    for (unsigned i = 0; i < s->worker_count; i++)
        cl_loop_wake(s->workers[i].loop);
}

void cl_server_drain(cl_server *s, unsigned timeout_ms)
{
    s->drain_timeout_ms = timeout_ms ? timeout_ms : 1;
    atomic_store(&s->draining, true);
    for (unsigned i = 0; i < s->worker_count; i++)
        cl_loop_wake(s->workers[i].loop);
}

void cl_server_wait(cl_server *s)
{
    if (!s)
        return;
    for (unsigned i = 0; i < s->worker_count; i++) {
        worker *w = &s->workers[i];
        if (w->thread) {
            cl_loop_wake(w->loop);
            pthread_join(w->thread, NULL);
        }
    }
    for (unsigned i = 0; i < s->cfg.threads; i++) {
        worker *w = &s->workers[i];
        cl_upstream_pool_free(w->pool);
        cl_loop_free(w->loop);
    }
    if (s->listen_fd >= 0)
        close(s->listen_fd);
    free(s->workers);
    free(s);
}

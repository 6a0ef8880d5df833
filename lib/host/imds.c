/* The enclave's gate to the instance metadata service: one HTTP/1.1
 * request per connection, checked against the calls an enclave needs
 * (cl_imds_call_allowed), rewritten with only the headers IMDS uses and
 * sent to the endpoint with Connection: close; the answer is parsed
 * strictly and sent back with its own Content-Length.  Anything else is
 * answered 403 here and never reaches IMDS. */
#include "cloister/core/imds_policy.h"

#include "cloister/core/buf.h"
#include "cloister/core/http.h"
#include "cloister/core/log.h"
#include "host/host_worker.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- the forwarder ------------------------------------------------------------------- */

#define MAX_REQUEST 8192
#define MAX_RESPONSE (256 * 1024)
#define MAX_RESPONSE_HEAD 16384
#define EXCHANGE_TIMEOUT_MS 10000
#define LINGER_MS 1000
#define RETRY_MAX_MS 100

enum { I_READ_REQ, I_CONNECTING, I_SEND_REQ, I_READ_RESP, I_SEND_RESP, I_LINGER, I_CLOSED };

typedef struct imds {
    host_conn base;
    host_worker *w;
    host_listener *l;
    cl_watch cw, uw;
    bool c_readable, c_writable, u_readable, u_writable;
    int state;
    cl_buf in, out;
    size_t out_off;
    cl_timer timer;
    unsigned attempt, retry_ms;
    bool retrying;
    int last_err;
    uint64_t id, deadline;
    char method[8];
    char path[160];
    int status;
} imds;

static void step(imds *c);
static void on_client(cl_loop *loop, cl_watch *w, uint32_t events);
static void on_upstream(cl_loop *loop, cl_watch *w, uint32_t events);
static void on_timer(cl_loop *loop, cl_timer *t);

static void imds_free(cl_deferred *d)
{
    imds *c = HOST_CONTAINER(d, imds, base.free_later);
    cl_buf_free(&c->in); /* credentials pass through here: wiped */
    cl_buf_free(&c->out);
    free(c);
}

static void close_upstream(imds *c)
{
    if (c->uw.fd >= 0) {
        int fd = c->uw.fd;
        cl_loop_unwatch(c->w->loop, &c->uw);
        close(fd);
    }
}

static void imds_close(imds *c, const char *reason)
{
    if (c->state == I_CLOSED)
        return;
    host_worker *w = c->w;
    c->state = I_CLOSED;
    cl_timer_stop(w->loop, &c->timer);
    close_upstream(c);
    if (c->cw.fd >= 0) {
        int fd = c->cw.fd;
        cl_loop_unwatch(w->loop, &c->cw);
        close(fd);
    }
    if (host_debug()) {
        char id[24], status[8];
        host_conn_id(w, c->id, id);
        snprintf(status, sizeof status, "%d", c->status);
        cl_log(CL_LOG_DEBUG, "imds-closed", "conn", id, "method", c->method, "path", c->path, "status", status,
               "reason", reason, NULL);
    }
    host_conn_remove(w, &c->base);
    cl_loop_defer(w->loop, &c->base.free_later, imds_free);
}

static void imds_close_cb(host_conn *hc, const char *reason)
{
    imds_close(HOST_CONTAINER(hc, imds, base), reason);
}

static void apply(bool *readable, bool *writable, uint32_t events)
{
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        *readable = true;
    if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
        *writable = true;
}

static int append_text(cl_buf *b, const char *text)
{
    return cl_buf_append(b, text, strlen(text));
}

/* Answers the client from here (403, 400, 502, 504) and closes after. */
static void respond(imds *c, int status, const char *reason, const char *body)
{
    close_upstream(c);
    cl_buf_reset(&c->out);
    c->out_off = 0;
    c->status = status;
    char head[256];
    snprintf(head, sizeof head,
             "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %zu\r\n"
             "Connection: close\r\nServer: cloister-host\r\n\r\n",
             status, reason, strlen(body));
    if (append_text(&c->out, head) < 0 || append_text(&c->out, body) < 0) {
        imds_close(c, "out of memory");
        return;
    }
    c->state = I_SEND_RESP;
}

/* ---- request ---- */

static bool forwarded_header(cl_slice name)
{
    static const char *const names[] = {CL_IMDS_TOKEN_HEADER, CL_IMDS_TTL_HEADER, "User-Agent", "Accept",
                                        "X-Forwarded-For"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (cl_slice_eq_nocase(name, names[i]))
            return true;
    return false;
}

static void try_connect(imds *c);

static void handle_request(imds *c, const cl_http_head *h)
{
    snprintf(c->method, sizeof c->method, "%.*s", (int)(h->method.len < 7 ? h->method.len : 7), h->method.data);
    snprintf(c->path, sizeof c->path, "%.*s", (int)(h->target.len < 159 ? h->target.len : 159), h->target.data);
    bool no_body = h->body == CL_HTTP_BODY_NONE || (h->body == CL_HTTP_BODY_LENGTH && h->content_length == 0);
    if (!no_body) {
        respond(c, 400, "Bad Request", "cloister host: IMDS requests carry no body\n");
        return;
    }
    bool has_query = h->target.len != h->path.len;
    if (has_query || !cl_imds_call_allowed(h->method, h->path)) {
        char id[24];
        host_conn_id(c->w, c->id, id);
        host_warn_limited(c->w, "imds-refused", "conn", id, "method", c->method, "target", c->path, NULL);
        char body[768];
        snprintf(body, sizeof body,
                 "cloister host: %s %s is not an instance metadata call the enclave may make.\n"
                 "Allowed (exact paths, no query):\n%s",
                 c->method, c->path, cl_imds_allowed_calls());
        respond(c, 403, "Forbidden", body);
        return;
    }
    const cl_address *ep = &c->l->route->dest;
    char line[512];
    if (ep->port == 80)
        snprintf(line, sizeof line, "%s %s HTTP/1.1\r\nHost: %s\r\n", c->method, c->path, ep->host);
    else if (strchr(ep->host, ':'))
        snprintf(line, sizeof line, "%s %s HTTP/1.1\r\nHost: [%s]:%u\r\n", c->method, c->path, ep->host, ep->port);
    else
        snprintf(line, sizeof line, "%s %s HTTP/1.1\r\nHost: %s:%u\r\n", c->method, c->path, ep->host, ep->port);
    cl_buf_reset(&c->out);
    c->out_off = 0;
    int rc = append_text(&c->out, line);
    for (size_t i = 0; rc == 0 && i < h->header_count; i++) {
        const cl_http_header *hd = &h->headers[i];
        if (!forwarded_header(hd->name))
            continue;
        rc = cl_buf_append(&c->out, hd->name.data, hd->name.len);
        if (rc == 0)
            rc = append_text(&c->out, ": ");
        if (rc == 0)
            rc = cl_buf_append(&c->out, hd->value.data, hd->value.len);
        if (rc == 0)
            rc = append_text(&c->out, "\r\n");
    }
    if (rc == 0 && !strcmp(c->method, "PUT"))
        rc = append_text(&c->out, "Content-Length: 0\r\n");
    if (rc == 0)
        rc = append_text(&c->out, "Connection: close\r\n\r\n");
    if (rc < 0) {
        imds_close(c, "out of memory");
        return;
    }
    cl_buf_reset(&c->in); /* from now on: the response */
    c->state = I_CONNECTING;
    try_connect(c);
}

static void read_request(imds *c)
{
    while (c->c_readable) {
        if (c->in.len >= MAX_REQUEST)
            break;
        if (cl_buf_reserve(&c->in, 2048) < 0) {
            imds_close(c, "out of memory");
            return;
        }
        size_t room = c->in.cap - c->in.len;
        if (room > MAX_REQUEST - c->in.len)
            room = MAX_REQUEST - c->in.len;
        ssize_t n = recv(c->cw.fd, c->in.data + c->in.len, room, 0);
        if (n < 0) {
            if (errno == EAGAIN) {
                c->c_readable = false;
                break;
            }
            if (errno == EINTR)
                continue;
            imds_close(c, "client read error");
            return;
        }
        if (n == 0) {
            imds_close(c, "client closed before a whole request");
            return;
        }
        c->in.len += (size_t)n;
    }
    cl_http_head *h = calloc(1, sizeof *h); /* large: CL_HTTP_MAX_HEADERS headers */
    if (!h) {
        imds_close(c, "out of memory");
        return;
    }
    bool complete = false;
    int rc = c->in.len ? cl_http_parse_request(c->in.data, c->in.len, MAX_REQUEST, h, &complete) : CL_OK;
    if (rc == CL_ELIMIT || (rc == CL_OK && !complete && c->in.len >= MAX_REQUEST))
        respond(c, 431, "Request Header Fields Too Large", "cloister host: the request head is too large\n");
    else if (rc < 0) {
        char body[256];
        snprintf(body, sizeof body, "cloister host: malformed request: %s\n", cl_error_message());
        respond(c, 400, "Bad Request", body);
    } else if (complete)
        handle_request(c, h);
    free(h);
}

/* ---- upstream ---- */

static void try_connect(imds *c)
{
    host_worker *w = c->w;
    for (;;) {
        struct sockaddr_storage ss;
        socklen_t len;
        if (host_dest_pick(w, c->l->index, c->attempt, &ss, &len) < 0) {
            char body[256];
            snprintf(body, sizeof body, "cloister host: cannot reach the IMDS endpoint: %s\n",
                     c->last_err ? strerror(c->last_err) : "no address");
            respond(c, 502, "Bad Gateway", body);
            return;
        }
        int fd, err;
        bool in_progress;
        if (host_connect_start((struct sockaddr *)&ss, len, &fd, &in_progress, &err) == 0) {
            if (cl_loop_watch(w->loop, &c->uw, fd, on_upstream) < 0) {
                close(fd);
                imds_close(c, "epoll_ctl failed");
                return;
            }
            if (!in_progress) {
                c->state = I_SEND_REQ;
                c->u_writable = true;
            }
            return;
        }
        if (err == EAGAIN && ss.ss_family == AF_UNIX && cl_loop_now(w->loop) + RETRY_MAX_MS < c->deadline) {
            c->retry_ms = c->retry_ms ? (c->retry_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : c->retry_ms * 2) : 1;
            c->retrying = true;
            cl_timer_start(w->loop, &c->timer, c->retry_ms, on_timer);
            return;
        }
        c->last_err = err;
        c->attempt++;
    }
}

/* 0 (*done when everything is out) or CL_EIO with the strerror text. */
CL_MUST_CHECK static int send_out(imds *c, int fd, bool *writable, bool *done)
{
    while (c->out_off < c->out.len && *writable) {
        ssize_t n = send(fd, c->out.data + c->out_off, c->out.len - c->out_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) {
                *writable = false;
                break;
            }
            if (errno == EINTR)
                continue;
            return cl_error_set(CL_EIO, "%s", strerror(errno));
        }
        c->out_off += (size_t)n;
    }
    *done = c->out_off == c->out.len;
    return CL_OK;
}

static int add_response_headers(imds *c, const cl_http_head *h, size_t body_len)
{
    char line[160];
    snprintf(line, sizeof line, "HTTP/1.1 %d %.*s\r\n", h->status, (int)(h->reason.len > 100 ? 100 : h->reason.len),
             h->reason.data ? (const char *)h->reason.data : "");
    CL_TRY(append_text(&c->out, line));
    for (size_t i = 0; i < h->header_count; i++) {
        const cl_http_header *hd = &h->headers[i];
        if (cl_http_is_hop_by_hop(h, hd->name) || cl_slice_eq_nocase(hd->name, "Content-Length"))
            continue;
        CL_TRY(cl_buf_append(&c->out, hd->name.data, hd->name.len));
        CL_TRY(append_text(&c->out, ": "));
        CL_TRY(cl_buf_append(&c->out, hd->value.data, hd->value.len));
        CL_TRY(append_text(&c->out, "\r\n"));
    }
    snprintf(line, sizeof line, "Content-Length: %zu\r\nConnection: close\r\n\r\n", body_len);
    return append_text(&c->out, line);
}

/* 1: the response is complete and queued for the client; 0: wait for more. */
static int finish_response(imds *c, bool eof)
{
    cl_http_head *h = calloc(1, sizeof *h);
    if (!h)
        return cl_error_set(CL_ENOMEM, "out of memory");
    int rc = CL_OK;
    cl_buf body = CL_BUF_INIT;
    bool complete = false;
    cl_slice method = {(const uint8_t *)c->method, strlen(c->method)};
    CL_TRY_OUT(cl_http_parse_response(c->in.data, c->in.len, MAX_RESPONSE_HEAD, method, h, &complete));
    if (!complete) {
        CL_ENSURE_OUT(!eof, CL_EPROTO, "the endpoint closed the connection before a whole response head");
        goto out;
    }
    const uint8_t *rest = c->in.data + h->head_len;
    size_t rest_len = c->in.len - h->head_len;
    switch (h->body) {
    case CL_HTTP_BODY_NONE:
        break;
    case CL_HTTP_BODY_LENGTH:
        if (rest_len < h->content_length) {
            CL_ENSURE_OUT(!eof, CL_EPROTO, "the endpoint closed the connection inside the response body");
            complete = false;
            goto out;
        }
        CL_TRY_OUT(cl_buf_append(&body, rest, (size_t)h->content_length));
        break;
    case CL_HTTP_BODY_CHUNKED: {
        cl_chunked st = {0};
        size_t pos = 0;
        while (!st.done) {
            size_t used, off, n;
            CL_TRY_OUT(cl_chunked_next(&st, rest + pos, rest_len - pos, &used, &off, &n));
            if (n)
                CL_TRY_OUT(cl_buf_append(&body, rest + pos + off, n));
            pos += used;
            if (!st.done && pos == rest_len) {
                CL_ENSURE_OUT(!eof, CL_EPROTO, "the endpoint closed the connection inside a chunked body");
                complete = false;
                goto out;
            }
        }
        break;
    }
    default: /* until close */
        if (!eof) {
            complete = false;
            goto out;
        }
        CL_TRY_OUT(cl_buf_append(&body, rest, rest_len));
    }
    cl_buf_reset(&c->out);
    c->out_off = 0;
    c->status = h->status;
    CL_TRY_OUT(add_response_headers(c, h, body.len));
    CL_TRY_OUT(cl_buf_append(&c->out, body.data, body.len));
out:
    cl_buf_free(&body);
    free(h);
    if (rc < 0)
        return rc;
    return complete ? 1 : 0;
}

static void read_response(imds *c)
{
    bool eof = false;
    while (c->u_readable) {
        if (c->in.len >= MAX_RESPONSE) {
            respond(c, 502, "Bad Gateway", "cloister host: the IMDS response is larger than 256 KiB\n");
            return;
        }
        if (cl_buf_reserve(&c->in, 4096) < 0) {
            imds_close(c, "out of memory");
            return;
        }
        ssize_t n = recv(c->uw.fd, c->in.data + c->in.len, c->in.cap - c->in.len, 0);
        if (n < 0) {
            if (errno == EAGAIN) {
                c->u_readable = false;
                break;
            }
            if (errno == EINTR)
                continue;
            char body[160];
            snprintf(body, sizeof body, "cloister host: reading from the IMDS endpoint: %s\n", strerror(errno));
            respond(c, 502, "Bad Gateway", body);
            return;
        }
        if (n == 0) {
            eof = true;
            c->u_readable = false;
            break;
        }
        c->in.len += (size_t)n;
    }
    int rc = finish_response(c, eof);
    if (rc < 0) {
        char body[320];
        snprintf(body, sizeof body, "cloister host: bad answer from the IMDS endpoint: %s\n", cl_error_message());
        respond(c, 502, "Bad Gateway", body);
        return;
    }
    if (rc == 1) {
        close_upstream(c);
        c->state = I_SEND_RESP;
    }
}

/* ---- the state machine ---- */

static void step(imds *c)
{
    for (;;) {
        int before = c->state;
        switch (c->state) {
        case I_READ_REQ:
            read_request(c);
            break;
        case I_SEND_REQ: {
            bool done;
            if (send_out(c, c->uw.fd, &c->u_writable, &done) < 0) {
                char body[160];
                snprintf(body, sizeof body, "cloister host: sending to the IMDS endpoint: %s\n", cl_error_message());
                respond(c, 502, "Bad Gateway", body);
            } else if (done) {
                cl_buf_reset(&c->out);
                c->out_off = 0;
                c->state = I_READ_RESP;
            }
            break;
        }
        case I_READ_RESP:
            read_response(c);
            break;
        case I_SEND_RESP: {
            bool done;
            if (send_out(c, c->cw.fd, &c->c_writable, &done) < 0) {
                imds_close(c, "client write error");
                return;
            }
            if (done) {
                /* let the client read the answer before the socket goes */
                shutdown(c->cw.fd, SHUT_WR);
                c->state = I_LINGER;
                cl_timer_start(c->w->loop, &c->timer, LINGER_MS, on_timer);
            }
            break;
        }
        case I_LINGER: {
            char sink[512];
            while (c->c_readable) {
                ssize_t n = recv(c->cw.fd, sink, sizeof sink, 0);
                if (n > 0)
                    continue;
                if (n < 0 && errno == EAGAIN) {
                    c->c_readable = false;
                    break;
                }
                if (n < 0 && errno == EINTR)
                    continue;
                imds_close(c, "done");
                return;
            }
            break;
        }
        default:
            return;
        }
        if (c->state == before || c->state == I_CLOSED)
            return;
    }
}

static void on_timer(cl_loop *loop, cl_timer *t)
{
    imds *c = HOST_CONTAINER(t, imds, timer);
    uint64_t now = cl_loop_now(loop);
    if (c->state == I_CONNECTING && c->retrying && now < c->deadline) {
        c->retrying = false;
        cl_timer_start(loop, &c->timer, c->deadline - now, on_timer);
        try_connect(c);
        step(c);
        return;
    }
    switch (c->state) {
    case I_READ_REQ:
        imds_close(c, "request timeout");
        return;
    case I_CONNECTING:
    case I_SEND_REQ:
    case I_READ_RESP:
        respond(c, 504, "Gateway Timeout", "cloister host: the IMDS endpoint did not answer in time\n");
        cl_timer_start(loop, &c->timer, LINGER_MS, on_timer);
        step(c);
        return;
    default:
        imds_close(c, c->state == I_LINGER ? "done" : "client too slow");
    }
}

static void on_upstream(cl_loop *loop, cl_watch *watch, uint32_t events)
{
    imds *c = HOST_CONTAINER(watch, imds, uw);
    if (c->state == I_CONNECTING) {
        int fd = watch->fd;
        bool connected;
        int err;
        int r = host_connect_result(fd, &connected, &err);
        if (r == CL_OK && !connected)
            return;
        if (r < 0) {
            cl_loop_unwatch(loop, watch);
            close(fd);
            c->last_err = err;
            c->attempt++;
            try_connect(c);
            step(c);
            return;
        }
        c->state = I_SEND_REQ;
    }
    apply(&c->u_readable, &c->u_writable, events);
    step(c);
}

static void on_client(cl_loop *loop, cl_watch *watch, uint32_t events)
{
    (void)loop;
    imds *c = HOST_CONTAINER(watch, imds, cw);
    apply(&c->c_readable, &c->c_writable, events);
    step(c);
}

void imds_accept(host_worker *w, host_listener *l, int fd)
{
    imds *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        host_slot_release(w);
        host_warn_limited(w, "refused", "reason", "out of memory", NULL);
        return;
    }
    c->w = w;
    c->l = l;
    c->id = ++w->next_id;
    c->cw.fd = c->uw.fd = -1;
    c->base.close = imds_close_cb;
    c->base.prev = c->base.next = &c->base;
    c->deadline = cl_loop_now(w->loop) + EXCHANGE_TIMEOUT_MS;
    snprintf(c->method, sizeof c->method, "-");
    snprintf(c->path, sizeof c->path, "-");
    if (cl_loop_watch(w->loop, &c->cw, fd, on_client) < 0) {
        close(fd);
        host_slot_release(w);
        free(c);
        return;
    }
    host_conn_add(w, &c->base);
    if (host_debug()) {
        char id[24];
        host_conn_id(w, c->id, id);
        cl_log(CL_LOG_DEBUG, "imds-accepted", "conn", id, NULL);
    }
    cl_timer_start(w->loop, &c->timer, EXCHANGE_TIMEOUT_MS, on_timer);
}

/* HTTP/2 front end (RFC 9113) on libnghttp2: one server session per
 * connection whose TLS handshake chose "h2", one request per stream.
 *
 * Local routes are answered in process as on HTTP/1.1.  Everything else
 * becomes an HTTP/1.1 exchange with the app (include/cloister/enclave/upstream.h),
 * with backpressure both ways and nothing buffered whole:
 *
 *  - request bodies: automatic WINDOW_UPDATEs are off, and the client's
 *    window is given back (nghttp2_session_consume) only for bytes the app
 *    has taken, so a slow app slows its client down.  What the app has not
 *    taken yet waits here, bounded by the stream window (256 KiB), all
 *    streams together by the connection window (1 MiB), and all
 *    connections together by max_buffered_body (a stream that would go
 *    beyond is answered 503).  At most h2_max_streams streams, and so app
 *    exchanges, per connection (SETTINGS_MAX_CONCURRENT_STREAMS; nghttp2
 *    refuses more), and the app connections of the whole server are
 *    capped in upstream.c, where the exchanges beyond wait;
 *  - response bodies: at most H2_RESP_BUF bytes per stream wait between
 *    the app and nghttp2; the DATA provider defers while that buffer is
 *    empty and the exchange is paused while it is full.
 *
 * nghttp2 is driven only from cl_h2_io (socket events and deferred kicks).
 * The upstream callbacks change a stream's state, submit frames and
 * schedule cl_h2_io; they never run inside nghttp2 and never free a
 * stream, which only on_stream_close and cl_h2_free do. */
#include "cloister/core/clock.h"
#include "enclave/connection.h"

#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define H2_STREAM_WINDOW (256 << 10) /* request body bytes in flight per stream */
#define H2_CONN_WINDOW (1 << 20)     /* ... and for all streams of a connection */
#define H2_RESP_BUF (64 * 1024)    /* response body bytes held per stream */
#define H2_DISCARD_MAX (1 << 20)   /* request body read past after a complete response, then RST_STREAM */
#define H2_GOAWAY_GRACE_MS 1000    /* shutdown notice to final GOAWAY, if the PING is not answered first */
#define H2_OUT_MIN_ROOM 4096       /* write out before asking nghttp2 for more below this */
#define H2_FIELD_OVERHEAD 4        /* ": " and CRLF: a field costs what it would on HTTP/1.1 */

static const uint8_t drain_ping[8] = {'c', 'l', '-', 'd', 'r', 'a', 'i', 'n'};

typedef struct h2_conn h2_conn;
typedef struct h2_stream h2_stream;

/* A name and a value, as offsets into the stream's copy of its head. */
typedef struct h2_field {
    uint32_t name_off, name_len, value_off, value_len;
} h2_field;

enum { PSEUDO_METHOD, PSEUDO_PATH, PSEUDO_AUTHORITY, PSEUDO_COUNT };

/* Bytes waiting for a reader, compacted before each append. */
typedef struct byte_queue {
    uint8_t *data;
    size_t off, len, cap;
} byte_queue;

struct h2_stream {
    h2_conn *h;
    h2_stream *prev, *next;
    int32_t id;

    /* the request head, copied out of nghttp2's buffers */
    cl_buf fields;
    h2_field field[CL_HTTP_MAX_HEADERS];
    size_t field_count;
    h2_field pseudo[PSEUDO_COUNT];
    bool has_pseudo[PSEUDO_COUNT];
    size_t head_bytes;
    bool head_too_large;
    const char *head_error; /* a 400's reason */
    bool expect_continue, head_request, has_content_length;
    uint64_t content_length;

    bool started; /* the head is complete and the request routed */
    bool req_end; /* END_STREAM from the client */
    int route;
    int body_mode; /* towards the app: CL_HTTP_BODY_* */
    uint64_t started_us;
    int status;     /* of the response submitted, 0 before */
    size_t unacked; /* DATA bytes received and not yet given back to the client's windows */

    cl_buf local_body;

    /* the app */
    cl_upstream *up;
    byte_queue req_pending; /* request body bytes the app has not taken yet */
    bool up_paused;         /* on_data took less than it was offered */

    /* the response */
    bool resp_started, resp_eof, resp_deferred;
    bool resp_complete; /* END_STREAM sent */
    size_t discarded;   /* request body bytes read past since */
    cl_buf resp_body;   /* a complete body: local routes and errors */
    size_t resp_off;
    uint8_t *resp_buf;  /* the app's body in passing */
    size_t resp_buf_off, resp_buf_len;
};

struct h2_conn {
    client *c;
    nghttp2_session *session;
    h2_stream *streams;
    byte_queue spill; /* a frame that did not fit in the client's out buffer */
    cl_timer goaway_timer;
    bool draining, final_goaway;
    bool failed; /* a window update could not be queued */
    bool in_io, io_again;
    size_t conn_unacked; /* received on streams that closed before their bytes were given back */
};

static const cl_server_config *config_of(const h2_conn *h)
{
    return &h->c->w->server->cfg;
}

static void h2_kick(cl_deferred *d)
{
    client *c = (client *)((char *)d - offsetof(client, kick));
    if (!c->closed && c->h2)
        cl_h2_io(c);
}

/* Runs cl_h2_io after the current batch of events. */
static void schedule_io(h2_conn *h)
{
    if (!h->c->closed)
        cl_loop_defer(h->c->w->loop, &h->c->kick, h2_kick);
}

static void on_idle_timeout(cl_loop *loop, cl_timer *t);

/* Activity: pushes the idle timeout back.  The client's own timer is used,
 * with a callback that knows about streams. */
static void touch(h2_conn *h)
{
    cl_timer_start(h->c->w->loop, &h->c->timer, config_of(h)->idle_timeout_ms, on_idle_timeout);
}

/* ---- byte queues ------------------------------------------------------- */

static int queue_push(byte_queue *q, const uint8_t *data, size_t len)
{
    if (q->off) {
        memmove(q->data, q->data + q->off, q->len - q->off);
        q->len -= q->off;
        q->off = 0;
    }
    if (q->cap - q->len < len) {
        size_t cap = q->cap ? q->cap : 16 * 1024;
        while (cap - q->len < len)
            cap *= 2;
        uint8_t *p = realloc(q->data, cap);
        CL_ENSURE(p, CL_ENOMEM, "out of memory");
        q->data = p;
        q->cap = cap;
    }
    memcpy(q->data + q->len, data, len);
    q->len += len;
    return CL_OK;
}

static size_t queue_size(const byte_queue *q)
{
    return q->len - q->off;
}

static void queue_pop(byte_queue *q, size_t n)
{
    q->off += n;
    if (q->off == q->len)
        q->off = q->len = 0;
}

static void queue_free(byte_queue *q)
{
    free(q->data);
    memset(q, 0, sizeof *q);
}

/* ---- flow control ------------------------------------------------------ */

/* Gives n request body bytes of s back to the client's windows. */
static void ack(h2_stream *s, size_t n)
{
    if (!n)
        return;
    s->unacked -= n;
    if (nghttp2_session_consume(s->h->session, s->id, n) != 0)
        s->h->failed = true;
}

/* Request body bytes waiting for the app, counted server-wide. */
static atomic_size_t *buffered_counter(h2_stream *s)
{
    return &s->h->c->w->server->buffered_body;
}

static void pending_pop(h2_stream *s, size_t n)
{
    queue_pop(&s->req_pending, n);
    atomic_fetch_sub(buffered_counter(s), n);
}

static void pending_free(h2_stream *s)
{
    atomic_fetch_sub(buffered_counter(s), queue_size(&s->req_pending));
    queue_free(&s->req_pending);
}

/* The app will not take the rest of the request body: it is dropped. */
static void drop_pending(h2_stream *s)
{
    ack(s, queue_size(&s->req_pending));
    pending_free(s);
}

/* Moves waiting request body bytes to the app. */
static void forward_pending(h2_stream *s)
{
    while (s->up && queue_size(&s->req_pending)) {
        size_t took = cl_upstream_send(s->up, s->req_pending.data + s->req_pending.off, queue_size(&s->req_pending));
        if (!took)
            break;
        pending_pop(s, took);
        ack(s, took);
    }
    if (s->up && s->req_end && !queue_size(&s->req_pending))
        cl_upstream_send_end(s->up);
}

/* ---- responses --------------------------------------------------------- */

#define NV_LIT(n, v) {(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NONE}

static void reset_stream(h2_stream *s, uint32_t code)
{
    if (s->up) {
        cl_upstream_abort(s->up);
        s->up = NULL;
    }
    drop_pending(s);
    s->resp_started = true;
    (void)nghttp2_submit_rst_stream(s->h->session, NGHTTP2_FLAG_NONE, s->id, code);
}

static ssize_t read_complete_body(nghttp2_session *session, int32_t id, uint8_t *buf, size_t length,
                                  uint32_t *flags, nghttp2_data_source *source, void *user)
{
    (void)session, (void)id, (void)user;
    h2_stream *s = source->ptr;
    size_t left = s->resp_body.len - s->resp_off;
    size_t n = left < length ? left : length;
    if (n)
        memcpy(buf, s->resp_body.data + s->resp_off, n);
    s->resp_off += n;
    if (s->resp_off == s->resp_body.len)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

/* A whole response from here; takes body. */
static void respond_simple(h2_stream *s, int status, const char *content_type, cl_buf *body)
{
    if (s->up) {
        cl_upstream_abort(s->up);
        s->up = NULL;
    }
    drop_pending(s);
    cl_buf_free(&s->resp_body);
    s->resp_body = *body;
    *body = (cl_buf)CL_BUF_INIT;
    s->resp_off = 0;
    s->resp_started = true;
    s->status = status;

    char st[16], len[24];
    snprintf(st, sizeof st, "%03d", status >= 100 && status <= 999 ? status : 500);
    snprintf(len, sizeof len, "%zu", s->resp_body.len);
    /* "Date: ...\r\n" */
    const char *date = cl_server_date(s->h->c->w);
    size_t date_len = strlen(date);
    nghttp2_nv nv[] = {
        NV_LIT(":status", st),
        NV_LIT("content-type", content_type ? content_type : "text/plain; charset=utf-8"),
        NV_LIT("content-length", len),
        {(uint8_t *)"date", (uint8_t *)date + 6, 4, date_len > 8 ? date_len - 8 : 0, NGHTTP2_NV_FLAG_NONE},
    };
    nghttp2_data_provider prd = {.source.ptr = s, .read_callback = read_complete_body};
    bool with_body = !s->head_request && s->resp_body.len > 0;
    if (nghttp2_submit_response(s->h->session, s->id, nv, sizeof nv / sizeof nv[0], with_body ? &prd : NULL) != 0)
        reset_stream(s, NGHTTP2_INTERNAL_ERROR);
}

static void respond_error(h2_stream *s, int status, const char *message)
{
    char text[256];
    int n = snprintf(text, sizeof text, "%d %s: %s\n", status, cl_http_status_text(status), message);
    cl_buf body = CL_BUF_INIT;
    if (cl_buf_append(&body, text, (size_t)n < sizeof text ? (size_t)n : sizeof text - 1) < 0) {
        reset_stream(s, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    respond_simple(s, status, NULL, &body);
}

/* ---- the request head -------------------------------------------------- */

static cl_slice field_slice(const h2_stream *s, uint32_t off, uint32_t len)
{
    if (!len)
        return (cl_slice){(const uint8_t *)"", 0};
    return (cl_slice){s->fields.data + off, len};
}

static cl_slice pseudo_value(const h2_stream *s, int which)
{
    if (!s->has_pseudo[which])
        return (cl_slice){NULL, 0};
    return field_slice(s, s->pseudo[which].value_off, s->pseudo[which].value_len);
}

static bool has_ctl(const uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (p[i] == '\r' || p[i] == '\n' || p[i] == '\0')
            return true;
    return false;
}

static bool ascii_eq_nocase(const uint8_t *p, size_t len, const char *text)
{
    return cl_slice_eq_nocase((cl_slice){p, len}, text);
}

/* The head as an HTTP/1.1 parse of the same request would give it; its
 * slices point into s->fields. */
static void synth_head(const h2_stream *s, cl_http_head *hd)
{
    memset(hd, 0, sizeof *hd);
    hd->method = pseudo_value(s, PSEUDO_METHOD);
    hd->target = pseudo_value(s, PSEUDO_PATH);
    const uint8_t *q = hd->target.len ? memchr(hd->target.data, '?', hd->target.len) : NULL;
    hd->path = (cl_slice){hd->target.data, q ? (size_t)(q - hd->target.data) : hd->target.len};
    hd->query = q ? (cl_slice){q + 1, hd->target.len - hd->path.len - 1} : (cl_slice){NULL, 0};
    hd->version_minor = 1;
    for (size_t i = 0; i < s->field_count; i++) {
        hd->headers[i].name = field_slice(s, s->field[i].name_off, s->field[i].name_len);
        hd->headers[i].value = field_slice(s, s->field[i].value_off, s->field[i].value_len);
    }
    hd->header_count = s->field_count;
    hd->body = s->body_mode;
    hd->content_length = s->content_length;
    hd->keep_alive = true;
    hd->expect_continue = s->expect_continue;
    hd->host = pseudo_value(s, PSEUDO_AUTHORITY);
    if (!hd->host.len) {
        const cl_slice *host = cl_http_header_get(hd, "host");
        if (host)
            hd->host = *host;
    }
}

static bool forwarded_as_is(const cl_http_head *hd, cl_slice name)
{
    static const char *const dropped[] = {"host", "content-length", "cookie", "http2-settings"};
    if (cl_http_is_hop_by_hop(hd, name) || cl_http_is_proxy_owned(name))
        return false;
    for (size_t i = 0; i < sizeof dropped / sizeof dropped[0]; i++)
        if (cl_slice_eq_nocase(name, dropped[i]))
            return false;
    return true;
}

/* The HTTP/1.1 request head for the app. */
static int build_upstream_head(const h2_stream *s, const cl_http_head *hd, cl_buf *out)
{
    client *c = s->h->c;
    int rc = cl_buf_append(out, hd->method.data, hd->method.len);
    rc |= cl_buf_append(out, " ", 1);
    rc |= cl_buf_append(out, hd->target.data, hd->target.len);
    rc |= cl_buf_append(out, " HTTP/1.1\r\nHost: ", 17);
    if (hd->host.len)
        rc |= cl_buf_append(out, hd->host.data, hd->host.len);
    else
        rc |= cl_buf_append(out, "localhost", 9);
    rc |= cl_buf_append(out, "\r\n", 2);
    bool cookie = false;
    for (size_t i = 0; i < hd->header_count; i++) {
        cl_slice name = hd->headers[i].name, value = hd->headers[i].value;
        if (cl_slice_eq(name, "cookie")) {
            /* HTTP/2 may split the cookie field; HTTP/1.1 wants one line (RFC 9113 8.2.3) */
            rc |= cookie ? cl_buf_append(out, "; ", 2) : cl_buf_append(out, "Cookie: ", 8);
            rc |= cl_buf_append(out, value.data, value.len);
            cookie = true;
        }
    }
    if (cookie)
        rc |= cl_buf_append(out, "\r\n", 2);
    for (size_t i = 0; i < hd->header_count; i++) {
        cl_slice name = hd->headers[i].name, value = hd->headers[i].value;
        if (!forwarded_as_is(hd, name))
            continue;
        rc |= cl_buf_append(out, name.data, name.len);
        rc |= cl_buf_append(out, ": ", 2);
        rc |= cl_buf_append(out, value.data, value.len);
        rc |= cl_buf_append(out, "\r\n", 2);
    }
    rc |= cl_server_forwarded_headers(out, c->peer, c->ssl != NULL, hd->host);
    if (s->has_content_length) {
        char line[64];
        int n = snprintf(line, sizeof line, "Content-Length: %llu\r\n", (unsigned long long)s->content_length);
        rc |= cl_buf_append(out, line, (size_t)n);
    } else if (s->body_mode == CL_HTTP_BODY_CHUNKED) {
        rc |= cl_buf_append(out, "Transfer-Encoding: chunked\r\n", 28);
    }
    rc |= cl_buf_append(out, "\r\n", 2);
    return rc < 0 ? cl_error_set(CL_ENOMEM, "out of memory") : CL_OK;
}

static int parse_content_length(h2_stream *s)
{
    for (size_t i = 0; i < s->field_count; i++) {
        const h2_field *f = &s->field[i];
        if (!ascii_eq_nocase(s->fields.data + f->name_off, f->name_len, "content-length"))
            continue;
        CL_ENSURE(!s->has_content_length, CL_EPARSE, "more than one content-length");
        CL_ENSURE(f->value_len > 0 && f->value_len <= 19, CL_EPARSE, "invalid content-length");
        uint64_t v = 0;
        for (uint32_t k = 0; k < f->value_len; k++) {
            uint8_t d = s->fields.data[f->value_off + k];
            CL_ENSURE(d >= '0' && d <= '9', CL_EPARSE, "invalid content-length");
            v = v * 10 + (d - '0');
        }
        s->has_content_length = true;
        s->content_length = v;
    }
    return CL_OK;
}

/* ---- the app's side ---------------------------------------------------- */

static ssize_t read_app_body(nghttp2_session *session, int32_t id, uint8_t *buf, size_t length, uint32_t *flags,
                             nghttp2_data_source *source, void *user)
{
    (void)session, (void)id, (void)user;
    h2_stream *s = source->ptr;
    if (!s->resp_buf_len) {
        if (s->resp_eof) {
            *flags |= NGHTTP2_DATA_FLAG_EOF;
            return 0;
        }
        s->resp_deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    size_t n = s->resp_buf_len < length ? s->resp_buf_len : length;
    memcpy(buf, s->resp_buf + s->resp_buf_off, n);
    s->resp_buf_off += n;
    s->resp_buf_len -= n;
    if (!s->resp_buf_len) {
        s->resp_buf_off = 0;
        if (s->resp_eof)
            *flags |= NGHTTP2_DATA_FLAG_EOF;
    }
    if (s->up_paused && s->up && H2_RESP_BUF - s->resp_buf_len >= H2_RESP_BUF / 2) {
        s->up_paused = false;
        cl_upstream_resume(s->up); /* only schedules: no callback from inside nghttp2 */
    }
    return (ssize_t)n;
}

static void up_on_head(void *owner, const cl_http_head *r)
{
    h2_stream *s = owner;
    h2_conn *h = s->h;
    if (r->status < 200) {
        if (r->status == 100 && s->expect_continue && !s->resp_started) {
            nghttp2_nv nv[] = {NV_LIT(":status", "100")};
            (void)nghttp2_submit_headers(h->session, NGHTTP2_FLAG_NONE, s->id, NULL, nv, 1, NULL);
            schedule_io(h);
        }
        return; /* other interim responses (and 101, never asked for) are not passed on */
    }
    if (s->resp_started)
        return;
    nghttp2_nv nv[CL_HTTP_MAX_HEADERS + 2];
    size_t n = 0;
    char st[16], len[24];
    snprintf(st, sizeof st, "%03d", r->status);
    nv[n++] = (nghttp2_nv)NV_LIT(":status", st);
    for (size_t i = 0; i < r->header_count; i++) {
        cl_slice name = r->headers[i].name, value = r->headers[i].value;
        /* nghttp2 copies and lowercases the names */
        if (cl_http_is_hop_by_hop(r, name) || cl_slice_eq_nocase(name, "content-length"))
            continue;
        nv[n++] = (nghttp2_nv){(uint8_t *)name.data, (uint8_t *)value.data, name.len, value.len, NGHTTP2_NV_FLAG_NONE};
    }
    if (r->body == CL_HTTP_BODY_LENGTH) {
        snprintf(len, sizeof len, "%llu", (unsigned long long)r->content_length);
        nv[n++] = (nghttp2_nv)NV_LIT("content-length", len);
    } else if (r->body == CL_HTTP_BODY_NONE && s->head_request) {
        const cl_slice *cl = cl_http_header_get(r, "content-length"); /* the length a GET would have had */
        if (cl)
            nv[n++] = (nghttp2_nv){(uint8_t *)"content-length", (uint8_t *)cl->data, 14, cl->len, NGHTTP2_NV_FLAG_NONE};
    }
    s->status = r->status;
    s->resp_started = true;
    bool body = r->body != CL_HTTP_BODY_NONE;
    if (body && !s->resp_buf)
        s->resp_buf = malloc(H2_RESP_BUF);
    nghttp2_data_provider prd = {.source.ptr = s, .read_callback = read_app_body};
    if ((body && !s->resp_buf) || nghttp2_submit_response(h->session, s->id, nv, n, body ? &prd : NULL) != 0)
        reset_stream(s, NGHTTP2_INTERNAL_ERROR);
    schedule_io(h);
}

static size_t up_on_data(void *owner, const uint8_t *data, size_t len)
{
    h2_stream *s = owner;
    h2_conn *h = s->h;
    if (!s->resp_buf)
        return len; /* a body where none was announced: nowhere to go */
    if (s->resp_buf_off && s->resp_buf_off + s->resp_buf_len + len > H2_RESP_BUF) {
        memmove(s->resp_buf, s->resp_buf + s->resp_buf_off, s->resp_buf_len);
        s->resp_buf_off = 0;
    }
    size_t room = H2_RESP_BUF - s->resp_buf_off - s->resp_buf_len;
    size_t take = len < room ? len : room;
    memcpy(s->resp_buf + s->resp_buf_off + s->resp_buf_len, data, take);
    s->resp_buf_len += take;
    if (take < len)
        s->up_paused = true;
    if (take && s->resp_deferred) {
        s->resp_deferred = false;
        (void)nghttp2_session_resume_data(h->session, s->id);
    }
    touch(h);
    schedule_io(h);
    return take;
}

static void up_on_end(void *owner)
{
    h2_stream *s = owner;
    s->up = NULL;
    s->resp_eof = true;
    drop_pending(s); /* the app answered without the rest of the body */
    if (s->resp_deferred) {
        s->resp_deferred = false;
        (void)nghttp2_session_resume_data(s->h->session, s->id);
    }
    schedule_io(s->h);
}

static void up_on_error(void *owner, int status, const char *why)
{
    h2_stream *s = owner;
    s->up = NULL;
    if (!s->resp_started && status)
        respond_error(s, status, why);
    else
        reset_stream(s, NGHTTP2_INTERNAL_ERROR); /* the response was cut short */
    schedule_io(s->h);
}

static void up_on_send_ready(void *owner)
{
    h2_stream *s = owner;
    forward_pending(s);
    schedule_io(s->h); /* WINDOW_UPDATEs for what the app took */
}

static const cl_upstream_ops stream_upstream_ops = {
    .on_head = up_on_head,
    .on_data = up_on_data,
    .on_end = up_on_end,
    .on_error = up_on_error,
    .on_send_ready = up_on_send_ready,
};

/* ---- requests ---------------------------------------------------------- */

static void answer_local(h2_stream *s)
{
    const cl_server_config *cfg = config_of(s->h);
    cl_http_head hd;
    synth_head(s, &hd);
    cl_request_info info = {
        .head = &hd,
        .body = s->local_body.data,
        .body_len = s->local_body.len,
        .peer = s->h->c->peer,
        .tls = s->h->c->ssl != NULL,
        .ssl = s->h->c->ssl,
    };
    cl_response resp = {.status = 200, .body = CL_BUF_INIT};
    cfg->handle(cfg->ctx, s->route, &info, &resp);
    respond_simple(s, resp.status, resp.content_type, &resp.body);
    cl_buf_free(&resp.body);
}

static void start_request(h2_stream *s, bool end_stream)
{
    h2_conn *h = s->h;
    const cl_server_config *cfg = config_of(h);
    s->started = true;
    s->started_us = cl_monotonic_us();
    s->route = -2; /* until routed: answered here, counted as "other" */
    if (s->head_too_large) {
        respond_error(s, 431, "request head too large");
        return;
    }
    if (s->head_error) {
        respond_error(s, 400, s->head_error);
        return;
    }
    if (!s->has_pseudo[PSEUDO_METHOD] || !s->has_pseudo[PSEUDO_PATH]) {
        respond_error(s, 400, "a request needs :method and :path");
        return;
    }
    if (parse_content_length(s) < 0) {
        respond_error(s, 400, cl_error_message());
        return;
    }
    /* The checks the HTTP/1.1 parser makes of the request line and Host:
     * origin-form only (an absolute URI's host could differ from the one
     * the app is given), no userinfo in the authority. */
    cl_slice path = pseudo_value(s, PSEUDO_PATH);
    bool asterisk = path.len == 1 && path.data[0] == '*';
    if (!asterisk && (!path.len || path.data[0] != '/')) {
        respond_error(s, 400, "the :path must be a path (origin-form)");
        return;
    }
    for (size_t i = 0; i < path.len; i++) {
        if (path.data[i] <= 0x20 || path.data[i] >= 0x7f) {
            respond_error(s, 400, "invalid character in :path");
            return;
        }
    }
    cl_slice authority = pseudo_value(s, PSEUDO_AUTHORITY);
    if (s->has_pseudo[PSEUDO_AUTHORITY] && !cl_http_is_host_value(authority)) {
        respond_error(s, 400, "invalid :authority (a host and port, no userinfo)");
        return;
    }
    for (size_t i = 0; i < s->field_count; i++) {
        const h2_field *f = &s->field[i];
        if (ascii_eq_nocase(s->fields.data + f->name_off, f->name_len, "host") &&
            !cl_http_is_host_value(field_slice(s, f->value_off, f->value_len))) {
            respond_error(s, 400, "invalid host header");
            return;
        }
    }
    s->body_mode = end_stream ? CL_HTTP_BODY_NONE : s->has_content_length ? CL_HTTP_BODY_LENGTH : CL_HTTP_BODY_CHUNKED;
    cl_http_head hd;
    synth_head(s, &hd);
    s->head_request = cl_slice_eq(hd.method, "HEAD");

    int route = cfg->route ? cfg->route(cfg->ctx, &hd) : -1;
    if (route >= 0) {
        s->route = route;
        if (s->has_content_length && s->content_length > cfg->max_local_body)
            respond_error(s, 413, "request body too large");
        return; /* answered once the body is complete */
    }
    if (!cfg->app) {
        cl_buf body = CL_BUF_INIT;
        if (cl_buf_append(&body, "not found\n", 10) < 0)
            reset_stream(s, NGHTTP2_INTERNAL_ERROR);
        else
            respond_simple(s, 404, NULL, &body);
        return;
    }
    s->route = -1;
    cl_buf head = CL_BUF_INIT;
    int rc = build_upstream_head(s, &hd, &head);
    if (rc == CL_OK)
        rc = cl_upstream_begin(h->c->w->pool, &stream_upstream_ops, s, head.data, head.len, hd.method, s->body_mode,
                               false, &s->up);
    cl_buf_free(&head);
    if (rc < 0) {
        s->up = NULL;
        respond_error(s, rc == CL_ELIMIT ? 431 : 502, cl_error_message());
    }
}

/* Request body bytes for s; each is given back to the client's windows
 * once it has a destination. */
static void take_body(h2_stream *s, const uint8_t *data, size_t len)
{
    const cl_server_config *cfg = config_of(s->h);
    if (s->route >= 0) {
        ack(s, len);
        if (s->resp_started)
            return; /* answered already (413): discard */
        if (s->local_body.len + len > cfg->max_local_body) {
            cl_buf_free(&s->local_body);
            respond_error(s, 413, "request body too large");
        } else if (cl_buf_append(&s->local_body, data, len) < 0) {
            respond_error(s, 500, "out of memory");
        }
        return;
    }
    if (!s->up) {
        ack(s, len); /* answered here, or the app is done with the request: discard */
        return;
    }
    size_t took = queue_size(&s->req_pending) ? 0 : cl_upstream_send(s->up, data, len);
    ack(s, took);
    if (took == len)
        return;
    /* The window bounds what one connection can make us hold; this bounds
     * all of them together. */
    size_t rest = len - took;
    if (atomic_fetch_add(buffered_counter(s), rest) + rest > cfg->max_buffered_body) {
        atomic_fetch_sub(buffered_counter(s), rest);
        ack(s, rest);
        respond_error(s, 503, "too much request body is waiting for the app");
        return;
    }
    if (queue_push(&s->req_pending, data + took, rest) < 0) {
        atomic_fetch_sub(buffered_counter(s), rest);
        reset_stream(s, NGHTTP2_INTERNAL_ERROR);
    }
}

static void request_end(h2_stream *s)
{
    s->req_end = true;
    if (!s->started)
        return;
    if (s->route >= 0 && !s->resp_started)
        answer_local(s);
    else if (s->up)
        forward_pending(s);
}

/* ---- nghttp2 callbacks ---------------------------------------------------- */

static h2_stream *stream_of(nghttp2_session *session, int32_t id)
{
    return nghttp2_session_get_stream_user_data(session, id);
}

static void stream_free(h2_conn *h, h2_stream *s)
{
    const cl_server_config *cfg = config_of(h);
    if (s->up) {
        cl_upstream_abort(s->up);
        s->up = NULL;
    }
    if (s->started && cfg->done)
        cfg->done(cfg->ctx, s->route, s->status, cl_monotonic_us() - s->started_us);
    h->conn_unacked += s->unacked;
    if (s->prev)
        s->prev->next = s->next;
    else
        h->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    cl_buf_free(&s->fields);
    cl_buf_free(&s->local_body);
    cl_buf_free(&s->resp_body);
    pending_free(s);
    free(s->resp_buf);
    free(s);
}

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user)
{
    h2_conn *h = user;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    h2_stream *s = calloc(1, sizeof *s);
    if (!s)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* RST_STREAM for this one */
    s->h = h;
    s->id = frame->hd.stream_id;
    s->route = -2;
    s->next = h->streams;
    if (h->streams)
        h->streams->prev = s;
    h->streams = s;
    if (nghttp2_session_set_stream_user_data(session, s->id, s) != 0) {
        stream_free(h, s);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    return 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                     const uint8_t *value, size_t valuelen, uint8_t flags, void *user)
{
    (void)flags;
    h2_conn *h = user;
    h2_stream *s = stream_of(session, frame->hd.stream_id);
    if (!s || frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0; /* trailers are not passed on */
    if (s->head_too_large)
        return 0;
    s->head_bytes += namelen + valuelen + H2_FIELD_OVERHEAD;
    bool pseudo = namelen && name[0] == ':';
    if (s->head_bytes > config_of(h)->max_header_bytes || (!pseudo && s->field_count == CL_HTTP_MAX_HEADERS)) {
        s->head_too_large = true; /* answered with a 431 once the head is complete */
        cl_buf_free(&s->fields);
        return 0;
    }
    /* nghttp2 has validated names and values (RFC 9113 8.2.1); what becomes
     * an HTTP/1.1 line is checked once more so that it cannot split one */
    if (has_ctl(name, namelen) || has_ctl(value, valuelen)) {
        s->head_error = "invalid character in a header field";
        return 0;
    }
    h2_field *f;
    if (pseudo) {
        int which = ascii_eq_nocase(name, namelen, ":method")      ? PSEUDO_METHOD
                    : ascii_eq_nocase(name, namelen, ":path")      ? PSEUDO_PATH
                    : ascii_eq_nocase(name, namelen, ":authority") ? PSEUDO_AUTHORITY
                                                                   : -1;
        if (which < 0) {
            /* :scheme; nghttp2 rejects the others.  The app is told https
             * (X-Forwarded-Proto): a request claiming another scheme is not
             * one for this origin. */
            if (ascii_eq_nocase(name, namelen, ":scheme") &&
                !ascii_eq_nocase(value, valuelen, h->c->ssl ? "https" : "http"))
                s->head_error = "unsupported :scheme";
            return 0;
        }
        if (s->has_pseudo[which]) {
            s->head_error = "repeated pseudo-header";
            return 0;
        }
        if (which == PSEUDO_PATH && memchr(value, ' ', valuelen)) {
            s->head_error = "invalid :path";
            return 0;
        }
        s->has_pseudo[which] = true;
        f = &s->pseudo[which];
    } else {
        f = &s->field[s->field_count++];
        if (ascii_eq_nocase(name, namelen, "expect") && ascii_eq_nocase(value, valuelen, "100-continue"))
            s->expect_continue = true;
    }
    f->name_off = (uint32_t)s->fields.len;
    f->name_len = (uint32_t)namelen;
    f->value_off = (uint32_t)(s->fields.len + namelen);
    f->value_len = (uint32_t)valuelen;
    if (cl_buf_append(&s->fields, name, namelen) < 0 || cl_buf_append(&s->fields, value, valuelen) < 0)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    return 0;
}

static void final_goaway(h2_conn *h)
{
    if (h->final_goaway)
        return;
    h->final_goaway = true;
    cl_timer_stop(h->c->w->loop, &h->goaway_timer);
    (void)nghttp2_submit_goaway(h->session, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(h->session),
                                NGHTTP2_NO_ERROR, NULL, 0);
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user)
{
    h2_conn *h = user;
    h2_stream *s;
    bool end_stream = frame->hd.flags & NGHTTP2_FLAG_END_STREAM;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        if (!(s = stream_of(session, frame->hd.stream_id)))
            break;
        if (frame->headers.cat == NGHTTP2_HCAT_REQUEST)
            start_request(s, end_stream);
        if (end_stream)
            request_end(s);
        break;
    case NGHTTP2_DATA:
        if (end_stream && (s = stream_of(session, frame->hd.stream_id)))
            request_end(s);
        break;
    case NGHTTP2_PING:
        if ((frame->hd.flags & NGHTTP2_FLAG_ACK) && h->draining &&
            !memcmp(frame->ping.opaque_data, drain_ping, sizeof drain_ping))
            final_goaway(h); /* the client has seen the notice: what it sent before is in */
        break;
    default:
        break;
    }
    return 0;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
                         void *user)
{
    (void)flags, (void)user;
    h2_stream *s = stream_of(session, id);
    if (!s) {
        (void)nghttp2_session_consume(session, id, len);
        return 0;
    }
    s->unacked += len;
    if (!s->resp_complete) {
        take_body(s, data, len);
        return 0;
    }
    /* The rest of a body nobody needs: read past a little of it, so that
     * clients which cannot take an early answer see it, then ask the client
     * to stop (RFC 9113 8.1). */
    ack(s, len);
    if (s->discarded <= H2_DISCARD_MAX && (s->discarded += len) > H2_DISCARD_MAX)
        (void)nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_NO_ERROR);
    return 0;
}

static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *user)
{
    (void)user;
    if ((frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) ||
        !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    h2_stream *s = stream_of(session, frame->hd.stream_id);
    if (s) {
        s->resp_complete = true;
        drop_pending(s); /* a complete response before the complete request */
    }
    return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t id, uint32_t error_code, void *user)
{
    (void)error_code;
    h2_stream *s = stream_of(session, id);
    if (s) {
        (void)nghttp2_session_set_stream_user_data(session, id, NULL);
        stream_free(user, s);
    }
    return 0;
}

/* ---- the connection ------------------------------------------------------ */

static void out_append(client *c, const uint8_t *data, size_t len)
{
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
}

/* Moves frames from nghttp2 to the socket until it would block or nothing
 * is left. */
static int h2_flush(h2_conn *h)
{
    client *c = h->c;
    for (;;) {
        size_t spill = queue_size(&h->spill);
        if (spill) {
            size_t room = cl_client_out_room(c), n = spill < room ? spill : room;
            out_append(c, h->spill.data + h->spill.off, n);
            queue_pop(&h->spill, n);
        }
        while (!queue_size(&h->spill) && cl_client_out_room(c) >= H2_OUT_MIN_ROOM) {
            const uint8_t *data;
            ssize_t n = nghttp2_session_mem_send(h->session, &data);
            if (n < 0)
                return cl_error_set(CL_EPROTO, "HTTP/2: %s", nghttp2_strerror((int)n));
            if (n == 0)
                break;
            size_t room = cl_client_out_room(c), take = (size_t)n < room ? (size_t)n : room;
            out_append(c, data, take);
            if (take < (size_t)n)
                CL_TRY(queue_push(&h->spill, data + take, (size_t)n - take));
        }
        if (c->out_off == c->out_len)
            return CL_OK; /* nghttp2 has nothing more for now */
        size_t w;
        if (cl_client_tls_write(c, c->out + c->out_off, c->out_len - c->out_off, &w) < 0)
            return cl_error_set(CL_EIO, "the client's connection failed");
        if (w == 0)
            return CL_OK; /* the socket is full: its next event brings us back */
        c->out_off += w;
        touch(h);
    }
}

/* Feeds nghttp2 what the client sent, until the socket would block. */
static int h2_read(h2_conn *h)
{
    client *c = h->c;
    for (;;) {
        size_t n;
        if (cl_client_tls_read(c, c->in, c->in_cap, &n) < 0)
            return cl_error_set(CL_EIO, "the client closed the connection");
        if (n == 0)
            return CL_OK;
        touch(h);
        ssize_t rv = nghttp2_session_mem_recv(h->session, c->in, n);
        if (rv < 0)
            return cl_error_set(CL_EPROTO, "HTTP/2: %s", nghttp2_strerror((int)rv));
    }
}

void cl_h2_io(client *c)
{
    h2_conn *h = c->h2;
    if (!h || c->closed)
        return;
    if (h->in_io) {
        h->io_again = true;
        return;
    }
    h->in_io = true;
    int rc;
    do {
        h->io_again = false;
        rc = h2_read(h);
        if (h->conn_unacked) {
            if (nghttp2_session_consume_connection(h->session, h->conn_unacked) != 0)
                h->failed = true;
            h->conn_unacked = 0;
        }
        if (rc == CL_EPROTO)
            (void)h2_flush(h); /* best effort: nghttp2 may have a GOAWAY to say why */
        if (rc == CL_OK && h->failed)
            rc = cl_error_set(CL_ENOMEM, "HTTP/2: cannot update a flow-control window");
        if (rc == CL_OK)
            rc = h2_flush(h);
    } while (rc == CL_OK && h->io_again);
    h->in_io = false;
    bool finished = !nghttp2_session_want_read(h->session) && !nghttp2_session_want_write(h->session) &&
                    c->out_off == c->out_len && !queue_size(&h->spill);
    if (rc < 0 || finished)
        c->w->close_client(c);
}

/* Idle means no bytes either way and no stream waiting for the app, which
 * has timeouts of its own; a stream waiting for its client does not count. */
static void on_idle_timeout(cl_loop *loop, cl_timer *t)
{
    (void)loop;
    client *c = (client *)((char *)t - offsetof(client, timer));
    h2_conn *h = c->h2;
    for (h2_stream *s = h ? h->streams : NULL; s; s = s->next) {
        if (s->up && !s->up_paused) {
            touch(h);
            return;
        }
    }
    if (h) {
        final_goaway(h); /* best effort: says the close is not an error */
        (void)h2_flush(h);
    }
    c->w->close_client(c);
}

static void on_goaway_timer(cl_loop *loop, cl_timer *t)
{
    (void)loop;
    h2_conn *h = (h2_conn *)((char *)t - offsetof(h2_conn, goaway_timer));
    final_goaway(h);
    schedule_io(h);
}

void cl_h2_drain(client *c)
{
    h2_conn *h = c->h2;
    if (!h || h->draining)
        return;
    h->draining = true;
    /* A GOAWAY announcing the end, then a PING: once the client answers it,
     * every stream it opened before seeing the notice has arrived and the
     * final GOAWAY can name the last one (RFC 9113 6.8). */
    if (nghttp2_submit_shutdown_notice(h->session) != 0 ||
        nghttp2_submit_ping(h->session, NGHTTP2_FLAG_NONE, drain_ping) != 0)
        final_goaway(h);
    else
        cl_timer_start(c->w->loop, &h->goaway_timer, H2_GOAWAY_GRACE_MS, on_goaway_timer);
    schedule_io(h);
}

void cl_h2_free(client *c)
{
    h2_conn *h = c->h2;
    if (!h)
        return;
    cl_timer_stop(c->w->loop, &h->goaway_timer);
    while (h->streams)
        stream_free(h, h->streams);
    nghttp2_session_del(h->session); /* calls no callbacks */
    queue_free(&h->spill);
    free(h);
    c->h2 = NULL;
}

int cl_h2_attach(client *c)
{
    const cl_server_config *cfg = &c->w->server->cfg;
    nghttp2_session_callbacks *cbs = NULL;
    nghttp2_option *opt = NULL;
    int rc = CL_OK;
    h2_conn *h = calloc(1, sizeof *h);
    CL_ENSURE(h, CL_ENOMEM, "out of memory");
    h->c = c;
    if (nghttp2_session_callbacks_new(&cbs) != 0 || nghttp2_option_new(&opt) != 0)
        CL_FAIL_OUT(CL_ENOMEM, "out of memory");
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    nghttp2_option_set_no_auto_window_update(opt, 1);
    if (nghttp2_session_server_new2(&h->session, cbs, h, opt) != 0)
        CL_FAIL_OUT(CL_ENOMEM, "cannot create an HTTP/2 session");
    /* what we accept as a head, in RFC 9113's accounting (32 bytes per field) */
    uint32_t max_list = (uint32_t)(cfg->max_header_bytes + 32 * CL_HTTP_MAX_HEADERS);
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, cfg->h2_max_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2_STREAM_WINDOW},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, max_list},
    };
    if (nghttp2_submit_settings(h->session, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]) != 0 ||
        nghttp2_session_set_local_window_size(h->session, NGHTTP2_FLAG_NONE, 0, H2_CONN_WINDOW) != 0)
        CL_FAIL_OUT(CL_ENOMEM, "cannot start the HTTP/2 session");
    c->h2 = h;
    h = NULL;
    c->in_off = c->in_len = 0;
    touch(c->h2);
    if (cl_worker_ending(c->w))
        cl_h2_drain(c);
out:
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cbs);
    if (h) {
        nghttp2_session_del(h->session);
        free(h);
    }
    return rc;
}

#include "cloister/enclave/upstream.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/un.h>
#include <unistd.h>

#define OUT_CAP (24 * 1024) /* at least: a request head up to 16 KiB plus forwarding headers */
#define OUT_HEAD_SLACK (8 * 1024) /* forwarding headers on top of the largest request head */
#define IN_CAP (16 * 1024)       /* at least; a response head up to max_header_bytes fits */
#define CHUNK_HEAD_MAX 20   /* "ffffffffffffffff\r\n" */
#define FREE_EXCHANGES_MAX 64

typedef struct app_conn {
    cl_watch watch;
    cl_timer idle_timer;
    cl_upstream_pool *pool;
    struct app_conn *next_idle, *prev_idle;
    cl_upstream *user;
    bool connecting;
    cl_deferred release;
} app_conn;

struct cl_upstream_pool {
    cl_loop *loop;
    cl_upstream_target target;
    cl_upstream_limits limits;
    app_conn *idle;
    size_t idle_count;
    cl_upstream *free_exchanges;
    size_t free_count;
    size_t out_cap, in_cap;
    size_t open_conns; /* connecting, in use and idle: at most limits.max_connections */
    cl_upstream *wait_head, *wait_tail; /* exchanges waiting for a connection, oldest first */
    cl_deferred wake;
};

struct cl_upstream {
    cl_upstream_pool *pool;
    const cl_upstream_ops *ops;
    void *owner;
    app_conn *conn;
    bool from_pool, retried;
    uint8_t *head_copy; /* kept until the first response byte, to retry a stale pooled connection once */
    size_t head_len;
    char method[16];

    bool queued; /* waiting for a connection (limits.max_connections) */
    cl_upstream *next_wait, *prev_wait;

    uint8_t *out; /* out_cap and in_cap bytes, allocated when the exchange starts, kept on the free list */
    size_t out_off, out_len;
    int body_mode;
    bool body_started, body_done, body_end_queued, send_blocked, tunnel_shutdown_pending;

    uint8_t *in;
    size_t in_off, in_len;
    bool got_response_bytes, head_seen, tunnel, upgrade_requested, upstream_eof;
    int resp_body;
    bool resp_keep_alive;
    uint64_t resp_remaining;
    cl_chunked chunked;
    bool owner_blocked;

    bool finished; /* no more callbacks: ended, failed or aborted */
    cl_timer timer;
    cl_deferred kick;
    cl_deferred release;
    cl_upstream *next_free;
};

/* ---- targets --------------------------------------------------------- */

int cl_upstream_target_parse(const char *text, cl_upstream_target *out)
{
    memset(out, 0, sizeof *out);
    char addr_text[300];
    if (!strncmp(text, "http://", 7)) {
        const char *hostport = text + 7;
        size_t n = strcspn(hostport, "/");
        CL_ENSURE(n > 0 && n < 250, CL_EINVAL, "bad app URL '%s'", text);
        CL_ENSURE(hostport[n] == '\0' || !strcmp(hostport + n, "/"), CL_EINVAL,
                  "app URL '%s' must not have a path", text);
        snprintf(addr_text, sizeof addr_text, "tcp:%.*s", (int)n, hostport);
        if (!memchr(hostport, ':', n) || (hostport[0] == '[' && !strstr(addr_text, "]:")))
            snprintf(addr_text, sizeof addr_text, "tcp:%.*s:80", (int)n, hostport);
    } else if (!strncmp(text, "https://", 8)) {
        return cl_error_set(CL_EINVAL, "the app is reached over plain HTTP inside the enclave: '%s'", text);
    } else {
        snprintf(addr_text, sizeof addr_text, "%s", text);
    }
    cl_address a;
    CL_TRY(cl_address_parse(addr_text, &a));
    if (a.kind == CL_ADDR_UNIX) {
        struct sockaddr_un *sun = (struct sockaddr_un *)&out->sa;
        sun->sun_family = AF_UNIX;
        memcpy(sun->sun_path, a.path, strlen(a.path) + 1);
        out->sa_len = sizeof *sun;
        out->family = AF_UNIX;
        snprintf(out->text, sizeof out->text, "unix:%s", a.path);
        return CL_OK;
    }
    CL_ENSURE(a.kind == CL_ADDR_TCP, CL_EINVAL, "the app must be reached over TCP or a unix socket: '%s'", text);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    char port[16];
    snprintf(port, sizeof port, "%u", a.port);
    int gai = getaddrinfo(a.host, port, &hints, &res);
    CL_ENSURE(gai == 0 && res, CL_EINVAL, "cannot resolve app host '%s': %s", a.host, gai_strerror(gai));
    memcpy(&out->sa, res->ai_addr, res->ai_addrlen);
    out->sa_len = res->ai_addrlen;
    out->family = res->ai_family;
    freeaddrinfo(res);
    snprintf(out->text, sizeof out->text, "%s:%u", a.host, a.port);
    return CL_OK;
}

/* ---- the pool ---------------------------------------------------------- */

int cl_upstream_pool_new(cl_loop *loop, const cl_upstream_target *target, const cl_upstream_limits *limits,
                         cl_upstream_pool **out)
{
    cl_upstream_pool *pool = calloc(1, sizeof *pool);
    CL_ENSURE(pool, CL_ENOMEM, "out of memory");
    pool->loop = loop;
    pool->target = *target;
    pool->limits = *limits;
    pool->out_cap = limits->max_header_bytes + OUT_HEAD_SLACK > OUT_CAP ? limits->max_header_bytes + OUT_HEAD_SLACK
                                                                      : OUT_CAP;
    pool->in_cap = limits->max_header_bytes > IN_CAP ? limits->max_header_bytes : IN_CAP;
    *out = pool;
    return CL_OK;
}

static void wake_waiters(cl_deferred *d);

static void release_conn(cl_deferred *d)
{
    free((app_conn *)((char *)d - offsetof(app_conn, release)));
}

/* Closes the connection; the caller frees it. */
static void conn_shut(app_conn *c)
{
    cl_upstream_pool *pool = c->pool;
    pool->open_conns--;
    if (pool->wait_head)
        cl_loop_defer(pool->loop, &pool->wake, wake_waiters);
    int fd = c->watch.fd;
    cl_loop_unwatch(pool->loop, &c->watch);
    if (fd >= 0)
        close(fd);
    cl_timer_stop(pool->loop, &c->idle_timer);
}

static void conn_close(app_conn *c)
{
    conn_shut(c);
    /* An event for it may still be in the batch the loop is running (an
     * exchange aborted by its owner from another connection's event): the
     * loop skips an unwatched entry, but the entry must still be there. */
    cl_loop_defer(c->pool->loop, &c->release, release_conn);
}

static void idle_unlink(app_conn *c)
{
    cl_upstream_pool *pool = c->pool;
    if (c->prev_idle)
        c->prev_idle->next_idle = c->next_idle;
    else
        pool->idle = c->next_idle;
    if (c->next_idle)
        c->next_idle->prev_idle = c->prev_idle;
    c->next_idle = c->prev_idle = NULL;
    pool->idle_count--;
    cl_timer_stop(pool->loop, &c->idle_timer);
}

void cl_upstream_pool_free(cl_upstream_pool *pool)
{
    if (!pool)
        return;
    while (pool->idle) {
        app_conn *c = pool->idle;
        idle_unlink(c);
        conn_shut(c); /* the loop runs no more: free now */
        free(c);
    }
    while (pool->free_exchanges) {
        cl_upstream *u = pool->free_exchanges;
        pool->free_exchanges = u->next_free;
        free(u->out);
        free(u->in);
        free(u);
    }
    free(pool);
}

static void on_idle_timeout(cl_loop *loop, cl_timer *t)
{
    (void)loop;
    app_conn *c = (app_conn *)((char *)t - offsetof(app_conn, idle_timer));
    idle_unlink(c);
    conn_close(c);
}

static void exchange_io(cl_upstream *u, uint32_t events);

static void on_conn_event(cl_loop *loop, cl_watch *w, uint32_t events)
{
    (void)loop;
    app_conn *c = (app_conn *)w;
    if (c->user) {
        exchange_io(c->user, events);
        return;
    }
    /* Edge-triggered, an idle connection also reports that it became
     * writable (the ACK of the last request arriving late): that is no news.
     * Readable, it was closed by the app (or sent bytes nobody asked for):
     * either way it is no longer usable. */
    if (!(events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
        return;
    idle_unlink(c);
    conn_close(c);
}

static void pool_put(cl_upstream_pool *pool, app_conn *c)
{
    c->user = NULL;
    if (pool->idle_count >= pool->limits.max_idle) {
        conn_close(c);
        return;
    }
    c->next_idle = pool->idle;
    c->prev_idle = NULL;
    if (pool->idle)
        pool->idle->prev_idle = c;
    pool->idle = c;
    pool->idle_count++;
    cl_timer_start(pool->loop, &c->idle_timer, pool->limits.idle_timeout_ms, on_idle_timeout);
    if (pool->wait_head)
        cl_loop_defer(pool->loop, &pool->wake, wake_waiters);
}

static int conn_open(cl_upstream_pool *pool, app_conn **out)
{
    const cl_upstream_target *t = &pool->target;
    int fd;
    CL_TRY(cl_socket(t->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, &fd));
    if (t->family == AF_INET || t->family == AF_INET6) {
        /* a request head and its body go out as separate writes: Nagle
         * would hold the second until the app's delayed ACK */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    bool connecting = false;
    if (connect(fd, (const struct sockaddr *)&t->sa, t->sa_len) < 0) {
        if (errno == EINPROGRESS) {
            connecting = true;
        } else {
            int e = errno;
            close(fd);
            return cl_error_set(CL_EIO, "cannot connect to the app at %s: %s", t->text, strerror(e));
        }
    }
    app_conn *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return cl_error_set(CL_ENOMEM, "out of memory");
    }
    c->pool = pool;
    c->connecting = connecting;
    int rc = cl_loop_watch(pool->loop, &c->watch, fd, on_conn_event);
    if (rc < 0) {
        close(fd);
        free(c);
        return rc;
    }
    pool->open_conns++;
    *out = c;
    return CL_OK;
}

/* ---- exchanges ---------------------------------------------------------- */

static void release_exchange(cl_deferred *d)
{
    cl_upstream *u = (cl_upstream *)((char *)d - offsetof(cl_upstream, release));
    cl_upstream_pool *pool = u->pool;
    free(u->head_copy);
    u->head_copy = NULL;
    if (pool->free_count < FREE_EXCHANGES_MAX) {
        u->next_free = pool->free_exchanges;
        pool->free_exchanges = u;
        pool->free_count++;
    } else {
        free(u->out);
        free(u->in);
        free(u);
    }
}

static void wait_unlink(cl_upstream *u)
{
    cl_upstream_pool *pool = u->pool;
    if (u->prev_wait)
        u->prev_wait->next_wait = u->next_wait;
    else
        pool->wait_head = u->next_wait;
    if (u->next_wait)
        u->next_wait->prev_wait = u->prev_wait;
    else
        pool->wait_tail = u->prev_wait;
    u->next_wait = u->prev_wait = NULL;
    u->queued = false;
}

/* Ends the exchange: no callbacks after this; memory goes back after the
 * current batch of events, since other events may still name it. */
static void finish(cl_upstream *u, bool reuse_conn)
{
    if (u->finished)
        return;
    u->finished = true;
    cl_timer_stop(u->pool->loop, &u->timer);
    if (u->queued)
        wait_unlink(u);
    if (u->conn) {
        if (reuse_conn)
            pool_put(u->pool, u->conn);
        else
            conn_close(u->conn);
        u->conn = NULL;
    }
    cl_loop_defer(u->pool->loop, &u->release, release_exchange);
}

static void fail(cl_upstream *u, int status, const char *why)
{
    if (u->finished)
        return;
    const cl_upstream_ops *ops = u->ops;
    void *owner = u->owner;
    finish(u, false);
    ops->on_error(owner, status, why);
}

static void on_timeout(cl_loop *loop, cl_timer *t)
{
    (void)loop;
    cl_upstream *u = (cl_upstream *)((char *)t - offsetof(cl_upstream, timer));
    if (u->queued)
        fail(u, 503, "too many requests to the app are in progress");
    else if (!u->head_seen)
        fail(u, 504, "the app did not answer in time");
    else
        fail(u, 0, "the app stalled while sending the response");
}

static void arm_timer(cl_upstream *u)
{
    if (u->tunnel) {
        cl_timer_stop(u->pool->loop, &u->timer);
        return;
    }
    unsigned ms = u->conn && u->conn->connecting ? u->pool->limits.connect_timeout_ms
                                                 : u->pool->limits.response_timeout_ms;
    cl_timer_start(u->pool->loop, &u->timer, ms, on_timeout);
}

static int attach_conn(cl_upstream *u, bool allow_pooled)
{
    cl_upstream_pool *pool = u->pool;
    if (allow_pooled && pool->idle) {
        app_conn *c = pool->idle;
        idle_unlink(c);
        u->conn = c;
        u->from_pool = true;
    } else {
        CL_TRY(conn_open(pool, &u->conn));
        u->from_pool = false;
    }
    u->conn->user = u;
    return CL_OK;
}

static void kick(cl_deferred *d)
{
    cl_upstream *u = (cl_upstream *)((char *)d - offsetof(cl_upstream, kick));
    if (!u->finished)
        exchange_io(u, 0);
}

static void schedule_kick(cl_upstream *u)
{
    cl_loop_defer(u->pool->loop, &u->kick, kick);
}

static void deferred_connect_error(cl_deferred *d)
{
    cl_upstream *u = (cl_upstream *)((char *)d - offsetof(cl_upstream, kick));
    fail(u, 502, "the app is not reachable");
}

/* A connection may be had now: an idle one, or room for one more. */
static bool slot_free(const cl_upstream_pool *pool)
{
    return pool->idle || !pool->limits.max_connections || pool->open_conns < pool->limits.max_connections;
}

/* Puts the head in the output buffer and connects. */
static void start_exchange(cl_upstream *u)
{
    cl_upstream_pool *pool = u->pool;
    if ((!u->out && !(u->out = malloc(pool->out_cap))) || (!u->in && !(u->in = malloc(pool->in_cap)))) {
        cl_loop_defer(pool->loop, &u->kick, deferred_connect_error);
        return;
    }
    memcpy(u->out, u->head_copy, u->head_len);
    u->out_len = u->head_len;
    if (attach_conn(u, true) < 0) {
        /* reported from the loop, like every other outcome */
        cl_loop_defer(pool->loop, &u->kick, deferred_connect_error);
        return;
    }
    arm_timer(u);
    schedule_kick(u);
}

static void wake_waiters(cl_deferred *d)
{
    cl_upstream_pool *pool = (cl_upstream_pool *)((char *)d - offsetof(cl_upstream_pool, wake));
    while (pool->wait_head && slot_free(pool)) {
        cl_upstream *u = pool->wait_head;
        wait_unlink(u);
        start_exchange(u);
    }
}

int cl_upstream_begin(cl_upstream_pool *pool, const cl_upstream_ops *ops, void *owner, const uint8_t *head,
                      size_t head_len, cl_slice method, int body, bool upgrade, cl_upstream **out)
{
    CL_ENSURE(head_len <= pool->out_cap - CHUNK_HEAD_MAX, CL_ELIMIT, "request head of %zu bytes is too large",
              head_len);
    uint8_t *head_copy = malloc(head_len);
    CL_ENSURE(head_copy, CL_ENOMEM, "out of memory");
    cl_upstream *u = pool->free_exchanges;
    if (u) {
        pool->free_exchanges = u->next_free;
        pool->free_count--;
    } else {
        u = calloc(1, sizeof *u);
        if (!u) {
            free(head_copy);
            return cl_error_set(CL_ENOMEM, "out of memory");
        }
    }
    uint8_t *obuf = u->out, *ibuf = u->in;
    memset(u, 0, sizeof *u);
    u->out = obuf;
    u->in = ibuf;
    u->pool = pool;
    u->ops = ops;
    u->owner = owner;
    u->body_mode = body;
    u->body_done = body == CL_HTTP_BODY_NONE;
    u->upgrade_requested = upgrade;
    snprintf(u->method, sizeof u->method, "%.*s", (int)(method.len < 15 ? method.len : 15),
             (const char *)method.data);
    memcpy(head_copy, head, head_len);
    u->head_copy = head_copy;
    u->head_len = head_len;
    *out = u;
    if (!pool->wait_head && slot_free(pool)) {
        start_exchange(u);
        return CL_OK;
    }
    /* Every app connection this loop may have is busy: wait for one,
     * holding no buffer and no descriptor, for at most the app's timeout. */
    u->queued = true;
    u->send_blocked = true; /* on_send_ready once it can take body bytes */
    u->prev_wait = pool->wait_tail;
    if (pool->wait_tail)
        pool->wait_tail->next_wait = u;
    else
        pool->wait_head = u;
    pool->wait_tail = u;
    cl_timer_start(pool->loop, &u->timer, pool->limits.response_timeout_ms, on_timeout);
    return CL_OK;
}

static bool out_has_room(const cl_upstream *u, size_t n)
{
    return u->pool->out_cap - u->out_len >= n;
}

static void compact_out(cl_upstream *u)
{
    if (u->out_off == 0)
        return;
    memmove(u->out, u->out + u->out_off, u->out_len - u->out_off);
    u->out_len -= u->out_off;
    u->out_off = 0;
}

size_t cl_upstream_send(cl_upstream *u, const uint8_t *data, size_t len)
{
    if (u->finished || len == 0)
        return 0;
    if (u->queued)
        return 0; /* send_blocked is set: on_send_ready follows */
    compact_out(u);
    size_t room = u->pool->out_cap - u->out_len, take;
    if (u->body_mode == CL_HTTP_BODY_CHUNKED && !u->tunnel) {
        if (room <= CHUNK_HEAD_MAX + 2) {
            u->send_blocked = true;
            return 0;
        }
        take = len < room - CHUNK_HEAD_MAX - 2 ? len : room - CHUNK_HEAD_MAX - 2;
        int n = snprintf((char *)u->out + u->out_len, CHUNK_HEAD_MAX, "%zx\r\n", take);
        u->out_len += (size_t)n;
        memcpy(u->out + u->out_len, data, take);
        u->out_len += take;
        memcpy(u->out + u->out_len, "\r\n", 2);
        u->out_len += 2;
    } else {
        take = len < room ? len : room;
        memcpy(u->out + u->out_len, data, take);
        u->out_len += take;
    }
    u->body_started = true;
    if (take < len)
        u->send_blocked = true;
    schedule_kick(u);
    return take;
}

void cl_upstream_send_end(cl_upstream *u)
{
    if (u->finished)
        return;
    if (u->tunnel) {
        u->tunnel_shutdown_pending = true; /* the client half-closed: pass it on */
        schedule_kick(u);
        return;
    }
    if (u->body_done)
        return;
    u->body_done = true;
    if (u->body_mode == CL_HTTP_BODY_CHUNKED && !u->tunnel)
        u->body_end_queued = true;
    schedule_kick(u);
}

void cl_upstream_resume(cl_upstream *u)
{
    if (u->finished || !u->owner_blocked)
        return;
    u->owner_blocked = false;
    arm_timer(u);
    schedule_kick(u);
}

void cl_upstream_abort(cl_upstream *u)
{
    if (u)
        finish(u, false);
}

/* Starts over on a fresh connection: a pooled one that the app had already
 * closed fails before any response byte; the request is sent again only if
 * nothing of its body had been taken yet. */
static bool retry_fresh(cl_upstream *u)
{
    if (!u->from_pool || u->retried || u->got_response_bytes || u->body_started || !u->head_copy)
        return false;
    conn_close(u->conn);
    u->conn = NULL;
    u->retried = true;
    u->upstream_eof = false; /* that was the old connection's end, not the new one's */
    if (attach_conn(u, false) < 0)
        return false;
    memcpy(u->out, u->head_copy, u->head_len);
    u->out_off = 0;
    u->out_len = u->head_len;
    arm_timer(u);
    return true;
}

static void connection_failed(cl_upstream *u, const char *why)
{
    if (retry_fresh(u)) {
        schedule_kick(u);
        return;
    }
    if (!u->head_seen)
        fail(u, 502, why);
    else
        fail(u, 0, why);
}

static bool flush_out(cl_upstream *u)
{
    app_conn *c = u->conn;
    if (u->body_end_queued && out_has_room(u, 5)) {
        compact_out(u);
        memcpy(u->out + u->out_len, "0\r\n\r\n", 5);
        u->out_len += 5;
        u->body_end_queued = false;
    }
    while (u->out_off < u->out_len) {
        ssize_t n = send(c->watch.fd, u->out + u->out_off, u->out_len - u->out_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return true;
            connection_failed(u, "the app reset the connection");
            return false;
        }
        u->out_off += (size_t)n;
    }
    u->out_off = u->out_len = 0;
    if (u->tunnel_shutdown_pending) {
        u->tunnel_shutdown_pending = false;
        shutdown(c->watch.fd, SHUT_WR);
    }
    if (u->send_blocked && !u->finished) {
        u->send_blocked = false;
        u->ops->on_send_ready(u->owner);
    }
    return !u->finished;
}

static void end_response(cl_upstream *u)
{
    bool reusable = u->resp_keep_alive && !u->tunnel && u->body_done && !u->body_end_queued &&
                    u->out_off == u->out_len && u->in_off == u->in_len;
    const cl_upstream_ops *ops = u->ops;
    void *owner = u->owner;
    finish(u, reusable);
    ops->on_end(owner);
}

static void consume_in(cl_upstream *u, size_t n)
{
    u->in_off += n;
    if (u->in_off == u->in_len)
        u->in_off = u->in_len = 0;
}

/* Hands buffered response bytes to the owner; false once finished. */
static bool deliver(cl_upstream *u)
{
    while (!u->finished) {
        size_t avail = u->in_len - u->in_off;
        const uint8_t *p = u->in + u->in_off;
        if (!u->head_seen) {
            if (avail == 0)
                return true;
            cl_http_head head;
            bool complete;
            cl_slice method = {(const uint8_t *)u->method, strlen(u->method)};
            int prc = cl_http_parse_response(p, avail, u->pool->limits.max_header_bytes, method, &head, &complete);
            if (prc < 0) {
                fail(u, 502, prc == CL_ELIMIT ? "the app's response head is larger than the head limit"
                                              : "the app sent a malformed response head");
                return false;
            }
            if (!complete) {
                if (u->in_off > 0 && u->in_len == u->pool->in_cap) {
                    memmove(u->in, p, avail);
                    u->in_off = 0;
                    u->in_len = avail;
                }
                return true;
            }
            consume_in(u, head.head_len);
            if (head.status == 101 && u->upgrade_requested) {
                u->tunnel = true;
                u->head_seen = true;
                free(u->head_copy);
                u->head_copy = NULL;
                arm_timer(u);
                u->ops->on_head(u->owner, &head);
                continue;
            }
            if (head.status < 200) {
                u->ops->on_head(u->owner, &head); /* informational, e.g. 100 Continue */
                continue;
            }
            u->head_seen = true;
            u->resp_body = head.body;
            u->resp_remaining = head.content_length;
            u->resp_keep_alive = head.keep_alive;
            u->ops->on_head(u->owner, &head);
            if (u->resp_body == CL_HTTP_BODY_NONE ||
                (u->resp_body == CL_HTTP_BODY_LENGTH && u->resp_remaining == 0)) {
                end_response(u);
                return false;
            }
            continue;
        }
        if (u->tunnel || u->resp_body == CL_HTTP_BODY_UNTIL_CLOSE) {
            if (avail) {
                size_t took = u->ops->on_data(u->owner, p, avail);
                if (u->finished)
                    return false;
                consume_in(u, took);
                if (took < avail) {
                    u->owner_blocked = true;
                    return true;
                }
            }
            if (u->upstream_eof) {
                if (u->tunnel || u->resp_body == CL_HTTP_BODY_UNTIL_CLOSE)
                    end_response(u);
                return false;
            }
            return true;
        }
        if (u->resp_body == CL_HTTP_BODY_LENGTH) {
            size_t n = avail < u->resp_remaining ? avail : (size_t)u->resp_remaining;
            if (n == 0)
                return true;
            size_t took = u->ops->on_data(u->owner, p, n);
            if (u->finished)
                return false;
            consume_in(u, took);
            u->resp_remaining -= took;
            if (u->resp_remaining == 0) {
                end_response(u);
                return false;
            }
            if (took < n) {
                u->owner_blocked = true;
                return true;
            }
            continue;
        }
        /* chunked */
        if (avail == 0)
            return true;
        size_t used, off, dlen;
        if (cl_chunked_next(&u->chunked, p, avail, &used, &off, &dlen) < 0) {
            fail(u, 0, "the app sent malformed chunked framing");
            return false;
        }
        size_t took = dlen ? u->ops->on_data(u->owner, p + off, dlen) : 0;
        if (u->finished)
            return false;
        if (took < dlen) {
            cl_chunked_unconsume(&u->chunked, dlen - took);
            used -= dlen - took;
        }
        consume_in(u, used);
        if (u->chunked.done) {
            end_response(u);
            return false;
        }
        if (took < dlen) {
            u->owner_blocked = true;
            return true;
        }
        if (used == 0)
            return true;
    }
    return false;
}

static void exchange_io(cl_upstream *u, uint32_t events)
{
    (void)events;
    app_conn *c = u->conn;
    if (u->finished || !c)
        return;
    if (c->connecting) {
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            return; /* kicked before the connect completed: wait for its event */
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->watch.fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            err = errno;
        if (err) {
            fail(u, 502, "the app is not reachable");
            return;
        }
        c->connecting = false;
        arm_timer(u);
    }
    size_t unsent = u->out_len - u->out_off;
    if (!flush_out(u))
        return;
    bool progressed = u->out_len - u->out_off != unsent;
    if (!deliver(u))
        return;
    while (!u->owner_blocked && !u->upstream_eof) {
        if (u->in_off == u->in_len)
            u->in_off = u->in_len = 0;
        if (u->in_len == u->pool->in_cap) {
            if (u->in_off == 0)
                break;
            memmove(u->in, u->in + u->in_off, u->in_len - u->in_off);
            u->in_len -= u->in_off;
            u->in_off = 0;
        }
        ssize_t n = recv(c->watch.fd, u->in + u->in_len, u->pool->in_cap - u->in_len, 0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                break;
            connection_failed(u, "the app reset the connection");
            return;
        }
        if (n == 0) {
            u->upstream_eof = true;
            if (!u->got_response_bytes) {
                connection_failed(u, "the app closed the connection without answering");
                return;
            }
        } else {
            u->in_len += (size_t)n;
            u->got_response_bytes = true;
            progressed = true;
        }
        if (!deliver(u))
            return;
        if (u->upstream_eof && !u->finished) {
            if (u->tunnel || u->resp_body == CL_HTTP_BODY_UNTIL_CLOSE) {
                if (!u->owner_blocked)
                    end_response(u);
            } else {
                connection_failed(u, "the app closed the connection mid-response");
            }
            return;
        }
    }
    /* The app is only on the clock while the owner keeps up. */
    if (u->owner_blocked)
        cl_timer_stop(u->pool->loop, &u->timer);
    else if (progressed)
        arm_timer(u);
}

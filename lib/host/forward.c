/* One forwarded connection: client <-> destination, bytes both ways.
 *
 * Each direction moves one chunk at a time: read into a pipe (splice) or
 * a buffer (recv) only when it is empty, then write all of it out before
 * reading again.  Reading only into an empty pipe makes EAGAIN mean "the
 * socket has nothing", never "the pipe is full", which edge-triggered
 * readiness needs.  The pipe or buffer is taken from the worker's pool for
 * the chunk and given back once it is written, so idle connections hold
 * none.  A direction whose source reached EOF shuts the destination down
 * for writing once its last chunk is out; when both directions are shut
 * the connection is done. */
#include "host/host_worker.h"

#include "cloister/core/log.h"
#include "cloister/core/proxy_protocol.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

/* chunks moved per event before other connections get a turn */
#define ROUNDS_PER_TURN 16
#define RETRY_MAX_MS 100

enum { ST_CONNECTING, ST_OPEN, ST_CLOSED };

typedef struct side {
    cl_watch watch;
    bool readable, writable;
} side;

typedef struct dir {
    host_pipe pipe; /* held while a spliced chunk is in it */
    uint8_t *buf;   /* held while a copied chunk is in it */
    uint32_t off, pending;
    bool eof, shut, copy;
    uint64_t bytes;
} dir;

typedef struct fwd {
    host_conn base;
    host_worker *w;
    host_listener *l;
    side client, up;
    dir c2u, u2c;
    cl_timer timer;
    int state;
    bool retrying;
    unsigned attempt, retry_ms;
    int last_err;
    uint64_t id, started, deadline;
    uint8_t *prefix; /* PROXY protocol header still to send */
    size_t prefix_len, prefix_off;
} fwd;

static void on_client(cl_loop *loop, cl_watch *w, uint32_t events);
static void on_upstream(cl_loop *loop, cl_watch *w, uint32_t events);
static void on_timer(cl_loop *loop, cl_timer *t);
static void pump(fwd *f);

static void release(host_worker *w, dir *d)
{
    host_pipe_put(w, &d->pipe, d->pending == 0);
    if (d->buf) {
        host_buf_put(w, d->buf);
        d->buf = NULL;
    }
    d->off = 0;
}

static void fwd_free(cl_deferred *d)
{
    fwd *f = HOST_CONTAINER(d, fwd, base.free_later);
    free(f);
}

/* abort: the connection failed rather than ended, and the peers should
 * learn that: a TCP peer gets a reset instead of an orderly end of data. */
static void fwd_end(fwd *f, const char *reason, bool abort)
{
    if (f->state == ST_CLOSED)
        return;
    host_worker *w = f->w;
    bool was_open = f->state == ST_OPEN;
    f->state = ST_CLOSED;
    cl_timer_stop(w->loop, &f->timer);
    side *sides[2] = {&f->client, &f->up};
    for (int i = 0; i < 2; i++) {
        int fd = sides[i]->watch.fd;
        if (fd >= 0) {
            cl_loop_unwatch(w->loop, &sides[i]->watch);
            if (abort) {
                struct linger now = {.l_onoff = 1, .l_linger = 0};
                (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &now, sizeof now);
            }
            close(fd);
        }
    }
    release(w, &f->c2u);
    release(w, &f->u2c);
    free(f->prefix);
    f->prefix = NULL;
    if (host_debug()) {
        char id[24], up[24], down[24], ms[24];
        host_conn_id(w, f->id, id);
        snprintf(up, sizeof up, "%llu", (unsigned long long)f->c2u.bytes);
        snprintf(down, sizeof down, "%llu", (unsigned long long)f->u2c.bytes);
        snprintf(ms, sizeof ms, "%llu", (unsigned long long)(cl_loop_now(w->loop) - f->started));
        cl_log(CL_LOG_DEBUG, "closed", "conn", id, "reason", reason, "bytes_up", up, "bytes_down", down, "ms", ms,
               "was_open", was_open ? "yes" : "no", NULL);
    }
    host_conn_remove(w, &f->base);
    cl_loop_defer(w->loop, &f->base.free_later, fwd_free);
}

static void fwd_close(fwd *f, const char *reason)
{
    fwd_end(f, reason, false);
}

static void fwd_close_cb(host_conn *c, const char *reason)
{
    fwd_close(HOST_CONTAINER(c, fwd, base), reason);
}

static void close_error(fwd *f, const char *what, const char *detail)
{
    char reason[96];
    snprintf(reason, sizeof reason, "%s: %s", what, detail);
    fwd_end(f, reason, true);
}

static void apply(side *s, uint32_t events)
{
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        s->readable = true;
    if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
        s->writable = true;
}

/* ---- connecting --------------------------------------------------------------------- */

static void dest_text(const fwd *f, char *out, size_t len)
{
    cl_address_format(&f->l->route->dest, out, len);
}

static void connected(fwd *f)
{
    host_worker *w = f->w;
    f->state = ST_OPEN;
    f->up.writable = true;
    f->up.readable = true; /* a read that finds nothing costs one EAGAIN */
    cl_timer_start(w->loop, &f->timer, w->idle_ms, on_timer);
    if (host_debug()) {
        char id[24], dest[CL_ADDRESS_PATH_MAX + 16];
        host_conn_id(w, f->id, id);
        dest_text(f, dest, sizeof dest);
        cl_log(CL_LOG_DEBUG, "connected", "conn", id, "dest", dest, NULL);
    }
    pump(f);
}

static void try_connect(fwd *f)
{
    host_worker *w = f->w;
    for (;;) {
        struct sockaddr_storage ss;
        socklen_t len;
        if (host_dest_pick(w, f->l->index, f->attempt, &ss, &len) < 0) {
            char id[24], dest[CL_ADDRESS_PATH_MAX + 16];
            host_conn_id(w, f->id, id);
            dest_text(f, dest, sizeof dest);
            host_warn_limited(w, "connect-failed", "conn", id, "dest", dest, "error",
                              f->last_err ? strerror(f->last_err) : "no address", NULL);
            fwd_end(f, "connect-failed", true);
            return;
        }
        int fd, err;
        bool in_progress;
        if (host_connect_start((struct sockaddr *)&ss, len, &fd, &in_progress, &err) == 0) {
            if (cl_loop_watch(w->loop, &f->up.watch, fd, on_upstream) < 0) {
                close(fd);
                fwd_close(f, "epoll_ctl failed");
                return;
            }
            if (!in_progress)
                connected(f);
            return;
        }
        if (err == EAGAIN && ss.ss_family == AF_UNIX) {
            /* the unix listener's backlog is full: the same address again, soon */
            f->retry_ms = f->retry_ms ? (f->retry_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : f->retry_ms * 2) : 1;
            uint64_t now = cl_loop_now(w->loop);
            uint64_t left = f->deadline > now ? f->deadline - now : 0;
            f->retrying = true; /* at the deadline, on_timer gives up */
            cl_timer_start(w->loop, &f->timer, f->retry_ms < left ? f->retry_ms : left, on_timer);
            return;
        }
        f->last_err = err;
        f->attempt++;
    }
}

static void on_timer(cl_loop *loop, cl_timer *t)
{
    fwd *f = HOST_CONTAINER(t, fwd, timer);
    if (f->state == ST_OPEN) {
        fwd_close(f, "idle-timeout");
        return;
    }
    if (f->state != ST_CONNECTING)
        return;
    uint64_t now = cl_loop_now(loop);
    if (now >= f->deadline) {
        char id[24], dest[CL_ADDRESS_PATH_MAX + 16];
        host_conn_id(f->w, f->id, id);
        dest_text(f, dest, sizeof dest);
        host_warn_limited(f->w, "connect-failed", "conn", id, "dest", dest, "error", "timed out", NULL);
        fwd_end(f, "connect-timeout", true);
        return;
    }
    if (f->retrying) {
        f->retrying = false;
        cl_timer_start(loop, &f->timer, f->deadline - now, on_timer);
        try_connect(f);
    }
}

static void on_upstream(cl_loop *loop, cl_watch *watch, uint32_t events)
{
    fwd *f = HOST_CONTAINER(watch, fwd, up.watch);
    if (f->state == ST_CONNECTING) {
        int fd = watch->fd;
        bool up;
        int err;
        int r = host_connect_result(fd, &up, &err);
        if (r == CL_OK && !up)
            return; /* an event for an earlier attempt's socket */
        if (r < 0) {
            cl_loop_unwatch(loop, watch);
            close(fd);
            f->last_err = err;
            f->attempt++;
            try_connect(f);
            return;
        }
        apply(&f->up, events);
        connected(f);
        return;
    }
    apply(&f->up, events);
    pump(f);
}

static void on_client(cl_loop *loop, cl_watch *watch, uint32_t events)
{
    (void)loop;
    fwd *f = HOST_CONTAINER(watch, fwd, client.watch);
    apply(&f->client, events);
    pump(f);
}

/* ---- moving bytes ------------------------------------------------------------------- */

/* Both return 0 or a negative cl_err whose detail is the strerror text. */
CL_MUST_CHECK static int send_prefix(fwd *f, bool *moved)
{
    while (f->prefix && f->up.writable) {
        ssize_t n = send(f->up.watch.fd, f->prefix + f->prefix_off, f->prefix_len - f->prefix_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) {
                f->up.writable = false;
                return 0;
            }
            if (errno == EINTR)
                continue;
            return cl_error_set(CL_EIO, "%s", strerror(errno));
        }
        *moved = true;
        f->prefix_off += (size_t)n;
        if (f->prefix_off == f->prefix_len) {
            free(f->prefix);
            f->prefix = NULL;
        }
    }
    return 0;
}

/* Moves chunks from src to dst until one side would block, the source
 * ends, or the turn's budget is spent (then *yielded). */
CL_MUST_CHECK static int move(fwd *f, dir *d, side *src, side *dst, int *budget, bool *yielded, bool *moved)
{
    host_worker *w = f->w;
    for (;;) {
        if (d->pending) {
            if (!dst->writable)
                break;
            ssize_t n = d->buf ? send(dst->watch.fd, d->buf + d->off, d->pending, MSG_NOSIGNAL)
                               : splice(d->pipe.r, NULL, dst->watch.fd, NULL, d->pending,
                                        SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n < 0) {
                if (errno == EAGAIN) {
                    dst->writable = false;
                    break;
                }
                if (errno == EINTR)
                    continue;
                return cl_error_set(CL_EIO, "%s", strerror(errno));
            }
            if (n == 0)
                return cl_error_set(CL_EIO, "%s", strerror(EPIPE));
            d->pending -= (uint32_t)n;
            d->off += (uint32_t)n;
            d->bytes += (uint64_t)n;
            *moved = true;
            if (!d->pending)
                release(w, d);
            continue;
        }
        if (d->eof || !src->readable)
            break;
        if (*budget <= 0) {
            *yielded = true;
            break;
        }
        (*budget)--;
        ssize_t n;
        if (!d->copy && (d->pipe.r >= 0 || host_pipe_get(w, &d->pipe))) {
            if (cl_link_no_splice() && cl_socket_is_link(src->watch.fd)) {
                errno = EINVAL; /* the seam: vsock of the enclave kernel has no splice_read */
                n = -1;
            } else {
                n = splice(src->watch.fd, NULL, d->pipe.w, NULL, HOST_PIPE_BYTES, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            }
            if (n < 0 && errno == EINVAL) { /* this socket type cannot splice: copy from now on */
                host_pipe_put(w, &d->pipe, true);
                d->copy = true;
                continue;
            }
        } else {
            if (!d->buf && !(d->buf = host_buf_get(w)))
                return cl_error_set(CL_ENOMEM, "%s", strerror(ENOMEM));
            d->off = 0;
            n = recv(src->watch.fd, d->buf, HOST_BUF_BYTES, 0);
        }
        int e = errno;
        if (n > 0) {
            d->pending = (uint32_t)n;
            continue;
        }
        release(w, d);
        if (n == 0) {
            d->eof = true;
            break;
        }
        if (e == EAGAIN) {
            src->readable = false;
            break;
        }
        if (e == EINTR)
            continue;
        return cl_error_set(CL_EIO, "%s", strerror(e));
    }
    if (d->eof && !d->pending && !d->shut) {
        if (shutdown(dst->watch.fd, SHUT_WR) < 0 && errno != ENOTCONN)
            return cl_error_set(CL_EIO, "%s", strerror(errno));
        d->shut = true;
    }
    return 0;
}

static void on_again(host_conn *c)
{
    pump(HOST_CONTAINER(c, fwd, base));
}

static void pump(fwd *f)
{
    if (f->state != ST_OPEN)
        return;
    host_worker *w = f->w;
    int budget = ROUNDS_PER_TURN;
    bool yielded = false, moved = false;
    int rc = send_prefix(f, &moved);
    const char *what = "client to destination";
    if (rc == 0 && !f->prefix)
        rc = move(f, &f->c2u, &f->client, &f->up, &budget, &yielded, &moved);
    if (rc == 0) {
        what = "destination to client";
        rc = move(f, &f->u2c, &f->up, &f->client, &budget, &yielded, &moved);
    }
    if (rc < 0) {
        close_error(f, what, cl_error_message());
        return;
    }
    if (f->c2u.shut && f->u2c.shut) {
        fwd_close(f, "done");
        return;
    }
    if (moved)
        cl_timer_start(w->loop, &f->timer, w->idle_ms, on_timer);
    if (yielded)
        host_conn_yield(w, &f->base);
}

/* ---- accepting ---------------------------------------------------------------------- */

static int build_prefix(fwd *f, int fd, const struct sockaddr_storage *peer)
{
    struct sockaddr_storage local;
    memset(&local, 0, sizeof local);
    socklen_t len = sizeof local;
    if (getsockname(fd, (struct sockaddr *)&local, &len) < 0)
        return cl_error_set(CL_EIO, "getsockname: %s", strerror(errno));
    cl_buf b = CL_BUF_INIT;
    int rc = cl_pp2_encode((const struct sockaddr *)peer, (const struct sockaddr *)&local, NULL, 0, false, &b);
    if (rc < 0) {
        cl_buf_free(&b);
        return rc;
    }
    cl_buf_steal(&b, &f->prefix, &f->prefix_len);
    return CL_OK;
}

static bool splice_capable(int kind)
{
    return kind == CL_ADDR_TCP || kind == CL_ADDR_UNIX;
}

/* A health check while the host drains: 503 without asking the enclave.
 * The request is not waited for; a check that sees a reset instead of the
 * answer has failed all the same, which is the point. */
static void answer_draining(host_worker *w, int fd)
{
    static const char body[] = "{\"state\": \"draining\", \"by\": \"host\"}\n";
    char resp[256];
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n%s",
                     sizeof body - 1, body);
    ssize_t ignored = send(fd, resp, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)ignored;
    shutdown(fd, SHUT_WR);
    char sink[512];
    while (recv(fd, sink, sizeof sink, MSG_DONTWAIT) > 0) {
    }
    close(fd);
    host_slot_release(w);
}

void forward_accept(host_worker *w, host_listener *l, int fd, const struct sockaddr_storage *peer, socklen_t peer_len)
{
    (void)peer_len;
    const cl_host_route *r = l->route;
    if (r->health && atomic_load(&w->shared->draining)) {
        answer_draining(w, fd);
        return;
    }
    fwd *f = calloc(1, sizeof *f);
    if (!f) {
        close(fd);
        host_slot_release(w);
        host_warn_limited(w, "refused", "reason", "out of memory", NULL);
        return;
    }
    f->w = w;
    f->l = l;
    f->id = ++w->next_id;
    f->started = cl_loop_now(w->loop);
    f->deadline = f->started + w->connect_ms;
    f->client.watch.fd = f->up.watch.fd = -1;
    f->c2u.pipe.r = f->c2u.pipe.w = f->u2c.pipe.r = f->u2c.pipe.w = -1;
    f->base.close = fwd_close_cb;
    f->base.again = on_again;
    f->base.prev = f->base.next = &f->base;
    bool copy = w->cfg->no_splice || !splice_capable(r->listen.kind) || !splice_capable(r->dest.kind);
    f->c2u.copy = f->u2c.copy = copy;
    if (r->listen.kind == CL_ADDR_TCP) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    if (r->proxy_protocol && build_prefix(f, fd, peer) < 0) {
        host_warn_limited(w, "refused", "reason", "cannot build the PROXY protocol header", "detail",
                          cl_error_message(), NULL);
        close(fd);
        host_slot_release(w);
        free(f);
        return;
    }
    if (cl_loop_watch(w->loop, &f->client.watch, fd, on_client) < 0) {
        host_warn_limited(w, "refused", "reason", "epoll_ctl failed", "detail", cl_error_message(), NULL);
        close(fd);
        host_slot_release(w);
        free(f->prefix);
        free(f);
        return;
    }
    host_conn_add(w, &f->base);
    if (host_debug()) {
        char id[24], from[CL_ADDRESS_PATH_MAX + 16], listen[CL_ADDRESS_PATH_MAX + 16];
        host_conn_id(w, f->id, id);
        cl_host_sockaddr_text((const struct sockaddr *)peer, true, from, sizeof from);
        cl_address_format(&r->listen, listen, sizeof listen);
        cl_log(CL_LOG_DEBUG, "accepted", "conn", id, "listen", listen, "peer", from, NULL);
    }
    cl_timer_start(w->loop, &f->timer, w->connect_ms, on_timer);
    try_connect(f);
}

/* cloister host's worker side, shared by every connection kind (forward.c,
 * imds.c): the connection list and its budget, the ready list, non-blocking
 * connects, pipe and buffer pools, rate-limited warnings.  host.c (the
 * parent and the worker's main loop) sits above it and dispatches accepted
 * connections to the kinds, so no kind needs host.c. */
#include "host/host_worker.h"

#include "cloister/core/address.h"
#include "cloister/core/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define WARN_PER_SECOND 5

/* ---- addresses ------------------------------------------------------------------- */

void cl_host_sockaddr_text(const struct sockaddr *sa, bool port, char *out, size_t out_len)
{
    char ip[INET6_ADDRSTRLEN];
    switch (sa->sa_family) {
    case AF_INET: {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
        if (port)
            snprintf(out, out_len, "%s:%u", ip, ntohs(a->sin_port));
        else
            snprintf(out, out_len, "%s", ip);
        return;
    }
    case AF_INET6: {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof ip);
        if (port)
            snprintf(out, out_len, "[%s]:%u", ip, ntohs(a->sin6_port));
        else
            snprintf(out, out_len, "%s", ip);
        return;
    }
    case AF_UNIX: {
        const struct sockaddr_un *a = (const struct sockaddr_un *)sa;
        snprintf(out, out_len, "unix:%.*s", (int)sizeof a->sun_path, a->sun_path[0] ? a->sun_path : "(unnamed)");
        return;
    }
    case AF_VSOCK: {
        const struct sockaddr_vm *a = (const struct sockaddr_vm *)sa;
        snprintf(out, out_len, "vsock:%u:%u", a->svm_cid, a->svm_port);
        return;
    }
    default:
        snprintf(out, out_len, "(family %d)", sa->sa_family);
    }
}

/* ---- destinations in shared memory ---------------------------------------------------- */

void host_dest_lock(host_dest *d)
{
    if (pthread_mutex_lock(&d->lock) == EOWNERDEAD)
        pthread_mutex_consistent(&d->lock); /* a worker died inside; the data is only ever copied */
}

int host_dest_pick(host_worker *w, size_t index, unsigned attempt, struct sockaddr_storage *out, socklen_t *len)
{
    host_dest *d = &w->shared->dests[index];
    host_dest_lock(d);
    bool ok = attempt < d->count;
    if (ok) {
        *out = d->addrs[attempt];
        *len = d->lens[attempt];
    }
    pthread_mutex_unlock(&d->lock);
    return ok ? CL_OK : CL_ENOTFOUND;
}

/* ---- connections and pools (worker side) --------------------------------------------- */

bool host_debug(void)
{
    return cl_log_get_level() <= CL_LOG_DEBUG;
}

void host_conn_id(const host_worker *w, uint64_t id, char out[24])
{
    snprintf(out, 24, "%u.%llu", w->id, (unsigned long long)id);
}

void host_warn_limited(host_worker *w, const char *event, ...)
{
    uint64_t now = cl_loop_now(w->loop);
    if (now - w->warn_window >= 1000) {
        if (w->warn_suppressed) {
            char n[16];
            snprintf(n, sizeof n, "%u", w->warn_suppressed);
            cl_log(CL_LOG_WARN, "warnings-suppressed", "count", n, "detail", "repeated warnings in the last second",
                   NULL);
        }
        w->warn_window = now;
        w->warn_count = 0;
        w->warn_suppressed = 0;
    }
    if (w->warn_count >= WARN_PER_SECOND) {
        w->warn_suppressed++;
        return;
    }
    w->warn_count++;
    va_list ap;
    va_start(ap, event);
    cl_logv(CL_LOG_WARN, event, ap);
    va_end(ap);
}

void host_listeners_update(host_worker *w)
{
    bool on = !w->stopping && !w->paused_budget && !w->paused_error;
    for (size_t i = 0; i < w->listener_count; i++) {
        host_listener *l = &w->listeners[i];
        if (on && !l->watching) {
            if (cl_loop_watch_listener(w->loop, &l->watch, l->fd, w->on_accept) == CL_OK)
                l->watching = true;
            else
                cl_log(CL_LOG_ERROR, "listener-error", "detail", cl_error_message(), NULL);
        } else if (!on && l->watching) {
            cl_loop_unwatch(w->loop, &l->watch);
            l->watching = false;
        }
    }
}

void host_conn_add(host_worker *w, host_conn *c)
{
    c->next = w->conns.next;
    c->prev = &w->conns;
    w->conns.next->prev = c;
    w->conns.next = c;
    if (++w->conn_count >= w->conn_budget && !w->paused_budget) {
        w->paused_budget = true;
        host_listeners_update(w);
        char id[16], budget[24];
        snprintf(id, sizeof id, "%u", w->id);
        snprintf(budget, sizeof budget, "%zu", w->conn_budget);
        host_warn_limited(w, "worker-full", "worker", id, "connections", budget, "detail",
                          "this worker's descriptor budget is used up; the others accept until it frees some", NULL);
    }
}

static void ready_unlink(host_conn *c)
{
    if (!c->ready)
        return;
    c->ready_prev->ready_next = c->ready_next;
    c->ready_next->ready_prev = c->ready_prev;
    c->ready_prev = c->ready_next = NULL;
    c->ready = false;
}

void host_conn_yield(host_worker *w, host_conn *c)
{
    if (c->ready)
        return;
    bool was_empty = w->ready.ready_next == &w->ready;
    c->ready_prev = w->ready.ready_prev;
    c->ready_next = &w->ready;
    w->ready.ready_prev->ready_next = c;
    w->ready.ready_prev = c;
    c->ready = true;
    if (was_empty)
        cl_loop_wake(w->loop);
}

/* The loop's wake-up: one more turn for each connection that yielded
 * before it; those that yield again wait for the next wake-up. */
void host_worker_on_wake(cl_loop *loop, void *ctx)
{
    (void)loop;
    host_worker *w = ctx;
    host_conn batch = {0};
    if (w->ready.ready_next == &w->ready)
        return;
    /* move the list to a local sentinel */
    batch.ready_next = w->ready.ready_next;
    batch.ready_prev = w->ready.ready_prev;
    batch.ready_next->ready_prev = &batch;
    batch.ready_prev->ready_next = &batch;
    w->ready.ready_next = w->ready.ready_prev = &w->ready;
    while (batch.ready_next != &batch) {
        host_conn *c = batch.ready_next;
        ready_unlink(c);
        c->again(c);
    }
}

void host_slot_release(host_worker *w)
{
    atomic_fetch_sub(&w->shared->active, 1);
    atomic_fetch_sub(&w->shared->worker_active[w->id], 1);
}

void host_conn_remove(host_worker *w, host_conn *c)
{
    c->prev->next = c->next;
    c->next->prev = c->prev;
    c->prev = c->next = c;
    ready_unlink(c);
    w->conn_count--;
    host_slot_release(w);
    if (w->quiescing && w->conn_count == 0)
        cl_loop_stop(w->loop);
    if (w->paused_budget && w->conn_count < w->conn_budget - w->conn_budget / 10) {
        w->paused_budget = false;
        host_listeners_update(w);
    }
}

int host_connect_start(const struct sockaddr *given, socklen_t given_len, int *fd_out, bool *in_progress, int *err)
{
    *fd_out = -1;
    *in_progress = false;
    *err = 0;
    struct sockaddr_storage final;
    socklen_t len;
    if (cl_sockaddr_final(given, given_len, false, &final, &len) < 0) {
        *err = EADDRNOTAVAIL;
        return cl_error_prefix(CL_EIO, "connect: ");
    }
    const struct sockaddr *sa = (const struct sockaddr *)&final;
    int fd;
    if (cl_socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, &fd) < 0) {
        *err = errno;
        return CL_EIO;
    }
    if (sa->sa_family == AF_INET || sa->sa_family == AF_INET6) {
        int one = 1;
        /* latency only: a socket without TCP_NODELAY still forwards */
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    if (connect(fd, sa, len) == 0) {
        *fd_out = fd;
        return CL_OK;
    }
    if (errno == EINPROGRESS) {
        *fd_out = fd;
        *in_progress = true;
        return CL_OK;
    }
    *err = errno;
    close(fd);
    return cl_error_set(CL_EIO, "connect: %s", strerror(*err));
}

int host_connect_result(int fd, bool *connected, int *err)
{
    *connected = false;
    *err = 0;
    int e = 0;
    socklen_t l = sizeof e;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &l) < 0)
        e = errno;
    if (e) {
        *err = e;
        return cl_error_set(CL_EIO, "connect: %s", strerror(e));
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0) {
        *connected = true;
        return CL_OK;
    }
    if (errno == ENOTCONN)
        return CL_OK;
    *err = errno;
    return cl_error_set(CL_EIO, "connect: %s", strerror(*err));
}

bool host_pipe_get(host_worker *w, host_pipe *p)
{
    if (w->pipe_pool) {
        *p = w->pipes[--w->pipe_pool];
        return true;
    }
    if (w->pipes_open >= w->pipe_limit)
        return false;
    int fds[2];
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0)
        return false;
    /* a bigger pipe moves more per splice(); refused above the user's
     * pipe quota, which is fine: the default 64 KiB works too */
    (void)fcntl(fds[1], F_SETPIPE_SZ, HOST_PIPE_BYTES);
    p->r = fds[0];
    p->w = fds[1];
    w->pipes_open++;
    return true;
}

void host_pipe_put(host_worker *w, host_pipe *p, bool clean)
{
    if (p->r < 0)
        return;
    if (clean && w->pipe_pool < w->pipe_pool_cap) {
        w->pipes[w->pipe_pool++] = *p;
    } else {
        close(p->r);
        close(p->w);
        w->pipes_open--;
    }
    p->r = p->w = -1;
}

void *host_buf_get(host_worker *w)
{
    if (w->buf_pool)
        return w->bufs[--w->buf_pool];
    return malloc(HOST_BUF_BYTES);
}

void host_buf_put(host_worker *w, void *buf)
{
    if (!buf)
        return;
    if (w->buf_pool < w->buf_pool_cap)
        w->bufs[w->buf_pool++] = buf;
    else
        free(buf);
}

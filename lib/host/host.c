/* cloister host's engine: the supervising parent (listeners, DNS, worker
 * processes) and each worker's main loop, which hands accepted connections
 * to their kind (forward.c, imds.c); what the kinds share is in
 * host_worker.c. */
#include "host/host_worker.h"

#include "cloister/host/allowlist.h"
#include "cloister/host/dns.h"
#include "cloister/core/log.h"
#include "cloister/host/sd_notify.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define LISTEN_BACKLOG 4096
#define ACCEPT_BATCH 64
#define PIPE_POOL_MAX 64
#define BUF_POOL_MAX 32
#define RESUME_AFTER_ERROR_MS 100
#define STOP_GRACE_MS 5000
#define RESTART_WINDOW_MS 10000
#define RESTARTS_PER_WINDOW 5
#define READY_TIMEOUT_MS 10000

/* ---- addresses ------------------------------------------------------------------- */


static bool same_sockaddr(const struct sockaddr_storage *a, socklen_t al, const struct sockaddr_storage *b,
                          socklen_t bl)
{
    return al == bl && memcmp(a, b, al) == 0;
}

int cl_host_resolve(const char *host, unsigned port, int family, struct sockaddr_storage *out, socklen_t *lens,
                    size_t max, size_t *n)
{
    *n = 0;
    cl_dns_result r;
    CL_TRY(cl_dns_resolve(host, port, family, NULL, &r));
    for (; *n < r.count && *n < max; (*n)++) {
        out[*n] = r.addrs[*n];
        lens[*n] = r.lens[*n];
    }
    return CL_OK;
}

/* ---- destinations in shared memory ---------------------------------------------------- */


static int dest_init(host_dest *d)
{
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    int e = pthread_mutex_init(&d->lock, &attr);
    pthread_mutexattr_destroy(&attr);
    CL_ENSURE(e == 0, CL_EIO, "cannot create a shared mutex: %s", strerror(e));
    return CL_OK;
}


/* A tcp destination whose host is an IP literal is not re-resolved. */
static bool literal_ip(const char *host, struct sockaddr_storage *ss, socklen_t *len, unsigned port)
{
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        *len = sizeof *a4;
        return true;
    }
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *len = sizeof *a6;
        return true;
    }
    return false;
}

static bool route_named(const cl_host_route *r)
{
    struct sockaddr_storage ss;
    socklen_t len;
    return r->dest.kind == CL_ADDR_TCP && !literal_ip(r->dest.host, &ss, &len, r->dest.port);
}

static void addresses_text(const host_dest *d, char *out, size_t out_len)
{
    size_t used = 0;
    out[0] = '\0';
    for (uint32_t i = 0; i < d->count && used + 1 < out_len; i++) {
        char one[INET6_ADDRSTRLEN + 8];
        cl_host_sockaddr_text((const struct sockaddr *)&d->addrs[i], false, one, sizeof one);
        int n = snprintf(out + used, out_len - used, "%s%s", i ? "," : "", one);
        if (n < 0)
            break;
        used += (size_t)n;
    }
}

static int resolve_entry(void *ctx, const char *host, struct sockaddr_storage *addrs, size_t max, size_t *n)
{
    socklen_t lens[CL_HOST_MAX_ADDRS];
    if (max > CL_HOST_MAX_ADDRS)
        max = CL_HOST_MAX_ADDRS;
    return cl_host_resolve(host, 0, *(const int *)ctx, addrs, lens, max, n);
}

/* Keeps, of the n addresses a destination name resolved to, those the
 * allowlist allows (each checked as vsock-proxy checks the first); the
 * others are logged and dropped.  CL_EVERIFY when none is left. */
static int allowlist_filter(const cl_host_config *cfg, const cl_host_route *r, struct sockaddr_storage *addrs,
                            socklen_t *lens, size_t *n)
{
    size_t kept = 0;
    char refused[512] = "";
    size_t used = 0;
    for (size_t i = 0; i < *n; i++) {
        const cl_allow_entry *m = NULL;
        int family = cfg->family;
        if (cl_allowlist_check(cfg->allowlist, r->dest.host, (uint16_t)r->dest.port, (const struct sockaddr *)&addrs[i],
                               resolve_entry, &family, &m) == CL_OK) {
            addrs[kept] = addrs[i];
            lens[kept] = lens[i];
            kept++;
            continue;
        }
        cl_error_clear();
        char text[INET6_ADDRSTRLEN + 8], port[8];
        cl_host_sockaddr_text((const struct sockaddr *)&addrs[i], false, text, sizeof text);
        snprintf(port, sizeof port, "%u", r->dest.port);
        cl_log(CL_LOG_WARN, "refused", "route", "outbound", "name", r->dest.host, "port", port, "address", text,
               "reason", "resolved to an address not in the allowlist", NULL);
        int w = snprintf(refused + used, sizeof refused - used, "%s%s", used ? " " : "", text);
        if (w > 0 && (size_t)w < sizeof refused - used)
            used += (size_t)w;
    }
    *n = kept;
    CL_ENSURE(kept > 0, CL_EVERIFY, "%s resolved only to addresses not in the allowlist (%s)", r->dest.host, refused);
    return CL_OK;
}

/* Fills d for r: once for unix, vsock and IP literals, by DNS for names.
 * *changed says whether the addresses differ from before; *again_ms is
 * when to resolve again (the TTL, between 1 s and --resolve-interval). */
static int dest_fill(const cl_host_config *cfg, const cl_host_route *r, host_dest *d, bool *changed,
                     uint64_t *again_ms, cl_dns_result *dns)
{
    *again_ms = (uint64_t)cfg->resolve_interval_s * 1000;
    dns->source = NULL;
    struct sockaddr_storage addrs[CL_HOST_MAX_ADDRS];
    socklen_t lens[CL_HOST_MAX_ADDRS];
    size_t n = 0;
    memset(addrs, 0, sizeof addrs);
    switch (r->dest.kind) {
    case CL_ADDR_UNIX: {
        struct sockaddr_un *a = (struct sockaddr_un *)&addrs[0];
        a->sun_family = AF_UNIX;
        memcpy(a->sun_path, r->dest.path, strnlen(r->dest.path, sizeof a->sun_path - 1));
        lens[0] = sizeof *a;
        n = 1;
        break;
    }
    case CL_ADDR_VSOCK: {
        struct sockaddr_vm *a = (struct sockaddr_vm *)&addrs[0];
        a->svm_family = AF_VSOCK;
        a->svm_cid = r->dest.cid;
        a->svm_port = r->dest.port;
        lens[0] = sizeof *a;
        n = 1;
        break;
    }
    case CL_ADDR_TCP:
        if (literal_ip(r->dest.host, &addrs[0], &lens[0], r->dest.port)) {
            int f = addrs[0].ss_family;
            CL_ENSURE(cfg->family == AF_UNSPEC || cfg->family == f, CL_EINVAL, "%s is an %s address but %s was given",
                      r->dest.host, f == AF_INET ? "IPv4" : "IPv6", cfg->family == AF_INET ? "-4" : "-6");
            n = 1;
        } else {
            CL_TRY(cl_dns_resolve(r->dest.host, r->dest.port, cfg->family, cfg->dns_server, dns));
            for (n = 0; n < dns->count && n < CL_HOST_MAX_ADDRS; n++) {
                addrs[n] = dns->addrs[n];
                lens[n] = dns->lens[n];
            }
            if (dns->ttl_known) {
                uint64_t ttl_ms = (uint64_t)(dns->ttl_s ? dns->ttl_s : 1) * 1000;
                if (ttl_ms < *again_ms)
                    *again_ms = ttl_ms;
            }
            if (cfg->allowlist && r->kind == CL_ROUTE_OUTBOUND)
                CL_TRY(allowlist_filter(cfg, r, addrs, lens, &n));
        }
        break;
    default:
        return cl_error_set(CL_EINVAL, "unknown destination kind");
    }
    host_dest_lock(d);
    *changed = d->count != n;
    for (size_t i = 0; i < n && !*changed; i++)
        *changed = !same_sockaddr(&d->addrs[i], d->lens[i], &addrs[i], lens[i]);
    if (*changed) {
        memcpy(d->addrs, addrs, n * sizeof addrs[0]);
        memcpy(d->lens, lens, n * sizeof lens[0]);
        d->count = (uint32_t)n;
        d->generation++;
    }
    pthread_mutex_unlock(&d->lock);
    return CL_OK;
}

static const char *route_kind_name(int kind)
{
    switch (kind) {
    case CL_ROUTE_FORWARD: return "forward";
    case CL_ROUTE_OUTBOUND: return "outbound";
    default: return "imds";
    }
}

static void on_accept(cl_loop *loop, cl_watch *watch, uint32_t events);

/* ---- the worker --------------------------------------------------------------------- */

static void on_resume(cl_loop *loop, cl_timer *t)
{
    (void)loop;
    host_worker *w = HOST_CONTAINER(t, host_worker, resume_timer);
    w->paused_error = false;
    host_listeners_update(w);
}

static void on_accept(cl_loop *loop, cl_watch *watch, uint32_t events)
{
    (void)events;
    host_listener *l = HOST_CONTAINER(watch, host_listener, watch);
    host_worker *w = l->w;
    host_shared *sh = w->shared;
    for (int i = 0; i < ACCEPT_BATCH && l->watching; i++) {
        struct sockaddr_storage peer;
        memset(&peer, 0, sizeof peer);
        socklen_t peer_len = sizeof peer;
        int fd = accept4(l->fd, (struct sockaddr *)&peer, &peer_len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int e = errno;
            if (e == EAGAIN || e == EWOULDBLOCK)
                return;
            if (e == EINTR || e == ECONNABORTED || e == EPROTO)
                continue;
            host_warn_limited(w, "accept-failed", "route", route_kind_name(l->route->kind), "error", strerror(e),
                              NULL);
            /* out of descriptors or memory: stop accepting for a moment
             * instead of spinning on a listener that stays readable */
            w->paused_error = true;
            host_listeners_update(w);
            cl_timer_start(loop, &w->resume_timer, RESUME_AFTER_ERROR_MS, on_resume);
            return;
        }
        int64_t before = atomic_fetch_add(&sh->active, 1);
        atomic_fetch_add(&sh->worker_active[w->id], 1);
        if (before >= (int64_t)w->cfg->max_connections) {
            host_slot_release(w);
            atomic_fetch_add(&sh->refused, 1);
            close(fd);
            char max[16];
            snprintf(max, sizeof max, "%u", w->cfg->max_connections);
            host_warn_limited(w, "refused", "route", route_kind_name(l->route->kind), "reason", "max-connections",
                              "max_connections", max, NULL);
            continue;
        }
        atomic_fetch_add(&sh->accepted, 1);
        if (l->route->kind == CL_ROUTE_IMDS)
            imds_accept(w, l, fd);
        else
            forward_accept(w, l, fd, &peer, peer_len);
    }
}

static void worker_stop(host_worker *w)
{
    if (w->stopping)
        return;
    w->stopping = true;
    host_listeners_update(w);
    while (w->conns.next != &w->conns)
        w->conns.next->close(w->conns.next, "shutdown");
    cl_loop_stop(w->loop);
}

/* The drain's second phase: no new connections; the ones open finish. */
static void worker_quiesce(host_worker *w)
{
    if (w->stopping)
        return;
    w->stopping = w->quiescing = true;
    host_listeners_update(w);
    if (w->conn_count == 0)
        cl_loop_stop(w->loop);
}

static void on_worker_signal(cl_loop *loop, cl_watch *watch, uint32_t events)
{
    (void)loop;
    (void)events;
    host_worker *w = HOST_CONTAINER(watch, host_worker, signal_watch);
    struct signalfd_siginfo si;
    while (read(watch->fd, &si, sizeof si) == (ssize_t)sizeof si) {
        if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
            worker_stop(w);
        else if (si.ssi_signo == SIGUSR1)
            worker_quiesce(w);
    }
}

/* A worker's share of its descriptor limit: pipes for bytes in flight,
 * then two descriptors per connection. */
static size_t worker_budget(size_t listeners, size_t *pipe_limit)
{
    struct rlimit rl;
    size_t nofile = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY ? (size_t)rl.rlim_cur : 1024;
    size_t pipes = nofile / 16;
    if (pipes > 1024)
        pipes = 1024;
    if (pipes < 4)
        pipes = 4;
    if (pipe_limit)
        *pipe_limit = pipes;
    size_t reserve = 64 + listeners + 2 * pipes;
    return nofile > reserve + 2 ? (nofile - reserve) / 2 : 1;
}

typedef struct parent_listener {
    int fd;
    size_t route;
    bool is_unix;
    dev_t dev;
    ino_t ino;
} parent_listener;

/* ready_fd >= 0: written to (one byte) once the worker accepts, then closed. */
static int worker_main(const cl_host_config *cfg, host_shared *sh, const parent_listener *pl, size_t pl_count,
                       unsigned id, int ready_fd)
{
    host_worker w;
    memset(&w, 0, sizeof w);
    w.cfg = cfg;
    w.shared = sh;
    w.id = id;
    w.on_accept = on_accept;
    w.conns.next = w.conns.prev = &w.conns;
    w.ready.ready_next = w.ready.ready_prev = &w.ready;
    w.idle_ms = (uint64_t)cfg->idle_timeout_s * 1000;
    w.connect_ms = (uint64_t)cfg->connect_timeout_s * 1000;
    int rc = CL_OK;
    int sfd = -1;

    w.conn_budget = worker_budget(pl_count, &w.pipe_limit);
    w.pipe_pool_cap = PIPE_POOL_MAX;
    w.buf_pool_cap = BUF_POOL_MAX;
    w.pipes = calloc(w.pipe_pool_cap, sizeof *w.pipes);
    w.bufs = calloc(w.buf_pool_cap, sizeof *w.bufs);
    w.listeners = calloc(pl_count, sizeof *w.listeners);
    if (!w.pipes || !w.bufs || !w.listeners)
        CL_FAIL_OUT(CL_ENOMEM, "out of memory");
    CL_TRY_OUT(cl_loop_new(&w.loop));
    cl_loop_set_wake_handler(w.loop, host_worker_on_wake, &w);

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGUSR1);
    sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0)
        CL_FAIL_OUT(CL_EIO, "signalfd: %s", strerror(errno));
    CL_TRY_OUT(cl_loop_watch_listener(w.loop, &w.signal_watch, sfd, on_worker_signal));

    w.listener_count = pl_count;
    for (size_t i = 0; i < pl_count; i++) {
        host_listener *l = &w.listeners[i];
        l->fd = pl[i].fd;
        l->w = &w;
        l->index = pl[i].route;
        l->route = &cfg->routes[pl[i].route];
    }
    host_listeners_update(&w);
    if (ready_fd >= 0) {
        char one = 1;
        ssize_t ignored = write(ready_fd, &one, 1);
        (void)ignored;
        close(ready_fd);
        ready_fd = -1;
    }
    char n[24] = "", budget[24];
    snprintf(n, sizeof n, "%u", id);
    snprintf(budget, sizeof budget, "%zu", w.conn_budget);
    cl_log(CL_LOG_DEBUG, "worker-started", "worker", n, "connection_budget", budget, NULL);
    CL_TRY_OUT(cl_loop_run(w.loop));
out:
    if (ready_fd >= 0)
        close(ready_fd);
    if (rc < 0) {
        snprintf(n, sizeof n, "%u", id);
        cl_log(CL_LOG_ERROR, "worker-failed", "worker", n, "detail", cl_error_message(), NULL);
    }
    if (w.loop) {
        while (w.conns.next != &w.conns)
            w.conns.next->close(w.conns.next, "shutdown");
        cl_loop_free(w.loop); /* deferred frees ran at the end of the last iteration */
    }
    if (sfd >= 0)
        close(sfd);
    for (size_t i = 0; i < w.pipe_pool; i++) {
        close(w.pipes[i].r);
        close(w.pipes[i].w);
    }
    for (size_t i = 0; i < w.buf_pool; i++)
        free(w.bufs[i]);
    free(w.pipes);
    free(w.bufs);
    free(w.listeners);
    return rc < 0 ? 1 : 0;
}

/* ---- the parent ------------------------------------------------------------------------ */

typedef struct parent {
    const cl_host_config *cfg;
    host_shared *shared;
    size_t shared_len;
    parent_listener *listeners;
    size_t listener_count;
    pid_t pids[CL_HOST_MAX_WORKERS];
    unsigned workers;
    int sigfd;
    uint64_t *resolve_at; /* per route; 0: not a DNS name */
    uint64_t restart_times[RESTARTS_PER_WINDOW];
    unsigned restarts;
    unsigned failures; /* workers that exited other than cleanly */
    int ready_r, ready_w; /* workers report that they accept: only at the start */
    size_t dests_ready;
} parent;

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return;
    rlim_t before = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max;
    if (rl.rlim_cur != before && setrlimit(RLIMIT_NOFILE, &rl) < 0) {
        cl_log(CL_LOG_WARN, "nofile-limit", "detail", strerror(errno), NULL);
        return;
    }
}

static int open_listeners(parent *p)
{
    const cl_host_config *cfg = p->cfg;
    p->listeners = calloc(cfg->route_count, sizeof *p->listeners);
    CL_ENSURE(p->listeners, CL_ENOMEM, "out of memory");
    for (size_t i = 0; i < cfg->route_count; i++) {
        const cl_host_route *r = &cfg->routes[i];
        parent_listener *l = &p->listeners[i];
        int fd;
        char text[CL_ADDRESS_PATH_MAX + 16];
        cl_address_format(&r->listen, text, sizeof text);
        int rc = cl_address_listen(&r->listen, LISTEN_BACKLOG, &fd);
        if (rc < 0)
            return cl_error_prefix(rc, "%s listener %s: ", route_kind_name(r->kind), text);
        l->fd = fd;
        l->route = i;
        p->listener_count++;
        int flags = fcntl(fd, F_GETFL);
        if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
            return cl_error_set(CL_EIO, "fcntl(O_NONBLOCK) on %s: %s", text, strerror(errno));
        if (r->listen.kind == CL_ADDR_UNIX) {
            struct stat st;
            if (stat(r->listen.path, &st) == 0) {
                l->is_unix = true;
                l->dev = st.st_dev;
                l->ino = st.st_ino;
            }
        }
    }
    return CL_OK;
}

static void close_listeners(parent *p)
{
    for (size_t i = 0; i < p->listener_count; i++) {
        parent_listener *l = &p->listeners[i];
        close(l->fd);
        if (l->is_unix) {
            /* remove the socket file only if it is still the one we made */
            const char *path = p->cfg->routes[l->route].listen.path;
            struct stat st;
            if (stat(path, &st) == 0 && st.st_dev == l->dev && st.st_ino == l->ino)
                unlink(path);
        }
    }
    free(p->listeners);
    p->listeners = NULL;
    p->listener_count = 0;
}

static void log_resolved(const cl_host_route *r, const host_dest *d, bool changed, const char *kind,
                         const cl_dns_result *dns, uint64_t again_ms)
{
    char addrs[1024], port[8], ttl[16], again[24];
    addresses_text(d, addrs, sizeof addrs);
    snprintf(port, sizeof port, "%u", r->dest.port);
    snprintf(ttl, sizeof ttl, "%u", dns->ttl_s);
    snprintf(again, sizeof again, "%llu", (unsigned long long)(again_ms / 1000));
    /* the same answer again at debug: a name with TTL 0 would log a line a second */
    cl_log(changed ? CL_LOG_INFO : CL_LOG_DEBUG, "resolved", "route", kind, "name", r->dest.host, "port", port,
           "addresses", addrs, "changed", changed ? "yes" : "no", "source", dns->source ? dns->source : "-", "ttl",
           dns->ttl_known ? ttl : "-", "again_in_s", again, NULL);
}

static void resolve_due(parent *p)
{
    uint64_t now = cl_monotonic_ms();
    for (size_t i = 0; i < p->cfg->route_count; i++) {
        if (!p->resolve_at[i] || p->resolve_at[i] > now)
            continue;
        const cl_host_route *r = &p->cfg->routes[i];
        bool changed = false;
        uint64_t again_ms;
        cl_dns_result dns;
        if (dest_fill(p->cfg, r, &p->shared->dests[i], &changed, &again_ms, &dns) < 0)
            /* keep the addresses we have: a DNS hiccup must not cut the enclave off */
            cl_log(CL_LOG_WARN, "resolve-failed", "route", route_kind_name(r->kind), "name", r->dest.host, "detail",
                   cl_error_message(), "action", "keeping the previous addresses", NULL);
        else
            log_resolved(r, &p->shared->dests[i], changed, route_kind_name(r->kind), &dns, again_ms);
        p->resolve_at[i] = cl_monotonic_ms() + again_ms;
    }
}

static int spawn_worker(parent *p, unsigned id)
{
    fflush(stdout);
    fflush(stderr);
    pid_t parent_pid = getpid();
    pid_t pid = fork();
    CL_ENSURE(pid >= 0, CL_EIO, "fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent_pid)
            _exit(0);
        close(p->sigfd);
        if (p->ready_r >= 0)
            close(p->ready_r);
        int status = worker_main(p->cfg, p->shared, p->listeners, p->listener_count, id, p->ready_w);
        /* the listeners belong to the parent: close them without unlinking */
        for (size_t i = 0; i < p->listener_count; i++)
            close(p->listeners[i].fd);
        free(p->listeners);
        free(p->resolve_at);
        munmap(p->shared, p->shared_len);
        exit(status);
    }
    p->pids[id] = pid;
    return CL_OK;
}

/* Reaps exited workers; outside a stop, restarts them unless they keep dying. */
static int reap(parent *p, bool stopping, unsigned *alive)
{
    /* only our workers: the watchdog thread reaps the enclave's processes */
    for (unsigned i = 0; i < p->workers; i++) {
        int status;
        if (p->pids[i] <= 0 || waitpid(p->pids[i], &status, WNOHANG) != p->pids[i])
            continue;
        p->pids[i] = 0;
        (*alive)--;
        /* its connections died with it */
        int64_t lost = atomic_exchange(&p->shared->worker_active[i], 0);
        atomic_fetch_sub(&p->shared->active, lost);
        bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (stopping && clean)
            continue;
        char id[16], st[48];
        snprintf(id, sizeof id, "%u", i);
        if (WIFSIGNALED(status))
            snprintf(st, sizeof st, "killed by signal %d", WTERMSIG(status));
        else
            snprintf(st, sizeof st, "exit status %d", WEXITSTATUS(status));
        cl_log(CL_LOG_ERROR, "worker-exited", "worker", id, "status", st, "action",
               stopping ? "none (stopping)" : "restarting", NULL);
        p->failures++;
        if (stopping)
            continue;
        uint64_t now = cl_monotonic_ms();
        uint64_t oldest = p->restart_times[p->restarts % RESTARTS_PER_WINDOW];
        if (p->restarts >= RESTARTS_PER_WINDOW && now - oldest < RESTART_WINDOW_MS)
            return cl_error_set(CL_EIO, "workers exited %d times within %d s; giving up", RESTARTS_PER_WINDOW,
                                RESTART_WINDOW_MS / 1000);
        p->restart_times[p->restarts++ % RESTARTS_PER_WINDOW] = now;
        CL_TRY(spawn_worker(p, i));
        (*alive)++;
    }
    return CL_OK;
}

static void stop_workers(parent *p, unsigned alive)
{
    for (unsigned i = 0; i < p->workers; i++)
        if (p->pids[i] > 0)
            kill(p->pids[i], SIGTERM);
    uint64_t deadline = cl_monotonic_ms() + STOP_GRACE_MS;
    while (alive > 0) {
        (void)reap(p, true, &alive);
        if (alive == 0)
            break;
        uint64_t now = cl_monotonic_ms();
        if (now >= deadline) {
            for (unsigned i = 0; i < p->workers; i++)
                if (p->pids[i] > 0) {
                    char id[16];
                    snprintf(id, sizeof id, "%u", i);
                    cl_log(CL_LOG_ERROR, "worker-exited", "worker", id, "status", "did not stop in time", "action",
                           "SIGKILL", NULL);
                    kill(p->pids[i], SIGKILL);
                    waitpid(p->pids[i], NULL, 0);
                    p->pids[i] = 0;
                    p->failures++;
                }
            break;
        }
        struct pollfd pfd = {.fd = p->sigfd, .events = POLLIN};
        poll(&pfd, 1, (int)(deadline - now < 100 ? deadline - now : 100));
        struct signalfd_siginfo si;
        while (read(p->sigfd, &si, sizeof si) == (ssize_t)sizeof si) {
        }
    }
}

static int supervise(parent *p, cl_watchdog *wd, int *stop_signal)
{
    unsigned alive = p->workers;
    for (;;) {
        uint64_t now = cl_monotonic_ms(), next = UINT64_MAX;
        for (size_t i = 0; i < p->cfg->route_count; i++)
            if (p->resolve_at[i] && p->resolve_at[i] < next)
                next = p->resolve_at[i];
        int timeout = next == UINT64_MAX ? -1 : next <= now ? 0 : next - now > 60000 ? 60000 : (int)(next - now);
        struct pollfd pfd[2] = {{.fd = p->sigfd, .events = POLLIN}, {.fd = wd ? cl_watchdog_fd(wd) : -1, .events = POLLIN}};
        int n = poll(pfd, 2, timeout);
        if (n < 0 && errno != EINTR)
            return cl_error_set(CL_EIO, "poll: %s", strerror(errno));
        if (n > 0 && pfd[1].revents) /* the watchdog gave up: no enclave to serve */
            return cl_watchdog_wait(wd);
        struct signalfd_siginfo si;
        while (read(p->sigfd, &si, sizeof si) == (ssize_t)sizeof si) {
            if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
                *stop_signal = (int)si.ssi_signo;
                return CL_OK;
            }
        }
        CL_TRY(reap(p, false, &alive));
        resolve_due(p);
    }
}

/* Waits until deadline, a second SIGTERM/SIGINT (false), or, with
 * until_done, until every worker and the watchdog have finished. */
static bool drain_wait(parent *p, cl_watchdog *wd, uint64_t deadline, bool until_done)
{
    for (;;) {
        unsigned alive = 0;
        for (unsigned i = 0; i < p->workers; i++)
            alive += p->pids[i] > 0;
        (void)reap(p, until_done, &alive);
        bool wd_done = !wd || cl_watchdog_state(wd) == CL_ENCLAVE_STOPPED || cl_watchdog_state(wd) == CL_ENCLAVE_FAILED;
        if (until_done && alive == 0 && wd_done)
            return true;
        uint64_t now = cl_monotonic_ms();
        if (now >= deadline)
            return true;
        struct pollfd pfd = {.fd = p->sigfd, .events = POLLIN};
        poll(&pfd, 1, (int)(deadline - now < 50 ? deadline - now : 50));
        struct signalfd_siginfo si;
        while (read(p->sigfd, &si, sizeof si) == (ssize_t)sizeof si)
            if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
                cl_log(CL_LOG_INFO, "drain_cut", "signal", si.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM", NULL);
                return false;
            }
    }
}

/* SIGTERM: health checks fail first while connections are still forwarded
 * (the grace), then no new ones, and the open ones have drain_timeout to
 * end.  The watchdog is stopped at once: stopping drains the enclave too
 * (SIGTERM to the local one, whose own grace runs alongside ours). */
static void drain(parent *p, cl_watchdog *wd)
{
    const cl_host_config *cfg = p->cfg;
    if (!cfg->drain_grace_ms && !cfg->drain_timeout_ms)
        return;
    bool health = false;
    for (size_t i = 0; i < cfg->route_count; i++)
        health |= cfg->routes[i].health;
    unsigned grace = health ? cfg->drain_grace_ms : 0;
    char grace_text[24], timeout_text[24];
    snprintf(grace_text, sizeof grace_text, "%u", grace);
    snprintf(timeout_text, sizeof timeout_text, "%u", cfg->drain_timeout_ms);
    atomic_store(&p->shared->draining, 1);
    cl_log(CL_LOG_INFO, "draining", "health", health ? "503" : "-", "grace_ms", grace_text, "drain_timeout_ms",
           timeout_text, NULL);
    if (wd)
        cl_watchdog_stop(wd);
    if (!drain_wait(p, wd, cl_monotonic_ms() + grace, false))
        return;
    for (unsigned i = 0; i < p->workers; i++)
        if (p->pids[i] > 0)
            kill(p->pids[i], SIGUSR1);
    cl_log(CL_LOG_INFO, "drain_accepting_stopped", NULL);
    if (!drain_wait(p, wd, cl_monotonic_ms() + cfg->drain_timeout_ms, true))
        return;
    int64_t left = atomic_load(&p->shared->active);
    char left_text[24];
    snprintf(left_text, sizeof left_text, "%lld", (long long)(left > 0 ? left : 0));
    cl_log(CL_LOG_INFO, "drained", "connections_left", left_text, NULL);
}

static void notify(const char *state)
{
    if (cl_sd_notify(state) < 0)
        cl_log(CL_LOG_WARN, "sd_notify_failed", "error", cl_error_message(), NULL);
}

int cl_host_run(const cl_host_config *cfg)
{
    CL_ENSURE(cfg->route_count > 0 || cfg->watchdog, CL_EINVAL,
              "nothing to do: no --forward, --outbound, --imds or enclave to run");
    CL_ENSURE(cfg->max_connections > 0 && cfg->idle_timeout_s > 0 && cfg->connect_timeout_s > 0 &&
                  cfg->resolve_interval_s > 0,
              CL_EINVAL, "limits and timeouts must be positive");
    parent p;
    memset(&p, 0, sizeof p);
    p.cfg = cfg;
    p.sigfd = -1;
    p.ready_r = p.ready_w = -1;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    p.workers = cfg->workers ? cfg->workers : cores > 0 ? (unsigned)cores : 1;
    if (p.workers > CL_HOST_MAX_WORKERS)
        p.workers = CL_HOST_MAX_WORKERS;
    int rc = CL_OK;
    int stop_signal = 0;
    cl_watchdog *wd = NULL;
    cl_watchdog_notifier notifier = {0};

    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGUSR1); /* the workers' "stop accepting" (drain), blocked before they fork */
    sigprocmask(SIG_BLOCK, &set, &old);
    struct sigaction ign = {.sa_handler = SIG_IGN}, old_pipe;
    sigaction(SIGPIPE, &ign, &old_pipe);
    raise_nofile();

    p.shared_len = sizeof(host_shared) + cfg->route_count * sizeof(host_dest);
    p.shared = mmap(NULL, p.shared_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p.shared == MAP_FAILED) {
        p.shared = NULL;
        CL_FAIL_OUT(CL_EIO, "mmap: %s", strerror(errno));
    }
    p.resolve_at = calloc(cfg->route_count, sizeof *p.resolve_at);
    if (!p.resolve_at)
        CL_FAIL_OUT(CL_ENOMEM, "out of memory");
    for (size_t i = 0; i < cfg->route_count; i++) {
        const cl_host_route *r = &cfg->routes[i];
        CL_TRY_OUT(dest_init(&p.shared->dests[i]));
        p.dests_ready++;
        bool changed;
        uint64_t again_ms;
        cl_dns_result dns;
        rc = dest_fill(cfg, r, &p.shared->dests[i], &changed, &again_ms, &dns);
        if (rc < 0) {
            char dest[CL_ADDRESS_PATH_MAX + 16];
            cl_address_format(&r->dest, dest, sizeof dest);
            cl_error_prefix(rc, "%s destination %s: ", route_kind_name(r->kind), dest);
            goto out;
        }
        if (route_named(r)) {
            log_resolved(r, &p.shared->dests[i], true, route_kind_name(r->kind), &dns, again_ms);
            p.resolve_at[i] = cl_monotonic_ms() + again_ms;
        }
    }
    CL_TRY_OUT(open_listeners(&p));
    p.sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (p.sigfd < 0)
        CL_FAIL_OUT(CL_EIO, "signalfd: %s", strerror(errno));

    for (size_t i = 0; i < cfg->route_count; i++) {
        const cl_host_route *r = &cfg->routes[i];
        char listen[CL_ADDRESS_PATH_MAX + 16], dest[CL_ADDRESS_PATH_MAX + 16];
        cl_address_format(&r->listen, listen, sizeof listen);
        cl_address_format(&r->dest, dest, sizeof dest);
        cl_log(CL_LOG_INFO, "listening", "route", route_kind_name(r->kind), "listen", listen,
               r->kind == CL_ROUTE_IMDS ? "endpoint" : "dest", dest, "proxy_protocol", r->proxy_protocol ? "yes" : "no",
               NULL);
    }
    int ready[2];
    if (pipe2(ready, O_CLOEXEC) < 0)
        CL_FAIL_OUT(CL_EIO, "pipe: %s", strerror(errno));
    p.ready_r = ready[0];
    p.ready_w = ready[1];
    unsigned started = 0;
    for (; started < p.workers; started++) {
        rc = spawn_worker(&p, started);
        if (rc < 0)
            break;
    }
    close(p.ready_w);
    p.ready_w = -1;
    if (rc == CL_OK) {
        /* "started" means accepting: each worker writes a byte once it is,
         * and a worker that failed first closes its end without one */
        unsigned ready_count = 0;
        uint64_t deadline = cl_monotonic_ms() + READY_TIMEOUT_MS;
        while (ready_count < started) {
            uint64_t now = cl_monotonic_ms();
            if (now >= deadline)
                break;
            struct pollfd pfd = {.fd = p.ready_r, .events = POLLIN};
            if (poll(&pfd, 1, (int)(deadline - now)) < 0 && errno != EINTR)
                break;
            char bytes[CL_HOST_MAX_WORKERS];
            ssize_t n = read(p.ready_r, bytes, sizeof bytes);
            if (n == 0)
                break;
            if (n > 0)
                ready_count += (unsigned)n;
        }
        close(p.ready_r);
        p.ready_r = -1;
        if (ready_count < started) {
            char have[24];
            snprintf(have, sizeof have, "%u/%u", ready_count, started);
            cl_log(CL_LOG_WARN, "workers-not-ready", "ready", have, "detail",
                   "some workers did not start; they are restarted", NULL);
        }
        struct rlimit rl;
        size_t budget = worker_budget(p.listener_count, NULL);
        char workers[16], nofile[24], maxc[16], idle[16], per_worker[24];
        snprintf(workers, sizeof workers, "%u", p.workers);
        snprintf(nofile, sizeof nofile, "%llu",
                 getrlimit(RLIMIT_NOFILE, &rl) == 0 ? (unsigned long long)rl.rlim_cur : 0ull);
        snprintf(maxc, sizeof maxc, "%u", cfg->max_connections);
        snprintf(idle, sizeof idle, "%u", cfg->idle_timeout_s);
        snprintf(per_worker, sizeof per_worker, "%zu", budget);
        cl_log(CL_LOG_INFO, "started", "workers", workers, "nofile_per_worker", nofile, "connections_per_worker",
               per_worker, "max_connections", maxc, "idle_timeout_s", idle, "splice", cfg->no_splice ? "no" : "yes",
               NULL);
        if ((uint64_t)budget * p.workers < cfg->max_connections) {
            char total[24];
            snprintf(total, sizeof total, "%llu", (unsigned long long)budget * p.workers);
            cl_log(CL_LOG_WARN, "descriptor-limit", "connections_possible", total, "max_connections", maxc, "detail",
                   "the open-file limit allows fewer connections than --max-connections; raise the hard limit "
                   "(ulimit -Hn, systemd LimitNOFILE) or add --workers",
                   NULL);
        }
        if (cfg->watchdog) {
            /* after the workers: the first forks happen before the thread exists */
            cl_watchdog_config wcfg = *cfg->watchdog;
            wcfg.on_state = cl_watchdog_notify_systemd;
            wcfg.on_state_ctx = &notifier;
            rc = cl_watchdog_start(&wcfg, &wd);
        } else {
            notify("READY=1");
        }
        if (rc == CL_OK)
            rc = supervise(&p, wd, &stop_signal);
    }
    if (rc < 0)
        cl_log(CL_LOG_ERROR, "failed", "detail", cl_error_message(), NULL);
    cl_log(CL_LOG_INFO, "stopping", "signal", stop_signal == SIGINT ? "SIGINT" : stop_signal ? "SIGTERM" : "none",
           NULL);
    notify("STOPPING=1");
    if (rc == CL_OK && stop_signal)
        drain(&p, wd);
    if (wd)
        cl_watchdog_stop(wd); /* the enclave is terminated while the workers stop */
    unsigned alive = 0;
    for (unsigned i = 0; i < p.workers; i++)
        if (p.pids[i] > 0)
            alive++;
    stop_workers(&p, alive);
    if (rc == CL_OK && p.failures)
        rc = cl_error_set(CL_EIO, "%u worker exit%s other than clean during the run (see worker-exited)", p.failures,
                          p.failures == 1 ? "" : "s");
    char accepted[24], refused[24];
    snprintf(accepted, sizeof accepted, "%llu", (unsigned long long)atomic_load(&p.shared->accepted));
    snprintf(refused, sizeof refused, "%llu", (unsigned long long)atomic_load(&p.shared->refused));
    cl_log(CL_LOG_INFO, "stopped", "accepted", accepted, "refused", refused, NULL);
out:
    if (wd) {
        int wrc = cl_watchdog_wait(wd);
        if (rc == CL_OK && wrc < 0)
            rc = wrc;
        cl_watchdog_free(wd);
    }
    if (p.listeners)
        close_listeners(&p);
    if (p.sigfd >= 0)
        close(p.sigfd);
    if (p.ready_r >= 0)
        close(p.ready_r);
    free(p.resolve_at);
    if (p.shared) {
        for (size_t i = 0; i < p.dests_ready; i++)
            pthread_mutex_destroy(&p.shared->dests[i].lock);
        munmap(p.shared, p.shared_len);
    }
    sigaction(SIGPIPE, &old_pipe, NULL);
    /* drop the signals that arrived while blocked, then unblock */
    struct timespec zero = {0, 0};
    while (sigtimedwait(&set, NULL, &zero) > 0) {
    }
    sigprocmask(SIG_SETMASK, &old, NULL);
    return rc;
}

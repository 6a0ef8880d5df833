#include "cloister/host/watchdog.h"

#include "cloister/host/sd_notify.h"

#include "cloister/core/address.h"
#include "cloister/core/clock.h"
#include "cloister/core/http.h"
#include "cloister/core/log.h"
#include "cloister/core/process.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <netdb.h>
#include <poll.h>
#include <sys/prctl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_STOP_GRACE_MS 10000u
#define DEFAULT_HEALTH_INTERVAL_MS 5000u
#define DEFAULT_HEALTH_TIMEOUT_MS 2000u
#define DEFAULT_HEALTH_FAILURES 3u
#define DEFAULT_START_TIMEOUT_MS 120000u
#define DEFAULT_RESTART_BUDGET 5u
#define DEFAULT_RESTART_WINDOW_MS 600000u
#define DEFAULT_BACKOFF_INITIAL_MS 1000u
#define DEFAULT_BACKOFF_MAX_MS 60000u
#define DEFAULT_STABLE_AFTER_MS 60000u
#define STARTING_PROBE_MS 250u /* probe period while starting, when the interval is longer */
#define MAX_RESTART_BUDGET 100000u
#define HTTP_PATH_MAX 1024
#define REASON_MAX 768
#define WHY_MAX (REASON_MAX - 128) /* a check's failure, quoted inside a reason */

/* ---- the object ---------------------------------------------------------------------- */

typedef struct line_reader {
    int fd;
    const char *stream;
    char buf[1024];
    size_t len;
} line_reader;

struct cl_watchdog {
    cl_watchdog_config cfg; /* strings point at the copies below */
    char *command, *eif, *name, *nitro_path;

    /* the health probe, parsed */
    bool probe_http, probe_connect;
    cl_address probe_addr;
    char probe_path[HTTP_PATH_MAX];
    char probe_host[CL_ADDRESS_HOST_MAX + 16]; /* Host header */
    /* --drain-url, parsed */
    bool drain;
    cl_address drain_addr;
    char drain_path[HTTP_PATH_MAX];

    pthread_t thread;
    bool thread_started;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool stop_requested, finished; /* under lock */
    int result;                    /* under lock, once finished */
    char result_msg[REASON_MAX + 128];
    cl_watchdog_status status; /* under lock */
    int wake[2];               /* a byte on stop requests */
    int done[2];               /* readable once finished */

    /* the watchdog thread's own */
    pid_t child; /* local: the child, also its process group; 0 when none */
    bool child_exited; /* reaped; its process group may still have members */
    int child_pidfd;
    line_reader out, err;
    bool have_enclave; /* nitro-cli: enclave is ours to terminate */
    cl_nitro_enclave enclave;
    uint64_t started_ms;
    uint64_t *restart_times; /* ring of the last restart times */
    unsigned restart_count;  /* entries in the ring */
};

static void fmt_u64(char out[24], uint64_t v)
{
    snprintf(out, 24, "%llu", (unsigned long long)v);
}

const char *cl_watchdog_state_name(int state)
{
    switch (state) {
    case CL_ENCLAVE_STOPPED: return "stopped";
    case CL_ENCLAVE_STARTING: return "starting";
    case CL_ENCLAVE_RUNNING: return "running";
    case CL_ENCLAVE_TERMINATING: return "terminating";
    case CL_ENCLAVE_BACKOFF: return "backoff";
    case CL_ENCLAVE_FAILED: return "failed";
    default: return "unknown";
    }
}

int cl_watchdog_state(const cl_watchdog *w)
{
    cl_watchdog *m = (cl_watchdog *)w;
    pthread_mutex_lock(&m->lock);
    int s = m->status.state;
    pthread_mutex_unlock(&m->lock);
    return s;
}

void cl_watchdog_status_get(const cl_watchdog *w, cl_watchdog_status *out)
{
    cl_watchdog *m = (cl_watchdog *)w;
    pthread_mutex_lock(&m->lock);
    *out = m->status;
    pthread_mutex_unlock(&m->lock);
}

int cl_watchdog_fd(const cl_watchdog *w)
{
    return w->done[0];
}

static bool stop_requested(cl_watchdog *w)
{
    pthread_mutex_lock(&w->lock);
    bool s = w->stop_requested;
    pthread_mutex_unlock(&w->lock);
    return s;
}

static void progress(cl_watchdog *w)
{
    uint64_t now = cl_monotonic_ms();
    pthread_mutex_lock(&w->lock);
    w->status.progress_ms = now;
    pthread_mutex_unlock(&w->lock);
}

static const char *runner_name(const cl_watchdog *w)
{
    return w->cfg.runner == CL_WATCHDOG_NITRO_CLI ? "nitro-cli" : "local";
}

/* One log line per transition, then the callback (outside the lock). */
static void set_state(cl_watchdog *w, int to, const char *reason)
{
    pthread_mutex_lock(&w->lock);
    int from = w->status.state;
    w->status.state = to;
    w->status.progress_ms = cl_monotonic_ms();
    unsigned restarts = w->status.restarts;
    pthread_mutex_unlock(&w->lock);
    char restarts_text[24], pid_text[24];
    fmt_u64(restarts_text, restarts);
    int level = CL_LOG_INFO;
    if (to == CL_ENCLAVE_FAILED)
        level = CL_LOG_ERROR;
    else if (to == CL_ENCLAVE_TERMINATING && strcmp(reason, "stop requested") != 0)
        level = CL_LOG_WARN;
    if (w->cfg.runner == CL_WATCHDOG_LOCAL) {
        fmt_u64(pid_text, (uint64_t)(w->child > 0 ? w->child : 0));
        cl_log(level, "enclave_state", "from", cl_watchdog_state_name(from), "to", cl_watchdog_state_name(to),
               "reason", reason, "runner", runner_name(w), "pid", pid_text, "restarts", restarts_text, NULL);
    } else {
        cl_log(level, "enclave_state", "from", cl_watchdog_state_name(from), "to", cl_watchdog_state_name(to),
               "reason", reason, "runner", runner_name(w), "enclave_id", w->have_enclave ? w->enclave.id : "",
               "restarts", restarts_text, NULL);
    }
    if (w->cfg.on_state)
        w->cfg.on_state(w->cfg.on_state_ctx, from, to, reason);
}

/* Sleeps until deadline (CLOCK_MONOTONIC ms) or a stop request; true when stopped. */
static bool sleep_until(cl_watchdog *w, uint64_t deadline)
{
    for (;;) {
        if (stop_requested(w))
            return true;
        uint64_t now = cl_monotonic_ms();
        if (now >= deadline)
            return false;
        struct pollfd p = {.fd = w->wake[0], .events = POLLIN};
        uint64_t left = deadline - now;
        int r = poll(&p, 1, left > 1000 ? 1000 : (int)left);
        if (r > 0) {
            char drain[64];
            while (read(w->wake[0], drain, sizeof drain) > 0)
                ;
        }
        progress(w);
    }
}

/* ---- health probes ---------------------------------------------------------------------- */

static int wait_fd(int fd, short events, uint64_t deadline, const char *what)
{
    for (;;) {
        uint64_t now = cl_monotonic_ms();
        CL_ENSURE(now < deadline, CL_EIO, "%s: timed out", what);
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, (int)(deadline - now));
        if (r > 0)
            return CL_OK;
        CL_ENSURE(r == 0 || errno == EINTR, CL_EIO, "%s: poll: %s", what, strerror(errno));
    }
}

/* A non-blocking connect finished within the deadline. */
static int connect_within(int family, const struct sockaddr *given, socklen_t given_len, uint64_t deadline,
                          int *fd_out)
{
    (void)family;
    struct sockaddr_storage final;
    socklen_t len;
    CL_TRY(cl_sockaddr_final(given, given_len, false, &final, &len));
    const struct sockaddr *sa = (const struct sockaddr *)&final;
    int fd;
    CL_TRY(cl_socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, &fd));
    int rc = CL_OK;
    if (connect(fd, sa, len) < 0) {
        if (errno != EINPROGRESS)
            CL_FAIL_OUT(CL_EIO, "connect: %s", strerror(errno));
        CL_TRY_OUT(wait_fd(fd, POLLOUT, deadline, "connect"));
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
            soerr = errno;
        if (soerr)
            CL_FAIL_OUT(CL_EIO, "connect: %s", strerror(soerr));
    }
    *fd_out = fd;
    fd = -1;
out:
    if (fd >= 0)
        close(fd);
    return rc;
}

static int probe_connect(const cl_address *a, uint64_t deadline, int *fd_out)
{
    *fd_out = -1;
    switch (a->kind) {
    case CL_ADDR_UNIX: {
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        memcpy(sun.sun_path, a->path, sizeof sun.sun_path);
        return connect_within(AF_UNIX, (struct sockaddr *)&sun, sizeof sun, deadline, fd_out);
    }
    case CL_ADDR_VSOCK: {
        struct sockaddr_vm svm = {.svm_family = AF_VSOCK, .svm_cid = a->cid, .svm_port = a->port};
        return connect_within(AF_VSOCK, (struct sockaddr *)&svm, sizeof svm, deadline, fd_out);
    }
    case CL_ADDR_TCP: {
        char port[8];
        snprintf(port, sizeof port, "%u", a->port);
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
        struct addrinfo *res = NULL;
        int gai = getaddrinfo(a->host, port, &hints, &res);
        CL_ENSURE(gai == 0, CL_EIO, "cannot resolve %s: %s", a->host, gai_strerror(gai));
        int rc = cl_error_set(CL_EIO, "no address for %s", a->host);
        for (struct addrinfo *ai = res; ai && rc < 0; ai = ai->ai_next)
            rc = connect_within(ai->ai_family, ai->ai_addr, ai->ai_addrlen, deadline, fd_out);
        freeaddrinfo(res);
        return rc;
    }
    }
    return cl_error_set(CL_EINVAL, "unknown address kind");
}

/* How much of the answer has been read: the head through the strict
 * HTTP/1.1 parser (the one in front of the enclave's listener), then the
 * body by its framing.  *done once the answer is complete. */
typedef struct probe_answer {
    cl_http_head head;
    bool have_head;
    size_t body_seen; /* Content-Length or until-close bytes after the head */
    cl_chunked chunked;
    size_t chunk_off; /* how far the chunked decoder has got, from the buffer's start */
} probe_answer;

CL_MUST_CHECK static int probe_answer_feed(probe_answer *a, const uint8_t *buf, size_t len, size_t cap, bool *done)
{
    *done = false;
    if (!a->have_head) {
        bool complete;
        static const cl_slice get = {(const uint8_t *)"GET", 3};
        CL_TRY(cl_http_parse_response(buf, len, cap, get, &a->head, &complete));
        if (!complete)
            return CL_OK;
        a->have_head = true;
        a->chunk_off = a->head.head_len;
    }
    switch (a->head.body) {
    case CL_HTTP_BODY_NONE: *done = true; break;
    case CL_HTTP_BODY_LENGTH:
        a->body_seen = len - a->head.head_len;
        *done = a->body_seen >= a->head.content_length;
        break;
    case CL_HTTP_BODY_CHUNKED:
        while (!a->chunked.done && a->chunk_off < len) {
            size_t consumed = 0, data_off = 0, data_len = 0;
            CL_TRY(cl_chunked_next(&a->chunked, buf + a->chunk_off, len - a->chunk_off, &consumed, &data_off,
                                   &data_len));
            if (consumed == 0)
                break;
            a->chunk_off += consumed;
        }
        *done = a->chunked.done;
        break;
    default: a->body_seen = len - a->head.head_len; break; /* until the server closes */
    }
    return CL_OK;
}

/* GET path; healthy on any status below 500.  The response is read to its
 * end (Content-Length, the last chunk, or EOF; 64 KiB at most) so that the
 * enclave's server does not see the connection torn down mid-answer.  The
 * head must be whole and well-formed: a malformed answer is a failed check. */
static int probe_http(cl_watchdog *w, int fd, uint64_t deadline)
{
    char req[HTTP_PATH_MAX + 512];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: cloister-watchdog\r\nAccept: */*\r\n"
                     "Connection: close\r\n\r\n",
                     w->probe_path, w->probe_host);
    size_t off = 0;
    while (off < (size_t)n) {
        CL_TRY(wait_fd(fd, POLLOUT, deadline, "sending the request"));
        ssize_t s = send(fd, req + off, (size_t)n - off, MSG_NOSIGNAL);
        if (s < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        CL_ENSURE(s > 0, CL_EIO, "sending the request: %s", strerror(errno));
        off += (size_t)s;
    }
    static const size_t cap = 65536;
    uint8_t *resp = malloc(cap);
    probe_answer *a = calloc(1, sizeof *a);
    int rc = CL_OK;
    if (!resp || !a)
        CL_FAIL_OUT(CL_ENOMEM, "out of memory");
    size_t len = 0;
    for (;;) {
        bool done;
        rc = probe_answer_feed(a, resp, len, cap, &done);
        if (rc < 0) {
            rc = cl_error_prefix(CL_EPROTO, "the answer is not HTTP/1.x: ");
            goto out;
        }
        if (done || len == cap)
            break; /* complete, or enough of it */
        int wr = wait_fd(fd, POLLIN, deadline, "waiting for the response");
        if (wr < 0) {
            if (a->have_head)
                break; /* the status is what counts */
            rc = wr; /* the message is set */
            goto out;
        }
        ssize_t r = recv(fd, resp + len, cap - len, 0);
        if (r < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (r < 0 && a->have_head)
            break;
        if (r < 0)
            CL_FAIL_OUT(CL_EIO, "reading the response: %s", strerror(errno));
        if (r == 0) {
            if (a->have_head)
                break;
            CL_FAIL_OUT(CL_EPROTO, len ? "the response ended inside its head" : "connection closed without a response");
        }
        len += (size_t)r;
    }
    if (a->head.status < 100 || a->head.status >= 500)
        CL_FAIL_OUT(CL_EPROTO, "HTTP %d", a->head.status);
out:
    free(resp);
    free(a);
    return rc;
}

/* One probe; on failure the message says why. */
static int probe(cl_watchdog *w)
{
    uint64_t deadline = cl_monotonic_ms() + w->cfg.health_timeout_ms;
    int fd = -1;
    int rc = probe_connect(&w->probe_addr, deadline, &fd);
    if (rc == CL_OK && w->probe_http)
        rc = probe_http(w, fd, deadline);
    if (fd >= 0)
        close(fd);
    return rc;
}

/* ---- the local runner ------------------------------------------------------------------- */

static void emit_lines(line_reader *r, bool flush_all)
{
    size_t start = 0;
    for (size_t i = 0; i < r->len; i++) {
        if (r->buf[i] == '\n') {
            cl_log_passthrough(r->stream, r->buf + start, i - start);
            start = i + 1;
        }
    }
    if (start == 0 && r->len == sizeof r->buf) { /* longer than the buffer: in pieces */
        cl_log_passthrough(r->stream, r->buf, r->len);
        start = r->len;
    }
    if (flush_all && start < r->len) {
        cl_log_passthrough(r->stream, r->buf + start, r->len - start);
        start = r->len;
    }
    memmove(r->buf, r->buf + start, r->len - start);
    r->len -= start;
}

static void reader_close(line_reader *r)
{
    if (r->fd >= 0) {
        emit_lines(r, true);
        close(r->fd);
        r->fd = -1;
    }
}

static void reader_pump(line_reader *r)
{
    for (;;) {
        ssize_t got = read(r->fd, r->buf + r->len, sizeof r->buf - r->len);
        if (got > 0) {
            r->len += (size_t)got;
            emit_lines(r, false);
            continue;
        }
        if (got < 0 && errno == EINTR)
            continue;
        if (got == 0 || errno != EAGAIN)
            reader_close(r);
        return;
    }
}

static int local_start(cl_watchdog *w, char *reason, size_t reason_len)
{
    int out_p[2] = {-1, -1}, err_p[2] = {-1, -1};
    if (pipe2(out_p, O_CLOEXEC | O_NONBLOCK) < 0 || pipe2(err_p, O_CLOEXEC | O_NONBLOCK) < 0) {
        snprintf(reason, reason_len, "pipe: %s", strerror(errno));
        for (int i = 0; i < 2; i++) {
            if (out_p[i] >= 0)
                close(out_p[i]);
            if (err_p[i] >= 0)
                close(err_p[i]);
        }
        return CL_EIO;
    }
    char *argv[] = {"/bin/sh", "-c", w->command, NULL};
    /* die_with_parent: a watchdog killed outright must not leave its
     * enclave running (the watchdog thread, which forks this, lives until
     * the end); the pipes' write ends are made blocking for the child */
    cl_process_spec spec = {.program = "/bin/sh", .argv = argv, .own_group = true, .die_with_parent = true,
                            .stdout_fd = out_p[1], .stderr_fd = err_p[1]};
    pid_t pid;
    int rc = cl_process_spawn(&spec, &pid);
    close(out_p[1]);
    close(err_p[1]);
    if (rc < 0) {
        close(out_p[0]);
        close(err_p[0]);
        snprintf(reason, reason_len, "%s", cl_error_message());
        return rc;
    }
    w->child = pid;
    w->child_exited = false;
#ifdef SYS_pidfd_open
    w->child_pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
#else
    w->child_pidfd = -1;
#endif
    w->out = (line_reader){.fd = out_p[0], .stream = "enclave.stdout"};
    w->err = (line_reader){.fd = err_p[0], .stream = "enclave.stderr"};
    pthread_mutex_lock(&w->lock);
    w->status.pid = pid;
    pthread_mutex_unlock(&w->lock);
    char pid_text[24];
    fmt_u64(pid_text, (uint64_t)pid);
    cl_log(CL_LOG_INFO, "enclave_started", "runner", "local", "pid", pid_text, "command", w->command, NULL);
    return CL_OK;
}

/* Reaps the child if it has exited; true (and how, in reason) when it has. */
static bool local_reap(cl_watchdog *w, char *reason, size_t reason_len)
{
    if (w->child <= 0 || w->child_exited)
        return true;
    int status;
    bool exited;
    int r = cl_process_wait(w->child, 0, &exited, &status);
    if (r == CL_OK && !exited)
        return false;
    char how[48];
    if (r == CL_OK)
        cl_process_status_text(status, how, sizeof how);
    else
        snprintf(how, sizeof how, "lost: %s", cl_error_message());
    snprintf(reason, reason_len, "exited (%s)", how);
    w->child_exited = true;
    char pid_text[24];
    fmt_u64(pid_text, (uint64_t)w->child);
    cl_log(CL_LOG_INFO, "enclave_exited", "runner", "local", "pid", pid_text, "status", how, NULL);
    if (w->child_pidfd >= 0)
        close(w->child_pidfd);
    w->child_pidfd = -1;
    /* w->child stays set: the process group may still have members */
    return true;
}

/* Waits for output, the child's exit or a stop request, up to deadline. */
static void local_wait(cl_watchdog *w, uint64_t deadline)
{
    uint64_t now = cl_monotonic_ms();
    struct pollfd pfd[4];
    nfds_t n = 0;
    pfd[n++] = (struct pollfd){.fd = w->wake[0], .events = POLLIN};
    if (w->out.fd >= 0)
        pfd[n++] = (struct pollfd){.fd = w->out.fd, .events = POLLIN};
    if (w->err.fd >= 0)
        pfd[n++] = (struct pollfd){.fd = w->err.fd, .events = POLLIN};
    if (w->child_pidfd >= 0)
        pfd[n++] = (struct pollfd){.fd = w->child_pidfd, .events = POLLIN};
    uint64_t left = deadline > now ? deadline - now : 0;
    if (w->child_pidfd < 0 && left > 100)
        left = 100; /* no pidfd: notice an exit by polling waitpid */
    int r = poll(pfd, n, (int)left);
    if (r <= 0)
        return;
    if (pfd[0].revents) {
        char drain[64];
        while (read(w->wake[0], drain, sizeof drain) > 0)
            ;
    }
    if (w->out.fd >= 0)
        reader_pump(&w->out);
    if (w->err.fd >= 0)
        reader_pump(&w->err);
}

/* Whether a live (not zombie) process is in the group.  Orphaned members are
 * reaped by init, maybe slowly (zombies still count for kill(-pgid, 0)), so
 * /proc is read when it can be. */
static bool group_alive(pid_t pgid)
{
    DIR *proc = opendir("/proc");
    if (!proc)
        return kill(-pgid, 0) == 0 || errno == EPERM;
    bool alive = false;
    struct dirent *d;
    while (!alive && (d = readdir(proc)) != NULL) {
        if (d->d_name[0] < '1' || d->d_name[0] > '9')
            continue;
        char path[300], stat[512];
        snprintf(path, sizeof path, "/proc/%s/stat", d->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t n = read(fd, stat, sizeof stat - 1);
        close(fd);
        if (n <= 0)
            continue;
        stat[n] = '\0';
        /* "pid (comm) S ppid pgrp ...": comm may hold anything, up to the last ')' */
        char *rp = strrchr(stat, ')');
        char state;
        long ppid, pgrp;
        if (rp && sscanf(rp + 1, " %c %ld %ld", &state, &ppid, &pgrp) == 3)
            alive = pgrp == (long)pgid && state != 'Z' && state != 'X';
    }
    closedir(proc);
    return alive;
}

/* SIGTERM to the process group, SIGKILL after the grace period; the group's
 * other members (the leader may already be gone) get the same treatment. */
static void local_terminate(cl_watchdog *w)
{
    if (w->child <= 0)
        return;
    pid_t pgid = w->child;
    char reason[64];
    kill(-pgid, SIGTERM);
    uint64_t deadline = cl_monotonic_ms() + w->cfg.stop_grace_ms;
    bool reaped = local_reap(w, reason, sizeof reason);
    while (!reaped && cl_monotonic_ms() < deadline) {
        local_wait(w, deadline < cl_monotonic_ms() + 50 ? deadline : cl_monotonic_ms() + 50);
        reaped = local_reap(w, reason, sizeof reason);
    }
    if (!reaped) {
        char pid_text[24];
        fmt_u64(pid_text, (uint64_t)pgid);
        cl_log(CL_LOG_WARN, "enclave_kill", "runner", "local", "pid", pid_text, "reason", "did not stop in time",
               NULL);
        cl_process_stop(pgid, 0, NULL); /* straight to SIGKILL: the grace has passed */
        w->child_exited = true;
        if (w->child_pidfd >= 0)
            close(w->child_pidfd);
        w->child_pidfd = -1;
    }
    /* what else was in the group (not our children: only signals reach them) */
    while (group_alive(pgid) && cl_monotonic_ms() < deadline) {
        nanosleep(&(struct timespec){0, 20000000}, NULL);
    }
    if (group_alive(pgid))
        kill(-pgid, SIGKILL);
    /* output written until the end */
    for (int i = 0; i < 20 && (w->out.fd >= 0 || w->err.fd >= 0); i++)
        local_wait(w, cl_monotonic_ms() + 10);
    reader_close(&w->out);
    reader_close(&w->err);
    w->child = 0;
    pthread_mutex_lock(&w->lock);
    w->status.pid = 0;
    pthread_mutex_unlock(&w->lock);
}

/* ---- the nitro-cli runner ---------------------------------------------------------------- */

static void set_enclave_status(cl_watchdog *w)
{
    pthread_mutex_lock(&w->lock);
    if (w->have_enclave) {
        snprintf(w->status.enclave_id, sizeof w->status.enclave_id, "%s", w->enclave.id);
        w->status.pid = w->enclave.process_id;
        w->status.cid = w->enclave.cid;
    } else {
        w->status.enclave_id[0] = '\0';
        w->status.pid = 0;
        w->status.cid = 0;
    }
    pthread_mutex_unlock(&w->lock);
}

static void nitro_terminate_id(cl_watchdog *w, const char *id)
{
    if (cl_nitro_terminate_enclave(&w->cfg.nitro, id) == CL_OK) {
        cl_log(CL_LOG_INFO, "enclave_terminated", "runner", "nitro-cli", "enclave_id", id, NULL);
        return;
    }
    char first[REASON_MAX];
    snprintf(first, sizeof first, "%s", cl_error_message());
    /* gone already (it died, which is often why we are here)? */
    cl_nitro_enclave *list = NULL;
    size_t count = 0;
    bool listed = true;
    if (cl_nitro_describe_enclaves(&w->cfg.nitro, &list, &count) == CL_OK) {
        listed = false;
        for (size_t i = 0; i < count; i++)
            listed |= !strcmp(list[i].id, id);
    }
    free(list);
    if (!listed)
        cl_log(CL_LOG_INFO, "enclave_terminated", "runner", "nitro-cli", "enclave_id", id, "detail",
               "no longer listed by describe-enclaves", NULL);
    else
        cl_log(CL_LOG_ERROR, "enclave_terminate_failed", "runner", "nitro-cli", "enclave_id", id, "error", first,
               NULL);
}

static void nitro_terminate(cl_watchdog *w)
{
    if (!w->have_enclave)
        return;
    nitro_terminate_id(w, w->enclave.id);
    w->have_enclave = false;
    set_enclave_status(w);
}

/* The EnclaveName nitro-cli gives ours: --enclave-name, or the EIF's file
 * name as nitro-cli derives it. */
static void expected_name(const cl_watchdog *w, char *out, size_t len)
{
    if (w->cfg.run.enclave_name) {
        snprintf(out, len, "%s", w->cfg.run.enclave_name);
        return;
    }
    cl_nitro_default_name(w->cfg.run.eif_path, out, len);
}

/* An enclave of ours left over from a run that was not stopped cleanly (same
 * name) is terminated before starting another; another enclave holding our
 * CID is only reported (run-enclave will say why it fails). */
static void nitro_clear_stale(cl_watchdog *w)
{
    cl_nitro_enclave *list = NULL;
    size_t count = 0;
    if (cl_nitro_describe_enclaves(&w->cfg.nitro, &list, &count) < 0) {
        cl_log(CL_LOG_WARN, "describe_failed", "runner", "nitro-cli", "error", cl_error_message(), NULL);
        return;
    }
    char name[CL_NITRO_NAME_MAX];
    expected_name(w, name, sizeof name);
    for (size_t i = 0; i < count; i++) {
        char cid[24];
        fmt_u64(cid, list[i].cid);
        if (name[0] && !strcmp(list[i].name, name)) {
            cl_log(CL_LOG_WARN, "stale_enclave", "runner", "nitro-cli", "enclave_id", list[i].id, "name",
                   list[i].name, "cid", cid, "state", list[i].state, "action", "terminate", NULL);
            nitro_terminate_id(w, list[i].id);
        } else if (w->cfg.run.enclave_cid && list[i].cid == w->cfg.run.enclave_cid) {
            cl_log(CL_LOG_WARN, "cid_in_use", "runner", "nitro-cli", "enclave_id", list[i].id, "name", list[i].name,
                   "cid", cid, NULL);
        }
    }
    free(list);
}

static int nitro_start(cl_watchdog *w, char *reason, size_t reason_len)
{
    nitro_clear_stale(w);
    cl_nitro_enclave e;
    if (cl_nitro_run_enclave(&w->cfg.nitro, &w->cfg.run, &e) < 0) {
        snprintf(reason, reason_len, "start failed: %s", cl_error_message());
        return CL_EIO;
    }
    w->enclave = e;
    w->have_enclave = true;
    set_enclave_status(w);
    char pid[24], cid[24], cpus[24], mem[24];
    fmt_u64(pid, (uint64_t)e.process_id);
    fmt_u64(cid, e.cid);
    fmt_u64(cpus, e.cpu_count);
    fmt_u64(mem, e.memory_mib);
    cl_log(CL_LOG_INFO, "enclave_started", "runner", "nitro-cli", "enclave_id", e.id, "name", e.name, "cid", cid,
           "process_id", pid, "cpus", cpus, "memory_mib", mem, NULL);
    return CL_OK;
}

/* 1: alive (RUNNING), 0: dead (reason says why), negative: could not tell. */
static int nitro_alive(cl_watchdog *w, char *reason, size_t reason_len)
{
    cl_nitro_enclave *list = NULL;
    size_t count = 0;
    int rc = cl_nitro_describe_enclaves(&w->cfg.nitro, &list, &count);
    if (rc < 0)
        return rc;
    int alive = 0;
    snprintf(reason, reason_len, "enclave %s no longer listed by describe-enclaves", w->enclave.id);
    for (size_t i = 0; i < count; i++) {
        if (strcmp(list[i].id, w->enclave.id) != 0)
            continue;
        if (!strcmp(list[i].state, "RUNNING"))
            alive = 1;
        else
            snprintf(reason, reason_len, "enclave %s is %s", w->enclave.id, list[i].state);
    }
    free(list);
    return alive;
}

/* ---- supervision ---------------------------------------------------------------------- */

enum outcome { OUTCOME_STOP, OUTCOME_FAILED };

/* Watches a started enclave until it dies, turns unhealthy, or a stop is
 * requested.  Moves STARTING -> RUNNING on the first good check. */
static enum outcome supervise(cl_watchdog *w, char *reason, size_t reason_len)
{
    bool has_probe = w->probe_http || w->probe_connect;
    unsigned failures = 0;
    uint64_t next_check = cl_monotonic_ms();
    if (!has_probe)
        set_state(w, CL_ENCLAVE_RUNNING, "started (no health check configured)");
    else
        next_check += w->cfg.health_interval_ms < STARTING_PROBE_MS ? w->cfg.health_interval_ms : STARTING_PROBE_MS / 2;
    for (;;) {
        progress(w);
        if (w->cfg.runner == CL_WATCHDOG_LOCAL) {
            local_wait(w, next_check);
            if (local_reap(w, reason, reason_len))
                return stop_requested(w) ? OUTCOME_STOP : OUTCOME_FAILED;
        } else if (sleep_until(w, next_check)) {
            return OUTCOME_STOP;
        }
        if (stop_requested(w))
            return OUTCOME_STOP;
        uint64_t now = cl_monotonic_ms();
        if (now < next_check)
            continue;
        bool starting = cl_watchdog_state(w) == CL_ENCLAVE_STARTING;
        char why[WHY_MAX];
        int ok = CL_OK;
        if (w->cfg.runner == CL_WATCHDOG_NITRO_CLI) {
            int alive = nitro_alive(w, reason, reason_len);
            if (alive == 0)
                return OUTCOME_FAILED;
            if (alive < 0) {
                ok = alive;
                snprintf(why, sizeof why, "describe-enclaves: %s", cl_error_message());
            }
        }
        if (ok == CL_OK && has_probe) {
            ok = probe(w);
            if (ok < 0)
                snprintf(why, sizeof why, "%s", cl_error_message());
        }
        if (stop_requested(w))
            return OUTCOME_STOP;
        now = cl_monotonic_ms();
        if (ok == CL_OK) {
            if (starting) {
                set_state(w, CL_ENCLAVE_RUNNING, "healthy");
            } else if (failures > 0) {
                char n[24];
                fmt_u64(n, failures);
                cl_log(CL_LOG_INFO, "health_check_recovered", "after_failures", n, NULL);
            }
            failures = 0;
        } else if (starting) {
            cl_log(CL_LOG_DEBUG, "health_check_failed", "state", "starting", "error", why, NULL);
            if (now - w->started_ms >= w->cfg.start_timeout_ms) {
                snprintf(reason, reason_len, "not healthy within the start timeout of %u ms (last: %s)",
                         w->cfg.start_timeout_ms, why);
                return OUTCOME_FAILED;
            }
        } else {
            failures++;
            char n[24], of[24];
            fmt_u64(n, failures);
            fmt_u64(of, w->cfg.health_failures);
            cl_log(CL_LOG_WARN, "health_check_failed", "failures", n, "of", of, "error", why, NULL);
            if (failures >= w->cfg.health_failures) {
                snprintf(reason, reason_len, "unhealthy: %u consecutive failed health checks (last: %s)", failures,
                         why);
                return OUTCOME_FAILED;
            }
        }
        bool still_starting = cl_watchdog_state(w) == CL_ENCLAVE_STARTING;
        unsigned period = still_starting && w->cfg.health_interval_ms > STARTING_PROBE_MS ? STARTING_PROBE_MS
                                                                                          : w->cfg.health_interval_ms;
        next_check = now + period;
    }
}

static int start_enclave(cl_watchdog *w, char *reason, size_t reason_len)
{
    w->started_ms = cl_monotonic_ms();
    return w->cfg.runner == CL_WATCHDOG_LOCAL ? local_start(w, reason, reason_len)
                                              : nitro_start(w, reason, reason_len);
}

static bool enclave_present(const cl_watchdog *w)
{
    return w->cfg.runner == CL_WATCHDOG_LOCAL ? w->child > 0 : w->have_enclave;
}

/* POST drain_path; the status, or a negative error. */
static int drain_request(cl_watchdog *w)
{
    uint64_t deadline = cl_monotonic_ms() + w->cfg.health_timeout_ms;
    int fd = -1;
    CL_TRY(probe_connect(&w->drain_addr, deadline, &fd));
    char req[HTTP_PATH_MAX + 256];
    int n = snprintf(req, sizeof req,
                     "POST %s HTTP/1.1\r\nHost: localhost\r\nUser-Agent: cloister-watchdog\r\nContent-Length: 0\r\n"
                     "Connection: close\r\n\r\n",
                     w->drain_path);
    int rc = CL_OK;
    size_t off = 0;
    while (rc == CL_OK && off < (size_t)n) {
        rc = wait_fd(fd, POLLOUT, deadline, "sending the drain request");
        ssize_t s = rc == CL_OK ? send(fd, req + off, (size_t)n - off, MSG_NOSIGNAL) : 0;
        if (rc == CL_OK && s < 0 && errno != EINTR && errno != EAGAIN)
            rc = cl_error_set(CL_EIO, "sending the drain request: %s", strerror(errno));
        off += s > 0 ? (size_t)s : 0;
    }
    char head[64] = "";
    size_t got = 0;
    while (rc == CL_OK && got < 12) {
        rc = wait_fd(fd, POLLIN, deadline, "waiting for the drain answer");
        ssize_t r = rc == CL_OK ? recv(fd, head + got, sizeof head - 1 - got, 0) : 0;
        if (rc == CL_OK && r == 0)
            rc = cl_error_set(CL_EPROTO, "the connection closed without an answer");
        got += r > 0 ? (size_t)r : 0;
    }
    close(fd);
    CL_TRY(rc);
    CL_ENSURE(!strncmp(head, "HTTP/1.", 7) && head[8] == ' ', CL_EPROTO, "the answer is not HTTP/1.x");
    return atoi(head + 9);
}

static bool enclave_alive_now(cl_watchdog *w)
{
    char reason[REASON_MAX];
    if (w->cfg.runner == CL_WATCHDOG_LOCAL)
        return !local_reap(w, reason, sizeof reason);
    return nitro_alive(w, reason, sizeof reason) != 0;
}

/* Asks the enclave to drain and waits for it to end by itself. */
static void drain_enclave(cl_watchdog *w)
{
    if (!w->drain || !enclave_present(w) || (w->cfg.runner == CL_WATCHDOG_LOCAL && w->child_exited))
        return;
    int status = drain_request(w);
    char st[24];
    snprintf(st, sizeof st, "%d", status);
    if (status < 0 || status >= 300) {
        cl_log(CL_LOG_WARN, "enclave_drain_refused", "runner", runner_name(w), "path", w->drain_path, "status",
               status < 0 ? "-" : st, "error", status < 0 ? cl_error_message() : "not 2xx", "action", "terminating",
               NULL);
        return;
    }
    char wait_ms[24];
    fmt_u64(wait_ms, w->cfg.drain_wait_ms);
    cl_log(CL_LOG_INFO, "enclave_draining", "runner", runner_name(w), "status", st, "wait_ms", wait_ms, NULL);
    uint64_t deadline = cl_monotonic_ms() + w->cfg.drain_wait_ms;
    while (cl_monotonic_ms() < deadline) {
        if (!enclave_alive_now(w)) {
            cl_log(CL_LOG_INFO, "enclave_drained", "runner", runner_name(w), NULL);
            return;
        }
        if (w->cfg.runner == CL_WATCHDOG_LOCAL)
            local_wait(w, cl_monotonic_ms() + 100 < deadline ? cl_monotonic_ms() + 100 : deadline);
        else
            nanosleep(&(struct timespec){0, 500000000}, NULL);
    }
    cl_log(CL_LOG_WARN, "enclave_drain_timeout", "runner", runner_name(w), "wait_ms", wait_ms, NULL);
}

static void terminate_enclave(cl_watchdog *w)
{
    drain_enclave(w);
    if (w->cfg.runner == CL_WATCHDOG_LOCAL)
        local_terminate(w);
    else
        nitro_terminate(w);
}

/* Counts restarts in the window; false when the budget is spent. */
static bool budget_allows(cl_watchdog *w, uint64_t now)
{
    unsigned budget = w->cfg.restart_budget;
    if (budget == 0)
        return false;
    unsigned kept = 0;
    for (unsigned i = 0; i < w->restart_count; i++)
        if (now - w->restart_times[i] < w->cfg.restart_window_ms)
            w->restart_times[kept++] = w->restart_times[i];
    w->restart_count = kept;
    return kept < budget;
}

static void finish(cl_watchdog *w, int result, const char *msg)
{
    /* the descriptor first: whoever cl_watchdog_wait() releases may poll it */
    char byte = 1;
    ssize_t ignored = write(w->done[1], &byte, 1);
    (void)ignored;
    pthread_mutex_lock(&w->lock);
    w->result = result;
    snprintf(w->result_msg, sizeof w->result_msg, "%s", msg);
    w->finished = true;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

static void *watchdog_thread(void *arg)
{
    cl_watchdog *w = arg;
    unsigned backoff = w->cfg.backoff_initial_ms;
    char reason[REASON_MAX];
    bool first = true;
    for (;;) {
        if (stop_requested(w))
            break;
        set_state(w, CL_ENCLAVE_STARTING, first ? "start" : "restart");
        first = false;
        if (start_enclave(w, reason, sizeof reason) == CL_OK) {
            if (supervise(w, reason, sizeof reason) == OUTCOME_STOP)
                break;
            set_state(w, CL_ENCLAVE_TERMINATING, reason);
            terminate_enclave(w);
        } else {
            cl_log(CL_LOG_ERROR, "enclave_start_failed", "runner", runner_name(w), "error", reason, NULL);
        }
        if (stop_requested(w))
            break;
        uint64_t now = cl_monotonic_ms();
        if (!budget_allows(w, now)) {
            char msg[REASON_MAX + 128];
            snprintf(msg, sizeof msg, "restart budget exhausted: %u restarts within %u s (last failure: %s)",
                     w->cfg.restart_budget, w->cfg.restart_window_ms / 1000, reason);
            set_state(w, CL_ENCLAVE_FAILED, msg);
            finish(w, CL_EIO, msg);
            return NULL;
        }
        if (now - w->started_ms >= w->cfg.stable_after_ms)
            backoff = w->cfg.backoff_initial_ms;
        char delay[64];
        snprintf(delay, sizeof delay, "restart in %u ms", backoff);
        set_state(w, CL_ENCLAVE_BACKOFF, delay);
        if (sleep_until(w, cl_monotonic_ms() + backoff))
            break;
        w->restart_times[w->restart_count++] = cl_monotonic_ms();
        pthread_mutex_lock(&w->lock);
        w->status.restarts++;
        pthread_mutex_unlock(&w->lock);
        backoff = backoff > w->cfg.backoff_max_ms / 2 ? w->cfg.backoff_max_ms : backoff * 2;
    }
    if (enclave_present(w)) {
        set_state(w, CL_ENCLAVE_TERMINATING, "stop requested");
        terminate_enclave(w);
    }
    set_state(w, CL_ENCLAVE_STOPPED, "stop requested");
    finish(w, CL_OK, "stopped");
    return NULL;
}

/* ---- configuration and lifetime ------------------------------------------------------ */

/* "ADDR,PATH" of flag into addr, path (HTTP_PATH_MAX) and a Host header
 * value (CL_ADDRESS_HOST_MAX + 16). */
static int parse_addr_path(const char *text, const char *flag, cl_address *addr_out, char *path_out, char *host_out)
{
    const char *comma = NULL;
    for (const char *p = strstr(text, ",/"); p; p = strstr(p + 1, ",/"))
        comma = p;
    CL_ENSURE(comma, CL_EINVAL, "%s %s: expected ADDR,PATH (e.g. unix:/run/enclave.sock,/enclave)", flag, text);
    size_t addr_len = (size_t)(comma - text);
    char addr[CL_ADDRESS_PATH_MAX + CL_ADDRESS_HOST_MAX + 16];
    CL_ENSURE(addr_len < sizeof addr, CL_EINVAL, "%s: address too long", flag);
    memcpy(addr, text, addr_len);
    addr[addr_len] = '\0';
    int rc = cl_address_parse(addr, addr_out);
    if (rc < 0)
        return cl_error_prefix(rc, "%s: ", flag);
    const char *path = comma + 1;
    CL_ENSURE(strlen(path) < HTTP_PATH_MAX, CL_EINVAL, "%s: path longer than %d bytes", flag, HTTP_PATH_MAX - 1);
    for (const char *p = path; *p; p++)
        CL_ENSURE((unsigned char)*p > ' ' && (unsigned char)*p < 0x7f, CL_EINVAL,
                  "%s: the path may not hold spaces or control characters", flag);
    snprintf(path_out, HTTP_PATH_MAX, "%s", path);
    if (addr_out->kind == CL_ADDR_TCP)
        snprintf(host_out, CL_ADDRESS_HOST_MAX + 16, "%s%s%s:%u", strchr(addr_out->host, ':') ? "[" : "",
                 addr_out->host, strchr(addr_out->host, ':') ? "]" : "", addr_out->port);
    else
        snprintf(host_out, CL_ADDRESS_HOST_MAX + 16, "localhost");
    return CL_OK;
}

static int parse_health(cl_watchdog *w)
{
    const cl_watchdog_config *c = &w->cfg;
    CL_ENSURE(!(c->health_url && c->health_connect), CL_EINVAL,
              "--health-url and --health-connect exclude each other");
    if (c->health_connect) {
        int rc = cl_address_parse(c->health_connect, &w->probe_addr);
        if (rc < 0)
            return cl_error_prefix(rc, "--health-connect: ");
        w->probe_connect = true;
    }
    if (c->health_url) {
        CL_TRY(parse_addr_path(c->health_url, "--health-url", &w->probe_addr, w->probe_path, w->probe_host));
        w->probe_http = true;
    }
    return CL_OK;
}

static int check_config(const cl_watchdog_config *c)
{
    if (c->runner == CL_WATCHDOG_LOCAL) {
        CL_ENSURE(c->command && *c->command, CL_EINVAL, "--enclave-command: empty command");
    } else {
        CL_ENSURE(c->runner == CL_WATCHDOG_NITRO_CLI, CL_EINVAL, "unknown enclave runner %d", c->runner);
        CL_ENSURE(c->run.eif_path && *c->run.eif_path, CL_EINVAL, "--run-enclave-eif: no EIF path");
        CL_ENSURE(c->run.cpu_count > 0, CL_EINVAL, "--cpu-count is required with --run-enclave-eif");
        CL_ENSURE(c->run.memory_mib > 0, CL_EINVAL, "--memory is required with --run-enclave-eif");
        CL_ENSURE(c->run.enclave_cid == 0 || (c->run.enclave_cid >= 4 && c->run.enclave_cid < UINT32_MAX),
                  CL_EINVAL, "--enclave-cid must be at least 4 (0..3 are reserved) and below 4294967295");
    }
    return CL_OK;
}

static void watchdog_free(cl_watchdog *w)
{
    for (int i = 0; i < 2; i++) {
        if (w->wake[i] >= 0)
            close(w->wake[i]);
        if (w->done[i] >= 0)
            close(w->done[i]);
    }
    free(w->command);
    free(w->eif);
    free(w->name);
    free(w->nitro_path);
    free(w->restart_times);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->cond);
    free(w);
}

static int dup_string(const char *s, char **out)
{
    *out = NULL;
    if (!s)
        return CL_OK;
    *out = strdup(s);
    CL_ENSURE(*out, CL_ENOMEM, "out of memory");
    return CL_OK;
}

int cl_watchdog_start(const cl_watchdog_config *cfg, cl_watchdog **out)
{
    *out = NULL;
    CL_TRY(check_config(cfg));
    cl_watchdog *w = calloc(1, sizeof *w);
    CL_ENSURE(w, CL_ENOMEM, "out of memory");
    w->wake[0] = w->wake[1] = w->done[0] = w->done[1] = -1;
    w->child_pidfd = -1;
    w->out.fd = w->err.fd = -1;
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    w->cfg = *cfg;
    cl_watchdog_config *c = &w->cfg;
    /* the strings the thread keeps; health strings are parsed now */
    int rc = CL_OK;
    CL_TRY_OUT(dup_string(cfg->command, &w->command));
    CL_TRY_OUT(dup_string(cfg->run.eif_path, &w->eif));
    CL_TRY_OUT(dup_string(cfg->run.enclave_name, &w->name));
    CL_TRY_OUT(dup_string(cfg->nitro.path, &w->nitro_path));
    c->command = w->command;
    c->run.eif_path = w->eif;
    c->run.enclave_name = w->name;
    c->nitro.path = w->nitro_path;
    CL_TRY_OUT(parse_health(w));
    if (cfg->drain_url) {
        char host[CL_ADDRESS_HOST_MAX + 16];
        rc = parse_addr_path(cfg->drain_url, "--drain-url", &w->drain_addr, w->drain_path, host);
        if (rc < 0)
            goto out;
        w->drain = true;
    }
    c->drain_url = NULL; /* parsed; not kept */
    if (!c->drain_wait_ms)
        c->drain_wait_ms = 40000;
    c->health_url = c->health_connect = NULL; /* parsed; not kept */
    if (!c->stop_grace_ms)
        c->stop_grace_ms = DEFAULT_STOP_GRACE_MS;
    if (!c->health_interval_ms)
        c->health_interval_ms = DEFAULT_HEALTH_INTERVAL_MS;
    if (!c->health_timeout_ms)
        c->health_timeout_ms = DEFAULT_HEALTH_TIMEOUT_MS;
    if (c->health_timeout_ms > c->health_interval_ms)
        c->health_timeout_ms = c->health_interval_ms;
    if (!c->health_failures)
        c->health_failures = DEFAULT_HEALTH_FAILURES;
    if (!c->start_timeout_ms)
        c->start_timeout_ms = DEFAULT_START_TIMEOUT_MS;
    if (!c->restart_budget_set)
        c->restart_budget = DEFAULT_RESTART_BUDGET;
    if (c->restart_budget > MAX_RESTART_BUDGET)
        CL_FAIL_OUT(CL_EINVAL, "--restart-budget: at most %u", MAX_RESTART_BUDGET);
    if (!c->restart_window_ms)
        c->restart_window_ms = DEFAULT_RESTART_WINDOW_MS;
    if (!c->backoff_initial_ms)
        c->backoff_initial_ms = DEFAULT_BACKOFF_INITIAL_MS;
    if (!c->backoff_max_ms)
        c->backoff_max_ms = c->backoff_initial_ms > DEFAULT_BACKOFF_MAX_MS ? c->backoff_initial_ms
                                                                           : DEFAULT_BACKOFF_MAX_MS;
    if (c->backoff_max_ms < c->backoff_initial_ms)
        CL_FAIL_OUT(CL_EINVAL, "--backoff-max (%u ms) is below --backoff-initial (%u ms)", c->backoff_max_ms,
                    c->backoff_initial_ms);
    if (!c->stable_after_ms)
        c->stable_after_ms = DEFAULT_STABLE_AFTER_MS;
    w->restart_times = calloc(c->restart_budget + 1, sizeof *w->restart_times);
    if (!w->restart_times)
        CL_FAIL_OUT(CL_ENOMEM, "out of memory");
    if (pipe2(w->wake, O_CLOEXEC | O_NONBLOCK) < 0 || pipe2(w->done, O_CLOEXEC | O_NONBLOCK) < 0)
        CL_FAIL_OUT(CL_EIO, "pipe: %s", strerror(errno));
    w->status.state = CL_ENCLAVE_STOPPED;
    w->status.progress_ms = cl_monotonic_ms();
    if (pthread_create(&w->thread, NULL, watchdog_thread, w) != 0)
        CL_FAIL_OUT(CL_EIO, "cannot start the watchdog thread");
    w->thread_started = true;
    *out = w;
    return CL_OK;
out:
    watchdog_free(w);
    return rc;
}

void cl_watchdog_stop(cl_watchdog *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    w->stop_requested = true;
    pthread_mutex_unlock(&w->lock);
    char byte = 1;
    ssize_t ignored = write(w->wake[1], &byte, 1);
    (void)ignored;
}

int cl_watchdog_wait(cl_watchdog *w)
{
    pthread_mutex_lock(&w->lock);
    while (!w->finished)
        pthread_cond_wait(&w->cond, &w->lock);
    int rc = w->result;
    char msg[sizeof w->result_msg];
    memcpy(msg, w->result_msg, sizeof msg);
    pthread_mutex_unlock(&w->lock);
    if (rc < 0)
        return cl_error_set(rc, "%s", msg);
    return CL_OK;
}

void cl_watchdog_free(cl_watchdog *w)
{
    if (!w)
        return;
    cl_watchdog_stop(w);
    if (w->thread_started)
        pthread_join(w->thread, NULL);
    watchdog_free(w);
}

void cl_watchdog_notify_systemd(void *ctx, int from, int to, const char *reason)
{
    (void)from;
    cl_watchdog_notifier *n = ctx;
    if (!cl_sd_notify_enabled())
        return;
    char status[512];
    snprintf(status, sizeof status, "STATUS=enclave %s: %s", cl_watchdog_state_name(to), reason);
    if (cl_sd_notify(status) < 0 ||
        (to == CL_ENCLAVE_RUNNING && !atomic_exchange(&n->ready_sent, true) && cl_sd_notify("READY=1") < 0))
        cl_log(CL_LOG_WARN, "sd_notify_failed", "error", cl_error_message(), NULL);
}

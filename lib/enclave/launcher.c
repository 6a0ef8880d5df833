#include "cloister/enclave/launcher.h"

#include "cloister/core/clock.h"
#include "cloister/core/cursor.h"
#include "cloister/core/log.h"
#include "cloister/core/process.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define PROTO_VERSION 1
static const uint8_t request_magic[4] = {'C', 'L', 'L', 'Q'};
static const uint8_t event_magic[4] = {'C', 'L', 'L', 'E'};

/* ---- the wire format ---------------------------------------------------- */

void cl_launcher_request_encode(int type, uint8_t out[CL_LAUNCHER_MSG_LEN])
{
    memset(out, 0, CL_LAUNCHER_MSG_LEN);
    memcpy(out, request_magic, sizeof request_magic);
    out[4] = PROTO_VERSION;
    out[5] = (uint8_t)type;
}

static int expect_zeros(cl_cursor *c, size_t n, size_t offset, const char *what)
{
    const uint8_t *z;
    CL_TRY(cl_cursor_bytes(c, n, &z));
    for (size_t i = 0; i < n; i++)
        CL_ENSURE(z[i] == 0, CL_EPARSE, "%s byte %zu is %u, not 0", what, offset + i, z[i]);
    return CL_OK;
}

/* The head both directions share: the magic (4 bytes), the version, the type. */
static int parse_head(cl_cursor *c, const uint8_t magic_want[4], const char *what, uint8_t *type)
{
    const uint8_t *magic;
    uint8_t version;
    CL_TRY(cl_cursor_bytes(c, 4, &magic));
    CL_ENSURE(!memcmp(magic, magic_want, 4), CL_EPARSE, "not a launcher %s (magic)", what);
    CL_TRY(cl_cursor_u8(c, &version));
    CL_ENSURE(version == PROTO_VERSION, CL_EPARSE, "%s version %u (only %d)", what, version, PROTO_VERSION);
    return cl_cursor_u8(c, type);
}

int cl_launcher_request_parse(const uint8_t *data, size_t len, int *type)
{
    *type = 0;
    CL_ENSURE(len == CL_LAUNCHER_MSG_LEN, CL_EPARSE, "a request of %zu bytes (every request is %d)", len,
              CL_LAUNCHER_MSG_LEN);
    cl_cursor c = cl_cursor_make(data, len);
    uint8_t t;
    CL_TRY(parse_head(&c, request_magic, "request", &t));
    CL_ENSURE(t == CL_LAUNCHER_START || t == CL_LAUNCHER_STOP, CL_EPARSE, "unknown request type %u", t);
    CL_TRY(expect_zeros(&c, 10, 6, "request"));
    CL_TRY(cl_cursor_expect_end(&c, "the request"));
    *type = t;
    return CL_OK;
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

void cl_launcher_event_encode(const cl_launcher_event *ev, uint8_t out[CL_LAUNCHER_MSG_LEN])
{
    memset(out, 0, CL_LAUNCHER_MSG_LEN);
    memcpy(out, event_magic, sizeof event_magic);
    out[4] = PROTO_VERSION;
    out[5] = (uint8_t)ev->type;
    put_be32(out + 8, (uint32_t)ev->pid);
    put_be32(out + 12, (uint32_t)ev->status);
}

int cl_launcher_event_parse(const uint8_t *data, size_t len, cl_launcher_event *out)
{
    memset(out, 0, sizeof *out);
    CL_ENSURE(len == CL_LAUNCHER_MSG_LEN, CL_EPARSE, "an event of %zu bytes (every event is %d)", len,
              CL_LAUNCHER_MSG_LEN);
    cl_cursor c = cl_cursor_make(data, len);
    uint8_t t;
    uint32_t pid, status;
    CL_TRY(parse_head(&c, event_magic, "event", &t));
    CL_ENSURE(t == CL_LAUNCHER_STARTED || t == CL_LAUNCHER_EXITED || t == CL_LAUNCHER_FAILED, CL_EPARSE,
              "unknown event type %u", t);
    CL_TRY(expect_zeros(&c, 2, 6, "event"));
    CL_TRY(cl_cursor_be32(&c, &pid));
    CL_TRY(cl_cursor_be32(&c, &status));
    CL_TRY(cl_cursor_expect_end(&c, "the event"));
    CL_ENSURE(t == CL_LAUNCHER_FAILED ? pid == 0 : pid > 0 && pid <= INT32_MAX, CL_EPARSE, "event %u with pid %u",
              t, pid);
    CL_ENSURE(t == CL_LAUNCHER_EXITED || status == 0, CL_EPARSE, "event %u with a status", t);
    out->type = t;
    out->pid = (pid_t)pid;
    out->status = (int)status;
    return CL_OK;
}

/* ---- one message on the socket ------------------------------------------ */

typedef struct received {
    uint8_t msg[CL_LAUNCHER_MSG_LEN];
    size_t len;        /* the whole message's length, also when it was cut */
    bool eof;
    bool truncated;    /* longer than a message, or more ancillary data than fits */
    bool other_control; /* ancillary data other than descriptors */
    int fds[2];
    size_t nfds; /* descriptors kept (close-on-exec); any more were closed */
    size_t fds_sent;
} received;

static void close_received(received *r)
{
    for (size_t i = 0; i < r->nfds; i++)
        close(r->fds[i]);
    r->nfds = 0;
}

/* Reads one message.  Descriptors beyond two are closed at once, so a
 * peer cannot fill our table. */
CL_MUST_CHECK static int recv_one(int fd, received *r)
{
    memset(r, 0, sizeof *r);
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(8 * sizeof(int))];
    } ctl;
    struct iovec iov = {.iov_base = r->msg, .iov_len = sizeof r->msg};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
    ssize_t n;
    do
        n = recvmsg(fd, &mh, MSG_TRUNC | MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return cl_error_set(CL_EIO, "recvmsg: %s", strerror(errno));
    r->len = (size_t)n;
    r->truncated = (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) {
            r->other_control = true;
            continue;
        }
        size_t count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; i++) {
            int got;
            memcpy(&got, CMSG_DATA(cm) + i * sizeof(int), sizeof got);
            r->fds_sent++;
            if (r->nfds < 2)
                r->fds[r->nfds++] = got;
            else
                close(got);
        }
    }
    r->eof = n == 0 && !r->truncated && !r->fds_sent && !r->other_control;
    return CL_OK;
}

CL_MUST_CHECK static int send_msg(int fd, const uint8_t msg[CL_LAUNCHER_MSG_LEN], const int *fds, size_t nfds,
                                  int flags)
{
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(2 * sizeof(int))];
    } ctl;
    struct iovec iov = {.iov_base = (void *)msg, .iov_len = CL_LAUNCHER_MSG_LEN};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds) {
        memset(&ctl, 0, sizeof ctl);
        mh.msg_control = ctl.buf;
        mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(nfds * sizeof(int));
        memcpy(CMSG_DATA(cm), fds, nfds * sizeof(int));
    }
    ssize_t n;
    do
        n = sendmsg(fd, &mh, MSG_NOSIGNAL | flags);
    while (n < 0 && errno == EINTR);
    CL_ENSURE(n == CL_LAUNCHER_MSG_LEN, CL_EIO, "sendmsg: %s", n < 0 ? strerror(errno) : "short");
    return CL_OK;
}

/* ---- the launcher ------------------------------------------------------- */

typedef struct launcher {
    int fd;
    const cl_launcher_config *cfg;
    pid_t app;       /* 0: none */
    bool stopping;   /* SIGTERM sent */
    uint64_t kill_at; /* then SIGKILL at this time */
} launcher;

static void log_pid(int level, const char *event, pid_t pid, const char *key, const char *value)
{
    char text[24];
    snprintf(text, sizeof text, "%d", (int)pid);
    cl_log(level, event, "pid", text, key, value, NULL);
}

static void signal_app(launcher *L, int sig)
{
    kill(-L->app, sig);
    kill(L->app, sig);
}

CL_MUST_CHECK static int start_app(launcher *L)
{
    int out[2], err[2];
    if (pipe2(out, O_CLOEXEC) < 0)
        return cl_error_set(CL_EIO, "pipe: %s", strerror(errno));
    if (pipe2(err, O_CLOEXEC) < 0) {
        int e = errno;
        close(out[0]);
        close(out[1]);
        return cl_error_set(CL_EIO, "pipe: %s", strerror(e));
    }
    char *argv[] = {"/bin/sh", "-c", (char *)L->cfg->command, NULL};
    /* own group: STOP reaches what the shell starts.  The daemon's death
     * reaches us (PDEATHSIG) and we stop that group; if we are killed
     * outright only the shell gets SIGTERM (what it forked does not
     * inherit PDEATHSIG), which on Nitro does not arise: the enclave's
     * end takes every process with it. */
    cl_process_spec spec = {.program = "/bin/sh", .argv = argv, .own_group = true, .die_with_parent = true,
                            .stdout_fd = out[1], .stderr_fd = err[1]};
    pid_t pid = -1;
    int rc = cl_process_spawn(&spec, &pid);
    close(out[1]);
    close(err[1]);
    uint8_t msg[CL_LAUNCHER_MSG_LEN];
    if (rc < 0) {
        close(out[0]);
        close(err[0]);
        cl_log(CL_LOG_ERROR, "launcher_spawn_failed", "error", cl_error_message(), NULL);
        cl_launcher_event_encode(&(cl_launcher_event){.type = CL_LAUNCHER_FAILED}, msg);
        return send_msg(L->fd, msg, NULL, 0, 0);
    }
    L->app = pid;
    L->stopping = false;
    cl_launcher_event_encode(&(cl_launcher_event){.type = CL_LAUNCHER_STARTED, .pid = pid}, msg);
    int fds[2] = {out[0], err[0]};
    rc = send_msg(L->fd, msg, fds, 2, 0);
    close(out[0]);
    close(err[0]);
    return rc;
}

/* Reaps every child; reports the app's exit. */
CL_MUST_CHECK static int reap(launcher *L)
{
    for (;;) {
        int status = 0;
        pid_t p = waitpid(-1, &status, WNOHANG);
        if (p <= 0)
            return CL_OK;
        if (p != L->app)
            continue;
        char how[32];
        cl_process_status_text(status, how, sizeof how);
        log_pid(CL_LOG_DEBUG, "launcher_app_exited", p, "status", how);
        L->app = 0;
        L->stopping = false;
        uint8_t msg[CL_LAUNCHER_MSG_LEN];
        cl_launcher_event_encode(&(cl_launcher_event){.type = CL_LAUNCHER_EXITED, .pid = p, .status = status}, msg);
        CL_TRY(send_msg(L->fd, msg, NULL, 0, 0));
    }
}

/* One request from the daemon; *end_reason set when the daemon is gone.
 * CL_EPROTO: refused, the conversation ends. */
CL_MUST_CHECK static int serve_request(launcher *L, const char **end_reason)
{
    received r;
    CL_TRY(recv_one(L->fd, &r));
    if (r.eof) {
        *end_reason = "the daemon closed the socket";
        return CL_OK;
    }
    size_t sent_fds = r.fds_sent;
    close_received(&r); /* the daemon never sends descriptors */
    CL_ENSURE(!r.truncated, CL_EPROTO, "a request of %zu bytes (every request is %d)%s", r.len, CL_LAUNCHER_MSG_LEN,
              r.len <= CL_LAUNCHER_MSG_LEN ? ", with too much ancillary data" : "");
    CL_ENSURE(!sent_fds && !r.other_control, CL_EPROTO, "a request with ancillary data (%zu descriptors)", sent_fds);
    int type;
    int rc = cl_launcher_request_parse(r.msg, r.len, &type);
    if (rc < 0)
        return cl_error_prefix(CL_EPROTO, "request: ");
    if (type == CL_LAUNCHER_START) {
        CL_ENSURE(L->app == 0, CL_EPROTO, "START while the app (pid %d) runs", (int)L->app);
        return start_app(L);
    }
    /* STOP: the app may have exited just before, its EXITED crossing this */
    if (L->app > 0 && !L->stopping) {
        signal_app(L, SIGTERM);
        L->stopping = true;
        L->kill_at = cl_monotonic_ms() + L->cfg->stop_grace_ms;
    }
    return CL_OK;
}

/* Descriptors 0, 1, 2 and fd stay; the app must inherit nothing else
 * from the daemon. */
static void close_others(int fd)
{
    if (fd > 3)
        close_range(3, (unsigned)fd - 1, 0);
    close_range((unsigned)fd + 1, ~0u, 0);
}

int cl_launcher_run(int fd, const cl_launcher_config *cfg)
{
    CL_ENSURE(cfg->command && *cfg->command, CL_EINVAL, "no command to launch");
    /* exec made us dumpable again: the app, same user, must not trace us
     * (and speak to the daemon in our name) or read our environment */
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
        return cl_error_set(CL_EIO, "prctl(PR_SET_DUMPABLE, 0): %s", strerror(errno));
    if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
        return cl_error_set(CL_EIO, "the launcher's socket (descriptor %d): %s", fd, strerror(errno));
    close_others(fd);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigprocmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0)
        return cl_error_set(CL_EIO, "signalfd: %s", strerror(errno));

    launcher L = {.fd = fd, .cfg = cfg};
    char grace[16];
    snprintf(grace, sizeof grace, "%u", cfg->stop_grace_ms);
    log_pid(CL_LOG_INFO, "launcher_ready", getpid(), "stop_grace_ms", grace);
    const char *end_reason = NULL;
    int rc = CL_OK;
    while (!end_reason && rc == CL_OK) {
        int timeout = -1;
        if (L.app > 0 && L.stopping) {
            uint64_t now = cl_monotonic_ms();
            if (now >= L.kill_at) {
                log_pid(CL_LOG_WARN, "launcher_app_kill", L.app, "reason", "did not stop in time");
                signal_app(&L, SIGKILL);
                L.kill_at = UINT64_MAX; /* once */
            } else if (L.kill_at != UINT64_MAX) {
                timeout = (int)(L.kill_at - now);
            }
        }
        struct pollfd pfd[2] = {{.fd = fd, .events = POLLIN}, {.fd = sfd, .events = POLLIN}};
        int ready = poll(pfd, 2, timeout);
        if (ready < 0 && errno != EINTR) {
            rc = cl_error_set(CL_EIO, "poll: %s", strerror(errno));
            break;
        }
        if (ready <= 0)
            continue;
        if (pfd[1].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
                if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
                    end_reason = si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT";
            }
            rc = reap(&L);
            if (rc < 0)
                end_reason = "the daemon is gone"; /* an EXITED it cannot take */
        }
        if (!end_reason && rc == CL_OK && pfd[0].revents)
            rc = serve_request(&L, &end_reason);
    }
    if (rc == CL_EPROTO)
        cl_log(CL_LOG_ERROR, "launcher_refused", "error", cl_error_message(), "detail",
               "a request outside the protocol: the app is stopped and the launcher exits", NULL);
    else if (rc < 0)
        end_reason = cl_error_message();
    if (L.app > 0) {
        uint64_t now = cl_monotonic_ms();
        unsigned grace = !L.stopping ? cfg->stop_grace_ms : L.kill_at > now ? (unsigned)(L.kill_at - now) : 0;
        int status = 0;
        cl_process_stop(L.app, grace, &status);
        char how[32];
        cl_process_status_text(status, how, sizeof how);
        log_pid(CL_LOG_INFO, "launcher_app_stopped", L.app, "status", how);
    }
    close(sfd);
    cl_log(rc == CL_EPROTO ? CL_LOG_ERROR : CL_LOG_INFO, "launcher_exit", "reason",
           rc == CL_EPROTO ? "refused request" : end_reason, NULL);
    return rc;
}

/* ---- the daemon's side -------------------------------------------------- */

struct cl_launcher {
    int fd;
    pid_t pid;
    atomic_bool gone; /* shut down: no more requests */
    atomic_bool reaped;
};

/* Waits up to wait_ms for the launcher's exit; it is never signalled (the
 * daemon's filter allows kill only to itself). */
static bool reap_launcher(cl_launcher *l, unsigned wait_ms)
{
    if (atomic_load(&l->reaped))
        return true;
    bool exited = false;
    int status = 0;
    if (cl_process_wait(l->pid, (int)wait_ms, &exited, &status) < 0)
        cl_error_clear();
    if (exited)
        atomic_store(&l->reaped, true);
    return exited;
}

int cl_launcher_spawn(const char *program, char *const *argv, const char *const *add_env, cl_launcher **out)
{
    *out = NULL;
    cl_launcher *l = calloc(1, sizeof *l);
    CL_ENSURE(l, CL_ENOMEM, "out of memory");
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
        free(l);
        return cl_error_set(CL_EIO, "socketpair: %s", strerror(errno));
    }
    cl_process_spec spec = {.program = program, .argv = argv, .add_env = add_env, .own_group = true,
                            .die_with_parent = true, .pass_fd = sv[1]};
    int rc = cl_process_spawn(&spec, &l->pid);
    close(sv[1]);
    if (rc < 0) {
        close(sv[0]);
        free(l);
        return rc;
    }
    l->fd = sv[0];
    *out = l;
    return CL_OK;
}

int cl_launcher_fd(const cl_launcher *l)
{
    return l->fd;
}

pid_t cl_launcher_pid(const cl_launcher *l)
{
    return l->pid;
}

void cl_launcher_shutdown(cl_launcher *l)
{
    if (!atomic_exchange(&l->gone, true))
        shutdown(l->fd, SHUT_RDWR);
}

CL_MUST_CHECK static int send_request(cl_launcher *l, int type)
{
    CL_ENSURE(!atomic_load(&l->gone), CL_EIO, "the app launcher (pid %d) is gone", (int)l->pid);
    uint8_t msg[CL_LAUNCHER_MSG_LEN];
    cl_launcher_request_encode(type, msg);
    /* never blocked by the launcher: a full socket means it stopped reading */
    int rc = send_msg(l->fd, msg, NULL, 0, MSG_DONTWAIT);
    if (rc < 0) {
        cl_launcher_shutdown(l);
        return cl_error_prefix(rc, "the app launcher (pid %d): ", (int)l->pid);
    }
    return CL_OK;
}

/* One event, checked against what the protocol allows here. */
CL_MUST_CHECK static int read_event(cl_launcher *l, received *r, cl_launcher_event *ev)
{
    int rc = recv_one(l->fd, r);
    if (rc == CL_OK && r->eof) {
        /* its socket closes as it exits: reap it now, not at our stop */
        reap_launcher(l, 1000);
        rc = cl_error_set(CL_EIO, "the app launcher (pid %d) exited", (int)l->pid);
    }
    else if (rc == CL_OK && (r->truncated || r->other_control))
        rc = cl_error_set(CL_EPROTO, "the app launcher sent a malformed message (%zu bytes)", r->len);
    else if (rc == CL_OK)
        rc = cl_launcher_event_parse(r->msg, r->len, ev);
    if (rc == CL_OK && r->fds_sent != (ev->type == CL_LAUNCHER_STARTED ? 2u : 0u))
        rc = cl_error_set(CL_EPROTO, "the app launcher's event %d came with %zu descriptors", ev->type, r->fds_sent);
    if (rc < 0) {
        close_received(r);
        cl_launcher_shutdown(l);
    }
    return rc;
}

int cl_launcher_start(cl_launcher *l, unsigned timeout_ms, pid_t *pid, int *out_fd, int *err_fd)
{
    *pid = -1;
    *out_fd = *err_fd = -1;
    CL_TRY(send_request(l, CL_LAUNCHER_START));
    struct pollfd pfd = {.fd = l->fd, .events = POLLIN};
    uint64_t deadline = cl_monotonic_ms() + timeout_ms;
    int ready;
    for (;;) {
        uint64_t now = cl_monotonic_ms();
        ready = poll(&pfd, 1, now >= deadline ? 0 : (int)(deadline - now));
        if (ready >= 0 || errno != EINTR)
            break;
    }
    if (ready <= 0) {
        cl_launcher_shutdown(l);
        return cl_error_set(CL_EIO, "the app launcher (pid %d) did not answer START within %u ms", (int)l->pid,
                            timeout_ms);
    }
    received r;
    cl_launcher_event ev;
    CL_TRY(read_event(l, &r, &ev));
    if (ev.type == CL_LAUNCHER_FAILED)
        return cl_error_set(CL_EIO, "the app launcher could not start the app (its event=launcher_spawn_failed "
                                    "line says why)");
    if (ev.type != CL_LAUNCHER_STARTED) {
        cl_launcher_shutdown(l);
        return cl_error_set(CL_EPROTO, "the app launcher answered START with event %d", ev.type);
    }
    *pid = ev.pid;
    *out_fd = r.fds[0];
    *err_fd = r.fds[1];
    return CL_OK;
}

int cl_launcher_stop(cl_launcher *l)
{
    return send_request(l, CL_LAUNCHER_STOP);
}

int cl_launcher_read_exit(cl_launcher *l, pid_t pid, int *status)
{
    received r;
    cl_launcher_event ev;
    CL_TRY(read_event(l, &r, &ev));
    if (ev.type != CL_LAUNCHER_EXITED || ev.pid != pid) {
        close_received(&r);
        cl_launcher_shutdown(l);
        return cl_error_set(CL_EPROTO, "the app launcher sent event %d for pid %d while app %d ran", ev.type,
                            (int)ev.pid, (int)pid);
    }
    *status = ev.status;
    return CL_OK;
}

void cl_launcher_close(cl_launcher *l, unsigned wait_ms)
{
    if (!l)
        return;
    cl_launcher_shutdown(l);
    close(l->fd);
    if (!reap_launcher(l, wait_ms))
        log_pid(CL_LOG_WARN, "launcher_not_exited", l->pid, "detail",
                "still running after the app's stop; its parent-death signal ends it when the daemon exits");
    free(l);
}

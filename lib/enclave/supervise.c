#include "cloister/enclave/supervise.h"

#include "cloister/core/buf.h"
#include "cloister/core/clock.h"
#include "cloister/core/log.h"
#include "cloister/core/process.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

struct cl_child {
    char *name, *command;
    char **env; /* environ plus the extra entries */
    unsigned backoff_initial_ms, backoff_max_ms, stable_after_ms;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool stopping, exited_for_good;
    pid_t pid; /* 0 while not running */
    atomic_uint_fast64_t restarts;
    cl_launcher *launcher; /* NULL: the app is our own child */
};

/* How long START may take: the launcher forks and execs /bin/sh. */
#define LAUNCHER_START_TIMEOUT_MS 10000
/* After the stop's grace the launcher has sent SIGKILL; then its exit
 * takes a moment (wait_ms for cl_launcher_close). */
#define LAUNCHER_EXIT_WAIT_MS 2000

uint64_t cl_child_restarts(const cl_child *c)
{
    return atomic_load(&((cl_child *)c)->restarts);
}

/* Starts the app, writing its pid.  The parent blocks termination signals
 * in every thread; cl_process_spawn gives the app a clean mask. */
CL_MUST_CHECK static int spawn(cl_child *c, int out_fd[2], int err_fd[2], pid_t *pid)
{
    if (c->launcher) {
        out_fd[1] = err_fd[1] = -1;
        return cl_launcher_start(c->launcher, LAUNCHER_START_TIMEOUT_MS, pid, &out_fd[0], &err_fd[0]);
    }
    if (pipe2(out_fd, O_CLOEXEC) < 0)
        return cl_error_set(CL_EIO, "pipe: %s", strerror(errno));
    if (pipe2(err_fd, O_CLOEXEC) < 0) {
        int e = errno;
        close(out_fd[0]);
        close(out_fd[1]);
        return cl_error_set(CL_EIO, "pipe: %s", strerror(e));
    }
    char *argv[] = {"/bin/sh", "-c", c->command, NULL};
    cl_process_spec spec = {.program = "/bin/sh", .argv = argv, .envp = c->env, .own_group = true,
                            .stdout_fd = out_fd[1], .stderr_fd = err_fd[1]};
    int rc = cl_process_spawn(&spec, pid);
    close(out_fd[1]);
    close(err_fd[1]);
    if (rc < 0) {
        close(out_fd[0]);
        close(err_fd[0]);
    }
    return rc;
}

typedef struct line_reader {
    int fd;
    const char *stream;
    char buf[1024];
    size_t len;
} line_reader;

static void emit_lines(line_reader *r, bool flush_all)
{
    size_t start = 0;
    for (size_t i = 0; i < r->len; i++) {
        if (r->buf[i] == '\n') {
            cl_log_passthrough(r->stream, r->buf + start, i - start);
            start = i + 1;
        }
    }
    if (start == 0 && r->len == sizeof r->buf) { /* a line longer than the buffer: pass it on in pieces */
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

/* Passes output through until the child has exited and its pipes are
 * drained; a grandchild that keeps a pipe open does not keep us here.  The
 * exit comes from waitpid, or from the launcher's EXITED event.  false
 * when the status is unknown (the launcher went away). */
static bool pump_output(cl_child *c, line_reader *readers, pid_t pid, int *status)
{
    *status = 0;
    bool exited = false, known = true;
    for (;;) {
        if (!exited && !c->launcher) {
            bool reaped;
            int r = cl_process_wait(pid, 0, &reaped, status);
            exited = r < 0 || reaped; /* an error: nothing left to wait for */
        }
        struct pollfd pfd[3];
        nfds_t n = 0;
        for (int i = 0; i < 2; i++)
            if (readers[i].fd >= 0)
                pfd[n++] = (struct pollfd){.fd = readers[i].fd, .events = POLLIN};
        nfds_t streams = n;
        if (c->launcher && !exited)
            pfd[n++] = (struct pollfd){.fd = cl_launcher_fd(c->launcher), .events = POLLIN};
        if (n == 0)
            break;
        int ready = poll(pfd, n, exited ? 100 : 500);
        if (ready == 0 && exited)
            break;
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (n > streams && pfd[streams].revents) {
            if (cl_launcher_read_exit(c->launcher, pid, status) < 0) {
                cl_log(CL_LOG_ERROR, "app_launcher_lost", "name", c->name, "error", cl_error_message(), NULL);
                known = false;
            }
            exited = true;
        }
        for (nfds_t k = 0; k < streams; k++) {
            if (!pfd[k].revents)
                continue;
            line_reader *r = readers[0].fd == pfd[k].fd ? &readers[0] : &readers[1];
            ssize_t got = read(r->fd, r->buf + r->len, sizeof r->buf - r->len);
            if (got > 0) {
                r->len += (size_t)got;
                emit_lines(r, false);
            } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
                emit_lines(r, true);
                close(r->fd);
                r->fd = -1;
            }
        }
    }
    for (int i = 0; i < 2; i++) {
        if (readers[i].fd >= 0) {
            emit_lines(&readers[i], true);
            close(readers[i].fd);
        }
    }
    bool reaped;
    if (!exited && cl_process_wait(pid, -1, &reaped, status) < 0)
        cl_error_clear(); /* not ours any more: nothing to report but the status we have */
    return known;
}

static void *watch_child(void *arg)
{
    cl_child *c = arg;
    unsigned backoff = c->backoff_initial_ms;
    for (;;) {
        pthread_mutex_lock(&c->lock);
        bool stopping = c->stopping;
        pthread_mutex_unlock(&c->lock);
        if (stopping)
            break;
        int out_fd[2], err_fd[2];
        uint64_t started = cl_monotonic_ms();
        pthread_mutex_lock(&c->lock);
        pid_t pid = -1;
        /* checked again under the lock of the spawn: a stop that came
         * since would see no pid to stop */
        if (c->stopping) {
            pthread_mutex_unlock(&c->lock);
            break;
        }
        int spawned = spawn(c, out_fd, err_fd, &pid);
        if (spawned == CL_OK)
            c->pid = pid;
        pthread_mutex_unlock(&c->lock);
        if (spawned < 0) {
            cl_log(CL_LOG_ERROR, "app_spawn_failed", "name", c->name, "error", cl_error_message(), NULL);
        } else {
            char pid_text[24];
            snprintf(pid_text, sizeof pid_text, "%d", (int)pid);
            cl_log(CL_LOG_INFO, "app_started", "name", c->name, "pid", pid_text, NULL);
            line_reader readers[2] = {{.fd = out_fd[0], .stream = "stdout"}, {.fd = err_fd[0], .stream = "stderr"}};
            char stream_names[2][64];
            snprintf(stream_names[0], sizeof stream_names[0], "%s.stdout", c->name);
            snprintf(stream_names[1], sizeof stream_names[1], "%s.stderr", c->name);
            readers[0].stream = stream_names[0];
            readers[1].stream = stream_names[1];
            int status;
            bool known = pump_output(c, readers, pid, &status);
            pthread_mutex_lock(&c->lock);
            c->pid = 0;
            stopping = c->stopping;
            pthread_mutex_unlock(&c->lock);
            char how[32];
            if (known)
                cl_process_status_text(status, how, sizeof how);
            else
                snprintf(how, sizeof how, "unknown");
            cl_log(stopping ? CL_LOG_INFO : CL_LOG_WARN, "app_exited", "name", c->name, "pid", pid_text, "status",
                   how, NULL);
            if (stopping)
                break;
            if (cl_monotonic_ms() - started >= c->stable_after_ms)
                backoff = c->backoff_initial_ms;
        }
        char delay[24];
        snprintf(delay, sizeof delay, "%u", backoff);
        cl_log(CL_LOG_INFO, "app_restart_scheduled", "name", c->name, "delay_ms", delay, NULL);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += backoff / 1000;
        until.tv_nsec += (long)(backoff % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&c->lock);
        while (!c->stopping && pthread_cond_timedwait(&c->cond, &c->lock, &until) == 0)
            ;
        stopping = c->stopping;
        pthread_mutex_unlock(&c->lock);
        if (stopping)
            break;
        atomic_fetch_add(&c->restarts, 1);
        backoff = backoff * 2 > c->backoff_max_ms ? c->backoff_max_ms : backoff * 2;
    }
    pthread_mutex_lock(&c->lock);
    c->exited_for_good = true;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

static void child_free(cl_child *c)
{
    cl_launcher_close(c->launcher, LAUNCHER_EXIT_WAIT_MS);
    if (c->env) {
        /* the first entries are borrowed from environ; the extra ones are ours */
        size_t base = 0;
        while (environ && environ[base])
            base++;
        for (size_t i = base; c->env[i]; i++) {
            cl_wipe(c->env[i], strlen(c->env[i])); /* extra entries may carry secrets */
            free(c->env[i]);
        }
        free(c->env);
    }
    free(c->name);
    free(c->command);
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->cond);
    free(c);
}

int cl_child_start(const cl_child_config *cfg, cl_child **out)
{
    if (!cfg->command || !*cfg->command) {
        cl_launcher_close(cfg->launcher, LAUNCHER_EXIT_WAIT_MS);
        return cl_error_set(CL_EINVAL, "empty command");
    }
    cl_child *c = calloc(1, sizeof *c);
    if (!c) {
        cl_launcher_close(cfg->launcher, LAUNCHER_EXIT_WAIT_MS);
        return cl_error_set(CL_ENOMEM, "out of memory");
    }
    c->launcher = cfg->launcher;
    pthread_mutex_init(&c->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_cond_init(&c->cond, &ca);
    pthread_condattr_destroy(&ca);
    c->name = strdup(cfg->name ? cfg->name : "app");
    c->command = strdup(cfg->command);
    c->backoff_initial_ms = cfg->backoff_initial_ms ? cfg->backoff_initial_ms : 500;
    c->backoff_max_ms = cfg->backoff_max_ms ? cfg->backoff_max_ms : 30000;
    c->stable_after_ms = cfg->stable_after_ms ? cfg->stable_after_ms : 30000;
    size_t base = 0, extra = 0;
    while (environ && environ[base])
        base++;
    while (!c->launcher && cfg->env && cfg->env[extra])
        extra++;
    c->env = calloc(base + extra + 1, sizeof *c->env);
    bool ok = c->name && c->command && c->env;
    for (size_t i = 0; ok && i < base; i++)
        c->env[i] = environ[i];
    for (size_t i = 0; ok && i < extra; i++)
        ok = (c->env[base + i] = strdup(cfg->env[i])) != NULL;
    if (!ok) {
        child_free(c);
        return cl_error_set(CL_ENOMEM, "out of memory");
    }
    if (pthread_create(&c->thread, NULL, watch_child, c) != 0) {
        child_free(c);
        return cl_error_set(CL_EIO, "cannot start the supervisor thread");
    }
    *out = c;
    return CL_OK;
}

void cl_child_stop(cl_child *c, unsigned grace_ms)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->lock);
    c->stopping = true;
    if (c->pid > 0 && c->launcher) {
        /* the daemon's filter allows no kill but to itself: the launcher
         * signals the app's group, and sends SIGKILL after its own grace */
        if (cl_launcher_stop(c->launcher) < 0)
            cl_log(CL_LOG_WARN, "app_stop_failed", "name", c->name, "error", cl_error_message(), NULL);
    } else if (c->pid > 0) {
        kill(-c->pid, SIGTERM);
    }
    pthread_cond_broadcast(&c->cond);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += grace_ms / 1000;
    until.tv_nsec += (long)(grace_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    while (!c->exited_for_good) {
        if (pthread_cond_timedwait(&c->cond, &c->lock, &until) != 0) {
            if (c->pid > 0) {
                cl_log(CL_LOG_WARN, "app_kill", "name", c->name, "reason", "did not stop in time", NULL);
                if (c->launcher)
                    cl_launcher_shutdown(c->launcher); /* its end: SIGKILL now, and our poll wakes */
                else
                    kill(-c->pid, SIGKILL);
            }
            while (!c->exited_for_good)
                pthread_cond_wait(&c->cond, &c->lock);
        }
    }
    pthread_mutex_unlock(&c->lock);
    pthread_join(c->thread, NULL);
    child_free(c);
}

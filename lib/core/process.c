#include "cloister/core/process.h"

#include "cloister/core/clock.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static bool env_has(char *const *env, const char *entry)
{
    size_t n = strcspn(entry, "=");
    for (; env && *env; env++)
        if (!strncmp(*env, entry, n) && (*env)[n] == '=')
            return true;
    return false;
}

/* The child side: async-signal-safe calls only; never returns. */
static void child(const cl_process_spec *s, char *const *envp, pid_t parent, int report)
{
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    if (s->own_group)
        setpgid(0, 0);
    if (s->die_with_parent) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
            _exit(127); /* the parent died before prctl: nobody would stop us */
    }
    int e = 0;
    if (!s->keep_stdin) {
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull < 0 || dup2(devnull, 0) < 0)
            e = errno;
    }
    int fds[2] = {s->stdout_fd, s->stderr_fd};
    for (int i = 0; i < 2 && !e; i++) {
        if (fds[i] <= 0)
            continue;
        if (dup2(fds[i], i + 1) < 0) {
            e = errno;
            break;
        }
        /* a caller's nonblocking pipe end must not make the child's writes fail */
        int fl = fcntl(i + 1, F_GETFL);
        if (fl >= 0 && (fl & O_NONBLOCK))
            fcntl(i + 1, F_SETFL, fl & ~O_NONBLOCK);
    }
    if (!e && s->pass_fd > 0 && report == 3) {
        /* the report pipe must not be what descriptor 3 replaces */
        int moved = fcntl(3, F_DUPFD_CLOEXEC, 4);
        if (moved < 0)
            e = errno;
        else
            report = moved;
    }
    if (!e && s->pass_fd > 0) {
        /* dup2 onto itself would leave the close-on-exec flag set */
        int r = s->pass_fd == 3 ? fcntl(3, F_SETFD, 0) : dup2(s->pass_fd, 3);
        if (r < 0)
            e = errno;
    }
    if (!e) {
        if (s->search_path)
            execvpe(s->program, s->argv, envp);
        else
            execve(s->program, s->argv, envp);
        e = errno;
    }
    ssize_t ignored = write(report, &e, sizeof e);
    (void)ignored;
    _exit(127);
}

int cl_process_spawn(const cl_process_spec *s, pid_t *pid)
{
    *pid = -1;
    CL_ENSURE(s->program && s->argv && s->argv[0], CL_EINVAL, "internal: no program to run");
    char *const *envp = s->envp ? s->envp : environ;
    char **built = NULL;
    if (s->add_env && s->add_env[0]) {
        size_t n = 0, extra = 0;
        while (envp[n])
            n++;
        while (s->add_env[extra])
            extra++;
        built = calloc(n + extra + 1, sizeof *built);
        CL_ENSURE(built, CL_ENOMEM, "out of memory");
        memcpy(built, envp, n * sizeof *built);
        for (size_t i = 0; i < extra; i++)
            if (!env_has(envp, s->add_env[i]))
                built[n++] = (char *)s->add_env[i];
        envp = built;
    }
    int rep[2];
    if (pipe2(rep, O_CLOEXEC) < 0) {
        free(built);
        return cl_error_set(CL_EIO, "cannot run %s: pipe: %s", s->program, strerror(errno));
    }
    pid_t parent = getpid();
    pid_t p = fork();
    if (p == 0)
        child(s, envp, parent, rep[1]);
    int fork_errno = errno;
    close(rep[1]);
    free(built); /* the child has its copy */
    if (p < 0) {
        close(rep[0]);
        return cl_error_set(CL_EIO, "cannot run %s: fork: %s", s->program, strerror(fork_errno));
    }
    if (s->own_group)
        setpgid(p, p); /* also done by the child; whichever runs first */
    /* the report pipe closes on exec (success) or carries errno (failure) */
    int e = 0;
    ssize_t got;
    do
        got = read(rep[0], &e, sizeof e);
    while (got < 0 && errno == EINTR);
    close(rep[0]);
    if (got == (ssize_t)sizeof e) {
        while (waitpid(p, NULL, 0) < 0 && errno == EINTR)
            ;
        return cl_error_set(CL_EIO, "cannot run %s: %s", s->program, strerror(e));
    }
    *pid = p;
    return CL_OK;
}

int cl_process_wait(pid_t pid, int timeout_ms, bool *exited, int *status)
{
    *exited = false;
    int st = 0;
    uint64_t deadline = timeout_ms > 0 ? cl_monotonic_ms() + (uint64_t)timeout_ms : 0;
    for (;;) {
        pid_t r = waitpid(pid, &st, timeout_ms < 0 ? 0 : WNOHANG);
        if (r == pid) {
            if (status)
                *status = st;
            *exited = true;
            return CL_OK;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return cl_error_set(CL_EIO, "waitpid %d: %s", (int)pid, strerror(errno));
        uint64_t now = cl_monotonic_ms();
        if (timeout_ms == 0 || now >= deadline)
            return CL_OK;
        uint64_t left = deadline - now;
        nanosleep(&(struct timespec){0, (long)(left < 10 ? left : 10) * 1000000L}, NULL);
    }
}

void cl_process_stop(pid_t pid, unsigned grace_ms, int *status)
{
    if (pid <= 0)
        return;
    kill(-pid, SIGTERM);
    kill(pid, SIGTERM);
    int st = 0;
    bool exited;
    int r = cl_process_wait(pid, (int)grace_ms, &exited, &st);
    if (r == CL_OK && !exited) {
        kill(-pid, SIGKILL);
        kill(pid, SIGKILL);
        r = cl_process_wait(pid, -1, &exited, &st);
    }
    if (r < 0)
        cl_error_clear();
    if (status)
        *status = st;
}

void cl_process_status_text(int status, char *out, size_t len)
{
    if (WIFEXITED(status))
        snprintf(out, len, "exit status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(out, len, "killed by signal %d", WTERMSIG(status));
    else
        snprintf(out, len, "wait status %d", status);
}

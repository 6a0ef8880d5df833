/* The one process helper: spawn (own group, parent-death signal, stdin from
 * /dev/null, output redirected, environment added), exec failures named,
 * wait with a timeout, stop with escalation, status text. */
#include "cloister/core/process.h"
#include "test.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void msleep(long ms)
{
    nanosleep(&(struct timespec){ms / 1000, (ms % 1000) * 1000000L}, NULL);
}

/* Runs sh -c SCRIPT with stdout into a pipe; returns what it wrote. */
static void run_sh(const char *script, const char *const *add_env, char *out, size_t out_len, int *status)
{
    int p[2];
    CHECK(pipe(p) == 0);
    char *argv[] = {"sh", "-c", (char *)script, NULL};
    cl_process_spec s = {.program = "/bin/sh", .argv = argv, .add_env = add_env, .stdout_fd = p[1]};
    pid_t pid;
    CHECK_OK(cl_process_spawn(&s, &pid));
    close(p[1]);
    size_t n = 0;
    ssize_t r;
    while (n + 1 < out_len && (r = read(p[0], out + n, out_len - 1 - n)) > 0)
        n += (size_t)r;
    out[n] = '\0';
    close(p[0]);
    bool exited = false;
    CHECK(cl_process_wait(pid, -1, &exited, status) == CL_OK && exited);
}

static void runs_and_reports_status(void)
{
    char out[256], text[64];
    int st = -1;
    run_sh("echo out; exit 3", NULL, out, sizeof out, &st);
    CHECK(!strcmp(out, "out\n"));
    cl_process_status_text(st, text, sizeof text);
    CHECK(!strcmp(text, "exit status 3"));
    run_sh("kill -9 $$", NULL, out, sizeof out, &st);
    cl_process_status_text(st, text, sizeof text);
    CHECK(!strcmp(text, "killed by signal 9"));
    /* stdin is /dev/null: cat ends at once */
    run_sh("cat; echo done", NULL, out, sizeof out, &st);
    CHECK(!strcmp(out, "done\n") && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    /* the signal mask and SIGPIPE are reset for the child: a blocked TERM
     * here does not protect it */
    sigset_t term, old;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &term, &old);
    run_sh("kill -TERM $$; sleep 1; echo survived", NULL, out, sizeof out, &st);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM && !strcmp(out, ""));
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

static void environment_added_not_overridden(void)
{
    char out[4096];
    int st;
    static const char *const add[] = {"CL_PROCESS_TEST=added", "PATH=/nowhere", NULL};
    run_sh("printf '%s|%s' \"$CL_PROCESS_TEST\" \"$PATH\"", add, out, sizeof out, &st);
    char want[4096];
    snprintf(want, sizeof want, "added|%s", getenv("PATH"));
    CHECK(!strcmp(out, want));
}

static void exec_failures_named(void)
{
    pid_t pid = 123;
    char *argv[] = {"/nonexistent/cloister-program", NULL};
    cl_process_spec s = {.program = argv[0], .argv = argv};
    CHECK_ERR(cl_process_spawn(&s, &pid), CL_EIO, "cannot run /nonexistent/cloister-program: No such file");
    CHECK(pid == -1);
    char *argv2[] = {"cloister-no-such-program-on-path", NULL};
    cl_process_spec s2 = {.program = argv2[0], .argv = argv2, .search_path = true};
    CHECK_ERR(cl_process_spawn(&s2, &pid), CL_EIO, "cannot run cloister-no-such-program-on-path");
    /* no zombie left behind by the failures */
    CHECK(waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD);
    char *argv3[] = {"true", NULL};
    cl_process_spec s3 = {.program = "true", .argv = argv3, .search_path = true};
    CHECK_OK(cl_process_spawn(&s3, &pid));
    int st;
    bool exited = false;
    CHECK(cl_process_wait(pid, -1, &exited, &st) == CL_OK && exited && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CHECK_ERR(cl_process_wait(pid, 0, &exited, &st), CL_EIO, "waitpid");
}

static void group_wait_and_stop(void)
{
    /* the shell ignores TERM (and so does its sleep): stop must escalate */
    char *argv[] = {"sh", "-c", "trap '' TERM; sleep 30 & wait", NULL};
    cl_process_spec s = {.program = "/bin/sh", .argv = argv, .own_group = true};
    pid_t pid;
    CHECK_OK(cl_process_spawn(&s, &pid));
    CHECK(getpgid(pid) == pid);
    int st = 0;
    bool exited = true;
    CHECK(cl_process_wait(pid, 0, &exited, &st) == CL_OK && !exited);
    exited = true;
    CHECK(cl_process_wait(pid, 50, &exited, &st) == CL_OK && !exited);
    cl_process_stop(pid, 200, &st);
    char text[64];
    cl_process_status_text(st, text, sizeof text);
    CHECK(!strcmp(text, "killed by signal 9"));
    /* the group's sleep got the SIGKILL too */
    for (int i = 0; i < 100 && kill(-pid, 0) == 0; i++)
        msleep(20);
    CHECK(kill(-pid, 0) < 0 && errno == ESRCH);
    /* a child that stops on TERM is reaped after TERM */
    char *argv2[] = {"sleep", "30", NULL};
    cl_process_spec s2 = {.program = "sleep", .argv = argv2, .search_path = true, .own_group = true};
    CHECK_OK(cl_process_spawn(&s2, &pid));
    cl_process_stop(pid, 5000, &st);
    cl_process_status_text(st, text, sizeof text);
    CHECK(!strcmp(text, "killed by signal 15"));
}

/* A child spawned with die_with_parent gets SIGTERM when its parent dies. */
static void dies_with_parent(void)
{
    int p[2];
    CHECK(pipe(p) == 0);
    pid_t middle = fork();
    if (middle == 0) {
        close(p[0]);
        char *argv[] = {"sleep", "30", NULL};
        cl_process_spec s = {.program = "sleep", .argv = argv, .search_path = true, .die_with_parent = true};
        pid_t pid = -1;
        if (cl_process_spawn(&s, &pid) < 0)
            _exit(1);
        ssize_t w = write(p[1], &pid, sizeof pid);
        _exit(w == (ssize_t)sizeof pid ? 0 : 1);
    }
    close(p[1]);
    pid_t grandchild = -1;
    CHECK(read(p[0], &grandchild, sizeof grandchild) == (ssize_t)sizeof grandchild);
    close(p[0]);
    int st;
    CHECK(waitpid(middle, &st, 0) == middle && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    if (grandchild <= 0)
        return;
    /* re-parented: not ours to reap; gone (or a zombie of its new parent) soon */
    bool gone = false;
    for (int i = 0; i < 250 && !gone; i++) {
        char path[64], stat[256] = "";
        snprintf(path, sizeof path, "/proc/%d/stat", (int)grandchild);
        FILE *f = fopen(path, "r");
        if (!f) {
            gone = true;
            break;
        }
        size_t n = fread(stat, 1, sizeof stat - 1, f);
        fclose(f);
        stat[n] = '\0';
        const char *rp = strrchr(stat, ')');
        gone = rp && (rp[2] == 'Z' || rp[2] == 'X');
        if (!gone)
            msleep(20);
    }
    CHECK(gone);
    if (!gone)
        kill(grandchild, SIGKILL);
}

/* pass_fd: the descriptor is the child's 3, open across the exec; another
 * close-on-exec descriptor stays closed. */
static void passes_one_descriptor(void)
{
    int p[2], other[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0);
    CHECK(pipe2(other, O_CLOEXEC) == 0);
    char script[128];
    snprintf(script, sizeof script, "echo three >&3; [ -e /proc/$$/fd/%d ] && echo leaked >&3; exit 0", other[1]);
    char *argv[] = {"sh", "-c", script, NULL};
    cl_process_spec s = {.program = "/bin/sh", .argv = argv, .pass_fd = p[1]};
    pid_t pid;
    CHECK_OK(cl_process_spawn(&s, &pid));
    close(p[1]);
    close(other[1]);
    char buf[64] = {0};
    size_t n = 0;
    ssize_t r;
    while (n < sizeof buf - 1 && (r = read(p[0], buf + n, sizeof buf - 1 - n)) > 0)
        n += (size_t)r;
    close(p[0]);
    close(other[0]);
    CHECK(!strcmp(buf, "three\n"));
    bool exited;
    int status;
    CHECK_OK(cl_process_wait(pid, -1, &exited, &status));
    CHECK(exited && WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

int main(void)
{
    RUN(runs_and_reports_status);
    RUN(environment_added_not_overridden);
    RUN(exec_failures_named);
    RUN(group_wait_and_stop);
    RUN(dies_with_parent);
    RUN(passes_one_descriptor);
    return test_summary();
}

/* The app launcher (lib/enclave/launcher.c), driven over a socketpair as a
 * compromised daemon would drive it: anything but an exact 16-byte START
 * or STOP -- longer (a command line tacked on), shorter, other magic,
 * version, type or padding, descriptors attached, a second START -- is
 * refused: the launcher stops the app and exits, and the fixed command is
 * not run for it.  The protocol that is allowed starts the one command,
 * hands over its output pipes, reports its exit, stops it (SIGTERM, then
 * SIGKILL after the grace), and ends with the daemon.  Then the daemon's
 * side: the real launcher through cl_launcher_spawn, and a fake one whose
 * events break the protocol. */
#include "cloister/enclave/launcher.h"
#include "test.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char dir[] = "/tmp/cloister-launcher-XXXXXX";

static char *path_in_dir(const char *name)
{
    static char paths[4][512];
    static int next;
    char *p = paths[next++ % 4];
    snprintf(p, sizeof paths[0], "%s/%s", dir, name);
    return p;
}

static bool exists(const char *name)
{
    struct stat st;
    return stat(path_in_dir(name), &st) == 0;
}

/* A launcher in a child process on one end of a socketpair; the test
 * keeps the other.  Its exit status: 0 for cl_launcher_run's 0, 3 for a
 * refusal (CL_EPROTO), 4 otherwise. */
static pid_t start_launcher(const char *command, unsigned grace_ms, int *fd)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        /* as the exec'd launcher gets it (cl_process_spec.pass_fd) */
        fcntl(sv[1], F_SETFD, 0);
        cl_launcher_config cfg = {.command = command, .stop_grace_ms = grace_ms};
        int rc = cl_launcher_run(sv[1], &cfg);
        _exit(rc == 0 ? 0 : rc == CL_EPROTO ? 3 : 4);
    }
    close(sv[1]);
    *fd = sv[0];
    return pid;
}

/* The launcher's exit code; -1 (and it is killed) if it is still there
 * after 10 s: a launcher that outlives its daemon is a failure, not a hang. */
static int wait_exit(pid_t pid)
{
    int status = 0;
    for (int i = 0; i < 1000; i++) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        if (r < 0)
            return -1;
        usleep(10000);
    }
    fprintf(stderr, "launcher %d still runs: killed\n", (int)pid);
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return -1;
}

static bool send_bytes(int fd, const void *data, size_t len)
{
    return send(fd, data, len, MSG_NOSIGNAL) == (ssize_t)len;
}

static bool send_request(int fd, int type)
{
    uint8_t msg[CL_LAUNCHER_MSG_LEN];
    cl_launcher_request_encode(type, msg);
    return send_bytes(fd, msg, sizeof msg);
}

/* The next event (and its descriptors), waiting up to 10 s. */
static int next_event(int fd, cl_launcher_event *ev, int fds[2], size_t *nfds)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 10000) != 1)
        return -1;
    uint8_t buf[64];
    union {
        struct cmsghdr h;
        char b[CMSG_SPACE(4 * sizeof(int))];
    } ctl;
    struct iovec iov = {buf, sizeof buf};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof ctl.b};
    ssize_t n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
    if (n <= 0)
        return 0; /* the launcher's end closed */
    *nfds = 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
        size_t count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count && *nfds < 2; i++)
            memcpy(&fds[(*nfds)++], CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
    }
    return cl_launcher_event_parse(buf, (size_t)n, ev) == CL_OK ? 1 : -1;
}

/* START, and the STARTED event's pid (its output pipes closed); -1 when
 * the launcher did not answer STARTED. */
static pid_t start_app(int fd)
{
    if (!send_request(fd, CL_LAUNCHER_START))
        return -1;
    cl_launcher_event ev;
    int fds[2];
    size_t nfds = 0;
    int got = next_event(fd, &ev, fds, &nfds);
    for (size_t i = 0; i < nfds; i++)
        close(fds[i]);
    return got == 1 && ev.type == CL_LAUNCHER_STARTED ? ev.pid : -1;
}

static bool closed_by_launcher(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 10000) != 1)
        return false;
    char b[64];
    return recv(fd, b, sizeof b, 0) == 0;
}

static size_t read_all(int fd, char *out, size_t cap)
{
    size_t len = 0;
    ssize_t n;
    while (len + 1 < cap && (n = read(fd, out + len, cap - 1 - len)) > 0)
        len += (size_t)n;
    out[len] = '\0';
    close(fd);
    return len;
}

static void test_request_codec(void)
{
    uint8_t msg[CL_LAUNCHER_MSG_LEN];
    int type;
    cl_launcher_request_encode(CL_LAUNCHER_START, msg);
    CHECK_OK(cl_launcher_request_parse(msg, sizeof msg, &type));
    CHECK(type == CL_LAUNCHER_START);
    cl_launcher_request_encode(CL_LAUNCHER_STOP, msg);
    CHECK_OK(cl_launcher_request_parse(msg, sizeof msg, &type));
    CHECK(type == CL_LAUNCHER_STOP);
    /* every byte changed in every way refuses the request, but the type
     * byte between the two types */
    for (size_t i = 0; i < sizeof msg; i++) {
        for (unsigned v = 0; v < 256; v++) {
            uint8_t bad[CL_LAUNCHER_MSG_LEN];
            memcpy(bad, msg, sizeof bad);
            if (bad[i] == v)
                continue;
            bad[i] = (uint8_t)v;
            int rc = cl_launcher_request_parse(bad, sizeof bad, &type);
            if (i == 5 && v == CL_LAUNCHER_START)
                CHECK(rc == CL_OK && type == CL_LAUNCHER_START);
            else if (rc != CL_EPARSE) {
                fprintf(stderr, "byte %zu = %u accepted\n", i, v);
                CHECK(rc == CL_EPARSE);
            }
        }
    }
    uint8_t longer[CL_LAUNCHER_MSG_LEN + 1] = {0};
    memcpy(longer, msg, sizeof msg);
    for (size_t len = 0; len <= sizeof longer; len++)
        if (len != CL_LAUNCHER_MSG_LEN)
            CHECK_ERR(cl_launcher_request_parse(longer, len, &type), CL_EPARSE, "every request is 16");
    CHECK_ERR(cl_launcher_request_parse((const uint8_t *)"CLLQ\x02\x01\0\0\0\0\0\0\0\0\0\0", 16, &type), CL_EPARSE,
              "version 2");
    CHECK_ERR(cl_launcher_request_parse((const uint8_t *)"CLLQ\x01\x03\0\0\0\0\0\0\0\0\0\0", 16, &type), CL_EPARSE,
              "unknown request type 3");
    CHECK_ERR(cl_launcher_request_parse((const uint8_t *)"CLLQ\x01\x01\0\0\0\0\0\0\0\0\0x", 16, &type), CL_EPARSE,
              "byte 15");
}

static void test_event_codec(void)
{
    uint8_t msg[CL_LAUNCHER_MSG_LEN];
    cl_launcher_event ev;
    cl_launcher_event_encode(&(cl_launcher_event){.type = CL_LAUNCHER_EXITED, .pid = 4242, .status = 0x0f00}, msg);
    CHECK_OK(cl_launcher_event_parse(msg, sizeof msg, &ev));
    CHECK(ev.type == CL_LAUNCHER_EXITED && ev.pid == 4242 && ev.status == 0x0f00);
    cl_launcher_event_encode(&(cl_launcher_event){.type = CL_LAUNCHER_STARTED, .pid = 7}, msg);
    CHECK_OK(cl_launcher_event_parse(msg, sizeof msg, &ev));
    CHECK(ev.type == CL_LAUNCHER_STARTED && ev.pid == 7);
    cl_launcher_event_encode(&(cl_launcher_event){.type = CL_LAUNCHER_FAILED}, msg);
    CHECK_OK(cl_launcher_event_parse(msg, sizeof msg, &ev));
    cl_launcher_event_encode(&(cl_launcher_event){.type = CL_LAUNCHER_FAILED, .pid = 7}, msg);
    CHECK_ERR(cl_launcher_event_parse(msg, sizeof msg, &ev), CL_EPARSE, "pid");
    cl_launcher_event_encode(&(cl_launcher_event){.type = CL_LAUNCHER_STARTED, .pid = 7, .status = 1}, msg);
    CHECK_ERR(cl_launcher_event_parse(msg, sizeof msg, &ev), CL_EPARSE, "status");
    cl_launcher_event_encode(&(cl_launcher_event){.type = CL_LAUNCHER_EXITED, .pid = 0}, msg);
    CHECK_ERR(cl_launcher_event_parse(msg, sizeof msg, &ev), CL_EPARSE, "pid");
    cl_launcher_event_encode(&(cl_launcher_event){.type = 9, .pid = 7}, msg);
    CHECK_ERR(cl_launcher_event_parse(msg, sizeof msg, &ev), CL_EPARSE, "unknown event type 9");
    cl_launcher_event_encode(&(cl_launcher_event){.type = CL_LAUNCHER_EXITED, .pid = 7}, msg);
    CHECK_ERR(cl_launcher_event_parse(msg, sizeof msg - 1, &ev), CL_EPARSE, "every event is 16");
    msg[6] = 1;
    CHECK_ERR(cl_launcher_event_parse(msg, sizeof msg, &ev), CL_EPARSE, "byte 6");
}

/* One bogus request after the launcher is up: it must end the launcher
 * with a refusal, and run nothing. */
typedef struct bogus {
    const char *what;
    uint8_t data[4096];
    size_t len;
    bool with_fd;
    int expect_exit; /* 3: refused; 0: taken as the daemon's end */
} bogus;

static void run_bogus(const bogus *b)
{
    unlink(path_in_dir("started"));
    unlink(path_in_dir("pwned"));
    char command[600];
    snprintf(command, sizeof command, "touch %s", path_in_dir("started"));
    int fd;
    pid_t pid = start_launcher(command, 1000, &fd);
    CHECK(pid > 0);
    bool sent;
    if (b->with_fd) {
        int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
        union {
            struct cmsghdr h;
            char buf[CMSG_SPACE(sizeof(int))];
        } ctl;
        memset(&ctl, 0, sizeof ctl);
        struct iovec iov = {(void *)b->data, b->len};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &devnull, sizeof devnull);
        sent = sendmsg(fd, &mh, MSG_NOSIGNAL) == (ssize_t)b->len;
        close(devnull);
    } else {
        sent = send_bytes(fd, b->data, b->len);
    }
    CHECK(sent);
    bool closed = closed_by_launcher(fd);
    int code = wait_exit(pid);
    if (!closed || code != b->expect_exit)
        fprintf(stderr, "%s: closed %d, launcher exit %d\n", b->what, closed, code);
    CHECK(closed);
    CHECK(code == b->expect_exit);
    CHECK(!exists("started"));
    CHECK(!exists("pwned"));
    close(fd);
}

static void test_bogus_requests_refused(void)
{
    static bogus cases[12];
    size_t n = 0;
    uint8_t start[CL_LAUNCHER_MSG_LEN];
    cl_launcher_request_encode(CL_LAUNCHER_START, start);
    char pwn[600];
    snprintf(pwn, sizeof pwn, "touch %s", path_in_dir("pwned"));

    /* START with a command line of the attacker's after it */
    bogus *b = &cases[n++];
    b->what = "START + a command";
    memcpy(b->data, start, sizeof start);
    memcpy(b->data + sizeof start, pwn, strlen(pwn) + 1);
    b->len = sizeof start + strlen(pwn) + 1;
    b->expect_exit = 3;
    b = &cases[n++];
    b->what = "oversized (4096 bytes)";
    memcpy(b->data, start, sizeof start);
    memset(b->data + sizeof start, 'A', sizeof b->data - sizeof start);
    b->len = sizeof b->data;
    b->expect_exit = 3;
    b = &cases[n++];
    b->what = "START + 1 byte";
    memcpy(b->data, start, sizeof start);
    b->len = sizeof start + 1;
    b->expect_exit = 3;
    b = &cases[n++];
    b->what = "15 bytes";
    memcpy(b->data, start, sizeof start);
    b->len = sizeof start - 1;
    b->expect_exit = 3;
    b = &cases[n++];
    b->what = "a command line alone";
    memcpy(b->data, pwn, strlen(pwn));
    b->len = strlen(pwn);
    b->expect_exit = 3;
    static const struct {
        size_t at;
        uint8_t v;
        const char *what;
    } flips[] = {{0, 'X', "magic"}, {4, 2, "version"}, {5, 0, "type 0"}, {5, 3, "type 3"}, {6, 1, "padding"},
                 {15, 0xff, "last padding byte"}};
    for (size_t i = 0; i < sizeof flips / sizeof flips[0]; i++) {
        b = &cases[n++];
        b->what = flips[i].what;
        memcpy(b->data, start, sizeof start);
        b->data[flips[i].at] = flips[i].v;
        b->len = sizeof start;
        b->expect_exit = 3;
    }
    b = &cases[n++];
    b->what = "START with a descriptor";
    memcpy(b->data, start, sizeof start);
    b->len = sizeof start;
    b->with_fd = true;
    b->expect_exit = 3;
    for (size_t i = 0; i < n; i++)
        run_bogus(&cases[i]);
}

/* START, its output over the handed pipes, its exit; START again.  The
 * app inherits no descriptor of the launcher's: neither its socket nor
 * one the launcher's parent left open without close-on-exec. */
static void test_start_output_exit(void)
{
    int stray = open(dir, O_RDONLY | O_DIRECTORY); /* not close-on-exec */
    int fd;
    pid_t pid = start_launcher("echo out; echo err >&2; ls -l /proc/$$/fd/ >&2; exit 7", 5000, &fd);
    close(stray);
    CHECK(pid > 0);
    for (int round = 0; round < 2; round++) {
        CHECK(send_request(fd, CL_LAUNCHER_START));
        cl_launcher_event ev;
        int fds[2] = {-1, -1};
        size_t nfds = 0;
        CHECK(next_event(fd, &ev, fds, &nfds) == 1);
        CHECK(ev.type == CL_LAUNCHER_STARTED && ev.pid > 0 && nfds == 2);
        if (nfds != 2)
            break;
        char out[256], err[4096];
        read_all(fds[0], out, sizeof out);
        read_all(fds[1], err, sizeof err);
        CHECK(!strcmp(out, "out\n"));
        bool clean = !strncmp(err, "err\n", 4) && strstr(err, " 0 -> /dev/null") && !strstr(err, "socket:") &&
                     !strstr(err, dir);
        if (!clean)
            fprintf(stderr, "the app's stderr and descriptors:\n%s\n", err);
        CHECK(clean);
        pid_t app = ev.pid;
        CHECK(next_event(fd, &ev, fds, &nfds) == 1);
        CHECK(ev.type == CL_LAUNCHER_EXITED && ev.pid == app && nfds == 0);
        CHECK(WIFEXITED(ev.status) && WEXITSTATUS(ev.status) == 7);
    }
    close(fd);
    CHECK(wait_exit(pid) == 0);
}

static bool gone(pid_t pid)
{
    for (int i = 0; i < 200; i++) {
        if (kill(pid, 0) != 0 && errno == ESRCH)
            return true;
        usleep(10000);
    }
    return false;
}

static void test_stop_and_kill(void)
{
    int fd;
    pid_t pid = start_launcher("exec sleep 30", 5000, &fd);
    pid_t app = start_app(fd);
    CHECK(app > 0);
    cl_launcher_event ev;
    int fds[2];
    size_t nfds = 0;
    CHECK(send_request(fd, CL_LAUNCHER_STOP));
    CHECK(next_event(fd, &ev, fds, &nfds) == 1);
    CHECK(ev.type == CL_LAUNCHER_EXITED && ev.pid == app);
    CHECK(WIFSIGNALED(ev.status) && WTERMSIG(ev.status) == SIGTERM);
    CHECK(send_request(fd, CL_LAUNCHER_STOP)); /* idle: nothing to stop, not an error */
    close(fd);
    CHECK(wait_exit(pid) == 0);

    /* an app that ignores SIGTERM gets SIGKILL after the grace */
    pid = start_launcher("trap '' TERM; sleep 30; exit 0", 200, &fd);
    app = start_app(fd);
    CHECK(app > 0);
    usleep(100000); /* the trap is set */
    CHECK(send_request(fd, CL_LAUNCHER_STOP));
    CHECK(next_event(fd, &ev, fds, &nfds) == 1);
    CHECK(ev.type == CL_LAUNCHER_EXITED && ev.pid == app);
    CHECK(WIFSIGNALED(ev.status) && WTERMSIG(ev.status) == SIGKILL);
    close(fd);
    CHECK(wait_exit(pid) == 0);
}

/* A second START while the app runs is refused; the daemon's end stops the
 * app; either way the app does not outlive the launcher. */
static void test_app_ends_with_launcher(void)
{
    int fd;
    pid_t pid = start_launcher("exec sleep 30", 1000, &fd);
    pid_t app = start_app(fd);
    CHECK(app > 0);
    CHECK(send_request(fd, CL_LAUNCHER_START));
    CHECK(closed_by_launcher(fd));
    CHECK(wait_exit(pid) == 3);
    CHECK(gone(app));
    close(fd);

    pid = start_launcher("exec sleep 30", 1000, &fd);
    app = start_app(fd);
    CHECK(app > 0);
    close(fd); /* the daemon is gone */
    CHECK(wait_exit(pid) == 0);
    CHECK(gone(app));
}

/* The daemon's side with the real launcher: `cloister enclave launcher`. */
static void test_client_with_cloister(void)
{
    const char *build = getenv("CLOISTER_BUILD_DIR");
    CHECK(build != NULL); /* CTest sets it */
    if (!build)
        return;
    char program[1024];
    snprintf(program, sizeof program, "%s/cloister", build);
    char *argv[] = {"cloister", "enclave", "launcher", "--stop-grace", "2s", "--",
                    "echo \"$LAUNCHER_TEST_SECRET\"; exec sleep 30", NULL};
    const char *env[] = {"LAUNCHER_TEST_SECRET=only-at-exec", NULL};
    cl_launcher *l = NULL;
    CHECK_OK(cl_launcher_spawn(program, argv, env, &l));
    if (!l)
        return;
    pid_t app;
    int out, err;
    CHECK_OK(cl_launcher_start(l, 10000, &app, &out, &err));
    char line[64] = {0};
    ssize_t got = read(out, line, sizeof line - 1);
    CHECK(got > 0 && !strcmp(line, "only-at-exec\n"));
    CHECK_OK(cl_launcher_stop(l));
    struct pollfd p = {.fd = cl_launcher_fd(l), .events = POLLIN};
    CHECK(poll(&p, 1, 10000) == 1);
    int status = 0;
    CHECK_OK(cl_launcher_read_exit(l, app, &status));
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM);
    close(out);
    close(err);
    pid_t lpid = cl_launcher_pid(l);
    cl_launcher_close(l, 5000);
    CHECK(kill(lpid, 0) != 0 && errno == ESRCH); /* reaped */
}

/* The daemon's side with a launcher that breaks the protocol: refused,
 * and the launcher is shut down. */
static void test_client_refuses_bad_events(void)
{
    static const struct {
        const char *what, *script;
    } fakes[] = {
        {"an event of 17 bytes", "s.send(b'CLLE\\x01\\x01\\0\\0\\0\\0\\0\\x07\\0\\0\\0\\0x')"},
        {"STARTED without descriptors", "s.send(b'CLLE\\x01\\x01\\0\\0\\0\\0\\0\\x07\\0\\0\\0\\0')"},
        {"STARTED with three descriptors",
         "socket.send_fds(s, [b'CLLE\\x01\\x01\\0\\0\\0\\0\\0\\x07\\0\\0\\0\\0'], [0, 1, 2])"},
        {"EXITED in answer to START", "s.send(b'CLLE\\x01\\x02\\0\\0\\0\\0\\0\\x07\\0\\0\\0\\0')"},
        {"another magic", "s.send(b'XXXX\\x01\\x01\\0\\0\\0\\0\\0\\x07\\0\\0\\0\\0')"},
    };
    for (size_t i = 0; i < sizeof fakes / sizeof fakes[0]; i++) {
        char script[512];
        snprintf(script, sizeof script,
                 "import socket, time\n"
                 "s = socket.socket(fileno=3)\n"
                 "s.recv(64)\n"
                 "%s\n"
                 "s.settimeout(10)\n"
                 "s.recv(64)\n",
                 fakes[i].script);
        char *argv[] = {"python3", "-c", script, NULL};
        cl_launcher *l = NULL;
        CHECK_OK(cl_launcher_spawn("/usr/bin/python3", argv, NULL, &l));
        if (!l)
            continue;
        pid_t app;
        int out, err;
        int rc = cl_launcher_start(l, 10000, &app, &out, &err);
        if (rc == CL_OK || !strstr(cl_error_message(), "launcher"))
            fprintf(stderr, "%s: %s\n", fakes[i].what, rc == CL_OK ? "accepted" : cl_error_message());
        CHECK(rc == CL_EPROTO || rc == CL_EPARSE);
        CHECK(out == -1 && err == -1);
        /* shut down: a second start is refused without a word to the fake */
        CHECK_ERR(cl_launcher_start(l, 1000, &app, &out, &err), CL_EIO, "is gone");
        cl_launcher_close(l, 5000);
    }
}

int main(void)
{
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    RUN(test_request_codec);
    RUN(test_event_codec);
    RUN(test_bogus_requests_refused);
    RUN(test_start_output_exit);
    RUN(test_stop_and_kill);
    RUN(test_app_ends_with_launcher);
    RUN(test_client_with_cloister);
    RUN(test_client_refuses_bad_events);
    unlink(path_in_dir("started"));
    unlink(path_in_dir("pwned"));
    rmdir(dir);
    return test_summary();
}

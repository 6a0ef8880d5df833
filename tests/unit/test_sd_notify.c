#include "cloister/host/sd_notify.h"
#include "test.h"

#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static char tmpdir[64];

/* A datagram listener at path ("@name": abstract), or -1. */
static int listener(const char *path)
{
    struct sockaddr_un sun;
    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;
    socklen_t len;
    if (path[0] == '@') {
        memcpy(sun.sun_path + 1, path + 1, strlen(path) - 1);
        len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path));
    } else {
        snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path);
        len = sizeof sun;
    }
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sun, len) < 0) {
        fprintf(stderr, "cannot bind %s: %s\n", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

/* The next datagram within a second, NUL-terminated, or "" when none. */
static const char *receive(int fd)
{
    static char buf[8192];
    buf[0] = '\0';
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 1000) != 1)
        return buf;
    ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
    buf[n > 0 ? n : 0] = '\0';
    return buf;
}

static bool nothing_pending(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 50) == 0;
}

static void noop_when_unset(void)
{
    unsetenv("NOTIFY_SOCKET");
    CHECK(!cl_sd_notify_enabled());
    CHECK_OK(cl_sd_notify("READY=1"));
    CHECK_OK(cl_sd_notifyf("STATUS=%s", "x"));
    setenv("NOTIFY_SOCKET", "", 1);
    CHECK(!cl_sd_notify_enabled());
    CHECK_OK(cl_sd_notify("READY=1"));
    unsetenv("NOTIFY_SOCKET");
}

static void sends_to_path(void)
{
    char path[128];
    snprintf(path, sizeof path, "%s/notify.sock", tmpdir);
    int fd = listener(path);
    CHECK(fd >= 0);
    if (fd < 0)
        return;
    setenv("NOTIFY_SOCKET", path, 1);
    CHECK(cl_sd_notify_enabled());
    CHECK_OK(cl_sd_notify("READY=1"));
    CHECK(!strcmp(receive(fd), "READY=1"));
    CHECK_OK(cl_sd_notifyf("STATUS=enclave %s, %d restarts", "running", 2));
    CHECK(!strcmp(receive(fd), "STATUS=enclave running, 2 restarts"));
    CHECK_OK(cl_sd_notify("STOPPING=1\nSTATUS=stopping"));
    CHECK(!strcmp(receive(fd), "STOPPING=1\nSTATUS=stopping"));
    CHECK_OK(cl_sd_notify("WATCHDOG=1"));
    CHECK(!strcmp(receive(fd), "WATCHDOG=1"));
    CHECK(nothing_pending(fd));
    CHECK_ERR(cl_sd_notify(""), CL_EINVAL, "empty");
    close(fd);
    unlink(path);
    /* nobody listening any more */
    const char *gone = path;
    CHECK_ERR(cl_sd_notify("READY=1"), CL_EIO, gone);
    unsetenv("NOTIFY_SOCKET");
}

static void sends_to_abstract(void)
{
    char name[64];
    snprintf(name, sizeof name, "@cloister-test-notify-%d", (int)getpid());
    int fd = listener(name);
    CHECK(fd >= 0);
    if (fd < 0)
        return;
    setenv("NOTIFY_SOCKET", name, 1);
    CHECK_OK(cl_sd_notify("READY=1"));
    CHECK(!strcmp(receive(fd), "READY=1"));
    close(fd);
    unsetenv("NOTIFY_SOCKET");
}

static void rejects_bad_sockets(void)
{
    setenv("NOTIFY_SOCKET", "relative/path", 1);
    CHECK_ERR(cl_sd_notify("READY=1"), CL_EINVAL, "absolute");
    setenv("NOTIFY_SOCKET", "vsock:2:1234", 1); /* never opened */
    CHECK_ERR(cl_sd_notify("READY=1"), CL_EINVAL, "absolute");
    setenv("NOTIFY_SOCKET", "@", 1);
    CHECK_ERR(cl_sd_notify("READY=1"), CL_EINVAL, "empty");
    char long_path[200];
    memset(long_path, 'a', sizeof long_path - 1);
    long_path[0] = '/';
    long_path[sizeof long_path - 1] = '\0';
    setenv("NOTIFY_SOCKET", long_path, 1);
    CHECK_ERR(cl_sd_notify("READY=1"), CL_ELIMIT, "longer");
    long_path[0] = '@';
    setenv("NOTIFY_SOCKET", long_path, 1);
    CHECK_ERR(cl_sd_notify("READY=1"), CL_ELIMIT, "longer");
    unsetenv("NOTIFY_SOCKET");
    /* a message too long for the formatting buffer */
    char path[128];
    snprintf(path, sizeof path, "%s/big.sock", tmpdir);
    int fd = listener(path);
    setenv("NOTIFY_SOCKET", path, 1);
    char big[5000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    CHECK_ERR(cl_sd_notifyf("STATUS=%s", big), CL_ELIMIT, "longer");
    if (fd >= 0) {
        CHECK(nothing_pending(fd));
        close(fd);
    }
    unlink(path);
    unsetenv("NOTIFY_SOCKET");
}

static void watchdog_interval(void)
{
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    CHECK(cl_sd_watchdog_usec() == 0);
    setenv("WATCHDOG_USEC", "30000000", 1);
    CHECK(cl_sd_watchdog_usec() == 30000000);
    char pid[24];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    setenv("WATCHDOG_PID", pid, 1);
    CHECK(cl_sd_watchdog_usec() == 30000000);
    snprintf(pid, sizeof pid, "%d", (int)getpid() + 1);
    setenv("WATCHDOG_PID", pid, 1); /* meant for another process */
    CHECK(cl_sd_watchdog_usec() == 0);
    unsetenv("WATCHDOG_PID");
    setenv("WATCHDOG_USEC", "soon", 1);
    CHECK(cl_sd_watchdog_usec() == 0);
    unsetenv("WATCHDOG_USEC");
}

/* Last: detaching is once per process. */
static void detach_keeps_socket_hides_env(void)
{
    char path[128];
    snprintf(path, sizeof path, "%s/detached.sock", tmpdir);
    int fd = listener(path);
    CHECK(fd >= 0);
    if (fd < 0)
        return;
    setenv("NOTIFY_SOCKET", path, 1);
    setenv("WATCHDOG_USEC", "5000000", 1);
    cl_sd_notify_detach_env();
    CHECK(getenv("NOTIFY_SOCKET") == NULL);
    CHECK(getenv("WATCHDOG_USEC") == NULL);
    CHECK(cl_sd_notify_enabled());
    CHECK(cl_sd_watchdog_usec() == 5000000);
    CHECK_OK(cl_sd_notify("READY=1"));
    CHECK(!strcmp(receive(fd), "READY=1"));
    /* the environment no longer matters */
    setenv("NOTIFY_SOCKET", "/nonexistent/elsewhere.sock", 1);
    CHECK_OK(cl_sd_notify("STOPPING=1"));
    CHECK(!strcmp(receive(fd), "STOPPING=1"));
    close(fd);
    unlink(path);
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/cloister-sdn.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(noop_when_unset);
    RUN(sends_to_path);
    RUN(sends_to_abstract);
    RUN(rejects_bad_sockets);
    RUN(watchdog_interval);
    RUN(detach_keeps_socket_hides_env);
    rmdir(tmpdir);
    return test_summary();
}

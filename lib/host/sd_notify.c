#include "cloister/host/sd_notify.h"

#include "cloister/core/encoding.h"

#include <errno.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define NOTIFY_MESSAGE_MAX 4096

/* Set once by cl_sd_notify_detach_env() before threads exist, read-only after. */
static bool detached;
static char detached_socket[sizeof(((struct sockaddr_un *)0)->sun_path) + 1];
static bool detached_has_socket;
static uint64_t detached_watchdog_usec;

static const char *notify_socket(void)
{
    if (detached)
        return detached_has_socket ? detached_socket : NULL;
    const char *s = getenv("NOTIFY_SOCKET");
    return s && *s ? s : NULL;
}

bool cl_sd_notify_enabled(void)
{
    return notify_socket() != NULL;
}

static uint64_t watchdog_usec_from_env(void)
{
    const char *usec = getenv("WATCHDOG_USEC");
    const char *pid = getenv("WATCHDOG_PID");
    uint64_t v = 0, p = 0;
    if (!usec || cl_parse_u64(usec, UINT64_MAX, &v) < 0)
        return 0;
    if (pid && (cl_parse_u64(pid, UINT64_MAX, &p) < 0 || p != (uint64_t)getpid()))
        return 0;
    return v;
}

void cl_sd_notify_detach_env(void)
{
    if (detached)
        return;
    const char *s = getenv("NOTIFY_SOCKET");
    if (s && *s && strlen(s) < sizeof detached_socket) {
        memcpy(detached_socket, s, strlen(s) + 1);
        detached_has_socket = true;
    }
    detached_watchdog_usec = watchdog_usec_from_env();
    detached = true;
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
}

uint64_t cl_sd_watchdog_usec(void)
{
    return detached ? detached_watchdog_usec : watchdog_usec_from_env();
}

int cl_sd_notify(const char *state)
{
    const char *path = notify_socket();
    if (!path)
        return CL_OK;
    CL_ENSURE(state && *state, CL_EINVAL, "sd_notify: empty state");
    struct sockaddr_un sun;
    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;
    size_t len = strlen(path);
    socklen_t sun_len;
    if (path[0] == '@') {
        /* abstract namespace: a leading NUL byte, no terminator counted */
        CL_ENSURE(len >= 2, CL_EINVAL, "NOTIFY_SOCKET: empty abstract socket name");
        CL_ENSURE(len <= sizeof sun.sun_path, CL_ELIMIT, "NOTIFY_SOCKET: name longer than %zu bytes",
                  sizeof sun.sun_path - 1);
        memcpy(sun.sun_path + 1, path + 1, len - 1);
        sun_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    } else {
        CL_ENSURE(path[0] == '/', CL_EINVAL, "NOTIFY_SOCKET '%s': only absolute paths and '@' abstract names are "
                                             "supported", path);
        CL_ENSURE(len < sizeof sun.sun_path, CL_ELIMIT, "NOTIFY_SOCKET: path longer than %zu bytes",
                  sizeof sun.sun_path - 1);
        memcpy(sun.sun_path, path, len + 1);
        sun_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
    }
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    CL_ENSURE(fd >= 0, CL_EIO, "sd_notify: socket: %s", strerror(errno));
    size_t n = strlen(state);
    ssize_t sent;
    do
        sent = sendto(fd, state, n, MSG_NOSIGNAL, (struct sockaddr *)&sun, sun_len);
    while (sent < 0 && errno == EINTR);
    int saved = errno;
    close(fd);
    CL_ENSURE(sent >= 0, CL_EIO, "sd_notify to %s: %s", path, strerror(saved));
    CL_ENSURE((size_t)sent == n, CL_EIO, "sd_notify to %s: short datagram", path);
    return CL_OK;
}

int cl_sd_notifyf(const char *fmt, ...)
{
    if (!notify_socket())
        return CL_OK;
    char text[NOTIFY_MESSAGE_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    CL_ENSURE(n >= 0 && (size_t)n < sizeof text, CL_ELIMIT, "sd_notify: message longer than %d bytes",
              NOTIFY_MESSAGE_MAX - 1);
    return cl_sd_notify(text);
}

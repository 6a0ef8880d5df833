/* The small servers' accept loop (include/cloister/core/small_server.h). */
#include "cloister/core/small_server.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct slot {
    bool used;          /* a thread was started and is not joined yet */
    atomic_bool done;   /* the thread has finished serving */
    pthread_t thread;
    int fd;
    size_t listener;
    unsigned long id;
    const cl_small_server_config *config;
} slot;

static void *run_connection(void *arg)
{
    slot *s = arg;
    s->config->serve(s->config->arg, s->fd, s->listener, s->id);
    atomic_store(&s->done, true);
    return NULL;
}

/* Joins the finished threads; returns how many slots are in use. */
static unsigned reap(slot *slots, unsigned n)
{
    unsigned used = 0;
    for (unsigned i = 0; i < n; i++) {
        if (!slots[i].used)
            continue;
        if (atomic_load(&slots[i].done)) {
            pthread_join(slots[i].thread, NULL);
            close(slots[i].fd);
            slots[i].used = false;
        } else {
            used++;
        }
    }
    return used;
}

static void refuse(const cl_small_server_config *c, int fd, unsigned long id, const char *reason)
{
    if (c->refused)
        c->refused(c->arg, id, reason);
    close(fd);
}

static void start(const cl_small_server_config *c, slot *slots, int fd, size_t listener, unsigned long id)
{
    slot *s = NULL;
    for (unsigned i = 0; i < c->max_connections && !s; i++)
        if (!slots[i].used)
            s = &slots[i];
    if (!s && reap(slots, c->max_connections) < c->max_connections)
        for (unsigned i = 0; i < c->max_connections && !s; i++)
            if (!slots[i].used)
                s = &slots[i];
    if (!s) {
        refuse(c, fd, id, "too many connections");
        return;
    }
    s->fd = fd;
    s->listener = listener;
    s->id = id;
    s->config = c;
    atomic_store(&s->done, false);
    int err = pthread_create(&s->thread, NULL, run_connection, s);
    if (err != 0) {
        refuse(c, fd, id, "cannot start a thread");
        return;
    }
    s->used = true;
}

int cl_small_server_run(const cl_small_server_config *c)
{
    CL_ENSURE(c->listen_count >= 1 && c->listen_count <= CL_SMALL_SERVER_LISTENERS && c->max_connections >= 1 &&
                  c->serve,
              CL_EINVAL, "small server: 1..%d listeners, at least one connection and a serve function",
              CL_SMALL_SERVER_LISTENERS);
    slot *slots = calloc(c->max_connections, sizeof *slots);
    CL_ENSURE(slots, CL_ENOMEM, "out of memory");
    int rc = CL_OK;
    unsigned long next_id = 0;
    int timeout = c->tick && c->tick_ms ? (int)c->tick_ms : 1000;
    for (;;) {
        struct pollfd p[CL_SMALL_SERVER_LISTENERS + 1];
        p[0] = (struct pollfd){.fd = c->stop_fd, .events = POLLIN};
        for (size_t i = 0; i < c->listen_count; i++)
            p[i + 1] = (struct pollfd){.fd = c->listen_fds[i], .events = POLLIN};
        int n = poll(p, c->listen_count + 1, timeout);
        if (n < 0 && errno != EINTR) {
            rc = cl_error_set(CL_EIO, "poll: %s", strerror(errno));
            break;
        }
        if (n > 0 && p[0].revents)
            break;
        for (size_t i = 0; n > 0 && i < c->listen_count; i++) {
            if (!(p[i + 1].revents & POLLIN))
                continue;
            int fd = accept4(c->listen_fds[i], NULL, NULL, SOCK_CLOEXEC);
            if (fd < 0) {
                if (errno != EINTR && errno != ECONNABORTED && errno != EAGAIN)
                    poll(NULL, 0, 100); /* out of descriptors: back off instead of spinning */
                continue;
            }
            start(c, slots, fd, i, ++next_id);
        }
        reap(slots, c->max_connections);
        if (c->tick)
            c->tick(c->arg);
    }
    /* wake every connection (a read in progress returns), then join them all */
    for (unsigned i = 0; i < c->max_connections; i++)
        if (slots[i].used && !atomic_load(&slots[i].done))
            shutdown(slots[i].fd, SHUT_RDWR);
    for (unsigned i = 0; i < c->max_connections; i++) {
        if (!slots[i].used)
            continue;
        pthread_join(slots[i].thread, NULL);
        close(slots[i].fd);
    }
    free(slots);
    return rc;
}

/* ---- stop signals --------------------------------------------------------------------- */

static int stop_pipe[2] = {-1, -1};
static volatile sig_atomic_t stop_signal;

static void on_stop_signal(int sig)
{
    int saved = errno;
    stop_signal = sig;
    char b = 1;
    ssize_t ignored = write(stop_pipe[1], &b, 1);
    (void)ignored;
    errno = saved;
}

int cl_stop_signals_install(int *stop_fd)
{
    if (stop_pipe[0] < 0 && pipe2(stop_pipe, O_CLOEXEC | O_NONBLOCK) < 0)
        return cl_error_set(CL_EIO, "pipe: %s", strerror(errno));
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) < 0 || sigaction(SIGINT, &sa, NULL) < 0)
        return cl_error_set(CL_EIO, "sigaction: %s", strerror(errno));
    sa.sa_handler = SIG_IGN;
    if (sigaction(SIGPIPE, &sa, NULL) < 0)
        return cl_error_set(CL_EIO, "sigaction: %s", strerror(errno));
    *stop_fd = stop_pipe[0];
    return CL_OK;
}

int cl_small_server_send(int fd, const void *data, size_t len)
{
    const uint8_t *p = data;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return cl_error_set(CL_EIO, "send: %s", n < 0 ? strerror(errno) : "nothing sent");
        p += n;
        len -= (size_t)n;
    }
    return CL_OK;
}

int cl_stop_signals_caught(void)
{
    return stop_signal;
}

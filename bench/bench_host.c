/* Load for bench/host.sh: a backend and clients for byte forwarders.
 *
 *   bench_host serve --listen ADDR --mode sink|echo
 *       sink: read each connection to EOF, answer "<bytes>\n", close
 *       echo: send every byte back; after EOF and the last byte, close
 *       One thread, edge-triggered epoll, any number of connections.
 *   bench_host throughput --connect ADDR --bytes N
 *       N bytes to a sink, then EOF; timed until the sink's count arrives
 *   bench_host rate --connect ADDR --seconds S [--parallel P] [--size B]
 *       P threads, each: connect, B bytes (1024) out, EOF, B bytes back
 *       from an echo, close; again until S seconds have passed
 *   bench_host hold --connect ADDR --count N [--hold S]
 *       N connections at once, each echoes one byte, then prints
 *       "holding N" and keeps them S seconds (5)
 *
 * ADDR is tcp:HOST:PORT or unix:PATH.  The last line of a client's output
 * is "RESULT key=value ...". */
#include "cloister/core/address.h"
#include "cloister/core/encoding.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (256 * 1024)

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "bench_host: %s: %s\n", what, cl_error_message()[0] ? cl_error_message() : strerror(errno));
    exit(1);
}

static _Noreturn void usage(void)
{
    fprintf(stderr, "usage: bench_host serve --listen ADDR --mode sink|echo\n"
                    "       bench_host throughput --connect ADDR --bytes N\n"
                    "       bench_host rate --connect ADDR --seconds S [--parallel P] [--size B]\n"
                    "       bench_host hold --connect ADDR --count N [--hold S]\n");
    exit(2);
}

static const char *opt(int argc, char **argv, const char *name, const char *dflt)
{
    for (int i = 2; i + 1 < argc; i++)
        if (!strcmp(argv[i], name))
            return argv[i + 1];
    if (!dflt) {
        fprintf(stderr, "bench_host: %s is required\n", name);
        usage();
    }
    return dflt;
}

static uint64_t num(const char *text)
{
    uint64_t v;
    if (cl_parse_u64(text, UINT64_MAX, &v) < 0)
        die(text);
    return v;
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* ---- the backend ------------------------------------------------------------------------- */

typedef struct conn {
    int fd;
    uint64_t count;
    uint8_t *buf;
    size_t off, pending;
    bool eof;
} conn;

static bool echo_mode;

static void conn_close(int ep, conn *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->buf);
    free(c);
}

/* returns false when c was closed */
static bool serve_conn(int ep, conn *c)
{
    static uint8_t scratch[CHUNK];
    for (;;) {
        if (c->pending) {
            ssize_t n = send(c->fd, c->buf + c->off, c->pending, MSG_NOSIGNAL);
            if (n < 0 && errno == EAGAIN)
                return true;
            if (n < 0) {
                conn_close(ep, c);
                return false;
            }
            c->off += (size_t)n;
            c->pending -= (size_t)n;
            continue;
        }
        if (c->eof) {
            if (!echo_mode) {
                char line[32];
                int len = snprintf(line, sizeof line, "%llu\n", (unsigned long long)c->count);
                ssize_t ignored = send(c->fd, line, (size_t)len, MSG_NOSIGNAL);
                (void)ignored;
            }
            conn_close(ep, c);
            return false;
        }
        uint8_t *into = echo_mode ? c->buf : scratch;
        ssize_t n = recv(c->fd, into, echo_mode ? 65536 : CHUNK, 0);
        if (n < 0 && errno == EAGAIN)
            return true;
        if (n < 0) {
            conn_close(ep, c);
            return false;
        }
        if (n == 0) {
            c->eof = true;
            continue;
        }
        c->count += (uint64_t)n;
        if (echo_mode) {
            c->off = 0;
            c->pending = (size_t)n;
        }
    }
}

static _Noreturn void cmd_serve(int argc, char **argv)
{
    cl_address addr;
    if (cl_address_parse(opt(argc, argv, "--listen", NULL), &addr) < 0)
        die("--listen");
    const char *mode = opt(argc, argv, "--mode", NULL);
    echo_mode = !strcmp(mode, "echo");
    if (!echo_mode && strcmp(mode, "sink"))
        usage();
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    int lfd;
    if (cl_address_listen(&addr, 4096, &lfd) < 0)
        die("listen");
    if (fcntl(lfd, F_SETFL, fcntl(lfd, F_GETFL) | O_NONBLOCK) < 0)
        die("fcntl");
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    fprintf(stderr, "bench_host: listening mode=%s\n", mode);
    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        for (int i = 0; i < n; i++) {
            conn *c = events[i].data.ptr;
            if (c) {
                serve_conn(ep, c);
                continue;
            }
            for (int k = 0; k < 64; k++) {
                int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0)
                    break;
                c = calloc(1, sizeof *c);
                c->fd = fd;
                if (echo_mode)
                    c->buf = malloc(65536);
                struct epoll_event cev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
            }
        }
    }
}

/* ---- clients --------------------------------------------------------------------------------- */

static int dial(const cl_address *a)
{
    int fd;
    if (cl_address_connect(a, &fd) < 0)
        return -1;
    return fd;
}

static int cmd_throughput(int argc, char **argv)
{
    cl_address addr;
    if (cl_address_parse(opt(argc, argv, "--connect", NULL), &addr) < 0)
        die("--connect");
    uint64_t total = num(opt(argc, argv, "--bytes", NULL));
    static uint8_t buf[CHUNK];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (uint8_t)(i * 7 + 3);
    double start = now_s();
    int fd = dial(&addr);
    if (fd < 0)
        die("connect");
    uint64_t left = total;
    while (left) {
        size_t n = left < sizeof buf ? (size_t)left : sizeof buf;
        ssize_t w = send(fd, buf, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            die("send");
        left -= (uint64_t)w;
    }
    shutdown(fd, SHUT_WR);
    char line[64] = {0};
    size_t got = 0;
    for (;;) {
        ssize_t r = recv(fd, line + got, sizeof line - 1 - got, 0);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    double secs = now_s() - start;
    close(fd);
    uint64_t counted = strtoull(line, NULL, 10);
    if (counted != total) {
        fprintf(stderr, "bench_host: the sink counted %llu bytes, %llu were sent\n", (unsigned long long)counted,
                (unsigned long long)total);
        return 1;
    }
    printf("RESULT bytes=%llu seconds=%.3f mb_per_s=%.0f\n", (unsigned long long)total, secs, total / secs / 1e6);
    return 0;
}

typedef struct rate_ctx {
    cl_address addr;
    double deadline;
    size_t size;
    atomic_ulong done, errors;
} rate_ctx;

static void *rate_thread(void *arg)
{
    rate_ctx *r = arg;
    uint8_t out[65536], in[65536];
    memset(out, 'x', r->size);
    while (now_s() < r->deadline) {
        int fd = dial(&r->addr);
        if (fd < 0) {
            atomic_fetch_add(&r->errors, 1);
            usleep(1000);
            continue;
        }
        bool ok = send(fd, out, r->size, MSG_NOSIGNAL) == (ssize_t)r->size && shutdown(fd, SHUT_WR) == 0;
        size_t got = 0;
        while (ok) {
            ssize_t n = recv(fd, in, sizeof in, 0);
            if (n <= 0)
                break;
            got += (size_t)n;
        }
        close(fd);
        if (ok && got == r->size)
            atomic_fetch_add(&r->done, 1);
        else
            atomic_fetch_add(&r->errors, 1);
    }
    return NULL;
}

static int cmd_rate(int argc, char **argv)
{
    static rate_ctx r;
    if (cl_address_parse(opt(argc, argv, "--connect", NULL), &r.addr) < 0)
        die("--connect");
    double seconds = (double)num(opt(argc, argv, "--seconds", NULL));
    unsigned parallel = (unsigned)num(opt(argc, argv, "--parallel", "16"));
    r.size = (size_t)num(opt(argc, argv, "--size", "1024"));
    if (r.size == 0 || r.size > 65536 || parallel == 0 || parallel > 1024)
        usage();
    double start = now_s();
    r.deadline = start + seconds;
    pthread_t *t = calloc(parallel, sizeof *t);
    for (unsigned i = 0; i < parallel; i++)
        pthread_create(&t[i], NULL, rate_thread, &r);
    for (unsigned i = 0; i < parallel; i++)
        pthread_join(t[i], NULL);
    double secs = now_s() - start;
    free(t);
    unsigned long done = atomic_load(&r.done), errors = atomic_load(&r.errors);
    printf("RESULT connections=%lu errors=%lu seconds=%.2f conn_per_s=%.0f\n", done, errors, secs, done / secs);
    return errors > done / 100 ? 1 : 0;
}

static int cmd_hold(int argc, char **argv)
{
    cl_address addr;
    if (cl_address_parse(opt(argc, argv, "--connect", NULL), &addr) < 0)
        die("--connect");
    size_t count = (size_t)num(opt(argc, argv, "--count", NULL));
    unsigned hold = (unsigned)num(opt(argc, argv, "--hold", "5"));
    raise_nofile();
    int *fds = calloc(count, sizeof *fds);
    double start = now_s();
    for (size_t i = 0; i < count; i++) {
        fds[i] = dial(&addr);
        if (fds[i] < 0) {
            fprintf(stderr, "bench_host: connection %zu of %zu: %s\n", i + 1, count, cl_error_message());
            return 1;
        }
        char b = 'h';
        if (send(fds[i], &b, 1, MSG_NOSIGNAL) != 1)
            die("send");
    }
    for (size_t i = 0; i < count; i++) {
        char b = 0;
        struct timeval tv = {.tv_sec = 30};
        setsockopt(fds[i], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        if (recv(fds[i], &b, 1, 0) != 1 || b != 'h') {
            fprintf(stderr, "bench_host: connection %zu did not echo\n", i + 1);
            return 1;
        }
    }
    double secs = now_s() - start;
    printf("holding %zu\n", count);
    fflush(stdout);
    sleep(hold);
    for (size_t i = 0; i < count; i++)
        close(fds[i]);
    free(fds);
    printf("RESULT held=%zu open_seconds=%.2f\n", count, secs);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    if (!strcmp(argv[1], "serve"))
        cmd_serve(argc, argv);
    if (!strcmp(argv[1], "throughput"))
        return cmd_throughput(argc, argv);
    if (!strcmp(argv[1], "rate"))
        return cmd_rate(argc, argv);
    if (!strcmp(argv[1], "hold"))
        return cmd_hold(argc, argv);
    usage();
}

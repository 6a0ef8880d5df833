#include "cloister/core/loop.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 256
#define MAX_WAIT_MS 1000

/* A heap entry orders on the deadline its timer had when it was inserted or
 * last re-sorted: moving a deadline later changes the timer, not the key,
 * so the heap stays a heap. */
typedef struct {
    uint64_t key;
    cl_timer *t;
} heap_entry;

struct cl_loop {
    int epfd;
    int wake_fd;
    cl_watch wake_watch;
    cl_wake_fn wake_fn;
    void *wake_ctx;
    bool stopping;
    uint64_t now;
    cl_deferred *deferred;
    heap_entry *heap; /* 1-based binary min-heap on key */
    size_t heap_len, heap_cap;
};

uint64_t cl_monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void on_wake(cl_loop *loop, cl_watch *w, uint32_t events)
{
    (void)events;
    uint64_t n;
    while (read(w->fd, &n, sizeof n) > 0) {
    }
    if (loop->wake_fn)
        loop->wake_fn(loop, loop->wake_ctx);
}

int cl_loop_new(cl_loop **out)
{
    cl_loop *loop = calloc(1, sizeof *loop);
    if (!loop)
        return cl_error_set(CL_ENOMEM, "out of memory");
    loop->epfd = epoll_create1(EPOLL_CLOEXEC);
    loop->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (loop->epfd < 0 || loop->wake_fd < 0) {
        int e = errno;
        cl_loop_free(loop);
        return cl_error_set(CL_EIO, "cannot create an event loop: %s", strerror(e));
    }
    loop->now = cl_monotonic_ms();
    int rc = cl_loop_watch_listener(loop, &loop->wake_watch, loop->wake_fd, on_wake);
    if (rc < 0) {
        cl_loop_free(loop);
        return rc;
    }
    *out = loop;
    return CL_OK;
}

void cl_loop_free(cl_loop *loop)
{
    if (!loop)
        return;
    if (loop->epfd >= 0)
        close(loop->epfd);
    if (loop->wake_fd >= 0)
        close(loop->wake_fd);
    free(loop->heap);
    free(loop);
}

static int add(cl_loop *loop, cl_watch *w, int fd, cl_io_fn fn, uint32_t events)
{
    w->fd = fd;
    w->fn = fn;
    struct epoll_event ev = {.events = events, .data.ptr = w};
    if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        return cl_error_set(CL_EIO, "epoll_ctl(ADD, %d): %s", fd, strerror(errno));
    return CL_OK;
}

int cl_loop_watch(cl_loop *loop, cl_watch *w, int fd, cl_io_fn fn)
{
    return add(loop, w, fd, fn, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET);
}

int cl_loop_watch_listener(cl_loop *loop, cl_watch *w, int fd, cl_io_fn fn)
{
    /* EPOLLEXCLUSIVE: one of the loops sharing a listener wakes per event */
    uint32_t events = EPOLLIN | (fd == loop->wake_fd ? 0 : EPOLLEXCLUSIVE);
    return add(loop, w, fd, fn, events);
}

void cl_loop_unwatch(cl_loop *loop, cl_watch *w)
{
    if (w->fd >= 0)
        epoll_ctl(loop->epfd, EPOLL_CTL_DEL, w->fd, NULL);
    w->fd = -1;
}

void cl_loop_defer(cl_loop *loop, cl_deferred *d, void (*fn)(cl_deferred *d))
{
    if (d->pending)
        return;
    d->pending = true;
    d->fn = fn;
    d->next = loop->deferred;
    loop->deferred = d;
}

/* First in, first out, batch by batch: work deferred while a batch runs
 * waits for the next one.  An object released by a deferred call can
 * therefore have no call of its own still queued behind the release. */
static void run_deferred(cl_loop *loop)
{
    while (loop->deferred) {
        cl_deferred *batch = NULL;
        while (loop->deferred) { /* reverse the LIFO list */
            cl_deferred *d = loop->deferred;
            loop->deferred = d->next;
            d->next = batch;
            batch = d;
        }
        while (batch) {
            cl_deferred *d = batch;
            batch = d->next;
            d->pending = false;
            d->fn(d);
        }
    }
}

uint64_t cl_loop_now(const cl_loop *loop)
{
    return loop->now;
}

static void heap_swap(cl_loop *loop, size_t a, size_t b)
{
    heap_entry e = loop->heap[a];
    loop->heap[a] = loop->heap[b];
    loop->heap[b] = e;
    loop->heap[a].t->heap_index = a;
    loop->heap[b].t->heap_index = b;
}

static void heap_up(cl_loop *loop, size_t i)
{
    while (i > 1 && loop->heap[i / 2].key > loop->heap[i].key) {
        heap_swap(loop, i, i / 2);
        i /= 2;
    }
}

static void heap_down(cl_loop *loop, size_t i)
{
    for (;;) {
        size_t l = 2 * i, r = l + 1, m = i;
        if (l <= loop->heap_len && loop->heap[l].key < loop->heap[m].key)
            m = l;
        if (r <= loop->heap_len && loop->heap[r].key < loop->heap[m].key)
            m = r;
        if (m == i)
            return;
        heap_swap(loop, i, m);
        i = m;
    }
}

static void heap_remove(cl_loop *loop, cl_timer *t)
{
    size_t i = t->heap_index;
    t->heap_index = 0;
    if (i != loop->heap_len) {
        loop->heap[i] = loop->heap[loop->heap_len];
        loop->heap[i].t->heap_index = i;
        loop->heap_len--;
        heap_down(loop, i);
        heap_up(loop, i);
    } else {
        loop->heap_len--;
    }
}

void cl_timer_start(cl_loop *loop, cl_timer *t, uint64_t delay_ms, cl_timer_fn fn)
{
    uint64_t deadline = loop->now + delay_ms;
    t->fn = fn;
    if (t->heap_index) {
        /* Moving a deadline later is the common case (activity on a
         * connection): leave the heap alone and re-check when it pops. */
        if (deadline >= loop->heap[t->heap_index].key) {
            t->deadline_ms = deadline;
            return;
        }
        heap_remove(loop, t);
    }
    if (loop->heap_len + 1 >= loop->heap_cap) {
        size_t cap = loop->heap_cap ? loop->heap_cap * 2 : 64;
        heap_entry *heap = realloc(loop->heap, cap * sizeof *heap);
        if (!heap)
            return; /* the timer stays unscheduled; its owner's other limits still hold */
        loop->heap = heap;
        loop->heap_cap = cap;
    }
    t->deadline_ms = deadline;
    loop->heap[++loop->heap_len] = (heap_entry){deadline, t};
    t->heap_index = loop->heap_len;
    heap_up(loop, loop->heap_len);
}

void cl_timer_stop(cl_loop *loop, cl_timer *t)
{
    if (t->heap_index)
        heap_remove(loop, t);
}

/* A due entry whose timer's deadline has moved later is re-sorted on the
 * new deadline before it may fire, so that timers due in the same batch
 * fire in deadline order. */
static void run_timers(cl_loop *loop)
{
    while (loop->heap_len && loop->heap[1].key <= loop->now) {
        cl_timer *t = loop->heap[1].t;
        if (t->deadline_ms != loop->heap[1].key) {
            loop->heap[1].key = t->deadline_ms;
            heap_down(loop, 1);
            continue;
        }
        heap_remove(loop, t);
        t->fn(loop, t);
    }
}

int cl_loop_run(cl_loop *loop)
{
    struct epoll_event events[MAX_EVENTS];
    while (!loop->stopping) {
        int wait = MAX_WAIT_MS;
        if (loop->deferred) /* queued before the first run */
            wait = 0;
        else if (loop->heap_len) {
            uint64_t next = loop->heap[1].key;
            wait = next <= loop->now ? 0 : next - loop->now < MAX_WAIT_MS ? (int)(next - loop->now) : MAX_WAIT_MS;
        }
        int n = epoll_wait(loop->epfd, events, MAX_EVENTS, wait);
        if (n < 0 && errno != EINTR)
            return cl_error_set(CL_EIO, "epoll_wait: %s", strerror(errno));
        loop->now = cl_monotonic_ms();
        for (int i = 0; i < n; i++) {
            cl_watch *w = events[i].data.ptr;
            if (w->fd >= 0)
                w->fn(loop, w, events[i].events);
        }
        run_timers(loop);
        run_deferred(loop);
    }
    loop->stopping = false; /* the loop may be run again */
    return CL_OK;
}

void cl_loop_stop(cl_loop *loop)
{
    loop->stopping = true;
}

void cl_loop_set_wake_handler(cl_loop *loop, cl_wake_fn fn, void *ctx)
{
    loop->wake_fn = fn;
    loop->wake_ctx = ctx;
}

void cl_loop_wake(cl_loop *loop)
{
    uint64_t one = 1;
    ssize_t r = write(loop->wake_fd, &one, sizeof one);
    (void)r; /* a full counter already means "wake up" */
}

/* One event loop per thread: edge-triggered epoll, a timer heap, and a
 * wake-up channel for other threads.  Watched descriptors are registered
 * once for both directions; owners remember readiness themselves and work
 * until EAGAIN, so there is no epoll_ctl on the hot path. */
#ifndef CLOISTER_LOOP_H
#define CLOISTER_LOOP_H

#pragma GCC visibility push(default)

#include "cloister/core/error.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct cl_loop cl_loop;
typedef struct cl_watch cl_watch;
typedef struct cl_timer cl_timer;

typedef void (*cl_io_fn)(cl_loop *loop, cl_watch *w, uint32_t events);
typedef void (*cl_timer_fn)(cl_loop *loop, cl_timer *t);
typedef void (*cl_wake_fn)(cl_loop *loop, void *ctx);

/* Work run after the current batch of events: objects that other pending
 * events may still point to are released through this.  Embed one. */
typedef struct cl_deferred {
    struct cl_deferred *next;
    void (*fn)(struct cl_deferred *d);
    bool pending;
} cl_deferred;

struct cl_watch {
    int fd;
    cl_io_fn fn;
};

struct cl_timer {
    uint64_t deadline_ms; /* may move later without touching the heap */
    size_t heap_index;    /* 0: not scheduled */
    cl_timer_fn fn;
};

CL_MUST_CHECK int cl_loop_new(cl_loop **out);
void cl_loop_free(cl_loop *loop);

/* Edge-triggered registration for reading and writing (EPOLLIN | EPOLLOUT
 * | EPOLLRDHUP | EPOLLET), or exclusive level-triggered for listeners. */
CL_MUST_CHECK int cl_loop_watch(cl_loop *loop, cl_watch *w, int fd, cl_io_fn fn);
CL_MUST_CHECK int cl_loop_watch_listener(cl_loop *loop, cl_watch *w, int fd, cl_io_fn fn);
/* Stops events for w and sets w->fd to -1; events already fetched for it
 * in this batch are skipped.  Does not close the descriptor. */
void cl_loop_unwatch(cl_loop *loop, cl_watch *w);
void cl_loop_defer(cl_loop *loop, cl_deferred *d, void (*fn)(cl_deferred *d));

/* Milliseconds, monotonic, cached once per loop iteration. */
uint64_t cl_loop_now(const cl_loop *loop);

/* Fires fn once at now + delay_ms; calling again reschedules. */
void cl_timer_start(cl_loop *loop, cl_timer *t, uint64_t delay_ms, cl_timer_fn fn);
void cl_timer_stop(cl_loop *loop, cl_timer *t);

/* Runs until cl_loop_stop (after which it may be run again); returns 0 or an
 * error from epoll. */
CL_MUST_CHECK int cl_loop_run(cl_loop *loop);
void cl_loop_stop(cl_loop *loop);

/* Thread-safe: makes the loop call fn(loop, ctx) from its own thread. */
void cl_loop_set_wake_handler(cl_loop *loop, cl_wake_fn fn, void *ctx);
void cl_loop_wake(cl_loop *loop);

uint64_t cl_monotonic_ms(void);

#pragma GCC visibility pop

#endif

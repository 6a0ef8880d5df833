/* The event loop (lib/core/loop.c): timers, deferred work, edge-triggered
 * watches, cross-thread wake-ups.  Every test runs its loop under a guard
 * timer that stops it after GUARD_MS, so a broken loop fails, not hangs. */
#include "cloister/core/loop.h"
#include "test.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define GUARD_MS 2000

#define CONTAINER_OF(p, type, member) ((type *)(void *)((char *)(p) - offsetof(type, member)))

static cl_timer guard;
static bool guard_fired;

static void on_guard(cl_loop *loop, cl_timer *t)
{
    (void)t;
    guard_fired = true;
    cl_loop_stop(loop);
}

static cl_loop *new_loop(void)
{
    cl_loop *loop = NULL;
    CHECK_OK(cl_loop_new(&loop));
    if (!loop) {
        fprintf(stderr, "cannot create a loop\n");
        exit(1);
    }
    memset(&guard, 0, sizeof guard);
    guard_fired = false;
    cl_timer_start(loop, &guard, GUARD_MS, on_guard);
    return loop;
}

/* Runs the loop; the test fails if only the guard stopped it. */
static void run_guarded(cl_loop *loop)
{
    CHECK_OK(cl_loop_run(loop));
    if (guard_fired) {
        fprintf(stderr, "the guard timer had to stop the loop\n");
        CHECK(0);
    }
}

/* ---- timers ---- */

typedef struct {
    cl_timer t;
    int id;
    uint64_t deadline; /* expected, absolute */
    int fired;
    uint64_t fired_at;
} test_timer;

static int fire_order[2048];
static int fire_count;
static int stop_after; /* stop the loop after this many firings */

static void on_test_timer(cl_loop *loop, cl_timer *t)
{
    test_timer *tt = CONTAINER_OF(t, test_timer, t);
    tt->fired++;
    tt->fired_at = cl_loop_now(loop);
    if (fire_count < (int)(sizeof fire_order / sizeof fire_order[0]))
        fire_order[fire_count] = tt->id;
    fire_count++;
    if (fire_count == stop_after)
        cl_loop_stop(loop);
}

static void reset_firings(int stop)
{
    fire_count = 0;
    stop_after = stop;
}

static void start(cl_loop *loop, test_timer *tt, int id, uint64_t delay)
{
    tt->id = id;
    tt->deadline = cl_loop_now(loop) + delay;
    cl_timer_start(loop, &tt->t, delay, on_test_timer);
}

static void timers_fire_in_deadline_order(void)
{
    cl_loop *loop = new_loop();
    test_timer t[5];
    memset(t, 0, sizeof t);
    const uint64_t delays[5] = {50, 10, 40, 20, 30};
    for (int i = 0; i < 5; i++)
        start(loop, &t[i], i, delays[i]);
    reset_firings(5);
    run_guarded(loop);
    const int expect[5] = {1, 3, 4, 2, 0};
    CHECK(fire_count == 5);
    for (int i = 0; i < 5; i++) {
        CHECK(fire_order[i] == expect[i]);
        CHECK(t[i].fired == 1);
        CHECK(t[i].fired_at >= t[i].deadline); /* never early */
        CHECK(t[i].t.heap_index == 0);         /* no longer scheduled */
    }
    CHECK(cl_loop_now(loop) >= t[0].deadline);
    cl_loop_free(loop);
}

static void timer_zero_delay_and_restart(void)
{
    cl_loop *loop = new_loop();
    test_timer a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    start(loop, &a, 0, 0);
    reset_firings(1);
    run_guarded(loop);
    CHECK(a.fired == 1 && fire_count == 1);
    /* a fired timer can be started again, and a stopped one too */
    start(loop, &a, 0, 5);
    start(loop, &b, 1, 50);
    cl_timer_stop(loop, &b.t);
    cl_timer_stop(loop, &b.t); /* stopping twice is harmless */
    CHECK(b.t.heap_index == 0);
    start(loop, &b, 1, 10);
    reset_firings(2);
    run_guarded(loop);
    CHECK(a.fired == 2 && b.fired == 1 && fire_order[0] == 0 && fire_order[1] == 1);
    cl_timer_stop(loop, &a.t); /* stopping a timer that already fired is harmless */
    cl_loop_free(loop);
}

static void timer_reschedule_and_stop(void)
{
    cl_loop *loop = new_loop();
    test_timer t[4];
    memset(t, 0, sizeof t);
    start(loop, &t[0], 0, 10);
    start(loop, &t[1], 1, 20);
    start(loop, &t[2], 2, 30);
    start(loop, &t[3], 3, 40);
    start(loop, &t[0], 0, 50); /* later */
    start(loop, &t[2], 2, 5);  /* earlier */
    cl_timer_stop(loop, &t[3].t);
    reset_firings(3);
    run_guarded(loop);
    CHECK(fire_count == 3);
    CHECK(fire_order[0] == 2 && fire_order[1] == 1 && fire_order[2] == 0);
    CHECK(t[3].fired == 0);
    for (int i = 0; i < 3; i++)
        CHECK(t[i].fired == 1 && t[i].fired_at >= t[i].deadline);

    /* later, then earlier again but still later than at first */
    memset(t, 0, sizeof t);
    start(loop, &t[0], 0, 10);
    start(loop, &t[1], 1, 30);
    start(loop, &t[0], 0, 100);
    start(loop, &t[0], 0, 20);
    reset_firings(2);
    run_guarded(loop);
    CHECK(fire_count == 2 && fire_order[0] == 0 && fire_order[1] == 1);
    CHECK(t[0].fired_at >= t[0].deadline && t[1].fired_at >= t[1].deadline);
    cl_loop_free(loop);
}

/* A timer moved later while it has children in the heap must not hide
 * them: with deadlines inserted as 10, 20, 100, 40, 60 the heap is exactly
 * [10, 20, 100, 40, 60], and 40 and 60 sit under 20. */
static void postponed_timer_does_not_hide_others(void)
{
    cl_loop *loop = new_loop();
    cl_timer_stop(loop, &guard); /* the guard goes in last, not to shape the heap */
    test_timer t[5];
    memset(t, 0, sizeof t);
    const uint64_t delays[5] = {10, 20, 100, 40, 60};
    for (int i = 0; i < 5; i++)
        start(loop, &t[i], i, delays[i]);
    cl_timer_start(loop, &guard, GUARD_MS, on_guard);
    start(loop, &t[1], 1, 200); /* 20 -> 200 */
    reset_firings(5);
    run_guarded(loop);
    const int expect[5] = {0, 3, 4, 2, 1};
    CHECK(fire_count == 5);
    for (int i = 0; i < 5 && i < fire_count; i++) {
        if (fire_order[i] != expect[i]) {
            fprintf(stderr, "firing %d: timer %d, expected %d\n", i, fire_order[i], expect[i]);
            CHECK(0);
        }
    }
    for (int i = 0; i < 5; i++)
        CHECK(t[i].fired_at >= t[i].deadline && t[i].fired_at < t[i].deadline + 500);
    cl_loop_free(loop);
}

static uint32_t rng_state = 2463534242u;

static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}

#define MANY 1000

static void many_random_timers(void)
{
    cl_loop *loop = new_loop();
    static test_timer t[MANY];
    memset(t, 0, sizeof t);
    uint64_t base = cl_loop_now(loop);
    for (int i = 0; i < MANY; i++)
        start(loop, &t[i], i, rnd() % 300);
    /* move some later, some earlier, stop some */
    int stopped = 0;
    for (int i = 0; i < MANY; i++) {
        uint32_t r = rnd() % 10;
        if (r < 3)
            start(loop, &t[i], i, (t[i].deadline - cl_loop_now(loop)) + 1 + rnd() % 200);
        else if (r == 3)
            start(loop, &t[i], i, rnd() % 100);
        else if (r == 4) {
            cl_timer_stop(loop, &t[i].t);
            t[i].deadline = UINT64_MAX;
            stopped++;
        }
    }
    reset_firings(MANY - stopped);
    run_guarded(loop);
    CHECK(fire_count == MANY - stopped);
    int late = 0;
    for (int i = 0; i < fire_count && i < MANY; i++) {
        const test_timer *cur = &t[fire_order[i]];
        if (i > 0 && t[fire_order[i - 1]].deadline > cur->deadline) {
            fprintf(stderr, "timer %d (deadline +%llu) fired after timer %d (deadline +%llu)\n", cur->id,
                    (unsigned long long)(cur->deadline - base), fire_order[i - 1],
                    (unsigned long long)(t[fire_order[i - 1]].deadline - base));
            CHECK(0);
            break;
        }
        if (cur->fired_at > cur->deadline + 200)
            late++;
    }
    CHECK(late == 0);
    for (int i = 0; i < MANY; i++) {
        if (t[i].deadline == UINT64_MAX)
            CHECK(t[i].fired == 0);
        else
            CHECK(t[i].fired == 1 && t[i].fired_at >= t[i].deadline);
    }
    cl_loop_free(loop);
}

/* A timer callback may start, stop and reschedule timers, itself included. */
static test_timer periodic, victim;
static int periodic_runs;

static void on_periodic(cl_loop *loop, cl_timer *t)
{
    periodic_runs++;
    if (periodic_runs == 1)
        cl_timer_stop(loop, &victim.t); /* due now too, must not fire */
    if (periodic_runs < 5)
        cl_timer_start(loop, t, 2, on_periodic);
    else
        cl_loop_stop(loop);
}

static void timers_changed_from_callbacks(void)
{
    cl_loop *loop = new_loop();
    memset(&periodic, 0, sizeof periodic);
    memset(&victim, 0, sizeof victim);
    periodic_runs = 0;
    cl_timer_start(loop, &periodic.t, 3, on_periodic);
    start(loop, &victim, 9, 5);
    reset_firings(-1);
    run_guarded(loop);
    CHECK(periodic_runs == 5);
    CHECK(victim.fired == 0 && fire_count == 0); /* stopped before it was due */
    CHECK(periodic.t.heap_index == 0);
    cl_loop_free(loop);
}

/* ---- deferred work ---- */

typedef struct {
    cl_deferred d;
    int id;
} test_deferred;

static int defer_order[64];
static int defer_count;
static cl_loop *defer_loop;
static test_deferred chained;

static void on_deferred(cl_deferred *d)
{
    test_deferred *td = CONTAINER_OF(d, test_deferred, d);
    if (defer_count < 64)
        defer_order[defer_count] = td->id;
    defer_count++;
}

static void on_deferred_chaining(cl_deferred *d)
{
    on_deferred(d);
    /* queued while a batch runs: after the items already queued */
    cl_loop_defer(defer_loop, &chained.d, on_deferred);
}

static test_timer defer_t1, defer_t2;
static test_deferred da, db, dc, dchain;
static int defer_seen_in_t2 = -1;

static void on_defer_t1(cl_loop *loop, cl_timer *t)
{
    (void)t;
    cl_loop_defer(loop, &da.d, on_deferred);
    cl_loop_defer(loop, &dchain.d, on_deferred_chaining);
    cl_loop_defer(loop, &db.d, on_deferred);
    cl_loop_defer(loop, &da.d, on_deferred); /* already queued: runs once */
    cl_loop_defer(loop, &dc.d, on_deferred);
    CHECK(da.d.pending && dc.d.pending);
}

static void on_defer_t2(cl_loop *loop, cl_timer *t)
{
    (void)loop;
    (void)t;
    defer_seen_in_t2 = defer_count; /* same batch as t1: nothing ran yet */
}

static void on_stop_deferred(cl_deferred *d)
{
    on_deferred(d);
    cl_loop_stop(defer_loop);
}

static test_timer stopper;
static test_deferred dstop;

/* Stops the loop after ms through on_test_timer (counted in fire_count). */
static void arm_stopper(cl_loop *loop, uint64_t ms)
{
    memset(&stopper, 0, sizeof stopper);
    start(loop, &stopper, 99, ms);
    reset_firings(1);
}

static void on_stopper(cl_loop *loop, cl_timer *t)
{
    (void)t;
    cl_loop_defer(loop, &dstop.d, on_stop_deferred);
}

static void deferred_fifo_after_batch(void)
{
    cl_loop *loop = new_loop();
    defer_loop = loop;
    defer_count = 0;
    defer_seen_in_t2 = -1;
    memset(&da, 0, sizeof da);
    memset(&db, 0, sizeof db);
    memset(&dc, 0, sizeof dc);
    memset(&dchain, 0, sizeof dchain);
    memset(&chained, 0, sizeof chained);
    memset(&dstop, 0, sizeof dstop);
    da.id = 1, dchain.id = 2, db.id = 3, dc.id = 4, chained.id = 5, dstop.id = 6;
    /* equal deadlines: both timers fire in one batch, t1 first (it is at
     * the top of the heap) */
    memset(&stopper, 0, sizeof stopper);
    cl_timer_start(loop, &defer_t1.t, 10, on_defer_t1);
    cl_timer_start(loop, &defer_t2.t, 10, on_defer_t2);
    cl_timer_start(loop, &stopper.t, 30, on_stopper);
    run_guarded(loop);
    CHECK(defer_seen_in_t2 == 0);
    const int expect[] = {1, 2, 3, 4, 5, 6};
    CHECK(defer_count == 6);
    for (int i = 0; i < 6 && i < defer_count; i++)
        CHECK(defer_order[i] == expect[i]);
    CHECK(!da.d.pending && !chained.d.pending);
    cl_loop_free(loop);
}

/* Work deferred before the loop runs is not left waiting for an event. */
static void deferred_before_run(void)
{
    cl_loop *loop = new_loop();
    defer_loop = loop;
    defer_count = 0;
    memset(&dstop, 0, sizeof dstop);
    dstop.id = 1;
    cl_loop_defer(loop, &dstop.d, on_stop_deferred);
    uint64_t begin = cl_monotonic_ms();
    run_guarded(loop);
    CHECK(defer_count == 1);
    uint64_t took = cl_monotonic_ms() - begin;
    if (took > 200) {
        fprintf(stderr, "deferred work waited %llu ms\n", (unsigned long long)took);
        CHECK(0);
    }
    cl_loop_free(loop);
}

/* ---- watches ---- */

typedef struct {
    cl_watch w;
    int in_events, out_events, rdhup_events, calls;
    cl_watch *unwatch_other;
    cl_deferred *defer_on_call;
    int deferred_seen;
} test_watch;

static void on_io(cl_loop *loop, cl_watch *w, uint32_t events)
{
    test_watch *tw = CONTAINER_OF(w, test_watch, w);
    tw->calls++;
    if (events & EPOLLIN)
        tw->in_events++;
    if (events & EPOLLOUT)
        tw->out_events++;
    if (events & EPOLLRDHUP)
        tw->rdhup_events++;
    tw->deferred_seen = defer_count;
    if (tw->unwatch_other)
        cl_loop_unwatch(loop, tw->unwatch_other);
    if (tw->defer_on_call)
        cl_loop_defer(loop, tw->defer_on_call, on_deferred);
}

static void make_pair(int sv[2])
{
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) {
        perror("socketpair");
        exit(1);
    }
}

/* Steps of the edge-triggered scenario, driven by one timer. */
static test_watch et;
static int et_peer, et_step;
static int et_in_before_second_write, et_in_after_idle, et_in_after_second_write, et_in_after_close;
static test_timer et_timer;

static void on_et_step(cl_loop *loop, cl_timer *t)
{
    char buf[64];
    switch (et_step++) {
    case 0: /* data arrives */
        CHECK(write(et_peer, "hello", 5) == 5);
        break;
    case 1: /* nothing new arrived: no new event, although data is unread */
        et_in_before_second_write = et.in_events;
        break;
    case 2:
        et_in_after_idle = et.in_events;
        CHECK(write(et_peer, "again", 5) == 5);
        break;
    case 3: /* read all, then the peer closes */
        et_in_after_second_write = et.in_events;
        CHECK(read(et.w.fd, buf, sizeof buf) == 10);
        CHECK(read(et.w.fd, buf, sizeof buf) < 0 && errno == EAGAIN);
        close(et_peer);
        et_peer = -1;
        break;
    case 4:
        et_in_after_close = et.in_events;
        cl_loop_stop(loop);
        return;
    }
    cl_timer_start(loop, t, 30, on_et_step);
}

static void watch_edge_triggered(void)
{
    cl_loop *loop = new_loop();
    int sv[2];
    make_pair(sv);
    memset(&et, 0, sizeof et);
    et_peer = sv[1];
    et_step = 0;
    CHECK_OK(cl_loop_watch(loop, &et.w, sv[0], on_io));
    CHECK(et.w.fd == sv[0] && et.w.fn == on_io);
    cl_timer_start(loop, &et_timer.t, 30, on_et_step);
    run_guarded(loop);
    CHECK(et.out_events >= 1); /* writable from the start */
    CHECK(et_in_before_second_write == 1);
    CHECK(et_in_after_idle == 1);
    CHECK(et_in_after_second_write == 2);
    CHECK(et_in_after_close == 3 && et.rdhup_events == 1);
    CHECK(et.calls <= 4); /* one per edge, not one per loop iteration */
    cl_loop_unwatch(loop, &et.w);
    CHECK(et.w.fd == -1);
    cl_loop_unwatch(loop, &et.w); /* twice is harmless */
    close(sv[0]);
    cl_loop_free(loop);
}

/* Events already fetched for a watch that is unwatched during the batch
 * are skipped; deferred work runs after the whole batch. */
static void unwatch_during_batch(void)
{
    cl_loop *loop = new_loop();
    defer_loop = loop;
    defer_count = 0;
    int p1[2], p2[2];
    make_pair(p1);
    make_pair(p2);
    static test_watch a, b;
    static test_deferred d;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    memset(&d, 0, sizeof d);
    CHECK_OK(cl_loop_watch(loop, &a.w, p1[0], on_io));
    CHECK_OK(cl_loop_watch(loop, &b.w, p2[0], on_io));
    a.unwatch_other = &b.w;
    b.unwatch_other = &a.w;
    a.defer_on_call = b.defer_on_call = &d.d;
    /* both are readable and writable: both events are in the first batch */
    CHECK(write(p1[1], "x", 1) == 1);
    CHECK(write(p2[1], "y", 1) == 1);
    arm_stopper(loop, 50);
    run_guarded(loop);
    CHECK(a.calls + b.calls == 1);
    CHECK((a.calls == 1 && b.w.fd == -1 && a.w.fd == p1[0]) || (b.calls == 1 && a.w.fd == -1 && b.w.fd == p2[0]));
    CHECK(defer_count == 1);
    CHECK(a.deferred_seen == 0 && b.deferred_seen == 0);
    /* the unwatched side hears nothing more */
    test_watch *gone = a.calls ? &b : &a;
    int *gone_peer = a.calls ? &p2[1] : &p1[1];
    CHECK(write(*gone_peer, "z", 1) == 1);
    arm_stopper(loop, 50);
    run_guarded(loop);
    CHECK(gone->calls == 0);
    close(p1[0]);
    close(p1[1]);
    close(p2[0]);
    close(p2[1]);
    cl_loop_free(loop);
}

/* Deferred work queued by I/O callbacks waits for the other events of the batch. */
static void deferred_after_io_batch(void)
{
    cl_loop *loop = new_loop();
    defer_loop = loop;
    defer_count = 0;
    int p1[2], p2[2];
    make_pair(p1);
    make_pair(p2);
    static test_watch a, b;
    static test_deferred da_, db_;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    memset(&da_, 0, sizeof da_);
    memset(&db_, 0, sizeof db_);
    a.defer_on_call = &da_.d;
    b.defer_on_call = &db_.d;
    CHECK_OK(cl_loop_watch(loop, &a.w, p1[0], on_io));
    CHECK_OK(cl_loop_watch(loop, &b.w, p2[0], on_io));
    arm_stopper(loop, 30);
    run_guarded(loop);
    CHECK(a.calls == 1 && b.calls == 1);
    CHECK(a.deferred_seen == 0 && b.deferred_seen == 0);
    CHECK(defer_count == 2);
    close(p1[0]);
    close(p1[1]);
    close(p2[0]);
    close(p2[1]);
    cl_loop_free(loop);
}

static void watch_errors(void)
{
    cl_loop *loop = new_loop();
    cl_watch w;
    CHECK_ERR(cl_loop_watch(loop, &w, -1, on_io), CL_EIO, "epoll_ctl");
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    CHECK(fd >= 0);
    CHECK_ERR(cl_loop_watch(loop, &w, fd, on_io), CL_EIO, "epoll_ctl"); /* not pollable */
    close(fd);
    int sv[2];
    make_pair(sv);
    CHECK_OK(cl_loop_watch(loop, &w, sv[0], on_io));
    cl_watch w2;
    CHECK_ERR(cl_loop_watch(loop, &w2, sv[0], on_io), CL_EIO, "epoll_ctl"); /* already watched */
    cl_loop_unwatch(loop, &w);
    CHECK_OK(cl_loop_watch_listener(loop, &w, sv[0], on_io));
    cl_loop_unwatch(loop, &w);
    close(sv[0]);
    close(sv[1]);
    cl_loop_free(loop);
    cl_loop_free(NULL);
}

/* ---- wake-ups and stop ---- */

static pthread_t loop_thread;
static int wake_calls;
static bool wake_in_loop_thread = true;
static void *wake_ctx_seen;

static void on_wake(cl_loop *loop, void *ctx)
{
    wake_calls++;
    wake_ctx_seen = ctx;
    if (!pthread_equal(pthread_self(), loop_thread))
        wake_in_loop_thread = false;
    cl_loop_stop(loop);
}

static void *waker(void *arg)
{
    usleep(20 * 1000);
    cl_loop_wake(arg);
    return NULL;
}

static void wake_from_other_thread(void)
{
    cl_loop *loop = new_loop();
    loop_thread = pthread_self();
    wake_calls = 0;
    cl_loop_set_wake_handler(loop, on_wake, &wake_calls);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, waker, loop) == 0);
    uint64_t begin = cl_monotonic_ms();
    run_guarded(loop);
    uint64_t took = cl_monotonic_ms() - begin;
    pthread_join(th, NULL);
    CHECK(wake_calls == 1 && wake_in_loop_thread && wake_ctx_seen == &wake_calls);
    CHECK(took < 1000);
    cl_loop_free(loop);
}

static void wakes_coalesce(void)
{
    cl_loop *loop = new_loop();
    loop_thread = pthread_self();
    wake_calls = 0;
    cl_loop_set_wake_handler(loop, on_wake, NULL);
    for (int i = 0; i < 100; i++)
        cl_loop_wake(loop);
    run_guarded(loop);
    CHECK(wake_calls == 1);
    /* drained: no second call without a new wake */
    cl_loop_set_wake_handler(loop, on_wake, NULL);
    arm_stopper(loop, 50);
    run_guarded(loop);
    CHECK(wake_calls == 1);
    /* a wake without a handler is harmless */
    cl_loop_set_wake_handler(loop, NULL, NULL);
    cl_loop_wake(loop);
    arm_stopper(loop, 20);
    run_guarded(loop);
    CHECK(wake_calls == 1);
    cl_loop_free(loop);
}

/* cl_loop_stop ends the run after the current batch, whose deferred work
 * still runs. */
static test_deferred stop_cleanup;
static test_timer stop_timer, late_timer;

static void on_stop_timer(cl_loop *loop, cl_timer *t)
{
    (void)t;
    cl_loop_stop(loop);
    cl_loop_defer(loop, &stop_cleanup.d, on_deferred);
}

static void stop_ends_run(void)
{
    cl_loop *loop = new_loop();
    defer_loop = loop;
    defer_count = 0;
    memset(&stop_cleanup, 0, sizeof stop_cleanup);
    memset(&late_timer, 0, sizeof late_timer);
    cl_timer_start(loop, &stop_timer.t, 10, on_stop_timer);
    uint64_t stop_deadline = cl_loop_now(loop) + 10;
    start(loop, &late_timer, 1, 300);
    reset_firings(-1);
    uint64_t begin = cl_monotonic_ms();
    run_guarded(loop);
    uint64_t took = cl_monotonic_ms() - begin;
    CHECK(took < 300 && cl_loop_now(loop) >= stop_deadline);
    CHECK(defer_count == 1);
    CHECK(late_timer.fired == 0 && late_timer.t.heap_index != 0); /* still scheduled */
    cl_timer_stop(loop, &late_timer.t);
    cl_loop_free(loop);
}

static void clock_and_now(void)
{
    cl_loop *loop = new_loop();
    uint64_t a = cl_monotonic_ms();
    usleep(5 * 1000);
    uint64_t b = cl_monotonic_ms();
    CHECK(b >= a + 4);
    /* cl_loop_now is cached: it does not move outside the loop */
    uint64_t n = cl_loop_now(loop);
    usleep(5 * 1000);
    CHECK(cl_loop_now(loop) == n);
    CHECK(n <= cl_monotonic_ms());
    cl_loop_free(loop);
}

int main(void)
{
    RUN(timers_fire_in_deadline_order);
    RUN(timer_zero_delay_and_restart);
    RUN(timer_reschedule_and_stop);
    RUN(postponed_timer_does_not_hide_others);
    RUN(many_random_timers);
    RUN(timers_changed_from_callbacks);
    RUN(deferred_fifo_after_batch);
    RUN(deferred_before_run);
    RUN(watch_edge_triggered);
    RUN(unwatch_during_batch);
    RUN(deferred_after_io_batch);
    RUN(watch_errors);
    RUN(wake_from_other_thread);
    RUN(wakes_coalesce);
    RUN(stop_ends_run);
    RUN(clock_and_now);
    return test_summary();
}

/* What the connection kinds (forward.c, imds.c) share with the worker that
 * runs them (host_worker.c) and with host.c, which starts the workers and
 * dispatches accepted connections to the kinds.  Not installed. */
#ifndef CLOISTER_HOST_WORKER_H
#define CLOISTER_HOST_WORKER_H

#include "cloister/host/host.h"
#include "cloister/core/loop.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define HOST_CONTAINER(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* A route's current destination addresses, in memory shared by the
 * parent (which writes them after each resolution) and the workers. */
typedef struct host_dest {
    pthread_mutex_t lock; /* process-shared, robust */
    uint32_t count;
    uint32_t generation;
    socklen_t lens[CL_HOST_MAX_ADDRS];
    struct sockaddr_storage addrs[CL_HOST_MAX_ADDRS];
} host_dest;

typedef struct host_shared {
    _Atomic int64_t active;                          /* open connections, all workers */
    _Atomic int64_t worker_active[CL_HOST_MAX_WORKERS]; /* each worker's share, for a dead worker */
    _Atomic uint64_t accepted, refused;
    _Atomic int draining; /* set by the parent on SIGTERM: health routes answer 503 */
    host_dest dests[]; /* one per route */
} host_shared;

typedef struct host_worker host_worker;

/* The head of every connection object, whatever its kind. */
typedef struct host_conn {
    struct host_conn *prev, *next;
    void (*close)(struct host_conn *c, const char *reason);
    /* called again in the next loop iteration after host_conn_yield */
    void (*again)(struct host_conn *c);
    struct host_conn *ready_prev, *ready_next;
    bool ready;
    cl_deferred free_later;
} host_conn;

typedef struct host_listener {
    cl_watch watch;
    int fd;
    bool watching;
    host_worker *w;
    const cl_host_route *route;
    size_t index; /* of the route, and of its host_dest */
} host_listener;

typedef struct host_pipe {
    int r, w;
} host_pipe;

struct host_worker {
    cl_loop *loop;
    /* host.c's dispatch to the connection kinds, watched on every listener */
    void (*on_accept)(cl_loop *loop, cl_watch *watch, uint32_t events);
    const cl_host_config *cfg;
    host_shared *shared;
    unsigned id;
    host_listener *listeners;
    size_t listener_count;
    host_conn conns; /* list sentinel */
    host_conn ready; /* connections that yielded with work left: sentinel */
    size_t conn_count, conn_budget;
    bool paused_budget, paused_error, stopping;
    bool quiescing; /* stopped accepting (SIGUSR1): the loop ends with the last connection */
    cl_watch signal_watch;
    cl_timer resume_timer;
    uint64_t idle_ms, connect_ms;
    /* pools of pipes and copy buffers, used only while bytes are in flight */
    host_pipe *pipes;
    size_t pipe_pool, pipe_pool_cap, pipes_open, pipe_limit;
    void **bufs;
    size_t buf_pool, buf_pool_cap;
    uint64_t next_id;
    /* warnings repeated per connection are limited to one a second */
    uint64_t warn_window;
    unsigned warn_count, warn_suppressed;
};

#define HOST_PIPE_BYTES (256 * 1024)
#define HOST_BUF_BYTES (64 * 1024)

/* Locks d; recovers the lock of a worker that died holding it. */
void host_dest_lock(host_dest *d);
/* Watches the listeners while the worker may accept, unwatches them while
 * it is stopping, over its budget or pausing after an error. */
void host_listeners_update(host_worker *w);
/* The loop's wake-up handler: one more turn for connections that yielded. */
void host_worker_on_wake(cl_loop *loop, void *ctx);

/* Registers c (counted against the budget) / unregisters it. */
void host_conn_add(host_worker *w, host_conn *c);
void host_conn_remove(host_worker *w, host_conn *c);
/* c stopped with work left so that others get a turn: c->again(c) runs in
 * the next loop iteration, after the events that iteration brings.  (Not a
 * cl_deferred: deferred work runs until none is left, so a connection that
 * always has more would never let the loop wait for events again.) */
void host_conn_yield(host_worker *w, host_conn *c);
/* Gives back the slot taken at accept for a connection never added. */
void host_slot_release(host_worker *w);

/* Copies address number `attempt` of route `index`; CL_ENOTFOUND past
 * the last one. */
CL_MUST_CHECK int host_dest_pick(host_worker *w, size_t index, unsigned attempt, struct sockaddr_storage *out,
                                 socklen_t *len);

/* Starts a non-blocking connect: 0 (with *in_progress when the result
 * comes later, on EPOLLOUT) or CL_EIO with *err the errno (EAGAIN: a unix
 * listener's backlog is full, try again later). */
CL_MUST_CHECK int host_connect_start(const struct sockaddr *sa, socklen_t len, int *fd, bool *in_progress, int *err);
/* After EPOLLOUT: 0 with *connected false when the connect is still in
 * progress (a stale event), or CL_EIO with *err the errno. */
CL_MUST_CHECK int host_connect_result(int fd, bool *connected, int *err);

bool host_pipe_get(host_worker *w, host_pipe *p);
/* clean: the pipe is empty and may be reused. */
void host_pipe_put(host_worker *w, host_pipe *p, bool clean);
void *host_buf_get(host_worker *w);
void host_buf_put(host_worker *w, void *buf);

/* cl_log at warn level, at most one line a second per worker for events
 * that repeat per connection; the next line says how many were dropped. */
void host_warn_limited(host_worker *w, const char *event, ...);
bool host_debug(void);
void host_conn_id(const host_worker *w, uint64_t id, char out[24]);

/* Connection kinds. */
void forward_accept(host_worker *w, host_listener *l, int fd, const struct sockaddr_storage *peer, socklen_t peer_len);
void imds_accept(host_worker *w, host_listener *l, int fd);

#endif

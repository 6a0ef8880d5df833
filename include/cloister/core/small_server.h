/* The small servers' one accept loop: thread-per-connection servers
 * (nsm-sim, imds-sim, the key-holder) that serve a few local clients.
 *
 * cl_small_server_run accepts on up to CL_SMALL_SERVER_LISTENERS listening
 * sockets, runs serve() for each connection on its own thread (at most
 * max_connections at once; more are refused and closed), and returns when
 * stop_fd becomes readable.  Before it returns it shuts every connection
 * down and JOINS every connection thread: nothing a connection thread does
 * (its thread-local cleanup included) can still run once it has returned,
 * so the caller may free what serve() uses.  Finished threads are joined
 * as the loop goes, so their stacks do not pile up either. */
#ifndef CLOISTER_CORE_SMALL_SERVER_H
#define CLOISTER_CORE_SMALL_SERVER_H

#pragma GCC visibility push(default)

#include "cloister/core/error.h"

#include <stddef.h>
#include <stdint.h>

#define CL_SMALL_SERVER_LISTENERS 4

/* Serves one accepted connection until it ends; the helper closes fd
 * afterwards.  `listener` is the index of the socket it came in on, `id`
 * counts connections from 1. */
typedef void (*cl_small_server_serve_fn)(void *arg, int fd, size_t listener, unsigned long id);

typedef struct cl_small_server_config {
    const int *listen_fds;
    size_t listen_count;       /* 1..CL_SMALL_SERVER_LISTENERS */
    int stop_fd;               /* readable: stop (e.g. cl_stop_signals_install's) */
    unsigned max_connections;  /* at once; at least 1 */
    cl_small_server_serve_fn serve;
    void *arg;
    /* optional: called about every tick_ms on the accept loop's thread */
    void (*tick)(void *arg);
    unsigned tick_ms;
    /* optional: a connection refused (too many, no memory, no thread) */
    void (*refused)(void *arg, unsigned long id, const char *reason);
} cl_small_server_config;

/* CL_OK after a stop; a cl_err when the loop itself failed (poll).  In
 * both cases every connection thread has been joined. */
CL_MUST_CHECK int cl_small_server_run(const cl_small_server_config *config);

/* All of data on a connection's socket (EINTR retried, no SIGPIPE): CL_OK,
 * or CL_EIO when the peer went away. */
CL_MUST_CHECK int cl_small_server_send(int fd, const void *data, size_t len);

/* SIGTERM and SIGINT make *stop_fd readable (a self-pipe); SIGPIPE is
 * ignored.  For one server per process. */
CL_MUST_CHECK int cl_stop_signals_install(int *stop_fd);
/* The signal that asked to stop, 0 if none yet. */
int cl_stop_signals_caught(void);

#pragma GCC visibility pop

#endif

/* A supervised child process: started through /bin/sh -c, its stdout and
 * stderr passed through to the log line by line, restarted with
 * exponential backoff when it dies, and stopped (SIGTERM to its process
 * group, then SIGKILL after a grace period) on request.  Started either
 * directly or, under a seccomp filter, by the app launcher
 * (cloister/enclave/launcher.h), which the policy here then drives. */
#ifndef CLOISTER_SUPERVISE_H
#define CLOISTER_SUPERVISE_H

#pragma GCC visibility push(default)

#include "cloister/core/error.h"
#include "cloister/enclave/launcher.h"

#include <stdint.h>

typedef struct cl_child cl_child;

typedef struct cl_child_config {
    const char *name;    /* for logs: "app" */
    const char *command; /* shell command line */
    char *const *env;    /* extra "NAME=value" entries for the child, NULL-ended; may be NULL */
    unsigned backoff_initial_ms; /* default 500 */
    unsigned backoff_max_ms;     /* default 30 s */
    unsigned stable_after_ms;    /* a run this long resets the backoff; default 30 s */
    /* when set: every start, exit and stop goes through this launcher,
     * which holds the command and environment (command and env above are
     * then only for the logs and unused); owned from cl_child_start on,
     * also when it fails.  The process never signals or waits for the app
     * itself then. */
    cl_launcher *launcher;
} cl_child_config;

/* Starts the child and a thread that watches it.  The strings are copied. */
CL_MUST_CHECK int cl_child_start(const cl_child_config *cfg, cl_child **out);
/* Stops and frees: SIGTERM, then SIGKILL after grace_ms. */
void cl_child_stop(cl_child *c, unsigned grace_ms);
/* How many times the child was restarted after dying. */
uint64_t cl_child_restarts(const cl_child *c);

#pragma GCC visibility pop

#endif

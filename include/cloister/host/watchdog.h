/* The watchdog that owns an enclave's life on the parent instance.
 *
 * It starts the enclave through one of two runners:
 *   nitro-cli  `nitro-cli run-enclave ...` (cloister/nitro_cli.h); the enclave
 *              is alive while describe-enclaves lists its EnclaveID as RUNNING;
 *   local      a command line run by /bin/sh -c in its own process group (the
 *              local stand-in: `cloister enclave ...`, maybe under
 *              `ip netns exec`); alive while that process runs.  Its output is
 *              passed through to the log.
 * and checks it every health_interval: liveness as above, plus optionally a
 * probe over the enclave's channel, either an HTTP/1.1 GET (healthy: any
 * status below 500) or a bare connect.  health_failures consecutive failed
 * probes make it unhealthy; before its first success a starting enclave has
 * start_timeout to become healthy.
 *
 * When the enclave dies or is unhealthy the watchdog terminates it
 * (terminate-enclave, or SIGTERM then SIGKILL to the process group) and
 * starts it again after an exponential backoff (backoff_initial doubling up
 * to backoff_max; back to backoff_initial once a run stayed up for
 * stable_after), at most restart_budget restarts within any restart_window:
 * one more and it gives up (state FAILED) and cl_watchdog_wait() returns
 * an error.  Every state change is one log line
 *   event=enclave_state from=starting to=running reason=healthy ...
 * and is reported to the optional callback.
 *
 * nitro-cli runner: before each start, an enclave already running under our
 * name (--enclave-name, else the EIF's file name without extension, as
 * nitro-cli names it) is a leftover of an unclean stop and is terminated.
 *
 * It runs in its own thread, which inherits the caller's signal mask: a
 * program that takes signals through sigwait()/signalfd() blocks them before
 * cl_watchdog_start().  Children (nitro-cli, the local command) start with an
 * empty signal mask, SIGPIPE at its default, stdin from /dev/null, in their
 * own process group, and inherit the environment: call
 * cl_sd_notify_detach_env() first so that they do not see $NOTIFY_SOCKET. */
#ifndef CLOISTER_WATCHDOG_H
#define CLOISTER_WATCHDOG_H

#pragma GCC visibility push(default)

#include "cloister/core/error.h"
#include "cloister/core/options.h"
#include "cloister/host/nitro_cli.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

enum cl_watchdog_runner { CL_WATCHDOG_NITRO_CLI, CL_WATCHDOG_LOCAL };

enum cl_enclave_state {
    CL_ENCLAVE_STOPPED,     /* before the first start, and after a requested stop */
    CL_ENCLAVE_STARTING,    /* started, not yet seen healthy */
    CL_ENCLAVE_RUNNING,     /* alive and healthy */
    CL_ENCLAVE_TERMINATING, /* being terminated (dead, unhealthy, or stop requested) */
    CL_ENCLAVE_BACKOFF,     /* waiting before the next start */
    CL_ENCLAVE_FAILED,      /* restart budget exhausted: given up */
};

typedef void (*cl_watchdog_state_fn)(void *ctx, int from, int to, const char *reason);

typedef struct cl_watchdog_config {
    int runner; /* enum cl_watchdog_runner */
    /* nitro-cli runner */
    cl_nitro_cli nitro;      /* program path and timeouts (defaults when zero) */
    cl_nitro_run_config run; /* run-enclave's arguments */
    /* local runner */
    const char *command;    /* shell command line */
    unsigned stop_grace_ms; /* SIGTERM -> SIGKILL; default 10 s */

    /* health probe, at most one of the two; none: alive means healthy */
    const char *health_url;     /* "ADDR,PATH": GET PATH over ADDR (unix:, tcp:, vsock: on Nitro) */
    const char *health_connect; /* "ADDR": a connect succeeds */
    unsigned health_interval_ms; /* default 5 s */
    unsigned health_timeout_ms;  /* one probe; default 2 s, at most the interval */
    unsigned health_failures;    /* consecutive failures = unhealthy; default 3 */
    unsigned start_timeout_ms;   /* starting -> unhealthy if not healthy by then; default 120 s */

    /* Before each termination (a stop, or a restart of a live enclave):
     * POST PATH over ADDR ("ADDR,PATH": cloister enclave's /enclave/drain),
     * then up to drain_wait_ms (default 40 s) for the enclave to end by
     * itself, its requests in flight finished; only then terminate-enclave
     * or SIGTERM.  Without it a local enclave still drains on SIGTERM, but
     * nitro-cli's terminate-enclave cuts everything at once. */
    const char *drain_url;
    unsigned drain_wait_ms;

    /* restarts */
    unsigned restart_budget;      /* restarts allowed within the window, when restart_budget_set */
    bool restart_budget_set;      /* else the default, 5; so 0 can mean "never restart" */
    unsigned restart_window_ms;   /* default 10 min */
    unsigned backoff_initial_ms;  /* default 1 s */
    unsigned backoff_max_ms;      /* default 60 s */
    unsigned stable_after_ms;     /* default 60 s */

    cl_watchdog_state_fn on_state; /* optional; called from the watchdog thread */
    void *on_state_ctx;
} cl_watchdog_config;

typedef struct cl_watchdog cl_watchdog;

typedef struct cl_watchdog_status {
    int state;                   /* enum cl_enclave_state */
    unsigned restarts;           /* since cl_watchdog_start */
    int64_t pid;                 /* local: the child; nitro-cli: ProcessID; 0 when none */
    char enclave_id[CL_NITRO_ID_MAX]; /* nitro-cli: EnclaveID; "" otherwise */
    uint64_t cid;                /* nitro-cli: EnclaveCID */
    uint64_t progress_ms;        /* CLOCK_MONOTONIC ms of the watchdog loop's last pass */
} cl_watchdog_status;

/* Checks the configuration (CL_EINVAL with a message naming the flag), copies
 * it (cfg and its strings need not outlive the call), and starts the
 * watchdog thread, which starts the enclave. */
CL_MUST_CHECK int cl_watchdog_start(const cl_watchdog_config *cfg, cl_watchdog **out);

/* Blocks until the watchdog has finished: CL_OK after a requested stop,
 * CL_EIO (message: why) when it gave up.  May be called from any thread,
 * any number of times. */
CL_MUST_CHECK int cl_watchdog_wait(cl_watchdog *w);

/* A descriptor that becomes readable once the watchdog has finished (for
 * poll loops); valid until cl_watchdog_free. */
int cl_watchdog_fd(const cl_watchdog *w);

/* Requests a stop: the enclave is terminated, then the thread finishes.
 * Returns at once (it only sets a flag, so the state callback and any
 * thread may call it); cl_watchdog_wait() waits for the end. */
void cl_watchdog_stop(cl_watchdog *w);

/* Stops (if still running), waits, frees.  NULL is ignored. */
void cl_watchdog_free(cl_watchdog *w);

int cl_watchdog_state(const cl_watchdog *w);
void cl_watchdog_status_get(const cl_watchdog *w, cl_watchdog_status *out);
const char *cl_watchdog_state_name(int state);

/* A state callback that tells systemd (cloister/sd_notify.h): STATUS= on
 * every change, READY=1 the first time the enclave is running.  ctx is a
 * cl_watchdog_notifier that lives as long as the watchdog. */
typedef struct cl_watchdog_notifier {
    atomic_bool ready_sent;
} cl_watchdog_notifier;
void cl_watchdog_notify_systemd(void *ctx, int from, int to, const char *reason);

/* ---- flags ------------------------------------------------------------------------------
 * The long options shared by `cloister watchdog` and `cloister host` (and
 * the keys of host's JSON config), parsed into a config that owns its
 * strings.  Durations are "250ms", "5s", "2m", "1h" or a bare number of
 * seconds. */

typedef struct cl_watchdog_settings {
    cl_watchdog_config config; /* strings point into owned storage */
    char *owned[8];
} cl_watchdog_settings;

/* The watchdog's options (core/options), fields of a cl_watchdog_settings:
 * a section of `cloister watchdog` and of `cloister host`.  Set one by name
 * with cl_options_set. */
const cl_opt *cl_watchdog_options(size_t *count);
/* True when a runner was chosen (run-enclave-eif or enclave-command):
 * the program should run a watchdog at all. */
bool cl_watchdog_settings_active(const cl_watchdog_settings *s);
/* Cross-flag checks (both runners given, nitro flags without an EIF, ...);
 * cl_watchdog_start does them too. */
CL_MUST_CHECK int cl_watchdog_settings_check(const cl_watchdog_settings *s);
void cl_watchdog_settings_free(cl_watchdog_settings *s);

CL_MUST_CHECK int cl_watchdog_parse_duration(const char *text, uint64_t max_ms, uint64_t *out_ms);

#pragma GCC visibility pop

#endif

/* The watchdog's flags, shared by `cloister watchdog` and `cloister host`. */
#include "cloister/host/watchdog.h"

#include "cloister/core/encoding.h"
#include "cloister/core/options.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#define DURATION_MAX_MS (7ull * 24 * 3600 * 1000) /* a week */
#define COUNT_MAX 100000u

enum { OWN_EIF, OWN_NAME, OWN_NITRO, OWN_COMMAND, OWN_HEALTH_URL, OWN_HEALTH_CONNECT, OWN_DRAIN_URL, OWN_COUNT };
_Static_assert(OWN_COUNT <= sizeof(((cl_watchdog_settings *)0)->owned) / sizeof(char *), "owned slots");

int cl_watchdog_parse_duration(const char *text, uint64_t max_ms, uint64_t *out_ms)
{
    return cl_parse_duration(text, max_ms, out_ms); /* the one duration syntax, core/options */
}

static int set_string(cl_watchdog_settings *s, int slot, const char *value, const char **field)
{
    char *copy = strdup(value);
    CL_ENSURE(copy, CL_ENOMEM, "out of memory");
    free(s->owned[slot]);
    s->owned[slot] = copy;
    *field = copy;
    return CL_OK;
}

/* The runner follows from the two flags that name what to run. */
static void choose_runner(cl_watchdog_settings *s)
{
    s->config.runner = s->config.command && !s->config.run.eif_path ? CL_WATCHDOG_LOCAL : CL_WATCHDOG_NITRO_CLI;
}

/* The config's strings are const char * pointing into owned[], so they are
 * set through these rather than as the layer's owned char * fields. */
static int set_eif(void *base, const char *value)
{
    cl_watchdog_settings *s = base;
    CL_ENSURE(*value, CL_EINVAL, "empty path");
    CL_TRY(set_string(s, OWN_EIF, value, &s->config.run.eif_path));
    choose_runner(s);
    return CL_OK;
}

static int set_command(void *base, const char *value)
{
    cl_watchdog_settings *s = base;
    CL_ENSURE(*value, CL_EINVAL, "empty command");
    CL_TRY(set_string(s, OWN_COMMAND, value, &s->config.command));
    choose_runner(s);
    return CL_OK;
}

static int set_enclave_name(void *base, const char *value)
{
    cl_watchdog_settings *s = base;
    /* it goes on nitro-cli's command line: no value that reads as a flag */
    CL_ENSURE(*value && value[0] != '-', CL_EINVAL, "'%s' is not an enclave name", value);
    return set_string(s, OWN_NAME, value, &s->config.run.enclave_name);
}

static int set_nitro_cli(void *base, const char *value)
{
    cl_watchdog_settings *s = base;
    CL_ENSURE(*value, CL_EINVAL, "empty path");
    return set_string(s, OWN_NITRO, value, &s->config.nitro.path);
}

static int set_health_url(void *base, const char *value)
{
    cl_watchdog_settings *s = base;
    return set_string(s, OWN_HEALTH_URL, value, &s->config.health_url);
}

static int set_drain_url(void *base, const char *value)
{
    cl_watchdog_settings *s = base;
    return set_string(s, OWN_DRAIN_URL, value, &s->config.drain_url);
}

static int set_health_connect(void *base, const char *value)
{
    cl_watchdog_settings *s = base;
    return set_string(s, OWN_HEALTH_CONNECT, value, &s->config.health_connect);
}

/* 0 is a budget of its own ("never restart"), so it is told apart from unset. */
static int set_restart_budget(void *base, const char *value)
{
    cl_watchdog_settings *s = base;
    uint64_t v;
    CL_TRY(cl_parse_u64(value, COUNT_MAX, &v));
    s->config.restart_budget = (unsigned)v;
    s->config.restart_budget_set = true;
    return CL_OK;
}

#define WD cl_watchdog_settings
#define WD_DURATION(f, lo) CL_OPT_DURATION_AT(WD, config.f, 1, lo, DURATION_MAX_MS)

/* Zero values mean cl_watchdog_start's defaults (shown in the help texts),
 * so that the cross-flag checks can tell what was given. */
static const cl_opt options[] = {
    {.name = "run-enclave-eif", CL_OPT_CALLBACK(set_eif), .arg = "PATH",
     .help = "run the enclave with nitro-cli run-enclave --eif-path PATH (alias --eif)"},
    {.name = "eif", CL_OPT_CALLBACK(set_eif), .arg = "PATH"}, /* hidden: the alias */
    {.name = "cpu-count", CL_OPT_UINT_AT(WD, config.run.cpu_count, 1, 1024), .arg = "N",
     .help = "run-enclave --cpu-count"},
    {.name = "memory", CL_OPT_SIZE_AT(WD, config.run.memory_mib, 1u << 20, 1, UINT32_MAX), .arg = "MIB",
     .help = "run-enclave --memory"},
    {.name = "enclave-cid", CL_OPT_UINT_AT(WD, config.run.enclave_cid, 4, UINT32_MAX - 1), .arg = "CID",
     .help = "run-enclave --enclave-cid (default: nitro-cli picks one)"},
    {.name = "debug-mode", CL_OPT_FLAG(WD, config.run.debug_mode),
     .help = "run-enclave --debug-mode (attestation PCRs are zero)"},
    {.name = "enclave-name", CL_OPT_CALLBACK(set_enclave_name), .arg = "NAME", .help = "run-enclave --enclave-name"},
    {.name = "nitro-cli", CL_OPT_CALLBACK(set_nitro_cli), .arg = "PATH",
     .help = "the nitro-cli program (default: nitro-cli on PATH)"},
    {.name = "enclave-command", CL_OPT_CALLBACK(set_command), .arg = "CMD",
     .help = "run the enclave as this local command instead (sh -c CMD)"},
    {.name = "stop-grace", WD_DURATION(stop_grace_ms, 1), .arg = "DURATION",
     .help = "local command: SIGTERM, then SIGKILL after (10s)"},
    {.name = "health-url", CL_OPT_CALLBACK(set_health_url), .arg = "ADDR,PATH",
     .help = "health check: GET PATH over ADDR, healthy below 500"},
    {.name = "health-connect", CL_OPT_CALLBACK(set_health_connect), .arg = "ADDR",
     .help = "health check: a connection to ADDR succeeds"},
    {.name = "drain-url", CL_OPT_CALLBACK(set_drain_url), .arg = "ADDR,PATH",
     .help = "before terminating the enclave (stop or restart): POST PATH over ADDR (cloister enclave "
             "-health-listen's /enclave/drain), then wait up to --drain-wait for it to finish by itself"},
    {.name = "drain-wait", WD_DURATION(drain_wait_ms, 1), .arg = "DURATION",
     .help = "how long --drain-url's drain may take (40s)"},
    {.name = "health-interval", WD_DURATION(health_interval_ms, 10), .arg = "DURATION",
     .help = "between health checks (5s)"},
    {.name = "health-timeout", WD_DURATION(health_timeout_ms, 10), .arg = "DURATION",
     .help = "for one health check (2s)"},
    {.name = "health-failures", CL_OPT_UINT_AT(WD, config.health_failures, 1, COUNT_MAX), .arg = "N",
     .help = "consecutive failed checks that make it unhealthy (3)"},
    {.name = "start-timeout", WD_DURATION(start_timeout_ms, 10), .arg = "DURATION",
     .help = "to become healthy after a start (120s)"},
    {.name = "restart-budget", CL_OPT_CALLBACK(set_restart_budget), .arg = "N",
     .help = "restarts allowed within --restart-window (5); one more: give up"},
    {.name = "restart-window", WD_DURATION(restart_window_ms, 1), .arg = "DURATION",
     .help = "the window --restart-budget counts restarts in (10m)"},
    {.name = "backoff-initial", WD_DURATION(backoff_initial_ms, 1), .arg = "DURATION",
     .help = "before the first restart, doubling after each (1s)"},
    {.name = "backoff-max", WD_DURATION(backoff_max_ms, 1), .arg = "DURATION",
     .help = "the longest wait between restarts (60s)"},
};

const cl_opt *cl_watchdog_options(size_t *count)
{
    *count = sizeof options / sizeof options[0];
    return options;
}

bool cl_watchdog_settings_active(const cl_watchdog_settings *s)
{
    return s->config.run.eif_path || s->config.command;
}

int cl_watchdog_settings_check(const cl_watchdog_settings *s)
{
    const cl_watchdog_config *c = &s->config;
    CL_ENSURE(!(c->run.eif_path && c->command), CL_EINVAL,
              "--run-enclave-eif and --enclave-command exclude each other");
    CL_ENSURE(c->run.eif_path || c->command, CL_EINVAL, "no enclave to run: give --run-enclave-eif or "
                                                        "--enclave-command");
    CL_ENSURE(!(c->health_url && c->health_connect), CL_EINVAL,
              "--health-url and --health-connect exclude each other");
    if (c->command) {
        static const char *const nitro_only[] = {"cpu-count", "memory", "enclave-cid", "debug-mode",
                                                 "enclave-name", "nitro-cli"};
        bool set[] = {c->run.cpu_count != 0,   c->run.memory_mib != 0,    c->run.enclave_cid != 0,
                      c->run.debug_mode,       c->run.enclave_name != NULL, c->nitro.path != NULL};
        for (size_t i = 0; i < sizeof set / sizeof set[0]; i++)
            CL_ENSURE(!set[i], CL_EINVAL, "--%s applies to --run-enclave-eif, not to --enclave-command",
                      nitro_only[i]);
    } else {
        CL_ENSURE(c->stop_grace_ms == 0, CL_EINVAL, "--stop-grace applies to --enclave-command only");
        CL_ENSURE(c->run.cpu_count > 0, CL_EINVAL, "--cpu-count is required with --run-enclave-eif");
        CL_ENSURE(c->run.memory_mib > 0, CL_EINVAL, "--memory is required with --run-enclave-eif");
    }
    return CL_OK;
}

void cl_watchdog_settings_free(cl_watchdog_settings *s)
{
    for (size_t i = 0; i < OWN_COUNT; i++) {
        free(s->owned[i]);
        s->owned[i] = NULL;
    }
    memset(&s->config, 0, sizeof s->config);
}

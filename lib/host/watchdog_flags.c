/* The watchdog's flags, shared by `cloister watchdog` and `cloister host`. */
#include "cloister/host/watchdog.h"

#include "cloister/core/encoding.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#define DURATION_MAX_MS (7ull * 24 * 3600 * 1000) /* a week */
#define COUNT_MAX 100000u

enum { OWN_EIF, OWN_NAME, OWN_NITRO, OWN_COMMAND, OWN_HEALTH_URL, OWN_HEALTH_CONNECT, OWN_COUNT };
_Static_assert(OWN_COUNT <= sizeof(((cl_watchdog_settings *)0)->owned) / sizeof(char *), "owned slots");

static const cl_watchdog_flag flags[] = {
    {"run-enclave-eif", "PATH", "run the enclave with nitro-cli run-enclave --eif-path PATH (alias --eif)"},
    {"cpu-count", "N", "run-enclave --cpu-count"},
    {"memory", "MIB", "run-enclave --memory"},
    {"enclave-cid", "CID", "run-enclave --enclave-cid (default: nitro-cli picks one)"},
    {"debug-mode", NULL, "run-enclave --debug-mode (attestation PCRs are zero)"},
    {"enclave-name", "NAME", "run-enclave --enclave-name"},
    {"nitro-cli", "PATH", "the nitro-cli program (default: nitro-cli on PATH)"},
    {"enclave-command", "CMD", "run the enclave as this local command instead (sh -c CMD)"},
    {"stop-grace", "DURATION", "local command: SIGTERM, then SIGKILL after (10s)"},
    {"health-url", "ADDR,PATH", "health check: GET PATH over ADDR, healthy below 500"},
    {"health-connect", "ADDR", "health check: a connection to ADDR succeeds"},
    {"health-interval", "DURATION", "between health checks (5s)"},
    {"health-timeout", "DURATION", "for one health check (2s)"},
    {"health-failures", "N", "consecutive failed checks that make it unhealthy (3)"},
    {"start-timeout", "DURATION", "to become healthy after a start (120s)"},
    {"restart-budget", "N", "restarts allowed within --restart-window (5); one more: give up"},
    {"restart-window", "DURATION", "the window --restart-budget counts restarts in (10m)"},
    {"backoff-initial", "DURATION", "before the first restart, doubling after each (1s)"},
    {"backoff-max", "DURATION", "the longest wait between restarts (60s)"},
    {NULL, NULL, NULL},
};

const cl_watchdog_flag *cl_watchdog_flags(void)
{
    return flags;
}

const cl_watchdog_flag *cl_watchdog_flag_find(const char *name)
{
    if (!strcmp(name, "eif"))
        name = "run-enclave-eif";
    for (const cl_watchdog_flag *f = flags; f->name; f++)
        if (!strcmp(f->name, name))
            return f;
    return NULL;
}

int cl_watchdog_parse_duration(const char *text, uint64_t max_ms, uint64_t *out_ms)
{
    CL_ENSURE(text && *text, CL_EINVAL, "expected a duration, got an empty string");
    size_t n = strlen(text), digits = 0;
    while (digits < n && text[digits] >= '0' && text[digits] <= '9')
        digits++;
    CL_ENSURE(digits > 0 && digits <= 15, CL_EINVAL, "'%s' is not a duration (e.g. 250ms, 5s, 2m, 1h)", text);
    const char *unit = text + digits;
    uint64_t scale;
    if (!*unit || !strcmp(unit, "s"))
        scale = 1000;
    else if (!strcmp(unit, "ms"))
        scale = 1;
    else if (!strcmp(unit, "m"))
        scale = 60 * 1000;
    else if (!strcmp(unit, "h"))
        scale = 3600 * 1000;
    else
        return cl_error_set(CL_EINVAL, "'%s': unknown unit '%s' (ms, s, m, h)", text, unit);
    uint64_t v = 0;
    for (size_t i = 0; i < digits; i++)
        v = v * 10 + (uint64_t)(text[i] - '0');
    CL_ENSURE(v <= max_ms / scale, CL_EINVAL, "'%s' exceeds the maximum of %llu ms", text,
              (unsigned long long)max_ms);
    *out_ms = v * scale;
    return CL_OK;
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

static int set_duration(const char *value, uint64_t min_ms, unsigned *field)
{
    uint64_t ms = 0;
    CL_TRY(cl_watchdog_parse_duration(value, DURATION_MAX_MS, &ms));
    CL_ENSURE(ms >= min_ms, CL_EINVAL, "'%s' is below the minimum of %llu ms", value, (unsigned long long)min_ms);
    *field = (unsigned)ms;
    return CL_OK;
}

static int set_count(const char *value, uint64_t min, uint64_t max, uint64_t *out)
{
    CL_TRY(cl_parse_u64(value, max, out));
    CL_ENSURE(*out >= min, CL_EINVAL, "'%s' is below the minimum %llu", value, (unsigned long long)min);
    return CL_OK;
}

static int set_flag(cl_watchdog_settings *s, const char *name, const char *value)
{
    cl_watchdog_config *c = &s->config;
    uint64_t v;
    if (!strcmp(name, "run-enclave-eif")) {
        CL_ENSURE(*value, CL_EINVAL, "empty path");
        return set_string(s, OWN_EIF, value, &c->run.eif_path);
    }
    if (!strcmp(name, "cpu-count")) {
        CL_TRY(set_count(value, 1, 1024, &v));
        c->run.cpu_count = (unsigned)v;
        return CL_OK;
    }
    if (!strcmp(name, "memory")) {
        CL_TRY(set_count(value, 1, UINT32_MAX, &v));
        c->run.memory_mib = v;
        return CL_OK;
    }
    if (!strcmp(name, "enclave-cid")) {
        CL_TRY(set_count(value, 4, UINT32_MAX - 1, &v));
        c->run.enclave_cid = v;
        return CL_OK;
    }
    if (!strcmp(name, "debug-mode")) {
        return cl_parse_bool(value, &c->run.debug_mode);
    }
    if (!strcmp(name, "enclave-name")) {
        CL_ENSURE(*value && value[0] != '-', CL_EINVAL, "'%s' is not an enclave name", value);
        return set_string(s, OWN_NAME, value, &c->run.enclave_name);
    }
    if (!strcmp(name, "nitro-cli")) {
        CL_ENSURE(*value, CL_EINVAL, "empty path");
        return set_string(s, OWN_NITRO, value, &c->nitro.path);
    }
    if (!strcmp(name, "enclave-command")) {
        CL_ENSURE(*value, CL_EINVAL, "empty command");
        return set_string(s, OWN_COMMAND, value, &c->command);
    }
    if (!strcmp(name, "stop-grace"))
        return set_duration(value, 1, &c->stop_grace_ms);
    if (!strcmp(name, "health-url"))
        return set_string(s, OWN_HEALTH_URL, value, &c->health_url);
    if (!strcmp(name, "health-connect"))
        return set_string(s, OWN_HEALTH_CONNECT, value, &c->health_connect);
    if (!strcmp(name, "health-interval"))
        return set_duration(value, 10, &c->health_interval_ms);
    if (!strcmp(name, "health-timeout"))
        return set_duration(value, 10, &c->health_timeout_ms);
    if (!strcmp(name, "health-failures")) {
        CL_TRY(set_count(value, 1, COUNT_MAX, &v));
        c->health_failures = (unsigned)v;
        return CL_OK;
    }
    if (!strcmp(name, "start-timeout"))
        return set_duration(value, 10, &c->start_timeout_ms);
    if (!strcmp(name, "restart-budget")) {
        CL_TRY(set_count(value, 0, COUNT_MAX, &v));
        c->restart_budget = (unsigned)v;
        c->restart_budget_set = true;
        return CL_OK;
    }
    if (!strcmp(name, "restart-window"))
        return set_duration(value, 1, &c->restart_window_ms);
    if (!strcmp(name, "backoff-initial"))
        return set_duration(value, 1, &c->backoff_initial_ms);
    if (!strcmp(name, "backoff-max"))
        return set_duration(value, 1, &c->backoff_max_ms);
    return cl_error_set(CL_ENOTFOUND, "--%s is not a watchdog option", name);
}

int cl_watchdog_settings_set(cl_watchdog_settings *s, const char *name, const char *value)
{
    const cl_watchdog_flag *f = cl_watchdog_flag_find(name);
    if (!f)
        return cl_error_set(CL_ENOTFOUND, "--%s is not a watchdog option", name);
    int rc = set_flag(s, f->name, value ? value : "");
    if (rc < 0 && rc != CL_ENOTFOUND && rc != CL_ENOMEM)
        return cl_error_prefix(CL_EINVAL, "--%s: ", f->name);
    s->config.runner = s->config.command && !s->config.run.eif_path ? CL_WATCHDOG_LOCAL : CL_WATCHDOG_NITRO_CLI;
    return rc;
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

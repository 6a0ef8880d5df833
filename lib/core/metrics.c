#include "cloister/core/metrics.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STATUS_MIN 100
#define STATUS_SPAN 500 /* 100..599 */

static const uint64_t bucket_bounds_us[] = {1000,   2500,   5000,    10000,   25000,   50000,  100000,
                                            250000, 500000, 1000000, 2500000, 5000000, 10000000};
#define BUCKETS (sizeof bucket_bounds_us / sizeof bucket_bounds_us[0])

typedef struct route_metrics {
    atomic_uint_fast64_t by_status[STATUS_SPAN + 1]; /* last slot: out of range */
    atomic_uint_fast64_t buckets[BUCKETS];           /* not cumulative; summed when rendered */
    atomic_uint_fast64_t count;
    atomic_uint_fast64_t sum_us;
} route_metrics;

struct cl_metrics {
    char ns[64];
    const char *const *routes;
    size_t route_count;
    route_metrics *per_route;
};

int cl_metrics_new(const char *ns, const char *const *routes, size_t route_count, cl_metrics **out)
{
    cl_metrics *m = calloc(1, sizeof *m);
    CL_ENSURE(m, CL_ENOMEM, "out of memory");
    m->per_route = calloc(route_count, sizeof *m->per_route);
    if (!m->per_route) {
        free(m);
        return cl_error_set(CL_ENOMEM, "out of memory");
    }
    /* metric names allow [a-zA-Z0-9_:]; anything else becomes '_' */
    size_t n = 0;
    for (const char *p = ns ? ns : ""; *p && n + 1 < sizeof m->ns; p++)
        m->ns[n++] = ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_' ||
                      *p == ':')
                         ? *p
                         : '_';
    m->ns[n] = '\0';
    m->routes = routes;
    m->route_count = route_count;
    *out = m;
    return CL_OK;
}

void cl_metrics_free(cl_metrics *m)
{
    if (!m)
        return;
    free(m->per_route);
    free(m);
}

void cl_metrics_observe(cl_metrics *m, size_t route, int status, uint64_t duration_us)
{
    if (!m || route >= m->route_count)
        return;
    route_metrics *r = &m->per_route[route];
    size_t slot = status >= STATUS_MIN && status < STATUS_MIN + STATUS_SPAN ? (size_t)(status - STATUS_MIN) : STATUS_SPAN;
    atomic_fetch_add_explicit(&r->by_status[slot], 1, memory_order_relaxed);
    size_t b = 0;
    while (b < BUCKETS && duration_us > bucket_bounds_us[b])
        b++;
    if (b < BUCKETS)
        atomic_fetch_add_explicit(&r->buckets[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&r->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&r->sum_us, duration_us, memory_order_relaxed);
}

static int appendf(cl_buf *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int appendf(cl_buf *out, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof line)
        return cl_error_set(CL_ELIMIT, "metrics line too long");
    return cl_buf_append(out, line, (size_t)n);
}

static const char *sep(const cl_metrics *m)
{
    return m->ns[0] ? "_" : "";
}

int cl_metrics_render(const cl_metrics *m, cl_buf *out)
{
    CL_TRY(appendf(out, "# HELP %s%shttp_requests_total Requests answered, by route class and status code.\n", m->ns,
                   sep(m)));
    CL_TRY(appendf(out, "# TYPE %s%shttp_requests_total counter\n", m->ns, sep(m)));
    for (size_t i = 0; i < m->route_count; i++) {
        route_metrics *r = &m->per_route[i];
        for (size_t s = 0; s <= STATUS_SPAN; s++) {
            uint64_t v = atomic_load_explicit(&r->by_status[s], memory_order_relaxed);
            if (!v)
                continue;
            char code[8];
            if (s < STATUS_SPAN)
                snprintf(code, sizeof code, "%zu", s + STATUS_MIN);
            else
                snprintf(code, sizeof code, "other");
            CL_TRY(appendf(out, "%s%shttp_requests_total{route=\"%s\",code=\"%s\"} %llu\n", m->ns, sep(m),
                           m->routes[i], code, (unsigned long long)v));
        }
    }
    CL_TRY(appendf(out,
                   "# HELP %s%shttp_request_duration_seconds Time from a complete request head to the end of its "
                   "response, by route class.\n",
                   m->ns, sep(m)));
    CL_TRY(appendf(out, "# TYPE %s%shttp_request_duration_seconds histogram\n", m->ns, sep(m)));
    for (size_t i = 0; i < m->route_count; i++) {
        route_metrics *r = &m->per_route[i];
        uint64_t cumulative = 0;
        for (size_t b = 0; b < BUCKETS; b++) {
            cumulative += atomic_load_explicit(&r->buckets[b], memory_order_relaxed);
            CL_TRY(appendf(out, "%s%shttp_request_duration_seconds_bucket{route=\"%s\",le=\"%g\"} %llu\n", m->ns,
                           sep(m), m->routes[i], (double)bucket_bounds_us[b] / 1e6, (unsigned long long)cumulative));
        }
        uint64_t count = atomic_load_explicit(&r->count, memory_order_relaxed);
        CL_TRY(appendf(out, "%s%shttp_request_duration_seconds_bucket{route=\"%s\",le=\"+Inf\"} %llu\n", m->ns, sep(m),
                       m->routes[i], (unsigned long long)count));
        CL_TRY(appendf(out, "%s%shttp_request_duration_seconds_sum{route=\"%s\"} %.6f\n", m->ns, sep(m), m->routes[i],
                       (double)atomic_load_explicit(&r->sum_us, memory_order_relaxed) / 1e6));
        CL_TRY(appendf(out, "%s%shttp_request_duration_seconds_count{route=\"%s\"} %llu\n", m->ns, sep(m),
                       m->routes[i], (unsigned long long)count));
    }
    return CL_OK;
}

int cl_metrics_render_value(const cl_metrics *m, cl_buf *out, const char *name, const char *type, const char *help,
                            uint64_t value)
{
    CL_TRY(appendf(out, "# HELP %s%s%s %s\n# TYPE %s%s%s %s\n%s%s%s %llu\n", m->ns, sep(m), name, help, m->ns, sep(m),
                   name, type, m->ns, sep(m), name, (unsigned long long)value));
    return CL_OK;
}

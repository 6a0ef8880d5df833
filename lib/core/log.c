#include "cloister/core/log.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static atomic_int log_level = CL_LOG_INFO;
static const char *log_component = "cloister";
/* One line is written with one fwrite under this lock: lines from
 * different threads never interleave. */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

/* A process that forks while another of its threads logs (cloister host
 * restarting a worker while its watchdog thread runs) must not hand the
 * child a lock that nobody will release. */
static void fork_prepare(void) { pthread_mutex_lock(&log_lock); }
static void fork_release(void) { pthread_mutex_unlock(&log_lock); }
__attribute__((constructor)) static void log_atfork(void)
{
    pthread_atfork(fork_prepare, fork_release, fork_release);
}

void cl_log_set_level(int level) { atomic_store(&log_level, level); }
int cl_log_get_level(void) { return atomic_load(&log_level); }
void cl_log_set_component(const char *name) { log_component = name; }

static const char *level_name(int level)
{
    switch (level) {
    case CL_LOG_DEBUG: return "debug";
    case CL_LOG_INFO: return "info";
    case CL_LOG_WARN: return "warn";
    default: return "error";
    }
}

typedef struct line {
    char text[2048];
    size_t len;
} line;

static void put(line *l, const char *s, size_t n)
{
    if (l->len + n > sizeof l->text - 2)
        n = sizeof l->text - 2 - l->len;
    memcpy(l->text + l->len, s, n);
    l->len += n;
}

static bool needs_quotes(const char *v)
{
    if (!*v)
        return true;
    for (const char *p = v; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch <= ' ' || ch == '"' || ch == '=' || ch == '\\' || ch >= 0x7f)
            return true;
    }
    return false;
}

static void put_value(line *l, const char *v)
{
    if (!needs_quotes(v)) {
        put(l, v, strlen(v));
        return;
    }
    put(l, "\"", 1);
    for (const char *p = v; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch == '"' || ch == '\\') {
            char esc[2] = {'\\', (char)ch};
            put(l, esc, 2);
        } else if (ch < ' ' || ch == 0x7f) {
            char esc[8];
            int n = snprintf(esc, sizeof esc, "\\x%02x", ch);
            put(l, esc, (size_t)n);
        } else {
            put(l, (const char *)p, 1);
        }
    }
    put(l, "\"", 1);
}

static void start_line(line *l, int level, const char *event)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[64];
    size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof ts - n, ".%03ldZ", (long)(tv.tv_usec / 1000));
    l->len = 0;
    put(l, "ts=", 3);
    put(l, ts, strlen(ts));
    put(l, " level=", 7);
    put(l, level_name(level), strlen(level_name(level)));
    put(l, " component=", 11);
    put_value(l, log_component);
    put(l, " event=", 7);
    put_value(l, event);
}

static void emit(line *l)
{
    l->text[l->len++] = '\n';
    pthread_mutex_lock(&log_lock);
    fwrite(l->text, 1, l->len, stderr);
    fflush(stderr);
    pthread_mutex_unlock(&log_lock);
}

void cl_logv(int level, const char *event, va_list fields)
{
    if (level < atomic_load(&log_level))
        return;
    line l;
    start_line(&l, level, event);
    for (;;) {
        const char *key = va_arg(fields, const char *);
        if (!key)
            break;
        const char *value = va_arg(fields, const char *);
        put(&l, " ", 1);
        put(&l, key, strlen(key));
        put(&l, "=", 1);
        put_value(&l, value ? value : "");
    }
    emit(&l);
}

void cl_log(int level, const char *event, ...)
{
    va_list ap;
    va_start(ap, event);
    cl_logv(level, event, ap);
    va_end(ap);
}

void cl_log_passthrough(const char *prefix, const char *text, size_t len)
{
    line l;
    start_line(&l, CL_LOG_INFO, "app_output");
    put(&l, " stream=", 8);
    put_value(&l, prefix);
    put(&l, " line=", 6);
    char copy[1600];
    if (len >= sizeof copy)
        len = sizeof copy - 1;
    memcpy(copy, text, len);
    copy[len] = '\0';
    put_value(&l, copy);
    emit(&l);
}

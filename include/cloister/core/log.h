/* Logs: one line per event on stderr, `key=value` pairs after a time,
 * level and event name, so that lines are grep-able and machine-readable.
 * Values with spaces, quotes or '=' are quoted.  Callers never pass
 * secrets: keys, tokens and plaintexts have no place in a log line. */
#ifndef CLOISTER_LOG_H
#define CLOISTER_LOG_H

#pragma GCC visibility push(default)

#include <stdarg.h>
#include <stddef.h>

enum cl_log_level { CL_LOG_DEBUG, CL_LOG_INFO, CL_LOG_WARN, CL_LOG_ERROR };

void cl_log_set_level(int level);
int cl_log_get_level(void);
/* The program part of every line, e.g. "enclave". */
void cl_log_set_component(const char *name);

/* fields: alternating key and value strings, ended by NULL:
 *   cl_log(CL_LOG_INFO, "listening", "name", "public", "addr", text, NULL); */
void cl_log(int level, const char *event, ...);
void cl_logv(int level, const char *event, va_list fields);

/* Writes one already formatted line from a child process's output, with
 * the given prefix (the app's stdout/stderr pass-through). */
void cl_log_passthrough(const char *prefix, const char *line, size_t len);

#pragma GCC visibility pop

#endif

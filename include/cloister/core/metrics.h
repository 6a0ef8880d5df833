/* Prometheus metrics for an HTTP server: requests by route class and
 * status, latency histograms by route class, and plain counters and
 * gauges, rendered in the text exposition format (version 0.0.4).
 * Route classes are a fixed list given at creation, so label sets stay
 * bounded whatever clients send.  Recording is lock-free. */
#ifndef CLOISTER_METRICS_H
#define CLOISTER_METRICS_H

#pragma GCC visibility push(default)

#include "cloister/core/buf.h"
#include "cloister/core/error.h"

#include <stddef.h>
#include <stdint.h>

typedef struct cl_metrics cl_metrics;

CL_MUST_CHECK int cl_metrics_new(const char *namespace_, const char *const *routes, size_t route_count,
                                 cl_metrics **out);
void cl_metrics_free(cl_metrics *m);

/* route: an index into the route list; status 100..599 (others count as 0). */
void cl_metrics_observe(cl_metrics *m, size_t route, int status, uint64_t duration_us);

/* Appends the request counters and histograms. */
CL_MUST_CHECK int cl_metrics_render(const cl_metrics *m, cl_buf *out);
/* Appends one more sample with its HELP and TYPE lines ("counter"/"gauge"). */
CL_MUST_CHECK int cl_metrics_render_value(const cl_metrics *m, cl_buf *out, const char *name, const char *type,
                                          const char *help, uint64_t value);

#pragma GCC visibility pop

#endif

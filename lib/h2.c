/* HTTP/2 front end: lands with the nghttp2 bridge. Until then ALPN never
 * selects h2 (enable_h2 stays off), so these are unreachable. */
#include "server_internal.h"

int cl_h2_attach(client *c) { (void)c; return cl_error_set(CL_EINVAL, "HTTP/2 is not available"); }
void cl_h2_io(client *c) { (void)c; }
void cl_h2_free(client *c) { (void)c; }
void cl_h2_drain(client *c) { (void)c; }

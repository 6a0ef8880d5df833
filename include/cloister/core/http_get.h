/* One GET over http:// or https:// (libcurl, loaded on first use): what the
 * host needs to fetch a document such as an ACM bundle, through the same
 * transport as the KMS client (lib/core/curl_http.c). */
#ifndef CLOISTER_HTTP_GET_H
#define CLOISTER_HTTP_GET_H

#pragma GCC visibility push(default)

#include "cloister/core/buf.h"
#include "cloister/core/error.h"

/* ca_file: PEM trust for https (NULL: the system's store).  Any HTTP status
 * is success here (*status says which); CL_EIO with the reason when no
 * answer came; CL_ELIMIT when the body passes max_bytes (0: 1 MiB). */
#include <stddef.h>

CL_MUST_CHECK int cl_http_get(const char *url, const char *ca_file, unsigned timeout_ms, size_t max_bytes,
                              cl_buf *body, long *status);

#pragma GCC visibility pop

#endif

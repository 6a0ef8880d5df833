/* One HTTP exchange through libcurl to a URL, dialing a cloister address
 * (the outbound proxy, the IMDS gate) instead of the URL's host when given;
 * the KMS client and the credentials provider share it.  Not installed:
 * it exposes libcurl's types. */
#ifndef CLOISTER_LIB_CURL_HTTP_H
#define CLOISTER_LIB_CURL_HTTP_H

#include "cloister/core/address.h"
#include "cloister/core/buf.h"
#include "cloister/core/error.h"

#include "core/curl_lazy.h"
#include <stdbool.h>
#include <stdint.h>

#define CL_HTTP_MAX_RESPONSE (1024 * 1024)

CL_MUST_CHECK int cl_curl_init(void);

typedef struct cl_http_call {
    const char *method;               /* "GET", "PUT", "POST" */
    const char *url;
    struct curl_slist *headers;       /* borrowed */
    const uint8_t *body;
    size_t body_len;
    const cl_address *dial;           /* NULL: the URL's host */
    const char *ca_file;              /* https only */
    const char *sigv4;                /* "aws:amz:REGION:SERVICE" or NULL */
    const char *user, *password;      /* with sigv4: the access key and secret */
    unsigned timeout_ms;
    size_t max_response;              /* 0: CL_HTTP_MAX_RESPONSE */
    bool one_request_per_connection;
    /* every response header line as received (status lines included, so a
     * caller can start over at an interim 100 response); may be NULL */
    void (*on_header)(void *ctx, const char *line, size_t len);
    void *header_ctx;
    /* results */
    long status;
    cl_buf response;
    char request_id[80];
    CURLcode curl_code;
    bool too_large; /* the answer passed max_response */
} cl_http_call;

/* Performs the call on handle h (reused between calls, so that connections
 * are kept).  CL_EIO with curl's reason when no answer came; any HTTP
 * status is success at this level. */
CL_MUST_CHECK int cl_http_perform(CURL *h, cl_http_call *call);

#endif

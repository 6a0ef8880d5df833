/* AWS Signature Version 4 (the Authorization header form): the canonical
 * request, the string to sign, the derived signing key, and a verifier that
 * answers with the error AWS services give for each kind of rejection.
 *
 * Signing and verifying share the canonicalization, so a request signed
 * here and one signed by an AWS SDK are judged by the same code. */
#ifndef CLOISTER_SIGV4_H
#define CLOISTER_SIGV4_H

#pragma GCC visibility push(default)

#include "cloister/core/buf.h"
#include "cloister/core/error.h"
#include "cloister/core/http.h"

#include <stdbool.h>
#include <stdint.h>

#define CL_SIGV4_MAX_SKEW_S (5 * 60) /* AWS's window either side of the server's clock */
#define CL_SIGV4_ACCESS_KEY_MAX 128

/* One HTTP request as signed: method, path and query as on the wire. */
typedef struct cl_sigv4_request {
    cl_slice method, path, query;
    const cl_http_header *headers;
    size_t header_count;
    const uint8_t *body;
    size_t body_len;
} cl_sigv4_request;

/* Why a request was refused, each with AWS's error type. */
enum cl_sigv4_status {
    CL_SIGV4_OK = 0,
    CL_SIGV4_MISSING,     /* MissingAuthenticationTokenException: no Authorization header */
    CL_SIGV4_INCOMPLETE,  /* IncompleteSignatureException: the header lacks a part, or X-Amz-Date */
    CL_SIGV4_UNKNOWN_KEY, /* UnrecognizedClientException: no such access key */
    CL_SIGV4_BAD_SCOPE,   /* InvalidSignatureException: credential scope names another region/service */
    CL_SIGV4_MISMATCH,    /* InvalidSignatureException: the signature is not ours */
    CL_SIGV4_EXPIRED,     /* InvalidSignatureException: X-Amz-Date more than 5 minutes off */
};

typedef struct cl_sigv4_result {
    int status;
    const char *error_type; /* AWS's __type, NULL when status is OK */
    char message[320];      /* AWS's message text */
    char access_key_id[CL_SIGV4_ACCESS_KEY_MAX + 1];
} cl_sigv4_result;

/* The secret of an access key id, or NULL when there is none. */
typedef const char *(*cl_sigv4_lookup_fn)(void *ctx, const char *access_key_id);

/* Checks the request's Authorization header against the secret that
 * lookup gives for its access key, for `service` in `region`, with the
 * server's clock at now_s (Unix seconds).  Returns CL_OK and fills *res
 * (res->status says the verdict); a negative code only on internal
 * failure. */
CL_MUST_CHECK int cl_sigv4_verify(const cl_sigv4_request *req, const char *region, const char *service,
                                  cl_sigv4_lookup_fn lookup, void *ctx, int64_t now_s, cl_sigv4_result *res);

/* The Authorization header value for a request whose headers already hold
 * Host and X-Amz-Date (amz_date, "20150830T123600Z"); signed_headers is the
 * ';'-separated lowercase list, sorted ("content-type;host;x-amz-date"). */
CL_MUST_CHECK int cl_sigv4_authorization(const cl_sigv4_request *req, const char *access_key_id, const char *secret,
                                         const char *region, const char *service, const char *amz_date,
                                         const char *signed_headers, cl_buf *out);

/* X-Amz-Date form of a Unix time: "20150830T123600Z" (17 bytes with NUL). */
void cl_sigv4_format_date(int64_t unix_seconds, char out[17]);

#pragma GCC visibility pop

#endif

/* A minimal HTTPS GET for cloister's own clients (verify, dev): one
 * request per connection, the peer's certificate kept, the chain NOT
 * checked; callers establish trust another way (attestation). */
#ifndef CLOISTER_HTTPS_CLIENT_H
#define CLOISTER_HTTPS_CLIENT_H

#pragma GCC visibility push(default)

#include "cloister/core/address.h"
#include "cloister/core/buf.h"
#include "cloister/core/error.h"

#include <stddef.h>
#include <stdint.h>

typedef struct cl_https_target {
    char host[CL_ADDRESS_HOST_MAX]; /* without IPv6 brackets; SNI unless an IP literal */
    char authority[CL_ADDRESS_HOST_MAX + 8]; /* the Host header */
    unsigned port;
} cl_https_target;

/* Parses https://HOST[:PORT][/] (a URL naming a server, not a path). */
CL_MUST_CHECK int cl_https_target_parse(const char *url, cl_https_target *out);

typedef struct cl_https_response {
    int status;
    cl_buf body;                /* framing checked and removed */
    uint8_t cert_sha256[32];    /* of the certificate presented on this connection */
    char tls_version[16];
} cl_https_response;

/* GET path over a new TLS connection to t (or to connect_to, an address,
 * when not NULL).  CL_EIO: could not connect, handshake or read;
 * CL_EPARSE: a malformed response; at most max_body bytes of body. */
CL_MUST_CHECK int cl_https_get(const cl_https_target *t, const char *connect_to, const char *path, size_t max_body,
                               cl_https_response *out);
void cl_https_response_free(cl_https_response *r);

/* Any one request, same rules as cl_https_get. */
typedef struct cl_https_request {
    const char *method; /* "GET", "POST" */
    const char *path;   /* with its query */
    const char *content_type; /* NULL: none sent */
    const uint8_t *body;
    size_t body_len;
    size_t max_body;
    unsigned timeout_ms; /* per read or write; 0: none */
} cl_https_request;

CL_MUST_CHECK int cl_https_request_perform(const cl_https_target *t, const char *connect_to,
                                           const cl_https_request *r, cl_https_response *out);

#pragma GCC visibility pop

#endif

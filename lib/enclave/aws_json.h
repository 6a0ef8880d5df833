/* The AWS JSON protocol machinery that the KMS client (JSON 1.1) and the
 * DynamoDB client (JSON 1.0) share: the endpoint and region checks, the
 * connection's settings (URL, SigV4 scope, proxy, CA file, credentials,
 * retries), the signed POST with retries and backoff, and AWS's error
 * objects.  What differs between the services is a cl_aws_json_service. */
#ifndef CLOISTER_LIB_ENCLAVE_AWS_JSON_H
#define CLOISTER_LIB_ENCLAVE_AWS_JSON_H

#include "cloister/core/address.h"
#include "cloister/core/buf.h"
#include "cloister/core/error.h"
#include "cloister/enclave/kms.h" /* cl_aws_credentials_provider */

#include <curl/curl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct cl_aws_json_service {
    const char *name;          /* in messages: "KMS", "DynamoDB" */
    const char *host;          /* the default endpoint's first label and SigV4's service: "kms" */
    const char *content_type;  /* the protocol version: "application/x-amz-json-1.1" */
    const char *target_prefix; /* X-Amz-Target before the operation: "TrentService." */
    const char *no_region;     /* the message when the config has no region */
    const char *http_hint;     /* added to the message refusing an http:// endpoint */
    unsigned attempts_limit;   /* the most attempts a config may ask for; 0: no limit */
    size_t max_response;       /* 0: cl_http_call's default */
    int (*error_code)(long status, const char *type);
    bool (*retryable)(long status, const char *type);
} cl_aws_json_service;

typedef struct cl_aws_json_config {
    const char *region;   /* required */
    const char *endpoint; /* https://HOST[:PORT]; NULL: https://HOST.REGION.amazonaws.com */
    bool allow_http;      /* http:// endpoints too (a local test server) */
    const char *connect;  /* the proxy's address; NULL: direct */
    const char *ca_file;
    cl_aws_credentials_provider *credentials; /* required, borrowed */
    unsigned max_attempts, backoff_ms, timeout_ms; /* 0: the defaults */
} cl_aws_json_config;

/* The fields of a client's public config that it passes on unchanged
 * (cl_kms_config, cl_dynamodb_config name them alike). */
#define CL_AWS_JSON_CONFIG_OF(cfg)                                                                                     \
    {                                                                                                                  \
        .region = (cfg)->region, .endpoint = (cfg)->endpoint, .connect = (cfg)->connect, .ca_file = (cfg)->ca_file,    \
        .credentials = (cfg)->credentials, .max_attempts = (cfg)->max_attempts, .backoff_ms = (cfg)->backoff_ms,       \
        .timeout_ms = (cfg)->timeout_ms,                                                                               \
    }

typedef struct cl_aws_json_stats {
    uint64_t attempts, retries;
    uint64_t network_us;
} cl_aws_json_stats;

typedef struct cl_aws_json {
    const cl_aws_json_service *service;
    char url[300];
    char sigv4[100];
    bool has_dial;
    cl_address dial;
    char *ca_file;
    cl_aws_credentials_provider *creds;
    unsigned max_attempts, backoff_ms, timeout_ms;
    CURL *curl;
    pthread_mutex_t lock; /* one call at a time on the handle; the clients hold it around cl_aws_json_post */
    char error_type[128];
    cl_aws_json_stats stats;
} cl_aws_json;

/* Checks cfg and allocates a client of size bytes, zeroed, whose first
 * member is the cl_aws_json, set up from cfg.  *out stays NULL on failure. */
CL_MUST_CHECK int cl_aws_json_new(size_t size, const cl_aws_json_service *service, const cl_aws_json_config *cfg,
                                  void **out);
/* Frees a client from cl_aws_json_new, given its first member; NULL is fine. */
void cl_aws_json_free(cl_aws_json *c);

/* One operation, with c->lock held: POST body with X-Amz-Target
 * PREFIX<op>, signed, retried on throttling, 5xx and transport failures
 * (an expired token is fetched again once), with backoff.  CL_OK with
 * *status 200 and the answer's body in answer (replaced); an AWS error
 * answer becomes a cl_err from service->error_code, its type kept in
 * c->error_type.  With raw, CL_OK once an HTTP answer came that is not
 * worth a retry, whatever its status: *status and the body as they came. */
CL_MUST_CHECK int cl_aws_json_post(cl_aws_json *c, const char *op, const uint8_t *body, size_t len, bool raw,
                                   long *status, cl_buf *answer);

/* AWS's error object ({"__type": ..., "message": ...}, the same for both
 * JSON protocols): the type without its namespace, and the message, both
 * made printable. */
CL_MUST_CHECK int cl_aws_json_parse_error(long status, const uint8_t *body, size_t len, char *type, size_t type_len,
                                          char *message, size_t message_len);

void cl_aws_json_sleep_ms(unsigned ms);

#endif

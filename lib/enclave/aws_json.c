/* The AWS JSON protocol as KMS and DynamoDB speak it: requests signed with
 * SigV4 by libcurl, sent directly or through an address (the parent's
 * outbound proxy), retried on throttling and server errors. */
#include "enclave/aws_json.h"

#include "cloister/core/clock.h"
#include "core/curl_http.h"

#include <jansson.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEFAULT_ATTEMPTS 5
#define DEFAULT_BACKOFF_MS 100
#define MAX_BACKOFF_MS 5000
#define DEFAULT_TIMEOUT_MS 10000

/* ---- errors --------------------------------------------------------------- */

static void copy_text(char *dst, size_t cap, const char *src, size_t n)
{
    if (!cap)
        return;
    size_t k = 0;
    for (size_t i = 0; i < n && k + 1 < cap; i++) {
        unsigned char ch = (unsigned char)src[i];
        dst[k++] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
    }
    dst[k] = '\0';
}

int cl_aws_json_parse_error(long status, const uint8_t *body, size_t len, char *type, size_t type_len, char *message,
                            size_t message_len)
{
    type[0] = message[0] = '\0';
    json_error_t jerr;
    json_t *root = body && len ? json_loadb((const char *)body, len, 0, &jerr) : NULL;
    if (!json_is_object(root)) {
        json_decref(root);
        copy_text(message, message_len, (const char *)body, len > 200 ? 200 : len);
        return cl_error_set(CL_EPROTO, "HTTP %ld without an AWS error object%s%s", status, len ? ": " : "",
                            message);
    }
    const char *t = json_string_value(json_object_get(root, "__type"));
    const char *m = json_string_value(json_object_get(root, "message"));
    if (!m)
        m = json_string_value(json_object_get(root, "Message"));
    if (t) {
        /* "com.amazonaws.kms#NotFoundException" and "NotFoundException:" forms */
        const char *hash = strrchr(t, '#');
        if (hash)
            t = hash + 1;
        size_t tl = strcspn(t, ":");
        copy_text(type, type_len, t, tl);
    }
    if (m)
        copy_text(message, message_len, m, strlen(m));
    json_decref(root);
    if (!type[0])
        return cl_error_set(CL_EPROTO, "HTTP %ld with an error object that has no __type", status);
    return CL_OK;
}

/* ---- the connection's settings -------------------------------------------- */

static int check_region(const cl_aws_json_service *s, const char *r)
{
    CL_ENSURE(r && *r, CL_EINVAL, "%s", s->no_region);
    CL_ENSURE(strlen(r) < 40, CL_EINVAL, "region '%.40s...' is too long", r);
    for (const char *p = r; *p; p++)
        CL_ENSURE((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-', CL_EINVAL,
                  "region '%s' is not a region name", r);
    return CL_OK;
}

static int check_endpoint(const cl_aws_json_service *s, const char *e, bool allow_http)
{
    bool https = !strncmp(e, "https://", 8);
    bool http = !strncmp(e, "http://", 7);
    CL_ENSURE(https || (http && allow_http), CL_EINVAL, "endpoint '%s': expected https://HOST[:PORT]%s", e,
              http ? s->http_hint : "");
    CL_ENSURE(strlen(e) < 256, CL_EINVAL, "endpoint is too long");
    const char *rest = e + (https ? 8 : 7);
    CL_ENSURE(*rest && *rest != '/', CL_EINVAL, "endpoint '%s': no host", e);
    const char *slash = strchr(rest, '/');
    CL_ENSURE(!slash || !slash[1], CL_EINVAL, "endpoint '%s': no path expected (%s is at /)", e, s->name);
    for (const char *p = rest; *p && *p != '/'; p++)
        CL_ENSURE((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-' ||
                      *p == '.' || *p == ':' || *p == '[' || *p == ']',
                  CL_EINVAL, "endpoint '%s': unexpected character in the host", e);
    return CL_OK;
}

int cl_aws_json_new(size_t size, const cl_aws_json_service *s, const cl_aws_json_config *cfg, void **out)
{
    *out = NULL;
    CL_TRY(check_region(s, cfg->region));
    CL_ENSURE(cfg->credentials, CL_EINVAL, "the %s client needs credentials", s->name);
    CL_ENSURE(!s->attempts_limit || cfg->max_attempts <= s->attempts_limit, CL_EINVAL, "at most %u attempts",
              s->attempts_limit);
    if (cfg->endpoint)
        CL_TRY(check_endpoint(s, cfg->endpoint, cfg->allow_http));
    cl_address dial;
    if (cfg->connect) {
        int rc = cl_address_parse(cfg->connect, &dial);
        if (rc < 0)
            return cl_error_prefix(rc, "%s proxy address: ", s->name);
    }
    CL_TRY(cl_curl_init());
    cl_aws_json *c = calloc(1, size < sizeof *c ? sizeof *c : size);
    CL_ENSURE(c, CL_ENOMEM, "out of memory");
    c->service = s;
    if (cfg->endpoint) {
        size_t n = strlen(cfg->endpoint);
        snprintf(c->url, sizeof c->url, "%s%s", cfg->endpoint, cfg->endpoint[n - 1] == '/' ? "" : "/");
    } else {
        snprintf(c->url, sizeof c->url, "https://%s.%s.amazonaws.com/", s->host, cfg->region);
    }
    snprintf(c->sigv4, sizeof c->sigv4, "aws:amz:%s:%s", cfg->region, s->host);
    c->has_dial = cfg->connect != NULL;
    if (c->has_dial)
        c->dial = dial;
    c->ca_file = cfg->ca_file ? strdup(cfg->ca_file) : NULL;
    c->creds = cfg->credentials;
    c->max_attempts = cfg->max_attempts ? cfg->max_attempts : DEFAULT_ATTEMPTS;
    c->backoff_ms = cfg->backoff_ms ? cfg->backoff_ms : DEFAULT_BACKOFF_MS;
    c->timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : DEFAULT_TIMEOUT_MS;
    c->curl = curl_easy_init();
    pthread_mutex_init(&c->lock, NULL);
    if (!c->curl || (cfg->ca_file && !c->ca_file)) {
        cl_aws_json_free(c);
        return cl_error_set(CL_ENOMEM, "out of memory (libcurl handle)");
    }
    *out = c;
    return CL_OK;
}

void cl_aws_json_free(cl_aws_json *c)
{
    if (!c)
        return;
    if (c->curl)
        curl_easy_cleanup(c->curl);
    free(c->ca_file);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* ---- the call ------------------------------------------------------------- */

void cl_aws_json_sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* Delay before retry n (1-based): base * 2^(n-1), capped, then a uniform
 * draw in [d/2, d] so that clients that failed together spread out. */
static unsigned backoff_delay(unsigned base, unsigned n)
{
    uint64_t d = base;
    for (unsigned i = 1; i < n && d < MAX_BACKOFF_MS; i++)
        d *= 2;
    if (d > MAX_BACKOFF_MS)
        d = MAX_BACKOFF_MS;
    uint32_t r = 0;
    if (RAND_bytes((unsigned char *)&r, sizeof r) != 1)
        r = (uint32_t)time(NULL);
    return (unsigned)(d / 2 + r % (d / 2 + 1));
}

static struct curl_slist *request_headers(const char *content_type, const char *target,
                                          const cl_aws_credentials *creds)
{
    char type[96];
    snprintf(type, sizeof type, "Content-Type: %s", content_type);
    struct curl_slist *h = curl_slist_append(NULL, type);
    h = h ? curl_slist_append(h, target) : NULL;
    h = h ? curl_slist_append(h, "Accept: application/json") : NULL;
    if (h && creds->session_token[0]) {
        char token[CL_AWS_TOKEN_MAX + 32];
        snprintf(token, sizeof token, "X-Amz-Security-Token: %s", creds->session_token);
        struct curl_slist *n = curl_slist_append(h, token);
        cl_wipe(token, sizeof token);
        if (!n)
            curl_slist_free_all(h);
        h = n;
    }
    return h;
}

int cl_aws_json_post(cl_aws_json *c, const char *op, const uint8_t *body, size_t len, bool raw, long *status,
                     cl_buf *answer)
{
    const cl_aws_json_service *s = c->service;
    *status = 0;
    c->error_type[0] = '\0';
    char target[96];
    snprintf(target, sizeof target, "X-Amz-Target: %s%s", s->target_prefix, op);
    bool refreshed = false;
    for (unsigned attempt = 1;; attempt++) {
        cl_aws_credentials creds;
        int rc = cl_aws_credentials_get(c->creds, &creds);
        if (rc < 0)
            return cl_error_prefix(rc, "%s %s: ", s->name, op);
        struct curl_slist *headers = request_headers(s->content_type, target, &creds);
        if (!headers) {
            cl_aws_credentials_wipe(&creds);
            return cl_error_set(CL_ENOMEM, "out of memory");
        }
        cl_http_call call = {
            .method = "POST",
            .url = c->url,
            .headers = headers,
            .body = body,
            .body_len = len,
            .dial = c->has_dial ? &c->dial : NULL,
            .ca_file = c->ca_file,
            .sigv4 = c->sigv4,
            .user = creds.access_key_id,
            .password = creds.secret_access_key,
            .timeout_ms = c->timeout_ms,
            .max_response = s->max_response,
        };
        uint64_t t0 = cl_monotonic_us();
        rc = cl_http_perform(c->curl, &call);
        c->stats.network_us += cl_monotonic_us() - t0;
        c->stats.attempts++;
        curl_easy_setopt(c->curl, CURLOPT_USERNAME, NULL);
        curl_easy_setopt(c->curl, CURLOPT_PASSWORD, NULL);
        curl_slist_free_all(headers);
        cl_aws_credentials_wipe(&creds);

        bool retry = false;
        char type[128] = "", message[512] = "";
        if (rc < 0) {
            /* a refused certificate or an oversized answer will not get better */
            retry = rc != CL_ELIMIT && call.curl_code != CURLE_PEER_FAILED_VERIFICATION &&
                    call.curl_code != CURLE_SSL_CACERT_BADFILE && call.curl_code != CURLE_URL_MALFORMAT &&
                    call.curl_code != CURLE_WRITE_ERROR;
            rc = cl_error_prefix(rc, "%s %s: ", s->name, op);
        } else if (raw && (call.status == 200 || !s->retryable(call.status, NULL) || attempt >= c->max_attempts)) {
            /* the caller judges the answer; only the error type is read here
             * (an expired token is fetched again once) */
            int prc = call.status == 200 ? CL_EPARSE
                                         : cl_aws_json_parse_error(call.status, call.response.data, call.response.len,
                                                                   type, sizeof type, message, sizeof message);
            cl_error_clear();
            bool expired = prc == CL_OK && !strcmp(type, "ExpiredTokenException");
            bool throttled = prc == CL_OK && s->retryable(call.status, type);
            if (call.status == 200 || ((!expired || refreshed) && (!throttled || attempt >= c->max_attempts))) {
                snprintf(c->error_type, sizeof c->error_type, "%s", type);
                *status = call.status;
                cl_buf_free(answer);
                *answer = call.response;
                return CL_OK;
            }
            if (expired) {
                cl_aws_credentials_invalidate(c->creds);
                refreshed = true;
            }
            retry = true;
        } else if (call.status == 200) {
            *status = call.status;
            cl_buf_free(answer);
            *answer = call.response;
            return CL_OK;
        } else {
            int prc = cl_aws_json_parse_error(call.status, call.response.data, call.response.len, type, sizeof type,
                                              message, sizeof message);
            snprintf(c->error_type, sizeof c->error_type, "%s", type);
            if (prc < 0)
                rc = cl_error_prefix(call.status >= 500 ? CL_EIO : CL_EPROTO, "%s %s: ", s->name, op);
            else
                rc = cl_error_set(s->error_code(call.status, type), "%s %s: %s: %s (HTTP %ld%s%s)", s->name, op, type,
                                  message[0] ? message : "(no message)", call.status,
                                  call.request_id[0] ? ", request id " : "", call.request_id);
            retry = s->retryable(call.status, type);
            if (!retry && !refreshed && !strcmp(type, "ExpiredTokenException")) {
                cl_aws_credentials_invalidate(c->creds);
                refreshed = true;
                retry = true;
            }
        }
        cl_buf_free(&call.response);
        if (!retry || attempt >= c->max_attempts) {
            if (retry && attempt > 1)
                return cl_error_prefix(rc, "after %u attempts: ", attempt);
            return rc;
        }
        c->stats.retries++;
        cl_aws_json_sleep_ms(backoff_delay(c->backoff_ms, attempt));
    }
}

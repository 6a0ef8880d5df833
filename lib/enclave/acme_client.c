/* The ACME protocol (RFC 8555): directory, nonces, account, order,
 * authorizations and challenges, finalize, certificate download.  Blocking:
 * it runs in the enclave's ACME thread, never on a request path.
 *
 * Retries are bounded everywhere: a badNonce is retried at most
 * MAX_BAD_NONCE times per request, a 5xx at most MAX_SERVER_ERRORS times
 * with a short backoff, polls at most max_polls times; a 429 (or a 503 with
 * Retry-After) is not retried here but handed up with the wait the CA asked
 * for, so the renewal loop can back off for as long as it said. */
#include "cloister/enclave/acme.h"

#include "cloister/core/clock.h"
#include "cloister/core/log.h"
#include "core/curl_http.h"

#include <jansson.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define MAX_BAD_NONCE 5
#define MAX_SERVER_ERRORS 3
#define NONCE_MAX 128
/* how long a worker answers a pushed challenge if the leader never
 * withdraws it (the leader dies mid-validation) */
#define PUBLISH_LIFE_S 600
#define BAD_NONCE "urn:ietf:params:acme:error:badNonce"

/* the CA's answer r was not what the step needed: fail with it */
#define FAIL_REPLY(r, what)                                                    \
    do {                                                                       \
        rc = fail_with((r), (what));                                           \
        goto out;                                                              \
    } while (0)

struct cl_acme {
    cl_acme_config cfg;
    CURL *h;
    EVP_PKEY *account;
    char kid[CL_ACME_URL_MAX];
    bool have_directory;
    cl_acme_directory dir;
    char nonce[NONCE_MAX + 1];
    unsigned retry_after_s;
    atomic_uint_fast64_t requests, bad_nonce_retries, orders;
    bool published; /* cfg.publish has a challenge out */
};

typedef struct reply {
    long status;
    cl_buf body;
    char location[CL_ACME_URL_MAX];
    char nonce[NONCE_MAX + 1];
    char retry_after[64];
    char content_type[96];
} reply;

static void reply_free(reply *r)
{
    cl_buf_free(&r->body);
    memset(r, 0, sizeof *r);
}

/* ---- HTTP ------------------------------------------------------------------ */

static void copy_header_value(const char *v, size_t n, char *dst, size_t cap)
{
    while (n && (*v == ' ' || *v == '\t'))
        v++, n--;
    while (n && (v[n - 1] == '\r' || v[n - 1] == '\n' || v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    /* a value longer than its slot is dropped, not cut: a cut URL or nonce
     * would be a different one */
    if (n >= cap) {
        dst[0] = '\0';
        return;
    }
    for (size_t i = 0; i < n; i++)
        dst[i] = (unsigned char)v[i] >= 0x20 && (unsigned char)v[i] < 0x7f ? v[i] : '?';
    dst[n] = '\0';
}

static void on_header(void *ctx, const char *line, size_t len)
{
    reply *r = ctx;
    if (len >= 5 && !strncmp(line, "HTTP/", 5)) {
        /* a new response (after an interim one): forget what came before */
        r->location[0] = r->nonce[0] = r->retry_after[0] = r->content_type[0] = '\0';
        return;
    }
    static const struct {
        const char *name;
        size_t off, cap;
    } wanted[] = {
        {"location:", offsetof(reply, location), CL_ACME_URL_MAX},
        {"replay-nonce:", offsetof(reply, nonce), NONCE_MAX + 1},
        {"retry-after:", offsetof(reply, retry_after), 64},
        {"content-type:", offsetof(reply, content_type), 96},
    };
    for (size_t i = 0; i < sizeof wanted / sizeof wanted[0]; i++) {
        size_t nl = strlen(wanted[i].name);
        if (len > nl && !strncasecmp(line, wanted[i].name, nl))
            copy_header_value(line + nl, len - nl, (char *)r + wanted[i].off, wanted[i].cap);
    }
}

static bool nonce_ok(const char *n)
{
    size_t len = strlen(n);
    if (len < 8 || len > NONCE_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = n[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
            return false;
    }
    return true;
}

static int exchange(cl_acme *a, const char *method, const char *url, const cl_buf *body, const char *accept,
                    reply *r)
{
    memset(r, 0, sizeof *r);
    struct curl_slist *headers = NULL, *h2;
    const char *lines[] = {"User-Agent: cloister-acme/1", "Expect:",
                           body ? "Content-Type: application/jose+json" : NULL};
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        if (!lines[i])
            continue;
        h2 = curl_slist_append(headers, lines[i]);
        if (!h2) {
            curl_slist_free_all(headers);
            return cl_error_set(CL_ENOMEM, "out of memory");
        }
        headers = h2;
    }
    if (accept) {
        char line[128];
        snprintf(line, sizeof line, "Accept: %s", accept);
        h2 = curl_slist_append(headers, line);
        if (!h2) {
            curl_slist_free_all(headers);
            return cl_error_set(CL_ENOMEM, "out of memory");
        }
        headers = h2;
    }
    cl_http_call call = {
        .method = method,
        .url = url,
        .headers = headers,
        .body = body ? body->data : NULL,
        .body_len = body ? body->len : 0,
        .dial = a->cfg.dial,
        .ca_file = a->cfg.ca_file,
        .timeout_ms = a->cfg.timeout_ms ? a->cfg.timeout_ms : 15000,
        .max_response = 256 * 1024,
        .on_header = on_header,
        .header_ctx = r,
    };
    atomic_fetch_add(&a->requests, 1);
    int rc = cl_http_perform(a->h, &call);
    curl_slist_free_all(headers);
    if (rc < 0)
        return cl_error_prefix(rc, "ACME: ");
    r->status = call.status;
    r->body = call.response;
    /* every answer may carry the next nonce; a malformed one is not used */
    if (r->nonce[0] && nonce_ok(r->nonce))
        memcpy(a->nonce, r->nonce, sizeof a->nonce);
    return CL_OK;
}

static bool is_problem(const reply *r)
{
    return !strncasecmp(r->content_type, "application/problem+json", 24);
}

/* The CA's refusal as an error: its problem document in full, or what it
 * sent when it sent none. */
static int fail_with(const reply *r, const char *what)
{
    if (is_problem(r)) {
        cl_acme_problem p;
        if (cl_acme_parse_problem(r->body.data, r->body.len, &p) == CL_OK) {
            char text[2048];
            cl_acme_problem_format(&p, text, sizeof text);
            return cl_error_set(CL_EPROTO, "%s: HTTP %ld: %s", what, r->status, text);
        }
    }
    char shown[160];
    size_t n = r->body.len < sizeof shown - 1 ? r->body.len : sizeof shown - 1;
    for (size_t i = 0; i < n; i++)
        shown[i] = r->body.data[i] >= 0x20 && r->body.data[i] < 0x7f ? (char)r->body.data[i] : '.';
    shown[n] = '\0';
    return cl_error_set(CL_EPROTO, "%s: HTTP %ld without a problem document%s%s", what, r->status, n ? ": " : "",
                        shown);
}

static bool cancelled(const cl_acme *a)
{
    return a->cfg.cancel && atomic_load(a->cfg.cancel);
}

static int wait_ms(cl_acme *a, uint64_t ms)
{
    uint64_t end = cl_monotonic_ms() + ms;
    for (;;) {
        CL_ENSURE(!cancelled(a), CL_EIO, "ACME: stopped");
        uint64_t now = cl_monotonic_ms();
        if (now >= end)
            return CL_OK;
        uint64_t step = end - now < 100 ? end - now : 100;
        struct timespec ts = {0, (long)step * 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* what the CA asked for, capped at a day; callers cap it further where
 * they wait themselves */
static unsigned retry_after_of(const reply *r, unsigned dflt)
{
    unsigned s = 0;
    if (r->retry_after[0] && cl_acme_parse_retry_after(r->retry_after, (int64_t)time(NULL), 86400, &s) == CL_OK)
        return s;
    return dflt;
}

static int directory(cl_acme *a)
{
    if (a->have_directory)
        return CL_OK;
    reply r;
    const char *url = a->cfg.directory ? a->cfg.directory : CL_ACME_LETSENCRYPT;
    int rc = CL_OK;
    for (unsigned attempt = 0;; attempt++) {
        CL_TRY(exchange(a, "GET", url, NULL, "application/json", &r));
        if (r.status >= 500 && attempt + 1 < MAX_SERVER_ERRORS) {
            reply_free(&r);
            CL_TRY(wait_ms(a, 500u << attempt));
            continue;
        }
        break;
    }
    if (r.status != 200) {
        a->retry_after_s = retry_after_of(&r, 0);
        rc = fail_with(&r, "the ACME directory");
    } else {
        rc = cl_acme_parse_directory(r.body.data, r.body.len, &a->dir);
        if (rc < 0)
            rc = cl_error_prefix(rc, "%s: ", url);
        else
            a->have_directory = true;
    }
    reply_free(&r);
    return rc;
}

static int fresh_nonce(cl_acme *a)
{
    if (a->nonce[0])
        return CL_OK;
    reply r;
    CL_TRY(exchange(a, "GET", a->dir.new_nonce, NULL, NULL, &r));
    int rc = CL_OK;
    if (r.status != 200 && r.status != 204)
        rc = fail_with(&r, "ACME newNonce");
    else if (!a->nonce[0])
        rc = cl_error_set(CL_EPROTO, "ACME newNonce: no usable Replay-Nonce header");
    reply_free(&r);
    return rc;
}

/* A JWS POST (payload NULL: POST-as-GET), with the nonce dance.  On return
 * r holds the final answer whatever its status; the caller judges it. */
static int post(cl_acme *a, const char *url, const char *payload, bool with_jwk, const char *accept, reply *r)
{
    unsigned bad_nonces = 0, server_errors = 0;
    for (;;) {
        CL_TRY(fresh_nonce(a));
        char nonce[NONCE_MAX + 1];
        memcpy(nonce, a->nonce, sizeof nonce);
        a->nonce[0] = '\0'; /* each nonce is good for one request */
        cl_buf jws;
        CL_TRY(cl_acme_jws(a->account, with_jwk ? NULL : a->kid, nonce, url, payload, &jws));
        int rc = exchange(a, "POST", url, &jws, accept, r);
        cl_buf_free(&jws);
        CL_TRY(rc);
        if (r->status == 400 && is_problem(r)) {
            cl_acme_problem p;
            if (cl_acme_parse_problem(r->body.data, r->body.len, &p) == CL_OK && !strcmp(p.type, BAD_NONCE) &&
                bad_nonces < MAX_BAD_NONCE) {
                /* RFC 8555 6.5: retry with the nonce that came with the error */
                bad_nonces++;
                atomic_fetch_add(&a->bad_nonce_retries, 1);
                cl_log(CL_LOG_DEBUG, "acme_bad_nonce_retry", "url", url, NULL);
                reply_free(r);
                continue;
            }
        }
        if (r->status >= 500 && server_errors + 1 < MAX_SERVER_ERRORS &&
            !(r->status == 503 && r->retry_after[0])) {
            server_errors++;
            reply_free(r);
            CL_TRY(wait_ms(a, 500u << server_errors));
            continue;
        }
        if (r->status == 429 || r->status == 503)
            a->retry_after_s = retry_after_of(r, 0);
        return CL_OK;
    }
}

/* ---- account, order, challenges ---------------------------------------------- */

static int account(cl_acme *a)
{
    if (a->kid[0])
        return CL_OK;
    json_t *p = json_pack("{sb}", "termsOfServiceAgreed", 1);
    CL_ENSURE(p, CL_ENOMEM, "out of memory");
    if (a->cfg.email && *a->cfg.email) {
        char mail[320];
        snprintf(mail, sizeof mail, "mailto:%s", a->cfg.email);
        json_object_set_new(p, "contact", json_pack("[s]", mail));
    }
    char *text = json_dumps(p, JSON_COMPACT);
    json_decref(p);
    CL_ENSURE(text, CL_ENOMEM, "out of memory");
    reply r;
    int rc = post(a, a->dir.new_account, text, true, NULL, &r);
    free(text);
    CL_TRY(rc);
    if (r.status != 200 && r.status != 201)
        rc = fail_with(&r, "ACME newAccount");
    else if (!r.location[0] || cl_acme_check_url(r.location, "ACME newAccount's Location") < 0)
        rc = cl_error_set(CL_EPROTO, "ACME newAccount: no usable account URL in Location");
    else
        memcpy(a->kid, r.location, sizeof a->kid);
    reply_free(&r);
    return rc;
}

static int fetch_order(cl_acme *a, const char *url, cl_acme_order *o, reply *r)
{
    CL_TRY(post(a, url, NULL, false, NULL, r));
    if (r->status != 200)
        return fail_with(r, "ACME order");
    int rc = cl_acme_parse_order(r->body.data, r->body.len, o);
    return rc;
}

static const char *challenge_name(cl_acme_challenge_type t)
{
    return t == CL_ACME_HTTP_01 ? "http-01" : "tls-alpn-01";
}

static void withdraw(cl_acme *a)
{
    if (!a->cfg.responder)
        return;
    cl_acme_tls_clear_alpn_challenge(a->cfg.responder);
    cl_acme_tls_clear_http_token(a->cfg.responder);
    if (a->published && a->cfg.publish)
        a->cfg.publish(a->cfg.publish_arg, NULL);
    a->published = false;
}

static int authorize(cl_acme *a, const char *authz_url, const char *fqdn)
{
    reply r = {0};
    cl_acme_authz az;
    cl_buf keyauth = CL_BUF_INIT;
    int rc = CL_OK;
    CL_TRY_OUT(post(a, authz_url, NULL, false, NULL, &r));
    if (r.status != 200)
        FAIL_REPLY(&r, "ACME authorization");
    CL_TRY_OUT(cl_acme_parse_authz(r.body.data, r.body.len, &az));
    if (az.status == CL_ACME_VALID)
        goto out; /* reused from an earlier order */
    CL_ENSURE_OUT(az.status == CL_ACME_PENDING, CL_EVERIFY, "ACME authorization for %s is %s", az.identifier,
                  cl_acme_status_name(az.status));
    CL_ENSURE_OUT(!strcasecmp(az.identifier, fqdn), CL_EVERIFY,
                  "ACME authorization is for %s, not for %s: refusing to prove it", az.identifier, fqdn);
    const char *want = challenge_name(a->cfg.challenge);
    cl_acme_challenge *ch = NULL;
    char offered[256] = "";
    for (size_t i = 0; i < az.challenge_count; i++) {
        size_t used = strlen(offered);
        snprintf(offered + used, sizeof offered - used, "%s%s", used ? ", " : "", az.challenges[i].type);
        if (!strcmp(az.challenges[i].type, want) && az.challenges[i].token[0])
            ch = &az.challenges[i];
    }
    CL_ENSURE_OUT(ch, CL_EVERIFY, "ACME authorization for %s offers no %s challenge (offered: %s)", fqdn, want,
                  offered[0] ? offered : "none");
    char chal_url[CL_ACME_URL_MAX];
    memcpy(chal_url, ch->url, sizeof chal_url);
    CL_TRY_OUT(cl_acme_key_authorization(ch->token, a->account, &keyauth));
    CL_ENSURE_OUT(a->cfg.responder, CL_EINVAL, "no challenge responder");
    if (a->cfg.challenge == CL_ACME_HTTP_01)
        CL_TRY_OUT(cl_acme_tls_set_http_token(a->cfg.responder, ch->token, (const char *)keyauth.data));
    else
        CL_TRY_OUT(cl_acme_tls_set_alpn_challenge(a->cfg.responder, fqdn, (const char *)keyauth.data));
    cl_log(CL_LOG_INFO, "acme_challenge", "type", want, "fqdn", fqdn, NULL);
    if (a->cfg.publish) {
        /* the CA may reach any replica behind the balancer: every one must
         * hold the answer before the CA is told to look */
        cl_acme_pending p = {.expires = (int64_t)time(NULL) + PUBLISH_LIFE_S};
        snprintf(p.type, sizeof p.type, "%s", want);
        snprintf(p.identifier, sizeof p.identifier, "%s", fqdn);
        snprintf(p.token, sizeof p.token, "%s", ch->token);
        CL_ENSURE_OUT(keyauth.len < sizeof p.key_authorization, CL_EINVAL, "key authorization too long");
        memcpy(p.key_authorization, keyauth.data, keyauth.len);
        a->published = true;
        a->cfg.publish(a->cfg.publish_arg, &p);
    }
    reply_free(&r);
    CL_TRY_OUT(post(a, chal_url, "{}", false, NULL, &r));
    if (r.status != 200)
        FAIL_REPLY(&r, "ACME challenge response");
    unsigned polls = a->cfg.max_polls ? a->cfg.max_polls : 30;
    unsigned dflt = a->cfg.poll_interval_ms ? a->cfg.poll_interval_ms : 1000;
    for (unsigned i = 0;; i++) {
        CL_ENSURE_OUT(i < polls, CL_EIO, "ACME: the %s challenge for %s was not validated after %u polls", want,
                      fqdn, polls);
        unsigned cap = a->cfg.max_retry_after_s ? a->cfg.max_retry_after_s : 30;
        unsigned ra = retry_after_of(&r, 0);
        CL_TRY_OUT(wait_ms(a, ra ? (uint64_t)(ra > cap ? cap : ra) * 1000u : dflt));
        reply_free(&r);
        CL_TRY_OUT(post(a, authz_url, NULL, false, NULL, &r));
        if (r.status != 200)
            FAIL_REPLY(&r, "ACME authorization");
        CL_TRY_OUT(cl_acme_parse_authz(r.body.data, r.body.len, &az));
        if (az.status == CL_ACME_VALID)
            break;
        if (az.status != CL_ACME_PENDING) {
            char text[2048] = "no problem document";
            for (size_t k = 0; k < az.challenge_count; k++)
                if (!strcmp(az.challenges[k].type, want) && az.challenges[k].has_error)
                    cl_acme_problem_format(&az.challenges[k].error, text, sizeof text);
            CL_FAIL_OUT(CL_EVERIFY, "ACME: the %s challenge for %s failed (authorization %s): %s", want, fqdn,
                        cl_acme_status_name(az.status), text);
        }
    }
out:
    withdraw(a);
    reply_free(&r);
    cl_buf_free(&keyauth);
    return rc;
}

static int poll_order(cl_acme *a, const char *url, cl_acme_order *o, reply *r, cl_acme_status until)
{
    unsigned polls = a->cfg.max_polls ? a->cfg.max_polls : 30;
    unsigned dflt = a->cfg.poll_interval_ms ? a->cfg.poll_interval_ms : 1000;
    unsigned cap = a->cfg.max_retry_after_s ? a->cfg.max_retry_after_s : 30;
    for (unsigned i = 0;; i++) {
        if (o->status == until)
            return CL_OK;
        if (o->status == CL_ACME_INVALID) {
            char text[2048] = "no problem document";
            if (o->has_error)
                cl_acme_problem_format(&o->error, text, sizeof text);
            return cl_error_set(CL_EVERIFY, "ACME: the order became invalid: %s", text);
        }
        CL_ENSURE(o->status == CL_ACME_PENDING || o->status == CL_ACME_READY || o->status == CL_ACME_PROCESSING,
                  CL_EVERIFY, "ACME: the order is %s, waiting for %s", cl_acme_status_name(o->status),
                  cl_acme_status_name(until));
        CL_ENSURE(i < polls, CL_EIO, "ACME: the order was still %s after %u polls", cl_acme_status_name(o->status),
                  polls);
        unsigned ra = retry_after_of(r, 0);
        CL_TRY(wait_ms(a, ra ? (uint64_t)(ra > cap ? cap : ra) * 1000u : dflt));
        reply_free(r);
        CL_TRY(fetch_order(a, url, o, r));
    }
}

int cl_acme_obtain(cl_acme *a, const char *fqdn, EVP_PKEY *cert_key, cl_buf *chain_pem, X509 **leaf,
                   STACK_OF(X509) **rest)
{
    *chain_pem = (cl_buf)CL_BUF_INIT;
    *leaf = NULL;
    *rest = NULL;
    a->retry_after_s = 0;
    int rc = CL_OK;
    reply r = {0};
    cl_acme_order o;
    cl_buf csr = CL_BUF_INIT, csr64 = CL_BUF_INIT;
    char *payload = NULL;
    char order_url[CL_ACME_URL_MAX];
    CL_TRY_OUT(directory(a));
    CL_TRY_OUT(account(a));

    json_t *p = json_pack("{s[{ssss}]}", "identifiers", "type", "dns", "value", fqdn);
    CL_ENSURE_OUT(p, CL_ENOMEM, "out of memory");
    payload = json_dumps(p, JSON_COMPACT);
    json_decref(p);
    CL_ENSURE_OUT(payload, CL_ENOMEM, "out of memory");
    CL_TRY_OUT(post(a, a->dir.new_order, payload, false, NULL, &r));
    if (r.status != 201)
        FAIL_REPLY(&r, "ACME newOrder");
    CL_ENSURE_OUT(r.location[0] && cl_acme_check_url(r.location, "ACME newOrder's Location") == CL_OK, CL_EPROTO,
                  "ACME newOrder: no usable order URL in Location");
    memcpy(order_url, r.location, sizeof order_url);
    CL_TRY_OUT(cl_acme_parse_order(r.body.data, r.body.len, &o));
    atomic_fetch_add(&a->orders, 1);
    cl_log(CL_LOG_INFO, "acme_order", "fqdn", fqdn, "order", order_url, "status", cl_acme_status_name(o.status), NULL);

    if (o.status == CL_ACME_PENDING) {
        for (size_t i = 0; i < o.authz_count; i++)
            CL_TRY_OUT(authorize(a, o.authz[i], fqdn));
        reply_free(&r);
        CL_TRY_OUT(fetch_order(a, order_url, &o, &r));
        CL_TRY_OUT(poll_order(a, order_url, &o, &r, CL_ACME_READY));
    }
    if (o.status == CL_ACME_READY) {
        CL_TRY_OUT(cl_acme_csr(cert_key, fqdn, &csr));
        CL_TRY_OUT(cl_base64url_encode(csr.data, csr.len, &csr64));
        free(payload);
        payload = NULL;
        json_t *f = json_pack("{ss}", "csr", (const char *)csr64.data);
        CL_ENSURE_OUT(f, CL_ENOMEM, "out of memory");
        payload = json_dumps(f, JSON_COMPACT);
        json_decref(f);
        CL_ENSURE_OUT(payload, CL_ENOMEM, "out of memory");
        char finalize[CL_ACME_URL_MAX];
        memcpy(finalize, o.finalize, sizeof finalize);
        reply_free(&r);
        CL_TRY_OUT(post(a, finalize, payload, false, NULL, &r));
        if (r.status != 200)
            FAIL_REPLY(&r, "ACME finalize");
        CL_TRY_OUT(cl_acme_parse_order(r.body.data, r.body.len, &o));
    }
    CL_TRY_OUT(poll_order(a, order_url, &o, &r, CL_ACME_VALID));
    char cert_url[CL_ACME_URL_MAX];
    memcpy(cert_url, o.certificate, sizeof cert_url);
    reply_free(&r);
    CL_TRY_OUT(post(a, cert_url, NULL, false, "application/pem-certificate-chain", &r));
    if (r.status != 200)
        FAIL_REPLY(&r, "ACME certificate download");
    rc = cl_acme_check_chain(r.body.data, r.body.len, fqdn, cert_key, leaf, rest);
    if (rc < 0) {
        rc = cl_error_prefix(rc, "ACME certificate download: ");
        goto out;
    }
    *chain_pem = r.body;
    r.body = (cl_buf)CL_BUF_INIT;
out:
    free(payload);
    cl_buf_free(&csr);
    cl_buf_free(&csr64);
    reply_free(&r);
    return rc;
}

/* ---- lifetime ---------------------------------------------------------------- */

int cl_acme_new(const cl_acme_config *cfg, EVP_PKEY *account_key, cl_acme **out)
{
    *out = NULL;
    CL_TRY(cl_curl_init());
    cl_acme *a = calloc(1, sizeof *a);
    if (!a) {
        EVP_PKEY_free(account_key);
        return cl_error_set(CL_ENOMEM, "out of memory");
    }
    a->cfg = *cfg;
    a->account = account_key;
    int rc = CL_OK;
    if (cfg->directory)
        CL_TRY_OUT(cl_acme_check_url(cfg->directory, "--acme-directory"));
    a->h = curl_easy_init();
    CL_ENSURE_OUT(a->h, CL_ENOMEM, "libcurl: cannot make a handle");
    if (!a->account)
        CL_TRY_OUT(cl_acme_new_key(&a->account));
    *out = a;
    return CL_OK;
out:
    cl_acme_free(a);
    return rc;
}

void cl_acme_free(cl_acme *a)
{
    if (!a)
        return;
    if (a->h)
        curl_easy_cleanup(a->h);
    EVP_PKEY_free(a->account);
    free(a);
}

void cl_acme_set_account_key(cl_acme *a, EVP_PKEY *key)
{
    EVP_PKEY_free(a->account);
    a->account = key;
    a->kid[0] = '\0'; /* newAccount again: the CA answers with this key's account */
}

EVP_PKEY *cl_acme_account_key(cl_acme *a)
{
    return a->account;
}

void cl_acme_get_stats(const cl_acme *a, cl_acme_stats *out)
{
    cl_acme *m = (cl_acme *)a;
    out->requests = atomic_load(&m->requests);
    out->bad_nonce_retries = atomic_load(&m->bad_nonce_retries);
    out->orders = atomic_load(&m->orders);
}

unsigned cl_acme_retry_after(const cl_acme *a)
{
    return a->retry_after_s;
}

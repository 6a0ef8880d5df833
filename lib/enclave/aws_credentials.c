/* AWS credentials: given (flags), from the environment, or from IMDSv2
 * (through `cloister host --imds` inside an enclave), the last refreshed
 * before they expire. */
#include "cloister/core/imds_policy.h"
#include "cloister/enclave/kms.h"
#include "core/curl_http.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define IMDS_URL "http://169.254.169.254"
#define IMDS_TOKEN_TTL_S 21600
#define IMDS_TIMEOUT_MS 5000

enum source { SOURCE_FLAGS, SOURCE_ENV, SOURCE_IMDS };

struct cl_aws_credentials_provider {
    int source;
    pthread_mutex_t lock;
    cl_aws_credentials creds;
    bool have;
    uint64_t fetches;
    /* IMDS */
    cl_address addr;
    CURL *curl;
    char role[CL_IMDS_ROLE_MAX + 1];
    bool role_given;
    char token[512];
    int64_t token_expires;
};

void cl_aws_credentials_wipe(cl_aws_credentials *c)
{
    cl_wipe(c, sizeof *c);
}

bool cl_aws_credentials_due(int64_t expiration, int64_t now)
{
    return expiration != 0 && now >= expiration - CL_AWS_REFRESH_BEFORE_S;
}

static int copy_field(char *dst, size_t cap, const char *src, const char *what)
{
    size_t n = src ? strlen(src) : 0;
    CL_ENSURE(n < cap, CL_ELIMIT, "%s is longer than %zu characters", what, cap - 1);
    for (size_t i = 0; i < n; i++)
        CL_ENSURE(src[i] > 0x20 && src[i] < 0x7f, CL_EINVAL, "%s holds a character that is not printable ASCII", what);
    if (n)
        memcpy(dst, src, n);
    dst[n] = '\0';
    return CL_OK;
}

static int provider_new(int source, cl_aws_credentials_provider **out)
{
    cl_aws_credentials_provider *p = calloc(1, sizeof *p);
    CL_ENSURE(p, CL_ENOMEM, "out of memory");
    p->source = source;
    pthread_mutex_init(&p->lock, NULL);
    *out = p;
    return CL_OK;
}

int cl_aws_credentials_static(const char *access_key_id, const char *secret_access_key, const char *session_token,
                              cl_aws_credentials_provider **out)
{
    *out = NULL;
    CL_ENSURE(access_key_id && *access_key_id, CL_EINVAL, "no AWS access key id");
    CL_ENSURE(secret_access_key && *secret_access_key, CL_EINVAL, "no AWS secret access key");
    cl_aws_credentials c = {0};
    int rc = copy_field(c.access_key_id, sizeof c.access_key_id, access_key_id, "the access key id");
    if (rc == CL_OK)
        rc = copy_field(c.secret_access_key, sizeof c.secret_access_key, secret_access_key, "the secret access key");
    if (rc == CL_OK)
        rc = copy_field(c.session_token, sizeof c.session_token, session_token, "the session token");
    cl_aws_credentials_provider *p = NULL;
    if (rc == CL_OK)
        rc = provider_new(SOURCE_FLAGS, &p);
    if (rc == CL_OK) {
        p->creds = c;
        p->have = true;
        *out = p;
    }
    cl_aws_credentials_wipe(&c);
    return rc;
}

int cl_aws_credentials_from_env(cl_aws_credentials_provider **out)
{
    *out = NULL;
    const char *id = getenv("AWS_ACCESS_KEY_ID"), *secret = getenv("AWS_SECRET_ACCESS_KEY");
    CL_ENSURE(id && *id && secret && *secret, CL_ENOTFOUND,
              "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not both set");
    int rc = cl_aws_credentials_static(id, secret, getenv("AWS_SESSION_TOKEN"), out);
    if (rc < 0)
        return cl_error_prefix(rc, "environment: ");
    (*out)->source = SOURCE_ENV;
    return CL_OK;
}

/* "2026-12-01T18:00:00Z" */
static int parse_time(const char *text, int64_t *out)
{
    struct tm tm = {0};
    const char *end = text ? strptime(text, "%Y-%m-%dT%H:%M:%S", &tm) : NULL;
    CL_ENSURE(end && (!strcmp(end, "Z") || !strcmp(end, "+00:00")), CL_EPARSE,
              "Expiration '%s' is not an RFC 3339 UTC time", text ? text : "");
    *out = (int64_t)timegm(&tm);
    return CL_OK;
}

static const char *json_text(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

int cl_aws_credentials_parse_imds(const char *json, size_t len, cl_aws_credentials *out)
{
    memset(out, 0, sizeof *out);
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    CL_ENSURE(root, CL_EPARSE, "IMDS credentials are not JSON: %s", jerr.text);
    int rc = CL_OK;
    CL_ENSURE_OUT(json_is_object(root), CL_EPARSE, "IMDS credentials are not a JSON object");
    const char *code = json_text(root, "Code");
    CL_ENSURE_OUT(code, CL_EPARSE, "IMDS credentials have no Code");
    CL_ENSURE_OUT(!strcmp(code, "Success"), CL_EVERIFY, "IMDS credentials: Code %s (not Success)", code);
    const char *id = json_text(root, "AccessKeyId"), *secret = json_text(root, "SecretAccessKey"),
               *token = json_text(root, "Token"), *exp = json_text(root, "Expiration");
    CL_ENSURE_OUT(id && *id && secret && *secret && token && *token && exp, CL_EPARSE,
                  "IMDS credentials lack AccessKeyId, SecretAccessKey, Token or Expiration");
    CL_TRY_OUT(copy_field(out->access_key_id, sizeof out->access_key_id, id, "AccessKeyId"));
    CL_TRY_OUT(copy_field(out->secret_access_key, sizeof out->secret_access_key, secret, "SecretAccessKey"));
    CL_TRY_OUT(copy_field(out->session_token, sizeof out->session_token, token, "Token"));
    CL_TRY_OUT(parse_time(exp, &out->expiration));
out:
    if (rc < 0)
        cl_aws_credentials_wipe(out);
    /* the secret strings inside the JSON tree */
    const char *key;
    json_t *v;
    if (json_is_object(root))
        json_object_foreach(root, key, v) if (json_is_string(v))
            cl_wipe((void *)json_string_value(v), json_string_length(v));
    json_decref(root);
    return rc;
}

/* ---- IMDSv2 ------------------------------------------------------------- */

static int imds_call(cl_aws_credentials_provider *p, const char *method, const char *path, bool with_token,
                     cl_http_call *call)
{
    char url[256], ttl[80], tok[600];
    snprintf(url, sizeof url, "%s%s", IMDS_URL, path);
    struct curl_slist *headers = NULL;
    if (with_token) {
        snprintf(tok, sizeof tok, "%s: %s", CL_IMDS_TOKEN_HEADER, p->token);
        headers = curl_slist_append(headers, tok);
    } else {
        snprintf(ttl, sizeof ttl, "%s: %d", CL_IMDS_TTL_HEADER, IMDS_TOKEN_TTL_S);
        headers = curl_slist_append(headers, ttl);
    }
    CL_ENSURE(headers, CL_ENOMEM, "out of memory");
    *call = (cl_http_call){
        .method = method,
        .url = url,
        .headers = headers,
        .dial = &p->addr,
        .timeout_ms = IMDS_TIMEOUT_MS,
        .one_request_per_connection = true,
    };
    int rc = cl_http_perform(p->curl, call);
    curl_slist_free_all(headers);
    cl_wipe(tok, sizeof tok);
    if (rc < 0)
        return cl_error_prefix(rc, "IMDS %s %s: ", method, path);
    return CL_OK;
}

static int imds_token(cl_aws_credentials_provider *p, int64_t now)
{
    if (p->token[0] && now < p->token_expires)
        return CL_OK;
    cl_http_call call;
    CL_TRY(imds_call(p, "PUT", CL_IMDS_TOKEN_PATH, false, &call));
    int rc = CL_OK;
    CL_ENSURE_OUT(call.status == 200, CL_EVERIFY, "IMDS token: HTTP %ld (%.*s)", call.status,
                  (int)(call.response.len > 200 ? 200 : call.response.len), (const char *)call.response.data);
    CL_ENSURE_OUT(call.response.len > 0 && call.response.len < sizeof p->token, CL_EPROTO,
                  "IMDS token of %zu bytes", call.response.len);
    for (size_t i = 0; i < call.response.len; i++)
        CL_ENSURE_OUT(call.response.data[i] > 0x20 && call.response.data[i] < 0x7f, CL_EPROTO,
                      "IMDS token holds a character that cannot go in a header");
    memcpy(p->token, call.response.data, call.response.len);
    p->token[call.response.len] = '\0';
    p->token_expires = now + IMDS_TOKEN_TTL_S - 60;
out:
    cl_buf_free(&call.response);
    return rc;
}

/* A GET with the session token; a 401 (token expired or IMDS restarted)
 * gets a new token and one more try. */
static int imds_get(cl_aws_credentials_provider *p, const char *path, cl_http_call *call)
{
    for (int attempt = 0;; attempt++) {
        CL_TRY(imds_token(p, (int64_t)time(NULL)));
        CL_TRY(imds_call(p, "GET", path, true, call));
        if (call->status == 401 && attempt == 0) {
            cl_buf_free(&call->response);
            p->token[0] = '\0';
            continue;
        }
        if (call->status != 200) {
            int rc = cl_error_set(call->status == 404 ? CL_ENOTFOUND : CL_EVERIFY, "IMDS GET %s: HTTP %ld (%.*s)",
                                  path, call->status,
                                  (int)(call->response.len > 200 ? 200 : call->response.len),
                                  (const char *)call->response.data);
            cl_buf_free(&call->response);
            return rc;
        }
        return CL_OK;
    }
}

static int imds_fetch_locked(cl_aws_credentials_provider *p)
{
    cl_http_call call;
    int rc = CL_OK;
    if (!p->role_given) {
        CL_TRY(imds_get(p, CL_IMDS_CREDENTIALS_PATH, &call));
        size_t n = 0;
        while (n < call.response.len && call.response.data[n] != '\n' && call.response.data[n] != '\r')
            n++;
        bool ok = n > 0 && cl_imds_role_name_valid((const char *)call.response.data, n);
        if (ok) {
            memcpy(p->role, call.response.data, n);
            p->role[n] = '\0';
        }
        cl_buf_free(&call.response);
        CL_ENSURE(ok, CL_EPROTO, "IMDS names no valid IAM role (is an instance profile attached?)");
    }
    char path[160];
    snprintf(path, sizeof path, "%s%s", CL_IMDS_CREDENTIALS_PATH, p->role);
    CL_TRY(imds_get(p, path, &call));
    cl_aws_credentials fresh;
    rc = cl_aws_credentials_parse_imds((const char *)call.response.data, call.response.len, &fresh);
    cl_buf_free(&call.response);
    if (rc < 0)
        return cl_error_prefix(rc, "role %s: ", p->role);
    cl_aws_credentials_wipe(&p->creds);
    p->creds = fresh;
    cl_aws_credentials_wipe(&fresh);
    p->have = true;
    p->fetches++;
    return CL_OK;
}

int cl_aws_credentials_imds(const char *addr, const char *role, cl_aws_credentials_provider **out)
{
    *out = NULL;
    cl_address a;
    int rc = cl_address_parse(addr, &a);
    if (rc < 0)
        return cl_error_prefix(rc, "IMDS address: ");
    if (role)
        CL_ENSURE(cl_imds_role_name_valid(role, strlen(role)), CL_EINVAL, "'%s' is not an IAM role name", role);
    CL_TRY(cl_curl_init());
    cl_aws_credentials_provider *p = NULL;
    CL_TRY(provider_new(SOURCE_IMDS, &p));
    p->addr = a;
    if (role) {
        snprintf(p->role, sizeof p->role, "%s", role);
        p->role_given = true;
    }
    p->curl = curl_easy_init();
    if (!p->curl) {
        cl_aws_credentials_provider_free(p);
        return cl_error_set(CL_ENOMEM, "cannot make a libcurl handle");
    }
    pthread_mutex_lock(&p->lock);
    rc = imds_fetch_locked(p);
    pthread_mutex_unlock(&p->lock);
    if (rc < 0) {
        cl_aws_credentials_provider_free(p);
        return cl_error_prefix(rc, "credentials from IMDSv2 at %s: ", addr);
    }
    *out = p;
    return CL_OK;
}

int cl_aws_credentials_get(cl_aws_credentials_provider *p, cl_aws_credentials *out)
{
    pthread_mutex_lock(&p->lock);
    int rc = CL_OK;
    if (p->source == SOURCE_IMDS && (!p->have || cl_aws_credentials_due(p->creds.expiration, (int64_t)time(NULL)))) {
        rc = imds_fetch_locked(p);
        if (rc < 0) {
            rc = cl_error_prefix(rc, "refreshing credentials from IMDSv2: ");
            /* still-valid old credentials are better than none */
            if (p->have && (int64_t)time(NULL) < p->creds.expiration)
                rc = CL_OK;
        }
    }
    if (rc == CL_OK && !p->have)
        rc = cl_error_set(CL_ENOTFOUND, "no AWS credentials");
    if (rc == CL_OK)
        *out = p->creds;
    pthread_mutex_unlock(&p->lock);
    return rc;
}

void cl_aws_credentials_invalidate(cl_aws_credentials_provider *p)
{
    pthread_mutex_lock(&p->lock);
    if (p->source == SOURCE_IMDS)
        p->have = false;
    pthread_mutex_unlock(&p->lock);
}

/* A short plain-text IMDS answer made only of lower-case letters, digits,
 * and extra_chars: IMDS is relayed by the parent, so the answer is checked
 * before it names anything. */
static int imds_text(cl_aws_credentials_provider *p, const char *path, const char *what, const char *extra_chars,
                     size_t max_len, char *out, size_t out_len)
{
    CL_ENSURE(p->source == SOURCE_IMDS, CL_EINVAL, "the %s comes from IMDS only with IMDS credentials", what);
    pthread_mutex_lock(&p->lock);
    cl_http_call call;
    int rc = imds_get(p, path, &call);
    if (rc == CL_OK) {
        bool ok = call.response.len > 0 && call.response.len < out_len && call.response.len <= max_len;
        for (size_t i = 0; ok && i < call.response.len; i++) {
            uint8_t ch = call.response.data[i];
            ok = (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || (ch && strchr(extra_chars, ch));
        }
        if (ok) {
            memcpy(out, call.response.data, call.response.len);
            out[call.response.len] = '\0';
        } else {
            rc = cl_error_set(CL_EPROTO, "IMDS answered a %s that is not one", what);
        }
        cl_buf_free(&call.response);
    }
    pthread_mutex_unlock(&p->lock);
    return rc;
}

int cl_aws_credentials_imds_region(cl_aws_credentials_provider *p, char *out, size_t out_len)
{
    return imds_text(p, "/latest/meta-data/placement/region", "region", "-", 63, out, out_len);
}

int cl_aws_credentials_imds_local_hostname(cl_aws_credentials_provider *p, char *out, size_t out_len)
{
    return imds_text(p, "/latest/meta-data/local-hostname", "host name", "-.", 253, out, out_len);
}

int cl_aws_credentials_imds_local_ipv4(cl_aws_credentials_provider *p, char *out, size_t out_len)
{
    char text[INET_ADDRSTRLEN];
    CL_TRY(imds_text(p, "/latest/meta-data/local-ipv4", "private IPv4 address", ".", sizeof text - 1, text, sizeof text));
    /* digits and dots are not yet an address: "1..2" or "999.1.1.1" would
     * be dialed as a name */
    struct in_addr a;
    CL_ENSURE(inet_pton(AF_INET, text, &a) == 1, CL_EPROTO, "IMDS answered a private IPv4 address that is not one");
    CL_ENSURE(strlen(text) < out_len, CL_ELIMIT, "no room for the address");
    memcpy(out, text, strlen(text) + 1);
    return CL_OK;
}

const char *cl_aws_credentials_source(const cl_aws_credentials_provider *p)
{
    return p->source == SOURCE_IMDS ? "imds" : p->source == SOURCE_ENV ? "environment" : "flags";
}

uint64_t cl_aws_credentials_fetches(const cl_aws_credentials_provider *p)
{
    return p->fetches;
}

void cl_aws_credentials_provider_free(cl_aws_credentials_provider *p)
{
    if (!p)
        return;
    if (p->curl)
        curl_easy_cleanup(p->curl);
    cl_aws_credentials_wipe(&p->creds);
    cl_wipe(p->token, sizeof p->token);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

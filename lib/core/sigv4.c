/* AWS Signature Version 4: canonical request, string to sign, signing key,
 * and verification with AWS's error types and messages. */
#include "cloister/core/sigv4.h"

#include "cloister/core/encoding.h"

#include <openssl/crypto.h>
#include <stdarg.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ALGORITHM "AWS4-HMAC-SHA256"
#define MAX_SIGNED_HEADERS 64
#define MAX_QUERY_PARAMS 64

static int append(cl_buf *b, const char *text)
{
    return cl_buf_append(b, text, strlen(text));
}

static bool unreserved(uint8_t c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
           c == '.' || c == '~';
}

static int uri_encode(cl_buf *b, const uint8_t *s, size_t n, bool keep_slash)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        uint8_t c = s[i];
        if (unreserved(c) || (keep_slash && c == '/')) {
            CL_TRY(cl_buf_append_u8(b, c));
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            CL_TRY(cl_buf_append(b, e, 3));
        }
    }
    return CL_OK;
}

/* Percent-decodes s into out ('+' stays '+', as AWS signs it). */
static int uri_decode(const uint8_t *s, size_t n, cl_buf *out)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%' && i + 2 < n) {
            int hi = cl_hex_digit_value(s[i + 1]), lo = cl_hex_digit_value(s[i + 2]);
            if (hi >= 0 && lo >= 0) {
                CL_TRY(cl_buf_append_u8(out, (uint8_t)(hi << 4 | lo)));
                i += 2;
                continue;
            }
        }
        CL_TRY(cl_buf_append_u8(out, s[i]));
    }
    return CL_OK;
}

typedef struct param {
    cl_buf name, value; /* encoded */
} param;

static int param_cmp(const void *a, const void *b)
{
    const param *x = a, *y = b;
    size_t n = x->name.len < y->name.len ? x->name.len : y->name.len;
    int c = n ? memcmp(x->name.data, y->name.data, n) : 0;
    if (c || x->name.len != y->name.len)
        return c ? c : (x->name.len < y->name.len ? -1 : 1);
    n = x->value.len < y->value.len ? x->value.len : y->value.len;
    c = n ? memcmp(x->value.data, y->value.data, n) : 0;
    if (c || x->value.len == y->value.len)
        return c;
    return x->value.len < y->value.len ? -1 : 1;
}

static int canonical_query(cl_slice q, cl_buf *out)
{
    param params[MAX_QUERY_PARAMS];
    size_t count = 0;
    int rc = CL_OK;
    size_t i = 0;
    while (i < q.len) {
        size_t end = i;
        while (end < q.len && q.data[end] != '&')
            end++;
        if (end > i) {
            CL_ENSURE_OUT(count < MAX_QUERY_PARAMS, CL_ELIMIT, "more than %d query parameters", MAX_QUERY_PARAMS);
            size_t eq = i;
            while (eq < end && q.data[eq] != '=')
                eq++;
            param *p = &params[count++];
            p->name = (cl_buf)CL_BUF_INIT;
            p->value = (cl_buf)CL_BUF_INIT;
            cl_buf raw = CL_BUF_INIT;
            rc = uri_decode(q.data + i, eq - i, &raw);
            if (rc == CL_OK)
                rc = uri_encode(&p->name, raw.data, raw.len, false);
            cl_buf_reset(&raw);
            if (rc == CL_OK && eq < end)
                rc = uri_decode(q.data + eq + 1, end - eq - 1, &raw);
            if (rc == CL_OK)
                rc = uri_encode(&p->value, raw.data, raw.len, false);
            cl_buf_free(&raw);
            if (rc < 0)
                goto out;
        }
        i = end + 1;
    }
    qsort(params, count, sizeof params[0], param_cmp);
    for (size_t k = 0; k < count && rc == CL_OK; k++) {
        if (k)
            rc = cl_buf_append_u8(out, '&');
        if (rc == CL_OK)
            rc = cl_buf_append(out, params[k].name.data, params[k].name.len);
        if (rc == CL_OK)
            rc = cl_buf_append_u8(out, '=');
        if (rc == CL_OK)
            rc = cl_buf_append(out, params[k].value.data, params[k].value.len);
    }
out:
    for (size_t k = 0; k < count; k++) {
        cl_buf_free(&params[k].name);
        cl_buf_free(&params[k].value);
    }
    return rc;
}

/* A header's value trimmed, inner runs of spaces as one. */
static int append_trimmed(cl_buf *b, cl_slice v)
{
    size_t s = 0, e = v.len;
    while (s < e && (v.data[s] == ' ' || v.data[s] == '\t'))
        s++;
    while (e > s && (v.data[e - 1] == ' ' || v.data[e - 1] == '\t'))
        e--;
    bool space = false;
    for (size_t i = s; i < e; i++) {
        uint8_t c = v.data[i];
        if (c == ' ' || c == '\t') {
            space = true;
            continue;
        }
        if (space)
            CL_TRY(cl_buf_append_u8(b, ' '));
        space = false;
        CL_TRY(cl_buf_append_u8(b, c));
    }
    return CL_OK;
}

static void sha256_hex(const uint8_t *data, size_t len, char out[65])
{
    uint8_t d[32];
    unsigned n = 0;
    EVP_Digest(data, len, d, &n, EVP_sha256(), NULL);
    cl_hex_encode(d, 32, out);
}

static int hmac(const uint8_t *key, size_t key_len, const void *data, size_t len, uint8_t out[32])
{
    unsigned n = 32;
    if (!HMAC(EVP_sha256(), key, (int)key_len, data, len, out, &n))
        return cl_error_ossl(CL_ECRYPTO, "HMAC-SHA256");
    return CL_OK;
}

/* The hex signature of the request under the given scope. */
static int compute_signature(const cl_sigv4_request *req, const char *secret, const char *date8,
                             const char *region, const char *service, const char *amz_date,
                             const char *signed_headers, char sig_hex[65])
{
    cl_buf cr = CL_BUF_INIT, sts = CL_BUF_INIT, key = CL_BUF_INIT;
    int rc;
    CL_TRY_OUT(cl_buf_append(&cr, req->method.data, req->method.len));
    CL_TRY_OUT(cl_buf_append_u8(&cr, '\n'));
    if (req->path.len == 0)
        CL_TRY_OUT(cl_buf_append_u8(&cr, '/'));
    else
        CL_TRY_OUT(uri_encode(&cr, req->path.data, req->path.len, true));
    CL_TRY_OUT(cl_buf_append_u8(&cr, '\n'));
    CL_TRY_OUT(canonical_query(req->query, &cr));
    CL_TRY_OUT(cl_buf_append_u8(&cr, '\n'));
    /* canonical headers, in the order of signed_headers */
    const char *p = signed_headers;
    while (*p) {
        const char *semi = strchr(p, ';');
        size_t n = semi ? (size_t)(semi - p) : strlen(p);
        CL_TRY_OUT(cl_buf_append(&cr, p, n));
        CL_TRY_OUT(cl_buf_append_u8(&cr, ':'));
        bool first = true;
        for (size_t i = 0; i < req->header_count; i++) {
            cl_slice name = req->headers[i].name;
            if (name.len != n)
                continue;
            bool same = true;
            for (size_t k = 0; k < n && same; k++) {
                uint8_t c = name.data[k];
                if (c >= 'A' && c <= 'Z')
                    c += 32;
                same = c == (uint8_t)p[k];
            }
            if (!same)
                continue;
            if (!first)
                CL_TRY_OUT(cl_buf_append_u8(&cr, ','));
            first = false;
            CL_TRY_OUT(append_trimmed(&cr, req->headers[i].value));
        }
        CL_TRY_OUT(cl_buf_append_u8(&cr, '\n'));
        p += n;
        if (*p == ';')
            p++;
    }
    CL_TRY_OUT(cl_buf_append_u8(&cr, '\n'));
    CL_TRY_OUT(append(&cr, signed_headers));
    CL_TRY_OUT(cl_buf_append_u8(&cr, '\n'));
    char body_hash[65], cr_hash[65];
    sha256_hex(req->body, req->body_len, body_hash);
    CL_TRY_OUT(append(&cr, body_hash));
    sha256_hex(cr.data, cr.len, cr_hash);

    CL_TRY_OUT(append(&sts, ALGORITHM "\n"));
    CL_TRY_OUT(append(&sts, amz_date));
    CL_TRY_OUT(cl_buf_append_u8(&sts, '\n'));
    CL_TRY_OUT(append(&sts, date8));
    CL_TRY_OUT(cl_buf_append_u8(&sts, '/'));
    CL_TRY_OUT(append(&sts, region));
    CL_TRY_OUT(cl_buf_append_u8(&sts, '/'));
    CL_TRY_OUT(append(&sts, service));
    CL_TRY_OUT(append(&sts, "/aws4_request\n"));
    CL_TRY_OUT(append(&sts, cr_hash));

    uint8_t k[32], sig[32];
    CL_TRY_OUT(append(&key, "AWS4"));
    CL_TRY_OUT(append(&key, secret));
    CL_TRY_OUT(hmac(key.data, key.len, date8, strlen(date8), k));
    CL_TRY_OUT(hmac(k, 32, region, strlen(region), k));
    CL_TRY_OUT(hmac(k, 32, service, strlen(service), k));
    CL_TRY_OUT(hmac(k, 32, "aws4_request", 12, k));
    CL_TRY_OUT(hmac(k, 32, sts.data, sts.len, sig));
    cl_hex_encode(sig, 32, sig_hex);
    cl_wipe(k, sizeof k);
out:
    cl_buf_free(&cr);
    cl_buf_free(&sts);
    cl_buf_free(&key);
    return rc;
}

void cl_sigv4_format_date(int64_t unix_seconds, char out[17])
{
    time_t t = (time_t)unix_seconds;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 17, "%Y%m%dT%H%M%SZ", &tm);
}

int cl_sigv4_authorization(const cl_sigv4_request *req, const char *access_key_id, const char *secret,
                           const char *region, const char *service, const char *amz_date, const char *signed_headers,
                           cl_buf *out)
{
    CL_ENSURE(strlen(amz_date) == 16, CL_EINVAL, "X-Amz-Date must look like 20150830T123600Z");
    char date8[9];
    memcpy(date8, amz_date, 8);
    date8[8] = '\0';
    char sig[65];
    CL_TRY(compute_signature(req, secret, date8, region, service, amz_date, signed_headers, sig));
    char text[1024];
    int n = snprintf(text, sizeof text, ALGORITHM " Credential=%s/%s/%s/%s/aws4_request, SignedHeaders=%s, Signature=%s",
                     access_key_id, date8, region, service, signed_headers, sig);
    CL_ENSURE(n > 0 && (size_t)n < sizeof text, CL_ELIMIT, "Authorization header too long");
    return cl_buf_append(out, text, (size_t)n);
}

/* ---- verification ------------------------------------------------------------------------ */

static const cl_slice *header(const cl_sigv4_request *req, const char *name)
{
    for (size_t i = 0; i < req->header_count; i++)
        if (cl_slice_eq_nocase(req->headers[i].name, name))
            return &req->headers[i].value;
    return NULL;
}

static void refuse(cl_sigv4_result *res, int status, const char *fmt, ...) CL_PRINTF(3, 4);

static void refuse(cl_sigv4_result *res, int status, const char *fmt, ...)
{
    res->status = status;
    switch (status) {
    case CL_SIGV4_MISSING: res->error_type = "MissingAuthenticationTokenException"; break;
    case CL_SIGV4_INCOMPLETE: res->error_type = "IncompleteSignatureException"; break;
    case CL_SIGV4_UNKNOWN_KEY: res->error_type = "UnrecognizedClientException"; break;
    default: res->error_type = "InvalidSignatureException"; break;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(res->message, sizeof res->message, fmt, ap);
    va_end(ap);
}

static int digits(const char *s, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++)
        v = v * 10 + (s[i] - '0');
    return v;
}

/* "20150830T123600Z" to Unix seconds; false when it is not that form. */
static bool parse_amz_date(const char *s, int64_t *out)
{
    if (strlen(s) != 16 || s[8] != 'T' || s[15] != 'Z')
        return false;
    for (int i = 0; i < 15; i++)
        if (i != 8 && (s[i] < '0' || s[i] > '9'))
            return false;
    struct tm tm = {0};
    tm.tm_year = digits(s, 4) - 1900;
    tm.tm_mon = digits(s + 4, 2) - 1;
    tm.tm_mday = digits(s + 6, 2);
    tm.tm_hour = digits(s + 9, 2);
    tm.tm_min = digits(s + 11, 2);
    tm.tm_sec = digits(s + 13, 2);
    if (tm.tm_mon > 11 || tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_hour > 23 || tm.tm_min > 59 || tm.tm_sec > 60)
        return false;
    *out = (int64_t)timegm(&tm);
    return true;
}

/* Copies a slice into a NUL-terminated buffer; false if it does not fit
 * or holds a NUL. */
static bool slice_to_text(cl_slice s, char *out, size_t cap)
{
    if (s.len >= cap || memchr(s.data, 0, s.len))
        return false;
    memcpy(out, s.data, s.len);
    out[s.len] = '\0';
    return true;
}

static bool valid_signed_headers(const char *s)
{
    if (!*s)
        return false;
    size_t names = 0;
    for (const char *p = s; *p; p++) {
        char c = *p;
        if (c == ';') {
            if (p == s || p[1] == '\0' || p[1] == ';')
                return false;
            names++;
        } else if ((c >= 'A' && c <= 'Z') || (uint8_t)c <= ' ' || c == ':' || (uint8_t)c >= 0x7f) {
            return false;
        }
    }
    return names < MAX_SIGNED_HEADERS;
}

/* True when the ';'-separated list holds exactly that name. */
static bool names_header(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        const char *semi = strchr(p, ';');
        size_t len = semi ? (size_t)(semi - p) : strlen(p);
        if (len == n && !memcmp(p, name, n))
            return true;
        p += len;
        if (*p == ';')
            p++;
    }
    return false;
}

int cl_sigv4_verify(const cl_sigv4_request *req, const char *region, const char *service, cl_sigv4_lookup_fn lookup,
                    void *ctx, int64_t now_s, cl_sigv4_result *res)
{
    memset(res, 0, sizeof *res);
    const cl_slice *auth = header(req, "Authorization");
    if (!auth) {
        refuse(res, CL_SIGV4_MISSING, "Missing Authentication Token");
        return CL_OK;
    }
    char text[2048];
    if (!slice_to_text(*auth, text, sizeof text)) {
        refuse(res, CL_SIGV4_INCOMPLETE, "Authorization header is too long or malformed.");
        return CL_OK;
    }
    size_t alen = strlen(ALGORITHM);
    if (strncmp(text, ALGORITHM, alen) || text[alen] != ' ') {
        refuse(res, CL_SIGV4_INCOMPLETE,
               "Authorization header requires '" ALGORITHM "' as its algorithm (only Signature Version 4 is "
               "accepted).");
        return CL_OK;
    }
    char *credential = NULL, *signed_headers = NULL, *signature = NULL;
    char *save = NULL;
    for (char *part = strtok_r(text + alen + 1, ",", &save); part; part = strtok_r(NULL, ",", &save)) {
        while (*part == ' ')
            part++;
        char *end = part + strlen(part);
        while (end > part && end[-1] == ' ')
            *--end = '\0';
        if (!strncmp(part, "Credential=", 11))
            credential = part + 11;
        else if (!strncmp(part, "SignedHeaders=", 14))
            signed_headers = part + 14;
        else if (!strncmp(part, "Signature=", 10))
            signature = part + 10;
    }
    if (!credential || !signed_headers || !signature) {
        refuse(res, CL_SIGV4_INCOMPLETE, "%s%s%s", !credential ? "Authorization header requires 'Credential' parameter. " : "",
               !signed_headers ? "Authorization header requires 'SignedHeaders' parameter. " : "",
               !signature ? "Authorization header requires 'Signature' parameter. " : "");
        return CL_OK;
    }
    /* Credential=AKID/DATE/REGION/SERVICE/aws4_request */
    char *fields[5] = {0};
    size_t nf = 0;
    char *c = credential;
    while (nf < 5) {
        fields[nf++] = c;
        char *slash = strchr(c, '/');
        if (!slash)
            break;
        *slash = '\0';
        c = slash + 1;
    }
    if (nf != 5 || strchr(fields[4], '/') || !fields[0][0]) {
        refuse(res, CL_SIGV4_INCOMPLETE,
               "Credential should have 5 parts: ACCESS_KEY_ID/DATE/REGION/SERVICE/aws4_request.");
        return CL_OK;
    }
    if (strlen(fields[0]) > CL_SIGV4_ACCESS_KEY_MAX) {
        refuse(res, CL_SIGV4_UNKNOWN_KEY, "The security token included in the request is invalid.");
        return CL_OK;
    }
    snprintf(res->access_key_id, sizeof res->access_key_id, "%s", fields[0]);
    if (!valid_signed_headers(signed_headers) || !names_header(signed_headers, "host")) {
        refuse(res, CL_SIGV4_INCOMPLETE, "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.");
        return CL_OK;
    }
    const cl_slice *date_h = header(req, "X-Amz-Date");
    char amz_date[32];
    int64_t signed_at = 0;
    if (!date_h) {
        refuse(res, CL_SIGV4_INCOMPLETE,
               "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.");
        return CL_OK;
    }
    if (!slice_to_text(*date_h, amz_date, sizeof amz_date) || !parse_amz_date(amz_date, &signed_at)) {
        refuse(res, CL_SIGV4_INCOMPLETE, "X-Amz-Date must be in the ISO 8601 basic format yyyyMMdd'T'HHmmss'Z'.");
        return CL_OK;
    }
    const char *secret = lookup(ctx, fields[0]);
    if (!secret) {
        refuse(res, CL_SIGV4_UNKNOWN_KEY, "The security token included in the request is invalid.");
        return CL_OK;
    }
    if (strncmp(fields[1], amz_date, 8) || strlen(fields[1]) != 8) {
        refuse(res, CL_SIGV4_BAD_SCOPE,
               "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '%.8s' != "
               "'%.8s', from '%s'.",
               fields[1], amz_date, amz_date);
        return CL_OK;
    }
    if (strcmp(fields[2], region)) {
        refuse(res, CL_SIGV4_BAD_SCOPE, "Credential should be scoped to a valid region. ");
        return CL_OK;
    }
    if (strcmp(fields[3], service)) {
        refuse(res, CL_SIGV4_BAD_SCOPE, "Credential should be scoped to correct service: '%s'. ", service);
        return CL_OK;
    }
    if (strcmp(fields[4], "aws4_request")) {
        refuse(res, CL_SIGV4_BAD_SCOPE, "Credential should be scoped with a valid terminator: 'aws4_request', not '%.32s'. ",
               fields[4]);
        return CL_OK;
    }
    char expected[65];
    int rc = compute_signature(req, secret, fields[1], region, service, amz_date, signed_headers, expected);
    if (rc == CL_ENOMEM || rc == CL_ECRYPTO)
        return rc;
    if (rc < 0) /* a request we cannot canonicalize (too many query parameters) cannot match */
        cl_error_clear();
    if (rc < 0 || strlen(signature) != 64 || CRYPTO_memcmp(expected, signature, 64)) {
        refuse(res, CL_SIGV4_MISMATCH,
               "The request signature we calculated does not match the signature you provided. Check your AWS "
               "Secret Access Key and signing method. Consult the service documentation for details.");
        return CL_OK;
    }
    if (signed_at < now_s - CL_SIGV4_MAX_SKEW_S) {
        char limit[17], now_text[17];
        cl_sigv4_format_date(now_s - CL_SIGV4_MAX_SKEW_S, limit);
        cl_sigv4_format_date(now_s, now_text);
        refuse(res, CL_SIGV4_EXPIRED, "Signature expired: %s is now earlier than %s (%s - 5 min.)", amz_date, limit,
               now_text);
        return CL_OK;
    }
    if (signed_at > now_s + CL_SIGV4_MAX_SKEW_S) {
        char limit[17], now_text[17];
        cl_sigv4_format_date(now_s + CL_SIGV4_MAX_SKEW_S, limit);
        cl_sigv4_format_date(now_s, now_text);
        refuse(res, CL_SIGV4_EXPIRED, "Signature not yet current: %s is still later than %s (%s + 5 min.)", amz_date,
               limit, now_text);
        return CL_OK;
    }
    res->status = CL_SIGV4_OK;
    return CL_OK;
}

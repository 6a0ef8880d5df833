/* Readers for what an ACME server sends: directory, problem documents,
 * orders, authorizations, Retry-After.  The CA and the parent that relays
 * it are untrusted, so every member the client acts on is type-checked,
 * length-bounded and, for URLs and tokens, checked for its alphabet. */
#include "cloister/enclave/acme.h"

#include "cloister/core/cursor.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define MAX_BODY (256 * 1024)

const char *cl_acme_status_name(cl_acme_status s)
{
    static const char *const names[] = {"pending", "ready",       "processing", "valid",
                                        "invalid", "deactivated", "expired",    "revoked"};
    return (unsigned)s < sizeof names / sizeof names[0] ? names[s] : "?";
}

static int load(const uint8_t *body, size_t len, const char *what, json_t **out)
{
    CL_ENSURE(body && len, CL_EPARSE, "%s: empty body", what);
    CL_ENSURE(len <= MAX_BODY, CL_ELIMIT, "%s: %zu bytes, more than %d", what, len, MAX_BODY);
    json_error_t jerr;
    json_t *root = json_loadb((const char *)body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return cl_error_set(CL_EPARSE, "%s is not JSON: %s (line %d)", what, jerr.text, jerr.line);
    if (!json_is_object(root)) {
        json_decref(root);
        return cl_error_set(CL_EPARSE, "%s is not a JSON object", what);
    }
    *out = root;
    return CL_OK;
}

/* Printable ASCII only: the text ends up in logs and error messages. */
static void copy_printable(char *dst, size_t cap, const char *src)
{
    size_t k = 0;
    for (size_t i = 0; src[i] && k + 1 < cap; i++) {
        unsigned char ch = (unsigned char)src[i];
        dst[k++] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
    }
    dst[k] = '\0';
}

/* An optional string member, copied printable; CL_EPARSE if present and
 * not a string. */
static int opt_text(json_t *o, const char *key, const char *what, char *dst, size_t cap)
{
    dst[0] = '\0';
    json_t *v = json_object_get(o, key);
    if (!v)
        return CL_OK;
    CL_ENSURE(json_is_string(v), CL_EPARSE, "%s: \"%s\" is not a string", what, key);
    copy_printable(dst, cap, json_string_value(v));
    return CL_OK;
}

static int check_url(const char *s, size_t len, const char *what, const char *key)
{
    CL_ENSURE(len >= 9 && len < CL_ACME_URL_MAX, CL_EPARSE, "%s: \"%s\" has %zu bytes (9..%d)", what, key, len,
              CL_ACME_URL_MAX - 1);
    CL_ENSURE(!strncmp(s, "https://", 8), CL_EPARSE, "%s: \"%s\" is not an https URL", what, key);
    cl_cursor c = cl_cursor_make((const uint8_t *)s, len);
    while (!cl_cursor_at_end(&c)) {
        uint8_t ch;
        CL_TRY(cl_cursor_u8(&c, &ch));
        /* RFC 3986's characters only: no spaces, quotes or controls that
         * could change a header or a log line */
        CL_ENSURE(ch > 0x20 && ch < 0x7f && ch != '"' && ch != '<' && ch != '>' && ch != '\\' && ch != '^' &&
                      ch != '`' && ch != '{' && ch != '|' && ch != '}',
                  CL_EPARSE, "%s: \"%s\" has a character not allowed in a URL", what, key);
    }
    return CL_OK;
}

int cl_acme_check_url(const char *url, const char *what)
{
    return check_url(url, strlen(url), what, "url");
}

static int get_url(json_t *o, const char *key, const char *what, bool required, char *dst)
{
    dst[0] = '\0';
    json_t *v = json_object_get(o, key);
    if (!v) {
        CL_ENSURE(!required, CL_EPARSE, "%s has no \"%s\"", what, key);
        return CL_OK;
    }
    CL_ENSURE(json_is_string(v), CL_EPARSE, "%s: \"%s\" is not a string", what, key);
    size_t len = json_string_length(v);
    const char *s = json_string_value(v);
    CL_ENSURE(strlen(s) == len, CL_EPARSE, "%s: \"%s\" contains a NUL", what, key);
    CL_TRY(check_url(s, len, what, key));
    memcpy(dst, s, len + 1);
    return CL_OK;
}

static int get_status(json_t *o, const char *what, cl_acme_status *out)
{
    json_t *v = json_object_get(o, "status");
    CL_ENSURE(json_is_string(v), CL_EPARSE, "%s has no \"status\" string", what);
    const char *s = json_string_value(v);
    for (int i = CL_ACME_PENDING; i <= CL_ACME_REVOKED; i++)
        if (!strcmp(s, cl_acme_status_name((cl_acme_status)i))) {
            *out = (cl_acme_status)i;
            return CL_OK;
        }
    char shown[40];
    copy_printable(shown, sizeof shown, s);
    return cl_error_set(CL_EPARSE, "%s: unknown status \"%s\"", what, shown);
}

int cl_acme_parse_directory(const uint8_t *body, size_t len, cl_acme_directory *out)
{
    memset(out, 0, sizeof *out);
    json_t *root = NULL;
    CL_TRY(load(body, len, "the ACME directory", &root));
    int rc = CL_OK;
    CL_TRY_OUT(get_url(root, "newNonce", "the ACME directory", true, out->new_nonce));
    CL_TRY_OUT(get_url(root, "newAccount", "the ACME directory", true, out->new_account));
    CL_TRY_OUT(get_url(root, "newOrder", "the ACME directory", true, out->new_order));
out:
    json_decref(root);
    return rc;
}

static int problem_from(json_t *o, const char *what, cl_acme_problem *out, bool nested);

static void append(char *dst, size_t cap, const char *text)
{
    size_t used = strlen(dst);
    if (used + 1 < cap)
        snprintf(dst + used, cap - used, "%s", text);
}

static int problem_from(json_t *o, const char *what, cl_acme_problem *out, bool nested)
{
    memset(out, 0, sizeof *out);
    CL_ENSURE(json_is_object(o), CL_EPARSE, "%s is not an object", what);
    CL_TRY(opt_text(o, "type", what, out->type, sizeof out->type));
    CL_TRY(opt_text(o, "detail", what, out->detail, sizeof out->detail));
    json_t *st = json_object_get(o, "status");
    if (st) {
        CL_ENSURE(json_is_integer(st) && json_integer_value(st) >= 100 && json_integer_value(st) <= 599, CL_EPARSE,
                  "%s: \"status\" is not an HTTP status", what);
        out->status = (long)json_integer_value(st);
    }
    CL_ENSURE(out->type[0] || out->detail[0], CL_EPARSE, "%s has neither \"type\" nor \"detail\"", what);
    json_t *subs = json_object_get(o, "subproblems");
    if (!subs || nested)
        return CL_OK;
    CL_ENSURE(json_is_array(subs), CL_EPARSE, "%s: \"subproblems\" is not an array", what);
    CL_ENSURE(json_array_size(subs) <= 100, CL_ELIMIT, "%s: more than 100 subproblems", what);
    size_t i;
    json_t *sp;
    json_array_foreach(subs, i, sp) {
        cl_acme_problem sub;
        CL_TRY(problem_from(sp, "a subproblem", &sub, true));
        char ident[300] = "";
        json_t *id = json_object_get(sp, "identifier");
        if (id) {
            char v[256];
            CL_ENSURE(json_is_object(id), CL_EPARSE, "a subproblem's \"identifier\" is not an object");
            CL_TRY(opt_text(id, "value", "a subproblem's identifier", v, sizeof v));
            snprintf(ident, sizeof ident, " [%s]", v);
        }
        char line[900];
        snprintf(line, sizeof line, "%s%s: %s%s", i ? "; " : "", sub.type, sub.detail, ident);
        append(out->subproblems, sizeof out->subproblems, line);
    }
    return CL_OK;
}

int cl_acme_parse_problem(const uint8_t *body, size_t len, cl_acme_problem *out)
{
    memset(out, 0, sizeof *out);
    json_t *root = NULL;
    CL_TRY(load(body, len, "the ACME problem document", &root));
    int rc = problem_from(root, "the ACME problem document", out, false);
    json_decref(root);
    return rc;
}

void cl_acme_problem_format(const cl_acme_problem *p, char *out, size_t cap)
{
    char status[24] = "";
    if (p->status)
        snprintf(status, sizeof status, " (HTTP %ld)", p->status);
    snprintf(out, cap, "%s: %s%s%s%s", p->type[0] ? p->type : "(no type)", p->detail[0] ? p->detail : "(no detail)",
             status, p->subproblems[0] ? "; subproblems: " : "", p->subproblems);
}

static int opt_error(json_t *o, const char *what, bool *has, cl_acme_problem *out)
{
    json_t *e = json_object_get(o, "error");
    *has = false;
    if (!e || json_is_null(e))
        return CL_OK;
    char w[80];
    snprintf(w, sizeof w, "%s's \"error\"", what);
    CL_TRY(problem_from(e, w, out, false));
    *has = true;
    return CL_OK;
}

int cl_acme_parse_order(const uint8_t *body, size_t len, cl_acme_order *out)
{
    memset(out, 0, sizeof *out);
    json_t *root = NULL;
    CL_TRY(load(body, len, "the ACME order", &root));
    int rc = CL_OK;
    CL_TRY_OUT(get_status(root, "the ACME order", &out->status));
    CL_TRY_OUT(get_url(root, "finalize", "the ACME order", true, out->finalize));
    CL_TRY_OUT(get_url(root, "certificate", "the ACME order", out->status == CL_ACME_VALID, out->certificate));
    json_t *az = json_object_get(root, "authorizations");
    CL_ENSURE_OUT(json_is_array(az), CL_EPARSE, "the ACME order has no \"authorizations\" array");
    CL_ENSURE_OUT(json_array_size(az) >= 1 && json_array_size(az) <= CL_ACME_MAX_AUTHZ, CL_EPARSE,
                  "the ACME order has %zu authorizations (1..%d)", json_array_size(az), CL_ACME_MAX_AUTHZ);
    size_t i;
    json_t *u;
    json_array_foreach(az, i, u) {
        json_t *wrap = json_pack("{sO}", "u", u);
        CL_ENSURE_OUT(wrap, CL_ENOMEM, "out of memory");
        rc = get_url(wrap, "u", "the ACME order's authorizations", true, out->authz[i]);
        json_decref(wrap);
        CL_TRY_OUT(rc);
    }
    out->authz_count = json_array_size(az);
    CL_TRY_OUT(opt_error(root, "the ACME order", &out->has_error, &out->error));
out:
    json_decref(root);
    return rc;
}

static bool is_b64url(const char *s, size_t len)
{
    cl_cursor c = cl_cursor_make((const uint8_t *)s, len);
    while (!cl_cursor_at_end(&c)) {
        uint8_t ch = 0;
        if (cl_cursor_u8(&c, &ch) < 0)
            return false;
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' ||
              ch == '_'))
            return false;
    }
    return true;
}

int cl_acme_parse_authz(const uint8_t *body, size_t len, cl_acme_authz *out)
{
    memset(out, 0, sizeof *out);
    json_t *root = NULL;
    CL_TRY(load(body, len, "the ACME authorization", &root));
    int rc = CL_OK;
    CL_TRY_OUT(get_status(root, "the ACME authorization", &out->status));
    json_t *id = json_object_get(root, "identifier");
    CL_ENSURE_OUT(json_is_object(id), CL_EPARSE, "the ACME authorization has no \"identifier\" object");
    json_t *type = json_object_get(id, "type"), *value = json_object_get(id, "value");
    CL_ENSURE_OUT(json_is_string(type) && !strcmp(json_string_value(type), "dns"), CL_EPARSE,
                  "the ACME authorization's identifier is not of type dns");
    CL_ENSURE_OUT(json_is_string(value) && json_string_length(value) >= 1 &&
                      json_string_length(value) < sizeof out->identifier,
                  CL_EPARSE, "the ACME authorization's identifier has no usable \"value\"");
    copy_printable(out->identifier, sizeof out->identifier, json_string_value(value));
    json_t *ch = json_object_get(root, "challenges");
    CL_ENSURE_OUT(json_is_array(ch), CL_EPARSE, "the ACME authorization has no \"challenges\" array");
    size_t i;
    json_t *c;
    json_array_foreach(ch, i, c) {
        /* challenges beyond the first few are of no use to this client,
         * and an unbounded list is not something to walk */
        CL_ENSURE_OUT(i < CL_ACME_MAX_CHALLENGES, CL_ELIMIT, "the ACME authorization has more than %d challenges",
                      CL_ACME_MAX_CHALLENGES);
        cl_acme_challenge *x = &out->challenges[i];
        CL_ENSURE_OUT(json_is_object(c), CL_EPARSE, "an ACME challenge is not an object");
        json_t *t = json_object_get(c, "type");
        CL_ENSURE_OUT(json_is_string(t) && json_string_length(t) < sizeof x->type, CL_EPARSE,
                      "an ACME challenge has no usable \"type\"");
        copy_printable(x->type, sizeof x->type, json_string_value(t));
        CL_TRY_OUT(get_url(c, "url", "an ACME challenge", true, x->url));
        CL_TRY_OUT(get_status(c, "an ACME challenge", &x->status));
        json_t *tok = json_object_get(c, "token");
        if (tok) {
            CL_ENSURE_OUT(json_is_string(tok), CL_EPARSE, "an ACME challenge's \"token\" is not a string");
            size_t tl = json_string_length(tok);
            const char *ts = json_string_value(tok);
            /* RFC 8555 8.3/8.4: at least 128 bits of base64url; it names a
             * file in a URL path and goes into a certificate extension */
            CL_ENSURE_OUT(tl >= 22 && tl <= CL_ACME_TOKEN_MAX && strlen(ts) == tl && is_b64url(ts, tl), CL_EPARSE,
                          "an ACME challenge's token is not 22..%d base64url characters", CL_ACME_TOKEN_MAX);
            memcpy(x->token, ts, tl + 1);
        }
        CL_TRY_OUT(opt_error(c, "an ACME challenge", &x->has_error, &x->error));
        out->challenge_count = i + 1;
    }
out:
    json_decref(root);
    return rc;
}

int cl_acme_parse_retry_after(const char *value, int64_t now, unsigned max_s, unsigned *out_s)
{
    *out_s = 0;
    CL_ENSURE(value, CL_EPARSE, "no Retry-After value");
    size_t len = strlen(value);
    CL_ENSURE(len >= 1 && len < 64, CL_EPARSE, "Retry-After of %zu bytes", len);
    if (value[0] >= '0' && value[0] <= '9') {
        uint64_t v = 0;
        cl_cursor c = cl_cursor_make((const uint8_t *)value, len);
        while (!cl_cursor_at_end(&c)) {
            uint8_t ch;
            CL_TRY(cl_cursor_u8(&c, &ch));
            CL_ENSURE(ch >= '0' && ch <= '9', CL_EPARSE, "Retry-After is not a number of seconds");
            if (v < 100000000u)
                v = v * 10 + (ch - '0');
        }
        *out_s = v > max_s ? max_s : (unsigned)v;
        return CL_OK;
    }
    /* IMF-fixdate, "Sun, 06 Nov 1994 08:49:37 GMT", the form RFC 9110
     * requires senders to use */
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *end = strptime(value, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    CL_ENSURE(end && !*end, CL_EPARSE, "Retry-After is neither seconds nor an HTTP date");
    int64_t at = (int64_t)timegm(&tm);
    int64_t d = at - now;
    *out_s = d <= 0 ? 0 : d > (int64_t)max_s ? max_s : (unsigned)d;
    return CL_OK;
}

int64_t cl_acme_renewal_time(int64_t not_before, int64_t not_after, double jitter)
{
    if (not_after <= not_before)
        return not_before;
    int64_t life = not_after - not_before;
    if (jitter < -1)
        jitter = -1;
    if (jitter > 1)
        jitter = 1;
    return not_before + life * 2 / 3 + (int64_t)(jitter * (double)life / 20.0);
}

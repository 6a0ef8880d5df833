/* Feeds arbitrary bytes to the readers of what an ACME server sends (the
 * first byte picks one: directory, problem, order, authorization,
 * Retry-After, issued chain).  They must never crash or leak, and what they
 * accept must hold what they promise: https URLs of URL characters only,
 * base64url tokens, problem text with no control characters. */
#include "cloister/enclave/acme.h"

#include <stdlib.h>
#include <string.h>

static void url_ok(const char *u)
{
    if (strncmp(u, "https://", 8) != 0)
        abort();
    for (const char *p = u; *p; p++)
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f || *p == '"')
            abort();
}

static void text_ok(const char *t)
{
    for (const char *p = t; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
            abort();
}

static void problem_ok(const cl_acme_problem *p)
{
    char text[2048];
    cl_acme_problem_format(p, text, sizeof text);
    text_ok(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const uint8_t *body = data + 1;
    size_t len = size - 1;
    if (data[0] == 0xa5) {
        /* the pending challenges a key-sync leader pushes (acme_pending.c):
         * what is accepted must encode back to the same bytes */
        cl_acme_pending p[CL_ACME_PENDING_MAX];
        size_t n = 0;
        if (cl_acme_pending_parse(body, len, p, &n) == CL_OK) {
            cl_buf again = CL_BUF_INIT;
            bool same = cl_acme_pending_encode(p, n, &again) == CL_OK && again.len <= len;
            for (size_t i = 0; same && i < n; i++) {
                text_ok(p[i].identifier);
                text_ok(p[i].key_authorization);
            }
            cl_buf_free(&again);
            if (!same)
                abort();
        }
        return 0;
    }
    switch (data[0] % 6) {
    case 0: {
        cl_acme_directory d;
        if (cl_acme_parse_directory(body, len, &d) == CL_OK) {
            url_ok(d.new_nonce);
            url_ok(d.new_account);
            url_ok(d.new_order);
        }
        break;
    }
    case 1: {
        cl_acme_problem p;
        if (cl_acme_parse_problem(body, len, &p) == CL_OK)
            problem_ok(&p);
        break;
    }
    case 2: {
        cl_acme_order o;
        if (cl_acme_parse_order(body, len, &o) == CL_OK) {
            url_ok(o.finalize);
            if (o.authz_count < 1 || o.authz_count > CL_ACME_MAX_AUTHZ)
                abort();
            for (size_t i = 0; i < o.authz_count; i++)
                url_ok(o.authz[i]);
            if (o.status == CL_ACME_VALID)
                url_ok(o.certificate);
            if (o.has_error)
                problem_ok(&o.error);
        }
        break;
    }
    case 3: {
        cl_acme_authz a;
        if (cl_acme_parse_authz(body, len, &a) == CL_OK) {
            text_ok(a.identifier);
            for (size_t i = 0; i < a.challenge_count; i++) {
                url_ok(a.challenges[i].url);
                text_ok(a.challenges[i].type);
                for (const char *t = a.challenges[i].token; *t; t++)
                    if (!strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", *t))
                        abort();
                if (a.challenges[i].has_error)
                    problem_ok(&a.challenges[i].error);
            }
        }
        break;
    }
    case 4: {
        char v[80];
        size_t n = len < sizeof v - 1 ? len : sizeof v - 1;
        memcpy(v, body, n);
        v[n] = '\0';
        unsigned s;
        if (cl_acme_parse_retry_after(v, 1700000000, 3600, &s) == CL_OK && s > 3600)
            abort();
        break;
    }
    default: {
        static EVP_PKEY *key;
        if (!key && cl_acme_new_key(&key) < 0)
            abort();
        X509 *leaf = NULL;
        STACK_OF(X509) *rest = NULL;
        /* no chain for a key made here can come out of random bytes */
        if (cl_acme_check_chain(body, len, "e.example", key, &leaf, &rest) == CL_OK)
            abort();
        if (leaf || rest)
            abort();
        break;
    }
    }
    return 0;
}

/* The pending challenges a key-sync leader pushes to its workers, so that
 * whichever replica the CA's validation reaches can answer it.  The text
 * arrives inside the sealed keys of a verified leader (key_sync_engine.c),
 * and is read strictly all the same: one line per challenge, space
 * separated, nothing that could be mistaken for another field. */
#include "cloister/enclave/acme.h"

#include "cloister/core/cursor.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool b64url_char(uint8_t c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

static bool dns_char(uint8_t c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.';
}

/* The next field up to a space (or the newline when last), into out. */
static int read_field(cl_cursor *c, const char *what, bool (*ok)(uint8_t), char *out, size_t cap, bool last)
{
    size_t n = 0;
    for (;;) {
        uint8_t b;
        CL_ENSURE(cl_cursor_u8(c, &b) == CL_OK, CL_EPARSE, "pending challenge: the line ends inside %s", what);
        if (b == (last ? '\n' : ' '))
            break;
        CL_ENSURE(!ok || ok(b), CL_EPARSE, "pending challenge: a character %s may not hold", what);
        CL_ENSURE(n + 1 < cap, CL_EPARSE, "pending challenge: %s is too long", what);
        out[n++] = (char)b;
    }
    CL_ENSURE(n > 0, CL_EPARSE, "pending challenge: %s is empty", what);
    out[n] = '\0';
    return CL_OK;
}

static bool keyauth_char(uint8_t c)
{
    return b64url_char(c) || c == '.';
}

static bool digit(uint8_t c)
{
    return c >= '0' && c <= '9';
}

int cl_acme_pending_parse(const uint8_t *data, size_t len, cl_acme_pending out[CL_ACME_PENDING_MAX], size_t *n)
{
    *n = 0;
    cl_cursor c = cl_cursor_make(data, len);
    while (!cl_cursor_at_end(&c)) {
        CL_ENSURE(*n < CL_ACME_PENDING_MAX, CL_EPARSE, "pending challenge: more than %d", CL_ACME_PENDING_MAX);
        cl_acme_pending *p = &out[*n];
        memset(p, 0, sizeof *p);
        char expires[24];
        CL_TRY(read_field(&c, "the type", NULL, p->type, sizeof p->type, false));
        CL_ENSURE(!strcmp(p->type, "tls-alpn-01") || !strcmp(p->type, "http-01"), CL_EPARSE,
                  "pending challenge: unknown type");
        CL_TRY(read_field(&c, "the identifier", dns_char, p->identifier, sizeof p->identifier, false));
        CL_TRY(read_field(&c, "the token", b64url_char, p->token, sizeof p->token, false));
        CL_TRY(read_field(&c, "the key authorization", keyauth_char, p->key_authorization,
                          sizeof p->key_authorization, false));
        CL_TRY(read_field(&c, "the expiry", digit, expires, sizeof expires, true));
        size_t tl = strlen(p->token);
        /* RFC 8555 8.1: token "." base64url(SHA-256 JWK thumbprint) */
        CL_ENSURE(strlen(p->key_authorization) == tl + 1 + 43 && !strncmp(p->key_authorization, p->token, tl) &&
                      p->key_authorization[tl] == '.' && !strchr(p->key_authorization + tl + 1, '.'),
                  CL_EPARSE, "pending challenge: the key authorization is not the token and a thumbprint");
        CL_ENSURE(strlen(expires) <= 12, CL_EPARSE, "pending challenge: the expiry is out of range");
        p->expires = (int64_t)strtoll(expires, NULL, 10);
        (*n)++;
    }
    return CL_OK;
}

int cl_acme_pending_encode(const cl_acme_pending *p, size_t n, cl_buf *out)
{
    for (size_t i = 0; i < n; i++) {
        char line[sizeof p->type + sizeof p->identifier + sizeof p->token + sizeof p->key_authorization + 32];
        int k = snprintf(line, sizeof line, "%s %s %s %s %" PRId64 "\n", p[i].type, p[i].identifier, p[i].token,
                         p[i].key_authorization, p[i].expires);
        CL_ENSURE(k > 0 && (size_t)k < sizeof line, CL_EINVAL, "pending challenge too long");
        CL_TRY(cl_buf_append(out, line, (size_t)k));
    }
    /* what we send must read back: a field with a space or newline would
     * shift the others */
    cl_acme_pending check[CL_ACME_PENDING_MAX];
    size_t got = 0;
    return cl_acme_pending_parse(out->data, out->len, check, &got);
}

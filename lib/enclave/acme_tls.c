/* The answers to ACME challenges on the enclave's own listeners.
 *
 * Each SSL_CTX of the public listener gets a ClientHello callback: a hello
 * that offers ALPN "acme-tls/1" for the name being validated gets RFC 8737's
 * validation certificate, set on that connection alone, and that protocol;
 * every other hello goes on with the context's own certificate and the
 * usual h2/http1.1 choice.  http-01's one token is kept here too, for the
 * plain challenge listener. */
#include "cloister/enclave/acme.h"

#include "cloister/core/cursor.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define ACME_TLS_ALPN "acme-tls/1"

struct cl_acme_tls {
    pthread_rwlock_t lock;
    /* tls-alpn-01 */
    char alpn_name[256];
    X509 *alpn_cert;
    EVP_PKEY *alpn_key;
    /* http-01 */
    char http_token[CL_ACME_TOKEN_MAX + 1];
    char *http_answer;
    bool enable_h2;
    int64_t expires; /* 0: none */
    atomic_uint_fast64_t alpn_answers;
};

static int acme_index = -1;
static pthread_once_t index_once = PTHREAD_ONCE_INIT;

static void make_index(void)
{
    acme_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

int cl_acme_tls_new(cl_acme_tls **out)
{
    pthread_once(&index_once, make_index);
    CL_ENSURE(acme_index >= 0, CL_ECRYPTO, "SSL_get_ex_new_index failed");
    cl_acme_tls *t = calloc(1, sizeof *t);
    CL_ENSURE(t, CL_ENOMEM, "out of memory");
    pthread_rwlock_init(&t->lock, NULL);
    *out = t;
    return CL_OK;
}

void cl_acme_tls_free(cl_acme_tls *t)
{
    if (!t)
        return;
    X509_free(t->alpn_cert);
    EVP_PKEY_free(t->alpn_key);
    if (t->http_answer)
        cl_free_secret(t->http_answer, strlen(t->http_answer));
    pthread_rwlock_destroy(&t->lock);
    free(t);
}

uint64_t cl_acme_tls_alpn_answers(const cl_acme_tls *t)
{
    return atomic_load(&((cl_acme_tls *)t)->alpn_answers);
}

/* ALPN extension body: a 2-byte list length, then 1-byte-length names. */
static bool alpn_offers(const uint8_t *ext, size_t len, const char *proto, size_t *count)
{
    cl_cursor c = cl_cursor_make(ext, len);
    uint16_t list;
    bool found = false;
    *count = 0;
    if (cl_cursor_be16(&c, &list) < 0 || list != cl_cursor_remaining(&c))
        return false;
    while (!cl_cursor_at_end(&c)) {
        uint8_t n;
        const uint8_t *name;
        if (cl_cursor_u8(&c, &n) < 0 || cl_cursor_bytes(&c, n, &name) < 0)
            return false;
        (*count)++;
        if (n == strlen(proto) && !memcmp(name, proto, n))
            found = true;
    }
    return found;
}

/* server_name extension body: the host_name entry, NUL-terminated. */
static bool sni_name(const uint8_t *ext, size_t len, char *out, size_t cap)
{
    cl_cursor c = cl_cursor_make(ext, len);
    uint16_t list, n;
    uint8_t type;
    const uint8_t *name;
    if (cl_cursor_be16(&c, &list) < 0 || list != cl_cursor_remaining(&c) || cl_cursor_u8(&c, &type) < 0 || type != 0 ||
        cl_cursor_be16(&c, &n) < 0 || n == 0 || n >= cap || cl_cursor_bytes(&c, n, &name) < 0)
        return false;
    if (memchr(name, 0, n))
        return false;
    memcpy(out, name, n);
    out[n] = '\0';
    return true;
}

/* Pushed challenges end at their expiry; lock held. */
static bool live_locked(const cl_acme_tls *t)
{
    return !t->expires || (int64_t)time(NULL) < t->expires;
}

void cl_acme_tls_set_expiry(cl_acme_tls *t, int64_t expires)
{
    pthread_rwlock_wrlock(&t->lock);
    t->expires = expires;
    pthread_rwlock_unlock(&t->lock);
}

static int client_hello(SSL *ssl, int *alert, void *arg)
{
    cl_acme_tls *t = arg;
    const unsigned char *ext;
    size_t ext_len, offered = 0;
    if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_application_layer_protocol_negotiation, &ext, &ext_len) == 1 &&
        alpn_offers(ext, ext_len, ACME_TLS_ALPN, &offered)) {
        /* RFC 8737 section 3: the validation hello names the identifier
         * in SNI; anything else on this protocol is refused */
        char sni[256];
        if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &ext, &ext_len) != 1 ||
            !sni_name(ext, ext_len, sni, sizeof sni)) {
            *alert = SSL_AD_UNRECOGNIZED_NAME;
            return SSL_CLIENT_HELLO_ERROR;
        }
        int ok = 0;
        pthread_rwlock_rdlock(&t->lock);
        if (t->alpn_cert && !strcasecmp(sni, t->alpn_name) && live_locked(t))
            ok = SSL_use_cert_and_key(ssl, t->alpn_cert, t->alpn_key, NULL, 1);
        pthread_rwlock_unlock(&t->lock);
        if (ok != 1) {
            *alert = SSL_AD_NO_APPLICATION_PROTOCOL;
            return SSL_CLIENT_HELLO_ERROR;
        }
        static const unsigned char ctx_acme[] = "acme-tls/1";
        SSL_set_session_id_context(ssl, ctx_acme, sizeof ctx_acme - 1);
        SSL_set_ex_data(ssl, acme_index, (void *)1);
        atomic_fetch_add(&t->alpn_answers, 1);
        return SSL_CLIENT_HELLO_SUCCESS;
    }
    return SSL_CLIENT_HELLO_SUCCESS;
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                       unsigned int inlen, void *arg)
{
    cl_acme_tls *t = arg;
    if (SSL_get_ex_data(ssl, acme_index)) {
        static const unsigned char acme[] = "\x0a" ACME_TLS_ALPN;
        if (SSL_select_next_proto((unsigned char **)out, outlen, acme, sizeof acme - 1, in, inlen) ==
            OPENSSL_NPN_NEGOTIATED)
            return SSL_TLSEXT_ERR_OK;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    /* the same preferences as cl_tls_server_ctx's own callback, which this
     * one replaces; acme-tls/1 is never chosen for a normal connection */
    static const unsigned char server_h2[] = "\x02h2\x08http/1.1";
    static const unsigned char server_h1[] = "\x08http/1.1";
    const unsigned char *prefs = t->enable_h2 ? server_h2 : server_h1;
    unsigned prefs_len = t->enable_h2 ? sizeof server_h2 - 1 : sizeof server_h1 - 1;
    if (SSL_select_next_proto((unsigned char **)out, outlen, prefs, prefs_len, in, inlen) == OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_OK;
    return SSL_TLSEXT_ERR_NOACK;
}

int cl_acme_tls_install(cl_acme_tls *t, SSL_CTX *ctx, bool enable_h2)
{
    t->enable_h2 = enable_h2;
    SSL_CTX_set_client_hello_cb(ctx, client_hello, t);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, t);
    return CL_OK;
}

int cl_acme_tls_set_alpn_challenge(cl_acme_tls *t, const char *fqdn, const char *key_authorization)
{
    CL_ENSURE(strlen(fqdn) < sizeof t->alpn_name, CL_EINVAL, "name too long");
    X509 *cert = NULL;
    EVP_PKEY *key = NULL;
    CL_TRY(cl_acme_alpn_certificate(fqdn, key_authorization, &cert, &key));
    pthread_rwlock_wrlock(&t->lock);
    X509 *old_cert = t->alpn_cert;
    EVP_PKEY *old_key = t->alpn_key;
    t->alpn_cert = cert;
    t->alpn_key = key;
    snprintf(t->alpn_name, sizeof t->alpn_name, "%s", fqdn);
    pthread_rwlock_unlock(&t->lock);
    X509_free(old_cert);
    EVP_PKEY_free(old_key);
    return CL_OK;
}

void cl_acme_tls_clear_alpn_challenge(cl_acme_tls *t)
{
    pthread_rwlock_wrlock(&t->lock);
    X509 *old_cert = t->alpn_cert;
    EVP_PKEY *old_key = t->alpn_key;
    t->alpn_cert = NULL;
    t->alpn_key = NULL;
    t->alpn_name[0] = '\0';
    pthread_rwlock_unlock(&t->lock);
    X509_free(old_cert);
    EVP_PKEY_free(old_key);
}

int cl_acme_tls_set_http_token(cl_acme_tls *t, const char *token, const char *key_authorization)
{
    CL_ENSURE(strlen(token) <= CL_ACME_TOKEN_MAX, CL_EINVAL, "token too long");
    char *copy = strdup(key_authorization);
    CL_ENSURE(copy, CL_ENOMEM, "out of memory");
    pthread_rwlock_wrlock(&t->lock);
    char *old = t->http_answer;
    t->http_answer = copy;
    snprintf(t->http_token, sizeof t->http_token, "%s", token);
    pthread_rwlock_unlock(&t->lock);
    if (old)
        cl_free_secret(old, strlen(old));
    return CL_OK;
}

void cl_acme_tls_clear_http_token(cl_acme_tls *t)
{
    pthread_rwlock_wrlock(&t->lock);
    char *old = t->http_answer;
    t->http_answer = NULL;
    t->http_token[0] = '\0';
    pthread_rwlock_unlock(&t->lock);
    if (old)
        cl_free_secret(old, strlen(old));
}

int cl_acme_tls_http_answer(cl_acme_tls *t, const char *path, cl_buf *out)
{
    *out = (cl_buf)CL_BUF_INIT;
    static const char prefix[] = "/.well-known/acme-challenge/";
    CL_ENSURE(!strncmp(path, prefix, sizeof prefix - 1), CL_ENOTFOUND, "not a challenge path");
    const char *token = path + sizeof prefix - 1;
    int rc = CL_ENOTFOUND;
    pthread_rwlock_rdlock(&t->lock);
    if (t->http_answer && t->http_token[0] && !strcmp(token, t->http_token) && live_locked(t))
        rc = cl_buf_append(out, t->http_answer, strlen(t->http_answer));
    pthread_rwlock_unlock(&t->lock);
    if (rc == CL_ENOTFOUND)
        return cl_error_set(CL_ENOTFOUND, "no challenge for this token");
    return rc;
}

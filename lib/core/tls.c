#include "cloister/core/tls.h"

#include "cloister/core/buf.h"
#include "cloister/core/secret_file.h"

#include <fcntl.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CL_TLS_KEY_FILE_MAX (1 << 20) /* a PEM private key is a few kB */
#define TICKET_NAME_LEN 16
#define TICKET_AES_LEN 32
#define TICKET_HMAC_LEN 32
#define DEFAULT_TICKET_ROTATION_S (12 * 3600)

static const char tls12_ciphers[] = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
                                    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256:"
                                    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305";
static const char tls13_suites[] = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";

void cl_tls_seed_entropy(const uint8_t *bytes, size_t len)
{
    RAND_add(bytes, (int)len, (double)len);
    /* Writing to /dev/random mixes without crediting: harmless, and it is
     * what nitriding does so that other processes benefit too. */
    int fd = open("/dev/random", O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t w = write(fd, bytes, len);
        (void)w;
        close(fd);
    }
}

int cl_tls_cert_sha256(X509 *cert, uint8_t out[32])
{
    unsigned char *der = NULL;
    int len = i2d_X509(cert, &der);
    if (len <= 0)
        return cl_error_ossl(CL_ECRYPTO, "cannot encode the certificate");
    int ok = EVP_Digest(der, (size_t)len, out, NULL, EVP_sha256(), NULL);
    OPENSSL_free(der);
    return ok == 1 ? CL_OK : cl_error_ossl(CL_ECRYPTO, "SHA-256 failed");
}

static int add_ext(X509 *cert, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, cert, cert, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (!ext)
        return cl_error_ossl(CL_EINVAL, "cannot make certificate extension %s", value);
    int ok = X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    return ok ? CL_OK : cl_error_ossl(CL_ECRYPTO, "cannot add a certificate extension");
}

int cl_tls_identity_generate(const char *fqdn, cl_tls_identity *out)
{
    memset(out, 0, sizeof *out);
    int rc = CL_OK;
    X509 *cert = NULL;
    X509_NAME *name = NULL;
    CL_ENSURE(fqdn && *fqdn && strlen(fqdn) < 250, CL_EINVAL, "a TLS identity needs an FQDN of 1..249 characters");
    for (const char *p = fqdn; *p; p++)
        CL_ENSURE((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-' ||
                      *p == '.',
                  CL_EINVAL, "invalid character in FQDN '%s'", fqdn);
    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    CL_ENSURE(key, CL_ECRYPTO, "cannot generate a P-256 key");
    out->key = key;
    cert = X509_new();
    name = X509_NAME_new();
    CL_ENSURE_OUT(cert && name, CL_ENOMEM, "out of memory");
    uint8_t serial[16];
    CL_ENSURE_OUT(RAND_bytes(serial, sizeof serial) == 1, CL_ECRYPTO, "RAND_bytes failed");
    serial[0] &= 0x7f;
    BIGNUM *bn = BN_bin2bn(serial, sizeof serial, NULL);
    CL_ENSURE_OUT(bn && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert)), CL_ECRYPTO, "cannot set the serial");
    BN_free(bn);
    X509_set_version(cert, X509_VERSION_3);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)fqdn, -1, -1, 0);
    X509_set_subject_name(cert, name);
    X509_set_issuer_name(cert, name);
    time_t now = time(NULL);
    X509_time_adj_ex(X509_getm_notBefore(cert), 0, -3600, &now);
    X509_time_adj_ex(X509_getm_notAfter(cert), 365, 0, &now);
    X509_set_pubkey(cert, key);
    char san[300];
    snprintf(san, sizeof san, "DNS:%s", fqdn);
    CL_TRY_OUT(add_ext(cert, NID_subject_alt_name, san));
    CL_TRY_OUT(add_ext(cert, NID_basic_constraints, "critical,CA:FALSE"));
    CL_TRY_OUT(add_ext(cert, NID_key_usage, "critical,digitalSignature"));
    CL_TRY_OUT(add_ext(cert, NID_ext_key_usage, "serverAuth"));
    CL_ENSURE_OUT(X509_sign(cert, key, EVP_sha256()) > 0, CL_ECRYPTO, "cannot sign the certificate");
    CL_TRY_OUT(cl_tls_cert_sha256(cert, out->cert_sha256));
    out->cert = cert;
    cert = NULL;
out:
    X509_NAME_free(name);
    X509_free(cert);
    if (rc < 0)
        cl_tls_identity_free(out);
    return rc;
}

/* The leaf and any further certificates of a PEM file, into out. */
static int read_certificates(const char *cert_path, cl_tls_identity *out)
{
    FILE *f = fopen(cert_path, "r");
    CL_ENSURE(f, CL_EIO, "cannot open %s", cert_path);
    out->cert = PEM_read_X509(f, NULL, NULL, NULL);
    if (out->cert) {
        out->chain = sk_X509_new_null();
        X509 *extra;
        while (out->chain && (extra = PEM_read_X509(f, NULL, NULL, NULL)) != NULL)
            sk_X509_push(out->chain, extra);
    }
    fclose(f);
    ERR_clear_error();
    CL_ENSURE(out->cert, CL_EINVAL, "%s holds no PEM certificate", cert_path);
    return CL_OK;
}

int cl_tls_identity_load(const char *cert_path, const char *key_path, cl_tls_identity *out)
{
    memset(out, 0, sizeof *out);
    int rc = CL_OK;
    CL_TRY_OUT(read_certificates(cert_path, out));
    cl_buf pem = CL_BUF_INIT;
    CL_TRY_OUT(cl_read_secret_file(key_path, CL_TLS_KEY_FILE_MAX, &pem));
    BIO *b = BIO_new_mem_buf(pem.data, (int)pem.len);
    out->key = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    cl_buf_free(&pem);
    CL_ENSURE_OUT(out->key, CL_EINVAL, "%s holds no PEM private key", key_path);
    CL_ENSURE_OUT(X509_check_private_key(out->cert, out->key) == 1, CL_EINVAL,
                  "the key in %s does not match the certificate in %s", key_path, cert_path);
    CL_TRY_OUT(cl_tls_cert_sha256(out->cert, out->cert_sha256));
out:
    ERR_clear_error();
    if (rc < 0)
        cl_tls_identity_free(out);
    return rc;
}

int cl_tls_identity_load_key_mem(const char *cert_path, const uint8_t *key, size_t key_len, cl_tls_identity *out)
{
    memset(out, 0, sizeof *out);
    int rc = CL_OK;
    CL_ENSURE(key_len > 0 && key_len < INT32_MAX, CL_EINVAL, "the TLS private key is empty");
    CL_TRY_OUT(read_certificates(cert_path, out));
    BIO *b = BIO_new_mem_buf(key, (int)key_len);
    CL_ENSURE_OUT(b, CL_ENOMEM, "out of memory");
    out->key = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
    BIO_free(b);
    if (!out->key) {
        const unsigned char *p = key;
        out->key = d2i_AutoPrivateKey(NULL, &p, (long)key_len);
        if (out->key && p != key + key_len) {
            EVP_PKEY_free(out->key);
            out->key = NULL;
        }
    }
    CL_ENSURE_OUT(out->key, CL_EINVAL, "the TLS private key is neither PEM nor DER");
    CL_ENSURE_OUT(X509_check_private_key(out->cert, out->key) == 1, CL_EINVAL,
                  "the TLS private key does not match the certificate in %s", cert_path);
    CL_TRY_OUT(cl_tls_cert_sha256(out->cert, out->cert_sha256));
out:
    ERR_clear_error();
    if (rc < 0)
        cl_tls_identity_free(out);
    return rc;
}

void cl_tls_identity_free(cl_tls_identity *id)
{
    EVP_PKEY_free(id->key); /* OpenSSL clears private key material on free */
    X509_free(id->cert);
    sk_X509_pop_free(id->chain, X509_free);
    memset(id, 0, sizeof *id);
}

/* ---- session tickets with in-memory keys that rotate ------------------ */

typedef struct ticket_key {
    uint8_t name[TICKET_NAME_LEN];
    uint8_t aes[TICKET_AES_LEN];
    uint8_t hmac[TICKET_HMAC_LEN];
    time_t created;
} ticket_key;

typedef struct ticket_keys {
    pthread_mutex_t lock;
    ticket_key current, previous;
    unsigned rotation_s;
    EVP_CIPHER *aes; /* fetched once: an implicit fetch per ticket costs name lookups under a lock */
} ticket_keys;

static int ticket_keys_index = -1;
static pthread_once_t ticket_index_once = PTHREAD_ONCE_INIT;

static void free_ticket_keys(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    ticket_keys *keys = ptr;
    if (keys) {
        pthread_mutex_destroy(&keys->lock);
        EVP_CIPHER_free(keys->aes);
        cl_free_secret(keys, sizeof *keys);
    }
}

static void make_ticket_index(void)
{
    ticket_keys_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, free_ticket_keys);
}

static bool new_ticket_key(ticket_key *k)
{
    k->created = time(NULL);
    return RAND_bytes(k->name, sizeof k->name) == 1 && RAND_priv_bytes(k->aes, sizeof k->aes) == 1 &&
           RAND_priv_bytes(k->hmac, sizeof k->hmac) == 1;
}

static int ticket_cb(SSL *ssl, unsigned char name[16], unsigned char *iv, EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx,
                     int enc)
{
    ticket_keys *keys = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ticket_keys_index);
    if (!keys)
        return -1;
    pthread_mutex_lock(&keys->lock);
    time_t now = time(NULL);
    if (now - keys->current.created >= (time_t)keys->rotation_s) {
        ticket_key fresh;
        if (new_ticket_key(&fresh)) {
            keys->previous = keys->current;
            keys->current = fresh;
        }
        cl_wipe(&fresh, sizeof fresh);
    }
    ticket_key k;
    int result;
    if (enc) {
        k = keys->current;
        memcpy(name, k.name, TICKET_NAME_LEN);
        result = RAND_bytes(iv, EVP_MAX_IV_LENGTH) == 1 ? 1 : -1;
    } else if (!memcmp(name, keys->current.name, TICKET_NAME_LEN)) {
        k = keys->current;
        /* OpenSSL sends a TLS 1.3 ticket after a resumption only when
         * asked to (2).  Without one, wrk (one SSL object carried from
         * connection to connection) made a full handshake after every
         * resumed one; and RFC 8446 C.4 wants tickets used once. */
        result = SSL_version(ssl) >= TLS1_3_VERSION ? 2 : 1;
    } else if (!memcmp(name, keys->previous.name, TICKET_NAME_LEN) &&
               now - keys->previous.created < 2 * (time_t)keys->rotation_s) {
        k = keys->previous;
        result = 2; /* valid, but issue a ticket under the current key */
    } else {
        pthread_mutex_unlock(&keys->lock);
        return 0; /* unknown key: full handshake */
    }
    pthread_mutex_unlock(&keys->lock);
    if (result > 0) {
        OSSL_PARAM params[] = {
            OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, k.hmac, sizeof k.hmac),
            OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
            OSSL_PARAM_construct_end(),
        };
        int ok = enc ? EVP_EncryptInit_ex(cctx, keys->aes, NULL, k.aes, iv)
                     : EVP_DecryptInit_ex(cctx, keys->aes, NULL, k.aes, iv);
        if (ok != 1 || EVP_MAC_CTX_set_params(hctx, params) != 1)
            result = -1;
    }
    cl_wipe(&k, sizeof k);
    return result;
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                       unsigned int inlen, void *arg)
{
    (void)ssl;
    bool h2 = arg != NULL;
    static const unsigned char server_h2[] = "\x02h2\x08http/1.1";
    static const unsigned char server_h1[] = "\x08http/1.1";
    const unsigned char *prefs = h2 ? server_h2 : server_h1;
    unsigned prefs_len = h2 ? sizeof server_h2 - 1 : sizeof server_h1 - 1;
    if (SSL_select_next_proto((unsigned char **)out, outlen, prefs, prefs_len, in, inlen) == OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_OK;
    return SSL_TLSEXT_ERR_NOACK; /* no ALPN overlap: carry on as HTTP/1.1 */
}

int cl_tls_server_ctx(const cl_tls_identity *id, const cl_tls_server_options *opt, SSL_CTX **out)
{
    int rc = CL_OK;
    ticket_keys *keys = NULL;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    CL_ENSURE(ctx, CL_ECRYPTO, "cannot create a TLS context");
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* one read() per request instead of a 5-byte record header and then the
     * rest; safe with edge-triggered epoll because SSL_read reports
     * WANT_READ only once the socket is drained */
    SSL_CTX_set_read_ahead(ctx, 1);
    /* Idle connections give their buffers back: the enclave's memory is small. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (SSL_CTX_set_cipher_list(ctx, tls12_ciphers) != 1 || SSL_CTX_set_ciphersuites(ctx, tls13_suites) != 1 ||
        SSL_CTX_set1_groups_list(ctx, "X25519:P-256:P-384") != 1)
        CL_OSSL_OUT(CL_ECRYPTO, "cannot configure TLS algorithms");
    if (SSL_CTX_use_certificate(ctx, id->cert) != 1 || SSL_CTX_use_PrivateKey(ctx, id->key) != 1)
        CL_OSSL_OUT(CL_EINVAL, "cannot use the TLS identity");
    for (int i = 0; id->chain && i < sk_X509_num(id->chain); i++)
        if (SSL_CTX_add1_chain_cert(ctx, sk_X509_value(id->chain, i)) != 1)
            CL_OSSL_OUT(CL_EINVAL, "cannot use the certificate chain");
    pthread_once(&ticket_index_once, make_ticket_index);
    keys = calloc(1, sizeof *keys);
    CL_ENSURE_OUT(keys, CL_ENOMEM, "out of memory");
    pthread_mutex_init(&keys->lock, NULL);
    keys->rotation_s = opt && opt->ticket_rotation_s ? opt->ticket_rotation_s : DEFAULT_TICKET_ROTATION_S;
    keys->aes = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
    CL_ENSURE_OUT(keys->aes, CL_ECRYPTO, "AES-256-CBC is not available for session tickets");
    CL_ENSURE_OUT(new_ticket_key(&keys->current) && new_ticket_key(&keys->previous), CL_ECRYPTO,
                  "cannot make session ticket keys");
    CL_ENSURE_OUT(SSL_CTX_set_ex_data(ctx, ticket_keys_index, keys) == 1, CL_ECRYPTO, "SSL_CTX_set_ex_data");
    keys = NULL;
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb);
    /* Resumption is by ticket alone: a server-side session cache would
     * only cost an insert per handshake and periodic scans of thousands of
     * sessions, and one ticket per handshake is enough for a client. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ctx, 1);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, opt && opt->enable_h2 ? (void *)1 : NULL);
out:
    if (keys) {
        pthread_mutex_destroy(&keys->lock);
        EVP_CIPHER_free(keys->aes);
        cl_free_secret(keys, sizeof *keys);
    }
    if (rc < 0)
        SSL_CTX_free(ctx);
    else
        *out = ctx;
    return rc;
}

int cl_tls_client_ctx_unverified(SSL_CTX **out)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    CL_ENSURE(ctx, CL_ECRYPTO, "cannot create a TLS context");
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    *out = ctx;
    return CL_OK;
}

/* cloister keyholder: the one process inside the enclave that holds the
 * PKCS#11 token's private keys.
 *
 *   serve   answers the PKCS#11 module on the token socket (list tokens and
 *           objects, login, sign, decrypt) and the provisioner on the
 *           provisioning socket (put/delete tokens, status); one thread per
 *           connection; keys are wiped on exit.
 *   put / delete / status   a provisioning client.
 *
 * Keys never leave this process: the token socket's replies carry public
 * keys, certificates and signatures only.  A rotation keeps the previous
 * key generation for --rotation-grace so that workers still presenting the
 * old certificate can finish their handshakes. */
#include "cloister/core/acm_bundle.h"
#include "cloister/core/address.h"
#include "cloister/core/buf.h"
#include "cloister/core/clock.h"
#include "cloister/core/encoding.h"
#include "cloister/core/keyholder_proto.h"
#include "cloister/core/log.h"
#include "cloister/core/secret_file.h"
#include "commands.h"
#include "keyholder_kms.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNECTIONS 256
#define TOKEN_FRAME_MAX 65536
#define PROVISION_TIMEOUT_S 10

/* ---- state ------------------------------------------------------------------------ */

typedef struct generation {
    EVP_PKEY *pkey;
    int key_type;
    uint8_t id[16];
    uint8_t *spki;
    size_t spki_len;
    uint8_t *cert;
    size_t cert_len;
    uint32_t h_priv, h_pub, h_cert;
    char object_label[CL_KH_LABEL_MAX + 1];
} generation;

typedef struct token {
    bool used;
    uint32_t slot;
    uint64_t incarnation; /* changes when the token is deleted and made again */
    char label[CL_KH_LABEL_MAX + 1];
    char serial[17];
    uint8_t pin_salt[16];
    uint8_t pin_hash[32];
    unsigned failures;
    bool locked;
    bool expired;
    uint64_t generation;
    uint64_t refreshed_ms;
    generation *cur, *prev;
    uint64_t prev_until_ms;
} token;

static struct {
    pthread_mutex_t lock;
    token tokens[CL_KH_MAX_TOKENS];
    uint32_t next_handle;
    uint64_t next_incarnation;
    unsigned max_failures;
    uint64_t ttl_ms;
    uint64_t grace_ms;
    char key_dir[4096];
    int connections;
} kh = {.lock = PTHREAD_MUTEX_INITIALIZER, .next_handle = 1, .next_incarnation = 1, .max_failures = 5,
        .grace_ms = 60000};

/* Bumped whenever a key is released; connection threads then drop their
 * cached signing context (which holds a reference to the key) within a
 * second, so that an expired, deleted or rotated-out key is really gone. */
static _Atomic uint64_t key_epoch;

static void generation_free(generation *g)
{
    if (!g)
        return;
    key_epoch++;
    EVP_PKEY_free(g->pkey); /* OpenSSL clears the private components */
    free(g->spki);
    free(g->cert);
    cl_wipe(g, sizeof *g);
    free(g);
}

/* Caller holds the lock. */
static void token_clear(token *t)
{
    generation_free(t->cur);
    generation_free(t->prev);
    cl_wipe(t, sizeof *t);
}

/* Expiry of tokens and of previous generations; caller holds the lock. */
static void housekeeping_locked(uint64_t now)
{
    for (size_t i = 0; i < CL_KH_MAX_TOKENS; i++) {
        token *t = &kh.tokens[i];
        if (!t->used)
            continue;
        if (t->prev && now >= t->prev_until_ms) {
            generation_free(t->prev);
            t->prev = NULL;
        }
        if (kh.ttl_ms && !t->expired && now - t->refreshed_ms > kh.ttl_ms) {
            t->expired = true;
            generation_free(t->cur);
            generation_free(t->prev);
            t->cur = t->prev = NULL;
            cl_log(CL_LOG_WARN, "token_expired", "token", t->label, NULL);
        }
    }
}

static token *token_by_slot_locked(uint32_t slot)
{
    if (slot >= CL_KH_MAX_TOKENS || !kh.tokens[slot].used)
        return NULL;
    return &kh.tokens[slot];
}

static uint8_t token_flags(const token *t)
{
    uint8_t f = 0;
    if (t->locked)
        f |= CL_KH_TOKEN_LOCKED;
    if (t->failures > 0)
        f |= CL_KH_TOKEN_COUNT_LOW;
    if (!t->locked && kh.max_failures > 0 && t->failures + 1 == kh.max_failures)
        f |= CL_KH_TOKEN_FINAL_TRY;
    if (t->expired)
        f |= CL_KH_TOKEN_EXPIRED;
    return f;
}

static void pin_digest(const uint8_t salt[16], cl_slice pin, uint8_t out[32])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned n = 0;
    if (!md || !EVP_DigestInit_ex(md, EVP_sha256(), NULL) || !EVP_DigestUpdate(md, salt, 16) ||
        !EVP_DigestUpdate(md, pin.data, pin.len) || !EVP_DigestFinal_ex(md, out, &n))
        RAND_bytes(out, 32); /* matches nothing */
    EVP_MD_CTX_free(md);
}

/* ---- loading a key and its certificate chain ----------------------------------------- */

static int read_file(const char *path, size_t max, cl_buf *out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return cl_error_set(CL_EIO, "%s: %s", path, strerror(errno));
    int rc = CL_OK;
    for (;;) {
        CL_TRY_OUT(cl_buf_reserve(out, 4096));
        ssize_t r = read(fd, out->data + out->len, out->cap - out->len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            CL_FAIL_OUT(CL_EIO, "%s: %s", path, strerror(errno));
        if (r == 0)
            break;
        out->len += (size_t)r;
        CL_ENSURE_OUT(out->len <= max, CL_ELIMIT, "%s: larger than %zu bytes", path, max);
    }
out:
    close(fd);
    return rc;
}

/* A key name inside the key directory: one path component, no dot files. */
static int key_path(cl_slice name, char *out, size_t out_len)
{
    CL_ENSURE(kh.key_dir[0], CL_EINVAL, "no --key-dir: file keys are not accepted");
    CL_ENSURE(name.len >= 1 && name.len <= 255 && name.data[0] != '.', CL_EINVAL, "key file name");
    for (size_t i = 0; i < name.len; i++)
        CL_ENSURE(name.data[i] != '/' && name.data[i] >= 0x20 && name.data[i] < 0x7f, CL_EINVAL,
                  "key file name must be a plain name inside the key directory");
    int n = snprintf(out, out_len, "%s/%.*s", kh.key_dir, (int)name.len, (const char *)name.data);
    CL_ENSURE(n > 0 && (size_t)n < out_len, CL_ELIMIT, "key path too long");
    return CL_OK;
}

static int key_type_of(EVP_PKEY *pkey, int *type)
{
    if (EVP_PKEY_is_a(pkey, "RSA")) {
        CL_ENSURE(EVP_PKEY_get_bits(pkey) >= 2048 && EVP_PKEY_get_bits(pkey) <= 8192, CL_EINVAL,
                  "RSA keys of 2048..8192 bits only");
        *type = CL_KH_KEY_RSA;
        return CL_OK;
    }
    if (EVP_PKEY_is_a(pkey, "EC")) {
        char group[64];
        size_t glen = 0;
        CL_ENSURE(EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, &glen),
                  CL_EINVAL, "EC key without a named curve");
        CL_ENSURE(!strcmp(group, "prime256v1") || !strcmp(group, "secp384r1") || !strcmp(group, "secp521r1"),
                  CL_EINVAL, "EC curve %s: P-256, P-384 or P-521 only", group);
        *type = CL_KH_KEY_EC;
        return CL_OK;
    }
    return cl_error_set(CL_EINVAL, "key type %s: RSA or EC only", EVP_PKEY_get0_type_name(pkey));
}

/* Makes a generation from PEM key bytes and a PEM chain (leaf first). */
static int generation_make(const cl_buf *key_pem, cl_slice chain, cl_slice object_label, generation **out)
{
    int rc = CL_OK;
    BIO *kb = NULL, *cb = NULL;
    X509 *leaf = NULL;
    generation *g = calloc(1, sizeof *g);
    CL_ENSURE_OUT(g, CL_ENOMEM, "out of memory");
    kb = BIO_new_mem_buf(key_pem->data, (int)key_pem->len);
    CL_ENSURE_OUT(kb, CL_ENOMEM, "out of memory");
    g->pkey = PEM_read_bio_PrivateKey(kb, NULL, NULL, (void *)"");
    if (!g->pkey)
        CL_OSSL_OUT(CL_EINVAL, "not a PEM private key (unencrypted PKCS#8 or traditional)");
    CL_TRY_OUT(key_type_of(g->pkey, &g->key_type));
    cb = BIO_new_mem_buf(chain.data, (int)chain.len);
    CL_ENSURE_OUT(cb, CL_ENOMEM, "out of memory");
    leaf = PEM_read_bio_X509(cb, NULL, NULL, NULL);
    if (!leaf)
        CL_OSSL_OUT(CL_EINVAL, "certificate chain: no PEM certificate");
    EVP_PKEY *pub = X509_get0_pubkey(leaf);
    CL_ENSURE_OUT(pub && EVP_PKEY_eq(pub, g->pkey) == 1, CL_EVERIFY,
                  "the certificate's public key is not the key's");
    /* the chain a client is shown must be one chain: every signature up to its last certificate */
    CL_TRY_OUT(cl_acm_chain_verify(chain.data, chain.len));
    int n = i2d_PUBKEY(g->pkey, &g->spki);
    CL_ENSURE_OUT(n > 0 && n <= CL_KH_DER_MAX, CL_ECRYPTO, "public key encoding");
    g->spki_len = (size_t)n;
    n = i2d_X509(leaf, &g->cert);
    CL_ENSURE_OUT(n > 0 && n <= CL_KH_DER_MAX, CL_ELIMIT, "certificate encoding (at most %d bytes)",
                  CL_KH_DER_MAX);
    g->cert_len = (size_t)n;
    uint8_t digest[32];
    unsigned dl = 0;
    CL_ENSURE_OUT(EVP_Digest(g->spki, g->spki_len, digest, &dl, EVP_sha256(), NULL), CL_ECRYPTO, "digest");
    memcpy(g->id, digest, sizeof g->id);
    memcpy(g->object_label, object_label.data, object_label.len);
    g->object_label[object_label.len] = 0;
out:
    BIO_free(kb);
    BIO_free(cb);
    X509_free(leaf);
    if (rc < 0) {
        generation_free(g);
        g = NULL;
    }
    *out = g;
    return rc;
}

/* Puts (creates, refreshes or rotates) a token.  *status for the reply. */
static int token_put(const cl_kh_request *r, uint32_t *slot_out, uint64_t *gen_out, uint32_t *status)
{
    int rc = CL_OK;
    cl_buf key_pem = CL_BUF_INIT;
    generation *g = NULL;
    *status = CL_KH_ST_BAD_KEY;
    if (r->key_source == CL_KH_SRC_KMS) {
        CL_TRY_OUT(kh_kms_open(r->label, r->key_ref, &key_pem, status)); /* keyholder_kms.c */
        *status = CL_KH_ST_BAD_KEY;
    } else {
        char path[4400];
        CL_TRY_OUT(key_path(r->key_ref, path, sizeof path));
        CL_TRY_OUT(cl_read_secret_file(path, 1 << 20, &key_pem));
    }
    CL_TRY_OUT(generation_make(&key_pem, r->chain, r->object_label, &g));

    pthread_mutex_lock(&kh.lock);
    uint64_t now = cl_monotonic_ms();
    housekeeping_locked(now);
    token *t = NULL, *free_slot = NULL;
    for (size_t i = 0; i < CL_KH_MAX_TOKENS; i++) {
        token *c = &kh.tokens[i];
        if (c->used && strlen(c->label) == r->label.len && !memcmp(c->label, r->label.data, r->label.len))
            t = c;
        else if (!c->used && !free_slot)
            free_slot = c;
    }
    bool created = false;
    if (!t) {
        if (!free_slot) {
            pthread_mutex_unlock(&kh.lock);
            *status = CL_KH_ST_BUSY;
            CL_FAIL_OUT(CL_ELIMIT, "at most %d tokens", CL_KH_MAX_TOKENS);
        }
        t = free_slot;
        memset(t, 0, sizeof *t);
        t->used = true;
        t->slot = (uint32_t)(t - kh.tokens);
        t->incarnation = kh.next_incarnation++;
        memcpy(t->label, r->label.data, r->label.len);
        uint8_t d[32];
        unsigned dl = 0;
        EVP_Digest(r->label.data, r->label.len, d, &dl, EVP_sha256(), NULL);
        cl_hex_encode(d, 8, t->serial);
        created = true;
    }
    RAND_bytes(t->pin_salt, sizeof t->pin_salt);
    pin_digest(t->pin_salt, r->pin, t->pin_hash);
    t->failures = 0;
    t->locked = false;
    t->expired = false;
    t->refreshed_ms = now;
    bool rotated = !t->cur || t->cur->spki_len != g->spki_len || memcmp(t->cur->spki, g->spki, g->spki_len) ||
                   t->cur->cert_len != g->cert_len || memcmp(t->cur->cert, g->cert, g->cert_len) ||
                   strcmp(t->cur->object_label, g->object_label);
    if (rotated) {
        g->h_priv = kh.next_handle++;
        g->h_pub = kh.next_handle++;
        g->h_cert = kh.next_handle++;
        if (kh.next_handle > 0x7fffff00)
            kh.next_handle = 1;
        generation_free(t->prev);
        t->prev = t->cur;
        t->prev_until_ms = now + kh.grace_ms;
        t->cur = g;
        g = NULL;
        t->generation++;
    }
    *slot_out = t->slot;
    *gen_out = t->generation;
    char gen_text[24];
    snprintf(gen_text, sizeof gen_text, "%llu", (unsigned long long)t->generation);
    cl_log(CL_LOG_INFO, created ? "token_created" : rotated ? "token_rotated" : "token_refreshed", "token",
           t->label, "object", t->cur->object_label, "key_type", t->cur->key_type == CL_KH_KEY_RSA ? "rsa" : "ec",
           "generation", gen_text, NULL);
    pthread_mutex_unlock(&kh.lock);
    *status = 0;
out:
    generation_free(g);
    cl_buf_free(&key_pem);
    return rc;
}

/* ---- signing and decrypting ---------------------------------------------------------- */

typedef struct conn {
    int fd;
    bool provisioning;
    uint64_t logged_in[CL_KH_MAX_TOKENS]; /* the token's incarnation, 0: not logged in */
    /* the last signing context, reused while key and parameters are the same;
     * it holds its own reference to the key */
    EVP_PKEY_CTX *sctx;
    EVP_PKEY *skey;
    uint64_t sepoch; /* key_epoch when the context was made */
    uint32_t sop, ssalt;
    uint8_t shash, smgf;
} conn;

static const EVP_MD *md_of(uint8_t h)
{
    switch (h) {
    case CL_KH_HASH_SHA1: return EVP_sha1();
    case CL_KH_HASH_SHA224: return EVP_sha224();
    case CL_KH_HASH_SHA256: return EVP_sha256();
    case CL_KH_HASH_SHA384: return EVP_sha384();
    case CL_KH_HASH_SHA512: return EVP_sha512();
    default: return NULL;
    }
}

static uint32_t sign_ctx(conn *cx, EVP_PKEY *pkey, const cl_kh_request *r)
{
    if (cx->sctx && cx->skey == pkey && cx->sop == r->op && cx->shash == r->hash && cx->smgf == r->mgf_hash &&
        cx->ssalt == r->salt_len)
        return 0;
    EVP_PKEY_CTX_free(cx->sctx);
    cx->sctx = NULL;
    cx->skey = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
    if (!ctx || EVP_PKEY_sign_init(ctx) <= 0)
        goto internal;
    if (r->op == CL_KH_OP_RSA_PKCS) {
        if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) <= 0)
            goto internal;
    } else if (r->op == CL_KH_OP_RSA_X509) {
        if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_NO_PADDING) <= 0)
            goto internal;
    } else if (r->op == CL_KH_OP_RSA_PSS) {
        const EVP_MD *md = md_of(r->hash), *mgf = md_of(r->mgf_hash);
        if (!md || !mgf) {
            EVP_PKEY_CTX_free(ctx);
            return CL_KH_ST_MECHANISM;
        }
        if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PSS_PADDING) <= 0 ||
            EVP_PKEY_CTX_set_signature_md(ctx, md) <= 0 || EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, mgf) <= 0 ||
            EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx, (int)r->salt_len) <= 0) {
            EVP_PKEY_CTX_free(ctx);
            ERR_clear_error();
            return CL_KH_ST_MECHANISM;
        }
    }
    cx->sctx = ctx;
    cx->skey = pkey;
    cx->sepoch = key_epoch;
    cx->sop = r->op;
    cx->shash = r->hash;
    cx->smgf = r->mgf_hash;
    cx->ssalt = r->salt_len;
    return 0;
internal:
    EVP_PKEY_CTX_free(ctx);
    ERR_clear_error();
    return CL_KH_ST_INTERNAL;
}

static uint32_t do_sign(conn *cx, EVP_PKEY *pkey, int key_type, const cl_kh_request *r, cl_buf *reply)
{
    bool ec = key_type == CL_KH_KEY_EC;
    if (ec != (r->op == CL_KH_OP_ECDSA))
        return CL_KH_ST_MECHANISM;
    size_t k = (size_t)EVP_PKEY_get_size(pkey);
    uint8_t block[CL_KH_DATA_MAX];
    const uint8_t *in = r->data.data;
    size_t in_len = r->data.len;
    if (in_len == 0)
        return CL_KH_ST_DATA_INVALID;
    if (r->op == CL_KH_OP_RSA_PKCS && in_len + 11 > k)
        return CL_KH_ST_DATA_INVALID;
    if (r->op == CL_KH_OP_RSA_PSS) {
        const EVP_MD *md = md_of(r->hash);
        if (!md || (size_t)EVP_MD_get_size(md) != in_len)
            return CL_KH_ST_DATA_INVALID;
    }
    if (r->op == CL_KH_OP_RSA_X509) {
        /* one block, left-padded with zeros to the modulus length */
        if (in_len > k || k > sizeof block)
            return CL_KH_ST_DATA_INVALID;
        memset(block, 0, k - in_len);
        memcpy(block + k - in_len, in, in_len);
        in = block;
        in_len = k;
    }
    uint32_t st = sign_ctx(cx, pkey, r);
    if (st)
        return st;
    uint8_t sig[1024];
    size_t sig_len = sizeof sig;
    static const char *const op_names[] = {"?", "ecdsa", "rsa-pkcs", "rsa-pss", "rsa-x509"};
    if (cl_log_get_level() <= CL_LOG_DEBUG)
        cl_log(CL_LOG_DEBUG, "sign", "op", op_names[r->op <= 4 ? r->op : 0], NULL);
    if (EVP_PKEY_sign(cx->sctx, sig, &sig_len, in, in_len) <= 0) {
        ERR_clear_error();
        return r->op == CL_KH_OP_RSA_X509 ? CL_KH_ST_DATA_INVALID : CL_KH_ST_INTERNAL;
    }
    if (cl_buf_append_u8(reply, CL_KH_OK) < 0)
        return CL_KH_ST_INTERNAL;
    if (!ec)
        return cl_kh_put_blob(reply, sig, sig_len) < 0 ? CL_KH_ST_INTERNAL : 0;
    /* DER ECDSA-Sig-Value -> r || s as PKCS#11 wants it */
    const uint8_t *p = sig;
    ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)sig_len);
    if (!es)
        return CL_KH_ST_INTERNAL;
    size_t half = ((size_t)EVP_PKEY_get_bits(pkey) + 7) / 8;
    uint8_t rs[2 * 66];
    int ok = half <= 66 && BN_bn2binpad(ECDSA_SIG_get0_r(es), rs, (int)half) == (int)half &&
             BN_bn2binpad(ECDSA_SIG_get0_s(es), rs + half, (int)half) == (int)half;
    ECDSA_SIG_free(es);
    if (!ok)
        return CL_KH_ST_INTERNAL;
    return cl_kh_put_blob(reply, rs, 2 * half) < 0 ? CL_KH_ST_INTERNAL : 0;
}

static uint32_t do_decrypt(EVP_PKEY *pkey, int key_type, const cl_kh_request *r, cl_buf *reply)
{
    if (key_type != CL_KH_KEY_RSA)
        return CL_KH_ST_MECHANISM;
    size_t k = (size_t)EVP_PKEY_get_size(pkey);
    if (r->data.len != k)
        return CL_KH_ST_DATA_INVALID;
    uint32_t st = CL_KH_ST_INTERNAL;
    uint8_t out[1024];
    size_t out_len = sizeof out;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
    if (!ctx || EVP_PKEY_decrypt_init(ctx) <= 0)
        goto out;
    if (r->op == CL_KH_OP_RSA_PKCS) {
        if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) <= 0)
            goto out;
    } else if (r->op == CL_KH_OP_RSA_X509) {
        if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_NO_PADDING) <= 0)
            goto out;
    } else {
        const EVP_MD *md = md_of(r->hash), *mgf = md_of(r->mgf_hash);
        if (!md || !mgf) {
            st = CL_KH_ST_MECHANISM;
            goto out;
        }
        if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) <= 0 ||
            EVP_PKEY_CTX_set_rsa_oaep_md(ctx, md) <= 0 || EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, mgf) <= 0)
            goto out;
        if (r->oaep_label.len) {
            void *label = OPENSSL_memdup(r->oaep_label.data, r->oaep_label.len);
            if (!label || EVP_PKEY_CTX_set0_rsa_oaep_label(ctx, label, (int)r->oaep_label.len) <= 0) {
                OPENSSL_free(label);
                goto out;
            }
        }
    }
    if (EVP_PKEY_decrypt(ctx, out, &out_len, r->data.data, r->data.len) <= 0) {
        st = CL_KH_ST_DECRYPT_FAILED;
        goto out;
    }
    st = 0;
    if (cl_buf_append_u8(reply, CL_KH_OK) < 0 || cl_kh_put_blob(reply, out, out_len) < 0)
        st = CL_KH_ST_INTERNAL;
out:
    ERR_clear_error();
    cl_wipe(out, sizeof out);
    EVP_PKEY_CTX_free(ctx);
    return st;
}

/* ---- requests ------------------------------------------------------------------------ */

static uint32_t list_tokens(cl_buf *reply, bool with_age)
{
    pthread_mutex_lock(&kh.lock);
    uint64_t now = cl_monotonic_ms();
    housekeeping_locked(now);
    uint16_t n = 0;
    for (size_t i = 0; i < CL_KH_MAX_TOKENS; i++)
        n += kh.tokens[i].used;
    int rc = cl_buf_append_u8(reply, CL_KH_OK);
    if (rc == 0)
        rc = cl_buf_append_be(reply, n, 2);
    for (size_t i = 0; i < CL_KH_MAX_TOKENS && rc == 0; i++) {
        const token *t = &kh.tokens[i];
        if (!t->used)
            continue;
        cl_kh_token_info ti = {.slot = t->slot,
                               .label = {(const uint8_t *)t->label, strlen(t->label)},
                               .serial = {(const uint8_t *)t->serial, strlen(t->serial)},
                               .flags = token_flags(t),
                               .generation = t->generation,
                               .age_ms = with_age ? now - t->refreshed_ms : 0};
        rc = cl_kh_encode_token(reply, &ti);
    }
    pthread_mutex_unlock(&kh.lock);
    return rc < 0 ? CL_KH_ST_INTERNAL : 0;
}

/* The current generation's objects; with `handle`, only the object of
 * that handle, from the current or the previous generation (so that a
 * process that found a key before a rotation can still use it). */
static uint32_t list_objects(uint32_t slot, uint32_t handle, cl_buf *reply)
{
    uint32_t st = 0;
    pthread_mutex_lock(&kh.lock);
    housekeeping_locked(cl_monotonic_ms());
    token *t = token_by_slot_locked(slot);
    if (!t) {
        st = CL_KH_ST_NO_SLOT;
        goto out;
    }
    const generation *g = t->cur;
    if (handle && !(g && (handle == g->h_priv || handle == g->h_pub || handle == g->h_cert))) {
        g = t->prev;
        if (!(g && (handle == g->h_priv || handle == g->h_pub || handle == g->h_cert))) {
            st = CL_KH_ST_NO_OBJECT;
            goto out;
        }
    }
    int rc = cl_buf_append_u8(reply, CL_KH_OK);
    if (rc == 0)
        rc = cl_buf_append_be(reply, !g ? 0 : handle ? 1 : 3, 2);
    if (g && rc == 0) {
        cl_slice id = {g->id, sizeof g->id}, label = {(const uint8_t *)g->object_label, strlen(g->object_label)};
        cl_kh_object_info objs[3] = {
            {g->h_priv, CL_KH_CLASS_PRIVATE_KEY, (uint8_t)g->key_type, id, label, {g->spki, g->spki_len}},
            {g->h_pub, CL_KH_CLASS_PUBLIC_KEY, (uint8_t)g->key_type, id, label, {g->spki, g->spki_len}},
            {g->h_cert, CL_KH_CLASS_CERTIFICATE, CL_KH_KEY_NONE, id, label, {g->cert, g->cert_len}},
        };
        for (int i = 0; i < 3 && rc == 0; i++)
            if (!handle || objs[i].handle == handle)
                rc = cl_kh_encode_object(reply, &objs[i]);
    }
    if (rc < 0)
        st = CL_KH_ST_INTERNAL;
out:
    pthread_mutex_unlock(&kh.lock);
    return st;
}

static uint32_t login(conn *cx, const cl_kh_request *r)
{
    uint32_t st = 0;
    pthread_mutex_lock(&kh.lock);
    token *t = token_by_slot_locked(r->slot);
    if (!t) {
        st = CL_KH_ST_NO_SLOT;
    } else if (t->locked) {
        st = CL_KH_ST_PIN_LOCKED;
    } else if (cx->logged_in[r->slot] == t->incarnation) {
        st = CL_KH_ST_ALREADY_LOGGED_IN;
    } else {
        uint8_t d[32];
        pin_digest(t->pin_salt, r->pin, d);
        if (CRYPTO_memcmp(d, t->pin_hash, 32) == 0) {
            t->failures = 0;
            cx->logged_in[r->slot] = t->incarnation;
        } else {
            t->failures++;
            char n[16];
            snprintf(n, sizeof n, "%u", t->failures);
            if (kh.max_failures && t->failures >= kh.max_failures) {
                t->locked = true;
                st = CL_KH_ST_PIN_LOCKED;
                cl_log(CL_LOG_WARN, "token_locked", "token", t->label, "failures", n, NULL);
            } else {
                st = CL_KH_ST_PIN_INCORRECT;
                cl_log(CL_LOG_WARN, "login_failed", "token", t->label, "failures", n, NULL);
            }
        }
        cl_wipe(d, sizeof d);
    }
    pthread_mutex_unlock(&kh.lock);
    return st;
}

static uint32_t key_op(conn *cx, const cl_kh_request *r, cl_buf *reply)
{
    pthread_mutex_lock(&kh.lock);
    housekeeping_locked(cl_monotonic_ms());
    token *t = token_by_slot_locked(r->slot);
    uint32_t st = 0;
    EVP_PKEY *pkey = NULL;
    int key_type = 0;
    if (!t) {
        st = CL_KH_ST_NO_SLOT;
    } else if (t->expired) {
        st = CL_KH_ST_EXPIRED;
    } else if (cx->logged_in[r->slot] != t->incarnation) {
        st = CL_KH_ST_NOT_LOGGED_IN;
    } else {
        generation *g = NULL;
        if (t->cur && t->cur->h_priv == r->handle)
            g = t->cur;
        else if (t->prev && t->prev->h_priv == r->handle)
            g = t->prev;
        if (!g) {
            st = CL_KH_ST_NO_OBJECT;
        } else {
            pkey = g->pkey;
            key_type = g->key_type;
            EVP_PKEY_up_ref(pkey);
        }
    }
    pthread_mutex_unlock(&kh.lock);
    if (st)
        return st;
    st = r->type == CL_KH_SIGN ? do_sign(cx, pkey, key_type, r, reply) : do_decrypt(pkey, key_type, r, reply);
    EVP_PKEY_free(pkey);
    return st;
}

static uint32_t handle(conn *cx, const cl_kh_request *r, cl_buf *reply)
{
    switch (r->type) {
    case CL_KH_LIST_TOKENS:
        return list_tokens(reply, false);
    case CL_KH_STATUS:
        return list_tokens(reply, true);
    case CL_KH_LOGIN:
        return login(cx, r);
    case CL_KH_LOGOUT:
        if (r->slot >= CL_KH_MAX_TOKENS)
            return CL_KH_ST_NO_SLOT;
        cx->logged_in[r->slot] = 0;
        return 0;
    case CL_KH_LIST_OBJECTS:
        return list_objects(r->slot, 0, reply);
    case CL_KH_GET_OBJECT:
        return r->handle ? list_objects(r->slot, r->handle, reply) : CL_KH_ST_NO_OBJECT;
    case CL_KH_SIGN:
    case CL_KH_DECRYPT:
        return key_op(cx, r, reply);
    case CL_KH_PUT_TOKEN: {
        uint32_t slot = 0, st = 0;
        uint64_t gen = 0;
        if (token_put(r, &slot, &gen, &st) < 0) {
            char label[CL_KH_LABEL_MAX + 1];
            snprintf(label, sizeof label, "%.*s", (int)r->label.len, (const char *)r->label.data);
            cl_log(CL_LOG_WARN, "token_put_failed", "token", label, "error", cl_error_message(), NULL);
            return st ? st : CL_KH_ST_INTERNAL;
        }
        if (cl_buf_append_u8(reply, CL_KH_OK) < 0 || cl_buf_append_be(reply, slot, 4) < 0 ||
            cl_buf_append_be(reply, gen, 8) < 0)
            return CL_KH_ST_INTERNAL;
        return 0;
    }
    case CL_KH_DELETE_TOKEN: {
        uint32_t st = CL_KH_ST_NO_SLOT;
        pthread_mutex_lock(&kh.lock);
        for (size_t i = 0; i < CL_KH_MAX_TOKENS; i++) {
            token *t = &kh.tokens[i];
            if (t->used && strlen(t->label) == r->label.len && !memcmp(t->label, r->label.data, r->label.len)) {
                cl_log(CL_LOG_INFO, "token_deleted", "token", t->label, NULL);
                token_clear(t);
                st = 0;
            }
        }
        pthread_mutex_unlock(&kh.lock);
        return st;
    }
    default:
        return CL_KH_ST_UNKNOWN_TYPE;
    }
}

static void *serve_conn(void *arg)
{
    conn *cx = arg;
    cl_buf frame = CL_BUF_INIT, reply = CL_BUF_INIT;
    for (;;) {
        bool eof = false;
        /* idle: drop a cached context whose key may have been released */
        while (cx->sctx) {
            struct pollfd p = {cx->fd, POLLIN, 0};
            if (poll(&p, 1, 1000) != 0)
                break;
            if (cx->sepoch != key_epoch) {
                EVP_PKEY_CTX_free(cx->sctx);
                cx->sctx = NULL;
                cx->skey = NULL;
            }
        }
        if (cl_kh_read_frame(cx->fd, cx->provisioning ? CL_KH_MAX_FRAME : TOKEN_FRAME_MAX, &frame, &eof) < 0) {
            if (!eof)
                cl_log(CL_LOG_DEBUG, "connection_dropped", "error", cl_error_message(), NULL);
            break;
        }
        cl_kh_request r;
        reply.len = 0;
        uint32_t st;
        int rc = cl_kh_request_decode(frame.data, frame.len, cx->provisioning, &r);
        if (rc < 0) {
            st = rc == CL_ENOTFOUND ? CL_KH_ST_UNKNOWN_TYPE : CL_KH_ST_MALFORMED;
            cl_log(CL_LOG_WARN, "bad_request", "error", cl_error_message(), NULL);
        } else {
            st = handle(cx, &r, &reply);
        }
        if (st) {
            reply.len = 0;
            if (cl_kh_reply_error(&reply, st) < 0)
                break;
        } else if (reply.len == 0 && cl_buf_append_u8(&reply, CL_KH_OK) < 0) {
            break;
        }
        if (cl_kh_write_frame(cx->fd, reply.data, reply.len) < 0)
            break;
    }
    cl_buf_free(&frame);
    cl_buf_free(&reply);
    EVP_PKEY_CTX_free(cx->sctx);
    close(cx->fd);
    cl_wipe(cx, sizeof *cx);
    free(cx);
    pthread_mutex_lock(&kh.lock);
    kh.connections--;
    pthread_mutex_unlock(&kh.lock);
    return NULL;
}

/* ---- serve --------------------------------------------------------------------------- */

static int stop_pipe[2] = {-1, -1};

static void on_signal(int sig)
{
    (void)sig;
    int saved = errno;
    char b = 1;
    ssize_t ignored = write(stop_pipe[1], &b, 1);
    (void)ignored;
    errno = saved;
}

static void accept_one(int lfd, bool provisioning)
{
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
        return;
    pthread_mutex_lock(&kh.lock);
    bool full = kh.connections >= MAX_CONNECTIONS;
    if (!full)
        kh.connections++;
    pthread_mutex_unlock(&kh.lock);
    if (full) {
        cl_log(CL_LOG_WARN, "connection_refused", "reason", "too many connections", NULL);
        close(fd);
        return;
    }
    if (provisioning) {
        struct timeval tv = {PROVISION_TIMEOUT_S, 0};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    conn *cx = calloc(1, sizeof *cx);
    pthread_t th;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (cx) {
        cx->fd = fd;
        cx->provisioning = provisioning;
    }
    if (!cx || pthread_create(&th, &attr, serve_conn, cx) != 0) {
        free(cx);
        close(fd);
        pthread_mutex_lock(&kh.lock);
        kh.connections--;
        pthread_mutex_unlock(&kh.lock);
    }
    pthread_attr_destroy(&attr);
}

static int listen_on(const char *text, int *fd)
{
    cl_address a;
    CL_TRY(cl_address_parse(text, &a));
    CL_TRY(cl_address_listen(&a, 64, fd));
    if (a.kind == CL_ADDR_UNIX && chmod(a.path, 0600) < 0)
        return cl_error_set(CL_EIO, "chmod %s: %s", a.path, strerror(errno));
    return CL_OK;
}

/* --token LABEL,key=NAME,cert=PATH,pin-file=PATH[,object=OBJ] */
static int token_from_flag(const char *spec)
{
    int rc = CL_OK;
    char *copy = strdup(spec);
    cl_buf pin = CL_BUF_INIT, chain = CL_BUF_INIT;
    CL_ENSURE(copy, CL_ENOMEM, "out of memory");
    char *save = NULL, *label = strtok_r(copy, ",", &save), *key = NULL, *cert = NULL, *pin_file = NULL,
         *object = NULL;
    for (char *kv = strtok_r(NULL, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(kv, '=');
        CL_ENSURE_OUT(eq, CL_EINVAL, "'%s' is not KEY=VALUE", kv);
        *eq = 0;
        if (!strcmp(kv, "key"))
            key = eq + 1;
        else if (!strcmp(kv, "cert"))
            cert = eq + 1;
        else if (!strcmp(kv, "pin-file"))
            pin_file = eq + 1;
        else if (!strcmp(kv, "object"))
            object = eq + 1;
        else
            CL_FAIL_OUT(CL_EINVAL, "unknown field '%s'", kv);
    }
    CL_ENSURE_OUT(label && key && cert && pin_file, CL_EINVAL,
                  "needs LABEL,key=NAME,cert=PATH,pin-file=PATH");
    CL_TRY_OUT(cl_read_secret_file(pin_file, CL_KH_PIN_MAX + 2, &pin));
    while (pin.len && (pin.data[pin.len - 1] == '\n' || pin.data[pin.len - 1] == '\r'))
        pin.len--;
    CL_TRY_OUT(read_file(cert, CL_KH_CHAIN_MAX, &chain));
    cl_kh_request r = {.type = CL_KH_PUT_TOKEN,
                       .label = {(const uint8_t *)label, strlen(label)},
                       .pin = {pin.data, pin.len},
                       .object_label = {(const uint8_t *)(object ? object : label), strlen(object ? object : label)},
                       .key_source = CL_KH_SRC_FILE,
                       .key_ref = {(const uint8_t *)key, strlen(key)},
                       .chain = {chain.data, chain.len}};
    CL_ENSURE_OUT(cl_kh_label_valid(r.label) && cl_kh_label_valid(r.object_label), CL_EINVAL,
                  "labels are 1..%d characters without spaces or URI delimiters", CL_KH_LABEL_MAX);
    CL_ENSURE_OUT(pin.len >= CL_KH_PIN_MIN && pin.len <= CL_KH_PIN_MAX, CL_EINVAL, "PIN of %d..%d bytes",
                  CL_KH_PIN_MIN, CL_KH_PIN_MAX);
    uint32_t slot, st;
    uint64_t gen;
    CL_TRY_OUT(token_put(&r, &slot, &gen, &st));
out:
    cl_buf_free(&pin);
    cl_buf_free(&chain);
    free(copy);
    return rc;
}

static const char serve_usage_text[] =
    "usage: cloister keyholder serve --socket unix:PATH [--provision unix:PATH] [--key-dir DIR]\n"
    "                                [--token SPEC]... [--max-pin-failures N] [--token-ttl DUR]\n"
    "                                [--rotation-grace DUR] [--debug]\n"
    "\n"
    "Holds the private keys of the PKCS#11 token (libcloister-pkcs11.so) inside the enclave and\n"
    "signs and decrypts with them for the module; nothing else.\n"
    "\n";

static const char serve_epilog[] =
    "The KMS key source opens keys provisioned as KMS ciphertexts (e.g. by `cloister host acm`)\n"
    "inside the enclave; its session is opened at start.  DUR is 250ms, 5s, 2m, 1h or a number\n"
    "of seconds.\n"
    "Prints 'keyholder: ready' once listening.  SIGTERM/SIGINT wipe the keys and exit.\n";

typedef struct serve_options {
    char *socket, *provision, *key_dir;
    cl_opt_list tokens;
    unsigned max_failures;
    uint64_t ttl_ms, grace_ms;
    bool debug;
} serve_options;

static int check_key_dir(void *base, const char *value)
{
    (void)base;
    CL_ENSURE(strlen(value) < sizeof kh.key_dir, CL_EINVAL, "too long");
    return CL_OK;
}

#define S serve_options
static const cl_opt serve_table[] = {
    {.name = "socket", CL_OPT_STR(S, socket), .flags = CL_OPT_REQUIRED, .arg = "ADDR",
     .help = "the module's socket (CLOISTER_KEYHOLDER in the module's environment)"},
    {.name = "provision", CL_OPT_STR(S, provision), .arg = "ADDR",
     .help = "the provisioning socket (put/delete/status); on Nitro the vsock port only the parent instance can "
             "reach"},
    {.name = "key-dir", CL_OPT_STR(S, key_dir), .set = check_key_dir, .arg = "DIR",
     .help = "directory inside the enclave that holds PEM key files; a provisioning message names a file in it "
             "(plain name only)"},
    {.name = "token", CL_OPT_LIST_AT(S, tokens, CL_KH_MAX_TOKENS), .arg = "SPEC",
     .help = "a token at start: LABEL,key=NAME,cert=PATH,pin-file=PATH[,object=OBJ] (key NAME inside --key-dir, "
             "cert a PEM chain leaf first); repeatable"},
    {.name = "max-pin-failures", CL_OPT_UINT_AT(S, max_failures, 0, 1000), .def = "5", .arg = "N",
     .help = "consecutive wrong PINs that lock a token until it is put again; 0 never locks"},
    {.name = "token-ttl", CL_OPT_DURATION_AT(S, ttl_ms, 1, 0, 30ull * 86400 * 1000), .def = "0", .arg = "DUR",
     .help = "a token not put again within DUR expires and its keys are wiped; 0: never"},
    {.name = "rotation-grace", CL_OPT_DURATION_AT(S, grace_ms, 1, 0, 30ull * 86400 * 1000), .def = "60s",
     .arg = "DUR", .help = "the previous key stays usable this long after a rotation"},
    {.name = "debug", CL_OPT_FLAG(S, debug), .help = "also log every signature's raw operation (never its data)"},
};
#undef S

static int serve(const serve_options *o);

static int cmd_serve(int argc, char **argv)
{
    serve_options o = {0};
    cl_opt_section sections[] = {
        CL_OPT_SECTION("options", serve_table, &o),
        {"KMS key source (any of these enables it)", NULL, 0, NULL},
    };
    sections[1].opts = kh_kms_options(&sections[1].count);
    cl_options spec = {.prog = "keyholder serve", .usage = serve_usage_text, .epilog = serve_epilog,
                       .sections = sections, .section_count = sizeof sections / sizeof sections[0]};
    cl_options_result r;
    int status = cl_options_main(&spec, argc, argv, &r);
    cl_options_free(NULL, &r);
    if (status == 0)
        status = serve(&o); /* returns only before it serves */
    else
        status = status > 0 ? 0 : EXIT_USAGE;
    cl_options_free(&spec, NULL);
    return status;
}

static int serve(const serve_options *o)
{
    const char *socket_addr = o->socket, *prov_addr = o->provision;
    char **token_specs = o->tokens.items;
    size_t ntokens = o->tokens.count;
    if (o->key_dir)
        snprintf(kh.key_dir, sizeof kh.key_dir, "%s", o->key_dir);
    kh.max_failures = o->max_failures;
    kh.ttl_ms = o->ttl_ms;
    kh.grace_ms = o->grace_ms;
    if (o->debug)
        cl_log_set_level(CL_LOG_DEBUG);
    cl_log_set_component("keyholder");
    /* no core dumps, no ptrace by other processes of the same user */
    prctl(PR_SET_DUMPABLE, 0);
    if (kh_kms_start() < 0) {
        fprintf(stderr, "keyholder: %s\n", cl_error_message());
        return EXIT_FAILED;
    }
    for (size_t i = 0; i < ntokens; i++) {
        if (token_from_flag(token_specs[i]) < 0) {
            fprintf(stderr, "keyholder: --token: %s\n", cl_error_message());
            return EXIT_USAGE;
        }
    }
    int lfd = -1, pfd = -1;
    if (pipe2(stop_pipe, O_CLOEXEC) < 0)
        return EXIT_FAILED;
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (listen_on(socket_addr, &lfd) < 0 || (prov_addr && listen_on(prov_addr, &pfd) < 0)) {
        fprintf(stderr, "keyholder: %s\n", cl_error_message());
        return EXIT_FAILED;
    }
    cl_log(CL_LOG_INFO, "listening", "socket", socket_addr, "provision", prov_addr ? prov_addr : "-", NULL);
    fprintf(stderr, "keyholder: ready\n");
    for (;;) {
        struct pollfd p[3] = {{stop_pipe[0], POLLIN, 0}, {lfd, POLLIN, 0}, {pfd, POLLIN, 0}};
        int n = poll(p, pfd >= 0 ? 3 : 2, 1000);
        if (n < 0 && errno != EINTR)
            break;
        if (p[0].revents)
            break;
        if (p[1].revents & POLLIN)
            accept_one(lfd, false);
        if (pfd >= 0 && (p[2].revents & POLLIN))
            accept_one(pfd, true);
        pthread_mutex_lock(&kh.lock);
        housekeeping_locked(cl_monotonic_ms());
        pthread_mutex_unlock(&kh.lock);
    }
    close(lfd);
    if (pfd >= 0)
        close(pfd);
    cl_address a;
    if (cl_address_parse(socket_addr, &a) == 0 && a.kind == CL_ADDR_UNIX)
        unlink(a.path);
    if (prov_addr && cl_address_parse(prov_addr, &a) == 0 && a.kind == CL_ADDR_UNIX)
        unlink(a.path);
    pthread_mutex_lock(&kh.lock);
    for (size_t i = 0; i < CL_KH_MAX_TOKENS; i++)
        if (kh.tokens[i].used)
            token_clear(&kh.tokens[i]);
    kh_kms_stop();
    cl_log(CL_LOG_INFO, "stopped", "keys", "wiped", NULL);
    /* threads still serving connections hold no key of their own beyond
     * their cached context; the process ends here */
    _exit(0);
}

/* ---- provisioning client ------------------------------------------------------------- */

static int roundtrip(const char *addr_text, const cl_kh_request *r, cl_buf *reply, uint32_t *status,
                     cl_cursor *payload)
{
    cl_address a;
    int fd = -1, rc = CL_OK;
    cl_buf req = CL_BUF_INIT;
    CL_TRY_OUT(cl_address_parse(addr_text, &a));
    CL_TRY_OUT(cl_address_connect(&a, &fd));
    struct timeval tv = {30, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    CL_TRY_OUT(cl_kh_request_encode(&req, r));
    CL_TRY_OUT(cl_kh_write_frame(fd, req.data, req.len));
    CL_TRY_OUT(cl_kh_read_frame(fd, CL_KH_MAX_FRAME, reply, NULL));
    CL_TRY_OUT(cl_kh_reply_split(reply->data, reply->len, status, payload));
out:
    if (fd >= 0)
        close(fd);
    cl_buf_free(&req);
    return rc;
}

static const char client_usage_text[] =
    "usage: cloister keyholder put --provision ADDR --token LABEL --pin-file PATH --key NAME\n"
    "                              --chain PEM [--object LABEL]\n"
    "       cloister keyholder delete --provision ADDR --token LABEL\n"
    "       cloister keyholder status --provision ADDR\n"
    "\n"
    "Provisioning over the key-holder's provisioning socket.  put creates a token, refreshes it\n"
    "(same key and certificate) or rotates it (new key or certificate: the previous key stays\n"
    "usable for the key-holder's --rotation-grace); the PIN is set each time and unlocks a\n"
    "locked token.  The key is NAME, a PEM file inside the key-holder's --key-dir: the key\n"
    "comes from inside the enclave, never through this channel.  (Keys provisioned as KMS\n"
    "ciphertexts, opened inside the enclave: `cloister host acm`.)\n\n";

typedef struct client_options {
    char *provision, *token, *pin_file, *key, *chain, *object;
} client_options;

#define C client_options
static const cl_opt client_table[] = {
    {.name = "provision", CL_OPT_STR(C, provision), .flags = CL_OPT_REQUIRED, .arg = "ADDR",
     .help = "the key-holder's provisioning socket"},
    {.name = "token", CL_OPT_STR(C, token), .arg = "LABEL", .help = "the token (put, delete)"},
    {.name = "pin-file", CL_OPT_STR(C, pin_file), .arg = "PATH", .help = "its PIN (put)"},
    {.name = "key", CL_OPT_STR(C, key), .arg = "NAME", .help = "the key's PEM file in --key-dir (put)"},
    {.name = "chain", CL_OPT_STR(C, chain), .arg = "PEM", .help = "the certificate chain, leaf first (put)"},
    {.name = "object", CL_OPT_STR(C, object), .arg = "LABEL", .help = "the key object's label (put; default: --token's)"},
};
#undef C

static int client_run(const char *verb, const client_options *o);

static int cmd_client(const char *verb, int argc, char **argv)
{
    client_options o = {0};
    cl_opt_section section = CL_OPT_SECTION("options", client_table, &o);
    char prog[32];
    snprintf(prog, sizeof prog, "keyholder %s", verb);
    cl_options spec = {.prog = prog, .usage = client_usage_text, .sections = &section, .section_count = 1};
    cl_options_result r;
    int status = cl_options_main(&spec, argc, argv, &r);
    cl_options_free(NULL, &r);
    if (status == 0)
        status = client_run(verb, &o);
    else
        status = status > 0 ? 0 : EXIT_USAGE;
    cl_options_free(&spec, NULL);
    return status;
}

static int client_run(const char *verb, const client_options *o)
{
    const char *prov = o->provision, *label = o->token, *pin_file = o->pin_file, *key = o->key,
               *chain_file = o->chain, *object = o->object;
    bool put = !strcmp(verb, "put"), del = !strcmp(verb, "delete");
    if ((put || del) && !label) {
        fprintf(stderr, "keyholder %s: --token LABEL is required (see --help)\n", verb);
        return EXIT_USAGE;
    }
    if (put && (!pin_file || !key || !chain_file)) {
        fprintf(stderr, "keyholder put: --pin-file, --key and --chain are required (see --help)\n");
        return EXIT_USAGE;
    }
    cl_buf pin = CL_BUF_INIT, chain = CL_BUF_INIT, reply = CL_BUF_INIT;
    int status_code = EXIT_FAILED;
    cl_kh_request r = {.type = put ? CL_KH_PUT_TOKEN : del ? CL_KH_DELETE_TOKEN : CL_KH_STATUS};
    if (put) {
        if (cl_read_secret_file(pin_file, CL_KH_PIN_MAX + 2, &pin) < 0 || read_file(chain_file, CL_KH_CHAIN_MAX, &chain) < 0) {
            fprintf(stderr, "keyholder %s: %s\n", verb, cl_error_message());
            goto out;
        }
        while (pin.len && (pin.data[pin.len - 1] == '\n' || pin.data[pin.len - 1] == '\r'))
            pin.len--;
        r.pin = (cl_slice){pin.data, pin.len};
        r.object_label = (cl_slice){(const uint8_t *)(object ? object : label), strlen(object ? object : label)};
        r.key_source = CL_KH_SRC_FILE;
        r.key_ref = (cl_slice){(const uint8_t *)key, strlen(key)};
        r.chain = (cl_slice){chain.data, chain.len};
    }
    if (label)
        r.label = (cl_slice){(const uint8_t *)label, strlen(label)};
    if ((put || del) && !cl_kh_label_valid(r.label)) {
        fprintf(stderr, "keyholder %s: token label: 1..%d characters without spaces or URI delimiters\n", verb,
                CL_KH_LABEL_MAX);
        status_code = EXIT_USAGE;
        goto out;
    }
    uint32_t st;
    cl_cursor payload;
    if (roundtrip(prov, &r, &reply, &st, &payload) < 0) {
        fprintf(stderr, "keyholder %s: %s\n", verb, cl_error_message());
        goto out;
    }
    if (st) {
        fprintf(stderr, "keyholder %s: refused: %s\n", verb, cl_kh_status_name(st));
        status_code = EXIT_REJECTED;
        goto out;
    }
    if (put) {
        uint32_t slot;
        uint64_t gen;
        if (cl_cursor_be32(&payload, &slot) < 0 || cl_cursor_be64(&payload, &gen) < 0) {
            fprintf(stderr, "keyholder put: short reply\n");
            goto out;
        }
        printf("token=%s slot=%u generation=%llu\n", label, slot, (unsigned long long)gen);
    } else if (!del) {
        cl_kh_token_info t[CL_KH_MAX_TOKENS];
        size_t n;
        if (cl_kh_decode_tokens(&payload, t, CL_KH_MAX_TOKENS, &n) < 0) {
            fprintf(stderr, "keyholder status: %s\n", cl_error_message());
            goto out;
        }
        for (size_t i = 0; i < n; i++)
            printf("token=%.*s slot=%u serial=%.*s generation=%llu age_ms=%llu%s%s%s\n", (int)t[i].label.len,
                   (const char *)t[i].label.data, t[i].slot, (int)t[i].serial.len, (const char *)t[i].serial.data,
                   (unsigned long long)t[i].generation, (unsigned long long)t[i].age_ms,
                   t[i].flags & CL_KH_TOKEN_LOCKED ? " locked" : "", t[i].flags & CL_KH_TOKEN_EXPIRED ? " expired" : "",
                   t[i].flags & CL_KH_TOKEN_COUNT_LOW ? " pin-count-low" : "");
    }
    status_code = 0;
out:
    cl_buf_free(&pin);
    cl_buf_free(&chain);
    cl_buf_free(&reply);
    return status_code;
}

int cmd_keyholder(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        FILE *out = argc < 2 ? stderr : stdout;
        fprintf(out, "usage: cloister keyholder serve|put|delete|status [ARGS...]\n\n"
                     "The enclave's key-holder for the PKCS#11 token, and its provisioning client.\n"
                     "'cloister keyholder serve --help' and 'cloister keyholder put --help' say more.\n");
        return argc < 2 ? EXIT_USAGE : 0;
    }
    if (!strcmp(argv[1], "serve"))
        return cmd_serve(argc - 1, argv + 1);
    if (!strcmp(argv[1], "put") || !strcmp(argv[1], "delete") || !strcmp(argv[1], "status"))
        return cmd_client(argv[1], argc - 1, argv + 1);
    fprintf(stderr, "keyholder: unknown verb '%s'\n", argv[1]);
    return EXIT_USAGE;
}

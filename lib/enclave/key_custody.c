/* Key custody: tokens, PIN lock-out, TTL, rotation grace, sign/decrypt and
 * the checks of a provisioned key, as a request -> reply core (see
 * include/cloister/enclave/key_custody.h).  Keys never leave it: replies
 * carry public keys, certificates and signatures only. */
#include "cloister/enclave/key_custody.h"

#include "cloister/core/acm_bundle.h"
#include "cloister/core/encoding.h"
#include "cloister/core/log.h"
#include "cloister/core/secret_file.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEY_FILE_MAX (1 << 20)

/* ---- state ------------------------------------------------------------------------ */

typedef struct generation {
    cl_custody *owner;
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

struct cl_custody {
    pthread_mutex_t lock;
    token tokens[CL_KH_MAX_TOKENS];
    uint32_t next_handle;
    uint64_t next_incarnation;
    unsigned max_failures;
    uint64_t ttl_ms;
    uint64_t grace_ms;
    char *key_dir;
    cl_custody_kms_decrypt_fn kms_decrypt;
    void *kms_arg;
    const char *const *kms_key_ids;
    size_t kms_key_id_count;
    /* Bumped whenever a key is released; connections then drop their
     * cached signing context (which holds a reference to the key), so
     * that an expired, deleted or rotated-out key is really gone. */
    _Atomic uint64_t key_epoch;
};

struct cl_custody_conn {
    cl_custody *custody;
    bool provisioning;
    uint64_t logged_in[CL_KH_MAX_TOKENS]; /* the token's incarnation, 0: not logged in */
    /* the last signing context, reused while key and parameters are the same;
     * it holds its own reference to the key */
    EVP_PKEY_CTX *sctx;
    EVP_PKEY *skey;
    uint64_t sepoch; /* key_epoch when the context was made */
    uint32_t sop, ssalt;
    uint8_t shash, smgf;
};

/* Times come from callers that read the clock before taking the lock: a
 * `now` a little older than a token's refresh is age 0, not 2^64 ms. */
static uint64_t since(uint64_t now, uint64_t then)
{
    return now > then ? now - then : 0;
}

static void generation_free(generation *g)
{
    if (!g)
        return;
    g->owner->key_epoch++;
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
static void housekeeping_locked(cl_custody *c, uint64_t now)
{
    for (size_t i = 0; i < CL_KH_MAX_TOKENS; i++) {
        token *t = &c->tokens[i];
        if (!t->used)
            continue;
        if (t->prev && now >= t->prev_until_ms) {
            generation_free(t->prev);
            t->prev = NULL;
        }
        if (c->ttl_ms && !t->expired && since(now, t->refreshed_ms) > c->ttl_ms) {
            t->expired = true;
            generation_free(t->cur);
            generation_free(t->prev);
            t->cur = t->prev = NULL;
            cl_log(CL_LOG_WARN, "token_expired", "token", t->label, NULL);
        }
    }
}

void cl_custody_housekeeping(cl_custody *c, uint64_t now_ms)
{
    pthread_mutex_lock(&c->lock);
    housekeeping_locked(c, now_ms);
    pthread_mutex_unlock(&c->lock);
}

static token *token_by_slot_locked(cl_custody *c, uint32_t slot)
{
    if (slot >= CL_KH_MAX_TOKENS || !c->tokens[slot].used)
        return NULL;
    return &c->tokens[slot];
}

static uint8_t token_flags(const cl_custody *c, const token *t)
{
    uint8_t f = 0;
    if (t->locked)
        f |= CL_KH_TOKEN_LOCKED;
    if (t->failures > 0)
        f |= CL_KH_TOKEN_COUNT_LOW;
    if (!t->locked && c->max_failures > 0 && t->failures + 1 == c->max_failures)
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

/* ---- life ----------------------------------------------------------------------------- */

int cl_custody_new(const cl_custody_config *config, cl_custody **out)
{
    *out = NULL;
    CL_ENSURE(!config->kms_decrypt ||
                  (config->kms_key_id_count > 0 && config->kms_key_id_count <= CL_CUSTODY_KMS_KEY_IDS_MAX),
              CL_EINVAL, "KMS key source: 1..%d pinned KMS keys (--kms-key-id) are required",
              CL_CUSTODY_KMS_KEY_IDS_MAX);
    cl_custody *c = calloc(1, sizeof *c);
    CL_ENSURE(c, CL_ENOMEM, "out of memory");
    if (config->key_dir && config->key_dir[0]) {
        c->key_dir = strdup(config->key_dir);
        if (!c->key_dir) {
            free(c);
            return cl_error_set(CL_ENOMEM, "out of memory");
        }
    }
    pthread_mutex_init(&c->lock, NULL);
    c->next_handle = 1;
    c->next_incarnation = 1;
    c->max_failures = config->max_failures;
    c->ttl_ms = config->ttl_ms;
    c->grace_ms = config->grace_ms;
    c->kms_decrypt = config->kms_decrypt;
    c->kms_arg = config->kms_arg;
    c->kms_key_ids = config->kms_key_ids;
    c->kms_key_id_count = config->kms_key_id_count;
    *out = c;
    return CL_OK;
}

static void wipe_all(cl_custody *c)
{
    pthread_mutex_lock(&c->lock);
    for (size_t i = 0; i < CL_KH_MAX_TOKENS; i++)
        if (c->tokens[i].used)
            token_clear(&c->tokens[i]);
    pthread_mutex_unlock(&c->lock);
}

void cl_custody_free(cl_custody *c)
{
    if (!c)
        return;
    wipe_all(c);
    pthread_mutex_destroy(&c->lock);
    free(c->key_dir);
    cl_wipe(c, sizeof *c);
    free(c);
}

int cl_custody_conn_new(cl_custody *c, cl_custody_socket socket, cl_custody_conn **out)
{
    cl_custody_conn *cx = calloc(1, sizeof *cx);
    *out = cx;
    CL_ENSURE(cx, CL_ENOMEM, "out of memory");
    cx->custody = c;
    cx->provisioning = socket == CL_CUSTODY_PROVISION_SOCKET;
    return CL_OK;
}

void cl_custody_conn_free(cl_custody_conn *cx)
{
    if (!cx)
        return;
    EVP_PKEY_CTX_free(cx->sctx);
    cl_wipe(cx, sizeof *cx);
    free(cx);
}

bool cl_custody_conn_idle(cl_custody_conn *cx)
{
    if (cx->sctx && cx->sepoch != cx->custody->key_epoch) {
        EVP_PKEY_CTX_free(cx->sctx);
        cx->sctx = NULL;
        cx->skey = NULL;
    }
    return cx->sctx != NULL;
}

/* ---- where a key comes from ----------------------------------------------------------- */

/* A key name inside the key directory: one path component, no dot files. */
static int key_path(const cl_custody *c, cl_slice name, char *out, size_t out_len)
{
    CL_ENSURE(c->key_dir, CL_EINVAL, "no --key-dir: file keys are not accepted");
    CL_ENSURE(name.len >= 1 && name.len <= 255 && name.data[0] != '.', CL_EINVAL, "key file name");
    for (size_t i = 0; i < name.len; i++)
        CL_ENSURE(name.data[i] != '/' && name.data[i] >= 0x20 && name.data[i] < 0x7f, CL_EINVAL,
                  "key file name must be a plain name inside the key directory");
    int n = snprintf(out, out_len, "%s/%.*s", c->key_dir, (int)name.len, (const char *)name.data);
    CL_ENSURE(n > 0 && (size_t)n < out_len, CL_ELIMIT, "key path too long");
    return CL_OK;
}

bool cl_custody_kms_key_id_matches(const char *wanted, const char *answered)
{
    if (!strcmp(wanted, answered))
        return true;
    if (!strncmp(wanted, "arn:", 4))
        return false; /* a key ARN must be the very one */
    size_t wl = strlen(wanted), al = strlen(answered);
    /* a bare key id: the ARN ends in ":key/ID" */
    return al > wl + 5 && !strcmp(answered + al - wl, wanted) && !memcmp(answered + al - wl - 5, ":key/", 5);
}

static bool is_alias(const char *id)
{
    return !strncmp(id, "alias/", 6) || (!strncmp(id, "arn:", 4) && strstr(id, ":alias/"));
}

/* Opens token `label`'s key from its KMS ciphertext: only under the pinned
 * keys and only with the context purpose=pkcs11-token, token=LABEL, so
 * that a ciphertext made for anything else (the enclave's TLS key, a
 * secret, another token) is refused by KMS. */
static int kms_open(cl_custody *c, cl_slice label, cl_slice ciphertext, cl_buf *key, uint32_t *status)
{
    if (!c->kms_decrypt) {
        *status = CL_KH_ST_NOT_IMPLEMENTED;
        return cl_error_set(CL_EINVAL, "this key-holder has no KMS settings (--kms-proxy, --kms-region, ...): "
                                       "KMS-ciphertext keys are not accepted");
    }
    *status = CL_KH_ST_BAD_KEY;
    char label_text[CL_KH_LABEL_MAX + 1];
    CL_ENSURE(label.len > 0 && label.len <= CL_KH_LABEL_MAX, CL_EINVAL, "token label of 1..%d bytes",
              CL_KH_LABEL_MAX);
    memcpy(label_text, label.data, label.len);
    label_text[label.len] = '\0';
    cl_kms_purpose_context purpose;
    CL_TRY(cl_kms_purpose_context_make(CL_KMS_PURPOSE_PKCS11_TOKEN, label_text, &purpose));
    cl_custody_kms_answer *ans = calloc(1, sizeof *ans);
    CL_ENSURE(ans, CL_ENOMEM, "out of memory");
    const char *used = NULL;
    int rc = CL_OK;
    /* One Decrypt per pinned key, each naming it as KeyId: KMS answers
     * IncorrectKeyException when the ciphertext is under another key, and
     * checks aliases itself. */
    for (size_t i = 0; i < c->kms_key_id_count; i++) {
        used = c->kms_key_ids[i];
        cl_kms_options o = {.key_id = used, .context = purpose.entries, .context_count = purpose.count};
        cl_buf_reset(key);
        memset(ans, 0, sizeof *ans);
        rc = c->kms_decrypt(c->kms_arg, &o, ciphertext, key, ans);
        ans->error_type[sizeof ans->error_type - 1] = 0;
        ans->key_id[sizeof ans->key_id - 1] = 0;
        if (rc == CL_OK || strcmp(ans->error_type, "IncorrectKeyException") || i + 1 == c->kms_key_id_count)
            break;
        cl_error_clear();
    }
    if (rc < 0) {
        cl_buf_reset(key);
        *status = ans->error_type[0] ? CL_KH_ST_KMS_REFUSED : CL_KH_ST_KMS_UNAVAILABLE;
        if (!strcmp(ans->error_type, "IncorrectKeyException"))
            rc = cl_error_prefix(rc, "the key's KMS ciphertext is not under a KMS key this key-holder was started "
                                     "with (--kms-key-id): ");
        else if (!strcmp(ans->error_type, "InvalidCiphertextException"))
            rc = cl_error_prefix(rc, "the key's KMS ciphertext was not made for token \"%s\" (it must carry the "
                                     "encryption context purpose=" CL_KMS_PURPOSE_PKCS11_TOKEN
                                     ", token=%s, as `acm pack-key --token %s` makes; a ciphertext for another "
                                     "purpose, e.g. the enclave's TLS key, is refused) or is damaged: ",
                                 label_text, label_text, label_text);
        else
            rc = cl_error_prefix(rc, "the key's KMS ciphertext cannot be opened in this enclave: ");
        goto out;
    }
    if (!is_alias(used) && !cl_custody_kms_key_id_matches(used, ans->key_id)) {
        cl_buf_reset(key);
        *status = CL_KH_ST_KMS_REFUSED;
        rc = cl_error_set(CL_EVERIFY, "KMS answered for key %s, not for %s (--kms-key-id)",
                          ans->key_id[0] ? ans->key_id : "(none)", used);
        goto out;
    }
    cl_log(CL_LOG_INFO, "kms_key_opened", "key_id", ans->key_id, "token", label_text, "purpose",
           CL_KMS_PURPOSE_PKCS11_TOKEN, NULL);
    *status = 0;
out:
    free(ans);
    return rc;
}

/* ---- a key and its certificate chain -------------------------------------------------- */

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
static int generation_make(cl_custody *c, const cl_buf *key_pem, cl_slice chain, cl_slice object_label,
                           generation **out)
{
    int rc = CL_OK;
    BIO *kb = NULL, *cb = NULL;
    X509 *leaf = NULL;
    generation *g = calloc(1, sizeof *g);
    CL_ENSURE_OUT(g, CL_ENOMEM, "out of memory");
    g->owner = c;
    CL_ENSURE_OUT(key_pem->len <= KEY_FILE_MAX && chain.len <= CL_KH_CHAIN_MAX, CL_ELIMIT, "key or chain too large");
    CL_ENSURE_OUT(object_label.len <= CL_KH_LABEL_MAX, CL_EINVAL, "object label too long");
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
    CL_ENSURE_OSSL_OUT(n > 0 && n <= CL_KH_DER_MAX, CL_ECRYPTO, "public key encoding");
    g->spki_len = (size_t)n;
    n = i2d_X509(leaf, &g->cert);
    CL_ENSURE_OUT(n > 0 && n <= CL_KH_DER_MAX, CL_ELIMIT, "certificate encoding (at most %d bytes)",
                  CL_KH_DER_MAX);
    g->cert_len = (size_t)n;
    uint8_t digest[32];
    unsigned dl = 0;
    CL_ENSURE_OSSL_OUT(EVP_Digest(g->spki, g->spki_len, digest, &dl, EVP_sha256(), NULL), CL_ECRYPTO, "digest");
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

/* ---- put ------------------------------------------------------------------------------ */

int cl_custody_put(cl_custody *c, const cl_kh_request *r, uint64_t now, uint32_t *slot_out, uint64_t *gen_out,
                   uint32_t *status)
{
    int rc = CL_OK;
    cl_buf key_pem = CL_BUF_INIT;
    generation *g = NULL;
    *status = CL_KH_ST_BAD_KEY;
    CL_ENSURE_OUT(r->label.len >= 1 && r->label.len <= CL_KH_LABEL_MAX, CL_EINVAL, "token label of 1..%d bytes",
                  CL_KH_LABEL_MAX);
    if (r->key_source == CL_KH_SRC_KMS) {
        CL_TRY_OUT(kms_open(c, r->label, r->key_ref, &key_pem, status));
        *status = CL_KH_ST_BAD_KEY;
    } else {
        char path[4400];
        CL_TRY_OUT(key_path(c, r->key_ref, path, sizeof path));
        CL_TRY_OUT(cl_read_secret_file(path, KEY_FILE_MAX, &key_pem));
    }
    CL_TRY_OUT(generation_make(c, &key_pem, r->chain, r->object_label, &g));

    pthread_mutex_lock(&c->lock);
    housekeeping_locked(c, now);
    token *t = NULL, *free_slot = NULL;
    for (size_t i = 0; i < CL_KH_MAX_TOKENS; i++) {
        token *k = &c->tokens[i];
        if (k->used && strlen(k->label) == r->label.len && !memcmp(k->label, r->label.data, r->label.len))
            t = k;
        else if (!k->used && !free_slot)
            free_slot = k;
    }
    bool created = false;
    if (!t) {
        if (!free_slot) {
            pthread_mutex_unlock(&c->lock);
            *status = CL_KH_ST_BUSY;
            CL_FAIL_OUT(CL_ELIMIT, "at most %d tokens", CL_KH_MAX_TOKENS);
        }
        t = free_slot;
        memset(t, 0, sizeof *t);
        t->used = true;
        t->slot = (uint32_t)(t - c->tokens);
        t->incarnation = c->next_incarnation++;
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
        g->h_priv = c->next_handle++;
        g->h_pub = c->next_handle++;
        g->h_cert = c->next_handle++;
        if (c->next_handle > 0x7fffff00)
            c->next_handle = 1;
        generation_free(t->prev);
        t->prev = t->cur;
        t->prev_until_ms = now + c->grace_ms;
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
    pthread_mutex_unlock(&c->lock);
    *status = 0;
out:
    generation_free(g);
    cl_buf_free(&key_pem);
    return rc;
}

/* ---- signing and decrypting ---------------------------------------------------------- */

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

static uint32_t sign_ctx(cl_custody_conn *cx, EVP_PKEY *pkey, const cl_kh_request *r)
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
    cx->sepoch = cx->custody->key_epoch;
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

static uint32_t do_sign(cl_custody_conn *cx, EVP_PKEY *pkey, int key_type, const cl_kh_request *r, cl_buf *reply)
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

static uint32_t list_tokens(cl_custody *c, uint64_t now, cl_buf *reply, bool with_age)
{
    pthread_mutex_lock(&c->lock);
    housekeeping_locked(c, now);
    uint16_t n = 0;
    for (size_t i = 0; i < CL_KH_MAX_TOKENS; i++)
        n += c->tokens[i].used;
    int rc = cl_buf_append_u8(reply, CL_KH_OK);
    if (rc == 0)
        rc = cl_buf_append_be(reply, n, 2);
    for (size_t i = 0; i < CL_KH_MAX_TOKENS && rc == 0; i++) {
        const token *t = &c->tokens[i];
        if (!t->used)
            continue;
        cl_kh_token_info ti = {.slot = t->slot,
                               .label = {(const uint8_t *)t->label, strlen(t->label)},
                               .serial = {(const uint8_t *)t->serial, strlen(t->serial)},
                               .flags = token_flags(c, t),
                               .generation = t->generation,
                               .age_ms = with_age ? since(now, t->refreshed_ms) : 0};
        rc = cl_kh_encode_token(reply, &ti);
    }
    pthread_mutex_unlock(&c->lock);
    return rc < 0 ? CL_KH_ST_INTERNAL : 0;
}

/* The current generation's objects; with `handle`, only the object of
 * that handle, from the current or the previous generation (so that a
 * process that found a key before a rotation can still use it). */
static uint32_t list_objects(cl_custody *c, uint64_t now, uint32_t slot, uint32_t handle, cl_buf *reply)
{
    uint32_t st = 0;
    pthread_mutex_lock(&c->lock);
    housekeeping_locked(c, now);
    token *t = token_by_slot_locked(c, slot);
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
    pthread_mutex_unlock(&c->lock);
    return st;
}

static uint32_t login(cl_custody_conn *cx, const cl_kh_request *r)
{
    cl_custody *c = cx->custody;
    uint32_t st = 0;
    pthread_mutex_lock(&c->lock);
    token *t = token_by_slot_locked(c, r->slot);
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
            if (c->max_failures && t->failures >= c->max_failures) {
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
    pthread_mutex_unlock(&c->lock);
    return st;
}

static uint32_t key_op(cl_custody_conn *cx, uint64_t now, const cl_kh_request *r, cl_buf *reply)
{
    cl_custody *c = cx->custody;
    pthread_mutex_lock(&c->lock);
    housekeeping_locked(c, now);
    token *t = token_by_slot_locked(c, r->slot);
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
    pthread_mutex_unlock(&c->lock);
    if (st)
        return st;
    st = r->type == CL_KH_SIGN ? do_sign(cx, pkey, key_type, r, reply) : do_decrypt(pkey, key_type, r, reply);
    EVP_PKEY_free(pkey);
    return st;
}

static uint32_t dispatch(cl_custody_conn *cx, uint64_t now, const cl_kh_request *r, cl_buf *reply)
{
    cl_custody *c = cx->custody;
    switch (r->type) {
    case CL_KH_LIST_TOKENS:
        return list_tokens(c, now, reply, false);
    case CL_KH_STATUS:
        return list_tokens(c, now, reply, true);
    case CL_KH_LOGIN:
        return login(cx, r);
    case CL_KH_LOGOUT:
        if (r->slot >= CL_KH_MAX_TOKENS)
            return CL_KH_ST_NO_SLOT;
        cx->logged_in[r->slot] = 0;
        return 0;
    case CL_KH_LIST_OBJECTS:
        return list_objects(c, now, r->slot, 0, reply);
    case CL_KH_GET_OBJECT:
        return r->handle ? list_objects(c, now, r->slot, r->handle, reply) : CL_KH_ST_NO_OBJECT;
    case CL_KH_SIGN:
    case CL_KH_DECRYPT:
        return key_op(cx, now, r, reply);
    case CL_KH_PUT_TOKEN: {
        uint32_t slot = 0, st = 0;
        uint64_t gen = 0;
        if (cl_custody_put(c, r, now, &slot, &gen, &st) < 0) {
            char label[CL_KH_LABEL_MAX + 1];
            snprintf(label, sizeof label, "%.*s", (int)(r->label.len <= CL_KH_LABEL_MAX ? r->label.len : 0),
                     (const char *)r->label.data);
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
        pthread_mutex_lock(&c->lock);
        for (size_t i = 0; i < CL_KH_MAX_TOKENS; i++) {
            token *t = &c->tokens[i];
            if (t->used && strlen(t->label) == r->label.len && !memcmp(t->label, r->label.data, r->label.len)) {
                cl_log(CL_LOG_INFO, "token_deleted", "token", t->label, NULL);
                token_clear(t);
                st = 0;
            }
        }
        pthread_mutex_unlock(&c->lock);
        return st;
    }
    default:
        return CL_KH_ST_UNKNOWN_TYPE;
    }
}

int cl_custody_handle(cl_custody_conn *cx, const uint8_t *req, size_t len, uint64_t now_ms, cl_buf *reply)
{
    cl_buf_reset(reply);
    cl_kh_request r;
    uint32_t st;
    int rc = cl_kh_request_decode(req, len, cx->provisioning, &r);
    if (rc < 0) {
        st = rc == CL_ENOTFOUND ? CL_KH_ST_UNKNOWN_TYPE : CL_KH_ST_MALFORMED;
        cl_log(CL_LOG_WARN, "bad_request", "error", cl_error_message(), NULL);
    } else {
        st = dispatch(cx, now_ms, &r, reply);
    }
    if (st) {
        cl_buf_reset(reply);
        return cl_kh_reply_error(reply, st);
    }
    if (reply->len == 0)
        return cl_buf_append_u8(reply, CL_KH_OK);
    return CL_OK;
}

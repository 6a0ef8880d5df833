#include "cloister/core/attestation.h"

#include "core/aws_root.h"
#include "cloister/core/encoding.h"

#include <limits.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* payload map -> pcrs map / cabundle array -> byte strings */
static const cl_cbor_limits payload_limits = {.max_depth = 2, .max_map_entries = CL_PCR_COUNT};

#define DEFAULT_CACHE_ENTRIES 1024
#define CACHE_BUCKETS 2048 /* power of two */
#define MAX_TRUSTED_ROOTS 16
#define FUTURE_SKEW_MS (5 * 60 * 1000)

uint64_t cl_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- parsing ---------------------------------------------------------- */

static int field_bytes(const cl_cbor *v, const char *name, size_t min, size_t max, cl_slice *out)
{
    CL_ENSURE(v->type == CL_CBOR_BYTES, CL_EPARSE, "attestation: %s is a %s, not a byte string", name,
              cl_cbor_type_name(v->type));
    CL_ENSURE(v->len >= min && v->len <= max, CL_EPARSE,
              "attestation: %s is %zu bytes, allowed %zu..%zu", name, v->len, min, max);
    *out = (cl_slice){v->data, v->len};
    return CL_OK;
}

/* public_key, user_data, nonce: absent and null both mean "not given". */
static int optional_bytes(const cl_cbor *v, const char *name, size_t min, bool *has, cl_slice *out)
{
    if (v->type == CL_CBOR_NULL) {
        *has = false;
        return CL_OK;
    }
    CL_TRY(field_bytes(v, name, min, CL_ATTESTATION_MAX_FIELD_LEN, out));
    *has = true;
    return CL_OK;
}

static int parse_pcrs(const cl_cbor *v, cl_attestation_doc *doc)
{
    CL_ENSURE(v->type == CL_CBOR_MAP, CL_EPARSE, "attestation: pcrs is a %s, not a map",
              cl_cbor_type_name(v->type));
    CL_ENSURE(v->u >= 1 && v->u <= CL_PCR_COUNT, CL_EPARSE,
              "attestation: pcrs has %llu entries, allowed 1..%d", (unsigned long long)v->u, CL_PCR_COUNT);
    for (const cl_cbor *k = v->child; k; k = k->next->next) {
        const cl_cbor *val = k->next;
        CL_ENSURE(k->type == CL_CBOR_UINT, CL_EPARSE, "attestation: a PCR index is a %s",
                  cl_cbor_type_name(k->type));
        CL_ENSURE(k->u < CL_PCR_COUNT, CL_EPARSE, "attestation: PCR index %llu is out of range 0..31",
                  (unsigned long long)k->u);
        CL_ENSURE(val->type == CL_CBOR_BYTES, CL_EPARSE, "attestation: PCR%llu is a %s, not a byte string",
                  (unsigned long long)k->u, cl_cbor_type_name(val->type));
        CL_ENSURE(val->len == 32 || val->len == 48 || val->len == 64, CL_EPARSE,
                  "attestation: PCR%llu is %zu bytes, must be 32, 48 or 64", (unsigned long long)k->u,
                  val->len);
        doc->pcr_present |= 1u << k->u;
        doc->pcrs[k->u] = (cl_slice){val->data, val->len};
    }
    return CL_OK;
}

static int parse_cabundle(const cl_cbor *v, cl_attestation_doc *doc)
{
    CL_ENSURE(v->type == CL_CBOR_ARRAY, CL_EPARSE, "attestation: cabundle is a %s, not an array",
              cl_cbor_type_name(v->type));
    CL_ENSURE(v->u >= 1, CL_EPARSE, "attestation: cabundle is empty");
    CL_ENSURE(v->u <= CL_ATTESTATION_MAX_CABUNDLE, CL_ELIMIT,
              "attestation: cabundle has %llu certificates, at most %d accepted", (unsigned long long)v->u,
              CL_ATTESTATION_MAX_CABUNDLE);
    size_t i = 0;
    for (const cl_cbor *c = v->child; c; c = c->next, i++) {
        char name[32];
        snprintf(name, sizeof name, "cabundle[%zu]", i);
        CL_TRY(field_bytes(c, name, 1, CL_ATTESTATION_MAX_CERT_LEN, &doc->cabundle[i]));
    }
    doc->cabundle_len = i;
    return CL_OK;
}

enum {
    F_MODULE_ID = 1 << 0,
    F_DIGEST = 1 << 1,
    F_TIMESTAMP = 1 << 2,
    F_PCRS = 1 << 3,
    F_CERTIFICATE = 1 << 4,
    F_CABUNDLE = 1 << 5,
    F_REQUIRED = (1 << 6) - 1,
};

static int parse_payload(const cl_cbor *map, cl_attestation_doc *doc)
{
    CL_ENSURE(map->type == CL_CBOR_MAP, CL_EPARSE, "attestation: payload is a %s, not a map",
              cl_cbor_type_name(map->type));
    unsigned seen = 0;
    for (const cl_cbor *k = map->child; k; k = k->next->next) {
        const cl_cbor *v = k->next;
        CL_ENSURE(k->type == CL_CBOR_TEXT, CL_EPARSE, "attestation: a payload key is a %s, not text",
                  cl_cbor_type_name(k->type));
        cl_slice key = {k->data, k->len};
        if (cl_slice_eq(key, "module_id")) {
            CL_ENSURE(v->type == CL_CBOR_TEXT && v->len > 0, CL_EPARSE,
                      "attestation: module_id must be non-empty text");
            doc->module_id = (cl_slice){v->data, v->len};
            seen |= F_MODULE_ID;
        } else if (cl_slice_eq(key, "digest")) {
            CL_ENSURE(v->type == CL_CBOR_TEXT, CL_EPARSE, "attestation: digest is a %s, not text",
                      cl_cbor_type_name(v->type));
            doc->digest = (cl_slice){v->data, v->len};
            CL_ENSURE(cl_slice_eq(doc->digest, "SHA384"), CL_EPARSE, "attestation: digest is not \"SHA384\"");
            seen |= F_DIGEST;
        } else if (cl_slice_eq(key, "timestamp")) {
            CL_ENSURE(v->type == CL_CBOR_UINT && v->u > 0, CL_EPARSE,
                      "attestation: timestamp must be a positive integer");
            doc->timestamp_ms = v->u;
            seen |= F_TIMESTAMP;
        } else if (cl_slice_eq(key, "pcrs")) {
            CL_TRY(parse_pcrs(v, doc));
            seen |= F_PCRS;
        } else if (cl_slice_eq(key, "certificate")) {
            CL_TRY(field_bytes(v, "certificate", 1, CL_ATTESTATION_MAX_CERT_LEN, &doc->certificate));
            seen |= F_CERTIFICATE;
        } else if (cl_slice_eq(key, "cabundle")) {
            CL_TRY(parse_cabundle(v, doc));
            seen |= F_CABUNDLE;
        } else if (cl_slice_eq(key, "public_key")) {
            CL_TRY(optional_bytes(v, "public_key", 1, &doc->has_public_key, &doc->public_key));
        } else if (cl_slice_eq(key, "user_data")) {
            CL_TRY(optional_bytes(v, "user_data", 0, &doc->has_user_data, &doc->user_data));
        } else if (cl_slice_eq(key, "nonce")) {
            CL_TRY(optional_bytes(v, "nonce", 0, &doc->has_nonce, &doc->nonce));
        } else {
            return cl_error_set(CL_EPARSE, "attestation: unexpected field \"%.*s\"", (int)(k->len > 40 ? 40 : k->len),
                                (const char *)k->data);
        }
    }
    static const char *const required[] = {"module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle"};
    for (unsigned i = 0; i < 6; i++)
        CL_ENSURE(seen & (1u << i), CL_EPARSE, "attestation: required field %s is missing", required[i]);
    return CL_OK;
}

int cl_attestation_parse(const uint8_t *data, size_t len, cl_attestation_doc *doc)
{
    memset(doc, 0, sizeof *doc);
    int rc = CL_OK;
    CL_ENSURE_OUT(len <= CL_ATTESTATION_MAX_DOC_LEN, CL_ELIMIT,
                  "attestation: document is %zu bytes, at most %d accepted", len, CL_ATTESTATION_MAX_DOC_LEN);
    CL_TRY_OUT(cl_buf_append(&doc->raw, data, len));
    CL_TRY_OUT(cl_cose_sign1_decode(doc->raw.data, doc->raw.len, &doc->cose));
    CL_TRY_OUT(cl_cbor_decode(doc->cose.payload.data, doc->cose.payload.len, &payload_limits,
                              &doc->payload_cbor));
    CL_TRY_OUT(parse_payload(doc->payload_cbor.root, doc));
out:
    if (rc < 0)
        cl_attestation_doc_free(doc);
    return rc;
}

void cl_attestation_doc_free(cl_attestation_doc *doc)
{
    cl_cbor_doc_free(&doc->payload_cbor);
    cl_cose_sign1_free(&doc->cose);
    cl_buf_free(&doc->raw);
    memset(doc, 0, sizeof *doc);
}

bool cl_attestation_is_debug(const cl_attestation_doc *doc)
{
    if (!(doc->pcr_present & 1u))
        return true;
    for (size_t i = 0; i < doc->pcrs[0].len; i++)
        if (doc->pcrs[0].data[i])
            return false;
    return true;
}

/* ---- the verifier and its certificate cache ---------------------------- */

/* A certificate that verified once: its signature by `parent`, its
 * structure and extensions.  Validity and path length are checked again on
 * every use, against that use's verification time and chain. */
typedef struct cache_entry {
    uint8_t cert_hash[32];
    uint8_t parent_hash[32];
    uint8_t *der; /* exact DER, compared on every hit */
    size_t der_len;
    time_t not_before, not_after;
    long path_len; /* -1: no constraint */
    bool is_ca;    /* the role it was checked for: a hit must be for the same role */
    EVP_PKEY *key;
    uint64_t last_used;
    struct cache_entry *next_in_bucket;
} cache_entry;

typedef struct trusted_root {
    uint8_t *der;
    size_t der_len;
    uint8_t hash[32];
    time_t not_before, not_after;
    long path_len;
    EVP_PKEY *key;
} trusted_root;

struct cl_verifier {
    pthread_mutex_t lock;
    trusted_root roots[MAX_TRUSTED_ROOTS];
    size_t root_count;
    cache_entry *buckets[CACHE_BUCKETS];
    size_t cache_count, cache_max;
    uint64_t tick, hits, misses;
};

static int sha256(const uint8_t *data, size_t len, uint8_t out[32])
{
    if (EVP_Digest(data, len, out, NULL, EVP_sha256(), NULL) != 1)
        return cl_error_ossl(CL_ECRYPTO, "SHA-256 failed");
    return CL_OK;
}

static void entry_free(cache_entry *e)
{
    EVP_PKEY_free(e->key);
    free(e->der);
    free(e);
}

static size_t bucket_of(const uint8_t cert_hash[32])
{
    return ((size_t)cert_hash[0] | (size_t)cert_hash[1] << 8) & (CACHE_BUCKETS - 1);
}

static void cache_clear(cl_verifier *v)
{
    for (size_t b = 0; b < CACHE_BUCKETS; b++) {
        cache_entry *e = v->buckets[b];
        while (e) {
            cache_entry *next = e->next_in_bucket;
            entry_free(e);
            e = next;
        }
        v->buckets[b] = NULL;
    }
    v->cache_count = 0;
}

int cl_verifier_new(bool with_aws_root, cl_verifier **out)
{
    *out = NULL;
    cl_verifier *v = calloc(1, sizeof *v);
    if (!v)
        return cl_error_set(CL_ENOMEM, "out of memory");
    pthread_mutex_init(&v->lock, NULL);
    v->cache_max = DEFAULT_CACHE_ENTRIES;
    if (with_aws_root) {
        BIO *bio = BIO_new_mem_buf(cl_aws_nitro_root_pem, -1);
        X509 *root = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
        BIO_free(bio);
        unsigned char *der = NULL;
        int der_len = root ? i2d_X509(root, &der) : -1;
        X509_free(root);
        int rc = der_len > 0 ? cl_verifier_add_root_der(v, der, (size_t)der_len)
                             : cl_error_ossl(CL_ECRYPTO, "cannot load the embedded AWS root");
        OPENSSL_free(der);
        if (rc < 0) {
            cl_verifier_free(v);
            return rc;
        }
    }
    *out = v;
    return CL_OK;
}

void cl_verifier_free(cl_verifier *v)
{
    if (!v)
        return;
    cache_clear(v);
    for (size_t i = 0; i < v->root_count; i++) {
        free(v->roots[i].der);
        EVP_PKEY_free(v->roots[i].key);
    }
    pthread_mutex_destroy(&v->lock);
    free(v);
}

void cl_verifier_set_cache_size(cl_verifier *v, size_t entries)
{
    pthread_mutex_lock(&v->lock);
    v->cache_max = entries;
    if (v->cache_count > entries)
        cache_clear(v);
    pthread_mutex_unlock(&v->lock);
}

void cl_verifier_cache_stats(cl_verifier *v, uint64_t *hits, uint64_t *misses)
{
    pthread_mutex_lock(&v->lock);
    *hits = v->hits;
    *misses = v->misses;
    pthread_mutex_unlock(&v->lock);
}

static int asn1_time_to_unix(const ASN1_TIME *t, time_t *out)
{
    struct tm tm;
    if (!t || ASN1_TIME_to_tm(t, &tm) != 1)
        return cl_error_set(CL_EPARSE, "certificate has an unreadable validity time");
    *out = timegm(&tm);
    return CL_OK;
}

static bool key_is_p384(EVP_PKEY *key)
{
    char group[32];
    size_t len = 0;
    return EVP_PKEY_get_base_id(key) == EVP_PKEY_EC &&
           EVP_PKEY_get_utf8_string_param(key, "group", group, sizeof group, &len) &&
           strcmp(group, "secp384r1") == 0;
}

/* Parses DER that must be exactly one certificate, nothing after it. */
static int parse_der_cert(const uint8_t *der, size_t len, const char *what, X509 **out)
{
    const unsigned char *p = der;
    X509 *cert = d2i_X509(NULL, &p, (long)len);
    if (!cert)
        return cl_error_ossl(CL_EVERIFY, "%s is not a valid X.509 certificate", what);
    if ((size_t)(p - der) != len) {
        X509_free(cert);
        return cl_error_set(CL_EVERIFY, "%s has %zu trailing bytes after the certificate", what,
                            len - (size_t)(p - der));
    }
    *out = cert;
    return CL_OK;
}

/* Structure checks of AWS's procedure that do not depend on time or chain. */
static int check_cert_shape(X509 *cert, bool is_ca, const char *what)
{
    CL_ENSURE(X509_get_version(cert) == X509_VERSION_3, CL_EVERIFY, "%s is not an X.509 v3 certificate", what);
    uint32_t flags = X509_get_extension_flags(cert);
    CL_ENSURE(!(flags & EXFLAG_INVALID), CL_EVERIFY, "%s has invalid extensions", what);
    CL_ENSURE(!(flags & EXFLAG_CRITICAL), CL_EVERIFY, "%s has an unsupported critical extension", what);
    CL_ENSURE(X509_get_signature_nid(cert) == NID_ecdsa_with_SHA384, CL_EVERIFY,
              "%s is not signed with ecdsa-with-SHA384", what);
    EVP_PKEY *key = X509_get0_pubkey(cert);
    CL_ENSURE(key && key_is_p384(key), CL_EVERIFY, "%s does not carry a P-384 EC key", what);
    uint32_t usage = X509_get_key_usage(cert);
    if (is_ca) {
        CL_ENSURE((flags & EXFLAG_BCONS) && (flags & EXFLAG_CA), CL_EVERIFY,
                  "%s is not a CA (basicConstraints CA:TRUE required)", what);
        CL_ENSURE((flags & EXFLAG_KUSAGE) && (usage & KU_KEY_CERT_SIGN), CL_EVERIFY,
                  "%s lacks the keyCertSign key usage", what);
    } else {
        CL_ENSURE(!(flags & EXFLAG_CA), CL_EVERIFY, "%s (the signing certificate) is a CA", what);
        CL_ENSURE(!(flags & EXFLAG_KUSAGE) || (usage & KU_DIGITAL_SIGNATURE), CL_EVERIFY,
                  "%s lacks the digitalSignature key usage", what);
    }
    return CL_OK;
}

int cl_verifier_add_root_der(cl_verifier *v, const uint8_t *der, size_t len)
{
    CL_ENSURE(v->root_count < MAX_TRUSTED_ROOTS, CL_ELIMIT, "at most %d trusted roots", MAX_TRUSTED_ROOTS);
    CL_ENSURE(len >= 1 && len <= CL_ATTESTATION_MAX_CERT_LEN, CL_EINVAL,
              "trusted root is %zu bytes, allowed 1..%d", len, CL_ATTESTATION_MAX_CERT_LEN);
    int rc = CL_OK;
    X509 *cert = NULL;
    trusted_root root = {0};
    CL_TRY_OUT(parse_der_cert(der, len, "trusted root", &cert));
    CL_TRY_OUT(check_cert_shape(cert, true, "trusted root"));
    CL_ENSURE_OUT(X509_check_issued(cert, cert) == X509_V_OK, CL_EINVAL, "trusted root is not self-issued");
    CL_ENSURE_OSSL_OUT(X509_verify(cert, X509_get0_pubkey(cert)) == 1, CL_EINVAL,
                       "trusted root's self-signature does not verify");
    ERR_clear_error();
    CL_TRY_OUT(asn1_time_to_unix(X509_get0_notBefore(cert), &root.not_before));
    CL_TRY_OUT(asn1_time_to_unix(X509_get0_notAfter(cert), &root.not_after));
    root.path_len = X509_get_pathlen(cert);
    CL_TRY_OUT(sha256(der, len, root.hash));
    for (size_t i = 0; i < v->root_count; i++)
        if (!memcmp(v->roots[i].hash, root.hash, 32))
            goto out; /* already trusted */
    root.der = malloc(len);
    CL_ENSURE_OUT(root.der, CL_ENOMEM, "out of memory");
    memcpy(root.der, der, len);
    root.der_len = len;
    root.key = X509_get0_pubkey(cert);
    EVP_PKEY_up_ref(root.key);
    pthread_mutex_lock(&v->lock);
    v->roots[v->root_count++] = root;
    pthread_mutex_unlock(&v->lock);
    root.der = NULL;
out:
    free(root.der);
    X509_free(cert);
    return rc;
}

int cl_verifier_add_root_pem_file(cl_verifier *v, const char *path)
{
    cl_buf pem = CL_BUF_INIT;
    int rc = CL_OK;
    BIO *bio = NULL;
    X509 *cert = NULL;
    int count = 0;
    CL_TRY_OUT(cl_read_file(path, 1 << 20, &pem));
    bio = BIO_new_mem_buf(pem.data, (int)pem.len);
    CL_ENSURE_OUT(bio, CL_ENOMEM, "out of memory");
    while ((cert = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        unsigned char *der = NULL;
        int der_len = i2d_X509(cert, &der);
        X509_free(cert);
        cert = NULL;
        CL_ENSURE_OSSL_OUT(der_len > 0, CL_ECRYPTO, "cannot encode a certificate of %s", path);
        rc = cl_verifier_add_root_der(v, der, (size_t)der_len);
        OPENSSL_free(der);
        if (rc < 0) {
            cl_error_prefix(rc, "%s: ", path);
            goto out;
        }
        count++;
    }
    ERR_clear_error();
    CL_ENSURE_OUT(count > 0, CL_EINVAL, "%s holds no PEM certificate", path);
out:
    BIO_free(bio);
    cl_buf_free(&pem);
    return rc;
}

/* Returns the entry with an extra reference on its key, or NULL. */
static bool cache_lookup(cl_verifier *v, const uint8_t cert_hash[32], const uint8_t parent_hash[32],
                         const uint8_t *der, size_t der_len, bool is_ca, cache_entry *copy)
{
    bool found = false;
    pthread_mutex_lock(&v->lock);
    for (cache_entry *e = v->buckets[bucket_of(cert_hash)]; e; e = e->next_in_bucket) {
        if (!memcmp(e->cert_hash, cert_hash, 32) && !memcmp(e->parent_hash, parent_hash, 32) &&
            e->is_ca == is_ca && e->der_len == der_len && !memcmp(e->der, der, der_len)) {
            e->last_used = ++v->tick;
            *copy = *e;
            EVP_PKEY_up_ref(copy->key);
            v->hits++;
            found = true;
            break;
        }
    }
    if (!found)
        v->misses++;
    pthread_mutex_unlock(&v->lock);
    return found;
}

static void cache_evict_oldest(cl_verifier *v)
{
    cache_entry **victim = NULL;
    for (size_t b = 0; b < CACHE_BUCKETS; b++)
        for (cache_entry **pe = &v->buckets[b]; *pe; pe = &(*pe)->next_in_bucket)
            if (!victim || (*pe)->last_used < (*victim)->last_used)
                victim = pe;
    if (victim) {
        cache_entry *e = *victim;
        *victim = e->next_in_bucket;
        entry_free(e);
        v->cache_count--;
    }
}

static void cache_insert(cl_verifier *v, const cache_entry *proto)
{
    if (v->cache_max == 0)
        return;
    cache_entry *e = calloc(1, sizeof *e);
    uint8_t *der = malloc(proto->der_len);
    if (!e || !der) { /* the cache is an optimisation: skip it under pressure */
        free(e);
        free(der);
        return;
    }
    *e = *proto;
    memcpy(der, proto->der, proto->der_len);
    e->der = der;
    EVP_PKEY_up_ref(e->key);
    pthread_mutex_lock(&v->lock);
    size_t b = bucket_of(e->cert_hash);
    for (cache_entry *o = v->buckets[b]; o; o = o->next_in_bucket) {
        if (!memcmp(o->cert_hash, e->cert_hash, 32) && !memcmp(o->parent_hash, e->parent_hash, 32) &&
            o->is_ca == e->is_ca) {
            pthread_mutex_unlock(&v->lock); /* another thread got there first */
            entry_free(e);
            return;
        }
    }
    while (v->cache_count >= v->cache_max)
        cache_evict_oldest(v);
    e->last_used = ++v->tick;
    e->next_in_bucket = v->buckets[b];
    v->buckets[b] = e;
    v->cache_count++;
    pthread_mutex_unlock(&v->lock);
}

static int check_validity(time_t not_before, time_t not_after, int64_t at, const char *what)
{
    if (at < not_before || at > not_after) {
        char when[32], from[32], to[32];
        cl_format_time(at, when);
        cl_format_time(not_before, from);
        cl_format_time(not_after, to);
        return cl_error_set(CL_EVERIFY, "%s not valid at %s (valid %s to %s)", what, when, from, to);
    }
    return CL_OK;
}

/* Verifies cert (chain position `pos`) against its already-verified parent;
 * fills `entry` (with a key reference the caller drops) from the cache or
 * from a full check. */
static int verify_link(cl_verifier *v, cl_slice der, const uint8_t parent_hash[32], EVP_PKEY *parent_key,
                       const uint8_t *parent_der, size_t parent_len, bool is_ca, const char *what,
                       cache_entry *entry)
{
    uint8_t hash[32];
    CL_TRY(sha256(der.data, der.len, hash));
    if (cache_lookup(v, hash, parent_hash, der.data, der.len, is_ca, entry))
        return CL_OK;

    int rc = CL_OK;
    X509 *cert = NULL, *parent = NULL;
    CL_TRY_OUT(parse_der_cert(der.data, der.len, what, &cert));
    CL_TRY_OUT(check_cert_shape(cert, is_ca, what));
    {
        const unsigned char *p = parent_der;
        parent = d2i_X509(NULL, &p, (long)parent_len);
        CL_ENSURE_OSSL_OUT(parent, CL_ECRYPTO, "cannot re-read the issuer of %s", what);
    }
    int issued = X509_check_issued(parent, cert);
    CL_ENSURE_OUT(issued == X509_V_OK, CL_EVERIFY, "%s is not issued by the next certificate in the chain (%s)",
                  what, X509_verify_cert_error_string(issued));
    CL_ENSURE_OSSL_OUT(X509_verify(cert, parent_key) == 1, CL_EVERIFY,
                       "%s: signature by its issuer does not verify", what);
    memset(entry, 0, sizeof *entry);
    memcpy(entry->cert_hash, hash, 32);
    memcpy(entry->parent_hash, parent_hash, 32);
    CL_TRY_OUT(asn1_time_to_unix(X509_get0_notBefore(cert), &entry->not_before));
    CL_TRY_OUT(asn1_time_to_unix(X509_get0_notAfter(cert), &entry->not_after));
    entry->path_len = X509_get_pathlen(cert);
    entry->is_ca = is_ca;
    entry->key = X509_get0_pubkey(cert);
    entry->der = (uint8_t *)der.data;
    entry->der_len = der.len;
    cache_insert(v, entry);
    entry->der = NULL;
    EVP_PKEY_up_ref(entry->key);
out:
    ERR_clear_error();
    X509_free(cert);
    X509_free(parent);
    return rc;
}

int cl_verifier_verify(cl_verifier *v, const cl_attestation_doc *doc, uint64_t at_ms)
{
    int rc = CL_OK;
    int64_t at = (int64_t)(at_ms / 1000);
    size_t n = doc->cabundle_len;
    CL_ENSURE(n >= 1, CL_EVERIFY, "cabundle is empty");
    cl_slice root_der = doc->cabundle[0];
    uint8_t root_hash[32];
    CL_TRY(sha256(root_der.data, root_der.len, root_hash));
    const trusted_root *root = NULL;
    pthread_mutex_lock(&v->lock);
    for (size_t i = 0; i < v->root_count; i++)
        if (v->roots[i].der_len == root_der.len && !memcmp(v->roots[i].der, root_der.data, root_der.len))
            root = &v->roots[i];
    pthread_mutex_unlock(&v->lock);
    CL_ENSURE(root, CL_EVERIFY, "cabundle[0] is not a trusted root");
    CL_TRY(check_validity(root->not_before, root->not_after, at, "certificate cabundle[0] (root)"));

    /* Walk down from the root: cabundle[1..n-1], then the leaf. */
    EVP_PKEY *parent_key = root->key;
    EVP_PKEY_up_ref(parent_key);
    const uint8_t *parent_der = root->der;
    size_t parent_len = root->der_len;
    uint8_t parent_hash[32];
    memcpy(parent_hash, root_hash, 32);
    /* How many more intermediate CAs the path may hold. */
    long cas_allowed = root->path_len < 0 ? LONG_MAX : root->path_len;
    for (size_t pos = 1; pos <= n; pos++) {
        bool is_leaf = pos == n;
        cl_slice der = is_leaf ? doc->certificate : doc->cabundle[pos];
        char what[48];
        if (is_leaf)
            snprintf(what, sizeof what, "certificate (the signing certificate)");
        else
            snprintf(what, sizeof what, "certificate cabundle[%zu]", pos);
        cache_entry entry;
        rc = verify_link(v, der, parent_hash, parent_key, parent_der, parent_len, !is_leaf, what, &entry);
        EVP_PKEY_free(parent_key);
        parent_key = NULL;
        if (rc < 0)
            return rc;
        parent_key = entry.key;
        rc = check_validity(entry.not_before, entry.not_after, at, what);
        if (rc == CL_OK && !is_leaf) {
            if (cas_allowed == 0)
                rc = cl_error_set(CL_EVERIFY, "%s exceeds the path length allowed by its issuers", what);
            cas_allowed--;
            if (entry.path_len >= 0 && entry.path_len < cas_allowed)
                cas_allowed = entry.path_len;
        }
        if (rc < 0)
            break;
        parent_der = der.data;
        parent_len = der.len;
        memcpy(parent_hash, entry.cert_hash, 32);
    }
    if (rc == CL_OK)
        rc = cl_cose_sign1_verify(&doc->cose, parent_key);
    EVP_PKEY_free(parent_key);
    return rc;
}

/* ---- policy ---------------------------------------------------------- */

int cl_verifier_new_with_roots(const char *const *pem_paths, size_t count, cl_verifier **out)
{
    *out = NULL;
    cl_verifier *v = NULL;
    CL_TRY(cl_verifier_new(count == 0, &v));
    for (size_t i = 0; i < count; i++) {
        int rc = cl_verifier_add_root_pem_file(v, pem_paths[i]);
        if (rc < 0) {
            cl_verifier_free(v);
            return cl_error_prefix(rc, "--root %s: ", pem_paths[i]);
        }
    }
    *out = v;
    return CL_OK;
}

int cl_attestation_policy_add_pcr(cl_attestation_policy *policy, const char *arg)
{
    const char *eq = strchr(arg, '=');
    CL_ENSURE(eq, CL_EINVAL, "--pcr takes N=HEX, got '%s'", arg);
    char index_text[8];
    size_t n = (size_t)(eq - arg);
    CL_ENSURE(n > 0 && n < sizeof index_text, CL_EINVAL, "--pcr: bad PCR index in '%s'", arg);
    memcpy(index_text, arg, n);
    index_text[n] = '\0';
    uint64_t index;
    int rc = cl_parse_u64(index_text, CL_PCR_COUNT - 1, &index);
    if (rc < 0)
        return cl_error_prefix(rc, "--pcr %s: ", index_text);
    cl_buf value = CL_BUF_INIT;
    rc = cl_hex_decode(eq + 1, &value);
    if (rc < 0)
        rc = cl_error_prefix(rc, "--pcr %llu: ", (unsigned long long)index);
    else if (value.len != 32 && value.len != 48 && value.len != 64)
        rc = cl_error_set(CL_EINVAL, "--pcr %llu: value is %zu bytes, must be 32, 48 or 64",
                          (unsigned long long)index, value.len);
    if (rc == CL_OK) {
        memcpy(policy->pcr_values[index], value.data, value.len);
        policy->pcr_lens[index] = value.len;
        policy->pcr_mask |= 1u << index;
    }
    cl_buf_free(&value);
    return rc;
}

int cl_attestation_check_policy(const cl_attestation_doc *doc, const cl_attestation_policy *policy,
                                uint64_t at_ms)
{
    if (!policy->allow_debug && cl_attestation_is_debug(doc))
        return cl_error_set(CL_EVERIFY, "debug-mode enclave (PCR0 is all zero) and debug documents are not allowed");
    for (unsigned i = 0; i < CL_PCR_COUNT; i++) {
        if (!(policy->pcr_mask & (1u << i)))
            continue;
        CL_ENSURE(doc->pcr_present & (1u << i), CL_EVERIFY, "PCR%u is not in the document", i);
        CL_ENSURE(doc->pcrs[i].len == policy->pcr_lens[i] &&
                      !memcmp(doc->pcrs[i].data, policy->pcr_values[i], policy->pcr_lens[i]),
                  CL_EVERIFY, "PCR%u does not match the expected value", i);
    }
    if (policy->check_nonce) {
        CL_ENSURE(doc->has_nonce, CL_EVERIFY, "the document carries no nonce");
        CL_ENSURE(doc->nonce.len == policy->nonce_len &&
                      (policy->nonce_len == 0 || !memcmp(doc->nonce.data, policy->nonce, policy->nonce_len)),
                  CL_EVERIFY, "nonce does not match");
    }
    if (policy->max_age_ms) {
        CL_ENSURE(doc->timestamp_ms <= at_ms + FUTURE_SKEW_MS, CL_EVERIFY,
                  "timestamp is %llu s in the future", (unsigned long long)((doc->timestamp_ms - at_ms) / 1000));
        if (doc->timestamp_ms < at_ms && at_ms - doc->timestamp_ms > policy->max_age_ms)
            return cl_error_set(CL_EVERIFY, "document is %llu s old, more than the allowed %llu s",
                                (unsigned long long)((at_ms - doc->timestamp_ms) / 1000),
                                (unsigned long long)(policy->max_age_ms / 1000));
    }
    return CL_OK;
}

int cl_attestation_verify(cl_verifier *v, const uint8_t *data, size_t len, const cl_attestation_policy *policy,
                          uint64_t at_ms, cl_attestation_doc *doc_out)
{
    cl_attestation_doc doc;
    CL_TRY(cl_attestation_parse(data, len, &doc));
    int rc = cl_verifier_verify(v, &doc, at_ms);
    if (rc == CL_OK && policy)
        rc = cl_attestation_check_policy(&doc, policy, at_ms);
    if (rc == CL_OK && doc_out)
        *doc_out = doc;
    else
        cl_attestation_doc_free(&doc);
    return rc;
}

/* Test-only certificate chains and documents built from scratch, so that
 * each rule of the verifier can be broken on purpose. */
#ifndef CLOISTER_TEST_CHAIN_H
#define CLOISTER_TEST_CHAIN_H

#include "cloister/core/attestation.h"
#include "cloister/core/cbor.h"
#include "cloister/core/cose.h"

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdbool.h>
#include <string.h>

typedef struct cert_spec {
    const char *cn;
    const char *basic_constraints; /* e.g. "critical,CA:TRUE,pathlen:2"; NULL: none */
    const char *key_usage;         /* e.g. "critical,keyCertSign"; NULL: none */
    const char *extra_nid_value;   /* an extra extension, "critical,..." for nid extra_nid */
    int extra_nid;
    int64_t not_before, not_after; /* unix seconds */
    const EVP_MD *md;              /* NULL: SHA-384 */
} cert_spec;

static inline EVP_PKEY *test_key(const char *curve)
{
    return EVP_PKEY_Q_keygen(NULL, NULL, "EC", curve);
}

static inline int add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, issuer ? issuer : cert, cert, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (!ext)
        return 0;
    int ok = X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    return ok;
}

/* issuer == NULL: self-signed with key. */
static inline X509 *test_cert(const cert_spec *spec, EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key)
{
    X509 *cert = X509_new();
    static long serial = 1;
    X509_set_version(cert, X509_VERSION_3);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), serial++);
    X509_NAME *name = X509_NAME_new();
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)spec->cn, -1, -1, 0);
    X509_set_subject_name(cert, name);
    X509_NAME_free(name);
    X509_set_issuer_name(cert, issuer ? X509_get_subject_name(issuer) : X509_get_subject_name(cert));
    ASN1_TIME_set(X509_getm_notBefore(cert), (time_t)spec->not_before);
    ASN1_TIME_set(X509_getm_notAfter(cert), (time_t)spec->not_after);
    X509_set_pubkey(cert, key);
    if (spec->basic_constraints)
        add_ext(cert, issuer, NID_basic_constraints, spec->basic_constraints);
    if (spec->key_usage)
        add_ext(cert, issuer, NID_key_usage, spec->key_usage);
    add_ext(cert, issuer, NID_subject_key_identifier, "hash");
    if (issuer)
        add_ext(cert, issuer, NID_authority_key_identifier, "keyid:always");
    if (spec->extra_nid_value)
        add_ext(cert, issuer, spec->extra_nid, spec->extra_nid_value);
    X509_sign(cert, issuer ? issuer_key : key, spec->md ? spec->md : EVP_sha384());
    return cert;
}

static inline size_t cert_der(X509 *cert, uint8_t *out, size_t cap)
{
    int n = i2d_X509(cert, NULL);
    if (n <= 0 || (size_t)n > cap)
        return 0;
    unsigned char *p = out;
    i2d_X509(cert, &p);
    return (size_t)n;
}

typedef struct doc_spec {
    uint64_t timestamp_ms;
    bool indefinite_map; /* top-level payload map as 0xbf ... 0xff */
    bool tagged;         /* COSE_Sign1 under tag 18 */
    uint8_t pcr0_fill;   /* PCR0 = 48 bytes of this value */
    const uint8_t *nonce;
    size_t nonce_len;
} doc_spec;

/* chain[0] is the root ... chain[n-1] the last intermediate. */
static inline int test_document(const doc_spec *spec, EVP_PKEY *leaf_key, X509 *leaf, X509 **chain, size_t n,
                                cl_buf *out)
{
    cl_buf payload = CL_BUF_INIT;
    uint8_t der[2048];
    size_t len;
    int rc = 0;
    rc |= spec->indefinite_map ? cl_buf_append_u8(&payload, 0xbf) : cl_cbor_put_map(&payload, 9);
    rc |= cl_cbor_put_text(&payload, "module_id");
    rc |= cl_cbor_put_text(&payload, "i-0123456789abcdef0-enc0123456789abcdef");
    rc |= cl_cbor_put_text(&payload, "digest");
    rc |= cl_cbor_put_text(&payload, "SHA384");
    rc |= cl_cbor_put_text(&payload, "timestamp");
    rc |= cl_cbor_put_uint(&payload, spec->timestamp_ms);
    rc |= cl_cbor_put_text(&payload, "pcrs");
    rc |= cl_cbor_put_map(&payload, 16);
    for (unsigned i = 0; i < 16; i++) {
        uint8_t pcr[48];
        memset(pcr, i == 0 ? spec->pcr0_fill : (int)i, sizeof pcr);
        rc |= cl_cbor_put_uint(&payload, i);
        rc |= cl_cbor_put_bytes(&payload, pcr, sizeof pcr);
    }
    rc |= cl_cbor_put_text(&payload, "certificate");
    len = cert_der(leaf, der, sizeof der);
    rc |= cl_cbor_put_bytes(&payload, der, len);
    rc |= cl_cbor_put_text(&payload, "cabundle");
    rc |= cl_cbor_put_array(&payload, n);
    for (size_t i = 0; i < n; i++) {
        len = cert_der(chain[i], der, sizeof der);
        rc |= cl_cbor_put_bytes(&payload, der, len);
    }
    rc |= cl_cbor_put_text(&payload, "public_key");
    rc |= cl_cbor_put_null(&payload);
    rc |= cl_cbor_put_text(&payload, "user_data");
    rc |= cl_cbor_put_null(&payload);
    rc |= cl_cbor_put_text(&payload, "nonce");
    rc |= cl_cbor_put_opt_bytes(&payload, spec->nonce, spec->nonce_len);
    if (spec->indefinite_map)
        rc |= cl_buf_append_u8(&payload, 0xff);
    if (spec->tagged)
        rc |= cl_cbor_put_tag(out, 18);
    rc |= cl_cose_sign1_sign(leaf_key, payload.data, payload.len, out);
    cl_buf_free(&payload);
    return rc;
}

#endif

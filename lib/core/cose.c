#include "cloister/core/cose.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <string.h>

#define ES384_COMPONENT_LEN 48
#define COSE_HEADER_ALG 1
#define COSE_HEADER_CRIT 2

static const cl_cbor_limits cose_limits = {.max_depth = 4, .max_map_entries = 64};
static const cl_cbor_limits header_limits = {.max_depth = 2, .max_map_entries = 64};

static int check_protected_header(cl_slice hdr)
{
    if (hdr.len == 0)
        return cl_error_set(CL_EVERIFY, "COSE: empty protected header (algorithm ES384 required)");
    cl_cbor_doc doc;
    CL_TRY(cl_cbor_decode(hdr.data, hdr.len, &header_limits, &doc));
    int rc = CL_OK;
    const cl_cbor *map = doc.root;
    bool have_alg = false;
    CL_ENSURE_OUT(map->type == CL_CBOR_MAP, CL_EPARSE, "COSE: protected header is a %s, not a map",
                  cl_cbor_type_name(map->type));
    for (const cl_cbor *k = map->child; k; k = k->next->next) {
        const cl_cbor *v = k->next;
        if (k->type == CL_CBOR_UINT && k->u == COSE_HEADER_ALG) {
            CL_ENSURE_OUT(v->type == CL_CBOR_NINT && v->u == (uint64_t)(-1 - CL_COSE_ALG_ES384),
                          CL_EVERIFY, "COSE: algorithm is not ES384 (-35)");
            have_alg = true;
        } else if (k->type == CL_CBOR_UINT && k->u == COSE_HEADER_CRIT) {
            CL_FAIL_OUT(CL_EVERIFY, "COSE: critical header parameters are not supported");
        }
    }
    CL_ENSURE_OUT(have_alg, CL_EVERIFY, "COSE: protected header names no algorithm");
out:
    cl_cbor_doc_free(&doc);
    return rc;
}

int cl_cose_sign1_decode(const uint8_t *data, size_t len, cl_cose_sign1 *out)
{
    memset(out, 0, sizeof *out);
    int rc = CL_OK;
    CL_TRY(cl_cbor_decode(data, len, &cose_limits, &out->cbor));
    const cl_cbor *root = out->cbor.root;
    if (root->type == CL_CBOR_TAG) {
        CL_ENSURE_OUT(root->u == CL_COSE_TAG_SIGN1, CL_EPARSE, "COSE: tag %llu is not COSE_Sign1 (18)",
                      (unsigned long long)root->u);
        root = root->child;
    }
    CL_ENSURE_OUT(root->type == CL_CBOR_ARRAY && root->u == 4, CL_EPARSE,
                  "COSE: COSE_Sign1 must be an array of 4 items");
    const cl_cbor *prot = root->child, *unprot = prot->next, *payload = unprot->next,
                  *sig = payload->next;
    CL_ENSURE_OUT(prot->type == CL_CBOR_BYTES, CL_EPARSE, "COSE: protected header is a %s, not a byte string",
                  cl_cbor_type_name(prot->type));
    CL_ENSURE_OUT(unprot->type == CL_CBOR_MAP, CL_EPARSE, "COSE: unprotected header is a %s, not a map",
                  cl_cbor_type_name(unprot->type));
    CL_ENSURE_OUT(payload->type == CL_CBOR_BYTES, CL_EPARSE, "COSE: payload is a %s, not a byte string",
                  cl_cbor_type_name(payload->type));
    CL_ENSURE_OUT(sig->type == CL_CBOR_BYTES, CL_EPARSE, "COSE: signature is a %s, not a byte string",
                  cl_cbor_type_name(sig->type));
    CL_ENSURE_OUT(sig->len == CL_COSE_ES384_SIG_LEN, CL_EPARSE,
                  "COSE: signature is %zu bytes, ES384 needs %d", sig->len, CL_COSE_ES384_SIG_LEN);
    out->protected_header = (cl_slice){prot->data, prot->len};
    out->payload = (cl_slice){payload->data, payload->len};
    out->signature = (cl_slice){sig->data, sig->len};
    CL_TRY_OUT(check_protected_header(out->protected_header));
out:
    if (rc < 0)
        cl_cose_sign1_free(out);
    return rc;
}

void cl_cose_sign1_free(cl_cose_sign1 *msg)
{
    cl_cbor_doc_free(&msg->cbor);
}

/* The Sig_structure is hashed piecewise so the payload is never copied:
 * this encodes everything before the payload's content. */
static int sig_structure_prefix(cl_slice protected_header, size_t payload_len, cl_buf *prefix)
{
    CL_TRY(cl_cbor_put_array(prefix, 4));
    CL_TRY(cl_cbor_put_text(prefix, "Signature1"));
    CL_TRY(cl_cbor_put_bytes(prefix, protected_header.data, protected_header.len));
    CL_TRY(cl_cbor_put_bytes(prefix, NULL, 0)); /* external_aad */
    return cl_cbor_put_bytes_head(prefix, payload_len);
}

static bool is_p384(EVP_PKEY *key)
{
    char group[64];
    size_t glen = 0;
    if (EVP_PKEY_get_base_id(key) != EVP_PKEY_EC)
        return false;
    if (!EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, &glen))
        return false;
    return strcmp(group, "secp384r1") == 0;
}

int cl_cose_sign1_verify(const cl_cose_sign1 *msg, EVP_PKEY *key)
{
    int rc = CL_OK;
    cl_buf prefix = CL_BUF_INIT;
    EVP_MD_CTX *md = NULL;
    ECDSA_SIG *sig = NULL;
    BIGNUM *r = NULL, *s = NULL;
    unsigned char *der = NULL;

    CL_ENSURE_OUT(is_p384(key), CL_EVERIFY, "COSE: signing key is not a P-384 EC key");
    CL_ENSURE_OUT(msg->signature.len == CL_COSE_ES384_SIG_LEN, CL_EVERIFY, "COSE: bad signature length");
    r = BN_bin2bn(msg->signature.data, ES384_COMPONENT_LEN, NULL);
    s = BN_bin2bn(msg->signature.data + ES384_COMPONENT_LEN, ES384_COMPONENT_LEN, NULL);
    sig = ECDSA_SIG_new();
    CL_ENSURE_OUT(r && s && sig, CL_ENOMEM, "out of memory");
    CL_ENSURE_OSSL_OUT(ECDSA_SIG_set0(sig, r, s) == 1, CL_ECRYPTO, "ECDSA_SIG_set0 failed");
    r = s = NULL;
    int der_len = i2d_ECDSA_SIG(sig, &der);
    CL_ENSURE_OSSL_OUT(der_len > 0, CL_ECRYPTO, "cannot encode the ECDSA signature");

    CL_TRY_OUT(sig_structure_prefix(msg->protected_header, msg->payload.len, &prefix));
    md = EVP_MD_CTX_new();
    CL_ENSURE_OUT(md, CL_ENOMEM, "out of memory");
    if (EVP_DigestVerifyInit_ex(md, NULL, "SHA384", NULL, NULL, key, NULL) != 1 ||
        EVP_DigestVerifyUpdate(md, prefix.data, prefix.len) != 1 ||
        EVP_DigestVerifyUpdate(md, msg->payload.data, msg->payload.len) != 1)
        CL_OSSL_OUT(CL_ECRYPTO, "COSE: cannot hash the Sig_structure");
    int ok = EVP_DigestVerifyFinal(md, der, (size_t)der_len);
    ERR_clear_error();
    CL_ENSURE_OUT(ok == 1, CL_EVERIFY, "COSE signature does not verify with the leaf certificate's key");
out:
    OPENSSL_free(der);
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(sig);
    EVP_MD_CTX_free(md);
    cl_buf_free(&prefix);
    return rc;
}

int cl_cose_sign1_sign(EVP_PKEY *key, const uint8_t *payload, size_t payload_len, cl_buf *out)
{
    static const uint8_t protected_es384[] = {0xa1, 0x01, 0x38, 0x22}; /* {1: -35} */
    int rc = CL_OK;
    cl_buf prefix = CL_BUF_INIT;
    EVP_MD_CTX *md = NULL;
    unsigned char *der = NULL;
    ECDSA_SIG *sig = NULL;
    uint8_t raw[CL_COSE_ES384_SIG_LEN];

    CL_ENSURE_OUT(is_p384(key), CL_EINVAL, "COSE: signing key is not a P-384 EC key");
    cl_slice prot = {protected_es384, sizeof protected_es384};
    CL_TRY_OUT(sig_structure_prefix(prot, payload_len, &prefix));
    md = EVP_MD_CTX_new();
    CL_ENSURE_OUT(md, CL_ENOMEM, "out of memory");
    size_t der_len = 0;
    if (EVP_DigestSignInit_ex(md, NULL, "SHA384", NULL, NULL, key, NULL) != 1 ||
        EVP_DigestSignUpdate(md, prefix.data, prefix.len) != 1 ||
        EVP_DigestSignUpdate(md, payload, payload_len) != 1 ||
        EVP_DigestSignFinal(md, NULL, &der_len) != 1)
        CL_OSSL_OUT(CL_ECRYPTO, "COSE: signing failed");
    der = OPENSSL_malloc(der_len);
    CL_ENSURE_OUT(der, CL_ENOMEM, "out of memory");
    if (EVP_DigestSignFinal(md, der, &der_len) != 1)
        CL_OSSL_OUT(CL_ECRYPTO, "COSE: signing failed");
    const unsigned char *p = der;
    sig = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
    CL_ENSURE_OSSL_OUT(sig, CL_ECRYPTO, "COSE: cannot decode the ECDSA signature");
    const BIGNUM *r, *s;
    ECDSA_SIG_get0(sig, &r, &s);
    CL_ENSURE_OSSL_OUT(BN_bn2binpad(r, raw, ES384_COMPONENT_LEN) == ES384_COMPONENT_LEN &&
                      BN_bn2binpad(s, raw + ES384_COMPONENT_LEN, ES384_COMPONENT_LEN) == ES384_COMPONENT_LEN,
                  CL_ECRYPTO, "COSE: signature component too large");

    CL_TRY_OUT(cl_cbor_put_array(out, 4));
    CL_TRY_OUT(cl_cbor_put_bytes(out, protected_es384, sizeof protected_es384));
    CL_TRY_OUT(cl_cbor_put_map(out, 0));
    CL_TRY_OUT(cl_cbor_put_bytes(out, payload, payload_len));
    CL_TRY_OUT(cl_cbor_put_bytes(out, raw, sizeof raw));
out:
    OPENSSL_free(der);
    ECDSA_SIG_free(sig);
    EVP_MD_CTX_free(md);
    cl_buf_free(&prefix);
    return rc;
}

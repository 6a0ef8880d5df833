/* The ACME client's cryptography: ES256 JWS with the account key, JWK
 * thumbprints and key authorizations, the CSR signed by the certificate key
 * the enclave made, RFC 8737's validation certificate, and the check of an
 * issued chain before it is served. */
#include "cloister/enclave/acme.h"

#include "cloister/core/encoding.h"

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define MAX_CHAIN 10

int cl_base64url_encode(const uint8_t *data, size_t len, cl_buf *out)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    *out = (cl_buf)CL_BUF_INIT;
    CL_TRY(cl_buf_reserve(out, (len + 2) / 3 * 4 + 1));
    size_t i = 0;
    char *p = (char *)out->data;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8 | data[i + 2];
        *p++ = abc[v >> 18 & 63], *p++ = abc[v >> 12 & 63], *p++ = abc[v >> 6 & 63], *p++ = abc[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)data[i] << 16;
        *p++ = abc[v >> 18 & 63], *p++ = abc[v >> 12 & 63];
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8;
        *p++ = abc[v >> 18 & 63], *p++ = abc[v >> 12 & 63], *p++ = abc[v >> 6 & 63];
    }
    *p = '\0';
    out->len = (size_t)(p - (char *)out->data);
    return CL_OK;
}

int cl_acme_new_key(EVP_PKEY **out)
{
    *out = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    CL_ENSURE_OSSL(*out, CL_ECRYPTO, "cannot generate a P-256 key");
    return CL_OK;
}

/* x and y, 32 bytes each, base64url */
static int jwk_coordinates(EVP_PKEY *key, char x[44], char y[44])
{
    int rc = CL_OK;
    BIGNUM *bx = NULL, *by = NULL;
    cl_buf bxs = CL_BUF_INIT, bys = CL_BUF_INIT;
    char group[32] = "";
    CL_ENSURE_OSSL_OUT(EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, NULL) == 1 &&
                           !strcmp(group, "prime256v1"),
                       CL_EINVAL, "the ACME account key is not a P-256 key");
    CL_ENSURE_OSSL_OUT(EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_EC_PUB_X, &bx) == 1 &&
                           EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_EC_PUB_Y, &by) == 1,
                       CL_ECRYPTO, "cannot read the account key's coordinates");
    uint8_t raw[32];
    CL_ENSURE_OSSL_OUT(BN_bn2binpad(bx, raw, 32) == 32, CL_ECRYPTO, "bad x coordinate");
    CL_TRY_OUT(cl_base64url_encode(raw, 32, &bxs));
    CL_ENSURE_OSSL_OUT(BN_bn2binpad(by, raw, 32) == 32, CL_ECRYPTO, "bad y coordinate");
    CL_TRY_OUT(cl_base64url_encode(raw, 32, &bys));
    memcpy(x, bxs.data, 44);
    memcpy(y, bys.data, 44);
out:
    BN_free(bx);
    BN_free(by);
    cl_buf_free(&bxs);
    cl_buf_free(&bys);
    return rc;
}

/* RFC 7638: the required members in lexicographic order, no whitespace;
 * the same text is the jwk header member. */
static int jwk_json(EVP_PKEY *key, char out[160])
{
    char x[44], y[44];
    CL_TRY(jwk_coordinates(key, x, y));
    snprintf(out, 160, "{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"%s\",\"y\":\"%s\"}", x, y);
    return CL_OK;
}

int cl_acme_thumbprint(EVP_PKEY *key, char out[44])
{
    char jwk[160];
    CL_TRY(jwk_json(key, jwk));
    uint8_t d[32];
    CL_ENSURE_OSSL(EVP_Digest(jwk, strlen(jwk), d, NULL, EVP_sha256(), NULL) == 1, CL_ECRYPTO, "SHA-256 failed");
    cl_buf b = CL_BUF_INIT;
    CL_TRY(cl_base64url_encode(d, 32, &b));
    memcpy(out, b.data, 44);
    cl_buf_free(&b);
    return CL_OK;
}

int cl_acme_key_authorization(const char *token, EVP_PKEY *account_key, cl_buf *out)
{
    *out = (cl_buf)CL_BUF_INIT;
    char tp[44];
    CL_TRY(cl_acme_thumbprint(account_key, tp));
    int rc = CL_OK;
    CL_TRY_OUT(cl_buf_append(out, token, strlen(token)));
    CL_TRY_OUT(cl_buf_append(out, ".", 1));
    CL_TRY_OUT(cl_buf_append(out, tp, strlen(tp) + 1));
    out->len--;
out:
    if (rc < 0)
        cl_buf_free(out);
    return rc;
}

/* JSON string escaping for the few values we put into headers ourselves;
 * nonces and URLs come from the CA and were checked, but escaping keeps a
 * hostile value from changing the JSON's structure in any case. */
static int append_json_string(cl_buf *b, const char *s)
{
    CL_TRY(cl_buf_append(b, "\"", 1));
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            char esc[2] = {'\\', (char)ch};
            CL_TRY(cl_buf_append(b, esc, 2));
        } else if (ch < 0x20) {
            char esc[8];
            snprintf(esc, sizeof esc, "\\u%04x", ch);
            CL_TRY(cl_buf_append(b, esc, 6));
        } else {
            CL_TRY(cl_buf_append(b, s, 1));
        }
    }
    return cl_buf_append(b, "\"", 1);
}

static int es256_sign(EVP_PKEY *key, const uint8_t *data, size_t len, uint8_t sig[64])
{
    int rc = CL_OK;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char der[80];
    size_t der_len = sizeof der;
    ECDSA_SIG *s = NULL;
    CL_ENSURE_OSSL_OUT(md && EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
                           EVP_DigestSign(md, der, &der_len, data, len) == 1,
                       CL_ECRYPTO, "ES256 signature failed");
    const unsigned char *p = der;
    s = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
    CL_ENSURE_OSSL_OUT(s, CL_ECRYPTO, "cannot read the ECDSA signature");
    /* JWS wants r || s, each 32 bytes, not DER */
    CL_ENSURE_OSSL_OUT(BN_bn2binpad(ECDSA_SIG_get0_r(s), sig, 32) == 32 &&
                           BN_bn2binpad(ECDSA_SIG_get0_s(s), sig + 32, 32) == 32,
                       CL_ECRYPTO, "bad ECDSA signature size");
out:
    ECDSA_SIG_free(s);
    EVP_MD_CTX_free(md);
    return rc;
}

int cl_acme_jws(EVP_PKEY *account_key, const char *kid, const char *nonce, const char *url, const char *payload,
                cl_buf *out)
{
    *out = (cl_buf)CL_BUF_INIT;
    int rc = CL_OK;
    cl_buf prot = CL_BUF_INIT, prot64 = CL_BUF_INIT, pay64 = CL_BUF_INIT, input = CL_BUF_INIT, sig64 = CL_BUF_INIT;
    CL_TRY_OUT(cl_buf_append(&prot, "{\"alg\":\"ES256\",", 15));
    if (kid) {
        CL_TRY_OUT(cl_buf_append(&prot, "\"kid\":", 6));
        CL_TRY_OUT(append_json_string(&prot, kid));
    } else {
        char jwk[160];
        CL_TRY_OUT(jwk_json(account_key, jwk));
        CL_TRY_OUT(cl_buf_append(&prot, "\"jwk\":", 6));
        CL_TRY_OUT(cl_buf_append(&prot, jwk, strlen(jwk)));
    }
    if (nonce) {
        CL_TRY_OUT(cl_buf_append(&prot, ",\"nonce\":", 9));
        CL_TRY_OUT(append_json_string(&prot, nonce));
    }
    CL_TRY_OUT(cl_buf_append(&prot, ",\"url\":", 7));
    CL_TRY_OUT(append_json_string(&prot, url));
    CL_TRY_OUT(cl_buf_append(&prot, "}", 1));
    CL_TRY_OUT(cl_base64url_encode(prot.data, prot.len, &prot64));
    if (payload)
        CL_TRY_OUT(cl_base64url_encode((const uint8_t *)payload, strlen(payload), &pay64));
    else {
        CL_TRY_OUT(cl_buf_append(&pay64, "", 1));
        pay64.len = 0;
    }
    CL_TRY_OUT(cl_buf_append(&input, prot64.data, prot64.len));
    CL_TRY_OUT(cl_buf_append(&input, ".", 1));
    CL_TRY_OUT(cl_buf_append(&input, pay64.data, pay64.len));
    uint8_t sig[64];
    CL_TRY_OUT(es256_sign(account_key, input.data, input.len, sig));
    CL_TRY_OUT(cl_base64url_encode(sig, 64, &sig64));
    char head[] = "{\"protected\":\"";
    CL_TRY_OUT(cl_buf_append(out, head, strlen(head)));
    CL_TRY_OUT(cl_buf_append(out, prot64.data, prot64.len));
    CL_TRY_OUT(cl_buf_append(out, "\",\"payload\":\"", 13));
    CL_TRY_OUT(cl_buf_append(out, pay64.data, pay64.len));
    CL_TRY_OUT(cl_buf_append(out, "\",\"signature\":\"", 15));
    CL_TRY_OUT(cl_buf_append(out, sig64.data, sig64.len));
    CL_TRY_OUT(cl_buf_append(out, "\"}", 3));
    out->len--;
out:
    cl_buf_free(&prot);
    cl_buf_free(&prot64);
    cl_buf_free(&pay64);
    cl_buf_free(&input);
    cl_buf_free(&sig64);
    if (rc < 0)
        cl_buf_free(out);
    return rc;
}

static int check_fqdn(const char *fqdn)
{
    size_t n = fqdn ? strlen(fqdn) : 0;
    CL_ENSURE(n >= 1 && n <= 253, CL_EINVAL, "an ACME name needs 1..253 characters");
    for (const char *p = fqdn; *p; p++)
        CL_ENSURE((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-' ||
                      *p == '.',
                  CL_EINVAL, "invalid character in the ACME name '%s'", fqdn);
    return CL_OK;
}

static int add_san(X509 *cert, const char *fqdn)
{
    int rc = CL_OK;
    GENERAL_NAMES *names = GENERAL_NAMES_new();
    GENERAL_NAME *gn = GENERAL_NAME_new();
    ASN1_IA5STRING *ia5 = ASN1_IA5STRING_new();
    CL_ENSURE_OSSL_OUT(names && gn && ia5 && ASN1_STRING_set(ia5, fqdn, (int)strlen(fqdn)) == 1, CL_ENOMEM,
                       "out of memory");
    GENERAL_NAME_set0_value(gn, GEN_DNS, ia5);
    ia5 = NULL;
    CL_ENSURE_OSSL_OUT(sk_GENERAL_NAME_push(names, gn) > 0, CL_ENOMEM, "out of memory");
    gn = NULL;
    CL_ENSURE_OSSL_OUT(X509_add1_ext_i2d(cert, NID_subject_alt_name, names, 0, 0) == 1, CL_ECRYPTO,
                       "cannot add subjectAltName");
out:
    ASN1_IA5STRING_free(ia5);
    GENERAL_NAME_free(gn);
    GENERAL_NAMES_free(names);
    return rc;
}

int cl_acme_csr(EVP_PKEY *key, const char *fqdn, cl_buf *der)
{
    *der = (cl_buf)CL_BUF_INIT;
    CL_TRY(check_fqdn(fqdn));
    int rc = CL_OK;
    X509_REQ *req = X509_REQ_new();
    STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
    unsigned char *p = NULL;
    CL_ENSURE_OSSL_OUT(req && exts, CL_ENOMEM, "out of memory");
    CL_ENSURE_OSSL_OUT(X509_REQ_set_version(req, 0) == 1 && X509_REQ_set_pubkey(req, key) == 1, CL_ECRYPTO,
                       "cannot make a CSR");
    if (strlen(fqdn) <= 64) /* ub-common-name */
        CL_ENSURE_OSSL_OUT(X509_NAME_add_entry_by_txt(X509_REQ_get_subject_name(req), "CN", MBSTRING_ASC,
                                                      (const unsigned char *)fqdn, -1, -1, 0) == 1,
                           CL_ECRYPTO, "cannot name the CSR");
    {
        GENERAL_NAMES *names = GENERAL_NAMES_new();
        GENERAL_NAME *gn = GENERAL_NAME_new();
        ASN1_IA5STRING *ia5 = ASN1_IA5STRING_new();
        bool ok = names && gn && ia5 && ASN1_STRING_set(ia5, fqdn, (int)strlen(fqdn)) == 1;
        if (ok) {
            GENERAL_NAME_set0_value(gn, GEN_DNS, ia5);
            ia5 = NULL;
            ok = sk_GENERAL_NAME_push(names, gn) > 0;
            if (ok)
                gn = NULL;
        }
        ok = ok && X509V3_add1_i2d(&exts, NID_subject_alt_name, names, 0, 0) == 1;
        ASN1_IA5STRING_free(ia5);
        GENERAL_NAME_free(gn);
        GENERAL_NAMES_free(names);
        CL_ENSURE_OSSL_OUT(ok, CL_ECRYPTO, "cannot add subjectAltName to the CSR");
    }
    CL_ENSURE_OSSL_OUT(X509_REQ_add_extensions(req, exts) == 1, CL_ECRYPTO, "cannot add extensions to the CSR");
    CL_ENSURE_OSSL_OUT(X509_REQ_sign(req, key, EVP_sha256()) > 0, CL_ECRYPTO, "cannot sign the CSR");
    int n = i2d_X509_REQ(req, &p);
    CL_ENSURE_OSSL_OUT(n > 0, CL_ECRYPTO, "cannot encode the CSR");
    CL_TRY_OUT(cl_buf_append(der, p, (size_t)n));
out:
    OPENSSL_free(p);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    X509_REQ_free(req);
    return rc;
}

int cl_acme_alpn_certificate(const char *fqdn, const char *key_authorization, X509 **cert_out, EVP_PKEY **key_out)
{
    *cert_out = NULL;
    *key_out = NULL;
    CL_TRY(check_fqdn(fqdn));
    int rc = CL_OK;
    EVP_PKEY *key = NULL;
    X509 *cert = NULL;
    ASN1_OBJECT *obj = NULL;
    ASN1_OCTET_STRING *val = NULL;
    X509_EXTENSION *ext = NULL;
    CL_TRY_OUT(cl_acme_new_key(&key));
    cert = X509_new();
    CL_ENSURE_OSSL_OUT(cert, CL_ENOMEM, "out of memory");
    uint8_t serial[16];
    CL_ENSURE_OSSL_OUT(RAND_bytes(serial, sizeof serial) == 1, CL_ECRYPTO, "no randomness");
    serial[0] &= 0x7f;
    BIGNUM *bn = BN_bin2bn(serial, sizeof serial, NULL);
    bool serial_ok = bn && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert));
    BN_free(bn);
    CL_ENSURE_OSSL_OUT(serial_ok, CL_ECRYPTO, "cannot set a serial number");
    CL_ENSURE_OSSL_OUT(X509_set_version(cert, 2) == 1 && X509_gmtime_adj(X509_getm_notBefore(cert), -3600) &&
                           X509_gmtime_adj(X509_getm_notAfter(cert), 7 * 24 * 3600) && X509_set_pubkey(cert, key) == 1,
                       CL_ECRYPTO, "cannot make the tls-alpn-01 certificate");
    X509_NAME *name = X509_get_subject_name(cert);
    CL_ENSURE_OSSL_OUT(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"acme-tls/1", -1,
                                                  -1, 0) == 1 &&
                           X509_set_issuer_name(cert, name) == 1,
                       CL_ECRYPTO, "cannot name the tls-alpn-01 certificate");
    CL_TRY_OUT(add_san(cert, fqdn));
    /* id-pe-acmeIdentifier: extnValue is the DER of
     * Authorization ::= OCTET STRING (SIZE (32)), i.e. 04 20 || hash */
    uint8_t value[34] = {0x04, 0x20};
    CL_ENSURE_OSSL_OUT(EVP_Digest(key_authorization, strlen(key_authorization), value + 2, NULL, EVP_sha256(), NULL) ==
                           1,
                       CL_ECRYPTO, "SHA-256 failed");
    obj = OBJ_txt2obj("1.3.6.1.5.5.7.1.31", 1);
    val = ASN1_OCTET_STRING_new();
    CL_ENSURE_OSSL_OUT(obj && val && ASN1_OCTET_STRING_set(val, value, sizeof value) == 1, CL_ENOMEM,
                       "out of memory");
    ext = X509_EXTENSION_create_by_OBJ(NULL, obj, 1, val);
    CL_ENSURE_OSSL_OUT(ext && X509_add_ext(cert, ext, -1) == 1, CL_ECRYPTO, "cannot add the acmeIdentifier extension");
    CL_ENSURE_OSSL_OUT(X509_sign(cert, key, EVP_sha256()) > 0, CL_ECRYPTO, "cannot sign the tls-alpn-01 certificate");
    *cert_out = cert;
    *key_out = key;
    cert = NULL;
    key = NULL;
out:
    X509_EXTENSION_free(ext);
    ASN1_OCTET_STRING_free(val);
    ASN1_OBJECT_free(obj);
    X509_free(cert);
    EVP_PKEY_free(key);
    return rc;
}

int cl_acme_check_chain(const uint8_t *pem, size_t len, const char *fqdn, EVP_PKEY *key, X509 **leaf_out,
                        STACK_OF(X509) **rest_out)
{
    *leaf_out = NULL;
    *rest_out = NULL;
    CL_ENSURE(pem && len > 0 && len <= 256 * 1024, CL_EPARSE, "the certificate chain is empty or larger than 256 KiB");
    int rc = CL_OK;
    X509 *leaf = NULL;
    STACK_OF(X509) *rest = sk_X509_new_null();
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    CL_ENSURE_OSSL_OUT(bio && rest, CL_ENOMEM, "out of memory");
    leaf = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    CL_ENSURE_OSSL_OUT(leaf, CL_EPARSE, "the certificate chain has no PEM certificate");
    for (;;) {
        X509 *c = PEM_read_bio_X509(bio, NULL, NULL, NULL);
        if (!c) {
            unsigned long e = ERR_peek_last_error();
            /* the end of the input, not a broken block */
            if (ERR_GET_REASON(e) == PEM_R_NO_START_LINE) {
                ERR_clear_error();
                break;
            }
            CL_OSSL_OUT(CL_EPARSE, "the certificate chain has a malformed certificate");
        }
        if (sk_X509_num(rest) >= MAX_CHAIN || sk_X509_push(rest, c) <= 0) {
            X509_free(c);
            CL_FAIL_OUT(CL_ELIMIT, "the certificate chain has more than %d certificates", MAX_CHAIN + 1);
        }
    }
    CL_ENSURE_OUT(X509_check_host(leaf, fqdn, 0, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS, NULL) == 1, CL_EVERIFY,
                  "the issued certificate does not name %s", fqdn);
    EVP_PKEY *pub = X509_get0_pubkey(leaf);
    CL_ENSURE_OUT(pub && EVP_PKEY_eq(pub, key) == 1, CL_EVERIFY,
                  "the issued certificate does not carry the key the enclave made for it");
    /* each certificate must be signed by the next one: a chain shuffled
     * or padded by whoever relayed it would break clients later */
    X509 *child = leaf;
    for (int i = 0; i < sk_X509_num(rest); i++) {
        X509 *parent = sk_X509_value(rest, i);
        EVP_PKEY *pk = X509_get0_pubkey(parent);
        CL_ENSURE_OUT(pk && X509_verify(child, pk) == 1, CL_EVERIFY,
                      "certificate %d of the chain is not signed by the next one", i);
        child = parent;
    }
    *leaf_out = leaf;
    *rest_out = rest;
    leaf = NULL;
    rest = NULL;
out:
    ERR_clear_error();
    BIO_free(bio);
    X509_free(leaf);
    sk_X509_pop_free(rest, X509_free);
    return rc;
}

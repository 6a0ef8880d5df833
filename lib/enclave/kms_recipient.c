/* The Recipient: an RSA-2048 session key whose public half rides in an
 * attestation document, and the opening of KMS's CiphertextForRecipient
 * (CMS EnvelopedData) with it.
 *
 * The envelope is read twice: once strictly by the schema below through
 * the cursor (only KMS's shape is accepted, every field checked), and once
 * by OpenSSL's CMS, which does the decryption; the two readings must agree
 * on the recipient and the encrypted key before anything is decrypted. */
#include "cloister/enclave/kms.h"

#include "cloister/core/cursor.h"

#include <openssl/bio.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <string.h>

/* ---- a strict BER reader over the cursor -------------------------------- */

#define TAG_INTEGER 0x02
#define TAG_OCTET_STRING 0x04
#define TAG_NULL 0x05
#define TAG_OID 0x06
#define TAG_SEQUENCE 0x30
#define TAG_SET 0x31
#define TAG_CTX0_CONS 0xa0
#define TAG_CTX1_CONS 0xa1
#define TAG_CTX2_CONS 0xa2
#define TAG_CTX0_PRIM 0x80

/* One element: its tag byte and a cursor over its contents.  For an
 * indefinite length the contents cursor runs to the end of the parent and
 * ber_close finds the end-of-contents octets. */
typedef struct ber {
    uint8_t tag;
    bool indefinite;
    size_t start; /* parent position of the contents */
    cl_cursor body;
} ber;

static int ber_open(cl_cursor *c, uint8_t want, ber *out, const char *what)
{
    uint8_t tag, l0;
    if (cl_cursor_u8(c, &tag) < 0)
        return cl_error_set(CL_EPARSE, "%s: truncated (no tag)", what);
    if (tag != want)
        return cl_error_set(CL_EPARSE, "%s: tag 0x%02x, expected 0x%02x", what, tag, want);
    if (cl_cursor_u8(c, &l0) < 0)
        return cl_error_set(CL_EPARSE, "%s: truncated (no length)", what);
    out->tag = tag;
    out->indefinite = false;
    if (l0 == 0x80) {
        if (!(tag & 0x20))
            return cl_error_set(CL_EPARSE, "%s: indefinite length on a primitive element", what);
        out->indefinite = true;
        out->start = c->pos;
        out->body = cl_cursor_make(c->data + c->pos, c->len - c->pos);
        return CL_OK;
    }
    size_t len = l0;
    if (l0 & 0x80) {
        size_t n = l0 & 0x7f;
        if (n == 0 || n > 4)
            return cl_error_set(CL_EPARSE, "%s: length of %zu bytes", what, n);
        len = 0;
        for (size_t i = 0; i < n; i++) {
            uint8_t b;
            if (cl_cursor_u8(c, &b) < 0)
                return cl_error_set(CL_EPARSE, "%s: truncated length", what);
            len = (len << 8) | b;
        }
    }
    const uint8_t *p;
    if (cl_cursor_bytes(c, len, &p) < 0)
        return cl_error_set(CL_EPARSE, "%s: length %zu exceeds the %zu bytes left", what, len,
                            cl_cursor_remaining(c));
    out->start = (size_t)(p - c->data);
    out->body = cl_cursor_make(p, len);
    return CL_OK;
}

/* The element must be used up; for an indefinite length, the end of
 * contents follows and the parent moves past it. */
static int ber_close(cl_cursor *c, ber *b, const char *what)
{
    if (!b->indefinite) {
        if (!cl_cursor_at_end(&b->body))
            return cl_error_set(CL_EPARSE, "%s: %zu unexpected bytes at its end", what, cl_cursor_remaining(&b->body));
        return CL_OK;
    }
    const uint8_t *eoc;
    if (cl_cursor_bytes(&b->body, 2, &eoc) < 0 || eoc[0] || eoc[1])
        return cl_error_set(CL_EPARSE, "%s: unexpected element where its end-of-contents should be", what);
    c->pos = b->start + b->body.pos;
    return CL_OK;
}

static bool ber_next_is(const cl_cursor *c, uint8_t tag)
{
    uint8_t t;
    return cl_cursor_peek_u8(c, &t) == 0 && t == tag;
}

/* A primitive element's bytes. */
static int ber_primitive(cl_cursor *c, uint8_t tag, cl_slice *out, const char *what)
{
    ber b;
    CL_TRY(ber_open(c, tag, &b, what));
    out->data = b.body.data;
    out->len = b.body.len;
    return CL_OK;
}

static int ber_small_int(cl_cursor *c, int *out, const char *what)
{
    cl_slice v;
    CL_TRY(ber_primitive(c, TAG_INTEGER, &v, what));
    CL_ENSURE(v.len == 1 && v.data[0] < 0x80, CL_EPARSE, "%s: not a small non-negative integer", what);
    *out = v.data[0];
    return CL_OK;
}

static int ber_expect_oid(cl_cursor *c, const uint8_t *oid, size_t oid_len, const char *what, const char *name)
{
    cl_slice v;
    CL_TRY(ber_primitive(c, TAG_OID, &v, what));
    CL_ENSURE(v.len == oid_len && !memcmp(v.data, oid, oid_len), CL_EVERIFY, "%s is not %s", what, name);
    return CL_OK;
}

static int ber_null(cl_cursor *c, const char *what)
{
    cl_slice v;
    CL_TRY(ber_primitive(c, TAG_NULL, &v, what));
    CL_ENSURE(v.len == 0, CL_EPARSE, "%s: NULL with contents", what);
    return CL_OK;
}

static const uint8_t OID_ENVELOPED_DATA[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03};
static const uint8_t OID_DATA[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01};
static const uint8_t OID_RSAES_OAEP[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x07};
static const uint8_t OID_MGF1[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08};
static const uint8_t OID_PSPECIFIED[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x09};
static const uint8_t OID_SHA256[] = {0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01};
static const uint8_t OID_AES256_CBC[] = {0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a};
#define OID(x) x, sizeof x

/* AlgorithmIdentifier { sha256, NULL or absent } */
static int parse_sha256_alg(cl_cursor *c, const char *what)
{
    ber seq;
    CL_TRY(ber_open(c, TAG_SEQUENCE, &seq, what));
    CL_TRY(ber_expect_oid(&seq.body, OID(OID_SHA256), what, "SHA-256"));
    if (!cl_cursor_at_end(&seq.body) && !ber_next_is(&seq.body, 0))
        CL_TRY(ber_null(&seq.body, what));
    return ber_close(c, &seq, what);
}

/* RSAES-OAEP-params with SHA-256, MGF1-SHA-256 and an empty label (the
 * defaults are SHA-1, which is refused). */
static int parse_oaep_params(cl_cursor *c)
{
    ber params, tagged;
    CL_TRY(ber_open(c, TAG_SEQUENCE, &params, "RSAES-OAEP parameters"));
    CL_ENSURE(ber_next_is(&params.body, TAG_CTX0_CONS), CL_EVERIFY,
              "RSAES-OAEP parameters: no hash algorithm (the default SHA-1 is refused)");
    CL_TRY(ber_open(&params.body, TAG_CTX0_CONS, &tagged, "RSAES-OAEP hashFunc"));
    CL_TRY(parse_sha256_alg(&tagged.body, "RSAES-OAEP hash algorithm"));
    CL_TRY(ber_close(&params.body, &tagged, "RSAES-OAEP hashFunc"));

    CL_ENSURE(ber_next_is(&params.body, TAG_CTX1_CONS), CL_EVERIFY,
              "RSAES-OAEP parameters: no mask generation function (the default MGF1-SHA-1 is refused)");
    CL_TRY(ber_open(&params.body, TAG_CTX1_CONS, &tagged, "RSAES-OAEP maskGenFunc"));
    ber mgf;
    CL_TRY(ber_open(&tagged.body, TAG_SEQUENCE, &mgf, "RSAES-OAEP mask generation function"));
    CL_TRY(ber_expect_oid(&mgf.body, OID(OID_MGF1), "RSAES-OAEP mask generation function", "MGF1"));
    CL_TRY(parse_sha256_alg(&mgf.body, "MGF1 hash algorithm"));
    CL_TRY(ber_close(&tagged.body, &mgf, "RSAES-OAEP mask generation function"));
    CL_TRY(ber_close(&params.body, &tagged, "RSAES-OAEP maskGenFunc"));

    if (ber_next_is(&params.body, TAG_CTX2_CONS)) {
        CL_TRY(ber_open(&params.body, TAG_CTX2_CONS, &tagged, "RSAES-OAEP pSourceFunc"));
        ber src;
        CL_TRY(ber_open(&tagged.body, TAG_SEQUENCE, &src, "RSAES-OAEP pSourceFunc"));
        CL_TRY(ber_expect_oid(&src.body, OID(OID_PSPECIFIED), "RSAES-OAEP pSourceFunc", "pSpecified"));
        cl_slice label;
        CL_TRY(ber_primitive(&src.body, TAG_OCTET_STRING, &label, "RSAES-OAEP label"));
        CL_ENSURE(label.len == 0, CL_EVERIFY, "RSAES-OAEP label is not empty");
        CL_TRY(ber_close(&tagged.body, &src, "RSAES-OAEP pSourceFunc"));
        CL_TRY(ber_close(&params.body, &tagged, "RSAES-OAEP pSourceFunc"));
    }
    return ber_close(c, &params, "RSAES-OAEP parameters");
}

static int parse_ktri(cl_cursor *c, cl_kms_cms_info *info)
{
    ber ktri;
    CL_ENSURE(ber_next_is(c, TAG_SEQUENCE), CL_EVERIFY,
              "the recipient is not a KeyTransRecipientInfo (key agreement, KEK and others are refused)");
    CL_TRY(ber_open(c, TAG_SEQUENCE, &ktri, "KeyTransRecipientInfo"));
    CL_TRY(ber_small_int(&ktri.body, &info->ktri_version, "KeyTransRecipientInfo version"));
    CL_ENSURE(info->ktri_version == 2, CL_EVERIFY,
              "KeyTransRecipientInfo version %d: expected 2 (recipient named by subjectKeyIdentifier)",
              info->ktri_version);
    CL_TRY(ber_primitive(&ktri.body, TAG_CTX0_PRIM, &info->subject_key_id, "recipient subjectKeyIdentifier"));
    CL_ENSURE(info->subject_key_id.len >= 1 && info->subject_key_id.len <= 64, CL_EPARSE,
              "recipient subjectKeyIdentifier of %zu bytes", info->subject_key_id.len);

    ber alg;
    CL_TRY(ber_open(&ktri.body, TAG_SEQUENCE, &alg, "keyEncryptionAlgorithm"));
    CL_TRY(ber_expect_oid(&alg.body, OID(OID_RSAES_OAEP), "keyEncryptionAlgorithm", "RSAES-OAEP"));
    CL_TRY(parse_oaep_params(&alg.body));
    CL_TRY(ber_close(&ktri.body, &alg, "keyEncryptionAlgorithm"));

    CL_TRY(ber_primitive(&ktri.body, TAG_OCTET_STRING, &info->encrypted_key, "encryptedKey"));
    CL_ENSURE(info->encrypted_key.len == 256, CL_EVERIFY,
              "encryptedKey of %zu bytes: expected 256 (RSA-2048)", info->encrypted_key.len);
    return ber_close(c, &ktri, "KeyTransRecipientInfo");
}

/* [0] IMPLICIT OCTET STRING, primitive or constructed of primitive chunks. */
static int parse_encrypted_content(cl_cursor *c, cl_buf *out)
{
    uint8_t tag;
    CL_ENSURE(cl_cursor_peek_u8(c, &tag) == 0, CL_EVERIFY, "the envelope carries no encrypted content");
    if (tag == TAG_CTX0_PRIM) {
        cl_slice v;
        CL_TRY(ber_primitive(c, TAG_CTX0_PRIM, &v, "encryptedContent"));
        return cl_buf_append(out, v.data, v.len);
    }
    ber cons;
    CL_TRY(ber_open(c, TAG_CTX0_CONS, &cons, "encryptedContent"));
    while (!cl_cursor_at_end(&cons.body) && !(cons.indefinite && ber_next_is(&cons.body, 0))) {
        cl_slice chunk;
        CL_TRY(ber_primitive(&cons.body, TAG_OCTET_STRING, &chunk, "encryptedContent chunk"));
        CL_TRY(cl_buf_append(out, chunk.data, chunk.len));
    }
    return ber_close(c, &cons, "encryptedContent");
}

static int parse_encrypted_content_info(cl_cursor *c, cl_kms_cms_info *info)
{
    ber eci, alg;
    CL_TRY(ber_open(c, TAG_SEQUENCE, &eci, "EncryptedContentInfo"));
    CL_TRY(ber_expect_oid(&eci.body, OID(OID_DATA), "the encrypted content's type", "data"));
    CL_TRY(ber_open(&eci.body, TAG_SEQUENCE, &alg, "contentEncryptionAlgorithm"));
    CL_TRY(ber_expect_oid(&alg.body, OID(OID_AES256_CBC), "contentEncryptionAlgorithm", "AES-256-CBC"));
    CL_TRY(ber_primitive(&alg.body, TAG_OCTET_STRING, &info->iv, "AES-256-CBC IV"));
    CL_ENSURE(info->iv.len == 16, CL_EVERIFY, "AES-256-CBC IV of %zu bytes: expected 16", info->iv.len);
    CL_TRY(ber_close(&eci.body, &alg, "contentEncryptionAlgorithm"));
    CL_TRY(parse_encrypted_content(&eci.body, &info->content));
    CL_ENSURE(info->content.len >= 16 && info->content.len % 16 == 0, CL_EVERIFY,
              "encrypted content of %zu bytes: not a whole number of AES blocks", info->content.len);
    return ber_close(c, &eci, "EncryptedContentInfo");
}

static int parse_cms(const uint8_t *data, size_t len, cl_kms_cms_info *info)
{
    cl_cursor top = cl_cursor_make(data, len);
    ber ci, explicit0, env, set;
    CL_TRY(ber_open(&top, TAG_SEQUENCE, &ci, "ContentInfo"));
    CL_TRY(ber_expect_oid(&ci.body, OID(OID_ENVELOPED_DATA), "the CMS content type", "envelopedData"));
    CL_TRY(ber_open(&ci.body, TAG_CTX0_CONS, &explicit0, "ContentInfo content"));
    CL_TRY(ber_open(&explicit0.body, TAG_SEQUENCE, &env, "EnvelopedData"));
    CL_TRY(ber_small_int(&env.body, &info->version, "EnvelopedData version"));
    /* RFC 5652 6.1: 2 when a recipient is named by its key identifier */
    CL_ENSURE(info->version == 2, CL_EVERIFY, "EnvelopedData version %d: expected 2", info->version);
    CL_ENSURE(!ber_next_is(&env.body, TAG_CTX0_CONS), CL_EVERIFY, "EnvelopedData has originatorInfo");
    CL_TRY(ber_open(&env.body, TAG_SET, &set, "recipientInfos"));
    CL_ENSURE(!cl_cursor_at_end(&set.body) && !(set.indefinite && ber_next_is(&set.body, 0)), CL_EVERIFY,
              "the envelope names no recipient");
    CL_TRY(parse_ktri(&set.body, info));
    CL_ENSURE(cl_cursor_at_end(&set.body) || (set.indefinite && ber_next_is(&set.body, 0)), CL_EVERIFY,
              "the envelope names more than one recipient (exactly one expected)");
    CL_TRY(ber_close(&env.body, &set, "recipientInfos"));
    CL_TRY(parse_encrypted_content_info(&env.body, info));
    CL_ENSURE(!ber_next_is(&env.body, TAG_CTX1_CONS), CL_EVERIFY, "EnvelopedData has unprotectedAttrs");
    CL_TRY(ber_close(&explicit0.body, &env, "EnvelopedData"));
    CL_TRY(ber_close(&ci.body, &explicit0, "ContentInfo content"));
    CL_TRY(ber_close(&top, &ci, "ContentInfo"));
    return cl_cursor_expect_end(&top, "CiphertextForRecipient");
}

int cl_kms_cms_parse(const uint8_t *data, size_t len, cl_kms_cms_info *out)
{
    memset(out, 0, sizeof *out);
    CL_ENSURE(data && len > 0, CL_EPARSE, "CiphertextForRecipient is empty");
    CL_ENSURE(len <= 64 * 1024, CL_ELIMIT, "CiphertextForRecipient of %zu bytes (at most 65536)", len);
    int rc = parse_cms(data, len, out);
    if (rc < 0) {
        cl_kms_cms_info_free(out);
        return cl_error_prefix(rc, "CiphertextForRecipient: ");
    }
    return CL_OK;
}

void cl_kms_cms_info_free(cl_kms_cms_info *info)
{
    cl_buf_free(&info->content);
    memset(info, 0, sizeof *info);
}

/* ---- the Recipient ------------------------------------------------------ */

struct cl_kms_recipient {
    cl_nsm *nsm;
    EVP_PKEY *key;
    uint8_t *spki;
    size_t spki_len;
};

int cl_kms_recipient_from_key(cl_nsm *nsm, EVP_PKEY *key, cl_kms_recipient **out)
{
    *out = NULL;
    CL_ENSURE(key && EVP_PKEY_is_a(key, "RSA"), CL_EINVAL, "a Recipient needs an RSA key");
    CL_ENSURE(EVP_PKEY_get_bits(key) == 2048, CL_EINVAL, "a Recipient needs an RSA-2048 key, not %d bits",
              EVP_PKEY_get_bits(key));
    cl_kms_recipient *r = calloc(1, sizeof *r);
    CL_ENSURE(r, CL_ENOMEM, "out of memory");
    unsigned char *der = NULL;
    int len = i2d_PUBKEY(key, &der);
    if (len <= 0) {
        free(r);
        return cl_error_ossl(CL_ECRYPTO, "cannot encode the Recipient's public key");
    }
    r->spki = der;
    r->spki_len = (size_t)len;
    EVP_PKEY_up_ref(key);
    r->key = key;
    r->nsm = nsm;
    *out = r;
    return CL_OK;
}

int cl_kms_recipient_new(cl_nsm *nsm, cl_kms_recipient **out)
{
    *out = NULL;
    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    if (!key)
        return cl_error_ossl(CL_ECRYPTO, "cannot generate the Recipient's RSA-2048 key");
    int rc = cl_kms_recipient_from_key(nsm, key, out);
    EVP_PKEY_free(key);
    return rc;
}

void cl_kms_recipient_free(cl_kms_recipient *r)
{
    if (!r)
        return;
    EVP_PKEY_free(r->key);
    OPENSSL_free(r->spki);
    free(r);
}

cl_slice cl_kms_recipient_public_key(const cl_kms_recipient *r)
{
    cl_slice s = {r->spki, r->spki_len};
    return s;
}

int cl_kms_recipient_document(cl_kms_recipient *r, cl_buf *doc)
{
    CL_ENSURE(r->nsm, CL_EINVAL, "this Recipient has no NSM to attest its key");
    cl_buf_reset(doc);
    int rc = cl_nsm_attestation(r->nsm, NULL, 0, NULL, 0, r->spki, r->spki_len, doc);
    if (rc < 0)
        return cl_error_prefix(rc, "attestation document for the Recipient: ");
    return CL_OK;
}

/* OpenSSL's reading must name one key-transport recipient with the same
 * subjectKeyIdentifier and encrypted key as ours. */
static int check_openssl_view(CMS_ContentInfo *cms, const cl_kms_cms_info *info)
{
    CL_ENSURE(OBJ_obj2nid(CMS_get0_type(cms)) == NID_pkcs7_enveloped, CL_EVERIFY,
              "OpenSSL reads another content type than envelopedData");
    STACK_OF(CMS_RecipientInfo) *ris = CMS_get0_RecipientInfos(cms);
    CL_ENSURE(ris && sk_CMS_RecipientInfo_num(ris) == 1, CL_EVERIFY, "OpenSSL reads %d recipients, not 1",
              ris ? sk_CMS_RecipientInfo_num(ris) : 0);
    CMS_RecipientInfo *ri = sk_CMS_RecipientInfo_value(ris, 0);
    CL_ENSURE(CMS_RecipientInfo_type(ri) == CMS_RECIPINFO_TRANS, CL_EVERIFY,
              "OpenSSL reads another recipient type than key transport");
    ASN1_OCTET_STRING *keyid = NULL;
    X509_NAME *issuer = NULL;
    ASN1_INTEGER *serial = NULL;
    CL_ENSURE(CMS_RecipientInfo_ktri_get0_signer_id(ri, &keyid, &issuer, &serial) == 1 && keyid, CL_EVERIFY,
              "OpenSSL finds no subjectKeyIdentifier for the recipient");
    CL_ENSURE((size_t)ASN1_STRING_length(keyid) == info->subject_key_id.len &&
                  !memcmp(ASN1_STRING_get0_data(keyid), info->subject_key_id.data, info->subject_key_id.len),
              CL_EVERIFY, "OpenSSL reads another subjectKeyIdentifier");
    X509_ALGOR *alg = NULL;
    CMS_RecipientInfo_ktri_get0_algs(ri, NULL, NULL, &alg);
    const ASN1_OBJECT *oid = NULL;
    if (alg)
        X509_ALGOR_get0(&oid, NULL, NULL, alg);
    CL_ENSURE(oid && OBJ_obj2nid(oid) == NID_rsaesOaep, CL_EVERIFY, "OpenSSL reads another key encryption than RSAES-OAEP");
    ASN1_OCTET_STRING **content = CMS_get0_content(cms);
    CL_ENSURE(content && *content && (size_t)ASN1_STRING_length(*content) == info->content.len &&
                  !memcmp(ASN1_STRING_get0_data(*content), info->content.data, info->content.len),
              CL_EVERIFY, "OpenSSL reads other encrypted content");
    return CL_OK;
}

int cl_kms_recipient_open(cl_kms_recipient *r, const uint8_t *data, size_t len, cl_buf *plaintext)
{
    cl_buf_reset(plaintext);
    cl_kms_cms_info info;
    CL_TRY(cl_kms_cms_parse(data, len, &info));
    int rc = CL_OK;
    CMS_ContentInfo *cms = NULL;
    BIO *out = NULL;
    const unsigned char *p = data;
    cms = d2i_CMS_ContentInfo(NULL, &p, (long)len);
    if (!cms)
        CL_OSSL_OUT(CL_EPARSE, "CiphertextForRecipient: OpenSSL cannot read the envelope");
    CL_ENSURE_OUT(p == data + len, CL_EPARSE, "CiphertextForRecipient: OpenSSL reads %zu of %zu bytes",
                  (size_t)(p - data), len);
    rc = check_openssl_view(cms, &info);
    if (rc < 0) {
        rc = cl_error_prefix(rc, "CiphertextForRecipient: ");
        goto out;
    }
    CL_ENSURE_OUT(EVP_PKEY_get_size(r->key) == (int)info.encrypted_key.len, CL_EVERIFY,
                  "CiphertextForRecipient: encryptedKey of %zu bytes for a %d-byte key", info.encrypted_key.len,
                  EVP_PKEY_get_size(r->key));
    out = BIO_new(BIO_s_secmem());
    CL_ENSURE_OUT(out, CL_ENOMEM, "out of memory");
    /* CMS_DEBUG_DECRYPT: a key that does not open the envelope is reported
     * as such, instead of OpenSSL's decoy random key (a defence for
     * long-lived keys that answer many queries; ours lives for one session
     * and the answers come from KMS over TLS). */
    if (CMS_decrypt(cms, r->key, NULL, NULL, out, CMS_BINARY | CMS_DEBUG_DECRYPT) != 1)
        CL_OSSL_OUT(CL_EVERIFY, "CiphertextForRecipient: this session's key does not open it "
                                "(sealed for another Recipient, or damaged)");
    char *mem = NULL;
    long n = BIO_get_mem_data(out, &mem);
    CL_ENSURE_OSSL_OUT(n >= 0 && (size_t)n <= info.content.len, CL_ECRYPTO, "CiphertextForRecipient: odd plaintext length");
    CL_TRY_OUT(cl_buf_append(plaintext, mem, (size_t)n));
out:
    if (rc < 0)
        cl_buf_reset(plaintext);
    BIO_free(out); /* secure memory: cleansed */
    CMS_ContentInfo_free(cms);
    cl_kms_cms_info_free(&info);
    ERR_clear_error();
    return rc;
}

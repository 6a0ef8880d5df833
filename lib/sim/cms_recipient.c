/* CiphertextForRecipient: CMS envelopedData for an attested RSA key,
 * encoded field by field in exactly the real responses' shape (BER with
 * indefinite lengths where KMS uses them, explicit NULL parameters in the
 * OAEP hash algorithms, the encrypted content in one constructed chunk).
 * OpenSSL does the cryptography: RSAES-OAEP and AES-256-CBC. */
#include "cloister/sim/cms_recipient.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

/* DER of the object identifiers and of the RSAES-OAEP AlgorithmIdentifier:
 * rsaesOaep with hashFunc [0] sha256 (NULL params) and maskGenFunc [1]
 * mgf1 with sha256 (NULL params), as KMS writes them. */
static const uint8_t OID_ENVELOPED_DATA[] = {0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03};
static const uint8_t OID_DATA[] = {0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01};
static const uint8_t OAEP_ALGORITHM[] = {
    0x30, 0x3c, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x07, 0x30, 0x2f, 0xa0,
    0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00,
    0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08, 0x30,
    0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00};
static const uint8_t AES256CBC_OID[] = {0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a};
static const uint8_t INDEFINITE[] = {0x80};
static const uint8_t EOC[] = {0x00, 0x00};

#define CEK_LEN 32
#define IV_LEN 16

static int tlv_head(cl_buf *b, uint8_t tag, size_t len)
{
    CL_TRY(cl_buf_append_u8(b, tag));
    if (len < 0x80)
        return cl_buf_append_u8(b, (uint8_t)len);
    size_t n = len > 0xffffff ? 4 : len > 0xffff ? 3 : len > 0xff ? 2 : 1;
    CL_TRY(cl_buf_append_u8(b, (uint8_t)(0x80 | n)));
    return cl_buf_append_be(b, len, n);
}

static int tlv(cl_buf *b, uint8_t tag, const uint8_t *v, size_t len)
{
    CL_TRY(tlv_head(b, tag, len));
    return cl_buf_append(b, v, len);
}

static int open_indefinite(cl_buf *b, uint8_t tag)
{
    CL_TRY(cl_buf_append_u8(b, tag));
    return cl_buf_append(b, INDEFINITE, 1);
}

static int rsa_oaep(EVP_PKEY *pkey, const uint8_t *in, size_t len, cl_buf *out)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pkey, NULL);
    int rc = CL_OK;
    size_t n = 0;
    if (!ctx || EVP_PKEY_encrypt_init(ctx) <= 0 || EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) <= 0 ||
        EVP_PKEY_CTX_set_rsa_oaep_md(ctx, EVP_sha256()) <= 0 || EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, EVP_sha256()) <= 0 ||
        EVP_PKEY_encrypt(ctx, NULL, &n, in, len) <= 0)
        CL_OSSL_OUT(CL_ECRYPTO, "RSAES-OAEP");
    CL_TRY_OUT(cl_buf_reserve(out, n));
    if (EVP_PKEY_encrypt(ctx, out->data + out->len, &n, in, len) <= 0)
        CL_OSSL_OUT(CL_ECRYPTO, "RSAES-OAEP");
    out->len += n;
out:
    EVP_PKEY_CTX_free(ctx);
    return rc;
}

static int aes_cbc(const uint8_t key[CEK_LEN], const uint8_t iv[IV_LEN], const uint8_t *in, size_t len, cl_buf *out)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    CL_ENSURE(ctx, CL_ENOMEM, "out of memory");
    int rc = CL_OK, n = 0, m = 0;
    CL_TRY_OUT(cl_buf_reserve(out, len + 16));
    if (EVP_EncryptInit_ex(ctx, EVP_aes_256_cbc(), NULL, key, iv) != 1 ||
        EVP_EncryptUpdate(ctx, out->data + out->len, &n, in, (int)len) != 1 ||
        EVP_EncryptFinal_ex(ctx, out->data + out->len + n, &m) != 1)
        CL_OSSL_OUT(CL_ECRYPTO, "AES-256-CBC");
    out->len += (size_t)n + (size_t)m;
out:
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

int cl_cms_recipient_encrypt(const uint8_t *spki, size_t spki_len, const uint8_t *plaintext, size_t len, cl_buf *out)
{
    const uint8_t *p = spki;
    EVP_PKEY *pkey = d2i_PUBKEY(NULL, &p, (long)spki_len);
    uint8_t cek[CEK_LEN], iv[IV_LEN], ski[32];
    cl_buf wrapped = CL_BUF_INIT, content = CL_BUF_INIT, ktri = CL_BUF_INIT, body = CL_BUF_INIT,
          seq = CL_BUF_INIT;
    int rc = CL_OK;
    if (!pkey || p != spki + spki_len) {
        ERR_clear_error();
        CL_FAIL_OUT(CL_EPARSE, "the recipient's public key is not a DER SubjectPublicKeyInfo");
    }
    CL_ENSURE_OUT(EVP_PKEY_is_a(pkey, "RSA"), CL_EPARSE, "the recipient's public key is not an RSA key");
    CL_ENSURE_OUT(EVP_PKEY_get_bits(pkey) >= CL_CMS_RECIPIENT_MIN_RSA_BITS, CL_EPARSE,
                  "the recipient's RSA key has %d bits, fewer than %d", EVP_PKEY_get_bits(pkey),
                  CL_CMS_RECIPIENT_MIN_RSA_BITS);
    CL_ENSURE_OUT(len <= 1u << 20, CL_ELIMIT, "plaintext too large");
    unsigned n = 0;
    if (EVP_Digest(spki, spki_len, ski, &n, EVP_sha256(), NULL) != 1)
        CL_OSSL_OUT(CL_ECRYPTO, "SHA-256");
    CL_ENSURE_OSSL_OUT(RAND_bytes(cek, CEK_LEN) == 1 && RAND_bytes(iv, IV_LEN) == 1, CL_ECRYPTO, "no randomness");
    CL_TRY_OUT(rsa_oaep(pkey, cek, CEK_LEN, &wrapped));
    CL_TRY_OUT(aes_cbc(cek, iv, plaintext, len, &content));

    /* KeyTransRecipientInfo ::= SEQUENCE { version 2, rid [0] SKI,
     *   keyEncryptionAlgorithm, encryptedKey OCTET STRING } */
    static const uint8_t version2[] = {0x02, 0x01, 0x02};
    CL_TRY_OUT(cl_buf_append(&body, version2, sizeof version2));
    CL_TRY_OUT(tlv(&body, 0x80, ski, sizeof ski));
    CL_TRY_OUT(cl_buf_append(&body, OAEP_ALGORITHM, sizeof OAEP_ALGORITHM));
    CL_TRY_OUT(tlv(&body, 0x04, wrapped.data, wrapped.len));
    CL_TRY_OUT(tlv(&seq, 0x30, body.data, body.len));
    CL_TRY_OUT(tlv(&ktri, 0x31, seq.data, seq.len));

    /* ContentInfo { envelopedData, [0] EnvelopedData { version 2,
     *   recipientInfos SET, EncryptedContentInfo { data, aes-256-cbc IV,
     *   [0] encryptedContent } } }, indefinite lengths as KMS sends it */
    CL_TRY_OUT(open_indefinite(out, 0x30));
    CL_TRY_OUT(cl_buf_append(out, OID_ENVELOPED_DATA, sizeof OID_ENVELOPED_DATA));
    CL_TRY_OUT(open_indefinite(out, 0xa0));
    CL_TRY_OUT(open_indefinite(out, 0x30));
    CL_TRY_OUT(cl_buf_append(out, version2, sizeof version2));
    CL_TRY_OUT(cl_buf_append(out, ktri.data, ktri.len));
    CL_TRY_OUT(open_indefinite(out, 0x30));
    CL_TRY_OUT(cl_buf_append(out, OID_DATA, sizeof OID_DATA));
    CL_TRY_OUT(tlv_head(out, 0x30, sizeof AES256CBC_OID + 2 + IV_LEN));
    CL_TRY_OUT(cl_buf_append(out, AES256CBC_OID, sizeof AES256CBC_OID));
    CL_TRY_OUT(tlv(out, 0x04, iv, IV_LEN));
    CL_TRY_OUT(open_indefinite(out, 0xa0));
    CL_TRY_OUT(tlv(out, 0x04, content.data, content.len));
    for (int i = 0; i < 5; i++) /* encryptedContent, EncryptedContentInfo, EnvelopedData, [0], ContentInfo */
        CL_TRY_OUT(cl_buf_append(out, EOC, sizeof EOC));
out:
    cl_wipe(cek, sizeof cek);
    cl_buf_free(&wrapped);
    cl_buf_free(&content);
    cl_buf_free(&ktri);
    cl_buf_free(&body);
    cl_buf_free(&seq);
    EVP_PKEY_free(pkey);
    return rc;
}

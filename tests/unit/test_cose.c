#include "cloister/core/cose.h"
#include "test.h"

#include <openssl/bn.h>

static const uint8_t payload[] = "attested payload";

static int sign(EVP_PKEY *key, cl_buf *out)
{
    return cl_cose_sign1_sign(key, payload, sizeof payload, out);
}

static int verify_bytes(const uint8_t *data, size_t len, EVP_PKEY *key)
{
    cl_cose_sign1 msg;
    CL_TRY(cl_cose_sign1_decode(data, len, &msg));
    int rc = cl_cose_sign1_verify(&msg, key);
    cl_cose_sign1_free(&msg);
    return rc;
}

static void sign_then_verify(void)
{
    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    EVP_PKEY *other = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    cl_buf msg = CL_BUF_INIT;
    CHECK_OK(sign(key, &msg));
    CHECK(msg.data[0] == 0x84); /* untagged, as real documents */
    CHECK_OK(verify_bytes(msg.data, msg.len, key));
    CHECK_ERR(verify_bytes(msg.data, msg.len, other), CL_EVERIFY, "does not verify");

    cl_cose_sign1 decoded;
    CHECK_OK(cl_cose_sign1_decode(msg.data, msg.len, &decoded));
    CHECK(decoded.payload.len == sizeof payload && !memcmp(decoded.payload.data, payload, sizeof payload));
    CHECK(decoded.signature.len == 96);
    cl_cose_sign1_free(&decoded);

    /* tag 18 is accepted as well */
    cl_buf tagged = CL_BUF_INIT;
    CHECK_OK(cl_cbor_put_tag(&tagged, 18));
    CHECK_OK(cl_buf_append(&tagged, msg.data, msg.len));
    CHECK_OK(verify_bytes(tagged.data, tagged.len, key));
    tagged.data[0] = 0xd1; /* tag 17: COSE_Mac0 */
    CHECK_ERR(verify_bytes(tagged.data, tagged.len, key), CL_EPARSE, "not COSE_Sign1");
    cl_buf_free(&tagged);

    /* a changed payload byte breaks the signature */
    msg.data[msg.len - 96 - 3] ^= 1;
    CHECK_ERR(verify_bytes(msg.data, msg.len, key), CL_EVERIFY, "does not verify");
    cl_buf_free(&msg);
    EVP_PKEY_free(key);
    EVP_PKEY_free(other);
}

static void high_s_accepted(void)
{
    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    cl_buf msg = CL_BUF_INIT;
    CHECK_OK(sign(key, &msg));
    BIGNUM *n = NULL;
    BN_hex2bn(&n, "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973");
    uint8_t *s_bytes = msg.data + msg.len - 48;
    BIGNUM *s = BN_bin2bn(s_bytes, 48, NULL);
    BIGNUM *flipped = BN_new(), *half = BN_new();
    BN_rshift1(half, n);
    if (BN_cmp(s, half) <= 0) {
        BN_sub(flipped, n, s); /* (r, n - s) is the same signature in its high-S form */
        CHECK(BN_bn2binpad(flipped, s_bytes, 48) == 48);
        BN_copy(s, flipped);
    }
    CHECK(BN_cmp(s, half) > 0);
    BN_free(half);
    CHECK_OK(verify_bytes(msg.data, msg.len, key));
    BN_free(n);
    BN_free(s);
    BN_free(flipped);
    cl_buf_free(&msg);
    EVP_PKEY_free(key);
}

static void shape_rules(void)
{
    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    static const uint8_t sig[96];
    struct {
        const uint8_t *prot;
        size_t prot_len;
        int unprot_null;
        size_t sig_len;
        int code;
        const char *fragment;
    } cases[] = {
        {(const uint8_t *)"\xa1\x01\x26", 3, 0, 96, CL_EVERIFY, "not ES384"}, /* ES256 */
        {(const uint8_t *)"", 0, 0, 96, CL_EVERIFY, "empty protected header"},
        {(const uint8_t *)"\xa0", 1, 0, 96, CL_EVERIFY, "names no algorithm"},
        {(const uint8_t *)"\x80", 1, 0, 96, CL_EPARSE, "not a map"},
        {(const uint8_t *)"\xa2\x01\x38\x22\x02\x81\x01", 7, 0, 96, CL_EVERIFY, "critical header"},
        {(const uint8_t *)"\xa1\x01\x38\x22", 4, 1, 96, CL_EPARSE, "unprotected header is a null"},
        {(const uint8_t *)"\xa1\x01\x38\x22", 4, 0, 95, CL_EPARSE, "signature is 95 bytes"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cl_buf b = CL_BUF_INIT;
        int rc = cl_cbor_put_array(&b, 4);
        rc |= cl_cbor_put_bytes(&b, cases[i].prot, cases[i].prot_len);
        rc |= cases[i].unprot_null ? cl_cbor_put_null(&b) : cl_cbor_put_map(&b, 0);
        rc |= cl_cbor_put_bytes(&b, payload, sizeof payload);
        rc |= cl_cbor_put_bytes(&b, sig, cases[i].sig_len);
        CHECK(rc == 0);
        CHECK_ERR(verify_bytes(b.data, b.len, key), cases[i].code, cases[i].fragment);
        cl_buf_free(&b);
    }
    static const uint8_t three[] = {0x83, 0x40, 0xa0, 0x40};
    CHECK_ERR(verify_bytes(three, sizeof three, key), CL_EPARSE, "array of 4");
    EVP_PKEY_free(key);
}

static void other_curves_refused(void)
{
    EVP_PKEY *p256 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    EVP_PKEY *p384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    cl_buf msg = CL_BUF_INIT;
    CHECK_ERR(sign(p256, &msg), CL_EINVAL, "P-384");
    CHECK_OK(sign(p384, &msg));
    CHECK_ERR(verify_bytes(msg.data, msg.len, p256), CL_EVERIFY, "P-384");
    cl_buf_free(&msg);
    EVP_PKEY_free(p256);
    EVP_PKEY_free(p384);
}

int main(void)
{
    RUN(sign_then_verify);
    RUN(high_s_accepted);
    RUN(shape_rules);
    RUN(other_curves_refused);
    return test_summary();
}

/* ACM-style bundles: strict parsing of {certificate, certificateChain,
 * encryptedPrivateKey}, canonical PEM, the encoder, every malformed class. */
#include "cloister/core/acm_bundle.h"
#include "cloister/core/encoding.h"
#include "test.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

/* A self-signed P-256 certificate, PEM, into out (appended). */
static void make_cert(const char *cn, cl_buf *out, uint8_t sha[32])
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, k);
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, n);
    X509_sign(x, k, EVP_sha256());
    BIO *b = BIO_new(BIO_s_mem());
    PEM_write_bio_X509(b, x);
    char *p;
    long l = BIO_get_mem_data(b, &p);
    CHECK_OK(cl_buf_append(out, p, (size_t)l));
    if (sha) {
        unsigned char *der = NULL;
        int dl = i2d_X509(x, &der);
        unsigned hl;
        EVP_Digest(der, (size_t)dl, sha, &hl, EVP_sha256(), NULL);
        OPENSSL_free(der);
    }
    BIO_free(b);
    X509_free(x);
    EVP_PKEY_free(k);
}

static cl_buf leaf, inter1, inter2;

static void app(cl_buf *b, const char *s)
{
    CHECK_OK(cl_buf_append(b, s, strlen(s) + 1)); /* keeps a NUL after the text */
    b->len--;
}
static uint8_t leaf_sha[32];

/* A JSON string literal of s (escaping newlines). */
static void json_str(cl_buf *out, const cl_buf *s)
{
    CHECK_OK(cl_buf_append(out, "\"", 1));
    for (size_t i = 0; i < s->len; i++) {
        if (s->data[i] == '\n')
            CHECK_OK(cl_buf_append(out, "\\n", 2));
        else
            CHECK_OK(cl_buf_append_u8(out, s->data[i]));
    }
    CHECK_OK(cl_buf_append(out, "\"", 1));
}

static int parse_text(const char *json, cl_acm_bundle *b)
{
    return cl_acm_bundle_parse((const uint8_t *)json, strlen(json), b);
}

static void good_bundle(cl_buf *out, const char *extra)
{
    cl_buf chain = CL_BUF_INIT;
    CHECK_OK(cl_buf_append(&chain, inter1.data, inter1.len));
    app(&chain, "\n");
    CHECK_OK(cl_buf_append(&chain, inter2.data, inter2.len));
    CHECK_OK(cl_buf_append(out, "{\"certificate\": ", 16));
    json_str(out, &leaf);
    CHECK_OK(cl_buf_append(out, ", \"certificateChain\": ", 22));
    json_str(out, &chain);
    const char *rest = ", \"encryptedPrivateKey\": \"AQIDBAUGBwgJCgsMDQ4PEA==\"";
    CHECK_OK(cl_buf_append(out, rest, strlen(rest)));
    if (extra)
        CHECK_OK(cl_buf_append(out, extra, strlen(extra)));
    CHECK_OK(cl_buf_append(out, "}", 2)); /* NUL-terminated */
    out->len--;
    cl_buf_free(&chain);
}

static void test_parse_good(void)
{
    cl_buf j = CL_BUF_INIT, full = CL_BUF_INIT;
    good_bundle(&j, NULL);
    cl_acm_bundle b;
    CHECK_OK(cl_acm_bundle_parse(j.data, j.len, &b));
    CHECK(b.certificate.len == leaf.len && !memcmp(b.certificate.data, leaf.data, leaf.len));
    CHECK(b.chain_count == 2);
    CHECK(b.chain.len == inter1.len + inter2.len);
    CHECK(b.ciphertext.len == 16 && b.ciphertext.data[0] == 1 && b.ciphertext.data[15] == 16);
    CHECK(!memcmp(b.leaf_sha256, leaf_sha, 32));
    CHECK_OK(cl_acm_bundle_full_chain(&b, &full));
    CHECK(full.len == leaf.len + inter1.len + inter2.len && !memcmp(full.data, leaf.data, leaf.len));
    cl_acm_bundle_free(&b);
    cl_buf_free(&j);
    cl_buf_free(&full);
}

static void test_encode_roundtrip(void)
{
    cl_buf j = CL_BUF_INIT, chain = CL_BUF_INIT;
    uint8_t ct[300];
    for (size_t i = 0; i < sizeof ct; i++)
        ct[i] = (uint8_t)(i * 7);
    CHECK_OK(cl_buf_append(&chain, inter1.data, inter1.len));
    CHECK_OK(cl_acm_bundle_encode(leaf.data, leaf.len, chain.data, chain.len, ct, sizeof ct, &j));
    CHECK(j.data[j.len] == 0 && strstr((char *)j.data, "\"encryptedPrivateKey\""));
    cl_acm_bundle a, b;
    CHECK_OK(cl_acm_bundle_parse(j.data, j.len, &a));
    CHECK(a.ciphertext.len == sizeof ct && !memcmp(a.ciphertext.data, ct, sizeof ct));
    CHECK(a.chain_count == 1);
    CHECK_OK(cl_acm_bundle_parse(j.data, j.len, &b));
    CHECK(cl_acm_bundle_equal(&a, &b));
    b.ciphertext.data[0] ^= 1;
    CHECK(!cl_acm_bundle_equal(&a, &b));
    cl_acm_bundle_free(&a);
    cl_acm_bundle_free(&b);
    /* an empty chain is fine; no ciphertext or a broken certificate is not */
    cl_buf_reset(&j);
    CHECK_OK(cl_acm_bundle_encode(leaf.data, leaf.len, NULL, 0, ct, 1, &j));
    CHECK_OK(cl_acm_bundle_parse(j.data, j.len, &a));
    CHECK(a.chain_count == 0 && a.chain.len == 0);
    cl_acm_bundle_free(&a);
    CHECK_ERR(cl_acm_bundle_encode(leaf.data, leaf.len, NULL, 0, ct, 0, &j), CL_ELIMIT, "ciphertext");
    CHECK_ERR(cl_acm_bundle_encode((const uint8_t *)"hello", 5, NULL, 0, ct, 1, &j), CL_EPARSE, "outside PEM");
    cl_buf_free(&j);
    cl_buf_free(&chain);
}

static void expect_bad(const char *json, int code, const char *fragment)
{
    cl_acm_bundle b;
    CHECK_ERR(parse_text(json, &b), code, fragment);
    cl_acm_bundle_free(&b);
}

static void test_malformed(void)
{
    expect_bad("", CL_EPARSE, "empty");
    expect_bad("{", CL_EPARSE, "not JSON");
    expect_bad("[]", CL_EPARSE, "not a JSON object");
    expect_bad("{}", CL_EPARSE, "no \"certificate\"");
    expect_bad("{\"certificate\": 5}", CL_EPARSE, "not a string");
    expect_bad("{\"certificate\": \"a\", \"certificate\": \"b\"}", CL_EPARSE, "not JSON");
    expect_bad("{\"certificate\": \"\", \"certificateChain\": \"\", \"encryptedPrivateKey\": \"AA==\"}", CL_EPARSE,
               "holds no certificate");
    expect_bad("{\"certificate\": \"a\\u0000b\"}", CL_EPARSE, "NUL");
    expect_bad("{\"foo\": 1}", CL_EPARSE, "unknown field \"foo\"");

    cl_buf j = CL_BUF_INIT;
    good_bundle(&j, ", \"extra\": \"x\"");
    expect_bad((char *)j.data, CL_EPARSE, "unknown field \"extra\"");
    /* each field missing / of the wrong type */
    const char *names[] = {"\"certificateChain\"", "\"encryptedPrivateKey\""};
    for (size_t i = 0; i < 2; i++) {
        cl_buf_reset(&j);
        good_bundle(&j, NULL);
        char *p = strstr((char *)j.data, names[i]);
        CHECK(p != NULL);
        memcpy(p + 1, "X", 1); /* renamed: unknown field */
        expect_bad((char *)j.data, CL_EPARSE, "unknown field");
    }
    cl_buf_free(&j);
    /* two certificates in "certificate", garbage around PEM */
    cl_buf two = CL_BUF_INIT, body = CL_BUF_INIT;
    CHECK_OK(cl_buf_append(&two, leaf.data, leaf.len));
    CHECK_OK(cl_buf_append(&two, inter1.data, inter1.len));
    app(&body, "{\"certificate\": ");
    json_str(&body, &two);
    app(&body, "}");
    expect_bad((char *)body.data, CL_ELIMIT, "more than 1 certificates");
    cl_buf_reset(&two);
    cl_buf_reset(&body);
    app(&two, "junk ");
    CHECK_OK(cl_buf_append(&two, leaf.data, leaf.len));
    app(&body, "{\"certificate\": ");
    json_str(&body, &two);
    app(&body, "}");
    expect_bad((char *)body.data, CL_EPARSE, "text outside PEM");
    cl_buf_free(&two);
    cl_buf_free(&body);
    expect_bad("{\"certificate\": \"-----BEGIN CERTIFICATE-----\\nAAAA\\n-----END CERTIFICATE-----\\n\"}", CL_EPARSE,
               "not a valid PEM X.509");
}

static void test_fields(void)
{
    /* the chain: a private key block, too many certificates; the ciphertext */
    cl_buf j = CL_BUF_INIT, chain = CL_BUF_INIT;
    const char *pk = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
    CHECK_OK(cl_buf_append(&chain, pk, strlen(pk)));
    app(&j, "{\"certificate\": ");
    json_str(&j, &leaf);
    app(&j, ", \"certificateChain\": ");
    json_str(&j, &chain);
    app(&j, "}");
    expect_bad((char *)j.data, CL_EPARSE, "certificateChain: text outside PEM");
    cl_buf_reset(&chain);
    cl_buf_reset(&j);
    for (int i = 0; i < CL_ACM_CHAIN_CERTS_MAX + 1; i++)
        CHECK_OK(cl_buf_append(&chain, inter1.data, inter1.len));
    app(&j, "{\"certificate\": ");
    json_str(&j, &leaf);
    app(&j, ", \"certificateChain\": ");
    json_str(&j, &chain);
    app(&j, ", \"encryptedPrivateKey\": \"AA==\"}");
    expect_bad((char *)j.data, CL_ELIMIT, "more than 16 certificates");

    const char *cts[] = {"\"\"", "\"!!!!\"", "7", NULL};
    const char *frags[] = {"is empty", "encryptedPrivateKey", "not a string"};
    int codes[] = {CL_EPARSE, CL_EPARSE, CL_EPARSE};
    for (size_t i = 0; cts[i]; i++) {
        cl_buf_reset(&j);
        app(&j, "{\"certificate\": ");
        json_str(&j, &leaf);
        app(&j, ", \"certificateChain\": \"\", \"encryptedPrivateKey\": ");
        CHECK_OK(cl_buf_append(&j, cts[i], strlen(cts[i])));
        app(&j, "}");
        expect_bad((char *)j.data, codes[i], frags[i]);
    }
    /* a ciphertext longer than KMS's limit */
    uint8_t big[CL_ACM_CIPHERTEXT_MAX + 3];
    memset(big, 0x41, sizeof big);
    cl_buf b64 = CL_BUF_INIT;
    CHECK_OK(cl_base64_encode(big, sizeof big, &b64));
    cl_buf_reset(&j);
    app(&j, "{\"certificate\": ");
    json_str(&j, &leaf);
    app(&j, ", \"certificateChain\": \"\", \"encryptedPrivateKey\": \"");
    CHECK_OK(cl_buf_append(&j, b64.data, b64.len));
    app(&j, "\"}");
    expect_bad((char *)j.data, CL_ELIMIT, "6144");
    /* the whole text's limit */
    cl_buf huge = CL_BUF_INIT;
    CHECK_OK(cl_buf_reserve(&huge, CL_ACM_BUNDLE_MAX + 1));
    memset(huge.data, ' ', CL_ACM_BUNDLE_MAX + 1);
    huge.len = CL_ACM_BUNDLE_MAX + 1;
    cl_acm_bundle b;
    CHECK_ERR(cl_acm_bundle_parse(huge.data, huge.len, &b), CL_ELIMIT, "larger than");
    cl_acm_bundle_free(&b);
    cl_buf_free(&huge);
    cl_buf_free(&b64);
    cl_buf_free(&j);
    cl_buf_free(&chain);
}

int main(void)
{
    make_cert("leaf", &leaf, leaf_sha);
    make_cert("intermediate 1", &inter1, NULL);
    make_cert("intermediate 2", &inter2, NULL);
    RUN(test_parse_good);
    RUN(test_encode_roundtrip);
    RUN(test_malformed);
    RUN(test_fields);
    cl_buf_free(&leaf);
    cl_buf_free(&inter1);
    cl_buf_free(&inter2);
    return test_summary();
}

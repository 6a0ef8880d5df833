/* ACM-style bundles: strict parsing of {certificate, certificateChain,
 * encryptedPrivateKey}, canonical PEM, the encoder, every malformed class. */
#include "cloister/core/acm_bundle.h"
#include "cloister/core/encoding.h"
#include "test.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

/* A P-256 certificate named cn, signed by signer_key under issuer's name
 * (self-issued when issuer is NULL), PEM, into out (appended).  Returns
 * the certificate and, in *key_out, its key (both owned by the caller). */
static X509 *make_cert_by(const char *cn, X509 *issuer, EVP_PKEY *signer_key, cl_buf *out, uint8_t sha[32],
                          EVP_PKEY **key_out)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, k);
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : n);
    X509_sign(x, signer_key ? signer_key : k, EVP_sha256());
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
    *key_out = k;
    return x;
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

/* The chain is one chain: every link's signature, up to the last certificate. */
static void test_chain_signatures(void)
{
    cl_buf pem = CL_BUF_INIT, j = CL_BUF_INIT;
    CHECK_OK(cl_buf_append(&pem, leaf.data, leaf.len));
    CHECK_OK(cl_buf_append(&pem, inter1.data, inter1.len));
    CHECK_OK(cl_buf_append(&pem, inter2.data, inter2.len));
    CHECK_OK(cl_acm_chain_verify(pem.data, pem.len));
    /* a stranger with intermediate 1's name: the leaf's signature does not verify */
    EVP_PKEY *k1 = NULL, *k2 = NULL, *k3 = NULL;
    cl_buf forged = CL_BUF_INIT;
    X509 *fake = make_cert_by("intermediate 1", NULL, NULL, &forged, NULL, &k1);
    cl_buf_reset(&pem);
    CHECK_OK(cl_buf_append(&pem, leaf.data, leaf.len));
    CHECK_OK(cl_buf_append(&pem, forged.data, forged.len));
    CHECK_ERR(cl_acm_chain_verify(pem.data, pem.len), CL_EVERIFY, "certificate 1's signature does not verify");
    CHECK_ERR(cl_acm_bundle_encode(leaf.data, leaf.len, forged.data, forged.len, (const uint8_t *)"x", 1, &j),
              CL_EVERIFY, "signature does not verify");
    /* the same through a bundle's JSON */
    cl_buf_reset(&j);
    CHECK_OK(cl_buf_append(&j, "{\"certificate\": ", 16));
    json_str(&j, &leaf);
    CHECK_OK(cl_buf_append(&j, ", \"certificateChain\": ", 22));
    json_str(&j, &forged);
    app(&j, ", \"encryptedPrivateKey\": \"AQIDBAUGBwgJCgsMDQ4PEA==\"}");
    expect_bad((const char *)j.data, CL_EVERIFY, "bundle: certificate chain: certificate 1's signature");
    /* out of order: the leaf's issuer is not the next certificate */
    cl_buf_reset(&pem);
    CHECK_OK(cl_buf_append(&pem, leaf.data, leaf.len));
    CHECK_OK(cl_buf_append(&pem, inter2.data, inter2.len));
    CHECK_ERR(cl_acm_chain_verify(pem.data, pem.len), CL_EVERIFY, "certificate 1's issuer is not certificate 2's");
    /* a self-issued last certificate signed by another key */
    cl_buf bad_root = CL_BUF_INIT;
    EVP_PKEY *other = EVP_EC_gen("P-256");
    X509 *root = make_cert_by("root", NULL, other, &bad_root, NULL, &k2);
    CHECK_ERR(cl_acm_chain_verify(bad_root.data, bad_root.len), CL_EVERIFY, "broken self-signature");
    /* a middle link signed by the wrong key */
    cl_buf mid = CL_BUF_INIT, low = CL_BUF_INIT;
    X509 *m = make_cert_by("mid", root, other, &mid, NULL, &k3); /* signed by the key root names... */
    EVP_PKEY *k4 = NULL;
    X509 *l = make_cert_by("low", m, other, &low, NULL, &k4);   /* ...but mid's key did not sign low */
    cl_buf_reset(&pem);
    CHECK_OK(cl_buf_append(&pem, low.data, low.len));
    CHECK_OK(cl_buf_append(&pem, mid.data, mid.len));
    CHECK_ERR(cl_acm_chain_verify(pem.data, pem.len), CL_EVERIFY, "certificate 1's signature");
    CHECK_ERR(cl_acm_chain_verify((const uint8_t *)"no pem", 6), CL_EPARSE, "no PEM certificate");
    X509_free(fake);
    X509_free(root);
    X509_free(m);
    X509_free(l);
    EVP_PKEY_free(k1);
    EVP_PKEY_free(k2);
    EVP_PKEY_free(k3);
    EVP_PKEY_free(k4);
    EVP_PKEY_free(other);
    cl_buf_free(&pem);
    cl_buf_free(&j);
    cl_buf_free(&forged);
    cl_buf_free(&bad_root);
    cl_buf_free(&mid);
    cl_buf_free(&low);
}

int main(void)
{
    /* one chain: leaf <- intermediate 1 <- intermediate 2 (self-signed) */
    EVP_PKEY *k2 = NULL, *k1 = NULL, *kl = NULL;
    X509 *x2 = make_cert_by("intermediate 2", NULL, NULL, &inter2, NULL, &k2);
    X509 *x1 = make_cert_by("intermediate 1", x2, k2, &inter1, NULL, &k1);
    X509 *xl = make_cert_by("leaf", x1, k1, &leaf, leaf_sha, &kl);
    X509_free(x2);
    X509_free(x1);
    X509_free(xl);
    EVP_PKEY_free(k2);
    EVP_PKEY_free(k1);
    EVP_PKEY_free(kl);
    RUN(test_chain_signatures);
    RUN(test_parse_good);
    RUN(test_encode_roundtrip);
    RUN(test_malformed);
    RUN(test_fields);
    cl_buf_free(&leaf);
    cl_buf_free(&inter1);
    cl_buf_free(&inter2);
    return test_summary();
}

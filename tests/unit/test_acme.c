/* The ACME client's pieces that need no CA: the readers of what the CA
 * sends (with the hostile shapes they must refuse), the JWS (its signature
 * checked with OpenSSL against the account key), thumbprints, the CSR, the
 * tls-alpn-01 certificate, the issued-chain check, Retry-After and the
 * renewal time.  The protocol against a real CA is tests/integration/acme_*. */
#include "cloister/enclave/acme.h"
#include "cloister/core/encoding.h"
#include "test.h"

#include <jansson.h>
#include <openssl/ec.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <time.h>

#define S(x) (const uint8_t *)(x), strlen(x)

static void test_directory(void)
{
    cl_acme_directory d;
    CHECK_OK(cl_acme_parse_directory(S("{\"newNonce\":\"https://ca/n\",\"newAccount\":\"https://ca/a\","
                                       "\"newOrder\":\"https://ca/o\",\"meta\":{\"x\":1}}"),
                                     &d));
    CHECK(!strcmp(d.new_order, "https://ca/o"));
    CHECK_ERR(cl_acme_parse_directory(S("<html>"), &d), CL_EPARSE, "is not JSON");
    CHECK_ERR(cl_acme_parse_directory(S("[]"), &d), CL_EPARSE, "not a JSON object");
    CHECK_ERR(cl_acme_parse_directory(S("{\"newNonce\":\"https://ca/n\",\"newAccount\":\"https://ca/a\"}"), &d),
              CL_EPARSE, "no \"newOrder\"");
    /* plain http, a header injection, a duplicate key, a non-string */
    CHECK_ERR(cl_acme_parse_directory(S("{\"newNonce\":\"http://ca/n\",\"newAccount\":\"https://ca/a\","
                                        "\"newOrder\":\"https://ca/o\"}"),
                                      &d),
              CL_EPARSE, "not an https URL");
    CHECK_ERR(cl_acme_parse_directory(S("{\"newNonce\":\"https://ca/n\\r\\nX: y\",\"newAccount\":\"https://ca/a\","
                                        "\"newOrder\":\"https://ca/o\"}"),
                                      &d),
              CL_EPARSE, "not allowed in a URL");
    CHECK_ERR(cl_acme_parse_directory(S("{\"newNonce\":\"https://ca/n\",\"newNonce\":\"https://ca/m\","
                                        "\"newAccount\":\"https://ca/a\",\"newOrder\":\"https://ca/o\"}"),
                                      &d),
              CL_EPARSE, NULL);
    CHECK_ERR(cl_acme_parse_directory(S("{\"newNonce\":7,\"newAccount\":\"https://ca/a\",\"newOrder\":\"https://ca/o\"}"),
                                      &d),
              CL_EPARSE, "not a string");
    char big[700];
    memset(big, 'a', sizeof big);
    big[sizeof big - 1] = 0;
    char doc[1000];
    snprintf(doc, sizeof doc, "{\"newNonce\":\"https://%s\",\"newAccount\":\"https://a\",\"newOrder\":\"https://o\"}", big);
    CHECK_ERR(cl_acme_parse_directory(S(doc), &d), CL_EPARSE, "bytes");
}

static void test_problem(void)
{
    cl_acme_problem p;
    CHECK_OK(cl_acme_parse_problem(
        S("{\"type\":\"urn:ietf:params:acme:error:rejectedIdentifier\",\"detail\":\"no\",\"status\":400,"
          "\"subproblems\":[{\"type\":\"urn:ietf:params:acme:error:caa\",\"detail\":\"CAA forbids\","
          "\"identifier\":{\"type\":\"dns\",\"value\":\"a.example\"}},"
          "{\"type\":\"urn:ietf:params:acme:error:dns\",\"detail\":\"NXDOMAIN\"}]}"),
        &p));
    char text[2048];
    cl_acme_problem_format(&p, text, sizeof text);
    CHECK(!strcmp(text, "urn:ietf:params:acme:error:rejectedIdentifier: no (HTTP 400); subproblems: "
                        "urn:ietf:params:acme:error:caa: CAA forbids [a.example]; "
                        "urn:ietf:params:acme:error:dns: NXDOMAIN"));
    /* controls in the CA's text do not reach the log as controls */
    CHECK_OK(cl_acme_parse_problem(S("{\"type\":\"t\",\"detail\":\"a\\nb\\u001b[31m\"}"), &p));
    CHECK(!strcmp(p.detail, "a?b?[31m"));
    CHECK_ERR(cl_acme_parse_problem(S("{\"status\":400}"), &p), CL_EPARSE, "neither");
    CHECK_ERR(cl_acme_parse_problem(S("{\"type\":\"t\",\"status\":\"400\"}"), &p), CL_EPARSE, "HTTP status");
    CHECK_ERR(cl_acme_parse_problem(S("{\"type\":\"t\",\"subproblems\":{}}"), &p), CL_EPARSE, "not an array");
    CHECK_ERR(cl_acme_parse_problem(S("{\"type\":\"t\",\"subproblems\":[{\"identifier\":{}}]}"), &p), CL_EPARSE,
              "neither");
}

static void test_order_authz(void)
{
    cl_acme_order o;
    CHECK_OK(cl_acme_parse_order(S("{\"status\":\"pending\",\"finalize\":\"https://ca/f\","
                                   "\"authorizations\":[\"https://ca/z/1\",\"https://ca/z/2\"]}"),
                                 &o));
    CHECK(o.status == CL_ACME_PENDING && o.authz_count == 2 && !strcmp(o.authz[1], "https://ca/z/2"));
    CHECK_OK(cl_acme_parse_order(S("{\"status\":\"invalid\",\"finalize\":\"https://ca/f\",\"authorizations\":"
                                   "[\"https://ca/z/1\"],\"error\":{\"type\":\"t\",\"detail\":\"d\"}}"),
                                 &o));
    CHECK(o.has_error && !strcmp(o.error.detail, "d"));
    CHECK_ERR(cl_acme_parse_order(S("{\"status\":\"valid\",\"finalize\":\"https://ca/f\","
                                    "\"authorizations\":[\"https://ca/z/1\"]}"),
                                  &o),
              CL_EPARSE, "no \"certificate\"");
    CHECK_ERR(cl_acme_parse_order(S("{\"status\":\"done\",\"finalize\":\"https://ca/f\","
                                    "\"authorizations\":[\"https://ca/z/1\"]}"),
                                  &o),
              CL_EPARSE, "unknown status");
    CHECK_ERR(cl_acme_parse_order(S("{\"status\":\"pending\",\"finalize\":\"https://ca/f\",\"authorizations\":[]}"),
                                  &o),
              CL_EPARSE, "0 authorizations");
    CHECK_ERR(cl_acme_parse_order(S("{\"status\":\"pending\",\"finalize\":\"https://ca/f\","
                                    "\"authorizations\":[\"https://ca/z/1\",5]}"),
                                  &o),
              CL_EPARSE, "not a string");

    cl_acme_authz a;
    const char *good = "{\"status\":\"pending\",\"identifier\":{\"type\":\"dns\",\"value\":\"e.example\"},"
                       "\"challenges\":[{\"type\":\"http-01\",\"url\":\"https://ca/c/1\",\"status\":\"pending\","
                       "\"token\":\"DGyRejmCefe7v4NfDGDKfA_-x\"},{\"type\":\"dns-01\",\"url\":\"https://ca/c/2\","
                       "\"status\":\"pending\",\"token\":\"DGyRejmCefe7v4NfDGDKfA_-y\"}]}";
    CHECK_OK(cl_acme_parse_authz(S(good), &a));
    CHECK(a.challenge_count == 2 && !strcmp(a.challenges[0].token, "DGyRejmCefe7v4NfDGDKfA_-x"));
    /* a token that would walk out of /.well-known/acme-challenge/ */
    CHECK_ERR(cl_acme_parse_authz(S("{\"status\":\"pending\",\"identifier\":{\"type\":\"dns\",\"value\":\"e\"},"
                                    "\"challenges\":[{\"type\":\"http-01\",\"url\":\"https://ca/c/1\","
                                    "\"status\":\"pending\",\"token\":\"../../../../etc/passwd/xxxxxxxx\"}]}"),
                                  &a),
              CL_EPARSE, "base64url");
    CHECK_ERR(cl_acme_parse_authz(S("{\"status\":\"pending\",\"identifier\":{\"type\":\"ip\",\"value\":\"1.2.3.4\"},"
                                    "\"challenges\":[]}"),
                                  &a),
              CL_EPARSE, "not of type dns");
    char many[4096] = "{\"status\":\"pending\",\"identifier\":{\"type\":\"dns\",\"value\":\"e\"},\"challenges\":[";
    for (int i = 0; i < 9; i++)
        strcat(many, i ? ",{\"type\":\"x\",\"url\":\"https://c\",\"status\":\"pending\"}"
                       : "{\"type\":\"x\",\"url\":\"https://c\",\"status\":\"pending\"}");
    strcat(many, "]}");
    CHECK_ERR(cl_acme_parse_authz(S(many), &a), CL_ELIMIT, "more than 8 challenges");
}

static void test_retry_after(void)
{
    unsigned s;
    CHECK_OK(cl_acme_parse_retry_after("120", 0, 3600, &s));
    CHECK(s == 120);
    CHECK_OK(cl_acme_parse_retry_after("99999999999999", 0, 3600, &s));
    CHECK(s == 3600);
    /* Sun, 06 Nov 1994 08:49:37 GMT = 784111777 */
    CHECK_OK(cl_acme_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111777 - 30, 3600, &s));
    CHECK(s == 30);
    CHECK_OK(cl_acme_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111777 + 30, 3600, &s));
    CHECK(s == 0);
    CHECK_ERR(cl_acme_parse_retry_after("12s", 0, 3600, &s), CL_EPARSE, NULL);
    CHECK_ERR(cl_acme_parse_retry_after("tomorrow", 0, 3600, &s), CL_EPARSE, NULL);
    CHECK_ERR(cl_acme_parse_retry_after("", 0, 3600, &s), CL_EPARSE, NULL);
}

static void test_renewal_time(void)
{
    CHECK(cl_acme_renewal_time(0, 90 * 86400, 0) == 60 * 86400);
    int64_t lo = cl_acme_renewal_time(1000, 1000 + 3000, -1), hi = cl_acme_renewal_time(1000, 1000 + 3000, 1);
    CHECK(lo == 1000 + 2000 - 150 && hi == 1000 + 2000 + 150);
    CHECK(hi < 1000 + 3000);
    CHECK(cl_acme_renewal_time(1000, 1000 + 3000, 7) == hi); /* clamped */
    CHECK(cl_acme_renewal_time(5, 5, 0) == 5);
}

static int b64url_decode(const char *s, size_t n, cl_buf *out)
{
    *out = (cl_buf)CL_BUF_INIT;
    return cl_base64_decode((const uint8_t *)s, n, out);
}

static void test_jws(void)
{
    EVP_PKEY *key = NULL;
    CHECK_OK(cl_acme_new_key(&key));
    cl_buf jws;
    CHECK_OK(cl_acme_jws(key, NULL, "nonce-AbC_1", "https://ca/new-acct", "{\"termsOfServiceAgreed\":true}", &jws));
    json_t *root = json_loadb((const char *)jws.data, jws.len, 0, NULL);
    CHECK(root);
    const char *prot = json_string_value(json_object_get(root, "protected"));
    const char *pay = json_string_value(json_object_get(root, "payload"));
    const char *sig = json_string_value(json_object_get(root, "signature"));
    CHECK(prot && pay && sig);
    if (prot && pay && sig) {
        cl_buf hdr, raw;
        CHECK_OK(b64url_decode(prot, strlen(prot), &hdr));
        json_t *h = json_loadb((const char *)hdr.data, hdr.len, 0, NULL);
        CHECK(!strcmp(json_string_value(json_object_get(h, "alg")), "ES256"));
        CHECK(!strcmp(json_string_value(json_object_get(h, "nonce")), "nonce-AbC_1"));
        CHECK(!strcmp(json_string_value(json_object_get(h, "url")), "https://ca/new-acct"));
        CHECK(json_is_object(json_object_get(h, "jwk")) && !json_object_get(h, "kid"));
        json_decref(h);
        cl_buf_free(&hdr);
        /* the signature, r || s, verifies over protected "." payload */
        CHECK_OK(b64url_decode(sig, strlen(sig), &raw));
        CHECK(raw.len == 64);
        ECDSA_SIG *es = ECDSA_SIG_new();
        ECDSA_SIG_set0(es, BN_bin2bn(raw.data, 32, NULL), BN_bin2bn(raw.data + 32, 32, NULL));
        unsigned char *der = NULL;
        int dl = i2d_ECDSA_SIG(es, &der);
        char input[2048];
        snprintf(input, sizeof input, "%s.%s", prot, pay);
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        CHECK(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
              EVP_DigestVerify(md, der, (size_t)dl, (const unsigned char *)input, strlen(input)) == 1);
        input[0] ^= 1; /* and not over anything else */
        CHECK(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
              EVP_DigestVerify(md, der, (size_t)dl, (const unsigned char *)input, strlen(input)) != 1);
        EVP_MD_CTX_free(md);
        OPENSSL_free(der);
        ECDSA_SIG_free(es);
        cl_buf_free(&raw);
    }
    json_decref(root);
    cl_buf_free(&jws);
    /* kid form, POST-as-GET: empty payload, no jwk; a hostile kid stays a string */
    CHECK_OK(cl_acme_jws(key, "https://ca/acct/1\"}", "n", "https://ca/o", NULL, &jws));
    root = json_loadb((const char *)jws.data, jws.len, 0, NULL);
    CHECK(root && !strcmp(json_string_value(json_object_get(root, "payload")), ""));
    if (root) {
        cl_buf hdr;
        const char *p = json_string_value(json_object_get(root, "protected"));
        CHECK_OK(b64url_decode(p, strlen(p), &hdr));
        json_t *h = json_loadb((const char *)hdr.data, hdr.len, JSON_REJECT_DUPLICATES, NULL);
        CHECK(h && !strcmp(json_string_value(json_object_get(h, "kid")), "https://ca/acct/1\"}") &&
              !json_object_get(h, "jwk"));
        json_decref(h);
        cl_buf_free(&hdr);
    }
    json_decref(root);
    cl_buf_free(&jws);

    /* thumbprint: SHA-256 of the canonical JWK, recomputed here from the key */
    char tp[44];
    CHECK_OK(cl_acme_thumbprint(key, tp));
    CHECK(strlen(tp) == 43);
    BIGNUM *x = NULL, *y = NULL;
    CHECK(EVP_PKEY_get_bn_param(key, "qx", &x) == 1 && EVP_PKEY_get_bn_param(key, "qy", &y) == 1);
    uint8_t xb[32], yb[32];
    BN_bn2binpad(x, xb, 32);
    BN_bn2binpad(y, yb, 32);
    cl_buf xs, ys, ds;
    CHECK_OK(cl_base64url_encode(xb, 32, &xs));
    CHECK_OK(cl_base64url_encode(yb, 32, &ys));
    char jwk[200];
    snprintf(jwk, sizeof jwk, "{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"%s\",\"y\":\"%s\"}", xs.data, ys.data);
    uint8_t d[32];
    EVP_Digest(jwk, strlen(jwk), d, NULL, EVP_sha256(), NULL);
    CHECK_OK(cl_base64url_encode(d, 32, &ds));
    CHECK(!strcmp((const char *)ds.data, tp));
    cl_buf ka;
    CHECK_OK(cl_acme_key_authorization("tok", key, &ka));
    char want[64];
    snprintf(want, sizeof want, "tok.%s", tp);
    CHECK(ka.len == strlen(want) && !memcmp(ka.data, want, ka.len));
    cl_buf_free(&ka);
    cl_buf_free(&xs);
    cl_buf_free(&ys);
    cl_buf_free(&ds);
    BN_free(x);
    BN_free(y);
    EVP_PKEY_free(key);
}

static void test_base64url(void)
{
    cl_buf b;
    CHECK_OK(cl_base64url_encode((const uint8_t *)"\xfb\xff", 2, &b));
    CHECK(!strcmp((const char *)b.data, "-_8"));
    cl_buf_free(&b);
    CHECK_OK(cl_base64url_encode((const uint8_t *)"", 0, &b));
    CHECK(b.len == 0 && b.data && !b.data[0]);
    cl_buf_free(&b);
}

static void test_alpn_certificate(void)
{
    X509 *cert = NULL;
    EVP_PKEY *key = NULL;
    CHECK_OK(cl_acme_alpn_certificate("e.example", "tok.thumb", &cert, &key));
    if (!cert)
        return;
    CHECK(X509_check_host(cert, "e.example", 0, 0, NULL) == 1);
    ASN1_OBJECT *obj = OBJ_txt2obj("1.3.6.1.5.5.7.1.31", 1);
    int i = X509_get_ext_by_OBJ(cert, obj, -1);
    CHECK(i >= 0);
    X509_EXTENSION *ext = X509_get_ext(cert, i);
    CHECK(X509_EXTENSION_get_critical(ext) == 1);
    ASN1_OCTET_STRING *v = X509_EXTENSION_get_data(ext);
    uint8_t want[34] = {0x04, 0x20};
    EVP_Digest("tok.thumb", 9, want + 2, NULL, EVP_sha256(), NULL);
    CHECK(ASN1_STRING_length(v) == 34 && !memcmp(ASN1_STRING_get0_data(v), want, 34));
    CHECK(X509_check_private_key(cert, key) == 1);
    ASN1_OBJECT_free(obj);
    X509_free(cert);
    EVP_PKEY_free(key);
    CHECK_ERR(cl_acme_alpn_certificate("e.example/../x", "k", &cert, &key), CL_EINVAL, "invalid character");
}

/* A CA and a leaf for key signed by it, as PEM. */
static void make_chain(EVP_PKEY *leaf_key, const char *name, bool swap, cl_buf *pem)
{
    EVP_PKEY *ca_key = NULL;
    CHECK_OK(cl_acme_new_key(&ca_key));
    X509 *ca = X509_new(), *leaf = X509_new();
    X509_NAME *cn = X509_NAME_new();
    X509_NAME_add_entry_by_txt(cn, "CN", MBSTRING_ASC, (const unsigned char *)"test ca", -1, -1, 0);
    X509_set_version(ca, 2);
    X509_set_subject_name(ca, cn);
    X509_set_issuer_name(ca, cn);
    X509_gmtime_adj(X509_getm_notBefore(ca), 0);
    X509_gmtime_adj(X509_getm_notAfter(ca), 3600);
    X509_set_pubkey(ca, ca_key);
    X509_sign(ca, ca_key, EVP_sha256());
    X509_set_version(leaf, 2);
    X509_set_issuer_name(leaf, cn);
    X509_gmtime_adj(X509_getm_notBefore(leaf), 0);
    X509_gmtime_adj(X509_getm_notAfter(leaf), 3600);
    X509_set_pubkey(leaf, leaf_key);
    char san[300];
    snprintf(san, sizeof san, "DNS:%s", name);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, san);
    X509_add_ext(leaf, e, -1);
    X509_EXTENSION_free(e);
    X509_sign(leaf, ca_key, EVP_sha256());
    BIO *b = BIO_new(BIO_s_mem());
    PEM_write_bio_X509(b, swap ? ca : leaf);
    PEM_write_bio_X509(b, swap ? leaf : ca);
    char *p;
    long n = BIO_get_mem_data(b, &p);
    *pem = (cl_buf)CL_BUF_INIT;
    CHECK_OK(cl_buf_append(pem, p, (size_t)n));
    BIO_free(b);
    X509_NAME_free(cn);
    X509_free(ca);
    X509_free(leaf);
    EVP_PKEY_free(ca_key);
}

static void test_check_chain(void)
{
    EVP_PKEY *key = NULL, *other = NULL;
    CHECK_OK(cl_acme_new_key(&key));
    CHECK_OK(cl_acme_new_key(&other));
    cl_buf pem;
    X509 *leaf;
    STACK_OF(X509) *rest;
    make_chain(key, "e.example", false, &pem);
    CHECK_OK(cl_acme_check_chain(pem.data, pem.len, "e.example", key, &leaf, &rest));
    CHECK(leaf && rest && sk_X509_num(rest) == 1);
    X509_free(leaf);
    sk_X509_pop_free(rest, X509_free);
    /* a certificate for a key the enclave did not make (the parent's) */
    CHECK_ERR(cl_acme_check_chain(pem.data, pem.len, "e.example", other, &leaf, &rest), CL_EVERIFY,
              "does not carry the key");
    CHECK_ERR(cl_acme_check_chain(pem.data, pem.len, "f.example", key, &leaf, &rest), CL_EVERIFY, "does not name");
    cl_buf_free(&pem);
    make_chain(key, "e.example", true, &pem); /* CA first */
    CHECK(cl_acme_check_chain(pem.data, pem.len, "e.example", key, &leaf, &rest) < 0);
    cl_buf_free(&pem);
    CHECK_ERR(cl_acme_check_chain(S("not pem"), "e.example", key, &leaf, &rest), CL_EPARSE, "no PEM certificate");
    CHECK(leaf == NULL && rest == NULL);
    EVP_PKEY_free(key);
    EVP_PKEY_free(other);
}

static void test_csr(void)
{
    EVP_PKEY *key = NULL;
    CHECK_OK(cl_acme_new_key(&key));
    cl_buf der;
    CHECK_OK(cl_acme_csr(key, "e.example", &der));
    const unsigned char *p = der.data;
    X509_REQ *req = d2i_X509_REQ(NULL, &p, (long)der.len);
    CHECK(req && X509_REQ_verify(req, key) == 1);
    if (req) {
        STACK_OF(X509_EXTENSION) *exts = X509_REQ_get_extensions(req);
        GENERAL_NAMES *names = X509V3_get_d2i(exts, NID_subject_alt_name, NULL, NULL);
        CHECK(names && sk_GENERAL_NAME_num(names) == 1);
        GENERAL_NAMES_free(names);
        sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
        X509_REQ_free(req);
    }
    cl_buf_free(&der);
    CHECK_ERR(cl_acme_csr(key, "bad name", &der), CL_EINVAL, "invalid character");
    EVP_PKEY_free(key);
}

static void test_http_answer(void)
{
    cl_acme_tls *t = NULL;
    CHECK_OK(cl_acme_tls_new(&t));
    cl_buf out;
    CHECK_ERR(cl_acme_tls_http_answer(t, "/.well-known/acme-challenge/abc", &out), CL_ENOTFOUND, NULL);
    CHECK_OK(cl_acme_tls_set_http_token(t, "abc", "abc.tp"));
    CHECK_OK(cl_acme_tls_http_answer(t, "/.well-known/acme-challenge/abc", &out));
    CHECK(out.len == 6 && !memcmp(out.data, "abc.tp", 6));
    cl_buf_free(&out);
    CHECK_ERR(cl_acme_tls_http_answer(t, "/.well-known/acme-challenge/abcd", &out), CL_ENOTFOUND, NULL);
    CHECK_ERR(cl_acme_tls_http_answer(t, "/other/abc", &out), CL_ENOTFOUND, NULL);
    cl_acme_tls_clear_http_token(t);
    CHECK_ERR(cl_acme_tls_http_answer(t, "/.well-known/acme-challenge/abc", &out), CL_ENOTFOUND, NULL);
    cl_acme_tls_free(t);
}

static void test_pending_parse(void)
{
    const char *tp = "0123456789012345678901234567890123456789abc"; /* 43 */
    cl_acme_pending p = {.expires = 1700000000};
    snprintf(p.type, sizeof p.type, "tls-alpn-01");
    snprintf(p.identifier, sizeof p.identifier, "app.example.com");
    snprintf(p.token, sizeof p.token, "tok-_9");
    snprintf(p.key_authorization, sizeof p.key_authorization, "tok-_9.%s", tp);
    cl_buf text = CL_BUF_INIT;
    CHECK_OK(cl_acme_pending_encode(&p, 1, &text));
    cl_acme_pending back[CL_ACME_PENDING_MAX];
    size_t n = 9;
    CHECK_OK(cl_acme_pending_parse(text.data, text.len, back, &n));
    CHECK(n == 1 && !strcmp(back[0].type, "tls-alpn-01") && !strcmp(back[0].identifier, "app.example.com") &&
          !strcmp(back[0].token, "tok-_9") && !strcmp(back[0].key_authorization, p.key_authorization) &&
          back[0].expires == 1700000000);
    cl_buf_free(&text);
    CHECK_OK(cl_acme_pending_parse(NULL, 0, back, &n));
    CHECK(n == 0);
    /* a field that would shift the others is refused when encoding too */
    snprintf(p.identifier, sizeof p.identifier, "a b");
    CHECK_ERR(cl_acme_pending_encode(&p, 1, &text), CL_EPARSE, NULL);
    cl_buf_free(&text);

    char good[160];
    snprintf(good, sizeof good, "http-01 a.example tok tok.%s 12\n", tp);
    CHECK_OK(cl_acme_pending_parse(S(good), back, &n));
    CHECK(n == 1 && back[0].expires == 12);
    char bad[8][200];
    snprintf(bad[0], sizeof bad[0], "dns-01 a.example tok tok.%s 12\n", tp);          /* type */
    snprintf(bad[1], sizeof bad[1], "http-01 a.example tok other.%s 12\n", tp);       /* not the token's */
    snprintf(bad[2], sizeof bad[2], "http-01 a.example tok tok.%.42s 12\n", tp);      /* short thumbprint */
    snprintf(bad[3], sizeof bad[3], "http-01 a.example tok tok.%s 12", tp);            /* no newline */
    snprintf(bad[4], sizeof bad[4], "http-01 a/example tok tok.%s 12\n", tp);         /* not a name */
    snprintf(bad[5], sizeof bad[5], "http-01 a.example to+k to+k.%s 12\n", tp);       /* not base64url */
    snprintf(bad[6], sizeof bad[6], "http-01 a.example tok tok.%s 1x\n", tp);         /* expiry */
    snprintf(bad[7], sizeof bad[7], "http-01 a.example tok tok.%s 12 extra\n", tp);   /* extra field */
    for (size_t i = 0; i < 8; i++) {
        cl_error_clear();
        CHECK_ERR(cl_acme_pending_parse(S(bad[i]), back, &n), CL_EPARSE, NULL);
    }
    char many[1024] = "";
    for (int i = 0; i < CL_ACME_PENDING_MAX + 1; i++)
        strcat(many, good);
    CHECK_ERR(cl_acme_pending_parse(S(many), back, &n), CL_EPARSE, NULL);

    /* answers end at their expiry */
    cl_acme_tls *t = NULL;
    CHECK_OK(cl_acme_tls_new(&t));
    CHECK_OK(cl_acme_tls_set_http_token(t, "abc", "abc.tp"));
    cl_buf out;
    cl_acme_tls_set_expiry(t, (int64_t)time(NULL) + 60);
    CHECK_OK(cl_acme_tls_http_answer(t, "/.well-known/acme-challenge/abc", &out));
    cl_buf_free(&out);
    cl_acme_tls_set_expiry(t, (int64_t)time(NULL) - 1);
    CHECK_ERR(cl_acme_tls_http_answer(t, "/.well-known/acme-challenge/abc", &out), CL_ENOTFOUND, NULL);
    cl_acme_tls_free(t);
}

int main(void)
{
    RUN(test_directory);
    RUN(test_problem);
    RUN(test_order_authz);
    RUN(test_retry_after);
    RUN(test_renewal_time);
    RUN(test_jws);
    RUN(test_base64url);
    RUN(test_alpn_certificate);
    RUN(test_check_chain);
    RUN(test_csr);
    RUN(test_http_answer);
    RUN(test_pending_parse);
    return test_summary();
}

#include "core/aws_root.h"
#include "cloister/core/attestation.h"
#include "cloister/core/encoding.h"
#include "test.h"
#include "test_chain.h"

#include <openssl/pem.h>

#define T0 1767225600 /* 2026-01-01T00:00:00Z */
#define DAY 86400

static int load_vector(const char *name, cl_buf *out)
{
    char rel[256];
    snprintf(rel, sizeof rel, "nitro/%s", name);
    const char *path = test_vector_path(rel);
    if (!path)
        return CL_ENOTFOUND;
    cl_buf file = CL_BUF_INIT;
    int rc = cl_read_file(path, 1 << 20, &file);
    if (rc == CL_OK)
        rc = cl_decode_binary_or_base64(file.data, file.len, out);
    cl_buf_free(&file);
    CHECK_OK(rc);
    return rc;
}

static int64_t leaf_not_after(const cl_attestation_doc *doc)
{
    const unsigned char *p = doc->certificate.data;
    X509 *leaf = d2i_X509(NULL, &p, (long)doc->certificate.len);
    struct tm tm;
    ASN1_TIME_to_tm(X509_get0_notAfter(leaf), &tm);
    X509_free(leaf);
    return (int64_t)timegm(&tm);
}

static void aws_root_is_embedded(void)
{
    BIO *bio = BIO_new_mem_buf(cl_aws_nitro_root_pem, -1);
    X509 *root = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    BIO_free(bio);
    CHECK(root != NULL);
    unsigned char *der = NULL;
    int len = i2d_X509(root, &der);
    uint8_t hash[32];
    char hex[65];
    EVP_Digest(der, (size_t)len, hash, NULL, EVP_sha256(), NULL);
    cl_hex_encode(hash, 32, hex);
    CHECK(!strcmp(hex, "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"));
    OPENSSL_free(der);
    X509_free(root);
}

static void real_documents(void)
{
    static const struct {
        const char *name;
        bool debug;
    } vectors[] = {
        {"nitro-2022-10-13.cbor", false},
        {"nitro-2022-10-12-debug.cbor", true},
        {"nitro-2023-09-18.b64", true}, /* PCR0 all zero although the file name does not say */
        {"nitro-2024-09-07-maxfields.b64", false},
        {"nitro-2024-09-07-debug.b64", true},
    };
    cl_verifier *v;
    CHECK_OK(cl_verifier_new(true, &v));
    for (size_t i = 0; i < sizeof vectors / sizeof vectors[0]; i++) {
        cl_buf raw = CL_BUF_INIT;
        if (load_vector(vectors[i].name, &raw) != CL_OK) {
            cl_buf_free(&raw);
            continue;
        }
        cl_attestation_doc doc;
        CHECK_OK(cl_attestation_parse(raw.data, raw.len, &doc));
        CHECK_OK(cl_verifier_verify(v, &doc, doc.timestamp_ms));
        cl_attestation_policy strict = {0}, lenient = {.allow_debug = true};
        if (vectors[i].debug)
            CHECK_ERR(cl_attestation_check_policy(&doc, &strict, doc.timestamp_ms), CL_EVERIFY, "debug-mode");
        else
            CHECK_OK(cl_attestation_check_policy(&doc, &strict, doc.timestamp_ms));
        CHECK_OK(cl_attestation_check_policy(&doc, &lenient, doc.timestamp_ms));
        CHECK(cl_attestation_is_debug(&doc) == vectors[i].debug);

        int64_t expiry = leaf_not_after(&doc);
        CHECK_OK(cl_verifier_verify(v, &doc, (uint64_t)expiry * 1000));
        CHECK_ERR(cl_verifier_verify(v, &doc, (uint64_t)(expiry + 1) * 1000), CL_EVERIFY,
                  "certificate (the signing certificate) not valid at");

        /* against a verifier that trusts only some other root */
        cl_verifier *other;
        CHECK_OK(cl_verifier_new(false, &other));
        CHECK_ERR(cl_verifier_verify(other, &doc, doc.timestamp_ms), CL_EVERIFY, "not a trusted root");
        cl_verifier_free(other);
        cl_attestation_doc_free(&doc);
        cl_buf_free(&raw);
    }
    cl_verifier_free(v);
}

static void real_deviations_parse(void)
{
    cl_buf raw = CL_BUF_INIT;
    if (load_vector("nitro-2024-09-07-maxfields.b64", &raw) != CL_OK) {
        cl_buf_free(&raw);
        return;
    }
    cl_attestation_doc doc;
    CHECK_OK(cl_attestation_parse(raw.data, raw.len, &doc));
    CHECK(doc.has_public_key && doc.public_key.len == 1024);
    CHECK(doc.has_user_data && doc.user_data.len == 1024);
    CHECK(doc.has_nonce && doc.nonce.len == 1024);
    CHECK(doc.pcr_present == 0xffff && doc.pcrs[15].len == 48);
    CHECK(doc.cabundle_len == 4);
    cl_attestation_doc_free(&doc);
    cl_buf_free(&raw);
    if (load_vector("nitro-2022-10-12-debug.cbor", &raw) != CL_OK) {
        cl_buf_free(&raw);
        return;
    }
    CHECK_OK(cl_attestation_parse(raw.data, raw.len, &doc));
    CHECK(!doc.has_nonce); /* CBOR null */
    cl_attestation_doc_free(&doc);
    cl_buf_free(&raw);
}

static void bad_selfsigned_rejected(void)
{
    cl_buf raw = CL_BUF_INIT;
    if (load_vector("bad-selfsigned.b64", &raw) != CL_OK) {
        cl_buf_free(&raw);
        return;
    }
    cl_verifier *v;
    CHECK_OK(cl_verifier_new(true, &v));
    int rc = cl_attestation_verify(v, raw.data, raw.len, NULL, 1713379906000ull, NULL);
    CHECK(rc == CL_EPARSE || rc == CL_EVERIFY);
    cl_verifier_free(v);
    cl_buf_free(&raw);
}

/* Every single-bit flip of a real document must be rejected.  The
 * sanitized build checks every 7th bit to stay quick. */
static void every_bit_flip_rejected(void)
{
    cl_buf raw = CL_BUF_INIT;
    if (load_vector("nitro-2022-10-13.cbor", &raw) != CL_OK) {
        cl_buf_free(&raw);
        return;
    }
    cl_verifier *v;
    CHECK_OK(cl_verifier_new(true, &v));
    uint64_t at = 1665651482136ull;
    CHECK_OK(cl_attestation_verify(v, raw.data, raw.len, NULL, at, NULL));
    size_t stride = getenv("CLOISTER_TEST_SANITIZED") ? 7 : 1;
    size_t bits = raw.len * 8, tried = 0, accepted = 0;
    for (size_t bit = 0; bit < bits; bit += stride) {
        raw.data[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        if (cl_attestation_verify(v, raw.data, raw.len, NULL, at, NULL) == CL_OK) {
            accepted++;
            fprintf(stderr, "bit %zu flipped was accepted\n", bit);
        }
        raw.data[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        tried++;
    }
    printf("     %zu bit flips tried, %zu accepted\n", tried, accepted);
    CHECK(accepted == 0);
    CHECK(tried >= bits / stride);
    CHECK_OK(cl_attestation_verify(v, raw.data, raw.len, NULL, at, NULL));
    cl_verifier_free(v);
    cl_buf_free(&raw);
}

static void truncations_and_trailing_bytes_rejected(void)
{
    cl_buf raw = CL_BUF_INIT;
    if (load_vector("nitro-2024-09-07-maxfields.b64", &raw) != CL_OK) {
        cl_buf_free(&raw);
        return;
    }
    cl_verifier *v;
    CHECK_OK(cl_verifier_new(true, &v));
    uint64_t at = 1725719859545ull;
    size_t accepted = 0;
    for (size_t n = 0; n < raw.len; n++) {
        uint8_t *copy = malloc(n ? n : 1);
        memcpy(copy, raw.data, n);
        if (cl_attestation_verify(v, copy, n, NULL, at, NULL) == CL_OK)
            accepted++;
        free(copy);
    }
    CHECK(accepted == 0);
    CHECK_OK(cl_buf_append_u8(&raw, 0));
    CHECK_ERR(cl_attestation_verify(v, raw.data, raw.len, NULL, at, NULL), CL_EPARSE, "trailing");
    cl_verifier_free(v);
    cl_buf_free(&raw);
}

/* ---- field rules, on hand-built payloads --------------------------------- */

static void put_payload(cl_buf *p, const char *mutation)
{
    uint8_t pcr[64] = {1}, cert[1025] = {0x30};
    bool m = mutation != NULL;
#define IS(x) (m && !strcmp(mutation, x))
    int entries = 9 - IS("no certificate") + IS("extra field");
    int rc = cl_cbor_put_map(p, (uint64_t)entries);
    rc |= cl_cbor_put_text(p, "module_id");
    rc |= IS("empty module_id") ? cl_cbor_put_text(p, "") : cl_cbor_put_text(p, "i-1-enc2");
    rc |= cl_cbor_put_text(p, "digest");
    rc |= cl_cbor_put_text(p, IS("digest SHA256") ? "SHA256" : "SHA384");
    rc |= cl_cbor_put_text(p, "timestamp");
    rc |= IS("timestamp text") ? cl_cbor_put_text(p, "1") : cl_cbor_put_uint(p, 1000);
    rc |= cl_cbor_put_text(p, "pcrs");
    if (IS("pcrs empty")) {
        rc |= cl_cbor_put_map(p, 0);
    } else {
        rc |= cl_cbor_put_map(p, 2);
        rc |= cl_cbor_put_uint(p, 0);
        rc |= cl_cbor_put_bytes(p, pcr, IS("pcr 47 bytes") ? 47 : 48);
        rc |= IS("pcr index 32") ? cl_cbor_put_uint(p, 32)
              : IS("pcr index text") ? cl_cbor_put_text(p, "1") : cl_cbor_put_uint(p, 1);
        rc |= cl_cbor_put_bytes(p, pcr, IS("pcr 64 bytes") ? 64 : 32);
    }
    if (!IS("no certificate")) {
        rc |= cl_cbor_put_text(p, "certificate");
        rc |= cl_cbor_put_bytes(p, cert, IS("certificate 1025 bytes") ? 1025 : 100);
    }
    rc |= cl_cbor_put_text(p, "cabundle");
    if (IS("cabundle null")) {
        rc |= cl_cbor_put_null(p);
    } else if (IS("cabundle empty")) {
        rc |= cl_cbor_put_array(p, 0);
    } else {
        rc |= cl_cbor_put_array(p, 1);
        rc |= cl_cbor_put_bytes(p, cert, IS("cabundle entry empty") ? 0 : 100);
    }
    rc |= cl_cbor_put_text(p, "public_key");
    rc |= IS("public_key empty") ? cl_cbor_put_bytes(p, cert, 0) : cl_cbor_put_null(p);
    rc |= cl_cbor_put_text(p, "user_data");
    rc |= IS("user_data 1025 bytes") ? cl_cbor_put_bytes(p, cert, 1025)
          : IS("user_data number")   ? cl_cbor_put_uint(p, 5)
                                     : cl_cbor_put_bytes(p, cert, 1024);
    rc |= cl_cbor_put_text(p, "nonce");
    rc |= IS("nonce 1025 bytes") ? cl_cbor_put_bytes(p, cert, 1025) : cl_cbor_put_bytes(p, cert, 0);
    if (IS("extra field")) {
        rc |= cl_cbor_put_text(p, "extra");
        rc |= cl_cbor_put_uint(p, 1);
    }
#undef IS
    CHECK(rc == 0);
}

static int parse_mutation(const char *mutation)
{
    cl_buf payload = CL_BUF_INIT, cose = CL_BUF_INIT;
    static const uint8_t prot[] = {0xa1, 0x01, 0x38, 0x22};
    uint8_t sig[96] = {0};
    put_payload(&payload, mutation);
    int rc = cl_cbor_put_array(&cose, 4);
    rc |= cl_cbor_put_bytes(&cose, prot, sizeof prot);
    rc |= cl_cbor_put_map(&cose, 0);
    rc |= cl_cbor_put_bytes(&cose, payload.data, payload.len);
    rc |= cl_cbor_put_bytes(&cose, sig, sizeof sig);
    CHECK(rc == 0);
    cl_attestation_doc doc;
    cl_error_clear();
    rc = cl_attestation_parse(cose.data, cose.len, &doc);
    if (rc == CL_OK)
        cl_attestation_doc_free(&doc);
    cl_buf_free(&payload);
    cl_buf_free(&cose);
    return rc;
}

static void field_rules(void)
{
    CHECK_OK(parse_mutation(NULL));
    CHECK_OK(parse_mutation("pcr 64 bytes"));
    CHECK_ERR(parse_mutation("empty module_id"), CL_EPARSE, "module_id");
    CHECK_ERR(parse_mutation("digest SHA256"), CL_EPARSE, "SHA384");
    CHECK_ERR(parse_mutation("timestamp text"), CL_EPARSE, "timestamp");
    CHECK_ERR(parse_mutation("pcrs empty"), CL_EPARSE, "pcrs has 0 entries");
    CHECK_ERR(parse_mutation("pcr 47 bytes"), CL_EPARSE, "PCR0 is 47 bytes");
    CHECK_ERR(parse_mutation("pcr index 32"), CL_EPARSE, "PCR index 32");
    CHECK_ERR(parse_mutation("pcr index text"), CL_EPARSE, "PCR index is a text string");
    CHECK_ERR(parse_mutation("no certificate"), CL_EPARSE, "certificate is missing");
    CHECK_ERR(parse_mutation("certificate 1025 bytes"), CL_EPARSE, "certificate is 1025 bytes");
    CHECK_ERR(parse_mutation("cabundle null"), CL_EPARSE, "cabundle is a null");
    CHECK_ERR(parse_mutation("cabundle empty"), CL_EPARSE, "cabundle is empty");
    CHECK_ERR(parse_mutation("cabundle entry empty"), CL_EPARSE, "cabundle[0] is 0 bytes");
    CHECK_ERR(parse_mutation("public_key empty"), CL_EPARSE, "public_key is 0 bytes");
    CHECK_ERR(parse_mutation("user_data 1025 bytes"), CL_EPARSE, "user_data is 1025 bytes");
    CHECK_ERR(parse_mutation("user_data number"), CL_EPARSE, "user_data is a unsigned integer");
    CHECK_ERR(parse_mutation("nonce 1025 bytes"), CL_EPARSE, "nonce is 1025 bytes");
    CHECK_ERR(parse_mutation("extra field"), CL_EPARSE, "unexpected field \"extra\"");
}

/* ---- chain rules, on chains built here ---------------------------------- */

typedef struct fixture {
    EVP_PKEY *root_key, *inter_key, *leaf_key;
    X509 *root, *inter, *leaf;
    cl_verifier *v;
} fixture;

static void fixture_free(fixture *f)
{
    X509_free(f->root);
    X509_free(f->inter);
    X509_free(f->leaf);
    EVP_PKEY_free(f->root_key);
    EVP_PKEY_free(f->inter_key);
    EVP_PKEY_free(f->leaf_key);
    cl_verifier_free(f->v);
}

static const cert_spec root_spec = {"test root", "critical,CA:TRUE", "critical,digitalSignature,keyCertSign,cRLSign",
                                    NULL, 0, T0 - 365 * DAY, T0 + 3650 * DAY, NULL};
static const cert_spec inter_spec = {"test instance", "critical,CA:TRUE,pathlen:0", "critical,keyCertSign",
                                     NULL, 0, T0 - DAY, T0 + 30 * DAY, NULL};
static const cert_spec leaf_spec = {"test leaf", "critical,CA:FALSE", "digitalSignature,nonRepudiation",
                                    NULL, 0, T0 - 3600, T0 + 3 * 3600, NULL};

static void fixture_make(fixture *f, const cert_spec *root, const cert_spec *inter, const cert_spec *leaf,
                         const char *leaf_curve)
{
    memset(f, 0, sizeof *f);
    f->root_key = test_key("P-384");
    f->inter_key = test_key("P-384");
    f->leaf_key = test_key(leaf_curve ? leaf_curve : "P-384");
    f->root = test_cert(root ? root : &root_spec, f->root_key, NULL, NULL);
    f->inter = test_cert(inter ? inter : &inter_spec, f->inter_key, f->root, f->root_key);
    f->leaf = test_cert(leaf ? leaf : &leaf_spec, f->leaf_key, f->inter, f->inter_key);
    uint8_t der[2048];
    size_t n = cert_der(f->root, der, sizeof der);
    CHECK_OK(cl_verifier_new(false, &f->v));
    CHECK_OK(cl_verifier_add_root_der(f->v, der, n));
}

static int fixture_verify(fixture *f, const doc_spec *spec, uint64_t at_ms)
{
    cl_buf doc = CL_BUF_INIT;
    X509 *chain[] = {f->root, f->inter};
    doc_spec defaults = {.timestamp_ms = T0 * 1000ull, .pcr0_fill = 0xaa};
    CHECK(test_document(spec ? spec : &defaults, f->leaf_key, f->leaf, chain, 2, &doc) == 0);
    int rc = cl_attestation_verify(f->v, doc.data, doc.len, NULL, at_ms ? at_ms : T0 * 1000ull, NULL);
    cl_buf_free(&doc);
    return rc;
}

static void built_chain_verifies(void)
{
    fixture f;
    fixture_make(&f, NULL, NULL, NULL, NULL);
    CHECK_OK(fixture_verify(&f, NULL, 0));
    doc_spec indefinite = {.timestamp_ms = T0 * 1000ull, .indefinite_map = true, .pcr0_fill = 1};
    CHECK_OK(fixture_verify(&f, &indefinite, 0));
    doc_spec tagged = {.timestamp_ms = T0 * 1000ull, .tagged = true, .pcr0_fill = 1};
    CHECK_OK(fixture_verify(&f, &tagged, 0));
    /* the AWS root does not vouch for it */
    cl_verifier *aws;
    CHECK_OK(cl_verifier_new(true, &aws));
    cl_buf doc = CL_BUF_INIT;
    X509 *chain[] = {f.root, f.inter};
    CHECK(test_document(&tagged, f.leaf_key, f.leaf, chain, 2, &doc) == 0);
    CHECK_ERR(cl_attestation_verify(aws, doc.data, doc.len, NULL, T0 * 1000ull, NULL), CL_EVERIFY,
              "cabundle[0] is not a trusted root");
    cl_verifier_free(aws);
    cl_buf_free(&doc);
    fixture_free(&f);
}

static void validity_checked_for_every_certificate(void)
{
    fixture f;
    fixture_make(&f, NULL, NULL, NULL, NULL);
    CHECK_OK(fixture_verify(&f, NULL, 0));
    /* leaf: expires T0+3h; intermediate: T0+30d; root: T0-365d..T0+3650d */
    CHECK_ERR(fixture_verify(&f, NULL, (T0 + 3 * 3600 + 1) * 1000ull), CL_EVERIFY,
              "certificate (the signing certificate) not valid at");
    CHECK_ERR(fixture_verify(&f, NULL, (T0 - 3601) * 1000ull), CL_EVERIFY, "not valid at");
    fixture_free(&f);

    cert_spec long_leaf = leaf_spec;
    long_leaf.not_after = T0 + 400 * DAY;
    fixture_make(&f, NULL, NULL, &long_leaf, NULL);
    CHECK_OK(fixture_verify(&f, NULL, 0)); /* warms the cache */
    CHECK_ERR(fixture_verify(&f, NULL, (T0 + 31 * DAY) * 1000ull), CL_EVERIFY,
              "certificate cabundle[1] not valid at 2026-02-01T00:00:00Z");
    fixture_free(&f);

    cert_spec short_root = root_spec;
    short_root.not_after = T0 + DAY;
    fixture_make(&f, &short_root, NULL, NULL, NULL);
    CHECK_OK(fixture_verify(&f, NULL, 0));
    CHECK_ERR(fixture_verify(&f, NULL, (T0 + DAY + 1) * 1000ull), CL_EVERIFY, "cabundle[0] (root) not valid");
    fixture_free(&f);
}

static void ca_flags_and_key_usage(void)
{
    fixture f;
    cert_spec not_ca = inter_spec;
    not_ca.basic_constraints = "critical,CA:FALSE";
    fixture_make(&f, NULL, &not_ca, NULL, NULL);
    CHECK_ERR(fixture_verify(&f, NULL, 0), CL_EVERIFY, "cabundle[1] is not a CA");
    fixture_free(&f);

    cert_spec no_certsign = inter_spec;
    no_certsign.key_usage = "critical,digitalSignature";
    fixture_make(&f, NULL, &no_certsign, NULL, NULL);
    CHECK_ERR(fixture_verify(&f, NULL, 0), CL_EVERIFY, "keyCertSign");
    fixture_free(&f);

    cert_spec leaf_ca = leaf_spec;
    leaf_ca.basic_constraints = "critical,CA:TRUE";
    fixture_make(&f, NULL, NULL, &leaf_ca, NULL);
    CHECK_ERR(fixture_verify(&f, NULL, 0), CL_EVERIFY, "is a CA");
    fixture_free(&f);

    cert_spec leaf_no_sign = leaf_spec;
    leaf_no_sign.key_usage = "keyEncipherment";
    fixture_make(&f, NULL, NULL, &leaf_no_sign, NULL);
    CHECK_ERR(fixture_verify(&f, NULL, 0), CL_EVERIFY, "digitalSignature");
    fixture_free(&f);

    cert_spec root_pathlen0 = root_spec;
    root_pathlen0.basic_constraints = "critical,CA:TRUE,pathlen:0";
    fixture_make(&f, &root_pathlen0, NULL, NULL, NULL);
    CHECK_ERR(fixture_verify(&f, NULL, 0), CL_EVERIFY, "path length");
    fixture_free(&f);

    cert_spec unknown_critical = leaf_spec;
    unknown_critical.extra_nid = NID_netscape_comment;
    unknown_critical.extra_nid_value = "critical,hello";
    fixture_make(&f, NULL, NULL, &unknown_critical, NULL);
    CHECK_ERR(fixture_verify(&f, NULL, 0), CL_EVERIFY, "unsupported critical extension");
    fixture_free(&f);

    cert_spec sha256_signed = inter_spec;
    sha256_signed.md = EVP_sha256();
    fixture_make(&f, NULL, &sha256_signed, NULL, NULL);
    CHECK_ERR(fixture_verify(&f, NULL, 0), CL_EVERIFY, "ecdsa-with-SHA384");
    fixture_free(&f);

    /* a P-256 signing certificate (the document itself signed by a P-384 key) */
    fixture_make(&f, NULL, NULL, NULL, "P-256");
    cl_buf doc = CL_BUF_INIT;
    doc_spec spec = {.timestamp_ms = T0 * 1000ull, .pcr0_fill = 1};
    CHECK(test_document(&spec, f.inter_key, f.leaf, (X509 *[]){f.root, f.inter}, 2, &doc) == 0);
    CHECK_ERR(cl_attestation_verify(f.v, doc.data, doc.len, NULL, T0 * 1000ull, NULL), CL_EVERIFY, "P-384");
    cl_buf_free(&doc);
    fixture_free(&f);
}

static void forged_links_rejected(void)
{
    fixture f;
    fixture_make(&f, NULL, NULL, NULL, NULL);
    CHECK_OK(fixture_verify(&f, NULL, 0)); /* the real links are now cached */

    /* An impostor intermediate with the same name but its own key, signed
     * by itself: the cache must not vouch for the leaf under it. */
    EVP_PKEY *fake_key = test_key("P-384");
    X509 *fake_inter = test_cert(&inter_spec, fake_key, f.root, fake_key);
    X509 *fake_leaf = test_cert(&leaf_spec, f.leaf_key, fake_inter, fake_key);
    X509 *chain[] = {f.root, fake_inter};
    doc_spec spec = {.timestamp_ms = T0 * 1000ull, .pcr0_fill = 1};
    cl_buf doc = CL_BUF_INIT;
    CHECK(test_document(&spec, f.leaf_key, fake_leaf, chain, 2, &doc) == 0);
    CHECK_ERR(cl_attestation_verify(f.v, doc.data, doc.len, NULL, T0 * 1000ull, NULL), CL_EVERIFY,
              "cabundle[1]: signature by its issuer does not verify");
    cl_buf_reset(&doc);

    /* The real leaf under the impostor intermediate. */
    CHECK(test_document(&spec, f.leaf_key, f.leaf, chain, 2, &doc) == 0);
    CHECK(cl_attestation_verify(f.v, doc.data, doc.len, NULL, T0 * 1000ull, NULL) == CL_EVERIFY);
    cl_buf_reset(&doc);

    /* A document signed by a key other than the leaf's. */
    CHECK(test_document(&spec, fake_key, f.leaf, (X509 *[]){f.root, f.inter}, 2, &doc) == 0);
    CHECK_ERR(cl_attestation_verify(f.v, doc.data, doc.len, NULL, T0 * 1000ull, NULL), CL_EVERIFY,
              "COSE signature does not verify");
    cl_buf_reset(&doc);

    /* The cached CA used as a signing certificate: the role is checked again. */
    CHECK(test_document(&spec, f.inter_key, f.inter, (X509 *[]){f.root}, 1, &doc) == 0);
    CHECK_ERR(cl_attestation_verify(f.v, doc.data, doc.len, NULL, T0 * 1000ull, NULL), CL_EVERIFY, "is a CA");
    cl_buf_free(&doc);
    X509_free(fake_inter);
    X509_free(fake_leaf);
    EVP_PKEY_free(fake_key);
    fixture_free(&f);
}

static void cache_reuses_and_stays_bounded(void)
{
    fixture f;
    fixture_make(&f, NULL, NULL, NULL, NULL);
    uint64_t hits, misses;
    for (int i = 0; i < 10; i++) {
        doc_spec spec = {.timestamp_ms = T0 * 1000ull + (uint64_t)i, .pcr0_fill = 1};
        CHECK_OK(fixture_verify(&f, &spec, 0));
    }
    cl_verifier_cache_stats(f.v, &hits, &misses);
    CHECK(misses == 2 && hits == 18); /* intermediate and leaf verified once each */

    cl_verifier_set_cache_size(f.v, 1); /* two links, one slot: every lookup misses */
    for (int i = 0; i < 3; i++)
        CHECK_OK(fixture_verify(&f, NULL, 0));
    uint64_t hits2, misses2;
    cl_verifier_cache_stats(f.v, &hits2, &misses2);
    CHECK(hits2 == hits && misses2 == misses + 6);

    cl_verifier_set_cache_size(f.v, 0);
    CHECK_OK(fixture_verify(&f, NULL, 0));
    cl_verifier_cache_stats(f.v, &hits2, &misses2);
    CHECK(hits2 == hits && misses2 == misses + 8);
    fixture_free(&f);
}

static void policies(void)
{
    fixture f;
    fixture_make(&f, NULL, NULL, NULL, NULL);
    uint8_t nonce[20];
    memset(nonce, 7, sizeof nonce);
    doc_spec spec = {.timestamp_ms = T0 * 1000ull, .pcr0_fill = 0xaa, .nonce = nonce, .nonce_len = 20};
    cl_buf raw = CL_BUF_INIT;
    X509 *chain[] = {f.root, f.inter};
    CHECK(test_document(&spec, f.leaf_key, f.leaf, chain, 2, &raw) == 0);
    cl_attestation_doc doc;
    CHECK_OK(cl_attestation_verify(f.v, raw.data, raw.len, NULL, T0 * 1000ull, &doc));
    uint64_t at = T0 * 1000ull;

    cl_attestation_policy p = {0};
    CHECK_OK(cl_attestation_check_policy(&doc, &p, at));
    p.pcr_mask = 1u << 0 | 1u << 5;
    memset(p.pcr_values[0], 0xaa, 48);
    p.pcr_lens[0] = 48;
    memset(p.pcr_values[5], 5, 48);
    p.pcr_lens[5] = 48;
    CHECK_OK(cl_attestation_check_policy(&doc, &p, at));
    p.pcr_values[5][47] ^= 1;
    CHECK_ERR(cl_attestation_check_policy(&doc, &p, at), CL_EVERIFY, "PCR5 does not match");
    p.pcr_mask = 1u << 20;
    p.pcr_lens[20] = 48;
    CHECK_ERR(cl_attestation_check_policy(&doc, &p, at), CL_EVERIFY, "PCR20 is not in the document");

    cl_attestation_policy n = {.check_nonce = true, .nonce = nonce, .nonce_len = 20};
    CHECK_OK(cl_attestation_check_policy(&doc, &n, at));
    uint8_t other[20] = {0};
    n.nonce = other;
    CHECK_ERR(cl_attestation_check_policy(&doc, &n, at), CL_EVERIFY, "nonce does not match");
    n.nonce_len = 19;
    CHECK_ERR(cl_attestation_check_policy(&doc, &n, at), CL_EVERIFY, "nonce does not match");

    cl_attestation_policy age = {.max_age_ms = 60000};
    CHECK_OK(cl_attestation_check_policy(&doc, &age, at + 60000));
    CHECK_ERR(cl_attestation_check_policy(&doc, &age, at + 61000), CL_EVERIFY, "61 s old");
    CHECK_ERR(cl_attestation_check_policy(&doc, &age, at - 3600000), CL_EVERIFY, "in the future");
    cl_attestation_doc_free(&doc);
    cl_buf_free(&raw);

    doc_spec debug = {.timestamp_ms = T0 * 1000ull, .pcr0_fill = 0};
    CHECK(test_document(&debug, f.leaf_key, f.leaf, chain, 2, &raw) == 0);
    cl_attestation_policy strict = {0}, lenient = {.allow_debug = true};
    CHECK_ERR(cl_attestation_verify(f.v, raw.data, raw.len, &strict, at, NULL), CL_EVERIFY, "debug-mode");
    CHECK_OK(cl_attestation_verify(f.v, raw.data, raw.len, &lenient, at, NULL));
    cl_buf_free(&raw);
    fixture_free(&f);
}

static void roots_are_checked(void)
{
    cl_verifier *v;
    CHECK_OK(cl_verifier_new(false, &v));
    EVP_PKEY *key = test_key("P-384");
    cert_spec not_ca = root_spec;
    not_ca.basic_constraints = NULL;
    X509 *bad = test_cert(&not_ca, key, NULL, NULL);
    uint8_t der[2048];
    size_t n = cert_der(bad, der, sizeof der);
    CHECK_ERR(cl_verifier_add_root_der(v, der, n), CL_EVERIFY, "not a CA");
    CHECK_ERR(cl_verifier_add_root_der(v, der, n - 1), CL_EVERIFY, "not a valid X.509");
    CHECK_ERR(cl_verifier_add_root_pem_file(v, "/nonexistent/root.pem"), CL_EIO, "cannot open");
    X509_free(bad);
    EVP_PKEY_free(key);
    cl_verifier_free(v);
}

int main(void)
{
    RUN(aws_root_is_embedded);
    RUN(real_documents);
    RUN(real_deviations_parse);
    RUN(bad_selfsigned_rejected);
    RUN(every_bit_flip_rejected);
    RUN(truncations_and_trailing_bytes_rejected);
    RUN(field_rules);
    RUN(built_chain_verifies);
    RUN(validity_checked_for_every_certificate);
    RUN(ca_flags_and_key_usage);
    RUN(forged_links_rejected);
    RUN(cache_reuses_and_stays_bounded);
    RUN(policies);
    RUN(roots_are_checked);
    return test_summary();
}

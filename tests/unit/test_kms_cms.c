/* CiphertextForRecipient: the real KMS vector parses exactly as described
 * in tests/vectors/kms/README.md; envelopes of the same shape made
 * here with OpenSSL open with the Recipient's key (DER and indefinite-
 * length BER); every other shape, truncation and structural damage is
 * refused; the Recipient's document carries its key. */
#include "cloister/core/attestation.h"
#include "cloister/core/encoding.h"
#include "cloister/enclave/kms.h"
#include "cloister/sim/nsm_sim.h"
#include "test.h"

#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>
#include <stdbool.h>
#include <unistd.h>

static cl_buf vector;
static bool have_vector;

static bool hex_is(cl_slice s, const char *hex)
{
    char buf[1024];
    if (s.len * 2 + 1 > sizeof buf)
        return false;
    cl_hex_encode(s.data, s.len, buf);
    return !strcmp(buf, hex);
}

static void real_vector_parses_exactly(void)
{
    if (!have_vector)
        return;
    CHECK(vector.len == 493);
    cl_kms_cms_info info;
    CHECK_OK(cl_kms_cms_parse(vector.data, vector.len, &info));
    CHECK(info.version == 2);
    CHECK(info.ktri_version == 2);
    CHECK(info.subject_key_id.len == 32);
    CHECK(hex_is(info.subject_key_id, "7087b55df94ba3255cdf3c01840a2aa3ec93620625d601cf56f97bde7a3d2eb1"));
    CHECK(info.encrypted_key.len == 256);
    cl_slice prefix = {info.encrypted_key.data, 8};
    CHECK(hex_is(prefix, "a0614593a030ee33"));
    CHECK(hex_is(info.iv, "688c6d5f7f31b0fecedf09f2e7c99ac9"));
    CHECK(info.content.len == 48);
    cl_slice content = {info.content.data, info.content.len};
    CHECK(hex_is(content, "70e5caaffd49ad24efe15bf903be9d19895b777d269b57b025f6f67e7ef93f94"
                          "464515f2ebe034ea0b7621a1ff19292e"));
    cl_kms_cms_info_free(&info);
}

/* OpenSSL's reading agrees with ours; only the key is wrong (KMS sealed it
 * for a key whose private half is not public). */
static void real_vector_needs_its_own_key(void)
{
    if (!have_vector)
        return;
    cl_kms_recipient *r = NULL;
    CHECK_OK(cl_kms_recipient_new(NULL, &r));
    cl_buf pt = CL_BUF_INIT;
    CHECK_ERR(cl_kms_recipient_open(r, vector.data, vector.len, &pt), CL_EVERIFY, "does not open it");
    CHECK(pt.len == 0);
    cl_buf_free(&pt);
    cl_kms_recipient_free(r);
}

static void real_vector_truncations_refused(void)
{
    if (!have_vector)
        return;
    int accepted = 0;
    for (size_t n = 0; n < vector.len; n++) {
        cl_kms_cms_info info;
        if (cl_kms_cms_parse(vector.data, n, &info) == CL_OK) {
            accepted++;
            cl_kms_cms_info_free(&info);
        }
    }
    CHECK(accepted == 0);
    /* and a byte too many */
    cl_buf longer = CL_BUF_INIT;
    CHECK_OK(cl_buf_append(&longer, vector.data, vector.len));
    CHECK_OK(cl_buf_append_u8(&longer, 0));
    cl_kms_cms_info info;
    CHECK_ERR(cl_kms_cms_parse(longer.data, longer.len, &info), CL_EPARSE, "trailing");
    cl_buf_free(&longer);
}

/* Offsets in the vector (openssl asn1parse): the bytes that are data, not
 * structure, may change and still parse; every other byte's flip must be
 * refused. */
static void real_vector_structural_flips_refused(void)
{
    if (!have_vector)
        return;
    static const size_t data_ranges[][2] = {
        {33, 65},   /* subjectKeyIdentifier */
        {131, 387}, /* encryptedKey */
        {415, 431}, /* IV */
        {435, 483}, /* encrypted content */
    };
    int wrongly_accepted = 0, data_accepted = 0, data_bytes = 0;
    for (size_t i = 0; i < vector.len; i++) {
        bool is_data = false;
        for (size_t r = 0; r < 4; r++)
            is_data |= i >= data_ranges[r][0] && i < data_ranges[r][1];
        for (int bit = 0; bit < 8; bit++) {
            vector.data[i] ^= (uint8_t)(1u << bit);
            cl_kms_cms_info info;
            int rc = cl_kms_cms_parse(vector.data, vector.len, &info);
            if (rc == CL_OK)
                cl_kms_cms_info_free(&info);
            vector.data[i] ^= (uint8_t)(1u << bit);
            if (is_data) {
                data_bytes++;
                data_accepted += rc == CL_OK;
            } else if (rc == CL_OK) {
                wrongly_accepted++;
                fprintf(stderr, "flip of bit %d at %zu accepted\n", bit, i);
            }
        }
    }
    CHECK(wrongly_accepted == 0);
    CHECK(data_accepted == data_bytes);
}

static void patched(size_t offset, uint8_t from, uint8_t to, int code, const char *fragment)
{
    if (!have_vector)
        return;
    CHECK(vector.data[offset] == from);
    vector.data[offset] = to;
    cl_kms_cms_info info;
    CHECK_ERR(cl_kms_cms_parse(vector.data, vector.len, &info), code, fragment);
    vector.data[offset] = from;
}

static void real_vector_algorithm_changes_refused(void)
{
    patched(412, 0x2a, 0x02, CL_EVERIFY, "not AES-256-CBC");      /* aes-128-cbc */
    patched(94, 0x01, 0x02, CL_EVERIFY, "not SHA-256");          /* OAEP hash sha384 */
    patched(124, 0x01, 0x03, CL_EVERIFY, "not SHA-256");         /* MGF1 hash sha512 */
    patched(77, 0x07, 0x01, CL_EVERIFY, "not RSAES-OAEP");       /* rsaEncryption: PKCS#1 v1.5 */
    patched(111, 0x08, 0x09, CL_EVERIFY, "not MGF1");
    patched(30, 0x02, 0x00, CL_EVERIFY, "version 0");
    patched(19, 0x02, 0x00, CL_EVERIFY, "EnvelopedData version 0");
    patched(12, 0x03, 0x01, CL_EVERIFY, "not envelopedData");    /* id-data */
    patched(399, 0x01, 0x02, CL_EVERIFY, "not data");            /* signedData as content type */
}

/* ---- envelopes made here ------------------------------------------------ */

static EVP_PKEY *key_a, *key_b;
static X509 *cert_a, *cert_b;

static X509 *cert_for(EVP_PKEY *key)
{
    X509 *c = X509_new();
    unsigned char *spki = NULL;
    int n = i2d_PUBKEY(key, &spki);
    unsigned char ski[32];
    EVP_Digest(spki, (size_t)n, ski, NULL, EVP_sha256(), NULL);
    OPENSSL_free(spki);
    char hex[65];
    cl_hex_encode(ski, 32, hex);
    ASN1_INTEGER_set(X509_get_serialNumber(c), 1);
    X509_gmtime_adj(X509_getm_notBefore(c), 0);
    X509_gmtime_adj(X509_getm_notAfter(c), 3600);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(c), "CN", MBSTRING_ASC, (const unsigned char *)"recipient", -1,
                               -1, 0);
    X509_set_issuer_name(c, X509_get_subject_name(c));
    X509_set_pubkey(c, key);
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, c, c, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, NID_subject_key_identifier, hex);
    X509_add_ext(c, ext, -1);
    X509_EXTENSION_free(ext);
    X509_sign(c, key, EVP_sha256());
    return c;
}

typedef struct shape {
    const EVP_CIPHER *cipher;
    bool oaep;         /* else PKCS#1 v1.5 */
    const EVP_MD *md;  /* OAEP hash and MGF1 hash */
    int recipients;    /* each cert_a */
    bool stream;       /* indefinite-length BER */
    bool by_issuer;    /* issuerAndSerialNumber instead of the key id */
} shape;

static const shape KMS_SHAPE = {NULL, true, NULL, 1, false, false};

static void envelope(const shape *s, X509 *to, const void *pt, size_t len, cl_buf *out)
{
    cl_buf_reset(out);
    const EVP_CIPHER *cipher = s->cipher ? s->cipher : EVP_aes_256_cbc();
    int flags = CMS_BINARY | CMS_PARTIAL | (s->stream ? CMS_STREAM : 0);
    CMS_ContentInfo *cms = CMS_encrypt(NULL, NULL, cipher, flags);
    for (int i = 0; i < s->recipients; i++) {
        CMS_RecipientInfo *ri =
            CMS_add1_recipient_cert(cms, to, (s->by_issuer ? 0 : CMS_USE_KEYID) | (s->oaep ? CMS_KEY_PARAM : 0));
        if (s->oaep) {
            EVP_PKEY_CTX *pctx = CMS_RecipientInfo_get0_pkey_ctx(ri);
            EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_OAEP_PADDING);
            EVP_PKEY_CTX_set_rsa_oaep_md(pctx, s->md ? s->md : EVP_sha256());
            EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, s->md ? s->md : EVP_sha256());
        }
    }
    BIO *in = BIO_new_mem_buf(pt, (int)len);
    BIO *mem = BIO_new(BIO_s_mem());
    int ok;
    if (s->stream) {
        ok = i2d_CMS_bio_stream(mem, cms, in, flags);
    } else {
        ok = CMS_final(cms, in, NULL, CMS_BINARY) == 1 && i2d_CMS_bio(mem, cms) == 1;
    }
    CHECK(ok == 1);
    if (ok != 1)
        ERR_print_errors_fp(stderr);
    char *p = NULL;
    long n = BIO_get_mem_data(mem, &p);
    CHECK_OK(cl_buf_append(out, p, (size_t)n));
    BIO_free(in);
    BIO_free(mem);
    CMS_ContentInfo_free(cms);
}

static void opens_envelopes_of_the_kms_shape(void)
{
    static const char secret[] = "a secret sealed for one enclave session";
    cl_kms_recipient *r = NULL;
    CHECK_OK(cl_kms_recipient_from_key(NULL, key_a, &r));
    for (int stream = 0; stream < 2; stream++) {
        shape s = KMS_SHAPE;
        s.stream = stream;
        cl_buf env = CL_BUF_INIT, pt = CL_BUF_INIT;
        envelope(&s, cert_a, secret, sizeof secret - 1, &env);
        if (stream) /* indefinite lengths, as KMS sends */
            CHECK(env.len > 4 && env.data[0] == 0x30 && env.data[1] == 0x80);
        cl_kms_cms_info info;
        CHECK_OK(cl_kms_cms_parse(env.data, env.len, &info));
        CHECK(info.subject_key_id.len == 32 && info.iv.len == 16 && info.content.len == 48);
        cl_kms_cms_info_free(&info);
        CHECK_OK(cl_kms_recipient_open(r, env.data, env.len, &pt));
        CHECK(pt.len == sizeof secret - 1 && !memcmp(pt.data, secret, pt.len));
        /* 1-byte and block-sized secrets, and a 32-byte data key */
        for (size_t n = 1; n <= 64; n += 15) {
            uint8_t buf[64];
            memset(buf, (int)n, sizeof buf);
            envelope(&s, cert_a, buf, n, &env);
            CHECK_OK(cl_kms_recipient_open(r, env.data, env.len, &pt));
            CHECK(pt.len == n && !memcmp(pt.data, buf, n));
        }
        cl_buf_free(&env);
        cl_buf_free(&pt);
    }
    cl_kms_recipient_free(r);
}

static void other_recipients_key_refused(void)
{
    cl_kms_recipient *r = NULL;
    CHECK_OK(cl_kms_recipient_from_key(NULL, key_b, &r));
    cl_buf env = CL_BUF_INIT, pt = CL_BUF_INIT;
    envelope(&KMS_SHAPE, cert_a, "x", 1, &env);
    CHECK_ERR(cl_kms_recipient_open(r, env.data, env.len, &pt), CL_EVERIFY, "does not open it");
    /* a damaged encrypted key or content */
    cl_kms_recipient *ra = NULL;
    CHECK_OK(cl_kms_recipient_from_key(NULL, key_a, &ra));
    cl_kms_cms_info info;
    CHECK_OK(cl_kms_cms_parse(env.data, env.len, &info));
    size_t key_at = (size_t)(info.encrypted_key.data - env.data);
    size_t last = env.len - 1; /* the content's last byte: the padding block */
    cl_kms_cms_info_free(&info);
    env.data[key_at + 100] ^= 1;
    CHECK_ERR(cl_kms_recipient_open(ra, env.data, env.len, &pt), CL_EVERIFY, "does not open it");
    env.data[key_at + 100] ^= 1;
    CHECK_OK(cl_kms_recipient_open(ra, env.data, env.len, &pt));
    env.data[last] ^= 0x80;
    CHECK(cl_kms_recipient_open(ra, env.data, env.len, &pt) < 0);
    CHECK(pt.len == 0);
    cl_buf_free(&env);
    cl_buf_free(&pt);
    cl_kms_recipient_free(r);
    cl_kms_recipient_free(ra);
}

static void other_shapes_refused(void)
{
    cl_kms_recipient *r = NULL;
    CHECK_OK(cl_kms_recipient_from_key(NULL, key_a, &r));
    struct {
        shape s;
        const char *fragment;
    } cases[] = {
        {{EVP_aes_128_cbc(), true, NULL, 1, false, false}, "not AES-256-CBC"},
        {{EVP_aes_256_gcm(), true, NULL, 1, false, false}, NULL}, /* authEnvelopedData or refused algorithm */
        {{NULL, false, NULL, 1, false, false}, "not RSAES-OAEP"},
        {{NULL, true, EVP_sha1(), 1, false, false}, "SHA-1 is refused"},
        {{NULL, true, EVP_sha384(), 1, false, false}, "not SHA-256"},
        {{NULL, true, NULL, 2, false, false}, "more than one recipient"},
        {{NULL, true, NULL, 2, true, false}, "more than one recipient"},
        {{NULL, true, NULL, 1, false, true}, "version 0"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cl_buf env = CL_BUF_INIT, pt = CL_BUF_INIT;
        envelope(&cases[i].s, cert_a, "sealed", 6, &env);
        cl_error_clear();
        int rc = cl_kms_recipient_open(r, env.data, env.len, &pt);
        CHECK(rc == CL_EVERIFY || rc == CL_EPARSE);
        CHECK(pt.len == 0);
        if (cases[i].fragment && !strstr(cl_error_message(), cases[i].fragment)) {
            fprintf(stderr, "case %zu: '%s' lacks '%s'\n", i, cl_error_message(), cases[i].fragment);
            CHECK(false);
        }
        cl_buf_free(&env);
        cl_buf_free(&pt);
    }
    cl_kms_recipient_free(r);
}

static void garbage_refused(void)
{
    cl_kms_cms_info info;
    CHECK_ERR(cl_kms_cms_parse(NULL, 0, &info), CL_EPARSE, "empty");
    const uint8_t not_cms[] = "{\"not\": \"cms\"}";
    CHECK_ERR(cl_kms_cms_parse(not_cms, sizeof not_cms - 1, &info), CL_EPARSE, "ContentInfo");
    const uint8_t huge_len[] = {0x30, 0x84, 0xff, 0xff, 0xff, 0xff, 0x00};
    CHECK_ERR(cl_kms_cms_parse(huge_len, sizeof huge_len, &info), CL_EPARSE, "exceeds");
    const uint8_t long_len[] = {0x30, 0x85, 1, 1, 1, 1, 1};
    CHECK_ERR(cl_kms_cms_parse(long_len, sizeof long_len, &info), CL_EPARSE, "length of 5 bytes");
    const uint8_t indef_prim[] = {0x30, 0x80, 0x06, 0x80, 0x00, 0x00, 0x00, 0x00};
    CHECK_ERR(cl_kms_cms_parse(indef_prim, sizeof indef_prim, &info), CL_EPARSE, "primitive");
    cl_buf big = CL_BUF_INIT;
    CHECK_OK(cl_buf_reserve(&big, 70000));
    memset(big.data, 0x30, 70000);
    big.len = 70000;
    CHECK_ERR(cl_kms_cms_parse(big.data, big.len, &info), CL_ELIMIT, "65536");
    cl_buf_free(&big);
}

static void recipient_key_rules(void)
{
    cl_kms_recipient *r = NULL;
    EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    CHECK_ERR(cl_kms_recipient_from_key(NULL, ec, &r), CL_EINVAL, "RSA key");
    EVP_PKEY_free(ec);
    EVP_PKEY *small = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
    CHECK_ERR(cl_kms_recipient_from_key(NULL, small, &r), CL_EINVAL, "2048");
    EVP_PKEY_free(small);
    CHECK_OK(cl_kms_recipient_new(NULL, &r));
    cl_buf doc = CL_BUF_INIT;
    CHECK_ERR(cl_kms_recipient_document(r, &doc), CL_EINVAL, "no NSM");
    cl_kms_recipient_free(r);
}

/* The document from the (in-process) simulator carries the DER
 * SubjectPublicKeyInfo of the session key in public_key. */
static void document_carries_the_public_key(void)
{
    char dir[] = "/tmp/cloister-kms-cms.XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    cl_nsm_sim_config cfg = {.state_dir = dir};
    cl_nsm_sim *sim = NULL;
    cl_nsm *nsm = NULL;
    CHECK_OK(cl_nsm_sim_new(&cfg, &sim));
    CHECK_OK(cl_nsm_open_sim(sim, &nsm));
    cl_kms_recipient *r = NULL, *r2 = NULL;
    CHECK_OK(cl_kms_recipient_new(nsm, &r));
    CHECK_OK(cl_kms_recipient_new(nsm, &r2));
    cl_buf doc = CL_BUF_INIT;
    CHECK_OK(cl_kms_recipient_document(r, &doc));
    cl_attestation_doc d;
    CHECK_OK(cl_attestation_parse(doc.data, doc.len, &d));
    cl_slice spki = cl_kms_recipient_public_key(r), spki2 = cl_kms_recipient_public_key(r2);
    CHECK(d.has_public_key && d.public_key.len == spki.len && !memcmp(d.public_key.data, spki.data, spki.len));
    CHECK(spki.len == spki2.len && memcmp(spki.data, spki2.data, spki.len) != 0); /* fresh per session */
    const unsigned char *p = d.public_key.data;
    EVP_PKEY *k = d2i_PUBKEY(NULL, &p, (long)d.public_key.len);
    CHECK(k && EVP_PKEY_is_a(k, "RSA") && EVP_PKEY_get_bits(k) == 2048);
    EVP_PKEY_free(k);
    cl_attestation_doc_free(&d);
    cl_buf_free(&doc);
    cl_kms_recipient_free(r);
    cl_kms_recipient_free(r2);
    cl_nsm_close(nsm);
    cl_nsm_sim_free(sim);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0);
}

int main(void)
{
    /* tests/vectors is part of the repository: without the sample the
     * run fails, it does not quietly pass the checks that need it */
    const char *path = test_vector_path("kms/kms-ciphertext-for-recipient.ber");
    have_vector = path && cl_read_file(path, 1 << 20, &vector) == CL_OK;
    if (!have_vector) {
        fprintf(stderr, "FAIL: the real KMS sample tests/vectors/kms/kms-ciphertext-for-recipient.ber "
                        "cannot be read\n");
        test_failed++;
    }
    key_a = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    key_b = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    cert_a = cert_for(key_a);
    cert_b = cert_for(key_b);
    RUN(real_vector_parses_exactly);
    RUN(real_vector_needs_its_own_key);
    RUN(real_vector_truncations_refused);
    RUN(real_vector_structural_flips_refused);
    RUN(real_vector_algorithm_changes_refused);
    RUN(opens_envelopes_of_the_kms_shape);
    RUN(other_recipients_key_refused);
    RUN(other_shapes_refused);
    RUN(garbage_refused);
    RUN(recipient_key_rules);
    RUN(document_carries_the_public_key);
    X509_free(cert_a);
    X509_free(cert_b);
    EVP_PKEY_free(key_a);
    EVP_PKEY_free(key_b);
    cl_buf_free(&vector);
    return test_summary();
}

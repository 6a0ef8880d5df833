#include "cloister/core/address.h"
#include "cloister/core/attestation.h"
#include "cloister/core/cose.h"
#include "cloister/core/encoding.h"
#include "cloister/sim/nsm_sim.h"
#include "test.h"

#include <dirent.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define INSTANCE_ID "i-0123456789abcdef0"
#define HOUR_MS (3600ull * 1000)
#define DAY_MS (24 * HOUR_MS)

static char tmpdir[64];
static uint64_t fake_now = 1725719859545ull; /* 2024-09-07 */

static uint64_t test_clock(void *ctx)
{
    (void)ctx;
    return fake_now;
}

static void state_path(const char *name, char *out, size_t n)
{
    snprintf(out, n, "%s/%s", tmpdir, name);
}

static cl_nsm_sim_config config_for(const char *state)
{
    cl_nsm_sim_config cfg = {0};
    static char dir[256];
    state_path(state, dir, sizeof dir);
    cfg.state_dir = dir;
    cfg.instance_id = INSTANCE_ID;
    cfg.clock = test_clock;
    return cfg;
}

static void sha384_of(const void *a, size_t alen, const void *b, size_t blen, uint8_t out[48])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned int n = 0;
    if (!md || EVP_DigestInit_ex(md, EVP_sha384(), NULL) != 1 || EVP_DigestUpdate(md, a, alen) != 1 ||
        (blen && EVP_DigestUpdate(md, b, blen) != 1) || EVP_DigestFinal_ex(md, out, &n) != 1)
        memset(out, 0xee, 48);
    EVP_MD_CTX_free(md);
}

static bool read_pcr(cl_nsm *nsm, uint16_t index, uint8_t out[48], bool *locked)
{
    cl_buf v = CL_BUF_INIT;
    bool ok = cl_nsm_describe_pcr(nsm, index, locked, &v) == CL_OK && v.len == 48;
    if (ok)
        memcpy(out, v.data, 48);
    cl_buf_free(&v);
    return ok;
}

/* Sends raw bytes, expects {"Error": code}. */
static void expect_raw_error(cl_nsm_sim *sim, const uint8_t *req, size_t len, int code, int line)
{
    cl_buf resp = CL_BUF_INIT;
    cl_nsm_response r;
    cl_cbor_doc doc;
    int rc = cl_nsm_sim_handle(sim, req, len, &resp);
    if (rc == CL_OK)
        rc = cl_nsm_response_decode(resp.data, resp.len, &r, &doc);
    if (rc != CL_OK || r.op != -1 || r.error_code != code) {
        test_current_failed = 1;
        fprintf(stderr, "%s:%d: expected NSM error %s, got rc=%d op=%d error=%s (%s)\n", __FILE__, line,
                cl_nsm_error_name(code), rc, rc == CL_OK ? r.op : 0,
                rc == CL_OK ? cl_nsm_error_name(r.error_code) : "-", cl_error_message());
    }
    if (rc == CL_OK)
        cl_cbor_doc_free(&doc);
    cl_buf_free(&resp);
}
#define EXPECT_RAW_ERROR(sim, req, len, code) expect_raw_error(sim, req, len, code, __LINE__)

static cl_nsm_sim *sim_a;
static cl_nsm *nsm_a;

static void describe_nsm_fields(void)
{
    cl_nsm_description d;
    CHECK_OK(cl_nsm_describe(nsm_a, &d));
    CHECK(d.version_major == 1 && d.version_minor == 0 && d.version_patch == 0);
    CHECK(d.max_pcrs == 32 && d.locked_pcrs == 0xffffu && !strcmp(d.digest, "SHA384"));
    CHECK(!strncmp(d.module_id, INSTANCE_ID "-enc", strlen(INSTANCE_ID) + 4));
    CHECK(strlen(d.module_id) == strlen(INSTANCE_ID) + 4 + 16);
    CHECK(!strcmp(d.module_id, cl_nsm_sim_module_id(sim_a)));
}

static void default_pcrs(void)
{
    uint8_t pcr[48], want[48], zero[48] = {0};
    bool locked;
    CHECK(read_pcr(nsm_a, 0, pcr, &locked) && locked);
    sha384_of("cloister nsm-sim PCR0", 21, NULL, 0, want);
    CHECK(!memcmp(pcr, want, 48));
    CHECK(read_pcr(nsm_a, 2, pcr, &locked) && locked);
    sha384_of("cloister nsm-sim PCR2", 21, NULL, 0, want);
    CHECK(!memcmp(pcr, want, 48));
    /* PCR4: extended once from zero with the instance id. */
    CHECK(read_pcr(nsm_a, 4, pcr, &locked) && locked);
    sha384_of(zero, 48, INSTANCE_ID, strlen(INSTANCE_ID), want);
    CHECK(!memcmp(pcr, want, 48));
    CHECK(read_pcr(nsm_a, 3, pcr, &locked) && locked && !memcmp(pcr, zero, 48));
    CHECK(read_pcr(nsm_a, 15, pcr, &locked) && locked);
    CHECK(read_pcr(nsm_a, 16, pcr, &locked) && !locked && !memcmp(pcr, zero, 48));
    CHECK(read_pcr(nsm_a, 31, pcr, &locked) && !locked);
}

static void extend_is_sha384_of_old_and_data(void)
{
    uint8_t before[48], after[48], want[48];
    bool locked;
    CHECK(read_pcr(nsm_a, 17, before, &locked));
    static const uint8_t data[] = "measurement";
    cl_buf value = CL_BUF_INIT;
    CHECK_OK(cl_nsm_extend_pcr(nsm_a, 17, data, sizeof data - 1, &value));
    sha384_of(before, 48, data, sizeof data - 1, want);
    CHECK(value.len == 48 && !memcmp(value.data, want, 48));
    CHECK(read_pcr(nsm_a, 17, after, &locked) && !memcmp(after, want, 48));
    /* Empty data still extends. */
    CHECK_OK(cl_nsm_extend_pcr(nsm_a, 17, data, 0, &value));
    sha384_of(want, 48, NULL, 0, after);
    CHECK(value.len == 48 && !memcmp(value.data, after, 48));
    /* The largest accepted input. */
    uint8_t big[CL_NSM_SIM_EXTEND_MAX] = {0};
    CHECK_OK(cl_nsm_extend_pcr(nsm_a, 17, big, sizeof big, &value));
    cl_buf_free(&value);
}

static void locks_and_indexes(void)
{
    uint8_t one = 1, pcr[48];
    bool locked;
    CHECK_ERR(cl_nsm_extend_pcr(nsm_a, 0, &one, 1, NULL), CL_ENSM, "ReadOnlyIndex");
    CHECK(cl_nsm_last_error(nsm_a) == CL_NSM_READ_ONLY_INDEX);
    CHECK_ERR(cl_nsm_extend_pcr(nsm_a, 15, &one, 1, NULL), CL_ENSM, "ReadOnlyIndex");
    CHECK_OK(cl_nsm_extend_pcr(nsm_a, 16, &one, 1, NULL));
    CHECK_OK(cl_nsm_lock_pcr(nsm_a, 16));
    CHECK_OK(cl_nsm_lock_pcr(nsm_a, 16)); /* locking again is harmless */
    CHECK(read_pcr(nsm_a, 16, pcr, &locked) && locked);
    CHECK_ERR(cl_nsm_extend_pcr(nsm_a, 16, &one, 1, NULL), CL_ENSM, "ReadOnlyIndex");
    CHECK_ERR(cl_nsm_lock_pcr(nsm_a, 32), CL_ENSM, "InvalidIndex");
    CHECK(cl_nsm_last_error(nsm_a) == CL_NSM_INVALID_INDEX);
    CHECK_ERR(cl_nsm_describe_pcr(nsm_a, 32, &locked, NULL), CL_ENSM, "InvalidIndex");
    CHECK_ERR(cl_nsm_describe_pcr(nsm_a, 65535, &locked, NULL), CL_ENSM, "InvalidIndex");
    CHECK_ERR(cl_nsm_extend_pcr(nsm_a, 40, &one, 1, NULL), CL_ENSM, "InvalidIndex");
    CHECK_ERR(cl_nsm_lock_pcrs(nsm_a, 33), CL_ENSM, "InvalidIndex");
    CHECK_OK(cl_nsm_lock_pcrs(nsm_a, 20));
    cl_nsm_description d;
    CHECK_OK(cl_nsm_describe(nsm_a, &d));
    CHECK(d.locked_pcrs == 0xfffffu);
    CHECK_ERR(cl_nsm_extend_pcr(nsm_a, 19, &one, 1, NULL), CL_ENSM, "ReadOnlyIndex");
    CHECK_OK(cl_nsm_extend_pcr(nsm_a, 20, &one, 1, NULL));
    CHECK_OK(cl_nsm_lock_pcrs(nsm_a, 0));
}

static void input_limits(void)
{
    static uint8_t big[CL_NSM_SIM_FIELD_MAX + 1];
    cl_buf doc = CL_BUF_INIT;
    CHECK_ERR(cl_nsm_extend_pcr(nsm_a, 21, big, sizeof big, NULL), CL_ENSM, "InputTooLarge");
    CHECK_ERR(cl_nsm_attestation(nsm_a, big, sizeof big, NULL, 0, NULL, 0, &doc), CL_ENSM, "InputTooLarge");
    CHECK_ERR(cl_nsm_attestation(nsm_a, NULL, 0, big, sizeof big, NULL, 0, &doc), CL_ENSM, "InputTooLarge");
    CHECK_ERR(cl_nsm_attestation(nsm_a, NULL, 0, NULL, 0, big, sizeof big, &doc), CL_ENSM, "InputTooLarge");
    CHECK(cl_nsm_last_error(nsm_a) == CL_NSM_INPUT_TOO_LARGE);
    /* 1024 bytes in each of the three fields is what real documents carry. */
    CHECK_OK(cl_nsm_attestation(nsm_a, big, 1024, big, 1024, big, 1024, &doc));
    cl_attestation_doc parsed;
    CHECK_OK(cl_attestation_parse(doc.data, doc.len, &parsed));
    CHECK(parsed.user_data.len == 1024 && parsed.nonce.len == 1024 && parsed.public_key.len == 1024);
    cl_attestation_doc_free(&parsed);
    cl_buf_free(&doc);
}

static void random_bytes(void)
{
    cl_buf a = CL_BUF_INIT, b = CL_BUF_INIT;
    static const uint8_t get_random[] = "\x69" "GetRandom";
    CHECK_OK(cl_nsm_exchange(nsm_a, get_random, sizeof get_random - 1, &a));
    CHECK_OK(cl_nsm_exchange(nsm_a, get_random, sizeof get_random - 1, &b));
    cl_nsm_response ra, rb;
    cl_cbor_doc da, db;
    CHECK_OK(cl_nsm_response_decode(a.data, a.len, &ra, &da));
    CHECK_OK(cl_nsm_response_decode(b.data, b.len, &rb, &db));
    CHECK(ra.op == CL_NSM_GET_RANDOM && ra.data.len == 256 && rb.data.len == 256);
    CHECK(memcmp(ra.data.data, rb.data.data, 256) != 0);
    cl_cbor_doc_free(&da);
    cl_cbor_doc_free(&db);
    uint8_t many[1000];
    memset(many, 0, sizeof many);
    CHECK_OK(cl_nsm_get_random(nsm_a, many, sizeof many));
    size_t zeros = 0;
    for (size_t i = 0; i < sizeof many; i++)
        zeros += many[i] == 0;
    CHECK(zeros < 30);
    cl_buf_free(&a);
    cl_buf_free(&b);
}

static void bad_requests_answered_with_errors(void)
{
    EXPECT_RAW_ERROR(sim_a, (const uint8_t *)"\xff", 1, CL_NSM_INVALID_ARGUMENT);
    EXPECT_RAW_ERROR(sim_a, (const uint8_t *)"", 0, CL_NSM_INVALID_ARGUMENT);
    EXPECT_RAW_ERROR(sim_a, (const uint8_t *)"\x63" "Foo", 4, CL_NSM_INVALID_ARGUMENT);
    EXPECT_RAW_ERROR(sim_a, (const uint8_t *)"\x6b" "DescribePCR", 12, CL_NSM_INVALID_ARGUMENT);
    static const uint8_t index_too_big[] = "\xa1\x6b" "DescribePCR" "\xa1\x65" "index" "\x1a\x00\x01\x00\x00";
    EXPECT_RAW_ERROR(sim_a, index_too_big, sizeof index_too_big - 1, CL_NSM_INVALID_ARGUMENT);
    static uint8_t huge[CL_NSM_REQUEST_MAX + 10];
    EXPECT_RAW_ERROR(sim_a, huge, sizeof huge, CL_NSM_INPUT_TOO_LARGE);
}

static bool cert_has_critical(X509 *cert, int nid, bool critical)
{
    int at = X509_get_ext_by_NID(cert, nid, -1);
    return at >= 0 && (X509_EXTENSION_get_critical(X509_get_ext(cert, at)) != 0) == critical;
}

static X509 *d2i(cl_slice der)
{
    const unsigned char *p = der.data;
    return d2i_X509(NULL, &p, (long)der.len);
}

static int64_t cert_seconds(const ASN1_TIME *t)
{
    struct tm tm;
    return ASN1_TIME_to_tm(t, &tm) == 1 ? (int64_t)timegm(&tm) : -1;
}

static void check_chain_extensions(const cl_attestation_doc *doc)
{
    CHECK(doc->cabundle_len == 4);
    static const long path_lens[] = {-1, 2, 1, 0};
    for (size_t i = 0; i < doc->cabundle_len && i < 4; i++) {
        CHECK(doc->cabundle[i].len <= 1024);
        X509 *c = d2i(doc->cabundle[i]);
        CHECK(c != NULL);
        if (!c)
            continue;
        CHECK(X509_get_signature_nid(c) == NID_ecdsa_with_SHA384);
        CHECK((X509_get_extension_flags(c) & EXFLAG_CA) != 0);
        CHECK(X509_get_pathlen(c) == path_lens[i]);
        CHECK(cert_has_critical(c, NID_basic_constraints, true));
        CHECK(cert_has_critical(c, NID_key_usage, true));
        CHECK(X509_get_ext_by_NID(c, NID_subject_key_identifier, -1) >= 0);
        CHECK((X509_get_ext_by_NID(c, NID_authority_key_identifier, -1) >= 0) == (i > 0));
        uint32_t ku = X509_get_key_usage(c);
        if (i < 3)
            CHECK(ku == (KU_DIGITAL_SIGNATURE | KU_KEY_CERT_SIGN | KU_CRL_SIGN));
        else
            CHECK(ku == KU_KEY_CERT_SIGN);
        if (i == 0) {
            int64_t life = cert_seconds(X509_get0_notAfter(c)) - cert_seconds(X509_get0_notBefore(c));
            CHECK(life > 29LL * 365 * 86400);
            char cn[128];
            X509_NAME_get_text_by_NID(X509_get_subject_name(c), NID_commonName, cn, sizeof cn);
            CHECK(!strcmp(cn, "cloister-nsm-sim.nitro-enclaves"));
        }
        X509_free(c);
    }
    CHECK(doc->certificate.len <= 1024);
    X509 *leaf = d2i(doc->certificate);
    CHECK(leaf != NULL);
    if (leaf) {
        CHECK((X509_get_extension_flags(leaf) & EXFLAG_CA) == 0);
        CHECK(cert_has_critical(leaf, NID_basic_constraints, true));
        CHECK(cert_has_critical(leaf, NID_key_usage, false));
        CHECK(X509_get_key_usage(leaf) == (KU_DIGITAL_SIGNATURE | KU_NON_REPUDIATION));
        int64_t nb = cert_seconds(X509_get0_notBefore(leaf)), na = cert_seconds(X509_get0_notAfter(leaf));
        CHECK(na - nb == 3 * 3600);
        CHECK(nb <= (int64_t)(doc->timestamp_ms / 1000) && (int64_t)(doc->timestamp_ms / 1000) < na);
        X509_free(leaf);
    }
}

static const char *const payload_keys[] = {"module_id", "digest",   "timestamp", "pcrs",  "certificate",
                                           "cabundle",  "public_key", "user_data", "nonce"};

static void attestation_document_format(void)
{
    cl_buf raw = CL_BUF_INIT;
    static const uint8_t nonce[] = {1, 2, 3};
    CHECK_OK(cl_nsm_attestation(nsm_a, (const uint8_t *)"ud", 2, nonce, 3, NULL, 0, &raw));
    CHECK(raw.len > 0 && raw.data[0] == 0x84); /* untagged COSE_Sign1 */
    cl_cose_sign1 cose;
    CHECK_OK(cl_cose_sign1_decode(raw.data, raw.len, &cose));
    cl_cbor_doc payload;
    cl_cbor_limits limits = {.max_depth = 3, .max_map_entries = 32};
    CHECK_OK(cl_cbor_decode(cose.payload.data, cose.payload.len, &limits, &payload));
    const cl_cbor *map = payload.root;
    CHECK(map && map->type == CL_CBOR_MAP && map->u == 9 && !map->indefinite);
    size_t i = 0;
    for (const cl_cbor *k = map ? map->child : NULL; k && i < 9; k = k->next->next, i++)
        CHECK(k->type == CL_CBOR_TEXT && k->len == strlen(payload_keys[i]) &&
              !memcmp(k->data, payload_keys[i], k->len));
    const cl_cbor *pcrs = cl_cbor_map_get(map, "pcrs");
    /* every locked PCR: 0..15 from the start, 16..19 locked by locks_and_indexes */
    CHECK(pcrs && pcrs->type == CL_CBOR_MAP && pcrs->u == 20);
    unsigned expect = 0;
    for (const cl_cbor *k = pcrs ? pcrs->child : NULL; k; k = k->next->next, expect++) {
        CHECK(k->type == CL_CBOR_UINT && k->u == expect);
        CHECK(k->next->type == CL_CBOR_BYTES && k->next->len == 48);
        uint8_t live[48];
        bool locked;
        CHECK(read_pcr(nsm_a, (uint16_t)expect, live, &locked) && !memcmp(live, k->next->data, 48));
    }
    const cl_cbor *pk = cl_cbor_map_get(map, "public_key");
    CHECK(pk && pk->type == CL_CBOR_NULL);
    const cl_cbor *ts = cl_cbor_map_get(map, "timestamp");
    CHECK(ts && ts->type == CL_CBOR_UINT && ts->u == fake_now);
    const cl_cbor *digest = cl_cbor_map_get(map, "digest");
    CHECK(digest && digest->len == 6 && !memcmp(digest->data, "SHA384", 6));
    cl_cbor_doc_free(&payload);
    cl_cose_sign1_free(&cose);

    cl_attestation_doc doc;
    CHECK_OK(cl_attestation_parse(raw.data, raw.len, &doc));
    CHECK(doc.module_id.len == strlen(cl_nsm_sim_module_id(sim_a)) &&
          !memcmp(doc.module_id.data, cl_nsm_sim_module_id(sim_a), doc.module_id.len));
    CHECK(doc.has_user_data && doc.user_data.len == 2 && !memcmp(doc.user_data.data, "ud", 2));
    CHECK(doc.has_nonce && doc.nonce.len == 3 && !doc.has_public_key);
    CHECK(doc.pcr_present == 0xfffffu && !cl_attestation_is_debug(&doc));
    check_chain_extensions(&doc);
    cl_attestation_doc_free(&doc);
    cl_buf_free(&raw);
}

static int verify_with(const char *root_pem, bool aws_root, const cl_buf *raw, uint64_t at_ms)
{
    cl_verifier *v = NULL;
    cl_attestation_doc doc;
    int rc = cl_verifier_new(aws_root, &v);
    if (rc == CL_OK && root_pem)
        rc = cl_verifier_add_root_pem_file(v, root_pem);
    if (rc == CL_OK) {
        rc = cl_attestation_parse(raw->data, raw->len, &doc);
        if (rc == CL_OK) {
            rc = cl_verifier_verify(v, &doc, at_ms ? at_ms : doc.timestamp_ms);
            cl_attestation_doc_free(&doc);
        }
    }
    cl_verifier_free(v);
    return rc;
}

static void document_verifies_under_sim_root_only(void)
{
    cl_buf raw = CL_BUF_INIT;
    CHECK_OK(cl_nsm_attestation(nsm_a, NULL, 0, NULL, 0, NULL, 0, &raw));
    const char *root = cl_nsm_sim_root_pem_path(sim_a);
    char want[300];
    state_path("a/root.pem", want, sizeof want);
    CHECK(!strcmp(root, want));
    CHECK_OK(verify_with(root, false, &raw, 0));
    CHECK_ERR(verify_with(NULL, true, &raw, 0), CL_EVERIFY, "not a trusted root");
    /* The leaf is valid for 3 hours only. */
    CHECK_ERR(verify_with(root, false, &raw, fake_now + 3 * HOUR_MS + 60000), CL_EVERIFY, "not valid at");
    cl_buf_free(&raw);
}

static void key_files_private(void)
{
    static const char *const keys[] = {"a/root.key", "a/regional.key", "a/zonal.key", "a/instance.key"};
    for (size_t i = 0; i < 4; i++) {
        char path[300];
        struct stat st;
        state_path(keys[i], path, sizeof path);
        CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
    }
}

static bool same_file(const char *a, const char *b)
{
    cl_buf x = CL_BUF_INIT, y = CL_BUF_INIT;
    bool same = cl_read_file(a, 1 << 20, &x) == CL_OK && cl_read_file(b, 1 << 20, &y) == CL_OK && x.len == y.len &&
                x.len > 0 && !memcmp(x.data, y.data, x.len);
    cl_buf_free(&x);
    cl_buf_free(&y);
    return same;
}

static bool doc_cabundle(cl_nsm *nsm, cl_buf *raw, cl_attestation_doc *doc)
{
    return cl_nsm_attestation(nsm, NULL, 0, NULL, 0, NULL, 0, raw) == CL_OK &&
           cl_attestation_parse(raw->data, raw->len, doc) == CL_OK;
}

static void state_dir_reuse_keeps_root(void)
{
    char saved_root[300], root_copy[300];
    cl_buf saved = CL_BUF_INIT;
    state_path("a/root.pem", saved_root, sizeof saved_root);
    CHECK_OK(cl_read_file(saved_root, 1 << 20, &saved));
    state_path("root-copy.pem", root_copy, sizeof root_copy);
    FILE *f = fopen(root_copy, "wb");
    CHECK(f && fwrite(saved.data, 1, saved.len, f) == saved.len);
    if (f)
        fclose(f);

    cl_nsm_sim_config cfg = config_for("a");
    cfg.instance_id = NULL; /* generated and stored on first use */
    cl_nsm_sim *s1 = NULL, *s2 = NULL;
    CHECK_OK(cl_nsm_sim_new(&cfg, &s1));
    CHECK_OK(cl_nsm_sim_new(&cfg, &s2));
    if (!s1 || !s2)
        goto out;
    CHECK(same_file(saved_root, root_copy));
    CHECK(!strcmp(cl_nsm_sim_instance_id(s1), cl_nsm_sim_instance_id(s2)));
    CHECK(!strncmp(cl_nsm_sim_instance_id(s1), "i-", 2) && strlen(cl_nsm_sim_instance_id(s1)) == 19);
    CHECK(strcmp(cl_nsm_sim_module_id(s1), cl_nsm_sim_module_id(s2)) != 0);
    cl_nsm *n1 = NULL, *n2 = NULL;
    CHECK_OK(cl_nsm_open_sim(s1, &n1));
    CHECK_OK(cl_nsm_open_sim(s2, &n2));
    cl_buf r1 = CL_BUF_INIT, r2 = CL_BUF_INIT;
    cl_attestation_doc d1, d2;
    bool ok1 = n1 && doc_cabundle(n1, &r1, &d1), ok2 = n2 && doc_cabundle(n2, &r2, &d2);
    CHECK(ok1 && ok2);
    if (ok1 && ok2) {
        for (int i = 0; i < 4; i++)
            CHECK(d1.cabundle[i].len == d2.cabundle[i].len &&
                  !memcmp(d1.cabundle[i].data, d2.cabundle[i].data, d1.cabundle[i].len));
        CHECK(d1.certificate.len != d2.certificate.len ||
              memcmp(d1.certificate.data, d2.certificate.data, d1.certificate.len) != 0);
        CHECK_OK(verify_with(saved_root, false, &r2, 0));
    }
    if (ok1)
        cl_attestation_doc_free(&d1);
    if (ok2)
        cl_attestation_doc_free(&d2);
    cl_buf_free(&r1);
    cl_buf_free(&r2);
    cl_nsm_close(n1);
    cl_nsm_close(n2);
out:
    cl_nsm_sim_free(s1);
    cl_nsm_sim_free(s2);
    cl_buf_free(&saved);
}

static bool leaf_of(cl_nsm *nsm, cl_buf *leaf, cl_buf *raw)
{
    cl_attestation_doc doc;
    if (!doc_cabundle(nsm, raw, &doc))
        return false;
    cl_buf_reset(leaf);
    bool ok = cl_buf_append(leaf, doc.certificate.data, doc.certificate.len) == CL_OK;
    cl_attestation_doc_free(&doc);
    return ok;
}

static void leaf_renewed_after_three_hours(void)
{
    uint64_t start = fake_now;
    cl_nsm_sim_config cfg = config_for("renew");
    cl_nsm_sim *sim = NULL;
    cl_nsm *nsm = NULL;
    CHECK_OK(cl_nsm_sim_new(&cfg, &sim));
    CHECK_OK(cl_nsm_open_sim(sim, &nsm));
    if (!nsm)
        goto out;
    cl_buf l1 = CL_BUF_INIT, l2 = CL_BUF_INIT, raw = CL_BUF_INIT;
    CHECK(leaf_of(nsm, &l1, &raw));
    fake_now = start + HOUR_MS;
    CHECK(leaf_of(nsm, &l2, &raw));
    CHECK(l1.len == l2.len && !memcmp(l1.data, l2.data, l1.len));
    fake_now = start + 3 * HOUR_MS;
    CHECK(leaf_of(nsm, &l2, &raw));
    CHECK(l1.len != l2.len || memcmp(l1.data, l2.data, l1.len) != 0);
    CHECK_OK(verify_with(cl_nsm_sim_root_pem_path(sim), false, &raw, 0));
    CHECK_OK(verify_with(cl_nsm_sim_root_pem_path(sim), false, &raw, fake_now + 2 * HOUR_MS));

    /* Forty days on, the 30-day zonal CA has been re-issued from the same root. */
    char root_pem[300], zonal_pem[300];
    cl_buf root_before = CL_BUF_INIT, zonal_before = CL_BUF_INIT;
    state_path("renew/root.pem", root_pem, sizeof root_pem);
    state_path("renew/zonal.pem", zonal_pem, sizeof zonal_pem);
    CHECK_OK(cl_read_file(root_pem, 1 << 20, &root_before));
    CHECK_OK(cl_read_file(zonal_pem, 1 << 20, &zonal_before));
    fake_now = start + 40 * DAY_MS;
    CHECK(leaf_of(nsm, &l2, &raw));
    CHECK_OK(verify_with(root_pem, false, &raw, 0));
    cl_buf root_after = CL_BUF_INIT, zonal_after = CL_BUF_INIT;
    CHECK_OK(cl_read_file(root_pem, 1 << 20, &root_after));
    CHECK_OK(cl_read_file(zonal_pem, 1 << 20, &zonal_after));
    CHECK(root_before.len == root_after.len && !memcmp(root_before.data, root_after.data, root_after.len));
    CHECK(zonal_before.len != zonal_after.len || memcmp(zonal_before.data, zonal_after.data, zonal_after.len));
    /* A restart at that time reuses the re-issued chain. */
    cl_nsm_sim *again = NULL;
    cl_nsm *nsm_again = NULL;
    CHECK_OK(cl_nsm_sim_new(&cfg, &again));
    CHECK_OK(cl_nsm_open_sim(again, &nsm_again));
    cl_buf raw2 = CL_BUF_INIT;
    if (nsm_again) {
        CHECK(leaf_of(nsm_again, &l1, &raw2));
        CHECK_OK(verify_with(root_pem, false, &raw2, 0));
        cl_buf zonal_restart = CL_BUF_INIT;
        CHECK_OK(cl_read_file(zonal_pem, 1 << 20, &zonal_restart));
        CHECK(zonal_restart.len == zonal_after.len && !memcmp(zonal_restart.data, zonal_after.data, zonal_after.len));
        cl_buf_free(&zonal_restart);
    }
    cl_nsm_close(nsm_again);
    cl_nsm_sim_free(again);
    cl_buf_free(&raw2);
    cl_buf_free(&root_before);
    cl_buf_free(&root_after);
    cl_buf_free(&zonal_before);
    cl_buf_free(&zonal_after);
    cl_buf_free(&l1);
    cl_buf_free(&l2);
    cl_buf_free(&raw);
out:
    fake_now = start;
    cl_nsm_close(nsm);
    cl_nsm_sim_free(sim);
}

static void image_debug_and_overrides(void)
{
    char image[300];
    state_path("image.eif", image, sizeof image);
    FILE *f = fopen(image, "wb");
    static const char content[] = "pretend enclave image file";
    CHECK(f && fwrite(content, 1, sizeof content - 1, f) == sizeof content - 1);
    if (f)
        fclose(f);
    cl_nsm_sim_config cfg = config_for("image");
    cfg.image_path = image;
    cfg.pcr_mask = 1u << 8 | 1u << 20;
    memset(cfg.pcr_values[8], 0xab, 48);
    memset(cfg.pcr_values[20], 0xcd, 48);
    cl_nsm_sim *sim = NULL;
    cl_nsm *nsm = NULL;
    CHECK_OK(cl_nsm_sim_new(&cfg, &sim));
    CHECK_OK(cl_nsm_open_sim(sim, &nsm));
    uint8_t pcr[48], want[48];
    bool locked;
    if (nsm) {
        sha384_of(content, sizeof content - 1, NULL, 0, want);
        CHECK(read_pcr(nsm, 0, pcr, &locked) && !memcmp(pcr, want, 48));
        memset(want, 0xab, 48);
        CHECK(read_pcr(nsm, 8, pcr, &locked) && locked && !memcmp(pcr, want, 48));
        memset(want, 0xcd, 48);
        CHECK(read_pcr(nsm, 20, pcr, &locked) && !locked && !memcmp(pcr, want, 48));
    }
    cl_nsm_close(nsm);
    cl_nsm_sim_free(sim);

    cfg = config_for("debug");
    cfg.debug = true;
    sim = NULL;
    nsm = NULL;
    CHECK_OK(cl_nsm_sim_new(&cfg, &sim));
    CHECK_OK(cl_nsm_open_sim(sim, &nsm));
    if (nsm) {
        uint8_t zero[48] = {0};
        for (uint16_t i = 0; i < 3; i++)
            CHECK(read_pcr(nsm, i, pcr, &locked) && !memcmp(pcr, zero, 48));
        CHECK(read_pcr(nsm, 4, pcr, &locked) && memcmp(pcr, zero, 48) != 0);
        cl_buf raw = CL_BUF_INIT;
        cl_attestation_doc doc;
        CHECK(doc_cabundle(nsm, &raw, &doc));
        CHECK(cl_attestation_is_debug(&doc));
        cl_attestation_doc_free(&doc);
        cl_buf_free(&raw);
    }
    cl_nsm_close(nsm);
    cl_nsm_sim_free(sim);
}

static void bad_configurations(void)
{
    cl_nsm_sim *sim = NULL;
    cl_nsm_sim_config cfg = {0};
    CHECK_ERR(cl_nsm_sim_new(&cfg, &sim), CL_EINVAL, "state directory");
    cfg = config_for("image.eif"); /* a file, not a directory */
    CHECK_ERR(cl_nsm_sim_new(&cfg, &sim), CL_EINVAL, "not a directory");
    cfg = config_for("cfg");
    cfg.image_path = "/nonexistent/image.eif";
    CHECK_ERR(cl_nsm_sim_new(&cfg, &sim), CL_EIO, "/nonexistent/image.eif");
    cfg = config_for("cfg");
    cfg.instance_id = "i-bad id";
    CHECK_ERR(cl_nsm_sim_new(&cfg, &sim), CL_EINVAL, "instance id");
    cfg.instance_id = "i-0123456789abcdef0123456789abcdef0"; /* 35 characters */
    CHECK_ERR(cl_nsm_sim_new(&cfg, &sim), CL_EINVAL, "instance id");
    CHECK(sim == NULL);
    char id_file[300];
    state_path("badid", id_file, sizeof id_file);
    mkdir(id_file, 0700);
    state_path("badid/instance-id", id_file, sizeof id_file);
    FILE *f = fopen(id_file, "w");
    if (f) {
        fputs("not an id!\n", f);
        fclose(f);
    }
    cfg = config_for("badid");
    cfg.instance_id = NULL;
    CHECK_ERR(cl_nsm_sim_new(&cfg, &sim), CL_EPARSE, "instance id");
}

typedef struct extender {
    cl_nsm *nsm;
    int rounds;
    int failures;
} extender;

static void *extend_many(void *arg)
{
    extender *e = arg;
    static const uint8_t data[] = {0x5a};
    for (int i = 0; i < e->rounds; i++)
        if (cl_nsm_extend_pcr(e->nsm, 25, data, 1, NULL) != CL_OK)
            e->failures++;
    return NULL;
}

/* Identical extensions commute, so the end value is known whatever the
 * interleaving, but only if no update is lost. */
static void concurrent_extends(void)
{
    enum { THREADS = 4, ROUNDS = 25 };
    pthread_t threads[THREADS];
    extender ex[THREADS];
    for (int i = 0; i < THREADS; i++) {
        ex[i] = (extender){nsm_a, ROUNDS, 0};
        CHECK(pthread_create(&threads[i], NULL, extend_many, &ex[i]) == 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(threads[i], NULL);
        CHECK(ex[i].failures == 0);
    }
    uint8_t want[48] = {0}, next[48], got[48];
    static const uint8_t data[] = {0x5a};
    for (int i = 0; i < THREADS * ROUNDS; i++) {
        sha384_of(want, 48, data, 1, next);
        memcpy(want, next, 48);
    }
    bool locked;
    CHECK(read_pcr(nsm_a, 25, got, &locked) && !memcmp(got, want, 48));
}

typedef struct served {
    cl_nsm_sim *sim;
    int listen_fd;
    int connections;
} served;

static void *serve_some(void *arg)
{
    served *s = arg;
    for (int i = 0; i < s->connections; i++) {
        int fd = accept(s->listen_fd, NULL, NULL);
        if (fd < 0)
            break;
        int rc = cl_nsm_sim_serve(s->sim, fd);
        if (rc < 0 && rc != CL_ELIMIT) /* the oversized frame is expected */
            fprintf(stderr, "serve: %s\n", cl_error_message());
        close(fd);
    }
    return NULL;
}

static void over_a_unix_socket(void)
{
    char text[300];
    snprintf(text, sizeof text, "unix:%s/nsm.sock", tmpdir);
    cl_address addr;
    CHECK_OK(cl_address_parse(text, &addr));
    served s = {sim_a, -1, 2};
    CHECK_OK(cl_address_listen(&addr, 4, &s.listen_fd));
    if (s.listen_fd < 0)
        return;
    pthread_t thread;
    CHECK(pthread_create(&thread, NULL, serve_some, &s) == 0);

    cl_nsm *nsm = NULL;
    CHECK_OK(cl_nsm_open(text, &nsm));
    if (nsm) {
        cl_nsm_description d;
        CHECK_OK(cl_nsm_describe(nsm, &d));
        CHECK(!strcmp(d.module_id, cl_nsm_sim_module_id(sim_a)));
        uint8_t one = 1, rnd[600];
        CHECK_ERR(cl_nsm_extend_pcr(nsm, 1, &one, 1, NULL), CL_ENSM, "ReadOnlyIndex");
        CHECK_OK(cl_nsm_get_random(nsm, rnd, sizeof rnd));
        cl_buf doc = CL_BUF_INIT;
        CHECK_OK(cl_nsm_attestation(nsm, NULL, 0, (const uint8_t *)"n", 1, NULL, 0, &doc));
        CHECK_OK(verify_with(cl_nsm_sim_root_pem_path(sim_a), false, &doc, 0));
        cl_buf_free(&doc);
        cl_nsm_close(nsm);
    }
    /* A frame over the request limit gets InputTooLarge, then the connection ends. */
    int fd = -1;
    CHECK_OK(cl_address_connect(&addr, &fd));
    if (fd >= 0) {
        CHECK(write(fd, "\x00\x00\x20\x00", 4) == 4);
        cl_buf resp = CL_BUF_INIT;
        bool eof = false;
        CHECK_OK(cl_nsm_frame_read(fd, CL_NSM_RESPONSE_MAX, &resp, &eof));
        CHECK(!eof && resp.len == sizeof("\xa1\x65" "Error" "\x6d" "InputTooLarge") - 1 &&
              !memcmp(resp.data, "\xa1\x65" "Error" "\x6d" "InputTooLarge", resp.len));
        CHECK_OK(cl_nsm_frame_read(fd, CL_NSM_RESPONSE_MAX, &resp, &eof));
        CHECK(eof);
        cl_buf_free(&resp);
        close(fd);
    }
    pthread_join(thread, NULL);
    close(s.listen_fd);
    unlink(addr.path);
}

typedef struct one_shot {
    cl_nsm_sim *sim;
    int listen_fd;
    int closed_pipe[2];
} one_shot;

/* Answers one request, hangs up (as a restarted simulator would), says so,
 * then serves the next connection normally. */
static void *answer_once_then_hang_up(void *arg)
{
    one_shot *s = arg;
    cl_buf req = CL_BUF_INIT, resp = CL_BUF_INIT;
    bool eof = false;
    int fd = accept(s->listen_fd, NULL, NULL);
    if (fd >= 0 && cl_nsm_frame_read(fd, CL_NSM_REQUEST_MAX, &req, &eof) == CL_OK && !eof &&
        cl_nsm_sim_handle(s->sim, req.data, req.len, &resp) == CL_OK &&
        cl_nsm_frame_write(fd, resp.data, resp.len) == CL_OK) {
    }
    if (fd >= 0)
        close(fd);
    if (write(s->closed_pipe[1], "x", 1) != 1)
        perror("write");
    /* Bounded wait, so a client that never reconnects fails the test
     * instead of hanging it. */
    struct pollfd p = {.fd = s->listen_fd, .events = POLLIN};
    fd = poll(&p, 1, 10000) == 1 ? accept(s->listen_fd, NULL, NULL) : -1;
    if (fd >= 0) {
        if (cl_nsm_sim_serve(s->sim, fd) < 0)
            fprintf(stderr, "serve: %s\n", cl_error_message());
        close(fd);
    }
    cl_buf_free(&req);
    cl_buf_free(&resp);
    return NULL;
}

static void client_reconnects_after_hang_up(void)
{
    char text[300];
    snprintf(text, sizeof text, "unix:%s/hangup.sock", tmpdir);
    cl_address addr;
    CHECK_OK(cl_address_parse(text, &addr));
    one_shot s = {sim_a, -1, {-1, -1}};
    CHECK(pipe(s.closed_pipe) == 0);
    CHECK_OK(cl_address_listen(&addr, 4, &s.listen_fd));
    if (s.listen_fd < 0)
        return;
    pthread_t thread;
    CHECK(pthread_create(&thread, NULL, answer_once_then_hang_up, &s) == 0);
    cl_nsm *nsm = NULL;
    CHECK_OK(cl_nsm_open(text, &nsm));
    uint8_t pcr[48];
    bool locked;
    if (nsm) {
        CHECK(read_pcr(nsm, 0, pcr, &locked));
        char c;
        CHECK(read(s.closed_pipe[0], &c, 1) == 1);
        /* The old connection is closed: the request goes over a new one. */
        CHECK(read_pcr(nsm, 1, pcr, &locked));
        cl_nsm_close(nsm);
    }
    pthread_join(thread, NULL);
    close(s.listen_fd);
    close(s.closed_pipe[0]);
    close(s.closed_pipe[1]);
    unlink(addr.path);
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/cloister-nsm-sim-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    cl_nsm_sim_config cfg = config_for("a");
    int rc = cl_nsm_sim_new(&cfg, &sim_a);
    if (rc == CL_OK)
        rc = cl_nsm_open_sim(sim_a, &nsm_a);
    if (rc != CL_OK) {
        fprintf(stderr, "cannot start the simulator: %s\n", cl_error_message());
        test_remove_tree(tmpdir);
        return 1;
    }
    RUN(describe_nsm_fields);
    RUN(default_pcrs);
    RUN(extend_is_sha384_of_old_and_data);
    RUN(locks_and_indexes);
    RUN(input_limits);
    RUN(random_bytes);
    RUN(bad_requests_answered_with_errors);
    RUN(attestation_document_format);
    RUN(document_verifies_under_sim_root_only);
    RUN(key_files_private);
    RUN(state_dir_reuse_keeps_root);
    RUN(leaf_renewed_after_three_hours);
    RUN(image_debug_and_overrides);
    RUN(bad_configurations);
    RUN(concurrent_extends);
    RUN(over_a_unix_socket);
    RUN(client_reconnects_after_hang_up);
    cl_nsm_close(nsm_a);
    cl_nsm_sim_free(sim_a);
    test_remove_tree(tmpdir);
    return test_summary();
}

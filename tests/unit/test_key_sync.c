/* Key sync's messages (nitriding's JSON), hashed_keys, the peer policy
 * (PCR4 aside, --sync-allow-pcr0), and the identity <-> PEM round trip. */
#include "cloister/enclave/key_sync.h"
#include "cloister/core/encoding.h"
#include "cloister/core/tls.h"
#include "test.h"

#include <sodium.h>

static const uint8_t *u8(const char *s)
{
    return (const uint8_t *)s;
}

static void test_keys_json(void)
{
    cl_sync_keys k;
    memset(&k, 0, sizeof k);
    CHECK_OK(cl_buf_append(&k.cert, "CERT", 4));
    CHECK_OK(cl_buf_append(&k.key, "KEY", 3));
    cl_buf json = CL_BUF_INIT;
    CHECK_OK(cl_sync_keys_encode(&k, &json));
    /* Go's encoding: []byte as base64, a nil slice as null */
    CHECK(json.len && strstr((char *)json.data, "\"app_keys\":null") != NULL);
    CHECK(strstr((char *)json.data, "\"nitriding_key\":\"S0VZ\"") != NULL);
    cl_sync_keys back;
    CHECK_OK(cl_sync_keys_parse(json.data, json.len, &back));
    CHECK(back.app_keys.len == 0 && back.cert.len == 4 && !memcmp(back.cert.data, "CERT", 4));
    cl_sync_keys_free(&back);
    cl_buf_free(&json);

    CHECK_OK(cl_buf_append(&k.app_keys, "APP", 3));
    char h[45];
    CHECK_OK(cl_sync_keys_hash_b64(&k, h));
    /* base64(SHA-256("CERT" || "KEY" || "APP")): certificate first */
    CHECK(!strcmp(h, "4Pn+hBX2nVqQTDEJ13HnVRDDhkuMlRwgAZkWosyz7J4="));
    /* cloister's acme_challenges: sent only when set, kept out of hashed_keys */
    cl_sync_keys withc;
    CHECK_OK(cl_sync_keys_copy(&k, &withc));
    CHECK_OK(cl_buf_append(&withc.acme, "CH", 2));
    CHECK_OK(cl_sync_keys_encode(&withc, &json));
    CHECK_OK(cl_buf_append(&json, "", 1)); /* for strstr */
    json.len--;
    CHECK(strstr((char *)json.data, ",\"acme_challenges\":\"Q0g=\"}") != NULL);
    CHECK_OK(cl_sync_keys_parse(json.data, json.len, &back));
    CHECK(back.acme.len == 2 && !memcmp(back.acme.data, "CH", 2));
    cl_sync_keys_free(&back);
    cl_buf_free(&json);
    char h2[45];
    CHECK_OK(cl_sync_keys_hash_b64(&withc, h2));
    CHECK(!strcmp(h, h2));
    cl_sync_keys_free(&withc);
    CHECK_OK(cl_sync_keys_encode(&k, &json));
    CHECK_OK(cl_buf_append(&json, "", 1));
    CHECK(strstr((char *)json.data, "acme") == NULL);
    cl_buf_free(&json);

    cl_sync_keys_free(&k);

    const char *absent = "{\"nitriding_key\":\"S0VZ\",\"nitriding_cert\":\"Q0VSVA==\"}";
    CHECK_OK(cl_sync_keys_parse(u8(absent), strlen(absent), &back));
    CHECK(back.app_keys.len == 0);
    cl_sync_keys_free(&back);
    /* any whitespace and order, "\/" for '/' (as some encoders write it) */
    const char *loose = " {\n \"app_keys\" : \"Pz8\\/\" ,\t\"nitriding_cert\":\"Q0VSVA==\", \"nitriding_key\":\"S0VZ\"}\n";
    CHECK_OK(cl_sync_keys_parse(u8(loose), strlen(loose), &back));
    CHECK(back.app_keys.len == 3 && !memcmp(back.app_keys.data, "???", 3));
    cl_sync_keys_free(&back);
    const char *bad[] = {
        "{\"nitriding_key\":\"S0VZ\"}",                                        /* no certificate */
        "{\"nitriding_key\":\"S0VZ\",\"nitriding_cert\":\"!!\"}",               /* not base64 */
        "{\"nitriding_key\":1,\"nitriding_cert\":\"Q0VSVA==\"}",                /* not a string */
        "{\"nitriding_key\":\"S0VZ\",\"nitriding_key\":\"S0VZ\",\"nitriding_cert\":\"Q0VSVA==\"}", /* twice */
        "[1]", "{", "",
        "{\"nitriding_key\":\"S0VZ\",\"nitriding_cert\":\"Q0VSVA==\",\"extra\":1}", /* another member */
        "{\"nitriding_key\":\"S0VZ\",\"nitriding_cert\":\"Q0VSVA==\"} x",              /* trailing bytes */
        "{\"nitriding_key\":\"S0\\u0056Z\",\"nitriding_cert\":\"Q0VSVA==\"}",        /* other escapes */
        "{\"nitriding_key\":\"S0VZ\",\"nitriding_cert\":\"Q0VSVA==\",}",              /* a trailing comma */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cl_error_clear();
        int rc = cl_sync_keys_parse(u8(bad[i]), strlen(bad[i]), &back);
        CHECK(rc == CL_EPARSE);
    }
}

static void test_heartbeat(void)
{
    cl_sync_heartbeat hb;
    const char *ok = "{\"hashed_keys\":\"\",\"worker_hostname\":\"ip-10-0-0-5.ec2.internal:444\"}";
    CHECK_OK(cl_sync_heartbeat_parse(u8(ok), strlen(ok), &hb));
    CHECK(!strcmp(hb.worker_hostname, "ip-10-0-0-5.ec2.internal:444") && hb.hashed_keys[0] == '\0');
    cl_buf json = CL_BUF_INIT;
    CHECK_OK(cl_sync_heartbeat_encode(&hb, &json));
    CHECK(json.len == strlen(ok) && !memcmp(json.data, ok, json.len)); /* nitriding's field order */
    cl_buf_free(&json);
    CHECK_ERR(cl_sync_heartbeat_parse(u8("{\"worker_hostname\":\"host\"}"), 26, &hb), CL_EPARSE, "HOST:PORT");
    const char *port0 = "{\"worker_hostname\":\"h:0\"}";
    CHECK_ERR(cl_sync_heartbeat_parse(u8(port0), strlen(port0), &hb), CL_EPARSE, "bad port");
    const char *slash = "{\"worker_hostname\":\"h/x:1\"}";
    CHECK_ERR(cl_sync_heartbeat_parse(u8(slash), strlen(slash), &hb), CL_EPARSE, "not a host");
    const char *num = "{\"hashed_keys\":5,\"worker_hostname\":\"h:1\"}";
    CHECK_ERR(cl_sync_heartbeat_parse(u8(num), strlen(num), &hb), CL_EPARSE, "must be a string");
    char big[CL_SYNC_MAX_HEARTBEAT + 10];
    memset(big, ' ', sizeof big);
    CHECK_ERR(cl_sync_heartbeat_parse(u8(big), sizeof big, &hb), CL_ELIMIT, NULL);
}

static void test_attstn_body(void)
{
    cl_sync_attstn_body b;
    const char *worker = "{\"document\":\"aGVsbG8=\",\"encrypted_keys\":\"\"}\n";
    CHECK_OK(cl_sync_attstn_body_parse(u8(worker), strlen(worker), &b));
    CHECK(b.document.len == 5 && b.encrypted_keys.len == 0);
    cl_sync_attstn_body_free(&b);
    CHECK_ERR(cl_sync_attstn_body_parse(u8("{\"encrypted_keys\":\"\"}"), 21, &b), CL_EPARSE, "no \"document\"");
    CHECK_ERR(cl_sync_attstn_body_parse(u8("{\"document\":\"a\"}"), 16, &b), CL_EPARSE, "not base64");
}

/* A document with PCRs 0..4 and 8, each 48 bytes of the given fill. */
typedef struct fake_doc {
    cl_attestation_doc doc;
    uint8_t pcr[CL_PCR_COUNT][48];
} fake_doc;

static void fake(fake_doc *f, uint8_t base)
{
    memset(f, 0, sizeof *f);
    int present[] = {0, 1, 2, 3, 4, 8};
    for (size_t i = 0; i < sizeof present / sizeof present[0]; i++) {
        int p = present[i];
        memset(f->pcr[p], base + p, 48);
        f->doc.pcrs[p] = (cl_slice){f->pcr[p], 48};
        f->doc.pcr_present |= 1u << p;
    }
}

static void test_policy(void)
{
    static fake_doc ours, theirs;
    static cl_sync_policy pol;
    memset(&pol, 0, sizeof pol);
    fake(&ours, 0x10);
    CHECK_OK(cl_sync_policy_set_ours(&pol, &ours.doc));
    const char *rule = NULL;

    fake(&theirs, 0x10);
    memset(theirs.pcr[4], 0xee, 48); /* another parent instance */
    CHECK_OK(cl_sync_check_peer(&pol, &theirs.doc, &rule));
    CHECK(!strcmp(rule, "equal-pcrs"));

    fake(&theirs, 0x10);
    theirs.pcr[3][0] ^= 1; /* another IAM role */
    CHECK_ERR(cl_sync_check_peer(&pol, &theirs.doc, &rule), CL_EVERIFY, "PCR3 differs");

    fake(&theirs, 0x10);
    theirs.doc.pcr_present |= 1u << 9;
    theirs.doc.pcrs[9] = (cl_slice){theirs.pcr[9], 48};
    CHECK_ERR(cl_sync_check_peer(&pol, &theirs.doc, &rule), CL_EVERIFY, "another set of PCRs");

    fake(&theirs, 0x40); /* another image: PCR0, 1, 2 differ, and so do the others here */
    CHECK_ERR(cl_sync_check_peer(&pol, &theirs.doc, &rule), CL_EVERIFY, "not in --sync-allow-pcr0");
    char hex[97];
    cl_hex_encode(theirs.pcr[0], 48, hex);
    CHECK_OK(cl_sync_policy_allow_pcr0(&pol, hex));
    CHECK_ERR(cl_sync_check_peer(&pol, &theirs.doc, &rule), CL_EVERIFY, "PCR3 differs");
    fake(&theirs, 0x10);
    memset(theirs.pcr[0], 0x40, 48);
    memset(theirs.pcr[1], 0x41, 48);
    memset(theirs.pcr[2], 0x42, 48);
    CHECK_OK(cl_sync_check_peer(&pol, &theirs.doc, &rule));
    CHECK(!strcmp(rule, "sync-allow-pcr0"));

    /* --sync-allow-signer: an image built later (PCR0, 1, 2 unknown to us)
     * signed with our signing certificate (PCR8) */
    static cl_sync_policy signer;
    memset(&signer, 0, sizeof signer);
    CHECK_OK(cl_sync_policy_set_ours(&signer, &ours.doc));
    fake(&theirs, 0x10);
    memset(theirs.pcr[0], 0x50, 48);
    memset(theirs.pcr[1], 0x51, 48);
    memset(theirs.pcr[2], 0x52, 48);
    CHECK_ERR(cl_sync_check_peer(&signer, &theirs.doc, &rule), CL_EVERIFY, "not in --sync-allow-pcr0");
    signer.allow_same_signer = true;
    CHECK(cl_sync_policy_signed(&signer));
    CHECK_OK(cl_sync_check_peer(&signer, &theirs.doc, &rule));
    CHECK(!strcmp(rule, "sync-allow-signer"));
    theirs.pcr[8][0] ^= 1; /* another signer */
    CHECK_ERR(cl_sync_check_peer(&signer, &theirs.doc, &rule), CL_EVERIFY, "nor signed by our signing certificate");
    theirs.pcr[8][0] ^= 1;
    theirs.pcr[3][0] ^= 1; /* same signer, another IAM role */
    CHECK_ERR(cl_sync_check_peer(&signer, &theirs.doc, &rule), CL_EVERIFY, "PCR3 differs");
    /* an unsigned image (PCR8 zero) allows no other image by signer, even a peer with PCR8 zero too */
    fake(&ours, 0x10);
    memset(ours.pcr[8], 0, 48);
    CHECK_OK(cl_sync_policy_set_ours(&signer, &ours.doc));
    CHECK(!cl_sync_policy_signed(&signer));
    fake(&theirs, 0x10);
    memset(theirs.pcr[0], 0x50, 48);
    memset(theirs.pcr[8], 0, 48);
    CHECK_ERR(cl_sync_check_peer(&signer, &theirs.doc, &rule), CL_EVERIFY, "PCR0");

    CHECK_ERR(cl_sync_policy_allow_pcr0(&pol, "abcd"), CL_EINVAL, "96 hexadecimal digits");
    char zeros[97];
    memset(zeros, '0', 96);
    zeros[96] = '\0';
    CHECK_ERR(cl_sync_policy_allow_pcr0(&pol, zeros), CL_EINVAL, "debug-mode");
}

static void test_identity_round_trip(void)
{
    cl_tls_identity id, back, other;
    CHECK_OK(cl_tls_identity_generate("localhost", &id));
    cl_sync_keys k;
    CHECK_OK(cl_sync_keys_from_identity(&id, &k));
    CHECK(k.key.len && strstr((char *)k.key.data, "-----BEGIN PRIVATE KEY-----") == (char *)k.key.data);
    CHECK_OK(cl_sync_identity_from_keys(&k, &back));
    CHECK(!memcmp(back.cert_sha256, id.cert_sha256, 32));
    cl_tls_identity_free(&back);

    /* someone else's key under our certificate */
    CHECK_OK(cl_tls_identity_generate("localhost", &other));
    cl_sync_keys ko;
    CHECK_OK(cl_sync_keys_from_identity(&other, &ko));
    cl_buf_free(&k.key);
    CHECK_OK(cl_buf_append(&k.key, ko.key.data, ko.key.len));
    CHECK_ERR(cl_sync_identity_from_keys(&k, &back), CL_EVERIFY, "does not belong");
    cl_sync_keys_free(&k);
    cl_sync_keys_free(&ko);
    cl_tls_identity_free(&id);
    cl_tls_identity_free(&other);
}

/* The sealed box is libsodium's, the same construction as Go's
 * box.SealAnonymous: 48 bytes of overhead, opened with the key pair only. */
static void test_sealed_box(void)
{
    CHECK(sodium_init() >= 0);
    uint8_t pk[crypto_box_PUBLICKEYBYTES], sk[crypto_box_SECRETKEYBYTES], pk2[32], sk2[32];
    crypto_box_keypair(pk, sk);
    crypto_box_keypair(pk2, sk2);
    const char *m = "{\"nitriding_key\":null}";
    uint8_t c[64 + 48], out[64];
    CHECK(crypto_box_SEALBYTES == 48);
    CHECK(crypto_box_seal(c, u8(m), strlen(m), pk) == 0);
    CHECK(crypto_box_seal_open(out, c, strlen(m) + 48, pk, sk) == 0 && !memcmp(out, m, strlen(m)));
    CHECK(crypto_box_seal_open(out, c, strlen(m) + 48, pk2, sk2) != 0);
}

int main(void)
{
    RUN(test_keys_json);
    RUN(test_heartbeat);
    RUN(test_attstn_body);
    RUN(test_policy);
    RUN(test_identity_round_trip);
    RUN(test_sealed_box);
    return test_summary();
}

/* The key custody core driven directly, with a fake clock and a fake KMS:
 * PIN lock-out, token expiry, rotation grace, and the refusals of a
 * provisioned key (wrong purpose, a key under an unpinned KMS key, a KMS
 * answer for another key, a broken chain). */
#include "cloister/enclave/key_custody.h"
#include "test.h"
#include "test_chain.h"

#include <openssl/ec.h>
#include <openssl/pem.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static cl_slice sl(const char *s)
{
    return (cl_slice){(const uint8_t *)s, strlen(s)};
}

static char key_dir[] = "/tmp/cl-custody-XXXXXX";

/* One key: its PEM in key_dir/NAME and a self-signed chain in `chain`. */
typedef struct test_key_files {
    EVP_PKEY *key;
    char name[32];
    char pem_key[4096];
    char chain[8192];
} test_key_files;

static void make_key(test_key_files *k, const char *name)
{
    memset(k, 0, sizeof *k);
    snprintf(k->name, sizeof k->name, "%s", name);
    k->key = test_key("P-256");
    cert_spec spec = {.cn = name, .not_before = 1700000000, .not_after = 2000000000};
    X509 *cert = test_cert(&spec, k->key, NULL, NULL);
    BIO *b = BIO_new(BIO_s_mem());
    PEM_write_bio_PrivateKey(b, k->key, NULL, NULL, 0, NULL, NULL);
    int n = BIO_read(b, k->pem_key, sizeof k->pem_key - 1);
    CHECK(n > 0);
    BIO_free(b);
    b = BIO_new(BIO_s_mem());
    PEM_write_bio_X509(b, cert);
    n = BIO_read(b, k->chain, sizeof k->chain - 1);
    CHECK(n > 0);
    BIO_free(b);
    X509_free(cert);
    char path[256];
    snprintf(path, sizeof path, "%s/%s", key_dir, name);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    fputs(k->pem_key, f);
    fclose(f);
}

static void free_key(test_key_files *k)
{
    EVP_PKEY_free(k->key);
    char path[256];
    snprintf(path, sizeof path, "%s/%s", key_dir, k->name);
    unlink(path);
}

/* Sends r, returns the reply's status; the payload in *payload (valid until the next call). */
static cl_buf reply_buf = CL_BUF_INIT;
static uint32_t call(cl_custody_conn *cx, const cl_kh_request *r, uint64_t now, cl_cursor *payload)
{
    cl_buf req = CL_BUF_INIT;
    CHECK_OK(cl_kh_request_encode(&req, r));
    CHECK_OK(cl_custody_handle(cx, req.data, req.len, now, &reply_buf));
    cl_buf_free(&req);
    uint32_t st = 99;
    cl_cursor p;
    CHECK_OK(cl_kh_reply_split(reply_buf.data, reply_buf.len, &st, &p));
    if (payload)
        *payload = p;
    return st;
}

static cl_kh_request put_file(const char *label, const char *pin, const test_key_files *k)
{
    return (cl_kh_request){.type = CL_KH_PUT_TOKEN, .label = sl(label), .pin = sl(pin), .object_label = sl(label),
                           .key_source = CL_KH_SRC_FILE, .key_ref = sl(k->name), .chain = sl(k->chain)};
}

static uint32_t login(cl_custody_conn *cx, uint32_t slot, const char *pin, uint64_t now)
{
    cl_kh_request r = {.type = CL_KH_LOGIN, .slot = slot, .pin = sl(pin)};
    return call(cx, &r, now, NULL);
}

/* The private key's handle of the current generation. */
static uint32_t private_handle(cl_custody_conn *cx, uint32_t slot, uint64_t now)
{
    cl_kh_request r = {.type = CL_KH_LIST_OBJECTS, .slot = slot};
    cl_cursor p;
    if (call(cx, &r, now, &p) != 0)
        return 0;
    cl_kh_object_info o[CL_KH_MAX_OBJECTS];
    size_t n = 0;
    CHECK_OK(cl_kh_decode_objects(&p, o, CL_KH_MAX_OBJECTS, &n));
    for (size_t i = 0; i < n; i++)
        if (o[i].klass == CL_KH_CLASS_PRIVATE_KEY)
            return o[i].handle;
    return 0;
}

static const uint8_t digest[32] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                   17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};

/* Signs the digest with handle; on success checks the signature verifies
 * under `key` (the generation that must have signed). */
static uint32_t sign(cl_custody_conn *cx, uint32_t slot, uint32_t handle, uint64_t now, EVP_PKEY *key)
{
    cl_kh_request r = {.type = CL_KH_SIGN, .slot = slot, .handle = handle, .op = CL_KH_OP_ECDSA,
                       .data = {digest, sizeof digest}};
    cl_cursor p;
    uint32_t st = call(cx, &r, now, &p);
    if (st != 0 || !key)
        return st;
    cl_slice rs;
    CHECK_OK(cl_kh_get_blob(&p, 1024, &rs));
    CHECK(rs.len == 64);
    ECDSA_SIG *es = ECDSA_SIG_new();
    ECDSA_SIG_set0(es, BN_bin2bn(rs.data, 32, NULL), BN_bin2bn(rs.data + 32, 32, NULL));
    uint8_t *der = NULL;
    int der_len = i2d_ECDSA_SIG(es, &der);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(key, NULL);
    CHECK(ctx && EVP_PKEY_verify_init(ctx) == 1);
    CHECK(EVP_PKEY_verify(ctx, der, (size_t)der_len, digest, sizeof digest) == 1);
    EVP_PKEY_CTX_free(ctx);
    OPENSSL_free(der);
    ECDSA_SIG_free(es);
    return st;
}

static cl_custody *custody(unsigned max_failures, uint64_t ttl_ms, uint64_t grace_ms)
{
    cl_custody_config cfg = {.max_failures = max_failures, .ttl_ms = ttl_ms, .grace_ms = grace_ms,
                             .key_dir = key_dir};
    cl_custody *c = NULL;
    CHECK_OK(cl_custody_new(&cfg, &c));
    return c;
}

static uint8_t token_flags_of(cl_custody *c, uint64_t now)
{
    cl_custody_conn *prov = NULL;
    CHECK_OK(cl_custody_conn_new(c, CL_CUSTODY_PROVISION_SOCKET, &prov));
    cl_kh_request r = {.type = CL_KH_STATUS};
    cl_cursor p;
    uint8_t flags = 0xff;
    if (call(prov, &r, now, &p) == 0) {
        cl_kh_token_info t[CL_KH_MAX_TOKENS];
        size_t n = 0;
        CHECK_OK(cl_kh_decode_tokens(&p, t, CL_KH_MAX_TOKENS, &n));
        CHECK(n == 1);
        if (n == 1)
            flags = t[0].flags;
    }
    cl_custody_conn_free(prov);
    return flags;
}

static void pin_lockout(void)
{
    test_key_files k;
    make_key(&k, "lock.pem");
    cl_custody *c = custody(3, 0, 1000);
    cl_custody_conn *prov = NULL, *a = NULL, *b = NULL;
    CHECK_OK(cl_custody_conn_new(c, CL_CUSTODY_PROVISION_SOCKET, &prov));
    CHECK_OK(cl_custody_conn_new(c, CL_CUSTODY_TOKEN_SOCKET, &a));
    CHECK_OK(cl_custody_conn_new(c, CL_CUSTODY_TOKEN_SOCKET, &b));
    cl_kh_request put = put_file("lock", "1234", &k);
    CHECK(call(prov, &put, 0, NULL) == 0);
    /* put is a provisioning message: the token socket does not know it */
    CHECK(call(a, &put, 0, NULL) == CL_KH_ST_UNKNOWN_TYPE);
    /* the count is the token's, not the connection's */
    CHECK(login(a, 0, "0000", 1) == CL_KH_ST_PIN_INCORRECT);
    CHECK(login(b, 0, "0001", 2) == CL_KH_ST_PIN_INCORRECT);
    CHECK(token_flags_of(c, 3) == (CL_KH_TOKEN_COUNT_LOW | CL_KH_TOKEN_FINAL_TRY));
    CHECK(login(a, 0, "0002", 4) == CL_KH_ST_PIN_LOCKED);
    /* locked: the right PIN no longer opens it */
    CHECK(login(b, 0, "1234", 5) == CL_KH_ST_PIN_LOCKED);
    CHECK(token_flags_of(c, 6) & CL_KH_TOKEN_LOCKED);
    uint32_t h = private_handle(a, 0, 7);
    CHECK(h != 0);
    CHECK(sign(a, 0, h, 8, NULL) == CL_KH_ST_NOT_LOGGED_IN);
    /* a right PIN before the limit resets the count */
    CHECK(call(prov, &put, 10, NULL) == 0);
    CHECK(token_flags_of(c, 11) == 0);
    CHECK(login(a, 0, "9999", 12) == CL_KH_ST_PIN_INCORRECT);
    CHECK(login(a, 0, "1234", 13) == 0);
    CHECK(login(a, 0, "1234", 14) == CL_KH_ST_ALREADY_LOGGED_IN);
    CHECK(login(b, 0, "9999", 15) == CL_KH_ST_PIN_INCORRECT);
    CHECK(login(b, 0, "9998", 16) == CL_KH_ST_PIN_INCORRECT);
    CHECK(login(b, 0, "1234", 17) == 0);
    CHECK(sign(a, 0, h, 18, k.key) == 0);
    cl_custody_conn_free(prov);
    cl_custody_conn_free(a);
    cl_custody_conn_free(b);
    cl_custody_free(c);
    free_key(&k);
}

static void expiry(void)
{
    test_key_files k;
    make_key(&k, "ttl.pem");
    cl_custody *c = custody(5, 1000, 1000);
    cl_custody_conn *prov = NULL, *a = NULL;
    CHECK_OK(cl_custody_conn_new(c, CL_CUSTODY_PROVISION_SOCKET, &prov));
    CHECK_OK(cl_custody_conn_new(c, CL_CUSTODY_TOKEN_SOCKET, &a));
    cl_kh_request put = put_file("ttl", "1234", &k);
    uint64_t t0 = 1000000;
    CHECK(call(prov, &put, t0, NULL) == 0);
    CHECK(login(a, 0, "1234", t0 + 1) == 0);
    uint32_t h = private_handle(a, 0, t0 + 2);
    CHECK(sign(a, 0, h, t0 + 1000, k.key) == 0); /* at the TTL: still valid */
    /* a clock read before the put's (another thread's) is not an age of 2^64 ms */
    CHECK(sign(a, 0, h, t0 - 5, k.key) == 0);
    CHECK(sign(a, 0, h, t0 + 1001, NULL) == CL_KH_ST_EXPIRED);
    CHECK(token_flags_of(c, t0 + 1002) & CL_KH_TOKEN_EXPIRED);
    /* the keys are gone, not only hidden: no objects are listed */
    CHECK(private_handle(a, 0, t0 + 1003) == 0);
    /* housekeeping alone (no request) expires it too */
    CHECK(call(prov, &put, t0 + 5000, NULL) == 0);
    CHECK(token_flags_of(c, t0 + 5001) == 0);
    cl_custody_housekeeping(c, t0 + 6001);
    CHECK(token_flags_of(c, t0 + 6001) & CL_KH_TOKEN_EXPIRED);
    /* put again: usable again with new handles (the old key objects were
     * wiped); the login of this connection still holds (same token) */
    CHECK(call(prov, &put, t0 + 7000, NULL) == 0);
    CHECK(sign(a, 0, h, t0 + 7001, NULL) == CL_KH_ST_NO_OBJECT);
    uint32_t h2 = private_handle(a, 0, t0 + 7002);
    CHECK(h2 != 0 && h2 != h);
    CHECK(sign(a, 0, h2, t0 + 7003, k.key) == 0);
    cl_custody_conn_free(prov);
    cl_custody_conn_free(a);
    cl_custody_free(c);
    free_key(&k);
}

static void rotation_grace(void)
{
    test_key_files k1, k2;
    make_key(&k1, "rot1.pem");
    make_key(&k2, "rot2.pem");
    cl_custody *c = custody(5, 0, 5000);
    cl_custody_conn *prov = NULL, *a = NULL;
    CHECK_OK(cl_custody_conn_new(c, CL_CUSTODY_PROVISION_SOCKET, &prov));
    CHECK_OK(cl_custody_conn_new(c, CL_CUSTODY_TOKEN_SOCKET, &a));
    cl_kh_request put1 = put_file("rot", "1234", &k1), put2 = put_file("rot", "1234", &k2);
    cl_cursor p;
    CHECK(call(prov, &put1, 100, &p) == 0);
    CHECK(login(a, 0, "1234", 101) == 0);
    uint32_t h1 = private_handle(a, 0, 102);
    CHECK(sign(a, 0, h1, 103, k1.key) == 0);
    /* the same key again is a refresh: same generation, same handles */
    CHECK(call(prov, &put1, 200, &p) == 0);
    uint32_t slot = 0;
    uint64_t gen = 0;
    CHECK_OK(cl_cursor_be32(&p, &slot));
    CHECK_OK(cl_cursor_be64(&p, &gen));
    CHECK(gen == 1);
    CHECK(private_handle(a, 0, 201) == h1);
    /* a new key rotates */
    CHECK(call(prov, &put2, 1000, &p) == 0);
    CHECK_OK(cl_cursor_be32(&p, &slot));
    CHECK_OK(cl_cursor_be64(&p, &gen));
    CHECK(gen == 2);
    uint32_t h2 = private_handle(a, 0, 1001);
    CHECK(h2 != 0 && h2 != h1);
    /* within the grace the previous key still signs, and is the previous key */
    CHECK(sign(a, 0, h1, 5999, k1.key) == 0);
    CHECK(sign(a, 0, h2, 5999, k2.key) == 0);
    cl_kh_request get = {.type = CL_KH_GET_OBJECT, .slot = 0, .handle = h1};
    CHECK(call(a, &get, 5999, NULL) == 0);
    /* the connection caches a context holding key 1: the grace's end releases it */
    CHECK(sign(a, 0, h1, 5999, k1.key) == 0);
    CHECK(cl_custody_conn_idle(a));
    /* after the grace: gone */
    CHECK(sign(a, 0, h1, 6000, NULL) == CL_KH_ST_NO_OBJECT);
    CHECK(call(a, &get, 6000, NULL) == CL_KH_ST_NO_OBJECT);
    CHECK(!cl_custody_conn_idle(a));
    CHECK(sign(a, 0, h2, 6001, k2.key) == 0);
    /* delete, then a new token of the same label: the old login does not carry over */
    cl_kh_request del = {.type = CL_KH_DELETE_TOKEN, .label = sl("rot")};
    CHECK(call(prov, &del, 7000, NULL) == 0);
    CHECK(call(prov, &del, 7001, NULL) == CL_KH_ST_NO_SLOT);
    CHECK(call(prov, &put2, 7002, NULL) == 0);
    uint32_t h3 = private_handle(a, 0, 7003);
    CHECK(sign(a, 0, h3, 7004, NULL) == CL_KH_ST_NOT_LOGGED_IN);
    cl_custody_conn_free(prov);
    cl_custody_conn_free(a);
    cl_custody_free(c);
    free_key(&k1);
    free_key(&k2);
}

/* ---- a fake KMS ------------------------------------------------------------------------- */

#define KEY1_ARN "arn:aws:kms:eu-west-1:111122223333:key/1111aaaa-0000-0000-0000-000000000001"
#define KEY2_ARN "arn:aws:kms:eu-west-1:111122223333:key/2222bbbb-0000-0000-0000-000000000002"

/* A "ciphertext" is "KEY_ARN|PURPOSE|TOKEN|" then the PEM: the fake opens
 * it only with the KeyId and context it was made with, as KMS does. */
typedef struct fake_kms {
    int calls;
    const char *answer_key_id; /* NULL: the ciphertext's own key */
} fake_kms;

static int fake_decrypt(void *arg, const cl_kms_options *o, cl_slice ct, cl_buf *pt, cl_custody_kms_answer *ans)
{
    fake_kms *f = arg;
    f->calls++;
    char text[8192];
    if (ct.len >= sizeof text)
        return cl_error_set(CL_EINVAL, "fake: too long");
    memcpy(text, ct.data, ct.len);
    text[ct.len] = 0;
    char *save = NULL, *arn = strtok_r(text, "|", &save), *purpose = strtok_r(NULL, "|", &save),
         *token = strtok_r(NULL, "|", &save), *pem = save;
    if (!arn || !purpose || !token || !pem) {
        snprintf(ans->error_type, sizeof ans->error_type, "InvalidCiphertextException");
        return cl_error_set(CL_EPROTO, "fake: InvalidCiphertextException");
    }
    if (!o->key_id || !cl_custody_kms_key_id_matches(o->key_id, arn)) {
        snprintf(ans->error_type, sizeof ans->error_type, "IncorrectKeyException");
        return cl_error_set(CL_EPROTO, "fake: IncorrectKeyException");
    }
    bool purpose_ok = false, token_ok = !strcmp(token, "-");
    for (size_t i = 0; i < o->context_count; i++) {
        if (!strcmp(o->context[i].key, "purpose"))
            purpose_ok = !strcmp(o->context[i].value, purpose);
        else if (!strcmp(o->context[i].key, "token"))
            token_ok = !strcmp(o->context[i].value, token);
        else
            purpose_ok = false;
    }
    if (!purpose_ok || !token_ok) {
        snprintf(ans->error_type, sizeof ans->error_type, "InvalidCiphertextException");
        return cl_error_set(CL_EPROTO, "fake: InvalidCiphertextException");
    }
    snprintf(ans->key_id, sizeof ans->key_id, "%s", f->answer_key_id ? f->answer_key_id : arn);
    return cl_buf_append(pt, pem, strlen(pem));
}

static char ct_text[8192];
static cl_kh_request put_kms(const char *label, const char *arn, const char *purpose, const char *ct_token,
                             const test_key_files *k, const char *chain)
{
    snprintf(ct_text, sizeof ct_text, "%s|%s|%s|%s", arn, purpose, ct_token, k->pem_key);
    return (cl_kh_request){.type = CL_KH_PUT_TOKEN, .label = sl(label), .pin = sl("1234"), .object_label = sl(label),
                           .key_source = CL_KH_SRC_KMS, .key_ref = sl(ct_text), .chain = sl(chain)};
}

static void provisioning_refusals(void)
{
    test_key_files k, other;
    make_key(&k, "kms.pem");
    make_key(&other, "other.pem");
    fake_kms f = {0};
    /* pinned by bare key id and by alias: the bare id must match the answered ARN */
    const char *const pinned[] = {"1111aaaa-0000-0000-0000-000000000001"};
    cl_custody_config cfg = {.max_failures = 5, .grace_ms = 1000, .kms_decrypt = fake_decrypt, .kms_arg = &f,
                             .kms_key_ids = pinned, .kms_key_id_count = 1};
    cl_custody *c = NULL;
    CHECK_OK(cl_custody_new(&cfg, &c));
    uint32_t slot, st;
    uint64_t gen;

    /* the right ciphertext: opened */
    cl_kh_request r = put_kms("tok", KEY1_ARN, "pkcs11-token", "tok", &k, k.chain);
    CHECK_OK(cl_custody_put(c, &r, 1, &slot, &gen, &st));
    CHECK(st == 0 && gen == 1 && f.calls == 1);

    /* made for another purpose (the enclave's TLS key): KMS refuses the context */
    r = put_kms("tok2", KEY1_ARN, "enclave-tls-key", "-", &k, k.chain);
    CHECK_ERR(cl_custody_put(c, &r, 2, &slot, &gen, &st), CL_EPROTO, "not made for token \"tok2\"");
    CHECK(st == CL_KH_ST_KMS_REFUSED);
    /* made for another token */
    r = put_kms("tok2", KEY1_ARN, "pkcs11-token", "tok", &k, k.chain);
    CHECK_ERR(cl_custody_put(c, &r, 3, &slot, &gen, &st), CL_EPROTO, "purpose=pkcs11-token");
    CHECK(st == CL_KH_ST_KMS_REFUSED);

    /* under a KMS key this key-holder was not pinned to */
    r = put_kms("tok3", KEY2_ARN, "pkcs11-token", "tok3", &k, k.chain);
    CHECK_ERR(cl_custody_put(c, &r, 4, &slot, &gen, &st), CL_EPROTO, "--kms-key-id");
    CHECK(st == CL_KH_ST_KMS_REFUSED);

    /* KMS (or what answers for it) says it opened it under another key */
    f.answer_key_id = KEY2_ARN;
    r = put_kms("tok4", KEY1_ARN, "pkcs11-token", "tok4", &k, k.chain);
    CHECK_ERR(cl_custody_put(c, &r, 5, &slot, &gen, &st), CL_EVERIFY, "KMS answered for key");
    CHECK(st == CL_KH_ST_KMS_REFUSED);
    f.answer_key_id = NULL;

    /* a chain whose leaf is not the key's */
    r = put_kms("tok5", KEY1_ARN, "pkcs11-token", "tok5", &k, other.chain);
    CHECK_ERR(cl_custody_put(c, &r, 6, &slot, &gen, &st), CL_EVERIFY, "not the key's");
    CHECK(st == CL_KH_ST_BAD_KEY);

    /* a broken chain: the key's certificate followed by one that did not issue it */
    static char broken[16384];
    snprintf(broken, sizeof broken, "%s%s", k.chain, other.chain);
    r = put_kms("tok6", KEY1_ARN, "pkcs11-token", "tok6", &k, broken);
    CHECK_ERR(cl_custody_put(c, &r, 7, &slot, &gen, &st), CL_EVERIFY, NULL);
    CHECK(st == CL_KH_ST_BAD_KEY);

    /* none of the refusals made a token; a file key is refused without --key-dir */
    CHECK(token_flags_of(c, 8) == 0); /* exactly one token: "tok" */
    cl_kh_request file = put_file("tok7", "1234", &k);
    CHECK_ERR(cl_custody_put(c, &file, 9, &slot, &gen, &st), CL_EINVAL, "--key-dir");
    CHECK(st == CL_KH_ST_BAD_KEY);
    cl_custody_free(c);

    /* no KMS settings: KMS keys are not accepted, and nothing is asked */
    cl_custody *plain = custody(5, 0, 1000);
    f.calls = 0;
    r = put_kms("tok", KEY1_ARN, "pkcs11-token", "tok", &k, k.chain);
    CHECK_ERR(cl_custody_put(plain, &r, 1, &slot, &gen, &st), CL_EINVAL, "no KMS settings");
    CHECK(st == CL_KH_ST_NOT_IMPLEMENTED && f.calls == 0);
    /* a file key name that leaves the key directory */
    cl_kh_request esc = put_file("esc", "1234", &k);
    esc.key_ref = sl("../etc/passwd");
    CHECK_ERR(cl_custody_put(plain, &esc, 2, &slot, &gen, &st), CL_EINVAL, "key file name");
    cl_custody_free(plain);

    /* a KMS key source must be pinned */
    cl_custody_config unpinned = {.kms_decrypt = fake_decrypt, .kms_arg = &f};
    CHECK_ERR(cl_custody_new(&unpinned, &c), CL_EINVAL, "--kms-key-id");
    CHECK(c == NULL);
    free_key(&k);
    free_key(&other);
}

static void key_id_matching(void)
{
    CHECK(cl_custody_kms_key_id_matches(KEY1_ARN, KEY1_ARN));
    CHECK(cl_custody_kms_key_id_matches("1111aaaa-0000-0000-0000-000000000001", KEY1_ARN));
    CHECK(!cl_custody_kms_key_id_matches("1111aaaa-0000-0000-0000-000000000001", KEY2_ARN));
    CHECK(!cl_custody_kms_key_id_matches(KEY1_ARN, KEY2_ARN));
    /* a suffix that is not the whole key id */
    CHECK(!cl_custody_kms_key_id_matches("0000-000000000001", KEY1_ARN));
    CHECK(!cl_custody_kms_key_id_matches("", KEY1_ARN));
}

static void malformed_requests(void)
{
    cl_custody *c = custody(5, 0, 1000);
    cl_custody_conn *a = NULL;
    CHECK_OK(cl_custody_conn_new(c, CL_CUSTODY_TOKEN_SOCKET, &a));
    const uint8_t junk[] = {0x01, 0xff};
    CHECK_OK(cl_custody_handle(a, junk, sizeof junk, 1, &reply_buf));
    uint32_t st = 0;
    cl_cursor p;
    CHECK_OK(cl_kh_reply_split(reply_buf.data, reply_buf.len, &st, &p));
    CHECK(st == CL_KH_ST_MALFORMED);
    CHECK_OK(cl_custody_handle(a, NULL, 0, 1, &reply_buf));
    CHECK_OK(cl_kh_reply_split(reply_buf.data, reply_buf.len, &st, &p));
    CHECK(st != 0);
    cl_custody_conn_free(a);
    cl_custody_free(c);
}

int main(void)
{
    if (!mkdtemp(key_dir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(pin_lockout);
    RUN(expiry);
    RUN(rotation_grace);
    RUN(provisioning_refusals);
    RUN(key_id_matching);
    RUN(malformed_requests);
    cl_buf_free(&reply_buf);
    rmdir(key_dir);
    return test_summary();
}

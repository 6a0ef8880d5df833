/* The app's KMS endpoint (lib/enclave/kms_endpoint.c) against a KMS played
 * in process: the Recipient added with a fresh document carrying the
 * session key (nsm-sim in process), envelopes made as KMS makes them
 * (cl_cms_recipient_encrypt) and opened into each operation's field, the
 * app's own fields and context passed as they are, KMS's answers unchanged,
 * and every refusal (shape, size, operations, keys, a KMS answer that
 * breaks the Recipient protocol) with nothing sent to KMS. */
#include "cloister/core/attestation.h"
#include "cloister/core/encoding.h"
#include "cloister/enclave/kms_endpoint.h"
#include "cloister/sim/cms_recipient.h"
#include "cloister/sim/nsm_sim.h"
#include "test.h"

#include <jansson.h>
#include <unistd.h>

static char tmpdir[64];
static cl_nsm_sim *sim;
static cl_nsm *nsm;
static cl_kms_recipient *recipient;

enum fake_mode { FAKE_KMS, FAKE_ERROR, FAKE_DOWN, FAKE_PLAINTEXT_TOO, FAKE_BAD_CMS, FAKE_SHORT, FAKE_RAW };

typedef struct fake {
    int mode;
    unsigned calls;
    char op[64];
    json_t *sent; /* the last request as KMS got it */
    const char *answer; /* FAKE_ERROR, FAKE_RAW */
    long status;
    bool doc_carried_key; /* the Recipient's document named the session key */
} fake;

static const uint8_t SECRET[64] = "the secret that only the enclave's session key opens; 64 bytes!";

static int fake_send(void *ctx, const char *op, const uint8_t *body, size_t len, long *status, cl_buf *answer)
{
    fake *f = ctx;
    f->calls++;
    snprintf(f->op, sizeof f->op, "%s", op);
    json_decref(f->sent);
    json_error_t jerr;
    f->sent = json_loadb((const char *)body, len, JSON_REJECT_DUPLICATES, &jerr);
    cl_buf_reset(answer);
    if (f->mode == FAKE_DOWN)
        return cl_error_set(CL_EIO, "connection refused");
    if (f->mode == FAKE_ERROR || f->mode == FAKE_RAW) {
        *status = f->status;
        return cl_buf_append(answer, f->answer, strlen(f->answer));
    }
    *status = 200;
    json_t *a = json_pack("{s:s}", "KeyId", "arn:aws:kms:eu-west-1:111122223333:key/k");
    json_t *r = json_object_get(f->sent, "Recipient");
    if (!r) { /* no Recipient: an ordinary answer */
        json_object_set_new(a, "CiphertextBlob", json_string("AQIDBA=="));
    } else {
        cl_buf doc = CL_BUF_INIT, env = CL_BUF_INIT, b64 = CL_BUF_INIT;
        const char *d = json_string_value(json_object_get(r, "AttestationDocument"));
        cl_attestation_doc ad;
        f->doc_carried_key = false;
        if (d && cl_base64_decode((const uint8_t *)d, strlen(d), &doc) == CL_OK &&
            cl_attestation_parse(doc.data, doc.len, &ad) == CL_OK) {
            cl_slice spki = cl_kms_recipient_public_key(recipient);
            f->doc_carried_key = ad.has_public_key && ad.public_key.len == spki.len &&
                                 !memcmp(ad.public_key.data, spki.data, spki.len);
            cl_attestation_doc_free(&ad);
        }
        size_t n = 32;
        json_t *nb = json_object_get(f->sent, "NumberOfBytes");
        if (json_is_integer(nb))
            n = (size_t)json_integer_value(nb);
        if (f->mode == FAKE_SHORT)
            n--;
        cl_slice spki = cl_kms_recipient_public_key(recipient);
        CHECK_OK(cl_cms_recipient_encrypt(spki.data, spki.len, SECRET, n, &env));
        if (f->mode == FAKE_BAD_CMS)
            env.data[env.len / 2] ^= 1;
        CHECK_OK(cl_base64_encode(env.data, env.len, &b64));
        json_object_set_new(a, "CiphertextForRecipient", json_string((const char *)b64.data));
        if (!strcmp(op, "GenerateDataKeyPair")) {
            json_object_set_new(a, "PublicKey", json_string("MFkw"));
            json_object_set_new(a, "PrivateKeyCiphertextBlob", json_string("AQID"));
            json_object_set_new(a, "KeyPairSpec", json_string("ECC_NIST_P256"));
        }
        if (!strcmp(op, "GenerateDataKey") || !strcmp(op, "Decrypt"))
            json_object_set_new(a, "CiphertextBlob", json_string("AQIDBA=="));
        if (f->mode == FAKE_PLAINTEXT_TOO)
            json_object_set_new(a, "Plaintext", json_string("c2VjcmV0"));
        cl_buf_free(&doc);
        cl_buf_free(&env);
        cl_buf_free(&b64);
    }
    char *text = json_dumps(a, JSON_COMPACT);
    int rc = cl_buf_append(answer, text, strlen(text));
    free(text);
    json_decref(a);
    return rc;
}

static cl_kms_endpoint *endpoint(fake *f, const char *keys, const char *ops)
{
    cl_kms_endpoint_config cfg = {
        .key_ids = keys, .operations = ops, .recipient = recipient, .send = fake_send, .send_ctx = f};
    cl_kms_endpoint *ep = NULL;
    CHECK_OK(cl_kms_endpoint_new(&cfg, &ep));
    return ep;
}

/* One request; the reply's JSON (caller decrefs) and status. */
static json_t *call(cl_kms_endpoint *ep, const char *op, const char *body, int *status)
{
    char target[128];
    snprintf(target, sizeof target, "TrentService.%s", op);
    cl_slice t = {(const uint8_t *)target, strlen(target)};
    cl_slice ct = {(const uint8_t *)"application/x-amz-json-1.1", 26};
    cl_kms_endpoint_request req = {
        .method = {(const uint8_t *)"POST", 4},
        .target = op ? &t : NULL,
        .content_type = &ct,
        .body = (const uint8_t *)body,
        .body_len = strlen(body),
    };
    cl_kms_endpoint_reply reply = {.body = CL_BUF_INIT};
    cl_kms_endpoint_handle(ep, &req, &reply);
    *status = reply.status;
    json_error_t jerr;
    json_t *j = json_loadb((const char *)reply.body.data, reply.body.len, 0, &jerr);
    CHECK(json_is_object(j));
    cl_buf_free(&reply.body);
    return j;
}

static bool secret_is(json_t *a, const char *field, size_t n)
{
    const char *b64 = json_string_value(json_object_get(a, field));
    cl_buf pt = CL_BUF_INIT;
    bool ok = b64 && cl_base64_decode((const uint8_t *)b64, strlen(b64), &pt) == CL_OK && pt.len == n &&
              !memcmp(pt.data, SECRET, n);
    cl_buf_free(&pt);
    return ok;
}

static const char *type_of(json_t *a)
{
    const char *t = json_string_value(json_object_get(a, "__type"));
    return t ? t : "";
}

static void recipient_operations(void)
{
    fake f = {.mode = FAKE_KMS};
    cl_kms_endpoint *ep = endpoint(&f, NULL, NULL);
    int st;
    json_t *a = call(ep, "Decrypt",
                     "{\"CiphertextBlob\":\"AQIDBA==\",\"EncryptionContext\":{\"app\":\"x\",\"purpose\":\"mine\"}}", &st);
    CHECK(st == 200 && secret_is(a, "Plaintext", 32));
    CHECK(!json_object_get(a, "CiphertextForRecipient") && json_object_get(a, "KeyId"));
    CHECK(!strcmp(f.op, "Decrypt") && f.doc_carried_key);
    json_t *r = json_object_get(f.sent, "Recipient");
    CHECK(!strcmp(json_string_value(json_object_get(r, "KeyEncryptionAlgorithm")), "RSAES_OAEP_SHA_256"));
    /* the app's fields as it sent them, its context untouched */
    CHECK(!strcmp(json_string_value(json_object_get(f.sent, "CiphertextBlob")), "AQIDBA=="));
    json_t *ctx = json_object_get(f.sent, "EncryptionContext");
    CHECK(json_object_size(ctx) == 2 && !strcmp(json_string_value(json_object_get(ctx, "purpose")), "mine"));
    json_decref(a);

    a = call(ep, "GenerateDataKey", "{\"KeyId\":\"alias/app\",\"NumberOfBytes\":48}", &st);
    CHECK(st == 200 && secret_is(a, "Plaintext", 48) && json_object_get(a, "CiphertextBlob"));
    json_decref(a);
    a = call(ep, "GenerateDataKey", "{\"KeyId\":\"alias/app\",\"KeySpec\":\"AES_256\"}", &st);
    CHECK(st == 200 && secret_is(a, "Plaintext", 32));
    json_decref(a);
    a = call(ep, "GenerateRandom", "{\"NumberOfBytes\":17}", &st);
    CHECK(st == 200 && secret_is(a, "Plaintext", 17));
    json_decref(a);
    a = call(ep, "GenerateDataKeyPair", "{\"KeyId\":\"alias/app\",\"KeyPairSpec\":\"ECC_NIST_P256\"}", &st);
    CHECK(st == 200 && secret_is(a, "PrivateKeyPlaintext", 32) && json_object_get(a, "PublicKey") &&
          json_object_get(a, "PrivateKeyCiphertextBlob") && !json_object_get(a, "CiphertextForRecipient"));
    json_decref(a);
    a = call(ep, "DeriveSharedSecret",
             "{\"KeyId\":\"alias/ecdh\",\"KeyAgreementAlgorithm\":\"ECDH\",\"PublicKey\":\"MFkwEwYH\"}", &st);
    CHECK(st == 200 && secret_is(a, "SharedSecret", 32) && f.doc_carried_key);
    json_decref(a);
    cl_kms_endpoint_stats s;
    cl_kms_endpoint_get_stats(ep, &s);
    CHECK(s.requests == 6 && s.forwarded == 6 && s.opened == 6);
    cl_kms_endpoint_free(ep);
    json_decref(f.sent);
}

static void pass_through(void)
{
    fake f = {.mode = FAKE_KMS};
    cl_kms_endpoint *ep = endpoint(&f, NULL, NULL);
    int st;
    json_t *a = call(ep, "Encrypt", "{\"KeyId\":\"alias/app\",\"Plaintext\":\"aGk=\"}", &st);
    CHECK(st == 200 && !json_object_get(f.sent, "Recipient") && json_object_get(a, "CiphertextBlob"));
    json_decref(a);
    /* an app with its own Recipient gets KMS's envelope as it is */
    f.mode = FAKE_RAW;
    f.status = 200;
    f.answer = "{\"KeyId\":\"k\",\"CiphertextForRecipient\":\"MIAGCSqG\"}";
    a = call(ep, "Decrypt",
             "{\"CiphertextBlob\":\"AQ==\",\"Recipient\":{\"AttestationDocument\":\"hEQ=\","
             "\"KeyEncryptionAlgorithm\":\"RSAES_OAEP_SHA_256\"}}",
             &st);
    CHECK(st == 200 && !strcmp(json_string_value(json_object_get(a, "CiphertextForRecipient")), "MIAGCSqG"));
    CHECK(!strcmp(json_string_value(json_object_get(json_object_get(f.sent, "Recipient"), "AttestationDocument")),
                  "hEQ="));
    json_decref(a);
    cl_kms_endpoint_free(ep);
    json_decref(f.sent);
}

static void kms_answers_unchanged(void)
{
    fake f = {.mode = FAKE_ERROR, .status = 400,
              .answer = "{\"__type\":\"AccessDeniedException\",\"message\":\"User: arn:x is not authorized\"}"};
    cl_kms_endpoint *ep = endpoint(&f, NULL, NULL);
    char target[] = "TrentService.Decrypt";
    cl_slice t = {(const uint8_t *)target, strlen(target)};
    cl_slice ct = {(const uint8_t *)"application/x-amz-json-1.1; charset=utf-8", 41};
    const char *body = "{\"CiphertextBlob\":\"AQ==\"}";
    cl_kms_endpoint_request req = {.method = {(const uint8_t *)"POST", 4}, .target = &t, .content_type = &ct,
                                   .body = (const uint8_t *)body, .body_len = strlen(body)};
    cl_kms_endpoint_reply reply = {.body = CL_BUF_INIT};
    cl_kms_endpoint_handle(ep, &req, &reply);
    CHECK(reply.status == 400 && reply.body.len == strlen(f.answer) && !memcmp(reply.body.data, f.answer, reply.body.len));
    f.status = 503;
    f.answer = "not JSON at all";
    cl_kms_endpoint_handle(ep, &req, &reply);
    CHECK(reply.status == 503 && reply.body.len == 15);
    cl_buf_free(&reply.body);
    int st;
    f.mode = FAKE_DOWN;
    json_t *a = call(ep, "Decrypt", body, &st);
    CHECK(st == 503 && !strcmp(type_of(a), "DependencyTimeoutException"));
    CHECK(strstr(json_string_value(json_object_get(a, "message")), "connection refused"));
    json_decref(a);
    cl_kms_endpoint_free(ep);
    json_decref(f.sent);
}

/* KMS answers that break the Recipient protocol: nothing for the app. */
static void broken_answers(void)
{
    fake f = {.mode = FAKE_PLAINTEXT_TOO};
    cl_kms_endpoint *ep = endpoint(&f, NULL, NULL);
    int st;
    json_t *a = call(ep, "Decrypt", "{\"CiphertextBlob\":\"AQ==\"}", &st);
    CHECK(st == 500 && !strcmp(type_of(a), "KMSInternalException") && !json_object_get(a, "Plaintext"));
    CHECK(strstr(json_string_value(json_object_get(a, "message")), "in the clear"));
    json_decref(a);
    f.mode = FAKE_BAD_CMS;
    a = call(ep, "Decrypt", "{\"CiphertextBlob\":\"AQ==\"}", &st);
    CHECK(st == 500 && strstr(json_string_value(json_object_get(a, "message")), "cannot be opened"));
    json_decref(a);
    f.mode = FAKE_SHORT;
    a = call(ep, "GenerateRandom", "{\"NumberOfBytes\":16}", &st);
    CHECK(st == 500 && strstr(json_string_value(json_object_get(a, "message")), "15 bytes, 16 asked for"));
    json_decref(a);
    f.mode = FAKE_RAW;
    f.status = 200;
    const char *bad[] = {"[]", "{\"KeyId\":\"k\"}", "{\"CiphertextForRecipient\":\"!!\"}",
                         "{\"CiphertextForRecipient\":\"\"}", "{\"a\":1,\"a\":2}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        f.answer = bad[i];
        a = call(ep, "Decrypt", "{\"CiphertextBlob\":\"AQ==\"}", &st);
        CHECK(st == 500 && !json_object_get(a, "Plaintext"));
        json_decref(a);
    }
    cl_kms_endpoint_free(ep);
    json_decref(f.sent);
}

typedef struct refusal {
    const char *op, *body;
    int status;
    const char *type, *fragment;
} refusal;

static void refusals(void)
{
    fake f = {.mode = FAKE_KMS};
    cl_kms_endpoint *ep = endpoint(&f, NULL, NULL);
    static char big_blob[20000], at_limit[20000], huge[40000];
    cl_buf b = CL_BUF_INIT;
    uint8_t ones[6145];
    memset(ones, 1, sizeof ones);
    CHECK_OK(cl_base64_encode(ones, 6145, &b));
    snprintf(big_blob, sizeof big_blob, "{\"CiphertextBlob\":\"%s\"}", (const char *)b.data);
    cl_buf_reset(&b);
    CHECK_OK(cl_base64_encode(ones, 6144, &b));
    snprintf(at_limit, sizeof at_limit, "{\"CiphertextBlob\":\"%s\"}", (const char *)b.data);
    cl_buf_free(&b);
    memset(huge, ' ', sizeof huge - 1);
    huge[0] = '{';
    huge[sizeof huge - 2] = '}';
    const refusal cases[] = {
        {"Decrypt", "{\"CiphertextBlob\":\"AQ==\"", 400, "SerializationException", "not a JSON object"},
        {"Decrypt", "{\"CiphertextBlob\":\"AQ==\",\"CiphertextBlob\":\"AQ==\"}", 400, "SerializationException",
         "duplicate"},
        {"Decrypt", "\"AQ==\"", 400, "SerializationException", "not a JSON object"},
        {"Decrypt", "[1]", 400, "SerializationException", "another JSON value"},
        {"Decrypt", "{} {}", 400, "SerializationException", NULL},
        {"Decrypt", "", 400, "SerializationException", NULL},
        {"CreateKey", "{}", 400, "UnknownOperationException", "CreateKey"},
        {"decrypt", "{}", 400, "UnknownOperationException", NULL},
        {"Decrypt2", "{}", 400, "UnknownOperationException", NULL},
        {NULL, "{}", 400, "UnknownOperationException", "no X-Amz-Target"},
        {"Decrypt", "{}", 400, "ValidationException", "'ciphertextBlob'"},
        {"Decrypt", big_blob, 400, "ValidationException", "less than or equal to 6144 (it has 6145 bytes)"},
        {"Decrypt", "{\"CiphertextBlob\":\"\"}", 400, "ValidationException", "greater than or equal to 1"},
        {"Decrypt", "{\"CiphertextBlob\":\"AQ=\"}", 400, "SerializationException", "base64"},
        {"Decrypt", "{\"CiphertextBlob\":[\"AQ==\"]}", 400, "SerializationException", NULL},
        {"Decrypt", "{\"CiphertextBlob\":\"AQ==\",\"Extra\":1}", 400, "ValidationException", "'Extra'"},
        {"Decrypt", "{\"CiphertextBlob\":\"AQ==\",\"EncryptionContext\":{\"a\":1}}", 400, "SerializationException",
         NULL},
        {"Decrypt", "{\"CiphertextBlob\":\"AQ==\",\"EncryptionContext\":{\"\":\"v\"}}", 400, "SerializationException",
         NULL},
        {"Decrypt", "{\"CiphertextBlob\":\"AQ==\",\"EncryptionContext\":{\"a\":\"b\\u0000c\"}}", 400,
         "SerializationException", NULL},
        {"Decrypt", "{\"CiphertextBlob\":\"AQ==\",\"GrantTokens\":[1]}", 400, "ValidationException", NULL},
        {"Decrypt", "{\"CiphertextBlob\":\"AQ==\",\"Recipient\":{\"AttestationDocument\":\"AQ==\",\"X\":1}}", 400,
         "ValidationException", "Recipient"},
        {"Decrypt", "{\"CiphertextBlob\":\"AQ==\",\"DryRun\":\"yes\"}", 400, "SerializationException", NULL},
        {"Encrypt", "{\"KeyId\":\"k\",\"Plaintext\":\"aGk=\",\"Recipient\":{\"AttestationDocument\":\"AQ==\"}}", 400,
         "ValidationException", "'Recipient'"},
        {"GenerateDataKey", "{\"KeyId\":\"k\",\"NumberOfBytes\":0}", 400, "ValidationException", "between 1 and 1024"},
        {"GenerateDataKey", "{\"KeyId\":\"k\",\"NumberOfBytes\":1.5}", 400, "ValidationException", NULL},
        {"GenerateDataKey", "{\"KeyId\":\"\"}", 400, "ValidationException", "'keyId'"},
        {"GenerateRandom", "{\"NumberOfBytes\":1025}", 400, "ValidationException", NULL},
        {"Decrypt", huge, 413, "ValidationException", "over the limit of 32768"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int st;
        unsigned before = f.calls;
        json_t *a = call(ep, cases[i].op, cases[i].body, &st);
        const char *m = json_string_value(json_object_get(a, "message"));
        bool ok = st == cases[i].status && !strcmp(type_of(a), cases[i].type) && f.calls == before &&
                  (!cases[i].fragment || (m && strstr(m, cases[i].fragment)));
        if (!ok)
            fprintf(stderr, "case %zu (%s): %d %s: %s\n", i, cases[i].op ? cases[i].op : "-", st, type_of(a),
                    m ? m : "");
        CHECK(ok);
        json_decref(a);
    }
    /* 6144 bytes exactly is KMS's to judge */
    int st;
    json_t *a = call(ep, "Decrypt", at_limit, &st);
    CHECK(st == 200 && f.calls == 1);
    json_decref(a);
    /* method and content type */
    cl_slice t = {(const uint8_t *)"TrentService.GenerateRandom", 27};
    cl_slice ct = {(const uint8_t *)"application/json", 16};
    cl_kms_endpoint_request req = {.method = {(const uint8_t *)"POST", 4}, .target = &t, .content_type = &ct,
                                   .body = (const uint8_t *)"{}", .body_len = 2};
    cl_kms_endpoint_reply reply = {.body = CL_BUF_INIT};
    cl_kms_endpoint_handle(ep, &req, &reply);
    CHECK(reply.status == 400 && strstr((const char *)reply.body.data, "Content-Type"));
    req.content_type = NULL;
    cl_kms_endpoint_handle(ep, &req, &reply);
    CHECK(reply.status == 400);
    req.method = (cl_slice){(const uint8_t *)"GET", 3};
    cl_kms_endpoint_handle(ep, &req, &reply);
    CHECK(reply.status == 405);
    cl_buf_free(&reply.body);
    CHECK(f.calls == 1);
    cl_kms_endpoint_free(ep);
    json_decref(f.sent);
}

static void allowed_keys_and_operations(void)
{
    fake f = {.mode = FAKE_KMS};
    cl_kms_endpoint *ep = endpoint(&f, "alias/app,arn:aws:kms:eu-west-1:111122223333:key/k1", "Decrypt,GenerateDataKey,ReEncrypt");
    int st;
    json_t *a = call(ep, "Decrypt", "{\"CiphertextBlob\":\"AQ==\",\"KeyId\":\"alias/app\"}", &st);
    CHECK(st == 200 && secret_is(a, "Plaintext", 32));
    json_decref(a);
    const refusal cases[] = {
        {"Decrypt", "{\"CiphertextBlob\":\"AQ==\"}", 400, "AccessDeniedException", "KeyId must name one"},
        {"Decrypt", "{\"CiphertextBlob\":\"AQ==\",\"KeyId\":\"alias/other\"}", 400, "AccessDeniedException",
         "'alias/other'"},
        {"GenerateDataKey", "{\"KeyId\":\"alias/App\"}", 400, "AccessDeniedException", NULL},
        {"GenerateRandom", "{\"NumberOfBytes\":8}", 400, "AccessDeniedException", "GenerateRandom"},
        {"Encrypt", "{\"KeyId\":\"alias/app\",\"Plaintext\":\"aGk=\"}", 400, "AccessDeniedException", "Encrypt"},
        {"ReEncrypt", "{\"CiphertextBlob\":\"AQ==\",\"DestinationKeyId\":\"alias/app\"}", 400, "AccessDeniedException",
         "SourceKeyId"},
        {"ReEncrypt", "{\"CiphertextBlob\":\"AQ==\",\"SourceKeyId\":\"alias/app\",\"DestinationKeyId\":\"alias/x\"}",
         400, "AccessDeniedException", "alias/x"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        unsigned before = f.calls;
        a = call(ep, cases[i].op, cases[i].body, &st);
        const char *m = json_string_value(json_object_get(a, "message"));
        bool ok = st == cases[i].status && !strcmp(type_of(a), cases[i].type) && f.calls == before &&
                  (!cases[i].fragment || (m && strstr(m, cases[i].fragment)));
        if (!ok)
            fprintf(stderr, "case %zu: %d %s: %s\n", i, st, type_of(a), m ? m : "");
        CHECK(ok);
        json_decref(a);
    }
    a = call(ep, "GenerateDataKey", "{\"KeyId\":\"arn:aws:kms:eu-west-1:111122223333:key/k1\"}", &st);
    CHECK(st == 200);
    json_decref(a);
    cl_kms_endpoint_free(ep);
    json_decref(f.sent);

    cl_kms_endpoint_config cfg = {.recipient = recipient, .send = fake_send, .send_ctx = &f};
    cfg.operations = "Decrypt,CreateKey";
    CHECK_ERR(cl_kms_endpoint_new(&cfg, &ep), CL_EINVAL, "unknown KMS operation 'CreateKey'");
    cfg.operations = "Decrypt,,Encrypt";
    CHECK_ERR(cl_kms_endpoint_new(&cfg, &ep), CL_EINVAL, "empty entry");
    cfg.operations = NULL;
    cfg.key_ids = "alias/a,";
    CHECK_ERR(cl_kms_endpoint_new(&cfg, &ep), CL_EINVAL, "empty entry");
    cfg.key_ids = NULL;
    cfg.recipient = NULL;
    CHECK_ERR(cl_kms_endpoint_new(&cfg, &ep), CL_EINVAL, "Recipient");
    CHECK(cl_kms_endpoint_uses_recipient("DeriveSharedSecret") && !cl_kms_endpoint_uses_recipient("Encrypt"));
    CHECK(strstr(cl_kms_endpoint_operations(), "GenerateDataKeyPair,GenerateRandom"));
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/cloister-kmsep-unit.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    char dir[128];
    snprintf(dir, sizeof dir, "%s/sim", tmpdir);
    cl_nsm_sim_config cfg = {.state_dir = dir, .instance_id = "i-0123456789abcdef0"};
    CHECK_OK(cl_nsm_sim_new(&cfg, &sim));
    CHECK_OK(cl_nsm_open_sim(sim, &nsm));
    CHECK_OK(cl_kms_recipient_new(nsm, &recipient));
    if (!recipient)
        return 1;
    RUN(recipient_operations);
    RUN(pass_through);
    RUN(kms_answers_unchanged);
    RUN(broken_answers);
    RUN(refusals);
    RUN(allowed_keys_and_operations);
    cl_kms_recipient_free(recipient);
    cl_nsm_close(nsm);
    cl_nsm_sim_free(sim);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    return test_summary();
}

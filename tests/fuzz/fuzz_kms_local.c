/* Feeds arbitrary requests to kms-local's request handling.  An input is
 * "OPERATION\nBODY": the harness signs it with the configured credential
 * (so the bytes reach the operations, not only the signature check) at a
 * fixed clock; an input starting with '!' is sent unsigned, its first line
 * as the Authorization header.  In the body, @DOC@ stands for a valid
 * attestation document (base64, with an RSA public key) from an in-process
 * simulator whose root is trusted, and @BLOB@ for a valid ciphertext blob
 * under alias/fuzz, so that mutations around them reach the Recipient,
 * policy and CMS paths.  Every answer must be a JSON object, an error one
 * with AWS's shape, and no Plaintext ever goes with a Recipient. */
#include "cloister/core/encoding.h"
#include "cloister/sim/kms_local.h"
#include "cloister/enclave/nsm.h"
#include "cloister/sim/nsm_sim.h"

#include <dirent.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <unistd.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define AKID "AKIDFUZZ"
#define SECRET "fuzz-secret"
#define NOW_S 1725719859

static cl_kms_store *store;
static cl_kms_local *kms;
static cl_verifier *verifier;
static cl_nsm_sim *sim;
static char state_dir[64];
static cl_buf doc_b64, blob_b64;

static void encrypt_seed(void);

static uint64_t fixed_clock(void *ctx)
{
    (void)ctx;
    return (uint64_t)NOW_S * 1000;
}

static void cleanup_dir(void)
{
    DIR *d = opendir(state_dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char path[512];
        snprintf(path, sizeof path, "%s/%s", state_dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(state_dir);
}

/* A document from the simulator with a fresh RSA key, as base64. */
static void make_document(void)
{
    EVP_PKEY *rsa = EVP_RSA_gen(2048);
    uint8_t *spki = NULL;
    int len = rsa ? i2d_PUBKEY(rsa, &spki) : -1;
    cl_nsm *nsm = NULL;
    cl_buf doc = CL_BUF_INIT;
    if (len <= 0 || cl_nsm_open_sim(sim, &nsm) < 0 ||
        cl_nsm_attestation(nsm, NULL, 0, NULL, 0, spki, (size_t)len, &doc) < 0 ||
        cl_base64_encode(doc.data, doc.len, &doc_b64) < 0)
        abort();
    doc_b64.len = strlen((const char *)doc_b64.data);
    cl_nsm_close(nsm);
    cl_buf_free(&doc);
    OPENSSL_free(spki);
    EVP_PKEY_free(rsa);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    uint8_t master[32] = {9};
    cl_kms_credential cred = {AKID, SECRET, NULL};
    char arn[160];
    if (cl_kms_store_open(":memory:", master, &store) < 0 || cl_verifier_new(true, &verifier) < 0)
        abort();
    cl_kms_local_config cfg = {.region = "us-east-1", .credentials = &cred, .credential_count = 1,
                               .verifier = verifier, .store = store};
    if (cl_kms_local_new(&cfg, &kms) < 0 || cl_kms_local_ensure_key(kms, "alias/fuzz", NULL, arn) < 0)
        abort();
    snprintf(state_dir, sizeof state_dir, "/tmp/cloister-fuzz-kms-XXXXXX");
    if (!mkdtemp(state_dir))
        abort();
    cl_nsm_sim_config sc = {.state_dir = state_dir, .instance_id = "i-0123456789abcdef0", .clock = fixed_clock};
    if (cl_nsm_sim_new(&sc, &sim) < 0 || cl_verifier_add_root_pem_file(verifier, cl_nsm_sim_root_pem_path(sim)) < 0)
        abort();
    make_document();
    cleanup_dir(); /* the simulator keeps what it needs in memory; its clock never moves */
    /* a blob for @BLOB@: Encrypt through the handler itself */
    encrypt_seed();
    return 0;
}

static cl_slice sl(const char *s, size_t n)
{
    return (cl_slice){(const uint8_t *)s, n};
}

static int answer(const uint8_t *data, size_t size, cl_kms_response *resp, cl_buf *body_out);
static void check(const cl_kms_response *resp, const cl_buf *body);

static void encrypt_seed(void)
{
    static const char in[] = "Encrypt\n{\"KeyId\":\"alias/fuzz\",\"Plaintext\":\"c2VlZA==\"}";
    cl_kms_response resp = {.body = CL_BUF_INIT};
    cl_buf body = CL_BUF_INIT;
    if (answer((const uint8_t *)in, sizeof in - 1, &resp, &body) < 0 || resp.status != 200)
        abort();
    json_t *j = json_loadb((const char *)resp.body.data, resp.body.len, 0, NULL);
    const char *b = json_string_value(json_object_get(j, "CiphertextBlob"));
    if (!b || cl_buf_append(&blob_b64, b, strlen(b)) < 0)
        abort();
    json_decref(j);
    cl_buf_free(&resp.body);
    cl_buf_free(&body);
}

/* Copies in to out with @DOC@ and @BLOB@ replaced. */
static int expand(const uint8_t *in, size_t len, cl_buf *out)
{
    for (size_t i = 0; i < len;) {
        if (len - i >= 5 && !memcmp(in + i, "@DOC@", 5)) {
            CL_TRY(cl_buf_append(out, doc_b64.data, doc_b64.len));
            i += 5;
        } else if (len - i >= 6 && !memcmp(in + i, "@BLOB@", 6)) {
            CL_TRY(cl_buf_append(out, blob_b64.data, blob_b64.len));
            i += 6;
        } else {
            CL_TRY(cl_buf_append_u8(out, in[i++]));
        }
    }
    return CL_OK;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cl_kms_response resp = {.body = CL_BUF_INIT};
    cl_buf body = CL_BUF_INIT;
    int rc = answer(data, size, &resp, &body);
    if (rc > 0)
        check(&resp, &body);
    cl_buf_free(&body);
    cl_buf_free(&resp.body);
    return 0;
}

/* 0: input skipped, 1: answered into resp. */
static int answer(const uint8_t *data, size_t size, cl_kms_response *resp, cl_buf *expanded)
{
    const uint8_t *nl = memchr(data, '\n', size);
    size_t first = nl ? (size_t)(nl - data) : size;
    if (first > 512)
        return 0;
    if (expand(nl ? nl + 1 : data + size, nl ? size - first - 1 : 0, expanded) < 0)
        abort();
    const uint8_t *body = expanded->data ? expanded->data : (const uint8_t *)"";
    size_t body_len = expanded->len;
    bool raw = first > 0 && data[0] == '!';
    char target[600], date[17];
    snprintf(target, sizeof target, "TrentService.%.*s", (int)first, (const char *)data);
    cl_sigv4_format_date(NOW_S, date);
    cl_http_header h[5] = {
        {sl("Content-Type", 12), sl(CL_KMS_CONTENT_TYPE, strlen(CL_KMS_CONTENT_TYPE))},
        {sl("Host", 4), sl("kms.us-east-1.amazonaws.com", 27)},
        {sl("X-Amz-Date", 10), sl(date, 16)},
        {sl("X-Amz-Target", 12), sl(target, strlen(target))},
    };
    cl_sigv4_request req = {sl("POST", 4), sl("/", 1), sl("", 0), h, 4, body, body_len};
    cl_buf auth = CL_BUF_INIT;
    if (raw) {
        h[4] = (cl_http_header){sl("Authorization", 13), sl((const char *)data + 1, first - 1)};
    } else {
        if (cl_sigv4_authorization(&req, AKID, SECRET, "us-east-1", "kms", date,
                                   "content-type;host;x-amz-date;x-amz-target", &auth) < 0)
            abort();
        h[4] = (cl_http_header){sl("Authorization", 13), sl((const char *)auth.data, auth.len)};
    }
    req.header_count = 5;
    if (cl_kms_local_handle(kms, &req, (uint64_t)NOW_S * 1000, resp) < 0)
        abort();
    cl_buf_free(&auth);
    return 1;
}

static void check(const cl_kms_response *resp, const cl_buf *body)
{
    json_t *j = json_loadb((const char *)resp->body.data, resp->body.len, 0, NULL);
    if (!json_is_object(j))
        abort();
    if (resp->error_type[0]) {
        const char *t = json_string_value(json_object_get(j, "__type"));
        if (!t || strcmp(t, resp->error_type) || (resp->status != 400 && resp->status != 500))
            abort();
    } else if (resp->status != 200) {
        abort();
    }
    json_t *in = json_loadb((const char *)body->data, body->len, 0, NULL);
    json_t *rec = json_object_get(in, "Recipient");
    if (rec && !json_is_null(rec) && json_object_get(j, "Plaintext"))
        abort();
    json_decref(in);
    json_decref(j);
}

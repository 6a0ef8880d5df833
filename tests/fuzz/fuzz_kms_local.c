/* Feeds arbitrary requests to kms-local's request handling.  An input is
 * "OPERATION\nBODY": the harness signs it with the configured credential
 * (so the bytes reach the operations, not only the signature check) at a
 * fixed clock; an input starting with '!' is sent unsigned, its first line
 * as the Authorization header.  Every answer must be a JSON object, an
 * error one with AWS's shape, and no Plaintext ever goes with a Recipient. */
#include "cloister/kms_local.h"

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
    return 0;
}

static cl_slice sl(const char *s, size_t n)
{
    return (cl_slice){(const uint8_t *)s, n};
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nl = memchr(data, '\n', size);
    size_t first = nl ? (size_t)(nl - data) : size;
    if (first > 512)
        return 0;
    const uint8_t *body = nl ? nl + 1 : data + size;
    size_t body_len = nl ? size - first - 1 : 0;
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
    cl_kms_response resp = {.body = CL_BUF_INIT};
    if (cl_kms_local_handle(kms, &req, (uint64_t)NOW_S * 1000, &resp) < 0)
        abort();
    json_t *j = json_loadb((const char *)resp.body.data, resp.body.len, 0, NULL);
    if (!json_is_object(j))
        abort();
    if (resp.error_type[0]) {
        const char *t = json_string_value(json_object_get(j, "__type"));
        if (!t || strcmp(t, resp.error_type) || (resp.status != 400 && resp.status != 500))
            abort();
    } else if (resp.status != 200) {
        abort();
    }
    json_t *in = json_loadb((const char *)body, body_len, 0, NULL);
    json_t *rec = json_object_get(in, "Recipient");
    if (rec && !json_is_null(rec) && json_object_get(j, "Plaintext"))
        abort();
    json_decref(in);
    json_decref(j);
    cl_buf_free(&auth);
    cl_buf_free(&resp.body);
    return 0;
}

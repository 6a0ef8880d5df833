/* Feeds arbitrary requests to the app's KMS endpoint (cl_kms_endpoint_handle).
 * An input is "TARGET\nBODY" (TARGET after "TrentService."; a first line
 * starting with '-' means no X-Amz-Target header).  KMS is played in
 * process: with a Recipient in the request it answers with a real envelope
 * (cl_cms_recipient_encrypt) for the endpoint's session key, else with a
 * small ordinary answer; a body holding "\n--answer--\n" ends there and
 * what follows is KMS's 200 answer as it is ("\n--error--\n": a 400
 * answer), so that mutations reach the reading of KMS's answers.
 * Every reply must be a JSON object (KMS's own error answers excepted),
 * a refusal must have AWS's shape, nothing refused here may reach KMS, and
 * no CiphertextForRecipient of the endpoint's own Recipient reaches the app. */
#include "cloister/core/encoding.h"
#include "cloister/enclave/kms_endpoint.h"
#include "cloister/enclave/nsm.h"
#include "cloister/sim/cms_recipient.h"
#include "cloister/sim/nsm_sim.h"

#include <dirent.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static cl_nsm_sim *sim;
static cl_nsm *nsm;
static cl_kms_recipient *recipient;
static cl_kms_endpoint *ep;
static char state_dir[64];

typedef struct fake {
    const uint8_t *answer;
    size_t answer_len;
    long answer_status; /* 0: play KMS */
    bool called, had_our_recipient;
} fake;

static fake current;

static const uint8_t SECRET[1024] = {1, 2, 3};

static int fake_send(void *ctx, const char *op, const uint8_t *body, size_t len, long *status, cl_buf *answer)
{
    (void)ctx;
    (void)op;
    fake *f = &current;
    f->called = true;
    cl_buf_reset(answer);
    if (f->answer_status) {
        *status = f->answer_status;
        return cl_buf_append(answer, f->answer, f->answer_len);
    }
    *status = 200;
    json_error_t jerr;
    json_t *req = json_loadb((const char *)body, len, 0, &jerr);
    if (!json_is_object(req))
        abort(); /* the endpoint sent what it did not check */
    json_t *a = json_pack("{s:s}", "KeyId", "arn:aws:kms:eu-west-1:111122223333:key/fuzz");
    json_t *r = json_object_get(req, "Recipient");
    if (r) {
        size_t n = 32;
        json_t *nb = json_object_get(req, "NumberOfBytes");
        if (json_is_integer(nb) && json_integer_value(nb) >= 1 && json_integer_value(nb) <= 1024)
            n = (size_t)json_integer_value(nb);
        cl_buf env = CL_BUF_INIT, b64 = CL_BUF_INIT;
        cl_slice spki = cl_kms_recipient_public_key(recipient);
        if (cl_cms_recipient_encrypt(spki.data, spki.len, SECRET, n, &env) == CL_OK &&
            cl_base64_encode(env.data, env.len, &b64) == CL_OK)
            json_object_set_new(a, "CiphertextForRecipient", json_string((const char *)b64.data));
        cl_buf_free(&env);
        cl_buf_free(&b64);
    } else {
        json_object_set_new(a, "CiphertextBlob", json_string("AQIDBA=="));
    }
    char *text = json_dumps(a, JSON_COMPACT);
    int rc = cl_buf_append(answer, text, strlen(text));
    free(text);
    json_decref(a);
    json_decref(req);
    return rc;
}

static void cleanup(void)
{
    cl_kms_endpoint_free(ep);
    cl_kms_recipient_free(recipient);
    cl_nsm_close(nsm);
    cl_nsm_sim_free(sim);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", state_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", state_dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    snprintf(state_dir, sizeof state_dir, "/tmp/cloister-fuzz-kmsep.XXXXXX");
    if (!mkdtemp(state_dir))
        abort();
    cl_nsm_sim_config cfg = {.state_dir = state_dir, .instance_id = "i-0123456789abcdef0"};
    cl_kms_endpoint_config ec = {.recipient = NULL, .send = fake_send};
    if (cl_nsm_sim_new(&cfg, &sim) < 0 || cl_nsm_open_sim(sim, &nsm) < 0 || cl_kms_recipient_new(nsm, &recipient) < 0)
        abort();
    ec.recipient = recipient;
    if (cl_kms_endpoint_new(&ec, &ep) < 0)
        abort();
    atexit(cleanup);
    return 0;
}

static const uint8_t *find(const uint8_t *h, size_t hl, const char *needle)
{
    size_t n = strlen(needle);
    for (size_t i = 0; i + n <= hl; i++)
        if (!memcmp(h + i, needle, n))
            return h + i;
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nl = memchr(data, '\n', size);
    if (!nl)
        return 0;
    char target[160];
    size_t tl = (size_t)(nl - data);
    if (tl > 100)
        return 0;
    snprintf(target, sizeof target, "TrentService.%.*s", (int)tl, (const char *)data);
    const uint8_t *body = nl + 1;
    size_t body_len = size - (size_t)(body - data);
    current = (fake){0};
    const uint8_t *m = find(body, body_len, "\n--answer--\n");
    const uint8_t *e = find(body, body_len, "\n--error--\n");
    if (m && (!e || m < e)) {
        current.answer = m + 12;
        current.answer_len = body_len - (size_t)(m + 12 - body);
        current.answer_status = 200;
        body_len = (size_t)(m - body);
    } else if (e) {
        current.answer = e + 11;
        current.answer_len = body_len - (size_t)(e + 11 - body);
        current.answer_status = 400;
        body_len = (size_t)(e - body);
    }
    cl_slice t = {(const uint8_t *)target, strlen(target)};
    cl_slice ct = {(const uint8_t *)CL_KMS_ENDPOINT_CONTENT_TYPE, strlen(CL_KMS_ENDPOINT_CONTENT_TYPE)};
    cl_kms_endpoint_request req = {
        .method = {(const uint8_t *)"POST", 4},
        .target = tl && data[0] == '-' ? NULL : &t,
        .content_type = &ct,
        .body = body,
        .body_len = body_len,
    };
    cl_kms_endpoint_reply reply = {.body = CL_BUF_INIT};
    cl_kms_endpoint_handle(ep, &req, &reply);

    bool passed_raw = current.called && current.answer_status &&
                      (current.answer_status != 200 || reply.status == 200) && reply.body.len == current.answer_len &&
                      (!current.answer_len || !memcmp(reply.body.data, current.answer, current.answer_len));
    if (!passed_raw) {
        json_error_t jerr;
        json_t *j = json_loadb((const char *)reply.body.data, reply.body.len, 0, &jerr);
        if (!json_is_object(j))
            abort();
        if (reply.status != 200) {
            if (!json_is_string(json_object_get(j, "__type")) || !json_is_string(json_object_get(j, "message")))
                abort();
            /* refused before KMS: nothing was sent */
            if (reply.status != 500 && reply.status != 503 && current.called)
                abort();
        } else if (current.called && !current.answer_status && json_object_get(j, "CiphertextForRecipient")) {
            /* only an app that sent its own Recipient gets an envelope */
            json_t *app = json_loadb((const char *)body, body_len, 0, &jerr);
            if (!json_object_get(app, "Recipient"))
                abort();
            json_decref(app);
        }
        json_decref(j);
    }
    cl_buf_free(&reply.body);
    return 0;
}

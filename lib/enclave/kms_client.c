/* The KMS JSON 1.1 client: the protocol (SigV4, the proxy, retries) is
 * aws_json.c's; here KMS's errors, its operations and the Recipient forms
 * whose answers are opened inside the enclave. */
#include "cloister/core/encoding.h"
#include "cloister/enclave/kms.h"
#include "cloister/core/clock.h"
#include "enclave/aws_json.h"

#include <jansson.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEY_ENCRYPTION_ALGORITHM "RSAES_OAEP_SHA_256"

/* ---- errors --------------------------------------------------------------- */

int cl_kms_parse_error(long status, const uint8_t *body, size_t len, char *type, size_t type_len, char *message,
                       size_t message_len)
{
    return cl_aws_json_parse_error(status, body, len, type, type_len, message, message_len);
}

bool cl_kms_retryable(long status, const char *type)
{
    static const char *const throttling[] = {
        "ThrottlingException",     "Throttling",          "ThrottledException",    "RequestLimitExceeded",
        "TooManyRequestsException", "RequestThrottled",   "KMSInternalException",  "DependencyTimeoutException",
        "ServiceUnavailable",      "ServiceUnavailableException", "InternalFailure", "RequestTimeout",
        "RequestTimeoutException",
    };
    if (status >= 500 || status == 429)
        return true;
    for (size_t i = 0; type && i < sizeof throttling / sizeof throttling[0]; i++)
        if (!strcmp(type, throttling[i]))
            return true;
    return false;
}

static int error_code_for(long status, const char *type)
{
    (void)status;
    static const char *const denied[] = {"AccessDeniedException", "InvalidCiphertextException",
                                         "IncorrectKeyException", "DisabledException", "KMSInvalidStateException",
                                         "InvalidKeyUsageException", "InvalidGrantTokenException",
                                         "KeyUnavailableException", "UnrecognizedClientException",
                                         "InvalidSignatureException", "ExpiredTokenException",
                                         "IncompleteSignatureException", "MissingAuthenticationTokenException"};
    if (!strcmp(type, "NotFoundException"))
        return CL_ENOTFOUND;
    if (!strcmp(type, "ValidationException") || !strcmp(type, "InvalidArnException") ||
        !strcmp(type, "SerializationException") || !strcmp(type, "UnknownOperationException"))
        return CL_EINVAL;
    for (size_t i = 0; i < sizeof denied / sizeof denied[0]; i++)
        if (!strcmp(type, denied[i]))
            return CL_EVERIFY;
    return CL_EIO;
}

/* ---- the client ------------------------------------------------------------ */

static const cl_aws_json_service kms_service = {
    .name = "KMS",
    .host = "kms",
    .content_type = CL_KMS_CONTENT_TYPE,
    .target_prefix = CL_KMS_TARGET_PREFIX,
    .no_region = "no AWS region (--region, AWS_REGION, or IMDS)",
    .http_hint = "",
    .error_code = error_code_for,
    .retryable = cl_kms_retryable,
};

struct cl_kms {
    cl_aws_json aws;
    cl_kms_recipient *recipient;
    char key_id[2048];
    cl_kms_stats stats;
};
_Static_assert(offsetof(struct cl_kms, aws) == 0, "cl_aws_json_new and cl_aws_json_free need aws first");

int cl_kms_new(const cl_kms_config *cfg, cl_kms **out)
{
    *out = NULL;
    cl_aws_json_config aws = CL_AWS_JSON_CONFIG_OF(cfg);
    void *k;
    CL_TRY(cl_aws_json_new(sizeof(**out), &kms_service, &aws, &k));
    *out = k;
    (*out)->recipient = cfg->recipient;
    return CL_OK;
}

void cl_kms_free(cl_kms *k)
{
    cl_aws_json_free(k ? &k->aws : NULL);
}

const char *cl_kms_key_id(const cl_kms *k)
{
    return k->key_id;
}

const char *cl_kms_error_type(const cl_kms *k)
{
    return k->aws.error_type;
}

void cl_kms_get_stats(const cl_kms *k, cl_kms_stats *out)
{
    *out = k->stats;
    out->attempts = k->aws.stats.attempts;
    out->retries = k->aws.stats.retries;
    out->network_us = k->aws.stats.network_us;
}

/* One operation: body is the JSON request; the answer's JSON object is
 * returned in *answer (the caller decrefs).  Retries inside. */
static int kms_call(cl_kms *k, const char *op, const char *body, size_t body_len, json_t **answer)
{
    *answer = NULL;
    k->key_id[0] = '\0';
    long status;
    cl_buf got = CL_BUF_INIT;
    CL_TRY(cl_aws_json_post(&k->aws, op, (const uint8_t *)body, body_len, false, &status, &got));
    json_error_t jerr;
    json_t *root = json_loadb((const char *)got.data, got.len, JSON_REJECT_DUPLICATES, &jerr);
    cl_buf_free(&got);
    if (!json_is_object(root)) {
        json_decref(root);
        return cl_error_set(CL_EPROTO, "KMS %s: the answer is not a JSON object", op);
    }
    json_t *kid = json_object_get(root, "KeyId");
    if (json_is_string(kid))
        snprintf(k->key_id, sizeof k->key_id, "%s", json_string_value(kid));
    *answer = root;
    return CL_OK;
}

int cl_kms_call_raw(cl_kms *k, const char *op, const uint8_t *body, size_t len, long *status, cl_buf *answer)
{
    *status = 0;
    cl_buf_reset(answer);
    CL_ENSURE(op && *op && strlen(op) < 64, CL_EINVAL, "KMS operation name missing or too long");
    pthread_mutex_lock(&k->aws.lock);
    uint64_t t0 = cl_monotonic_us();
    k->key_id[0] = '\0';
    long got = 0;
    int rc = cl_aws_json_post(&k->aws, op, body, len, true, &got, answer);
    if (rc == CL_OK)
        *status = got;
    k->stats.calls++;
    k->stats.total_us += cl_monotonic_us() - t0;
    pthread_mutex_unlock(&k->aws.lock);
    return rc;
}

/* ---- purposes ------------------------------------------------------------ */

int cl_kms_purpose_context_make(const char *purpose, const char *name, cl_kms_purpose_context *out)
{
    memset(out, 0, sizeof *out);
    CL_ENSURE(purpose, CL_EINVAL, "no purpose");
    bool named = !strcmp(purpose, CL_KMS_PURPOSE_PKCS11_TOKEN) || !strcmp(purpose, CL_KMS_PURPOSE_SECRET);
    CL_ENSURE(named || !strcmp(purpose, CL_KMS_PURPOSE_TLS_KEY), CL_EINVAL,
              "unknown purpose '%.64s' (" CL_KMS_PURPOSE_PKCS11_TOKEN ":LABEL, " CL_KMS_PURPOSE_TLS_KEY
              " or " CL_KMS_PURPOSE_SECRET ":NAME)",
              purpose);
    CL_ENSURE(!named || (name && *name), CL_EINVAL, "purpose %s needs a name (%s:%s)", purpose, purpose,
              !strcmp(purpose, CL_KMS_PURPOSE_SECRET) ? "NAME" : "LABEL");
    CL_ENSURE(named || !name, CL_EINVAL, "purpose %s takes no name", purpose);
    out->entries[0] = (cl_kms_context_entry){"purpose", purpose};
    out->count = 1;
    if (named)
        out->entries[out->count++] =
            (cl_kms_context_entry){!strcmp(purpose, CL_KMS_PURPOSE_SECRET) ? "name" : "token", name};
    return CL_OK;
}

int cl_kms_purpose_context_parse(const char *spec, char *purpose_out, size_t purpose_len, cl_kms_purpose_context *out)
{
    const char *colon = strchr(spec, ':');
    size_t n = colon ? (size_t)(colon - spec) : strlen(spec);
    CL_ENSURE(n > 0 && n < purpose_len, CL_EINVAL, "purpose '%.64s': expected PURPOSE or PURPOSE:NAME", spec);
    memcpy(purpose_out, spec, n);
    purpose_out[n] = '\0';
    return cl_kms_purpose_context_make(purpose_out, colon ? colon + 1 : NULL, out);
}

/* ---- request and answer fields ------------------------------------------ */

static int set_b64(json_t *o, const char *key, const uint8_t *data, size_t len)
{
    cl_buf b = CL_BUF_INIT;
    CL_TRY(cl_base64_encode(data, len, &b));
    json_t *s = json_stringn((const char *)b.data, strlen((const char *)b.data));
    cl_buf_free(&b);
    CL_ENSURE(s && json_object_set_new(o, key, s) == 0, CL_ENOMEM, "out of memory");
    return CL_OK;
}

static int add_common(json_t *req, const cl_kms_options *o, bool with_algorithm)
{
    if (!o)
        return CL_OK;
    if (o->key_id) {
        CL_ENSURE(*o->key_id && strlen(o->key_id) <= 2048, CL_EINVAL, "KeyId must be 1..2048 characters");
        json_object_set_new(req, "KeyId", json_string(o->key_id));
    }
    if (o->context_count) {
        json_t *ctx = json_object();
        CL_ENSURE(ctx, CL_ENOMEM, "out of memory");
        for (size_t i = 0; i < o->context_count; i++) {
            json_t *v = json_string(o->context[i].value);
            if (!v || !o->context[i].key || !*o->context[i].key || json_object_get(ctx, o->context[i].key)) {
                json_decref(v);
                json_decref(ctx);
                return cl_error_set(CL_EINVAL, "encryption context: empty, repeated or non-UTF-8 key or value");
            }
            json_object_set_new(ctx, o->context[i].key, v);
        }
        json_object_set_new(req, "EncryptionContext", ctx);
    }
    if (with_algorithm && o->encryption_algorithm)
        json_object_set_new(req, "EncryptionAlgorithm", json_string(o->encryption_algorithm));
    return CL_OK;
}

/* The attestation document of the Recipient, timed. */
static int add_recipient(cl_kms *k, json_t *req)
{
    cl_buf doc = CL_BUF_INIT;
    uint64_t t0 = cl_monotonic_us();
    int rc = cl_kms_recipient_document(k->recipient, &doc);
    k->stats.attestation_us += cl_monotonic_us() - t0;
    CL_TRY(rc);
    json_t *r = json_object();
    if (!r) {
        cl_buf_free(&doc);
        return cl_error_set(CL_ENOMEM, "out of memory");
    }
    rc = set_b64(r, "AttestationDocument", doc.data, doc.len);
    cl_buf_free(&doc);
    json_object_set_new(r, "KeyEncryptionAlgorithm", json_string(KEY_ENCRYPTION_ALGORITHM));
    json_object_set_new(req, "Recipient", r);
    return rc;
}

static int get_b64(json_t *answer, const char *key, const char *op, cl_buf *out)
{
    json_t *v = json_object_get(answer, key);
    CL_ENSURE(json_is_string(v), CL_EPROTO, "KMS %s: the answer has no %s", op, key);
    cl_buf_reset(out);
    int rc = cl_base64_decode((const uint8_t *)json_string_value(v), json_string_length(v), out);
    if (rc < 0)
        return cl_error_prefix(CL_EPROTO, "KMS %s: %s is not base64: ", op, key);
    CL_ENSURE(out->len > 0, CL_EPROTO, "KMS %s: %s is empty", op, key);
    return CL_OK;
}

/* The plaintext of an answer: opened from CiphertextForRecipient when a
 * Recipient was sent (and then no Plaintext may come), else Plaintext. */
static int answer_plaintext(cl_kms *k, json_t *answer, const char *op, size_t want_len, cl_buf *plaintext)
{
    json_t *pt = json_object_get(answer, "Plaintext");
    int rc = CL_OK;
    if (k->recipient) {
        CL_ENSURE(!pt || json_is_null(pt), CL_EPROTO,
                  "KMS %s: the answer carries Plaintext although a Recipient was sent (refused)", op);
        cl_buf cms = CL_BUF_INIT;
        rc = get_b64(answer, "CiphertextForRecipient", op, &cms);
        if (rc == CL_OK) {
            uint64_t t0 = cl_monotonic_us();
            rc = cl_kms_recipient_open(k->recipient, cms.data, cms.len, plaintext);
            k->stats.rsa_us += cl_monotonic_us() - t0;
            if (rc < 0)
                rc = cl_error_prefix(rc, "KMS %s: ", op);
        }
        cl_buf_free(&cms);
    } else {
        rc = get_b64(answer, "Plaintext", op, plaintext);
        /* jansson's copy of the base64 plaintext */
        if (json_is_string(pt))
            cl_wipe((void *)json_string_value(pt), json_string_length(pt));
    }
    if (rc == CL_OK && want_len && plaintext->len != want_len)
        rc = cl_error_set(CL_EPROTO, "KMS %s: %zu bytes of plaintext, %zu expected", op, plaintext->len, want_len);
    if (rc < 0)
        cl_buf_reset(plaintext);
    return rc;
}

typedef struct op_run {
    const char *op;
    json_t *req, *answer;
    uint64_t t0;
} op_run;

static int op_begin(cl_kms *k, op_run *r, const char *op)
{
    pthread_mutex_lock(&k->aws.lock);
    r->op = op;
    r->answer = NULL;
    r->t0 = cl_monotonic_us();
    r->req = json_object();
    if (!r->req) {
        pthread_mutex_unlock(&k->aws.lock);
        return cl_error_set(CL_ENOMEM, "out of memory");
    }
    return CL_OK;
}

static int op_send(cl_kms *k, op_run *r)
{
    char *body = json_dumps(r->req, JSON_COMPACT);
    CL_ENSURE(body, CL_ENOMEM, "out of memory");
    int rc = kms_call(k, r->op, body, strlen(body), &r->answer);
    cl_wipe(body, strlen(body));
    free(body);
    return rc;
}

static int op_end(cl_kms *k, op_run *r, int rc)
{
    json_decref(r->req);
    json_decref(r->answer);
    k->stats.calls++;
    k->stats.total_us += cl_monotonic_us() - r->t0;
    pthread_mutex_unlock(&k->aws.lock);
    return rc;
}

/* Plaintext fields of the request are wiped before the tree goes. */
static void wipe_field(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (json_is_string(v))
        cl_wipe((void *)json_string_value(v), json_string_length(v));
}

int cl_kms_encrypt(cl_kms *k, const cl_kms_options *o, const uint8_t *plaintext, size_t len, cl_buf *blob)
{
    CL_ENSURE(o && o->key_id, CL_EINVAL, "KMS Encrypt needs a KeyId");
    CL_ENSURE(len >= 1 && len <= 4096, CL_EINVAL, "KMS Encrypt takes 1..4096 bytes of plaintext, not %zu", len);
    op_run r;
    CL_TRY(op_begin(k, &r, "Encrypt"));
    int rc = add_common(r.req, o, true);
    if (rc == CL_OK)
        rc = set_b64(r.req, "Plaintext", plaintext, len);
    if (rc == CL_OK)
        rc = op_send(k, &r);
    wipe_field(r.req, "Plaintext");
    if (rc == CL_OK)
        rc = get_b64(r.answer, "CiphertextBlob", "Encrypt", blob);
    return op_end(k, &r, rc);
}

int cl_kms_decrypt(cl_kms *k, const cl_kms_options *o, const uint8_t *ct, size_t len, cl_buf *plaintext)
{
    CL_ENSURE(len >= 1 && len <= 6144, CL_EINVAL, "KMS Decrypt takes a CiphertextBlob of 1..6144 bytes, not %zu", len);
    op_run r;
    CL_TRY(op_begin(k, &r, "Decrypt"));
    int rc = add_common(r.req, o, true);
    if (rc == CL_OK)
        rc = set_b64(r.req, "CiphertextBlob", ct, len);
    if (rc == CL_OK && k->recipient)
        rc = add_recipient(k, r.req);
    if (rc == CL_OK)
        rc = op_send(k, &r);
    if (rc == CL_OK)
        rc = answer_plaintext(k, r.answer, "Decrypt", 0, plaintext);
    return op_end(k, &r, rc);
}

int cl_kms_generate_data_key(cl_kms *k, const cl_kms_options *o, cl_buf *plaintext, cl_buf *blob)
{
    CL_ENSURE(o && o->key_id, CL_EINVAL, "KMS GenerateDataKey needs a KeyId");
    size_t want = 32;
    if (o->number_of_bytes) {
        CL_ENSURE(!o->key_spec, CL_EINVAL, "GenerateDataKey takes a KeySpec or a NumberOfBytes, not both");
        CL_ENSURE(o->number_of_bytes <= 1024, CL_EINVAL, "GenerateDataKey NumberOfBytes is 1..1024");
        want = o->number_of_bytes;
    } else if (o->key_spec) {
        CL_ENSURE(!strcmp(o->key_spec, "AES_256") || !strcmp(o->key_spec, "AES_128"), CL_EINVAL,
                  "KeySpec '%s': expected AES_256 or AES_128", o->key_spec);
        want = !strcmp(o->key_spec, "AES_128") ? 16 : 32;
    }
    op_run r;
    CL_TRY(op_begin(k, &r, "GenerateDataKey"));
    int rc = add_common(r.req, o, false);
    if (o->number_of_bytes)
        json_object_set_new(r.req, "NumberOfBytes", json_integer(o->number_of_bytes));
    else
        json_object_set_new(r.req, "KeySpec", json_string(o->key_spec ? o->key_spec : "AES_256"));
    if (rc == CL_OK && k->recipient)
        rc = add_recipient(k, r.req);
    if (rc == CL_OK)
        rc = op_send(k, &r);
    if (rc == CL_OK)
        rc = get_b64(r.answer, "CiphertextBlob", "GenerateDataKey", blob);
    if (rc == CL_OK)
        rc = answer_plaintext(k, r.answer, "GenerateDataKey", want, plaintext);
    return op_end(k, &r, rc);
}

int cl_kms_generate_random(cl_kms *k, size_t n, cl_buf *random)
{
    CL_ENSURE(n >= 1 && n <= 1024, CL_EINVAL, "GenerateRandom gives 1..1024 bytes, not %zu", n);
    op_run r;
    CL_TRY(op_begin(k, &r, "GenerateRandom"));
    json_object_set_new(r.req, "NumberOfBytes", json_integer((json_int_t)n));
    int rc = k->recipient ? add_recipient(k, r.req) : CL_OK;
    if (rc == CL_OK)
        rc = op_send(k, &r);
    if (rc == CL_OK)
        rc = answer_plaintext(k, r.answer, "GenerateRandom", n, random);
    return op_end(k, &r, rc);
}

/* ---- a session from settings ---------------------------------------------- */

int cl_kms_session_open(const cl_kms_setup *s, cl_kms_session *out)
{
    memset(out, 0, sizeof *out);
    int rc = CL_OK;
    if (s->access_key_id || s->secret_access_key) {
        rc = cl_aws_credentials_static(s->access_key_id, s->secret_access_key, s->session_token, &out->credentials);
        if (rc < 0)
            rc = cl_error_prefix(rc, "credentials from flags: ");
    } else if (s->imds) {
        rc = cl_aws_credentials_imds(s->imds, s->role, &out->credentials);
    } else {
        rc = cl_aws_credentials_from_env(&out->credentials);
        if (rc == CL_ENOTFOUND)
            rc = cl_error_set(CL_ENOTFOUND, "no AWS credentials: give --access-key-id/--secret-access-key, "
                                            "--imds ADDR (IMDSv2, e.g. through cloister host --imds), or set "
                                            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY");
    }
    CL_TRY_OUT(rc);

    const char *region = s->region;
    if (!region || !*region)
        region = getenv("AWS_REGION");
    if (!region || !*region)
        region = getenv("AWS_DEFAULT_REGION");
    if (region && *region) {
        snprintf(out->region, sizeof out->region, "%s", region);
    } else if (s->imds && !s->access_key_id) {
        rc = cl_aws_credentials_imds_region(out->credentials, out->region, sizeof out->region);
        if (rc < 0)
            CL_TRY_OUT(cl_error_prefix(rc, "region from IMDS: "));
    } else {
        CL_FAIL_OUT(CL_EINVAL, "no AWS region: give --region or set AWS_REGION");
    }

    if (s->recipient) {
        if (s->nsm_client) {
            out->nsm = s->nsm_client;
        } else {
            rc = cl_nsm_open(s->nsm, &out->nsm);
            if (rc < 0)
                CL_TRY_OUT(cl_error_prefix(rc, "the Recipient needs the NSM (--nsm unix:PATH of cloister nsm-sim, "
                                               "or /dev/nsm inside an enclave): "));
            out->owns_nsm = true;
        }
        CL_TRY_OUT(cl_kms_recipient_new(out->nsm, &out->recipient));
    }
    cl_kms_config cfg = {
        .region = out->region,
        .endpoint = s->endpoint,
        .connect = s->proxy,
        .ca_file = s->ca_file,
        .credentials = out->credentials,
        .recipient = out->recipient,
        .max_attempts = s->max_attempts,
        .backoff_ms = s->backoff_ms,
        .timeout_ms = s->timeout_ms,
    };
    CL_TRY_OUT(cl_kms_new(&cfg, &out->kms));
out:
    if (rc < 0)
        cl_kms_session_close(out);
    return rc;
}

void cl_kms_session_close(cl_kms_session *s)
{
    cl_kms_free(s->kms);
    cl_kms_recipient_free(s->recipient);
    if (s->owns_nsm)
        cl_nsm_close(s->nsm);
    cl_aws_credentials_provider_free(s->credentials);
    memset(s, 0, sizeof *s);
}

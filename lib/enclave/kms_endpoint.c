/* The app's KMS endpoint inside the enclave: a request from an AWS SDK is
 * checked field by field, sent to KMS signed with the enclave's
 * credentials (a Recipient added where KMS would otherwise answer with a
 * secret), and KMS's answer goes back with the envelope opened here. */
#include "cloister/enclave/kms_endpoint.h"

#include "cloister/core/encoding.h"

#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_KEYS 64
#define MAX_FIELDS 12
#define KEY_ENCRYPTION_ALGORITHM "RSAES_OAEP_SHA_256"

enum field_type {
    F_STR,  /* string of min..max characters */
    F_B64,  /* base64 of min..max bytes */
    F_CTX,  /* encryption context: object of strings */
    F_LIST, /* array of at most max strings (grant tokens) */
    F_INT,  /* integer min..max */
    F_BOOL,
    F_RECIPIENT, /* the app's own Recipient: passed as it is */
};

typedef struct field {
    const char *name;
    uint8_t type;
    bool required;
    bool key; /* a key reference, held against -kms-for-app-keys */
    unsigned min, max;
} field;

typedef struct op_spec {
    const char *name;
    /* the answer's field that carries the secret; set: the operation gets
     * a Recipient and the envelope becomes this field */
    const char *secret_field;
    field fields[MAX_FIELDS];
} op_spec;

#define KEYID(req) {"KeyId", F_STR, req, true, 1, 2048}
#define GRANTS {"GrantTokens", F_LIST, false, false, 0, 10}
#define DRYRUN {"DryRun", F_BOOL, false, false, 0, 0}
#define CONTEXT(n) {n, F_CTX, false, false, 0, 0}
#define ALGO(n, req) {n, F_STR, req, false, 1, 64}
#define RECIPIENT {"Recipient", F_RECIPIENT, false, false, 0, 0}

/* The data-plane operations of KMS's API (2024), each with every member
 * of its request.  Control-plane operations (CreateKey, PutKeyPolicy,
 * ScheduleKeyDeletion, ...) are not served to the app. */
static const op_spec ops[] = {
    {"Decrypt",
     "Plaintext",
     {{"CiphertextBlob", F_B64, true, false, 1, 6144}, CONTEXT("EncryptionContext"), GRANTS, KEYID(false),
      ALGO("EncryptionAlgorithm", false), RECIPIENT, DRYRUN}},
    {"GenerateDataKey",
     "Plaintext",
     {KEYID(true), CONTEXT("EncryptionContext"), {"NumberOfBytes", F_INT, false, false, 1, 1024},
      ALGO("KeySpec", false), GRANTS, RECIPIENT, DRYRUN}},
    {"GenerateDataKeyPair",
     "PrivateKeyPlaintext",
     {KEYID(true), ALGO("KeyPairSpec", true), CONTEXT("EncryptionContext"), GRANTS, RECIPIENT, DRYRUN}},
    {"GenerateRandom",
     "Plaintext",
     {{"NumberOfBytes", F_INT, false, false, 1, 1024}, {"CustomKeyStoreId", F_STR, false, false, 1, 64}, RECIPIENT}},
    {"DeriveSharedSecret",
     "SharedSecret",
     {KEYID(true), ALGO("KeyAgreementAlgorithm", true), {"PublicKey", F_B64, true, false, 1, 8192}, GRANTS,
      RECIPIENT, DRYRUN}},
    {"Encrypt",
     NULL,
     {KEYID(true), {"Plaintext", F_B64, true, false, 1, 4096}, CONTEXT("EncryptionContext"), GRANTS,
      ALGO("EncryptionAlgorithm", false), DRYRUN}},
    {"GenerateDataKeyWithoutPlaintext",
     NULL,
     {KEYID(true), CONTEXT("EncryptionContext"), {"NumberOfBytes", F_INT, false, false, 1, 1024},
      ALGO("KeySpec", false), GRANTS, DRYRUN}},
    {"GenerateDataKeyPairWithoutPlaintext",
     NULL,
     {KEYID(true), ALGO("KeyPairSpec", true), CONTEXT("EncryptionContext"), GRANTS, DRYRUN}},
    {"ReEncrypt",
     NULL,
     {{"CiphertextBlob", F_B64, true, false, 1, 6144}, CONTEXT("SourceEncryptionContext"),
      {"SourceKeyId", F_STR, false, true, 1, 2048}, {"DestinationKeyId", F_STR, true, true, 1, 2048},
      CONTEXT("DestinationEncryptionContext"), ALGO("SourceEncryptionAlgorithm", false),
      ALGO("DestinationEncryptionAlgorithm", false), GRANTS, DRYRUN}},
    {"DescribeKey", NULL, {KEYID(true), GRANTS}},
    {"GetPublicKey", NULL, {KEYID(true), GRANTS}},
    {"Sign",
     NULL,
     {KEYID(true), {"Message", F_B64, true, false, 1, 4096}, ALGO("MessageType", false),
      ALGO("SigningAlgorithm", true), GRANTS, DRYRUN}},
    {"Verify",
     NULL,
     {KEYID(true), {"Message", F_B64, true, false, 1, 4096}, ALGO("MessageType", false),
      {"Signature", F_B64, true, false, 1, 6144}, ALGO("SigningAlgorithm", true), GRANTS, DRYRUN}},
    {"GenerateMac",
     NULL,
     {{"Message", F_B64, true, false, 1, 4096}, KEYID(true), ALGO("MacAlgorithm", true), GRANTS, DRYRUN}},
    {"VerifyMac",
     NULL,
     {{"Message", F_B64, true, false, 1, 4096}, KEYID(true), ALGO("MacAlgorithm", true),
      {"Mac", F_B64, true, false, 1, 6144}, GRANTS, DRYRUN}},
};
#define OP_COUNT (sizeof ops / sizeof ops[0])

struct cl_kms_endpoint {
    bool allowed[OP_COUNT];
    char *keys[MAX_KEYS];
    size_t key_count;
    cl_kms_recipient *recipient;
    cl_kms_endpoint_send_fn send;
    void *send_ctx;
    pthread_mutex_t lock; /* one call at a time: one session key, one KMS client */
    cl_kms_endpoint_stats stats;
};

static const op_spec *find_op(const char *name, size_t len)
{
    for (size_t i = 0; i < OP_COUNT; i++)
        if (strlen(ops[i].name) == len && !memcmp(ops[i].name, name, len))
            return &ops[i];
    return NULL;
}

static char op_list[512];
static pthread_once_t op_list_once = PTHREAD_ONCE_INIT;

static void fill_op_list(void)
{
    size_t off = 0;
    for (size_t i = 0; i < OP_COUNT && off < sizeof op_list; i++)
        off += (size_t)snprintf(op_list + off, sizeof op_list - off, "%s%s", i ? "," : "", ops[i].name);
}

const char *cl_kms_endpoint_operations(void)
{
    pthread_once(&op_list_once, fill_op_list);
    return op_list;
}

bool cl_kms_endpoint_uses_recipient(const char *op)
{
    const op_spec *s = op ? find_op(op, strlen(op)) : NULL;
    return s && s->secret_field;
}

/* ---- configuration -------------------------------------------------------- */

/* Calls fn for each entry of a comma-separated list; empty entries refused. */
static int each_entry(const char *list, const char *what, int (*fn)(cl_kms_endpoint *, const char *, size_t),
                      cl_kms_endpoint *ep)
{
    if (!list || !*list)
        return CL_OK;
    const char *p = list;
    for (;;) {
        size_t n = strcspn(p, ",");
        CL_ENSURE(n > 0, CL_EINVAL, "%s: an empty entry in '%.200s'", what, list);
        CL_TRY(fn(ep, p, n));
        if (!p[n])
            return CL_OK;
        p += n + 1;
    }
}

static int add_op(cl_kms_endpoint *ep, const char *name, size_t n)
{
    const op_spec *s = find_op(name, n);
    CL_ENSURE(s, CL_EINVAL, "unknown KMS operation '%.*s' (known: %s)", (int)(n > 64 ? 64 : n), name,
              cl_kms_endpoint_operations());
    ep->allowed[s - ops] = true;
    return CL_OK;
}

static int add_key(cl_kms_endpoint *ep, const char *name, size_t n)
{
    CL_ENSURE(ep->key_count < MAX_KEYS, CL_ELIMIT, "at most %d allowed keys", MAX_KEYS);
    CL_ENSURE(n <= 2048, CL_EINVAL, "a key ID is at most 2048 characters");
    ep->keys[ep->key_count] = strndup(name, n);
    CL_ENSURE(ep->keys[ep->key_count], CL_ENOMEM, "out of memory");
    ep->key_count++;
    return CL_OK;
}

int cl_kms_endpoint_new(const cl_kms_endpoint_config *cfg, cl_kms_endpoint **out)
{
    *out = NULL;
    CL_ENSURE(cfg->recipient && cfg->send, CL_EINVAL, "the KMS endpoint needs a Recipient and a way to KMS");
    cl_kms_endpoint *ep = calloc(1, sizeof *ep);
    CL_ENSURE(ep, CL_ENOMEM, "out of memory");
    pthread_mutex_init(&ep->lock, NULL);
    ep->recipient = cfg->recipient;
    ep->send = cfg->send;
    ep->send_ctx = cfg->send_ctx;
    int rc = each_entry(cfg->operations, "allowed operations", add_op, ep);
    if (rc == CL_OK && (!cfg->operations || !*cfg->operations))
        for (size_t i = 0; i < OP_COUNT; i++)
            ep->allowed[i] = true;
    if (rc == CL_OK)
        rc = each_entry(cfg->key_ids, "allowed keys", add_key, ep);
    if (rc < 0) {
        cl_kms_endpoint_free(ep);
        return rc;
    }
    *out = ep;
    return CL_OK;
}

void cl_kms_endpoint_free(cl_kms_endpoint *ep)
{
    if (!ep)
        return;
    for (size_t i = 0; i < ep->key_count; i++)
        free(ep->keys[i]);
    pthread_mutex_destroy(&ep->lock);
    free(ep);
}

void cl_kms_endpoint_get_stats(cl_kms_endpoint *ep, cl_kms_endpoint_stats *out)
{
    pthread_mutex_lock(&ep->lock);
    *out = ep->stats;
    pthread_mutex_unlock(&ep->lock);
}

/* ---- answers -------------------------------------------------------------- */

static void reply_json(cl_kms_endpoint_reply *r, int status, json_t *o)
{
    cl_buf_reset(&r->body);
    r->status = status;
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    if (!text || cl_buf_append(&r->body, text, strlen(text)) < 0) {
        cl_buf_reset(&r->body);
        static const char oom[] = "{\"__type\":\"KMSInternalException\",\"message\":\"cloister: out of memory\"}";
        r->status = 500;
        if (cl_buf_append(&r->body, oom, sizeof oom - 1) < 0)
            r->body.len = 0;
    }
    if (text)
        cl_free_secret(text, strlen(text));
}

static void refuse(cl_kms_endpoint_reply *r, int status, const char *type, const char *fmt, ...) CL_PRINTF(4, 5);

static void refuse(cl_kms_endpoint_reply *r, int status, const char *type, const char *fmt, ...)
{
    char message[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    /* the app's bytes may be quoted back: keep the message printable */
    for (char *p = message; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
            *p = '?';
    json_t *o = json_pack("{s:s, s:s}", "__type", type, "message", message);
    reply_json(r, status, o);
    json_decref(o);
}

/* AWS names a member in validation messages with its first letter lower. */
static const char *member(const char *name, char *buf, size_t len)
{
    snprintf(buf, len, "%s", name);
    if (buf[0] >= 'A' && buf[0] <= 'Z')
        buf[0] = (char)(buf[0] + 32);
    return buf;
}

static void wipe_json_string(json_t *v)
{
    if (json_is_string(v))
        cl_wipe((void *)json_string_value(v), json_string_length(v));
}

/* ---- the request ------------------------------------------------------------ */

static bool key_allowed(const cl_kms_endpoint *ep, const char *key)
{
    for (size_t i = 0; i < ep->key_count; i++)
        if (!strcmp(ep->keys[i], key))
            return true;
    return false;
}

/* Checks every member of the request against the operation's fields.
 * false: reply is filled with the refusal. */
static bool check_request(cl_kms_endpoint *ep, const op_spec *op, json_t *req, bool *has_recipient,
                          cl_kms_endpoint_reply *reply)
{
    char m[64];
    const char *name;
    json_t *v;
    *has_recipient = false;
    json_object_foreach (req, name, v) {
        const field *f = NULL;
        for (size_t i = 0; i < MAX_FIELDS && op->fields[i].name; i++)
            if (!strcmp(op->fields[i].name, name))
                f = &op->fields[i];
        if (!f) {
            refuse(reply, 400, "ValidationException", "cloister: '%.64s' is not a member of a KMS %s request", name,
                   op->name);
            return false;
        }
        switch (f->type) {
        case F_STR:
            if (!json_is_string(v)) {
                refuse(reply, 400, "SerializationException", "cloister: %s must be a string", f->name);
                return false;
            }
            if (json_string_length(v) < f->min || json_string_length(v) > f->max ||
                strlen(json_string_value(v)) != json_string_length(v)) {
                refuse(reply, 400, "ValidationException",
                       "1 validation error detected: Value at '%s' failed to satisfy constraint: Member must have "
                       "length between %u and %u",
                       member(f->name, m, sizeof m), f->min, f->max);
                return false;
            }
            break;
        case F_B64: {
            if (!json_is_string(v)) {
                refuse(reply, 400, "SerializationException", "cloister: %s must be a base64 string", f->name);
                return false;
            }
            cl_buf bytes = CL_BUF_INIT;
            int rc = cl_base64_decode((const uint8_t *)json_string_value(v), json_string_length(v), &bytes);
            size_t n = bytes.len;
            cl_buf_free(&bytes);
            cl_error_clear();
            if (rc < 0) {
                refuse(reply, 400, "SerializationException", "cloister: %s is not valid base64", f->name);
                return false;
            }
            if (n < f->min || n > f->max) {
                refuse(reply, 400, "ValidationException",
                       "1 validation error detected: Value at '%s' failed to satisfy constraint: Member must have "
                       "length %s %u (it has %zu bytes)",
                       member(f->name, m, sizeof m), n < f->min ? "greater than or equal to" : "less than or equal to",
                       n < f->min ? f->min : f->max, n);
                return false;
            }
            break;
        }
        case F_CTX: {
            const char *ck;
            json_t *cv;
            if (!json_is_object(v)) {
                refuse(reply, 400, "SerializationException", "cloister: %s must be an object of strings", f->name);
                return false;
            }
            json_object_foreach (v, ck, cv) {
                if (!json_is_string(cv) || !*ck || strlen(json_string_value(cv)) != json_string_length(cv)) {
                    refuse(reply, 400, "SerializationException",
                           "cloister: %s must map non-empty keys to strings", f->name);
                    return false;
                }
            }
            break;
        }
        case F_LIST: {
            size_t i;
            json_t *item;
            if (!json_is_array(v) || json_array_size(v) > f->max) {
                refuse(reply, 400, "ValidationException", "cloister: %s must be an array of at most %u strings",
                       f->name, f->max);
                return false;
            }
            json_array_foreach (v, i, item) {
                if (!json_is_string(item) || json_string_length(item) < 1 || json_string_length(item) > 8192) {
                    refuse(reply, 400, "ValidationException", "cloister: %s must hold strings of 1..8192 characters",
                           f->name);
                    return false;
                }
            }
            break;
        }
        case F_INT:
            if (!json_is_integer(v) || json_integer_value(v) < (json_int_t)f->min ||
                json_integer_value(v) > (json_int_t)f->max) {
                refuse(reply, 400, "ValidationException",
                       "1 validation error detected: Value at '%s' failed to satisfy constraint: Member must be an "
                       "integer between %u and %u",
                       member(f->name, m, sizeof m), f->min, f->max);
                return false;
            }
            break;
        case F_BOOL:
            if (!json_is_boolean(v)) {
                refuse(reply, 400, "SerializationException", "cloister: %s must be true or false", f->name);
                return false;
            }
            break;
        default: { /* F_RECIPIENT */
            json_t *doc = json_object_get(v, "AttestationDocument");
            json_t *alg = json_object_get(v, "KeyEncryptionAlgorithm");
            if (!json_is_object(v) || !json_is_string(doc) || json_object_size(v) != 1u + (alg != NULL) ||
                (alg && !json_is_string(alg)) || json_string_length(doc) > 32768) {
                refuse(reply, 400, "ValidationException",
                       "cloister: Recipient must be {AttestationDocument, KeyEncryptionAlgorithm}");
                return false;
            }
            *has_recipient = true;
            break;
        }
        }
        if (f->key && ep->key_count && !key_allowed(ep, json_string_value(v))) {
            refuse(reply, 400, "AccessDeniedException",
                   "cloister: the enclave's KMS endpoint does not let the app use key '%.200s' (-kms-for-app-keys)",
                   json_string_value(v));
            return false;
        }
    }
    for (size_t i = 0; i < MAX_FIELDS && op->fields[i].name; i++) {
        const field *f = &op->fields[i];
        bool present = json_object_get(req, f->name) != NULL;
        if (f->required && !present) {
            refuse(reply, 400, "ValidationException",
                   "1 validation error detected: Value null at '%s' failed to satisfy constraint: Member must not be "
                   "null",
                   member(f->name, m, sizeof m));
            return false;
        }
        /* with an allow list, KMS must be told which key, so that it holds
         * the ciphertext to it (IncorrectKeyException otherwise) */
        if (f->key && ep->key_count && !present) {
            refuse(reply, 400, "AccessDeniedException",
                   "cloister: the enclave's KMS endpoint serves only named keys (-kms-for-app-keys): %s must name one",
                   f->name);
            return false;
        }
    }
    return true;
}

/* The secret's length KMS must give, 0 when the request does not say. */
static size_t expected_length(const op_spec *op, json_t *req)
{
    json_t *n = json_object_get(req, "NumberOfBytes");
    if (!strcmp(op->name, "GenerateRandom"))
        return json_is_integer(n) ? (size_t)json_integer_value(n) : 0;
    if (!strcmp(op->name, "GenerateDataKey")) {
        if (json_is_integer(n))
            return (size_t)json_integer_value(n);
        const char *spec = json_string_value(json_object_get(req, "KeySpec"));
        if (spec && !strcmp(spec, "AES_128"))
            return 16;
        if (spec && !strcmp(spec, "AES_256"))
            return 32;
    }
    return 0;
}

static int add_recipient(cl_kms_endpoint *ep, json_t *req)
{
    cl_buf doc = CL_BUF_INIT, b64 = CL_BUF_INIT;
    int rc = cl_kms_recipient_document(ep->recipient, &doc);
    if (rc == CL_OK)
        rc = cl_base64_encode(doc.data, doc.len, &b64);
    if (rc == CL_OK) {
        json_t *r = json_pack("{s:s, s:s}", "AttestationDocument", (const char *)b64.data, "KeyEncryptionAlgorithm",
                              KEY_ENCRYPTION_ALGORITHM);
        if (!r || json_object_set_new(req, "Recipient", r) < 0)
            rc = cl_error_set(CL_ENOMEM, "out of memory");
    }
    cl_buf_free(&doc);
    cl_buf_free(&b64);
    return rc;
}

/* KMS's 200 answer to a Recipient request, with the envelope opened into
 * the secret's field.  false: reply holds the refusal. */
static bool open_answer(cl_kms_endpoint *ep, const op_spec *op, json_t *req, const cl_buf *answer,
                        cl_kms_endpoint_reply *reply)
{
    json_error_t jerr;
    json_t *a = json_loadb((const char *)answer->data, answer->len, JSON_REJECT_DUPLICATES, &jerr);
    json_t *cfr = json_object_get(a, "CiphertextForRecipient");
    json_t *pt = json_object_get(a, op->secret_field);
    bool ok = false;
    cl_buf cms = CL_BUF_INIT, secret = CL_BUF_INIT, b64 = CL_BUF_INIT;
    if (!json_is_object(a)) {
        refuse(reply, 500, "KMSInternalException", "cloister: KMS's answer to %s is not a JSON object", op->name);
    } else if (pt && !json_is_null(pt)) {
        /* a secret in the clear although a Recipient was sent: it crossed
         * the parent; not given to the app as if it had not */
        wipe_json_string(pt);
        refuse(reply, 500, "KMSInternalException",
               "cloister: KMS answered %s with %s in the clear although a Recipient was sent (refused)", op->name,
               op->secret_field);
    } else if (!json_is_string(cfr) ||
               cl_base64_decode((const uint8_t *)json_string_value(cfr), json_string_length(cfr), &cms) < 0 ||
               !cms.len) {
        cl_error_clear();
        refuse(reply, 500, "KMSInternalException",
               "cloister: KMS's answer to %s has no CiphertextForRecipient in base64", op->name);
    } else if (cl_kms_recipient_open(ep->recipient, cms.data, cms.len, &secret) < 0) {
        refuse(reply, 500, "KMSInternalException", "cloister: the envelope of KMS's answer to %s cannot be opened: %s",
               op->name, cl_error_message());
    } else if (expected_length(op, req) && secret.len != expected_length(op, req)) {
        refuse(reply, 500, "KMSInternalException", "cloister: KMS's %s gave %zu bytes, %zu asked for", op->name,
               secret.len, expected_length(op, req));
    } else if (cl_base64_encode(secret.data, secret.len, &b64) < 0) {
        refuse(reply, 500, "KMSInternalException", "cloister: out of memory");
    } else {
        json_object_del(a, "CiphertextForRecipient");
        json_t *s = json_string((const char *)b64.data);
        if (!s || json_object_set_new(a, op->secret_field, s) < 0) {
            refuse(reply, 500, "KMSInternalException", "cloister: out of memory");
        } else {
            reply_json(reply, 200, a);
            wipe_json_string(json_object_get(a, op->secret_field));
            ok = true;
        }
    }
    cl_buf_free(&cms);
    cl_buf_free(&secret);
    cl_buf_free(&b64);
    json_decref(a);
    return ok;
}

static bool content_type_ok(const cl_slice *ct)
{
    if (!ct)
        return false;
    cl_slice t = *ct;
    for (size_t i = 0; i < t.len; i++)
        if (t.data[i] == ';') {
            t.len = i;
            break;
        }
    while (t.len && (t.data[t.len - 1] == ' ' || t.data[t.len - 1] == '\t'))
        t.len--;
    return cl_slice_eq_nocase(t, CL_KMS_ENDPOINT_CONTENT_TYPE);
}

static void handle_locked(cl_kms_endpoint *ep, const cl_kms_endpoint_request *req, cl_kms_endpoint_reply *reply)
{
    if (!cl_slice_eq(req->method, "POST")) {
        refuse(reply, 405, "UnsupportedOperationException", "cloister: the KMS endpoint takes POST / only");
        return;
    }
    size_t prefix = strlen(CL_KMS_TARGET_PREFIX);
    const op_spec *op = NULL;
    if (req->target && req->target->len > prefix && !memcmp(req->target->data, CL_KMS_TARGET_PREFIX, prefix))
        op = find_op((const char *)req->target->data + prefix, req->target->len - prefix);
    if (!req->target) {
        refuse(reply, 400, "UnknownOperationException", "cloister: no X-Amz-Target header (TrentService.OPERATION)");
        return;
    }
    if (!op) {
        int n = (int)(req->target->len > 80 ? 80 : req->target->len);
        refuse(reply, 400, "UnknownOperationException",
               "cloister: X-Amz-Target '%.*s' is not an operation the enclave serves (%s)", n,
               (const char *)req->target->data, cl_kms_endpoint_operations());
        return;
    }
    if (!content_type_ok(req->content_type)) {
        refuse(reply, 400, "SerializationException", "cloister: Content-Type must be " CL_KMS_ENDPOINT_CONTENT_TYPE);
        return;
    }
    if (req->body_len > CL_KMS_ENDPOINT_MAX_BODY) {
        refuse(reply, 413, "ValidationException", "cloister: a request body of %zu bytes is over the limit of %d bytes",
               req->body_len, CL_KMS_ENDPOINT_MAX_BODY);
        return;
    }
    if (!ep->allowed[op - ops]) {
        refuse(reply, 400, "AccessDeniedException",
               "cloister: the enclave's KMS endpoint does not serve %s to the app (-kms-for-app-operations)", op->name);
        return;
    }
    json_error_t jerr;
    json_t *body = json_loadb((const char *)req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(body)) {
        refuse(reply, 400, "SerializationException", "cloister: the request body is not a JSON object: %s",
               body ? "another JSON value" : jerr.text);
        json_decref(body);
        return;
    }
    bool app_recipient = false;
    if (!check_request(ep, op, body, &app_recipient, reply)) {
        wipe_json_string(json_object_get(body, "Plaintext"));
        json_decref(body);
        return;
    }
    /* an app that brings its own Recipient wants KMS's envelope as it is */
    bool ours = op->secret_field && !app_recipient;
    int rc = ours ? add_recipient(ep, body) : CL_OK;
    if (rc < 0) {
        refuse(reply, 500, "KMSInternalException", "cloister: no attestation document for the Recipient: %s",
               cl_error_message());
        json_decref(body);
        return;
    }
    char *text = json_dumps(body, JSON_COMPACT);
    wipe_json_string(json_object_get(body, "Plaintext"));
    if (!text) {
        refuse(reply, 500, "KMSInternalException", "cloister: out of memory");
        json_decref(body);
        return;
    }
    long status = 0;
    cl_buf answer = CL_BUF_INIT;
    ep->stats.forwarded++;
    rc = ep->send(ep->send_ctx, op->name, (const uint8_t *)text, strlen(text), &status, &answer);
    cl_free_secret(text, strlen(text));
    if (rc < 0) {
        refuse(reply, 503, "DependencyTimeoutException", "cloister: KMS is out of reach from the enclave: %s",
               cl_error_message());
    } else if (status == 200 && ours) {
        if (open_answer(ep, op, body, &answer, reply))
            ep->stats.opened++;
    } else {
        /* KMS's own answer, errors included, as it came */
        reply->status = (int)status;
        cl_buf_free(&reply->body);
        reply->body = answer;
        answer = (cl_buf)CL_BUF_INIT;
    }
    cl_buf_free(&answer);
    json_decref(body);
}

void cl_kms_endpoint_handle(cl_kms_endpoint *ep, const cl_kms_endpoint_request *req, cl_kms_endpoint_reply *reply)
{
    reply->status = 500;
    cl_buf_reset(&reply->body);
    pthread_mutex_lock(&ep->lock);
    ep->stats.requests++;
    handle_locked(ep, req, reply);
    pthread_mutex_unlock(&ep->lock);
    cl_error_clear();
}

/* kms-local's request handling: SigV4, the KMS JSON 1.1 operations, key
 * policies with Recipient attestation, ciphertext blobs. */
#include "cloister/sim/kms_local.h"

#include "cloister/sim/cms_recipient.h"
#include "cloister/core/encoding.h"
#include "cloister/sim/kms_policy.h"

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define BLOB_VERSION 0x01
#define BLOB_HEADER 17 /* version + UUID */
#define BLOB_MIN (BLOB_HEADER + 12 + 16)
#define MAX_PLAINTEXT 4096
#define MAX_CIPHERTEXT 6144
#define MAX_CONTEXT_PAIRS 64
#define MAX_RANDOM 1024
#define ARN_MAX 160
#define SECONDS_PER_DAY 86400

struct cl_kms_local {
    pthread_mutex_t lock;
    char *region, *account;
    cl_kms_credential *creds;
    size_t cred_count;
    cl_verifier *verifier;
    cl_kms_store *store;
    uint64_t recipient_max_age_ms;
};

/* One request being answered. */
typedef struct call {
    cl_kms_local *k;
    cl_kms_response *resp;
    json_t *in;
    json_t *out; /* the response object on success */
    const cl_kms_credential *cred;
    char principal[256];
    uint64_t now_ms;
    bool failed;
} call;

/* ---- errors -------------------------------------------------------------------------------- */

/* fail() keeps the message here until the response is written. */
static __thread char error_message[768];

static void fail(call *c, const char *type, const char *fmt, ...) CL_PRINTF(3, 4);

static void fail(call *c, const char *type, const char *fmt, ...)
{
    if (c->failed)
        return;
    c->failed = true;
    error_message[0] = '\0';
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(error_message, sizeof error_message, fmt, ap);
        va_end(ap);
    }
    snprintf(c->resp->error_type, sizeof c->resp->error_type, "%s", type);
    c->resp->status = !strcmp(type, "KMSInternalException") ? 500 : 400;
}

/* ---- small helpers ------------------------------------------------------------------------- */

static void key_arn(const cl_kms_local *k, const char *id, char out[ARN_MAX])
{
    snprintf(out, ARN_MAX, "arn:aws:kms:%s:%s:key/%s", k->region, k->account, id);
}

static void alias_arn(const cl_kms_local *k, const char *name, char out[ARN_MAX + CL_KMS_ALIAS_MAX])
{
    snprintf(out, ARN_MAX + CL_KMS_ALIAS_MAX, "arn:aws:kms:%s:%s:%s", k->region, k->account, name);
}

static bool is_uuid(const char *s)
{
    if (strlen(s) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        char c = s[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-')
                return false;
        } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
            return false;
        }
    }
    return true;
}

static void uuid_to_bytes(const char *s, uint8_t out[16])
{
    size_t n = 0;
    for (int i = 0; i < 36 && n < 16; i++) {
        if (s[i] == '-')
            continue;
        out[n++] = (uint8_t)(cl_hex_digit_value((uint8_t)s[i]) << 4 | cl_hex_digit_value((uint8_t)s[i + 1]));
        i++;
    }
}

static void uuid_from_bytes(const uint8_t b[16], char out[37])
{
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2], b[3],
             b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

static int new_uuid(char out[37])
{
    uint8_t b[16];
    CL_ENSURE(RAND_bytes(b, 16) == 1, CL_ECRYPTO, "no randomness");
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
    uuid_from_bytes(b, out);
    return CL_OK;
}

static double seconds(int64_t s)
{
    return (double)s;
}

/* ---- request fields ------------------------------------------------------------------------ */

/* A string member; NULL when absent.  A member of another type fails the
 * call with SerializationException. */
static const char *get_string(call *c, const char *name, bool required)
{
    json_t *v = json_object_get(c->in, name);
    if (!v || json_is_null(v)) {
        if (required)
            fail(c, "ValidationException",
                 "1 validation error detected: Value null at '%c%s' failed to satisfy constraint: Member must not "
                 "be null",
                 name[0] + 32, name + 1);
        return NULL;
    }
    if (!json_is_string(v)) {
        fail(c, "SerializationException", "%s must be a string", name);
        return NULL;
    }
    size_t n = strlen(name);
    bool identifier = (n > 2 && !strcmp(name + n - 2, "Id")) || (n > 4 && !strcmp(name + n - 4, "Name"));
    if (identifier && json_string_length(v) == 0) {
        fail(c, "ValidationException",
             "1 validation error detected: Value '' at '%c%s' failed to satisfy constraint: Member must have length "
             "greater than or equal to 1",
             name[0] + 32, name + 1);
        return NULL;
    }
    return json_string_value(v);
}

/* An integer member; *present false when absent. */
static long long get_int(call *c, const char *name, bool *present)
{
    json_t *v = json_object_get(c->in, name);
    *present = v && !json_is_null(v);
    if (!*present)
        return 0;
    if (!json_is_integer(v)) {
        fail(c, "SerializationException", "%s must be an integer", name);
        *present = false;
        return 0;
    }
    return json_integer_value(v);
}

static bool get_bool(call *c, const char *name)
{
    json_t *v = json_object_get(c->in, name);
    if (!v || json_is_null(v))
        return false;
    if (!json_is_boolean(v)) {
        fail(c, "SerializationException", "%s must be a boolean", name);
        return false;
    }
    return json_is_true(v);
}

/* A base64 blob member into out; false (and the call failed) when bad. */
static bool get_blob(call *c, const char *name, bool required, size_t max, cl_buf *out, bool *present)
{
    const char *text = get_string(c, name, required);
    *present = text != NULL;
    if (!text)
        return !c->failed;
    if (cl_base64_decode((const uint8_t *)text, strlen(text), out) < 0) {
        cl_error_clear();
        fail(c, "SerializationException", "%s is not valid base64", name);
        return false;
    }
    if (out->len == 0 || out->len > max) {
        fail(c, "ValidationException",
             "1 validation error detected: Value at '%c%s' failed to satisfy constraint: Member must have length "
             "between 1 and %zu",
             name[0] + 32, name + 1, max);
        return false;
    }
    return true;
}

static bool set_blob(call *c, const char *name, const uint8_t *data, size_t len)
{
    cl_buf b64 = CL_BUF_INIT;
    if (cl_base64_encode(data, len, &b64) < 0) {
        fail(c, "KMSInternalException", "out of memory");
        return false;
    }
    json_t *s = json_stringn((const char *)b64.data, strlen((const char *)b64.data));
    cl_buf_free(&b64);
    if (!s || json_object_set_new(c->out, name, s) < 0) {
        fail(c, "KMSInternalException", "out of memory");
        return false;
    }
    return true;
}

static void set_string(call *c, const char *name, const char *value)
{
    if (json_object_set_new(c->out, name, json_string(value)) < 0)
        fail(c, "KMSInternalException", "out of memory");
}

/* ---- encryption context -------------------------------------------------------------------- */

typedef struct context {
    cl_kms_policy_pair pairs[MAX_CONTEXT_PAIRS];
    size_t count;
    cl_buf aad; /* the canonical form */
} context;

static int pair_cmp(const void *a, const void *b)
{
    return strcmp(((const cl_kms_policy_pair *)a)->key, ((const cl_kms_policy_pair *)b)->key);
}

static bool get_context(call *c, const char *name, context *ctx)
{
    memset(ctx, 0, sizeof *ctx);
    json_t *v = json_object_get(c->in, name);
    if (!v || json_is_null(v))
        return true;
    if (!json_is_object(v)) {
        fail(c, "SerializationException", "%s must be a map of strings", name);
        return false;
    }
    const char *key;
    json_t *value;
    json_object_foreach(v, key, value) {
        if (!json_is_string(value)) {
            fail(c, "SerializationException", "%s values must be strings", name);
            return false;
        }
        if (ctx->count == MAX_CONTEXT_PAIRS) {
            fail(c, "ValidationException", "%s has more than %d pairs", name, MAX_CONTEXT_PAIRS);
            return false;
        }
        if (!key[0]) {
            fail(c, "ValidationException", "%s keys must not be empty", name);
            return false;
        }
        ctx->pairs[ctx->count].key = key;
        ctx->pairs[ctx->count].value = json_string_value(value);
        ctx->count++;
    }
    qsort(ctx->pairs, ctx->count, sizeof ctx->pairs[0], pair_cmp);
    int rc = CL_OK;
    for (size_t i = 0; i < ctx->count && rc == CL_OK; i++) {
        size_t kl = strlen(ctx->pairs[i].key), vl = strlen(ctx->pairs[i].value);
        rc = cl_buf_append_be(&ctx->aad, kl, 4);
        if (rc == CL_OK)
            rc = cl_buf_append(&ctx->aad, ctx->pairs[i].key, kl);
        if (rc == CL_OK)
            rc = cl_buf_append_be(&ctx->aad, vl, 4);
        if (rc == CL_OK)
            rc = cl_buf_append(&ctx->aad, ctx->pairs[i].value, vl);
    }
    if (rc < 0 || ctx->aad.len > 8192) {
        fail(c, "ValidationException", "%s is too large", name);
        return false;
    }
    return true;
}

/* ---- keys ----------------------------------------------------------------------------------- */

/* Finds the key that `text` names (key id, key ARN, alias name or alias
 * ARN); NotFoundException otherwise.  A key whose deletion date has passed
 * is deleted here. */
static bool find_key(call *c, const char *text, bool allow_alias, cl_kms_key *key)
{
    cl_kms_local *k = c->k;
    char id[CL_KMS_KEY_ID_LEN + 1] = "";
    char prefix[ARN_MAX];
    snprintf(prefix, sizeof prefix, "arn:aws:kms:%s:%s:", k->region, k->account);
    const char *rest = !strncmp(text, prefix, strlen(prefix)) ? text + strlen(prefix) : NULL;
    const char *alias = !strncmp(text, "alias/", 6) ? text : rest && !strncmp(rest, "alias/", 6) ? rest : NULL;
    if (alias) {
        char arn[ARN_MAX + CL_KMS_ALIAS_MAX];
        alias_arn(k, alias, arn);
        if (!allow_alias) {
            fail(c, "ValidationException", "%s: an alias is not accepted here; use a key ID or key ARN", text);
            return false;
        }
        cl_kms_alias a;
        int rc = strlen(alias) <= CL_KMS_ALIAS_MAX ? cl_kms_store_get_alias(k->store, alias, &a) : CL_ENOTFOUND;
        if (rc == CL_ENOTFOUND) {
            cl_error_clear();
            fail(c, "NotFoundException", "Alias %s is not found.", arn);
            return false;
        }
        if (rc < 0) {
            fail(c, "KMSInternalException", "%s", cl_error_message());
            return false;
        }
        snprintf(id, sizeof id, "%s", a.key_id);
    } else if (rest && !strncmp(rest, "key/", 4) && is_uuid(rest + 4)) {
        snprintf(id, sizeof id, "%s", rest + 4);
    } else if (is_uuid(text)) {
        snprintf(id, sizeof id, "%s", text);
    } else {
        fail(c, "NotFoundException", "Invalid keyId '%.300s'", text);
        return false;
    }
    char arn[ARN_MAX];
    key_arn(k, id, arn);
    int rc = cl_kms_store_get_key(k->store, id, key);
    if (rc == CL_OK && key->state == CL_KMS_PENDING_DELETION && key->deletion_s * 1000 <= (int64_t)c->now_ms) {
        cl_kms_key_free(key);
        rc = cl_kms_store_delete_key(k->store, id);
        if (rc == CL_OK)
            rc = CL_ENOTFOUND;
    }
    if (rc == CL_ENOTFOUND) {
        cl_error_clear();
        fail(c, "NotFoundException", "Key '%s' does not exist", arn);
        return false;
    }
    if (rc < 0) {
        fail(c, "KMSInternalException", "%s", cl_error_message());
        return false;
    }
    return true;
}

/* Disabled and pending-deletion keys cannot be used. */
static bool key_usable(call *c, const cl_kms_key *key)
{
    char arn[ARN_MAX];
    key_arn(c->k, key->id, arn);
    if (key->state == CL_KMS_DISABLED) {
        fail(c, "DisabledException", "%s is disabled.", arn);
        return false;
    }
    if (key->state == CL_KMS_PENDING_DELETION) {
        fail(c, "KMSInvalidStateException", "%s is pending deletion.", arn);
        return false;
    }
    return true;
}

static bool save_key(call *c, const cl_kms_key *key)
{
    if (cl_kms_store_put_key(c->k->store, key) < 0) {
        fail(c, "KMSInternalException", "%s", cl_error_message());
        return false;
    }
    return true;
}

/* ---- Recipient ------------------------------------------------------------------------------ */

typedef struct recipient {
    bool present;
    cl_attestation_doc doc;
    bool have_doc;
    char pcr_hex[CL_PCR_COUNT][2 * CL_PCR_MAX_LEN + 1];
} recipient;

static void recipient_free(recipient *r)
{
    if (r->have_doc)
        cl_attestation_doc_free(&r->doc);
}

static bool get_recipient(call *c, recipient *r)
{
    memset(r, 0, sizeof *r);
    json_t *v = json_object_get(c->in, "Recipient");
    if (!v || json_is_null(v))
        return true;
    r->present = true;
    if (!json_is_object(v)) {
        fail(c, "SerializationException", "Recipient must be a structure");
        return false;
    }
    json_t *alg = json_object_get(v, "KeyEncryptionAlgorithm");
    json_t *doc = json_object_get(v, "AttestationDocument");
    if (alg && !json_is_null(alg) && (!json_is_string(alg) || strcmp(json_string_value(alg), "RSAES_OAEP_SHA_256"))) {
        fail(c, "ValidationException",
             "1 validation error detected: Value at 'recipient.keyEncryptionAlgorithm' failed to satisfy constraint: "
             "Member must satisfy enum value set: [RSAES_OAEP_SHA_256]");
        return false;
    }
    if (!doc || !json_is_string(doc)) {
        fail(c, "ValidationException", "Recipient.AttestationDocument is required (base64 of the attestation document)");
        return false;
    }
    cl_buf raw = CL_BUF_INIT;
    const char *text = json_string_value(doc);
    if (cl_base64_decode((const uint8_t *)text, strlen(text), &raw) < 0 || raw.len == 0) {
        cl_error_clear();
        cl_buf_free(&raw);
        fail(c, "SerializationException", "Recipient.AttestationDocument is not valid base64");
        return false;
    }
    if (!c->k->verifier) {
        cl_buf_free(&raw);
        fail(c, "ValidationException", "this kms-local trusts no attestation root");
        return false;
    }
    /* debug documents are KMS's to judge through the policy's PCR conditions, as KMS does */
    cl_attestation_policy age = {.allow_debug = true, .max_age_ms = c->k->recipient_max_age_ms};
    int rc = cl_attestation_verify(c->k->verifier, raw.data, raw.len, &age, c->now_ms, &r->doc);
    cl_buf_free(&raw);
    if (rc < 0) {
        fail(c, "ValidationException", "The attestation document in the Recipient is not valid: %s",
             cl_error_message());
        cl_error_clear();
        return false;
    }
    r->have_doc = true;
    if (!r->doc.has_public_key) {
        fail(c, "ValidationException", "The attestation document in the Recipient has no public_key");
        return false;
    }
    for (unsigned i = 0; i < CL_PCR_COUNT; i++)
        if (r->doc.pcr_present & (1u << i))
            cl_hex_encode(r->doc.pcrs[i].data, r->doc.pcrs[i].len, r->pcr_hex[i]);
    return true;
}

/* ---- authorization -------------------------------------------------------------------------- */

static bool authorize(call *c, const cl_kms_key *key, const char *action, const recipient *r, const context *ec)
{
    char arn[ARN_MAX];
    key_arn(c->k, key->id, arn);
    cl_kms_policy *p = NULL;
    if (cl_kms_policy_parse(key->policy, strlen(key->policy), &p) < 0) {
        fail(c, "KMSInternalException", "the stored key policy does not parse: %s", cl_error_message());
        return false;
    }
    cl_kms_policy_context ctx = {
        .action = action,
        .principal = c->principal,
        .account = c->k->account,
        .resource = arn,
    };
    if (r && r->have_doc) {
        for (unsigned i = 0; i < CL_PCR_COUNT; i++)
            if (r->doc.pcr_present & (1u << i))
                ctx.pcrs[i] = r->pcr_hex[i];
        ctx.image_sha384 = ctx.pcrs[0];
    }
    if (ec) {
        ctx.encryption_context = ec->pairs;
        ctx.encryption_context_len = ec->count;
    }
    cl_kms_decision d = cl_kms_policy_evaluate(p, &ctx);
    cl_kms_policy_free(p);
    if (d == CL_KMS_ALLOW)
        return true;
    fail(c, "AccessDeniedException",
         "User: %s is not authorized to perform: %s on resource: %s %s", c->principal, action, arn,
         d == CL_KMS_EXPLICIT_DENY ? "with an explicit deny in a resource-based policy"
                                   : "because no resource-based policy allows the action");
    return false;
}

static bool dry_run(call *c)
{
    if (get_bool(c, "DryRun")) {
        fail(c, "DryRunOperationException", "The request would have succeeded, but the DryRun option is set.");
        return true;
    }
    return c->failed;
}

/* ---- ciphertext blobs ----------------------------------------------------------------------- */

static bool seal_blob(call *c, const cl_kms_key *key, const context *ec, const uint8_t *pt, size_t len, cl_buf *out)
{
    uint8_t header[BLOB_HEADER];
    header[0] = BLOB_VERSION;
    uuid_to_bytes(key->id, header + 1);
    cl_buf aad = CL_BUF_INIT;
    int rc = cl_buf_append(&aad, header, BLOB_HEADER);
    if (rc == CL_OK)
        rc = cl_buf_append(&aad, ec->aad.data, ec->aad.len);
    if (rc == CL_OK)
        rc = cl_buf_append(out, header, BLOB_HEADER);
    if (rc == CL_OK)
        rc = cl_kms_seal(key->material, aad.data, aad.len, pt, len, out);
    cl_buf_free(&aad);
    if (rc < 0)
        fail(c, "KMSInternalException", "%s", cl_error_message());
    return rc == CL_OK;
}

/* Opens a blob: finds its key (which must be the one key_text names, if
 * given), checks it may be used for action, decrypts. */
static bool open_blob(call *c, const cl_buf *blob, const char *key_text, const context *ec, const char *action,
                      const recipient *r, cl_kms_key *key, cl_buf *pt)
{
    if (blob->len < BLOB_MIN || blob->data[0] != BLOB_VERSION) {
        fail(c, "InvalidCiphertextException", NULL);
        return false;
    }
    char id[37];
    uuid_from_bytes(blob->data + 1, id);
    if (key_text) {
        cl_kms_key named;
        if (!find_key(c, key_text, true, &named))
            return false;
        bool same = !strcmp(named.id, id);
        cl_kms_key_free(&named);
        if (!same) {
            fail(c, "IncorrectKeyException",
                 "The key ID in the request does not identify a CMK that can perform this operation.");
            return false;
        }
    }
    if (!find_key(c, id, false, key))
        return false;
    if (!key_usable(c, key) || !authorize(c, key, action, r, ec)) {
        cl_kms_key_free(key);
        return false;
    }
    cl_buf aad = CL_BUF_INIT;
    int rc = cl_buf_append(&aad, blob->data, BLOB_HEADER);
    if (rc == CL_OK)
        rc = cl_buf_append(&aad, ec->aad.data, ec->aad.len);
    if (rc == CL_OK)
        rc = cl_kms_unseal(key->material, aad.data, aad.len, blob->data + BLOB_HEADER, blob->len - BLOB_HEADER, pt);
    cl_buf_free(&aad);
    if (rc == CL_EVERIFY) {
        cl_error_clear();
        fail(c, "InvalidCiphertextException", NULL);
    } else if (rc < 0) {
        fail(c, "KMSInternalException", "%s", cl_error_message());
    }
    if (rc < 0)
        cl_kms_key_free(key);
    return rc == CL_OK;
}

/* Plaintext, or with a Recipient CiphertextForRecipient instead. */
static bool deliver(call *c, const recipient *r, const uint8_t *pt, size_t len)
{
    if (!r->present)
        return set_blob(c, "Plaintext", pt, len);
    cl_buf cms = CL_BUF_INIT;
    int rc = cl_cms_recipient_encrypt(r->doc.public_key.data, r->doc.public_key.len, pt, len, &cms);
    if (rc == CL_EPARSE) {
        fail(c, "ValidationException", "The public key in the attestation document is not usable: %s",
             cl_error_message());
        cl_error_clear();
    } else if (rc < 0) {
        fail(c, "KMSInternalException", "%s", cl_error_message());
    }
    bool ok = rc == CL_OK && set_blob(c, "CiphertextForRecipient", cms.data, cms.len);
    cl_buf_free(&cms);
    return ok;
}

/* ---- key metadata --------------------------------------------------------------------------- */

static const char *state_name(int state)
{
    return state == CL_KMS_ENABLED ? "Enabled" : state == CL_KMS_DISABLED ? "Disabled" : "PendingDeletion";
}

static json_t *metadata(const cl_kms_local *k, const cl_kms_key *key)
{
    char arn[ARN_MAX];
    key_arn(k, key->id, arn);
    json_t *m = json_pack("{s:s, s:s, s:s, s:f, s:b, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:[s], s:b}", "AWSAccountId",
                          k->account, "KeyId", key->id, "Arn", arn, "CreationDate", seconds(key->creation_s), "Enabled",
                          key->state == CL_KMS_ENABLED, "Description", key->description ? key->description : "",
                          "KeyUsage", "ENCRYPT_DECRYPT", "KeyState", state_name(key->state), "Origin", "AWS_KMS",
                          "KeyManager", "CUSTOMER", "CustomerMasterKeySpec", "SYMMETRIC_DEFAULT", "KeySpec",
                          "SYMMETRIC_DEFAULT", "EncryptionAlgorithms", "SYMMETRIC_DEFAULT", "MultiRegion", 0);
    if (m && key->state == CL_KMS_PENDING_DELETION)
        json_object_set_new(m, "DeletionDate", json_real(seconds(key->deletion_s)));
    return m;
}

static void set_metadata(call *c, const cl_kms_key *key)
{
    json_t *m = metadata(c->k, key);
    if (!m || json_object_set_new(c->out, "KeyMetadata", m) < 0)
        fail(c, "KMSInternalException", "out of memory");
}

static bool check_policy_text(call *c, const char *text, bool bypass)
{
    cl_kms_policy *p = NULL;
    if (cl_kms_policy_parse(text, strlen(text), &p) < 0) {
        fail(c, "MalformedPolicyDocumentException", "%s", cl_error_message());
        cl_error_clear();
        return false;
    }
    /* AWS's lockout safety check: the new policy must let the caller
     * change it again. */
    cl_kms_policy_context ctx = {.action = "kms:PutKeyPolicy", .principal = c->principal, .account = c->k->account,
                                 .resource = "*"};
    cl_kms_decision d = cl_kms_policy_evaluate(p, &ctx);
    cl_kms_policy_free(p);
    if (!bypass && d != CL_KMS_ALLOW) {
        fail(c, "MalformedPolicyDocumentException",
             "The new key policy will not allow you to update the key policy in the future.");
        return false;
    }
    return true;
}

/* ---- operations ----------------------------------------------------------------------------- */

static int create_key(cl_kms_local *k, const char *description, const char *policy, int64_t now_s, cl_kms_key *key)
{
    memset(key, 0, sizeof *key);
    CL_TRY(new_uuid(key->id));
    key->creation_s = now_s;
    key->state = CL_KMS_ENABLED;
    key->description = strdup(description ? description : "");
    if (policy)
        key->policy = strdup(policy);
    else
        CL_TRY(cl_kms_policy_default(k->account, &key->policy));
    CL_ENSURE(key->description && key->policy, CL_ENOMEM, "out of memory");
    CL_ENSURE(RAND_bytes(key->material, CL_KMS_MATERIAL_LEN) == 1, CL_ECRYPTO, "no randomness");
    return cl_kms_store_put_key(k->store, key);
}

static void op_create_key(call *c)
{
    const char *policy = get_string(c, "Policy", false);
    const char *description = get_string(c, "Description", false);
    const char *usage = get_string(c, "KeyUsage", false);
    const char *spec = get_string(c, "KeySpec", false);
    const char *cmk_spec = get_string(c, "CustomerMasterKeySpec", false);
    const char *origin = get_string(c, "Origin", false);
    bool bypass = get_bool(c, "BypassPolicyLockoutSafetyCheck");
    bool multi = get_bool(c, "MultiRegion");
    if (c->failed)
        return;
    if (description && strlen(description) > CL_KMS_DESCRIPTION_MAX)
        return fail(c, "ValidationException", "Description is longer than %d characters", CL_KMS_DESCRIPTION_MAX);
    if (usage && strcmp(usage, "ENCRYPT_DECRYPT"))
        return fail(c, "UnsupportedOperationException", "kms-local supports KeyUsage ENCRYPT_DECRYPT only");
    if ((spec && strcmp(spec, "SYMMETRIC_DEFAULT")) || (cmk_spec && strcmp(cmk_spec, "SYMMETRIC_DEFAULT")))
        return fail(c, "UnsupportedOperationException", "kms-local supports KeySpec SYMMETRIC_DEFAULT only");
    if (origin && strcmp(origin, "AWS_KMS"))
        return fail(c, "UnsupportedOperationException", "kms-local supports Origin AWS_KMS only");
    if (multi)
        return fail(c, "UnsupportedOperationException", "kms-local has no multi-Region keys");
    if (policy && !check_policy_text(c, policy, bypass))
        return;
    cl_kms_key key;
    if (create_key(c->k, description, policy, (int64_t)(c->now_ms / 1000), &key) < 0) {
        cl_kms_key_free(&key);
        return fail(c, "KMSInternalException", "%s", cl_error_message());
    }
    set_metadata(c, &key);
    cl_kms_key_free(&key);
}

static void op_describe_key(call *c)
{
    const char *id = get_string(c, "KeyId", true);
    cl_kms_key key;
    if (!id || !find_key(c, id, true, &key))
        return;
    if (authorize(c, &key, "kms:DescribeKey", NULL, NULL))
        set_metadata(c, &key);
    cl_kms_key_free(&key);
}

static unsigned get_limit(call *c)
{
    bool present;
    long long limit = get_int(c, "Limit", &present);
    if (present && (limit < 1 || limit > 1000)) {
        fail(c, "ValidationException",
             "1 validation error detected: Value '%lld' at 'limit' failed to satisfy constraint: Member must have "
             "value less than or equal to 1000 and greater than or equal to 1",
             limit);
        return 0;
    }
    return present ? (unsigned)limit : 100;
}

typedef struct list_ctx {
    call *c;
    json_t *array;
    char last[CL_KMS_ALIAS_MAX + 1];
} list_ctx;

static void on_key(void *ctx, const char *id)
{
    list_ctx *l = ctx;
    char arn[ARN_MAX];
    key_arn(l->c->k, id, arn);
    json_array_append_new(l->array, json_pack("{s:s, s:s}", "KeyId", id, "KeyArn", arn));
    snprintf(l->last, sizeof l->last, "%s", id);
}

static void finish_list(call *c, list_ctx *l, const char *name, bool more)
{
    json_object_set_new(c->out, name, l->array);
    json_object_set_new(c->out, "Truncated", json_boolean(more));
    if (more)
        set_string(c, "NextMarker", l->last);
}

static void op_list_keys(call *c)
{
    unsigned limit = get_limit(c);
    const char *marker = get_string(c, "Marker", false);
    if (c->failed)
        return;
    list_ctx l = {.c = c, .array = json_array()};
    bool more = false;
    if (cl_kms_store_list_keys(c->k->store, marker ? marker : "", limit, on_key, &l, &more) < 0) {
        json_decref(l.array);
        return fail(c, "KMSInternalException", "%s", cl_error_message());
    }
    finish_list(c, &l, "Keys", more);
}

static bool valid_alias_name(const char *s)
{
    size_t n = strlen(s);
    if (n <= 6 || n > CL_KMS_ALIAS_MAX || strncmp(s, "alias/", 6))
        return false;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '/' ||
              *p == '_' || *p == '-' || *p == ':'))
            return false;
    return true;
}

static void op_create_alias(call *c)
{
    const char *name = get_string(c, "AliasName", true);
    const char *target = name ? get_string(c, "TargetKeyId", true) : NULL;
    if (!name || !target)
        return;
    if (!valid_alias_name(name))
        return fail(c, "ValidationException",
                    "1 validation error detected: Value '%.300s' at 'aliasName' failed to satisfy constraint: Member "
                    "must satisfy regular expression pattern: ^alias/[a-zA-Z0-9/_-]+$",
                    name);
    if (!strncmp(name, "alias/aws/", 10))
        return fail(c, "NotAuthorizedException", "alias/aws/ is reserved for AWS managed keys");
    cl_kms_key key;
    if (!find_key(c, target, false, &key))
        return;
    if (key.state == CL_KMS_PENDING_DELETION) {
        char arn[ARN_MAX];
        key_arn(c->k, key.id, arn);
        fail(c, "KMSInvalidStateException", "%s is pending deletion.", arn);
    } else if (authorize(c, &key, "kms:CreateAlias", NULL, NULL)) {
        cl_kms_alias a = {.creation_s = (int64_t)(c->now_ms / 1000), .updated_s = (int64_t)(c->now_ms / 1000)};
        snprintf(a.name, sizeof a.name, "%s", name);
        snprintf(a.key_id, sizeof a.key_id, "%s", key.id);
        int rc = cl_kms_store_create_alias(c->k->store, &a);
        if (rc == CL_EVERIFY) {
            cl_error_clear();
            char arn[ARN_MAX + CL_KMS_ALIAS_MAX];
            alias_arn(c->k, name, arn);
            fail(c, "AlreadyExistsException", "An alias with the name %s already exists", arn);
        } else if (rc < 0) {
            fail(c, "KMSInternalException", "%s", cl_error_message());
        }
    }
    cl_kms_key_free(&key);
}

static void on_alias(void *ctx, const cl_kms_alias *a)
{
    list_ctx *l = ctx;
    char arn[ARN_MAX + CL_KMS_ALIAS_MAX];
    alias_arn(l->c->k, a->name, arn);
    json_array_append_new(l->array, json_pack("{s:s, s:s, s:s, s:f, s:f}", "AliasName", a->name, "AliasArn", arn,
                                              "TargetKeyId", a->key_id, "CreationDate", seconds(a->creation_s),
                                              "LastUpdatedDate", seconds(a->updated_s)));
    snprintf(l->last, sizeof l->last, "%s", a->name);
}

static void op_list_aliases(call *c)
{
    unsigned limit = get_limit(c);
    const char *marker = get_string(c, "Marker", false);
    const char *key_text = get_string(c, "KeyId", false);
    if (c->failed)
        return;
    char id[CL_KMS_KEY_ID_LEN + 1] = "";
    if (key_text) {
        cl_kms_key key;
        if (!find_key(c, key_text, false, &key))
            return;
        snprintf(id, sizeof id, "%s", key.id);
        cl_kms_key_free(&key);
    }
    list_ctx l = {.c = c, .array = json_array()};
    bool more = false;
    if (cl_kms_store_list_aliases(c->k->store, key_text ? id : NULL, marker ? marker : "", limit, on_alias, &l,
                                  &more) < 0) {
        json_decref(l.array);
        return fail(c, "KMSInternalException", "%s", cl_error_message());
    }
    finish_list(c, &l, "Aliases", more);
}

static bool check_algorithm(call *c, const char *name)
{
    const char *alg = get_string(c, name, false);
    if (alg && strcmp(alg, "SYMMETRIC_DEFAULT")) {
        fail(c, "InvalidKeyUsageException", "kms-local keys support only the SYMMETRIC_DEFAULT encryption algorithm");
        return false;
    }
    return !c->failed;
}

static void op_encrypt(call *c)
{
    const char *id = get_string(c, "KeyId", true);
    cl_buf pt = CL_BUF_INIT, blob = CL_BUF_INIT;
    context ec;
    bool present;
    cl_kms_key key;
    if (!id || !get_blob(c, "Plaintext", true, MAX_PLAINTEXT, &pt, &present) || !get_context(c, "EncryptionContext", &ec))
        goto out0;
    if (!check_algorithm(c, "EncryptionAlgorithm") || !find_key(c, id, true, &key))
        goto out1;
    if (key_usable(c, &key) && authorize(c, &key, "kms:Encrypt", NULL, &ec) && !dry_run(c) &&
        seal_blob(c, &key, &ec, pt.data, pt.len, &blob)) {
        char arn[ARN_MAX];
        key_arn(c->k, key.id, arn);
        if (set_blob(c, "CiphertextBlob", blob.data, blob.len)) {
            set_string(c, "KeyId", arn);
            set_string(c, "EncryptionAlgorithm", "SYMMETRIC_DEFAULT");
        }
    }
    cl_kms_key_free(&key);
out1:
    cl_buf_free(&ec.aad);
out0:
    cl_buf_free(&pt);
    cl_buf_free(&blob);
}

static void op_decrypt(call *c)
{
    cl_buf blob = CL_BUF_INIT, pt = CL_BUF_INIT;
    context ec = {0};
    recipient r = {0};
    bool present;
    const char *id = NULL;
    cl_kms_key key;
    if (!get_blob(c, "CiphertextBlob", true, MAX_CIPHERTEXT, &blob, &present) ||
        !get_context(c, "EncryptionContext", &ec))
        goto out;
    id = get_string(c, "KeyId", false);
    if (c->failed || !check_algorithm(c, "EncryptionAlgorithm") || !get_recipient(c, &r))
        goto out;
    if (open_blob(c, &blob, id, &ec, "kms:Decrypt", &r, &key, &pt)) {
        char arn[ARN_MAX];
        key_arn(c->k, key.id, arn);
        if (!dry_run(c) && deliver(c, &r, pt.data, pt.len)) {
            set_string(c, "KeyId", arn);
            set_string(c, "EncryptionAlgorithm", "SYMMETRIC_DEFAULT");
        }
        cl_kms_key_free(&key);
    }
out:
    recipient_free(&r);
    cl_buf_free(&ec.aad);
    cl_buf_free(&blob);
    cl_buf_free(&pt);
}

static void op_re_encrypt(call *c)
{
    cl_buf blob = CL_BUF_INIT, pt = CL_BUF_INIT, out = CL_BUF_INIT;
    context src = {0}, dst = {0};
    bool present;
    cl_kms_key skey, dkey;
    if (!get_blob(c, "CiphertextBlob", true, MAX_CIPHERTEXT, &blob, &present) ||
        !get_context(c, "SourceEncryptionContext", &src) || !get_context(c, "DestinationEncryptionContext", &dst))
        goto out;
    const char *source = get_string(c, "SourceKeyId", false);
    const char *dest = get_string(c, "DestinationKeyId", true);
    if (!dest || c->failed || !check_algorithm(c, "SourceEncryptionAlgorithm") ||
        !check_algorithm(c, "DestinationEncryptionAlgorithm"))
        goto out;
    if (!open_blob(c, &blob, source, &src, "kms:ReEncryptFrom", NULL, &skey, &pt))
        goto out;
    if (find_key(c, dest, true, &dkey)) {
        if (key_usable(c, &dkey) && authorize(c, &dkey, "kms:ReEncryptTo", NULL, &dst) && !dry_run(c) &&
            seal_blob(c, &dkey, &dst, pt.data, pt.len, &out)) {
            char sarn[ARN_MAX], darn[ARN_MAX];
            key_arn(c->k, skey.id, sarn);
            key_arn(c->k, dkey.id, darn);
            if (set_blob(c, "CiphertextBlob", out.data, out.len)) {
                set_string(c, "SourceKeyId", sarn);
                set_string(c, "KeyId", darn);
                set_string(c, "SourceEncryptionAlgorithm", "SYMMETRIC_DEFAULT");
                set_string(c, "DestinationEncryptionAlgorithm", "SYMMETRIC_DEFAULT");
            }
        }
        cl_kms_key_free(&dkey);
    }
    cl_kms_key_free(&skey);
out:
    cl_buf_free(&src.aad);
    cl_buf_free(&dst.aad);
    cl_buf_free(&blob);
    cl_buf_free(&pt);
    cl_buf_free(&out);
}

/* NumberOfBytes or KeySpec, as GenerateDataKey takes them; 0 on failure. */
static size_t data_key_length(call *c)
{
    bool present;
    long long n = get_int(c, "NumberOfBytes", &present);
    const char *spec = get_string(c, "KeySpec", false);
    if (c->failed)
        return 0;
    if (present && spec) {
        fail(c, "ValidationException", "Please specify either number of bytes or key spec.");
        return 0;
    }
    if (spec) {
        if (!strcmp(spec, "AES_256"))
            return 32;
        if (!strcmp(spec, "AES_128"))
            return 16;
        fail(c, "ValidationException",
             "1 validation error detected: Value '%.100s' at 'keySpec' failed to satisfy constraint: Member must "
             "satisfy enum value set: [AES_256, AES_128]",
             spec);
        return 0;
    }
    if (!present) {
        fail(c, "ValidationException", "Please specify either number of bytes or key spec.");
        return 0;
    }
    if (n < 1 || n > MAX_RANDOM) {
        fail(c, "ValidationException",
             "1 validation error detected: Value '%lld' at 'numberOfBytes' failed to satisfy constraint: Member must "
             "have value less than or equal to 1024 and greater than or equal to 1",
             n);
        return 0;
    }
    return (size_t)n;
}

static void op_generate_data_key(call *c, bool with_plaintext)
{
    const char *id = get_string(c, "KeyId", true);
    context ec = {0};
    recipient r = {0};
    cl_buf blob = CL_BUF_INIT;
    uint8_t dk[MAX_RANDOM];
    size_t n = 0;
    cl_kms_key key;
    if (!id || !get_context(c, "EncryptionContext", &ec) || !(n = data_key_length(c)))
        goto out;
    if (with_plaintext && !get_recipient(c, &r))
        goto out;
    if (!find_key(c, id, true, &key))
        goto out;
    const char *action = with_plaintext ? "kms:GenerateDataKey" : "kms:GenerateDataKeyWithoutPlaintext";
    if (key_usable(c, &key) && authorize(c, &key, action, &r, &ec) && !dry_run(c)) {
        if (RAND_bytes(dk, (int)n) != 1) {
            fail(c, "KMSInternalException", "no randomness");
        } else if (seal_blob(c, &key, &ec, dk, n, &blob) && set_blob(c, "CiphertextBlob", blob.data, blob.len) &&
                   (!with_plaintext || deliver(c, &r, dk, n))) {
            char arn[ARN_MAX];
            key_arn(c->k, key.id, arn);
            set_string(c, "KeyId", arn);
        }
    }
    cl_kms_key_free(&key);
out:
    cl_wipe(dk, sizeof dk);
    recipient_free(&r);
    cl_buf_free(&ec.aad);
    cl_buf_free(&blob);
}

/* A data key pair: the private key (PKCS#8 DER) sealed under the KMS key
 * as PrivateKeyCiphertextBlob and, with plaintext, given as
 * PrivateKeyPlaintext or, with a Recipient, as CiphertextForRecipient. */
static void op_generate_data_key_pair(call *c, bool with_plaintext)
{
    static const struct {
        const char *spec, *type;
        const char *curve;
        size_t bits;
    } specs[] = {
        {"RSA_2048", "RSA", NULL, 2048},         {"RSA_3072", "RSA", NULL, 3072},
        {"RSA_4096", "RSA", NULL, 4096},         {"ECC_NIST_P256", "EC", "P-256", 0},
        {"ECC_NIST_P384", "EC", "P-384", 0},     {"ECC_NIST_P521", "EC", "P-521", 0},
        {"ECC_SECG_P256K1", "EC", "secp256k1", 0},
    };
    const char *id = get_string(c, "KeyId", true);
    const char *spec = get_string(c, "KeyPairSpec", true);
    context ec = {0};
    recipient r = {0};
    cl_buf blob = CL_BUF_INIT;
    EVP_PKEY *pair = NULL;
    PKCS8_PRIV_KEY_INFO *p8 = NULL;
    unsigned char *der = NULL, *pub = NULL;
    int der_len = 0, pub_len = 0;
    size_t which = sizeof specs / sizeof specs[0];
    cl_kms_key key;
    if (!id || !spec || !get_context(c, "EncryptionContext", &ec))
        goto out;
    for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++)
        if (!strcmp(spec, specs[i].spec))
            which = i;
    if (which == sizeof specs / sizeof specs[0]) {
        fail(c, "ValidationException",
             "1 validation error detected: Value '%.40s' at 'keyPairSpec' failed to satisfy constraint: Member must "
             "satisfy enum value set: [RSA_2048, RSA_3072, RSA_4096, ECC_NIST_P256, ECC_NIST_P384, ECC_NIST_P521, "
             "ECC_SECG_P256K1]",
             spec);
        goto out;
    }
    if (with_plaintext && !get_recipient(c, &r))
        goto out;
    if (!find_key(c, id, true, &key))
        goto out;
    const char *action = with_plaintext ? "kms:GenerateDataKeyPair" : "kms:GenerateDataKeyPairWithoutPlaintext";
    if (key_usable(c, &key) && authorize(c, &key, action, &r, &ec) && !dry_run(c)) {
        pair = specs[which].curve ? EVP_PKEY_Q_keygen(NULL, NULL, "EC", specs[which].curve)
                                  : EVP_PKEY_Q_keygen(NULL, NULL, "RSA", specs[which].bits);
        p8 = pair ? EVP_PKEY2PKCS8(pair) : NULL;
        der_len = p8 ? i2d_PKCS8_PRIV_KEY_INFO(p8, &der) : 0;
        pub_len = pair ? i2d_PUBKEY(pair, &pub) : 0;
        if (der_len <= 0 || pub_len <= 0) {
            fail(c, "KMSInternalException", "cannot make a %s key pair", spec);
        } else if (seal_blob(c, &key, &ec, der, (size_t)der_len, &blob) &&
                   set_blob(c, "PrivateKeyCiphertextBlob", blob.data, blob.len) &&
                   set_blob(c, "PublicKey", pub, (size_t)pub_len) &&
                   (!with_plaintext || (r.present ? deliver(c, &r, der, (size_t)der_len)
                                                  : set_blob(c, "PrivateKeyPlaintext", der, (size_t)der_len)))) {
            char arn[ARN_MAX];
            key_arn(c->k, key.id, arn);
            set_string(c, "KeyId", arn);
            set_string(c, "KeyPairSpec", spec);
        }
    }
    cl_kms_key_free(&key);
out:
    if (der)
        OPENSSL_clear_free(der, (size_t)der_len);
    OPENSSL_free(pub);
    PKCS8_PRIV_KEY_INFO_free(p8);
    EVP_PKEY_free(pair);
    recipient_free(&r);
    cl_buf_free(&ec.aad);
    cl_buf_free(&blob);
}

static void op_generate_random(call *c)
{
    bool present;
    long long n = get_int(c, "NumberOfBytes", &present);
    if (!c->failed && get_string(c, "CustomKeyStoreId", false))
        return fail(c, "CustomKeyStoreNotFoundException", "kms-local has no custom key stores");
    if (c->failed)
        return;
    if (!present || n < 1 || n > MAX_RANDOM)
        return fail(c, "ValidationException",
                    "1 validation error detected: Value '%lld' at 'numberOfBytes' failed to satisfy constraint: Member "
                    "must have value less than or equal to 1024 and greater than or equal to 1",
                    n);
    recipient r;
    if (!get_recipient(c, &r))
        goto out;
    uint8_t bytes[MAX_RANDOM];
    if (RAND_bytes(bytes, (int)n) != 1)
        fail(c, "KMSInternalException", "no randomness");
    else
        deliver(c, &r, bytes, (size_t)n);
    cl_wipe(bytes, sizeof bytes);
out:
    recipient_free(&r);
}

static bool policy_name_ok(call *c)
{
    const char *name = get_string(c, "PolicyName", false);
    if (name && strcmp(name, "default")) {
        fail(c, "NotFoundException", "Policy %.100s does not exist; a key has only the policy named default", name);
        return false;
    }
    return !c->failed;
}

static void op_get_key_policy(call *c)
{
    const char *id = get_string(c, "KeyId", true);
    cl_kms_key key;
    if (!id || !policy_name_ok(c) || !find_key(c, id, false, &key))
        return;
    if (authorize(c, &key, "kms:GetKeyPolicy", NULL, NULL)) {
        set_string(c, "Policy", key.policy);
        set_string(c, "PolicyName", "default");
    }
    cl_kms_key_free(&key);
}

static void op_put_key_policy(call *c)
{
    const char *id = get_string(c, "KeyId", true);
    const char *policy = id ? get_string(c, "Policy", true) : NULL;
    bool bypass = get_bool(c, "BypassPolicyLockoutSafetyCheck");
    cl_kms_key key;
    if (!id || !policy || !policy_name_ok(c) || !find_key(c, id, false, &key))
        return;
    if (key.state == CL_KMS_PENDING_DELETION) {
        char arn[ARN_MAX];
        key_arn(c->k, key.id, arn);
        fail(c, "KMSInvalidStateException", "%s is pending deletion.", arn);
    } else if (authorize(c, &key, "kms:PutKeyPolicy", NULL, NULL) && check_policy_text(c, policy, bypass)) {
        char *copy = strdup(policy);
        if (!copy) {
            fail(c, "KMSInternalException", "out of memory");
        } else {
            free(key.policy);
            key.policy = copy;
            save_key(c, &key);
        }
    }
    cl_kms_key_free(&key);
}

static void op_set_state(call *c, const char *action, int state)
{
    const char *id = get_string(c, "KeyId", true);
    cl_kms_key key;
    if (!id || !find_key(c, id, false, &key))
        return;
    if (key.state == CL_KMS_PENDING_DELETION) {
        char arn[ARN_MAX];
        key_arn(c->k, key.id, arn);
        fail(c, "KMSInvalidStateException", "%s is pending deletion.", arn);
    } else if (authorize(c, &key, action, NULL, NULL)) {
        key.state = state;
        save_key(c, &key);
    }
    cl_kms_key_free(&key);
}

static void op_schedule_key_deletion(call *c)
{
    const char *id = get_string(c, "KeyId", true);
    bool present;
    long long days = get_int(c, "PendingWindowInDays", &present);
    if (!id || c->failed)
        return;
    if (!present)
        days = 30;
    if (days < 7 || days > 30)
        return fail(c, "ValidationException",
                    "1 validation error detected: Value '%lld' at 'pendingWindowInDays' failed to satisfy constraint: "
                    "Member must have value less than or equal to 30 and greater than or equal to 7",
                    days);
    cl_kms_key key;
    if (!find_key(c, id, false, &key))
        return;
    char arn[ARN_MAX];
    key_arn(c->k, key.id, arn);
    if (key.state == CL_KMS_PENDING_DELETION) {
        fail(c, "KMSInvalidStateException", "%s is pending deletion.", arn);
    } else if (authorize(c, &key, "kms:ScheduleKeyDeletion", NULL, NULL)) {
        key.state = CL_KMS_PENDING_DELETION;
        key.deletion_s = (int64_t)(c->now_ms / 1000) + days * SECONDS_PER_DAY;
        if (save_key(c, &key)) {
            set_string(c, "KeyId", arn);
            json_object_set_new(c->out, "DeletionDate", json_real(seconds(key.deletion_s)));
            set_string(c, "KeyState", "PendingDeletion");
            json_object_set_new(c->out, "PendingWindowInDays", json_integer(days));
        }
    }
    cl_kms_key_free(&key);
}

/* ---- dispatch ------------------------------------------------------------------------------- */

enum op {
    OP_CREATE_KEY, OP_DESCRIBE_KEY, OP_LIST_KEYS, OP_CREATE_ALIAS, OP_LIST_ALIASES, OP_ENCRYPT, OP_DECRYPT,
    OP_RE_ENCRYPT, OP_GENERATE_DATA_KEY, OP_GENERATE_DATA_KEY_WITHOUT_PLAINTEXT, OP_GENERATE_RANDOM,
    OP_GET_KEY_POLICY, OP_PUT_KEY_POLICY, OP_ENABLE_KEY, OP_DISABLE_KEY, OP_SCHEDULE_KEY_DELETION,
    OP_GENERATE_DATA_KEY_PAIR, OP_GENERATE_DATA_KEY_PAIR_WITHOUT_PLAINTEXT, OP_COUNT
};

static const char *const op_names[OP_COUNT] = {
    "CreateKey",       "DescribeKey",        "ListKeys",     "CreateAlias",    "ListAliases",
    "Encrypt",         "Decrypt",            "ReEncrypt",    "GenerateDataKey", "GenerateDataKeyWithoutPlaintext",
    "GenerateRandom",  "GetKeyPolicy",       "PutKeyPolicy", "EnableKey",      "DisableKey",
    "ScheduleKeyDeletion", "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext",
};

static void run_op(call *c, int op)
{
    switch (op) {
    case OP_CREATE_KEY: op_create_key(c); break;
    case OP_DESCRIBE_KEY: op_describe_key(c); break;
    case OP_LIST_KEYS: op_list_keys(c); break;
    case OP_CREATE_ALIAS: op_create_alias(c); break;
    case OP_LIST_ALIASES: op_list_aliases(c); break;
    case OP_ENCRYPT: op_encrypt(c); break;
    case OP_DECRYPT: op_decrypt(c); break;
    case OP_RE_ENCRYPT: op_re_encrypt(c); break;
    case OP_GENERATE_DATA_KEY: op_generate_data_key(c, true); break;
    case OP_GENERATE_DATA_KEY_WITHOUT_PLAINTEXT: op_generate_data_key(c, false); break;
    case OP_GENERATE_RANDOM: op_generate_random(c); break;
    case OP_GET_KEY_POLICY: op_get_key_policy(c); break;
    case OP_PUT_KEY_POLICY: op_put_key_policy(c); break;
    case OP_ENABLE_KEY: op_set_state(c, "kms:EnableKey", CL_KMS_ENABLED); break;
    case OP_DISABLE_KEY: op_set_state(c, "kms:DisableKey", CL_KMS_DISABLED); break;
    case OP_GENERATE_DATA_KEY_PAIR: op_generate_data_key_pair(c, true); break;
    case OP_GENERATE_DATA_KEY_PAIR_WITHOUT_PLAINTEXT: op_generate_data_key_pair(c, false); break;
    default: op_schedule_key_deletion(c); break;
    }
}

static const char *lookup_secret(void *ctx, const char *akid)
{
    call *c = ctx;
    for (size_t i = 0; i < c->k->cred_count; i++)
        if (!strcmp(c->k->creds[i].access_key_id, akid)) {
            c->cred = &c->k->creds[i];
            return c->k->creds[i].secret;
        }
    return NULL;
}

static const cl_slice *find_header(const cl_sigv4_request *req, const char *name)
{
    for (size_t i = 0; i < req->header_count; i++)
        if (cl_slice_eq_nocase(req->headers[i].name, name))
            return &req->headers[i].value;
    return NULL;
}

static int write_error(cl_kms_response *resp, const char *message)
{
    json_t *o = json_pack("{s:s}", "__type", resp->error_type);
    if (o && message && message[0])
        json_object_set_new(o, "message", json_string(message));
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    CL_ENSURE(text, CL_ENOMEM, "out of memory");
    cl_buf_reset(&resp->body);
    int rc = cl_buf_append(&resp->body, text, strlen(text));
    free(text);
    return rc;
}

static void handle_locked(call *c, const cl_sigv4_request *req)
{
    cl_kms_local *k = c->k;
    cl_sigv4_result auth;
    if (cl_sigv4_verify(req, k->region, "kms", lookup_secret, c, (int64_t)(c->now_ms / 1000), &auth) < 0)
        return fail(c, "KMSInternalException", "%s", cl_error_message());
    if (auth.status != CL_SIGV4_OK)
        return fail(c, auth.error_type, "%s", auth.message);
    if (c->cred->principal)
        snprintf(c->principal, sizeof c->principal, "%s", c->cred->principal);
    else
        snprintf(c->principal, sizeof c->principal, "arn:aws:iam::%s:user/%s", k->account, c->cred->access_key_id);
    if (!cl_slice_eq(req->method, "POST") || !cl_slice_eq(req->path, "/"))
        return fail(c, "UnknownOperationException", NULL);
    const cl_slice *target = find_header(req, "X-Amz-Target");
    const char *prefix = "TrentService.";
    size_t plen = strlen(prefix);
    int op = -1;
    if (target && target->len > plen && !memcmp(target->data, prefix, plen)) {
        cl_slice name = {target->data + plen, target->len - plen};
        for (int i = 0; i < OP_COUNT && op < 0; i++)
            if (cl_slice_eq(name, op_names[i]))
                op = i;
    }
    if (op < 0)
        return fail(c, "UnknownOperationException", NULL);
    const cl_slice *ct = find_header(req, "Content-Type");
    if (!ct || !(cl_slice_eq_nocase(*ct, CL_KMS_CONTENT_TYPE) ||
                 (ct->len > strlen(CL_KMS_CONTENT_TYPE) &&
                  !strncasecmp((const char *)ct->data, CL_KMS_CONTENT_TYPE ";", strlen(CL_KMS_CONTENT_TYPE) + 1))))
        return fail(c, "UnknownOperationException", "Content-Type must be " CL_KMS_CONTENT_TYPE);
    json_error_t jerr;
    c->in = req->body_len ? json_loadb((const char *)req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr)
                          : json_object();
    if (!c->in || !json_is_object(c->in))
        return fail(c, "SerializationException", "the request body is not a JSON object");
    c->out = json_object();
    if (!c->out)
        return fail(c, "KMSInternalException", "out of memory");
    run_op(c, op);
}

int cl_kms_local_handle(cl_kms_local *k, const cl_sigv4_request *req, uint64_t now_ms, cl_kms_response *resp)
{
    resp->status = 200;
    resp->error_type[0] = '\0';
    cl_buf_reset(&resp->body);
    call c = {.k = k, .resp = resp, .now_ms = now_ms};
    error_message[0] = '\0';
    pthread_mutex_lock(&k->lock);
    handle_locked(&c, req);
    pthread_mutex_unlock(&k->lock);
    int rc = CL_OK;
    if (c.failed) {
        rc = write_error(resp, error_message);
    } else {
        char *text = json_dumps(c.out, JSON_COMPACT);
        if (!text) {
            rc = cl_error_set(CL_ENOMEM, "out of memory");
        } else {
            size_t n = strlen(text);
            rc = cl_buf_append(&resp->body, text, n);
            cl_free_secret(text, n); /* may hold a plaintext */
        }
    }
    json_decref(c.in);
    json_decref(c.out);
    cl_wipe(error_message, sizeof error_message);
    return rc;
}

/* ---- life cycle ----------------------------------------------------------------------------- */

int cl_kms_local_new(const cl_kms_local_config *cfg, cl_kms_local **out)
{
    *out = NULL;
    CL_ENSURE(cfg->region && cfg->store, CL_EINVAL, "kms-local needs a region and a store");
    cl_kms_local *k = calloc(1, sizeof *k);
    CL_ENSURE(k, CL_ENOMEM, "out of memory");
    pthread_mutex_init(&k->lock, NULL);
    k->region = strdup(cfg->region);
    k->account = strdup(cfg->account ? cfg->account : CL_KMS_DEFAULT_ACCOUNT);
    k->creds = calloc(cfg->credential_count ? cfg->credential_count : 1, sizeof *k->creds);
    k->verifier = cfg->verifier;
    k->recipient_max_age_ms = cfg->recipient_max_age_ms ? cfg->recipient_max_age_ms : CL_KMS_RECIPIENT_MAX_AGE_MS;
    k->store = cfg->store;
    if (!k->region || !k->account || !k->creds) {
        cl_kms_local_free(k);
        return cl_error_set(CL_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < cfg->credential_count; i++) {
        const cl_kms_credential *src = &cfg->credentials[i];
        cl_kms_credential *dst = &k->creds[k->cred_count++];
        dst->access_key_id = strdup(src->access_key_id);
        dst->secret = strdup(src->secret);
        dst->principal = src->principal ? strdup(src->principal) : NULL;
        if (!dst->access_key_id || !dst->secret || (src->principal && !dst->principal)) {
            cl_kms_local_free(k);
            return cl_error_set(CL_ENOMEM, "out of memory");
        }
    }
    *out = k;
    return CL_OK;
}

void cl_kms_local_free(cl_kms_local *k)
{
    if (!k)
        return;
    for (size_t i = 0; i < k->cred_count; i++) {
        free((char *)k->creds[i].access_key_id);
        if (k->creds[i].secret)
            cl_free_secret((char *)k->creds[i].secret, strlen(k->creds[i].secret));
        free((char *)k->creds[i].principal);
    }
    free(k->creds);
    free(k->region);
    free(k->account);
    pthread_mutex_destroy(&k->lock);
    free(k);
}

int cl_kms_local_ensure_key(cl_kms_local *k, const char *alias_name, const char *policy_json, char arn_out[160])
{
    CL_ENSURE(valid_alias_name(alias_name) && strncmp(alias_name, "alias/aws/", 10), CL_EINVAL,
              "'%s' is not an alias name like alias/NAME (letters, digits, / _ -)", alias_name);
    if (policy_json) {
        cl_kms_policy *p = NULL;
        int rc = cl_kms_policy_parse(policy_json, strlen(policy_json), &p);
        cl_kms_policy_free(p);
        if (rc < 0)
            return cl_error_prefix(rc, "the policy of %s: ", alias_name);
    }
    pthread_mutex_lock(&k->lock);
    cl_kms_alias a;
    int rc = cl_kms_store_get_alias(k->store, alias_name, &a);
    if (rc == CL_OK) {
        key_arn(k, a.key_id, arn_out);
    } else if (rc == CL_ENOTFOUND) {
        cl_error_clear();
        cl_kms_key key;
        time_t now = time(NULL);
        rc = create_key(k, "created by kms-local --key", policy_json, (int64_t)now, &key);
        if (rc == CL_OK) {
            cl_kms_alias na = {.creation_s = (int64_t)now, .updated_s = (int64_t)now};
            snprintf(na.name, sizeof na.name, "%s", alias_name);
            snprintf(na.key_id, sizeof na.key_id, "%s", key.id);
            rc = cl_kms_store_create_alias(k->store, &na);
            key_arn(k, key.id, arn_out);
        }
        cl_kms_key_free(&key);
    }
    pthread_mutex_unlock(&k->lock);
    return rc;
}

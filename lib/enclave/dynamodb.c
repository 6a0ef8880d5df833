/* The DynamoDB JSON 1.0 client: requests signed with SigV4 by libcurl
 * (aws_json.c, shared with the KMS client), sent directly or through the
 * parent's outbound proxy, retried on throttling and server errors;
 * answers checked against the attribute-value grammar before anyone reads
 * them. */
#include "cloister/enclave/dynamodb.h"

#include "cloister/core/clock.h"
#include "cloister/core/encoding.h"
#include "enclave/aws_json.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ATTEMPTS 20

struct cl_dynamodb {
    cl_aws_json aws;
    uint64_t calls;
};
_Static_assert(offsetof(struct cl_dynamodb, aws) == 0, "cl_aws_json_new and cl_aws_json_free need aws first");

/* ---- errors ----------------------------------------------------------------- */

static bool type_in(const char *type, const char *const *list, size_t n)
{
    for (size_t i = 0; type && i < n; i++)
        if (!strcmp(type, list[i]))
            return true;
    return false;
}

#define TYPE_IN(t, list) type_in((t), (list), sizeof(list) / sizeof((list)[0]))

static const char *const throttled[] = {
    "ProvisionedThroughputExceededException", "ThrottlingException", "Throttling", "RequestLimitExceeded",
    "TooManyRequestsException", "LimitExceededException",
};
static const char *const server_side[] = {
    "InternalServerError", "InternalFailure", "ServiceUnavailable", "ServiceUnavailableException",
    "RequestTimeout", "RequestTimeoutException",
};

int cl_dynamodb_error_code(long status, const char *type)
{
    static const char *const denied[] = {
        "AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException",
        "MissingAuthenticationTokenException", "MissingAuthenticationToken", "IncompleteSignatureException",
        "ExpiredTokenException", "InvalidClientTokenId", "InvalidSignature",
    };
    static const char *const invalid[] = {
        "ValidationException", "SerializationException", "UnknownOperationException", "InvalidParameterValue",
    };
    static const char *const conflict[] = {
        "ConditionalCheckFailedException", "ResourceInUseException", "TransactionConflictException",
    };
    if (type && !strcmp(type, "ResourceNotFoundException"))
        return CL_ENOTFOUND;
    if (TYPE_IN(type, conflict))
        return CL_ECONFLICT;
    if (TYPE_IN(type, denied))
        return CL_EDENIED;
    if (TYPE_IN(type, throttled) || status == 429)
        return CL_EBUSY;
    if (TYPE_IN(type, invalid))
        return CL_EINVAL;
    if (type && !strcmp(type, "ItemCollectionSizeLimitExceededException"))
        return CL_ELIMIT;
    return CL_EIO;
}

bool cl_dynamodb_retryable(long status, const char *type)
{
    return status >= 500 || status == 429 || TYPE_IN(type, throttled) || TYPE_IN(type, server_side);
}

int cl_dynamodb_parse_error(long status, const uint8_t *body, size_t len, char *type, size_t type_len,
                            char *message, size_t message_len)
{
    /* AWS's error objects are the same for both JSON protocols; dynalite's
     * __type is "com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException" */
    return cl_aws_json_parse_error(status, body, len, type, type_len, message, message_len);
}

/* ---- attribute values --------------------------------------------------- */

static bool is_number_text(const char *s, size_t n)
{
    /* DynamoDB's N: an optional sign, digits with an optional fraction, an
     * optional exponent; 38 significant digits at most (checked loosely:
     * the text is bounded) */
    size_t i = 0, digits = 0;
    if (n == 0 || n > 100)
        return false;
    if (s[i] == '-' || s[i] == '+')
        i++;
    while (i < n && s[i] >= '0' && s[i] <= '9')
        i++, digits++;
    if (i < n && s[i] == '.') {
        i++;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++, digits++;
    }
    if (!digits)
        return false;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '-' || s[i] == '+'))
            i++;
        size_t e = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++, e++;
        if (!e)
            return false;
    }
    return i == n;
}

static int check_base64(const json_t *v, const char *what)
{
    CL_ENSURE(json_is_string(v), CL_EPROTO, "attribute value %s is not a string", what);
    cl_buf b = CL_BUF_INIT;
    int rc = cl_base64_decode((const uint8_t *)json_string_value(v), json_string_length(v), &b);
    cl_buf_free(&b);
    if (rc < 0)
        return cl_error_set(CL_EPROTO, "attribute value %s is not base64", what);
    return CL_OK;
}

static int check_set(const json_t *arr, const char *type)
{
    CL_ENSURE(json_is_array(arr) && json_array_size(arr) > 0, CL_EPROTO, "attribute value %s is not a non-empty array",
              type);
    size_t i;
    const json_t *e;
    json_array_foreach(arr, i, e) {
        if (type[0] == 'S')
            CL_ENSURE(json_is_string(e), CL_EPROTO, "SS holds a non-string");
        else if (type[0] == 'N')
            CL_ENSURE(json_is_string(e) && is_number_text(json_string_value(e), json_string_length(e)), CL_EPROTO,
                      "NS holds something that is not a number");
        else
            CL_TRY(check_base64(e, "BS"));
    }
    return CL_OK;
}

int cl_dynamodb_check_value(const json_t *v, unsigned depth)
{
    CL_ENSURE(depth <= CL_DYNAMODB_MAX_DEPTH, CL_ELIMIT, "attribute values nested deeper than %d",
              CL_DYNAMODB_MAX_DEPTH);
    CL_ENSURE(json_is_object(v) && json_object_size(v) == 1, CL_EPROTO,
              "an attribute value is not an object with exactly one type");
    const char *type = NULL;
    const json_t *x = NULL;
    void *it = json_object_iter((json_t *)v);
    type = json_object_iter_key(it);
    x = json_object_iter_value(it);
    if (!strcmp(type, "S")) {
        CL_ENSURE(json_is_string(x), CL_EPROTO, "attribute value S is not a string");
    } else if (!strcmp(type, "N")) {
        CL_ENSURE(json_is_string(x) && is_number_text(json_string_value(x), json_string_length(x)), CL_EPROTO,
                  "attribute value N is not a number");
    } else if (!strcmp(type, "B")) {
        CL_TRY(check_base64(x, "B"));
    } else if (!strcmp(type, "BOOL")) {
        CL_ENSURE(json_is_boolean(x), CL_EPROTO, "attribute value BOOL is not true or false");
    } else if (!strcmp(type, "NULL")) {
        CL_ENSURE(json_is_true(x), CL_EPROTO, "attribute value NULL is not true");
    } else if (!strcmp(type, "SS") || !strcmp(type, "NS") || !strcmp(type, "BS")) {
        CL_TRY(check_set(x, type));
    } else if (!strcmp(type, "L")) {
        CL_ENSURE(json_is_array(x), CL_EPROTO, "attribute value L is not an array");
        size_t i;
        const json_t *e;
        json_array_foreach(x, i, e) CL_TRY(cl_dynamodb_check_value(e, depth + 1));
    } else if (!strcmp(type, "M")) {
        CL_ENSURE(json_is_object(x), CL_EPROTO, "attribute value M is not an object");
        const char *k;
        const json_t *e;
        json_object_foreach((json_t *)x, k, e) CL_TRY(cl_dynamodb_check_value(e, depth + 1));
    } else {
        char shown[24];
        snprintf(shown, sizeof shown, "%s", type);
        for (char *p = shown; *p; p++)
            if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
                *p = '?';
        return cl_error_set(CL_EPROTO, "unknown attribute value type '%s'", shown);
    }
    return CL_OK;
}

int cl_dynamodb_check_item(const json_t *item)
{
    CL_ENSURE(json_is_object(item), CL_EPROTO, "an item is not a JSON object");
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)item, k, v) {
        size_t n = strlen(k);
        CL_ENSURE(n >= 1 && n <= 65535, CL_EPROTO, "an attribute name is empty or too long");
        int rc = cl_dynamodb_check_value(v, 0);
        if (rc < 0)
            return cl_error_prefix(rc, "attribute '%.64s': ", k);
    }
    return CL_OK;
}

int cl_dynamodb_parse_answer(const uint8_t *body, size_t len, const char *field, json_t **root, json_t **item)
{
    if (root)
        *root = NULL;
    if (item)
        *item = NULL;
    CL_ENSURE(len <= CL_DYNAMODB_MAX_RESPONSE, CL_ELIMIT, "the answer has %zu bytes (at most %d)", len,
              CL_DYNAMODB_MAX_RESPONSE);
    json_error_t jerr;
    json_t *r = len ? json_loadb((const char *)body, len, JSON_REJECT_DUPLICATES, &jerr) : NULL;
    if (!json_is_object(r)) {
        json_decref(r);
        return cl_error_set(CL_EPROTO, "the answer is not a JSON object%s%s", len && !r ? ": " : "",
                            len && !r ? jerr.text : "");
    }
    json_t *it = field ? json_object_get(r, field) : NULL;
    if (it) {
        int rc = cl_dynamodb_check_item(it);
        if (rc < 0) {
            json_decref(r);
            return cl_error_prefix(rc, "the answer's %s: ", field);
        }
    }
    if (item)
        *item = json_incref(it);
    if (root)
        *root = r;
    else
        json_decref(r);
    return CL_OK;
}

json_t *cl_dynamodb_s(const char *s)
{
    json_t *v = s ? json_string(s) : NULL;
    return v ? json_pack("{so}", "S", v) : NULL;
}

json_t *cl_dynamodb_n(int64_t n)
{
    char t[24];
    snprintf(t, sizeof t, "%lld", (long long)n);
    return json_pack("{ss}", "N", t);
}

json_t *cl_dynamodb_b(const uint8_t *data, size_t len)
{
    cl_buf b = CL_BUF_INIT;
    if (cl_base64_encode(data, len, &b) < 0)
        return NULL;
    json_t *s = json_stringn(b.data ? (const char *)b.data : "", b.data ? strlen((const char *)b.data) : 0);
    cl_buf_free(&b);
    return s ? json_pack("{so}", "B", s) : NULL;
}

static int typed(const json_t *item, const char *name, const char *type, const json_t **out)
{
    const json_t *v = json_is_object(item) ? json_object_get(item, name) : NULL;
    CL_ENSURE(v, CL_ENOTFOUND, "the item has no attribute '%.64s'", name);
    const json_t *x = json_is_object(v) && json_object_size(v) == 1 ? json_object_get(v, type) : NULL;
    CL_ENSURE(x && json_is_string(x), CL_EPROTO, "attribute '%.64s' is not of type %s", name, type);
    *out = x;
    return CL_OK;
}

int cl_dynamodb_get_s(const json_t *item, const char *name, const char **out)
{
    const json_t *x;
    CL_TRY(typed(item, name, "S", &x));
    CL_ENSURE(strlen(json_string_value(x)) == json_string_length(x), CL_EPROTO,
              "attribute '%.64s' holds a NUL character", name);
    *out = json_string_value(x);
    return CL_OK;
}

int cl_dynamodb_get_n(const json_t *item, const char *name, int64_t *out)
{
    const json_t *x;
    CL_TRY(typed(item, name, "N", &x));
    const char *s = json_string_value(x);
    size_t n = json_string_length(x), i = 0;
    bool neg = n > 0 && s[0] == '-';
    i = neg ? 1 : 0;
    CL_ENSURE(n > i && n - i <= 19, CL_EPROTO, "attribute '%.64s' is not an integer", name);
    uint64_t v = 0;
    for (; i < n; i++) {
        CL_ENSURE(s[i] >= '0' && s[i] <= '9', CL_EPROTO, "attribute '%.64s' is not an integer", name);
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    CL_ENSURE(v <= (uint64_t)INT64_MAX, CL_EPROTO, "attribute '%.64s' is out of range", name);
    *out = neg ? -(int64_t)v : (int64_t)v;
    return CL_OK;
}

int cl_dynamodb_get_b(const json_t *item, const char *name, cl_buf *out)
{
    const json_t *x;
    CL_TRY(typed(item, name, "B", &x));
    cl_buf_reset(out);
    int rc = cl_base64_decode((const uint8_t *)json_string_value(x), json_string_length(x), out);
    if (rc < 0)
        return cl_error_set(CL_EPROTO, "attribute '%.64s' is not base64", name);
    return CL_OK;
}

/* ---- the client --------------------------------------------------------- */

static const cl_aws_json_service dynamodb_service = {
    .name = "DynamoDB",
    .host = "dynamodb",
    .content_type = CL_DYNAMODB_CONTENT_TYPE,
    .target_prefix = CL_DYNAMODB_TARGET_PREFIX,
    .no_region = "no AWS region for DynamoDB",
    .http_hint = " (plain http:// only for a local test server, when allowed)",
    .attempts_limit = MAX_ATTEMPTS,
    .max_response = CL_DYNAMODB_MAX_RESPONSE,
    .error_code = cl_dynamodb_error_code,
    .retryable = cl_dynamodb_retryable,
};

int cl_dynamodb_new(const cl_dynamodb_config *cfg, cl_dynamodb **out)
{
    *out = NULL;
    cl_aws_json_config aws = CL_AWS_JSON_CONFIG_OF(cfg);
    aws.allow_http = cfg->allow_http;
    void *d;
    CL_TRY(cl_aws_json_new(sizeof(**out), &dynamodb_service, &aws, &d));
    *out = d;
    return CL_OK;
}

void cl_dynamodb_free(cl_dynamodb *d)
{
    cl_aws_json_free(d ? &d->aws : NULL);
}

const char *cl_dynamodb_error_type(const cl_dynamodb *d)
{
    return d->aws.error_type;
}

void cl_dynamodb_get_stats(const cl_dynamodb *d, cl_dynamodb_stats *out)
{
    *out = (cl_dynamodb_stats){
        .calls = d->calls,
        .attempts = d->aws.stats.attempts,
        .retries = d->aws.stats.retries,
        .network_us = d->aws.stats.network_us,
    };
}

/* One operation, retried; the answer's JSON object in *answer. */
static int call_locked(cl_dynamodb *d, const char *op, const char *body, size_t body_len, json_t **answer)
{
    *answer = NULL;
    long status;
    cl_buf got = CL_BUF_INIT;
    CL_TRY(cl_aws_json_post(&d->aws, op, (const uint8_t *)body, body_len, false, &status, &got));
    json_t *root = NULL;
    int rc = cl_dynamodb_parse_answer(got.data, got.len, NULL, &root, NULL);
    cl_buf_free(&got);
    if (rc < 0)
        return cl_error_prefix(CL_EPROTO, "DynamoDB %s: ", op);
    *answer = root;
    return CL_OK;
}

int cl_dynamodb_call(cl_dynamodb *d, const char *op, const json_t *request, json_t **answer)
{
    *answer = NULL;
    CL_ENSURE(op && *op && strlen(op) < 64, CL_EINVAL, "DynamoDB operation name missing or too long");
    CL_ENSURE(json_is_object(request), CL_EINVAL, "a DynamoDB request is a JSON object");
    char *body = json_dumps(request, JSON_COMPACT);
    CL_ENSURE(body, CL_ENOMEM, "out of memory (or a request that is not valid JSON)");
    pthread_mutex_lock(&d->aws.lock);
    d->calls++;
    int rc = call_locked(d, op, body, strlen(body), answer);
    pthread_mutex_unlock(&d->aws.lock);
    free(body);
    return rc;
}

/* ---- the operations ---------------------------------------------------- */

static int check_table(const char *t)
{
    CL_ENSURE(t, CL_EINVAL, "no table name");
    size_t n = strlen(t);
    CL_ENSURE(n >= 3 && n <= 255, CL_EINVAL, "table name '%.64s': 3..255 characters", t);
    for (const char *p = t; *p; p++)
        CL_ENSURE((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_' ||
                      *p == '-' || *p == '.',
                  CL_EINVAL, "table name '%.64s': only letters, digits, '_', '-' and '.'", t);
    return CL_OK;
}

static int set_copy(json_t *req, const char *field, const json_t *v)
{
    json_t *c = json_deep_copy(v);
    CL_ENSURE(c && json_object_set_new(req, field, c) == 0, CL_ENOMEM, "out of memory");
    return CL_OK;
}

/* The request's common part: table, key or item, expressions. */
static int build(const char *table, const char *field, const json_t *key_or_item, const cl_dynamodb_options *o,
                 bool allow_condition, json_t **out)
{
    *out = NULL;
    CL_TRY(check_table(table));
    CL_ENSURE(json_is_object(key_or_item) && json_object_size(key_or_item) > 0, CL_EINVAL,
              "the %s is not a non-empty JSON object", field);
    int rc = cl_dynamodb_check_item(key_or_item);
    if (rc < 0)
        return cl_error_prefix(CL_EINVAL, "the %s: ", field);
    json_t *req = json_object();
    CL_ENSURE(req, CL_ENOMEM, "out of memory");
    CL_TRY_OUT(json_object_set_new(req, "TableName", json_string(table)) == 0 ? CL_OK
                                                                             : cl_error_set(CL_ENOMEM, "out of memory"));
    CL_TRY_OUT(set_copy(req, field, key_or_item));
    if (o && o->condition) {
        CL_ENSURE_OUT(allow_condition, CL_EINVAL, "GetItem takes no condition");
        CL_ENSURE_OUT(*o->condition && strlen(o->condition) <= 4096, CL_EINVAL, "a condition is 1..4096 bytes");
        json_object_set_new(req, "ConditionExpression", json_string(o->condition));
    }
    if (o && o->names) {
        CL_ENSURE_OUT(json_is_object(o->names), CL_EINVAL, "ExpressionAttributeNames is not an object");
        CL_TRY_OUT(set_copy(req, "ExpressionAttributeNames", o->names));
    }
    if (o && o->values) {
        rc = cl_dynamodb_check_item(o->values);
        if (rc < 0)
            CL_FAIL_OUT(CL_EINVAL, "ExpressionAttributeValues: %s", cl_error_message());
        CL_TRY_OUT(set_copy(req, "ExpressionAttributeValues", o->values));
    }
    *out = req;
    return CL_OK;
out:
    json_decref(req);
    return rc;
}

/* Runs the request and hands back the checked `field` of the answer. */
static int run(cl_dynamodb *d, const char *op, json_t *req, const char *field, json_t **attributes)
{
    if (attributes)
        *attributes = NULL;
    json_t *answer = NULL;
    int rc = cl_dynamodb_call(d, op, req, &answer);
    json_decref(req);
    if (rc < 0)
        return rc;
    json_t *it = field ? json_object_get(answer, field) : NULL;
    if (it) {
        rc = cl_dynamodb_check_item(it);
        if (rc < 0) {
            json_decref(answer);
            return cl_error_prefix(CL_EPROTO, "DynamoDB %s: the answer's %s: ", op, field);
        }
    }
    if (attributes)
        *attributes = json_incref(it);
    json_decref(answer);
    return CL_OK;
}

int cl_dynamodb_get_item(cl_dynamodb *d, const char *table, const json_t *key, const cl_dynamodb_options *o,
                         json_t **item)
{
    *item = NULL;
    json_t *req;
    CL_TRY(build(table, "Key", key, o, false, &req));
    if (o && o->consistent_read)
        json_object_set_new(req, "ConsistentRead", json_true());
    return run(d, "GetItem", req, "Item", item);
}

int cl_dynamodb_put_item(cl_dynamodb *d, const char *table, const json_t *item, const cl_dynamodb_options *o,
                         json_t **attributes)
{
    json_t *req;
    CL_TRY(build(table, "Item", item, o, true, &req));
    if (o && o->return_values && attributes)
        json_object_set_new(req, "ReturnValues", json_string("ALL_OLD"));
    return run(d, "PutItem", req, "Attributes", attributes);
}

int cl_dynamodb_update_item(cl_dynamodb *d, const char *table, const json_t *key, const cl_dynamodb_options *o,
                            json_t **attributes)
{
    if (attributes)
        *attributes = NULL;
    CL_ENSURE(o && o->update && *o->update && strlen(o->update) <= 4096, CL_EINVAL,
              "UpdateItem needs an update expression of 1..4096 bytes");
    json_t *req;
    CL_TRY(build(table, "Key", key, o, true, &req));
    json_object_set_new(req, "UpdateExpression", json_string(o->update));
    if (o->return_values && attributes)
        json_object_set_new(req, "ReturnValues", json_string("ALL_NEW"));
    return run(d, "UpdateItem", req, "Attributes", attributes);
}

int cl_dynamodb_delete_item(cl_dynamodb *d, const char *table, const json_t *key, const cl_dynamodb_options *o,
                            json_t **attributes)
{
    json_t *req;
    CL_TRY(build(table, "Key", key, o, true, &req));
    if (o && o->return_values && attributes)
        json_object_set_new(req, "ReturnValues", json_string("ALL_OLD"));
    return run(d, "DeleteItem", req, "Attributes", attributes);
}

int cl_dynamodb_create_table(cl_dynamodb *d, const char *table, const char *partition_key)
{
    CL_TRY(check_table(table));
    CL_ENSURE(partition_key && *partition_key && strlen(partition_key) <= 255, CL_EINVAL,
              "a partition key name is 1..255 bytes");
    json_t *req = json_pack("{ss s[{ssss}] s[{ssss}] ss}", "TableName", table, "AttributeDefinitions",
                            "AttributeName", partition_key, "AttributeType", "S", "KeySchema", "AttributeName",
                            partition_key, "KeyType", "HASH", "BillingMode", "PAY_PER_REQUEST");
    CL_ENSURE(req, CL_ENOMEM, "out of memory");
    return run(d, "CreateTable", req, NULL, NULL);
}

int cl_dynamodb_describe_table(cl_dynamodb *d, const char *table, char *status, size_t status_len)
{
    if (status_len)
        status[0] = '\0';
    CL_TRY(check_table(table));
    json_t *req = json_pack("{ss}", "TableName", table);
    CL_ENSURE(req, CL_ENOMEM, "out of memory");
    json_t *answer = NULL;
    int rc = cl_dynamodb_call(d, "DescribeTable", req, &answer);
    json_decref(req);
    CL_TRY(rc);
    const char *s = json_string_value(json_object_get(json_object_get(answer, "Table"), "TableStatus"));
    rc = s && strlen(s) < 32 ? CL_OK : cl_error_set(CL_EPROTO, "DynamoDB DescribeTable: no TableStatus in the answer");
    if (rc == CL_OK)
        snprintf(status, status_len, "%s", s);
    json_decref(answer);
    return rc;
}

int cl_dynamodb_wait_active(cl_dynamodb *d, const char *table, unsigned timeout_ms)
{
    uint64_t end = cl_monotonic_ms() + timeout_ms;
    char status[32];
    for (;;) {
        CL_TRY(cl_dynamodb_describe_table(d, table, status, sizeof status));
        if (!strcmp(status, "ACTIVE"))
            return CL_OK;
        CL_ENSURE(cl_monotonic_ms() < end, CL_EIO, "table %s is still %s after %u ms", table, status, timeout_ms);
        cl_aws_json_sleep_ms(100);
    }
}

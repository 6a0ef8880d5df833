/* A DynamoDB client: the JSON 1.0 protocol over HTTPS (libcurl, SigV4), the
 * way the KMS client talks to KMS (cloister/enclave/kms.h): credentials
 * from a cl_aws_credentials_provider (IMDSv2 through the host's gate inside
 * an enclave), the connection through the parent's outbound proxy with TLS
 * end to end to the endpoint's name, one kept-alive connection per client.
 *
 * Wire format: POST / with Content-Type application/x-amz-json-1.0 and
 * X-Amz-Target DynamoDB_20120810.<Op>; items in DynamoDB's attribute-value
 * JSON ({"S": "text"}, {"N": "42"}, {"B": "base64"}, {"BOOL": true},
 * {"NULL": true}, {"SS"|"NS"|"BS": [...]}, {"L": [...]}, {"M": {...}}),
 * handled here as jansson objects; errors {"__type": ..., "message": ...}.
 *
 * Every answer is untrusted: it is read with jansson (duplicate keys
 * refused), at most CL_DYNAMODB_MAX_RESPONSE bytes, and every item is
 * checked against the attribute-value grammar (one type key per value,
 * the right JSON type, N a number, B base64, nesting at most 32) before
 * the caller sees it.
 *
 * Errors: AWS's __type becomes a distinct cl_err, AWS's message kept in the
 * detail (cl_error_message) and the type in cl_dynamodb_error_type():
 *   ConditionalCheckFailedException          CL_ECONFLICT
 *   ResourceNotFoundException (no table)     CL_ENOTFOUND
 *   AccessDeniedException, bad signature,
 *   unknown key, expired token (after one
 *   fetch of new credentials)                CL_EDENIED
 *   ProvisionedThroughputExceededException,
 *   ThrottlingException, RequestLimitExceeded retried with backoff; CL_EBUSY
 *                                            when the attempts are spent
 *   ValidationException, SerializationException CL_EINVAL
 *   ResourceInUseException (CreateTable)     CL_ECONFLICT
 *   5xx, transport failures                  retried; CL_EIO
 *   an answer outside the protocol           CL_EPROTO */
#ifndef CLOISTER_DYNAMODB_H
#define CLOISTER_DYNAMODB_H

#pragma GCC visibility push(default)

#include "cloister/core/buf.h"
#include "cloister/core/error.h"
#include "cloister/enclave/kms.h" /* cl_aws_credentials_provider */

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CL_DYNAMODB_TARGET_PREFIX "DynamoDB_20120810."
#define CL_DYNAMODB_CONTENT_TYPE "application/x-amz-json-1.0"
/* DynamoDB's items are at most 400 KB; an answer carries one item. */
#define CL_DYNAMODB_MAX_RESPONSE (2 * 1024 * 1024)
/* DynamoDB's own limit on nested L and M. */
#define CL_DYNAMODB_MAX_DEPTH 32

typedef struct cl_dynamodb_config {
    const char *region;   /* required */
    /* https://HOST[:PORT]; NULL: https://dynamodb.REGION.amazonaws.com.
     * http:// is accepted for a local dynalite only when allow_http is set:
     * whoever relays plain HTTP reads and rewrites every answer. */
    const char *endpoint;
    bool allow_http;
    const char *connect;  /* address dialed instead of HOST (the outbound proxy); NULL: direct */
    const char *ca_file;  /* PEM CA file; NULL: the system's store */
    cl_aws_credentials_provider *credentials; /* borrowed, required */
    unsigned max_attempts;                    /* 0: 5 */
    unsigned backoff_ms;                      /* first retry's delay before jitter; 0: 100 */
    unsigned timeout_ms;                      /* one attempt; 0: 10000 */
} cl_dynamodb_config;

typedef struct cl_dynamodb cl_dynamodb;

/* Checks the settings; no connection is made until the first call. */
CL_MUST_CHECK int cl_dynamodb_new(const cl_dynamodb_config *cfg, cl_dynamodb **out);
void cl_dynamodb_free(cl_dynamodb *d);

/* What goes with an operation besides the table and the key/item.  The
 * JSON values are borrowed. */
typedef struct cl_dynamodb_options {
    const char *condition;    /* ConditionExpression (PutItem, UpdateItem, DeleteItem) */
    const char *update;       /* UpdateExpression (UpdateItem: required) */
    const json_t *names;      /* ExpressionAttributeNames, {"#o": "owner"} */
    const json_t *values;     /* ExpressionAttributeValues, {":now": {"N": "17"}} */
    bool consistent_read;     /* GetItem */
    /* PutItem/DeleteItem: ReturnValues ALL_OLD; UpdateItem: ALL_NEW; the
     * attributes come back in *attributes (NULL when there were none) */
    bool return_values;
} cl_dynamodb_options;

/* GetItem.  key: {"pk": {"S": "..."}}.  *item is the item (the caller
 * json_decref's it) or NULL when the table has no such item (CL_OK). */
CL_MUST_CHECK int cl_dynamodb_get_item(cl_dynamodb *d, const char *table, const json_t *key,
                                       const cl_dynamodb_options *o, json_t **item);
/* PutItem; CL_ECONFLICT when o->condition did not hold.  attributes may be
 * NULL (then ReturnValues is not asked). */
CL_MUST_CHECK int cl_dynamodb_put_item(cl_dynamodb *d, const char *table, const json_t *item,
                                       const cl_dynamodb_options *o, json_t **attributes);
/* UpdateItem with o->update; CL_ECONFLICT when o->condition did not hold. */
CL_MUST_CHECK int cl_dynamodb_update_item(cl_dynamodb *d, const char *table, const json_t *key,
                                          const cl_dynamodb_options *o, json_t **attributes);
/* DeleteItem; deleting an absent item is CL_OK (as DynamoDB says), unless
 * a condition requires it to exist. */
CL_MUST_CHECK int cl_dynamodb_delete_item(cl_dynamodb *d, const char *table, const json_t *key,
                                          const cl_dynamodb_options *o, json_t **attributes);

/* CreateTable with one string partition key, on demand (PAY_PER_REQUEST);
 * CL_ECONFLICT when it exists.  DescribeTable's TableStatus ("ACTIVE",
 * "CREATING", ...) into status.  For tools and tests. */
CL_MUST_CHECK int cl_dynamodb_create_table(cl_dynamodb *d, const char *table, const char *partition_key);
CL_MUST_CHECK int cl_dynamodb_describe_table(cl_dynamodb *d, const char *table, char *status, size_t status_len);
/* Waits (polling DescribeTable) until the table is ACTIVE, at most timeout_ms. */
CL_MUST_CHECK int cl_dynamodb_wait_active(cl_dynamodb *d, const char *table, unsigned timeout_ms);

/* Any operation: request is the whole JSON body, *answer the answer's
 * object (the caller decref's it).  Signed, retried and mapped as above;
 * the answer is only checked to be a JSON object. */
CL_MUST_CHECK int cl_dynamodb_call(cl_dynamodb *d, const char *op, const json_t *request, json_t **answer);

/* After a failed call: AWS's error type without its namespace
 * ("ConditionalCheckFailedException"), "" when the failure was not an AWS
 * error answer. */
const char *cl_dynamodb_error_type(const cl_dynamodb *d);

typedef struct cl_dynamodb_stats {
    uint64_t calls, attempts, retries;
    uint64_t network_us; /* HTTP exchanges, TLS and the proxy included */
} cl_dynamodb_stats;
void cl_dynamodb_get_stats(const cl_dynamodb *d, cl_dynamodb_stats *out);

/* ---- attribute values ----------------------------------------------------- */

/* New references to {"S": s}, {"N": "n"}, {"B": base64(data)}; NULL when
 * out of memory (or s is not UTF-8).  json_object_set_new takes them. */
json_t *cl_dynamodb_s(const char *s);
json_t *cl_dynamodb_n(int64_t n);
json_t *cl_dynamodb_b(const uint8_t *data, size_t len);

/* Typed reads of an item's attribute: CL_ENOTFOUND when the item has no
 * such attribute, CL_EPROTO when it holds another type or a malformed
 * value.  _s borrows from the item; _n accepts integers only (what
 * cloister stores); _b replaces *out. */
CL_MUST_CHECK int cl_dynamodb_get_s(const json_t *item, const char *name, const char **out);
CL_MUST_CHECK int cl_dynamodb_get_n(const json_t *item, const char *name, int64_t *out);
CL_MUST_CHECK int cl_dynamodb_get_b(const json_t *item, const char *name, cl_buf *out);

/* ---- exposed for tests and the fuzzer ---------------------------------- */

/* Checks that v is one attribute value ({"S": ...} etc.) at nesting depth
 * `depth` (0 for an item's attribute). */
CL_MUST_CHECK int cl_dynamodb_check_value(const json_t *v, unsigned depth);
/* Checks that item is a map of attribute names (1..65535 bytes) to
 * attribute values. */
CL_MUST_CHECK int cl_dynamodb_check_item(const json_t *item);
/* A 200 answer's body: a JSON object (no duplicate keys) whose `field`
 * ("Item", "Attributes"), when present, is a checked item; *item gets a
 * new reference to it, or NULL when absent.  field NULL: only the object. */
CL_MUST_CHECK int cl_dynamodb_parse_answer(const uint8_t *body, size_t len, const char *field, json_t **root,
                                           json_t **item);
/* An error answer: type (namespace cut: "ConditionalCheckFailedException")
 * and message, printable ASCII, truncated to the buffers.  CL_OK when it
 * was an AWS error object, CL_EPROTO otherwise. */
CL_MUST_CHECK int cl_dynamodb_parse_error(long status, const uint8_t *body, size_t len, char *type, size_t type_len,
                                          char *message, size_t message_len);
/* The cl_err for an error type (the table above), and whether an answer
 * with this status and type is retried. */
int cl_dynamodb_error_code(long status, const char *type);
bool cl_dynamodb_retryable(long status, const char *type);

#pragma GCC visibility pop

#endif

#include "cloister/enclave/nsm.h"

#include "cloister/core/address.h"
#include "cloister/core/cursor.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <unistd.h>

/* {"Attestation": {"user_data": ..}}: map -> map -> byte string. */
static const cl_cbor_limits request_limits = {.max_depth = 2, .max_map_entries = 3};
/* {"DescribeNSM": {"locked_pcrs": [..]}}: map -> map -> array. */
/* Room for fields a future NSM adds (skipped, as nsm-api's serde skips
 * them): today's deepest response is 3 levels and its largest map 7 entries.
 * CL_NSM_RESPONSE_MAX still bounds the whole tree. */
static const cl_cbor_limits response_limits = {.max_depth = 8, .max_map_entries = 32};

#define NSM_MAX_PCRS 32 /* locked_pcrs is a 32-bit mask */
#define CLIENT_TIMEOUT_SECONDS 30

/* ---- names -------------------------------------------------------------- */

static const char *const error_names[] = {
    [CL_NSM_SUCCESS] = "Success",
    [CL_NSM_INVALID_ARGUMENT] = "InvalidArgument",
    [CL_NSM_INVALID_INDEX] = "InvalidIndex",
    [CL_NSM_INVALID_RESPONSE] = "InvalidResponse",
    [CL_NSM_READ_ONLY_INDEX] = "ReadOnlyIndex",
    [CL_NSM_INVALID_OPERATION] = "InvalidOperation",
    [CL_NSM_BUFFER_TOO_SMALL] = "BufferTooSmall",
    [CL_NSM_INPUT_TOO_LARGE] = "InputTooLarge",
    [CL_NSM_INTERNAL_ERROR] = "InternalError",
};
#define ERROR_NAME_COUNT (sizeof error_names / sizeof error_names[0])

static const char *const op_names[] = {
    [CL_NSM_DESCRIBE_PCR] = "DescribePCR",
    [CL_NSM_EXTEND_PCR] = "ExtendPCR",
    [CL_NSM_LOCK_PCR] = "LockPCR",
    [CL_NSM_LOCK_PCRS] = "LockPCRs",
    [CL_NSM_DESCRIBE_NSM] = "DescribeNSM",
    [CL_NSM_ATTESTATION] = "Attestation",
    [CL_NSM_GET_RANDOM] = "GetRandom",
};
#define OP_COUNT (sizeof op_names / sizeof op_names[0])

const char *cl_nsm_error_name(int code)
{
    if (code < 0 || (size_t)code >= ERROR_NAME_COUNT)
        return "UnknownError";
    return error_names[code];
}

const char *cl_nsm_op_name(int op)
{
    if (op < 0 || (size_t)op >= OP_COUNT)
        return "Unknown";
    return op_names[op];
}

static bool text_is(const cl_cbor *item, const char *s)
{
    size_t n = strlen(s);
    return item->type == CL_CBOR_TEXT && item->len == n && memcmp(item->data, s, n) == 0;
}

/* Names from untrusted input, cut short so a message stays readable. */
#define SHOWN(item) (int)((item)->len > 40 ? 40 : (item)->len), (const char *)(item)->data

static int op_of_name(const cl_cbor *name)
{
    for (size_t i = 0; i < OP_COUNT; i++)
        if (text_is(name, op_names[i]))
            return (int)i;
    return -1;
}

/* Requests and responses agree on which variants carry fields, except
 * that LockPCR and LockPCRs answer with a bare name. */
static bool request_is_unit(int op)
{
    return op == CL_NSM_DESCRIBE_NSM || op == CL_NSM_GET_RANDOM;
}

static bool response_is_unit(int op)
{
    return op == CL_NSM_LOCK_PCR || op == CL_NSM_LOCK_PCRS;
}

/* ---- struct-variant fields ------------------------------------------------ */

enum field_kind { FIELD_U16, FIELD_BYTES, FIELD_OPT_BYTES, FIELD_BOOL, FIELD_TEXT, FIELD_U16_SET, FIELD_DIGEST };

typedef struct field_spec {
    const char *name;
    int kind;
    bool optional; /* serde treats a missing Option field as None */
    void *dest;    /* uint16_t, cl_slice, bool, char[cap] or uint32_t mask */
    size_t cap;    /* TEXT/DIGEST: size of dest; BYTES: length limits below */
    bool *present; /* OPT_BYTES: set when the value is not null */
    size_t min_len, max_len;
} field_spec;

typedef struct decode_ctx {
    const char *side;    /* "request" or "response" */
    const char *variant; /* "ExtendPCR", ... */
    /* Responses: a field this code does not know is skipped, as nsm-api's
     * serde structs (no deny_unknown_fields) skip it, so that a field a
     * future NSM adds does not stop the enclave.  The value has already
     * passed the CBOR decoder's limits.  Requests stay strict: only the
     * simulator decodes them, and it should refuse what the NSM would not
     * understand. */
    bool skip_unknown;
} decode_ctx;

static int decode_u16(const decode_ctx *c, const char *name, const cl_cbor *v, uint16_t *out)
{
    CL_ENSURE(v->type != CL_CBOR_NINT, CL_EPARSE, "NSM %s %s: %s is negative", c->side, c->variant, name);
    CL_ENSURE(v->type == CL_CBOR_UINT, CL_EPARSE, "NSM %s %s: %s is a %s, not an unsigned integer", c->side,
              c->variant, name, cl_cbor_type_name(v->type));
    CL_ENSURE(v->u <= UINT16_MAX, CL_EPARSE, "NSM %s %s: %s = %llu exceeds 65535", c->side, c->variant, name,
              (unsigned long long)v->u);
    *out = (uint16_t)v->u;
    return CL_OK;
}

static int decode_bytes(const decode_ctx *c, const field_spec *f, const cl_cbor *v)
{
    CL_ENSURE(v->type == CL_CBOR_BYTES, CL_EPARSE, "NSM %s %s: %s is a %s, not a byte string", c->side,
              c->variant, f->name, cl_cbor_type_name(v->type));
    size_t max = f->max_len ? f->max_len : SIZE_MAX;
    CL_ENSURE(v->len >= f->min_len && v->len <= max, CL_EPARSE, "NSM %s %s: %s is %zu bytes, allowed %zu..%zu",
              c->side, c->variant, f->name, v->len, f->min_len, max);
    *(cl_slice *)f->dest = (cl_slice){v->data, v->len};
    return CL_OK;
}

static int decode_text(const decode_ctx *c, const field_spec *f, const cl_cbor *v)
{
    CL_ENSURE(v->type == CL_CBOR_TEXT, CL_EPARSE, "NSM %s %s: %s is a %s, not text", c->side, c->variant,
              f->name, cl_cbor_type_name(v->type));
    CL_ENSURE(v->len < f->cap, CL_EPARSE, "NSM %s %s: %s is %zu bytes, at most %zu accepted", c->side,
              c->variant, f->name, v->len, f->cap - 1);
    CL_ENSURE(!memchr(v->data, '\0', v->len), CL_EPARSE, "NSM %s %s: %s contains a NUL character", c->side,
              c->variant, f->name);
    memcpy(f->dest, v->data, v->len);
    ((char *)f->dest)[v->len] = '\0';
    return CL_OK;
}

static int decode_u16_set(const decode_ctx *c, const field_spec *f, const cl_cbor *v)
{
    CL_ENSURE(v->type == CL_CBOR_ARRAY, CL_EPARSE, "NSM %s %s: %s is a %s, not an array", c->side, c->variant,
              f->name, cl_cbor_type_name(v->type));
    uint32_t mask = 0;
    for (const cl_cbor *e = v->child; e; e = e->next) {
        uint16_t index;
        CL_TRY(decode_u16(c, f->name, e, &index));
        CL_ENSURE(index < NSM_MAX_PCRS, CL_EPARSE, "NSM %s %s: %s holds PCR %u, beyond the %d supported",
                  c->side, c->variant, f->name, index, NSM_MAX_PCRS);
        CL_ENSURE(!(mask & (1u << index)), CL_EPARSE, "NSM %s %s: %s lists PCR %u twice", c->side, c->variant,
                  f->name, index);
        mask |= 1u << index;
    }
    *(uint32_t *)f->dest = mask;
    return CL_OK;
}

static int decode_field(const decode_ctx *c, const field_spec *f, const cl_cbor *v)
{
    switch (f->kind) {
    case FIELD_U16:
        return decode_u16(c, f->name, v, f->dest);
    case FIELD_BYTES:
        return decode_bytes(c, f, v);
    case FIELD_OPT_BYTES:
        if (v->type == CL_CBOR_NULL) {
            *f->present = false;
            return CL_OK;
        }
        CL_TRY(decode_bytes(c, f, v));
        *f->present = true;
        return CL_OK;
    case FIELD_BOOL:
        CL_ENSURE(v->type == CL_CBOR_TRUE || v->type == CL_CBOR_FALSE, CL_EPARSE,
                  "NSM %s %s: %s is a %s, not a boolean", c->side, c->variant, f->name, cl_cbor_type_name(v->type));
        *(bool *)f->dest = v->type == CL_CBOR_TRUE;
        return CL_OK;
    case FIELD_TEXT:
        return decode_text(c, f, v);
    case FIELD_DIGEST:
        CL_TRY(decode_text(c, f, v));
        CL_ENSURE(text_is(v, "SHA256") || text_is(v, "SHA384") || text_is(v, "SHA512"), CL_EPARSE,
                  "NSM %s %s: digest \"%.*s\" is not SHA256, SHA384 or SHA512", c->side, c->variant, SHOWN(v));
        return CL_OK;
    case FIELD_U16_SET:
        return decode_u16_set(c, f, v);
    }
    return cl_error_set(CL_EINVAL, "internal: unknown field kind %d", f->kind);
}

static int decode_fields(const decode_ctx *c, const cl_cbor *map, const field_spec *specs, size_t count)
{
    CL_ENSURE(map->type == CL_CBOR_MAP, CL_EPARSE, "NSM %s %s: fields are a %s, not a map", c->side,
              c->variant, cl_cbor_type_name(map->type));
    uint32_t seen = 0;
    for (const cl_cbor *k = map->child; k; k = k->next->next) {
        CL_ENSURE(k->type == CL_CBOR_TEXT, CL_EPARSE, "NSM %s %s: a field name is a %s, not text", c->side,
                  c->variant, cl_cbor_type_name(k->type));
        size_t i = 0;
        while (i < count && !text_is(k, specs[i].name))
            i++;
        if (i == count && c->skip_unknown)
            continue;
        CL_ENSURE(i < count, CL_EPARSE, "NSM %s %s: unknown field \"%.*s\"", c->side, c->variant, SHOWN(k));
        CL_TRY(decode_field(c, &specs[i], k->next));
        seen |= 1u << i;
    }
    for (size_t i = 0; i < count; i++) {
        if (seen & (1u << i))
            continue;
        CL_ENSURE(specs[i].optional, CL_EPARSE, "NSM %s %s: missing field %s", c->side, c->variant, specs[i].name);
        if (specs[i].present)
            *specs[i].present = false;
    }
    return CL_OK;
}

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* The one-entry map {"Variant": value} of a struct or newtype variant. */
static int split_variant(const char *side, const cl_cbor *root, const cl_cbor **name, const cl_cbor **value)
{
    CL_ENSURE(root->type == CL_CBOR_MAP || root->type == CL_CBOR_TEXT, CL_EPARSE,
              "NSM %s is a %s, not a variant name or a one-entry map", side, cl_cbor_type_name(root->type));
    if (root->type == CL_CBOR_TEXT) {
        *name = root;
        *value = NULL;
        return CL_OK;
    }
    CL_ENSURE(root->u == 1, CL_EPARSE, "NSM %s map has %llu entries, a variant needs exactly 1", side,
              (unsigned long long)root->u);
    CL_ENSURE(root->child->type == CL_CBOR_TEXT, CL_EPARSE, "NSM %s variant name is a %s, not text", side,
              cl_cbor_type_name(root->child->type));
    *name = root->child;
    *value = root->child->next;
    return CL_OK;
}

/* ---- requests --------------------------------------------------------------- */

static int decode_request_tree(const cl_cbor *root, cl_nsm_request *req)
{
    const cl_cbor *name, *value;
    CL_TRY(split_variant("request", root, &name, &value));
    int op = op_of_name(name);
    CL_ENSURE(op >= 0, CL_EPARSE, "NSM request: unknown variant \"%.*s\"", SHOWN(name));
    req->op = op;
    if (request_is_unit(op)) {
        CL_ENSURE(!value, CL_EPARSE, "NSM request: %s takes no fields and must be a bare name", op_names[op]);
        return CL_OK;
    }
    CL_ENSURE(value, CL_EPARSE, "NSM request: %s needs fields ({\"%s\": {...}})", op_names[op], op_names[op]);
    decode_ctx c = {"request", op_names[op], false};
    switch (op) {
    case CL_NSM_DESCRIBE_PCR:
    case CL_NSM_LOCK_PCR: {
        field_spec f[] = {{.name = "index", .kind = FIELD_U16, .dest = &req->index}};
        return decode_fields(&c, value, f, COUNT(f));
    }
    case CL_NSM_EXTEND_PCR: {
        field_spec f[] = {{.name = "index", .kind = FIELD_U16, .dest = &req->index},
                          {.name = "data", .kind = FIELD_BYTES, .dest = &req->data}};
        return decode_fields(&c, value, f, COUNT(f));
    }
    case CL_NSM_LOCK_PCRS: {
        field_spec f[] = {{.name = "range", .kind = FIELD_U16, .dest = &req->range}};
        return decode_fields(&c, value, f, COUNT(f));
    }
    case CL_NSM_ATTESTATION: {
        field_spec f[] = {
            {.name = "user_data", .kind = FIELD_OPT_BYTES, .optional = true, .dest = &req->user_data,
             .present = &req->has_user_data},
            {.name = "nonce", .kind = FIELD_OPT_BYTES, .optional = true, .dest = &req->nonce,
             .present = &req->has_nonce},
            {.name = "public_key", .kind = FIELD_OPT_BYTES, .optional = true, .dest = &req->public_key,
             .present = &req->has_public_key},
        };
        return decode_fields(&c, value, f, COUNT(f));
    }
    }
    return cl_error_set(CL_EPARSE, "NSM request: unhandled variant %s", op_names[op]);
}

int cl_nsm_request_decode(const uint8_t *data, size_t len, cl_nsm_request *req, cl_cbor_doc *doc)
{
    memset(req, 0, sizeof *req);
    memset(doc, 0, sizeof *doc);
    CL_ENSURE(len <= CL_NSM_REQUEST_MAX, CL_ELIMIT, "NSM request of %zu bytes exceeds the %d-byte limit", len,
              CL_NSM_REQUEST_MAX);
    CL_TRY(cl_cbor_decode(data, len, &request_limits, doc));
    int rc = decode_request_tree(doc->root, req);
    if (rc < 0)
        cl_cbor_doc_free(doc);
    return rc;
}

static int put_opt(cl_buf *out, bool present, cl_slice s)
{
    if (!present)
        return cl_cbor_put_null(out);
    return cl_cbor_put_bytes(out, s.data, s.len);
}

/* Struct variants open as {"Name": {n fields}}. */
static int put_struct_head(cl_buf *out, int op, size_t fields)
{
    CL_TRY(cl_cbor_put_map(out, 1));
    CL_TRY(cl_cbor_put_text(out, op_names[op]));
    return cl_cbor_put_map(out, fields);
}

static int encode_request(const cl_nsm_request *req, cl_buf *out)
{
    switch (req->op) {
    case CL_NSM_DESCRIBE_NSM:
    case CL_NSM_GET_RANDOM:
        return cl_cbor_put_text(out, op_names[req->op]);
    case CL_NSM_DESCRIBE_PCR:
    case CL_NSM_LOCK_PCR:
        CL_TRY(put_struct_head(out, req->op, 1));
        CL_TRY(cl_cbor_put_text(out, "index"));
        return cl_cbor_put_uint(out, req->index);
    case CL_NSM_EXTEND_PCR:
        CL_TRY(put_struct_head(out, req->op, 2));
        CL_TRY(cl_cbor_put_text(out, "index"));
        CL_TRY(cl_cbor_put_uint(out, req->index));
        CL_TRY(cl_cbor_put_text(out, "data"));
        return cl_cbor_put_bytes(out, req->data.data, req->data.len);
    case CL_NSM_LOCK_PCRS:
        CL_TRY(put_struct_head(out, req->op, 1));
        CL_TRY(cl_cbor_put_text(out, "range"));
        return cl_cbor_put_uint(out, req->range);
    case CL_NSM_ATTESTATION:
        CL_TRY(put_struct_head(out, req->op, 3));
        CL_TRY(cl_cbor_put_text(out, "user_data"));
        CL_TRY(put_opt(out, req->has_user_data, req->user_data));
        CL_TRY(cl_cbor_put_text(out, "nonce"));
        CL_TRY(put_opt(out, req->has_nonce, req->nonce));
        CL_TRY(cl_cbor_put_text(out, "public_key"));
        return put_opt(out, req->has_public_key, req->public_key);
    }
    return cl_error_set(CL_EINVAL, "NSM request: unknown op %d", req->op);
}

int cl_nsm_request_encode(const cl_nsm_request *req, cl_buf *out)
{
    size_t start = out->len;
    int rc = encode_request(req, out);
    if (rc == CL_OK && out->len - start > CL_NSM_REQUEST_MAX)
        rc = cl_error_set(CL_ELIMIT, "NSM request of %zu bytes exceeds the %d-byte limit", out->len - start,
                          CL_NSM_REQUEST_MAX);
    if (rc < 0)
        out->len = start;
    return rc;
}

/* ---- responses -------------------------------------------------------------- */

static int decode_error_name(const cl_cbor *value, cl_nsm_response *resp)
{
    CL_ENSURE(value, CL_EPARSE, "NSM response: Error needs a code ({\"Error\": \"Name\"})");
    CL_ENSURE(value->type == CL_CBOR_TEXT, CL_EPARSE, "NSM response: Error code is a %s, not text",
              cl_cbor_type_name(value->type));
    for (size_t i = CL_NSM_INVALID_ARGUMENT; i < ERROR_NAME_COUNT; i++) {
        if (text_is(value, error_names[i])) {
            resp->op = -1;
            resp->error_code = (int)i;
            return CL_OK;
        }
    }
    return cl_error_set(CL_EPARSE, "NSM response: unknown error code \"%.*s\"", SHOWN(value));
}

static int decode_response_tree(const cl_cbor *root, cl_nsm_response *resp)
{
    const cl_cbor *name, *value;
    CL_TRY(split_variant("response", root, &name, &value));
    if (text_is(name, "Error"))
        return decode_error_name(value, resp);
    int op = op_of_name(name);
    CL_ENSURE(op >= 0, CL_EPARSE, "NSM response: unknown variant \"%.*s\"", SHOWN(name));
    resp->op = op;
    if (response_is_unit(op)) {
        CL_ENSURE(!value, CL_EPARSE, "NSM response: %s carries no fields and must be a bare name", op_names[op]);
        return CL_OK;
    }
    CL_ENSURE(value, CL_EPARSE, "NSM response: %s needs fields ({\"%s\": {...}})", op_names[op], op_names[op]);
    decode_ctx c = {"response", op_names[op], true};
    cl_nsm_description *d = &resp->description;
    switch (op) {
    case CL_NSM_DESCRIBE_PCR: {
        field_spec f[] = {{.name = "lock", .kind = FIELD_BOOL, .dest = &resp->lock},
                          {.name = "data", .kind = FIELD_BYTES, .dest = &resp->data, .min_len = 1,
                           .max_len = 64}};
        return decode_fields(&c, value, f, COUNT(f));
    }
    case CL_NSM_EXTEND_PCR: {
        field_spec f[] = {{.name = "data", .kind = FIELD_BYTES, .dest = &resp->data, .min_len = 1, .max_len = 64}};
        return decode_fields(&c, value, f, COUNT(f));
    }
    case CL_NSM_DESCRIBE_NSM: {
        field_spec f[] = {
            {.name = "version_major", .kind = FIELD_U16, .dest = &d->version_major},
            {.name = "version_minor", .kind = FIELD_U16, .dest = &d->version_minor},
            {.name = "version_patch", .kind = FIELD_U16, .dest = &d->version_patch},
            {.name = "module_id", .kind = FIELD_TEXT, .dest = d->module_id, .cap = sizeof d->module_id},
            {.name = "max_pcrs", .kind = FIELD_U16, .dest = &d->max_pcrs},
            {.name = "locked_pcrs", .kind = FIELD_U16_SET, .dest = &d->locked_pcrs},
            {.name = "digest", .kind = FIELD_DIGEST, .dest = d->digest, .cap = sizeof d->digest},
        };
        CL_TRY(decode_fields(&c, value, f, COUNT(f)));
        CL_ENSURE(d->max_pcrs <= NSM_MAX_PCRS, CL_EPARSE, "NSM response DescribeNSM: max_pcrs %u exceeds %d",
                  d->max_pcrs, NSM_MAX_PCRS);
        CL_ENSURE(d->max_pcrs == NSM_MAX_PCRS || (d->locked_pcrs >> d->max_pcrs) == 0, CL_EPARSE,
                  "NSM response DescribeNSM: locked_pcrs names a PCR at or beyond max_pcrs %u", d->max_pcrs);
        return CL_OK;
    }
    case CL_NSM_ATTESTATION: {
        field_spec f[] = {{.name = "document", .kind = FIELD_BYTES, .dest = &resp->data, .min_len = 1}};
        return decode_fields(&c, value, f, COUNT(f));
    }
    case CL_NSM_GET_RANDOM: {
        field_spec f[] = {{.name = "random", .kind = FIELD_BYTES, .dest = &resp->data, .min_len = 1}};
        return decode_fields(&c, value, f, COUNT(f));
    }
    }
    return cl_error_set(CL_EPARSE, "NSM response: unhandled variant %s", op_names[op]);
}

int cl_nsm_response_decode(const uint8_t *data, size_t len, cl_nsm_response *resp, cl_cbor_doc *doc)
{
    memset(resp, 0, sizeof *resp);
    memset(doc, 0, sizeof *doc);
    CL_ENSURE(len <= CL_NSM_RESPONSE_MAX, CL_ELIMIT, "NSM response of %zu bytes exceeds the %d-byte limit", len,
              CL_NSM_RESPONSE_MAX);
    CL_TRY(cl_cbor_decode(data, len, &response_limits, doc));
    int rc = decode_response_tree(doc->root, resp);
    if (rc < 0)
        cl_cbor_doc_free(doc);
    return rc;
}

static int put_field_bytes(cl_buf *out, const char *name, cl_slice s)
{
    CL_TRY(cl_cbor_put_text(out, name));
    return cl_cbor_put_bytes(out, s.data, s.len);
}

static int put_field_uint(cl_buf *out, const char *name, uint64_t v)
{
    CL_TRY(cl_cbor_put_text(out, name));
    return cl_cbor_put_uint(out, v);
}

static int encode_description(const cl_nsm_description *d, cl_buf *out)
{
    CL_ENSURE(memchr(d->module_id, '\0', sizeof d->module_id) && memchr(d->digest, '\0', sizeof d->digest),
              CL_EINVAL, "NSM description: unterminated module_id or digest");
    CL_TRY(put_struct_head(out, CL_NSM_DESCRIBE_NSM, 7));
    CL_TRY(put_field_uint(out, "version_major", d->version_major));
    CL_TRY(put_field_uint(out, "version_minor", d->version_minor));
    CL_TRY(put_field_uint(out, "version_patch", d->version_patch));
    CL_TRY(cl_cbor_put_text(out, "module_id"));
    CL_TRY(cl_cbor_put_text(out, d->module_id));
    CL_TRY(put_field_uint(out, "max_pcrs", d->max_pcrs));
    CL_TRY(cl_cbor_put_text(out, "locked_pcrs"));
    uint64_t locked = 0;
    for (unsigned i = 0; i < NSM_MAX_PCRS; i++)
        locked += (d->locked_pcrs >> i) & 1u;
    CL_TRY(cl_cbor_put_array(out, locked));
    for (unsigned i = 0; i < NSM_MAX_PCRS; i++)
        if (d->locked_pcrs & (1u << i))
            CL_TRY(cl_cbor_put_uint(out, i));
    CL_TRY(cl_cbor_put_text(out, "digest"));
    return cl_cbor_put_text(out, d->digest);
}

static int encode_response(const cl_nsm_response *resp, cl_buf *out)
{
    if (resp->op == -1) {
        CL_ENSURE(resp->error_code >= CL_NSM_INVALID_ARGUMENT && (size_t)resp->error_code < ERROR_NAME_COUNT,
                  CL_EINVAL, "NSM response: %d is not an error code", resp->error_code);
        CL_TRY(cl_cbor_put_map(out, 1));
        CL_TRY(cl_cbor_put_text(out, "Error"));
        return cl_cbor_put_text(out, error_names[resp->error_code]);
    }
    switch (resp->op) {
    case CL_NSM_LOCK_PCR:
    case CL_NSM_LOCK_PCRS:
        return cl_cbor_put_text(out, op_names[resp->op]);
    case CL_NSM_DESCRIBE_PCR:
        CL_TRY(put_struct_head(out, resp->op, 2));
        CL_TRY(cl_cbor_put_text(out, "lock"));
        CL_TRY(cl_cbor_put_bool(out, resp->lock));
        return put_field_bytes(out, "data", resp->data);
    case CL_NSM_EXTEND_PCR:
        CL_TRY(put_struct_head(out, resp->op, 1));
        return put_field_bytes(out, "data", resp->data);
    case CL_NSM_DESCRIBE_NSM:
        return encode_description(&resp->description, out);
    case CL_NSM_ATTESTATION:
        CL_TRY(put_struct_head(out, resp->op, 1));
        return put_field_bytes(out, "document", resp->data);
    case CL_NSM_GET_RANDOM:
        CL_TRY(put_struct_head(out, resp->op, 1));
        return put_field_bytes(out, "random", resp->data);
    }
    return cl_error_set(CL_EINVAL, "NSM response: unknown op %d", resp->op);
}

int cl_nsm_response_encode(const cl_nsm_response *resp, cl_buf *out)
{
    size_t start = out->len;
    int rc = encode_response(resp, out);
    if (rc == CL_OK && out->len - start > CL_NSM_RESPONSE_MAX)
        rc = cl_error_set(CL_ELIMIT, "NSM response of %zu bytes exceeds the %d-byte limit", out->len - start,
                          CL_NSM_RESPONSE_MAX);
    if (rc < 0)
        out->len = start;
    return rc;
}

/* ---- framing ---------------------------------------------------------------- */

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == ENOTSOCK)
            w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return cl_error_set(CL_EIO, "cannot write to the NSM socket: %s", w < 0 ? strerror(errno) : "no progress");
        p += w;
        n -= (size_t)w;
    }
    return CL_OK;
}

/* Reads exactly n bytes; *got says how many arrived before EOF. */
static int read_all(int fd, uint8_t *p, size_t n, size_t *got)
{
    *got = 0;
    while (*got < n) {
        ssize_t r = read(fd, p + *got, n - *got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return cl_error_set(CL_EIO, "cannot read from the NSM socket: %s",
                                errno == EAGAIN || errno == EWOULDBLOCK ? "timed out" : strerror(errno));
        if (r == 0)
            return CL_OK;
        *got += (size_t)r;
    }
    return CL_OK;
}

int cl_nsm_frame_write(int fd, const uint8_t *data, size_t len)
{
    CL_ENSURE(len <= UINT32_MAX, CL_ELIMIT, "frame of %zu bytes is too large", len);
    uint8_t head[4] = {(uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8), (uint8_t)len};
    CL_TRY(write_all(fd, head, sizeof head));
    return write_all(fd, data, len);
}

int cl_nsm_frame_read(int fd, size_t max, cl_buf *out, bool *eof)
{
    *eof = false;
    cl_buf_reset(out);
    uint8_t head[4];
    size_t got;
    CL_TRY(read_all(fd, head, sizeof head, &got));
    if (got == 0) {
        *eof = true;
        return CL_OK;
    }
    CL_ENSURE(got == sizeof head, CL_EIO, "connection closed inside a frame header (%zu of 4 bytes)", got);
    cl_cursor cur = cl_cursor_make(head, sizeof head);
    uint32_t len;
    CL_TRY(cl_cursor_be32(&cur, &len));
    CL_ENSURE(len <= max, CL_ELIMIT, "frame of %u bytes exceeds the %zu-byte limit", len, max);
    CL_TRY(cl_buf_reserve(out, len));
    CL_TRY(read_all(fd, out->data, len, &got));
    CL_ENSURE(got == len, CL_EIO, "connection closed inside a frame (%zu of %u bytes)", got, len);
    out->len = len;
    return CL_OK;
}

/* ---- client ----------------------------------------------------------------- */

/* The Linux driver's only ioctl: both buffers described by iovecs; the
 * driver shrinks response.iov_len to what the NSM wrote. */
struct nsm_raw {
    struct iovec request;
    struct iovec response;
};
#define NSM_IOCTL_REQUEST _IOWR(0x0A, 0, struct nsm_raw)
#if defined(__LP64__)
_Static_assert(NSM_IOCTL_REQUEST == 0xC0200A00u, "NSM ioctl number differs from the driver's");
#endif

enum transport { TRANSPORT_DEVICE, TRANSPORT_UNIX, TRANSPORT_CUSTOM };

struct cl_nsm {
    int transport;
    int fd; /* device or socket; -1 when a socket must be reopened */
    cl_address addr;
    cl_nsm_exchange_fn fn;
    void *fn_ctx;
    pthread_mutex_t lock; /* one exchange at a time on the shared fd */
    _Atomic int last_error;
};

static int new_client(int transport, cl_nsm **out)
{
    cl_nsm *nsm = calloc(1, sizeof *nsm);
    CL_ENSURE(nsm, CL_ENOMEM, "out of memory");
    nsm->transport = transport;
    nsm->fd = -1;
    if (pthread_mutex_init(&nsm->lock, NULL) != 0) {
        free(nsm);
        return cl_error_set(CL_ENOMEM, "cannot create a mutex");
    }
    *out = nsm;
    return CL_OK;
}

static int connect_socket(cl_nsm *nsm)
{
    int fd;
    CL_TRY(cl_address_connect(&nsm->addr, &fd));
    /* A simulator that stops answering must not hang its client forever. */
    struct timeval tv = {.tv_sec = CLIENT_TIMEOUT_SECONDS};
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    nsm->fd = fd;
    return CL_OK;
}

int cl_nsm_open(const char *addr, cl_nsm **out)
{
    *out = NULL;
    if (!addr || !*addr)
        addr = getenv(CL_NSM_ENV);
    if (!addr || !*addr)
        addr = CL_NSM_DEFAULT_DEVICE;
    cl_nsm *nsm = NULL;
    int rc = CL_OK;
    if (!strncmp(addr, "unix:", 5)) {
        CL_TRY(new_client(TRANSPORT_UNIX, &nsm));
        CL_TRY_OUT(cl_address_parse(addr, &nsm->addr));
        CL_TRY_OUT(connect_socket(nsm));
    } else if (addr[0] == '/') {
        CL_TRY(new_client(TRANSPORT_DEVICE, &nsm));
        nsm->fd = open(addr, O_RDWR | O_CLOEXEC);
        CL_ENSURE_OUT(nsm->fd >= 0, CL_EIO, "cannot open the NSM device %s: %s", addr, strerror(errno));
    } else {
        return cl_error_set(CL_EINVAL, "NSM address '%.64s' must be unix:PATH (simulator) or a device path such as %s",
                            addr, CL_NSM_DEFAULT_DEVICE);
    }
out:
    if (rc < 0) {
        cl_nsm_close(nsm);
        return rc;
    }
    *out = nsm;
    return CL_OK;
}

int cl_nsm_open_custom(cl_nsm_exchange_fn fn, void *ctx, cl_nsm **out)
{
    *out = NULL;
    CL_ENSURE(fn, CL_EINVAL, "no exchange function given");
    CL_TRY(new_client(TRANSPORT_CUSTOM, out));
    (*out)->fn = fn;
    (*out)->fn_ctx = ctx;
    return CL_OK;
}

void cl_nsm_close(cl_nsm *nsm)
{
    if (!nsm)
        return;
    if (nsm->fd >= 0)
        close(nsm->fd);
    pthread_mutex_destroy(&nsm->lock);
    free(nsm);
}

static int device_exchange(cl_nsm *nsm, const uint8_t *req, size_t req_len, cl_buf *resp)
{
    CL_TRY(cl_buf_reserve(resp, CL_NSM_RESPONSE_MAX));
    struct nsm_raw raw = {
        .request = {.iov_base = (void *)req, .iov_len = req_len}, /* the driver only reads it */
        .response = {.iov_base = resp->data, .iov_len = CL_NSM_RESPONSE_MAX},
    };
    CL_ENSURE(ioctl(nsm->fd, NSM_IOCTL_REQUEST, &raw) == 0, CL_EIO, "NSM ioctl failed: %s", strerror(errno));
    CL_ENSURE(raw.response.iov_len > 0 && raw.response.iov_len <= CL_NSM_RESPONSE_MAX, CL_EPROTO,
              "NSM device returned a response of %zu bytes (buffer %d)", raw.response.iov_len,
              CL_NSM_RESPONSE_MAX);
    resp->len = raw.response.iov_len;
    return CL_OK;
}

/* Between exchanges nothing may arrive: a readable socket means the
 * simulator closed it (restart, idle timeout), and sending on it would
 * lose the request.  Such a connection is replaced before use. */
static bool connection_stale(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) != 0;
}

static int socket_exchange(cl_nsm *nsm, const uint8_t *req, size_t req_len, cl_buf *resp)
{
    if (nsm->fd >= 0 && connection_stale(nsm->fd)) {
        close(nsm->fd);
        nsm->fd = -1;
    }
    if (nsm->fd < 0)
        CL_TRY(connect_socket(nsm));
    bool eof = false;
    int rc = cl_nsm_frame_write(nsm->fd, req, req_len);
    if (rc == CL_OK)
        rc = cl_nsm_frame_read(nsm->fd, CL_NSM_RESPONSE_MAX, resp, &eof);
    if (rc == CL_OK && eof)
        rc = cl_error_set(CL_EIO, "the NSM simulator closed the connection without answering");
    if (rc < 0) {
        /* The stream may be mid-frame: start the next exchange afresh. */
        close(nsm->fd);
        nsm->fd = -1;
    }
    return rc;
}

int cl_nsm_exchange(cl_nsm *nsm, const uint8_t *req, size_t req_len, cl_buf *resp)
{
    CL_ENSURE(req_len <= CL_NSM_REQUEST_MAX, CL_ELIMIT, "NSM request of %zu bytes exceeds the %d-byte limit",
              req_len, CL_NSM_REQUEST_MAX);
    cl_buf_reset(resp);
    pthread_mutex_lock(&nsm->lock);
    int rc;
    switch (nsm->transport) {
    case TRANSPORT_DEVICE: rc = device_exchange(nsm, req, req_len, resp); break;
    case TRANSPORT_UNIX: rc = socket_exchange(nsm, req, req_len, resp); break;
    default: rc = nsm->fn(nsm->fn_ctx, req, req_len, resp); break;
    }
    pthread_mutex_unlock(&nsm->lock);
    if (rc == CL_OK && resp->len > CL_NSM_RESPONSE_MAX)
        rc = cl_error_set(CL_ELIMIT, "NSM response of %zu bytes exceeds the %d-byte limit", resp->len,
                          CL_NSM_RESPONSE_MAX);
    return rc;
}

int cl_nsm_last_error(const cl_nsm *nsm)
{
    return nsm->last_error;
}

/* One typed round trip: on success *resp borrows from raw and doc. */
static int call(cl_nsm *nsm, const cl_nsm_request *req, cl_buf *raw, cl_nsm_response *resp, cl_cbor_doc *doc)
{
    cl_buf encoded = CL_BUF_INIT;
    int rc = CL_OK;
    memset(doc, 0, sizeof *doc);
    CL_TRY_OUT(cl_nsm_request_encode(req, &encoded));
    CL_TRY_OUT(cl_nsm_exchange(nsm, encoded.data, encoded.len, raw));
    CL_TRY_OUT(cl_nsm_response_decode(raw->data, raw->len, resp, doc));
    if (resp->op == -1) {
        nsm->last_error = resp->error_code;
        CL_FAIL_OUT(CL_ENSM, "NSM error %s", cl_nsm_error_name(resp->error_code));
    }
    nsm->last_error = CL_NSM_SUCCESS;
    CL_ENSURE_OUT(resp->op == req->op, CL_EPROTO, "NSM answered %s to a %s request", cl_nsm_op_name(resp->op),
                  cl_nsm_op_name(req->op));
out:
    if (rc < 0)
        cl_cbor_doc_free(doc);
    cl_buf_free(&encoded);
    return rc;
}

int cl_nsm_describe(cl_nsm *nsm, cl_nsm_description *out)
{
    cl_nsm_request req = {.op = CL_NSM_DESCRIBE_NSM};
    cl_buf raw = CL_BUF_INIT;
    cl_nsm_response resp;
    cl_cbor_doc doc;
    int rc = call(nsm, &req, &raw, &resp, &doc);
    if (rc == CL_OK)
        *out = resp.description;
    cl_cbor_doc_free(&doc);
    cl_buf_free(&raw);
    return rc;
}

static int pcr_call(cl_nsm *nsm, const cl_nsm_request *req, bool *locked, cl_buf *value)
{
    cl_buf raw = CL_BUF_INIT;
    cl_nsm_response resp;
    cl_cbor_doc doc;
    int rc = call(nsm, req, &raw, &resp, &doc);
    if (rc == CL_OK) {
        if (locked)
            *locked = resp.lock;
        if (value) {
            cl_buf_reset(value);
            rc = cl_buf_append(value, resp.data.data, resp.data.len);
        }
    }
    cl_cbor_doc_free(&doc);
    cl_buf_free(&raw);
    return rc;
}

int cl_nsm_describe_pcr(cl_nsm *nsm, uint16_t index, bool *locked, cl_buf *value)
{
    cl_nsm_request req = {.op = CL_NSM_DESCRIBE_PCR, .index = index};
    return pcr_call(nsm, &req, locked, value);
}

int cl_nsm_extend_pcr(cl_nsm *nsm, uint16_t index, const uint8_t *data, size_t len, cl_buf *value)
{
    cl_nsm_request req = {.op = CL_NSM_EXTEND_PCR, .index = index, .data = {data, len}};
    return pcr_call(nsm, &req, NULL, value);
}

int cl_nsm_lock_pcr(cl_nsm *nsm, uint16_t index)
{
    cl_nsm_request req = {.op = CL_NSM_LOCK_PCR, .index = index};
    return pcr_call(nsm, &req, NULL, NULL);
}

int cl_nsm_lock_pcrs(cl_nsm *nsm, uint16_t range)
{
    cl_nsm_request req = {.op = CL_NSM_LOCK_PCRS, .range = range};
    return pcr_call(nsm, &req, NULL, NULL);
}

int cl_nsm_get_random(cl_nsm *nsm, uint8_t *out, size_t len)
{
    cl_nsm_request req = {.op = CL_NSM_GET_RANDOM};
    size_t filled = 0;
    int rc = CL_OK;
    while (filled < len && rc == CL_OK) {
        cl_buf raw = CL_BUF_INIT;
        cl_nsm_response resp;
        cl_cbor_doc doc;
        rc = call(nsm, &req, &raw, &resp, &doc);
        if (rc == CL_OK) {
            size_t take = resp.data.len < len - filled ? resp.data.len : len - filled;
            memcpy(out + filled, resp.data.data, take);
            filled += take;
        }
        cl_cbor_doc_free(&doc);
        cl_buf_free(&raw);
    }
    return rc;
}

int cl_nsm_attestation(cl_nsm *nsm, const uint8_t *user_data, size_t user_data_len, const uint8_t *nonce,
                       size_t nonce_len, const uint8_t *public_key, size_t public_key_len, cl_buf *document)
{
    cl_nsm_request req = {
        .op = CL_NSM_ATTESTATION,
        .has_user_data = user_data != NULL,
        .user_data = {user_data, user_data_len},
        .has_nonce = nonce != NULL,
        .nonce = {nonce, nonce_len},
        .has_public_key = public_key != NULL,
        .public_key = {public_key, public_key_len},
    };
    cl_buf raw = CL_BUF_INIT;
    cl_nsm_response resp;
    cl_cbor_doc doc;
    int rc = call(nsm, &req, &raw, &resp, &doc);
    if (rc == CL_OK) {
        cl_buf_reset(document);
        rc = cl_buf_append(document, resp.data.data, resp.data.len);
    }
    cl_cbor_doc_free(&doc);
    cl_buf_free(&raw);
    return rc;
}

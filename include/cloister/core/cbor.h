/* A strict CBOR (RFC 8949) decoder and a small encoder.
 *
 * The decoder reads through cl_cursor and rejects: trailing bytes, duplicate
 * map keys, map keys that are not integers or strings, reserved
 * additional-information values, floating-point values, invalid simple
 * values, stray "break" codes, text that is not UTF-8, nesting deeper than
 * the caller's limit, and any declared length beyond the input.  Definite and
 * indefinite lengths are both accepted (real attestation documents use
 * both).
 *
 * Decoding makes two passes: the first checks well-formedness and counts
 * items, the second fills one allocation with the item tree.  Definite
 * strings borrow from the input, so the input must outlive the tree. */
#ifndef CLOISTER_CBOR_H
#define CLOISTER_CBOR_H

#pragma GCC visibility push(default)

#include "cloister/core/buf.h"
#include "cloister/core/error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum cl_cbor_type {
    CL_CBOR_UINT,
    CL_CBOR_NINT, /* value is -1 - u, u held in .u */
    CL_CBOR_BYTES,
    CL_CBOR_TEXT,
    CL_CBOR_ARRAY,
    CL_CBOR_MAP,
    CL_CBOR_TAG,
    CL_CBOR_FALSE,
    CL_CBOR_TRUE,
    CL_CBOR_NULL,
    CL_CBOR_UNDEFINED,
    CL_CBOR_SIMPLE,
};

typedef struct cl_cbor cl_cbor;
struct cl_cbor {
    uint8_t type;
    bool indefinite;
    uint64_t u;          /* UINT/NINT argument, TAG number, SIMPLE value, ARRAY/MAP entry count */
    const uint8_t *data; /* BYTES/TEXT content */
    size_t len;          /* BYTES/TEXT length */
    cl_cbor *child;      /* ARRAY: first element; MAP: first key (key, value alternate); TAG: content */
    cl_cbor *next;       /* next sibling within the parent */
    size_t offset;       /* where the item starts in the input */
};

typedef struct cl_cbor_limits {
    unsigned max_depth;       /* nesting of arrays, maps and tags; 0 = only scalars */
    size_t max_map_entries;   /* per map */
} cl_cbor_limits;

typedef struct cl_cbor_doc {
    cl_cbor *root;
    void *storage;
} cl_cbor_doc;

CL_MUST_CHECK int cl_cbor_decode(const uint8_t *data, size_t len, const cl_cbor_limits *limits,
                                 cl_cbor_doc *out);
void cl_cbor_doc_free(cl_cbor_doc *doc);

const char *cl_cbor_type_name(int type);

/* Map lookup by text key; NULL when absent. */
const cl_cbor *cl_cbor_map_get(const cl_cbor *map, const char *key);

/* Encoder: each call appends one item head (or whole scalar) to b. */
CL_MUST_CHECK int cl_cbor_put_uint(cl_buf *b, uint64_t v);
CL_MUST_CHECK int cl_cbor_put_nint(cl_buf *b, uint64_t u); /* encodes -1 - u */
CL_MUST_CHECK int cl_cbor_put_bytes(cl_buf *b, const void *data, size_t len);
/* Only the head of a byte string of len bytes; the caller appends them. */
CL_MUST_CHECK int cl_cbor_put_bytes_head(cl_buf *b, size_t len);
CL_MUST_CHECK int cl_cbor_put_text(cl_buf *b, const char *text);
CL_MUST_CHECK int cl_cbor_put_text_n(cl_buf *b, const char *text, size_t len);
CL_MUST_CHECK int cl_cbor_put_array(cl_buf *b, uint64_t count);
CL_MUST_CHECK int cl_cbor_put_map(cl_buf *b, uint64_t count);
CL_MUST_CHECK int cl_cbor_put_tag(cl_buf *b, uint64_t tag);
CL_MUST_CHECK int cl_cbor_put_bool(cl_buf *b, bool v);
CL_MUST_CHECK int cl_cbor_put_null(cl_buf *b);
/* Bytes or null: data == NULL encodes null. */
CL_MUST_CHECK int cl_cbor_put_opt_bytes(cl_buf *b, const void *data, size_t len);

#pragma GCC visibility pop

#endif

/* The one bounds-checked reader for untrusted bytes.
 *
 * Every parser in cloister reads through a cl_cursor, so there is exactly one
 * place where a length is checked against what is left.  A read that does not
 * fit fails with CL_EPARSE and leaves the cursor where it was. */
#ifndef CLOISTER_CURSOR_H
#define CLOISTER_CURSOR_H

#pragma GCC visibility push(default)

#include "cloister/core/error.h"
#include "cloister/core/slice.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct cl_cursor {
    const uint8_t *data;
    size_t len;
    size_t pos;
} cl_cursor;

static inline cl_cursor cl_cursor_make(const uint8_t *data, size_t len)
{
    cl_cursor c = {data, len, 0};
    return c;
}

static inline size_t cl_cursor_remaining(const cl_cursor *c)
{
    return c->len - c->pos;
}

static inline bool cl_cursor_at_end(const cl_cursor *c)
{
    return c->pos == c->len;
}

CL_MUST_CHECK int cl_cursor_u8(cl_cursor *c, uint8_t *out);
CL_MUST_CHECK int cl_cursor_peek_u8(const cl_cursor *c, uint8_t *out);
CL_MUST_CHECK int cl_cursor_be16(cl_cursor *c, uint16_t *out);
CL_MUST_CHECK int cl_cursor_be32(cl_cursor *c, uint32_t *out);
CL_MUST_CHECK int cl_cursor_be64(cl_cursor *c, uint64_t *out);
/* Borrows n bytes: *out points into the cursor's buffer. */
CL_MUST_CHECK int cl_cursor_bytes(cl_cursor *c, size_t n, const uint8_t **out);
CL_MUST_CHECK int cl_cursor_skip(cl_cursor *c, size_t n);
/* Borrows the bytes up to (not including) the first `delim`, and consumes
 * the delimiter too.  *found is false, and nothing is consumed, when the
 * delimiter is not in the rest of the input. */
CL_MUST_CHECK int cl_cursor_until(cl_cursor *c, uint8_t delim, cl_slice *out, bool *found);
/* Fails with CL_EPARSE naming `what` if bytes are left over. */
CL_MUST_CHECK int cl_cursor_expect_end(const cl_cursor *c, const char *what);

#pragma GCC visibility pop

#endif

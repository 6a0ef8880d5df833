/* A growable, owned byte buffer.  Its memory is wiped when freed, so the
 * same type carries secrets and ordinary data without a second code path. */
#ifndef CLOISTER_BUF_H
#define CLOISTER_BUF_H

#pragma GCC visibility push(default)

#include "cloister/core/error.h"
#include "cloister/core/slice.h"

#include <stddef.h>
#include <stdint.h>

typedef struct cl_buf {
    uint8_t *data;
    size_t len;
    size_t cap;
} cl_buf;

#define CL_BUF_INIT {NULL, 0, 0}

CL_MUST_CHECK int cl_buf_reserve(cl_buf *b, size_t extra);
CL_MUST_CHECK int cl_buf_append(cl_buf *b, const void *data, size_t len);
CL_MUST_CHECK int cl_buf_append_u8(cl_buf *b, uint8_t v);
CL_MUST_CHECK int cl_buf_append_be(cl_buf *b, uint64_t v, size_t width);
/* Takes the bytes out of b: the caller owns *out (free with cl_free_secret
 * or free) and b is left empty. */
void cl_buf_steal(cl_buf *b, uint8_t **out, size_t *len);
void cl_buf_reset(cl_buf *b);
void cl_buf_free(cl_buf *b);

/* Wipes len bytes at p (the compiler may not elide it) and frees p. */
void cl_free_secret(void *p, size_t len);
void cl_wipe(void *p, size_t len);

#pragma GCC visibility pop

#endif

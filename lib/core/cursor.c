#include "cloister/core/cursor.h"

#include <string.h>

static int need(const cl_cursor *c, size_t n)
{
    if (n > cl_cursor_remaining(c))
        return cl_error_set(CL_EPARSE, "truncated input: %zu bytes needed at offset %zu, %zu left",
                            n, c->pos, cl_cursor_remaining(c));
    return CL_OK;
}

int cl_cursor_u8(cl_cursor *c, uint8_t *out)
{
    CL_TRY(need(c, 1));
    *out = c->data[c->pos++];
    return CL_OK;
}

int cl_cursor_peek_u8(const cl_cursor *c, uint8_t *out)
{
    CL_TRY(need(c, 1));
    *out = c->data[c->pos];
    return CL_OK;
}

static int read_be(cl_cursor *c, size_t n, uint64_t *out)
{
    CL_TRY(need(c, n));
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = (v << 8) | c->data[c->pos + i];
    c->pos += n;
    *out = v;
    return CL_OK;
}

int cl_cursor_be16(cl_cursor *c, uint16_t *out)
{
    uint64_t v;
    CL_TRY(read_be(c, 2, &v));
    *out = (uint16_t)v;
    return CL_OK;
}

int cl_cursor_be32(cl_cursor *c, uint32_t *out)
{
    uint64_t v;
    CL_TRY(read_be(c, 4, &v));
    *out = (uint32_t)v;
    return CL_OK;
}

int cl_cursor_be64(cl_cursor *c, uint64_t *out)
{
    return read_be(c, 8, out);
}

int cl_cursor_bytes(cl_cursor *c, size_t n, const uint8_t **out)
{
    CL_TRY(need(c, n));
    *out = c->data + c->pos;
    c->pos += n;
    return CL_OK;
}

int cl_cursor_skip(cl_cursor *c, size_t n)
{
    CL_TRY(need(c, n));
    c->pos += n;
    return CL_OK;
}

int cl_cursor_until(cl_cursor *c, uint8_t delim, cl_slice *out, bool *found)
{
    *found = false;
    if (cl_cursor_remaining(c) == 0)
        return CL_OK;
    const uint8_t *start = c->data + c->pos;
    const uint8_t *hit = memchr(start, delim, cl_cursor_remaining(c));
    *found = hit != NULL;
    if (!hit)
        return CL_OK;
    out->data = start;
    out->len = (size_t)(hit - start);
    c->pos += out->len + 1;
    return CL_OK;
}

int cl_cursor_expect_end(const cl_cursor *c, const char *what)
{
    if (!cl_cursor_at_end(c))
        return cl_error_set(CL_EPARSE, "%zu trailing bytes after %s", cl_cursor_remaining(c), what);
    return CL_OK;
}

#include "cloister/core/buf.h"

#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

void cl_wipe(void *p, size_t len)
{
    if (p && len)
        OPENSSL_cleanse(p, len);
}

void cl_free_secret(void *p, size_t len)
{
    /* keys and plaintexts copied into OpenSSL's secure heap (enclave/harden.h)
     * go back to it, cleared over the whole block */
    if (p && CRYPTO_secure_allocated(p)) {
        OPENSSL_secure_clear_free(p, len);
        return;
    }
    cl_wipe(p, len);
    free(p);
}

int cl_buf_reserve(cl_buf *b, size_t extra)
{
    if (extra <= b->cap - b->len)
        return CL_OK;
    if (extra > SIZE_MAX / 2 - b->len)
        return cl_error_set(CL_ENOMEM, "buffer would exceed the address space");
    size_t cap = b->cap ? b->cap : 64;
    while (cap - b->len < extra)
        cap *= 2;
    /* realloc could leave a copy of secret bytes behind: move them by hand. */
    uint8_t *p = malloc(cap);
    if (!p)
        return cl_error_set(CL_ENOMEM, "out of memory growing a buffer to %zu bytes", cap);
    if (b->len)
        memcpy(p, b->data, b->len);
    cl_free_secret(b->data, b->cap);
    b->data = p;
    b->cap = cap;
    return CL_OK;
}

int cl_buf_append(cl_buf *b, const void *data, size_t len)
{
    if (len == 0)
        return CL_OK;
    CL_TRY(cl_buf_reserve(b, len));
    memcpy(b->data + b->len, data, len);
    b->len += len;
    return CL_OK;
}

int cl_buf_append_u8(cl_buf *b, uint8_t v)
{
    return cl_buf_append(b, &v, 1);
}

int cl_buf_append_be(cl_buf *b, uint64_t v, size_t width)
{
    uint8_t tmp[8];
    if (width > 8)
        return cl_error_set(CL_EINVAL, "integer width %zu exceeds 8 bytes", width);
    for (size_t i = 0; i < width; i++)
        tmp[i] = (uint8_t)(v >> (8 * (width - 1 - i)));
    return cl_buf_append(b, tmp, width);
}

void cl_buf_steal(cl_buf *b, uint8_t **out, size_t *len)
{
    *out = b->data;
    *len = b->len;
    b->data = NULL;
    b->len = b->cap = 0;
}

void cl_buf_reset(cl_buf *b)
{
    cl_wipe(b->data, b->len);
    b->len = 0;
}

void cl_buf_free(cl_buf *b)
{
    cl_free_secret(b->data, b->cap);
    b->data = NULL;
    b->len = b->cap = 0;
}

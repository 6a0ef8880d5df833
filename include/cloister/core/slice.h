/* A borrowed view of bytes owned by someone else. */
#ifndef CLOISTER_SLICE_H
#define CLOISTER_SLICE_H

#pragma GCC visibility push(default)

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct cl_slice {
    const uint8_t *data;
    size_t len;
} cl_slice;

static inline bool cl_slice_eq(cl_slice s, const char *text)
{
    size_t n = strlen(text);
    return s.len == n && memcmp(s.data, text, n) == 0;
}

/* ASCII case-insensitive comparison, for protocol tokens. */
static inline bool cl_slice_eq_nocase(cl_slice s, const char *text)
{
    size_t n = strlen(text);
    if (s.len != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        uint8_t a = s.data[i], b = (uint8_t)text[i];
        if (a >= 'A' && a <= 'Z')
            a += 32;
        if (b >= 'A' && b <= 'Z')
            b += 32;
        if (a != b)
            return false;
    }
    return true;
}

#pragma GCC visibility pop

#endif

/* Feeds arbitrary bytes to the share parser and the combiner: the input is
 * a length byte, then two shares of that length.  Neither may crash or
 * read past its input; shares the parser accepts must combine (or be
 * refused for a shared x), and the line through (0, secret) and the
 * second share must pass through the first. */
#include "cloister/enclave/shamir.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || data[0] == 0)
        return 0;
    size_t n = data[0];
    data++;
    size--;
    size_t first = n + 1 <= size ? n + 1 : size;
    cl_shamir_share a, b;
    if (cl_shamir_share_parse(data, first, n, &a) < 0)
        return 0;
    if (a.len != n || a.x == 0)
        abort();
    if (cl_shamir_share_parse(data + first, size - first, a.len, &b) < 0)
        return 0;
    if (b.len != a.len || size - first != a.len + 1)
        abort();
    uint8_t secret[CL_SHAMIR_MAX_SECRET], back[CL_SHAMIR_MAX_SECRET];
    cl_shamir_share two[2] = {a, b};
    int rc = cl_shamir_combine(two, 2, secret, a.len);
    if (a.x == b.x) {
        if (rc != CL_EVERIFY)
            abort();
        return 0;
    }
    if (rc < 0)
        abort();
    /* the line through (0, secret) and (b.x, b.y) passes through (a.x, a.y):
     * y_a = secret ^ (secret ^ y_b) / b.x * a.x in GF(2^8) */
    for (size_t i = 0; i < a.len; i++) {
        uint8_t slope = cl_gf256_mul((uint8_t)(secret[i] ^ b.y[i]), cl_gf256_inv(b.x));
        back[i] = (uint8_t)(secret[i] ^ cl_gf256_mul(slope, a.x));
    }
    if (memcmp(back, a.y, a.len) != 0)
        abort();
    return 0;
}

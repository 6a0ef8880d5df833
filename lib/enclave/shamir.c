/* Shamir's secret sharing over GF(2^8) in constant time (see shamir.h).
 * No lookup table: log/exp tables indexed by share bytes leak them through
 * the cache, which is what an enclave sharing a host's cores must avoid. */
#include "cloister/enclave/shamir.h"

#include "cloister/core/cursor.h"

#include <openssl/rand.h>
#include <string.h>

uint8_t cl_gf256_mul(uint8_t a, uint8_t b)
{
    /* Russian-peasant multiplication, MSB first: r = r*X + (bit ? a : 0),
     * reduced by the AES polynomial when r*X overflows; masks, no branches. */
    unsigned r = 0;
    for (int i = 7; i >= 0; i--) {
        unsigned bit = (b >> i) & 1u;
        unsigned hi = (r >> 7) & 1u;
        r = ((r << 1) & 0xffu) ^ ((0u - hi) & 0x1bu) ^ ((0u - bit) & a);
    }
    return (uint8_t)r;
}

uint8_t cl_gf256_inv(uint8_t a)
{
    /* a^254 = a^-1 in GF(2^8) (and 0^254 = 0): a fixed chain of squarings
     * and multiplications, the same for every a. */
    uint8_t a2 = cl_gf256_mul(a, a);     /* a^2 */
    uint8_t a3 = cl_gf256_mul(a2, a);    /* a^3 */
    uint8_t a6 = cl_gf256_mul(a3, a3);   /* a^6 */
    uint8_t a12 = cl_gf256_mul(a6, a6);  /* a^12 */
    uint8_t a15 = cl_gf256_mul(a12, a3); /* a^15 */
    uint8_t r = cl_gf256_mul(a15, a15);  /* a^30 */
    r = cl_gf256_mul(r, r);              /* a^60 */
    r = cl_gf256_mul(r, r);              /* a^120 */
    r = cl_gf256_mul(r, r);              /* a^240 */
    r = cl_gf256_mul(r, a12);            /* a^252 */
    return cl_gf256_mul(r, a2);          /* a^254 */
}

int cl_shamir_share_parse(const uint8_t *data, size_t len, size_t secret_len, cl_shamir_share *out)
{
    memset(out, 0, sizeof *out);
    CL_ENSURE(secret_len <= CL_SHAMIR_MAX_SECRET, CL_EINVAL, "secret length %zu beyond %d", secret_len,
              CL_SHAMIR_MAX_SECRET);
    CL_ENSURE(data || !len, CL_EINVAL, "no share");
    cl_cursor c = cl_cursor_make(data, len);
    size_t n = secret_len ? secret_len : (len ? len - 1 : 0);
    CL_ENSURE(n >= 1 && n <= CL_SHAMIR_MAX_SECRET, CL_EPARSE,
              "a share is 2 to %d bytes (the secret, then its x coordinate), got %zu", CL_SHAMIR_MAX_SECRET + 1, len);
    const uint8_t *y;
    uint8_t x;
    if (cl_cursor_bytes(&c, n, &y) < 0 || cl_cursor_u8(&c, &x) < 0)
        return cl_error_set(CL_EPARSE, "a share of a %zu-byte secret is %zu bytes, got %zu", n, n + 1, len);
    CL_TRY(cl_cursor_expect_end(&c, "share"));
    CL_ENSURE(x != 0, CL_EPARSE, "a share's x coordinate cannot be 0 (that point is the secret)");
    *out = (cl_shamir_share){.y = y, .len = n, .x = x};
    return CL_OK;
}

/* count distinct public x values in 1..255, uniformly at random (a
 * partial Fisher-Yates shuffle of 1..255 with unbiased draws). */
static int random_xs(unsigned count, uint8_t *xs)
{
    uint8_t pool[255];
    for (unsigned i = 0; i < 255; i++)
        pool[i] = (uint8_t)(i + 1);
    for (unsigned i = 0; i < count; i++) {
        unsigned range = 255 - i, limit = 256 - 256 % range, r;
        do {
            uint8_t b;
            CL_ENSURE_OSSL(RAND_bytes(&b, 1) == 1, CL_ECRYPTO, "no randomness for the x coordinates");
            r = b;
        } while (r >= limit);
        unsigned j = i + r % range;
        uint8_t t = pool[i];
        pool[i] = pool[j];
        pool[j] = t;
        xs[i] = pool[i];
    }
    return CL_OK;
}

int cl_shamir_split(const uint8_t *secret, size_t len, unsigned parts, unsigned threshold, cl_buf *shares)
{
    CL_ENSURE(secret && len >= 1 && len <= CL_SHAMIR_MAX_SECRET, CL_EINVAL, "a secret is 1 to %d bytes",
              CL_SHAMIR_MAX_SECRET);
    CL_ENSURE(parts >= 2 && parts <= CL_SHAMIR_MAX_SHARES, CL_EINVAL, "2 to 255 shares, not %u", parts);
    CL_ENSURE(threshold >= 2 && threshold <= parts, CL_EINVAL, "a threshold of 2 to %u, not %u", parts, threshold);
    uint8_t xs[CL_SHAMIR_MAX_SHARES];
    CL_TRY(random_xs(parts, xs));
    int rc = CL_OK;
    for (unsigned p = 0; p < parts; p++) {
        cl_buf_reset(&shares[p]);
        CL_TRY_OUT(cl_buf_reserve(&shares[p], len + 1));
        shares[p].len = len + 1;
        shares[p].data[len] = xs[p];
    }
    /* one polynomial per byte: coefficient 0 is the secret byte, the others
     * random; coefficients live in wiped memory only */
    uint8_t coeff[CL_SHAMIR_MAX_SHARES];
    for (size_t i = 0; i < len; i++) {
        coeff[0] = secret[i];
        CL_ENSURE_OSSL_OUT(RAND_priv_bytes(coeff + 1, (int)threshold - 1) == 1, CL_ECRYPTO,
                           "no randomness for the polynomial");
        for (unsigned p = 0; p < parts; p++) {
            uint8_t y = coeff[threshold - 1]; /* Horner */
            for (unsigned k = threshold - 1; k-- > 0;)
                y = (uint8_t)(cl_gf256_mul(y, xs[p]) ^ coeff[k]);
            shares[p].data[i] = y;
        }
    }
out:
    cl_wipe(coeff, sizeof coeff);
    if (rc < 0)
        for (unsigned p = 0; p < parts; p++)
            cl_buf_free(&shares[p]);
    return rc;
}

int cl_shamir_interpolate(const cl_shamir_share *shares, size_t count, uint8_t x, uint8_t *out, size_t out_len)
{
    CL_ENSURE(shares && count >= 2 && count <= CL_SHAMIR_MAX_SHARES, CL_EINVAL, "2 to 255 shares are needed, got %zu",
              count);
    size_t n = shares[0].len;
    CL_ENSURE(n >= 1 && out_len == n, CL_EINVAL, "the output must be the shares' %zu bytes", n);
    for (size_t i = 0; i < count; i++) {
        CL_ENSURE(shares[i].len == n && shares[i].y, CL_EVERIFY, "the shares are of different lengths (%zu and %zu)",
                  n, shares[i].len);
        CL_ENSURE(shares[i].x != 0, CL_EVERIFY, "a share has x coordinate 0");
        for (size_t j = 0; j < i; j++)
            CL_ENSURE(shares[i].x != shares[j].x, CL_EVERIFY,
                      "two shares have the same x coordinate (%u): the same share twice?", shares[i].x);
    }
    /* Lagrange basis at x, from the public x coordinates only */
    uint8_t basis[CL_SHAMIR_MAX_SHARES];
    for (size_t i = 0; i < count; i++) {
        uint8_t num = 1, den = 1;
        for (size_t j = 0; j < count; j++) {
            if (j == i)
                continue;
            num = cl_gf256_mul(num, (uint8_t)(x ^ shares[j].x));
            den = cl_gf256_mul(den, (uint8_t)(shares[i].x ^ shares[j].x));
        }
        basis[i] = cl_gf256_mul(num, cl_gf256_inv(den));
    }
    for (size_t b = 0; b < n; b++) {
        uint8_t acc = 0;
        for (size_t i = 0; i < count; i++)
            acc ^= cl_gf256_mul(shares[i].y[b], basis[i]);
        out[b] = acc;
    }
    return CL_OK;
}

int cl_shamir_combine(const cl_shamir_share *shares, size_t count, uint8_t *secret, size_t len)
{
    return cl_shamir_interpolate(shares, count, 0, secret, len);
}

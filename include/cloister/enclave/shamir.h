/* Shamir's secret sharing over GF(2^8), in the share format of HashiCorp
 * Vault's shamir package (and of its Python port pyshamir, which AWS's
 * multi-party wallet workshop uses):
 *
 *   share = y[0] .. y[n-1] || x        (n = the secret's length, x in 1..255)
 *
 * Byte i of the secret is the constant term of its own random polynomial of
 * degree threshold-1; y[i] is that polynomial at x.  The field is AES's,
 * GF(2)[X] / (X^8 + X^4 + X^3 + X + 1).
 *
 * Every operation on secret bytes (shares' y values, coefficients, the
 * secret) is constant time: multiplication is shift-and-add with masks, an
 * inverse is a fixed chain of multiplications (a^254), there is no table
 * indexed by a secret and no branch on one.  The x coordinates are public
 * (they are in the shares) and may steer control flow: duplicates are
 * refused. */
#ifndef CLOISTER_SHAMIR_H
#define CLOISTER_SHAMIR_H

#pragma GCC visibility push(default)

#include "cloister/core/buf.h"
#include "cloister/core/error.h"

#include <stddef.h>
#include <stdint.h>

#define CL_SHAMIR_MAX_SECRET 1024
#define CL_SHAMIR_MAX_SHARES 255

/* A parsed share: y borrows from the bytes given to cl_shamir_share_parse. */
typedef struct cl_shamir_share {
    const uint8_t *y;
    size_t len; /* the secret's length */
    uint8_t x;
} cl_shamir_share;

/* GF(2^8) arithmetic in constant time (exposed for the tests). */
uint8_t cl_gf256_mul(uint8_t a, uint8_t b);
/* a^-1, and 0 for 0. */
uint8_t cl_gf256_inv(uint8_t a);

/* Reads one share of a secret of secret_len bytes (0: any length from 1 to
 * CL_SHAMIR_MAX_SECRET): exactly secret_len + 1 bytes, x not 0. */
CL_MUST_CHECK int cl_shamir_share_parse(const uint8_t *data, size_t len, size_t secret_len, cl_shamir_share *out);

/* Splits secret (1..CL_SHAMIR_MAX_SECRET bytes) into `parts` shares
 * (2..255), any `threshold` (2..parts) of which give it back.  shares[i]
 * receive the encoded shares (cl_bufs: wiped when freed); x coordinates
 * are distinct and random, coefficients from OpenSSL's private DRBG. */
CL_MUST_CHECK int cl_shamir_split(const uint8_t *secret, size_t len, unsigned parts, unsigned threshold,
                                  cl_buf *shares);

/* The value at x of the polynomial through the shares' points (count >= 2,
 * same length, distinct x), into out (the shares' length).  At x = 0 that
 * is the secret: cl_shamir_combine.  With fewer shares than the threshold
 * the result is unrelated to the secret, and nothing can tell. */
CL_MUST_CHECK int cl_shamir_interpolate(const cl_shamir_share *shares, size_t count, uint8_t x, uint8_t *out,
                                        size_t out_len);
CL_MUST_CHECK int cl_shamir_combine(const cl_shamir_share *shares, size_t count, uint8_t *secret, size_t len);

#pragma GCC visibility pop

#endif

/* The wallet's steps alone, in process (bench/wallet.sh): Shamir combine of
 * two shares, the public-key check, and each signature, N times each. */
#include "cloister/core/clock.h"
#include "cloister/enclave/shamir.h"
#include "wallet_crypto.h"

#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 2000;
    uint8_t key[WALLET_KEY_LEN], pub[WALLET_PUB_LEN], hash[32], out[WALLET_KEY_LEN], sig[WALLET_ETH_SIG_LEN];
    uint8_t der[WALLET_DER_SIG_MAX];
    size_t der_len;
    cl_buf shares[3] = {CL_BUF_INIT, CL_BUF_INIT, CL_BUF_INIT};
    if (n <= 0 || wallet_crypto_init() < 0 || wallet_key_new(key) < 0 ||
        cl_shamir_split(key, sizeof key, 3, 2, shares) < 0 || RAND_bytes(hash, sizeof hash) != 1) {
        fprintf(stderr, "bench_sign: set-up failed\n");
        return 1;
    }
    cl_shamir_share s[2];
    if (cl_shamir_share_parse(shares[0].data, shares[0].len, 32, &s[0]) < 0 ||
        cl_shamir_share_parse(shares[1].data, shares[1].len, 32, &s[1]) < 0)
        return 1;
    struct {
        const char *name;
        int which;
    } steps[] = {{"combine", 0}, {"pubkey_check", 1}, {"sign_ethereum", 2}, {"sign_plain", 3}};
    for (size_t k = 0; k < sizeof steps / sizeof steps[0]; k++) {
        uint64_t t0 = cl_monotonic_us();
        for (int i = 0; i < n; i++) {
            int rc = 0;
            switch (steps[k].which) {
            case 0: rc = cl_shamir_combine(s, 2, out, sizeof out); break;
            case 1: rc = wallet_key_public(key, pub); break;
            case 2: rc = wallet_sign_ethereum(key, hash, sig); break;
            default: rc = wallet_sign_plain(key, hash, sizeof hash, der, &der_len);
            }
            if (rc < 0)
                return 1;
        }
        double us = (double)(cl_monotonic_us() - t0) / n;
        printf("%s_us=%.1f %s_per_s=%.0f\n", steps[k].name, us, steps[k].name, 1e6 / us);
    }
    for (int i = 0; i < 3; i++)
        cl_buf_free(&shares[i]);
    return 0;
}

/* The wallet's cryptography: secp256k1 keys and signatures (libsecp256k1),
 * the recovery share's encryption to a P-384 key (OpenSSL: ECDH,
 * HKDF-SHA256, AES-256-GCM, as AWS's workshop does it). */
#ifndef WALLET_CRYPTO_H
#define WALLET_CRYPTO_H

#include "cloister/core/buf.h"
#include "cloister/core/error.h"

#include <stddef.h>
#include <stdint.h>

#define WALLET_KEY_LEN 32
#define WALLET_PUB_LEN 33 /* SEC1 compressed */
#define WALLET_DER_SIG_MAX 72
#define WALLET_ETH_SIG_LEN 65 /* r || s || v */

/* One libsecp256k1 context for the process (signing, verification),
 * randomized once; call before any of the rest. */
CL_MUST_CHECK int wallet_crypto_init(void);

/* A fresh private key (a scalar in 1..n-1) from OpenSSL's private DRBG. */
CL_MUST_CHECK int wallet_key_new(uint8_t key[WALLET_KEY_LEN]);
/* CL_EVERIFY when key is not a valid scalar (0 or >= n). */
CL_MUST_CHECK int wallet_key_public(const uint8_t key[WALLET_KEY_LEN], uint8_t pub[WALLET_PUB_LEN]);

/* The workshop's signature: ECDSA over SHA-256(msg), DER; low-S (libsecp256k1
 * always normalizes), deterministic nonce (RFC 6979). */
CL_MUST_CHECK int wallet_sign_plain(const uint8_t key[WALLET_KEY_LEN], const uint8_t *msg, size_t len,
                                    uint8_t der[WALLET_DER_SIG_MAX], size_t *der_len);
/* Ethereum: recoverable ECDSA over a 32-byte hash, low-S, r || s || v with
 * v = 27 + recovery id. */
CL_MUST_CHECK int wallet_sign_ethereum(const uint8_t key[WALLET_KEY_LEN], const uint8_t hash[32],
                                       uint8_t sig[WALLET_ETH_SIG_LEN]);

/* Encrypts plaintext to the recovery key: recovery_pem is the PEM of a P-384
 * SubjectPublicKeyInfo (anything else is CL_EPARSE/CL_EVERIFY).  An
 * ephemeral P-384 key, ECDH, HKDF-SHA256 (no salt, info "handshake data",
 * 32 bytes), AES-256-GCM with a random 12-byte IV: *sealed = IV || ciphertext
 * || 16-byte tag; *ephemeral_pem the ephemeral public key's PEM. */
CL_MUST_CHECK int wallet_recovery_seal(const uint8_t *recovery_pem, size_t pem_len, const uint8_t *plaintext,
                                       size_t len, cl_buf *sealed, cl_buf *ephemeral_pem);
/* The opposite, given the recovery private key's PEM (for tests and tools). */
CL_MUST_CHECK int wallet_recovery_open(const uint8_t *private_pem, size_t pem_len, const uint8_t *ephemeral_pem,
                                       size_t eph_len, const uint8_t *sealed, size_t sealed_len, cl_buf *plaintext);

#endif

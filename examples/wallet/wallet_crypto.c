/* The wallet's cryptography (wallet_crypto.h).  libsecp256k1 for the key
 * and its signatures: constant-time scalar arithmetic written for exactly
 * this curve, low-S and recoverable signatures built in.  OpenSSL for the
 * rest, which is standard (SHA-256, P-384 ECDH, HKDF, AES-GCM). */
#include "wallet_crypto.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <secp256k1.h>
#include <secp256k1_recovery.h>
#include <string.h>

#define HKDF_INFO "handshake data" /* the workshop's */
#define GCM_IV_LEN 12
#define GCM_TAG_LEN 16
#define AES_KEY_LEN 32

static secp256k1_context *ctx;

int wallet_crypto_init(void)
{
    if (ctx)
        return CL_OK;
    ctx = secp256k1_context_create(SECP256K1_CONTEXT_NONE);
    CL_ENSURE(ctx, CL_ENOMEM, "no libsecp256k1 context");
    uint8_t seed[32];
    CL_ENSURE_OSSL(RAND_priv_bytes(seed, sizeof seed) == 1, CL_ECRYPTO, "no randomness");
    /* blinding against side channels in key generation and signing */
    int ok = secp256k1_context_randomize(ctx, seed);
    cl_wipe(seed, sizeof seed);
    CL_ENSURE(ok, CL_ECRYPTO, "libsecp256k1 refused the blinding seed");
    return CL_OK;
}

int wallet_key_new(uint8_t key[WALLET_KEY_LEN])
{
    /* a scalar outside 1..n-1 has probability ~2^-128: draw again */
    for (int i = 0; i < 16; i++) {
        CL_ENSURE_OSSL(RAND_priv_bytes(key, WALLET_KEY_LEN) == 1, CL_ECRYPTO, "no randomness for the key");
        if (secp256k1_ec_seckey_verify(ctx, key))
            return CL_OK;
    }
    cl_wipe(key, WALLET_KEY_LEN);
    return cl_error_set(CL_ECRYPTO, "no valid secp256k1 key after 16 draws: the random generator is broken");
}

int wallet_key_public(const uint8_t key[WALLET_KEY_LEN], uint8_t pub[WALLET_PUB_LEN])
{
    secp256k1_pubkey pk;
    CL_ENSURE(secp256k1_ec_pubkey_create(ctx, &pk, key), CL_EVERIFY,
              "the combined key is not a valid secp256k1 private key");
    size_t len = WALLET_PUB_LEN;
    CL_ENSURE(secp256k1_ec_pubkey_serialize(ctx, pub, &len, &pk, SECP256K1_EC_COMPRESSED) && len == WALLET_PUB_LEN,
              CL_ECRYPTO, "cannot serialize the public key");
    return CL_OK;
}

int wallet_sign_plain(const uint8_t key[WALLET_KEY_LEN], const uint8_t *msg, size_t len,
                      uint8_t der[WALLET_DER_SIG_MAX], size_t *der_len)
{
    uint8_t hash[32];
    unsigned hlen = 0;
    CL_ENSURE_OSSL(EVP_Digest(msg, len, hash, &hlen, EVP_sha256(), NULL) == 1 && hlen == 32, CL_ECRYPTO,
                   "SHA-256 failed");
    secp256k1_ecdsa_signature sig;
    CL_ENSURE(secp256k1_ecdsa_sign(ctx, &sig, hash, key, NULL, NULL), CL_EVERIFY, "signing failed: invalid key");
    *der_len = WALLET_DER_SIG_MAX;
    CL_ENSURE(secp256k1_ecdsa_signature_serialize_der(ctx, der, der_len, &sig), CL_ECRYPTO,
              "cannot serialize the signature");
    return CL_OK;
}

int wallet_sign_ethereum(const uint8_t key[WALLET_KEY_LEN], const uint8_t hash[32], uint8_t sig[WALLET_ETH_SIG_LEN])
{
    secp256k1_ecdsa_recoverable_signature rs;
    CL_ENSURE(secp256k1_ecdsa_sign_recoverable(ctx, &rs, hash, key, NULL, NULL), CL_EVERIFY,
              "signing failed: invalid key");
    int recid = 0;
    CL_ENSURE(secp256k1_ecdsa_recoverable_signature_serialize_compact(ctx, sig, &recid, &rs) && recid >= 0 &&
                  recid <= 3,
              CL_ECRYPTO, "cannot serialize the signature");
    /* libsecp256k1 signs low-S, so recid is 0 or 1 but for r >= n (never seen) */
    sig[64] = (uint8_t)(27 + recid);
    return CL_OK;
}

/* ---- the recovery share --------------------------------------------------- */

static int read_p384_public(const uint8_t *pem, size_t len, EVP_PKEY **out)
{
    *out = NULL;
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    CL_ENSURE_OSSL(bio, CL_ENOMEM, "no memory");
    EVP_PKEY *k = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
    BIO_free(bio);
    CL_ENSURE_OSSL(k, CL_EPARSE, "the recovery public key is not a PEM public key");
    char group[32] = "";
    size_t glen = 0;
    if (EVP_PKEY_get_base_id(k) != EVP_PKEY_EC ||
        !EVP_PKEY_get_utf8_string_param(k, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, &glen) ||
        strcmp(group, "secp384r1")) {
        EVP_PKEY_free(k);
        return cl_error_set(CL_EVERIFY, "the recovery public key must be an EC P-384 (secp384r1) key");
    }
    *out = k;
    return CL_OK;
}

/* ECDH, then HKDF-SHA256 into a 32-byte AES key. */
static int derive_key(EVP_PKEY *mine, EVP_PKEY *peer, uint8_t key[AES_KEY_LEN])
{
    int rc = CL_OK;
    uint8_t shared[48];
    size_t shared_len = sizeof shared;
    EVP_PKEY_CTX *dh = EVP_PKEY_CTX_new(mine, NULL);
    EVP_PKEY_CTX *kdf = NULL;
    CL_ENSURE_OSSL_OUT(dh && EVP_PKEY_derive_init(dh) == 1 && EVP_PKEY_derive_set_peer(dh, peer) == 1 &&
                           EVP_PKEY_derive(dh, shared, &shared_len) == 1,
                       CL_ECRYPTO, "ECDH with the recovery key failed");
    kdf = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, NULL);
    size_t key_len = AES_KEY_LEN;
    CL_ENSURE_OSSL_OUT(kdf && EVP_PKEY_derive_init(kdf) == 1 && EVP_PKEY_CTX_set_hkdf_md(kdf, EVP_sha256()) == 1 &&
                           EVP_PKEY_CTX_set1_hkdf_key(kdf, shared, (int)shared_len) == 1 &&
                           EVP_PKEY_CTX_add1_hkdf_info(kdf, (const unsigned char *)HKDF_INFO,
                                                       (int)strlen(HKDF_INFO)) == 1 &&
                           EVP_PKEY_derive(kdf, key, &key_len) == 1 && key_len == AES_KEY_LEN,
                       CL_ECRYPTO, "HKDF failed");
out:
    cl_wipe(shared, sizeof shared);
    EVP_PKEY_CTX_free(dh);
    EVP_PKEY_CTX_free(kdf);
    return rc;
}

int wallet_recovery_seal(const uint8_t *recovery_pem, size_t pem_len, const uint8_t *plaintext, size_t len,
                         cl_buf *sealed, cl_buf *ephemeral_pem)
{
    EVP_PKEY *peer = NULL, *eph = NULL;
    EVP_CIPHER_CTX *c = NULL;
    BIO *bio = NULL;
    uint8_t key[AES_KEY_LEN];
    int rc = CL_OK;
    cl_buf_reset(sealed);
    cl_buf_reset(ephemeral_pem);
    CL_TRY_OUT(read_p384_public(recovery_pem, pem_len, &peer));
    eph = EVP_EC_gen("P-384");
    CL_ENSURE_OSSL_OUT(eph, CL_ECRYPTO, "cannot make the ephemeral P-384 key");
    CL_TRY_OUT(derive_key(eph, peer, key));
    CL_TRY_OUT(cl_buf_reserve(sealed, GCM_IV_LEN + len + GCM_TAG_LEN));
    uint8_t *iv = sealed->data, *ct = sealed->data + GCM_IV_LEN;
    CL_ENSURE_OSSL_OUT(RAND_bytes(iv, GCM_IV_LEN) == 1, CL_ECRYPTO, "no randomness for the IV");
    c = EVP_CIPHER_CTX_new();
    int outl = 0, fin = 0;
    CL_ENSURE_OSSL_OUT(c && EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, iv) == 1 &&
                           EVP_EncryptUpdate(c, ct, &outl, plaintext, (int)len) == 1 &&
                           EVP_EncryptFinal_ex(c, ct + outl, &fin) == 1 && (size_t)(outl + fin) == len &&
                           EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, GCM_TAG_LEN, ct + len) == 1,
                       CL_ECRYPTO, "AES-256-GCM failed");
    sealed->len = GCM_IV_LEN + len + GCM_TAG_LEN;
    bio = BIO_new(BIO_s_mem());
    CL_ENSURE_OSSL_OUT(bio && PEM_write_bio_PUBKEY(bio, eph) == 1, CL_ECRYPTO, "cannot write the ephemeral key");
    char *p = NULL;
    long n = BIO_get_mem_data(bio, &p);
    CL_ENSURE_OUT(n > 0, CL_ECRYPTO, "cannot write the ephemeral key");
    CL_TRY_OUT(cl_buf_append(ephemeral_pem, p, (size_t)n));
out:
    cl_wipe(key, sizeof key);
    EVP_CIPHER_CTX_free(c);
    BIO_free(bio);
    EVP_PKEY_free(peer);
    EVP_PKEY_free(eph);
    if (rc < 0) {
        cl_buf_free(sealed);
        cl_buf_free(ephemeral_pem);
    }
    return rc;
}

int wallet_recovery_open(const uint8_t *private_pem, size_t pem_len, const uint8_t *ephemeral_pem, size_t eph_len,
                         const uint8_t *sealed, size_t sealed_len, cl_buf *plaintext)
{
    EVP_PKEY *mine = NULL, *eph = NULL;
    EVP_CIPHER_CTX *c = NULL;
    uint8_t key[AES_KEY_LEN];
    int rc = CL_OK;
    cl_buf_reset(plaintext);
    CL_ENSURE(sealed_len > GCM_IV_LEN + GCM_TAG_LEN, CL_EPARSE, "the sealed share is too short");
    BIO *bio = BIO_new_mem_buf(private_pem, (int)pem_len);
    CL_ENSURE_OSSL(bio, CL_ENOMEM, "no memory");
    mine = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    BIO_free(bio);
    CL_ENSURE_OSSL_OUT(mine, CL_EPARSE, "not a PEM private key");
    CL_TRY_OUT(read_p384_public(ephemeral_pem, eph_len, &eph));
    CL_TRY_OUT(derive_key(mine, eph, key));
    size_t len = sealed_len - GCM_IV_LEN - GCM_TAG_LEN;
    CL_TRY_OUT(cl_buf_reserve(plaintext, len + 16));
    c = EVP_CIPHER_CTX_new();
    int outl = 0, fin = 0;
    CL_ENSURE_OSSL_OUT(c && EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, sealed) == 1 &&
                           EVP_DecryptUpdate(c, plaintext->data, &outl, sealed + GCM_IV_LEN, (int)len) == 1 &&
                           EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, GCM_TAG_LEN,
                                               (void *)(sealed + sealed_len - GCM_TAG_LEN)) == 1,
                       CL_ECRYPTO, "AES-256-GCM failed");
    CL_ENSURE_OUT(EVP_DecryptFinal_ex(c, plaintext->data + outl, &fin) == 1, CL_EVERIFY,
                  "the sealed share does not open with this key (tag mismatch)");
    plaintext->len = (size_t)(outl + fin);
out:
    cl_wipe(key, sizeof key);
    EVP_CIPHER_CTX_free(c);
    EVP_PKEY_free(mine);
    EVP_PKEY_free(eph);
    if (rc < 0)
        cl_buf_free(plaintext);
    return rc;
}

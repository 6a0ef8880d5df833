/* p11probe: drives a PKCS#11 module (libcloister-pkcs11.so directly, or
 * p11-kit's client module in front of `p11-kit server`) the way libp11 and
 * pkcs11-tool do, and checks every answer against the standard and every
 * signature with OpenSSL.  One "ok ..." line per check; exit 1 at the first
 * failure.
 *
 *   p11probe MODULE check TOKEN PIN [--rpc]   objects, attributes, sensitivity,
 *                                            every mechanism, decrypt, random,
 *                                            unsupported functions
 *   p11probe MODULE lockout TOKEN PIN N      N wrong PINs lock the token
 *   p11probe MODULE sign TOKEN PIN COUNT     COUNT ECDSA/RSA signatures, verified
 *   p11probe MODULE args                     bad arguments and call order
 *
 * --rpc: through p11-kit 0.24's RPC, which does not carry the parameters of
 * the combined hash+PSS mechanisms: those must fail with CKR_MECHANISM_INVALID
 * there (and work directly). */
#include <p11-kit/pkcs11.h>

#include <dlfcn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static CK_FUNCTION_LIST *f;
static bool rpc;

/* the mechanisms p11-kit 0.24's RPC drops from lists and refuses */
static bool rpc_filtered(CK_MECHANISM_TYPE m)
{
    return m == CKM_ECDSA_SHA256 || m == CKM_ECDSA_SHA384 || m == CKM_SHA256_RSA_PKCS_PSS;
}

#define CHECK(cond, ...)                                                                                     \
    do {                                                                                                     \
        if (!(cond)) {                                                                                       \
            fprintf(stderr, "FAIL: " __VA_ARGS__);                                                           \
            fprintf(stderr, "\n");                                                                           \
            exit(1);                                                                                         \
        }                                                                                                    \
    } while (0)
#define RV(call, want)                                                                                       \
    do {                                                                                                     \
        CK_RV rv_ = (call);                                                                                  \
        CHECK(rv_ == (want), "%s returned 0x%lx, expected 0x%lx (%s)", #call, (unsigned long)rv_,            \
              (unsigned long)(want), #want);                                                                 \
    } while (0)

static CK_SLOT_ID find_slot(const char *label)
{
    CK_SLOT_ID slots[64];
    CK_ULONG n = 64;
    RV(f->C_GetSlotList(CK_TRUE, slots, &n), CKR_OK);
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        RV(f->C_GetTokenInfo(slots[i], &ti), CKR_OK);
        size_t l = strlen(label);
        if (!memcmp(ti.label, label, l) && (l == 32 || ti.label[l] == ' '))
            return slots[i];
    }
    fprintf(stderr, "p11probe: %lu slots:", (unsigned long)n);
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (f->C_GetTokenInfo(slots[i], &ti) == CKR_OK)
            fprintf(stderr, " '%.32s'", (const char *)ti.label);
    }
    fprintf(stderr, "\n");
    CHECK(0, "no token labelled %s", label);
    return 0;
}

static CK_OBJECT_HANDLE find_one(CK_SESSION_HANDLE s, CK_OBJECT_CLASS klass)
{
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &klass, sizeof klass}};
    CK_OBJECT_HANDLE h[4];
    CK_ULONG n = 0;
    RV(f->C_FindObjectsInit(s, t, 1), CKR_OK);
    RV(f->C_FindObjects(s, h, 4, &n), CKR_OK);
    RV(f->C_FindObjectsFinal(s), CKR_OK);
    return n == 1 ? h[0] : CK_INVALID_HANDLE;
}

static EVP_PKEY *public_key(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE cert)
{
    uint8_t der[8192];
    CK_ATTRIBUTE a = {CKA_VALUE, der, sizeof der};
    RV(f->C_GetAttributeValue(s, cert, &a, 1), CKR_OK);
    const uint8_t *p = der;
    X509 *x = d2i_X509(NULL, &p, (long)a.ulValueLen);
    CHECK(x, "certificate CKA_VALUE is not DER X.509");
    EVP_PKEY *k = X509_get_pubkey(x);
    X509_free(x);
    return k;
}

static CK_ULONG get_ulong(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t)
{
    CK_ULONG v = 0;
    CK_ATTRIBUTE a = {t, &v, sizeof v};
    RV(f->C_GetAttributeValue(s, o, &a, 1), CKR_OK);
    return v;
}

static bool get_bool(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t)
{
    CK_BBOOL v = 2;
    CK_ATTRIBUTE a = {t, &v, sizeof v};
    RV(f->C_GetAttributeValue(s, o, &a, 1), CKR_OK);
    CHECK(v == CK_TRUE || v == CK_FALSE, "attribute 0x%lx not a CK_BBOOL", (unsigned long)t);
    return v == CK_TRUE;
}

/* OpenSSL's verdict on a signature made through the module. */
static void verify(EVP_PKEY *pub, const char *mdname, int pad, const uint8_t *msg, size_t len, const uint8_t *sig,
                   size_t sig_len, bool raw_ecdsa, const char *what)
{
    uint8_t der[256];
    if (raw_ecdsa) {
        ECDSA_SIG *es = ECDSA_SIG_new();
        size_t half = sig_len / 2;
        ECDSA_SIG_set0(es, BN_bin2bn(sig, (int)half, NULL), BN_bin2bn(sig + half, (int)half, NULL));
        uint8_t *p = der;
        sig_len = (size_t)i2d_ECDSA_SIG(es, &p);
        sig = der;
        ECDSA_SIG_free(es);
    }
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pc = NULL;
    int ok = EVP_DigestVerifyInit_ex(md, &pc, mdname, NULL, NULL, pub, NULL) == 1;
    if (ok && pad)
        ok = EVP_PKEY_CTX_set_rsa_padding(pc, pad) == 1 &&
             (pad != RSA_PKCS1_PSS_PADDING || EVP_PKEY_CTX_set_rsa_pss_saltlen(pc, RSA_PSS_SALTLEN_DIGEST) == 1);
    ok = ok && EVP_DigestVerify(md, sig, sig_len, msg, len) == 1;
    EVP_MD_CTX_free(md);
    ERR_clear_error();
    CHECK(ok, "%s: signature does not verify", what);
}

static size_t sign(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, CK_MECHANISM *m, const uint8_t *in, size_t len,
                   uint8_t *sig, bool multipart)
{
    RV(f->C_SignInit(s, m, key), CKR_OK);
    CK_ULONG sl = 0;
    if (multipart) {
        RV(f->C_SignUpdate(s, (CK_BYTE_PTR)in, len / 2), CKR_OK);
        RV(f->C_SignUpdate(s, (CK_BYTE_PTR)in + len / 2, len - len / 2), CKR_OK);
        RV(f->C_SignFinal(s, NULL, &sl), CKR_OK);
        RV(f->C_SignFinal(s, sig, &sl), CKR_OK);
        return sl;
    }
    RV(f->C_Sign(s, (CK_BYTE_PTR)in, len, NULL, &sl), CKR_OK); /* length query keeps the operation */
    CK_ULONG small = 1;
    RV(f->C_Sign(s, (CK_BYTE_PTR)in, len, sig, &small), CKR_BUFFER_TOO_SMALL);
    RV(f->C_Sign(s, (CK_BYTE_PTR)in, len, sig, &sl), CKR_OK);
    return sl;
}

static void digest(const char *name, const uint8_t *in, size_t len, uint8_t *out, unsigned *out_len)
{
    EVP_Digest(in, len, out, out_len, EVP_get_digestbyname(name), NULL);
}

static void check_ec(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, EVP_PKEY *pub)
{
    static const uint8_t msg[] = "the quick brown fox jumps over the lazy dog";
    uint8_t sig[256], d[64];
    unsigned dl;
    const char *names[] = {"SHA256", "SHA384"};
    CK_MECHANISM_TYPE mt[] = {CKM_ECDSA_SHA256, CKM_ECDSA_SHA384};
    for (int i = 0; i < 2; i++) {
        digest(names[i], msg, sizeof msg, d, &dl);
        CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
        size_t n = sign(s, key, &m, d, dl, sig, false);
        CHECK(n == 2 * (size_t)((EVP_PKEY_get_bits(pub) + 7) / 8), "CKM_ECDSA signature of %zu bytes", n);
        verify(pub, names[i], 0, msg, sizeof msg, sig, n, true, "CKM_ECDSA");
        CK_MECHANISM m2 = {mt[i], NULL, 0};
        if (rpc) {
            CK_RV rv = f->C_SignInit(s, &m2, key);
            CHECK(rv == CKR_MECHANISM_INVALID, "%s through the RPC: 0x%lx", names[i], (unsigned long)rv);
            continue;
        }
        n = sign(s, key, &m2, msg, sizeof msg, sig, false);
        verify(pub, names[i], 0, msg, sizeof msg, sig, n, true, names[i]);
        n = sign(s, key, &m2, msg, sizeof msg, sig, true);
        verify(pub, names[i], 0, msg, sizeof msg, sig, n, true, "multi-part");
    }
    printf(rpc ? "ok   ECDSA verifies with OpenSSL; ECDSA_SHA256/384 refused by the RPC (CKR_MECHANISM_INVALID)\n"
               : "ok   ECDSA, ECDSA_SHA256, ECDSA_SHA384 (single and multi-part) verify with OpenSSL\n");
    CK_MECHANISM rsa = {CKM_RSA_PKCS, NULL, 0};
    RV(f->C_SignInit(s, &rsa, key), CKR_KEY_TYPE_INCONSISTENT);
    CK_MECHANISM dec = {CKM_RSA_PKCS, NULL, 0};
    RV(f->C_DecryptInit(s, &dec, key), CKR_KEY_TYPE_INCONSISTENT);
    printf("ok   RSA mechanisms on an EC key: CKR_KEY_TYPE_INCONSISTENT\n");
}

static void check_rsa(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, EVP_PKEY *pub)
{
    static const uint8_t msg[] = "the quick brown fox jumps over the lazy dog";
    uint8_t sig[1024], d[64], in[1024];
    unsigned dl;
    size_t k = (size_t)EVP_PKEY_get_size(pub);
    /* CKM_RSA_PKCS over a DigestInfo */
    static const uint8_t di256[] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                    0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};
    digest("SHA256", msg, sizeof msg, d, &dl);
    memcpy(in, di256, sizeof di256);
    memcpy(in + sizeof di256, d, dl);
    CK_MECHANISM m = {CKM_RSA_PKCS, NULL, 0};
    size_t n = sign(s, key, &m, in, sizeof di256 + dl, sig, false);
    CHECK(n == k, "CKM_RSA_PKCS signature of %zu bytes", n);
    verify(pub, "SHA256", RSA_PKCS1_PADDING, msg, sizeof msg, sig, n, false, "CKM_RSA_PKCS");
    CK_MECHANISM_TYPE pk[] = {CKM_SHA256_RSA_PKCS, CKM_SHA384_RSA_PKCS};
    const char *names[] = {"SHA256", "SHA384"};
    for (int i = 0; i < 2; i++) {
        CK_MECHANISM mm = {pk[i], NULL, 0};
        n = sign(s, key, &mm, msg, sizeof msg, sig, i == 1);
        verify(pub, names[i], RSA_PKCS1_PADDING, msg, sizeof msg, sig, n, false, names[i]);
    }
    printf("ok   RSA_PKCS, SHA256_RSA_PKCS, SHA384_RSA_PKCS (multi-part) verify with OpenSSL\n");
    CK_RSA_PKCS_PSS_PARAMS pss = {CKM_SHA256, CKG_MGF1_SHA256, 32};
    CK_MECHANISM mp = {CKM_RSA_PKCS_PSS, &pss, sizeof pss};
    n = sign(s, key, &mp, d, dl, sig, false);
    verify(pub, "SHA256", RSA_PKCS1_PSS_PADDING, msg, sizeof msg, sig, n, false, "CKM_RSA_PKCS_PSS");
    CK_MECHANISM mps = {CKM_SHA256_RSA_PKCS_PSS, &pss, sizeof pss};
    if (rpc) {
        CK_RV rv = f->C_SignInit(s, &mps, key);
        CHECK(rv == CKR_MECHANISM_INVALID, "SHA256_RSA_PKCS_PSS through p11-kit 0.24 RPC: 0x%lx (did the RPC learn "
              "it? then drop --rpc's expectation)", (unsigned long)rv);
        printf("ok   RSA_PKCS_PSS verifies; SHA256_RSA_PKCS_PSS is refused by p11-kit's RPC (CKR_MECHANISM_INVALID)\n");
    } else {
        n = sign(s, key, &mps, msg, sizeof msg, sig, true);
        verify(pub, "SHA256", RSA_PKCS1_PSS_PADDING, msg, sizeof msg, sig, n, false, "SHA256_RSA_PKCS_PSS");
        printf("ok   RSA_PKCS_PSS and SHA256_RSA_PKCS_PSS verify with OpenSSL\n");
    }
    CK_RSA_PKCS_PSS_PARAMS bad = {CKM_SHA384, CKG_MGF1_SHA256, 32};
    CK_MECHANISM mb = {CKM_RSA_PKCS_PSS, &bad, sizeof bad};
    RV(f->C_SignInit(s, &mb, key), CKR_OK);
    CK_ULONG sl = sizeof sig;
    RV(f->C_Sign(s, d, dl, sig, &sl), CKR_DATA_LEN_RANGE); /* a SHA-256 digest for SHA-384 */
    printf("ok   PSS with a digest of the wrong length: CKR_DATA_LEN_RANGE\n");

    /* CKM_RSA_X_509: raw; OpenSSL's public operation gives the input back */
    memset(in, 0, k);
    in[k - 1] = 0x42;
    in[1] = 0x17;
    CK_MECHANISM mx = {CKM_RSA_X_509, NULL, 0};
    n = sign(s, key, &mx, in, k, sig, false);
    uint8_t back[1024];
    size_t bl = sizeof back;
    EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_from_pkey(NULL, pub, NULL);
    CHECK(pc && EVP_PKEY_verify_recover_init(pc) == 1 && EVP_PKEY_CTX_set_rsa_padding(pc, RSA_NO_PADDING) == 1 &&
              EVP_PKEY_verify_recover(pc, back, &bl, sig, n) == 1 && bl == k && !memcmp(back, in, k),
          "CKM_RSA_X_509 does not invert with the public key");
    EVP_PKEY_CTX_free(pc);
    printf("ok   RSA_X_509 inverts with the public key\n");

    /* decryption: PKCS#1 v1.5 and OAEP (SHA-256, with a label) */
    static const uint8_t secret[] = "session key material";
    for (int oaep = 0; oaep < 2; oaep++) {
        uint8_t ct[1024], pt[1024];
        size_t cl = sizeof ct;
        pc = EVP_PKEY_CTX_new_from_pkey(NULL, pub, NULL);
        int ok = pc && EVP_PKEY_encrypt_init(pc) == 1 &&
                 EVP_PKEY_CTX_set_rsa_padding(pc, oaep ? RSA_PKCS1_OAEP_PADDING : RSA_PKCS1_PADDING) == 1;
        if (ok && oaep)
            ok = EVP_PKEY_CTX_set_rsa_oaep_md(pc, EVP_sha256()) == 1 &&
                 EVP_PKEY_CTX_set_rsa_mgf1_md(pc, EVP_sha256()) == 1 &&
                 EVP_PKEY_CTX_set0_rsa_oaep_label(pc, OPENSSL_strdup("lbl"), 3) == 1;
        ok = ok && EVP_PKEY_encrypt(pc, ct, &cl, secret, sizeof secret) == 1;
        EVP_PKEY_CTX_free(pc);
        CHECK(ok, "OpenSSL encryption");
        CK_RSA_PKCS_OAEP_PARAMS op = {CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, "lbl", 3};
        CK_MECHANISM md = {oaep ? CKM_RSA_PKCS_OAEP : CKM_RSA_PKCS, oaep ? &op : NULL, oaep ? sizeof op : 0};
        RV(f->C_DecryptInit(s, &md, key), CKR_OK);
        CK_ULONG pl = 0;
        RV(f->C_Decrypt(s, ct, cl, NULL, &pl), CKR_OK);
        CHECK(pl >= sizeof secret, "decrypt length query %lu", (unsigned long)pl);
        pl = sizeof pt;
        RV(f->C_Decrypt(s, ct, cl, pt, &pl), CKR_OK);
        CHECK(pl == sizeof secret && !memcmp(pt, secret, pl), "decrypted plaintext differs");
        /* a flipped byte fails cleanly */
        ct[cl / 2] ^= 1;
        RV(f->C_DecryptInit(s, &md, key), CKR_OK);
        pl = sizeof pt;
        CK_RV rv = f->C_Decrypt(s, ct, cl, pt, &pl);
        CHECK(rv == CKR_ENCRYPTED_DATA_INVALID || (rv == CKR_OK && (pl != sizeof secret || memcmp(pt, secret, pl))),
              "a corrupted ciphertext decrypted to the plaintext (0x%lx)", (unsigned long)rv);
    }
    printf("ok   C_Decrypt with RSA_PKCS and RSA_PKCS_OAEP (SHA-256, label) round-trips; corruption fails\n");
    CK_MECHANISM ec = {CKM_ECDSA, NULL, 0};
    RV(f->C_SignInit(s, &ec, key), CKR_KEY_TYPE_INCONSISTENT);
    printf("ok   CKM_ECDSA on an RSA key: CKR_KEY_TYPE_INCONSISTENT\n");
}

static void check_unsupported(CK_SESSION_HANDLE s, CK_SLOT_ID slot, CK_OBJECT_HANDLE key)
{
    CK_OBJECT_HANDLE h;
    CK_ULONG n = 0;
    CK_MECHANISM m = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    CK_MECHANISM sha = {CKM_SHA256, NULL, 0};
    CK_BBOOL t = CK_TRUE;
    CK_ATTRIBUTE a = {CKA_EXTRACTABLE, &t, sizeof t};
    uint8_t buf[64];
    CK_ULONG bl = sizeof buf;
    RV(f->C_CreateObject(s, &a, 1, &h), CKR_FUNCTION_NOT_SUPPORTED);
    RV(f->C_SetAttributeValue(s, key, &a, 1), CKR_FUNCTION_NOT_SUPPORTED);
    RV(f->C_CopyObject(s, key, &a, 1, &h), CKR_FUNCTION_NOT_SUPPORTED);
    RV(f->C_DestroyObject(s, key), CKR_FUNCTION_NOT_SUPPORTED);
    RV(f->C_GenerateKeyPair(s, &m, NULL, 0, NULL, 0, &h, &h), CKR_FUNCTION_NOT_SUPPORTED);
    RV(f->C_WrapKey(s, &m, key, key, buf, &bl), CKR_FUNCTION_NOT_SUPPORTED);
    RV(f->C_DigestInit(s, &sha), CKR_FUNCTION_NOT_SUPPORTED);
    RV(f->C_EncryptInit(s, &m, key), CKR_FUNCTION_NOT_SUPPORTED);
    RV(f->C_VerifyInit(s, &m, key), CKR_FUNCTION_NOT_SUPPORTED);
    RV(f->C_SetPIN(s, (CK_UTF8CHAR_PTR) "1234", 4, (CK_UTF8CHAR_PTR) "5678", 4), CKR_FUNCTION_NOT_SUPPORTED);
    RV(f->C_InitToken(slot, (CK_UTF8CHAR_PTR) "1234", 4, (CK_UTF8CHAR_PTR) "x"), CKR_FUNCTION_NOT_SUPPORTED);
    (void)n;
    printf("ok   create/set/copy/destroy/generate/wrap/digest/encrypt/verify/SetPIN/InitToken: "
           "CKR_FUNCTION_NOT_SUPPORTED\n");
}

static int cmd_check(const char *label, const char *pin)
{
    CK_INFO info;
    RV(f->C_GetInfo(&info), CKR_OK);
    CK_SLOT_ID slot = find_slot(label);
    CK_TOKEN_INFO ti;
    RV(f->C_GetTokenInfo(slot, &ti), CKR_OK);
    CHECK((ti.flags & CKF_LOGIN_REQUIRED) && (ti.flags & CKF_TOKEN_INITIALIZED) && (ti.flags & CKF_RNG),
          "token flags 0x%lx", (unsigned long)ti.flags);
    CHECK(ti.serialNumber[0] != ' ', "token without a serial number");
    CK_MECHANISM_TYPE mechs[64];
    CK_ULONG nm = 64;
    RV(f->C_GetMechanismList(slot, mechs, &nm), CKR_OK);
    CK_MECHANISM_TYPE want[] = {CKM_ECDSA, CKM_ECDSA_SHA256, CKM_ECDSA_SHA384, CKM_RSA_PKCS, CKM_RSA_PKCS_PSS,
                                CKM_SHA256_RSA_PKCS, CKM_SHA384_RSA_PKCS, CKM_SHA256_RSA_PKCS_PSS, CKM_RSA_X_509,
                                CKM_RSA_PKCS_OAEP};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        bool found = false;
        for (CK_ULONG j = 0; j < nm; j++)
            found |= mechs[j] == want[i];
        if (rpc && rpc_filtered(want[i])) {
            CHECK(!found, "mechanism 0x%lx listed through p11-kit's RPC (did the RPC learn it? then drop --rpc's "
                  "expectation)", (unsigned long)want[i]);
            continue;
        }
        CHECK(found, "mechanism 0x%lx not listed", (unsigned long)want[i]);
        CK_MECHANISM_INFO mi;
        RV(f->C_GetMechanismInfo(slot, want[i], &mi), CKR_OK);
    }
    if (rpc)
        printf("ok   through p11-kit's RPC ECDSA_SHA256/384 and SHA256_RSA_PKCS_PSS are not listed (RPC limit)\n");
    RV(f->C_GetMechanismInfo(slot, CKM_MD5, &(CK_MECHANISM_INFO){0}), CKR_MECHANISM_INVALID);
    printf("ok   token '%s' found, flags and serial set, the %zu mechanisms listed with info\n", label,
           sizeof want / sizeof want[0]);

    CK_SESSION_HANDLE s;
    RV(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_OK);
    /* before login: public objects only, and no signing */
    CHECK(find_one(s, CKO_PRIVATE_KEY) == CK_INVALID_HANDLE, "private key visible before login");
    CK_OBJECT_HANDLE cert = find_one(s, CKO_CERTIFICATE);
    CHECK(cert != CK_INVALID_HANDLE, "no certificate object");
    RV(f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR) "00000000", 8), CKR_PIN_INCORRECT);
    RV(f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin)), CKR_OK);
    RV(f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin)), CKR_USER_ALREADY_LOGGED_IN);
    printf("ok   private objects hidden before login; wrong PIN: CKR_PIN_INCORRECT; login\n");

    CK_OBJECT_HANDLE key = find_one(s, CKO_PRIVATE_KEY), pubo = find_one(s, CKO_PUBLIC_KEY);
    CHECK(key != CK_INVALID_HANDLE && pubo != CK_INVALID_HANDLE, "no private/public key after login");
    CHECK(get_bool(s, key, CKA_SENSITIVE) && !get_bool(s, key, CKA_EXTRACTABLE) && get_bool(s, key, CKA_PRIVATE) &&
              get_bool(s, key, CKA_SIGN) && get_bool(s, key, CKA_TOKEN),
          "private key flags");
    uint8_t buf[4096];
    CK_ATTRIBUTE secret[] = {{CKA_VALUE, buf, sizeof buf}, {CKA_PRIVATE_EXPONENT, buf, sizeof buf},
                             {CKA_PRIME_1, buf, sizeof buf}};
    for (int i = 0; i < 3; i++) {
        RV(f->C_GetAttributeValue(s, key, &secret[i], 1), CKR_ATTRIBUTE_SENSITIVE);
        CHECK(secret[i].ulValueLen == CK_UNAVAILABLE_INFORMATION, "sensitive attribute length given");
    }
    CK_ATTRIBUTE unknown = {0x7fff0001UL, buf, sizeof buf};
    RV(f->C_GetAttributeValue(s, key, &unknown, 1), CKR_ATTRIBUTE_TYPE_INVALID);
    printf("ok   private key: SENSITIVE, not EXTRACTABLE; CKA_VALUE/PRIVATE_EXPONENT/PRIME_1: CKR_ATTRIBUTE_SENSITIVE\n");

    /* attributes libp11 reads, consistent with the certificate */
    CK_KEY_TYPE kt = get_ulong(s, key, CKA_KEY_TYPE);
    CK_ATTRIBUTE ids[2] = {{CKA_ID, NULL, 0}, {CKA_LABEL, NULL, 0}};
    RV(f->C_GetAttributeValue(s, key, ids, 2), CKR_OK);
    CHECK(ids[0].ulValueLen > 0 && ids[1].ulValueLen > 0, "key without CKA_ID/CKA_LABEL");
    EVP_PKEY *pub = public_key(s, cert);
    CHECK(pub, "certificate public key");
    CK_ATTRIBUTE spki = {CKA_PUBLIC_KEY_INFO, buf, sizeof buf};
    RV(f->C_GetAttributeValue(s, pubo, &spki, 1), CKR_OK);
    const uint8_t *p = buf;
    EVP_PKEY *pub2 = d2i_PUBKEY(NULL, &p, (long)spki.ulValueLen);
    CHECK(pub2 && EVP_PKEY_eq(pub, pub2) == 1, "public key object is not the certificate's key");
    EVP_PKEY_free(pub2);
    if (kt == CKK_EC) {
        CK_ATTRIBUTE ec[2] = {{CKA_EC_PARAMS, NULL, 0}, {CKA_EC_POINT, NULL, 0}};
        RV(f->C_GetAttributeValue(s, key, ec, 2), CKR_OK);
        CHECK(ec[0].ulValueLen > 2 && ec[1].ulValueLen > 60, "EC_PARAMS/EC_POINT lengths");
        check_ec(s, key, pub);
    } else {
        CHECK(kt == CKK_RSA, "key type %lu", (unsigned long)kt);
        CK_ATTRIBUTE rsa[2] = {{CKA_MODULUS, NULL, 0}, {CKA_PUBLIC_EXPONENT, NULL, 0}};
        RV(f->C_GetAttributeValue(s, key, rsa, 2), CKR_OK);
        CHECK(rsa[0].ulValueLen == (CK_ULONG)EVP_PKEY_get_size(pub), "CKA_MODULUS length");
        check_rsa(s, key, pub);
    }
    printf("ok   CKA_ID/LABEL/KEY_TYPE and the public parts match the certificate\n");

    uint8_t rnd[64] = {0}, zero[64] = {0};
    RV(f->C_GenerateRandom(s, rnd, sizeof rnd), CKR_OK);
    CHECK(memcmp(rnd, zero, sizeof rnd), "C_GenerateRandom gave zeros");
    printf("ok   C_GenerateRandom\n");
    check_unsupported(s, slot, key);

    RV(f->C_Logout(s), CKR_OK);
    CK_MECHANISM m = {kt == CKK_EC ? CKM_ECDSA : CKM_RSA_PKCS, NULL, 0};
    RV(f->C_SignInit(s, &m, key), CKR_USER_NOT_LOGGED_IN);
    RV(f->C_CloseSession(s), CKR_OK);
    RV(f->C_CloseSession(s), CKR_SESSION_HANDLE_INVALID);
    printf("ok   after logout signing needs a login; closed sessions are invalid\n");
    EVP_PKEY_free(pub);
    return 0;
}

static int cmd_lockout(const char *label, const char *pin, int tries)
{
    CK_SLOT_ID slot = find_slot(label);
    CK_SESSION_HANDLE s;
    RV(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_OK);
    for (int i = 1; i <= tries; i++) {
        CK_RV rv = f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR) "wrong-pin", 9);
        CHECK(rv == (i < tries ? CKR_PIN_INCORRECT : CKR_PIN_LOCKED), "wrong PIN %d: 0x%lx", i, (unsigned long)rv);
    }
    RV(f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin)), CKR_PIN_LOCKED);
    CK_TOKEN_INFO ti;
    RV(f->C_GetTokenInfo(slot, &ti), CKR_OK);
    CHECK(ti.flags & CKF_USER_PIN_LOCKED, "token not flagged locked");
    printf("ok   %d wrong PINs: CKR_PIN_INCORRECT then CKR_PIN_LOCKED; the right PIN is refused; "
           "CKF_USER_PIN_LOCKED\n", tries);
    return 0;
}

static int cmd_sign(const char *label, const char *pin, int count)
{
    CK_SLOT_ID slot = find_slot(label);
    CK_SESSION_HANDLE s;
    RV(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_OK);
    RV(f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin)), CKR_OK);
    CK_OBJECT_HANDLE key = find_one(s, CKO_PRIVATE_KEY), cert = find_one(s, CKO_CERTIFICATE);
    EVP_PKEY *pub = public_key(s, cert);
    bool ec = get_ulong(s, key, CKA_KEY_TYPE) == CKK_EC;
    static const uint8_t msg[] = "message";
    for (int i = 0; i < count; i++) {
        uint8_t sig[1024], d[32];
        unsigned dl;
        digest("SHA256", msg, sizeof msg, d, &dl);
        /* mechanisms p11-kit's RPC carries: CKM_ECDSA over a digest, SHA256_RSA_PKCS */
        CK_MECHANISM m = {ec ? CKM_ECDSA : CKM_SHA256_RSA_PKCS, NULL, 0};
        RV(f->C_SignInit(s, &m, key), CKR_OK);
        CK_ULONG sl = sizeof sig;
        RV(f->C_Sign(s, ec ? d : (CK_BYTE_PTR)msg, ec ? dl : sizeof msg, sig, &sl), CKR_OK);
        verify(pub, "SHA256", ec ? 0 : RSA_PKCS1_PADDING, msg, sizeof msg, sig, sl, ec, "signature");
    }
    printf("ok   %d signatures verified\n", count);
    EVP_PKEY_free(pub);
    return 0;
}

static int cmd_args(void)
{
    CK_ULONG n;
    CK_C_INITIALIZE_ARGS bad = {NULL, NULL, NULL, NULL, 0, (void *)1};
    RV(f->C_Finalize(NULL), CKR_OK);
    RV(f->C_GetSlotList(CK_TRUE, NULL, &n), CKR_CRYPTOKI_NOT_INITIALIZED);
    RV(f->C_Initialize(&bad), CKR_ARGUMENTS_BAD);
    CK_C_INITIALIZE_ARGS os = {NULL, NULL, NULL, NULL, CKF_OS_LOCKING_OK, NULL};
    RV(f->C_Initialize(&os), CKR_OK);
    RV(f->C_Initialize(&os), CKR_CRYPTOKI_ALREADY_INITIALIZED);
    RV(f->C_GetSlotList(CK_TRUE, NULL, NULL), CKR_ARGUMENTS_BAD);
    RV(f->C_GetSlotInfo(9999, &(CK_SLOT_INFO){0}), CKR_SLOT_ID_INVALID);
    RV(f->C_OpenSession(9999, CKF_SERIAL_SESSION, NULL, NULL, &(CK_SESSION_HANDLE){0}), CKR_SLOT_ID_INVALID);
    RV(f->C_Sign(424242, (CK_BYTE_PTR) "x", 1, NULL, &n), CKR_SESSION_HANDLE_INVALID);
    RV(f->C_FindObjects(424242, &(CK_OBJECT_HANDLE){0}, 1, &n), CKR_SESSION_HANDLE_INVALID);
    RV(f->C_GetFunctionStatus(1), CKR_FUNCTION_NOT_PARALLEL);
    printf("ok   initialization order, bad arguments and handles give their CKR_ errors\n");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: p11probe MODULE check|lockout|sign|args ...\n");
        return 2;
    }
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--rpc")) {
            rpc = true;
            argc--;
            memmove(&argv[i], &argv[i + 1], (size_t)(argc - i) * sizeof *argv);
        }
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    CHECK(lib, "dlopen %s: %s", argv[1], dlerror());
    CK_C_GetFunctionList gfl = (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList");
    CHECK(gfl && gfl(&f) == CKR_OK, "C_GetFunctionList");
    CK_C_INITIALIZE_ARGS args = {NULL, NULL, NULL, NULL, CKF_OS_LOCKING_OK, NULL};
    RV(f->C_Initialize(&args), CKR_OK);
    int rc = 2;
    const char *cmd = argv[2];
    if (!strcmp(cmd, "check") && argc == 5)
        rc = cmd_check(argv[3], argv[4]);
    else if (!strcmp(cmd, "lockout") && argc == 6)
        rc = cmd_lockout(argv[3], argv[4], atoi(argv[5]));
    else if (!strcmp(cmd, "sign") && argc == 6)
        rc = cmd_sign(argv[3], argv[4], atoi(argv[5]));
    else if (!strcmp(cmd, "args") && argc == 3)
        rc = cmd_args();
    else
        fprintf(stderr, "p11probe: bad arguments\n");
    f->C_Finalize(NULL);
    return rc;
}

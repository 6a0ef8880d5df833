/* Feeds arbitrary bytes to the key-holder protocol decoders: requests of
 * both sockets and the module's reply decoders.  They must never crash or
 * read past the input, and an accepted request must re-encode to exactly
 * the same bytes (the codec is canonical: one encoding per message).
 *
 * The same bytes then drive the custody core (lib/enclave/key_custody.c)
 * as a sequence of puts, requests and clock steps (see drive()): it must
 * always answer with a well-formed reply, no reply may carry a private
 * key, and every ECDSA signature it makes must verify. */
#include "cloister/core/keyholder_proto.h"
#include "cloister/enclave/key_custody.h"

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void roundtrip(const uint8_t *data, size_t size, bool provisioning)
{
    cl_kh_request r;
    if (cl_kh_request_decode(data, size, provisioning, &r) < 0)
        return;
    cl_buf out = CL_BUF_INIT;
    if (cl_kh_request_encode(&out, &r) < 0)
        abort();
    if (out.len != size || memcmp(out.data, data, size) != 0)
        abort();
    cl_buf_free(&out);
    /* a request of one socket is never one of the other */
    cl_kh_request other;
    if (cl_kh_request_decode(data, size, !provisioning, &other) == 0)
        abort();
}


/* ---- the custody core, driven by a sequence of steps ------------------------------------ */

/* Two keys made once (an EC P-256 and an RSA-2048, each with a self-signed
 * certificate) in a key directory, and a fake KMS that opens the
 * ciphertexts "ec" and "rsa" under its one pinned key with the token's
 * purpose context. */
static struct {
    bool ready;
    char dir[64];
    EVP_PKEY *ec, *rsa;
    char ec_chain[4096], rsa_chain[8192];
    char ec_pem[4096], rsa_pem[8192];
    uint8_t ec_scalar[32];
    uint8_t rsa_d[32]; /* a window of d */
} fx;

#define FUZZ_KEY_ARN "arn:aws:kms:eu-west-1:111122223333:key/1111aaaa-0000-0000-0000-000000000001"

static void cleanup(void)
{
    char path[128];
    snprintf(path, sizeof path, "%s/ec.pem", fx.dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/rsa.pem", fx.dir);
    unlink(path);
    rmdir(fx.dir);
}

static void pem_of(EVP_PKEY *key, const char *cn, char *pem, size_t pem_cap, char *chain, size_t chain_cap,
                   const char *file)
{
    X509 *cert = X509_new();
    X509_set_version(cert, X509_VERSION_3);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
    X509_NAME *name = X509_NAME_new();
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_subject_name(cert, name);
    X509_set_issuer_name(cert, name);
    X509_NAME_free(name);
    ASN1_TIME_set(X509_getm_notBefore(cert), 1700000000);
    ASN1_TIME_set(X509_getm_notAfter(cert), 2000000000);
    X509_set_pubkey(cert, key);
    if (!X509_sign(cert, key, EVP_sha256()))
        abort();
    BIO *b = BIO_new(BIO_s_mem());
    PEM_write_bio_X509(b, cert);
    int n = BIO_read(b, chain, (int)chain_cap - 1);
    BIO_free(b);
    X509_free(cert);
    b = BIO_new(BIO_s_mem());
    PEM_write_bio_PrivateKey(b, key, NULL, NULL, 0, NULL, NULL);
    int m = BIO_read(b, pem, (int)pem_cap - 1);
    BIO_free(b);
    if (n <= 0 || m <= 0)
        abort();
    FILE *f = fopen(file, "w");
    if (!f || fputs(pem, f) < 0)
        abort();
    fclose(f);
}

static void setup(void)
{
    if (fx.ready)
        return;
    snprintf(fx.dir, sizeof fx.dir, "/tmp/cl-fuzz-kh-XXXXXX");
    if (!mkdtemp(fx.dir))
        abort();
    atexit(cleanup);
    fx.ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    fx.rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    if (!fx.ec || !fx.rsa)
        abort();
    char path[128];
    snprintf(path, sizeof path, "%s/ec.pem", fx.dir);
    pem_of(fx.ec, "ec", fx.ec_pem, sizeof fx.ec_pem, fx.ec_chain, sizeof fx.ec_chain, path);
    snprintf(path, sizeof path, "%s/rsa.pem", fx.dir);
    pem_of(fx.rsa, "rsa", fx.rsa_pem, sizeof fx.rsa_pem, fx.rsa_chain, sizeof fx.rsa_chain, path);
    BIGNUM *bn = NULL;
    if (!EVP_PKEY_get_bn_param(fx.ec, OSSL_PKEY_PARAM_PRIV_KEY, &bn) || BN_bn2binpad(bn, fx.ec_scalar, 32) != 32)
        abort();
    BN_clear_free(bn);
    bn = NULL;
    uint8_t d[256];
    if (!EVP_PKEY_get_bn_param(fx.rsa, OSSL_PKEY_PARAM_RSA_D, &bn) || BN_bn2binpad(bn, d, 256) != 256)
        abort();
    memcpy(fx.rsa_d, d + 100, sizeof fx.rsa_d);
    BN_clear_free(bn);
    fx.ready = true;
}

static int fake_kms(void *arg, const cl_kms_options *o, cl_slice ct, cl_buf *pt, cl_custody_kms_answer *ans)
{
    (void)arg;
    bool ctx_ok = o->context_count == 2 && !strcmp(o->context[0].key, "purpose") &&
                  !strcmp(o->context[0].value, "pkcs11-token") && !strcmp(o->context[1].key, "token");
    if (ct.len >= 1 && ct.data[0] == 'u')
        return cl_error_set(CL_EIO, "fake KMS: unreachable");
    if (ct.len >= 1 && ct.data[0] == 'i') {
        snprintf(ans->error_type, sizeof ans->error_type, "IncorrectKeyException");
        return cl_error_set(CL_EPROTO, "fake KMS: IncorrectKeyException");
    }
    const char *pem = NULL;
    if (ct.len == 2 && !memcmp(ct.data, "ec", 2))
        pem = fx.ec_pem;
    else if (ct.len == 3 && !memcmp(ct.data, "rsa", 3))
        pem = fx.rsa_pem;
    else if (ct.len == 1 && ct.data[0] == 'x')
        pem = fx.ec_pem; /* opens, but answers for another key */
    if (!pem || !ctx_ok || strcmp(o->key_id, FUZZ_KEY_ARN)) {
        snprintf(ans->error_type, sizeof ans->error_type, "InvalidCiphertextException");
        return cl_error_set(CL_EPROTO, "fake KMS: InvalidCiphertextException");
    }
    snprintf(ans->key_id, sizeof ans->key_id, "%s",
             ct.data[0] == 'x' ? "arn:aws:kms:eu-west-1:111122223333:key/other" : FUZZ_KEY_ARN);
    return cl_buf_append(pt, pem, strlen(pem));
}

/* No reply ever carries a private key. */
static void check_no_secret(const cl_buf *reply)
{
    if (reply->len >= 32 && (memmem(reply->data, reply->len, fx.ec_scalar, 32) ||
                             memmem(reply->data, reply->len, fx.rsa_d, 32)))
        abort();
}

/* A successful ECDSA signature verifies under the one EC key the tokens hold. */
static void check_signature(const uint8_t *req, size_t req_len, const cl_buf *reply)
{
    cl_kh_request r;
    uint32_t st;
    cl_cursor p;
    if (cl_kh_request_decode(req, req_len, false, &r) < 0 || r.type != CL_KH_SIGN || r.op != CL_KH_OP_ECDSA)
        return;
    if (cl_kh_reply_split(reply->data, reply->len, &st, &p) < 0)
        abort();
    if (st)
        return;
    cl_slice rs;
    if (cl_kh_get_blob(&p, 1024, &rs) < 0 || rs.len != 64 || cl_cursor_remaining(&p) != 0)
        abort();
    ECDSA_SIG *es = ECDSA_SIG_new();
    ECDSA_SIG_set0(es, BN_bin2bn(rs.data, 32, NULL), BN_bin2bn(rs.data + 32, 32, NULL));
    uint8_t *der = NULL;
    int der_len = i2d_ECDSA_SIG(es, &der);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(fx.ec, NULL);
    /* ECDSA over the input as a digest: OpenSSL truncates longer inputs the same way for both */
    if (!ctx || EVP_PKEY_verify_init(ctx) != 1 ||
        EVP_PKEY_verify(ctx, der, (size_t)der_len, r.data.data, r.data.len) != 1)
        abort();
    EVP_PKEY_CTX_free(ctx);
    OPENSSL_free(der);
    ECDSA_SIG_free(es);
}

/* Steps, each a command byte:
 *   c&3 == 0  a request to the token socket: connection (c>>2)&1, then a u16 length and the bytes
 *   c&3 == 1  a request to the provisioning socket: a u16 length and the bytes
 *   c&3 == 2  a well-formed put: token (c>>2)&3, EC or RSA key ((c>>4)&1), from the key
 *             directory or KMS ((c>>5)&1), PIN "1234" or "5678" ((c>>6)&1)
 *   c&3 == 3  the clock moves (c>>2)*50 ms; housekeeping; idle connections drop released keys
 * The custody: at most 3 wrong PINs, a 1 s TTL, a 400 ms rotation grace. */
static void drive(const uint8_t *data, size_t size)
{
    setup();
    const char *const pinned[] = {FUZZ_KEY_ARN};
    cl_custody_config cfg = {.max_failures = 3, .ttl_ms = 1000, .grace_ms = 400, .key_dir = fx.dir,
                             .kms_decrypt = fake_kms, .kms_key_ids = pinned, .kms_key_id_count = 1};
    cl_custody *c = NULL;
    cl_custody_conn *tok[2] = {NULL, NULL}, *prov = NULL;
    if (cl_custody_new(&cfg, &c) < 0 || cl_custody_conn_new(c, CL_CUSTODY_TOKEN_SOCKET, &tok[0]) < 0 ||
        cl_custody_conn_new(c, CL_CUSTODY_TOKEN_SOCKET, &tok[1]) < 0 ||
        cl_custody_conn_new(c, CL_CUSTODY_PROVISION_SOCKET, &prov) < 0)
        abort();
    cl_buf reply = CL_BUF_INIT;
    uint64_t now = 1000;
    size_t i = 0, steps = 0;
    while (i < size && steps++ < 64) {
        uint8_t cmd = data[i++];
        switch (cmd & 3) {
        case 0:
        case 1: {
            if (size - i < 2)
                goto done;
            size_t len = (size_t)data[i] << 8 | data[i + 1];
            i += 2;
            if (len > size - i)
                len = size - i;
            cl_custody_conn *cx = (cmd & 3) == 1 ? prov : tok[(cmd >> 2) & 1];
            if (cl_custody_handle(cx, data + i, len, now, &reply) < 0)
                abort();
            uint32_t st;
            cl_cursor p;
            if (cl_kh_reply_split(reply.data, reply.len, &st, &p) < 0)
                abort();
            check_no_secret(&reply);
            if ((cmd & 3) == 0)
                check_signature(data + i, len, &reply);
            i += len;
            break;
        }
        case 2: {
            static const char *const labels[] = {"t0", "t1", "t2", "t3"};
            const char *label = labels[(cmd >> 2) & 3];
            bool rsa = (cmd >> 4) & 1, kms = (cmd >> 5) & 1;
            const char *chain = rsa ? fx.rsa_chain : fx.ec_chain;
            const char *ref = kms ? (rsa ? "rsa" : "ec") : (rsa ? "rsa.pem" : "ec.pem");
            const char *pin = (cmd >> 6) & 1 ? "5678" : "1234";
            cl_kh_request r = {.type = CL_KH_PUT_TOKEN,
                               .label = {(const uint8_t *)label, strlen(label)},
                               .pin = {(const uint8_t *)pin, 4},
                               .object_label = {(const uint8_t *)label, strlen(label)},
                               .key_source = kms ? CL_KH_SRC_KMS : CL_KH_SRC_FILE,
                               .key_ref = {(const uint8_t *)ref, strlen(ref)},
                               .chain = {(const uint8_t *)chain, strlen(chain)}};
            uint32_t slot, st;
            uint64_t gen;
            if (cl_custody_put(c, &r, now, &slot, &gen, &st) < 0)
                abort(); /* a well-formed put of a good key never fails (32 slots, 4 labels) */
            break;
        }
        default:
            now += (uint64_t)(cmd >> 2) * 50;
            cl_custody_housekeeping(c, now);
            (void)cl_custody_conn_idle(tok[0]);
            (void)cl_custody_conn_idle(tok[1]);
            break;
        }
    }
done:
    cl_buf_free(&reply);
    cl_custody_conn_free(tok[0]);
    cl_custody_conn_free(tok[1]);
    cl_custody_conn_free(prov);
    cl_custody_free(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    drive(data, size);

    roundtrip(data, size, false);
    roundtrip(data, size, true);

    uint32_t status;
    cl_cursor payload;
    if (cl_kh_reply_split(data, size, &status, &payload) == 0 && status == 0) {
        cl_cursor again = payload;
        cl_kh_token_info t[CL_KH_MAX_TOKENS];
        cl_kh_object_info o[CL_KH_MAX_OBJECTS];
        size_t n;
        if (cl_kh_decode_tokens(&payload, t, CL_KH_MAX_TOKENS, &n) == 0) {
            if (n > CL_KH_MAX_TOKENS)
                abort();
            cl_buf out = CL_BUF_INIT;
            if (cl_buf_append_be(&out, n, 2) < 0)
                abort();
            for (size_t i = 0; i < n; i++)
                if (cl_kh_encode_token(&out, &t[i]) < 0)
                    abort();
            if (out.len != size - 1 || memcmp(out.data, data + 1, out.len) != 0)
                abort();
            cl_buf_free(&out);
        }
        if (cl_kh_decode_objects(&again, o, CL_KH_MAX_OBJECTS, &n) == 0) {
            if (n > CL_KH_MAX_OBJECTS)
                abort();
            cl_buf out = CL_BUF_INIT;
            if (cl_buf_append_be(&out, n, 2) < 0)
                abort();
            for (size_t i = 0; i < n; i++)
                if (o[i].handle == 0 || cl_kh_encode_object(&out, &o[i]) < 0)
                    abort();
            if (out.len != size - 1 || memcmp(out.data, data + 1, out.len) != 0)
                abort();
            cl_buf_free(&out);
        }
    }
    return 0;
}

/* ACM-style certificate bundles: strict JSON, certificates parsed and
 * re-encoded, the ciphertext decoded from base64. */
#include "cloister/core/acm_bundle.h"
#include "cloister/core/encoding.h"

#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdbool.h>
#include <string.h>

#define PEM_BEGIN "-----BEGIN CERTIFICATE-----"

static int is_space(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* PEM certificates only (whitespace between them), at most max of them;
 * each re-encoded into out.  The first one's DER SHA-256 into first_sha. */
static int pem_certs(const char *what, const uint8_t *text, size_t len, size_t max, cl_buf *out, size_t *count,
                     uint8_t first_sha[32])
{
    int rc = CL_OK;
    size_t pos = 0, n = 0;
    BIO *in = NULL, *mem = NULL;
    X509 *x = NULL;
    *count = 0;
    for (;;) {
        while (pos < len && is_space(text[pos]))
            pos++;
        if (pos == len)
            break;
        CL_ENSURE_OUT(len - pos >= strlen(PEM_BEGIN) && !memcmp(text + pos, PEM_BEGIN, strlen(PEM_BEGIN)), CL_EPARSE,
                      "%s: text outside PEM CERTIFICATE blocks (at byte %zu)", what, pos);
        CL_ENSURE_OUT(n < max, CL_ELIMIT, "%s: more than %zu certificates", what, max);
        CL_ENSURE_OUT(len - pos <= INT32_MAX, CL_ELIMIT, "%s: too long", what);
        in = BIO_new_mem_buf(text + pos, (int)(len - pos));
        CL_ENSURE_OUT(in, CL_ENOMEM, "out of memory");
        x = PEM_read_bio_X509(in, NULL, NULL, NULL);
        if (!x) {
            ERR_clear_error();
            CL_FAIL_OUT(CL_EPARSE, "%s: certificate %zu is not a valid PEM X.509 certificate", what, n + 1);
        }
        size_t left = (size_t)BIO_pending(in);
        pos = len - left;
        BIO_free(in);
        in = NULL;
        if (n == 0 && first_sha) {
            unsigned char *der = NULL;
            int dl = i2d_X509(x, &der);
            unsigned hl = 0;
            int ok = dl > 0 && EVP_Digest(der, (size_t)dl, first_sha, &hl, EVP_sha256(), NULL);
            OPENSSL_free(der);
            CL_ENSURE_OSSL_OUT(ok, CL_ECRYPTO, "%s: certificate encoding", what);
        }
        mem = BIO_new(BIO_s_mem());
        CL_ENSURE_OSSL_OUT(mem && PEM_write_bio_X509(mem, x), CL_ENOMEM, "out of memory");
        char *p = NULL;
        long pl = BIO_get_mem_data(mem, &p);
        CL_ENSURE_OSSL_OUT(pl > 0, CL_ECRYPTO, "PEM encoding");
        CL_TRY_OUT(cl_buf_append(out, p, (size_t)pl));
        BIO_free(mem);
        mem = NULL;
        X509_free(x);
        x = NULL;
        n++;
    }
    *count = n;
out:
    BIO_free(in);
    BIO_free(mem);
    X509_free(x);
    return rc;
}

static int string_field(json_t *root, const char *name, const uint8_t **data, size_t *len)
{
    json_t *v = json_object_get(root, name);
    CL_ENSURE(v, CL_EPARSE, "bundle: no \"%s\"", name);
    CL_ENSURE(json_is_string(v), CL_EPARSE, "bundle: \"%s\" is not a string", name);
    *data = (const uint8_t *)json_string_value(v);
    *len = json_string_length(v);
    CL_ENSURE(!memchr(*data, 0, *len), CL_EPARSE, "bundle: \"%s\" contains a NUL", name);
    return CL_OK;
}

static void init(cl_acm_bundle *b)
{
    memset(b, 0, sizeof *b);
}

int cl_acm_bundle_parse(const uint8_t *json, size_t len, cl_acm_bundle *out)
{
    init(out);
    CL_ENSURE(len > 0, CL_EPARSE, "bundle: empty");
    CL_ENSURE(len <= CL_ACM_BUNDLE_MAX, CL_ELIMIT, "bundle: larger than %u bytes", CL_ACM_BUNDLE_MAX);
    int rc = CL_OK;
    json_error_t jerr;
    json_t *root = json_loadb((const char *)json, len, JSON_REJECT_DUPLICATES, &jerr);
    CL_ENSURE(root, CL_EPARSE, "bundle: not JSON: %s (line %d)", jerr.text, jerr.line);
    CL_ENSURE_OUT(json_is_object(root), CL_EPARSE, "bundle: not a JSON object");
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value)
    {
        (void)value;
        CL_ENSURE_OUT(!strcmp(key, "certificate") || !strcmp(key, "certificateChain") ||
                          !strcmp(key, "encryptedPrivateKey"),
                      CL_EPARSE,
                      "bundle: unknown field \"%.64s\" (expected certificate, certificateChain, encryptedPrivateKey)",
                      key);
    }
    const uint8_t *s;
    size_t sl, count;
    CL_TRY_OUT(string_field(root, "certificate", &s, &sl));
    CL_TRY_OUT(pem_certs("bundle certificate", s, sl, 1, &out->certificate, &count, out->leaf_sha256));
    CL_ENSURE_OUT(count == 1, CL_EPARSE, "bundle: \"certificate\" holds no certificate");
    CL_TRY_OUT(string_field(root, "certificateChain", &s, &sl));
    CL_TRY_OUT(pem_certs("bundle certificateChain", s, sl, CL_ACM_CHAIN_CERTS_MAX, &out->chain, &out->chain_count,
                         NULL));
    {
        cl_buf full = CL_BUF_INIT;
        rc = cl_acm_bundle_full_chain(out, &full);
        if (rc == CL_OK)
            rc = cl_acm_chain_verify(full.data, full.len);
        cl_buf_free(&full);
        if (rc < 0)
            CL_TRY_OUT(cl_error_prefix(rc, "bundle: "));
    }
    CL_TRY_OUT(string_field(root, "encryptedPrivateKey", &s, &sl));
    CL_ENSURE_OUT(sl > 0, CL_EPARSE, "bundle: \"encryptedPrivateKey\" is empty");
    CL_ENSURE_OUT(sl <= (CL_ACM_CIPHERTEXT_MAX / 3 + 1) * 4 + 64, CL_ELIMIT,
                  "bundle: \"encryptedPrivateKey\" longer than a KMS ciphertext (%u bytes)", CL_ACM_CIPHERTEXT_MAX);
    rc = cl_base64_decode(s, sl, &out->ciphertext);
    if (rc < 0)
        CL_TRY_OUT(cl_error_prefix(rc, "bundle: \"encryptedPrivateKey\": "));
    CL_ENSURE_OUT(out->ciphertext.len > 0 && out->ciphertext.len <= CL_ACM_CIPHERTEXT_MAX, CL_ELIMIT,
                  "bundle: \"encryptedPrivateKey\" is %zu bytes, a KMS ciphertext is 1..%u", out->ciphertext.len,
                  CL_ACM_CIPHERTEXT_MAX);
out:
    json_decref(root);
    return rc;
}

int cl_acm_bundle_full_chain(const cl_acm_bundle *b, cl_buf *out)
{
    CL_TRY(cl_buf_append(out, b->certificate.data, b->certificate.len));
    if (b->chain.len)
        CL_TRY(cl_buf_append(out, b->chain.data, b->chain.len));
    return CL_OK;
}

int cl_acm_bundle_encode(const uint8_t *cert_pem, size_t cert_len, const uint8_t *chain_pem, size_t chain_len,
                         const uint8_t *ciphertext, size_t ct_len, cl_buf *out)
{
    int rc = CL_OK;
    cl_buf cert = CL_BUF_INIT, chain = CL_BUF_INIT, b64 = CL_BUF_INIT;
    json_t *root = NULL;
    char *text = NULL;
    size_t count;
    CL_TRY_OUT(pem_certs("certificate", cert_pem, cert_len, 1, &cert, &count, NULL));
    CL_ENSURE_OUT(count == 1, CL_EPARSE, "certificate: no PEM certificate");
    CL_TRY_OUT(pem_certs("chain", chain_pem, chain_len, CL_ACM_CHAIN_CERTS_MAX, &chain, &count, NULL));
    {
        cl_buf full = CL_BUF_INIT;
        rc = cl_buf_append(&full, cert.data, cert.len);
        if (rc == CL_OK && chain.len)
            rc = cl_buf_append(&full, chain.data, chain.len);
        if (rc == CL_OK)
            rc = cl_acm_chain_verify(full.data, full.len);
        cl_buf_free(&full);
        CL_TRY_OUT(rc);
    }
    CL_ENSURE_OUT(ct_len > 0 && ct_len <= CL_ACM_CIPHERTEXT_MAX, CL_ELIMIT, "ciphertext of %zu bytes", ct_len);
    CL_TRY_OUT(cl_base64_encode(ciphertext, ct_len, &b64));
    root = json_object();
    CL_ENSURE_OUT(root, CL_ENOMEM, "out of memory");
    CL_ENSURE_OUT(!json_object_set_new(root, "certificate", json_stringn((const char *)cert.data, cert.len)) &&
                      !json_object_set_new(root, "certificateChain",
                                           json_stringn(chain.len ? (const char *)chain.data : "", chain.len)) &&
                      !json_object_set_new(root, "encryptedPrivateKey", json_string((const char *)b64.data)),
                  CL_ENOMEM, "out of memory");
    text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    CL_ENSURE_OUT(text, CL_ENOMEM, "out of memory");
    CL_TRY_OUT(cl_buf_append(out, text, strlen(text)));
    CL_TRY_OUT(cl_buf_append(out, "\n", 2));
    out->len--; /* NUL-terminated, not counted */
out:
    free(text);
    json_decref(root);
    cl_buf_free(&cert);
    cl_buf_free(&chain);
    cl_buf_free(&b64);
    return rc;
}

int cl_acm_chain_verify(const uint8_t *pem, size_t len)
{
    int rc = CL_OK;
    X509 *certs[CL_ACM_CHAIN_CERTS_MAX + 2] = {0};
    size_t n = 0;
    CL_ENSURE(len > 0 && len <= INT32_MAX, CL_EPARSE, "certificate chain: empty or too long");
    BIO *in = BIO_new_mem_buf(pem, (int)len);
    CL_ENSURE(in, CL_ENOMEM, "out of memory");
    for (;;) {
        X509 *x = PEM_read_bio_X509(in, NULL, NULL, NULL);
        if (!x)
            break;
        if (n == CL_ACM_CHAIN_CERTS_MAX + 1) {
            X509_free(x);
            CL_FAIL_OUT(CL_ELIMIT, "certificate chain: more than %d certificates", CL_ACM_CHAIN_CERTS_MAX + 1);
        }
        certs[n++] = x;
    }
    ERR_clear_error(); /* the end of the PEM text */
    CL_ENSURE_OUT(n > 0, CL_EPARSE, "certificate chain: no PEM certificate");
    for (size_t i = 0; i < n; i++) {
        X509 *issuer = i + 1 < n ? certs[i + 1] : certs[i];
        bool last = i + 1 == n;
        if (last && X509_check_issued(issuer, certs[i]) != X509_V_OK)
            break; /* its issuer is not part of the chain */
        CL_ENSURE_OUT(X509_NAME_cmp(X509_get_issuer_name(certs[i]), X509_get_subject_name(issuer)) == 0, CL_EVERIFY,
                      "certificate chain: certificate %zu's issuer is not certificate %zu's subject", i + 1, i + 2);
        EVP_PKEY *key = X509_get0_pubkey(issuer);
        int ok = key ? X509_verify(certs[i], key) : -1;
        ERR_clear_error();
        CL_ENSURE_OUT(ok == 1, CL_EVERIFY,
                      last ? "certificate chain: the last certificate (%zu, self-issued) has a broken self-signature"
                           : "certificate chain: certificate %zu's signature does not verify with the next "
                             "certificate's key",
                      i + 1);
    }
out:
    for (size_t i = 0; i < n; i++)
        X509_free(certs[i]);
    BIO_free(in);
    return rc;
}

static int same(const cl_buf *a, const cl_buf *b)
{
    return a->len == b->len && (a->len == 0 || !memcmp(a->data, b->data, a->len));
}

bool cl_acm_bundle_equal(const cl_acm_bundle *a, const cl_acm_bundle *b)
{
    return same(&a->certificate, &b->certificate) && same(&a->chain, &b->chain) && same(&a->ciphertext, &b->ciphertext);
}

void cl_acm_bundle_free(cl_acm_bundle *b)
{
    cl_buf_free(&b->certificate);
    cl_buf_free(&b->chain);
    cl_buf_free(&b->ciphertext);
    init(b);
}

/* Key sync's messages, peer policy and the identity <-> PEM conversions
 * (the engine is in key_sync_engine.c).  The JSON is nitriding's: Go
 * encodes []byte as a base64 string (StdEncoding, padded) and a nil slice
 * as null, and ignores members it does not know; cloister does the same,
 * except that a member given twice is refused. */
#include "cloister/enclave/key_sync.h"

#include "cloister/core/cursor.h"
#include "cloister/core/encoding.h"

#include <jansson.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <string.h>

const char *cl_sync_role_name(cl_sync_role r)
{
    switch (r) {
    case CL_SYNC_OFF: return "off";
    case CL_SYNC_ELECTING: return "electing";
    case CL_SYNC_LEADER: return "leader";
    case CL_SYNC_WORKER: return "worker";
    }
    return "unknown";
}

/* ---- JSON helpers ------------------------------------------------------------ */

static int load_object(const uint8_t *json, size_t len, const char *what, json_t **out)
{
    json_error_t jerr;
    json_t *o = json_loadb((const char *)json, len, JSON_REJECT_DUPLICATES, &jerr);
    CL_ENSURE(o, CL_EPARSE, "%s: malformed JSON: %s", what, jerr.text);
    if (!json_is_object(o)) {
        json_decref(o);
        return cl_error_set(CL_EPARSE, "%s: expected a JSON object", what);
    }
    *out = o;
    return CL_OK;
}

/* A Go []byte member: base64 string, null or absent (both empty). */
static int get_bytes(json_t *o, const char *name, const char *what, cl_buf *out)
{
    json_t *v = json_object_get(o, name);
    if (!v || json_is_null(v))
        return CL_OK;
    CL_ENSURE(json_is_string(v), CL_EPARSE, "%s: \"%s\" must be a base64 string", what, name);
    size_t n = json_string_length(v);
    if (n == 0)
        return CL_OK;
    int rc = cl_base64_decode((const uint8_t *)json_string_value(v), n, out);
    if (rc < 0)
        return cl_error_prefix(CL_EPARSE, "%s: \"%s\" is not base64: ", what, name);
    return CL_OK;
}

static int get_string(json_t *o, const char *name, const char *what, char *out, size_t out_len)
{
    out[0] = '\0';
    json_t *v = json_object_get(o, name);
    if (!v || json_is_null(v))
        return CL_OK;
    CL_ENSURE(json_is_string(v), CL_EPARSE, "%s: \"%s\" must be a string", what, name);
    size_t n = json_string_length(v);
    CL_ENSURE(n < out_len, CL_ELIMIT, "%s: \"%s\" is longer than %zu bytes", what, name, out_len - 1);
    CL_ENSURE(!memchr(json_string_value(v), '\0', n), CL_EPARSE, "%s: \"%s\" holds a NUL", what, name);
    memcpy(out, json_string_value(v), n + 1);
    return CL_OK;
}

/* base64 of data as a JSON string, or null for no bytes (Go's nil). */
static int put_bytes(json_t *o, const char *name, const uint8_t *data, size_t len, bool null_when_empty)
{
    json_t *v;
    if (len == 0) {
        v = null_when_empty ? json_null() : json_string("");
    } else {
        cl_buf b64 = CL_BUF_INIT;
        CL_TRY(cl_base64_encode(data, len, &b64));
        v = json_stringn((const char *)b64.data, b64.len);
        cl_buf_free(&b64);
    }
    CL_ENSURE(v && json_object_set_new(o, name, v) == 0, CL_ENOMEM, "out of memory");
    return CL_OK;
}

/* Dumps o into out; secret: the text is wiped before it is freed. */
static int dump(json_t *o, cl_buf *out, bool secret)
{
    char *text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    CL_ENSURE(text, CL_ENOMEM, "out of memory");
    size_t n = strlen(text);
    int rc = cl_buf_append(out, text, n);
    if (secret)
        cl_wipe(text, n);
    free(text);
    return rc;
}

/* ---- messages ------------------------------------------------------------------ */

int cl_sync_attstn_body_parse(const uint8_t *json, size_t len, cl_sync_attstn_body *out)
{
    static const char what[] = "attestation body";
    memset(out, 0, sizeof *out);
    json_t *o;
    CL_TRY(load_object(json, len, what, &o));
    int rc = get_bytes(o, "document", what, &out->document);
    if (rc == CL_OK)
        rc = get_bytes(o, "encrypted_keys", what, &out->encrypted_keys);
    if (rc == CL_OK && out->document.len == 0)
        rc = cl_error_set(CL_EPARSE, "%s: no \"document\"", what);
    if (rc == CL_OK && out->document.len > CL_ATTESTATION_MAX_DOC_LEN)
        rc = cl_error_set(CL_ELIMIT, "%s: the document is larger than %d bytes", what, CL_ATTESTATION_MAX_DOC_LEN);
    json_decref(o);
    if (rc < 0)
        cl_sync_attstn_body_free(out);
    return rc;
}

int cl_sync_attstn_body_encode(const uint8_t *doc, size_t doc_len, const uint8_t *enc, size_t enc_len, cl_buf *out)
{
    json_t *o = json_object();
    CL_ENSURE(o, CL_ENOMEM, "out of memory");
    int rc = put_bytes(o, "document", doc, doc_len, false);
    if (rc == CL_OK)
        rc = put_bytes(o, "encrypted_keys", enc, enc_len, false);
    if (rc == CL_OK)
        rc = dump(o, out, false);
    json_decref(o);
    return rc;
}

void cl_sync_attstn_body_free(cl_sync_attstn_body *b)
{
    cl_buf_free(&b->document);
    cl_buf_free(&b->encrypted_keys);
}

int cl_sync_heartbeat_parse(const uint8_t *json, size_t len, cl_sync_heartbeat *out)
{
    static const char what[] = "heartbeat";
    memset(out, 0, sizeof *out);
    CL_ENSURE(len <= CL_SYNC_MAX_HEARTBEAT, CL_ELIMIT, "%s: larger than %d bytes", what, CL_SYNC_MAX_HEARTBEAT);
    json_t *o;
    CL_TRY(load_object(json, len, what, &o));
    int rc = get_string(o, "hashed_keys", what, out->hashed_keys, sizeof out->hashed_keys);
    if (rc == CL_OK)
        rc = get_string(o, "worker_hostname", what, out->worker_hostname, sizeof out->worker_hostname);
    json_decref(o);
    CL_TRY(rc);
    /* HOST:PORT as Go's net.SplitHostPort wants it */
    const char *h = out->worker_hostname;
    const char *colon = strrchr(h, ':');
    CL_ENSURE(colon && colon != h && colon[1], CL_EPARSE, "%s: \"worker_hostname\" must be HOST:PORT (got \"%s\")",
              what, h);
    uint64_t port;
    CL_ENSURE(cl_parse_u64(colon + 1, 65535, &port) == CL_OK && port > 0, CL_EPARSE,
              "%s: \"worker_hostname\" has a bad port (\"%s\")", what, h);
    for (const char *p = h; p < colon; p++)
        CL_ENSURE((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '.' ||
                      *p == '-' || *p == '_' || *p == ':' || *p == '[' || *p == ']',
                  CL_EPARSE, "%s: \"worker_hostname\" is not a host name or address", what);
    return CL_OK;
}

int cl_sync_heartbeat_encode(const cl_sync_heartbeat *hb, cl_buf *out)
{
    json_t *o = json_pack("{s:s, s:s}", "hashed_keys", hb->hashed_keys, "worker_hostname", hb->worker_hostname);
    CL_ENSURE(o, CL_ENOMEM, "out of memory");
    int rc = dump(o, out, false);
    json_decref(o);
    return rc;
}

/* The sealed keys carry the TLS private key, so they are read and written
 * here without jansson, whose string copies and parse buffers would be
 * freed unwiped: every copy of the key is a cl_buf.  The grammar is the
 * JSON object nitriding's json.Marshal makes (any whitespace and member
 * order; "\/" for '/'; null for an empty field), with no other members. */

static void skip_ws(cl_cursor *c)
{
    uint8_t b;
    while (cl_cursor_peek_u8(c, &b) == CL_OK && (b == ' ' || b == '\t' || b == '\n' || b == '\r'))
        c->pos++;
}

static int expect_byte(cl_cursor *c, uint8_t want, const char *what)
{
    skip_ws(c);
    uint8_t b;
    CL_ENSURE(cl_cursor_u8(c, &b) == CL_OK && b == want, CL_EPARSE, "keys: malformed JSON: expected %s", what);
    return CL_OK;
}

/* A member name: plain ASCII letters and '_' between quotes. */
static int read_name(cl_cursor *c, char *out, size_t out_len)
{
    CL_TRY(expect_byte(c, '"', "a member name"));
    size_t n = 0;
    for (;;) {
        uint8_t b;
        CL_ENSURE(cl_cursor_u8(c, &b) == CL_OK, CL_EPARSE, "keys: malformed JSON: unterminated name");
        if (b == '"')
            break;
        CL_ENSURE((b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z') || b == '_', CL_EPARSE,
                  "keys: unknown member");
        CL_ENSURE(n + 1 < out_len, CL_EPARSE, "keys: unknown member");
        out[n++] = (char)b;
    }
    out[n] = '\0';
    return CL_OK;
}

/* null, or a string of base64 characters ("\/" allowed), decoded into out. */
static int read_b64_value(cl_cursor *c, const char *name, cl_buf *out)
{
    skip_ws(c);
    const uint8_t *lit;
    if (cl_cursor_remaining(c) >= 4 && !memcmp(c->data + c->pos, "null", 4)) {
        CL_TRY(cl_cursor_bytes(c, 4, &lit));
        return CL_OK;
    }
    CL_TRY(expect_byte(c, '"', "a string or null"));
    cl_buf text = CL_BUF_INIT;
    int rc = CL_OK;
    for (;;) {
        uint8_t b;
        if (cl_cursor_u8(c, &b) < 0) {
            rc = cl_error_set(CL_EPARSE, "keys: malformed JSON: unterminated \"%s\"", name);
            break;
        }
        if (b == '"')
            break;
        if (b == '\\') {
            if (cl_cursor_u8(c, &b) < 0 || b != '/') {
                rc = cl_error_set(CL_EPARSE, "keys: \"%s\" must be a base64 string", name);
                break;
            }
        }
        if (!((b >= 'A' && b <= 'Z') || (b >= 'a' && b <= 'z') || (b >= '0' && b <= '9') || b == '+' || b == '/' ||
              b == '=')) {
            rc = cl_error_set(CL_EPARSE, "keys: \"%s\" must be a base64 string", name);
            break;
        }
        if ((rc = cl_buf_append_u8(&text, b)) < 0)
            break;
    }
    if (rc == CL_OK && text.len && cl_base64_decode(text.data, text.len, out) < 0)
        rc = cl_error_set(CL_EPARSE, "keys: \"%s\" is not base64", name);
    cl_buf_free(&text);
    return rc;
}

int cl_sync_keys_parse(const uint8_t *json, size_t len, cl_sync_keys *out)
{
    memset(out, 0, sizeof *out);
    cl_cursor c = cl_cursor_make(json, len);
    bool seen[4] = {false, false, false, false};
    int rc = expect_byte(&c, '{', "an object");
    skip_ws(&c);
    uint8_t b;
    bool empty = rc == CL_OK && cl_cursor_peek_u8(&c, &b) == CL_OK && b == '}';
    while (rc == CL_OK && !empty) {
        char name[16];
        rc = read_name(&c, name, sizeof name);
        if (rc == CL_OK)
            rc = expect_byte(&c, ':', "':'");
        if (rc < 0)
            break;
        int i = !strcmp(name, "nitriding_key")    ? 0
                : !strcmp(name, "nitriding_cert") ? 1
                : !strcmp(name, "app_keys")       ? 2
                : !strcmp(name, "acme_challenges") ? 3
                                                  : -1;
        if (i < 0) {
            rc = cl_error_set(CL_EPARSE, "keys: unknown member \"%s\"", name);
            break;
        }
        if (seen[i]) {
            rc = cl_error_set(CL_EPARSE, "keys: \"%s\" is given twice", name);
            break;
        }
        seen[i] = true;
        cl_buf *dst = i == 0 ? &out->key : i == 1 ? &out->cert : i == 2 ? &out->app_keys : &out->acme;
        if ((rc = read_b64_value(&c, name, dst)) < 0)
            break;
        skip_ws(&c);
        if (cl_cursor_peek_u8(&c, &b) == CL_OK && b == ',') {
            c.pos++;
            continue;
        }
        break;
    }
    if (rc == CL_OK)
        rc = expect_byte(&c, '}', "'}'");
    skip_ws(&c);
    if (rc == CL_OK && !cl_cursor_at_end(&c))
        rc = cl_error_set(CL_EPARSE, "keys: malformed JSON: bytes after the object");
    if (rc == CL_OK && (!out->key.len || !out->cert.len))
        rc = cl_error_set(CL_EPARSE, "keys: \"nitriding_key\" and \"nitriding_cert\" are required");
    if (rc == CL_OK && out->acme.len > 4096)
        rc = cl_error_set(CL_ELIMIT, "keys: \"acme_challenges\" is larger than 4096 bytes");
    if (rc == CL_OK && out->app_keys.len > CL_SYNC_MAX_STATE)
        rc = cl_error_set(CL_ELIMIT, "keys: \"app_keys\" is larger than %d bytes", CL_SYNC_MAX_STATE);
    if (rc < 0)
        cl_sync_keys_free(out);
    return rc;
}

static int put_member(cl_buf *out, const char *name, const cl_buf *value, bool last)
{
    CL_TRY(cl_buf_append(out, "\"", 1));
    CL_TRY(cl_buf_append(out, name, strlen(name)));
    CL_TRY(cl_buf_append(out, "\":", 2));
    if (!value->len) {
        CL_TRY(cl_buf_append(out, "null", 4));
    } else {
        cl_buf b64 = CL_BUF_INIT;
        int rc = cl_base64_encode(value->data, value->len, &b64);
        if (rc == CL_OK)
            rc = cl_buf_append(out, "\"", 1);
        if (rc == CL_OK)
            rc = cl_buf_append(out, b64.data, b64.len);
        if (rc == CL_OK)
            rc = cl_buf_append(out, "\"", 1);
        cl_buf_free(&b64);
        CL_TRY(rc);
    }
    return last ? cl_buf_append(out, "}", 1) : cl_buf_append(out, ",", 1);
}

int cl_sync_keys_encode(const cl_sync_keys *k, cl_buf *out)
{
    size_t need = 96 + 4 * ((k->key.len + 2) / 3 + (k->cert.len + 2) / 3 + (k->app_keys.len + 2) / 3 +
                            (k->acme.len + 2) / 3);
    CL_TRY(cl_buf_reserve(out, need));
    CL_TRY(cl_buf_append(out, "{", 1));
    CL_TRY(put_member(out, "nitriding_key", &k->key, false));
    CL_TRY(put_member(out, "nitriding_cert", &k->cert, false));
    /* without pending challenges the object is exactly nitriding's */
    if (!k->acme.len)
        return put_member(out, "app_keys", &k->app_keys, true);
    CL_TRY(put_member(out, "app_keys", &k->app_keys, false));
    return put_member(out, "acme_challenges", &k->acme, true);
}

int cl_sync_keys_copy(const cl_sync_keys *from, cl_sync_keys *to)
{
    memset(to, 0, sizeof *to);
    int rc = cl_buf_append(&to->key, from->key.data, from->key.len);
    if (rc == CL_OK)
        rc = cl_buf_append(&to->cert, from->cert.data, from->cert.len);
    if (rc == CL_OK)
        rc = cl_buf_append(&to->app_keys, from->app_keys.data, from->app_keys.len);
    if (rc == CL_OK)
        rc = cl_buf_append(&to->acme, from->acme.data, from->acme.len);
    if (rc < 0)
        cl_sync_keys_free(to);
    return rc;
}

void cl_sync_keys_free(cl_sync_keys *k)
{
    cl_buf_free(&k->key);
    cl_buf_free(&k->cert);
    cl_buf_free(&k->app_keys);
    cl_buf_free(&k->acme);
}

int cl_sync_keys_hash_b64(const cl_sync_keys *k, char out[45])
{
    uint8_t h[32];
    unsigned hl = 0;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    int ok = c && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1 &&
             EVP_DigestUpdate(c, k->cert.data ? k->cert.data : (const uint8_t *)"", k->cert.len) == 1 &&
             EVP_DigestUpdate(c, k->key.data ? k->key.data : (const uint8_t *)"", k->key.len) == 1 &&
             EVP_DigestUpdate(c, k->app_keys.data ? k->app_keys.data : (const uint8_t *)"", k->app_keys.len) == 1 &&
             EVP_DigestFinal_ex(c, h, &hl) == 1;
    EVP_MD_CTX_free(c);
    CL_ENSURE(ok, CL_ECRYPTO, "SHA-256 failed");
    cl_buf b64 = CL_BUF_INIT;
    CL_TRY(cl_base64_encode(h, sizeof h, &b64));
    CL_ENSURE(b64.len == 44, CL_ECRYPTO, "unexpected base64 length");
    memcpy(out, b64.data, 44);
    out[44] = '\0';
    cl_buf_free(&b64);
    return CL_OK;
}

/* ---- identity <-> PEM ------------------------------------------------------------ */

static int bio_to_buf(BIO *b, cl_buf *out)
{
    char *p = NULL;
    long n = BIO_get_mem_data(b, &p);
    CL_ENSURE(n > 0, CL_ECRYPTO, "PEM encoding failed");
    return cl_buf_append(out, p, (size_t)n);
}

int cl_sync_keys_from_identity(const cl_tls_identity *id, cl_sync_keys *out)
{
    memset(out, 0, sizeof *out);
    int rc = CL_OK;
    BIO *kb = BIO_new(BIO_s_secmem());
    BIO *cb = BIO_new(BIO_s_mem());
    CL_ENSURE_OUT(kb && cb, CL_ENOMEM, "out of memory");
    CL_ENSURE_OSSL_OUT(PEM_write_bio_PKCS8PrivateKey(kb, id->key, NULL, NULL, 0, NULL, NULL) == 1, CL_ECRYPTO,
                       "cannot encode the TLS key");
    CL_ENSURE_OSSL_OUT(PEM_write_bio_X509(cb, id->cert) == 1, CL_ECRYPTO, "cannot encode the certificate");
    for (int i = 0; id->chain && i < sk_X509_num(id->chain); i++)
        CL_ENSURE_OSSL_OUT(PEM_write_bio_X509(cb, sk_X509_value(id->chain, i)) == 1, CL_ECRYPTO,
                           "cannot encode the chain");
    CL_TRY_OUT(bio_to_buf(kb, &out->key));
    CL_TRY_OUT(bio_to_buf(cb, &out->cert));
out:
    BIO_free(kb); /* secure memory: cleared when freed */
    BIO_free(cb);
    if (rc < 0)
        cl_sync_keys_free(out);
    return rc;
}

int cl_sync_identity_from_keys(const cl_sync_keys *k, cl_tls_identity *out)
{
    memset(out, 0, sizeof *out);
    int rc = CL_OK;
    CL_ENSURE(k->key.len < INT32_MAX && k->cert.len < INT32_MAX, CL_ELIMIT, "keys too large");
    BIO *kb = BIO_new_mem_buf(k->key.data, (int)k->key.len);
    BIO *cb = BIO_new_mem_buf(k->cert.data, (int)k->cert.len);
    CL_ENSURE_OUT(kb && cb, CL_ENOMEM, "out of memory");
    out->key = PEM_read_bio_PrivateKey(kb, NULL, NULL, NULL);
    CL_ENSURE_OUT(out->key, CL_EPARSE, "\"nitriding_key\" holds no PEM private key");
    out->cert = PEM_read_bio_X509(cb, NULL, NULL, NULL);
    CL_ENSURE_OUT(out->cert, CL_EPARSE, "\"nitriding_cert\" holds no PEM certificate");
    out->chain = sk_X509_new_null();
    CL_ENSURE_OUT(out->chain, CL_ENOMEM, "out of memory");
    X509 *extra;
    while ((extra = PEM_read_bio_X509(cb, NULL, NULL, NULL)) != NULL)
        if (!sk_X509_push(out->chain, extra)) {
            X509_free(extra);
            CL_FAIL_OUT(CL_ENOMEM, "out of memory");
        }
    ERR_clear_error();
    CL_ENSURE_OUT(X509_check_private_key(out->cert, out->key) == 1, CL_EVERIFY,
                  "\"nitriding_key\" does not belong to \"nitriding_cert\"");
    CL_TRY_OUT(cl_tls_cert_sha256(out->cert, out->cert_sha256));
out:
    ERR_clear_error();
    BIO_free(kb);
    BIO_free(cb);
    if (rc < 0)
        cl_tls_identity_free(out);
    return rc;
}

/* ---- peer policy ----------------------------------------------------------------- */

int cl_sync_policy_set_ours(cl_sync_policy *p, const cl_attestation_doc *ours)
{
    p->ours_present = ours->pcr_present;
    for (int i = 0; i < CL_PCR_COUNT; i++) {
        p->ours_len[i] = 0;
        if (!(ours->pcr_present & (1u << i)))
            continue;
        CL_ENSURE(ours->pcrs[i].len <= CL_PCR_MAX_LEN, CL_EPARSE, "PCR%d too long", i);
        memcpy(p->ours[i], ours->pcrs[i].data, ours->pcrs[i].len);
        p->ours_len[i] = ours->pcrs[i].len;
    }
    CL_ENSURE(p->ours_present & 1u, CL_EPARSE, "our own document has no PCR0");
    return CL_OK;
}

int cl_sync_policy_allow_pcr0(cl_sync_policy *p, const char *hex)
{
    CL_ENSURE(p->allow_pcr0_count < CL_SYNC_ALLOW_PCR0_MAX, CL_ELIMIT, "at most %d --sync-allow-pcr0",
              CL_SYNC_ALLOW_PCR0_MAX);
    uint8_t *v = p->allow_pcr0[p->allow_pcr0_count];
    CL_ENSURE(strlen(hex) == 96 && cl_hex_decode_fixed(hex, v, 48) == CL_OK, CL_EINVAL,
              "--sync-allow-pcr0 '%s': expected 96 hexadecimal digits (a SHA-384 PCR0)", hex);
    bool zero = true;
    for (size_t i = 0; i < 48; i++)
        zero &= v[i] == 0;
    CL_ENSURE(!zero, CL_EINVAL, "--sync-allow-pcr0: an all-zero PCR0 is a debug-mode enclave; refused");
    p->allow_pcr0_count++;
    return CL_OK;
}

static bool pcr_equal(const cl_sync_policy *p, const cl_attestation_doc *d, int i)
{
    return d->pcrs[i].len == p->ours_len[i] && !memcmp(d->pcrs[i].data, p->ours[i], p->ours_len[i]);
}

bool cl_sync_policy_signed(const cl_sync_policy *p)
{
    bool zero = true;
    for (size_t k = 0; k < p->ours_len[8]; k++)
        zero &= p->ours[8][k] == 0;
    return (p->ours_present & (1u << 8)) && p->ours_len[8] > 0 && !zero;
}

int cl_sync_check_peer(const cl_sync_policy *p, const cl_attestation_doc *theirs, const char **rule)
{
    *rule = "equal-pcrs";
    CL_ENSURE(theirs->pcr_present & 1u, CL_EVERIFY, "the peer's document has no PCR0");
    bool other_image = !pcr_equal(p, theirs, 0);
    if (other_image) {
        bool allowed = false;
        for (size_t j = 0; j < p->allow_pcr0_count && !allowed; j++)
            allowed = theirs->pcrs[0].len == 48 && !memcmp(theirs->pcrs[0].data, p->allow_pcr0[j], 48);
        if (allowed) {
            *rule = "sync-allow-pcr0";
        } else if (p->allow_same_signer && cl_sync_policy_signed(p) && (theirs->pcr_present & (1u << 8)) &&
                   pcr_equal(p, theirs, 8)) {
            *rule = "sync-allow-signer"; /* PCR8 is compared again below, with the others */
        } else {
            char hex[2 * CL_PCR_MAX_LEN + 1];
            size_t n = theirs->pcrs[0].len > 16 ? 16 : theirs->pcrs[0].len;
            cl_hex_encode(theirs->pcrs[0].data, n, hex);
            return cl_error_set(CL_EVERIFY, "the peer's PCR0 %s... differs from ours and is not in --sync-allow-pcr0%s",
                                hex, p->allow_same_signer ? " nor signed by our signing certificate (PCR8)" : "");
        }
    }
    CL_ENSURE((theirs->pcr_present & ~(1u << 4)) == (p->ours_present & ~(1u << 4)), CL_EVERIFY,
              "the peer's document has another set of PCRs than ours");
    for (int i = 1; i < CL_PCR_COUNT; i++) {
        if (i == 4 || !(p->ours_present & (1u << i)))
            continue; /* PCR4 measures the parent instance: it differs between replicas */
        if (other_image && (i == 1 || i == 2))
            continue; /* measured from the other image, as PCR0 is */
        CL_ENSURE(pcr_equal(p, theirs, i), CL_EVERIFY, "the peer's PCR%d differs from ours", i);
    }
    return CL_OK;
}

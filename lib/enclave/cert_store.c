/* The ACME store: records {account key, certificate key, chain, metadata}
 * whose keys are KMS ciphertexts bound to the rest of the record, in
 * DynamoDB or in a directory the parent keeps (through the host's file
 * store), and a lease taken with conditional writes. */
#include "cloister/enclave/cert_store.h"

#include "cloister/core/encoding.h"
#include "core/curl_http.h"

#include <jansson.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEFAULT_TIMEOUT_MS 10000
#define KEY_PLAINTEXT_MAX 4096
#define CIPHERTEXT_MAX 6144
/* a whole stored record: two ciphertexts in base64, the chain, the metadata */
#define FILE_RECORD_MAX (2 * 9000 + CL_CERT_STORE_CHAIN_MAX + CL_CERT_STORE_METADATA_MAX + 4096)
#define FILE_ANSWER_MAX (2 * FILE_RECORD_MAX)
#define RECORD_PREFIX "record."
#define LEASE_PREFIX "lease."
#define DDB_RECORD_PREFIX "record:"
#define DDB_LEASE_PREFIX "lease:"
#define DDB_KEY "pk"

typedef enum { BACKEND_FILE, BACKEND_DYNAMODB } backend_kind;

struct cl_cert_store {
    backend_kind kind;
    char location[1024]; /* file: DIR; dynamodb: TABLE */
    cl_address file_address;
    cl_dynamodb *ddb;
    cl_kms *kms;
    char *kms_key_id;
    unsigned timeout_ms;
    int64_t (*now_ms)(void *);
    void *now_arg;
    CURL *curl;
    pthread_mutex_t lock; /* the curl handle */
};

/* What the store holds for a record, before anything is checked. */
typedef struct stored {
    cl_buf account_ct, cert_ct, chain, metadata;
    int64_t updated_ms;
} stored;

static void stored_free(stored *s)
{
    cl_buf_free(&s->account_ct);
    cl_buf_free(&s->cert_ct);
    cl_buf_free(&s->chain);
    cl_buf_free(&s->metadata);
}

void cl_cert_record_free(cl_cert_record *r)
{
    cl_buf_free(&r->account_key);
    cl_buf_free(&r->cert_key);
    cl_buf_free(&r->chain_pem);
    cl_buf_free(&r->metadata);
    r->updated_ms = 0;
}

static int64_t system_now_ms(void *arg)
{
    (void)arg;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t now_ms(const cl_cert_store *s)
{
    return s->now_ms ? s->now_ms(s->now_arg) : system_now_ms(NULL);
}

/* ---- names and digests -------------------------------------------------- */

static int check_chars(const char *what, const char *name, const char *extra)
{
    CL_ENSURE(name && *name, CL_EINVAL, "no %s name", what);
    size_t n = strlen(name);
    CL_ENSURE(n <= CL_CERT_STORE_NAME_MAX, CL_EINVAL, "%s name '%.32s...' is longer than %d", what, name,
              CL_CERT_STORE_NAME_MAX);
    CL_ENSURE(name[0] != '.', CL_EINVAL, "%s name '%s' starts with '.'", what, name);
    for (const char *p = name; *p; p++)
        CL_ENSURE((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '.' ||
                      *p == '_' || *p == '-' || (extra && *p && strchr(extra, *p)),
                  CL_EINVAL, "%s name '%s': only letters, digits, '.', '_', '-'%s", what, name,
                  extra ? " and ':'" : "");
    return CL_OK;
}

int cl_cert_store_check_name(const char *name)
{
    return check_chars("record", name, NULL);
}

static void put_len(EVP_MD_CTX *c, uint64_t n)
{
    uint8_t b[8];
    for (int i = 7; i >= 0; i--, n >>= 8)
        b[i] = (uint8_t)n;
    EVP_DigestUpdate(c, b, sizeof b);
}

int cl_cert_store_record_digest(const char *name, const uint8_t *chain, size_t chain_len, const uint8_t *metadata,
                                size_t metadata_len, char out[65])
{
    static const char label[] = "cloister acme record v1";
    uint8_t md[32];
    unsigned mdlen = 0;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    CL_ENSURE_OSSL(c, CL_ENOMEM, "out of memory");
    bool ok = EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1;
    /* length-prefixed, so that no two (name, chain, metadata) give one input */
    EVP_DigestUpdate(c, label, sizeof label - 1);
    put_len(c, strlen(name));
    EVP_DigestUpdate(c, name, strlen(name));
    put_len(c, chain_len);
    if (chain_len)
        EVP_DigestUpdate(c, chain, chain_len);
    put_len(c, metadata_len);
    if (metadata_len)
        EVP_DigestUpdate(c, metadata, metadata_len);
    ok = ok && EVP_DigestFinal_ex(c, md, &mdlen) == 1 && mdlen == sizeof md;
    EVP_MD_CTX_free(c);
    CL_ENSURE_OSSL(ok, CL_ECRYPTO, "SHA-256");
    for (size_t i = 0; i < sizeof md; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    return CL_OK;
}

/* ---- what a record must be ---------------------------------------------- */

static int load_key(const cl_buf *pem, const char *what, EVP_PKEY **out)
{
    *out = NULL;
    BIO *b = BIO_new_mem_buf(pem->data, (int)pem->len);
    CL_ENSURE_OSSL(b, CL_ENOMEM, "out of memory");
    *out = PEM_read_bio_PrivateKey(b, NULL, NULL, (void *)"");
    BIO_free(b);
    CL_ENSURE_OSSL(*out, CL_EPARSE, "the %s is not a PEM private key", what);
    return CL_OK;
}

/* The chain parses (PEM certificates, leaf first) and its leaf holds key. */
static int check_chain(const cl_buf *chain, EVP_PKEY *key)
{
    CL_ENSURE(chain->len <= CL_CERT_STORE_CHAIN_MAX, CL_ELIMIT, "the chain has more than %d bytes",
              CL_CERT_STORE_CHAIN_MAX);
    BIO *b = BIO_new_mem_buf(chain->data, (int)chain->len);
    CL_ENSURE_OSSL(b, CL_ENOMEM, "out of memory");
    X509 *leaf = PEM_read_bio_X509(b, NULL, NULL, NULL);
    int rc = CL_OK;
    if (!leaf) {
        rc = cl_error_ossl(CL_EPARSE, "the chain holds no PEM certificate");
    } else {
        unsigned count = 1;
        X509 *next;
        while ((next = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
            X509_free(next);
            count++;
        }
        ERR_clear_error(); /* the end of the input */
        if (count > 10)
            rc = cl_error_set(CL_ELIMIT, "the chain has %u certificates (at most 10)", count);
        else if (key && EVP_PKEY_eq(X509_get0_pubkey(leaf), key) != 1)
            rc = cl_error_set(CL_EVERIFY, "the chain's leaf certificate does not hold the certificate key");
    }
    X509_free(leaf);
    BIO_free(b);
    return rc;
}

static int check_metadata(const cl_buf *m)
{
    if (!m->len)
        return CL_OK;
    CL_ENSURE(m->len <= CL_CERT_STORE_METADATA_MAX, CL_ELIMIT, "the metadata has more than %d bytes",
              CL_CERT_STORE_METADATA_MAX);
    json_error_t e;
    json_t *j = json_loadb((const char *)m->data, m->len, JSON_REJECT_DUPLICATES, &e);
    bool ok = json_is_object(j);
    json_decref(j);
    CL_ENSURE(ok, CL_EPARSE, "the metadata is not a JSON object");
    return CL_OK;
}

/* ---- KMS ------------------------------------------------------------------ */

static int key_context(const char *purpose, const char *name, const char *digest, cl_kms_context_entry ctx[3])
{
    ctx[0] = (cl_kms_context_entry){"purpose", purpose};
    ctx[1] = (cl_kms_context_entry){"name", name};
    ctx[2] = (cl_kms_context_entry){"record", digest};
    return 3;
}

static int seal(cl_cert_store *s, const char *purpose, const char *name, const char *digest, const cl_buf *key,
                cl_buf *ct)
{
    cl_kms_context_entry ctx[3];
    cl_kms_options o = {.key_id = s->kms_key_id, .context = ctx,
                        .context_count = (size_t)key_context(purpose, name, digest, ctx)};
    int rc = cl_kms_encrypt(s->kms, &o, key->data, key->len, ct);
    if (rc < 0)
        return cl_error_prefix(rc, "sealing the %s: ", purpose);
    return CL_OK;
}

static int open_key(cl_cert_store *s, const char *purpose, const char *name, const char *digest, const cl_buf *ct,
                    cl_buf *key)
{
    CL_ENSURE(ct->len >= 1 && ct->len <= CIPHERTEXT_MAX, CL_EPARSE, "the %s ciphertext has %zu bytes", purpose,
              ct->len);
    cl_kms_context_entry ctx[3];
    cl_kms_options o = {.key_id = s->kms_key_id, .context = ctx,
                        .context_count = (size_t)key_context(purpose, name, digest, ctx)};
    int rc = cl_kms_decrypt(s->kms, &o, ct->data, ct->len, key);
    if (rc < 0) {
        /* KMS's refusal of this context is what a tampered record looks like */
        const char *t = cl_kms_error_type(s->kms);
        if (!strcmp(t, "InvalidCiphertextException") || !strcmp(t, "IncorrectKeyException"))
            rc = CL_EVERIFY;
        return cl_error_prefix(rc, "record '%s': KMS would not open the %s for this record (edited, renamed or "
                                   "swapped by whoever stores it?): ",
                               name, purpose);
    }
    return CL_OK;
}

/* ---- the file back end (through `cloister host file-store`) ---------------- */

static int file_exchange(cl_cert_store *s, const char *op, json_t *req, long *status, json_t **answer)
{
    *answer = NULL;
    *status = 0;
    CL_ENSURE(json_object_set_new(req, "dir", json_string(s->location)) == 0, CL_ENOMEM, "out of memory");
    char *body = json_dumps(req, JSON_COMPACT);
    CL_ENSURE(body, CL_ENOMEM, "out of memory");
    char url[64];
    snprintf(url, sizeof url, "http://cloister-file-store/v1/%s", op);
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    if (!h) {
        free(body);
        return cl_error_set(CL_ENOMEM, "out of memory");
    }
    cl_http_call call = {.method = "POST", .url = url, .headers = h, .body = (const uint8_t *)body,
                         .body_len = strlen(body), .dial = &s->file_address, .timeout_ms = s->timeout_ms,
                         .max_response = FILE_ANSWER_MAX};
    pthread_mutex_lock(&s->lock);
    int rc = cl_http_perform(s->curl, &call);
    pthread_mutex_unlock(&s->lock);
    curl_slist_free_all(h);
    free(body);
    if (rc < 0)
        return cl_error_prefix(rc, "the host's file store: ");
    json_error_t e;
    json_t *a = call.response.len ? json_loadb((const char *)call.response.data, call.response.len,
                                               JSON_REJECT_DUPLICATES, &e)
                                  : NULL;
    cl_buf_free(&call.response);
    if (!json_is_object(a)) {
        json_decref(a);
        return cl_error_set(CL_EPROTO, "the host's file store answered %s with HTTP %ld and no JSON object", op,
                            call.status);
    }
    *status = call.status;
    *answer = a;
    return CL_OK;
}

/* The store's error answer, named; CL_EIO etc. by status. */
static int file_error(const char *op, const char *key, long status, const json_t *answer)
{
    const char *msg = json_string_value(json_object_get(answer, "error"));
    char shown[200] = "";
    for (size_t i = 0; msg && msg[i] && i + 1 < sizeof shown; i++)
        shown[i] = (unsigned char)msg[i] >= 0x20 && (unsigned char)msg[i] < 0x7f ? msg[i] : '?';
    int code = status == 404 ? CL_ENOTFOUND : status == 412 ? CL_ECONFLICT : status == 400 ? CL_EINVAL : CL_EIO;
    return cl_error_set(code, "the host's file store: %s %s: HTTP %ld%s%s", op, key, status, shown[0] ? ": " : "",
                        shown);
}

/* data and its version ("" when absent: CL_ENOTFOUND). */
static int file_get(cl_cert_store *s, const char *key, cl_buf *data, char version[65])
{
    version[0] = '\0';
    json_t *req = json_pack("{ss}", "key", key), *a = NULL;
    CL_ENSURE(req, CL_ENOMEM, "out of memory");
    long status;
    int rc = file_exchange(s, "get", req, &status, &a);
    json_decref(req);
    CL_TRY(rc);
    if (status != 200) {
        rc = file_error("get", key, status, a);
        json_decref(a);
        return rc;
    }
    const char *v = json_string_value(json_object_get(a, "version"));
    json_t *d = json_object_get(a, "data");
    if (!v || strlen(v) != 64 || !json_is_string(d)) {
        json_decref(a);
        return cl_error_set(CL_EPROTO, "the host's file store: get %s: no version or data in the answer", key);
    }
    memcpy(version, v, 65);
    cl_buf_reset(data);
    rc = cl_base64_decode((const uint8_t *)json_string_value(d), json_string_length(d), data);
    json_decref(a);
    if (rc < 0)
        return cl_error_set(CL_EPROTO, "the host's file store: get %s: data is not base64", key);
    return CL_OK;
}

/* expect: NULL unconditional, "" only when absent, else only when the
 * current version is that one.  CL_ECONFLICT when the condition failed. */
static int file_put(cl_cert_store *s, const char *key, const uint8_t *data, size_t len, const char *expect)
{
    cl_buf b = CL_BUF_INIT;
    CL_TRY(cl_base64_encode(data, len, &b));
    json_t *req = json_pack("{ssss#}", "key", key, "data", (const char *)b.data, (int)strlen((const char *)b.data));
    cl_buf_free(&b);
    CL_ENSURE(req, CL_ENOMEM, "out of memory");
    if (expect)
        json_object_set_new(req, "expect", json_string(expect));
    json_t *a = NULL;
    long status;
    int rc = file_exchange(s, "put", req, &status, &a);
    json_decref(req);
    CL_TRY(rc);
    rc = status == 200 ? CL_OK : file_error("put", key, status, a);
    json_decref(a);
    return rc;
}

static int file_delete(cl_cert_store *s, const char *key, const char *expect)
{
    json_t *req = json_pack("{ss}", "key", key), *a = NULL;
    CL_ENSURE(req, CL_ENOMEM, "out of memory");
    if (expect)
        json_object_set_new(req, "expect", json_string(expect));
    long status;
    int rc = file_exchange(s, "delete", req, &status, &a);
    json_decref(req);
    CL_TRY(rc);
    rc = status == 200 ? CL_OK : file_error("delete", key, status, a);
    json_decref(a);
    return rc;
}

/* ---- records in the two back ends ----------------------------------------- */

static int b64_field(const json_t *o, const char *k, bool required, cl_buf *out)
{
    const json_t *v = json_object_get(o, k);
    if (!v && !required)
        return CL_OK;
    CL_ENSURE(json_is_string(v), CL_EPARSE, "the record's %s is missing or not a string", k);
    cl_buf_reset(out);
    int rc = cl_base64_decode((const uint8_t *)json_string_value(v), json_string_length(v), out);
    if (rc < 0)
        return cl_error_set(CL_EPARSE, "the record's %s is not base64", k);
    return CL_OK;
}

static int text_field(const json_t *o, const char *k, cl_buf *out)
{
    const json_t *v = json_object_get(o, k);
    if (!v)
        return CL_OK;
    CL_ENSURE(json_is_string(v), CL_EPARSE, "the record's %s is not a string", k);
    cl_buf_reset(out);
    return cl_buf_append(out, json_string_value(v), json_string_length(v));
}

/* The file back end's record document. */
static int file_record_parse(const char *name, const cl_buf *doc, stored *out)
{
    json_error_t e;
    json_t *o = json_loadb((const char *)doc->data, doc->len, JSON_REJECT_DUPLICATES, &e);
    int rc = CL_OK;
    CL_ENSURE_OUT(json_is_object(o), CL_EPARSE, "record '%s' is not a JSON object", name);
    const json_t *v = json_object_get(o, "v");
    CL_ENSURE_OUT(json_is_integer(v) && json_integer_value(v) == 1, CL_EPARSE, "record '%s' is not version 1", name);
    const char *n = json_string_value(json_object_get(o, "name"));
    CL_ENSURE_OUT(n && !strcmp(n, name), CL_EVERIFY, "record '%s' names itself '%.64s'", name, n ? n : "");
    CL_TRY_OUT(b64_field(o, "account_key", true, &out->account_ct));
    CL_TRY_OUT(b64_field(o, "cert_key", false, &out->cert_ct));
    CL_TRY_OUT(text_field(o, "chain", &out->chain));
    CL_TRY_OUT(text_field(o, "metadata", &out->metadata));
    const json_t *u = json_object_get(o, "updated");
    out->updated_ms = json_is_integer(u) ? json_integer_value(u) : 0;
out:
    json_decref(o);
    return rc;
}

static int file_record_make(const char *name, const stored *st, cl_buf *doc)
{
    cl_buf a = CL_BUF_INIT, c = CL_BUF_INIT;
    int rc = cl_base64_encode(st->account_ct.data, st->account_ct.len, &a);
    if (rc == CL_OK && st->cert_ct.len)
        rc = cl_base64_encode(st->cert_ct.data, st->cert_ct.len, &c);
    json_t *o = rc == CL_OK ? json_pack("{sisssssI}", "v", 1, "name", name, "account_key", (const char *)a.data,
                                        "updated", (json_int_t)st->updated_ms)
                            : NULL;
    if (o && st->cert_ct.len)
        json_object_set_new(o, "cert_key", json_string((const char *)c.data));
    if (o && st->chain.len)
        json_object_set_new(o, "chain", json_stringn((const char *)st->chain.data, (int)st->chain.len));
    if (o && st->metadata.len)
        json_object_set_new(o, "metadata", json_stringn((const char *)st->metadata.data, (int)st->metadata.len));
    char *text = o ? json_dumps(o, JSON_INDENT(1) | JSON_PRESERVE_ORDER) : NULL;
    json_decref(o);
    cl_buf_free(&a);
    cl_buf_free(&c);
    CL_ENSURE(text, CL_ENOMEM, "out of memory");
    cl_buf_reset(doc);
    rc = cl_buf_append(doc, text, strlen(text));
    free(text);
    return rc;
}

static json_t *ddb_key(const char *prefix, const char *name)
{
    char k[CL_CERT_STORE_NAME_MAX + 16];
    snprintf(k, sizeof k, "%s%s", prefix, name);
    json_t *v = cl_dynamodb_s(k);
    return v ? json_pack("{so}", DDB_KEY, v) : NULL;
}

static int ddb_record_parse(const char *name, const json_t *item, stored *out)
{
    int64_t v = 0;
    CL_TRY(cl_dynamodb_get_n(item, "v", &v));
    CL_ENSURE(v == 1, CL_EPARSE, "record '%s' is not version 1", name);
    int rc = cl_dynamodb_get_b(item, "account_key", &out->account_ct);
    if (rc < 0)
        return cl_error_prefix(CL_EPARSE, "record '%s': ", name);
    rc = cl_dynamodb_get_b(item, "cert_key", &out->cert_ct);
    CL_ENSURE(rc == CL_OK || rc == CL_ENOTFOUND, CL_EPARSE, "record '%s': %s", name, cl_error_message());
    const char *t;
    rc = cl_dynamodb_get_s(item, "chain", &t);
    if (rc == CL_OK)
        CL_TRY(cl_buf_append(&out->chain, t, strlen(t)));
    CL_ENSURE(rc == CL_OK || rc == CL_ENOTFOUND, CL_EPARSE, "record '%s': %s", name, cl_error_message());
    rc = cl_dynamodb_get_s(item, "metadata", &t);
    if (rc == CL_OK)
        CL_TRY(cl_buf_append(&out->metadata, t, strlen(t)));
    CL_ENSURE(rc == CL_OK || rc == CL_ENOTFOUND, CL_EPARSE, "record '%s': %s", name, cl_error_message());
    if (cl_dynamodb_get_n(item, "updated", &out->updated_ms) < 0)
        out->updated_ms = 0;
    return CL_OK;
}

static json_t *ddb_record_make(const char *name, const stored *st)
{
    json_t *item = ddb_key(DDB_RECORD_PREFIX, name);
    if (!item)
        return NULL;
    json_object_set_new(item, "v", cl_dynamodb_n(1));
    json_object_set_new(item, "account_key", cl_dynamodb_b(st->account_ct.data, st->account_ct.len));
    if (st->cert_ct.len)
        json_object_set_new(item, "cert_key", cl_dynamodb_b(st->cert_ct.data, st->cert_ct.len));
    /* DynamoDB refuses NUL-free text no more than any other; jansson needs
     * the length for text that is not a C string */
    if (st->chain.len)
        json_object_set_new(item, "chain", json_pack("{ss#}", "S", (const char *)st->chain.data, (int)st->chain.len));
    if (st->metadata.len)
        json_object_set_new(item, "metadata",
                            json_pack("{ss#}", "S", (const char *)st->metadata.data, (int)st->metadata.len));
    json_object_set_new(item, "updated", cl_dynamodb_n(st->updated_ms));
    if (json_object_size(item) < 4) {
        json_decref(item);
        return NULL;
    }
    return item;
}

/* ---- the store ---------------------------------------------------------------- */

int cl_cert_store_open(const cl_cert_store_config *cfg, cl_cert_store **out)
{
    *out = NULL;
    CL_ENSURE(cfg->spec, CL_EINVAL, "no store (file:DIR or dynamodb:TABLE)");
    CL_ENSURE(cfg->kms && cfg->kms_key_id && *cfg->kms_key_id, CL_EINVAL,
              "the ACME store needs KMS and a key id: it keeps private keys only as KMS ciphertexts");
    backend_kind kind;
    const char *loc;
    if (!strncmp(cfg->spec, "file:", 5)) {
        kind = BACKEND_FILE;
        loc = cfg->spec + 5;
        CL_ENSURE(loc[0] == '/' && strlen(loc) < 1024 && !strstr(loc, "/../") && !strchr(loc, '\n'), CL_EINVAL,
                  "store '%.64s': file:DIR takes an absolute directory on the parent", cfg->spec);
    } else if (!strncmp(cfg->spec, "dynamodb:", 9)) {
        kind = BACKEND_DYNAMODB;
        loc = cfg->spec + 9;
        CL_ENSURE(cfg->dynamodb, CL_EINVAL, "store %s needs a DynamoDB client", cfg->spec);
        size_t n = strlen(loc);
        CL_ENSURE(n >= 3 && n <= 255, CL_EINVAL, "store '%.64s': a table name is 3..255 characters", cfg->spec);
    } else {
        return cl_error_set(CL_EINVAL, "store '%.64s': expected file:DIR or dynamodb:TABLE", cfg->spec);
    }
    cl_address fa;
    if (kind == BACKEND_FILE) {
        int rc = cl_address_parse(cfg->file_address ? cfg->file_address : CL_CERT_STORE_FILE_DEFAULT, &fa);
        if (rc < 0)
            return cl_error_prefix(rc, "the host's file store address: ");
        CL_TRY(cl_curl_init());
    }
    cl_cert_store *s = calloc(1, sizeof *s);
    CL_ENSURE(s, CL_ENOMEM, "out of memory");
    s->kind = kind;
    snprintf(s->location, sizeof s->location, "%s", loc);
    if (kind == BACKEND_FILE)
        s->file_address = fa;
    s->ddb = cfg->dynamodb;
    s->kms = cfg->kms;
    s->kms_key_id = strdup(cfg->kms_key_id);
    s->timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : DEFAULT_TIMEOUT_MS;
    s->now_ms = cfg->now_ms;
    s->now_arg = cfg->now_arg;
    pthread_mutex_init(&s->lock, NULL);
    if (kind == BACKEND_FILE)
        s->curl = curl_easy_init();
    if (!s->kms_key_id || (kind == BACKEND_FILE && !s->curl)) {
        cl_cert_store_free(s);
        return cl_error_set(CL_ENOMEM, "out of memory");
    }
    *out = s;
    return CL_OK;
}

void cl_cert_store_free(cl_cert_store *s)
{
    if (!s)
        return;
    if (s->curl)
        curl_easy_cleanup(s->curl);
    free(s->kms_key_id);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

static int check_record(const cl_cert_record *rec, EVP_PKEY **cert_key)
{
    *cert_key = NULL;
    EVP_PKEY *ak = NULL;
    CL_ENSURE(rec->account_key.len >= 1 && rec->account_key.len <= KEY_PLAINTEXT_MAX, CL_EINVAL,
              "the account key is 1..%d bytes of PEM", KEY_PLAINTEXT_MAX);
    int rc = load_key(&rec->account_key, "account key", &ak);
    EVP_PKEY_free(ak);
    if (rc < 0)
        return CL_EINVAL;
    CL_ENSURE(!rec->cert_key.len == !rec->chain_pem.len, CL_EINVAL,
              "a certificate key and a chain go together (one without the other)");
    if (rec->cert_key.len) {
        CL_ENSURE(rec->cert_key.len <= KEY_PLAINTEXT_MAX, CL_EINVAL, "the certificate key is at most %d bytes",
                  KEY_PLAINTEXT_MAX);
        rc = load_key(&rec->cert_key, "certificate key", cert_key);
        if (rc == CL_OK)
            rc = check_chain(&rec->chain_pem, *cert_key);
        if (rc < 0) {
            EVP_PKEY_free(*cert_key);
            *cert_key = NULL;
            return CL_EINVAL;
        }
    }
    rc = check_metadata(&rec->metadata);
    EVP_PKEY_free(*cert_key);
    *cert_key = NULL;
    return rc < 0 ? CL_EINVAL : CL_OK;
}

int cl_cert_store_put(cl_cert_store *s, const char *name, const cl_cert_record *rec)
{
    CL_TRY(cl_cert_store_check_name(name));
    EVP_PKEY *unused;
    int rc = check_record(rec, &unused);
    if (rc < 0)
        return cl_error_prefix(rc, "record '%s': ", name);
    char digest[65];
    CL_TRY(cl_cert_store_record_digest(name, rec->chain_pem.data, rec->chain_pem.len, rec->metadata.data,
                                       rec->metadata.len, digest));
    stored st = {.account_ct = CL_BUF_INIT, .updated_ms = now_ms(s)};
    cl_buf doc = CL_BUF_INIT;
    json_t *item = NULL;
    CL_TRY_OUT(seal(s, CL_KMS_PURPOSE_ACME_ACCOUNT_KEY, name, digest, &rec->account_key, &st.account_ct));
    if (rec->cert_key.len)
        CL_TRY_OUT(seal(s, CL_KMS_PURPOSE_ACME_CERT_KEY, name, digest, &rec->cert_key, &st.cert_ct));
    CL_TRY_OUT(cl_buf_append(&st.chain, rec->chain_pem.data, rec->chain_pem.len));
    CL_TRY_OUT(cl_buf_append(&st.metadata, rec->metadata.data, rec->metadata.len));
    if (s->kind == BACKEND_FILE) {
        char key[CL_CERT_STORE_NAME_MAX + 16];
        snprintf(key, sizeof key, RECORD_PREFIX "%s", name);
        CL_TRY_OUT(file_record_make(name, &st, &doc));
        CL_TRY_OUT(file_put(s, key, doc.data, doc.len, NULL));
    } else {
        item = ddb_record_make(name, &st);
        CL_ENSURE_OUT(item, CL_ENOMEM, "out of memory");
        CL_TRY_OUT(cl_dynamodb_put_item(s->ddb, s->location, item, NULL, NULL));
    }
out:
    json_decref(item);
    cl_buf_free(&doc);
    stored_free(&st);
    if (rc < 0)
        return cl_error_prefix(rc, "storing record '%s': ", name);
    return rc;
}

static int fetch(cl_cert_store *s, const char *name, stored *st)
{
    if (s->kind == BACKEND_FILE) {
        char key[CL_CERT_STORE_NAME_MAX + 16], version[65];
        snprintf(key, sizeof key, RECORD_PREFIX "%s", name);
        cl_buf doc = CL_BUF_INIT;
        int rc = file_get(s, key, &doc, version);
        if (rc == CL_OK)
            rc = doc.len <= FILE_RECORD_MAX ? file_record_parse(name, &doc, st)
                                            : cl_error_set(CL_ELIMIT, "record '%s' is too large", name);
        cl_buf_free(&doc);
        return rc;
    }
    json_t *key = ddb_key(DDB_RECORD_PREFIX, name), *item = NULL;
    CL_ENSURE(key, CL_ENOMEM, "out of memory");
    cl_dynamodb_options o = {.consistent_read = true};
    int rc = cl_dynamodb_get_item(s->ddb, s->location, key, &o, &item);
    json_decref(key);
    CL_TRY(rc);
    CL_ENSURE(item, CL_ENOTFOUND, "no record '%s' in table %s", name, s->location);
    rc = ddb_record_parse(name, item, st);
    json_decref(item);
    return rc;
}

int cl_cert_store_get(cl_cert_store *s, const char *name, cl_cert_record *out)
{
    cl_cert_record_free(out);
    CL_TRY(cl_cert_store_check_name(name));
    stored st = {0};
    EVP_PKEY *ck = NULL;
    char digest[65];
    int rc = fetch(s, name, &st);
    CL_TRY_OUT(rc);
    CL_ENSURE_OUT(!st.cert_ct.len == !st.chain.len, CL_EVERIFY,
                  "record '%s' has a certificate key without a chain or the reverse", name);
    CL_ENSURE_OUT(st.chain.len <= CL_CERT_STORE_CHAIN_MAX && st.metadata.len <= CL_CERT_STORE_METADATA_MAX,
                  CL_ELIMIT, "record '%s': chain or metadata too large", name);
    CL_TRY_OUT(cl_cert_store_record_digest(name, st.chain.data, st.chain.len, st.metadata.data, st.metadata.len,
                                           digest));
    /* KMS checks the binding; only then is anything of the record read */
    CL_TRY_OUT(open_key(s, CL_KMS_PURPOSE_ACME_ACCOUNT_KEY, name, digest, &st.account_ct, &out->account_key));
    if (st.cert_ct.len)
        CL_TRY_OUT(open_key(s, CL_KMS_PURPOSE_ACME_CERT_KEY, name, digest, &st.cert_ct, &out->cert_key));
    EVP_PKEY *ak = NULL;
    rc = load_key(&out->account_key, "account key", &ak);
    EVP_PKEY_free(ak);
    CL_TRY_OUT(rc < 0 ? CL_EVERIFY : CL_OK);
    if (st.cert_ct.len) {
        CL_TRY_OUT(load_key(&out->cert_key, "certificate key", &ck) < 0 ? CL_EVERIFY : CL_OK);
        rc = check_chain(&st.chain, ck);
        CL_TRY_OUT(rc < 0 ? CL_EVERIFY : CL_OK);
    }
    rc = check_metadata(&st.metadata);
    CL_TRY_OUT(rc < 0 ? CL_EVERIFY : CL_OK);
    CL_TRY_OUT(cl_buf_append(&out->chain_pem, st.chain.data, st.chain.len));
    CL_TRY_OUT(cl_buf_append(&out->metadata, st.metadata.data, st.metadata.len));
    out->updated_ms = st.updated_ms;
out:
    EVP_PKEY_free(ck);
    stored_free(&st);
    if (rc < 0) {
        cl_cert_record_free(out);
        if (rc != CL_ENOTFOUND)
            return cl_error_prefix(rc, "reading record '%s': ", name);
    }
    return rc;
}

int cl_cert_store_delete(cl_cert_store *s, const char *name)
{
    CL_TRY(cl_cert_store_check_name(name));
    if (s->kind == BACKEND_FILE) {
        char key[CL_CERT_STORE_NAME_MAX + 16];
        snprintf(key, sizeof key, RECORD_PREFIX "%s", name);
        return file_delete(s, key, NULL);
    }
    json_t *key = ddb_key(DDB_RECORD_PREFIX, name);
    CL_ENSURE(key, CL_ENOMEM, "out of memory");
    int rc = cl_dynamodb_delete_item(s->ddb, s->location, key, NULL, NULL);
    json_decref(key);
    return rc;
}

/* ---- the lease ------------------------------------------------------------------ */

static int check_lease_args(const char *name, const char *owner, unsigned ttl_ms)
{
    CL_TRY(check_chars("lease", name, NULL));
    CL_TRY(check_chars("owner", owner, ":"));
    CL_ENSURE(ttl_ms >= 1 && ttl_ms <= 24u * 3600 * 1000, CL_EINVAL, "a lease lasts 1 ms..24 h, not %u ms", ttl_ms);
    return CL_OK;
}

static int lease_conflict(const char *name, const cl_cert_lease *h, int64_t now)
{
    return cl_error_set(CL_ECONFLICT, "lease '%s' is held by '%s' for another %lld ms", name, h->owner,
                        (long long)(h->expires_ms - now));
}

/* The file back end's lease document: {"owner": "...", "expires": ms}. */
static int file_lease_read(cl_cert_store *s, const char *name, cl_cert_lease *l, char version[65])
{
    char key[CL_CERT_STORE_NAME_MAX + 16];
    snprintf(key, sizeof key, LEASE_PREFIX "%s", name);
    memset(l, 0, sizeof *l);
    cl_buf doc = CL_BUF_INIT;
    int rc = file_get(s, key, &doc, version);
    if (rc == CL_ENOTFOUND) {
        cl_error_clear();
        version[0] = '\0';
        return CL_OK;
    }
    CL_TRY(rc);
    json_error_t e;
    json_t *o = doc.len <= 1024 ? json_loadb((const char *)doc.data, doc.len, JSON_REJECT_DUPLICATES, &e) : NULL;
    cl_buf_free(&doc);
    const char *owner = json_string_value(json_object_get(o, "owner"));
    const json_t *exp = json_object_get(o, "expires");
    rc = owner && strlen(owner) <= CL_CERT_STORE_NAME_MAX && json_is_integer(exp)
             ? CL_OK
             : cl_error_set(CL_EPARSE, "lease '%s' in the file store is malformed", name);
    if (rc == CL_OK) {
        snprintf(l->owner, sizeof l->owner, "%s", owner);
        l->expires_ms = json_integer_value(exp);
    }
    json_decref(o);
    return rc;
}

static int file_lease_write(cl_cert_store *s, const char *name, const char *owner, int64_t expires,
                            const char *expect)
{
    char key[CL_CERT_STORE_NAME_MAX + 16];
    snprintf(key, sizeof key, LEASE_PREFIX "%s", name);
    json_t *o = json_pack("{sssI}", "owner", owner, "expires", (json_int_t)expires);
    char *t = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    CL_ENSURE(t, CL_ENOMEM, "out of memory");
    int rc = file_put(s, key, (const uint8_t *)t, strlen(t), expect);
    free(t);
    return rc;
}

static int ddb_lease_read(cl_cert_store *s, const char *name, cl_cert_lease *l)
{
    memset(l, 0, sizeof *l);
    json_t *key = ddb_key(DDB_LEASE_PREFIX, name), *item = NULL;
    CL_ENSURE(key, CL_ENOMEM, "out of memory");
    cl_dynamodb_options o = {.consistent_read = true};
    int rc = cl_dynamodb_get_item(s->ddb, s->location, key, &o, &item);
    json_decref(key);
    CL_TRY(rc);
    if (!item)
        return CL_OK;
    const char *owner;
    rc = cl_dynamodb_get_s(item, "owner", &owner);
    if (rc == CL_OK && strlen(owner) <= CL_CERT_STORE_NAME_MAX)
        snprintf(l->owner, sizeof l->owner, "%s", owner);
    if (rc == CL_OK)
        rc = cl_dynamodb_get_n(item, "expires", &l->expires_ms);
    json_decref(item);
    return rc < 0 ? cl_error_prefix(CL_EPARSE, "lease '%s': ", name) : CL_OK;
}

/* One conditional write of the lease item: acquire (absent, expired or
 * ours) or renew (ours). */
static int ddb_lease_write(cl_cert_store *s, const char *name, const char *owner, int64_t now, int64_t expires,
                           bool renew)
{
    json_t *item = ddb_key(DDB_LEASE_PREFIX, name);
    json_t *names = json_pack("{ssss}", "#o", "owner", "#e", "expires");
    json_t *values = json_pack("{so}", ":me", cl_dynamodb_s(owner));
    int rc = CL_OK;
    CL_ENSURE_OUT(item && names && values, CL_ENOMEM, "out of memory");
    cl_dynamodb_options o = {.names = names, .values = values};
    if (renew) {
        /* only the expiry moves, and only while the item still names us */
        o.condition = "#o = :me";
        o.update = "SET #e = :exp";
        json_object_set_new(values, ":exp", cl_dynamodb_n(expires));
        rc = cl_dynamodb_update_item(s->ddb, s->location, item, &o, NULL);
    } else {
        json_object_set_new(item, "owner", cl_dynamodb_s(owner));
        json_object_set_new(item, "expires", cl_dynamodb_n(expires));
        o.condition = "attribute_not_exists(#o) OR #e < :now OR #o = :me";
        json_object_set_new(values, ":now", cl_dynamodb_n(now));
        rc = cl_dynamodb_put_item(s->ddb, s->location, item, &o, NULL);
    }
out:
    json_decref(item);
    json_decref(names);
    json_decref(values);
    return rc;
}

static int lease_take(cl_cert_store *s, const char *name, const char *owner, unsigned ttl_ms, cl_cert_lease *held,
                      bool renew)
{
    CL_TRY(check_lease_args(name, owner, ttl_ms));
    cl_cert_lease cur, dummy;
    if (!held)
        held = &dummy;
    memset(held, 0, sizeof *held);
    int64_t now = now_ms(s), expires = now + ttl_ms;
    int rc;
    if (s->kind == BACKEND_DYNAMODB) {
        rc = ddb_lease_write(s, name, owner, now, expires, renew);
        if (rc == CL_OK) {
            snprintf(held->owner, sizeof held->owner, "%s", owner);
            held->expires_ms = expires;
            return CL_OK;
        }
        if (rc != CL_ECONFLICT)
            return cl_error_prefix(rc, "lease '%s': ", name);
        /* who has it, for the caller and the log */
        if (ddb_lease_read(s, name, &cur) == CL_OK)
            *held = cur;
        if (renew && !held->owner[0])
            return cl_error_set(CL_ECONFLICT, "lease '%s' was lost: nobody holds it now", name);
        return lease_conflict(name, held, now);
    }
    char version[65];
    CL_TRY(file_lease_read(s, name, &cur, version));
    bool ours = version[0] && !strcmp(cur.owner, owner);
    if (renew && !ours) {
        *held = cur;
        if (!version[0])
            return cl_error_set(CL_ECONFLICT, "lease '%s' was lost: nobody holds it now", name);
        return lease_conflict(name, held, now);
    }
    if (!renew && version[0] && !ours && cur.expires_ms >= now) {
        *held = cur;
        return lease_conflict(name, held, now);
    }
    /* compare-and-swap on what was read: someone who wrote in between wins */
    rc = file_lease_write(s, name, owner, expires, version);
    if (rc == CL_ECONFLICT) {
        if (file_lease_read(s, name, &cur, version) == CL_OK)
            *held = cur;
        return cl_error_set(CL_ECONFLICT, "lease '%s' is held by '%s' (it took the lease as we did)", name,
                            held->owner);
    }
    if (rc < 0)
        return cl_error_prefix(rc, "lease '%s': ", name);
    snprintf(held->owner, sizeof held->owner, "%s", owner);
    held->expires_ms = expires;
    return CL_OK;
}

int cl_cert_store_lease_acquire(cl_cert_store *s, const char *name, const char *owner, unsigned ttl_ms,
                                cl_cert_lease *held)
{
    return lease_take(s, name, owner, ttl_ms, held, false);
}

int cl_cert_store_lease_renew(cl_cert_store *s, const char *name, const char *owner, unsigned ttl_ms,
                              cl_cert_lease *held)
{
    return lease_take(s, name, owner, ttl_ms, held, true);
}

int cl_cert_store_lease_release(cl_cert_store *s, const char *name, const char *owner)
{
    CL_TRY(check_lease_args(name, owner, 1));
    if (s->kind == BACKEND_DYNAMODB) {
        json_t *key = ddb_key(DDB_LEASE_PREFIX, name);
        json_t *names = json_pack("{ss}", "#o", "owner");
        json_t *values = json_pack("{so}", ":me", cl_dynamodb_s(owner));
        int rc = key && names && values ? CL_OK : cl_error_set(CL_ENOMEM, "out of memory");
        cl_dynamodb_options o = {.condition = "#o = :me", .names = names, .values = values};
        if (rc == CL_OK)
            rc = cl_dynamodb_delete_item(s->ddb, s->location, key, &o, NULL);
        json_decref(key);
        json_decref(names);
        json_decref(values);
        if (rc == CL_ECONFLICT) {
            cl_error_clear();
            return CL_OK; /* not ours (any more): nothing to give up */
        }
        return rc;
    }
    cl_cert_lease cur;
    char version[65];
    CL_TRY(file_lease_read(s, name, &cur, version));
    if (!version[0] || strcmp(cur.owner, owner))
        return CL_OK;
    char key[CL_CERT_STORE_NAME_MAX + 16];
    snprintf(key, sizeof key, LEASE_PREFIX "%s", name);
    int rc = file_delete(s, key, version);
    if (rc == CL_ECONFLICT || rc == CL_ENOTFOUND) {
        cl_error_clear();
        return CL_OK;
    }
    return rc;
}

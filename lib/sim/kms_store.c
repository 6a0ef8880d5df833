/* kms-local's SQLite state. */
#include "cloister/sim/kms_store.h"

#include "sim/sqlite_lazy.h"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define IV_LEN 12
#define TAG_LEN 16
#define CHECK_TEXT "cloister kms-local master key check"

struct cl_kms_store {
    sqlite3 *db;
    uint8_t master[CL_KMS_MASTER_KEY_LEN];
};

/* ---- AES-256-GCM ----------------------------------------------------------------------------- */

int cl_kms_seal(const uint8_t key[32], const uint8_t *aad, size_t aad_len, const uint8_t *pt, size_t pt_len,
                cl_buf *out)
{
    CL_ENSURE(pt_len < (1u << 30), CL_ELIMIT, "plaintext too large");
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    CL_ENSURE(ctx, CL_ENOMEM, "out of memory");
    int rc = CL_OK, n = 0;
    uint8_t iv[IV_LEN];
    CL_ENSURE_OSSL_OUT(RAND_bytes(iv, IV_LEN) == 1, CL_ECRYPTO, "no randomness");
    CL_TRY_OUT(cl_buf_reserve(out, IV_LEN + pt_len + TAG_LEN));
    uint8_t *p = out->data + out->len;
    memcpy(p, iv, IV_LEN);
    if (EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, iv) != 1 ||
        (aad_len && EVP_EncryptUpdate(ctx, NULL, &n, aad, (int)aad_len) != 1) ||
        EVP_EncryptUpdate(ctx, p + IV_LEN, &n, pt, (int)pt_len) != 1 ||
        EVP_EncryptFinal_ex(ctx, p + IV_LEN + n, &n) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_LEN, p + IV_LEN + pt_len) != 1)
        CL_OSSL_OUT(CL_ECRYPTO, "AES-256-GCM encryption");
    out->len += IV_LEN + pt_len + TAG_LEN;
out:
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

int cl_kms_unseal(const uint8_t key[32], const uint8_t *aad, size_t aad_len, const uint8_t *in, size_t in_len,
                  cl_buf *out)
{
    CL_ENSURE(in_len >= IV_LEN + TAG_LEN, CL_EVERIFY, "sealed data too short");
    size_t ct_len = in_len - IV_LEN - TAG_LEN;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    CL_ENSURE(ctx, CL_ENOMEM, "out of memory");
    int rc = CL_OK, n = 0;
    CL_TRY_OUT(cl_buf_reserve(out, ct_len + 1));
    uint8_t *p = out->data + out->len;
    if (EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, in) != 1 ||
        (aad_len && EVP_DecryptUpdate(ctx, NULL, &n, aad, (int)aad_len) != 1) ||
        EVP_DecryptUpdate(ctx, p, &n, in + IV_LEN, (int)ct_len) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_LEN, (void *)(in + IV_LEN + ct_len)) != 1)
        CL_OSSL_OUT(CL_ECRYPTO, "AES-256-GCM decryption");
    if (EVP_DecryptFinal_ex(ctx, p + n, &n) != 1) {
        cl_wipe(p, ct_len);
        CL_OSSL_OUT(CL_EVERIFY, "authentication tag mismatch");
    }
    out->len += ct_len;
out:
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

/* ---- database ------------------------------------------------------------------------------- */

static int db_error(cl_kms_store *s, const char *what)
{
    return cl_error_set(CL_EIO, "SQLite %s: %s", what, sqlite3_errmsg(s->db));
}

static int exec(cl_kms_store *s, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(s->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        int rc = cl_error_set(CL_EIO, "SQLite: %s", msg ? msg : "error");
        sqlite3_free(msg);
        return rc;
    }
    return CL_OK;
}

static int prepare(cl_kms_store *s, const char *sql, sqlite3_stmt **st)
{
    if (sqlite3_prepare_v2(s->db, sql, -1, st, NULL) != SQLITE_OK)
        return db_error(s, "prepare");
    return CL_OK;
}

static int check_master(cl_kms_store *s)
{
    sqlite3_stmt *st = NULL;
    int rc = CL_OK;
    cl_buf sealed = CL_BUF_INIT, plain = CL_BUF_INIT;
    CL_TRY_OUT(prepare(s, "SELECT value FROM meta WHERE name = 'check'", &st));
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        const uint8_t *v = sqlite3_column_blob(st, 0);
        int n = sqlite3_column_bytes(st, 0);
        rc = v ? cl_kms_unseal(s->master, (const uint8_t *)"meta", 4, v, (size_t)n, &plain) : CL_EVERIFY;
        if (rc == CL_OK && (plain.len != strlen(CHECK_TEXT) || memcmp(plain.data, CHECK_TEXT, plain.len)))
            rc = CL_EVERIFY;
        if (rc < 0)
            CL_FAIL_OUT(CL_EVERIFY, "the master key is not the one this state was created with");
    } else if (step == SQLITE_DONE) {
        sqlite3_finalize(st);
        st = NULL;
        CL_TRY_OUT(cl_kms_seal(s->master, (const uint8_t *)"meta", 4, (const uint8_t *)CHECK_TEXT, strlen(CHECK_TEXT),
                               &sealed));
        CL_TRY_OUT(prepare(s, "INSERT INTO meta(name, value) VALUES('check', ?)", &st));
        sqlite3_bind_blob(st, 1, sealed.data, (int)sealed.len, SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_DONE)
            CL_FAIL_OUT(CL_EIO, "SQLite insert: %s", sqlite3_errmsg(s->db));
    } else {
        CL_FAIL_OUT(CL_EIO, "SQLite: %s", sqlite3_errmsg(s->db));
    }
out:
    sqlite3_finalize(st);
    cl_buf_free(&sealed);
    cl_buf_free(&plain);
    return rc;
}

int cl_kms_store_open(const char *path, const uint8_t master[CL_KMS_MASTER_KEY_LEN], cl_kms_store **out)
{
    *out = NULL;
    CL_TRY(cl_sqlite_load());
    cl_kms_store *s = calloc(1, sizeof *s);
    CL_ENSURE(s, CL_ENOMEM, "out of memory");
    memcpy(s->master, master, CL_KMS_MASTER_KEY_LEN);
    int rc = CL_OK;
    if (sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK)
        CL_FAIL_OUT(CL_EIO, "cannot open %s: %s", path, s->db ? sqlite3_errmsg(s->db) : "out of memory");
    sqlite3_busy_timeout(s->db, 5000);
    CL_TRY_OUT(exec(s, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;"
                       "CREATE TABLE IF NOT EXISTS meta(name TEXT PRIMARY KEY, value BLOB NOT NULL);"
                       "CREATE TABLE IF NOT EXISTS keys(id TEXT PRIMARY KEY, created INTEGER NOT NULL,"
                       " state INTEGER NOT NULL, deletion INTEGER NOT NULL, description TEXT NOT NULL,"
                       " policy TEXT NOT NULL, material BLOB NOT NULL);"
                       "CREATE TABLE IF NOT EXISTS aliases(name TEXT PRIMARY KEY, key_id TEXT NOT NULL,"
                       " created INTEGER NOT NULL, updated INTEGER NOT NULL);"));
    CL_TRY_OUT(check_master(s));
    *out = s;
    return CL_OK;
out:
    cl_kms_store_close(s);
    return rc;
}

void cl_kms_store_close(cl_kms_store *s)
{
    if (!s)
        return;
    sqlite3_close(s->db);
    cl_wipe(s->master, sizeof s->master);
    free(s);
}

void cl_kms_key_free(cl_kms_key *k)
{
    free(k->description);
    free(k->policy);
    k->description = k->policy = NULL;
    cl_wipe(k->material, sizeof k->material);
}

static void material_aad(const char *id, char out[64])
{
    snprintf(out, 64, "key:%s", id);
}

int cl_kms_store_put_key(cl_kms_store *s, const cl_kms_key *k)
{
    char aad[64];
    material_aad(k->id, aad);
    cl_buf sealed = CL_BUF_INIT;
    sqlite3_stmt *st = NULL;
    int rc;
    CL_TRY_OUT(cl_kms_seal(s->master, (const uint8_t *)aad, strlen(aad), k->material, CL_KMS_MATERIAL_LEN, &sealed));
    CL_TRY_OUT(prepare(s,
                       "INSERT OR REPLACE INTO keys(id, created, state, deletion, description, policy, material) "
                       "VALUES(?, ?, ?, ?, ?, ?, ?)",
                       &st));
    sqlite3_bind_text(st, 1, k->id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, k->creation_s);
    sqlite3_bind_int(st, 3, k->state);
    sqlite3_bind_int64(st, 4, k->deletion_s);
    sqlite3_bind_text(st, 5, k->description ? k->description : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, k->policy ? k->policy : "", -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 7, sealed.data, (int)sealed.len, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        CL_FAIL_OUT(CL_EIO, "SQLite: storing key %s: %s", k->id, sqlite3_errmsg(s->db));
out:
    sqlite3_finalize(st);
    cl_buf_free(&sealed);
    return rc;
}

static char *dup_column(sqlite3_stmt *st, int col)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    return strdup(t ? (const char *)t : "");
}

int cl_kms_store_get_key(cl_kms_store *s, const char *id, cl_kms_key *out)
{
    memset(out, 0, sizeof *out);
    sqlite3_stmt *st = NULL;
    cl_buf material = CL_BUF_INIT;
    int rc;
    CL_TRY_OUT(prepare(s, "SELECT created, state, deletion, description, policy, material FROM keys WHERE id = ?", &st));
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    if (step == SQLITE_DONE)
        CL_FAIL_OUT(CL_ENOTFOUND, "no key %s", id);
    if (step != SQLITE_ROW)
        CL_FAIL_OUT(CL_EIO, "SQLite: %s", sqlite3_errmsg(s->db));
    snprintf(out->id, sizeof out->id, "%s", id);
    out->creation_s = sqlite3_column_int64(st, 0);
    out->state = sqlite3_column_int(st, 1);
    out->deletion_s = sqlite3_column_int64(st, 2);
    out->description = dup_column(st, 3);
    out->policy = dup_column(st, 4);
    CL_ENSURE_OUT(out->description && out->policy, CL_ENOMEM, "out of memory");
    char aad[64];
    material_aad(id, aad);
    const uint8_t *blob = sqlite3_column_blob(st, 5);
    rc = cl_kms_unseal(s->master, (const uint8_t *)aad, strlen(aad), blob, (size_t)sqlite3_column_bytes(st, 5),
                       &material);
    if (rc < 0 || material.len != CL_KMS_MATERIAL_LEN)
        CL_FAIL_OUT(CL_EVERIFY, "the material of key %s does not open under the master key", id);
    memcpy(out->material, material.data, CL_KMS_MATERIAL_LEN);
out:
    sqlite3_finalize(st);
    cl_buf_free(&material);
    if (rc < 0)
        cl_kms_key_free(out);
    return rc;
}

int cl_kms_store_delete_key(cl_kms_store *s, const char *id)
{
    sqlite3_stmt *st = NULL;
    int rc;
    CL_TRY(cl_kms_store_delete_aliases_of(s, id));
    CL_TRY_OUT(prepare(s, "DELETE FROM keys WHERE id = ?", &st));
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        CL_FAIL_OUT(CL_EIO, "SQLite: %s", sqlite3_errmsg(s->db));
out:
    sqlite3_finalize(st);
    return rc;
}

int cl_kms_store_list_keys(cl_kms_store *s, const char *after, unsigned limit, cl_kms_id_fn fn, void *ctx, bool *more)
{
    sqlite3_stmt *st = NULL;
    int rc;
    *more = false;
    CL_TRY_OUT(prepare(s, "SELECT id FROM keys WHERE id > ? ORDER BY id LIMIT ?", &st));
    sqlite3_bind_text(st, 1, after, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (int64_t)limit + 1);
    unsigned n = 0;
    int step;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        if (n++ == limit) {
            *more = true;
            break;
        }
        fn(ctx, (const char *)sqlite3_column_text(st, 0));
    }
    if (step != SQLITE_ROW && step != SQLITE_DONE)
        CL_FAIL_OUT(CL_EIO, "SQLite: %s", sqlite3_errmsg(s->db));
out:
    sqlite3_finalize(st);
    return rc;
}

int cl_kms_store_create_alias(cl_kms_store *s, const cl_kms_alias *a)
{
    sqlite3_stmt *st = NULL;
    int rc;
    CL_TRY_OUT(prepare(s, "INSERT INTO aliases(name, key_id, created, updated) VALUES(?, ?, ?, ?)", &st));
    sqlite3_bind_text(st, 1, a->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, a->key_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, a->creation_s);
    sqlite3_bind_int64(st, 4, a->updated_s);
    int step = sqlite3_step(st);
    if (step == SQLITE_CONSTRAINT)
        CL_FAIL_OUT(CL_EVERIFY, "alias %s exists", a->name);
    if (step != SQLITE_DONE)
        CL_FAIL_OUT(CL_EIO, "SQLite: %s", sqlite3_errmsg(s->db));
out:
    sqlite3_finalize(st);
    return rc;
}

static void read_alias(sqlite3_stmt *st, cl_kms_alias *a)
{
    memset(a, 0, sizeof *a);
    snprintf(a->name, sizeof a->name, "%s", (const char *)sqlite3_column_text(st, 0));
    snprintf(a->key_id, sizeof a->key_id, "%s", (const char *)sqlite3_column_text(st, 1));
    a->creation_s = sqlite3_column_int64(st, 2);
    a->updated_s = sqlite3_column_int64(st, 3);
}

int cl_kms_store_get_alias(cl_kms_store *s, const char *name, cl_kms_alias *out)
{
    sqlite3_stmt *st = NULL;
    int rc;
    CL_TRY_OUT(prepare(s, "SELECT name, key_id, created, updated FROM aliases WHERE name = ?", &st));
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    if (step == SQLITE_DONE)
        CL_FAIL_OUT(CL_ENOTFOUND, "no alias %s", name);
    if (step != SQLITE_ROW)
        CL_FAIL_OUT(CL_EIO, "SQLite: %s", sqlite3_errmsg(s->db));
    read_alias(st, out);
out:
    sqlite3_finalize(st);
    return rc;
}

int cl_kms_store_list_aliases(cl_kms_store *s, const char *key_id, const char *after, unsigned limit,
                              cl_kms_alias_fn fn, void *ctx, bool *more)
{
    sqlite3_stmt *st = NULL;
    int rc;
    *more = false;
    CL_TRY_OUT(prepare(s,
                       "SELECT name, key_id, created, updated FROM aliases WHERE name > ? AND (?2 IS NULL OR key_id = ?2)"
                       " ORDER BY name LIMIT ?3",
                       &st));
    sqlite3_bind_text(st, 1, after, -1, SQLITE_STATIC);
    if (key_id)
        sqlite3_bind_text(st, 2, key_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (int64_t)limit + 1);
    unsigned n = 0;
    int step;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        if (n++ == limit) {
            *more = true;
            break;
        }
        cl_kms_alias a;
        read_alias(st, &a);
        fn(ctx, &a);
    }
    if (step != SQLITE_ROW && step != SQLITE_DONE)
        CL_FAIL_OUT(CL_EIO, "SQLite: %s", sqlite3_errmsg(s->db));
out:
    sqlite3_finalize(st);
    return rc;
}

int cl_kms_store_delete_aliases_of(cl_kms_store *s, const char *key_id)
{
    sqlite3_stmt *st = NULL;
    int rc;
    CL_TRY_OUT(prepare(s, "DELETE FROM aliases WHERE key_id = ?", &st));
    sqlite3_bind_text(st, 1, key_id, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        CL_FAIL_OUT(CL_EIO, "SQLite: %s", sqlite3_errmsg(s->db));
out:
    sqlite3_finalize(st);
    return rc;
}

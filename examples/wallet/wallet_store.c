/* The shares' table on libcloister's DynamoDB client (wallet_store.h). */
#include "wallet_store.h"

#include "cloister/enclave/dynamodb.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct wallet_store {
    cl_dynamodb *db;
    char *table;
};

int wallet_store_open(const wallet_store_config *cfg, wallet_store **out)
{
    *out = NULL;
    wallet_store *s = calloc(1, sizeof *s);
    CL_ENSURE(s, CL_ENOMEM, "out of memory");
    s->table = strdup(cfg->table);
    cl_dynamodb_config dc = {
        .region = cfg->region,
        .endpoint = cfg->endpoint,
        /* a local dynalite speaks plain HTTP; the table holds only KMS
         * ciphertexts bound to their key, so a relay that rewrites answers
         * can refuse service, never make a wrong key sign */
        .allow_http = cfg->endpoint && !strncmp(cfg->endpoint, "http://", 7),
        .connect = cfg->proxy,
        .ca_file = cfg->ca_file,
        .credentials = cfg->credentials,
        .max_attempts = 3,
        .timeout_ms = 5000,
    };
    int rc = s->table ? cl_dynamodb_new(&dc, &s->db) : cl_error_set(CL_ENOMEM, "out of memory");
    if (rc < 0) {
        wallet_store_close(s);
        return cl_error_prefix(rc, "DynamoDB: ");
    }
    *out = s;
    return CL_OK;
}

void wallet_store_close(wallet_store *s)
{
    if (!s)
        return;
    cl_dynamodb_free(s->db);
    free(s->table);
    free(s);
}

/* What the app makes of a failed call: unreachable or throttled is CL_EIO
 * (503: try again, nothing happened); the rest is a deployment problem. */
static int store_error(int rc, const char *what)
{
    if (rc == CL_EIO || rc == CL_EBUSY)
        return cl_error_prefix(CL_EIO, "DynamoDB %s: ", what);
    if (rc == CL_ENOTFOUND)
        return cl_error_prefix(CL_EPROTO, "DynamoDB %s (no such table?): ", what);
    return cl_error_prefix(rc == CL_ENOMEM ? CL_ENOMEM : CL_EPROTO, "DynamoDB %s: ", what);
}

int wallet_store_put_new(wallet_store *s, const char *public_key_hex, const char *shard_b64)
{
    json_t *item = json_object();
    CL_ENSURE(item, CL_ENOMEM, "out of memory");
    int rc = json_object_set_new(item, "PublicKey", cl_dynamodb_s(public_key_hex)) |
             json_object_set_new(item, "Shard", cl_dynamodb_s(shard_b64));
    if (rc != 0) {
        json_decref(item);
        return cl_error_set(CL_ENOMEM, "out of memory");
    }
    cl_dynamodb_options o = {.condition = "attribute_not_exists(PublicKey)"};
    rc = cl_dynamodb_put_item(s->db, s->table, item, &o, NULL);
    json_decref(item);
    if (rc == CL_ECONFLICT)
        return cl_error_set(CL_EVERIFY, "a key with public key %s is stored already", public_key_hex);
    return rc < 0 ? store_error(rc, "PutItem") : CL_OK;
}

int wallet_store_get(wallet_store *s, const char *public_key_hex, cl_buf *shard_b64)
{
    json_t *key = json_object(), *item = NULL;
    CL_ENSURE(key, CL_ENOMEM, "out of memory");
    if (json_object_set_new(key, "PublicKey", cl_dynamodb_s(public_key_hex)) != 0) {
        json_decref(key);
        return cl_error_set(CL_ENOMEM, "out of memory");
    }
    cl_dynamodb_options o = {.consistent_read = true};
    int rc = cl_dynamodb_get_item(s->db, s->table, key, &o, &item);
    json_decref(key);
    if (rc < 0)
        return store_error(rc, "GetItem");
    if (!item)
        return cl_error_set(CL_ENOTFOUND, "no key with public key %s", public_key_hex);
    const char *v = NULL;
    rc = cl_dynamodb_get_s(item, "Shard", &v);
    if (rc == CL_OK) {
        cl_buf_reset(shard_b64);
        rc = cl_buf_append(shard_b64, v, strlen(v));
    } else {
        rc = cl_error_prefix(CL_EPROTO, "the item of %s: ", public_key_hex);
    }
    json_decref(item);
    return rc;
}

/* Where the enclave's shares live: the workshop's DynamoDB table, one item
 * per key, {"PublicKey": S (compressed public key, hex), "Shard": S (the
 * KMS ciphertext of the enclave's share, base64)}.  Only ciphertext goes
 * there: the parent holds the table. */
#ifndef WALLET_STORE_H
#define WALLET_STORE_H

#include "cloister/core/buf.h"
#include "cloister/core/error.h"
#include "cloister/enclave/kms.h"

typedef struct wallet_store wallet_store;

typedef struct wallet_store_config {
    const char *table;    /* the workshop's ShardsTableName */
    const char *region;
    const char *endpoint; /* NULL: https://dynamodb.REGION.amazonaws.com; http:// for a local dynalite */
    const char *proxy;    /* the host's outbound proxy (vsock:3:PORT), or NULL */
    const char *ca_file;  /* NULL: the system's */
    cl_aws_credentials_provider *credentials; /* borrowed (the KMS session's) */
} wallet_store_config;

CL_MUST_CHECK int wallet_store_open(const wallet_store_config *cfg, wallet_store **out);
void wallet_store_close(wallet_store *s);

/* Stores a new item; never replaces one (a conditional put): CL_EVERIFY if
 * the public key is already there.  CL_EIO when the table cannot be
 * reached or answers with a server error: nothing is known to be stored. */
CL_MUST_CHECK int wallet_store_put_new(wallet_store *s, const char *public_key_hex, const char *shard_b64);
/* CL_ENOTFOUND when there is no such item; CL_EIO as above; CL_EPROTO for
 * an item of the wrong shape. */
CL_MUST_CHECK int wallet_store_get(wallet_store *s, const char *public_key_hex, cl_buf *shard_b64);

#endif

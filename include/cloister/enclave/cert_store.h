/* The ACME store: a named record {account key, certificate key, chain PEM,
 * metadata JSON} kept outside the enclave, and a lease so that one enclave
 * at a time orders.
 *
 * Two back ends, chosen by a spec:
 *   dynamodb:TABLE  one item per record in TABLE (string partition key
 *                   "pk"), through a cl_dynamodb client;
 *   file:DIR        a directory on the parent, through the host's file
 *                   store (`cloister host file-store --dir DIR`, reached at
 *                   an address: vsock:3:8010 by default), a small HTTP/1.1
 *                   endpoint with compare-and-swap writes (ETag, If-Match,
 *                   If-None-Match) and nothing else.
 *
 * Both are the parent's (the adversary's) to read and rewrite, so:
 *   - the two private keys are stored only as KMS ciphertexts (Encrypt
 *     under kms_key_id; opened with Decrypt, with a Recipient inside the
 *     enclave), with the encryption context
 *       purpose=acme-account-key | acme-cert-key, name=RECORD,
 *       record=hex SHA-256 of (name, chain PEM, metadata), length-prefixed
 *     so a ciphertext opens only as the key it was made for, in the record
 *     it was made for, next to the chain and metadata it was stored with:
 *     an edited chain or metadata, a renamed record or swapped ciphertexts
 *     make KMS refuse (CL_EVERIFY) and nothing of the record is used;
 *   - the chain is parsed, its leaf must hold the certificate key's public
 *     key, and the metadata must be a JSON object;
 *   - what the parent can still do: withhold or delete a record (the
 *     enclave orders again), hand back an older authentic record (a
 *     rollback: the caller checks the chain's validity and names), and
 *     lie about the lease (it can start two enclaves anyway: the lease
 *     keeps honest enclaves from ordering twice, it is not a security
 *     boundary). docs/acme-store.md has the whole argument. */
#ifndef CLOISTER_CERT_STORE_H
#define CLOISTER_CERT_STORE_H

#pragma GCC visibility push(default)

#include "cloister/core/buf.h"
#include "cloister/core/error.h"
#include "cloister/enclave/dynamodb.h"
#include "cloister/enclave/kms.h"

#include <stdbool.h>
#include <stdint.h>

#define CL_KMS_PURPOSE_ACME_ACCOUNT_KEY "acme-account-key"
#define CL_KMS_PURPOSE_ACME_CERT_KEY "acme-cert-key"
/* Where `cloister host file-store` listens by default (parent CID 3). */
#define CL_CERT_STORE_FILE_DEFAULT "vsock:3:8010"
/* Record and lease names: 1..128 of [A-Za-z0-9._-], not starting with '.'. */
#define CL_CERT_STORE_NAME_MAX 128
/* A chain PEM and the metadata: at most this many bytes each. */
#define CL_CERT_STORE_CHAIN_MAX (64 * 1024)
#define CL_CERT_STORE_METADATA_MAX (16 * 1024)

typedef struct cl_cert_store_config {
    const char *spec;          /* "file:DIR" or "dynamodb:TABLE" */
    const char *file_address;  /* file: the host's file store; NULL: CL_CERT_STORE_FILE_DEFAULT */
    cl_dynamodb *dynamodb;     /* dynamodb: borrowed client, required */
    cl_kms *kms;               /* borrowed, required: Encrypt and Decrypt of the keys */
    const char *kms_key_id;    /* required: the key the ciphertexts are made under */
    unsigned timeout_ms;       /* file: one exchange; 0: 10000 */
    /* Unix time in ms for the lease; NULL: the system's clock.  For tests. */
    int64_t (*now_ms)(void *arg);
    void *now_arg;
} cl_cert_store_config;

typedef struct cl_cert_store cl_cert_store;

CL_MUST_CHECK int cl_cert_store_open(const cl_cert_store_config *cfg, cl_cert_store **out);
void cl_cert_store_free(cl_cert_store *s);

/* A record in the clear, inside the enclave.  The keys are PEM private keys
 * (PKCS#8 or traditional), at most 4096 bytes (KMS Encrypt's limit);
 * cert_key, chain_pem and metadata may be empty: an account alone. */
typedef struct cl_cert_record {
    cl_buf account_key; /* secret (wiped when freed) */
    cl_buf cert_key;    /* secret */
    cl_buf chain_pem;   /* leaf first */
    cl_buf metadata;    /* a JSON object's text; empty: {} */
    int64_t updated_ms; /* get: when it was put (the writer's clock; not authenticated: informative) */
} cl_cert_record;

void cl_cert_record_free(cl_cert_record *r);

/* Encrypts both keys (KMS Encrypt, context above) and writes the record,
 * replacing any other of that name.  A record whose chain does not parse
 * or whose leaf does not match cert_key is refused (CL_EINVAL) before
 * anything is sent. */
CL_MUST_CHECK int cl_cert_store_put(cl_cert_store *s, const char *name, const cl_cert_record *rec);
/* Reads, verifies and opens a record into *out (replaced: zero it before
 * the first call; cl_cert_record_free it after the last).  CL_ENOTFOUND
 * when there is none; CL_EVERIFY when the parent's copy is not one this
 * enclave's KMS key vouches for (KMS refused the context, the leaf does not
 * match, ...); CL_EPARSE when it is malformed.  Nothing is returned then. */
CL_MUST_CHECK int cl_cert_store_get(cl_cert_store *s, const char *name, cl_cert_record *out);
/* Removes the record; CL_OK when there was none. */
CL_MUST_CHECK int cl_cert_store_delete(cl_cert_store *s, const char *name);

/* ---- the lease --------------------------------------------------------- */

/* Who holds a lease, as the store says. */
typedef struct cl_cert_lease {
    char owner[CL_CERT_STORE_NAME_MAX + 1];
    int64_t expires_ms; /* Unix ms */
} cl_cert_lease;

/* Takes the lease `name` for owner (1..128 of [A-Za-z0-9._:-]) until now +
 * ttl_ms, with a conditional write: only when nobody holds it, its holder's
 * expiry has passed, or owner already holds it.  CL_ECONFLICT when another
 * owner holds it (*held, when not NULL, says who and until when). */
CL_MUST_CHECK int cl_cert_store_lease_acquire(cl_cert_store *s, const char *name, const char *owner,
                                              unsigned ttl_ms, cl_cert_lease *held);
/* Pushes the expiry to now + ttl_ms, only while owner still holds the lease
 * (even if expired, as long as nobody took it); CL_ECONFLICT when it was
 * lost. */
CL_MUST_CHECK int cl_cert_store_lease_renew(cl_cert_store *s, const char *name, const char *owner,
                                            unsigned ttl_ms, cl_cert_lease *held);
/* Gives the lease up; CL_OK when owner did not hold it any more (nothing to
 * give), and no one else's lease is touched. */
CL_MUST_CHECK int cl_cert_store_lease_release(cl_cert_store *s, const char *name, const char *owner);

/* ---- exposed for tests ---------------------------------------------------- */

/* The hex SHA-256 that binds a record's chain and metadata to its keys'
 * ciphertexts (the "record" context value); out has 65 bytes. */
CL_MUST_CHECK int cl_cert_store_record_digest(const char *name, const uint8_t *chain, size_t chain_len,
                                              const uint8_t *metadata, size_t metadata_len, char out[65]);
/* Checks a record name (and lease names). */
CL_MUST_CHECK int cl_cert_store_check_name(const char *name);

#pragma GCC visibility pop

#endif

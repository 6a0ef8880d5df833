/* Key custody: the key-holder's state and rules as a request -> reply
 * core, shared by `cloister keyholder serve` (which only adds sockets and
 * threads), the unit tests and the fuzzer.
 *
 * It holds the PKCS#11 tokens: each a label, a salted PIN digest with a
 * lock-out after max_failures consecutive wrong PINs, a time-to-live
 * (a token not put again within ttl_ms expires and its keys are wiped),
 * and the current key generation plus, for grace_ms after a rotation, the
 * previous one.  A put checks everything it is handed: the key is RSA
 * 2048..8192 or EC P-256/384/521, the chain's leaf is the key's and the
 * chain verifies up to its last certificate.  A key that arrives as a KMS
 * ciphertext is opened through a callback, only under the pinned KMS keys
 * and only with the context purpose=pkcs11-token, token=LABEL, and the
 * KeyId KMS answered with is checked against the pinned one.
 *
 * Time is what the caller says (now_ms, a monotonic clock in ms), so that
 * tests drive expiry and grace with a fake clock.  Thread-safe: one
 * cl_custody is shared by any number of connections (cl_custody_conn),
 * each used by one thread at a time. */
#ifndef CLOISTER_ENCLAVE_KEY_CUSTODY_H
#define CLOISTER_ENCLAVE_KEY_CUSTODY_H

#pragma GCC visibility push(default)

#include "cloister/core/buf.h"
#include "cloister/core/error.h"
#include "cloister/core/keyholder_proto.h"
#include "cloister/core/slice.h"
#include "cloister/enclave/kms.h"

#include <stdbool.h>
#include <stdint.h>

/* --kms-key-id: how many KMS keys a key-holder may be started with */
#define CL_CUSTODY_KMS_KEY_IDS_MAX 8

typedef struct cl_custody cl_custody;
typedef struct cl_custody_conn cl_custody_conn;

typedef enum cl_custody_socket {
    CL_CUSTODY_TOKEN_SOCKET,     /* the PKCS#11 module's: tokens, objects, login, sign, decrypt */
    CL_CUSTODY_PROVISION_SOCKET, /* the provisioner's: put, delete, status */
} cl_custody_socket;

/* What KMS said to one Decrypt. */
typedef struct cl_custody_kms_answer {
    char error_type[96]; /* KMS's error __type when it refused; "" when it could not be asked */
    char key_id[2100];   /* the KeyId it answered with (on success) */
} cl_custody_kms_answer;

/* Opens ciphertext with KMS's Decrypt under o (KeyId and encryption
 * context set by the core) into plaintext.  0, or a cl_err with
 * answer->error_type set when KMS refused.  Called without the custody
 * lock held; calls may come from several threads at once. */
typedef int (*cl_custody_kms_decrypt_fn)(void *arg, const cl_kms_options *o, cl_slice ciphertext,
                                         cl_buf *plaintext, cl_custody_kms_answer *answer);

typedef struct cl_custody_config {
    unsigned max_failures; /* consecutive wrong PINs that lock a token; 0: never */
    uint64_t ttl_ms;       /* 0: tokens never expire */
    uint64_t grace_ms;     /* the previous generation's life after a rotation */
    const char *key_dir;   /* file keys: a plain name inside it; NULL: refused (copied) */
    /* KMS-ciphertext keys; NULL: refused (CL_KH_ST_NOT_IMPLEMENTED) */
    cl_custody_kms_decrypt_fn kms_decrypt;
    void *kms_arg;
    const char *const *kms_key_ids; /* the pinned KMS keys, 1..CL_CUSTODY_KMS_KEY_IDS_MAX (borrowed) */
    size_t kms_key_id_count;
} cl_custody_config;

CL_MUST_CHECK int cl_custody_new(const cl_custody_config *config, cl_custody **out);
/* Wipes every key.  No connection may be in use. */
void cl_custody_free(cl_custody *c);


CL_MUST_CHECK int cl_custody_conn_new(cl_custody *c, cl_custody_socket socket, cl_custody_conn **out);
void cl_custody_conn_free(cl_custody_conn *cx);

/* Answers one request frame's payload with one reply payload (status
 * byte first) in reply (reset first).  A bad request gets an error reply:
 * that is a success of this call; only a reply that cannot be built fails. */
CL_MUST_CHECK int cl_custody_handle(cl_custody_conn *cx, const uint8_t *req, size_t len, uint64_t now_ms,
                                    cl_buf *reply);

/* Puts a token the way a provisioning put does (the --token flag at start).
 * On failure *status is the status a reply would carry. */
CL_MUST_CHECK int cl_custody_put(cl_custody *c, const cl_kh_request *r, uint64_t now_ms, uint32_t *slot,
                                 uint64_t *generation, uint32_t *status);

/* Expires tokens and previous generations that are due; the server calls
 * it now and then so that keys go when due, not at the next request. */
void cl_custody_housekeeping(cl_custody *c, uint64_t now_ms);

/* For a connection waiting for its next request: true while it holds a
 * cached signing context (a reference to a key).  It drops the context
 * when that key has been released (expired, deleted, rotated out), so a
 * server that calls this about once a second keeps no released key alive. */
bool cl_custody_conn_idle(cl_custody_conn *cx);

/* True when the KeyId KMS answered with is the key `wanted` names: its
 * ARN, or its bare key id (the ARN's key/ID suffix).  Aliases are not
 * compared here (KMS checks them: they are sent as the Decrypt's KeyId). */
bool cl_custody_kms_key_id_matches(const char *wanted, const char *answered);

#pragma GCC visibility pop

#endif

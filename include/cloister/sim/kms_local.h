/* kms-local's request handling: one signed HTTP request in, one KMS JSON
 * 1.1 response out, with no I/O but the store's.  The HTTP server, the
 * unit tests and the fuzz harness all call cl_kms_local_handle.
 *
 * Operations: CreateKey, DescribeKey, ListKeys, CreateAlias, ListAliases,
 * Encrypt, Decrypt, ReEncrypt, GenerateDataKey,
 * GenerateDataKeyWithoutPlaintext, GenerateRandom, GetKeyPolicy,
 * PutKeyPolicy, EnableKey, DisableKey, ScheduleKeyDeletion.  Errors are
 * AWS's: HTTP 400 (500 for KMSInternalException) with
 * {"__type": TYPE, "message": TEXT}.
 *
 * Ciphertext blobs: 0x01 || key UUID (16 bytes) || IV (12) || AES-256-GCM
 * ciphertext || tag (16), under the key's own material, with the first 17
 * bytes and the encryption context (sorted by name, each name and value
 * length-prefixed) as associated data. */
#ifndef CLOISTER_KMS_LOCAL_H
#define CLOISTER_KMS_LOCAL_H

#pragma GCC visibility push(default)

#include "cloister/core/attestation.h"
#include "cloister/core/buf.h"
#include "cloister/core/error.h"
#include "cloister/sim/kms_store.h"
#include "cloister/core/sigv4.h"

#include <stdint.h>

#define CL_KMS_CONTENT_TYPE "application/x-amz-json-1.1"
#define CL_KMS_DEFAULT_ACCOUNT "111122223333"
#define CL_KMS_MAX_REQUEST (512 * 1024)

typedef struct cl_kms_credential {
    const char *access_key_id, *secret;
    const char *principal; /* NULL: arn:aws:iam::ACCOUNT:user/ACCESS_KEY_ID */
} cl_kms_credential;

typedef struct cl_kms_local_config {
    const char *region;  /* "us-east-1" */
    const char *account; /* NULL: CL_KMS_DEFAULT_ACCOUNT */
    const cl_kms_credential *credentials;
    size_t credential_count;
    cl_verifier *verifier; /* trusted roots for Recipient documents; not owned */
    cl_kms_store *store;   /* not owned */
} cl_kms_local_config;

typedef struct cl_kms_local cl_kms_local;

typedef struct cl_kms_response {
    int status;
    char error_type[64]; /* "" on success */
    cl_buf body;         /* JSON */
} cl_kms_response;

CL_MUST_CHECK int cl_kms_local_new(const cl_kms_local_config *cfg, cl_kms_local **out);
void cl_kms_local_free(cl_kms_local *k);

/* Answers one request at the server's clock now_ms; safe to call from
 * several threads (requests are serialized).  Negative only when no
 * response could be built (out of memory). */
CL_MUST_CHECK int cl_kms_local_handle(cl_kms_local *k, const cl_sigv4_request *req, uint64_t now_ms,
                                      cl_kms_response *resp);

/* Makes sure alias_name ("alias/NAME") names a key: creates one with the
 * given policy (NULL: the default policy) when it does not exist yet.
 * Writes the key's ARN. */
CL_MUST_CHECK int cl_kms_local_ensure_key(cl_kms_local *k, const char *alias_name, const char *policy_json,
                                          char arn_out[160]);

#pragma GCC visibility pop

#endif

/* A KMS endpoint for the app inside the enclave: the KMS JSON 1.1 protocol
 * as any AWS SDK speaks it, answered by KMS itself with the enclave's own
 * credentials and, for the operations that return secrets, a Recipient
 * whose envelope is opened here.  The app gets an ordinary KMS answer
 * (Plaintext in base64); KMS only ever released the secret to this
 * enclave's attested key, and the parent relays only ciphertext.
 *
 * This is the request -> reply core, shared by `cloister enclave
 * -kms-for-app` (the internal listener's POST /), the unit tests and the
 * fuzzer.  The request is checked before anything is sent: strict JSON
 * (duplicate keys, trailing bytes and non-objects refused), a size cap,
 * known operations only, every field known to that operation with its
 * type and size (CiphertextBlob 1..6144 bytes, ...), and the allowed
 * operations and keys.  Refusals are KMS-shaped answers:
 *   unknown X-Amz-Target            400 UnknownOperationException
 *   malformed JSON, wrong types     400 SerializationException
 *   missing, unknown or oversized   400 ValidationException
 *   operation or key not allowed    400 AccessDeniedException
 *   KMS out of reach                503 DependencyTimeoutException
 * KMS's own answers (its errors included) reach the app unchanged, status
 * and body; a Recipient answer is changed only to carry the plaintext
 * field instead of CiphertextForRecipient.  The app's EncryptionContext is
 * passed as it is: its ciphertexts are its own, not cloister's purposes. */
#ifndef CLOISTER_KMS_ENDPOINT_H
#define CLOISTER_KMS_ENDPOINT_H

#pragma GCC visibility push(default)

#include "cloister/core/buf.h"
#include "cloister/core/error.h"
#include "cloister/core/slice.h"
#include "cloister/enclave/kms.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Largest request body accepted (KMS's largest request, a 6144-byte
 * CiphertextBlob in base64 with a context and grant tokens, fits). */
#define CL_KMS_ENDPOINT_MAX_BODY (32 * 1024)

/* Sends body (JSON) to KMS as TrentService.<op>, signed: CL_OK once KMS
 * answered (any status; *status and the body in answer), negative when
 * no answer came.  cl_kms_call_raw has this shape. */
typedef int (*cl_kms_endpoint_send_fn)(void *ctx, const char *op, const uint8_t *body, size_t len, long *status,
                                       cl_buf *answer);

typedef struct cl_kms_endpoint_config {
    /* "ID,ID,...": the key IDs, ARNs or aliases a request may name, each
     * compared as written (a request must then name its key: Decrypt's
     * KeyId, ReEncrypt's SourceKeyId too, which KMS holds against the
     * ciphertext's key).  NULL or "": any key KMS lets the enclave use. */
    const char *key_ids;
    /* "Decrypt,GenerateDataKey,...": the operations served.  NULL or "":
     * every known operation (cl_kms_endpoint_operations). */
    const char *operations;
    cl_kms_recipient *recipient; /* borrowed, required */
    cl_kms_endpoint_send_fn send;
    void *send_ctx;
} cl_kms_endpoint_config;

typedef struct cl_kms_endpoint cl_kms_endpoint;

/* CL_EINVAL naming an unknown operation or an empty list entry. */
CL_MUST_CHECK int cl_kms_endpoint_new(const cl_kms_endpoint_config *cfg, cl_kms_endpoint **out);
void cl_kms_endpoint_free(cl_kms_endpoint *ep);

/* The known operations, comma-separated; those that get a Recipient are
 * marked in cl_kms_endpoint_uses_recipient. */
const char *cl_kms_endpoint_operations(void);
bool cl_kms_endpoint_uses_recipient(const char *op);

typedef struct cl_kms_endpoint_request {
    cl_slice method;
    const cl_slice *target;       /* X-Amz-Target; NULL when absent */
    const cl_slice *content_type; /* NULL when absent */
    const uint8_t *body;
    size_t body_len;
} cl_kms_endpoint_request;

typedef struct cl_kms_endpoint_reply {
    int status;
    cl_buf body; /* JSON; may hold a plaintext (wiped when freed) */
} cl_kms_endpoint_reply;

#define CL_KMS_ENDPOINT_CONTENT_TYPE "application/x-amz-json-1.1"

/* Always fills reply (body replaced), refusals included; never fails.
 * Calls are serialised inside (one Recipient session key). */
void cl_kms_endpoint_handle(cl_kms_endpoint *ep, const cl_kms_endpoint_request *req, cl_kms_endpoint_reply *reply);

typedef struct cl_kms_endpoint_stats {
    uint64_t requests;  /* all; those not forwarded were refused here */
    uint64_t forwarded; /* sent to KMS */
    uint64_t opened;    /* envelopes opened for the app */
} cl_kms_endpoint_stats;
void cl_kms_endpoint_get_stats(cl_kms_endpoint *ep, cl_kms_endpoint_stats *out);

#pragma GCC visibility pop

#endif

/* Nitro attestation documents: parse, verify (AWS's procedure), policy.
 *
 * Parsing checks every field's presence, type and size.  Verification
 * builds the chain [certificate, cabundle[N-1], ..., cabundle[0]], requires
 * cabundle[0] to be byte-identical to a trusted root, checks every
 * certificate's validity at the verification time, CA flags, path lengths
 * and key usages, each signature, and finally the COSE signature by the
 * leaf key.  Policy checks (PCRs, nonce, debug mode, age) come on top of a
 * verified document. */
#ifndef CLOISTER_ATTESTATION_H
#define CLOISTER_ATTESTATION_H

#pragma GCC visibility push(default)

#include "cloister/core/buf.h"
#include "cloister/core/cose.h"
#include "cloister/core/error.h"

#include <stdbool.h>
#include <stdint.h>

#define CL_PCR_COUNT 32
#define CL_PCR_MAX_LEN 64
#define CL_ATTESTATION_MAX_CABUNDLE 16
#define CL_ATTESTATION_MAX_CERT_LEN 1024
#define CL_ATTESTATION_MAX_FIELD_LEN 1024 /* public_key, user_data, nonce */
#define CL_ATTESTATION_MAX_DOC_LEN (64 * 1024)

typedef struct cl_attestation_doc {
    cl_buf raw; /* owned copy of the COSE_Sign1 bytes; every slice points into it */
    cl_cose_sign1 cose;
    cl_cbor_doc payload_cbor;

    cl_slice module_id; /* UTF-8, not NUL-terminated */
    cl_slice digest;
    uint64_t timestamp_ms;
    uint32_t pcr_present; /* bit i set when PCR i is in the document */
    cl_slice pcrs[CL_PCR_COUNT];
    cl_slice certificate;
    cl_slice cabundle[CL_ATTESTATION_MAX_CABUNDLE];
    size_t cabundle_len;
    bool has_public_key, has_user_data, has_nonce; /* false when absent or null */
    cl_slice public_key, user_data, nonce;
} cl_attestation_doc;

/* Parses a COSE_Sign1 attestation document (raw CBOR bytes; copied). */
CL_MUST_CHECK int cl_attestation_parse(const uint8_t *data, size_t len, cl_attestation_doc *doc);
void cl_attestation_doc_free(cl_attestation_doc *doc);

/* True when PCR0 is present and all zero: the enclave runs in debug mode. */
bool cl_attestation_is_debug(const cl_attestation_doc *doc);

/* A verifier holds trusted roots and a cache of certificates already
 * verified under them.  It is safe to share between threads. */
typedef struct cl_verifier cl_verifier;

/* with_aws_root: trust the embedded AWS Nitro Enclaves Root-G1. */
CL_MUST_CHECK int cl_verifier_new(bool with_aws_root, cl_verifier **out);
void cl_verifier_free(cl_verifier *v);
/* Adds a trusted root from a PEM file (all certificates in it) or DER. */
CL_MUST_CHECK int cl_verifier_add_root_pem_file(cl_verifier *v, const char *path);
CL_MUST_CHECK int cl_verifier_add_root_der(cl_verifier *v, const uint8_t *der, size_t len);
/* A verifier trusting the PEM files given (each --root option), or the
 * embedded AWS root when there are none; errors name the file. */
CL_MUST_CHECK int cl_verifier_new_with_roots(const char *const *pem_paths, size_t count, cl_verifier **out);
/* Bounds the certificate cache (default 1024 entries; 0 disables it). */
void cl_verifier_set_cache_size(cl_verifier *v, size_t entries);
void cl_verifier_cache_stats(cl_verifier *v, uint64_t *hits, uint64_t *misses);

/* Signature and chain verification at at_ms (milliseconds since the
 * epoch).  On rejection, CL_EVERIFY with a message naming the check. */
CL_MUST_CHECK int cl_verifier_verify(cl_verifier *v, const cl_attestation_doc *doc, uint64_t at_ms);

typedef struct cl_attestation_policy {
    uint32_t pcr_mask; /* bit i: PCR i must equal pcr_values[i] */
    uint8_t pcr_values[CL_PCR_COUNT][CL_PCR_MAX_LEN];
    size_t pcr_lens[CL_PCR_COUNT];
    bool check_nonce;
    const uint8_t *nonce;
    size_t nonce_len;
    bool allow_debug;
    uint64_t max_age_ms; /* 0: no age limit */
} cl_attestation_policy;

/* Adds "N=HEX" (PCR N, 0..31, must equal the 32, 48 or 64 bytes of HEX) to
 * a policy: the syntax of every --pcr option. */
CL_MUST_CHECK int cl_attestation_policy_add_pcr(cl_attestation_policy *policy, const char *n_equals_hex);

/* Policy checks on a document, ages measured at at_ms. */
CL_MUST_CHECK int cl_attestation_check_policy(const cl_attestation_doc *doc,
                                              const cl_attestation_policy *policy, uint64_t at_ms);

/* Parse + verify + policy in one call; doc may be NULL if the caller does
 * not need the parsed document afterwards. */
CL_MUST_CHECK int cl_attestation_verify(cl_verifier *v, const uint8_t *data, size_t len,
                                        const cl_attestation_policy *policy, uint64_t at_ms,
                                        cl_attestation_doc *doc);

/* Current time in milliseconds since the epoch. */
uint64_t cl_now_ms(void);

#pragma GCC visibility pop

#endif

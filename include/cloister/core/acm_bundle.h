/* ACM for Nitro Enclaves' certificate bundle: a JSON object with exactly
 *   "certificate"          the leaf certificate, PEM (one certificate)
 *   "certificateChain"     the intermediates, PEM (zero or more certificates)
 *   "encryptedPrivateKey"  base64 of a KMS CiphertextBlob whose plaintext is
 *                          the leaf's private key (PEM); only an enclave whose
 *                          measurements the KMS key policy names can open it
 * The parse is strict: no other fields, every certificate parsed by OpenSSL
 * and re-encoded, so what is handed on is canonical PEM. */
#ifndef CLOISTER_ACM_BUNDLE_H
#define CLOISTER_ACM_BUNDLE_H

#pragma GCC visibility push(default)

#include "cloister/core/buf.h"
#include "cloister/core/error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CL_ACM_BUNDLE_MAX (1u << 20)     /* the JSON text */
#define CL_ACM_CHAIN_CERTS_MAX 16        /* certificates in certificateChain */
#define CL_ACM_CIPHERTEXT_MAX 6144       /* KMS's CiphertextBlob limit */

typedef struct cl_acm_bundle {
    cl_buf certificate; /* canonical PEM of the leaf */
    cl_buf chain;       /* canonical PEM of the intermediates, possibly empty */
    cl_buf ciphertext;  /* the CiphertextBlob's bytes */
    uint8_t leaf_sha256[32];
    size_t chain_count;
} cl_acm_bundle;

/* Parses and checks a bundle; *out is initialised (free it also on error). */
CL_MUST_CHECK int cl_acm_bundle_parse(const uint8_t *json, size_t len, cl_acm_bundle *out);
/* The leaf then the intermediates, PEM (appended to out): ssl_certificate's file. */
CL_MUST_CHECK int cl_acm_bundle_full_chain(const cl_acm_bundle *b, cl_buf *out);
/* A bundle's JSON from PEM texts and a CiphertextBlob (appended to out, NUL-terminated);
 * the certificates are checked as the parse checks them. */
CL_MUST_CHECK int cl_acm_bundle_encode(const uint8_t *cert_pem, size_t cert_len, const uint8_t *chain_pem,
                                       size_t chain_len, const uint8_t *ciphertext, size_t ct_len, cl_buf *out);
/* Checks a PEM chain, leaf first: each certificate names the next as its
 * issuer and carries a valid signature by the next one's key, up to the
 * last certificate (verified against its own key when it is self-issued;
 * otherwise its issuer, the root, is not in the chain).  No trust anchor
 * and no dates: it proves the chain is one chain, not that it is trusted.
 * At most CL_ACM_CHAIN_CERTS_MAX + 1 certificates.  CL_EVERIFY naming the
 * broken link. */
CL_MUST_CHECK int cl_acm_chain_verify(const uint8_t *pem, size_t len);
/* True when both bundles carry the same certificates and ciphertext. */
bool cl_acm_bundle_equal(const cl_acm_bundle *a, const cl_acm_bundle *b);
void cl_acm_bundle_free(cl_acm_bundle *b);

#pragma GCC visibility pop

#endif

/* COSE_Sign1 (RFC 9052) with ES384, the envelope of Nitro attestation
 * documents: [protected: bstr, unprotected: map, payload: bstr,
 * signature: bstr], untagged or under tag 18. */
#ifndef CLOISTER_COSE_H
#define CLOISTER_COSE_H

#pragma GCC visibility push(default)

#include "cloister/core/buf.h"
#include "cloister/core/cbor.h"
#include "cloister/core/error.h"

#include <openssl/evp.h>

#define CL_COSE_ALG_ES384 (-35)
#define CL_COSE_ES384_SIG_LEN 96
#define CL_COSE_TAG_SIGN1 18

typedef struct cl_cose_sign1 {
    cl_slice protected_header; /* the serialized protected header bucket */
    cl_slice payload;
    cl_slice signature;
    cl_cbor_doc cbor; /* owns the decoded tree; slices borrow from the input */
} cl_cose_sign1;

/* Decodes and checks the shape: a 4-array (optionally tag 18), protected
 * header that decodes to a map naming alg ES384, unprotected header a map,
 * payload a byte string, signature 96 bytes.  Slices borrow from data. */
CL_MUST_CHECK int cl_cose_sign1_decode(const uint8_t *data, size_t len, cl_cose_sign1 *out);
void cl_cose_sign1_free(cl_cose_sign1 *msg);

/* Verifies the ES384 signature over Sig_structure
 * ["Signature1", protected, h'', payload] with a P-384 public key.
 * High-S signatures are accepted (real documents carry them). */
CL_MUST_CHECK int cl_cose_sign1_verify(const cl_cose_sign1 *msg, EVP_PKEY *key);

/* Produces an untagged COSE_Sign1 over payload with a P-384 private key,
 * protected header {1: -35}, empty unprotected header; appends to out. */
CL_MUST_CHECK int cl_cose_sign1_sign(EVP_PKEY *key, const uint8_t *payload, size_t payload_len,
                                     cl_buf *out);

#pragma GCC visibility pop

#endif

/* libFuzzer harness: attestation document parse, chain + COSE verification
 * and policy checks on untrusted bytes.
 *
 * Two verifiers trusting the AWS root are made once: one with the
 * certificate cache, one without.  Each parsed document is verified at its
 * own timestamp by both, twice by the caching one (the second call can hit
 * the cache), and all answers must agree: a cache must never change a
 * verdict.  Policies are checked whatever the verification said. */
#include "cloister/core/attestation.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static cl_verifier *cached_verifier, *plain_verifier;

static void setup(void)
{
    if (cached_verifier)
        return;
    if (cl_verifier_new(true, &cached_verifier) < 0 || cl_verifier_new(true, &plain_verifier) < 0)
        abort();
    cl_verifier_set_cache_size(cached_verifier, 64);
    cl_verifier_set_cache_size(plain_verifier, 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    setup();
    cl_attestation_doc doc;
    if (cl_attestation_parse(data, size, &doc) < 0)
        return 0;

    /* The parser's promises about the parsed fields. */
    if (doc.cabundle_len > CL_ATTESTATION_MAX_CABUNDLE || doc.certificate.len == 0 ||
        doc.certificate.len > CL_ATTESTATION_MAX_CERT_LEN)
        abort();
    if ((doc.has_nonce && doc.nonce.len > CL_ATTESTATION_MAX_FIELD_LEN) ||
        (doc.has_user_data && doc.user_data.len > CL_ATTESTATION_MAX_FIELD_LEN) ||
        (doc.has_public_key && doc.public_key.len > CL_ATTESTATION_MAX_FIELD_LEN))
        abort();
    for (unsigned i = 0; i < CL_PCR_COUNT; i++)
        if ((doc.pcr_present & (1u << i)) && doc.pcrs[i].len > CL_PCR_MAX_LEN)
            abort();

    uint64_t at = doc.timestamp_ms;
    int rc_plain = cl_verifier_verify(plain_verifier, &doc, at);
    int rc_cached = cl_verifier_verify(cached_verifier, &doc, at);
    int rc_again = cl_verifier_verify(cached_verifier, &doc, at);
    if (rc_plain != rc_cached || rc_cached != rc_again)
        abort();
    /* Far outside any certificate's validity: must never verify. */
    if (cl_verifier_verify(cached_verifier, &doc, 1000) == CL_OK)
        abort();

    (void)cl_attestation_is_debug(&doc);

    static cl_attestation_policy strict, lax;
    static const uint8_t nonce[4] = {1, 2, 3, 4};
    strict.allow_debug = false;
    strict.pcr_mask = 1u | (1u << 8);
    strict.pcr_lens[0] = 48;
    strict.pcr_lens[8] = 32;
    strict.check_nonce = true;
    strict.nonce = nonce;
    strict.nonce_len = sizeof nonce;
    strict.max_age_ms = 5 * 60 * 1000;
    lax.allow_debug = true;
    (void)!cl_attestation_check_policy(&doc, &strict, at);
    (void)!cl_attestation_check_policy(&doc, &strict, at + 10 * 60 * 1000);
    (void)!cl_attestation_check_policy(&doc, &strict, at > 1000 ? at - 1000 : 0);
    if (cl_attestation_check_policy(&doc, &lax, at) != CL_OK)
        abort(); /* a policy that asks nothing accepts everything */

    /* The one-call path must agree with the step-by-step one. */
    cl_attestation_doc doc2;
    int rc_all = cl_attestation_verify(plain_verifier, data, size, &lax, at, &doc2);
    if (rc_all != rc_plain)
        abort();
    if (rc_all == CL_OK)
        cl_attestation_doc_free(&doc2);

    cl_attestation_doc_free(&doc);
    cl_error_clear();
    return 0;
}

/* Feeds arbitrary bytes to the ACM bundle parser.  It must never crash or
 * leak; an accepted bundle must encode again and parse to the same bundle
 * (the certificates are canonical PEM after one parse). */
#include "cloister/core/acm_bundle.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cl_acm_bundle a, b;
    if (cl_acm_bundle_parse(data, size, &a) < 0) {
        cl_acm_bundle_free(&a);
        return 0;
    }
    cl_buf json = CL_BUF_INIT, full = CL_BUF_INIT;
    if (cl_acm_bundle_encode(a.certificate.data, a.certificate.len, a.chain.data, a.chain.len, a.ciphertext.data,
                             a.ciphertext.len, &json) < 0)
        abort();
    if (cl_acm_bundle_parse(json.data, json.len, &b) < 0 || !cl_acm_bundle_equal(&a, &b) ||
        b.chain_count != a.chain_count || memcmp(a.leaf_sha256, b.leaf_sha256, 32) != 0)
        abort();
    if (cl_acm_bundle_full_chain(&a, &full) < 0 || full.len != a.certificate.len + a.chain.len)
        abort();
    cl_acm_bundle_free(&a);
    cl_acm_bundle_free(&b);
    cl_buf_free(&json);
    cl_buf_free(&full);
    return 0;
}

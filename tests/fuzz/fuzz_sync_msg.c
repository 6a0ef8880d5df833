/* Feeds arbitrary bytes to key sync's message parsers (the first byte picks
 * one: attestation body, heartbeat, sealed keys), what a peer or the parent
 * can send to the sync listener.  They must never crash or leak; a message
 * accepted once must encode again and parse to the same fields. */
#include "cloister/enclave/key_sync.h"

#include <stdlib.h>
#include <string.h>

static bool buf_eq(const cl_buf *a, const cl_buf *b)
{
    return a->len == b->len && (a->len == 0 || !memcmp(a->data, b->data, a->len));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const uint8_t *m = data + 1;
    size_t n = size - 1;
    cl_buf json = CL_BUF_INIT;
    switch (data[0] % 3) {
    case 0: {
        cl_sync_attstn_body a, b;
        if (cl_sync_attstn_body_parse(m, n, &a) < 0)
            break;
        if (cl_sync_attstn_body_encode(a.document.data, a.document.len, a.encrypted_keys.data, a.encrypted_keys.len,
                                       &json) < 0 ||
            cl_sync_attstn_body_parse(json.data, json.len, &b) < 0)
            abort();
        if (!buf_eq(&a.document, &b.document) || !buf_eq(&a.encrypted_keys, &b.encrypted_keys))
            abort();
        cl_sync_attstn_body_free(&a);
        cl_sync_attstn_body_free(&b);
        break;
    }
    case 1: {
        cl_sync_heartbeat a, b;
        if (cl_sync_heartbeat_parse(m, n, &a) < 0)
            break;
        if (cl_sync_heartbeat_encode(&a, &json) < 0 || cl_sync_heartbeat_parse(json.data, json.len, &b) < 0)
            abort();
        if (strcmp(a.hashed_keys, b.hashed_keys) || strcmp(a.worker_hostname, b.worker_hostname))
            abort();
        break;
    }
    default: {
        cl_sync_keys a, b;
        if (cl_sync_keys_parse(m, n, &a) < 0)
            break;
        char ha[45], hb[45];
        if (cl_sync_keys_encode(&a, &json) < 0 || cl_sync_keys_parse(json.data, json.len, &b) < 0 ||
            cl_sync_keys_hash_b64(&a, ha) < 0 || cl_sync_keys_hash_b64(&b, hb) < 0)
            abort();
        if (!buf_eq(&a.key, &b.key) || !buf_eq(&a.cert, &b.cert) || !buf_eq(&a.app_keys, &b.app_keys) ||
            !buf_eq(&a.acme, &b.acme) || strcmp(ha, hb))
            abort();
        /* the certificate and key are whatever the peer sent: turning them
         * into an identity must fail cleanly or succeed, never crash */
        cl_tls_identity id;
        if (cl_sync_identity_from_keys(&a, &id) == CL_OK)
            cl_tls_identity_free(&id);
        cl_sync_keys_free(&a);
        cl_sync_keys_free(&b);
        break;
    }
    }
    cl_buf_free(&json);
    return 0;
}

/* Feeds arbitrary bytes to the key-holder protocol decoders: requests of
 * both sockets and the module's reply decoders.  They must never crash or
 * read past the input, and an accepted request must re-encode to exactly
 * the same bytes (the codec is canonical: one encoding per message). */
#include "cloister/core/keyholder_proto.h"

#include <stdlib.h>
#include <string.h>

static void roundtrip(const uint8_t *data, size_t size, bool provisioning)
{
    cl_kh_request r;
    if (cl_kh_request_decode(data, size, provisioning, &r) < 0)
        return;
    cl_buf out = CL_BUF_INIT;
    if (cl_kh_request_encode(&out, &r) < 0)
        abort();
    if (out.len != size || memcmp(out.data, data, size) != 0)
        abort();
    cl_buf_free(&out);
    /* a request of one socket is never one of the other */
    cl_kh_request other;
    if (cl_kh_request_decode(data, size, !provisioning, &other) == 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    roundtrip(data, size, false);
    roundtrip(data, size, true);

    uint32_t status;
    cl_cursor payload;
    if (cl_kh_reply_split(data, size, &status, &payload) == 0 && status == 0) {
        cl_cursor again = payload;
        cl_kh_token_info t[CL_KH_MAX_TOKENS];
        cl_kh_object_info o[CL_KH_MAX_OBJECTS];
        size_t n;
        if (cl_kh_decode_tokens(&payload, t, CL_KH_MAX_TOKENS, &n) == 0) {
            if (n > CL_KH_MAX_TOKENS)
                abort();
            cl_buf out = CL_BUF_INIT;
            if (cl_buf_append_be(&out, n, 2) < 0)
                abort();
            for (size_t i = 0; i < n; i++)
                if (cl_kh_encode_token(&out, &t[i]) < 0)
                    abort();
            if (out.len != size - 1 || memcmp(out.data, data + 1, out.len) != 0)
                abort();
            cl_buf_free(&out);
        }
        if (cl_kh_decode_objects(&again, o, CL_KH_MAX_OBJECTS, &n) == 0) {
            if (n > CL_KH_MAX_OBJECTS)
                abort();
            cl_buf out = CL_BUF_INIT;
            if (cl_buf_append_be(&out, n, 2) < 0)
                abort();
            for (size_t i = 0; i < n; i++)
                if (o[i].handle == 0 || cl_kh_encode_object(&out, &o[i]) < 0)
                    abort();
            if (out.len != size - 1 || memcmp(out.data, data + 1, out.len) != 0)
                abort();
            cl_buf_free(&out);
        }
    }
    return 0;
}

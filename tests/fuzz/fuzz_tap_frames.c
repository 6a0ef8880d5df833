/* Feeds arbitrary bytes to the TAP stream decoder and the /connect parser.
 * Oracles: every decoded frame lies inside the input and re-encodes to
 * exactly the bytes it was decoded from; no strict prefix of a decoded
 * frame counts as complete; a decode never asks for more than one prefix
 * plus max_frame bytes; the /connect parser's verdict does not change
 * when more bytes follow a complete head. */
#include "cloister/core/tap_frames.h"

#include <stdlib.h>
#include <string.h>

static void stream(const uint8_t *data, size_t size, size_t max)
{
    size_t off = 0;
    for (;;) {
        cl_slice f;
        size_t consumed;
        bool complete;
        if (cl_tap_decode(data + off, size - off, max, &f, &consumed, &complete) < 0)
            return;
        if (!complete) {
            if (size - off >= CL_TAP_LEN_BYTES + max)
                abort(); /* it had everything it could need */
            return;
        }
        if (f.data != data + off + CL_TAP_LEN_BYTES || consumed != f.len + CL_TAP_LEN_BYTES || f.len > max ||
            f.len < CL_TAP_ETH_HEADER || off + consumed > size)
            abort();
        for (size_t n = 0; n < consumed; n++) {
            cl_slice g;
            size_t c2;
            bool done = true;
            if (cl_tap_decode(data + off, n, max, &g, &c2, &done) < 0 && n >= CL_TAP_LEN_BYTES)
                abort();
            if (done)
                abort();
        }
        cl_buf re = CL_BUF_INIT;
        if (cl_tap_encode(&re, f.data, f.len) < 0 || re.len != consumed || memcmp(re.data, data + off, consumed) != 0)
            abort();
        cl_buf_free(&re);
        off += consumed;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    /* the first byte picks the link's MTU, so small bounds are reached too */
    size_t max = cl_tap_max_frame(data[0] < 8 ? 1500 : (unsigned)data[0] * 8u);
    stream(data + 1, size - 1, max);

    size_t consumed;
    bool complete;
    if (cl_tap_parse_connect(data, size, &consumed, &complete) == 0 && complete) {
        if (consumed > size || consumed > CL_TAP_CONNECT_MAX)
            abort();
        size_t c2;
        bool done;
        if (cl_tap_parse_connect(data, consumed, &c2, &done) < 0 || !done || c2 != consumed)
            abort();
    }
    (void)cl_tap_check_not_http_reply(data, size);
    return 0;
}

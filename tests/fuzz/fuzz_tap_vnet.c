/* Feeds arbitrary bytes to the offload extension's record decoder and its
 * agreement parsers (core/tap_vnet.h): what a hostile parent can send.
 * Oracles: a decoded record lies inside the input, its length is within
 * bounds, its header passes the check again (with and without the frame)
 * and re-encodes to the same bytes; a superframe's csum_start is inside
 * the frame; no decode waits for more than a whole record; the answer
 * parser consumes nothing unless it accepted. */
#include "cloister/core/tap_frames.h"
#include "cloister/core/tap_vnet.h"

#include <stdlib.h>
#include <string.h>

static void stream(const uint8_t *data, size_t size, size_t max_plain)
{
    size_t off = 0;
    for (;;) {
        cl_slice rec;
        cl_tap_vnet_hdr h;
        size_t consumed;
        bool complete;
        if (cl_tap_vnet_decode(data + off, size - off, max_plain, &rec, &h, &consumed, &complete) < 0)
            return;
        if (!complete) {
            if (size - off >= CL_TAP_VNET_LEN_BYTES + CL_TAP_VNET_RECORD_MAX)
                abort(); /* it had everything it could need */
            return;
        }
        if (rec.data != data + off + CL_TAP_VNET_LEN_BYTES || consumed != rec.len + CL_TAP_VNET_LEN_BYTES ||
            rec.len > CL_TAP_VNET_RECORD_MAX || rec.len < CL_TAP_VNET_HDR + CL_TAP_ETH_HEADER ||
            off + consumed > size)
            abort();
        const uint8_t *f = rec.data + CL_TAP_VNET_HDR;
        size_t flen = rec.len - CL_TAP_VNET_HDR;
        if (cl_tap_vnet_check(&h, f, flen, max_plain) < 0 || cl_tap_vnet_check(&h, NULL, flen, max_plain) < 0)
            abort();
        if (h.gso_type == 0 && flen > max_plain)
            abort();
        if ((h.flags & CL_TAP_VNET_F_NEEDS_CSUM) && (size_t)h.csum_start + h.csum_offset + 2 > flen)
            abort();
        uint8_t again[CL_TAP_VNET_HDR];
        cl_tap_vnet_hdr_write(&h, again);
        if (memcmp(again, rec.data, CL_TAP_VNET_HDR) != 0)
            abort();
        uint8_t len[CL_TAP_VNET_LEN_BYTES];
        if (cl_tap_vnet_encode_len(rec.len, len) < 0 || memcmp(len, data + off, sizeof len) != 0)
            abort();
        off += consumed;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    size_t max_plain = cl_tap_max_frame(data[0] < 8 ? 1500 : (unsigned)data[0] * 8u);
    stream(data + 1, size - 1, max_plain);

    size_t consumed;
    bool complete, accepted;
    if (cl_tap_parse_offload_reply(data, size, &consumed, &complete, &accepted) == 0 && complete) {
        if (!accepted && consumed != 0)
            abort();
        if (accepted && (consumed > size || consumed > CL_TAP_CONNECT_MAX))
            abort();
    }
    bool offered;
    if (cl_tap_parse_connect_offer(data, size, &consumed, &complete, &offered) == 0 && complete && consumed > size)
        abort();
    return 0;
}

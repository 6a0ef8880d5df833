/* Feeds arbitrary bytes to the host's TAP stream reader as a stream would
 * bring them: the handshake, then the framing.  It must never crash or read
 * past the input; every frame handed on lies inside the input, within the
 * length bounds, and the frames and their headers account for exactly the
 * bytes reported used; feeding the same bytes in two pieces gives the same
 * frames (the relay reads in arbitrary chunks). */
#include "cloister/host/tap_bridge.h"

#include <stdlib.h>
#include <string.h>

#define MAXF (1500 + CL_TAP_ETH_HEADER + CL_TAP_ETH_VLAN)

typedef struct acc {
    const uint8_t *base;
    size_t size, frames, bytes;
} acc;

static bool check(void *ctx, const uint8_t *frame, size_t len)
{
    acc *a = ctx;
    if (frame < a->base || frame + len > a->base + a->size || len < CL_TAP_ETH_HEADER || len > MAXF)
        abort();
    a->frames++;
    a->bytes += len + 2;
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t head = 0;
    if (size && (data[0] == 'P' || data[0] == 'G')) {
        if (cl_tap_handshake_parse(data, size, &head) < 0 || head == 0)
            return 0;
        if (head > size || head > CL_TAP_HANDSHAKE_MAX)
            abort();
    }
    const uint8_t *s = data + head;
    size_t n = size - head;
    acc whole = {s, n, 0, 0};
    size_t used;
    int rc = cl_tap_frames_walk(s, n, MAXF, check, &whole, &used);
    if (rc == 0 && (used > n || used != whole.bytes || n - used >= 2 + MAXF))
        abort();
    /* in two pieces, as two reads: the first piece's leftover comes again */
    size_t cut = n / 2;
    acc first = {s, n, 0, 0};
    size_t used1;
    int rc1 = cl_tap_frames_walk(s, cut, MAXF, check, &first, &used1);
    if (rc1 < 0) {
        if (rc == 0)
            abort(); /* a prefix cannot be malformed when the whole is not */
        return 0;
    }
    acc second = {s, n, 0, 0};
    size_t used2;
    int rc2 = cl_tap_frames_walk(s + used1, n - used1, MAXF, check, &second, &used2);
    if ((rc2 < 0) != (rc < 0))
        abort();
    if (rc == 0 && (first.frames + second.frames != whole.frames || used1 + used2 != used))
        abort();
    return 0;
}

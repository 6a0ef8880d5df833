/* Feeds arbitrary bytes to the PROXY protocol v2 parser: it must never
 * crash or read past the input, must call every strict prefix of an
 * accepted header incomplete, and what it accepts must re-encode to a
 * header that parses to the same addresses. */
#include "cloister/core/proxy_protocol.h"

#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

static bool mapped(const struct sockaddr_storage *ss)
{
    return ss->ss_family == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&((const struct sockaddr_in6 *)ss)->sin6_addr);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cl_pp2_header h;
    bool complete = false;
    if (cl_pp2_parse(data, size, &h, &complete) < 0 || !complete)
        return 0;
    if (h.header_len > size || h.header_len < CL_PP2_FIXED_LEN)
        abort();
    for (size_t n = 0; n < h.header_len; n++) {
        cl_pp2_header p;
        bool c = true;
        if (cl_pp2_parse(data, n, &p, &c) < 0 || c)
            abort();
    }
    /* every TLV can be found */
    cl_slice v;
    bool found;
    if (cl_pp2_find_tlv(&h, CL_PP2_TYPE_NOOP, &v, &found) < 0)
        abort();
    if (h.command != CL_PP2_PROXY || h.src.ss_family == AF_UNSPEC)
        return 0;
    cl_buf out = CL_BUF_INIT;
    if (cl_pp2_encode((struct sockaddr *)&h.src, (struct sockaddr *)&h.dst, NULL, 0, true, &out) < 0)
        abort();
    cl_pp2_header again;
    if (cl_pp2_parse(out.data, out.len, &again, &complete) < 0 || !complete)
        abort();
    if (mapped(&h.src) && mapped(&h.dst)) {
        /* two IPv4-mapped addresses are sent as IPv4 (documented) */
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)&again.src;
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&h.src;
        if (again.family != CL_PP2_AF_INET || memcmp(&s4->sin_addr, s6->sin6_addr.s6_addr + 12, 4) != 0 ||
            s4->sin_port != s6->sin6_port)
            abort();
    } else if (again.family != h.family || memcmp(&again.src, &h.src, sizeof h.src) != 0 ||
               memcmp(&again.dst, &h.dst, sizeof h.dst) != 0) {
        abort();
    }
    cl_buf_free(&out);
    return 0;
}

#include "cloister/core/encoding.h"
#include "cloister/core/proxy_protocol.h"
#include "test.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>

static struct sockaddr_in v4(const char *ip, uint16_t port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, ip, &a.sin_addr);
    return a;
}

static struct sockaddr_in6 v6(const char *ip, uint16_t port)
{
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(port)};
    inet_pton(AF_INET6, ip, &a.sin6_addr);
    return a;
}

static cl_buf hex(const char *text)
{
    cl_buf b = CL_BUF_INIT;
    if (cl_hex_decode(text, &b) < 0)
        abort();
    return b;
}

/* 127.0.0.1:56324 -> 127.0.0.1:443, written out by hand from the specification. */
static const char *const known_v4 = "0d0a0d0a000d0a515549540a"
                                    "21" "11" "000c"
                                    "7f000001" "7f000001" "dc04" "01bb";

static void crc32c_check_value(void)
{
    CHECK(cl_crc32c(0, (const uint8_t *)"123456789", 9) == 0xE3069283u);
    CHECK(cl_crc32c(0, NULL, 0) == 0);
    /* incremental equals one shot */
    uint32_t c = cl_crc32c(0, (const uint8_t *)"1234", 4);
    CHECK(cl_crc32c(c, (const uint8_t *)"56789", 5) == 0xE3069283u);
}

static void encodes_known_ipv4_header(void)
{
    struct sockaddr_in s = v4("127.0.0.1", 56324), d = v4("127.0.0.1", 443);
    cl_buf out = CL_BUF_INIT;
    CHECK_OK(cl_pp2_encode((struct sockaddr *)&s, (struct sockaddr *)&d, NULL, 0, false, &out));
    cl_buf want = hex(known_v4);
    CHECK(out.len == want.len && memcmp(out.data, want.data, want.len) == 0);

    cl_pp2_header h;
    bool complete;
    CHECK_OK(cl_pp2_parse(want.data, want.len, &h, &complete));
    CHECK(complete && h.command == CL_PP2_PROXY && h.family == CL_PP2_AF_INET && h.transport == CL_PP2_STREAM);
    CHECK(h.header_len == 28 && h.tlvs.len == 0);
    struct sockaddr_in *ps = (struct sockaddr_in *)&h.src, *pd = (struct sockaddr_in *)&h.dst;
    CHECK(ps->sin_family == AF_INET && ntohs(ps->sin_port) == 56324 && ps->sin_addr.s_addr == htonl(0x7f000001));
    CHECK(pd->sin_family == AF_INET && ntohs(pd->sin_port) == 443);
    cl_buf_free(&out);
    cl_buf_free(&want);
}

static void payload_after_header_is_not_consumed(void)
{
    cl_buf b = hex(known_v4);
    CHECK_OK(cl_buf_append(&b, "GET / HTTP/1.1\r\n", 16));
    cl_pp2_header h;
    bool complete;
    CHECK_OK(cl_pp2_parse(b.data, b.len, &h, &complete));
    CHECK(complete && h.header_len == 28);
    cl_buf_free(&b);
}

static void round_trips_ipv6_and_mapped(void)
{
    struct sockaddr_in6 s = v6("2001:db8::1", 1234), d = v6("2001:db8::2", 443);
    cl_buf out = CL_BUF_INIT;
    CHECK_OK(cl_pp2_encode((struct sockaddr *)&s, (struct sockaddr *)&d, NULL, 0, false, &out));
    CHECK(out.len == 16 + 36 && out.data[13] == 0x21);
    cl_pp2_header h;
    bool complete;
    CHECK_OK(cl_pp2_parse(out.data, out.len, &h, &complete));
    struct sockaddr_in6 *ps = (struct sockaddr_in6 *)&h.src;
    CHECK(complete && h.family == CL_PP2_AF_INET6 && ps->sin6_family == AF_INET6);
    CHECK(memcmp(&ps->sin6_addr, &s.sin6_addr, 16) == 0 && ntohs(ps->sin6_port) == 1234);
    cl_buf_free(&out);

    /* two IPv4-mapped addresses (a dual-stack listener) are sent as IPv4 */
    struct sockaddr_in6 ms = v6("::ffff:10.0.0.1", 5000), md = v6("::ffff:10.0.0.2", 443);
    CHECK_OK(cl_pp2_encode((struct sockaddr *)&ms, (struct sockaddr *)&md, NULL, 0, false, &out));
    CHECK(out.len == 28 && out.data[13] == 0x11);
    CHECK_OK(cl_pp2_parse(out.data, out.len, &h, &complete));
    CHECK(((struct sockaddr_in *)&h.src)->sin_addr.s_addr == htonl(0x0a000001));
    cl_buf_free(&out);

    /* IPv4 with a real IPv6 address: both as IPv6, the IPv4 one mapped */
    struct sockaddr_in s4 = v4("192.0.2.7", 80);
    CHECK_OK(cl_pp2_encode((struct sockaddr *)&s4, (struct sockaddr *)&d, NULL, 0, false, &out));
    CHECK(out.len == 52 && out.data[13] == 0x21);
    CHECK_OK(cl_pp2_parse(out.data, out.len, &h, &complete));
    ps = (struct sockaddr_in6 *)&h.src;
    CHECK(IN6_IS_ADDR_V4MAPPED(&ps->sin6_addr) && ntohs(ps->sin6_port) == 80);
    cl_buf_free(&out);
}

static void round_trips_unix_unspec_local(void)
{
    struct sockaddr_un s = {.sun_family = AF_UNIX}, d = {.sun_family = AF_UNIX};
    strcpy(d.sun_path, "/run/enclave.sock");
    cl_buf out = CL_BUF_INIT;
    CHECK_OK(cl_pp2_encode((struct sockaddr *)&s, (struct sockaddr *)&d, NULL, 0, false, &out));
    CHECK(out.len == 16 + 216 && out.data[13] == 0x31);
    cl_pp2_header h;
    bool complete;
    CHECK_OK(cl_pp2_parse(out.data, out.len, &h, &complete));
    CHECK(complete && h.family == CL_PP2_AF_UNIX && h.dst.ss_family == AF_UNIX);
    CHECK(!strcmp(((struct sockaddr_un *)&h.dst)->sun_path, "/run/enclave.sock"));
    cl_buf_free(&out);

    /* a family the protocol has no block for (vsock): UNSPEC, no addresses */
    struct sockaddr other = {.sa_family = AF_UNSPEC};
    CHECK_OK(cl_pp2_encode(&other, &other, NULL, 0, false, &out));
    CHECK(out.len == 16 && out.data[12] == 0x21 && out.data[13] == 0x00);
    CHECK_OK(cl_pp2_parse(out.data, out.len, &h, &complete));
    CHECK(complete && h.command == CL_PP2_PROXY && h.family == CL_PP2_AF_UNSPEC && h.src.ss_family == AF_UNSPEC);
    cl_buf_free(&out);

    CHECK_OK(cl_pp2_encode_local(&out));
    CHECK(out.len == 16 && out.data[12] == 0x20);
    CHECK_OK(cl_pp2_parse(out.data, out.len, &h, &complete));
    CHECK(complete && h.command == CL_PP2_LOCAL);
    cl_buf_free(&out);

    /* LOCAL with an address block: parsed for its structure, addresses ignored */
    cl_buf b = hex("0d0a0d0a000d0a515549540a" "20" "11" "000c" "7f000001" "7f000001" "dc04" "01bb");
    CHECK_OK(cl_pp2_parse(b.data, b.len, &h, &complete));
    CHECK(complete && h.command == CL_PP2_LOCAL && h.src.ss_family == AF_UNSPEC);
    cl_buf_free(&b);
}

static void tlvs_and_crc(void)
{
    struct sockaddr_in s = v4("198.51.100.9", 40000), d = v4("10.0.0.5", 443);
    const cl_pp2_tlv tlvs[] = {
        {CL_PP2_TYPE_AUTHORITY, (const uint8_t *)"example.com", 11},
        {CL_PP2_TYPE_AWS, (const uint8_t *)"\x01vpce-0123", 10},
        {CL_PP2_TYPE_NOOP, NULL, 0},
    };
    cl_buf out = CL_BUF_INIT;
    CHECK_OK(cl_pp2_encode((struct sockaddr *)&s, (struct sockaddr *)&d, tlvs, 3, true, &out));
    cl_pp2_header h;
    bool complete, found;
    CHECK_OK(cl_pp2_parse(out.data, out.len, &h, &complete));
    CHECK(complete && h.header_len == out.len);
    cl_slice v;
    CHECK_OK(cl_pp2_find_tlv(&h, CL_PP2_TYPE_AUTHORITY, &v, &found));
    CHECK(found && cl_slice_eq(v, "example.com"));
    CHECK_OK(cl_pp2_find_tlv(&h, CL_PP2_TYPE_AWS, &v, &found));
    CHECK(found && v.len == 10 && v.data[0] == 0x01);
    CHECK_OK(cl_pp2_find_tlv(&h, CL_PP2_TYPE_CRC32C, &v, &found));
    CHECK(found && v.len == 4);
    CHECK_OK(cl_pp2_find_tlv(&h, CL_PP2_TYPE_ALPN, &v, &found));
    CHECK(!found);

    /* every single-bit flip is caught, by the structure checks or by the
     * CRC, except in the CRC TLV's own type byte: a flip there turns it into
     * an unknown TLV that nothing checks (the specification's CRC cannot
     * protect its own presence) */
    size_t crc_type_at = out.len - 7;
    CHECK(out.data[crc_type_at] == CL_PP2_TYPE_CRC32C);
    size_t accepted = 0;
    for (size_t i = 0; i < out.len * 8; i++) {
        out.data[i / 8] ^= (uint8_t)(1u << (i % 8));
        cl_error_clear();
        int rc = cl_pp2_parse(out.data, out.len, &h, &complete);
        if (rc == 0 && complete && i / 8 != crc_type_at) {
            accepted++;
            fprintf(stderr, "flip of bit %zu accepted\n", i);
        }
        out.data[i / 8] ^= (uint8_t)(1u << (i % 8));
    }
    CHECK(accepted == 0);
    cl_buf_free(&out);
}

static void crc_mismatch_is_named(void)
{
    struct sockaddr_in s = v4("1.2.3.4", 1), d = v4("5.6.7.8", 2);
    cl_buf out = CL_BUF_INIT;
    CHECK_OK(cl_pp2_encode((struct sockaddr *)&s, (struct sockaddr *)&d, NULL, 0, true, &out));
    out.data[out.len - 1] ^= 1;
    cl_pp2_header h;
    bool complete;
    CHECK_ERR(cl_pp2_parse(out.data, out.len, &h, &complete), CL_EPARSE, "CRC32C mismatch");
    cl_buf_free(&out);
}

static void every_prefix_is_incomplete(void)
{
    struct sockaddr_in6 s = v6("2001:db8::1", 1), d = v6("2001:db8::2", 2);
    const cl_pp2_tlv tlv = {CL_PP2_TYPE_UNIQUE_ID, (const uint8_t *)"abc", 3};
    cl_buf out = CL_BUF_INIT;
    CHECK_OK(cl_pp2_encode((struct sockaddr *)&s, (struct sockaddr *)&d, &tlv, 1, true, &out));
    for (size_t n = 0; n < out.len; n++) {
        cl_pp2_header h;
        bool complete = true;
        int rc = cl_pp2_parse(out.data, n, &h, &complete);
        CHECK(rc == 0 && !complete);
    }
    cl_buf_free(&out);
}

static void rejects_malformed(void)
{
    static const struct {
        const char *hex, *fragment;
    } bad[] = {
        {"0d0a0d0a000d0a515549540b", "signature"},                   /* last signature byte */
        {"50524f5859", "signature"},                                  /* a v1 "PROXY" line */
        {"0d0a0d0a000d0a515549540a" "11", "version 1"},
        {"0d0a0d0a000d0a515549540a" "31", "version 3"},
        {"0d0a0d0a000d0a515549540a" "22", "unknown command"},
        {"0d0a0d0a000d0a515549540a" "21" "41", "unknown address family"},
        {"0d0a0d0a000d0a515549540a" "21" "13", "unknown transport"},
        {"0d0a0d0a000d0a515549540a" "21" "10", "invalid family/transport"},
        {"0d0a0d0a000d0a515549540a" "21" "01", "invalid family/transport"},
        {"0d0a0d0a000d0a515549540a" "21" "11" "000b", "shorter than the 12-byte address block"},
        {"0d0a0d0a000d0a515549540a" "21" "21" "0023", "shorter than the 36-byte address block"},
        {"0d0a0d0a000d0a515549540a" "21" "31" "0000", "shorter than the 216-byte address block"},
        /* TLV type 04 claims 5 bytes, 2 present */
        {"0d0a0d0a000d0a515549540a" "21" "11" "0011" "7f000001" "7f000001" "dc04" "01bb" "040005" "aabb",
         "truncated TLV"},
        /* a TLV header cut after its type byte */
        {"0d0a0d0a000d0a515549540a" "21" "11" "000d" "7f000001" "7f000001" "dc04" "01bb" "04", "truncated TLV"},
        /* CRC32C of 3 bytes */
        {"0d0a0d0a000d0a515549540a" "21" "11" "0012" "7f000001" "7f000001" "dc04" "01bb" "030003" "000000",
         "CRC32C TLV of 3 bytes"},
        /* SSL TLV too short, and with a sub-TLV that overruns */
        {"0d0a0d0a000d0a515549540a" "21" "11" "0013" "7f000001" "7f000001" "dc04" "01bb" "200004" "01000000",
         "SSL TLV of 4 bytes"},
        {"0d0a0d0a000d0a515549540a" "21" "11" "0018" "7f000001" "7f000001" "dc04" "01bb" "200009" "0100000000"
         "210009" "41",
         "truncated sub-TLV"},
        /* empty AWS TLV */
        {"0d0a0d0a000d0a515549540a" "21" "11" "000f" "7f000001" "7f000001" "dc04" "01bb" "ea0000", "empty AWS TLV"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cl_buf b = hex(bad[i].hex);
        cl_pp2_header h;
        bool complete = false;
        CHECK_ERR(cl_pp2_parse(b.data, b.len, &h, &complete), CL_EPARSE, bad[i].fragment);
        if (!strstr(cl_error_message(), bad[i].fragment))
            fprintf(stderr, "  case %zu: %s\n", i, bad[i].hex);
        cl_buf_free(&b);
    }

    /* a UNIQUE_ID longer than 128 bytes */
    cl_buf b = hex("0d0a0d0a000d0a515549540a" "21" "00" "0084" "050081");
    for (int i = 0; i < 129; i++)
        CHECK_OK(cl_buf_append_u8(&b, 'x'));
    cl_pp2_header h;
    bool complete;
    CHECK_ERR(cl_pp2_parse(b.data, b.len, &h, &complete), CL_EPARSE, "UNIQUE_ID TLV of 129 bytes");
    cl_buf_free(&b);

    /* two CRC32C TLVs */
    struct sockaddr_in s = v4("1.2.3.4", 1), d = v4("5.6.7.8", 2);
    const cl_pp2_tlv crc = {CL_PP2_TYPE_CRC32C, (const uint8_t *)"\0\0\0\0", 4};
    cl_buf out = CL_BUF_INIT;
    CHECK_OK(cl_pp2_encode((struct sockaddr *)&s, (struct sockaddr *)&d, &crc, 1, true, &out));
    CHECK_ERR(cl_pp2_parse(out.data, out.len, &h, &complete), CL_EPARSE, NULL);
    cl_buf_free(&out);
}

static void refuses_oversized_encoding(void)
{
    static uint8_t big[65535];
    const cl_pp2_tlv tlv = {CL_PP2_TYPE_NOOP, big, 65535 - 3};
    cl_buf out = CL_BUF_INIT;
    struct sockaddr_in s = v4("1.2.3.4", 1), d = v4("5.6.7.8", 2);
    CHECK_ERR(cl_pp2_encode((struct sockaddr *)&s, (struct sockaddr *)&d, &tlv, 1, false, &out), CL_ELIMIT, NULL);
    CHECK(out.len == 0);
    /* the largest that fits: UNSPEC and one TLV filling 65535 bytes */
    struct sockaddr none = {.sa_family = AF_UNSPEC};
    CHECK_OK(cl_pp2_encode(&none, &none, &tlv, 1, false, &out));
    CHECK(out.len == CL_PP2_MAX_LEN);
    cl_pp2_header h;
    bool complete;
    CHECK_OK(cl_pp2_parse(out.data, out.len, &h, &complete));
    CHECK(complete && h.header_len == CL_PP2_MAX_LEN);
    cl_buf_free(&out);
}

int main(void)
{
    RUN(crc32c_check_value);
    RUN(encodes_known_ipv4_header);
    RUN(payload_after_header_is_not_consumed);
    RUN(round_trips_ipv6_and_mapped);
    RUN(round_trips_unix_unspec_local);
    RUN(tlvs_and_crc);
    RUN(crc_mismatch_is_named);
    RUN(every_prefix_is_incomplete);
    RUN(rejects_malformed);
    RUN(refuses_oversized_encoding);
    return test_summary();
}

/* The offload extension of the TAP stream (core/tap_vnet.h): the agreement
 * in POST /connect, the records, and every way a hostile parent can bend
 * a virtio header. */
#include "cloister/core/tap_frames.h"
#include "cloister/core/tap_vnet.h"
#include "test.h"

#define MAX_PLAIN 1518

/* A TCP superframe as the kernel hands it over: Ethernet, IPv4 (ihl 5 plus
 * opt_words of options) or IPv6, TCP with 20 bytes of header, payload. */
static size_t superframe(uint8_t *f, bool v6, unsigned opt_words, size_t payload, cl_tap_vnet_hdr *h)
{
    memset(f, 0, 14);
    f[0] = 0x5a;
    f[6] = 0xba;
    size_t l4;
    if (!v6) {
        f[12] = 0x08;
        f[13] = 0x00;
        uint8_t *ip = f + 14;
        size_t ihl = 20 + 4 * opt_words;
        memset(ip, 0, ihl);
        ip[0] = (uint8_t)(0x40 | (5 + opt_words));
        size_t total = ihl + 20 + payload;
        ip[2] = (uint8_t)(total >> 8);
        ip[3] = (uint8_t)total;
        ip[6] = 0x40; /* DF */
        ip[8] = 64;
        ip[9] = 6;
        memcpy(ip + 12, "\xc0\xa8\x7f\x02", 4);
        memcpy(ip + 16, "\x0a\x00\x00\x01", 4);
        l4 = 14 + ihl;
    } else {
        f[12] = 0x86;
        f[13] = 0xdd;
        uint8_t *ip = f + 14;
        memset(ip, 0, 40);
        ip[0] = 0x60;
        size_t pl = 20 + payload;
        ip[4] = (uint8_t)(pl >> 8);
        ip[5] = (uint8_t)pl;
        ip[6] = 6;
        ip[7] = 64;
        ip[8] = 0x20;
        ip[24] = 0x20;
        l4 = 54;
    }
    uint8_t *tcp = f + l4;
    memset(tcp, 0, 20);
    tcp[0] = 0x9c;
    tcp[2] = 0x01;
    tcp[3] = 0xbb;
    tcp[12] = 0x50;
    tcp[13] = 0x18;
    memset(tcp + 20, 'x', payload);
    *h = (cl_tap_vnet_hdr){.flags = CL_TAP_VNET_F_NEEDS_CSUM,
                           .gso_type = v6 ? CL_TAP_VNET_GSO_TCPV6 : CL_TAP_VNET_GSO_TCPV4,
                           .hdr_len = (uint16_t)(l4 + 20),
                           .gso_size = 1448,
                           .csum_start = (uint16_t)l4,
                           .csum_offset = 16};
    return l4 + 20 + payload;
}

/* A record: 4-byte length, header, frame. */
static size_t record(uint8_t *out, const cl_tap_vnet_hdr *h, const uint8_t *f, size_t flen)
{
    if (cl_tap_vnet_encode_len(flen + CL_TAP_VNET_HDR, out) < 0)
        return 0;
    cl_tap_vnet_hdr_write(h, out + 4);
    memcpy(out + 14, f, flen);
    return 14 + flen;
}

static uint8_t frame[CL_TAP_VNET_FRAME_MAX + 64], rec[CL_TAP_VNET_FRAME_MAX + 128];

static int decode_all(const uint8_t *r, size_t n)
{
    cl_slice s;
    cl_tap_vnet_hdr h;
    size_t consumed;
    bool complete;
    cl_error_clear();
    int rc = cl_tap_vnet_decode(r, n, MAX_PLAIN, &s, &h, &consumed, &complete);
    if (rc == 0 && !complete)
        return 1;
    return rc;
}

static void agreement(void)
{
    cl_buf b = CL_BUF_INIT;
    CHECK_OK(cl_tap_connect_request_offer(&b, true));
    size_t consumed;
    bool complete, offered;
    CHECK_OK(cl_tap_parse_connect_offer(b.data, b.len, &consumed, &complete, &offered));
    CHECK(complete && offered && consumed == b.len);
    /* the plain request, gvproxy's, and a later version's token: no offer */
    cl_buf p = CL_BUF_INIT;
    CHECK_OK(cl_tap_connect_request_offer(&p, false));
    CHECK_OK(cl_tap_parse_connect_offer(p.data, p.len, &consumed, &complete, &offered));
    CHECK(complete && !offered);
    const char *other = "POST /connect HTTP/1.1\r\nHost: x\r\nCloister-Tap-Offload: vnet-v2\r\n\r\n";
    CHECK_OK(cl_tap_parse_connect_offer((const uint8_t *)other, strlen(other), &consumed, &complete, &offered));
    CHECK(complete && !offered);
    /* the offer still is a valid gvproxy request */
    CHECK_OK(cl_tap_parse_connect(b.data, b.len, &consumed, &complete));
    CHECK(complete);
    cl_buf_free(&p);

    /* the answer, then a record in the same read */
    cl_buf a = CL_BUF_INIT;
    CHECK_OK(cl_tap_offload_reply(&a));
    size_t alen = a.len;
    for (size_t i = 0; i < alen; i++) {
        bool accepted;
        CHECK_OK(cl_tap_parse_offload_reply(a.data, i, &consumed, &complete, &accepted));
        CHECK(!complete);
    }
    cl_tap_vnet_hdr h = {0};
    memset(frame, 0, 60);
    size_t n = record(rec, &h, frame, 60);
    CHECK_OK(cl_buf_append(&a, rec, n));
    bool accepted;
    CHECK_OK(cl_tap_parse_offload_reply(a.data, a.len, &consumed, &complete, &accepted));
    CHECK(complete && accepted && consumed == alen);
    CHECK(decode_all(a.data + consumed, a.len - consumed) == 0);
    cl_buf_free(&a);

    /* gvproxy: a plain frame comes first, consumed by nobody */
    const uint8_t plain[] = {60, 0, 1, 2, 3};
    CHECK_OK(cl_tap_parse_offload_reply(plain, sizeof plain, &consumed, &complete, &accepted));
    CHECK(complete && !accepted && consumed == 0);
    /* other HTTP answers are not a /connect endpoint */
    const char *nf = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
    CHECK_ERR(cl_tap_parse_offload_reply((const uint8_t *)nf, strlen(nf), &consumed, &complete, &accepted), CL_EPROTO,
              "404");
    const char *ok = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    CHECK_ERR(cl_tap_parse_offload_reply((const uint8_t *)ok, strlen(ok), &consumed, &complete, &accepted), CL_EPROTO,
              "200");
    const char *body = "HTTP/1.1 200 OK\r\nCloister-Tap-Offload: vnet-v1\r\nContent-Length: 2\r\n\r\nxx";
    CHECK_ERR(cl_tap_parse_offload_reply((const uint8_t *)body, strlen(body), &consumed, &complete, &accepted),
              CL_EPROTO, "body");
    cl_buf_free(&b);
}

static void good_records(void)
{
    cl_tap_vnet_hdr h, got;
    for (int v6 = 0; v6 < 2; v6++) {
        size_t flen = superframe(frame, v6, v6 ? 0 : 3, 64000, &h);
        size_t n = record(rec, &h, frame, flen);
        CHECK(n == 14 + flen);
        CHECK(rec[0] == (uint8_t)(flen + 10) && rec[1] == (uint8_t)((flen + 10) >> 8) && rec[2] == 0 && rec[3] == 0);
        cl_slice s;
        size_t consumed;
        bool complete;
        CHECK_OK(cl_tap_vnet_decode(rec, n, MAX_PLAIN, &s, &got, &consumed, &complete));
        CHECK(complete && consumed == n && s.data == rec + 4 && s.len == flen + 10);
        CHECK(got.gso_type == h.gso_type && got.gso_size == 1448 && got.csum_start == h.csum_start &&
              got.csum_offset == 16 && got.hdr_len == h.hdr_len);
        /* every prefix is incomplete, never an error */
        for (size_t i = 0; i < n; i += (i < 64 ? 1 : 997)) {
            CHECK_OK(cl_tap_vnet_decode(rec, i, MAX_PLAIN, &s, &got, &consumed, &complete));
            CHECK(!complete && consumed == 0);
        }
    }
    /* a plain frame: no offload, at most the link's size */
    memset(frame, 0, MAX_PLAIN);
    h = (cl_tap_vnet_hdr){0};
    CHECK(decode_all(rec, record(rec, &h, frame, MAX_PLAIN)) == 0);
    h.flags = CL_TAP_VNET_F_DATA_VALID;
    CHECK(decode_all(rec, record(rec, &h, frame, 60)) == 0);
    /* a partial checksum on a plain frame (UDP's, at 34+6) */
    h = (cl_tap_vnet_hdr){.flags = CL_TAP_VNET_F_NEEDS_CSUM, .csum_start = 34, .csum_offset = 6};
    CHECK(decode_all(rec, record(rec, &h, frame, 60)) == 0);
}

/* The hostile parent: each bend of the header is refused, and refused
 * from the header alone when the frame is not needed to see it. */
static void bad_headers(void)
{
    cl_tap_vnet_hdr good, h;
    size_t flen = superframe(frame, false, 0, 30000, &good);
    size_t n;
#define BAD(mutate, code, fragment, early)                                                                          \
    do {                                                                                                          \
        h = good;                                                                                                 \
        mutate;                                                                                                   \
        n = record(rec, &h, frame, flen);                                                                         \
        CHECK_ERR(decode_all(rec, n), code, fragment);                                                           \
        if (early)                                                                                                \
            CHECK_ERR(decode_all(rec, 14), code, fragment);                                                      \
    } while (0)
    BAD(h.flags = 0x81, CL_EPROTO, "flags", true);
    BAD(h.gso_type = 3, CL_EPROTO, "gso_type", true);    /* UFO */
    BAD(h.gso_type = 5, CL_EPROTO, "gso_type", true);    /* USO: never offered */
    BAD(h.gso_type = 0x7f, CL_EPROTO, "gso_type", true);
    BAD(h.flags = 0, CL_EPROTO, "without NEEDS_CSUM", true); /* csum_start/offset left set */
    BAD(h.gso_size = 0, CL_EPROTO, "gso_size", true);
    BAD(h.gso_size = 1, CL_EPROTO, "gso_size", true);
    BAD(h.csum_offset = 6, CL_EPROTO, "csum_offset", true);
    BAD(h.csum_start = (uint16_t)(flen - 17), CL_EPROTO, "beyond", true);
    BAD(h.csum_start = 0xffff, CL_EPROTO, "beyond", true);
    BAD(h.csum_start = 4, CL_EPROTO, "beyond", true); /* inside the Ethernet header */
    BAD(h.hdr_len = (uint16_t)(flen + 1), CL_EPROTO, "hdr_len", true);
    /* the frame's own headers */
    BAD(h.gso_type = CL_TAP_VNET_GSO_TCPV6, CL_EPROTO, "ethertype", false);
    BAD(h.csum_start = 14, CL_EPROTO, "csum_start", false); /* the IP header: the segmenter would cut there */
    BAD(frame[14 + 9] = 17, CL_EPROTO, "protocol", false); /* UDP inside a TCP superframe */
    frame[14 + 9] = 6;
    BAD(frame[14 + 6] = 0x20, CL_EPROTO, "fragment", false);
    frame[14 + 6] = 0x40;
    BAD(frame[14 + 2] ^= 1, CL_EPROTO, "total length", false);
    frame[14 + 2] ^= 1;
    BAD(frame[14 + 20 + 12] = 0x40, CL_EPROTO, "data offset", false);
    frame[14 + 20 + 12] = 0x50;
    CHECK(decode_all(rec, record(rec, &good, frame, flen)) == 0);
    /* a superframe whose checksums are whole (DATA_VALID, no partial checksum): the kernel finds
     * the TCP header itself; the frame's headers are still checked */
    h = good;
    h.flags = CL_TAP_VNET_F_DATA_VALID;
    h.csum_start = h.csum_offset = 0;
    CHECK(decode_all(rec, record(rec, &h, frame, flen)) == 0);
    frame[14 + 9] = 17;
    CHECK_ERR(decode_all(rec, record(rec, &h, frame, flen)), CL_EPROTO, "protocol");
    frame[14 + 9] = 6;
    /* a plain frame with gso fields, or over the link's size */
    cl_tap_vnet_hdr plain = {0};
    flen = 60;
    BAD((h = plain, h.gso_size = 1448), CL_EPROTO, "gso_size", true);
    BAD((h = plain, h.gso_type = CL_TAP_VNET_GSO_ECN), CL_EPROTO, "gso_type", true);
    BAD((h = plain, h.csum_start = 20), CL_EPROTO, "without NEEDS_CSUM", true);
    h = plain;
    n = record(rec, &h, frame, MAX_PLAIN + 1);
    CHECK_ERR(decode_all(rec, 14), CL_ELIMIT, "exceeds");
#undef BAD
    /* lengths, judged from the 4 bytes alone */
    const uint8_t shortrec[] = {23, 0, 0, 0};
    CHECK_ERR(decode_all(shortrec, 4), CL_EPARSE, "shorter");
    const uint8_t huge[] = {0xff, 0xff, 0xff, 0xff};
    CHECK_ERR(decode_all(huge, 4), CL_ELIMIT, "exceeds");
    uint8_t over[4];
    CHECK_ERR(cl_tap_vnet_encode_len(CL_TAP_VNET_RECORD_MAX + 1, over), CL_ELIMIT, NULL);
    CHECK_OK(cl_tap_vnet_encode_len(CL_TAP_VNET_RECORD_MAX, over));
    CHECK(decode_all(over, 4) == 1);
    /* a superframe larger than a superframe can be */
    h = good;
    CHECK_ERR(cl_tap_vnet_check(&h, NULL, CL_TAP_VNET_FRAME_MAX + 1, MAX_PLAIN), CL_ELIMIT, "superframe");
}

int main(void)
{
    RUN(agreement);
    RUN(good_records);
    RUN(bad_headers);
    return test_summary();
}

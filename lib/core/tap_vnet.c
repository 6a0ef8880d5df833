#include "cloister/core/tap_vnet.h"

#include "cloister/core/cursor.h"
#include "cloister/core/http.h"
#include "cloister/core/tap_frames.h"

#include <string.h>

static int le16(cl_cursor *c, uint16_t *out)
{
    uint8_t lo, hi;
    CL_TRY(cl_cursor_u8(c, &lo));
    CL_TRY(cl_cursor_u8(c, &hi));
    *out = (uint16_t)(lo | hi << 8);
    return 0;
}

void cl_tap_vnet_hdr_read(const uint8_t p[static CL_TAP_VNET_HDR], cl_tap_vnet_hdr *h)
{
    h->flags = p[0];
    h->gso_type = p[1];
    h->hdr_len = (uint16_t)(p[2] | p[3] << 8);
    h->gso_size = (uint16_t)(p[4] | p[5] << 8);
    h->csum_start = (uint16_t)(p[6] | p[7] << 8);
    h->csum_offset = (uint16_t)(p[8] | p[9] << 8);
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v & 0xff);
    p[1] = (uint8_t)(v >> 8);
}

void cl_tap_vnet_hdr_write(const cl_tap_vnet_hdr *h, uint8_t p[static CL_TAP_VNET_HDR])
{
    p[0] = h->flags;
    p[1] = h->gso_type;
    put16(p + 2, h->hdr_len);
    put16(p + 4, h->gso_size);
    put16(p + 6, h->csum_start);
    put16(p + 8, h->csum_offset);
}

int cl_tap_connect_request_offer(cl_buf *out, bool offer)
{
    if (!offer)
        return cl_tap_connect_request(out);
    /* One write, as the plain request: gvproxy drops whatever its server
     * had buffered after the head. */
    static const char req[] = "POST " CL_TAP_CONNECT_PATH " HTTP/1.1\r\n"
                              "Host: gateway\r\n"
                              CL_TAP_OFFLOAD_FIELD ": " CL_TAP_OFFLOAD_TOKEN "\r\n"
                              "Content-Length: 0\r\n"
                              "\r\n";
    return cl_buf_append(out, req, sizeof req - 1);
}

int cl_tap_parse_connect_offer(const uint8_t *data, size_t len, size_t *consumed, bool *complete, bool *offered)
{
    *offered = false;
    CL_TRY(cl_tap_parse_connect(data, len, consumed, complete));
    if (!*complete)
        return 0;
    cl_http_head head;
    bool done = false;
    CL_TRY(cl_http_parse_request(data, len, CL_TAP_CONNECT_MAX, &head, &done));
    const cl_slice *v = cl_http_header_get(&head, CL_TAP_OFFLOAD_FIELD);
    *offered = v && cl_slice_eq(*v, CL_TAP_OFFLOAD_TOKEN);
    return 0;
}

int cl_tap_offload_reply(cl_buf *out)
{
    static const char reply[] = "HTTP/1.1 200 OK\r\n" CL_TAP_OFFLOAD_FIELD ": " CL_TAP_OFFLOAD_TOKEN "\r\n"
                                "Content-Length: 0\r\n"
                                "\r\n";
    return cl_buf_append(out, reply, sizeof reply - 1);
}

int cl_tap_parse_offload_reply(const uint8_t *data, size_t len, size_t *consumed, bool *complete, bool *accepted)
{
    *consumed = 0;
    *complete = false;
    *accepted = false;
    static const char http[] = "HTTP/";
    size_t n = len < sizeof http - 1 ? len : sizeof http - 1;
    if (memcmp(data, http, n) != 0) {
        *complete = true; /* a frame length: a parent that did not take the offer (gvproxy) */
        return 0;
    }
    if (n < sizeof http - 1)
        return 0;
    cl_http_head head;
    bool done = false;
    int rc = cl_http_parse_response(data, len, CL_TAP_CONNECT_MAX, (cl_slice){(const uint8_t *)"POST", 4}, &head,
                                    &done);
    if (rc < 0)
        return cl_error_prefix(CL_EPROTO, "the parent's answer to POST /connect: ");
    if (!done)
        return 0;
    const cl_slice *v = cl_http_header_get(&head, CL_TAP_OFFLOAD_FIELD);
    CL_ENSURE(head.status == 200 && v && cl_slice_eq(*v, CL_TAP_OFFLOAD_TOKEN), CL_EPROTO,
              "the parent answered POST /connect with an HTTP response (status %d%s): it is not a "
              "gvproxy-compatible /connect endpoint",
              head.status, v ? " and an unknown offload token" : "");
    CL_ENSURE(head.body == CL_HTTP_BODY_NONE || (head.body == CL_HTTP_BODY_LENGTH && head.content_length == 0),
              CL_EPROTO, "the parent's offload answer has a body, but records must follow the head directly");
    *consumed = head.head_len;
    *complete = true;
    *accepted = true;
    return 0;
}

/* The superframe's own headers, read from the frame: the segmenter cuts
 * at csum_start, so it must be the TCP header that the IP header names
 * (and the egress policy judged), with no option or extension header
 * hiding another one. */
static int check_superframe(const cl_tap_vnet_hdr *h, const uint8_t *frame, size_t len)
{
    cl_cursor c = cl_cursor_make(frame, len);
    uint16_t type;
    CL_TRY(cl_cursor_skip(&c, 12));
    CL_TRY(cl_cursor_be16(&c, &type));
    size_t l4;
    uint8_t proto;
    bool v4 = (h->gso_type & ~CL_TAP_VNET_GSO_ECN) == CL_TAP_VNET_GSO_TCPV4;
    if (v4) {
        CL_ENSURE(type == 0x0800, CL_EPROTO, "vnet header: a TCPv4 superframe of ethertype 0x%04x", type);
        uint8_t vihl, b;
        uint16_t total, frag;
        CL_TRY(cl_cursor_u8(&c, &vihl));
        CL_TRY(cl_cursor_u8(&c, &b));
        CL_TRY(cl_cursor_be16(&c, &total));
        CL_TRY(cl_cursor_skip(&c, 2));
        CL_TRY(cl_cursor_be16(&c, &frag));
        CL_TRY(cl_cursor_skip(&c, 1));
        CL_TRY(cl_cursor_u8(&c, &proto));
        CL_ENSURE((vihl >> 4) == 4 && (vihl & 15) >= 5, CL_EPROTO, "vnet header: a TCPv4 superframe that is not IPv4");
        l4 = 14 + (size_t)(vihl & 15) * 4;
        CL_ENSURE((size_t)total + 14 == len, CL_EPROTO,
                  "vnet header: a superframe's IPv4 total length %u does not match its %zu bytes", total, len);
        CL_ENSURE((frag & 0x3fff) == 0, CL_EPROTO, "vnet header: a superframe that is a fragment");
    } else {
        CL_ENSURE(type == 0x86dd, CL_EPROTO, "vnet header: a TCPv6 superframe of ethertype 0x%04x", type);
        uint8_t ver;
        uint16_t payload;
        CL_TRY(cl_cursor_u8(&c, &ver));
        CL_TRY(cl_cursor_skip(&c, 3));
        CL_TRY(cl_cursor_be16(&c, &payload));
        CL_TRY(cl_cursor_u8(&c, &proto));
        CL_ENSURE((ver >> 4) == 6, CL_EPROTO, "vnet header: a TCPv6 superframe that is not IPv6");
        l4 = 14 + 40;
        CL_ENSURE((size_t)payload + l4 == len, CL_EPROTO,
                  "vnet header: a superframe's IPv6 payload length %u does not match its %zu bytes", payload, len);
    }
    CL_ENSURE(proto == 6, CL_EPROTO, "vnet header: a TCP superframe whose IP header says protocol %u", proto);
    /* without NEEDS_CSUM the kernel finds the TCP header by parsing: the same one */
    CL_ENSURE(h->csum_start == l4 || !(h->flags & CL_TAP_VNET_F_NEEDS_CSUM), CL_EPROTO,
              "vnet header: csum_start %u is not the TCP header at %zu", h->csum_start, l4);
    cl_cursor t = cl_cursor_make(frame, len);
    uint8_t doff;
    CL_TRY(cl_cursor_skip(&t, l4 + 12));
    CL_TRY(cl_cursor_u8(&t, &doff));
    size_t thl = (size_t)(doff >> 4) * 4;
    CL_ENSURE(thl >= 20 && l4 + thl <= len, CL_EPROTO, "vnet header: a superframe with a bad TCP data offset");
    return 0;
}

int cl_tap_vnet_check(const cl_tap_vnet_hdr *h, const uint8_t *frame, size_t frame_len, size_t max_plain)
{
    CL_ENSURE(!(h->flags & ~(CL_TAP_VNET_F_NEEDS_CSUM | CL_TAP_VNET_F_DATA_VALID)), CL_EPROTO,
              "vnet header: unknown flags 0x%02x", h->flags);
    CL_ENSURE(frame_len >= CL_TAP_ETH_HEADER, CL_EPARSE, "vnet record: a frame of %zu bytes", frame_len);
    uint8_t gso = h->gso_type & (uint8_t)~CL_TAP_VNET_GSO_ECN;
    if (gso == CL_TAP_VNET_GSO_NONE) {
        CL_ENSURE(h->gso_type == 0 && h->gso_size == 0, CL_EPROTO,
                  "vnet header: gso_type 0x%02x gso_size %u on a frame that is not a superframe", h->gso_type,
                  h->gso_size);
        CL_ENSURE(frame_len <= max_plain, CL_ELIMIT, "vnet record: a frame of %zu bytes exceeds this link's %zu",
                  frame_len, max_plain);
    } else {
        /* TCP only: UDP segmentation (UFO, USO) is never offered */
        CL_ENSURE(gso == CL_TAP_VNET_GSO_TCPV4 || gso == CL_TAP_VNET_GSO_TCPV6, CL_EPROTO,
                  "vnet header: gso_type 0x%02x is not TCPv4 or TCPv6", h->gso_type);
        CL_ENSURE(h->gso_size >= CL_TAP_VNET_MIN_GSO, CL_EPROTO, "vnet header: gso_size %u is below %d", h->gso_size,
                  CL_TAP_VNET_MIN_GSO);
        /* without NEEDS_CSUM (a superframe whose checksums are whole, as a
         * kernel may forward one) csum_offset is 0, checked below */
        CL_ENSURE(h->csum_offset == 16 || !(h->flags & CL_TAP_VNET_F_NEEDS_CSUM), CL_EPROTO,
                  "vnet header: csum_offset %u is not TCP's checksum (16)", h->csum_offset);
        CL_ENSURE(frame_len <= CL_TAP_VNET_FRAME_MAX, CL_ELIMIT, "vnet record: a superframe of %zu bytes (at most %d)",
                  frame_len, CL_TAP_VNET_FRAME_MAX);
    }
    CL_ENSURE(h->hdr_len <= frame_len, CL_EPROTO, "vnet header: hdr_len %u beyond the frame's %zu bytes", h->hdr_len,
              frame_len);
    if (h->flags & CL_TAP_VNET_F_NEEDS_CSUM)
        CL_ENSURE(h->csum_start >= CL_TAP_ETH_HEADER && (size_t)h->csum_start + h->csum_offset + 2 <= frame_len,
                  CL_EPROTO, "vnet header: checksum at %u+%u beyond the frame's %zu bytes", h->csum_start,
                  h->csum_offset, frame_len);
    else
        CL_ENSURE(h->csum_start == 0 && h->csum_offset == 0, CL_EPROTO,
                  "vnet header: csum_start/csum_offset without NEEDS_CSUM");
    if (gso != CL_TAP_VNET_GSO_NONE && frame)
        CL_TRY(check_superframe(h, frame, frame_len));
    return 0;
}

int cl_tap_vnet_encode_len(size_t rec_len, uint8_t out[static CL_TAP_VNET_LEN_BYTES])
{
    CL_ENSURE(rec_len >= CL_TAP_VNET_HDR + CL_TAP_ETH_HEADER && rec_len <= CL_TAP_VNET_RECORD_MAX, CL_ELIMIT,
              "vnet record of %zu bytes cannot be framed", rec_len);
    for (int i = 0; i < 4; i++)
        out[i] = (uint8_t)(rec_len >> (8 * i));
    return 0;
}

int cl_tap_vnet_decode(const uint8_t *data, size_t len, size_t max_plain, cl_slice *record, cl_tap_vnet_hdr *hdr,
                       size_t *consumed, bool *complete)
{
    *complete = false;
    *consumed = 0;
    record->data = NULL;
    record->len = 0;
    cl_cursor c = cl_cursor_make(data, len);
    if (cl_cursor_remaining(&c) < CL_TAP_VNET_LEN_BYTES)
        return 0;
    uint16_t lo, hi;
    CL_TRY(le16(&c, &lo));
    CL_TRY(le16(&c, &hi));
    size_t n = (size_t)lo | (size_t)hi << 16;
    CL_ENSURE(n >= CL_TAP_VNET_HDR + CL_TAP_ETH_HEADER, CL_EPARSE, "vnet record length %zu is shorter than a header "
              "and an Ethernet header", n);
    CL_ENSURE(n <= CL_TAP_VNET_RECORD_MAX, CL_ELIMIT, "vnet record length %zu exceeds %d", n, CL_TAP_VNET_RECORD_MAX);
    if (cl_cursor_remaining(&c) < CL_TAP_VNET_HDR)
        return 0;
    const uint8_t *p;
    CL_TRY(cl_cursor_bytes(&c, CL_TAP_VNET_HDR, &p));
    cl_tap_vnet_hdr_read(p, hdr);
    size_t frame_len = n - CL_TAP_VNET_HDR;
    /* the fields now: a bad header closes the stream before 64 KiB are awaited */
    CL_TRY(cl_tap_vnet_check(hdr, NULL, frame_len, max_plain));
    if (cl_cursor_remaining(&c) < frame_len)
        return 0;
    const uint8_t *f;
    CL_TRY(cl_cursor_bytes(&c, frame_len, &f));
    CL_TRY(cl_tap_vnet_check(hdr, f, frame_len, max_plain));
    record->data = p;
    record->len = n;
    *consumed = c.pos;
    *complete = true;
    return 0;
}

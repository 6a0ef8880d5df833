#include "cloister/core/tap_frames.h"

#include "cloister/core/cursor.h"
#include "cloister/core/http.h"

#include <string.h>

size_t cl_tap_max_frame(unsigned mtu)
{
    size_t n = (size_t)mtu + CL_TAP_ETH_HEADER + 4;
    return n > CL_TAP_FRAME_LIMIT ? CL_TAP_FRAME_LIMIT : n;
}

int cl_tap_connect_request(cl_buf *out)
{
    /* What gvforwarder's Go client writes, less its User-Agent; Go's server
     * (gvproxy) needs a Host field in an HTTP/1.1 request but ignores its
     * value.  One write, so that the request never shares a read with a
     * frame it might not expect yet. */
    static const char req[] = "POST " CL_TAP_CONNECT_PATH " HTTP/1.1\r\n"
                              "Host: gateway\r\n"
                              "Content-Length: 0\r\n"
                              "\r\n";
    return cl_buf_append(out, req, sizeof req - 1);
}

int cl_tap_parse_connect(const uint8_t *data, size_t len, size_t *consumed, bool *complete)
{
    *consumed = 0;
    *complete = false;
    cl_http_head head;
    bool done = false;
    int rc = cl_http_parse_request(data, len, CL_TAP_CONNECT_MAX, &head, &done);
    if (rc < 0)
        return cl_error_prefix(rc, "tap /connect request: ");
    if (!done)
        return 0;
    CL_ENSURE(cl_slice_eq(head.method, "POST"), CL_EPROTO, "tap /connect request: method %.*s, expected POST",
              (int)(head.method.len > 16 ? 16 : head.method.len), (const char *)head.method.data);
    CL_ENSURE(cl_slice_eq(head.path, CL_TAP_CONNECT_PATH), CL_EPROTO,
              "tap /connect request: path is not " CL_TAP_CONNECT_PATH);
    /* The frames follow the head directly: a body would be read as frames
     * by one side and skipped by the other. */
    CL_ENSURE(head.body == CL_HTTP_BODY_NONE || (head.body == CL_HTTP_BODY_LENGTH && head.content_length == 0),
              CL_EPROTO, "tap /connect request: has a body, but frames must follow the head directly");
    *consumed = head.head_len;
    *complete = true;
    return 0;
}

int cl_tap_check_not_http_reply(const uint8_t *data, size_t len)
{
    static const char http[] = "HTTP/";
    size_t n = len < sizeof http - 1 ? len : sizeof http - 1;
    if (n == sizeof http - 1 && memcmp(data, http, n) == 0)
        return cl_error_set(CL_EPROTO, "the parent answered POST /connect with an HTTP response: it is not a "
                                       "gvproxy-compatible /connect endpoint");
    return 0;
}

int cl_tap_encode_len(size_t frame_len, uint8_t out[static CL_TAP_LEN_BYTES])
{
    CL_ENSURE(frame_len >= CL_TAP_ETH_HEADER && frame_len <= CL_TAP_FRAME_LIMIT, CL_ELIMIT,
              "tap frame of %zu bytes cannot be framed (%d..%d)", frame_len, CL_TAP_ETH_HEADER, CL_TAP_FRAME_LIMIT);
    out[0] = (uint8_t)(frame_len & 0xff);
    out[1] = (uint8_t)(frame_len >> 8);
    return 0;
}

int cl_tap_encode(cl_buf *out, const uint8_t *frame, size_t frame_len)
{
    uint8_t len[CL_TAP_LEN_BYTES];
    CL_TRY(cl_tap_encode_len(frame_len, len));
    CL_TRY(cl_buf_reserve(out, sizeof len + frame_len));
    CL_TRY(cl_buf_append(out, len, sizeof len));
    return cl_buf_append(out, frame, frame_len);
}

int cl_tap_decode(const uint8_t *data, size_t len, size_t max_frame, cl_slice *frame, size_t *consumed,
                  bool *complete)
{
    *complete = false;
    *consumed = 0;
    frame->data = NULL;
    frame->len = 0;
    cl_cursor c = cl_cursor_make(data, len);
    if (cl_cursor_remaining(&c) < CL_TAP_LEN_BYTES)
        return 0;
    uint8_t lo, hi;
    CL_TRY(cl_cursor_u8(&c, &lo));
    CL_TRY(cl_cursor_u8(&c, &hi));
    size_t n = (size_t)lo | (size_t)hi << 8;
    /* Judged before waiting for the body: a garbage length must close the
     * stream now, not after the peer has been allowed to send 64 KiB. */
    CL_ENSURE(n >= CL_TAP_ETH_HEADER, CL_EPARSE, "tap frame length %zu is shorter than an Ethernet header", n);
    CL_ENSURE(n <= max_frame, CL_ELIMIT, "tap frame length %zu exceeds this link's maximum of %zu", n, max_frame);
    if (cl_cursor_remaining(&c) < n)
        return 0;
    const uint8_t *p;
    CL_TRY(cl_cursor_bytes(&c, n, &p));
    frame->data = p;
    frame->len = n;
    *consumed = c.pos;
    *complete = true;
    return 0;
}

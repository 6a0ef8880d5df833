#include "cloister/core/tap_frames.h"
#include "test.h"

/* What gvforwarder and nitriding write (Go's http.Request.Write of
 * NewRequest("POST", "/connect", nil)): an empty Host and a User-Agent. */
static const char go_request[] = "POST /connect HTTP/1.1\r\nHost: \r\nUser-Agent: Go-http-client/1.1\r\n"
                                 "Content-Length: 0\r\n\r\n";

static void request_is_what_gvproxy_expects(void)
{
    cl_buf b = CL_BUF_INIT;
    CHECK_OK(cl_tap_connect_request(&b));
    const char want[] = "POST /connect HTTP/1.1\r\nHost: gateway\r\nContent-Length: 0\r\n\r\n";
    CHECK(b.len == sizeof want - 1 && memcmp(b.data, want, b.len) == 0);
    size_t consumed;
    bool complete;
    CHECK_OK(cl_tap_parse_connect(b.data, b.len, &consumed, &complete));
    CHECK(complete && consumed == b.len);
    cl_buf_free(&b);
}

static void parses_go_clients_request_and_keeps_following_frames(void)
{
    uint8_t buf[256];
    size_t n = sizeof go_request - 1;
    memcpy(buf, go_request, n);
    /* a frame written right behind the request, in the same segment */
    buf[n] = 14;
    buf[n + 1] = 0;
    memset(buf + n + 2, 0xab, 14);
    size_t consumed;
    bool complete;
    CHECK_OK(cl_tap_parse_connect(buf, n + 16, &consumed, &complete));
    CHECK(complete && consumed == n);
    cl_slice f;
    CHECK_OK(cl_tap_decode(buf + consumed, 16, 1514, &f, &consumed, &complete));
    CHECK(complete && consumed == 16 && f.len == 14 && f.data[0] == 0xab);
    /* every prefix is incomplete, not an error */
    for (size_t i = 0; i < n; i++) {
        CHECK_OK(cl_tap_parse_connect(buf, i, &consumed, &complete));
        CHECK(!complete && consumed == 0);
    }
}

static void refuses_other_requests(void)
{
    size_t consumed;
    bool complete;
    const char *get = "GET /connect HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK_ERR(cl_tap_parse_connect((const uint8_t *)get, strlen(get), &consumed, &complete), CL_EPROTO, "GET");
    const char *path = "POST /services/forwarder/expose HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK_ERR(cl_tap_parse_connect((const uint8_t *)path, strlen(path), &consumed, &complete), CL_EPROTO,
              "path");
    const char *body = "POST /connect HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc";
    CHECK_ERR(cl_tap_parse_connect((const uint8_t *)body, strlen(body), &consumed, &complete), CL_EPROTO, "body");
    const char *chunked = "POST /connect HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    CHECK_ERR(cl_tap_parse_connect((const uint8_t *)chunked, strlen(chunked), &consumed, &complete), CL_EPROTO,
              "body");
    static const char garbage[] = "\x0e\x00\x01\x02 frames without a request\r\n\r\n";
    CHECK(cl_tap_parse_connect((const uint8_t *)garbage, sizeof garbage - 1, &consumed, &complete) < 0);
    /* a head that never ends is bounded */
    static uint8_t big[CL_TAP_CONNECT_MAX + 64];
    memcpy(big, "POST /connect HTTP/1.1\r\nX: ", 27);
    memset(big + 27, 'a', sizeof big - 27);
    CHECK_ERR(cl_tap_parse_connect(big, sizeof big, &consumed, &complete), CL_ELIMIT, NULL);
}

static void spots_an_http_reply(void)
{
    const char *reply = "HTTP/1.1 404 Not Found\r\n";
    CHECK_ERR(cl_tap_check_not_http_reply((const uint8_t *)reply, strlen(reply)), CL_EPROTO, "HTTP response");
    CHECK_OK(cl_tap_check_not_http_reply((const uint8_t *)"HTTP", 4)); /* not certain yet */
    const uint8_t frame[] = {0x2a, 0x00, 0xff, 0xff};
    CHECK_OK(cl_tap_check_not_http_reply(frame, sizeof frame));
}

static void encodes_little_endian(void)
{
    uint8_t f[0x1234];
    memset(f, 7, sizeof f);
    cl_buf b = CL_BUF_INIT;
    CHECK_OK(cl_tap_encode(&b, f, sizeof f));
    CHECK(b.len == sizeof f + 2 && b.data[0] == 0x34 && b.data[1] == 0x12);
    uint8_t len[2];
    CHECK_OK(cl_tap_encode_len(CL_TAP_FRAME_LIMIT, len));
    CHECK(len[0] == 0xff && len[1] == 0xff);
    CHECK_ERR(cl_tap_encode_len(CL_TAP_FRAME_LIMIT + 1, len), CL_ELIMIT, "cannot be framed");
    CHECK_ERR(cl_tap_encode_len(13, len), CL_ELIMIT, NULL);
    CHECK_ERR(cl_tap_encode(&b, f, 0), CL_ELIMIT, NULL);
    cl_buf_free(&b);
}

static void decodes_a_stream_in_pieces(void)
{
    cl_buf s = CL_BUF_INIT;
    uint8_t a[60], c[1514];
    memset(a, 1, sizeof a);
    memset(c, 2, sizeof c);
    CHECK_OK(cl_tap_encode(&s, a, sizeof a));
    CHECK_OK(cl_tap_encode(&s, c, sizeof c));
    size_t max = cl_tap_max_frame(1500);
    CHECK(max == 1518);
    cl_slice f;
    size_t consumed;
    bool complete;
    for (size_t i = 0; i < 62; i++) {
        CHECK_OK(cl_tap_decode(s.data, i, max, &f, &consumed, &complete));
        CHECK(!complete && consumed == 0);
    }
    CHECK_OK(cl_tap_decode(s.data, s.len, max, &f, &consumed, &complete));
    CHECK(complete && consumed == 62 && f.len == 60 && f.data == s.data + 2);
    size_t off = consumed;
    CHECK_OK(cl_tap_decode(s.data + off, s.len - off - 1, max, &f, &consumed, &complete));
    CHECK(!complete);
    CHECK_OK(cl_tap_decode(s.data + off, s.len - off, max, &f, &consumed, &complete));
    CHECK(complete && f.len == 1514 && off + consumed == s.len);
    /* the same frame is too big for a smaller link */
    CHECK_ERR(cl_tap_decode(s.data + off, 2, 1000, &f, &consumed, &complete), CL_ELIMIT, "1514");
    cl_buf_free(&s);
}

static void refuses_bad_lengths_before_the_body(void)
{
    cl_slice f;
    size_t consumed;
    bool complete;
    const uint8_t zero[] = {0, 0};
    CHECK_ERR(cl_tap_decode(zero, 2, 1518, &f, &consumed, &complete), CL_EPARSE, "shorter");
    const uint8_t shrt[] = {13, 0};
    CHECK_ERR(cl_tap_decode(shrt, 2, 1518, &f, &consumed, &complete), CL_EPARSE, "shorter");
    const uint8_t huge[] = {0xff, 0xff};
    CHECK_ERR(cl_tap_decode(huge, 2, 1518, &f, &consumed, &complete), CL_ELIMIT, "65535");
    /* "HT" of an HTTP reply read as a length */
    CHECK_ERR(cl_tap_decode((const uint8_t *)"HTTP/1.1", 8, 1518, &f, &consumed, &complete), CL_ELIMIT, "21576");
    const uint8_t just[] = {0xef, 0x05}; /* 1519 */
    CHECK_ERR(cl_tap_decode(just, 2, 1518, &f, &consumed, &complete), CL_ELIMIT, NULL);
    CHECK(cl_tap_max_frame(65535) == CL_TAP_FRAME_LIMIT);
}

int main(void)
{
    RUN(request_is_what_gvproxy_expects);
    RUN(parses_go_clients_request_and_keeps_following_frames);
    RUN(refuses_other_requests);
    RUN(spots_an_http_reply);
    RUN(encodes_little_endian);
    RUN(decodes_a_stream_in_pieces);
    RUN(refuses_bad_lengths_before_the_body);
    return test_summary();
}

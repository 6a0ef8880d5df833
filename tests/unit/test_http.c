/* HTTP/1.1 heads (requests and responses), chunked decoding, query
 * parameters and hop-by-hop fields (lib/core/http1.c). */
#include "cloister/core/http.h"
#include "test.h"

#include <stdint.h>

#define MAX_HEAD 8192

static int parse_req(const char *text, cl_http_head *h, bool *complete)
{
    return cl_http_parse_request((const uint8_t *)text, strlen(text), MAX_HEAD, h, complete);
}

/* Parses a complete request head that must be accepted. */
static bool req_ok(const char *text, cl_http_head *h)
{
    bool complete = false;
    cl_error_clear();
    int rc = parse_req(text, h, &complete);
    if (rc != CL_OK || !complete) {
        fprintf(stderr, "request rejected or incomplete: %s: %s\n%s\n", cl_error_name(rc), cl_error_message(),
                text);
        return false;
    }
    return true;
}

/* The code a complete request head is rejected with (0 if accepted). */
static int req_rc(const char *text)
{
    static cl_http_head h;
    bool complete = false;
    cl_error_clear();
    int rc = parse_req(text, &h, &complete);
    if (rc == CL_OK && !complete) {
        fprintf(stderr, "head unexpectedly incomplete:\n%s\n", text);
        return 1;
    }
    return rc;
}

static int parse_resp(const char *text, const char *method, cl_http_head *h, bool *complete)
{
    cl_slice m = {(const uint8_t *)method, strlen(method)};
    return cl_http_parse_response((const uint8_t *)text, strlen(text), MAX_HEAD, m, h, complete);
}

static bool resp_ok(const char *text, const char *method, cl_http_head *h)
{
    bool complete = false;
    cl_error_clear();
    int rc = parse_resp(text, method, h, &complete);
    if (rc != CL_OK || !complete) {
        fprintf(stderr, "response rejected or incomplete: %s: %s\n%s\n", cl_error_name(rc), cl_error_message(),
                text);
        return false;
    }
    return true;
}

static int resp_rc(const char *text)
{
    static cl_http_head h;
    bool complete = false;
    cl_error_clear();
    int rc = parse_resp(text, "GET", &h, &complete);
    if (rc == CL_OK && !complete) {
        fprintf(stderr, "head unexpectedly incomplete:\n%s\n", text);
        return 1;
    }
    return rc;
}

static bool slice_is(cl_slice s, const char *text)
{
    return cl_slice_eq(s, text);
}

static bool slice_within(cl_slice s, const char *buf)
{
    size_t n = strlen(buf);
    return s.data >= (const uint8_t *)buf && s.data + s.len <= (const uint8_t *)buf + n;
}

/* ---- request heads ---- */

static void simple_get(void)
{
    static cl_http_head h;
    const char *req = "GET /index.html?a=1&b=two HTTP/1.1\r\n"
                      "Host: example.com\r\n"
                      "User-Agent:  test/1.0 \t\r\n"
                      "Accept:*/*\r\n"
                      "X-Empty:\r\n"
                      "\r\n";
    CHECK(req_ok(req, &h));
    CHECK(slice_is(h.method, "GET"));
    CHECK(slice_is(h.target, "/index.html?a=1&b=two"));
    CHECK(slice_is(h.path, "/index.html"));
    CHECK(slice_is(h.query, "a=1&b=two"));
    CHECK(h.version_minor == 1);
    CHECK(h.header_count == 4);
    CHECK(slice_is(h.headers[0].name, "Host") && slice_is(h.headers[0].value, "example.com"));
    CHECK(slice_is(h.headers[1].name, "User-Agent") && slice_is(h.headers[1].value, "test/1.0"));
    CHECK(slice_is(h.headers[2].name, "Accept") && slice_is(h.headers[2].value, "*/*"));
    CHECK(slice_is(h.headers[3].name, "X-Empty") && h.headers[3].value.len == 0);
    /* slices point into the caller's buffer: nothing is copied */
    CHECK(h.method.data == (const uint8_t *)req);
    for (size_t i = 0; i < h.header_count; i++)
        CHECK(slice_within(h.headers[i].name, req) && slice_within(h.headers[i].value, req));
    CHECK(slice_within(h.target, req) && slice_within(h.path, req) && slice_within(h.query, req));
    CHECK(slice_is(h.host, "example.com") && slice_within(h.host, req));
    CHECK(h.head_len == strlen(req));
    CHECK(h.body == CL_HTTP_BODY_NONE);
    CHECK(h.content_length == 0);
    CHECK(h.keep_alive);
    CHECK(!h.expect_continue && !h.upgrade);

    const cl_slice *v = cl_http_header_get(&h, "user-agent");
    CHECK(v && slice_is(*v, "test/1.0"));
    v = cl_http_header_get(&h, "HOST");
    CHECK(v && slice_is(*v, "example.com"));
    CHECK(cl_http_header_get(&h, "cookie") == NULL);
    CHECK(cl_http_header_get(&h, "Hos") == NULL);
}

static void targets_and_methods(void)
{
    static cl_http_head h;
    CHECK(req_ok("GET / HTTP/1.1\r\nHost: a\r\n\r\n", &h));
    CHECK(slice_is(h.path, "/") && h.query.len == 0 && h.query.data == NULL);
    CHECK(req_ok("GET /p? HTTP/1.1\r\nHost: a\r\n\r\n", &h));
    CHECK(slice_is(h.path, "/p") && h.query.len == 0 && h.query.data != NULL);
    CHECK(req_ok("GET /?a?b=c HTTP/1.1\r\nHost: a\r\n\r\n", &h));
    CHECK(slice_is(h.path, "/") && slice_is(h.query, "a?b=c"));
    CHECK(req_ok("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", &h));
    CHECK(slice_is(h.method, "OPTIONS") && slice_is(h.target, "*"));
    CHECK(req_ok("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", &h));
    CHECK(slice_is(h.target, "example.com:443"));
    CHECK(req_ok("GET http://example.com/x?y HTTP/1.1\r\nHost: example.com\r\n\r\n", &h));
    CHECK(slice_is(h.path, "http://example.com/x") && slice_is(h.query, "y"));
    /* any token is a method; methods are case-sensitive and kept as sent */
    CHECK(req_ok("M-SEARCH * HTTP/1.1\r\nHost: a\r\n\r\n", &h));
    CHECK(slice_is(h.method, "M-SEARCH"));
    CHECK(req_ok("get / HTTP/1.1\r\nHost: a\r\n\r\n", &h));
    CHECK(slice_is(h.method, "get"));
    /* every visible ASCII character may appear in a target */
    CHECK(req_ok("GET /!$&'()*+,;=:@-._~%20[]{}|\\^`\"<> HTTP/1.1\r\nHost: a\r\n\r\n", &h));
}

static void invalid_request_lines(void)
{
    /* method */
    CHECK(req_rc(" / HTTP/1.1\r\nHost: a\r\n\r\n") == CL_EPARSE);
    CHECK(req_rc("G(T / HTTP/1.1\r\nHost: a\r\n\r\n") == CL_EPARSE);
    CHECK(req_rc("GE\"T / HTTP/1.1\r\nHost: a\r\n\r\n") == CL_EPARSE);
    CHECK(req_rc("G\tT / HTTP/1.1\r\nHost: a\r\n\r\n") == CL_EPARSE);
    CHECK(req_rc("G\x80T / HTTP/1.1\r\nHost: a\r\n\r\n") == CL_EPARSE);
    CHECK(req_rc("\tGET / HTTP/1.1\r\nHost: a\r\n\r\n") == CL_EPARSE);
    /* structure */
    CHECK(req_rc("GET\r\nHost: a\r\n\r\n") == CL_EPARSE);
    CHECK(req_rc("GET /\r\nHost: a\r\n\r\n") == CL_EPARSE);
    CHECK(req_rc("GET  / HTTP/1.1\r\nHost: a\r\n\r\n") == CL_EPARSE);
    CHECK(req_rc("GET  HTTP/1.1\r\nHost: a\r\n\r\n") == CL_EPARSE);
    CHECK(req_rc("GET / HTTP/1.1 \r\nHost: a\r\n\r\n") == CL_EPARSE);
    CHECK(req_rc("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n") == CL_EPARSE);
    CHECK(req_rc("GET\t/\tHTTP/1.1\r\nHost: a\r\n\r\n") == CL_EPARSE);
    /* target characters */
    CHECK(req_rc("GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n") == CL_EPARSE);
    CHECK(req_rc("GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n") == CL_EPARSE);
    CHECK(req_rc("GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n") == CL_EPARSE);
    CHECK(req_rc("GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n") == CL_EPARSE);
    static const uint8_t nul_target[] = "GET /a\0b HTTP/1.1\r\nHost: a\r\n\r\n";
    static cl_http_head h;
    bool complete;
    CHECK_ERR(cl_http_parse_request(nul_target, sizeof nul_target - 1, MAX_HEAD, &h, &complete), CL_EPARSE,
              "request target");
    /* version */
    CHECK(req_rc("GET / HTTP/1.2\r\nHost: a\r\n\r\n") == CL_EPARSE);
    CHECK(req_rc("GET / HTTP/2.0\r\nHost: a\r\n\r\n") == CL_EPARSE);
    CHECK(req_rc("GET / HTTP/0.9\r\nHost: a\r\n\r\n") == CL_EPARSE);
    CHECK(req_rc("GET / http/1.1\r\nHost: a\r\n\r\n") == CL_EPARSE);
    CHECK(req_rc("GET / HTTP/1.10\r\nHost: a\r\n\r\n") == CL_EPARSE);
    CHECK(req_rc("GET / HTTP/1.\r\nHost: a\r\n\r\n") == CL_EPARSE);
    CHECK(req_rc("GET / HTTP/11\r\nHost: a\r\n\r\n") == CL_EPARSE);
    CHECK(req_rc("GET / HTTP/1.1\r\n\r\n\r\n") == CL_EPARSE); /* no Host */
    CHECK_ERR(parse_req("GET / HTTP/1.3\r\nHost: a\r\n\r\n", &h, &complete), CL_EPARSE, "version");
}

static void leading_empty_lines(void)
{
    static cl_http_head h;
    const char *req = "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nnext";
    CHECK(req_ok(req, &h));
    CHECK(slice_is(h.method, "GET"));
    CHECK(h.head_len == strlen(req) - 4); /* the skipped lines are part of what to consume */
    /* a few are tolerated, not an unbounded run */
    CHECK(req_rc("\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n") == CL_EPARSE);
    /* a response may not start with one */
    CHECK(resp_rc("\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") == CL_EPARSE);
}

static void head_len_and_pipelining(void)
{
    static cl_http_head h;
    const char *two = "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
                      "GET /next HTTP/1.1\r\nHost: a\r\n\r\n";
    CHECK(req_ok(two, &h));
    CHECK(h.body == CL_HTTP_BODY_LENGTH && h.content_length == 5);
    CHECK(!memcmp(two + h.head_len, "hello", 5));
    const char *second = two + h.head_len + 5;
    CHECK(req_ok(second, &h));
    CHECK(slice_is(h.path, "/next"));
    CHECK(h.head_len == strlen(second));
    /* a zero length is no body at all */
    CHECK(req_ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", &h));
    CHECK(h.body == CL_HTTP_BODY_NONE && h.content_length == 0);
    CHECK(req_ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n", &h));
    CHECK(h.body == CL_HTTP_BODY_LENGTH && h.content_length == 7);
    CHECK(req_ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 999999999999999999\r\n\r\n", &h));
    CHECK(h.content_length == 999999999999999999ull);
}

static void incomplete_heads(void)
{
    const char *reqs[] = {
        "GET /x?y=1 HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nabc",
        "\r\nPOST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    };
    for (size_t r = 0; r < sizeof reqs / sizeof reqs[0]; r++) {
        const char *req = reqs[r];
        static cl_http_head full;
        CHECK(req_ok(req, &full));
        size_t head_len = full.head_len;
        for (size_t n = 0; n < head_len; n++) {
            static cl_http_head h;
            memset(&h, 0xa5, sizeof h);
            bool complete = true;
            int rc = cl_http_parse_request((const uint8_t *)req, n, MAX_HEAD, &h, &complete);
            if (rc != CL_OK || complete) {
                fprintf(stderr, "prefix of %zu bytes: rc %d complete %d\n", n, rc, complete);
                CHECK(0);
                break;
            }
            CHECK(h.header_count == (size_t)0xa5a5a5a5a5a5a5a5ull); /* nothing filled */
        }
        for (size_t n = head_len; n <= strlen(req); n++) {
            static cl_http_head h;
            bool complete = false;
            CHECK_OK(cl_http_parse_request((const uint8_t *)req, n, MAX_HEAD, &h, &complete));
            CHECK(complete && h.head_len == head_len);
        }
    }
    const char *resp = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    for (size_t n = 0; n < strlen(resp) - 2; n++) {
        static cl_http_head h;
        bool complete = true;
        CHECK_OK(cl_http_parse_response((const uint8_t *)resp, n, MAX_HEAD, (cl_slice){(const uint8_t *)"GET", 3},
                                        &h, &complete));
        CHECK(!complete);
    }
}

static void head_size_limit(void)
{
    static cl_http_head h;
    bool complete;
    const char *req = "GET / HTTP/1.1\r\nHost: a\r\nX-Pad: 0123456789\r\n\r\nBODY";
    size_t head_len = strlen(req) - 4;
    const uint8_t *p = (const uint8_t *)req;
    /* exactly max_head bytes of head is fine, with or without more data after it */
    CHECK_OK(cl_http_parse_request(p, head_len, head_len, &h, &complete));
    CHECK(complete && h.head_len == head_len);
    CHECK_OK(cl_http_parse_request(p, strlen(req), head_len, &h, &complete));
    CHECK(complete && h.head_len == head_len);
    /* one byte more than allowed */
    CHECK_ERR(cl_http_parse_request(p, head_len, head_len - 1, &h, &complete), CL_ELIMIT, "head larger");
    CHECK(!complete);
    CHECK_ERR(cl_http_parse_request(p, strlen(req), head_len - 1, &h, &complete), CL_ELIMIT, NULL);
    /* an incomplete head under the limit waits; at the limit it cannot grow */
    CHECK_OK(cl_http_parse_request(p, 20, 100, &h, &complete));
    CHECK(!complete);
    CHECK_ERR(cl_http_parse_request(p, 20, 20, &h, &complete), CL_ELIMIT, NULL);
    CHECK_ERR(cl_http_parse_request(p, 20, 10, &h, &complete), CL_ELIMIT, NULL);
    /* a large buffer without an end of head */
    static uint8_t big[MAX_HEAD + 100];
    memset(big, 'a', sizeof big);
    memcpy(big, "GET / HTTP/1.1\r\nX: ", 19);
    CHECK_ERR(cl_http_parse_request(big, sizeof big, MAX_HEAD, &h, &complete), CL_ELIMIT, NULL);
    CHECK_ERR(cl_http_parse_response(big, sizeof big, MAX_HEAD, (cl_slice){(const uint8_t *)"GET", 3}, &h,
                                     &complete),
              CL_ELIMIT, NULL);
    /* the end of head past max_head does not count even when it is in buf */
    memcpy(big + MAX_HEAD + 10, "\r\n\r\n", 4);
    CHECK_ERR(cl_http_parse_request(big, sizeof big, MAX_HEAD, &h, &complete), CL_ELIMIT, NULL);

    /* the number of header fields is limited too */
    static char many[MAX_HEAD];
    for (int count = CL_HTTP_MAX_HEADERS - 1; count <= CL_HTTP_MAX_HEADERS; count++) {
        size_t n = (size_t)snprintf(many, sizeof many, "GET / HTTP/1.1\r\nHost: a\r\n");
        for (int i = 0; i < count; i++)
            n += (size_t)snprintf(many + n, sizeof many - n, "X-%d: %d\r\n", i, i);
        snprintf(many + n, sizeof many - n, "\r\n");
        if (count + 1 <= CL_HTTP_MAX_HEADERS) {
            CHECK(req_ok(many, &h));
            CHECK(h.header_count == (size_t)count + 1);
        } else {
            CHECK_ERR(parse_req(many, &h, &complete), CL_ELIMIT, "header fields");
        }
    }
}

static void keep_alive_rules(void)
{
    static cl_http_head h;
    struct {
        const char *req;
        bool keep_alive;
    } cases[] = {
        {"GET / HTTP/1.1\r\nHost: a\r\n\r\n", true},
        {"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", false},
        {"GET / HTTP/1.1\r\nHost: a\r\nConnection: CLOSE\r\n\r\n", false},
        {"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n", true},
        {"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n", false},
        {"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-foo,  Close ,y\r\n\r\n", false},
        {"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-foo\r\nConnection: close\r\n\r\n", false},
        {"GET / HTTP/1.1\r\nHost: a\r\nConnection: closed\r\n\r\n", true},
        {"GET / HTTP/1.1\r\nHost: a\r\nConnection: \"close\"\r\n\r\n", true},
        {"GET / HTTP/1.1\r\nHost: a\r\nConnection: ,,\r\n\r\n", true},
        {"GET / HTTP/1.0\r\n\r\n", false},
        {"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true},
        {"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true},
        {"GET / HTTP/1.0\r\nConnection: te,\tkeep-alive\r\n\r\n", true},
        {"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", false},
        {"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n", false},
        {"GET / HTTP/1.0\r\nConnection: keep-alivex\r\n\r\n", false},
        {"GET / HTTP/1.0\r\nKeep-Alive: timeout=5\r\n\r\n", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CHECK(req_ok(cases[i].req, &h));
        if (h.keep_alive != cases[i].keep_alive) {
            fprintf(stderr, "case %zu: keep_alive %d, expected %d\n", i, h.keep_alive, cases[i].keep_alive);
            CHECK(0);
        }
    }
    CHECK(req_ok("GET / HTTP/1.0\r\n\r\n", &h));
    CHECK(h.version_minor == 0 && h.host.len == 0);
}

static void expect_continue(void)
{
    static cl_http_head h;
    CHECK(req_ok("PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n", &h));
    CHECK(h.expect_continue);
    CHECK(req_ok("PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-Continue\r\n\r\n", &h));
    CHECK(h.expect_continue);
    CHECK(req_ok("PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 200-ok\r\n\r\n", &h));
    CHECK(!h.expect_continue);
    CHECK(req_ok("PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n", &h));
    CHECK(!h.expect_continue);
    /* RFC 9110 10.1.1: an HTTP/1.0 request's 100-continue is ignored */
    CHECK(req_ok("PUT / HTTP/1.0\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n", &h));
    CHECK(!h.expect_continue);
}

static void upgrade(void)
{
    static cl_http_head h;
    CHECK(req_ok("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", &h));
    CHECK(h.upgrade && h.keep_alive);
    CHECK(req_ok("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, upgrade\r\nUpgrade: websocket\r\n\r\n",
                 &h));
    CHECK(h.upgrade);
    CHECK(req_ok("GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nHost: a\r\nConnection: x, UPGRADE\r\n\r\n", &h));
    CHECK(h.upgrade);
    CHECK(req_ok("GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n", &h));
    CHECK(!h.upgrade);
    CHECK(req_ok("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n", &h));
    CHECK(!h.upgrade);
    CHECK(req_ok("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgraded\r\nUpgrade: websocket\r\n\r\n", &h));
    CHECK(!h.upgrade);
    /* RFC 9110 7.8: Upgrade in an HTTP/1.0 request is ignored */
    CHECK(req_ok("GET /ws HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n", &h));
    CHECK(!h.upgrade);
}

static void host_rules(void)
{
    static cl_http_head h;
    bool complete;
    /* RFC 9112 3.2: a 1.1 request without Host, with two, or with an
     * invalid one gets a 400 */
    CHECK_ERR(parse_req("GET / HTTP/1.1\r\n\r\n", &h, &complete), CL_EPARSE, "without Host");
    CHECK_ERR(parse_req("GET / HTTP/1.1\r\nX-Host: a\r\n\r\n", &h, &complete), CL_EPARSE, "without Host");
    CHECK_ERR(parse_req("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", &h, &complete), CL_EPARSE,
              "more than one Host");
    CHECK_ERR(parse_req("GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n", &h, &complete), CL_EPARSE,
              "more than one Host");
    CHECK(req_rc("GET / HTTP/1.1\r\nHost: a b\r\n\r\n") == CL_EPARSE);
    CHECK(req_rc("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n") == CL_EPARSE);
    CHECK(req_rc("GET / HTTP/1.1\r\nHost: user@a\r\n\r\n") == CL_EPARSE);
    CHECK(req_rc("GET / HTTP/1.1\r\nHost: a\"b\r\n\r\n") == CL_EPARSE);
    CHECK(req_rc("GET / HTTP/1.1\r\nHost: a\\b\r\n\r\n") == CL_EPARSE);
    CHECK(req_rc("GET / HTTP/1.1\r\nHost: \xc3\xa9.example\r\n\r\n") == CL_EPARSE);
    CHECK(req_rc("GET / HTTP/1.1\r\nHost: a?b\r\n\r\n") == CL_EPARSE);
    CHECK(req_rc("GET / HTTP/1.1\r\nHost: a#b\r\n\r\n") == CL_EPARSE);
    /* valid forms, including an empty Host (a URI without authority) */
    CHECK(req_ok("GET / HTTP/1.1\r\nhost: Example.COM:8443\r\n\r\n", &h));
    CHECK(slice_is(h.host, "Example.COM:8443"));
    CHECK(req_ok("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", &h));
    CHECK(slice_is(h.host, "[::1]:8080"));
    CHECK(req_ok("GET / HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n", &h));
    CHECK(req_ok("GET / HTTP/1.1\r\nHost: xn--bcher-kva.example_1~%41!$&'()*+,;=\r\n\r\n", &h));
    CHECK(req_ok("GET / HTTP/1.1\r\nHost:\r\n\r\n", &h));
    CHECK(h.host.len == 0);
    CHECK(req_ok("GET / HTTP/1.0\r\n\r\n", &h));
}

static void line_ending_smuggling(void)
{
    static cl_http_head h;
    bool complete;
    CHECK_ERR(parse_req("GET / HTTP/1.1\nHost: a\r\n\r\n", &h, &complete), CL_EPARSE, "bare LF");
    CHECK_ERR(parse_req("GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", &h, &complete), CL_EPARSE, "bare LF");
    CHECK_ERR(parse_req("GET / HTTP/1.1\r\nHost: a\r\nX: y\n\r\n\r\n", &h, &complete), CL_EPARSE, "bare LF");
    CHECK_ERR(parse_req("GET / HTTP/1.1\r\nHost: a\r\n\n\r\n\r\n", &h, &complete), CL_EPARSE, "bare LF");
    CHECK_ERR(parse_req("GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", &h, &complete), CL_EPARSE, "stray CR");
    CHECK_ERR(parse_req("GET / HTTP/1.1\rHost: a\r\n\r\n", &h, &complete), CL_EPARSE, "stray CR");
    CHECK_ERR(parse_req("GET / HTTP/1.1\r\nHost: a\r\nX: y\r\r\n\r\n", &h, &complete), CL_EPARSE, "stray CR");
    /* heads ended by bare LFs only never complete: they hit the size limit */
    const char *lf_only = "GET / HTTP/1.1\nHost: a\n\n";
    CHECK_OK(cl_http_parse_request((const uint8_t *)lf_only, strlen(lf_only), 100, &h, &complete));
    CHECK(!complete);
    CHECK_ERR(cl_http_parse_request((const uint8_t *)lf_only, strlen(lf_only), strlen(lf_only), &h, &complete),
              CL_ELIMIT, NULL);
    /* obsolete line folding */
    CHECK_ERR(parse_req("GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n z\r\n\r\n", &h, &complete), CL_EPARSE, "folding");
    CHECK_ERR(parse_req("GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n\tz\r\n\r\n", &h, &complete), CL_EPARSE, "folding");
    CHECK_ERR(parse_req("GET / HTTP/1.1\r\n Host: a\r\n\r\n", &h, &complete), CL_EPARSE, "folding");
    CHECK_ERR(parse_req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n 0\r\n\r\n", &h, &complete),
              CL_EPARSE, "folding");
}

static void field_syntax(void)
{
    static cl_http_head h;
    bool complete;
    CHECK_ERR(parse_req("GET / HTTP/1.1\r\nHost : a\r\n\r\n", &h, &complete), CL_EPARSE, "header name");
    CHECK_ERR(parse_req("GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", &h, &complete), CL_EPARSE, "header name");
    CHECK_ERR(parse_req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", &h, &complete),
              CL_EPARSE, "header name");
    CHECK_ERR(parse_req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n", &h, &complete), CL_EPARSE,
              "header name");
    CHECK_ERR(parse_req("GET / HTTP/1.1\r\nHost: a\r\n: empty\r\n\r\n", &h, &complete), CL_EPARSE, "header name");
    CHECK_ERR(parse_req("GET / HTTP/1.1\r\nHost: a\r\nX(y): z\r\n\r\n", &h, &complete), CL_EPARSE, "header name");
    CHECK_ERR(parse_req("GET / HTTP/1.1\r\nHost: a\r\nX\x80: z\r\n\r\n", &h, &complete), CL_EPARSE, "header name");
    CHECK_ERR(parse_req("GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", &h, &complete), CL_EPARSE, "colon");
    CHECK_ERR(parse_req("GET / HTTP/1.1\r\nHost: a\r\nX: a\x01z\r\n\r\n", &h, &complete), CL_EPARSE, "control");
    CHECK_ERR(parse_req("GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fz\r\n\r\n", &h, &complete), CL_EPARSE, "control");
    static const uint8_t nul_value[] = "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n";
    CHECK_ERR(cl_http_parse_request(nul_value, sizeof nul_value - 1, MAX_HEAD, &h, &complete), CL_EPARSE,
              "control");
    /* tabs and obs-text are allowed in values; a colon in a value is data */
    CHECK(req_ok("GET / HTTP/1.1\r\nHost: a\r\nX: a\tb \xc3\xa9 c:d\r\n\r\n", &h));
    const cl_slice *v = cl_http_header_get(&h, "x");
    CHECK(v && slice_is(*v, "a\tb \xc3\xa9 c:d"));
}

static void framing_smuggling(void)
{
    static cl_http_head h;
    bool complete;
    /* Content-Length with Transfer-Encoding, in both orders */
    CHECK_ERR(parse_req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", &h,
                        &complete),
              CL_EPARSE, "both Content-Length and Transfer-Encoding");
    CHECK_ERR(parse_req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", &h,
                        &complete),
              CL_EPARSE, "both Content-Length and Transfer-Encoding");
    /* duplicate Content-Length: equal values are one value, differing ones an error */
    CHECK(req_ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n", &h));
    CHECK(h.body == CL_HTTP_BODY_LENGTH && h.content_length == 5);
    CHECK(req_ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 005\r\n\r\n", &h));
    CHECK(h.content_length == 5);
    CHECK_ERR(parse_req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", &h,
                        &complete),
              CL_EPARSE, "conflicting Content-Length");
    CHECK_ERR(parse_req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 6\r\n\r\n", &h,
                        &complete),
              CL_EPARSE, "conflicting Content-Length");
    /* a list value, even of equal members, is rejected (RFC 9110 8.6
     * allows either rejecting or collapsing it; rejecting is stricter) */
    const char *bad_lengths[] = {"5, 5", "5,5", "5, 6", "+5", "-5", "0x5", "5a", "5 5", "5.0", "", "1e3",
                                 "\"5\"", "18446744073709551616", "18446744073709551621",
                                 "1000000000000000000" /* 19 digits */, "99999999999999999999999"};
    for (size_t i = 0; i < sizeof bad_lengths / sizeof bad_lengths[0]; i++) {
        char req[256];
        snprintf(req, sizeof req, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %s\r\n\r\n", bad_lengths[i]);
        CHECK_ERR(parse_req(req, &h, &complete), CL_EPARSE, "Content-Length");
    }
    /* whitespace around the value is not part of it */
    CHECK(req_ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \t12\t \r\n\r\n", &h));
    CHECK(h.content_length == 12);

    /* transfer codings: requests accept exactly a single "chunked" */
    CHECK(req_ok("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", &h));
    CHECK(h.body == CL_HTTP_BODY_CHUNKED && h.keep_alive);
    CHECK(req_ok("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked \r\n\r\n", &h));
    CHECK(h.body == CL_HTTP_BODY_CHUNKED);
    const char *bad_te[] = {"gzip", "gzip, chunked", "chunked, gzip", "chunked, chunked", "chunked;q=1",
                            "xchunked", "\"chunked\"", "", "identity"};
    for (size_t i = 0; i < sizeof bad_te / sizeof bad_te[0]; i++) {
        char req[256];
        snprintf(req, sizeof req, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: %s\r\n\r\n", bad_te[i]);
        CHECK_ERR(parse_req(req, &h, &complete), CL_EPARSE, "Transfer-Encoding");
    }
    CHECK_ERR(parse_req("POST / HTTP/1.1\r\nHost: a\r\n"
                        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                        &h, &complete),
              CL_EPARSE, "repeated Transfer-Encoding");
    CHECK_ERR(parse_req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
                        &h, &complete),
              CL_EPARSE, "Transfer-Encoding");
    /* RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 means faulty framing */
    CHECK_ERR(parse_req("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", &h, &complete), CL_EPARSE,
              "HTTP/1.0");
    /* a body-less request is not given one by a method */
    CHECK(req_ok("POST / HTTP/1.1\r\nHost: a\r\n\r\n", &h));
    CHECK(h.body == CL_HTTP_BODY_NONE);
}

/* ---- response heads ---- */

static void responses(void)
{
    static cl_http_head h;
    const char *r = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";
    CHECK(resp_ok(r, "GET", &h));
    CHECK(h.status == 200 && h.version_minor == 1 && slice_is(h.reason, "OK"));
    CHECK(h.body == CL_HTTP_BODY_LENGTH && h.content_length == 2 && h.keep_alive);
    CHECK(h.head_len == strlen(r) - 2);
    CHECK(h.header_count == 2 && slice_is(h.headers[0].name, "Content-Type"));
    CHECK(h.method.len == 0);

    CHECK(resp_ok("HTTP/1.1 404 Not  Found here\r\nContent-Length: 0\r\n\r\n", "GET", &h));
    CHECK(h.status == 404 && slice_is(h.reason, "Not  Found here"));
    CHECK(h.body == CL_HTTP_BODY_LENGTH && h.content_length == 0 && h.keep_alive);
    CHECK(resp_ok("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", "GET", &h));
    CHECK(h.status == 200 && h.reason.len == 0);
    CHECK(resp_ok("HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", "GET", &h));
    CHECK(h.status == 200 && h.reason.len == 0);
    CHECK(resp_ok("HTTP/1.1 599 x\r\nContent-Length: 0\r\n\r\n", "GET", &h));
    CHECK(h.status == 599);

    /* chunked and until-close bodies */
    CHECK(resp_ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "GET", &h));
    CHECK(h.body == CL_HTTP_BODY_CHUNKED && h.keep_alive);
    CHECK(resp_ok("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", "GET", &h));
    CHECK(h.body == CL_HTTP_BODY_UNTIL_CLOSE && !h.keep_alive);
    CHECK(resp_ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "GET", &h));
    CHECK(h.body == CL_HTTP_BODY_UNTIL_CLOSE && !h.keep_alive);
    CHECK(resp_ok("HTTP/1.0 200 OK\r\n\r\n", "GET", &h));
    CHECK(h.body == CL_HTTP_BODY_UNTIL_CLOSE && !h.keep_alive && h.version_minor == 0);
    CHECK(resp_ok("HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n", "GET", &h));
    CHECK(h.body == CL_HTTP_BODY_LENGTH && !h.keep_alive);
    CHECK(resp_ok("HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n", "GET", &h));
    CHECK(h.body == CL_HTTP_BODY_LENGTH && h.keep_alive);
    CHECK(resp_ok("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\n", "GET", &h));
    CHECK(h.body == CL_HTTP_BODY_LENGTH && !h.keep_alive);
    CHECK(resp_ok("HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n", "GET", &h));
    CHECK(h.body == CL_HTTP_BODY_UNTIL_CLOSE && !h.keep_alive);

    /* framing errors as in requests */
    CHECK(resp_rc("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n") == CL_EPARSE);
    CHECK(resp_rc("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n") == CL_EPARSE);
    CHECK(resp_rc("HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\n") == CL_EPARSE);
    CHECK(resp_rc("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n") == CL_EPARSE);
    CHECK(resp_rc("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n") ==
          CL_EPARSE);
    CHECK(resp_rc("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n") == CL_EPARSE);
    CHECK(resp_rc("HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n") == CL_EPARSE);
    CHECK(resp_rc("HTTP/1.1 200 OK\r\nX: y\r\n z\r\nContent-Length: 0\r\n\r\n") == CL_EPARSE);
    CHECK(resp_rc("HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n") == CL_EPARSE);

    /* malformed status lines */
    const char *bad[] = {"HTTP/1.1 20 OK", "HTTP/1.1 2000 OK", "HTTP/1.1 099 Low", "HTTP/1.1 600 High",
                         "HTTP/1.1 000", "HTTP/1.1 2x0 OK", "HTTP/1.1 -20 OK", "HTTP/1.2 200 OK", "HTTP/2 200 OK",
                         "HTTP/1.1  200 OK", "HTTP/1.1\t200 OK", "http/1.1 200 OK", "HTTP/1.1 200\tOK",
                         "ICY 200 OK", "", "HTTP/1.1", "HTTP/1.1 "};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char resp[128];
        snprintf(resp, sizeof resp, "%s\r\nContent-Length: 0\r\n\r\n", bad[i]);
        if (resp_rc(resp) != CL_EPARSE) {
            fprintf(stderr, "status line accepted: \"%s\"\n", bad[i]);
            CHECK(0);
        }
    }
}

static void responses_without_body(void)
{
    static cl_http_head h;
    struct {
        const char *resp, *method;
        bool keep_alive;
    } cases[] = {
        {"HTTP/1.1 100 Continue\r\n\r\n", "PUT", true},
        {"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n", "GET", true},
        {"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n", "GET", true},
        {"HTTP/1.1 204 No Content\r\n\r\n", "DELETE", true},
        {"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n", "DELETE", true},
        {"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n", "DELETE", false},
        {"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\n\r\n", "GET", true},
        {"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", "GET", true},
        {"HTTP/1.0 304 Not Modified\r\n\r\n", "GET", false},
        {"HTTP/1.0 304 Not Modified\r\nConnection: keep-alive\r\n\r\n", "GET", true},
        {"HTTP/1.0 304 Not Modified\r\nConnection: keep-alive, close\r\n\r\n", "GET", false},
        {"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", "HEAD", true},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "HEAD", true},
        {"HTTP/1.1 200 OK\r\n\r\n", "HEAD", true},
        {"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\n", "HEAD", false},
        /* a 2xx to CONNECT turns the connection into a tunnel (RFC 9112 6.3) */
        {"HTTP/1.1 200 Connection Established\r\n\r\n", "CONNECT", false},
        {"HTTP/1.1 200 Connection Established\r\nContent-Length: 5\r\n\r\n", "CONNECT", false},
        {"HTTP/1.1 200 Connection Established\r\nTransfer-Encoding: chunked\r\n\r\n", "CONNECT", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CHECK(resp_ok(cases[i].resp, cases[i].method, &h));
        if (h.body != CL_HTTP_BODY_NONE || h.keep_alive != cases[i].keep_alive) {
            fprintf(stderr, "case %zu: body %d keep_alive %d\n", i, h.body, h.keep_alive);
            CHECK(0);
        }
    }
    CHECK(resp_ok("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", "HEAD", &h));
    CHECK(h.content_length == 1234); /* what a GET would have had */
    /* methods are case-sensitive: "head" is not HEAD */
    CHECK(resp_ok("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n", "head", &h));
    CHECK(h.body == CL_HTTP_BODY_LENGTH);
    /* a refused CONNECT has an ordinary body */
    CHECK(resp_ok("HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 4\r\n\r\n", "CONNECT", &h));
    CHECK(h.body == CL_HTTP_BODY_LENGTH && h.keep_alive);
    /* the no-body rule does not excuse malformed framing */
    CHECK(resp_rc("HTTP/1.1 204 No Content\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n") == CL_EPARSE);
}

/* ---- hop-by-hop ---- */

static bool hop(const cl_http_head *h, const char *name)
{
    return cl_http_is_hop_by_hop(h, (cl_slice){(const uint8_t *)name, strlen(name)});
}

static void hop_by_hop(void)
{
    static cl_http_head h;
    CHECK(req_ok("GET / HTTP/1.1\r\nHost: a\r\n\r\n", &h));
    const char *fixed[] = {"Connection", "keep-alive", "Proxy-Connection", "TE", "Transfer-Encoding", "UPGRADE",
                           "trailer", "Proxy-Authenticate", "Proxy-Authorization"};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        CHECK(hop(&h, fixed[i]));
    const char *end_to_end[] = {"Host", "Content-Length", "Content-Type", "Trailers", "Connections", "T",
                                "Upgrade-Insecure-Requests", "Keep", "", "X-Foo"};
    for (size_t i = 0; i < sizeof end_to_end / sizeof end_to_end[0]; i++)
        CHECK(!hop(&h, end_to_end[i]));

    CHECK(req_ok("GET / HTTP/1.1\r\nHost: a\r\nConnection: X-Foo,  x-bar ,,\r\nConnection: close, X-Baz\r\n"
                 "X-Foo: 1\r\nX-Bar: 2\r\nX-Baz: 3\r\nX-Fo: 4\r\n\r\n",
                 &h));
    CHECK(hop(&h, "X-Foo") && hop(&h, "x-foo") && hop(&h, "X-BAR") && hop(&h, "x-baz"));
    CHECK(!hop(&h, "X-Fo") && !hop(&h, "X-Foo2") && !hop(&h, "bar") && !hop(&h, ""));
    CHECK(!hop(&h, "Host") && !hop(&h, "X-Foo,"));
    CHECK(hop(&h, "close")); /* a connection option names a field, whatever it is */
}

/* ---- chunked ---- */

static uint32_t rng_state = 12345;

static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}

typedef struct {
    uint8_t *data;
    size_t len, cap;
} bytes;

static void put(bytes *b, const void *p, size_t n)
{
    if (n == 0)
        return;
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2 + 64;
        b->data = realloc(b->data, b->cap);
        if (!b->data)
            abort();
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void puts_(bytes *b, const char *s)
{
    put(b, s, strlen(s));
}

/* Decodes in as data arrives in pieces: `piece` says how many more bytes
 * arrive each time (0: all at once), `take` how many bytes of each data span
 * the receiver accepts (0: all; the rest is given back with unconsume).
 * Returns the decoder's result; *used is how many input bytes were framing
 * and data of the body. */
static int decode(const uint8_t *in, size_t len, size_t piece, size_t take, bool random_pieces, bytes *out,
                  size_t *used, bool *done)
{
    cl_chunked st;
    memset(&st, 0, sizeof st);
    size_t pos = 0, arrived = piece ? 0 : len;
    unsigned idle = 0;
    for (;;) {
        size_t consumed = 12345, off = 999, dlen = 999;
        int rc = cl_chunked_next(&st, in + pos, arrived - pos, &consumed, &off, &dlen);
        if (rc < 0) {
            *used = pos;
            *done = st.done;
            return rc;
        }
        if (consumed > arrived - pos || (dlen && (off + dlen != consumed || off > consumed))) {
            fprintf(stderr, "inconsistent span: consumed %zu of %zu, data %zu+%zu\n", consumed, arrived - pos, off,
                    dlen);
            CHECK(0);
            return CL_EINVAL;
        }
        if (dlen) {
            size_t took = take && take < dlen ? take : dlen;
            put(out, in + pos + off, took);
            cl_chunked_unconsume(&st, dlen - took);
            consumed -= dlen - took;
        }
        pos += consumed;
        if (st.done) {
            *used = pos;
            *done = true;
            return CL_OK;
        }
        if (consumed == 0 && dlen == 0) {
            if (arrived == len) {
                if (++idle > 2) { /* the input ended before the body did */
                    *used = pos;
                    *done = false;
                    return CL_OK;
                }
                continue;
            }
            size_t more = random_pieces ? 1 + rnd() % piece : piece;
            arrived = arrived + more > len ? len : arrived + more;
        }
    }
}

/* A random payload framed in chunks of random sizes, some with
 * extensions, optionally with trailers; "NEXT" follows the body. */
static void make_chunked(bytes *framed, bytes *payload, size_t total, bool extensions, bool trailers)
{
    size_t left = total;
    while (left) {
        size_t n = 1 + rnd() % (left < 300 ? left : 300);
        if (rnd() % 8 == 0)
            n = left < 5000 ? left : 5000;
        char line[64];
        const char *exts[] = {"", ";a", ";name=value", ";x=\"quoted; string\"", " ;b=1", "\t;c", ";d=1;e=2"};
        const char *ext = extensions ? exts[rnd() % (sizeof exts / sizeof exts[0])] : "";
        snprintf(line, sizeof line, rnd() % 2 ? "%zx%s\r\n" : "%zX%s\r\n", n, ext);
        if (rnd() % 10 == 0)
            snprintf(line, sizeof line, "000%zx%s\r\n", n, ext);
        puts_(framed, line);
        for (size_t i = 0; i < n; i++) {
            uint8_t c = (uint8_t)rnd();
            put(payload, &c, 1);
            put(framed, &c, 1);
        }
        puts_(framed, "\r\n");
        left -= n;
    }
    puts_(framed, extensions ? "0;last=yes\r\n" : "0\r\n");
    if (trailers)
        puts_(framed, "Digest: sha-256=abc\r\nX-Trailer: 1\r\n");
    puts_(framed, "\r\n");
}

static void chunked_whole_and_split(void)
{
    for (int variant = 0; variant < 8; variant++) {
        bytes framed = {0}, payload = {0};
        size_t total = variant == 0 ? 0 : variant == 1 ? 1 : 1000 + rnd() % 20000;
        make_chunked(&framed, &payload, total, variant & 2, variant & 4);
        size_t body_len = framed.len;
        puts_(&framed, "NEXT");
        struct {
            size_t piece, take;
            bool random;
        } modes[] = {{0, 0, false}, {1, 0, false}, {2, 0, false}, {3, 1, false},   {7, 0, true},
                     {64, 0, true}, {0, 1, false}, {0, 3, false}, {500, 17, true}, {1, 1, false}};
        for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
            for (int rep = 0; rep < (modes[m].random ? 5 : 1); rep++) {
                bytes out = {0};
                size_t used = 0;
                bool done = false;
                CHECK_OK(decode(framed.data, framed.len, modes[m].piece, modes[m].take, modes[m].random, &out, &used,
                                &done));
                CHECK(done);
                CHECK(used == body_len); /* stops exactly at the end of the body */
                if (out.len != payload.len || (out.len && memcmp(out.data, payload.data, out.len))) {
                    fprintf(stderr, "variant %d mode %zu: payload differs (%zu vs %zu bytes)\n", variant, m, out.len,
                            payload.len);
                    CHECK(0);
                }
                free(out.data);
            }
        }
        free(framed.data);
        free(payload.data);
    }
}

static int decode_text(const char *text, bytes *out, bool *done)
{
    size_t used;
    return decode((const uint8_t *)text, strlen(text), 0, 0, false, out, &used, done);
}

/* Every way a body may be split gives the same result as the whole. */
static void chunked_every_split(void)
{
    const char *body = "4;x=y\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nT: v\r\n\r\n";
    const char *expect = "Wikipedia in\r\n\r\nchunks.";
    size_t len = strlen(body);
    for (size_t a = 0; a <= len; a++) {
        for (size_t b = a; b <= len; b++) {
            cl_chunked st;
            memset(&st, 0, sizeof st);
            bytes out = {0};
            size_t cuts[] = {a, b, len}, pos = 0;
            int rc = CL_OK;
            for (size_t k = 0; k < 3 && rc == CL_OK; k++) {
                while (pos < cuts[k]) {
                    size_t consumed, off, dlen;
                    rc = cl_chunked_next(&st, (const uint8_t *)body + pos, cuts[k] - pos, &consumed, &off, &dlen);
                    if (rc < 0)
                        break;
                    put(&out, body + pos + off, dlen);
                    pos += consumed;
                    if (consumed == 0 || st.done)
                        break;
                }
            }
            if (rc != CL_OK || !st.done || pos != len || out.len != strlen(expect) ||
                memcmp(out.data, expect, out.len)) {
                fprintf(stderr, "split at %zu, %zu: rc %d done %d pos %zu\n", a, b, rc, st.done, pos);
                CHECK(0);
                free(out.data);
                return;
            }
            free(out.data);
        }
    }
}

static void chunked_valid_forms(void)
{
    bytes out = {0};
    bool done;
    CHECK_OK(decode_text("0\r\n\r\n", &out, &done));
    CHECK(done && out.len == 0);
    CHECK_OK(decode_text("a\r\n0123456789\r\nA\r\nabcdefghij\r\n0\r\n\r\n", &out, &done));
    CHECK(done && out.len == 20 && !memcmp(out.data, "0123456789abcdefghij", 20));
    out.len = 0;
    /* extensions, with optional whitespace before the semicolon */
    CHECK_OK(decode_text("3;ext\r\nabc\r\n3 ; a = \"b\"\r\ndef\r\n3\t;x\r\nghi\r\n0;end=1\r\n\r\n", &out, &done));
    CHECK(done && out.len == 9 && !memcmp(out.data, "abcdefghi", 9));
    out.len = 0;
    /* trailers */
    CHECK_OK(decode_text("1\r\nx\r\n0\r\nExpires: never\r\nX: y\r\n\r\n", &out, &done));
    CHECK(done && out.len == 1);
    out.len = 0;
    /* 15 hex digits is the largest size accepted */
    cl_chunked st;
    memset(&st, 0, sizeof st);
    size_t consumed, off, dlen;
    const char *big = "fffffffffffffff\r\nabc";
    CHECK_OK(cl_chunked_next(&st, (const uint8_t *)big, strlen(big), &consumed, &off, &dlen));
    CHECK(consumed == strlen(big) && dlen == 3 && off == 17);
    CHECK(st.remaining == 0xfffffffffffffffull - 3 && !st.done);
    /* nothing is consumed once done */
    memset(&st, 0, sizeof st);
    CHECK_OK(cl_chunked_next(&st, (const uint8_t *)"0\r\n\r\n0\r\n\r\n", 10, &consumed, &off, &dlen));
    CHECK(st.done && consumed == 5 && dlen == 0);
    CHECK_OK(cl_chunked_next(&st, (const uint8_t *)"0\r\n\r\n", 5, &consumed, &off, &dlen));
    CHECK(st.done && consumed == 0 && dlen == 0);
    /* an empty input consumes nothing */
    memset(&st, 0, sizeof st);
    CHECK_OK(cl_chunked_next(&st, (const uint8_t *)"", 0, &consumed, &off, &dlen));
    CHECK(consumed == 0 && dlen == 0 && !st.done);
    free(out.data);
}

static void chunked_invalid(void)
{
    struct {
        const char *body, *fragment;
    } cases[] = {
        {"\r\n", "missing chunk size"},
        {";ext\r\n", "missing chunk size"},
        {" 5\r\nhello\r\n0\r\n\r\n", "missing chunk size"},
        {"g\r\n", "missing chunk size"},
        {"5g\r\n", "invalid chunk size"},
        {"-1\r\n", "missing chunk size"},
        {"+1\r\nx\r\n0\r\n\r\n", "missing chunk size"},
        {"0x5\r\nhello\r\n0\r\n\r\n", "invalid chunk size"},
        {"5\nhello\r\n0\r\n\r\n", "invalid chunk size"},
        {"5\r\rhello\r\n0\r\n\r\n", "CRLF"},
        {"5;ext\nhello\r\n0\r\n\r\n", "extension"},
        {"5 6\r\nhello\r\n0\r\n\r\n", "chunk size"},
        {"5 x\r\nhello\r\n0\r\n\r\n", "chunk size"},
        {"5\r\nhelloX\r\n0\r\n\r\n", "not followed by CRLF"},
        {"5\r\nhello\rX0\r\n\r\n", "not followed by CRLF"},
        {"5\r\nhello\n0\r\n\r\n", "not followed by CRLF"},
        {"5\r\nhello\r\n\r\n0\r\n\r\n", "missing chunk size"},
        {"0\r\n\rX", "last chunk"},
        {"0\r\n\n", "bare LF"},
        {"0\r\nX: y\n\r\n", "trailer"},
        {"0\r\nX: y\r\r\n", "trailer line not ended by CRLF"},
        {"ffffffffffffffff\r\n", "too large"},
        {"0000000000000001\r\n", "too large"},
        {"10000000000000000000\r\n", "too large"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bytes out = {0};
        bool done = false;
        cl_error_clear();
        int rc = decode_text(cases[i].body, &out, &done);
        if (rc != CL_EPARSE || !strstr(cl_error_message(), cases[i].fragment)) {
            fprintf(stderr, "case %zu \"%s\": %s: %s\n", i, cases[i].body, cl_error_name(rc), cl_error_message());
            CHECK(0);
        }
        free(out.data);
    }
    /* control characters in extensions and trailers */
    static const uint8_t nul_ext[] = "1;a\0b\r\nx\r\n0\r\n\r\n";
    static const uint8_t nul_trailer[] = "0\r\nX: a\0b\r\n\r\n";
    bytes out = {0};
    size_t used;
    bool done;
    CHECK_ERR(decode(nul_ext, sizeof nul_ext - 1, 0, 0, false, &out, &used, &done), CL_EPARSE, "extension");
    CHECK_ERR(decode(nul_trailer, sizeof nul_trailer - 1, 0, 0, false, &out, &used, &done), CL_EPARSE, "trailer");
    CHECK_ERR(decode_text("1;a\x01\r\nx\r\n0\r\n\r\n", &out, &done), CL_EPARSE, "extension");
    CHECK_ERR(decode_text("0\r\nX: \x7f\r\n\r\n", &out, &done), CL_EPARSE, "trailer");

    /* overlong extension and trailer lines */
    bytes long_ext = {0};
    puts_(&long_ext, "1;");
    for (int i = 0; i < 5000; i++)
        puts_(&long_ext, "a");
    puts_(&long_ext, "\r\nx\r\n0\r\n\r\n");
    CHECK_ERR(decode(long_ext.data, long_ext.len, 0, 0, false, &out, &used, &done), CL_EPARSE, "extension");
    bytes long_trailer = {0};
    puts_(&long_trailer, "0\r\nX: ");
    for (int i = 0; i < 5000; i++)
        puts_(&long_trailer, "a");
    puts_(&long_trailer, "\r\n\r\n");
    CHECK_ERR(decode(long_trailer.data, long_trailer.len, 0, 0, false, &out, &used, &done), CL_EPARSE, "trailer");
    /* lines just under the limit pass */
    long_ext.len = 0;
    puts_(&long_ext, "1;");
    for (int i = 0; i < 4095; i++)
        puts_(&long_ext, "a");
    puts_(&long_ext, "\r\nx\r\n0\r\n\r\n");
    out.len = 0;
    CHECK_OK(decode(long_ext.data, long_ext.len, 0, 0, false, &out, &used, &done));
    CHECK(done && out.len == 1);
    free(long_ext.data);
    free(long_trailer.data);
    free(out.data);
}

static void chunked_unconsume(void)
{
    const char *body = "6\r\nabcdef\r\n0\r\n\r\n";
    cl_chunked st;
    memset(&st, 0, sizeof st);
    size_t consumed, off, dlen;
    /* the whole span, of which the receiver takes 2 */
    CHECK_OK(cl_chunked_next(&st, (const uint8_t *)body, strlen(body), &consumed, &off, &dlen));
    CHECK(off == 3 && dlen == 6 && consumed == 9);
    cl_chunked_unconsume(&st, 4);
    size_t pos = consumed - 4;
    CHECK_OK(cl_chunked_next(&st, (const uint8_t *)body + pos, strlen(body) - pos, &consumed, &off, &dlen));
    CHECK(off == 0 && dlen == 4 && !memcmp(body + pos, "cdef", 4));
    /* giving back nothing changes nothing */
    cl_chunked_unconsume(&st, 0);
    pos += consumed;
    CHECK_OK(cl_chunked_next(&st, (const uint8_t *)body + pos, strlen(body) - pos, &consumed, &off, &dlen));
    CHECK(dlen == 0 && st.done && pos + consumed == strlen(body));

    /* a span that ended mid-chunk, partly given back */
    memset(&st, 0, sizeof st);
    CHECK_OK(cl_chunked_next(&st, (const uint8_t *)body, 7, &consumed, &off, &dlen));
    CHECK(off == 3 && dlen == 4 && consumed == 7);
    cl_chunked_unconsume(&st, 1);
    pos = 6;
    CHECK_OK(cl_chunked_next(&st, (const uint8_t *)body + pos, strlen(body) - pos, &consumed, &off, &dlen));
    CHECK(off == 0 && dlen == 3 && !memcmp(body + pos, "def", 3));
    pos += consumed;
    CHECK_OK(cl_chunked_next(&st, (const uint8_t *)body + pos, strlen(body) - pos, &consumed, &off, &dlen));
    CHECK(st.done && pos + consumed == strlen(body));
}

/* ---- query parameters ---- */

static int qp(const char *query, const char *name, char *out, size_t out_len, bool *found)
{
    return cl_http_query_param((cl_slice){(const uint8_t *)query, strlen(query)}, name, out, out_len, found);
}

static void query_params(void)
{
    char v[32];
    bool found;
    CHECK_OK(qp("a=1&nonce=abc&b=2", "nonce", v, sizeof v, &found));
    CHECK(found && !strcmp(v, "abc"));
    CHECK_OK(qp("nonce=first&nonce=second", "nonce", v, sizeof v, &found));
    CHECK(found && !strcmp(v, "first"));
    /* same prefix, name only in a value, case */
    CHECK_OK(qp("noncex=1&xnonce=2&a=nonce&nonce=3", "nonce", v, sizeof v, &found));
    CHECK(found && !strcmp(v, "3"));
    CHECK_OK(qp("noncex=1&NONCE=2", "nonce", v, sizeof v, &found));
    CHECK(!found);
    CHECK_OK(qp("nonc=1", "nonce", v, sizeof v, &found));
    CHECK(!found);
    CHECK_OK(qp("", "nonce", v, sizeof v, &found));
    CHECK(!found);
    CHECK_OK(cl_http_query_param((cl_slice){NULL, 0}, "nonce", v, sizeof v, &found));
    CHECK(!found);
    /* present without a value, or with an empty one */
    strcpy(v, "junk");
    CHECK_OK(qp("a=1&flag&b", "flag", v, sizeof v, &found));
    CHECK(found && v[0] == '\0');
    CHECK_OK(qp("flag=&b", "flag", v, sizeof v, &found));
    CHECK(found && v[0] == '\0');
    CHECK_OK(qp("&&x=1&", "x", v, sizeof v, &found));
    CHECK(found && !strcmp(v, "1"));
    /* decoding */
    CHECK_OK(qp("q=a%20b+c%2Bd%2fe%3D%26", "q", v, sizeof v, &found));
    CHECK(found && !strcmp(v, "a b c+d/e=&"));
    CHECK_OK(qp("q=%C3%A9", "q", v, sizeof v, &found));
    CHECK(found && !strcmp(v, "\xc3\xa9"));
    CHECK_OK(qp("q=a=b", "q", v, sizeof v, &found));
    CHECK(found && !strcmp(v, "a=b"));
    CHECK_ERR(qp("q=%", "q", v, sizeof v, &found), CL_EPARSE, "percent");
    CHECK_ERR(qp("q=%4", "q", v, sizeof v, &found), CL_EPARSE, "percent");
    CHECK_ERR(qp("q=%4&r=1", "q", v, sizeof v, &found), CL_EPARSE, "percent");
    CHECK_ERR(qp("q=%G1", "q", v, sizeof v, &found), CL_EPARSE, "percent");
    CHECK_ERR(qp("q=%1G", "q", v, sizeof v, &found), CL_EPARSE, "percent");
    /* a NUL could only be returned by silently cutting the value short */
    CHECK_ERR(qp("q=abc%00def", "q", v, sizeof v, &found), CL_EPARSE, "NUL");
    /* a bad parameter that is not the one asked for does not matter */
    CHECK_OK(qp("r=%zz&q=1", "q", v, sizeof v, &found));
    CHECK(found && !strcmp(v, "1"));
    /* length: out holds the value and its NUL */
    char small[4];
    CHECK_OK(qp("q=abc", "q", small, sizeof small, &found));
    CHECK(found && !strcmp(small, "abc"));
    CHECK_OK(qp("q=%61%62%63", "q", small, sizeof small, &found));
    CHECK(found && !strcmp(small, "abc"));
    CHECK_ERR(qp("q=abcd", "q", small, sizeof small, &found), CL_ELIMIT, "too long");
    CHECK_ERR(qp("q=abc+", "q", small, sizeof small, &found), CL_ELIMIT, "too long");
    CHECK_OK(qp("q=", "q", small, 1, &found));
    CHECK(found && small[0] == '\0');
    small[0] = 'x';
    CHECK_ERR(qp("q=", "q", small, 0, &found), CL_EINVAL, NULL);
    CHECK(small[0] == 'x'); /* nothing written to a zero-length buffer */
}

int main(void)
{
    RUN(simple_get);
    RUN(targets_and_methods);
    RUN(invalid_request_lines);
    RUN(leading_empty_lines);
    RUN(head_len_and_pipelining);
    RUN(incomplete_heads);
    RUN(head_size_limit);
    RUN(keep_alive_rules);
    RUN(expect_continue);
    RUN(upgrade);
    RUN(host_rules);
    RUN(line_ending_smuggling);
    RUN(field_syntax);
    RUN(framing_smuggling);
    RUN(responses);
    RUN(responses_without_body);
    RUN(hop_by_hop);
    RUN(chunked_whole_and_split);
    RUN(chunked_every_split);
    RUN(chunked_valid_forms);
    RUN(chunked_invalid);
    RUN(chunked_unconsume);
    RUN(query_params);
    return test_summary();
}

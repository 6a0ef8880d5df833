/* HTTP/1.1 message heads and chunked framing (RFC 9110, RFC 9112).
 *
 * Heads are parsed in place: every name, value and target is a slice of
 * the caller's buffer.  The parser is strict where leniency lets two
 * parties disagree about where a message ends (request smuggling): it
 * rejects bare LF line ends, obsolete line folding, whitespace before the
 * colon, Content-Length together with Transfer-Encoding, differing
 * Content-Length values, and transfer codings other than a final
 * "chunked". */
#ifndef CLOISTER_HTTP_H
#define CLOISTER_HTTP_H

#pragma GCC visibility push(default)

#include "cloister/core/error.h"
#include "cloister/core/slice.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CL_HTTP_MAX_HEADERS 100

typedef struct cl_http_header {
    cl_slice name, value;
} cl_http_header;

enum cl_http_body {
    CL_HTTP_BODY_NONE,
    CL_HTTP_BODY_LENGTH,  /* content_length bytes */
    CL_HTTP_BODY_CHUNKED,
    CL_HTTP_BODY_UNTIL_CLOSE, /* responses only */
};

typedef struct cl_http_head {
    /* request line */
    cl_slice method, target, path, query;
    /* status line */
    int status;
    cl_slice reason;
    int version_minor; /* HTTP/1.x */
    cl_http_header headers[CL_HTTP_MAX_HEADERS];
    size_t header_count;
    size_t head_len; /* bytes of the head, including the final empty line */

    /* what the headers mean for the connection */
    int body;
    uint64_t content_length;
    bool keep_alive;      /* persistent after this message */
    bool expect_continue; /* Expect: 100-continue */
    bool upgrade;         /* Connection: upgrade with an Upgrade header */
    cl_slice host;
} cl_http_head;

/* *complete is false (and nothing is filled) while the head's end is not
 * in buf yet; CL_ELIMIT when more than max_head bytes would be needed. */
CL_MUST_CHECK int cl_http_parse_request(const uint8_t *buf, size_t len, size_t max_head, cl_http_head *out,
                                        bool *complete);
/* request_method decides whether a body follows (HEAD, CONNECT). */
CL_MUST_CHECK int cl_http_parse_response(const uint8_t *buf, size_t len, size_t max_head, cl_slice request_method,
                                         cl_http_head *out, bool *complete);

const cl_slice *cl_http_header_get(const cl_http_head *head, const char *name);

/* True for the connection-specific (hop-by-hop) fields a proxy must not
 * forward: Connection, Keep-Alive, Proxy-Connection, TE, Transfer-Encoding,
 * Upgrade, Trailer, and any field named in a Connection header. */
bool cl_http_is_hop_by_hop(const cl_http_head *head, cl_slice name);

/* True for fields the app must only ever get from cloister, which drops
 * the client's copies: every name starting "X-Forwarded", Forwarded,
 * X-Real-IP, X-Client-IP, Client-IP, True-Client-IP, X-Cluster-Client-IP,
 * CF-Connecting-IP, Fastly-Client-IP, X-Original-Forwarded-For,
 * X-Originating-IP, X-Remote-IP, X-Remote-Addr, compared in any case with
 * '_' taken as '-' (as CGI-style gateways map them to one variable); and
 * Host, Content-Length, Transfer-Encoding, Connection spelt with a '_'. */
bool cl_http_is_proxy_owned(cl_slice name);

/* A Host or :authority value: uri-host [":" port], no userinfo. */
bool cl_http_is_host_value(cl_slice value);

/* Chunked transfer coding, fed in pieces.  Each call consumes framing and
 * returns at most one span of payload data; `done` is set after the last
 * chunk and the trailer section. */
typedef struct cl_chunked {
    int state;
    uint64_t remaining; /* of the current chunk */
    unsigned size_digits;
    size_t line_len; /* bytes of the current extension/trailer line */
    bool done;
} cl_chunked;

CL_MUST_CHECK int cl_chunked_next(cl_chunked *st, const uint8_t *in, size_t len, size_t *consumed,
                                  size_t *data_offset, size_t *data_len);

/* Gives back the last n data bytes of the span just returned, when the
 * receiver could not take them all; the next call returns them again. */
void cl_chunked_unconsume(cl_chunked *st, size_t n);

/* Percent-decoded value of a query parameter ('+' is a space) as a C
 * string; *found false if absent.  CL_EPARSE for bad percent-encoding or an
 * encoded NUL, CL_ELIMIT when the value and its NUL exceed out_len. */
CL_MUST_CHECK int cl_http_query_param(cl_slice query, const char *name, char *out, size_t out_len, bool *found);

/* The reason phrase of an HTTP status code ("Unknown" for others). */
const char *cl_http_status_text(int status);

#pragma GCC visibility pop

#endif

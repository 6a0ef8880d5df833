#include "cloister/core/http.h"

#include "cloister/core/cursor.h"
#include "cloister/core/encoding.h"

#include <string.h>

#define MAX_CHUNK_SIZE_DIGITS 15 /* keeps sizes below 2^60 */
#define MAX_CHUNK_LINE 4096
#define MAX_CONTENT_LENGTH_DIGITS 18

static bool is_tchar(uint8_t c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return true;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool is_token(cl_slice s)
{
    if (s.len == 0)
        return false;
    for (size_t i = 0; i < s.len; i++)
        if (!is_tchar(s.data[i]))
            return false;
    return true;
}

static bool is_field_value_char(uint8_t c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

/* uri-host [":" port] (RFC 3986): unreserved, pct-encoded, sub-delims,
 * the colon and the brackets of IP literals. */
static bool is_host_value(cl_slice s)
{
    for (size_t i = 0; i < s.len; i++) {
        uint8_t c = s.data[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c && strchr("-._~%!$&'()*+,;=:[]", c))))
            return false;
    }
    return true;
}

static cl_slice trim_ows(cl_slice s)
{
    while (s.len && (s.data[0] == ' ' || s.data[0] == '\t')) {
        s.data++;
        s.len--;
    }
    while (s.len && (s.data[s.len - 1] == ' ' || s.data[s.len - 1] == '\t'))
        s.len--;
    return s;
}

/* Reads one CRLF-terminated line; a bare LF is an error. */
static int read_line(cl_cursor *c, cl_slice *line)
{
    bool found;
    CL_TRY(cl_cursor_until(c, '\n', line, &found));
    CL_ENSURE(found, CL_EPARSE, "HTTP: unterminated line");
    CL_ENSURE(line->len > 0 && line->data[line->len - 1] == '\r', CL_EPARSE, "HTTP: line ends in a bare LF");
    line->len--;
    for (size_t i = 0; i < line->len; i++)
        CL_ENSURE(line->data[i] != '\r', CL_EPARSE, "HTTP: stray CR in a line");
    return CL_OK;
}

/* Finds the end of the head; 0 when it is not in buf yet. */
static size_t head_end(const uint8_t *buf, size_t len)
{
    const uint8_t *end = memmem(buf, len, "\r\n\r\n", 4);
    return end ? (size_t)(end - buf) + 4 : 0;
}

/* Whether a comma-separated list field holds token (case-insensitive). */
static bool list_contains(cl_slice value, const char *token)
{
    size_t start = 0;
    for (size_t i = 0; i <= value.len; i++) {
        if (i == value.len || value.data[i] == ',') {
            cl_slice item = trim_ows((cl_slice){value.data + start, i - start});
            if (cl_slice_eq_nocase(item, token))
                return true;
            start = i + 1;
        }
    }
    return false;
}

static int parse_fields(cl_cursor *c, cl_http_head *h)
{
    for (;;) {
        cl_slice line;
        CL_TRY(read_line(c, &line));
        if (line.len == 0)
            return CL_OK;
        CL_ENSURE(line.data[0] != ' ' && line.data[0] != '\t', CL_EPARSE,
                  "HTTP: obsolete line folding is not accepted");
        const uint8_t *colon = memchr(line.data, ':', line.len);
        CL_ENSURE(colon, CL_EPARSE, "HTTP: header line without a colon");
        cl_slice name = {line.data, (size_t)(colon - line.data)};
        CL_ENSURE(is_token(name), CL_EPARSE, "HTTP: invalid header name");
        cl_slice value = trim_ows((cl_slice){colon + 1, line.len - name.len - 1});
        for (size_t i = 0; i < value.len; i++)
            CL_ENSURE(is_field_value_char(value.data[i]), CL_EPARSE, "HTTP: control character in header %.*s",
                      (int)(name.len > 64 ? 64 : name.len), (const char *)name.data);
        CL_ENSURE(h->header_count < CL_HTTP_MAX_HEADERS, CL_ELIMIT, "HTTP: more than %d header fields",
                  CL_HTTP_MAX_HEADERS);
        h->headers[h->header_count++] = (cl_http_header){name, value};
    }
}

static int parse_content_length(cl_slice v, uint64_t *out)
{
    CL_ENSURE(v.len > 0 && v.len <= MAX_CONTENT_LENGTH_DIGITS, CL_EPARSE, "HTTP: invalid Content-Length");
    uint64_t n = 0;
    for (size_t i = 0; i < v.len; i++) {
        CL_ENSURE(v.data[i] >= '0' && v.data[i] <= '9', CL_EPARSE, "HTTP: invalid Content-Length");
        n = n * 10 + (uint64_t)(v.data[i] - '0');
    }
    *out = n;
    return CL_OK;
}

/* Framing and connection semantics shared by requests and responses. */
static int interpret_fields(cl_http_head *h, bool is_request)
{
    bool have_length = false, have_te = false, te_chunked = false, conn_close = false, conn_keep_alive = false,
         conn_upgrade = false, have_upgrade = false;
    size_t hosts = 0;
    for (size_t i = 0; i < h->header_count; i++) {
        cl_slice name = h->headers[i].name, value = h->headers[i].value;
        if (cl_slice_eq_nocase(name, "content-length")) {
            uint64_t n = 0;
            CL_TRY(parse_content_length(value, &n));
            CL_ENSURE(!have_length || n == h->content_length, CL_EPARSE, "HTTP: conflicting Content-Length values");
            h->content_length = n;
            have_length = true;
        } else if (cl_slice_eq_nocase(name, "transfer-encoding")) {
            CL_ENSURE(!have_te, CL_EPARSE, "HTTP: repeated Transfer-Encoding");
            have_te = true;
            te_chunked = cl_slice_eq_nocase(value, "chunked");
        } else if (cl_slice_eq_nocase(name, "connection")) {
            conn_close |= list_contains(value, "close");
            conn_keep_alive |= list_contains(value, "keep-alive");
            conn_upgrade |= list_contains(value, "upgrade");
        } else if (cl_slice_eq_nocase(name, "upgrade")) {
            have_upgrade = true;
        } else if (cl_slice_eq_nocase(name, "expect")) {
            h->expect_continue = cl_slice_eq_nocase(value, "100-continue");
        } else if (cl_slice_eq_nocase(name, "host")) {
            CL_ENSURE(!is_request || is_host_value(value), CL_EPARSE, "HTTP: invalid Host header");
            h->host = value;
            hosts++;
        }
    }
    CL_ENSURE(!(have_length && have_te), CL_EPARSE, "HTTP: both Content-Length and Transfer-Encoding");
    if (have_te) {
        CL_ENSURE(h->version_minor >= 1, CL_EPARSE, "HTTP: Transfer-Encoding in an HTTP/1.0 message");
        if (is_request)
            CL_ENSURE(te_chunked, CL_EPARSE, "HTTP: unsupported Transfer-Encoding");
    }
    if (is_request) {
        CL_ENSURE(hosts <= 1, CL_EPARSE, "HTTP: more than one Host header");
        CL_ENSURE(hosts == 1 || h->version_minor == 0, CL_EPARSE, "HTTP/1.1 request without Host");
        h->body = te_chunked ? CL_HTTP_BODY_CHUNKED : have_length ? CL_HTTP_BODY_LENGTH : CL_HTTP_BODY_NONE;
        if (h->body == CL_HTTP_BODY_LENGTH && h->content_length == 0)
            h->body = CL_HTTP_BODY_NONE;
    } else {
        h->body = have_te ? (te_chunked ? CL_HTTP_BODY_CHUNKED : CL_HTTP_BODY_UNTIL_CLOSE)
                  : have_length ? CL_HTTP_BODY_LENGTH
                                : CL_HTTP_BODY_UNTIL_CLOSE;
    }
    h->keep_alive = h->version_minor >= 1 ? !conn_close : (conn_keep_alive && !conn_close);
    if (!is_request && h->body == CL_HTTP_BODY_UNTIL_CLOSE)
        h->keep_alive = false;
    /* HTTP/1.0 requests' 100-continue and Upgrade are ignored (RFC 9110 10.1.1, 7.8) */
    if (h->version_minor == 0)
        h->expect_continue = false;
    h->upgrade = conn_upgrade && have_upgrade && h->version_minor >= 1;
    return CL_OK;
}

static bool connection_has(const cl_http_head *h, const char *token)
{
    for (size_t i = 0; i < h->header_count; i++)
        if (cl_slice_eq_nocase(h->headers[i].name, "connection") && list_contains(h->headers[i].value, token))
            return true;
    return false;
}

static bool has_close_token(const cl_http_head *h)
{
    return connection_has(h, "close");
}

static bool has_keep_alive_token(const cl_http_head *h)
{
    return connection_has(h, "keep-alive") && !connection_has(h, "close");
}

static int parse_version(cl_slice v, int *minor)
{
    CL_ENSURE(v.len == 8 && !memcmp(v.data, "HTTP/1.", 7) && (v.data[7] == '0' || v.data[7] == '1'), CL_EPARSE,
              "HTTP: unsupported protocol version");
    *minor = v.data[7] - '0';
    return CL_OK;
}

/* Origin-form ("/path?query"), "*" (OPTIONS), authority-form for
 * CONNECT.  The absolute-form ("http://host/path") is refused: its host
 * could differ from the Host header the app is given, and the app would
 * see a target no browser sends to an origin server. */
static int check_target_form(cl_slice method, cl_slice target)
{
    if (cl_slice_eq(method, "CONNECT")) {
        CL_ENSURE(target.data[0] != '/' && is_host_value(target) && memchr(target.data, ':', target.len),
                  CL_EPARSE, "HTTP: CONNECT needs a host:port target");
        return CL_OK;
    }
    if (target.len == 1 && target.data[0] == '*')
        return CL_OK; /* OPTIONS, and SSDP's M-SEARCH */
    CL_ENSURE(target.data[0] == '/', CL_EPARSE, "HTTP: the request target must be a path (origin-form)");
    return CL_OK;
}

bool cl_http_is_host_value(cl_slice s)
{
    if (s.len == 0 || !is_host_value(s))
        return false;
    /* no userinfo ("user@host"): is_host_value has no '@' already */
    return true;
}

static int locate_head(const uint8_t *buf, size_t len, size_t max_head, size_t *skip, size_t *end, bool *complete)
{
    *complete = false;
    size_t s = 0;
    while (s + 1 < len && buf[s] == '\r' && buf[s + 1] == '\n' && s < 8)
        s += 2; /* empty lines before a request line are tolerated (RFC 9112 2.2) */
    size_t scan = len < max_head ? len : max_head;
    size_t e = scan > s ? head_end(buf + s, scan - s) : 0;
    if (!e) {
        CL_ENSURE(len < max_head, CL_ELIMIT, "HTTP: head larger than %zu bytes", max_head);
        return CL_OK;
    }
    *skip = s;
    *end = s + e;
    *complete = true;
    return CL_OK;
}

int cl_http_parse_request(const uint8_t *buf, size_t len, size_t max_head, cl_http_head *h, bool *complete)
{
    size_t skip = 0, end = 0;
    CL_TRY(locate_head(buf, len, max_head, &skip, &end, complete));
    if (!*complete)
        return CL_OK;
    memset(h, 0, sizeof *h);
    cl_cursor c = cl_cursor_make(buf + skip, end - skip);
    cl_slice line;
    CL_TRY(read_line(&c, &line));
    const uint8_t *sp1 = memchr(line.data, ' ', line.len);
    CL_ENSURE(sp1, CL_EPARSE, "HTTP: malformed request line");
    const uint8_t *sp2 = memchr(sp1 + 1, ' ', line.len - (size_t)(sp1 + 1 - line.data));
    CL_ENSURE(sp2, CL_EPARSE, "HTTP: malformed request line");
    h->method = (cl_slice){line.data, (size_t)(sp1 - line.data)};
    h->target = (cl_slice){sp1 + 1, (size_t)(sp2 - sp1 - 1)};
    CL_ENSURE(is_token(h->method), CL_EPARSE, "HTTP: invalid method");
    CL_ENSURE(h->target.len > 0, CL_EPARSE, "HTTP: empty request target");
    for (size_t i = 0; i < h->target.len; i++)
        CL_ENSURE(h->target.data[i] > 0x20 && h->target.data[i] < 0x7f, CL_EPARSE,
                  "HTTP: invalid character in the request target");
    CL_TRY(parse_version((cl_slice){sp2 + 1, line.len - (size_t)(sp2 + 1 - line.data)}, &h->version_minor));
    CL_TRY(check_target_form(h->method, h->target));
    const uint8_t *q = memchr(h->target.data, '?', h->target.len);
    h->path = (cl_slice){h->target.data, q ? (size_t)(q - h->target.data) : h->target.len};
    h->query = q ? (cl_slice){q + 1, h->target.len - h->path.len - 1} : (cl_slice){NULL, 0};
    CL_TRY(parse_fields(&c, h));
    h->head_len = end;
    return interpret_fields(h, true);
}

int cl_http_parse_response(const uint8_t *buf, size_t len, size_t max_head, cl_slice request_method,
                           cl_http_head *h, bool *complete)
{
    size_t skip = 0, end = 0;
    CL_TRY(locate_head(buf, len, max_head, &skip, &end, complete));
    if (!*complete)
        return CL_OK;
    CL_ENSURE(skip == 0, CL_EPARSE, "HTTP: empty line before a status line");
    memset(h, 0, sizeof *h);
    cl_cursor c = cl_cursor_make(buf, end);
    cl_slice line;
    CL_TRY(read_line(&c, &line));
    CL_ENSURE(line.len >= 12 && line.data[8] == ' ', CL_EPARSE, "HTTP: malformed status line");
    CL_TRY(parse_version((cl_slice){line.data, 8}, &h->version_minor));
    int status = 0;
    for (int i = 9; i < 12; i++) {
        CL_ENSURE(line.data[i] >= '0' && line.data[i] <= '9', CL_EPARSE, "HTTP: malformed status code");
        status = status * 10 + (line.data[i] - '0');
    }
    CL_ENSURE(status >= 100 && status <= 599, CL_EPARSE, "HTTP: status code %d out of range", status);
    CL_ENSURE(line.len == 12 || line.data[12] == ' ', CL_EPARSE, "HTTP: malformed status line");
    h->status = status;
    h->reason = line.len > 13 ? (cl_slice){line.data + 13, line.len - 13} : (cl_slice){NULL, 0};
    CL_TRY(parse_fields(&c, h));
    h->head_len = end;
    CL_TRY(interpret_fields(h, false));
    if (status / 100 == 2 && cl_slice_eq(request_method, "CONNECT")) {
        /* the connection is a tunnel from the empty line on: framing
         * fields are ignored (RFC 9112 6.3) and it is never reused */
        h->body = CL_HTTP_BODY_NONE;
        h->keep_alive = false;
    } else if (status < 200 || status == 204 || status == 304 || cl_slice_eq(request_method, "HEAD")) {
        /* no body, whatever the headers say: the connection stays usable
         * unless Connection: close (interpret_fields assumed until-close) */
        h->body = CL_HTTP_BODY_NONE;
        h->keep_alive = h->version_minor >= 1 ? !has_close_token(h) : has_keep_alive_token(h);
    }
    return CL_OK;
}

const cl_slice *cl_http_header_get(const cl_http_head *head, const char *name)
{
    for (size_t i = 0; i < head->header_count; i++)
        if (cl_slice_eq_nocase(head->headers[i].name, name))
            return &head->headers[i].value;
    return NULL;
}

static bool slices_eq_nocase(cl_slice a, cl_slice b)
{
    if (a.len != b.len)
        return false;
    for (size_t i = 0; i < a.len; i++) {
        uint8_t x = a.data[i], y = b.data[i];
        if (x >= 'A' && x <= 'Z')
            x += 32;
        if (y >= 'A' && y <= 'Z')
            y += 32;
        if (x != y)
            return false;
    }
    return true;
}

/* The name as CGI-style gateways see it: lower case, '_' for '-'. */
static bool normalised_eq(cl_slice name, const char *text, size_t *underscores)
{
    size_t n = strlen(text);
    if (name.len != n)
        return false;
    size_t u = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = name.data[i];
        if (c == '_') {
            c = '-';
            u++;
        } else if (c >= 'A' && c <= 'Z') {
            c += 32;
        }
        if (c != (uint8_t)text[i])
            return false;
    }
    if (underscores)
        *underscores = u;
    return true;
}

static bool normalised_prefix(cl_slice name, const char *text)
{
    size_t n = strlen(text);
    return name.len >= n && normalised_eq((cl_slice){name.data, n}, text, NULL);
}

bool cl_http_is_proxy_owned(cl_slice name)
{
    /* Client-address and forwarding fields (RFC 7239 and the de facto ones
     * frameworks and CDNs read); any case, '_' for '-'. */
    static const char *const forwarding[] = {
        "forwarded",        "x-real-ip",           "x-client-ip",      "client-ip",
        "true-client-ip",   "x-cluster-client-ip", "cf-connecting-ip", "fastly-client-ip",
        "x-original-forwarded-for", "x-originating-ip", "x-remote-ip", "x-remote-addr",
    };
    if (normalised_prefix(name, "x-forwarded"))
        return true; /* X-Forwarded-For/-Proto/-Host/-Port/-Prefix/-Server/-Ssl, X-Forwarded */
    for (size_t i = 0; i < sizeof forwarding / sizeof forwarding[0]; i++)
        if (normalised_eq(name, forwarding[i], NULL))
            return true;
    /* Fields cloister writes itself, spelt with '_': a gateway that maps
     * both spellings to one variable (HTTP_HOST, HTTP_CONTENT_LENGTH) must
     * not see the client's. */
    static const char *const own[] = {"host", "content-length", "transfer-encoding", "connection"};
    for (size_t i = 0; i < sizeof own / sizeof own[0]; i++) {
        size_t underscores = 0;
        if (normalised_eq(name, own[i], &underscores) && underscores)
            return true;
    }
    return false;
}

bool cl_http_is_hop_by_hop(const cl_http_head *head, cl_slice name)
{
    /* Host and the framing fields are never the connection's: a sender
     * naming them in Connection must not make them vanish (RFC 9110 7.6.1). */
    if (cl_slice_eq_nocase(name, "host") || cl_slice_eq_nocase(name, "content-length"))
        return false;
    static const char *const fixed[] = {"connection", "keep-alive", "proxy-connection", "te",
                                        "transfer-encoding", "upgrade", "trailer", "proxy-authenticate",
                                        "proxy-authorization"};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        if (cl_slice_eq_nocase(name, fixed[i]))
            return true;
    for (size_t i = 0; i < head->header_count; i++) {
        if (!cl_slice_eq_nocase(head->headers[i].name, "connection"))
            continue;
        cl_slice v = head->headers[i].value;
        size_t start = 0;
        for (size_t k = 0; k <= v.len; k++) {
            if (k == v.len || v.data[k] == ',') {
                cl_slice item = trim_ows((cl_slice){v.data + start, k - start});
                if (item.len && slices_eq_nocase(item, name))
                    return true;
                start = k + 1;
            }
        }
    }
    return false;
}

enum {
    CH_SIZE,
    CH_SIZE_WS,
    CH_EXT,
    CH_SIZE_LF,
    CH_DATA,
    CH_DATA_CR,
    CH_DATA_LF,
    CH_TRAILER_START,
    CH_TRAILER_LINE,
    CH_TRAILER_LF,
    CH_LAST_LF,
    CH_DONE,
};

void cl_chunked_unconsume(cl_chunked *st, size_t n)
{
    if (n == 0)
        return;
    st->remaining += n;
    st->state = CH_DATA;
}

int cl_chunked_next(cl_chunked *st, const uint8_t *in, size_t len, size_t *consumed, size_t *data_offset,
                    size_t *data_len)
{
    size_t i = 0;
    *data_len = 0;
    *data_offset = 0;
    while (i < len && st->state != CH_DONE) {
        uint8_t c = in[i];
        switch (st->state) {
        case CH_SIZE: {
            int d = cl_hex_digit_value(c);
            if (d >= 0) {
                CL_ENSURE(st->size_digits < MAX_CHUNK_SIZE_DIGITS, CL_EPARSE, "chunked: chunk size too large");
                st->remaining = st->remaining * 16 + (uint64_t)d;
                st->size_digits++;
            } else {
                CL_ENSURE(st->size_digits > 0, CL_EPARSE, "chunked: missing chunk size");
                if (c == '\r')
                    st->state = CH_SIZE_LF;
                else if (c == ';') {
                    st->state = CH_EXT;
                    st->line_len = 0;
                } else if (c == ' ' || c == '\t')
                    st->state = CH_SIZE_WS;
                else
                    return cl_error_set(CL_EPARSE, "chunked: invalid chunk size");
            }
            i++;
            break;
        }
        case CH_SIZE_WS: /* BWS, then an extension or the end of the line: "5 6" is not a size */
            if (c == '\r')
                st->state = CH_SIZE_LF;
            else if (c == ';') {
                st->state = CH_EXT;
                st->line_len = 0;
            } else
                CL_ENSURE(c == ' ' || c == '\t', CL_EPARSE, "chunked: invalid character after the chunk size");
            i++;
            break;
        case CH_EXT:
            if (c == '\r')
                st->state = CH_SIZE_LF;
            else {
                CL_ENSURE(is_field_value_char(c) && ++st->line_len <= MAX_CHUNK_LINE, CL_EPARSE,
                          "chunked: invalid chunk extension");
            }
            i++;
            break;
        case CH_SIZE_LF:
            CL_ENSURE(c == '\n', CL_EPARSE, "chunked: chunk size line not ended by CRLF");
            i++;
            st->state = st->remaining ? CH_DATA : CH_TRAILER_START;
            break;
        case CH_DATA: {
            size_t n = len - i;
            if (n > st->remaining)
                n = (size_t)st->remaining;
            st->remaining -= n;
            if (!st->remaining)
                st->state = CH_DATA_CR;
            *data_offset = i;
            *data_len = n;
            i += n;
            *consumed = i;
            return CL_OK; /* one data span per call */
        }
        case CH_DATA_CR:
            CL_ENSURE(c == '\r', CL_EPARSE, "chunked: chunk data not followed by CRLF");
            st->state = CH_DATA_LF;
            i++;
            break;
        case CH_DATA_LF:
            CL_ENSURE(c == '\n', CL_EPARSE, "chunked: chunk data not followed by CRLF");
            st->state = CH_SIZE;
            st->size_digits = 0;
            st->remaining = 0;
            i++;
            break;
        case CH_TRAILER_START:
            if (c == '\r')
                st->state = CH_LAST_LF;
            else {
                CL_ENSURE(c != '\n', CL_EPARSE, "chunked: bare LF in trailers");
                st->state = CH_TRAILER_LINE;
                st->line_len = 1;
            }
            i++;
            break;
        case CH_TRAILER_LINE:
            if (c == '\r')
                st->state = CH_TRAILER_LF;
            else
                CL_ENSURE(is_field_value_char(c) && ++st->line_len <= MAX_CHUNK_LINE, CL_EPARSE,
                          "chunked: invalid trailer line");
            i++;
            break;
        case CH_TRAILER_LF:
            CL_ENSURE(c == '\n', CL_EPARSE, "chunked: trailer line not ended by CRLF");
            st->state = CH_TRAILER_START;
            i++;
            break;
        case CH_LAST_LF:
            CL_ENSURE(c == '\n', CL_EPARSE, "chunked: last chunk not ended by CRLF");
            st->state = CH_DONE;
            st->done = true;
            i++;
            break;
        }
    }
    *consumed = i;
    return CL_OK;
}

int cl_http_query_param(cl_slice query, const char *name, char *out, size_t out_len, bool *found)
{
    *found = false;
    CL_ENSURE(out_len > 0, CL_EINVAL, "no room for query parameter %s", name);
    if (query.len == 0)
        return CL_OK; /* also a target without '?', whose query is {NULL, 0} */
    size_t name_len = strlen(name), start = 0;
    for (size_t i = 0; i <= query.len; i++) {
        if (i < query.len && query.data[i] != '&')
            continue;
        cl_slice pair = {query.data + start, i - start};
        start = i + 1;
        if (pair.len < name_len || memcmp(pair.data, name, name_len) != 0)
            continue;
        if (pair.len > name_len && pair.data[name_len] != '=')
            continue;
        size_t o = 0;
        for (size_t k = name_len + (pair.len > name_len); k < pair.len; k++) {
            uint8_t c = pair.data[k];
            if (c == '%') {
                int hi = k + 1 < pair.len ? cl_hex_digit_value(pair.data[k + 1]) : -1;
                int lo = k + 2 < pair.len ? cl_hex_digit_value(pair.data[k + 2]) : -1;
                CL_ENSURE(hi >= 0 && lo >= 0, CL_EPARSE, "bad percent-encoding in query parameter %s", name);
                c = (uint8_t)(hi << 4 | lo);
                /* the value is returned as a C string: a NUL would cut it short unseen */
                CL_ENSURE(c != 0, CL_EPARSE, "NUL (%%00) in query parameter %s", name);
                k += 2;
            } else if (c == '+') {
                c = ' ';
            }
            CL_ENSURE(o + 1 < out_len, CL_ELIMIT, "query parameter %s is too long", name);
            out[o++] = (char)c;
        }
        out[o] = '\0';
        *found = true;
        return CL_OK;
    }
    return CL_OK;
}

const char *cl_http_status_text(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 417: return "Expectation Failed";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    }
    return "Unknown";
}

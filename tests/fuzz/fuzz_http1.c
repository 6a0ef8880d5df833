/* The HTTP/1.1 parser in front of the public listener (lib/core/http1.c):
 * request heads, response heads and the chunked decoder, fed arbitrary
 * bytes.  The first byte picks the part (and, for responses, the request
 * method; for chunked, how the input is cut).  Beyond "no crash, no read
 * past the input" (ASan), it checks:
 *  - an accepted head lies within the input and the limit, every slice
 *    of it inside the head, its framing consistent, and every strict
 *    prefix of it is "incomplete", never a different head;
 *  - the chunked decoder gives the same data and the same outcome whether
 *    the input comes whole, byte by byte or in random pieces, and when the
 *    receiver takes only part of each span (cl_chunked_unconsume). */
#include "cloister/core/http.h"

#include <stdlib.h>
#include <string.h>

#define MAX_HEAD 4096

static void inside(cl_slice s, const uint8_t *base, size_t len)
{
    if (s.len && (s.data < base || s.data + s.len > base + len))
        abort();
}

static void check_head(const cl_http_head *h, const uint8_t *data, size_t size, bool request)
{
    if (h->head_len == 0 || h->head_len > size || h->head_len > MAX_HEAD || h->header_count > CL_HTTP_MAX_HEADERS)
        abort();
    for (size_t i = 0; i < h->header_count; i++) {
        inside(h->headers[i].name, data, h->head_len);
        inside(h->headers[i].value, data, h->head_len);
        if (h->headers[i].name.len == 0)
            abort();
    }
    inside(h->host, data, h->head_len);
    if (request) {
        inside(h->method, data, h->head_len);
        inside(h->target, data, h->head_len);
        inside(h->path, data, h->head_len);
        inside(h->query, data, h->head_len);
        if (h->target.len == 0 || h->method.len == 0)
            abort();
        if (h->body == CL_HTTP_BODY_UNTIL_CLOSE || (h->body == CL_HTTP_BODY_LENGTH && h->content_length == 0))
            abort();
        /* origin-form, "*" or CONNECT's authority: never an absolute URI */
        if (h->target.data[0] != '/' && h->target.data[0] != '*' && !cl_slice_eq(h->method, "CONNECT"))
            abort();
    } else if (h->status < 100 || h->status > 599) {
        abort();
    }
}

static void fuzz_head(const uint8_t *data, size_t size, bool request, cl_slice method)
{
    static cl_http_head h, p;
    bool complete = false;
    int rc = request ? cl_http_parse_request(data, size, MAX_HEAD, &h, &complete)
                     : cl_http_parse_response(data, size, MAX_HEAD, method, &h, &complete);
    if (rc < 0 || !complete) {
        if (rc == CL_OK && size >= MAX_HEAD)
            abort(); /* past the limit, the answer is CL_ELIMIT */
        return;
    }
    check_head(&h, data, size, request);
    size_t cuts[] = {h.head_len - 1, h.head_len / 2, 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        bool c = true;
        int prc = request ? cl_http_parse_request(data, cuts[i], MAX_HEAD, &p, &c)
                          : cl_http_parse_response(data, cuts[i], MAX_HEAD, method, &p, &c);
        if (prc != CL_OK || c)
            abort();
    }
}

typedef struct decoded {
    uint8_t *data;
    size_t len;
    int rc;
    bool done;
    size_t consumed; /* input used up to the end of the last chunk */
} decoded;

static uint32_t next_rand(uint32_t *s)
{
    *s = *s * 1103515245u + 12345u;
    return *s >> 16;
}

/* Decodes in pieces (piece 0: whole); take_mod > 0 takes only part of
 * each span and gives the rest back. */
static void decode(const uint8_t *in, size_t len, size_t piece, uint32_t seed, unsigned take_mod, decoded *out)
{
    cl_chunked st;
    memset(&st, 0, sizeof st);
    memset(out, 0, sizeof *out);
    out->data = malloc(len + 1);
    if (!out->data)
        abort();
    size_t pos = 0;
    unsigned stuck = 0;
    while (pos < len && !st.done) {
        size_t n = len - pos;
        if (piece == 1)
            n = 1;
        else if (piece > 1)
            n = 1 + next_rand(&seed) % (piece < n ? piece : n);
        if (n > len - pos)
            n = len - pos;
        size_t used = 0, off = 0, dlen = 0;
        int rc = cl_chunked_next(&st, in + pos, n, &used, &off, &dlen);
        if (rc < 0) {
            out->rc = rc;
            break;
        }
        if (used > n || (dlen && off + dlen > used))
            abort();
        size_t take = dlen;
        if (take_mod && dlen)
            take = next_rand(&seed) % (take_mod + 1) == 0 ? 0 : dlen - next_rand(&seed) % dlen;
        if (take < dlen) {
            cl_chunked_unconsume(&st, dlen - take);
            used -= dlen - take;
        }
        memcpy(out->data + out->len, in + pos + off, take);
        out->len += take;
        pos += used;
        /* a receiver that takes nothing several times in a row must still
         * get somewhere once it takes */
        stuck = used ? 0 : stuck + 1;
        if (stuck > 64 && !take_mod)
            abort();
        if (stuck > 10000)
            abort();
    }
    out->done = st.done;
    out->consumed = pos;
}

static void fuzz_chunked(const uint8_t *data, size_t size, uint8_t mode)
{
    decoded whole, bytes, pieces, partial;
    decode(data, size, 0, 0, 0, &whole);
    decode(data, size, 1, 0, 0, &bytes);
    decode(data, size, 2 + mode % 31, mode, 0, &pieces);
    decode(data, size, 7, mode, 3, &partial);
    const decoded *all[] = {&bytes, &pieces, &partial};
    for (size_t i = 0; i < 3; i++) {
        const decoded *d = all[i];
        if ((d->rc < 0) != (whole.rc < 0) || d->done != whole.done)
            abort();
        if (!whole.rc && (d->len != whole.len || memcmp(d->data, whole.data, whole.len) != 0))
            abort();
        if (whole.done && d->consumed != whole.consumed)
            abort();
    }
    if (whole.done && whole.len > size)
        abort();
    free(whole.data);
    free(bytes.data);
    free(pieces.data);
    free(partial.data);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t sel = data[0];
    data++;
    size--;
    static const char *const methods[] = {"GET", "HEAD", "CONNECT", "POST"};
    switch (sel % 3) {
    case 0:
        fuzz_head(data, size, true, (cl_slice){NULL, 0});
        break;
    case 1: {
        const char *m = methods[(sel / 3) % 4];
        fuzz_head(data, size, false, (cl_slice){(const uint8_t *)m, strlen(m)});
        break;
    }
    default:
        fuzz_chunked(data, size, sel / 3);
        break;
    }
    return 0;
}

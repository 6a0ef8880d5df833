#include "cloister/core/proxy_protocol.h"

#include "cloister/core/cursor.h"

#include <netinet/in.h>
#include <string.h>
#include <sys/un.h>

#define INET_BLOCK 12
#define INET6_BLOCK 36
#define UNIX_PATH_BYTES 108
#define UNIX_BLOCK (2 * UNIX_PATH_BYTES)
#define UNIQUE_ID_MAX 128
#define SSL_FIXED 5 /* client (1) and verify (4) */

_Static_assert(sizeof(((struct sockaddr_un *)0)->sun_path) == UNIX_PATH_BYTES, "sun_path is 108 bytes");
_Static_assert(sizeof CL_PP2_SIGNATURE - 1 == CL_PP2_SIGNATURE_LEN, "signature length");

uint32_t cl_crc32c(uint32_t crc, const uint8_t *data, size_t len)
{
    crc = ~crc;
    for (size_t i = 0; i < len; i++) {
        crc ^= data[i];
        for (int k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
    }
    return ~crc;
}

/* ---- parsing ---------------------------------------------------------------- */

static size_t block_len(int family)
{
    switch (family) {
    case CL_PP2_AF_INET: return INET_BLOCK;
    case CL_PP2_AF_INET6: return INET6_BLOCK;
    case CL_PP2_AF_UNIX: return UNIX_BLOCK;
    default: return 0;
    }
}

static int check_version_command(uint8_t b)
{
    CL_ENSURE((b >> 4) == 2, CL_EPARSE, "PROXY protocol: version %u, only version 2 is supported", b >> 4);
    CL_ENSURE((b & 0x0f) <= CL_PP2_PROXY, CL_EPARSE, "PROXY protocol: unknown command %u", b & 0x0f);
    return CL_OK;
}

static int check_family(uint8_t b)
{
    unsigned family = b >> 4, transport = b & 0x0f;
    CL_ENSURE(family <= CL_PP2_AF_UNIX, CL_EPARSE, "PROXY protocol: unknown address family %u", family);
    CL_ENSURE(transport <= CL_PP2_DGRAM, CL_EPARSE, "PROXY protocol: unknown transport %u", transport);
    /* UNSPEC goes with UNSPEC only; a real family needs a real transport */
    CL_ENSURE((family == CL_PP2_AF_UNSPEC) == (transport == CL_PP2_UNSPEC), CL_EPARSE,
              "PROXY protocol: invalid family/transport byte 0x%02x", b);
    return CL_OK;
}

static int read_inet(cl_cursor *c, cl_pp2_header *out)
{
    const uint8_t *src, *dst;
    uint16_t sport, dport;
    CL_TRY(cl_cursor_bytes(c, 4, &src));
    CL_TRY(cl_cursor_bytes(c, 4, &dst));
    CL_TRY(cl_cursor_be16(c, &sport));
    CL_TRY(cl_cursor_be16(c, &dport));
    struct sockaddr_in *s = (struct sockaddr_in *)&out->src, *d = (struct sockaddr_in *)&out->dst;
    s->sin_family = d->sin_family = AF_INET;
    memcpy(&s->sin_addr, src, 4);
    memcpy(&d->sin_addr, dst, 4);
    s->sin_port = htons(sport);
    d->sin_port = htons(dport);
    return CL_OK;
}

static int read_inet6(cl_cursor *c, cl_pp2_header *out)
{
    const uint8_t *src, *dst;
    uint16_t sport, dport;
    CL_TRY(cl_cursor_bytes(c, 16, &src));
    CL_TRY(cl_cursor_bytes(c, 16, &dst));
    CL_TRY(cl_cursor_be16(c, &sport));
    CL_TRY(cl_cursor_be16(c, &dport));
    struct sockaddr_in6 *s = (struct sockaddr_in6 *)&out->src, *d = (struct sockaddr_in6 *)&out->dst;
    s->sin6_family = d->sin6_family = AF_INET6;
    memcpy(&s->sin6_addr, src, 16);
    memcpy(&d->sin6_addr, dst, 16);
    s->sin6_port = htons(sport);
    d->sin6_port = htons(dport);
    return CL_OK;
}

static int read_unix(cl_cursor *c, cl_pp2_header *out)
{
    const uint8_t *src, *dst;
    CL_TRY(cl_cursor_bytes(c, UNIX_PATH_BYTES, &src));
    CL_TRY(cl_cursor_bytes(c, UNIX_PATH_BYTES, &dst));
    struct sockaddr_un *s = (struct sockaddr_un *)&out->src, *d = (struct sockaddr_un *)&out->dst;
    s->sun_family = d->sun_family = AF_UNIX;
    memcpy(s->sun_path, src, UNIX_PATH_BYTES);
    memcpy(d->sun_path, dst, UNIX_PATH_BYTES);
    return CL_OK;
}

/* SSL: client flags, verify result, then sub-TLVs that fill it exactly. */
static int check_ssl_tlv(const uint8_t *value, size_t len)
{
    CL_ENSURE(len >= SSL_FIXED, CL_EPARSE, "PROXY protocol: SSL TLV of %zu bytes, at least %d needed", len,
              SSL_FIXED);
    cl_cursor c = cl_cursor_make(value + SSL_FIXED, len - SSL_FIXED);
    while (!cl_cursor_at_end(&c)) {
        uint8_t type;
        uint16_t n;
        const uint8_t *v;
        if (cl_cursor_u8(&c, &type) < 0 || cl_cursor_be16(&c, &n) < 0 || cl_cursor_bytes(&c, n, &v) < 0)
            return cl_error_set(CL_EPARSE, "PROXY protocol: SSL TLV holds a truncated sub-TLV");
    }
    return CL_OK;
}

static int check_tlvs(const uint8_t *header, size_t header_len, cl_cursor *c)
{
    bool seen_crc = false;
    while (!cl_cursor_at_end(c)) {
        size_t at = c->pos;
        uint8_t type;
        uint16_t n;
        const uint8_t *v;
        if (cl_cursor_u8(c, &type) < 0 || cl_cursor_be16(c, &n) < 0 || cl_cursor_bytes(c, n, &v) < 0)
            return cl_error_set(CL_EPARSE, "PROXY protocol: truncated TLV at offset %zu", CL_PP2_FIXED_LEN + at);
        switch (type) {
        case CL_PP2_TYPE_CRC32C: {
            CL_ENSURE(!seen_crc, CL_EPARSE, "PROXY protocol: two CRC32C TLVs");
            CL_ENSURE(n == 4, CL_EPARSE, "PROXY protocol: CRC32C TLV of %u bytes, 4 expected", n);
            seen_crc = true;
            size_t value_at = (size_t)(v - header);
            uint32_t want = (uint32_t)v[0] << 24 | (uint32_t)v[1] << 16 | (uint32_t)v[2] << 8 | v[3];
            static const uint8_t zeros[4];
            uint32_t crc = cl_crc32c(0, header, value_at);
            crc = cl_crc32c(crc, zeros, 4);
            crc = cl_crc32c(crc, header + value_at + 4, header_len - value_at - 4);
            CL_ENSURE(crc == want, CL_EPARSE, "PROXY protocol: CRC32C mismatch (header says %08x, computed %08x)",
                      want, crc);
            break;
        }
        case CL_PP2_TYPE_UNIQUE_ID:
            CL_ENSURE(n <= UNIQUE_ID_MAX, CL_EPARSE, "PROXY protocol: UNIQUE_ID TLV of %u bytes, at most %d", n,
                      UNIQUE_ID_MAX);
            break;
        case CL_PP2_TYPE_SSL:
            CL_TRY(check_ssl_tlv(v, n));
            break;
        case CL_PP2_TYPE_AWS:
            CL_ENSURE(n >= 1, CL_EPARSE, "PROXY protocol: empty AWS TLV (a subtype byte is required)");
            break;
        default: /* other types carry opaque values the receiver may ignore */
            break;
        }
    }
    return CL_OK;
}

int cl_pp2_parse(const uint8_t *buf, size_t len, cl_pp2_header *out, bool *complete)
{
    *complete = false;
    size_t sig = len < CL_PP2_SIGNATURE_LEN ? len : CL_PP2_SIGNATURE_LEN;
    CL_ENSURE(memcmp(buf, CL_PP2_SIGNATURE, sig) == 0, CL_EPARSE,
              "not a PROXY protocol v2 header (the 12-byte signature does not match)");
    /* reject what can already be judged, before waiting for more */
    if (len > CL_PP2_SIGNATURE_LEN)
        CL_TRY(check_version_command(buf[12]));
    if (len > CL_PP2_SIGNATURE_LEN + 1)
        CL_TRY(check_family(buf[13]));
    if (len < CL_PP2_FIXED_LEN)
        return CL_OK;

    cl_cursor c = cl_cursor_make(buf, len);
    const uint8_t *skip;
    uint8_t ver_cmd, fam;
    uint16_t body_len;
    CL_TRY(cl_cursor_bytes(&c, CL_PP2_SIGNATURE_LEN, &skip));
    CL_TRY(cl_cursor_u8(&c, &ver_cmd));
    CL_TRY(cl_cursor_u8(&c, &fam));
    CL_TRY(cl_cursor_be16(&c, &body_len));
    int family = fam >> 4;
    size_t need = block_len(family);
    CL_ENSURE(body_len >= need, CL_EPARSE, "PROXY protocol: length %u is shorter than the %zu-byte address block",
              body_len, need);
    if (cl_cursor_remaining(&c) < body_len)
        return CL_OK;

    cl_pp2_header h;
    memset(&h, 0, sizeof h);
    h.command = ver_cmd & 0x0f;
    h.family = family;
    h.transport = fam & 0x0f;
    h.header_len = CL_PP2_FIXED_LEN + (size_t)body_len;
    cl_cursor body = cl_cursor_make(buf + CL_PP2_FIXED_LEN, body_len);
    switch (family) {
    case CL_PP2_AF_INET: CL_TRY(read_inet(&body, &h)); break;
    case CL_PP2_AF_INET6: CL_TRY(read_inet6(&body, &h)); break;
    case CL_PP2_AF_UNIX: CL_TRY(read_unix(&body, &h)); break;
    default: break;
    }
    h.tlvs.data = body.data + body.pos;
    h.tlvs.len = cl_cursor_remaining(&body);
    CL_TRY(check_tlvs(buf, h.header_len, &body));
    if (h.command == CL_PP2_LOCAL) {
        /* the receiver must ignore the addresses of a LOCAL header */
        memset(&h.src, 0, sizeof h.src);
        memset(&h.dst, 0, sizeof h.dst);
    }
    *out = h;
    *complete = true;
    return CL_OK;
}

int cl_pp2_find_tlv(const cl_pp2_header *h, uint8_t type, cl_slice *value, bool *found)
{
    *found = false;
    cl_cursor c = cl_cursor_make(h->tlvs.data, h->tlvs.len);
    while (!cl_cursor_at_end(&c)) {
        uint8_t t;
        uint16_t n;
        const uint8_t *v;
        CL_TRY(cl_cursor_u8(&c, &t));
        CL_TRY(cl_cursor_be16(&c, &n));
        CL_TRY(cl_cursor_bytes(&c, n, &v));
        if (t == type) {
            value->data = v;
            value->len = n;
            *found = true;
            return CL_OK;
        }
    }
    return CL_OK;
}

/* ---- encoding ---------------------------------------------------------------- */

static bool is_mapped(const struct sockaddr_in6 *a)
{
    return IN6_IS_ADDR_V4MAPPED(&a->sin6_addr);
}

static void to_inet(const struct sockaddr *sa, struct sockaddr_in *out)
{
    memset(out, 0, sizeof *out);
    out->sin_family = AF_INET;
    if (sa->sa_family == AF_INET) {
        *out = *(const struct sockaddr_in *)sa;
    } else {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
        memcpy(&out->sin_addr, a->sin6_addr.s6_addr + 12, 4);
        out->sin_port = a->sin6_port;
    }
}

static void to_inet6(const struct sockaddr *sa, struct sockaddr_in6 *out)
{
    memset(out, 0, sizeof *out);
    out->sin6_family = AF_INET6;
    if (sa->sa_family == AF_INET6) {
        *out = *(const struct sockaddr_in6 *)sa;
    } else {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        out->sin6_addr.s6_addr[10] = 0xff;
        out->sin6_addr.s6_addr[11] = 0xff;
        memcpy(out->sin6_addr.s6_addr + 12, &a->sin_addr, 4);
        out->sin6_port = a->sin_port;
    }
}

static bool is_ip(int f)
{
    return f == AF_INET || f == AF_INET6;
}

static int put_addresses(const struct sockaddr *src, const struct sockaddr *dst, cl_buf *out, uint8_t *family_byte)
{
    int sf = src ? src->sa_family : AF_UNSPEC, df = dst ? dst->sa_family : AF_UNSPEC;
    if (is_ip(sf) && is_ip(df)) {
        bool v4 = (sf == AF_INET || is_mapped((const struct sockaddr_in6 *)src)) &&
                  (df == AF_INET || is_mapped((const struct sockaddr_in6 *)dst));
        if (v4) {
            struct sockaddr_in s, d;
            to_inet(src, &s);
            to_inet(dst, &d);
            *family_byte = CL_PP2_AF_INET << 4 | CL_PP2_STREAM;
            CL_TRY(cl_buf_append(out, &s.sin_addr, 4));
            CL_TRY(cl_buf_append(out, &d.sin_addr, 4));
            CL_TRY(cl_buf_append_be(out, ntohs(s.sin_port), 2));
            return cl_buf_append_be(out, ntohs(d.sin_port), 2);
        }
        struct sockaddr_in6 s, d;
        to_inet6(src, &s);
        to_inet6(dst, &d);
        *family_byte = CL_PP2_AF_INET6 << 4 | CL_PP2_STREAM;
        CL_TRY(cl_buf_append(out, &s.sin6_addr, 16));
        CL_TRY(cl_buf_append(out, &d.sin6_addr, 16));
        CL_TRY(cl_buf_append_be(out, ntohs(s.sin6_port), 2));
        return cl_buf_append_be(out, ntohs(d.sin6_port), 2);
    }
    if (sf == AF_UNIX && df == AF_UNIX) {
        *family_byte = CL_PP2_AF_UNIX << 4 | CL_PP2_STREAM;
        CL_TRY(cl_buf_append(out, ((const struct sockaddr_un *)src)->sun_path, UNIX_PATH_BYTES));
        return cl_buf_append(out, ((const struct sockaddr_un *)dst)->sun_path, UNIX_PATH_BYTES);
    }
    *family_byte = CL_PP2_AF_UNSPEC << 4 | CL_PP2_UNSPEC;
    return CL_OK;
}

static int encode(int command, const struct sockaddr *src, const struct sockaddr *dst, const cl_pp2_tlv *tlvs,
                  size_t tlv_count, bool crc, cl_buf *out)
{
    size_t start = out->len;
    CL_TRY(cl_buf_append(out, CL_PP2_SIGNATURE, CL_PP2_SIGNATURE_LEN));
    CL_TRY(cl_buf_append_u8(out, (uint8_t)(0x20 | command)));
    CL_TRY(cl_buf_append_u8(out, 0));  /* family, set below */
    CL_TRY(cl_buf_append_be(out, 0, 2)); /* length, set below */
    uint8_t family_byte = 0;
    if (command == CL_PP2_PROXY)
        CL_TRY(put_addresses(src, dst, out, &family_byte));
    for (size_t i = 0; i < tlv_count; i++) {
        CL_TRY(cl_buf_append_u8(out, tlvs[i].type));
        CL_TRY(cl_buf_append_be(out, tlvs[i].len, 2));
        CL_TRY(cl_buf_append(out, tlvs[i].value, tlvs[i].len));
    }
    size_t crc_at = 0;
    if (crc) {
        CL_TRY(cl_buf_append_u8(out, CL_PP2_TYPE_CRC32C));
        CL_TRY(cl_buf_append_be(out, 4, 2));
        crc_at = out->len;
        CL_TRY(cl_buf_append_be(out, 0, 4));
    }
    size_t body = out->len - start - CL_PP2_FIXED_LEN;
    if (body > 65535) {
        out->len = start;
        return cl_error_set(CL_ELIMIT, "PROXY protocol header would be %zu bytes, at most 65535 after the fixed part",
                            body);
    }
    uint8_t *h = out->data + start;
    h[13] = family_byte;
    h[14] = (uint8_t)(body >> 8);
    h[15] = (uint8_t)body;
    if (crc) {
        uint32_t v = cl_crc32c(0, h, out->len - start);
        uint8_t *p = out->data + crc_at;
        p[0] = (uint8_t)(v >> 24);
        p[1] = (uint8_t)(v >> 16);
        p[2] = (uint8_t)(v >> 8);
        p[3] = (uint8_t)v;
    }
    return CL_OK;
}

int cl_pp2_encode(const struct sockaddr *src, const struct sockaddr *dst, const cl_pp2_tlv *tlvs, size_t tlv_count,
                  bool crc, cl_buf *out)
{
    return encode(CL_PP2_PROXY, src, dst, tlvs, tlv_count, crc, out);
}

int cl_pp2_encode_local(cl_buf *out)
{
    return encode(CL_PP2_LOCAL, NULL, NULL, NULL, 0, false, out);
}

/* The key-holder protocol: framing, typed fields with limits, and the
 * request/reply codecs (see cloister/keyholder_proto.h). */
#include "cloister/core/keyholder_proto.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

static int read_full(int fd, uint8_t *p, size_t n, bool *eof_at_start)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, p + got, n - got);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return cl_error_set(CL_EIO, "key-holder socket: timed out");
            return cl_error_set(CL_EIO, "key-holder socket: %s", strerror(errno));
        }
        if (r == 0) {
            if (got == 0 && eof_at_start)
                *eof_at_start = true;
            return cl_error_set(CL_EIO, "key-holder socket: closed by the peer");
        }
        got += (size_t)r;
    }
    return CL_OK;
}

int cl_kh_read_frame(int fd, size_t max, cl_buf *body, bool *eof)
{
    uint8_t hdr[4];
    bool at_start = false;
    if (eof)
        *eof = false;
    body->len = 0;
    int rc = read_full(fd, hdr, 4, &at_start);
    if (rc < 0) {
        if (eof)
            *eof = at_start;
        return rc;
    }
    uint32_t n = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 | (uint32_t)hdr[2] << 8 | hdr[3];
    if (max > CL_KH_MAX_FRAME)
        max = CL_KH_MAX_FRAME;
    CL_ENSURE(n >= 1 && n <= max, CL_EPARSE, "key-holder frame length %u outside 1..%zu", n, max);
    CL_TRY(cl_buf_reserve(body, n));
    CL_TRY(read_full(fd, body->data, n, NULL));
    body->len = n;
    return CL_OK;
}

int cl_kh_write_frame(int fd, const uint8_t *body, size_t len)
{
    CL_ENSURE(len >= 1 && len <= CL_KH_MAX_FRAME, CL_ELIMIT, "key-holder frame of %zu bytes", len);
    uint8_t hdr[4] = {(uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8), (uint8_t)len};
    struct iovec iov[2] = {{hdr, 4}, {(void *)body, len}};
    size_t total = 4 + len, sent = 0;
    while (sent < total) {
        struct msghdr m = {0};
        /* skip what was sent */
        struct iovec cur[2];
        int n = 0;
        size_t skip = sent;
        for (int i = 0; i < 2; i++) {
            if (skip >= iov[i].iov_len) {
                skip -= iov[i].iov_len;
                continue;
            }
            cur[n].iov_base = (uint8_t *)iov[i].iov_base + skip;
            cur[n].iov_len = iov[i].iov_len - skip;
            skip = 0;
            n++;
        }
        m.msg_iov = cur;
        m.msg_iovlen = (size_t)n;
        ssize_t w = sendmsg(fd, &m, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return cl_error_set(CL_EIO, "key-holder socket: %s", strerror(errno));
        }
        sent += (size_t)w;
    }
    return CL_OK;
}

int cl_kh_put_str(cl_buf *b, const void *s, size_t len)
{
    CL_ENSURE(len <= 0xffff, CL_ELIMIT, "string of %zu bytes", len);
    CL_TRY(cl_buf_append_be(b, len, 2));
    return cl_buf_append(b, s, len);
}

int cl_kh_put_blob(cl_buf *b, const void *s, size_t len)
{
    CL_ENSURE(len <= CL_KH_MAX_FRAME, CL_ELIMIT, "blob of %zu bytes", len);
    CL_TRY(cl_buf_append_be(b, len, 4));
    return cl_buf_append(b, s, len);
}

/* be16 length + bytes, binary (an object's CKA_ID) */
static int get_bytes16(cl_cursor *c, size_t max, cl_slice *out)
{
    uint16_t n;
    CL_TRY(cl_cursor_be16(c, &n));
    CL_ENSURE(n <= max, CL_ELIMIT, "field of %u bytes, limit %zu", n, max);
    CL_TRY(cl_cursor_bytes(c, n, &out->data));
    out->len = n;
    return CL_OK;
}

int cl_kh_get_str(cl_cursor *c, size_t max, cl_slice *out)
{
    uint16_t n;
    CL_TRY(cl_cursor_be16(c, &n));
    CL_ENSURE(n <= max, CL_ELIMIT, "string of %u bytes, limit %zu", n, max);
    CL_TRY(cl_cursor_bytes(c, n, &out->data));
    out->len = n;
    CL_ENSURE(memchr(out->data, 0, n) == NULL, CL_EPARSE, "string with a NUL byte");
    return CL_OK;
}

int cl_kh_get_blob(cl_cursor *c, size_t max, cl_slice *out)
{
    uint32_t n;
    CL_TRY(cl_cursor_be32(c, &n));
    CL_ENSURE(n <= max, CL_ELIMIT, "blob of %u bytes, limit %zu", n, max);
    CL_TRY(cl_cursor_bytes(c, n, &out->data));
    out->len = n;
    return CL_OK;
}

bool cl_kh_label_valid(cl_slice label)
{
    if (label.len < 1 || label.len > CL_KH_LABEL_MAX)
        return false;
    for (size_t i = 0; i < label.len; i++) {
        uint8_t ch = label.data[i];
        /* printable ASCII without the characters a PKCS#11 URI or an nginx
         * directive would need escaped */
        if (ch <= 0x20 || ch >= 0x7f || ch == ';' || ch == '?' || ch == '%' || ch == '"' || ch == '\'' ||
            ch == '\\' || ch == '/' || ch == '&' || ch == '=')
            return false;
    }
    return true;
}

int cl_kh_request_encode(cl_buf *b, const cl_kh_request *r)
{
    CL_TRY(cl_buf_append_u8(b, r->type));
    switch (r->type) {
    case CL_KH_LIST_TOKENS:
    case CL_KH_STATUS:
        return CL_OK;
    case CL_KH_LOGIN:
        CL_TRY(cl_buf_append_be(b, r->slot, 4));
        return cl_kh_put_str(b, r->pin.data, r->pin.len);
    case CL_KH_LOGOUT:
    case CL_KH_LIST_OBJECTS:
        return cl_buf_append_be(b, r->slot, 4);
    case CL_KH_GET_OBJECT:
        CL_TRY(cl_buf_append_be(b, r->slot, 4));
        return cl_buf_append_be(b, r->handle, 4);
    case CL_KH_SIGN:
    case CL_KH_DECRYPT:
        CL_TRY(cl_buf_append_be(b, r->slot, 4));
        CL_TRY(cl_buf_append_be(b, r->handle, 4));
        CL_TRY(cl_buf_append_u8(b, (uint8_t)r->op));
        CL_TRY(cl_buf_append_u8(b, r->hash));
        CL_TRY(cl_buf_append_u8(b, r->mgf_hash));
        if (r->type == CL_KH_SIGN)
            CL_TRY(cl_buf_append_be(b, r->salt_len, 4));
        else
            CL_TRY(cl_kh_put_blob(b, r->oaep_label.data, r->oaep_label.len));
        return cl_kh_put_blob(b, r->data.data, r->data.len);
    case CL_KH_PUT_TOKEN:
        CL_TRY(cl_kh_put_str(b, r->label.data, r->label.len));
        CL_TRY(cl_kh_put_str(b, r->pin.data, r->pin.len));
        CL_TRY(cl_kh_put_str(b, r->object_label.data, r->object_label.len));
        CL_TRY(cl_buf_append_u8(b, r->key_source));
        CL_TRY(cl_kh_put_blob(b, r->key_ref.data, r->key_ref.len));
        return cl_kh_put_blob(b, r->chain.data, r->chain.len);
    case CL_KH_DELETE_TOKEN:
        return cl_kh_put_str(b, r->label.data, r->label.len);
    default:
        return cl_error_set(CL_EINVAL, "no request of type 0x%02x", r->type);
    }
}

static bool is_hash(uint8_t h)
{
    return h <= CL_KH_HASH_SHA512;
}

int cl_kh_request_decode(const uint8_t *data, size_t len, bool provisioning, cl_kh_request *out)
{
    memset(out, 0, sizeof *out);
    cl_cursor c = cl_cursor_make(data, len);
    CL_TRY(cl_cursor_u8(&c, &out->type));
    bool prov_type = out->type >= CL_KH_PUT_TOKEN && out->type <= CL_KH_STATUS;
    bool token_type = out->type >= CL_KH_LIST_TOKENS && out->type <= CL_KH_GET_OBJECT;
    if (provisioning ? !prov_type : !token_type)
        return cl_error_set(CL_ENOTFOUND, "message type 0x%02x is not one of the %s socket", out->type,
                            provisioning ? "provisioning" : "token");
    uint8_t op = 0;
    switch (out->type) {
    case CL_KH_LIST_TOKENS:
    case CL_KH_STATUS:
        break;
    case CL_KH_LOGIN:
        CL_TRY(cl_cursor_be32(&c, &out->slot));
        CL_TRY(cl_kh_get_str(&c, CL_KH_PIN_MAX, &out->pin));
        break;
    case CL_KH_LOGOUT:
    case CL_KH_LIST_OBJECTS:
        CL_TRY(cl_cursor_be32(&c, &out->slot));
        break;
    case CL_KH_GET_OBJECT:
        CL_TRY(cl_cursor_be32(&c, &out->slot));
        CL_TRY(cl_cursor_be32(&c, &out->handle));
        break;
    case CL_KH_SIGN:
    case CL_KH_DECRYPT:
        CL_TRY(cl_cursor_be32(&c, &out->slot));
        CL_TRY(cl_cursor_be32(&c, &out->handle));
        CL_TRY(cl_cursor_u8(&c, &op));
        CL_TRY(cl_cursor_u8(&c, &out->hash));
        CL_TRY(cl_cursor_u8(&c, &out->mgf_hash));
        if (out->type == CL_KH_SIGN) {
            CL_TRY(cl_cursor_be32(&c, &out->salt_len));
            CL_ENSURE(op >= CL_KH_OP_ECDSA && op <= CL_KH_OP_RSA_X509, CL_EPARSE, "sign operation %u", op);
            CL_ENSURE(out->salt_len <= CL_KH_DATA_MAX, CL_ELIMIT, "salt length %u", out->salt_len);
        } else {
            CL_TRY(cl_kh_get_blob(&c, CL_KH_DATA_MAX, &out->oaep_label));
            CL_ENSURE(op == CL_KH_OP_RSA_PKCS || op == CL_KH_OP_RSA_X509 || op == CL_KH_OP_RSA_OAEP, CL_EPARSE,
                      "decrypt operation %u", op);
        }
        CL_ENSURE(is_hash(out->hash) && is_hash(out->mgf_hash), CL_EPARSE, "hash %u / mgf %u", out->hash,
                  out->mgf_hash);
        out->op = op;
        CL_TRY(cl_kh_get_blob(&c, CL_KH_DATA_MAX, &out->data));
        break;
    case CL_KH_PUT_TOKEN:
        CL_TRY(cl_kh_get_str(&c, CL_KH_LABEL_MAX, &out->label));
        CL_TRY(cl_kh_get_str(&c, CL_KH_PIN_MAX, &out->pin));
        CL_TRY(cl_kh_get_str(&c, CL_KH_LABEL_MAX, &out->object_label));
        CL_TRY(cl_cursor_u8(&c, &out->key_source));
        CL_TRY(cl_kh_get_blob(&c, CL_KH_KEYREF_MAX, &out->key_ref));
        CL_TRY(cl_kh_get_blob(&c, CL_KH_CHAIN_MAX, &out->chain));
        CL_ENSURE(cl_kh_label_valid(out->label), CL_EPARSE, "token label not 1..%d URI-safe characters",
                  CL_KH_LABEL_MAX);
        CL_ENSURE(cl_kh_label_valid(out->object_label), CL_EPARSE,
                  "object label not 1..%d URI-safe characters", CL_KH_LABEL_MAX);
        CL_ENSURE(out->pin.len >= CL_KH_PIN_MIN, CL_EPARSE, "PIN shorter than %d", CL_KH_PIN_MIN);
        CL_ENSURE(out->key_source == CL_KH_SRC_FILE || out->key_source == CL_KH_SRC_KMS, CL_EPARSE,
                  "key source %u", out->key_source);
        CL_ENSURE(out->key_ref.len > 0, CL_EPARSE, "empty key reference");
        break;
    case CL_KH_DELETE_TOKEN:
        CL_TRY(cl_kh_get_str(&c, CL_KH_LABEL_MAX, &out->label));
        CL_ENSURE(cl_kh_label_valid(out->label), CL_EPARSE, "token label");
        break;
    default:
        return cl_error_set(CL_ENOTFOUND, "message type 0x%02x", out->type);
    }
    return cl_cursor_expect_end(&c, "key-holder request");
}

int cl_kh_reply_error(cl_buf *b, uint32_t status)
{
    CL_TRY(cl_buf_append_u8(b, CL_KH_ERR));
    return cl_buf_append_be(b, status, 4);
}

int cl_kh_encode_token(cl_buf *b, const cl_kh_token_info *t)
{
    CL_TRY(cl_buf_append_be(b, t->slot, 4));
    CL_TRY(cl_kh_put_str(b, t->label.data, t->label.len));
    CL_TRY(cl_kh_put_str(b, t->serial.data, t->serial.len));
    CL_TRY(cl_buf_append_u8(b, t->flags));
    CL_TRY(cl_buf_append_be(b, t->generation, 8));
    return cl_buf_append_be(b, t->age_ms, 8);
}

int cl_kh_encode_object(cl_buf *b, const cl_kh_object_info *o)
{
    CL_TRY(cl_buf_append_be(b, o->handle, 4));
    CL_TRY(cl_buf_append_u8(b, o->klass));
    CL_TRY(cl_buf_append_u8(b, o->key_type));
    CL_TRY(cl_kh_put_str(b, o->id.data, o->id.len));
    CL_TRY(cl_kh_put_str(b, o->label.data, o->label.len));
    return cl_kh_put_blob(b, o->der.data, o->der.len);
}

int cl_kh_reply_split(const uint8_t *data, size_t len, uint32_t *status, cl_cursor *payload)
{
    cl_cursor c = cl_cursor_make(data, len);
    uint8_t type;
    CL_TRY(cl_cursor_u8(&c, &type));
    if (type == CL_KH_OK) {
        *status = 0;
        *payload = cl_cursor_make(data + 1, len - 1);
        return CL_OK;
    }
    CL_ENSURE(type == CL_KH_ERR, CL_EPROTO, "key-holder reply of type 0x%02x", type);
    CL_TRY(cl_cursor_be32(&c, status));
    CL_TRY(cl_cursor_expect_end(&c, "key-holder error reply"));
    CL_ENSURE(*status != 0, CL_EPROTO, "key-holder error reply with status 0");
    *payload = cl_cursor_make(data + len, 0);
    return CL_OK;
}

int cl_kh_decode_tokens(cl_cursor *c, cl_kh_token_info *out, size_t max, size_t *count)
{
    uint16_t n;
    CL_TRY(cl_cursor_be16(c, &n));
    CL_ENSURE(n <= max, CL_ELIMIT, "%u tokens, limit %zu", n, max);
    for (size_t i = 0; i < n; i++) {
        cl_kh_token_info *t = &out[i];
        CL_TRY(cl_cursor_be32(c, &t->slot));
        CL_TRY(cl_kh_get_str(c, CL_KH_LABEL_MAX, &t->label));
        CL_TRY(cl_kh_get_str(c, 16, &t->serial));
        CL_TRY(cl_cursor_u8(c, &t->flags));
        CL_TRY(cl_cursor_be64(c, &t->generation));
        CL_TRY(cl_cursor_be64(c, &t->age_ms));
    }
    *count = n;
    return cl_cursor_expect_end(c, "token list");
}

int cl_kh_decode_objects(cl_cursor *c, cl_kh_object_info *out, size_t max, size_t *count)
{
    uint16_t n;
    CL_TRY(cl_cursor_be16(c, &n));
    CL_ENSURE(n <= max, CL_ELIMIT, "%u objects, limit %zu", n, max);
    for (size_t i = 0; i < n; i++) {
        cl_kh_object_info *o = &out[i];
        CL_TRY(cl_cursor_be32(c, &o->handle));
        CL_TRY(cl_cursor_u8(c, &o->klass));
        CL_TRY(cl_cursor_u8(c, &o->key_type));
        CL_TRY(get_bytes16(c, CL_KH_ID_MAX, &o->id));
        CL_TRY(cl_kh_get_str(c, CL_KH_LABEL_MAX, &o->label));
        CL_TRY(cl_kh_get_blob(c, CL_KH_DER_MAX, &o->der));
        CL_ENSURE(o->handle != 0, CL_EPARSE, "object handle 0");
        CL_ENSURE(o->klass >= CL_KH_CLASS_PRIVATE_KEY && o->klass <= CL_KH_CLASS_CERTIFICATE, CL_EPARSE,
                  "object class %u", o->klass);
        CL_ENSURE(o->key_type <= CL_KH_KEY_EC, CL_EPARSE, "key type %u", o->key_type);
    }
    *count = n;
    return cl_cursor_expect_end(c, "object list");
}

const char *cl_kh_status_name(uint32_t status)
{
    switch (status) {
    case 0: return "ok";
    case CL_KH_ST_MALFORMED: return "malformed request";
    case CL_KH_ST_UNKNOWN_TYPE: return "unknown message type";
    case CL_KH_ST_NO_SLOT: return "no such token";
    case CL_KH_ST_NO_OBJECT: return "no such object";
    case CL_KH_ST_PIN_INCORRECT: return "PIN incorrect";
    case CL_KH_ST_PIN_LOCKED: return "PIN locked";
    case CL_KH_ST_NOT_LOGGED_IN: return "not logged in";
    case CL_KH_ST_MECHANISM: return "operation does not fit the key";
    case CL_KH_ST_DATA_INVALID: return "input invalid";
    case CL_KH_ST_DECRYPT_FAILED: return "decryption failed";
    case CL_KH_ST_EXPIRED: return "token expired";
    case CL_KH_ST_INTERNAL: return "internal error";
    case CL_KH_ST_BAD_KEY: return "key unreadable or not matching the certificate";
    case CL_KH_ST_NOT_IMPLEMENTED: return "not implemented";
    case CL_KH_ST_BUSY: return "limit reached";
    case CL_KH_ST_ALREADY_LOGGED_IN: return "already logged in";
    case CL_KH_ST_KMS_REFUSED: return "KMS refused to open the key for this enclave";
    case CL_KH_ST_KMS_UNAVAILABLE: return "KMS unreachable from the enclave";
    default: return "unknown status";
    }
}

#include "cloister/core/keyholder_proto.h"
#include "test.h"

#include <sys/socket.h>
#include <unistd.h>

static cl_slice sl(const char *s)
{
    return (cl_slice){(const uint8_t *)s, strlen(s)};
}

/* Same length and same bytes: a decoder that kept the length but read the
 * wrong bytes (or another field's) must not pass. */
static bool same(cl_slice a, cl_slice b)
{
    return a.len == b.len && (a.len == 0 || !memcmp(a.data, b.data, a.len));
}

/* Encodes r, decodes it back field by field, checks every strict prefix is refused. */
static void roundtrip(const cl_kh_request *r, bool provisioning)
{
    cl_buf b = CL_BUF_INIT;
    CHECK_OK(cl_kh_request_encode(&b, r));
    cl_kh_request d;
    CHECK_OK(cl_kh_request_decode(b.data, b.len, provisioning, &d));
    CHECK(d.type == r->type);
    CHECK(d.slot == r->slot);
    CHECK(d.handle == r->handle);
    CHECK(d.op == r->op);
    CHECK(d.hash == r->hash);
    CHECK(d.mgf_hash == r->mgf_hash);
    CHECK(d.salt_len == r->salt_len);
    CHECK(d.key_source == r->key_source);
    CHECK(same(d.pin, r->pin));
    CHECK(same(d.label, r->label));
    CHECK(same(d.object_label, r->object_label));
    CHECK(same(d.key_ref, r->key_ref));
    CHECK(same(d.chain, r->chain));
    CHECK(same(d.data, r->data));
    CHECK(same(d.oaep_label, r->oaep_label));
    for (size_t n = 0; n < b.len; n++)
        CHECK(cl_kh_request_decode(b.data, n, provisioning, &d) < 0);
    /* one trailing byte is refused */
    CHECK_OK(cl_buf_append_u8(&b, 0));
    CHECK_ERR(cl_kh_request_decode(b.data, b.len, provisioning, &d), CL_EPARSE, "trailing");
    /* the other socket does not know the message */
    CHECK_ERR(cl_kh_request_decode(b.data, b.len - 1, !provisioning, &d), CL_ENOTFOUND, "socket");
    cl_buf_free(&b);
}

static void requests_roundtrip(void)
{
    uint8_t digest[32];
    for (size_t i = 0; i < sizeof digest; i++)
        digest[i] = (uint8_t)(0xa5 ^ (i * 7)); /* every byte distinct from its neighbours, zeros inside */
    digest[5] = 0;
    cl_kh_request list = {.type = CL_KH_LIST_TOKENS};
    cl_kh_request login = {.type = CL_KH_LOGIN, .slot = 3, .pin = sl("1234")};
    cl_kh_request objs = {.type = CL_KH_GET_OBJECT, .slot = 1, .handle = 7};
    cl_kh_request sign = {.type = CL_KH_SIGN, .slot = 1, .handle = 9, .op = CL_KH_OP_RSA_PSS,
                          .hash = CL_KH_HASH_SHA256, .mgf_hash = CL_KH_HASH_SHA256, .salt_len = 32,
                          .data = {digest, sizeof digest}};
    cl_kh_request dec = {.type = CL_KH_DECRYPT, .slot = 1, .handle = 9, .op = CL_KH_OP_RSA_OAEP,
                         .hash = CL_KH_HASH_SHA384, .mgf_hash = CL_KH_HASH_SHA1, .oaep_label = sl("lbl"),
                         .data = {digest, sizeof digest}};
    cl_kh_request put = {.type = CL_KH_PUT_TOKEN, .label = sl("web"), .pin = sl("secret-pin"),
                         .object_label = sl("key"), .key_source = CL_KH_SRC_FILE, .key_ref = sl("web.pem"),
                         .chain = sl("-----BEGIN CERTIFICATE-----\n")};
    cl_kh_request del = {.type = CL_KH_DELETE_TOKEN, .label = sl("web")};
    roundtrip(&list, false);
    roundtrip(&login, false);
    roundtrip(&objs, false);
    roundtrip(&sign, false);
    roundtrip(&dec, false);
    roundtrip(&put, true);
    roundtrip(&del, true);
}

static void limits_and_fields(void)
{
    cl_buf b = CL_BUF_INIT;
    cl_kh_request d;
    /* a PIN longer than the limit */
    char pin[CL_KH_PIN_MAX + 2];
    memset(pin, 'p', sizeof pin - 1);
    pin[sizeof pin - 1] = 0;
    cl_kh_request login = {.type = CL_KH_LOGIN, .pin = sl(pin)};
    CHECK_OK(cl_kh_request_encode(&b, &login));
    CHECK_ERR(cl_kh_request_decode(b.data, b.len, false, &d), CL_ELIMIT, "limit");
    /* labels that a PKCS#11 URI or nginx would need escaped */
    const char *bad[] = {"a b", "a;b", "a?b", "", "abcdefghijabcdefghijabcdefghijabc", "a\"b", "x/y"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        b.len = 0;
        cl_kh_request put = {.type = CL_KH_PUT_TOKEN, .label = sl(bad[i]), .pin = sl("1234"),
                             .object_label = sl("k"), .key_source = CL_KH_SRC_FILE, .key_ref = sl("k.pem")};
        CHECK_OK(cl_kh_request_encode(&b, &put));
        CHECK(cl_kh_request_decode(b.data, b.len, true, &d) < 0);
    }
    /* unknown operation, hash, key source; a NUL inside a string */
    const uint8_t bad_op[] = {CL_KH_SIGN, 0, 0, 0, 0, 0, 0, 0, 1, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xaa};
    CHECK_ERR(cl_kh_request_decode(bad_op, sizeof bad_op, false, &d), CL_EPARSE, "sign operation");
    const uint8_t bad_hash[] = {CL_KH_SIGN, 0, 0, 0, 0, 0, 0, 0, 1, 1, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xaa};
    CHECK_ERR(cl_kh_request_decode(bad_hash, sizeof bad_hash, false, &d), CL_EPARSE, "hash");
    const uint8_t nul_pin[] = {CL_KH_LOGIN, 0, 0, 0, 0, 0, 4, '1', 0, '3', '4'};
    CHECK_ERR(cl_kh_request_decode(nul_pin, sizeof nul_pin, false, &d), CL_EPARSE, "NUL");
    b.len = 0;
    cl_kh_request kms = {.type = CL_KH_PUT_TOKEN, .label = sl("web"), .pin = sl("1234"), .object_label = sl("k"),
                         .key_source = 3, .key_ref = sl("x")};
    CHECK_OK(cl_kh_request_encode(&b, &kms));
    CHECK_ERR(cl_kh_request_decode(b.data, b.len, true, &d), CL_EPARSE, "key source");
    const uint8_t empty[1] = {0};
    CHECK(cl_kh_request_decode(empty, 0, false, &d) < 0);
    cl_buf_free(&b);
}

static void replies(void)
{
    cl_buf b = CL_BUF_INIT;
    CHECK_OK(cl_buf_append_u8(&b, CL_KH_OK));
    CHECK_OK(cl_buf_append_be(&b, 2, 2));
    uint8_t id[16] = {0, 1, 0, 2}; /* binary, with zero bytes */
    cl_kh_object_info o = {5, CL_KH_CLASS_PRIVATE_KEY, CL_KH_KEY_EC, {id, sizeof id}, sl("web"), sl("der")};
    CHECK_OK(cl_kh_encode_object(&b, &o));
    o.handle = 6;
    o.klass = CL_KH_CLASS_CERTIFICATE;
    o.key_type = CL_KH_KEY_NONE;
    CHECK_OK(cl_kh_encode_object(&b, &o));
    uint32_t st;
    cl_cursor pl;
    CHECK_OK(cl_kh_reply_split(b.data, b.len, &st, &pl));
    CHECK(st == 0);
    cl_kh_object_info out[CL_KH_MAX_OBJECTS];
    size_t n = 0;
    cl_cursor again = pl;
    CHECK_OK(cl_kh_decode_objects(&pl, out, CL_KH_MAX_OBJECTS, &n));
    CHECK(n == 2);
    CHECK(out[0].handle == 5 && out[0].klass == CL_KH_CLASS_PRIVATE_KEY && out[0].key_type == CL_KH_KEY_EC);
    CHECK(same(out[0].id, (cl_slice){id, sizeof id}));
    CHECK(same(out[0].label, sl("web")));
    CHECK(same(out[0].der, sl("der")));
    CHECK(out[1].handle == 6 && out[1].klass == CL_KH_CLASS_CERTIFICATE && out[1].key_type == CL_KH_KEY_NONE);
    CHECK(same(out[1].id, (cl_slice){id, sizeof id}));
    CHECK(same(out[1].label, sl("web")));
    CHECK(same(out[1].der, sl("der")));
    CHECK_ERR(cl_kh_decode_objects(&again, out, 1, &n), CL_ELIMIT, "objects");
    b.len = 0;
    CHECK_OK(cl_kh_reply_error(&b, CL_KH_ST_PIN_LOCKED));
    CHECK_OK(cl_kh_reply_split(b.data, b.len, &st, &pl));
    CHECK(st == CL_KH_ST_PIN_LOCKED && cl_cursor_remaining(&pl) == 0);
    CHECK(!strcmp(cl_kh_status_name(st), "PIN locked"));
    const uint8_t zero_err[] = {CL_KH_ERR, 0, 0, 0, 0};
    CHECK_ERR(cl_kh_reply_split(zero_err, sizeof zero_err, &st, &pl), CL_EPROTO, "status 0");
    const uint8_t other[] = {0x42};
    CHECK_ERR(cl_kh_reply_split(other, sizeof other, &st, &pl), CL_EPROTO, "type");
    cl_buf_free(&b);
}

static void tokens(void)
{
    cl_buf b = CL_BUF_INIT;
    cl_kh_token_info t[2] = {
        {.slot = 1, .label = sl("web"), .serial = sl("0123456789abcdef"), .flags = 0x05,
         .generation = 0x0102030405060708ull, .age_ms = 86400000},
        {.slot = 0xfffffffe, .label = sl("mail"), .serial = sl("fedcba9876543210"), .flags = 0x80,
         .generation = 1, .age_ms = 0},
    };
    CHECK_OK(cl_buf_append_be(&b, 2, 2));
    CHECK_OK(cl_kh_encode_token(&b, &t[0]));
    CHECK_OK(cl_kh_encode_token(&b, &t[1]));
    cl_cursor c = cl_cursor_make(b.data, b.len);
    cl_kh_token_info out[CL_KH_MAX_TOKENS];
    size_t n = 0;
    CHECK_OK(cl_kh_decode_tokens(&c, out, CL_KH_MAX_TOKENS, &n));
    CHECK(n == 2);
    for (size_t i = 0; i < 2 && i < n; i++) {
        CHECK(out[i].slot == t[i].slot);
        CHECK(same(out[i].label, t[i].label));
        CHECK(same(out[i].serial, t[i].serial));
        CHECK(out[i].flags == t[i].flags);
        CHECK(out[i].generation == t[i].generation);
        CHECK(out[i].age_ms == t[i].age_ms);
    }
    cl_buf_free(&b);
}

static void framing(void)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    const uint8_t body[] = {CL_KH_LIST_TOKENS};
    CHECK_OK(cl_kh_write_frame(sv[0], body, sizeof body));
    cl_buf got = CL_BUF_INIT;
    bool eof;
    CHECK_OK(cl_kh_read_frame(sv[1], 1024, &got, &eof));
    CHECK(got.len == 1 && got.data[0] == CL_KH_LIST_TOKENS);
    const uint8_t big[] = {0, 0, 8, 0}; /* 2048 > max 1024 */
    CHECK(write(sv[0], big, 4) == 4);
    CHECK_ERR(cl_kh_read_frame(sv[1], 1024, &got, &eof), CL_EPARSE, "frame length");
    const uint8_t zero[] = {0, 0, 0, 0};
    CHECK(write(sv[0], zero, 4) == 4);
    CHECK_ERR(cl_kh_read_frame(sv[1], 1024, &got, &eof), CL_EPARSE, "frame length");
    const uint8_t half[] = {0, 0, 0, 5, 1, 2};
    CHECK(write(sv[0], half, sizeof half) == sizeof half);
    close(sv[0]);
    CHECK_ERR(cl_kh_read_frame(sv[1], 1024, &got, &eof), CL_EIO, "closed");
    CHECK(!eof);
    CHECK_ERR(cl_kh_read_frame(sv[1], 1024, &got, &eof), CL_EIO, "closed");
    CHECK(eof);
    CHECK_ERR(cl_kh_write_frame(sv[1], body, 0), CL_ELIMIT, "frame");
    close(sv[1]);
    cl_buf_free(&got);
}

int main(void)
{
    RUN(requests_roundtrip);
    RUN(limits_and_fields);
    RUN(replies);
    RUN(tokens);
    RUN(framing);
    return test_summary();
}

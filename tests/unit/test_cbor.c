#include "cloister/core/cbor.h"
#include "test.h"

static const cl_cbor_limits lim = {.max_depth = 8, .max_map_entries = 64};

/* The input lives on the heap with its exact size, so ASan catches any read
 * past the end; it is kept until the next call because strings borrow it. */
static uint8_t *last_input;

static int decode_hex(const char *hex, cl_cbor_doc *doc)
{
    size_t n = strlen(hex) / 2;
    free(last_input);
    last_input = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++)
        sscanf(hex + 2 * i, "%2hhx", &last_input[i]);
    return cl_cbor_decode(last_input, n, &lim, doc);
}

static void accepts_scalars(void)
{
    cl_cbor_doc d;
    CHECK_OK(decode_hex("00", &d));
    CHECK(d.root->type == CL_CBOR_UINT && d.root->u == 0);
    cl_cbor_doc_free(&d);
    CHECK_OK(decode_hex("1bffffffffffffffff", &d));
    CHECK(d.root->type == CL_CBOR_UINT && d.root->u == UINT64_MAX);
    cl_cbor_doc_free(&d);
    CHECK_OK(decode_hex("3822", &d)); /* -35 */
    CHECK(d.root->type == CL_CBOR_NINT && d.root->u == 34);
    cl_cbor_doc_free(&d);
    CHECK_OK(decode_hex("f6", &d));
    CHECK(d.root->type == CL_CBOR_NULL);
    cl_cbor_doc_free(&d);
    CHECK_OK(decode_hex("f5", &d));
    CHECK(d.root->type == CL_CBOR_TRUE);
    cl_cbor_doc_free(&d);
    CHECK_OK(decode_hex("f820", &d)); /* simple(32) */
    CHECK(d.root->type == CL_CBOR_SIMPLE && d.root->u == 32);
    cl_cbor_doc_free(&d);
    CHECK_OK(decode_hex("6449455446", &d));
    CHECK(d.root->type == CL_CBOR_TEXT && d.root->len == 4 && !memcmp(d.root->data, "IETF", 4));
    cl_cbor_doc_free(&d);
    CHECK_OK(decode_hex("62c3bc", &d)); /* "ü" */
    cl_cbor_doc_free(&d);
}

static void accepts_containers(void)
{
    cl_cbor_doc d;
    /* {"a": 1, "b": [2, 3]} */
    CHECK_OK(decode_hex("a26161016162820203", &d));
    CHECK(d.root->type == CL_CBOR_MAP && d.root->u == 2);
    const cl_cbor *b = cl_cbor_map_get(d.root, "b");
    CHECK(b && b->type == CL_CBOR_ARRAY && b->u == 2 && b->child->u == 2 && b->child->next->u == 3);
    CHECK(cl_cbor_map_get(d.root, "c") == NULL);
    cl_cbor_doc_free(&d);
    /* indefinite map {_ "a": 1, "b": [_ 2, 3]} */
    CHECK_OK(decode_hex("bf61610161629f0203ffff", &d));
    CHECK(d.root->type == CL_CBOR_MAP && d.root->u == 2 && d.root->indefinite);
    b = cl_cbor_map_get(d.root, "b");
    CHECK(b && b->u == 2 && b->indefinite);
    cl_cbor_doc_free(&d);
    /* indefinite byte string (_ h'0102', h'030405') */
    CHECK_OK(decode_hex("5f42010243030405ff", &d));
    CHECK(d.root->type == CL_CBOR_BYTES && d.root->len == 5 && d.root->data[4] == 5);
    cl_cbor_doc_free(&d);
    /* tag 18 around an empty array */
    CHECK_OK(decode_hex("d280", &d));
    CHECK(d.root->type == CL_CBOR_TAG && d.root->u == 18 && d.root->child->type == CL_CBOR_ARRAY);
    cl_cbor_doc_free(&d);
    /* integer keys */
    CHECK_OK(decode_hex("a2013822200a", &d));
    cl_cbor_doc_free(&d);
}

static void rejects_malformed(void)
{
    cl_cbor_doc d;
    CHECK_ERR(decode_hex("", &d), CL_EPARSE, "empty");
    CHECK_ERR(decode_hex("0000", &d), CL_EPARSE, "trailing");
    CHECK_ERR(decode_hex("a2616101616102", &d), CL_EPARSE, "duplicate map key");
    CHECK_ERR(decode_hex("a201010102", &d), CL_EPARSE, "duplicate map key");
    CHECK_ERR(decode_hex("bf616101616102ff", &d), CL_EPARSE, "duplicate map key");
    CHECK_ERR(decode_hex("1c", &d), CL_EPARSE, "reserved");
    CHECK_ERR(decode_hex("5d", &d), CL_EPARSE, "reserved");
    CHECK_ERR(decode_hex("fe", &d), CL_EPARSE, "reserved");
    CHECK_ERR(decode_hex("1f", &d), CL_EPARSE, "indefinite length not allowed");
    CHECK_ERR(decode_hex("3f", &d), CL_EPARSE, "indefinite length not allowed");
    CHECK_ERR(decode_hex("df00", &d), CL_EPARSE, "indefinite length not allowed");
    CHECK_ERR(decode_hex("f93c00", &d), CL_EPARSE, "floating-point");
    CHECK_ERR(decode_hex("fb3ff0000000000000", &d), CL_EPARSE, "floating-point");
    CHECK_ERR(decode_hex("f810", &d), CL_EPARSE, "simple value");
    CHECK_ERR(decode_hex("ff", &d), CL_EPARSE, "unexpected break");
    CHECK_ERR(decode_hex("8201ff", &d), CL_EPARSE, "unexpected break");
    CHECK_ERR(decode_hex("5affffffff00", &d), CL_EPARSE, "exceeds the input");
    CHECK_ERR(decode_hex("7b7fffffffffffffff", &d), CL_EPARSE, "exceeds the input");
    CHECK_ERR(decode_hex("9bffffffffffffffff00", &d), CL_EPARSE, "exceeds the input");
    CHECK_ERR(decode_hex("bbffffffffffffffff00", &d), CL_EPARSE, "exceeds the input");
    CHECK_ERR(decode_hex("62c328", &d), CL_EPARSE, "UTF-8");       /* bad continuation */
    CHECK_ERR(decode_hex("62c0af", &d), CL_EPARSE, "UTF-8");       /* overlong */
    CHECK_ERR(decode_hex("63eda080", &d), CL_EPARSE, "UTF-8");     /* surrogate */
    CHECK_ERR(decode_hex("a18001", &d), CL_EPARSE, "map key");     /* array as key */
    CHECK_ERR(decode_hex("a1f601", &d), CL_EPARSE, "map key");     /* null as key */
    CHECK_ERR(decode_hex("5f4101610200ff", &d), CL_EPARSE, "bad chunk"); /* text chunk in bytes */
    CHECK_ERR(decode_hex("5f5f4101ffff", &d), CL_EPARSE, "bad chunk");   /* nested indefinite */
    CHECK_ERR(decode_hex("9f01", &d), CL_EPARSE, "unterminated");
    CHECK_ERR(decode_hex("5f4101", &d), CL_EPARSE, "unterminated");
    CHECK_ERR(decode_hex("bf6161ff", &d), CL_EPARSE, "without value");
    CHECK_ERR(decode_hex("c6", &d), CL_EPARSE, "no content");
    CHECK_ERR(decode_hex("8301", &d), CL_EPARSE, "exceeds the input");
    CHECK_ERR(decode_hex("18", &d), CL_EPARSE, "truncated");
    CHECK_ERR(decode_hex("1b0000", &d), CL_EPARSE, "truncated");
}

static void limits_depth_and_entries(void)
{
    cl_cbor_doc d;
    cl_cbor_limits shallow = {.max_depth = 2, .max_map_entries = 2};
    const uint8_t two[] = {0x81, 0x81, 0x00};        /* [[0]] */
    const uint8_t three[] = {0x81, 0x81, 0x81, 0x00}; /* [[[0]]] */
    CHECK_OK(cl_cbor_decode(two, sizeof two, &shallow, &d));
    cl_cbor_doc_free(&d);
    CHECK_ERR(cl_cbor_decode(three, sizeof three, &shallow, &d), CL_EPARSE, "nesting deeper");
    const uint8_t tagged[] = {0xc1, 0xc1, 0xc1, 0x00};
    CHECK_ERR(cl_cbor_decode(tagged, sizeof tagged, &shallow, &d), CL_EPARSE, "nesting deeper");
    const uint8_t big_map[] = {0xa3, 1, 1, 2, 2, 3, 3};
    CHECK_ERR(cl_cbor_decode(big_map, sizeof big_map, &shallow, &d), CL_ELIMIT, "more than 2 entries");
    /* a deeply nested input must not recurse without bound, whatever the caller asks */
    uint8_t deep[100000];
    memset(deep, 0x81, sizeof deep);
    deep[sizeof deep - 1] = 0;
    cl_cbor_limits greedy = {.max_depth = 1000000, .max_map_entries = 8};
    CHECK_ERR(cl_cbor_decode(deep, sizeof deep, &greedy, &d), CL_EPARSE, "nesting deeper");
}

static void truncation_at_every_length(void)
{
    cl_buf b = CL_BUF_INIT;
    CHECK_OK(cl_cbor_put_map(&b, 3));
    CHECK_OK(cl_cbor_put_text(&b, "module_id"));
    CHECK_OK(cl_cbor_put_text(&b, "i-0123-enc4567"));
    CHECK_OK(cl_cbor_put_text(&b, "pcrs"));
    CHECK_OK(cl_cbor_put_map(&b, 2));
    for (int i = 0; i < 2; i++) {
        uint8_t pcr[48];
        memset(pcr, i, sizeof pcr);
        CHECK_OK(cl_cbor_put_uint(&b, (uint64_t)i));
        CHECK_OK(cl_cbor_put_bytes(&b, pcr, sizeof pcr));
    }
    CHECK_OK(cl_cbor_put_text(&b, "n"));
    CHECK_OK(cl_cbor_put_nint(&b, 1000));
    cl_cbor_doc d;
    CHECK_OK(cl_cbor_decode(b.data, b.len, &lim, &d));
    cl_cbor_doc_free(&d);
    for (size_t n = 0; n < b.len; n++) {
        uint8_t *copy = malloc(n ? n : 1);
        memcpy(copy, b.data, n);
        int rc = cl_cbor_decode(copy, n, &lim, &d);
        CHECK(rc == CL_EPARSE);
        if (rc == CL_OK)
            cl_cbor_doc_free(&d);
        free(copy);
    }
    cl_buf_free(&b);
}

static void encoder_heads(void)
{
    cl_buf b = CL_BUF_INIT;
    CHECK_OK(cl_cbor_put_uint(&b, 23));
    CHECK_OK(cl_cbor_put_uint(&b, 24));
    CHECK_OK(cl_cbor_put_uint(&b, 256));
    CHECK_OK(cl_cbor_put_uint(&b, 65536));
    CHECK_OK(cl_cbor_put_uint(&b, 1ull << 32));
    CHECK_OK(cl_cbor_put_nint(&b, 34));
    CHECK_OK(cl_cbor_put_text(&b, "a"));
    CHECK_OK(cl_cbor_put_null(&b));
    CHECK_OK(cl_cbor_put_bool(&b, false));
    static const uint8_t want[] = {0x17, 0x18, 0x18, 0x19, 0x01, 0x00, 0x1a, 0x00, 0x01, 0x00, 0x00,
                                   0x1b, 0, 0, 0, 1, 0, 0, 0, 0, 0x38, 0x22, 0x61, 'a', 0xf6, 0xf4};
    CHECK(b.len == sizeof want && !memcmp(b.data, want, sizeof want));
    cl_buf_free(&b);
}

int main(void)
{
    RUN(accepts_scalars);
    RUN(accepts_containers);
    RUN(rejects_malformed);
    RUN(limits_depth_and_entries);
    RUN(truncation_at_every_length);
    RUN(encoder_heads);
    free(last_input);
    return test_summary();
}

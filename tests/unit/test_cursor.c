#include "cloister/core/cursor.h"
#include "cloister/core/encoding.h"
#include "test.h"

static void reads_within_bounds(void)
{
    const uint8_t data[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    cl_cursor c = cl_cursor_make(data, sizeof data);
    uint8_t u8;
    uint16_t u16;
    uint32_t u32;
    uint64_t u64;
    const uint8_t *p;
    CHECK_OK(cl_cursor_u8(&c, &u8));
    CHECK(u8 == 1);
    CHECK_OK(cl_cursor_be16(&c, &u16));
    CHECK(u16 == 0x0203);
    CHECK_OK(cl_cursor_be32(&c, &u32));
    CHECK(u32 == 0x04050607);
    CHECK_OK(cl_cursor_be64(&c, &u64));
    CHECK(u64 == 0x08090a0b0c0d0e0full);
    CHECK(cl_cursor_at_end(&c));
    CHECK_ERR(cl_cursor_u8(&c, &u8), CL_EPARSE, "truncated");
    CHECK_ERR(cl_cursor_bytes(&c, 1, &p), CL_EPARSE, "truncated");
}

static void failed_reads_do_not_move(void)
{
    const uint8_t data[] = {1, 2, 3};
    cl_cursor c = cl_cursor_make(data, sizeof data);
    uint32_t u32;
    const uint8_t *p;
    CHECK_ERR(cl_cursor_be32(&c, &u32), CL_EPARSE, "4 bytes needed at offset 0, 3 left");
    CHECK(c.pos == 0);
    CHECK_ERR(cl_cursor_bytes(&c, SIZE_MAX, &p), CL_EPARSE, "truncated");
    CHECK(c.pos == 0);
    CHECK_OK(cl_cursor_skip(&c, 2));
    CHECK_ERR(cl_cursor_expect_end(&c, "the record"), CL_EPARSE, "1 trailing bytes after the record");
}

static void hex_and_base64(void)
{
    cl_buf b = CL_BUF_INIT;
    CHECK_OK(cl_hex_decode("00ffAb", &b));
    CHECK(b.len == 3 && b.data[1] == 0xff && b.data[2] == 0xab);
    cl_buf_reset(&b);
    CHECK_ERR(cl_hex_decode("abc", &b), CL_EINVAL, "odd");
    cl_buf_reset(&b);
    CHECK_ERR(cl_hex_decode("zz", &b), CL_EINVAL, "invalid hex digit");
    cl_buf_reset(&b);
    const uint8_t text[] = "aGVs\nbG8=";
    CHECK_OK(cl_base64_decode(text, sizeof text - 1, &b));
    CHECK(b.len == 5 && !memcmp(b.data, "hello", 5));
    cl_buf_reset(&b);
    CHECK_ERR(cl_base64_decode((const uint8_t *)"aGVsb", 5, &b), CL_EPARSE, NULL);
    cl_buf_reset(&b);
    CHECK_ERR(cl_base64_decode((const uint8_t *)"aG=Vs", 5, &b), CL_EPARSE, "after padding");
    cl_buf_reset(&b);
    CHECK_ERR(cl_base64_decode((const uint8_t *)"aGVs*", 5, &b), CL_EPARSE, "invalid character");
    cl_buf_reset(&b);
    CHECK_OK(cl_base64_encode((const uint8_t *)"hello", 5, &b));
    CHECK(!strcmp((const char *)b.data, "aGVsbG8="));
    cl_buf_free(&b);
    uint64_t v;
    CHECK_OK(cl_parse_u64("1234", 5000, &v));
    CHECK(v == 1234);
    CHECK_ERR(cl_parse_u64("5001", 5000, &v), CL_EINVAL, "maximum");
    CHECK_ERR(cl_parse_u64("18446744073709551616", UINT64_MAX, &v), CL_EINVAL, "maximum");
    CHECK_ERR(cl_parse_u64("-1", 10, &v), CL_EINVAL, "not a decimal");
    char when[32];
    cl_format_time(1725735600, when);
    CHECK(!strcmp(when, "2024-09-07T19:00:00Z"));
}

int main(void)
{
    RUN(reads_within_bounds);
    RUN(failed_reads_do_not_move);
    RUN(hex_and_base64);
    return test_summary();
}

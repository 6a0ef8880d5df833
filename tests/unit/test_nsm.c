#include "cloister/enclave/nsm.h"
#include "test.h"

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <unistd.h>

/* Builders for hand-made CBOR inputs. */
static cl_buf in;
#define RESET() cl_buf_reset(&in)
#define M(n) CHECK_OK(cl_cbor_put_map(&in, n))
#define A(n) CHECK_OK(cl_cbor_put_array(&in, n))
#define T(s) CHECK_OK(cl_cbor_put_text(&in, s))
#define U(v) CHECK_OK(cl_cbor_put_uint(&in, v))
#define N(v) CHECK_OK(cl_cbor_put_nint(&in, v))
#define B(p, n) CHECK_OK(cl_cbor_put_bytes(&in, p, n))
#define NUL() CHECK_OK(cl_cbor_put_null(&in))
#define BOOL(v) CHECK_OK(cl_cbor_put_bool(&in, v))
#define RAW(byte) CHECK_OK(cl_buf_append_u8(&in, byte))

static bool bytes_equal(const cl_buf *b, const char *expected, size_t len)
{
    if (b->len != len || memcmp(b->data, expected, len) != 0) {
        fprintf(stderr, "encoding differs (%zu bytes, expected %zu):", b->len, len);
        for (size_t i = 0; i < b->len; i++)
            fprintf(stderr, " %02x", b->data[i]);
        fprintf(stderr, "\n");
        return false;
    }
    return true;
}
#define CHECK_BYTES(buf, lit) CHECK(bytes_equal(buf, lit, sizeof(lit) - 1))

static int encode_req(const cl_nsm_request *req, cl_buf *out)
{
    cl_buf_reset(out);
    return cl_nsm_request_encode(req, out);
}

static void request_exact_encodings(void)
{
    cl_buf out = CL_BUF_INIT;
    cl_nsm_request req = {.op = CL_NSM_DESCRIBE_NSM};
    CHECK_OK(encode_req(&req, &out));
    CHECK_BYTES(&out, "\x6b" "DescribeNSM");
    req = (cl_nsm_request){.op = CL_NSM_GET_RANDOM};
    CHECK_OK(encode_req(&req, &out));
    CHECK_BYTES(&out, "\x69" "GetRandom");
    req = (cl_nsm_request){.op = CL_NSM_DESCRIBE_PCR, .index = 0};
    CHECK_OK(encode_req(&req, &out));
    CHECK_BYTES(&out, "\xa1\x6b" "DescribePCR" "\xa1\x65" "index" "\x00");
    req = (cl_nsm_request){.op = CL_NSM_LOCK_PCR, .index = 16};
    CHECK_OK(encode_req(&req, &out));
    CHECK_BYTES(&out, "\xa1\x67" "LockPCR" "\xa1\x65" "index" "\x10");
    req = (cl_nsm_request){.op = CL_NSM_LOCK_PCRS, .range = 300};
    CHECK_OK(encode_req(&req, &out));
    CHECK_BYTES(&out, "\xa1\x68" "LockPCRs" "\xa1\x65" "range" "\x19\x01\x2c");
    static const uint8_t two[] = {1, 2};
    req = (cl_nsm_request){.op = CL_NSM_EXTEND_PCR, .index = 24, .data = {two, 2}};
    CHECK_OK(encode_req(&req, &out));
    CHECK_BYTES(&out, "\xa1\x69" "ExtendPCR" "\xa2\x65" "index" "\x18\x18\x64" "data" "\x42\x01\x02");
    req = (cl_nsm_request){.op = CL_NSM_ATTESTATION};
    CHECK_OK(encode_req(&req, &out));
    CHECK_BYTES(&out, "\xa1\x6b" "Attestation" "\xa3\x69" "user_data" "\xf6\x65" "nonce" "\xf6\x6a" "public_key"
                      "\xf6");
    req = (cl_nsm_request){.op = CL_NSM_ATTESTATION, .has_nonce = true, .nonce = {two, 1},
                           .has_public_key = true, .public_key = {two, 0}};
    CHECK_OK(encode_req(&req, &out));
    CHECK_BYTES(&out, "\xa1\x6b" "Attestation" "\xa3\x69" "user_data" "\xf6\x65" "nonce" "\x41\x01\x6a"
                      "public_key" "\x40");
    cl_buf_free(&out);
}

static void response_exact_encodings(void)
{
    cl_buf out = CL_BUF_INIT;
    cl_nsm_response resp = {.op = CL_NSM_LOCK_PCR};
    CHECK_OK(cl_nsm_response_encode(&resp, &out));
    CHECK_BYTES(&out, "\x67" "LockPCR");
    cl_buf_reset(&out);
    resp = (cl_nsm_response){.op = CL_NSM_LOCK_PCRS};
    CHECK_OK(cl_nsm_response_encode(&resp, &out));
    CHECK_BYTES(&out, "\x68" "LockPCRs");
    cl_buf_reset(&out);
    resp = (cl_nsm_response){.op = -1, .error_code = CL_NSM_READ_ONLY_INDEX};
    CHECK_OK(cl_nsm_response_encode(&resp, &out));
    CHECK_BYTES(&out, "\xa1\x65" "Error" "\x6d" "ReadOnlyIndex");
    cl_buf_reset(&out);
    static const uint8_t three[] = {7, 8, 9};
    resp = (cl_nsm_response){.op = CL_NSM_DESCRIBE_PCR, .lock = true, .data = {three, 3}};
    CHECK_OK(cl_nsm_response_encode(&resp, &out));
    CHECK_BYTES(&out, "\xa1\x6b" "DescribePCR" "\xa2\x64" "lock" "\xf5\x64" "data" "\x43\x07\x08\x09");
    cl_buf_reset(&out);
    resp = (cl_nsm_response){.op = CL_NSM_DESCRIBE_NSM};
    resp.description = (cl_nsm_description){.version_major = 1, .max_pcrs = 32, .locked_pcrs = 0x3};
    strcpy(resp.description.module_id, "m");
    strcpy(resp.description.digest, "SHA384");
    CHECK_OK(cl_nsm_response_encode(&resp, &out));
    CHECK_BYTES(&out, "\xa1\x6b" "DescribeNSM" "\xa7"
                      "\x6d" "version_major" "\x01" "\x6d" "version_minor" "\x00" "\x6d" "version_patch" "\x00"
                      "\x69" "module_id" "\x61m" "\x68" "max_pcrs" "\x18\x20" "\x6b" "locked_pcrs" "\x82\x00\x01"
                      "\x66" "digest" "\x66" "SHA384");
    cl_buf_free(&out);
}

static void request_round_trips(void)
{
    static const uint8_t data[] = {0xde, 0xad, 0xbe, 0xef};
    cl_nsm_request reqs[] = {
        {.op = CL_NSM_DESCRIBE_PCR, .index = 31},
        {.op = CL_NSM_EXTEND_PCR, .index = 65535, .data = {data, 4}},
        {.op = CL_NSM_EXTEND_PCR, .index = 16, .data = {data, 0}},
        {.op = CL_NSM_LOCK_PCR, .index = 7},
        {.op = CL_NSM_LOCK_PCRS, .range = 32},
        {.op = CL_NSM_DESCRIBE_NSM},
        {.op = CL_NSM_GET_RANDOM},
        {.op = CL_NSM_ATTESTATION},
        {.op = CL_NSM_ATTESTATION, .has_user_data = true, .user_data = {data, 4}, .has_nonce = true,
         .nonce = {data, 2}, .has_public_key = true, .public_key = {data, 3}},
        {.op = CL_NSM_ATTESTATION, .has_user_data = true, .user_data = {data, 0}},
    };
    for (size_t i = 0; i < sizeof reqs / sizeof reqs[0]; i++) {
        cl_buf out = CL_BUF_INIT;
        cl_nsm_request got;
        cl_cbor_doc doc;
        CHECK_OK(cl_nsm_request_encode(&reqs[i], &out));
        CHECK_OK(cl_nsm_request_decode(out.data, out.len, &got, &doc));
        const cl_nsm_request *w = &reqs[i];
        CHECK(got.op == w->op && got.index == w->index && got.range == w->range);
        CHECK(got.data.len == w->data.len && (!w->data.len || !memcmp(got.data.data, w->data.data, w->data.len)));
        CHECK(got.has_user_data == w->has_user_data && got.has_nonce == w->has_nonce &&
              got.has_public_key == w->has_public_key);
        CHECK(got.user_data.len == w->user_data.len && got.nonce.len == w->nonce.len &&
              got.public_key.len == w->public_key.len);
        if (w->has_nonce)
            CHECK(!memcmp(got.nonce.data, w->nonce.data, w->nonce.len));
        cl_cbor_doc_free(&doc);
        cl_buf_free(&out);
    }
}

static void response_round_trips(void)
{
    uint8_t pcr[48], doc_bytes[3000];
    for (size_t i = 0; i < sizeof pcr; i++)
        pcr[i] = (uint8_t)i;
    memset(doc_bytes, 0x84, sizeof doc_bytes);
    cl_nsm_response resps[] = {
        {.op = CL_NSM_DESCRIBE_PCR, .lock = true, .data = {pcr, 48}},
        {.op = CL_NSM_DESCRIBE_PCR, .lock = false, .data = {pcr, 32}},
        {.op = CL_NSM_EXTEND_PCR, .data = {pcr, 48}},
        {.op = CL_NSM_LOCK_PCR},
        {.op = CL_NSM_LOCK_PCRS},
        {.op = CL_NSM_ATTESTATION, .data = {doc_bytes, sizeof doc_bytes}},
        {.op = CL_NSM_GET_RANDOM, .data = {pcr, 48}},
        {.op = -1, .error_code = CL_NSM_INVALID_ARGUMENT},
        {.op = -1, .error_code = CL_NSM_INTERNAL_ERROR},
        {.op = CL_NSM_DESCRIBE_NSM,
         .description = {.version_major = 1, .version_minor = 2, .version_patch = 65535, .module_id = "i-abc-enc1",
                         .max_pcrs = 32, .locked_pcrs = 0x8000ffffu, .digest = "SHA384"}},
    };
    for (size_t i = 0; i < sizeof resps / sizeof resps[0]; i++) {
        cl_buf out = CL_BUF_INIT;
        cl_nsm_response got;
        cl_cbor_doc doc;
        CHECK_OK(cl_nsm_response_encode(&resps[i], &out));
        CHECK_OK(cl_nsm_response_decode(out.data, out.len, &got, &doc));
        const cl_nsm_response *w = &resps[i];
        CHECK(got.op == w->op && got.error_code == w->error_code && got.lock == w->lock);
        CHECK(got.data.len == w->data.len && (!w->data.len || !memcmp(got.data.data, w->data.data, w->data.len)));
        CHECK(!memcmp(&got.description, &w->description, sizeof got.description));
        cl_cbor_doc_free(&doc);
        cl_buf_free(&out);
    }
}

static void expect_request_rejected(int code, const char *fragment, int line)
{
    cl_nsm_request req;
    cl_cbor_doc doc;
    cl_error_clear();
    int rc = cl_nsm_request_decode(in.data, in.len, &req, &doc);
    if (rc != code || (fragment && !strstr(cl_error_message(), fragment))) {
        test_current_failed = 1;
        fprintf(stderr, "%s:%d: request: expected %s (\"%s\"), got %s: %s\n", __FILE__, line, cl_error_name(code),
                fragment ? fragment : "", cl_error_name(rc), cl_error_message());
    }
    if (rc == CL_OK)
        cl_cbor_doc_free(&doc);
}
#define REJECT_REQ(code, fragment) expect_request_rejected(code, fragment, __LINE__)

static void malformed_requests(void)
{
    RESET(); T("Foo"); REJECT_REQ(CL_EPARSE, "unknown variant \"Foo\"");
    RESET(); T("DescribePCR"); REJECT_REQ(CL_EPARSE, "needs fields");
    RESET(); T("LockPCR"); REJECT_REQ(CL_EPARSE, "needs fields");
    RESET(); M(1); T("DescribeNSM"); NUL(); REJECT_REQ(CL_EPARSE, "bare name");
    RESET(); M(1); T("GetRandom"); M(0); REJECT_REQ(CL_EPARSE, "bare name");
    RESET(); M(1); T("DescribePCR"); M(1); T("index"); U(65536); REJECT_REQ(CL_EPARSE, "exceeds 65535");
    RESET(); M(1); T("DescribePCR"); M(1); T("index"); N(0); REJECT_REQ(CL_EPARSE, "negative");
    RESET(); M(1); T("DescribePCR"); M(1); T("index"); T("0"); REJECT_REQ(CL_EPARSE, "not an unsigned integer");
    RESET(); M(1); T("DescribePCR"); M(1); T("index"); BOOL(true); REJECT_REQ(CL_EPARSE, "not an unsigned");
    RESET(); M(1); T("DescribePCR"); M(0); REJECT_REQ(CL_EPARSE, "missing field index");
    RESET(); M(1); T("DescribePCR"); M(2); T("index"); U(0); T("extra"); U(1); REJECT_REQ(CL_EPARSE, "unknown field \"extra\"");
    RESET(); M(1); T("DescribePCR"); M(1); U(0); U(0); REJECT_REQ(CL_EPARSE, "field name");
    RESET(); M(1); T("DescribePCR"); U(0); REJECT_REQ(CL_EPARSE, "not a map");
    RESET(); M(1); T("DescribePCR"); M(2); T("index"); U(0); T("index"); U(1); REJECT_REQ(CL_EPARSE, "duplicate");
    RESET(); M(1); T("ExtendPCR"); M(2); T("index"); U(0); T("data"); T("ab"); REJECT_REQ(CL_EPARSE, "not a byte string");
    RESET(); M(1); T("ExtendPCR"); M(1); T("index"); U(0); REJECT_REQ(CL_EPARSE, "missing field data");
    RESET(); M(1); T("ExtendPCR"); M(1); T("data"); B("x", 1); REJECT_REQ(CL_EPARSE, "missing field index");
    RESET(); M(1); T("LockPCRs"); M(1); T("index"); U(1); REJECT_REQ(CL_EPARSE, "unknown field \"index\"");
    RESET(); M(1); T("Attestation"); M(1); T("user_data"); U(5); REJECT_REQ(CL_EPARSE, "user_data is a unsigned");
    RESET(); M(1); T("Attestation"); M(1); T("nonce"); T("n"); REJECT_REQ(CL_EPARSE, "nonce is a text");
    RESET(); M(1); T("Attestation"); M(1); T("challenge"); NUL(); REJECT_REQ(CL_EPARSE, "unknown field");
    RESET(); M(2); T("DescribePCR"); M(1); T("index"); U(0); T("LockPCR"); M(1); T("index"); U(0);
    REJECT_REQ(CL_EPARSE, "exactly 1");
    RESET(); M(0); REJECT_REQ(CL_EPARSE, "exactly 1");
    RESET(); M(1); U(1); M(0); REJECT_REQ(CL_EPARSE, "variant name is a unsigned");
    RESET(); A(1); T("DescribeNSM"); REJECT_REQ(CL_EPARSE, "not a variant name");
    RESET(); U(3); REJECT_REQ(CL_EPARSE, "not a variant name");
    RESET(); B("DescribeNSM", 11); REJECT_REQ(CL_EPARSE, "not a variant name");
    RESET(); T("DescribeNSM"); RAW(0x00); REJECT_REQ(CL_EPARSE, "trailing");
    RESET(); RAW(0x6b); CHECK_OK(cl_buf_append(&in, "Describe", 8)); REJECT_REQ(CL_EPARSE, NULL);
    RESET(); T("describeNSM"); REJECT_REQ(CL_EPARSE, "unknown variant");
    RESET(); M(1); T("DescribePCR"); M(1); T("index"); A(1); U(0); REJECT_REQ(CL_EPARSE, NULL);
    RESET(); REJECT_REQ(CL_EPARSE, "empty");
    RESET(); M(1); T("ExtendPCR"); M(2); T("index"); U(0); T("data");
    CHECK_OK(cl_cbor_put_bytes_head(&in, 5000));
    CHECK_OK(cl_buf_reserve(&in, 5000));
    memset(in.data + in.len, 0, 5000);
    in.len += 5000;
    REJECT_REQ(CL_ELIMIT, "exceeds the 4096-byte limit");
}

static void attestation_fields_optional_like_serde(void)
{
    cl_nsm_request req;
    cl_cbor_doc doc;
    RESET(); M(1); T("Attestation"); M(0);
    CHECK_OK(cl_nsm_request_decode(in.data, in.len, &req, &doc));
    CHECK(req.op == CL_NSM_ATTESTATION && !req.has_user_data && !req.has_nonce && !req.has_public_key);
    cl_cbor_doc_free(&doc);
    /* Fields in another order, and a non-shortest integer, as serde accepts. */
    RESET(); M(1); T("Attestation"); M(2); T("nonce"); B("ab", 2); T("user_data"); NUL();
    CHECK_OK(cl_nsm_request_decode(in.data, in.len, &req, &doc));
    CHECK(req.has_nonce && req.nonce.len == 2 && !req.has_user_data);
    cl_cbor_doc_free(&doc);
    RESET(); M(1); T("DescribePCR"); M(1); T("index"); RAW(0x19); RAW(0x00); RAW(0x05);
    CHECK_OK(cl_nsm_request_decode(in.data, in.len, &req, &doc));
    CHECK(req.op == CL_NSM_DESCRIBE_PCR && req.index == 5);
    cl_cbor_doc_free(&doc);
}

static void expect_response_rejected(int code, const char *fragment, int line)
{
    cl_nsm_response resp;
    cl_cbor_doc doc;
    cl_error_clear();
    int rc = cl_nsm_response_decode(in.data, in.len, &resp, &doc);
    if (rc != code || (fragment && !strstr(cl_error_message(), fragment))) {
        test_current_failed = 1;
        fprintf(stderr, "%s:%d: response: expected %s (\"%s\"), got %s: %s\n", __FILE__, line, cl_error_name(code),
                fragment ? fragment : "", cl_error_name(rc), cl_error_message());
    }
    if (rc == CL_OK)
        cl_cbor_doc_free(&doc);
}
#define REJECT_RESP(code, fragment) expect_response_rejected(code, fragment, __LINE__)

/* A DescribeNSM response with one field replaced (or dropped: skip). */
static void describe_nsm_with(const char *field, int variant)
{
    static const char *const names[] = {"version_major", "version_minor", "version_patch", "module_id",
                                        "max_pcrs", "locked_pcrs", "digest"};
    bool skip = variant == 0;
    RESET(); M(1); T("DescribeNSM"); M(skip ? 6 : 7);
    for (size_t i = 0; i < 7; i++) {
        bool target = !strcmp(names[i], field);
        if (target && skip)
            continue;
        T(names[i]);
        if (target) {
            switch (variant) {
            case 1: U(70000); break;
            case 2: T("x"); break;
            case 3: { char big[200]; memset(big, 'm', 199); big[199] = 0; T(big); break; }
            case 4: U(33); break;
            case 5: A(2); U(3); U(3); break;
            case 6: A(1); U(32); break;
            case 7: T("MD5"); break;
            case 8: A(1); N(0); break;
            case 9: U(8); break; /* max_pcrs below a locked index */
            }
            continue;
        }
        if (!strcmp(names[i], "module_id")) T("i-1-enc2");
        else if (!strcmp(names[i], "locked_pcrs")) { A(2); U(0); U(15); }
        else if (!strcmp(names[i], "digest")) T("SHA384");
        else if (!strcmp(names[i], "max_pcrs")) U(32);
        else U(1);
    }
}

static void malformed_responses(void)
{
    uint8_t pcr[65] = {0};
    RESET(); M(1); T("Error"); T("Nope"); REJECT_RESP(CL_EPARSE, "unknown error code \"Nope\"");
    RESET(); M(1); T("Error"); U(1); REJECT_RESP(CL_EPARSE, "Error code is a unsigned");
    RESET(); T("Error"); REJECT_RESP(CL_EPARSE, "needs a code");
    RESET(); M(1); T("Error"); T("Success"); REJECT_RESP(CL_EPARSE, "unknown error code");
    RESET(); T("DescribeNSM"); REJECT_RESP(CL_EPARSE, "needs fields");
    RESET(); T("GetRandom"); REJECT_RESP(CL_EPARSE, "needs fields");
    RESET(); M(1); T("LockPCR"); NUL(); REJECT_RESP(CL_EPARSE, "bare name");
    RESET(); T("Bogus"); REJECT_RESP(CL_EPARSE, "unknown variant");
    RESET(); M(1); T("DescribePCR"); M(2); T("lock"); BOOL(true); T("data"); B(pcr, 0); REJECT_RESP(CL_EPARSE, "0 bytes");
    RESET(); M(1); T("DescribePCR"); M(2); T("lock"); BOOL(true); T("data"); B(pcr, 65); REJECT_RESP(CL_EPARSE, "65 bytes");
    RESET(); M(1); T("DescribePCR"); M(1); T("data"); B(pcr, 48); REJECT_RESP(CL_EPARSE, "missing field lock");
    RESET(); M(1); T("DescribePCR"); M(2); T("lock"); U(1); T("data"); B(pcr, 48); REJECT_RESP(CL_EPARSE, "not a boolean");
    RESET(); M(1); T("DescribePCR"); M(2); T("lock"); NUL(); T("data"); B(pcr, 48); REJECT_RESP(CL_EPARSE, "not a boolean");
    RESET(); M(1); T("GetRandom"); M(1); T("random"); B(pcr, 0); REJECT_RESP(CL_EPARSE, "0 bytes");
    RESET(); M(1); T("GetRandom"); M(1); T("random"); NUL(); REJECT_RESP(CL_EPARSE, "not a byte string");
    /* an unknown field is skipped, but does not stand in for a known one */
    RESET(); M(1); T("Attestation"); M(1); T("doc"); B(pcr, 1); REJECT_RESP(CL_EPARSE, "missing field document");
    /* a skipped field is still held to the CBOR limits and well-formedness */
    RESET(); M(1); T("GetRandom"); M(2); T("random"); B(pcr, 4); T("future"); RAW(0x1c); REJECT_RESP(CL_EPARSE, NULL);
    RESET(); M(1); T("GetRandom"); M(2); T("random"); B(pcr, 4); T("random"); B(pcr, 4); REJECT_RESP(CL_EPARSE, "duplicate");
    RESET(); M(1); T("Attestation"); M(0); REJECT_RESP(CL_EPARSE, "missing field document");

    describe_nsm_with("digest", 0); REJECT_RESP(CL_EPARSE, "missing field digest");
    describe_nsm_with("version_major", 1); REJECT_RESP(CL_EPARSE, "exceeds 65535");
    describe_nsm_with("version_minor", 2); REJECT_RESP(CL_EPARSE, "not an unsigned integer");
    describe_nsm_with("module_id", 3); REJECT_RESP(CL_EPARSE, "at most 127");
    describe_nsm_with("max_pcrs", 4); REJECT_RESP(CL_EPARSE, "max_pcrs 33 exceeds 32");
    describe_nsm_with("locked_pcrs", 5); REJECT_RESP(CL_EPARSE, "twice");
    describe_nsm_with("locked_pcrs", 6); REJECT_RESP(CL_EPARSE, "PCR 32");
    describe_nsm_with("digest", 7); REJECT_RESP(CL_EPARSE, "\"MD5\"");
    describe_nsm_with("locked_pcrs", 8); REJECT_RESP(CL_EPARSE, "negative");
    describe_nsm_with("max_pcrs", 9); REJECT_RESP(CL_EPARSE, "beyond max_pcrs");
    describe_nsm_with("none", 10); /* unchanged: the builder itself is sound */
    {
        cl_nsm_response resp;
        cl_cbor_doc doc;
        CHECK_OK(cl_nsm_response_decode(in.data, in.len, &resp, &doc));
        CHECK(resp.description.locked_pcrs == ((1u << 0) | (1u << 15)));
        cl_cbor_doc_free(&doc);
    }
    RESET();
    CHECK_OK(cl_buf_reserve(&in, CL_NSM_RESPONSE_MAX + 1));
    memset(in.data, 0x40, CL_NSM_RESPONSE_MAX + 1);
    in.len = CL_NSM_RESPONSE_MAX + 1;
    REJECT_RESP(CL_ELIMIT, "12288-byte limit");
}

/* nsm-api's Response structs are plain serde derives: a field they do not
 * know is ignored.  A future NSM adding one must not stop the enclave. */
static void responses_tolerate_unknown_fields(void)
{
    uint8_t pcr[48];
    memset(pcr, 0xab, sizeof pcr);
    cl_nsm_response resp;
    cl_cbor_doc doc;
    /* an extra field of each CBOR kind, before, between and after the known ones */
    RESET(); M(1); T("DescribePCR"); M(5);
    T("generation"); U(7);
    T("lock"); BOOL(true);
    T("history"); A(2); B(pcr, 2); M(1); T("x"); N(3);
    T("data"); B(pcr, 48);
    T("note"); NUL();
    int rc = cl_nsm_response_decode(in.data, in.len, &resp, &doc);
    CHECK_OK(rc);
    CHECK(resp.op == CL_NSM_DESCRIBE_PCR && resp.lock && resp.data.len == 48 && !memcmp(resp.data.data, pcr, 48));
    if (rc == CL_OK)
        cl_cbor_doc_free(&doc);
    /* DescribeNSM with a field NSM might add (e.g. a second digest) */
    RESET(); M(1); T("DescribeNSM"); M(8);
    T("version_major"); U(1); T("version_minor"); U(0); T("version_patch"); U(2); T("module_id"); T("i-1-enc2");
    T("max_pcrs"); U(32); T("locked_pcrs"); A(2); U(0); U(15); T("digest"); T("SHA384");
    T("features"); A(1); T("future");
    rc = cl_nsm_response_decode(in.data, in.len, &resp, &doc);
    CHECK_OK(rc);
    CHECK(resp.op == CL_NSM_DESCRIBE_NSM && resp.description.version_patch == 2 &&
          !strcmp(resp.description.module_id, "i-1-enc2") && resp.description.max_pcrs == 32 &&
          resp.description.locked_pcrs == ((1u << 0) | (1u << 15)));
    if (rc == CL_OK)
        cl_cbor_doc_free(&doc);
    RESET(); M(1); T("ExtendPCR"); M(2); T("data"); B(pcr, 48); T("lock"); BOOL(false);
    rc = cl_nsm_response_decode(in.data, in.len, &resp, &doc);
    CHECK_OK(rc);
    CHECK(resp.op == CL_NSM_EXTEND_PCR && resp.data.len == 48);
    if (rc == CL_OK)
        cl_cbor_doc_free(&doc);
    RESET(); M(1); T("Attestation"); M(2); T("document"); B(pcr, 10); T("document_v2"); B(pcr, 3);
    rc = cl_nsm_response_decode(in.data, in.len, &resp, &doc);
    CHECK_OK(rc);
    CHECK(resp.op == CL_NSM_ATTESTATION && resp.data.len == 10);
    if (rc == CL_OK)
        cl_cbor_doc_free(&doc);
}

static void encoder_rejects_bad_values(void)
{
    cl_buf out = CL_BUF_INIT;
    cl_nsm_request req = {.op = 42};
    CHECK_ERR(cl_nsm_request_encode(&req, &out), CL_EINVAL, "unknown op");
    static uint8_t big[5000];
    req = (cl_nsm_request){.op = CL_NSM_EXTEND_PCR, .data = {big, sizeof big}};
    CHECK_ERR(cl_nsm_request_encode(&req, &out), CL_ELIMIT, "limit");
    CHECK(out.len == 0);
    cl_nsm_response resp = {.op = -1, .error_code = CL_NSM_SUCCESS};
    CHECK_ERR(cl_nsm_response_encode(&resp, &out), CL_EINVAL, "not an error code");
    resp = (cl_nsm_response){.op = -1, .error_code = 99};
    CHECK_ERR(cl_nsm_response_encode(&resp, &out), CL_EINVAL, "not an error code");
    cl_buf_free(&out);
    CHECK(!strcmp(cl_nsm_error_name(CL_NSM_INPUT_TOO_LARGE), "InputTooLarge"));
    CHECK(!strcmp(cl_nsm_error_name(CL_NSM_BUFFER_TOO_SMALL), "BufferTooSmall"));
    CHECK(!strcmp(cl_nsm_error_name(-3), "UnknownError"));
    CHECK(!strcmp(cl_nsm_op_name(CL_NSM_LOCK_PCRS), "LockPCRs"));
}

static void framing(void)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    cl_buf got = CL_BUF_INIT;
    bool eof = true;
    CHECK_OK(cl_nsm_frame_write(sv[0], (const uint8_t *)"hello", 5));
    CHECK_OK(cl_nsm_frame_write(sv[0], NULL, 0));
    CHECK_OK(cl_nsm_frame_read(sv[1], 100, &got, &eof));
    CHECK(!eof && got.len == 5 && !memcmp(got.data, "hello", 5));
    CHECK_OK(cl_nsm_frame_read(sv[1], 100, &got, &eof));
    CHECK(!eof && got.len == 0);
    /* Over the limit: refused before the body is read. */
    CHECK(write(sv[0], "\x00\x00\x10\x01", 4) == 4);
    CHECK_ERR(cl_nsm_frame_read(sv[1], CL_NSM_REQUEST_MAX, &got, &eof), CL_ELIMIT, "4097 bytes");
    CHECK(write(sv[0], "\x00\x00\x00\x05" "ab", 6) == 6);
    close(sv[0]);
    CHECK_ERR(cl_nsm_frame_read(sv[1], 100, &got, &eof), CL_EIO, "inside a frame (2 of 5");
    close(sv[1]);

    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    CHECK(write(sv[0], "\x00\x00", 2) == 2);
    close(sv[0]);
    CHECK_ERR(cl_nsm_frame_read(sv[1], 100, &got, &eof), CL_EIO, "frame header");
    close(sv[1]);

    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    close(sv[0]);
    CHECK_OK(cl_nsm_frame_read(sv[1], 100, &got, &eof));
    CHECK(eof);
    close(sv[1]);
    cl_buf_free(&got);
}

/* A scripted NSM behind the custom transport. */
typedef struct fake {
    int mode;
    int calls;
} fake;

static int fake_exchange(void *ctx, const uint8_t *req, size_t req_len, cl_buf *resp)
{
    fake *f = ctx;
    f->calls++;
    cl_nsm_request r;
    cl_cbor_doc doc;
    CL_TRY(cl_nsm_request_decode(req, req_len, &r, &doc));
    cl_cbor_doc_free(&doc);
    static const uint8_t ten[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    cl_nsm_response out = {.op = r.op};
    switch (f->mode) {
    case 0: /* GetRandom with 10 bytes at a time */
        out.data = (cl_slice){ten, 10};
        break;
    case 1:
        out = (cl_nsm_response){.op = -1, .error_code = CL_NSM_READ_ONLY_INDEX};
        break;
    case 2:
        out = (cl_nsm_response){.op = CL_NSM_LOCK_PCR};
        break;
    case 3:
        return cl_buf_append(resp, "\xff", 1);
    case 4:
        return cl_error_set(CL_EIO, "transport broke");
    }
    return cl_nsm_response_encode(&out, resp);
}

static void client_over_custom_transport(void)
{
    fake f = {0};
    cl_nsm *nsm = NULL;
    CHECK_OK(cl_nsm_open_custom(fake_exchange, &f, &nsm));
    if (!nsm)
        return;
    uint8_t buf[25];
    CHECK_OK(cl_nsm_get_random(nsm, buf, sizeof buf));
    CHECK(f.calls == 3 && buf[0] == 1 && buf[10] == 1 && buf[20] == 1 && buf[24] == 5);
    f.mode = 1;
    CHECK_ERR(cl_nsm_extend_pcr(nsm, 0, buf, 1, NULL), CL_ENSM, "NSM error ReadOnlyIndex");
    CHECK(cl_nsm_last_error(nsm) == CL_NSM_READ_ONLY_INDEX);
    f.mode = 2;
    bool locked;
    cl_buf value = CL_BUF_INIT;
    CHECK_ERR(cl_nsm_describe_pcr(nsm, 1, &locked, &value), CL_EPROTO, "answered LockPCR to a DescribePCR");
    CHECK_OK(cl_nsm_lock_pcr(nsm, 1));
    CHECK(cl_nsm_last_error(nsm) == CL_NSM_SUCCESS);
    f.mode = 3;
    CHECK_ERR(cl_nsm_lock_pcrs(nsm, 3), CL_EPARSE, NULL);
    f.mode = 4;
    cl_nsm_description d;
    CHECK_ERR(cl_nsm_describe(nsm, &d), CL_EIO, "transport broke");
    uint8_t big[CL_NSM_REQUEST_MAX + 1] = {0};
    CHECK_ERR(cl_nsm_exchange(nsm, big, sizeof big, &value), CL_ELIMIT, NULL);
    cl_buf_free(&value);
    cl_nsm_close(nsm);
    CHECK_ERR(cl_nsm_open_custom(NULL, NULL, &nsm), CL_EINVAL, NULL);
}

static void open_addresses(void)
{
    cl_nsm *nsm = NULL;
    CHECK_ERR(cl_nsm_open("tcp:127.0.0.1:1", &nsm), CL_EINVAL, "unix:PATH");
    CHECK_ERR(cl_nsm_open("vsock:3:5000", &nsm), CL_EINVAL, "unix:PATH");
    CHECK_ERR(cl_nsm_open("nsm", &nsm), CL_EINVAL, "device path");
    CHECK_ERR(cl_nsm_open("/nonexistent/cloister-nsm", &nsm), CL_EIO, "/nonexistent/cloister-nsm");
    CHECK_ERR(cl_nsm_open("unix:/nonexistent/cloister.sock", &nsm), CL_EIO, "cannot connect");
    CHECK_ERR(cl_nsm_open("unix:", &nsm), CL_EINVAL, "empty path");
    CHECK(nsm == NULL);
    setenv(CL_NSM_ENV, "unix:/nonexistent/from-env.sock", 1);
    CHECK_ERR(cl_nsm_open(NULL, &nsm), CL_EIO, "from-env.sock");
    CHECK_ERR(cl_nsm_open("", &nsm), CL_EIO, "from-env.sock");
    unsetenv(CL_NSM_ENV);
}

int main(void)
{
    RUN(request_exact_encodings);
    RUN(response_exact_encodings);
    RUN(request_round_trips);
    RUN(response_round_trips);
    RUN(malformed_requests);
    RUN(attestation_fields_optional_like_serde);
    RUN(malformed_responses);
    RUN(responses_tolerate_unknown_fields);
    RUN(encoder_rejects_bad_values);
    RUN(framing);
    RUN(client_over_custom_transport);
    RUN(open_addresses);
    cl_buf_free(&in);
    return test_summary();
}

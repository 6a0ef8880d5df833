/* The DynamoDB client's JSON mapping: attribute values, answers, errors,
 * and the ACME store's record digest and names. */
#include "cloister/enclave/cert_store.h"
#include "cloister/enclave/dynamodb.h"
#include "test.h"

#include <jansson.h>

static json_t *J(const char *text)
{
    json_error_t e;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &e);
    if (!j)
        fprintf(stderr, "bad test JSON %s: %s\n", text, e.text);
    return j;
}

static int check_text(const char *text)
{
    json_t *v = J(text);
    int rc = cl_dynamodb_check_value(v, 0);
    json_decref(v);
    return rc;
}

static void attribute_values(void)
{
    static const char *const good[] = {
        "{\"S\": \"\"}", "{\"S\": \"text\"}", "{\"N\": \"42\"}", "{\"N\": \"-1.5e10\"}", "{\"N\": \".5\"}",
        "{\"B\": \"AAEC\"}", "{\"B\": \"\"}", "{\"BOOL\": false}", "{\"NULL\": true}", "{\"SS\": [\"a\", \"b\"]}",
        "{\"NS\": [\"1\", \"2.5\"]}", "{\"BS\": [\"AA==\"]}", "{\"L\": []}", "{\"L\": [{\"S\": \"x\"}, {\"N\": \"1\"}]}",
        "{\"M\": {\"a\": {\"M\": {\"b\": {\"BOOL\": true}}}}}",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        int rc = check_text(good[i]);
        if (rc != CL_OK)
            fprintf(stderr, "refused %s: %s\n", good[i], cl_error_message());
        CHECK(rc == CL_OK);
    }
    static const char *const bad[] = {
        "{}", "{\"S\": \"a\", \"N\": \"1\"}", "{\"S\": 1}", "{\"N\": 1}", "{\"N\": \"1x\"}", "{\"N\": \"\"}",
        "{\"N\": \"-\"}", "{\"N\": \"1e\"}", "{\"B\": \"%%%\"}", "{\"BOOL\": \"true\"}", "{\"NULL\": false}",
        "{\"SS\": []}", "{\"SS\": [1]}", "{\"NS\": [\"x\"]}", "{\"BS\": [\"*\"]}", "{\"L\": {}}", "{\"M\": []}",
        "{\"L\": [{\"X\": 1}]}", "{\"X\": \"y\"}", "[]", "\"S\"", "{\"M\": {\"a\": {\"S\": null}}}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = check_text(bad[i]);
        if (rc != CL_EPROTO)
            fprintf(stderr, "accepted or wrong code for %s: %d\n", bad[i], rc);
        CHECK(rc == CL_EPROTO);
    }
}

static void nesting_is_bounded(void)
{
    /* 33 levels of L: one beyond DynamoDB's 32 */
    char text[33 * 8 + 64] = "";
    for (int i = 0; i < 34; i++)
        strcat(text, "{\"L\":[");
    strcat(text, "{\"S\":\"x\"}");
    for (int i = 0; i < 34; i++)
        strcat(text, "]}");
    CHECK_ERR(check_text(text), CL_ELIMIT, "nested deeper than 32");
    char ok[33 * 8 + 64] = "";
    for (int i = 0; i < 32; i++)
        strcat(ok, "{\"L\":[");
    strcat(ok, "{\"S\":\"x\"}");
    for (int i = 0; i < 32; i++)
        strcat(ok, "]}");
    CHECK_OK(check_text(ok));
}

static void answers(void)
{
    json_t *root = NULL, *item = NULL;
    const char *a = "{\"Item\": {\"pk\": {\"S\": \"a\"}, \"n\": {\"N\": \"7\"}, \"b\": {\"B\": \"AAEC\"}}}";
    CHECK_OK(cl_dynamodb_parse_answer((const uint8_t *)a, strlen(a), "Item", &root, &item));
    CHECK(json_is_object(root) && json_is_object(item));
    const char *s = NULL;
    int64_t n = 0;
    cl_buf b = CL_BUF_INIT;
    CHECK_OK(cl_dynamodb_get_s(item, "pk", &s));
    CHECK(s && !strcmp(s, "a"));
    CHECK_OK(cl_dynamodb_get_n(item, "n", &n));
    CHECK(n == 7);
    CHECK_OK(cl_dynamodb_get_b(item, "b", &b));
    CHECK(b.len == 3 && b.data[0] == 0 && b.data[2] == 2);
    CHECK_ERR(cl_dynamodb_get_s(item, "n", &s), CL_EPROTO, "not of type S");
    CHECK_ERR(cl_dynamodb_get_n(item, "missing", &n), CL_ENOTFOUND, "no attribute 'missing'");
    cl_buf_free(&b);
    json_decref(root);
    json_decref(item);

    /* no Item: CL_OK and NULL, as GetItem of an absent key */
    CHECK_OK(cl_dynamodb_parse_answer((const uint8_t *)"{}", 2, "Item", NULL, &item));
    CHECK(item == NULL);
    const char *dup = "{\"Item\": {}, \"Item\": {}}";
    CHECK_ERR(cl_dynamodb_parse_answer((const uint8_t *)dup, strlen(dup), "Item", NULL, &item), CL_EPROTO,
              "not a JSON object");
    const char *bad = "{\"Item\": {\"pk\": {\"S\": \"a\", \"B\": \"AA==\"}}}";
    CHECK_ERR(cl_dynamodb_parse_answer((const uint8_t *)bad, strlen(bad), "Item", NULL, &item), CL_EPROTO,
              "attribute 'pk'");
    CHECK_ERR(cl_dynamodb_parse_answer((const uint8_t *)"[1]", 3, "Item", NULL, &item), CL_EPROTO, "JSON object");
    CHECK_ERR(cl_dynamodb_parse_answer((const uint8_t *)"", 0, "Item", NULL, &item), CL_EPROTO, "JSON object");
    CHECK(item == NULL);
}

static void integers(void)
{
    json_t *it = J("{\"a\": {\"N\": \"9223372036854775807\"}, \"b\": {\"N\": \"-12\"}, \"c\": {\"N\": \"1.5\"},"
                   " \"d\": {\"N\": \"9223372036854775808\"}, \"e\": {\"N\": \"99999999999999999999\"}}");
    int64_t v = 0;
    CHECK_OK(cl_dynamodb_get_n(it, "a", &v));
    CHECK(v == INT64_MAX);
    CHECK_OK(cl_dynamodb_get_n(it, "b", &v));
    CHECK(v == -12);
    CHECK_ERR(cl_dynamodb_get_n(it, "c", &v), CL_EPROTO, "not an integer");
    CHECK_ERR(cl_dynamodb_get_n(it, "d", &v), CL_EPROTO, "out of range");
    CHECK_ERR(cl_dynamodb_get_n(it, "e", &v), CL_EPROTO, "not an integer");
    json_decref(it);
}

static void builders(void)
{
    json_t *s = cl_dynamodb_s("x"), *n = cl_dynamodb_n(-5);
    const uint8_t raw[] = {0xff, 0x00, 0x10};
    json_t *b = cl_dynamodb_b(raw, sizeof raw);
    json_t *item = json_pack("{sOsOsO}", "s", s, "n", n, "b", b);
    CHECK_OK(cl_dynamodb_check_item(item));
    char *t = json_dumps(item, JSON_SORT_KEYS | JSON_COMPACT);
    CHECK(t && !strcmp(t, "{\"b\":{\"B\":\"/wAQ\"},\"n\":{\"N\":\"-5\"},\"s\":{\"S\":\"x\"}}"));
    free(t);
    json_decref(s);
    json_decref(n);
    json_decref(b);
    json_decref(item);
}

static void errors(void)
{
    char type[128], msg[256];
    const char *e = "{\"__type\":\"com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException\","
                    "\"message\":\"The conditional request failed\"}";
    CHECK_OK(cl_dynamodb_parse_error(400, (const uint8_t *)e, strlen(e), type, sizeof type, msg, sizeof msg));
    CHECK(!strcmp(type, "ConditionalCheckFailedException"));
    CHECK(!strcmp(msg, "The conditional request failed"));
    CHECK(cl_dynamodb_error_code(400, type) == CL_ECONFLICT);
    CHECK(!cl_dynamodb_retryable(400, type));

    CHECK(cl_dynamodb_error_code(400, "ResourceNotFoundException") == CL_ENOTFOUND);
    CHECK(cl_dynamodb_error_code(400, "AccessDeniedException") == CL_EDENIED);
    CHECK(cl_dynamodb_error_code(400, "UnrecognizedClientException") == CL_EDENIED);
    CHECK(cl_dynamodb_error_code(400, "ProvisionedThroughputExceededException") == CL_EBUSY);
    CHECK(cl_dynamodb_retryable(400, "ProvisionedThroughputExceededException"));
    CHECK(cl_dynamodb_retryable(400, "ThrottlingException"));
    CHECK(cl_dynamodb_error_code(400, "ValidationException") == CL_EINVAL);
    CHECK(!cl_dynamodb_retryable(400, "ValidationException"));
    CHECK(cl_dynamodb_error_code(500, "InternalServerError") == CL_EIO);
    CHECK(cl_dynamodb_retryable(500, "InternalServerError"));
    CHECK(cl_dynamodb_retryable(503, NULL));
    CHECK(!cl_dynamodb_retryable(400, NULL));
    /* the four codes the callers tell apart are distinct */
    int codes[] = {CL_ECONFLICT, CL_ENOTFOUND, CL_EDENIED, CL_EBUSY};
    for (size_t i = 0; i < 4; i++)
        for (size_t j = i + 1; j < 4; j++)
            CHECK(codes[i] != codes[j]);
    CHECK(!strcmp(cl_error_name(CL_ECONFLICT), "condition failed"));

    /* control characters in AWS's text do not reach the log */
    const char *ctl = "{\"__type\":\"X\",\"message\":\"a\\u001b[31mb\"}";
    CHECK_OK(cl_dynamodb_parse_error(400, (const uint8_t *)ctl, strlen(ctl), type, sizeof type, msg, sizeof msg));
    CHECK(!strchr(msg, 0x1b));
    CHECK_ERR(cl_dynamodb_parse_error(502, (const uint8_t *)"<html>", 6, type, sizeof type, msg, sizeof msg),
              CL_EPROTO, "HTTP 502");
}

static void config_checks(void)
{
    cl_aws_credentials_provider *p = NULL;
    CHECK_OK(cl_aws_credentials_static("AKIAEXAMPLE00000000", "secret", NULL, &p));
    cl_dynamodb *d = NULL;
    cl_dynamodb_config c = {.region = "eu-west-1", .credentials = p, .endpoint = "http://127.0.0.1:1"};
    CHECK_ERR(cl_dynamodb_new(&c, &d), CL_EINVAL, "https://");
    c.allow_http = true;
    CHECK_OK(cl_dynamodb_new(&c, &d));
    /* requests are checked before anything is sent */
    json_t *key = J("{\"pk\": {\"S\": \"a\"}}"), *item = NULL;
    CHECK_ERR(cl_dynamodb_get_item(d, "ab", key, NULL, &item), CL_EINVAL, "3..255");
    CHECK_ERR(cl_dynamodb_get_item(d, "bad table!", key, NULL, &item), CL_EINVAL, "only letters");
    json_t *badkey = J("{\"pk\": {\"S\": 1}}");
    CHECK_ERR(cl_dynamodb_get_item(d, "table", badkey, NULL, &item), CL_EINVAL, "the Key");
    cl_dynamodb_options o = {.condition = "attribute_exists(pk)"};
    CHECK_ERR(cl_dynamodb_get_item(d, "table", key, &o, &item), CL_EINVAL, "no condition");
    CHECK_ERR(cl_dynamodb_update_item(d, "table", key, NULL, NULL), CL_EINVAL, "update expression");
    json_decref(key);
    json_decref(badkey);
    cl_dynamodb_free(d);
    c.endpoint = "https://host/path";
    CHECK_ERR(cl_dynamodb_new(&c, &d), CL_EINVAL, "no path");
    c.endpoint = NULL;
    c.region = "EU WEST";
    CHECK_ERR(cl_dynamodb_new(&c, &d), CL_EINVAL, "not a region");
    cl_aws_credentials_provider_free(p);
}

static void record_digest(void)
{
    char a[65], b[65], c[65];
    CHECK_OK(cl_cert_store_record_digest("a", (const uint8_t *)"bc", 2, (const uint8_t *)"{}", 2, a));
    CHECK_OK(cl_cert_store_record_digest("ab", (const uint8_t *)"c", 1, (const uint8_t *)"{}", 2, b));
    CHECK_OK(cl_cert_store_record_digest("a", (const uint8_t *)"b", 1, (const uint8_t *)"c{}", 3, c));
    CHECK(strlen(a) == 64 && strcmp(a, b) && strcmp(a, c) && strcmp(b, c));
    char a2[65];
    CHECK_OK(cl_cert_store_record_digest("a", (const uint8_t *)"bc", 2, (const uint8_t *)"{}", 2, a2));
    CHECK(!strcmp(a, a2));
    CHECK_OK(cl_cert_store_check_name("site-1.example_com"));
    CHECK_ERR(cl_cert_store_check_name(".hidden"), CL_EINVAL, "starts with '.'");
    CHECK_ERR(cl_cert_store_check_name("a/b"), CL_EINVAL, "only letters");
    CHECK_ERR(cl_cert_store_check_name(""), CL_EINVAL, "no record name");
    char longname[200];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    CHECK_ERR(cl_cert_store_check_name(longname), CL_EINVAL, "longer than 128");
}

int main(void)
{
    RUN(attribute_values);
    RUN(nesting_is_bounded);
    RUN(answers);
    RUN(integers);
    RUN(builders);
    RUN(errors);
    RUN(config_checks);
    RUN(record_digest);
    return test_summary();
}

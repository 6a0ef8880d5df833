#include "cloister/core/imds_policy.h"
#include "test.h"

static bool allowed(const char *method, const char *path)
{
    cl_slice m = {(const uint8_t *)method, strlen(method)};
    cl_slice p = {(const uint8_t *)path, strlen(path)};
    return cl_imds_call_allowed(m, p);
}

static void allows_exactly_the_enclave_calls(void)
{
    CHECK(allowed("PUT", "/latest/api/token"));
    CHECK(allowed("GET", "/latest/meta-data/iam/security-credentials/"));
    CHECK(allowed("GET", "/latest/meta-data/iam/security-credentials/my-role"));
    CHECK(allowed("GET", "/latest/meta-data/iam/security-credentials/Role+=,.@_-9"));
    CHECK(allowed("GET", "/latest/meta-data/placement/region"));
    CHECK(allowed("GET", "/latest/meta-data/local-hostname"));
    CHECK(allowed("GET", "/latest/meta-data/local-ipv4"));
    CHECK(allowed("GET", "/latest/dynamic/instance-identity/document"));
    char longest[128];
    snprintf(longest, sizeof longest, "/latest/meta-data/iam/security-credentials/%064d", 7);
    CHECK(allowed("GET", longest));
}

static void refuses_everything_else(void)
{
    static const char *const bad[][2] = {
        /* methods */
        {"GET", "/latest/api/token"},
        {"POST", "/latest/api/token"},
        {"put", "/latest/api/token"},
        {"PUT", "/latest/meta-data/placement/region"},
        {"HEAD", "/latest/meta-data/placement/region"},
        {"DELETE", "/latest/meta-data/iam/security-credentials/"},
        /* other data, notably user-data and the instance's own identity */
        {"GET", "/latest/user-data"},
        {"GET", "/latest/meta-data/"},
        {"GET", "/latest/meta-data/instance-id"},
        {"GET", "/latest/meta-data/iam/info"},
        {"GET", "/latest/meta-data/local-ipv4s"},
        {"GET", "/latest/meta-data/public-ipv4"},
        {"GET", "/latest/dynamic/instance-identity/signature"},
        {"GET", "/2021-07-15/meta-data/placement/region"},
        /* near misses */
        {"GET", "/latest/meta-data/placement/region/"},
        {"GET", "/latest/meta-data/placement/region/x"},
        {"GET", "/Latest/meta-data/placement/region"},
        {"GET", "//latest/meta-data/placement/region"},
        {"GET", "/latest/meta-data/iam/security-credentials"},
        {"PUT", "/latest/api/token/"},
        {"GET", "/latest/meta-data/iam/security-credentials/../../user-data"},
        {"GET", "/latest/meta-data/iam/security-credentials/.."},
        {"GET", "/latest/meta-data/iam/security-credentials/."},
        {"GET", "/latest/meta-data/iam/security-credentials/role/"},
        {"GET", "/latest/meta-data/iam/security-credentials/role/x"},
        {"GET", "/latest/meta-data/iam/security-credentials/r%2e"},
        {"GET", "/latest/meta-data/iam/security-credentials/a b"},
        {"GET", "http://169.254.169.254/latest/meta-data/placement/region"},
        {"GET", ""},
        {"", "/latest/api/token"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (allowed(bad[i][0], bad[i][1])) {
            fprintf(stderr, "allowed: %s %s\n", bad[i][0], bad[i][1]);
            CHECK(0);
        }
    }
    char too_long[128];
    snprintf(too_long, sizeof too_long, "/latest/meta-data/iam/security-credentials/%065d", 7);
    CHECK(!allowed("GET", too_long));
    /* a NUL inside the path is compared as a byte, never as an end */
    const char with_nul[] = "/latest/meta-data/placement/region\0x";
    cl_slice p = {(const uint8_t *)with_nul, sizeof with_nul - 1};
    CHECK(!cl_imds_call_allowed((cl_slice){(const uint8_t *)"GET", 3}, p));
}

static void role_names(void)
{
    CHECK(cl_imds_role_name_valid("a", 1));
    CHECK(cl_imds_role_name_valid("...", 3));
    CHECK(!cl_imds_role_name_valid("", 0));
    CHECK(!cl_imds_role_name_valid(".", 1));
    CHECK(!cl_imds_role_name_valid("..", 2));
    CHECK(!cl_imds_role_name_valid("a/b", 3));
    CHECK(!cl_imds_role_name_valid("a%b", 3));
    CHECK(!cl_imds_role_name_valid("caf\xc3\xa9", 5));
}

static void lists_the_calls(void)
{
    const char *calls = cl_imds_allowed_calls();
    CHECK(strstr(calls, "PUT /latest/api/token\n") != NULL);
    CHECK(strstr(calls, "GET /latest/dynamic/instance-identity/document\n") != NULL);
}

int main(void)
{
    RUN(allows_exactly_the_enclave_calls);
    RUN(refuses_everything_else);
    RUN(role_names);
    RUN(lists_the_calls);
    return test_summary();
}

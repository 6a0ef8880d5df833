/* The KMS client's pieces that need no KMS: AWS error shapes, what is
 * retried, IMDS credentials JSON, the refresh rule, and the IMDSv2 flow
 * with refresh against a small in-process IMDS on a unix socket; client
 * configuration checks. */
#include "cloister/enclave/kms.h"
#include "test.h"

#include <pthread.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static void error_shapes(void)
{
    char type[64], msg[256];
    const char *b1 = "{\"__type\":\"AccessDeniedException\",\"message\":\"not allowed\"}";
    CHECK_OK(cl_kms_parse_error(400, (const uint8_t *)b1, strlen(b1), type, sizeof type, msg, sizeof msg));
    CHECK(!strcmp(type, "AccessDeniedException") && !strcmp(msg, "not allowed"));
    const char *b2 = "{\"__type\":\"com.amazonaws.kms#NotFoundException\",\"Message\":\"Alias x is not found.\"}";
    CHECK_OK(cl_kms_parse_error(400, (const uint8_t *)b2, strlen(b2), type, sizeof type, msg, sizeof msg));
    CHECK(!strcmp(type, "NotFoundException") && !strcmp(msg, "Alias x is not found."));
    const char *b3 = "{\"__type\":\"ValidationException:http://internal.amazon.com/coral/x/\"}";
    CHECK_OK(cl_kms_parse_error(400, (const uint8_t *)b3, strlen(b3), type, sizeof type, msg, sizeof msg));
    CHECK(!strcmp(type, "ValidationException") && msg[0] == '\0');
    /* control characters in a message do not reach the terminal */
    const char *b4 = "{\"__type\":\"X\",\"message\":\"a\\u001b[31mb\\nc\"}";
    CHECK_OK(cl_kms_parse_error(400, (const uint8_t *)b4, strlen(b4), type, sizeof type, msg, sizeof msg));
    CHECK(!strcmp(msg, "a?[31mb?c"));
    /* truncated into small buffers */
    char small[8];
    CHECK_OK(cl_kms_parse_error(400, (const uint8_t *)b1, strlen(b1), small, sizeof small, msg, sizeof msg));
    CHECK(!strcmp(small, "AccessD"));
    const char *html = "<html>502 Bad Gateway</html>";
    CHECK_ERR(cl_kms_parse_error(502, (const uint8_t *)html, strlen(html), type, sizeof type, msg, sizeof msg),
              CL_EPROTO, "HTTP 502 without an AWS error object: <html>502");
    CHECK_ERR(cl_kms_parse_error(500, NULL, 0, type, sizeof type, msg, sizeof msg), CL_EPROTO, "HTTP 500");
    const char *notype = "{\"message\":\"m\"}";
    CHECK_ERR(cl_kms_parse_error(400, (const uint8_t *)notype, strlen(notype), type, sizeof type, msg, sizeof msg),
              CL_EPROTO, "no __type");
}

static void what_is_retried(void)
{
    CHECK(cl_kms_retryable(400, "ThrottlingException"));
    CHECK(cl_kms_retryable(500, "KMSInternalException"));
    CHECK(cl_kms_retryable(503, ""));
    CHECK(cl_kms_retryable(502, NULL));
    CHECK(cl_kms_retryable(429, ""));
    CHECK(cl_kms_retryable(400, "DependencyTimeoutException"));
    CHECK(!cl_kms_retryable(400, "AccessDeniedException"));
    CHECK(!cl_kms_retryable(400, "InvalidCiphertextException"));
    CHECK(!cl_kms_retryable(400, "NotFoundException"));
    CHECK(!cl_kms_retryable(403, ""));
}

static void imds_credentials_json(void)
{
    const char *good = "{\"Code\" : \"Success\", \"LastUpdated\" : \"2026-12-01T10:00:00Z\", \"Type\" : \"AWS-HMAC\",\n"
                       " \"AccessKeyId\" : \"ASIAAAAAAAAAAAAAAAAA\", \"SecretAccessKey\" : \"sssss\",\n"
                       " \"Token\" : \"ttttt\", \"Expiration\" : \"2026-12-01T16:00:00Z\"}";
    cl_aws_credentials c;
    CHECK_OK(cl_aws_credentials_parse_imds(good, strlen(good), &c));
    CHECK(!strcmp(c.access_key_id, "ASIAAAAAAAAAAAAAAAAA") && !strcmp(c.secret_access_key, "sssss") &&
          !strcmp(c.session_token, "ttttt"));
    struct tm tm = {0};
    gmtime_r(&(time_t){(time_t)c.expiration}, &tm);
    CHECK(tm.tm_year == 126 && tm.tm_mon == 11 && tm.tm_mday == 1 && tm.tm_hour == 16 && tm.tm_min == 0);
    cl_aws_credentials_wipe(&c);
    CHECK(c.secret_access_key[0] == '\0');

    static const char *const bad[][2] = {
        {"not json", "not JSON"},
        {"[]", "not a JSON object"},
        {"{\"Code\":\"Expired\"}", "Code Expired"},
        {"{\"Code\":\"Success\",\"AccessKeyId\":\"A\",\"SecretAccessKey\":\"S\",\"Token\":\"T\"}", "lack"},
        {"{\"Code\":\"Success\",\"AccessKeyId\":\"A\",\"SecretAccessKey\":\"S\",\"Token\":\"T\",\"Expiration\":\"soon\"}",
         "not an RFC 3339"},
        {"{\"Code\":\"Success\",\"AccessKeyId\":\"A B\",\"SecretAccessKey\":\"S\",\"Token\":\"T\",\"Expiration\":"
         "\"2026-12-01T16:00:00Z\"}",
         "not printable"},
        {"{\"Code\":\"Success\",\"Code\":\"Success\"}", "not JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cl_error_clear();
        int rc = cl_aws_credentials_parse_imds(bad[i][0], strlen(bad[i][0]), &c);
        CHECK(rc < 0);
        if (rc >= 0 || !strstr(cl_error_message(), bad[i][1])) {
            fprintf(stderr, "case %zu: %s\n", i, cl_error_message());
            CHECK(false);
        }
    }
}

static void refresh_rule(void)
{
    int64_t now = 1800000000;
    CHECK(!cl_aws_credentials_due(0, now)); /* static credentials never expire */
    CHECK(!cl_aws_credentials_due(now + 3600, now));
    CHECK(!cl_aws_credentials_due(now + CL_AWS_REFRESH_BEFORE_S + 1, now));
    CHECK(cl_aws_credentials_due(now + CL_AWS_REFRESH_BEFORE_S, now));
    CHECK(cl_aws_credentials_due(now + 60, now));
    CHECK(cl_aws_credentials_due(now - 1, now));
}

static void static_and_env(void)
{
    cl_aws_credentials_provider *p = NULL;
    CHECK_ERR(cl_aws_credentials_static("", "s", NULL, &p), CL_EINVAL, "access key id");
    CHECK_ERR(cl_aws_credentials_static("AKID", NULL, NULL, &p), CL_EINVAL, "secret");
    CHECK_ERR(cl_aws_credentials_static("AK\nID", "s", NULL, &p), CL_EINVAL, "printable");
    CHECK_OK(cl_aws_credentials_static("AKID", "secret", "", &p));
    cl_aws_credentials c;
    CHECK_OK(cl_aws_credentials_get(p, &c));
    CHECK(!strcmp(c.access_key_id, "AKID") && !strcmp(c.secret_access_key, "secret") && c.session_token[0] == '\0' &&
          c.expiration == 0);
    CHECK(!strcmp(cl_aws_credentials_source(p), "flags"));
    char region[64];
    CHECK_ERR(cl_aws_credentials_imds_region(p, region, sizeof region), CL_EINVAL, "IMDS");
    cl_aws_credentials_provider_free(p);

    setenv("AWS_ACCESS_KEY_ID", "AKIAENV", 1);
    unsetenv("AWS_SECRET_ACCESS_KEY");
    CHECK_ERR(cl_aws_credentials_from_env(&p), CL_ENOTFOUND, "not both set");
    setenv("AWS_SECRET_ACCESS_KEY", "envsecret", 1);
    setenv("AWS_SESSION_TOKEN", "envtoken", 1);
    CHECK_OK(cl_aws_credentials_from_env(&p));
    CHECK_OK(cl_aws_credentials_get(p, &c));
    CHECK(!strcmp(c.access_key_id, "AKIAENV") && !strcmp(c.session_token, "envtoken"));
    CHECK(!strcmp(cl_aws_credentials_source(p), "environment"));
    cl_aws_credentials_provider_free(p);
    unsetenv("AWS_ACCESS_KEY_ID");
    unsetenv("AWS_SECRET_ACCESS_KEY");
    unsetenv("AWS_SESSION_TOKEN");
}

/* ---- a small IMDS ----------------------------------------------------- */

static char imds_path[108];
static int imds_fd = -1;
static int imds_lifetime_s; /* credentials expire this long after each fetch */
static int imds_token_calls, imds_cred_calls, imds_role_calls;
static bool imds_stop;

static void *imds_thread(void *arg)
{
    (void)arg;
    for (;;) {
        int c = accept(imds_fd, NULL, NULL);
        if (c < 0 || imds_stop) {
            if (c >= 0)
                close(c);
            return NULL;
        }
        char req[4096];
        size_t n = 0;
        while (n < sizeof req - 1) {
            ssize_t r = read(c, req + n, sizeof req - 1 - n);
            if (r <= 0)
                break;
            n += (size_t)r;
            req[n] = '\0';
            if (strstr(req, "\r\n\r\n"))
                break;
        }
        req[n] = '\0';
        char body[1024];
        int status = 200;
        bool has_token = strstr(req, "X-aws-ec2-metadata-token: the-token\r\n") != NULL;
        if (!strncmp(req, "PUT /latest/api/token ", 22) && strstr(req, "X-aws-ec2-metadata-token-ttl-seconds: 21600")) {
            imds_token_calls++;
            snprintf(body, sizeof body, "the-token");
        } else if (!has_token) {
            status = 401;
            body[0] = '\0';
        } else if (!strncmp(req, "GET /latest/meta-data/iam/security-credentials/ ", 48)) {
            imds_role_calls++;
            snprintf(body, sizeof body, "the-role");
        } else if (!strncmp(req, "GET /latest/meta-data/iam/security-credentials/the-role ", 56)) {
            imds_cred_calls++;
            char exp[32];
            time_t t = time(NULL) + imds_lifetime_s;
            struct tm tm;
            gmtime_r(&t, &tm);
            strftime(exp, sizeof exp, "%Y-%m-%dT%H:%M:%SZ", &tm);
            snprintf(body, sizeof body,
                     "{\"Code\":\"Success\",\"Type\":\"AWS-HMAC\",\"AccessKeyId\":\"ASIA%016d\","
                     "\"SecretAccessKey\":\"secret\",\"Token\":\"token\",\"Expiration\":\"%s\"}",
                     imds_cred_calls, exp);
        } else if (!strncmp(req, "GET /latest/meta-data/placement/region ", 39)) {
            snprintf(body, sizeof body, "eu-central-1");
        } else {
            status = 404;
            body[0] = '\0';
        }
        char resp[1200];
        int len = snprintf(resp, sizeof resp, "HTTP/1.1 %d X\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
                           status, strlen(body), body);
        ssize_t w = write(c, resp, (size_t)len);
        (void)w;
        close(c);
    }
}

static void imds_flow_and_refresh(void)
{
    snprintf(imds_path, sizeof imds_path, "/tmp/cloister-imds-%d.sock", (int)getpid());
    unlink(imds_path);
    imds_fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", imds_path);
    CHECK(bind(imds_fd, (struct sockaddr *)&sun, sizeof sun) == 0 && listen(imds_fd, 16) == 0);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, imds_thread, NULL) == 0);
    char addr[140];
    snprintf(addr, sizeof addr, "unix:%s", imds_path);

    imds_lifetime_s = 3600; /* not due for an hour */
    cl_aws_credentials_provider *p = NULL;
    CHECK_OK(cl_aws_credentials_imds(addr, NULL, &p));
    CHECK(imds_token_calls == 1 && imds_role_calls == 1 && imds_cred_calls == 1);
    cl_aws_credentials c;
    CHECK_OK(cl_aws_credentials_get(p, &c));
    CHECK(!strcmp(c.access_key_id, "ASIA0000000000000001") && !strcmp(c.session_token, "token"));
    CHECK_OK(cl_aws_credentials_get(p, &c));
    CHECK(imds_cred_calls == 1 && cl_aws_credentials_fetches(p) == 1); /* cached */
    char region[64];
    CHECK_OK(cl_aws_credentials_imds_region(p, region, sizeof region));
    CHECK(!strcmp(region, "eu-central-1"));
    CHECK(imds_token_calls == 1); /* the session token is reused */
    cl_aws_credentials_invalidate(p);
    CHECK_OK(cl_aws_credentials_get(p, &c));
    CHECK(imds_cred_calls == 2 && !strcmp(c.access_key_id, "ASIA0000000000000002"));
    cl_aws_credentials_provider_free(p);

    /* credentials that expire within the refresh window are fetched again on use */
    imds_lifetime_s = CL_AWS_REFRESH_BEFORE_S - 10;
    CHECK_OK(cl_aws_credentials_imds(addr, "the-role", &p));
    int before = imds_cred_calls, roles = imds_role_calls;
    CHECK_OK(cl_aws_credentials_get(p, &c));
    CHECK_OK(cl_aws_credentials_get(p, &c));
    CHECK(imds_cred_calls == before + 2 && imds_role_calls == roles); /* role given: not asked */
    CHECK(cl_aws_credentials_fetches(p) == 3);
    cl_aws_credentials_provider_free(p);

    CHECK_ERR(cl_aws_credentials_imds(addr, "other-role", &p), CL_ENOTFOUND, "HTTP 404");
    CHECK_ERR(cl_aws_credentials_imds(addr, "../x", &p), CL_EINVAL, "not an IAM role name");
    CHECK_ERR(cl_aws_credentials_imds("unix:/nonexistent/imds.sock", NULL, &p), CL_EIO, "IMDS PUT /latest/api/token");
    CHECK_ERR(cl_aws_credentials_imds("nonsense", NULL, &p), CL_EINVAL, "IMDS address");

    imds_stop = true;
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    CHECK(connect(fd, (struct sockaddr *)&sun, sizeof sun) == 0);
    close(fd);
    pthread_join(th, NULL);
    close(imds_fd);
    unlink(imds_path);
}

static void client_config_checks(void)
{
    cl_aws_credentials_provider *p = NULL;
    CHECK_OK(cl_aws_credentials_static("AKID", "secret", NULL, &p));
    cl_kms *k = NULL;
    cl_kms_config cfg = {.region = "us-east-1", .credentials = p};
    CHECK_OK(cl_kms_new(&cfg, &k));
    CHECK(!strcmp(cl_kms_key_id(k), "") && !strcmp(cl_kms_error_type(k), ""));
    cl_buf out = CL_BUF_INIT;
    cl_kms_options none = {0};
    CHECK_ERR(cl_kms_encrypt(k, &none, (const uint8_t *)"x", 1, &out), CL_EINVAL, "KeyId");
    cl_kms_options o = {.key_id = "alias/x"};
    CHECK_ERR(cl_kms_encrypt(k, &o, (const uint8_t *)"x", 0, &out), CL_EINVAL, "1..4096");
    CHECK_ERR(cl_kms_decrypt(k, NULL, (const uint8_t *)"x", 0, &out), CL_EINVAL, "1..6144");
    CHECK_ERR(cl_kms_generate_random(k, 0, &out), CL_EINVAL, "1..1024");
    CHECK_ERR(cl_kms_generate_random(k, 1025, &out), CL_EINVAL, "1..1024");
    cl_kms_options both = {.key_id = "k", .key_spec = "AES_256", .number_of_bytes = 8};
    CHECK_ERR(cl_kms_generate_data_key(k, &both, &out, &out), CL_EINVAL, "not both");
    cl_kms_options spec = {.key_id = "k", .key_spec = "RSA_2048"};
    CHECK_ERR(cl_kms_generate_data_key(k, &spec, &out, &out), CL_EINVAL, "AES_256 or AES_128");
    cl_kms_free(k);

    cl_kms_config bad = cfg;
    bad.region = "us east";
    CHECK_ERR(cl_kms_new(&bad, &k), CL_EINVAL, "not a region name");
    bad.region = NULL;
    CHECK_ERR(cl_kms_new(&bad, &k), CL_EINVAL, "no AWS region");
    bad = cfg;
    bad.endpoint = "http://kms.us-east-1.amazonaws.com";
    CHECK_ERR(cl_kms_new(&bad, &k), CL_EINVAL, "https://");
    bad.endpoint = "https://kms.example/path";
    CHECK_ERR(cl_kms_new(&bad, &k), CL_EINVAL, "no path");
    bad = cfg;
    bad.connect = "vsock:x";
    CHECK_ERR(cl_kms_new(&bad, &k), CL_EINVAL, "proxy address");
    bad = cfg;
    bad.credentials = NULL;
    CHECK_ERR(cl_kms_new(&bad, &k), CL_EINVAL, "credentials");
    cl_aws_credentials_provider_free(p);
}

/* A server that is not there: transport failures are retried, then
 * reported with the address dialed. */
static void unreachable_proxy(void)
{
    cl_aws_credentials_provider *p = NULL;
    CHECK_OK(cl_aws_credentials_static("AKID", "secret", NULL, &p));
    cl_kms *k = NULL;
    cl_kms_config cfg = {.region = "us-east-1", .credentials = p, .connect = "unix:/nonexistent/kms.sock",
                         .max_attempts = 3, .backoff_ms = 1};
    CHECK_OK(cl_kms_new(&cfg, &k));
    cl_buf out = CL_BUF_INIT;
    CHECK_ERR(cl_kms_generate_random(k, 8, &out), CL_EIO, "after 3 attempts: KMS GenerateRandom: "
                                                          "https://kms.us-east-1.amazonaws.com/ via unix:/nonexistent/kms.sock");
    cl_kms_stats st;
    cl_kms_get_stats(k, &st);
    CHECK(st.calls == 1 && st.attempts == 3 && st.retries == 2);
    cl_kms_free(k);
    cl_aws_credentials_provider_free(p);
}

int main(void)
{
    RUN(error_shapes);
    RUN(what_is_retried);
    RUN(imds_credentials_json);
    RUN(refresh_rule);
    RUN(static_and_env);
    RUN(imds_flow_and_refresh);
    RUN(client_config_checks);
    RUN(unreachable_proxy);
    return test_summary();
}

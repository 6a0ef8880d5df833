/* cloister imds-sim: a stand-in for the EC2 instance metadata service with
 * IMDSv2 required, for tests and `cloister dev`.
 *
 * Like the real service: PUT /latest/api/token needs
 * X-aws-ec2-metadata-token-ttl-seconds between 1 and 21600 (else 400) and
 * no X-Forwarded-For (else 403); every GET needs a live token in
 * X-aws-ec2-metadata-token (else 401); answers are text/plain, JSON
 * documents included; unknown paths are 404.  Credentials are random,
 * valid six hours, and replaced 15 minutes before they expire. */
#include "cloister/core/address.h"
#include "cloister/core/clock.h"
#include "cloister/core/encoding.h"
#include "cloister/core/http.h"
#include "cloister/core/imds_policy.h"
#include "cloister/core/log.h"
#include "cloister/core/options.h"
#include "cloister/core/small_server.h"
#include "commands.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNECTIONS 256
#define MAX_TOKENS 4096
#define MAX_HEAD 16384
#define MAX_BODY 65536
#define IO_TIMEOUT_S 10
#define CREDENTIALS_LIFETIME_S (6 * 3600)
#define CREDENTIALS_REFRESH_S (15 * 60)
#define TOKEN_CHARS 56

static const char usage_text[] =
    "usage: cloister imds-sim --listen ADDR [--role NAME] [--region R] [--instance-id ID]\n"
    "                        [--credentials ACCESS_KEY_ID:SECRET] [--local-ipv4 IP]\n\n"
    "An EC2 instance metadata service (IMDSv2 required) for tests and local runs.\n\n";

static const char epilog[] =
    "  PUT /latest/api/token               X-aws-ec2-metadata-token-ttl-seconds: 1..21600\n"
    "                                      (else 400); with X-Forwarded-For: 403\n"
    "  GET (with X-aws-ec2-metadata-token, else 401):\n"
    "    /latest/meta-data/iam/security-credentials/[ROLE]   role name / credentials JSON\n"
    "    /latest/meta-data/iam/info, /latest/meta-data/{instance-id,instance-type,ami-id,\n"
    "    local-hostname,local-ipv4,placement/region,placement/availability-zone}\n"
    "    /latest/dynamic/instance-identity/document\n\n"
    "Logs one key=value line per request (component imds-sim); SIGINT or SIGTERM stop it.\n";

typedef struct settings {
    char *listen, *role, *region, *instance_id, *credentials, *local_ipv4;
} settings;

static const cl_opt options[] = {
    {.name = "listen", CL_OPT_STR(settings, listen), .flags = CL_OPT_REQUIRED, .arg = "ADDR",
     .help = "tcp:HOST:PORT or unix:PATH"},
    {.name = "role", CL_OPT_STR(settings, role), .def = "cloister-enclave-role", .arg = "NAME",
     .help = "the instance profile's role"},
    {.name = "region", CL_OPT_STR(settings, region), .def = "us-east-1", .arg = "R", .help = "the region"},
    {.name = "instance-id", CL_OPT_STR(settings, instance_id), .arg = "ID",
     .help = "the instance id (random i-... by default)"},
    {.name = "credentials", CL_OPT_STR(settings, credentials), .arg = "K:S",
     .help = "the role's access key id and secret (random by default), so that a local KMS can be told them; "
             "the session token is random and renewed at each rotation either way"},
    {.name = "local-ipv4", CL_OPT_STR(settings, local_ipv4), .arg = "IP",
     .help = "the instance's private address (local-ipv4, and local-hostname ip-A-B-C-D...; random 172.31.x.y by "
             "default), e.g. a test's instances on one network"},
};

/* ---- state ------------------------------------------------------------------------------ */

typedef struct token {
    char text[TOKEN_CHARS + 1];
    uint64_t expires_ms; /* monotonic */
} token;

typedef struct sim {
    pthread_mutex_t lock;
    const char *role, *region;
    char instance_id[32], image_id[32], account_id[16], private_ip[16], hostname[96], az[32];
    int64_t pending_time;
    token tokens[MAX_TOKENS];
    size_t token_count;
    /* credentials */
    char access_key[24], secret_key[48], session_token[512];
    bool fixed_key; /* --credentials: the same key id and secret at every rotation */
    int64_t cred_updated, cred_expires;
} sim;

static void random_bytes(void *out, size_t n)
{
    uint8_t *p = out;
    while (n) {
        ssize_t r = getrandom(p, n, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            abort(); /* the kernel's RNG does not fail otherwise */
        }
        p += r;
        n -= (size_t)r;
    }
}

/* n characters drawn from alphabet */
static void random_text(char *out, size_t n, const char *alphabet)
{
    size_t k = strlen(alphabet);
    uint8_t r[512];
    random_bytes(r, n);
    for (size_t i = 0; i < n; i++)
        out[i] = alphabet[r[i] % k];
    out[n] = '\0';
}

static const char base64_chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void new_credentials(sim *s)
{
    if (!s->fixed_key) {
        strcpy(s->access_key, "ASIA");
        random_text(s->access_key + 4, 16, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567");
        random_text(s->secret_key, 40, base64_chars);
    }
    strcpy(s->session_token, "IQoJb3JpZ2luX2Vj");
    random_text(s->session_token + 16, 420, base64_chars);
    s->cred_updated = (int64_t)time(NULL);
    s->cred_expires = s->cred_updated + CREDENTIALS_LIFETIME_S;
}

static void sim_init(sim *s, const char *role, const char *region, const char *instance_id, const char *local_ipv4)
{
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->lock, NULL);
    s->role = role;
    s->region = region;
    if (instance_id) {
        snprintf(s->instance_id, sizeof s->instance_id, "%s", instance_id);
    } else {
        strcpy(s->instance_id, "i-");
        random_text(s->instance_id + 2, 17, "0123456789abcdef");
    }
    strcpy(s->image_id, "ami-");
    random_text(s->image_id + 4, 17, "0123456789abcdef");
    strcpy(s->account_id, "123456789012");
    if (local_ipv4) {
        snprintf(s->private_ip, sizeof s->private_ip, "%s", local_ipv4);
    } else {
        uint8_t ip[2];
        random_bytes(ip, 2);
        snprintf(s->private_ip, sizeof s->private_ip, "172.31.%u.%u", ip[0], ip[1] ? ip[1] : 1);
    }
    char dashed[16];
    snprintf(dashed, sizeof dashed, "%s", s->private_ip);
    for (char *p = dashed; *p; p++)
        if (*p == '.')
            *p = '-';
    if (!strcmp(region, "us-east-1"))
        snprintf(s->hostname, sizeof s->hostname, "ip-%s.ec2.internal", dashed);
    else
        snprintf(s->hostname, sizeof s->hostname, "ip-%s.%s.compute.internal", dashed, region);
    snprintf(s->az, sizeof s->az, "%sa", region);
    s->pending_time = (int64_t)time(NULL);
    new_credentials(s);
}

static void issue_token(sim *s, unsigned ttl, char out[TOKEN_CHARS + 1])
{
    uint64_t now = cl_monotonic_ms();
    pthread_mutex_lock(&s->lock);
    size_t slot = s->token_count;
    if (slot == MAX_TOKENS) { /* replace an expired token, else the one expiring first */
        slot = 0;
        for (size_t i = 0; i < MAX_TOKENS; i++)
            if (s->tokens[i].expires_ms < s->tokens[slot].expires_ms)
                slot = i;
    } else {
        s->token_count++;
    }
    random_text(s->tokens[slot].text, TOKEN_CHARS, base64_chars);
    s->tokens[slot].expires_ms = now + (uint64_t)ttl * 1000;
    memcpy(out, s->tokens[slot].text, TOKEN_CHARS + 1);
    pthread_mutex_unlock(&s->lock);
}

static bool token_valid(sim *s, cl_slice t)
{
    if (t.len != TOKEN_CHARS)
        return false;
    uint64_t now = cl_monotonic_ms();
    bool ok = false;
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < s->token_count && !ok; i++)
        ok = s->tokens[i].expires_ms > now && !memcmp(s->tokens[i].text, t.data, TOKEN_CHARS);
    pthread_mutex_unlock(&s->lock);
    return ok;
}

/* ---- answers ------------------------------------------------------------------------------ */

typedef struct reply {
    int status;
    const char *reason;
    char extra[128]; /* extra header lines */
    cl_buf body;
} reply;

static int reply_text(reply *r, int status, const char *reason, const char *body)
{
    r->status = status;
    r->reason = reason;
    cl_buf_reset(&r->body);
    return cl_buf_append(&r->body, body, strlen(body));
}

/* The real service's error pages are small XHTML documents. */
static int reply_error(reply *r, int status, const char *reason)
{
    char page[512];
    snprintf(page, sizeof page,
             "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n"
             "<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\"\n"
             "\t\"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">\n"
             "<html xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"en\" lang=\"en\">\n"
             " <head>\n  <title>%d - %s</title>\n </head>\n <body>\n  <h1>%d - %s</h1>\n </body>\n</html>\n",
             status, reason, status, reason);
    return reply_text(r, status, reason, page);
}

static int reply_credentials(sim *s, reply *r)
{
    char updated[32], expires[32];
    pthread_mutex_lock(&s->lock);
    if ((int64_t)time(NULL) >= s->cred_expires - CREDENTIALS_REFRESH_S)
        new_credentials(s);
    cl_format_time(s->cred_updated, updated);
    cl_format_time(s->cred_expires, expires);
    char json[1024];
    snprintf(json, sizeof json,
             "{\n"
             "  \"Code\" : \"Success\",\n"
             "  \"LastUpdated\" : \"%s\",\n"
             "  \"Type\" : \"AWS-HMAC\",\n"
             "  \"AccessKeyId\" : \"%s\",\n"
             "  \"SecretAccessKey\" : \"%s\",\n"
             "  \"Token\" : \"%s\",\n"
             "  \"Expiration\" : \"%s\"\n"
             "}",
             updated, s->access_key, s->secret_key, s->session_token, expires);
    pthread_mutex_unlock(&s->lock);
    int rc = reply_text(r, 200, "OK", json);
    cl_wipe(json, sizeof json);
    return rc;
}

static int reply_identity(sim *s, reply *r)
{
    char pending[32], json[1024];
    cl_format_time(s->pending_time, pending);
    snprintf(json, sizeof json,
             "{\n"
             "  \"accountId\" : \"%s\",\n"
             "  \"architecture\" : \"x86_64\",\n"
             "  \"availabilityZone\" : \"%s\",\n"
             "  \"billingProducts\" : null,\n"
             "  \"devpayProductCodes\" : null,\n"
             "  \"marketplaceProductCodes\" : null,\n"
             "  \"imageId\" : \"%s\",\n"
             "  \"instanceId\" : \"%s\",\n"
             "  \"instanceType\" : \"m5.xlarge\",\n"
             "  \"kernelId\" : null,\n"
             "  \"pendingTime\" : \"%s\",\n"
             "  \"privateIp\" : \"%s\",\n"
             "  \"ramdiskId\" : null,\n"
             "  \"region\" : \"%s\",\n"
             "  \"version\" : \"2017-09-30\"\n"
             "}",
             s->account_id, s->az, s->image_id, s->instance_id, pending, s->private_ip, s->region);
    return reply_text(r, 200, "OK", json);
}

static int answer_get(sim *s, cl_slice path, reply *r)
{
    char text[512];
    const char *plain = NULL;
    size_t cred_prefix = strlen(CL_IMDS_CREDENTIALS_PATH);
    if (cl_slice_eq(path, "/latest/meta-data/") || cl_slice_eq(path, "/latest/meta-data")) {
        plain = "ami-id\nhostname\niam/\ninstance-id\ninstance-type\nlocal-hostname\nlocal-ipv4\nplacement/";
    } else if (cl_slice_eq(path, CL_IMDS_CREDENTIALS_PATH)) {
        plain = s->role;
    } else if (path.len > cred_prefix && !memcmp(path.data, CL_IMDS_CREDENTIALS_PATH, cred_prefix)) {
        cl_slice role = {path.data + cred_prefix, path.len - cred_prefix};
        if (cl_slice_eq(role, s->role))
            return reply_credentials(s, r);
    } else if (cl_slice_eq(path, "/latest/meta-data/iam/info")) {
        char updated[32];
        cl_format_time(s->cred_updated, updated);
        snprintf(text, sizeof text,
                 "{\n  \"Code\" : \"Success\",\n  \"LastUpdated\" : \"%s\",\n"
                 "  \"InstanceProfileArn\" : \"arn:aws:iam::%s:instance-profile/%s\",\n"
                 "  \"InstanceProfileId\" : \"AIPAEXAMPLEPROFILEID0\"\n}",
                 updated, s->account_id, s->role);
        plain = text;
    } else if (cl_slice_eq(path, "/latest/meta-data/instance-id")) {
        plain = s->instance_id;
    } else if (cl_slice_eq(path, "/latest/meta-data/instance-type")) {
        plain = "m5.xlarge";
    } else if (cl_slice_eq(path, "/latest/meta-data/ami-id")) {
        plain = s->image_id;
    } else if (cl_slice_eq(path, "/latest/meta-data/local-hostname") ||
               cl_slice_eq(path, "/latest/meta-data/hostname")) {
        plain = s->hostname;
    } else if (cl_slice_eq(path, "/latest/meta-data/local-ipv4")) {
        plain = s->private_ip;
    } else if (cl_slice_eq(path, "/latest/meta-data/placement/region")) {
        plain = s->region;
    } else if (cl_slice_eq(path, "/latest/meta-data/placement/availability-zone")) {
        plain = s->az;
    } else if (cl_slice_eq(path, "/latest/dynamic/instance-identity/document")) {
        return reply_identity(s, r);
    }
    if (plain)
        return reply_text(r, 200, "OK", plain);
    return reply_error(r, 404, "Not Found");
}

static int answer(sim *s, const cl_http_head *h, reply *r)
{
    r->extra[0] = '\0';
    if (cl_slice_eq(h->path, CL_IMDS_TOKEN_PATH)) {
        if (!cl_slice_eq(h->method, "PUT")) {
            snprintf(r->extra, sizeof r->extra, "Allow: OPTIONS, PUT\r\n");
            return reply_error(r, 405, "Method Not Allowed");
        }
        if (cl_http_header_get(h, "X-Forwarded-For"))
            return reply_error(r, 403, "Forbidden");
        const cl_slice *ttl = cl_http_header_get(h, CL_IMDS_TTL_HEADER);
        char text[16];
        uint64_t seconds = 0;
        bool ok = ttl && ttl->len > 0 && ttl->len < sizeof text;
        if (ok) {
            memcpy(text, ttl->data, ttl->len);
            text[ttl->len] = '\0';
            ok = cl_parse_u64(text, CL_IMDS_MAX_TTL, &seconds) == CL_OK && seconds >= 1;
            cl_error_clear();
        }
        if (!ok)
            return reply_error(r, 400, "Missing or Invalid Parameters");
        char tok[TOKEN_CHARS + 1];
        issue_token(s, (unsigned)seconds, tok);
        snprintf(r->extra, sizeof r->extra, "%s: %llu\r\n", CL_IMDS_TTL_HEADER, (unsigned long long)seconds);
        return reply_text(r, 200, "OK", tok);
    }
    if (!cl_slice_eq(h->method, "GET") && !cl_slice_eq(h->method, "HEAD")) {
        snprintf(r->extra, sizeof r->extra, "Allow: OPTIONS, GET, HEAD\r\n");
        return reply_error(r, 405, "Method Not Allowed");
    }
    const cl_slice *t = cl_http_header_get(h, CL_IMDS_TOKEN_HEADER);
    if (!t || !token_valid(s, *t))
        return reply_error(r, 401, "Unauthorized");
    return answer_get(s, h->path, r);
}

/* ---- connections --------------------------------------------------------------------------- */

static int send_reply(int fd, const cl_http_head *h, const reply *r, bool keep_alive)
{
    char date[64], head[512];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    bool is_head = cl_slice_eq(h->method, "HEAD");
    bool html = r->status >= 400;
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\n%sContent-Type: %s\r\nContent-Length: %zu\r\nDate: %s\r\nServer: EC2ws\r\n"
                     "Connection: %s\r\n\r\n",
                     r->status, r->reason, r->extra, html ? "text/html" : "text/plain", r->body.len, date,
                     keep_alive ? "keep-alive" : "close");
    if (n < 0 || (size_t)n >= sizeof head || cl_small_server_send(fd, head, (size_t)n) < 0)
        return -1;
    if (!is_head && r->body.len && cl_small_server_send(fd, r->body.data, r->body.len) < 0)
        return -1;
    return 0;
}

static void log_request(const cl_http_head *h, int status)
{
    char method[16], target[256], st[8];
    snprintf(method, sizeof method, "%.*s", (int)(h->method.len < 15 ? h->method.len : 15), h->method.data);
    snprintf(target, sizeof target, "%.*s", (int)(h->target.len < 255 ? h->target.len : 255), h->target.data);
    snprintf(st, sizeof st, "%d", status);
    cl_log(CL_LOG_INFO, "request", "method", method, "target", target, "status", st,
           "token", cl_http_header_get(h, CL_IMDS_TOKEN_HEADER) ? "present" : "absent", NULL);
}

static void serve(sim *s, int fd)
{
    struct timeval tv = {.tv_sec = IO_TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    cl_buf in = CL_BUF_INIT;
    reply r = {0};
    cl_http_head *h = calloc(1, sizeof *h);
    if (!h)
        goto out;
    for (;;) {
        bool complete = false;
        int rc = in.len ? cl_http_parse_request(in.data, in.len, MAX_HEAD, h, &complete) : CL_OK;
        if (rc < 0) {
            if (reply_error(&r, 400, "Bad Request") == 0) {
                cl_http_head none = {0};
                none.method = (cl_slice){(const uint8_t *)"GET", 3};
                send_reply(fd, &none, &r, false);
            }
            cl_log(CL_LOG_WARN, "bad-request", "detail", cl_error_message(), NULL);
            break;
        }
        if (!complete) {
            if (in.len >= MAX_HEAD || cl_buf_reserve(&in, 4096) < 0)
                break;
            ssize_t n = recv(fd, in.data + in.len, in.cap - in.len, 0);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break;
            in.len += (size_t)n;
            continue;
        }
        /* a body is read and dropped: IMDS calls have none */
        if (h->body == CL_HTTP_BODY_CHUNKED || (h->body == CL_HTTP_BODY_LENGTH && h->content_length > MAX_BODY)) {
            if (reply_error(&r, 400, "Bad Request") == 0)
                send_reply(fd, h, &r, false);
            break;
        }
        size_t need = h->head_len + (h->body == CL_HTTP_BODY_LENGTH ? (size_t)h->content_length : 0);
        bool short_read = false;
        while (in.len < need) {
            if (cl_buf_reserve(&in, need - in.len) < 0) {
                short_read = true;
                break;
            }
            ssize_t n = recv(fd, in.data + in.len, need - in.len, 0);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                short_read = true;
                break;
            }
            in.len += (size_t)n;
        }
        if (short_read)
            break;
        if (answer(s, h, &r) < 0)
            break;
        log_request(h, r.status);
        bool keep = h->keep_alive;
        int sent = send_reply(fd, h, &r, keep);
        cl_buf_reset(&r.body);
        if (sent < 0 || !keep)
            break;
        memmove(in.data, in.data + need, in.len - need);
        in.len -= need;
    }
out:
    free(h);
    cl_buf_free(&in);
    cl_buf_free(&r.body);
}

/* One connection on its own thread (core/small_server.h closes fd and joins it). */
static void connection(void *arg, int fd, size_t listener, unsigned long id)
{
    (void)listener;
    (void)id;
    serve(arg, fd);
}

static void refused(void *arg, unsigned long id, const char *reason)
{
    (void)arg;
    (void)id;
    cl_log(CL_LOG_WARN, "refused", "reason", reason, NULL);
}

/* Checks the settings and runs; the options layer owns the strings. */
static int run_sim(const settings *o);

int cmd_imds_sim(int argc, char **argv)
{
    settings o = {0};
    cl_opt_section sections[] = {CL_OPT_SECTION("options", options, &o)};
    cl_options spec = {.prog = "cloister imds-sim",
                       .usage = usage_text,
                       .epilog = epilog,
                       .sections = sections,
                       .section_count = 1};
    cl_options_result r;
    int status = cl_options_main(&spec, argc, argv, &r);
    if (status == 0)
        status = run_sim(&o);
    else
        status = status > 0 ? 0 : EXIT_USAGE;
    cl_options_free(&spec, &r);
    return status;
}

static int run_sim(const settings *o)
{
    const char *listen_text = o->listen, *role = o->role, *region = o->region, *instance_id = o->instance_id;
    const char *credentials = o->credentials;
    if (!cl_imds_role_name_valid(role, strlen(role))) {
        fprintf(stderr, "cloister imds-sim: --role '%s' is not a valid IAM role name (1-64 of A-Za-z0-9+=,.@_-)\n",
                role);
        return EXIT_USAGE;
    }
    for (const char *p = region; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-') || strlen(region) > 24) {
            fprintf(stderr, "cloister imds-sim: --region '%s' is not a region name like us-east-1\n", region);
            return EXIT_USAGE;
        }
    if (instance_id && (strlen(instance_id) > 24 || strncmp(instance_id, "i-", 2))) {
        fprintf(stderr, "cloister imds-sim: --instance-id must look like i-0123456789abcdef0\n");
        return EXIT_USAGE;
    }
    struct in_addr ip4;
    if (o->local_ipv4 && inet_pton(AF_INET, o->local_ipv4, &ip4) != 1) {
        fprintf(stderr, "cloister imds-sim: --local-ipv4 '%s' is not an IPv4 address\n", o->local_ipv4);
        return EXIT_USAGE;
    }
    cl_address addr;
    if (cl_address_parse(listen_text, &addr) < 0 || addr.kind == CL_ADDR_VSOCK) {
        fprintf(stderr, "cloister imds-sim: --listen: %s\n",
                addr.kind == CL_ADDR_VSOCK ? "tcp:HOST:PORT or unix:PATH" : cl_error_message());
        return EXIT_USAGE;
    }
    cl_log_set_component("imds-sim");
    sim *s = malloc(sizeof *s);
    if (!s) {
        fprintf(stderr, "cloister imds-sim: out of memory\n");
        return EXIT_FAILED;
    }
    sim_init(s, role, region, instance_id, o->local_ipv4);
    if (credentials) {
        const char *colon = strchr(credentials, ':');
        size_t klen = colon ? (size_t)(colon - credentials) : 0, slen = colon ? strlen(colon + 1) : 0;
        bool ok = klen >= 16 && klen < sizeof s->access_key && slen >= 16 && slen < sizeof s->secret_key;
        for (size_t i = 0; ok && i < klen; i++)
            ok = (credentials[i] >= 'A' && credentials[i] <= 'Z') || (credentials[i] >= '0' && credentials[i] <= '9');
        for (size_t i = 0; ok && i < slen; i++)
            ok = strchr(base64_chars, colon[1 + i]) != NULL;
        if (!ok) {
            fprintf(stderr, "cloister imds-sim: --credentials takes ACCESS_KEY_ID:SECRET (16-23 of A-Z0-9, then"
                            " 16-47 base64 characters)\n");
            free(s);
            return EXIT_USAGE;
        }
        memcpy(s->access_key, credentials, klen);
        s->access_key[klen] = '\0';
        memcpy(s->secret_key, colon + 1, slen);
        s->secret_key[slen] = '\0';
        s->fixed_key = true;
    }

    int status = EXIT_FAILED;
    int listen_fd = -1;
    struct stat ours = {0};
    int stop_fd = -1;
    if (cl_stop_signals_install(&stop_fd) < 0) {
        fprintf(stderr, "cloister imds-sim: %s\n", cl_error_message());
        goto out;
    }
    if (cl_address_listen(&addr, 64, &listen_fd) < 0) {
        fprintf(stderr, "cloister imds-sim: %s\n", cl_error_message());
        goto out;
    }
    if (addr.kind == CL_ADDR_UNIX)
        stat(addr.path, &ours);
    char text[CL_ADDRESS_PATH_MAX + 16];
    cl_address_format(&addr, text, sizeof text);
    cl_log(CL_LOG_INFO, "listening", "addr", text, "role", role, "region", region, "instance_id", s->instance_id,
           NULL);
    cl_small_server_config sc = {.listen_fds = &listen_fd,
                                 .listen_count = 1,
                                 .stop_fd = stop_fd,
                                 .max_connections = MAX_CONNECTIONS,
                                 .serve = connection,
                                 .arg = s,
                                 .refused = refused};
    /* returns once every connection thread is joined: s can go */
    int rc = cl_small_server_run(&sc);
    close(listen_fd);
    if (addr.kind == CL_ADDR_UNIX) {
        struct stat now;
        if (stat(addr.path, &now) == 0 && now.st_ino == ours.st_ino && now.st_dev == ours.st_dev)
            unlink(addr.path);
    }
    if (rc < 0) {
        fprintf(stderr, "cloister imds-sim: %s\n", cl_error_message());
        goto out;
    }
    cl_log(CL_LOG_INFO, "stopped", "signal", cl_stop_signals_caught() == SIGINT ? "SIGINT" : "SIGTERM", NULL);
    status = 0;
out:
    pthread_mutex_destroy(&s->lock);
    cl_wipe(s, sizeof *s);
    free(s);
    return status;
}

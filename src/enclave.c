/* cloister enclave: the daemon inside the enclave.  TLS is terminated here
 * with a key generated inside the enclave; clients prove that through
 * /enclave/attestation, whose document binds the certificate's hash; every
 * other request is streamed to the application.  Flags and endpoints are
 * those of brave's nitriding-daemon, plus a few of cloister's own. */
#include "cloister/core/address.h"
#include "cloister/core/netif.h"
#include "cloister/core/encoding.h"
#include "cloister/core/http.h"
#include "cloister/enclave/kms.h"
#include "cloister/enclave/kms_endpoint.h"
#include "cloister/core/log.h"
#include "cloister/core/metrics.h"
#include "cloister/core/options.h"
#include "cloister/enclave/tap_relay.h"
#include "cloister/enclave/nsm.h"
#include "cloister/enclave/server.h"
#include "cloister/enclave/supervise.h"
#include "cloister/core/tls.h"
#include "cloister/enclave/upstream.h"
#include "commands.h"
#include "enclave_tap.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NONCE_LEN 20
#define HASH_LEN 32
#define USER_DATA_LEN (2 + HASH_LEN + 2 + HASH_LEN)
#define ENTROPY_SEED_BYTES 256
#define MAX_CONFIG_FILE (256 * 1024)
#define MAX_SECRETS 64
#define SECRET_NAME_MAX 64
#define MAX_CIPHERTEXT_FILE (64 * 1024)
#define SECRETS_PREFIX "/enclave/secrets/"

/* ---- settings ---------------------------------------------------------- */

typedef struct settings {
    char *fqdn, *appurl, *appwebsrv, *appcmd, *prometheus_namespace;
    char *listen, *nsm, *cert, *key, *config, *prometheus_listen;
    unsigned ext_pub_port, intport, prometheus_port;
    unsigned threads, max_header_bytes, header_timeout, idle_timeout, app_timeout, max_connections,
        drain_timeout, h2_max_streams, max_app_connections, max_buffered_body;
    bool wait_for_app, disable_keep_alives, debug, disable_http2, proxy_protocol;
    /* KMS secrets opened at start */
    cl_opt_list secrets; /* "NAME=BASE64" or "NAME=@FILE" */
    char *tls_key_ciphertext, *kms_region, *kms_endpoint, *kms_proxy, *kms_ca_file, *kms_imds;
    bool secrets_env;
    /* the app's KMS endpoint on the internal listener */
    bool kms_for_app;
    char *kms_for_app_keys, *kms_for_app_operations;
    /* -tap: tap0 and the egress policy (lib/enclave/tap_relay.c) */
    bool tap;
    cl_tap_settings tap_s;
} settings;

/* nitriding's flags (one or two dashes), then cloister's own; the JSON keys
 * of -config are the same names. */
static const cl_opt option_specs[] = {
    {.name = "fqdn", CL_OPT_STR(settings, fqdn), .arg = "NAME",
     .help = "the enclave's domain name, put in its certificate (required)"},
    {.name = "appurl", CL_OPT_STR(settings, appurl), .arg = "URL",
     .help = "where the application's source code is, shown at /enclave"},
    {.name = "appwebsrv", CL_OPT_STR(settings, appwebsrv), .arg = "URL",
     .help = "the application's HTTP server: http://HOST:PORT, unix:PATH or tcp:HOST:PORT"},
    {.name = "appcmd", CL_OPT_STR(settings, appcmd), .arg = "CMD",
     .help = "start the application with this shell command, restart it if it dies"},
    {.name = "ext-pub-port", CL_OPT_UINT_AT(settings, ext_pub_port, 0, 65535), .def = "443", .arg = "PORT",
     .help = "public HTTPS port on all addresses"},
    {.name = "intport", CL_OPT_UINT_AT(settings, intport, 0, 65535), .def = "8080", .arg = "PORT",
     .help = "internal plain-HTTP port on 127.0.0.1 for the application"},
    {.name = "prometheus-port", CL_OPT_UINT_AT(settings, prometheus_port, 0, 65535), .arg = "PORT",
     .help = "serve /metrics on this port (0: off)"},
    {.name = "prometheus-namespace", CL_OPT_STR(settings, prometheus_namespace), .def = "cloister", .arg = "NS",
     .help = "prefix of metric names"},
    {.name = "wait-for-app", CL_OPT_FLAG(settings, wait_for_app),
     .help = "open the public listener only when the application calls GET /enclave/ready"},
    {.name = "disable-keep-alives", CL_OPT_FLAG(settings, disable_keep_alives),
     .help = "close client connections after each response"},
    {.name = "debug", CL_OPT_FLAG(settings, debug), .help = "log at debug level (one line per request)"},
    {.name = "listen", CL_OPT_STR(settings, listen), .arg = "ADDR",
     .help = "public listener: vsock:CID:PORT, unix:PATH or tcp:HOST:PORT (overrides -ext-pub-port)"},
    {.name = "nsm", CL_OPT_STR(settings, nsm), .arg = "ADDR",
     .help = "the NSM: a device path or unix:PATH of nsm-sim ($" CL_NSM_ENV ", /dev/nsm)"},
    {.name = "cert", CL_OPT_STR(settings, cert), .arg = "PEM",
     .help = "static certificate (chain) instead of the generated one"},
    {.name = "key", CL_OPT_STR(settings, key), .arg = "PEM", .help = "private key of --cert"},
    {.name = "config", CL_OPT_CONFIG_AT(settings, config), .arg = "FILE",
     .help = "read settings from a JSON object with these names as keys"},
    {.name = "prometheus-listen", CL_OPT_STR(settings, prometheus_listen), .arg = "ADDR",
     .help = "metrics listener address (overrides -prometheus-port's 0.0.0.0)"},
    {.name = "threads", CL_OPT_UINT_AT(settings, threads, 0, 256), .arg = "N",
     .help = "event loops for the public listener (0: one per core)"},
    {.name = "max-header-bytes", CL_OPT_UINT_AT(settings, max_header_bytes, 0, 1 << 20), .def = "16384",
     .arg = "BYTES", .help = "largest request head"},
    {.name = "header-timeout", CL_OPT_UINT_AT(settings, header_timeout, 0, 3600), .def = "10", .arg = "SECONDS",
     .help = "time for a client to send a whole request head"},
    {.name = "idle-timeout", CL_OPT_UINT_AT(settings, idle_timeout, 0, 86400), .def = "60", .arg = "SECONDS",
     .help = "close connections idle this long"},
    {.name = "app-timeout", CL_OPT_UINT_AT(settings, app_timeout, 0, 86400), .def = "60", .arg = "SECONDS",
     .help = "time for the application to answer, and between its writes; then 504"},
    {.name = "max-connections", CL_OPT_UINT_AT(settings, max_connections, 0, 1000000), .def = "10000", .arg = "N",
     .help = "open client connections at most"},
    {.name = "h2-max-streams", CL_OPT_UINT_AT(settings, h2_max_streams, 0, 1000), .def = "100", .arg = "N",
     .help = "concurrent HTTP/2 streams per connection, so requests to the app per connection"},
    {.name = "max-app-connections", CL_OPT_UINT_AT(settings, max_app_connections, 0, 1000000), .def = "512",
     .arg = "N",
     .help = "connections to the application at most; requests beyond wait for one, up to -app-timeout, then 503"},
    {.name = "max-buffered-body", CL_OPT_UINT_AT(settings, max_buffered_body, 0, 0xffffffffu), .def = "134217728",
     .arg = "BYTES",
     .help = "HTTP/2 request body bytes held for a slow application, all connections together; beyond, 503"},
    {.name = "drain-timeout", CL_OPT_UINT_AT(settings, drain_timeout, 0, 3600), .def = "30", .arg = "SECONDS",
     .help = "on SIGTERM, time for requests in flight to finish"},
    {.name = "disable-http2", CL_OPT_FLAG(settings, disable_http2), .help = "do not offer HTTP/2 in ALPN"},
    {.name = "proxy-protocol", CL_OPT_FLAG(settings, proxy_protocol),
     .help = "public connections start with a PROXY protocol v2 header (cloister host --forward ...,proxy-protocol):"
             " required, and trusted for the client address (X-Forwarded-For)"},
    {.name = "secret", CL_OPT_LIST_AT(settings, secrets, MAX_SECRETS), .arg = "NAME=B64|@FILE",
     .help = "a KMS ciphertext (base64, or a file of raw or base64 bytes) opened at start with a Recipient and the "
             "encryption context purpose=enclave-secret, name=NAME (cloister kms encrypt --purpose "
             "enclave-secret:NAME) (repeatable)"},
    {.name = "secrets-env", CL_OPT_FLAG(settings, secrets_env),
     .help = "also give each secret to -appcmd as environment variable NAME"},
    {.name = "tls-key-ciphertext", CL_OPT_STR(settings, tls_key_ciphertext), .arg = "B64|@FILE",
     .help = "the private key of --cert as a KMS ciphertext (PEM or DER inside), instead of --key; it must carry the "
             "encryption context purpose=enclave-tls-key (cloister kms encrypt --purpose enclave-tls-key)"},
    {.name = "kms-region", CL_OPT_STR(settings, kms_region), .arg = "R",
     .help = "KMS's region ($AWS_REGION, else IMDS's)"},
    {.name = "kms-endpoint", CL_OPT_STR(settings, kms_endpoint), .arg = "URL",
     .help = "https://HOST[:PORT] (https://kms.REGION.amazonaws.com)"},
    {.name = "kms-proxy", CL_OPT_STR(settings, kms_proxy), .arg = "ADDR",
     .help = "the host's outbound proxy to KMS (vsock:3:8000)"},
    {.name = "kms-ca-file", CL_OPT_STR(settings, kms_ca_file), .arg = "PEM",
     .help = "CAs for KMS's certificate instead of the system's"},
    {.name = "kms-imds", CL_OPT_STR(settings, kms_imds), .arg = "ADDR",
     .help = "credentials from IMDSv2 through cloister host --imds (else $AWS_ACCESS_KEY_ID...)"},
    {.name = "kms-for-app", CL_OPT_FLAG(settings, kms_for_app),
     .help = "serve KMS to the app at http://127.0.0.1:-intport/ (internal listener only; any AWS SDK, any "
             "credentials): requests go to KMS signed with the -kms-* settings, Decrypt, GenerateDataKey(Pair), "
             "GenerateRandom and DeriveSharedSecret with a Recipient whose answer is opened here"},
    {.name = "kms-for-app-keys", CL_OPT_STR(settings, kms_for_app_keys), .arg = "ID,...",
     .help = "with -kms-for-app: the only keys (as the app writes them: alias, id or ARN) the app may name; each "
             "request must then name one (all)"},
    {.name = "kms-for-app-operations", CL_OPT_STR(settings, kms_for_app_operations), .arg = "OP,...",
     .help = "with -kms-for-app: the KMS operations served to the app (all the data-plane ones)"},
    {.name = "tap", CL_OPT_FLAG(settings, tap),
     .help = "give the enclave a tap0 relayed to a gvproxy-compatible parent, as nitriding does (the -tap-* and "
             "-egress-policy options below; the same as cloister tap)"},
};

static const char usage_text[] = "usage: cloister enclave -fqdn NAME [-appwebsrv URL] [OPTIONS]\n\n"
                                 "Terminates TLS inside the enclave with a key that never leaves it, answers\n"
                                 "attestation requests that bind that key's certificate, and proxies everything\n"
                                 "else to the application.  A drop-in replacement for nitriding-daemon: options\n"
                                 "take one or two dashes, and -name=value or -name value.\n\n";

static const char epilog[] = "public endpoints (HTTPS):\n"
                             "  GET /enclave                       what this is\n"
                             "  GET /enclave/attestation?nonce=H   base64 attestation document; H: 40 hex digits;\n"
                             "                                     user_data = 0x1220 SHA-256(certificate DER)\n"
                             "                                     0x1220 application key hash\n"
                             "  GET /enclave/config                the running configuration (JSON)\n"
                             "  anything else                      proxied to -appwebsrv\n"
                             "internal endpoints (plain HTTP on 127.0.0.1:-intport):\n"
                             "  GET  /enclave/ready                with -wait-for-app, opens the public listener\n"
                             "                                     (200 the first time, 410 after)\n"
                             "  POST /enclave/hash                 base64 SHA-256 of the application's key\n"
                             "  GET  /enclave/attestation?nonce=H  as above\n"
                             "  GET  /enclave/secrets/NAME         the plaintext of -secret NAME (opened at start)\n"
                             "  POST /                             with -kms-for-app: KMS for the app's AWS SDK\n"
                             "                                     (endpoint_url http://127.0.0.1:-intport)\n"
                             "\nSIGTERM or SIGINT: stop accepting, let requests in flight finish, stop the\n"
                             "application, exit.\n";

/* The options of s, for parsing and for freeing. */
static cl_options enclave_options(settings *s, cl_opt_section section[2])
{
    section[0] = (cl_opt_section)CL_OPT_SECTION("options", option_specs, s);
    section[1] = (cl_opt_section){"with -tap", NULL, 0, &s->tap_s};
    section[1].opts = cl_tap_options(&section[1].count);
    return (cl_options){.prog = "cloister enclave",
                        .usage = usage_text,
                        .epilog = epilog,
                        .flags = CL_OPTIONS_SINGLE_DASH,
                        .sections = section,
                        .section_count = 2};
}

/* Returns 0, or EXIT_USAGE after printing the problem, or -1 for --help. */
static int parse_settings(int argc, char **argv, settings *s)
{
    memset(s, 0, sizeof *s);
    cl_opt_section section[2];
    cl_options spec = enclave_options(s, section);
    cl_options_result r;
    int rc = cl_options_main(&spec, argc, argv, &r);
    cl_options_free(NULL, &r);
    if (rc != 0)
        return rc > 0 ? -1 : EXIT_USAGE;
    if (!s->fqdn || !*s->fqdn) {
        fprintf(stderr, "cloister enclave: -fqdn is required (the name clients use to reach the enclave)\n");
        return EXIT_USAGE;
    }
    if (s->tls_key_ciphertext && (!s->cert || s->key)) {
        fprintf(stderr, "cloister enclave: --tls-key-ciphertext goes with --cert and replaces --key\n");
        return EXIT_USAGE;
    }
    if (!s->cert != !(s->key || s->tls_key_ciphertext)) {
        fprintf(stderr, "cloister enclave: --cert and --key go together\n");
        return EXIT_USAGE;
    }
    if (s->max_header_bytes < 1024) {
        fprintf(stderr, "cloister enclave: --max-header-bytes must be at least 1024\n");
        return EXIT_USAGE;
    }
    if (!s->header_timeout || !s->idle_timeout || !s->app_timeout || !s->max_connections || !s->h2_max_streams ||
        !s->max_app_connections) {
        fprintf(stderr, "cloister enclave: timeouts, --max-connections, --h2-max-streams and --max-app-connections"
                        " must be positive\n");
        return EXIT_USAGE;
    }
    if (s->max_buffered_body < 65536) {
        fprintf(stderr, "cloister enclave: --max-buffered-body must be at least 65536\n");
        return EXIT_USAGE;
    }
    if (s->tap && cl_tap_settings_check(&s->tap_s) < 0) {
        fprintf(stderr, "cloister enclave: %s (see --help)\n", cl_error_message());
        return EXIT_USAGE;
    }
    if (!s->tap && s->tap_s.egress_policy) {
        fprintf(stderr, "cloister enclave: --egress-policy goes with --tap\n");
        return EXIT_USAGE;
    }
    return 0;
}

static void settings_free(settings *s)
{
    cl_opt_section section[2];
    cl_options spec = enclave_options(s, section);
    cl_options_free(&spec, NULL);
}

/* ---- the running enclave ------------------------------------------------ */

enum route {
    ROUTE_ENCLAVE,
    ROUTE_ATTESTATION,
    ROUTE_CONFIG,
    ROUTE_READY,
    ROUTE_HASH,
    ROUTE_METRICS,
    ROUTE_SECRET,
    ROUTE_KMS,
    ROUTE_APP,
    ROUTE_OTHER, /* unknown local paths: 404 */
    ROUTE_COUNT,
};

static const char *const route_names[ROUTE_COUNT] = {"enclave", "attestation", "config", "ready", "hash",
                                                     "metrics", "secret",      "kms",    "app",   "other"};

enum listener_kind { LISTENER_PUBLIC, LISTENER_INTERNAL, LISTENER_METRICS };

typedef struct enclave enclave;

typedef struct secret {
    char name[SECRET_NAME_MAX + 1];
    cl_buf value; /* the plaintext; wiped when freed */
} secret;

typedef struct listener_ctx {
    enclave *e;
    int kind;
} listener_ctx;

struct enclave {
    settings s;
    cl_nsm *nsm;
    cl_tls_identity identity;
    SSL_CTX *tls;
    bool has_app;
    cl_upstream_target app;
    char public_addr[160];
    cl_metrics *metrics;
    cl_server_stats stats;
    atomic_uint_fast64_t attestations;
    cl_child *app_child;
    listener_ctx ctx_public, ctx_internal, ctx_metrics;
    secret secrets[MAX_SECRETS]; /* set before any listener opens, read-only after */
    size_t secret_count;
    cl_kms_session app_kms; /* -kms-for-app */
    cl_kms_endpoint *kms_endpoint;
    cl_tap_relay *tap; /* -tap */

    pthread_mutex_t lock; /* guards what follows */
    uint8_t app_hash[HASH_LEN];
    bool public_opened, shutting_down;
    cl_server *public_server, *internal_server, *metrics_server;
    /* unix listeners' files, removed at the end; own lock, as the public
     * listener is opened with `lock` held */
    pthread_mutex_t files_lock;
    cl_socket_file socket_files[3];
    size_t socket_file_count;
};

static bool path_is(const cl_http_head *h, const char *path)
{
    return cl_slice_eq(h->path, path);
}

static int route_request(void *ctx, const cl_http_head *h)
{
    listener_ctx *l = ctx;
    if (l->kind == LISTENER_METRICS)
        return path_is(h, "/metrics") ? ROUTE_METRICS : ROUTE_OTHER;
    if (path_is(h, "/enclave/attestation"))
        return ROUTE_ATTESTATION;
    if (l->kind == LISTENER_INTERNAL) {
        if (path_is(h, "/enclave/ready"))
            return ROUTE_READY;
        if (path_is(h, "/enclave/hash"))
            return ROUTE_HASH;
        if (h->path.len > strlen(SECRETS_PREFIX) && !memcmp(h->path.data, SECRETS_PREFIX, strlen(SECRETS_PREFIX)))
            return ROUTE_SECRET;
        if (l->e->kms_endpoint && path_is(h, "/")) /* where SDKs send KMS calls */
            return ROUTE_KMS;
        return ROUTE_OTHER;
    }
    if (path_is(h, "/enclave") || path_is(h, "/enclave/"))
        return ROUTE_ENCLAVE;
    if (path_is(h, "/enclave/config"))
        return ROUTE_CONFIG;
    return -1; /* the application */
}

static void respond_text(cl_response *resp, int status, const char *text)
{
    resp->status = status;
    resp->content_type = NULL;
    if (cl_buf_append(&resp->body, text, strlen(text)) < 0)
        resp->status = 500;
}

static bool method_is(const cl_request_info *req, const char *method, cl_response *resp)
{
    if (cl_slice_eq(req->head->method, method) ||
        (!strcmp(method, "GET") && cl_slice_eq(req->head->method, "HEAD")))
        return true;
    char msg[64];
    snprintf(msg, sizeof msg, "405: use %s\n", method);
    respond_text(resp, 405, msg);
    return false;
}

static void handle_attestation(enclave *e, const cl_request_info *req, cl_response *resp)
{
    char nonce_hex[2 * NONCE_LEN + 2];
    bool found = false;
    int rc = cl_http_query_param(req->head->query, "nonce", nonce_hex, sizeof nonce_hex, &found);
    uint8_t nonce[NONCE_LEN];
    if (rc < 0 || !found || strlen(nonce_hex) != 2 * NONCE_LEN ||
        cl_hex_decode_fixed(nonce_hex, nonce, NONCE_LEN) < 0) {
        respond_text(resp, 400, "400: nonce must be 40 hexadecimal digits (20 bytes): "
                                "/enclave/attestation?nonce=<hex>\n");
        return;
    }
    uint8_t user_data[USER_DATA_LEN];
    user_data[0] = 0x12;
    user_data[1] = 0x20;
    memcpy(user_data + 2, e->identity.cert_sha256, HASH_LEN);
    user_data[2 + HASH_LEN] = 0x12;
    user_data[3 + HASH_LEN] = 0x20;
    pthread_mutex_lock(&e->lock);
    memcpy(user_data + 4 + HASH_LEN, e->app_hash, HASH_LEN);
    pthread_mutex_unlock(&e->lock);

    cl_buf doc = CL_BUF_INIT, b64 = CL_BUF_INIT;
    rc = cl_nsm_attestation(e->nsm, user_data, sizeof user_data, nonce, sizeof nonce, NULL, 0, &doc);
    if (rc == CL_OK)
        rc = cl_base64_encode(doc.data, doc.len, &b64);
    if (rc < 0) {
        cl_log(CL_LOG_ERROR, "attestation_failed", "error", cl_error_message(), NULL);
        respond_text(resp, 500, "500: the NSM did not produce an attestation document\n");
    } else {
        resp->status = 200;
        if (cl_buf_append(&resp->body, b64.data, b64.len) < 0 || cl_buf_append(&resp->body, "\n", 1) < 0)
            resp->status = 500;
        atomic_fetch_add(&e->attestations, 1);
    }
    cl_buf_free(&doc);
    cl_buf_free(&b64);
}

static void handle_enclave(enclave *e, cl_response *resp)
{
    char fp[2 * HASH_LEN + 1];
    cl_hex_encode(e->identity.cert_sha256, HASH_LEN, fp);
    char text[1024];
    snprintf(text, sizeof text,
             "This host runs inside an AWS Nitro Enclave, served by cloister.\n"
             "TLS is terminated inside the enclave; its certificate's SHA-256 is %s.\n"
             "Prove it: GET /enclave/attestation?nonce=<40 hex digits>, or run\n"
             "  cloister verify https://%s\n"
             "%s%s%s",
             fp, e->s.fqdn, e->s.appurl ? "Application source: " : "", e->s.appurl ? e->s.appurl : "",
             e->s.appurl ? "\n" : "");
    respond_text(resp, 200, text);
}

static json_t *config_json(enclave *e)
{
    char fp[2 * HASH_LEN + 1];
    cl_hex_encode(e->identity.cert_sha256, HASH_LEN, fp);
    json_t *o = json_object();
    json_object_set_new(o, "fqdn", json_string(e->s.fqdn));
    json_object_set_new(o, "appurl", e->s.appurl ? json_string(e->s.appurl) : json_null());
    json_object_set_new(o, "appwebsrv", e->s.appwebsrv ? json_string(e->s.appwebsrv) : json_null());
    json_object_set_new(o, "appcmd", e->s.appcmd ? json_string(e->s.appcmd) : json_null());
    json_object_set_new(o, "listen", json_string(e->public_addr));
    json_object_set_new(o, "ext-pub-port", json_integer(e->s.ext_pub_port));
    json_object_set_new(o, "intport", json_integer(e->s.intport));
    json_object_set_new(o, "prometheus-port", json_integer(e->s.prometheus_port));
    json_object_set_new(o, "prometheus-namespace", json_string(e->s.prometheus_namespace));
    json_object_set_new(o, "wait-for-app", json_boolean(e->s.wait_for_app));
    json_object_set_new(o, "disable-keep-alives", json_boolean(e->s.disable_keep_alives));
    json_object_set_new(o, "disable-http2", json_boolean(e->s.disable_http2));
    json_object_set_new(o, "debug", json_boolean(e->s.debug));
    json_object_set_new(o, "tls-identity", json_string(e->s.tls_key_ciphertext ? "static, key opened from KMS"
                                                       : e->s.cert               ? "static"
                                                                                 : "generated in the enclave"));
    json_t *names = json_array();
    for (size_t i = 0; i < e->secret_count; i++)
        json_array_append_new(names, json_string(e->secrets[i].name));
    json_object_set_new(o, "secrets", names);
    json_object_set_new(o, "secrets-env", json_boolean(e->s.secrets_env));
    json_object_set_new(o, "certificate-sha256", json_string(fp));
    json_object_set_new(o, "threads", json_integer(e->s.threads));
    json_object_set_new(o, "max-header-bytes", json_integer(e->s.max_header_bytes));
    json_object_set_new(o, "header-timeout", json_integer(e->s.header_timeout));
    json_object_set_new(o, "idle-timeout", json_integer(e->s.idle_timeout));
    json_object_set_new(o, "app-timeout", json_integer(e->s.app_timeout));
    json_object_set_new(o, "max-connections", json_integer(e->s.max_connections));
    json_object_set_new(o, "drain-timeout", json_integer(e->s.drain_timeout));
    json_object_set_new(o, "h2-max-streams", json_integer(e->s.h2_max_streams));
    json_object_set_new(o, "max-app-connections", json_integer(e->s.max_app_connections));
    json_object_set_new(o, "max-buffered-body", json_integer(e->s.max_buffered_body));
    json_object_set_new(o, "tap", e->tap ? enclave_tap_config(e->tap, &e->s.tap_s) : json_null());
    return o;
}

static void handle_config(enclave *e, cl_response *resp)
{
    json_t *o = config_json(e);
    char *text = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!text) {
        respond_text(resp, 500, "500: out of memory\n");
        return;
    }
    respond_text(resp, 200, text);
    if (cl_buf_append(&resp->body, "\n", 1) < 0)
        resp->status = 500;
    resp->content_type = "application/json";
    free(text);
}

static void handle_hash(enclave *e, const cl_request_info *req, cl_response *resp)
{
    cl_buf hash = CL_BUF_INIT;
    if (cl_base64_decode(req->body, req->body_len, &hash) < 0 || hash.len != HASH_LEN) {
        cl_buf_free(&hash);
        respond_text(resp, 400, "400: expected the base64 of a 32-byte SHA-256 hash\n");
        return;
    }
    pthread_mutex_lock(&e->lock);
    memcpy(e->app_hash, hash.data, HASH_LEN);
    pthread_mutex_unlock(&e->lock);
    char hex[2 * HASH_LEN + 1];
    cl_hex_encode(hash.data, HASH_LEN, hex);
    cl_buf_free(&hash);
    cl_log(CL_LOG_INFO, "app_key_hash_set", "sha256", hex, NULL);
    respond_text(resp, 200, "ok\n");
}

static int open_public_locked(enclave *e);

static void handle_ready(enclave *e, cl_response *resp)
{
    pthread_mutex_lock(&e->lock);
    if (e->public_opened || e->shutting_down) {
        pthread_mutex_unlock(&e->lock);
        respond_text(resp, 410, "410: the public listener is already open\n");
        return;
    }
    int rc = open_public_locked(e);
    pthread_mutex_unlock(&e->lock);
    if (rc < 0)
        respond_text(resp, 500, "500: cannot open the public listener; see the enclave's log\n");
    else
        respond_text(resp, 200, "ready: the public listener is open\n");
}

static void handle_metrics(enclave *e, cl_response *resp)
{
    cl_buf *out = &resp->body;
    int rc = cl_metrics_render(e->metrics, out);
    rc |= cl_metrics_render_value(e->metrics, out, "tls_handshakes_total", "counter", "TLS handshakes completed.",
                                  atomic_load(&e->stats.tls_handshakes));
    rc |= cl_metrics_render_value(e->metrics, out, "tls_resumptions_total", "counter",
                                  "TLS handshakes that resumed a session from a ticket.",
                                  atomic_load(&e->stats.tls_resumptions));
    rc |= cl_metrics_render_value(e->metrics, out, "tls_handshake_failures_total", "counter",
                                  "TLS handshakes that failed.", atomic_load(&e->stats.tls_handshake_failures));
    rc |= cl_metrics_render_value(e->metrics, out, "connections_open", "gauge", "Client connections open now.",
                                  atomic_load(&e->stats.connections_open));
    rc |= cl_metrics_render_value(e->metrics, out, "connections_total", "counter", "Client connections accepted.",
                                  atomic_load(&e->stats.connections_total));
    rc |= cl_metrics_render_value(e->metrics, out, "connections_refused_total", "counter",
                                  "Connections refused over -max-connections.",
                                  atomic_load(&e->stats.connections_refused));
    rc |= cl_metrics_render_value(e->metrics, out, "attestations_total", "counter",
                                  "Attestation documents served.", atomic_load(&e->attestations));
    rc |= cl_metrics_render_value(e->metrics, out, "app_restarts_total", "counter",
                                  "Times -appcmd was restarted after it died.",
                                  e->app_child ? cl_child_restarts(e->app_child) : 0);
    if (e->tap)
        rc |= cl_tap_relay_metrics(e->tap, e->s.prometheus_namespace, out);
    resp->status = rc < 0 ? 500 : 200;
    resp->content_type = "text/plain; version=0.0.4; charset=utf-8";
}

/* GET /enclave/secrets/NAME, internal listener only. */
static void handle_secret(enclave *e, const cl_request_info *req, cl_response *resp)
{
    cl_slice name = req->head->path;
    name.data += strlen(SECRETS_PREFIX);
    name.len -= strlen(SECRETS_PREFIX);
    for (size_t i = 0; i < e->secret_count; i++) {
        if (strlen(e->secrets[i].name) == name.len && !memcmp(e->secrets[i].name, name.data, name.len)) {
            resp->status = 200;
            resp->content_type = "application/octet-stream";
            if (cl_buf_append(&resp->body, e->secrets[i].value.data, e->secrets[i].value.len) < 0)
                resp->status = 500;
            return;
        }
    }
    respond_text(resp, 404, "404: no such secret (see -secret)\n");
}

/* POST / on the internal listener with -kms-for-app: KMS for the app
 * (lib/enclave/kms_endpoint.c). */
static void handle_kms(enclave *e, const cl_request_info *req, cl_response *resp)
{
    cl_kms_endpoint_request r = {
        .method = req->head->method,
        .target = cl_http_header_get(req->head, "x-amz-target"),
        .content_type = cl_http_header_get(req->head, "content-type"),
        .body = req->body,
        .body_len = req->body_len,
    };
    cl_kms_endpoint_reply reply = {.body = CL_BUF_INIT};
    cl_kms_endpoint_handle(e->kms_endpoint, &r, &reply);
    resp->status = reply.status;
    resp->content_type = CL_KMS_ENDPOINT_CONTENT_TYPE;
    resp->body = reply.body;
}

static int kms_send(void *ctx, const char *op, const uint8_t *body, size_t len, long *status, cl_buf *answer)
{
    return cl_kms_call_raw(ctx, op, body, len, status, answer);
}

/* -kms-for-app: a KMS session of its own (credentials, one RSA-2048
 * session key for the Recipient) that lives as long as the daemon. */
static int open_kms_for_app(enclave *e)
{
    if (!e->s.kms_for_app) {
        CL_ENSURE(!e->s.kms_for_app_keys && !e->s.kms_for_app_operations, CL_EINVAL,
                  "-kms-for-app-keys and -kms-for-app-operations go with -kms-for-app");
        return CL_OK;
    }
    cl_kms_setup setup = {
        .region = e->s.kms_region,
        .endpoint = e->s.kms_endpoint,
        .proxy = e->s.kms_proxy ? e->s.kms_proxy : "vsock:3:8000",
        .ca_file = e->s.kms_ca_file,
        .imds = e->s.kms_imds,
        .recipient = true,
        .nsm_client = e->nsm,
    };
    int rc = cl_kms_session_open(&setup, &e->app_kms);
    if (rc < 0)
        return cl_error_prefix(rc, "-kms-for-app: ");
    cl_kms_endpoint_config cfg = {
        .key_ids = e->s.kms_for_app_keys,
        .operations = e->s.kms_for_app_operations,
        .recipient = e->app_kms.recipient,
        .send = kms_send,
        .send_ctx = e->app_kms.kms,
    };
    rc = cl_kms_endpoint_new(&cfg, &e->kms_endpoint);
    if (rc < 0)
        return cl_error_prefix(rc, "-kms-for-app: ");
    cl_log(CL_LOG_INFO, "kms_for_app", "region", e->app_kms.region, "proxy", setup.proxy, "keys",
           e->s.kms_for_app_keys ? e->s.kms_for_app_keys : "any", "operations",
           e->s.kms_for_app_operations ? e->s.kms_for_app_operations : "all", NULL);
    return CL_OK;
}

static void handle_request(void *ctx, int route, const cl_request_info *req, cl_response *resp)
{
    listener_ctx *l = ctx;
    enclave *e = l->e;
    switch (route) {
    case ROUTE_ATTESTATION:
        if (method_is(req, "GET", resp))
            handle_attestation(e, req, resp);
        return;
    case ROUTE_ENCLAVE:
        if (method_is(req, "GET", resp))
            handle_enclave(e, resp);
        return;
    case ROUTE_CONFIG:
        if (method_is(req, "GET", resp))
            handle_config(e, resp);
        return;
    case ROUTE_READY:
        if (method_is(req, "GET", resp))
            handle_ready(e, resp);
        return;
    case ROUTE_HASH:
        if (method_is(req, "POST", resp))
            handle_hash(e, req, resp);
        return;
    case ROUTE_METRICS:
        if (method_is(req, "GET", resp))
            handle_metrics(e, resp);
        return;
    case ROUTE_SECRET:
        if (method_is(req, "GET", resp))
            handle_secret(e, req, resp);
        return;
    case ROUTE_KMS:
        handle_kms(e, req, resp);
        return;
    default:
        respond_text(resp, 404, "404: not found\n");
        return;
    }
}

static void request_done(void *ctx, int route, int status, uint64_t duration_us)
{
    listener_ctx *l = ctx;
    size_t r = route >= 0 ? (size_t)route : route == -1 ? ROUTE_APP : ROUTE_OTHER;
    cl_metrics_observe(l->e->metrics, r, status, duration_us);
    if (cl_log_get_level() <= CL_LOG_DEBUG) {
        char code[8], us[24];
        snprintf(code, sizeof code, "%d", status);
        snprintf(us, sizeof us, "%llu", (unsigned long long)duration_us);
        cl_log(CL_LOG_DEBUG, "request", "listener", l->kind == LISTENER_PUBLIC ? "public" : "internal", "route",
               route_names[r], "status", code, "duration_us", us, NULL);
    }
}

static int start_listener(enclave *e, const char *name, const char *addr_text, listener_ctx *ctx, bool public_,
                          cl_server **out)
{
    int fd = -1;
    cl_address addr;
    int rc = cl_address_parse(addr_text, &addr);
    if (rc == CL_OK)
        rc = cl_address_listen(&addr, 4096, &fd);
    if (rc < 0)
        return cl_error_prefix(rc, "%s listener %s: ", name, addr_text);
    pthread_mutex_lock(&e->files_lock);
    if (e->socket_file_count < sizeof e->socket_files / sizeof e->socket_files[0])
        cl_socket_file_remember(&addr, &e->socket_files[e->socket_file_count++]);
    pthread_mutex_unlock(&e->files_lock);
    cl_server_config cfg = {
        .name = name,
        .tls = public_ ? e->tls : NULL,
        .app = public_ && e->has_app ? &e->app : NULL,
        /* a KMS call for the app blocks its thread: keep one for the rest */
        .threads = public_ ? e->s.threads : ctx->kind == LISTENER_INTERNAL && e->kms_endpoint ? 2 : 1,
        .max_header_bytes = e->s.max_header_bytes,
        .header_timeout_ms = e->s.header_timeout * 1000u,
        .idle_timeout_ms = e->s.idle_timeout * 1000u,
        .upstream_timeout_ms = e->s.app_timeout * 1000u,
        .max_connections = public_ ? e->s.max_connections : 1024,
        .h2_max_streams = e->s.h2_max_streams,
        .max_app_connections = e->s.max_app_connections,
        .max_buffered_body = e->s.max_buffered_body,
        .disable_keep_alives = public_ && e->s.disable_keep_alives,
        .enable_h2 = public_ && !e->s.disable_http2,
        .proxy_protocol = public_ && e->s.proxy_protocol,
        .route = route_request,
        .handle = handle_request,
        .done = request_done,
        .ctx = ctx,
        .stats = public_ ? &e->stats : NULL,
    };
    rc = cl_server_start(&cfg, fd, out);
    if (rc < 0)
        return cl_error_prefix(rc, "%s listener %s: ", name, addr_text);
    cl_log(CL_LOG_INFO, "listening", "listener", name, "addr", addr_text, "tls", public_ ? "yes" : "no", NULL);
    return CL_OK;
}

static int open_public_locked(enclave *e)
{
    int rc = start_listener(e, "public", e->public_addr, &e->ctx_public, true, &e->public_server);
    if (rc < 0)
        cl_log(CL_LOG_ERROR, "listen_failed", "listener", "public", "error", cl_error_message(), NULL);
    else
        e->public_opened = true;
    return rc;
}

static int seed_entropy(enclave *e)
{
    uint8_t seed[ENTROPY_SEED_BYTES];
    int rc = cl_nsm_get_random(e->nsm, seed, sizeof seed);
    if (rc < 0)
        return cl_error_prefix(rc, "seeding randomness from the NSM: ");
    cl_tls_seed_entropy(seed, sizeof seed);
    cl_wipe(seed, sizeof seed);
    return CL_OK;
}

/* ---- secrets from KMS ----------------------------------------------------- */

static bool secret_name_valid(const char *n, size_t len)
{
    if (len == 0 || len > SECRET_NAME_MAX || (n[0] >= '0' && n[0] <= '9'))
        return false;
    for (size_t i = 0; i < len; i++)
        if (!((n[i] >= 'a' && n[i] <= 'z') || (n[i] >= 'A' && n[i] <= 'Z') || (n[i] >= '0' && n[i] <= '9') ||
              n[i] == '_'))
            return false;
    return true;
}

/* "BASE64" inline, or "@FILE" holding raw or base64 bytes. */
static int load_ciphertext(const char *spec, cl_buf *out)
{
    if (spec[0] == '@') {
        cl_buf raw = CL_BUF_INIT;
        int rc = cl_read_file(spec + 1, MAX_CIPHERTEXT_FILE, &raw);
        if (rc == CL_OK)
            rc = cl_decode_binary_or_base64(raw.data, raw.len, out);
        cl_buf_free(&raw);
        if (rc < 0)
            return cl_error_prefix(rc, "%s: ", spec + 1);
    } else {
        CL_TRY(cl_base64_decode((const uint8_t *)spec, strlen(spec), out));
    }
    CL_ENSURE(out->len > 0, CL_EINVAL, "the ciphertext is empty");
    return CL_OK;
}

/* Opens a ciphertext only with the encryption context of its purpose
 * (include/cloister/enclave/kms.h): KMS refuses one made for anything else, so the
 * parent cannot hand a token's key in as the TLS key, nor one secret's
 * ciphertext in under another secret's name. */
static int open_one(cl_kms *kms, const char *spec, const char *purpose, const char *name, cl_buf *plaintext)
{
    cl_kms_purpose_context ctx;
    CL_TRY(cl_kms_purpose_context_make(purpose, name, &ctx));
    cl_buf ct = CL_BUF_INIT;
    int rc = load_ciphertext(spec, &ct);
    cl_kms_options o = {.context = ctx.entries, .context_count = ctx.count};
    if (rc == CL_OK)
        rc = cl_kms_decrypt(kms, &o, ct.data, ct.len, plaintext);
    if (rc < 0 && !strcmp(cl_kms_error_type(kms), "InvalidCiphertextException"))
        rc = cl_error_prefix(rc, "not made for purpose=%s%s%s (`cloister kms encrypt --purpose %s%s%s`) or damaged: ",
                             purpose, name ? (strcmp(purpose, CL_KMS_PURPOSE_SECRET) ? ", token=" : ", name=") : "",
                             name ? name : "", purpose, name ? ":" : "", name ? name : "");
    cl_buf_free(&ct);
    return rc;
}

/* Every -secret and --tls-key-ciphertext is opened with a Recipient
 * before any listener opens; the first that fails stops the start. */
static int open_secrets(enclave *e)
{
    if (!e->s.secrets.count && !e->s.tls_key_ciphertext)
        return CL_OK;
    for (size_t i = 0; i < e->s.secrets.count; i++) {
        const char *spec = e->s.secrets.items[i];
        const char *eq = strchr(spec, '=');
        size_t n = eq ? (size_t)(eq - spec) : 0;
        CL_ENSURE(eq && eq[1] && secret_name_valid(spec, n), CL_EINVAL,
                  "-secret '%.*s...': expected NAME=BASE64 or NAME=@FILE, NAME of letters, digits and _ "
                  "(not first), at most %d", (int)(n ? n : strlen(spec) > 20 ? 20 : strlen(spec)), spec,
                  SECRET_NAME_MAX);
        for (size_t j = 0; j < i; j++)
            CL_ENSURE(strncmp(e->s.secrets.items[j], spec, n + 1) != 0, CL_EINVAL, "-secret %.*s is given twice", (int)n,
                      spec);
        memcpy(e->secrets[i].name, spec, n);
        e->secrets[i].name[n] = '\0';
    }
    cl_kms_setup setup = {
        .region = e->s.kms_region,
        .endpoint = e->s.kms_endpoint,
        .proxy = e->s.kms_proxy ? e->s.kms_proxy : "vsock:3:8000",
        .ca_file = e->s.kms_ca_file,
        .imds = e->s.kms_imds,
        .recipient = true,
        .nsm_client = e->nsm,
    };
    cl_kms_session ks;
    int rc = cl_kms_session_open(&setup, &ks);
    if (rc < 0)
        return cl_error_prefix(rc, "KMS for the secrets: ");
    cl_log(CL_LOG_INFO, "kms_session", "region", ks.region, "proxy", setup.proxy, "credentials",
           cl_aws_credentials_source(ks.credentials), "recipient", "RSA-2048", NULL);
    for (size_t i = 0; i < e->s.secrets.count; i++) {
        rc = open_one(ks.kms, strchr(e->s.secrets.items[i], '=') + 1, CL_KMS_PURPOSE_SECRET, e->secrets[i].name,
                      &e->secrets[i].value);
        if (rc < 0) {
            rc = cl_error_prefix(rc, "secret \"%s\" cannot be opened: ", e->secrets[i].name);
            goto out;
        }
        e->secret_count = i + 1;
        char bytes[24];
        snprintf(bytes, sizeof bytes, "%zu", e->secrets[i].value.len);
        cl_log(CL_LOG_INFO, "secret_opened", "name", e->secrets[i].name, "bytes", bytes, "key_id",
               cl_kms_key_id(ks.kms), NULL);
    }
    if (e->s.tls_key_ciphertext) {
        cl_buf key = CL_BUF_INIT;
        rc = open_one(ks.kms, e->s.tls_key_ciphertext, CL_KMS_PURPOSE_TLS_KEY, NULL, &key);
        if (rc == CL_OK)
            rc = cl_tls_identity_load_key_mem(e->s.cert, key.data, key.len, &e->identity);
        cl_buf_free(&key);
        if (rc < 0) {
            rc = cl_error_prefix(rc, "--tls-key-ciphertext cannot be opened: ");
            goto out;
        }
        cl_log(CL_LOG_INFO, "tls_key_opened", "key_id", cl_kms_key_id(ks.kms), NULL);
    }
out:
    cl_kms_session_close(&ks);
    return rc;
}

static void free_secrets(enclave *e)
{
    for (size_t i = 0; i < MAX_SECRETS; i++)
        cl_buf_free(&e->secrets[i].value);
    e->secret_count = 0;
}

/* NAME=value for -appcmd; values with a NUL byte cannot be. */
static int secrets_environment(enclave *e, char ***out)
{
    *out = NULL;
    if (!e->s.secrets_env || !e->secret_count)
        return CL_OK;
    char **env = calloc(e->secret_count + 1, sizeof *env);
    CL_ENSURE(env, CL_ENOMEM, "out of memory");
    for (size_t i = 0; i < e->secret_count; i++) {
        const secret *sc = &e->secrets[i];
        if (memchr(sc->value.data, 0, sc->value.len)) {
            for (size_t j = 0; j < i; j++)
                cl_free_secret(env[j], strlen(env[j]));
            free(env);
            return cl_error_set(CL_EINVAL, "secret \"%s\" holds a NUL byte and cannot be an environment variable "
                                           "(-secrets-env); read it from /enclave/secrets/%s instead",
                                sc->name, sc->name);
        }
        size_t n = strlen(sc->name) + 1 + sc->value.len + 1;
        env[i] = malloc(n);
        if (!env[i]) {
            for (size_t j = 0; j < i; j++)
                cl_free_secret(env[j], strlen(env[j]));
            free(env);
            return cl_error_set(CL_ENOMEM, "out of memory");
        }
        memcpy(env[i], sc->name, strlen(sc->name));
        env[i][strlen(sc->name)] = '=';
        memcpy(env[i] + strlen(sc->name) + 1, sc->value.data, sc->value.len);
        env[i][n - 1] = '\0';
    }
    *out = env;
    return CL_OK;
}

static void free_environment(char **env)
{
    for (size_t i = 0; env && env[i]; i++)
        cl_free_secret(env[i], strlen(env[i]));
    free(env);
}

static int enclave_start(enclave *e)
{
    /* AWS's enclave init leaves lo down; the internal listener and the
     * app need 127.0.0.1 */
    bool lo_was_down;
    int lo_rc = cl_netif_up("lo", &lo_was_down);
    if (lo_rc < 0)
        return cl_error_prefix(lo_rc, "loopback: ");
    if (lo_was_down)
        cl_log(CL_LOG_INFO, "loopback_up", "interface", "lo", "detail", "lo was down; brought it up", NULL);
    /* first: the app and KMS may need the network */
    if (e->s.tap)
        CL_TRY(cl_tap_relay_start(&e->s.tap_s, &e->tap));
    if (e->s.appwebsrv) {
        int rc = cl_upstream_target_parse(e->s.appwebsrv, &e->app);
        if (rc < 0)
            return cl_error_prefix(rc, "-appwebsrv: ");
        e->has_app = true;
    }
    if (e->s.listen)
        snprintf(e->public_addr, sizeof e->public_addr, "%s", e->s.listen);
    else
        snprintf(e->public_addr, sizeof e->public_addr, "tcp:0.0.0.0:%u", e->s.ext_pub_port);
    cl_address check;
    int rc = cl_address_parse(e->public_addr, &check);
    if (rc < 0)
        return cl_error_prefix(rc, "--listen: ");

    rc = cl_nsm_open(e->s.nsm, &e->nsm);
    if (rc < 0)
        return cl_error_prefix(rc, "no NSM (run inside an enclave, or give --nsm unix:PATH of cloister nsm-sim): ");
    CL_TRY(seed_entropy(e));
    cl_log(CL_LOG_INFO, "entropy_seeded", "source", "nsm", "bytes", "256", NULL);

    CL_TRY(open_secrets(e));
    CL_TRY(open_kms_for_app(e));

    if (e->s.tls_key_ciphertext) {
        /* loaded by open_secrets */
    } else if (e->s.cert) {
        rc = cl_tls_identity_load(e->s.cert, e->s.key, &e->identity);
        if (rc < 0)
            return cl_error_prefix(rc, "--cert/--key: ");
    } else {
        CL_TRY(cl_tls_identity_generate(e->s.fqdn, &e->identity));
    }
    char fp[2 * HASH_LEN + 1];
    cl_hex_encode(e->identity.cert_sha256, HASH_LEN, fp);
    cl_log(CL_LOG_INFO, "tls_identity", "origin", e->s.cert ? "static" : "generated", "fqdn", e->s.fqdn,
           "certificate_sha256", fp, NULL);
    cl_tls_server_options topt = {.enable_h2 = !e->s.disable_http2};
    CL_TRY(cl_tls_server_ctx(&e->identity, &topt, &e->tls));
    CL_TRY(cl_metrics_new(e->s.prometheus_namespace, route_names, ROUTE_COUNT, &e->metrics));

    e->ctx_public = (listener_ctx){e, LISTENER_PUBLIC};
    e->ctx_internal = (listener_ctx){e, LISTENER_INTERNAL};
    e->ctx_metrics = (listener_ctx){e, LISTENER_METRICS};
    char addr[64];
    snprintf(addr, sizeof addr, "tcp:127.0.0.1:%u", e->s.intport);
    CL_TRY(start_listener(e, "internal", addr, &e->ctx_internal, false, &e->internal_server));
    if (e->s.prometheus_port || e->s.prometheus_listen) {
        if (!e->s.prometheus_listen)
            snprintf(addr, sizeof addr, "tcp:0.0.0.0:%u", e->s.prometheus_port);
        CL_TRY(start_listener(e, "metrics", e->s.prometheus_listen ? e->s.prometheus_listen : addr, &e->ctx_metrics,
                              false, &e->metrics_server));
    }
    if (e->s.appcmd) {
        char **env = NULL;
        CL_TRY(secrets_environment(e, &env));
        cl_child_config cc = {.name = "app", .command = e->s.appcmd, .env = env};
        rc = cl_child_start(&cc, &e->app_child);
        free_environment(env);
        CL_TRY(rc);
    }
    if (!e->s.wait_for_app) {
        pthread_mutex_lock(&e->lock);
        rc = open_public_locked(e);
        pthread_mutex_unlock(&e->lock);
        CL_TRY(rc);
    } else {
        cl_log(CL_LOG_INFO, "waiting_for_app", "hint", "the public listener opens on GET /enclave/ready", NULL);
    }
    return CL_OK;
}

static void enclave_stop(enclave *e)
{
    pthread_mutex_lock(&e->lock);
    e->shutting_down = true;
    pthread_mutex_unlock(&e->lock);
    unsigned drain_ms = e->s.drain_timeout * 1000u;
    cl_server *servers[] = {e->public_server, e->internal_server, e->metrics_server};
    for (size_t i = 0; i < 3; i++)
        if (servers[i])
            cl_server_drain(servers[i], drain_ms);
    for (size_t i = 0; i < 3; i++)
        cl_server_wait(servers[i]);
    e->public_server = e->internal_server = e->metrics_server = NULL;
    for (size_t i = 0; i < e->socket_file_count; i++)
        cl_socket_file_remove(&e->socket_files[i]);
    e->socket_file_count = 0;
    cl_child_stop(e->app_child, 5000);
    e->app_child = NULL;
    SSL_CTX_free(e->tls);
    cl_tls_identity_free(&e->identity);
    cl_metrics_free(e->metrics);
    cl_kms_endpoint_free(e->kms_endpoint);
    e->kms_endpoint = NULL;
    cl_kms_session_close(&e->app_kms);
    cl_nsm_close(e->nsm);
    free_secrets(e);
    cl_tap_relay_stop(e->tap);
    e->tap = NULL;
}

int cmd_enclave(int argc, char **argv)
{
    cl_log_set_component("enclave");
    enclave *e = calloc(1, sizeof *e);
    if (!e) {
        fprintf(stderr, "cloister enclave: out of memory\n");
        return EXIT_FAILED;
    }
    pthread_mutex_init(&e->lock, NULL);
    pthread_mutex_init(&e->files_lock, NULL);
    int status = parse_settings(argc, argv, &e->s);
    if (status != 0) {
        settings_free(&e->s);
        free(e);
        return status < 0 ? 0 : status;
    }
    if (e->s.debug)
        cl_log_set_level(CL_LOG_DEBUG);

    /* Every thread inherits this mask: termination signals are taken here
     * with sigwait, never by a worker in the middle of its work. */
    sigset_t wanted;
    sigemptyset(&wanted);
    sigaddset(&wanted, SIGTERM);
    sigaddset(&wanted, SIGINT);
    sigaddset(&wanted, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &wanted, NULL);
    signal(SIGPIPE, SIG_IGN);

    int rc = enclave_start(e);
    if (rc < 0) {
        cl_log(CL_LOG_ERROR, "start_failed", "error", cl_error_message(), NULL);
        fprintf(stderr, "cloister enclave: %s\n", cl_error_message());
        enclave_stop(e);
        settings_free(&e->s);
        free(e);
        return EXIT_FAILED;
    }
    int sig = 0;
    for (;;) {
        if (sigwait(&wanted, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            cl_log(CL_LOG_INFO, "sighup_ignored", "hint", "restart to change settings", NULL);
            continue;
        }
        break;
    }
    cl_log(CL_LOG_INFO, "draining", "signal", sig == SIGTERM ? "SIGTERM" : "SIGINT", NULL);
    enclave_stop(e);
    cl_log(CL_LOG_INFO, "stopped", NULL);
    settings_free(&e->s);
    pthread_mutex_destroy(&e->lock);
    pthread_mutex_destroy(&e->files_lock);
    free(e);
    return 0;
}

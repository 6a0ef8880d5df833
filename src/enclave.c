/* cloister enclave: the daemon inside the enclave.  TLS is terminated here
 * with a key generated inside the enclave; clients prove that through
 * /enclave/attestation, whose document binds the certificate's hash; every
 * other request is streamed to the application.  Flags and endpoints are
 * those of brave's nitriding-daemon, plus a few of cloister's own. */
#include "cloister/core/address.h"
#include "cloister/core/clock.h"
#include "cloister/core/netif.h"
#include "cloister/core/encoding.h"
#include "cloister/core/http.h"
#include "cloister/enclave/harden.h"
#include "cloister/enclave/key_sync.h"
#include "enclave_acme.h"
#include "cloister/enclave/kms.h"
#include "cloister/enclave/kms_endpoint.h"
#include "cloister/core/log.h"
#include "cloister/core/metrics.h"
#include "cloister/core/options.h"
#include "cloister/enclave/tap_relay.h"
#include "cloister/enclave/nsm.h"
#include "cloister/enclave/server.h"
#include "cloister/enclave/supervise.h"
#include "cloister/enclave/syscall_filter.h"
#include "cloister/core/tls.h"
#include "cloister/enclave/upstream.h"
#include "commands.h"
#include "enclave_launcher.h"
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
#include <time.h>
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
    char *listen, *nsm, *cert, *key, *config, *prometheus_listen, *health_listen;
    unsigned ext_pub_port, intport, prometheus_port;
    unsigned threads, max_header_bytes, header_timeout, idle_timeout, app_timeout, max_connections,
        drain_timeout, drain_grace, h2_max_streams, max_app_connections, max_buffered_body;
    bool wait_for_app, disable_keep_alives, debug, disable_http2, proxy_protocol;
    /* KMS secrets opened at start */
    cl_opt_list secrets; /* "NAME=BASE64" or "NAME=@FILE" */
    char *tls_key_ciphertext, *kms_region, *kms_endpoint, *kms_proxy, *kms_ca_file, *kms_imds;
    bool secrets_env;
    /* the app's KMS endpoint on the internal listener */
    bool kms_for_app;
    char *kms_for_app_keys, *kms_for_app_operations;
    /* key sync (lib/enclave/key_sync*.c) */
    char *fqdn_leader, *ext_priv_listen, *sync_advertise, *sync_advertise_imds;
    unsigned ext_priv_port;
    cl_opt_list sync_dial, sync_roots, sync_allow_pcr0;
    bool sync_allow_signer;
    unsigned sync_register_ms, sync_heartbeat_ms, sync_prune_ms;
    enclave_acme_settings acme; /* -acme (src/enclave_acme.c) */
    /* -tap: tap0 and the egress policy (lib/enclave/tap_relay.c) */
    bool tap;
    cl_tap_settings tap_s;
    /* hardening (lib/enclave/harden.c, syscall_filter.c) */
    char *user, *seccomp;
    bool require_locked_memory;
    unsigned secure_heap_kib;
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
    {.name = "drain-grace", CL_OPT_UINT_AT(settings, drain_grace, 0, 3600), .def = "5", .arg = "SECONDS",
     .help = "on SIGTERM, first this long (with -health-listen; without, no grace): /enclave/health answers 503 so "
             "that the load balancer stops sending connections, which are still accepted, and every response closes "
             "its connection (HTTP/2: GOAWAY); then -drain-timeout"},
    {.name = "health-listen", CL_OPT_STR(settings, health_listen), .arg = "ADDR",
     .help = "plain-HTTP listener for the parent (vsock:4294967295:PORT on Nitro): GET /enclave/health (200 serving,"
             " 503 starting or draining) for the load balancer's check through cloister host, POST /enclave/drain "
             "(as SIGTERM, for a parent that cannot signal the enclave)"},
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
    {.name = "fqdn-leader", CL_OPT_STR(settings, fqdn_leader), .arg = "HOST[:PORT]",
     .help = "key sync (nitriding's): the leader enclave's name; the enclave that reaches itself there leads, the "
             "others take its TLS key and app state once its attestation document verifies (docs/key-sync.md)"},
    {.name = "ext-priv-port", CL_OPT_UINT_AT(settings, ext_priv_port, 1, 65535), .def = "444", .arg = "PORT",
     .help = "the key sync listener (HTTPS, not for the Internet) on all addresses, and the leader's default port"},
    {.name = "ext-priv-listen", CL_OPT_STR(settings, ext_priv_listen), .arg = "ADDR",
     .help = "the key sync listener's address: vsock:CID:PORT, unix:PATH or tcp:HOST:PORT (overrides -ext-priv-port)"},
    {.name = "sync-advertise", CL_OPT_STR(settings, sync_advertise), .arg = "HOST:PORT",
     .help = "where the leader reaches this worker's sync listener (its worker_hostname; default: -ext-priv-listen's "
             "tcp address, else IMDS's local-hostname (through -kms-imds):-ext-priv-port, as nitriding)"},
    {.name = "sync-advertise-imds", CL_OPT_STR(settings, sync_advertise_imds), .arg = "local-hostname|local-ipv4",
     .help = "without -sync-advertise: the IMDS field that names this worker (local-ipv4: the leader dials the "
             "address, no DNS; e.g. on tap0 with an egress policy of the VPC's CIDR) (default: local-hostname)"},
    {.name = "sync-dial", CL_OPT_LIST_AT(settings, sync_dial, 64), .flags = CL_OPT_NONEMPTY, .arg = "HOST:PORT=ADDR",
     .help = "reach the sync peer HOST:PORT through ADDR, e.g. the host's outbound proxy vsock:3:8444 (repeatable; "
             "peers without one are dialed over TCP)"},
    {.name = "sync-root", CL_OPT_LIST_AT(settings, sync_roots, 8), .flags = CL_OPT_NONEMPTY, .arg = "PEM",
     .help = "trust this root for peers' attestation documents instead of AWS's (nsm-sim's DIR/root.pem; repeatable)"},
    {.name = "sync-allow-pcr0", CL_OPT_LIST_AT(settings, sync_allow_pcr0, CL_SYNC_ALLOW_PCR0_MAX),
     .flags = CL_OPT_NONEMPTY, .arg = "HEX",
     .help = "another image's PCR0 that may give keys to this enclave or take them from it (a rolling upgrade; "
             "repeatable)"},
    {.name = "sync-allow-signer", CL_OPT_FLAG(settings, sync_allow_signer),
     .help = "also give keys to and take them from images signed with this image's own signing certificate (PCR8 "
             "equal, not zero): the rolling upgrade to an image built later, whose PCR0 this one cannot name"},
    {.name = "sync-register-interval", CL_OPT_DURATION_AT(settings, sync_register_ms, 1, 10, 3600000), .def = "5s",
     .arg = "DUR", .help = "key sync: a worker's registration retries (after quick first ones), for a minute"},
    {.name = "sync-heartbeat-interval", CL_OPT_DURATION_AT(settings, sync_heartbeat_ms, 1, 10, 3600000),
     .def = "1m", .arg = "DUR", .help = "key sync: a worker's heartbeat cadence (shorter for tests)"},
    {.name = "sync-prune-after", CL_OPT_DURATION_AT(settings, sync_prune_ms, 1, 10, 3600000), .def = "1m",
     .arg = "DUR", .help = "key sync: the leader drops a worker silent this long (shorter for tests)"},
    {.name = "user", CL_OPT_STR(settings, user), .arg = "NAME|UID[:GID]",
     .help = "once listeners, lo, tap0 and the NSM are set up, drop to this user (needs root; default: stay)"},
    {.name = "seccomp", CL_OPT_STR(settings, seccomp), .def = "off", .arg = "off|log|enforce",
     .help = "after the start, allow only the system calls in lib/enclave/syscall_filter.c: enforce kills the "
             "daemon on any other, log lets the kernel log them (off by default: platforms vary); -appcmd is then "
             "started by an unfiltered launcher forked before the filter, which can only start and stop that "
             "one command"},
    {.name = "require-locked-memory", CL_OPT_FLAG(settings, require_locked_memory),
     .help = "refuse to start if keys and secrets cannot be held in locked (never swapped) memory; default: warn"},
    {.name = "secure-heap", CL_OPT_SIZE_AT(settings, secure_heap_kib, 1024, 64, 1u << 20), .def = "1M",
     .arg = "SIZE", .help = "locked memory for private keys and KMS plaintexts (a power of two: 1M, 4M)"},
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
                             "  GET  /enclave/state[?wait=S]       key sync, workers: the app state from the leader\n"
                             "                                     (ETag; with If-None-Match, waits up to S s: 304)\n"
                             "  PUT  /enclave/state                key sync, leader: set it (1 MiB), re-sync workers\n"
                             "key sync endpoints (HTTPS on -ext-priv-port, with -fqdn-leader):\n"
                             "  GET /enclave/leader?nonce=H, POST /enclave/heartbeat, GET and POST /enclave/sync\n"
                             "health endpoints (plain HTTP on -health-listen, for the parent):\n"
                             "  GET  /enclave/health               200 serving; 503 starting, syncing or draining\n"
                             "  POST /enclave/drain                start the drain, as SIGTERM does\n"
                             "\nSIGTERM or SIGINT: /enclave/health answers 503 and responses close their\n"
                             "connections for -drain-grace (with -health-listen) while new ones are still\n"
                             "accepted; then stop accepting, let requests in flight finish (-drain-timeout),\n"
                             "stop the application, exit 0.\n";

/* The options of s, for parsing and for freeing. */
static cl_options enclave_options(settings *s, cl_opt_section section[3])
{
    section[0] = (cl_opt_section)CL_OPT_SECTION("options", option_specs, s);
    section[1] = (cl_opt_section){"ACME (-acme)", enclave_acme_option_specs, enclave_acme_option_count, &s->acme};
    section[2] = (cl_opt_section){"with -tap", NULL, 0, &s->tap_s};
    section[2].opts = cl_tap_options(&section[2].count);
    return (cl_options){.prog = "cloister enclave",
                        .usage = usage_text,
                        .epilog = epilog,
                        .flags = CL_OPTIONS_SINGLE_DASH,
                        .sections = section,
                        .section_count = 3};
}

/* Returns 0, or EXIT_USAGE after printing the problem, or -1 for --help. */
static int parse_settings(int argc, char **argv, settings *s)
{
    memset(s, 0, sizeof *s);
    cl_opt_section section[3];
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
    if (strlen(s->fqdn) > 253) {
        fprintf(stderr, "cloister enclave: -fqdn is longer than a DNS name can be (253 characters)\n");
        return EXIT_USAGE;
    }
    if (s->acme.acme && s->acme.store && strlen(s->fqdn) > ENCLAVE_ACME_STORED_NAME_MAX) {
        fprintf(stderr, "cloister enclave: with --acme-store, -fqdn is at most %d characters (it names the stored "
                        "record and its lease)\n", ENCLAVE_ACME_STORED_NAME_MAX);
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
    if (s->sync_allow_pcr0.count) {
        cl_sync_policy *check = calloc(1, sizeof *check);
        for (size_t i = 0; check && i < s->sync_allow_pcr0.count; i++)
            if (cl_sync_policy_allow_pcr0(check, s->sync_allow_pcr0.items[i]) < 0) {
                fprintf(stderr, "cloister enclave: %s\n", cl_error_message());
                free(check);
                return EXIT_USAGE;
            }
        free(check);
    }
    if (s->max_buffered_body < 65536) {
        fprintf(stderr, "cloister enclave: --max-buffered-body must be at least 65536\n");
        return EXIT_USAGE;
    }
    if (enclave_acme_check(&s->acme) != 0)
        return EXIT_USAGE;
    if (s->tap && cl_tap_settings_check(&s->tap_s) < 0) {
        fprintf(stderr, "cloister enclave: %s (see --help)\n", cl_error_message());
        return EXIT_USAGE;
    }
    if (!s->tap && s->tap_s.egress_policy) {
        fprintf(stderr, "cloister enclave: --egress-policy goes with --tap\n");
        return EXIT_USAGE;
    }
    cl_seccomp_mode mode;
    if (cl_seccomp_mode_parse(s->seccomp, &mode) < 0) {
        fprintf(stderr, "cloister enclave: %s\n", cl_error_message());
        return EXIT_USAGE;
    }
    if (s->secure_heap_kib & (s->secure_heap_kib - 1)) {
        fprintf(stderr, "cloister enclave: --secure-heap must be a power of two (e.g. 1M, 4M)\n");
        return EXIT_USAGE;
    }
    if (s->user) {
        cl_user_spec u;
        if (cl_user_parse(s->user, &u) < 0) {
            fprintf(stderr, "cloister enclave: %s\n", cl_error_message());
            return EXIT_USAGE;
        }
    }
    return 0;
}

static void settings_free(settings *s)
{
    cl_opt_section section[3];
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
    ROUTE_SYNC_LEADER,
    ROUTE_SYNC_HEARTBEAT,
    ROUTE_SYNC,
    ROUTE_STATE,
    ROUTE_HEALTH,
    ROUTE_DRAIN,
    ROUTE_APP,
    ROUTE_OTHER, /* unknown local paths: 404 */
    ROUTE_COUNT,
};

static const char *const route_names[ROUTE_COUNT] = {
    "enclave", "attestation", "config", "ready", "hash", "metrics", "secret", "kms",
    "sync_leader", "sync_heartbeat", "sync", "state", "health", "drain", "app", "other"};

enum listener_kind { LISTENER_PUBLIC, LISTENER_INTERNAL, LISTENER_METRICS, LISTENER_SYNC, LISTENER_HEALTH };

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
    /* the TLS identity of new connections: key sync replaces it when a
     * worker receives the leader's; tls_lock guards both */
    pthread_mutex_t tls_lock;
    cl_tls_identity identity;
    SSL_CTX *tls;
    cl_sync *sync; /* -fqdn-leader */
    atomic_bool sync_installed; /* a worker has the leader's identity */
    enclave_acme *acme; /* -acme */
    bool acme_closing;  /* under tls_lock: key sync no longer hands it challenges */
    cl_kms_session acme_kms; /* -acme with --acme-store */
    char sync_addr[160];
    bool has_app;
    cl_upstream_target app;
    char public_addr[160];
    cl_metrics *metrics;
    cl_server_stats stats;
    atomic_uint_fast64_t attestations;
    cl_child *app_child;
    listener_ctx ctx_public, ctx_internal, ctx_metrics, ctx_sync, ctx_health;
    secret secrets[MAX_SECRETS]; /* set before any listener opens, read-only after */
    size_t secret_count;
    cl_kms_session app_kms; /* -kms-for-app */
    cl_kms_endpoint *kms_endpoint;
    cl_tap_relay *tap; /* -tap */
    cl_harden_state hardening;

    pthread_mutex_t lock; /* guards what follows */
    uint8_t app_hash[HASH_LEN];
    bool public_opened, shutting_down;
    bool draining;        /* SIGTERM or POST /enclave/drain seen: /enclave/health says 503 */
    bool drain_requested; /* by POST /enclave/drain (for the log) */
    cl_server *public_server, *internal_server, *metrics_server, *sync_server, *health_server;
    /* unix listeners' files, removed at the end; own lock, as the public
     * listener is opened with `lock` held */
    pthread_mutex_t files_lock;
    cl_socket_file socket_files[5];
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
    if (l->kind == LISTENER_HEALTH)
        return path_is(h, "/enclave/health") ? ROUTE_HEALTH : path_is(h, "/enclave/drain") ? ROUTE_DRAIN : ROUTE_OTHER;
    if (l->kind == LISTENER_SYNC)
        return path_is(h, "/enclave/leader")      ? ROUTE_SYNC_LEADER
               : path_is(h, "/enclave/heartbeat") ? ROUTE_SYNC_HEARTBEAT
               : path_is(h, "/enclave/sync")      ? ROUTE_SYNC
                                                  : ROUTE_OTHER;
    if (path_is(h, "/enclave/attestation"))
        return ROUTE_ATTESTATION;
    if (l->kind == LISTENER_INTERNAL) {
        if (path_is(h, "/enclave/ready"))
            return ROUTE_READY;
        if (path_is(h, "/enclave/hash"))
            return ROUTE_HASH;
        if (path_is(h, "/enclave/state"))
            return ROUTE_STATE;
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
    /* the certificate this very connection was served: after key sync a
     * connection opened before the switch still has the old one */
    X509 *served = req->ssl ? SSL_get_certificate(req->ssl) : NULL;
    if (!served || cl_tls_cert_sha256(served, user_data + 2) < 0) {
        pthread_mutex_lock(&e->tls_lock);
        memcpy(user_data + 2, e->identity.cert_sha256, HASH_LEN);
        pthread_mutex_unlock(&e->tls_lock);
    }
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

static void current_fingerprint(enclave *e, char fp[2 * HASH_LEN + 1])
{
    pthread_mutex_lock(&e->tls_lock);
    cl_hex_encode(e->identity.cert_sha256, HASH_LEN, fp);
    pthread_mutex_unlock(&e->tls_lock);
}

static void handle_enclave(enclave *e, cl_response *resp)
{
    char fp[2 * HASH_LEN + 1];
    current_fingerprint(e, fp);
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
    current_fingerprint(e, fp);
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
    json_object_set_new(o, "drain-grace", json_integer(e->s.drain_grace));
    json_object_set_new(o, "h2-max-streams", json_integer(e->s.h2_max_streams));
    json_object_set_new(o, "max-app-connections", json_integer(e->s.max_app_connections));
    json_object_set_new(o, "max-buffered-body", json_integer(e->s.max_buffered_body));
    json_object_set_new(o, "fqdn-leader", e->s.fqdn_leader ? json_string(e->s.fqdn_leader) : json_null());
    json_object_set_new(o, "ext-priv-listen", e->sync ? json_string(e->sync_addr) : json_null());
    cl_sync_role role = e->sync ? cl_sync_get_role(e->sync) : CL_SYNC_OFF;
    json_object_set_new(o, "sync-role", json_string(cl_sync_role_name(role)));
    json_object_set_new(o, "tap", e->tap ? enclave_tap_config(e->tap, &e->s.tap_s) : json_null());
    json_t *h = json_object();
    json_object_set_new(h, "user", e->s.user ? json_string(e->s.user) : json_null());
    json_object_set_new(h, "uid", json_integer(getuid()));
    json_object_set_new(h, "gid", json_integer(getgid()));
    json_object_set_new(h, "seccomp", json_string(e->s.seccomp));
    json_object_set_new(h, "secure-heap", json_integer(e->hardening.secure_heap ? (json_int_t)e->hardening.heap_bytes : 0));
    json_object_set_new(h, "memory-locked", json_boolean(e->hardening.locked));
    json_object_set_new(o, "hardening", h);
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
    if (e->public_opened || e->shutting_down || e->draining) {
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
    if (e->acme)
        rc |= enclave_acme_metrics(e->acme, e->metrics, out);
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

/* GET /enclave/health: what a load balancer checks (through cloister
 * host, which cannot see inside): 200 only while the public listener is
 * open, no drain has begun and, with key sync, this is the leader or a
 * worker that has its identity.  The answer is a hint to the balancer, not
 * a secret; the parent could take the replica out of service anyway. */
static void handle_health(enclave *e, cl_response *resp)
{
    /* with key sync, a worker serves only once it has the leader's identity:
     * before, a client would see a certificate of its own */
    cl_sync_role role = e->sync ? cl_sync_get_role(e->sync) : CL_SYNC_OFF;
    bool syncing = role != CL_SYNC_OFF && role != CL_SYNC_LEADER && !atomic_load(&e->sync_installed);
    pthread_mutex_lock(&e->lock);
    const char *state = e->draining         ? "draining"
                        : !e->public_opened ? "starting"
                        : syncing           ? "syncing"
                                            : "serving";
    pthread_mutex_unlock(&e->lock);
    char text[64];
    snprintf(text, sizeof text, "{\"state\": \"%s\"}\n", state);
    respond_text(resp, strcmp(state, "serving") ? 503 : 200, text);
    resp->content_type = "application/json";
}

/* POST /enclave/drain: the parent asks for the drain SIGTERM would start
 * (on Nitro it cannot signal the enclave; terminate-enclave cuts every
 * connection at once).  It gives the parent nothing it did not have: it
 * can always stop forwarding.  The main thread does the drain. */
static void handle_drain(enclave *e, cl_response *resp)
{
    pthread_mutex_lock(&e->lock);
    bool already = e->draining || e->drain_requested;
    e->drain_requested = true;
    pthread_mutex_unlock(&e->lock);
    if (!already)
        kill(getpid(), SIGTERM);
    respond_text(resp, 202, already ? "already draining\n" : "draining\n");
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

/* Key sync's endpoints: lib/enclave/key_sync_engine.c answers. */
static void handle_sync(enclave *e, int route, const cl_request_info *req, cl_response *resp)
{
    int ep = route == ROUTE_SYNC_LEADER      ? CL_SYNC_EP_LEADER
             : route == ROUTE_SYNC_HEARTBEAT ? CL_SYNC_EP_HEARTBEAT
             : route == ROUTE_SYNC           ? CL_SYNC_EP_SYNC
                                             : CL_SYNC_EP_STATE;
    const cl_slice *inm = cl_http_header_get(req->head, "if-none-match");
    cl_sync_request r = {
        .method = req->head->method,
        .query = req->head->query,
        .body = req->body,
        .body_len = req->body_len,
    };
    if (inm)
        r.if_none_match = *inm;
    cl_sync_reply reply = {.body = CL_BUF_INIT};
    cl_sync_handle(e->sync, ep, &r, &reply);
    resp->status = reply.status;
    resp->content_type = reply.content_type;
    resp->body = reply.body;
    if (reply.etag[0])
        snprintf(resp->etag, sizeof resp->etag, "%s", reply.etag);
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
    case ROUTE_HEALTH:
        if (method_is(req, "GET", resp))
            handle_health(e, resp);
        return;
    case ROUTE_DRAIN:
        if (method_is(req, "POST", resp))
            handle_drain(e, resp);
        return;
    case ROUTE_SYNC_LEADER:
    case ROUTE_SYNC_HEARTBEAT:
    case ROUTE_SYNC:
    case ROUTE_STATE:
        handle_sync(e, route, req, resp);
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
        cl_log(CL_LOG_DEBUG, "request", "listener",
               l->kind == LISTENER_PUBLIC ? "public" : l->kind == LISTENER_SYNC ? "sync" : "internal", "route",
               route_names[r], "status", code, "duration_us", us, NULL);
    }
}

/* The context of a new TLS connection, with a reference for the server. */
static SSL_CTX *tls_acquire(void *ctx)
{
    enclave *e = ((listener_ctx *)ctx)->e;
    pthread_mutex_lock(&e->tls_lock);
    SSL_CTX *t = e->tls;
    SSL_CTX_up_ref(t);
    pthread_mutex_unlock(&e->tls_lock);
    return t;
}

/* Key sync: a verified leader's key and certificate become the identity
 * of new connections; those already open keep theirs. */
static int install_synced_identity(void *arg, const cl_sync_keys *keys)
{
    enclave *e = arg;
    cl_tls_identity id;
    CL_TRY(cl_sync_identity_from_keys(keys, &id));
    cl_tls_server_options topt = {.enable_h2 = !e->s.disable_http2};
    SSL_CTX *ctx = NULL;
    int rc = cl_tls_server_ctx(&id, &topt, &ctx);
    if (rc < 0) {
        cl_tls_identity_free(&id);
        return rc;
    }
    pthread_mutex_lock(&e->tls_lock);
    /* -acme: the leader's pushed tls-alpn-01 answers are given on this
     * context too (start_acme hooks the context it finds, under this lock) */
    if (e->acme && !e->acme_closing)
        rc = enclave_acme_hook(e->acme, ctx);
    if (rc < 0) {
        pthread_mutex_unlock(&e->tls_lock);
        SSL_CTX_free(ctx);
        cl_tls_identity_free(&id);
        return rc;
    }
    SSL_CTX *old_ctx = e->tls;
    cl_tls_identity old = e->identity;
    e->identity = id;
    e->tls = ctx;
    pthread_mutex_unlock(&e->tls_lock);
    atomic_store(&e->sync_installed, true);
    SSL_CTX_free(old_ctx);
    cl_tls_identity_free(&old);
    char fp[2 * HASH_LEN + 1];
    cl_hex_encode(id.cert_sha256, HASH_LEN, fp);
    cl_log(CL_LOG_INFO, "tls_identity", "origin", "key-sync", "fqdn", e->s.fqdn, "certificate_sha256", fp, NULL);
    return CL_OK;
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
    bool sync_ = ctx->kind == LISTENER_SYNC, internal_ = ctx->kind == LISTENER_INTERNAL;
    cl_server_config cfg = {
        .name = name,
        .tls_acquire = public_ || sync_ ? tls_acquire : NULL,
        .app = public_ && e->has_app ? &e->app : NULL,
        /* a KMS call for the app blocks its thread, and so does a long poll
         * of /enclave/state (two at most): keep one for the rest */
        .threads = public_ ? e->s.threads
                   : internal_ ? (e->kms_endpoint ? 2u : 1u) + (e->s.fqdn_leader ? 2u : 0u)
                   : sync_     ? 2 /* a sync POST holding up to 3 MiB takes a while to check */
                               : 1,
        .max_header_bytes = e->s.max_header_bytes,
        /* PUT /enclave/state takes 1 MiB; the leader's sync POST carries it sealed */
        .max_local_body = sync_ ? CL_SYNC_MAX_LEADER_BODY : internal_ && e->s.fqdn_leader ? CL_SYNC_MAX_STATE : 0,
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
    cl_log(CL_LOG_INFO, "listening", "listener", name, "addr", addr_text, "tls", public_ || sync_ ? "yes" : "no",
           NULL);
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
        /* kept for the enclave's life: in locked, undumpable memory */
        rc = cl_secure_move(&e->secrets[i].value);
        if (rc < 0)
            goto out;
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

/* A worker's own address for the leader, as nitriding finds it: IMDS's
 * local-hostname and the sync port.  -fqdn is no default: every replica
 * behind one balancer shares it, so the leader would take all workers for
 * one and reach a random replica under that name. */
static int advertise_from_imds(enclave *e, char *out, size_t out_len)
{
    CL_ENSURE(e->s.kms_imds, CL_EINVAL,
              "key sync needs this enclave's own address for the leader: give --sync-advertise HOST:PORT, "
              "-ext-priv-listen tcp:ADDR:PORT, or -kms-imds ADDR (its local-hostname, as nitriding does); "
              "-fqdn is shared by every replica");
    bool ipv4 = e->s.sync_advertise_imds && !strcmp(e->s.sync_advertise_imds, "local-ipv4");
    cl_aws_credentials_provider *p = NULL;
    char host[256];
    int rc = cl_aws_credentials_imds(e->s.kms_imds, NULL, &p);
    if (rc == CL_OK)
        rc = ipv4 ? cl_aws_credentials_imds_local_ipv4(p, host, sizeof host)
                  : cl_aws_credentials_imds_local_hostname(p, host, sizeof host);
    cl_aws_credentials_provider_free(p);
    if (rc < 0)
        return cl_error_prefix(rc, "key sync: this enclave's address from IMDS (-kms-imds): ");
    snprintf(out, out_len, "%s:%u", host, e->s.ext_priv_port);
    return CL_OK;
}

/* Key sync, worker: the leader's pending ACME challenges (from a verified
 * leader only: key_sync_engine.c calls this after the sync verified). */
static void take_synced_challenges(void *arg, const uint8_t *text, size_t len)
{
    enclave *e = arg;
    /* held throughout, so that shutdown cannot free the ACME state under us */
    pthread_mutex_lock(&e->tls_lock);
    if (e->acme && !e->acme_closing)
        enclave_acme_take_challenges(e->acme, text, len);
    else if (len && !e->acme)
        cl_log(CL_LOG_WARN, "acme_challenge_ignored", "reason", "the leader orders with -acme, this enclave has none",
               NULL);
    pthread_mutex_unlock(&e->tls_lock);
}

/* -fqdn-leader: the sync listener, then the election in the background. */
static int start_sync(enclave *e)
{
    if (!e->s.fqdn_leader) {
        CL_ENSURE(!e->s.sync_dial.count && !e->s.sync_roots.count && !e->s.sync_allow_pcr0.count &&
                      !e->s.sync_allow_signer &&
                      !e->s.sync_advertise && !e->s.sync_advertise_imds && !e->s.ext_priv_listen,
                  CL_EINVAL, "the -sync-* and -ext-priv-listen options go with -fqdn-leader");
        return CL_OK;
    }
    CL_ENSURE(!e->s.sync_advertise_imds || !strcmp(e->s.sync_advertise_imds, "local-hostname") ||
                  !strcmp(e->s.sync_advertise_imds, "local-ipv4"),
              CL_EINVAL, "-sync-advertise-imds: \"%s\" is neither local-hostname nor local-ipv4", e->s.sync_advertise_imds);
    if (e->s.ext_priv_listen)
        snprintf(e->sync_addr, sizeof e->sync_addr, "%s", e->s.ext_priv_listen);
    else
        snprintf(e->sync_addr, sizeof e->sync_addr, "tcp:0.0.0.0:%u", e->s.ext_priv_port);
    char advertise[300];
    cl_address a;
    int rc = cl_address_parse(e->sync_addr, &a);
    if (rc < 0)
        return cl_error_prefix(rc, "-ext-priv-listen: ");
    if (e->s.sync_advertise)
        snprintf(advertise, sizeof advertise, "%s", e->s.sync_advertise);
    else if (a.kind == CL_ADDR_TCP && strcmp(a.host, "0.0.0.0") && strcmp(a.host, "::"))
        snprintf(advertise, sizeof advertise, strchr(a.host, ':') ? "[%s]:%u" : "%s:%u", a.host, a.port);
    else
        CL_TRY(advertise_from_imds(e, advertise, sizeof advertise));
    cl_sync_config cfg = {
        .leader = e->s.fqdn_leader,
        .port = e->s.ext_priv_port,
        .advertise = advertise,
        .dial = (const char *const *)e->s.sync_dial.items,
        .dial_count = e->s.sync_dial.count,
        .roots = (const char *const *)e->s.sync_roots.items,
        .root_count = e->s.sync_roots.count,
        .allow_pcr0 = (const char *const *)e->s.sync_allow_pcr0.items,
        .allow_pcr0_count = e->s.sync_allow_pcr0.count,
        .allow_same_signer = e->s.sync_allow_signer,
        .nsm = e->nsm,
        .identity = &e->identity,
        .install = install_synced_identity,
        .challenges = take_synced_challenges,
        .install_arg = e,
        .register_interval_ms = e->s.sync_register_ms,
        .heartbeat_ms = e->s.sync_heartbeat_ms,
        .prune_ms = e->s.sync_prune_ms,
    };
    CL_TRY(cl_sync_new(&cfg, &e->sync));
    e->ctx_sync = (listener_ctx){e, LISTENER_SYNC};
    CL_TRY(start_listener(e, "sync", e->sync_addr, &e->ctx_sync, false, &e->sync_server));
    CL_TRY(cl_sync_start(e->sync));
    cl_log(CL_LOG_INFO, "sync_started", "leader", e->s.fqdn_leader, "advertise", advertise, "roots",
           e->s.sync_roots.count ? "--sync-root" : "aws", NULL);
    return CL_OK;
}

/* -acme: a CA-issued certificate becomes the identity of new connections,
 * in a context of its own (as key sync does), with tls-alpn-01 hooked in. */
static int install_acme_identity(void *arg, cl_tls_identity *id)
{
    enclave *e = arg;
    cl_tls_server_options topt = {.enable_h2 = !e->s.disable_http2};
    SSL_CTX *ctx = NULL;
    int rc = cl_tls_server_ctx(id, &topt, &ctx);
    if (rc == CL_OK)
        rc = enclave_acme_hook(e->acme, ctx);
    /* with key sync the workers get it too (only a leader orders) */
    if (rc == CL_OK && e->sync)
        rc = cl_sync_set_identity(e->sync, id);
    if (rc < 0) {
        SSL_CTX_free(ctx);
        cl_tls_identity_free(id);
        return rc;
    }
    pthread_mutex_lock(&e->tls_lock);
    SSL_CTX *old_ctx = e->tls;
    cl_tls_identity old = e->identity;
    e->identity = *id;
    e->tls = ctx;
    pthread_mutex_unlock(&e->tls_lock);
    SSL_CTX_free(old_ctx);
    cl_tls_identity_free(&old);
    return CL_OK;
}

/* Key sync, leader: the CA may validate on any replica behind the
 * balancer, so the pending challenge goes to every worker (sealed in a
 * re-sync) before the CA is told to look; bounded, and a worker that did
 * not take it in time is named in the log. */
#define ACME_PUSH_TIMEOUT_MS 10000u
static void publish_acme_challenge(void *arg, const cl_acme_pending *p)
{
    enclave *e = arg;
    if (!e->sync || cl_sync_get_role(e->sync) != CL_SYNC_LEADER)
        return;
    cl_buf text = CL_BUF_INIT;
    size_t acked = 0, workers = 0;
    int rc = p ? cl_acme_pending_encode(p, 1, &text) : CL_OK;
    if (rc == CL_OK)
        rc = cl_sync_push_challenges(e->sync, text.data, text.len, ACME_PUSH_TIMEOUT_MS, &acked, &workers);
    cl_buf_free(&text);
    char a[16], w[16];
    snprintf(a, sizeof a, "%zu", acked);
    snprintf(w, sizeof w, "%zu", workers);
    if (rc < 0)
        cl_log(CL_LOG_WARN, "acme_challenge_push_failed", "error", cl_error_message(), NULL);
    else
        cl_log(acked == workers ? CL_LOG_INFO : CL_LOG_WARN, p ? "acme_challenge_pushed" : "acme_challenge_withdrawn",
               "type", p ? p->type : "-", "workers", w, "acked", a, NULL);
}

/* With key sync only the leader orders; workers get its certificate. */
static bool acme_may_order(void *arg)
{
    enclave *e = arg;
    return !e->sync || cl_sync_get_role(e->sync) == CL_SYNC_LEADER;
}

static int start_acme(enclave *e)
{
    if (!e->s.acme.acme)
        return CL_OK;
    enclave_acme_env env = {
        .fqdn = e->s.fqdn,
        .enable_h2 = !e->s.disable_http2,
        .install = install_acme_identity,
        .gate = acme_may_order,
        .publish = publish_acme_challenge,
        .arg = e,
    };
    if (e->s.acme.store) {
        cl_kms_setup setup = {
            .region = e->s.kms_region,
            .endpoint = e->s.kms_endpoint,
            .proxy = e->s.kms_proxy,
            .ca_file = e->s.kms_ca_file,
            .imds = e->s.kms_imds,
            .recipient = true,
            .nsm_client = e->nsm,
        };
        int rc = cl_kms_session_open(&setup, &e->acme_kms);
        if (rc < 0)
            return cl_error_prefix(rc, "KMS for --acme-store: ");
        env.kms = e->acme_kms.kms;
        env.credentials = e->acme_kms.credentials;
        env.region = e->acme_kms.region;
    }
    enclave_acme *acme = NULL;
    CL_TRY(enclave_acme_new(&e->s.acme, &env, &acme));
    /* under the lock: a worker's sync may be installing a context now */
    pthread_mutex_lock(&e->tls_lock);
    e->acme = acme;
    int hrc = enclave_acme_hook(e->acme, e->tls);
    pthread_mutex_unlock(&e->tls_lock);
    CL_TRY(hrc);
    return enclave_acme_start(e->acme);
}

/* Under a seccomp filter the app would inherit it (and, with log, fill the
 * kernel's log with its own calls): it is started by the launcher, forked
 * and exec'd now, before the filter, as the user the daemon runs as.  The
 * command and the secrets' environment go to it at exec and nowhere else
 * afterwards. */
static int spawn_launcher(enclave *e, char **env, cl_launcher **out)
{
    char grace[24];
    snprintf(grace, sizeof grace, "%ums", ENCLAVE_APP_STOP_GRACE_MS);
    char *argv[] = {"cloister", "enclave", "launcher", "--stop-grace", grace, "--", e->s.appcmd, NULL};
    /* the binary we run, whatever its path and the user's right to walk it */
    int rc = cl_launcher_spawn("/proc/self/exe", argv, (const char *const *)env, out);
    if (rc < 0)
        return cl_error_prefix(rc, "-appcmd's launcher (this binary, through /proc/self/exe: /proc must be "
                                   "mounted): ");
    char pid[24];
    snprintf(pid, sizeof pid, "%d", (int)cl_launcher_pid(*out));
    cl_log(CL_LOG_INFO, "launcher_started", "pid", pid, "seccomp", e->s.seccomp, NULL);
    return CL_OK;
}

static int start_app(enclave *e)
{
    if (!e->s.appcmd)
        return CL_OK;
    char **env = NULL;
    CL_TRY(secrets_environment(e, &env));
    cl_child_config cc = {.name = "app", .command = e->s.appcmd, .env = env};
    cl_seccomp_mode mode = CL_SECCOMP_OFF;
    if (cl_seccomp_mode_parse(e->s.seccomp, &mode) == CL_OK && mode != CL_SECCOMP_OFF) {
        int rc = spawn_launcher(e, env, &cc.launcher);
        /* the launcher has its copy: ours goes now, not with the app */
        free_environment(env);
        env = NULL;
        cc.env = NULL;
        CL_TRY(rc);
    }
    int rc = cl_child_start(&cc, &e->app_child);
    free_environment(env);
    return rc;
}

/* -user: every listener is bound (but -wait-for-app's public one), lo and
 * tap0 are configured and the NSM is open; nothing later needs root. */
static int drop_to_user(enclave *e)
{
    cl_user_spec u;
    CL_TRY(cl_user_parse(e->s.user, &u));
    CL_TRY(cl_drop_privileges(&u));
    char uid[16], gid[16];
    snprintf(uid, sizeof uid, "%u", (unsigned)u.uid);
    snprintf(gid, sizeof gid, "%u", (unsigned)u.gid);
    cl_log(CL_LOG_INFO, "privileges_dropped", "user", u.name, "uid", uid, "gid", gid, NULL);
    return CL_OK;
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
    e->ctx_health = (listener_ctx){e, LISTENER_HEALTH};
    char addr[64];
    snprintf(addr, sizeof addr, "tcp:127.0.0.1:%u", e->s.intport);
    CL_TRY(start_listener(e, "internal", addr, &e->ctx_internal, false, &e->internal_server));
    if (e->s.prometheus_port || e->s.prometheus_listen) {
        if (!e->s.prometheus_listen)
            snprintf(addr, sizeof addr, "tcp:0.0.0.0:%u", e->s.prometheus_port);
        CL_TRY(start_listener(e, "metrics", e->s.prometheus_listen ? e->s.prometheus_listen : addr, &e->ctx_metrics,
                              false, &e->metrics_server));
    }
    CL_TRY(start_sync(e));
    if (e->s.health_listen)
        CL_TRY(start_listener(e, "health", e->s.health_listen, &e->ctx_health, false, &e->health_server));
    CL_TRY(start_acme(e));
    /* with -user the app starts after the drop, so that it runs as that
     * user from its first start (its restarts could not be root) */
    if (!e->s.user)
        CL_TRY(start_app(e));
    if (!e->s.wait_for_app) {
        pthread_mutex_lock(&e->lock);
        rc = open_public_locked(e);
        pthread_mutex_unlock(&e->lock);
        CL_TRY(rc);
    } else {
        cl_log(CL_LOG_INFO, "waiting_for_app", "hint", "the public listener opens on GET /enclave/ready", NULL);
    }
    if (e->s.user) {
        CL_TRY(drop_to_user(e));
        CL_TRY(start_app(e));
    }
    return CL_OK;
}

static void enclave_stop(enclave *e)
{
    pthread_mutex_lock(&e->lock);
    e->shutting_down = true;
    pthread_mutex_unlock(&e->lock);
    unsigned drain_ms = e->s.drain_timeout * 1000u;
    /* the ACME thread may install a context: stop it before any goes */
    pthread_mutex_lock(&e->tls_lock);
    e->acme_closing = true;
    pthread_mutex_unlock(&e->tls_lock);
    enclave_acme_free(e->acme);
    e->acme = NULL;
    cl_kms_session_close(&e->acme_kms);
    /* the public listener first: its requests in flight may still need the
     * internal listener (secrets, KMS for the app, state), and the balancer
     * the health listener's 503 */
    if (e->public_server) {
        cl_server_drain(e->public_server, drain_ms);
        cl_server_wait(e->public_server);
    }
    cl_sync_shutdown(e->sync); /* long polls on the internal listener end now */
    cl_server *servers[] = {e->internal_server, e->metrics_server, e->sync_server, e->health_server};
    for (size_t i = 0; i < 4; i++)
        if (servers[i])
            cl_server_drain(servers[i], drain_ms);
    for (size_t i = 0; i < 4; i++)
        cl_server_wait(servers[i]);
    e->public_server = e->internal_server = e->metrics_server = e->sync_server = e->health_server = NULL;
    cl_sync_free(e->sync);
    e->sync = NULL;
    for (size_t i = 0; i < e->socket_file_count; i++)
        cl_socket_file_remove(&e->socket_files[i]);
    e->socket_file_count = 0;
    cl_child_stop(e->app_child, ENCLAVE_APP_STOP_GRACE_MS);
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

/* The first phase of a drain: /enclave/health says 503 and every response
 * closes its connection, while the listener still accepts what the load
 * balancer sends until its check has seen the 503.  A second SIGTERM or
 * SIGINT cuts the grace short. */
static void drain_grace(enclave *e, const sigset_t *wanted, int sig)
{
    pthread_mutex_lock(&e->lock);
    e->draining = true;
    bool requested = e->drain_requested;
    cl_server *pub = e->public_server;
    if (pub)
        cl_server_close_connections(pub);
    pthread_mutex_unlock(&e->lock);
    /* the grace is for a balancer to see the 503: without a health
     * listener nobody can, and the drain starts at once */
    unsigned grace_s = e->health_server ? e->s.drain_grace : 0;
    char grace[16], timeout[16];
    snprintf(grace, sizeof grace, "%u", grace_s);
    snprintf(timeout, sizeof timeout, "%u", e->s.drain_timeout);
    cl_log(CL_LOG_INFO, "draining", "signal", sig == SIGTERM ? "SIGTERM" : sig == SIGINT ? "SIGINT" : "-", "by",
           requested ? "POST /enclave/drain" : "signal", "health", "503", "grace_s", grace, "drain_timeout_s", timeout,
           NULL);
    uint64_t end = cl_monotonic_ms() + (uint64_t)grace_s * 1000u;
    for (uint64_t now = cl_monotonic_ms(); now < end; now = cl_monotonic_ms()) {
        struct timespec ts = {.tv_sec = (time_t)((end - now) / 1000), .tv_nsec = (long)((end - now) % 1000) * 1000000L};
        int got = sigtimedwait(wanted, NULL, &ts);
        if (got == SIGTERM || got == SIGINT) {
            cl_log(CL_LOG_INFO, "drain_grace_cut", "signal", got == SIGTERM ? "SIGTERM" : "SIGINT", NULL);
            break;
        }
    }
    cl_log(CL_LOG_INFO, "drain_accepting_stopped", "detail", "requests in flight finish within -drain-timeout",
           NULL);
}

int cmd_enclave(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "launcher"))
        return cmd_enclave_launcher(argc - 1, argv + 1);
    cl_log_set_component("enclave");
    enclave *e = calloc(1, sizeof *e);
    if (!e) {
        fprintf(stderr, "cloister enclave: out of memory\n");
        return EXIT_FAILED;
    }
    pthread_mutex_init(&e->lock, NULL);
    pthread_mutex_init(&e->files_lock, NULL);
    pthread_mutex_init(&e->tls_lock, NULL);
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

    /* before any key or secret exists */
    int rc = cl_harden_process((size_t)e->s.secure_heap_kib * 1024u, e->s.require_locked_memory, &e->hardening);
    if (rc == CL_OK)
        rc = enclave_start(e);
    cl_seccomp_mode mode = CL_SECCOMP_OFF;
    if (rc == CL_OK && cl_seccomp_mode_parse(e->s.seccomp, &mode) == CL_OK && mode != CL_SECCOMP_OFF) {
        rc = cl_syscall_filter_install(mode);
        if (rc == CL_OK) {
            char n[16];
            snprintf(n, sizeof n, "%zu", cl_syscall_filter_size());
            cl_log(CL_LOG_INFO, "seccomp_installed", "mode", cl_seccomp_mode_name(mode), "syscalls", n, NULL);
        }
    }
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
    drain_grace(e, &wanted, sig);
    enclave_stop(e);
    cl_log(CL_LOG_INFO, "stopped", NULL);
    settings_free(&e->s);
    pthread_mutex_destroy(&e->lock);
    pthread_mutex_destroy(&e->files_lock);
    pthread_mutex_destroy(&e->tls_lock);
    free(e);
    return 0;
}

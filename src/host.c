/* cloister host: the parent instance's side of an enclave.  Inbound
 * forwards (tcp -> vsock), outbound proxies for the enclave (vsock -> a DNS
 * name, with vsock-proxy's allowlist), and the enclave's IMDS gate. */
#include "cloister/host/allowlist.h"
#include "cloister/host/dns.h"
#include "cloister/core/encoding.h"
#include "cloister/host/host.h"
#include "cloister/core/imds_policy.h"
#include "cloister/core/log.h"
#include "cloister/core/options.h"
#include "cloister/host/sd_notify.h"
#include "cloister/host/watchdog.h"
#include "commands.h"
#include "host_tap.h"

#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_IMDS_ENDPOINT "http://169.254.169.254"
#define VSOCK_PROXY_CID 3 /* the parent instance, where vsock-proxy listens */
/* AWS's vsock-proxy returns its errors from main() (Rust: exit status 1):
 * every failure after its command-line parser (clap: exit 2) is a 1 */
#define EXIT_VSOCK_PROXY 1
#define PROXY_PROTOCOL_SUFFIX ",proxy-protocol"
#define HEALTH_SUFFIX ",health"

/* ---- settings ------------------------------------------------------------------------ */

typedef struct settings {
    cl_opt_list forward, outbound;
    char *imds, *imds_endpoint, *allowlist, *config, *dns_server;
    bool proxy_protocol, ipv4, ipv6, no_splice, debug;
    unsigned resolve_interval, idle_timeout, connect_timeout, max_connections, workers;
    unsigned drain_grace_ms, drain_timeout_ms;
    /* vsock-proxy form only */
    char *listen;
    unsigned num_workers;
    bool version;
    /* the enclave to keep alive (main form only): cloister watchdog's options */
    cl_watchdog_settings wd;
} settings;

/* The main form's own options. */
static const cl_opt main_options[] = {
    {.name = "forward", CL_OPT_LIST_AT(settings, forward, 0), .flags = CL_OPT_NONEMPTY,
     .arg = "LISTEN=DEST[,proxy-protocol]", .help = "forward connections on LISTEN to DEST (repeatable)"},
    {.name = "outbound", CL_OPT_LIST_AT(settings, outbound, 0), .flags = CL_OPT_NONEMPTY, .arg = "LISTEN=HOST:PORT",
     .help = "the enclave's proxy to a name or IP (repeatable)"},
    {.name = "allowlist", CL_OPT_STR(settings, allowlist), .arg = "FILE",
     .help = "vsock-proxy's YAML; --outbound must match it"},
    {.name = "imds", CL_OPT_STR(settings, imds), .arg = "LISTEN", .help = "gate the enclave's IMDSv2 calls"},
    {.name = "imds-endpoint", CL_OPT_STR(settings, imds_endpoint), .arg = "URL",
     .help = "http://HOST[:PORT] (" DEFAULT_IMDS_ENDPOINT ")"},
    {.name = "proxy-protocol", CL_OPT_FLAG(settings, proxy_protocol),
     .help = "PROXY protocol v2 header on every --forward"},
    {.name = "config", CL_OPT_CONFIG_AT(settings, config), .arg = "FILE", .help = "JSON settings (below)"},
    {.name = "drain-grace", CL_OPT_DURATION_AT(settings, drain_grace_ms, 1, 0, 3600000), .def = "5s",
     .arg = "DURATION",
     .help = "on SIGTERM, first this long: ',health' forwards answer 503 (the load balancer takes this replica "
             "out) while the others still forward new connections"},
    {.name = "drain-timeout", CL_OPT_DURATION_AT(settings, drain_timeout_ms, 1, 0, 3600000), .def = "30s",
     .arg = "DURATION",
     .help = "then no new connections; the open ones (and the enclave's drain) have this long to end"},
};

/* Both forms'. */
static const cl_opt common_options[] = {
    {.name = "ipv4", .short_name = '4', CL_OPT_FLAG(settings, ipv4), .help = "use only IPv4 addresses of DNS names"},
    {.name = "ipv6", .short_name = '6', CL_OPT_FLAG(settings, ipv6), .help = "use only IPv6 addresses of DNS names"},
    {.name = "resolve-interval", CL_OPT_UINT_AT(settings, resolve_interval, 1, 86400), .def = "60",
     .arg = "SECONDS", .help = "resolve DNS names again after their TTL, at most after"},
    {.name = "dns-server", CL_OPT_STR(settings, dns_server), .arg = "IP[:PORT]",
     .help = "ask this DNS server instead of /etc/resolv.conf's"},
    {.name = "idle-timeout", CL_OPT_UINT_AT(settings, idle_timeout, 1, 7 * 86400), .def = "600",
     .arg = "SECONDS", .help = "close connections idle this long"},
    {.name = "connect-timeout", CL_OPT_UINT_AT(settings, connect_timeout, 1, 3600), .def = "10",
     .arg = "SECONDS", .help = "to reach a destination, all addresses"},
    {.name = "max-connections", CL_OPT_UINT_AT(settings, max_connections, 1, 10000000), .def = "20000", .arg = "N",
     .help = "open connections at most"},
    {.name = "workers", CL_OPT_UINT_AT(settings, workers, 0, CL_HOST_MAX_WORKERS), .arg = "N",
     .help = "event-loop processes (0: one per core)"},
    {.name = "no-splice", CL_OPT_FLAG(settings, no_splice), .help = "read()/write() instead of splice()"},
    {.name = "debug", CL_OPT_FLAG(settings, debug), .help = "log every connection (debug level)"},
};

/* vsock-proxy's own (aws-nitro-enclaves-cli's spellings). */
static const cl_opt vsock_proxy_options[] = {
    {.name = "config", CL_OPT_STR(settings, config), .arg = "FILE",
     .help = "the allowlist (default " CL_ALLOWLIST_DEFAULT_PATH ")"},
    {.name = "listen", CL_OPT_STR(settings, listen), .arg = "ADDR",
     .help = "listen on ADDR instead of vsock:3:LOCAL_PORT (e.g. unix:PATH for local tests)"},
    /* accepted and ignored: one event loop per core serves any number of connections */
    {.name = "num_workers", .short_name = 'w', CL_OPT_UINT_AT(settings, num_workers, 1, 1000000), .arg = "N"},
    {.name = "version", .short_name = 'V', CL_OPT_FLAG(settings, version), .help = "print the version"},
};

enum { SECTION_MAIN, SECTION_COMMON, SECTION_ENCLAVE, SECTION_TAP };

static const char main_usage[] =
    "usage: cloister host [OPTIONS]\n"
    "       cloister host vsock-proxy [-4|-6] [--config FILE] [-w N] [--listen ADDR] [OPTIONS]\n"
    "                                 LOCAL_PORT REMOTE_ADDR REMOTE_PORT (see its --help)\n"
    "       cloister host acm --bundle FILE|URL --token LABEL --provision ADDR [...] (see its --help)\n"
    "       cloister host file-store --listen ADDR --dir DIR (the enclave's ACME store file:DIR)\n\n"
    "The parent instance's side of an enclave: forwards connections into it, proxies its\n"
    "connections out to allowed services, and gates its instance metadata calls.\n"
    "Addresses are vsock:CID:PORT, unix:PATH or tcp:HOST:PORT ([v6] in brackets).\n\n";

/* The main form's text after the options, with the IMDS calls the gate
 * allows (malloc'd; NULL when out of memory). */
static char *main_epilog(void)
{
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    if (!out)
        return NULL;
    fprintf(out,
            "--forward LISTEN=DEST: any address kinds on either side, e.g.\n"
            "  --forward tcp:0.0.0.0:443=vsock:16:443            clients to the enclave\n"
            "  --forward tcp:127.0.0.1:8443=unix:/run/x.sock,proxy-protocol\n"
            "  With ',proxy-protocol' (or --proxy-protocol for all) DEST first receives a PROXY\n"
            "  protocol v2 header with the client's address (IPv4/IPv6/unix; vsock as UNSPEC).\n"
            "  With ',health' it carries a load balancer's health check (e.g. to cloister enclave\n"
            "  -health-listen): on SIGTERM it answers 503 itself for --drain-grace, then the\n"
            "  listeners close and open connections get --drain-timeout to end.\n"
            "--outbound LISTEN=HOST:PORT, e.g. --outbound vsock:3:8000=kms.us-east-1.amazonaws.com:443\n"
            "  HOST is resolved at start (failure stops the start) and again when its DNS TTL has\n"
            "  passed (at least 1 s, at most --resolve-interval; names from /etc/hosts and\n"
            "  answers without a TTL: every --resolve-interval), logged as event=resolved with\n"
            "  the TTL (at debug when the answer is unchanged); on failure the previous\n"
            "  addresses stay.  A then AAAA answers, tried in that order by connections.\n"
            "--imds LISTEN: an HTTP/1.1 gate, one request per connection, to --imds-endpoint,\n"
            "  allowing exactly these calls (others get 403, bodies 400):\n");
    const char *calls = cl_imds_allowed_calls();
    for (const char *p = calls; *p;) {
        const char *nl = strchr(p, '\n');
        if (!nl)
            nl = p + strlen(p);
        fprintf(out, "    %.*s\n", (int)(nl - p), p);
        p = *nl ? nl + 1 : nl;
    }
    fprintf(out,
            "  ROLE: an IAM role name.  Forwarded headers: X-aws-ec2-metadata-token(-ttl-seconds),\n"
            "  User-Agent, Accept, X-Forwarded-For.  No X-Forwarded-For is added (IMDS refuses a\n"
            "  token PUT that has one).\n\n"
            "--config FILE: a JSON object whose keys are the long option names, e.g.\n"
            "  {\"forward\": [\"tcp:0.0.0.0:443=vsock:16:443,proxy-protocol\"],\n"
            "   \"outbound\": \"vsock:3:8000=kms.us-east-1.amazonaws.com:443\",\n"
            "   \"imds\": \"vsock:3:8002\", \"idle-timeout\": 300, \"debug\": false}\n"
            "  Repeatable options take a string or an array of strings; flags given on the\n"
            "  command line override the file's values and add to its lists.\n"
            "  The enclave's settings are keys too: {\"enclave-command\": \"...\", \"health-connect\": ...}.\n\n"
            "With --run-enclave-eif (nitro-cli) or --enclave-command (a local stand-in), the host\n"
            "also owns the enclave's life: it starts it, health-checks it, restarts it with\n"
            "backoff within a budget and terminates it on SIGTERM; with $NOTIFY_SOCKET it sends\n"
            "READY=1 once the enclave is first healthy (without an enclave: once the proxies\n"
            "accept).  If the watchdog gives up, the host stops too (exit status 3).\n\n"
            "Logs: key=value lines on stderr; start, stop and changed DNS answers at info,\n"
            "refusals at warn, every connection and unchanged DNS answers at debug.\n"
            "SIGTERM or SIGINT: stop accepting, close, exit 0.\n"
            "Exit status: 0 stopped by a signal, 1 a destination is not allowlisted, 2 bad\n"
            "command line or configuration, 3 could not start (listen, resolve, ...) or the\n"
            "enclave's restart budget was exhausted.\n");
    if (fclose(out) != 0) {
        free(text);
        return NULL;
    }
    return text;
}

static const char vsock_proxy_usage[] =
    "usage: cloister host vsock-proxy [-4|-6] [--config FILE] [-w N] [--listen ADDR] [OPTIONS]\n"
    "                                 LOCAL_PORT REMOTE_ADDR REMOTE_PORT\n\n"
    "A drop-in for aws-nitro-enclaves-cli's vsock-proxy.  Listens on vsock:3:LOCAL_PORT\n"
    "(--listen ADDR overrides it) and forwards to REMOTE_ADDR:REMOTE_PORT, which must match\n"
    "the allowlist in --config: an entry's port equals REMOTE_PORT and its address equals\n"
    "REMOTE_ADDR (byte for byte, as vsock-proxy compares) or resolves to REMOTE_ADDR's address;\n"
    "otherwise it refuses to start.  Keys of the YAML other than allowlist, address and port\n"
    "are ignored, as vsock-proxy ignores them.  -w/--num_workers is accepted and ignored (one event loop per\n"
    "core serves any number of connections).  DNS names are resolved again when their TTL has\n"
    "passed, as in cloister host's main form.\n\n";

static const char vsock_proxy_epilog[] =
    "Logs: key=value lines on stderr.  SIGTERM or SIGINT: stop accepting, close, exit 0.\n"
    "Exit status as vsock-proxy's: 2 for an unknown option or missing argument, 1 for every\n"
    "other error (a bad port or -w value, the allowlist, a refusal, cannot listen); 0 after\n"
    "SIGTERM or SIGINT.\n";

/* ---- building routes --------------------------------------------------------------------- */

static bool has_scheme(const char *s)
{
    return !strncmp(s, "tcp:", 4) || !strncmp(s, "unix:", 5) || !strncmp(s, "vsock:", 6);
}

static int parse_forward(const char *text, bool all_proxy, cl_host_route *r)
{
    memset(r, 0, sizeof *r);
    r->kind = CL_ROUTE_FORWARD;
    size_t len = strlen(text);
    size_t suffix = strlen(PROXY_PROTOCOL_SUFFIX);
    char *copy = strdup(text);
    CL_ENSURE(copy, CL_ENOMEM, "out of memory");
    int rc = CL_OK;
    if (len > suffix && !strcmp(copy + len - suffix, PROXY_PROTOCOL_SUFFIX)) {
        copy[len - suffix] = '\0';
        r->proxy_protocol = true;
    } else if (len > strlen(HEALTH_SUFFIX) && !strcmp(copy + len - strlen(HEALTH_SUFFIX), HEALTH_SUFFIX)) {
        copy[len - strlen(HEALTH_SUFFIX)] = '\0';
        r->health = true;
    } else if (strchr(text, ',') && strrchr(text, ',') > strrchr(text, '=')) {
        CL_FAIL_OUT(CL_EINVAL, "--forward %s: unknown option '%s' (only ',proxy-protocol' or ',health')", text,
                    strrchr(text, ',') + 1);
    }
    /* a health check is plain HTTP from the balancer: no header before it */
    r->proxy_protocol |= all_proxy && !r->health;
    /* the '=' after which an address starts: unix paths may hold '=' too */
    char *eq = NULL;
    for (char *p = strchr(copy, '='); p; p = strchr(p + 1, '='))
        if (has_scheme(p + 1)) {
            eq = p;
            break;
        }
    if (!eq)
        CL_FAIL_OUT(CL_EINVAL, "--forward %s: expected LISTEN=DEST, both addresses (vsock:CID:PORT, unix:PATH, "
                               "tcp:HOST:PORT)",
                    text);
    *eq = '\0';
    rc = cl_address_parse(copy, &r->listen);
    if (rc < 0) {
        cl_error_prefix(rc, "--forward %s: listen address: ", text);
        goto out;
    }
    rc = cl_address_parse(eq + 1, &r->dest);
    if (rc < 0) {
        cl_error_prefix(rc, "--forward %s: destination: ", text);
        goto out;
    }
    if (r->dest.kind == CL_ADDR_TCP && r->dest.port == 0)
        CL_FAIL_OUT(CL_EINVAL, "--forward %s: the destination needs a port other than 0", text);
out:
    free(copy);
    return rc;
}

/* HOST:PORT (or tcp:HOST:PORT) as a tcp address. */
static int parse_host_port(const char *text, const char *what, cl_address *out)
{
    char buf[CL_ADDRESS_HOST_MAX + 16];
    int n = snprintf(buf, sizeof buf, "%s%s", strncmp(text, "tcp:", 4) ? "tcp:" : "", text);
    CL_ENSURE(n > 0 && (size_t)n < sizeof buf, CL_EINVAL, "%s: '%s' is too long", what, text);
    int rc = cl_address_parse(buf, out);
    if (rc < 0)
        return cl_error_prefix(rc, "%s: expected HOST:PORT: ", what);
    CL_ENSURE(out->port != 0, CL_EINVAL, "%s: the port must not be 0", what);
    return CL_OK;
}

static int parse_outbound(const char *text, cl_host_route *r)
{
    memset(r, 0, sizeof *r);
    r->kind = CL_ROUTE_OUTBOUND;
    const char *eq = strrchr(text, '=');
    CL_ENSURE(eq && eq != text, CL_EINVAL, "--outbound %s: expected LISTEN=HOST:PORT", text);
    char *listen = strndup(text, (size_t)(eq - text));
    CL_ENSURE(listen, CL_ENOMEM, "out of memory");
    int rc = cl_address_parse(listen, &r->listen);
    free(listen);
    if (rc < 0)
        return cl_error_prefix(rc, "--outbound %s: listen address: ", text);
    char what[64];
    snprintf(what, sizeof what, "--outbound destination");
    rc = parse_host_port(eq + 1, what, &r->dest);
    if (rc < 0)
        return cl_error_prefix(rc, "--outbound %s: ", text);
    return CL_OK;
}

static int parse_imds_endpoint(const char *url, cl_address *out)
{
    CL_ENSURE(!strncmp(url, "http://", 7), CL_EINVAL,
              "--imds-endpoint %s: expected http://HOST[:PORT] (IMDS speaks plain HTTP)", url);
    const char *hp = url + 7;
    size_t n = strlen(hp);
    if (n && hp[n - 1] == '/')
        n--;
    CL_ENSURE(n > 0 && !memchr(hp, '/', n), CL_EINVAL, "--imds-endpoint %s: expected http://HOST[:PORT] without a path",
              url);
    char host_port[CL_ADDRESS_HOST_MAX + 16];
    CL_ENSURE(n + 4 < sizeof host_port, CL_EINVAL, "--imds-endpoint %s: too long", url);
    memcpy(host_port, hp, n);
    host_port[n] = '\0';
    /* a port is there when the last ':' is after any ']' */
    const char *colon = strrchr(host_port, ':');
    const char *bracket = strrchr(host_port, ']');
    bool has_port = colon && (!bracket || colon > bracket) && (host_port[0] == '[' || strchr(host_port, ':') == colon);
    if (!has_port)
        strcat(host_port, ":80");
    return parse_host_port(host_port, "--imds-endpoint", out);
}

/* ---- the allowlist ------------------------------------------------------------------------ */

static int resolve_for_allowlist(void *ctx, const char *host, struct sockaddr_storage *addrs, size_t max, size_t *n)
{
    int family = *(int *)ctx;
    socklen_t lens[CL_HOST_MAX_ADDRS];
    if (max > CL_HOST_MAX_ADDRS)
        max = CL_HOST_MAX_ADDRS;
    return cl_host_resolve(host, 0, family, addrs, lens, max, n);
}

/* 0, EXIT_REJECTED or EXIT_FAILED (after printing why). */
static int check_allowlist(const char *me, const cl_allowlist *a, const cl_address *dest, int family,
                           const char *dns_server)
{
    cl_dns_result r;
    const struct sockaddr_storage *addrs = r.addrs;
    char port[8];
    snprintf(port, sizeof port, "%u", dest->port);
    if (cl_dns_resolve(dest->host, dest->port, family, dns_server, &r) < 0) {
        fprintf(stderr, "%s: cannot check %s against the allowlist: %s\n", me, dest->host, cl_error_message());
        return EXIT_FAILED;
    }
    const cl_allow_entry *m;
    int fam = family;
    if (cl_allowlist_check(a, dest->host, (uint16_t)dest->port, (const struct sockaddr *)&addrs[0],
                           resolve_for_allowlist, &fam, &m) < 0) {
        cl_log(CL_LOG_WARN, "refused", "dest", dest->host, "port", port, "reason", "not in the allowlist", "detail",
               cl_error_message(), NULL);
        fprintf(stderr, "%s: refusing to start: %s\n", me, cl_error_message());
        return EXIT_REJECTED;
    }
    char line[16], entry[CL_ALLOWLIST_ADDRESS_MAX + 8];
    snprintf(line, sizeof line, "%u", m->line);
    snprintf(entry, sizeof entry, "%s:%u", m->address, m->port);
    cl_log(CL_LOG_INFO, "allowed", "dest", dest->host, "port", port, "entry", entry, "line", line, NULL);
    return 0;
}

/* ---- running -------------------------------------------------------------------------------- */

static void init_logging(const settings *s)
{
    cl_log_set_component("host");
    cl_log_set_level(s->debug ? CL_LOG_DEBUG : CL_LOG_INFO);
}

/* allow: checked against every resolution of an outbound name, or NULL */
static int run(const char *me, const settings *s, cl_host_route *routes, size_t count, const cl_allowlist *allow)
{
    cl_host_config cfg = {
        .routes = routes,
        .route_count = count,
        .family = s->ipv4 ? AF_INET : s->ipv6 ? AF_INET6 : AF_UNSPEC,
        .workers = s->workers,
        .max_connections = s->max_connections,
        .idle_timeout_s = s->idle_timeout,
        .connect_timeout_s = s->connect_timeout,
        .resolve_interval_s = s->resolve_interval,
        .no_splice = s->no_splice,
        .dns_server = s->dns_server,
        .allowlist = allow,
        .watchdog = cl_watchdog_settings_active(&s->wd) ? &s->wd.config : NULL,
        .drain_grace_ms = s->drain_grace_ms,
        .drain_timeout_ms = s->drain_timeout_ms,
    };
    if (cl_host_run(&cfg) < 0) {
        fprintf(stderr, "%s: %s\n", me, cl_error_message());
        return EXIT_FAILED;
    }
    return 0;
}

static int cmd_vsock_proxy(int argc, char **argv)
{
    const char *me = "cloister host vsock-proxy";
    settings s;
    memset(&s, 0, sizeof s);
    cl_opt_section sections[] = {CL_OPT_SECTION("options", common_options, &s),
                                 CL_OPT_SECTION(NULL, vsock_proxy_options, &s)};
    cl_options spec = {.prog = me,
                       .usage = vsock_proxy_usage,
                       .epilog = vsock_proxy_epilog,
                       .positional = "LOCAL_PORT REMOTE_ADDR REMOTE_PORT",
                       .max_positional = 3,
                       .sections = sections,
                       .section_count = sizeof sections / sizeof sections[0]};
    cl_allowlist allow = {0};
    cl_host_route route;
    memset(&route, 0, sizeof route);
    cl_options_result r;
    int status = cl_options_main(&spec, argc, argv, &r);
    if (status != 0) {
        /* as vsock-proxy (clap): 2 for the command line's shape, 1 for a value it refuses */
        status = status > 0 ? 0 : r.bad_value ? EXIT_VSOCK_PROXY : EXIT_USAGE;
        goto out;
    }
    if (s.version) {
        printf("cloister host vsock-proxy %s (a drop-in for aws-nitro-enclaves-cli's vsock-proxy)\n", CLOISTER_VERSION);
        status = 0;
        goto out;
    }
    status = EXIT_USAGE;
    if (s.ipv4 && s.ipv6) {
        fprintf(stderr, "%s: -4/--ipv4 and -6/--ipv6 exclude each other\n", me);
        goto out;
    }
    init_logging(&s);
    if (r.positional_count != 3) {
        fprintf(stderr, "%s: expected LOCAL_PORT REMOTE_ADDR REMOTE_PORT (see --help)\n", me);
        goto out;
    }
    char **pos = r.positional;
    status = EXIT_VSOCK_PROXY;
    uint64_t local_port, remote_port;
    if (cl_parse_u64(pos[0], UINT32_MAX, &local_port) < 0) {
        fprintf(stderr, "%s: LOCAL_PORT: %s\n", me, cl_error_message());
        goto out;
    }
    if (cl_parse_u64(pos[2], 65535, &remote_port) < 0 || remote_port == 0) {
        fprintf(stderr, "%s: REMOTE_PORT must be a TCP port from 1 to 65535, got '%s'\n", me, pos[2]);
        goto out;
    }
    route.kind = CL_ROUTE_OUTBOUND;
    char dest[CL_ADDRESS_HOST_MAX + 16];
    snprintf(dest, sizeof dest, strchr(pos[1], ':') ? "[%s]:%u" : "%s:%u", pos[1], (unsigned)remote_port);
    if (parse_host_port(dest, "REMOTE_ADDR", &route.dest) < 0) {
        fprintf(stderr, "%s: %s\n", me, cl_error_message());
        goto out;
    }
    if (s.listen) {
        if (cl_address_parse(s.listen, &route.listen) < 0) {
            fprintf(stderr, "%s: --listen: %s\n", me, cl_error_message());
            goto out;
        }
    } else {
        route.listen.kind = CL_ADDR_VSOCK;
        route.listen.cid = VSOCK_PROXY_CID;
        route.listen.port = (uint32_t)local_port;
    }
    if (s.num_workers) {
        char n[16];
        snprintf(n, sizeof n, "%u", s.num_workers);
        cl_log(CL_LOG_DEBUG, "option-ignored", "option", "num_workers", "value", n, "detail",
               "connections are not limited to a worker pool", NULL);
    }
    const char *path = s.config ? s.config : CL_ALLOWLIST_DEFAULT_PATH;
    if (cl_allowlist_load(path, &allow) < 0) {
        fprintf(stderr, "%s: cannot use the allowlist: %s%s\n", me, cl_error_message(),
                s.config ? "" : " (give one with --config FILE)");
        goto out;
    }
    status = check_allowlist(me, &allow, &route.dest, s.ipv4 ? AF_INET : s.ipv6 ? AF_INET6 : AF_UNSPEC,
                             s.dns_server);
    if (status == 0)
        status = run(me, &s, &route, 1, &allow);
    if (status != 0)
        status = EXIT_VSOCK_PROXY;
out:
    cl_allowlist_free(&allow);
    cl_options_free(&spec, &r);
    return status;
}

int cmd_host(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "vsock-proxy"))
        return cmd_vsock_proxy(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "acm"))
        return cmd_host_acm(argc - 1, argv + 1); /* host_acm.c */
    if (argc >= 2 && !strcmp(argv[1], "file-store"))
        return cmd_host_file_store(argc - 1, argv + 1); /* host_file_store.c */
    const char *me = "cloister host";
    cl_sd_notify_detach_env(); /* before any thread, and not for the enclave's processes */
    settings s;
    memset(&s, 0, sizeof s);
    host_tap_settings ts; /* host_tap.c */
    memset(&ts, 0, sizeof ts);
    cl_tap_bridge *tap = NULL;
    cl_opt_section sections[] = {
        [SECTION_MAIN] = CL_OPT_SECTION("options", main_options, &s),
        [SECTION_COMMON] = CL_OPT_SECTION(NULL, common_options, &s),
        [SECTION_ENCLAVE] = {"the enclave's life (as cloister watchdog, which explains them)", NULL, 0, &s.wd},
        [SECTION_TAP] = {"the enclave's TAP network (docs/tap.md)", NULL, 0, &ts},
    };
    sections[SECTION_ENCLAVE].opts = cl_watchdog_options(&sections[SECTION_ENCLAVE].count);
    sections[SECTION_TAP].opts = host_tap_options(&sections[SECTION_TAP].count);
    char *epilog = main_epilog(); /* NULL: --help without it */
    cl_options spec = {.prog = me,
                       .usage = main_usage,
                       .epilog = epilog,
                       .sections = sections,
                       .section_count = sizeof sections / sizeof sections[0]};
    cl_host_route *routes = NULL;
    size_t count = 0;
    cl_allowlist allow = {0};
    cl_options_result r;
    int status = cl_options_main(&spec, argc, argv, &r);
    bool wd_given = status == 0 && cl_options_section_given(&spec, &r, SECTION_ENCLAVE);
    free(epilog);
    if (status != 0) {
        status = status > 0 ? 0 : EXIT_USAGE;
        goto out;
    }
    status = EXIT_USAGE;
    if (s.ipv4 && s.ipv6) {
        fprintf(stderr, "%s: -4/--ipv4 and -6/--ipv6 exclude each other\n", me);
        goto out;
    }
    init_logging(&s);
    size_t total = s.forward.count + s.outbound.count + (s.imds ? 1 : 0) + (s.imds && ts.listen ? 1 : 0);
    bool enclave = cl_watchdog_settings_active(&s.wd);
    if (wd_given && !enclave) {
        fprintf(stderr, "%s: the enclave's options need --run-enclave-eif PATH or --enclave-command CMD\n", me);
        goto out;
    }
    if (enclave && cl_watchdog_settings_check(&s.wd) < 0) {
        fprintf(stderr, "%s: %s (see --help)\n", me, cl_error_message());
        goto out;
    }
    if (total == 0 && !enclave && !ts.listen) {
        fprintf(stderr, "%s: nothing to do: give --forward, --outbound, --imds, --tap or an enclave to run (see --help)\n",
                me);
        goto out;
    }
    if (!ts.listen && (ts.forward.count || cl_options_section_given(&spec, &r, SECTION_TAP))) {
        fprintf(stderr, "%s: the --tap-* options need --tap LISTEN\n", me);
        goto out;
    }
    if (s.dns_server && cl_dns_server_check(s.dns_server) < 0) {
        fprintf(stderr, "%s: --dns-server: %s\n", me, cl_error_message());
        goto out;
    }
    if (s.imds_endpoint && !s.imds) {
        fprintf(stderr, "%s: --imds-endpoint needs --imds LISTEN\n", me);
        goto out;
    }
    if (s.allowlist && !s.outbound.count) {
        fprintf(stderr, "%s: --allowlist applies to --outbound, and none is given\n", me);
        goto out;
    }
    routes = calloc(total ? total : 1, sizeof *routes);
    if (!routes) {
        fprintf(stderr, "%s: out of memory\n", me);
        status = EXIT_FAILED;
        goto out;
    }
    for (size_t i = 0; i < s.forward.count; i++)
        if (parse_forward(s.forward.items[i], s.proxy_protocol, &routes[count++]) < 0) {
            fprintf(stderr, "%s: %s\n", me, cl_error_message());
            goto out;
        }
    for (size_t i = 0; i < s.outbound.count; i++)
        if (parse_outbound(s.outbound.items[i], &routes[count++]) < 0) {
            fprintf(stderr, "%s: %s\n", me, cl_error_message());
            goto out;
        }
    if (s.imds) {
        cl_host_route *r = &routes[count++];
        r->kind = CL_ROUTE_IMDS;
        if (cl_address_parse(s.imds, &r->listen) < 0) {
            fprintf(stderr, "%s: --imds: %s\n", me, cl_error_message());
            goto out;
        }
        if (parse_imds_endpoint(s.imds_endpoint ? s.imds_endpoint : DEFAULT_IMDS_ENDPOINT, &r->dest) < 0) {
            fprintf(stderr, "%s: %s\n", me, cl_error_message());
            goto out;
        }
    }
    cl_tap_config tap_cfg;
    if (ts.listen) {
        cl_host_route *gate = s.imds ? &routes[count] : NULL; /* the gate on the gateway address too */
        if (host_tap_config(&ts, gate != NULL, s.dns_server, &tap_cfg, gate ? &gate->listen : NULL) < 0) {
            fprintf(stderr, "%s: %s\n", me, cl_error_message());
            goto out;
        }
        if (gate) {
            gate->kind = CL_ROUTE_IMDS;
            gate->dest = routes[count - 1].dest;
            count++;
        }
    }
    /* two routes on one listen address would fail late and obscurely */
    for (size_t i = 0; i < count; i++)
        for (size_t k = i + 1; k < count; k++) {
            char a[CL_ADDRESS_PATH_MAX + 16], b[CL_ADDRESS_PATH_MAX + 16];
            cl_address_format(&routes[i].listen, a, sizeof a);
            cl_address_format(&routes[k].listen, b, sizeof b);
            if (!strcmp(a, b)) {
                fprintf(stderr, "%s: %s is the listen address of two routes\n", me, a);
                goto out;
            }
        }
    if (s.allowlist) {
        if (cl_allowlist_load(s.allowlist, &allow) < 0) {
            fprintf(stderr, "%s: --allowlist: %s\n", me, cl_error_message());
            goto out;
        }
        for (size_t i = 0; i < count; i++) {
            if (routes[i].kind != CL_ROUTE_OUTBOUND)
                continue;
            status = check_allowlist(me, &allow, &routes[i].dest, s.ipv4 ? AF_INET : s.ipv6 ? AF_INET6 : AF_UNSPEC,
                                     s.dns_server);
            if (status != 0)
                goto out;
        }
    }
    if (ts.listen && cl_tap_bridge_open(&tap_cfg, &tap) < 0) {
        fprintf(stderr, "%s: --tap: %s\n", me, cl_error_message());
        status = EXIT_FAILED;
        goto out;
    }
    if (count == 0 && !enclave) { /* the TAP bridge alone */
        status = cl_tap_bridge_wait(tap) < 0 ? EXIT_FAILED : 0;
        if (status)
            fprintf(stderr, "%s: %s\n", me, cl_error_message());
    } else {
        status = run(me, &s, routes, count, s.allowlist ? &allow : NULL);
    }
out:
    cl_tap_bridge_close(tap);
    cl_allowlist_free(&allow);
    free(routes);
    cl_options_free(&spec, &r);
    cl_watchdog_settings_free(&s.wd);
    return status;
}

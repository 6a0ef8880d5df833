/* cloister host: the parent instance's side of an enclave.  Inbound
 * forwards (tcp -> vsock), outbound proxies for the enclave (vsock -> a DNS
 * name, with vsock-proxy's allowlist), and the enclave's IMDS gate. */
#include "cloister/host/allowlist.h"
#include "cloister/host/dns.h"
#include "cloister/core/encoding.h"
#include "cloister/host/host.h"
#include "cloister/core/imds_policy.h"
#include "cloister/core/log.h"
#include "cloister/host/sd_notify.h"
#include "cloister/host/watchdog.h"
#include "commands.h"

#include <arpa/inet.h>
#include <jansson.h>
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

/* ---- settings ------------------------------------------------------------------------ */

typedef struct list {
    char **items;
    size_t count;
} list;

typedef struct settings {
    list forward, outbound;
    char *imds, *imds_endpoint, *allowlist, *config, *dns_server;
    bool proxy_protocol, ipv4, ipv6, no_splice, debug;
    unsigned resolve_interval, idle_timeout, connect_timeout, max_connections, workers;
    /* vsock-proxy form only */
    char *listen;
    unsigned num_workers;
    /* the enclave to keep alive (main form only): cloister watchdog's flags */
    cl_watchdog_settings wd;
    bool wd_given;
} settings;

enum opt_type { OPT_STRING, OPT_UINT, OPT_BOOL, OPT_LIST };

typedef struct option_spec {
    const char *name;
    char short_name;
    int type;
    size_t offset;
    unsigned min, max; /* OPT_UINT */
    bool vsock_proxy;  /* also accepted in the vsock-proxy form */
    const char *arg, *help;
} option_spec;

#define S(field) offsetof(settings, field)

static const option_spec option_specs[] = {
    {"forward", 0, OPT_LIST, S(forward), 0, 0, false, "LISTEN=DEST[,proxy-protocol]",
     "forward connections on LISTEN to DEST (repeatable)"},
    {"outbound", 0, OPT_LIST, S(outbound), 0, 0, false, "LISTEN=HOST:PORT",
     "the enclave's proxy to a name or IP (repeatable)"},
    {"allowlist", 0, OPT_STRING, S(allowlist), 0, 0, false, "FILE",
     "vsock-proxy's YAML; --outbound must match it"},
    {"imds", 0, OPT_STRING, S(imds), 0, 0, false, "LISTEN", "gate the enclave's IMDSv2 calls"},
    {"imds-endpoint", 0, OPT_STRING, S(imds_endpoint), 0, 0, false, "URL",
     "http://HOST[:PORT] (" DEFAULT_IMDS_ENDPOINT ")"},
    {"proxy-protocol", 0, OPT_BOOL, S(proxy_protocol), 0, 0, false, NULL,
     "PROXY protocol v2 header on every --forward"},
    {"ipv4", '4', OPT_BOOL, S(ipv4), 0, 0, true, NULL, "use only IPv4 addresses of DNS names"},
    {"ipv6", '6', OPT_BOOL, S(ipv6), 0, 0, true, NULL, "use only IPv6 addresses of DNS names"},
    {"resolve-interval", 0, OPT_UINT, S(resolve_interval), 1, 86400, true, "SECONDS",
     "resolve DNS names again after their TTL, at most after (60)"},
    {"dns-server", 0, OPT_STRING, S(dns_server), 0, 0, true, "IP[:PORT]",
     "ask this DNS server instead of /etc/resolv.conf's"},
    {"idle-timeout", 0, OPT_UINT, S(idle_timeout), 1, 7 * 86400, true, "SECONDS",
     "close connections idle this long (600)"},
    {"connect-timeout", 0, OPT_UINT, S(connect_timeout), 1, 3600, true, "SECONDS",
     "to reach a destination, all addresses (10)"},
    {"max-connections", 0, OPT_UINT, S(max_connections), 1, 10000000, true, "N",
     "open connections at most (20000)"},
    {"workers", 0, OPT_UINT, S(workers), 0, CL_HOST_MAX_WORKERS, true, "N",
     "event-loop processes (0: one per core)"},
    {"no-splice", 0, OPT_BOOL, S(no_splice), 0, 0, true, NULL, "read()/write() instead of splice()"},
    {"debug", 0, OPT_BOOL, S(debug), 0, 0, true, NULL, "log every connection (debug level)"},
    {"config", 0, OPT_STRING, S(config), 0, 0, true, "FILE",
     "JSON settings (vsock-proxy form: allowlist)"},
    {"listen", 0, OPT_STRING, S(listen), 0, 0, true, "ADDR", NULL},
    {"num_workers", 'w', OPT_UINT, S(num_workers), 1, 1000000, true, "N", NULL},
};
#define OPTION_COUNT (sizeof option_specs / sizeof option_specs[0])

static bool form_has(const option_spec *o, bool vsock_proxy)
{
    if (vsock_proxy)
        return o->vsock_proxy;
    return strcmp(o->name, "listen") != 0 && strcmp(o->name, "num_workers") != 0;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: cloister host [OPTIONS]\n"
            "       cloister host vsock-proxy [-4|-6] [--config FILE] [-w N] [--listen ADDR] [OPTIONS]\n"
            "                                 LOCAL_PORT REMOTE_ADDR REMOTE_PORT\n"
            "       cloister host acm --bundle FILE|URL --token LABEL --provision ADDR [...] (see its --help)\n\n"
            "The parent instance's side of an enclave: forwards connections into it, proxies its\n"
            "connections out to allowed services, and gates its instance metadata calls.\n"
            "Addresses are vsock:CID:PORT, unix:PATH or tcp:HOST:PORT ([v6] in brackets).\n\n"
            "options:\n");
    for (size_t i = 0; i < OPTION_COUNT; i++) {
        const option_spec *o = &option_specs[i];
        if (!o->help)
            continue;
        char left[64];
        if (o->short_name)
            snprintf(left, sizeof left, "-%c, --%s%s%s", o->short_name, o->name, o->arg ? " " : "",
                     o->arg ? o->arg : "");
        else
            snprintf(left, sizeof left, "    --%s%s%s", o->name, o->arg ? " " : "", o->arg ? o->arg : "");
        fprintf(out, "  %-40s %s\n", left, o->help);
    }
    fprintf(out, "  %-40s %s\n\n", "-h, --help", "this text");
    fprintf(out, "the enclave's life (main form; as cloister watchdog, which explains them):\n");
    for (const cl_watchdog_flag *f = cl_watchdog_flags(); f->name; f++) {
        char left[64];
        snprintf(left, sizeof left, "    --%s%s%s", f->name, f->arg ? " " : "", f->arg ? f->arg : "");
        fprintf(out, "  %-40s %s\n", left, f->help);
    }
    fprintf(out, "\n");
    fprintf(out,
            "--forward LISTEN=DEST: any address kinds on either side, e.g.\n"
            "  --forward tcp:0.0.0.0:443=vsock:16:443            clients to the enclave\n"
            "  --forward tcp:127.0.0.1:8443=unix:/run/x.sock,proxy-protocol\n"
            "  With ',proxy-protocol' (or --proxy-protocol for all) DEST first receives a PROXY\n"
            "  protocol v2 header with the client's address (IPv4/IPv6/unix; vsock as UNSPEC).\n"
            "--outbound LISTEN=HOST:PORT, e.g. --outbound vsock:3:8000=kms.us-east-1.amazonaws.com:443\n"
            "  HOST is resolved at start (failure stops the start) and again when its DNS TTL has\n"
            "  passed (at least 1 s, at most --resolve-interval; names from /etc/hosts and\n"
            "  answers without a TTL: every --resolve-interval), each time logged as\n"
            "  event=resolved with the TTL; on failure the previous addresses stay.  A then AAAA\n"
            "  answers, tried in that order by connections.\n"
            "--imds LISTEN: an HTTP/1.1 gate, one request per connection, to --imds-endpoint,\n"
            "  allowing exactly these calls (others get 403, bodies 400):\n");
    const char *calls = cl_imds_allowed_calls();
    for (const char *p = calls; *p;) {
        const char *nl = strchr(p, '\n');
        fprintf(out, "    %.*s\n", (int)(nl - p), p);
        p = nl + 1;
    }
    fprintf(out,
            "  ROLE: an IAM role name.  Forwarded headers: X-aws-ec2-metadata-token(-ttl-seconds),\n"
            "  User-Agent, Accept, X-Forwarded-For.  No X-Forwarded-For is added (IMDS refuses a\n"
            "  token PUT that has one).\n\n"
            "vsock-proxy form: a drop-in for aws-nitro-enclaves-cli's vsock-proxy.  Listens on\n"
            "vsock:3:LOCAL_PORT (--listen ADDR overrides it, e.g. unix:PATH for local tests) and\n"
            "forwards to REMOTE_ADDR:REMOTE_PORT, which must match the allowlist in --config\n"
            "(default " CL_ALLOWLIST_DEFAULT_PATH "): an entry's port equals REMOTE_PORT\n"
            "and its address equals REMOTE_ADDR (byte for byte, as vsock-proxy compares) or resolves\n"
            "to REMOTE_ADDR's address; otherwise it refuses to start.  Keys of the YAML other than\n"
            "allowlist, address and port are ignored, as vsock-proxy ignores them.  Exit status as\n"
            "vsock-proxy's: 2 for an unknown option or missing argument, 1 for every other error (a\n"
            "bad port or -w value, the allowlist, a refusal, cannot listen).  -V/--version prints the\n"
            "version.  -w/--num_workers is accepted and ignored (one event loop per core serves any\n"
            "number of connections).\n"
            "DNS names are resolved again when their TTL has passed, as in the main form.\n\n"
            "--config FILE (main form): a JSON object whose keys are the long option names, e.g.\n"
            "  {\"forward\": [\"tcp:0.0.0.0:443=vsock:16:443,proxy-protocol\"],\n"
            "   \"outbound\": \"vsock:3:8000=kms.us-east-1.amazonaws.com:443\",\n"
            "   \"imds\": \"vsock:3:8002\", \"idle-timeout\": 300, \"debug\": false}\n"
            "  Repeatable options take a string or an array of strings; flags given on the\n"
            "  command line override the file's values and add to its lists.\n\n"
            "  The enclave's settings are keys too: {\"enclave-command\": \"...\", \"health-connect\": ...}.\n\n"
            "With --run-enclave-eif (nitro-cli) or --enclave-command (a local stand-in), the host\n"
            "also owns the enclave's life: it starts it, health-checks it, restarts it with\n"
            "backoff within a budget and terminates it on SIGTERM; with $NOTIFY_SOCKET it sends\n"
            "READY=1 once the enclave is first healthy (without an enclave: once the proxies\n"
            "accept).  If the watchdog gives up, the host stops too (exit status 3).\n\n"
            "Logs: key=value lines on stderr; start, stop and DNS at info, refusals at warn,\n"
            "every connection at debug.  SIGTERM or SIGINT: stop accepting, close, exit 0.\n"
            "Exit status: 0 stopped by a signal, 1 a destination is not allowlisted, 2 bad\n"
            "command line or configuration, 3 could not start (listen, resolve, ...) or the\n"
            "enclave's restart budget was exhausted.\n");
}

static int list_add(list *l, const char *value)
{
    char **items = realloc(l->items, (l->count + 1) * sizeof *items);
    CL_ENSURE(items, CL_ENOMEM, "out of memory");
    l->items = items;
    CL_ENSURE((l->items[l->count] = strdup(value)), CL_ENOMEM, "out of memory");
    l->count++;
    return CL_OK;
}

static void list_free(list *l)
{
    for (size_t i = 0; i < l->count; i++)
        free(l->items[i]);
    free(l->items);
    l->items = NULL;
    l->count = 0;
}

static void settings_free(settings *s)
{
    list_free(&s->forward);
    list_free(&s->outbound);
    free(s->imds);
    free(s->imds_endpoint);
    free(s->allowlist);
    free(s->config);
    free(s->dns_server);
    cl_watchdog_settings_free(&s->wd);
    free(s->listen);
}

static int set_option(settings *s, const option_spec *o, const char *value, const char *origin)
{
    void *field = (char *)s + o->offset;
    switch (o->type) {
    case OPT_STRING: {
        char *copy = strdup(value);
        CL_ENSURE(copy, CL_ENOMEM, "out of memory");
        free(*(char **)field);
        *(char **)field = copy;
        return CL_OK;
    }
    case OPT_LIST:
        return list_add(field, value);
    case OPT_UINT: {
        uint64_t v;
        int rc = cl_parse_u64(value, o->max, &v);
        if (rc == CL_OK && v < o->min)
            rc = cl_error_set(CL_EINVAL, "'%s' is below the minimum %u", value, o->min);
        if (rc < 0)
            return cl_error_prefix(rc, "%s--%s: ", origin, o->name);
        *(unsigned *)field = (unsigned)v;
        return CL_OK;
    }
    default:
        if (cl_parse_bool(value, (bool *)field) < 0)
            return cl_error_prefix(CL_EINVAL, "%s--%s: ", origin, o->name);
        return CL_OK;
    }
}

static const option_spec *find_long(const char *name, size_t len, bool vsock_proxy)
{
    for (size_t i = 0; i < OPTION_COUNT; i++)
        if (strlen(option_specs[i].name) == len && !memcmp(option_specs[i].name, name, len) &&
            form_has(&option_specs[i], vsock_proxy))
            return &option_specs[i];
    return NULL;
}

static const option_spec *find_short(char c, bool vsock_proxy)
{
    for (size_t i = 0; i < OPTION_COUNT; i++)
        if (option_specs[i].short_name == c && form_has(&option_specs[i], vsock_proxy))
            return &option_specs[i];
    return NULL;
}

static int load_config_file(settings *s, const char *path)
{
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    CL_ENSURE(root, CL_EINVAL, "--config %s: line %d: %s", path, jerr.line, jerr.text);
    int rc = CL_OK;
    char origin[PATH_MAX + 16];
    snprintf(origin, sizeof origin, "--config %s: ", path);
    if (!json_is_object(root))
        CL_FAIL_OUT(CL_EINVAL, "--config %s: expected a JSON object of settings", path);
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value) {
        const option_spec *o = find_long(key, strlen(key), false);
        if (!o && cl_watchdog_flag_find(key)) {
            char num[32];
            const char *v = json_is_string(value)    ? json_string_value(value)
                            : json_is_boolean(value) ? (json_is_true(value) ? "true" : "false")
                            : NULL;
            if (!v && json_is_integer(value) && json_integer_value(value) >= 0) {
                snprintf(num, sizeof num, "%lld", (long long)json_integer_value(value));
                v = num;
            }
            if (!v)
                CL_FAIL_OUT(CL_EINVAL, "--config %s: \"%s\" must be a string, a number or a boolean", path, key);
            rc = cl_watchdog_settings_set(&s->wd, key, v);
            if (rc < 0)
                CL_FAIL_OUT(rc, "--config %s: %s", path, cl_error_message());
            s->wd_given = true;
            continue;
        }
        if (!o || !strcmp(key, "config"))
            CL_FAIL_OUT(CL_EINVAL, "--config %s: unknown setting \"%s\" (see cloister host --help)", path, key);
        char text[32];
        const char *v = NULL;
        if (o->type == OPT_LIST) {
            if (json_is_string(value)) {
                CL_TRY_OUT(list_add((list *)((char *)s + o->offset), json_string_value(value)));
                continue;
            }
            if (json_is_array(value)) {
                size_t i;
                json_t *item;
                json_array_foreach(value, i, item) {
                    if (!json_is_string(item))
                        CL_FAIL_OUT(CL_EINVAL, "--config %s: \"%s\"[%zu] must be a string", path, key, i);
                    CL_TRY_OUT(list_add((list *)((char *)s + o->offset), json_string_value(item)));
                }
                continue;
            }
        } else if (o->type == OPT_BOOL && json_is_boolean(value)) {
            v = json_is_true(value) ? "true" : "false";
        } else if (o->type == OPT_UINT && json_is_integer(value) && json_integer_value(value) >= 0) {
            snprintf(text, sizeof text, "%lld", (long long)json_integer_value(value));
            v = text;
        } else if (o->type == OPT_STRING && json_is_string(value)) {
            v = json_string_value(value);
        }
        if (!v)
            CL_FAIL_OUT(CL_EINVAL, "--config %s: \"%s\" must be %s", path, key,
                        o->type == OPT_BOOL   ? "true or false"
                        : o->type == OPT_UINT ? "a non-negative integer"
                        : o->type == OPT_LIST ? "a string or an array of strings"
                                              : "a string");
        CL_TRY_OUT(set_option(s, o, v, origin));
    }
out:
    json_decref(root);
    return rc;
}

/* Returns 0, EXIT_USAGE after printing the problem, or -1 after --help.
 * positional collects the vsock-proxy form's arguments. */
static int parse_args(int argc, char **argv, bool vsock_proxy, settings *s, const char **positional, size_t *npos)
{
    const char *me = vsock_proxy ? "cloister host vsock-proxy" : "cloister host";
    *npos = 0;
    /* the JSON config first, so that flags override it (main form only) */
    for (int pass = vsock_proxy ? 1 : 0; pass < 2; pass++) {
        bool options_done = false;
        for (int i = 1; i < argc; i++) {
            const char *arg = argv[i];
            if (!options_done && (!strcmp(arg, "-h") || !strcmp(arg, "--help"))) {
                usage(stdout);
                return -1;
            }
            if (vsock_proxy && !options_done && (!strcmp(arg, "-V") || !strcmp(arg, "--version"))) {
                printf("cloister host vsock-proxy %s (a drop-in for aws-nitro-enclaves-cli's vsock-proxy)\n",
                       CLOISTER_VERSION);
                return -1;
            }
            if (options_done || arg[0] != '-' || !arg[1]) {
                if (!vsock_proxy) {
                    fprintf(stderr, "%s: unexpected argument '%s' (see --help)\n", me, arg);
                    return EXIT_USAGE;
                }
                if (pass == 1) {
                    if (*npos == 3) {
                        fprintf(stderr, "%s: too many arguments: '%s' (see --help)\n", me, arg);
                        return EXIT_USAGE;
                    }
                    positional[(*npos)++] = arg;
                }
                continue;
            }
            if (!strcmp(arg, "--")) {
                options_done = true;
                continue;
            }
            const option_spec *o;
            const char *value = NULL;
            if (arg[1] != '-') {
                if (arg[2] != '\0' && !(arg[1] == 'w')) {
                    fprintf(stderr, "%s: unknown option '%s' (see --help)\n", me, arg);
                    return EXIT_USAGE;
                }
                o = find_short(arg[1], vsock_proxy);
                if (o && arg[2])
                    value = arg + 2; /* -w4 */
            } else {
                const char *name = arg + 2;
                const char *eq = strchr(name, '=');
                size_t len = eq ? (size_t)(eq - name) : strlen(name);
                o = find_long(name, len, vsock_proxy);
                if (eq)
                    value = eq + 1;
            }
            if (!o && !vsock_proxy && arg[1] == '-') {
                /* the watchdog's flags: cloister watchdog's table */
                const char *name = arg + 2;
                size_t len = strcspn(name, "=");
                char flag[64];
                const cl_watchdog_flag *f = NULL;
                if (len < sizeof flag) {
                    memcpy(flag, name, len);
                    flag[len] = '\0';
                    f = cl_watchdog_flag_find(flag);
                }
                if (f) {
                    if (!value && !f->arg)
                        value = "true";
                    if (!value) {
                        if (i + 1 >= argc) {
                            fprintf(stderr, "%s: --%s needs a value (%s)\n", me, f->name, f->arg);
                            return EXIT_USAGE;
                        }
                        value = argv[++i];
                    }
                    if (pass == 1) {
                        if (cl_watchdog_settings_set(&s->wd, flag, value) < 0) {
                            fprintf(stderr, "%s: %s\n", me, cl_error_message());
                            return EXIT_USAGE;
                        }
                        s->wd_given = true;
                    }
                    continue;
                }
            }
            if (!o) {
                fprintf(stderr, "%s: unknown option '%s' (see --help)\n", me, arg);
                return EXIT_USAGE;
            }
            if (!value && o->type == OPT_BOOL)
                value = "true";
            if (!value) {
                if (i + 1 >= argc) {
                    fprintf(stderr, "%s: --%s needs a value (%s)\n", me, o->name, o->arg);
                    return EXIT_USAGE;
                }
                value = argv[++i];
            }
            bool is_config = !strcmp(o->name, "config");
            if ((pass == 0) != (is_config && !vsock_proxy))
                continue;
            int rc = is_config && !vsock_proxy ? load_config_file(s, value) : CL_OK;
            if (rc == CL_OK)
                rc = set_option(s, o, value, "");
            if (rc < 0) {
                fprintf(stderr, "%s: %s\n", me, cl_error_message());
                /* vsock-proxy checks option values after parsing them (exit 1) */
                return vsock_proxy ? EXIT_VSOCK_PROXY : EXIT_USAGE;
            }
        }
    }
    if (s->ipv4 && s->ipv6) {
        fprintf(stderr, "%s: -4/--ipv4 and -6/--ipv6 exclude each other\n", me);
        return EXIT_USAGE;
    }
    return 0;
}

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
    } else if (strchr(text, ',') && strrchr(text, ',') > strrchr(text, '=')) {
        CL_FAIL_OUT(CL_EINVAL, "--forward %s: unknown option '%s' (only ',proxy-protocol')", text,
                    strrchr(text, ',') + 1);
    }
    r->proxy_protocol |= all_proxy;
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

static void defaults(settings *s)
{
    memset(s, 0, sizeof *s);
    s->resolve_interval = 60;
    s->idle_timeout = 600;
    s->connect_timeout = 10;
    s->max_connections = 20000;
}

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
    defaults(&s);
    const char *pos[3];
    size_t npos = 0;
    cl_allowlist allow = {0};
    cl_host_route route;
    memset(&route, 0, sizeof route);
    int status = parse_args(argc, argv, true, &s, pos, &npos);
    if (status != 0) {
        status = status < 0 ? 0 : status;
        goto out;
    }
    status = EXIT_USAGE;
    init_logging(&s);
    if (npos != 3) {
        fprintf(stderr, "%s: expected LOCAL_PORT REMOTE_ADDR REMOTE_PORT (see --help)\n", me);
        goto out;
    }
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
    settings_free(&s);
    return status;
}

int cmd_host(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "vsock-proxy"))
        return cmd_vsock_proxy(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "acm"))
        return cmd_host_acm(argc - 1, argv + 1); /* host_acm.c */
    const char *me = "cloister host";
    cl_sd_notify_detach_env(); /* before any thread, and not for the enclave's processes */
    settings s;
    defaults(&s);
    cl_host_route *routes = NULL;
    size_t count = 0;
    cl_allowlist allow = {0};
    const char *unused[3];
    size_t npos;
    int status = parse_args(argc, argv, false, &s, unused, &npos);
    if (status != 0) {
        status = status < 0 ? 0 : status;
        goto out;
    }
    status = EXIT_USAGE;
    init_logging(&s);
    size_t total = s.forward.count + s.outbound.count + (s.imds ? 1 : 0);
    bool enclave = cl_watchdog_settings_active(&s.wd);
    if (s.wd_given && !enclave) {
        fprintf(stderr, "%s: the enclave's options need --run-enclave-eif PATH or --enclave-command CMD\n", me);
        goto out;
    }
    if (enclave && cl_watchdog_settings_check(&s.wd) < 0) {
        fprintf(stderr, "%s: %s (see --help)\n", me, cl_error_message());
        goto out;
    }
    if (total == 0 && !enclave) {
        fprintf(stderr, "%s: nothing to do: give --forward, --outbound, --imds or an enclave to run (see --help)\n",
                me);
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
    status = run(me, &s, routes, count, s.allowlist ? &allow : NULL);
out:
    cl_allowlist_free(&allow);
    free(routes);
    settings_free(&s);
    return status;
}

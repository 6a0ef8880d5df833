/* cloister dev: the whole Nitro picture on one machine.
 *
 *   nsm-sim           the NSM, on a unix socket
 *   cloister host     outside: HTTPS for the user on 127.0.0.1:PORT forwarded to
 *                     the enclave's listener, the IMDS gate, and the watchdog
 *                     that starts the enclave and keeps it alive
 *   cloister enclave  inside its own network namespace with only lo (as root),
 *                     running the example app with -appcmd
 *   imds-sim          the instance metadata service, on loopback
 *
 * The vsock links are unix sockets in one run directory, the only thing
 * the two sides share.  Everything started here runs in its own process
 * group with a parent-death signal, and everything is stopped and removed
 * on exit. */
#include "cloister/core/address.h"
#include "cloister/core/buf.h"
#include "cloister/core/clock.h"
#include "cloister/core/encoding.h"
#include "cloister/core/https_client.h"
#include "cloister/core/options.h"
#include "cloister/core/process.h"
#include "commands.h"
#include "dev.h"
#include "dev_acme.h"
#include "dev_tap.h"
#include "dev_wallet.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_PORT 8443
#define ENCLAVE_INTPORT 8080 /* inside the namespace: nitriding's defaults */
#define ENCLAVE_APPPORT 8081
#define START_TIMEOUT_MS 60000

static const char usage_text[] =
    "usage: cloister dev [--check] [--port N] [--app CMD|wallet [--app-port N]] [--no-netns]\n"
    "                    [--run-dir DIR] [--fidelity nitro|loose] [--network proxies|tap]\n"
    "                    [--replicas N [--identity kms|sync]] [--acme]\n"
    "\n"
    "Runs the whole picture on one machine: the NSM simulator; the enclave side\n"
    "(cloister enclave and the example app) in its own network namespace with only lo\n"
    "when run as root; the host side (cloister host: forwards, IMDS gate, KMS proxy,\n"
    "watchdog) outside; a local IMDS and a local KMS (kms-local, with a key only this\n"
    "enclave's PCR0 opens, whose secret the enclave opens at start); the vsock links as\n"
    "unix sockets in a run directory.  Then it\n"
    "proves the enclave with cloister verify and shows how to try it.\n"
    "\n";

static const char epilog[] =
    "--fidelity nitro: the enclave side as on Nitro: vsock addresses through the vsock code, unix\n"
    "sockets only at the last bind/connect (RUN/vsock/CID.PORT); no MSG_PEEK and no splice on the\n"
    "links; lo left down for cloister enclave to bring up (docs/local-vs-nitro.md).\n"
    "--fidelity loose: the links as plain unix: addresses, without those seams.\n"
    "--network tap: the enclave's namespace gets tap0 (cloister enclave -tap) and the host\n"
    "a TAP device routed by this machine's kernel (cloister host --tap: its nftables table, ip_forward=1),\n"
    "instead of the KMS proxy and the IMDS link: the enclave reaches IMDS at 169.254.169.254 (through the\n"
    "gate) and kms-local at 192.168.127.1 (docs/tap.md).  Needs the enclave's own namespace (root).\n"
    "\n"
    "Ctrl-C or SIGTERM stops everything and removes the run directory: no process,\n"
    "namespace, socket or file is left.  Exit status: 0 ok, 1 something failed (its\n"
    "log is shown), 2 bad command line.\n";

static int check_fidelity(void *base, const char *value)
{
    (void)base;
    CL_ENSURE(!strcmp(value, "nitro") || !strcmp(value, "loose"), CL_EINVAL, "nitro or loose, got '%s'", value);
    return CL_OK;
}

static int check_identity(void *base, const char *value)
{
    (void)base;
    CL_ENSURE(!strcmp(value, "kms") || !strcmp(value, "sync"), CL_EINVAL, "kms or sync, got '%s'", value);
    return CL_OK;
}

#define STR_(x) #x
#define STR(x) STR_(x)
static int check_network(void *base, const char *value)
{
    (void)base;
    CL_ENSURE(!strcmp(value, "proxies") || !strcmp(value, "tap"), CL_EINVAL, "proxies or tap, got '%s'", value);
    return CL_OK;
}

static const cl_opt dev_option_table[] = {
    {.name = "check", CL_OPT_FLAG(dev_options, check),
     .help = "start, verify, make requests to the app, from the app out through the host (IMDS), check the KMS "
             "secret the enclave opened and a Decrypt refused for another PCR0, stop; exit 0 only if all worked"},
    {.name = "port", CL_OPT_UINT_AT(dev_options, port, 1, 65535), .def = STR(DEFAULT_PORT), .arg = "N",
     .help = "HTTPS for you on 127.0.0.1:N"},
    {.name = "app", CL_OPT_STR(dev_options, app), .arg = "CMD",
     .help = "run CMD as the application instead of examples/hello/app.py; it must serve HTTP on "
             "127.0.0.1:--app-port.  'wallet': the multi-party wallet example (examples/wallet) with dynalite "
             "for its shares and a walk-through with its client"},
    {.name = "app-port", CL_OPT_UINT_AT(dev_options, app_port, 1, 65535), .def = STR(ENCLAVE_APPPORT), .arg = "N",
     .help = "the port of --app"},
    {.name = "no-netns", CL_OPT_FLAG(dev_options, no_netns),
     .help = "do not isolate the enclave side (also the automatic fallback when not root or without network "
             "namespaces; it is logged)"},
    {.name = "run-dir", CL_OPT_STR(dev_options, run_dir), .arg = "DIR",
     .help = "use DIR (created, must not exist) instead of a temporary one"},
    {.name = "fidelity", CL_OPT_STR(dev_options, fidelity), .set = check_fidelity, .def = "nitro",
     .arg = "nitro|loose", .help = "how closely the links follow Nitro's (below)"},
    {.name = "replicas", CL_OPT_UINT_AT(dev_options, replicas, 1, 16), .def = "1", .arg = "N",
     .help = "N enclave sides (each its own namespace, NSM simulator instance and cloister host) behind "
             "HAProxy in TCP mode on 127.0.0.1:--port, with PROXY protocol v2 and health checks (docs/scale-out.md)"},
    {.name = "identity", CL_OPT_STR(dev_options, identity), .set = check_identity, .def = "kms", .arg = "kms|sync",
     .help = "with --replicas: one certificate for all, its key a KMS ciphertext every replica opens (kms), or "
             "given by replica 1, the leader, to the others by attested key sync (sync)"},
    {.name = "acme", CL_OPT_FLAG(dev_options, acme),
     .help = "run Pebble as an ACME CA (its DNS answering 127.0.0.1, tls-alpn-01 through the host's forward) and "
             "cloister enclave -acme against it, through the host's outbound proxy (src/dev_acme.c)"},
    {.name = "network", CL_OPT_STR(dev_options, network), .set = check_network, .def = "proxies",
     .arg = "proxies|tap", .help = "the enclave's way out: per-destination links, or tap0 (below)"},
};

static void stop_all(dev *d)
{
    /* the host first: it terminates the enclave, which still needs its NSM */
    stop_proc(d, &d->host);
    stop_proc(d, &d->kms);
    stop_proc(d, &d->imds);
    stop_proc(d, &d->sim);
    if (d->made_run)
        nftw(d->run, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static bool sim_ready(dev *d)
{
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/nsm.sock", d->run);
    struct stat st;
    return stat(path, &st) == 0 && S_ISSOCK(st.st_mode);
}

static bool imds_ready(dev *d) { return tcp_accepts(d->imds_port); }


/* Runs `cloister verify` on the forward, output to RUN/verify.out. */
static int run_verify(dev *d)
{
    char url[64], root[PATH_MAX + 16];
    snprintf(url, sizeof url, "https://127.0.0.1:%u", d->port);
    snprintf(root, sizeof root, "%s/state/root.pem", d->run);
    char *argv[] = {d->self, "verify", url, "--root", root, "--timeout", "10", NULL};
    return run_self(d, "verify", argv);
}

static bool verified(dev *d) { return run_verify(d) == 0; }

/* The enclave's pid: the watchdog logs each start. */
static pid_t enclave_pid(const dev *d)
{
    FILE *f = fopen(d->host.log, "r");
    if (!f)
        return -1;
    char line[4096];
    pid_t pid = -1;
    while (fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "event=enclave_started runner=local pid=");
        if (p)
            pid = (pid_t)atoi(p + strlen("event=enclave_started runner=local pid="));
    }
    fclose(f);
    return pid;
}

/* "lo" or "lo eth0 ...": the interfaces of pid's network namespace. */
static void interfaces_of(pid_t pid, char *out, size_t len)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/net/dev", (int)pid);
    out[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    char line[512];
    size_t used = 0;
    for (int i = 0; fgets(line, sizeof line, f); i++) {
        char *colon = strchr(line, ':');
        if (i < 2 || !colon)
            continue; /* the two header lines */
        *colon = '\0';
        char *name = line + strspn(line, " ");
        int n = snprintf(out + used, len - used, "%s%s", used ? " " : "", name);
        if (n < 0 || (size_t)n >= len - used)
            break;
        used += (size_t)n;
    }
    fclose(f);
}

static bool same_netns(pid_t a, pid_t b)
{
    char pa[64], pb[64];
    struct stat sa, sb;
    snprintf(pa, sizeof pa, "/proc/%d/ns/net", (int)a);
    snprintf(pb, sizeof pb, "/proc/%d/ns/net", (int)b);
    return stat(pa, &sa) == 0 && stat(pb, &sb) == 0 && sa.st_ino == sb.st_ino;
}

/* The links between the two sides.  --fidelity nitro: the vsock addresses
 * of Nitro (the enclave CID 16 listening on VMADDR_CID_ANY, the parent CID
 * 3), which the stand-in (CLOISTER_VSOCK_STANDIN=RUN/vsock) turns into unix
 * sockets only at the last bind/connect.  loose: plain unix sockets. */
enum link_kind { LINK_ENCLAVE_LISTEN, LINK_ENCLAVE, LINK_IMDS, LINK_KMS, LINK_DYNAMODB };
static void link_addr(const dev *d, enum link_kind k, char *out, size_t len)
{
    static const char *const vsock[] = {"vsock:4294967295:443", "vsock:16:443", "vsock:3:8002", "vsock:3:8000",
                                        "vsock:3:8001"};
    static const char *const file[] = {"enclave.sock", "enclave.sock", "imds.sock", "kms.sock", "dynamodb.sock"};
    if (d->loose)
        snprintf(out, len, "unix:%s/%s", d->run, file[k]);
    else
        snprintf(out, len, "%s", vsock[k]);
}

/* The local runner's command: the enclave daemon with the app, inside a
 * fresh network namespace whose lo is down, as AWS's enclave init leaves
 * it: cloister enclave brings it up itself. */
static int enclave_command(const dev *d, const char *app_cmd, bool wait_for_app, cl_buf *out)
{
    char nsm[PATH_MAX + 32], listen[PATH_MAX + 32], imds[PATH_MAX + 32], intport[16], appurl[64];
    snprintf(nsm, sizeof nsm, "unix:%s/nsm.sock", d->run);
    link_addr(d, LINK_ENCLAVE_LISTEN, listen, sizeof listen);
    if (d->tap) /* the app asks 169.254.169.254 itself */
        snprintf(imds, sizeof imds, "CLOISTER_DEV_NETWORK=tap");
    else if (d->loose)
        snprintf(imds, sizeof imds, "CLOISTER_IMDS_SOCKET=%s/imds.sock", d->run);
    else /* the app has no vsock code: it is given the stand-in's file of vsock:3:8002 */
        snprintf(imds, sizeof imds, "CLOISTER_IMDS_SOCKET=%s/vsock/3.8002", d->run);
    snprintf(intport, sizeof intport, "%u", d->intport);
    snprintf(appurl, sizeof appurl, "http://127.0.0.1:%u", d->appport);
    CL_TRY(cl_buf_append(out, "exec env ", 9));
    CL_TRY(shell_quote(out, imds));
    /* for an app using -kms-for-app (examples/kms-app): the demo secret's ciphertext and its context */
    char ct_env[PATH_MAX + 48];
    snprintf(ct_env, sizeof ct_env, "CLOISTER_DEV_CIPHERTEXT=%s/secret-dev.ct", d->run);
    CL_TRY(shell_quote(out, ct_env));
    CL_TRY(shell_quote(out, "CLOISTER_DEV_CIPHERTEXT_CONTEXT={\"purpose\": \"enclave-secret\", \"name\": \"demo\"}"));
    if (!d->loose) {
        /* the enclave's side of the stand-in: CID 16; its links refuse
         * MSG_PEEK and splice as the enclave kernel's vsock does */
        static const char *const seams[] = {"CLOISTER_VSOCK_STANDIN_CID=16", "CLOISTER_LINK_NO_PEEK=1",
                                            "CLOISTER_LINK_NO_SPLICE=1"};
        for (size_t i = 0; i < sizeof seams / sizeof seams[0]; i++)
            CL_TRY(shell_quote(out, seams[i]));
    }
    if (d->isolated) {
        /* unshare(1) execs without forking, so the watchdog's pid stays the enclave's */
        CL_TRY(cl_buf_append(out, "unshare --net ", 14));
    }
    char kms_imds[PATH_MAX + 32], kms_proxy[PATH_MAX + 32], kms_ca[PATH_MAX + 32], secret[PATH_MAX + 48];
    link_addr(d, LINK_IMDS, kms_imds, sizeof kms_imds);
    link_addr(d, LINK_KMS, kms_proxy, sizeof kms_proxy);
    char tap_listen[PATH_MAX + 16], tap_dial[PATH_MAX + 16];
    if (d->tap) {
        dev_tap_stream(d->loose, d->run, tap_listen, sizeof tap_listen, tap_dial, sizeof tap_dial);
        dev_tap_enclave_links(d->kms_port, listen, sizeof listen, kms_imds, sizeof kms_imds, kms_proxy,
                              sizeof kms_proxy);
    }
    snprintf(kms_ca, sizeof kms_ca, "%s/kms/ca.pem", d->run);
    snprintf(secret, sizeof secret, "demo=@%s/secret-dev.ct", d->run);
    const char *words[] = {d->self, "enclave", "-fqdn", "localhost", "--nsm", nsm, "--listen", listen,
                           "-intport", intport, "-appwebsrv", appurl, "-appcmd", app_cmd, "--proxy-protocol",
                           "-kms-imds", kms_imds, "-kms-proxy", kms_proxy, "-kms-ca-file", kms_ca,
                           "-secret", secret, "-kms-for-app"};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        CL_TRY(shell_quote(out, words[i]));
    if (d->use_acme) {
        const char *acme[] = {"-acme", "--acme-directory", d->acme.directory, "--acme-ca-file", d->acme.ca_file,
                              "--acme-proxy", d->acme_link, "--acme-backoff", "1s"};
        for (size_t i = 0; i < sizeof acme / sizeof acme[0]; i++)
            CL_TRY(shell_quote(out, acme[i]));
    }
    if (d->tap) {
        const char *tap_words[DEV_TAP_WORDS];
        dev_tap_enclave_words(tap_dial, tap_words);
        for (size_t i = 0; i < DEV_TAP_WORDS; i++)
            CL_TRY(shell_quote(out, tap_words[i]));
    }
    if (wait_for_app)
        CL_TRY(cl_buf_append(out, "-wait-for-app", 13));
    return cl_buf_append(out, "", 1);
}

/* Who calls kms-local: the instance role's session (what IMDS hands to
 * anything on the parent) and the operator, each with its own ARN. */

/* --check: one request to the app, one from it out through the host. */
static bool exercise(dev *d)
{
    cl_https_target t = {.host = "127.0.0.1", .port = d->port};
    snprintf(t.authority, sizeof t.authority, "127.0.0.1:%u", d->port);
    bool ok = true;
    static const struct {
        const char *path, *want, *what;
    } checks[] = {
        {"/api/hello", "\"client\": \"127.0.0.1\"",
         "client -> host forward (PROXY v2) -> enclave TLS -> app, which sees the client's address"},
        {"/region", "us-east-1", "app -> host IMDS gate (IMDSv2 token) -> imds-sim"},
    };
    for (size_t i = 0; i < sizeof checks / sizeof checks[0]; i++) {
        cl_https_response r;
        int rc = cl_https_get(&t, NULL, checks[i].path, 64 * 1024, &r);
        bool good = rc == CL_OK && r.status == 200 && r.body.len &&
                    memmem(r.body.data, r.body.len, checks[i].want, strlen(checks[i].want));
        if (good)
            say("ok    GET %-11s %d  (%s)", checks[i].path, r.status, checks[i].what);
        else if (rc < 0)
            say("FAIL  GET %-11s %s", checks[i].path, cl_error_message());
        else
            say("FAIL  GET %-11s %d: %.*s", checks[i].path, r.status, (int)(r.body.len > 200 ? 200 : r.body.len),
                (const char *)r.body.data);
        ok = ok && good;
        cl_https_response_free(&r);
    }
    /* the app's view of the secret the enclave opened: its SHA-256 */
    cl_https_response r;
    char want[96];
    snprintf(want, sizeof want, "\"sha256\": \"%s\"", d->secret_sha256);
    int rc = cl_https_get(&t, NULL, "/secret", 64 * 1024, &r);
    bool good = rc == CL_OK && r.status == 200 && r.body.len && memmem(r.body.data, r.body.len, want, strlen(want));
    say("%s  GET /secret     %d  (a KMS secret bound to PCR0, opened inside with a Recipient through the host)",
        good ? "ok  " : "FAIL", rc == CL_OK ? r.status : 0);
    ok = ok && good;
    if (rc == CL_OK)
        cl_https_response_free(&r);

    /* a key whose policy names another image's PCR0: refused to this enclave */
    char nsm[PATH_MAX + 16], imds[PATH_MAX + 16], proxy[PATH_MAX + 16], ca[PATH_MAX + 16], in[PATH_MAX + 32],
        out[PATH_MAX + 32];
    snprintf(nsm, sizeof nsm, "unix:%s/nsm.sock", d->run);
    link_addr(d, LINK_IMDS, imds, sizeof imds);
    link_addr(d, LINK_KMS, proxy, sizeof proxy);
    if (d->tap) /* no KMS link: kms-local itself, as the enclave reaches it through the gateway */
        snprintf(proxy, sizeof proxy, "tcp:127.0.0.1:%u", d->kms_port);
    snprintf(ca, sizeof ca, "%s/kms/ca.pem", d->run);
    snprintf(in, sizeof in, "%s/secret-other-pcr0.ct", d->run);
    snprintf(out, sizeof out, "%s/denied.out", d->run);
    char *argv[] = {d->self, "kms", "--imds", imds, "--proxy", proxy, "--ca-file", ca, "--nsm", nsm, "--max-attempts",
                    "1", "decrypt", "--purpose", "enclave-secret:demo", "--in", in, "-o", "/dev/null", NULL};
    int status = run_self(d, "denied", argv);
    good = status == 1 && file_contains(out, "AccessDeniedException");
    say("%s  Decrypt under a key bound to another PCR0: %s", good ? "ok  " : "FAIL",
        good ? "AccessDeniedException, as it must" : "NOT refused as expected");
    if (!good)
        print_file(out);
    return ok && good;
}

static int run_dev(const dev_options *o, bool app_port_given)
{
    dev d;
    memset(&d, 0, sizeof d);
    d.sigfd = -1;
    d.port = o->port;
    d.appport = o->app_port;
    d.loose = !strcmp(o->fidelity, "loose");
    d.tap = !strcmp(o->network, "tap");
    bool check = o->check, no_netns = o->no_netns;
    const char *app = o->app, *run_dir = o->run_dir;
    bool wallet = dev_wallet_wanted(app);
    dev_wallet w;
    memset(&w, 0, sizeof w);
    if (app_port_given && !app) {
        fprintf(stderr, "cloister dev: --app-port goes with --app\n");
        return EXIT_USAGE;
    }
    ssize_t n = readlink("/proc/self/exe", d.self, sizeof d.self - 1);
    if (n <= 0) {
        fprintf(stderr, "cloister dev: cannot find this program's path: %s\n", strerror(errno));
        return EXIT_FAILED;
    }
    d.self[n] = '\0';
    char example[PATH_MAX];
    if (!app && !find_example_app(&d, example, sizeof example)) {
        fprintf(stderr, "cloister dev: examples/hello/app.py not found beside %s; give --app CMD\n", d.self);
        return EXIT_USAGE;
    }
    if (tcp_accepts(d.port)) {
        fprintf(stderr, "cloister dev: 127.0.0.1:%u is already in use (another cloister dev?); give --port N\n",
                d.port);
        return EXIT_FAILED;
    }

    if (run_dir) {
        if (mkdir(run_dir, 0700) < 0) {
            fprintf(stderr, "cloister dev: --run-dir %s: %s\n", run_dir, strerror(errno));
            return EXIT_USAGE;
        }
        char *real = realpath(run_dir, NULL);
        snprintf(d.run, sizeof d.run, "%s", real ? real : run_dir);
        free(real);
    } else {
        const char *tmp = getenv("TMPDIR");
        snprintf(d.run, sizeof d.run, "%s/cloister-dev.XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(d.run)) {
            fprintf(stderr, "cloister dev: cannot make a run directory: %s\n", strerror(errno));
            return EXIT_FAILED;
        }
    }
    d.made_run = true;
    /* unix socket paths must fit in sun_path */
    if (strlen(d.run) + sizeof "/enclave.sock" > CL_ADDRESS_PATH_MAX) {
        fprintf(stderr, "cloister dev: the run directory's path is too long for unix sockets: %s\n", d.run);
        rmdir(d.run);
        return EXIT_USAGE;
    }

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, NULL);
    d.sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    signal(SIGPIPE, SIG_IGN);

    int status = 1;
    cl_buf enclave_cmd = CL_BUF_INIT, app_cmd = CL_BUF_INIT;
    const char *why = "--no-netns";
    d.isolated = !no_netns && netns_possible(&why);
    d.intport = d.isolated ? ENCLAVE_INTPORT : free_port();
    if (!d.isolated && (!app || wallet))
        d.appport = free_port();
    d.imds_port = free_port();
    say("cloister dev: run directory %s", d.run);
    if (!d.loose) {
        /* the parent's side of the vsock stand-in (CID 3), inherited by
         * every process; the enclave's command sets its own CID.  No real
         * AF_VSOCK socket may be opened by any of them. */
        char standin[PATH_MAX + 8];
        snprintf(standin, sizeof standin, "%s/vsock", d.run);
        if (mkdir(standin, 0700) < 0) {
            fprintf(stderr, "cloister dev: cannot make %s: %s\n", standin, strerror(errno));
            goto out;
        }
        setenv("CLOISTER_VSOCK_STANDIN", standin, 1);
        setenv("CLOISTER_VSOCK_STANDIN_CID", "3", 1);
        setenv("CLOISTER_LINK_NO_SPLICE", "1", 1);
        setenv("CLOISTER_NO_VSOCK", "1", 1);
    }
    if (!d.isolated)
        say("cloister dev: WARNING: the enclave side is NOT isolated (%s): it shares this machine's network",
            why);
    if (d.tap && !d.isolated) {
        fprintf(stderr, "cloister dev: --network tap needs the enclave's own network namespace (%s)\n", why);
        goto out;
    }

    char nsm_listen[PATH_MAX + 16], state[PATH_MAX + 16];
    snprintf(nsm_listen, sizeof nsm_listen, "unix:%s/nsm.sock", d.run);
    snprintf(state, sizeof state, "%s/state", d.run);
    char *sim_argv[] = {d.self, "nsm-sim", "--listen", nsm_listen, "--state", state, "--image", d.self, NULL};
    if (spawn(&d, &d.sim, "nsm-sim", sim_argv) < 0 ||
        !wait_for(&d, &d.sim, "the NSM simulator's socket", sim_ready, 10000))
        goto out;

    char imds_listen[64], imds_endpoint[64];
    snprintf(imds_listen, sizeof imds_listen, "tcp:127.0.0.1:%u", d.imds_port);
    snprintf(imds_endpoint, sizeof imds_endpoint, "http://127.0.0.1:%u", d.imds_port);
    if (make_credentials(d.role_key, sizeof d.role_key, d.role_secret, sizeof d.role_secret) < 0 ||
        make_credentials(d.oper_key, sizeof d.oper_key, d.oper_secret, sizeof d.oper_secret) < 0 ||
        file_sha384_hex(d.self, d.pcr0) < 0) {
        fprintf(stderr, "cloister dev: %s\n", cl_error_message());
        goto out;
    }
    char role_creds[128];
    snprintf(role_creds, sizeof role_creds, "%s:%s", d.role_key, d.role_secret);
    char *imds_argv[] = {d.self, "imds-sim", "--listen", imds_listen, "--region", "us-east-1", "--credentials",
                         role_creds, NULL};
    if (spawn(&d, &d.imds, "imds-sim", imds_argv) < 0 ||
        !wait_for(&d, &d.imds, "the IMDS stand-in", imds_ready, 10000))
        goto out;
    d.kms_port = free_port();
    char ddb_link[PATH_MAX + 16];
    link_addr(&d, LINK_DYNAMODB, ddb_link, sizeof ddb_link);
    if (wallet && dev_wallet_prepare(&w, d.self, d.run, DEV_ROLE_ARN, d.pcr0, ddb_link) < 0) {
        fprintf(stderr, "cloister dev: --app wallet: %s\n", cl_error_message());
        goto out;
    }
    d.extra_kms_key = wallet ? w.key_arg : NULL;
    if (!start_kms(&d))
        goto out;

    if (wallet) {
        char imds_l[PATH_MAX + 16], kms_l[PATH_MAX + 16];
        link_addr(&d, LINK_IMDS, imds_l, sizeof imds_l);
        link_addr(&d, LINK_KMS, kms_l, sizeof kms_l);
        if (dev_wallet_app_command(&w, d.appport, d.intport, imds_l, kms_l, ddb_link, &app_cmd) < 0)
            goto out;
    } else if (app) {
        if (cl_buf_append(&app_cmd, app, strlen(app) + 1) < 0)
            goto out;
    } else {
        char root[PATH_MAX + 16];
        snprintf(root, sizeof root, "%s/state/root.pem", d.run);
        cl_buf_reset(&app_cmd);
        if (cl_buf_append(&app_cmd, "exec python3 ", 13) < 0 || shell_quote(&app_cmd, example) < 0)
            goto out;
        char tail[PATH_MAX + 96];
        int len = snprintf(tail, sizeof tail, "--port %u --internal %u --root ", d.appport, d.intport);
        if (cl_buf_append(&app_cmd, tail, (size_t)len) < 0 || shell_quote(&app_cmd, root) < 0 ||
            cl_buf_append(&app_cmd, "", 1) < 0)
            goto out;
    }
    d.use_acme = o->acme;
    char acme_outbound[PATH_MAX + 64] = "";
    if (d.use_acme) {
        if (d.loose)
            snprintf(d.acme_link, sizeof d.acme_link, "unix:%s/acme.sock", d.run);
        else
            snprintf(d.acme_link, sizeof d.acme_link, "vsock:3:8003");
        if (dev_acme_start(&d.acme, d.run, d.port, free_port) < 0) {
            fprintf(stderr, "cloister dev: %s\n", cl_error_message());
            goto out;
        }
        snprintf(acme_outbound, sizeof acme_outbound, "%s=127.0.0.1:%u", d.acme_link, d.acme.port);
    }
        if (enclave_command(&d, (const char *)app_cmd.data, app == NULL || wallet, &enclave_cmd) < 0) {
        fprintf(stderr, "cloister dev: %s\n", cl_error_message());
        goto out;
    }
    char forward[PATH_MAX + 64], imds_gate[PATH_MAX + 16], health[PATH_MAX + 32], kms_link[PATH_MAX + 16];
    link_addr(&d, LINK_ENCLAVE, health, sizeof health);
    link_addr(&d, LINK_IMDS, imds_gate, sizeof imds_gate);
    link_addr(&d, LINK_KMS, kms_link, sizeof kms_link);
    snprintf(forward, sizeof forward, "tcp:127.0.0.1:%u=%s,proxy-protocol", d.port, health);
    char outbound[PATH_MAX + 64];
    snprintf(outbound, sizeof outbound, "%s=127.0.0.1:%u", kms_link, d.kms_port);
    char *host_argv[] = {d.self, "host", "--forward", forward, "--imds", imds_gate, "--imds-endpoint", imds_endpoint,
                         "--outbound", outbound,
                         "--enclave-command", (char *)enclave_cmd.data, "--health-connect", health,
                         "--health-interval", "1s", "--backoff-initial", "500ms", "--stop-grace", "5s",
                         d.use_acme || wallet ? "--outbound" : NULL, d.use_acme ? acme_outbound : w.outbound, NULL};
    dev_tap_host tap_host;
    char tap_listen[PATH_MAX + 16], tap_dial[PATH_MAX + 16];
    dev_tap_stream(d.loose, d.run, tap_listen, sizeof tap_listen, tap_dial, sizeof tap_dial);
    dev_tap_host_argv(&tap_host, d.self, d.port, imds_gate, imds_endpoint, tap_listen, d.kms_port,
                      (const char *)enclave_cmd.data);
    if (spawn(&d, &d.host, "host", d.tap ? tap_host.argv : host_argv) < 0)
        goto out;
    say("cloister dev: starting: nsm-sim, imds-sim, cloister host, and through its watchdog cloister enclave%s",
        app ? " with your app" : " with examples/hello/app.py");
    if (!wait_for(&d, &d.host, "the enclave to be proven through the host", verified, START_TIMEOUT_MS)) {
        if (!d.stop_requested) {
            char path[PATH_MAX + 16];
            snprintf(path, sizeof path, "%s/verify.out", d.run);
            print_file(path);
        }
        goto out;
    }

    pid_t epid = enclave_pid(&d);
    char ifaces[256] = "";
    if (epid > 0)
        interfaces_of(epid, ifaces, sizeof ifaces);
    bool own_ns = epid > 0 && !same_netns(epid, getpid());
    say("\ncloister dev: the whole picture is up");
    say("  nsm-sim    unix:%s/nsm.sock, root certificate %s/state/root.pem", d.run, d.run);
    say("  enclave    cloister enclave (pid %d) + %s; network: %s (interfaces: %s)", (int)epid,
        app ? "your app" : "examples/hello/app.py", own_ns ? "its own namespace" : "this machine's, NOT isolated",
        ifaces[0] ? ifaces : "?");
    say("  host       cloister host: tcp:127.0.0.1:%u -> %s (%s),", d.port, d.tap ? tap_host.health : health,
        d.loose ? "unix sockets for vsock: --fidelity loose" : "vsock code, unix stand-in at the last connect");
    say("             IMDS gate %s -> imds-sim on 127.0.0.1:%u,", imds_gate, d.imds_port);
    if (d.tap)
        say("             TAP bridge %s: enclave tap0 %s <-> %s (nftables, this machine's routing);\n"
            "             the enclave reaches 169.254.169.254 through the gate, kms-local at %s:%u, watchdog on the enclave",
            tap_listen, DEV_TAP_ENCLAVE_IP, DEV_TAP_GATEWAY, DEV_TAP_GATEWAY, d.kms_port);
    else
        say("             KMS proxy %s -> kms-local on 127.0.0.1:%u, watchdog on the enclave", kms_link, d.kms_port);
    /* dev no longer brings lo up: in a fresh namespace the enclave must */
    bool lo_by_enclave = file_contains(d.host.log, "event=loopback_up interface=lo");
    if (own_ns)
        say("  loopback   %s", lo_by_enclave ? "lo was down in the enclave's namespace; cloister enclave brought it up"
                                             : "cloister enclave did NOT log bringing lo up");
    if (!d.loose)
        say("  fidelity   nitro: vsock stand-in %s/vsock/CID.PORT (enclave CID 16, parent 3); no MSG_PEEK, no\n"
            "             splice on the links; lo left down for cloister enclave (docs/local-vs-nitro.md)", d.run);
    say("  kms-local  key alias/dev opens only for a Recipient attested with PCR0=%.16s...; the enclave", d.pcr0);
    say("             opened the secret \"demo\" with it at start (credentials from IMDS, through the host)");
    bool acme_ok = !d.use_acme || dev_acme_wait_issued(&d.acme, d.port, 30000);
    if (d.use_acme)
        say("  acme       Pebble %s (DNS: pebble-challtestsrv, 127.0.0.1), tls-alpn-01 through the forward;\n"
            "             %s: curl --cacert %s https://localhost:%u/", d.acme.directory,
            acme_ok ? "the enclave serves a Pebble-issued certificate" : "NO Pebble-issued certificate yet",
            d.acme.root_file, d.port);
    say("\ncloister verify https://127.0.0.1:%u --root %s/state/root.pem:", d.port, d.run);
    char vpath[PATH_MAX + 16];
    snprintf(vpath, sizeof vpath, "%s/verify.out", d.run);
    print_file(vpath);

    if (check) {
        say("\ncloister dev --check: requests through the deployment");
        bool ok = wallet ? dev_wallet_walkthrough(&w, d.port, d.pcr0, true) : exercise(&d);
        if (!acme_ok) {
            say("FAIL  --acme: the enclave does not serve a Pebble-issued certificate (see %s/pebble.log)", d.run);
            ok = false;
        }
        if (d.isolated && !own_ns) {
            say("FAIL  the enclave is not in its own network namespace");
            ok = false;
        }
        if (own_ns && !lo_by_enclave) {
            say("FAIL  lo of the enclave's namespace was not brought up by cloister enclave");
            ok = false;
        }
        status = ok ? 0 : 1;
        say("\ncloister dev --check: %s", ok ? "passed" : "FAILED");
        if (!ok)
            show_log(&d.host, 30);
        goto out;
    }

    say("\nTry it:");
    say("  curl -k https://127.0.0.1:%u/api/hello", d.port);
    say("  curl -k https://127.0.0.1:%u/region            (the app asks IMDS through the host)", d.port);
    say("  curl -k https://127.0.0.1:%u/secret            (the SHA-256 of the KMS secret only the enclave opens)",
        d.port);
    say("  %s verify https://127.0.0.1:%u --root %s/state/root.pem", d.self, d.port, d.run);
    say("  a browser: https://127.0.0.1:%u/ (it warns about the self-signed certificate: trust comes", d.port);
    say("  from the attestation, which cloister verify checks)");
    say("  logs: %s/{host,nsm-sim,imds-sim,kms-local}.log (the enclave's and the app's are in host.log)", d.run);
    if (wallet)
        dev_wallet_walkthrough(&w, d.port, d.pcr0, false);
    say("Ctrl-C stops everything and removes %s.", d.run);
    while (!d.stop_requested) {
        pause_ms(&d, 500);
        proc *procs[] = {&d.host, &d.sim, &d.imds, &d.kms};
        for (size_t i = 0; i < sizeof procs / sizeof procs[0]; i++) {
            if (alive(procs[i]))
                continue;
            char st[64];
            describe_exit(procs[i], st, sizeof st);
            fprintf(stderr, "cloister dev: %s exited (%s); stopping everything\n", procs[i]->name, st);
            show_log(procs[i], 30);
            goto out;
        }
    }
    status = 0;
out:
    if (d.stop_requested && status != 0 && !check)
        status = 0; /* stopped by the user: not a failure */
    say("cloister dev: stopping");
    dev_wallet_stop(&w); /* before stop_all removes the run directory it writes to */
    stop_all(&d);
    dev_acme_stop(&d.acme);
    cl_buf_free(&enclave_cmd);
    cl_buf_free(&app_cmd);
    if (d.sigfd >= 0)
        close(d.sigfd);
    say("cloister dev: stopped; %s removed", d.run);
    return status;
}

int cmd_dev(int argc, char **argv)
{
    dev_options o = {0};
    cl_opt_section section = CL_OPT_SECTION("options", dev_option_table, &o);
    cl_options spec = {.prog = "cloister dev", .usage = usage_text, .epilog = epilog, .sections = &section,
                       .section_count = 1};
    cl_options_result r;
    int rc = cl_options_main(&spec, argc, argv, &r);
    bool app_port_given = rc == 0 && cl_options_given(&spec, &r, "app-port");
    bool replicas_given = rc == 0 && cl_options_given(&spec, &r, "replicas");
    bool identity_given = rc == 0 && cl_options_given(&spec, &r, "identity");
    cl_options_free(NULL, &r);
    if (rc != 0) {
        cl_options_free(&spec, NULL);
        return rc > 0 ? 0 : EXIT_USAGE;
    }
    if (identity_given && !replicas_given) {
        fprintf(stderr, "cloister dev: --identity goes with --replicas N\n");
        cl_options_free(&spec, NULL);
        return EXIT_USAGE;
    }
    const char *clash = NULL;
    if (replicas_given && o.acme)
        clash = "--acme and --replicas N are not combined here (tests/integration/acme_replicas.sh runs ACME behind a balancer)";
    else if (replicas_given && strcmp(o.network, "proxies"))
        clash = "--network tap and --replicas N are not combined here (each replica needs its own tap subnet)";
    else if (o.app && !strcmp(o.app, "wallet") && (replicas_given || o.acme || strcmp(o.network, "proxies")))
        clash = "--app wallet runs alone (not with --replicas, --acme or --network tap)";
    else if (o.acme && strcmp(o.network, "proxies"))
        clash = "--acme goes with --network proxies (the enclave reaches Pebble through the host's outbound proxy)";
    if (clash) {
        fprintf(stderr, "cloister dev: %s\n", clash);
        cl_options_free(&spec, NULL);
        return EXIT_USAGE;
    }
    /* --replicas 1 given: one replica, behind HAProxy all the same */
    int status = replicas_given ? dev_replicas_run(&o) : run_dev(&o, app_port_given);
    cl_options_free(&spec, NULL);
    return status;
}

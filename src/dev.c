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
#define STOP_TIMEOUT_MS 15000

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

void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    fflush(stdout);
}

/* A process of our own: its own process group (Ctrl-C reaches only us, and
 * we stop things in order), killed if we die, output in its log file. */
int spawn(dev *d, proc *p, const char *name, char *const argv[])
{
    p->name = name;
    snprintf(p->log, sizeof p->log, "%s/%s.log", d->run, name);
    int log = open(p->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    CL_ENSURE(log >= 0, CL_EIO, "cannot create %s: %s", p->log, strerror(errno));
    cl_process_spec spec = {.program = argv[0], .argv = argv, .own_group = true, .die_with_parent = true,
                            .stdout_fd = log, .stderr_fd = log};
    pid_t pid;
    int rc = cl_process_spawn(&spec, &pid);
    close(log);
    CL_TRY(rc);
    p->pid = pid;
    return CL_OK;
}

/* False once p has exited (and reaps it). */
bool alive(proc *p)
{
    if (p->pid <= 0)
        return false;
    int status;
    bool exited;
    int r = cl_process_wait(p->pid, 0, &exited, &status);
    if (r < 0)
        cl_error_clear(); /* not ours to wait for: taken as running, as before */
    if (r == CL_OK && exited) {
        p->pid = -status - 1; /* remembered for the report: <= -1 */
        return false;
    }
    return true;
}

void describe_exit(const proc *p, char *out, size_t len)
{
    int status = -p->pid - 1;
    if (WIFSIGNALED(status))
        snprintf(out, len, "killed by signal %d", WTERMSIG(status));
    else
        snprintf(out, len, "exit status %d", WEXITSTATUS(status));
}

void show_log(const proc *p, int lines)
{
    FILE *f = fopen(p->log, "r");
    if (!f)
        return;
    char *all[64] = {0};
    char buf[1024];
    int n = 0;
    if (lines > 64)
        lines = 64;
    while (fgets(buf, sizeof buf, f)) {
        free(all[n % lines]);
        all[n % lines] = strdup(buf);
        n++;
    }
    fclose(f);
    fprintf(stderr, "--- %s (last lines of %s) ---\n", p->name, p->log);
    for (int i = n > lines ? n - lines : 0; i < n; i++) {
        fputs(all[i % lines] ? all[i % lines] : "", stderr);
        free(all[i % lines]);
        all[i % lines] = NULL;
    }
}

/* Takes pending SIGINT/SIGTERM (stop) and SIGCHLD (looked at by callers). */
static void take_signals(dev *d)
{
    struct signalfd_siginfo si;
    while (read(d->sigfd, &si, sizeof si) == (ssize_t)sizeof si)
        if (si.ssi_signo == SIGINT || si.ssi_signo == SIGTERM)
            d->stop_requested = true;
}

void pause_ms(dev *d, int ms)
{
    struct pollfd pfd = {.fd = d->sigfd, .events = POLLIN};
    poll(&pfd, 1, ms);
    take_signals(d);
}

int stop_proc(dev *d, proc *p)
{
    if (!alive(p))
        return CL_OK;
    kill(p->pid, SIGTERM);
    uint64_t deadline = cl_monotonic_ms() + STOP_TIMEOUT_MS;
    while (alive(p) && cl_monotonic_ms() < deadline)
        pause_ms(d, 50);
    if (alive(p)) {
        fprintf(stderr, "cloister dev: %s did not stop in %d s; killing it\n", p->name, STOP_TIMEOUT_MS / 1000);
        cl_process_stop(p->pid, 0, NULL); /* the grace has passed: SIGKILL to its group */
        p->pid = -1;
    }
    return CL_OK;
}

int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    if ((flag == FTW_DP ? rmdir(path) : unlink(path)) < 0 && errno != ENOENT)
        fprintf(stderr, "cloister dev: cannot remove %s: %s\n", path, strerror(errno));
    return 0;
}

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

/* Waits until ready() holds, while proc stays alive; false on timeout,
 * exit or a stop request (with the reason said). */
bool wait_for(dev *d, proc *p, const char *what, bool (*ready)(dev *), int timeout_ms)
{
    uint64_t deadline = cl_monotonic_ms() + (uint64_t)timeout_ms;
    for (;;) {
        if (ready(d))
            return true;
        if (d->stop_requested)
            return false;
        if (!alive(p)) {
            char st[64];
            describe_exit(p, st, sizeof st);
            fprintf(stderr, "cloister dev: %s exited while starting (%s)\n", p->name, st);
            show_log(p, 30);
            return false;
        }
        if (cl_monotonic_ms() > deadline) {
            fprintf(stderr, "cloister dev: %s: not within %d s\n", what, timeout_ms / 1000);
            show_log(p, 30);
            return false;
        }
        pause_ms(d, 50);
    }
}

static bool sim_ready(dev *d)
{
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/nsm.sock", d->run);
    struct stat st;
    return stat(path, &st) == 0 && S_ISSOCK(st.st_mode);
}

bool tcp_accepts(unsigned port)
{
    char text[32];
    snprintf(text, sizeof text, "tcp:127.0.0.1:%u", port);
    cl_address a;
    int fd = -1;
    if (cl_address_parse(text, &a) < 0 || cl_address_connect(&a, &fd) < 0)
        return false;
    close(fd);
    return true;
}

static bool imds_ready(dev *d) { return tcp_accepts(d->imds_port); }

int run_self(dev *d, const char *name, char *const argv[]);

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

void print_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    char buf[1024];
    while (fgets(buf, sizeof buf, f))
        fputs(buf, stdout);
    fclose(f);
    fflush(stdout);
}

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

/* Can this process make a network namespace?  Tried once, with the tool
 * the enclave command uses. */
bool netns_possible(const char **why)
{
    if (geteuid() != 0) {
        *why = "not running as root";
        return false;
    }
    int status = system("unshare --net true >/dev/null 2>&1");
    if (status != 0) {
        *why = "unshare --net failed (no network namespaces here?)";
        return false;
    }
    return true;
}

unsigned free_port(void)
{
    cl_address a;
    int fd = -1;
    if (cl_address_parse("tcp:127.0.0.1:0", &a) < 0 || cl_address_listen(&a, 1, &fd) < 0)
        return 0;
    struct sockaddr_in sin;
    socklen_t len = sizeof sin;
    unsigned port = getsockname(fd, (struct sockaddr *)&sin, &len) == 0 ? ntohs(sin.sin_port) : 0;
    close(fd);
    return port;
}

/* A word for sh -c, single-quoted. */
int shell_quote(cl_buf *out, const char *word)
{
    CL_TRY(cl_buf_append(out, "'", 1));
    for (const char *p = word; *p; p++)
        CL_TRY(*p == '\'' ? cl_buf_append(out, "'\\''", 4) : cl_buf_append(out, p, 1));
    return cl_buf_append(out, "' ", 2);
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

/* Random credentials in AWS's shapes: AKIA + 16 of base32, 40 of base64. */
int make_credentials(char *key, size_t key_len, char *secret, size_t secret_len)
{
    static const char b32[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    uint8_t r[56];
    CL_ENSURE_OSSL(key_len > 20 && secret_len > 40 && RAND_bytes(r, sizeof r) == 1, CL_ECRYPTO, "no randomness");
    memcpy(key, "AKIA", 4);
    for (int i = 0; i < 16; i++)
        key[4 + i] = b32[r[i] % 32];
    key[20] = '\0';
    for (int i = 0; i < 40; i++)
        secret[i] = b64[r[16 + i] % 64];
    secret[40] = '\0';
    cl_wipe(r, sizeof r);
    return CL_OK;
}

int file_sha384_hex(const char *path, char out[2 * 48 + 1])
{
    cl_buf data = CL_BUF_INIT;
    CL_TRY(cl_read_file(path, 256u << 20, &data));
    uint8_t md[48];
    unsigned len = 0;
    int ok = EVP_Digest(data.data, data.len, md, &len, EVP_sha384(), NULL);
    cl_buf_free(&data);
    CL_ENSURE_OSSL(ok == 1 && len == 48, CL_ECRYPTO, "SHA-384 of %s failed", path);
    cl_hex_encode(md, 48, out);
    return CL_OK;
}

int write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    CL_ENSURE(f, CL_EIO, "cannot create %s: %s", path, strerror(errno));
    bool ok = fputs(text, f) >= 0;
    ok = fclose(f) == 0 && ok;
    CL_ENSURE(ok, CL_EIO, "cannot write %s", path);
    return CL_OK;
}

/* Who calls kms-local: the instance role's session (what IMDS hands to
 * anything on the parent) and the operator, each with its own ARN. */
#define DEV_ROLE_ARN "arn:aws:sts::111122223333:assumed-role/cloister-dev-instance/i-0cloisterdev"
#define DEV_OPERATOR_ARN "arn:aws:iam::111122223333:user/cloister-dev-operator"

/* A key policy: only the operator administers and encrypts; Decrypt only
 * for a Recipient whose attested PCR0 is pcr0.  Not the account root for
 * administration: in kms-local :root is every access key of the account,
 * the instance role's too, which anything on the parent gets from IMDS and
 * which could then rewrite the policy without the PCR0 condition. */
static int write_policy(const char *path, const char *pcr0)
{
    char text[2048];
    snprintf(text, sizeof text,
             "{\"Version\": \"2012-10-17\", \"Statement\": [\n"
             "  {\"Sid\": \"the operator manages and encrypts\", \"Effect\": \"Allow\",\n"
             "   \"Principal\": {\"AWS\": \"" DEV_OPERATOR_ARN "\"},\n"
             "   \"Action\": [\"kms:Encrypt\", \"kms:DescribeKey\", \"kms:GetKeyPolicy\", \"kms:PutKeyPolicy\"],"
             " \"Resource\": \"*\"},\n"
             "  {\"Sid\": \"only the enclave decrypts\", \"Effect\": \"Allow\",\n"
             "   \"Principal\": {\"AWS\": \"arn:aws:iam::111122223333:root\"},\n"
             "   \"Action\": [\"kms:Decrypt\"], \"Resource\": \"*\",\n"
             "   \"Condition\": {\"StringEqualsIgnoreCase\": {\"kms:RecipientAttestation:PCR0\": \"%s\"}}}]}\n",
             pcr0);
    return write_text(path, text);
}

static bool kms_ready(dev *d)
{
    FILE *f = fopen(d->kms.log, "r");
    if (!f)
        return false;
    char line[512];
    bool up = false;
    while (!up && fgets(line, sizeof line, f))
        up = strncmp(line, "kms-local: listening on ", 24) == 0;
    fclose(f);
    return up;
}

/* Runs this binary with argv (a subcommand and its arguments), output to
 * RUN/NAME.out; its exit status, or -1. */
int run_self(dev *d, const char *name, char *const argv[])
{
    char out[PATH_MAX + 32];
    snprintf(out, sizeof out, "%s/%s.out", d->run, name);
    int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    cl_process_spec spec = {.program = d->self, .argv = argv, .keep_stdin = true, .stdout_fd = fd, .stderr_fd = fd};
    pid_t pid;
    int rc = cl_process_spawn(&spec, &pid);
    close(fd);
    int status = 0;
    bool exited = false;
    if (rc < 0 || cl_process_wait(pid, -1, &exited, &status) < 0 || !exited) {
        cl_error_clear();
        return -1;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

bool file_contains(const char *path, const char *needle)
{
    cl_buf b = CL_BUF_INIT;
    bool found = cl_read_file(path, 1 << 20, &b) == CL_OK && b.len && memmem(b.data, b.len, needle, strlen(needle));
    cl_buf_free(&b);
    return found;
}

/* kms-local with two keys: alias/dev opens for this enclave's PCR0,
 * alias/other-pcr0 for another image's only; the demo secret encrypted
 * under each by the operator, outside the enclave. */
bool start_kms(dev *d)
{
    char pol_dev[PATH_MAX + 32], pol_other[PATH_MAX + 32], state[PATH_MAX + 16], listen[64], root[PATH_MAX + 32];
    char creds_role[256], creds_oper[256], key_dev[PATH_MAX + 48], key_other[PATH_MAX + 48];
    char other_pcr0[2 * 48 + 1];
    memset(other_pcr0, 'a', 96);
    other_pcr0[96] = '\0';
    snprintf(pol_dev, sizeof pol_dev, "%s/policy-dev.json", d->run);
    snprintf(pol_other, sizeof pol_other, "%s/policy-other-pcr0.json", d->run);
    if (write_policy(pol_dev, d->pcr0) < 0 || write_policy(pol_other, other_pcr0) < 0) {
        fprintf(stderr, "cloister dev: %s\n", cl_error_message());
        return false;
    }
    snprintf(state, sizeof state, "%s/kms", d->run);
    snprintf(listen, sizeof listen, "tcp:127.0.0.1:%u", d->kms_port);
    snprintf(root, sizeof root, "%s/state/root.pem", d->run);
    snprintf(creds_role, sizeof creds_role, "%s:%s:" DEV_ROLE_ARN, d->role_key, d->role_secret);
    snprintf(creds_oper, sizeof creds_oper, "%s:%s:" DEV_OPERATOR_ARN, d->oper_key, d->oper_secret);
    snprintf(key_dev, sizeof key_dev, "alias/dev=%s", pol_dev);
    snprintf(key_other, sizeof key_other, "alias/other-pcr0=%s", pol_other);
    char *kms_argv[] = {d->self, "kms-local", "--listen", listen, "--state", state, "--region", "us-east-1", "--tls",
                        "--credentials", creds_role, "--credentials", creds_oper, "--root", root, "--key", key_dev,
                        "--key", key_other, d->extra_kms_key ? "--key" : NULL, (char *)d->extra_kms_key, NULL};
    if (spawn(d, &d->kms, "kms-local", kms_argv) < 0 || !wait_for(d, &d->kms, "kms-local", kms_ready, 15000))
        return false;

    /* the operator: a random secret, encrypted under each key, straight to kms-local */
    uint8_t raw[24];
    char secret[2 * sizeof raw + 16], plain[PATH_MAX + 16], endpoint[64], ca[PATH_MAX + 16];
    if (RAND_bytes(raw, sizeof raw) != 1)
        return false;
    memcpy(secret, "dev-", 4);
    cl_hex_encode(raw, sizeof raw, secret + 4);
    cl_wipe(raw, sizeof raw);
    uint8_t md[32];
    unsigned mdlen = 0;
    EVP_Digest(secret, strlen(secret), md, &mdlen, EVP_sha256(), NULL);
    cl_hex_encode(md, 32, d->secret_sha256);
    snprintf(plain, sizeof plain, "%s/secret.txt", d->run);
    snprintf(endpoint, sizeof endpoint, "https://localhost:%u", d->kms_port);
    snprintf(ca, sizeof ca, "%s/kms/ca.pem", d->run);
    bool ok = write_text(plain, secret) == CL_OK;
    cl_wipe(secret, sizeof secret);
    const char *keys[2] = {"alias/dev", "alias/other-pcr0"}, *names[2] = {"secret-dev.ct", "secret-other-pcr0.ct"};
    for (int i = 0; ok && i < 2; i++) {
        char out[PATH_MAX + 32];
        snprintf(out, sizeof out, "%s/%s", d->run, names[i]);
        char *enc_argv[] = {d->self, "kms", "--region", "us-east-1", "--endpoint", endpoint, "--ca-file", ca,
                            "--access-key-id", d->oper_key, "--secret-access-key", d->oper_secret, "encrypt",
                            "--key-id", (char *)keys[i], "--purpose", "enclave-secret:demo", "--in", plain, "-o", out,
                            NULL};
        ok = run_self(d, "encrypt", enc_argv) == 0;
        if (!ok) {
            char path[PATH_MAX + 16];
            snprintf(path, sizeof path, "%s/encrypt.out", d->run);
            fprintf(stderr, "cloister dev: encrypting the demo secret under %s failed:\n", keys[i]);
            print_file(path);
        }
    }
    unlink(plain);
    return ok;
}

/* examples/hello/app.py beside the build directory, or under $CLOISTER_SOURCE_DIR. */
bool find_example_app(const dev *d, char *out, size_t len)
{
    const char *src = getenv("CLOISTER_SOURCE_DIR");
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", d->self);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    const char *candidates[3] = {src, dir, NULL};
    for (size_t i = 0; i < 2; i++) {
        if (!candidates[i])
            continue;
        const char *fmt = i == 0 ? "%s/examples/hello/app.py" : "%s/../examples/hello/app.py";
        snprintf(out, len, fmt, candidates[i]);
        if (access(out, R_OK) == 0) {
            char *real = realpath(out, NULL);
            if (real) {
                snprintf(out, len, "%s", real);
                free(real);
            }
            return true;
        }
    }
    return false;
}

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

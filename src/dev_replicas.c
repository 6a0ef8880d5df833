/* cloister dev --replicas N: scale-out on one machine.
 *
 *   haproxy (Debian's)  TCP mode on 127.0.0.1:--port, round robin, PROXY
 *                       protocol v2 to every replica, an HTTP check of each
 *                       replica's /enclave/health (through its host)
 *   replica I           its own nsm-sim (instance id i-0cloisterdevI..., one
 *                       state directory, so one root), its own cloister host
 *                       (forward, health forward, IMDS gate, KMS proxy,
 *                       watchdog) and, through the watchdog, cloister enclave
 *                       + the example app in its own network namespace; its
 *                       vsock stand-in is RUN/rI/vsock, so every replica has
 *                       the CIDs and ports of Nitro
 *   imds-sim, kms-local shared, as the region's services are
 *
 * Identity: --identity kms gives every replica one certificate whose key is a
 * KMS ciphertext that only this PCR0 opens (--tls-key-ciphertext); sync
 * hands the leader's key to the others by attested key sync.
 *
 * The host forwards HAProxy's bytes as they are, PROXY header included, so
 * the enclave sees the client's address rather than the balancer's.  A
 * replica whose host exits (SIGTERM: it drains) is reported, and the rest
 * keep serving; SIGUSR1 to `cloister dev` starts again every replica that
 * is not running. */
#include "cloister/core/address.h"
#include "cloister/core/buf.h"
#include "cloister/core/clock.h"
#include "cloister/core/https_client.h"
#include "cloister/core/process.h"
#include "commands.h"
#include "dev.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_REPLICAS 16
#define ENCLAVE_INTPORT 8080
#define ENCLAVE_APPPORT 8081
#define HEALTH_VSOCK_PORT "8444"
#define START_TIMEOUT_MS 90000
/* the drain: the balancer checks every 500 ms and takes a replica out after
 * two failures, well within the grace */
#define DRAIN_GRACE "3"
#define DRAIN_TIMEOUT "10"
#define VERIFY_ROUNDS_PER_REPLICA 3
/* key sync: each enclave's sync listener (-ext-priv-listen) is vsock port
 * 444 of its own CID, forwarded by its host to 127.0.0.1:SYNC_I; an
 * enclave reaches replica J's through its parent's outbound proxy on
 * vsock:3:(SYNC_DIAL_BASE + J) */
#define SYNC_VSOCK_PORT "444"
#define SYNC_DIAL_BASE 8450

typedef struct replica {
    unsigned index; /* 1..N */
    char dir[PATH_MAX];
    unsigned port, health_port;  /* the host's forwards on 127.0.0.1 */
    unsigned sync_port;          /* --identity sync: the forward to its sync listener */
    unsigned intport, appport;   /* the enclave's and the app's */
    char instance_id[32];
    proc sim, host;
    bool reported; /* its exit was said */
} replica;

typedef struct fleet {
    dev d;
    unsigned n;
    bool sync;
    bool check;
    char app[PATH_MAX];
    replica r[MAX_REPLICAS];
    proc haproxy;
    char cert[PATH_MAX + 32], key_ct[PATH_MAX + 32];
} fleet;

static bool sim_socket_ready(const replica *r)
{
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/nsm.sock", r->dir);
    struct stat st;
    return stat(path, &st) == 0 && S_ISSOCK(st.st_mode);
}

/* GET /enclave/health on 127.0.0.1:port: the status, 0 when no answer. */
static int health_status(unsigned port)
{
    char text[32];
    snprintf(text, sizeof text, "tcp:127.0.0.1:%u", port);
    cl_address a;
    int fd = -1;
    if (cl_address_parse(text, &a) < 0 || cl_address_connect(&a, &fd) < 0) {
        cl_error_clear();
        return 0;
    }
    static const char req[] = "GET /enclave/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    struct timeval tv = {.tv_sec = 2};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char buf[64] = "";
    size_t got = 0;
    if (send(fd, req, sizeof req - 1, MSG_NOSIGNAL) == (ssize_t)(sizeof req - 1))
        for (ssize_t r; got < 12 && (r = recv(fd, buf + got, sizeof buf - 1 - got, 0)) > 0;)
            got += (size_t)r;
    close(fd);
    return got >= 12 && !strncmp(buf, "HTTP/1.", 7) ? atoi(buf + 9) : 0;
}

/* The enclave side of replica r, as the watchdog's local command. */
static int enclave_command(const fleet *f, const replica *r, cl_buf *out)
{
    const dev *d = &f->d;
    char nsm[PATH_MAX + 32], imds[PATH_MAX + 48], intport[16], appurl[64], kms_ca[PATH_MAX + 32],
        secret[PATH_MAX + 48], app[PATH_MAX * 2 + 128], root[PATH_MAX + 32];
    snprintf(nsm, sizeof nsm, "unix:%s/nsm.sock", r->dir);
    snprintf(imds, sizeof imds, "CLOISTER_IMDS_SOCKET=%s/vsock/3.8002", r->dir);
    snprintf(intport, sizeof intport, "%u", r->intport);
    snprintf(appurl, sizeof appurl, "http://127.0.0.1:%u", r->appport);
    snprintf(kms_ca, sizeof kms_ca, "%s/kms/ca.pem", d->run);
    snprintf(secret, sizeof secret, "demo=@%s/secret-dev.ct", d->run);
    snprintf(root, sizeof root, "%s/state/root.pem", d->run);
    cl_buf appcmd = CL_BUF_INIT;
    int rc = cl_buf_append(&appcmd, "exec python3 ", 13);
    if (rc == CL_OK)
        rc = shell_quote(&appcmd, f->app);
    snprintf(app, sizeof app, "--port %u --internal %u --root ", r->appport, r->intport);
    if (rc == CL_OK)
        rc = cl_buf_append(&appcmd, app, strlen(app));
    if (rc == CL_OK)
        rc = shell_quote(&appcmd, root);
    if (rc == CL_OK)
        rc = cl_buf_append(&appcmd, "", 1);
    CL_TRY_OUT(rc);

    CL_TRY_OUT(cl_buf_append(out, "exec env ", 9));
    static const char *const seams[] = {"CLOISTER_VSOCK_STANDIN_CID=16", "CLOISTER_LINK_NO_PEEK=1",
                                        "CLOISTER_LINK_NO_SPLICE=1"};
    CL_TRY_OUT(shell_quote(out, imds));
    for (size_t i = 0; i < sizeof seams / sizeof seams[0]; i++)
        CL_TRY_OUT(shell_quote(out, seams[i]));
    if (d->isolated)
        CL_TRY_OUT(cl_buf_append(out, "unshare --net ", 14));
    const char *words[] = {d->self, "enclave", "-fqdn", "localhost", "--nsm", nsm, "--listen",
                           "vsock:4294967295:443", "-intport", intport, "-appwebsrv", appurl, "-appcmd",
                           (const char *)appcmd.data, "--proxy-protocol", "-kms-imds", "vsock:3:8002", "-kms-proxy",
                           "vsock:3:8000", "-kms-ca-file", kms_ca, "-secret", secret, "-health-listen",
                           "vsock:4294967295:" HEALTH_VSOCK_PORT, "-drain-grace", DRAIN_GRACE, "-drain-timeout",
                           DRAIN_TIMEOUT, "-wait-for-app"};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        CL_TRY_OUT(shell_quote(out, words[i]));
    if (f->sync) {
        char leader[32], advertise[32], sync_root[PATH_MAX + 32];
        snprintf(leader, sizeof leader, "127.0.0.1:%u", f->r[0].sync_port);
        snprintf(advertise, sizeof advertise, "127.0.0.1:%u", r->sync_port);
        snprintf(sync_root, sizeof sync_root, "%s/state/root.pem", d->run);
        /* dev's cadence: registration every 500 ms, heartbeats every 2 s */
        const char *sync_words[] = {"-fqdn-leader", leader, "-ext-priv-listen", "vsock:4294967295:" SYNC_VSOCK_PORT,
                                    "-sync-advertise", advertise, "-sync-root", sync_root,
                                    "-sync-register-interval", "500ms", "-sync-heartbeat-interval", "2s",
                                    "-sync-prune-after", "10s"};
        for (size_t i = 0; i < sizeof sync_words / sizeof sync_words[0]; i++)
            CL_TRY_OUT(shell_quote(out, sync_words[i]));
        for (unsigned j = 0; j < f->n; j++) {
            char dial[64];
            snprintf(dial, sizeof dial, "127.0.0.1:%u=vsock:3:%u", f->r[j].sync_port, SYNC_DIAL_BASE + f->r[j].index);
            CL_TRY_OUT(shell_quote(out, "-sync-dial"));
            CL_TRY_OUT(shell_quote(out, dial));
        }
    } else {
        char key[PATH_MAX + 40];
        snprintf(key, sizeof key, "@%s", f->key_ct);
        const char *kms_words[] = {"--cert", f->cert, "--tls-key-ciphertext", key};
        for (size_t i = 0; i < 4; i++)
            CL_TRY_OUT(shell_quote(out, kms_words[i]));
    }
    rc = cl_buf_append(out, "", 1);
out:
    cl_buf_free(&appcmd);
    return rc;
}

static int start_host(fleet *f, replica *r)
{
    dev *d = &f->d;
    cl_buf cmd = CL_BUF_INIT;
    if (enclave_command(f, r, &cmd) < 0) {
        fprintf(stderr, "cloister dev: replica %u: %s\n", r->index, cl_error_message());
        cl_buf_free(&cmd);
        return -1;
    }
    char forward[64], health[64], imds_endpoint[64], outbound[64], standin[PATH_MAX + 8], name[16];
    snprintf(forward, sizeof forward, "tcp:127.0.0.1:%u=vsock:16:443", r->port);
    snprintf(health, sizeof health, "tcp:127.0.0.1:%u=vsock:16:" HEALTH_VSOCK_PORT ",health", r->health_port);
    snprintf(imds_endpoint, sizeof imds_endpoint, "http://127.0.0.1:%u", d->imds_port);
    snprintf(outbound, sizeof outbound, "vsock:3:8000=127.0.0.1:%u", d->kms_port);
    snprintf(standin, sizeof standin, "%s/vsock", r->dir);
    snprintf(name, sizeof name, "r%u/host", r->index);
    char *base[] = {d->self, "host", "--forward", forward, "--forward", health, "--imds", "vsock:3:8002",
                    "--imds-endpoint", imds_endpoint, "--outbound", outbound, "--workers", "1",
                    "--enclave-command", (char *)cmd.data, "--health-connect", "vsock:16:443", "--health-interval",
                    "1s", "--backoff-initial", "500ms", "--drain-url", "vsock:16:" HEALTH_VSOCK_PORT ",/enclave/drain",
                    "--drain-wait", "20s", "--stop-grace", "5s", "--drain-grace", DRAIN_GRACE "s", "--drain-timeout",
                    "25s"};
    enum { BASE = sizeof base / sizeof base[0] };
    char *argv[BASE + 2 + 2 * MAX_REPLICAS + 1];
    char sync_fwd[64], sync_out[MAX_REPLICAS][64];
    memcpy(argv, base, sizeof base);
    size_t argc = BASE;
    if (f->sync) {
        /* its enclave's sync listener, and every replica's for its enclave */
        snprintf(sync_fwd, sizeof sync_fwd, "tcp:127.0.0.1:%u=vsock:16:" SYNC_VSOCK_PORT, r->sync_port);
        argv[argc++] = "--forward";
        argv[argc++] = sync_fwd;
        for (unsigned j = 0; j < f->n; j++) {
            snprintf(sync_out[j], sizeof sync_out[j], "vsock:3:%u=127.0.0.1:%u", SYNC_DIAL_BASE + f->r[j].index,
                     f->r[j].sync_port);
            argv[argc++] = "--outbound";
            argv[argc++] = sync_out[j];
        }
    }
    argv[argc] = NULL;
    /* this replica's vsock stand-in: the host and, through it, its enclave */
    setenv("CLOISTER_VSOCK_STANDIN", standin, 1);
    int rc = spawn(d, &r->host, name, argv);
    unsetenv("CLOISTER_VSOCK_STANDIN");
    cl_buf_free(&cmd);
    r->reported = false;
    return rc < 0 ? -1 : 0;
}

static int start_sim(fleet *f, replica *r)
{
    dev *d = &f->d;
    char listen[PATH_MAX + 16], state[PATH_MAX + 16], name[16];
    snprintf(listen, sizeof listen, "unix:%s/nsm.sock", r->dir);
    snprintf(state, sizeof state, "%s/state", d->run);
    snprintf(name, sizeof name, "r%u/nsm-sim", r->index);
    char *argv[] = {d->self, "nsm-sim", "--listen", listen, "--state", state, "--image", d->self, "--instance-id",
                    r->instance_id, NULL};
    if (spawn(d, &r->sim, name, argv) < 0)
        return -1;
    uint64_t deadline = cl_monotonic_ms() + 10000;
    while (!sim_socket_ready(r)) {
        if (!alive(&r->sim) || cl_monotonic_ms() > deadline || d->stop_requested) {
            fprintf(stderr, "cloister dev: replica %u: the NSM simulator did not start\n", r->index);
            show_log(&r->sim, 20);
            return -1;
        }
        pause_ms(d, 20);
    }
    return 0;
}

/* The shared certificate and its key as a KMS ciphertext (purpose
 * enclave-tls-key) under alias/dev, which only this PCR0 opens: made by the
 * operator outside; the plaintext key is removed at once. */
static int make_kms_identity(fleet *f)
{
    dev *d = &f->d;
    char key[PATH_MAX + 32], cmd[3 * PATH_MAX + 256], endpoint[64], ca[PATH_MAX + 16];
    snprintf(f->cert, sizeof f->cert, "%s/tls-cert.pem", d->run);
    snprintf(f->key_ct, sizeof f->key_ct, "%s/tls-key.ct", d->run);
    snprintf(key, sizeof key, "%s/tls-key.pem", d->run);
    snprintf(cmd, sizeof cmd,
             "umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 "
             "-subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout '%s' -out '%s' "
             ">'%s/openssl.out' 2>&1",
             key, f->cert, d->run);
    if (system(cmd) != 0) {
        fprintf(stderr, "cloister dev: openssl could not make the shared certificate (%s/openssl.out)\n", d->run);
        return -1;
    }
    snprintf(endpoint, sizeof endpoint, "https://localhost:%u", d->kms_port);
    snprintf(ca, sizeof ca, "%s/kms/ca.pem", d->run);
    char *argv[] = {d->self, "kms", "--region", "us-east-1", "--endpoint", endpoint, "--ca-file", ca,
                    "--access-key-id", d->oper_key, "--secret-access-key", d->oper_secret, "encrypt", "--key-id",
                    "alias/dev", "--purpose", "enclave-tls-key", "--in", key, "-o", f->key_ct, NULL};
    int status = run_self(d, "encrypt-tls-key", argv);
    unlink(key);
    if (status != 0) {
        char out[PATH_MAX + 32];
        snprintf(out, sizeof out, "%s/encrypt-tls-key.out", d->run);
        fprintf(stderr, "cloister dev: encrypting the shared TLS key under alias/dev failed:\n");
        print_file(out);
        return -1;
    }
    return 0;
}

static int write_haproxy_config(fleet *f, char *path, size_t len)
{
    dev *d = &f->d;
    snprintf(path, len, "%s/haproxy.cfg", d->run);
    FILE *out = fopen(path, "w");
    CL_ENSURE(out, CL_EIO, "cannot create %s: %s", path, strerror(errno));
    fprintf(out,
            "# written by cloister dev --replicas %u\n"
            "global\n"
            "    log stderr format raw local0 info\n"
            "    maxconn 4096\n"
            "    stats socket %s/haproxy.sock mode 600 level admin\n"
            "defaults\n"
            "    mode tcp\n"
            "    log global\n"
            "    option tcplog\n"
            "    option dontlognull\n"
            "    timeout connect 2s\n"
            "    timeout client 60s\n"
            "    timeout server 60s\n"
            "    # a connection a replica refuses goes to another one\n"
            "    retries 3\n"
            "    option redispatch 1\n"
            "frontend https\n"
            "    bind 127.0.0.1:%u\n"
            "    default_backend replicas\n"
            "backend replicas\n"
            "    balance roundrobin\n"
            "    # the enclave's own view, through its host (which answers 503 itself while it drains)\n"
            "    option httpchk GET /enclave/health\n"
            "    http-check expect status 200\n"
            "    default-server send-proxy-v2 inter 500ms fall 2 rise 2\n",
            f->n, d->run, d->port);
    for (unsigned i = 0; i < f->n; i++)
        fprintf(out, "    server r%u 127.0.0.1:%u check port %u\n", f->r[i].index, f->r[i].port,
                f->r[i].health_port);
    bool ok = !ferror(out);
    ok = fclose(out) == 0 && ok;
    CL_ENSURE(ok, CL_EIO, "cannot write %s", path);
    return CL_OK;
}

/* Where tests and people find each replica: "I HOST_PID PORT HEALTH_PORT DIR". */
static void write_replica_table(const fleet *f)
{
    char path[PATH_MAX + 16], tmp[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/replicas.txt", f->d.run);
    snprintf(tmp, sizeof tmp, "%s/replicas.tmp", f->d.run);
    FILE *out = fopen(tmp, "w");
    if (!out)
        return;
    for (unsigned i = 0; i < f->n; i++)
        fprintf(out, "%u %d %u %u %s\n", f->r[i].index, f->r[i].host.pid > 0 ? (int)f->r[i].host.pid : 0,
                f->r[i].port, f->r[i].health_port, f->r[i].dir);
    if (fclose(out) == 0)
        rename(tmp, path);
}

/* Waits until r's health check says 200 (its host still running). */
static bool wait_healthy(fleet *f, replica *r, uint64_t deadline)
{
    while (health_status(r->health_port) != 200) {
        if (f->d.stop_requested)
            return false;
        if (!alive(&r->host) || cl_monotonic_ms() > deadline) {
            fprintf(stderr, "cloister dev: replica %u did not become healthy%s\n", r->index,
                    alive(&r->host) ? " in time" : " (its host exited)");
            show_log(&r->host, 30);
            return false;
        }
        pause_ms(&f->d, 100);
    }
    return true;
}

static bool all_healthy(fleet *f)
{
    for (unsigned i = 0; i < f->n; i++) {
        if (!alive(&f->r[i].host)) {
            char st[64];
            describe_exit(&f->r[i].host, st, sizeof st);
            fprintf(stderr, "cloister dev: replica %u's host exited while starting (%s)\n", f->r[i].index, st);
            show_log(&f->r[i].host, 30);
            return false;
        }
    }
    uint64_t deadline = cl_monotonic_ms() + START_TIMEOUT_MS;
    for (unsigned i = 0; i < f->n; i++)
        if (!wait_healthy(f, &f->r[i], deadline))
            return false;
    return true;
}

/* `cloister verify` through the balancer: the certificate and module of one
 * connection, false when it was not proven. */
static bool verify_once(fleet *f, char cert[65], char module[128])
{
    dev *d = &f->d;
    char url[64], root[PATH_MAX + 16], out[PATH_MAX + 16];
    snprintf(url, sizeof url, "https://127.0.0.1:%u", d->port);
    snprintf(root, sizeof root, "%s/state/root.pem", d->run);
    snprintf(out, sizeof out, "%s/verify.out", d->run);
    char *argv[] = {d->self, "verify", url, "--root", root, "--timeout", "10", NULL};
    int status = run_self(d, "verify", argv);
    cert[0] = module[0] = '\0';
    FILE *in = fopen(out, "r");
    if (in) {
        char line[512];
        while (fgets(line, sizeof line, in)) {
            sscanf(line, " certificate %64s", cert);
            sscanf(line, " module %127s", module);
        }
        fclose(in);
    }
    return status == 0 && cert[0] && module[0];
}

/* Every replica presents the same certificate, each connection proven. */
static bool check_identity(fleet *f)
{
    unsigned rounds = VERIFY_ROUNDS_PER_REPLICA * f->n;
    char first[65] = "", modules[MAX_REPLICAS][128];
    unsigned distinct = 0, proven = 0;
    bool same = true;
    for (unsigned i = 0; i < rounds; i++) {
        char cert[65], module[128];
        bool ok = verify_once(f, cert, module);
        proven += ok;
        if (!ok) {
            char out[PATH_MAX + 16];
            snprintf(out, sizeof out, "%s/verify.out", f->d.run);
            say("FAIL  cloister verify #%u through HAProxy:", i + 1);
            print_file(out);
            continue;
        }
        if (!first[0])
            snprintf(first, sizeof first, "%s", cert);
        same = same && !strcmp(first, cert);
        bool seen = false;
        for (unsigned k = 0; k < distinct; k++)
            seen = seen || !strcmp(modules[k], module);
        if (!seen && distinct < MAX_REPLICAS)
            snprintf(modules[distinct++], sizeof modules[0], "%s", module);
        say("      verify #%-2u  certificate %.16s...  module %s  PROVEN", i + 1, cert, module);
    }
    bool ok = proven == rounds && same && distinct == f->n;
    say("%s  %u/%u connections through HAProxy proven; %s certificate (%.16s...) from %u distinct enclaves "
        "(of %u)",
        ok ? "ok  " : "FAIL", proven, rounds, same ? "one" : "MORE THAN ONE", first, distinct, f->n);
    return ok;
}

static bool check_app(fleet *f)
{
    cl_https_target t = {.host = "127.0.0.1", .port = f->d.port};
    snprintf(t.authority, sizeof t.authority, "127.0.0.1:%u", f->d.port);
    bool ok = true;
    for (unsigned i = 0; i < f->n; i++) {
        cl_https_response r;
        int rc = cl_https_get(&t, NULL, "/api/hello", 64 * 1024, &r);
        static const char want[] = "\"client\": \"127.0.0.1\"";
        bool good = rc == CL_OK && r.status == 200 && r.body.len && memmem(r.body.data, r.body.len, want,
                                                                           strlen(want));
        if (!good)
            say("FAIL  GET /api/hello through HAProxy: %s", rc < 0 ? cl_error_message() : "unexpected answer");
        ok = ok && good;
        if (rc == CL_OK)
            cl_https_response_free(&r);
    }
    if (ok)
        say("ok    GET /api/hello x%u  200  (client -> HAProxy (PROXY v2) -> host -> enclave TLS -> app, which "
            "sees the client's address)",
            f->n);
    return ok;
}

/* kms: each replica opened the one ciphertext itself; nobody synced. */
static bool check_kms_mode(fleet *f)
{
    bool ok = true;
    for (unsigned i = 0; i < f->n; i++) {
        bool opened = file_contains(f->r[i].host.log, "event=tls_key_opened");
        bool synced = file_contains(f->r[i].host.log, "/enclave/sync") ||
                      file_contains(f->r[i].host.log, "event=sync");
        if (!opened || synced)
            say("FAIL  replica %u: %s", f->r[i].index,
                !opened ? "did not open the TLS key from KMS" : "has key-sync traffic in its log");
        ok = ok && opened && !synced;
    }
    if (ok)
        say("ok    identity kms: each of the %u replicas opened the one KMS-encrypted TLS key itself (alias/dev, "
            "PCR0 %.16s...); no key sync",
            f->n, f->d.pcr0);
    return ok;
}

/* The first line of path holding needle, without its end of line. */
static bool find_line(const char *path, const char *needle, char *out, size_t len)
{
    FILE *in = fopen(path, "r");
    if (!in)
        return false;
    char line[4096];
    bool found = false;
    while (!found && fgets(line, sizeof line, in))
        if (strstr(line, needle)) {
            line[strcspn(line, "\n")] = '\0';
            snprintf(out, len, "%s", line);
            found = true;
        }
    fclose(in);
    return found;
}

/* sync: replica 1 leads; each worker verified the leader's document and the
 * leader each worker's, and each worker installed the leader's keys. */
static bool check_sync_mode(fleet *f)
{
    char line[4096], needle[128];
    const char *leader_log = f->r[0].host.log;
    bool ok = find_line(leader_log, "event=sync_role role=leader", line, sizeof line);
    say("%s  leader: replica 1 (its log: sync_role role=leader)", ok ? "ok  " : "FAIL");
    for (unsigned i = 1; i < f->n; i++) {
        replica *r = &f->r[i];
        bool worker = find_line(r->host.log, "event=sync_role role=worker", line, sizeof line);
        bool verified = find_line(r->host.log, "event=sync_leader_verified", line, sizeof line);
        bool by_pcrs = verified && strstr(line, "by=equal-pcrs");
        bool installed = find_line(r->host.log, "event=sync_keys_installed", line, sizeof line);
        snprintf(needle, sizeof needle, "event=sync_worker_verified worker=127.0.0.1:%u", r->sync_port);
        bool leader_verified = find_line(leader_log, needle, line, sizeof line);
        bool leader_by_pcrs = leader_verified && strstr(line, "by=equal-pcrs");
        bool good = worker && by_pcrs && installed && leader_by_pcrs;
        say("%s  replica %u: worker; it verified the leader's attestation (%s), the leader verified its (%s); it "
            "installed the leader's keys (%s)",
            good ? "ok  " : "FAIL", r->index, by_pcrs ? "PCRs equal but PCR4" : "NOT SEEN",
            leader_by_pcrs ? "PCRs equal but PCR4" : "NOT SEEN", installed ? "sync_keys_installed" : "NOT SEEN");
        ok = ok && good;
    }
    return ok;
}

static void stop_fleet(fleet *f)
{
    dev *d = &f->d;
    stop_proc(d, &f->haproxy);
    /* every host drains at once; each stops its enclave */
    for (unsigned i = 0; i < f->n; i++)
        if (alive(&f->r[i].host))
            kill(f->r[i].host.pid, SIGTERM);
    for (unsigned i = 0; i < f->n; i++)
        stop_proc(d, &f->r[i].host);
    stop_proc(d, &d->kms);
    stop_proc(d, &d->imds);
    for (unsigned i = 0; i < f->n; i++)
        stop_proc(d, &f->r[i].sim);
    if (d->made_run)
        nftw(d->run, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* name on $PATH or in the sbin directories (haproxy is in /usr/sbin, which
 * an ordinary user's PATH may lack). */
static bool find_program(const char *name, char *out, size_t len)
{
    const char *path = getenv("PATH");
    char dirs[4096];
    snprintf(dirs, sizeof dirs, "%s:/usr/sbin:/sbin:/usr/local/sbin", path ? path : "/usr/bin:/bin");
    for (char *save = NULL, *dir = strtok_r(dirs, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
        snprintf(out, len, "%s/%s", dir, name);
        if (access(out, X_OK) == 0)
            return true;
    }
    return false;
}

static bool haproxy_ready(dev *d)
{
    return tcp_accepts(d->port);
}

/* Starts again the replicas whose host is not running (SIGUSR1). */
static void restart_stopped(fleet *f)
{
    for (unsigned i = 0; i < f->n; i++) {
        replica *r = &f->r[i];
        if (alive(&r->host))
            continue;
        say("cloister dev: starting replica %u again", r->index);
        if (start_host(f, r) < 0)
            say("cloister dev: replica %u could not be started again", r->index);
    }
    write_replica_table(f);
}

static void watch(fleet *f)
{
    dev *d = &f->d;
    while (!d->stop_requested) {
        struct pollfd pfd = {.fd = d->sigfd, .events = POLLIN};
        poll(&pfd, 1, 500);
        struct signalfd_siginfo si;
        while (read(d->sigfd, &si, sizeof si) == (ssize_t)sizeof si) {
            if (si.ssi_signo == SIGINT || si.ssi_signo == SIGTERM)
                d->stop_requested = true;
            else if (si.ssi_signo == SIGUSR1)
                restart_stopped(f);
        }
        proc *shared[] = {&f->haproxy, &d->kms, &d->imds};
        for (size_t i = 0; i < sizeof shared / sizeof shared[0]; i++)
            if (!alive(shared[i])) {
                char st[64];
                describe_exit(shared[i], st, sizeof st);
                fprintf(stderr, "cloister dev: %s exited (%s); stopping everything\n", shared[i]->name, st);
                show_log(shared[i], 30);
                return;
            }
        for (unsigned i = 0; i < f->n; i++) {
            replica *r = &f->r[i];
            if (!alive(&r->host) && !r->reported) {
                char st[64];
                describe_exit(&r->host, st, sizeof st);
                say("cloister dev: replica %u's host exited (%s); the others keep serving (SIGUSR1 starts it again)",
                    r->index, st);
                r->reported = true;
            }
        }
    }
}

int dev_replicas_run(const dev_options *o)
{
    fleet *f = calloc(1, sizeof *f);
    if (!f) {
        fprintf(stderr, "cloister dev: out of memory\n");
        return EXIT_FAILED;
    }
    dev *d = &f->d;
    d->sigfd = -1;
    d->port = o->port;
    f->n = o->replicas;
    f->sync = o->identity && !strcmp(o->identity, "sync");
    f->check = o->check;
    int status = EXIT_FAILED;
    if (o->app || (o->fidelity && strcmp(o->fidelity, "nitro"))) {
        fprintf(stderr, "cloister dev: --replicas runs examples/hello/app.py with --fidelity nitro only\n");
        free(f);
        return EXIT_USAGE;
    }
    ssize_t len = readlink("/proc/self/exe", d->self, sizeof d->self - 1);
    if (len <= 0) {
        fprintf(stderr, "cloister dev: cannot find this program's path: %s\n", strerror(errno));
        free(f);
        return EXIT_FAILED;
    }
    d->self[len] = '\0';
    if (!find_example_app(d, f->app, sizeof f->app)) {
        fprintf(stderr, "cloister dev: examples/hello/app.py not found beside %s\n", d->self);
        free(f);
        return EXIT_USAGE;
    }
    if (tcp_accepts(d->port)) {
        fprintf(stderr, "cloister dev: 127.0.0.1:%u is already in use; give --port N\n", d->port);
        free(f);
        return EXIT_FAILED;
    }
    if (o->run_dir) {
        if (mkdir(o->run_dir, 0700) < 0) {
            fprintf(stderr, "cloister dev: --run-dir %s: %s\n", o->run_dir, strerror(errno));
            free(f);
            return EXIT_USAGE;
        }
        char *real = realpath(o->run_dir, NULL);
        snprintf(d->run, sizeof d->run, "%s", real ? real : o->run_dir);
        free(real);
    } else {
        const char *tmp = getenv("TMPDIR");
        snprintf(d->run, sizeof d->run, "%s/cloister-dev.XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(d->run)) {
            fprintf(stderr, "cloister dev: cannot make a run directory: %s\n", strerror(errno));
            free(f);
            return EXIT_FAILED;
        }
    }
    d->made_run = true;
    if (strlen(d->run) + sizeof "/r16/vsock/4294967295.443" > CL_ADDRESS_PATH_MAX) {
        fprintf(stderr, "cloister dev: the run directory's path is too long for unix sockets: %s\n", d->run);
        rmdir(d->run);
        free(f);
        return EXIT_USAGE;
    }
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, NULL);
    d->sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    signal(SIGPIPE, SIG_IGN);
    /* the parent's side of every replica's stand-in; no real AF_VSOCK */
    setenv("CLOISTER_VSOCK_STANDIN_CID", "3", 1);
    setenv("CLOISTER_LINK_NO_SPLICE", "1", 1);
    setenv("CLOISTER_NO_VSOCK", "1", 1);

    const char *why = "--no-netns";
    d->isolated = !o->no_netns && netns_possible(&why);
    say("cloister dev: run directory %s; %u replicas behind HAProxy, identity %s", d->run, f->n,
        f->sync ? "sync" : "kms");
    if (!d->isolated)
        say("cloister dev: WARNING: the enclave sides are NOT isolated (%s): they share this machine's network", why);
    for (unsigned i = 0; i < f->n; i++) {
        replica *r = &f->r[i];
        r->index = i + 1;
        snprintf(r->dir, sizeof r->dir, "%s/r%u", d->run, r->index);
        char vs[PATH_MAX + 8];
        snprintf(vs, sizeof vs, "%s/vsock", r->dir);
        if (mkdir(r->dir, 0700) < 0 || mkdir(vs, 0700) < 0) {
            fprintf(stderr, "cloister dev: cannot make %s: %s\n", vs, strerror(errno));
            goto out;
        }
        snprintf(r->instance_id, sizeof r->instance_id, "i-0c1015de7de%06u", r->index);
        r->port = free_port();
        r->health_port = free_port();
        r->sync_port = f->sync ? free_port() : 0;
        r->intport = d->isolated ? ENCLAVE_INTPORT : free_port();
        r->appport = d->isolated ? ENCLAVE_APPPORT : free_port();
        if (!r->port || !r->health_port || !r->intport || !r->appport || r->port == r->health_port ||
            (f->sync && !r->sync_port)) {
            fprintf(stderr, "cloister dev: no free ports\n");
            goto out;
        }
    }
    /* replica 1's simulator makes the root all of them share, which kms-local trusts */
    if (start_sim(f, &f->r[0]) < 0)
        goto out;
    d->imds_port = free_port();
    char imds_listen[64], role_creds[128];
    snprintf(imds_listen, sizeof imds_listen, "tcp:127.0.0.1:%u", d->imds_port);
    if (make_credentials(d->role_key, sizeof d->role_key, d->role_secret, sizeof d->role_secret) < 0 ||
        make_credentials(d->oper_key, sizeof d->oper_key, d->oper_secret, sizeof d->oper_secret) < 0 ||
        file_sha384_hex(d->self, d->pcr0) < 0) {
        fprintf(stderr, "cloister dev: %s\n", cl_error_message());
        goto out;
    }
    snprintf(role_creds, sizeof role_creds, "%s:%s", d->role_key, d->role_secret);
    char *imds_argv[] = {d->self, "imds-sim", "--listen", imds_listen, "--region", "us-east-1", "--credentials",
                         role_creds, NULL};
    if (spawn(d, &d->imds, "imds-sim", imds_argv) < 0)
        goto out;
    d->kms_port = free_port();
    if (!start_kms(d))
        goto out;
    if (!f->sync && make_kms_identity(f) < 0)
        goto out;
    for (unsigned i = 1; i < f->n; i++)
        if (start_sim(f, &f->r[i]) < 0)
            goto out;
    /* with key sync the leader first: the others elect it, then take its keys */
    if (start_host(f, &f->r[0]) < 0 || (f->sync && !wait_healthy(f, &f->r[0], cl_monotonic_ms() + START_TIMEOUT_MS)))
        goto out;
    for (unsigned i = 1; i < f->n; i++)
        if (start_host(f, &f->r[i]) < 0)
            goto out;
    write_replica_table(f);
    say("cloister dev: starting %u replicas (nsm-sim, cloister host, and through its watchdog cloister enclave + "
        "examples/hello/app.py each)",
        f->n);
    if (!all_healthy(f))
        goto out;

    char cfg[PATH_MAX + 16];
    if (write_haproxy_config(f, cfg, sizeof cfg) < 0) {
        fprintf(stderr, "cloister dev: %s\n", cl_error_message());
        goto out;
    }
    char haproxy[PATH_MAX];
    if (!find_program("haproxy", haproxy, sizeof haproxy)) {
        fprintf(stderr, "cloister dev: --replicas needs HAProxy (apt-get install haproxy)\n");
        goto out;
    }
    char *haproxy_argv[] = {haproxy, "-db", "-f", cfg, NULL};
    if (spawn(d, &f->haproxy, "haproxy", haproxy_argv) < 0) {
        fprintf(stderr, "cloister dev: cannot start haproxy (apt-get install haproxy): %s\n", cl_error_message());
        goto out;
    }
    if (!wait_for(d, &f->haproxy, "HAProxy's listener", haproxy_ready, 10000))
        goto out;

    say("\ncloister dev: %u replicas are up behind HAProxy", f->n);
    say("  haproxy    tcp 127.0.0.1:%u, round robin, PROXY v2 to each replica, GET /enclave/health every 500 ms "
        "(%s)",
        d->port, cfg);
    for (unsigned i = 0; i < f->n; i++) {
        replica *r = &f->r[i];
        say("  replica %u  cloister host (pid %d): tcp:127.0.0.1:%u -> vsock:16:443, health tcp:127.0.0.1:%u -> "
            "vsock:16:" HEALTH_VSOCK_PORT "; nsm-sim instance %s; logs %s/",
            r->index, (int)r->host.pid, r->port, r->health_port, r->instance_id, r->dir);
    }
    say("  identity   %s", f->sync ? "key sync (nitriding's protocol, attested both ways) from replica 1, the leader"
                                   : "kms: one certificate, its key a KMS ciphertext only this PCR0 opens; every "
                                     "replica opens it itself");
    say("  shared     imds-sim 127.0.0.1:%u, kms-local 127.0.0.1:%u, NSM root %s/state/root.pem", d->imds_port,
        d->kms_port, d->run);

    if (f->check) {
        say("\ncloister dev --replicas %u --check: through the balancer", f->n);
        bool ok = check_identity(f);
        ok = check_app(f) && ok;
        ok = (f->sync ? check_sync_mode(f) : check_kms_mode(f)) && ok;
        status = ok ? 0 : 1;
        say("\ncloister dev --check: %s", ok ? "passed" : "FAILED");
        goto out;
    }
    say("\nTry it:");
    say("  %s verify https://127.0.0.1:%u --root %s/state/root.pem   (again and again: another replica, the same "
        "certificate)",
        d->self, d->port, d->run);
    say("  wrk -c 20 -d 10s https://127.0.0.1:%u/api/hello; meanwhile kill -TERM a replica's host: it drains", d->port);
    say("  kill -USR1 %d starts again the replicas that stopped; Ctrl-C stops everything and removes %s", (int)getpid(),
        d->run);
    watch(f);
    status = 0;
out:
    if (d->stop_requested && status != 0 && !f->check)
        status = 0;
    say("cloister dev: stopping");
    stop_fleet(f);
    if (d->sigfd >= 0)
        close(d->sigfd);
    say("cloister dev: stopped; %s removed", d->run);
    free(f);
    return status;
}

/* cloister host acm: the parent instance's half of the ACM-style token.
 *
 * Reads a bundle {certificate, certificateChain, encryptedPrivateKey}
 * (a file or an http(s):// URL), sends {token label, PIN, certificate
 * chain, KMS ciphertext} to the key-holder's provisioning socket (the vsock
 * port only the parent reaches), and writes what NGINX needs: the chain
 * file, an ssl_certificate/ssl_certificate_key stanza naming the token
 * through the pkcs11 engine, and the OpenSSL engine configuration.  It
 * never decrypts anything: the key-holder opens the ciphertext inside the
 * enclave with KMS Decrypt and a Recipient.
 *
 * Then it polls the bundle: a changed bundle rotates the token and reloads
 * NGINX gracefully; the current bundle is put again every --refresh, so the
 * key-holder opens it again with KMS and the token's TTL restarts. */
#include "cloister/core/acm_bundle.h"
#include "cloister/host/acm_conf.h"
#include "cloister/core/address.h"
#include "cloister/core/buf.h"
#include "cloister/core/encoding.h"
#include "cloister/core/http_get.h"
#include "cloister/core/keyholder_proto.h"
#include "cloister/core/log.h"
#include "cloister/core/process.h"
#include "cloister/core/secret_file.h"
#include "cloister/core/options.h"
#include "commands.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/rand.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct acm_opts {
    const char *bundle, *label, *object, *provision, *pin_file, *nginx_conf, *chain_file, *openssl_conf;
    const char *reload, *engine, *module, *ca_file;
    char p11_address[200]; /* p11-kit's spelling of --p11-kit-server, or "" */
    uint64_t poll_ms, refresh_ms;
    bool once;
    char pin[CL_KH_PIN_MAX + 1];
    char chain_path[4096], openssl_path[4096];
} acm_opts;

static volatile sig_atomic_t stopping;
static bool reload_pending; /* a reload failed: tried again at every poll */

static void on_signal(int sig)
{
    (void)sig;
    stopping = 1;
}

static const char usage_text[] =
    "usage: cloister host acm --bundle FILE|URL --token LABEL --provision ADDR [--nginx-conf PATH]\n"
    "                         [--pin-file PATH] [--object LABEL] [--chain-file PATH] [--openssl-conf PATH]\n"
    "                         [--poll DUR] [--refresh DUR] [--reload-command CMD] [--once]\n"
    "                         [--engine-path SO] [--module-path SO] [--ca-file PEM]\n"
    "                         [--p11-kit-server ADDR]\n"
    "\n"
    "Provisions a PKCS#11 token in the enclave's key-holder from an ACM-style bundle\n"
    "{certificate, certificateChain, encryptedPrivateKey} and keeps NGINX's configuration for it.\n"
    "The private key travels only as the KMS ciphertext: the key-holder opens it inside the\n"
    "enclave (KMS Decrypt with a Recipient), this side never sees it.\n"
    "\n";

static const char epilog[] =
    "DUR is 250ms, 5s, 2m, 1h or a number of seconds.\n"
    "Exit status (at start or with --once): 0 provisioned, 1 the key-holder refused the bundle\n"
    "(e.g. KMS would not open its key for this enclave) or the bundle is invalid, 2 bad command\n"
    "line, 3 could not fetch the bundle, reach the key-holder or write the files.\n";

/* The command line's values (owned by the options layer). */
typedef struct acm_cli {
    char *bundle, *label, *object, *provision, *pin_file, *nginx_conf, *chain_file, *openssl_conf;
    char *reload, *engine, *module, *ca_file, *p11;
    uint64_t poll_ms, refresh_ms;
    bool once;
} acm_cli;

static int check_p11(void *base, const char *value)
{
    (void)base;
    char spelled[200];
    return cl_p11kit_address(value, spelled, sizeof spelled);
}

#define C acm_cli
#define DURATION(f) CL_OPT_DURATION_AT(C, f, 1, 100, 7ull * 86400 * 1000)
static const cl_opt acm_table[] = {
    {.name = "bundle", CL_OPT_STR(C, bundle), .arg = "FILE|URL",
     .help = "the bundle: a file, or http:// / https:// (libcurl)"},
    {.name = "token", CL_OPT_STR(C, label), .arg = "LABEL",
     .help = "the token's label (and the key object's, unless --object)"},
    {.name = "provision", CL_OPT_STR(C, provision), .arg = "ADDR",
     .help = "the key-holder's provisioning socket (vsock:CID:PORT, unix:PATH)"},
    {.name = "nginx-conf", CL_OPT_STR(C, nginx_conf), .arg = "PATH",
     .help = "the stanza to include in a server block: ssl_certificate and ssl_certificate_key "
             "\"engine:pkcs11:pkcs11:token=...\" with the PIN; written 0600 (default "
             "/etc/nginx/cloister-acm-LABEL.conf)"},
    {.name = "pin-file", CL_OPT_STR(C, pin_file), .arg = "PATH",
     .help = "the token's PIN (default: a random one made at start).  The PIN gates only this host's NGINX: the "
             "key never leaves the enclave"},
    {.name = "object", CL_OPT_STR(C, object), .arg = "LABEL", .help = "the key object's label (default: --token's)"},
    {.name = "chain-file", CL_OPT_STR(C, chain_file), .arg = "PATH",
     .help = "the certificate chain for ssl_certificate (default: next to the stanza, LABEL.chain.pem)"},
    {.name = "openssl-conf", CL_OPT_STR(C, openssl_conf), .arg = "PATH",
     .help = "the OpenSSL engine configuration NGINX needs in $OPENSSL_CONF (default: next to the stanza, "
             "LABEL.openssl.cnf)"},
    {.name = "poll", DURATION(poll_ms), .def = "60s", .arg = "DUR",
     .help = "fetch the bundle again this often; a change rotates the token and reloads NGINX"},
    {.name = "refresh", DURATION(refresh_ms), .def = "10m", .arg = "DUR",
     .help = "put the current bundle again this often: the key-holder opens the ciphertext with KMS again and the "
             "token's TTL restarts (keep it below the key-holder's --token-ttl)"},
    {.name = "reload-command", CL_OPT_STR(C, reload), .def = "nginx -s reload", .arg = "CMD",
     .help = "how NGINX is reloaded after a change (run by /bin/sh with OPENSSL_CONF set to --openssl-conf unless "
             "set)"},
    {.name = "once", CL_OPT_FLAG(C, once), .help = "provision, write the files and exit (no reload)"},
    {.name = "engine-path", CL_OPT_STR(C, engine), .arg = "SO",
     .help = "libp11's engine (default: engines-3/pkcs11.so of this system)"},
    {.name = "module-path", CL_OPT_STR(C, module), .arg = "SO",
     .help = "p11-kit's client module (default: pkcs11/p11-kit-client.so)"},
    {.name = "ca-file", CL_OPT_STR(C, ca_file), .arg = "PEM",
     .help = "CAs for an https:// bundle URL instead of the system's"},
    {.name = "p11-kit-server", CL_OPT_STR(C, p11), .set = check_p11, .arg = "ADDR",
     .help = "where the enclave's `p11-kit server` listens: vsock:CID:PORT with the enclave's CID (nitro-cli "
             "describe-enclaves), or unix:PATH; written into the engine configuration as NGINX's "
             "P11_KIT_SERVER_ADDRESS ('vsock:cid=CID;port=PORT', quoted) and set for --reload-command"},
};
#undef DURATION
#undef C

/* ---- fetching the bundle ---------------------------------------------------------------- */

static int fetch(const acm_opts *o, cl_buf *out)
{
    cl_buf_reset(out);
    bool http = !strncmp(o->bundle, "http://", 7), https = !strncmp(o->bundle, "https://", 8);
    if (!http && !https) {
        int rc = cl_read_file(o->bundle, CL_ACM_BUNDLE_MAX, out);
        return rc < 0 ? cl_error_prefix(rc, "bundle %s: ", o->bundle) : CL_OK;
    }
    long status = 0;
    cl_buf body;
    int rc = cl_http_get(o->bundle, o->ca_file, 10000, CL_ACM_BUNDLE_MAX, &body, &status);
    if (rc < 0)
        return cl_error_prefix(rc, "bundle: ");
    if (status != 200) {
        cl_buf_free(&body);
        return cl_error_set(CL_EIO, "bundle %s: HTTP status %ld", o->bundle, status);
    }
    cl_buf_free(out);
    *out = body;
    return CL_OK;
}

/* ---- the key-holder -------------------------------------------------------------------- */

/* Puts the token; *status: 0 or the key-holder's refusal. */
static int put_token(const acm_opts *o, const cl_acm_bundle *b, uint32_t *status, uint64_t *generation)
{
    int rc = CL_OK, fd = -1;
    cl_buf chain = CL_BUF_INIT, req = CL_BUF_INIT, reply = CL_BUF_INIT;
    cl_address a;
    CL_TRY_OUT(cl_acm_bundle_full_chain(b, &chain));
    const char *object = o->object ? o->object : o->label;
    cl_kh_request r = {.type = CL_KH_PUT_TOKEN,
                       .label = {(const uint8_t *)o->label, strlen(o->label)},
                       .pin = {(const uint8_t *)o->pin, strlen(o->pin)},
                       .object_label = {(const uint8_t *)object, strlen(object)},
                       .key_source = CL_KH_SRC_KMS,
                       .key_ref = {b->ciphertext.data, b->ciphertext.len},
                       .chain = {chain.data, chain.len}};
    CL_TRY_OUT(cl_kh_request_encode(&req, &r));
    CL_TRY_OUT(cl_address_parse(o->provision, &a));
    rc = cl_address_connect(&a, &fd);
    if (rc < 0)
        CL_TRY_OUT(cl_error_prefix(rc, "the key-holder's provisioning socket %s: ", o->provision));
    struct timeval tv = {40, 0}; /* the key-holder asks KMS, with retries */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    CL_TRY_OUT(cl_kh_write_frame(fd, req.data, req.len));
    rc = cl_kh_read_frame(fd, CL_KH_MAX_FRAME, &reply, NULL);
    if (rc < 0)
        CL_TRY_OUT(cl_error_prefix(rc, "the key-holder's answer: "));
    cl_cursor payload;
    CL_TRY_OUT(cl_kh_reply_split(reply.data, reply.len, status, &payload));
    if (*status == 0) {
        uint32_t slot;
        CL_ENSURE_OUT(cl_cursor_be32(&payload, &slot) == 0 && cl_cursor_be64(&payload, generation) == 0, CL_EPROTO,
                      "the key-holder's answer to put is short");
    }
out:
    if (fd >= 0)
        close(fd);
    cl_buf_free(&chain);
    cl_buf_free(&req);
    cl_buf_free(&reply);
    return rc;
}

/* ---- the files NGINX reads ------------------------------------------------------------- */

/* Writes path atomically (a temporary file renamed over it) unless it
 * already holds exactly these bytes.  *changed: it was different;
 * *existed: there was a file before. */
static int write_if_changed(const char *path, const void *data, size_t len, mode_t mode, bool *changed, bool *existed)
{
    cl_buf old = CL_BUF_INIT;
    int rc = cl_read_file(path, 1 << 20, &old);
    *existed = rc == 0;
    *changed = !(rc == 0 && old.len == len && !memcmp(old.data, data, len));
    cl_buf_free(&old);
    cl_error_clear();
    if (!*changed)
        return CL_OK;
    char tmp[4200];
    int n = snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    CL_ENSURE(n > 0 && (size_t)n < sizeof tmp, CL_ELIMIT, "%s: path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
    CL_ENSURE(fd >= 0, CL_EIO, "%s: %s", tmp, strerror(errno));
    fchmod(fd, mode);
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, (const uint8_t *)data + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            int e = errno;
            close(fd);
            unlink(tmp);
            return cl_error_set(CL_EIO, "%s: %s", tmp, strerror(e));
        }
        off += (size_t)w;
    }
    if (fsync(fd) < 0 || close(fd) < 0) {
        unlink(tmp);
        return cl_error_set(CL_EIO, "%s: %s", tmp, strerror(errno));
    }
    if (rename(tmp, path) < 0) {
        int e = errno;
        unlink(tmp);
        return cl_error_set(CL_EIO, "%s: %s", path, strerror(e));
    }
    return CL_OK;
}

static int append_str(cl_buf *b, const char *s)
{
    return cl_buf_append(b, s, strlen(s));
}

/* Writes the chain, the engine configuration and the stanza; *reload: a
 * file NGINX had read before changed. */
static int write_files(const acm_opts *o, const cl_acm_bundle *b, bool *reload)
{
    int rc = CL_OK;
    cl_buf chain = CL_BUF_INIT, conf = CL_BUF_INIT, stanza = CL_BUF_INIT;
    bool changed, existed;
    *reload = false;
    CL_TRY_OUT(cl_acm_bundle_full_chain(b, &chain));
    CL_TRY_OUT(write_if_changed(o->chain_path, chain.data, chain.len, 0644, &changed, &existed));
    *reload |= changed && existed;

    CL_TRY_OUT(cl_acm_openssl_conf(&conf, o->engine, o->module, o->p11_address[0] ? o->p11_address : NULL));
    CL_TRY_OUT(write_if_changed(o->openssl_path, conf.data, conf.len, 0644, &changed, &existed));
    *reload |= changed && existed;

    const char *object = o->object ? o->object : o->label;
    char text[9000];
    snprintf(text, sizeof text,
             "# written by cloister host acm for token %s: include it in a server { listen ... ssl; } block.\n"
             "# The key stays in the enclave; the PIN below gates only this host's NGINX (keep this file 0600).\n"
             "ssl_certificate %s;\n"
             "ssl_certificate_key \"engine:pkcs11:pkcs11:token=%s;object=%s;type=private?pin-value=%s\";\n",
             o->label, o->chain_path, o->label, object, o->pin);
    CL_TRY_OUT(append_str(&stanza, text));
    cl_wipe(text, sizeof text);
    CL_TRY_OUT(write_if_changed(o->nginx_conf, stanza.data, stanza.len, 0600, &changed, &existed));
    *reload |= changed && existed;
out:
    cl_buf_free(&chain);
    cl_buf_free(&conf);
    cl_buf_free(&stanza);
    return rc;
}

static int run_reload(const acm_opts *o)
{
    /* `nginx -s reload` parses the configuration itself: it needs the engine
     * and p11-kit's address too (unless its environment has them) */
    char conf_env[4200], p11_env[260];
    snprintf(conf_env, sizeof conf_env, "OPENSSL_CONF=%s", o->openssl_path);
    snprintf(p11_env, sizeof p11_env, "P11_KIT_SERVER_ADDRESS=%s", o->p11_address);
    const char *add[] = {conf_env, o->p11_address[0] ? p11_env : NULL, NULL};
    char *argv[] = {"sh", "-c", (char *)o->reload, NULL};
    cl_process_spec spec = {.program = "/bin/sh", .argv = argv, .add_env = add, .keep_stdin = true};
    pid_t pid;
    CL_TRY(cl_process_spawn(&spec, &pid));
    int st = 0;
    CL_TRY(cl_process_wait(pid, -1, &st));
    char how[48];
    cl_process_status_text(st, how, sizeof how);
    CL_ENSURE(WIFEXITED(st) && WEXITSTATUS(st) == 0, CL_EIO, "'%s' failed (%s)", o->reload, how);
    return CL_OK;
}

static void reload_nginx(const acm_opts *o)
{
    reload_pending = run_reload(o) < 0;
    if (reload_pending)
        cl_log(CL_LOG_ERROR, "reload_failed", "error", cl_error_message(), "retry", "at the next poll", NULL);
    else
        cl_log(CL_LOG_INFO, "nginx_reloaded", "command", o->reload, NULL);
}

/* ---- one provisioning ------------------------------------------------------------------ */

enum { DONE = 0, REFUSED = 1, FAILED = 3 };

/* Puts b and writes the files; returns DONE, REFUSED or FAILED (logged). */
static int provision(const acm_opts *o, const cl_acm_bundle *b, const char *why, bool may_reload)
{
    uint32_t status = 0;
    uint64_t gen = 0;
    char fp[17];
    cl_hex_encode(b->leaf_sha256, 8, fp);
    if (put_token(o, b, &status, &gen) < 0) {
        cl_log(CL_LOG_ERROR, "provision_failed", "token", o->label, "why", why, "error", cl_error_message(), NULL);
        return FAILED;
    }
    if (status) {
        char detail[160];
        snprintf(detail, sizeof detail, "the key-holder refused the bundle: %s%s", cl_kh_status_name(status),
                 status == CL_KH_ST_KMS_REFUSED || status == CL_KH_ST_KMS_UNAVAILABLE
                     ? " (its log names KMS's answer)"
                     : "");
        cl_log(CL_LOG_ERROR, "bundle_refused", "token", o->label, "why", why, "certificate_sha256", fp, "error", detail,
               NULL);
        return REFUSED;
    }
    char gen_text[24];
    snprintf(gen_text, sizeof gen_text, "%llu", (unsigned long long)gen);
    bool reload = false;
    if (write_files(o, b, &reload) < 0) {
        cl_log(CL_LOG_ERROR, "write_failed", "token", o->label, "error", cl_error_message(), NULL);
        return FAILED;
    }
    cl_log(CL_LOG_INFO, "provisioned", "token", o->label, "why", why, "generation", gen_text, "certificate_sha256", fp,
           NULL);
    if ((reload || reload_pending) && may_reload)
        reload_nginx(o);
    return DONE;
}

static int load(const acm_opts *o, cl_buf *raw, cl_acm_bundle *b, int *code)
{
    if (fetch(o, raw) < 0) {
        *code = FAILED;
        return -1;
    }
    int rc = cl_acm_bundle_parse(raw->data, raw->len, b);
    if (rc < 0) {
        *code = REFUSED;
        return cl_error_prefix(rc, "%s: ", o->bundle);
    }
    return 0;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int serve(acm_opts *o)
{
    cl_buf raw = CL_BUF_INIT, last_raw = CL_BUF_INIT;
    cl_acm_bundle cur, next;
    memset(&cur, 0, sizeof cur);
    memset(&next, 0, sizeof next);
    int code = FAILED;
    if (load(o, &raw, &cur, &code) < 0) {
        fprintf(stderr, "cloister host acm: %s\n", cl_error_message());
        goto out;
    }
    code = provision(o, &cur, "start", !o->once);
    if (code != DONE) {
        fprintf(stderr, "cloister host acm: token %s not provisioned (see the log line above)\n", o->label);
        goto out;
    }
    if (o->once) {
        printf("token=%s chain=%s nginx-conf=%s openssl-conf=%s\n", o->label, o->chain_path, o->nginx_conf,
               o->openssl_path);
        goto out;
    }
    if (cl_buf_append(&last_raw, raw.data, raw.len) < 0) {
        code = FAILED;
        goto out;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    char poll_text[24], refresh_text[24];
    snprintf(poll_text, sizeof poll_text, "%llu", (unsigned long long)o->poll_ms);
    snprintf(refresh_text, sizeof refresh_text, "%llu", (unsigned long long)o->refresh_ms);
    cl_log(CL_LOG_INFO, "watching", "bundle", o->bundle, "poll_ms", poll_text, "refresh_ms", refresh_text, NULL);
    uint64_t next_poll = now_ms() + o->poll_ms, next_refresh = now_ms() + o->refresh_ms;
    while (!stopping) {
        uint64_t now = now_ms();
        if (now < next_poll && now < next_refresh) {
            uint64_t wait = (next_poll < next_refresh ? next_poll : next_refresh) - now;
            if (wait > 100)
                wait = 100;
            struct timespec ts = {0, (long)wait * 1000000L};
            nanosleep(&ts, NULL);
            continue;
        }
        if (now >= next_poll) {
            next_poll = now + o->poll_ms;
            if (reload_pending)
                reload_nginx(o);
            int why = 0;
            if (fetch(o, &raw) < 0) {
                cl_log(CL_LOG_WARN, "fetch_failed", "bundle", o->bundle, "error", cl_error_message(), NULL);
                continue;
            }
            if (raw.len == last_raw.len && !memcmp(raw.data, last_raw.data, raw.len))
                continue;
            cl_buf_reset(&last_raw);
            if (cl_buf_append(&last_raw, raw.data, raw.len) < 0)
                continue;
            cl_acm_bundle_free(&next);
            if (cl_acm_bundle_parse(raw.data, raw.len, &next) < 0) {
                cl_log(CL_LOG_ERROR, "bundle_invalid", "bundle", o->bundle, "error", cl_error_message(), NULL);
                continue;
            }
            if (cl_acm_bundle_equal(&next, &cur))
                continue;
            why = provision(o, &next, "changed", true);
            if (why == DONE) {
                cl_acm_bundle cur_old = cur;
                cur = next;
                next = cur_old;
                next_refresh = now_ms() + o->refresh_ms;
            }
            continue;
        }
        next_refresh = now + o->refresh_ms;
        provision(o, &cur, "refresh", true);
    }
    cl_log(CL_LOG_INFO, "stopped", NULL);
    code = DONE;
out:
    cl_acm_bundle_free(&cur);
    cl_acm_bundle_free(&next);
    cl_buf_free(&raw);
    cl_buf_free(&last_raw);
    return code;
}

/* ---- options --------------------------------------------------------------------------- */

static const char *first_existing(const char *const *paths)
{
    for (size_t i = 0; paths[i]; i++)
        if (access(paths[i], R_OK) == 0)
            return paths[i];
    return paths[0];
}

static bool pin_char_ok(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
           c == '_' || c == '~';
}

static int bad(const char *msg, const char *arg)
{
    fprintf(stderr, "cloister host acm: ");
    fprintf(stderr, msg, arg);
    fprintf(stderr, " (see --help)\n");
    return EXIT_USAGE;
}

static int sibling(const char *conf, const char *label, const char *suffix, char *out, size_t out_len)
{
    const char *slash = strrchr(conf, '/');
    int dir = slash ? (int)(slash - conf) : 1;
    int n = snprintf(out, out_len, "%.*s/%s%s", dir, slash ? conf : ".", label, suffix);
    return n > 0 && (size_t)n < out_len ? 0 : -1;
}

static int host_acm_run(const acm_cli *c)
{
    static const char *const engines[] = {"/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so",
                                          "/usr/lib/aarch64-linux-gnu/engines-3/pkcs11.so",
                                          "/usr/lib64/engines-3/pkcs11.so", NULL};
    static const char *const modules[] = {"/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so",
                                          "/usr/lib/aarch64-linux-gnu/pkcs11/p11-kit-client.so",
                                          "/usr/lib64/pkcs11/p11-kit-client.so", NULL};
    acm_opts o = {.bundle = c->bundle,
                  .label = c->label,
                  .object = c->object,
                  .provision = c->provision,
                  .pin_file = c->pin_file,
                  .nginx_conf = c->nginx_conf,
                  .chain_file = c->chain_file,
                  .openssl_conf = c->openssl_conf,
                  .reload = c->reload,
                  .engine = c->engine,
                  .module = c->module,
                  .ca_file = c->ca_file,
                  .poll_ms = c->poll_ms,
                  .refresh_ms = c->refresh_ms,
                  .once = c->once};
    char default_conf[200];
    if (c->p11 && cl_p11kit_address(c->p11, o.p11_address, sizeof o.p11_address) < 0)
        return bad("--p11-kit-server: %s", cl_error_message());
    if (!o.bundle)
        return bad("%s", "--bundle FILE|URL is required");
    if (!o.label)
        return bad("%s", "--token LABEL is required");
    if (!o.provision)
        return bad("%s", "--provision ADDR (the key-holder's provisioning socket) is required");
    cl_slice lab = {(const uint8_t *)o.label, strlen(o.label)};
    if (!cl_kh_label_valid(lab))
        return bad("--token '%s': 1..32 characters without spaces or URI delimiters", o.label);
    if (o.object && !cl_kh_label_valid((cl_slice){(const uint8_t *)o.object, strlen(o.object)}))
        return bad("--object '%s': 1..32 characters without spaces or URI delimiters", o.object);
    cl_address a;
    if (cl_address_parse(o.provision, &a) < 0)
        return bad("--provision '%s': vsock:CID:PORT, unix:PATH or tcp:HOST:PORT", o.provision);
    if (strstr(o.bundle, "://") && strncmp(o.bundle, "http://", 7) && strncmp(o.bundle, "https://", 8))
        return bad("--bundle '%s': only http:// and https:// URLs", o.bundle);
    if (!o.nginx_conf) {
        snprintf(default_conf, sizeof default_conf, "/etc/nginx/cloister-acm-%s.conf", o.label);
        o.nginx_conf = default_conf;
    }
    if (o.chain_file)
        snprintf(o.chain_path, sizeof o.chain_path, "%s", o.chain_file);
    else if (sibling(o.nginx_conf, o.label, ".chain.pem", o.chain_path, sizeof o.chain_path) < 0)
        return bad("--nginx-conf '%s': path too long", o.nginx_conf);
    if (o.openssl_conf)
        snprintf(o.openssl_path, sizeof o.openssl_path, "%s", o.openssl_conf);
    else if (sibling(o.nginx_conf, o.label, ".openssl.cnf", o.openssl_path, sizeof o.openssl_path) < 0)
        return bad("--nginx-conf '%s': path too long", o.nginx_conf);
    if (!o.engine)
        o.engine = first_existing(engines);
    if (!o.module)
        o.module = first_existing(modules);
    for (const char *p = o.chain_path; *p; p++)
        if (*p == ';' || *p == '"' || *p == ' ' || *p == '\n' || *p == '{' || *p == '}')
            return bad("--chain-file '%s': no spaces, quotes, braces or ';' (it goes into nginx's configuration)",
                       o.chain_path);
    if (o.pin_file) {
        cl_buf pin = CL_BUF_INIT;
        if (cl_read_secret_file(o.pin_file, CL_KH_PIN_MAX + 2, &pin) < 0) {
            fprintf(stderr, "cloister host acm: --pin-file: %s\n", cl_error_message());
            cl_buf_free(&pin);
            return EXIT_USAGE;
        }
        while (pin.len && (pin.data[pin.len - 1] == '\n' || pin.data[pin.len - 1] == '\r'))
            pin.len--;
        bool ok = pin.len >= CL_KH_PIN_MIN && pin.len <= CL_KH_PIN_MAX;
        for (size_t i = 0; ok && i < pin.len; i++)
            ok = pin_char_ok((char)pin.data[i]);
        if (ok)
            memcpy(o.pin, pin.data, pin.len);
        cl_buf_free(&pin);
        if (!ok)
            return bad("--pin-file %s: a PIN of 4..64 characters A-Z a-z 0-9 - . _ ~ (it goes into a PKCS#11 URI)",
                       o.pin_file);
    } else {
        uint8_t r[16];
        if (RAND_bytes(r, sizeof r) != 1) {
            fprintf(stderr, "cloister host acm: no randomness for the PIN\n");
            return EXIT_FAILED;
        }
        cl_hex_encode(r, sizeof r, o.pin);
        cl_wipe(r, sizeof r);
    }
    cl_log_set_component("host-acm");
    signal(SIGPIPE, SIG_IGN);
    int code = serve(&o);
    cl_wipe(o.pin, sizeof o.pin);
    return code;
}

int cmd_host_acm(int argc, char **argv)
{
    acm_cli c = {0};
    cl_opt_section section = CL_OPT_SECTION("options", acm_table, &c);
    cl_options spec = {.prog = "cloister host acm", .usage = usage_text, .epilog = epilog, .sections = &section,
                       .section_count = 1};
    cl_options_result r;
    int status = cl_options_main(&spec, argc, argv, &r);
    cl_options_free(NULL, &r);
    if (status == 0)
        status = host_acm_run(&c);
    else
        status = status > 0 ? 0 : EXIT_USAGE;
    cl_options_free(&spec, NULL);
    return status;
}

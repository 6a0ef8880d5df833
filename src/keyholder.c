/* cloister keyholder: the one process inside the enclave that holds the
 * PKCS#11 token's private keys.
 *
 *   serve   answers the PKCS#11 module on the token socket (list tokens and
 *           objects, login, sign, decrypt) and the provisioner on the
 *           provisioning socket (put/delete tokens, status); one thread per
 *           connection; keys are wiped on exit.
 *   put / delete / status   a provisioning client.
 *
 * Keys never leave this process: the token socket's replies carry public
 * keys, certificates and signatures only.  A rotation keeps the previous
 * key generation for --rotation-grace so that workers still presenting the
 * old certificate can finish their handshakes. */
#include "cloister/core/address.h"
#include "cloister/core/buf.h"
#include "cloister/core/encoding.h"
#include "cloister/core/keyholder_proto.h"
#include "cloister/core/clock.h"
#include "cloister/core/log.h"
#include "cloister/core/options.h"
#include "cloister/core/secret_file.h"
#include "cloister/core/small_server.h"
#include "cloister/enclave/key_custody.h"
#include "commands.h"
#include "keyholder_kms.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#define MAX_CONNECTIONS 256
#define TOKEN_FRAME_MAX 65536
#define PROVISION_TIMEOUT_S 10

/* ---- state ------------------------------------------------------------------------ */

/* The custody rules live in lib/enclave/key_custody.c; this file adds the
 * command line, the sockets and one thread per connection. */
static struct {
    cl_custody *custody;
    unsigned max_failures;
    uint64_t ttl_ms;
    uint64_t grace_ms;
    char key_dir[4096];
} kh = {.max_failures = 5, .grace_ms = 60000};

static uint64_t now_ms(void)
{
    return cl_monotonic_ms();
}


/* ---- connections --------------------------------------------------------------------- */

/* One connection on its own thread; core/small_server.h closes fd and joins
 * the thread.  listener 0: the module's socket, 1: the provisioning socket. */
static void serve_conn(void *arg, int fd, size_t listener, unsigned long id)
{
    (void)arg;
    (void)id;
    bool provisioning = listener == 1;
    if (provisioning) {
        struct timeval tv = {PROVISION_TIMEOUT_S, 0};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    cl_custody_conn *cc = NULL;
    if (cl_custody_conn_new(kh.custody, provisioning ? CL_CUSTODY_PROVISION_SOCKET : CL_CUSTODY_TOKEN_SOCKET,
                            &cc) < 0)
        return;
    cl_buf frame = CL_BUF_INIT, reply = CL_BUF_INIT;
    for (;;) {
        bool eof = false;
        /* idle: drop a cached context whose key may have been released */
        while (cl_custody_conn_idle(cc)) {
            struct pollfd p = {fd, POLLIN, 0};
            if (poll(&p, 1, 1000) != 0)
                break;
        }
        if (cl_kh_read_frame(fd, provisioning ? CL_KH_MAX_FRAME : TOKEN_FRAME_MAX, &frame, &eof) < 0) {
            if (!eof)
                cl_log(CL_LOG_DEBUG, "connection_dropped", "error", cl_error_message(), NULL);
            break;
        }
        if (cl_custody_handle(cc, frame.data, frame.len, now_ms(), &reply) < 0)
            break;
        if (cl_kh_write_frame(fd, reply.data, reply.len) < 0)
            break;
    }
    cl_buf_free(&frame);
    cl_buf_free(&reply);
    cl_custody_conn_free(cc);
}

static void refused(void *arg, unsigned long id, const char *reason)
{
    (void)arg;
    (void)id;
    cl_log(CL_LOG_WARN, "connection_refused", "reason", reason, NULL);
}

static void tick(void *arg)
{
    (void)arg;
    cl_custody_housekeeping(kh.custody, now_ms());
}

/* ---- serve --------------------------------------------------------------------------- */

static int listen_on(const char *text, int *fd)
{
    cl_address a;
    CL_TRY(cl_address_parse(text, &a));
    CL_TRY(cl_address_listen(&a, 64, fd));
    if (a.kind == CL_ADDR_UNIX && chmod(a.path, 0600) < 0)
        return cl_error_set(CL_EIO, "chmod %s: %s", a.path, strerror(errno));
    return CL_OK;
}

/* --token LABEL,key=NAME,cert=PATH,pin-file=PATH[,object=OBJ] */
static int token_from_flag(const char *spec)
{
    int rc = CL_OK;
    char *copy = strdup(spec);
    cl_buf pin = CL_BUF_INIT, chain = CL_BUF_INIT;
    CL_ENSURE(copy, CL_ENOMEM, "out of memory");
    char *save = NULL, *label = strtok_r(copy, ",", &save), *key = NULL, *cert = NULL, *pin_file = NULL,
         *object = NULL;
    for (char *kv = strtok_r(NULL, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(kv, '=');
        CL_ENSURE_OUT(eq, CL_EINVAL, "'%s' is not KEY=VALUE", kv);
        *eq = 0;
        if (!strcmp(kv, "key"))
            key = eq + 1;
        else if (!strcmp(kv, "cert"))
            cert = eq + 1;
        else if (!strcmp(kv, "pin-file"))
            pin_file = eq + 1;
        else if (!strcmp(kv, "object"))
            object = eq + 1;
        else
            CL_FAIL_OUT(CL_EINVAL, "unknown field '%s'", kv);
    }
    CL_ENSURE_OUT(label && key && cert && pin_file, CL_EINVAL,
                  "needs LABEL,key=NAME,cert=PATH,pin-file=PATH");
    CL_TRY_OUT(cl_read_secret_file(pin_file, CL_KH_PIN_MAX + 2, &pin));
    while (pin.len && (pin.data[pin.len - 1] == '\n' || pin.data[pin.len - 1] == '\r'))
        pin.len--;
    CL_TRY_OUT(cl_read_file(cert, CL_KH_CHAIN_MAX, &chain));
    cl_kh_request r = {.type = CL_KH_PUT_TOKEN,
                       .label = {(const uint8_t *)label, strlen(label)},
                       .pin = {pin.data, pin.len},
                       .object_label = {(const uint8_t *)(object ? object : label), strlen(object ? object : label)},
                       .key_source = CL_KH_SRC_FILE,
                       .key_ref = {(const uint8_t *)key, strlen(key)},
                       .chain = {chain.data, chain.len}};
    CL_ENSURE_OUT(cl_kh_label_valid(r.label) && cl_kh_label_valid(r.object_label), CL_EINVAL,
                  "labels are 1..%d characters without spaces or URI delimiters", CL_KH_LABEL_MAX);
    CL_ENSURE_OUT(pin.len >= CL_KH_PIN_MIN && pin.len <= CL_KH_PIN_MAX, CL_EINVAL, "PIN of %d..%d bytes",
                  CL_KH_PIN_MIN, CL_KH_PIN_MAX);
    uint32_t slot, st;
    uint64_t gen;
    CL_TRY_OUT(cl_custody_put(kh.custody, &r, now_ms(), &slot, &gen, &st));
out:
    cl_buf_free(&pin);
    cl_buf_free(&chain);
    free(copy);
    return rc;
}

static const char serve_usage_text[] =
    "usage: cloister keyholder serve --socket unix:PATH [--provision unix:PATH] [--key-dir DIR]\n"
    "                                [--token SPEC]... [--max-pin-failures N] [--token-ttl DUR]\n"
    "                                [--rotation-grace DUR] [--debug]\n"
    "\n"
    "Holds the private keys of the PKCS#11 token (libcloister-pkcs11.so) inside the enclave and\n"
    "signs and decrypts with them for the module; nothing else.\n"
    "\n";

static const char serve_epilog[] =
    "The KMS key source opens keys provisioned as KMS ciphertexts (e.g. by `cloister host acm`)\n"
    "inside the enclave; its session is opened at start.  DUR is 250ms, 5s, 2m, 1h or a number\n"
    "of seconds.\n"
    "Prints 'keyholder: ready' once listening.  SIGTERM/SIGINT wipe the keys and exit.\n";

typedef struct serve_options {
    char *socket, *provision, *key_dir;
    cl_opt_list tokens;
    unsigned max_failures;
    uint64_t ttl_ms, grace_ms;
    bool debug;
} serve_options;

static int check_key_dir(void *base, const char *value)
{
    (void)base;
    CL_ENSURE(strlen(value) < sizeof kh.key_dir, CL_EINVAL, "too long");
    return CL_OK;
}

#define S serve_options
static const cl_opt serve_table[] = {
    {.name = "socket", CL_OPT_STR(S, socket), .flags = CL_OPT_REQUIRED, .arg = "ADDR",
     .help = "the module's socket (CLOISTER_KEYHOLDER in the module's environment)"},
    {.name = "provision", CL_OPT_STR(S, provision), .arg = "ADDR",
     .help = "the provisioning socket (put/delete/status); on Nitro the vsock port only the parent instance can "
             "reach"},
    {.name = "key-dir", CL_OPT_STR(S, key_dir), .set = check_key_dir, .arg = "DIR",
     .help = "directory inside the enclave that holds PEM key files; a provisioning message names a file in it "
             "(plain name only)"},
    {.name = "token", CL_OPT_LIST_AT(S, tokens, CL_KH_MAX_TOKENS), .arg = "SPEC",
     .help = "a token at start: LABEL,key=NAME,cert=PATH,pin-file=PATH[,object=OBJ] (key NAME inside --key-dir, "
             "cert a PEM chain leaf first); repeatable"},
    {.name = "max-pin-failures", CL_OPT_UINT_AT(S, max_failures, 0, 1000), .def = "5", .arg = "N",
     .help = "consecutive wrong PINs that lock a token until it is put again; 0 never locks"},
    {.name = "token-ttl", CL_OPT_DURATION_AT(S, ttl_ms, 1, 0, 30ull * 86400 * 1000), .def = "0", .arg = "DUR",
     .help = "a token not put again within DUR expires and its keys are wiped; 0: never"},
    {.name = "rotation-grace", CL_OPT_DURATION_AT(S, grace_ms, 1, 0, 30ull * 86400 * 1000), .def = "60s",
     .arg = "DUR", .help = "the previous key stays usable this long after a rotation"},
    {.name = "debug", CL_OPT_FLAG(S, debug), .help = "also log every signature's raw operation (never its data)"},
};
#undef S

static int serve(const serve_options *o);

static int cmd_serve(int argc, char **argv)
{
    serve_options o = {0};
    cl_opt_section sections[] = {
        CL_OPT_SECTION("options", serve_table, &o),
        {"KMS key source (any of these enables it)", NULL, 0, NULL},
    };
    sections[1].opts = kh_kms_options(&sections[1].count);
    cl_options spec = {.prog = "keyholder serve", .usage = serve_usage_text, .epilog = serve_epilog,
                       .sections = sections, .section_count = sizeof sections / sizeof sections[0]};
    cl_options_result r;
    int status = cl_options_main(&spec, argc, argv, &r);
    cl_options_free(NULL, &r);
    if (status == 0)
        status = serve(&o); /* returns only before it serves */
    else
        status = status > 0 ? 0 : EXIT_USAGE;
    cl_options_free(&spec, NULL);
    return status;
}

static int serve(const serve_options *o)
{
    const char *socket_addr = o->socket, *prov_addr = o->provision;
    char **token_specs = o->tokens.items;
    size_t ntokens = o->tokens.count;
    if (o->key_dir)
        snprintf(kh.key_dir, sizeof kh.key_dir, "%s", o->key_dir);
    kh.max_failures = o->max_failures;
    kh.ttl_ms = o->ttl_ms;
    kh.grace_ms = o->grace_ms;
    if (o->debug)
        cl_log_set_level(CL_LOG_DEBUG);
    cl_log_set_component("keyholder");
    /* no core dumps, no ptrace by other processes of the same user */
    prctl(PR_SET_DUMPABLE, 0);
    if (kh_kms_start() < 0) {
        fprintf(stderr, "keyholder: %s\n", cl_error_message());
        return EXIT_FAILED;
    }
    size_t kms_key_count = 0;
    const char *const *kms_keys = kh_kms_key_ids(&kms_key_count);
    cl_custody_config config = {.max_failures = kh.max_failures,
                                .ttl_ms = kh.ttl_ms,
                                .grace_ms = kh.grace_ms,
                                .key_dir = kh.key_dir,
                                .kms_decrypt = kh_kms_enabled() ? kh_kms_decrypt : NULL,
                                .kms_key_ids = kms_keys,
                                .kms_key_id_count = kms_key_count};
    if (cl_custody_new(&config, &kh.custody) < 0) {
        fprintf(stderr, "keyholder: %s\n", cl_error_message());
        return EXIT_FAILED;
    }
    for (size_t i = 0; i < ntokens; i++) {
        if (token_from_flag(token_specs[i]) < 0) {
            fprintf(stderr, "keyholder: --token: %s\n", cl_error_message());
            return EXIT_USAGE;
        }
    }
    int lfd = -1, pfd = -1, stop_fd = -1;
    if (cl_stop_signals_install(&stop_fd) < 0 || listen_on(socket_addr, &lfd) < 0 ||
        (prov_addr && listen_on(prov_addr, &pfd) < 0)) {
        fprintf(stderr, "keyholder: %s\n", cl_error_message());
        return EXIT_FAILED;
    }
    cl_log(CL_LOG_INFO, "listening", "socket", socket_addr, "provision", prov_addr ? prov_addr : "-", NULL);
    fprintf(stderr, "keyholder: ready\n");
    int fds[2] = {lfd, pfd};
    cl_small_server_config sc = {.listen_fds = fds,
                                 .listen_count = pfd >= 0 ? 2 : 1,
                                 .stop_fd = stop_fd,
                                 .max_connections = MAX_CONNECTIONS,
                                 .serve = serve_conn,
                                 .tick = tick,
                                 .tick_ms = 1000,
                                 .refused = refused};
    /* returns once every connection thread is joined */
    int rc = cl_small_server_run(&sc);
    if (rc < 0)
        cl_log(CL_LOG_ERROR, "serve_failed", "error", cl_error_message(), NULL);
    close(lfd);
    if (pfd >= 0)
        close(pfd);
    cl_address a;
    if (cl_address_parse(socket_addr, &a) == 0 && a.kind == CL_ADDR_UNIX)
        unlink(a.path);
    if (prov_addr && cl_address_parse(prov_addr, &a) == 0 && a.kind == CL_ADDR_UNIX)
        unlink(a.path);
    cl_custody_free(kh.custody); /* wipes the keys */
    kh.custody = NULL;
    kh_kms_stop();
    cl_log(CL_LOG_INFO, "stopped", "keys", "wiped", NULL);
    /* every thread is joined and every key wiped; _exit skips the exit-time
     * teardown of what OpenSSL's configuration loaded (engines), which is
     * the process's to drop, as before */
    _exit(rc < 0 ? EXIT_FAILED : 0);
}

/* ---- provisioning client ------------------------------------------------------------- */

static int roundtrip(const char *addr_text, const cl_kh_request *r, cl_buf *reply, uint32_t *status,
                     cl_cursor *payload)
{
    cl_address a;
    int fd = -1, rc = CL_OK;
    cl_buf req = CL_BUF_INIT;
    CL_TRY_OUT(cl_address_parse(addr_text, &a));
    CL_TRY_OUT(cl_address_connect(&a, &fd));
    struct timeval tv = {30, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    CL_TRY_OUT(cl_kh_request_encode(&req, r));
    CL_TRY_OUT(cl_kh_write_frame(fd, req.data, req.len));
    CL_TRY_OUT(cl_kh_read_frame(fd, CL_KH_MAX_FRAME, reply, NULL));
    CL_TRY_OUT(cl_kh_reply_split(reply->data, reply->len, status, payload));
out:
    if (fd >= 0)
        close(fd);
    cl_buf_free(&req);
    return rc;
}

static const char client_usage_text[] =
    "usage: cloister keyholder put --provision ADDR --token LABEL --pin-file PATH --key NAME\n"
    "                              --chain PEM [--object LABEL]\n"
    "       cloister keyholder delete --provision ADDR --token LABEL\n"
    "       cloister keyholder status --provision ADDR\n"
    "\n"
    "Provisioning over the key-holder's provisioning socket.  put creates a token, refreshes it\n"
    "(same key and certificate) or rotates it (new key or certificate: the previous key stays\n"
    "usable for the key-holder's --rotation-grace); the PIN is set each time and unlocks a\n"
    "locked token.  The key is NAME, a PEM file inside the key-holder's --key-dir: the key\n"
    "comes from inside the enclave, never through this channel.  (Keys provisioned as KMS\n"
    "ciphertexts, opened inside the enclave: `cloister host acm`.)\n\n";

typedef struct client_options {
    char *provision, *token, *pin_file, *key, *chain, *object;
} client_options;

#define C client_options
static const cl_opt client_table[] = {
    {.name = "provision", CL_OPT_STR(C, provision), .flags = CL_OPT_REQUIRED, .arg = "ADDR",
     .help = "the key-holder's provisioning socket"},
    {.name = "token", CL_OPT_STR(C, token), .arg = "LABEL", .help = "the token (put, delete)"},
    {.name = "pin-file", CL_OPT_STR(C, pin_file), .arg = "PATH", .help = "its PIN (put)"},
    {.name = "key", CL_OPT_STR(C, key), .arg = "NAME", .help = "the key's PEM file in --key-dir (put)"},
    {.name = "chain", CL_OPT_STR(C, chain), .arg = "PEM", .help = "the certificate chain, leaf first (put)"},
    {.name = "object", CL_OPT_STR(C, object), .arg = "LABEL", .help = "the key object's label (put; default: --token's)"},
};
#undef C

static int client_run(const char *verb, const client_options *o);

static int cmd_client(const char *verb, int argc, char **argv)
{
    client_options o = {0};
    cl_opt_section section = CL_OPT_SECTION("options", client_table, &o);
    char prog[32];
    snprintf(prog, sizeof prog, "keyholder %s", verb);
    cl_options spec = {.prog = prog, .usage = client_usage_text, .sections = &section, .section_count = 1};
    cl_options_result r;
    int status = cl_options_main(&spec, argc, argv, &r);
    cl_options_free(NULL, &r);
    if (status == 0)
        status = client_run(verb, &o);
    else
        status = status > 0 ? 0 : EXIT_USAGE;
    cl_options_free(&spec, NULL);
    return status;
}

static int client_run(const char *verb, const client_options *o)
{
    const char *prov = o->provision, *label = o->token, *pin_file = o->pin_file, *key = o->key,
               *chain_file = o->chain, *object = o->object;
    bool put = !strcmp(verb, "put"), del = !strcmp(verb, "delete");
    if ((put || del) && !label) {
        fprintf(stderr, "keyholder %s: --token LABEL is required (see --help)\n", verb);
        return EXIT_USAGE;
    }
    if (put && (!pin_file || !key || !chain_file)) {
        fprintf(stderr, "keyholder put: --pin-file, --key and --chain are required (see --help)\n");
        return EXIT_USAGE;
    }
    cl_buf pin = CL_BUF_INIT, chain = CL_BUF_INIT, reply = CL_BUF_INIT;
    int status_code = EXIT_FAILED;
    cl_kh_request r = {.type = put ? CL_KH_PUT_TOKEN : del ? CL_KH_DELETE_TOKEN : CL_KH_STATUS};
    if (put) {
        if (cl_read_secret_file(pin_file, CL_KH_PIN_MAX + 2, &pin) < 0 || cl_read_file(chain_file, CL_KH_CHAIN_MAX, &chain) < 0) {
            fprintf(stderr, "keyholder %s: %s\n", verb, cl_error_message());
            goto out;
        }
        while (pin.len && (pin.data[pin.len - 1] == '\n' || pin.data[pin.len - 1] == '\r'))
            pin.len--;
        r.pin = (cl_slice){pin.data, pin.len};
        r.object_label = (cl_slice){(const uint8_t *)(object ? object : label), strlen(object ? object : label)};
        r.key_source = CL_KH_SRC_FILE;
        r.key_ref = (cl_slice){(const uint8_t *)key, strlen(key)};
        r.chain = (cl_slice){chain.data, chain.len};
    }
    if (label)
        r.label = (cl_slice){(const uint8_t *)label, strlen(label)};
    if ((put || del) && !cl_kh_label_valid(r.label)) {
        fprintf(stderr, "keyholder %s: token label: 1..%d characters without spaces or URI delimiters\n", verb,
                CL_KH_LABEL_MAX);
        status_code = EXIT_USAGE;
        goto out;
    }
    uint32_t st;
    cl_cursor payload;
    if (roundtrip(prov, &r, &reply, &st, &payload) < 0) {
        fprintf(stderr, "keyholder %s: %s\n", verb, cl_error_message());
        goto out;
    }
    if (st) {
        fprintf(stderr, "keyholder %s: refused: %s\n", verb, cl_kh_status_name(st));
        status_code = EXIT_REJECTED;
        goto out;
    }
    if (put) {
        uint32_t slot;
        uint64_t gen;
        if (cl_cursor_be32(&payload, &slot) < 0 || cl_cursor_be64(&payload, &gen) < 0) {
            fprintf(stderr, "keyholder put: short reply\n");
            goto out;
        }
        printf("token=%s slot=%u generation=%llu\n", label, slot, (unsigned long long)gen);
    } else if (!del) {
        cl_kh_token_info t[CL_KH_MAX_TOKENS];
        size_t n;
        if (cl_kh_decode_tokens(&payload, t, CL_KH_MAX_TOKENS, &n) < 0) {
            fprintf(stderr, "keyholder status: %s\n", cl_error_message());
            goto out;
        }
        for (size_t i = 0; i < n; i++)
            printf("token=%.*s slot=%u serial=%.*s generation=%llu age_ms=%llu%s%s%s\n", (int)t[i].label.len,
                   (const char *)t[i].label.data, t[i].slot, (int)t[i].serial.len, (const char *)t[i].serial.data,
                   (unsigned long long)t[i].generation, (unsigned long long)t[i].age_ms,
                   t[i].flags & CL_KH_TOKEN_LOCKED ? " locked" : "", t[i].flags & CL_KH_TOKEN_EXPIRED ? " expired" : "",
                   t[i].flags & CL_KH_TOKEN_COUNT_LOW ? " pin-count-low" : "");
    }
    status_code = 0;
out:
    cl_buf_free(&pin);
    cl_buf_free(&chain);
    cl_buf_free(&reply);
    return status_code;
}

int cmd_keyholder(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        FILE *out = argc < 2 ? stderr : stdout;
        fprintf(out, "usage: cloister keyholder serve|put|delete|status [ARGS...]\n\n"
                     "The enclave's key-holder for the PKCS#11 token, and its provisioning client.\n"
                     "'cloister keyholder serve --help' and 'cloister keyholder put --help' say more.\n");
        return argc < 2 ? EXIT_USAGE : 0;
    }
    if (!strcmp(argv[1], "serve"))
        return cmd_serve(argc - 1, argv + 1);
    if (!strcmp(argv[1], "put") || !strcmp(argv[1], "delete") || !strcmp(argv[1], "status"))
        return cmd_client(argv[1], argc - 1, argv + 1);
    fprintf(stderr, "keyholder: unknown verb '%s'\n", argv[1]);
    return EXIT_USAGE;
}

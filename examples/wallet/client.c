/* cloister-wallet-client: talks to the wallet only after proving, on the
 * very TLS connection it will use, that the enclave at the other end is
 * the expected one.
 *
 *   verify  a fresh nonce to /enclave/attestation; the document verified
 *           (COSE, chain to the root, nonce, age, PCRs, not debug), its
 *           user_data naming this connection's certificate and an app key
 *           hash equal to SHA-256 of the app's key (GET /app/pk, same
 *           connection) and to --app-key-hash when given
 *   create  verify, then POST /app/sss/key on the same connection
 *   sign    verify, then POST /app/sss/signature on the same connection
 *
 * The share is written only to that connection: if the enclave closes it
 * after the proof, the client stops rather than dial again, since a new
 * connection could end anywhere. */
#include "cloister/core/address.h"
#include "cloister/core/attestation.h"
#include "cloister/core/buf.h"
#include "cloister/core/encoding.h"
#include "cloister/core/http.h"
#include "cloister/core/options.h"

#include <fcntl.h>
#include <jansson.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NONCE_LEN 20
#define HASH_LEN 32
#define USER_DATA_LEN (2 * (2 + HASH_LEN))
#define MAX_BODY (256 * 1024)
#define EXIT_REJECTED 1
#define EXIT_USAGE 2
#define EXIT_FAILED 3

typedef struct client_opts {
    cl_opt_list roots;
    cl_attestation_policy policy;
    bool allow_debug, ethereum;
    uint64_t max_age_s, timeout_s;
    char *connect, *app_key_hash, *recovery_key, *key_file, *tx_hash, *out;
} client_opts;

static int add_pcr(void *base, const char *value)
{
    return cl_attestation_policy_add_pcr(&((client_opts *)base)->policy, value);
}

static const cl_opt option_table[] = {
    {.name = "root", CL_OPT_LIST_AT(client_opts, roots, 16), .flags = CL_OPT_NONEMPTY, .arg = "PEM",
     .help = "trust these roots instead of AWS's Nitro Enclaves root (the simulator's, locally)"},
    {.name = "pcr", CL_OPT_CALLBACK(add_pcr), .flags = CL_OPT_REPEAT | CL_OPT_SELF_NAMED, .arg = "N=HEX",
     .help = "require PCR N to equal HEX (repeatable: PCR0 the image, PCR16 the wallet binary)"},
    {.name = "app-key-hash", CL_OPT_STR(client_opts, app_key_hash), .arg = "HEX",
     .help = "require this attested app key hash (SHA-256 of the wallet's Recipient key)"},
    {.name = "allow-debug", CL_OPT_FLAG(client_opts, allow_debug), .help = "accept a debug-mode enclave"},
    {.name = "max-age", CL_OPT_DURATION_AT(client_opts, max_age_s, 1000, 1, 86400), .def = "300", .arg = "SECONDS",
     .help = "refuse an older document"},
    {.name = "connect", CL_OPT_STR(client_opts, connect), .arg = "ADDR",
     .help = "dial ADDR (tcp:HOST:PORT) instead of the URL's host; SNI and Host stay the URL's"},
    {.name = "timeout", CL_OPT_DURATION_AT(client_opts, timeout_s, 1000, 1, 3600), .def = "30", .arg = "SECONDS",
     .help = "give up after this long in all"},
    {.name = "recovery-public-key", CL_OPT_STR(client_opts, recovery_key), .arg = "PEM",
     .help = "create: the P-384 public key the recovery share is sealed to"},
    {.name = "key", CL_OPT_STR(client_opts, key_file), .arg = "FILE",
     .help = "sign: the JSON that create wrote (key_shard, public_key)"},
    {.name = "tx-hash", CL_OPT_STR(client_opts, tx_hash), .arg = "TEXT",
     .help = "sign: what to sign (the workshop's tx_hash; with --ethereum a 32-byte hash in hex)"},
    {.name = "ethereum", CL_OPT_FLAG(client_opts, ethereum),
     .help = "sign: a recoverable low-S signature (v, r, s) over the 32-byte hash"},
    {.name = "out", CL_OPT_STR(client_opts, out), .arg = "FILE",
     .help = "create: write the answer here (mode 0600) instead of stdout"},
};

static const char usage_text[] =
    "usage: cloister-wallet-client https://HOST[:PORT] verify|create|sign [OPTIONS]\n\n"
    "Verifies the wallet's enclave on one TLS connection and only then uses that same\n"
    "connection to create a key or to send the user's share for a signature.\n\n";

static const char epilog[] = "Exit status: 0 done, 1 the enclave was not proven or the wallet refused,\n"
                             "2 bad command line, 3 could not connect or talk.\n";

/* ---- one TLS connection ---------------------------------------------------- */

typedef struct conn {
    SSL_CTX *ctx;
    SSL *ssl;
    int fd;
    char host[256], authority[300];
    uint8_t cert_sha256[HASH_LEN];
    cl_buf in; /* bytes read and not yet used */
    bool closed;
} conn;

static int conn_open(conn *c, const char *url, const char *connect_to)
{
    memset(c, 0, sizeof *c);
    c->fd = -1;
    unsigned port = 443;
    const char *h = url;
    CL_ENSURE(!strncmp(h, "https://", 8), CL_EINVAL, "the URL must start with https://");
    h += 8;
    size_t n = strcspn(h, ":/");
    CL_ENSURE(n > 0 && n < sizeof c->host, CL_EINVAL, "no host in %s", url);
    memcpy(c->host, h, n);
    if (h[n] == ':')
        port = (unsigned)strtoul(h + n + 1, NULL, 10);
    CL_ENSURE(port > 0 && port < 65536, CL_EINVAL, "bad port in %s", url);
    snprintf(c->authority, sizeof c->authority, "%s:%u", c->host, port);
    char addr_text[320];
    if (connect_to)
        snprintf(addr_text, sizeof addr_text, "%s", connect_to);
    else
        snprintf(addr_text, sizeof addr_text, "tcp:%s:%u", c->host, port);
    cl_address a;
    CL_TRY(cl_address_parse(addr_text, &a));
    CL_TRY(cl_address_connect(&a, &c->fd));
    c->ctx = SSL_CTX_new(TLS_client_method());
    CL_ENSURE_OSSL(c->ctx, CL_ENOMEM, "no TLS context");
    /* the chain is not trusted: the attestation is (it names this certificate) */
    SSL_CTX_set_verify(c->ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION);
    c->ssl = SSL_new(c->ctx);
    CL_ENSURE_OSSL(c->ssl && SSL_set_fd(c->ssl, c->fd) == 1, CL_ENOMEM, "no TLS connection");
    SSL_set_tlsext_host_name(c->ssl, c->host);
    SSL_set_alpn_protos(c->ssl, (const unsigned char *)"\x08http/1.1", 9);
    CL_ENSURE_OSSL(SSL_connect(c->ssl) == 1, CL_EIO, "TLS handshake with %s failed", c->authority);
    X509 *cert = SSL_get1_peer_certificate(c->ssl);
    CL_ENSURE(cert, CL_EIO, "%s presented no certificate", c->authority);
    unsigned char *der = NULL;
    int len = i2d_X509(cert, &der);
    X509_free(cert);
    CL_ENSURE_OSSL(len > 0, CL_ECRYPTO, "cannot encode the certificate");
    unsigned mdlen = 0;
    int ok = EVP_Digest(der, (size_t)len, c->cert_sha256, &mdlen, EVP_sha256(), NULL);
    OPENSSL_free(der);
    CL_ENSURE_OSSL(ok == 1, CL_ECRYPTO, "SHA-256 failed");
    return CL_OK;
}

static void conn_close(conn *c)
{
    if (c->ssl) {
        SSL_shutdown(c->ssl);
        SSL_free(c->ssl);
    }
    SSL_CTX_free(c->ctx);
    if (c->fd >= 0)
        close(c->fd);
    cl_buf_free(&c->in);
}

static int conn_write(conn *c, const void *data, size_t len)
{
    CL_ENSURE(!c->closed, CL_EIO, "the enclave closed the verified connection: not sending anything elsewhere");
    size_t off = 0;
    while (off < len) {
        int n = SSL_write(c->ssl, (const char *)data + off, (int)(len - off));
        CL_ENSURE_OSSL(n > 0, CL_EIO, "writing to %s failed", c->authority);
        off += (size_t)n;
    }
    return CL_OK;
}

static int conn_fill(conn *c)
{
    CL_TRY(cl_buf_reserve(&c->in, 16384));
    int n = SSL_read(c->ssl, c->in.data + c->in.len, 16384);
    if (n <= 0) {
        c->closed = true;
        return cl_error_set(CL_EIO, "%s closed the connection", c->authority);
    }
    c->in.len += (size_t)n;
    return CL_OK;
}

/* One request and its answer on the connection; *status and the body. */
static int exchange(conn *c, const char *method, const char *path, const char *body, int *status, cl_buf *out)
{
    cl_buf req = CL_BUF_INIT;
    char head[1024];
    snprintf(head, sizeof head,
             "%s %s HTTP/1.1\r\nHost: %s\r\nAccept: application/json\r\n%s%zu\r\n\r\n", method, path,
             c->authority, body ? "Content-Type: application/json\r\nContent-Length: " : "Content-Length: ",
             body ? strlen(body) : 0);
    int rc = cl_buf_append(&req, head, strlen(head));
    if (rc == CL_OK && body)
        rc = cl_buf_append(&req, body, strlen(body));
    if (rc == CL_OK)
        rc = conn_write(c, req.data, req.len);
    cl_buf_free(&req); /* wiped: it may carry the user's share */
    CL_TRY(rc);
    cl_http_head h;
    bool complete = false;
    for (;;) {
        CL_TRY(cl_http_parse_response(c->in.data, c->in.len, 65536, (cl_slice){(const uint8_t *)method, strlen(method)}, &h, &complete));
        if (complete)
            break;
        CL_TRY(conn_fill(c));
    }
    CL_ENSURE(h.body == CL_HTTP_BODY_LENGTH || h.body == CL_HTTP_BODY_NONE, CL_EPROTO,
              "the answer to %s %s has no Content-Length", method, path);
    CL_ENSURE(h.content_length <= MAX_BODY, CL_ELIMIT, "the answer to %s is too large", path);
    size_t need = h.head_len + (size_t)h.content_length;
    while (c->in.len < need)
        CL_TRY(conn_fill(c));
    *status = h.status;
    cl_buf_reset(out);
    CL_TRY(cl_buf_append(out, c->in.data + h.head_len, (size_t)h.content_length));
    bool keep = h.keep_alive;
    memmove(c->in.data, c->in.data + need, c->in.len - need);
    c->in.len -= need;
    if (!keep)
        c->closed = true;
    return CL_OK;
}

/* ---- the proof ----------------------------------------------------------- */

static int prove(conn *c, client_opts *o, cl_verifier *v)
{
    uint8_t nonce[NONCE_LEN];
    CL_ENSURE_OSSL(RAND_bytes(nonce, NONCE_LEN) == 1, CL_ECRYPTO, "no randomness");
    char path[96], hex[2 * NONCE_LEN + 1];
    cl_hex_encode(nonce, NONCE_LEN, hex);
    snprintf(path, sizeof path, "/enclave/attestation?nonce=%s", hex);
    cl_buf body = CL_BUF_INIT, doc_bytes = CL_BUF_INIT, pk = CL_BUF_INIT;
    cl_attestation_doc doc;
    bool parsed = false;
    int status = 0, rc = CL_OK;
    json_t *pkj = NULL;
    CL_TRY_OUT(exchange(c, "GET", path, NULL, &status, &body));
    CL_ENSURE_OUT(status == 200, CL_EVERIFY, "GET /enclave/attestation answered %d", status);
    while (body.len && (body.data[body.len - 1] == '\n' || body.data[body.len - 1] == '\r'))
        body.len--;
    if (cl_base64_decode(body.data, body.len, &doc_bytes) < 0)
        CL_FAIL_OUT(CL_EVERIFY, "the attestation answer is not base64");
    CL_TRY_OUT(cl_attestation_parse(doc_bytes.data, doc_bytes.len, &doc));
    parsed = true;
    cl_attestation_policy policy = o->policy;
    policy.allow_debug = o->allow_debug;
    policy.max_age_ms = o->max_age_s * 1000;
    policy.check_nonce = true;
    policy.nonce = nonce;
    policy.nonce_len = NONCE_LEN;
    uint64_t now = cl_now_ms();
    CL_TRY_OUT(cl_verifier_verify(v, &doc, now));
    CL_TRY_OUT(cl_attestation_check_policy(&doc, &policy, now));
    CL_ENSURE_OUT(doc.has_user_data && doc.user_data.len == USER_DATA_LEN, CL_EVERIFY,
                  "user_data is not nitriding's (0x1220 cert hash 0x1220 app key hash)");
    const uint8_t *u = doc.user_data.data;
    CL_ENSURE_OUT(u[0] == 0x12 && u[1] == 0x20 && u[34] == 0x12 && u[35] == 0x20, CL_EVERIFY,
                  "user_data is not nitriding's multihash format");
    CL_ENSURE_OUT(!memcmp(u + 2, c->cert_sha256, HASH_LEN), CL_EVERIFY,
                  "the attested certificate is not the one on this TLS connection (a relay?)");
    const uint8_t *app_hash = u + 36;
    if (o->app_key_hash) {
        uint8_t want[HASH_LEN];
        CL_ENSURE_OUT(cl_hex_decode_fixed(o->app_key_hash, want, HASH_LEN) == CL_OK, CL_EINVAL,
                      "--app-key-hash must be 64 hex digits");
        CL_ENSURE_OUT(!memcmp(want, app_hash, HASH_LEN), CL_EVERIFY,
                      "the attested app key hash is not --app-key-hash");
    }
    /* the wallet's key, on the proven connection, must be the attested one */
    CL_TRY_OUT(exchange(c, "GET", "/app/pk", NULL, &status, &body));
    CL_ENSURE_OUT(status == 200, CL_EVERIFY, "GET /app/pk answered %d", status);
    pkj = json_loadb((const char *)body.data, body.len, JSON_REJECT_DUPLICATES, NULL);
    const char *pk_b64 = json_string_value(json_object_get(pkj, "public_key"));
    CL_ENSURE_OUT(pk_b64 && cl_base64_decode((const uint8_t *)pk_b64, strlen(pk_b64), &pk) == CL_OK, CL_EVERIFY,
                  "GET /app/pk is not {\"public_key\": base64}");
    uint8_t pk_hash[HASH_LEN];
    unsigned mdlen = 0;
    CL_ENSURE_OSSL_OUT(EVP_Digest(pk.data, pk.len, pk_hash, &mdlen, EVP_sha256(), NULL) == 1, CL_ECRYPTO,
                       "SHA-256 failed");
    CL_ENSURE_OUT(!memcmp(pk_hash, app_hash, HASH_LEN), CL_EVERIFY,
                  "the attested app key hash is not the SHA-256 of the wallet's key (GET /app/pk)");
    fprintf(stderr, "cloister-wallet-client: PROVEN on this connection: certificate ");
    for (int i = 0; i < 8; i++)
        fprintf(stderr, "%02x", c->cert_sha256[i]);
    fprintf(stderr, "..., module %.*s, app key hash ", (int)doc.module_id.len, (const char *)doc.module_id.data);
    for (int i = 0; i < 8; i++)
        fprintf(stderr, "%02x", app_hash[i]);
    fprintf(stderr, "...\n");
out:
    json_decref(pkj);
    if (parsed)
        cl_attestation_doc_free(&doc);
    cl_buf_free(&body);
    cl_buf_free(&doc_bytes);
    cl_buf_free(&pk);
    return rc;
}

/* ---- commands ------------------------------------------------------------ */

static int do_create(conn *c, client_opts *o, cl_buf *answer, int *status)
{
    CL_ENSURE(o->recovery_key, CL_EINVAL, "create needs --recovery-public-key PEM");
    cl_buf pem = CL_BUF_INIT, b64 = CL_BUF_INIT;
    CL_TRY(cl_read_file(o->recovery_key, 16384, &pem));
    int rc = cl_base64_encode(pem.data, pem.len, &b64);
    cl_buf_free(&pem);
    json_t *req = rc == CL_OK ? json_pack("{s:s%}", "recovery_public_key_b64", (const char *)b64.data, b64.len)
                              : NULL;
    char *text = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    cl_buf_free(&b64);
    CL_ENSURE(text, CL_ENOMEM, "out of memory");
    rc = exchange(c, "POST", "/app/sss/key", text, status, answer);
    free(text);
    return rc;
}

static int do_sign(conn *c, client_opts *o, cl_buf *answer, int *status)
{
    CL_ENSURE(o->key_file && o->tx_hash, CL_EINVAL, "sign needs --key FILE and --tx-hash TEXT");
    cl_buf key = CL_BUF_INIT;
    CL_TRY(cl_read_file(o->key_file, 65536, &key));
    json_t *k = json_loadb((const char *)key.data, key.len, JSON_REJECT_DUPLICATES, NULL);
    cl_buf_free(&key);
    const char *shard = json_string_value(json_object_get(k, "key_shard"));
    const char *pub = json_string_value(json_object_get(k, "public_key"));
    if (!shard || !pub) {
        json_decref(k);
        return cl_error_set(CL_EINVAL, "%s has no key_shard and public_key (what create writes)", o->key_file);
    }
    json_t *req = json_pack("{s:s, s:s, s:s, s:s}", "key_shard_b64", shard, "pub_key", pub, "tx_hash", o->tx_hash,
                            "mode", o->ethereum ? "ethereum" : "plain");
    char *text = req ? json_dumps(req, JSON_COMPACT) : NULL;
    /* jansson's copies of the share, wiped before they go */
    json_t *s = json_object_get(k, "key_shard");
    cl_wipe((char *)json_string_value(s), json_string_length(s));
    s = req ? json_object_get(req, "key_shard_b64") : NULL;
    if (s)
        cl_wipe((char *)json_string_value(s), json_string_length(s));
    json_decref(req);
    json_decref(k);
    CL_ENSURE(text, CL_ENOMEM, "out of memory");
    int rc = exchange(c, "POST", "/app/sss/signature", text, status, answer);
    cl_wipe(text, strlen(text));
    free(text);
    return rc;
}

static int write_out(const char *path, const cl_buf *b)
{
    FILE *f = stdout;
    if (path) {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        CL_ENSURE(fd >= 0, CL_EIO, "cannot create %s", path);
        f = fdopen(fd, "w");
        CL_ENSURE(f, CL_EIO, "cannot write %s", path);
    }
    bool ok = fwrite(b->data, 1, b->len, f) == b->len;
    if (path)
        ok = fclose(f) == 0 && ok;
    else
        fflush(f);
    CL_ENSURE(ok, CL_EIO, "cannot write the answer");
    return CL_OK;
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "cloister-wallet-client: timed out\n";
    ssize_t ignored = write(STDERR_FILENO, msg, sizeof msg - 1);
    (void)ignored;
    _exit(EXIT_FAILED);
}

int main(int argc, char **argv)
{
    client_opts o = {0};
    cl_opt_section section = CL_OPT_SECTION("options", option_table, &o);
    cl_options spec = {.prog = "cloister-wallet-client", .usage = usage_text, .epilog = epilog,
                       .positional = "URL COMMAND", .sections = &section, .section_count = 1};
    cl_options_result r;
    int status = cl_options_main(&spec, argc, argv, &r);
    if (status == 0 && (r.positional_count != 2 || (strcmp(r.positional[1], "verify") &&
                                                     strcmp(r.positional[1], "create") && strcmp(r.positional[1], "sign")))) {
        fprintf(stderr, "cloister-wallet-client: give the URL and one of verify, create, sign (see --help)\n");
        status = CL_EINVAL;
    }
    if (status != 0) {
        cl_options_free(&spec, &r);
        return status > 0 ? 0 : EXIT_USAGE;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_alarm);
    alarm((unsigned)o.timeout_s);
    const char *url = r.positional[0], *cmd = r.positional[1];
    cl_verifier *v = NULL;
    conn c;
    memset(&c, 0, sizeof c);
    c.fd = -1;
    cl_buf answer = CL_BUF_INIT;
    int http = 0, rc = cl_verifier_new_with_roots((const char **)o.roots.items, o.roots.count, &v);
    status = EXIT_USAGE;
    if (rc == CL_OK) {
        status = EXIT_FAILED;
        rc = conn_open(&c, url, o.connect);
    }
    if (rc == CL_OK) {
        rc = prove(&c, &o, v);
        if (rc < 0)
            status = rc == CL_EVERIFY || rc == CL_EPARSE ? EXIT_REJECTED : EXIT_FAILED;
    }
    if (rc == CL_OK && !strcmp(cmd, "verify")) {
        printf("{\"verified\": true}\n");
        status = 0;
    } else if (rc == CL_OK) {
        rc = !strcmp(cmd, "create") ? do_create(&c, &o, &answer, &http) : do_sign(&c, &o, &answer, &http);
        if (rc == CL_OK && http == 200) {
            rc = write_out(!strcmp(cmd, "create") ? o.out : NULL, &answer);
            status = rc == CL_OK ? 0 : EXIT_FAILED;
        } else if (rc == CL_OK) {
            fprintf(stderr, "cloister-wallet-client: the wallet answered %d: %.*s", http, (int)answer.len,
                    (const char *)answer.data);
            status = EXIT_REJECTED;
        } else if (rc == CL_EINVAL) {
            status = EXIT_USAGE;
        }
    }
    if (rc < 0)
        fprintf(stderr, "cloister-wallet-client: %s\n", cl_error_message());
    conn_close(&c);
    cl_buf_free(&answer);
    cl_verifier_free(v);
    cl_options_free(&spec, &r);
    return status;
}

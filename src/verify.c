/* cloister verify: remote attestation of a URL.
 *
 * Trust comes from the attestation document, not from the TLS chain: the
 * document is fetched over the very TLS connection whose certificate it
 * must name, so a man in the middle with another certificate fails the
 * binding, and the fresh nonce rules out a replayed document. */
#include "cloister/address.h"
#include "cloister/attestation.h"
#include "cloister/encoding.h"
#include "cloister/http.h"
#include "cloister/tls.h"
#include "commands.h"

#include <arpa/inet.h>
#include <getopt.h>
#include <jansson.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NONCE_LEN 20
#define HASH_LEN 32
#define USER_DATA_LEN (2 * (2 + HASH_LEN)) /* nitriding: 0x12 0x20 cert hash 0x12 0x20 app hash */
#define MAX_RESPONSE (256 * 1024)
#define MAX_HEAD (16 * 1024)
#define DEFAULT_TIMEOUT_S 10

static void verify_usage(FILE *out)
{
    fprintf(out,
            "usage: cloister verify https://HOST[:PORT] [--root PEM]... [--pcr N=HEX]... [--allow-debug]\n"
            "                       [--max-age SECONDS] [--connect ADDR] [--timeout SECONDS] [--json]\n"
            "\n"
            "Proves that the TLS key of HOST is held by a Nitro Enclave with the expected\n"
            "measurements.  It sends a fresh random 20-byte nonce to GET /enclave/attestation,\n"
            "verifies the document it gets back (COSE signature, certificate chain to the root,\n"
            "nonce, PCRs, debug mode) and checks that its user_data names the SHA-256 of the\n"
            "certificate presented on that same TLS connection (nitriding's format).  The TLS\n"
            "certificate chain itself is not trusted: the attestation is.\n"
            "\n"
            "  --root PEM        trust the certificates in PEM instead of the embedded AWS Nitro\n"
            "                    Enclaves root (repeatable; the simulator's root for local use)\n"
            "  --pcr N=HEX       require PCR N (0..31) to equal HEX (repeatable)\n"
            "  --allow-debug     accept a debug-mode enclave (PCR0 all zero); refused by default\n"
            "  --max-age S       refuse a document older than S seconds (default 300)\n"
            "  --connect ADDR    dial ADDR (tcp:HOST:PORT or unix:PATH) instead of HOST:PORT;\n"
            "                    the URL's host is still sent as SNI and Host\n"
            "  --timeout S       give up after S seconds in all (default %d)\n"
            "  --json            print what was proven as one JSON object\n"
            "\n"
            "Exit status: 0 everything holds, 1 the enclave was not proven (the reason is\n"
            "printed), 2 bad command line, 3 the check could not be made (network, TLS, HTTP).\n",
            DEFAULT_TIMEOUT_S);
}

typedef struct target {
    char host[CL_ADDRESS_HOST_MAX]; /* without IPv6 brackets */
    char authority[CL_ADDRESS_HOST_MAX + 8];
    unsigned port;
} target;

static int parse_url(const char *url, target *t)
{
    static const char scheme[] = "https://";
    CL_ENSURE(!strncmp(url, scheme, sizeof scheme - 1), CL_EINVAL,
              "the URL must start with https:// (got '%s')", url);
    const char *p = url + sizeof scheme - 1;
    size_t end = strcspn(p, "/?#");
    CL_ENSURE(p[end] == '\0' || !strcmp(p + end, "/"), CL_EINVAL,
              "the URL names the enclave only (https://HOST[:PORT]), not a path: '%s'", url);
    CL_ENSURE(end > 0 && end < sizeof t->authority, CL_EINVAL, "no host in '%s'", url);
    CL_ENSURE(!memchr(p, '@', end), CL_EINVAL, "user information in the URL is not supported");
    memcpy(t->authority, p, end);
    t->authority[end] = '\0';

    const char *host = t->authority, *port_text = NULL;
    size_t host_len;
    if (host[0] == '[') {
        const char *close = strchr(host, ']');
        CL_ENSURE(close, CL_EINVAL, "unterminated [IPv6] literal in '%s'", url);
        host++;
        host_len = (size_t)(close - host);
        if (close[1] == ':')
            port_text = close + 2;
        else
            CL_ENSURE(close[1] == '\0', CL_EINVAL, "junk after the [IPv6] literal in '%s'", url);
    } else {
        const char *colon = strchr(host, ':');
        host_len = colon ? (size_t)(colon - host) : strlen(host);
        if (colon)
            port_text = colon + 1;
    }
    CL_ENSURE(host_len > 0 && host_len < sizeof t->host, CL_EINVAL, "no host in '%s'", url);
    memcpy(t->host, host, host_len);
    t->host[host_len] = '\0';
    t->port = 443;
    if (port_text) {
        uint64_t port;
        int rc = cl_parse_u64(port_text, 65535, &port);
        if (rc < 0 || port == 0)
            return cl_error_set(CL_EINVAL, "bad port in '%s'", url);
        t->port = (unsigned)port;
    }
    return CL_OK;
}

static bool is_ip_literal(const char *host)
{
    unsigned char tmp[16];
    return inet_pton(AF_INET, host, tmp) == 1 || inet_pton(AF_INET6, host, tmp) == 1;
}

/* The whole response of a Connection: close request. */
static int tls_get(SSL *ssl, const target *t, const char *path, cl_buf *response)
{
    char request[1024];
    int n = snprintf(request, sizeof request,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: cloister-verify\r\nAccept: */*\r\n"
                     "Connection: close\r\n\r\n",
                     path, t->authority);
    CL_ENSURE(n > 0 && (size_t)n < sizeof request, CL_ELIMIT, "request too long");
    CL_ENSURE(SSL_write(ssl, request, n) == n, CL_EIO, "sending the request failed");
    for (;;) {
        CL_TRY(cl_buf_reserve(response, 16384));
        size_t room = response->cap - response->len;
        if (response->len + room > MAX_RESPONSE)
            room = MAX_RESPONSE - response->len;
        CL_ENSURE(room > 0, CL_ELIMIT, "the response is larger than %d bytes", MAX_RESPONSE);
        size_t got = 0;
        if (SSL_read_ex(ssl, response->data + response->len, room, &got)) {
            response->len += got;
            continue;
        }
        int err = SSL_get_error(ssl, 0);
        if (err == SSL_ERROR_ZERO_RETURN)
            return CL_OK;
        return cl_error_set(CL_EIO, "reading the response failed (TLS error %d)", err);
    }
}

/* The body of a complete 200 response, framing checked. */
static int response_body(const cl_buf *response, cl_buf *body)
{
    cl_http_head head;
    bool complete = false;
    int rc = cl_http_parse_response(response->data, response->len, MAX_HEAD, (cl_slice){(const uint8_t *)"GET", 3}, &head,
                                    &complete);
    if (rc < 0)
        return cl_error_prefix(rc, "malformed HTTP response: ");
    CL_ENSURE(complete, CL_EPARSE, "the connection closed before the response head ended");
    const uint8_t *rest = response->data + head.head_len;
    size_t rest_len = response->len - head.head_len;
    if (head.status != 200) {
        size_t show = rest_len < 200 ? rest_len : 200;
        while (show && (rest[show - 1] == '\n' || rest[show - 1] == '\r'))
            show--;
        return cl_error_set(CL_EVERIFY, "GET /enclave/attestation answered %d: %.*s", head.status, (int)show,
                            (const char *)rest);
    }
    switch (head.body) {
    case CL_HTTP_BODY_LENGTH:
        CL_ENSURE(rest_len >= head.content_length, CL_EPARSE, "the body ended after %zu of %llu bytes",
                  rest_len, (unsigned long long)head.content_length);
        return cl_buf_append(body, rest, (size_t)head.content_length);
    case CL_HTTP_BODY_CHUNKED: {
        cl_chunked st = {0};
        size_t off = 0;
        while (!st.done) {
            size_t consumed = 0, data_off = 0, data_len = 0;
            CL_TRY(cl_chunked_next(&st, rest + off, rest_len - off, &consumed, &data_off, &data_len));
            CL_ENSURE(consumed > 0 || st.done, CL_EPARSE, "the chunked body ended early");
            CL_TRY(cl_buf_append(body, rest + off + data_off, data_len));
            off += consumed;
        }
        return CL_OK;
    }
    case CL_HTTP_BODY_UNTIL_CLOSE:
        return cl_buf_append(body, rest, rest_len);
    default:
        return cl_error_set(CL_EPARSE, "the 200 response has no body");
    }
}

typedef struct proof {
    uint8_t nonce[NONCE_LEN];
    uint8_t cert_sha256[HASH_LEN];
    char tls_version[16];
    cl_buf document;
    cl_attestation_doc doc;
    bool parsed;
} proof;

/* Connects, asks for a document with a fresh nonce, keeps the peer
 * certificate of that same connection.  CL_EIO-class errors: could not
 * check; CL_EVERIFY: the server said no. */
static int fetch(const target *t, const char *connect_to, proof *p)
{
    int rc = CL_OK, fd = -1;
    SSL_CTX *ctx = NULL;
    SSL *ssl = NULL;
    cl_buf response = CL_BUF_INIT, body = CL_BUF_INIT;
    cl_address addr;
    char where[CL_ADDRESS_HOST_MAX + 16];
    if (connect_to) {
        CL_TRY_OUT(cl_address_parse(connect_to, &addr));
    } else {
        snprintf(where, sizeof where, strchr(t->host, ':') ? "tcp:[%s]:%u" : "tcp:%s:%u", t->host, t->port);
        CL_TRY_OUT(cl_address_parse(where, &addr));
    }
    CL_TRY_OUT(cl_address_connect(&addr, &fd));

    CL_TRY_OUT(cl_tls_client_ctx_unverified(&ctx));
    /* a peer that closes without close_notify has still ended the
     * response: the HTTP framing decides whether it was complete */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    ssl = SSL_new(ctx);
    CL_ENSURE_OUT(ssl && SSL_set_fd(ssl, fd), CL_ECRYPTO, "cannot set up TLS");
    if (!is_ip_literal(t->host))
        SSL_set_tlsext_host_name(ssl, t->host);
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_set_alpn_protos(ssl, alpn, sizeof alpn - 1);
    if (SSL_connect(ssl) != 1) {
        unsigned long e = ERR_peek_last_error();
        rc = cl_error_set(CL_EIO, "TLS handshake with %s failed: %s", t->authority,
                          e ? ERR_reason_error_string(e) : "connection closed");
        goto out;
    }
    X509 *peer = SSL_get0_peer_certificate(ssl);
    CL_ENSURE_OUT(peer, CL_EVERIFY, "the server presented no certificate");
    CL_TRY_OUT(cl_tls_cert_sha256(peer, p->cert_sha256));
    snprintf(p->tls_version, sizeof p->tls_version, "%s", SSL_get_version(ssl));

    CL_ENSURE_OUT(RAND_bytes(p->nonce, NONCE_LEN) == 1, CL_ECRYPTO, "no randomness for the nonce");
    char nonce_hex[2 * NONCE_LEN + 1], path[96];
    cl_hex_encode(p->nonce, NONCE_LEN, nonce_hex);
    snprintf(path, sizeof path, "/enclave/attestation?nonce=%s", nonce_hex);
    CL_TRY_OUT(tls_get(ssl, t, path, &response));
    CL_TRY_OUT(response_body(&response, &body));
    rc = cl_base64_decode(body.data, body.len, &p->document);
    if (rc < 0)
        rc = cl_error_set(CL_EVERIFY, "the attestation response is not base64 (%s)", cl_error_message());
out:
    ERR_clear_error();
    if (ssl)
        SSL_shutdown(ssl);
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    if (fd >= 0)
        close(fd);
    cl_buf_free(&response);
    cl_buf_free(&body);
    return rc;
}

/* The binding: user_data = 0x12 0x20 || SHA-256(this connection's cert) || 0x12 0x20 || app key hash. */
static int check_binding(const proof *p)
{
    const cl_attestation_doc *d = &p->doc;
    CL_ENSURE(d->has_user_data, CL_EVERIFY, "the document has no user_data: nothing binds it to the TLS key");
    CL_ENSURE(d->user_data.len == USER_DATA_LEN, CL_EVERIFY,
              "user_data is %zu bytes, not nitriding's %d (0x1220 cert hash 0x1220 app hash)", d->user_data.len,
              USER_DATA_LEN);
    const uint8_t *u = d->user_data.data;
    CL_ENSURE(u[0] == 0x12 && u[1] == 0x20 && u[2 + HASH_LEN] == 0x12 && u[3 + HASH_LEN] == 0x20, CL_EVERIFY,
              "user_data is not in nitriding's multihash format");
    if (memcmp(u + 2, p->cert_sha256, HASH_LEN) != 0) {
        char want[2 * HASH_LEN + 1], got[2 * HASH_LEN + 1];
        cl_hex_encode(u + 2, HASH_LEN, want);
        cl_hex_encode(p->cert_sha256, HASH_LEN, got);
        return cl_error_set(CL_EVERIFY,
                            "the attested certificate (sha256 %s) is not the one on this TLS connection (%s)", want,
                            got);
    }
    return CL_OK;
}

static bool all_zero(const uint8_t *b, size_t n)
{
    uint8_t acc = 0;
    for (size_t i = 0; i < n; i++)
        acc |= b[i];
    return acc == 0;
}

static json_t *hex_json(const uint8_t *b, size_t n)
{
    char *hex = malloc(2 * n + 1);
    if (!hex)
        return json_null();
    cl_hex_encode(b, n, hex);
    json_t *j = json_string(hex);
    free(hex);
    return j;
}

static void report_json(const char *url, const proof *p, const char *error)
{
    json_t *j = json_object();
    json_object_set_new(j, "url", json_string(url));
    json_object_set_new(j, "verified", json_boolean(error == NULL));
    if (error)
        json_object_set_new(j, "error", json_string(error));
    if (p->tls_version[0]) {
        json_object_set_new(j, "tls_version", json_string(p->tls_version));
        json_object_set_new(j, "certificate_sha256", hex_json(p->cert_sha256, HASH_LEN));
        json_object_set_new(j, "nonce", hex_json(p->nonce, NONCE_LEN));
    }
    if (p->parsed) {
        const cl_attestation_doc *d = &p->doc;
        json_object_set_new(j, "module_id", json_stringn((const char *)d->module_id.data, d->module_id.len));
        json_object_set_new(j, "timestamp", json_integer((json_int_t)d->timestamp_ms));
        json_object_set_new(j, "debug", json_boolean(cl_attestation_is_debug(d)));
        json_t *pcrs = json_object();
        for (int i = 0; i < CL_PCR_COUNT; i++) {
            if (!(d->pcr_present & (1u << i)))
                continue;
            char key[8];
            snprintf(key, sizeof key, "%d", i);
            json_object_set_new(pcrs, key, hex_json(d->pcrs[i].data, d->pcrs[i].len));
        }
        json_object_set_new(j, "pcrs", pcrs);
        if (d->has_user_data && d->user_data.len == USER_DATA_LEN) {
            const uint8_t *app = d->user_data.data + 4 + HASH_LEN;
            json_object_set_new(j, "app_key_hash", all_zero(app, HASH_LEN) ? json_null() : hex_json(app, HASH_LEN));
        }
    }
    json_dumpf(j, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    fputc('\n', stdout);
    json_decref(j);
}

static void print_hex_line(const char *label, const uint8_t *b, size_t n)
{
    char *hex = malloc(2 * n + 1);
    if (!hex)
        return;
    cl_hex_encode(b, n, hex);
    printf("  %-16s %s\n", label, hex);
    free(hex);
}

static void report_text(const char *url, const proof *p, const char *error)
{
    printf("cloister verify %s\n", url);
    if (p->tls_version[0]) {
        printf("  %-16s %s\n", "tls", p->tls_version);
        print_hex_line("certificate", p->cert_sha256, HASH_LEN);
        print_hex_line("nonce", p->nonce, NONCE_LEN);
    }
    if (p->parsed) {
        const cl_attestation_doc *d = &p->doc;
        char when[32];
        cl_format_time((int64_t)(d->timestamp_ms / 1000), when);
        printf("  %-16s %.*s\n", "module", (int)d->module_id.len, (const char *)d->module_id.data);
        printf("  %-16s %s\n", "attested at", when);
        printf("  %-16s %s\n", "debug mode", cl_attestation_is_debug(d) ? "yes (PCR0 all zero)" : "no");
        for (int i = 0; i < CL_PCR_COUNT; i++) {
            if (!(d->pcr_present & (1u << i)))
                continue;
            /* PCRs 0-2 identify the image; others only when the enclave set them */
            if (i > 2 && all_zero(d->pcrs[i].data, d->pcrs[i].len))
                continue;
            char label[16];
            snprintf(label, sizeof label, "PCR%d", i);
            print_hex_line(label, d->pcrs[i].data, d->pcrs[i].len);
        }
        if (d->has_user_data && d->user_data.len == USER_DATA_LEN) {
            const uint8_t *app = d->user_data.data + 4 + HASH_LEN;
            if (all_zero(app, HASH_LEN))
                printf("  %-16s %s\n", "app key hash", "(unset)");
            else
                print_hex_line("app key hash", app, HASH_LEN);
        }
    }
    if (error)
        printf("verdict: NOT PROVEN: %s\n", error);
    else
        printf("verdict: PROVEN: the TLS key of this connection is held by the attested enclave above\n");
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "cloister verify: timed out\n";
    ssize_t ignored = write(STDERR_FILENO, msg, sizeof msg - 1);
    (void)ignored;
    _exit(EXIT_FAILED);
}

enum { OPT_ROOT = 256, OPT_PCR, OPT_ALLOW_DEBUG, OPT_MAX_AGE, OPT_CONNECT, OPT_TIMEOUT, OPT_JSON, OPT_HELP };

int cmd_verify(int argc, char **argv)
{
    static const struct option options[] = {
        {"root", required_argument, NULL, OPT_ROOT},
        {"pcr", required_argument, NULL, OPT_PCR},
        {"allow-debug", no_argument, NULL, OPT_ALLOW_DEBUG},
        {"max-age", required_argument, NULL, OPT_MAX_AGE},
        {"connect", required_argument, NULL, OPT_CONNECT},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    cl_attestation_policy policy = {.max_age_ms = 300 * 1000};
    const char *roots[16];
    size_t root_count = 0;
    const char *connect_to = NULL;
    uint64_t timeout_s = DEFAULT_TIMEOUT_S;
    bool json = false;
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        int rc = CL_OK;
        uint64_t v;
        switch (opt) {
        case OPT_ROOT:
            if (root_count == sizeof roots / sizeof roots[0])
                rc = cl_error_set(CL_EINVAL, "--root: at most %zu roots", sizeof roots / sizeof roots[0]);
            else
                roots[root_count++] = optarg;
            break;
        case OPT_PCR:
            rc = cl_attestation_policy_add_pcr(&policy, optarg);
            break;
        case OPT_ALLOW_DEBUG:
            policy.allow_debug = true;
            break;
        case OPT_MAX_AGE:
            rc = cl_parse_u64(optarg, 365ull * 86400, &v);
            if (rc < 0)
                rc = cl_error_prefix(rc, "--max-age: ");
            policy.max_age_ms = v * 1000;
            break;
        case OPT_CONNECT: {
            cl_address a;
            rc = cl_address_parse(optarg, &a);
            if (rc < 0)
                rc = cl_error_prefix(rc, "--connect: ");
            connect_to = optarg;
            break;
        }
        case OPT_TIMEOUT:
            rc = cl_parse_u64(optarg, 3600, &timeout_s);
            if (rc == CL_OK && timeout_s == 0)
                rc = cl_error_set(CL_EINVAL, "--timeout must be at least 1 second");
            if (rc < 0)
                rc = cl_error_prefix(rc, "--timeout: ");
            break;
        case OPT_JSON:
            json = true;
            break;
        case OPT_HELP:
            verify_usage(stdout);
            return 0;
        default:
            verify_usage(stderr);
            return EXIT_USAGE;
        }
        if (rc < 0) {
            fprintf(stderr, "cloister verify: %s\n", cl_error_message());
            return EXIT_USAGE;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "cloister verify: %s\n", optind == argc ? "give the enclave's https:// URL" : "give one URL");
        verify_usage(stderr);
        return EXIT_USAGE;
    }
    const char *url = argv[optind];
    target t;
    if (parse_url(url, &t) < 0) {
        fprintf(stderr, "cloister verify: %s\n", cl_error_message());
        return EXIT_USAGE;
    }

    cl_verifier *verifier = NULL;
    int rc = cl_verifier_new(root_count == 0, &verifier);
    for (size_t i = 0; rc == CL_OK && i < root_count; i++) {
        rc = cl_verifier_add_root_pem_file(verifier, roots[i]);
        if (rc < 0)
            rc = cl_error_prefix(rc, "--root %s: ", roots[i]);
    }
    if (rc < 0) {
        fprintf(stderr, "cloister verify: %s\n", cl_error_message());
        cl_verifier_free(verifier);
        return rc == CL_ENOMEM ? EXIT_FAILED : EXIT_USAGE;
    }

    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_alarm);
    alarm((unsigned)timeout_s);

    proof p = {.document = CL_BUF_INIT};
    int status = EXIT_FAILED;
    rc = fetch(&t, connect_to, &p);
    if (rc == CL_OK) {
        /* the document's own checks first, then the binding to this connection */
        policy.check_nonce = true;
        policy.nonce = p.nonce;
        policy.nonce_len = NONCE_LEN;
        uint64_t now = cl_now_ms();
        rc = cl_attestation_parse(p.document.data, p.document.len, &p.doc);
        if (rc == CL_OK) {
            p.parsed = true;
            rc = cl_verifier_verify(verifier, &p.doc, now);
            if (rc == CL_OK)
                rc = cl_attestation_check_policy(&p.doc, &policy, now);
            if (rc == CL_OK)
                rc = check_binding(&p);
        } else {
            rc = cl_error_prefix(CL_EVERIFY, "the document does not parse: ");
        }
        status = rc == CL_OK ? 0 : EXIT_REJECTED;
    } else if (rc == CL_EVERIFY) {
        status = EXIT_REJECTED;
    }
    alarm(0);
    const char *error = rc == CL_OK ? NULL : cl_error_message();
    if (json)
        report_json(url, &p, error);
    else
        report_text(url, &p, error);
    if (error && status == EXIT_FAILED)
        fprintf(stderr, "cloister verify: %s\n", error);

    if (p.parsed)
        cl_attestation_doc_free(&p.doc);
    cl_buf_free(&p.document);
    cl_verifier_free(verifier);
    return status;
}

/* cloister verify: remote attestation of a URL.
 *
 * Trust comes from the attestation document, not from the TLS chain: the
 * document is fetched over the very TLS connection whose certificate it
 * must name, so a man in the middle with another certificate fails the
 * binding, and the fresh nonce rules out a replayed document. */
#include "cloister/core/attestation.h"
#include "cloister/core/encoding.h"
#include "cloister/core/https_client.h"
#include "cloister/core/options.h"
#include "cloister/host/eif.h"
#include "commands.h"

#include <jansson.h>
#include <openssl/rand.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NONCE_LEN 20
#define HASH_LEN 32
#define USER_DATA_LEN (2 * (2 + HASH_LEN)) /* nitriding: 0x12 0x20 cert hash 0x12 0x20 app hash */
#define MAX_RESPONSE (256 * 1024)

static const char usage_text[] =
    "usage: cloister verify https://HOST[:PORT] [--root PEM]... [--pcr N=HEX]... [--allow-debug]\n"
    "                       [--max-age SECONDS] [--connect ADDR] [--timeout SECONDS] [--json]\n"
    "\n"
    "Proves that the TLS key of HOST is held by a Nitro Enclave with the expected\n"
    "measurements.  It sends a fresh random 20-byte nonce to GET /enclave/attestation,\n"
    "verifies the document it gets back (COSE signature, certificate chain to the root,\n"
    "nonce, PCRs, debug mode) and checks that its user_data names the SHA-256 of the\n"
    "certificate presented on that same TLS connection (nitriding's format).  The TLS\n"
    "certificate chain itself is not trusted: the attestation is.\n\n";

static const char epilog[] =
    "Exit status: 0 everything holds, 1 the enclave was not proven (the reason is\n"
    "printed), 2 bad command line, 3 the check could not be made (network, TLS, HTTP).\n";

typedef struct verify_settings {
    cl_opt_list roots;
    cl_attestation_policy policy;
    bool allow_debug, json;
    uint64_t max_age_s, timeout_s;
    char *connect;
} verify_settings;

static int add_pcr(void *base, const char *value)
{
    return cl_attestation_policy_add_pcr(&((verify_settings *)base)->policy, value);
}

/* The PCRs of an image built here: the enclave must run exactly that image. */
static int add_eif(void *base, const char *path)
{
    cl_eif_measurements m;
    CL_TRY(cl_eif_measure_file(path, &m));
    const uint8_t *pcrs[] = {m.pcr0, m.pcr1, m.pcr2, m.pcr8};
    const int index[] = {0, 1, 2, 8};
    for (int i = 0; i < (m.has_pcr8 ? 4 : 3); i++) {
        char spec[8 + 2 * CL_EIF_PCR_LEN];
        int n = snprintf(spec, sizeof spec, "%d=", index[i]);
        cl_hex_encode(pcrs[i], CL_EIF_PCR_LEN, spec + n);
        CL_TRY(cl_attestation_policy_add_pcr(&((verify_settings *)base)->policy, spec));
    }
    return CL_OK;
}

static int check_connect(void *base, const char *value)
{
    (void)base;
    cl_address a;
    return cl_address_parse(value, &a);
}

/* 0 would switch the timestamp checks off (max_age_ms 0 means no limit):
 * refused with that reason before the bounds are checked */
static int check_max_age(void *base, const char *value)
{
    (void)base;
    uint64_t ms;
    if (cl_parse_duration(value, UINT64_MAX, &ms) == CL_OK && ms == 0)
        return cl_error_set(CL_EINVAL, "must be at least 1 second (0 would turn the timestamp checks off)");
    return CL_OK;
}

static const cl_opt verify_options[] = {
    {.name = "root", CL_OPT_LIST_AT(verify_settings, roots, 16), .flags = CL_OPT_NONEMPTY, .arg = "PEM",
     .help = "trust the certificates in PEM instead of the embedded AWS Nitro Enclaves root (repeatable; the "
             "simulator's root for local use)"},
    {.name = "pcr", CL_OPT_CALLBACK(add_pcr), .flags = CL_OPT_REPEAT | CL_OPT_SELF_NAMED, .arg = "N=HEX",
     .help = "require PCR N (0..31) to equal HEX (repeatable)"},
    {.name = "eif", CL_OPT_CALLBACK(add_eif), .arg = "IMAGE.eif",
     .help = "require the PCRs of this image (0, 1, 2, and 8 when signed), measured here as nitro-cli does: the "
             "enclave runs the image you built"},
    {.name = "allow-debug", CL_OPT_FLAG(verify_settings, allow_debug),
     .help = "accept a debug-mode enclave (PCR0 all zero); refused by default"},
    {.name = "max-age", CL_OPT_DURATION_AT(verify_settings, max_age_s, 1000, 1, 365ull * 86400), .def = "300",
     .set = check_max_age, .arg = "SECONDS", .help = "refuse a document older than this (seconds, or 90s, 5m, 1h)"},
    {.name = "connect", CL_OPT_STR(verify_settings, connect), .set = check_connect, .arg = "ADDR",
     .help = "dial ADDR (tcp:HOST:PORT or unix:PATH) instead of HOST:PORT; the URL's host is still sent as SNI "
             "and Host"},
    {.name = "timeout", CL_OPT_DURATION_AT(verify_settings, timeout_s, 1000, 1, 3600), .def = "10",
     .arg = "SECONDS", .help = "give up after this long in all"},
    {.name = "json", CL_OPT_FLAG(verify_settings, json), .help = "print what was proven as one JSON object"},
};

typedef struct proof {
    uint8_t nonce[NONCE_LEN];
    uint8_t cert_sha256[HASH_LEN];
    char tls_version[16];
    cl_buf document;
    cl_attestation_doc doc;
    bool parsed;
} proof;

/* Asks for a document with a fresh nonce over a new TLS connection and
 * keeps that connection's certificate.  CL_EIO-class errors: could not
 * check; CL_EVERIFY: the server said no. */
static int fetch(const cl_https_target *t, const char *connect_to, proof *p)
{
    CL_ENSURE_OSSL(RAND_bytes(p->nonce, NONCE_LEN) == 1, CL_ECRYPTO, "no randomness for the nonce");
    char nonce_hex[2 * NONCE_LEN + 1], path[96];
    cl_hex_encode(p->nonce, NONCE_LEN, nonce_hex);
    snprintf(path, sizeof path, "/enclave/attestation?nonce=%s", nonce_hex);
    cl_https_response r;
    int rc = cl_https_get(t, connect_to, path, MAX_RESPONSE, &r);
    if (r.tls_version[0]) {
        memcpy(p->cert_sha256, r.cert_sha256, HASH_LEN);
        snprintf(p->tls_version, sizeof p->tls_version, "%s", r.tls_version);
    }
    if (rc == CL_OK && r.status != 200) {
        size_t show = r.body.len < 200 ? r.body.len : 200;
        while (show && (r.body.data[show - 1] == '\n' || r.body.data[show - 1] == '\r'))
            show--;
        rc = cl_error_set(CL_EVERIFY, "GET /enclave/attestation answered %d: %.*s", r.status, (int)show,
                          (const char *)r.body.data);
    }
    if (rc == CL_OK) {
        rc = cl_base64_decode(r.body.data, r.body.len, &p->document);
        if (rc < 0)
            rc = cl_error_prefix(CL_EVERIFY, "the attestation response is not base64: ");
    }
    cl_https_response_free(&r);
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

static int run_verify(const char *url, verify_settings *v)
{
    cl_attestation_policy policy = v->policy;
    policy.allow_debug = v->allow_debug;
    policy.max_age_ms = v->max_age_s * 1000;
    const char *connect_to = v->connect;
    bool json = v->json;
    cl_https_target t;
    if (cl_https_target_parse(url, &t) < 0) {
        fprintf(stderr, "cloister verify: %s\n", cl_error_message());
        return EXIT_USAGE;
    }

    cl_verifier *verifier = NULL;
    int rc = cl_verifier_new_with_roots((const char **)v->roots.items, v->roots.count, &verifier);
    if (rc < 0) {
        fprintf(stderr, "cloister verify: %s\n", cl_error_message());
        return rc == CL_ENOMEM ? EXIT_FAILED : EXIT_USAGE;
    }

    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_alarm);
    alarm((unsigned)v->timeout_s);

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

int cmd_verify(int argc, char **argv)
{
    verify_settings v = {0};
    cl_opt_section section = CL_OPT_SECTION("options", verify_options, &v);
    cl_options spec = {.prog = "cloister verify", .usage = usage_text, .epilog = epilog, .positional = "URL",
                       .sections = &section, .section_count = 1};
    cl_options_result r;
    int status = cl_options_main(&spec, argc, argv, &r);
    if (status == 0 && r.positional_count != 1) {
        fprintf(stderr, "cloister verify: %s (see --help)\n",
                r.positional_count == 0 ? "give the enclave's https:// URL" : "give one URL");
        status = CL_EINVAL;
    }
    if (status != 0) {
        cl_options_free(&spec, &r);
        return status > 0 ? 0 : EXIT_USAGE;
    }
    status = run_verify(r.positional[0], &v);
    cl_options_free(&spec, &r);
    return status;
}

/* cloister attest: request, show and verify Nitro attestation documents. */
#include "cloister/core/attestation.h"
#include "cloister/core/encoding.h"
#include "cloister/enclave/nsm.h"
#include "cloister/core/options.h"
#include "commands.h"

#include <jansson.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_INPUT_FILE (1024 * 1024)

static const char usage_text[] =
    "usage: cloister attest request [--nsm ADDR] [--nonce HEX] [--user-data HEX]\n"
    "                               [--public-key PEM] [-o FILE]\n"
    "       cloister attest show FILE\n"
    "       cloister attest verify [--root PEM]... [--at now|doc|UNIX_MS] [--nonce HEX]\n"
    "                              [--pcr N=HEX]... [--allow-debug] [--max-age SECONDS] FILE...\n"
    "\n"
    "request  asks the NSM for a document and writes the raw COSE_Sign1 bytes (to stdout\n"
    "         unless -o).\n"
    "show     prints the decoded document as JSON (without verifying it).\n"
    "verify   verifies each FILE (raw CBOR or base64, '-' for stdin) in one process, one\n"
    "         line per file, exit 0 only if all are valid.  Checks: the COSE ES384\n"
    "         signature, the certificate chain to a trusted root at the verification\n"
    "         time, then the policy options.\n"
    "\n";

/* ---- request ----------------------------------------------------------- */

static int hex_value(const char *value, size_t max, cl_buf *out)
{
    cl_buf_reset(out);
    CL_TRY(cl_hex_decode(value, out));
    CL_ENSURE(out->len <= max, CL_EINVAL, "%zu bytes, at most %zu accepted", out->len, max);
    return CL_OK;
}

/* DER SubjectPublicKeyInfo of a PEM public (or private) key file. */
static int public_key_der(const char *path, cl_buf *out)
{
    int rc = CL_OK;
    cl_buf pem = CL_BUF_INIT;
    BIO *bio = NULL;
    EVP_PKEY *key = NULL;
    unsigned char *der = NULL;
    CL_TRY_OUT(cl_read_file(path, 1 << 20, &pem));
    bio = BIO_new_mem_buf(pem.data, (int)pem.len);
    CL_ENSURE_OUT(bio, CL_ENOMEM, "out of memory");
    key = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
    if (!key) {
        BIO_reset(bio);
        key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    }
    CL_ENSURE_OUT(key, CL_EINVAL, "--public-key: %s holds no PEM public or private key", path);
    int len = i2d_PUBKEY(key, &der);
    CL_ENSURE_OSSL_OUT(len > 0, CL_ECRYPTO, "cannot encode the public key of %s", path);
    CL_TRY_OUT(cl_buf_append(out, der, (size_t)len));
out:
    ERR_clear_error();
    OPENSSL_free(der);
    EVP_PKEY_free(key);
    BIO_free(bio);
    cl_buf_free(&pem);
    return rc;
}

static int write_output(const char *path, const uint8_t *data, size_t len)
{
    FILE *f = path ? fopen(path, "wb") : stdout;
    if (!f)
        return cl_error_set(CL_EIO, "cannot create %s", path);
    size_t n = fwrite(data, 1, len, f);
    int failed = path ? fclose(f) : fflush(f);
    if (n != len || failed)
        return cl_error_set(CL_EIO, "cannot write %s", path ? path : "standard output");
    return CL_OK;
}

typedef struct request {
    char *nsm, *output;
    cl_buf nonce, user_data, public_key;
    bool has_nonce, has_user_data, has_public_key;
} request;

static int set_request_nonce(void *base, const char *value)
{
    request *r = base;
    r->has_nonce = true;
    return hex_value(value, CL_ATTESTATION_MAX_FIELD_LEN, &r->nonce);
}

static int set_user_data(void *base, const char *value)
{
    request *r = base;
    r->has_user_data = true;
    return hex_value(value, CL_ATTESTATION_MAX_FIELD_LEN, &r->user_data);
}

static int set_public_key(void *base, const char *value)
{
    request *r = base;
    r->has_public_key = true;
    cl_buf_reset(&r->public_key);
    CL_TRY(public_key_der(value, &r->public_key));
    CL_ENSURE(r->public_key.len <= CL_ATTESTATION_MAX_FIELD_LEN, CL_EINVAL, "%zu bytes of DER, at most %d accepted",
              r->public_key.len, CL_ATTESTATION_MAX_FIELD_LEN);
    return CL_OK;
}

static const cl_opt request_options[] = {
    {.name = "nsm", CL_OPT_STR(request, nsm), .arg = "ADDR",
     .help = "unix:PATH (simulator) or a device path ($" CL_NSM_ENV ", else " CL_NSM_DEFAULT_DEVICE ")"},
    {.name = "nonce", CL_OPT_CALLBACK(set_request_nonce), .arg = "HEX", .help = "the document's nonce"},
    {.name = "user-data", CL_OPT_CALLBACK(set_user_data), .arg = "HEX", .help = "the document's user_data"},
    {.name = "public-key", CL_OPT_CALLBACK(set_public_key), .arg = "PEM",
     .help = "put the PEM key's DER SubjectPublicKeyInfo in the document"},
    {.name = "output", .short_name = 'o', CL_OPT_STR(request, output), .arg = "FILE",
     .help = "write the document here (default: standard output)"},
};

static int attest_request(int argc, char **argv)
{
    request q = {.nonce = CL_BUF_INIT, .user_data = CL_BUF_INIT, .public_key = CL_BUF_INIT};
    cl_opt_section sections[] = {CL_OPT_SECTION("request options", request_options, &q)};
    cl_options spec = {.prog = "cloister attest request", .usage = usage_text, .sections = sections,
                       .section_count = 1};
    cl_options_result r;
    cl_buf document = CL_BUF_INIT;
    cl_nsm *nsm = NULL;
    int status = cl_options_main(&spec, argc, argv, &r);
    if (status != 0) {
        status = status > 0 ? 0 : EXIT_USAGE;
        goto out;
    }
    status = EXIT_FAILED;
    int rc = cl_nsm_open(q.nsm, &nsm);
    if (rc == CL_OK)
        rc = cl_nsm_attestation(nsm, q.has_user_data ? q.user_data.data : NULL, q.user_data.len,
                                q.has_nonce ? q.nonce.data : NULL, q.nonce.len,
                                q.has_public_key ? q.public_key.data : NULL, q.public_key.len, &document);
    if (rc == CL_OK)
        rc = write_output(q.output, document.data, document.len);
    if (rc < 0) {
        fprintf(stderr, "cloister attest request: %s\n", cl_error_message());
        goto out;
    }
    status = 0;
out:
    cl_nsm_close(nsm);
    cl_options_free(&spec, &r);
    cl_buf_free(&q.nonce);
    cl_buf_free(&q.user_data);
    cl_buf_free(&q.public_key);
    cl_buf_free(&document);
    return status;
}

/* ---- show -------------------------------------------------------------- */

static json_t *hex_or_null(bool present, cl_slice s)
{
    if (!present)
        return json_null();
    char *hex = malloc(2 * s.len + 1);
    if (!hex)
        return json_null();
    cl_hex_encode(s.data, s.len, hex);
    json_t *j = json_string(hex);
    free(hex);
    return j;
}

static json_t *name_json(const X509_NAME *name)
{
    char text[512];
    BIO *bio = BIO_new(BIO_s_mem());
    if (!bio)
        return json_null();
    X509_NAME_print_ex(bio, name, 0, XN_FLAG_RFC2253);
    int n = BIO_read(bio, text, sizeof text - 1);
    BIO_free(bio);
    text[n > 0 ? n : 0] = '\0';
    return json_string(text);
}

static json_t *time_json(const ASN1_TIME *t)
{
    struct tm tm;
    char text[32];
    if (ASN1_TIME_to_tm(t, &tm) != 1)
        return json_null();
    strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return json_string(text);
}

static json_t *cert_json(cl_slice der)
{
    const unsigned char *p = der.data;
    X509 *cert = d2i_X509(NULL, &p, (long)der.len);
    json_t *j = json_object();
    if (!cert) {
        json_object_set_new(j, "error", json_string("not a valid X.509 certificate"));
        return j;
    }
    json_object_set_new(j, "subject", name_json(X509_get_subject_name(cert)));
    json_object_set_new(j, "issuer", name_json(X509_get_issuer_name(cert)));
    json_object_set_new(j, "not_before", time_json(X509_get0_notBefore(cert)));
    json_object_set_new(j, "not_after", time_json(X509_get0_notAfter(cert)));
    X509_free(cert);
    return j;
}

static int load_document(const char *path, cl_buf *raw)
{
    cl_buf file = CL_BUF_INIT;
    int rc = cl_read_file(path, MAX_INPUT_FILE, &file);
    if (rc == CL_OK)
        rc = cl_decode_binary_or_base64(file.data, file.len, raw);
    cl_buf_free(&file);
    return rc;
}

static int attest_show(int argc, char **argv)
{
    cl_options spec = {.prog = "cloister attest show", .usage = usage_text, .positional = "FILE", .max_positional = 1};
    cl_options_result r;
    int status = cl_options_main(&spec, argc, argv, &r);
    const char *path = r.positional_count == 1 ? r.positional[0] : NULL;
    cl_options_free(&spec, &r);
    if (status != 0)
        return status > 0 ? 0 : EXIT_USAGE;
    if (!path) {
        fprintf(stderr, "cloister attest show: expected FILE (see --help)\n");
        return EXIT_USAGE;
    }
    cl_buf raw = CL_BUF_INIT;
    cl_attestation_doc doc;
    int rc = load_document(path, &raw);
    if (rc == CL_OK)
        rc = cl_attestation_parse(raw.data, raw.len, &doc);
    cl_buf_free(&raw);
    if (rc < 0) {
        fprintf(stderr, "cloister attest show: %s: %s\n", path, cl_error_message());
        return EXIT_REJECTED;
    }
    json_t *j = json_object();
    json_object_set_new(j, "module_id", json_stringn((const char *)doc.module_id.data, doc.module_id.len));
    json_object_set_new(j, "digest", json_stringn((const char *)doc.digest.data, doc.digest.len));
    json_object_set_new(j, "timestamp", json_integer((json_int_t)doc.timestamp_ms));
    char when[32];
    cl_format_time((int64_t)(doc.timestamp_ms / 1000), when);
    json_object_set_new(j, "time", json_string(when));
    json_object_set_new(j, "debug", json_boolean(cl_attestation_is_debug(&doc)));
    json_t *pcrs = json_object();
    for (unsigned i = 0; i < CL_PCR_COUNT; i++) {
        if (!(doc.pcr_present & (1u << i)))
            continue;
        char key[4];
        snprintf(key, sizeof key, "%u", i);
        json_object_set_new(pcrs, key, hex_or_null(true, doc.pcrs[i]));
    }
    json_object_set_new(j, "pcrs", pcrs);
    json_object_set_new(j, "certificate", cert_json(doc.certificate));
    json_t *bundle = json_array();
    for (size_t i = 0; i < doc.cabundle_len; i++)
        json_array_append_new(bundle, cert_json(doc.cabundle[i]));
    json_object_set_new(j, "cabundle", bundle);
    json_object_set_new(j, "public_key", hex_or_null(doc.has_public_key, doc.public_key));
    json_object_set_new(j, "user_data", hex_or_null(doc.has_user_data, doc.user_data));
    json_object_set_new(j, "nonce", hex_or_null(doc.has_nonce, doc.nonce));
    json_dumpf(j, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    fputc('\n', stdout);
    json_decref(j);
    cl_attestation_doc_free(&doc);
    return 0;
}

/* ---- verify ------------------------------------------------------------ */

typedef struct verify {
    cl_opt_list roots;
    enum { AT_NOW, AT_DOC, AT_FIXED } at_mode;
    uint64_t at_fixed, max_age_s;
    cl_buf nonce;
    bool allow_debug;
    cl_attestation_policy policy;
} verify;

static int set_at(void *base, const char *value)
{
    verify *v = base;
    if (!strcmp(value, "now"))
        v->at_mode = AT_NOW;
    else if (!strcmp(value, "doc"))
        v->at_mode = AT_DOC;
    else {
        v->at_mode = AT_FIXED;
        CL_TRY(cl_parse_u64(value, UINT64_MAX / 2, &v->at_fixed));
    }
    return CL_OK;
}

static int set_verify_nonce(void *base, const char *value)
{
    verify *v = base;
    cl_buf_reset(&v->nonce);
    v->policy.check_nonce = true;
    return cl_hex_decode(value, &v->nonce);
}

static int add_pcr(void *base, const char *value)
{
    return cl_attestation_policy_add_pcr(&((verify *)base)->policy, value);
}

static const cl_opt verify_options[] = {
    {.name = "root", CL_OPT_LIST_AT(verify, roots, 16), .flags = CL_OPT_NONEMPTY, .arg = "PEM",
     .help = "trust the certificates in PEM instead of the embedded AWS Nitro Enclaves root (repeatable)"},
    {.name = "at", CL_OPT_CALLBACK(set_at), .arg = "T",
     .help = "verification time: now (default), doc (each document's own timestamp: the certificates are "
             "judged then, --max-age still measures the age against now) or milliseconds since the epoch"},
    {.name = "nonce", CL_OPT_CALLBACK(set_verify_nonce), .arg = "HEX", .help = "require this nonce"},
    {.name = "pcr", CL_OPT_CALLBACK(add_pcr), .flags = CL_OPT_REPEAT | CL_OPT_SELF_NAMED, .arg = "N=HEX",
     .help = "require PCR N (0..31) to equal HEX (repeatable)"},
    {.name = "allow-debug", CL_OPT_FLAG(verify, allow_debug),
     .help = "accept debug-mode enclaves (PCR0 all zero); refused by default"},
    {.name = "max-age", CL_OPT_DURATION_AT(verify, max_age_s, 1000, 1, UINT64_MAX / 1000), .arg = "SECONDS",
     .help = "refuse documents made more than this before the verification time (now with --at doc), or in the "
             "future; at least 1 (seconds, or 90s, 5m, 1h)"},
};

static int attest_verify(int argc, char **argv)
{
    verify v = {.nonce = CL_BUF_INIT};
    cl_attestation_policy *policy = &v.policy;
    cl_opt_section sections[] = {CL_OPT_SECTION("verify options", verify_options, &v)};
    cl_options spec = {.prog = "cloister attest verify", .usage = usage_text, .positional = "FILE...",
                       .sections = sections, .section_count = 1};
    cl_options_result r;
    cl_verifier *verifier = NULL;
    int status = cl_options_main(&spec, argc, argv, &r);
    if (status != 0) {
        status = status > 0 ? 0 : EXIT_USAGE;
        goto out;
    }
    status = EXIT_USAGE;
    if (r.positional_count == 0) {
        fprintf(stderr, "cloister attest verify: no document given (see --help)\n");
        goto out;
    }
    policy->allow_debug = v.allow_debug;
    policy->max_age_ms = v.max_age_s * 1000;
    policy->nonce = v.nonce.data;
    policy->nonce_len = v.nonce.len;

    int rc = cl_verifier_new_with_roots((const char **)v.roots.items, v.roots.count, &verifier);
    if (rc < 0) {
        fprintf(stderr, "cloister attest verify: %s\n", cl_error_message());
        status = EXIT_FAILED;
        goto out;
    }

    status = 0;
    for (size_t i = 0; i < r.positional_count; i++) {
        const char *path = r.positional[i];
        cl_buf raw = CL_BUF_INIT;
        cl_attestation_doc doc;
        rc = load_document(path, &raw);
        if (rc == CL_OK)
            rc = cl_attestation_parse(raw.data, raw.len, &doc);
        if (rc < 0) {
            printf("%s: rejected: %s\n", path, cl_error_message());
            status = EXIT_REJECTED;
            cl_buf_free(&raw);
            continue;
        }
        uint64_t at = v.at_mode == AT_DOC ? doc.timestamp_ms : v.at_mode == AT_FIXED ? v.at_fixed : cl_now_ms();
        rc = cl_verifier_verify(verifier, &doc, at);
        /* A document's age is how long before the verification time it was
         * made.  With --at doc the certificates are judged at the document's
         * own time (an archived document whose certificates have since
         * expired), but its age against its own timestamp is always 0: so
         * the age is measured against the clock, now. */
        uint64_t age_at = v.at_mode == AT_DOC ? cl_now_ms() : at;
        if (rc == CL_OK)
            rc = cl_attestation_check_policy(&doc, policy, age_at);
        if (rc == CL_OK) {
            char when[32];
            cl_format_time((int64_t)(doc.timestamp_ms / 1000), when);
            printf("%s: ok module_id=%.*s timestamp=%s%s\n", path, (int)doc.module_id.len,
                   (const char *)doc.module_id.data, when, cl_attestation_is_debug(&doc) ? " debug" : "");
        } else {
            printf("%s: rejected: %s\n", path, cl_error_message());
            status = EXIT_REJECTED;
        }
        cl_attestation_doc_free(&doc);
        cl_buf_free(&raw);
    }
out:
    cl_verifier_free(verifier);
    cl_options_free(&spec, &r);
    cl_buf_free(&v.nonce);
    return status;
}

/* The overview: every subcommand's options. */
static void attest_usage(FILE *out)
{
    cl_opt_section sections[] = {CL_OPT_SECTION("request options", request_options, NULL),
                                 CL_OPT_SECTION("verify options", verify_options, NULL)};
    cl_options spec = {.prog = "cloister attest", .usage = usage_text, .sections = sections, .section_count = 2};
    char *text = cl_options_help(&spec);
    if (text)
        fputs(text, out);
    free(text);
}

int cmd_attest(int argc, char **argv)
{
    if (argc < 2) {
        attest_usage(stderr);
        return EXIT_USAGE;
    }
    const char *sub = argv[1];
    if (!strcmp(sub, "request"))
        return attest_request(argc - 1, argv + 1);
    if (!strcmp(sub, "show"))
        return attest_show(argc - 1, argv + 1);
    if (!strcmp(sub, "verify"))
        return attest_verify(argc - 1, argv + 1);
    if (!strcmp(sub, "-h") || !strcmp(sub, "--help")) {
        attest_usage(stdout);
        return 0;
    }
    fprintf(stderr, "cloister attest: unknown subcommand '%s'\n", sub);
    attest_usage(stderr);
    return EXIT_USAGE;
}

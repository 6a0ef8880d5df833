/* cloister attest: request, show and verify Nitro attestation documents. */
#include "cloister/core/attestation.h"
#include "cloister/core/encoding.h"
#include "cloister/enclave/nsm.h"
#include "commands.h"

#include <getopt.h>
#include <jansson.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_INPUT_FILE (1024 * 1024)

static void attest_usage(FILE *out)
{
    fprintf(out,
            "usage: cloister attest request [--nsm ADDR] [--nonce HEX] [--user-data HEX]\n"
            "                               [--public-key PEM] [-o FILE]\n"
            "       cloister attest show FILE\n"
            "       cloister attest verify [--root PEM]... [--at now|doc|UNIX_MS] [--nonce HEX]\n"
            "                              [--pcr N=HEX]... [--allow-debug] [--max-age SECONDS] FILE...\n"
            "\n"
            "request  asks the NSM for a document and writes the raw COSE_Sign1 bytes (to stdout\n"
            "         unless -o).  ADDR is unix:PATH (simulator) or a device path; default\n"
            "         $" CL_NSM_ENV ", else " CL_NSM_DEFAULT_DEVICE ".  --public-key puts the PEM key's\n"
            "         DER SubjectPublicKeyInfo in the document.\n"
            "show     prints the decoded document as JSON (without verifying it).\n"
            "verify   verifies each FILE (raw CBOR or base64, '-' for stdin) in one process, one\n"
            "         line per file, exit 0 only if all are valid.  Checks: the COSE ES384\n"
            "         signature, the certificate chain to a trusted root at the verification\n"
            "         time, then the policy options.\n"
            "  --root PEM        trust the certificates in PEM instead of the embedded AWS Nitro\n"
            "                    Enclaves root (repeatable)\n"
            "  --at T            verification time: now (default), doc (each document's own\n"
            "                    timestamp) or milliseconds since the epoch\n"
            "  --nonce HEX       require this nonce\n"
            "  --pcr N=HEX       require PCR N (0..31) to equal HEX (repeatable)\n"
            "  --allow-debug     accept debug-mode enclaves (PCR0 all zero); refused by default\n"
            "  --max-age S       refuse documents whose timestamp is more than S seconds old\n");
}

/* ---- request ----------------------------------------------------------- */

static int hex_option(const char *name, const char *value, size_t max, cl_buf *out)
{
    cl_buf_reset(out);
    int rc = cl_hex_decode(value, out);
    if (rc < 0)
        return cl_error_prefix(rc, "%s: ", name);
    if (out->len > max)
        return cl_error_set(CL_EINVAL, "%s: %zu bytes, at most %zu accepted", name, out->len, max);
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
    CL_ENSURE_OUT(len > 0, CL_ECRYPTO, "cannot encode the public key of %s", path);
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

enum { OPT_NSM = 300, OPT_USER_DATA, OPT_PUBLIC_KEY, OPT_REQ_NONCE, OPT_REQ_HELP };

static int attest_request(int argc, char **argv)
{
    static const struct option options[] = {
        {"nsm", required_argument, NULL, OPT_NSM},
        {"nonce", required_argument, NULL, OPT_REQ_NONCE},
        {"user-data", required_argument, NULL, OPT_USER_DATA},
        {"public-key", required_argument, NULL, OPT_PUBLIC_KEY},
        {"output", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, OPT_REQ_HELP},
        {NULL, 0, NULL, 0},
    };
    const char *nsm_addr = NULL, *output = NULL;
    cl_buf nonce = CL_BUF_INIT, user_data = CL_BUF_INIT, public_key = CL_BUF_INIT, document = CL_BUF_INIT;
    bool has_nonce = false, has_user_data = false, has_public_key = false;
    cl_nsm *nsm = NULL;
    int status = EXIT_USAGE, rc = CL_OK;
    optind = 1;
    int opt;
    while ((opt = getopt_long(argc, argv, "o:h", options, NULL)) != -1) {
        switch (opt) {
        case OPT_NSM:
            nsm_addr = optarg;
            break;
        case OPT_REQ_NONCE:
            rc = hex_option("--nonce", optarg, CL_ATTESTATION_MAX_FIELD_LEN, &nonce);
            has_nonce = true;
            break;
        case OPT_USER_DATA:
            rc = hex_option("--user-data", optarg, CL_ATTESTATION_MAX_FIELD_LEN, &user_data);
            has_user_data = true;
            break;
        case OPT_PUBLIC_KEY:
            cl_buf_reset(&public_key);
            rc = public_key_der(optarg, &public_key);
            if (rc == CL_OK && public_key.len > CL_ATTESTATION_MAX_FIELD_LEN)
                rc = cl_error_set(CL_EINVAL, "--public-key: %zu bytes of DER, at most %d accepted", public_key.len,
                                  CL_ATTESTATION_MAX_FIELD_LEN);
            has_public_key = true;
            break;
        case 'o':
            output = optarg;
            break;
        case 'h':
        case OPT_REQ_HELP:
            attest_usage(stdout);
            status = 0;
            goto out;
        default:
            attest_usage(stderr);
            goto out;
        }
        if (rc < 0) {
            fprintf(stderr, "cloister attest request: %s\n", cl_error_message());
            goto out;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "cloister attest request: unexpected argument '%s'\n", argv[optind]);
        goto out;
    }
    status = EXIT_FAILED;
    rc = cl_nsm_open(nsm_addr, &nsm);
    if (rc == CL_OK)
        rc = cl_nsm_attestation(nsm, has_user_data ? user_data.data : NULL, user_data.len,
                                has_nonce ? nonce.data : NULL, nonce.len,
                                has_public_key ? public_key.data : NULL, public_key.len, &document);
    if (rc == CL_OK)
        rc = write_output(output, document.data, document.len);
    if (rc < 0) {
        fprintf(stderr, "cloister attest request: %s\n", cl_error_message());
        goto out;
    }
    status = 0;
out:
    cl_nsm_close(nsm);
    cl_buf_free(&nonce);
    cl_buf_free(&user_data);
    cl_buf_free(&public_key);
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
    if (argc != 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        attest_usage(argc == 2 ? stdout : stderr);
        return argc == 2 ? 0 : EXIT_USAGE;
    }
    cl_buf raw = CL_BUF_INIT;
    cl_attestation_doc doc;
    int rc = load_document(argv[1], &raw);
    if (rc == CL_OK)
        rc = cl_attestation_parse(raw.data, raw.len, &doc);
    cl_buf_free(&raw);
    if (rc < 0) {
        fprintf(stderr, "cloister attest show: %s: %s\n", argv[1], cl_error_message());
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

enum { OPT_ROOT = 256, OPT_AT, OPT_NONCE, OPT_PCR, OPT_ALLOW_DEBUG, OPT_MAX_AGE, OPT_HELP };

static int attest_verify(int argc, char **argv)
{
    static const struct option options[] = {
        {"root", required_argument, NULL, OPT_ROOT},
        {"at", required_argument, NULL, OPT_AT},
        {"nonce", required_argument, NULL, OPT_NONCE},
        {"pcr", required_argument, NULL, OPT_PCR},
        {"allow-debug", no_argument, NULL, OPT_ALLOW_DEBUG},
        {"max-age", required_argument, NULL, OPT_MAX_AGE},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    cl_attestation_policy policy = {0};
    cl_buf nonce = CL_BUF_INIT;
    const char *roots[16];
    size_t root_count = 0;
    enum { AT_NOW, AT_DOC, AT_FIXED } at_mode = AT_NOW;
    uint64_t at_fixed = 0;
    int status = EXIT_USAGE;
    cl_verifier *verifier = NULL;

    optind = 1;
    int opt;
    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        int rc = CL_OK;
        switch (opt) {
        case OPT_ROOT:
            if (root_count == sizeof roots / sizeof roots[0])
                rc = cl_error_set(CL_EINVAL, "too many --root options");
            else
                roots[root_count++] = optarg;
            break;
        case OPT_AT:
            if (!strcmp(optarg, "now"))
                at_mode = AT_NOW;
            else if (!strcmp(optarg, "doc"))
                at_mode = AT_DOC;
            else {
                at_mode = AT_FIXED;
                rc = cl_parse_u64(optarg, UINT64_MAX / 2, &at_fixed);
                if (rc < 0)
                    cl_error_prefix(rc, "--at: ");
            }
            break;
        case OPT_NONCE:
            cl_buf_reset(&nonce);
            rc = cl_hex_decode(optarg, &nonce);
            if (rc < 0)
                cl_error_prefix(rc, "--nonce: ");
            policy.check_nonce = true;
            break;
        case OPT_PCR:
            rc = cl_attestation_policy_add_pcr(&policy, optarg);
            break;
        case OPT_ALLOW_DEBUG:
            policy.allow_debug = true;
            break;
        case OPT_MAX_AGE: {
            uint64_t seconds;
            rc = cl_parse_u64(optarg, UINT64_MAX / 1000, &seconds);
            if (rc < 0)
                cl_error_prefix(rc, "--max-age: ");
            else if (seconds == 0)
                rc = cl_error_set(CL_EINVAL, "--max-age must be at least 1 second");
            policy.max_age_ms = seconds * 1000;
            break;
        }
        case 'h':
        case OPT_HELP:
            attest_usage(stdout);
            status = 0;
            goto out;
        default:
            attest_usage(stderr);
            goto out;
        }
        if (rc < 0) {
            fprintf(stderr, "cloister attest verify: %s\n", cl_error_message());
            goto out;
        }
    }
    if (optind >= argc) {
        fprintf(stderr, "cloister attest verify: no document given\n");
        attest_usage(stderr);
        goto out;
    }
    policy.nonce = nonce.data;
    policy.nonce_len = nonce.len;

    int rc = cl_verifier_new_with_roots(roots, root_count, &verifier);
    if (rc < 0) {
        fprintf(stderr, "cloister attest verify: %s\n", cl_error_message());
        status = EXIT_FAILED;
        goto out;
    }

    status = 0;
    for (int i = optind; i < argc; i++) {
        const char *path = argv[i];
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
        uint64_t at = at_mode == AT_DOC ? doc.timestamp_ms : at_mode == AT_FIXED ? at_fixed : cl_now_ms();
        rc = cl_verifier_verify(verifier, &doc, at);
        if (rc == CL_OK)
            rc = cl_attestation_check_policy(&doc, &policy, at);
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
    cl_buf_free(&nonce);
    return status;
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

/* cloister acm pack-key: makes an ACM-style bundle {certificate,
 * certificateChain, encryptedPrivateKey} from a PEM key and certificate,
 * the key encrypted with KMS (or kms-local) under a key whose policy names
 * the enclaves allowed to open it.  Runs where the key is (an operator's
 * machine); `cloister host acm` provisions the result. */
#include "cloister/core/acm_bundle.h"
#include "cloister/core/encoding.h"
#include "cloister/core/options.h"
#include "cloister/enclave/kms.h"
#include "cloister/core/secret_file.h"
#include "commands.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define KMS_PLAINTEXT_MAX 4096

static const char usage_text[] =
    "usage: cloister acm pack-key --key PEM --cert PEM [--chain PEM] --key-id ID --token LABEL [-o FILE]\n"
    "                             [--region R] [--endpoint URL] [--proxy ADDR] [--ca-file PEM]\n"
    "                             [--imds ADDR [--role R] | --access-key-id ID --secret-access-key K\n"
    "                              [--session-token T]]\n"
    "\n"
    "Makes a bundle as ACM for Nitro Enclaves hands them out: JSON {certificate, certificateChain,\n"
    "encryptedPrivateKey}, the last the base64 CiphertextBlob of KMS Encrypt over the private key\n"
    "(PKCS#8 PEM).  Give --key-id a key whose policy lets only the enclave decrypt (a\n"
    "kms:RecipientAttestation:PCR0 or ImageSha384 condition); `cloister host acm --bundle` then\n"
    "provisions it, and only the enclave's key-holder can open the key.\n"
    "\n";

static const char epilog[] = "Exit status: 0 written, 1 KMS refused, 2 bad command line or input, 3 could not do it.\n";

typedef struct pack_options {
    char *key, *cert, *chain, *key_id, *output, *label;
    char *region, *endpoint, *proxy, *ca_file, *imds, *role, *access_key_id, *secret_access_key, *session_token;
} pack_options;

#define P pack_options
static const cl_opt pack_table[] = {
    {.name = "key", CL_OPT_STR(P, key), .arg = "PEM",
     .help = "the private key (RSA 2048..8192 or EC P-256/384/521, unencrypted)"},
    {.name = "cert", CL_OPT_STR(P, cert), .arg = "PEM",
     .help = "its certificate (the leaf; it must carry the key's public key)"},
    {.name = "chain", CL_OPT_STR(P, chain), .arg = "PEM", .help = "the intermediates (default: none)"},
    {.name = "key-id", CL_OPT_STR(P, key_id), .arg = "ID", .help = "KMS key id, ARN or alias/NAME"},
    {.name = "token", CL_OPT_STR(P, label), .arg = "LABEL",
     .help = "the PKCS#11 token the key is for (`host acm --token`): the ciphertext carries the encryption context "
             "purpose=pkcs11-token, token=LABEL and the key-holder opens it for that token only"},
    {.name = "output", .short_name = 'o', CL_OPT_STR(P, output), .arg = "FILE",
     .help = "write the bundle here (default stdout)"},
};
/* KMS's, as for `cloister kms` (credentials else from the environment) */
static const cl_opt pack_kms_table[] = {
    {.name = "region", CL_OPT_STR(P, region), .arg = "R", .help = "the region"},
    {.name = "endpoint", CL_OPT_STR(P, endpoint), .arg = "URL", .help = "https://HOST[:PORT]"},
    {.name = "proxy", CL_OPT_STR(P, proxy), .arg = "ADDR", .help = "dial ADDR instead of HOST"},
    {.name = "ca-file", CL_OPT_STR(P, ca_file), .arg = "PEM", .help = "trust these CAs instead of the system's"},
    {.name = "imds", CL_OPT_STR(P, imds), .arg = "ADDR", .help = "credentials from IMDSv2 at ADDR"},
    {.name = "role", CL_OPT_STR(P, role), .arg = "R", .help = "the instance profile's role"},
    {.name = "access-key-id", CL_OPT_STR(P, access_key_id), .arg = "ID", .help = "explicit credentials"},
    {.name = "secret-access-key", CL_OPT_STR(P, secret_access_key), .arg = "K", .help = "with --access-key-id"},
    {.name = "session-token", CL_OPT_STR(P, session_token), .arg = "T", .help = "with --access-key-id"},
};
#undef P

/* The key as PKCS#8 PEM (wiped buffer), checked against the certificate. */
static int load_key(const char *key_file, const cl_buf *cert_pem, cl_buf *out)
{
    int rc = CL_OK;
    cl_buf raw = CL_BUF_INIT;
    BIO *kb = NULL, *cb = NULL, *mem = NULL;
    EVP_PKEY *pkey = NULL;
    X509 *leaf = NULL;
    CL_TRY_OUT(cl_read_secret_file(key_file, 1 << 16, &raw));
    kb = BIO_new_mem_buf(raw.data, (int)raw.len);
    CL_ENSURE_OUT(kb, CL_ENOMEM, "out of memory");
    pkey = PEM_read_bio_PrivateKey(kb, NULL, NULL, (void *)"");
    if (!pkey)
        CL_OSSL_OUT(CL_EINVAL, "%s: not an unencrypted PEM private key", key_file);
    if (EVP_PKEY_is_a(pkey, "RSA"))
        CL_ENSURE_OUT(EVP_PKEY_get_bits(pkey) >= 2048 && EVP_PKEY_get_bits(pkey) <= 8192, CL_EINVAL,
                      "%s: RSA keys of 2048..8192 bits only", key_file);
    else
        CL_ENSURE_OUT(EVP_PKEY_is_a(pkey, "EC"), CL_EINVAL, "%s: RSA or EC keys only", key_file);
    cb = BIO_new_mem_buf(cert_pem->data, (int)cert_pem->len);
    CL_ENSURE_OUT(cb, CL_ENOMEM, "out of memory");
    leaf = PEM_read_bio_X509(cb, NULL, NULL, NULL);
    if (!leaf)
        CL_OSSL_OUT(CL_EINVAL, "--cert: no PEM certificate");
    CL_ENSURE_OUT(EVP_PKEY_eq(X509_get0_pubkey(leaf), pkey) == 1, CL_EVERIFY,
                  "the certificate's public key is not the key's (--key and --cert do not belong together)");
    mem = BIO_new(BIO_s_mem());
    CL_ENSURE_OUT(mem && PEM_write_bio_PrivateKey(mem, pkey, NULL, NULL, 0, NULL, NULL), CL_ECRYPTO,
                  "PKCS#8 encoding");
    char *p = NULL;
    long pl = BIO_get_mem_data(mem, &p);
    CL_ENSURE_OUT(pl > 0 && pl <= KMS_PLAINTEXT_MAX, CL_ELIMIT,
                  "%s: the key's PEM is %ld bytes, KMS Encrypt takes at most %d", key_file, pl, KMS_PLAINTEXT_MAX);
    CL_TRY_OUT(cl_buf_append(out, p, (size_t)pl));
out:
    BIO_free(kb);
    BIO_free(cb);
    BIO_free(mem); /* OpenSSL clears a memory BIO's buffer when freeing it */
    EVP_PKEY_free(pkey);
    X509_free(leaf);
    cl_buf_free(&raw);
    return rc;
}

static int write_out(const char *path, const cl_buf *b)
{
    if (!path) {
        fwrite(b->data, 1, b->len, stdout);
        return fflush(stdout) == 0 ? CL_OK : cl_error_set(CL_EIO, "stdout: %s", strerror(errno));
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    CL_ENSURE(fd >= 0, CL_EIO, "%s: %s", path, strerror(errno));
    ssize_t w = write(fd, b->data, b->len);
    int e = errno;
    close(fd);
    CL_ENSURE(w == (ssize_t)b->len, CL_EIO, "%s: %s", path, w < 0 ? strerror(e) : "short write");
    return CL_OK;
}

static int pack_key_run(const pack_options *o)
{
    const char *key = o->key, *cert = o->cert, *chain = o->chain, *key_id = o->key_id, *output = o->output,
               *label = o->label;
    cl_kms_setup setup = {.region = o->region,
                          .endpoint = o->endpoint,
                          .proxy = o->proxy,
                          .ca_file = o->ca_file,
                          .imds = o->imds,
                          .role = o->role,
                          .access_key_id = o->access_key_id,
                          .secret_access_key = o->secret_access_key,
                          .session_token = o->session_token};
    if (!key || !cert || !key_id || !label) {
        fprintf(stderr, "cloister acm pack-key: --key, --cert, --key-id and --token are required (see --help)\n");
        return EXIT_USAGE;
    }
    cl_kms_purpose_context purpose;
    if (cl_kms_purpose_context_make(CL_KMS_PURPOSE_PKCS11_TOKEN, label, &purpose) < 0) {
        fprintf(stderr, "cloister acm pack-key: --token: %s\n", cl_error_message());
        return EXIT_USAGE;
    }
    int status = EXIT_USAGE;
    cl_buf cert_pem = CL_BUF_INIT, chain_pem = CL_BUF_INIT, key_pem = CL_BUF_INIT, blob = CL_BUF_INIT,
           json = CL_BUF_INIT;
    cl_kms_session ks;
    bool session = false;
    if (cl_read_file(cert, 1 << 20, &cert_pem) < 0 || (chain && cl_read_file(chain, 1 << 20, &chain_pem) < 0) ||
        load_key(key, &cert_pem, &key_pem) < 0) {
        fprintf(stderr, "cloister acm pack-key: %s\n", cl_error_message());
        goto out;
    }
    /* the certificates are checked before KMS is asked */
    uint8_t dummy = 0;
    if (cl_acm_bundle_encode(cert_pem.data, cert_pem.len, chain_pem.data, chain_pem.len, &dummy, 1, &json) < 0) {
        fprintf(stderr, "cloister acm pack-key: %s\n", cl_error_message());
        goto out;
    }
    cl_buf_reset(&json);
    status = EXIT_FAILED;
    if (cl_kms_session_open(&setup, &ks) < 0) {
        fprintf(stderr, "cloister acm pack-key: %s\n", cl_error_message());
        goto out;
    }
    session = true;
    cl_kms_options ko = {.key_id = key_id, .context = purpose.entries, .context_count = purpose.count};
    if (cl_kms_encrypt(ks.kms, &ko, key_pem.data, key_pem.len, &blob) < 0) {
        fprintf(stderr, "cloister acm pack-key: %s\n", cl_error_message());
        status = cl_kms_error_type(ks.kms)[0] ? EXIT_REJECTED : EXIT_FAILED;
        goto out;
    }
    if (cl_acm_bundle_encode(cert_pem.data, cert_pem.len, chain_pem.data, chain_pem.len, blob.data, blob.len, &json) <
            0 ||
        write_out(output, &json) < 0) {
        fprintf(stderr, "cloister acm pack-key: %s\n", cl_error_message());
        goto out;
    }
    fprintf(stderr, "cloister acm pack-key: key encrypted under %s (%zu-byte ciphertext)%s%s\n", cl_kms_key_id(ks.kms),
            blob.len, output ? ", bundle in " : "", output ? output : "");
    status = 0;
out:
    if (session)
        cl_kms_session_close(&ks);
    cl_buf_free(&cert_pem);
    cl_buf_free(&chain_pem);
    cl_buf_free(&key_pem);
    cl_buf_free(&blob);
    cl_buf_free(&json);
    return status;
}

static int pack_key(int argc, char **argv)
{
    pack_options o = {0};
    cl_opt_section sections[] = {CL_OPT_SECTION("options", pack_table, &o),
                                 CL_OPT_SECTION("KMS options (as for cloister kms)", pack_kms_table, &o)};
    cl_options spec = {.prog = "cloister acm pack-key", .usage = usage_text, .epilog = epilog, .sections = sections,
                       .section_count = sizeof sections / sizeof sections[0]};
    cl_options_result r;
    int status = cl_options_main(&spec, argc, argv, &r);
    cl_options_free(NULL, &r);
    if (status == 0)
        status = pack_key_run(&o);
    else
        status = status > 0 ? 0 : EXIT_USAGE;
    char *secrets[] = {o.secret_access_key, o.session_token};
    for (size_t i = 0; i < sizeof secrets / sizeof secrets[0]; i++)
        if (secrets[i])
            cl_wipe(secrets[i], strlen(secrets[i]));
    cl_options_free(&spec, NULL);
    return status;
}

int cmd_acm(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        FILE *out = argc < 2 ? stderr : stdout;
        fprintf(out, "usage: cloister acm pack-key [ARGS...]\n\n"
                     "ACM-style certificate bundles for the enclave's PKCS#11 token.\n"
                     "  pack-key   a bundle from a PEM key and certificate, the key encrypted with KMS\n"
                     "'cloister acm pack-key --help' says more; `cloister host acm` provisions a bundle.\n");
        return argc < 2 ? EXIT_USAGE : 0;
    }
    if (!strcmp(argv[1], "pack-key"))
        return pack_key(argc - 1, argv + 1);
    fprintf(stderr, "cloister acm: unknown verb '%s' (pack-key)\n", argv[1]);
    return EXIT_USAGE;
}

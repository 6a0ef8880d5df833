/* cloister acm pack-key: makes an ACM-style bundle {certificate,
 * certificateChain, encryptedPrivateKey} from a PEM key and certificate,
 * the key encrypted with KMS (or kms-local) under a key whose policy names
 * the enclaves allowed to open it.  Runs where the key is (an operator's
 * machine); `cloister host acm` provisions the result. */
#include "cloister/core/acm_bundle.h"
#include "cloister/core/encoding.h"
#include "cloister/enclave/kms.h"
#include "cloister/core/secret_file.h"
#include "commands.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
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

static void usage(FILE *out)
{
    fprintf(out,
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
            "\n"
            "  --key PEM        the private key (RSA 2048..8192 or EC P-256/384/521, unencrypted)\n"
            "  --cert PEM       its certificate (the leaf; it must carry the key's public key)\n"
            "  --chain PEM      the intermediates (default: none)\n"
            "  --key-id ID      KMS key id, ARN or alias/NAME\n"
            "  --token LABEL    the PKCS#11 token the key is for (`host acm --token`): the ciphertext\n"
            "                   carries the encryption context purpose=pkcs11-token, token=LABEL and the\n"
            "                   key-holder opens it for that token only\n"
            "  -o FILE          write the bundle here (default stdout)\n"
            "  KMS: --region, --endpoint, --proxy, --ca-file, --imds, --role, --access-key-id,\n"
            "  --secret-access-key, --session-token as for `cloister kms` (credentials else from the\n"
            "  environment)\n"
            "\n"
            "Exit status: 0 written, 1 KMS refused, 2 bad command line or input, 3 could not do it.\n");
}

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

static int pack_key(int argc, char **argv)
{
    enum { O_KEY = 256, O_CERT, O_CHAIN, O_KEY_ID, O_REGION, O_ENDPOINT, O_PROXY, O_CA, O_IMDS, O_ROLE, O_AKID,
           O_SECRET, O_TOKEN, O_LABEL };
    static const struct option opts[] = {
        {"key", required_argument, NULL, O_KEY},           {"cert", required_argument, NULL, O_CERT},
        {"chain", required_argument, NULL, O_CHAIN},       {"key-id", required_argument, NULL, O_KEY_ID},
        {"region", required_argument, NULL, O_REGION},     {"endpoint", required_argument, NULL, O_ENDPOINT},
        {"proxy", required_argument, NULL, O_PROXY},       {"ca-file", required_argument, NULL, O_CA},
        {"imds", required_argument, NULL, O_IMDS},         {"role", required_argument, NULL, O_ROLE},
        {"access-key-id", required_argument, NULL, O_AKID}, {"secret-access-key", required_argument, NULL, O_SECRET},
        {"session-token", required_argument, NULL, O_TOKEN}, {"output", required_argument, NULL, 'o'},
        {"token", required_argument, NULL, O_LABEL},
        {"help", no_argument, NULL, 'h'},                  {NULL, 0, NULL, 0}};
    const char *key = NULL, *cert = NULL, *chain = NULL, *key_id = NULL, *output = NULL, *label = NULL;
    cl_kms_setup setup = {0};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "ho:", opts, NULL)) != -1) {
        switch (c) {
        case O_KEY: key = optarg; break;
        case O_CERT: cert = optarg; break;
        case O_CHAIN: chain = optarg; break;
        case O_KEY_ID: key_id = optarg; break;
        case O_REGION: setup.region = optarg; break;
        case O_ENDPOINT: setup.endpoint = optarg; break;
        case O_PROXY: setup.proxy = optarg; break;
        case O_CA: setup.ca_file = optarg; break;
        case O_IMDS: setup.imds = optarg; break;
        case O_ROLE: setup.role = optarg; break;
        case O_AKID: setup.access_key_id = optarg; break;
        case O_SECRET: setup.secret_access_key = optarg; break;
        case O_TOKEN: setup.session_token = optarg; break;
        case O_LABEL: label = optarg; break;
        case 'o': output = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return EXIT_USAGE;
        }
    }
    if (optind != argc || !key || !cert || !key_id || !label) {
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

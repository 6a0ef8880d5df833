/* cloister kms-local: a local AWS KMS (JSON 1.1 protocol, SigV4, key
 * policies with Nitro attestation conditions, CiphertextForRecipient) on
 * TCP or a unix socket, plain or TLS, its keys in SQLite under a master key. */
#include "cloister/core/address.h"
#include "cloister/core/attestation.h"
#include "cloister/core/encoding.h"
#include "cloister/sim/kms_local.h"
#include "cloister/sim/kms_policy.h"
#include "cloister/sim/kms_store.h"
#include "cloister/core/log.h"
#include "cloister/core/options.h"
#include "cloister/core/secret_file.h"
#include "cloister/enclave/server.h"
#include "cloister/core/tls.h"
#include "commands.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/ec.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_LIST 32
#define MASTER_ENV "CLOISTER_KMS_MASTER_KEY"
#define CA_DAYS 3650
#define CERT_DAYS 825
#define RECIPIENT_MAX_AGE_S 300 /* CL_KMS_RECIPIENT_MAX_AGE_MS, as text for the default */
_Static_assert(RECIPIENT_MAX_AGE_S * 1000 == CL_KMS_RECIPIENT_MAX_AGE_MS, "the default");

static const char usage_text[] =
    "usage: cloister kms-local --listen ADDR --state DIR [--credentials ACCESS_KEY_ID:SECRET[:ARN]]...\n"
    "                          [--root PEM]... [--region R] [--account ID] [--tls [--tls-name NAME]...]\n"
    "                          [--key alias/NAME[=POLICY.json]]... [--master-key-file FILE] [--threads N]\n"
    "                          [--recipient-max-age S]\n\n"
    "A local AWS KMS: the KMS JSON 1.1 protocol (POST /, X-Amz-Target: TrentService.<Op>,\n"
    "SigV4-signed) for CreateKey, DescribeKey, ListKeys, CreateAlias, ListAliases, Encrypt,\n"
    "Decrypt, ReEncrypt, GenerateDataKey, GenerateDataKeyWithoutPlaintext, GenerateRandom,\n"
    "GetKeyPolicy, PutKeyPolicy, EnableKey, DisableKey and ScheduleKeyDeletion.  Key policies\n"
    "may condition on kms:RecipientAttestation:ImageSha384 and :PCR0..PCR31; a request with a\n"
    "Recipient has its attestation document verified and gets CiphertextForRecipient (CMS\n"
    "envelopedData for the document's RSA key) instead of Plaintext.\n\n";

static const char epilog[] =
    "Without a Policy, CreateKey gives AWS's default policy: the account's root principal\n"
    "may do kms:*.  There is no IAM layer here: a policy naming arn:aws:iam::ACCOUNT:root\n"
    "(or the bare account) grants EVERY configured access key of the account, an instance\n"
    "role's included.  Name principals by their ARN to grant only them.\n"
    "Prints 'kms-local: listening on ADDR' once ready; SIGINT or SIGTERM stop it.\n";

typedef struct kms_local_options {
    char *listen, *state, *region, *account, *master_file;
    cl_opt_list credentials, roots, names, keys;
    bool tls;
    unsigned threads, recipient_max_age_s;
} kms_local_options;

#define STR_(x) #x
#define STR(x) STR_(x)
#define O kms_local_options
static const cl_opt kms_local_table[] = {
    {.name = "listen", CL_OPT_STR(O, listen), .flags = CL_OPT_REQUIRED, .arg = "ADDR", .help = "tcp:HOST:PORT or unix:PATH"},
    {.name = "state", CL_OPT_STR(O, state), .flags = CL_OPT_REQUIRED | CL_OPT_NONEMPTY, .arg = "DIR",
     .help = "keys and aliases (DIR/kms.db, SQLite), created 0700 if absent"},
    {.name = "credentials", CL_OPT_LIST_AT(O, credentials, MAX_LIST), .arg = "K:S[:ARN]",
     .help = "an access key the server accepts (repeatable, at least one); ARN: the caller's principal (default "
             "arn:aws:iam::ACCOUNT:user/K; an instance role's: arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION)"},
    {.name = "root", CL_OPT_LIST_AT(O, roots, MAX_LIST), .arg = "PEM",
     .help = "trust these roots for Recipient documents (repeatable), e.g. nsm-sim's STATE/root.pem, or 'aws' for "
             "the embedded AWS Nitro Enclaves root; default: the AWS root only"},
    {.name = "region", CL_OPT_STR(O, region), .def = "us-east-1", .arg = "R",
     .help = "the region in ARNs and SigV4 scopes"},
    {.name = "account", CL_OPT_STR(O, account), .def = CL_KMS_DEFAULT_ACCOUNT, .arg = "ID",
     .help = "the 12-digit account in ARNs"},
    {.name = "tls", CL_OPT_FLAG(O, tls),
     .help = "serve HTTPS: a CA kept in DIR (DIR/ca.pem for clients) issues a certificate for "
             "kms.REGION.amazonaws.com, localhost, 127.0.0.1, ::1"},
    {.name = "tls-name", CL_OPT_LIST_AT(O, names, MAX_LIST), .arg = "NAME",
     .help = "another DNS name for that certificate (repeatable)"},
    {.name = "key", CL_OPT_LIST_AT(O, keys, MAX_LIST), .arg = "alias/NAME[=P]",
     .help = "make sure the alias names a key; create one (policy from file P, else the default policy) if not "
             "(repeatable)"},
    {.name = "master-key-file", CL_OPT_STR(O, master_file), .arg = "FILE",
     .help = "the key that seals key material: 32 bytes, raw or 64 hex digits; else $" MASTER_ENV
             " (64 hex digits); else DIR/master.key, generated 0600 on first start"},
    {.name = "threads", CL_OPT_UINT_AT(O, threads, 1, 64), .def = "2", .arg = "N", .help = "event loops"},
    {.name = "recipient-max-age", CL_OPT_DURATION_AT(O, recipient_max_age_s, 1000, 1, 7 * 86400),
     .def = STR(RECIPIENT_MAX_AGE_S), .arg = "S",
     .help = "refuse a Recipient's attestation document older than S seconds (or 90s, 5m, 1h), or more than 5 "
             "minutes in the future, as KMS does"},
};
#undef O

/* ---- master key ---------------------------------------------------------------------------- */

static int parse_master(const uint8_t *data, size_t len, const char *origin, uint8_t out[CL_KMS_MASTER_KEY_LEN])
{
    while (len && (data[len - 1] == '\n' || data[len - 1] == '\r' || data[len - 1] == ' '))
        len--;
    if (len == CL_KMS_MASTER_KEY_LEN) {
        memcpy(out, data, len);
        return CL_OK;
    }
    if (len == 2 * CL_KMS_MASTER_KEY_LEN) {
        char hex[2 * CL_KMS_MASTER_KEY_LEN + 1];
        memcpy(hex, data, len);
        hex[len] = '\0';
        int rc = cl_hex_decode_fixed(hex, out, CL_KMS_MASTER_KEY_LEN);
        cl_wipe(hex, sizeof hex);
        if (rc == CL_OK)
            return CL_OK;
    }
    return cl_error_set(CL_EINVAL, "%s: a master key is 32 bytes, raw or as 64 hex digits", origin);
}

static int load_master(const char *file, const char *dir, uint8_t out[CL_KMS_MASTER_KEY_LEN], const char **origin)
{
    cl_buf b = CL_BUF_INIT;
    int rc;
    const char *env = getenv(MASTER_ENV);
    if (file) {
        *origin = "--master-key-file";
        rc = cl_read_secret_file(file, 4096, &b);
        if (rc == CL_OK)
            rc = parse_master(b.data, b.len, file, out);
        cl_buf_free(&b);
        return rc < 0 ? cl_error_prefix(rc, "--master-key-file: ") : CL_OK;
    }
    if (env) {
        *origin = "$" MASTER_ENV;
        return parse_master((const uint8_t *)env, strlen(env), "$" MASTER_ENV, out);
    }
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/master.key", dir);
    *origin = "DIR/master.key";
    if (access(path, F_OK) == 0) {
        rc = cl_read_secret_file(path, 4096, &b);
        if (rc == CL_OK)
            rc = parse_master(b.data, b.len, path, out);
        cl_buf_free(&b);
        return rc;
    }
    char db[PATH_MAX];
    snprintf(db, sizeof db, "%s/kms.db", dir);
    CL_ENSURE(access(db, F_OK) != 0, CL_EINVAL,
              "%s exists but no master key was given: use --master-key-file or $" MASTER_ENV
              " with the key it was created with",
              db);
    CL_ENSURE(RAND_bytes(out, CL_KMS_MASTER_KEY_LEN) == 1, CL_ECRYPTO, "no randomness");
    char hex[2 * CL_KMS_MASTER_KEY_LEN + 2];
    cl_hex_encode(out, CL_KMS_MASTER_KEY_LEN, hex);
    strcat(hex, "\n");
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    CL_ENSURE(fd >= 0, CL_EIO, "cannot create %s: %s", path, strerror(errno));
    ssize_t n = write(fd, hex, strlen(hex));
    cl_wipe(hex, sizeof hex);
    int err = errno;
    if (close(fd) < 0 || n != 2 * CL_KMS_MASTER_KEY_LEN + 1) {
        unlink(path);
        return cl_error_set(CL_EIO, "cannot write %s: %s", path, strerror(err));
    }
    *origin = "DIR/master.key (generated)";
    return CL_OK;
}

/* ---- TLS: a CA kept in DIR, a server certificate issued at each start --------------------------- */

static EVP_PKEY *new_ec_key(void)
{
    return EVP_EC_gen("P-256");
}

static int random_serial(X509 *x)
{
    uint8_t b[16];
    CL_ENSURE(RAND_bytes(b, sizeof b) == 1, CL_ECRYPTO, "no randomness");
    b[0] &= 0x7f;
    BIGNUM *bn = BN_bin2bn(b, sizeof b, NULL);
    int ok = bn && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
    BN_free(bn);
    CL_ENSURE(ok, CL_ECRYPTO, "certificate serial");
    return CL_OK;
}

static int add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    int ok = e && X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
    CL_ENSURE(ok, CL_ECRYPTO, "certificate extension %s", value);
    return CL_OK;
}

static int make_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *issuer_key, bool ca, const char *san,
                     X509 **out)
{
    X509 *x = X509_new();
    int rc = CL_OK;
    CL_ENSURE_OUT(x && X509_set_version(x, 2), CL_ENOMEM, "out of memory");
    CL_TRY_OUT(random_serial(x));
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), (long)(ca ? CA_DAYS : CERT_DAYS) * 86400);
    X509_set_pubkey(x, key);
    X509 *iss = issuer ? issuer : x;
    if (ca) {
        CL_TRY_OUT(add_ext(x, iss, NID_basic_constraints, "critical,CA:TRUE,pathlen:0"));
        CL_TRY_OUT(add_ext(x, iss, NID_key_usage, "critical,keyCertSign,cRLSign"));
    } else {
        CL_TRY_OUT(add_ext(x, iss, NID_basic_constraints, "critical,CA:FALSE"));
        CL_TRY_OUT(add_ext(x, iss, NID_key_usage, "critical,digitalSignature"));
        CL_TRY_OUT(add_ext(x, iss, NID_ext_key_usage, "serverAuth"));
        CL_TRY_OUT(add_ext(x, iss, NID_subject_alt_name, san));
    }
    CL_TRY_OUT(add_ext(x, iss, NID_subject_key_identifier, "hash"));
    if (issuer)
        CL_TRY_OUT(add_ext(x, iss, NID_authority_key_identifier, "keyid:always"));
    if (!X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256()))
        CL_OSSL_OUT(CL_ECRYPTO, "signing a certificate");
    *out = x;
    return CL_OK;
out:
    X509_free(x);
    return rc;
}

static int write_pem(const char *path, bool private_key, EVP_PKEY *key, X509 *cert)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, private_key ? 0600 : 0644);
    CL_ENSURE(fd >= 0, CL_EIO, "cannot create %s: %s", path, strerror(errno));
    FILE *f = fdopen(fd, "w");
    if (!f) {
        close(fd);
        return cl_error_set(CL_EIO, "%s: %s", path, strerror(errno));
    }
    int ok = private_key ? PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL) : PEM_write_X509(f, cert);
    if (fclose(f) != 0 || !ok)
        return cl_error_ossl(CL_EIO, "cannot write %s", path);
    return CL_OK;
}

static int load_or_make_ca(const char *dir, EVP_PKEY **key, X509 **cert)
{
    char kpath[PATH_MAX], cpath[PATH_MAX];
    snprintf(kpath, sizeof kpath, "%s/ca.key", dir);
    snprintf(cpath, sizeof cpath, "%s/ca.pem", dir);
    if (access(kpath, F_OK) == 0 || errno != ENOENT) {
        cl_buf kb = CL_BUF_INIT;
        CL_TRY(cl_read_secret_file(kpath, 1 << 16, &kb));
        BIO *bio = BIO_new_mem_buf(kb.data, (int)kb.len);
        *key = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
        BIO_free(bio);
        cl_buf_free(&kb);
        FILE *cf = fopen(cpath, "r");
        *cert = cf ? PEM_read_X509(cf, NULL, NULL, NULL) : NULL;
        if (cf)
            fclose(cf);
        CL_ENSURE(*key && *cert, CL_EPARSE, "%s or %s is unreadable; remove both to make a new CA", kpath, cpath);
        CL_ENSURE(X509_check_private_key(*cert, *key) == 1, CL_EVERIFY, "%s does not match %s", cpath, kpath);
        return CL_OK;
    }
    *key = new_ec_key();
    CL_ENSURE(*key, CL_ECRYPTO, "generating the CA key");
    CL_TRY(make_cert(*key, "cloister kms-local CA", NULL, NULL, true, NULL, cert));
    CL_TRY(write_pem(kpath, true, *key, NULL));
    return write_pem(cpath, false, NULL, *cert);
}

static int make_tls(const char *dir, const char *region, char **names, size_t name_count, SSL_CTX **out)
{
    EVP_PKEY *ca_key = NULL;
    X509 *ca = NULL;
    cl_tls_identity id = {0};
    int rc;
    CL_TRY_OUT(load_or_make_ca(dir, &ca_key, &ca));
    char san[2048];
    int n = snprintf(san, sizeof san, "DNS:kms.%s.amazonaws.com,DNS:localhost,IP:127.0.0.1,IP:::1", region);
    for (size_t i = 0; i < name_count && n > 0 && (size_t)n < sizeof san; i++)
        n += snprintf(san + n, sizeof san - (size_t)n, ",DNS:%s", names[i]);
    CL_ENSURE_OUT(n > 0 && (size_t)n < sizeof san, CL_ELIMIT, "too many --tls-name");
    id.key = new_ec_key();
    CL_ENSURE_OUT(id.key, CL_ECRYPTO, "generating the server key");
    char cn[128];
    snprintf(cn, sizeof cn, "kms.%s.amazonaws.com", region);
    CL_TRY_OUT(make_cert(id.key, cn, ca, ca_key, false, san, &id.cert));
    id.chain = sk_X509_new_null();
    CL_ENSURE_OUT(id.chain && sk_X509_push(id.chain, ca), CL_ENOMEM, "out of memory");
    X509_up_ref(ca);
    CL_TRY_OUT(cl_tls_cert_sha256(id.cert, id.cert_sha256));
    cl_tls_server_options opt = {.enable_h2 = false};
    CL_TRY_OUT(cl_tls_server_ctx(&id, &opt, out));
out:
    cl_tls_identity_free(&id);
    EVP_PKEY_free(ca_key);
    X509_free(ca);
    return rc;
}

/* ---- the server ----------------------------------------------------------------------------- */

typedef struct server_ctx {
    cl_kms_local *kms;
} server_ctx;

static int route_all(void *ctx, const cl_http_head *h)
{
    (void)ctx;
    (void)h;
    return 0;
}

static void handle(void *vctx, int route, const cl_request_info *req, cl_response *resp)
{
    (void)route;
    server_ctx *s = vctx;
    cl_sigv4_request r = {
        .method = req->head->method,
        .path = req->head->path,
        .query = req->head->query,
        .headers = req->head->headers,
        .header_count = req->head->header_count,
        .body = req->body,
        .body_len = req->body_len,
    };
    cl_kms_response kr = {.body = CL_BUF_INIT};
    uint64_t now = cl_now_ms();
    if (cl_kms_local_handle(s->kms, &r, now, &kr) < 0) {
        resp->status = 500;
        resp->content_type = CL_KMS_CONTENT_TYPE;
        static const char body[] = "{\"__type\":\"KMSInternalException\",\"message\":\"out of memory\"}";
        if (cl_buf_append(&resp->body, body, sizeof body - 1) < 0)
            resp->status = 500;
    } else {
        resp->status = kr.status;
        resp->content_type = CL_KMS_CONTENT_TYPE;
        if (cl_buf_append(&resp->body, kr.body.data, kr.body.len) < 0)
            resp->status = 500;
    }
    if (kr.error_type[0] && cl_log_get_level() <= CL_LOG_INFO) {
        const cl_slice *t = cl_http_header_get(req->head, "X-Amz-Target");
        char target[80];
        snprintf(target, sizeof target, "%.*s", t ? (int)(t->len < 79 ? t->len : 79) : 0, t ? (const char *)t->data : "");
        cl_log(CL_LOG_INFO, "refused", "peer", req->peer, "target", target, "error", kr.error_type, NULL);
    }
    cl_buf_free(&kr.body);
}

static bool valid_region(const char *r)
{
    size_t n = strlen(r);
    if (n == 0 || n > 24)
        return false;
    for (const char *p = r; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-'))
            return false;
    return true;
}

static int fail_usage(const char *fmt, const char *arg)
{
    fprintf(stderr, "cloister kms-local: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    return EXIT_USAGE;
}

static int run_kms_local(const kms_local_options *o)
{
    const char *listen_text = o->listen, *state = o->state, *region = o->region, *account = o->account;
    const char *master_file = o->master_file;
    char **cred_text = o->credentials.items, **roots = o->roots.items, **names = o->names.items,
         **keys = o->keys.items;
    size_t ncred = o->credentials.count, nroots = o->roots.count, nnames = o->names.count, nkeys = o->keys.count;
    bool tls = o->tls;
    uint64_t threads = o->threads, recipient_max_age_s = o->recipient_max_age_s;
    if (!ncred)
        return fail_usage("%s", "at least one --credentials ACCESS_KEY_ID:SECRET is required");
    if (!valid_region(region))
        return fail_usage("--region '%s' is not a region name like us-east-1", region);
    if (strlen(account) != 12 || strspn(account, "0123456789") != 12)
        return fail_usage("--account '%s' must be 12 digits", account);
    if (nnames && !tls)
        return fail_usage("%s", "--tls-name needs --tls");
    cl_kms_credential creds[MAX_LIST];
    char *cred_copy[MAX_LIST] = {0};
    size_t cred_len[MAX_LIST] = {0};
    for (size_t i = 0; i < ncred; i++) {
        cred_copy[i] = strdup(cred_text[i]);
        cred_len[i] = strlen(cred_text[i]);
        char *colon = cred_copy[i] ? strchr(cred_copy[i], ':') : NULL;
        if (!colon || colon == cred_copy[i] || !colon[1]) {
            for (size_t j = 0; j <= i; j++)
                free(cred_copy[j]);
            return fail_usage("%s", "--credentials takes ACCESS_KEY_ID:SECRET[:PRINCIPAL_ARN]");
        }
        *colon = '\0';
        char *arn = strchr(colon + 1, ':');
        if (arn)
            *arn++ = '\0';
        creds[i] = (cl_kms_credential){.access_key_id = cred_copy[i], .secret = colon + 1, .principal = arn};
        if (arn && strncmp(arn, "arn:aws:iam::", 13) && strncmp(arn, "arn:aws:sts::", 13)) {
            for (size_t j = 0; j <= i; j++)
                free(cred_copy[j]);
            return fail_usage("--credentials: principal '%s' is not an IAM or STS ARN (arn:aws:iam::ACCOUNT:... or "
                              "arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION)",
                              arn);
        }
    }
    cl_address addr;
    int status = EXIT_FAILED;
    cl_verifier *verifier = NULL;
    cl_kms_store *store = NULL;
    cl_kms_local *kms = NULL;
    SSL_CTX *ssl = NULL;
    cl_server *server = NULL;
    int listen_fd = -1;
    uint8_t master[CL_KMS_MASTER_KEY_LEN];
    const char *master_origin = "";
    if (cl_address_parse(listen_text, &addr) < 0 || addr.kind == CL_ADDR_VSOCK) {
        fprintf(stderr, "cloister kms-local: --listen: %s\n",
                addr.kind == CL_ADDR_VSOCK ? "tcp:HOST:PORT or unix:PATH" : cl_error_message());
        status = EXIT_USAGE;
        goto out;
    }
    cl_log_set_component("kms-local");
    if (mkdir(state, 0700) < 0 && errno != EEXIST) {
        fprintf(stderr, "cloister kms-local: --state %s: %s\n", state, strerror(errno));
        goto out;
    }
    struct stat st;
    if (stat(state, &st) < 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "cloister kms-local: --state %s is not a directory\n", state);
        goto out;
    }
    if (load_master(master_file, state, master, &master_origin) < 0) {
        fprintf(stderr, "cloister kms-local: %s\n", cl_error_message());
        goto out;
    }
    bool aws_root = nroots == 0;
    for (size_t i = 0; i < nroots; i++)
        aws_root |= !strcmp(roots[i], "aws");
    if (cl_verifier_new(aws_root, &verifier) < 0) {
        fprintf(stderr, "cloister kms-local: %s\n", cl_error_message());
        goto out;
    }
    for (size_t i = 0; i < nroots; i++)
        if (strcmp(roots[i], "aws") && cl_verifier_add_root_pem_file(verifier, roots[i]) < 0) {
            fprintf(stderr, "cloister kms-local: --root %s: %s\n", roots[i], cl_error_message());
            status = EXIT_USAGE;
            goto out;
        }
    char db[PATH_MAX];
    snprintf(db, sizeof db, "%s/kms.db", state);
    if (cl_kms_store_open(db, master, &store) < 0) {
        fprintf(stderr, "cloister kms-local: %s: %s (master key from %s)\n", db, cl_error_message(), master_origin);
        goto out;
    }
    cl_kms_local_config cfg = {
        .region = region,
        .account = account,
        .credentials = creds,
        .credential_count = ncred,
        .verifier = verifier,
        .store = store,
        .recipient_max_age_ms = recipient_max_age_s * 1000,
    };
    if (cl_kms_local_new(&cfg, &kms) < 0) {
        fprintf(stderr, "cloister kms-local: %s\n", cl_error_message());
        goto out;
    }
    for (size_t i = 0; i < nkeys; i++) {
        char *eq = strchr(keys[i], '=');
        char alias[CL_KMS_ALIAS_MAX + 2];
        snprintf(alias, sizeof alias, "%.*s", eq ? (int)(eq - keys[i]) : (int)strlen(keys[i]), keys[i]);
        cl_buf policy = CL_BUF_INIT;
        int rc = eq ? cl_read_file(eq + 1, CL_KMS_POLICY_MAX_LEN, &policy) : CL_OK;
        if (rc == CL_OK && eq)
            rc = cl_buf_append_u8(&policy, 0);
        char arn[160];
        if (rc == CL_OK)
            rc = cl_kms_local_ensure_key(kms, alias, eq ? (const char *)policy.data : NULL, arn);
        cl_buf_free(&policy);
        if (rc < 0) {
            fprintf(stderr, "cloister kms-local: --key %s: %s\n", keys[i], cl_error_message());
            status = EXIT_USAGE;
            goto out;
        }
        cl_log(CL_LOG_INFO, "key", "alias", alias, "arn", arn, NULL);
    }
    if (tls && make_tls(state, region, names, nnames, &ssl) < 0) {
        fprintf(stderr, "cloister kms-local: TLS: %s\n", cl_error_message());
        goto out;
    }

    sigset_t wanted;
    sigemptyset(&wanted);
    sigaddset(&wanted, SIGTERM);
    sigaddset(&wanted, SIGINT);
    pthread_sigmask(SIG_BLOCK, &wanted, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (cl_address_listen(&addr, 512, &listen_fd) < 0) {
        fprintf(stderr, "cloister kms-local: %s\n", cl_error_message());
        goto out;
    }
    server_ctx sctx = {.kms = kms};
    cl_server_config scfg = {
        .name = "kms-local",
        .tls = ssl,
        .threads = (unsigned)threads,
        .max_local_body = CL_KMS_MAX_REQUEST,
        .route = route_all,
        .handle = handle,
        .ctx = &sctx,
    };
    if (cl_server_start(&scfg, listen_fd, &server) < 0) {
        fprintf(stderr, "cloister kms-local: %s\n", cl_error_message());
        goto out;
    }
    listen_fd = -1;
    char text[CL_ADDRESS_PATH_MAX + 16];
    cl_address_format(&addr, text, sizeof text);
    char ca_path[PATH_MAX] = "";
    if (tls)
        snprintf(ca_path, sizeof ca_path, "%s/ca.pem", state);
    cl_log(CL_LOG_INFO, "listening", "addr", text, "tls", tls ? "yes" : "no", "region", region, "account", account,
           "roots", nroots ? "given" : "aws", "master_key", master_origin, NULL);
    fprintf(stderr, "kms-local: listening on %s%s%s\n", text, tls ? " ca=" : "", ca_path);
    int sig = 0;
    while (sigwait(&wanted, &sig) != 0)
        ;
    cl_log(CL_LOG_INFO, "stopping", "signal", sig == SIGTERM ? "SIGTERM" : "SIGINT", NULL);
    cl_server_drain(server, 5000);
    cl_server_wait(server);
    server = NULL;
    if (addr.kind == CL_ADDR_UNIX)
        unlink(addr.path);
    cl_log(CL_LOG_INFO, "stopped", NULL);
    status = 0;
out:
    if (listen_fd >= 0)
        close(listen_fd);
    cl_kms_local_free(kms);
    cl_kms_store_close(store);
    cl_verifier_free(verifier);
    SSL_CTX_free(ssl);
    cl_wipe(master, sizeof master);
    for (size_t i = 0; i < ncred; i++)
        if (cred_copy[i])
            cl_free_secret(cred_copy[i], cred_len[i]);
    return status;
}

int cmd_kms_local(int argc, char **argv)
{
    kms_local_options o = {0};
    cl_opt_section section = CL_OPT_SECTION("options", kms_local_table, &o);
    cl_options spec = {.prog = "cloister kms-local", .usage = usage_text, .epilog = epilog, .sections = &section,
                       .section_count = 1};
    cl_options_result r;
    int status = cl_options_main(&spec, argc, argv, &r);
    cl_options_free(NULL, &r);
    if (status == 0)
        status = run_kms_local(&o);
    else
        status = status > 0 ? 0 : EXIT_USAGE;
    /* the secrets in the access keys */
    for (size_t i = 0; i < o.credentials.count; i++)
        cl_wipe(o.credentials.items[i], strlen(o.credentials.items[i]));
    cl_options_free(&spec, NULL);
    return status;
}

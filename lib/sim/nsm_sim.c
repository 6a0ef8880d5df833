#include "cloister/sim/nsm_sim.h"

#include "cloister/core/encoding.h"
#include "cloister/core/cose.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* AWS's schema: "map of all locked PCRs".  PCR0..15 are locked from the
 * start, so real documents carry those; a PCR16..31 appears once the
 * enclave locks it (the wallet example locks PCR16 and KMS policies name it). */
#define ATTESTED_PCRS 16
#define INITIALLY_LOCKED 0xffffu
#define VERSION_MAJOR 1
#define VERSION_MINOR 0
#define VERSION_PATCH 0
#define CERT_DER_MAX 1024
#define STATE_FILE_MAX (64 * 1024)

#define HOUR_MS (3600ull * 1000)
#define DAY_MS (24 * HOUR_MS)
/* A leaf is renewed this long before it expires, so that a document is
 * still verifiable for a while after it was issued. */
#define LEAF_RENEW_MARGIN_MS (15ull * 60 * 1000)
/* Intermediates must outlive any leaf issued under them, with room. */
#define CA_MIN_REMAINING_MS (CL_NSM_SIM_LEAF_LIFETIME_MS + 2 * HOUR_MS)
/* Certificates start a little in the past to tolerate clock skew. */
#define CA_BACKDATE_MS HOUR_MS

enum ca_level { CA_ROOT, CA_REGIONAL, CA_ZONAL, CA_INSTANCE, CA_LEVELS };

typedef struct ca_spec {
    const char *file; /* DIR/<file>.key and DIR/<file>.pem */
    const char *cn_suffix;
    bool cn_has_instance_id;
    const char *basic_constraints;
    const char *key_usage;
    uint64_t lifetime_ms;
} ca_spec;

/* Mirrors AWS's chain (root, regional, zonal, instance), with names that
 * cannot be mistaken for Amazon's. */
static const ca_spec ca_specs[CA_LEVELS] = {
    [CA_ROOT] = {"root", "cloister-nsm-sim.nitro-enclaves", false, "critical,CA:TRUE",
                 "critical,digitalSignature,keyCertSign,cRLSign", 30ull * 365 * DAY_MS},
    [CA_REGIONAL] = {"regional", "us-east-1.cloister-nsm-sim.nitro-enclaves", false, "critical,CA:TRUE,pathlen:2",
                     "critical,digitalSignature,keyCertSign,cRLSign", 365 * DAY_MS},
    [CA_ZONAL] = {"zonal", "zonal.us-east-1.cloister-nsm-sim.nitro-enclaves", false, "critical,CA:TRUE,pathlen:1",
                  "critical,digitalSignature,keyCertSign,cRLSign", 30 * DAY_MS},
    [CA_INSTANCE] = {"instance", ".us-east-1.nsm-sim.cloister", true, "critical,CA:TRUE,pathlen:0",
                     "critical,keyCertSign", 7 * DAY_MS},
};

typedef struct ca {
    EVP_PKEY *key;
    X509 *cert;
    uint8_t *der;
    size_t der_len;
} ca;

struct cl_nsm_sim {
    char state_dir[PATH_MAX];
    char root_pem_path[PATH_MAX];
    char instance_id[CL_NSM_SIM_INSTANCE_ID_MAX + 1];
    char module_id[128];
    cl_nsm_sim_clock_fn clock;
    void *clock_ctx;
    cl_nsm_sim_log_fn log;
    void *log_ctx;

    pthread_mutex_t lock; /* everything below */
    uint8_t pcrs[CL_NSM_SIM_PCRS][CL_NSM_SIM_PCR_LEN];
    uint32_t locked;
    ca cas[CA_LEVELS];
    EVP_PKEY *leaf_key;
    uint8_t *leaf_der;
    size_t leaf_der_len;
    uint64_t leaf_not_before_ms, leaf_not_after_ms;
};

/* ---- small helpers ---------------------------------------------------------- */

static uint64_t real_clock(void *ctx)
{
    (void)ctx;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t now_ms(const cl_nsm_sim *sim)
{
    return sim->clock(sim->clock_ctx);
}

static void logf_(const cl_nsm_sim *sim, const char *fmt, ...) CL_PRINTF(2, 3);
static void logf_(const cl_nsm_sim *sim, const char *fmt, ...)
{
    if (!sim->log)
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    sim->log(sim->log_ctx, line);
}

/* Error details go into key=value logs: no quotes or newlines inside. */
static void sanitize(char *s)
{
    for (; *s; s++)
        if (*s == '"' || *s == '\n' || *s == '\r')
            *s = '\'';
}

static int path_in_state(const cl_nsm_sim *sim, const char *name, char out[PATH_MAX])
{
    int n = snprintf(out, PATH_MAX, "%s/%s", sim->state_dir, name);
    CL_ENSURE(n > 0 && n < PATH_MAX, CL_EINVAL, "state path %s/%s is too long", sim->state_dir, name);
    return CL_OK;
}

static bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Writes through a temporary file and rename, so a crash never leaves a
 * half-written key or certificate behind. */
static int write_file_atomic(const char *path, const void *data, size_t len, mode_t mode)
{
    char tmp[PATH_MAX];
    int n = snprintf(tmp, sizeof tmp, "%s.tmp", path);
    CL_ENSURE(n > 0 && n < (int)sizeof tmp, CL_EINVAL, "path %s is too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
    CL_ENSURE(fd >= 0, CL_EIO, "cannot create %s: %s", tmp, strerror(errno));
    int rc = CL_OK;
    const uint8_t *p = data;
    size_t left = len;
    if (fchmod(fd, mode) < 0)
        rc = cl_error_set(CL_EIO, "cannot set permissions of %s: %s", tmp, strerror(errno));
    while (rc == CL_OK && left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            rc = cl_error_set(CL_EIO, "cannot write %s: %s", tmp, w < 0 ? strerror(errno) : "no progress");
        else {
            p += w;
            left -= (size_t)w;
        }
    }
    if (rc == CL_OK && fsync(fd) < 0)
        rc = cl_error_set(CL_EIO, "cannot sync %s: %s", tmp, strerror(errno));
    if (close(fd) < 0 && rc == CL_OK)
        rc = cl_error_set(CL_EIO, "cannot close %s: %s", tmp, strerror(errno));
    if (rc == CL_OK && rename(tmp, path) < 0)
        rc = cl_error_set(CL_EIO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
    if (rc < 0)
        unlink(tmp);
    return rc;
}

static int random_hex(char *out, size_t hex_digits)
{
    uint8_t bytes[32];
    size_t n = (hex_digits + 1) / 2;
    CL_ENSURE(n <= sizeof bytes, CL_EINVAL, "too many random digits");
    CL_ENSURE_OSSL(RAND_bytes(bytes, (int)n) == 1, CL_ECRYPTO, "RAND_bytes failed");
    char hex[65];
    cl_hex_encode(bytes, n, hex);
    memcpy(out, hex, hex_digits);
    out[hex_digits] = '\0';
    return CL_OK;
}

static bool instance_id_valid(const char *id, size_t len)
{
    if (len == 0 || len > CL_NSM_SIM_INSTANCE_ID_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-'))
            return false;
    }
    return true;
}

static int sha384(const void *data, size_t len, uint8_t out[CL_NSM_SIM_PCR_LEN])
{
    unsigned int n = 0;
    CL_ENSURE_OSSL(EVP_Digest(data, len, out, &n, EVP_sha384(), NULL) == 1 && n == CL_NSM_SIM_PCR_LEN, CL_ECRYPTO,
              "SHA-384 failed");
    return CL_OK;
}

static int sha384_file(const char *path, uint8_t out[CL_NSM_SIM_PCR_LEN])
{
    int rc = CL_OK;
    EVP_MD_CTX *md = NULL;
    FILE *f = fopen(path, "rb");
    CL_ENSURE(f, CL_EIO, "cannot open the image %s: %s", path, strerror(errno));
    md = EVP_MD_CTX_new();
    CL_ENSURE_OSSL_OUT(md && EVP_DigestInit_ex(md, EVP_sha384(), NULL) == 1, CL_ECRYPTO, "SHA-384 init failed");
    uint8_t chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        CL_ENSURE_OSSL_OUT(EVP_DigestUpdate(md, chunk, n) == 1, CL_ECRYPTO, "SHA-384 update failed");
    CL_ENSURE_OUT(!ferror(f), CL_EIO, "cannot read the image %s: %s", path, strerror(errno));
    unsigned int len = 0;
    CL_ENSURE_OSSL_OUT(EVP_DigestFinal_ex(md, out, &len) == 1 && len == CL_NSM_SIM_PCR_LEN, CL_ECRYPTO,
                  "SHA-384 final failed");
out:
    EVP_MD_CTX_free(md);
    fclose(f);
    return rc;
}

/* ---- keys and certificates ------------------------------------------------------ */

static int new_p384_key(EVP_PKEY **out)
{
    *out = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    if (!*out)
        return cl_error_ossl(CL_ECRYPTO, "cannot generate a P-384 key");
    return CL_OK;
}

static int make_name(const char *const fields[][2], size_t count, X509_NAME **out)
{
    X509_NAME *name = X509_NAME_new();
    CL_ENSURE(name, CL_ENOMEM, "out of memory");
    for (size_t i = 0; i < count; i++) {
        if (X509_NAME_add_entry_by_txt(name, fields[i][0], MBSTRING_UTF8, (const unsigned char *)fields[i][1], -1,
                                       -1, 0) != 1) {
            X509_NAME_free(name);
            return cl_error_ossl(CL_ECRYPTO, "cannot build the name %s=%s", fields[i][0], fields[i][1]);
        }
    }
    *out = name;
    return CL_OK;
}

static int ca_subject(const cl_nsm_sim *sim, int level, X509_NAME **out)
{
    char cn[256];
    const ca_spec *spec = &ca_specs[level];
    snprintf(cn, sizeof cn, "%s%s", spec->cn_has_instance_id ? sim->instance_id : "", spec->cn_suffix);
    const char *const fields[][2] = {{"C", "US"}, {"O", "cloister"}, {"OU", "nsm-sim"}, {"CN", cn}};
    return make_name(fields, 4, out);
}

static int leaf_subject(const cl_nsm_sim *sim, X509_NAME **out)
{
    char cn[256];
    /* X.509 caps a CN at 64 characters: module ids leave room for little. */
    snprintf(cn, sizeof cn, "%s.nsm-sim", sim->module_id);
    const char *const fields[][2] = {{"C", "US"},          {"ST", "Washington"}, {"L", "Seattle"},
                                     {"O", "cloister"},    {"OU", "nsm-sim"},    {"CN", cn}};
    return make_name(fields, 6, out);
}

static int set_random_serial(X509 *cert)
{
    uint8_t bytes[16];
    CL_ENSURE_OSSL(RAND_bytes(bytes, sizeof bytes) == 1, CL_ECRYPTO, "RAND_bytes failed");
    bytes[0] = (uint8_t)((bytes[0] & 0x7f) | 0x01); /* positive, full length */
    BIGNUM *bn = BN_bin2bn(bytes, sizeof bytes, NULL);
    CL_ENSURE(bn, CL_ENOMEM, "out of memory");
    ASN1_INTEGER *serial = BN_to_ASN1_INTEGER(bn, NULL);
    BN_free(bn);
    CL_ENSURE(serial, CL_ENOMEM, "out of memory");
    int ok = X509_set_serialNumber(cert, serial);
    ASN1_INTEGER_free(serial);
    CL_ENSURE_OSSL(ok == 1, CL_ECRYPTO, "cannot set the serial number");
    return CL_OK;
}

static int add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, issuer ? issuer : cert, cert, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (!ext)
        return cl_error_ossl(CL_ECRYPTO, "cannot build extension %s = %s", OBJ_nid2sn(nid), value);
    int ok = X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    CL_ENSURE_OSSL(ok == 1, CL_ECRYPTO, "cannot add extension %s", OBJ_nid2sn(nid));
    return CL_OK;
}

typedef struct cert_request {
    X509_NAME *subject;
    EVP_PKEY *key;
    X509 *issuer;        /* NULL: self-signed */
    EVP_PKEY *issuer_key;
    uint64_t not_before_ms, not_after_ms;
    const char *basic_constraints;
    const char *key_usage;
    bool key_ids; /* subject and authority key identifiers */
} cert_request;

static int issue_cert(const cert_request *r, X509 **out)
{
    int rc = CL_OK;
    X509 *cert = X509_new();
    CL_ENSURE(cert, CL_ENOMEM, "out of memory");
    if (X509_set_version(cert, X509_VERSION_3) != 1 || X509_set_subject_name(cert, r->subject) != 1 ||
        X509_set_issuer_name(cert, r->issuer ? X509_get_subject_name(r->issuer) : r->subject) != 1 ||
        X509_set_pubkey(cert, r->key) != 1 ||
        !ASN1_TIME_set(X509_getm_notBefore(cert), (time_t)(r->not_before_ms / 1000)) ||
        !ASN1_TIME_set(X509_getm_notAfter(cert), (time_t)(r->not_after_ms / 1000)))
        CL_OSSL_OUT(CL_ECRYPTO, "cannot fill in a certificate");
    CL_TRY_OUT(set_random_serial(cert));
    CL_TRY_OUT(add_ext(cert, r->issuer, NID_basic_constraints, r->basic_constraints));
    if (r->key_ids) {
        CL_TRY_OUT(add_ext(cert, r->issuer, NID_subject_key_identifier, "hash"));
        if (r->issuer)
            CL_TRY_OUT(add_ext(cert, r->issuer, NID_authority_key_identifier, "keyid:always"));
    }
    CL_TRY_OUT(add_ext(cert, r->issuer, NID_key_usage, r->key_usage));
    if (X509_sign(cert, r->issuer_key, EVP_sha384()) <= 0)
        CL_OSSL_OUT(CL_ECRYPTO, "cannot sign a certificate");
    int der_len = i2d_X509(cert, NULL);
    CL_ENSURE_OSSL_OUT(der_len > 0 && der_len <= CERT_DER_MAX, CL_ECRYPTO,
                  "certificate is %d bytes DER, beyond the %d a document allows", der_len, CERT_DER_MAX);
    *out = cert;
    cert = NULL;
out:
    X509_free(cert);
    return rc;
}

static int cert_to_der(X509 *cert, uint8_t **der, size_t *len)
{
    unsigned char *p = NULL;
    int n = i2d_X509(cert, &p);
    if (n <= 0)
        return cl_error_ossl(CL_ECRYPTO, "cannot encode a certificate");
    uint8_t *copy = malloc((size_t)n);
    if (!copy) {
        OPENSSL_free(p);
        return cl_error_set(CL_ENOMEM, "out of memory");
    }
    memcpy(copy, p, (size_t)n);
    OPENSSL_free(p);
    *der = copy;
    *len = (size_t)n;
    return CL_OK;
}

static void ca_clear(ca *c)
{
    EVP_PKEY_free(c->key);
    X509_free(c->cert);
    free(c->der);
    memset(c, 0, sizeof *c);
}

static int save_pem(const char *path, bool private_key, EVP_PKEY *key, X509 *cert)
{
    /* The secure-heap memory BIO clears its buffer when freed. */
    BIO *bio = BIO_new(private_key ? BIO_s_secmem() : BIO_s_mem());
    CL_ENSURE(bio, CL_ENOMEM, "out of memory");
    int ok = private_key ? PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL)
                         : PEM_write_bio_X509(bio, cert);
    int rc = CL_OK;
    if (ok != 1) {
        rc = cl_error_ossl(CL_ECRYPTO, "cannot encode %s", path);
    } else {
        char *data = NULL;
        long len = BIO_get_mem_data(bio, &data);
        rc = write_file_atomic(path, data, (size_t)len, private_key ? 0600 : 0644);
    }
    BIO_free(bio);
    return rc;
}

static int load_pem(const char *path, bool private_key, EVP_PKEY **key, X509 **cert)
{
    cl_buf text = CL_BUF_INIT;
    int rc = CL_OK;
    BIO *bio = NULL;
    CL_TRY_OUT(cl_read_file(path, STATE_FILE_MAX, &text));
    bio = BIO_new_mem_buf(text.data, (int)text.len);
    CL_ENSURE_OUT(bio, CL_ENOMEM, "out of memory");
    if (private_key) {
        *key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
        if (!*key)
            CL_OSSL_OUT(CL_EPARSE, "%s holds no readable private key", path);
    } else {
        *cert = PEM_read_bio_X509(bio, NULL, NULL, NULL);
        if (!*cert)
            CL_OSSL_OUT(CL_EPARSE, "%s holds no readable certificate", path);
    }
out:
    BIO_free(bio);
    cl_buf_free(&text);
    return rc;
}

static bool key_is_p384(EVP_PKEY *key)
{
    char group[32];
    size_t len = 0;
    return EVP_PKEY_get_base_id(key) == EVP_PKEY_EC &&
           EVP_PKEY_get_utf8_string_param(key, "group", group, sizeof group, &len) && !strcmp(group, "secp384r1");
}

static int cert_time_ms(const ASN1_TIME *t, uint64_t *out)
{
    struct tm tm;
    CL_ENSURE(t && ASN1_TIME_to_tm(t, &tm) == 1, CL_EPARSE, "unreadable certificate time");
    time_t secs = timegm(&tm);
    *out = secs < 0 ? 0 : (uint64_t)secs * 1000u;
    return CL_OK;
}

/* A stored CA is reused only if it is exactly what this simulator would
 * issue now: its key, its name, signed by its parent, valid long enough. */
static bool ca_usable(const cl_nsm_sim *sim, int level, const ca *c, const ca *parent, uint64_t now)
{
    bool usable = false;
    X509_NAME *want = NULL;
    uint64_t nb, na;
    if (!key_is_p384(c->key) || X509_check_private_key(c->cert, c->key) != 1)
        goto out;
    if (ca_subject(sim, level, &want) < 0 || X509_NAME_cmp(want, X509_get_subject_name(c->cert)) != 0)
        goto out;
    if (cert_time_ms(X509_get0_notBefore(c->cert), &nb) < 0 || cert_time_ms(X509_get0_notAfter(c->cert), &na) < 0)
        goto out;
    if (now < nb || na < now + CA_MIN_REMAINING_MS)
        goto out;
    const ca *issuer = parent ? parent : c;
    if (X509_check_issued(issuer->cert, c->cert) != X509_V_OK || X509_verify(c->cert, issuer->key) != 1)
        goto out;
    usable = true;
out:
    ERR_clear_error();
    X509_NAME_free(want);
    return usable;
}

static int issue_ca(cl_nsm_sim *sim, int level, uint64_t now, ca *c)
{
    const ca_spec *spec = &ca_specs[level];
    const ca *parent = level == CA_ROOT ? NULL : &sim->cas[level - 1];
    int rc = CL_OK;
    X509_NAME *subject = NULL;
    ca fresh = {0};
    CL_TRY_OUT(new_p384_key(&fresh.key));
    CL_TRY_OUT(ca_subject(sim, level, &subject));
    cert_request req = {
        .subject = subject,
        .key = fresh.key,
        .issuer = parent ? parent->cert : NULL,
        .issuer_key = parent ? parent->key : fresh.key,
        .not_before_ms = now > CA_BACKDATE_MS ? now - CA_BACKDATE_MS : 0,
        .not_after_ms = now + spec->lifetime_ms,
        .basic_constraints = spec->basic_constraints,
        .key_usage = spec->key_usage,
        .key_ids = true,
    };
    CL_TRY_OUT(issue_cert(&req, &fresh.cert));
    char key_path[PATH_MAX], cert_path[PATH_MAX], name[64];
    snprintf(name, sizeof name, "%s.key", spec->file);
    CL_TRY_OUT(path_in_state(sim, name, key_path));
    snprintf(name, sizeof name, "%s.pem", spec->file);
    CL_TRY_OUT(path_in_state(sim, name, cert_path));
    CL_TRY_OUT(save_pem(key_path, true, fresh.key, NULL));
    CL_TRY_OUT(save_pem(cert_path, false, NULL, fresh.cert));
    ca_clear(c);
    *c = fresh;
    memset(&fresh, 0, sizeof fresh);
    logf_(sim, "event=ca-issued level=%s file=%s", spec->file, cert_path);
out:
    ca_clear(&fresh);
    X509_NAME_free(subject);
    return rc;
}

static int load_ca(cl_nsm_sim *sim, int level, ca *c)
{
    char key_path[PATH_MAX], cert_path[PATH_MAX], name[64];
    snprintf(name, sizeof name, "%s.key", ca_specs[level].file);
    CL_TRY(path_in_state(sim, name, key_path));
    snprintf(name, sizeof name, "%s.pem", ca_specs[level].file);
    CL_TRY(path_in_state(sim, name, cert_path));
    if (!file_exists(key_path) || !file_exists(cert_path))
        return CL_ENOTFOUND;
    CL_TRY(load_pem(key_path, true, &c->key, NULL));
    return load_pem(cert_path, false, NULL, &c->cert);
}

/* Makes the four CA levels valid at now for a leaf lifetime and more,
 * re-issuing (and storing) whichever level is missing, stale or no longer
 * signed by the level above; a re-issued level forces its children too. */
static int ensure_chain(cl_nsm_sim *sim, uint64_t now)
{
    bool parent_changed = false;
    for (int level = 0; level < CA_LEVELS; level++) {
        ca *c = &sim->cas[level];
        if (!c->cert) {
            ca loaded = {0};
            int rc = load_ca(sim, level, &loaded);
            if (rc < 0 && rc != CL_ENOTFOUND)
                logf_(sim, "event=ca-unreadable level=%s", ca_specs[level].file);
            *c = loaded;
        }
        const ca *parent = level == CA_ROOT ? NULL : &sim->cas[level - 1];
        if (parent_changed || !c->cert || !c->key || !ca_usable(sim, level, c, parent, now)) {
            CL_TRY(issue_ca(sim, level, now, c));
            parent_changed = true;
        }
        if (!c->der) {
            CL_TRY(cert_to_der(c->cert, &c->der, &c->der_len));
            CL_ENSURE(c->der_len <= CERT_DER_MAX, CL_EPARSE, "stored %s certificate is %zu bytes, over %d",
                      ca_specs[level].file, c->der_len, CERT_DER_MAX);
        }
    }
    return CL_OK;
}

static int renew_leaf(cl_nsm_sim *sim, uint64_t now)
{
    int rc = CL_OK;
    EVP_PKEY *key = NULL;
    X509 *cert = NULL;
    X509_NAME *subject = NULL;
    uint8_t *der = NULL;
    size_t der_len = 0;
    CL_TRY_OUT(ensure_chain(sim, now));
    CL_TRY_OUT(new_p384_key(&key));
    CL_TRY_OUT(leaf_subject(sim, &subject));
    cert_request req = {
        .subject = subject,
        .key = key,
        .issuer = sim->cas[CA_INSTANCE].cert,
        .issuer_key = sim->cas[CA_INSTANCE].key,
        .not_before_ms = now,
        .not_after_ms = now + CL_NSM_SIM_LEAF_LIFETIME_MS,
        .basic_constraints = "critical,CA:FALSE",
        .key_usage = "digitalSignature,nonRepudiation",
    };
    CL_TRY_OUT(issue_cert(&req, &cert));
    CL_TRY_OUT(cert_to_der(cert, &der, &der_len));
    EVP_PKEY_free(sim->leaf_key);
    free(sim->leaf_der);
    sim->leaf_key = key;
    sim->leaf_der = der;
    sim->leaf_der_len = der_len;
    /* Times in the certificate have whole seconds. */
    sim->leaf_not_before_ms = now / 1000 * 1000;
    sim->leaf_not_after_ms = (now + CL_NSM_SIM_LEAF_LIFETIME_MS) / 1000 * 1000;
    key = NULL;
    der = NULL;
    char until[32];
    cl_format_time((int64_t)(sim->leaf_not_after_ms / 1000), until);
    logf_(sim, "event=leaf-issued not_after=%s", until);
out:
    EVP_PKEY_free(key);
    X509_free(cert);
    X509_NAME_free(subject);
    free(der);
    return rc;
}

static int ensure_leaf(cl_nsm_sim *sim, uint64_t now)
{
    if (sim->leaf_key && now >= sim->leaf_not_before_ms && now + LEAF_RENEW_MARGIN_MS < sim->leaf_not_after_ms)
        return CL_OK;
    return renew_leaf(sim, now);
}

/* ---- setup ---------------------------------------------------------------------- */

static int prepare_state_dir(const char *dir)
{
    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return cl_error_set(CL_EIO, "cannot create the state directory %s: %s", dir, strerror(errno));
    struct stat st;
    CL_ENSURE(stat(dir, &st) == 0, CL_EIO, "cannot inspect %s: %s", dir, strerror(errno));
    CL_ENSURE(S_ISDIR(st.st_mode), CL_EINVAL, "state path %s is not a directory", dir);
    return CL_OK;
}

static int load_or_create_instance_id(cl_nsm_sim *sim, const char *given)
{
    if (given) {
        CL_ENSURE(instance_id_valid(given, strlen(given)), CL_EINVAL,
                  "instance id '%.80s' must be 1..%d letters, digits or '-'", given, CL_NSM_SIM_INSTANCE_ID_MAX);
        snprintf(sim->instance_id, sizeof sim->instance_id, "%s", given);
        return CL_OK;
    }
    char path[PATH_MAX];
    CL_TRY(path_in_state(sim, "instance-id", path));
    if (file_exists(path)) {
        cl_buf text = CL_BUF_INIT;
        int rc = cl_read_file(path, 256, &text);
        size_t len = text.len;
        while (rc == CL_OK && len > 0 && (text.data[len - 1] == '\n' || text.data[len - 1] == '\r'))
            len--;
        if (rc == CL_OK && !instance_id_valid((const char *)text.data, len))
            rc = cl_error_set(CL_EPARSE, "%s does not hold a valid instance id", path);
        if (rc == CL_OK) {
            memcpy(sim->instance_id, text.data, len);
            sim->instance_id[len] = '\0';
        }
        cl_buf_free(&text);
        return rc;
    }
    /* The shape of an EC2 instance id: "i-" and 17 hex digits. */
    char hex[18];
    CL_TRY(random_hex(hex, 17));
    snprintf(sim->instance_id, sizeof sim->instance_id, "i-%s", hex);
    char line[CL_NSM_SIM_INSTANCE_ID_MAX + 2];
    int n = snprintf(line, sizeof line, "%s\n", sim->instance_id);
    return write_file_atomic(path, line, (size_t)n, 0644);
}

static int initial_pcrs(cl_nsm_sim *sim, const cl_nsm_sim_config *cfg)
{
    for (int i = 0; i < 3; i++) {
        char label[32];
        int n = snprintf(label, sizeof label, "cloister nsm-sim PCR%d", i);
        CL_TRY(sha384(label, (size_t)n, sim->pcrs[i]));
    }
    if (cfg->image_path)
        CL_TRY(sha384_file(cfg->image_path, sim->pcrs[0]));
    /* Nitro extends PCR4 once, from zero, with the parent's instance id. */
    uint8_t buf[CL_NSM_SIM_PCR_LEN + CL_NSM_SIM_INSTANCE_ID_MAX];
    size_t id_len = strlen(sim->instance_id);
    memset(buf, 0, CL_NSM_SIM_PCR_LEN);
    memcpy(buf + CL_NSM_SIM_PCR_LEN, sim->instance_id, id_len);
    CL_TRY(sha384(buf, CL_NSM_SIM_PCR_LEN + id_len, sim->pcrs[4]));
    for (int i = 0; i < CL_NSM_SIM_PCRS; i++)
        if (cfg->pcr_mask & (1u << i))
            memcpy(sim->pcrs[i], cfg->pcr_values[i], CL_NSM_SIM_PCR_LEN);
    if (cfg->debug)
        memset(sim->pcrs, 0, 3 * CL_NSM_SIM_PCR_LEN);
    sim->locked = INITIALLY_LOCKED;
    return CL_OK;
}

/* Serializes two simulators starting on one state directory. */
static int lock_state_dir(const cl_nsm_sim *sim, int *fd_out)
{
    char path[PATH_MAX];
    CL_TRY(path_in_state(sim, ".lock", path));
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    CL_ENSURE(fd >= 0, CL_EIO, "cannot open %s: %s", path, strerror(errno));
    while (flock(fd, LOCK_EX) < 0) {
        if (errno != EINTR) {
            int saved = errno;
            close(fd);
            return cl_error_set(CL_EIO, "cannot lock %s: %s", path, strerror(saved));
        }
    }
    *fd_out = fd;
    return CL_OK;
}

int cl_nsm_sim_new(const cl_nsm_sim_config *cfg, cl_nsm_sim **out)
{
    *out = NULL;
    CL_ENSURE(cfg && cfg->state_dir && *cfg->state_dir, CL_EINVAL, "the simulator needs a state directory");
    cl_nsm_sim *sim = calloc(1, sizeof *sim);
    CL_ENSURE(sim, CL_ENOMEM, "out of memory");
    if (pthread_mutex_init(&sim->lock, NULL) != 0) {
        free(sim);
        return cl_error_set(CL_ENOMEM, "cannot create a mutex");
    }
    int rc = CL_OK;
    int lock_fd = -1;
    sim->clock = cfg->clock ? cfg->clock : real_clock;
    sim->clock_ctx = cfg->clock_ctx;
    sim->log = cfg->log;
    sim->log_ctx = cfg->log_ctx;
    size_t dir_len = strlen(cfg->state_dir);
    while (dir_len > 1 && cfg->state_dir[dir_len - 1] == '/')
        dir_len--;
    CL_ENSURE_OUT(dir_len < sizeof sim->state_dir - 32, CL_EINVAL, "state directory path is too long");
    memcpy(sim->state_dir, cfg->state_dir, dir_len);
    sim->state_dir[dir_len] = '\0';
    CL_TRY_OUT(prepare_state_dir(sim->state_dir));
    CL_TRY_OUT(path_in_state(sim, "root.pem", sim->root_pem_path));
    CL_TRY_OUT(lock_state_dir(sim, &lock_fd));
    CL_TRY_OUT(load_or_create_instance_id(sim, cfg->instance_id));
    char enclave[17];
    CL_TRY_OUT(random_hex(enclave, 16));
    snprintf(sim->module_id, sizeof sim->module_id, "%s-enc%s", sim->instance_id, enclave);
    CL_TRY_OUT(initial_pcrs(sim, cfg));
    CL_TRY_OUT(renew_leaf(sim, now_ms(sim)));
out:
    if (lock_fd >= 0)
        close(lock_fd);
    if (rc < 0) {
        cl_nsm_sim_free(sim);
        return rc;
    }
    *out = sim;
    return CL_OK;
}

void cl_nsm_sim_free(cl_nsm_sim *sim)
{
    if (!sim)
        return;
    for (int i = 0; i < CA_LEVELS; i++)
        ca_clear(&sim->cas[i]);
    EVP_PKEY_free(sim->leaf_key);
    free(sim->leaf_der);
    cl_wipe(sim->pcrs, sizeof sim->pcrs);
    pthread_mutex_destroy(&sim->lock);
    free(sim);
}

const char *cl_nsm_sim_root_pem_path(const cl_nsm_sim *sim)
{
    return sim->root_pem_path;
}

const char *cl_nsm_sim_module_id(const cl_nsm_sim *sim)
{
    return sim->module_id;
}

const char *cl_nsm_sim_instance_id(const cl_nsm_sim *sim)
{
    return sim->instance_id;
}

/* ---- requests ------------------------------------------------------------------- */

/* What one request produced: either a success response or an NSM error,
 * plus what to log.  Slices in resp point into the scratch fields. */
typedef struct outcome {
    cl_nsm_response resp;
    uint8_t pcr[CL_NSM_SIM_PCR_LEN];
    uint8_t random[CL_NSM_SIM_RANDOM_LEN];
    cl_buf document;
} outcome;

static void fail_with(outcome *o, int code)
{
    o->resp.op = -1;
    o->resp.error_code = code;
}

static void do_describe_pcr(cl_nsm_sim *sim, const cl_nsm_request *req, outcome *o)
{
    if (req->index >= CL_NSM_SIM_PCRS) {
        fail_with(o, CL_NSM_INVALID_INDEX);
        return;
    }
    pthread_mutex_lock(&sim->lock);
    memcpy(o->pcr, sim->pcrs[req->index], CL_NSM_SIM_PCR_LEN);
    o->resp.lock = (sim->locked >> req->index) & 1u;
    pthread_mutex_unlock(&sim->lock);
    o->resp.data = (cl_slice){o->pcr, CL_NSM_SIM_PCR_LEN};
}

static int do_extend_pcr(cl_nsm_sim *sim, const cl_nsm_request *req, outcome *o)
{
    if (req->index >= CL_NSM_SIM_PCRS) {
        fail_with(o, CL_NSM_INVALID_INDEX);
        return CL_OK;
    }
    if (req->data.len > CL_NSM_SIM_EXTEND_MAX) {
        fail_with(o, CL_NSM_INPUT_TOO_LARGE);
        return CL_OK;
    }
    int rc = CL_OK;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    CL_ENSURE(md, CL_ENOMEM, "out of memory");
    pthread_mutex_lock(&sim->lock);
    if ((sim->locked >> req->index) & 1u) {
        fail_with(o, CL_NSM_READ_ONLY_INDEX);
    } else {
        unsigned int len = 0;
        uint8_t *pcr = sim->pcrs[req->index];
        if (EVP_DigestInit_ex(md, EVP_sha384(), NULL) != 1 || EVP_DigestUpdate(md, pcr, CL_NSM_SIM_PCR_LEN) != 1 ||
            EVP_DigestUpdate(md, req->data.data, req->data.len) != 1 || EVP_DigestFinal_ex(md, o->pcr, &len) != 1 ||
            len != CL_NSM_SIM_PCR_LEN) {
            rc = cl_error_ossl(CL_ECRYPTO, "SHA-384 failed extending PCR%u", req->index);
        } else {
            memcpy(pcr, o->pcr, CL_NSM_SIM_PCR_LEN);
            o->resp.data = (cl_slice){o->pcr, CL_NSM_SIM_PCR_LEN};
        }
    }
    pthread_mutex_unlock(&sim->lock);
    EVP_MD_CTX_free(md);
    return rc;
}

static void do_lock(cl_nsm_sim *sim, const cl_nsm_request *req, outcome *o)
{
    uint32_t mask;
    if (req->op == CL_NSM_LOCK_PCR) {
        if (req->index >= CL_NSM_SIM_PCRS) {
            fail_with(o, CL_NSM_INVALID_INDEX);
            return;
        }
        mask = 1u << req->index;
    } else {
        if (req->range > CL_NSM_SIM_PCRS) {
            fail_with(o, CL_NSM_INVALID_INDEX);
            return;
        }
        mask = req->range == 32 ? UINT32_MAX : (1u << req->range) - 1u;
    }
    pthread_mutex_lock(&sim->lock);
    sim->locked |= mask;
    pthread_mutex_unlock(&sim->lock);
}

static void do_describe_nsm(cl_nsm_sim *sim, outcome *o)
{
    cl_nsm_description *d = &o->resp.description;
    d->version_major = VERSION_MAJOR;
    d->version_minor = VERSION_MINOR;
    d->version_patch = VERSION_PATCH;
    snprintf(d->module_id, sizeof d->module_id, "%s", sim->module_id);
    d->max_pcrs = CL_NSM_SIM_PCRS;
    snprintf(d->digest, sizeof d->digest, "SHA384");
    pthread_mutex_lock(&sim->lock);
    d->locked_pcrs = sim->locked;
    pthread_mutex_unlock(&sim->lock);
}

static int put_text_field(cl_buf *b, const char *key, const char *value)
{
    CL_TRY(cl_cbor_put_text(b, key));
    return cl_cbor_put_text(b, value);
}

static int put_opt_field(cl_buf *b, const char *key, bool present, cl_slice s)
{
    CL_TRY(cl_cbor_put_text(b, key));
    return present ? cl_cbor_put_bytes(b, s.data, s.len) : cl_cbor_put_null(b);
}

/* The payload in AWS's field order; called with the lock held. */
static int build_payload(cl_nsm_sim *sim, const cl_nsm_request *req, uint64_t now, cl_buf *p)
{
    CL_TRY(cl_cbor_put_map(p, 9));
    CL_TRY(put_text_field(p, "module_id", sim->module_id));
    CL_TRY(put_text_field(p, "digest", "SHA384"));
    CL_TRY(cl_cbor_put_text(p, "timestamp"));
    CL_TRY(cl_cbor_put_uint(p, now));
    CL_TRY(cl_cbor_put_text(p, "pcrs"));
    unsigned count = ATTESTED_PCRS;
    for (unsigned i = ATTESTED_PCRS; i < CL_NSM_SIM_PCRS; i++)
        count += (sim->locked >> i) & 1u;
    CL_TRY(cl_cbor_put_map(p, count));
    for (unsigned i = 0; i < CL_NSM_SIM_PCRS; i++) {
        if (i >= ATTESTED_PCRS && !((sim->locked >> i) & 1u))
            continue;
        CL_TRY(cl_cbor_put_uint(p, i));
        CL_TRY(cl_cbor_put_bytes(p, sim->pcrs[i], CL_NSM_SIM_PCR_LEN));
    }
    CL_TRY(cl_cbor_put_text(p, "certificate"));
    CL_TRY(cl_cbor_put_bytes(p, sim->leaf_der, sim->leaf_der_len));
    CL_TRY(cl_cbor_put_text(p, "cabundle"));
    CL_TRY(cl_cbor_put_array(p, CA_LEVELS));
    for (int i = 0; i < CA_LEVELS; i++)
        CL_TRY(cl_cbor_put_bytes(p, sim->cas[i].der, sim->cas[i].der_len));
    CL_TRY(put_opt_field(p, "public_key", req->has_public_key, req->public_key));
    CL_TRY(put_opt_field(p, "user_data", req->has_user_data, req->user_data));
    return put_opt_field(p, "nonce", req->has_nonce, req->nonce);
}

static int do_attestation(cl_nsm_sim *sim, const cl_nsm_request *req, outcome *o)
{
    if ((req->has_user_data && req->user_data.len > CL_NSM_SIM_FIELD_MAX) ||
        (req->has_nonce && req->nonce.len > CL_NSM_SIM_FIELD_MAX) ||
        (req->has_public_key && req->public_key.len > CL_NSM_SIM_FIELD_MAX)) {
        fail_with(o, CL_NSM_INPUT_TOO_LARGE);
        return CL_OK;
    }
    int rc = CL_OK;
    cl_buf payload = CL_BUF_INIT;
    EVP_PKEY *key = NULL;
    pthread_mutex_lock(&sim->lock);
    uint64_t now = now_ms(sim);
    rc = ensure_leaf(sim, now);
    if (rc == CL_OK)
        rc = build_payload(sim, req, now, &payload);
    if (rc == CL_OK && EVP_PKEY_up_ref(sim->leaf_key) == 1)
        key = sim->leaf_key;
    pthread_mutex_unlock(&sim->lock);
    CL_TRY_OUT(rc);
    CL_ENSURE_OSSL_OUT(key, CL_ECRYPTO, "cannot reference the leaf key");
    /* Signing is the slow part: done outside the lock. */
    CL_TRY_OUT(cl_cose_sign1_sign(key, payload.data, payload.len, &o->document));
    o->resp.data = (cl_slice){o->document.data, o->document.len};
out:
    EVP_PKEY_free(key);
    cl_buf_free(&payload);
    return rc;
}

static int dispatch(cl_nsm_sim *sim, const cl_nsm_request *req, outcome *o)
{
    o->resp.op = req->op;
    switch (req->op) {
    case CL_NSM_DESCRIBE_PCR:
        do_describe_pcr(sim, req, o);
        return CL_OK;
    case CL_NSM_EXTEND_PCR:
        return do_extend_pcr(sim, req, o);
    case CL_NSM_LOCK_PCR:
    case CL_NSM_LOCK_PCRS:
        do_lock(sim, req, o);
        return CL_OK;
    case CL_NSM_DESCRIBE_NSM:
        do_describe_nsm(sim, o);
        return CL_OK;
    case CL_NSM_ATTESTATION:
        return do_attestation(sim, req, o);
    case CL_NSM_GET_RANDOM:
        CL_ENSURE_OSSL(RAND_bytes(o->random, sizeof o->random) == 1, CL_ECRYPTO, "RAND_bytes failed");
        o->resp.data = (cl_slice){o->random, sizeof o->random};
        return CL_OK;
    }
    fail_with(o, CL_NSM_INVALID_OPERATION);
    return CL_OK;
}

static void log_request(const cl_nsm_sim *sim, const cl_nsm_request *req, const outcome *o, const char *reason)
{
    if (!sim->log)
        return;
    const char *result = o->resp.op == -1 ? cl_nsm_error_name(o->resp.error_code) : "ok";
    if (reason) {
        char why[256];
        snprintf(why, sizeof why, "%s", reason);
        sanitize(why);
        logf_(sim, "event=request op=invalid result=%s reason=\"%s\"", result, why);
        return;
    }
    switch (req->op) {
    case CL_NSM_DESCRIBE_PCR:
    case CL_NSM_EXTEND_PCR:
    case CL_NSM_LOCK_PCR:
        logf_(sim, "event=request op=%s index=%u result=%s", cl_nsm_op_name(req->op), req->index, result);
        break;
    case CL_NSM_LOCK_PCRS:
        logf_(sim, "event=request op=%s range=%u result=%s", cl_nsm_op_name(req->op), req->range, result);
        break;
    default:
        logf_(sim, "event=request op=%s result=%s", cl_nsm_op_name(req->op), result);
    }
}

int cl_nsm_sim_handle(cl_nsm_sim *sim, const uint8_t *req_data, size_t len, cl_buf *resp)
{
    cl_buf_reset(resp);
    outcome *o = calloc(1, sizeof *o);
    CL_ENSURE(o, CL_ENOMEM, "out of memory");
    cl_nsm_request req;
    cl_cbor_doc doc = {0};
    int rc = CL_OK;
    char reason[256] = "";
    int decoded = cl_nsm_request_decode(req_data, len, &req, &doc);
    if (decoded < 0) {
        snprintf(reason, sizeof reason, "%s", cl_error_message());
        fail_with(o, decoded == CL_ELIMIT ? CL_NSM_INPUT_TOO_LARGE : CL_NSM_INVALID_ARGUMENT);
    } else {
        CL_TRY_OUT(dispatch(sim, &req, o));
    }
    log_request(sim, &req, o, decoded < 0 ? reason : NULL);
    CL_TRY_OUT(cl_nsm_response_encode(&o->resp, resp));
out:
    if (rc < 0) {
        /* The caller still owes the client an answer. */
        logf_(sim, "event=internal-error detail=\"%s\"", cl_error_message());
        cl_nsm_response internal = {.op = -1, .error_code = CL_NSM_INTERNAL_ERROR};
        cl_buf_reset(resp);
        if (cl_nsm_response_encode(&internal, resp) == CL_OK)
            rc = CL_OK;
    }
    cl_cbor_doc_free(&doc);
    cl_buf_free(&o->document);
    cl_wipe(o->random, sizeof o->random);
    free(o);
    return rc;
}

int cl_nsm_sim_serve(cl_nsm_sim *sim, int fd)
{
    cl_buf req = CL_BUF_INIT, resp = CL_BUF_INIT;
    int rc = CL_OK;
    for (;;) {
        bool eof = false;
        rc = cl_nsm_frame_read(fd, CL_NSM_REQUEST_MAX, &req, &eof);
        if (rc == CL_ELIMIT) {
            /* The body is not read: answer, then drop the connection. */
            logf_(sim, "event=request op=invalid result=InputTooLarge reason=\"frame over %d bytes\"",
                  CL_NSM_REQUEST_MAX);
            cl_nsm_response too_large = {.op = -1, .error_code = CL_NSM_INPUT_TOO_LARGE};
            cl_buf_reset(&resp);
            if (cl_nsm_response_encode(&too_large, &resp) == CL_OK &&
                cl_nsm_frame_write(fd, resp.data, resp.len) < 0) {
                /* The connection ends either way. */
            }
            break;
        }
        if (rc < 0 || eof)
            break;
        CL_TRY_OUT(cl_nsm_sim_handle(sim, req.data, req.len, &resp));
        CL_TRY_OUT(cl_nsm_frame_write(fd, resp.data, resp.len));
    }
out:
    cl_buf_free(&req);
    cl_buf_free(&resp);
    return rc;
}

static int sim_exchange(void *ctx, const uint8_t *req, size_t req_len, cl_buf *resp)
{
    return cl_nsm_sim_handle(ctx, req, req_len, resp);
}

int cl_nsm_open_sim(cl_nsm_sim *sim, cl_nsm **out)
{
    return cl_nsm_open_custom(sim_exchange, sim, out);
}

/* The key-holder's KMS key source: Decrypt with a Recipient, inside the
 * enclave.  One KMS session for the process (one RSA-2048 session key; each
 * call carries a fresh attestation document), calls serialised. */
#include "keyholder_kms.h"

#include "cloister/core/error.h"
#include "cloister/core/keyholder_proto.h"
#include "cloister/enclave/kms.h"
#include "cloister/core/log.h"

#include <pthread.h>
#include <string.h>

static struct {
    pthread_mutex_t lock;
    bool enabled, started;
    const char *region, *endpoint, *proxy, *ca_file, *imds, *role, *nsm;
    const char *key_ids[KH_KMS_KEY_IDS_MAX];
    size_t key_id_count;
    cl_kms_session session;
} kk = {.lock = PTHREAD_MUTEX_INITIALIZER};

static int set_slot(const char **slot, const char *value)
{
    CL_ENSURE(*value, CL_EINVAL, "empty value");
    *slot = value;
    kk.enabled = true;
    return CL_OK;
}

static int set_region(void *base, const char *v) { (void)base; return set_slot(&kk.region, v); }
static int set_endpoint(void *base, const char *v) { (void)base; return set_slot(&kk.endpoint, v); }
static int set_proxy(void *base, const char *v) { (void)base; return set_slot(&kk.proxy, v); }
static int set_ca_file(void *base, const char *v) { (void)base; return set_slot(&kk.ca_file, v); }
static int set_imds(void *base, const char *v) { (void)base; return set_slot(&kk.imds, v); }
static int set_role(void *base, const char *v) { (void)base; return set_slot(&kk.role, v); }
static int set_nsm(void *base, const char *v) { (void)base; return set_slot(&kk.nsm, v); }

static int add_key_id(void *base, const char *value)
{
    (void)base;
    if (!*value)
        return CL_OK; /* as before: an empty --kms-key-id is ignored */
    CL_ENSURE(kk.key_id_count < KH_KMS_KEY_IDS_MAX, CL_ELIMIT, "at most %d", KH_KMS_KEY_IDS_MAX);
    CL_ENSURE(strlen(value) <= 2048, CL_EINVAL, "at most 2048 characters");
    kk.key_ids[kk.key_id_count++] = value;
    kk.enabled = true;
    return CL_OK;
}

static const cl_opt options[] = {
    {.name = "kms-region", CL_OPT_CALLBACK(set_region), .arg = "R",
     .help = "KMS's region (else $AWS_REGION, else IMDS's)"},
    {.name = "kms-endpoint", CL_OPT_CALLBACK(set_endpoint), .arg = "URL",
     .help = "https://HOST[:PORT] (https://kms.REGION.amazonaws.com)"},
    {.name = "kms-proxy", CL_OPT_CALLBACK(set_proxy), .arg = "ADDR",
     .help = "the host's outbound proxy to KMS (default vsock:3:8000)"},
    {.name = "kms-ca-file", CL_OPT_CALLBACK(set_ca_file), .arg = "PEM",
     .help = "CAs for KMS's certificate instead of the system's"},
    {.name = "kms-imds", CL_OPT_CALLBACK(set_imds), .arg = "ADDR",
     .help = "credentials from IMDSv2 (cloister host --imds, e.g. vsock:3:8002); else "
             "$AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY[/$AWS_SESSION_TOKEN]"},
    {.name = "kms-role", CL_OPT_CALLBACK(set_role), .arg = "NAME",
     .help = "the instance profile's role (default: the one IMDS names)"},
    {.name = "nsm", CL_OPT_CALLBACK(set_nsm), .arg = "ADDR",
     .help = "the NSM for the Recipient's attestation documents (unix:PATH of nsm-sim; default $CLOISTER_NSM, "
             "else /dev/nsm)"},
    {.name = "kms-key-id", CL_OPT_CALLBACK(add_key_id), .flags = CL_OPT_REPEAT, .arg = "ID",
     .help = "a KMS key whose ciphertexts may become tokens: key ARN, key id, alias/NAME or alias ARN (repeatable, "
             "at most 8; required).  A ciphertext under any other key is refused, and each must carry the context "
             "purpose=pkcs11-token, token=LABEL (acm pack-key --token)"},
};

const cl_opt *kh_kms_options(size_t *count)
{
    *count = sizeof options / sizeof options[0];
    return options;
}

bool kh_kms_enabled(void)
{
    return kk.enabled;
}

int kh_kms_start(void)
{
    if (!kk.enabled)
        return CL_OK;
    CL_ENSURE(kk.key_id_count > 0, CL_EINVAL,
              "KMS key source: --kms-key-id is required (the KMS keys whose ciphertexts may become tokens)");
    cl_kms_setup setup = {
        .region = kk.region,
        .endpoint = kk.endpoint,
        .proxy = kk.proxy ? kk.proxy : "vsock:3:8000",
        .ca_file = kk.ca_file,
        .imds = kk.imds,
        .role = kk.role,
        .recipient = true,
        .nsm = kk.nsm,
        .max_attempts = 3,
        .timeout_ms = 5000,
    };
    int rc = cl_kms_session_open(&setup, &kk.session);
    if (rc < 0)
        return cl_error_prefix(rc, "KMS key source: ");
    kk.started = true;
    cl_log(CL_LOG_INFO, "kms_session", "region", kk.session.region, "proxy", setup.proxy, "credentials",
           cl_aws_credentials_source(kk.session.credentials), "recipient", "RSA-2048", NULL);
    return CL_OK;
}

bool kh_kms_key_id_matches(const char *wanted, const char *answered)
{
    if (!strcmp(wanted, answered))
        return true;
    if (!strncmp(wanted, "arn:", 4))
        return false; /* a key ARN must be the very one */
    size_t wl = strlen(wanted), al = strlen(answered);
    /* a bare key id: the ARN ends in ":key/ID" */
    return al > wl + 5 && !strcmp(answered + al - wl, wanted) && !memcmp(answered + al - wl - 5, ":key/", 5);
}

static bool is_alias(const char *id)
{
    return !strncmp(id, "alias/", 6) || (!strncmp(id, "arn:", 4) && strstr(id, ":alias/"));
}

int kh_kms_open(cl_slice label, cl_slice ciphertext, cl_buf *key, uint32_t *status)
{
    if (!kk.started) {
        *status = CL_KH_ST_NOT_IMPLEMENTED;
        return cl_error_set(CL_EINVAL, "this key-holder has no KMS settings (--kms-proxy, --kms-region, ...): "
                                       "KMS-ciphertext keys are not accepted");
    }
    char label_text[CL_KH_LABEL_MAX + 1];
    if (label.len == 0 || label.len > CL_KH_LABEL_MAX) {
        *status = CL_KH_ST_BAD_KEY;
        return cl_error_set(CL_EINVAL, "token label of 1..%d bytes", CL_KH_LABEL_MAX);
    }
    memcpy(label_text, label.data, label.len);
    label_text[label.len] = '\0';
    cl_kms_purpose_context purpose;
    int rc = cl_kms_purpose_context_make(CL_KMS_PURPOSE_PKCS11_TOKEN, label_text, &purpose);
    if (rc < 0) {
        *status = CL_KH_ST_BAD_KEY;
        return rc;
    }
    char type[96] = "", key_id[2100] = "";
    const char *used = NULL;
    pthread_mutex_lock(&kk.lock);
    /* One Decrypt per accepted key, each naming it as KeyId: KMS answers
     * IncorrectKeyException when the ciphertext is under another key, and
     * checks aliases itself. */
    for (size_t i = 0; i < kk.key_id_count; i++) {
        used = kk.key_ids[i];
        cl_kms_options o = {.key_id = used, .context = purpose.entries, .context_count = purpose.count};
        cl_buf_reset(key);
        rc = cl_kms_decrypt(kk.session.kms, &o, ciphertext.data, ciphertext.len, key);
        snprintf(type, sizeof type, "%s", rc < 0 ? cl_kms_error_type(kk.session.kms) : "");
        snprintf(key_id, sizeof key_id, "%s", cl_kms_key_id(kk.session.kms));
        if (rc == CL_OK || strcmp(type, "IncorrectKeyException") || i + 1 == kk.key_id_count)
            break;
        cl_error_clear();
    }
    pthread_mutex_unlock(&kk.lock);
    if (rc < 0) {
        *status = type[0] ? CL_KH_ST_KMS_REFUSED : CL_KH_ST_KMS_UNAVAILABLE;
        if (!strcmp(type, "IncorrectKeyException"))
            return cl_error_prefix(rc, "the key's KMS ciphertext is not under a KMS key this key-holder was started "
                                       "with (--kms-key-id): ");
        if (!strcmp(type, "InvalidCiphertextException"))
            return cl_error_prefix(rc, "the key's KMS ciphertext was not made for token \"%s\" (it must carry the "
                                       "encryption context purpose=" CL_KMS_PURPOSE_PKCS11_TOKEN
                                       ", token=%s, as `acm pack-key --token %s` makes; a ciphertext for another "
                                       "purpose, e.g. the enclave's TLS key, is refused) or is damaged: ",
                                   label_text, label_text, label_text);
        return cl_error_prefix(rc, "the key's KMS ciphertext cannot be opened in this enclave: ");
    }
    if (!is_alias(used) && !kh_kms_key_id_matches(used, key_id)) {
        cl_buf_reset(key);
        *status = CL_KH_ST_KMS_REFUSED;
        return cl_error_set(CL_EVERIFY, "KMS answered for key %s, not for %s (--kms-key-id)", key_id, used);
    }
    cl_log(CL_LOG_INFO, "kms_key_opened", "key_id", key_id, "token", label_text, "purpose",
           CL_KMS_PURPOSE_PKCS11_TOKEN, NULL);
    return CL_OK;
}

void kh_kms_stop(void)
{
    /* a call in progress keeps the session; the process is ending anyway */
    if (pthread_mutex_trylock(&kk.lock) != 0)
        return;
    if (kk.started)
        cl_kms_session_close(&kk.session);
    kk.started = false;
    pthread_mutex_unlock(&kk.lock);
}

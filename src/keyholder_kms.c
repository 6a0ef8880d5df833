/* The key-holder's KMS key source: Decrypt with a Recipient, inside the
 * enclave.  One KMS session for the process (one RSA-2048 session key; each
 * call carries a fresh attestation document), calls serialised. */
#include "keyholder_kms.h"

#include "cloister/core/error.h"
#include "cloister/core/keyholder_proto.h"
#include "cloister/enclave/kms.h"
#include "cloister/core/log.h"

#include <pthread.h>
#include <stdio.h>
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

const char *const *kh_kms_key_ids(size_t *count)
{
    *count = kk.key_id_count;
    return kk.key_ids;
}

/* The custody core's KMS callback (cl_custody_kms_decrypt_fn): the core
 * chooses the KeyId and the purpose context and checks the answer; this
 * only carries one Decrypt over the process's one session. */
int kh_kms_decrypt(void *arg, const cl_kms_options *o, cl_slice ciphertext, cl_buf *plaintext,
                   cl_custody_kms_answer *answer)
{
    (void)arg;
    if (!kk.started)
        return cl_error_set(CL_EINVAL, "the KMS session is not open");
    pthread_mutex_lock(&kk.lock);
    int rc = cl_kms_decrypt(kk.session.kms, o, ciphertext.data, ciphertext.len, plaintext);
    snprintf(answer->error_type, sizeof answer->error_type, "%s", rc < 0 ? cl_kms_error_type(kk.session.kms) : "");
    snprintf(answer->key_id, sizeof answer->key_id, "%s", cl_kms_key_id(kk.session.kms));
    pthread_mutex_unlock(&kk.lock);
    return rc;
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

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

int kh_kms_option(int code, const char *value)
{
    const char **slots[] = {&kk.region, &kk.endpoint, &kk.proxy, &kk.ca_file, &kk.imds, &kk.role, &kk.nsm};
    int i = code - KH_KMS_OPT_FIRST;
    if (i == 7 && value && *value) { /* --kms-key-id, repeatable */
        if (kk.key_id_count == KH_KMS_KEY_IDS_MAX) {
            fprintf(stderr, "keyholder: at most %d --kms-key-id\n", KH_KMS_KEY_IDS_MAX);
            return -1;
        }
        if (strlen(value) > 2048) {
            fprintf(stderr, "keyholder: --kms-key-id: at most 2048 characters\n");
            return -1;
        }
        kk.key_ids[kk.key_id_count++] = value;
        kk.enabled = true;
        return 0;
    }
    if (i < 0 || i >= (int)(sizeof slots / sizeof slots[0]) || !value || !*value) {
        fprintf(stderr, "keyholder: empty KMS option value\n");
        return -1;
    }
    *slots[i] = value;
    kk.enabled = true;
    return 0;
}

void kh_kms_usage(FILE *out)
{
    fprintf(out,
            "KMS key source (keys provisioned as KMS ciphertexts, e.g. by `cloister host acm`; any of these\n"
            "enables it, opened at start):\n"
            "  --kms-region R         KMS's region (else $AWS_REGION, else IMDS's)\n"
            "  --kms-endpoint URL     https://HOST[:PORT] (https://kms.REGION.amazonaws.com)\n"
            "  --kms-proxy ADDR       the host's outbound proxy to KMS (default vsock:3:8000)\n"
            "  --kms-ca-file PEM      CAs for KMS's certificate instead of the system's\n"
            "  --kms-imds ADDR        credentials from IMDSv2 (cloister host --imds, e.g. vsock:3:8002);\n"
            "                         else $AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY[/$AWS_SESSION_TOKEN]\n"
            "  --kms-role NAME        the instance profile's role (default: the one IMDS names)\n"
            "  --kms-key-id ID        a KMS key whose ciphertexts may become tokens: key ARN, key id,\n"
            "                         alias/NAME or alias ARN (repeatable, at most 8; required).  A\n"
            "                         ciphertext under any other key is refused, and each must carry\n"
            "                         the context purpose=pkcs11-token, token=LABEL (acm pack-key --token)\n"
            "  --nsm ADDR             the NSM for the Recipient's attestation documents (unix:PATH of\n"
            "                         nsm-sim; default $CLOISTER_NSM, else /dev/nsm)\n");
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

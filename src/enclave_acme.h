/* `cloister enclave -acme`: the ACME thread that orders, installs and
 * renews the public listener's certificate (src/enclave_acme.c). */
#ifndef CLOISTER_SRC_ENCLAVE_ACME_H
#define CLOISTER_SRC_ENCLAVE_ACME_H

#include "cloister/core/buf.h"
#include "cloister/core/error.h"
#include "cloister/core/metrics.h"
#include "cloister/core/options.h"
#include "cloister/core/tls.h"
#include "cloister/enclave/acme.h"
#include "cloister/enclave/cert_store.h"
#include "cloister/enclave/kms.h"

#include <stdbool.h>

typedef struct enclave_acme_settings {
    bool acme;
    char *directory, *email, *ca_file, *store, *challenge, *proxy, *http_listen, *store_proxy, *kms_key_id,
        *dynamodb_endpoint, *store_ca_file;
    unsigned backoff_ms, max_backoff_ms, poll_ms, max_polls;
} enclave_acme_settings;

/* With --acme-store the name keys the stored record and its "lease."
 * record, and the store's names are at most CL_CERT_STORE_NAME_MAX. */
#define ENCLAVE_ACME_LEASE_PREFIX "lease."
#define ENCLAVE_ACME_STORED_NAME_MAX (CL_CERT_STORE_NAME_MAX - (int)sizeof ENCLAVE_ACME_LEASE_PREFIX + 1)

extern const cl_opt enclave_acme_option_specs[];
extern const size_t enclave_acme_option_count;

/* Options that make sense only with -acme were given without it, or a
 * value is wrong: the problem is printed, EXIT_USAGE-style nonzero. */
int enclave_acme_check(const enclave_acme_settings *s);

typedef struct enclave_acme enclave_acme;

/* Makes id (taken) the identity of new public connections: the enclave
 * builds a context for it and hooks tls-alpn-01 into it. */
typedef int (*enclave_acme_install_fn)(void *arg, cl_tls_identity *id);
/* Whether this enclave may order now (key sync: only the leader). */
typedef bool (*enclave_acme_gate_fn)(void *arg);

typedef struct enclave_acme_env {
    const char *fqdn;
    bool enable_h2;
    enclave_acme_install_fn install;
    enclave_acme_gate_fn gate; /* NULL: always */
    /* key sync: hand the pending challenge to the workers (NULL: none) */
    cl_acme_publish_fn publish;
    void *arg;
    /* for --acme-store: a KMS client that makes and opens the keys'
     * ciphertexts (borrowed; NULL without a store) */
    cl_kms *kms;
    cl_aws_credentials_provider *credentials; /* dynamodb: the same credentials */
    const char *region;
} enclave_acme_env;

CL_MUST_CHECK int enclave_acme_new(const enclave_acme_settings *s, const enclave_acme_env *env, enclave_acme **out);
/* Hooks the tls-alpn-01 answers into a public listener's context. */
CL_MUST_CHECK int enclave_acme_hook(enclave_acme *a, SSL_CTX *ctx);
/* Loads a stored certificate (if any), opens the http-01 listener, starts
 * the thread. */
CL_MUST_CHECK int enclave_acme_start(enclave_acme *a);
void enclave_acme_free(enclave_acme *a);
/* Key sync, worker: the challenges a verified leader has pending
 * (cl_acme_pending_encode's text; empty: none) are answered here too until
 * they expire, so that the CA's validation succeeds on whichever replica
 * the balancer gives it. */
void enclave_acme_take_challenges(enclave_acme *a, const uint8_t *text, size_t len);
/* Appends the acme_* metrics. */
CL_MUST_CHECK int enclave_acme_metrics(enclave_acme *a, const cl_metrics *m, cl_buf *out);

#endif

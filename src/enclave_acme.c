/* `cloister enclave -acme`: one thread that keeps a CA-issued certificate
 * on the public listener.
 *
 * At start a stored certificate (--acme-store, whose keys only this
 * enclave's KMS key opens) is served at once if it is still good for the
 * FQDN; otherwise, and at two thirds of the lifetime (with jitter), the
 * thread orders (lib/enclave/acme_client.c) under the store's lease, so
 * that replicas sharing a store do not order together.  A failure keeps the
 * current certificate (the generated one before the first order), says so
 * in the log and in acme_renewal_failures_total / acme_last_renewal_failed,
 * and retries with exponential backoff, never sooner than a Retry-After. */
#include "enclave_acme.h"

#include "cloister/core/address.h"
#include "cloister/core/clock.h"
#include "cloister/core/encoding.h"
#include "cloister/core/log.h"
#include "cloister/enclave/acme.h"
#include "cloister/enclave/cert_store.h"
#include "cloister/enclave/dynamodb.h"
#include "cloister/enclave/server.h"

#include <jansson.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define LEASE_TTL_MS (10u * 60u * 1000u)
#define GATE_RECHECK_MS 2000u

const cl_opt enclave_acme_option_specs[] = {
    {.name = "acme", CL_OPT_FLAG(enclave_acme_settings, acme),
     .help = "get the public listener's certificate from an ACME CA (Let's Encrypt by default) and renew it"},
    {.name = "acme-directory", CL_OPT_STR(enclave_acme_settings, directory), .def = CL_ACME_LETSENCRYPT,
     .arg = "URL", .help = "the ACME CA's directory"},
    {.name = "acme-email", CL_OPT_STR(enclave_acme_settings, email), .arg = "ADDR",
     .help = "contact address of the ACME account"},
    {.name = "acme-ca-file", CL_OPT_STR(enclave_acme_settings, ca_file), .arg = "PEM",
     .help = "CAs for the ACME server's own TLS certificate (e.g. Pebble's) instead of the system's"},
    {.name = "acme-challenge", CL_OPT_STR(enclave_acme_settings, challenge), .def = "tls-alpn-01",
     .arg = "TYPE", .help = "tls-alpn-01 (answered by the public listener) or http-01 (--acme-http-listen)"},
    {.name = "acme-proxy", CL_OPT_STR(enclave_acme_settings, proxy), .arg = "ADDR",
     .help = "reach the ACME server through this address (the host's outbound proxy, e.g. vsock:3:8001); "
             "TLS stays end to end with the directory's host"},
    {.name = "acme-http-listen", CL_OPT_STR(enclave_acme_settings, http_listen), .def = "tcp:0.0.0.0:80",
     .arg = "ADDR", .help = "http-01: the plain listener serving /.well-known/acme-challenge/ (the host forwards "
                            "port 80 here)"},
    {.name = "acme-store", CL_OPT_STR(enclave_acme_settings, store), .arg = "file:DIR|dynamodb:TABLE",
     .help = "keep account, key (as KMS ciphertexts) and chain here, so a restart serves the same certificate "
             "without ordering; needs the -kms-* settings and --acme-kms-key-id"},
    {.name = "acme-store-proxy", CL_OPT_STR(enclave_acme_settings, store_proxy), .arg = "ADDR",
     .help = "file: the host's file store (default vsock:3:8010); dynamodb: the address dialed for DynamoDB"},
    {.name = "acme-dynamodb-endpoint", CL_OPT_STR(enclave_acme_settings, dynamodb_endpoint), .arg = "URL",
     .help = "dynamodb: the endpoint (default https://dynamodb.REGION.amazonaws.com; http:// only for a local "
             "dynalite)"},
    {.name = "acme-store-ca-file", CL_OPT_STR(enclave_acme_settings, store_ca_file), .arg = "PEM",
     .help = "dynamodb: CAs for DynamoDB's certificate instead of the system's"},
    {.name = "acme-kms-key-id", CL_OPT_STR(enclave_acme_settings, kms_key_id), .arg = "ID",
     .help = "--acme-store: the KMS key the stored private keys are encrypted under"},
    {.name = "acme-backoff", CL_OPT_DURATION_AT(enclave_acme_settings, backoff_ms, 1, 100, 86400000), .def = "30s",
     .arg = "DUR", .help = "after a failed order, wait this long, doubling per failure"},
    {.name = "acme-max-backoff", CL_OPT_DURATION_AT(enclave_acme_settings, max_backoff_ms, 1, 100, 86400000),
     .def = "1h", .arg = "DUR", .help = "the longest wait between failed orders"},
    {.name = "acme-poll-interval", CL_OPT_DURATION_AT(enclave_acme_settings, poll_ms, 1, 10, 600000), .def = "1s",
     .arg = "DUR", .help = "between polls of an authorization or order, when the CA gives no Retry-After"},
    {.name = "acme-max-polls", CL_OPT_UINT_AT(enclave_acme_settings, max_polls, 1, 1000), .def = "30", .arg = "N",
     .help = "polls of one authorization or order before the attempt fails"},
};
const size_t enclave_acme_option_count = sizeof enclave_acme_option_specs / sizeof enclave_acme_option_specs[0];

int enclave_acme_check(const enclave_acme_settings *s)
{
    if (!s->acme) {
        if (s->store || s->proxy || s->email || s->ca_file || s->kms_key_id || s->store_proxy) {
            fprintf(stderr, "cloister enclave: the --acme-* options go with -acme\n");
            return 2;
        }
        return 0;
    }
    if (strcmp(s->challenge, "tls-alpn-01") && strcmp(s->challenge, "http-01")) {
        fprintf(stderr, "cloister enclave: --acme-challenge must be tls-alpn-01 or http-01, not '%s'\n", s->challenge);
        return 2;
    }
    if (s->store && strncmp(s->store, "file:", 5) && strncmp(s->store, "dynamodb:", 9)) {
        fprintf(stderr, "cloister enclave: --acme-store must be file:DIR or dynamodb:TABLE\n");
        return 2;
    }
    if (s->store && !s->kms_key_id) {
        fprintf(stderr, "cloister enclave: --acme-store needs --acme-kms-key-id (its keys are kept only as KMS "
                        "ciphertexts)\n");
        return 2;
    }
    if (cl_acme_check_url(s->directory, "--acme-directory") < 0) {
        fprintf(stderr, "cloister enclave: %s\n", cl_error_message());
        return 2;
    }
    return 0;
}

struct enclave_acme {
    const enclave_acme_settings *s;
    enclave_acme_env env;
    char fqdn[256];
    cl_acme_tls *tls;
    cl_acme *client;
    cl_address dial;
    bool has_dial;
    cl_server *http_server;
    cl_dynamodb *dynamodb;
    cl_cert_store *store;
    char owner[64];
    pthread_t thread;
    bool started;
    atomic_bool stop;
    /* the certificate being served (0 before the first) */
    atomic_int_fast64_t not_after, renew_at;
    atomic_uint_fast64_t issued, from_store, failures, last_failed;
    char installed[65]; /* SHA-256 of the certificate installed last (ACME thread and start only) */
    bool synced_pending; /* a worker answers the leader's challenges (key sync's thread only) */
};

/* ---- http-01 listener --------------------------------------------------------- */

static int http_route(void *ctx, const cl_http_head *h)
{
    (void)ctx;
    static const char prefix[] = "/.well-known/acme-challenge/";
    return h->path.len > sizeof prefix - 1 && !memcmp(h->path.data, prefix, sizeof prefix - 1) ? 0 : 1;
}

static void http_handle(void *ctx, int route, const cl_request_info *req, cl_response *resp)
{
    enclave_acme *a = ctx;
    resp->status = 404;
    if (route == 0 && req->head->path.len < 256) {
        char path[256];
        memcpy(path, req->head->path.data, req->head->path.len);
        path[req->head->path.len] = '\0';
        cl_buf answer;
        if (cl_acme_tls_http_answer(a->tls, path, &answer) == CL_OK) {
            resp->status = 200;
            resp->content_type = "application/octet-stream";
            resp->body = answer;
            return;
        }
    }
    if (cl_buf_append(&resp->body, "404: not found\n", 15) < 0)
        resp->status = 500;
}

static int open_http_listener(enclave_acme *a)
{
    cl_address addr;
    int fd = -1;
    int rc = cl_address_parse(a->s->http_listen, &addr);
    if (rc == CL_OK)
        rc = cl_address_listen(&addr, 64, &fd);
    if (rc < 0)
        return cl_error_prefix(rc, "--acme-http-listen %s: ", a->s->http_listen);
    cl_server_config cfg = {
        .name = "acme-http",
        .threads = 1,
        .max_connections = 64,
        .route = http_route,
        .handle = http_handle,
        .ctx = a,
    };
    rc = cl_server_start(&cfg, fd, &a->http_server);
    if (rc < 0)
        return cl_error_prefix(rc, "--acme-http-listen %s: ", a->s->http_listen);
    cl_log(CL_LOG_INFO, "listening", "listener", "acme-http", "addr", a->s->http_listen, "tls", "no", NULL);
    return CL_OK;
}

/* ---- installing a certificate ------------------------------------------------ */

static int64_t asn1_unix(const ASN1_TIME *t)
{
    struct tm tm;
    if (ASN1_TIME_to_tm(t, &tm) != 1)
        return 0;
    return (int64_t)timegm(&tm);
}

static double jitter(void)
{
    uint32_t r = 0;
    if (RAND_bytes((unsigned char *)&r, sizeof r) != 1)
        return 0;
    return (double)r / 2147483647.5 - 1.0;
}

/* leaf/rest/key are taken. */
static int install(enclave_acme *a, X509 *leaf, STACK_OF(X509) *rest, EVP_PKEY *key, const char *origin)
{
    cl_tls_identity id = {.key = key, .cert = leaf, .chain = rest};
    int rc = cl_tls_cert_sha256(leaf, id.cert_sha256);
    if (rc < 0) {
        cl_tls_identity_free(&id);
        return rc;
    }
    int64_t nb = asn1_unix(X509_get0_notBefore(leaf)), na = asn1_unix(X509_get0_notAfter(leaf));
    char fp[65];
    cl_hex_encode(id.cert_sha256, 32, fp);
    if (!strcmp(fp, a->installed)) {
        /* the store gave back what is served already */
        cl_tls_identity_free(&id);
        return CL_OK;
    }
    rc = a->env.install(a->env.arg, &id); /* takes id */
    if (rc < 0)
        return rc;
    memcpy(a->installed, fp, sizeof fp);
    int64_t at = cl_acme_renewal_time(nb, na, jitter());
    atomic_store(&a->not_after, na);
    atomic_store(&a->renew_at, at);
    char na_text[32], at_text[32];
    cl_format_time(na, na_text);
    cl_format_time(at, at_text);
    cl_log(CL_LOG_INFO, "acme_certificate", "origin", origin, "fqdn", a->fqdn, "certificate_sha256", fp,
           "not_after", na_text, "renew_at", at_text, NULL);
    return CL_OK;
}

static int new_client(enclave_acme *a)
{
    cl_acme_config cfg = {
        .directory = a->s->directory,
        .ca_file = a->s->ca_file,
        .dial = a->has_dial ? &a->dial : NULL,
        .email = a->s->email,
        .challenge = strcmp(a->s->challenge, "http-01") ? CL_ACME_TLS_ALPN_01 : CL_ACME_HTTP_01,
        .responder = a->tls,
        .cancel = &a->stop,
        .poll_interval_ms = a->s->poll_ms,
        .max_polls = a->s->max_polls,
        .publish = a->env.publish,
        .publish_arg = a->env.arg,
    };
    return cl_acme_new(&cfg, NULL, &a->client);
}

/* ---- the store ---------------------------------------------------------------- */

static int pem_of_key(EVP_PKEY *key, cl_buf *out)
{
    *out = (cl_buf)CL_BUF_INIT;
    BIO *b = BIO_new(BIO_s_secmem());
    CL_ENSURE_OSSL(b, CL_ENOMEM, "out of memory");
    int rc = CL_OK;
    char *p;
    if (PEM_write_bio_PrivateKey(b, key, NULL, NULL, 0, NULL, NULL) != 1)
        rc = cl_error_ossl(CL_ECRYPTO, "cannot encode a key");
    else {
        long n = BIO_get_mem_data(b, &p);
        rc = cl_buf_append(out, p, (size_t)n);
    }
    BIO_free(b); /* secure memory: cleansed */
    return rc;
}

static int key_of_pem(const cl_buf *pem, EVP_PKEY **out)
{
    BIO *b = BIO_new_mem_buf(pem->data, (int)pem->len);
    CL_ENSURE_OSSL(b, CL_ENOMEM, "out of memory");
    *out = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
    BIO_free(b);
    CL_ENSURE_OSSL(*out, CL_EPARSE, "the stored key does not parse");
    return CL_OK;
}

static int open_store(enclave_acme *a)
{
    const enclave_acme_settings *s = a->s;
    if (!s->store)
        return CL_OK;
    CL_ENSURE(a->env.kms, CL_EINVAL, "--acme-store needs KMS (the -kms-* settings)");
    cl_cert_store_config cfg = {
        .spec = s->store,
        .file_address = s->store_proxy,
        .kms = a->env.kms,
        .kms_key_id = s->kms_key_id,
    };
    if (!strncmp(s->store, "dynamodb:", 9)) {
        CL_ENSURE(a->env.credentials && a->env.region, CL_EINVAL, "dynamodb: needs the KMS session's credentials");
        cl_dynamodb_config dc = {
            .region = a->env.region,
            .endpoint = s->dynamodb_endpoint,
            .allow_http = s->dynamodb_endpoint && !strncmp(s->dynamodb_endpoint, "http://", 7),
            .connect = s->store_proxy,
            .ca_file = s->store_ca_file,
            .credentials = a->env.credentials,
        };
        CL_TRY(cl_dynamodb_new(&dc, &a->dynamodb));
        cfg.dynamodb = a->dynamodb;
        cfg.file_address = NULL;
    }
    CL_TRY(cl_cert_store_open(&cfg, &a->store));
    return CL_OK;
}

/* A stored record serves when it opens (KMS vouches for it), names the
 * FQDN, carries its key, and is not past two thirds of its life... or at
 * least not expired: a replica may start late in a certificate's life. */
static int load_stored(enclave_acme *a, bool *served)
{
    *served = false;
    if (!a->store)
        return CL_OK;
    cl_cert_record rec = {0};
    int rc = cl_cert_store_get(a->store, a->fqdn, &rec);
    if (rc == CL_ENOTFOUND) {
        cl_log(CL_LOG_INFO, "acme_store_empty", "store", a->s->store, "name", a->fqdn, NULL);
        return CL_OK;
    }
    if (rc < 0) {
        cl_log(CL_LOG_WARN, "acme_store_unusable", "store", a->s->store, "error", cl_error_message(), NULL);
        return CL_OK; /* order again rather than trust it */
    }
    EVP_PKEY *account = NULL, *key = NULL;
    X509 *leaf = NULL;
    STACK_OF(X509) *rest = NULL;
    /* the account the store knows: no second account with the CA */
    if (rec.account_key.len && key_of_pem(&rec.account_key, &account) == CL_OK)
        cl_acme_set_account_key(a->client, account);
    if (rec.cert_key.len && rec.chain_pem.len && key_of_pem(&rec.cert_key, &key) == CL_OK &&
        cl_acme_check_chain(rec.chain_pem.data, rec.chain_pem.len, a->fqdn, key, &leaf, &rest) == CL_OK) {
        int64_t na = asn1_unix(X509_get0_notAfter(leaf));
        if (na > (int64_t)time(NULL) + 60) {
            rc = install(a, leaf, rest, key, "store");
            leaf = NULL;
            rest = NULL;
            key = NULL;
            if (rc == CL_OK) {
                atomic_fetch_add(&a->from_store, 1);
                *served = true;
            }
        } else {
            cl_log(CL_LOG_INFO, "acme_store_expired", "name", a->fqdn, NULL);
        }
    } else if (rec.chain_pem.len) {
        cl_log(CL_LOG_WARN, "acme_store_unusable", "store", a->s->store, "error", cl_error_message(), NULL);
    }
    EVP_PKEY_free(key);
    X509_free(leaf);
    sk_X509_pop_free(rest, X509_free);
    cl_cert_record_free(&rec);
    return rc;
}

static int save_stored(enclave_acme *a, EVP_PKEY *key, const cl_buf *chain)
{
    if (!a->store)
        return CL_OK;
    cl_cert_record rec = {0};
    int rc = CL_OK;
    CL_TRY_OUT(pem_of_key(cl_acme_account_key(a->client), &rec.account_key));
    CL_TRY_OUT(pem_of_key(key, &rec.cert_key));
    CL_TRY_OUT(cl_buf_append(&rec.chain_pem, chain->data, chain->len));
    json_t *m = json_pack("{ssss}", "fqdn", a->fqdn, "directory", a->s->directory);
    char *text = m ? json_dumps(m, JSON_COMPACT) : NULL;
    json_decref(m);
    CL_ENSURE_OUT(text, CL_ENOMEM, "out of memory");
    rc = cl_buf_append(&rec.metadata, text, strlen(text));
    free(text);
    CL_TRY_OUT(rc);
    CL_TRY_OUT(cl_cert_store_put(a->store, a->fqdn, &rec));
out:
    cl_cert_record_free(&rec);
    return rc;
}

/* ---- the thread --------------------------------------------------------------- */

static void sleep_until(enclave_acme *a, uint64_t deadline_ms)
{
    while (!atomic_load(&a->stop)) {
        uint64_t now = cl_monotonic_ms();
        if (now >= deadline_ms)
            return;
        uint64_t step = deadline_ms - now < 200 ? deadline_ms - now : 200;
        struct timespec ts = {0, (long)step * 1000000L};
        nanosleep(&ts, NULL);
    }
}

static int order_once(enclave_acme *a)
{
    EVP_PKEY *key = NULL;
    X509 *leaf = NULL;
    STACK_OF(X509) *rest = NULL;
    cl_buf chain = CL_BUF_INIT;
    bool leased = false;
    char lease[CL_CERT_STORE_NAME_MAX + 1];
    snprintf(lease, sizeof lease, ENCLAVE_ACME_LEASE_PREFIX "%.*s", ENCLAVE_ACME_STORED_NAME_MAX, a->fqdn);
    int rc = CL_OK;
    if (a->store) {
        cl_cert_lease held;
        rc = cl_cert_store_lease_acquire(a->store, lease, a->owner, LEASE_TTL_MS, &held);
        if (rc == CL_ECONFLICT) {
            /* another replica orders: take what it stores when it is done */
            cl_log(CL_LOG_INFO, "acme_lease_held", "owner", held.owner, NULL);
            bool served = false;
            CL_TRY_OUT(load_stored(a, &served));
            /* what it stored is due too: wait (backoff) rather than spin */
            CL_ENSURE_OUT(served && atomic_load(&a->renew_at) > (int64_t)time(NULL), CL_EIO,
                          "another enclave (%s) holds the ordering lease", held.owner);
            goto out;
        }
        CL_TRY_OUT(rc);
        leased = true;
        /* it may have finished just before we got the lease */
        bool served = false;
        CL_TRY_OUT(load_stored(a, &served));
        if (served && atomic_load(&a->renew_at) > (int64_t)time(NULL))
            goto out;
    }
    /* a fresh key for every certificate, made here and never sent out
     * except as a KMS ciphertext to the store */
    CL_TRY_OUT(cl_acme_new_key(&key));
    CL_TRY_OUT(cl_acme_obtain(a->client, a->fqdn, key, &chain, &leaf, &rest));
    atomic_fetch_add(&a->issued, 1);
    rc = save_stored(a, key, &chain);
    if (rc < 0)
        cl_log(CL_LOG_WARN, "acme_store_failed", "error", cl_error_message(), "hint",
               "serving the new certificate; a restart will order again", NULL);
    EVP_PKEY_up_ref(key);
    rc = install(a, leaf, rest, key, "acme");
    leaf = NULL;
    rest = NULL;
out:
    if (leased && cl_cert_store_lease_release(a->store, lease, a->owner) < 0)
        cl_log(CL_LOG_WARN, "acme_lease_release_failed", "error", cl_error_message(), NULL);
    EVP_PKEY_free(key);
    X509_free(leaf);
    sk_X509_pop_free(rest, X509_free);
    cl_buf_free(&chain);
    return rc;
}

static void *acme_thread(void *arg)
{
    enclave_acme *a = arg;
    unsigned failures = 0;
    while (!atomic_load(&a->stop)) {
        int64_t now = (int64_t)time(NULL);
        int64_t renew = atomic_load(&a->renew_at);
        if (renew > now) {
            /* wall-clock target, slept in short steps so a stop is quick */
            sleep_until(a, cl_monotonic_ms() + (uint64_t)(renew - now) * 1000u);
            continue;
        }
        if (a->env.gate && !a->env.gate(a->env.arg)) {
            sleep_until(a, cl_monotonic_ms() + GATE_RECHECK_MS);
            continue;
        }
        int rc = order_once(a);
        if (atomic_load(&a->stop))
            break;
        if (rc == CL_OK) {
            failures = 0;
            atomic_store(&a->last_failed, 0);
            continue;
        }
        failures++;
        atomic_fetch_add(&a->failures, 1);
        atomic_store(&a->last_failed, 1);
        uint64_t wait = a->s->backoff_ms;
        for (unsigned i = 1; i < failures && wait < a->s->max_backoff_ms; i++)
            wait *= 2;
        if (wait > a->s->max_backoff_ms)
            wait = a->s->max_backoff_ms;
        wait += (uint64_t)((jitter() + 1.0) * (double)wait / 20.0);
        unsigned ra = cl_acme_retry_after(a->client);
        if ((uint64_t)ra * 1000u > wait)
            wait = (uint64_t)ra * 1000u;
        int64_t na = atomic_load(&a->not_after);
        char serving[96] = "the generated self-signed certificate";
        if (na) {
            char t[32];
            cl_format_time(na, t);
            snprintf(serving, sizeof serving, "the current certificate (valid until %s)", t);
        }
        char n[16], w[24], r[16];
        snprintf(n, sizeof n, "%u", failures);
        snprintf(w, sizeof w, "%llu", (unsigned long long)wait);
        snprintf(r, sizeof r, "%u", ra);
        cl_log(CL_LOG_ERROR, "acme_renewal_failed", "fqdn", a->fqdn, "error", cl_error_message(), "failures", n,
               "retry_in_ms", w, "retry_after_s", r, "serving", serving, NULL);
        sleep_until(a, cl_monotonic_ms() + wait);
    }
    return NULL;
}

/* ---- lifetime ------------------------------------------------------------------ */

int enclave_acme_new(const enclave_acme_settings *s, const enclave_acme_env *env, enclave_acme **out)
{
    enclave_acme *a = calloc(1, sizeof *a);
    CL_ENSURE(a, CL_ENOMEM, "out of memory");
    a->s = s;
    a->env = *env;
    int rc = CL_OK;
    /* its length was checked with the options (ENCLAVE_ACME_STORED_NAME_MAX with a store) */
    snprintf(a->fqdn, sizeof a->fqdn, "%s", env->fqdn);
    uint8_t id[8];
    CL_ENSURE_OUT(RAND_bytes(id, sizeof id) == 1, CL_ECRYPTO, "no randomness");
    memcpy(a->owner, "enclave-", 8);
    cl_hex_encode(id, sizeof id, a->owner + 8);
    CL_TRY_OUT(cl_acme_tls_new(&a->tls));
    if (s->proxy) {
        rc = cl_address_parse(s->proxy, &a->dial);
        if (rc < 0) {
            rc = cl_error_prefix(rc, "--acme-proxy: ");
            goto out;
        }
        a->has_dial = true;
    }
    CL_TRY_OUT(new_client(a));
    *out = a;
    return CL_OK;
out:
    enclave_acme_free(a);
    return rc;
}

int enclave_acme_hook(enclave_acme *a, SSL_CTX *ctx)
{
    return cl_acme_tls_install(a->tls, ctx, a->env.enable_h2);
}

int enclave_acme_start(enclave_acme *a)
{
    if (!strcmp(a->s->challenge, "http-01"))
        CL_TRY(open_http_listener(a));
    int rc = open_store(a);
    if (rc < 0)
        return cl_error_prefix(rc, "--acme-store %s: ", a->s->store);
    bool served = false;
    if (!a->env.gate || a->env.gate(a->env.arg))
        CL_TRY(load_stored(a, &served));
    cl_log(CL_LOG_INFO, "acme_started", "fqdn", a->fqdn, "directory", a->s->directory, "challenge", a->s->challenge,
           "store", a->s->store ? a->s->store : "none (memory only)", "serving",
           served ? "the stored certificate" : "the generated certificate until the first order", NULL);
    CL_ENSURE(pthread_create(&a->thread, NULL, acme_thread, a) == 0, CL_EIO, "cannot start the ACME thread");
    a->started = true;
    return CL_OK;
}

void enclave_acme_free(enclave_acme *a)
{
    if (!a)
        return;
    atomic_store(&a->stop, true);
    if (a->started)
        pthread_join(a->thread, NULL);
    if (a->http_server) {
        cl_server_drain(a->http_server, 0);
        cl_server_wait(a->http_server);
    }
    cl_cert_store_free(a->store);
    cl_dynamodb_free(a->dynamodb);
    cl_acme_free(a->client);
    cl_acme_tls_free(a->tls);
    free(a);
}

void enclave_acme_take_challenges(enclave_acme *a, const uint8_t *text, size_t len)
{
    cl_acme_pending p[CL_ACME_PENDING_MAX];
    size_t n = 0;
    if (cl_acme_pending_parse(text, len, p, &n) < 0) {
        cl_log(CL_LOG_WARN, "acme_challenge_refused", "reason", cl_error_message(), NULL);
        return;
    }
    const cl_acme_pending *alpn = NULL, *http = NULL;
    int64_t expires = 0;
    for (size_t i = 0; i < n; i++) {
        /* only ever our own name: the answer proves control of it */
        if (strcasecmp(p[i].identifier, a->fqdn) != 0) {
            cl_log(CL_LOG_WARN, "acme_challenge_refused", "reason", "the challenge is for another name",
                   "identifier", p[i].identifier, "fqdn", a->fqdn, NULL);
            continue;
        }
        if (!strcmp(p[i].type, "http-01"))
            http = &p[i];
        else
            alpn = &p[i];
        if (!expires || p[i].expires < expires)
            expires = p[i].expires;
    }
    int rc = CL_OK;
    cl_acme_tls_set_expiry(a->tls, expires);
    if (alpn)
        rc = cl_acme_tls_set_alpn_challenge(a->tls, a->fqdn, alpn->key_authorization);
    else
        cl_acme_tls_clear_alpn_challenge(a->tls);
    if (http && rc == CL_OK)
        rc = cl_acme_tls_set_http_token(a->tls, http->token, http->key_authorization);
    else if (!http)
        cl_acme_tls_clear_http_token(a->tls);
    if (rc < 0) {
        cl_log(CL_LOG_WARN, "acme_challenge_refused", "reason", cl_error_message(), NULL);
        cl_acme_tls_clear_alpn_challenge(a->tls);
        cl_acme_tls_clear_http_token(a->tls);
        return;
    }
    if (!alpn && !http) {
        if (a->synced_pending)
            cl_log(CL_LOG_INFO, "acme_challenge_synced", "state", "none pending", NULL);
        a->synced_pending = false;
        return;
    }
    a->synced_pending = true;
    char until[32];
    cl_format_time(expires, until);
    const char *types = alpn && http ? "tls-alpn-01,http-01" : alpn ? "tls-alpn-01" : "http-01";
    cl_log(CL_LOG_INFO, "acme_challenge_synced", "type", types, "fqdn", a->fqdn, "token", (http ? http : alpn)->token,
           "expires", until, NULL);
}

int enclave_acme_metrics(enclave_acme *a, const cl_metrics *m, cl_buf *out)
{
    cl_acme_stats st = {0};
    cl_acme_get_stats(a->client, &st);
    int rc = 0;
    rc |= cl_metrics_render_value(m, out, "acme_certificates_issued_total", "counter",
                                  "Certificates the ACME CA issued to this enclave.", atomic_load(&a->issued));
    rc |= cl_metrics_render_value(m, out, "acme_certificates_from_store_total", "counter",
                                  "Certificates taken from --acme-store instead of ordering.",
                                  atomic_load(&a->from_store));
    rc |= cl_metrics_render_value(m, out, "acme_renewal_failures_total", "counter",
                                  "Orders or renewals that failed (the current certificate stayed).",
                                  atomic_load(&a->failures));
    rc |= cl_metrics_render_value(m, out, "acme_last_renewal_failed", "gauge",
                                  "1 when the last order or renewal failed.", atomic_load(&a->last_failed));
    rc |= cl_metrics_render_value(m, out, "acme_certificate_not_after_seconds", "gauge",
                                  "Expiry of the ACME certificate served (Unix seconds; 0: none yet).",
                                  (uint64_t)atomic_load(&a->not_after));
    rc |= cl_metrics_render_value(m, out, "acme_orders_total", "counter", "ACME orders placed.", st.orders);
    rc |= cl_metrics_render_value(m, out, "acme_bad_nonce_retries_total", "counter",
                                  "Requests retried after the CA's badNonce.", st.bad_nonce_retries);
    rc |= cl_metrics_render_value(m, out, "acme_tls_alpn_answers_total", "counter",
                                  "tls-alpn-01 validation handshakes answered.", cl_acme_tls_alpn_answers(a->tls));
    return rc < 0 ? CL_ENOMEM : CL_OK;
}

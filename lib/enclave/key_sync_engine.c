/* Key sync's engine: election, registration, heartbeats, pruning and both
 * halves of a sync (nitriding's protocol, docs/key-sync.md), with one thread
 * for the enclave's own cadence and one short-lived thread per sync the
 * leader runs.  Everything a peer sends is untrusted until the document
 * that carries it has verified under the trusted roots, holds the nonce we
 * chose, and passes cl_sync_check_peer. */
#include "cloister/enclave/key_sync.h"

#include "cloister/core/clock.h"
#include "cloister/core/encoding.h"
#include "cloister/core/http.h"
#include "cloister/core/https_client.h"
#include "cloister/core/log.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PENDING_MAX 4
#define PENDING_LIFE_MS 30000
#define MAX_WAITERS 2
#define MAX_WAIT_S 60
#define MAX_JOBS 32
#define DOC_MAX_AGE_MS (5 * 60 * 1000)

typedef struct pending {
    bool used;
    uint8_t nonce[CL_SYNC_NONCE_LEN]; /* the worker's */
    uint8_t pk[crypto_box_PUBLICKEYBYTES], sk[crypto_box_SECRETKEYBYTES];
    uint64_t created_ms;
} pending;

typedef struct worker_entry {
    char host[300]; /* HOST:PORT as it announced itself */
    uint64_t last_seen_ms;
    bool syncing;
    uint64_t synced_gen; /* the keys_gen of the last sync that succeeded */
} worker_entry;

struct cl_sync {
    cl_sync_config cfg;
    char leader[300];    /* HOST:PORT */
    char advertise[300]; /* ours, HOST:PORT */
    cl_verifier *verifier;
    cl_sync_policy policy;
    bool ours_debug;
    uint8_t our_nonce[CL_SYNC_NONCE_LEN];

    pthread_mutex_t lock; /* guards everything below */
    pthread_cond_t cond;  /* role, state version, stop, jobs */
    cl_sync_role role;
    bool stopping;
    bool synced; /* a worker that has received keys */
    cl_sync_keys keys;
    uint64_t version; /* bumped when app_keys change */
    uint64_t keys_gen; /* leader: bumped whenever what a sync sends changes */
    char etag[72];
    pending pending[PENDING_MAX];
    worker_entry workers[CL_SYNC_MAX_WORKERS];
    size_t worker_count;
    unsigned jobs, waiters;
    pthread_t thread;
    bool thread_started;
};

/* ---- small helpers --------------------------------------------------------- */

static uint64_t ms_now(void)
{
    return cl_monotonic_ms();
}

/* Waits on the condition until deadline (monotonic ms) or a signal; lock held. */
static void wait_until(cl_sync *s, uint64_t deadline)
{
    uint64_t now = ms_now();
    if (now >= deadline)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t wait = deadline - now;
    ts.tv_sec += (time_t)(wait / 1000);
    ts.tv_nsec += (long)(wait % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&s->cond, &s->lock, &ts);
}

static void set_etag_locked(cl_sync *s)
{
    uint8_t h[32];
    EVP_Digest(s->keys.app_keys.data ? s->keys.app_keys.data : (const uint8_t *)"", s->keys.app_keys.len, h, NULL,
               EVP_sha256(), NULL);
    char hex[65];
    cl_hex_encode(h, sizeof h, hex);
    snprintf(s->etag, sizeof s->etag, "\"%.32s\"", hex);
}

static void reply_text(cl_sync_reply *r, int status, const char *fmt, ...) CL_PRINTF(3, 4);
static void reply_text(cl_sync_reply *r, int status, const char *fmt, ...)
{
    char text[640];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof text - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n > sizeof text - 2)
        n = sizeof text - 2;
    text[n++] = '\n';
    r->status = status;
    r->content_type = NULL;
    cl_buf_reset(&r->body);
    if (cl_buf_append(&r->body, text, (size_t)n) < 0)
        r->status = 500;
}

static int parse_nonce(cl_slice query, uint8_t out[CL_SYNC_NONCE_LEN])
{
    char hex[2 * CL_SYNC_NONCE_LEN + 2];
    bool found = false;
    int rc = cl_http_query_param(query, "nonce", hex, sizeof hex, &found);
    CL_ENSURE(rc == CL_OK && found && strlen(hex) == 2 * CL_SYNC_NONCE_LEN &&
                  cl_hex_decode_fixed(hex, out, CL_SYNC_NONCE_LEN) == CL_OK,
              CL_EPARSE, "nonce must be 40 hexadecimal digits (20 bytes): ?nonce=<hex>");
    return CL_OK;
}

/* The address to dial for HOST:PORT: its -sync-dial entry, else NULL
 * (a direct TCP connection to HOST:PORT). */
static const char *dial_for(const cl_sync *s, const char *authority)
{
    size_t n = strlen(authority);
    for (size_t i = 0; i < s->cfg.dial_count; i++) {
        const char *d = s->cfg.dial[i];
        if (!strncmp(d, authority, n) && d[n] == '=')
            return d + n + 1;
    }
    return NULL;
}

/* One HTTPS exchange with a peer enclave.  The channel is not
 * authenticated (the peer's certificate is not checked, as in nitriding):
 * what it carries is trusted only through attestation documents. */
static int peer_call(cl_sync *s, const char *authority, const char *method, const char *path, const cl_buf *body,
                     size_t max_body, cl_https_response *out)
{
    char url[340];
    snprintf(url, sizeof url, "https://%s", authority);
    cl_https_target t;
    CL_TRY(cl_https_target_parse(url, &t));
    cl_https_request r = {
        .method = method,
        .path = path,
        .content_type = body ? "text/plain" : NULL,
        .body = body ? body->data : NULL,
        .body_len = body ? body->len : 0,
        .max_body = max_body,
        .timeout_ms = s->cfg.request_timeout_ms,
    };
    return cl_https_request_perform(&t, dial_for(s, authority), &r, out);
}

/* Parses and verifies a peer's document: roots, age, debug, the nonce we
 * chose, and the PCR policy.  doc is filled on success. */
static int verify_peer_doc(cl_sync *s, const cl_buf *raw, const uint8_t nonce[CL_SYNC_NONCE_LEN],
                           cl_attestation_doc *doc, const char **rule)
{
    cl_attestation_policy pol = {
        .check_nonce = true,
        .nonce = nonce,
        .nonce_len = CL_SYNC_NONCE_LEN,
        .allow_debug = s->ours_debug,
        .max_age_ms = DOC_MAX_AGE_MS,
    };
    int rc = cl_attestation_verify(s->verifier, raw->data, raw->len, &pol, cl_now_ms(), doc);
    if (rc < 0)
        return cl_error_prefix(rc, "the peer's attestation document: ");
    rc = cl_sync_check_peer(&s->policy, doc, rule);
    if (rc < 0)
        cl_attestation_doc_free(doc);
    return rc;
}

static void describe_doc(const cl_attestation_doc *doc, char module[80], char pcr0[33])
{
    size_t n = doc->module_id.len < 79 ? doc->module_id.len : 79;
    memcpy(module, doc->module_id.data, n);
    module[n] = '\0';
    for (size_t i = 0; i < n; i++)
        if (module[i] < 0x21 || module[i] > 0x7e)
            module[i] = '?';
    cl_hex_encode(doc->pcrs[0].data, doc->pcrs[0].len < 16 ? doc->pcrs[0].len : 16, pcr0);
}

/* ---- workers (the leader's table) ---------------------------------------- */

static worker_entry *find_worker_locked(cl_sync *s, const char *host)
{
    for (size_t i = 0; i < s->worker_count; i++)
        if (!strcmp(s->workers[i].host, host))
            return &s->workers[i];
    return NULL;
}

static void register_worker_locked(cl_sync *s, const char *host)
{
    worker_entry *w = find_worker_locked(s, host);
    if (!w) {
        if (s->worker_count == CL_SYNC_MAX_WORKERS) {
            cl_log(CL_LOG_WARN, "sync_worker_table_full", "worker", host, NULL);
            return;
        }
        w = &s->workers[s->worker_count++];
        memset(w, 0, sizeof *w);
        snprintf(w->host, sizeof w->host, "%s", host);
        char count[16];
        snprintf(count, sizeof count, "%zu", s->worker_count);
        cl_log(CL_LOG_INFO, "sync_worker_registered", "worker", host, "workers", count, NULL);
    }
    w->last_seen_ms = ms_now();
}

static void remove_worker_locked(cl_sync *s, size_t i, const char *why)
{
    char count[16];
    snprintf(count, sizeof count, "%zu", s->worker_count - 1);
    cl_log(CL_LOG_INFO, why, "worker", s->workers[i].host, "workers", count, NULL);
    s->workers[i] = s->workers[--s->worker_count];
}

/* ---- the leader's half of a sync ----------------------------------------------- */

typedef struct job {
    cl_sync *s;
    char host[300];
} job;

static int leader_sync(cl_sync *s, const char *host, uint64_t *gen)
{
    int rc = CL_OK;
    uint8_t nonce[CL_SYNC_NONCE_LEN];
    cl_https_response resp = {.body = CL_BUF_INIT};
    cl_sync_attstn_body body;
    memset(&body, 0, sizeof body);
    cl_attestation_doc doc;
    bool have_doc = false;
    cl_sync_keys keys;
    memset(&keys, 0, sizeof keys);
    cl_buf plain = CL_BUF_INIT, sealed = CL_BUF_INIT, ldoc = CL_BUF_INIT, post = CL_BUF_INIT;

    CL_ENSURE_OUT(RAND_bytes(nonce, sizeof nonce) == 1, CL_ECRYPTO, "no random bytes for a nonce");
    char hex[2 * CL_SYNC_NONCE_LEN + 1], path[80];
    cl_hex_encode(nonce, sizeof nonce, hex);
    snprintf(path, sizeof path, "/enclave/sync?nonce=%s", hex);
    CL_TRY_OUT(peer_call(s, host, "GET", path, NULL, CL_SYNC_MAX_WORKER_BODY, &resp));
    CL_ENSURE_OUT(resp.status == 200, CL_EPROTO, "GET /enclave/sync answered HTTP %d", resp.status);
    CL_TRY_OUT(cl_sync_attstn_body_parse(resp.body.data, resp.body.len, &body));
    CL_ENSURE_OUT(body.encrypted_keys.len == 0, CL_EPROTO, "the worker sent encrypted keys; expected none");
    const char *rule = "equal-pcrs";
    CL_TRY_OUT(verify_peer_doc(s, &body.document, nonce, &doc, &rule));
    have_doc = true;
    CL_ENSURE_OUT(doc.has_public_key && doc.public_key.len == crypto_box_PUBLICKEYBYTES, CL_EVERIFY,
                  "the worker's document has no 32-byte X25519 public key");
    CL_ENSURE_OUT(doc.has_user_data && doc.user_data.len == CL_SYNC_NONCE_LEN, CL_EVERIFY,
                  "the worker's document has no 20-byte worker nonce in user_data");
    char module[80], pcr0[33];
    describe_doc(&doc, module, pcr0);
    cl_log(CL_LOG_INFO, "sync_worker_verified", "worker", host, "module", module, "pcr0", pcr0, "by",
           rule, NULL);

    pthread_mutex_lock(&s->lock);
    rc = cl_sync_keys_copy(&s->keys, &keys);
    *gen = s->keys_gen;
    pthread_mutex_unlock(&s->lock);
    CL_TRY_OUT(rc);
    CL_TRY_OUT(cl_sync_keys_encode(&keys, &plain));
    CL_TRY_OUT(cl_buf_reserve(&sealed, plain.len + crypto_box_SEALBYTES));
    CL_ENSURE_OUT(crypto_box_seal(sealed.data, plain.data, plain.len, doc.public_key.data) == 0, CL_ECRYPTO,
                  "crypto_box_seal failed");
    sealed.len = plain.len + crypto_box_SEALBYTES;
    uint8_t digest[32];
    CL_ENSURE_OUT(EVP_Digest(sealed.data, sealed.len, digest, NULL, EVP_sha256(), NULL) == 1, CL_ECRYPTO,
                  "SHA-256 failed");
    CL_TRY_OUT(cl_nsm_attestation(s->cfg.nsm, digest, sizeof digest, doc.user_data.data, doc.user_data.len,
                                  (const uint8_t *)CL_SYNC_LEADER_PAD, strlen(CL_SYNC_LEADER_PAD), &ldoc));
    CL_TRY_OUT(cl_sync_attstn_body_encode(ldoc.data, ldoc.len, sealed.data, sealed.len, &post));
    cl_https_response_free(&resp);
    memset(&resp, 0, sizeof resp);
    CL_TRY_OUT(peer_call(s, host, "POST", "/enclave/sync", &post, 64 * 1024, &resp));
    CL_ENSURE_OUT(resp.status == 200, CL_EPROTO, "POST /enclave/sync answered HTTP %d: %.*s", resp.status,
                  (int)(resp.body.len > 200 ? 200 : resp.body.len),
                  resp.body.data ? (const char *)resp.body.data : "");
out:
    if (have_doc)
        cl_attestation_doc_free(&doc);
    cl_https_response_free(&resp);
    cl_sync_attstn_body_free(&body);
    cl_sync_keys_free(&keys);
    cl_buf_free(&plain);
    cl_buf_free(&sealed);
    cl_buf_free(&ldoc);
    cl_buf_free(&post);
    return rc;
}

static void start_job_locked(cl_sync *s, const char *host);

static void *job_main(void *arg)
{
    job *j = arg;
    cl_sync *s = j->s;
    uint64_t gen = 0;
    int rc = leader_sync(s, j->host, &gen);
    const char *err = rc < 0 ? cl_error_message() : NULL;
    pthread_mutex_lock(&s->lock);
    worker_entry *w = find_worker_locked(s, j->host);
    if (rc == CL_OK) {
        cl_log(CL_LOG_INFO, "sync_worker_synced", "worker", j->host, NULL);
        register_worker_locked(s, j->host);
        w = find_worker_locked(s, j->host);
        if (w && gen > w->synced_gen)
            w->synced_gen = gen;
    } else {
        cl_log(CL_LOG_WARN, "sync_worker_failed", "worker", j->host, "error", err, NULL);
        if (w)
            remove_worker_locked(s, (size_t)(w - s->workers), "sync_worker_unregistered");
        w = NULL;
    }
    if (w)
        w->syncing = false;
    s->jobs--;
    /* what we send changed while this sync ran (a challenge pushed): the
     * worker must get the newer keys too */
    if (w && w->synced_gen < s->keys_gen)
        start_job_locked(s, j->host);
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    free(j);
    return NULL;
}

/* Starts a sync with host unless one runs; lock held. */
static void start_job_locked(cl_sync *s, const char *host)
{
    worker_entry *w = find_worker_locked(s, host);
    if ((w && w->syncing) || s->stopping)
        return;
    if (!w) {
        /* in the table while it syncs, so that its next heartbeat does not
         * start a second sync; a failed sync takes it out again */
        register_worker_locked(s, host);
        w = find_worker_locked(s, host);
    }
    if (s->jobs >= MAX_JOBS) {
        cl_log(CL_LOG_WARN, "sync_busy", "worker", host, "detail", "too many syncs at once; the next heartbeat retries",
               NULL);
        return;
    }
    job *j = calloc(1, sizeof *j);
    if (!j)
        return;
    j->s = s;
    snprintf(j->host, sizeof j->host, "%s", host);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t t;
    if (pthread_create(&t, &attr, job_main, j) != 0) {
        free(j);
    } else {
        s->jobs++;
        if (w)
            w->syncing = true;
    }
    pthread_attr_destroy(&attr);
}

/* ---- the worker's half ----------------------------------------------------------- */

static void worker_sync_get(cl_sync *s, const cl_sync_request *req, cl_sync_reply *r)
{
    uint8_t leader_nonce[CL_SYNC_NONCE_LEN];
    if (parse_nonce(req->query, leader_nonce) < 0) {
        reply_text(r, 400, "400: %s", cl_error_message());
        return;
    }
    pending p = {.used = true, .created_ms = ms_now()};
    if (RAND_bytes(p.nonce, sizeof p.nonce) != 1 || crypto_box_keypair(p.pk, p.sk) != 0) {
        reply_text(r, 500, "500: no randomness for the sync");
        return;
    }
    cl_buf doc = CL_BUF_INIT, body = CL_BUF_INIT;
    int rc = cl_nsm_attestation(s->cfg.nsm, p.nonce, sizeof p.nonce, leader_nonce, sizeof leader_nonce, p.pk,
                                sizeof p.pk, &doc);
    if (rc == CL_OK)
        rc = cl_sync_attstn_body_encode(doc.data, doc.len, NULL, 0, &body);
    cl_buf_free(&doc);
    if (rc < 0) {
        cl_log(CL_LOG_ERROR, "sync_attestation_failed", "error", cl_error_message(), NULL);
        cl_buf_free(&body);
        sodium_memzero(&p, sizeof p);
        reply_text(r, 500, "500: the NSM did not produce an attestation document");
        return;
    }
    /* a slot for the leader's answer: the oldest or an expired one goes, so
     * that nobody can hold the worker's sync with unfinished requests */
    pthread_mutex_lock(&s->lock);
    size_t slot = 0;
    for (size_t i = 0; i < PENDING_MAX; i++) {
        if (!s->pending[i].used || p.created_ms - s->pending[i].created_ms > PENDING_LIFE_MS) {
            slot = i;
            break;
        }
        if (s->pending[i].created_ms < s->pending[slot].created_ms)
            slot = i;
    }
    s->pending[slot] = p;
    pthread_mutex_unlock(&s->lock);
    sodium_memzero(&p, sizeof p);
    cl_log(CL_LOG_INFO, "sync_requested", "detail", "sent our document to the leader", NULL);
    r->status = 200;
    r->content_type = "text/plain; charset=utf-8";
    cl_buf_reset(&r->body);
    if (cl_buf_append(&r->body, body.data, body.len) < 0 || cl_buf_append(&r->body, "\n", 1) < 0)
        r->status = 500;
    cl_buf_free(&body);
}

/* Takes the pending sync whose worker nonce the leader's document names. */
static bool take_pending(cl_sync *s, cl_slice nonce, pending *out)
{
    bool found = false;
    pthread_mutex_lock(&s->lock);
    uint64_t now = ms_now();
    for (size_t i = 0; i < PENDING_MAX; i++) {
        pending *p = &s->pending[i];
        if (p->used && now - p->created_ms <= PENDING_LIFE_MS && nonce.len == sizeof p->nonce &&
            !memcmp(nonce.data, p->nonce, sizeof p->nonce)) {
            *out = *p;
            sodium_memzero(p, sizeof *p);
            found = true;
            break;
        }
    }
    pthread_mutex_unlock(&s->lock);
    return found;
}

static int worker_accept(cl_sync *s, const cl_sync_request *req, char *leader_desc, size_t desc_len)
{
    int rc = CL_OK;
    cl_sync_attstn_body body;
    memset(&body, 0, sizeof body);
    cl_attestation_doc doc;
    bool have_doc = false;
    pending p = {0};
    cl_buf plain = CL_BUF_INIT;
    cl_sync_keys keys;
    memset(&keys, 0, sizeof keys);

    CL_ENSURE(req->body_len <= CL_SYNC_MAX_LEADER_BODY, CL_ELIMIT, "the body is larger than %d bytes",
              CL_SYNC_MAX_LEADER_BODY);
    CL_TRY_OUT(cl_sync_attstn_body_parse(req->body, req->body_len, &body));
    CL_ENSURE_OUT(body.encrypted_keys.len > crypto_box_SEALBYTES, CL_EPARSE, "no \"encrypted_keys\"");
    /* which of our requests this answers: the nonce in the document, which
     * verify_peer_doc then checks is really there and signed */
    cl_attestation_doc peek;
    rc = cl_attestation_parse(body.document.data, body.document.len, &peek);
    if (rc < 0) {
        rc = cl_error_prefix(rc, "the leader's attestation document: ");
        goto out;
    }
    bool known = peek.has_nonce && take_pending(s, peek.nonce, &p);
    cl_attestation_doc_free(&peek);
    CL_ENSURE_OUT(known, CL_EVERIFY, "the leader's document does not carry the nonce of a sync we started");
    const char *rule = "equal-pcrs";
    CL_TRY_OUT(verify_peer_doc(s, &body.document, p.nonce, &doc, &rule));
    have_doc = true;
    uint8_t digest[32];
    CL_ENSURE_OUT(EVP_Digest(body.encrypted_keys.data, body.encrypted_keys.len, digest, NULL, EVP_sha256(), NULL) ==
                      1,
                  CL_ECRYPTO, "SHA-256 failed");
    CL_ENSURE_OUT(doc.has_user_data && doc.user_data.len == sizeof digest &&
                      !memcmp(doc.user_data.data, digest, sizeof digest),
                  CL_EVERIFY, "the leader's document does not bind SHA-256 of the encrypted keys");
    char module[80], pcr0[33];
    describe_doc(&doc, module, pcr0);
    snprintf(leader_desc, desc_len, "%s", module);
    cl_log(CL_LOG_INFO, "sync_leader_verified", "module", module, "pcr0", pcr0, "by",
           rule, NULL);
    size_t plain_len = body.encrypted_keys.len - crypto_box_SEALBYTES;
    CL_TRY_OUT(cl_buf_reserve(&plain, plain_len));
    CL_ENSURE_OUT(crypto_box_seal_open(plain.data, body.encrypted_keys.data, body.encrypted_keys.len, p.pk, p.sk) ==
                      0,
                  CL_EVERIFY, "the encrypted keys do not open with our key");
    plain.len = plain_len;
    CL_TRY_OUT(cl_sync_keys_parse(plain.data, plain.len, &keys));
    /* a re-sync that only carries ACME challenges keeps the identity (and
     * the TLS context with its session tickets) as it is */
    pthread_mutex_lock(&s->lock);
    bool same = s->synced && keys.key.len == s->keys.key.len && keys.cert.len == s->keys.cert.len &&
                !CRYPTO_memcmp(keys.key.data, s->keys.key.data, keys.key.len) &&
                !memcmp(keys.cert.data, s->keys.cert.data, keys.cert.len);
    pthread_mutex_unlock(&s->lock);
    if (!same)
        CL_TRY_OUT(s->cfg.install(s->cfg.install_arg, &keys));
    if (s->cfg.challenges)
        s->cfg.challenges(s->cfg.install_arg, keys.acme.data, keys.acme.len);
    pthread_mutex_lock(&s->lock);
    bool changed = keys.app_keys.len != s->keys.app_keys.len ||
                   (keys.app_keys.len && memcmp(keys.app_keys.data, s->keys.app_keys.data, keys.app_keys.len));
    cl_sync_keys_free(&s->keys);
    s->keys = keys;
    memset(&keys, 0, sizeof keys);
    if (changed) {
        s->version++;
        set_etag_locked(s);
    }
    s->synced = true;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
out:
    if (have_doc)
        cl_attestation_doc_free(&doc);
    sodium_memzero(&p, sizeof p);
    cl_sync_attstn_body_free(&body);
    cl_buf_free(&plain);
    cl_sync_keys_free(&keys);
    return rc;
}

static void worker_sync_post(cl_sync *s, const cl_sync_request *req, cl_sync_reply *r)
{
    char leader[80] = "";
    int rc = worker_accept(s, req, leader, sizeof leader);
    if (rc < 0) {
        cl_log(CL_LOG_WARN, "sync_refused", "reason", cl_error_message(), NULL);
        reply_text(r, rc == CL_ELIMIT ? 413 : rc == CL_ENOMEM || rc == CL_ECRYPTO ? 500 : 400,
                   "%d: keys refused: %s", rc == CL_ELIMIT ? 413 : 400, cl_error_message());
        return;
    }
    cl_log(CL_LOG_INFO, "sync_keys_installed", "leader_module", leader, NULL);
    reply_text(r, 200, "ok");
}

/* ---- the enclave's own thread --------------------------------------------------- */

static bool stopping(cl_sync *s)
{
    pthread_mutex_lock(&s->lock);
    bool st = s->stopping;
    pthread_mutex_unlock(&s->lock);
    return st;
}

static void sleep_ms(cl_sync *s, unsigned ms)
{
    pthread_mutex_lock(&s->lock);
    if (!s->stopping)
        wait_until(s, ms_now() + ms);
    pthread_mutex_unlock(&s->lock);
}

/* nitriding's designation: ask -fqdn-leader with our nonce; whoever
 * receives its own nonce leads, and the leader answers others 410. */
static void elect(cl_sync *s)
{
    char hex[2 * CL_SYNC_NONCE_LEN + 1], path[80];
    cl_hex_encode(s->our_nonce, sizeof s->our_nonce, hex);
    snprintf(path, sizeof path, "/enclave/leader?nonce=%s", hex);
    uint64_t start = ms_now(), warned = start;
    unsigned backoff = 50;
    for (;;) {
        pthread_mutex_lock(&s->lock);
        cl_sync_role role = s->role;
        pthread_mutex_unlock(&s->lock);
        if (role != CL_SYNC_ELECTING || stopping(s))
            return;
        cl_https_response resp = {.body = CL_BUF_INIT};
        int rc = peer_call(s, s->leader, "GET", path, NULL, 4096, &resp);
        int status = rc == CL_OK ? resp.status : 0;
        cl_https_response_free(&resp);
        pthread_mutex_lock(&s->lock);
        if (s->role == CL_SYNC_ELECTING && status == 410) {
            s->role = CL_SYNC_WORKER;
            pthread_cond_broadcast(&s->cond);
        }
        role = s->role;
        pthread_mutex_unlock(&s->lock);
        if (role != CL_SYNC_ELECTING)
            return;
        if (ms_now() - warned >= s->cfg.election_timeout_ms) {
            warned = ms_now();
            cl_log(CL_LOG_WARN, "sync_election_slow", "leader", s->leader, "detail",
                   rc < 0 ? cl_error_message() : "the leader answered but did not decide", NULL);
        }
        sleep_ms(s, backoff);
        if (backoff < 1000)
            backoff *= 2;
    }
}

static int post_heartbeat(cl_sync *s, bool registering)
{
    cl_sync_heartbeat hb;
    memset(&hb, 0, sizeof hb);
    snprintf(hb.worker_hostname, sizeof hb.worker_hostname, "%s", s->advertise);
    if (!registering) {
        pthread_mutex_lock(&s->lock);
        int rc = cl_sync_keys_hash_b64(&s->keys, hb.hashed_keys);
        pthread_mutex_unlock(&s->lock);
        CL_TRY(rc);
    }
    cl_buf body = CL_BUF_INIT;
    CL_TRY(cl_sync_heartbeat_encode(&hb, &body));
    cl_https_response resp = {.body = CL_BUF_INIT};
    int rc = peer_call(s, s->leader, "POST", "/enclave/heartbeat", &body, 4096, &resp);
    cl_buf_free(&body);
    if (rc == CL_OK && resp.status != 200)
        rc = cl_error_set(CL_EPROTO, "the leader answered HTTP %d: %.*s", resp.status,
                          (int)(resp.body.len > 200 ? 200 : resp.body.len),
                  resp.body.data ? (const char *)resp.body.data : "");
    cl_https_response_free(&resp);
    return rc;
}

static void run_worker(cl_sync *s)
{
    /* registration: at once, then quickly (a fresh worker should serve the
     * leader's certificate within a second or two), then nitriding's
     * every 5 s for a minute; heartbeats after that */
    uint64_t start = ms_now();
    unsigned backoff = 100;
    bool registered = false;
    /* registered is not synced: the leader's sync may fail (it could not
     * reach us, say), so until keys arrive we register again */
    while (!stopping(s) && ms_now() - start < s->cfg.register_timeout_ms) {
        if (post_heartbeat(s, true) == CL_OK) {
            if (!registered)
                cl_log(CL_LOG_INFO, "sync_registered", "leader", s->leader, NULL);
            registered = true;
            pthread_mutex_lock(&s->lock);
            uint64_t deadline = ms_now() + s->cfg.register_interval_ms;
            while (!s->synced && !s->stopping && ms_now() < deadline)
                wait_until(s, deadline);
            bool synced = s->synced;
            pthread_mutex_unlock(&s->lock);
            if (synced)
                break;
            continue;
        }
        cl_log(CL_LOG_WARN, "sync_register_failed", "leader", s->leader, "error", cl_error_message(), NULL);
        sleep_ms(s, backoff);
        backoff = backoff * 2 > s->cfg.register_interval_ms ? s->cfg.register_interval_ms : backoff * 2;
    }
    if (!registered && !stopping(s))
        cl_log(CL_LOG_ERROR, "sync_register_timeout", "leader", s->leader, "detail",
               "no registration; heartbeats go on and register when the leader answers", NULL);
    while (!stopping(s)) {
        sleep_ms(s, s->cfg.heartbeat_ms);
        if (stopping(s))
            break;
        if (post_heartbeat(s, false) == CL_OK)
            cl_log(CL_LOG_DEBUG, "sync_heartbeat", "leader", s->leader, NULL);
        else
            cl_log(CL_LOG_WARN, "sync_heartbeat_failed", "leader", s->leader, "error", cl_error_message(), NULL);
    }
}

static void run_leader(cl_sync *s)
{
    unsigned tick = s->cfg.prune_ms / 4 ? s->cfg.prune_ms / 4 : 1;
    pthread_mutex_lock(&s->lock);
    while (!s->stopping) {
        wait_until(s, ms_now() + tick);
        uint64_t now = ms_now();
        for (size_t i = 0; i < s->worker_count;) {
            if (!s->workers[i].syncing && now - s->workers[i].last_seen_ms > s->cfg.prune_ms)
                remove_worker_locked(s, i, "sync_worker_pruned");
            else
                i++;
        }
    }
    pthread_mutex_unlock(&s->lock);
}

static void *sync_main(void *arg)
{
    cl_sync *s = arg;
    elect(s);
    pthread_mutex_lock(&s->lock);
    cl_sync_role role = s->role;
    pthread_mutex_unlock(&s->lock);
    if (role == CL_SYNC_LEADER || role == CL_SYNC_WORKER)
        cl_log(CL_LOG_INFO, "sync_role", "role", cl_sync_role_name(role), "leader", s->leader, NULL);
    if (role == CL_SYNC_WORKER)
        run_worker(s);
    else if (role == CL_SYNC_LEADER)
        run_leader(s);
    return NULL;
}

/* ---- life --------------------------------------------------------------------------- */

int cl_sync_new(const cl_sync_config *cfg, cl_sync **out)
{
    *out = NULL;
    CL_ENSURE(cfg->leader && *cfg->leader && cfg->nsm && cfg->identity && cfg->install && cfg->advertise, CL_EINVAL,
              "key sync needs -fqdn-leader, the NSM, an identity and an address to advertise");
    CL_ENSURE(sodium_init() >= 0, CL_ECRYPTO, "libsodium cannot start");
    cl_sync *s = calloc(1, sizeof *s);
    CL_ENSURE(s, CL_ENOMEM, "out of memory");
    int rc = CL_OK;
    s->cfg = *cfg;
#define DEF(f, v) if (!s->cfg.f) s->cfg.f = v
    DEF(register_interval_ms, 5000);
    DEF(register_timeout_ms, 60000);
    DEF(heartbeat_ms, 60000);
    DEF(prune_ms, 60000);
    DEF(election_timeout_ms, 10000);
    DEF(request_timeout_ms, 3000);
#undef DEF
    pthread_mutex_init(&s->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cond, &ca);
    pthread_condattr_destroy(&ca);
    s->role = CL_SYNC_ELECTING;
    snprintf(s->advertise, sizeof s->advertise, "%s", cfg->advertise);
    s->cfg.advertise = s->advertise;

    /* HOST or HOST:PORT ([v6] or [v6]:PORT) */
    const char *l = cfg->leader;
    const char *close = l[0] == '[' ? strchr(l, ']') : NULL;
    bool has_port = close ? close[1] == ':' : strchr(l, ':') != NULL;
    if (has_port)
        snprintf(s->leader, sizeof s->leader, "%s", l);
    else
        snprintf(s->leader, sizeof s->leader, "%s:%u", l, cfg->port);
    char url[340];
    snprintf(url, sizeof url, "https://%s", s->leader);
    cl_https_target t;
    rc = cl_https_target_parse(url, &t);
    if (rc < 0) {
        rc = cl_error_prefix(rc, "-fqdn-leader: ");
        goto out;
    }
    for (size_t i = 0; i < cfg->dial_count; i++) {
        const char *eq = strchr(cfg->dial[i], '=');
        if (!eq || eq == cfg->dial[i] || !eq[1]) {
            rc = cl_error_set(CL_EINVAL, "-sync-dial %s: expected HOST:PORT=ADDR", cfg->dial[i]);
            goto out;
        }
        cl_address a;
        rc = cl_address_parse(eq + 1, &a);
        if (rc < 0) {
            rc = cl_error_prefix(rc, "-sync-dial %s: ", cfg->dial[i]);
            goto out;
        }
    }
    for (size_t i = 0; i < cfg->allow_pcr0_count; i++)
        CL_TRY_OUT(cl_sync_policy_allow_pcr0(&s->policy, cfg->allow_pcr0[i]));
    s->policy.allow_same_signer = cfg->allow_same_signer;
    rc = cl_verifier_new_with_roots(cfg->roots, cfg->root_count, &s->verifier);
    if (rc < 0) {
        rc = cl_error_prefix(rc, "--sync-root: ");
        goto out;
    }

    /* our PCRs, from a document of our own */
    cl_buf raw = CL_BUF_INIT;
    rc = cl_nsm_attestation(cfg->nsm, NULL, 0, NULL, 0, NULL, 0, &raw);
    if (rc == CL_OK) {
        cl_attestation_doc ours;
        rc = cl_attestation_parse(raw.data, raw.len, &ours);
        if (rc == CL_OK) {
            rc = cl_sync_policy_set_ours(&s->policy, &ours);
            s->ours_debug = cl_attestation_is_debug(&ours);
            cl_attestation_doc_free(&ours);
        }
    }
    cl_buf_free(&raw);
    if (rc < 0) {
        rc = cl_error_prefix(rc, "key sync: our own attestation document: ");
        goto out;
    }
    if (s->policy.allow_same_signer && !cl_sync_policy_signed(&s->policy))
        cl_log(CL_LOG_WARN, "sync_allow_signer_unsigned", "detail",
               "this image is not signed (PCR8 absent or zero): --sync-allow-signer allows no other image", NULL);
    CL_TRY_OUT(cl_sync_keys_from_identity(cfg->identity, &s->keys));
    set_etag_locked(s);
    CL_ENSURE_OUT(RAND_bytes(s->our_nonce, sizeof s->our_nonce) == 1, CL_ECRYPTO, "no random bytes for a nonce");
    *out = s;
    return CL_OK;
out:
    cl_sync_free(s);
    return rc;
}

int cl_sync_start(cl_sync *s)
{
    int e = pthread_create(&s->thread, NULL, sync_main, s);
    CL_ENSURE(e == 0, CL_EIO, "key sync: cannot start a thread: %s", strerror(e));
    s->thread_started = true;
    return CL_OK;
}

void cl_sync_shutdown(cl_sync *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    s->stopping = true;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

void cl_sync_free(cl_sync *s)
{
    if (!s)
        return;
    cl_sync_shutdown(s);
    if (s->thread_started)
        pthread_join(s->thread, NULL);
    pthread_mutex_lock(&s->lock);
    while (s->jobs || s->waiters)
        wait_until(s, ms_now() + 100);
    pthread_mutex_unlock(&s->lock);
    cl_verifier_free(s->verifier);
    cl_sync_keys_free(&s->keys);
    sodium_memzero(s->pending, sizeof s->pending);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

cl_sync_role cl_sync_get_role(cl_sync *s)
{
    pthread_mutex_lock(&s->lock);
    cl_sync_role r = s->role;
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* ---- endpoints ------------------------------------------------------------------------ */

static bool method(const cl_sync_request *req, const char *m)
{
    return cl_slice_eq(req->method, m);
}

static void handle_leader(cl_sync *s, const cl_sync_request *req, cl_sync_reply *r)
{
    if (!method(req, "GET")) {
        reply_text(r, 405, "405: use GET");
        return;
    }
    uint8_t nonce[CL_SYNC_NONCE_LEN];
    pthread_mutex_lock(&s->lock);
    cl_sync_role role = s->role;
    pthread_mutex_unlock(&s->lock);
    if (role != CL_SYNC_ELECTING) {
        reply_text(r, 410, "410: the leader is decided");
        return;
    }
    if (parse_nonce(req->query, nonce) < 0) {
        reply_text(r, 400, "400: %s", cl_error_message());
        return;
    }
    if (CRYPTO_memcmp(nonce, s->our_nonce, sizeof nonce) == 0) {
        pthread_mutex_lock(&s->lock);
        if (s->role == CL_SYNC_ELECTING)
            s->role = CL_SYNC_LEADER;
        pthread_cond_broadcast(&s->cond);
        pthread_mutex_unlock(&s->lock);
    } else {
        cl_log(CL_LOG_INFO, "sync_foreign_nonce", "detail", "a nonce that is not ours reached the leader endpoint",
               NULL);
    }
    reply_text(r, 200, "ok");
}

static void handle_heartbeat(cl_sync *s, const cl_sync_request *req, cl_sync_reply *r)
{
    if (!method(req, "POST")) {
        reply_text(r, 405, "405: use POST");
        return;
    }
    if (cl_sync_get_role(s) != CL_SYNC_LEADER) {
        reply_text(r, 410, "410: this enclave is not the leader");
        return;
    }
    if (req->body_len > CL_SYNC_MAX_HEARTBEAT) {
        reply_text(r, 413, "413: a heartbeat is at most %d bytes", CL_SYNC_MAX_HEARTBEAT);
        return;
    }
    cl_sync_heartbeat hb;
    if (cl_sync_heartbeat_parse(req->body, req->body_len, &hb) < 0) {
        reply_text(r, 400, "400: %s", cl_error_message());
        return;
    }
    char ours[45];
    pthread_mutex_lock(&s->lock);
    int rc = cl_sync_keys_hash_b64(&s->keys, ours);
    if (rc == CL_OK) {
        if (strcmp(ours, hb.hashed_keys) != 0) {
            cl_log(CL_LOG_INFO, "sync_heartbeat_mismatch", "worker", hb.worker_hostname, "detail",
                   hb.hashed_keys[0] ? "the worker's keys differ from ours: re-syncing" : "registration: syncing",
                   NULL);
            start_job_locked(s, hb.worker_hostname);
        } else {
            register_worker_locked(s, hb.worker_hostname);
        }
    }
    pthread_mutex_unlock(&s->lock);
    if (rc < 0)
        reply_text(r, 500, "500: %s", cl_error_message());
    else
        reply_text(r, 200, "ok");
}

static void handle_sync(cl_sync *s, const cl_sync_request *req, cl_sync_reply *r)
{
    cl_sync_role role = cl_sync_get_role(s);
    if (!method(req, "GET") && !method(req, "POST")) {
        reply_text(r, 405, "405: use GET or POST");
        return;
    }
    if (role != CL_SYNC_WORKER) {
        reply_text(r, role == CL_SYNC_ELECTING ? 503 : 410, "%s",
                   role == CL_SYNC_ELECTING ? "503: leader designation in progress" : "410: this enclave leads");
        return;
    }
    if (method(req, "GET"))
        worker_sync_get(s, req, r);
    else
        worker_sync_post(s, req, r);
}

static bool etag_matches(cl_slice inm, const char *etag)
{
    /* one tag, or a list; W/ prefixes compared weakly as RFC 9110 says */
    size_t n = strlen(etag);
    for (size_t i = 0; i + n <= inm.len; i++)
        if (!memcmp(inm.data + i, etag, n))
            return true;
    return inm.len == 1 && inm.data[0] == '*';
}

static void state_get(cl_sync *s, const cl_sync_request *req, cl_sync_reply *r)
{
    char wait_text[16];
    bool found = false;
    uint64_t wait_s = 0;
    if (cl_http_query_param(req->query, "wait", wait_text, sizeof wait_text, &found) < 0 ||
        (found && cl_parse_u64(wait_text, MAX_WAIT_S, &wait_s) < 0)) {
        reply_text(r, 400, "400: wait must be a number of seconds, 0..%d", MAX_WAIT_S);
        return;
    }
    pthread_mutex_lock(&s->lock);
    bool unchanged = req->if_none_match.len && etag_matches(req->if_none_match, s->etag);
    if (unchanged && wait_s) {
        if (s->waiters >= MAX_WAITERS) {
            pthread_mutex_unlock(&s->lock);
            reply_text(r, 429, "429: %d long polls wait already; poll without wait or later", MAX_WAITERS);
            return;
        }
        s->waiters++;
        uint64_t version = s->version, deadline = ms_now() + wait_s * 1000;
        while (!s->stopping && s->version == version && ms_now() < deadline)
            wait_until(s, deadline);
        s->waiters--;
        pthread_cond_broadcast(&s->cond);
        unchanged = etag_matches(req->if_none_match, s->etag);
    }
    snprintf(r->etag, sizeof r->etag, "%s", s->etag);
    if (unchanged) {
        pthread_mutex_unlock(&s->lock);
        r->status = 304;
        cl_buf_reset(&r->body);
        return;
    }
    r->status = 200;
    r->content_type = "application/octet-stream";
    cl_buf_reset(&r->body);
    if (cl_buf_append(&r->body, s->keys.app_keys.data, s->keys.app_keys.len) < 0)
        r->status = 500;
    pthread_mutex_unlock(&s->lock);
}

static void state_put(cl_sync *s, const cl_sync_request *req, cl_sync_reply *r)
{
    if (req->body_len > CL_SYNC_MAX_STATE) {
        reply_text(r, 413, "413: the state is at most %d bytes", CL_SYNC_MAX_STATE);
        return;
    }
    pthread_mutex_lock(&s->lock);
    cl_buf_reset(&s->keys.app_keys);
    int rc = cl_buf_append(&s->keys.app_keys, req->body, req->body_len);
    s->version++;
    s->keys_gen++;
    set_etag_locked(s);
    snprintf(r->etag, sizeof r->etag, "%s", s->etag);
    char count[16];
    snprintf(count, sizeof count, "%zu", s->worker_count);
    cl_log(CL_LOG_INFO, "sync_state_changed", "workers", count, "detail", "re-syncing every worker", NULL);
    for (size_t i = 0; i < s->worker_count; i++)
        start_job_locked(s, s->workers[i].host);
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    if (rc < 0)
        reply_text(r, 500, "500: out of memory");
    else
        reply_text(r, 200, "ok");
}

static void handle_state(cl_sync *s, const cl_sync_request *req, cl_sync_reply *r)
{
    bool get = method(req, "GET") || method(req, "HEAD"), put = method(req, "PUT");
    if (!get && !put) {
        reply_text(r, 405, "405: use GET or PUT");
        return;
    }
    cl_sync_role role = s ? cl_sync_get_role(s) : CL_SYNC_OFF;
    if (role == CL_SYNC_OFF) {
        reply_text(r, 403, "403: key synchronization is disabled (no -fqdn-leader)");
        return;
    }
    if (role == CL_SYNC_ELECTING) {
        reply_text(r, 503, "503: leader designation in progress");
        return;
    }
    if (get && role == CL_SYNC_LEADER) {
        reply_text(r, 410, "410: the leader's state is set with PUT; workers GET it");
        return;
    }
    if (put && role == CL_SYNC_WORKER) {
        reply_text(r, 410, "410: workers receive the state from the leader; PUT it there");
        return;
    }
    if (get)
        state_get(s, req, r);
    else
        state_put(s, req, r);
}

void cl_sync_handle(cl_sync *s, int endpoint, const cl_sync_request *req, cl_sync_reply *r)
{
    r->status = 500;
    r->etag[0] = '\0';
    if (endpoint == CL_SYNC_EP_STATE) {
        handle_state(s, req, r);
        return;
    }
    if (!s) {
        reply_text(r, 404, "404: key synchronization is disabled");
        return;
    }
    switch (endpoint) {
    case CL_SYNC_EP_LEADER: handle_leader(s, req, r); return;
    case CL_SYNC_EP_HEARTBEAT: handle_heartbeat(s, req, r); return;
    case CL_SYNC_EP_SYNC: handle_sync(s, req, r); return;
    default: reply_text(r, 404, "404: not found"); return;
    }
}

int cl_sync_push_challenges(cl_sync *s, const uint8_t *acme, size_t len, unsigned timeout_ms, size_t *acked,
                            size_t *workers)
{
    *acked = *workers = 0;
    cl_buf copy = CL_BUF_INIT;
    CL_TRY(cl_buf_append(&copy, acme, len));
    pthread_mutex_lock(&s->lock);
    if (s->role != CL_SYNC_LEADER) {
        pthread_mutex_unlock(&s->lock);
        cl_buf_free(&copy);
        return cl_error_set(CL_EINVAL, "only the key-sync leader pushes ACME challenges");
    }
    cl_buf_free(&s->keys.acme);
    s->keys.acme = copy;
    uint64_t gen = ++s->keys_gen;
    for (size_t i = 0; i < s->worker_count; i++)
        start_job_locked(s, s->workers[i].host);
    uint64_t deadline = ms_now() + timeout_ms;
    for (;;) {
        size_t done = 0;
        for (size_t i = 0; i < s->worker_count; i++)
            if (s->workers[i].synced_gen >= gen)
                done++;
        *acked = done;
        *workers = s->worker_count;
        /* a worker whose sync failed left the table: nothing to wait for */
        if (done == s->worker_count || s->stopping || ms_now() >= deadline)
            break;
        wait_until(s, deadline);
    }
    pthread_mutex_unlock(&s->lock);
    return CL_OK;
}

int cl_sync_set_identity(cl_sync *s, const cl_tls_identity *id)
{
    cl_sync_keys k = {0};
    CL_TRY(cl_sync_keys_from_identity(id, &k));
    pthread_mutex_lock(&s->lock);
    cl_buf_free(&s->keys.key);
    cl_buf_free(&s->keys.cert);
    s->keys.key = k.key;
    s->keys.cert = k.cert;
    k.key = k.cert = (cl_buf)CL_BUF_INIT;
    s->keys_gen++;
    char count[16];
    snprintf(count, sizeof count, "%zu", s->worker_count);
    cl_log(CL_LOG_INFO, "sync_identity_changed", "workers", count, "detail", "re-syncing every worker", NULL);
    for (size_t i = 0; i < s->worker_count; i++)
        start_job_locked(s, s->workers[i].host);
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    cl_sync_keys_free(&k);
    return CL_OK;
}

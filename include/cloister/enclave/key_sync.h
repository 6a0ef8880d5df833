/* Attested key sync between enclaves, wire-compatible with nitriding-daemon
 * (docs/key-sync.md): one leader holds the TLS key, certificate and the
 * app's state ("app keys") and gives them to workers whose attestation
 * documents it has verified; unlike nitriding, a worker too takes keys only
 * from a leader whose document verifies under the trusted roots with PCRs
 * equal to its own (except PCR4), or with a PCR0 in the allowed set.
 *
 * The pieces:
 *  - the JSON messages (parsers shared with the fuzzer): the attestation
 *    body {"document","encrypted_keys"}, the heartbeat {"hashed_keys",
 *    "worker_hostname"}, the sealed keys {"nitriding_key","nitriding_cert",
 *    "app_keys"} (Go's encoding of []byte: base64 strings, or null);
 *  - the peer policy (cl_sync_check_peer);
 *  - the engine (cl_sync): election, registration, heartbeats, pruning,
 *    the leader's and the worker's halves of a sync, and the HTTP
 *    endpoints as a request -> reply core the daemon routes to. */
#ifndef CLOISTER_ENCLAVE_KEY_SYNC_H
#define CLOISTER_ENCLAVE_KEY_SYNC_H

#pragma GCC visibility push(default)

#include "cloister/core/attestation.h"
#include "cloister/core/buf.h"
#include "cloister/core/error.h"
#include "cloister/core/slice.h"
#include "cloister/core/tls.h"
#include "cloister/enclave/nsm.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CL_SYNC_NONCE_LEN 20
#define CL_SYNC_BOX_KEY_LEN 32
#define CL_SYNC_MAX_STATE (1024 * 1024)       /* PUT /enclave/state */
#define CL_SYNC_MAX_HEARTBEAT (44 + 255 + 128) /* nitriding's maxHeartbeatBody */
/* the worker's answer to GET /enclave/sync: a document and nothing else */
#define CL_SYNC_MAX_WORKER_BODY (64 * 1024)
/* the leader's POST: a document and the sealed keys, app state included */
#define CL_SYNC_MAX_LEADER_BODY (3 * CL_SYNC_MAX_STATE)
#define CL_SYNC_ALLOW_PCR0_MAX 16
#define CL_SYNC_MAX_WORKERS 256
/* what nitriding puts in the leader's public_key field */
#define CL_SYNC_LEADER_PAD "dummy"

typedef enum cl_sync_role {
    CL_SYNC_OFF,      /* no -fqdn-leader */
    CL_SYNC_ELECTING, /* leader designation in progress */
    CL_SYNC_LEADER,
    CL_SYNC_WORKER,
} cl_sync_role;

const char *cl_sync_role_name(cl_sync_role r);

/* ---- messages ------------------------------------------------------------ */

/* {"document": base64, "encrypted_keys": base64 or ""} */
typedef struct cl_sync_attstn_body {
    cl_buf document, encrypted_keys;
} cl_sync_attstn_body;

CL_MUST_CHECK int cl_sync_attstn_body_parse(const uint8_t *json, size_t len, cl_sync_attstn_body *out);
CL_MUST_CHECK int cl_sync_attstn_body_encode(const uint8_t *doc, size_t doc_len, const uint8_t *enc, size_t enc_len,
                                             cl_buf *out);
void cl_sync_attstn_body_free(cl_sync_attstn_body *b);

/* {"hashed_keys": base64 SHA-256 or "", "worker_hostname": "HOST:PORT"} */
typedef struct cl_sync_heartbeat {
    char hashed_keys[64];
    char worker_hostname[300];
} cl_sync_heartbeat;

CL_MUST_CHECK int cl_sync_heartbeat_parse(const uint8_t *json, size_t len, cl_sync_heartbeat *out);
CL_MUST_CHECK int cl_sync_heartbeat_encode(const cl_sync_heartbeat *hb, cl_buf *out);

/* The key material: PEM key and certificate, the app's opaque state, and
 * (cloister's addition, member "acme_challenges", sent only when not empty
 * and left out of hashed_keys) the ACME challenges the leader has pending
 * (cl_acme_pending_encode's text), so that a worker answers the CA's
 * validation too.  A nitriding worker ignores the member (Go). */
typedef struct cl_sync_keys {
    cl_buf key, cert, app_keys, acme;
} cl_sync_keys;

CL_MUST_CHECK int cl_sync_keys_parse(const uint8_t *json, size_t len, cl_sync_keys *out);
CL_MUST_CHECK int cl_sync_keys_encode(const cl_sync_keys *k, cl_buf *out);
CL_MUST_CHECK int cl_sync_keys_copy(const cl_sync_keys *from, cl_sync_keys *to);
void cl_sync_keys_free(cl_sync_keys *k);
/* nitriding's hashed_keys: base64 SHA-256 over cert || key || app_keys */
CL_MUST_CHECK int cl_sync_keys_hash_b64(const cl_sync_keys *k, char out[45]);

/* PEM of an identity (PKCS#8 key; leaf then chain) and back: the key is
 * checked against the leaf. */
CL_MUST_CHECK int cl_sync_keys_from_identity(const cl_tls_identity *id, cl_sync_keys *out);
CL_MUST_CHECK int cl_sync_identity_from_keys(const cl_sync_keys *k, cl_tls_identity *out);

/* ---- peer policy ----------------------------------------------------------- */

typedef struct cl_sync_policy {
    uint32_t ours_present;
    uint8_t ours[CL_PCR_COUNT][CL_PCR_MAX_LEN];
    size_t ours_len[CL_PCR_COUNT];
    uint8_t allow_pcr0[CL_SYNC_ALLOW_PCR0_MAX][48];
    size_t allow_pcr0_count;
    bool allow_same_signer; /* --sync-allow-signer */
} cl_sync_policy;

/* Our PCRs from our own document. */
CL_MUST_CHECK int cl_sync_policy_set_ours(cl_sync_policy *p, const cl_attestation_doc *ours);
/* --sync-allow-pcr0 HEX (96 hex digits, not all zero) */
CL_MUST_CHECK int cl_sync_policy_allow_pcr0(cl_sync_policy *p, const char *hex);
/* Our image is signed: PCR8 present and not zero. */
bool cl_sync_policy_signed(const cl_sync_policy *p);
/* A verified peer document: every PCR we have equal to theirs except
 * PCR4 (the parent instance), and they have no PCR we lack; or another
 * image, whose PCR0, PCR1 and PCR2 may differ, when its PCR0 is in the
 * allowed set or, with allow_same_signer, when it is signed by our own
 * image's signing certificate (PCR8 equal and not zero: an image built
 * later, which this one cannot name).  *rule is "equal-pcrs",
 * "sync-allow-pcr0" or "sync-allow-signer".  CL_EVERIFY naming the first
 * PCR that differs. */
CL_MUST_CHECK int cl_sync_check_peer(const cl_sync_policy *p, const cl_attestation_doc *theirs, const char **rule);

/* ---- the engine -------------------------------------------------------------- */

typedef struct cl_sync cl_sync;

/* Called when a worker has received keys from a verified leader: make the
 * key and certificate the TLS identity of new connections.  0 or cl_err. */
typedef int (*cl_sync_install_fn)(void *arg, const cl_sync_keys *keys);
/* Called on a worker after every sync accepted from a verified leader with
 * the leader's pending ACME challenges (len 0: none pending). */
typedef void (*cl_sync_challenges_fn)(void *arg, const uint8_t *acme, size_t len);

typedef struct cl_sync_config {
    const char *leader;    /* -fqdn-leader: HOST or HOST:PORT */
    unsigned port;         /* -ext-priv-port: the default port of the leader */
    const char *advertise; /* our worker_hostname, HOST:PORT */
    const char *const *dial; /* NAME=ADDR: reach HOST:PORT NAME through ADDR */
    size_t dial_count;
    const char *const *roots; /* PEM files of trusted roots; none: AWS's */
    size_t root_count;
    const char *const *allow_pcr0;
    size_t allow_pcr0_count;
    bool allow_same_signer; /* --sync-allow-signer */
    cl_nsm *nsm;
    const cl_tls_identity *identity; /* our own, sent when we lead */
    cl_sync_install_fn install;
    cl_sync_challenges_fn challenges; /* NULL: ignored */
    void *install_arg;                /* for both */
    /* cadence (0: nitriding's) */
    unsigned register_interval_ms; /* 5 s */
    unsigned register_timeout_ms;  /* 60 s */
    unsigned heartbeat_ms;         /* 60 s */
    unsigned prune_ms;             /* 60 s: a worker silent this long is dropped */
    unsigned election_timeout_ms;  /* 10 s */
    unsigned request_timeout_ms;   /* 3 s */
} cl_sync_config;

CL_MUST_CHECK int cl_sync_new(const cl_sync_config *cfg, cl_sync **out);
/* Starts the election and what follows, in threads of its own. */
CL_MUST_CHECK int cl_sync_start(cl_sync *s);
/* Tells every thread and waiting request to finish (returns at once). */
void cl_sync_shutdown(cl_sync *s);
/* Stops the threads (waits for syncs in flight) and wipes the keys. */
void cl_sync_free(cl_sync *s);
cl_sync_role cl_sync_get_role(cl_sync *s);
/* The leader's identity changed (a CA-issued certificate, -acme): what it
 * sends from now on, and every registered worker is synced again. */
CL_MUST_CHECK int cl_sync_set_identity(cl_sync *s, const cl_tls_identity *id);

/* Leader: what the workers get as pending ACME challenges from now on
 * (len 0: none); every registered worker is synced again, and the call
 * waits until each has taken it, or failed (and was dropped), or
 * timeout_ms passed.  *acked / *workers: how many took it, of how many.
 * CL_EINVAL when this enclave does not lead. */
CL_MUST_CHECK int cl_sync_push_challenges(cl_sync *s, const uint8_t *acme, size_t len, unsigned timeout_ms,
                                          size_t *acked, size_t *workers);

enum cl_sync_endpoint {
    CL_SYNC_EP_LEADER,    /* GET /enclave/leader?nonce= (sync listener) */
    CL_SYNC_EP_HEARTBEAT, /* POST /enclave/heartbeat (sync listener) */
    CL_SYNC_EP_SYNC,      /* GET and POST /enclave/sync (sync listener) */
    CL_SYNC_EP_STATE,     /* GET and PUT /enclave/state (internal listener) */
};

typedef struct cl_sync_request {
    cl_slice method, query;
    const uint8_t *body;
    size_t body_len;
    cl_slice if_none_match; /* GET /enclave/state */
} cl_sync_request;

typedef struct cl_sync_reply {
    int status;
    const char *content_type; /* NULL: text/plain */
    cl_buf body;
    char etag[72]; /* "" or the ETag header's value */
} cl_sync_reply;

/* Answers one request (may block: GET /enclave/state?wait=S up to S
 * seconds, at most 60, with at most two such waits at once). */
void cl_sync_handle(cl_sync *s, int endpoint, const cl_sync_request *req, cl_sync_reply *reply);

#pragma GCC visibility pop

#endif

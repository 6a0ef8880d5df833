/* An ACME client (RFC 8555) that runs inside the enclave: the account key
 * and every certificate key are made in memory here, the CSR is signed
 * here, and the CA is reached through the parent's outbound proxy like
 * KMS.  Everything the CA (and so the parent, which relays it) sends is
 * untrusted: answers are parsed by strict readers (cl_acme_parse_*), URLs
 * must be https, tokens base64url, and the issued chain must name the FQDN
 * and carry the key the enclave made.
 *
 * Challenges: tls-alpn-01 (RFC 8737) is answered by the enclave's own TLS
 * listener (cl_acme_tls: a ClientHello offering "acme-tls/1" gets a
 * self-signed certificate with the critical acmeIdentifier extension) and
 * http-01 by a plain listener serving /.well-known/acme-challenge/TOKEN.
 * A renewed certificate reaches new connections through a new SSL_CTX
 * (the enclave swaps its context as key sync does); old connections keep
 * theirs. */
#ifndef CLOISTER_ACME_H
#define CLOISTER_ACME_H

#pragma GCC visibility push(default)

#include "cloister/core/address.h"
#include "cloister/core/buf.h"
#include "cloister/core/error.h"

#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CL_ACME_URL_MAX 512
#define CL_ACME_TOKEN_MAX 128
#define CL_ACME_MAX_AUTHZ 16
#define CL_ACME_MAX_CHALLENGES 8
#define CL_ACME_LETSENCRYPT "https://acme-v02.api.letsencrypt.org/directory"

/* ---- what the CA sends, parsed ------------------------------------------- */

typedef struct cl_acme_directory {
    char new_nonce[CL_ACME_URL_MAX];
    char new_account[CL_ACME_URL_MAX];
    char new_order[CL_ACME_URL_MAX];
} cl_acme_directory;

/* RFC 7807 problem document, with RFC 8555's subproblems flattened into
 * one line of text. */
typedef struct cl_acme_problem {
    char type[160];
    char detail[512];
    long status;          /* 0 when absent */
    char subproblems[1024]; /* "type: detail [identifier]; ..." or "" */
} cl_acme_problem;

typedef enum cl_acme_status {
    CL_ACME_PENDING,
    CL_ACME_READY,
    CL_ACME_PROCESSING,
    CL_ACME_VALID,
    CL_ACME_INVALID,
    CL_ACME_DEACTIVATED,
    CL_ACME_EXPIRED,
    CL_ACME_REVOKED,
} cl_acme_status;

typedef struct cl_acme_order {
    cl_acme_status status;
    char finalize[CL_ACME_URL_MAX];
    char certificate[CL_ACME_URL_MAX]; /* "" until valid */
    size_t authz_count;
    char authz[CL_ACME_MAX_AUTHZ][CL_ACME_URL_MAX];
    bool has_error;
    cl_acme_problem error;
} cl_acme_order;

typedef struct cl_acme_challenge {
    char type[32];
    char url[CL_ACME_URL_MAX];
    char token[CL_ACME_TOKEN_MAX + 1];
    cl_acme_status status;
    bool has_error;
    cl_acme_problem error;
} cl_acme_challenge;

typedef struct cl_acme_authz {
    cl_acme_status status;
    char identifier[256]; /* the dns name */
    size_t challenge_count;
    cl_acme_challenge challenges[CL_ACME_MAX_CHALLENGES];
} cl_acme_authz;

/* Each reader takes the body as received; CL_EPARSE names what is wrong.
 * Unknown members are ignored (RFC 8555 lets servers add them); known
 * members of the wrong type, duplicate keys, URLs that are not https,
 * tokens outside base64url are refused. */
CL_MUST_CHECK int cl_acme_parse_directory(const uint8_t *body, size_t len, cl_acme_directory *out);
CL_MUST_CHECK int cl_acme_parse_problem(const uint8_t *body, size_t len, cl_acme_problem *out);
CL_MUST_CHECK int cl_acme_parse_order(const uint8_t *body, size_t len, cl_acme_order *out);
CL_MUST_CHECK int cl_acme_parse_authz(const uint8_t *body, size_t len, cl_acme_authz *out);
/* Retry-After: delta-seconds or an HTTP-date, relative to now (Unix
 * seconds); the result is capped at max_s.  CL_EPARSE when neither. */
CL_MUST_CHECK int cl_acme_parse_retry_after(const char *value, int64_t now, unsigned max_s, unsigned *out_s);
/* "type: detail (HTTP status) [subproblems: ...]" for logs and errors. */
/* An https URL of at most CL_ACME_URL_MAX-1 bytes, URL characters only. */
CL_MUST_CHECK int cl_acme_check_url(const char *url, const char *what);
void cl_acme_problem_format(const cl_acme_problem *p, char *out, size_t cap);
const char *cl_acme_status_name(cl_acme_status s);

/* ---- keys, JWS, challenge material ---------------------------------------- */

/* base64url without padding, NUL-terminated. */
CL_MUST_CHECK int cl_base64url_encode(const uint8_t *data, size_t len, cl_buf *out);
/* A P-256 key made in memory. */
CL_MUST_CHECK int cl_acme_new_key(EVP_PKEY **out);
/* RFC 7638 thumbprint of a P-256 key's JWK, base64url (43 chars + NUL). */
CL_MUST_CHECK int cl_acme_thumbprint(EVP_PKEY *key, char out[44]);
/* token "." thumbprint */
CL_MUST_CHECK int cl_acme_key_authorization(const char *token, EVP_PKEY *account_key, cl_buf *out);
/* A JWS in flattened JSON serialisation (ES256); kid NULL: the jwk is
 * embedded.  payload NULL: POST-as-GET (empty payload). */
CL_MUST_CHECK int cl_acme_jws(EVP_PKEY *account_key, const char *kid, const char *nonce, const char *url,
                              const char *payload, cl_buf *out);
/* A DER CSR for fqdn (CN and a dNSName), signed by key. */
CL_MUST_CHECK int cl_acme_csr(EVP_PKEY *key, const char *fqdn, cl_buf *der);
/* RFC 8737's validation certificate: self-signed, dNSName fqdn, the
 * critical id-pe-acmeIdentifier extension holding SHA-256(keyauth). */
CL_MUST_CHECK int cl_acme_alpn_certificate(const char *fqdn, const char *key_authorization, X509 **cert,
                                           EVP_PKEY **key);
/* Reads a PEM chain, checks the leaf names fqdn (dNSName) and carries key's
 * public key, and returns leaf and the rest. */
CL_MUST_CHECK int cl_acme_check_chain(const uint8_t *pem, size_t len, const char *fqdn, EVP_PKEY *key,
                                      X509 **leaf, STACK_OF(X509) **rest);

/* ---- challenge answers ---------------------------------------------------- */

typedef struct cl_acme_tls cl_acme_tls;

CL_MUST_CHECK int cl_acme_tls_new(cl_acme_tls **out);
void cl_acme_tls_free(cl_acme_tls *t);
/* Hooks ctx (a public listener's, made by cl_tls_server_ctx) so that a
 * handshake offering acme-tls/1 gets the tls-alpn-01 answer; others keep
 * ctx's certificate.  enable_h2: offer h2 as cl_tls_server_ctx does.  t
 * must outlive ctx. */
CL_MUST_CHECK int cl_acme_tls_install(cl_acme_tls *t, SSL_CTX *ctx, bool enable_h2);
/* tls-alpn-01 answer for fqdn (replaces any earlier one); clear removes it. */
CL_MUST_CHECK int cl_acme_tls_set_alpn_challenge(cl_acme_tls *t, const char *fqdn, const char *key_authorization);
void cl_acme_tls_clear_alpn_challenge(cl_acme_tls *t);
/* http-01: the key authorization served for the token. */
CL_MUST_CHECK int cl_acme_tls_set_http_token(cl_acme_tls *t, const char *token, const char *key_authorization);
void cl_acme_tls_clear_http_token(cl_acme_tls *t);
/* Copies the key authorization for a /.well-known/acme-challenge/ path;
 * CL_ENOTFOUND when none. */
CL_MUST_CHECK int cl_acme_tls_http_answer(cl_acme_tls *t, const char *path, cl_buf *out);
/* Answers end at this time (Unix seconds; 0: never): a worker serves the
 * leader's pushed challenges only until their expiry, even if the leader
 * never withdraws them. */
void cl_acme_tls_set_expiry(cl_acme_tls *t, int64_t expires);
/* The number of tls-alpn-01 handshakes answered (for tests and metrics). */
uint64_t cl_acme_tls_alpn_answers(const cl_acme_tls *t);

/* ---- pending challenges, as the key-sync leader pushes them to workers ------ */

/* With several replicas behind one balancer the CA's validation reaches any
 * of them: the leader, which orders, pushes each pending challenge to its
 * workers over key sync (docs/acme.md), so that every replica answers. */
typedef struct cl_acme_pending {
    char type[16];                 /* "tls-alpn-01" or "http-01" */
    char identifier[256];          /* the dns name */
    char token[CL_ACME_TOKEN_MAX + 1];
    char key_authorization[CL_ACME_TOKEN_MAX + 45]; /* token "." thumbprint */
    int64_t expires;               /* Unix seconds */
} cl_acme_pending;

#define CL_ACME_PENDING_MAX 4

/* One line per challenge: "TYPE IDENTIFIER TOKEN KEYAUTH EXPIRES\n";
 * none: empty. */
CL_MUST_CHECK int cl_acme_pending_encode(const cl_acme_pending *p, size_t n, cl_buf *out);
/* Strict reader of the above: at most CL_ACME_PENDING_MAX lines, known
 * types, a dns name, base64url token, a key authorization that is the
 * token, '.', and a 43-character base64url thumbprint.  CL_EPARSE. */
CL_MUST_CHECK int cl_acme_pending_parse(const uint8_t *data, size_t len, cl_acme_pending out[CL_ACME_PENDING_MAX],
                                        size_t *n);

/* ---- the client ------------------------------------------------------------ */

typedef enum cl_acme_challenge_type { CL_ACME_TLS_ALPN_01, CL_ACME_HTTP_01 } cl_acme_challenge_type;

/* Called with the challenge about to be validated, after it was set on
 * the responder and before the CA is told to validate (may block, bounded:
 * the leader pushes it to its workers and waits for them); and with NULL
 * when it is withdrawn. */
typedef void (*cl_acme_publish_fn)(void *arg, const cl_acme_pending *p);

typedef struct cl_acme_config {
    const char *directory;          /* URL; NULL: Let's Encrypt production */
    const char *ca_file;            /* trust for the CA's TLS; NULL: system store */
    const cl_address *dial;         /* the outbound proxy; NULL: the URL's host */
    const char *email;              /* contact, may be NULL */
    cl_acme_challenge_type challenge;
    cl_acme_tls *responder;         /* where challenges are answered */
    unsigned timeout_ms;            /* per HTTP exchange; 0: 15 s */
    unsigned max_polls;             /* authorization/order polls; 0: 30 */
    unsigned poll_interval_ms;      /* between polls without Retry-After; 0: 1 s */
    unsigned max_retry_after_s;     /* cap on a Retry-After honoured in a poll; 0: 30 */
    const atomic_bool *cancel;      /* set: waits end and cl_acme_obtain fails */
    cl_acme_publish_fn publish;     /* NULL: the challenge stays with the responder */
    void *publish_arg;
} cl_acme_config;

typedef struct cl_acme cl_acme;

typedef struct cl_acme_stats {
    uint64_t requests, bad_nonce_retries, orders;
} cl_acme_stats;

/* account_key: taken (and freed by cl_acme_free) or NULL to make one. */
CL_MUST_CHECK int cl_acme_new(const cl_acme_config *cfg, EVP_PKEY *account_key, cl_acme **out);
void cl_acme_free(cl_acme *a);
EVP_PKEY *cl_acme_account_key(cl_acme *a);
/* Uses key (taken) as the account key from now on (one from the store);
 * not while cl_acme_obtain runs. */
void cl_acme_set_account_key(cl_acme *a, EVP_PKEY *key);
void cl_acme_get_stats(const cl_acme *a, cl_acme_stats *out);
/* When the last failure came with Retry-After (or 429/503): how long the
 * CA asked to wait, in seconds; 0 otherwise. */
unsigned cl_acme_retry_after(const cl_acme *a);

/* Orders a certificate for fqdn, proves control with the configured
 * challenge, finalizes with a CSR signed by cert_key and downloads the
 * chain.  On success *chain_pem holds the PEM chain as issued and *leaf /
 * *rest the parsed, checked certificates.  A badNonce is retried (at most
 * 5 times per request); polls are bounded by max_polls.  Errors carry the
 * CA's problem document in full. */
CL_MUST_CHECK int cl_acme_obtain(cl_acme *a, const char *fqdn, EVP_PKEY *cert_key, cl_buf *chain_pem, X509 **leaf,
                                 STACK_OF(X509) **rest);

/* When to renew a certificate valid from not_before to not_after: at two
 * thirds of its lifetime, moved by jitter in [-1, 1] times a twentieth of
 * the lifetime (so that replicas and restarts do not renew in step). */
int64_t cl_acme_renewal_time(int64_t not_before, int64_t not_after, double jitter);

#pragma GCC visibility pop

#endif

/* TLS identities and contexts on OpenSSL 3.
 *
 * The enclave's identity is an ECDSA P-256 key generated in memory at start
 * and a self-signed certificate naming the enclave's FQDN; the key is never
 * written anywhere.  Clients trust it through attestation, not through the
 * certificate chain. */
#ifndef CLOISTER_TLS_H
#define CLOISTER_TLS_H

#pragma GCC visibility push(default)

#include "cloister/core/error.h"

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct cl_tls_identity {
    EVP_PKEY *key;
    X509 *cert;        /* leaf */
    STACK_OF(X509) *chain; /* further certificates to send, may be NULL */
    uint8_t cert_sha256[32]; /* of the leaf's DER: what attestation binds */
} cl_tls_identity;

CL_MUST_CHECK int cl_tls_identity_generate(const char *fqdn, cl_tls_identity *out);
CL_MUST_CHECK int cl_tls_identity_load(const char *cert_pem_path, const char *key_pem_path, cl_tls_identity *out);
/* The same with the private key given in memory (PEM or DER), e.g. as it
 * came out of KMS; the caller wipes its copy. */
CL_MUST_CHECK int cl_tls_identity_load_key_mem(const char *cert_pem_path, const uint8_t *key, size_t key_len,
                                               cl_tls_identity *out);
void cl_tls_identity_free(cl_tls_identity *id);

typedef struct cl_tls_server_options {
    bool enable_h2;                 /* offer "h2" in ALPN before "http/1.1" */
    unsigned ticket_rotation_s;     /* session ticket key lifetime; 0: 12 hours */
} cl_tls_server_options;

/* TLS 1.2 and 1.3, AEAD suites with forward secrecy only, session tickets
 * encrypted under keys that live in memory and rotate. */
CL_MUST_CHECK int cl_tls_server_ctx(const cl_tls_identity *id, const cl_tls_server_options *opt, SSL_CTX **out);

/* A client context that does not check the peer's chain: callers that use
 * it establish trust another way (cloister verify: attestation). */
CL_MUST_CHECK int cl_tls_client_ctx_unverified(SSL_CTX **out);

/* SHA-256 of a certificate's DER. */
CL_MUST_CHECK int cl_tls_cert_sha256(X509 *cert, uint8_t out[32]);

/* Mixes bytes (e.g. from the NSM) into OpenSSL's and the kernel's pools. */
void cl_tls_seed_entropy(const uint8_t *bytes, size_t len);

#pragma GCC visibility pop

#endif

/* The AWS KMS client: the JSON 1.1 protocol over HTTPS (libcurl, SigV4),
 * credentials (explicit, environment, IMDSv2), and, inside an enclave, the
 * Recipient forms of Decrypt, GenerateDataKey and GenerateRandom whose
 * answers are CMS envelopes only the enclave's session key opens.
 *
 * Wire format: POST / with Content-Type application/x-amz-json-1.1 and
 * X-Amz-Target TrentService.<Op>, a JSON body with AWS's field names,
 * binary fields in base64; errors are {"__type": ..., "message": ...}.
 * Throttling and 5xx answers (and transport failures) are retried with
 * exponential backoff and jitter.
 *
 * The connection may go through an address other than the endpoint's
 * host: the parent's outbound proxy (vsock:3:8000 on Nitro, unix:PATH
 * locally), a TCP-level hop.  TLS is still end to end with the endpoint's
 * hostname as SNI and as the name checked in its certificate, against the
 * system's CA store or a given CA file. */
#ifndef CLOISTER_KMS_H
#define CLOISTER_KMS_H

#pragma GCC visibility push(default)

#include "cloister/core/buf.h"
#include "cloister/core/error.h"
#include "cloister/enclave/nsm.h"
#include "cloister/core/slice.h"

#include <openssl/evp.h>
#include <stdbool.h>
#include <stdint.h>

/* ---- credentials --------------------------------------------------------- */

#define CL_AWS_KEY_ID_MAX 128
#define CL_AWS_SECRET_MAX 128
#define CL_AWS_TOKEN_MAX 4096
/* IMDS credentials are fetched again this long before they expire. */
#define CL_AWS_REFRESH_BEFORE_S (5 * 60)

typedef struct cl_aws_credentials {
    char access_key_id[CL_AWS_KEY_ID_MAX + 1];
    char secret_access_key[CL_AWS_SECRET_MAX + 1];
    char session_token[CL_AWS_TOKEN_MAX + 1]; /* "" when none */
    int64_t expiration;                       /* Unix seconds; 0: does not expire */
} cl_aws_credentials;

/* Wipes the secret fields. */
void cl_aws_credentials_wipe(cl_aws_credentials *c);

/* A source of credentials, safe to share between threads. */
typedef struct cl_aws_credentials_provider cl_aws_credentials_provider;

/* Given values (flags).  token may be NULL or "". */
CL_MUST_CHECK int cl_aws_credentials_static(const char *access_key_id, const char *secret_access_key,
                                            const char *session_token, cl_aws_credentials_provider **out);
/* AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN; CL_ENOTFOUND
 * when the first two are not both set. */
CL_MUST_CHECK int cl_aws_credentials_from_env(cl_aws_credentials_provider **out);
/* IMDSv2 at addr (tcp:/unix:/vsock: of `cloister host --imds`, or of IMDS
 * itself): a session token (PUT /latest/api/token), then the role
 * (GET .../iam/security-credentials/, unless role is given) and its
 * credentials, fetched again CL_AWS_REFRESH_BEFORE_S before they expire.
 * The first fetch happens here, so a start fails early and clearly. */
CL_MUST_CHECK int cl_aws_credentials_imds(const char *addr, const char *role, cl_aws_credentials_provider **out);
/* Current credentials (refreshed first when due). */
CL_MUST_CHECK int cl_aws_credentials_get(cl_aws_credentials_provider *p, cl_aws_credentials *out);
/* Forgets cached credentials so that the next get fetches (after the
 * service said they expired). No effect on static ones. */
void cl_aws_credentials_invalidate(cl_aws_credentials_provider *p);
/* The region from IMDS (placement/region); CL_EINVAL for other providers. */
CL_MUST_CHECK int cl_aws_credentials_imds_region(cl_aws_credentials_provider *p, char *out, size_t out_len);
/* This instance's EC2-internal name (meta-data/local-hostname), as
 * nitriding takes it for a key sync worker's address; CL_EINVAL for other
 * providers, CL_EPROTO for an answer that is not a host name. */
CL_MUST_CHECK int cl_aws_credentials_imds_local_hostname(cl_aws_credentials_provider *p, char *out, size_t out_len);
/* This instance's private IPv4 address (meta-data/local-ipv4), dotted
 * quad: a key sync worker's address that needs no DNS; CL_EPROTO for an
 * answer that is not one. */
CL_MUST_CHECK int cl_aws_credentials_imds_local_ipv4(cl_aws_credentials_provider *p, char *out, size_t out_len);
/* Where the credentials came from: "flags", "environment", "imds". */
const char *cl_aws_credentials_source(const cl_aws_credentials_provider *p);
/* How many times IMDS credentials were fetched (1 after creation). */
uint64_t cl_aws_credentials_fetches(const cl_aws_credentials_provider *p);
void cl_aws_credentials_provider_free(cl_aws_credentials_provider *p);

/* True when credentials expiring at `expiration` are due for a fetch at
 * `now` (both Unix seconds). */
bool cl_aws_credentials_due(int64_t expiration, int64_t now);
/* Parses IMDS's credentials JSON ({"Code": "Success", "AccessKeyId", ...,
 * "Expiration": "2026-12-01T18:00:00Z"}). */
CL_MUST_CHECK int cl_aws_credentials_parse_imds(const char *json, size_t len, cl_aws_credentials *out);

/* ---- CMS envelopes (CiphertextForRecipient) ------------------------------ */

/* What a strict reading of a CiphertextForRecipient found.  The shape KMS
 * sends is the only one accepted: ContentInfo envelopedData, exactly one
 * KeyTransRecipientInfo identified by subjectKeyIdentifier, RSAES-OAEP with
 * SHA-256 and MGF1-SHA-256 (empty label), content type data encrypted with
 * AES-256-CBC under a 16-byte IV, no originator info, no attributes.  BER
 * indefinite and definite lengths are both accepted.  Slices borrow from
 * the input. */
typedef struct cl_kms_cms_info {
    int version;      /* EnvelopedData version (2) */
    int ktri_version; /* 2: subjectKeyIdentifier */
    cl_slice subject_key_id;
    cl_slice encrypted_key;
    cl_slice iv;
    cl_buf content; /* the encrypted content, chunks of a constructed OCTET STRING joined */
} cl_kms_cms_info;

CL_MUST_CHECK int cl_kms_cms_parse(const uint8_t *data, size_t len, cl_kms_cms_info *out);
void cl_kms_cms_info_free(cl_kms_cms_info *info);

/* ---- the Recipient: an enclave's session key and its attestation ------- */

typedef struct cl_kms_recipient cl_kms_recipient;

/* A fresh RSA-2048 key; documents come from nsm (borrowed, may be NULL
 * when only cl_kms_recipient_open is used). */
CL_MUST_CHECK int cl_kms_recipient_new(cl_nsm *nsm, cl_kms_recipient **out);
/* The same with a given RSA key (a reference is taken); for tests. */
CL_MUST_CHECK int cl_kms_recipient_from_key(cl_nsm *nsm, EVP_PKEY *key, cl_kms_recipient **out);
/* The key's DER SubjectPublicKeyInfo (what goes in the document's public_key). */
cl_slice cl_kms_recipient_public_key(const cl_kms_recipient *r);
/* A fresh attestation document from the NSM carrying the public key. */
CL_MUST_CHECK int cl_kms_recipient_document(cl_kms_recipient *r, cl_buf *doc);
/* Opens a CiphertextForRecipient: strict parse, OpenSSL's CMS reading of
 * the same bytes must agree, then RSA-OAEP and AES-256-CBC.  plaintext is
 * replaced (a cl_buf, so it is wiped when freed). */
CL_MUST_CHECK int cl_kms_recipient_open(cl_kms_recipient *r, const uint8_t *cms, size_t len, cl_buf *plaintext);
void cl_kms_recipient_free(cl_kms_recipient *r);

/* ---- the client --------------------------------------------------------- */

typedef struct cl_kms_config {
    const char *region;   /* required */
    const char *endpoint; /* https://HOST[:PORT]; NULL: https://kms.REGION.amazonaws.com */
    const char *connect;  /* address dialed instead of HOST (the outbound proxy); NULL: direct */
    const char *ca_file;  /* PEM CA file; NULL: the system's store */
    cl_aws_credentials_provider *credentials; /* borrowed, required */
    cl_kms_recipient *recipient;              /* borrowed; NULL: answers in plaintext */
    unsigned max_attempts;                    /* 0: 5 */
    unsigned backoff_ms;                      /* first retry's delay before jitter; 0: 100 */
    unsigned timeout_ms;                      /* one attempt; 0: 10000 */
} cl_kms_config;

typedef struct cl_kms cl_kms;

CL_MUST_CHECK int cl_kms_new(const cl_kms_config *cfg, cl_kms **out);
void cl_kms_free(cl_kms *k);

typedef struct cl_kms_context_entry {
    const char *key, *value;
} cl_kms_context_entry;

typedef struct cl_kms_options {
    const char *key_id; /* Encrypt, GenerateDataKey: required; Decrypt: optional */
    const cl_kms_context_entry *context;
    size_t context_count;
    const char *encryption_algorithm; /* NULL: not sent (SYMMETRIC_DEFAULT) */
    const char *key_spec;             /* GenerateDataKey: "AES_256" (default) or "AES_128" */
    unsigned number_of_bytes;         /* GenerateDataKey instead of key_spec: 1..1024 */
} cl_kms_options;

/* ---- what a ciphertext is for ------------------------------------------ */

/* Every KMS ciphertext cloister opens is bound to its purpose by an
 * encryption context, set when it is made and required when it is opened.
 * KMS authenticates the context as additional data, so a ciphertext made
 * for one purpose cannot be opened as another: the parent, which stores
 * them all, cannot hand the enclave's TLS key to the key-holder as a
 * PKCS#11 token, nor swap two secrets' names.
 *   purpose=pkcs11-token, token=LABEL    a key-holder token's private key
 *   purpose=enclave-tls-key              `cloister enclave --tls-key-ciphertext`
 *   purpose=enclave-secret, name=NAME    `cloister enclave -secret NAME=...` */
#define CL_KMS_PURPOSE_PKCS11_TOKEN "pkcs11-token"
#define CL_KMS_PURPOSE_TLS_KEY "enclave-tls-key"
#define CL_KMS_PURPOSE_SECRET "enclave-secret"

typedef struct cl_kms_purpose_context {
    cl_kms_context_entry entries[2];
    size_t count;
} cl_kms_purpose_context;

/* The context of a purpose: name is the token label (pkcs11-token), the
 * secret's name (enclave-secret) or NULL (enclave-tls-key).  Borrows the
 * strings.  CL_EINVAL for an unknown purpose or a name missing or given
 * when the purpose takes none. */
CL_MUST_CHECK int cl_kms_purpose_context_make(const char *purpose, const char *name, cl_kms_purpose_context *out);
/* "PURPOSE" or "PURPOSE:NAME" (the --purpose syntax) into a context;
 * borrows spec (which it does not modify: name points after the colon). */
CL_MUST_CHECK int cl_kms_purpose_context_parse(const char *spec, char *purpose_out, size_t purpose_len,
                                               cl_kms_purpose_context *out);

CL_MUST_CHECK int cl_kms_encrypt(cl_kms *k, const cl_kms_options *o, const uint8_t *plaintext, size_t len,
                                 cl_buf *ciphertext_blob);
CL_MUST_CHECK int cl_kms_decrypt(cl_kms *k, const cl_kms_options *o, const uint8_t *ciphertext_blob, size_t len,
                                 cl_buf *plaintext);
CL_MUST_CHECK int cl_kms_generate_data_key(cl_kms *k, const cl_kms_options *o, cl_buf *plaintext,
                                           cl_buf *ciphertext_blob);
CL_MUST_CHECK int cl_kms_generate_random(cl_kms *k, size_t n, cl_buf *random);

/* One call as the caller made it: body (JSON, sent as it is) to
 * TrentService.<op>, signed with the client's credentials, retried as
 * every call (throttling, 5xx, transport; an expired token fetched again).
 * CL_OK once an HTTP answer came, whatever its status: *status and the
 * body, unchanged (AWS's error answers included) in answer, which is
 * replaced.  A negative cl_err when none came.  No Recipient is added:
 * the body is the caller's. */
CL_MUST_CHECK int cl_kms_call_raw(cl_kms *k, const char *op, const uint8_t *body, size_t len, long *status,
                                  cl_buf *answer);

/* After a call: KMS's KeyId (ARN) of the answer, "" if none. */
const char *cl_kms_key_id(const cl_kms *k);
/* After a failed call: AWS's error type ("AccessDeniedException"), "" if
 * the failure was not an AWS error answer. */
const char *cl_kms_error_type(const cl_kms *k);

/* Where the time of the calls went, summed over the client's life (us). */
typedef struct cl_kms_stats {
    uint64_t calls, attempts, retries;
    uint64_t attestation_us; /* NSM documents */
    uint64_t rsa_us;         /* opening CMS envelopes (RSA-OAEP + AES) */
    uint64_t network_us;     /* HTTP exchanges, including TLS and the proxy */
    uint64_t total_us;
} cl_kms_stats;
void cl_kms_get_stats(const cl_kms *k, cl_kms_stats *out);

/* ---- a whole set-up from settings (flags, config) ---------------------- */

typedef struct cl_kms_setup {
    const char *region;   /* else AWS_REGION, AWS_DEFAULT_REGION, then IMDS's */
    const char *endpoint, *proxy, *ca_file;
    /* credentials: these when given, else IMDSv2 at imds when given, else
     * the environment */
    const char *access_key_id, *secret_access_key, *session_token;
    const char *imds, *role;
    bool recipient;  /* Recipient forms, with documents from nsm */
    const char *nsm; /* address; NULL: $CLOISTER_NSM, else /dev/nsm */
    cl_nsm *nsm_client; /* or an open client (borrowed) */
    unsigned max_attempts, timeout_ms, backoff_ms;
} cl_kms_setup;

typedef struct cl_kms_session {
    cl_aws_credentials_provider *credentials;
    cl_nsm *nsm; /* owned when opened here */
    bool owns_nsm;
    cl_kms_recipient *recipient;
    cl_kms *kms;
    char region[64];
} cl_kms_session;

CL_MUST_CHECK int cl_kms_session_open(const cl_kms_setup *s, cl_kms_session *out);
void cl_kms_session_close(cl_kms_session *s);

/* "TrentService.Decrypt" etc. for "Decrypt". */
#define CL_KMS_TARGET_PREFIX "TrentService."
#define CL_KMS_CONTENT_TYPE "application/x-amz-json-1.1"

/* Exposed for tests: AWS's error answer as one message, and whether an
 * answer is worth a retry. */
CL_MUST_CHECK int cl_kms_parse_error(long status, const uint8_t *body, size_t len, char *type, size_t type_len,
                                     char *message, size_t message_len);
bool cl_kms_retryable(long status, const char *error_type);

#pragma GCC visibility pop

#endif

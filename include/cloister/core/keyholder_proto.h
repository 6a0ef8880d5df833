/* The key-holder's protocol: how the PKCS#11 module (one process per
 * p11-kit connection) and the provisioner talk to the one process inside
 * the enclave that holds the private keys.
 *
 * Frames on a stream socket: a big-endian u32 body length (1..CL_KH_MAX_FRAME),
 * then the body: a u8 message type and the message's fields in a fixed order.
 * Fields: u8, be32, be64, str (be16 length + bytes, no NUL, at most the
 * field's own limit) and blob (be32 length + bytes, at most its limit).
 * Every message is decoded through cl_cursor and must end exactly at the
 * end of its frame.  A reply is one frame: CL_KH_OK and the fields of the
 * request's answer, or CL_KH_ERR and a be32 status (enum cl_kh_status).
 *
 * Two sockets, two sets of messages: the token socket (the module: list,
 * login, sign, decrypt) and the provisioning socket (put and delete tokens,
 * status), which in a real deployment is the vsock port only the parent
 * instance reaches.  Each socket accepts only its own messages. */
#ifndef CLOISTER_KEYHOLDER_PROTO_H
#define CLOISTER_KEYHOLDER_PROTO_H

#pragma GCC visibility push(default)

#include "cloister/core/buf.h"
#include "cloister/core/cursor.h"
#include "cloister/core/error.h"
#include "cloister/core/slice.h"

#include <stdbool.h>
#include <stdint.h>

#define CL_KH_MAX_FRAME (1u << 20)
#define CL_KH_LABEL_MAX 32    /* a token label, as CK_TOKEN_INFO holds it */
#define CL_KH_PIN_MIN 4
#define CL_KH_PIN_MAX 64
#define CL_KH_ID_MAX 64
#define CL_KH_DATA_MAX 1024   /* sign/decrypt input: a digest, a DigestInfo, one RSA block */
#define CL_KH_DER_MAX 16384   /* one certificate or public key */
#define CL_KH_CHAIN_MAX 262144 /* a PEM certificate chain */
#define CL_KH_KEYREF_MAX 65536 /* a file path or a KMS ciphertext */
#define CL_KH_MAX_TOKENS 32
#define CL_KH_MAX_OBJECTS 8   /* per token: private key, public key, certificate */

enum cl_kh_type {
    /* token socket */
    CL_KH_LIST_TOKENS = 0x01,  /* -> tokens */
    CL_KH_LOGIN = 0x02,        /* slot, pin -> ok */
    CL_KH_LOGOUT = 0x03,       /* slot -> ok */
    CL_KH_LIST_OBJECTS = 0x04, /* slot -> objects */
    CL_KH_SIGN = 0x05,         /* slot, handle, op, hash, mgf, salt, data -> blob */
    CL_KH_DECRYPT = 0x06,      /* slot, handle, op, hash, mgf, label, data -> blob */
    CL_KH_GET_OBJECT = 0x07,   /* slot, handle -> objects (one): also a previous generation's */
    /* provisioning socket */
    CL_KH_PUT_TOKEN = 0x41,    /* label, pin, object label, key source, key ref, chain -> slot, generation */
    CL_KH_DELETE_TOKEN = 0x42, /* label -> ok */
    CL_KH_STATUS = 0x43,       /* -> tokens */
    /* replies */
    CL_KH_OK = 0x80,
    CL_KH_ERR = 0x81,
};

enum cl_kh_status {
    CL_KH_ST_MALFORMED = 1,     /* the request did not decode */
    CL_KH_ST_UNKNOWN_TYPE = 2,  /* not a message of this socket */
    CL_KH_ST_NO_SLOT = 3,
    CL_KH_ST_NO_OBJECT = 4,
    CL_KH_ST_PIN_INCORRECT = 5,
    CL_KH_ST_PIN_LOCKED = 6,
    CL_KH_ST_NOT_LOGGED_IN = 7,
    CL_KH_ST_MECHANISM = 8,     /* the operation does not fit the key */
    CL_KH_ST_DATA_INVALID = 9,  /* wrong input length or content */
    CL_KH_ST_DECRYPT_FAILED = 10,
    CL_KH_ST_EXPIRED = 11,      /* the token was not refreshed in time */
    CL_KH_ST_INTERNAL = 12,
    CL_KH_ST_BAD_KEY = 13,      /* provisioning: the key could not be read or does not match */
    CL_KH_ST_NOT_IMPLEMENTED = 14, /* provisioning: a key source this build cannot open */
    CL_KH_ST_BUSY = 15,         /* limits: too many tokens */
    CL_KH_ST_ALREADY_LOGGED_IN = 16,
    CL_KH_ST_KMS_REFUSED = 17,  /* provisioning: KMS would not open the ciphertext for this enclave */
    CL_KH_ST_KMS_UNAVAILABLE = 18, /* provisioning: KMS could not be reached (network, credentials, NSM) */
};

/* Raw operations; hash-then-sign mechanisms are hashed by the module. */
enum cl_kh_op {
    CL_KH_OP_ECDSA = 1,    /* input: a digest; output r || s, each the order's size */
    CL_KH_OP_RSA_PKCS = 2, /* PKCS#1 v1.5 type 1 over the input (a DigestInfo); decrypt: type 2 */
    CL_KH_OP_RSA_PSS = 3,  /* input: a digest of `hash`; mgf, salt */
    CL_KH_OP_RSA_X509 = 4, /* raw RSA on one block */
    CL_KH_OP_RSA_OAEP = 5, /* decrypt only: hash, mgf, label */
};

enum cl_kh_hash { CL_KH_HASH_NONE = 0, CL_KH_HASH_SHA1 = 1, CL_KH_HASH_SHA224 = 2, CL_KH_HASH_SHA256 = 3,
                  CL_KH_HASH_SHA384 = 4, CL_KH_HASH_SHA512 = 5 };

enum cl_kh_class { CL_KH_CLASS_PRIVATE_KEY = 1, CL_KH_CLASS_PUBLIC_KEY = 2, CL_KH_CLASS_CERTIFICATE = 3 };
enum cl_kh_key_type { CL_KH_KEY_NONE = 0, CL_KH_KEY_RSA = 1, CL_KH_KEY_EC = 2 };

enum cl_kh_key_source {
    CL_KH_SRC_FILE = 1, /* key_ref: a PEM file's name inside the key-holder's key directory */
    CL_KH_SRC_KMS = 2,  /* key_ref: a KMS CiphertextBlob, opened with Decrypt and a Recipient */
};

#define CL_KH_TOKEN_LOCKED 0x01
#define CL_KH_TOKEN_COUNT_LOW 0x02
#define CL_KH_TOKEN_FINAL_TRY 0x04
#define CL_KH_TOKEN_EXPIRED 0x08

typedef struct cl_kh_token_info {
    uint32_t slot;
    cl_slice label;
    cl_slice serial;
    uint8_t flags;
    uint64_t generation;   /* changes on every rotation */
    uint64_t age_ms;       /* since the last put (provisioning or refresh) */
} cl_kh_token_info;

typedef struct cl_kh_object_info {
    uint32_t handle;
    uint8_t klass;    /* enum cl_kh_class */
    uint8_t key_type; /* enum cl_kh_key_type */
    cl_slice id;
    cl_slice label;
    cl_slice der;     /* keys: SubjectPublicKeyInfo; certificates: the certificate */
} cl_kh_object_info;

typedef struct cl_kh_request {
    uint8_t type;
    uint32_t slot, handle, op, salt_len;
    uint8_t hash, mgf_hash, key_source;
    cl_slice pin, label, object_label, key_ref, chain, data, oaep_label;
} cl_kh_request;

/* ---- framing ---- */
/* Reads one frame's body into *body (reset first).  CL_EIO: EOF or a socket
 * error (EOF before the first byte: CL_EIO with *eof set when eof != NULL);
 * CL_EPARSE: a length of 0 or above `max`. */
CL_MUST_CHECK int cl_kh_read_frame(int fd, size_t max, cl_buf *body, bool *eof);
/* Writes the length and the body in one call (retrying short writes). */
CL_MUST_CHECK int cl_kh_write_frame(int fd, const uint8_t *body, size_t len);

/* ---- encoding ---- */
CL_MUST_CHECK int cl_kh_put_str(cl_buf *b, const void *s, size_t len);
CL_MUST_CHECK int cl_kh_put_blob(cl_buf *b, const void *s, size_t len);
CL_MUST_CHECK int cl_kh_get_str(cl_cursor *c, size_t max, cl_slice *out);
CL_MUST_CHECK int cl_kh_get_blob(cl_cursor *c, size_t max, cl_slice *out);

/* Encodes a request (fields by r->type) into b (appended). */
CL_MUST_CHECK int cl_kh_request_encode(cl_buf *b, const cl_kh_request *r);
/* Decodes a request body, checking every field's limit and the end. The
 * slices borrow from data.  provisioning selects which socket's messages
 * are accepted (CL_ENOTFOUND for a type of the other socket or unknown). */
CL_MUST_CHECK int cl_kh_request_decode(const uint8_t *data, size_t len, bool provisioning, cl_kh_request *out);

CL_MUST_CHECK int cl_kh_reply_error(cl_buf *b, uint32_t status);
CL_MUST_CHECK int cl_kh_encode_token(cl_buf *b, const cl_kh_token_info *t);
CL_MUST_CHECK int cl_kh_encode_object(cl_buf *b, const cl_kh_object_info *o);

/* Splits a reply body: *status is 0 for CL_KH_OK (and *payload the rest),
 * else the error status (payload empty).  CL_EPROTO when neither. */
CL_MUST_CHECK int cl_kh_reply_split(const uint8_t *data, size_t len, uint32_t *status, cl_cursor *payload);
/* Reply payloads: a be16 count then the entries.  At most `max` entries;
 * CL_ELIMIT beyond. */
CL_MUST_CHECK int cl_kh_decode_tokens(cl_cursor *c, cl_kh_token_info *out, size_t max, size_t *count);
CL_MUST_CHECK int cl_kh_decode_objects(cl_cursor *c, cl_kh_object_info *out, size_t max, size_t *count);

const char *cl_kh_status_name(uint32_t status);
bool cl_kh_label_valid(cl_slice label);

#pragma GCC visibility pop

#endif

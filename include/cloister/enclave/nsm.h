/* The Nitro Secure Module: its CBOR protocol, a client over either
 * transport (the /dev/nsm device or the simulator's unix socket), and the
 * error names of the real NSM.
 *
 * Wire format (as aws-nitro-enclaves-nsm-api's serde encoding): requests
 * and responses are externally tagged enums, unit variants as a bare text
 * string ("DescribeNSM", "GetRandom", "LockPCR", "LockPCRs"), the others as
 * a one-entry map {"Name": {fields}}; absent options are null; errors are
 * {"Error": "Name"}. */
#ifndef CLOISTER_NSM_H
#define CLOISTER_NSM_H

#pragma GCC visibility push(default)

#include "cloister/core/buf.h"
#include "cloister/core/cbor.h"
#include "cloister/core/error.h"

#include <stdbool.h>
#include <stdint.h>

#define CL_NSM_REQUEST_MAX 0x1000
#define CL_NSM_RESPONSE_MAX 0x3000
#define CL_NSM_DEFAULT_DEVICE "/dev/nsm"
#define CL_NSM_ENV "CLOISTER_NSM"

enum cl_nsm_error_code {
    CL_NSM_SUCCESS,
    CL_NSM_INVALID_ARGUMENT,
    CL_NSM_INVALID_INDEX,
    CL_NSM_INVALID_RESPONSE,
    CL_NSM_READ_ONLY_INDEX,
    CL_NSM_INVALID_OPERATION,
    CL_NSM_BUFFER_TOO_SMALL,
    CL_NSM_INPUT_TOO_LARGE,
    CL_NSM_INTERNAL_ERROR,
};
const char *cl_nsm_error_name(int code); /* "ReadOnlyIndex", ... */

enum cl_nsm_op {
    CL_NSM_DESCRIBE_PCR,
    CL_NSM_EXTEND_PCR,
    CL_NSM_LOCK_PCR,
    CL_NSM_LOCK_PCRS,
    CL_NSM_DESCRIBE_NSM,
    CL_NSM_ATTESTATION,
    CL_NSM_GET_RANDOM,
};

typedef struct cl_nsm_request {
    int op;
    uint16_t index;  /* DESCRIBE_PCR, EXTEND_PCR, LOCK_PCR */
    uint16_t range;  /* LOCK_PCRS */
    cl_slice data;   /* EXTEND_PCR */
    bool has_user_data, has_nonce, has_public_key; /* ATTESTATION: false = null */
    cl_slice user_data, nonce, public_key;
} cl_nsm_request;

typedef struct cl_nsm_description {
    uint16_t version_major, version_minor, version_patch;
    char module_id[128];
    uint16_t max_pcrs;
    uint32_t locked_pcrs; /* bit i set when PCR i is locked (max_pcrs <= 32) */
    char digest[16];      /* "SHA384" */
} cl_nsm_description;

typedef struct cl_nsm_response {
    int op;         /* which success variant, or -1 for Error */
    int error_code; /* for Error */
    bool lock;      /* DESCRIBE_PCR */
    cl_slice data;  /* DESCRIBE_PCR, EXTEND_PCR: PCR value; ATTESTATION: document; GET_RANDOM: random */
    cl_nsm_description description; /* DESCRIBE_NSM */
} cl_nsm_response;

/* Protocol codec, shared by the client and the simulator.  Decoded slices
 * borrow from the input bytes; doc owns the CBOR tree and must be freed
 * (it is left empty on failure).  Decoding rejects unknown variants and
 * fields, missing fields, wrong types and integers beyond u16; like serde,
 * it accepts fields in any order and treats an absent Attestation option
 * as null.  Field sizes are the NSM's business (InputTooLarge), not the
 * decoder's, except that responses must carry 1..64-byte PCR values and
 * non-empty documents and random bytes. */
CL_MUST_CHECK int cl_nsm_request_encode(const cl_nsm_request *req, cl_buf *out);
CL_MUST_CHECK int cl_nsm_request_decode(const uint8_t *data, size_t len, cl_nsm_request *req,
                                        cl_cbor_doc *doc);
CL_MUST_CHECK int cl_nsm_response_encode(const cl_nsm_response *resp, cl_buf *out);
CL_MUST_CHECK int cl_nsm_response_decode(const uint8_t *data, size_t len, cl_nsm_response *resp,
                                         cl_cbor_doc *doc);

/* The variant name of an op: "DescribePCR", ..., "GetRandom". */
const char *cl_nsm_op_name(int op);

/* Simulator socket framing: a 4-byte big-endian length, then that many
 * bytes, in both directions.  frame_read fails with CL_ELIMIT (before
 * reading the body) when the announced length exceeds max; *eof is set
 * instead of failing when the peer closed cleanly before a new frame. */
CL_MUST_CHECK int cl_nsm_frame_write(int fd, const uint8_t *data, size_t len);
CL_MUST_CHECK int cl_nsm_frame_read(int fd, size_t max, cl_buf *out, bool *eof);

/* A client.  addr: "unix:PATH" (simulator), a device path such as
 * "/dev/nsm", or NULL for $CLOISTER_NSM, else /dev/nsm. */
typedef struct cl_nsm cl_nsm;
CL_MUST_CHECK int cl_nsm_open(const char *addr, cl_nsm **out);
void cl_nsm_close(cl_nsm *nsm);

/* A client over any transport: fn carries one request to an NSM and
 * appends its response to resp (used for the in-process simulator). */
typedef int (*cl_nsm_exchange_fn)(void *ctx, const uint8_t *req, size_t req_len, cl_buf *resp);
CL_MUST_CHECK int cl_nsm_open_custom(cl_nsm_exchange_fn fn, void *ctx, cl_nsm **out);

/* One raw request/response exchange over the transport; resp is replaced.
 * A client is safe to share between threads (exchanges are serialized);
 * a socket client reconnects when the simulator closed its connection. */
CL_MUST_CHECK int cl_nsm_exchange(cl_nsm *nsm, const uint8_t *req, size_t req_len, cl_buf *resp);

/* Typed calls.  An NSM error answer returns CL_ENSM with the error's name
 * in the message; cl_nsm_last_error() gives its code. */
int cl_nsm_last_error(const cl_nsm *nsm);
CL_MUST_CHECK int cl_nsm_describe(cl_nsm *nsm, cl_nsm_description *out);
CL_MUST_CHECK int cl_nsm_describe_pcr(cl_nsm *nsm, uint16_t index, bool *locked, cl_buf *value);
CL_MUST_CHECK int cl_nsm_extend_pcr(cl_nsm *nsm, uint16_t index, const uint8_t *data, size_t len,
                                    cl_buf *value);
CL_MUST_CHECK int cl_nsm_lock_pcr(cl_nsm *nsm, uint16_t index);
CL_MUST_CHECK int cl_nsm_lock_pcrs(cl_nsm *nsm, uint16_t range);
/* Fills len bytes, calling GetRandom as often as needed. */
CL_MUST_CHECK int cl_nsm_get_random(cl_nsm *nsm, uint8_t *out, size_t len);
/* NULL pointers are sent as null (absent). */
CL_MUST_CHECK int cl_nsm_attestation(cl_nsm *nsm, const uint8_t *user_data, size_t user_data_len,
                                     const uint8_t *nonce, size_t nonce_len,
                                     const uint8_t *public_key, size_t public_key_len,
                                     cl_buf *document);

#pragma GCC visibility pop

#endif

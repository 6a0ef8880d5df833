/* The NSM simulator engine: a faithful Nitro Secure Module in a library,
 * so that `cloister nsm-sim`, unit tests and fuzzers share one
 * implementation.
 *
 * It keeps 32 SHA-384 PCRs (0..15 locked from the start, as on real
 * hardware), answers every request of the NSM protocol with the real
 * error codes, and signs attestation documents in AWS's exact format with
 * a certificate chain root -> regional -> zonal -> instance -> leaf.  The
 * four CA keys and certificates live in a state directory and are reused
 * across starts (expired intermediates are re-issued from the stored
 * root); the leaf key lives in memory and its ~3-hour certificate is
 * renewed when it expires.  All entry points are thread-safe. */
#ifndef CLOISTER_NSM_SIM_H
#define CLOISTER_NSM_SIM_H

#pragma GCC visibility push(default)

#include "cloister/core/buf.h"
#include "cloister/core/error.h"
#include "cloister/enclave/nsm.h"

#include <stdbool.h>
#include <stdint.h>

#define CL_NSM_SIM_PCRS 32
#define CL_NSM_SIM_PCR_LEN 48
#define CL_NSM_SIM_FIELD_MAX 1024       /* user_data, nonce, public_key */
#define CL_NSM_SIM_EXTEND_MAX 1024      /* ExtendPCR data */
#define CL_NSM_SIM_RANDOM_LEN 256       /* bytes per GetRandom */
#define CL_NSM_SIM_INSTANCE_ID_MAX 32 /* real ids have 19 characters */
#define CL_NSM_SIM_LEAF_LIFETIME_MS (3ull * 3600 * 1000)

/* Milliseconds since the epoch; tests substitute their own clock. */
typedef uint64_t (*cl_nsm_sim_clock_fn)(void *ctx);
/* One log line without a newline, key=value style. */
typedef void (*cl_nsm_sim_log_fn)(void *ctx, const char *line);

typedef struct cl_nsm_sim_config {
    const char *state_dir;   /* required; created (0700) when missing */
    const char *instance_id; /* NULL: generated once and kept in state_dir/instance-id */
    const char *image_path;  /* PCR0 = SHA-384 of this file's bytes */
    bool debug;              /* PCR0..2 all zero, as for a debug-mode enclave */
    uint32_t pcr_mask;       /* bit i: PCR i starts as pcr_values[i] */
    uint8_t pcr_values[CL_NSM_SIM_PCRS][CL_NSM_SIM_PCR_LEN];
    cl_nsm_sim_clock_fn clock; /* NULL: the real clock */
    void *clock_ctx;
    cl_nsm_sim_log_fn log; /* NULL: silent */
    void *log_ctx;
} cl_nsm_sim_config;

typedef struct cl_nsm_sim cl_nsm_sim;

/* Starting PCR values when nothing overrides them: PCR0..2 are SHA-384 of
 * "cloister nsm-sim PCR<n>", PCR0 from the image when one is given, PCR4 is
 * SHA-384(48 zero bytes || instance id), the rest zero.  Overrides apply
 * after these; debug then zeroes PCR0..2. */
CL_MUST_CHECK int cl_nsm_sim_new(const cl_nsm_sim_config *config, cl_nsm_sim **out);
void cl_nsm_sim_free(cl_nsm_sim *sim);

/* Answers one request.  Bad requests get an Error response (that is a
 * success of this call); only internal failures return an error. */
CL_MUST_CHECK int cl_nsm_sim_handle(cl_nsm_sim *sim, const uint8_t *req, size_t len, cl_buf *resp);

/* Serves one connected stream socket (framed as cl_nsm_frame_*) until the
 * peer closes it or sends a frame over the limits; does not close fd. */
CL_MUST_CHECK int cl_nsm_sim_serve(cl_nsm_sim *sim, int fd);

/* A client talking to sim in-process. */
CL_MUST_CHECK int cl_nsm_open_sim(cl_nsm_sim *sim, cl_nsm **out);

const char *cl_nsm_sim_root_pem_path(const cl_nsm_sim *sim);
const char *cl_nsm_sim_module_id(const cl_nsm_sim *sim);
const char *cl_nsm_sim_instance_id(const cl_nsm_sim *sim);

#pragma GCC visibility pop

#endif

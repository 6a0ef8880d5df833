/* cloister enclave -tap: what /enclave/config says about tap0 and the egress policy. */
#ifndef CLOISTER_SRC_ENCLAVE_TAP_H
#define CLOISTER_SRC_ENCLAVE_TAP_H
#include "cloister/enclave/tap_relay.h"

#include <jansson.h>

/* A new JSON object: the interface's settings and the policy (file,
 * SHA-256 of its bytes, the allow and deny rules as written). */
json_t *enclave_tap_config(const cl_tap_relay *r, const cl_tap_settings *s);
#endif

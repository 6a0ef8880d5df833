/* cloister host's TAP options (--tap and its companions): a section of the
 * host's option table over its own struct, and the bridge's configuration
 * built from it. */
#ifndef CLOISTER_SRC_HOST_TAP_H
#define CLOISTER_SRC_HOST_TAP_H

#include "cloister/core/options.h"
#include "cloister/host/tap_bridge.h"

typedef struct host_tap_settings {
    char *listen, *dev, *gateway, *enclave, *dns, *offload;
    unsigned mtu;
    cl_opt_list forward, loopback;
} host_tap_settings;

const cl_opt *host_tap_options(size_t *count);

/* The bridge's configuration.  With the IMDS gate (imds true) the gate
 * also listens on the gateway address (*imds_listen), where the enclave's
 * 169.254.169.254:80 is sent. */
CL_MUST_CHECK int host_tap_config(const host_tap_settings *t, bool imds, const char *dns_server, cl_tap_config *cfg,
                                  cl_address *imds_listen);

#endif

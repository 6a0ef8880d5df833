/* The enclave's TAP network (as nitriding's tap0, speaking gvproxy's stream
 * protocol: core/tap_frames.h), with the egress policy enforced inside.
 *
 * Start: tap0 is created (/dev/net/tun, IFF_TAP|IFF_NO_PI) and configured
 * as nitriding does it: MAC, address, MTU, up, default route through the
 * gateway, and resolv.conf naming the gateway as DNS server; lo is brought
 * up.  A relay thread then connects to the parent, sends POST /connect and
 * moves frames both ways; every outbound frame is judged by the egress
 * policy (enclave/egress_packet.h) when one is given.  When the parent goes
 * away (or sends a malformed stream) the stream is closed and re-opened
 * with backoff; tap0 and its configuration stay, so connections
 * re-establish by themselves.  Used by `cloister tap` and `cloister
 * enclave --tap`. */
#ifndef CLOISTER_TAP_RELAY_H
#define CLOISTER_TAP_RELAY_H
#pragma GCC visibility push(default)

#include "cloister/core/buf.h"
#include "cloister/core/error.h"
#include "cloister/core/options.h"
#include "cloister/enclave/egress_policy.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct cl_tap_settings {
    char *name;          /* --tap-name: tap0 */
    char *address;       /* --tap-address: 192.168.127.2/24 */
    char *gateway;       /* --tap-gateway: 192.168.127.1 (and the DNS server) */
    unsigned mtu;        /* --tap-mtu: 1500 */
    char *mac;           /* --tap-mac: ba:aa:ad:c0:ff:ee (nitriding's) */
    char *parent;        /* --tap-parent: vsock:3:1024 */
    char *resolv_conf;   /* --tap-resolv-conf: /run/resolvconf/resolv.conf; "" writes none */
    char *egress_policy; /* --egress-policy FILE; NULL: no policy, every frame passes */
    unsigned backoff_max_ms; /* --tap-reconnect-max */
    unsigned offload_wait_ms; /* --tap-offload-wait */
    char *offload;           /* --tap-offload auto|off: offer checksum/TSO offloads to the parent (core/tap_vnet.h) */
} cl_tap_settings;

/* The option table both commands share (fields of cl_tap_settings). */
const cl_opt *cl_tap_options(size_t *count);
/* Checks the values beyond their types (addresses, MAC): CL_EINVAL naming the option. */
CL_MUST_CHECK int cl_tap_settings_check(const cl_tap_settings *s);

typedef struct cl_tap_relay cl_tap_relay;

/* Loads the policy (its SHA-256 logged), creates and configures the
 * device, and starts the relay thread.  Fails (with nothing left behind)
 * when the device cannot be made or the policy is bad; a parent that is
 * not there yet is not a failure: the relay keeps trying. */
CL_MUST_CHECK int cl_tap_relay_start(const cl_tap_settings *s, cl_tap_relay **out);
/* Stops the threads, closes the stream and the device (the kernel removes
 * tap0 and its routes with it), frees r. */
void cl_tap_relay_stop(cl_tap_relay *r);

/* NULL without --egress-policy. */
const cl_egress_policy *cl_tap_relay_policy(const cl_tap_relay *r);
/* Appends the relay's Prometheus metrics, names prefixed by ns + "_". */
CL_MUST_CHECK int cl_tap_relay_metrics(cl_tap_relay *r, const char *ns, cl_buf *out);

#pragma GCC visibility pop
#endif

/* The parent's side of the enclave's TAP network (cloister host --tap).
 *
 * The enclave relays the Ethernet frames of its tap0 over one stream
 * (vsock in production), opened as gvproxy's clients open it: an HTTP/1.1
 * `POST /connect` head, no answer, then frames each preceded by its length
 * (16 bits, little-endian).  Here the frames go to and come from a TAP
 * device of the parent (192.168.127.1/24 by default), and the kernel's own
 * stack routes them: nftables (Debian's nft, run as a program) masquerades
 * the enclave's traffic to the outside, publishes enclave ports
 * (--tap-forward) and sends the enclave's IMDS traffic to the IMDS gate;
 * there is no user-mode TCP/IP stack here.  DNS for the enclave is answered
 * at the gateway address, by a small relay to the parent's resolver or by
 * Debian's dnsmasq.
 *
 * All the rules live in one table, `inet cloister_tap_<dev>`, replaced as a
 * whole at start (a table left by a crashed run goes in the same nft
 * transaction) and deleted at stop.  The device is a non-persistent TAP:
 * the kernel removes it when the last descriptor closes, so a crash does
 * not leave it behind either.
 *
 * The relay runs in a process of its own (forked at open, before any
 * thread exists), so that it never shares a descriptor table or a lock with
 * the host's workers.  One enclave stream at a time: a new stream whose
 * handshake completes replaces the previous one (an enclave that restarted
 * reconnects).  The handshake and the framing are read with
 * core/tap_frames.h, the enclave side's own codec; a stream that breaks the
 * framing (a length shorter than an Ethernet header or longer than the
 * device's MTU allows) is closed. */
#ifndef CLOISTER_TAP_BRIDGE_H
#define CLOISTER_TAP_BRIDGE_H

#pragma GCC visibility push(default)

#include "cloister/core/address.h"
#include "cloister/core/error.h"
#include "cloister/core/tap_frames.h"

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define CL_TAP_DEFAULT_LISTEN "vsock:4294967295:1024" /* VMADDR_CID_ANY, gvproxy's port */
#define CL_TAP_DEFAULT_DEV "cloister0"
#define CL_TAP_DEFAULT_GATEWAY "192.168.127.1"
#define CL_TAP_DEFAULT_ENCLAVE "192.168.127.2"
#define CL_TAP_DEFAULT_PREFIX 24
#define CL_TAP_DEFAULT_MTU 1500
#define CL_TAP_IMDS_GATE_PORT 8002 /* the IMDS gate's listener on the gateway address */
#define CL_TAP_MAX_FORWARDS 64
#define CL_TAP_MAX_MTU (CL_TAP_FRAME_LIMIT - CL_TAP_ETH_HEADER - 4) /* a VLAN tag */

enum cl_tap_dns { CL_TAP_DNS_RELAY, CL_TAP_DNS_DNSMASQ, CL_TAP_DNS_OFF };

typedef struct cl_tap_forward {
    uint16_t port;         /* on the parent's own addresses */
    uint16_t enclave_port; /* on the enclave's address */
} cl_tap_forward;

typedef struct cl_tap_config {
    cl_address listen;       /* the enclave's stream */
    char dev[16];            /* the TAP device (IFNAMSIZ) */
    struct in_addr gateway;  /* the device's address: the enclave's gateway and DNS */
    struct in_addr enclave;  /* the enclave's tap0 address (published ports go there) */
    unsigned prefix;         /* of both */
    unsigned mtu;
    cl_tap_forward forwards[CL_TAP_MAX_FORWARDS];
    size_t forward_count;
    /* the parent's own 127.0.0.1:PORT services the enclave may reach at
     * gateway:PORT (cloister dev's kms-local); none by default */
    uint16_t loopback[CL_TAP_MAX_FORWARDS];
    size_t loopback_count;
    int dns;                 /* enum cl_tap_dns */
    const char *dns_server;  /* "IP[:PORT]" upstream for the relay or dnsmasq; NULL: /etc/resolv.conf's */
    uint16_t imds_port;      /* non-zero: DNAT the enclave's 169.254.169.254:80 to gateway:imds_port */
    bool offload;            /* accept the enclave's offload offer (core/tap_vnet.h); true by default */
    const char *nft;         /* the nft program (NULL: "nft" in $PATH) */
    const char *dnsmasq;     /* the dnsmasq program (NULL: "dnsmasq" in $PATH) */
} cl_tap_config;

typedef struct cl_tap_bridge cl_tap_bridge;

/* Fills cfg with the defaults above (listen, dev, addresses, MTU, relay DNS). */
void cl_tap_config_defaults(cl_tap_config *cfg);

/* "PORT=ENCLAVE_PORT" (or a bare PORT, the same on both sides). */
CL_MUST_CHECK int cl_tap_forward_parse(const char *text, cl_tap_forward *out);

/* Checks cfg (names, addresses in one subnet, MTU), then: replaces the
 * nft table (and so any leftover of a crashed run), makes the device with
 * its address and MTU, brings it up, enables IPv4 forwarding, opens the DNS
 * service and the stream's listener, and forks the relay process.  Needs
 * CAP_NET_ADMIN.  Call before any thread is started. */
CL_MUST_CHECK int cl_tap_bridge_open(const cl_tap_config *cfg, cl_tap_bridge **out);

/* Blocks SIGTERM, SIGINT and SIGCHLD and waits for one of the first two, or
 * for the relay or dnsmasq to exit (an error).  For a host with nothing
 * else to run. */
CL_MUST_CHECK int cl_tap_bridge_wait(cl_tap_bridge *b);

/* The relay process, or 0 (to tell it from the host's other children). */
pid_t cl_tap_bridge_pid(const cl_tap_bridge *b);

/* Stops the relay and dnsmasq, deletes the table and the device; NULL is
 * fine.  Errors are logged: a stop has no one to return them to. */
void cl_tap_bridge_close(cl_tap_bridge *b);

#pragma GCC visibility pop

#endif

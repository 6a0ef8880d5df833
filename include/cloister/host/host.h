/* The parent-instance side of an enclave: byte forwarding between any two
 * addresses (tcp -> vsock inbound, vsock -> DNS name outbound) and the
 * enclave's gate to the instance metadata service (IMDS).
 *
 * Event-loop processes, one per core by default, each single-threaded
 * with one edge-triggered epoll loop; listening sockets are shared and
 * each connection lives in the process that accepted it.  Separate
 * processes rather than threads, because each has its own descriptor
 * table: a forwarded connection costs two descriptors, and with the
 * common hard limit of 20000 a single process could not hold 10,000.
 * The parent supervises the workers and re-resolves DNS names into
 * shared memory; the workers read the current addresses from there.
 *
 * Bytes move with splice() through a pipe where both sockets allow it
 * (TCP and unix stream sockets) and with read()/write() otherwise; pipes
 * and buffers are borrowed from a per-process pool only while bytes are in
 * flight, so an idle connection holds nothing but its two sockets and
 * about 200 bytes of state.  A side's EOF becomes shutdown(SHUT_WR) on the
 * other side; a connection ends when both directions have ended, on an
 * error, or after --idle-timeout without a byte either way. */
#ifndef CLOISTER_HOST_H
#define CLOISTER_HOST_H

#pragma GCC visibility push(default)

#include "cloister/core/address.h"
#include "cloister/core/error.h"
#include "cloister/host/watchdog.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

enum cl_route_kind {
    CL_ROUTE_FORWARD,  /* --forward LISTEN=DEST */
    CL_ROUTE_OUTBOUND, /* --outbound LISTEN=HOST:PORT (and vsock-proxy) */
    CL_ROUTE_IMDS,     /* --imds LISTEN, to --imds-endpoint */
};

typedef struct cl_host_route {
    int kind;
    cl_address listen;
    cl_address dest;     /* where connections go; for IMDS the endpoint (tcp) */
    bool proxy_protocol; /* send a PROXY protocol v2 header before the client's bytes */
    /* A load balancer's health check of the enclave (forward only): while
     * the host drains, answered 503 here instead of forwarded. */
    bool health;
} cl_host_route;

#define CL_HOST_MAX_WORKERS 64
#define CL_HOST_MAX_ADDRS 16 /* addresses kept per DNS name */

typedef struct cl_host_config {
    const cl_host_route *routes;
    size_t route_count;
    int family;                  /* AF_UNSPEC, or AF_INET / AF_INET6 only, for DNS names */
    unsigned workers;            /* event-loop processes; 0: one per online core */
    unsigned max_connections;    /* open connections across all workers */
    unsigned idle_timeout_s;     /* no byte either way for this long: closed */
    unsigned connect_timeout_s;  /* to reach a destination, all its addresses */
    unsigned resolve_interval_s; /* DNS names are resolved again after their TTL, at most this */
    const char *dns_server;      /* "IP[:PORT]" to ask instead of /etc/resolv.conf's servers, or NULL */
    bool no_splice;              /* always read()/write() */
    /* vsock-proxy's allowlist for the outbound routes, or NULL.  Every
     * resolution of an outbound destination's name is checked against it,
     * address by address, the first at start and each one after a TTL:
     * an address that matches no entry is never used (DNS rebinding), and
     * when none does the previous addresses stay, logged as refused. */
    const struct cl_allowlist *allowlist;
    /* The enclave whose life the host owns (started, health-checked,
     * restarted, stopped on SIGTERM), or NULL.  When the watchdog gives up,
     * the host stops too and cl_host_run fails. */
    const cl_watchdog_config *watchdog;
    /* On SIGTERM: for drain_grace_ms (when a route has `health`) health
     * checks are answered 503 while connections are still forwarded, so the
     * load balancer stops sending them; then the listeners close and the
     * connections open have drain_timeout_ms to end (the watchdog's enclave
     * drains meanwhile: it is stopped at once, and its stop drains it).
     * Both 0: everything is cut at once. */
    unsigned drain_grace_ms, drain_timeout_ms;
} cl_host_config;

/* getaddrinfo() for a stream socket, limited to family (AF_UNSPEC: both),
 * in the resolver's order; lens[i] is the length of out[i]. */
CL_MUST_CHECK int cl_host_resolve(const char *host, unsigned port, int family, struct sockaddr_storage *out,
                                  socklen_t *lens, size_t max, size_t *n);

/* Formats an IPv4/IPv6 address (with port when port is true), a unix path
 * or a vsock CID:port, for logs. */
void cl_host_sockaddr_text(const struct sockaddr *sa, bool port, char *out, size_t out_len);

/* Opens the listeners, starts the workers and runs until SIGTERM or
 * SIGINT (which are blocked in the calling thread for the duration).
 * Returns 0 after a clean stop, or an error from startup. */
CL_MUST_CHECK int cl_host_run(const cl_host_config *cfg);

#pragma GCC visibility pop

#endif

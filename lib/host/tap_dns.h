/* The TAP bridge's DNS relay (lib/host/tap_bridge.c runs it in its relay
 * process): queries to the gateway's port 53 from the enclave's subnet go to
 * the parent's resolver, over UDP with a fresh random ID per query upstream,
 * over TCP as a byte relay.  Lib-private. */
#ifndef CLOISTER_HOST_TAP_DNS_H
#define CLOISTER_HOST_TAP_DNS_H

#include "cloister/core/error.h"

#include <netinet/in.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define TAP_DNS_TCP_MAX 16
#define TAP_DNS_POLLFDS (3 + 2 * TAP_DNS_TCP_MAX)

typedef struct tap_dns tap_dns;

/* The upstream resolver: server ("IP", "IP:PORT", "[v6]:PORT"), or with
 * NULL the first nameserver of /etc/resolv.conf; text gets its form. */
CL_MUST_CHECK int tap_dns_upstream(const char *server, struct sockaddr_storage *ss, socklen_t *len, char *text,
                                   size_t text_len);

/* Takes udp and tcp (bound to the gateway's port 53; closed by tap_dns_free). */
CL_MUST_CHECK int tap_dns_new(int udp, int tcp, struct in_addr gateway, unsigned prefix,
                              const struct sockaddr_storage *upstream, socklen_t upstream_len, const char *upstream_text,
                              tap_dns **out);

/* Fills pfd[0..TAP_DNS_POLLFDS) and returns the poll timeout it needs (ms,
 * -1 for none); after poll(), tap_dns_serve with the same array. */
int tap_dns_poll(tap_dns *d, struct pollfd *pfd, uint64_t now_ms);
void tap_dns_serve(tap_dns *d, const struct pollfd *pfd, uint64_t now_ms);

void tap_dns_free(tap_dns *d);

#endif

/* Name resolution that knows how long its answer holds.
 *
 * getaddrinfo() gives addresses but not their DNS TTL, and a proxy that
 * outlives its resolution must look again when the TTL has passed.  So a
 * name is resolved as a stub resolver would: names in /etc/hosts from
 * there (no TTL), others with A/AAAA queries to the configured DNS servers
 * (res_nquery; /etc/resolv.conf, or one given server), whose answers are
 * parsed here through the cursor, addresses and the smallest TTL of the
 * answer records (CNAMEs included).  When DNS gives nothing, getaddrinfo()
 * decides (no TTL).  IP literals resolve to themselves. */
#ifndef CLOISTER_DNS_H
#define CLOISTER_DNS_H

#pragma GCC visibility push(default)

#include "cloister/core/error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define CL_DNS_MAX_ADDRS 16

typedef struct cl_dns_result {
    struct sockaddr_storage addrs[CL_DNS_MAX_ADDRS]; /* ports set */
    socklen_t lens[CL_DNS_MAX_ADDRS];
    size_t count;
    bool ttl_known;   /* from DNS answers */
    uint32_t ttl_s;   /* the smallest TTL of the records used */
    const char *source; /* "literal", "hosts", "dns", "getaddrinfo" */
} cl_dns_result;

/* family: AF_UNSPEC (IPv4 then IPv6 answers), AF_INET or AF_INET6.
 * server: "IP" or "IP:PORT" ([v6]:PORT) to ask instead of resolv.conf's, or
 * NULL.  CL_ENOTFOUND when the name has no address of the family. */
CL_MUST_CHECK int cl_dns_resolve(const char *name, unsigned port, int family, const char *server, cl_dns_result *out);

/* CL_EINVAL (naming the problem) unless server is "IPv4" or "IPv4:PORT". */
CL_MUST_CHECK int cl_dns_server_check(const char *server);

/* The addresses (of type qtype: 1 A, 28 AAAA) in a DNS response message,
 * and the smallest TTL of its answer records; exposed for tests and fuzzing.
 * CL_EPARSE for a malformed message. */
CL_MUST_CHECK int cl_dns_parse_answer(const uint8_t *msg, size_t len, int qtype, unsigned port, cl_dns_result *out);

#pragma GCC visibility pop

#endif

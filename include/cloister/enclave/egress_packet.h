/* The TAP relay's frame inspection: every frame the enclave sends is
 * judged against the egress policy before it reaches the parent, and DNS
 * answers coming back from the gateway teach which addresses the allowed
 * host names have.
 *
 * Outbound (enclave -> parent), in order:
 *   - Ethernet II only (no VLAN tags); ARP only for the gateway's address;
 *   - IPv4 and IPv6 headers checked (version, lengths, IPv6 extension
 *     headers walked); any fragment, and AH/ESP/unknown protocols, dropped;
 *     TCP, UDP, ICMP, ICMPv6 headers checked;
 *   - ICMPv6 neighbour discovery (types 133-136, hop limit 255) and MLD
 *     (130-132, 143, hop limit 1) on the link (link-local or ff02::
 *     destinations) pass: they cannot leave the link;
 *   - DNS queries (UDP) to the gateway pass when the policy allows the name
 *     asked for, and are dropped otherwise (no exfiltration in query names;
 *     the relay answers them REFUSED: cl_egress_dns_refusal);
 *   - packets of a flow the policy already let through pass (so that a
 *     connection outlives its DNS answer's TTL); inbound TCP SYNs open a
 *     flow too, so that replies to published ports go out;
 *   - otherwise the destination address decides: a deny CIDR drops it; an
 *     allow CIDR, or a host name allowed by the policy (and not denied) that
 *     a DNS answer gave this address for, within its TTL, lets it pass, for
 *     the rule's ports.
 * Inbound frames are not filtered (the parent can send the enclave anything
 * anyway); only DNS answers from the gateway's port 53 are read.
 *
 * Tables are bounded, both hashes with a short probe window: learned
 * addresses (CL_EGRESS_MAX_LEARNED slots, hashed by address; the soonest
 * to expire in the window replaced) and flows (CL_EGRESS_FLOW_SLOTS; the
 * oldest in the window replaced).  One mutex
 * covers both; the two relay directions may call in parallel. */
#ifndef CLOISTER_EGRESS_PACKET_H
#define CLOISTER_EGRESS_PACKET_H
#pragma GCC visibility push(default)

#include "cloister/core/error.h"
#include "cloister/enclave/egress_policy.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CL_EGRESS_MAX_LEARNED 4096
#define CL_EGRESS_FLOW_SLOTS 16384
#define CL_EGRESS_MIN_TTL_S 10    /* a TTL of 0 still lets the app connect once */
#define CL_EGRESS_MAX_TTL_S 86400
#define CL_EGRESS_FLOW_IDLE_S 300

enum cl_egress_reason {
    CL_EGRESS_PASS = 0,
    CL_EGRESS_MALFORMED,   /* a header too short or inconsistent */
    CL_EGRESS_FRAGMENT,    /* IPv4 or IPv6 fragment */
    CL_EGRESS_ETHERTYPE,   /* neither ARP, IPv4 nor IPv6 (VLAN tags included) */
    CL_EGRESS_ARP,         /* ARP for another address than the gateway's */
    CL_EGRESS_PROTOCOL,    /* an IP protocol other than TCP, UDP, ICMP, ICMPv6 */
    CL_EGRESS_DENIED,      /* a deny rule names the destination */
    CL_EGRESS_NOT_ALLOWED, /* no allow rule, no DNS answer for an allowed name */
    CL_EGRESS_PORT,        /* allowed destination, but not on this port or protocol */
    CL_EGRESS_DNS_QUERY,   /* a DNS query for a name the policy does not allow (or not DNS) */
    CL_EGRESS_REASONS
};
const char *cl_egress_reason_name(int reason);

typedef struct cl_egress cl_egress;

/* policy: borrowed, must outlive the state.  gateway: the IPv4 address
 * of the gateway and its DNS server. */
CL_MUST_CHECK int cl_egress_new(const cl_egress_policy *policy, const uint8_t gateway[static 4], cl_egress **out);
void cl_egress_free(cl_egress *e);

/* What an outbound frame was, for the drop log. */
typedef struct cl_egress_verdict {
    int reason;
    int proto;         /* IP protocol, or 0 */
    cl_egress_addr dst; /* family 0 when there is none */
    int port;          /* TCP/UDP destination port, or -1 */
    char name[CL_EGRESS_NAME_MAX + 1]; /* DNS query name, when reason is DNS_QUERY */
} cl_egress_verdict;

/* Judges one frame going to the parent; returns v->reason (PASS or why it
 * must be dropped) and counts it. */
int cl_egress_outbound(cl_egress *e, const uint8_t *frame, size_t len, uint64_t now_ms, cl_egress_verdict *v);
/* Reads one frame coming from the parent: learns from DNS answers, opens
 * flows for inbound SYNs.  Returns how many addresses it learned. */
size_t cl_egress_inbound(cl_egress *e, const uint8_t *frame, size_t len, uint64_t now_ms);

uint64_t cl_egress_count(const cl_egress *e, int reason);
uint64_t cl_egress_learned_total(const cl_egress *e);
size_t cl_egress_learned_now(cl_egress *e, uint64_t now_ms);

/* Exposed for tests and the fuzzer: the addresses a DNS response message
 * teaches (qname allowed by the policy, CNAME chains followed, each with
 * the smallest TTL along its chain); CL_EPARSE for a malformed message. */
typedef struct cl_egress_learn {
    cl_egress_addr addr;
    char name[CL_EGRESS_NAME_MAX + 1];
    uint32_t ttl_s;
} cl_egress_learn;
#define CL_EGRESS_LEARN_MAX 32
CL_MUST_CHECK int cl_egress_parse_dns_answer(const cl_egress_policy *policy, const uint8_t *msg, size_t len,
                                             cl_egress_learn *out, size_t *count);
/* The name a DNS query message asks for (lower case, no trailing dot);
 * CL_EPARSE unless it is a query with exactly one question. */
CL_MUST_CHECK int cl_egress_parse_dns_query(const uint8_t *msg, size_t len, char name[static CL_EGRESS_NAME_MAX + 1]);

/* For a DNS query frame the policy refused (an IPv4 UDP query to the
 * gateway): the frame that answers it REFUSED as if from the gateway, to
 * be written back into tap0 so that the app fails at once instead of
 * waiting for its resolver's timeout.  out needs len + 0 bytes at most
 * (the answer is the question, without the query's other sections). */
CL_MUST_CHECK int cl_egress_dns_refusal(const uint8_t *frame, size_t len, uint8_t *out, size_t cap, size_t *out_len);

#pragma GCC visibility pop
#endif

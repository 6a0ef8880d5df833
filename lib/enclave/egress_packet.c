#include "cloister/enclave/egress_packet.h"

#include "cloister/core/cursor.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

enum {
    ETH_ARP = 0x0806,
    ETH_IPV4 = 0x0800,
    ETH_IPV6 = 0x86dd,
    IP_ICMP = 1,
    IP_TCP = 6,
    IP_UDP = 17,
    IP_ICMPV6 = 58,
    DNS_PORT = 53,
    DNS_A = 1,
    DNS_CNAME = 5,
    DNS_AAAA = 28,
    DNS_CLASS_IN = 1,
};

typedef struct learned {
    cl_egress_addr addr;
    char name[CL_EGRESS_NAME_MAX + 1];
    uint64_t expires_ms; /* 0: free */
} learned;

typedef struct flow {
    uint8_t used, family, proto;
    uint16_t dport, sport;
    uint8_t addr[16];
    uint64_t last_ms;
} flow;

struct cl_egress {
    const cl_egress_policy *policy;
    uint8_t gateway[4];
    pthread_mutex_t lock;
    learned *learned;
    flow *flows;
    _Atomic uint64_t counts[CL_EGRESS_REASONS];
    _Atomic uint64_t learned_total;
};

const char *cl_egress_reason_name(int reason)
{
    static const char *const names[CL_EGRESS_REASONS] = {
        "pass", "malformed", "fragment", "ethertype", "arp", "protocol", "denied", "not_allowed", "port", "dns_query",
    };
    return reason >= 0 && reason < CL_EGRESS_REASONS ? names[reason] : "unknown";
}

int cl_egress_new(const cl_egress_policy *policy, const uint8_t gateway[static 4], cl_egress **out)
{
    *out = NULL;
    cl_egress *e = calloc(1, sizeof *e);
    if (!e)
        return cl_error_set(CL_ENOMEM, "out of memory");
    e->learned = calloc(CL_EGRESS_MAX_LEARNED, sizeof *e->learned);
    e->flows = calloc(CL_EGRESS_FLOW_SLOTS, sizeof *e->flows);
    if (!e->learned || !e->flows) {
        free(e->learned);
        free(e->flows);
        free(e);
        return cl_error_set(CL_ENOMEM, "out of memory");
    }
    pthread_mutex_init(&e->lock, NULL);
    e->policy = policy;
    memcpy(e->gateway, gateway, 4);
    *out = e;
    return 0;
}

void cl_egress_free(cl_egress *e)
{
    if (!e)
        return;
    pthread_mutex_destroy(&e->lock);
    free(e->learned);
    free(e->flows);
    free(e);
}

uint64_t cl_egress_count(const cl_egress *e, int reason)
{
    return reason >= 0 && reason < CL_EGRESS_REASONS ? atomic_load(&e->counts[reason]) : 0;
}

uint64_t cl_egress_learned_total(const cl_egress *e)
{
    return atomic_load(&e->learned_total);
}

size_t cl_egress_learned_now(cl_egress *e, uint64_t now_ms)
{
    size_t n = 0;
    pthread_mutex_lock(&e->lock);
    for (size_t i = 0; i < CL_EGRESS_MAX_LEARNED; i++)
        n += e->learned[i].expires_ms > now_ms;
    pthread_mutex_unlock(&e->lock);
    return n;
}

/* ---- DNS messages ------------------------------------------------------------------------ */

/* A (possibly compressed) name at c's position into text, lower case, no
 * trailing dot; c ends after the name's bytes in place.  Pointers must go
 * strictly backwards, so a message cannot loop us. */
static int read_name(const uint8_t *msg, size_t len, cl_cursor *c, char out[static CL_EGRESS_NAME_MAX + 1])
{
    size_t n = 0;
    cl_cursor at = *c;
    bool jumped = false;
    size_t limit = at.pos; /* a pointer must land before the label it is read in */
    for (int hops = 0;; hops++) {
        CL_ENSURE(hops < 128, CL_EPARSE, "DNS name has too many labels");
        uint8_t l;
        size_t label_at = at.pos;
        CL_TRY(cl_cursor_u8(&at, &l));
        if (l == 0)
            break;
        if ((l & 0xc0) == 0xc0) {
            uint8_t lo;
            CL_TRY(cl_cursor_u8(&at, &lo));
            size_t target = (size_t)(l & 0x3f) << 8 | lo;
            if (!jumped) {
                c->pos = at.pos;
                jumped = true;
            }
            CL_ENSURE(target < label_at && target < limit, CL_EPARSE, "DNS name pointer does not go backwards");
            limit = target;
            at = cl_cursor_make(msg, len);
            CL_TRY(cl_cursor_skip(&at, target));
            continue;
        }
        CL_ENSURE((l & 0xc0) == 0, CL_EPARSE, "DNS label type %#x", l & 0xc0);
        const uint8_t *p;
        CL_TRY(cl_cursor_bytes(&at, l, &p));
        CL_ENSURE(n + (n ? 1 : 0) + l <= CL_EGRESS_NAME_MAX, CL_EPARSE, "DNS name longer than 253 bytes");
        if (n)
            out[n++] = '.';
        for (size_t i = 0; i < l; i++) {
            uint8_t ch = p[i];
            if (ch >= 'A' && ch <= 'Z')
                ch = (uint8_t)(ch + 32);
            /* a '.' or a control byte inside a label would let a name be read
             * two ways; such names match no rule */
            if (ch == '.' || ch < 0x21 || ch > 0x7e)
                ch = '?';
            out[n++] = (char)ch;
        }
    }
    out[n] = 0;
    if (!jumped)
        c->pos = at.pos;
    return 0;
}

typedef struct dns_head {
    uint16_t id, flags, qd, an, ns, ar;
} dns_head;

static int read_head(cl_cursor *c, dns_head *h)
{
    CL_TRY(cl_cursor_be16(c, &h->id));
    CL_TRY(cl_cursor_be16(c, &h->flags));
    CL_TRY(cl_cursor_be16(c, &h->qd));
    CL_TRY(cl_cursor_be16(c, &h->an));
    CL_TRY(cl_cursor_be16(c, &h->ns));
    return cl_cursor_be16(c, &h->ar);
}

int cl_egress_parse_dns_query(const uint8_t *msg, size_t len, char name[static CL_EGRESS_NAME_MAX + 1])
{
    cl_cursor c = cl_cursor_make(msg, len);
    dns_head h;
    CL_TRY(read_head(&c, &h));
    CL_ENSURE(!(h.flags & 0x8000), CL_EPARSE, "DNS message to the gateway is a response");
    CL_ENSURE((h.flags >> 11 & 0xf) == 0, CL_EPARSE, "DNS opcode %u is not a query", h.flags >> 11 & 0xf);
    CL_ENSURE(h.qd == 1 && h.an == 0 && h.ns == 0, CL_EPARSE, "DNS query with %u questions", h.qd);
    /* queries are never compressed: a pointer could only hide bytes */
    size_t start = c.pos;
    CL_TRY(read_name(msg, len, &c, name));
    cl_cursor probe = cl_cursor_make(msg, len);
    CL_TRY(cl_cursor_skip(&probe, start));
    for (;;) {
        uint8_t l;
        CL_TRY(cl_cursor_u8(&probe, &l));
        if (l == 0)
            break;
        CL_ENSURE((l & 0xc0) == 0, CL_EPARSE, "compressed name in a DNS query");
        CL_TRY(cl_cursor_skip(&probe, l));
    }
    uint16_t qtype, qclass;
    CL_TRY(cl_cursor_be16(&c, &qtype));
    CL_TRY(cl_cursor_be16(&c, &qclass));
    return 0;
}

typedef struct rr {
    char owner[CL_EGRESS_NAME_MAX + 1];
    uint16_t type;
    uint32_t ttl;
    cl_egress_addr addr;                 /* A, AAAA */
    char target[CL_EGRESS_NAME_MAX + 1]; /* CNAME */
} rr;

#define MAX_RRS 64
#define MAX_CHAIN 16

int cl_egress_parse_dns_answer(const cl_egress_policy *policy, const uint8_t *msg, size_t len, cl_egress_learn *out,
                               size_t *count)
{
    *count = 0;
    cl_cursor c = cl_cursor_make(msg, len);
    dns_head h;
    CL_TRY(read_head(&c, &h));
    CL_ENSURE(h.flags & 0x8000, CL_EPARSE, "DNS message from the gateway is not a response");
    CL_ENSURE(h.qd == 1, CL_EPARSE, "DNS response with %u questions", h.qd);
    char (*chain)[CL_EGRESS_NAME_MAX + 1] = malloc(MAX_CHAIN * sizeof *chain);
    rr *rrs = malloc(MAX_RRS * sizeof *rrs);
    int rc = 0;
    if (!chain || !rrs)
        CL_FAIL_OUT(CL_ENOMEM, "out of memory");
    CL_TRY_OUT(read_name(msg, len, &c, chain[0]));
    uint16_t qtype, qclass;
    CL_TRY_OUT(cl_cursor_be16(&c, &qtype));
    CL_TRY_OUT(cl_cursor_be16(&c, &qclass));
    size_t nrr = 0;
    for (unsigned i = 0; i < h.an; i++) {
        rr tmp, *r = nrr < MAX_RRS ? &rrs[nrr] : &tmp;
        CL_TRY_OUT(read_name(msg, len, &c, r->owner));
        uint16_t cls, rdlen;
        CL_TRY_OUT(cl_cursor_be16(&c, &r->type));
        CL_TRY_OUT(cl_cursor_be16(&c, &cls));
        CL_TRY_OUT(cl_cursor_be32(&c, &r->ttl));
        CL_TRY_OUT(cl_cursor_be16(&c, &rdlen));
        CL_ENSURE_OUT(rdlen <= cl_cursor_remaining(&c), CL_EPARSE, "DNS record data runs past the message");
        size_t end = c.pos + rdlen;
        bool keep = cls == DNS_CLASS_IN;
        if (r->type == DNS_A) {
            CL_ENSURE_OUT(rdlen == 4, CL_EPARSE, "DNS A record of %u bytes", rdlen);
            r->addr.family = AF_INET;
            memset(r->addr.b, 0, sizeof r->addr.b);
            memcpy(r->addr.b, msg + c.pos, 4);
        } else if (r->type == DNS_AAAA) {
            CL_ENSURE_OUT(rdlen == 16, CL_EPARSE, "DNS AAAA record of %u bytes", rdlen);
            r->addr.family = AF_INET6;
            memcpy(r->addr.b, msg + c.pos, 16);
        } else if (r->type == DNS_CNAME) {
            cl_cursor t = cl_cursor_make(msg, end);
            t.pos = c.pos;
            CL_TRY_OUT(read_name(msg, end, &t, r->target));
            CL_ENSURE_OUT(t.pos == end, CL_EPARSE, "DNS CNAME record has bytes after its name");
        } else {
            keep = false;
        }
        c.pos = end;
        if (keep && r != &tmp)
            nrr++;
    }
    /* the rest (authority, additional) teaches nothing: glue there is not an answer */
    if (!cl_egress_policy_name_resolvable(policy, chain[0]))
        goto out;
    size_t nchain = 1;
    uint32_t chain_ttl = UINT32_MAX;
    for (bool grew = true; grew && nchain < MAX_CHAIN;) {
        grew = false;
        for (size_t i = 0; i < nrr && nchain < MAX_CHAIN; i++) {
            if (rrs[i].type != DNS_CNAME)
                continue;
            bool from = false, known = false;
            for (size_t j = 0; j < nchain; j++) {
                from |= !strcmp(rrs[i].owner, chain[j]);
                known |= !strcmp(rrs[i].target, chain[j]);
            }
            if (from && !known) {
                memcpy(chain[nchain++], rrs[i].target, sizeof chain[0]);
                if (rrs[i].ttl < chain_ttl)
                    chain_ttl = rrs[i].ttl;
                grew = true;
            }
        }
    }
    /* a chain through a denied name teaches nothing */
    for (size_t j = 0; j < nchain; j++)
        if (cl_egress_policy_match_name(policy, true, chain[j], -1) == CL_EGRESS_MATCH)
            goto out;
    for (size_t i = 0; i < nrr && *count < CL_EGRESS_LEARN_MAX; i++) {
        if (rrs[i].type != DNS_A && rrs[i].type != DNS_AAAA)
            continue;
        bool in = false;
        for (size_t j = 0; j < nchain; j++)
            in |= !strcmp(rrs[i].owner, chain[j]);
        if (!in)
            continue;
        cl_egress_learn *l = &out[(*count)++];
        l->addr = rrs[i].addr;
        memcpy(l->name, chain[0], sizeof l->name);
        l->ttl_s = rrs[i].ttl < chain_ttl ? rrs[i].ttl : chain_ttl;
    }
out:
    free(chain);
    free(rrs);
    return rc;
}

/* ---- tables (e->lock held) ------------------------------------------------------------- */

/* The learned table is hashed by address: an address's entries (one per
 * name) live in the LEARN_PROBE slots from its hash on, so a lookup reads
 * a few slots, not the table. */
#define LEARN_PROBE 32

static size_t addr_hash(const cl_egress_addr *a)
{
    uint64_t h = 1469598103934665603ull ^ (uint64_t)a->family;
    for (size_t i = 0; i < 16; i++)
        h = (h ^ a->b[i]) * 1099511628211ull;
    h ^= h >> 31;
    return (size_t)(h & (CL_EGRESS_MAX_LEARNED - 1));
}

static void learn_locked(cl_egress *e, const cl_egress_learn *l, uint64_t now_ms)
{
    uint64_t ttl = l->ttl_s < CL_EGRESS_MIN_TTL_S ? CL_EGRESS_MIN_TTL_S
                   : l->ttl_s > CL_EGRESS_MAX_TTL_S ? CL_EGRESS_MAX_TTL_S
                                                    : l->ttl_s;
    uint64_t expires = now_ms + ttl * 1000;
    learned *victim = NULL;
    size_t h = addr_hash(&l->addr);
    for (size_t i = 0; i < LEARN_PROBE; i++) {
        learned *x = &e->learned[(h + i) & (CL_EGRESS_MAX_LEARNED - 1)];
        if (x->expires_ms > now_ms && x->addr.family == l->addr.family && !memcmp(x->addr.b, l->addr.b, 16) &&
            !strcmp(x->name, l->name)) {
            if (expires > x->expires_ms)
                x->expires_ms = expires;
            return;
        }
        if (!victim || x->expires_ms < victim->expires_ms)
            victim = x;
    }
    victim->addr = l->addr;
    memcpy(victim->name, l->name, sizeof victim->name);
    victim->expires_ms = expires;
    atomic_fetch_add(&e->learned_total, 1);
}

static size_t flow_hash(int family, int proto, const uint8_t *addr, int dport, int sport)
{
    uint64_t h = 1469598103934665603ull;
    uint8_t key[22] = {(uint8_t)family,      (uint8_t)proto,        (uint8_t)(dport >> 8),
                       (uint8_t)dport,       (uint8_t)(sport >> 8), (uint8_t)sport};
    memcpy(key + 6, addr, 16);
    for (size_t i = 0; i < sizeof key; i++)
        h = (h ^ key[i]) * 1099511628211ull;
    h ^= h >> 29;
    return (size_t)(h & (CL_EGRESS_FLOW_SLOTS - 1));
}

#define FLOW_PROBE 16

static bool flow_eq(const flow *f, int family, int proto, const uint8_t *addr, int dport, int sport)
{
    return f->used && f->family == family && f->proto == proto && f->dport == dport && f->sport == sport &&
           !memcmp(f->addr, addr, 16);
}

static bool flow_hit_locked(cl_egress *e, int family, int proto, const uint8_t *addr, int dport, int sport,
                            uint64_t now_ms)
{
    size_t h = flow_hash(family, proto, addr, dport, sport);
    for (size_t i = 0; i < FLOW_PROBE; i++) {
        flow *f = &e->flows[(h + i) & (CL_EGRESS_FLOW_SLOTS - 1)];
        if (flow_eq(f, family, proto, addr, dport, sport)) {
            if (now_ms - f->last_ms > (uint64_t)CL_EGRESS_FLOW_IDLE_S * 1000) {
                f->used = 0;
                return false;
            }
            f->last_ms = now_ms;
            return true;
        }
    }
    return false;
}

static void flow_add_locked(cl_egress *e, int family, int proto, const uint8_t *addr, int dport, int sport,
                            uint64_t now_ms)
{
    size_t h = flow_hash(family, proto, addr, dport, sport);
    flow *victim = NULL;
    for (size_t i = 0; i < FLOW_PROBE; i++) {
        flow *f = &e->flows[(h + i) & (CL_EGRESS_FLOW_SLOTS - 1)];
        if (flow_eq(f, family, proto, addr, dport, sport)) {
            f->last_ms = now_ms;
            return;
        }
        if (!f->used) {
            if (!victim || victim->used)
                victim = f;
        } else if (!victim || (victim->used && f->last_ms < victim->last_ms)) {
            victim = f;
        }
    }
    victim->used = 1;
    victim->family = (uint8_t)family;
    victim->proto = (uint8_t)proto;
    victim->dport = (uint16_t)dport;
    victim->sport = (uint16_t)sport;
    memcpy(victim->addr, addr, 16);
    victim->last_ms = now_ms;
}

/* ---- frames ------------------------------------------------------------------------------ */

typedef struct packet {
    int family, proto;
    cl_egress_addr src, dst;
    int hop_limit;
    const uint8_t *l4;
    size_t l4_len;
    int sport, dport; /* -1 without ports */
    uint8_t tcp_flags, icmp_type;
} packet;

/* Ethernet, IP and transport headers: PASS or the reason to drop. */
static int parse_ip(const uint8_t *frame, size_t len, packet *p, uint16_t *ethertype, cl_cursor *arp)
{
    memset(p, 0, sizeof *p);
    p->sport = p->dport = -1;
    cl_cursor c = cl_cursor_make(frame, len);
    if (cl_cursor_skip(&c, 12) < 0 || cl_cursor_be16(&c, ethertype) < 0)
        return CL_EGRESS_MALFORMED;
    if (*ethertype == ETH_ARP) {
        *arp = c;
        return CL_EGRESS_PASS;
    }
    const uint8_t *hdr;
    if (*ethertype == ETH_IPV4) {
        uint8_t vihl;
        if (cl_cursor_peek_u8(&c, &vihl) < 0 || vihl >> 4 != 4 || (vihl & 0xf) < 5)
            return CL_EGRESS_MALFORMED;
        size_t ihl = (size_t)(vihl & 0xf) * 4;
        if (cl_cursor_bytes(&c, ihl, &hdr) < 0)
            return CL_EGRESS_MALFORMED;
        size_t total = (size_t)hdr[2] << 8 | hdr[3];
        /* Ethernet may pad a short packet, never cut one */
        if (total < ihl || total - ihl > cl_cursor_remaining(&c))
            return CL_EGRESS_MALFORMED;
        uint16_t frag = (uint16_t)(hdr[6] << 8 | hdr[7]);
        if (frag & 0x3fff) /* MF, or an offset */
            return CL_EGRESS_FRAGMENT;
        p->family = AF_INET;
        p->proto = hdr[9];
        p->hop_limit = hdr[8];
        p->src.family = p->dst.family = AF_INET;
        memcpy(p->src.b, hdr + 12, 4);
        memcpy(p->dst.b, hdr + 16, 4);
        p->l4 = c.data + c.pos;
        p->l4_len = total - ihl;
    } else if (*ethertype == ETH_IPV6) {
        if (cl_cursor_bytes(&c, 40, &hdr) < 0 || hdr[0] >> 4 != 6)
            return CL_EGRESS_MALFORMED;
        size_t plen = (size_t)hdr[4] << 8 | hdr[5];
        if (plen > cl_cursor_remaining(&c)) /* 0 would be a jumbogram: not on a 1500-byte link */
            return CL_EGRESS_MALFORMED;
        cl_cursor pl = cl_cursor_make(c.data + c.pos, plen);
        uint8_t next = hdr[6];
        p->family = AF_INET6;
        p->hop_limit = hdr[7];
        p->src.family = p->dst.family = AF_INET6;
        memcpy(p->src.b, hdr + 8, 16);
        memcpy(p->dst.b, hdr + 24, 16);
        for (int i = 0;; i++) {
            if (next == 44)
                return CL_EGRESS_FRAGMENT;
            if (next != 0 && next != 43 && next != 60)
                break;
            /* hop-by-hop only first; a few headers at most */
            if (i >= 8 || (next == 0 && i != 0))
                return CL_EGRESS_MALFORMED;
            uint8_t nh, hl;
            if (cl_cursor_u8(&pl, &nh) < 0 || cl_cursor_u8(&pl, &hl) < 0 || cl_cursor_skip(&pl, (size_t)hl * 8 + 6) < 0)
                return CL_EGRESS_MALFORMED;
            next = nh;
        }
        p->proto = next;
        p->l4 = pl.data + pl.pos;
        p->l4_len = cl_cursor_remaining(&pl);
    } else {
        return CL_EGRESS_ETHERTYPE;
    }
    cl_cursor l4 = cl_cursor_make(p->l4, p->l4_len);
    uint16_t sp, dp;
    switch (p->proto) {
    case IP_TCP: {
        const uint8_t *t;
        if (cl_cursor_bytes(&l4, 20, &t) < 0)
            return CL_EGRESS_MALFORMED;
        size_t off = (size_t)(t[12] >> 4) * 4;
        if (off < 20 || off > p->l4_len)
            return CL_EGRESS_MALFORMED;
        p->sport = t[0] << 8 | t[1];
        p->dport = t[2] << 8 | t[3];
        p->tcp_flags = t[13];
        break;
    }
    case IP_UDP: {
        uint16_t ulen;
        if (cl_cursor_be16(&l4, &sp) < 0 || cl_cursor_be16(&l4, &dp) < 0 || cl_cursor_be16(&l4, &ulen) < 0 ||
            cl_cursor_skip(&l4, 2) < 0 || ulen < 8 || ulen > p->l4_len)
            return CL_EGRESS_MALFORMED;
        p->sport = sp;
        p->dport = dp;
        p->l4_len = ulen;
        break;
    }
    case IP_ICMP:
    case IP_ICMPV6:
        if ((p->proto == IP_ICMP) != (p->family == AF_INET))
            return CL_EGRESS_PROTOCOL;
        if (cl_cursor_u8(&l4, &p->icmp_type) < 0 || cl_cursor_skip(&l4, 3) < 0)
            return CL_EGRESS_MALFORMED;
        break;
    default:
        return CL_EGRESS_PROTOCOL;
    }
    return CL_EGRESS_PASS;
}

static bool is_gateway(const cl_egress *e, const cl_egress_addr *a)
{
    return a->family == AF_INET && !memcmp(a->b, e->gateway, 4);
}

static int judge_arp(const cl_egress *e, cl_cursor *c)
{
    const uint8_t *a;
    if (cl_cursor_bytes(c, 28, &a) < 0)
        return CL_EGRESS_MALFORMED;
    /* Ethernet/IPv4 ARP, request or reply */
    if (a[0] != 0 || a[1] != 1 || a[2] != 8 || a[3] != 0 || a[4] != 6 || a[5] != 4 || a[6] != 0 ||
        (a[7] != 1 && a[7] != 2))
        return CL_EGRESS_MALFORMED;
    return memcmp(a + 24, e->gateway, 4) == 0 ? CL_EGRESS_PASS : CL_EGRESS_ARP;
}

static bool on_link_v6(const cl_egress_addr *a)
{
    return (a->b[0] == 0xfe && (a->b[1] & 0xc0) == 0x80) || (a->b[0] == 0xff && a->b[1] == 0x02);
}

/* The policy proper, for a destination (e->lock held: reads learned). */
static int judge_dest_locked(cl_egress *e, const packet *p, uint64_t now_ms)
{
    const cl_egress_policy *pol = e->policy;
    int port = p->proto == IP_TCP || p->proto == IP_UDP ? p->dport : -1;
    if (cl_egress_policy_match_addr(pol, true, &p->dst, port) == CL_EGRESS_MATCH)
        return CL_EGRESS_DENIED;
    int a = cl_egress_policy_match_addr(pol, false, &p->dst, port);
    if (a == CL_EGRESS_MATCH)
        return CL_EGRESS_PASS;
    bool other_port = a == CL_EGRESS_MATCH_OTHER_PORT, denied_name = false;
    size_t h = addr_hash(&p->dst);
    for (size_t i = 0; i < LEARN_PROBE; i++) {
        const learned *l = &e->learned[(h + i) & (CL_EGRESS_MAX_LEARNED - 1)];
        if (l->expires_ms <= now_ms || l->addr.family != p->dst.family || memcmp(l->addr.b, p->dst.b, 16) != 0)
            continue;
        if (cl_egress_policy_match_name(pol, true, l->name, port) == CL_EGRESS_MATCH) {
            denied_name = true;
            continue;
        }
        int m = cl_egress_policy_match_name(pol, false, l->name, port);
        if (m == CL_EGRESS_MATCH)
            return CL_EGRESS_PASS;
        other_port |= m == CL_EGRESS_MATCH_OTHER_PORT;
    }
    return other_port ? CL_EGRESS_PORT : denied_name ? CL_EGRESS_DENIED : CL_EGRESS_NOT_ALLOWED;
}

static int judge(cl_egress *e, const uint8_t *frame, size_t len, uint64_t now_ms, cl_egress_verdict *v)
{
    packet p;
    uint16_t ethertype = 0;
    cl_cursor arp;
    int r = parse_ip(frame, len, &p, &ethertype, &arp);
    v->proto = p.proto;
    v->dst = p.dst;
    v->port = p.proto == IP_TCP || p.proto == IP_UDP ? p.dport : -1;
    if (r != CL_EGRESS_PASS)
        return r;
    if (ethertype == ETH_ARP)
        return judge_arp(e, &arp);
    /* the link's own IPv6 control traffic (the kernel sends it as tap0
     * comes up): scoped to the link by its destination and hop limit */
    if (p.proto == IP_ICMPV6 && on_link_v6(&p.dst) &&
        ((p.icmp_type >= 133 && p.icmp_type <= 136 && p.hop_limit == 255) ||
         (((p.icmp_type >= 130 && p.icmp_type <= 132) || p.icmp_type == 143) && p.hop_limit == 1)))
        return CL_EGRESS_PASS;
    if (p.proto == IP_UDP && p.dport == DNS_PORT && is_gateway(e, &p.dst)) {
        if (cl_egress_parse_dns_query(p.l4 + 8, p.l4_len - 8, v->name) < 0) {
            v->name[0] = 0;
            return CL_EGRESS_DNS_QUERY;
        }
        return cl_egress_policy_name_resolvable(e->policy, v->name) ? CL_EGRESS_PASS : CL_EGRESS_DNS_QUERY;
    }
    pthread_mutex_lock(&e->lock);
    bool ported = p.proto == IP_TCP || p.proto == IP_UDP;
    if (ported && flow_hit_locked(e, p.family, p.proto, p.dst.b, p.dport, p.sport, now_ms)) {
        pthread_mutex_unlock(&e->lock);
        return CL_EGRESS_PASS;
    }
    r = judge_dest_locked(e, &p, now_ms);
    if (r == CL_EGRESS_PASS && ported)
        flow_add_locked(e, p.family, p.proto, p.dst.b, p.dport, p.sport, now_ms);
    pthread_mutex_unlock(&e->lock);
    return r;
}

int cl_egress_outbound(cl_egress *e, const uint8_t *frame, size_t len, uint64_t now_ms, cl_egress_verdict *v)
{
    memset(v, 0, sizeof *v);
    v->port = -1;
    v->reason = judge(e, frame, len, now_ms, v);
    atomic_fetch_add_explicit(&e->counts[v->reason], 1, memory_order_relaxed);
    return v->reason;
}

size_t cl_egress_inbound(cl_egress *e, const uint8_t *frame, size_t len, uint64_t now_ms)
{
    packet p;
    uint16_t ethertype = 0;
    cl_cursor arp;
    if (parse_ip(frame, len, &p, &ethertype, &arp) != CL_EGRESS_PASS || ethertype == ETH_ARP)
        return 0;
    if (p.proto == IP_TCP && (p.tcp_flags & 0x12) == 0x02) {
        /* a SYN from outside to the enclave: its replies are a flow */
        pthread_mutex_lock(&e->lock);
        flow_add_locked(e, p.family, IP_TCP, p.src.b, p.sport, p.dport, now_ms);
        pthread_mutex_unlock(&e->lock);
        return 0;
    }
    if (p.proto != IP_UDP || p.sport != DNS_PORT || !is_gateway(e, &p.src))
        return 0;
    cl_egress_learn ls[CL_EGRESS_LEARN_MAX];
    size_t n = 0;
    if (cl_egress_parse_dns_answer(e->policy, p.l4 + 8, p.l4_len - 8, ls, &n) < 0)
        return 0;
    pthread_mutex_lock(&e->lock);
    for (size_t i = 0; i < n; i++)
        learn_locked(e, &ls[i], now_ms);
    pthread_mutex_unlock(&e->lock);
    return n;
}

static uint16_t ip_checksum(const uint8_t *p, size_t n)
{
    uint32_t sum = 0;
    for (size_t i = 0; i + 1 < n; i += 2)
        sum += (uint32_t)(p[i] << 8 | p[i + 1]);
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

int cl_egress_dns_refusal(const uint8_t *frame, size_t len, uint8_t *out, size_t cap, size_t *out_len)
{
    *out_len = 0;
    packet p;
    uint16_t ethertype = 0;
    cl_cursor arp;
    CL_ENSURE(parse_ip(frame, len, &p, &ethertype, &arp) == CL_EGRESS_PASS && p.family == AF_INET &&
                  p.proto == IP_UDP && p.dport == DNS_PORT,
              CL_EINVAL, "not an IPv4 UDP DNS query");
    const uint8_t *msg = p.l4 + 8;
    size_t mlen = p.l4_len - 8;
    char name[CL_EGRESS_NAME_MAX + 1];
    CL_TRY(cl_egress_parse_dns_query(msg, mlen, name));
    /* the question's extent: the header, the (uncompressed) name, type and class */
    cl_cursor c = cl_cursor_make(msg, mlen);
    CL_TRY(cl_cursor_skip(&c, 12));
    for (;;) {
        uint8_t l;
        CL_TRY(cl_cursor_u8(&c, &l));
        if (l == 0)
            break;
        CL_TRY(cl_cursor_skip(&c, l));
    }
    CL_TRY(cl_cursor_skip(&c, 4));
    size_t qlen = c.pos;
    size_t total = 14 + 20 + 8 + qlen;
    CL_ENSURE(total <= cap, CL_ELIMIT, "no room for the DNS refusal");
    memcpy(out, frame + 6, 6); /* to the sender's MAC, from the one it sent to */
    memcpy(out + 6, frame, 6);
    out[12] = 0x08;
    out[13] = 0x00;
    uint8_t *ip = out + 14;
    memset(ip, 0, 20);
    ip[0] = 0x45;
    ip[2] = (uint8_t)((20 + 8 + qlen) >> 8);
    ip[3] = (uint8_t)(20 + 8 + qlen);
    ip[6] = 0x40; /* DF */
    ip[8] = 64;
    ip[9] = IP_UDP;
    memcpy(ip + 12, p.dst.b, 4);
    memcpy(ip + 16, p.src.b, 4);
    uint16_t sum = ip_checksum(ip, 20);
    ip[10] = (uint8_t)(sum >> 8);
    ip[11] = (uint8_t)sum;
    uint8_t *udp = ip + 20;
    udp[0] = (uint8_t)(p.dport >> 8);
    udp[1] = (uint8_t)p.dport;
    udp[2] = (uint8_t)(p.sport >> 8);
    udp[3] = (uint8_t)p.sport;
    udp[4] = (uint8_t)((8 + qlen) >> 8);
    udp[5] = (uint8_t)(8 + qlen);
    udp[6] = udp[7] = 0; /* no checksum: allowed for UDP over IPv4 */
    uint8_t *dns = udp + 8;
    memcpy(dns, msg, qlen);
    dns[2] = (uint8_t)(0x80 | (msg[2] & 0x01)); /* QR, RD copied */
    dns[3] = 0x80 | 5;                          /* RA, REFUSED */
    memset(dns + 6, 0, 6);                      /* no answer, authority or additional records */
    *out_len = total;
    return 0;
}

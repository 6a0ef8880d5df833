#include "cloister/enclave/egress_packet.h"
#include "cloister/enclave/egress_policy.h"
#include "test.h"

#include <arpa/inet.h>
#include <sys/socket.h>

static const char policy_text[] = "version: v1\n"
                                  "name: test\n"
                                  "egress:\n"
                                  "  allow:\n"
                                  "    - api.example.com\n"
                                  "    - \"*.svc.example.com:443\"\n"
                                  "    - \"**.deep.example.com\"\n"
                                  "    - 10.1.0.0/16\n"
                                  "    - \"203.0.113.7:8000-8100\"\n"
                                  "    - \"[2001:db8::/32]:443\"\n"
                                  "    - bad.example.com\n"
                                  "  deny:\n"
                                  "    - 10.1.2.0/24\n"
                                  "    - bad.example.com\n";

static cl_egress_policy *load(void)
{
    cl_egress_policy *p = NULL;
    CHECK_OK(cl_egress_policy_parse((const uint8_t *)policy_text, sizeof policy_text - 1, "t.yaml", &p));
    return p;
}

static void parses_enclaver_shape(void)
{
    cl_egress_policy *p = load();
    if (!p)
        return;
    CHECK(cl_egress_policy_count(p, false) == 7 && cl_egress_policy_count(p, true) == 2);
    CHECK(!strcmp(cl_egress_policy_rule(p, false, 1), "*.svc.example.com:443"));
    CHECK(strlen(cl_egress_policy_sha256_hex(p)) == 64);
    cl_egress_policy_free(p);
    /* enclaver's empty lists and proxy_port */
    const char *t = "egress:\n  proxy_port: 10000\n  allow:\n  deny: []\n";
    CHECK_OK(cl_egress_policy_parse((const uint8_t *)t, strlen(t), "e.yaml", &p));
    CHECK(p && cl_egress_policy_count(p, false) == 0);
    cl_egress_policy_free(p);
}

static void errors_name_the_line(void)
{
    cl_egress_policy *p;
    const char *bad_cidr = "egress:\n  allow:\n    - example.com\n    - 10.0.0.0/33\n";
    CHECK_ERR(cl_egress_policy_parse((const uint8_t *)bad_cidr, strlen(bad_cidr), "p.yaml", &p), CL_EPARSE,
              "p.yaml:4: egress.allow entry \"10.0.0.0/33\"");
    const char *bad_key = "egress:\n  allow: [a.com]\n  alow: [b.com]\n";
    CHECK_ERR(cl_egress_policy_parse((const uint8_t *)bad_key, strlen(bad_key), "p.yaml", &p), CL_EPARSE,
              "p.yaml:3: unknown key egress.alow");
    const char *not_list = "egress:\n  allow: example.com\n";
    CHECK_ERR(cl_egress_policy_parse((const uint8_t *)not_list, strlen(not_list), "p.yaml", &p), CL_EPARSE,
              "p.yaml:2: egress.allow must be a list");
    const char *not_yaml = "egress:\n  allow: [a.com\n  deny: x\n";
    CHECK_ERR(cl_egress_policy_parse((const uint8_t *)not_yaml, strlen(not_yaml), "p.yaml", &p), CL_EPARSE,
              "not valid YAML");
    const char *nested = "egress:\n  allow:\n    - {host: a.com}\n";
    CHECK_ERR(cl_egress_policy_parse((const uint8_t *)nested, strlen(nested), "p.yaml", &p), CL_EPARSE,
              "p.yaml:3: egress.allow entries must be strings");
    const char *bad_port = "egress:\n  deny:\n    - a.com:0\n";
    CHECK_ERR(cl_egress_policy_parse((const uint8_t *)bad_port, strlen(bad_port), "p.yaml", &p), CL_EPARSE,
              "p.yaml:3:");
    const char *bad_name = "egress:\n  allow:\n    - a.*.**.com\n";
    CHECK_ERR(cl_egress_policy_parse((const uint8_t *)bad_name, strlen(bad_name), "p.yaml", &p), CL_EPARSE,
              "host name pattern");
    const char *no_egress = "version: v1\n";
    CHECK_ERR(cl_egress_policy_parse((const uint8_t *)no_egress, strlen(no_egress), "p.yaml", &p), CL_EPARSE,
              "no `egress`");
    const char *two = "egress: {allow: [a.com]}\n---\negress: {allow: [b.com]}\n";
    CHECK_ERR(cl_egress_policy_parse((const uint8_t *)two, strlen(two), "p.yaml", &p), CL_EPARSE,
              "more than one");
    const char *top = "egres:\n  allow: [a.com]\n";
    CHECK_ERR(cl_egress_policy_parse((const uint8_t *)top, strlen(top), "p.yaml", &p), CL_EPARSE,
              "p.yaml:1: unknown key \"egres\"");
    CHECK_ERR(cl_egress_policy_load("/nonexistent/policy.yaml", &p), CL_EIO, "/nonexistent/policy.yaml");
}

static cl_egress_addr ip(const char *text)
{
    cl_egress_addr a = {0};
    if (inet_pton(AF_INET, text, a.b) == 1)
        a.family = AF_INET;
    else if (inet_pton(AF_INET6, text, a.b) == 1)
        a.family = AF_INET6;
    return a;
}

static void matches_names_addresses_ports(void)
{
    cl_egress_policy *p = load();
    if (!p)
        return;
    CHECK(cl_egress_policy_match_name(p, false, "API.Example.com.", 443) == CL_EGRESS_MATCH);
    CHECK(cl_egress_policy_match_name(p, false, "x.api.example.com", 443) == CL_EGRESS_NO_MATCH);
    CHECK(cl_egress_policy_match_name(p, false, "a.svc.example.com", 443) == CL_EGRESS_MATCH);
    CHECK(cl_egress_policy_match_name(p, false, "a.svc.example.com", 80) == CL_EGRESS_MATCH_OTHER_PORT);
    CHECK(cl_egress_policy_match_name(p, false, "svc.example.com", 443) == CL_EGRESS_NO_MATCH);
    CHECK(cl_egress_policy_match_name(p, false, "a.b.svc.example.com", 443) == CL_EGRESS_NO_MATCH);
    CHECK(cl_egress_policy_match_name(p, false, "a.b.deep.example.com", 1) == CL_EGRESS_MATCH);
    CHECK(cl_egress_policy_match_name(p, false, "deep.example.com", 1) == CL_EGRESS_NO_MATCH);
    CHECK(cl_egress_policy_name_resolvable(p, "a.svc.example.com"));
    CHECK(!cl_egress_policy_name_resolvable(p, "bad.example.com"));
    CHECK(!cl_egress_policy_name_resolvable(p, "evil.com"));
    cl_egress_addr a = ip("10.1.9.9"), d = ip("10.1.2.3"), r = ip("203.0.113.7"), v6 = ip("2001:db8::1");
    CHECK(cl_egress_policy_match_addr(p, false, &a, -1) == CL_EGRESS_MATCH);
    CHECK(cl_egress_policy_match_addr(p, true, &d, 80) == CL_EGRESS_MATCH);
    CHECK(cl_egress_policy_match_addr(p, false, &r, 8050) == CL_EGRESS_MATCH);
    CHECK(cl_egress_policy_match_addr(p, false, &r, 8101) == CL_EGRESS_MATCH_OTHER_PORT);
    CHECK(cl_egress_policy_match_addr(p, false, &r, -1) == CL_EGRESS_MATCH_OTHER_PORT);
    CHECK(cl_egress_policy_match_addr(p, false, &v6, 443) == CL_EGRESS_MATCH);
    cl_egress_addr mapped = ip("::ffff:10.1.9.9");
    CHECK(cl_egress_policy_match_addr(p, false, &mapped, -1) == CL_EGRESS_NO_MATCH);
    cl_egress_policy_free(p);
}

/* ---- frames ---- */

static const uint8_t gw[4] = {192, 168, 127, 1};

static size_t put_name(uint8_t *o, const char *name)
{
    size_t n = 0;
    while (*name) {
        const char *dot = strchr(name, '.');
        size_t l = dot ? (size_t)(dot - name) : strlen(name);
        o[n++] = (uint8_t)l;
        memcpy(o + n, name, l);
        n += l;
        name += l + (dot ? 1 : 0);
    }
    o[n++] = 0;
    return n;
}

static size_t put16(uint8_t *o, unsigned v)
{
    o[0] = (uint8_t)(v >> 8);
    o[1] = (uint8_t)v;
    return 2;
}

/* qname CNAME cname (ttl 300), cname A addr (ttl 60) */
static size_t dns_answer(uint8_t *o, const char *qname, const char *cname, const char *addr)
{
    size_t n = 0;
    n += put16(o + n, 0x1234);
    n += put16(o + n, 0x8180);
    n += put16(o + n, 1);
    n += put16(o + n, cname ? 2 : 1);
    n += put16(o + n, 0);
    n += put16(o + n, 0);
    size_t q = n;
    n += put_name(o + n, qname);
    n += put16(o + n, 1);
    n += put16(o + n, 1);
    const char *owner = qname;
    if (cname) {
        n += put16(o + n, 0xc000 | (unsigned)q); /* compressed owner */
        n += put16(o + n, 5);
        n += put16(o + n, 1);
        n += put16(o + n, 0);
        n += put16(o + n, 300);
        size_t rdl = put_name(o + n + 2, cname);
        n += put16(o + n, (unsigned)rdl);
        n += rdl;
        owner = cname;
    }
    n += put_name(o + n, owner);
    n += put16(o + n, 1);
    n += put16(o + n, 1);
    n += put16(o + n, 0);
    n += put16(o + n, 60);
    n += put16(o + n, 4);
    inet_pton(AF_INET, addr, o + n);
    return n + 4;
}

static size_t dns_query(uint8_t *o, const char *qname)
{
    size_t n = 0;
    n += put16(o + n, 0x4321);
    n += put16(o + n, 0x0100);
    n += put16(o + n, 1);
    n += put16(o + n, 0);
    n += put16(o + n, 0);
    n += put16(o + n, 0);
    n += put_name(o + n, qname);
    n += put16(o + n, 1);
    n += put16(o + n, 1);
    return n;
}

/* Ethernet + IPv4 + TCP (SYN) or UDP (with payload). */
static size_t frame4(uint8_t *f, const char *src, const char *dst, int proto, unsigned sport, unsigned dport,
                     const uint8_t *payload, size_t plen, uint16_t frag)
{
    memset(f, 0, 64);
    memset(f, 0x52, 6);
    memset(f + 6, 0xba, 6);
    f[12] = 0x08;
    f[13] = 0x00;
    uint8_t *ip4 = f + 14;
    size_t l4 = proto == 6 ? 20 : proto == 17 ? 8 + plen : 8;
    ip4[0] = 0x45;
    put16(ip4 + 2, (unsigned)(20 + l4));
    put16(ip4 + 6, frag);
    ip4[8] = 64;
    ip4[9] = (uint8_t)proto;
    inet_pton(AF_INET, src, ip4 + 12);
    inet_pton(AF_INET, dst, ip4 + 16);
    uint8_t *t = ip4 + 20;
    memset(t, 0, l4);
    if (proto == 6) {
        put16(t, sport);
        put16(t + 2, dport);
        t[12] = 0x50;
        t[13] = 0x02;
    } else if (proto == 17) {
        put16(t, sport);
        put16(t + 2, dport);
        put16(t + 4, (unsigned)(8 + plen));
        memcpy(t + 8, payload, plen);
    } else {
        t[0] = 8; /* echo request */
    }
    return 14 + 20 + l4;
}

static void polices_frames(void)
{
    cl_egress_policy *p = load();
    cl_egress *e = NULL;
    if (!p)
        return;
    CHECK_OK(cl_egress_new(p, gw, &e));
    if (!e) {
        cl_egress_policy_free(p);
        return;
    }
    uint8_t f[1600], dns[512];
    cl_egress_verdict v;
    uint64_t now = 1000000;
    const char *me = "192.168.127.2";

    /* a raw IP not learned from DNS */
    size_t n = frame4(f, me, "93.184.216.34", 6, 40000, 443, NULL, 0, 0);
    CHECK(cl_egress_outbound(e, f, n, now, &v) == CL_EGRESS_NOT_ALLOWED);
    /* the query for an allowed name passes, for another name it does not */
    size_t q = dns_query(dns, "api.example.com");
    n = frame4(f, me, "192.168.127.1", 17, 5353, 53, dns, q, 0);
    CHECK(cl_egress_outbound(e, f, n, now, &v) == CL_EGRESS_PASS);
    q = dns_query(dns, "exfil-4142434445.evil.com");
    n = frame4(f, me, "192.168.127.1", 17, 5353, 53, dns, q, 0);
    CHECK(cl_egress_outbound(e, f, n, now, &v) == CL_EGRESS_DNS_QUERY && !strcmp(v.name, "exfil-4142434445.evil.com"));
    /* the answer, through a CNAME, teaches the address */
    size_t a = dns_answer(dns, "api.example.com", "edge.cdn.net", "93.184.216.34");
    n = frame4(f, "192.168.127.1", me, 17, 53, 5353, dns, a, 0);
    CHECK(cl_egress_inbound(e, f, n, now) == 1);
    n = frame4(f, me, "93.184.216.34", 6, 40001, 443, NULL, 0, 0);
    CHECK(cl_egress_outbound(e, f, n, now, &v) == CL_EGRESS_PASS);
    n = frame4(f, me, "93.184.216.34", 1, 0, 0, NULL, 0, 0);
    CHECK(cl_egress_outbound(e, f, n, now, &v) == CL_EGRESS_PASS); /* a port-less rule: ICMP too */
    /* an answer from somewhere else than the gateway's port 53 teaches nothing */
    a = dns_answer(dns, "api.example.com", NULL, "198.51.100.9");
    n = frame4(f, "198.51.100.1", me, 17, 53, 5353, dns, a, 0);
    CHECK(cl_egress_inbound(e, f, n, now) == 0);
    n = frame4(f, "192.168.127.1", me, 17, 5300, 5353, dns, a, 0);
    CHECK(cl_egress_inbound(e, f, n, now) == 0);
    n = frame4(f, me, "198.51.100.9", 6, 40002, 443, NULL, 0, 0);
    CHECK(cl_egress_outbound(e, f, n, now, &v) == CL_EGRESS_NOT_ALLOWED);
    /* the TTL (60 s) ends the learning, but not the flow already open */
    n = frame4(f, me, "93.184.216.34", 6, 40001, 443, NULL, 0, 0);
    CHECK(cl_egress_outbound(e, f, n, now + 61000, &v) == CL_EGRESS_PASS);
    n = frame4(f, me, "93.184.216.34", 6, 40003, 443, NULL, 0, 0);
    CHECK(cl_egress_outbound(e, f, n, now + 61000, &v) == CL_EGRESS_NOT_ALLOWED);
    /* a denied name learns nothing, even behind an allowed one */
    a = dns_answer(dns, "api.example.com", "bad.example.com", "198.51.100.10");
    n = frame4(f, "192.168.127.1", me, 17, 53, 5353, dns, a, 0);
    CHECK(cl_egress_inbound(e, f, n, now) == 0);
    /* ports: a name allowed on 443 only */
    a = dns_answer(dns, "x.svc.example.com", NULL, "198.51.100.20");
    n = frame4(f, "192.168.127.1", me, 17, 53, 5353, dns, a, 0);
    CHECK(cl_egress_inbound(e, f, n, now) == 1);
    n = frame4(f, me, "198.51.100.20", 6, 40004, 443, NULL, 0, 0);
    CHECK(cl_egress_outbound(e, f, n, now, &v) == CL_EGRESS_PASS);
    n = frame4(f, me, "198.51.100.20", 6, 40005, 22, NULL, 0, 0);
    CHECK(cl_egress_outbound(e, f, n, now, &v) == CL_EGRESS_PORT && v.port == 22);
    n = frame4(f, me, "198.51.100.20", 1, 0, 0, NULL, 0, 0);
    CHECK(cl_egress_outbound(e, f, n, now, &v) == CL_EGRESS_PORT);
    /* CIDRs */
    n = frame4(f, me, "10.1.2.3", 17, 40006, 9999, (const uint8_t *)"x", 1, 0);
    CHECK(cl_egress_outbound(e, f, n, now, &v) == CL_EGRESS_DENIED);
    n = frame4(f, me, "10.1.3.3", 17, 40006, 9999, (const uint8_t *)"x", 1, 0);
    CHECK(cl_egress_outbound(e, f, n, now, &v) == CL_EGRESS_PASS);
    /* fragments, even of an allowed flow */
    n = frame4(f, me, "10.1.3.3", 17, 40006, 9999, (const uint8_t *)"x", 1, 0x2000);
    CHECK(cl_egress_outbound(e, f, n, now, &v) == CL_EGRESS_FRAGMENT);
    n = frame4(f, me, "10.1.3.3", 17, 40006, 9999, (const uint8_t *)"x", 1, 0x0010);
    CHECK(cl_egress_outbound(e, f, n, now, &v) == CL_EGRESS_FRAGMENT);
    /* malformed: IPv4 total length beyond the frame, UDP length beyond the packet, short TCP */
    n = frame4(f, me, "10.1.3.3", 17, 40006, 9999, (const uint8_t *)"x", 1, 0);
    CHECK(cl_egress_outbound(e, f, n - 1, now, &v) == CL_EGRESS_MALFORMED);
    f[14 + 20 + 5] = 200;
    CHECK(cl_egress_outbound(e, f, n, now, &v) == CL_EGRESS_MALFORMED);
    n = frame4(f, me, "10.1.3.3", 6, 40007, 80, NULL, 0, 0);
    f[14 + 20 + 12] = 0x40; /* data offset 4 */
    CHECK(cl_egress_outbound(e, f, n, now, &v) == CL_EGRESS_MALFORMED);
    CHECK(cl_egress_outbound(e, f, 13, now, &v) == CL_EGRESS_MALFORMED);
    /* other protocols */
    n = frame4(f, me, "10.1.3.3", 6, 40007, 80, NULL, 0, 0);
    f[14 + 9] = 132; /* SCTP */
    CHECK(cl_egress_outbound(e, f, n, now, &v) == CL_EGRESS_PROTOCOL);
    f[12] = 0x81; /* 802.1Q */
    CHECK(cl_egress_outbound(e, f, n, now, &v) == CL_EGRESS_ETHERTYPE);
    /* ARP: the gateway only */
    uint8_t arp[42] = {0};
    arp[12] = 0x08, arp[13] = 0x06;
    const uint8_t arp_head[8] = {0, 1, 8, 0, 6, 4, 0, 1};
    memcpy(arp + 14, arp_head, 8);
    memcpy(arp + 14 + 24, gw, 4);
    CHECK(cl_egress_outbound(e, arp, sizeof arp, now, &v) == CL_EGRESS_PASS);
    arp[14 + 27] = 7;
    CHECK(cl_egress_outbound(e, arp, sizeof arp, now, &v) == CL_EGRESS_ARP);
    /* an inbound SYN (a published port) opens the way back */
    n = frame4(f, "198.51.100.77", me, 6, 51000, 443, NULL, 0, 0);
    CHECK(cl_egress_inbound(e, f, n, now) == 0);
    n = frame4(f, me, "198.51.100.77", 6, 443, 51000, NULL, 0, 0);
    CHECK(cl_egress_outbound(e, f, n, now, &v) == CL_EGRESS_PASS);
    n = frame4(f, me, "198.51.100.77", 6, 444, 51000, NULL, 0, 0);
    CHECK(cl_egress_outbound(e, f, n, now, &v) == CL_EGRESS_NOT_ALLOWED);

    CHECK(cl_egress_count(e, CL_EGRESS_DNS_QUERY) == 1 && cl_egress_count(e, CL_EGRESS_FRAGMENT) == 2);
    CHECK(cl_egress_learned_total(e) == 2);
    cl_egress_free(e);
    cl_egress_policy_free(p);
}

static void dns_parser_refuses_loops_and_overruns(void)
{
    cl_egress_policy *p = load();
    if (!p)
        return;
    uint8_t m[512];
    cl_egress_learn out[CL_EGRESS_LEARN_MAX];
    size_t count;
    size_t n = dns_answer(m, "api.example.com", NULL, "1.2.3.4");
    CHECK_OK(cl_egress_parse_dns_answer(p, m, n, out, &count));
    CHECK(count == 1 && out[0].ttl_s == 60 && !strcmp(out[0].name, "api.example.com"));
    for (size_t i = 0; i < n; i++)
        CHECK(cl_egress_parse_dns_answer(p, m, i, out, &count) < 0);
    /* a pointer to itself */
    uint8_t loop[] = {0, 1, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1};
    CHECK_ERR(cl_egress_parse_dns_answer(p, loop, sizeof loop, out, &count), CL_EPARSE, "backwards");
    /* a query with a pointer hides bytes */
    uint8_t qp[] = {0, 1, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 1, 'a', 0xc0, 12, 0, 1, 0, 1};
    char name[CL_EGRESS_NAME_MAX + 1];
    CHECK(cl_egress_parse_dns_query(qp, sizeof qp, name) < 0);
    cl_egress_policy_free(p);
}

static void refuses_denied_queries_locally(void)
{
    uint8_t f[600], dns[512], out[700];
    size_t q = dns_query(dns, "exfil.evil.com");
    dns[11] = 1; /* an EDNS OPT record counted, not copied */
    size_t n = frame4(f, "192.168.127.2", "192.168.127.1", 17, 40123, 53, dns, q, 0);
    memset(f, 0x5a, 6);   /* to the gateway's MAC */
    memset(f + 6, 0xba, 6); /* from ours */
    size_t rn;
    CHECK_OK(cl_egress_dns_refusal(f, n, out, sizeof out, &rn));
    CHECK(rn == n);
    CHECK(out[0] == 0xba && out[6] == 0x5a);
    const uint8_t *ip4 = out + 14, *udp = ip4 + 20, *m = udp + 8;
    uint32_t sum = 0;
    for (int i = 0; i < 20; i += 2)
        sum += (uint32_t)(ip4[i] << 8 | ip4[i + 1]);
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    CHECK(sum == 0xffff); /* a valid header checksum */
    CHECK(!memcmp(ip4 + 12, f + 14 + 16, 4) && !memcmp(ip4 + 16, f + 14 + 12, 4));
    CHECK(udp[0] == 0 && udp[1] == 53 && (udp[2] << 8 | udp[3]) == 40123);
    CHECK(m[0] == dns[0] && m[1] == dns[1] && (m[2] & 0x80) && (m[3] & 0x0f) == 5);
    CHECK(m[5] == 1 && m[7] == 0 && m[11] == 0 && !memcmp(m + 12, dns + 12, q - 12));
    /* what the relay sends back parses as the answer to that query, teaching nothing */
    cl_egress_policy *p = load();
    cl_egress *e = NULL;
    if (p && cl_egress_new(p, gw, &e) == 0) {
        CHECK(cl_egress_inbound(e, out, rn, 1) == 0);
        cl_egress_free(e);
    }
    cl_egress_policy_free(p);
    /* not a query: nothing */
    n = frame4(f, "192.168.127.2", "10.0.0.1", 6, 1, 53, NULL, 0, 0);
    CHECK(cl_egress_dns_refusal(f, n, out, sizeof out, &rn) < 0);
    n = frame4(f, "192.168.127.2", "192.168.127.1", 17, 1, 53, (const uint8_t *)"\x00\x01", 2, 0);
    CHECK(cl_egress_dns_refusal(f, n, out, sizeof out, &rn) < 0);
}

int main(void)
{
    RUN(refuses_denied_queries_locally);
    RUN(parses_enclaver_shape);
    RUN(errors_name_the_line);
    RUN(matches_names_addresses_ports);
    RUN(polices_frames);
    RUN(dns_parser_refuses_loops_and_overruns);
    return test_summary();
}

/* The egress policy's cost per outbound frame (lib/enclave/egress_packet.c),
 * in one thread, for the three paths a frame takes:
 *   flow     a TCP segment of a flow already let through (the common case);
 *   decide   a new flow's first segment to an address learned from DNS, with
 *            the learned table full (4096 entries: the worst case of its scan);
 *   dns      a DNS query to the gateway, its name checked against the rules.
 *
 *   bench_egress [--frames N]
 *
 * The last line is machine-readable: "RESULT key=value ...". */
#include "cloister/enclave/egress_packet.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static size_t frame(uint8_t *f, const uint8_t src[4], const uint8_t dst[4], int proto, unsigned sport,
                    unsigned dport, const uint8_t *payload, size_t plen)
{
    memset(f, 0, 14 + 20 + 8 + 20 + plen);
    f[12] = 0x08;
    uint8_t *ip = f + 14;
    size_t l4 = proto == 6 ? 20 + plen : 8 + plen;
    ip[0] = 0x45;
    ip[2] = (uint8_t)((20 + l4) >> 8);
    ip[3] = (uint8_t)(20 + l4);
    ip[8] = 64;
    ip[9] = (uint8_t)proto;
    memcpy(ip + 12, src, 4);
    memcpy(ip + 16, dst, 4);
    uint8_t *t = ip + 20;
    t[0] = (uint8_t)(sport >> 8), t[1] = (uint8_t)sport, t[2] = (uint8_t)(dport >> 8), t[3] = (uint8_t)dport;
    if (proto == 6) {
        t[12] = 0x50;
        t[13] = 0x10;
        memcpy(t + 20, payload, plen);
    } else {
        t[4] = (uint8_t)((8 + plen) >> 8), t[5] = (uint8_t)(8 + plen);
        memcpy(t + 8, payload, plen);
    }
    return 14 + 20 + l4;
}

/* A response teaching name -> addr (TTL 3600). */
static size_t answer(uint8_t *m, const char *name, const uint8_t addr[4])
{
    static const uint8_t head[12] = {0, 1, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0};
    memcpy(m, head, 12);
    size_t n = 12;
    for (const char *p = name; *p;) {
        const char *dot = strchr(p, '.');
        size_t l = dot ? (size_t)(dot - p) : strlen(p);
        m[n++] = (uint8_t)l;
        memcpy(m + n, p, l);
        n += l;
        p += l + (dot ? 1 : 0);
    }
    m[n++] = 0;
    static const uint8_t q[4] = {0, 1, 0, 1};
    memcpy(m + n, q, 4);
    n += 4;
    static const uint8_t rr[12] = {0xc0, 12, 0, 1, 0, 1, 0, 0, 0x0e, 0x10, 0, 4};
    memcpy(m + n, rr, 12);
    memcpy(m + n + 12, addr, 4);
    return n + 16;
}

int main(int argc, char **argv)
{
    long frames = 2000000;
    for (int i = 1; i + 1 < argc; i += 2)
        if (!strcmp(argv[i], "--frames"))
            frames = atol(argv[i + 1]);
    static const char policy[] = "egress:\n  allow: ['**.example.com', 10.0.0.0/8, 'api.test:443']\n"
                                 "  deny: [10.9.0.0/16, bad.example.com]\n";
    cl_egress_policy *p;
    cl_egress *e;
    const uint8_t gw[4] = {192, 168, 127, 1}, me[4] = {192, 168, 127, 2};
    if (cl_egress_policy_parse((const uint8_t *)policy, sizeof policy - 1, "bench", &p) < 0 ||
        cl_egress_new(p, gw, &e) < 0) {
        fprintf(stderr, "bench_egress: %s\n", cl_error_message());
        return 1;
    }
    uint8_t f[2048], m[512];
    /* fill the learned table: 4096 names, each with its own address */
    for (unsigned i = 0; i < CL_EGRESS_MAX_LEARNED; i++) {
        char name[64];
        snprintf(name, sizeof name, "h%u.example.com", i);
        uint8_t a[4] = {198, 18, (uint8_t)(i >> 8), (uint8_t)i};
        size_t n = answer(m, name, a);
        size_t fl = frame(f, gw, me, 17, 53, 5353, m, n);
        if (cl_egress_inbound(e, f, fl, 1000) != 1) {
            fprintf(stderr, "bench_egress: the DNS answer taught nothing\n");
            return 1;
        }
    }
    uint8_t payload[1400] = {0};
    cl_egress_verdict v;
    const uint8_t dst[4] = {198, 18, 15, 255}; /* the last learned: the scan's far end */
    size_t fl = frame(f, me, dst, 6, 40000, 443, payload, sizeof payload);
    if (cl_egress_outbound(e, f, fl, 2000, &v) != CL_EGRESS_PASS) {
        fprintf(stderr, "bench_egress: not passed: %s\n", cl_egress_reason_name(v.reason));
        return 1;
    }
    double t0 = now_s();
    for (long i = 0; i < frames; i++)
        (void)cl_egress_outbound(e, f, fl, 2000, &v);
    double flow_s = now_s() - t0;

    long decide_n = frames / 20;
    t0 = now_s();
    for (long i = 0; i < decide_n; i++) {
        /* a new source port each time: a new flow, decided from the rules */
        f[14 + 20] = (uint8_t)(i >> 8 | 0x80);
        f[14 + 21] = (uint8_t)i;
        (void)cl_egress_outbound(e, f, fl, 2000 + (uint64_t)i / 1000, &v);
    }
    double decide_s = now_s() - t0;

    static const uint8_t qh[12] = {0, 2, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0};
    memcpy(m, qh, 12);
    static const uint8_t qn[] = {3, 'a', 'p', 'i', 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 3, 'c', 'o', 'm', 0, 0, 1, 0, 1};
    memcpy(m + 12, qn, sizeof qn);
    fl = frame(f, me, gw, 17, 5353, 53, m, 12 + sizeof qn);
    t0 = now_s();
    for (long i = 0; i < frames; i++)
        (void)cl_egress_outbound(e, f, fl, 2000, &v);
    double dns_s = now_s() - t0;
    if (v.reason != CL_EGRESS_PASS) {
        fprintf(stderr, "bench_egress: the query was dropped\n");
        return 1;
    }
    printf("flow hit (1454-byte TCP segment): %.0f ns/frame, %.2f M frames/s\n", flow_s / frames * 1e9,
           frames / flow_s / 1e6);
    printf("new flow, learned table full:     %.0f ns/frame\n", decide_s / decide_n * 1e9);
    printf("DNS query checked:                %.0f ns/frame\n", dns_s / frames * 1e9);
    printf("RESULT flow_ns=%.0f decide_ns=%.0f dns_ns=%.0f\n", flow_s / frames * 1e9, decide_s / decide_n * 1e9,
           dns_s / frames * 1e9);
    cl_egress_free(e);
    cl_egress_policy_free(p);
    return 0;
}

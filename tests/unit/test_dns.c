#include "cloister/host/dns.h"
#include "cloister/core/encoding.h"
#include "test.h"

#include <arpa/inet.h>
#include <netinet/in.h>

static cl_buf hex(const char *text)
{
    cl_buf b = CL_BUF_INIT;
    if (cl_hex_decode(text, &b) < 0)
        abort();
    return b;
}

/* A response for example.com A, written out by hand from RFC 1035: a CNAME
 * (TTL 300) to www.example.com, whose A record (TTL 60) is 93.184.216.34,
 * the second name compressed. */
static const char *const cname_then_a =
    "1234" "8180" "0001" "0002" "0000" "0000"
    "076578616d706c6503636f6d00" "0001" "0001"
    "c00c" "0005" "0001" "0000012c" "0006" "03777777c00c"
    "c02b" "0001" "0001" "0000003c" "0004" "5db8d822";

static void reads_addresses_and_smallest_ttl(void)
{
    cl_buf m = hex(cname_then_a);
    cl_dns_result r;
    memset(&r, 0, sizeof r);
    CHECK_OK(cl_dns_parse_answer(m.data, m.len, 1, 443, &r));
    CHECK(r.count == 1);
    CHECK(r.ttl_known && r.ttl_s == 60);
    const struct sockaddr_in *in = (const struct sockaddr_in *)&r.addrs[0];
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
    CHECK(!strcmp(ip, "93.184.216.34"));
    CHECK(ntohs(in->sin_port) == 443);
    CHECK(r.lens[0] == sizeof(struct sockaddr_in));
    cl_buf_free(&m);
}

static void aaaa_and_duplicates(void)
{
    /* two identical AAAA records for ::1, TTLs 5 and 7 */
    cl_buf m = hex("0001" "8180" "0001" "0002" "0000" "0000" "017800" "001c" "0001"
                   "c00c" "001c" "0001" "00000005" "0010" "00000000000000000000000000000001"
                   "c00c" "001c" "0001" "00000007" "0010" "00000000000000000000000000000001");
    cl_dns_result r;
    memset(&r, 0, sizeof r);
    CHECK_OK(cl_dns_parse_answer(m.data, m.len, 28, 80, &r));
    CHECK(r.count == 1 && r.addrs[0].ss_family == AF_INET6);
    CHECK(r.ttl_s == 5);
    /* the same message read for A: no addresses */
    memset(&r, 0, sizeof r);
    CHECK_OK(cl_dns_parse_answer(m.data, m.len, 1, 80, &r));
    CHECK(r.count == 0 && !r.ttl_known);
    cl_buf_free(&m);
}

static void nxdomain_has_no_addresses(void)
{
    cl_buf m = hex("0001" "8183" "0001" "0000" "0000" "0000" "017800" "0001" "0001");
    cl_dns_result r;
    memset(&r, 0, sizeof r);
    CHECK_OK(cl_dns_parse_answer(m.data, m.len, 1, 80, &r));
    CHECK(r.count == 0);
    cl_buf_free(&m);
}

static void ttl_with_high_bit_is_zero(void)
{
    cl_buf m = hex("0001" "8180" "0001" "0001" "0000" "0000" "017800" "0001" "0001"
                   "c00c" "0001" "0001" "80000000" "0004" "7f000001");
    cl_dns_result r;
    memset(&r, 0, sizeof r);
    CHECK_OK(cl_dns_parse_answer(m.data, m.len, 1, 80, &r));
    CHECK(r.count == 1 && r.ttl_known && r.ttl_s == 0);
    cl_buf_free(&m);
}

static void rejects_malformed(void)
{
    cl_buf good = hex(cname_then_a);
    cl_dns_result r;
    /* every truncation of a good message is refused, never read past */
    for (size_t n = 0; n < good.len; n++) {
        memset(&r, 0, sizeof r);
        CHECK(cl_dns_parse_answer(good.data, n, 1, 80, &r) == CL_EPARSE);
    }
    static const char *const bad[] = {
        /* a query, not a response */
        "0001" "0100" "0000" "0000" "0000" "0000",
        /* an A record of 5 bytes */
        "0001" "8180" "0000" "0001" "0000" "0000" "00" "0001" "0001" "00000001" "0005" "7f00000101",
        /* an extended label type (0x40) */
        "0001" "8180" "0001" "0000" "0000" "0000" "4100" "0001" "0001",
        /* a name longer than 255 bytes: five labels of 63 */
        "0001" "8180" "0001" "0000" "0000" "0000"
        "3f" "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "3f" "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "3f" "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "3f" "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "3f" "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "00" "0001" "0001",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cl_buf m = hex(bad[i]);
        memset(&r, 0, sizeof r);
        CHECK(cl_dns_parse_answer(m.data, m.len, 1, 80, &r) == CL_EPARSE);
        cl_buf_free(&m);
    }
    memset(&r, 0, sizeof r);
    CHECK(cl_dns_parse_answer(good.data, good.len, 5, 80, &r) == CL_EINVAL);
    cl_buf_free(&good);
}

static void literals_and_server_syntax(void)
{
    cl_dns_result r;
    CHECK_OK(cl_dns_resolve("192.0.2.7", 9, AF_UNSPEC, NULL, &r));
    CHECK(r.count == 1 && !r.ttl_known && !strcmp(r.source, "literal"));
    CHECK_OK(cl_dns_resolve("2001:db8::1", 9, AF_INET6, NULL, &r));
    CHECK(r.count == 1 && r.addrs[0].ss_family == AF_INET6);
    CHECK_ERR(cl_dns_resolve("192.0.2.7", 9, AF_INET6, NULL, &r), CL_ENOTFOUND, "IPv6");
    CHECK_OK(cl_dns_server_check("127.0.0.1"));
    CHECK_OK(cl_dns_server_check("127.0.0.1:5353"));
    CHECK_ERR(cl_dns_server_check("::1"), CL_EINVAL, "IPv4");
    CHECK_ERR(cl_dns_server_check("127.0.0.1:0"), CL_EINVAL, "port");
    CHECK_ERR(cl_dns_server_check("name:53"), CL_EINVAL, "IPv4");
    /* localhost is in /etc/hosts on any Debian machine: no DNS, no TTL */
    CHECK_OK(cl_dns_resolve("localhost", 80, AF_INET, NULL, &r));
    CHECK(r.count >= 1 && !r.ttl_known && !strcmp(r.source, "hosts"));
}

int main(void)
{
    RUN(reads_addresses_and_smallest_ttl);
    RUN(aaaa_and_duplicates);
    RUN(nxdomain_has_no_addresses);
    RUN(ttl_with_high_bit_is_zero);
    RUN(rejects_malformed);
    RUN(literals_and_server_syntax);
    return test_summary();
}

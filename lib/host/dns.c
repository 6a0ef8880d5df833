#include "cloister/host/dns.h"

#include "cloister/core/cursor.h"

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <resolv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DNS_TYPE_A 1
#define DNS_TYPE_CNAME 5
#define DNS_TYPE_AAAA 28
#define DNS_CLASS_IN 1
#define MAX_NAME_WIRE 255
#define HOSTS_FILE "/etc/hosts"

static int skip_name(cl_cursor *c)
{
    size_t total = 0;
    for (;;) {
        uint8_t len;
        CL_TRY(cl_cursor_u8(c, &len));
        if (len == 0)
            return CL_OK;
        if ((len & 0xC0) == 0xC0) /* a compression pointer ends the name; we never follow it */
            return cl_cursor_skip(c, 1);
        CL_ENSURE((len & 0xC0) == 0, CL_EPARSE, "DNS: unknown label type 0x%02x", len & 0xC0);
        total += (size_t)len + 1;
        CL_ENSURE(total <= MAX_NAME_WIRE, CL_EPARSE, "DNS: name longer than %d bytes", MAX_NAME_WIRE);
        CL_TRY(cl_cursor_skip(c, len));
    }
}

static bool same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return false;
    if (a->ss_family == AF_INET)
        return !memcmp(&((const struct sockaddr_in *)a)->sin_addr, &((const struct sockaddr_in *)b)->sin_addr, 4);
    return !memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr, &((const struct sockaddr_in6 *)b)->sin6_addr, 16);
}

static void add_addr(cl_dns_result *out, int family, const uint8_t *bytes, unsigned port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len;
    if (family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)port);
        memcpy(&in->sin_addr, bytes, 4);
        len = sizeof *in;
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        memcpy(&in6->sin6_addr, bytes, 16);
        len = sizeof *in6;
    }
    for (size_t i = 0; i < out->count; i++)
        if (same_addr(&out->addrs[i], &ss))
            return;
    if (out->count == CL_DNS_MAX_ADDRS)
        return;
    out->addrs[out->count] = ss;
    out->lens[out->count] = len;
    out->count++;
}

int cl_dns_parse_answer(const uint8_t *msg, size_t len, int qtype, unsigned port, cl_dns_result *out)
{
    CL_ENSURE(qtype == DNS_TYPE_A || qtype == DNS_TYPE_AAAA, CL_EINVAL, "DNS: only A and AAAA answers are read");
    cl_cursor c = cl_cursor_make(msg, len);
    uint16_t id, flags, qd, an, ns, ar;
    CL_TRY(cl_cursor_be16(&c, &id));
    CL_TRY(cl_cursor_be16(&c, &flags));
    CL_TRY(cl_cursor_be16(&c, &qd));
    CL_TRY(cl_cursor_be16(&c, &an));
    CL_TRY(cl_cursor_be16(&c, &ns));
    CL_TRY(cl_cursor_be16(&c, &ar));
    (void)id;
    (void)ns;
    (void)ar;
    CL_ENSURE(flags & 0x8000, CL_EPARSE, "DNS: a query, not a response");
    if ((flags & 0x000F) != 0)
        return CL_OK; /* NXDOMAIN, SERVFAIL...: no addresses */
    for (uint16_t i = 0; i < qd; i++) {
        CL_TRY(skip_name(&c));
        CL_TRY(cl_cursor_skip(&c, 4)); /* type, class */
    }
    int family = qtype == DNS_TYPE_A ? AF_INET : AF_INET6;
    size_t want = qtype == DNS_TYPE_A ? 4 : 16;
    for (uint16_t i = 0; i < an; i++) {
        uint16_t type, class, rdlen;
        uint32_t ttl;
        const uint8_t *rdata;
        CL_TRY(skip_name(&c));
        CL_TRY(cl_cursor_be16(&c, &type));
        CL_TRY(cl_cursor_be16(&c, &class));
        CL_TRY(cl_cursor_be32(&c, &ttl));
        CL_TRY(cl_cursor_be16(&c, &rdlen));
        CL_TRY(cl_cursor_bytes(&c, rdlen, &rdata));
        if (class != DNS_CLASS_IN || (type != qtype && type != DNS_TYPE_CNAME))
            continue;
        if (type == qtype) {
            CL_ENSURE(rdlen == want, CL_EPARSE, "DNS: %s record of %u bytes", qtype == DNS_TYPE_A ? "A" : "AAAA",
                      rdlen);
            add_addr(out, family, rdata, port);
        }
        if (ttl & 0x80000000u) /* RFC 2181 8: treat as zero */
            ttl = 0;
        if (!out->ttl_known || ttl < out->ttl_s)
            out->ttl_s = ttl;
        out->ttl_known = true;
    }
    /* authority and additional records are not needed and not read */
    return CL_OK;
}

/* Is name (case-insensitively) a name or alias in /etc/hosts? */
static bool in_hosts_file(const char *name)
{
    FILE *f = fopen(HOSTS_FILE, "r");
    if (!f)
        return false;
    char line[1024];
    bool found = false;
    while (!found && fgets(line, sizeof line, f)) {
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        char *save = NULL, *tok = strtok_r(line, " \t\r\n", &save);
        if (!tok)
            continue; /* the address */
        while (!found && (tok = strtok_r(NULL, " \t\r\n", &save)))
            found = strcasecmp(tok, name) == 0;
    }
    fclose(f);
    return found;
}

static int from_getaddrinfo(const char *name, unsigned port, int family, cl_dns_result *out, const char *source)
{
    char service[8];
    snprintf(service, sizeof service, "%u", port);
    struct addrinfo hints = {.ai_family = family, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(name, service, &hints, &res);
    if (gai != 0)
        return cl_error_set(gai == EAI_NONAME || gai == EAI_NODATA ? CL_ENOTFOUND : CL_EIO, "cannot resolve %s%s: %s",
                            name, family == AF_INET ? " (IPv4 only)" : family == AF_INET6 ? " (IPv6 only)" : "",
                            gai == EAI_SYSTEM ? strerror(errno) : gai_strerror(gai));
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        if (ai->ai_family == AF_INET)
            add_addr(out, AF_INET, (const uint8_t *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr, port);
        else if (ai->ai_family == AF_INET6)
            add_addr(out, AF_INET6, (const uint8_t *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr, port);
    }
    freeaddrinfo(res);
    out->source = source;
    return CL_OK;
}

static int set_server(struct __res_state *st, const char *server)
{
    char host[64];
    unsigned port = 53;
    const char *colon = strrchr(server, ':');
    size_t n = colon ? (size_t)(colon - server) : strlen(server);
    CL_ENSURE(n > 0 && n < sizeof host, CL_EINVAL, "DNS server '%s': expected IP or IP:PORT", server);
    memcpy(host, server, n);
    host[n] = '\0';
    if (colon) {
        char *end;
        unsigned long p = strtoul(colon + 1, &end, 10);
        CL_ENSURE(*end == '\0' && p > 0 && p <= 65535, CL_EINVAL, "DNS server '%s': bad port", server);
        port = (unsigned)p;
    }
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    CL_ENSURE(inet_pton(AF_INET, host, &in.sin_addr) == 1, CL_EINVAL,
              "DNS server '%s': an IPv4 address (with an optional :PORT) is expected", server);
    st->nsaddr_list[0] = in;
    st->nscount = 1;
    return CL_OK;
}

int cl_dns_server_check(const char *server)
{
    struct __res_state st;
    memset(&st, 0, sizeof st);
    return set_server(&st, server);
}

int cl_dns_resolve(const char *name, unsigned port, int family, const char *server, cl_dns_result *out)
{
    memset(out, 0, sizeof *out);
    const char *only = family == AF_INET ? "IPv4 " : family == AF_INET6 ? "IPv6 " : "";
    uint8_t raw[16];
    if (inet_pton(AF_INET, name, raw) == 1 || inet_pton(AF_INET6, name, raw) == 1) {
        int f = strchr(name, ':') ? AF_INET6 : AF_INET;
        CL_ENSURE(family == AF_UNSPEC || family == f, CL_ENOTFOUND, "%s is not an %saddress", name, only);
        add_addr(out, f, raw, port);
        out->source = "literal";
        return CL_OK;
    }
    if (!server && in_hosts_file(name)) {
        CL_TRY(from_getaddrinfo(name, port, family, out, "hosts"));
        CL_ENSURE(out->count > 0, CL_ENOTFOUND, "%s has no %saddress", name, only);
        return CL_OK;
    }

    struct __res_state st;
    memset(&st, 0, sizeof st);
    if (res_ninit(&st) != 0 && !server)
        return from_getaddrinfo(name, port, family, out, "getaddrinfo");
    st.retrans = 2; /* seconds per try: an unreachable server must not stall the host long */
    st.retry = 2;
    int rc = server ? set_server(&st, server) : CL_OK;
    bool failed = false;
    for (int i = 0; rc == CL_OK && i < 2; i++) {
        int qtype = i == 0 ? DNS_TYPE_A : DNS_TYPE_AAAA;
        if ((qtype == DNS_TYPE_A && family == AF_INET6) || (qtype == DNS_TYPE_AAAA && family == AF_INET))
            continue;
        uint8_t answer[4096];
        int n = res_nquery(&st, name, DNS_CLASS_IN, qtype, answer, sizeof answer);
        if (n < 0) {
            /* no such name or no such record: an answer; anything else: the servers failed */
            failed = failed || (st.res_h_errno != HOST_NOT_FOUND && st.res_h_errno != NO_DATA);
            continue;
        }
        rc = cl_dns_parse_answer(answer, (size_t)(n < (int)sizeof answer ? n : (int)sizeof answer), qtype, port, out);
    }
    res_nclose(&st);
    CL_TRY(rc);
    if (out->count > 0) {
        out->source = "dns";
        return CL_OK;
    }
    out->ttl_known = false;
    if (server)
        return cl_error_set(failed ? CL_EIO : CL_ENOTFOUND, "%s: %s", name,
                            failed ? "the DNS server did not answer" : "no such name or no address of that family");
    CL_TRY(from_getaddrinfo(name, port, family, out, "getaddrinfo"));
    CL_ENSURE(out->count > 0, CL_ENOTFOUND, "%s has no %saddress", name, only);
    return CL_OK;
}

/* The TAP bridge's DNS relay (lib/host/tap_dns.h). */
#include "host/tap_dns.h"

#include "cloister/core/cursor.h"
#include "cloister/core/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define DNS_SLOTS 4096
#define DNS_UDP_MAX 4096
#define DNS_QUERY_TTL_MS 5000
#define DNS_TCP_MAX TAP_DNS_TCP_MAX
#define DNS_TCP_BUF 4096
#define DNS_TCP_IDLE_MS 10000
#define DNS_TCP_LINGER_MS 2000 /* after the client's EOF, for the last answers */

static uint64_t dns_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int parse_port(const char *s, size_t n, uint16_t *out)
{
    unsigned v = 0;
    CL_ENSURE(n > 0 && n <= 5, CL_EINVAL, "expected a port from 1 to 65535");
    for (size_t i = 0; i < n; i++) {
        CL_ENSURE(s[i] >= '0' && s[i] <= '9', CL_EINVAL, "expected a port from 1 to 65535");
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    CL_ENSURE(v >= 1 && v <= 65535, CL_EINVAL, "expected a port from 1 to 65535");
    *out = (uint16_t)v;
    return CL_OK;
}

/* "IP[:PORT]" or "[v6]:PORT" to a socket address (port 53 by default). */
static int parse_server(const char *text, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[INET6_ADDRSTRLEN + 2];
    unsigned port = 53;
    memset(ss, 0, sizeof *ss);
    const char *colon = strrchr(text, ':');
    size_t n;
    if (text[0] == '[') {
        const char *close_b = strchr(text, ']');
        CL_ENSURE(close_b, CL_EINVAL, "DNS server %s: a '[' without ']'", text);
        n = (size_t)(close_b - text - 1);
        CL_ENSURE(n < sizeof host, CL_EINVAL, "DNS server %s: too long", text);
        memcpy(host, text + 1, n);
        host[n] = '\0';
        colon = close_b[1] == ':' ? close_b + 1 : NULL;
    } else if (colon && strchr(text, ':') == colon) {
        n = (size_t)(colon - text);
        CL_ENSURE(n < sizeof host, CL_EINVAL, "DNS server %s: too long", text);
        memcpy(host, text, n);
        host[n] = '\0';
    } else {
        n = strlen(text);
        CL_ENSURE(n < sizeof host, CL_EINVAL, "DNS server %s: too long", text);
        memcpy(host, text, n + 1);
        colon = NULL;
    }
    if (colon) {
        uint16_t p = 0;
        CL_TRY(parse_port(colon + 1, strlen(colon + 1), &p));
        port = p;
    }
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        *len = sizeof *a4;
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *len = sizeof *a6;
    } else {
        return cl_error_set(CL_EINVAL, "DNS server %s: not an IP address", text);
    }
    return CL_OK;
}

/* The first nameserver of /etc/resolv.conf (the parent's own file). */
static int resolv_conf_server(char *out, size_t len)
{
    FILE *f = fopen("/etc/resolv.conf", "re");
    CL_ENSURE(f, CL_ENOTFOUND, "/etc/resolv.conf: %s (give --dns-server)", strerror(errno));
    char line[512];
    int rc = cl_error_set(CL_ENOTFOUND, "/etc/resolv.conf names no nameserver (give --dns-server)");
    while (fgets(line, sizeof line, f)) {
        char addr[INET6_ADDRSTRLEN + 1];
        if (sscanf(line, " nameserver %46s", addr) == 1) {
            snprintf(out, len, strchr(addr, ':') ? "[%s]:53" : "%s", addr);
            cl_error_clear();
            rc = CL_OK;
            break;
        }
    }
    fclose(f);
    return rc;
}

int tap_dns_upstream(const char *server, struct sockaddr_storage *ss, socklen_t *len, char *text, size_t text_len)
{
    char found[INET6_ADDRSTRLEN + 16];
    if (!server) {
        CL_TRY(resolv_conf_server(found, sizeof found));
        server = found;
    }
    CL_TRY(parse_server(server, ss, len));
    snprintf(text, text_len, "%s", server);
    return CL_OK;
}

typedef struct dns_slot {
    bool used;
    uint16_t id, client_id;
    uint64_t since;
    struct sockaddr_in client;
} dns_slot;

typedef struct dns_half {
    uint8_t buf[DNS_TCP_BUF];
    size_t off, len;
    bool eof;
} dns_half;

typedef struct dns_conn {
    int client, upstream;
    bool connected;
    bool polled; /* in this turn's poll set: a connection accepted since has no events yet */
    uint64_t last;
    dns_half up, down; /* client -> upstream, upstream -> client */
} dns_conn;

struct tap_dns {
    int udp, tcp; /* on the gateway's port 53 */
    int up;       /* connected to the upstream resolver, or -1 */
    bool warned;
    uint32_t net, mask; /* the enclave's subnet, network order */
    struct sockaddr_storage upstream;
    socklen_t upstream_len;
    char upstream_text[INET6_ADDRSTRLEN + 16];
    dns_slot *slots;
    dns_conn conns[DNS_TCP_MAX];
};


static bool from_subnet(const tap_dns *d, const struct sockaddr_in *a)
{
    return a->sin_family == AF_INET && (a->sin_addr.s_addr & d->mask) == d->net;
}

static int read_id(const uint8_t *msg, size_t len, uint16_t *id)
{
    cl_cursor c = cl_cursor_make(msg, len);
    CL_TRY(cl_cursor_be16(&c, id));
    CL_ENSURE(len >= 12, CL_EPARSE, "a DNS message shorter than its header");
    return CL_OK;
}

/* The relay's socket to the upstream resolver.  Not reaching it (no route
 * yet) is not fatal: queries are dropped, logged once, and the next one
 * tries again. */
static void dns_upstream_open(tap_dns *d)
{
    int fd = socket(d->upstream.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&d->upstream, d->upstream_len) == 0) {
        d->up = fd;
        if (d->warned)
            cl_log(CL_LOG_INFO, "tap-dns-upstream", "upstream", d->upstream_text, "state", "reachable", NULL);
        d->warned = false;
        return;
    }
    if (!d->warned)
        cl_log(CL_LOG_WARN, "tap-dns-upstream", "upstream", d->upstream_text, "state", "unreachable", "error",
               strerror(errno), NULL);
    d->warned = true;
    if (fd >= 0)
        close(fd);
}

static void dns_query(tap_dns *d)
{
    uint8_t msg[DNS_UDP_MAX];
    for (int i = 0; i < 64; i++) {
        struct sockaddr_in from;
        socklen_t flen = sizeof from;
        ssize_t n = recvfrom(d->udp, msg, sizeof msg, MSG_DONTWAIT, (struct sockaddr *)&from, &flen);
        if (n < 0)
            return;
        uint16_t id;
        if (read_id(msg, (size_t)n, &id) < 0 || !from_subnet(d, &from)) {
            cl_error_clear();
            continue;
        }
        if (d->up < 0)
            dns_upstream_open(d);
        if (d->up < 0)
            continue;
        /* a fresh random ID upstream, so that two clients' equal IDs do
         * not meet; the slot says whom the answer is for */
        uint64_t now = dns_now_ms();
        dns_slot *s = NULL;
        uint16_t nid = 0;
        for (int tries = 0; tries < 8 && !s; tries++) {
            if (getrandom(&nid, sizeof nid, 0) != sizeof nid)
                break;
            dns_slot *c = &d->slots[nid % DNS_SLOTS];
            if (!c->used || now - c->since > DNS_QUERY_TTL_MS)
                s = c;
        }
        if (!s)
            continue; /* DNS_SLOTS queries in flight: this one is dropped, the client retries */
        s->used = true;
        s->id = nid;
        s->client_id = id;
        s->since = now;
        s->client = from;
        msg[0] = (uint8_t)(nid >> 8);
        msg[1] = (uint8_t)nid;
        if (send(d->up, msg, (size_t)n, MSG_DONTWAIT) < 0)
            s->used = false;
    }
}

static void dns_answer(tap_dns *d)
{
    uint8_t msg[DNS_UDP_MAX];
    for (int i = 0; i < 64; i++) {
        ssize_t n = recv(d->up, msg, sizeof msg, MSG_DONTWAIT);
        if (n < 0)
            return;
        uint16_t id;
        if (read_id(msg, (size_t)n, &id) < 0) {
            cl_error_clear();
            continue;
        }
        dns_slot *s = &d->slots[id % DNS_SLOTS];
        if (!s->used || s->id != id)
            continue;
        s->used = false;
        msg[0] = (uint8_t)(s->client_id >> 8);
        msg[1] = (uint8_t)s->client_id;
        (void)sendto(d->udp, msg, (size_t)n, MSG_DONTWAIT, (struct sockaddr *)&s->client, sizeof s->client);
    }
}

static void dns_tcp_close(dns_conn *c)
{
    if (c->client >= 0)
        close(c->client);
    if (c->upstream >= 0)
        close(c->upstream);
    c->client = c->upstream = -1;
}

static void dns_tcp_accept(tap_dns *d)
{
    for (;;) {
        struct sockaddr_in from;
        socklen_t flen = sizeof from;
        int fd = accept4(d->tcp, (struct sockaddr *)&from, &flen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        if (!from_subnet(d, &from)) {
            close(fd);
            continue;
        }
        /* a free slot, or the one idle longest: a resolver that keeps a
         * connection open after its client is done must not lock others out */
        dns_conn *c = NULL;
        for (int i = 0; i < DNS_TCP_MAX; i++) {
            dns_conn *k = &d->conns[i];
            if (k->client < 0) {
                c = k;
                break;
            }
            if (!c || k->last < c->last)
                c = k;
        }
        if (c->client >= 0)
            dns_tcp_close(c);
        int up = socket(d->upstream.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (up < 0 || (connect(up, (struct sockaddr *)&d->upstream, d->upstream_len) < 0 &&
                       errno != EINPROGRESS)) {
            if (up >= 0)
                close(up);
            close(fd);
            continue;
        }
        memset(c, 0, sizeof *c);
        c->client = fd;
        c->upstream = up;
        c->last = dns_now_ms();
    }
}

/* Moves what h holds from -> to; false when the connection is over. */
static bool dns_half_move(dns_half *h, int from, int to, bool *progress)
{
    if (!h->eof && h->len < sizeof h->buf) {
        ssize_t n = recv(from, h->buf + h->len, sizeof h->buf - h->len, MSG_DONTWAIT);
        if (n == 0)
            h->eof = true;
        else if (n > 0) {
            h->len += (size_t)n;
            *progress = true;
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return false;
    }
    while (h->off < h->len) {
        ssize_t n = send(to, h->buf + h->off, h->len - h->off, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                break;
            return false;
        }
        h->off += (size_t)n;
        *progress = true;
    }
    if (h->off == h->len)
        h->off = h->len = 0;
    if (h->eof && h->len == 0)
        shutdown(to, SHUT_WR);
    return true;
}

static void dns_tcp_service(dns_conn *c, short cre, short ure)
{
    if (!c->connected) {
        if (!(ure & (POLLOUT | POLLERR | POLLHUP)))
            return;
        int err = 0;
        socklen_t el = sizeof err;
        if (getsockopt(c->upstream, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err) {
            dns_tcp_close(c);
            return;
        }
        c->connected = true;
    }
    (void)cre;
    bool progress = false;
    if (!dns_half_move(&c->up, c->client, c->upstream, &progress) ||
        !dns_half_move(&c->down, c->upstream, c->client, &progress) || (c->up.eof && c->down.eof)) {
        dns_tcp_close(c);
        return;
    }
    if (progress)
        c->last = dns_now_ms();
}

int tap_dns_new(int udp, int tcp, struct in_addr gateway, unsigned prefix, const struct sockaddr_storage *upstream,
                socklen_t upstream_len, const char *upstream_text, tap_dns **out)
{
    tap_dns *d = calloc(1, sizeof *d);
    CL_ENSURE(d, CL_ENOMEM, "out of memory");
    d->slots = calloc(DNS_SLOTS, sizeof *d->slots);
    if (!d->slots) {
        free(d);
        return cl_error_set(CL_ENOMEM, "out of memory");
    }
    d->udp = udp;
    d->tcp = tcp;
    d->up = -1;
    d->mask = htonl(~0u << (32 - prefix));
    d->net = gateway.s_addr & d->mask;
    d->upstream = *upstream;
    d->upstream_len = upstream_len;
    snprintf(d->upstream_text, sizeof d->upstream_text, "%s", upstream_text);
    for (int i = 0; i < DNS_TCP_MAX; i++)
        d->conns[i].client = d->conns[i].upstream = -1;
    dns_upstream_open(d);
    *out = d;
    return CL_OK;
}

enum { D_UDP, D_UP, D_TCP, D_CONNS };

int tap_dns_poll(tap_dns *d, struct pollfd *pfd, uint64_t now)
{
    int timeout = -1;
    pfd[D_UDP] = (struct pollfd){.fd = d->udp, .events = POLLIN};
    pfd[D_UP] = (struct pollfd){.fd = d->up, .events = POLLIN};
    pfd[D_TCP] = (struct pollfd){.fd = d->tcp, .events = POLLIN};
    for (int i = 0; i < DNS_TCP_MAX; i++) {
        dns_conn *c = &d->conns[i];
        short ce = 0, ue = 0;
        c->polled = c->client >= 0;
        if (c->client >= 0) {
            if (!c->connected)
                ue = POLLOUT;
            else {
                if (!c->up.eof && c->up.len < sizeof c->up.buf)
                    ce |= POLLIN;
                if (c->down.len > c->down.off)
                    ce |= POLLOUT;
                if (!c->down.eof && c->down.len < sizeof c->down.buf)
                    ue |= POLLIN;
                if (c->up.len > c->up.off)
                    ue |= POLLOUT;
            }
            uint64_t idle = c->up.eof ? DNS_TCP_LINGER_MS : DNS_TCP_IDLE_MS;
            uint64_t left = c->last + idle > now ? c->last + idle - now : 0;
            if (timeout < 0 || (int)left < timeout)
                timeout = (int)left;
        }
        pfd[D_CONNS + 2 * i] = (struct pollfd){.fd = c->client, .events = ce};
        pfd[D_CONNS + 2 * i + 1] = (struct pollfd){.fd = c->upstream, .events = ue};
    }
    return timeout;
}

void tap_dns_serve(tap_dns *d, const struct pollfd *pfd, uint64_t now)
{
    if (pfd[D_UDP].revents & POLLIN)
        dns_query(d);
    if (d->up >= 0 && pfd[D_UP].fd == d->up && (pfd[D_UP].revents & POLLIN))
        dns_answer(d);
    if (pfd[D_TCP].revents & POLLIN)
        dns_tcp_accept(d);
    for (int i = 0; i < DNS_TCP_MAX; i++) {
        dns_conn *c = &d->conns[i];
        if (c->client < 0 || !c->polled)
            continue;
        short cre = pfd[D_CONNS + 2 * i].revents, ure = pfd[D_CONNS + 2 * i + 1].revents;
        if (cre || ure)
            dns_tcp_service(c, cre, ure);
        if (c->client >= 0 && now - c->last > (c->up.eof ? DNS_TCP_LINGER_MS : DNS_TCP_IDLE_MS))
            dns_tcp_close(c);
    }
}

void tap_dns_free(tap_dns *d)
{
    if (!d)
        return;
    for (int i = 0; i < DNS_TCP_MAX; i++)
        dns_tcp_close(&d->conns[i]);
    if (d->up >= 0)
        close(d->up);
    if (d->udp >= 0)
        close(d->udp);
    if (d->tcp >= 0)
        close(d->tcp);
    free(d->slots);
    free(d);
}

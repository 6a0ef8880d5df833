#include "cloister/enclave/tap_relay.h"

#include "cloister/core/address.h"
#include "cloister/core/clock.h"
#include "cloister/core/log.h"
#include "cloister/core/netif.h"
#include "cloister/core/tap_frames.h"
#include "cloister/core/tap_vnet.h"
#include "cloister/enclave/egress_packet.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <net/route.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define S cl_tap_settings
static int check_offload(void *base, const char *value)
{
    (void)base;
    CL_ENSURE(!strcmp(value, "auto") || !strcmp(value, "off"), CL_EINVAL, "auto or off, got '%s'", value);
    return 0;
}

static const cl_opt tap_options[] = {
    {.name = "tap-name", CL_OPT_STR(S, name), .flags = CL_OPT_NONEMPTY, .def = "tap0", .arg = "NAME",
     .help = "the TAP interface to create"},
    {.name = "tap-address", CL_OPT_STR(S, address), .flags = CL_OPT_NONEMPTY, .def = "192.168.127.2/24",
     .arg = "IP/LEN", .help = "its IPv4 address and prefix (nitriding's)"},
    {.name = "tap-gateway", CL_OPT_STR(S, gateway), .flags = CL_OPT_NONEMPTY, .def = "192.168.127.1", .arg = "IP",
     .help = "default gateway and DNS server (gvproxy's address)"},
    {.name = "tap-mtu", CL_OPT_UINT_AT(S, mtu, 576, 65535 - 18), .def = "1500", .arg = "N",
     .help = "the interface's MTU; frames from the parent above MTU+18 bytes close the stream"},
    {.name = "tap-mac", CL_OPT_STR(S, mac), .flags = CL_OPT_NONEMPTY, .def = "ba:aa:ad:c0:ff:ee", .arg = "MAC",
     .help = "the interface's MAC address (nitriding's)"},
    {.name = "tap-parent", CL_OPT_STR(S, parent), .flags = CL_OPT_NONEMPTY, .def = "vsock:3:1024", .arg = "ADDR",
     .help = "the parent's gvproxy-compatible endpoint (POST /connect)"},
    {.name = "tap-resolv-conf", CL_OPT_STR(S, resolv_conf), .def = "/run/resolvconf/resolv.conf", .arg = "PATH",
     .help = "written with `nameserver GATEWAY` (nitriding's path; /etc/resolv.conf links to it in an "
             "enclave); \"\" writes none"},
    {.name = "tap-reconnect-max", CL_OPT_DURATION_AT(S, backoff_max_ms, 1, 100, 600000), .def = "5s",
     .arg = "DURATION", .help = "longest wait between reconnections to the parent"},
    {.name = "egress-policy", CL_OPT_STR(S, egress_policy), .flags = CL_OPT_NONEMPTY, .arg = "FILE",
     .help = "YAML egress policy (enclaver's egress: {allow, deny}); without it every frame passes"},
    {.name = "tap-offload", CL_OPT_STR(S, offload), .set = check_offload, .def = "auto", .arg = "auto|off",
     .help = "auto: offer checksum/TSO offloads in POST /connect and use them when the parent (cloister host) "
             "accepts within --tap-offload-wait; off: gvproxy's plain framing only"},
    {.name = "tap-offload-wait", CL_OPT_DURATION_AT(S, offload_wait_ms, 1, 1, 60000), .def = "1s", .arg = "DURATION",
     .help = "how long to wait for the parent's acceptance before plain framing (gvproxy answers nothing)"},
};
#undef S

const cl_opt *cl_tap_options(size_t *count)
{
    *count = sizeof tap_options / sizeof tap_options[0];
    return tap_options;
}

static int parse_mac(const char *text, uint8_t mac[6])
{
    unsigned v[6];
    char end;
    if (sscanf(text, "%2x:%2x:%2x:%2x:%2x:%2x%c", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &end) != 6 ||
        strlen(text) != 17)
        return -1;
    for (int i = 0; i < 6; i++)
        mac[i] = (uint8_t)v[i];
    return (mac[0] & 1) ? -1 : 0; /* a multicast MAC cannot be an interface's */
}

static int parse_prefix(const char *text, struct in_addr *addr, unsigned *prefix)
{
    char host[32];
    const char *slash = strchr(text, '/');
    if (!slash || (size_t)(slash - text) >= sizeof host)
        return -1;
    memcpy(host, text, (size_t)(slash - text));
    host[slash - text] = 0;
    char *end;
    unsigned long p = strtoul(slash + 1, &end, 10);
    if (*end || end == slash + 1 || p < 1 || p > 30 || inet_pton(AF_INET, host, addr) != 1)
        return -1;
    *prefix = (unsigned)p;
    return 0;
}

int cl_tap_settings_check(const cl_tap_settings *s)
{
    uint8_t mac[6];
    struct in_addr a, g;
    unsigned prefix;
    CL_ENSURE(strlen(s->name) < IFNAMSIZ && !strchr(s->name, '/') && !strchr(s->name, '%'), CL_EINVAL,
              "--tap-name: '%s' is not an interface name (at most %d characters)", s->name, IFNAMSIZ - 1);
    CL_ENSURE(parse_prefix(s->address, &a, &prefix) == 0, CL_EINVAL,
              "--tap-address: '%s' is not IPv4/PREFIX (e.g. 192.168.127.2/24)", s->address);
    CL_ENSURE(inet_pton(AF_INET, s->gateway, &g) == 1, CL_EINVAL, "--tap-gateway: '%s' is not an IPv4 address",
              s->gateway);
    uint32_t mask = htonl(~0u << (32 - prefix));
    CL_ENSURE((a.s_addr & mask) == (g.s_addr & mask) && a.s_addr != g.s_addr, CL_EINVAL,
              "--tap-gateway: %s is not another address in --tap-address %s", s->gateway, s->address);
    CL_ENSURE(parse_mac(s->mac, mac) == 0, CL_EINVAL, "--tap-mac: '%s' is not a unicast MAC (xx:xx:xx:xx:xx:xx)",
              s->mac);
    cl_address pa;
    int rc = cl_address_parse(s->parent, &pa);
    if (rc < 0)
        return cl_error_prefix(CL_EINVAL, "--tap-parent: ");
    return 0;
}

/* ---- the device ------------------------------------------------------------------------- */

static int ifreq_ioctl(int sock, unsigned long req, struct ifreq *ifr, const char *what)
{
    if (ioctl(sock, req, ifr) == 0)
        return 0;
    return cl_error_set(CL_EIO, "%s %s: %s%s", ifr->ifr_name, what, strerror(errno),
                        errno == EPERM ? " (needs CAP_NET_ADMIN)" : "");
}

static void set_sin(struct sockaddr *sa, struct in_addr a)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr = a};
    memcpy(sa, &sin, sizeof sin);
}

/* nitriding's configureTapIface: MAC, address, MTU, up, default route. */
static int configure(const cl_tap_settings *s)
{
    uint8_t mac[6];
    struct in_addr a, g;
    unsigned prefix;
    if (parse_mac(s->mac, mac) < 0 || parse_prefix(s->address, &a, &prefix) < 0 ||
        inet_pton(AF_INET, s->gateway, &g) != 1)
        return cl_error_set(CL_EINVAL, "tap settings not checked");
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    CL_ENSURE(sock >= 0, CL_EIO, "socket for the interface ioctls: %s", strerror(errno));
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    memcpy(ifr.ifr_name, s->name, strlen(s->name));
    int rc = 0;
    ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
    memcpy(ifr.ifr_hwaddr.sa_data, mac, 6);
    CL_TRY_OUT(ifreq_ioctl(sock, SIOCSIFHWADDR, &ifr, "set MAC"));
    ifr.ifr_mtu = (int)s->mtu;
    CL_TRY_OUT(ifreq_ioctl(sock, SIOCSIFMTU, &ifr, "set MTU"));
    set_sin(&ifr.ifr_addr, a);
    CL_TRY_OUT(ifreq_ioctl(sock, SIOCSIFADDR, &ifr, "set address"));
    struct in_addr m = {.s_addr = htonl(~0u << (32 - prefix))};
    set_sin(&ifr.ifr_netmask, m);
    CL_TRY_OUT(ifreq_ioctl(sock, SIOCSIFNETMASK, &ifr, "set netmask"));
    CL_TRY_OUT(ifreq_ioctl(sock, SIOCGIFFLAGS, &ifr, "get flags"));
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    CL_TRY_OUT(ifreq_ioctl(sock, SIOCSIFFLAGS, &ifr, "bring up"));
    struct rtentry rt;
    memset(&rt, 0, sizeof rt);
    struct in_addr any = {0};
    set_sin(&rt.rt_dst, any);
    set_sin(&rt.rt_genmask, any);
    set_sin(&rt.rt_gateway, g);
    rt.rt_flags = RTF_UP | RTF_GATEWAY;
    rt.rt_dev = ifr.ifr_name;
    if (ioctl(sock, SIOCADDRT, &rt) < 0)
        CL_FAIL_OUT(CL_EIO, "default route via %s on %s: %s%s", s->gateway, s->name, strerror(errno),
                    errno == EEXIST ? " (this namespace already has a default route)" : "");
out:
    close(sock);
    return rc;
}

static int write_resolv_conf(const cl_tap_settings *s)
{
    if (!s->resolv_conf || !*s->resolv_conf)
        return 0;
    /* nitriding's MkdirAll: in an enclave /run/resolvconf/ does not exist yet */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", s->resolv_conf);
    for (char *p = dir + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = 0;
        if (mkdir(dir, 0755) < 0 && errno != EEXIST)
            return cl_error_set(CL_EIO, "--tap-resolv-conf: mkdir %s: %s", dir, strerror(errno));
        *p = '/';
    }
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.cloister-tmp", s->resolv_conf);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    CL_ENSURE(fd >= 0, CL_EIO, "--tap-resolv-conf: %s: %s", tmp, strerror(errno));
    char text[64];
    int n = snprintf(text, sizeof text, "nameserver %s\n", s->gateway);
    bool ok = write(fd, text, (size_t)n) == n;
    ok &= close(fd) == 0;
    if (!ok || rename(tmp, s->resolv_conf) < 0) {
        int err = errno;
        unlink(tmp);
        return cl_error_set(CL_EIO, "--tap-resolv-conf: %s: %s", s->resolv_conf, strerror(err));
    }
    return 0;
}

static bool offload_offered(const cl_tap_settings *s)
{
    return !s->offload || strcmp(s->offload, "off") != 0;
}

/* With the offload extension possible, the device always has the virtio
 * header (the flag cannot change while it is open): a plain stream gets
 * frames with offloads off and the header stripped. */
static int open_tap(const char *name, bool vnet, int *fd_out)
{
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
    CL_ENSURE(fd >= 0, CL_EIO, "/dev/net/tun: %s", strerror(errno));
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | (vnet ? IFF_VNET_HDR : 0);
    memcpy(ifr.ifr_name, name, strlen(name));
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        int err = errno;
        close(fd);
        return cl_error_set(CL_EIO, "create TAP %s: %s%s", name, strerror(err),
                            err == EPERM ? " (needs CAP_NET_ADMIN)"
                            : err == EBUSY ? " (another process holds an interface of that name)"
                                           : "");
    }
    if (vnet) {
        int hsz = CL_TAP_VNET_HDR;
        if (ioctl(fd, TUNSETVNETHDRSZ, &hsz) < 0 || ioctl(fd, TUNSETOFFLOAD, 0) < 0) {
            int err = errno;
            close(fd);
            return cl_error_set(CL_EIO, "TUNSETVNETHDRSZ/TUNSETOFFLOAD on %s: %s", name, strerror(err));
        }
#ifdef TUNSETVNETLE
        int le = 1;
        (void)ioctl(fd, TUNSETVNETLE, &le); /* the wire's fields are little-endian; a no-op where the host is */
#endif
    }
    *fd_out = fd;
    return 0;
}

/* ---- the relay -------------------------------------------------------------------------- */

#define OUT_BATCH (512u * 1024u)
#define IN_BUF (512u * 1024u)

struct cl_tap_relay {
    cl_tap_settings s; /* borrowed strings: the caller's settings outlive the relay */
    cl_address parent;
    size_t max_frame;
    int tap_fd, stop_fd;
    cl_egress_policy *policy;
    cl_egress *egress;
    pthread_t out_thread, in_thread;
    bool out_started, in_started;

    pthread_mutex_t sock_lock; /* guards sock, vnet and gen for the outbound thread's writes */
    int sock;
    bool vnet;    /* the open stream carries records (the offload extension), not plain frames */
    uint64_t gen; /* streams published: a batch built for one is never sent on the next */
    bool vnet_dev; /* tap0 has IFF_VNET_HDR */

    _Atomic uint64_t frames_out, frames_in, bytes_out, bytes_in, link_down_drops, connects, stream_errors,
        tap_write_errors, offload_streams, vnet_refused_out;
    _Atomic int offload_on;
    _Atomic int connected;
    /* drop log limiter: the outbound thread's own */
    uint64_t last_log_ms[CL_EGRESS_REASONS];
    uint64_t suppressed[CL_EGRESS_REASONS];
};

static bool stopping(const cl_tap_relay *r)
{
    struct pollfd p = {.fd = r->stop_fd, .events = POLLIN};
    return poll(&p, 1, 0) > 0;
}

static int send_all(int fd, const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void log_drop(cl_tap_relay *r, const cl_egress_verdict *v, uint64_t now)
{
    int reason = v->reason;
    /* one line per reason per second at most: a looping app must not
     * flood the log (or the parent reading the console) */
    if (r->last_log_ms[reason] && now - r->last_log_ms[reason] < 1000) {
        r->suppressed[reason]++;
        return;
    }
    r->last_log_ms[reason] = now ? now : 1;
    char dst[64] = "", port[12] = "", proto[12] = "", sup[24];
    if (v->dst.family)
        cl_egress_addr_text(&v->dst, dst, sizeof dst);
    if (v->port >= 0)
        snprintf(port, sizeof port, "%d", v->port);
    if (v->proto)
        snprintf(proto, sizeof proto, "%d", v->proto);
    snprintf(sup, sizeof sup, "%llu", (unsigned long long)r->suppressed[reason]);
    r->suppressed[reason] = 0;
    cl_log(CL_LOG_WARN, "egress_drop", "reason", cl_egress_reason_name(reason), "proto", proto, "dst", dst, "port",
           port, "name", v->name, "suppressed", sup, NULL);
}

/* One plain frame into tap0 (with an empty virtio header when it has them). */
static ssize_t write_tap(cl_tap_relay *r, const uint8_t *frame, size_t len)
{
    if (!r->vnet_dev)
        return write(r->tap_fd, frame, len);
    static const uint8_t none[CL_TAP_VNET_HDR];
    struct iovec iov[2] = {{(void *)none, sizeof none}, {(void *)frame, len}};
    return writev(r->tap_fd, iov, 2);
}

/* A query for a name the policy refuses is answered REFUSED from here, so
 * that the app fails now rather than after its resolver's timeout. */
static void refuse_query(cl_tap_relay *r, const cl_egress_verdict *v, const uint8_t *frame, size_t len)
{
    uint8_t reply[2048];
    size_t n;
    if (v->reason != CL_EGRESS_DNS_QUERY || !v->name[0] ||
        cl_egress_dns_refusal(frame, len, reply, sizeof reply, &n) < 0)
        return;
    if (write_tap(r, reply, n) < 0)
        atomic_fetch_add_explicit(&r->tap_write_errors, 1, memory_order_relaxed);
}

/* tap0 -> parent: batches whatever the kernel has queued into one send. */
static void *outbound(void *arg)
{
    cl_tap_relay *r = arg;
    uint8_t *buf = malloc(OUT_BATCH);
    if (!buf) {
        cl_log(CL_LOG_ERROR, "tap_relay_failed", "error", "out of memory", NULL);
        return NULL;
    }
    struct pollfd p[2] = {{.fd = r->tap_fd, .events = POLLIN}, {.fd = r->stop_fd, .events = POLLIN}};
    for (;;) {
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[1].revents)
            break;
        size_t used = 0;
        uint64_t now = cl_monotonic_ms();
        pthread_mutex_lock(&r->sock_lock);
        bool vnet = r->vnet;
        uint64_t gen = r->gen;
        pthread_mutex_unlock(&r->sock_lock);
        size_t prefix = vnet ? CL_TAP_VNET_LEN_BYTES + CL_TAP_VNET_HDR : CL_TAP_LEN_BYTES;
        size_t need = vnet ? CL_TAP_VNET_LEN_BYTES + CL_TAP_VNET_RECORD_MAX : CL_TAP_LEN_BYTES + r->max_frame;
        while (used + need <= OUT_BATCH) {
            uint8_t *at = buf + used, *f = at + prefix;
            uint8_t hb[CL_TAP_VNET_HDR];
            ssize_t n;
            if (vnet) {
                /* header and frame land where the record wants them */
                n = read(r->tap_fd, at + CL_TAP_VNET_LEN_BYTES, CL_TAP_VNET_RECORD_MAX);
                memcpy(hb, at + CL_TAP_VNET_LEN_BYTES, n >= CL_TAP_VNET_HDR ? CL_TAP_VNET_HDR : 0);
            } else if (r->vnet_dev) {
                struct iovec iov[2] = {{hb, sizeof hb}, {f, r->max_frame}};
                n = readv(r->tap_fd, iov, 2);
            } else {
                n = read(r->tap_fd, f, r->max_frame);
            }
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break;
            if (vnet || r->vnet_dev) {
                if (n < CL_TAP_VNET_HDR + CL_TAP_ETH_HEADER)
                    continue;
                n -= CL_TAP_VNET_HDR;
                cl_tap_vnet_hdr h;
                cl_tap_vnet_hdr_read(hb, &h);
                /* A superframe is judged below by its one set of headers, which
                 * the parent's kernel copies into every segment it cuts; the
                 * check makes sure the cut is made at the TCP header the policy
                 * saw.  On a plain stream offloads are off: a superframe still
                 * queued from an offload stream cannot be framed. */
                if (vnet ? cl_tap_vnet_check(&h, f, (size_t)n, r->max_frame) < 0
                         : (h.gso_type != 0 || (h.flags & CL_TAP_VNET_F_NEEDS_CSUM))) {
                    atomic_fetch_add_explicit(&r->vnet_refused_out, 1, memory_order_relaxed);
                    cl_error_clear();
                    continue;
                }
            }
            if (r->egress) {
                cl_egress_verdict v;
                if (cl_egress_outbound(r->egress, f, (size_t)n, now, &v) != CL_EGRESS_PASS) {
                    log_drop(r, &v, now);
                    refuse_query(r, &v, f, (size_t)n);
                    continue;
                }
            }
            if (vnet ? cl_tap_vnet_encode_len((size_t)n + CL_TAP_VNET_HDR, at) < 0
                     : cl_tap_encode_len((size_t)n, at) < 0)
                continue; /* shorter than an Ethernet header: nothing to relay */
            used += prefix + (size_t)n;
            atomic_fetch_add_explicit(&r->frames_out, 1, memory_order_relaxed);
            atomic_fetch_add_explicit(&r->bytes_out, (uint64_t)n, memory_order_relaxed);
        }
        if (!used)
            continue;
        pthread_mutex_lock(&r->sock_lock);
        if (r->gen != gen) {
            /* built for a stream that has gone: lost, as on a cable pulled out */
            atomic_fetch_add_explicit(&r->link_down_drops, 1, memory_order_relaxed);
        } else if (r->sock < 0 || send_all(r->sock, buf, used) < 0) {
            /* the parent is away: the frames are lost as on a cable pulled
             * out, and TCP in the enclave retransmits */
            atomic_fetch_add_explicit(&r->link_down_drops, 1, memory_order_relaxed);
            if (r->sock >= 0)
                shutdown(r->sock, SHUT_RDWR); /* wakes the inbound side to reconnect */
        }
        pthread_mutex_unlock(&r->sock_lock);
    }
    free(buf);
    return NULL;
}

/* Waits ms or until stop; true when stopping. */
static bool sleep_or_stop(cl_tap_relay *r, uint64_t ms)
{
    struct pollfd p = {.fd = r->stop_fd, .events = POLLIN};
    int n;
    while ((n = poll(&p, 1, (int)ms)) < 0 && errno == EINTR) {
    }
    return n > 0;
}

static int open_stream(cl_tap_relay *r, bool offer, int *fd_out)
{
    int fd;
    CL_TRY(cl_address_connect(&r->parent, &fd));
    /* room for several 64 KiB records in flight (the host asks the same of
     * its end); best effort, the kernel caps it */
    int sz = 4 << 20;
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
    cl_buf req = CL_BUF_INIT;
    int rc = cl_tap_connect_request_offer(&req, offer);
    if (rc == 0 && send_all(fd, req.data, req.len) < 0)
        rc = cl_error_set(CL_EIO, "sending POST /connect: %s", strerror(errno));
    cl_buf_free(&req);
    if (rc < 0) {
        close(fd);
        return rc;
    }
    *fd_out = fd;
    return 0;
}

/* After an offer: the parent's first bytes are its acceptance (cloister
 * host) or a frame (gvproxy, which answers nothing and may send nothing
 * for a while).  Waits up to --tap-offload-wait; *have bytes are left in
 * buf for the pump.  1 when stopping. */
static int negotiate(cl_tap_relay *r, int fd, uint8_t *buf, size_t *have, bool *vnet)
{
    *have = 0;
    *vnet = false;
    uint64_t wait = r->s.offload_wait_ms ? r->s.offload_wait_ms : 1000;
    uint64_t deadline = cl_monotonic_ms() + wait;
    struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = r->stop_fd, .events = POLLIN}};
    for (;;) {
        uint64_t now = cl_monotonic_ms();
        if (now >= deadline)
            return 0; /* no answer: a parent that ignored the offer */
        int n = poll(p, 2, (int)(deadline - now));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return cl_error_set(CL_EIO, "poll: %s", strerror(errno));
        if (p[1].revents)
            return 1;
        if (!n)
            return 0;
        ssize_t got = read(fd, buf + *have, CL_TAP_CONNECT_MAX + 1 - *have);
        if (got < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (got < 0)
            return cl_error_set(CL_EIO, "reading from the parent: %s", strerror(errno));
        if (got == 0)
            return cl_error_set(CL_EIO, "the parent closed the stream");
        *have += (size_t)got;
        size_t consumed;
        bool complete, accepted;
        int rc = cl_tap_parse_offload_reply(buf, *have, &consumed, &complete, &accepted);
        if (rc < 0) {
            atomic_fetch_add(&r->stream_errors, 1);
            return rc;
        }
        if (!complete)
            continue;
        if (accepted) {
            memmove(buf, buf + consumed, *have - consumed);
            *have -= consumed;
            *vnet = true;
        }
        return 0;
    }
}

/* parent -> tap0, until the stream ends or turns malformed. */
static int pump_inbound(cl_tap_relay *r, int fd, uint8_t *buf, size_t have, bool vnet, bool *got_frames)
{
    bool first = !vnet;
    struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = r->stop_fd, .events = POLLIN}};
    for (;;) {
        if (first && have) {
            if (cl_tap_check_not_http_reply(buf, have) < 0) {
                atomic_fetch_add(&r->stream_errors, 1);
                return CL_EPROTO;
            }
            if (have >= 5)
                first = false;
        }
        size_t off = 0;
        uint64_t now = cl_monotonic_ms();
        for (;;) {
            cl_slice f, rec;
            size_t used;
            bool complete;
            cl_tap_vnet_hdr h;
            int rc = vnet ? cl_tap_vnet_decode(buf + off, have - off, r->max_frame, &rec, &h, &used, &complete)
                          : cl_tap_decode(buf + off, have - off, r->max_frame, &f, &used, &complete);
            if (rc < 0) {
                atomic_fetch_add(&r->stream_errors, 1);
                return cl_error_prefix(rc, "from the parent: ");
            }
            if (!complete)
                break;
            off += used;
            *got_frames = true;
            if (vnet) {
                f.data = rec.data + CL_TAP_VNET_HDR;
                f.len = rec.len - CL_TAP_VNET_HDR;
            }
            if (r->egress)
                (void)cl_egress_inbound(r->egress, f.data, f.len, now);
            /* the header was checked; the kernel checks it again, and a write
             * it refuses is one lost packet, never the relay's end */
            ssize_t w = vnet ? write(r->tap_fd, rec.data, rec.len) : write_tap(r, f.data, f.len);
            if (w < 0)
                atomic_fetch_add_explicit(&r->tap_write_errors, 1, memory_order_relaxed);
            atomic_fetch_add_explicit(&r->frames_in, 1, memory_order_relaxed);
            atomic_fetch_add_explicit(&r->bytes_in, f.len, memory_order_relaxed);
        }
        memmove(buf, buf + off, have - off);
        have -= off;
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return cl_error_set(CL_EIO, "poll: %s", strerror(errno));
        }
        if (p[1].revents)
            return 0;
        ssize_t n = read(fd, buf + have, IN_BUF - have);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n < 0)
            return cl_error_set(CL_EIO, "reading from the parent: %s", strerror(errno));
        if (n == 0)
            return cl_error_set(CL_EIO, "the parent closed the stream");
        have += (size_t)n;
    }
}

static void set_offload(cl_tap_relay *r, bool on)
{
    if (!r->vnet_dev)
        return;
    unsigned flags = on ? TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN : 0;
    if (ioctl(r->tap_fd, TUNSETOFFLOAD, flags) < 0)
        cl_log(CL_LOG_WARN, "tap_offload_failed", "error", strerror(errno), NULL);
}

static void *inbound(void *arg)
{
    cl_tap_relay *r = arg;
    uint8_t *buf = malloc(IN_BUF);
    if (!buf) {
        cl_log(CL_LOG_ERROR, "tap_relay_failed", "error", "out of memory", NULL);
        return NULL;
    }
    char where[CL_ADDRESS_PATH_MAX + 32];
    cl_address_format(&r->parent, where, sizeof where);
    uint64_t backoff = 100;
    bool logged_waiting = false;
    while (!stopping(r)) {
        int fd = -1;
        bool offer = r->vnet_dev;
        if (open_stream(r, offer, &fd) < 0) {
            if (!logged_waiting)
                cl_log(CL_LOG_WARN, "tap_parent_unreachable", "parent", where, "error", cl_error_message(), NULL);
            logged_waiting = true;
            if (sleep_or_stop(r, backoff))
                break;
            backoff = backoff * 2 > r->s.backoff_max_ms ? r->s.backoff_max_ms : backoff * 2;
            continue;
        }
        logged_waiting = false;
        atomic_fetch_add(&r->connects, 1);
        size_t have = 0;
        bool vnet = false;
        int rc = offer ? negotiate(r, fd, buf, &have, &vnet) : 0;
        if (rc == 1) {
            close(fd);
            break;
        }
        bool got_frames = false;
        if (rc == 0) {
            set_offload(r, vnet);
            atomic_store(&r->connected, 1);
            atomic_store(&r->offload_on, vnet ? 1 : 0);
            if (vnet)
                atomic_fetch_add(&r->offload_streams, 1);
            cl_log(CL_LOG_INFO, "tap_connected", "parent", where, "offload",
                   vnet ? CL_TAP_OFFLOAD_TOKEN : offer ? "none (the parent did not accept)" : "off", NULL);
            pthread_mutex_lock(&r->sock_lock);
            r->sock = fd;
            r->vnet = vnet;
            r->gen++;
            pthread_mutex_unlock(&r->sock_lock);
            rc = pump_inbound(r, fd, buf, have, vnet, &got_frames);
        }
        shutdown(fd, SHUT_RDWR); /* a blocked send in the outbound thread returns */
        pthread_mutex_lock(&r->sock_lock);
        r->sock = -1;
        close(fd);
        pthread_mutex_unlock(&r->sock_lock);
        atomic_store(&r->connected, 0);
        atomic_store(&r->offload_on, 0);
        if (rc == 0)
            break; /* stop */
        cl_log(CL_LOG_WARN, "tap_disconnected", "parent", where, "error", cl_error_message(), NULL);
        /* a stream that carried frames was a working parent: start over
         * quickly; one that fails at once backs off */
        if (got_frames)
            backoff = 100;
        if (sleep_or_stop(r, backoff))
            break;
        backoff = backoff * 2 > r->s.backoff_max_ms ? r->s.backoff_max_ms : backoff * 2;
    }
    free(buf);
    return NULL;
}

const cl_egress_policy *cl_tap_relay_policy(const cl_tap_relay *r)
{
    return r->policy;
}

void cl_tap_relay_stop(cl_tap_relay *r)
{
    if (!r)
        return;
    if (r->stop_fd >= 0) {
        uint64_t one = 1;
        if (write(r->stop_fd, &one, sizeof one) < 0) {
            /* an eventfd write only fails on overflow: it is readable then */
        }
    }
    if (r->out_started)
        pthread_join(r->out_thread, NULL);
    if (r->in_started)
        pthread_join(r->in_thread, NULL);
    if (r->tap_fd >= 0)
        close(r->tap_fd);
    if (r->stop_fd >= 0)
        close(r->stop_fd);
    cl_egress_free(r->egress);
    cl_egress_policy_free(r->policy);
    pthread_mutex_destroy(&r->sock_lock);
    free(r);
}

int cl_tap_relay_start(const cl_tap_settings *s, cl_tap_relay **out)
{
    *out = NULL;
    CL_TRY(cl_tap_settings_check(s));
    cl_tap_relay *r = calloc(1, sizeof *r);
    if (!r)
        return cl_error_set(CL_ENOMEM, "out of memory");
    r->s = *s;
    r->tap_fd = r->stop_fd = r->sock = -1;
    pthread_mutex_init(&r->sock_lock, NULL);
    r->max_frame = cl_tap_max_frame(s->mtu);
    int rc = 0;
    CL_TRY_OUT(cl_address_parse(s->parent, &r->parent));
    if (s->egress_policy) {
        CL_TRY_OUT(cl_egress_policy_load(s->egress_policy, &r->policy));
        uint8_t gw[4];
        if (inet_pton(AF_INET, s->gateway, gw) != 1)
            CL_FAIL_OUT(CL_EINVAL, "--tap-gateway: not IPv4");
        CL_TRY_OUT(cl_egress_new(r->policy, gw, &r->egress));
        char allow[16], deny[16];
        snprintf(allow, sizeof allow, "%zu", cl_egress_policy_count(r->policy, false));
        snprintf(deny, sizeof deny, "%zu", cl_egress_policy_count(r->policy, true));
        cl_log(CL_LOG_INFO, "egress_policy", "file", s->egress_policy, "sha256",
               cl_egress_policy_sha256_hex(r->policy), "allow", allow, "deny", deny, NULL);
    } else {
        cl_log(CL_LOG_WARN, "egress_policy", "policy", "none: every frame passes (--egress-policy FILE)", NULL);
    }
    r->stop_fd = eventfd(0, EFD_CLOEXEC);
    if (r->stop_fd < 0)
        CL_FAIL_OUT(CL_EIO, "eventfd: %s", strerror(errno));
    bool lo_was_down;
    if (cl_netif_up("lo", &lo_was_down) < 0)
        cl_log(CL_LOG_WARN, "loopback_down", "error", cl_error_message(), NULL);
    r->vnet_dev = offload_offered(s);
    CL_TRY_OUT(open_tap(s->name, r->vnet_dev, &r->tap_fd));
    CL_TRY_OUT(configure(s));
    CL_TRY_OUT(write_resolv_conf(s));
    char mtu[12];
    snprintf(mtu, sizeof mtu, "%u", s->mtu);
    cl_log(CL_LOG_INFO, "tap_up", "name", s->name, "address", s->address, "gateway", s->gateway, "mtu", mtu, "mac",
           s->mac, "resolv_conf", s->resolv_conf ? s->resolv_conf : "", NULL);
    if (pthread_create(&r->out_thread, NULL, outbound, r) != 0)
        CL_FAIL_OUT(CL_EIO, "cannot start the relay thread");
    r->out_started = true;
    if (pthread_create(&r->in_thread, NULL, inbound, r) != 0)
        CL_FAIL_OUT(CL_EIO, "cannot start the relay thread");
    r->in_started = true;
out:
    if (rc < 0) {
        cl_tap_relay_stop(r);
        return rc;
    }
    *out = r;
    return 0;
}

/* ---- metrics --------------------------------------------------------------------------- */

static int metric(cl_buf *out, const char *ns, const char *name, const char *type, const char *help, uint64_t v)
{
    char line[512];
    int n = snprintf(line, sizeof line, "# HELP %s_%s %s\n# TYPE %s_%s %s\n%s_%s %llu\n", ns, name, help, ns, name,
                     type, ns, name, (unsigned long long)v);
    CL_ENSURE(n > 0 && (size_t)n < sizeof line, CL_ELIMIT, "metric line too long");
    return cl_buf_append(out, line, (size_t)n);
}

int cl_tap_relay_metrics(cl_tap_relay *r, const char *ns, cl_buf *out)
{
    CL_TRY(metric(out, ns, "tap_connected", "gauge", "1 while the stream to the parent is open.",
                  (uint64_t)atomic_load(&r->connected)));
    CL_TRY(metric(out, ns, "tap_connects_total", "counter", "Streams opened to the parent (POST /connect).",
                  atomic_load(&r->connects)));
    CL_TRY(metric(out, ns, "tap_stream_errors_total", "counter",
                  "Streams closed because the parent sent a malformed frame length (or an HTTP reply).",
                  atomic_load(&r->stream_errors)));
    CL_TRY(metric(out, ns, "tap_frames_out_total", "counter", "Frames relayed to the parent.",
                  atomic_load(&r->frames_out)));
    CL_TRY(metric(out, ns, "tap_bytes_out_total", "counter", "Frame bytes relayed to the parent.",
                  atomic_load(&r->bytes_out)));
    CL_TRY(metric(out, ns, "tap_frames_in_total", "counter", "Frames relayed from the parent.",
                  atomic_load(&r->frames_in)));
    CL_TRY(metric(out, ns, "tap_bytes_in_total", "counter", "Frame bytes relayed from the parent.",
                  atomic_load(&r->bytes_in)));
    CL_TRY(metric(out, ns, "tap_offload", "gauge",
                  "1 while the stream to the parent uses the offload extension (checksum/TSO records).",
                  (uint64_t)atomic_load(&r->offload_on)));
    CL_TRY(metric(out, ns, "tap_offload_streams_total", "counter",
                  "Streams on which the parent accepted the offload extension.", atomic_load(&r->offload_streams)));
    CL_TRY(metric(out, ns, "tap_vnet_refused_total", "counter",
                  "Outbound frames whose virtio header did not fit the frame (or a superframe on a plain stream).",
                  atomic_load(&r->vnet_refused_out)));
    CL_TRY(metric(out, ns, "tap_write_errors_total", "counter",
                  "Frames from the parent that tap0 refused (the kernel's own checks).",
                  atomic_load(&r->tap_write_errors)));
    CL_TRY(metric(out, ns, "tap_link_down_drops_total", "counter",
                  "Batches of frames lost while no stream to the parent was open.",
                  atomic_load(&r->link_down_drops)));
    if (!r->egress)
        return 0;
    char head[256];
    int n = snprintf(head, sizeof head,
                     "# HELP %s_egress_dropped_total Outbound frames the egress policy dropped, by reason.\n"
                     "# TYPE %s_egress_dropped_total counter\n",
                     ns, ns);
    CL_TRY(cl_buf_append(out, head, (size_t)n));
    for (int i = 1; i < CL_EGRESS_REASONS; i++) {
        char line[160];
        n = snprintf(line, sizeof line, "%s_egress_dropped_total{reason=\"%s\"} %llu\n", ns, cl_egress_reason_name(i),
                     (unsigned long long)cl_egress_count(r->egress, i));
        CL_TRY(cl_buf_append(out, line, (size_t)n));
    }
    CL_TRY(metric(out, ns, "egress_passed_total", "counter", "Outbound frames the egress policy let through.",
                  cl_egress_count(r->egress, CL_EGRESS_PASS)));
    CL_TRY(metric(out, ns, "egress_learned_total", "counter",
                  "Addresses learned from DNS answers for names the policy allows.",
                  cl_egress_learned_total(r->egress)));
    return metric(out, ns, "egress_learned", "gauge", "Learned addresses whose TTL has not run out.",
                  cl_egress_learned_now(r->egress, cl_monotonic_ms()));
}

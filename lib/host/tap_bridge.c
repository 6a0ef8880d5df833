/* cloister host --tap: the enclave's frames on a TAP device of the parent,
 * routed by the kernel, NAT by nftables (see the header for the picture).
 *
 * Set-up and tear-down (nft, the device, dnsmasq) run in the host's
 * process; the relay (the stream, the device's frames, the DNS relay) in a
 * forked process with one poll() loop. */
#include "cloister/host/tap_bridge.h"

#include "host/tap_dns.h"

#include "cloister/core/cursor.h"
#include "cloister/core/log.h"
#include "cloister/core/process.h"
#include "cloister/core/tap_vnet.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_arp.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define STREAM_BUF (512 * 1024)   /* each way; a read or a send moves up to this at once */
#define STREAM_SOCKBUF (4 << 20)  /* asked of the kernel for the stream, best effort */
#define READS_PER_TURN 16         /* then the other side gets its turn */
#define TAP_FRAMES_PER_TURN 256
#define MAX_PENDING 4             /* streams still sending their POST /connect */
#define HANDSHAKE_TIMEOUT_MS 10000
#define DNS_READY_TIMEOUT_MS 5000
#define DEVICE_BUSY_WAIT_MS 3000
#define STOP_GRACE_MS 3000
#define NFT_TABLE_PREFIX "cloister_tap_"

/* ---- configuration ----------------------------------------------------------------- */

void cl_tap_config_defaults(cl_tap_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    if (cl_address_parse(CL_TAP_DEFAULT_LISTEN, &cfg->listen) < 0)
        cl_error_clear(); /* a constant that parses */
    snprintf(cfg->dev, sizeof cfg->dev, "%s", CL_TAP_DEFAULT_DEV);
    inet_pton(AF_INET, CL_TAP_DEFAULT_GATEWAY, &cfg->gateway);
    inet_pton(AF_INET, CL_TAP_DEFAULT_ENCLAVE, &cfg->enclave);
    cfg->prefix = CL_TAP_DEFAULT_PREFIX;
    cfg->mtu = CL_TAP_DEFAULT_MTU;
    cfg->dns = CL_TAP_DNS_RELAY;
    cfg->offload = true;
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

int cl_tap_forward_parse(const char *text, cl_tap_forward *out)
{
    const char *eq = strchr(text, '=');
    size_t n = eq ? (size_t)(eq - text) : strlen(text);
    int rc = parse_port(text, n, &out->port);
    if (rc < 0)
        return cl_error_prefix(rc, "--tap-forward %s: PORT: ", text);
    out->enclave_port = out->port;
    if (eq) {
        rc = parse_port(eq + 1, strlen(eq + 1), &out->enclave_port);
        if (rc < 0)
            return cl_error_prefix(rc, "--tap-forward %s: ENCLAVE_PORT: ", text);
    }
    return CL_OK;
}

/* Device names go into nft's ruleset and a table name unquoted: letters,
 * digits, '_' and '-' only. */
static int check_config(const cl_tap_config *cfg)
{
    size_t n = strnlen(cfg->dev, sizeof cfg->dev);
    CL_ENSURE(n > 0 && n < IFNAMSIZ, CL_EINVAL, "--tap-dev: 1 to %d characters", IFNAMSIZ - 1);
    for (size_t i = 0; i < n; i++) {
        char c = cfg->dev[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                  (c == '-' && i > 0);
        CL_ENSURE(ok, CL_EINVAL, "--tap-dev %s: only letters, digits, '_' and '-' (not first)", cfg->dev);
    }
    CL_ENSURE(cfg->prefix >= 8 && cfg->prefix <= 30, CL_EINVAL, "the TAP subnet's prefix must be from 8 to 30, got %u",
              cfg->prefix);
    uint32_t mask = htonl(~0u << (32 - cfg->prefix));
    CL_ENSURE((cfg->gateway.s_addr & mask) == (cfg->enclave.s_addr & mask), CL_EINVAL,
              "the gateway and the enclave's address are not in one /%u", cfg->prefix);
    CL_ENSURE(cfg->gateway.s_addr != cfg->enclave.s_addr, CL_EINVAL, "the gateway and the enclave have one address");
    CL_ENSURE(cfg->mtu >= 576 && cfg->mtu <= CL_TAP_MAX_MTU, CL_EINVAL, "--tap-mtu must be from 576 to %d, got %u",
              CL_TAP_MAX_MTU, cfg->mtu);
    CL_ENSURE(cfg->forward_count <= CL_TAP_MAX_FORWARDS && cfg->loopback_count <= CL_TAP_MAX_FORWARDS, CL_ELIMIT,
              "at most %d --tap-forward and %d --tap-loopback", CL_TAP_MAX_FORWARDS, CL_TAP_MAX_FORWARDS);
    for (size_t i = 0; i < cfg->forward_count; i++)
        for (size_t k = i + 1; k < cfg->forward_count; k++)
            CL_ENSURE(cfg->forwards[i].port != cfg->forwards[k].port, CL_EINVAL,
                      "--tap-forward: port %u is published twice", cfg->forwards[i].port);
    return CL_OK;
}

/* ---- running programs (nft) ---------------------------------------------------------------- */

/* Runs PROGRAM ARGS with /dev/fd/N holding input (when not NULL); on
 * failure the error carries its stderr. */
static int run_tool(const char *program, const char *const *args, const char *input, const char *what)
{
    int in = -1, err = -1, rc = CL_OK;
    pid_t pid = -1;
    char path[32] = "";
    const char *argv[16];
    size_t argc = 0;
    argv[argc++] = program;
    if (input) {
        in = memfd_create("cloister-tap-input", 0); /* inherited: the tool opens /dev/fd/N */
        if (in < 0)
            CL_FAIL_OUT(CL_EIO, "memfd_create: %s", strerror(errno));
        size_t n = strlen(input);
        if (write(in, input, n) != (ssize_t)n)
            CL_FAIL_OUT(CL_EIO, "writing %s's input: %s", program, strerror(errno));
        snprintf(path, sizeof path, "/dev/fd/%d", in);
    }
    for (size_t i = 0; args[i] && argc < 14; i++)
        argv[argc++] = strcmp(args[i], "@INPUT") ? args[i] : path;
    argv[argc] = NULL;
    err = memfd_create("cloister-tap-stderr", MFD_CLOEXEC);
    if (err < 0)
        CL_FAIL_OUT(CL_EIO, "memfd_create: %s", strerror(errno));
    cl_process_spec spec = {.program = program,
                            .argv = (char *const *)argv,
                            .search_path = true,
                            .die_with_parent = true,
                            .stdout_fd = err,
                            .stderr_fd = err};
    CL_TRY_OUT(cl_process_spawn(&spec, &pid));
    bool exited = false;
    int status = 0;
    CL_TRY_OUT(cl_process_wait(pid, 30000, &exited, &status));
    if (!exited) {
        cl_process_stop(pid, 1000, &status);
        CL_FAIL_OUT(CL_EIO, "%s: %s did not finish in 30 s", what, program);
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        char text[1024] = "", st[64];
        ssize_t got = pread(err, text, sizeof text - 1, 0);
        text[got > 0 ? got : 0] = '\0';
        for (char *p = text; *p; p++)
            if (*p == '\n')
                *p = ' ';
        cl_process_status_text(status, st, sizeof st);
        CL_FAIL_OUT(CL_EIO, "%s: %s failed (%s): %s", what, program, st, text);
    }
out:
    if (in >= 0)
        close(in);
    if (err >= 0)
        close(err);
    return rc;
}

static void table_name(const cl_tap_config *cfg, char *out, size_t len)
{
    snprintf(out, len, NFT_TABLE_PREFIX "%s", cfg->dev);
}

/* The whole table, preceded by the deletion of any table of that name (a
 * leftover of a crashed run): nft applies the file as one transaction, so
 * there is no moment without rules and no error when there was none. */
static char *ruleset(const cl_tap_config *cfg)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f)
        return NULL;
    char table[64], gw[INET_ADDRSTRLEN], encl[INET_ADDRSTRLEN], net[INET_ADDRSTRLEN];
    table_name(cfg, table, sizeof table);
    inet_ntop(AF_INET, &cfg->gateway, gw, sizeof gw);
    inet_ntop(AF_INET, &cfg->enclave, encl, sizeof encl);
    struct in_addr subnet = {cfg->gateway.s_addr & htonl(~0u << (32 - cfg->prefix))};
    inet_ntop(AF_INET, &subnet, net, sizeof net);
    const char *dev = cfg->dev;
    fprintf(f, "table inet %s\ndelete table inet %s\n", table, table);
    fprintf(f, "table inet %s {\n", table);
    fprintf(f, "  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n");
    if (cfg->imds_port)
        fprintf(f, "    iifname \"%s\" ip daddr 169.254.169.254 tcp dport 80 dnat ip to %s:%u\n", dev, gw,
                cfg->imds_port);
    for (size_t i = 0; i < cfg->loopback_count; i++)
        fprintf(f, "    iifname \"%s\" ip daddr %s tcp dport %u dnat ip to 127.0.0.1:%u\n", dev, gw, cfg->loopback[i],
                cfg->loopback[i]);
    for (size_t i = 0; i < cfg->forward_count; i++)
        fprintf(f, "    iifname != \"%s\" fib daddr type local tcp dport %u dnat ip to %s:%u\n", dev,
                cfg->forwards[i].port, encl, cfg->forwards[i].enclave_port);
    fprintf(f, "  }\n");
    fprintf(f, "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n");
    fprintf(f, "    ip saddr %s/%u oifname != \"%s\" masquerade\n  }\n", net, cfg->prefix, dev);
    /* what the enclave may not send through the parent: another source
     * than its subnet, IPv6 (not routed here), link-local destinations
     * (the real IMDS among them: the gate is the only way there) */
    fprintf(f, "  chain forward {\n    type filter hook forward priority filter; policy accept;\n");
    fprintf(f, "    iifname \"%s\" meta nfproto ipv6 drop\n", dev);
    fprintf(f, "    iifname \"%s\" ip saddr != %s/%u drop\n", dev, net, cfg->prefix);
    fprintf(f, "    iifname \"%s\" ip daddr 169.254.0.0/16 drop\n  }\n}\n", dev);
    if (fclose(f) != 0) {
        free(text);
        return NULL;
    }
    return text;
}

static const char *nft_program(const cl_tap_config *cfg)
{
    return cfg->nft ? cfg->nft : "nft";
}

static int nft_apply(const cl_tap_config *cfg)
{
    char *text = ruleset(cfg);
    CL_ENSURE(text, CL_ENOMEM, "out of memory");
    const char *args[] = {"-f", "@INPUT", NULL};
    int rc = run_tool(nft_program(cfg), args, text, "installing the nftables rules");
    free(text);
    return rc;
}

static int nft_delete(const cl_tap_config *cfg)
{
    char table[64];
    table_name(cfg, table, sizeof table);
    char text[160];
    /* "add" first, so that a table already gone is no error */
    snprintf(text, sizeof text, "table inet %s\ndelete table inet %s\n", table, table);
    const char *args[] = {"-f", "@INPUT", NULL};
    return run_tool(nft_program(cfg), args, text, "removing the nftables rules");
}

/* ---- the device ------------------------------------------------------------------------ */

static int write_proc(const char *path, const char *value)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    CL_ENSURE(fd >= 0, CL_EIO, "%s: %s", path, strerror(errno));
    ssize_t n = write(fd, value, strlen(value));
    int e = errno;
    close(fd);
    CL_ENSURE(n == (ssize_t)strlen(value), CL_EIO, "%s: %s", path, strerror(e));
    return CL_OK;
}

static int enable_forwarding(void)
{
    const char *path = "/proc/sys/net/ipv4/ip_forward";
    char v[4] = "";
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    CL_ENSURE(fd >= 0, CL_EIO, "%s: %s", path, strerror(errno));
    ssize_t n = read(fd, v, sizeof v - 1);
    close(fd);
    if (n > 0 && v[0] == '1')
        return CL_OK;
    CL_TRY(write_proc(path, "1"));
    cl_log(CL_LOG_INFO, "tap-ip-forward", "detail",
           "net.ipv4.ip_forward was 0 and is now 1 (the kernel routes the enclave's traffic); it stays 1 after the "
           "host stops",
           NULL);
    return CL_OK;
}

/* A non-persistent TAP: it goes away with its last descriptor.  A device
 * of the name that is busy may be the relay of a run that was just killed
 * and is still exiting: waited for a moment. */
static int make_device(const cl_tap_config *cfg, int *fd_out)
{
    *fd_out = -1;
    uint64_t deadline = 0;
    for (;;) {
        int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
        CL_ENSURE(fd >= 0, CL_EIO, "/dev/net/tun: %s (the TAP network needs the tun module and CAP_NET_ADMIN)",
                  strerror(errno));
        struct ifreq ifr;
        memset(&ifr, 0, sizeof ifr);
        /* always with the virtio header: a stream that did not agree to the
         * offload extension gets plain frames (offloads off, the header
         * stripped), one that did gets records; the flag cannot change
         * while the device is open */
        ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        memcpy(ifr.ifr_name, cfg->dev, strnlen(cfg->dev, IFNAMSIZ - 1));
        if (ioctl(fd, TUNSETIFF, &ifr) == 0) {
            int hsz = CL_TAP_VNET_HDR;
            if (ioctl(fd, TUNSETVNETHDRSZ, &hsz) < 0 || ioctl(fd, TUNSETOFFLOAD, 0) < 0) {
                int e = errno;
                close(fd);
                return cl_error_set(CL_EIO, "TUNSETVNETHDRSZ/TUNSETOFFLOAD %s: %s", cfg->dev, strerror(e));
            }
#ifdef TUNSETVNETLE
            int le = 1;
            (void)ioctl(fd, TUNSETVNETLE, &le); /* the wire's fields are little-endian; a no-op where the host is */
#endif
            /* a leftover made persistent by someone: ours now, and not persistent */
            if (ioctl(fd, TUNSETPERSIST, 0) < 0) {
                int e = errno;
                close(fd);
                return cl_error_set(CL_EIO, "TUNSETPERSIST %s: %s", cfg->dev, strerror(e));
            }
            *fd_out = fd;
            return CL_OK;
        }
        int e = errno;
        close(fd);
        if (e == EBUSY) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            uint64_t ms = (uint64_t)now.tv_sec * 1000 + (uint64_t)now.tv_nsec / 1000000;
            if (!deadline)
                deadline = ms + DEVICE_BUSY_WAIT_MS;
            if (ms < deadline) {
                struct timespec pause = {0, 50 * 1000000};
                nanosleep(&pause, NULL);
                continue;
            }
            return cl_error_set(CL_EIO, "the TAP device %s is in use by another process (another cloister host --tap?)",
                                cfg->dev);
        }
        if (e == EINVAL)
            return cl_error_set(CL_EIO, "a device named %s exists and is not a TAP device; choose another --tap-dev",
                                cfg->dev);
        return cl_error_set(CL_EIO, "TUNSETIFF %s: %s", cfg->dev, strerror(e));
    }
}

static int configure_device(const cl_tap_config *cfg)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    CL_ENSURE(s >= 0, CL_EIO, "socket: %s", strerror(errno));
    int rc = CL_OK;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    memcpy(ifr.ifr_name, cfg->dev, strnlen(cfg->dev, IFNAMSIZ - 1));
    struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
    sin->sin_family = AF_INET;
    sin->sin_addr = cfg->gateway;
    if (ioctl(s, SIOCSIFADDR, &ifr) < 0)
        CL_FAIL_OUT(CL_EIO, "setting %s's address: %s", cfg->dev, strerror(errno));
    sin->sin_addr.s_addr = htonl(~0u << (32 - cfg->prefix));
    if (ioctl(s, SIOCSIFNETMASK, &ifr) < 0)
        CL_FAIL_OUT(CL_EIO, "setting %s's netmask: %s", cfg->dev, strerror(errno));
    ifr.ifr_mtu = (int)cfg->mtu;
    if (ioctl(s, SIOCSIFMTU, &ifr) < 0)
        CL_FAIL_OUT(CL_EIO, "setting %s's MTU to %u: %s", cfg->dev, cfg->mtu, strerror(errno));
    /* gvproxy's gateway MAC, the same on every run: an enclave that outlives
     * a restart of the host keeps its ARP entry for the gateway, and a new
     * random MAC would leave it talking to the old one until that expires */
    static const uint8_t gateway_mac[6] = {0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd};
    ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
    memcpy(ifr.ifr_hwaddr.sa_data, gateway_mac, sizeof gateway_mac);
    if (ioctl(s, SIOCSIFHWADDR, &ifr) < 0)
        CL_FAIL_OUT(CL_EIO, "setting %s's MAC address: %s", cfg->dev, strerror(errno));
    ifr.ifr_qlen = 1000; /* tun's default of 500 drops bursts the relay would carry */
    (void)ioctl(s, SIOCSIFTXQLEN, &ifr);
    /* no IPv6 on the device: nothing of the parent's (router solicitations,
     * link-local addresses) to send to the enclave, which is IPv4 here */
    char path[96];
    snprintf(path, sizeof path, "/proc/sys/net/ipv6/conf/%s/disable_ipv6", cfg->dev);
    if (access(path, F_OK) == 0 && write_proc(path, "1") < 0)
        cl_error_clear();
    if (cfg->loopback_count) {
        /* DNAT to 127.0.0.1 of what comes in on this device only */
        snprintf(path, sizeof path, "/proc/sys/net/ipv4/conf/%s/route_localnet", cfg->dev);
        CL_TRY_OUT(write_proc(path, "1"));
    }
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
        CL_FAIL_OUT(CL_EIO, "reading %s's flags: %s", cfg->dev, strerror(errno));
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
        CL_FAIL_OUT(CL_EIO, "bringing %s up: %s", cfg->dev, strerror(errno));
out:
    close(s);
    return rc;
}

/* ---- DNS: the upstream, the relay's sockets, dnsmasq ---------------------------------------- */

static int bind_gateway(const cl_tap_config *cfg, int type, int *fd_out)
{
    int fd = socket(AF_INET, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    CL_ENSURE(fd >= 0, CL_EIO, "socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(53), .sin_addr = cfg->gateway};
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || (type == SOCK_STREAM && listen(fd, 64) < 0)) {
        int e = errno;
        close(fd);
        char gw[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &cfg->gateway, gw, sizeof gw);
        return cl_error_set(CL_EIO, "the DNS relay cannot listen on %s:53/%s: %s", gw,
                            type == SOCK_STREAM ? "tcp" : "udp", strerror(e));
    }
    *fd_out = fd;
    return CL_OK;
}

/* ---- the bridge object ---------------------------------------------------------------------- */

struct cl_tap_bridge {
    cl_tap_config cfg;
    int tap;                  /* the device (kept open here too: the device lives as long as the host) */
    int listen_fd;            /* the stream's listener (the relay's; closed here after the fork) */
    cl_socket_file listen_file;
    int dns_udp, dns_tcp;     /* the relay's DNS sockets on the gateway address */
    struct sockaddr_storage upstream;
    socklen_t upstream_len;
    char upstream_text[INET6_ADDRSTRLEN + 16];
    pid_t relay, dnsmasq;
    bool nft_installed;
};

static int start_dnsmasq(cl_tap_bridge *b)
{
    const cl_tap_config *cfg = &b->cfg;
    char gw[INET_ADDRSTRLEN], listen_arg[64], server_arg[INET6_ADDRSTRLEN + 32];
    inet_ntop(AF_INET, &cfg->gateway, gw, sizeof gw);
    snprintf(listen_arg, sizeof listen_arg, "--listen-address=%s", gw);
    const char *argv[16];
    size_t n = 0;
    argv[n++] = cfg->dnsmasq ? cfg->dnsmasq : "dnsmasq";
    argv[n++] = "--keep-in-foreground";
    argv[n++] = "--conf-file=/dev/null"; /* nothing of the parent's dnsmasq set-up */
    argv[n++] = "--pid-file=";            /* none */
    argv[n++] = "--no-hosts";
    argv[n++] = "--bind-interfaces";
    argv[n++] = listen_arg;
    argv[n++] = "--port=53";
    argv[n++] = "--cache-size=1000";
    argv[n++] = "--log-facility=-";
    argv[n++] = "--user=root"; /* no other user to assume exists on the parent */
    if (cfg->dns_server) {
        /* dnsmasq spells a server's port with '#' */
        char host[INET6_ADDRSTRLEN];
        unsigned port = 53;
        if (b->upstream.ss_family == AF_INET) {
            struct sockaddr_in *a = (struct sockaddr_in *)&b->upstream;
            inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
            port = ntohs(a->sin_port);
        } else {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&b->upstream;
            inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
            port = ntohs(a->sin6_port);
        }
        snprintf(server_arg, sizeof server_arg, "--server=%s#%u", host, port);
        argv[n++] = "--no-resolv";
        argv[n++] = server_arg;
    }
    argv[n] = NULL;
    cl_process_spec spec = {
        .program = argv[0], .argv = (char *const *)argv, .search_path = true, .die_with_parent = true};
    CL_TRY(cl_process_spawn(&spec, &b->dnsmasq));
    /* ready when it accepts on the gateway's port 53 (it binds before serving) */
    for (int waited = 0;; waited += 50) {
        bool exited = false;
        int status = 0;
        CL_TRY(cl_process_wait(b->dnsmasq, 0, &exited, &status));
        if (exited) {
            char st[64];
            cl_process_status_text(status, st, sizeof st);
            b->dnsmasq = 0;
            return cl_error_set(CL_EIO, "dnsmasq exited at start (%s); its log is above", st);
        }
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        CL_ENSURE(fd >= 0, CL_EIO, "socket: %s", strerror(errno));
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(53), .sin_addr = cfg->gateway};
        int c = connect(fd, (struct sockaddr *)&a, sizeof a);
        close(fd);
        if (c == 0)
            return CL_OK;
        CL_ENSURE(waited < DNS_READY_TIMEOUT_MS, CL_EIO, "dnsmasq did not listen on %s:53 within %d s", gw,
                  DNS_READY_TIMEOUT_MS / 1000);
        struct timespec pause = {0, 50 * 1000000};
        nanosleep(&pause, NULL);
    }
}

static void relay_main(cl_tap_bridge *b); /* the relay process; never returns */

pid_t cl_tap_bridge_pid(const cl_tap_bridge *b)
{
    return b ? b->relay : 0;
}

int cl_tap_bridge_open(const cl_tap_config *cfg, cl_tap_bridge **out)
{
    *out = NULL;
    CL_TRY(check_config(cfg));
    cl_tap_bridge *b = calloc(1, sizeof *b);
    CL_ENSURE(b, CL_ENOMEM, "out of memory");
    b->cfg = *cfg;
    b->tap = b->listen_fd = b->dns_udp = b->dns_tcp = -1;
    int rc = CL_OK;
    if (cfg->dns != CL_TAP_DNS_OFF) {
        rc = tap_dns_upstream(cfg->dns_server, &b->upstream, &b->upstream_len, b->upstream_text,
                              sizeof b->upstream_text);
        if (rc < 0) {
            cl_error_prefix(rc, "--dns-server: ");
            goto out;
        }
    }
    CL_TRY_OUT(nft_apply(cfg));
    b->nft_installed = true;
    CL_TRY_OUT(make_device(cfg, &b->tap));
    CL_TRY_OUT(configure_device(cfg));
    CL_TRY_OUT(enable_forwarding());
    if (cfg->dns == CL_TAP_DNS_RELAY) {
        CL_TRY_OUT(bind_gateway(cfg, SOCK_DGRAM, &b->dns_udp));
        CL_TRY_OUT(bind_gateway(cfg, SOCK_STREAM, &b->dns_tcp));
    } else if (cfg->dns == CL_TAP_DNS_DNSMASQ) {
        CL_TRY_OUT(start_dnsmasq(b));
    }
    rc = cl_address_listen(&cfg->listen, 16, &b->listen_fd);
    if (rc < 0) {
        cl_error_prefix(rc, "--tap: ");
        goto out;
    }
    cl_socket_file_remember(&cfg->listen, &b->listen_file);
    int fl = fcntl(b->listen_fd, F_GETFL);
    if (fl < 0 || fcntl(b->listen_fd, F_SETFL, fl | O_NONBLOCK) < 0)
        CL_FAIL_OUT(CL_EIO, "fcntl: %s", strerror(errno));

    fflush(stdout);
    fflush(stderr);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        CL_FAIL_OUT(CL_EIO, "fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
            _exit(0);
        relay_main(b);
    }
    b->relay = pid;
    /* the relay's now */
    close(b->listen_fd);
    b->listen_fd = -1;
    if (b->dns_udp >= 0)
        close(b->dns_udp);
    if (b->dns_tcp >= 0)
        close(b->dns_tcp);
    b->dns_udp = b->dns_tcp = -1;

    char listen[CL_ADDRESS_PATH_MAX + 16], gw[INET_ADDRSTRLEN], encl[INET_ADDRSTRLEN], mtu[16], pids[16], fwd[512],
        imds[32], table[64];
    cl_address_format(&cfg->listen, listen, sizeof listen);
    inet_ntop(AF_INET, &cfg->gateway, gw, sizeof gw);
    inet_ntop(AF_INET, &cfg->enclave, encl, sizeof encl);
    snprintf(mtu, sizeof mtu, "%u", cfg->mtu);
    snprintf(pids, sizeof pids, "%d", (int)pid);
    snprintf(imds, sizeof imds, cfg->imds_port ? "%s:%u" : "-", gw, cfg->imds_port);
    table_name(cfg, table, sizeof table);
    size_t used = 0;
    fwd[0] = '\0';
    for (size_t i = 0; i < cfg->forward_count && used < sizeof fwd - 16; i++) {
        int w = snprintf(fwd + used, sizeof fwd - used, "%s%u=%u", i ? "," : "", cfg->forwards[i].port,
                         cfg->forwards[i].enclave_port);
        if (w > 0)
            used += (size_t)w;
    }
    cl_log(CL_LOG_INFO, "tap-ready", "listen", listen, "dev", cfg->dev, "gateway", gw, "enclave", encl, "mtu", mtu,
           "table", table, "forwards", used ? fwd : "-", "dns",
           cfg->dns == CL_TAP_DNS_RELAY ? "relay" : cfg->dns == CL_TAP_DNS_DNSMASQ ? "dnsmasq" : "off", "upstream",
           cfg->dns == CL_TAP_DNS_OFF ? "-" : b->upstream_text, "imds", imds, "relay_pid", pids, NULL);
    *out = b;
    return CL_OK;
out:
    cl_tap_bridge_close(b);
    return rc;
}

int cl_tap_bridge_wait(cl_tap_bridge *b)
{
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, &old);
    int rc = CL_OK;
    for (;;) {
        pid_t who[2] = {b->relay, b->dnsmasq};
        const char *what[2] = {"the TAP relay", "dnsmasq"};
        for (int i = 0; i < 2; i++) {
            int status;
            if (who[i] > 0 && waitpid(who[i], &status, WNOHANG) == who[i]) {
                char st[64];
                cl_process_status_text(status, st, sizeof st);
                if (i == 0)
                    b->relay = 0;
                else
                    b->dnsmasq = 0;
                rc = cl_error_set(CL_EIO, "%s exited (%s)", what[i], st);
                goto out;
            }
        }
        siginfo_t si;
        int sig = sigwaitinfo(&set, &si);
        if (sig == SIGTERM || sig == SIGINT) {
            cl_log(CL_LOG_INFO, "stopping", "signal", sig == SIGINT ? "SIGINT" : "SIGTERM", NULL);
            break;
        }
    }
out:
    sigprocmask(SIG_SETMASK, &old, NULL);
    return rc;
}

void cl_tap_bridge_close(cl_tap_bridge *b)
{
    if (!b)
        return;
    if (b->relay > 0) {
        int status;
        cl_process_stop(b->relay, STOP_GRACE_MS, &status);
        if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
            char st[64];
            cl_process_status_text(status, st, sizeof st);
            cl_log(CL_LOG_WARN, "tap-relay-exited", "status", st, NULL);
        }
    }
    if (b->dnsmasq > 0)
        cl_process_stop(b->dnsmasq, STOP_GRACE_MS, NULL);
    if (b->listen_fd >= 0)
        close(b->listen_fd);
    cl_socket_file_remove(&b->listen_file);
    if (b->dns_udp >= 0)
        close(b->dns_udp);
    if (b->dns_tcp >= 0)
        close(b->dns_tcp);
    if (b->tap >= 0)
        close(b->tap); /* the device goes with it */
    if (b->nft_installed && nft_delete(&b->cfg) < 0)
        cl_log(CL_LOG_ERROR, "tap-cleanup-failed", "detail", cl_error_message(), NULL);
    else if (b->nft_installed)
        cl_log(CL_LOG_INFO, "tap-removed", "dev", b->cfg.dev, NULL);
    free(b);
}

/* ---- the relay process ----------------------------------------------------------------------- */

typedef struct pending {
    int fd;
    uint64_t since;
    size_t len;
    uint8_t buf[CL_TAP_CONNECT_MAX];
} pending;

typedef struct relay {
    cl_tap_bridge *b;
    int sigfd;
    int stream;
    char peer[CL_ADDRESS_PATH_MAX + 16];
    pending pend[MAX_PENDING];
    uint8_t *in, *out;
    size_t in_len, out_off, out_len;
    size_t max_frame;
    bool vnet;       /* this stream agreed to the offload extension: records, not plain frames */
    size_t out_need; /* room one frame from the device needs in r->out */
    uint64_t frames_in, frames_out, dropped_in, dropped_out, connections;
    tap_dns *dns; /* the DNS relay, or NULL */
    bool stop;
} relay;

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void stream_close(relay *r, const char *reason, const char *detail)
{
    if (r->stream < 0)
        return;
    close(r->stream);
    r->stream = -1;
    char in[24], out[24], din[24], dout[24];
    snprintf(in, sizeof in, "%llu", (unsigned long long)r->frames_in);
    snprintf(out, sizeof out, "%llu", (unsigned long long)r->frames_out);
    snprintf(din, sizeof din, "%llu", (unsigned long long)r->dropped_in);
    snprintf(dout, sizeof dout, "%llu", (unsigned long long)r->dropped_out);
    cl_log(!strcmp(reason, "malformed") ? CL_LOG_WARN : CL_LOG_INFO, "tap-disconnected", "peer", r->peer, "reason",
           reason, "detail", detail ? detail : "-", "frames_in", in, "frames_out", out, "dropped_in", din,
           "dropped_out", dout, NULL);
    r->in_len = r->out_off = r->out_len = 0;
}

/* The complete frames at the start of r->in to the device, the rest kept
 * for the next read; CL_EPARSE/CL_ELIMIT for a length that breaks the
 * framing (the stream cannot be resynchronised: the caller closes it). */
static int frames_to_tap(relay *r)
{
    size_t at = 0;
    int rc = CL_OK;
    for (;;) {
        cl_slice frame;
        size_t used;
        bool complete;
        ssize_t w;
        if (r->vnet) {
            cl_tap_vnet_hdr h;
            rc = cl_tap_vnet_decode(r->in + at, r->in_len - at, r->max_frame, &frame, &h, &used, &complete);
            if (rc < 0 || !complete)
                break;
            w = write(r->b->tap, frame.data, frame.len); /* header and frame: one packet */
        } else {
            rc = cl_tap_decode(r->in + at, r->in_len - at, r->max_frame, &frame, &used, &complete);
            if (rc < 0 || !complete)
                break;
            static const uint8_t none[CL_TAP_VNET_HDR];
            struct iovec iov[2] = {{(void *)none, sizeof none}, {(void *)frame.data, frame.len}};
            w = writev(r->b->tap, iov, 2);
            if (w > 0)
                w -= (ssize_t)sizeof none;
        }
        /* one frame per write: a TAP takes a packet per write.  A full queue
         * or a frame the device refuses is a dropped packet, as on a wire. */
        if (w == (ssize_t)frame.len)
            r->frames_in++;
        else
            r->dropped_in++;
        at += used;
    }
    memmove(r->in, r->in + at, r->in_len - at);
    r->in_len -= at;
    return rc;
}

static void stream_readable(relay *r)
{
    for (int turn = 0; turn < READS_PER_TURN && r->stream >= 0; turn++) {
        ssize_t n = recv(r->stream, r->in + r->in_len, STREAM_BUF - r->in_len, MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        if (n <= 0) {
            if (n == 0 && r->in_len)
                stream_close(r, "malformed", "the stream ended inside a frame");
            else
                stream_close(r, n == 0 ? "eof" : "error", n == 0 ? NULL : strerror(errno));
            return;
        }
        r->in_len += (size_t)n;
        if (frames_to_tap(r) < 0) {
            stream_close(r, "malformed", cl_error_message());
            return;
        }
        if ((size_t)n < STREAM_BUF / 2)
            return; /* drained, most likely: poll again rather than a recv that says EAGAIN */
    }
}

static void stream_flush(relay *r)
{
    while (r->stream >= 0 && r->out_off < r->out_len) {
        ssize_t n = send(r->stream, r->out + r->out_off, r->out_len - r->out_off, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                return;
            stream_close(r, "error", strerror(errno));
            return;
        }
        r->out_off += (size_t)n;
    }
    if (r->out_off == r->out_len)
        r->out_off = r->out_len = 0;
}

/* Frames from the device, gathered into one send: under load many wait
 * in the device's queue, and each costs a read but not a send. */
static void tap_readable(relay *r)
{
    uint8_t scratch[65536];
    for (int i = 0; i < TAP_FRAMES_PER_TURN; i++) {
        if (r->stream < 0) {
            /* nobody to give them to: drain, so that the queue holds nothing stale */
            if (read(r->b->tap, scratch, sizeof scratch) < 0)
                return;
            r->dropped_out++;
            continue;
        }
        if (r->out_off > 0 && r->out_len + r->out_need > STREAM_BUF) {
            memmove(r->out, r->out + r->out_off, r->out_len - r->out_off);
            r->out_len -= r->out_off;
            r->out_off = 0;
        }
        if (r->out_len + r->out_need > STREAM_BUF)
            break; /* full: the stream is slower; the device's queue waits */
        uint8_t *at = r->out + r->out_len;
        cl_tap_vnet_hdr h;
        if (r->vnet) {
            /* the kernel's header and frame land where the record wants them */
            ssize_t n = read(r->b->tap, at + CL_TAP_VNET_LEN_BYTES, CL_TAP_VNET_RECORD_MAX);
            if (n < 0)
                break;
            cl_tap_vnet_hdr_read(at + CL_TAP_VNET_LEN_BYTES, &h);
            if (n < CL_TAP_VNET_HDR + CL_TAP_ETH_HEADER ||
                cl_tap_vnet_check(&h, at + CL_TAP_VNET_LEN_BYTES + CL_TAP_VNET_HDR, (size_t)n - CL_TAP_VNET_HDR,
                                  r->max_frame) < 0 ||
                cl_tap_vnet_encode_len((size_t)n, at) < 0) {
                r->dropped_out++;
                continue;
            }
            r->out_len += CL_TAP_VNET_LEN_BYTES + (size_t)n;
            r->frames_out++;
            continue;
        }
        uint8_t hdr[CL_TAP_VNET_HDR];
        struct iovec iov[2] = {{hdr, sizeof hdr}, {at + 2, r->max_frame}};
        ssize_t n = readv(r->b->tap, iov, 2);
        if (n < 0)
            break;
        n -= (ssize_t)sizeof hdr;
        cl_tap_vnet_hdr_read(hdr, &h);
        /* offloads are off for a plain stream; a superframe queued while the
         * previous stream had them on cannot be framed */
        if (n < CL_TAP_ETH_HEADER || h.gso_type || (h.flags & CL_TAP_VNET_F_NEEDS_CSUM)) {
            r->dropped_out++;
            continue;
        }
        at[0] = (uint8_t)(n & 0xff);
        at[1] = (uint8_t)(n >> 8);
        r->out_len += 2 + (size_t)n;
        r->frames_out++;
    }
    stream_flush(r);
}

static void accept_streams(relay *r)
{
    for (;;) {
        int fd = accept4(r->b->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        int slot = -1;
        uint64_t oldest = UINT64_MAX;
        for (int i = 0; i < MAX_PENDING; i++) {
            if (r->pend[i].fd < 0) {
                slot = i;
                break;
            }
            if (r->pend[i].since < oldest) {
                oldest = r->pend[i].since;
                slot = i;
            }
        }
        if (r->pend[slot].fd >= 0) {
            cl_log(CL_LOG_WARN, "tap-handshake-dropped", "reason", "too many streams without a handshake", NULL);
            close(r->pend[slot].fd);
        }
        r->pend[slot].fd = fd;
        r->pend[slot].since = now_ms();
        r->pend[slot].len = 0;
    }
}

static void set_offload(relay *r, bool on)
{
    unsigned flags = on ? TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN : 0;
    if (ioctl(r->b->tap, TUNSETOFFLOAD, flags) < 0) {
        cl_log(CL_LOG_WARN, "tap-offload-failed", "detail", strerror(errno), NULL);
        on = false;
        (void)ioctl(r->b->tap, TUNSETOFFLOAD, 0);
    }
    r->vnet = on;
    r->out_need = on ? CL_TAP_VNET_LEN_BYTES + CL_TAP_VNET_RECORD_MAX : 2 + r->max_frame;
}

static void take_stream(relay *r, pending *p, size_t head, bool offered)
{
    if (r->stream >= 0)
        stream_close(r, "replaced", "a new stream completed its handshake");
    r->stream = p->fd;
    p->fd = -1;
    r->connections++;
    int sz = STREAM_SOCKBUF;
    setsockopt(r->stream, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
    setsockopt(r->stream, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
    snprintf(r->peer, sizeof r->peer, "stream-%llu", (unsigned long long)r->connections);
    r->frames_in = r->frames_out = r->dropped_in = r->dropped_out = 0;
    set_offload(r, offered && r->b->cfg.offload);
    if (r->vnet) {
        /* the acceptance goes first: the enclave reads it before any record */
        cl_buf reply = CL_BUF_INIT;
        if (cl_tap_offload_reply(&reply) == 0 && reply.len <= STREAM_BUF) {
            memcpy(r->out, reply.data, reply.len);
            r->out_len = reply.len;
        }
        cl_buf_free(&reply);
    }
    /* what came after the head is frames already */
    r->in_len = p->len - head;
    memcpy(r->in, p->buf + head, r->in_len);
    cl_log(CL_LOG_INFO, "tap-connected", "peer", r->peer, "offload",
           r->vnet ? CL_TAP_OFFLOAD_TOKEN : offered ? "offered, refused (--tap-offload off)" : "none", NULL);
    stream_flush(r);
    if (frames_to_tap(r) < 0)
        stream_close(r, "malformed", cl_error_message());
}

static void pending_readable(relay *r, pending *p)
{
    ssize_t n = recv(p->fd, p->buf + p->len, sizeof p->buf - p->len, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    const char *why = n == 0 ? "closed before its handshake" : n < 0 ? strerror(errno) : NULL;
    size_t head = 0;
    bool complete = false, offered = false;
    if (!why) {
        p->len += (size_t)n;
        if (cl_tap_parse_connect_offer(p->buf, p->len, &head, &complete, &offered) < 0)
            why = cl_error_message();
        else if (!complete && p->len == sizeof p->buf)
            why = "a /connect request head longer than the buffer";
    }
    if (why) {
        cl_log(CL_LOG_WARN, "tap-handshake-refused", "detail", why, NULL);
        close(p->fd);
        p->fd = -1;
        return;
    }
    if (complete)
        take_stream(r, p, head, offered);
}

static int relay_setup(relay *r, cl_tap_bridge *b)
{
    memset(r, 0, sizeof *r);
    r->b = b;
    r->stream = r->sigfd = -1;
    for (int i = 0; i < MAX_PENDING; i++)
        r->pend[i].fd = -1;
    r->max_frame = cl_tap_max_frame(b->cfg.mtu);
    r->out_need = 2 + r->max_frame;
    r->in = malloc(STREAM_BUF);
    r->out = malloc(STREAM_BUF);
    CL_ENSURE(r->in && r->out, CL_ENOMEM, "out of memory");
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigprocmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    r->sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    CL_ENSURE(r->sigfd >= 0, CL_EIO, "signalfd: %s", strerror(errno));
    if (b->dns_udp >= 0) {
        CL_TRY(tap_dns_new(b->dns_udp, b->dns_tcp, b->cfg.gateway, b->cfg.prefix, &b->upstream, b->upstream_len,
                           b->upstream_text, &r->dns));
        b->dns_udp = b->dns_tcp = -1; /* the relay's now */
    }
    return CL_OK;
}

enum { P_SIG, P_LISTEN, P_TAP, P_STREAM, P_PEND, P_DNS = P_PEND + MAX_PENDING, P_COUNT = P_DNS + TAP_DNS_POLLFDS };

static void relay_turn(relay *r)
{
    struct pollfd pfd[P_COUNT];
    cl_tap_bridge *b = r->b;
    bool out_room = r->out_len - r->out_off + r->out_need <= STREAM_BUF;
    pfd[P_SIG] = (struct pollfd){.fd = r->sigfd, .events = POLLIN};
    pfd[P_LISTEN] = (struct pollfd){.fd = b->listen_fd, .events = POLLIN};
    /* no room to send: leave the frames in the device's queue until there is */
    pfd[P_TAP] = (struct pollfd){.fd = r->stream < 0 || out_room ? b->tap : -1, .events = POLLIN};
    pfd[P_STREAM] = (struct pollfd){.fd = r->stream,
                                    .events = (short)(POLLIN | (r->out_off < r->out_len ? POLLOUT : 0))};
    uint64_t now = now_ms();
    int timeout = -1;
    for (int i = 0; i < MAX_PENDING; i++) {
        pfd[P_PEND + i] = (struct pollfd){.fd = r->pend[i].fd, .events = POLLIN};
        if (r->pend[i].fd >= 0) {
            uint64_t left = r->pend[i].since + HANDSHAKE_TIMEOUT_MS > now ? r->pend[i].since + HANDSHAKE_TIMEOUT_MS - now : 0;
            if (timeout < 0 || (int)left < timeout)
                timeout = (int)left;
        }
    }
    int dns_timeout = -1;
    if (r->dns)
        dns_timeout = tap_dns_poll(r->dns, pfd + P_DNS, now);
    else
        for (int i = 0; i < TAP_DNS_POLLFDS; i++)
            pfd[P_DNS + i] = (struct pollfd){.fd = -1};
    if (dns_timeout >= 0 && (timeout < 0 || dns_timeout < timeout))
        timeout = dns_timeout;
    int n = poll(pfd, P_COUNT, timeout);
    if (n < 0) {
        if (errno != EINTR) {
            cl_log(CL_LOG_ERROR, "tap-relay-failed", "detail", strerror(errno), NULL);
            r->stop = true;
        }
        return;
    }
    if (pfd[P_SIG].revents) {
        struct signalfd_siginfo si;
        while (read(r->sigfd, &si, sizeof si) == (ssize_t)sizeof si)
            r->stop = true;
        return;
    }
    if (pfd[P_STREAM].revents & POLLOUT)
        stream_flush(r);
    if (pfd[P_STREAM].revents & (POLLIN | POLLHUP | POLLERR))
        stream_readable(r);
    if (pfd[P_TAP].revents & POLLIN)
        tap_readable(r);
    if (pfd[P_LISTEN].revents & POLLIN)
        accept_streams(r);
    for (int i = 0; i < MAX_PENDING; i++)
        if (r->pend[i].fd >= 0 && pfd[P_PEND + i].fd == r->pend[i].fd && pfd[P_PEND + i].revents)
            pending_readable(r, &r->pend[i]);
    now = now_ms();
    if (r->dns)
        tap_dns_serve(r->dns, pfd + P_DNS, now);
    for (int i = 0; i < MAX_PENDING; i++)
        if (r->pend[i].fd >= 0 && now - r->pend[i].since > HANDSHAKE_TIMEOUT_MS) {
            cl_log(CL_LOG_WARN, "tap-handshake-refused", "detail", "no POST /connect within 10 s", NULL);
            close(r->pend[i].fd);
            r->pend[i].fd = -1;
        }
}

static void relay_main(cl_tap_bridge *b)
{
    relay r;
    int status = 0;
    if (relay_setup(&r, b) < 0) {
        cl_log(CL_LOG_ERROR, "tap-relay-failed", "detail", cl_error_message(), NULL);
        status = 3;
    } else {
        while (!r.stop)
            relay_turn(&r);
        stream_close(&r, "stopping", NULL);
    }
    /* the process ends here; the kernel closes the rest */
    _exit(status);
}

/* cloister host --tap: options and configuration (the bridge itself is
 * lib/host/tap_bridge.c). */
#include "host_tap.h"

#include <arpa/inet.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STR_(x) #x
#define STR(x) STR_(x)

static int check_dns(void *base, const char *value)
{
    (void)base;
    CL_ENSURE(!strcmp(value, "relay") || !strcmp(value, "dnsmasq") || !strcmp(value, "off"), CL_EINVAL,
              "relay, dnsmasq or off, got '%s'", value);
    return CL_OK;
}

static int check_on_off(void *base, const char *value)
{
    (void)base;
    CL_ENSURE(!strcmp(value, "on") || !strcmp(value, "off"), CL_EINVAL, "on or off, got '%s'", value);
    return CL_OK;
}

static const cl_opt tap_options[] = {
    {.name = "tap", CL_OPT_STR(host_tap_settings, listen), .flags = CL_OPT_NONEMPTY, .arg = "LISTEN",
     .help = "the enclave's TAP stream (gvproxy's POST /connect and framing), e.g. " CL_TAP_DEFAULT_LISTEN
             " (vsock:ANY:1024, gvproxy's); its frames go to a TAP device routed by the kernel"},
    {.name = "tap-dev", CL_OPT_STR(host_tap_settings, dev), .def = CL_TAP_DEFAULT_DEV, .arg = "NAME",
     .help = "the parent's TAP device; the nftables table is inet cloister_tap_NAME"},
    {.name = "tap-gateway", CL_OPT_STR(host_tap_settings, gateway),
     .def = CL_TAP_DEFAULT_GATEWAY "/" STR(CL_TAP_DEFAULT_PREFIX), .arg = "IP/PREFIX",
     .help = "the device's address: the enclave's gateway and DNS server"},
    {.name = "tap-enclave", CL_OPT_STR(host_tap_settings, enclave), .def = CL_TAP_DEFAULT_ENCLAVE, .arg = "IP",
     .help = "the enclave's tap0 address (published ports go there)"},
    {.name = "tap-mtu", CL_OPT_UINT_AT(host_tap_settings, mtu, 576, CL_TAP_MAX_MTU),
     .def = STR(CL_TAP_DEFAULT_MTU), .arg = "N", .help = "the device's MTU: the enclave's tap0's"},
    {.name = "tap-forward", CL_OPT_LIST_AT(host_tap_settings, forward, CL_TAP_MAX_FORWARDS), .flags = CL_OPT_NONEMPTY,
     .arg = "PORT=ENCLAVE_PORT", .help = "publish the enclave's TCP ENCLAVE_PORT on the parent's PORT (repeatable)"},
    {.name = "tap-loopback", CL_OPT_LIST_AT(host_tap_settings, loopback, CL_TAP_MAX_FORWARDS),
     .flags = CL_OPT_NONEMPTY, .arg = "PORT",
     .help = "let the enclave reach this machine's 127.0.0.1:PORT at the gateway's PORT (repeatable; cloister dev)"},
    {.name = "tap-dns", CL_OPT_STR(host_tap_settings, dns), .set = check_dns, .def = "relay",
     .arg = "relay|dnsmasq|off",
     .help = "DNS at the gateway address, to --dns-server or resolv.conf's first nameserver"},
    {.name = "tap-offload", CL_OPT_STR(host_tap_settings, offload), .set = check_on_off, .def = "on", .arg = "on|off",
     .help = "accept the enclave's offer of checksum/TSO offloads over the stream (cloister's extension of "
             "gvproxy's framing; docs/tap.md)"},
};

const cl_opt *host_tap_options(size_t *count)
{
    *count = sizeof tap_options / sizeof tap_options[0];
    return tap_options;
}

static int parse_ipv4(const char *text, const char *what, struct in_addr *out)
{
    CL_ENSURE(inet_pton(AF_INET, text, out) == 1, CL_EINVAL, "%s: '%s' is not an IPv4 address", what, text);
    return CL_OK;
}

int host_tap_config(const host_tap_settings *t, bool imds, const char *dns_server, cl_tap_config *cfg,
                    cl_address *imds_listen)
{
    cl_tap_config_defaults(cfg);
    int rc = cl_address_parse(t->listen, &cfg->listen);
    if (rc < 0)
        return cl_error_prefix(rc, "--tap: ");
    if (t->dev) {
        CL_ENSURE(strlen(t->dev) < sizeof cfg->dev, CL_EINVAL, "--tap-dev %s: at most %zu characters", t->dev,
                  sizeof cfg->dev - 1);
        snprintf(cfg->dev, sizeof cfg->dev, "%s", t->dev);
    }
    if (t->gateway) {
        char ip[INET_ADDRSTRLEN];
        const char *slash = strchr(t->gateway, '/');
        size_t n = slash ? (size_t)(slash - t->gateway) : strlen(t->gateway);
        CL_ENSURE(n < sizeof ip, CL_EINVAL, "--tap-gateway %s: expected IP/PREFIX", t->gateway);
        memcpy(ip, t->gateway, n);
        ip[n] = '\0';
        CL_TRY(parse_ipv4(ip, "--tap-gateway", &cfg->gateway));
        if (slash) {
            char *end;
            unsigned long p = strtoul(slash + 1, &end, 10);
            CL_ENSURE(slash[1] && !*end && p >= 8 && p <= 30, CL_EINVAL,
                      "--tap-gateway %s: the prefix must be from 8 to 30", t->gateway);
            cfg->prefix = (unsigned)p;
        }
    }
    if (t->enclave)
        CL_TRY(parse_ipv4(t->enclave, "--tap-enclave", &cfg->enclave));
    if (t->mtu)
        cfg->mtu = t->mtu;
    for (size_t i = 0; i < t->forward.count; i++)
        CL_TRY(cl_tap_forward_parse(t->forward.items[i], &cfg->forwards[cfg->forward_count++]));
    for (size_t i = 0; i < t->loopback.count; i++) {
        cl_tap_forward f;
        int rc2 = cl_tap_forward_parse(t->loopback.items[i], &f);
        if (rc2 < 0 || f.port != f.enclave_port)
            return cl_error_set(CL_EINVAL, "--tap-loopback %s: expected a port from 1 to 65535", t->loopback.items[i]);
        cfg->loopback[cfg->loopback_count++] = f.port;
    }
    if (t->dns)
        cfg->dns = !strcmp(t->dns, "dnsmasq") ? CL_TAP_DNS_DNSMASQ : !strcmp(t->dns, "off") ? CL_TAP_DNS_OFF
                                                                                            : CL_TAP_DNS_RELAY;
    if (t->offload)
        cfg->offload = strcmp(t->offload, "off") != 0;
    cfg->dns_server = dns_server;
    if (imds) {
        char gw[INET_ADDRSTRLEN], text[64];
        inet_ntop(AF_INET, &cfg->gateway, gw, sizeof gw);
        snprintf(text, sizeof text, "tcp:%s:%u", gw, CL_TAP_IMDS_GATE_PORT);
        CL_TRY(cl_address_parse(text, imds_listen));
        cfg->imds_port = CL_TAP_IMDS_GATE_PORT;
    }
    return CL_OK;
}

/* cloister tap: the enclave's tap0 on its own, for enclaves that do not use
 * `cloister enclave` (as gvforwarder is used): lib/enclave/tap_relay.c,
 * plus an optional plain-HTTP /metrics listener. */
#include "cloister/core/address.h"
#include "cloister/core/buf.h"
#include "cloister/core/http.h"
#include "cloister/core/log.h"
#include "cloister/core/options.h"
#include "cloister/core/small_server.h"
#include "cloister/enclave/tap_relay.h"
#include "commands.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static const char usage_text[] =
    "usage: cloister tap [--tap-parent ADDR] [--egress-policy FILE] [--metrics ADDR] [OPTIONS]\n\n"
    "Creates the enclave's TAP interface (tap0, 192.168.127.2/24, gateway and DNS 192.168.127.1,\n"
    "MTU 1500, as nitriding sets it up) and relays its Ethernet frames to the parent in gvproxy's\n"
    "stream protocol (POST /connect, then 16-bit little-endian lengths), reconnecting with\n"
    "backoff when the parent goes away.  With --egress-policy, every outbound frame is checked\n"
    "against the policy inside the enclave; host names are allowed through the addresses the\n"
    "gateway's DNS answers gave for them.  `cloister enclave --tap` runs the same relay.\n\n";

static const char epilog[] =
    "ADDR is vsock:CID:PORT, unix:PATH or tcp:HOST:PORT.  Needs CAP_NET_ADMIN.  Drops are logged\n"
    "(event=egress_drop, at most one line per reason per second) and counted in\n"
    "cloister_egress_dropped_total{reason=...}.  SIGTERM or SIGINT: tap0 goes away, exit 0.\n"
    "Exit status 2: bad command line or policy; 3: the interface could not be made.\n";

typedef struct tap_cmd {
    char *metrics;
    char *config;
} tap_cmd;

#define T tap_cmd
static const cl_opt cmd_options[] = {
    {.name = "metrics", CL_OPT_STR(T, metrics), .flags = CL_OPT_NONEMPTY, .arg = "ADDR",
     .help = "serve Prometheus metrics at GET /metrics on ADDR (plain HTTP; e.g. tcp:127.0.0.1:9101)"},
    {.name = "config", CL_OPT_CONFIG_AT(T, config), .arg = "FILE", .help = "JSON file of these options"},
};
#undef T

static void serve_metrics(void *arg, int fd, size_t listener, unsigned long id)
{
    (void)listener;
    (void)id;
    cl_tap_relay *r = arg;
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    uint8_t in[8192];
    size_t have = 0;
    cl_http_head *h = calloc(1, sizeof *h);
    cl_buf body = CL_BUF_INIT, resp = CL_BUF_INIT;
    if (!h)
        goto out;
    bool complete = false;
    while (!complete) {
        ssize_t n = recv(fd, in + have, sizeof in - have, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto out;
        have += (size_t)n;
        if (cl_http_parse_request(in, have, sizeof in, h, &complete) < 0)
            goto out;
    }
    int status = 404;
    if (cl_slice_eq(h->path, "/metrics")) {
        status = cl_tap_relay_metrics(r, "cloister", &body) < 0 ? 500 : 200;
    } else if (cl_buf_append(&body, "404: GET /metrics\n", 18) < 0) {
        goto out;
    }
    char head[256];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                     status, status == 200 ? "OK" : status == 404 ? "Not Found" : "Internal Server Error", body.len);
    if (cl_buf_append(&resp, head, (size_t)n) < 0 || cl_buf_append(&resp, body.data, body.len) < 0)
        goto out;
    for (size_t off = 0; off < resp.len;) {
        ssize_t w = send(fd, resp.data + off, resp.len - off, MSG_NOSIGNAL);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
out:
    free(h);
    cl_buf_free(&body);
    cl_buf_free(&resp);
}

int cmd_tap(int argc, char **argv)
{
    cl_log_set_component("tap");
    cl_tap_settings s = {0};
    tap_cmd c = {0};
    cl_opt_section sections[2] = {{"the TAP interface", NULL, 0, &s},
                                  CL_OPT_SECTION("this command", cmd_options, &c)};
    sections[0].opts = cl_tap_options(&sections[0].count);
    cl_options spec = {.prog = "cloister tap",
                       .usage = usage_text,
                       .epilog = epilog,
                       .sections = sections,
                       .section_count = 2};
    cl_options_result res;
    int rc = cl_options_main(&spec, argc, argv, &res);
    if (rc != 0) {
        cl_options_free(&spec, &res);
        return rc > 0 ? 0 : EXIT_USAGE;
    }
    int status = EXIT_FAILED;
    int stop_fd = -1, listen_fd = -1;
    cl_tap_relay *relay = NULL;
    cl_socket_file metrics_file = {0};
    cl_address maddr;
    if (cl_tap_settings_check(&s) < 0 || (c.metrics && cl_address_parse(c.metrics, &maddr) < 0)) {
        fprintf(stderr, "cloister tap: %s (see --help)\n", cl_error_message());
        status = EXIT_USAGE;
        goto out;
    }
    if (cl_stop_signals_install(&stop_fd) < 0) {
        fprintf(stderr, "cloister tap: %s\n", cl_error_message());
        goto out;
    }
    if (c.metrics) {
        if (cl_address_listen(&maddr, 16, &listen_fd) < 0) {
            fprintf(stderr, "cloister tap: --metrics: %s\n", cl_error_message());
            goto out;
        }
        cl_socket_file_remember(&maddr, &metrics_file);
    }
    rc = cl_tap_relay_start(&s, &relay);
    if (rc < 0) {
        fprintf(stderr, "cloister tap: %s\n", cl_error_message());
        status = rc == CL_EPARSE || rc == CL_ELIMIT || rc == CL_EINVAL ? EXIT_USAGE : EXIT_FAILED;
        goto out;
    }
    if (listen_fd >= 0) {
        cl_small_server_config sc = {.listen_fds = &listen_fd,
                                     .listen_count = 1,
                                     .stop_fd = stop_fd,
                                     .max_connections = 8,
                                     .serve = serve_metrics,
                                     .arg = relay};
        if (cl_small_server_run(&sc) < 0) {
            fprintf(stderr, "cloister tap: %s\n", cl_error_message());
            goto out;
        }
    } else {
        struct pollfd p = {.fd = stop_fd, .events = POLLIN};
        while (poll(&p, 1, -1) < 0 && errno == EINTR) {
        }
    }
    cl_log(CL_LOG_INFO, "stopped", "signal", cl_stop_signals_caught() == SIGINT ? "SIGINT" : "SIGTERM", NULL);
    status = 0;
out:
    cl_tap_relay_stop(relay);
    if (listen_fd >= 0)
        close(listen_fd);
    cl_socket_file_remove(&metrics_file);
    cl_options_free(&spec, &res);
    return status;
}

/* cloister dev --network tap (src/dev_tap.h). */
#include "dev_tap.h"

#include <stdio.h>
#include <string.h>

void dev_tap_stream(bool loose, const char *run, char *listen, size_t listen_len, char *dial, size_t dial_len)
{
    if (loose) {
        snprintf(listen, listen_len, "unix:%s/tap.sock", run);
        snprintf(dial, dial_len, "unix:%s/tap.sock", run);
    } else {
        /* gvproxy's port: the parent listens on every CID of its own, the
         * enclave dials the parent (CID 3) */
        snprintf(listen, listen_len, "vsock:4294967295:1024");
        snprintf(dial, dial_len, "vsock:3:1024");
    }
}

void dev_tap_enclave_links(unsigned kms_port, char *listen, size_t listen_len, char *imds, size_t imds_len,
                           char *kms, size_t kms_len)
{
    snprintf(listen, listen_len, "tcp:0.0.0.0:443");
    snprintf(imds, imds_len, "tcp:169.254.169.254:80");
    snprintf(kms, kms_len, "tcp:" DEV_TAP_GATEWAY ":%u", kms_port);
}

void dev_tap_enclave_words(const char *dial, const char *words[DEV_TAP_WORDS])
{
    words[0] = "-tap";
    words[1] = "-tap-parent";
    words[2] = dial;
    words[3] = "-tap-resolv-conf";
    words[4] = "";
}

void dev_tap_host_argv(dev_tap_host *h, const char *self, unsigned port, const char *imds_gate,
                       const char *imds_endpoint, const char *tap_listen, unsigned kms_port, const char *enclave_cmd)
{
    snprintf(h->forward, sizeof h->forward, "tcp:127.0.0.1:%u=tcp:" DEV_TAP_ENCLAVE_IP ":443,proxy-protocol", port);
    snprintf(h->health, sizeof h->health, "tcp:" DEV_TAP_ENCLAVE_IP ":443");
    snprintf(h->listen, sizeof h->listen, "%s", tap_listen);
    snprintf(h->kms_port, sizeof h->kms_port, "%u", kms_port);
    const char *words[] = {self, "host", "--forward", h->forward, "--imds", imds_gate, "--imds-endpoint",
                           imds_endpoint, "--tap", h->listen, "--tap-loopback", h->kms_port,
                           "--enclave-command", enclave_cmd, "--health-connect", h->health, "--health-interval",
                           "1s", "--backoff-initial", "500ms", "--stop-grace", "5s", NULL};
    size_t i = 0;
    for (; words[i]; i++)
        h->argv[i] = (char *)words[i];
    h->argv[i] = NULL;
}

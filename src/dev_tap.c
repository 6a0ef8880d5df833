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

int dev_tap_wrapper(const char *self, const char *dial, cl_buf *out)
{
    /* $0 is cloister, $1 the stream's address; "$@" after the shift the
     * enclave's words.  tap0 must exist before the enclave's first KMS call
     * goes out; the relay's own resolv.conf stays unwritten (this machine's
     * /run/resolvconf is not the enclave's). */
    static const char script[] =
        "setpriv --pdeathsig TERM \"$0\" tap --tap-parent \"$1\" --tap-resolv-conf '' & "
        "shift; i=0; until ip -o addr show dev tap0 2>/dev/null | grep -q inet; do "
        "i=$((i+1)); [ $i -gt 100 ] && { echo 'cloister dev: tap0 did not come up' >&2; exit 3; }; sleep 0.1; done; "
        "exec \"$@\" ";
    CL_TRY(cl_buf_append(out, "sh -c ", 6));
    /* single-quoted for the outer shell: the script has no single quote but the '' */
    CL_TRY(cl_buf_append(out, "\"", 1));
    for (const char *p = script; *p; p++) {
        if (*p == '"' || *p == '$' || *p == '\\' || *p == '`')
            CL_TRY(cl_buf_append(out, "\\", 1));
        CL_TRY(cl_buf_append(out, p, 1));
    }
    CL_TRY(cl_buf_append(out, "\" ", 2));
    /* $0 and $1 */
    char words[4200];
    int n = snprintf(words, sizeof words, "'%s' '%s' ", self, dial);
    CL_ENSURE(n > 0 && (size_t)n < sizeof words && !strchr(self, '\'') && !strchr(dial, '\''), CL_EINVAL,
              "cloister dev: a path with a quote: %s", self);
    return cl_buf_append(out, words, (size_t)n);
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

/* cloister dev --network tap: the enclave's namespace gets tap0 (cloister
 * enclave -tap) and the host a TAP bridge, instead of the
 * per-destination links (KMS proxy, IMDS link).  dev.c asks these for the
 * pieces that differ. */
#ifndef CLOISTER_SRC_DEV_TAP_H
#define CLOISTER_SRC_DEV_TAP_H

#include "cloister/core/buf.h"
#include "cloister/core/error.h"

#include <stdbool.h>
#include <stddef.h>

#define DEV_TAP_ENCLAVE_IP "192.168.127.2"
#define DEV_TAP_GATEWAY "192.168.127.1"

/* The stream's two ends: the host's listener and the enclave side's dial
 * (vsock through the stand-in, or with loose fidelity a unix socket in run). */
void dev_tap_stream(bool loose, const char *run, char *listen, size_t listen_len, char *dial, size_t dial_len);

/* The enclave's addresses in tap mode: its public listener on its tap0
 * address, IMDS at IMDS's own address (the host sends it to the gate), and
 * kms-local at the gateway (the host's --tap-loopback). */
void dev_tap_enclave_links(unsigned kms_port, char *listen, size_t listen_len, char *imds, size_t imds_len,
                           char *kms, size_t kms_len);

/* The enclave's own relay: cloister enclave -tap, dialling the parent's
 * stream; tap0 (and lo) come up before its KMS calls.  No resolv.conf is
 * written: this machine's /run/resolvconf is not the enclave's.  Fills
 * words[0..DEV_TAP_WORDS). */
#define DEV_TAP_WORDS 5
void dev_tap_enclave_words(const char *dial, const char *words[DEV_TAP_WORDS]);

/* The host's arguments in tap mode (NULL-ended, pointing into store, which
 * must outlive them). */
typedef struct dev_tap_host {
    char forward[64], health[64], listen[4200], kms_port[16];
    char *argv[32];
} dev_tap_host;
void dev_tap_host_argv(dev_tap_host *h, const char *self, unsigned port, const char *imds_gate,
                       const char *imds_endpoint, const char *tap_listen, unsigned kms_port, const char *enclave_cmd);

#endif

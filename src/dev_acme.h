/* `cloister dev --acme`: Pebble (Debian's `pebble`) as the ACME CA, with
 * pebble-challtestsrv as its DNS answering 127.0.0.1, its tls-alpn-01
 * port set to the host's forward into the enclave (src/dev_acme.c). */
#ifndef CLOISTER_SRC_DEV_ACME_H
#define CLOISTER_SRC_DEV_ACME_H

#include "cloister/core/error.h"

#include <limits.h>
#include <stdbool.h>
#include <sys/types.h>

typedef struct dev_acme {
    pid_t dns, pebble;
    unsigned port, mgmt;
    char run[PATH_MAX];
    char directory[64];
    char ca_file[PATH_MAX + 32];   /* Pebble's own HTTPS certificate: the enclave's --acme-ca-file */
    char root_file[PATH_MAX + 32]; /* Pebble's issuing root, for curl --cacert */
} dev_acme;

/* Starts both in run (logs run/pebble.log, run/challtestsrv.log) with
 * tls-alpn-01 validated on 127.0.0.1:tls_port. */
CL_MUST_CHECK int dev_acme_start(dev_acme *a, const char *run, unsigned tls_port, unsigned (*pick_port)(void));
/* Waits (up to timeout_ms) until https://localhost:port/enclave verifies
 * with Pebble's root: the enclave serves a Pebble-issued chain. */
bool dev_acme_wait_issued(dev_acme *a, unsigned port, unsigned timeout_ms);
void dev_acme_stop(dev_acme *a);

#endif

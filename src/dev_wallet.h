/* `cloister dev --app wallet`: the multi-party wallet example in the local
 * picture, with dynalite for DynamoDB and a kms-local key for its shares. */
#ifndef CLOISTER_DEV_WALLET_H
#define CLOISTER_DEV_WALLET_H

#include "cloister/core/buf.h"
#include "cloister/core/error.h"

#include <limits.h>
#include <stdbool.h>
#include <sys/types.h>

#define DEV_WALLET_TABLE "cloister-wallet-shards"

typedef struct dev_wallet {
    char run[PATH_MAX];
    char wallet[PATH_MAX], client[PATH_MAX]; /* the example's binaries, beside this one */
    char node_dynalite[PATH_MAX];            /* tests/node/node_modules/dynalite/cli.js */
    char pcr16[2 * 48 + 1];                  /* what the wallet extends PCR16 with: its binary */
    char key_arg[PATH_MAX + 48];             /* kms-local --key alias/wallet=POLICY */
    char outbound[PATH_MAX + 64];            /* cloister host --outbound LINK=127.0.0.1:PORT */
    unsigned ddb_port;
    pid_t dynalite;
} dev_wallet;

/* "wallet" names the example rather than a command. */
bool dev_wallet_wanted(const char *app);
/* Finds the binaries and dynalite, measures PCR16, writes the key policy
 * (the role encrypts; Decrypt only for a Recipient with pcr0 and PCR16),
 * makes a recovery key pair, starts dynalite with the table.  ddb_link is
 * the enclave's address of the host's DynamoDB outbound proxy. */
CL_MUST_CHECK int dev_wallet_prepare(dev_wallet *w, const char *self, const char *run, const char *role_arn,
                                     const char *pcr0, const char *ddb_link);
/* The enclave's -appcmd. */
CL_MUST_CHECK int dev_wallet_app_command(const dev_wallet *w, unsigned app_port, unsigned intport,
                                         const char *imds_link, const char *kms_link, const char *ddb_link,
                                         cl_buf *out);
/* The walk-through with the client, printed; with run set, also done:
 * verify, create, sign (plain and Ethereum); true when all worked. */
bool dev_wallet_walkthrough(const dev_wallet *w, unsigned port, const char *pcr0, bool run);
void dev_wallet_stop(dev_wallet *w);

#endif

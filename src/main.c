/* cloister: one program, one subcommand per file. */
#include "commands.h"

#include <stdio.h>
#include <string.h>


struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
};

static const struct command commands[] = {
    {"enclave", cmd_enclave, "serve HTTPS inside the enclave: attestation API and reverse proxy"},
    {"verify", cmd_verify, "prove that an HTTPS endpoint is a given Nitro enclave"},
    {"attest", cmd_attest, "request, show and verify Nitro attestation documents"},
    {"nsm", cmd_nsm, "talk to the Nitro Secure Module (device or simulator)"},
    {"nsm-sim", cmd_nsm_sim, "run a faithful NSM simulator on a unix socket"},
    {"host", cmd_host, "the parent instance's side: forwards, outbound proxies, IMDS gate"},
    {"imds-sim", cmd_imds_sim, "run an IMDSv2 stand-in (tokens, role credentials, identity)"},
    {"keyholder", cmd_keyholder, "hold the PKCS#11 token's keys inside the enclave; provision tokens"},
    {"acm", cmd_acm, "ACM-style certificate bundles: pack a key with KMS for the enclave's token"},
    {"watchdog", cmd_watchdog, "start one enclave and keep it alive: health checks, restarts, systemd"},
    {"dev", cmd_dev, "the whole picture on one machine: nsm-sim, enclave, host, IMDS (make run)"},
    {"kms", cmd_kms, "AWS KMS calls, with an attested Recipient inside the enclave"},
    {"dynamodb", cmd_dynamodb, "DynamoDB calls (get, put, update, delete) through the library's client"},
    {"cert-store", cmd_cert_store, "the ACME store: KMS-sealed records in DynamoDB or the host's files, the lease"},
    {"tap", cmd_tap, "the enclave's tap0 relayed to a gvproxy-compatible parent, egress policy inside"},
    {"kms-local", cmd_kms_local, "run a local AWS KMS: SigV4, key policies on attestation, Recipient"},
    {"eif", cmd_eif, "build, measure, describe and sign enclave image files, reproducibly"},
};

static void usage(FILE *out)
{
    fprintf(out, "usage: cloister COMMAND [ARGS...]\n\n"
                 "Runs web services inside AWS Nitro Enclaves, and stands in for Nitro locally.\n\n"
                 "commands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\n'cloister COMMAND --help' describes a command.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    const char *name = argv[1];
    if (!strcmp(name, "-h") || !strcmp(name, "--help") || !strcmp(name, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(name, "--version") || !strcmp(name, "version")) {
        printf("cloister %s\n", CLOISTER_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (!strcmp(name, commands[i].name))
            return commands[i].run(argc - 1, argv + 1);
    }
    fprintf(stderr, "cloister: unknown command '%s'\n\n", name);
    usage(stderr);
    return EXIT_USAGE;
}

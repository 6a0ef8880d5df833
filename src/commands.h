/* Each subcommand lives in its own file and is listed in main.c's table. */
#ifndef CLOISTER_SRC_COMMANDS_H
#define CLOISTER_SRC_COMMANDS_H

int cmd_attest(int argc, char **argv);
int cmd_nsm(int argc, char **argv);
int cmd_nsm_sim(int argc, char **argv);
int cmd_enclave(int argc, char **argv);
int cmd_verify(int argc, char **argv);
int cmd_host(int argc, char **argv);
int cmd_imds_sim(int argc, char **argv);
int cmd_watchdog(int argc, char **argv);
int cmd_dev(int argc, char **argv);
int cmd_kms(int argc, char **argv);
int cmd_kms_local(int argc, char **argv);
int cmd_keyholder(int argc, char **argv);
int cmd_host_acm(int argc, char **argv); /* `cloister host acm`, dispatched by cmd_host */
int cmd_acm(int argc, char **argv);
int cmd_dynamodb(int argc, char **argv);
int cmd_cert_store(int argc, char **argv);
int cmd_host_file_store(int argc, char **argv); /* `cloister host file-store`, dispatched by cmd_host */
int cmd_tap(int argc, char **argv);
int cmd_eif(int argc, char **argv);

#define CLOISTER_VERSION "0.1.0"

/* Exit codes shared by the subcommands. */
#define EXIT_REJECTED 1 /* a verification said no */
#define EXIT_USAGE 2    /* bad command line */
#define EXIT_FAILED 3   /* could not do the work (I/O, NSM, ...) */

#endif

/* cloister enclave launcher: the unfiltered process that starts -appcmd for
 * a daemon under -seccomp (lib/enclave/launcher.c). */
#ifndef CLOISTER_SRC_ENCLAVE_LAUNCHER_H
#define CLOISTER_SRC_ENCLAVE_LAUNCHER_H

/* How long the app has between SIGTERM and SIGKILL when stopped: the
 * launcher's --stop-grace and the supervisor's grace alike. */
#define ENCLAVE_APP_STOP_GRACE_MS 5000u

/* `cloister enclave launcher ...` (argv[0] is "launcher"). */
int cmd_enclave_launcher(int argc, char **argv);
#endif

/* What src/dev.c shares with src/dev_replicas.c (`cloister dev --replicas N`):
 * its state, and the process handling and stand-ins of src/dev_common.c.  The
 * helpers keep their short names in the text and are linked under dev_ names. */
#ifndef CLOISTER_SRC_DEV_H
#define CLOISTER_SRC_DEV_H

#include "cloister/core/buf.h"
#include "dev_acme.h"

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct dev_options {
    bool check, no_netns, acme;
    unsigned port, app_port, replicas;
    char *app, *run_dir, *fidelity, *identity, *network;
} dev_options;

typedef struct proc {
    const char *name;
    pid_t pid;
    char log[PATH_MAX];
} proc;

typedef struct dev {
    char self[PATH_MAX];   /* this cloister binary */
    char run[PATH_MAX];    /* the run directory */
    bool made_run;
    int sigfd;
    bool stop_requested;
    bool isolated;
    bool loose; /* --fidelity loose: unix: links, no seams */
    bool tap;   /* --network tap (dev_tap.c) */
    unsigned port, imds_port, intport, appport, kms_port;
    proc sim, imds, host, kms;
    char role_key[32], role_secret[64];   /* the instance role's credentials (imds-sim, kms-local) */
    char oper_key[32], oper_secret[64];   /* the operator's, who encrypts outside the enclave */
    char pcr0[2 * 48 + 1];                /* the enclave's: SHA-384 of this binary, as nsm-sim measures it */
    char secret_sha256[2 * 32 + 1];       /* of the demo secret, which only the enclave opens */
    bool use_acme;                        /* --acme */
    dev_acme acme;
    char acme_link[PATH_MAX + 16];        /* the enclave's way to Pebble: the host's outbound proxy */
    const char *extra_kms_key;            /* kms-local --key for --app wallet */
} dev;

#define DEV_ROLE_ARN "arn:aws:sts::111122223333:assumed-role/cloister-dev-instance/i-0cloisterdev"
#define DEV_OPERATOR_ARN "arn:aws:iam::111122223333:user/cloister-dev-operator"

/* how long a process of ours gets after SIGTERM before SIGKILL */
#define STOP_TIMEOUT_MS 15000

#define say dev_say
#define spawn dev_spawn
#define alive dev_alive
#define describe_exit dev_describe_exit
#define show_log dev_show_log
#define pause_ms dev_pause_ms
#define stop_proc dev_stop_proc
#define remove_entry dev_remove_entry
#define wait_for dev_wait_for
#define tcp_accepts dev_tcp_accepts
#define run_self dev_run_self
#define print_file dev_print_file
#define netns_possible dev_netns_possible
#define free_port dev_free_port
#define shell_quote dev_shell_quote
#define make_credentials dev_make_credentials
#define file_sha384_hex dev_file_sha384_hex
#define write_text dev_write_text
#define file_contains dev_file_contains
#define start_kms dev_start_kms
#define find_example_app dev_find_example_app

void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* A process of our own: own process group, killed if we die, output in RUN/NAME.log. */
CL_MUST_CHECK int spawn(dev *d, proc *p, const char *name, char *const argv[]);
bool alive(proc *p); /* false once p has exited (and reaps it) */
void describe_exit(const proc *p, char *out, size_t len);
void show_log(const proc *p, int lines);
void pause_ms(dev *d, int ms); /* sleeps, taking SIGINT/SIGTERM as a stop request */
int stop_proc(dev *d, proc *p);
struct stat;
struct FTW;
int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw); /* for nftw */
bool wait_for(dev *d, proc *p, const char *what, bool (*ready)(dev *), int timeout_ms);
bool tcp_accepts(unsigned port);
int run_self(dev *d, const char *name, char *const argv[]); /* exit status, output in RUN/NAME.out */
void print_file(const char *path);
bool netns_possible(const char **why);
unsigned free_port(void);
CL_MUST_CHECK int shell_quote(cl_buf *out, const char *word);
CL_MUST_CHECK int make_credentials(char *key, size_t key_len, char *secret, size_t secret_len);
CL_MUST_CHECK int file_sha384_hex(const char *path, char out[2 * 48 + 1]);
CL_MUST_CHECK int write_text(const char *path, const char *text);
bool file_contains(const char *path, const char *needle);
/* kms-local with alias/dev (this PCR0 only) and alias/other-pcr0, the demo
 * secret encrypted under each (RUN/secret-dev.ct, RUN/secret-other-pcr0.ct). */
bool start_kms(dev *d);
bool find_example_app(const dev *d, char *out, size_t len);

/* `cloister dev --replicas N` (dev_replicas.c): exit status. */
int dev_replicas_run(const dev_options *o);

#endif

/* AWS's nitro-cli driven as a child process: run-enclave, describe-enclaves
 * and terminate-enclave, their JSON output parsed strictly enough that a
 * changed or broken nitro-cli is an error with a clear message rather than
 * a wrong guess.  nitro-cli is run with fork/execvp (no shell), its stdout
 * captured for the JSON, its stderr kept for error messages (the last few
 * hundred bytes are appended to the cl_err message), each command under a
 * timeout after which its process group is killed.
 *
 * Output shapes (nitro-cli 1.2+; older versions lack EnclaveName/ProcessID,
 * which are therefore optional here):
 *   run-enclave        {"EnclaveName", "EnclaveID", "ProcessID", "EnclaveCID",
 *                       "NumberOfCPUs", "CPUIDs", "MemoryMiB"}
 *   describe-enclaves  [{ the same, plus "State": "RUNNING"|"TERMINATING",
 *                         "Flags": "NONE"|"DEBUG_MODE", ...}, ...]
 *   terminate-enclave  {"EnclaveName", "EnclaveID", "Terminated": true}
 * run-enclave also prints progress lines ("Start allocating memory...") before
 * the JSON; the JSON document is the first line that starts with '{' or '['. */
#ifndef CLOISTER_NITRO_CLI_H
#define CLOISTER_NITRO_CLI_H

#pragma GCC visibility push(default)

#include "cloister/core/error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CL_NITRO_ID_MAX 128 /* "i-0123456789abcdef0-enc0123456789abcdef" is 39 */
#define CL_NITRO_NAME_MAX 256
#define CL_NITRO_OUTPUT_MAX (1u << 20) /* stdout of one command, at most */

typedef struct cl_nitro_cli {
    const char *path;        /* program, looked up on PATH when it has no '/'; default "nitro-cli" */
    unsigned run_timeout_ms; /* run-enclave; default 300 s (large images take a while) */
    unsigned timeout_ms;     /* describe-enclaves, terminate-enclave; default 60 s */
} cl_nitro_cli;

typedef struct cl_nitro_run_config {
    const char *eif_path;     /* --eif-path, required */
    unsigned cpu_count;       /* --cpu-count, required (> 0) */
    uint64_t memory_mib;      /* --memory, required (> 0) */
    uint64_t enclave_cid;     /* --enclave-cid when non-zero */
    bool debug_mode;          /* --debug-mode */
    const char *enclave_name; /* --enclave-name when set */
} cl_nitro_run_config;

typedef struct cl_nitro_enclave {
    char name[CL_NITRO_NAME_MAX]; /* EnclaveName, "" when absent */
    char id[CL_NITRO_ID_MAX];     /* EnclaveID */
    int64_t process_id;           /* ProcessID, 0 when absent */
    uint64_t cid;                 /* EnclaveCID */
    uint64_t cpu_count;           /* NumberOfCPUs, 0 when absent */
    uint64_t memory_mib;          /* MemoryMiB, 0 when absent */
    char state[32];               /* State (describe-enclaves only): "RUNNING", "TERMINATING" */
    char flags[32];               /* Flags (describe-enclaves only): "NONE", "DEBUG_MODE" */
} cl_nitro_enclave;

/* nitro-cli run-enclave --eif-path P --cpu-count N --memory M
 *     [--enclave-cid C] [--debug-mode] [--enclave-name NAME] */
CL_MUST_CHECK int cl_nitro_run_enclave(const cl_nitro_cli *cli, const cl_nitro_run_config *cfg,
                                       cl_nitro_enclave *out);
/* nitro-cli describe-enclaves; *list is malloc'ed (free() it), possibly
 * NULL with *count 0. */
CL_MUST_CHECK int cl_nitro_describe_enclaves(const cl_nitro_cli *cli, cl_nitro_enclave **list, size_t *count);
/* nitro-cli terminate-enclave --enclave-id ID; CL_OK only when nitro-cli
 * reports "Terminated": true for that ID. */
CL_MUST_CHECK int cl_nitro_terminate_enclave(const cl_nitro_cli *cli, const char *enclave_id);

/* The parsers on their own (stdout as captured), for tests. */
/* The EnclaveName nitro-cli gives an enclave run without --enclave-name:
 * the EIF path's last '/' component with every trailing ".eif" removed
 * (Rust's trim_end_matches, as nitro-cli does): "a/web.v2.eif" -> "web.v2",
 * "web.img" -> "web.img".  Truncated to fit out. */
void cl_nitro_default_name(const char *eif_path, char *out, size_t len);

CL_MUST_CHECK int cl_nitro_parse_run(const char *out, size_t len, cl_nitro_enclave *e);
CL_MUST_CHECK int cl_nitro_parse_describe(const char *out, size_t len, cl_nitro_enclave **list, size_t *count);
CL_MUST_CHECK int cl_nitro_parse_terminate(const char *out, size_t len, const char *enclave_id);

/* An enclave ID nitro-cli could have produced: 1..CL_NITRO_ID_MAX-1 bytes of
 * letters, digits, '-' and '_', not starting with '-'. */
bool cl_nitro_id_valid(const char *id);

#pragma GCC visibility pop

#endif

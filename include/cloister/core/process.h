/* Child processes, started and waited for one way: every fork/exec in
 * cloister goes through cl_process_spawn (the watchdog's local enclave, the
 * app supervisor, nitro-cli, `cloister dev`'s processes, host acm's reload).
 * The child starts with an empty signal mask and SIGPIPE at its default
 * (cloister blocks or ignores both), stdin from /dev/null unless kept, and
 * an exec failure comes back to the caller as an error naming the program. */
#ifndef CLOISTER_PROCESS_H
#define CLOISTER_PROCESS_H

#pragma GCC visibility push(default)

#include "cloister/core/error.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct cl_process_spec {
    const char *program;  /* a path; a bare name is looked up in $PATH when search_path */
    char *const *argv;    /* NULL-ended, argv[0] included */
    char *const *envp;    /* the child's whole environment; NULL: this process's */
    /* "NAME=value" entries added to that environment unless NAME is already
     * set there; NULL-ended, may be NULL.  Built before fork (setenv is not
     * safe in the child of a threaded process). */
    const char *const *add_env;
    bool search_path;
    /* its own process group (set on both sides of fork, so that whoever runs
     * first wins): a signal to -pid reaches it and what it starts, and the
     * terminal's Ctrl-C reaches only us */
    bool own_group;
    /* SIGTERM to the child when the thread that forked it dies
     * (PR_SET_PDEATHSIG); a parent already gone makes the child exit 127 */
    bool die_with_parent;
    bool keep_stdin;        /* else stdin is /dev/null */
    int stdout_fd, stderr_fd; /* dup2'd to 1 and 2 (made blocking); 0: inherited */
    /* > 0: this descriptor becomes the child's descriptor 3, open across the
     * exec (every other one keeps its close-on-exec flag): a socket the child
     * talks back over (the app launcher's, lib/enclave/launcher.c) */
    int pass_fd;
} cl_process_spec;

/* Forks and execs; *pid on success.  CL_EIO "cannot run PROGRAM: why" when
 * the exec (or the child's set-up) fails; the child is reaped then. */
CL_MUST_CHECK int cl_process_spawn(const cl_process_spec *spec, pid_t *pid);

/* Waits up to timeout_ms for pid (-1: as long as it takes; 0: just looks).
 * 0 with *exited and *status (waitpid's) when it has exited and was reaped,
 * 0 with *exited false while it still runs; CL_EIO when it cannot be waited
 * for (not our child). */
CL_MUST_CHECK int cl_process_wait(pid_t pid, int timeout_ms, bool *exited, int *status);

/* SIGTERM to pid's process group (and pid), SIGKILL to both after grace_ms,
 * then reaped: *status as waitpid's (may be NULL).  The group's other
 * members are signalled, not waited for (they are not our children). */
void cl_process_stop(pid_t pid, unsigned grace_ms, int *status);

/* "exit status 3", "killed by signal 9" (or "wait status N"). */
void cl_process_status_text(int status, char *out, size_t len);

#pragma GCC visibility pop

#endif

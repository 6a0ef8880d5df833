/* The app launcher of `cloister enclave -seccomp` (docs/threat-model.md,
 * "The app launcher").  The daemon's seccomp filter would be inherited by
 * -appcmd, so the app is started by a small process forked and exec'd
 * before the filter is installed: `cloister enclave launcher`, never
 * filtered, holding the one command and environment it was started with.
 * It takes two requests from the daemon over a SOCK_SEQPACKET socketpair,
 * START and STOP, and answers with events: STARTED (the app's pid, and the
 * read ends of its stdout and stderr pipes over SCM_RIGHTS), FAILED, and
 * EXITED (pid and wait status).  The daemon's supervisor
 * (lib/enclave/supervise.c) keeps the restart policy.
 *
 * A compromised (filtered) daemon can therefore only start or stop that
 * one command: a request carries no command, argument or environment, and
 * anything but an exact 16-byte request (other sizes, other bytes,
 * descriptors or other ancillary data, a START while the app runs) makes the
 * launcher log the refusal, stop the app and exit.  It also stops the app
 * and exits when the daemon goes (end of the socket, or its parent-death
 * signal).
 *
 * Wire format, 16 bytes each way, integers big-endian:
 *   request  "CLLQ" | version 1 | type (1 START, 2 STOP) | 10 zero bytes
 *   event    "CLLE" | version 1 | type (1 STARTED, 2 EXITED, 3 FAILED) |
 *            2 zero bytes | pid u32 | wait status u32 (EXITED; else 0) */
#ifndef CLOISTER_ENCLAVE_LAUNCHER_H
#define CLOISTER_ENCLAVE_LAUNCHER_H

#pragma GCC visibility push(default)

#include "cloister/core/error.h"

#include <stdint.h>
#include <sys/types.h>

#define CL_LAUNCHER_MSG_LEN 16
/* the launcher's end of the socket in its process (cl_process_spec.pass_fd) */
#define CL_LAUNCHER_FD 3

enum { CL_LAUNCHER_START = 1, CL_LAUNCHER_STOP = 2 };
enum { CL_LAUNCHER_STARTED = 1, CL_LAUNCHER_EXITED = 2, CL_LAUNCHER_FAILED = 3 };

typedef struct cl_launcher_event {
    int type;
    pid_t pid;  /* STARTED, EXITED */
    int status; /* EXITED: waitpid's status */
} cl_launcher_event;

void cl_launcher_request_encode(int type, uint8_t out[CL_LAUNCHER_MSG_LEN]);
/* CL_EPARSE, naming the problem, for anything but an exact request. */
CL_MUST_CHECK int cl_launcher_request_parse(const uint8_t *data, size_t len, int *type);
void cl_launcher_event_encode(const cl_launcher_event *ev, uint8_t out[CL_LAUNCHER_MSG_LEN]);
CL_MUST_CHECK int cl_launcher_event_parse(const uint8_t *data, size_t len, cl_launcher_event *out);

/* ---- the launcher's side ---- */

typedef struct cl_launcher_config {
    const char *command;     /* the app: /bin/sh -c COMMAND, with this process's environment */
    unsigned stop_grace_ms;  /* STOP: SIGTERM to the app's group, SIGKILL this much later */
} cl_launcher_config;

/* Serves the daemon on fd until it goes (0), a SIGTERM or SIGINT (0), or a
 * refused request (CL_EPROTO, logged as event=launcher_refused); the app is
 * stopped in every case.  First makes this process undumpable and closes
 * every descriptor but 0, 1, 2 and fd, so the app inherits none. */
CL_MUST_CHECK int cl_launcher_run(int fd, const cl_launcher_config *cfg);

/* ---- the daemon's side ---- */

typedef struct cl_launcher cl_launcher;

/* Forks and execs the launcher: program and argv (a command line that ends
 * in cl_launcher_run on descriptor CL_LAUNCHER_FD), with add_env added to
 * the environment (cl_process_spec's add_env; the caller wipes its copies
 * afterwards).  It gets SIGTERM when the calling thread dies
 * (PR_SET_PDEATHSIG): call this from the thread that lives as long as the
 * daemon. */
CL_MUST_CHECK int cl_launcher_spawn(const char *program, char *const *argv, const char *const *add_env,
                                    cl_launcher **out);
/* START, then the answer (up to timeout_ms): the app's pid and the read
 * ends of its stdout and stderr (close-on-exec, owned by the caller).  Any
 * answer outside the protocol, or none, shuts the launcher down. */
CL_MUST_CHECK int cl_launcher_start(cl_launcher *l, unsigned timeout_ms, pid_t *pid, int *out_fd, int *err_fd);
/* STOP (the launcher escalates to SIGKILL itself); nothing is awaited. */
CL_MUST_CHECK int cl_launcher_stop(cl_launcher *l);
/* Readable when the EXITED event (or the launcher's end) is there. */
int cl_launcher_fd(const cl_launcher *l);
pid_t cl_launcher_pid(const cl_launcher *l);
/* Reads the EXITED event of pid: *status as waitpid's.  CL_EIO when the
 * launcher is gone, CL_EPROTO for any other message (the launcher is shut
 * down then). */
CL_MUST_CHECK int cl_launcher_read_exit(cl_launcher *l, pid_t pid, int *status);
/* Ends the conversation (shutdown of the socket): the launcher stops the
 * app and exits; a thread polling cl_launcher_fd wakes up. */
void cl_launcher_shutdown(cl_launcher *l);
/* Shuts down, waits up to wait_ms for the launcher to exit (it is never
 * signalled: the daemon's filter allows kill only to itself), frees. */
void cl_launcher_close(cl_launcher *l, unsigned wait_ms);

#pragma GCC visibility pop

#endif

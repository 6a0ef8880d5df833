/* systemd's readiness protocol without libsystemd: one datagram of
 * newline-separated "KEY=value" assignments to the unix socket named by
 * $NOTIFY_SOCKET (a path, or "@name" for an abstract socket).  Everything
 * here is a no-op returning CL_OK when NOTIFY_SOCKET is unset, so that a
 * daemon calls it unconditionally.  Other socket kinds systemd knows
 * (vsock:...) are refused with CL_EINVAL: never opened. */
#ifndef CLOISTER_SD_NOTIFY_H
#define CLOISTER_SD_NOTIFY_H

#pragma GCC visibility push(default)

#include "cloister/core/error.h"

#include <stdbool.h>
#include <stdint.h>

/* Sends state, e.g. "READY=1", "STATUS=enclave running", "STOPPING=1",
 * "WATCHDOG=1" (several joined by '\n' are one message).  Thread-safe. */
CL_MUST_CHECK int cl_sd_notify(const char *state);
CL_MUST_CHECK int cl_sd_notifyf(const char *fmt, ...) CL_PRINTF(1, 2);

/* True when a notification socket is configured. */
bool cl_sd_notify_enabled(void);

/* Remembers $NOTIFY_SOCKET (and $WATCHDOG_USEC/$WATCHDOG_PID) and removes
 * them from the environment, so that child processes do not inherit them;
 * later calls use the remembered values.  Call once, early, before other
 * threads exist (it changes the environment). */
void cl_sd_notify_detach_env(void);

/* The service manager's watchdog interval in microseconds (WATCHDOG_USEC,
 * when WATCHDOG_PID is absent or names this process), or 0 when systemd
 * expects no WATCHDOG=1 pings.  Send them at about half this interval. */
uint64_t cl_sd_watchdog_usec(void);

#pragma GCC visibility pop

#endif

/* cloister watchdog: runs one enclave and keeps it alive (the watchdog of
 * `cloister host`, on its own): start, health checks, restarts within a
 * budget, systemd notifications, stop on SIGTERM. */
#include "cloister/core/log.h"
#include "cloister/core/options.h"
#include "cloister/host/sd_notify.h"
#include "cloister/host/watchdog.h"
#include "commands.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

static const char usage_text[] =
    "usage: cloister watchdog --run-enclave-eif PATH --cpu-count N --memory MIB [--enclave-cid CID]\n"
    "                         [--debug-mode] [OPTIONS]\n"
    "       cloister watchdog --enclave-command CMD [OPTIONS]\n\n"
    "Starts one enclave and keeps it alive: with nitro-cli (alive while describe-enclaves lists\n"
    "it as RUNNING) or as a local command (the stand-in used in development; alive while the\n"
    "process runs), health-checked over its channel, terminated and restarted with\n"
    "exponential backoff when it dies or turns unhealthy, within a restart budget.\n"
    "`cloister host` takes the same options and runs the watchdog beside its proxies.\n\n";

static const char epilog[] =
    "ADDR is unix:PATH or tcp:HOST:PORT (vsock:CID:PORT on Nitro).  DURATION is 250ms, 5s, 2m,\n"
    "1h or a number of seconds.  MIB is a number of MiB, or a size such as 2G.  --health-url\n"
    "speaks plain HTTP/1.1 and takes any status below 500 as healthy; without a health option,\n"
    "alive is healthy.\n\n"
    "Every state change is one log line on stderr:\n"
    "  event=enclave_state from=starting to=running reason=healthy ...\n"
    "(states: stopped, starting, running, terminating, backoff, failed).  With\n"
    "$NOTIFY_SOCKET set (systemd Type=notify) it sends READY=1 once the enclave is first\n"
    "healthy, STATUS= on every change, STOPPING=1 on SIGTERM, and WATCHDOG=1 pings when\n"
    "WatchdogSec= is set.  Child processes do not inherit $NOTIFY_SOCKET.\n\n"
    "SIGTERM or SIGINT: terminate the enclave, exit 0.  Exit status 2: bad command line;\n"
    "3: the restart budget was exhausted (or it could not start at all).\n";

/* ---- arguments ---------------------------------------------------------------------- */

/* 0, EXIT_USAGE after printing the problem, or -1 after --help. */
static int parse_args(int argc, char **argv, cl_watchdog_settings *s)
{
    cl_opt_section section = {"options", NULL, 0, s};
    section.opts = cl_watchdog_options(&section.count);
    cl_options spec = {.prog = "cloister watchdog",
                       .usage = usage_text,
                       .epilog = epilog,
                       .sections = &section,
                       .section_count = 1};
    cl_options_result r;
    int rc = cl_options_main(&spec, argc, argv, &r);
    cl_options_free(&spec, &r);
    if (rc != 0)
        return rc > 0 ? -1 : EXIT_USAGE;
    if (cl_watchdog_settings_check(s) < 0) {
        fprintf(stderr, "cloister watchdog: %s (see --help)\n", cl_error_message());
        return EXIT_USAGE;
    }
    return 0;
}

/* ---- systemd -------------------------------------------------------------------------- */

static void notify(const char *state)
{
    if (cl_sd_notify(state) < 0)
        cl_log(CL_LOG_WARN, "sd_notify_failed", "error", cl_error_message(), NULL);
}

/* ---- main --------------------------------------------------------------------------------- */

int cmd_watchdog(int argc, char **argv)
{
    cl_log_set_component("watchdog");
    cl_sd_notify_detach_env(); /* before any thread, and not for our children */
    cl_watchdog_settings s;
    memset(&s, 0, sizeof s);
    int status = parse_args(argc, argv, &s);
    if (status != 0) {
        cl_watchdog_settings_free(&s);
        return status < 0 ? 0 : status;
    }

    /* signals arrive through a signalfd; blocked before the watchdog thread exists */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    int sfd = signalfd(-1, &set, SFD_CLOEXEC);
    if (sfd < 0) {
        cl_log(CL_LOG_ERROR, "watchdog_failed", "error", strerror(errno), NULL);
        cl_watchdog_settings_free(&s);
        return EXIT_FAILED;
    }
    signal(SIGPIPE, SIG_IGN);

    cl_watchdog_notifier n = {.ready_sent = false};
    s.config.on_state = cl_watchdog_notify_systemd;
    s.config.on_state_ctx = &n;
    cl_log(CL_LOG_INFO, "watchdog_started", "runner",
           s.config.runner == CL_WATCHDOG_LOCAL ? "local" : "nitro-cli", "enclave",
           s.config.runner == CL_WATCHDOG_LOCAL ? s.config.command : s.config.run.eif_path, NULL);
    cl_watchdog *w = NULL;
    if (cl_watchdog_start(&s.config, &w) < 0) {
        fprintf(stderr, "cloister watchdog: %s\n", cl_error_message());
        close(sfd);
        cl_watchdog_settings_free(&s);
        return EXIT_USAGE;
    }

    uint64_t ping_us = cl_sd_watchdog_usec();
    int ping_ms = ping_us ? (int)(ping_us / 2000 > 0 ? ping_us / 2000 : 1) : -1;
    bool stopping = false;
    for (;;) {
        struct pollfd pfd[2] = {{.fd = sfd, .events = POLLIN}, {.fd = cl_watchdog_fd(w), .events = POLLIN}};
        int r = poll(pfd, 2, ping_ms);
        if (r < 0 && errno != EINTR)
            break;
        if (r > 0 && pfd[1].revents)
            break; /* finished: gave up, or stopped */
        if (r > 0 && pfd[0].revents) {
            struct signalfd_siginfo si;
            if (read(sfd, &si, sizeof si) == (ssize_t)sizeof si && !stopping) {
                stopping = true;
                cl_log(CL_LOG_INFO, "watchdog_stopping", "signal", si.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM",
                       NULL);
                notify("STOPPING=1");
                cl_watchdog_stop(w);
            }
        }
        if (ping_ms > 0) {
            /* ping only while the watchdog thread makes progress */
            cl_watchdog_status st;
            cl_watchdog_status_get(w, &st);
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            uint64_t now = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
            if (now - st.progress_ms < ping_us / 1000)
                notify("WATCHDOG=1");
        }
    }
    int rc = cl_watchdog_wait(w);
    if (rc < 0) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", cl_error_message());
        cl_log(CL_LOG_ERROR, "watchdog_gave_up", "error", msg, NULL);
        if (cl_sd_notify_enabled()) {
            char st[1100];
            snprintf(st, sizeof st, "STATUS=gave up: %s", msg);
            notify(st);
        }
    } else {
        cl_log(CL_LOG_INFO, "watchdog_stopped", NULL);
    }
    cl_watchdog_free(w);
    close(sfd); /* signals stay blocked: a late SIGTERM must not change the exit status */
    cl_watchdog_settings_free(&s);
    return rc < 0 ? EXIT_FAILED : 0;
}

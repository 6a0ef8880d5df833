/* cloister enclave launcher: started by `cloister enclave` (with -seccomp
 * log or enforce and -appcmd) before its filter goes on, never by hand.
 * It gets its socket as descriptor 3 and the app's command line and
 * environment at exec, and from then on takes only START and STOP. */
#include "enclave_launcher.h"

#include "cloister/core/log.h"
#include "cloister/core/options.h"
#include "cloister/enclave/launcher.h"
#include "commands.h"

#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

typedef struct settings {
    unsigned stop_grace_ms;
} settings;

static const cl_opt options[] = {
    {.name = "stop-grace", CL_OPT_DURATION_AT(settings, stop_grace_ms, 1, 1, 600000), .def = "5s", .arg = "DUR",
     .help = "STOP: SIGTERM to the app's process group, SIGKILL this much later"},
};

static const char usage_text[] =
    "usage: cloister enclave launcher [--stop-grace DUR] -- COMMAND\n\n"
    "The unfiltered process that starts -appcmd for `cloister enclave -seccomp log|enforce`:\n"
    "cloister enclave starts it before its seccomp filter goes on, with its socket as\n"
    "descriptor 3; it runs /bin/sh -c COMMAND with its own environment on START, stops it\n"
    "on STOP, and exits (stopping the app) when the daemon goes or sends anything else.\n"
    "Not for use by hand.\n\n";

int cmd_enclave_launcher(int argc, char **argv)
{
    cl_log_set_component("enclave-launcher");
    settings s = {0};
    cl_opt_section sections[] = {CL_OPT_SECTION("options", options, &s)};
    cl_options spec = {.prog = "cloister enclave launcher",
                       .usage = usage_text,
                       .positional = "COMMAND",
                       .max_positional = 1,
                       .sections = sections,
                       .section_count = 1};
    cl_options_result r;
    int status = cl_options_main(&spec, argc, argv, &r);
    if (status != 0) {
        status = status > 0 ? 0 : EXIT_USAGE;
        goto out;
    }
    status = EXIT_USAGE;
    if (r.positional_count != 1) {
        fprintf(stderr, "cloister enclave launcher: expected the command to launch\n");
        goto out;
    }
    int type = 0;
    socklen_t len = sizeof type;
    if (getsockopt(CL_LAUNCHER_FD, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_SEQPACKET) {
        fprintf(stderr, "cloister enclave launcher: descriptor %d is not its socket (cloister enclave starts "
                        "the launcher; it is not for use by hand)\n", CL_LAUNCHER_FD);
        goto out;
    }
    cl_launcher_config cfg = {.command = r.positional[0], .stop_grace_ms = s.stop_grace_ms};
    int rc = cl_launcher_run(CL_LAUNCHER_FD, &cfg);
    if (rc < 0 && rc != CL_EPROTO) /* a refusal is logged already */
        fprintf(stderr, "cloister enclave launcher: %s\n", cl_error_message());
    status = rc == 0 ? 0 : EXIT_FAILED;
out:
    cl_options_free(&spec, &r);
    return status;
}

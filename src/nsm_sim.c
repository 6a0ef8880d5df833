/* cloister nsm-sim: a faithful NSM on a unix socket, one thread per client. */
#include "cloister/core/address.h"
#include "cloister/core/encoding.h"
#include "cloister/core/options.h"
#include "cloister/host/eif.h"
#include "cloister/core/small_server.h"
#include "cloister/sim/nsm_sim.h"
#include "commands.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#define MAX_CONNECTIONS 256
#define LISTEN_BACKLOG 64
/* A client silent this long (idle or stuck inside a frame) is dropped so
 * that it cannot hold a connection slot forever; cloister's client
 * notices the closed connection and reconnects before its next request. */
#define IDLE_TIMEOUT_SECONDS 600

static const char usage_text[] =
    "usage: cloister nsm-sim --listen unix:PATH --state DIR [--pcr N=HEX]... [--image FILE]\n"
    "                        [--instance-id ID] [--debug]\n"
    "\n"
    "Runs a Nitro Secure Module simulator that speaks the real NSM's CBOR protocol, each\n"
    "message framed by a 4-byte big-endian length.  Point clients at it with\n"
    "--nsm unix:PATH or " CL_NSM_ENV "=unix:PATH.\n"
    "\n";

static const char epilog[] =
    "Like real hardware it has 32 SHA-384 PCRs with PCR0..15 locked from the start.\n"
    "Defaults: PCRn for n = 0, 1, 2 is SHA-384 of the ASCII text \"cloister nsm-sim PCRn\"\n"
    "(PCR0 from --image when given); PCR4 = SHA-384(48 zero bytes || instance id), as\n"
    "Nitro extends it with the parent's instance id; every other PCR starts at zero.\n"
    "Attestation documents are signed by a leaf certificate valid for 3 hours, issued\n"
    "under root -> regional -> zonal -> instance CAs (all P-384, ecdsa-with-SHA384).\n"
    "\n"
    "Logs one key=value line per event to stderr and prints\n"
    "  nsm-sim: listening on unix:PATH root=DIR/root.pem module_id=...\n"
    "once ready.  SIGINT or SIGTERM stop it and remove the socket file.\n";

/* ---- logging ------------------------------------------------------- */

static void log_line(void *ctx, const char *line)
{
    (void)ctx;
    fprintf(stderr, "nsm-sim: %s\n", line);
}

/* ---- connections -------------------------------------------------------------- */

/* One connection, on its own thread (core/small_server.h joins it). */
static void serve_connection(void *arg, int fd, size_t listener, unsigned long id)
{
    cl_nsm_sim *sim = arg;
    (void)listener;
    fprintf(stderr, "nsm-sim: event=connect conn=%lu\n", id);
    struct timeval tv = {.tv_sec = IDLE_TIMEOUT_SECONDS};
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0)
        fprintf(stderr, "nsm-sim: event=warning conn=%lu detail=\"cannot set timeouts: %s\"\n", id, strerror(errno));
    if (cl_nsm_sim_serve(sim, fd) < 0)
        fprintf(stderr, "nsm-sim: event=connection-error conn=%lu detail=\"%s\"\n", id, cl_error_message());
    fprintf(stderr, "nsm-sim: event=disconnect conn=%lu\n", id);
}

static void refused(void *arg, unsigned long id, const char *reason)
{
    (void)arg;
    fprintf(stderr, "nsm-sim: event=refused conn=%lu reason=\"%s\"\n", id, reason);
}

/* ---- options -------------------------------------------------------------------- */

typedef struct settings {
    char *listen, *state, *image, *instance_id;
    bool debug;
    cl_nsm_sim_config *cfg; /* where --pcr puts its values */
} settings;

static int parse_pcr_option(void *base, const char *arg)
{
    cl_nsm_sim_config *cfg = ((settings *)base)->cfg;
    const char *eq = strchr(arg, '=');
    CL_ENSURE(eq, CL_EINVAL, "%s: expected N=HEX", arg);
    char index_text[8];
    size_t n = (size_t)(eq - arg);
    CL_ENSURE(n > 0 && n < sizeof index_text, CL_EINVAL, "%s: bad PCR index", arg);
    memcpy(index_text, arg, n);
    index_text[n] = '\0';
    uint64_t index;
    int rc = cl_parse_u64(index_text, CL_NSM_SIM_PCRS - 1, &index);
    if (rc < 0)
        return cl_error_prefix(rc, "%s: PCR index (0..31): ", arg);
    CL_ENSURE(!(cfg->pcr_mask & (1u << index)), CL_EINVAL, "%s: PCR%llu given twice", arg, (unsigned long long)index);
    rc = cl_hex_decode_fixed(eq + 1, cfg->pcr_values[index], CL_NSM_SIM_PCR_LEN);
    if (rc < 0)
        return cl_error_prefix(rc, "%s: ", arg);
    cfg->pcr_mask |= 1u << index;
    return CL_OK;
}

/* A simulated enclave running this image: PCR0-2 (and 8) as Nitro measures it. */
static int parse_eif_option(void *base, const char *path)
{
    cl_nsm_sim_config *cfg = ((settings *)base)->cfg;
    cl_eif_measurements m;
    CL_TRY(cl_eif_measure_file(path, &m));
    const uint8_t *pcrs[] = {m.pcr0, m.pcr1, m.pcr2, m.pcr8};
    const unsigned index[] = {0, 1, 2, 8};
    for (int i = 0; i < (m.has_pcr8 ? 4 : 3); i++) {
        CL_ENSURE(!(cfg->pcr_mask & (1u << index[i])), CL_EINVAL, "PCR%u is set by --pcr too; give one", index[i]);
        memcpy(cfg->pcr_values[index[i]], pcrs[i], CL_NSM_SIM_PCR_LEN);
        cfg->pcr_mask |= 1u << index[i];
    }
    return CL_OK;
}

static const cl_opt options[] = {
    {.name = "listen", CL_OPT_STR(settings, listen), .flags = CL_OPT_REQUIRED, .arg = "unix:PATH",
     .help = "socket to serve on (a stale socket file is replaced)"},
    {.name = "state", CL_OPT_STR(settings, state), .flags = CL_OPT_REQUIRED | CL_OPT_NONEMPTY, .arg = "DIR",
     .help = "keeps the CA keys (0600) and certificates, reused across runs; DIR/root.pem is the root to trust "
             "when verifying documents"},
    {.name = "pcr", CL_OPT_CALLBACK(parse_pcr_option), .flags = CL_OPT_REPEAT, .arg = "N=HEX",
     .help = "start PCR N (0..31) at HEX (48 bytes, 96 hex digits); repeatable"},
    {.name = "eif", CL_OPT_CALLBACK(parse_eif_option), .arg = "IMAGE.eif",
     .help = "PCR0, PCR1, PCR2 (and PCR8 when signed) of this enclave image, as Nitro measures it"},
    {.name = "image", CL_OPT_STR(settings, image), .arg = "FILE", .help = "PCR0 = SHA-384 of FILE's bytes"},
    {.name = "instance-id", CL_OPT_STR(settings, instance_id), .arg = "ID",
     .help = "parent instance id (letters, digits, '-'); default: generated once and kept in DIR/instance-id"},
    {.name = "debug", CL_OPT_FLAG(settings, debug), .help = "a debug-mode enclave: PCR0, PCR1 and PCR2 all zero"},
};

int cmd_nsm_sim(int argc, char **argv)
{
    cl_nsm_sim_config *cfg = calloc(1, sizeof *cfg);
    if (!cfg) {
        fprintf(stderr, "cloister nsm-sim: out of memory\n");
        return EXIT_FAILED;
    }
    settings s = {.cfg = cfg};
    cl_opt_section sections[] = {CL_OPT_SECTION("options", options, &s)};
    cl_options spec = {.prog = "cloister nsm-sim",
                       .usage = usage_text,
                       .epilog = epilog,
                       .sections = sections,
                       .section_count = 1};
    cl_options_result r;
    int status = cl_options_main(&spec, argc, argv, &r);
    if (status != 0) {
        status = status > 0 ? 0 : EXIT_USAGE;
        goto out;
    }
    status = EXIT_USAGE;
    cfg->state_dir = s.state;
    cfg->image_path = s.image;
    cfg->instance_id = s.instance_id;
    cfg->debug = s.debug;
    if (cfg->image_path && (cfg->pcr_mask & 1u)) {
        fprintf(stderr, "cloister nsm-sim: --image and --pcr 0=... both set PCR0; give one\n");
        goto out;
    }
    if (cfg->debug && (cfg->pcr_mask & 7u)) {
        fprintf(stderr, "cloister nsm-sim: --debug zeroes PCR0..2 and cannot be combined with --pcr for them\n");
        goto out;
    }
    cl_address addr;
    if (cl_address_parse(s.listen, &addr) < 0) {
        fprintf(stderr, "cloister nsm-sim: --listen: %s\n", cl_error_message());
        goto out;
    }
    if (addr.kind != CL_ADDR_UNIX) {
        fprintf(stderr, "cloister nsm-sim: --listen must be a unix:PATH address\n");
        goto out;
    }

    status = EXIT_FAILED;
    cfg->log = log_line;
    cl_nsm_sim *sim = NULL;
    if (cl_nsm_sim_new(cfg, &sim) < 0) {
        fprintf(stderr, "cloister nsm-sim: %s\n", cl_error_message());
        goto out;
    }
    int listen_fd = -1, stop_fd = -1;
    struct stat ours;
    if (cl_stop_signals_install(&stop_fd) < 0 || cl_address_listen(&addr, LISTEN_BACKLOG, &listen_fd) < 0 ||
        stat(addr.path, &ours) < 0) {
        fprintf(stderr, "cloister nsm-sim: %s\n", cl_error_message());
    } else {
        fprintf(stderr, "nsm-sim: listening on unix:%s root=%s module_id=%s instance_id=%s\n", addr.path,
                cl_nsm_sim_root_pem_path(sim), cl_nsm_sim_module_id(sim), cl_nsm_sim_instance_id(sim));
        cl_small_server_config sc = {.listen_fds = &listen_fd,
                                     .listen_count = 1,
                                     .stop_fd = stop_fd,
                                     .max_connections = MAX_CONNECTIONS,
                                     .serve = serve_connection,
                                     .arg = sim,
                                     .refused = refused};
        /* returns once every connection thread is joined: sim can go */
        int rc = cl_small_server_run(&sc);
        close(listen_fd);
        listen_fd = -1;
        /* Remove the socket only if it is still the one we created. */
        struct stat now;
        if (stat(addr.path, &now) == 0 && now.st_ino == ours.st_ino && now.st_dev == ours.st_dev)
            unlink(addr.path);
        if (rc < 0) {
            fprintf(stderr, "cloister nsm-sim: %s\n", cl_error_message());
        } else {
            fprintf(stderr, "nsm-sim: event=stop signal=%s\n", cl_stop_signals_caught() == SIGINT ? "SIGINT" : "SIGTERM");
            status = 0;
        }
    }
    if (listen_fd >= 0)
        close(listen_fd);
    cl_nsm_sim_free(sim);
out:
    cl_options_free(&spec, &r);
    cl_wipe(cfg, sizeof *cfg);
    free(cfg);
    return status;
}

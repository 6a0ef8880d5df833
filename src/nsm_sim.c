/* cloister nsm-sim: a faithful NSM on a unix socket, one thread per client. */
#include "cloister/core/address.h"
#include "cloister/core/encoding.h"
#include "cloister/sim/nsm_sim.h"
#include "commands.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <pthread.h>
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

static void usage(FILE *out)
{
    fprintf(out,
            "usage: cloister nsm-sim --listen unix:PATH --state DIR [--pcr N=HEX]... [--image FILE]\n"
            "                        [--instance-id ID] [--debug]\n"
            "\n"
            "Runs a Nitro Secure Module simulator that speaks the real NSM's CBOR protocol, each\n"
            "message framed by a 4-byte big-endian length.  Point clients at it with\n"
            "--nsm unix:PATH or " CL_NSM_ENV "=unix:PATH.\n"
            "\n"
            "  --listen unix:PATH   socket to serve on (a stale socket file is replaced)\n"
            "  --state DIR          keeps the CA keys (0600) and certificates, reused across runs;\n"
            "                       DIR/root.pem is the root to trust when verifying documents\n"
            "  --pcr N=HEX          start PCR N (0..31) at HEX (48 bytes, 96 hex digits); repeatable\n"
            "  --image FILE         PCR0 = SHA-384 of FILE's bytes\n"
            "  --instance-id ID     parent instance id (letters, digits, '-'); default: generated\n"
            "                       once and kept in DIR/instance-id\n"
            "  --debug              a debug-mode enclave: PCR0, PCR1 and PCR2 all zero\n"
            "\n"
            "Like real hardware it has 32 SHA-384 PCRs with PCR0..15 locked from the start.\n"
            "Defaults: PCRn for n = 0, 1, 2 is SHA-384 of the ASCII text \"cloister nsm-sim PCRn\"\n"
            "(PCR0 from --image when given); PCR4 = SHA-384(48 zero bytes || instance id), as\n"
            "Nitro extends it with the parent's instance id; every other PCR starts at zero.\n"
            "Attestation documents are signed by a leaf certificate valid for 3 hours, issued\n"
            "under root -> regional -> zonal -> instance CAs (all P-384, ecdsa-with-SHA384).\n"
            "\n"
            "Logs one key=value line per event to stderr and prints\n"
            "  nsm-sim: listening on unix:PATH root=DIR/root.pem module_id=...\n"
            "once ready.  SIGINT or SIGTERM stop it and remove the socket file.\n");
}

/* ---- logging and signals ------------------------------------------------------- */

static void log_line(void *ctx, const char *line)
{
    (void)ctx;
    fprintf(stderr, "nsm-sim: %s\n", line);
}

static int stop_pipe[2] = {-1, -1};
static volatile sig_atomic_t stop_signal;

static void on_signal(int sig)
{
    int saved = errno;
    stop_signal = sig;
    if (stop_pipe[1] >= 0) {
        char byte = 1;
        ssize_t ignored = write(stop_pipe[1], &byte, 1);
        (void)ignored;
    }
    errno = saved;
}

static int install_signals(void)
{
    if (pipe2(stop_pipe, O_CLOEXEC | O_NONBLOCK) < 0)
        return cl_error_set(CL_EIO, "pipe: %s", strerror(errno));
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0)
        return cl_error_set(CL_EIO, "sigaction: %s", strerror(errno));
    sa.sa_handler = SIG_IGN;
    if (sigaction(SIGPIPE, &sa, NULL) < 0)
        return cl_error_set(CL_EIO, "sigaction: %s", strerror(errno));
    return CL_OK;
}

/* ---- connections -------------------------------------------------------------- */

typedef struct server {
    cl_nsm_sim *sim;
    pthread_mutex_t lock;
    pthread_cond_t idle;
    int fds[MAX_CONNECTIONS]; /* -1: free slot */
    int active;
    unsigned long next_id;
} server;

typedef struct connection {
    server *srv;
    int slot;
    int fd;
    unsigned long id;
} connection;

static void *serve_connection(void *arg)
{
    connection *conn = arg;
    server *srv = conn->srv;
    struct timeval tv = {.tv_sec = IDLE_TIMEOUT_SECONDS};
    if (setsockopt(conn->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0 ||
        setsockopt(conn->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0)
        fprintf(stderr, "nsm-sim: event=warning conn=%lu detail=\"cannot set timeouts: %s\"\n", conn->id,
                strerror(errno));
    if (cl_nsm_sim_serve(srv->sim, conn->fd) < 0)
        fprintf(stderr, "nsm-sim: event=connection-error conn=%lu detail=\"%s\"\n", conn->id, cl_error_message());
    fprintf(stderr, "nsm-sim: event=disconnect conn=%lu\n", conn->id);
    pthread_mutex_lock(&srv->lock);
    srv->fds[conn->slot] = -1;
    close(conn->fd);
    srv->active--;
    pthread_cond_broadcast(&srv->idle);
    pthread_mutex_unlock(&srv->lock);
    free(conn);
    return NULL;
}

static void start_connection(server *srv, int fd)
{
    pthread_mutex_lock(&srv->lock);
    unsigned long id = ++srv->next_id;
    int slot = -1;
    for (int i = 0; i < MAX_CONNECTIONS && slot < 0; i++)
        if (srv->fds[i] < 0)
            slot = i;
    connection *conn = slot >= 0 ? malloc(sizeof *conn) : NULL;
    if (!conn) {
        pthread_mutex_unlock(&srv->lock);
        fprintf(stderr, "nsm-sim: event=refused conn=%lu reason=\"%s\"\n", id,
                slot < 0 ? "too many connections" : "out of memory");
        close(fd);
        return;
    }
    *conn = (connection){srv, slot, fd, id};
    srv->fds[slot] = fd;
    srv->active++;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t thread;
    int err = pthread_create(&thread, &attr, serve_connection, conn);
    pthread_attr_destroy(&attr);
    if (err != 0) {
        srv->fds[slot] = -1;
        srv->active--;
        pthread_mutex_unlock(&srv->lock);
        fprintf(stderr, "nsm-sim: event=refused conn=%lu reason=\"cannot start a thread: %s\"\n", id,
                strerror(err));
        close(fd);
        free(conn);
        return;
    }
    pthread_mutex_unlock(&srv->lock);
    fprintf(stderr, "nsm-sim: event=connect conn=%lu\n", id);
}

/* Wakes every connection thread and waits until all have finished. */
static void stop_connections(server *srv)
{
    pthread_mutex_lock(&srv->lock);
    for (int i = 0; i < MAX_CONNECTIONS; i++)
        if (srv->fds[i] >= 0)
            shutdown(srv->fds[i], SHUT_RDWR);
    while (srv->active > 0)
        pthread_cond_wait(&srv->idle, &srv->lock);
    pthread_mutex_unlock(&srv->lock);
}

static int accept_loop(server *srv, int listen_fd)
{
    for (;;) {
        struct pollfd fds[2] = {{.fd = listen_fd, .events = POLLIN}, {.fd = stop_pipe[0], .events = POLLIN}};
        int n = poll(fds, 2, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return cl_error_set(CL_EIO, "poll: %s", strerror(errno));
        if (fds[1].revents || stop_signal)
            return CL_OK;
        if (!(fds[0].revents & POLLIN))
            continue;
        int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EAGAIN)
                continue;
            fprintf(stderr, "nsm-sim: event=accept-error detail=\"%s\"\n", strerror(errno));
            /* Out of descriptors: back off instead of spinning. */
            poll(NULL, 0, 100);
            continue;
        }
        start_connection(srv, fd);
    }
}

/* ---- options -------------------------------------------------------------------- */

static int parse_pcr_option(const char *arg, cl_nsm_sim_config *cfg)
{
    const char *eq = strchr(arg, '=');
    CL_ENSURE(eq, CL_EINVAL, "--pcr %s: expected N=HEX", arg);
    char index_text[8];
    size_t n = (size_t)(eq - arg);
    CL_ENSURE(n > 0 && n < sizeof index_text, CL_EINVAL, "--pcr %s: bad PCR index", arg);
    memcpy(index_text, arg, n);
    index_text[n] = '\0';
    uint64_t index;
    int rc = cl_parse_u64(index_text, CL_NSM_SIM_PCRS - 1, &index);
    if (rc < 0)
        return cl_error_prefix(rc, "--pcr %s: PCR index (0..31): ", arg);
    CL_ENSURE(!(cfg->pcr_mask & (1u << index)), CL_EINVAL, "--pcr %s: PCR%llu given twice", arg,
              (unsigned long long)index);
    rc = cl_hex_decode_fixed(eq + 1, cfg->pcr_values[index], CL_NSM_SIM_PCR_LEN);
    if (rc < 0)
        return cl_error_prefix(rc, "--pcr %s: ", arg);
    cfg->pcr_mask |= 1u << index;
    return CL_OK;
}

int cmd_nsm_sim(int argc, char **argv)
{
    static const struct option options[] = {
        {"listen", required_argument, NULL, 'l'},
        {"state", required_argument, NULL, 's'},
        {"pcr", required_argument, NULL, 'p'},
        {"image", required_argument, NULL, 'i'},
        {"instance-id", required_argument, NULL, 'I'},
        {"debug", no_argument, NULL, 'd'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    cl_nsm_sim_config *cfg = calloc(1, sizeof *cfg);
    if (!cfg) {
        fprintf(stderr, "cloister nsm-sim: out of memory\n");
        return EXIT_FAILED;
    }
    const char *listen_text = NULL;
    int status = EXIT_USAGE;
    int opt;
    optind = 1;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        switch (opt) {
        case 'l': listen_text = optarg; break;
        case 's': cfg->state_dir = optarg; break;
        case 'i': cfg->image_path = optarg; break;
        case 'I': cfg->instance_id = optarg; break;
        case 'd': cfg->debug = true; break;
        case 'p':
            if (parse_pcr_option(optarg, cfg) < 0) {
                fprintf(stderr, "cloister nsm-sim: %s\n", cl_error_message());
                goto out;
            }
            break;
        case 'h':
            usage(stdout);
            status = 0;
            goto out;
        default:
            fprintf(stderr, "cloister nsm-sim: unknown option or missing value: %s\n", argv[optind - 1]);
            usage(stderr);
            goto out;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "cloister nsm-sim: unexpected argument '%s'\n", argv[optind]);
        goto out;
    }
    if (!listen_text || !cfg->state_dir) {
        fprintf(stderr, "cloister nsm-sim: --listen unix:PATH and --state DIR are required\n");
        usage(stderr);
        goto out;
    }
    if (cfg->image_path && (cfg->pcr_mask & 1u)) {
        fprintf(stderr, "cloister nsm-sim: --image and --pcr 0=... both set PCR0; give one\n");
        goto out;
    }
    if (cfg->debug && (cfg->pcr_mask & 7u)) {
        fprintf(stderr, "cloister nsm-sim: --debug zeroes PCR0..2 and cannot be combined with --pcr for them\n");
        goto out;
    }
    cl_address addr;
    if (cl_address_parse(listen_text, &addr) < 0) {
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
    server srv = {.sim = sim};
    for (int i = 0; i < MAX_CONNECTIONS; i++)
        srv.fds[i] = -1;
    pthread_mutex_init(&srv.lock, NULL);
    pthread_cond_init(&srv.idle, NULL);
    int listen_fd = -1;
    struct stat ours;
    if (install_signals() < 0 || cl_address_listen(&addr, LISTEN_BACKLOG, &listen_fd) < 0 ||
        stat(addr.path, &ours) < 0) {
        fprintf(stderr, "cloister nsm-sim: %s\n", cl_error_message());
    } else {
        fprintf(stderr, "nsm-sim: listening on unix:%s root=%s module_id=%s instance_id=%s\n", addr.path,
                cl_nsm_sim_root_pem_path(sim), cl_nsm_sim_module_id(sim), cl_nsm_sim_instance_id(sim));
        int rc = accept_loop(&srv, listen_fd);
        close(listen_fd);
        listen_fd = -1;
        /* Remove the socket only if it is still the one we created. */
        struct stat now;
        if (stat(addr.path, &now) == 0 && now.st_ino == ours.st_ino && now.st_dev == ours.st_dev)
            unlink(addr.path);
        stop_connections(&srv);
        if (rc < 0) {
            fprintf(stderr, "cloister nsm-sim: %s\n", cl_error_message());
        } else {
            fprintf(stderr, "nsm-sim: event=stop signal=%s\n", stop_signal == SIGINT ? "SIGINT" : "SIGTERM");
            status = 0;
        }
    }
    if (listen_fd >= 0)
        close(listen_fd);
    pthread_cond_destroy(&srv.idle);
    pthread_mutex_destroy(&srv.lock);
    cl_nsm_sim_free(sim);
out:
    cl_wipe(cfg, sizeof *cfg);
    free(cfg);
    return status;
}

/* `cloister dev --acme`: the CA side of the local picture.  Pebble serves
 * its directory on 127.0.0.1 (the enclave reaches it through the host's
 * outbound proxy, as it would reach Let's Encrypt), pebble-challtestsrv is
 * its DNS and answers 127.0.0.1 for every name, and Pebble's tls-alpn-01
 * connections go to the host's public forward, so the challenge is
 * answered by the enclave's own TLS listener through the same path clients
 * take. */
#include "dev_acme.h"

#include "cloister/core/http_get.h"
#include "cloister/core/process.h"
#include "cloister/core/tls.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/pem.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int spawn_logged(const char *run, const char *name, char *const argv[], const char *const *env, pid_t *pid)
{
    char log[PATH_MAX + 32];
    snprintf(log, sizeof log, "%s/%s.log", run, name);
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    CL_ENSURE(fd >= 0, CL_EIO, "cannot create %s: %s", log, strerror(errno));
    cl_process_spec spec = {.program = argv[0], .argv = argv, .search_path = true, .own_group = true,
                            .die_with_parent = true, .stdout_fd = fd, .stderr_fd = fd, .add_env = env};
    int rc = cl_process_spawn(&spec, pid);
    close(fd);
    return rc;
}

/* Pebble needs a certificate for its own HTTPS (Debian ships none): a
 * self-signed one for localhost, which the enclave trusts by --acme-ca-file. */
static int write_tls(dev_acme *a, char *key_file, size_t key_len)
{
    cl_tls_identity id;
    CL_TRY(cl_tls_identity_generate("localhost", &id));
    snprintf(key_file, key_len, "%s/pebble.key", a->run);
    int rc = CL_OK;
    FILE *c = fopen(a->ca_file, "w");
    int kfd = open(key_file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    FILE *k = kfd >= 0 ? fdopen(kfd, "w") : NULL;
    if (!c || !k || PEM_write_X509(c, id.cert) != 1 || PEM_write_PrivateKey(k, id.key, NULL, NULL, 0, NULL, NULL) != 1)
        rc = cl_error_set(CL_EIO, "cannot write Pebble's certificate in %s", a->run);
    if (c)
        fclose(c);
    if (k)
        fclose(k);
    else if (kfd >= 0)
        close(kfd);
    cl_tls_identity_free(&id);
    return rc;
}

static bool port_open(unsigned port)
{
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%u/", port);
    cl_buf body;
    long status;
    int rc = cl_http_get(url, NULL, 300, 4096, &body, &status);
    cl_buf_free(&body);
    cl_error_clear();
    return rc == CL_OK;
}

int dev_acme_start(dev_acme *a, const char *run, unsigned tls_port, unsigned (*pick_port)(void))
{
    memset(a, 0, sizeof *a);
    snprintf(a->run, sizeof a->run, "%s", run);
    snprintf(a->ca_file, sizeof a->ca_file, "%s/pebble-tls.pem", run);
    snprintf(a->root_file, sizeof a->root_file, "%s/pebble-root.pem", run);
    a->port = pick_port();
    a->mgmt = pick_port();
    unsigned dns = pick_port(), dns_mgmt = pick_port();
    snprintf(a->directory, sizeof a->directory, "https://localhost:%u/dir", a->port);
    char key_file[PATH_MAX + 32], config[PATH_MAX + 32];
    CL_TRY(write_tls(a, key_file, sizeof key_file));
    snprintf(config, sizeof config, "%s/pebble.json", run);
    FILE *f = fopen(config, "w");
    CL_ENSURE(f, CL_EIO, "cannot write %s: %s", config, strerror(errno));
    /* httpPort: nothing answers http-01 in dev (tls-alpn-01 is used) */
    fprintf(f,
            "{\"pebble\": {\"listenAddress\": \"127.0.0.1:%u\", \"managementListenAddress\": \"127.0.0.1:%u\",\n"
            "  \"certificate\": \"%s\", \"privateKey\": \"%s\", \"httpPort\": %u, \"tlsPort\": %u,\n"
            "  \"ocspResponderURL\": \"\", \"externalAccountBindingRequired\": false}}\n",
            a->port, a->mgmt, a->ca_file, key_file, pick_port(), tls_port);
    fclose(f);
    char dns_listen[32], dns_mgmt_listen[32], dns_server[32];
    snprintf(dns_listen, sizeof dns_listen, "127.0.0.1:%u", dns);
    snprintf(dns_mgmt_listen, sizeof dns_mgmt_listen, "127.0.0.1:%u", dns_mgmt);
    snprintf(dns_server, sizeof dns_server, "127.0.0.1:%u", dns);
    char *dns_argv[] = {"pebble-challtestsrv", "-dns01", dns_listen, "-http01", "", "-https01", "", "-tlsalpn01", "",
                        "-management", dns_mgmt_listen, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "", NULL};
    int rc = spawn_logged(run, "challtestsrv", dns_argv, NULL, &a->dns);
    if (rc < 0)
        return cl_error_prefix(rc, "--acme needs Debian's pebble (scripts/deps.sh): ");
    char *pebble_argv[] = {"pebble", "-config", config, "-dnsserver", dns_server, NULL};
    static const char *const env[] = {"PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0", NULL};
    CL_TRY(spawn_logged(run, "pebble", pebble_argv, env, &a->pebble));
    for (int i = 0; i < 100 && !port_open(a->port); i++) {
        struct timespec ts = {0, 100 * 1000000L};
        nanosleep(&ts, NULL);
    }
    CL_ENSURE(port_open(a->port), CL_EIO, "Pebble did not start (see %s/pebble.log)", run);
    return CL_OK;
}

bool dev_acme_wait_issued(dev_acme *a, unsigned port, unsigned timeout_ms)
{
    char url[96];
    snprintf(url, sizeof url, "https://localhost:%u/roots/0", a->mgmt);
    cl_buf root;
    long status;
    if (cl_http_get(url, a->ca_file, 5000, 64 * 1024, &root, &status) < 0 || status != 200) {
        cl_buf_free(&root);
        return false;
    }
    FILE *f = fopen(a->root_file, "w");
    bool ok = f && fwrite(root.data, 1, root.len, f) == root.len;
    if (f)
        fclose(f);
    cl_buf_free(&root);
    if (!ok)
        return false;
    snprintf(url, sizeof url, "https://localhost:%u/enclave", port);
    for (unsigned waited = 0; waited <= timeout_ms; waited += 250) {
        cl_buf body;
        int rc = cl_http_get(url, a->root_file, 2000, 64 * 1024, &body, &status);
        cl_buf_free(&body);
        if (rc == CL_OK && status == 200)
            return true;
        cl_error_clear();
        struct timespec ts = {0, 250 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return false;
}

void dev_acme_stop(dev_acme *a)
{
    if (a->pebble > 0)
        cl_process_stop(a->pebble, 3000, NULL);
    if (a->dns > 0)
        cl_process_stop(a->dns, 3000, NULL);
    a->pebble = a->dns = 0;
}

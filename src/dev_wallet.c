/* `cloister dev --app wallet` (dev_wallet.h). */
#include "dev_wallet.h"

#include "cloister/core/encoding.h"
#include "cloister/core/process.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define PCR_BLOCK 1024 /* as examples/wallet/app.c extends it */

bool dev_wallet_wanted(const char *app)
{
    return app && !strcmp(app, "wallet");
}

static int find_beside(const char *self, const char *name, char *out, size_t len)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", self);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    CL_ENSURE(snprintf(out, len, "%s/%s", dir, name) < (int)len, CL_EINVAL, "the path of %s is too long", self);
    CL_ENSURE(access(out, X_OK) == 0, CL_ENOTFOUND, "%s not found beside %s (build the wallet example)", name, self);
    return CL_OK;
}

static int find_dynalite(const char *self, char *out, size_t len)
{
    const char *src = getenv("CLOISTER_SOURCE_DIR");
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", self);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    if (src) {
        snprintf(out, len, "%s/tests/node/node_modules/dynalite/cli.js", src);
        if (access(out, R_OK) == 0)
            return CL_OK;
    }
    CL_ENSURE(snprintf(out, len, "%s/../tests/node/node_modules/dynalite/cli.js", dir) < (int)len, CL_EINVAL,
              "the path of %s is too long", self);
    CL_ENSURE(access(out, R_OK) == 0, CL_ENOTFOUND,
              "dynalite not found (scripts/node-deps.sh installs it under tests/node/node_modules)");
    return CL_OK;
}

/* PCR16 as the wallet leaves it: SHA-384 chained over its binary's blocks. */
static int measure(const char *path, char hex[2 * 48 + 1])
{
    cl_buf file = CL_BUF_INIT;
    CL_TRY(cl_read_file(path, 512u << 20, &file));
    uint8_t pcr[48] = {0};
    int rc = CL_OK;
    for (size_t off = 0; off < file.len && rc == CL_OK; off += PCR_BLOCK) {
        size_t n = file.len - off < PCR_BLOCK ? file.len - off : PCR_BLOCK;
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        unsigned len = 0;
        if (!md || EVP_DigestInit_ex(md, EVP_sha384(), NULL) != 1 || EVP_DigestUpdate(md, pcr, 48) != 1 ||
            EVP_DigestUpdate(md, file.data + off, n) != 1 || EVP_DigestFinal_ex(md, pcr, &len) != 1)
            rc = cl_error_set(CL_ECRYPTO, "SHA-384 failed");
        EVP_MD_CTX_free(md);
    }
    cl_buf_free(&file);
    cl_hex_encode(pcr, 48, hex);
    return rc;
}

static int write_file(const char *path, const char *text, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    CL_ENSURE(fd >= 0, CL_EIO, "cannot create %s: %s", path, strerror(errno));
    bool ok = write(fd, text, len) == (ssize_t)len;
    ok = close(fd) == 0 && ok;
    CL_ENSURE(ok, CL_EIO, "cannot write %s", path);
    return CL_OK;
}

/* The recovery key pair the walk-through seals recovery shares to. */
static int make_recovery_key(const char *run)
{
    EVP_PKEY *k = EVP_EC_gen("P-384");
    CL_ENSURE(k, CL_ECRYPTO, "cannot make a P-384 key");
    char path[PATH_MAX + 32];
    int rc = CL_OK;
    for (int pub = 0; pub < 2 && rc == CL_OK; pub++) {
        snprintf(path, sizeof path, "%s/recovery%s", run, pub ? ".pub" : ".pem");
        BIO *b = BIO_new(BIO_s_mem());
        char *p = NULL;
        long n = 0;
        if (!b || !(pub ? PEM_write_bio_PUBKEY(b, k) : PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL)) ||
            (n = BIO_get_mem_data(b, &p)) <= 0)
            rc = cl_error_set(CL_ECRYPTO, "cannot write the recovery key");
        else
            rc = write_file(path, p, (size_t)n);
        BIO_free(b);
    }
    EVP_PKEY_free(k);
    return rc;
}

static unsigned free_tcp_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    unsigned port = 0;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

/* Runs argv to the end, output to RUN/NAME.out; its exit status or -1. */
static int run_to_end(const dev_wallet *w, const char *name, char *const argv[], bool show)
{
    char out[PATH_MAX + 32];
    snprintf(out, sizeof out, "%s/%s.out", w->run, name);
    int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    cl_process_spec spec = {.program = argv[0], .argv = argv, .search_path = true, .stdout_fd = fd, .stderr_fd = fd};
    pid_t pid;
    int status = 0;
    bool exited = false;
    int rc = cl_process_spawn(&spec, &pid);
    close(fd);
    if (rc < 0 || cl_process_wait(pid, 60000, &exited, &status) < 0 || !exited) {
        if (rc == CL_OK && !exited)
            cl_process_stop(pid, 1000, NULL);
        cl_error_clear();
        return -1;
    }
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    if (show || code != 0) {
        cl_buf b = CL_BUF_INIT;
        if (cl_read_file(out, 1 << 16, &b) == CL_OK && b.len)
            printf("%.*s%s", (int)b.len, (const char *)b.data, b.data[b.len - 1] == '\n' ? "" : "\n");
        cl_buf_free(&b);
    }
    return code;
}

static int start_dynalite(dev_wallet *w)
{
    char port[16], path[PATH_MAX + 16], log[PATH_MAX + 32];
    snprintf(port, sizeof port, "%u", w->ddb_port);
    snprintf(path, sizeof path, "%s/dynalite", w->run);
    snprintf(log, sizeof log, "%s/dynalite.log", w->run);
    char *argv[] = {"node", w->node_dynalite, "--host", "127.0.0.1", "--port", port, "--path", path,
                    "--createTableMs", "0", NULL};
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    CL_ENSURE(fd >= 0, CL_EIO, "cannot create %s", log);
    cl_process_spec spec = {.program = "node", .argv = argv, .search_path = true, .own_group = true,
                            .die_with_parent = true, .stdout_fd = fd, .stderr_fd = fd};
    int rc = cl_process_spawn(&spec, &w->dynalite);
    close(fd);
    CL_TRY(rc);
    /* up when it accepts */
    for (int i = 0; i < 100; i++) {
        int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)w->ddb_port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        bool up = s >= 0 && connect(s, (struct sockaddr *)&a, sizeof a) == 0;
        if (s >= 0)
            close(s);
        if (up)
            return CL_OK;
        usleep(100000);
    }
    return cl_error_set(CL_EIO, "dynalite did not start (%s)", log);
}

int dev_wallet_prepare(dev_wallet *w, const char *self, const char *run, const char *role_arn, const char *pcr0,
                       const char *ddb_link)
{
    memset(w, 0, sizeof *w);
    snprintf(w->run, sizeof w->run, "%s", run);
    CL_TRY(find_beside(self, "cloister-wallet", w->wallet, sizeof w->wallet));
    CL_TRY(find_beside(self, "cloister-wallet-client", w->client, sizeof w->client));
    CL_TRY(find_dynalite(self, w->node_dynalite, sizeof w->node_dynalite));
    CL_TRY(measure(w->wallet, w->pcr16));
    char policy[4096], path[PATH_MAX + 32];
    int n = snprintf(policy, sizeof policy,
                     "{\"Version\": \"2012-10-17\", \"Statement\": [\n"
                     "  {\"Sid\": \"the app's role encrypts the enclave's shares\", \"Effect\": \"Allow\",\n"
                     "   \"Principal\": {\"AWS\": \"%s\"}, \"Action\": [\"kms:Encrypt\"], \"Resource\": \"*\"},\n"
                     "  {\"Sid\": \"only the wallet's enclave opens them\", \"Effect\": \"Allow\",\n"
                     "   \"Principal\": {\"AWS\": \"%s\"}, \"Action\": [\"kms:Decrypt\"], \"Resource\": \"*\",\n"
                     "   \"Condition\": {\"StringEqualsIgnoreCase\": {\"kms:RecipientAttestation:PCR0\": \"%s\",\n"
                     "                                            \"kms:RecipientAttestation:PCR16\": \"%s\"}}}]}\n",
                     role_arn, role_arn, pcr0, w->pcr16);
    snprintf(path, sizeof path, "%s/policy-wallet.json", run);
    CL_TRY(write_file(path, policy, (size_t)n));
    snprintf(w->key_arg, sizeof w->key_arg, "alias/wallet=%s", path);
    CL_TRY(make_recovery_key(run));
    w->ddb_port = free_tcp_port();
    CL_ENSURE(w->ddb_port, CL_EIO, "no free port for dynalite");
    snprintf(w->outbound, sizeof w->outbound, "%s=127.0.0.1:%u", ddb_link, w->ddb_port);
    CL_TRY(start_dynalite(w));
    /* the workshop's table, made by whoever deploys it (here: us) */
    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "http://127.0.0.1:%u", w->ddb_port);
    char *argv[] = {(char *)self, "dynamodb", "--region", "us-east-1", "--endpoint", endpoint, "--allow-http",
                    "--access-key-id", "AKIADEVDYNALITE00000", "--secret-access-key", "dynalite-takes-any",
                    "create-table", "--table", DEV_WALLET_TABLE, "--partition-key", "PublicKey", NULL};
    CL_ENSURE(run_to_end(w, "create-table", argv, false) == 0, CL_EIO, "cannot create the wallet's table in dynalite");
    return CL_OK;
}

static int quote(cl_buf *out, const char *word)
{
    CL_TRY(cl_buf_append(out, "'", 1));
    for (const char *p = word; *p; p++)
        CL_TRY(*p == '\'' ? cl_buf_append(out, "'\\''", 4) : cl_buf_append(out, p, 1));
    return cl_buf_append(out, "' ", 2);
}

int dev_wallet_app_command(const dev_wallet *w, unsigned app_port, unsigned intport, const char *imds_link,
                           const char *kms_link, const char *ddb_link, cl_buf *out)
{
    char listen[64], intp[16], nsm[PATH_MAX + 16], ca[PATH_MAX + 16];
    snprintf(listen, sizeof listen, "tcp:127.0.0.1:%u", app_port);
    snprintf(intp, sizeof intp, "%u", intport);
    snprintf(nsm, sizeof nsm, "unix:%s/nsm.sock", w->run);
    snprintf(ca, sizeof ca, "%s/kms/ca.pem", w->run);
    /* the app reaches KMS and DynamoDB as on Nitro: IMDS credentials and
     * the host's outbound proxies; TLS to kms.us-east-1.amazonaws.com ends
     * at kms-local, dynalite speaks plain HTTP */
    const char *words[] = {w->wallet, "--listen", listen, "--intport", intp, "--nsm", nsm, "--kms-imds", imds_link,
                           "--kms-proxy", kms_link, "--kms-ca-file", ca, "--key-id", "alias/wallet",
                           "--dynamodb-endpoint", "http://dynamodb.us-east-1.amazonaws.com", "--dynamodb-proxy",
                           ddb_link, "--table", DEV_WALLET_TABLE};
    CL_TRY(cl_buf_append(out, "exec ", 5));
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        CL_TRY(quote(out, words[i]));
    return cl_buf_append(out, "", 1);
}

bool dev_wallet_walkthrough(const dev_wallet *w, unsigned port, const char *pcr0, bool run)
{
    char url[64], root[PATH_MAX + 32], p0[128], p16[128], rec[PATH_MAX + 32], key[PATH_MAX + 32];
    snprintf(url, sizeof url, "https://localhost:%u", port);
    snprintf(root, sizeof root, "%s/state/root.pem", w->run);
    snprintf(p0, sizeof p0, "0=%s", pcr0);
    snprintf(p16, sizeof p16, "16=%s", w->pcr16);
    snprintf(rec, sizeof rec, "%s/recovery.pub", w->run);
    snprintf(key, sizeof key, "%s/key.json", w->run);
    printf("\nThe wallet (examples/wallet): PCR16 = %.16s... (its binary, extended and locked at start); its\n"
           "shares' key alias/wallet opens only for a Recipient with this PCR0 and PCR16; shares in dynalite,\n"
           "table %s (DynamoDB through the host's outbound proxy).  Try it with the client, which\n"
           "proves the enclave on its connection before it sends anything:\n",
           w->pcr16, DEV_WALLET_TABLE);
    printf("  C=\"%s %s --root %s --pcr %s --pcr %s\"\n", w->client, url, root, p0, p16);
    printf("  $C verify\n");
    printf("  $C create --recovery-public-key %s --out %s\n", rec, key);
    printf("  $C sign --key %s --tx-hash 'pay bob 5'\n", key);
    printf("  $C sign --key %s --tx-hash 0x$(openssl rand -hex 32) --ethereum\n", key);
    printf("  (the recovery private key is %s/recovery.pem)\n", w->run);
    if (!run)
        return true;
    struct {
        const char *what;
        char *argv[16];
    } steps[] = {
        {"verify", {(char *)w->client, url, "--root", root, "--pcr", p0, "--pcr", p16, "verify", NULL}},
        {"create", {(char *)w->client, url, "--root", root, "--pcr", p0, "--pcr", p16, "create",
                    "--recovery-public-key", rec, "--out", key, NULL}},
        {"sign", {(char *)w->client, url, "--root", root, "--pcr", p0, "--pcr", p16, "sign", "--key", key,
                  "--tx-hash", "pay bob 5", NULL}},
        {"sign --ethereum", {(char *)w->client, url, "--root", root, "--pcr", p0, "--pcr", p16, "sign", "--key",
                             key, "--tx-hash", "0x8f3b2a1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a",
                             "--ethereum", NULL}},
    };
    bool ok = true;
    for (size_t i = 0; i < sizeof steps / sizeof steps[0] && ok; i++) {
        printf("\n$ cloister-wallet-client ... %s\n", steps[i].what);
        fflush(stdout);
        ok = run_to_end(w, "wallet-client", steps[i].argv, true) == 0;
        printf("%s  wallet %s\n", ok ? "ok  " : "FAIL", steps[i].what);
    }
    return ok;
}

void dev_wallet_stop(dev_wallet *w)
{
    if (w->dynalite > 0)
        cl_process_stop(w->dynalite, 3000, NULL);
    w->dynalite = 0;
}

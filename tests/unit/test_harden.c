/* The enclave daemon's memory hardening (lib/enclave/harden.c): no dumps,
 * no core files, private keys and secret copies in OpenSSL's secure heap,
 * wiped when freed; the -user parser and the drop itself (as root, in a
 * child). */
#include "cloister/core/tls.h"
#include "cloister/enclave/harden.h"
#include "test.h"

#include <openssl/crypto.h>
#include <grp.h>
#include <openssl/evp.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

static cl_harden_state state;

static bool sanitized(void)
{
    return getenv("CLOISTER_TEST_SANITIZED") != NULL;
}

/* VmLck of /proc/self/status in kB: what mlock really holds. */
static long locked_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmLck: %ld kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb;
}

static void test_process_hardened(void)
{
    CHECK(!CRYPTO_secure_malloc_initialized());
    CHECK_ERR(cl_harden_process(3000, false, &state), CL_EINVAL, "power of two");
    CHECK_OK(cl_harden_process(0, false, &state));
    CHECK(prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0);
    struct rlimit rl;
    CHECK(getrlimit(RLIMIT_CORE, &rl) == 0 && rl.rlim_cur == 0 && rl.rlim_max == 0);
    CHECK(state.secure_heap && CRYPTO_secure_malloc_initialized());
    CHECK(state.heap_bytes == CL_SECURE_HEAP_DEFAULT);
    /* ASan answers mlock with a no-op ("ignores mlock"): only the plain
     * build sees the pages really locked */
    if (!sanitized() && state.locked)
        CHECK(locked_kb() >= (long)(CL_SECURE_HEAP_DEFAULT / 1024));
    /* a second call keeps the heap it has */
    cl_harden_state again;
    CHECK_OK(cl_harden_process(0, true, &again));
    CHECK(again.secure_heap);
}

static void test_private_key_in_secure_heap(void)
{
    /* the first key also seeds the DRBGs, which keep their state there */
    EVP_PKEY_free(EVP_EC_gen("P-256"));
    size_t before = CRYPTO_secure_used();
    EVP_PKEY *k = EVP_EC_gen("P-256");
    CHECK(k);
    CHECK(CRYPTO_secure_used() > before);
    size_t with_one = CRYPTO_secure_used();
    /* the identity the daemon generates goes the same way */
    cl_tls_identity id = {0};
    CHECK_OK(cl_tls_identity_generate("localhost", &id));
    size_t peak = CRYPTO_secure_used();
    CHECK(peak > with_one);
    EVP_PKEY_free(k);
    CHECK(CRYPTO_secure_used() < peak);
    cl_tls_identity_free(&id);
}

static void test_secret_copy(void)
{
    uint8_t plain[200];
    memset(plain, 0xA5, sizeof plain);
    size_t before = CRYPTO_secure_used();
    cl_buf s;
    CHECK_OK(cl_secure_copy(plain, sizeof plain, &s));
    CHECK(s.len == sizeof plain && !memcmp(s.data, plain, sizeof plain));
    CHECK(cl_secure_allocated(s.data) && CRYPTO_secure_allocated(s.data));
    CHECK(CRYPTO_secure_used() > before);
    /* the block stays mapped (the arena is never unmapped): after the free
     * none of the secret may be left in it */
    const uint8_t *where = s.data;
    cl_buf_free(&s);
    CHECK(s.data == NULL && CRYPTO_secure_used() == before);
    size_t left = 0;
    for (size_t i = 0; i < sizeof plain; i++)
        left += where[i] == 0xA5;
    CHECK(left == 0);

    /* a plaintext that arrived in ordinary memory moves in */
    cl_buf b = CL_BUF_INIT;
    CHECK_OK(cl_buf_append(&b, "correct horse battery staple", 28));
    CHECK(!cl_secure_allocated(b.data));
    CHECK_OK(cl_secure_move(&b));
    CHECK(cl_secure_allocated(b.data) && b.len == 28 && !memcmp(b.data, "correct horse battery staple", 28));
    cl_buf_free(&b);
    cl_buf empty = CL_BUF_INIT;
    CHECK_OK(cl_secure_move(&empty));
    CHECK(empty.data == NULL);
}

static void test_user_parse(void)
{
    cl_user_spec u;
    CHECK_OK(cl_user_parse("nobody", &u));
    CHECK(u.uid == 65534 && u.gid != 0 && !strcmp(u.name, "nobody"));
    CHECK_OK(cl_user_parse("65534", &u));
    CHECK(u.uid == 65534);
    CHECK_OK(cl_user_parse("4242:4343", &u));
    CHECK(u.uid == 4242 && u.gid == 4343);
    CHECK_OK(cl_user_parse("nobody:nogroup", &u));
    CHECK_ERR(cl_user_parse("4242", &u), CL_EINVAL, "give its group");
    CHECK_ERR(cl_user_parse("root", &u), CL_EINVAL, "is root");
    CHECK_ERR(cl_user_parse("0:5", &u), CL_EINVAL, "is root");
    CHECK_ERR(cl_user_parse("nobody:0", &u), CL_EINVAL, "group 0");
    CHECK_ERR(cl_user_parse("no-such-user-here", &u), CL_EINVAL, "no user named");
    CHECK_ERR(cl_user_parse("nobody:no-such-group", &u), CL_EINVAL, "neither a gid");
    CHECK_ERR(cl_user_parse("", &u), CL_EINVAL, "expected NAME");
    CHECK_ERR(cl_user_parse("12x", &u), CL_EINVAL, "not a uid");
}

static void test_drop(void)
{
    if (geteuid() != 0) {
        printf("skip test_drop: not root\n");
        return;
    }
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        cl_user_spec u;
        if (cl_user_parse("4242:4343", &u) < 0 || cl_drop_privileges(&u) < 0)
            _exit(2);
        gid_t groups[4];
        int bad = getuid() != 4242 || geteuid() != 4242 || getgid() != 4343 || getegid() != 4343 ||
                  getgroups(4, groups) != 0 || setuid(0) == 0 || setgroups(0, NULL) == 0 ||
                  prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 0;
        _exit(bad ? 1 : 0);
    }
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    /* a user cannot drop to another user: the failure is named */
    pid = fork();
    if (pid == 0) {
        cl_user_spec a, b;
        if (cl_user_parse("4242:4343", &a) < 0 || cl_drop_privileges(&a) < 0 || cl_user_parse("4444:4444", &b) < 0)
            _exit(2);
        int rc = cl_drop_privileges(&b);
        _exit(rc < 0 && strstr(cl_error_message(), "setgroups") ? 0 : 1);
    }
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

int main(void)
{
    RUN(test_process_hardened);
    RUN(test_private_key_in_secure_heap);
    RUN(test_secret_copy);
    RUN(test_user_parse);
    RUN(test_drop);
    return test_summary();
}

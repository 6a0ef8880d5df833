/* Shamir over GF(2^8): the field against a slow reference, the workshop's
 * share format, splits and combinations, refusals, and the constant-time
 * structure: under valgrind's memcheck with the secret bytes marked
 * undefined (the ctgrind method), any branch on a secret or memory address
 * computed from one is an error.  A canary that indexes a table by a
 * secret checks that the harness does catch one. */
#include "cloister/enclave/shamir.h"
#include "cloister/core/buf.h"
#include "cloister/core/encoding.h"
#include "test.h"

#include <openssl/rand.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <valgrind/memcheck.h>

/* the field by its definition: carry-less multiplication, then reduction */
static uint8_t ref_mul(uint8_t a, uint8_t b)
{
    unsigned p = 0;
    for (int i = 0; i < 8; i++)
        if (b & (1u << i))
            p ^= (unsigned)a << i;
    for (int i = 14; i >= 8; i--)
        if (p & (1u << i))
            p ^= 0x11bu << (i - 8);
    return (uint8_t)p;
}

static void field_matches_reference(void)
{
    int bad = 0;
    for (unsigned a = 0; a < 256; a++)
        for (unsigned b = 0; b < 256; b++)
            bad += cl_gf256_mul((uint8_t)a, (uint8_t)b) != ref_mul((uint8_t)a, (uint8_t)b);
    CHECK(bad == 0);
    CHECK(cl_gf256_inv(0) == 0);
    for (unsigned a = 1; a < 256; a++)
        bad += cl_gf256_mul((uint8_t)a, cl_gf256_inv((uint8_t)a)) != 1;
    CHECK(bad == 0);
    /* Vault's and pyshamir's tables are powers of 0xe5 in this field */
    CHECK(cl_gf256_mul(0xe5, 0xe5) == 0x4c);
    CHECK(cl_gf256_mul(0x4c, 0xe5) == 0xb5);
}

static void split_then_any_two_combine(void)
{
    for (int round = 0; round < 50; round++) {
        uint8_t secret[32];
        CHECK(RAND_bytes(secret, sizeof secret) == 1);
        cl_buf shares[3] = {CL_BUF_INIT, CL_BUF_INIT, CL_BUF_INIT};
        CHECK_OK(cl_shamir_split(secret, sizeof secret, 3, 2, shares));
        cl_shamir_share s[3];
        for (int i = 0; i < 3; i++) {
            CHECK(shares[i].len == 33);
            CHECK_OK(cl_shamir_share_parse(shares[i].data, shares[i].len, 32, &s[i]));
            CHECK(s[i].x != 0);
        }
        CHECK(s[0].x != s[1].x && s[1].x != s[2].x && s[0].x != s[2].x);
        static const int pairs[6][2] = {{0, 1}, {1, 0}, {0, 2}, {2, 0}, {1, 2}, {2, 1}};
        for (int p = 0; p < 6; p++) {
            cl_shamir_share two[2] = {s[pairs[p][0]], s[pairs[p][1]]};
            uint8_t out[32];
            CHECK_OK(cl_shamir_combine(two, 2, out, sizeof out));
            CHECK(memcmp(out, secret, 32) == 0);
        }
        /* all three agree too (degree 1 through three points) */
        uint8_t out[32];
        CHECK_OK(cl_shamir_combine(s, 3, out, sizeof out));
        CHECK(memcmp(out, secret, 32) == 0);
        /* the line through two shares passes through the third */
        uint8_t y2[32];
        CHECK_OK(cl_shamir_interpolate(s, 2, s[2].x, y2, sizeof y2));
        CHECK(memcmp(y2, s[2].y, 32) == 0);
        for (int i = 0; i < 3; i++)
            cl_buf_free(&shares[i]);
    }
}

static void higher_thresholds(void)
{
    uint8_t secret[5] = {0, 1, 2, 0xfe, 0xff};
    cl_buf shares[5] = {CL_BUF_INIT, CL_BUF_INIT, CL_BUF_INIT, CL_BUF_INIT, CL_BUF_INIT};
    CHECK_OK(cl_shamir_split(secret, sizeof secret, 5, 3, shares));
    cl_shamir_share s[5];
    for (int i = 0; i < 5; i++)
        CHECK_OK(cl_shamir_share_parse(shares[i].data, shares[i].len, 0, &s[i]));
    uint8_t out[5];
    cl_shamir_share three[3] = {s[4], s[0], s[2]};
    CHECK_OK(cl_shamir_combine(three, 3, out, sizeof out));
    CHECK(memcmp(out, secret, 5) == 0);
    for (int i = 0; i < 5; i++)
        cl_buf_free(&shares[i]);
}

/* A share made by hand from the format's description: secret byte s,
 * polynomial s + c*x, shares (y, x) with y = s ^ mul(c, x). */
static void workshop_format_by_hand(void)
{
    const uint8_t s = 0x42, c = 0x17;
    uint8_t a[2] = {(uint8_t)(s ^ ref_mul(c, 0x05)), 0x05};
    uint8_t b[2] = {(uint8_t)(s ^ ref_mul(c, 0xc8)), 0xc8};
    cl_shamir_share sh[2];
    CHECK_OK(cl_shamir_share_parse(a, 2, 1, &sh[0]));
    CHECK_OK(cl_shamir_share_parse(b, 2, 1, &sh[1]));
    uint8_t out;
    CHECK_OK(cl_shamir_combine(sh, 2, &out, 1));
    CHECK(out == s);
}

static void refusals(void)
{
    uint8_t share[33] = {0};
    share[32] = 7;
    cl_shamir_share s;
    CHECK_ERR(cl_shamir_share_parse(share, 32, 32, &s), CL_EPARSE, "33 bytes");
    uint8_t longer[34] = {0};
    longer[33] = 1;
    CHECK_ERR(cl_shamir_share_parse(longer, 34, 32, &s), CL_EPARSE, NULL);
    share[32] = 0;
    CHECK_ERR(cl_shamir_share_parse(share, 33, 32, &s), CL_EPARSE, "x coordinate");
    CHECK_ERR(cl_shamir_share_parse(share, 1, 0, &s), CL_EPARSE, NULL);
    CHECK_ERR(cl_shamir_share_parse(share, 0, 0, &s), CL_EPARSE, NULL);
    share[32] = 9;
    cl_shamir_share a, b;
    CHECK_OK(cl_shamir_share_parse(share, 33, 32, &a));
    b = a;
    uint8_t out[32];
    CHECK_ERR(cl_shamir_combine((cl_shamir_share[]){a, b}, 2, out, 32), CL_EVERIFY, "same x coordinate");
    CHECK_ERR(cl_shamir_combine(&a, 1, out, 32), CL_EINVAL, NULL);
    uint8_t other[17] = {0};
    other[16] = 3;
    CHECK_OK(cl_shamir_share_parse(other, 17, 0, &b));
    CHECK_ERR(cl_shamir_combine((cl_shamir_share[]){a, b}, 2, out, 32), CL_EVERIFY, "different lengths");
    cl_buf sh[3] = {CL_BUF_INIT, CL_BUF_INIT, CL_BUF_INIT};
    CHECK_ERR(cl_shamir_split(out, 32, 3, 4, sh), CL_EINVAL, NULL);
    CHECK_ERR(cl_shamir_split(out, 32, 1, 1, sh), CL_EINVAL, NULL);
    CHECK_ERR(cl_shamir_split(out, 0, 3, 2, sh), CL_EINVAL, NULL);
}

/* ---- constant time, under valgrind ------------------------------------- */

static const uint8_t canary_table[256] = {1};

/* Run inside valgrind: the secret and the shares' y values are undefined
 * to memcheck, so a branch on them or an address made from them is an
 * error (exit code 3).  "canary" does exactly that on purpose. */
static int ct_child(const char *mode)
{
    uint8_t secret[32];
    if (RAND_bytes(secret, sizeof secret) != 1)
        return 2;
    VALGRIND_MAKE_MEM_UNDEFINED(secret, sizeof secret);
    if (!strcmp(mode, "canary")) {
        volatile uint8_t v = canary_table[secret[0]];
        (void)v;
        return 0;
    }
    cl_buf shares[3] = {CL_BUF_INIT, CL_BUF_INIT, CL_BUF_INIT};
    if (cl_shamir_split(secret, sizeof secret, 3, 2, shares) < 0)
        return 2;
    cl_shamir_share s[2];
    for (int i = 0; i < 2; i++) {
        VALGRIND_MAKE_MEM_DEFINED(shares[i].data + 32, 1); /* the x coordinates are public */
        if (cl_shamir_share_parse(shares[i].data, shares[i].len, 32, &s[i]) < 0)
            return 2;
        VALGRIND_MAKE_MEM_UNDEFINED(shares[i].data, 32);
    }
    uint8_t out[32];
    if (cl_shamir_combine(s, 2, out, sizeof out) < 0)
        return 2;
    uint8_t inv = 0;
    for (int i = 0; i < 32; i++)
        inv ^= cl_gf256_inv(out[i]);
    /* only now are results looked at */
    VALGRIND_MAKE_MEM_DEFINED(out, sizeof out);
    VALGRIND_MAKE_MEM_DEFINED(secret, sizeof secret);
    VALGRIND_MAKE_MEM_DEFINED(&inv, 1);
    int same = memcmp(out, secret, sizeof out) == 0;
    for (int i = 0; i < 3; i++)
        cl_buf_free(&shares[i]);
    return same ? 0 : 2;
}

static int run_under_valgrind(const char *mode)
{
    /* the path, not /proc/self/exe: valgrind would read its own */
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return -1;
    self[n] = '\0';
    /* valgrind 3.19 cannot read clang 14's DWARF 5: a copy without it */
    char plain[64], cmd[4300];
    snprintf(plain, sizeof plain, "/tmp/cl-shamir-ct.%d", (int)getpid());
    snprintf(cmd, sizeof cmd, "objcopy --strip-debug '%s' '%s'", self, plain);
    if (system(cmd) != 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        setenv("CL_SHAMIR_CT", mode, 1);
        if (!strcmp(mode, "canary")) { /* its report is expected: not shown */
            int devnull = open("/dev/null", O_WRONLY);
            if (devnull >= 0)
                dup2(devnull, 2);
        }
        execlp("valgrind", "valgrind", "-q", "--error-exitcode=3", "--track-origins=no", plain,
               (char *)NULL);
        _exit(127);
    }
    int status = 0;
    pid_t got = waitpid(pid, &status, 0);
    unlink(plain);
    if (got < 0 || !WIFEXITED(status))
        return -1;
    return WEXITSTATUS(status);
}

static void constant_time_under_valgrind(void)
{
    if (getenv("CLOISTER_TEST_SANITIZED")) {
        printf("     (constant-time check runs in the plain build: valgrind and ASan do not mix)\n");
        return;
    }
    if (system("valgrind --version >/dev/null 2>&1") != 0) {
        fprintf(stderr, "valgrind is missing (scripts/deps.sh installs it): the constant-time check cannot run\n");
        CHECK(0);
        return;
    }
    int canary = run_under_valgrind("canary");
    CHECK(canary == 3); /* the harness sees a secret-indexed load */
    int real = run_under_valgrind("shamir");
    CHECK(real == 0);
    if (real != 0)
        fprintf(stderr, "valgrind found secret-dependent branches or addresses in shamir.c (exit %d)\n", real);
}

int main(void)
{
    const char *ct = getenv("CL_SHAMIR_CT");
    if (ct)
        return ct_child(ct);
    RUN(field_matches_reference);
    RUN(split_then_any_two_combine);
    RUN(higher_thresholds);
    RUN(workshop_format_by_hand);
    RUN(refusals);
    RUN(constant_time_under_valgrind);
    return test_summary();
}

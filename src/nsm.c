/* cloister nsm: one NSM request from the command line. */
#include "cloister/core/encoding.h"
#include "cloister/enclave/nsm.h"
#include "commands.h"

#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RANDOM_MAX 4096
#define NSM_PCR_INDEX_MAX 65535

static void usage(FILE *out)
{
    fprintf(out,
            "usage: cloister nsm [--nsm ADDR] COMMAND\n"
            "\n"
            "  describe          DescribeNSM, printed as one JSON object: version, module_id,\n"
            "                    max_pcrs, locked_pcrs, digest\n"
            "  pcr N             DescribePCR: prints \"HEX locked\" or \"HEX unlocked\"\n"
            "  extend N HEX      ExtendPCR with the bytes of HEX; prints the new value in hex\n"
            "  lock N            LockPCR: PCR N refuses ExtendPCR from now on\n"
            "  lock-range N      LockPCRs: locks PCR0 .. PCR(N-1)\n"
            "  random N          N random bytes (1..%d) from GetRandom, printed in hex\n"
            "\n"
            "ADDR is unix:PATH (the simulator, see 'cloister nsm-sim') or a device path; the\n"
            "default is $" CL_NSM_ENV ", else " CL_NSM_DEFAULT_DEVICE ".\n"
            "Exit status: 0 done, 2 bad command line, 3 the NSM refused (\"NSM error NAME\") or\n"
            "could not be reached.\n",
            RANDOM_MAX);
}

static int fail(const char *what)
{
    fprintf(stderr, "cloister nsm: %s: %s\n", what, cl_error_message());
    return EXIT_FAILED;
}

static void print_hex(const uint8_t *data, size_t len, const char *suffix)
{
    char *hex = malloc(2 * len + 1);
    if (!hex) {
        fprintf(stderr, "cloister nsm: out of memory\n");
        return;
    }
    cl_hex_encode(data, len, hex);
    printf("%s%s\n", hex, suffix);
    free(hex);
}

static int describe(cl_nsm *nsm)
{
    cl_nsm_description d;
    if (cl_nsm_describe(nsm, &d) < 0)
        return fail("describe");
    json_t *locked = json_array();
    for (unsigned i = 0; i < 32; i++)
        if (d.locked_pcrs & (1u << i))
            json_array_append_new(locked, json_integer(i));
    char version[32];
    snprintf(version, sizeof version, "%u.%u.%u", d.version_major, d.version_minor, d.version_patch);
    json_t *obj = json_pack("{s:s, s:s, s:i, s:o, s:s}", "version", version, "module_id", d.module_id,
                            "max_pcrs", (int)d.max_pcrs, "locked_pcrs", locked, "digest", d.digest);
    char *text = obj ? json_dumps(obj, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    json_decref(obj);
    if (!text) {
        fprintf(stderr, "cloister nsm: describe: cannot format the answer\n");
        return EXIT_FAILED;
    }
    printf("%s\n", text);
    free(text);
    return 0;
}

static int parse_number(const char *text, uint64_t max, const char *what, uint64_t *out)
{
    if (cl_parse_u64(text, max, out) < 0) {
        fprintf(stderr, "cloister nsm: %s: %s\n", what, cl_error_message());
        return EXIT_USAGE;
    }
    return 0;
}

static int run(cl_nsm *nsm, int argc, char **argv)
{
    const char *cmd = argv[0];
    char what[64];
    uint64_t n = 0;
    if (!strcmp(cmd, "describe") && argc == 1)
        return describe(nsm);
    if (argc < 2)
        goto bad;
    snprintf(what, sizeof what, "%s %.20s", cmd, argv[1]);
    if (!strcmp(cmd, "pcr") && argc == 2) {
        if (parse_number(argv[1], NSM_PCR_INDEX_MAX, "pcr", &n))
            return EXIT_USAGE;
        bool locked = false;
        cl_buf value = CL_BUF_INIT;
        int status = 0;
        if (cl_nsm_describe_pcr(nsm, (uint16_t)n, &locked, &value) < 0)
            status = fail(what);
        else
            print_hex(value.data, value.len, locked ? " locked" : " unlocked");
        cl_buf_free(&value);
        return status;
    }
    if (!strcmp(cmd, "extend") && argc == 3) {
        if (parse_number(argv[1], NSM_PCR_INDEX_MAX, "extend", &n))
            return EXIT_USAGE;
        cl_buf data = CL_BUF_INIT, value = CL_BUF_INIT;
        int status = 0;
        if (cl_hex_decode(argv[2], &data) < 0) {
            fprintf(stderr, "cloister nsm: %s: data: %s\n", what, cl_error_message());
            status = EXIT_USAGE;
        } else if (cl_nsm_extend_pcr(nsm, (uint16_t)n, data.data, data.len, &value) < 0) {
            status = fail(what);
        } else {
            print_hex(value.data, value.len, "");
        }
        cl_buf_free(&data);
        cl_buf_free(&value);
        return status;
    }
    if (!strcmp(cmd, "lock") && argc == 2) {
        if (parse_number(argv[1], NSM_PCR_INDEX_MAX, "lock", &n))
            return EXIT_USAGE;
        return cl_nsm_lock_pcr(nsm, (uint16_t)n) < 0 ? fail(what) : 0;
    }
    if (!strcmp(cmd, "lock-range") && argc == 2) {
        if (parse_number(argv[1], NSM_PCR_INDEX_MAX, "lock-range", &n))
            return EXIT_USAGE;
        return cl_nsm_lock_pcrs(nsm, (uint16_t)n) < 0 ? fail(what) : 0;
    }
    if (!strcmp(cmd, "random") && argc == 2) {
        if (parse_number(argv[1], RANDOM_MAX, "random", &n))
            return EXIT_USAGE;
        if (n == 0) {
            fprintf(stderr, "cloister nsm: random: N must be 1..%d\n", RANDOM_MAX);
            return EXIT_USAGE;
        }
        uint8_t bytes[RANDOM_MAX];
        if (cl_nsm_get_random(nsm, bytes, (size_t)n) < 0)
            return fail(what);
        print_hex(bytes, (size_t)n, "");
        cl_wipe(bytes, sizeof bytes);
        return 0;
    }
bad:
    fprintf(stderr, "cloister nsm: unknown command or wrong arguments: %s\n", cmd);
    usage(stderr);
    return EXIT_USAGE;
}

/* Commands that need no NSM are checked before connecting. */
static bool known_command(const char *cmd)
{
    static const char *const names[] = {"describe", "pcr", "extend", "lock", "lock-range", "random"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(cmd, names[i]))
            return true;
    return false;
}

int cmd_nsm(int argc, char **argv)
{
    static const struct option options[] = {
        {"nsm", required_argument, NULL, 'n'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *addr = NULL;
    int opt;
    optind = 1;
    opterr = 0;
    /* '+': options end at the command, so "extend 16 -" style data is not an option. */
    while ((opt = getopt_long(argc, argv, "+h", options, NULL)) != -1) {
        switch (opt) {
        case 'n': addr = optarg; break;
        case 'h': usage(stdout); return 0;
        default:
            fprintf(stderr, "cloister nsm: unknown option or missing value: %s\n", argv[optind - 1]);
            usage(stderr);
            return EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return EXIT_USAGE;
    }
    if (!known_command(argv[optind])) {
        fprintf(stderr, "cloister nsm: unknown command '%s'\n", argv[optind]);
        usage(stderr);
        return EXIT_USAGE;
    }
    cl_nsm *nsm = NULL;
    if (cl_nsm_open(addr, &nsm) < 0) {
        fprintf(stderr, "cloister nsm: %s\n", cl_error_message());
        return EXIT_FAILED;
    }
    int status = run(nsm, argc - optind, argv + optind);
    cl_nsm_close(nsm);
    return status;
}

/* cloister nsm: one NSM request from the command line. */
#include "cloister/core/encoding.h"
#include "cloister/enclave/nsm.h"
#include "cloister/core/options.h"
#include "commands.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RANDOM_MAX 4096
#define NSM_PCR_INDEX_MAX 65535

#define STR_(x) #x
#define STR(x) STR_(x)

typedef struct settings {
    char *nsm;
} settings;

static const cl_opt options[] = {
    {.name = "nsm", CL_OPT_STR(settings, nsm), .arg = "ADDR",
     .help = "unix:PATH (the simulator, see 'cloister nsm-sim') or a device path ($" CL_NSM_ENV
             ", else " CL_NSM_DEFAULT_DEVICE ")"},
};

static const char usage_text[] =
    "usage: cloister nsm [--nsm ADDR] COMMAND\n"
    "\n"
    "  describe          DescribeNSM, printed as one JSON object: version, module_id,\n"
    "                    max_pcrs, locked_pcrs, digest\n"
    "  pcr N             DescribePCR: prints \"HEX locked\" or \"HEX unlocked\"\n"
    "  extend N HEX      ExtendPCR with the bytes of HEX; prints the new value in hex\n"
    "  lock N            LockPCR: PCR N refuses ExtendPCR from now on\n"
    "  lock-range N      LockPCRs: locks PCR0 .. PCR(N-1)\n"
    "  random N          N random bytes (1.." STR(RANDOM_MAX) ") from GetRandom, printed in hex\n"
    "\n";

static const char epilog[] = "Exit status: 0 done, 2 bad command line, 3 the NSM refused (\"NSM error NAME\") or\n"
                             "could not be reached.\n";

static void usage(const cl_options *spec, FILE *out)
{
    char *text = cl_options_help(spec);
    if (text)
        fputs(text, out);
    free(text);
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

static int run(const cl_options *spec, cl_nsm *nsm, int argc, char **argv)
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
    usage(spec, stderr);
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
    settings s = {0};
    cl_opt_section sections[] = {CL_OPT_SECTION("options", options, &s)};
    /* options end at the command, so "extend 16 -" style data is not an option */
    cl_options spec = {.prog = "cloister nsm",
                       .usage = usage_text,
                       .epilog = epilog,
                       .positional = "COMMAND",
                       .flags = CL_OPTIONS_STOP_AT_POSITIONAL,
                       .sections = sections,
                       .section_count = 1};
    cl_options_result r;
    int status = cl_options_main(&spec, argc, argv, &r);
    if (status != 0) {
        status = status > 0 ? 0 : EXIT_USAGE;
        goto out;
    }
    status = EXIT_USAGE;
    if (r.positional_count == 0) {
        usage(&spec, stderr);
        goto out;
    }
    if (!known_command(r.positional[0])) {
        fprintf(stderr, "cloister nsm: unknown command '%s'\n", r.positional[0]);
        usage(&spec, stderr);
        goto out;
    }
    cl_nsm *nsm = NULL;
    if (cl_nsm_open(s.nsm, &nsm) < 0) {
        fprintf(stderr, "cloister nsm: %s\n", cl_error_message());
        status = EXIT_FAILED;
        goto out;
    }
    status = run(&spec, nsm, (int)r.positional_count, r.positional);
    cl_nsm_close(nsm);
out:
    cl_options_free(&spec, &r);
    return status;
}

/* The options layer: every type, bounds, repetition, `--`, `=`, missing
 * values, unknown options, --config JSON and its type errors, --help. */
#include "cloister/core/options.h"
#include "test.h"

#include <fcntl.h>
#include <stdarg.h>
#include <unistd.h>

static char tmpdir[] = "/tmp/cloister-options-XXXXXX";

typedef struct settings {
    char *name, *path, *config;
    bool debug, quiet;
    unsigned port;
    uint64_t memory_mib;
    unsigned char level;
    unsigned timeout_s;
    uint64_t grace_ms;
    uint64_t max_bytes;
    cl_opt_list forward;
    unsigned pcr_mask;
    int calls;
} settings;

static int set_pcr(void *base, const char *value)
{
    settings *s = base;
    CL_ENSURE(value[0] >= '0' && value[0] <= '9' && !value[1], CL_EINVAL, "'%s' is not a PCR index 0..9", value);
    unsigned bit = 1u << (value[0] - '0');
    CL_ENSURE(!(s->pcr_mask & bit), CL_EINVAL, "PCR%c given twice", value[0]);
    s->pcr_mask |= bit;
    s->calls++;
    return CL_OK;
}

static int no_dash(void *base, const char *value)
{
    (void)base;
    CL_ENSURE(value[0] != '-', CL_EINVAL, "'%s' is not a name", value);
    return CL_OK;
}

static const cl_opt table[] = {
    {.name = "name", .short_name = 'n', CL_OPT_STR(settings, name), .set = no_dash, .arg = "NAME",
     .help = "a name that does not start with a dash"},
    {.name = "path", CL_OPT_STR(settings, path), .flags = CL_OPT_NONEMPTY, .def = "/run/x", .arg = "PATH",
     .help = "where it lives"},
    {.name = "debug", CL_OPT_FLAG(settings, debug), .help = "log more"},
    {.name = "quiet", .short_name = 'q', CL_OPT_FLAG(settings, quiet), .def = "true", .help = "log less"},
    {.name = "port", .short_name = 'p', CL_OPT_UINT_AT(settings, port, 1, 65535), .def = "443", .arg = "PORT",
     .help = "the port"},
    {.name = "memory", CL_OPT_SIZE_AT(settings, memory_mib, 1 << 20, 1, 1 << 20), .arg = "MIB",
     .help = "memory in MiB (or 2G, 512M)"},
    {.name = "level", CL_OPT_UINT_AT(settings, level, 0, 9), .arg = "N", .help = NULL},
    {.name = "timeout", CL_OPT_DURATION_AT(settings, timeout_s, 1000, 1, 86400), .def = "10", .arg = "DURATION",
     .help = "time allowed"},
    {.name = "grace", CL_OPT_DURATION_AT(settings, grace_ms, 1, 10, 7ull * 86400 * 1000), .def = "1500ms",
     .arg = "DURATION", .help = "before SIGKILL"},
    {.name = "max-bytes", CL_OPT_SIZE_AT(settings, max_bytes, 1, 1024, 1 << 20), .def = "16K", .arg = "BYTES",
     .help = "largest head"},
    {.name = "forward", CL_OPT_LIST_AT(settings, forward, 3), .flags = CL_OPT_NONEMPTY, .arg = "A=B",
     .help = "a forward (repeatable, at most 3)"},
    {.name = "pcr", CL_OPT_CALLBACK(set_pcr), .flags = CL_OPT_REPEAT, .arg = "N", .help = "a PCR (repeatable)"},
    {.name = "config", CL_OPT_CONFIG_AT(settings, config), .arg = "FILE", .help = "JSON settings"},
};

static settings s;
static cl_opt_section sections[] = {CL_OPT_SECTION("options", table, &s)};
static cl_options spec = {
    .prog = "cloister test",
    .usage = "usage: cloister test [OPTIONS] FILE...\n\n",
    .epilog = "The end.\n",
    .positional = "FILE...",
    .sections = sections,
    .section_count = 1,
};
static cl_options_result res;
static cl_options last_spec; /* what res and s were parsed with, to free them */

static void release(void)
{
    cl_options_free(&last_spec, &res);
    last_spec.section_count = 0;
    memset(&s, 0, sizeof s);
}

/* Parses a NULL-terminated list of arguments after "cloister-test". */
static int parse(cl_options *sp, ...)
{
    char *argv[32] = {"cloister-test"};
    int argc = 1;
    va_list ap;
    va_start(ap, sp);
    for (char *a; (a = va_arg(ap, char *)) != NULL && argc < 31;)
        argv[argc++] = a;
    va_end(ap);
    release();
    last_spec = *sp;
    return cl_options_parse(sp, argc, argv, &res);
}

static const char *write_file(const char *name, const char *content)
{
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    if (!f)
        return path;
    fputs(content, f);
    fclose(f);
    return path;
}

static void applies_defaults(void)
{
    CHECK_OK(parse(&spec, NULL));
    CHECK(!res.help && res.positional_count == 0);
    CHECK(s.path && !strcmp(s.path, "/run/x"));
    CHECK(s.name == NULL && !s.debug && s.quiet);
    CHECK(s.port == 443 && s.timeout_s == 10 && s.grace_ms == 1500 && s.max_bytes == 16384);
    CHECK(s.memory_mib == 0 && s.forward.count == 0 && s.calls == 0);
}

static void every_spelling(void)
{
    CHECK_OK(parse(&spec, "--name", "a", "--port=8080", "-p", "81", "--debug", "--quiet=false", NULL));
    CHECK(!strcmp(s.name, "a") && s.port == 81 && s.debug && !s.quiet);
    CHECK_OK(parse(&spec, "-nb", "-p8443", "--debug=0", "-q", NULL));
    CHECK(!strcmp(s.name, "b") && s.port == 8443 && !s.debug && s.quiet);
    /* the last one wins; values may start with a dash when the option takes one */
    CHECK_OK(parse(&spec, "--path", "/a", "--path=/b", "--name=", NULL));
    CHECK(!strcmp(s.path, "/b") && !strcmp(s.name, ""));
    CHECK_OK(parse(&spec, "--path", "-x", NULL));
    CHECK(!strcmp(s.path, "-x"));
    /* '=' in a value is kept */
    CHECK_OK(parse(&spec, "--forward=a=b", "--forward", "c=d=e", NULL));
    CHECK(s.forward.count == 2 && !strcmp(s.forward.items[0], "a=b") && !strcmp(s.forward.items[1], "c=d=e"));
}

static void positional_and_double_dash(void)
{
    CHECK_OK(parse(&spec, "f1", "--debug", "-", "--", "--port", "-q", NULL));
    CHECK(res.positional_count == 4 && s.debug && s.port == 443);
    CHECK(!strcmp(res.positional[0], "f1") && !strcmp(res.positional[1], "-") &&
          !strcmp(res.positional[2], "--port") && !strcmp(res.positional[3], "-q"));
    /* options stop at the first positional argument when asked */
    cl_options stop = spec;
    stop.flags = CL_OPTIONS_STOP_AT_POSITIONAL;
    CHECK_OK(parse(&stop, "--debug", "extend", "16", "--port", NULL));
    CHECK(s.debug && s.port == 443 && res.positional_count == 3 && !strcmp(res.positional[2], "--port"));
    cl_options none = spec;
    none.positional = NULL;
    CHECK_ERR(parse(&none, "--debug", "stray", NULL), CL_EINVAL, "unexpected argument 'stray' (see --help)");
    CHECK_ERR(parse(&none, "--", "--debug", NULL), CL_EINVAL, "unexpected argument '--debug'");
    cl_options two = spec;
    two.max_positional = 2;
    CHECK_OK(parse(&two, "a", "b", NULL));
    CHECK_ERR(parse(&two, "a", "b", "c", NULL), CL_EINVAL, "too many arguments: 'c'");
}

static void unknown_and_missing(void)
{
    CHECK_ERR(parse(&spec, "--bogus", NULL), CL_EINVAL, "unknown option '--bogus' (see --help)");
    CHECK_ERR(parse(&spec, "--bogus=1", NULL), CL_EINVAL, "unknown option '--bogus=1'");
    CHECK_ERR(parse(&spec, "-x", NULL), CL_EINVAL, "unknown option '-x'");
    /* no clusters of short flags, and long names need two dashes */
    CHECK_ERR(parse(&spec, "-qq", NULL), CL_EINVAL, "unknown option '-qq'");
    CHECK_ERR(parse(&spec, "-debug", NULL), CL_EINVAL, "unknown option '-debug'");
    /* as getopt: a short option's value may follow it directly */
    CHECK_ERR(parse(&spec, "-port", NULL), CL_EINVAL, "--port: 'ort' is not a decimal number");
    /* no abbreviations */
    CHECK_ERR(parse(&spec, "--deb", NULL), CL_EINVAL, "unknown option '--deb'");
    CHECK_ERR(parse(&spec, "--port", NULL), CL_EINVAL, "--port needs a value (PORT)");
    CHECK_ERR(parse(&spec, "--debug", "-n", NULL), CL_EINVAL, "--name needs a value (NAME)");
    /* the first problem is reported, and nothing after --help is looked at */
    CHECK_ERR(parse(&spec, "--bogus", "--help", NULL), CL_EINVAL, "'--bogus'");
    CHECK_OK(parse(&spec, "--port", "x", "--help", "--bogus", NULL));
    CHECK(res.help);
    CHECK(s.path == NULL && s.port == 0); /* nothing applied, not even defaults */
    CHECK_OK(parse(&spec, "-h", NULL));
    CHECK(res.help);
    /* --help as a value, or after --, is not a request for help */
    CHECK_OK(parse(&spec, "--path", "--help", NULL));
    CHECK(!res.help && !strcmp(s.path, "--help"));
    CHECK_OK(parse(&spec, "--", "--help", NULL));
    CHECK(!res.help && res.positional_count == 1);
    /* the shape of the command line or a value: told apart */
    CHECK_ERR(parse(&spec, "--bogus", NULL), CL_EINVAL, NULL);
    CHECK(!res.bad_value);
    CHECK_ERR(parse(&spec, "--port", NULL), CL_EINVAL, NULL);
    CHECK(!res.bad_value);
    CHECK_ERR(parse(&spec, "--port", "x", NULL), CL_EINVAL, NULL);
    CHECK(res.bad_value);
}

static void strings_and_checks(void)
{
    CHECK_ERR(parse(&spec, "--path", "", NULL), CL_EINVAL, "--path: expected a value, got an empty string");
    CHECK_ERR(parse(&spec, "--name", "-a", NULL), CL_EINVAL, "--name: '-a' is not a name");
    CHECK_ERR(parse(&spec, "--forward", "", NULL), CL_EINVAL, "--forward: expected a value");
}

static void booleans(void)
{
    CHECK_OK(parse(&spec, "--debug=true", "--quiet=0", NULL));
    CHECK(s.debug && !s.quiet);
    CHECK_ERR(parse(&spec, "--debug=yes", NULL), CL_EINVAL, "--debug: expected true or false, got 'yes'");
    CHECK_ERR(parse(&spec, "--debug=", NULL), CL_EINVAL, "--debug: expected true or false");
    /* a boolean never takes the next argument */
    CHECK_OK(parse(&spec, "--debug", "false", NULL));
    CHECK(s.debug && res.positional_count == 1);
}

static void integers_and_bounds(void)
{
    CHECK_OK(parse(&spec, "--port", "1", "--level", "9", NULL));
    CHECK(s.port == 1 && s.level == 9);
    CHECK_OK(parse(&spec, "--port", "65535", NULL));
    CHECK(s.port == 65535);
    CHECK_ERR(parse(&spec, "--port", "0", NULL), CL_EINVAL, "--port: '0' is below the minimum 1");
    CHECK_ERR(parse(&spec, "--port", "65536", NULL), CL_EINVAL, "--port: '65536' exceeds the maximum 65535");
    CHECK_ERR(parse(&spec, "--port", "-1", NULL), CL_EINVAL, "--port: '-1' is not a decimal number");
    CHECK_ERR(parse(&spec, "--port", "8O", NULL), CL_EINVAL, "is not a decimal number");
    CHECK_ERR(parse(&spec, "--port", "", NULL), CL_EINVAL, "--port: expected a number");
    CHECK_ERR(parse(&spec, "--port", " 1", NULL), CL_EINVAL, NULL);
    CHECK_ERR(parse(&spec, "--level", "10", NULL), CL_EINVAL, "--level: '10' exceeds the maximum 9");
    CHECK_ERR(parse(&spec, "--port", "99999999999999999999999", NULL), CL_EINVAL, "exceeds the maximum");
}

static void durations(void)
{
    uint64_t ms;
    CHECK_OK(cl_parse_duration("250ms", 1000000, &ms));
    CHECK(ms == 250);
    CHECK_OK(cl_parse_duration("5", 1000000, &ms));
    CHECK(ms == 5000);
    CHECK_OK(cl_parse_duration("2m", 1000000, &ms));
    CHECK(ms == 120000);
    CHECK_OK(cl_parse_duration("1h", 3600000, &ms));
    CHECK(ms == 3600000);
    CHECK_OK(cl_parse_duration("0", 0, &ms));
    CHECK(ms == 0);
    const char *bad[] = {"", "s", "5x", "5 s", "-5s", "5S", "1.5s", "5sec", "1d", "9999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_ERR(cl_parse_duration(bad[i], UINT64_MAX, &ms), CL_EINVAL, NULL);
    CHECK_ERR(cl_parse_duration("2h", 3600000, &ms), CL_EINVAL, "exceeds the maximum of 3600000 ms");
    CHECK_ERR(cl_parse_duration("5d", 1000, &ms), CL_EINVAL, "unknown unit 'd'");

    /* stored in whole seconds */
    CHECK_OK(parse(&spec, "--timeout", "2m", NULL));
    CHECK(s.timeout_s == 120);
    CHECK_OK(parse(&spec, "--timeout=3000ms", NULL));
    CHECK(s.timeout_s == 3);
    CHECK_OK(parse(&spec, "--timeout", "24h", NULL));
    CHECK(s.timeout_s == 86400);
    CHECK_ERR(parse(&spec, "--timeout", "1500ms", NULL), CL_EINVAL, "--timeout: '1500ms' is not a whole number of seconds");
    CHECK_ERR(parse(&spec, "--timeout", "0", NULL), CL_EINVAL, "--timeout: '0' is below the minimum of 1s");
    CHECK_ERR(parse(&spec, "--timeout", "25h", NULL), CL_EINVAL, "--timeout: '25h' exceeds the maximum");
    /* stored in milliseconds */
    CHECK_OK(parse(&spec, "--grace", "10ms", NULL));
    CHECK(s.grace_ms == 10);
    CHECK_ERR(parse(&spec, "--grace", "9ms", NULL), CL_EINVAL, "--grace: '9ms' is below the minimum of 10ms");
    CHECK_ERR(parse(&spec, "--grace", "8d", NULL), CL_EINVAL, "unknown unit");
}

static void sizes(void)
{
    uint64_t v;
    CHECK_OK(cl_parse_size("4096", 1, UINT64_MAX, &v));
    CHECK(v == 4096);
    CHECK_OK(cl_parse_size("64K", 1, UINT64_MAX, &v));
    CHECK(v == 65536);
    CHECK_OK(cl_parse_size("64KiB", 1, UINT64_MAX, &v));
    CHECK(v == 65536);
    CHECK_OK(cl_parse_size("16MiB", 1, UINT64_MAX, &v));
    CHECK(v == 16u << 20);
    CHECK_OK(cl_parse_size("2G", 1, UINT64_MAX, &v));
    CHECK(v == 2ull << 30);
    CHECK_OK(cl_parse_size("7B", 1 << 20, UINT64_MAX, &v));
    CHECK(v == 7);
    CHECK_OK(cl_parse_size("3", 1 << 20, UINT64_MAX, &v)); /* a bare number is one unit */
    CHECK(v == 3u << 20);
    const char *bad[] = {"", "K", "1k", "1KB", "1 K", "-1", "1.5M", "1T", "0x10", "9999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_ERR(cl_parse_size(bad[i], 1, UINT64_MAX, &v), CL_EINVAL, NULL);
    CHECK_ERR(cl_parse_size("2K", 1, 2047, &v), CL_EINVAL, "exceeds the maximum of 2047 bytes");
    CHECK_ERR(cl_parse_size("999999999999999G", 1, UINT64_MAX, &v), CL_EINVAL, "exceeds the maximum");

    CHECK_OK(parse(&spec, "--max-bytes", "1K", "--memory", "2G", NULL));
    CHECK(s.max_bytes == 1024 && s.memory_mib == 2048);
    CHECK_OK(parse(&spec, "--memory", "512", NULL));
    CHECK(s.memory_mib == 512);
    CHECK_OK(parse(&spec, "--max-bytes", "1MiB", NULL));
    CHECK(s.max_bytes == 1 << 20);
    CHECK_ERR(parse(&spec, "--max-bytes", "1023", NULL), CL_EINVAL, "--max-bytes: '1023' is below the minimum of 1024 bytes");
    CHECK_ERR(parse(&spec, "--max-bytes", "2M", NULL), CL_EINVAL, "--max-bytes: '2M' exceeds the maximum");
    CHECK_ERR(parse(&spec, "--memory", "1000K", NULL), CL_EINVAL, "not a whole number of 1048576-byte units");
}

static void repeated_options(void)
{
    CHECK_OK(parse(&spec, "--forward", "a", "--forward", "b", "--forward", "c", NULL));
    CHECK(s.forward.count == 3 && !strcmp(s.forward.items[2], "c"));
    CHECK_ERR(parse(&spec, "--forward", "a", "--forward", "b", "--forward", "c", "--forward", "d", NULL), CL_ELIMIT,
              "--forward: at most 3");
    CHECK_OK(parse(&spec, "--pcr", "1", "--pcr=2", NULL));
    CHECK(s.pcr_mask == 6 && s.calls == 2);
    CHECK_ERR(parse(&spec, "--pcr", "1", "--pcr", "1", NULL), CL_EINVAL, "--pcr: PCR1 given twice");
    CHECK_ERR(parse(&spec, "--pcr", "x", NULL), CL_EINVAL, "--pcr: 'x' is not a PCR index");
}

static void required_options(void)
{
    static const cl_opt req[] = {
        {.name = "listen", CL_OPT_STR(settings, name), .flags = CL_OPT_REQUIRED, .arg = "ADDR", .help = "where"},
        {.name = "config", CL_OPT_CONFIG_AT(settings, config), .arg = "FILE", .help = "JSON"},
    };
    cl_opt_section sec[] = {CL_OPT_SECTION(NULL, req, &s)};
    cl_options r = {.prog = "cloister req", .sections = sec, .section_count = 1};
    CHECK_ERR(parse(&r, NULL), CL_EINVAL, "--listen ADDR is required (see --help)");
    CHECK_OK(parse(&r, "--listen", "x", NULL));
    const char *path = write_file("req.json", "{\"listen\": \"y\"}");
    CHECK_OK(parse(&r, "--config", path, NULL));
    CHECK(!strcmp(s.name, "y"));
    CHECK_OK(parse(&r, "--help", NULL)); /* help needs nothing */
    release();
}

static void single_dash(void)
{
    cl_options nitriding = spec;
    cl_opt_section sec[] = {{"options", table, 4, &s}}; /* -n and -q are short names */
    nitriding.sections = sec;
    nitriding.flags = CL_OPTIONS_SINGLE_DASH;
    CHECK_ERR(cl_options_check_spec(&nitriding), CL_EINVAL, NULL); /* -q has a short name */
    static const cl_opt nt[] = {
        {.name = "fqdn", CL_OPT_STR(settings, name), .arg = "NAME", .help = "the name"},
        {.name = "ext-pub-port", CL_OPT_UINT_AT(settings, port, 0, 65535), .def = "443", .arg = "PORT",
         .help = "public port"},
        {.name = "debug", CL_OPT_FLAG(settings, debug), .help = "log more"},
        {.name = "config", CL_OPT_CONFIG_AT(settings, config), .arg = "FILE", .help = "JSON"},
    };
    cl_opt_section nsec[] = {CL_OPT_SECTION("options", nt, &s)};
    nitriding.sections = nsec;
    CHECK_OK(parse(&nitriding, "-fqdn", "a.example", "--ext-pub-port=8443", "-debug", NULL));
    CHECK(!strcmp(s.name, "a.example") && s.port == 8443 && s.debug);
    CHECK_OK(parse(&nitriding, "-fqdn=b", "-debug=false", "-ext-pub-port", "1", NULL));
    CHECK(!strcmp(s.name, "b") && s.port == 1 && !s.debug);
    CHECK_ERR(parse(&nitriding, "-bogus", NULL), CL_EINVAL, "unknown option '-bogus' (see --help)");
    CHECK_ERR(parse(&nitriding, "-fqdn", NULL), CL_EINVAL, "-fqdn needs a value (NAME)");
    CHECK_ERR(parse(&nitriding, "-ext-pub-port", "x", NULL), CL_EINVAL, "-ext-pub-port: 'x' is not a decimal number");
    CHECK_OK(parse(&nitriding, "-help", NULL));
    CHECK(res.help);
    char *help = cl_options_help(&nitriding);
    CHECK(help && strstr(help, "\n  -fqdn NAME          the name\n"));
    CHECK(help && strstr(help, "  -h, -help           this text\n"));
    free(help);
    release();
}

static void config_files(void)
{
    const char *path = write_file("ok.json", "{\"name\": \"file\", \"port\": 8000, \"debug\": true,"
                                             " \"timeout\": \"2m\", \"grace\": 2, \"max-bytes\": 2048,"
                                             " \"memory\": \"1G\", \"forward\": [\"a\", \"b\"], \"pcr\": [\"3\"],"
                                             " \"quiet\": false}");
    CHECK_OK(parse(&spec, "--config", path, NULL));
    CHECK(!strcmp(s.name, "file") && s.port == 8000 && s.debug && !s.quiet);
    CHECK(s.timeout_s == 120 && s.grace_ms == 2000 && s.max_bytes == 2048 && s.memory_mib == 1024);
    CHECK(s.forward.count == 2 && s.pcr_mask == 8);
    CHECK(s.config && !strcmp(s.config, path));
    /* flags override the file and add to its lists, wherever they stand */
    CHECK_OK(parse(&spec, "--port", "9", "--forward", "c", "--config", path, "--debug=false", NULL));
    CHECK(s.port == 9 && !s.debug && s.forward.count == 3 && !strcmp(s.forward.items[2], "c"));
    CHECK(!strcmp(s.path, "/run/x")); /* defaults stay where the file is silent */
    /* a single string for a list */
    path = write_file("one.json", "{\"forward\": \"x=y\", \"pcr\": \"4\"}");
    CHECK_ERR(parse(&spec, "--config=", NULL), CL_EINVAL, "--config : line"); /* an empty path fails */
    CHECK_OK(parse(&spec, "--config", path, NULL));
    CHECK(s.forward.count == 1 && !strcmp(s.forward.items[0], "x=y") && s.pcr_mask == 16);
}

#define CONFIG_ERR(json, fragment)                                                \
    do {                                                                          \
        const char *p_ = write_file("bad.json", (json));                          \
        CHECK_ERR(parse(&spec, "--config", p_, NULL), CL_EINVAL, (fragment));     \
    } while (0)

static void config_type_errors(void)
{
    CONFIG_ERR("{\"name\": 5}", "bad.json: \"name\" must be a string");
    CONFIG_ERR("{\"debug\": \"true\"}", "\"debug\" must be true or false");
    CONFIG_ERR("{\"debug\": 1}", "\"debug\" must be true or false");
    CONFIG_ERR("{\"port\": \"80\"}", "\"port\" must be a non-negative integer");
    CONFIG_ERR("{\"port\": -1}", "\"port\" must be a non-negative integer");
    CONFIG_ERR("{\"port\": 1.5}", "\"port\" must be a non-negative integer");
    CONFIG_ERR("{\"port\": null}", "\"port\" must be a non-negative integer");
    CONFIG_ERR("{\"port\": 70000}", "bad.json: --port: '70000' exceeds the maximum 65535");
    CONFIG_ERR("{\"port\": 0}", "--port: '0' is below the minimum 1");
    CONFIG_ERR("{\"timeout\": true}", "\"timeout\" must be a duration");
    CONFIG_ERR("{\"timeout\": \"5x\"}", "--timeout: '5x': unknown unit 'x'");
    CONFIG_ERR("{\"max-bytes\": [1]}", "\"max-bytes\" must be a size");
    CONFIG_ERR("{\"forward\": 1}", "\"forward\" must be a string or an array of strings");
    CONFIG_ERR("{\"forward\": [\"a\", 2]}", "\"forward\"[1] must be a string");
    CHECK_ERR(parse(&spec, "--config", write_file("bad.json", "{\"forward\": [\"a\", \"b\", \"c\", \"d\"]}"), NULL),
              CL_ELIMIT, "bad.json: --forward: at most 3");
    CONFIG_ERR("{\"pcr\": 3}", "\"pcr\" must be a string or an array of strings");
    CONFIG_ERR("{\"bogus\": 1}", "bad.json: unknown setting \"bogus\" (see cloister test --help)");
    CONFIG_ERR("{\"config\": \"x\"}", "unknown setting \"config\"");
    CONFIG_ERR("{\"help\": true}", "unknown setting \"help\"");
    CONFIG_ERR("[1, 2]", "expected a JSON object of settings");
    CONFIG_ERR("{\"name\": \"a\", \"name\": \"b\"}", "line 1");
    CONFIG_ERR("{\"name\": ", "line 1");
    CHECK_ERR(parse(&spec, "--config", "/nonexistent/x.json", NULL), CL_EINVAL, "--config /nonexistent/x.json");
    /* the file's values are checked like the flags' */
    CONFIG_ERR("{\"name\": \"-x\"}", "--name: '-x' is not a name");
}

static void composed_tables(void)
{
    /* one table in two commands: its struct sits inside each command's settings */
    typedef struct inner {
        unsigned budget;
        char *command;
    } inner;
    typedef struct outer {
        bool ipv4;
        inner wd;
    } outer;
    static const cl_opt inner_table[] = {
        {.name = "restart-budget", CL_OPT_UINT_AT(inner, budget, 0, 100), .def = "5", .arg = "N",
         .help = "restarts allowed"},
        {.name = "enclave-command", CL_OPT_STR(inner, command), .arg = "CMD", .help = "run this"},
    };
    static const cl_opt outer_table[] = {
        {.name = "ipv4", .short_name = '4', CL_OPT_FLAG(outer, ipv4), .help = "IPv4 only"},
        {.name = "config", .type = CL_OPT_CONFIG, .arg = "FILE", .help = "JSON settings (the path is not kept)"},
    };
    outer o = {0};
    cl_opt_section sec[] = {CL_OPT_SECTION("options", outer_table, &o),
                            CL_OPT_SECTION("the enclave's life", inner_table, &o.wd)};
    cl_options host = {.prog = "cloister host", .sections = sec, .section_count = 2};
    const char *path = write_file("host.json", "{\"enclave-command\": \"sleep 1\", \"ipv4\": true}");
    cl_options_result r;
    char *argv[] = {"x", "--config-none", NULL};
    CHECK_ERR(cl_options_parse(&host, 2, argv, &r), CL_EINVAL, "unknown option '--config-none'");
    cl_options_free(&host, &r);
    char *argv2[] = {"x", "-4", "--restart-budget=0", NULL};
    CHECK_OK(cl_options_parse(&host, 3, argv2, &r));
    CHECK(o.ipv4 && o.wd.budget == 0 && o.wd.command == NULL);
    CHECK(cl_options_given(&host, &r, "ipv4") && cl_options_given(&host, &r, "restart-budget"));
    CHECK(!cl_options_given(&host, &r, "enclave-command") && !cl_options_given(&host, &r, "nope"));
    CHECK(cl_options_section_given(&host, &r, 0) && cl_options_section_given(&host, &r, 1));
    cl_options_free(NULL, &r);
    char *argv3[] = {"x", "--config", (char *)path, NULL};
    CHECK_OK(cl_options_parse(&host, 3, argv3, &r));
    CHECK(cl_options_given(&host, &r, "enclave-command") && cl_options_given(&host, &r, "ipv4"));
    CHECK(!cl_options_given(&host, &r, "restart-budget") && cl_options_given(&host, &r, "config"));
    cl_options_free(NULL, &r);
    char *argv4[] = {"x", "-4", NULL};
    CHECK_OK(cl_options_parse(&host, 2, argv4, &r));
    CHECK(cl_options_section_given(&host, &r, 0) && !cl_options_section_given(&host, &r, 1));
    CHECK_OK(cl_options_load_json(&host, path));
    CHECK(o.wd.command && !strcmp(o.wd.command, "sleep 1"));
    CHECK_OK(cl_options_set(&host, "restart-budget", "7"));
    CHECK(o.wd.budget == 7);
    CHECK_ERR(cl_options_set(&host, "nope", "1"), CL_ENOTFOUND, "--nope is not an option of cloister host");
    CHECK_ERR(cl_options_set(&host, "restart-budget", "101"), CL_EINVAL, "--restart-budget: '101' exceeds");
    void *base = NULL;
    const cl_opt *found = cl_options_find(&host, "enclave-command", &base);
    CHECK(found == &inner_table[1] && base == &o.wd);
    char *help = cl_options_help(&host);
    CHECK(help && strstr(help, "options:\n  -4, --ipv4"));
    CHECK(help && strstr(help, "this text\n\nthe enclave's life:\n      --restart-budget N"));
    CHECK(help && strstr(help, "restarts allowed (default: 5)\n"));
    free(help);
    cl_options_free(&host, &r);
    CHECK(o.wd.command == NULL);
    /* a name in two tables is a programming error */
    cl_opt_section twice[] = {CL_OPT_SECTION(NULL, inner_table, &o.wd), CL_OPT_SECTION(NULL, inner_table, &o.wd)};
    cl_options bad = {.prog = "x", .sections = twice, .section_count = 2};
    CHECK_ERR(cl_options_check_spec(&bad), CL_EINVAL, "--restart-budget is in the tables twice");
}

static void bad_specs(void)
{
    settings t = {0};
    static const cl_opt bad_default[] = {{.name = "port", CL_OPT_UINT_AT(settings, port, 1, 10), .def = "11"}};
    static const cl_opt too_wide[] = {{.name = "level", CL_OPT_UINT_AT(settings, level, 0, 256)}};
    static const cl_opt help_name[] = {{.name = "help", CL_OPT_FLAG(settings, debug)}};
    static const cl_opt bool_arg[] = {{.name = "x", CL_OPT_FLAG(settings, debug), .arg = "X"}};
    static const cl_opt no_fn[] = {{.name = "x", .type = CL_OPT_CALL}};
    static const cl_opt dashed[] = {{.name = "-x", CL_OPT_FLAG(settings, debug)}};
    static const cl_opt list_default[] = {{.name = "x", CL_OPT_LIST_AT(settings, forward, 0), .def = "a"}};
    static const cl_opt short_dash[] = {{.name = "x", .short_name = '-', CL_OPT_FLAG(settings, debug)}};
    const cl_opt *tables[] = {bad_default, too_wide, help_name, bool_arg, no_fn, dashed, list_default, short_dash};
    for (size_t i = 0; i < sizeof tables / sizeof tables[0]; i++) {
        cl_opt_section sec[] = {{NULL, tables[i], 1, &t}};
        cl_options sp = {.prog = "x", .sections = sec, .section_count = 1};
        CHECK_ERR(cl_options_check_spec(&sp), CL_EINVAL, NULL);
        char *argv[] = {"x", NULL};
        cl_options_result r;
        CHECK_ERR(cl_options_parse(&sp, 1, argv, &r), CL_EINVAL, NULL);
        cl_options_free(&sp, &r);
    }
    CHECK_OK(cl_options_check_spec(&spec));
}

static void help_text(void)
{
    char *help = cl_options_help(&spec);
    CHECK(help != NULL);
    if (!help)
        return;
    const char *want = "usage: cloister test [OPTIONS] FILE...\n"
                       "\n"
                       "options:\n"
                       "  -n, --name NAME         a name that does not start with a dash\n"
                       "      --path PATH         where it lives (default: /run/x)\n"
                       "      --debug             log more\n"
                       "  -q, --quiet             log less (default: true)\n"
                       "  -p, --port PORT         the port (default: 443)\n"
                       "      --memory MIB        memory in MiB (or 2G, 512M)\n"
                       "      --timeout DURATION  time allowed (default: 10)\n"
                       "      --grace DURATION    before SIGKILL (default: 1500ms)\n"
                       "      --max-bytes BYTES   largest head (default: 16K)\n"
                       "      --forward A=B       a forward (repeatable, at most 3)\n"
                       "      --pcr N             a PCR (repeatable)\n"
                       "      --config FILE       JSON settings\n"
                       "  -h, --help              this text\n"
                       "\n"
                       "The end.\n";
    CHECK(!strcmp(help, want));
    if (strcmp(help, want))
        fprintf(stderr, "--- got:\n%s--- want:\n%s", help, want);
    CHECK(!strstr(help, "--level")); /* no help line: not listed */
    free(help);

    /* long lines wrap under their column; a long left column gets its own line */
    static const cl_opt wide[] = {
        {.name = "proxy-protocol", CL_OPT_FLAG(settings, debug),
         .help = "public connections start with a PROXY protocol v2 header (cloister host --forward "
                 "...,proxy-protocol): required, and trusted for the client address (X-Forwarded-For)"},
        {.name = "a-very-long-option-name-indeed", CL_OPT_STR(settings, name), .arg = "SOMETHING-LONG",
         .def = "x", .help = "short"},
    };
    cl_opt_section sec[] = {CL_OPT_SECTION("settings", wide, &s)};
    cl_options w = {.prog = "w", .sections = sec, .section_count = 1};
    help = cl_options_help(&w);
    CHECK(help != NULL);
    if (!help)
        return;
    const char *want_wide =
        "settings:\n"
        "      --proxy-protocol  public connections start with a PROXY protocol v2 header (cloister host\n"
        "                        --forward ...,proxy-protocol): required, and trusted for the client address\n"
        "                        (X-Forwarded-For)\n"
        "      --a-very-long-option-name-indeed SOMETHING-LONG\n"
        "                        short (default: x)\n"
        "  -h, --help            this text\n";
    CHECK(!strcmp(help, want_wide));
    if (strcmp(help, want_wide))
        fprintf(stderr, "--- got:\n%s--- want:\n%s", help, want_wide);
    for (const char *line = help; *line;) {
        size_t n = strcspn(line, "\n");
        CHECK(n <= 100);
        line += n + (line[n] ? 1 : 0);
    }
    free(help);
}

/* Runs cl_options_main with stdout and stderr sent to /dev/null. */
static int quiet_main(int argc, char **argv)
{
    fflush(stdout);
    fflush(stderr);
    int out = dup(1), err = dup(2), devnull = open("/dev/null", O_WRONLY);
    dup2(devnull, 1);
    dup2(devnull, 2);
    release();
    last_spec = spec;
    int rc = cl_options_main(&spec, argc, argv, &res);
    fflush(stdout);
    fflush(stderr);
    dup2(out, 1);
    dup2(err, 2);
    close(out);
    close(err);
    close(devnull);
    return rc;
}

static void main_prints(void)
{
    /* help: 1 (exit 0); a problem: < 0 (exit 2); else 0 */
    char *help[] = {"x", "--help", NULL};
    CHECK(quiet_main(2, help) == 1);
    char *bogus[] = {"x", "--bogus", NULL};
    CHECK(quiet_main(2, bogus) == CL_EINVAL);
    char *fine[] = {"x", "f", NULL};
    CHECK(quiet_main(2, fine) == 0);
    CHECK(res.positional_count == 1);
}

/* A section of callbacks only, without a struct (keyholder's KMS options). */
static int callback_count;
static int count_call(void *base, const char *value)
{
    CHECK(base == NULL && value != NULL);
    callback_count++;
    return CL_OK;
}

static void sections_without_struct(void)
{
    static const cl_opt calls[] = {
        {.name = "kms-region", CL_OPT_CALLBACK(count_call), .arg = "R", .help = "a region"},
    };
    cl_opt_section two_sections[] = {CL_OPT_SECTION("options", table, &s),
                                 CL_OPT_SECTION("KMS", calls, NULL)};
    cl_options two = spec;
    two.sections = two_sections;
    two.section_count = 2;
    callback_count = 0;
    CHECK_OK(parse(&two, "--kms-region", "eu-west-1", "--kms-region=us-east-1", NULL));
    CHECK(callback_count == 2);
    release();
}

int main(void)
{
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(applies_defaults);
    RUN(every_spelling);
    RUN(positional_and_double_dash);
    RUN(unknown_and_missing);
    RUN(strings_and_checks);
    RUN(booleans);
    RUN(integers_and_bounds);
    RUN(durations);
    RUN(sizes);
    RUN(repeated_options);
    RUN(required_options);
    RUN(single_dash);
    RUN(config_files);
    RUN(config_type_errors);
    RUN(composed_tables);
    RUN(bad_specs);
    RUN(help_text);
    RUN(main_prints);
    RUN(sections_without_struct);
    release();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    return test_summary();
}

#include "cloister/host/nitro_cli.h"
#include "test.h"

#include <stdint.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char tmpdir[64];

/* nitro-cli's real outputs (shapes from aws-nitro-enclaves-cli's json_output). */
static const char run_output[] = "Start allocating memory...\n"
                                 "{\n"
                                 "  \"EnclaveName\": \"app\",\n"
                                 "  \"EnclaveID\": \"i-0123456789abcdef0-enc0123456789abcdef\",\n"
                                 "  \"ProcessID\": 25973,\n"
                                 "  \"EnclaveCID\": 16,\n"
                                 "  \"NumberOfCPUs\": 2,\n"
                                 "  \"CPUIDs\": [\n    1,\n    3\n  ],\n"
                                 "  \"MemoryMiB\": 512\n"
                                 "}\n";

static const char describe_output[] = "[\n"
                                      "  {\n"
                                      "    \"EnclaveName\": \"app\",\n"
                                      "    \"EnclaveID\": \"i-0123456789abcdef0-enc0123456789abcdef\",\n"
                                      "    \"ProcessID\": 25973,\n"
                                      "    \"EnclaveCID\": 16,\n"
                                      "    \"NumberOfCPUs\": 2,\n"
                                      "    \"CPUIDs\": [1, 3],\n"
                                      "    \"MemoryMiB\": 512,\n"
                                      "    \"State\": \"RUNNING\",\n"
                                      "    \"Flags\": \"DEBUG_MODE\"\n"
                                      "  },\n"
                                      "  {\n"
                                      "    \"EnclaveName\": \"other\",\n"
                                      "    \"EnclaveID\": \"i-0123456789abcdef0-enc00000000000000ff\",\n"
                                      "    \"ProcessID\": 4242,\n"
                                      "    \"EnclaveCID\": 17,\n"
                                      "    \"NumberOfCPUs\": 4,\n"
                                      "    \"CPUIDs\": [5, 7, 9, 11],\n"
                                      "    \"MemoryMiB\": 4096,\n"
                                      "    \"State\": \"TERMINATING\",\n"
                                      "    \"Flags\": \"NONE\"\n"
                                      "  }\n"
                                      "]\n";

static const char terminate_output[] = "{\n"
                                       "  \"EnclaveName\": \"app\",\n"
                                       "  \"EnclaveID\": \"i-0123456789abcdef0-enc0123456789abcdef\",\n"
                                       "  \"Terminated\": true\n"
                                       "}\n";

#define ID "i-0123456789abcdef0-enc0123456789abcdef"

static int parse_run_text(const char *text, cl_nitro_enclave *e)
{
    return cl_nitro_parse_run(text, strlen(text), e);
}

static void parses_run(void)
{
    cl_nitro_enclave e;
    CHECK_OK(cl_nitro_parse_run(run_output, strlen(run_output), &e));
    CHECK(!strcmp(e.id, ID));
    CHECK(!strcmp(e.name, "app"));
    CHECK(e.process_id == 25973 && e.cid == 16 && e.cpu_count == 2 && e.memory_mib == 512);
    CHECK(e.state[0] == '\0' && e.flags[0] == '\0');
    /* older nitro-cli: no EnclaveName, no ProcessID, no progress line */
    CHECK_OK(parse_run_text("{\"EnclaveID\": \"" ID "\", \"EnclaveCID\": 5, \"NumberOfCPUs\": 2, "
                            "\"CPUIDs\": [1, 3], \"MemoryMiB\": 256}",
                            &e));
    CHECK(e.name[0] == '\0' && e.process_id == 0 && e.cid == 5);
}

static void rejects_bad_run(void)
{
    cl_nitro_enclave e;
    CHECK_ERR(parse_run_text("", &e), CL_EPARSE, "no JSON");
    CHECK_ERR(parse_run_text("Start allocating memory...\n", &e), CL_EPARSE, "no JSON");
    CHECK_ERR(parse_run_text("Start allocating memory... {\"EnclaveID\": \"x\"}", &e), CL_EPARSE, "no JSON");
    CHECK_ERR(parse_run_text("{\"EnclaveID\": ", &e), CL_EPARSE, "malformed JSON");
    CHECK_ERR(parse_run_text("{\"EnclaveID\": \"" ID "\", \"EnclaveCID\": 16} trailing", &e), CL_EPARSE,
              "malformed JSON");
    CHECK_ERR(parse_run_text("[]", &e), CL_EPARSE, "expected a JSON object");
    CHECK_ERR(parse_run_text("{\"EnclaveCID\": 16}", &e), CL_EPARSE, "\"EnclaveID\" is missing");
    CHECK_ERR(parse_run_text("{\"EnclaveID\": \"" ID "\"}", &e), CL_EPARSE, "\"EnclaveCID\" is missing");
    CHECK_ERR(parse_run_text("{\"EnclaveID\": 7, \"EnclaveCID\": 16}", &e), CL_EPARSE, "not a string");
    CHECK_ERR(parse_run_text("{\"EnclaveID\": \"" ID "\", \"EnclaveCID\": \"16\"}", &e), CL_EPARSE,
              "not a non-negative integer");
    CHECK_ERR(parse_run_text("{\"EnclaveID\": \"" ID "\", \"EnclaveCID\": -1}", &e), CL_EPARSE,
              "not a non-negative integer");
    CHECK_ERR(parse_run_text("{\"EnclaveID\": \"" ID "\", \"EnclaveCID\": 16, \"ProcessID\": 1.5}", &e), CL_EPARSE,
              "ProcessID");
    CHECK_ERR(parse_run_text("{\"EnclaveID\": \"" ID "\", \"EnclaveCID\": 16, \"ProcessID\": 99999999999}", &e),
              CL_EPARSE, "not a process ID");
    CHECK_ERR(parse_run_text("{\"EnclaveID\": \"" ID "\", \"EnclaveCID\": 16, \"CPUIDs\": 3}", &e), CL_EPARSE,
              "CPUIDs");
    /* IDs go on a command line later: nothing that could pass for an option or worse */
    CHECK_ERR(parse_run_text("{\"EnclaveID\": \"--all\", \"EnclaveCID\": 16}", &e), CL_EPARSE, "not an enclave ID");
    CHECK_ERR(parse_run_text("{\"EnclaveID\": \"i-1 ; rm\", \"EnclaveCID\": 16}", &e), CL_EPARSE,
              "not an enclave ID");
    CHECK_ERR(parse_run_text("{\"EnclaveID\": \"\", \"EnclaveCID\": 16}", &e), CL_EPARSE, "not an enclave ID");
    CHECK_ERR(parse_run_text("{\"EnclaveID\": \"i-\\u0000x\", \"EnclaveCID\": 16}", &e), CL_EPARSE, "NUL");
    CHECK_ERR(parse_run_text("{\"EnclaveID\": \"" ID "\", \"EnclaveID\": \"" ID "\", \"EnclaveCID\": 16}", &e),
              CL_EPARSE, "malformed JSON"); /* duplicate key */
    char long_id[400];
    memset(long_id, 'a', sizeof long_id);
    char text[600];
    snprintf(text, sizeof text, "{\"EnclaveID\": \"%.*s\", \"EnclaveCID\": 16}", 200, long_id);
    CHECK_ERR(parse_run_text(text, &e), CL_EPARSE, "longer than");
}

static void parses_describe(void)
{
    cl_nitro_enclave *list = NULL;
    size_t count = 99;
    CHECK_OK(cl_nitro_parse_describe("[]\n", 3, &list, &count));
    CHECK(list == NULL && count == 0);
    CHECK_OK(cl_nitro_parse_describe(describe_output, strlen(describe_output), &list, &count));
    CHECK(count == 2);
    if (count == 2) {
        CHECK(!strcmp(list[0].id, ID) && !strcmp(list[0].state, "RUNNING") && !strcmp(list[0].flags, "DEBUG_MODE"));
        CHECK(list[0].cid == 16 && list[0].process_id == 25973);
        CHECK(!strcmp(list[1].name, "other") && !strcmp(list[1].state, "TERMINATING") && list[1].cid == 17);
        CHECK(list[1].memory_mib == 4096 && list[1].cpu_count == 4);
    }
    free(list);
}

static void rejects_bad_describe(void)
{
    cl_nitro_enclave *list = (cl_nitro_enclave *)1;
    size_t count = 7;
    static const char *const bad[] = {
        "{}", "[1]", "[{\"EnclaveID\": \"" ID "\", \"EnclaveCID\": 16}]", /* no State */
        "[{\"EnclaveID\": \"" ID "\", \"EnclaveCID\": 16, \"State\": 1}]", "[", "",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_ERR(cl_nitro_parse_describe(bad[i], strlen(bad[i]), &list, &count), CL_EPARSE, NULL);
        CHECK(list == NULL && count == 0);
    }
    const char *second_bad = "[{\"EnclaveID\": \"" ID "\", \"EnclaveCID\": 16, \"State\": \"RUNNING\"}, "
                             "{\"EnclaveID\": \"" ID "\", \"State\": \"RUNNING\"}]";
    CHECK_ERR(cl_nitro_parse_describe(second_bad, strlen(second_bad), &list, &count), CL_EPARSE, "enclave 1");
    CHECK(list == NULL && count == 0);
}

static void parses_terminate(void)
{
    CHECK_OK(cl_nitro_parse_terminate(terminate_output, strlen(terminate_output), ID));
    CHECK_ERR(cl_nitro_parse_terminate(terminate_output, strlen(terminate_output), "i-other-enc1"), CL_EPROTO,
              "answered for");
    const char *no = "{\"EnclaveName\": \"app\", \"EnclaveID\": \"" ID "\", \"Terminated\": false}";
    CHECK_ERR(cl_nitro_parse_terminate(no, strlen(no), ID), CL_EIO, "was not terminated");
    const char *missing = "{\"EnclaveID\": \"" ID "\"}";
    CHECK_ERR(cl_nitro_parse_terminate(missing, strlen(missing), ID), CL_EPARSE, "\"Terminated\" is missing");
    const char *wrong = "{\"EnclaveID\": \"" ID "\", \"Terminated\": \"yes\"}";
    CHECK_ERR(cl_nitro_parse_terminate(wrong, strlen(wrong), ID), CL_EPARSE, "not a boolean");
    CHECK_ERR(cl_nitro_parse_terminate("[]", 2, ID), CL_EPARSE, "expected a JSON object");
}

static void validates_ids(void)
{
    CHECK(cl_nitro_id_valid(ID));
    CHECK(cl_nitro_id_valid("i_1-A"));
    CHECK(!cl_nitro_id_valid(NULL));
    CHECK(!cl_nitro_id_valid(""));
    CHECK(!cl_nitro_id_valid("-i"));
    CHECK(!cl_nitro_id_valid("i/../x"));
    CHECK(!cl_nitro_id_valid("i x"));
}

/* ---- running a (fake) nitro-cli ---------------------------------------------------------- */

/* Writes an executable script; returns its path (static buffer per slot). */
static const char *script(const char *name, const char *body)
{
    static char paths[8][128];
    static int next;
    char *path = paths[next++ % 8];
    snprintf(path, 128, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    if (!f)
        return "/nonexistent";
    fprintf(f, "#!/bin/sh\n%s\n", body);
    fclose(f);
    chmod(path, 0700);
    return path;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static char *slurp(const char *path)
{
    static char buf[4096];
    buf[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f)
        return buf;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static void runs_with_exact_arguments(void)
{
    char body[1024];
    snprintf(body, sizeof body,
             "echo \"$@\" > %s/args\n"
             "echo 'Start allocating memory...'\n"
             "echo 'Started enclave with enclave-cid: 16, memory: 512 MiB, cpu-ids: [1, 3]' >&2\n"
             "cat <<'EOF'\n%sEOF",
             tmpdir, run_output);
    cl_nitro_cli cli = {.path = script("run-ok", body)};
    cl_nitro_run_config cfg = {.eif_path = "/opt/app.eif", .cpu_count = 2, .memory_mib = 512, .enclave_cid = 16,
                               .debug_mode = true, .enclave_name = "app"};
    cl_nitro_enclave e;
    CHECK_OK(cl_nitro_run_enclave(&cli, &cfg, &e));
    CHECK(!strcmp(e.id, ID) && e.cid == 16);
    char path[128];
    snprintf(path, sizeof path, "%s/args", tmpdir);
    CHECK(!strcmp(slurp(path), "run-enclave --eif-path /opt/app.eif --cpu-count 2 --memory 512 --enclave-cid 16 "
                               "--debug-mode --enclave-name app\n"));
    cl_nitro_run_config minimal = {.eif_path = "/opt/app.eif", .cpu_count = 4, .memory_mib = 8192};
    CHECK_OK(cl_nitro_run_enclave(&cli, &minimal, &e));
    CHECK(!strcmp(slurp(path), "run-enclave --eif-path /opt/app.eif --cpu-count 4 --memory 8192\n"));
    cl_nitro_run_config bad = minimal;
    bad.cpu_count = 0;
    CHECK_ERR(cl_nitro_run_enclave(&cli, &bad, &e), CL_EINVAL, "CPU count");
    bad = minimal;
    bad.eif_path = NULL;
    CHECK_ERR(cl_nitro_run_enclave(&cli, &bad, &e), CL_EINVAL, "EIF");
}

static void describes_and_terminates(void)
{
    char body[2048];
    snprintf(body, sizeof body,
             "case $1 in\n"
             "describe-enclaves) cat <<'EOF'\n%sEOF\n;;\n"
             "terminate-enclave) [ \"$2 $3\" = \"--enclave-id " ID "\" ] || exit 9\n"
             "  echo 'Successfully terminated enclave " ID ".' >&2\n  cat <<'EOF'\n%sEOF\n;;\n"
             "esac",
             describe_output, terminate_output);
    cl_nitro_cli cli = {.path = script("dt", body)};
    cl_nitro_enclave *list = NULL;
    size_t count = 0;
    CHECK_OK(cl_nitro_describe_enclaves(&cli, &list, &count));
    CHECK(count == 2);
    free(list);
    CHECK_OK(cl_nitro_terminate_enclave(&cli, ID));
    CHECK_ERR(cl_nitro_terminate_enclave(&cli, "-x"), CL_EINVAL, "not an enclave ID");
    CHECK_ERR(cl_nitro_terminate_enclave(&cli, "i-0-enc1"), CL_EIO, "exit status 9");
}

static void reports_failures_with_stderr(void)
{
    cl_nitro_cli cli = {.path = script("fails", "echo 'Start allocating memory...'\n"
                                                "echo '[ E26 ] Insufficient memory requested.' >&2\n"
                                                "echo >&2\n"
                                                "echo 'If you open a support ticket, please provide the error log "
                                                "found at \"/var/log/nitro_enclaves/err.log\"' >&2\n"
                                                "exit 26")};
    cl_nitro_run_config cfg = {.eif_path = "/x.eif", .cpu_count = 2, .memory_mib = 64};
    cl_nitro_enclave e;
    CHECK_ERR(cl_nitro_run_enclave(&cli, &cfg, &e), CL_EIO,
              "nitro-cli run-enclave failed (exit status 26): stderr: [ E26 ] Insufficient memory requested. If you "
              "open a support ticket, please provide the error log found at \"/var/log/nitro_enclaves/err.log\"");

    cli.path = script("silent", "exit 1");
    CHECK_ERR(cl_nitro_run_enclave(&cli, &cfg, &e), CL_EIO, "(exit status 1): no output on stderr");

    cli.path = script("killed", "kill -9 $$");
    CHECK_ERR(cl_nitro_run_enclave(&cli, &cfg, &e), CL_EIO, "killed by signal 9");

    cli.path = script("garbage", "echo 'not json'");
    CHECK_ERR(cl_nitro_run_enclave(&cli, &cfg, &e), CL_EPARSE, "printed no JSON");

    /* long stderr: the start (error code) and the end (log path) survive */
    cli.path = script("noisy", "echo '[ E99 ] first line' >&2\n"
                               "i=0; while [ $i -lt 3000 ]; do echo 'filler filler filler filler' >&2; i=$((i+1)); "
                               "done\n"
                               "echo 'last line: /var/log/nitro_enclaves/err-end.log' >&2\nexit 1");
    CHECK_ERR(cl_nitro_run_enclave(&cli, &cfg, &e), CL_EIO, "stderr: [ E99 ] first line filler");
    CHECK(strstr(cl_error_message(), " ... ") != NULL);
    CHECK(strstr(cl_error_message(), "filler last line: /var/log/nitro_enclaves/err-end.log") != NULL);
    CHECK(strlen(cl_error_message()) < 1000);

    cli.path = "/nonexistent/nitro-cli";
    CHECK_ERR(cl_nitro_run_enclave(&cli, &cfg, &e), CL_EIO, "cannot run /nonexistent/nitro-cli: No such file");
    cli.path = "cloister-no-such-program-on-path";
    CHECK_ERR(cl_nitro_run_enclave(&cli, &cfg, &e), CL_EIO, "cannot run cloister-no-such-program-on-path");
}

static void times_out(void)
{
    cl_nitro_cli cli = {.path = script("hangs", "echo 'Start allocating memory...'\nexec sleep 30"),
                        .run_timeout_ms = 300};
    cl_nitro_run_config cfg = {.eif_path = "/x.eif", .cpu_count = 2, .memory_mib = 64};
    cl_nitro_enclave e;
    uint64_t t0 = now_ms();
    CHECK_ERR(cl_nitro_run_enclave(&cli, &cfg, &e), CL_EIO, "nitro-cli run-enclave timed out after 300 ms");
    uint64_t took = now_ms() - t0;
    CHECK(took >= 300 && took < 3000);
}

static void does_not_wait_for_grandchildren(void)
{
    /* nitro-cli's enclave process outlives it; should it keep stdout open,
     * the command still ends when nitro-cli exits */
    cl_nitro_cli cli = {.path = script("daemon", "sleep 3 &\necho '[]'")};
    cl_nitro_enclave *list = NULL;
    size_t count = 1;
    uint64_t t0 = now_ms();
    CHECK_OK(cl_nitro_describe_enclaves(&cli, &list, &count));
    CHECK(count == 0 && list == NULL);
    CHECK(now_ms() - t0 < 2000);
}

static void limits_output(void)
{
    cl_nitro_cli cli = {.path = script("flood", "head -c 2000000 /dev/zero | tr '\\0' ' '; echo '[]'")};
    cl_nitro_enclave *list = NULL;
    size_t count = 0;
    CHECK_ERR(cl_nitro_describe_enclaves(&cli, &list, &count), CL_ELIMIT, "more than");
}

/* nitro-cli's new_enclave_name: the last path component with ".eif" trimmed
 * from the end (trim_end_matches), nothing else. */
static void default_names_as_nitro_cli(void)
{
    static const char *const cases[][2] = {
        {"/opt/app/hello.eif", "hello"},
        {"hello.eif", "hello"},
        {"/opt/web.v2.eif", "web.v2"},   /* only .eif goes, not the last dot's suffix */
        {"/opt/web.img", "web.img"},     /* another extension stays */
        {"/opt/web", "web"},
        {"/opt/web.eif.eif", "web"},     /* trim_end_matches removes every trailing match */
        {"/opt/web.EIF", "web.EIF"},     /* case-sensitive */
        {"/opt/.eif", ""},
        {"/opt.d/web", "web"},           /* a dot in a directory is not the file's */
        {".hidden", ".hidden"},
        {"/opt/dir/", ""},
    };
    char out[CL_NITRO_NAME_MAX];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cl_nitro_default_name(cases[i][0], out, sizeof out);
        if (strcmp(out, cases[i][1]))
            fprintf(stderr, "%s -> '%s', nitro-cli: '%s'\n", cases[i][0], out, cases[i][1]);
        CHECK(!strcmp(out, cases[i][1]));
    }
    char small[4];
    cl_nitro_default_name("/opt/hello.eif", small, sizeof small);
    CHECK(!strcmp(small, "hel"));
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/cloister-nitro.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(parses_run);
    RUN(rejects_bad_run);
    RUN(parses_describe);
    RUN(rejects_bad_describe);
    RUN(parses_terminate);
    RUN(validates_ids);
    RUN(runs_with_exact_arguments);
    RUN(describes_and_terminates);
    RUN(reports_failures_with_stderr);
    RUN(times_out);
    RUN(does_not_wait_for_grandchildren);
    RUN(limits_output);
    RUN(default_names_as_nitro_cli);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    return test_summary();
}

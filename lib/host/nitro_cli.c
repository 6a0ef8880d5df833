#include "cloister/host/nitro_cli.h"

#include "cloister/core/process.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_PROGRAM "nitro-cli"
#define DEFAULT_RUN_TIMEOUT_MS 300000u
#define DEFAULT_TIMEOUT_MS 60000u
#define STDERR_KEEP 16384    /* bytes of nitro-cli's stderr kept for messages */
#define STDERR_SHOWN 120     /* shown from each end of it in a message (cl_error keeps 511 bytes) */
#define DRAIN_QUIET_MS 100   /* after exit: a pipe silent this long is done */

/* ---- running a command ----------------------------------------------------------------- */

typedef struct captured {
    char *out; /* stdout, NUL-terminated */
    size_t out_len, out_cap;
    char err_head[STDERR_KEEP]; /* the first STDERR_KEEP bytes of stderr */
    char err_tail[STDERR_SHOWN]; /* the last STDERR_SHOWN bytes, once beyond the head */
    size_t err_len;             /* bytes seen on stderr */
    int status;
} captured;

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void keep_stderr(captured *c, const char *data, size_t n)
{
    for (size_t i = 0; i < n; i++, c->err_len++) {
        if (c->err_len < STDERR_KEEP)
            c->err_head[c->err_len] = data[i];
        else
            c->err_tail[(c->err_len - STDERR_KEEP) % STDERR_SHOWN] = data[i];
    }
}

static int keep_stdout(captured *c, const char *data, size_t n)
{
    CL_ENSURE(c->out_len + n <= CL_NITRO_OUTPUT_MAX, CL_ELIMIT, "more than %u bytes of output",
              CL_NITRO_OUTPUT_MAX);
    if (c->out_len + n + 1 > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 4096;
        while (cap < c->out_len + n + 1)
            cap *= 2;
        char *grown = realloc(c->out, cap);
        CL_ENSURE(grown, CL_ENOMEM, "out of memory");
        c->out = grown;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, data, n);
    c->out_len += n;
    c->out[c->out_len] = '\0';
    return CL_OK;
}

/* Runs argv[0] (execvp) with stdin from /dev/null, capturing its output,
 * and waits at most timeout_ms for it to exit. */
static int run_capture(const char *what, char *const argv[], unsigned timeout_ms, captured *c)
{
    int out_p[2] = {-1, -1}, err_p[2] = {-1, -1};
    int rc = CL_OK;
    pid_t pid = -1;
    memset(c, 0, sizeof *c);
    if (pipe2(out_p, O_CLOEXEC) < 0 || pipe2(err_p, O_CLOEXEC) < 0)
        CL_FAIL_OUT(CL_EIO, "%s: pipe: %s", what, strerror(errno));
    cl_process_spec spec = {.program = argv[0], .argv = argv, .search_path = true, .own_group = true,
                            .stdout_fd = out_p[1], .stderr_fd = err_p[1]};
    rc = cl_process_spawn(&spec, &pid);
    close(out_p[1]);
    close(err_p[1]);
    out_p[1] = err_p[1] = -1;
    if (rc < 0)
        goto out;

    uint64_t deadline = mono_ms() + timeout_ms;
    bool exited = false;
    int fds[2] = {out_p[0], err_p[0]};
    for (;;) {
        if (!exited) {
            int r = cl_process_wait(pid, 0, &c->status);
            if (r == 1) {
                exited = true;
                pid = -1;
            } else if (r < 0) {
                rc = cl_error_prefix(r, "%s: ", what);
                goto out;
            }
        }
        struct pollfd pfd[2];
        nfds_t n = 0;
        for (int i = 0; i < 2; i++)
            if (fds[i] >= 0)
                pfd[n++] = (struct pollfd){.fd = fds[i], .events = POLLIN};
        if (n == 0 && exited)
            break;
        uint64_t now = mono_ms();
        if (!exited && now >= deadline)
            CL_FAIL_OUT(CL_EIO, "%s timed out after %u ms%s", what, timeout_ms,
                        c->err_len ? " (killed)" : " (killed, no output on stderr)");
        /* before exit: short polls, so that an exit with the pipes still
         * held open by a grandchild is noticed; after exit: drain */
        int wait_ms = exited ? DRAIN_QUIET_MS : (int)(deadline - now < 50 ? deadline - now : 50);
        int ready = n ? poll(pfd, n, wait_ms) : (nanosleep(&(struct timespec){0, 10000000}, NULL), 0);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            CL_FAIL_OUT(CL_EIO, "%s: poll: %s", what, strerror(errno));
        }
        if (ready == 0 && exited)
            break; /* quiet: whatever holds the pipes open is not nitro-cli */
        for (nfds_t k = 0; k < n; k++) {
            if (!pfd[k].revents)
                continue;
            char buf[4096];
            ssize_t r = read(pfd[k].fd, buf, sizeof buf);
            if (r > 0) {
                if (pfd[k].fd == out_p[0])
                    CL_TRY_OUT(keep_stdout(c, buf, (size_t)r));
                else
                    keep_stderr(c, buf, (size_t)r);
            } else if (r == 0 || (errno != EINTR && errno != EAGAIN)) {
                for (int i = 0; i < 2; i++)
                    if (fds[i] == pfd[k].fd)
                        fds[i] = -1;
            }
        }
    }
    if (!c->out)
        CL_TRY_OUT(keep_stdout(c, "", 0));
out:
    if (pid > 0)
        cl_process_stop(pid, 0, NULL); /* timed out or failed: no grace */
    for (int i = 0; i < 2; i++) {
        if (out_p[i] >= 0)
            close(out_p[i]);
        if (err_p[i] >= 0)
            close(err_p[i]);
    }
    if (rc < 0) {
        free(c->out);
        c->out = NULL;
    }
    return rc;
}

/* Appends bytes with whitespace runs collapsed to one space. */
static size_t flatten(char *dst, size_t n, const char *src, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)src[i];
        if (ch <= ' ' || ch == 0x7f) {
            if (n > 0 && dst[n - 1] != ' ')
                dst[n++] = ' ';
        } else {
            dst[n++] = (char)ch;
        }
    }
    return n;
}

/* stderr for a message: whitespace collapsed, the middle of a long text
 * elided (nitro-cli puts the error code first and the path of its detailed
 * log last). */
static void stderr_summary(const captured *c, char *out, size_t out_len)
{
    char head[STDERR_KEEP + 1], tail[STDERR_SHOWN + 1];
    size_t kept = c->err_len < STDERR_KEEP ? c->err_len : STDERR_KEEP;
    size_t h = flatten(head, 0, c->err_head, kept), t = 0;
    if (c->err_len > STDERR_KEEP) {
        /* the tail ring, oldest byte first */
        size_t beyond = c->err_len - STDERR_KEEP;
        size_t tail_len = beyond < STDERR_SHOWN ? beyond : STDERR_SHOWN;
        size_t first = beyond < STDERR_SHOWN ? 0 : beyond % STDERR_SHOWN;
        char raw[STDERR_SHOWN];
        for (size_t i = 0; i < tail_len; i++)
            raw[i] = c->err_tail[(first + i) % STDERR_SHOWN];
        t = flatten(tail, 0, raw, tail_len);
    } else if (h > 2 * STDERR_SHOWN) {
        /* the end of the head is the tail */
        size_t from = h - STDERR_SHOWN;
        memcpy(tail, head + from, STDERR_SHOWN);
        t = STDERR_SHOWN;
        h = STDERR_SHOWN;
    }
    while (t > 0 && tail[t - 1] == ' ')
        t--;
    tail[t] = '\0';
    if (t == 0) {
        while (h > 0 && head[h - 1] == ' ')
            h--;
        if (h > 2 * STDERR_SHOWN) /* a long text whose tail was all blank */
            h = 2 * STDERR_SHOWN;
    } else if (h > STDERR_SHOWN) {
        h = STDERR_SHOWN;
    }
    head[h] = '\0';
    if (h == 0 && t == 0)
        snprintf(out, out_len, "no output on stderr");
    else if (t == 0)
        snprintf(out, out_len, "stderr: %.*s", 2 * STDERR_SHOWN, head);
    else
        snprintf(out, out_len, "stderr: %.*s ... %.*s", STDERR_SHOWN, head, STDERR_SHOWN,
                 tail[0] == ' ' ? tail + 1 : tail);
}

static void describe_status(int status, char *out, size_t len)
{
    if (WIFEXITED(status))
        snprintf(out, len, "exit status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(out, len, "killed by signal %d", WTERMSIG(status));
    else
        snprintf(out, len, "wait status %d", status);
}

static const char *program(const cl_nitro_cli *cli)
{
    return cli && cli->path && *cli->path ? cli->path : DEFAULT_PROGRAM;
}

/* Runs nitro-cli with argv (argv[0] ignored) and requires exit status 0. */
static int nitro(const cl_nitro_cli *cli, const char *verb, char **argv, unsigned timeout_ms, captured *c)
{
    argv[0] = (char *)program(cli);
    char what[64];
    snprintf(what, sizeof what, "nitro-cli %s", verb);
    int rc = run_capture(what, argv, timeout_ms, c);
    if (rc < 0)
        return rc;
    if (!WIFEXITED(c->status) || WEXITSTATUS(c->status) != 0) {
        char how[48], tail[2 * STDERR_SHOWN + 64];
        describe_status(c->status, how, sizeof how);
        stderr_summary(c, tail, sizeof tail);
        free(c->out);
        c->out = NULL;
        return cl_error_set(CL_EIO, "%s failed (%s): %s", what, how, tail);
    }
    return CL_OK;
}

/* ---- parsing ----------------------------------------------------------------------------- */

bool cl_nitro_id_valid(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    if (n == 0 || n >= CL_NITRO_ID_MAX || id[0] == '-')
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = id[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' ||
              ch == '_'))
            return false;
    }
    return true;
}

/* The JSON document in out: from the first line starting with '{' or '['. */
static int load_json(const char *out, size_t len, const char *what, json_t **root)
{
    size_t start = 0;
    CL_ENSURE(out, CL_EPARSE, "%s printed nothing", what);
    for (;;) {
        if (start >= len)
            return cl_error_set(CL_EPARSE, "%s printed no JSON", what);
        if (out[start] == '{' || out[start] == '[')
            break;
        const char *nl = memchr(out + start, '\n', len - start);
        if (!nl)
            return cl_error_set(CL_EPARSE, "%s printed no JSON", what);
        start = (size_t)(nl - out) + 1;
    }
    json_error_t jerr;
    *root = json_loadb(out + start, len - start, JSON_REJECT_DUPLICATES, &jerr);
    CL_ENSURE(*root, CL_EPARSE, "%s printed malformed JSON: %s (line %d)", what, jerr.text, jerr.line);
    return CL_OK;
}

static int get_string(json_t *obj, const char *key, bool required, char *dst, size_t dst_len, const char *what)
{
    json_t *v = json_object_get(obj, key);
    if (!v) {
        CL_ENSURE(!required, CL_EPARSE, "%s: \"%s\" is missing", what, key);
        dst[0] = '\0';
        return CL_OK;
    }
    CL_ENSURE(json_is_string(v), CL_EPARSE, "%s: \"%s\" is not a string", what, key);
    size_t n = json_string_length(v);
    CL_ENSURE(n < dst_len, CL_EPARSE, "%s: \"%s\" is longer than %zu bytes", what, key, dst_len - 1);
    CL_ENSURE(memchr(json_string_value(v), '\0', n) == NULL, CL_EPARSE, "%s: \"%s\" holds a NUL byte", what, key);
    memcpy(dst, json_string_value(v), n + 1);
    return CL_OK;
}

static int get_uint(json_t *obj, const char *key, bool required, uint64_t *dst, const char *what)
{
    json_t *v = json_object_get(obj, key);
    if (!v) {
        CL_ENSURE(!required, CL_EPARSE, "%s: \"%s\" is missing", what, key);
        *dst = 0;
        return CL_OK;
    }
    CL_ENSURE(json_is_integer(v) && json_integer_value(v) >= 0, CL_EPARSE, "%s: \"%s\" is not a non-negative integer",
              what, key);
    *dst = (uint64_t)json_integer_value(v);
    return CL_OK;
}

static int parse_enclave(json_t *obj, bool describe, cl_nitro_enclave *e, const char *what)
{
    memset(e, 0, sizeof *e);
    CL_ENSURE(json_is_object(obj), CL_EPARSE, "%s: expected a JSON object", what);
    CL_TRY(get_string(obj, "EnclaveID", true, e->id, sizeof e->id, what));
    CL_ENSURE(cl_nitro_id_valid(e->id), CL_EPARSE, "%s: \"EnclaveID\" '%s' is not an enclave ID", what, e->id);
    CL_TRY(get_string(obj, "EnclaveName", false, e->name, sizeof e->name, what));
    uint64_t pid = 0;
    CL_TRY(get_uint(obj, "ProcessID", false, &pid, what));
    CL_ENSURE(pid <= INT32_MAX, CL_EPARSE, "%s: \"ProcessID\" %llu is not a process ID", what,
              (unsigned long long)pid);
    e->process_id = (int64_t)pid;
    CL_TRY(get_uint(obj, "EnclaveCID", true, &e->cid, what));
    CL_TRY(get_uint(obj, "NumberOfCPUs", false, &e->cpu_count, what));
    CL_TRY(get_uint(obj, "MemoryMiB", false, &e->memory_mib, what));
    json_t *cpus = json_object_get(obj, "CPUIDs");
    CL_ENSURE(!cpus || json_is_array(cpus), CL_EPARSE, "%s: \"CPUIDs\" is not an array", what);
    if (describe) {
        CL_TRY(get_string(obj, "State", true, e->state, sizeof e->state, what));
        CL_TRY(get_string(obj, "Flags", false, e->flags, sizeof e->flags, what));
    }
    return CL_OK;
}

int cl_nitro_parse_run(const char *out, size_t len, cl_nitro_enclave *e)
{
    static const char what[] = "nitro-cli run-enclave";
    json_t *root = NULL;
    CL_TRY(load_json(out, len, what, &root));
    int rc = parse_enclave(root, false, e, what);
    json_decref(root);
    return rc;
}

int cl_nitro_parse_describe(const char *out, size_t len, cl_nitro_enclave **list, size_t *count)
{
    static const char what[] = "nitro-cli describe-enclaves";
    *list = NULL;
    *count = 0;
    json_t *root = NULL;
    CL_TRY(load_json(out, len, what, &root));
    int rc = CL_OK;
    cl_nitro_enclave *items = NULL;
    if (!json_is_array(root))
        CL_FAIL_OUT(CL_EPARSE, "%s: expected a JSON array", what);
    size_t n = json_array_size(root);
    if (n > 0) {
        items = calloc(n, sizeof *items);
        if (!items)
            CL_FAIL_OUT(CL_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        char item_what[64];
        snprintf(item_what, sizeof item_what, "%s: enclave %zu", what, i);
        CL_TRY_OUT(parse_enclave(json_array_get(root, i), true, &items[i], item_what));
    }
    *list = items;
    *count = n;
    items = NULL;
out:
    free(items);
    json_decref(root);
    return rc;
}

int cl_nitro_parse_terminate(const char *out, size_t len, const char *enclave_id)
{
    static const char what[] = "nitro-cli terminate-enclave";
    json_t *root = NULL;
    CL_TRY(load_json(out, len, what, &root));
    int rc = CL_OK;
    char id[CL_NITRO_ID_MAX];
    if (!json_is_object(root))
        CL_FAIL_OUT(CL_EPARSE, "%s: expected a JSON object", what);
    CL_TRY_OUT(get_string(root, "EnclaveID", true, id, sizeof id, what));
    if (strcmp(id, enclave_id) != 0)
        CL_FAIL_OUT(CL_EPROTO, "%s: asked for %s, answered for %s", what, enclave_id, id);
    json_t *t = json_object_get(root, "Terminated");
    if (!t)
        CL_FAIL_OUT(CL_EPARSE, "%s: \"Terminated\" is missing", what);
    if (!json_is_boolean(t))
        CL_FAIL_OUT(CL_EPARSE, "%s: \"Terminated\" is not a boolean", what);
    if (!json_is_true(t))
        CL_FAIL_OUT(CL_EIO, "%s: enclave %s was not terminated", what, enclave_id);
out:
    json_decref(root);
    return rc;
}

/* ---- the commands ------------------------------------------------------------------------ */

int cl_nitro_run_enclave(const cl_nitro_cli *cli, const cl_nitro_run_config *cfg, cl_nitro_enclave *out)
{
    CL_ENSURE(cfg->eif_path && *cfg->eif_path, CL_EINVAL, "run-enclave: no EIF path");
    CL_ENSURE(cfg->cpu_count > 0, CL_EINVAL, "run-enclave: the CPU count must be positive");
    CL_ENSURE(cfg->memory_mib > 0, CL_EINVAL, "run-enclave: the memory size must be positive");
    CL_ENSURE(!cfg->enclave_name || (*cfg->enclave_name && cfg->enclave_name[0] != '-'), CL_EINVAL,
              "run-enclave: bad enclave name");
    char cpus[24], memory[24], cid[24];
    snprintf(cpus, sizeof cpus, "%u", cfg->cpu_count);
    snprintf(memory, sizeof memory, "%llu", (unsigned long long)cfg->memory_mib);
    snprintf(cid, sizeof cid, "%llu", (unsigned long long)cfg->enclave_cid);
    char *argv[16];
    size_t n = 0;
    argv[n++] = NULL; /* the program */
    argv[n++] = "run-enclave";
    argv[n++] = "--eif-path";
    argv[n++] = (char *)cfg->eif_path;
    argv[n++] = "--cpu-count";
    argv[n++] = cpus;
    argv[n++] = "--memory";
    argv[n++] = memory;
    if (cfg->enclave_cid) {
        argv[n++] = "--enclave-cid";
        argv[n++] = cid;
    }
    if (cfg->debug_mode)
        argv[n++] = "--debug-mode";
    if (cfg->enclave_name) {
        argv[n++] = "--enclave-name";
        argv[n++] = (char *)cfg->enclave_name;
    }
    argv[n] = NULL;
    captured c;
    unsigned timeout = cli && cli->run_timeout_ms ? cli->run_timeout_ms : DEFAULT_RUN_TIMEOUT_MS;
    CL_TRY(nitro(cli, "run-enclave", argv, timeout, &c));
    int rc = cl_nitro_parse_run(c.out, c.out_len, out);
    free(c.out);
    return rc;
}

int cl_nitro_describe_enclaves(const cl_nitro_cli *cli, cl_nitro_enclave **list, size_t *count)
{
    *list = NULL;
    *count = 0;
    char *argv[] = {NULL, "describe-enclaves", NULL};
    captured c;
    CL_TRY(nitro(cli, "describe-enclaves", argv, cli && cli->timeout_ms ? cli->timeout_ms : DEFAULT_TIMEOUT_MS, &c));
    int rc = cl_nitro_parse_describe(c.out, c.out_len, list, count);
    free(c.out);
    return rc;
}

int cl_nitro_terminate_enclave(const cl_nitro_cli *cli, const char *enclave_id)
{
    CL_ENSURE(cl_nitro_id_valid(enclave_id), CL_EINVAL, "terminate-enclave: '%s' is not an enclave ID",
              enclave_id ? enclave_id : "");
    char *argv[] = {NULL, "terminate-enclave", "--enclave-id", (char *)enclave_id, NULL};
    captured c;
    CL_TRY(nitro(cli, "terminate-enclave", argv, cli && cli->timeout_ms ? cli->timeout_ms : DEFAULT_TIMEOUT_MS, &c));
    int rc = cl_nitro_parse_terminate(c.out, c.out_len, enclave_id);
    free(c.out);
    return rc;
}

void cl_nitro_default_name(const char *eif_path, char *out, size_t len)
{
    const char *base = strrchr(eif_path, '/');
    base = base ? base + 1 : eif_path;
    size_t n = strlen(base);
    /* nitro-cli strips ".eif" only (repeatedly, case-sensitively): any other
     * extension is part of the name it shows in describe-enclaves */
    while (n >= 4 && !memcmp(base + n - 4, ".eif", 4))
        n -= 4;
    snprintf(out, len, "%.*s", (int)n, base);
}

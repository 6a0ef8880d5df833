#include "cloister/core/options.h"
#include "cloister/host/watchdog.h"

#include "cloister/core/clock.h"
#include "cloister/core/log.h"
#include "test.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static char tmpdir[64];

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- state changes seen by the callback ------------------------------------------------- */

#define MAX_CHANGES 64

typedef struct changes {
    pthread_mutex_t lock;
    int n;
    int from[MAX_CHANGES], to[MAX_CHANGES];
    char reason[MAX_CHANGES][160];
} changes;

static void record(void *ctx, int from, int to, const char *reason)
{
    changes *c = ctx;
    pthread_mutex_lock(&c->lock);
    if (c->n < MAX_CHANGES) {
        c->from[c->n] = from;
        c->to[c->n] = to;
        snprintf(c->reason[c->n], sizeof c->reason[c->n], "%s", reason);
        c->n++;
    }
    pthread_mutex_unlock(&c->lock);
}

/* How many changes to `to` were seen. */
static int count_to(changes *c, int to)
{
    pthread_mutex_lock(&c->lock);
    int k = 0;
    for (int i = 0; i < c->n; i++)
        k += c->to[i] == to;
    pthread_mutex_unlock(&c->lock);
    return k;
}

static bool seen_reason(changes *c, int to, const char *fragment)
{
    pthread_mutex_lock(&c->lock);
    bool found = false;
    for (int i = 0; i < c->n && !found; i++)
        found = c->to[i] == to && strstr(c->reason[i], fragment);
    pthread_mutex_unlock(&c->lock);
    return found;
}

static bool wait_for(changes *c, int to, int times, unsigned timeout_ms)
{
    uint64_t deadline = cl_monotonic_ms() + timeout_ms;
    while (cl_monotonic_ms() < deadline) {
        if (count_to(c, to) >= times)
            return true;
        sleep_ms(10);
    }
    return false;
}

/* ---- a tiny HTTP server on a unix socket, status chosen by the test ----------------------- */

typedef struct http_server {
    int fd;
    atomic_int status;
    atomic_bool stop;
    atomic_int requests;
    _Atomic(const char *) raw; /* when set, the whole answer instead of a status */
    const char *on_post;       /* when set, a file made on each POST (before the answer) */
    atomic_int posts;
    pthread_t thread;
    char path[108];
} http_server;

static void *serve(void *arg)
{
    http_server *s = arg;
    while (!atomic_load(&s->stop)) {
        struct pollfd p = {.fd = s->fd, .events = POLLIN};
        if (poll(&p, 1, 20) <= 0)
            continue;
        int c = accept(s->fd, NULL, NULL);
        if (c < 0)
            continue;
        char buf[2048];
        size_t len = 0;
        while (len < sizeof buf - 1) {
            ssize_t r = read(c, buf + len, sizeof buf - 1 - len);
            if (r <= 0)
                break;
            len += (size_t)r;
            buf[len] = '\0';
            if (strstr(buf, "\r\n\r\n"))
                break;
        }
        atomic_fetch_add(&s->requests, 1);
        if (!strncmp(buf, "POST /enclave/drain HTTP/1.1\r\n", 30)) {
            atomic_fetch_add(&s->posts, 1);
            if (s->on_post) {
                FILE *f = fopen(s->on_post, "w");
                if (f)
                    fclose(f);
            }
        }
        char resp[256];
        const char *raw = atomic_load(&s->raw);
        int n = raw ? snprintf(resp, sizeof resp, "%s", raw)
                    : snprintf(resp, sizeof resp, "HTTP/1.1 %d Test\r\nContent-Length: 3\r\n\r\nok\n",
                               atomic_load(&s->status));
        ssize_t ignored = write(c, resp, (size_t)n);
        (void)ignored;
        close(c);
    }
    return NULL;
}

static int server_start(http_server *s, const char *name)
{
    memset(s, 0, sizeof *s);
    snprintf(s->path, sizeof s->path, "%s/%s", tmpdir, name);
    atomic_store(&s->status, 200);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", s->path);
    s->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s->fd < 0 || bind(s->fd, (struct sockaddr *)&sun, sizeof sun) < 0 || listen(s->fd, 64) < 0)
        return -1;
    return pthread_create(&s->thread, NULL, serve, s) == 0 ? 0 : -1;
}

static void server_stop(http_server *s)
{
    atomic_store(&s->stop, true);
    pthread_join(s->thread, NULL);
    close(s->fd);
    unlink(s->path);
}

static bool process_gone(int64_t pid)
{
    return pid > 0 && kill((pid_t)pid, 0) < 0 && errno == ESRCH;
}

/* ---- durations and flags ------------------------------------------------------------------ */

static void parses_durations(void)
{
    uint64_t ms;
    CHECK_OK(cl_watchdog_parse_duration("250ms", 1000000, &ms));
    CHECK(ms == 250);
    CHECK_OK(cl_watchdog_parse_duration("5s", 1000000, &ms));
    CHECK(ms == 5000);
    CHECK_OK(cl_watchdog_parse_duration("5", 1000000, &ms));
    CHECK(ms == 5000);
    CHECK_OK(cl_watchdog_parse_duration("2m", 1000000, &ms));
    CHECK(ms == 120000);
    CHECK_OK(cl_watchdog_parse_duration("1h", 10000000, &ms));
    CHECK(ms == 3600000);
    CHECK_OK(cl_watchdog_parse_duration("0", 1000, &ms));
    CHECK(ms == 0);
    static const char *const bad[] = {"", "s", "ms", "5x", "5 s", " 5s", "-1", "1.5s", "5sec", "0x10", "5S"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_ERR(cl_watchdog_parse_duration(bad[i], 1000000, &ms), CL_EINVAL, NULL);
    CHECK_ERR(cl_watchdog_parse_duration("2h", 3600000, &ms), CL_EINVAL, "maximum");
    CHECK_ERR(cl_watchdog_parse_duration("9999999999999999", UINT64_MAX, &ms), CL_EINVAL, NULL);
}

/* cl_options_set over the watchdog's table, as both commands parse it */
static int wd_set(cl_watchdog_settings *s, const char *name, const char *value)
{
    cl_opt_section section = {"the enclave's life", NULL, 0, s};
    section.opts = cl_watchdog_options(&section.count);
    cl_options spec = {.prog = "cloister watchdog", .sections = &section, .section_count = 1};
    return cl_options_set(&spec, name, value);
}

static void sets_flags(void)
{
    cl_watchdog_settings s;
    memset(&s, 0, sizeof s);
    CHECK(!cl_watchdog_settings_active(&s));
    CHECK_ERR(cl_watchdog_settings_check(&s), CL_EINVAL, "no enclave to run");
    CHECK_OK(wd_set(&s, "eif", "/opt/a.eif")); /* alias */
    CHECK(!strcmp(s.config.run.eif_path, "/opt/a.eif"));
    CHECK_OK(wd_set(&s, "run-enclave-eif", "/opt/app.eif"));
    CHECK(!strcmp(s.config.run.eif_path, "/opt/app.eif"));
    CHECK(cl_watchdog_settings_active(&s));
    CHECK_ERR(cl_watchdog_settings_check(&s), CL_EINVAL, "--cpu-count is required");
    CHECK_OK(wd_set(&s, "cpu-count", "2"));
    CHECK_OK(wd_set(&s, "memory", "512"));
    CHECK_OK(wd_set(&s, "enclave-cid", "16"));
    CHECK_OK(wd_set(&s, "debug-mode", "true"));
    CHECK_OK(wd_set(&s, "health-interval", "250ms"));
    CHECK_OK(wd_set(&s, "restart-budget", "0"));
    CHECK_OK(cl_watchdog_settings_check(&s));
    CHECK(s.config.runner == CL_WATCHDOG_NITRO_CLI && s.config.run.cpu_count == 2 && s.config.run.memory_mib == 512);
    CHECK(s.config.run.enclave_cid == 16 && s.config.run.debug_mode && s.config.health_interval_ms == 250);
    CHECK(s.config.restart_budget == 0 && s.config.restart_budget_set);
    CHECK_OK(wd_set(&s, "memory", "2G")); /* a size, in MiB */
    CHECK(s.config.run.memory_mib == 2048);
    CHECK_ERR(wd_set(&s, "forward", "x"), CL_ENOTFOUND, "not an option");
    CHECK_ERR(wd_set(&s, "cpu-count", "0"), CL_EINVAL, "--cpu-count: ");
    CHECK_ERR(wd_set(&s, "cpu-count", "1025"), CL_EINVAL, "--cpu-count: ");
    CHECK_ERR(wd_set(&s, "enclave-cid", "3"), CL_EINVAL, "--enclave-cid: ");
    CHECK_ERR(wd_set(&s, "enclave-cid", "4294967295"), CL_EINVAL, "--enclave-cid: ");
    CHECK_ERR(wd_set(&s, "memory", "lots"), CL_EINVAL, "--memory: ");
    CHECK_ERR(wd_set(&s, "memory", "0"), CL_EINVAL, "--memory: ");
    CHECK_ERR(wd_set(&s, "debug-mode", "yes"), CL_EINVAL, "--debug-mode: ");
    CHECK_ERR(wd_set(&s, "backoff-max", "1x"), CL_EINVAL, "--backoff-max: ");
    CHECK_ERR(wd_set(&s, "health-interval", "5ms"), CL_EINVAL, "--health-interval: ");
    CHECK_ERR(wd_set(&s, "health-failures", "0"), CL_EINVAL, "--health-failures: ");
    CHECK_ERR(wd_set(&s, "restart-budget", "100001"), CL_EINVAL, "--restart-budget: ");
    CHECK_ERR(wd_set(&s, "enclave-name", "--all"), CL_EINVAL, "--enclave-name: ");
    CHECK_ERR(wd_set(&s, "run-enclave-eif", ""), CL_EINVAL, "--run-enclave-eif: empty path");
    CHECK_OK(wd_set(&s, "enclave-command", "sleep 1"));
    CHECK_ERR(cl_watchdog_settings_check(&s), CL_EINVAL, "exclude each other");
    cl_watchdog_settings_free(&s);

    memset(&s, 0, sizeof s);
    CHECK_OK(wd_set(&s, "enclave-command", "sleep 1"));
    CHECK(s.config.runner == CL_WATCHDOG_LOCAL);
    CHECK_OK(wd_set(&s, "stop-grace", "2s"));
    CHECK(s.config.stop_grace_ms == 2000);
    {
        /* host's --config: numbers for counts, durations and the callback's budget alike */
        char path[] = "/tmp/cloister-wd-XXXXXX";
        int fd = mkstemp(path);
        CHECK(fd >= 0);
        static const char json[] = "{\"restart-budget\": 3, \"health-interval\": 2, \"health-failures\": 4}";
        CHECK(write(fd, json, sizeof json - 1) == (ssize_t)(sizeof json - 1));
        close(fd);
        cl_opt_section section = {NULL, NULL, 0, &s};
        section.opts = cl_watchdog_options(&section.count);
        cl_options spec = {.prog = "cloister host", .sections = &section, .section_count = 1};
        CHECK_OK(cl_options_load_json(&spec, path));
        CHECK(s.config.restart_budget == 3 && s.config.restart_budget_set && s.config.health_interval_ms == 2000 &&
              s.config.health_failures == 4);
        unlink(path);
    }
    CHECK_OK(cl_watchdog_settings_check(&s));
    CHECK_OK(wd_set(&s, "memory", "512"));
    CHECK_ERR(cl_watchdog_settings_check(&s), CL_EINVAL, "--memory applies to --run-enclave-eif");
    cl_watchdog_settings_free(&s);

    /* every listed option has help; only booleans go without ARG */
    size_t n;
    const cl_opt *t = cl_watchdog_options(&n);
    size_t listed = 0;
    for (size_t i = 0; i < n; i++) {
        CHECK((t[i].type == CL_OPT_BOOL) == (t[i].arg == NULL));
        listed += t[i].help != NULL;
    }
    CHECK(listed >= 14 && listed == n - 1); /* --eif is the hidden alias */
}

static void rejects_bad_configs(void)
{
    cl_watchdog *w = NULL;
    cl_watchdog_config c = {.runner = CL_WATCHDOG_LOCAL};
    CHECK_ERR(cl_watchdog_start(&c, &w), CL_EINVAL, "empty command");
    c.command = "sleep 1";
    c.health_url = "unix:/x,/h";
    c.health_connect = "unix:/x";
    CHECK_ERR(cl_watchdog_start(&c, &w), CL_EINVAL, "exclude each other");
    c.health_connect = NULL;
    c.health_url = "unix:/x";
    CHECK_ERR(cl_watchdog_start(&c, &w), CL_EINVAL, "ADDR,PATH");
    c.health_url = "ftp:/x,/h";
    CHECK_ERR(cl_watchdog_start(&c, &w), CL_EINVAL, "--health-url: ");
    c.health_url = "unix:/x,/a b";
    CHECK_ERR(cl_watchdog_start(&c, &w), CL_EINVAL, "spaces");
    c.health_url = NULL;
    c.health_connect = "tcp:nohost";
    CHECK_ERR(cl_watchdog_start(&c, &w), CL_EINVAL, "--health-connect: ");
    c.health_connect = NULL;
    c.backoff_initial_ms = 5000;
    c.backoff_max_ms = 1000;
    CHECK_ERR(cl_watchdog_start(&c, &w), CL_EINVAL, "--backoff-max");
    cl_watchdog_config n = {.runner = CL_WATCHDOG_NITRO_CLI, .run = {.cpu_count = 2, .memory_mib = 512}};
    CHECK_ERR(cl_watchdog_start(&n, &w), CL_EINVAL, "no EIF");
    n.run.eif_path = "/x.eif";
    n.run.enclave_cid = 2;
    CHECK_ERR(cl_watchdog_start(&n, &w), CL_EINVAL, "--enclave-cid");
    CHECK(w == NULL);
    CHECK(!strcmp(cl_watchdog_state_name(CL_ENCLAVE_BACKOFF), "backoff"));
}

/* ---- the local runner ---------------------------------------------------------------------- */

static void local_restarts_after_death(void)
{
    http_server srv;
    CHECK(server_start(&srv, "connect.sock") == 0);
    char connect[160];
    snprintf(connect, sizeof connect, "unix:%s", srv.path);
    changes ch = {.lock = PTHREAD_MUTEX_INITIALIZER};
    cl_watchdog_config c = {
        .runner = CL_WATCHDOG_LOCAL, .command = "exec sleep 30", .health_connect = connect,
        .health_interval_ms = 50, .health_failures = 2, .backoff_initial_ms = 20, .on_state = record,
        .on_state_ctx = &ch, .stop_grace_ms = 2000,
    };
    cl_watchdog *w = NULL;
    CHECK_OK(cl_watchdog_start(&c, &w));
    if (!w) {
        server_stop(&srv);
        return;
    }
    CHECK(wait_for(&ch, CL_ENCLAVE_RUNNING, 1, 3000));
    cl_watchdog_status st;
    cl_watchdog_status_get(w, &st);
    CHECK(st.state == CL_ENCLAVE_RUNNING && st.pid > 0 && st.restarts == 0 && st.enclave_id[0] == '\0');
    int64_t first = st.pid;
    kill((pid_t)first, SIGKILL);
    CHECK(wait_for(&ch, CL_ENCLAVE_RUNNING, 2, 3000));
    CHECK(seen_reason(&ch, CL_ENCLAVE_TERMINATING, "exited (killed by signal 9)"));
    cl_watchdog_status_get(w, &st);
    CHECK(st.restarts == 1 && st.pid > 0 && st.pid != first);
    CHECK(process_gone(first));
    struct pollfd p = {.fd = cl_watchdog_fd(w), .events = POLLIN};
    CHECK(poll(&p, 1, 0) == 0); /* not finished */
    cl_watchdog_stop(w);
    CHECK_OK(cl_watchdog_wait(w));
    CHECK(poll(&p, 1, 0) == 1);
    CHECK(cl_watchdog_state(w) == CL_ENCLAVE_STOPPED);
    CHECK(process_gone(st.pid));
    CHECK_OK(cl_watchdog_wait(w)); /* again: same answer */
    cl_watchdog_free(w);
    static const int expected[][2] = {
        {CL_ENCLAVE_STOPPED, CL_ENCLAVE_STARTING},     {CL_ENCLAVE_STARTING, CL_ENCLAVE_RUNNING},
        {CL_ENCLAVE_RUNNING, CL_ENCLAVE_TERMINATING},  {CL_ENCLAVE_TERMINATING, CL_ENCLAVE_BACKOFF},
        {CL_ENCLAVE_BACKOFF, CL_ENCLAVE_STARTING},     {CL_ENCLAVE_STARTING, CL_ENCLAVE_RUNNING},
        {CL_ENCLAVE_RUNNING, CL_ENCLAVE_TERMINATING},  {CL_ENCLAVE_TERMINATING, CL_ENCLAVE_STOPPED},
    };
    CHECK(ch.n == (int)(sizeof expected / sizeof expected[0]));
    for (int i = 0; i < ch.n && i < (int)(sizeof expected / sizeof expected[0]); i++) {
        if (ch.from[i] != expected[i][0] || ch.to[i] != expected[i][1])
            fprintf(stderr, "change %d: %s -> %s (%s)\n", i, cl_watchdog_state_name(ch.from[i]),
                    cl_watchdog_state_name(ch.to[i]), ch.reason[i]);
        CHECK(ch.from[i] == expected[i][0] && ch.to[i] == expected[i][1]);
    }
    CHECK(!strcmp(ch.reason[ch.n - 1], "stop requested"));
    server_stop(&srv);
}

static void local_gives_up_when_budget_spent(void)
{
    changes ch = {.lock = PTHREAD_MUTEX_INITIALIZER};
    cl_watchdog_config c = {.runner = CL_WATCHDOG_LOCAL, .command = "exit 7", .restart_budget = 1,
                            .restart_budget_set = true, .backoff_initial_ms = 10, .on_state = record,
                            .on_state_ctx = &ch};
    cl_watchdog *w = NULL;
    CHECK_OK(cl_watchdog_start(&c, &w));
    if (!w)
        return;
    struct pollfd p = {.fd = cl_watchdog_fd(w), .events = POLLIN};
    CHECK(poll(&p, 1, 5000) == 1);
    CHECK_ERR(cl_watchdog_wait(w), CL_EIO,
              "restart budget exhausted: 1 restarts within 600 s (last failure: exited (exit status 7))");
    CHECK(cl_watchdog_state(w) == CL_ENCLAVE_FAILED);
    cl_watchdog_status st;
    cl_watchdog_status_get(w, &st);
    CHECK(st.restarts == 1);
    cl_watchdog_free(w);
    CHECK(count_to(&ch, CL_ENCLAVE_STARTING) == 2);
    CHECK(count_to(&ch, CL_ENCLAVE_FAILED) == 1);

    /* budget 0: the first failure is the last */
    c.restart_budget = 0;
    CHECK_OK(cl_watchdog_start(&c, &w));
    if (!w)
        return;
    CHECK_ERR(cl_watchdog_wait(w), CL_EIO, "restart budget exhausted: 0 restarts");
    cl_watchdog_free(w);
}

static void local_window_forgets_old_restarts(void)
{
    /* one restart per 1 ms window: old restarts fall out, so it never gives up */
    changes ch = {.lock = PTHREAD_MUTEX_INITIALIZER};
    cl_watchdog_config c = {.runner = CL_WATCHDOG_LOCAL, .command = "exit 1", .restart_budget = 1,
                            .restart_budget_set = true, .restart_window_ms = 1, .backoff_initial_ms = 5,
                            .backoff_max_ms = 10, .on_state = record, .on_state_ctx = &ch};
    cl_watchdog *w = NULL;
    CHECK_OK(cl_watchdog_start(&c, &w));
    if (!w)
        return;
    CHECK(wait_for(&ch, CL_ENCLAVE_STARTING, 5, 5000));
    CHECK(cl_watchdog_state(w) != CL_ENCLAVE_FAILED);
    CHECK(seen_reason(&ch, CL_ENCLAVE_BACKOFF, "restart in 10 ms")); /* doubled up to the maximum */
    cl_watchdog_stop(w);
    CHECK_OK(cl_watchdog_wait(w));
    cl_watchdog_free(w);
    CHECK(count_to(&ch, CL_ENCLAVE_FAILED) == 0);
}

static void local_restarts_when_unhealthy(void)
{
    http_server srv;
    CHECK(server_start(&srv, "http.sock") == 0);
    char url[200];
    snprintf(url, sizeof url, "unix:%s,/enclave", srv.path);
    changes ch = {.lock = PTHREAD_MUTEX_INITIALIZER};
    cl_watchdog_config c = {.runner = CL_WATCHDOG_LOCAL, .command = "exec sleep 30", .health_url = url,
                            .health_interval_ms = 50, .health_failures = 2, .backoff_initial_ms = 20,
                            .on_state = record, .on_state_ctx = &ch};
    cl_watchdog *w = NULL;
    CHECK_OK(cl_watchdog_start(&c, &w));
    if (!w) {
        server_stop(&srv);
        return;
    }
    CHECK(wait_for(&ch, CL_ENCLAVE_RUNNING, 1, 3000));
    atomic_store(&srv.status, 404); /* below 500: still healthy */
    int before = atomic_load(&srv.requests);
    while (atomic_load(&srv.requests) < before + 3)
        sleep_ms(10);
    CHECK(count_to(&ch, CL_ENCLAVE_TERMINATING) == 0);
    atomic_store(&srv.status, 503);
    CHECK(wait_for(&ch, CL_ENCLAVE_TERMINATING, 1, 3000));
    CHECK(seen_reason(&ch, CL_ENCLAVE_TERMINATING, "unhealthy: 2 consecutive failed health checks (last: HTTP 503)"));
    atomic_store(&srv.status, 200);
    CHECK(wait_for(&ch, CL_ENCLAVE_RUNNING, 2, 3000));
    cl_watchdog_free(w); /* stops too */
    server_stop(&srv);
}

/* --drain-url: before terminating, the watchdog POSTs the drain and waits
 * for the enclave to end by itself.  The stand-in enclave ends only once
 * the drain was asked for (the server makes its file on the POST); had the
 * watchdog terminated it first, SIGTERM would have ended it without the
 * file. */
static void local_drains_before_terminating(void)
{
    http_server srv;
    CHECK(server_start(&srv, "drain.sock") == 0);
    char url[200], done[200], cmd[512];
    snprintf(url, sizeof url, "unix:%s,/enclave/drain", srv.path);
    snprintf(done, sizeof done, "%s/drained", tmpdir);
    srv.on_post = done;
    snprintf(cmd, sizeof cmd, "trap '' TERM; while [ ! -e '%s' ]; do sleep 0.02; done; echo left-after-drain", done);
    changes ch = {.lock = PTHREAD_MUTEX_INITIALIZER};
    cl_watchdog_config c = {.runner = CL_WATCHDOG_LOCAL, .command = cmd, .drain_url = url, .drain_wait_ms = 20000,
                            .stop_grace_ms = 20000, .on_state = record, .on_state_ctx = &ch};
    cl_watchdog *w = NULL;
    CHECK_OK(cl_watchdog_start(&c, &w));
    if (!w) {
        server_stop(&srv);
        return;
    }
    CHECK(wait_for(&ch, CL_ENCLAVE_RUNNING, 1, 3000));
    cl_watchdog_stop(w);
    CHECK_OK(cl_watchdog_wait(w));
    cl_watchdog_free(w);
    server_stop(&srv);
    CHECK(atomic_load(&srv.posts) == 1);
    CHECK(access(done, F_OK) == 0);
    cl_watchdog_config bad = {.runner = CL_WATCHDOG_LOCAL, .command = "sleep 1", .drain_url = "unix:/x"};
    CHECK_ERR(cl_watchdog_start(&bad, &w), CL_EINVAL, "--drain-url");
}

/* A restart of an enclave that is alive but unhealthy drains it first too. */
static void local_drains_before_a_restart(void)
{
    http_server srv;
    CHECK(server_start(&srv, "drain-restart.sock") == 0);
    char health[200], drain[200];
    snprintf(health, sizeof health, "unix:%s,/enclave/health", srv.path);
    snprintf(drain, sizeof drain, "unix:%s,/enclave/drain", srv.path);
    changes ch = {.lock = PTHREAD_MUTEX_INITIALIZER};
    cl_watchdog_config c = {.runner = CL_WATCHDOG_LOCAL, .command = "exec sleep 30", .health_url = health,
                            .health_interval_ms = 50, .health_failures = 2, .backoff_initial_ms = 20,
                            .drain_url = drain, .drain_wait_ms = 100, .on_state = record, .on_state_ctx = &ch};
    cl_watchdog *w = NULL;
    CHECK_OK(cl_watchdog_start(&c, &w));
    if (!w) {
        server_stop(&srv);
        return;
    }
    CHECK(wait_for(&ch, CL_ENCLAVE_RUNNING, 1, 3000));
    CHECK(atomic_load(&srv.posts) == 0);
    atomic_store(&srv.status, 503);
    CHECK(wait_for(&ch, CL_ENCLAVE_BACKOFF, 1, 5000));
    CHECK(atomic_load(&srv.posts) == 1); /* before the termination that led to the backoff */
    atomic_store(&srv.status, 200);
    cl_watchdog_free(w);
    server_stop(&srv);
}

/* The probe reads answers with the strict HTTP/1.1 parser: a malformed
 * answer is a failed check whatever status it claims, and a well-formed
 * one in any framing is healthy. */
static void local_malformed_answers_are_unhealthy(void)
{
    static const struct {
        const char *answer, *fragment;
    } bad[] = {
        {"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n", "not HTTP/1.x"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nok\n", "not HTTP/1.x"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 12abc\r\n\r\nok\n", "not HTTP/1.x"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n", "not HTTP/1.x"},
        {"HTTP/1.1 2000 OK\r\n\r\n", "not HTTP/1.x"},
        {"SMTP/1.1 200 OK\r\n\r\n", "not HTTP/1.x"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n", "ended inside its head"},
    };
    static const char *good[] = {
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        "HTTP/1.0 204 No Content\r\n\r\n",
        "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
    };
    http_server srv;
    CHECK(server_start(&srv, "http-bad.sock") == 0);
    char url[200];
    snprintf(url, sizeof url, "unix:%s,/enclave", srv.path);
    changes ch = {.lock = PTHREAD_MUTEX_INITIALIZER};
    cl_watchdog_config c = {.runner = CL_WATCHDOG_LOCAL, .command = "exec sleep 30", .health_url = url,
                            .health_interval_ms = 50, .health_failures = 1, .backoff_initial_ms = 20,
                            .restart_budget = 50, .restart_budget_set = true, /* one restart per case */
                            .on_state = record, .on_state_ctx = &ch};
    cl_watchdog *w = NULL;
    CHECK_OK(cl_watchdog_start(&c, &w));
    if (!w) {
        server_stop(&srv);
        return;
    }
    CHECK(wait_for(&ch, CL_ENCLAVE_RUNNING, 1, 3000));
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        atomic_store(&srv.raw, good[i]);
        int before = atomic_load(&srv.requests);
        while (atomic_load(&srv.requests) < before + 3)
            sleep_ms(10);
        if (count_to(&ch, CL_ENCLAVE_TERMINATING) != 0)
            fprintf(stderr, "a well-formed answer failed the check: %s\n", good[i]);
        CHECK(count_to(&ch, CL_ENCLAVE_TERMINATING) == 0);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int terminations = count_to(&ch, CL_ENCLAVE_TERMINATING);
        int runs = count_to(&ch, CL_ENCLAVE_RUNNING);
        atomic_store(&srv.raw, bad[i].answer);
        bool failed = wait_for(&ch, CL_ENCLAVE_TERMINATING, terminations + 1, 3000);
        if (!failed)
            fprintf(stderr, "a malformed answer passed the check: %s\n", bad[i].answer);
        CHECK(failed);
        CHECK(seen_reason(&ch, CL_ENCLAVE_TERMINATING, bad[i].fragment));
        atomic_store(&srv.raw, NULL);
        CHECK(wait_for(&ch, CL_ENCLAVE_RUNNING, runs + 1, 3000));
    }
    cl_watchdog_free(w);
    server_stop(&srv);
}

/* ---- the nitro-cli runner, with a fake nitro-cli ----------------------------------------- */

static void nitro_runs_and_terminates(void)
{
    char fake[128], calls[128], running[128];
    snprintf(fake, sizeof fake, "%s/nitro-cli", tmpdir);
    snprintf(calls, sizeof calls, "%s/calls", tmpdir);
    snprintf(running, sizeof running, "%s/running", tmpdir);
    FILE *f = fopen(fake, "w");
    CHECK(f != NULL);
    if (!f)
        return;
    fprintf(f,
            "#!/bin/sh\n"
            "echo \"$@\" >> %s\n"
            "ID=i-0123456789abcdef0-enc0000000000000001\n"
            "case $1 in\n"
            "run-enclave) echo 'Start allocating memory...'; touch %s\n"
            "  echo \"{\\\"EnclaveName\\\": \\\"app\\\", \\\"EnclaveID\\\": \\\"$ID\\\", \\\"ProcessID\\\": 4242, "
            "\\\"EnclaveCID\\\": 16, \\\"NumberOfCPUs\\\": 2, \\\"CPUIDs\\\": [1, 3], \\\"MemoryMiB\\\": 512}\" ;;\n"
            "describe-enclaves) [ -e %s ] || { echo '[]'; exit 0; }; echo \"[{\\\"EnclaveName\\\": \\\"app\\\", \\\"EnclaveID\\\": \\\"$ID\\\", "
            "\\\"ProcessID\\\": 4242, \\\"EnclaveCID\\\": 16, \\\"NumberOfCPUs\\\": 2, \\\"CPUIDs\\\": [1, 3], "
            "\\\"MemoryMiB\\\": 512, \\\"State\\\": \\\"RUNNING\\\", \\\"Flags\\\": \\\"NONE\\\"}]\" ;;\n"
            "terminate-enclave) rm -f %s; echo \"{\\\"EnclaveName\\\": \\\"app\\\", \\\"EnclaveID\\\": \\\"$3\\\", "
            "\\\"Terminated\\\": true}\" ;;\n"
            "esac\n",
            calls, running, running, running);
    fclose(f);
    chmod(fake, 0700);
    changes ch = {.lock = PTHREAD_MUTEX_INITIALIZER};
    cl_watchdog_config c = {.runner = CL_WATCHDOG_NITRO_CLI, .nitro = {.path = fake},
                            .run = {.eif_path = "/opt/app.eif", .cpu_count = 2, .memory_mib = 512},
                            .health_interval_ms = 30, .on_state = record, .on_state_ctx = &ch};
    cl_watchdog *w = NULL;
    CHECK_OK(cl_watchdog_start(&c, &w));
    if (!w)
        return;
    CHECK(wait_for(&ch, CL_ENCLAVE_RUNNING, 1, 3000));
    cl_watchdog_status st;
    cl_watchdog_status_get(w, &st);
    CHECK(!strcmp(st.enclave_id, "i-0123456789abcdef0-enc0000000000000001") && st.cid == 16 && st.pid == 4242);
    sleep_ms(150); /* a few describe-enclaves */
    CHECK(cl_watchdog_state(w) == CL_ENCLAVE_RUNNING);
    cl_watchdog_stop(w);
    CHECK_OK(cl_watchdog_wait(w));
    cl_watchdog_free(w);
    FILE *in = fopen(calls, "r");
    CHECK(in != NULL);
    if (!in)
        return;
    char line[256], first[256] = "", last[256] = "";
    int describes = 0;
    while (fgets(line, sizeof line, in)) {
        if (!first[0] && strncmp(line, "describe-enclaves", 17) != 0)
            snprintf(first, sizeof first, "%s", line);
        snprintf(last, sizeof last, "%s", line);
        describes += !strncmp(line, "describe-enclaves", 17);
    }
    fclose(in);
    CHECK(!strcmp(first, "run-enclave --eif-path /opt/app.eif --cpu-count 2 --memory 512\n"));
    CHECK(!strcmp(last, "terminate-enclave --enclave-id i-0123456789abcdef0-enc0000000000000001\n"));
    CHECK(describes >= 2);
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/cloister-wd.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    cl_log_set_level(CL_LOG_WARN);
    RUN(parses_durations);
    RUN(sets_flags);
    RUN(rejects_bad_configs);
    RUN(local_restarts_after_death);
    RUN(local_gives_up_when_budget_spent);
    RUN(local_window_forgets_old_restarts);
    RUN(local_restarts_when_unhealthy);
    RUN(local_malformed_answers_are_unhealthy);
    RUN(local_drains_before_terminating);
    RUN(local_drains_before_a_restart);
    RUN(nitro_runs_and_terminates);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    return test_summary();
}

/* core/small_server: bounded connections, every connection thread joined
 * (thread-local destructors included) before cl_small_server_run returns. */
#include "cloister/core/small_server.h"
#include "test.h"

#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static pthread_key_t tls_key;
static atomic_int served, destructed, refused_count;
static int stop_pipe[2];

/* Runs at each connection thread's exit, after serve() returned: slow on
 * purpose, as OpenSSL's thread-local cleanup can be. */
static void tls_destructor(void *p)
{
    (void)p;
    poll(NULL, 0, 50);
    atomic_fetch_add(&destructed, 1);
}

static void serve(void *arg, int fd, size_t listener, unsigned long id)
{
    (void)arg;
    (void)listener;
    (void)id;
    pthread_setspecific(tls_key, &served);
    atomic_fetch_add(&served, 1);
    char b;
    /* until the peer closes or the server shuts the connection down */
    while (read(fd, &b, 1) > 0)
        ;
}

static void refused(void *arg, unsigned long id, const char *reason)
{
    (void)arg;
    (void)id;
    CHECK(strstr(reason, "too many") != NULL);
    atomic_fetch_add(&refused_count, 1);
}

typedef struct run_args {
    cl_small_server_config config;
    int rc;
} run_args;

static void *run(void *arg)
{
    run_args *a = arg;
    a->rc = cl_small_server_run(&a->config);
    return NULL;
}

static int connect_to(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void joined_on_stop(void)
{
    char dir[] = "/tmp/cl-small-XXXXXX", path[sizeof dir + 8];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(path, sizeof path, "%s/s.sock", dir);
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    CHECK(bind(lfd, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(lfd, 16) == 0);
    CHECK(pipe(stop_pipe) == 0);
    CHECK(pthread_key_create(&tls_key, tls_destructor) == 0);
    run_args a = {.config = {.listen_fds = &lfd, .listen_count = 1, .stop_fd = stop_pipe[0], .max_connections = 3,
                             .serve = serve, .refused = refused}};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, run, &a) == 0);
    int c[5];
    for (int i = 0; i < 5; i++)
        c[i] = connect_to(path);
    /* three are served and stay open; the other two are refused (closed) */
    for (int i = 0; i < 200 && (atomic_load(&served) < 3 || atomic_load(&refused_count) < 2); i++)
        poll(NULL, 0, 10);
    CHECK(atomic_load(&served) == 3);
    CHECK(atomic_load(&refused_count) == 2);
    /* one client leaves: its slot is reused */
    close(c[0]);
    c[0] = -1;
    int again = -1;
    for (int i = 0; i < 200 && atomic_load(&served) < 4; i++) {
        if (again < 0 || atomic_load(&refused_count) > 2) {
            if (again >= 0)
                close(again);
            atomic_store(&refused_count, 2);
            again = connect_to(path);
        }
        poll(NULL, 0, 10);
    }
    CHECK(atomic_load(&served) == 4);
    /* stop while three connections are open: run returns only after every
     * thread has ended, its thread-local destructor included */
    CHECK(write(stop_pipe[1], "x", 1) == 1);
    pthread_join(t, NULL);
    CHECK(a.rc == 0);
    CHECK(atomic_load(&destructed) == atomic_load(&served));
    for (int i = 0; i < 5; i++)
        if (c[i] >= 0)
            close(c[i]);
    close(again);
    close(lfd);
    close(stop_pipe[0]);
    close(stop_pipe[1]);
    unlink(path);
    rmdir(dir);
}

static void bad_config(void)
{
    int fd = 0;
    cl_small_server_config c = {.listen_fds = &fd, .listen_count = 0, .max_connections = 1, .serve = serve};
    CHECK_ERR(cl_small_server_run(&c), CL_EINVAL, "listeners");
    c.listen_count = 1;
    c.max_connections = 0;
    CHECK_ERR(cl_small_server_run(&c), CL_EINVAL, "listeners");
}

int main(void)
{
    RUN(joined_on_stop);
    RUN(bad_config);
    return test_summary();
}

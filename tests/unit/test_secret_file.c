/* The strict reader for private keys, PINs and master keys: the bytes,
 * nothing through a symbolic link or from anything but a regular file,
 * nothing over the cap, and the buffer wiped when freed (free is wrapped at
 * link time, -Wl,--wrap=free: the wrapper sees the bytes just before the
 * allocator gets them back). */
#include "cloister/core/secret_file.h"
#include "test.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[] = "/tmp/cloister-secret.XXXXXX";

/* ---- free, watched ----------------------------------------------------------------- */
void __real_free(void *p);
void __wrap_free(void *p);
static const void *watched;
static size_t watched_len;
static int watched_freed, watched_dirty;

void __wrap_free(void *p)
{
    if (p && p == watched) {
        watched_freed++;
        const unsigned char *b = p;
        for (size_t i = 0; i < watched_len; i++)
            if (b[i])
                watched_dirty++;
        watched = NULL;
    }
    __real_free(p);
}

static void put(const char *name, const char *content, size_t len, mode_t mode)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    CHECK(fd >= 0);
    CHECK(write(fd, content, len) == (ssize_t)len);
    close(fd);
}

static const char *at(const char *name)
{
    static char path[4][256];
    static int k;
    k = (k + 1) % 4;
    snprintf(path[k], sizeof path[k], "%s/%s", dir, name);
    return path[k];
}

static void reads_the_bytes(void)
{
    static const char key[] = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI\0binary\n-----END PRIVATE KEY-----\n";
    put("key.pem", key, sizeof key - 1, 0600);
    cl_buf b = CL_BUF_INIT;
    CHECK_OK(cl_read_secret_file(at("key.pem"), 4096, &b));
    CHECK(b.len == sizeof key - 1 && !memcmp(b.data, key, b.len));
    /* the cap is inclusive */
    CHECK_OK(cl_read_secret_file(at("key.pem"), sizeof key - 1, &b));
    CHECK(b.len == sizeof key - 1);
    /* an empty file is empty, not an error (the caller says what it needs) */
    put("empty", "", 0, 0600);
    CHECK_OK(cl_read_secret_file(at("empty"), 10, &b));
    CHECK(b.len == 0);
    cl_buf_free(&b);
}

static void refuses_what_is_not_the_file(void)
{
    put("pin", "1234\n", 5, 0600);
    char link_path[300];
    snprintf(link_path, sizeof link_path, "%s/pin-link", dir);
    CHECK(symlink(at("pin"), link_path) == 0);
    cl_buf b = CL_BUF_INIT;
    CHECK_OK(cl_buf_append(&b, "old", 3));
    CHECK_ERR(cl_read_secret_file(link_path, 100, &b), CL_EIO, "a symbolic link");
    CHECK(b.len == 0 && b.data == NULL); /* wiped and freed on failure */
    /* a FIFO (would block a plain reader) and a directory */
    CHECK(mkfifo(at("fifo"), 0600) == 0);
    CHECK_ERR(cl_read_secret_file(at("fifo"), 100, &b), CL_EIO, "not a regular file");
    CHECK_ERR(cl_read_secret_file(dir, 100, &b), CL_EIO, "not a regular file");
    CHECK_ERR(cl_read_secret_file("/dev/zero", 100, &b), CL_EIO, "not a regular file");
    CHECK_ERR(cl_read_secret_file(at("missing"), 100, &b), CL_EIO, "missing: No such file");
}

static void refuses_oversize(void)
{
    char big[5000];
    memset(big, 'k', sizeof big);
    put("big", big, sizeof big, 0600);
    cl_buf b = CL_BUF_INIT;
    CHECK_ERR(cl_read_secret_file(at("big"), 4999, &b), CL_ELIMIT, "larger than 4999 bytes");
    CHECK(b.len == 0 && b.data == NULL);
    CHECK(strstr(cl_error_message(), "/big") != NULL);
}

static void wiped_on_free(void)
{
    char secret[100];
    memset(secret, 'S', sizeof secret);
    put("master.key", secret, sizeof secret, 0600);
    cl_buf b = CL_BUF_INIT;
    CHECK_OK(cl_read_secret_file(at("master.key"), 4096, &b));
    CHECK(b.len == sizeof secret && b.data[0] == 'S');
    watched = b.data;
    watched_len = b.cap;
    watched_freed = watched_dirty = 0;
    cl_buf_free(&b);
    CHECK(watched_freed == 1);
    CHECK(watched_dirty == 0);
    /* and on the error path: a read that turns out too large */
    char big[300];
    memset(big, 'S', sizeof big);
    put("grown", big, sizeof big, 0600);
    CHECK_OK(cl_read_secret_file(at("grown"), 4096, &b));
    watched = b.data;
    watched_len = b.cap;
    watched_freed = watched_dirty = 0;
    CHECK_ERR(cl_read_secret_file(at("grown"), 10, &b), CL_ELIMIT, NULL); /* frees the previous content first */
    CHECK(watched_freed == 1 && watched_dirty == 0);
    watched = NULL;
}

int main(void)
{
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(reads_the_bytes);
    RUN(refuses_what_is_not_the_file);
    RUN(refuses_oversize);
    RUN(wiped_on_free);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return test_summary();
}

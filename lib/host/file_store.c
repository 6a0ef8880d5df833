/* The host's file store: objects in one directory with compare-and-swap
 * writes, for the enclave's ACME store (file:DIR).  One mutex serialises
 * every read-compare-write, so two enclaves racing for a lease see one
 * winner. */
#include "cloister/host/file_store.h"

#include "cloister/core/encoding.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct cl_file_store {
    char *dir;
    int dir_fd;
    pthread_mutex_t lock;
};

int cl_file_store_open(const char *dir, cl_file_store **out)
{
    *out = NULL;
    CL_ENSURE(dir && dir[0] == '/', CL_EINVAL, "the file store's directory must be an absolute path");
    CL_ENSURE(strlen(dir) < 1024, CL_EINVAL, "the file store's directory path is too long");
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    CL_ENSURE(fd >= 0, CL_EIO, "%s: %s", dir, strerror(errno));
    cl_file_store *fs = calloc(1, sizeof *fs);
    char *copy = strdup(dir);
    if (!fs || !copy) {
        free(fs);
        free(copy);
        close(fd);
        return cl_error_set(CL_ENOMEM, "out of memory");
    }
    /* the enclave names the directory as it was given, without a trailing / */
    size_t n = strlen(copy);
    while (n > 1 && copy[n - 1] == '/')
        copy[--n] = '\0';
    fs->dir = copy;
    fs->dir_fd = fd;
    pthread_mutex_init(&fs->lock, NULL);
    *out = fs;
    return CL_OK;
}

void cl_file_store_free(cl_file_store *fs)
{
    if (!fs)
        return;
    close(fs->dir_fd);
    pthread_mutex_destroy(&fs->lock);
    free(fs->dir);
    free(fs);
}

static bool key_valid(const char *k)
{
    size_t n = strlen(k);
    if (n < 1 || n > CL_FILE_STORE_KEY_MAX || k[0] == '.')
        return false;
    for (const char *p = k; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '.' ||
              *p == '_' || *p == '-'))
            return false;
    return true;
}

static void version_of(const uint8_t *data, size_t len, char out[65])
{
    uint8_t md[32];
    unsigned n = 0;
    if (EVP_Digest(data, len, md, &n, EVP_sha256(), NULL) != 1 || n != sizeof md)
        memset(md, 0, sizeof md);
    for (size_t i = 0; i < sizeof md; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

/* The object's bytes; CL_ENOTFOUND when there is none. */
static int read_object(cl_file_store *fs, const char *key, cl_buf *out)
{
    int fd = openat(fs->dir_fd, key, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT)
        return CL_ENOTFOUND;
    CL_ENSURE(fd >= 0, CL_EIO, "%s/%s: %s", fs->dir, key, strerror(errno));
    struct stat st;
    int rc = CL_OK;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        rc = cl_error_set(CL_EIO, "%s/%s is not a regular file", fs->dir, key);
    else if (st.st_size > CL_FILE_STORE_OBJECT_MAX)
        rc = cl_error_set(CL_ELIMIT, "%s/%s is larger than %d bytes", fs->dir, key, CL_FILE_STORE_OBJECT_MAX);
    while (rc == CL_OK) {
        if (cl_buf_reserve(out, 4096) < 0) {
            rc = cl_error_set(CL_ENOMEM, "out of memory");
            break;
        }
        ssize_t n = read(fd, out->data + out->len, out->cap - out->len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            rc = cl_error_set(CL_EIO, "%s/%s: %s", fs->dir, key, strerror(errno));
        if (n <= 0)
            break;
        out->len += (size_t)n;
        if (out->len > CL_FILE_STORE_OBJECT_MAX)
            rc = cl_error_set(CL_ELIMIT, "%s/%s grew past %d bytes", fs->dir, key, CL_FILE_STORE_OBJECT_MAX);
    }
    close(fd);
    return rc;
}

/* A temporary file, fsync, rename over the key, fsync of the directory. */
static int write_object(cl_file_store *fs, const char *key, const uint8_t *data, size_t len)
{
    uint8_t rnd[8];
    CL_ENSURE(RAND_bytes(rnd, sizeof rnd) == 1, CL_EIO, "no random bytes");
    char tmp[CL_FILE_STORE_KEY_MAX + 40];
    snprintf(tmp, sizeof tmp, ".tmp.%02x%02x%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3], rnd[4],
             rnd[5], rnd[6], rnd[7]);
    int fd = openat(fs->dir_fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    CL_ENSURE(fd >= 0, CL_EIO, "%s/%s: %s", fs->dir, tmp, strerror(errno));
    size_t done = 0;
    int rc = CL_OK;
    while (done < len) {
        ssize_t n = write(fd, data + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = cl_error_set(CL_EIO, "writing %s/%s: %s", fs->dir, tmp, strerror(errno));
            break;
        }
        done += (size_t)n;
    }
    if (rc == CL_OK && fsync(fd) != 0)
        rc = cl_error_set(CL_EIO, "fsync %s/%s: %s", fs->dir, tmp, strerror(errno));
    close(fd);
    if (rc == CL_OK && renameat(fs->dir_fd, tmp, fs->dir_fd, key) != 0)
        rc = cl_error_set(CL_EIO, "rename to %s/%s: %s", fs->dir, key, strerror(errno));
    if (rc < 0)
        unlinkat(fs->dir_fd, tmp, 0);
    else
        fsync(fs->dir_fd);
    return rc;
}

static int answer(cl_buf *reply, int *status, int code, json_t *body)
{
    *status = code;
    char *t = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    CL_ENSURE(t, CL_ENOMEM, "out of memory");
    cl_buf_reset(reply);
    int rc = cl_buf_append(reply, t, strlen(t));
    free(t);
    return rc;
}

static int refuse(cl_buf *reply, int *status, int code, const char *fmt, const char *arg)
{
    char msg[512];
    snprintf(msg, sizeof msg, fmt, arg);
    return answer(reply, status, code, json_pack("{ss}", "error", msg));
}

static int handle_locked(cl_file_store *fs, const char *op, json_t *req, int *status, cl_buf *reply)
{
    const char *dir = json_string_value(json_object_get(req, "dir"));
    const char *key = json_string_value(json_object_get(req, "key"));
    json_t *expect_j = json_object_get(req, "expect");
    const char *expect = json_string_value(expect_j);
    if (!dir || !key)
        return refuse(reply, status, 400, "%s needs \"dir\" and \"key\" strings", op);
    if (strcmp(dir, fs->dir))
        return refuse(reply, status, 404, "this file store serves %s, not the directory asked for", fs->dir);
    if (!key_valid(key))
        return refuse(reply, status, 400, "%s: a key is 1..160 of [A-Za-z0-9._-], not starting with '.'", op);
    if (expect_j && !expect)
        return refuse(reply, status, 400, "%s: \"expect\" is a string", op);

    cl_buf cur = CL_BUF_INIT, data = CL_BUF_INIT;
    int rc = read_object(fs, key, &cur);
    bool exists = rc == CL_OK;
    char version[65] = "";
    if (rc < 0 && rc != CL_ENOTFOUND) {
        rc = refuse(reply, status, 500, "%s", cl_error_message());
        goto out;
    }
    if (exists)
        version_of(cur.data, cur.len, version);
    if (!strcmp(op, "get")) {
        if (!exists) {
            rc = refuse(reply, status, 404, "no object %s", key);
            goto out;
        }
        cl_buf b64 = CL_BUF_INIT;
        rc = cl_base64_encode(cur.data, cur.len, &b64);
        if (rc == CL_OK)
            rc = answer(reply, status, 200,
                        json_pack("{ssss}", "version", version, "data", b64.data ? (const char *)b64.data : ""));
        cl_buf_free(&b64);
        goto out;
    }
    if (expect && (expect[0] ? !exists || strcmp(expect, version) : exists)) {
        rc = refuse(reply, status, 412, "%s: the object is not the one expected", key);
        goto out;
    }
    if (!strcmp(op, "put")) {
        json_t *d = json_object_get(req, "data");
        if (!json_is_string(d) ||
            cl_base64_decode((const uint8_t *)json_string_value(d), json_string_length(d), &data) < 0) {
            rc = refuse(reply, status, 400, "%s: \"data\" is not base64", key);
            goto out;
        }
        if (data.len > CL_FILE_STORE_OBJECT_MAX) {
            rc = refuse(reply, status, 413, "%s: more than 256 KiB", key);
            goto out;
        }
        rc = write_object(fs, key, data.data, data.len);
        if (rc < 0) {
            rc = refuse(reply, status, 500, "%s", cl_error_message());
            goto out;
        }
        version_of(data.data, data.len, version);
        rc = answer(reply, status, 200, json_pack("{ss}", "version", version));
    } else {
        if (!exists) {
            rc = expect ? refuse(reply, status, 404, "no object %s", key) : answer(reply, status, 200, json_object());
            goto out;
        }
        if (unlinkat(fs->dir_fd, key, 0) != 0) {
            rc = refuse(reply, status, 500, "cannot remove the object: %s", strerror(errno));
            goto out;
        }
        fsync(fs->dir_fd);
        rc = answer(reply, status, 200, json_object());
    }
out:
    cl_buf_free(&cur);
    cl_buf_free(&data);
    return rc;
}

int cl_file_store_handle(cl_file_store *fs, const char *op, const uint8_t *body, size_t len, int *status,
                         cl_buf *reply)
{
    if (strcmp(op, "get") && strcmp(op, "put") && strcmp(op, "delete"))
        return refuse(reply, status, 404, "no operation '%.32s' (get, put, delete)", op);
    if (len > CL_FILE_STORE_REQUEST_MAX)
        return refuse(reply, status, 413, "%s: the request is too large", op);
    json_error_t e;
    json_t *req = len ? json_loadb((const char *)body, len, JSON_REJECT_DUPLICATES, &e) : NULL;
    if (!json_is_object(req)) {
        json_decref(req);
        return refuse(reply, status, 400, "%s: the request is not a JSON object", op);
    }
    pthread_mutex_lock(&fs->lock);
    int rc = handle_locked(fs, op, req, status, reply);
    pthread_mutex_unlock(&fs->lock);
    json_decref(req);
    return rc;
}

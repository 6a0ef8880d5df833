/* Deterministic newc cpio archives (see the header for what is fixed). */
#include "cloister/host/cpio.h"

#include "cloister/core/encoding.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CPIO_MAX_PATH 4096
#define CPIO_MAX_FILE (1ull << 32) /* newc's size field is 32 bits */

void cl_cpio_init(cl_cpio *a, cl_buf *out, uint32_t mtime)
{
    a->out = out;
    a->mtime = mtime;
    a->next_ino = 1;
}

static int pad4(cl_buf *b)
{
    static const uint8_t zeros[4] = {0};
    return cl_buf_append(b, zeros, (4 - b->len % 4) % 4);
}

int cl_cpio_add(cl_cpio *a, const char *path, uint32_t mode, const void *data, size_t len)
{
    size_t name_len = strlen(path) + 1;
    CL_ENSURE(name_len > 1 && name_len <= CPIO_MAX_PATH, CL_EINVAL, "cpio: bad path length for '%s'", path);
    CL_ENSURE(len < CPIO_MAX_FILE, CL_ELIMIT, "cpio: %s is larger than 4 GiB", path);
    uint32_t nlink = S_ISDIR(mode) ? 2 : 1;
    char header[111];
    /* magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
     * devminor, rdevmajor, rdevminor, namesize, check */
    snprintf(header, sizeof header, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
             a->next_ino++, mode, 0u, 0u, nlink, a->mtime, (unsigned)len, 0u, 0u, 0u, 0u,
             (unsigned)name_len, 0u);
    CL_TRY(cl_buf_append(a->out, header, 110));
    CL_TRY(cl_buf_append(a->out, path, name_len));
    CL_TRY(pad4(a->out));
    if (len)
        CL_TRY(cl_buf_append(a->out, data, len));
    return pad4(a->out);
}

static int by_name(const void *x, const void *y)
{
    return strcmp(*(char *const *)x, *(char *const *)y);
}

static int add_file(cl_cpio *a, const char *fs_path, const char *name, const struct stat *st)
{
    uint32_t mode = S_IFREG | ((st->st_mode & 0111) ? 0755 : 0644);
    cl_buf content = CL_BUF_INIT;
    int rc = cl_read_file(fs_path, (size_t)CPIO_MAX_FILE - 1, &content);
    if (rc == CL_OK)
        rc = cl_cpio_add(a, name, mode, content.data, content.len);
    cl_buf_free(&content);
    return rc;
}

static int add_dir(cl_cpio *a, const char *fs_dir, const char *prefix, int depth)
{
    CL_ENSURE(depth < 64, CL_ELIMIT, "cpio: %s is nested more than 64 deep", fs_dir);
    DIR *d = opendir(fs_dir);
    if (!d)
        return cl_error_set(CL_EIO, "cpio: cannot open directory %s: %s", fs_dir, strerror(errno));
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = CL_OK;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            char **grown = realloc(names, cap * sizeof *names);
            if (!grown)
                CL_FAIL_OUT(CL_ENOMEM, "out of memory");
            names = grown;
        }
        if (!(names[n] = strdup(de->d_name)))
            CL_FAIL_OUT(CL_ENOMEM, "out of memory");
        n++;
    }
    qsort(names, n, sizeof *names, by_name);
    for (size_t i = 0; i < n; i++) {
        char fs_path[CPIO_MAX_PATH], name[CPIO_MAX_PATH];
        if ((size_t)snprintf(fs_path, sizeof fs_path, "%s/%s", fs_dir, names[i]) >= sizeof fs_path ||
            (size_t)snprintf(name, sizeof name, "%s%s", prefix, names[i]) >= sizeof name)
            CL_FAIL_OUT(CL_ELIMIT, "cpio: path too long under %s", fs_dir);
        struct stat st;
        if (lstat(fs_path, &st) < 0)
            CL_FAIL_OUT(CL_EIO, "cpio: %s: %s", fs_path, strerror(errno));
        if (S_ISDIR(st.st_mode)) {
            CL_TRY_OUT(cl_cpio_add(a, name, S_IFDIR | 0755, NULL, 0));
            char sub_prefix[CPIO_MAX_PATH];
            if ((size_t)snprintf(sub_prefix, sizeof sub_prefix, "%s/", name) >= sizeof sub_prefix)
                CL_FAIL_OUT(CL_ELIMIT, "cpio: path too long: %s", name);
            CL_TRY_OUT(add_dir(a, fs_path, sub_prefix, depth + 1));
        } else if (S_ISREG(st.st_mode)) {
            CL_TRY_OUT(add_file(a, fs_path, name, &st));
        } else if (S_ISLNK(st.st_mode)) {
            char target[CPIO_MAX_PATH];
            ssize_t t = readlink(fs_path, target, sizeof target);
            if (t < 0 || (size_t)t >= sizeof target)
                CL_FAIL_OUT(CL_EIO, "cpio: cannot read link %s", fs_path);
            CL_TRY_OUT(cl_cpio_add(a, name, S_IFLNK | 0777, target, (size_t)t));
        } else {
            CL_FAIL_OUT(CL_EINVAL,
                        "cpio: %s is not a directory, regular file or symbolic link (device nodes, "
                        "sockets and FIFOs are not packed)",
                        fs_path);
        }
    }
out:
    closedir(d);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return rc;
}

int cl_cpio_add_tree(cl_cpio *a, const char *dir, const char *prefix)
{
    struct stat st;
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode))
        return cl_error_set(CL_EINVAL, "cpio: %s is not a directory", dir);
    return add_dir(a, dir, prefix ? prefix : "", 0);
}

int cl_cpio_finish(cl_cpio *a)
{
    uint32_t saved = a->mtime;
    a->mtime = 0;
    int rc = cl_cpio_add(a, "TRAILER!!!", 0, NULL, 0);
    a->mtime = saved;
    return rc;
}

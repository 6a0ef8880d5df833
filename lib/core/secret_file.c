#include "cloister/core/secret_file.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int cl_read_secret_file(const char *path, size_t max, cl_buf *out)
{
    cl_buf_free(out);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        if (errno == ELOOP)
            return cl_error_set(CL_EIO, "%s: a symbolic link (a secret is read only from the file itself)", path);
        return cl_error_set(CL_EIO, "cannot open %s: %s", path, strerror(errno));
    }
    int rc = CL_OK;
    struct stat st;
    if (fstat(fd, &st) < 0)
        CL_FAIL_OUT(CL_EIO, "cannot stat %s: %s", path, strerror(errno));
    CL_ENSURE_OUT(S_ISREG(st.st_mode), CL_EIO, "%s: not a regular file", path);
    CL_ENSURE_OUT((uint64_t)st.st_size <= max, CL_ELIMIT, "%s: larger than %zu bytes", path, max);
    /* one allocation of the final size (plus one byte to see the end): a
     * growing buffer would leave nothing behind either, but needs none */
    CL_TRY_OUT(cl_buf_reserve(out, (size_t)st.st_size + 1));
    for (;;) {
        if (out->len == out->cap)
            CL_FAIL_OUT(CL_ELIMIT, "%s: grew while being read (now more than %zu bytes)", path, out->len - 1);
        ssize_t r = read(fd, out->data + out->len, out->cap - out->len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            CL_FAIL_OUT(CL_EIO, "cannot read %s: %s", path, strerror(errno));
        if (r == 0)
            break;
        out->len += (size_t)r;
    }
    CL_ENSURE_OUT(out->len <= max, CL_ELIMIT, "%s: larger than %zu bytes", path, max);
out:
    close(fd);
    if (rc < 0)
        cl_buf_free(out);
    return rc;
}

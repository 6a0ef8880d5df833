/* Deterministic cpio archives (the "newc" format the Linux kernel unpacks
 * as an initramfs), for enclave images that rebuild byte for byte.
 *
 * Determinism: entries in byte order of their paths, depth first; owner and
 * group 0; every time the caller's (SOURCE_DATE_EPOCH); inode numbers
 * counted from 1 in archive order; no device numbers; hard links stored as
 * separate files; permissions normalised (directories and executables 0755,
 * other files 0644, symbolic links 0777) so that the builder's umask or
 * checkout does not leak into the bytes. */
#ifndef CLOISTER_HOST_CPIO_H
#define CLOISTER_HOST_CPIO_H

#pragma GCC visibility push(default)

#include "cloister/core/buf.h"
#include "cloister/core/error.h"

#include <stdint.h>

typedef struct cl_cpio {
    cl_buf *out;
    uint32_t mtime;
    uint32_t next_ino;
} cl_cpio;

void cl_cpio_init(cl_cpio *a, cl_buf *out, uint32_t mtime);

/* One entry; mode carries the file type bits (S_IFDIR, S_IFREG, S_IFLNK).
 * For a symbolic link, data is its target. */
CL_MUST_CHECK int cl_cpio_add(cl_cpio *a, const char *path, uint32_t mode, const void *data, size_t len);

/* Everything under dir, each path prefixed with prefix ("" or "rootfs/";
 * prefix's own directories are not added).  Anything but directories,
 * regular files and symbolic links is refused with its path named. */
CL_MUST_CHECK int cl_cpio_add_tree(cl_cpio *a, const char *dir, const char *prefix);

/* The trailer entry; the archive is complete after it. */
CL_MUST_CHECK int cl_cpio_finish(cl_cpio *a);

#pragma GCC visibility pop

#endif

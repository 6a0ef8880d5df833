/* The one way a secret file is read: private keys, PINs, master keys.
 * Straight from the file descriptor into a cl_buf (wiped when freed), never
 * through stdio, whose buffers are freed without being wiped. */
#ifndef CLOISTER_SECRET_FILE_H
#define CLOISTER_SECRET_FILE_H

#pragma GCC visibility push(default)

#include "cloister/core/buf.h"
#include "cloister/core/error.h"

#include <stddef.h>

/* Reads the regular file at path into out (reset first), at most max bytes.
 * Refused, with the path in the message: a symbolic link as the last
 * component (O_NOFOLLOW: a link swapped in by someone else could point the
 * secret anywhere), anything but a regular file (a FIFO would block, a
 * device could be endless), a file larger than max.  On any error out is
 * wiped and empty. */
CL_MUST_CHECK int cl_read_secret_file(const char *path, size_t max, cl_buf *out);

#pragma GCC visibility pop

#endif

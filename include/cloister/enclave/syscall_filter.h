/* The enclave daemon's seccomp filter (-seccomp): the system calls it
 * needs once started, listed in one table (lib/enclave/syscall_filter.c),
 * installed on every thread at once (TSYNC) after the start. */
#ifndef CLOISTER_ENCLAVE_SYSCALL_FILTER_H
#define CLOISTER_ENCLAVE_SYSCALL_FILTER_H

#pragma GCC visibility push(default)

#include "cloister/core/error.h"

#include <stddef.h>

typedef enum cl_seccomp_mode {
    CL_SECCOMP_OFF,
    CL_SECCOMP_LOG,     /* calls outside the list are allowed and logged by the kernel (SECCOMP_RET_LOG) */
    CL_SECCOMP_ENFORCE, /* a call outside the list kills the process (SECCOMP_RET_KILL_PROCESS) */
} cl_seccomp_mode;

/* "off", "log" or "enforce". */
CL_MUST_CHECK int cl_seccomp_mode_parse(const char *text, cl_seccomp_mode *out);
const char *cl_seccomp_mode_name(cl_seccomp_mode m);
/* Installs the filter on the calling process's every thread (and sets
 * no_new_privs).  Nothing for CL_SECCOMP_OFF. */
CL_MUST_CHECK int cl_syscall_filter_install(cl_seccomp_mode mode);
/* How many system calls the list allows on this architecture. */
size_t cl_syscall_filter_size(void);

#pragma GCC visibility pop

#endif

/* Libraries loaded when first needed, not at start.
 *
 * The enclave daemon's idle memory matters (an enclave has little), and
 * libcurl alone maps some thirty libraries (GnuTLS, Kerberos, LDAP, ...)
 * whose relocations touch ~3.5 MiB at every start, though only the KMS
 * client uses it; likewise SQLite for kms-local only.  So those callers go
 * through function tables filled by dlopen() on first use. */
#ifndef CLOISTER_LIB_LAZY_H
#define CLOISTER_LIB_LAZY_H

#include "cloister/core/error.h"

#include <stddef.h>

/* dlopen()s soname once (thread-safe) and fills table[i] with names[i];
 * CL_EIO naming the library or the symbol when that fails. */
CL_MUST_CHECK int cl_lazy_load(const char *soname, const char *const *names, void **table, size_t count,
                               int *state);

#endif

/* The enclave daemon's process hardening (README "Hardening inside the
 * enclave", docs/threat-model.md): no core dumps and no ptrace by a
 * non-root peer (PR_SET_DUMPABLE 0, RLIMIT_CORE 0), private keys and KMS
 * plaintexts in OpenSSL's secure heap (mlock'd so never swapped,
 * MADV_DONTDUMP, guard pages), and the drop to an unprivileged user once
 * every privileged step of the start is done. */
#ifndef CLOISTER_ENCLAVE_HARDEN_H
#define CLOISTER_ENCLAVE_HARDEN_H

#pragma GCC visibility push(default)

#include "cloister/core/buf.h"
#include "cloister/core/error.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* The default size of the secure heap: a power of two.  It holds the
 * identity's key, the KMS Recipient key, the -secret plaintexts and every
 * handshake's ephemeral key while it lives, so it is sized for thousands
 * of handshakes at once. */
#define CL_SECURE_HEAP_DEFAULT ((size_t)1 << 20)

typedef struct cl_harden_state {
    bool secure_heap;   /* OpenSSL's secure heap is set up */
    bool locked;        /* and its pages are mlock'd (else only DONTDUMP) */
    size_t heap_bytes;
} cl_harden_state;

/* Before any key exists: PR_SET_DUMPABLE 0, RLIMIT_CORE 0, and the secure
 * heap of heap_bytes (a power of two; 0 for the default).  When the heap
 * cannot be locked (RLIMIT_MEMLOCK too small for a non-root user) this
 * fails if require_locked, otherwise it logs a warning and goes on. */
CL_MUST_CHECK int cl_harden_process(size_t heap_bytes, bool require_locked, cl_harden_state *out);

/* A copy of len bytes in the secure heap (ordinary memory when there is
 * none), as a cl_buf that cl_buf_free wipes and gives back to it. */
CL_MUST_CHECK int cl_secure_copy(const void *data, size_t len, cl_buf *out);
/* Moves b's bytes into the secure heap and wipes the old ones. */
CL_MUST_CHECK int cl_secure_move(cl_buf *b);
/* Whether p lies in the secure heap. */
bool cl_secure_allocated(const void *p);

typedef struct cl_user_spec {
    uid_t uid;
    gid_t gid;
    char name[64]; /* the user's name, or the number as given */
} cl_user_spec;

/* "NAME", "UID", "NAME:GID" or "UID:GID"; without a GID, the user's
 * primary group from the password database (a bare UID without one is
 * refused: guessing a group would be wrong). */
CL_MUST_CHECK int cl_user_parse(const char *text, cl_user_spec *out);
/* Drops every group, then the gid, then the uid (all of real, effective
 * and saved), and checks that root cannot be regained. */
CL_MUST_CHECK int cl_drop_privileges(const cl_user_spec *u);

#pragma GCC visibility pop

#endif

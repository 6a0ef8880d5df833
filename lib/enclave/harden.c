#include "cloister/enclave/harden.h"

#include "cloister/core/log.h"

#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

/* The smallest block the secure heap hands out: a P-256 scalar or an
 * X25519 key fits, and a 1 MiB heap keeps a small bitmap. */
#define SECURE_HEAP_MIN_BLOCK 32

int cl_harden_process(size_t heap_bytes, bool require_locked, cl_harden_state *out)
{
    memset(out, 0, sizeof *out);
    if (!heap_bytes)
        heap_bytes = CL_SECURE_HEAP_DEFAULT;
    CL_ENSURE((heap_bytes & (heap_bytes - 1)) == 0 && heap_bytes >= 4096, CL_EINVAL,
              "the secure heap's size must be a power of two of at least 4096 bytes, not %zu", heap_bytes);
    /* not dumpable: no core file, /proc/PID/mem and ptrace only for root */
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
        return cl_error_set(CL_EIO, "prctl(PR_SET_DUMPABLE, 0): %s", strerror(errno));
    struct rlimit none = {0, 0};
    if (setrlimit(RLIMIT_CORE, &none) != 0)
        return cl_error_set(CL_EIO, "setrlimit(RLIMIT_CORE, 0): %s", strerror(errno));

    int rc = CRYPTO_secure_malloc_initialized() ? 1 : CRYPTO_secure_malloc_init(heap_bytes, SECURE_HEAP_MIN_BLOCK);
    if (rc == 0) {
        CL_ENSURE(!require_locked, CL_EIO,
                  "OpenSSL's secure heap of %zu bytes cannot be set up (out of memory or address space); "
                  "-require-locked-memory refuses to go on without it", heap_bytes);
        cl_log(CL_LOG_WARN, "secure_heap_unavailable", "detail",
               "OpenSSL's secure heap cannot be set up: keys and secrets live in ordinary memory (not locked, "
               "dumps are still off)", NULL);
        return CL_OK;
    }
    out->secure_heap = true;
    out->heap_bytes = heap_bytes;
    out->locked = rc == 1; /* 2: the arena exists but mlock failed */
    if (!out->locked) {
        struct rlimit ml = {0, 0};
        getrlimit(RLIMIT_MEMLOCK, &ml);
        char limit[32];
        snprintf(limit, sizeof limit, "%llu", (unsigned long long)ml.rlim_cur);
        CL_ENSURE(!require_locked, CL_EIO,
                  "the secure heap (%zu bytes) cannot be locked in memory: RLIMIT_MEMLOCK is %s bytes (raise it, "
                  "e.g. ulimit -l, or run as root); -require-locked-memory refuses to go on",
                  heap_bytes, limit);
        cl_log(CL_LOG_WARN, "secure_heap_not_locked", "memlock_limit", limit, "detail",
               "mlock failed: keys are excluded from dumps but may be swapped (raise RLIMIT_MEMLOCK, or "
               "-require-locked-memory to refuse this)", NULL);
    }
    return CL_OK;
}

bool cl_secure_allocated(const void *p)
{
    return p && CRYPTO_secure_allocated(p);
}

int cl_secure_copy(const void *data, size_t len, cl_buf *out)
{
    *out = (cl_buf)CL_BUF_INIT;
    if (!len)
        return CL_OK;
    /* without a secure heap this is OPENSSL_malloc: still wiped on free */
    uint8_t *p = OPENSSL_secure_malloc(len);
    CL_ENSURE(p, CL_ENOMEM, "the secure heap has no room for %zu bytes (it holds every key and secret)", len);
    memcpy(p, data, len);
    out->data = p;
    out->len = out->cap = len;
    return CL_OK;
}

int cl_secure_move(cl_buf *b)
{
    if (!b->data || cl_secure_allocated(b->data))
        return CL_OK;
    cl_buf copy;
    CL_TRY(cl_secure_copy(b->data, b->len, &copy));
    cl_buf_free(b);
    *b = copy;
    return CL_OK;
}

int cl_user_parse(const char *text, cl_user_spec *out)
{
    memset(out, 0, sizeof *out);
    const char *colon = strchr(text, ':');
    size_t ulen = colon ? (size_t)(colon - text) : strlen(text);
    CL_ENSURE(ulen > 0 && ulen < sizeof out->name, CL_EINVAL, "-user '%s': expected NAME|UID[:GID]", text);
    memcpy(out->name, text, ulen);
    out->name[ulen] = '\0';
    char *end;
    bool numeric = out->name[0] >= '0' && out->name[0] <= '9';
    struct passwd pw, *found = NULL;
    char pwbuf[4096];
    if (numeric) {
        errno = 0;
        unsigned long v = strtoul(out->name, &end, 10);
        CL_ENSURE(!*end && !errno && v < UINT_MAX, CL_EINVAL, "-user '%s': '%s' is not a uid", text, out->name);
        out->uid = (uid_t)v;
        getpwuid_r(out->uid, &pw, pwbuf, sizeof pwbuf, &found);
    } else {
        getpwnam_r(out->name, &pw, pwbuf, sizeof pwbuf, &found);
        CL_ENSURE(found, CL_EINVAL, "-user '%s': no user named '%s' in the password database", text, out->name);
        out->uid = pw.pw_uid;
    }
    if (colon) {
        errno = 0;
        unsigned long v = strtoul(colon + 1, &end, 10);
        if (colon[1] >= '0' && colon[1] <= '9' && !*end && !errno && v < UINT_MAX) {
            out->gid = (gid_t)v;
        } else {
            struct group gr, *g = NULL;
            char grbuf[4096];
            getgrnam_r(colon + 1, &gr, grbuf, sizeof grbuf, &g);
            CL_ENSURE(g, CL_EINVAL, "-user '%s': '%s' is neither a gid nor a group name", text, colon + 1);
            out->gid = gr.gr_gid;
        }
    } else {
        CL_ENSURE(found, CL_EINVAL, "-user '%s': uid %s has no password entry, so give its group too (UID:GID)",
                  text, out->name);
        out->gid = pw.pw_gid;
    }
    CL_ENSURE(out->uid != 0, CL_EINVAL, "-user '%s' is root: that drops nothing", text);
    CL_ENSURE(out->gid != 0, CL_EINVAL, "-user '%s': group 0 (root) would keep root's group access", text);
    return CL_OK;
}

int cl_drop_privileges(const cl_user_spec *u)
{
    /* groups first and the uid last: afterwards we could change neither */
    if (setgroups(0, NULL) != 0)
        return cl_error_set(CL_EIO, "-user %s: setgroups(0): %s (start as root to drop to a user)", u->name,
                            strerror(errno));
    if (setresgid(u->gid, u->gid, u->gid) != 0)
        return cl_error_set(CL_EIO, "-user %s: setresgid(%u): %s", u->name, (unsigned)u->gid, strerror(errno));
    if (setresuid(u->uid, u->uid, u->uid) != 0)
        return cl_error_set(CL_EIO, "-user %s: setresuid(%u): %s", u->name, (unsigned)u->uid, strerror(errno));
    /* setuid cleared it: keep /proc/PID/mem and ptrace closed to the user */
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
        return cl_error_set(CL_EIO, "prctl(PR_SET_DUMPABLE, 0): %s", strerror(errno));
    CL_ENSURE(setuid(0) != 0 && seteuid(0) != 0 && setgid(0) != 0, CL_EIO,
              "-user %s: root could be regained after the drop", u->name);
    uid_t r, e, s;
    gid_t gr, ge, gs;
    CL_ENSURE(getresuid(&r, &e, &s) == 0 && r == u->uid && e == u->uid && s == u->uid, CL_EIO,
              "-user %s: the uids did not all change", u->name);
    CL_ENSURE(getresgid(&gr, &ge, &gs) == 0 && gr == u->gid && ge == u->gid && gs == u->gid, CL_EIO,
              "-user %s: the gids did not all change", u->name);
    CL_ENSURE(getgroups(0, NULL) == 0, CL_EIO, "-user %s: supplementary groups remain", u->name);
    return CL_OK;
}

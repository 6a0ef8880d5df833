/* The one list of system calls `cloister enclave -seccomp` allows after its
 * start (docs/threat-model.md, "Hardening inside the enclave").  It was
 * built from `strace -f -c` over the enclave's integration tests (TLS, h2,
 * attestation through the NSM socket, KMS through the vsock stand-in, the
 * app proxy, metrics, drain, key sync, ACME, tap) plus the Nitro-only
 * calls (AF_VSOCK sockets, the /dev/nsm ioctl).  What the start needs
 * (binding listeners, configuring lo and tap0, setuid) is done before the
 * filter and is not here; neither is execve nor fork: -appcmd is started
 * by the launcher (lib/enclave/launcher.c), forked before the filter, which
 * the daemon only talks to (sendmsg/recvmsg) and reaps (wait4). */
#include "cloister/enclave/syscall_filter.h"

#include <errno.h>
#include <linux/sockios.h>
#include <seccomp.h>
#include <string.h>
#include <linux/if_tun.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

/* A name missing on an architecture (open on arm64) is skipped there. */
static const char *const allowed[] = {
    /* memory: malloc, OpenSSL's secure heap, thread stacks, dlopen of libcurl/SQLite */
    "brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "mlock", "mlock2", "munlock",
    /* threads: the event loops, workers, sync/ACME/tap threads; glibc's locks and exit */
    "futex", "clone", "clone3", "set_robust_list", "get_robust_list", "rseq", "set_tid_address", "sched_yield",
    "sched_getaffinity", "gettid", "getpid", "getppid", "exit", "exit_group", "membarrier",
    /* time: timeouts, backoff, log stamps, token expiry */
    "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday", "time",
    /* signals: sigwait for SIGTERM/SIGINT/SIGHUP, glibc's setxid/cancel, raise on abort */
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigtimedwait", "sigaltstack", "tgkill", "tkill",
    "restart_syscall",
    /* files: certificates and CA bundles, the ACME file store, /proc and /sys reads, unix socket files */
    "read", "write", "readv", "writev", "pread64", "pwrite64", "open", "openat", "close", "close_range", "lseek",
    "fstat", "stat", "lstat", "newfstatat", "statx", "fstatfs", "statfs", "fcntl", "getdents64", "readlink",
    "readlinkat", "access", "faccessat", "faccessat2", "unlink", "unlinkat", "rename", "renameat", "renameat2",
    "mkdir", "mkdirat", "fsync", "fdatasync", "ftruncate", "getcwd", "umask", "fchmod", "chmod", "fchmodat",
    "dup", "dup2", "dup3", "pipe", "pipe2", "splice", "sendfile",
    /* sockets: listeners' accepts, the app, KMS/IMDS/ACME/sync through vsock or their unix stand-ins */
    "connect", "bind", "listen", "accept", "accept4", "getsockname", "getpeername", "setsockopt", "getsockopt",
    "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "shutdown", "socketpair",
    /* event loops and waits */
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd2",
    "poll", "ppoll", "select", "pselect6", "timerfd_create", "timerfd_settime", "timerfd_gettime",
    /* randomness for OpenSSL (after the NSM seed) */
    "getrandom",
    /* identity and limits glibc and OpenSSL ask for (no set*id: the drop is done) */
    "getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid", "getgroups", "getrlimit", "prlimit64",
    "uname", "sysinfo", "prctl", "getrusage", "times",
    /* the app launcher, the daemon's only child, reaped when it exits at the stop */
    "wait4",
};

/* socket(): only the families the daemon talks over.  AF_VSOCK is Nitro's
 * only way out (never opened on test machines); AF_NETLINK is glibc's
 * getaddrinfo (AI_ADDRCONFIG) for ACME/KMS host names. */
static const int families[] = {AF_UNIX, AF_INET, AF_INET6, AF_VSOCK, AF_NETLINK};

/* ioctl(): the NSM request (/dev/nsm on Nitro), what stdio and the
 * socket code ask of a descriptor, and tap0's offloads, set again on every
 * reconnect of the tap relay as the parent agrees to them (tap_relay.c). */
static const unsigned long ioctls[] = {
    0xC0200A00ul, /* NSM_IOCTL_REQUEST (lib/enclave/nsm.c) */
    FIONREAD, FIONBIO, FIOCLEX, TCGETS, SIOCOUTQ, TUNSETOFFLOAD,
};

int cl_seccomp_mode_parse(const char *text, cl_seccomp_mode *out)
{
    if (!strcmp(text, "off"))
        *out = CL_SECCOMP_OFF;
    else if (!strcmp(text, "log"))
        *out = CL_SECCOMP_LOG;
    else if (!strcmp(text, "enforce"))
        *out = CL_SECCOMP_ENFORCE;
    else
        return cl_error_set(CL_EINVAL, "-seccomp '%s': expected off, log or enforce", text);
    return CL_OK;
}

const char *cl_seccomp_mode_name(cl_seccomp_mode m)
{
    return m == CL_SECCOMP_ENFORCE ? "enforce" : m == CL_SECCOMP_LOG ? "log" : "off";
}

size_t cl_syscall_filter_size(void)
{
    size_t n = 0;
    for (size_t i = 0; i < sizeof allowed / sizeof allowed[0]; i++)
        n += seccomp_syscall_resolve_name(allowed[i]) != __NR_SCMP_ERROR;
    return n + 3; /* socket, ioctl and kill, with their argument checks */
}

#define SECCOMP_TRY(call, what)                                                                             \
    do {                                                                                                    \
        int seccomp_rc_ = (call);                                                                           \
        if (seccomp_rc_ < 0) {                                                                              \
            seccomp_release(ctx);                                                                           \
            return cl_error_set(CL_EIO, "seccomp: %s: %s", (what), strerror(-seccomp_rc_));                 \
        }                                                                                                   \
    } while (0)

int cl_syscall_filter_install(cl_seccomp_mode mode)
{
    if (mode == CL_SECCOMP_OFF)
        return CL_OK;
    /* kill the process, not the thread and not EPERM: a call outside the
     * list is a bug or an attacker's, and a daemon with a thread gone or
     * an attacker free to probe is worse than one that stops and is
     * restarted (the watchdog, the orchestrator) */
    uint32_t deny = mode == CL_SECCOMP_ENFORCE ? SCMP_ACT_KILL_PROCESS : SCMP_ACT_LOG;
    scmp_filter_ctx ctx = seccomp_init(deny);
    CL_ENSURE(ctx, CL_EIO, "seccomp_init failed (kernel without seccomp filters?)");
    /* every thread, started before or after: the listeners' loops exist already */
    SECCOMP_TRY(seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1), "TSYNC");
    for (size_t i = 0; i < sizeof allowed / sizeof allowed[0]; i++) {
        int nr = seccomp_syscall_resolve_name(allowed[i]);
        if (nr == __NR_SCMP_ERROR)
            continue;
        SECCOMP_TRY(seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0), allowed[i]);
    }
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++)
        SECCOMP_TRY(seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(socket), 1,
                                     SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)families[i], 0)),
                    "socket");
    /* kill(): only to this process (POST /enclave/drain sends itself
     * SIGTERM, as the parent would); the pid is fixed once started */
    SECCOMP_TRY(seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(kill), 1, SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)getpid(), 0)),
                "kill");
    for (size_t i = 0; i < sizeof ioctls / sizeof ioctls[0]; i++)
        /* the request is an int in the kernel: compare its low 32 bits */
        SECCOMP_TRY(seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(ioctl), 1,
                                     SCMP_A1(SCMP_CMP_MASKED_EQ, 0xFFFFFFFFu, (scmp_datum_t)ioctls[i])),
                    "ioctl");
    SECCOMP_TRY(seccomp_load(ctx), "loading the filter (TSYNC: every thread)");
    seccomp_release(ctx);
    return CL_OK;
}

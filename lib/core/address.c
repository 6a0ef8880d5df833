#include "cloister/core/address.h"

#include "cloister/core/clock.h"
#include "cloister/core/encoding.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

_Static_assert(CL_ADDRESS_PATH_MAX == sizeof(((struct sockaddr_un *)0)->sun_path),
               "CL_ADDRESS_PATH_MAX must match sun_path");

static bool has_prefix(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static int parse_u32(const char *text, const char *what, uint32_t max, uint32_t *out)
{
    uint64_t v;
    int rc = cl_parse_u64(text, max, &v);
    if (rc < 0)
        return cl_error_prefix(rc, "%s: ", what);
    *out = (uint32_t)v;
    return CL_OK;
}

static int parse_vsock(const char *rest, cl_address *out)
{
    const char *colon = strchr(rest, ':');
    CL_ENSURE(colon, CL_EINVAL, "vsock address needs CID:PORT, got 'vsock:%s'", rest);
    char cid[16];
    size_t cid_len = (size_t)(colon - rest);
    CL_ENSURE(cid_len > 0 && cid_len < sizeof cid, CL_EINVAL, "vsock address: bad CID in 'vsock:%s'", rest);
    memcpy(cid, rest, cid_len);
    cid[cid_len] = '\0';
    CL_TRY(parse_u32(cid, "vsock CID", UINT32_MAX, &out->cid));
    CL_TRY(parse_u32(colon + 1, "vsock port", UINT32_MAX, &out->port));
    out->kind = CL_ADDR_VSOCK;
    return CL_OK;
}

static int parse_unix(const char *path, cl_address *out)
{
    size_t n = strlen(path);
    CL_ENSURE(n > 0, CL_EINVAL, "unix address has an empty path");
    CL_ENSURE(n < CL_ADDRESS_PATH_MAX, CL_EINVAL,
              "unix socket path is %zu bytes, the limit is %d", n, CL_ADDRESS_PATH_MAX - 1);
    memcpy(out->path, path, n + 1);
    out->kind = CL_ADDR_UNIX;
    return CL_OK;
}

/* Host names as DNS allows them (letters, digits, '-', '.', and '_' seen
 * in practice); IPv4 literals pass the same test. */
static bool host_name_valid(const char *host, size_t n)
{
    if (n == 0 || host[0] == '-' || host[0] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = host[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '.' || c == '_';
        if (!ok)
            return false;
    }
    return true;
}

static int parse_tcp(const char *rest, cl_address *out)
{
    const char *colon = strrchr(rest, ':');
    CL_ENSURE(colon, CL_EINVAL, "tcp address needs HOST:PORT, got 'tcp:%s'", rest);
    const char *host = rest;
    size_t host_len = (size_t)(colon - rest);
    if (host_len > 0 && host[0] == '[') {
        CL_ENSURE(host_len >= 2 && host[host_len - 1] == ']', CL_EINVAL,
                  "tcp address: unbalanced '[' in 'tcp:%s'", rest);
        host++;
        host_len -= 2;
        CL_ENSURE(host_len > 0 && host_len < CL_ADDRESS_HOST_MAX, CL_EINVAL,
                  "tcp address: bad IPv6 literal in 'tcp:%s'", rest);
        char literal[CL_ADDRESS_HOST_MAX];
        memcpy(literal, host, host_len);
        literal[host_len] = '\0';
        struct in6_addr v6;
        CL_ENSURE(inet_pton(AF_INET6, literal, &v6) == 1, CL_EINVAL,
                  "tcp address: '%s' is not an IPv6 address", literal);
    } else {
        CL_ENSURE(host_len > 0, CL_EINVAL, "tcp address has an empty host in 'tcp:%s'", rest);
        CL_ENSURE(host_len < CL_ADDRESS_HOST_MAX, CL_EINVAL, "tcp address: host name longer than %d bytes",
                  CL_ADDRESS_HOST_MAX - 1);
        CL_ENSURE(!memchr(host, ':', host_len), CL_EINVAL,
                  "tcp address: IPv6 hosts must be in brackets, as tcp:[::1]:PORT");
        CL_ENSURE(host_name_valid(host, host_len), CL_EINVAL, "tcp address: invalid host name in 'tcp:%s'",
                  rest);
    }
    CL_TRY(parse_u32(colon + 1, "tcp port", 65535, &out->port));
    memcpy(out->host, host, host_len);
    out->host[host_len] = '\0';
    out->kind = CL_ADDR_TCP;
    return CL_OK;
}

int cl_address_parse(const char *text, cl_address *out)
{
    memset(out, 0, sizeof *out);
    CL_ENSURE(text, CL_EINVAL, "no address given");
    if (has_prefix(text, "vsock:"))
        return parse_vsock(text + 6, out);
    if (has_prefix(text, "unix:"))
        return parse_unix(text + 5, out);
    if (has_prefix(text, "tcp:"))
        return parse_tcp(text + 4, out);
    return cl_error_set(CL_EINVAL, "address '%.64s' must be vsock:CID:PORT, unix:PATH or tcp:HOST:PORT", text);
}

void cl_address_format(const cl_address *a, char *out, size_t out_len)
{
    if (out_len == 0)
        return;
    switch (a->kind) {
    case CL_ADDR_VSOCK:
        snprintf(out, out_len, "vsock:%u:%u", a->cid, a->port);
        break;
    case CL_ADDR_UNIX:
        snprintf(out, out_len, "unix:%s", a->path);
        break;
    case CL_ADDR_TCP:
        if (strchr(a->host, ':'))
            snprintf(out, out_len, "tcp:[%s]:%u", a->host, a->port);
        else
            snprintf(out, out_len, "tcp:%s:%u", a->host, a->port);
        break;
    default:
        snprintf(out, out_len, "(invalid address)");
    }
}

static int fill_unix(const cl_address *a, struct sockaddr_un *sun)
{
    memset(sun, 0, sizeof *sun);
    sun->sun_family = AF_UNIX;
    size_t n = strnlen(a->path, sizeof a->path);
    CL_ENSURE(n > 0 && n < sizeof sun->sun_path, CL_EINVAL, "unix socket path is empty or too long");
    memcpy(sun->sun_path, a->path, n);
    return CL_OK;
}

static void fill_vsock(const cl_address *a, struct sockaddr_vm *svm)
{
    memset(svm, 0, sizeof *svm);
    svm->svm_family = AF_VSOCK;
    svm->svm_cid = a->cid;
    svm->svm_port = a->port;
}

/* A socket file nobody accepts on is left over from a process that died;
 * one that answers belongs to a live listener and must not be taken. */
static int remove_stale_socket(const char *path)
{
    struct stat st;
    if (lstat(path, &st) < 0) {
        if (errno == ENOENT)
            return CL_OK;
        return cl_error_set(CL_EIO, "cannot inspect %s: %s", path, strerror(errno));
    }
    CL_ENSURE(S_ISSOCK(st.st_mode), CL_EINVAL, "%s exists and is not a socket; refusing to replace it", path);
    cl_address probe_addr = {.kind = CL_ADDR_UNIX};
    snprintf(probe_addr.path, sizeof probe_addr.path, "%s", path);
    struct sockaddr_un sun;
    CL_TRY(fill_unix(&probe_addr, &sun));
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CL_ENSURE(fd >= 0, CL_EIO, "socket: %s", strerror(errno));
    int connected = connect(fd, (struct sockaddr *)&sun, sizeof sun);
    int saved = errno;
    close(fd);
    CL_ENSURE(connected < 0, CL_EIO, "%s is in use by a running server", path);
    CL_ENSURE(saved == ECONNREFUSED, CL_EIO, "cannot probe %s: %s", path, strerror(saved));
    CL_ENSURE(unlink(path) == 0 || errno == ENOENT, CL_EIO, "cannot remove stale socket %s: %s", path,
              strerror(errno));
    return CL_OK;
}

static int listen_unix(const cl_address *a, int backlog, int *fd_out)
{
    struct sockaddr_un sun;
    CL_TRY(fill_unix(a, &sun));
    CL_TRY(remove_stale_socket(a->path));
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CL_ENSURE(fd >= 0, CL_EIO, "socket: %s", strerror(errno));
    if (bind(fd, (struct sockaddr *)&sun, sizeof sun) < 0 || listen(fd, backlog) < 0) {
        int saved = errno;
        close(fd);
        return cl_error_set(CL_EIO, "cannot listen on unix:%s: %s", a->path, strerror(saved));
    }
    *fd_out = fd;
    return CL_OK;
}

static int resolve_tcp(const cl_address *a, bool passive, struct addrinfo **res)
{
    char port[8];
    snprintf(port, sizeof port, "%u", a->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = passive ? AI_PASSIVE : 0};
    int gai = getaddrinfo(a->host, port, &hints, res);
    CL_ENSURE(gai == 0, CL_EIO, "cannot resolve %s: %s", a->host, gai_strerror(gai));
    return CL_OK;
}

static int listen_tcp(const cl_address *a, int backlog, int *fd_out)
{
    struct addrinfo *res = NULL;
    CL_TRY(resolve_tcp(a, true, &res));
    int saved = 0;
    int fd = -1;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            saved = errno;
            continue;
        }
        int one = 1;
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0 &&
            bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, backlog) == 0)
            break;
        saved = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    CL_ENSURE(fd >= 0, CL_EIO, "cannot listen on tcp:%s:%u: %s", a->host, a->port, strerror(saved));
    *fd_out = fd;
    return CL_OK;
}

bool cl_vsock_disabled(void)
{
    const char *v = getenv("CLOISTER_NO_VSOCK");
    return v && *v && strcmp(v, "0") != 0;
}

int cl_socket(int family, int type, int *fd)
{
    if (family == AF_VSOCK && cl_vsock_disabled()) {
        *fd = -1;
        int rc = cl_error_set(CL_EINVAL, "socket: vsock is disabled here (CLOISTER_NO_VSOCK)");
        errno = EPERM;
        return rc;
    }
    *fd = socket(family, type, 0);
    if (*fd < 0) {
        int saved = errno;
        int rc = cl_error_set(CL_EIO, "socket: %s", strerror(saved));
        errno = saved; /* for callers that act on the errno (host_connect_start) */
        return rc;
    }
    return CL_OK;
}

/* ---- the vsock stand-in ----------------------------------------------------
 * Everything above the last socket()/bind()/connect() runs as for vsock;
 * only the sockaddr_vm is turned into the unix socket DIR/CID.PORT here. */

static const char *standin_dir(void)
{
    const char *d = getenv("CLOISTER_VSOCK_STANDIN");
    return d && *d ? d : NULL;
}

bool cl_vsock_standin_active(void)
{
    return standin_dir() != NULL;
}

/* The CID this process has in the stand-in picture (the enclave's CID for
 * the enclave, 3 for the parent); 0 when not given. */
static int standin_local_cid(uint32_t *cid)
{
    *cid = 0;
    const char *v = getenv("CLOISTER_VSOCK_STANDIN_CID");
    if (!v || !*v)
        return CL_OK;
    uint64_t n;
    int rc = cl_parse_u64(v, UINT32_MAX, &n);
    if (rc < 0)
        return cl_error_prefix(rc, "CLOISTER_VSOCK_STANDIN_CID: ");
    CL_ENSURE(n != VMADDR_CID_ANY && n > VMADDR_CID_LOCAL, CL_EINVAL,
              "CLOISTER_VSOCK_STANDIN_CID must name one CID (2 or more), got %s", v);
    *cid = (uint32_t)n;
    return CL_OK;
}

int cl_vsock_standin_sockaddr(const struct sockaddr_vm *svm, bool listening, struct sockaddr_un *out,
                              bool *applies)
{
    *applies = false;
    const char *dir = standin_dir();
    if (!dir)
        return CL_OK;
    uint32_t local;
    CL_TRY(standin_local_cid(&local));
    uint32_t cid = svm->svm_cid;
    if (listening) {
        /* vsock binds only to this machine's CIDs; ANY means "all of mine" */
        if (cid == VMADDR_CID_ANY || cid == VMADDR_CID_LOCAL) {
            CL_ENSURE(local, CL_EINVAL,
                      "vsock stand-in: a listener on CID %u needs CLOISTER_VSOCK_STANDIN_CID (this side's CID)", cid);
            cid = local;
        }
        CL_ENSURE(!local || cid == local, CL_EINVAL,
                  "vsock stand-in: cannot listen on CID %u, this side is CID %u (as vsock: EADDRNOTAVAIL)", cid, local);
    } else if (cid == VMADDR_CID_LOCAL) {
        CL_ENSURE(local, CL_EINVAL, "vsock stand-in: CID 1 (local) needs CLOISTER_VSOCK_STANDIN_CID");
        cid = local;
    }
    CL_ENSURE(cid != VMADDR_CID_ANY, CL_EINVAL, "vsock stand-in: cannot connect to CID %u (VMADDR_CID_ANY)", cid);
    memset(out, 0, sizeof *out);
    out->sun_family = AF_UNIX;
    int n = snprintf(out->sun_path, sizeof out->sun_path, "%s/%u.%u", dir, cid, svm->svm_port);
    CL_ENSURE(n > 0 && (size_t)n < sizeof out->sun_path, CL_EINVAL,
              "vsock stand-in: CLOISTER_VSOCK_STANDIN=%s makes a socket path longer than %zu bytes", dir,
              sizeof out->sun_path - 1);
    *applies = true;
    return CL_OK;
}

int cl_sockaddr_final(const struct sockaddr *sa, socklen_t len, bool listening, struct sockaddr_storage *out,
                      socklen_t *out_len)
{
    CL_ENSURE(len <= sizeof *out, CL_EINVAL, "socket address of %u bytes", (unsigned)len);
    if (sa->sa_family == AF_VSOCK && len >= sizeof(struct sockaddr_vm)) {
        struct sockaddr_un sun;
        bool standin;
        CL_TRY(cl_vsock_standin_sockaddr((const struct sockaddr_vm *)sa, listening, &sun, &standin));
        if (standin) {
            memset(out, 0, sizeof *out);
            memcpy(out, &sun, sizeof sun);
            *out_len = sizeof sun;
            return CL_OK;
        }
    }
    memset(out, 0, sizeof *out);
    memcpy(out, sa, len);
    *out_len = len;
    return CL_OK;
}

static int listen_vsock(const cl_address *a, int backlog, int *fd_out)
{
    struct sockaddr_vm svm;
    fill_vsock(a, &svm);
    struct sockaddr_un sun;
    bool standin;
    int rc = cl_vsock_standin_sockaddr(&svm, true, &sun, &standin);
    if (rc < 0)
        return cl_error_prefix(rc, "vsock:%u:%u: ", a->cid, a->port);
    if (standin) {
        cl_address u = {.kind = CL_ADDR_UNIX};
        memcpy(u.path, sun.sun_path, sizeof u.path);
        rc = listen_unix(&u, backlog, fd_out);
        return rc < 0 ? cl_error_prefix(rc, "vsock:%u:%u (stand-in): ", a->cid, a->port) : rc;
    }
    CL_ENSURE(!cl_vsock_disabled(), CL_EINVAL, "vsock:%u:%u: vsock is disabled here (CLOISTER_NO_VSOCK)", a->cid,
              a->port);
    int fd;
    if (cl_socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, &fd) < 0)
        return cl_error_set(CL_EIO, "vsock socket: %s", strerror(errno));
    if (bind(fd, (struct sockaddr *)&svm, sizeof svm) < 0 || listen(fd, backlog) < 0) {
        int saved = errno;
        close(fd);
        return cl_error_set(CL_EIO, "cannot listen on vsock:%u:%u: %s", a->cid, a->port, strerror(saved));
    }
    *fd_out = fd;
    return CL_OK;
}

int cl_address_listen(const cl_address *a, int backlog, int *fd_out)
{
    *fd_out = -1;
    switch (a->kind) {
    case CL_ADDR_UNIX: return listen_unix(a, backlog, fd_out);
    case CL_ADDR_TCP: return listen_tcp(a, backlog, fd_out);
    case CL_ADDR_VSOCK: return listen_vsock(a, backlog, fd_out);
    }
    return cl_error_set(CL_EINVAL, "unknown address kind %d", a->kind);
}

static int connect_one(const struct sockaddr *given, socklen_t given_len, const char *what, int *fd_out)
{
    struct sockaddr_storage ss;
    socklen_t sa_len;
    int rc = cl_sockaddr_final(given, given_len, false, &ss, &sa_len);
    if (rc < 0)
        return cl_error_prefix(rc, "%s: ", what);
    const struct sockaddr *sa = (const struct sockaddr *)&ss;
    int family = sa->sa_family;
    CL_ENSURE(family != AF_VSOCK || !cl_vsock_disabled(), CL_EINVAL, "%s: vsock is disabled here (CLOISTER_NO_VSOCK)",
              what);
    int fd;
    if (cl_socket(family, SOCK_STREAM | SOCK_CLOEXEC, &fd) < 0)
        return cl_error_set(CL_EIO, "socket for %s: %s", what, strerror(errno));
    if (connect(fd, sa, sa_len) < 0) {
        int saved = errno;
        close(fd);
        return cl_error_set(CL_EIO, "cannot connect to %s: %s", what, strerror(saved));
    }
    *fd_out = fd;
    return CL_OK;
}

/* connect() that gives up at deadline_ms (cl_monotonic_ms(); 0: the kernel's own
 * SYN retries, about two minutes): an address whose SYNs are dropped (an
 * egress policy, a security group) must not hold the caller that long. */
static int connect_until(int fd, const struct sockaddr *sa, socklen_t len, uint64_t deadline_ms)
{
    if (!deadline_ms)
        return connect(fd, sa, len);
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return -1;
    int rc = connect(fd, sa, len);
    if (rc < 0 && errno == EINPROGRESS) {
        for (;;) {
            uint64_t now = cl_monotonic_ms();
            if (now >= deadline_ms) {
                errno = ETIMEDOUT;
                return -1;
            }
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            int n = poll(&p, 1, (int)(deadline_ms - now));
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0)
                return -1;
            if (n == 0)
                continue; /* the deadline check above ends it */
            int err = 0;
            socklen_t elen = sizeof err;
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0)
                return -1;
            if (err) {
                errno = err;
                return -1;
            }
            rc = 0;
            break;
        }
    }
    if (rc == 0 && fcntl(fd, F_SETFL, flags) < 0)
        return -1;
    return rc;
}

static int connect_tcp(const cl_address *a, unsigned timeout_ms, int *fd_out)
{
    CL_ENSURE(a->port != 0, CL_EINVAL, "cannot connect to port 0 of %s", a->host);
    struct addrinfo *res = NULL;
    CL_TRY(resolve_tcp(a, false, &res));
    uint64_t deadline = timeout_ms ? cl_monotonic_ms() + timeout_ms : 0;
    int saved = 0;
    int fd = -1;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            saved = errno;
            continue;
        }
        if (connect_until(fd, ai->ai_addr, ai->ai_addrlen, deadline) == 0)
            break;
        saved = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    CL_ENSURE(fd >= 0, CL_EIO, "cannot connect to tcp:%s:%u: %s", a->host, a->port, strerror(saved));
    *fd_out = fd;
    return CL_OK;
}

int cl_address_connect(const cl_address *a, int *fd_out)
{
    return cl_address_connect_timeout(a, 0, fd_out);
}

int cl_address_connect_timeout(const cl_address *a, unsigned timeout_ms, int *fd_out)
{
    *fd_out = -1;
    char what[CL_ADDRESS_PATH_MAX + 16];
    cl_address_format(a, what, sizeof what);
    switch (a->kind) {
    case CL_ADDR_UNIX: {
        struct sockaddr_un sun;
        CL_TRY(fill_unix(a, &sun));
        return connect_one((struct sockaddr *)&sun, sizeof sun, what, fd_out);
    }
    case CL_ADDR_TCP:
        return connect_tcp(a, timeout_ms, fd_out);
    case CL_ADDR_VSOCK: {
        struct sockaddr_vm svm;
        fill_vsock(a, &svm);
        return connect_one((struct sockaddr *)&svm, sizeof svm, what, fd_out);
    }
    }
    return cl_error_set(CL_EINVAL, "unknown address kind %d", a->kind);
}

void cl_socket_file_remember(const cl_address *a, cl_socket_file *f)
{
    struct stat st;
    f->set = a->kind == CL_ADDR_UNIX && stat(a->path, &st) == 0;
    if (!f->set)
        return;
    snprintf(f->path, sizeof f->path, "%s", a->path);
    f->dev = st.st_dev;
    f->ino = st.st_ino;
}

void cl_socket_file_remove(cl_socket_file *f)
{
    struct stat st;
    if (f->set && stat(f->path, &st) == 0 && st.st_dev == f->dev && st.st_ino == f->ino)
        unlink(f->path);
    f->set = false;
}

/* ---- links between the enclave and its parent -------------------------------- */

static bool env_set(const char *name)
{
    const char *v = getenv(name);
    return v && *v && strcmp(v, "0") != 0;
}

static bool path_in_standin(const struct sockaddr_un *sun, socklen_t len)
{
    const char *dir = standin_dir();
    if (!dir || len <= offsetof(struct sockaddr_un, sun_path) || !sun->sun_path[0])
        return false;
    size_t n = strlen(dir);
    return strncmp(sun->sun_path, dir, n) == 0 && sun->sun_path[n] == '/';
}

bool cl_socket_is_link(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        return false;
    if (ss.ss_family == AF_VSOCK)
        return true;
    if (ss.ss_family != AF_UNIX)
        return false;
    if (path_in_standin((struct sockaddr_un *)&ss, len))
        return true;
    len = sizeof ss;
    return getpeername(fd, (struct sockaddr *)&ss, &len) == 0 && ss.ss_family == AF_UNIX &&
           path_in_standin((struct sockaddr_un *)&ss, len);
}

ssize_t cl_link_recv(int fd, void *buf, size_t len, int flags)
{
    if ((flags & MSG_PEEK) && env_set("CLOISTER_LINK_NO_PEEK") && cl_socket_is_link(fd)) {
        errno = EOPNOTSUPP;
        return -1;
    }
    return recv(fd, buf, len, flags);
}

static bool no_splice_cached;
static pthread_once_t no_splice_once = PTHREAD_ONCE_INIT;

static void no_splice_read(void)
{
    no_splice_cached = env_set("CLOISTER_LINK_NO_SPLICE");
}

bool cl_link_no_splice(void)
{
    pthread_once(&no_splice_once, no_splice_read);
    return no_splice_cached;
}

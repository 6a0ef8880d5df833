#include "cloister/core/address.h"
#include "test.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <netinet/in.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[64];

static void parses_vsock(void)
{
    cl_address a;
    CHECK_OK(cl_address_parse("vsock:3:5000", &a));
    CHECK(a.kind == CL_ADDR_VSOCK && a.cid == 3 && a.port == 5000);
    CHECK_OK(cl_address_parse("vsock:4294967295:4294967295", &a));
    CHECK(a.cid == UINT32_MAX && a.port == UINT32_MAX);
    CHECK_OK(cl_address_parse("vsock:0:0", &a));
    CHECK(a.cid == 0 && a.port == 0);
}

static void rejects_bad_vsock(void)
{
    static const char *const bad[] = {
        "vsock:", "vsock:3", "vsock:3:", "vsock::5", "vsock:x:5", "vsock:3:x", "vsock:4294967296:1",
        "vsock:1:4294967296", "vsock:-1:5", "vsock:3:5:6", "vsock: 3:5", "vsock:3:5 ", "vsock:0x3:5",
        "vsock:99999999999999999999:1",
    };
    cl_address a;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cl_error_clear();
        int rc = cl_address_parse(bad[i], &a);
        if (rc != CL_EINVAL)
            fprintf(stderr, "accepted bad vsock address '%s'\n", bad[i]);
        CHECK(rc == CL_EINVAL);
    }
}

static void parses_unix_with_length_limit(void)
{
    cl_address a;
    CHECK_OK(cl_address_parse("unix:/run/cloister/nsm.sock", &a));
    CHECK(a.kind == CL_ADDR_UNIX && !strcmp(a.path, "/run/cloister/nsm.sock"));
    CHECK_OK(cl_address_parse("unix:relative.sock", &a));
    CHECK(!strcmp(a.path, "relative.sock"));

    char text[256] = "unix:";
    memset(text + 5, 'a', 107); /* 107 bytes + NUL fill sun_path exactly */
    text[5 + 107] = '\0';
    CHECK_OK(cl_address_parse(text, &a));
    CHECK(strlen(a.path) == 107);
    text[5 + 107] = 'a';
    text[5 + 108] = '\0';
    CHECK_ERR(cl_address_parse(text, &a), CL_EINVAL, "limit is 107");
    CHECK_ERR(cl_address_parse("unix:", &a), CL_EINVAL, "empty path");
}

static void parses_tcp(void)
{
    cl_address a;
    CHECK_OK(cl_address_parse("tcp:127.0.0.1:8443", &a));
    CHECK(a.kind == CL_ADDR_TCP && !strcmp(a.host, "127.0.0.1") && a.port == 8443);
    CHECK_OK(cl_address_parse("tcp:localhost:0", &a));
    CHECK(!strcmp(a.host, "localhost") && a.port == 0);
    CHECK_OK(cl_address_parse("tcp:kms.us-east-1.amazonaws.com:443", &a));
    CHECK(!strcmp(a.host, "kms.us-east-1.amazonaws.com") && a.port == 443);
    CHECK_OK(cl_address_parse("tcp:[::1]:65535", &a));
    CHECK(!strcmp(a.host, "::1") && a.port == 65535);
    CHECK_OK(cl_address_parse("tcp:[2001:db8::7]:80", &a));
    CHECK(!strcmp(a.host, "2001:db8::7"));
}

static void rejects_bad_tcp(void)
{
    static const char *const bad[] = {
        "tcp:", "tcp:host", "tcp::80", "tcp:host:", "tcp:host:65536", "tcp:host:-1", "tcp:host:8o",
        "tcp:::1:80", "tcp:[::1:80", "tcp:::1]:80", "tcp:[nothex]:80", "tcp:[]:80", "tcp:ho st:80",
        "tcp:-host:80", "tcp:host/x:80", "TCP:host:80", "tcp:[::1]80", "udp:host:53", "", "host:80",
        "/dev/nsm",
    };
    cl_address a;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cl_error_clear();
        int rc = cl_address_parse(bad[i], &a);
        if (rc != CL_EINVAL)
            fprintf(stderr, "accepted bad address '%s'\n", bad[i]);
        CHECK(rc == CL_EINVAL);
    }
    char longhost[400] = "tcp:";
    memset(longhost + 4, 'h', 300);
    strcpy(longhost + 304, ":80");
    CHECK_ERR(cl_address_parse(longhost, &a), CL_EINVAL, "longer than");
    CHECK_ERR(cl_address_parse(NULL, &a), CL_EINVAL, "no address");
    CHECK_ERR(cl_address_parse("tcp:::1:80", &a), CL_EINVAL, "brackets");
    CHECK_ERR(cl_address_parse("tcp:host:65536", &a), CL_EINVAL, "tcp port");
}

static void formats_round_trip(void)
{
    static const char *const texts[] = {"vsock:3:5000", "unix:/tmp/x.sock", "tcp:127.0.0.1:80", "tcp:[::1]:443",
                                        "tcp:example.com:1"};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        cl_address a, b;
        char out[256];
        CHECK_OK(cl_address_parse(texts[i], &a));
        cl_address_format(&a, out, sizeof out);
        CHECK(!strcmp(out, texts[i]));
        CHECK_OK(cl_address_parse(out, &b));
        CHECK(!memcmp(&a, &b, sizeof a));
    }
}

static int accept_and_echo_byte(int listen_fd)
{
    int fd = accept(listen_fd, NULL, NULL);
    if (fd < 0)
        return -1;
    char c;
    int ok = read(fd, &c, 1) == 1 && write(fd, &c, 1) == 1;
    close(fd);
    return ok ? 0 : -1;
}

static void unix_listen_connect_and_stale_socket(void)
{
    char text[128];
    snprintf(text, sizeof text, "unix:%s/a.sock", tmpdir);
    cl_address a;
    CHECK_OK(cl_address_parse(text, &a));
    int lfd = -1, cfd = -1, lfd2 = -1;
    CHECK_OK(cl_address_listen(&a, 4, &lfd));
    CHECK(fcntl(lfd, F_GETFD) & FD_CLOEXEC);
    CHECK_OK(cl_address_connect(&a, &cfd));
    CHECK(cfd >= 0 && write(cfd, "x", 1) == 1);
    CHECK(accept_and_echo_byte(lfd) == 0);
    char c = 0;
    CHECK(read(cfd, &c, 1) == 1 && c == 'x');
    close(cfd);

    /* A live listener is never displaced. */
    CHECK_ERR(cl_address_listen(&a, 4, &lfd2), CL_EIO, "in use");
    close(lfd);
    /* Its socket file is now stale and is replaced. */
    struct stat st;
    CHECK(lstat(a.path, &st) == 0 && S_ISSOCK(st.st_mode));
    CHECK_OK(cl_address_listen(&a, 4, &lfd2));
    if (lfd2 >= 0)
        close(lfd2);
    unlink(a.path);

    /* A regular file is not a socket and stays untouched. */
    snprintf(text, sizeof text, "unix:%s/regular", tmpdir);
    CHECK_OK(cl_address_parse(text, &a));
    FILE *f = fopen(a.path, "w");
    CHECK(f != NULL);
    if (f) {
        fputs("keep me", f);
        fclose(f);
    }
    CHECK_ERR(cl_address_listen(&a, 4, &lfd2), CL_EINVAL, "not a socket");
    CHECK(lstat(a.path, &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 7);
    unlink(a.path);

    snprintf(text, sizeof text, "unix:%s/missing.sock", tmpdir);
    CHECK_OK(cl_address_parse(text, &a));
    CHECK_ERR(cl_address_connect(&a, &cfd), CL_EIO, "cannot connect");
    snprintf(text, sizeof text, "unix:%s/no/such/dir/x.sock", tmpdir);
    CHECK_OK(cl_address_parse(text, &a));
    CHECK_ERR(cl_address_listen(&a, 4, &lfd2), CL_EIO, NULL);
}

static void tcp_listen_connect(void)
{
    cl_address a;
    int lfd = -1, cfd = -1;
    CHECK_OK(cl_address_parse("tcp:127.0.0.1:0", &a));
    CHECK_OK(cl_address_listen(&a, 4, &lfd));
    if (lfd < 0)
        return;
    int one = 0;
    socklen_t len = sizeof one;
    CHECK(getsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, &len) == 0 && one);
    struct sockaddr_in sin;
    len = sizeof sin;
    CHECK(getsockname(lfd, (struct sockaddr *)&sin, &len) == 0);
    CHECK_ERR(cl_address_connect(&a, &cfd), CL_EINVAL, "port 0");
    a.port = ntohs(sin.sin_port);
    CHECK_OK(cl_address_connect(&a, &cfd));
    CHECK(cfd >= 0 && write(cfd, "y", 1) == 1);
    CHECK(accept_and_echo_byte(lfd) == 0);
    char c = 0;
    CHECK(read(cfd, &c, 1) == 1 && c == 'y');
    close(cfd);
    close(lfd);
}

/* A listener whose accept queue is full drops further SYNs, as an egress
 * policy or a security group does: the bounded connect gives up, the
 * unbounded one would wait out the kernel's SYN retries. */
static void tcp_connect_timeout_on_dropped_syn(void)
{
    cl_address a;
    int lfd = -1, fd = -1;
    CHECK_OK(cl_address_parse("tcp:127.0.0.1:0", &a));
    CHECK_OK(cl_address_listen(&a, 0, &lfd));
    if (lfd < 0)
        return;
    struct sockaddr_in sin;
    socklen_t len = sizeof sin;
    CHECK(getsockname(lfd, (struct sockaddr *)&sin, &len) == 0);
    a.port = ntohs(sin.sin_port);
    CHECK_OK(cl_address_connect_timeout(&a, 2000, &fd)); /* room yet: connects */
    int fillers[4];
    for (int i = 0; i < 4; i++) { /* fill the queue, never accepted */
        fillers[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        CHECK(fillers[i] >= 0);
        if (connect(fillers[i], (struct sockaddr *)&sin, sizeof sin) < 0)
            CHECK(errno == EINPROGRESS);
    }
    usleep(100 * 1000);
    int late = -1;
    CHECK_ERR(cl_address_connect_timeout(&a, 300, &late), CL_EIO, "timed out");
    CHECK(late == -1);
    for (int i = 0; i < 4; i++)
        close(fillers[i]);
    close(fd);
    close(lfd);
}

/* Only the refusal is exercised: each vsock call below is made after
 * cl_vsock_disabled() said yes, so none of them can reach socket(2). */
static void vsock_refused_when_disabled(void)
{
    const char *saved = getenv("CLOISTER_NO_VSOCK");
    char keep[16] = "";
    if (saved)
        snprintf(keep, sizeof keep, "%s", saved);
    setenv("CLOISTER_NO_VSOCK", "0", 1);
    CHECK(!cl_vsock_disabled());
    setenv("CLOISTER_NO_VSOCK", "", 1);
    CHECK(!cl_vsock_disabled());
    setenv("CLOISTER_NO_VSOCK", "1", 1);
    CHECK(cl_vsock_disabled());
    if (cl_vsock_disabled()) {
        errno = 0;
        int vfd = 0;
        CHECK_ERR(cl_socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, &vfd), CL_EINVAL, "vsock is disabled");
        CHECK(vfd == -1 && errno == EPERM);
        cl_address a;
        CHECK_OK(cl_address_parse("vsock:3:5000", &a));
        int fd = -1;
        CHECK_ERR(cl_address_listen(&a, 8, &fd), CL_EINVAL, "vsock is disabled here (CLOISTER_NO_VSOCK)");
        CHECK_ERR(cl_address_connect(&a, &fd), CL_EINVAL, "vsock:3:5000: vsock is disabled here");
        CHECK(fd == -1);
    }
    /* other families are untouched */
    int ufd = -1;
    CHECK_OK(cl_socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, &ufd));
    CHECK(ufd >= 0);
    if (ufd >= 0)
        close(ufd);
    if (saved)
        setenv("CLOISTER_NO_VSOCK", keep, 1);
    else
        unsetenv("CLOISTER_NO_VSOCK");
}

/* The stand-in with CLOISTER_NO_VSOCK=1 throughout: a slip that reached a
 * real AF_VSOCK socket would fail with EPERM instead of opening one. */
static void vsock_standin_meets_listener_and_dialer(void)
{
    setenv("CLOISTER_NO_VSOCK", "1", 1);
    char dir[96];
    snprintf(dir, sizeof dir, "%s/vs", tmpdir);
    CHECK(mkdir(dir, 0700) == 0);
    setenv("CLOISTER_VSOCK_STANDIN", dir, 1);
    unsetenv("CLOISTER_VSOCK_STANDIN_CID");
    cl_address any, enclave, parent, other;
    CHECK_OK(cl_address_parse("vsock:4294967295:443", &any));
    CHECK_OK(cl_address_parse("vsock:16:443", &enclave));
    CHECK_OK(cl_address_parse("vsock:3:8000", &parent));
    CHECK_OK(cl_address_parse("vsock:17:443", &other));
    int lfd = -1, cfd = -1;
    /* VMADDR_CID_ANY means "my CIDs": the stand-in must be told which */
    CHECK_ERR(cl_address_listen(&any, 8, &lfd), CL_EINVAL, "needs CLOISTER_VSOCK_STANDIN_CID");
    setenv("CLOISTER_VSOCK_STANDIN_CID", "16", 1);
    CHECK_OK(cl_address_listen(&any, 8, &lfd));
    char path[160];
    snprintf(path, sizeof path, "%s/16.443", dir);
    struct stat st;
    CHECK(stat(path, &st) == 0 && S_ISSOCK(st.st_mode));
    /* bound to CID 16: a listener on another CID fails, as vsock's bind() */
    int bad = -1;
    CHECK_ERR(cl_address_listen(&other, 8, &bad), CL_EINVAL, "cannot listen on CID 17, this side is CID 16");
    /* the parent dials the enclave's CID and meets the ANY listener */
    setenv("CLOISTER_VSOCK_STANDIN_CID", "3", 1);
    CHECK_OK(cl_address_connect(&enclave, &cfd));
    if (lfd >= 0 && cfd >= 0) {
        int afd = accept(lfd, NULL, NULL);
        CHECK(afd >= 0);
        CHECK(write(cfd, "v", 1) == 1);
        char c = 0;
        CHECK(afd >= 0 && read(afd, &c, 1) == 1 && c == 'v');
        if (afd >= 0)
            close(afd);
    }
    /* nobody listens on CID 17 */
    int nfd = -1;
    CHECK_ERR(cl_address_connect(&other, &nfd), CL_EIO, "vsock:17:443");
    /* the parent listening on its explicit CID 3 */
    int pfd = -1;
    CHECK_OK(cl_address_listen(&parent, 8, &pfd));
    snprintf(path, sizeof path, "%s/3.8000", dir);
    CHECK(stat(path, &st) == 0);
    setenv("CLOISTER_VSOCK_STANDIN_CID", "x", 1);
    CHECK_ERR(cl_address_connect(&parent, &nfd), CL_EINVAL, "CLOISTER_VSOCK_STANDIN_CID");
    unsetenv("CLOISTER_VSOCK_STANDIN_CID");
    unsetenv("CLOISTER_VSOCK_STANDIN");
    /* without the stand-in the same address is refused again */
    CHECK_ERR(cl_address_connect(&enclave, &nfd), CL_EINVAL, "vsock is disabled here");
    if (lfd >= 0)
        close(lfd);
    if (cfd >= 0)
        close(cfd);
    if (pfd >= 0)
        close(pfd);
    snprintf(path, sizeof path, "%s/16.443", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/3.8000", dir);
    unlink(path);
    rmdir(dir);
}

/* MSG_PEEK fails with EOPNOTSUPP on links only, and only with the seam set */
static void link_recv_refuses_peek_on_links(void)
{
    setenv("CLOISTER_NO_VSOCK", "1", 1);
    char dir[96];
    snprintf(dir, sizeof dir, "%s/lk", tmpdir);
    CHECK(mkdir(dir, 0700) == 0);
    setenv("CLOISTER_VSOCK_STANDIN", dir, 1);
    setenv("CLOISTER_VSOCK_STANDIN_CID", "16", 1);
    cl_address link;
    CHECK_OK(cl_address_parse("vsock:4294967295:5005", &link));
    int lfd = -1, cfd = -1, afd = -1;
    CHECK_OK(cl_address_listen(&link, 4, &lfd));
    CHECK_OK(cl_address_parse("vsock:16:5005", &link));
    CHECK_OK(cl_address_connect(&link, &cfd));
    if (lfd >= 0 && cfd >= 0) {
        afd = accept(lfd, NULL, NULL);
        CHECK(afd >= 0 && write(cfd, "pp", 2) == 2);
        char b[2];
        CHECK(cl_socket_is_link(afd) && cl_socket_is_link(cfd));
        unsetenv("CLOISTER_LINK_NO_PEEK");
        CHECK(cl_link_recv(afd, b, 1, MSG_PEEK) == 1);
        setenv("CLOISTER_LINK_NO_PEEK", "1", 1);
        errno = 0;
        CHECK(cl_link_recv(afd, b, 1, MSG_PEEK) == -1 && errno == EOPNOTSUPP);
        CHECK(cl_link_recv(afd, b, 2, 0) == 2 && b[0] == 'p');
        /* a socketpair is no link: peeking there is left alone */
        int sp[2];
        CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sp) == 0);
        CHECK(!cl_socket_is_link(sp[0]));
        CHECK(write(sp[1], "x", 1) == 1 && cl_link_recv(sp[0], b, 1, MSG_PEEK) == 1);
        close(sp[0]);
        close(sp[1]);
    }
    unsetenv("CLOISTER_LINK_NO_PEEK");
    unsetenv("CLOISTER_VSOCK_STANDIN_CID");
    unsetenv("CLOISTER_VSOCK_STANDIN");
    int fds[] = {lfd, cfd, afd};
    for (size_t i = 0; i < 3; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    char path[160];
    snprintf(path, sizeof path, "%s/16.5005", dir);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/cloister-address-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(parses_vsock);
    RUN(rejects_bad_vsock);
    RUN(parses_unix_with_length_limit);
    RUN(parses_tcp);
    RUN(rejects_bad_tcp);
    RUN(formats_round_trip);
    RUN(unix_listen_connect_and_stale_socket);
    RUN(tcp_listen_connect);
    RUN(tcp_connect_timeout_on_dropped_syn);
    RUN(vsock_refused_when_disabled);
    RUN(vsock_standin_meets_listener_and_dialer);
    RUN(link_recv_refuses_peek_on_links);
    rmdir(tmpdir);
    return test_summary();
}

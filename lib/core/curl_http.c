/* One HTTP exchange through libcurl (lazily loaded: lib/core/lazy.h), to a
 * URL or through a cloister address standing in for its host: the KMS
 * client, the credentials provider and the host's bundle fetch all go
 * through cl_http_perform. */
#include "core/curl_http.h"

#include "cloister/core/http_get.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/rand.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* ---- libcurl ------------------------------------------------------------ */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_code;

static void curl_init_once(void)
{
    curl_init_code = curl_global_init(CURL_GLOBAL_DEFAULT);
}

int cl_curl_init(void)
{
    CL_TRY(cl_curl_load());
    pthread_once(&curl_once, curl_init_once);
    CL_ENSURE(curl_init_code == CURLE_OK, CL_EIO, "libcurl: %s", curl_easy_strerror(curl_init_code));
    return CL_OK;
}

/* vsock: libcurl 7.88 turns the address of every socket it connects into
 * text (Curl_addr2string: AF_INET, AF_INET6, AF_UNIX only), so an AF_VSOCK
 * socket swapped in through CURLOPT_OPENSOCKETFUNCTION fails the transfer
 * with CURLE_FAILED_INIT before it connects.  Instead cloister dials vsock
 * itself (cl_address_connect, the same code as every other vsock link) and
 * curl reaches that connection through its own unix-socket support: an
 * abstract unix socket with a random name, accepted once, only from this
 * process (SO_PEERCRED), relayed byte for byte.  curl still does TLS with
 * the URL's host as SNI and certificate name; the relay sees ciphertext. */
typedef struct dial_relay {
    int listen_fd, conn_fd, peer_fd, stop[2];
    pthread_t thread;
    bool started;
    char name[48]; /* the abstract name, without its leading NUL */
} dial_relay;

#define DIAL_RELAY_INIT {.listen_fd = -1, .conn_fd = -1, .peer_fd = -1, .stop = {-1, -1}}

static bool send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

static bool accept_own(dial_relay *r)
{
    for (;;) {
        struct pollfd p[2] = {{.fd = r->listen_fd, .events = POLLIN}, {.fd = r->stop[0], .events = POLLIN}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return false;
        }
        if (p[1].revents)
            return false;
        int fd = accept4(r->listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        struct ucred cred;
        socklen_t len = sizeof cred;
        /* abstract names are visible to the whole network namespace */
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 && cred.pid == getpid()) {
            r->conn_fd = fd;
            return true;
        }
        close(fd);
    }
}

static void *relay_main(void *arg)
{
    dial_relay *r = arg;
    if (!accept_own(r))
        return NULL;
    int fds[2] = {r->conn_fd, r->peer_fd};
    bool open_in[2] = {true, true};
    char buf[16384];
    while (open_in[0] || open_in[1]) {
        struct pollfd p[3] = {{.fd = open_in[0] ? fds[0] : -1, .events = POLLIN},
                              {.fd = open_in[1] ? fds[1] : -1, .events = POLLIN},
                              {.fd = r->stop[0], .events = POLLIN}};
        if (poll(p, 3, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[2].revents)
            break;
        bool failed = false;
        for (int i = 0; i < 2 && !failed; i++) {
            if (!p[i].revents)
                continue;
            ssize_t n = recv(fds[i], buf, sizeof buf, 0);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                open_in[i] = false;
                shutdown(fds[1 - i], SHUT_WR);
                failed = n < 0;
            } else if (!send_all(fds[1 - i], buf, (size_t)n)) {
                failed = true;
            }
        }
        if (failed)
            break;
    }
    /* the other side sees the end (curl: a closed connection) */
    shutdown(r->conn_fd, SHUT_RDWR);
    shutdown(r->peer_fd, SHUT_RDWR);
    cl_wipe(buf, sizeof buf);
    return NULL;
}

static int relay_start(dial_relay *r, const cl_address *a)
{
    CL_TRY(cl_address_connect(a, &r->peer_fd));
    uint8_t rnd[12];
    CL_ENSURE(RAND_bytes(rnd, sizeof rnd) == 1, CL_EIO, "no random bytes for the dial relay's name");
    char hex[2 * sizeof rnd + 1];
    for (size_t i = 0; i < sizeof rnd; i++)
        snprintf(hex + 2 * i, 3, "%02x", rnd[i]);
    snprintf(r->name, sizeof r->name, "cloister-dial-%s", hex);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    size_t n = strlen(r->name);
    memcpy(sun.sun_path + 1, r->name, n);
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
    r->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CL_ENSURE(r->listen_fd >= 0, CL_EIO, "dial relay: socket: %s", strerror(errno));
    CL_ENSURE(bind(r->listen_fd, (struct sockaddr *)&sun, len) == 0 && listen(r->listen_fd, 4) == 0, CL_EIO,
              "dial relay: cannot listen on an abstract unix socket: %s", strerror(errno));
    CL_ENSURE(pipe2(r->stop, O_CLOEXEC) == 0, CL_EIO, "dial relay: pipe: %s", strerror(errno));
    int e = pthread_create(&r->thread, NULL, relay_main, r);
    CL_ENSURE(e == 0, CL_EIO, "dial relay: cannot start a thread: %s", strerror(e));
    r->started = true;
    return CL_OK;
}

static void relay_stop(dial_relay *r)
{
    if (r->started) {
        ssize_t w;
        do
            w = write(r->stop[1], "x", 1);
        while (w < 0 && errno == EINTR);
        /* a relay blocked in send() to a peer that does not read */
        shutdown(r->peer_fd, SHUT_RDWR);
        pthread_join(r->thread, NULL);
    }
    int *fds[] = {&r->listen_fd, &r->conn_fd, &r->peer_fd, &r->stop[0], &r->stop[1]};
    for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++)
        if (*fds[i] >= 0) {
            close(*fds[i]);
            *fds[i] = -1;
        }
    r->started = false;
}

static size_t on_body(char *data, size_t size, size_t n, void *userp)
{
    cl_http_call *call = userp;
    size_t len = size * n;
    size_t max = call->max_response ? call->max_response : CL_HTTP_MAX_RESPONSE;
    if (call->response.len + len > max) {
        call->too_large = true;
        return 0; /* curl fails the transfer */
    }
    if (cl_buf_append(&call->response, data, len) < 0)
        return 0;
    return len;
}

static size_t on_header(char *data, size_t size, size_t n, void *userp)
{
    cl_http_call *call = userp;
    size_t len = size * n;
    if (call->on_header)
        call->on_header(call->header_ctx, data, len);
    static const char name[] = "x-amzn-requestid:";
    if (len > sizeof name - 1 && !strncasecmp(data, name, sizeof name - 1)) {
        const char *v = data + sizeof name - 1;
        size_t vl = len - (sizeof name - 1);
        while (vl && (*v == ' ' || *v == '\t'))
            v++, vl--;
        while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
            vl--;
        if (vl >= sizeof call->request_id)
            vl = sizeof call->request_id - 1;
        memcpy(call->request_id, v, vl);
        call->request_id[vl] = '\0';
    }
    return len;
}

int cl_http_perform(CURL *h, cl_http_call *call)
{
    call->status = 0;
    call->response = (cl_buf)CL_BUF_INIT;
    call->request_id[0] = '\0';
    call->too_large = false;
    dial_relay relay = DIAL_RELAY_INIT;
    char errbuf[CURL_ERROR_SIZE] = "";
    struct curl_slist *resolve = NULL;
    int rc = CL_OK;

    curl_easy_setopt(h, CURLOPT_URL, call->url);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, call->headers);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)call->timeout_ms);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)call->timeout_ms);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, call);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, call);
    curl_easy_setopt(h, CURLOPT_FORBID_REUSE, call->one_request_per_connection ? 1L : 0L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(h, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    /* NULL would not mean "the default" but "no CA file": leave curl's
     * default (the system store) unless a file is given */
    if (call->ca_file)
        curl_easy_setopt(h, CURLOPT_CAINFO, call->ca_file);
    if (!strcmp(call->method, "POST")) {
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, NULL);
        curl_easy_setopt(h, CURLOPT_POST, 1L);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)call->body_len);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, call->body ? (const char *)call->body : "");
    } else {
        curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, strcmp(call->method, "GET") ? call->method : NULL);
    }
    if (call->sigv4) {
        curl_easy_setopt(h, CURLOPT_AWS_SIGV4, call->sigv4);
        curl_easy_setopt(h, CURLOPT_USERNAME, call->user);
        curl_easy_setopt(h, CURLOPT_PASSWORD, call->password);
    }
    curl_easy_setopt(h, CURLOPT_UNIX_SOCKET_PATH, NULL);
    curl_easy_setopt(h, CURLOPT_CONNECT_TO, NULL);
    if (call->dial) {
        /* The URL's host stays the TLS name (SNI, certificate check) and
         * the Host header; the bytes go to the address.  No DNS lookup of
         * the name happens (an enclave has none). */
        CURLU *u = curl_url();
        char *host = NULL, *port = NULL;
        CL_ENSURE_OUT(u, CL_ENOMEM, "out of memory");
        if (curl_url_set(u, CURLUPART_URL, call->url, 0) != CURLUE_OK ||
            curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
            curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK) {
            curl_free(host);
            curl_url_cleanup(u);
            CL_FAIL_OUT(CL_EINVAL, "cannot read the host of %s", call->url);
        }
        char entry[CL_ADDRESS_HOST_MAX + 340];
        snprintf(entry, sizeof entry, "%s:%s:%s%s%s:%u", host, port, strchr(call->dial->host, ':') ? "[" : "",
                 call->dial->host, strchr(call->dial->host, ':') ? "]" : "", call->dial->port);
        curl_free(host);
        curl_free(port);
        curl_url_cleanup(u);
        curl_easy_setopt(h, CURLOPT_PROXY, "");
        switch (call->dial->kind) {
        case CL_ADDR_TCP:
            resolve = curl_slist_append(NULL, entry);
            CL_ENSURE_OUT(resolve, CL_ENOMEM, "out of memory");
            curl_easy_setopt(h, CURLOPT_CONNECT_TO, resolve);
            break;
        case CL_ADDR_UNIX:
            curl_easy_setopt(h, CURLOPT_UNIX_SOCKET_PATH, call->dial->path);
            break;
        default: {
            int relay_rc = relay_start(&relay, call->dial);
            if (relay_rc < 0) {
                char a[CL_ADDRESS_PATH_MAX + 16];
                cl_address_format(call->dial, a, sizeof a);
                rc = cl_error_prefix(relay_rc, "%s via %s: ", call->url, a);
                goto out;
            }
            curl_easy_setopt(h, CURLOPT_ABSTRACT_UNIX_SOCKET, relay.name);
            /* the relay lives for this transfer only */
            curl_easy_setopt(h, CURLOPT_FORBID_REUSE, 1L);
            break;
        }
        }
    }
    call->curl_code = curl_easy_perform(h);
    if (call->curl_code == CURLE_WRITE_ERROR && call->too_large)
        CL_FAIL_OUT(CL_ELIMIT, "%s: the answer is larger than %zu bytes", call->url,
                    call->max_response ? call->max_response : (size_t)CL_HTTP_MAX_RESPONSE);
    if (call->curl_code != CURLE_OK) {
        char via[CL_ADDRESS_PATH_MAX + 32] = "";
        if (call->dial) {
            char a[CL_ADDRESS_PATH_MAX + 16];
            cl_address_format(call->dial, a, sizeof a);
            snprintf(via, sizeof via, " via %s", a);
        }
        CL_FAIL_OUT(CL_EIO, "%s%s: %s%s%s", call->url, via, curl_easy_strerror(call->curl_code), errbuf[0] ? ": " : "",
                    errbuf);
    }
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &call->status);
out:
    /* the handle must not keep pointers into this frame */
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, NULL);
    relay_stop(&relay);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, NULL);
    curl_easy_setopt(h, CURLOPT_RESOLVE, NULL);
    curl_easy_setopt(h, CURLOPT_CONNECT_TO, NULL);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, NULL);
    curl_slist_free_all(resolve);
    if (rc < 0)
        cl_buf_free(&call->response);
    return rc;
}

/* ---- a plain GET ----------------------------------------------------------- */

int cl_http_get(const char *url, const char *ca_file, unsigned timeout_ms, size_t max_bytes, cl_buf *body,
                long *status)
{
    *body = (cl_buf)CL_BUF_INIT;
    *status = 0;
    CL_TRY(cl_curl_init());
    CURL *h = curl_easy_init();
    CL_ENSURE(h, CL_ENOMEM, "libcurl: cannot make a handle");
    cl_http_call call = {.method = "GET", .url = url, .ca_file = ca_file, .timeout_ms = timeout_ms,
                         .max_response = max_bytes, .one_request_per_connection = true};
    int rc = cl_http_perform(h, &call);
    curl_easy_cleanup(h);
    if (rc < 0)
        return rc;
    *status = call.status;
    *body = call.response;
    return CL_OK;
}

/* cloister host file-store: the parent's side of the enclave's ACME store
 * file:DIR (cloister/host/file_store.h): a small HTTP/1.1 server, one
 * request per connection, in front of cl_file_store_handle. */
#include "cloister/core/address.h"
#include "cloister/core/http.h"
#include "cloister/core/log.h"
#include "cloister/core/options.h"
#include "cloister/core/small_server.h"
#include "cloister/host/file_store.h"
#include "commands.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#define MAX_HEAD 8192
#define IO_TIMEOUT_S 10
#define MAX_CONNECTIONS 32

static const char usage_text[] =
    "usage: cloister host file-store --listen ADDR --dir DIR\n"
    "\n"
    "The parent's side of the enclave's ACME store file:DIR: objects in DIR, read and\n"
    "written by the enclave with compare-and-swap (POST /v1/get, /v1/put, /v1/delete, JSON).\n"
    "The enclave stores only KMS ciphertexts bound to each record, and refuses a record\n"
    "edited here; this store keeps writes atomic and serialised, nothing more.\n"
    "\n";

typedef struct settings {
    char *listen, *dir;
} settings;

static const cl_opt options[] = {
    {.name = "listen", CL_OPT_STR(settings, listen), .flags = CL_OPT_REQUIRED, .arg = "ADDR",
     .help = "where the enclave reaches the store: vsock:3:8010 on Nitro, unix:PATH or tcp:127.0.0.1:PORT locally"},
    {.name = "dir", CL_OPT_STR(settings, dir), .flags = CL_OPT_REQUIRED, .arg = "DIR",
     .help = "the directory (absolute, existing); the enclave's store is file:DIR"},
};

static void reply(int fd, int status, const cl_buf *body)
{
    const char *reason = status == 200 ? "OK" : status == 400 ? "Bad Request" : status == 404 ? "Not Found"
                       : status == 412 ? "Precondition Failed" : status == 413 ? "Payload Too Large"
                       : "Internal Server Error";
    char head[256];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n",
                     status, reason, body->len);
    /* a peer gone mid-reply is its own loss: the connection closes either way */
    bool sent = cl_small_server_send(fd, head, (size_t)n) == 0 &&
                (!body->len || cl_small_server_send(fd, body->data, body->len) == 0);
    if (!sent)
        cl_log(CL_LOG_DEBUG, "reply-unsent", "status", status == 200 ? "200" : "error", NULL);
}

static void reply_text(int fd, int status, const char *json)
{
    cl_buf b = {(uint8_t *)json, strlen(json), 0};
    reply(fd, status, &b);
}

static void serve(void *arg, int fd, size_t listener, unsigned long id)
{
    (void)listener;
    (void)id;
    cl_file_store *fs = arg;
    struct timeval tv = {.tv_sec = IO_TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    cl_buf in = CL_BUF_INIT, out = CL_BUF_INIT;
    cl_http_head *h = calloc(1, sizeof *h);
    if (!h)
        goto done;
    bool complete = false;
    while (!complete) {
        int rc = in.len ? cl_http_parse_request(in.data, in.len, MAX_HEAD, h, &complete) : CL_OK;
        if (rc < 0) {
            reply_text(fd, 400, "{\"error\":\"not an HTTP/1.1 request\"}");
            goto done;
        }
        if (complete)
            break;
        if (in.len >= MAX_HEAD || cl_buf_reserve(&in, 4096) < 0)
            goto done;
        ssize_t n = recv(fd, in.data + in.len, in.cap - in.len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto done;
        in.len += (size_t)n;
    }
    if (!cl_slice_eq(h->method, "POST") || h->body != CL_HTTP_BODY_LENGTH ||
        h->content_length > CL_FILE_STORE_REQUEST_MAX) {
        reply_text(fd, 400, "{\"error\":\"POST /v1/OP with a Content-Length body of at most the request limit\"}");
        goto done;
    }
    /* the path is a slice of `in`, which reading the body may move */
    char op[16] = "";
    if (h->path.len > 4 && h->path.len < 4 + sizeof op && !memcmp(h->path.data, "/v1/", 4))
        memcpy(op, h->path.data + 4, h->path.len - 4);
    size_t need = h->head_len + (size_t)h->content_length;
    while (in.len < need) {
        if (cl_buf_reserve(&in, need - in.len) < 0)
            goto done;
        ssize_t n = recv(fd, in.data + in.len, need - in.len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto done;
        in.len += (size_t)n;
    }
    int status = 500;
    if (cl_file_store_handle(fs, op, in.data + h->head_len, (size_t)h->content_length, &status, &out) < 0) {
        reply_text(fd, 500, "{\"error\":\"out of memory\"}");
        goto done;
    }
    char st[8];
    snprintf(st, sizeof st, "%d", status);
    cl_log(status == 200 || status == 404 ? CL_LOG_INFO : CL_LOG_WARN, "request", "op", op[0] ? op : "?", "status",
           st, NULL);
    reply(fd, status, &out);
done:
    free(h);
    cl_buf_free(&in);
    cl_buf_free(&out);
}

static void refused(void *arg, unsigned long id, const char *reason)
{
    (void)arg;
    (void)id;
    cl_log(CL_LOG_WARN, "refused", "reason", reason, NULL);
}

static int run(const settings *o)
{
    cl_address addr;
    if (cl_address_parse(o->listen, &addr) < 0) {
        fprintf(stderr, "cloister host file-store: --listen: %s\n", cl_error_message());
        return EXIT_USAGE;
    }
    cl_file_store *fs = NULL;
    if (cl_file_store_open(o->dir, &fs) < 0) {
        fprintf(stderr, "cloister host file-store: --dir: %s\n", cl_error_message());
        return EXIT_USAGE;
    }
    cl_log_set_component("file-store");
    int status = EXIT_FAILED, listen_fd = -1, stop_fd = -1;
    struct stat ours = {0};
    if (cl_stop_signals_install(&stop_fd) < 0 || cl_address_listen(&addr, 64, &listen_fd) < 0) {
        fprintf(stderr, "cloister host file-store: %s\n", cl_error_message());
        goto out;
    }
    if (addr.kind == CL_ADDR_UNIX)
        stat(addr.path, &ours);
    char text[CL_ADDRESS_PATH_MAX + 16];
    cl_address_format(&addr, text, sizeof text);
    cl_log(CL_LOG_INFO, "listening", "addr", text, "dir", o->dir, NULL);
    cl_small_server_config sc = {.listen_fds = &listen_fd, .listen_count = 1, .stop_fd = stop_fd,
                                 .max_connections = MAX_CONNECTIONS, .serve = serve, .arg = fs,
                                 .refused = refused};
    int rc = cl_small_server_run(&sc);
    if (addr.kind == CL_ADDR_UNIX) {
        struct stat now;
        if (stat(addr.path, &now) == 0 && now.st_ino == ours.st_ino && now.st_dev == ours.st_dev)
            unlink(addr.path);
    }
    if (rc < 0) {
        fprintf(stderr, "cloister host file-store: %s\n", cl_error_message());
        goto out;
    }
    cl_log(CL_LOG_INFO, "stopped", NULL);
    status = 0;
out:
    if (listen_fd >= 0)
        close(listen_fd);
    cl_file_store_free(fs);
    return status;
}

int cmd_host_file_store(int argc, char **argv)
{
    settings o = {0};
    cl_opt_section sections[] = {CL_OPT_SECTION("options", options, &o)};
    cl_options spec = {.prog = "cloister host file-store", .usage = usage_text, .sections = sections,
                       .section_count = 1};
    cl_options_result r;
    int status = cl_options_main(&spec, argc, argv, &r);
    if (status == 0)
        status = run(&o);
    else
        status = status > 0 ? 0 : EXIT_USAGE;
    cl_options_free(&spec, &r);
    return status;
}

/* What HTTP/1.1 (server.c) and HTTP/2 (h2.c) both do with a client
 * connection: bytes through its TLS, the Date line, small complete
 * responses and the forwarding fields for the app.  Below both, so that
 * neither needs the other for these. */
#include "enclave/connection.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

const char *cl_server_date(worker *w)
{
    uint64_t now = cl_loop_now(w->loop);
    if (!w->date[0] || now - w->date_ms >= 1000) {
        time_t t = time(NULL);
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(w->date, sizeof w->date, "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
        w->date_ms = now;
    }
    return w->date;
}

int cl_server_simple_response(worker *w, cl_buf *out, int status, const char *content_type, const uint8_t *body,
                              size_t body_len, bool head_only, bool close)
{
    return cl_server_simple_response_ex(w, out, status, content_type, body, body_len, head_only, close, NULL);
}

int cl_server_simple_response_ex(worker *w, cl_buf *out, int status, const char *content_type, const uint8_t *body,
                                 size_t body_len, bool head_only, bool close, const char *extra)
{
    char head[768];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\n%sContent-Type: %s\r\nContent-Length: %zu\r\n%s%s\r\n", status,
                     cl_http_status_text(status), cl_server_date(w),
                     content_type ? content_type : "text/plain; charset=utf-8", body_len,
                     close ? "Connection: close\r\n" : "", extra ? extra : "");
    CL_ENSURE(n > 0 && (size_t)n < sizeof head, CL_ELIMIT, "response head too long");
    CL_TRY(cl_buf_append(out, head, (size_t)n));
    if (!head_only)
        CL_TRY(cl_buf_append(out, body, body_len));
    return CL_OK;
}

int cl_server_forwarded_headers(cl_buf *head, const char *peer, bool tls, cl_slice host)
{
    /* the peer is "ip:port" or "[v6]:port": X-Forwarded-For carries the address */
    char ip[64];
    snprintf(ip, sizeof ip, "%s", peer);
    char *colon = strrchr(ip, ':');
    if (colon && strchr(ip, '.'))
        *colon = '\0';
    else if (ip[0] == '[' && (colon = strstr(ip, "]:")) != NULL) {
        *colon = '\0';
        memmove(ip, ip + 1, strlen(ip));
    }
    char line[256];
    int n = snprintf(line, sizeof line, "X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\n", ip,
                     tls ? "https" : "http");
    CL_TRY(cl_buf_append(head, line, (size_t)n));
    if (host.len) {
        CL_TRY(cl_buf_append(head, "X-Forwarded-Host: ", 18));
        CL_TRY(cl_buf_append(head, host.data, host.len));
        CL_TRY(cl_buf_append(head, "\r\n", 2));
    }
    return CL_OK;
}

/* ---- client I/O ---------------------------------------------------------- */

int cl_client_tls_read(client *c, uint8_t *buf, size_t len, size_t *got)
{
    *got = 0;
    if (!c->ssl) {
        ssize_t n = recv(c->watch.fd, buf, len, 0);
        if (n > 0) {
            *got = (size_t)n;
            return CL_OK;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return CL_OK;
        if (n == 0)
            return cl_error_set(CL_EIO, "the client closed the connection");
        return cl_error_set(CL_EIO, "reading from the client: %s", strerror(errno));
    }
    ERR_clear_error();
    int n = SSL_read(c->ssl, buf, (int)(len > INT32_MAX ? INT32_MAX : len));
    if (n > 0) {
        *got = (size_t)n;
        return CL_OK;
    }
    int err = SSL_get_error(c->ssl, n);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
        return CL_OK;
    if (err == SSL_ERROR_ZERO_RETURN)
        return cl_error_set(CL_EIO, "the client closed the connection");
    return cl_error_ossl(CL_EIO, "reading from the client");
}

int cl_client_tls_write(client *c, const uint8_t *buf, size_t len, size_t *put)
{
    *put = 0;
    if (!c->ssl) {
        ssize_t n = send(c->watch.fd, buf, len, MSG_NOSIGNAL);
        if (n >= 0) {
            *put = (size_t)n;
            return CL_OK;
        }
        if (errno == EAGAIN || errno == EINTR)
            return CL_OK;
        return cl_error_set(CL_EIO, "writing to the client: %s", strerror(errno));
    }
    ERR_clear_error();
    int n = SSL_write(c->ssl, buf, (int)(len > INT32_MAX ? INT32_MAX : len));
    if (n > 0) {
        *put = (size_t)n;
        return CL_OK;
    }
    int err = SSL_get_error(c->ssl, n);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
        return CL_OK;
    return cl_error_ossl(CL_EIO, "writing to the client");
}

/* Free room at the end of the client's output buffer, moving what is
 * still unsent to the front when that gains at least half of it. */
size_t cl_client_out_room(client *c)
{
    if (c->out_off && c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    if (c->out_off && c->out_cap - c->out_len < c->out_cap / 2) {
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
    }
    return c->out_cap - c->out_len;
}

#include "cloister/core/https_client.h"

#include "cloister/core/encoding.h"
#include "cloister/core/http.h"
#include "cloister/core/tls.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define MAX_HEAD (16 * 1024)

int cl_https_target_parse(const char *url, cl_https_target *t)
{
    static const char scheme[] = "https://";
    CL_ENSURE(!strncmp(url, scheme, sizeof scheme - 1), CL_EINVAL,
              "the URL must start with https:// (got '%s')", url);
    const char *p = url + sizeof scheme - 1;
    size_t end = strcspn(p, "/?#");
    CL_ENSURE(p[end] == '\0' || !strcmp(p + end, "/"), CL_EINVAL,
              "the URL names a server only (https://HOST[:PORT]), not a path: '%s'", url);
    CL_ENSURE(end > 0 && end < sizeof t->authority, CL_EINVAL, "no host in '%s'", url);
    CL_ENSURE(!memchr(p, '@', end), CL_EINVAL, "user information in the URL is not supported");
    memcpy(t->authority, p, end);
    t->authority[end] = '\0';

    const char *host = t->authority, *port_text = NULL;
    size_t host_len;
    if (host[0] == '[') {
        const char *close = strchr(host, ']');
        CL_ENSURE(close, CL_EINVAL, "unterminated [IPv6] literal in '%s'", url);
        host++;
        host_len = (size_t)(close - host);
        if (close[1] == ':')
            port_text = close + 2;
        else
            CL_ENSURE(close[1] == '\0', CL_EINVAL, "junk after the [IPv6] literal in '%s'", url);
    } else {
        const char *colon = strchr(host, ':');
        host_len = colon ? (size_t)(colon - host) : strlen(host);
        if (colon)
            port_text = colon + 1;
    }
    CL_ENSURE(host_len > 0 && host_len < sizeof t->host, CL_EINVAL, "no host in '%s'", url);
    memcpy(t->host, host, host_len);
    t->host[host_len] = '\0';
    t->port = 443;
    if (port_text) {
        uint64_t port;
        int rc = cl_parse_u64(port_text, 65535, &port);
        if (rc < 0 || port == 0)
            return cl_error_set(CL_EINVAL, "bad port in '%s'", url);
        t->port = (unsigned)port;
    }
    return CL_OK;
}

static bool is_ip_literal(const char *host)
{
    unsigned char tmp[16];
    return inet_pton(AF_INET, host, tmp) == 1 || inet_pton(AF_INET6, host, tmp) == 1;
}

/* The whole response of a Connection: close request. */
static int exchange(SSL *ssl, const cl_https_target *t, const cl_https_request *r, size_t max, cl_buf *response)
{
    char request[1024], length[48] = "";
    bool has_body = r->body_len || strcmp(r->method, "GET");
    if (has_body)
        snprintf(length, sizeof length, "Content-Length: %zu\r\n", r->body_len);
    int n = snprintf(request, sizeof request,
                     "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: cloister\r\nAccept: */*\r\n"
                     "%s%s%s%sConnection: close\r\n\r\n",
                     r->method, r->path, t->authority, length, r->content_type ? "Content-Type: " : "",
                     r->content_type ? r->content_type : "", r->content_type ? "\r\n" : "");
    CL_ENSURE(n > 0 && (size_t)n < sizeof request, CL_ELIMIT, "request too long");
    CL_ENSURE_OSSL(SSL_write(ssl, request, n) == n, CL_EIO, "sending the request failed");
    if (r->body_len) {
        size_t written = 0;
        CL_ENSURE_OSSL(SSL_write_ex(ssl, r->body, r->body_len, &written) && written == r->body_len, CL_EIO,
                       "sending the request body failed");
    }
    for (;;) {
        CL_TRY(cl_buf_reserve(response, 16384));
        size_t room = response->cap - response->len;
        if (response->len + room > max)
            room = max - response->len;
        CL_ENSURE(room > 0, CL_ELIMIT, "the response is larger than %zu bytes", max);
        size_t got = 0;
        if (SSL_read_ex(ssl, response->data + response->len, room, &got)) {
            response->len += got;
            continue;
        }
        int err = SSL_get_error(ssl, 0);
        if (err == SSL_ERROR_ZERO_RETURN)
            return CL_OK;
        return cl_error_set(CL_EIO, "reading the response failed (TLS error %d)", err);
    }
}

static int parse_response(const cl_buf *response, const char *method, cl_https_response *out)
{
    cl_http_head head;
    bool complete = false;
    int rc = cl_http_parse_response(response->data, response->len, MAX_HEAD,
                                    (cl_slice){(const uint8_t *)method, strlen(method)}, &head, &complete);
    if (rc < 0)
        return cl_error_prefix(rc, "malformed HTTP response: ");
    CL_ENSURE(complete, CL_EPARSE, "the connection closed before the response head ended");
    out->status = head.status;
    const uint8_t *rest = response->data + head.head_len;
    size_t rest_len = response->len - head.head_len;
    switch (head.body) {
    case CL_HTTP_BODY_LENGTH:
        CL_ENSURE(rest_len >= head.content_length, CL_EPARSE, "the body ended after %zu of %llu bytes", rest_len,
                  (unsigned long long)head.content_length);
        return cl_buf_append(&out->body, rest, (size_t)head.content_length);
    case CL_HTTP_BODY_CHUNKED: {
        cl_chunked st = {0};
        size_t off = 0;
        while (!st.done) {
            size_t consumed = 0, data_off = 0, data_len = 0;
            CL_TRY(cl_chunked_next(&st, rest + off, rest_len - off, &consumed, &data_off, &data_len));
            CL_ENSURE(consumed > 0 || st.done, CL_EPARSE, "the chunked body ended early");
            CL_TRY(cl_buf_append(&out->body, rest + off + data_off, data_len));
            off += consumed;
        }
        return CL_OK;
    }
    case CL_HTTP_BODY_UNTIL_CLOSE:
        return cl_buf_append(&out->body, rest, rest_len);
    default:
        return CL_OK;
    }
}

int cl_https_get(const cl_https_target *t, const char *connect_to, const char *path, size_t max_body,
                 cl_https_response *out)
{
    cl_https_request r = {.method = "GET", .path = path, .max_body = max_body};
    return cl_https_request_perform(t, connect_to, &r, out);
}

int cl_https_request_perform(const cl_https_target *t, const char *connect_to, const cl_https_request *r,
                             cl_https_response *out)
{
    int rc = CL_OK, fd = -1;
    SSL_CTX *ctx = NULL;
    SSL *ssl = NULL;
    cl_buf response = CL_BUF_INIT;
    cl_address addr;
    memset(out, 0, sizeof *out);
    out->body = (cl_buf)CL_BUF_INIT;
    if (connect_to) {
        CL_TRY_OUT(cl_address_parse(connect_to, &addr));
    } else {
        char where[CL_ADDRESS_HOST_MAX + 16];
        snprintf(where, sizeof where, strchr(t->host, ':') ? "tcp:[%s]:%u" : "tcp:%s:%u", t->host, t->port);
        CL_TRY_OUT(cl_address_parse(where, &addr));
    }
    /* bounded too: a peer whose SYNs vanish would hold us for the kernel's
     * two minutes of retries */
    CL_TRY_OUT(cl_address_connect_timeout(&addr, r->timeout_ms, &fd));
    if (r->timeout_ms) {
        /* a peer that stops answering costs the caller timeout_ms per
         * read or write, not forever */
        struct timeval tv = {.tv_sec = r->timeout_ms / 1000, .tv_usec = (r->timeout_ms % 1000) * 1000};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }

    CL_TRY_OUT(cl_tls_client_ctx_unverified(&ctx));
    /* a peer that closes without close_notify has still ended the
     * response: the HTTP framing decides whether it was complete */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    ssl = SSL_new(ctx);
    CL_ENSURE_OSSL_OUT(ssl && SSL_set_fd(ssl, fd), CL_ECRYPTO, "cannot set up TLS");
    if (!is_ip_literal(t->host))
        SSL_set_tlsext_host_name(ssl, t->host);
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_set_alpn_protos(ssl, alpn, sizeof alpn - 1);
    if (SSL_connect(ssl) != 1) {
        if (ERR_peek_error() == 0)
            CL_FAIL_OUT(CL_EIO, "TLS handshake with %s failed: connection closed", t->authority);
        CL_OSSL_OUT(CL_EIO, "TLS handshake with %s failed", t->authority);
    }
    X509 *peer = SSL_get0_peer_certificate(ssl);
    CL_ENSURE_OUT(peer, CL_EIO, "the server presented no certificate");
    CL_TRY_OUT(cl_tls_cert_sha256(peer, out->cert_sha256));
    snprintf(out->tls_version, sizeof out->tls_version, "%s", SSL_get_version(ssl));
    CL_TRY_OUT(exchange(ssl, t, r, r->max_body + MAX_HEAD, &response));
    CL_TRY_OUT(parse_response(&response, r->method, out));
out:
    ERR_clear_error();
    if (ssl)
        SSL_shutdown(ssl);
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    if (fd >= 0)
        close(fd);
    cl_buf_free(&response);
    return rc;
}

void cl_https_response_free(cl_https_response *r)
{
    cl_buf_free(&r->body);
}

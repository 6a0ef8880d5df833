#include "cloister/core/encoding.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int cl_hex_digit_value(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

void cl_hex_encode(const uint8_t *data, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[data[i] >> 4];
        out[2 * i + 1] = digits[data[i] & 15];
    }
    out[2 * len] = '\0';
}

int cl_hex_decode(const char *hex, cl_buf *out)
{
    size_t n = strlen(hex);
    if (n % 2)
        return cl_error_set(CL_EINVAL, "hex string has an odd number of digits (%zu)", n);
    CL_TRY(cl_buf_reserve(out, n / 2));
    for (size_t i = 0; i < n; i += 2) {
        int hi = cl_hex_digit_value((uint8_t)hex[i]), lo = cl_hex_digit_value((uint8_t)hex[i + 1]);
        if (hi < 0 || lo < 0)
            return cl_error_set(CL_EINVAL, "invalid hex digit at position %zu", hi < 0 ? i : i + 1);
        out->data[out->len++] = (uint8_t)(hi << 4 | lo);
    }
    return CL_OK;
}

int cl_hex_decode_fixed(const char *hex, uint8_t *out, size_t want)
{
    cl_buf tmp = CL_BUF_INIT;
    int rc = cl_hex_decode(hex, &tmp);
    if (rc == CL_OK && tmp.len != want)
        rc = cl_error_set(CL_EINVAL, "expected %zu bytes of hex (%zu digits), got %zu bytes", want,
                          2 * want, tmp.len);
    if (rc == CL_OK)
        memcpy(out, tmp.data, want);
    cl_buf_free(&tmp);
    return rc;
}

int cl_base64_encode(const uint8_t *data, size_t len, cl_buf *out)
{
    if (len > (SIZE_MAX / 4) * 3 - 3 || len > 0x3fffffff)
        return cl_error_set(CL_ELIMIT, "input too large for base64");
    size_t need = 4 * ((len + 2) / 3) + 1;
    CL_TRY(cl_buf_reserve(out, need));
    int n = EVP_EncodeBlock(out->data + out->len, data, (int)len);
    out->len += (size_t)n;
    out->data[out->len] = '\0';
    return CL_OK;
}

static int b64_value(uint8_t c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || c == '-')
        return 62;
    if (c == '/' || c == '_')
        return 63;
    return -1;
}

static bool is_space(uint8_t c)
{
    return c == ' ' || c == '\n' || c == '\r' || c == '\t';
}

int cl_base64_decode(const uint8_t *text, size_t len, cl_buf *out)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t pad = 0, symbols = 0;
    CL_TRY(cl_buf_reserve(out, len / 4 * 3 + 3));
    for (size_t i = 0; i < len; i++) {
        uint8_t c = text[i];
        if (is_space(c))
            continue;
        if (c == '=') {
            pad++;
            continue;
        }
        if (pad)
            return cl_error_set(CL_EPARSE, "base64: data after padding at offset %zu", i);
        int v = b64_value(c);
        if (v < 0)
            return cl_error_set(CL_EPARSE, "base64: invalid character 0x%02x at offset %zu", c, i);
        symbols++;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out->data[out->len++] = (uint8_t)(acc >> bits);
        }
    }
    if (symbols % 4 == 1)
        return cl_error_set(CL_EPARSE, "base64: truncated input (%zu symbols)", symbols);
    if (pad > 2 || (pad && (symbols + pad) % 4 != 0))
        return cl_error_set(CL_EPARSE, "base64: bad padding");
    if (bits && (acc & ((1u << bits) - 1)) != 0)
        return cl_error_set(CL_EPARSE, "base64: non-zero bits in the last symbol");
    return CL_OK;
}

int cl_read_file(const char *path, size_t max_len, cl_buf *out)
{
    bool is_stdin = strcmp(path, "-") == 0;
    FILE *f = is_stdin ? stdin : fopen(path, "rb");
    if (!f)
        return cl_error_set(CL_EIO, "cannot open %s: %s", path, strerror(errno));
    int rc = CL_OK;
    uint8_t chunk[8192];
    for (;;) {
        size_t n = fread(chunk, 1, sizeof chunk, f);
        if (n == 0)
            break;
        if (out->len + n > max_len) {
            rc = cl_error_set(CL_ELIMIT, "%s is larger than %zu bytes", is_stdin ? "standard input" : path,
                              max_len);
            break;
        }
        rc = cl_buf_append(out, chunk, n);
        if (rc < 0)
            break;
    }
    if (rc == CL_OK && ferror(f))
        rc = cl_error_set(CL_EIO, "cannot read %s: %s", path, strerror(errno));
    if (!is_stdin)
        fclose(f);
    return rc;
}

int cl_decode_binary_or_base64(const uint8_t *data, size_t len, cl_buf *out)
{
    bool text = len > 0;
    for (size_t i = 0; i < len && text; i++)
        text = b64_value(data[i]) >= 0 || data[i] == '=' || is_space(data[i]);
    if (text)
        return cl_base64_decode(data, len, out);
    return cl_buf_append(out, data, len);
}

void cl_format_time(int64_t unix_seconds, char out[32])
{
    struct tm tm;
    time_t t = (time_t)unix_seconds;
    if (!gmtime_r(&t, &tm)) {
        snprintf(out, 32, "@%lld", (long long)unix_seconds);
        return;
    }
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int cl_parse_u64(const char *s, uint64_t max, uint64_t *out)
{
    if (!s || !*s)
        return cl_error_set(CL_EINVAL, "expected a number, got an empty string");
    uint64_t v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return cl_error_set(CL_EINVAL, "'%s' is not a decimal number", s);
        uint64_t d = (uint64_t)(*p - '0');
        if (v > (max - d) / 10)
            return cl_error_set(CL_EINVAL, "'%s' exceeds the maximum %llu", s, (unsigned long long)max);
        v = v * 10 + d;
    }
    *out = v;
    return CL_OK;
}

int cl_parse_bool(const char *s, bool *out)
{
    if (!strcmp(s, "true") || !strcmp(s, "1"))
        *out = true;
    else if (!strcmp(s, "false") || !strcmp(s, "0"))
        *out = false;
    else
        return cl_error_set(CL_EINVAL, "expected true or false, got '%s'", s);
    return CL_OK;
}

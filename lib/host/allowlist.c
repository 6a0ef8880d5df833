#include "cloister/host/allowlist.h"

#include "cloister/core/buf.h"
#include "cloister/core/cursor.h"
#include "cloister/core/encoding.h"

#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LINE_MAX_BYTES 4096

typedef struct item {
    bool has_address, has_port;
    unsigned line;
    cl_allow_entry entry;
} item;

typedef struct parser {
    cl_allowlist *out;
    size_t cap;
    unsigned line;
    bool seen_key;      /* `allowlist:` read */
    bool seen_top;      /* any top-level key read (a `---` may only come before) */
    bool in_allowlist;  /* the lines being read belong to `allowlist:` */
    bool empty_flow;    /* `allowlist: []` */
    int item_indent;    /* -1 until the first item */
    int key_indent;     /* block mapping keys of the current item; -1 when none open */
    bool in_item;
    item cur;
} parser;

static int fail(const parser *p, const char *what)
{
    return cl_error_set(CL_EPARSE, "allowlist line %u: %s", p->line, what);
}

static bool is_space(char c)
{
    return c == ' ';
}

static void trim(const char **s, size_t *n)
{
    while (*n && is_space(**s)) {
        (*s)++;
        (*n)--;
    }
    while (*n && is_space((*s)[*n - 1]))
        (*n)--;
}

/* ---- scalars ------------------------------------------------------------------ */

enum scalar_kind { PLAIN, QUOTED };

/* Reads one scalar from the start of s (already trimmed on the left).  In
 * flow context a plain scalar stops at ',' or '}'.  *used is how much of s
 * it took, closing quote included. */
static int read_scalar(const parser *p, const char *s, size_t n, bool flow, char *out, size_t out_len, size_t *used,
                       int *kind)
{
    if (n && (s[0] == '\'' || s[0] == '"')) {
        char q = s[0];
        size_t i = 1;
        while (i < n && s[i] != q) {
            if (s[i] == '\\')
                return fail(p, "escapes in quoted values are not supported");
            i++;
        }
        if (i >= n)
            return fail(p, "unterminated quoted value");
        if (i + 1 < n && s[i + 1] == q)
            return fail(p, "quotes inside quoted values are not supported");
        size_t len = i - 1;
        if (len >= out_len)
            return fail(p, "value too long");
        memcpy(out, s + 1, len);
        out[len] = '\0';
        *used = i + 1;
        *kind = QUOTED;
        return CL_OK;
    }
    if (n && strchr("[]{},&*!|>%@`#", s[0]))
        return fail(p, "unsupported YAML here (flow collections, anchors, aliases, tags and block scalars are "
                       "not part of the allowlist format)");
    size_t i = 0;
    while (i < n && !(flow && (s[i] == ',' || s[i] == '}'))) {
        if (s[i] == ':' && (i + 1 == n || s[i + 1] == ' '))
            return fail(p, "unexpected ':' in a value");
        i++;
    }
    size_t len = i;
    while (len && is_space(s[len - 1]))
        len--;
    if (len == 0)
        return fail(p, "missing value");
    if (len >= out_len)
        return fail(p, "value too long");
    memcpy(out, s, len);
    out[len] = '\0';
    *used = i;
    *kind = PLAIN;
    return CL_OK;
}

static bool all_digits(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return false;
    return true;
}

static int set_value(parser *p, const char *key, size_t key_len, const char *value, int kind)
{
    item *it = &p->cur;
    if (key_len == 7 && !memcmp(key, "address", 7)) {
        if (it->has_address)
            return fail(p, "duplicate key 'address' in one entry");
        if (kind == PLAIN) {
            static const char *const typed[] = {"null", "Null", "NULL", "~", "true", "True", "TRUE", "false", "False",
                                                "FALSE"};
            for (size_t i = 0; i < sizeof typed / sizeof typed[0]; i++)
                if (!strcmp(value, typed[i]))
                    return fail(p, "address must be a host name or an IP address, not a YAML null or boolean");
            if (all_digits(value))
                return fail(p, "address must be a host name or an IP address, not a number");
        }
        if (!*value)
            return fail(p, "empty address");
        for (const char *c = value; *c; c++) {
            bool ok = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
                      *c == '.' || *c == '-' || *c == '_' || *c == ':';
            if (!ok)
                return fail(p, "address has a character a host name or IP address cannot have (write "
                               "internationalized names in their xn-- form)");
        }
        snprintf(it->entry.address, sizeof it->entry.address, "%s", value);
        it->has_address = true;
        return CL_OK;
    }
    if (key_len == 4 && !memcmp(key, "port", 4)) {
        if (it->has_port)
            return fail(p, "duplicate key 'port' in one entry");
        if (kind != PLAIN)
            return fail(p, "port must be an integer, not a quoted string");
        uint64_t v;
        if (!all_digits(value) || (value[0] == '0' && value[1]) || cl_parse_u64(value, 65535, &v) < 0 || v == 0) {
            cl_error_clear();
            return fail(p, "port must be an integer from 1 to 65535");
        }
        it->entry.port = (uint16_t)v;
        it->has_port = true;
        return CL_OK;
    }
    /* vsock-proxy looks up `address` and `port` in each entry and never
     * sees other keys: an entry with a comment-like key still works there,
     * so it does here (its value was still read as a scalar) */
    return CL_OK;
}

/* `key: value` at the start of s; in flow context the value stops at ',' or
 * '}' and *used says how far it went. */
static int read_pair(parser *p, const char *s, size_t n, bool flow, size_t *used)
{
    size_t k = 0;
    while (k < n && ((s[k] >= 'a' && s[k] <= 'z') || (s[k] >= 'A' && s[k] <= 'Z') || s[k] == '_' || s[k] == '-'))
        k++;
    if (k == 0 || k >= n || s[k] != ':' || (k + 1 < n && s[k + 1] != ' '))
        return fail(p, flow ? "expected 'key: value' in the flow mapping" : "expected 'key: value'");
    if (k + 1 == n)
        return fail(p, "a key needs its value on the same line");
    const char *v = s + k + 1;
    size_t vn = n - k - 1;
    size_t lead = 0;
    while (lead < vn && is_space(v[lead]))
        lead++;
    char value[CL_ALLOWLIST_ADDRESS_MAX];
    size_t vused = 0;
    int kind = PLAIN;
    CL_TRY(read_scalar(p, v + lead, vn - lead, flow, value, sizeof value, &vused, &kind));
    size_t end = k + 1 + lead + vused;
    if (!flow) {
        /* nothing may follow a block value but spaces (comments are gone) */
        for (size_t i = end; i < n; i++)
            if (!is_space(s[i]))
                return fail(p, "unexpected text after the value");
    }
    CL_TRY(set_value(p, s, k, value, kind));
    *used = end;
    return CL_OK;
}

static int finish_item(parser *p)
{
    if (!p->in_item)
        return CL_OK;
    item *it = &p->cur;
    unsigned line = p->line;
    p->line = it->line;
    if (!it->has_address || !it->has_port) {
        int rc = fail(p, it->has_address ? "entry has no 'port'" : "entry has no 'address'");
        p->line = line;
        return rc;
    }
    p->line = line;
    if (p->out->count == p->cap) {
        if (p->cap >= CL_ALLOWLIST_MAX_ENTRIES)
            return cl_error_set(CL_ELIMIT, "allowlist has more than %d entries", CL_ALLOWLIST_MAX_ENTRIES);
        size_t cap = p->cap ? p->cap * 2 : 16;
        cl_allow_entry *e = realloc(p->out->entries, cap * sizeof *e);
        if (!e)
            return cl_error_set(CL_ENOMEM, "out of memory");
        p->out->entries = e;
        p->cap = cap;
    }
    it->entry.line = it->line;
    p->out->entries[p->out->count++] = it->entry;
    p->in_item = false;
    p->key_indent = -1;
    return CL_OK;
}

static int read_flow_mapping(parser *p, const char *s, size_t n)
{
    /* s starts with '{' */
    size_t i = 1;
    for (;;) {
        while (i < n && is_space(s[i]))
            i++;
        if (i < n && s[i] == '}' && i == 1) { /* {} */
            i++;
            break;
        }
        size_t used;
        CL_TRY(read_pair(p, s + i, n - i, true, &used));
        i += used;
        while (i < n && is_space(s[i]))
            i++;
        if (i < n && s[i] == ',') {
            i++;
            continue;
        }
        if (i < n && s[i] == '}') {
            i++;
            break;
        }
        return fail(p, "unterminated flow mapping (expected ',' or '}' on the same line)");
    }
    for (; i < n; i++)
        if (!is_space(s[i]))
            return fail(p, "unexpected text after the flow mapping");
    return CL_OK;
}

/* A line at indentation 0 that is not a list item: a top-level key. */
static int read_top_key(parser *p, const char *s, size_t n)
{
    size_t k = 0;
    while (k < n && s[k] != ':')
        k++;
    if (k == 0 || k == n || (k + 1 < n && s[k + 1] != ' '))
        return fail(p, "expected a top-level 'key:' ('allowlist:' holds the entries)");
    CL_TRY(finish_item(p));
    p->seen_top = true;
    const char *rest = s + k + 1;
    size_t rn = n - k - 1;
    trim(&rest, &rn);
    if (k == 9 && !memcmp(s, "allowlist", 9)) {
        if (p->seen_key)
            return fail(p, "duplicate key 'allowlist'");
        p->seen_key = true;
        p->in_allowlist = true;
        if (rn == 0)
            return CL_OK;
        if (rn == 2 && !memcmp(rest, "[]", 2)) {
            p->empty_flow = true;
            return CL_OK;
        }
        return fail(p, "'allowlist:' must be followed by a list of entries on the next lines (or [])");
    }
    /* vsock-proxy reads the document's `allowlist` and nothing else: any
     * other key, and the lines of its value, are skipped as it skips them */
    p->in_allowlist = false;
    return CL_OK;
}

/* One line without its end and without comments; indent counted. */
static int read_line(parser *p, const char *s, size_t n, int indent)
{
    bool list_item = n >= 1 && s[0] == '-' && (n == 1 || s[1] == ' ');
    if (indent == 0 && n == 3 && !memcmp(s, "---", 3)) {
        if (p->seen_top)
            return fail(p, "a second YAML document ('---'): the allowlist is one document");
        return CL_OK;
    }
    if (indent == 0 && !list_item)
        return read_top_key(p, s, n);
    if (!p->in_allowlist) {
        if (p->seen_top)
            return CL_OK; /* the value of a key vsock-proxy does not read */
        return fail(p, "expected 'allowlist:' at the start of the line");
    }
    if (p->empty_flow)
        return fail(p, "unexpected text after 'allowlist: []'");

    if (n >= 1 && s[0] == '-' && (n == 1 || s[1] == ' ')) {
        if (p->item_indent < 0)
            p->item_indent = indent;
        else if (indent != p->item_indent)
            return fail(p, "list items must all have the same indentation");
        CL_TRY(finish_item(p));
        memset(&p->cur, 0, sizeof p->cur);
        p->cur.line = p->line;
        p->in_item = true;
        size_t i = 1;
        while (i < n && is_space(s[i]))
            i++;
        if (i == n)
            return fail(p, "an empty list item (write the entry on the same line as its '-')");
        if (s[i] == '{') {
            CL_TRY(read_flow_mapping(p, s + i, n - i));
            return finish_item(p);
        }
        p->key_indent = indent + (int)i;
        size_t used;
        return read_pair(p, s + i, n - i, false, &used);
    }
    if (p->in_item && p->key_indent >= 0 && indent == p->key_indent) {
        size_t used;
        return read_pair(p, s, n, false, &used);
    }
    return fail(p, "unexpected indentation (an entry's keys line up under its first key)");
}

int cl_allowlist_parse(const uint8_t *text, size_t len, cl_allowlist *out)
{
    memset(out, 0, sizeof *out);
    parser p = {.out = out, .item_indent = -1, .key_indent = -1};
    cl_cursor c = cl_cursor_make(text, len);
    int rc = CL_OK;
    while (!cl_cursor_at_end(&c)) {
        p.line++;
        cl_slice raw;
        bool found;
        CL_TRY_OUT(cl_cursor_until(&c, '\n', &raw, &found));
        if (!found) { /* the last line has no newline */
            raw.data = c.data + c.pos;
            raw.len = cl_cursor_remaining(&c);
            CL_TRY_OUT(cl_cursor_skip(&c, raw.len));
        }
        const char *s = (const char *)raw.data;
        size_t n = raw.len;
        if (n && s[n - 1] == '\r')
            n--;
        if (n > LINE_MAX_BYTES)
            CL_FAIL_OUT(CL_EPARSE, "allowlist line %u: longer than %d bytes", p.line, LINE_MAX_BYTES);
        /* characters, comments (a '#' at the start or after a space, outside quotes) */
        char quote = 0;
        size_t end = n;
        for (size_t i = 0; i < n; i++) {
            unsigned char ch = (unsigned char)s[i];
            if (ch == '\t')
                CL_FAIL_OUT(CL_EPARSE, "allowlist line %u: tab characters are not allowed (indent with spaces)",
                            p.line);
            if (ch < 0x20 || ch >= 0x7f)
                CL_FAIL_OUT(CL_EPARSE, "allowlist line %u: control or non-ASCII byte 0x%02x", p.line, ch);
            if (quote) {
                if (ch == (unsigned char)quote)
                    quote = 0;
            } else if (ch == '\'' || ch == '"') {
                quote = (char)ch;
            } else if (ch == '#' && (i == 0 || s[i - 1] == ' ')) {
                end = i;
                break;
            }
        }
        n = end;
        while (n && s[n - 1] == ' ')
            n--;
        int indent = 0;
        while ((size_t)indent < n && s[indent] == ' ')
            indent++;
        if ((size_t)indent == n)
            continue; /* blank or comment-only */
        CL_TRY_OUT(read_line(&p, s + indent, n - (size_t)indent, indent));
    }
    CL_TRY_OUT(finish_item(&p));
    if (!p.seen_key)
        CL_FAIL_OUT(CL_EPARSE, "allowlist: no 'allowlist:' key in the file");
    if (!p.empty_flow && p.item_indent < 0)
        CL_FAIL_OUT(CL_EPARSE, "allowlist: 'allowlist:' has no entries (write 'allowlist: []' for an empty list)");
out:
    if (rc < 0)
        cl_allowlist_free(out);
    return rc;
}

int cl_allowlist_load(const char *path, cl_allowlist *out)
{
    memset(out, 0, sizeof *out);
    cl_buf b = CL_BUF_INIT;
    int rc = cl_read_file(path, CL_ALLOWLIST_MAX_FILE, &b); /* its messages name the path */
    if (rc == CL_OK) {
        rc = cl_allowlist_parse(b.data ? b.data : (const uint8_t *)"", b.len, out);
        if (rc < 0)
            cl_error_prefix(rc, "%s: ", path);
    }
    cl_buf_free(&b);
    return rc;
}

void cl_allowlist_free(cl_allowlist *a)
{
    free(a->entries);
    a->entries = NULL;
    a->count = 0;
}

static bool same_ip(const struct sockaddr *a, const struct sockaddr_storage *b)
{
    if (a->sa_family != b->ss_family)
        return false;
    if (a->sa_family == AF_INET)
        return ((const struct sockaddr_in *)a)->sin_addr.s_addr == ((const struct sockaddr_in *)b)->sin_addr.s_addr;
    if (a->sa_family == AF_INET6)
        return !memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr, &((const struct sockaddr_in6 *)b)->sin6_addr,
                       16);
    return false;
}

int cl_allowlist_check(const cl_allowlist *a, const char *host, uint16_t port, const struct sockaddr *remote,
                       cl_allow_resolve_fn resolve, void *ctx, const cl_allow_entry **matched)
{
    *matched = NULL;
    size_t same_port = 0;
    for (size_t i = 0; i < a->count; i++) {
        const cl_allow_entry *e = &a->entries[i];
        if (e->port != port)
            continue;
        same_port++;
        /* vsock-proxy compares the names as strings (`addr == remote_host`),
         * byte for byte; a name that differs only in case still matches
         * below, by the address it resolves to, as there */
        if (!strcmp(e->address, host)) {
            *matched = e;
            return CL_OK;
        }
        if (!remote || !resolve)
            continue;
        struct sockaddr_storage addrs[16];
        size_t n = 0;
        if (resolve(ctx, e->address, addrs, 16, &n) < 0) {
            cl_error_clear(); /* an entry that does not resolve matches nothing */
            continue;
        }
        for (size_t k = 0; k < n; k++) {
            if (same_ip(remote, &addrs[k])) {
                *matched = e;
                return CL_OK;
            }
        }
    }
    return cl_error_set(CL_EVERIFY,
                        "%s port %u is not in the allowlist (%zu entries, %zu of them for port %u; neither the name "
                        "nor its address matched)",
                        host, port, a->count, same_port, port);
}

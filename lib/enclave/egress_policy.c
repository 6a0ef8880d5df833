#include "cloister/enclave/egress_policy.h"

#include "cloister/core/buf.h"
#include "cloister/core/encoding.h"

#include <arpa/inet.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <yaml.h>

enum { RULE_NAME, RULE_CIDR };

typedef struct rule {
    int kind;
    char name[CL_EGRESS_NAME_MAX + 1]; /* RULE_NAME: lower case, no trailing dot */
    cl_egress_addr net;                /* RULE_CIDR: masked */
    unsigned prefix;
    int port_lo, port_hi; /* -1, -1: every port and protocol */
    char *text;
} rule;

struct cl_egress_policy {
    rule *lists[2]; /* allow, deny */
    size_t counts[2];
    uint8_t sha256[32];
    char sha256_hex[65];
};

/* ---- rules ---------------------------------------------------------------------------- */

static void lower(char *s)
{
    for (; *s; s++)
        if (*s >= 'A' && *s <= 'Z')
            *s = (char)(*s + 32);
}

static int parse_port(const char *s, int *out)
{
    if (!*s || strlen(s) > 5)
        return -1;
    long v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (*p - '0');
    }
    if (v < 1 || v > 65535)
        return -1;
    *out = (int)v;
    return 0;
}

/* "80" or "8000-8100" */
static int parse_ports(char *s, rule *r)
{
    char *dash = strchr(s, '-');
    if (dash)
        *dash = 0;
    if (parse_port(s, &r->port_lo) < 0)
        return -1;
    r->port_hi = r->port_lo;
    if (dash && (parse_port(dash + 1, &r->port_hi) < 0 || r->port_hi < r->port_lo))
        return -1;
    return 0;
}

static int parse_cidr(const char *text, rule *r)
{
    char host[64];
    const char *slash = strchr(text, '/');
    size_t hl = slash ? (size_t)(slash - text) : strlen(text);
    if (hl == 0 || hl >= sizeof host)
        return -1;
    memcpy(host, text, hl);
    host[hl] = 0;
    cl_egress_addr a = {0};
    unsigned bits;
    if (inet_pton(AF_INET, host, a.b) == 1) {
        a.family = AF_INET;
        bits = 32;
    } else if (inet_pton(AF_INET6, host, a.b) == 1) {
        a.family = AF_INET6;
        bits = 128;
    } else {
        return -1;
    }
    unsigned prefix = bits;
    if (slash) {
        const char *p = slash + 1;
        if (!*p || strlen(p) > 3)
            return -1;
        prefix = 0;
        for (; *p; p++) {
            if (*p < '0' || *p > '9')
                return -1;
            prefix = prefix * 10 + (unsigned)(*p - '0');
        }
        if (prefix > bits)
            return -1;
    }
    /* masked, so that matching is a plain prefix compare */
    for (unsigned i = 0; i < bits / 8; i++) {
        unsigned keep = prefix > i * 8 ? prefix - i * 8 : 0;
        if (keep < 8)
            a.b[i] &= (uint8_t)(0xff00u >> keep);
    }
    r->kind = RULE_CIDR;
    r->net = a;
    r->prefix = prefix;
    return 0;
}

static bool label_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

/* Labels of letters, digits, '-' and '_'; "*" anywhere, "**" leftmost only. */
static int check_name_pattern(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > CL_EGRESS_NAME_MAX)
        return -1;
    const char *label = s;
    bool first = true;
    for (;;) {
        const char *dot = strchr(label, '.');
        size_t ll = dot ? (size_t)(dot - label) : strlen(label);
        if (ll == 0 || ll > 63)
            return -1;
        if (ll == 2 && label[0] == '*' && label[1] == '*') {
            if (!first)
                return -1;
        } else if (!(ll == 1 && label[0] == '*')) {
            for (size_t i = 0; i < ll; i++)
                if (!label_char(label[i]))
                    return -1;
        }
        if (!dot)
            return 0;
        label = dot + 1;
        first = false;
    }
}

/* One list entry: PATTERN, PATTERN:PORTS, or [V6-CIDR]:PORTS. */
static int parse_rule(const char *text, rule *r, const char **why)
{
    memset(r, 0, sizeof *r);
    r->port_lo = r->port_hi = -1;
    char buf[CL_EGRESS_NAME_MAX + 32];
    size_t n = strlen(text);
    while (n && (text[n - 1] == ' ' || text[n - 1] == '\t'))
        n--;
    while (n && (*text == ' ' || *text == '\t'))
        text++, n--;
    if (n == 0) {
        *why = "an empty entry";
        return -1;
    }
    if (n >= sizeof buf) {
        *why = "longer than a host name can be";
        return -1;
    }
    memcpy(buf, text, n);
    buf[n] = 0;
    lower(buf);
    char *ports = NULL;
    char *host = buf;
    if (buf[0] == '[') {
        char *close = strchr(buf, ']');
        if (!close || (close[1] && close[1] != ':')) {
            *why = "'[' without a matching ']' before the port";
            return -1;
        }
        *close = 0;
        host = buf + 1;
        if (close[1] == ':')
            ports = close + 2;
        if (parse_cidr(host, r) < 0 || r->net.family != AF_INET6) {
            *why = "not an IPv6 address or CIDR inside [ ]";
            return -1;
        }
    } else {
        char *colon = strchr(buf, ':');
        if (colon && strchr(colon + 1, ':')) {
            /* an IPv6 address or CIDR without brackets: no port */
            if (parse_cidr(buf, r) < 0) {
                *why = "not an IPv6 address or CIDR (write [ADDR]:PORT for a port)";
                return -1;
            }
        } else {
            if (colon) {
                *colon = 0;
                ports = colon + 1;
            }
            if (parse_cidr(host, r) < 0) {
                bool numeric = true;
                for (const char *p = host; *p; p++)
                    if (!((*p >= '0' && *p <= '9') || *p == '.' || *p == '/'))
                        numeric = false;
                if (numeric || strchr(host, '/')) {
                    *why = "not a valid IPv4 address or CIDR";
                    return -1;
                }
                size_t hl = strlen(host);
                if (hl > 1 && host[hl - 1] == '.')
                    host[hl - 1] = 0;
                if (check_name_pattern(host) < 0) {
                    *why = "not a host name pattern (labels of letters, digits, '-', '_'; '*' for one label, "
                           "'**' leftmost)";
                    return -1;
                }
                r->kind = RULE_NAME;
                memcpy(r->name, host, strlen(host) + 1);
            }
        }
    }
    if (ports && parse_ports(ports, r) < 0) {
        *why = "the port is not N or LO-HI within 1..65535";
        return -1;
    }
    r->text = strndup(text, n);
    if (!r->text) {
        *why = "out of memory";
        return -1;
    }
    return 0;
}

/* ---- matching --------------------------------------------------------------------------- */

static bool addr_in(const rule *r, const cl_egress_addr *a)
{
    if (r->net.family != a->family)
        return false;
    unsigned full = r->prefix / 8, rest = r->prefix % 8;
    if (memcmp(r->net.b, a->b, full) != 0)
        return false;
    return rest == 0 || ((a->b[full] ^ r->net.b[full]) & (uint8_t)(0xff00u >> rest)) == 0;
}

#define MAX_LABELS 128

static size_t split_labels(const char *s, const char *start[MAX_LABELS], size_t len[MAX_LABELS])
{
    size_t n = 0;
    for (;;) {
        const char *dot = strchr(s, '.');
        if (n == MAX_LABELS)
            return 0; /* more labels than a name of 253 bytes has: matches nothing */
        start[n] = s;
        len[n] = dot ? (size_t)(dot - s) : strlen(s);
        n++;
        if (!dot)
            return n;
        s = dot + 1;
    }
}

/* Label by label from the right (enclaver's semantics): "*" is any one
 * label, a leftmost "**" one or more. */
static bool name_matches(const char *pattern, const char *name)
{
    const char *ps[MAX_LABELS], *ns[MAX_LABELS];
    size_t pl[MAX_LABELS], nl[MAX_LABELS];
    size_t pc = split_labels(pattern, ps, pl), nc = split_labels(name, ns, nl);
    if (pc == 0 || nc == 0)
        return false;
    while (pc > 0) {
        if (nc == 0)
            return false;
        pc--, nc--;
        if (pl[pc] == 2 && ps[pc][0] == '*' && ps[pc][1] == '*')
            return true;
        if (pl[pc] == 1 && ps[pc][0] == '*')
            continue;
        if (pl[pc] != nl[nc] || memcmp(ps[pc], ns[nc], pl[pc]) != 0)
            return false;
    }
    return nc == 0;
}

static int port_match(const rule *r, int port)
{
    if (r->port_lo < 0)
        return CL_EGRESS_MATCH;
    return port >= r->port_lo && port <= r->port_hi ? CL_EGRESS_MATCH : CL_EGRESS_MATCH_OTHER_PORT;
}

int cl_egress_policy_match_addr(const cl_egress_policy *p, bool deny, const cl_egress_addr *a, int port)
{
    int best = CL_EGRESS_NO_MATCH;
    const rule *rs = p->lists[deny];
    for (size_t i = 0; i < p->counts[deny]; i++) {
        if (rs[i].kind != RULE_CIDR || !addr_in(&rs[i], a))
            continue;
        int m = port_match(&rs[i], port);
        if (m == CL_EGRESS_MATCH)
            return m;
        best = m;
    }
    return best;
}

static void normalise_name(const char *name, char *out)
{
    size_t n = strnlen(name, CL_EGRESS_NAME_MAX + 1);
    if (n > CL_EGRESS_NAME_MAX)
        n = CL_EGRESS_NAME_MAX + 1; /* matches nothing: longer than any pattern */
    memcpy(out, name, n);
    out[n] = 0;
    if (n > 0 && out[n - 1] == '.')
        out[n - 1] = 0;
    lower(out);
}

int cl_egress_policy_match_name(const cl_egress_policy *p, bool deny, const char *name, int port)
{
    char n[CL_EGRESS_NAME_MAX + 2];
    normalise_name(name, n);
    if (!n[0] || strlen(n) > CL_EGRESS_NAME_MAX)
        return CL_EGRESS_NO_MATCH;
    int best = CL_EGRESS_NO_MATCH;
    const rule *rs = p->lists[deny];
    for (size_t i = 0; i < p->counts[deny]; i++) {
        if (rs[i].kind != RULE_NAME || !name_matches(rs[i].name, n))
            continue;
        int m = port_match(&rs[i], port);
        if (m == CL_EGRESS_MATCH)
            return m;
        best = m;
    }
    return best;
}

bool cl_egress_policy_name_resolvable(const cl_egress_policy *p, const char *name)
{
    /* any port: -1 matches only port-less rules, so ask for both shapes */
    bool allowed = cl_egress_policy_match_name(p, false, name, -1) != CL_EGRESS_NO_MATCH;
    bool denied = cl_egress_policy_match_name(p, true, name, -1) == CL_EGRESS_MATCH;
    return allowed && !denied;
}

const char *cl_egress_addr_text(const cl_egress_addr *a, char *buf, size_t len)
{
    if (!inet_ntop(a->family == AF_INET6 ? AF_INET6 : AF_INET, a->b, buf, (socklen_t)len))
        snprintf(buf, len, "?");
    return buf;
}

/* ---- the YAML file ---------------------------------------------------------------------- */

typedef struct loader {
    yaml_document_t *doc;
    const char *source;
    cl_egress_policy *p;
    size_t caps[2];
} loader;

static unsigned line_of(const yaml_node_t *n)
{
    return (unsigned)n->start_mark.line + 1;
}

static const char *scalar(const yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

static int add_rules(loader *l, const yaml_node_t *seq, bool deny)
{
    const char *what = deny ? "deny" : "allow";
    if (seq->type == YAML_SCALAR_NODE && seq->data.scalar.length == 0 && seq->data.scalar.style == YAML_PLAIN_SCALAR_STYLE)
        return 0; /* `allow:` with nothing after it: an empty list */
    CL_ENSURE(seq->type == YAML_SEQUENCE_NODE, CL_EPARSE, "%s:%u: egress.%s must be a list of strings",
              l->source, line_of(seq), what);
    for (yaml_node_item_t *it = seq->data.sequence.items.start; it < seq->data.sequence.items.top; it++) {
        const yaml_node_t *item = yaml_document_get_node(l->doc, *it);
        const char *text = scalar(item);
        CL_ENSURE(text, CL_EPARSE, "%s:%u: egress.%s entries must be strings (a name, an IP or a CIDR)",
                  l->source, item ? line_of(item) : line_of(seq), what);
        CL_ENSURE(l->p->counts[0] + l->p->counts[1] < CL_EGRESS_MAX_RULES, CL_ELIMIT,
                  "%s:%u: more than %d egress rules", l->source, line_of(item), CL_EGRESS_MAX_RULES);
        CL_ENSURE(strlen(text) == item->data.scalar.length, CL_EPARSE, "%s:%u: a NUL byte in an egress rule",
                  l->source, line_of(item));
        if (l->p->counts[deny] == l->caps[deny]) {
            size_t cap = l->caps[deny] ? l->caps[deny] * 2 : 16;
            rule *grown = realloc(l->p->lists[deny], cap * sizeof *grown);
            if (!grown)
                return cl_error_set(CL_ENOMEM, "out of memory");
            l->p->lists[deny] = grown;
            l->caps[deny] = cap;
        }
        const char *why = NULL;
        if (parse_rule(text, &l->p->lists[deny][l->p->counts[deny]], &why) < 0)
            return cl_error_set(CL_EPARSE, "%s:%u: egress.%s entry \"%.80s\": %s", l->source, line_of(item), what,
                                text, why);
        l->p->counts[deny]++;
    }
    return 0;
}

/* enclaver's manifest keys: a whole enclaver.yaml is accepted as a policy */
static bool enclaver_key(const char *k)
{
    static const char *const keys[] = {"version", "name", "target", "sources", "signature", "ingress",
                                       "defaults", "kms_proxy", "api"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (!strcmp(k, keys[i]))
            return true;
    return false;
}

static int load_doc(loader *l)
{
    const yaml_node_t *root = yaml_document_get_root_node(l->doc);
    CL_ENSURE(root, CL_EPARSE, "%s: empty: expected `egress: {allow: [...], deny: [...]}`", l->source);
    CL_ENSURE(root->type == YAML_MAPPING_NODE, CL_EPARSE,
              "%s:%u: the top level must be a mapping with an `egress` key", l->source, line_of(root));
    const yaml_node_t *egress = NULL;
    for (yaml_node_pair_t *kv = root->data.mapping.pairs.start; kv < root->data.mapping.pairs.top; kv++) {
        const yaml_node_t *k = yaml_document_get_node(l->doc, kv->key);
        const char *key = scalar(k);
        CL_ENSURE(key, CL_EPARSE, "%s:%u: keys must be strings", l->source, k ? line_of(k) : line_of(root));
        if (!strcmp(key, "egress")) {
            CL_ENSURE(!egress, CL_EPARSE, "%s:%u: `egress` given twice", l->source, line_of(k));
            egress = yaml_document_get_node(l->doc, kv->value);
        } else {
            CL_ENSURE(enclaver_key(key), CL_EPARSE, "%s:%u: unknown key \"%.40s\" (expected `egress`)", l->source,
                      line_of(k), key);
        }
    }
    CL_ENSURE(egress, CL_EPARSE, "%s: no `egress` key: expected `egress: {allow: [...], deny: [...]}`",
              l->source);
    CL_ENSURE(egress->type == YAML_MAPPING_NODE, CL_EPARSE,
              "%s:%u: `egress` must be a mapping with `allow` and `deny` lists", l->source, line_of(egress));
    bool seen[2] = {false, false};
    for (yaml_node_pair_t *kv = egress->data.mapping.pairs.start; kv < egress->data.mapping.pairs.top; kv++) {
        const yaml_node_t *k = yaml_document_get_node(l->doc, kv->key);
        const yaml_node_t *v = yaml_document_get_node(l->doc, kv->value);
        const char *key = scalar(k);
        CL_ENSURE(key && v, CL_EPARSE, "%s:%u: keys must be strings", l->source, line_of(egress));
        if (!strcmp(key, "allow") || !strcmp(key, "deny")) {
            bool deny = key[0] == 'd';
            CL_ENSURE(!seen[deny], CL_EPARSE, "%s:%u: egress.%s given twice", l->source, line_of(k), key);
            seen[deny] = true;
            CL_TRY(add_rules(l, v, deny));
        } else if (!strcmp(key, "proxy_port")) {
            /* enclaver's HTTP proxy port: no meaning for a TAP link */
        } else {
            return cl_error_set(CL_EPARSE, "%s:%u: unknown key egress.%.40s (expected allow, deny)", l->source,
                                line_of(k), key);
        }
    }
    return 0;
}

void cl_egress_policy_free(cl_egress_policy *p)
{
    if (!p)
        return;
    for (int d = 0; d < 2; d++) {
        for (size_t i = 0; i < p->counts[d]; i++)
            free(p->lists[d][i].text);
        free(p->lists[d]);
    }
    free(p);
}

int cl_egress_policy_parse(const uint8_t *text, size_t len, const char *source, cl_egress_policy **out)
{
    *out = NULL;
    if (!source)
        source = "egress policy";
    CL_ENSURE(len <= CL_EGRESS_MAX_FILE, CL_ELIMIT, "%s: larger than %u bytes", source, CL_EGRESS_MAX_FILE);
    cl_egress_policy *p = calloc(1, sizeof *p);
    if (!p)
        return cl_error_set(CL_ENOMEM, "out of memory");
    SHA256(text, len, p->sha256);
    cl_hex_encode(p->sha256, sizeof p->sha256, p->sha256_hex);

    yaml_parser_t parser;
    yaml_document_t doc;
    int rc = 0;
    bool have_doc = false;
    if (!yaml_parser_initialize(&parser)) {
        free(p);
        return cl_error_set(CL_ENOMEM, "out of memory");
    }
    yaml_parser_set_input_string(&parser, text, len);
    if (!yaml_parser_load(&parser, &doc)) {
        CL_FAIL_OUT(CL_EPARSE, "%s:%zu: not valid YAML: %s", source, parser.problem_mark.line + 1,
                    parser.problem ? parser.problem : "parse error");
    }
    have_doc = true;
    loader l = {.doc = &doc, .source = source, .p = p};
    CL_TRY_OUT(load_doc(&l));
    /* one document only: a second one would be a policy nobody reads */
    yaml_document_t extra;
    if (!yaml_parser_load(&parser, &extra))
        CL_FAIL_OUT(CL_EPARSE, "%s:%zu: not valid YAML: %s", source, parser.problem_mark.line + 1,
                    parser.problem ? parser.problem : "parse error");
    bool more = yaml_document_get_root_node(&extra) != NULL;
    yaml_document_delete(&extra);
    CL_ENSURE_OUT(!more, CL_EPARSE, "%s: more than one YAML document", source);
out:
    if (have_doc)
        yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    if (rc < 0) {
        cl_egress_policy_free(p);
        return rc;
    }
    *out = p;
    return 0;
}

int cl_egress_policy_load(const char *path, cl_egress_policy **out)
{
    cl_buf b = CL_BUF_INIT;
    int rc = cl_read_file(path, CL_EGRESS_MAX_FILE, &b);
    if (rc < 0)
        return cl_error_prefix(rc, "egress policy %s: ", path);
    rc = cl_egress_policy_parse(b.data ? b.data : (const uint8_t *)"", b.len, path, out);
    cl_buf_free(&b);
    return rc;
}

void cl_egress_policy_sha256(const cl_egress_policy *p, uint8_t out[static 32])
{
    memcpy(out, p->sha256, 32);
}

const char *cl_egress_policy_sha256_hex(const cl_egress_policy *p)
{
    return p->sha256_hex;
}

size_t cl_egress_policy_count(const cl_egress_policy *p, bool deny)
{
    return p->counts[deny];
}

const char *cl_egress_policy_rule(const cl_egress_policy *p, bool deny, size_t i)
{
    return i < p->counts[deny] ? p->lists[deny][i].text : NULL;
}

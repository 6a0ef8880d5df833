#include "cloister/host/allowlist.h"
#include "test.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <unistd.h>

static int parse(const char *text, cl_allowlist *a)
{
    return cl_allowlist_parse((const uint8_t *)text, strlen(text), a);
}

/* The shape of vsock-proxy's own configs/vsock-proxy.yaml. */
static void parses_flow_entries(void)
{
    cl_allowlist a;
    CHECK_OK(parse("allowlist:\n"
                   "- {address: kms.us-east-1.amazonaws.com, port: 443}\n"
                   "- {address: kms-fips.us-east-1.amazonaws.com, port: 443}\n"
                   "- {port: 8443, address: 10.0.0.1}\n",
                   &a));
    CHECK(a.count == 3);
    CHECK(!strcmp(a.entries[0].address, "kms.us-east-1.amazonaws.com") && a.entries[0].port == 443);
    CHECK(a.entries[0].line == 2 && a.entries[2].line == 4);
    CHECK(!strcmp(a.entries[2].address, "10.0.0.1") && a.entries[2].port == 8443);
    cl_allowlist_free(&a);
}

static void parses_block_entries_comments_quotes(void)
{
    cl_allowlist a;
    CHECK_OK(parse("---\n"
                   "# services the enclave may reach\n"
                   "allowlist:   # trailing comment\n"
                   "\n"
                   "  - address: \"kms.eu-west-1.amazonaws.com\"\r\n"
                   "    port: 443   # KMS\r\n"
                   "  - address: '::1'\n"
                   "    # a comment between keys\n"
                   "    port: 8000\n"
                   "  - {address: 'a.example', port: 1}\n"
                   "  - port: 65535\n"
                   "    address: b_c.example",
                   &a));
    CHECK(a.count == 4);
    CHECK(!strcmp(a.entries[0].address, "kms.eu-west-1.amazonaws.com") && a.entries[0].port == 443);
    CHECK(!strcmp(a.entries[1].address, "::1") && a.entries[1].port == 8000);
    CHECK(!strcmp(a.entries[2].address, "a.example") && a.entries[2].port == 1);
    CHECK(!strcmp(a.entries[3].address, "b_c.example") && a.entries[3].port == 65535);
    cl_allowlist_free(&a);

    CHECK_OK(parse("allowlist: []\n# nothing allowed\n", &a));
    CHECK(a.count == 0);
    cl_allowlist_free(&a);
}

static void rejects_malformed(void)
{
    static const struct {
        const char *text, *fragment;
    } bad[] = {
        {"", "no 'allowlist:' key"},
        {"# only a comment\n", "no 'allowlist:' key"},
        {"allowlist:\n", "has no entries"},
        {"allowlist:\n\t- {address: a, port: 1}\n", "line 2: tab"},
        {"services:\n- {address: a, port: 1}\n", "no 'allowlist:' key"},
        {"  - {address: a, port: 1}\n", "line 1: expected 'allowlist:'"},
        {"allowlist:\n- {address: a, port: 1}\nallowlist:\n- {address: b, port: 1}\n", "line 3: duplicate key 'allowlist'"},
        {"allowlist:\n- {address: a, port: 1}\n---\nallowlist: []\n", "line 3: a second YAML document"},
        {"allowlist:\n- {address: a, port: 1, weight: [2]}\n", "unsupported YAML"},
        {"allowlist: kms\n", "line 1: 'allowlist:' must be followed"},
        {"allowlist:\n- {address: a}\n", "line 2: entry has no 'port'"},
        {"allowlist:\n- port: 443\n", "line 2: entry has no 'address'"},
        {"allowlist:\n- {address: a, port: 0}\n", "port must be an integer from 1 to 65535"},
        {"allowlist:\n- {address: a, port: 65536}\n", "port must be an integer from 1 to 65535"},
        {"allowlist:\n- {address: a, port: 0x1bb}\n", "port must be an integer"},
        {"allowlist:\n- {address: a, port: 0443}\n", "port must be an integer"},
        {"allowlist:\n- {address: a, port: -1}\n", "port must be an integer"},
        {"allowlist:\n- {address: a, port: \"443\"}\n", "not a quoted string"},
        {"allowlist:\n- {address: a, port: 443, port: 443}\n", "duplicate key 'port'"},
        {"allowlist:\n- {address: a, address: b, port: 1}\n", "duplicate key 'address'"},
        {"allowlist:\n- {address: a, port: 1\n", "unterminated flow mapping"},
        {"allowlist:\n- {address: a, port: 1} x\n", "unexpected text after the flow mapping"},
        {"allowlist:\n- {address: a, port: 1,}\n", "expected 'key: value'"},
        {"allowlist:\n- {}\n", "entry has no 'address'"},
        {"allowlist:\n- {address: 'a, port: 1}\n", "unterminated quoted value"},
        {"allowlist:\n- {address: \"a\\tb\", port: 1}\n", "escapes"},
        {"allowlist:\n- {address: 443, port: 1}\n", "not a number"},
        {"allowlist:\n- {address: null, port: 1}\n", "not a YAML null"},
        {"allowlist:\n- {address: a b, port: 1}\n", "character a host name"},
        {"allowlist:\n- {address: *ref, port: 1}\n", "anchors, aliases"},
        {"allowlist:\n- address: &a kms\n  port: 1\n", "anchors, aliases"},
        {"allowlist:\n- address: a\n   port: 1\n", "line 3: unexpected indentation"},
        {"allowlist:\n- address: a\n port: 1\n", "line 3: unexpected indentation"},
        {"allowlist:\n- address: 'a' b\n  port: 1\n", "unexpected text after the value"},
        {"allowlist:\n- address: a\n  port: 1 2\n", "port must be an integer"},
        {"allowlist:\n- address:\n  port: 1\n", "value on the same line"},
        {"allowlist:\n-\n  address: a\n  port: 1\n", "empty list item"},
        {"allowlist:\n  - {address: a, port: 1}\n - {address: b, port: 1}\n", "same indentation"},
        {"allowlist:\n- [a, 1]\n", "expected 'key: value'"},
        {"allowlist: []\n- {address: a, port: 1}\n", "after 'allowlist: []'"},
        {"allowlist:\n- {address: caf\xc3\xa9.example, port: 1}\n", "non-ASCII"},
        {"allowlist:\n- address: a:b: c\n  port: 1\n", "unexpected ':'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cl_allowlist a = {0};
        cl_error_clear();
        int rc = parse(bad[i].text, &a);
        if (rc >= 0 || !strstr(cl_error_message(), bad[i].fragment)) {
            fprintf(stderr, "case %zu: rc=%d message='%s', want '%s'\n", i, rc, cl_error_message(), bad[i].fragment);
            CHECK(0);
        }
        CHECK(a.entries == NULL && a.count == 0);
    }
}

/* vsock-proxy looks up `allowlist`, then `address` and `port` in each entry,
 * and never sees any other key: a file with more keys works there, so here. */
static void ignores_other_keys_like_vsock_proxy(void)
{
    cl_allowlist a;
    CHECK_OK(parse("---\n"
                   "version: 2\n"
                   "notes:\n"
                   "  owner: platform-team\n"
                   "  - whatever: [1, {x: y}]\n"
                   "extra:\n"
                   "- {address: not-an-entry.example, port: 1}\n"
                   "allowlist:\n"
                   "- {address: kms.eu-west-1.amazonaws.com, port: 443, comment: regional}\n"
                   "- address: kms-fips.eu-west-1.amazonaws.com\n"
                   "  note: 'fips'\n"
                   "  port: 443\n"
                   "  weight: 3\n"
                   "trailer: {a: 1}\n"
                   "more:\n"
                   "  - 1\n",
                   &a));
    CHECK(a.count == 2);
    if (a.count == 2) {
        CHECK(!strcmp(a.entries[0].address, "kms.eu-west-1.amazonaws.com") && a.entries[0].port == 443);
        CHECK(!strcmp(a.entries[1].address, "kms-fips.eu-west-1.amazonaws.com") && a.entries[1].port == 443);
        CHECK(a.entries[0].line == 9 && a.entries[1].line == 10);
    }
    cl_allowlist_free(&a);
    /* the list under another key is not the allowlist */
    CHECK_ERR(parse("services:\n- {address: a, port: 1}\n", &a), CL_EPARSE, "no 'allowlist:' key");
}

static void loads_file_and_names_it(void)
{
    char path[] = "/tmp/cloister-allowlist-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    const char *text = "allowlist:\n- {address: localhost, port: 8443}\n- {address: x, port: 99999}\n";
    CHECK(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
    close(fd);
    cl_allowlist a;
    CHECK_ERR(cl_allowlist_load(path, &a), CL_EPARSE, "line 3");
    CHECK(strstr(cl_error_message(), path) != NULL);
    unlink(path);
    CHECK_ERR(cl_allowlist_load("/nonexistent/vsock-proxy.yaml", &a), CL_EIO, "/nonexistent/vsock-proxy.yaml");
}

/* A resolver with fixed answers, so that matching is tested without DNS. */
static int fake_resolve(void *ctx, const char *host, struct sockaddr_storage *addrs, size_t max, size_t *n)
{
    int *calls = ctx;
    (*calls)++;
    *n = 0;
    if (!strcmp(host, "kms.example")) {
        struct sockaddr_in *a = (struct sockaddr_in *)&addrs[0];
        memset(a, 0, sizeof *a);
        a->sin_family = AF_INET;
        inet_pton(AF_INET, "192.0.2.10", &a->sin_addr);
        struct sockaddr_in6 *b = (struct sockaddr_in6 *)&addrs[1];
        memset(b, 0, sizeof *b);
        b->sin6_family = AF_INET6;
        inet_pton(AF_INET6, "2001:db8::10", &b->sin6_addr);
        *n = max < 2 ? max : 2;
        return CL_OK;
    }
    return cl_error_set(CL_EIO, "cannot resolve %s", host);
}

static void matches_like_vsock_proxy(void)
{
    cl_allowlist a;
    CHECK_OK(parse("allowlist:\n"
                   "- {address: kms.us-east-1.amazonaws.com, port: 443}\n"
                   "- {address: broken.invalid, port: 8443}\n"
                   "- {address: kms.example, port: 8443}\n",
                   &a));
    const cl_allow_entry *m;
    int calls = 0;
    /* by name, byte for byte as vsock-proxy compares (`addr == remote_host`); no resolution needed */
    CHECK_OK(cl_allowlist_check(&a, "kms.us-east-1.amazonaws.com", 443, NULL, fake_resolve, &calls, &m));
    CHECK(m == &a.entries[0] && calls == 0);
    CHECK_ERR(cl_allowlist_check(&a, "KMS.US-EAST-1.amazonaws.com", 443, NULL, fake_resolve, &calls, &m), CL_EVERIFY,
              "neither the name");
    CHECK_ERR(cl_allowlist_check(&a, "kms.us-east-1.amazonaws.com.", 443, NULL, fake_resolve, &calls, &m), CL_EVERIFY,
              NULL);
    /* the port must match too */
    CHECK_ERR(cl_allowlist_check(&a, "kms.us-east-1.amazonaws.com", 444, NULL, fake_resolve, &calls, &m), CL_EVERIFY,
              "kms.us-east-1.amazonaws.com port 444 is not in the allowlist (3 entries, 0 of them for port 444");
    CHECK(m == NULL);

    /* by address: the remote's address is one the entry resolves to; an entry that
     * does not resolve is skipped */
    struct sockaddr_in6 r6 = {.sin6_family = AF_INET6};
    inet_pton(AF_INET6, "2001:db8::10", &r6.sin6_addr);
    calls = 0;
    CHECK_OK(cl_allowlist_check(&a, "2001:db8::10", 8443, (struct sockaddr *)&r6, fake_resolve, &calls, &m));
    CHECK(m == &a.entries[2] && calls == 2);
    struct sockaddr_in r4 = {.sin_family = AF_INET};
    inet_pton(AF_INET, "192.0.2.10", &r4.sin_addr);
    CHECK_OK(cl_allowlist_check(&a, "alias.example", 8443, (struct sockaddr *)&r4, fake_resolve, &calls, &m));
    CHECK(m == &a.entries[2]);
    inet_pton(AF_INET, "192.0.2.11", &r4.sin_addr);
    CHECK_ERR(cl_allowlist_check(&a, "other.example", 8443, (struct sockaddr *)&r4, fake_resolve, &calls, &m),
              CL_EVERIFY, "2 of them for port 8443");
    /* same address, other port */
    inet_pton(AF_INET, "192.0.2.10", &r4.sin_addr);
    CHECK_ERR(cl_allowlist_check(&a, "alias.example", 443, (struct sockaddr *)&r4, fake_resolve, &calls, &m),
              CL_EVERIFY, NULL);
    cl_allowlist_free(&a);
}

int main(void)
{
    RUN(parses_flow_entries);
    RUN(parses_block_entries_comments_quotes);
    RUN(rejects_malformed);
    RUN(ignores_other_keys_like_vsock_proxy);
    RUN(loads_file_and_names_it);
    RUN(matches_like_vsock_proxy);
    return test_summary();
}

/* What `cloister host acm` writes for NGINX on a real parent: p11-kit's
 * address syntax (the enclave's CID, quoted because of the ';') and the
 * engine section libp11 reads. */
#include "cloister/host/acm_conf.h"
#include "test.h"

static void p11kit_addresses(void)
{
    char out[200];
    CHECK_OK(cl_p11kit_address("vsock:16:9999", out, sizeof out));
    CHECK(!strcmp(out, "vsock:cid=16;port=9999"));
    CHECK_OK(cl_p11kit_address("unix:/run/p11.sock", out, sizeof out));
    CHECK(!strcmp(out, "unix:path=/run/p11.sock"));
    /* a client cannot dial "any", the hypervisor, itself or the parent: it
     * needs the enclave's CID */
    CHECK_ERR(cl_p11kit_address("vsock:4294967295:9999", out, sizeof out), CL_EINVAL, "enclave's CID");
    CHECK_ERR(cl_p11kit_address("vsock:3:9999", out, sizeof out), CL_EINVAL, "EnclaveCID");
    CHECK_ERR(cl_p11kit_address("vsock:2:9999", out, sizeof out), CL_EINVAL, "enclave's CID");
    CHECK_ERR(cl_p11kit_address("tcp:127.0.0.1:9999", out, sizeof out), CL_EINVAL, "vsock:CID:PORT or unix:PATH");
    CHECK(cl_p11kit_address("vsock:x:1", out, sizeof out) < 0);
    char small[10];
    CHECK_ERR(cl_p11kit_address("vsock:16:9999", small, sizeof small), CL_ELIMIT, "too long");
}

static bool cl_buf_has(const cl_buf *b, const char *needle)
{
    return memmem(b->data, b->len, needle, strlen(needle)) != NULL;
}

static bool has_line(const cl_buf *b, const char *line)
{
    size_t n = strlen(line);
    const char *p = (const char *)b->data, *end = p + b->len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
        if (len == n && !memcmp(p, line, n))
            return true;
        p += len + 1;
    }
    return false;
}

static void openssl_conf(void)
{
    cl_buf b = CL_BUF_INIT;
    CHECK_OK(cl_acm_openssl_conf(&b, "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so",
                                 "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so", "vsock:cid=16;port=9999"));
    CHECK(has_line(&b, "openssl_conf = openssl_init"));
    CHECK(has_line(&b, "engine_id = pkcs11"));
    CHECK(has_line(&b, "dynamic_path = /usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so"));
    CHECK(has_line(&b, "MODULE_PATH = /usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"));
    CHECK(has_line(&b, "init = 1"));
    /* the line to copy into NGINX's environment, quoted because of the ';' */
    CHECK(has_line(&b, "#   P11_KIT_SERVER_ADDRESS='vsock:cid=16;port=9999'"));
    CHECK(cl_buf_has(&b, "env P11_KIT_SERVER_ADDRESS;"));
    /* the provider inside the enclave: an absolute path */
    CHECK(cl_buf_has(&b, "--provider\n# /ABSOLUTE/PATH/libcloister-pkcs11.so"));
    CHECK(!cl_buf_has(&b, "--provider libcloister-pkcs11.so"));
    /* every line is a comment, a section or key = value: OpenSSL parses it */
    const char *p = (const char *)b.data, *end = p + b.len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        CHECK(nl != NULL);
        if (!nl)
            break;
        CHECK(*p == '#' || *p == '[' || memchr(p, '=', (size_t)(nl - p)));
        p = nl + 1;
    }
    cl_buf_free(&b);
    /* the address not given: the form, with the CID to look up */
    CHECK_OK(cl_acm_openssl_conf(&b, "/e.so", "/m.so", NULL));
    CHECK(cl_buf_has(&b, "P11_KIT_SERVER_ADDRESS='vsock:cid=ENCLAVE_CID;port=PORT'"));
    CHECK(cl_buf_has(&b, "nitro-cli describe-enclaves"));
    cl_buf_free(&b);
}

int main(void)
{
    RUN(p11kit_addresses);
    RUN(openssl_conf);
    return test_summary();
}

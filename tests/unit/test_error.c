#include "cloister/core/error.h"
#include "test.h"

#include <openssl/err.h>
#include <openssl/evp.h>

/* A caller passing the recorded detail back as an argument must get the
 * detail, not whatever vsnprintf leaves when it reads the buffer it writes. */
static void set_with_own_message_as_argument(void)
{
    cl_error_set(CL_EPARSE, "invalid character at offset 3");
    int rc = cl_error_set(CL_EVERIFY, "the response is not base64 (%s)", cl_error_message());
    CHECK(rc == CL_EVERIFY);
    CHECK(!strcmp(cl_error_message(), "the response is not base64 (invalid character at offset 3)"));
    cl_error_set(CL_EIO, "inner");
    cl_error_set(CL_EIO, "%s, %s", cl_error_message(), cl_error_message());
    CHECK(!strcmp(cl_error_message(), "inner, inner"));
}

static void prefix_keeps_the_detail(void)
{
    cl_error_set(CL_EINVAL, "not a duration");
    CHECK(cl_error_prefix(CL_EINVAL, "--config %s: ", "a.json") == CL_EINVAL);
    CHECK(!strcmp(cl_error_message(), "--config a.json: not a duration"));
    char big[1500];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    cl_error_prefix(CL_EINVAL, "%s", big);
    CHECK(strlen(cl_error_message()) < sizeof big);
}

static void ossl_drains_the_queue(void)
{
    ERR_clear_error();
    /* An unknown cipher name queues an OpenSSL error. */
    EVP_CIPHER *c = EVP_CIPHER_fetch(NULL, "no-such-cipher", NULL);
    CHECK(c == NULL);
    CHECK(ERR_peek_error() != 0);
    CHECK(cl_error_ossl(CL_ECRYPTO, "fetching %s", "no-such-cipher") == CL_ECRYPTO);
    CHECK(!strncmp(cl_error_message(), "fetching no-such-cipher (", 25));
    CHECK(ERR_peek_error() == 0);
    cl_error_set(CL_EIO, "inner");
    cl_error_ossl(CL_ECRYPTO, "outer: %s", cl_error_message());
    CHECK(!strcmp(cl_error_message(), "outer: inner"));
}

int main(void)
{
    RUN(set_with_own_message_as_argument);
    RUN(prefix_keeps_the_detail);
    RUN(ossl_drains_the_queue);
    return test_summary();
}

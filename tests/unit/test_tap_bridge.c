/* The host's TAP bridge (lib/host/tap_bridge.c): what it reads of its
 * configuration, and the handshake of gvproxy's own client as it reads it
 * (the framing itself: test_tap_frames.c). */
#include "cloister/host/tap_bridge.h"
#include "test.h"

static const char go_head[] = "POST /connect HTTP/1.1\r\nHost: \r\nUser-Agent: Go-http-client/1.1\r\n"
                              "Content-Length: 0\r\n\r\n";

/* What gvforwarder's Go client (http.NewRequest("POST", "/connect", nil)
 * and req.Write) puts on the stream, User-Agent and empty Host included,
 * with a frame right behind it: the host reads it with the codec it shares
 * with the enclave side. */
static void accepts_gvforwarders_handshake(void)
{
    uint8_t buf[256];
    size_t n = strlen(go_head), head = 99;
    bool complete = false;
    memcpy(buf, go_head, n);
    memcpy(buf + n, "\x0e\x00", 2);
    CHECK_OK(cl_tap_parse_connect(buf, n + 2, &head, &complete));
    CHECK(complete && head == n);
}

static void forward_specs(void)
{
    cl_tap_forward f;
    CHECK_OK(cl_tap_forward_parse("8443=443", &f));
    CHECK(f.port == 8443 && f.enclave_port == 443);
    CHECK_OK(cl_tap_forward_parse("443", &f));
    CHECK(f.port == 443 && f.enclave_port == 443);
    CHECK_ERR(cl_tap_forward_parse("0=443", &f), CL_EINVAL, "PORT");
    CHECK_ERR(cl_tap_forward_parse("443=65536", &f), CL_EINVAL, "ENCLAVE_PORT");
    CHECK_ERR(cl_tap_forward_parse("x=1", &f), CL_EINVAL, "PORT");
    CHECK_ERR(cl_tap_forward_parse("1=", &f), CL_EINVAL, "ENCLAVE_PORT");
}

static void config_is_checked(void)
{
    cl_tap_config c;
    cl_tap_config_defaults(&c);
    cl_tap_bridge *b = NULL;
    snprintf(c.dev, sizeof c.dev, "bad name");
    CHECK_ERR(cl_tap_bridge_open(&c, &b), CL_EINVAL, "only letters");
    cl_tap_config_defaults(&c);
    c.prefix = 31;
    CHECK_ERR(cl_tap_bridge_open(&c, &b), CL_EINVAL, "prefix");
    cl_tap_config_defaults(&c);
    c.enclave.s_addr = htonl(0x0a000001);
    CHECK_ERR(cl_tap_bridge_open(&c, &b), CL_EINVAL, "not in one /24");
    cl_tap_config_defaults(&c);
    c.forward_count = 2;
    c.forwards[0] = c.forwards[1] = (cl_tap_forward){443, 443};
    CHECK_ERR(cl_tap_bridge_open(&c, &b), CL_EINVAL, "published twice");
    CHECK(b == NULL);
}

int main(void)
{
    RUN(accepts_gvforwarders_handshake);
    RUN(forward_specs);
    RUN(config_is_checked);
    return test_summary();
}

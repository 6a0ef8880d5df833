/* The host's TAP stream reader (lib/host/tap_bridge.c): gvproxy's framing
 * and its POST /connect handshake, with the bytes written out by hand. */
#include "cloister/host/tap_bridge.h"
#include "test.h"

typedef struct seen {
    size_t count, lens[8];
    size_t stop_after; /* 0: never */
} seen;

static bool collect(void *ctx, const uint8_t *frame, size_t len)
{
    seen *s = ctx;
    (void)frame;
    if (s->count < 8)
        s->lens[s->count] = len;
    s->count++;
    return !(s->stop_after && s->count == s->stop_after);
}

#define MAXF (1500 + CL_TAP_ETH_HEADER + CL_TAP_ETH_VLAN)

static void walks_complete_frames_and_keeps_a_partial(void)
{
    uint8_t data[2 + 14 + 2 + 60 + 2 + 10];
    memset(data, 0xab, sizeof data);
    data[0] = 14, data[1] = 0;          /* 14 bytes: the shortest frame */
    data[16] = 60, data[17] = 0;        /* 60 bytes */
    data[78] = 0x00, data[79] = 0x01;   /* 256 bytes, little-endian: only 10 here */
    seen s = {0};
    size_t used = 99;
    CHECK_OK(cl_tap_frames_walk(data, sizeof data, MAXF, collect, &s, &used));
    CHECK(s.count == 2 && s.lens[0] == 14 && s.lens[1] == 60);
    CHECK(used == 78);
    /* each prefix of the first frame: nothing yet, nothing used */
    for (size_t n = 0; n < 16; n++) {
        seen p = {0};
        CHECK_OK(cl_tap_frames_walk(data, n, MAXF, collect, &p, &used));
        CHECK(p.count == 0 && used == 0);
    }
}

static void length_is_little_endian(void)
{
    uint8_t data[2 + 0x0102];
    memset(data, 0, sizeof data);
    data[0] = 0x02, data[1] = 0x01;
    seen s = {0};
    size_t used;
    CHECK_OK(cl_tap_frames_walk(data, sizeof data, MAXF, collect, &s, &used));
    CHECK(s.count == 1 && s.lens[0] == 0x0102 && used == sizeof data);
}

static void refuses_short_and_oversized_lengths(void)
{
    uint8_t zero[2] = {0, 0}, short_[2 + 13] = {13, 0}, big[2] = {0xff, 0xff}, over[2];
    size_t used;
    seen s = {0};
    CHECK_ERR(cl_tap_frames_walk(zero, sizeof zero, MAXF, collect, &s, &used), CL_EPARSE, "a frame of 0 bytes");
    CHECK_ERR(cl_tap_frames_walk(short_, sizeof short_, MAXF, collect, &s, &used), CL_EPARSE, "a frame of 13 bytes");
    CHECK_ERR(cl_tap_frames_walk(big, sizeof big, MAXF, collect, &s, &used), CL_EPARSE, "a frame of 65535 bytes");
    over[0] = (uint8_t)((MAXF + 1) & 0xff), over[1] = (uint8_t)((MAXF + 1) >> 8);
    CHECK_ERR(cl_tap_frames_walk(over, sizeof over, MAXF, collect, &s, &used), CL_EPARSE, "1518");
    CHECK(s.count == 0);
    /* a bad length after good frames: refused as well, once its 2 bytes are there */
    uint8_t mixed[2 + 14 + 2] = {14, 0};
    mixed[16] = 3;
    CHECK_ERR(cl_tap_frames_walk(mixed, sizeof mixed, MAXF, collect, &s, &used), CL_EPARSE, "a frame of 3 bytes");
}

static void callback_may_stop_the_walk(void)
{
    uint8_t data[3 * (2 + 14)];
    memset(data, 0, sizeof data);
    for (int i = 0; i < 3; i++)
        data[i * 16] = 14;
    seen s = {.stop_after = 2};
    size_t used;
    CHECK_OK(cl_tap_frames_walk(data, sizeof data, MAXF, collect, &s, &used));
    CHECK(s.count == 2 && used == 32);
}

static const char go_head[] = "POST /connect HTTP/1.1\r\nHost: \r\nUser-Agent: Go-http-client/1.1\r\n"
                              "Content-Length: 0\r\n\r\n";

static void accepts_gvproxy_clients_handshake(void)
{
    size_t head = 99;
    uint8_t buf[256];
    size_t n = strlen(go_head);
    memcpy(buf, go_head, n);
    memcpy(buf + n, "\x0e\x00", 2); /* a frame follows at once */
    CHECK_OK(cl_tap_handshake_parse(buf, n + 2, &head));
    CHECK(head == n);
    /* every strict prefix: more needed, not an error */
    for (size_t k = 0; k < n; k++) {
        CHECK_OK(cl_tap_handshake_parse(buf, k, &head));
        CHECK(head == 0);
    }
    const char *minimal = "POST /connect HTTP/1.0\n\n";
    CHECK_OK(cl_tap_handshake_parse((const uint8_t *)minimal, strlen(minimal), &head));
    CHECK(head == strlen(minimal));
}

static void refuses_other_requests(void)
{
    size_t head;
    const char *bad[][2] = {
        {"GET /connect HTTP/1.1\r\n\r\n", "not 'POST /connect"},
        {"POST /connect HTTP/2\r\n\r\n", "not 'POST /connect"},
        {"POST /connectx HTTP/1.1\r\n\r\n", "not 'POST /connect"},
        {"GET ", "does not start with POST /connect"},
        {"\x0e\x00\x01\x02", "does not start with POST /connect"},
        {"POST /connect HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", "Content-Length other than 0"},
        {"POST /connect HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", "Transfer-Encoding"},
        {"POST /connect HTTP/1.1\r\nno colon here\r\n\r\n", "without ':'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_ERR(cl_tap_handshake_parse((const uint8_t *)bad[i][0], strlen(bad[i][0]), &head), CL_EPARSE,
                  bad[i][1]);
    /* a head that never ends is refused at the limit, not buffered forever */
    static uint8_t endless[CL_TAP_HANDSHAKE_MAX + 10];
    memcpy(endless, "POST /connect HTTP/1.1\r\n", 24);
    for (size_t i = 24; i < sizeof endless; i += 6)
        memcpy(endless + i, "X: y\r\n", sizeof endless - i < 6 ? sizeof endless - i : 6);
    CHECK_ERR(cl_tap_handshake_parse(endless, sizeof endless, &head), CL_EPARSE, "longer than 4096");
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
    RUN(walks_complete_frames_and_keeps_a_partial);
    RUN(length_is_little_endian);
    RUN(refuses_short_and_oversized_lengths);
    RUN(callback_may_stop_the_walk);
    RUN(accepts_gvproxy_clients_handshake);
    RUN(refuses_other_requests);
    RUN(forward_specs);
    RUN(config_is_checked);
    return test_summary();
}

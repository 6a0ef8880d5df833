#include "cloister/enclave/tap_relay.h"
#include "test.h"

/* The defaults of the shared option table, as `cloister tap` applies them. */
static cl_tap_settings defaults(void)
{
    cl_tap_settings s = {0};
    cl_opt_section sec = {"tap", NULL, 0, &s};
    sec.opts = cl_tap_options(&sec.count);
    cl_options spec = {.prog = "t", .sections = &sec, .section_count = 1};
    cl_options_result r;
    char *argv[] = {"t", NULL};
    CHECK_OK(cl_options_parse(&spec, 1, argv, &r));
    cl_options_free(NULL, &r);
    return s;
}

static void free_settings(cl_tap_settings *s)
{
    cl_opt_section sec = {"tap", NULL, 0, s};
    sec.opts = cl_tap_options(&sec.count);
    cl_options spec = {.prog = "t", .sections = &sec, .section_count = 1};
    cl_options_free(&spec, NULL);
}

static void defaults_are_nitridings(void)
{
    cl_tap_settings s = defaults();
    CHECK(s.name && !strcmp(s.name, "tap0"));
    CHECK(s.address && !strcmp(s.address, "192.168.127.2/24"));
    CHECK(s.gateway && !strcmp(s.gateway, "192.168.127.1"));
    CHECK(s.mtu == 1500);
    CHECK(s.mac && !strcmp(s.mac, "ba:aa:ad:c0:ff:ee"));
    CHECK(s.parent && !strcmp(s.parent, "vsock:3:1024"));
    CHECK(s.resolv_conf && !strcmp(s.resolv_conf, "/run/resolvconf/resolv.conf"));
    CHECK(!s.egress_policy);
    CHECK_OK(cl_tap_settings_check(&s));
    free_settings(&s);
}

static void bad_values_name_the_option(void)
{
    cl_tap_settings s = defaults();
    char *keep;
#define TRY(field, value, fragment)                                                                       \
    do {                                                                                                  \
        keep = s.field;                                                                                   \
        s.field = value;                                                                                  \
        CHECK_ERR(cl_tap_settings_check(&s), CL_EINVAL, fragment);                                        \
        s.field = keep;                                                                                   \
    } while (0)
    TRY(address, "192.168.127.2", "--tap-address");
    TRY(address, "192.168.127.2/31", "--tap-address");
    TRY(address, "fe80::1/64", "--tap-address");
    TRY(gateway, "10.0.0.1", "--tap-gateway: 10.0.0.1 is not another address");
    TRY(gateway, "192.168.127.2", "--tap-gateway");
    TRY(gateway, "gw", "--tap-gateway");
    TRY(mac, "01:00:5e:00:00:01", "--tap-mac");
    TRY(mac, "ba:aa:ad:c0:ff", "--tap-mac");
    TRY(name, "a-name-longer-than-15", "--tap-name");
    TRY(name, "../x", "--tap-name");
    TRY(parent, "http://x", "--tap-parent");
#undef TRY
    CHECK_OK(cl_tap_settings_check(&s));
    free_settings(&s);
}

int main(void)
{
    RUN(defaults_are_nitridings);
    RUN(bad_values_name_the_option);
    return test_summary();
}

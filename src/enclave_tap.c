#include "enclave_tap.h"

static json_t *rules(const cl_egress_policy *p, bool deny)
{
    json_t *a = json_array();
    for (size_t i = 0; i < cl_egress_policy_count(p, deny); i++)
        json_array_append_new(a, json_string(cl_egress_policy_rule(p, deny, i)));
    return a;
}

json_t *enclave_tap_config(const cl_tap_relay *r, const cl_tap_settings *s)
{
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(s->name));
    json_object_set_new(o, "address", json_string(s->address));
    json_object_set_new(o, "gateway", json_string(s->gateway));
    json_object_set_new(o, "mtu", json_integer(s->mtu));
    json_object_set_new(o, "mac", json_string(s->mac));
    json_object_set_new(o, "parent", json_string(s->parent));
    json_object_set_new(o, "resolv-conf", json_string(s->resolv_conf ? s->resolv_conf : ""));
    json_object_set_new(o, "offload", json_string(s->offload ? s->offload : "auto"));
    const cl_egress_policy *p = cl_tap_relay_policy(r);
    if (!p) {
        json_object_set_new(o, "egress-policy", json_null());
        return o;
    }
    json_t *pol = json_object();
    json_object_set_new(pol, "file", json_string(s->egress_policy));
    json_object_set_new(pol, "sha256", json_string(cl_egress_policy_sha256_hex(p)));
    json_object_set_new(pol, "allow", rules(p, false));
    json_object_set_new(pol, "deny", rules(p, true));
    json_object_set_new(o, "egress-policy", pol);
    return o;
}

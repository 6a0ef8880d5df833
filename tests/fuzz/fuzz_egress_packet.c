/* Feeds arbitrary frames to the egress inspection, both directions, and
 * arbitrary DNS messages to its parsers: never a crash or an out-of-bounds
 * read; a verdict is always one of the reasons; whatever a DNS answer
 * teaches is for a name the policy lets be resolved; a REFUSED answer built for a
 * query is well-formed, no longer than the query, and teaches nothing. */
#include "cloister/enclave/egress_packet.h"

#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static const char policy_text[] = "egress:\n"
                                  "  allow: [a.test, '**.b.test', '*.c.test:443', 10.0.0.0/8]\n"
                                  "  deny: [x.b.test, 10.9.0.0/16]\n";

static cl_egress_policy *policy;
static const uint8_t gw[4] = {192, 168, 127, 1};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!policy && cl_egress_policy_parse((const uint8_t *)policy_text, sizeof policy_text - 1, "p", &policy) < 0)
        abort();
    cl_egress *e;
    if (cl_egress_new(policy, gw, &e) < 0)
        return 0;
    cl_egress_verdict v;
    int r = cl_egress_outbound(e, data, size, 1000, &v);
    if (r < 0 || r >= CL_EGRESS_REASONS || r != v.reason)
        abort();
    (void)cl_egress_inbound(e, data, size, 1000);
    r = cl_egress_outbound(e, data, size, 2000, &v);
    if (r < 0 || r >= CL_EGRESS_REASONS)
        abort();

    cl_egress_learn out[CL_EGRESS_LEARN_MAX];
    size_t n = 0;
    if (cl_egress_parse_dns_answer(policy, data, size, out, &n) == 0) {
        if (n > CL_EGRESS_LEARN_MAX)
            abort();
        for (size_t i = 0; i < n; i++) {
            if (!cl_egress_policy_name_resolvable(policy, out[i].name))
                abort();
            if (out[i].addr.family != AF_INET && out[i].addr.family != AF_INET6)
                abort();
        }
    }
    /* a refusal is never longer than the query it answers, and is itself a
     * well-formed frame that teaches nothing */
    uint8_t reply[2048];
    size_t rn;
    if (cl_egress_dns_refusal(data, size, reply, sizeof reply, &rn) == 0) {
        if (rn > size || rn < 14 + 20 + 8 + 12)
            abort();
        cl_egress_verdict rv;
        if (cl_egress_outbound(e, reply, rn, 3000, &rv) == CL_EGRESS_MALFORMED)
            abort();
        if (cl_egress_inbound(e, reply, rn, 3000) != 0)
            abort();
    }
    char name[CL_EGRESS_NAME_MAX + 1];
    if (cl_egress_parse_dns_query(data, size, name) == 0 && strlen(name) > CL_EGRESS_NAME_MAX)
        abort();
    cl_egress_free(e);
    return 0;
}

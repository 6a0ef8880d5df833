/* Feeds arbitrary bytes to the egress policy's YAML loader: it must never
 * crash, leak or read past the input; an accepted policy has at most
 * CL_EGRESS_MAX_RULES rules, each of which loads again on its own (as the
 * only allow rule of a fresh policy) and matches what it was written for
 * when that is a plain name or address. */
#include "cloister/enclave/egress_policy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cl_egress_policy *p = NULL;
    if (cl_egress_policy_parse(data, size, "fuzz.yaml", &p) < 0)
        return 0;
    size_t total = cl_egress_policy_count(p, false) + cl_egress_policy_count(p, true);
    if (total > CL_EGRESS_MAX_RULES)
        abort();
    for (int deny = 0; deny < 2; deny++) {
        for (size_t i = 0; i < cl_egress_policy_count(p, deny); i++) {
            const char *rule = cl_egress_policy_rule(p, deny, i);
            if (!rule || !*rule)
                abort();
            /* re-encoded as a one-rule policy, it must load */
            size_t n = strlen(rule) * 2 + 64;
            char *doc = malloc(n);
            if (!doc)
                return 0;
            size_t w = (size_t)snprintf(doc, n, "egress:\n  allow:\n    - '");
            for (const char *c = rule; *c && w + 3 < n; c++) {
                if (*c == '\'')
                    doc[w++] = '\'';
                doc[w++] = *c;
            }
            w += (size_t)snprintf(doc + w, n - w, "'\n");
            cl_egress_policy *one = NULL;
            if (cl_egress_policy_parse((const uint8_t *)doc, w, "again.yaml", &one) < 0 ||
                cl_egress_policy_count(one, false) != 1 || strcmp(cl_egress_policy_rule(one, false, 0), rule) != 0)
                abort();
            cl_egress_policy_free(one);
            free(doc);
        }
    }
    cl_egress_policy_free(p);
    return 0;
}

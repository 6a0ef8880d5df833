/* Feeds arbitrary bytes to the DNS answer parser as A and as AAAA answers:
 * it must never crash or read past the input, and what it returns must be
 * addresses of the asked family, without duplicates. */
#include "cloister/host/dns.h"

#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    for (int i = 0; i < 2; i++) {
        int qtype = i ? 28 : 1;
        cl_dns_result r;
        memset(&r, 0, sizeof r);
        if (cl_dns_parse_answer(data, size, qtype, 53, &r) < 0)
            continue;
        if (r.count > CL_DNS_MAX_ADDRS)
            abort();
        for (size_t k = 0; k < r.count; k++) {
            if (r.addrs[k].ss_family != (qtype == 1 ? AF_INET : AF_INET6))
                abort();
            for (size_t j = 0; j < k; j++)
                if (r.lens[j] == r.lens[k] && !memcmp(&r.addrs[j], &r.addrs[k], r.lens[k]))
                    abort();
        }
        if (r.count && !r.ttl_known)
            abort();
    }
    return 0;
}

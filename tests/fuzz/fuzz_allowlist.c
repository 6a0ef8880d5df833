/* Feeds arbitrary bytes to the allowlist YAML parser: it must never crash
 * or leak, and every entry it accepts has a non-empty address and a port
 * from 1 to 65535. */
#include "cloister/host/allowlist.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cl_allowlist a;
    if (cl_allowlist_parse(data, size, &a) < 0) {
        if (a.entries || a.count)
            abort();
        return 0;
    }
    for (size_t i = 0; i < a.count; i++) {
        const cl_allow_entry *e = &a.entries[i];
        if (!e->address[0] || e->port == 0 || !memchr(e->address, '\0', sizeof e->address) || e->line == 0)
            abort();
    }
    cl_allowlist_free(&a);
    return 0;
}

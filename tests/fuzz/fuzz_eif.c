/* Feeds arbitrary bytes to the EIF parser and, when they parse, to the
 * signature reader: never a crash or a read past the input; what parses has
 * its sections inside the input, in order, and the measurements set. */
#include "cloister/host/eif.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cl_eif e;
    if (cl_eif_parse(data, size, &e) < 0)
        return 0;
    uint64_t at = CL_EIF_HEADER_SIZE;
    for (unsigned i = 0; i < e.num_sections; i++) {
        if (e.sections[i].offset != at || e.sections[i].data.data != data + at + CL_EIF_SECTION_HEADER_SIZE)
            abort();
        at += CL_EIF_SECTION_HEADER_SIZE + e.sections[i].data.len;
    }
    if (at != size || !e.kernel.data || !e.num_ramdisks)
        abort();
    cl_eif_signature_info sig;
    (void)cl_eif_signature(&e, &sig, NULL);
    return 0;
}

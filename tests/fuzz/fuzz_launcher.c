/* Feeds arbitrary bytes to the app launcher's request and event parsers
 * (lib/enclave/launcher.c).  Oracle: whatever either accepts re-encodes to
 * exactly the input, so no byte of an accepted message goes unchecked (a
 * request has no room for a command, an argument or an environment). */
#include "cloister/enclave/launcher.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t re[CL_LAUNCHER_MSG_LEN];
    int type;
    if (cl_launcher_request_parse(data, size, &type) == CL_OK) {
        if (type != CL_LAUNCHER_START && type != CL_LAUNCHER_STOP)
            abort();
        cl_launcher_request_encode(type, re);
        if (size != sizeof re || memcmp(re, data, sizeof re) != 0)
            abort();
    }
    cl_launcher_event ev;
    if (cl_launcher_event_parse(data, size, &ev) == CL_OK) {
        cl_launcher_event_encode(&ev, re);
        if (size != sizeof re || memcmp(re, data, sizeof re) != 0)
            abort();
    }
    return 0;
}

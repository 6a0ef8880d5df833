/* The IMDS calls an enclave needs (include/cloister/core/imds_policy.h): a
 * pure decision on method and path, used by the host's gate (lib/host/imds.c)
 * and by the enclave's credential client, which checks the role name IMDS
 * returns before it puts it into a path. */
#include "cloister/core/imds_policy.h"

#include <string.h>

static const char *const exact_gets[] = {
    CL_IMDS_CREDENTIALS_PATH,
    "/latest/meta-data/placement/region",
    "/latest/meta-data/local-hostname",
    "/latest/meta-data/local-ipv4",
    "/latest/dynamic/instance-identity/document",
};

bool cl_imds_role_name_valid(const char *name, size_t len)
{
    if (len == 0 || len > CL_IMDS_ROLE_MAX)
        return false;
    if ((len == 1 && name[0] == '.') || (len == 2 && name[0] == '.' && name[1] == '.'))
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '+' ||
                  c == '=' || c == ',' || c == '.' || c == '@' || c == '_' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

bool cl_imds_call_allowed(cl_slice method, cl_slice path)
{
    if (cl_slice_eq(method, "PUT"))
        return cl_slice_eq(path, CL_IMDS_TOKEN_PATH);
    if (!cl_slice_eq(method, "GET"))
        return false;
    for (size_t i = 0; i < sizeof exact_gets / sizeof exact_gets[0]; i++)
        if (cl_slice_eq(path, exact_gets[i]))
            return true;
    size_t prefix = strlen(CL_IMDS_CREDENTIALS_PATH);
    return path.len > prefix && !memcmp(path.data, CL_IMDS_CREDENTIALS_PATH, prefix) &&
           cl_imds_role_name_valid((const char *)path.data + prefix, path.len - prefix);
}

const char *cl_imds_allowed_calls(void)
{
    return "PUT " CL_IMDS_TOKEN_PATH "\n"
           "GET " CL_IMDS_CREDENTIALS_PATH "\n"
           "GET " CL_IMDS_CREDENTIALS_PATH "ROLE\n"
           "GET /latest/meta-data/placement/region\n"
           "GET /latest/meta-data/local-hostname\n"
           "GET /latest/meta-data/local-ipv4\n"
           "GET /latest/dynamic/instance-identity/document\n";
}

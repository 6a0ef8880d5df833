#include "cloister/host/acm_conf.h"

#include "cloister/core/address.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

int cl_p11kit_address(const char *address, char *out, size_t out_len)
{
    cl_address a;
    CL_TRY(cl_address_parse(address, &a));
    int n;
    switch (a.kind) {
    case CL_ADDR_VSOCK:
        /* 0 hypervisor, 1 local, 2 host (pre-Nitro), 3 the parent itself,
         * U32_MAX "any": none of them is where the enclave's p11-kit
         * server listens; only the enclave's CID reaches it */
        CL_ENSURE(a.cid >= 4 && a.cid != UINT32_MAX, CL_EINVAL,
                  "%s: p11-kit's client needs the enclave's CID (nitro-cli describe-enclaves: EnclaveCID), "
                  "not %" PRIu32, address, a.cid);
        n = snprintf(out, out_len, "vsock:cid=%" PRIu32 ";port=%" PRIu32, a.cid, a.port);
        break;
    case CL_ADDR_UNIX:
        n = snprintf(out, out_len, "unix:path=%s", a.path);
        break;
    default:
        return cl_error_set(CL_EINVAL, "%s: p11-kit's client reaches its server over vsock:CID:PORT or unix:PATH only",
                            address);
    }
    CL_ENSURE(n > 0 && (size_t)n < out_len, CL_ELIMIT, "%s: too long for P11_KIT_SERVER_ADDRESS", address);
    return CL_OK;
}

int cl_acm_openssl_conf(cl_buf *out, const char *engine, const char *module, const char *p11_address)
{
    char text[9000];
    /* the value has a ';' (vsock): a shell or systemd would cut it there
     * without the quotes */
    char env_line[600];
    if (p11_address)
        snprintf(env_line, sizeof env_line, "#   P11_KIT_SERVER_ADDRESS='%s'\n", p11_address);
    else
        snprintf(env_line, sizeof env_line,
                 "#   P11_KIT_SERVER_ADDRESS='vsock:cid=ENCLAVE_CID;port=PORT'   (or 'unix:path=PATH' locally)\n"
                 "#   ENCLAVE_CID: nitro-cli describe-enclaves (EnclaveCID); PORT: p11-kit server's vsock port\n");
    int n = snprintf(text, sizeof text,
                     "# written by cloister host acm: OpenSSL's pkcs11 engine (libp11) with p11-kit's client\n"
                     "# module, for NGINX.  NGINX's environment needs OPENSSL_CONF=this file and, quoted (the\n"
                     "# value has a ';'):\n"
                     "%s"
                     "# and nginx.conf's main context `env P11_KIT_SERVER_ADDRESS;` (NGINX clears its workers'\n"
                     "# environment).  In the enclave: p11-kit server -f -n vsock:port=PORT --provider\n"
                     "# /ABSOLUTE/PATH/libcloister-pkcs11.so \"pkcs11:\" (an absolute path, or a module installed\n"
                     "# in p11-kit's module directory).\n"
                     "openssl_conf = openssl_init\n"
                     "[openssl_init]\n"
                     "engines = engine_section\n"
                     "[engine_section]\n"
                     "pkcs11 = pkcs11_section\n"
                     "[pkcs11_section]\n"
                     "engine_id = pkcs11\n"
                     "dynamic_path = %s\n"
                     "MODULE_PATH = %s\n"
                     "init = 1\n",
                     env_line, engine, module);
    CL_ENSURE(n > 0 && (size_t)n < sizeof text, CL_ELIMIT, "OpenSSL configuration: paths too long");
    return cl_buf_append(out, text, (size_t)n);
}

/* The host-side configuration `cloister host acm` writes for NGINX: the
 * OpenSSL engine section (libp11 + p11-kit's client module) and the
 * address p11-kit's client needs to reach `p11-kit server` in the enclave.
 * Pure text, so that what a real deployment gets is unit-tested. */
#ifndef CLOISTER_ACM_CONF_H
#define CLOISTER_ACM_CONF_H

#pragma GCC visibility push(default)

#include "cloister/core/buf.h"
#include "cloister/core/error.h"

#include <stddef.h>

/* p11-kit's spelling of a cloister address, for P11_KIT_SERVER_ADDRESS:
 * vsock:CID:PORT -> "vsock:cid=CID;port=PORT", unix:PATH -> "unix:path=PATH".
 * The client connects, so a vsock CID must be the enclave's (not ANY, not
 * the hypervisor, local or the parent's): CL_EINVAL names the problem, as
 * for tcp: (p11-kit speaks only unix and vsock). */
CL_MUST_CHECK int cl_p11kit_address(const char *address, char *out, size_t out_len);

/* Appends the OpenSSL configuration for NGINX: engine_id = pkcs11,
 * dynamic_path = engine, MODULE_PATH = module, init = 1, and comments that
 * say how NGINX gets P11_KIT_SERVER_ADDRESS (p11_address in p11-kit's
 * spelling, or NULL when not known: the comment then gives the form). */
CL_MUST_CHECK int cl_acm_openssl_conf(cl_buf *out, const char *engine, const char *module, const char *p11_address);

#pragma GCC visibility pop

#endif

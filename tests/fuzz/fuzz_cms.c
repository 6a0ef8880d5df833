/* Feeds arbitrary bytes to the CiphertextForRecipient path: the strict
 * reader must never crash or read past the input, what it accepts must
 * have the shape it promises (slices inside the input, a 256-byte key, a
 * 16-byte IV, whole AES blocks), and opening with a Recipient key (OpenSSL's
 * CMS on the same bytes) must fail cleanly or give at most the content's
 * length, leaving nothing behind on failure. */
#include "cloister/enclave/kms.h"

#include <openssl/err.h>
#include <stdlib.h>
#include <string.h>

static cl_kms_recipient *recipient;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    if (cl_kms_recipient_new(NULL, &recipient) < 0)
        abort();
    return 0;
}

static bool inside(cl_slice s, const uint8_t *data, size_t size)
{
    return s.data >= data && s.len <= size && (size_t)(s.data - data) <= size - s.len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cl_kms_cms_info info;
    cl_buf pt = CL_BUF_INIT;
    if (cl_kms_cms_parse(data, size, &info) < 0) {
        /* what the strict reader refuses is never opened */
        if (cl_kms_recipient_open(recipient, data, size, &pt) == CL_OK)
            abort();
        cl_buf_free(&pt);
        return 0;
    }
    if (!inside(info.subject_key_id, data, size) || !inside(info.encrypted_key, data, size) ||
        !inside(info.iv, data, size) || info.encrypted_key.len != 256 || info.iv.len != 16 ||
        info.content.len < 16 || info.content.len % 16 || info.version != 2 || info.ktri_version != 2)
        abort();
    int rc = cl_kms_recipient_open(recipient, data, size, &pt);
    if (rc == CL_OK ? pt.len > info.content.len : pt.len != 0)
        abort();
    cl_buf_free(&pt);
    cl_kms_cms_info_free(&info);
    ERR_clear_error();
    return 0;
}

/* The key-holder's KMS key source (CL_KH_SRC_KMS): a provisioned key that
 * arrives as a KMS CiphertextBlob and is opened here, inside the enclave,
 * with Decrypt and a Recipient.  Settings from `keyholder serve`'s command
 * line, the same as `cloister enclave`'s -kms-* ones. */
#ifndef CLOISTER_SRC_KEYHOLDER_KMS_H
#define CLOISTER_SRC_KEYHOLDER_KMS_H

#include "cloister/core/buf.h"
#include "cloister/core/options.h"
#include "cloister/core/slice.h"
#include "cloister/enclave/key_custody.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/* --kms-key-id: how many KMS keys a key-holder may be started with */
#define KH_KMS_KEY_IDS_MAX CL_CUSTODY_KMS_KEY_IDS_MAX

/* The KMS options of `keyholder serve` (core/options); any of them enables
 * the KMS key source.  The values are borrowed: the command line's. */
const cl_opt *kh_kms_options(size_t *count);
/* Opens the KMS session (credentials, NSM, the Recipient's RSA key) when
 * any KMS option was given; a failure stops the start.  0 or a cl_err. */
int kh_kms_start(void);
bool kh_kms_enabled(void);
/* The --kms-key-id keys (the pinned KMS keys), borrowed. */
const char *const *kh_kms_key_ids(size_t *count);
/* One Decrypt over the session, for the custody core (cl_custody_config's
 * kms_decrypt), which sets the KeyId and the purpose context
 * purpose=pkcs11-token, token=LABEL, and checks the KeyId answered. */
int kh_kms_decrypt(void *arg, const cl_kms_options *o, cl_slice ciphertext, cl_buf *plaintext,
                   cl_custody_kms_answer *answer);
void kh_kms_stop(void);

#endif

/* The key-holder's KMS key source (CL_KH_SRC_KMS): a provisioned key that
 * arrives as a KMS CiphertextBlob and is opened here, inside the enclave,
 * with Decrypt and a Recipient.  Settings from `keyholder serve`'s command
 * line, the same as `cloister enclave`'s -kms-* ones. */
#ifndef CLOISTER_SRC_KEYHOLDER_KMS_H
#define CLOISTER_SRC_KEYHOLDER_KMS_H

#include "cloister/core/buf.h"
#include "cloister/core/options.h"
#include "cloister/core/slice.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/* --kms-key-id: how many KMS keys a key-holder may be started with */
#define KH_KMS_KEY_IDS_MAX 8

/* The KMS options of `keyholder serve` (core/options); any of them enables
 * the KMS key source.  The values are borrowed: the command line's. */
const cl_opt *kh_kms_options(size_t *count);
/* Opens the KMS session (credentials, NSM, the Recipient's RSA key) when
 * any KMS option was given; a failure stops the start.  0 or a cl_err. */
int kh_kms_start(void);
bool kh_kms_enabled(void);
/* Opens the CiphertextBlob of token `label`'s key into key (a cl_buf, wiped
 * when freed).  It opens only under the --kms-key-id keys, and only with the
 * encryption context purpose=pkcs11-token, token=LABEL (what `acm pack-key
 * --token LABEL` sets): a ciphertext made for anything else (the enclave's
 * TLS key, a secret, another token) is refused by KMS.  On failure
 * *status is the reply's status (CL_KH_ST_KMS_REFUSED: KMS answered no;
 * CL_KH_ST_KMS_UNAVAILABLE: it could not be asked; CL_KH_ST_NOT_IMPLEMENTED:
 * no KMS settings) and the error message says why. */
int kh_kms_open(cl_slice label, cl_slice ciphertext, cl_buf *key, uint32_t *status);
/* True when the KeyId KMS answered with is the key `wanted` names: its ARN,
 * or its bare key id (the ARN's key/ID suffix).  Aliases are not compared
 * here (KMS checks them: they are sent as the Decrypt's KeyId). */
bool kh_kms_key_id_matches(const char *wanted, const char *answered);
void kh_kms_stop(void);

#endif

/* CiphertextForRecipient as AWS KMS shapes it: a CMS ContentInfo of type
 * envelopedData (version 2), BER with indefinite lengths, one
 * KeyTransRecipientInfo (version 2) naming the recipient by
 * subjectKeyIdentifier, the content key wrapped with RSAES-OAEP (SHA-256,
 * MGF1 with SHA-256), the content encrypted with AES-256-CBC.
 *
 * The subjectKeyIdentifier is SHA-256 of the recipient's DER
 * SubjectPublicKeyInfo (the attestation document's public_key): 32 bytes,
 * as in the real responses. */
#ifndef CLOISTER_CMS_RECIPIENT_H
#define CLOISTER_CMS_RECIPIENT_H

#pragma GCC visibility push(default)

#include "cloister/core/buf.h"
#include "cloister/core/error.h"

#include <stddef.h>
#include <stdint.h>

#define CL_CMS_RECIPIENT_MIN_RSA_BITS 2048

/* spki: DER SubjectPublicKeyInfo of an RSA key (2048 bits or more).
 * CL_EPARSE when it is not such a key. */
CL_MUST_CHECK int cl_cms_recipient_encrypt(const uint8_t *spki, size_t spki_len, const uint8_t *plaintext,
                                           size_t len, cl_buf *out);

#pragma GCC visibility pop

#endif

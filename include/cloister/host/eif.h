/* Enclave Image Format (EIF) files: reading, measuring, writing, signing.
 *
 * The format and the measurement follow AWS's public description
 * (aws-nitro-enclaves-image-format, nitro-cli); docs/eif.md restates both.
 * In short: a 548-byte big-endian header (magic ".eif", version, flags,
 * default memory and CPUs, section count, 32 section offsets and sizes, a
 * CRC-32 over everything but itself), then sections, each a 12-byte header
 * (type, flags, size) and its bytes: kernel, cmdline, metadata, ramdisks,
 * and optionally a signature.  PCR0 = extend(SHA-384 of kernel, cmdline and
 * every ramdisk), PCR1 = the same over kernel, cmdline and the first
 * ramdisk, PCR2 = over the other ramdisks, PCR8 = over the DER of the
 * signing certificate; extend(h) = SHA-384(48 zero bytes || h).
 *
 * An EIF given to the parser is untrusted: it is read through cl_cursor and
 * refused unless every section lies exactly where the header says, the file
 * ends where the last section does and the CRC matches. */
#ifndef CLOISTER_HOST_EIF_H
#define CLOISTER_HOST_EIF_H

#pragma GCC visibility push(default)

#include "cloister/core/buf.h"
#include "cloister/core/error.h"
#include "cloister/core/slice.h"

#include <openssl/evp.h>
#include <stdbool.h>
#include <stdint.h>

#define CL_EIF_HEADER_SIZE 548
#define CL_EIF_SECTION_HEADER_SIZE 12
#define CL_EIF_MAX_SECTIONS 32
#define CL_EIF_VERSION 4
#define CL_EIF_PCR_LEN 48
#define CL_EIF_FLAG_ARM64 0x1

enum cl_eif_section_type {
    CL_EIF_SECTION_KERNEL = 1,
    CL_EIF_SECTION_CMDLINE = 2,
    CL_EIF_SECTION_RAMDISK = 3,
    CL_EIF_SECTION_SIGNATURE = 4,
    CL_EIF_SECTION_METADATA = 5,
};

typedef struct cl_eif_section {
    uint16_t type;
    uint16_t flags;
    uint64_t offset; /* of the section header in the file */
    cl_slice data;
} cl_eif_section;

/* A parsed image; slices borrow from the bytes given to cl_eif_parse. */
typedef struct cl_eif {
    uint16_t version;
    uint16_t flags;
    uint64_t default_mem;
    uint64_t default_cpus;
    unsigned num_sections;
    cl_eif_section sections[CL_EIF_MAX_SECTIONS];
    uint32_t crc;
    cl_slice kernel, cmdline, metadata, signature; /* empty when absent */
    unsigned num_ramdisks;
    uint8_t pcr0[CL_EIF_PCR_LEN], pcr1[CL_EIF_PCR_LEN], pcr2[CL_EIF_PCR_LEN];
} cl_eif;

/* Parses and checks the image and computes PCR0-2.  Every failure names
 * what is wrong and where (byte offset). */
CL_MUST_CHECK int cl_eif_parse(const uint8_t *data, size_t len, cl_eif *out);

/* The signature section, when present: the signing certificate, PCR8, and
 * whether the COSE_Sign1 over {register_index: 0, register_value: PCR0}
 * verifies with that certificate's key and names this image's PCR0.
 * CL_ENOTFOUND when the image is not signed.  cert_pem_out (optional)
 * receives the certificate as stored (PEM). */
typedef struct cl_eif_signature_info {
    uint8_t pcr8[CL_EIF_PCR_LEN];
    bool signature_valid;
    char signature_problem[160]; /* why not, when !signature_valid */
    char subject[256];
    char issuer[256];
    char not_after[40];
} cl_eif_signature_info;

CL_MUST_CHECK int cl_eif_signature(const cl_eif *eif, cl_eif_signature_info *out, cl_buf *cert_pem_out);

/* What goes into a new image.  The metadata is written as given (JSON;
 * callers keep it deterministic).  A signing key and certificate (PEM, a
 * P-384 key) add the signature section. */
typedef struct cl_eif_inputs {
    cl_slice kernel;
    const char *cmdline;
    const cl_slice *ramdisks;
    unsigned num_ramdisks;
    const char *metadata_json;
    uint16_t flags;
    uint64_t default_mem;  /* bytes; 0: 1 GiB as nitro-cli */
    uint64_t default_cpus; /* 0: 2 as nitro-cli */
    EVP_PKEY *sign_key;
    const char *sign_cert_pem;
} cl_eif_inputs;

/* Writes the image to out (reset first).  Same inputs, same bytes. */
CL_MUST_CHECK int cl_eif_write(const cl_eif_inputs *in, cl_buf *out);

/* The measurements of the image file at path (read, parsed, checked): what
 * a verifier expects of an enclave running it.  PCR8 only when signed (and
 * then only if the signature holds). */
typedef struct cl_eif_measurements {
    uint8_t pcr0[CL_EIF_PCR_LEN], pcr1[CL_EIF_PCR_LEN], pcr2[CL_EIF_PCR_LEN], pcr8[CL_EIF_PCR_LEN];
    bool has_pcr8;
} cl_eif_measurements;

CL_MUST_CHECK int cl_eif_measure_file(const char *path, cl_eif_measurements *out);

/* The CRC-32 the format uses (IEEE 802.3, reflected, as zlib's crc32). */
uint32_t cl_crc32(uint32_t crc, const uint8_t *data, size_t len);

/* extend(SHA-384(data)) as the Nitro PCRs are extended from zero. */
CL_MUST_CHECK int cl_eif_pcr_of(const uint8_t *data, size_t len, uint8_t out[CL_EIF_PCR_LEN]);

#pragma GCC visibility pop

#endif

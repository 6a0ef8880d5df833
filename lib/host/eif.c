/* Enclave Image Format: parse, measure, write, sign (see the header and
 * docs/eif.md for the layout and the measurement). */
#include "cloister/host/eif.h"

#include "cloister/core/cbor.h"
#include "cloister/core/cose.h"
#include "cloister/core/cursor.h"
#include "cloister/core/encoding.h"

#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <string.h>

static const uint8_t eif_magic[4] = {'.', 'e', 'i', 'f'};

/* The oldest version with a CRC: images without one cannot be checked. */
#define EIF_OLDEST_VERSION 2

uint32_t cl_crc32(uint32_t crc, const uint8_t *data, size_t len)
{
    crc = ~crc;
    for (size_t i = 0; i < len; i++) {
        crc ^= data[i];
        for (int bit = 0; bit < 8; bit++)
            crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

/* SHA-384 over a list of slices, then extended into a zero PCR. */
static int pcr_of_slices(const cl_slice *parts, size_t n, uint8_t out[CL_EIF_PCR_LEN])
{
    uint8_t digest[2 * CL_EIF_PCR_LEN] = {0};
    unsigned int dlen = 0;
    int rc = CL_OK;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx)
        return cl_error_set(CL_ENOMEM, "out of memory");
    if (EVP_DigestInit_ex(ctx, EVP_sha384(), NULL) != 1)
        CL_OSSL_OUT(CL_ECRYPTO, "SHA-384");
    for (size_t i = 0; i < n; i++)
        if (parts[i].len && EVP_DigestUpdate(ctx, parts[i].data, parts[i].len) != 1)
            CL_OSSL_OUT(CL_ECRYPTO, "SHA-384");
    /* the measured value lands after 48 zero bytes: extend from a zero PCR */
    if (EVP_DigestFinal_ex(ctx, digest + CL_EIF_PCR_LEN, &dlen) != 1 || dlen != CL_EIF_PCR_LEN)
        CL_OSSL_OUT(CL_ECRYPTO, "SHA-384");
    if (EVP_Digest(digest, sizeof digest, out, &dlen, EVP_sha384(), NULL) != 1)
        CL_OSSL_OUT(CL_ECRYPTO, "SHA-384");
out:
    EVP_MD_CTX_free(ctx);
    return rc;
}

int cl_eif_pcr_of(const uint8_t *data, size_t len, uint8_t out[CL_EIF_PCR_LEN])
{
    cl_slice s = {data, len};
    return pcr_of_slices(&s, 1, out);
}

static const char *section_name(uint16_t type)
{
    switch (type) {
    case CL_EIF_SECTION_KERNEL: return "kernel";
    case CL_EIF_SECTION_CMDLINE: return "cmdline";
    case CL_EIF_SECTION_RAMDISK: return "ramdisk";
    case CL_EIF_SECTION_SIGNATURE: return "signature";
    case CL_EIF_SECTION_METADATA: return "metadata";
    default: return "invalid";
    }
}

/* The order nitro-cli writes and boots: kernel, cmdline, (metadata),
 * ramdisks, (signature).  Anything else is refused rather than guessed at:
 * the measurement depends on which ramdisk comes first. */
static int check_section_order(cl_eif *e)
{
    unsigned kernels = 0, cmdlines = 0, metadata = 0, signatures = 0;
    for (unsigned i = 0; i < e->num_sections; i++) {
        const cl_eif_section *s = &e->sections[i];
        switch (s->type) {
        case CL_EIF_SECTION_KERNEL:
            CL_ENSURE(i == 0, CL_EPARSE, "EIF: the kernel is section %u, must be the first", i);
            kernels++;
            e->kernel = s->data;
            break;
        case CL_EIF_SECTION_CMDLINE:
            CL_ENSURE(i == 1, CL_EPARSE, "EIF: the cmdline is section %u, must be the second", i);
            cmdlines++;
            e->cmdline = s->data;
            break;
        case CL_EIF_SECTION_METADATA:
            CL_ENSURE(e->version >= 4, CL_EPARSE, "EIF: a metadata section in a version %u image",
                      e->version);
            CL_ENSURE(!metadata && !e->num_ramdisks, CL_EPARSE,
                      "EIF: metadata section %u after a ramdisk or a second time", i);
            metadata++;
            e->metadata = s->data;
            break;
        case CL_EIF_SECTION_RAMDISK:
            CL_ENSURE(!signatures, CL_EPARSE, "EIF: ramdisk section %u after the signature", i);
            e->num_ramdisks++;
            break;
        case CL_EIF_SECTION_SIGNATURE:
            CL_ENSURE(e->version >= 3, CL_EPARSE, "EIF: a signature section in a version %u image",
                      e->version);
            CL_ENSURE(!signatures, CL_EPARSE, "EIF: a second signature section (%u)", i);
            signatures++;
            e->signature = s->data;
            break;
        default:
            return cl_error_set(CL_EPARSE, "EIF: section %u has unknown type %u", i, s->type);
        }
    }
    CL_ENSURE(kernels == 1 && cmdlines == 1, CL_EPARSE, "EIF: no kernel or no cmdline section");
    CL_ENSURE(e->num_ramdisks >= 1, CL_EPARSE, "EIF: no ramdisk section");
    return CL_OK;
}

static int measure(cl_eif *e)
{
    cl_slice all[CL_EIF_MAX_SECTIONS], boot[3], app[CL_EIF_MAX_SECTIONS];
    size_t n_all = 0, n_app = 0;
    all[n_all++] = e->kernel;
    all[n_all++] = e->cmdline;
    boot[0] = e->kernel;
    boot[1] = e->cmdline;
    unsigned ramdisk = 0;
    for (unsigned i = 0; i < e->num_sections; i++) {
        if (e->sections[i].type != CL_EIF_SECTION_RAMDISK)
            continue;
        all[n_all++] = e->sections[i].data;
        if (ramdisk++ == 0)
            boot[2] = e->sections[i].data; /* AWS's bootstrap ramdisk */
        else
            app[n_app++] = e->sections[i].data;
    }
    CL_TRY(pcr_of_slices(all, n_all, e->pcr0));
    CL_TRY(pcr_of_slices(boot, 3, e->pcr1));
    return pcr_of_slices(app, n_app, e->pcr2);
}

int cl_eif_parse(const uint8_t *data, size_t len, cl_eif *out)
{
    memset(out, 0, sizeof *out);
    CL_ENSURE(len >= CL_EIF_HEADER_SIZE, CL_EPARSE,
              "EIF: truncated: %zu bytes, the header alone is %d", len, CL_EIF_HEADER_SIZE);
    cl_cursor c = cl_cursor_make(data, len);
    const uint8_t *magic;
    uint16_t reserved, num_sections;
    uint32_t unused;
    uint64_t offsets[CL_EIF_MAX_SECTIONS], sizes[CL_EIF_MAX_SECTIONS];
    CL_TRY(cl_cursor_bytes(&c, 4, &magic));
    CL_ENSURE(!memcmp(magic, eif_magic, 4), CL_EPARSE,
              "EIF: bad magic %02x %02x %02x %02x (an EIF starts with \".eif\")", magic[0], magic[1],
              magic[2], magic[3]);
    CL_TRY(cl_cursor_be16(&c, &out->version));
    CL_ENSURE(out->version >= EIF_OLDEST_VERSION && out->version <= CL_EIF_VERSION, CL_EPARSE,
              "EIF: version %u not supported (versions %d to %d: 1 has no CRC, later ones are unknown)",
              out->version, EIF_OLDEST_VERSION, CL_EIF_VERSION);
    CL_TRY(cl_cursor_be16(&c, &out->flags));
    CL_ENSURE(!(out->flags & ~CL_EIF_FLAG_ARM64), CL_EPARSE, "EIF: unknown header flags 0x%04x",
              out->flags);
    CL_TRY(cl_cursor_be64(&c, &out->default_mem));
    CL_TRY(cl_cursor_be64(&c, &out->default_cpus));
    CL_TRY(cl_cursor_be16(&c, &reserved));
    CL_TRY(cl_cursor_be16(&c, &num_sections));
    for (int i = 0; i < CL_EIF_MAX_SECTIONS; i++)
        CL_TRY(cl_cursor_be64(&c, &offsets[i]));
    for (int i = 0; i < CL_EIF_MAX_SECTIONS; i++)
        CL_TRY(cl_cursor_be64(&c, &sizes[i]));
    CL_TRY(cl_cursor_be32(&c, &unused));
    CL_TRY(cl_cursor_be32(&c, &out->crc));
    CL_ENSURE(num_sections >= 3 && num_sections <= CL_EIF_MAX_SECTIONS, CL_EPARSE,
              "EIF: %u sections (an image has 3 to %d)", num_sections, CL_EIF_MAX_SECTIONS);
    for (unsigned i = num_sections; i < CL_EIF_MAX_SECTIONS; i++)
        CL_ENSURE(!offsets[i] && !sizes[i], CL_EPARSE,
                  "EIF: header lists section %u beyond its count of %u", i, num_sections);
    out->num_sections = num_sections;

    /* Sections follow each other with no gap, where the header says. */
    for (unsigned i = 0; i < num_sections; i++) {
        size_t at = len - cl_cursor_remaining(&c);
        cl_eif_section *s = &out->sections[i];
        uint64_t size;
        CL_ENSURE(offsets[i] == at, CL_EPARSE,
                  "EIF: header puts section %u at offset %llu, it is at %zu", i,
                  (unsigned long long)offsets[i], at);
        CL_ENSURE(cl_cursor_remaining(&c) >= CL_EIF_SECTION_HEADER_SIZE, CL_EPARSE,
                  "EIF: truncated: section %u's header at offset %zu runs past the end (%zu bytes)", i,
                  at, len);
        CL_TRY(cl_cursor_be16(&c, &s->type));
        CL_TRY(cl_cursor_be16(&c, &s->flags));
        CL_TRY(cl_cursor_be64(&c, &size));
        CL_ENSURE(size == sizes[i], CL_EPARSE,
                  "EIF: section %u (%s) is %llu bytes, the header says %llu", i, section_name(s->type),
                  (unsigned long long)size, (unsigned long long)sizes[i]);
        CL_ENSURE(size <= cl_cursor_remaining(&c), CL_EPARSE,
                  "EIF: truncated: section %u (%s) of %llu bytes at offset %zu runs past the end (%zu "
                  "bytes)",
                  i, section_name(s->type), (unsigned long long)size, at, len);
        s->offset = at;
        s->data.len = (size_t)size;
        CL_TRY(cl_cursor_bytes(&c, s->data.len, &s->data.data));
    }
    CL_ENSURE(cl_cursor_at_end(&c), CL_EPARSE, "EIF: %zu bytes after the last section",
              cl_cursor_remaining(&c));

    CL_TRY(check_section_order(out));
    uint32_t crc = cl_crc32(0, data, CL_EIF_HEADER_SIZE - 4);
    crc = cl_crc32(crc, data + CL_EIF_HEADER_SIZE, len - CL_EIF_HEADER_SIZE);
    CL_ENSURE(crc == out->crc, CL_EVERIFY,
              "EIF: CRC mismatch: the header says %08x, the contents give %08x (the file is damaged)",
              out->crc, crc);
    return measure(out);
}

/* serde_cbor writes Vec<u8> as an array of small integers, not as a byte
 * string: the signature section keeps that shape. */
static int put_byte_array(cl_buf *b, const uint8_t *data, size_t len)
{
    CL_TRY(cl_cbor_put_array(b, len));
    for (size_t i = 0; i < len; i++)
        CL_TRY(cl_cbor_put_uint(b, data[i]));
    return CL_OK;
}

static int get_byte_array(const cl_cbor *item, const char *what, size_t max, cl_buf *out)
{
    CL_ENSURE(item && item->type == CL_CBOR_ARRAY, CL_EPARSE, "EIF signature: %s is not an array",
              what);
    CL_ENSURE(item->u <= max, CL_ELIMIT, "EIF signature: %s longer than %zu bytes", what, max);
    CL_TRY(cl_buf_reserve(out, (size_t)item->u));
    for (const cl_cbor *e = item->child; e; e = e->next) {
        CL_ENSURE(e->type == CL_CBOR_UINT && e->u <= 255, CL_EPARSE,
                  "EIF signature: %s holds something other than bytes", what);
        CL_TRY(cl_buf_append_u8(out, (uint8_t)e->u));
    }
    return CL_OK;
}

/* The signed payload: PcrInfo {register_index: 0, register_value: PCR0}. */
static int pcr_info_payload(const uint8_t pcr0[CL_EIF_PCR_LEN], cl_buf *out)
{
    CL_TRY(cl_cbor_put_map(out, 2));
    CL_TRY(cl_cbor_put_text(out, "register_index"));
    CL_TRY(cl_cbor_put_uint(out, 0));
    CL_TRY(cl_cbor_put_text(out, "register_value"));
    return put_byte_array(out, pcr0, CL_EIF_PCR_LEN);
}

static int cert_pcr8(X509 *cert, uint8_t out[CL_EIF_PCR_LEN])
{
    unsigned char *der = NULL;
    int n = i2d_X509(cert, &der);
    if (n <= 0)
        return cl_error_ossl(CL_ECRYPTO, "EIF signature: encoding the certificate");
    int rc = cl_eif_pcr_of(der, (size_t)n, out);
    OPENSSL_free(der);
    return rc;
}

static X509 *cert_from_pem(const uint8_t *pem, size_t len)
{
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    X509 *cert = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    return cert;
}

static void x509_time_text(const ASN1_TIME *t, char *out, size_t cap)
{
    struct tm tm;
    if (!t || ASN1_TIME_to_tm(t, &tm) != 1 || !strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm))
        snprintf(out, cap, "?");
}

int cl_eif_signature(const cl_eif *eif, cl_eif_signature_info *out, cl_buf *cert_pem_out)
{
    memset(out, 0, sizeof *out);
    if (!eif->signature.len)
        return cl_error_set(CL_ENOTFOUND, "EIF: the image is not signed");
    int rc = CL_OK;
    cl_cbor_doc doc = {0};
    cl_buf pem = CL_BUF_INIT, cose = CL_BUF_INIT, want = CL_BUF_INIT;
    cl_cose_sign1 msg = {0};
    bool have_msg = false;
    X509 *cert = NULL;
    const cl_cbor_limits limits = {.max_depth = 4, .max_map_entries = 8};
    CL_TRY_OUT(cl_cbor_decode(eif->signature.data, eif->signature.len, &limits, &doc));
    const cl_cbor *list = doc.root;
    if (list->type != CL_CBOR_ARRAY || list->u < 1 || !list->child || list->child->type != CL_CBOR_MAP)
        CL_FAIL_OUT(CL_EPARSE, "EIF signature: not a list of PCR signatures");
    const cl_cbor *first = list->child;
    CL_TRY_OUT(get_byte_array(cl_cbor_map_get(first, "signing_certificate"), "signing_certificate",
                              64 * 1024, &pem));
    CL_TRY_OUT(get_byte_array(cl_cbor_map_get(first, "signature"), "signature", 64 * 1024, &cose));
    cert = cert_from_pem(pem.data, pem.len);
    if (!cert)
        CL_OSSL_OUT(CL_EPARSE, "EIF signature: the signing certificate is not a PEM certificate");
    CL_TRY_OUT(cert_pcr8(cert, out->pcr8));
    X509_NAME_oneline(X509_get_subject_name(cert), out->subject, sizeof out->subject);
    X509_NAME_oneline(X509_get_issuer_name(cert), out->issuer, sizeof out->issuer);
    x509_time_text(X509_get0_notAfter(cert), out->not_after, sizeof out->not_after);

    /* From here on a failure is an answer (the signature does not hold),
     * not an error: describe shows it as nitro-cli shows SignatureCheck. */
    if (cl_cose_sign1_decode(cose.data, cose.len, &msg) < 0) {
        snprintf(out->signature_problem, sizeof out->signature_problem, "%s", cl_error_message());
        goto done;
    }
    have_msg = true;
    EVP_PKEY *key = X509_get0_pubkey(cert);
    if (!key || cl_cose_sign1_verify(&msg, key) < 0) {
        snprintf(out->signature_problem, sizeof out->signature_problem,
                 "the COSE signature does not verify with the signing certificate's key");
        goto done;
    }
    CL_TRY_OUT(pcr_info_payload(eif->pcr0, &want));
    if (msg.payload.len != want.len || memcmp(msg.payload.data, want.data, want.len)) {
        snprintf(out->signature_problem, sizeof out->signature_problem,
                 "the signed payload is not {register_index: 0, register_value: this image's PCR0}");
        goto done;
    }
    out->signature_valid = true;
done:
    if (cert_pem_out) {
        cl_buf_reset(cert_pem_out);
        CL_TRY_OUT(cl_buf_append(cert_pem_out, pem.data, pem.len));
    }
out:
    if (have_msg)
        cl_cose_sign1_free(&msg);
    cl_cbor_doc_free(&doc);
    cl_buf_free(&pem);
    cl_buf_free(&cose);
    cl_buf_free(&want);
    X509_free(cert);
    return rc;
}

static int put_section(cl_buf *b, uint16_t type, const void *data, size_t len)
{
    CL_TRY(cl_buf_append_be(b, type, 2));
    CL_TRY(cl_buf_append_be(b, 0, 2));
    CL_TRY(cl_buf_append_be(b, len, 8));
    return len ? cl_buf_append(b, data, len) : CL_OK;
}

static int make_signature(const cl_eif_inputs *in, const uint8_t pcr0[CL_EIF_PCR_LEN], cl_buf *out)
{
    int rc = CL_OK;
    cl_buf payload = CL_BUF_INIT, cose = CL_BUF_INIT;
    X509 *cert = cert_from_pem((const uint8_t *)in->sign_cert_pem, strlen(in->sign_cert_pem));
    if (!cert)
        CL_OSSL_OUT(CL_EINVAL, "EIF signing: the certificate is not PEM");
    if (X509_check_private_key(cert, in->sign_key) != 1)
        CL_OSSL_OUT(CL_EINVAL, "EIF signing: the key does not belong to the certificate");
    CL_TRY_OUT(pcr_info_payload(pcr0, &payload));
    CL_TRY_OUT(cl_cose_sign1_sign(in->sign_key, payload.data, payload.len, &cose));
    CL_TRY_OUT(cl_cbor_put_array(out, 1));
    CL_TRY_OUT(cl_cbor_put_map(out, 2));
    CL_TRY_OUT(cl_cbor_put_text(out, "signing_certificate"));
    CL_TRY_OUT(put_byte_array(out, (const uint8_t *)in->sign_cert_pem, strlen(in->sign_cert_pem)));
    CL_TRY_OUT(cl_cbor_put_text(out, "signature"));
    CL_TRY_OUT(put_byte_array(out, cose.data, cose.len));
out:
    X509_free(cert);
    cl_buf_free(&payload);
    cl_buf_free(&cose);
    return rc;
}

int cl_eif_write(const cl_eif_inputs *in, cl_buf *out)
{
    cl_buf_reset(out);
    CL_ENSURE(in->kernel.len && in->cmdline, CL_EINVAL, "EIF: a kernel and a cmdline are needed");
    CL_ENSURE(in->num_ramdisks >= 1 && in->num_ramdisks <= CL_EIF_MAX_SECTIONS - 4, CL_EINVAL,
              "EIF: 1 to %d ramdisks, not %u", CL_EIF_MAX_SECTIONS - 4, in->num_ramdisks);
    CL_ENSURE(!in->sign_key == !in->sign_cert_pem, CL_EINVAL,
              "EIF signing needs both a key and a certificate");
    CL_ENSURE(!(in->flags & ~CL_EIF_FLAG_ARM64), CL_EINVAL, "EIF: unknown flags 0x%04x", in->flags);
    const char *metadata = in->metadata_json ? in->metadata_json : "";

    int rc = CL_OK;
    cl_buf signature = CL_BUF_INIT, header = CL_BUF_INIT;
    cl_eif measured;
    /* Lay the sections out once without a signature to measure PCR0, which
     * the signature signs; the CRC and offsets are then written for real. */
    for (int pass = 0; pass < 2; pass++) {
        cl_buf_reset(out);
        unsigned n = 0;
        uint64_t offsets[CL_EIF_MAX_SECTIONS] = {0}, sizes[CL_EIF_MAX_SECTIONS] = {0};
        CL_TRY_OUT(cl_buf_reserve(out, CL_EIF_HEADER_SIZE));
        memset(out->data, 0, CL_EIF_HEADER_SIZE);
        out->len = CL_EIF_HEADER_SIZE;
#define SECTION(type, ptr, size)                                                                   \
    do {                                                                                           \
        offsets[n] = out->len;                                                                     \
        sizes[n++] = (size);                                                                       \
        CL_TRY_OUT(put_section(out, (type), (ptr), (size)));                                       \
    } while (0)
        SECTION(CL_EIF_SECTION_KERNEL, in->kernel.data, in->kernel.len);
        SECTION(CL_EIF_SECTION_CMDLINE, in->cmdline, strlen(in->cmdline));
        SECTION(CL_EIF_SECTION_METADATA, metadata, strlen(metadata));
        for (unsigned i = 0; i < in->num_ramdisks; i++)
            SECTION(CL_EIF_SECTION_RAMDISK, in->ramdisks[i].data, in->ramdisks[i].len);
        if (pass == 1 && signature.len)
            SECTION(CL_EIF_SECTION_SIGNATURE, signature.data, signature.len);
#undef SECTION
        cl_buf_reset(&header);
        CL_TRY_OUT(cl_buf_append(&header, eif_magic, 4));
        CL_TRY_OUT(cl_buf_append_be(&header, CL_EIF_VERSION, 2));
        CL_TRY_OUT(cl_buf_append_be(&header, in->flags, 2));
        CL_TRY_OUT(cl_buf_append_be(&header, in->default_mem ? in->default_mem : 1024ull << 20, 8));
        CL_TRY_OUT(cl_buf_append_be(&header, in->default_cpus ? in->default_cpus : 2, 8));
        CL_TRY_OUT(cl_buf_append_be(&header, 0, 2));
        CL_TRY_OUT(cl_buf_append_be(&header, n, 2));
        for (int i = 0; i < CL_EIF_MAX_SECTIONS; i++)
            CL_TRY_OUT(cl_buf_append_be(&header, offsets[i], 8));
        for (int i = 0; i < CL_EIF_MAX_SECTIONS; i++)
            CL_TRY_OUT(cl_buf_append_be(&header, sizes[i], 8));
        CL_TRY_OUT(cl_buf_append_be(&header, 0, 4));
        memcpy(out->data, header.data, header.len);
        uint32_t crc = cl_crc32(0, out->data, CL_EIF_HEADER_SIZE - 4);
        crc = cl_crc32(crc, out->data + CL_EIF_HEADER_SIZE, out->len - CL_EIF_HEADER_SIZE);
        for (int i = 0; i < 4; i++)
            out->data[CL_EIF_HEADER_SIZE - 4 + i] = (uint8_t)(crc >> (24 - 8 * i));
        if (pass == 0) {
            CL_TRY_OUT(cl_eif_parse(out->data, out->len, &measured));
            if (!in->sign_key)
                break;
            CL_TRY_OUT(make_signature(in, measured.pcr0, &signature));
        }
    }
out:
    cl_buf_free(&signature);
    cl_buf_free(&header);
    if (rc < 0)
        cl_buf_reset(out);
    return rc;
}

int cl_eif_measure_file(const char *path, cl_eif_measurements *out)
{
    memset(out, 0, sizeof *out);
    cl_buf bytes = CL_BUF_INIT;
    cl_eif eif;
    int rc = cl_read_file(path, (size_t)8 << 30, &bytes);
    if (rc == CL_OK)
        rc = cl_eif_parse(bytes.data, bytes.len, &eif);
    if (rc == CL_OK) {
        memcpy(out->pcr0, eif.pcr0, CL_EIF_PCR_LEN);
        memcpy(out->pcr1, eif.pcr1, CL_EIF_PCR_LEN);
        memcpy(out->pcr2, eif.pcr2, CL_EIF_PCR_LEN);
        cl_eif_signature_info sig;
        rc = cl_eif_signature(&eif, &sig, NULL);
        if (rc == CL_OK && !sig.signature_valid)
            rc = cl_error_set(CL_EVERIFY, "EIF: the signature does not hold: %s", sig.signature_problem);
        if (rc == CL_OK) {
            memcpy(out->pcr8, sig.pcr8, CL_EIF_PCR_LEN);
            out->has_pcr8 = true;
        } else if (rc == CL_ENOTFOUND) {
            rc = CL_OK;
        }
    }
    if (rc < 0)
        cl_error_prefix(rc, "%s: ", path);
    cl_buf_free(&bytes);
    return rc;
}

/* EIF images: what is written reads back with the measurements computed
 * independently here (SHA-384 extended from zero), the same inputs give the
 * same bytes, a signed image verifies and yields PCR8, and every kind of
 * damage is refused with a message that names it. */
#include "cloister/host/cpio.h"
#include "cloister/host/eif.h"
#include "test.h"

#include <openssl/ec.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/stat.h>

static uint8_t kernel[3000], ramdisk0[700], ramdisk1[900];

static void fill(void)
{
    for (size_t i = 0; i < sizeof kernel; i++)
        kernel[i] = (uint8_t)(i * 7 + 1);
    for (size_t i = 0; i < sizeof ramdisk0; i++)
        ramdisk0[i] = (uint8_t)(i * 13 + 5);
    for (size_t i = 0; i < sizeof ramdisk1; i++)
        ramdisk1[i] = (uint8_t)(i * 31 + 9);
}

static void expected_pcr(const cl_slice *parts, size_t n, uint8_t out[48])
{
    uint8_t buf[96] = {0};
    unsigned len;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_DigestInit_ex(ctx, EVP_sha384(), NULL);
    for (size_t i = 0; i < n; i++)
        EVP_DigestUpdate(ctx, parts[i].data, parts[i].len);
    EVP_DigestFinal_ex(ctx, buf + 48, &len);
    EVP_MD_CTX_free(ctx);
    EVP_Digest(buf, 96, out, &len, EVP_sha384(), NULL);
}

static int build(cl_buf *out, EVP_PKEY *key, const char *cert)
{
    cl_slice rd[2] = {{ramdisk0, sizeof ramdisk0}, {ramdisk1, sizeof ramdisk1}};
    cl_eif_inputs in = {.kernel = {kernel, sizeof kernel}, .cmdline = "console=ttyS0", .ramdisks = rd,
                        .num_ramdisks = 2, .metadata_json = "{\"ImageName\":\"t\"}", .sign_key = key,
                        .sign_cert_pem = cert};
    return cl_eif_write(&in, out);
}

static void test_round_trip_and_measurements(void)
{
    cl_buf a = CL_BUF_INIT, b = CL_BUF_INIT;
    CHECK_OK(build(&a, NULL, NULL));
    CHECK_OK(build(&b, NULL, NULL));
    CHECK(a.len == b.len && !memcmp(a.data, b.data, a.len));
    cl_eif e;
    CHECK_OK(cl_eif_parse(a.data, a.len, &e));
    CHECK(e.version == CL_EIF_VERSION && e.num_sections == 5 && e.num_ramdisks == 2);
    CHECK(e.default_mem == 1024ull << 20 && e.default_cpus == 2);
    CHECK(e.cmdline.len == 13 && !memcmp(e.cmdline.data, "console=ttyS0", 13));
    cl_slice all[] = {{kernel, sizeof kernel}, {(const uint8_t *)"console=ttyS0", 13}, {ramdisk0, sizeof ramdisk0},
                      {ramdisk1, sizeof ramdisk1}};
    uint8_t want[48];
    expected_pcr(all, 4, want);
    CHECK(!memcmp(e.pcr0, want, 48));
    expected_pcr(all, 3, want);
    CHECK(!memcmp(e.pcr1, want, 48));
    expected_pcr(all + 3, 1, want);
    CHECK(!memcmp(e.pcr2, want, 48));
    cl_eif_signature_info sig;
    CHECK_ERR(cl_eif_signature(&e, &sig, NULL), CL_ENOTFOUND, "not signed");
    cl_buf_free(&a);
    cl_buf_free(&b);
}

/* One damaged copy per kind of damage: each refused, naming it. */
static void test_damage_refused(void)
{
    cl_buf good = CL_BUF_INIT, bad = CL_BUF_INIT;
    CHECK_OK(build(&good, NULL, NULL));
    cl_eif e;
    struct {
        size_t at;
        uint8_t value;
        int code;
        const char *says;
    } cases[] = {
        {0, 'x', CL_EPARSE, "bad magic"},
        {5, 9, CL_EPARSE, "version 9 not supported"},
        {5, 1, CL_EPARSE, "version 1 not supported"},
        {7, 0x80, CL_EPARSE, "unknown header flags"},
        {27, 40, CL_EPARSE, "40 sections"},
        {35, 1, CL_EPARSE, "header puts section 0 at offset"},       /* an offset byte */
        {291, 1, CL_EPARSE, "is 3000 bytes, the header says"},        /* a size byte */
        {548 + 1, 9, CL_EPARSE, "unknown type 9"},                    /* kernel section type */
        {548 + 12 + 100, 0xff, CL_EVERIFY, "CRC mismatch"},           /* kernel byte */
        {544, 0, CL_EVERIFY, "CRC mismatch"},                         /* the CRC itself */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cl_buf_reset(&bad);
        CHECK_OK(cl_buf_append(&bad, good.data, good.len));
        if (bad.data[cases[i].at] == cases[i].value)
            bad.data[cases[i].at] ^= 1;
        else
            bad.data[cases[i].at] = cases[i].value;
        CHECK_ERR(cl_eif_parse(bad.data, bad.len, &e), cases[i].code, cases[i].says);
    }
    CHECK_ERR(cl_eif_parse(good.data, 100, &e), CL_EPARSE, "truncated");
    CHECK_ERR(cl_eif_parse(good.data, good.len - 1, &e), CL_EPARSE, "truncated");
    CHECK_ERR(cl_eif_parse(good.data, 548 + 5, &e), CL_EPARSE, "truncated");
    cl_buf_reset(&bad);
    CHECK_OK(cl_buf_append(&bad, good.data, good.len));
    CHECK_OK(cl_buf_append_u8(&bad, 0));
    CHECK_ERR(cl_eif_parse(bad.data, bad.len, &e), CL_EPARSE, "1 bytes after the last section");
    cl_buf_free(&good);
    cl_buf_free(&bad);
}

static void make_signer(EVP_PKEY **key, char **cert_pem)
{
    *key = EVP_EC_gen("P-384");
    X509 *cert = X509_new();
    X509_set_version(cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
    X509_gmtime_adj(X509_getm_notBefore(cert), 0);
    X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(cert), "CN", MBSTRING_ASC, (const unsigned char *)"signer", -1,
                               -1, 0);
    X509_set_issuer_name(cert, X509_get_subject_name(cert));
    X509_set_pubkey(cert, *key);
    X509_sign(cert, *key, EVP_sha384());
    BIO *bio = BIO_new(BIO_s_mem());
    PEM_write_bio_X509(bio, cert);
    char *data;
    long n = BIO_get_mem_data(bio, &data);
    *cert_pem = strndup(data, (size_t)n);
    BIO_free(bio);
    X509_free(cert);
}

static void test_signed_image(void)
{
    EVP_PKEY *key, *other;
    char *cert, *other_cert;
    make_signer(&key, &cert);
    make_signer(&other, &other_cert);
    cl_buf img = CL_BUF_INIT, plain = CL_BUF_INIT;
    CHECK_OK(build(&img, key, cert));
    CHECK_OK(build(&plain, NULL, NULL));
    cl_eif e, p;
    CHECK_OK(cl_eif_parse(img.data, img.len, &e));
    CHECK_OK(cl_eif_parse(plain.data, plain.len, &p));
    CHECK(e.num_sections == 6 && e.signature.len > 0);
    CHECK(!memcmp(e.pcr0, p.pcr0, 48)); /* the signature is not measured into PCR0 */
    cl_eif_signature_info sig;
    CHECK_OK(cl_eif_signature(&e, &sig, NULL));
    CHECK(sig.signature_valid);
    CHECK(strstr(sig.subject, "CN=signer") != NULL);
    /* PCR8 = extend(SHA-384(certificate DER)) */
    BIO *bio = BIO_new_mem_buf(cert, -1);
    X509 *x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    unsigned char *der = NULL;
    int n = i2d_X509(x, &der);
    cl_slice s = {der, (size_t)n};
    uint8_t want[48];
    expected_pcr(&s, 1, want);
    CHECK(!memcmp(sig.pcr8, want, 48));
    OPENSSL_free(der);
    X509_free(x);
    BIO_free(bio);

    /* the key must match the certificate */
    cl_buf wrong = CL_BUF_INIT;
    CHECK_ERR(build(&wrong, other, cert), CL_EINVAL, "does not belong");

    /* a signature made for another image (another kernel) does not name
     * this image's PCR0: sign the other image, then put this kernel back */
    kernel[0] ^= 1;
    cl_buf other_img = CL_BUF_INIT;
    CHECK_OK(build(&other_img, key, cert));
    kernel[0] ^= 1;
    cl_buf forged = CL_BUF_INIT;
    CHECK_OK(cl_buf_append(&forged, other_img.data, other_img.len));
    forged.data[548 + 12] ^= 1;
    uint32_t crc = cl_crc32(0, forged.data, 544);
    crc = cl_crc32(crc, forged.data + 548, forged.len - 548);
    for (int i = 0; i < 4; i++)
        forged.data[544 + i] = (uint8_t)(crc >> (24 - 8 * i));
    cl_eif f;
    CHECK_OK(cl_eif_parse(forged.data, forged.len, &f));
    CHECK_OK(cl_eif_signature(&f, &sig, NULL));
    CHECK(!sig.signature_valid && strstr(sig.signature_problem, "PCR0"));

    cl_buf_free(&img);
    cl_buf_free(&plain);
    cl_buf_free(&other_img);
    cl_buf_free(&forged);
    cl_buf_free(&wrong);
    EVP_PKEY_free(key);
    EVP_PKEY_free(other);
    free(cert);
    free(other_cert);
}

static void test_crc32_known_value(void)
{
    CHECK(cl_crc32(0, (const uint8_t *)"123456789", 9) == 0xCBF43926u); /* the CRC-32 check value */
}

static void test_cpio_layout(void)
{
    cl_buf out = CL_BUF_INIT;
    cl_cpio a;
    cl_cpio_init(&a, &out, 1700000000);
    CHECK_OK(cl_cpio_add(&a, "dir", S_IFDIR | 0755, NULL, 0));
    CHECK_OK(cl_cpio_add(&a, "dir/f", S_IFREG | 0644, "abcde", 5));
    CHECK_OK(cl_cpio_finish(&a));
    CHECK(out.len % 4 == 0);
    CHECK(!memcmp(out.data, "070701", 6));
    /* the first header: ino 1, mode 040755, uid 0, gid 0, nlink 2, mtime */
    CHECK(!memcmp(out.data + 6, "00000001000041ED0000000000000000000000026553F100", 48));
    CHECK(memmem(out.data, out.len, "TRAILER!!!", 10) != NULL);
    CHECK(memmem(out.data, out.len, "abcde", 5) != NULL);
    CHECK_ERR(cl_cpio_add(&a, "", S_IFREG, NULL, 0), CL_EINVAL, "bad path");
    cl_buf_free(&out);
}

int main(void)
{
    fill();
    RUN(test_round_trip_and_measurements);
    RUN(test_damage_refused);
    RUN(test_signed_image);
    RUN(test_crc32_known_value);
    RUN(test_cpio_layout);
    return test_summary();
}

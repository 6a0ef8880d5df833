/* cloister eif: build, measure, describe and sign Enclave Image Format
 * files without Docker, reproducibly (docs/eif.md). */
#include "commands.h"

#include "cloister/core/buf.h"
#include "cloister/core/encoding.h"
#include "cloister/core/error.h"
#include "cloister/core/options.h"
#include "cloister/core/secret_file.h"
#include "cloister/host/cpio.h"
#include "cloister/host/eif.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_BLOB (2ull << 30)  /* one input file (kernel, ramdisk): 2 GiB */
#define MAX_IMAGE (8ull << 30) /* an EIF to read: 8 GiB */
#define MAX_RAMDISKS 16

/* ---- shared: reading an image, printing measurements ---- */

static int load_image(const char *path, cl_buf *bytes, cl_eif *eif)
{
    CL_TRY(cl_read_file(path, MAX_IMAGE, bytes));
    int rc = cl_eif_parse(bytes->data, bytes->len, eif);
    if (rc < 0)
        cl_error_prefix(rc, "%s: ", path);
    return rc;
}

static char *hex_of(const uint8_t *data, size_t len)
{
    char *text = malloc(2 * len + 1);
    if (text)
        cl_hex_encode(data, len, text);
    return text;
}

static void set_hex(json_t *o, const char *key, const uint8_t *data, size_t len)
{
    char *text = hex_of(data, len);
    json_object_set_new(o, key, text ? json_string(text) : json_null());
    free(text);
}

/* nitro-cli's measurement map: its "HashAlgorithm" is the Rust Debug text
 * of the hasher, kept verbatim so that scripts written for nitro-cli's
 * output read ours. */
static json_t *measurements_json(const cl_eif *eif, const uint8_t *pcr8)
{
    json_t *m = json_object();
    json_object_set_new(m, "HashAlgorithm", json_string("Sha384 { ... }"));
    set_hex(m, "PCR0", eif->pcr0, CL_EIF_PCR_LEN);
    set_hex(m, "PCR1", eif->pcr1, CL_EIF_PCR_LEN);
    set_hex(m, "PCR2", eif->pcr2, CL_EIF_PCR_LEN);
    if (pcr8)
        set_hex(m, "PCR8", pcr8, CL_EIF_PCR_LEN);
    return m;
}

static int print_json(json_t *o)
{
    char *text = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!text)
        return -1;
    puts(text);
    free(text);
    return 0;
}

static int write_file(const char *path, const cl_buf *data)
{
    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= sizeof tmp)
        return cl_error_set(CL_EINVAL, "%s: path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return cl_error_set(CL_EIO, "cannot create %s: %s", tmp, strerror(errno));
    size_t done = 0;
    while (done < data->len) {
        ssize_t n = write(fd, data->data + done, data->len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int e = errno;
            close(fd);
            unlink(tmp);
            return cl_error_set(CL_EIO, "writing %s: %s", tmp, strerror(e));
        }
        done += (size_t)n;
    }
    if (fsync(fd) < 0 || close(fd) < 0 || rename(tmp, path) < 0) {
        int e = errno;
        unlink(tmp);
        return cl_error_set(CL_EIO, "writing %s: %s", path, strerror(e));
    }
    return CL_OK;
}

/* SOURCE_DATE_EPOCH (reproducible-builds.org) fixes every time stamp in the
 * image; unset, the epoch itself, so that two builds agree by default. */
static int source_date(uint32_t *out)
{
    const char *text = getenv("SOURCE_DATE_EPOCH");
    *out = 0;
    if (!text || !*text)
        return CL_OK;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    CL_ENSURE(!errno && !*end && v <= UINT32_MAX, CL_EINVAL,
              "SOURCE_DATE_EPOCH='%s' is not seconds since 1970 (up to 2106)", text);
    *out = (uint32_t)v;
    return CL_OK;
}

/* ---- build ---- */

typedef struct build_options {
    char *kernel, *cmdline, *init, *nsm_module, *rootfs, *output, *name, *image_version, *kernel_version;
    char *arch, *sign_key, *sign_cert, *metadata;
    cl_opt_list ramdisks, cmd, env;
    unsigned memory_mib, cpus;
    bool json;
} build_options;

static int check_arch(void *base, const char *value)
{
    (void)base;
    CL_ENSURE(!strcmp(value, "x86_64") || !strcmp(value, "aarch64"), CL_EINVAL,
              "'%s' is not x86_64 or aarch64", value);
    return CL_OK;
}

static const cl_opt build_table[] = {
    {.name = "kernel", CL_OPT_STR(build_options, kernel), .flags = CL_OPT_REQUIRED | CL_OPT_NONEMPTY, .arg = "FILE",
     .help = "the enclave kernel (AWS's bzImage or Image, from aws-nitro-enclaves-cli's blobs)"},
    {.name = "cmdline", CL_OPT_STR(build_options, cmdline), .flags = CL_OPT_REQUIRED | CL_OPT_NONEMPTY,
     .arg = "FILE|TEXT", .help = "the kernel command line: a file holding it (trimmed), or the text itself"},
    {.name = "ramdisk", CL_OPT_LIST_AT(build_options, ramdisks, MAX_RAMDISKS), .flags = CL_OPT_NONEMPTY,
     .arg = "FILE", .help = "a ramdisk, in boot order (repeat); the first one is measured into PCR1, the rest into PCR2"},
    {.name = "init", CL_OPT_STR(build_options, init), .arg = "FILE",
     .help = "with --rootfs: AWS's init, packed with --nsm-module as the bootstrap ramdisk"},
    {.name = "nsm-module", CL_OPT_STR(build_options, nsm_module), .arg = "FILE", .help = "with --rootfs: AWS's nsm.ko"},
    {.name = "rootfs", CL_OPT_STR(build_options, rootfs), .arg = "DIR",
     .help = "the root file system (cloister, the app, their libraries), packed as the second ramdisk under rootfs/"},
    {.name = "cmd", CL_OPT_LIST_AT(build_options, cmd, 256), .arg = "ARG",
     .help = "with --rootfs: the command init runs in the root file system, one argument per --cmd"},
    {.name = "env", CL_OPT_LIST_AT(build_options, env, 256), .flags = CL_OPT_NONEMPTY, .arg = "NAME=VALUE",
     .help = "with --rootfs: an environment variable for the command (repeat)"},
    {.name = "output", .short_name = 'o', CL_OPT_STR(build_options, output), .flags = CL_OPT_REQUIRED | CL_OPT_NONEMPTY,
     .arg = "FILE", .help = "the image to write"},
    {.name = "name", CL_OPT_STR(build_options, name), .arg = "NAME", .help = "image name in the metadata (default: the output's base name)"},
    {.name = "image-version", CL_OPT_STR(build_options, image_version), .def = "1.0", .arg = "TEXT",
     .help = "image version in the metadata"},
    {.name = "kernel-version", CL_OPT_STR(build_options, kernel_version), .def = "unknown", .arg = "TEXT",
     .help = "kernel version in the metadata"},
    {.name = "metadata", CL_OPT_STR(build_options, metadata), .arg = "FILE", .help = "custom metadata: a JSON file"},
    {.name = "memory", CL_OPT_UINT_AT(build_options, memory_mib, 64, 1u << 24), .def = "1024", .arg = "MiB",
     .help = "default enclave memory recorded in the header"},
    {.name = "cpus", CL_OPT_UINT_AT(build_options, cpus, 1, 1024), .def = "2", .arg = "N",
     .help = "default enclave CPUs recorded in the header"},
    {.name = "arch", CL_OPT_STR(build_options, arch), .set = check_arch, .def = "x86_64", .arg = "ARCH",
     .help = "x86_64 or aarch64 (a header flag)"},
    {.name = "sign-key", CL_OPT_STR(build_options, sign_key), .arg = "PEM",
     .help = "sign the image (PCR8): a P-384 private key, with --sign-cert"},
    {.name = "sign-cert", CL_OPT_STR(build_options, sign_cert), .arg = "PEM", .help = "the signing certificate"},
};

static int read_cmdline(const char *arg, char **out)
{
    struct stat st;
    cl_buf text = CL_BUF_INIT;
    if (stat(arg, &st) == 0 && S_ISREG(st.st_mode)) {
        CL_TRY(cl_read_file(arg, 64 * 1024, &text));
    } else {
        CL_TRY(cl_buf_append(&text, arg, strlen(arg)));
    }
    /* trimmed, as nitro-cli trims the blobs' cmdline file */
    size_t start = 0, end = text.len;
    while (start < end && (text.data[start] == ' ' || text.data[start] == '\n' || text.data[start] == '\t'))
        start++;
    while (end > start && (text.data[end - 1] == ' ' || text.data[end - 1] == '\n' || text.data[end - 1] == '\t' ||
                           text.data[end - 1] == '\r'))
        end--;
    int rc = CL_OK;
    if (memchr(text.data + start, 0, end - start))
        rc = cl_error_set(CL_EINVAL, "--cmdline: the command line holds a NUL byte");
    else if (!(*out = strndup((const char *)text.data + start, end - start)))
        rc = cl_error_set(CL_ENOMEM, "out of memory");
    cl_buf_free(&text);
    return rc;
}

static int read_blob(const char *path, cl_buf *out)
{
    int rc = cl_read_file(path, MAX_BLOB, out);
    if (rc == CL_OK && !out->len)
        rc = cl_error_set(CL_EINVAL, "%s is empty", path);
    return rc;
}

/* nitro-cli's bootstrap ramdisk: dev/, init, nsm.ko. */
static int bootstrap_ramdisk(const build_options *o, uint32_t mtime, cl_buf *out)
{
    cl_buf init = CL_BUF_INIT, nsm = CL_BUF_INIT;
    cl_cpio a;
    cl_cpio_init(&a, out, mtime);
    int rc = CL_OK;
    CL_TRY_OUT(read_blob(o->init, &init));
    CL_TRY_OUT(read_blob(o->nsm_module, &nsm));
    CL_TRY_OUT(cl_cpio_add(&a, "dev", S_IFDIR | 0755, NULL, 0));
    CL_TRY_OUT(cl_cpio_add(&a, "init", S_IFREG | 0755, init.data, init.len));
    CL_TRY_OUT(cl_cpio_add(&a, "nsm.ko", S_IFREG | 0755, nsm.data, nsm.len));
    CL_TRY_OUT(cl_cpio_finish(&a));
out:
    cl_buf_free(&init);
    cl_buf_free(&nsm);
    return rc;
}

static int lines_of(const cl_opt_list *list, cl_buf *out)
{
    for (size_t i = 0; i < list->count; i++) {
        CL_ENSURE(!strchr(list->items[i], '\n'), CL_EINVAL, "'%s' holds a newline (one per line in the image)",
                  list->items[i]);
        CL_TRY(cl_buf_append(out, list->items[i], strlen(list->items[i])));
        CL_TRY(cl_buf_append_u8(out, '\n'));
    }
    return CL_OK;
}

/* nitro-cli's customer ramdisk: rootfs/ with the image's files and the
 * directories init mounts on, and cmd and env files init reads. */
static int customer_ramdisk(const build_options *o, uint32_t mtime, cl_buf *out)
{
    static const char *const mount_points[] = {"dev", "proc", "run", "sys", "tmp", "var"};
    cl_buf cmd = CL_BUF_INIT, env = CL_BUF_INIT;
    cl_cpio a;
    cl_cpio_init(&a, out, mtime);
    int rc = CL_OK;
    for (size_t i = 0; i < o->env.count; i++)
        if (!strchr(o->env.items[i], '=') || o->env.items[i][0] == '=')
            CL_FAIL_OUT(CL_EINVAL, "--env '%s' is not NAME=VALUE", o->env.items[i]);
    CL_TRY_OUT(lines_of(&o->cmd, &cmd));
    CL_TRY_OUT(lines_of(&o->env, &env));
    CL_TRY_OUT(cl_cpio_add(&a, "cmd", S_IFREG | 0644, cmd.data, cmd.len));
    CL_TRY_OUT(cl_cpio_add(&a, "env", S_IFREG | 0644, env.data, env.len));
    CL_TRY_OUT(cl_cpio_add(&a, "rootfs", S_IFDIR | 0755, NULL, 0));
    for (size_t i = 0; i < sizeof mount_points / sizeof mount_points[0]; i++) {
        char path[64], fs_path[4096];
        snprintf(path, sizeof path, "rootfs/%s", mount_points[i]);
        snprintf(fs_path, sizeof fs_path, "%s/%s", o->rootfs, mount_points[i]);
        struct stat st;
        if (lstat(fs_path, &st) < 0) /* the tree's own copy comes below */
            CL_TRY_OUT(cl_cpio_add(&a, path, S_IFDIR | 0755, NULL, 0));
    }
    CL_TRY_OUT(cl_cpio_add_tree(&a, o->rootfs, "rootfs/"));
    CL_TRY_OUT(cl_cpio_finish(&a));
out:
    cl_buf_free(&cmd);
    cl_buf_free(&env);
    return rc;
}

static int metadata_json(const build_options *o, uint32_t mtime, char **out)
{
    char when[32];
    time_t t = (time_t)mtime;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S+00:00", &tm);
    char name[256];
    if (o->name) {
        snprintf(name, sizeof name, "%s", o->name);
    } else {
        const char *base = strrchr(o->output, '/');
        snprintf(name, sizeof name, "%s", base ? base + 1 : o->output);
        size_t n = strlen(name);
        if (n > 4 && !strcmp(name + n - 4, ".eif"))
            name[n - 4] = 0;
    }
    json_t *custom = json_null();
    if (o->metadata) {
        json_error_t err;
        custom = json_load_file(o->metadata, JSON_REJECT_DUPLICATES, &err);
        if (!custom)
            return cl_error_set(CL_EINVAL, "--metadata %s: line %d: %s", o->metadata, err.line, err.text);
    }
    /* the field order of nitro-cli's EifIdentityInfo */
    json_t *m = json_pack("{s:s, s:s, s:{s:s, s:s, s:s, s:s, s:s}, s:o, s:o}", "ImageName", name, "ImageVersion",
                          o->image_version, "BuildMetadata", "BuildTime", when, "BuildTool", "cloister",
                          "BuildToolVersion", CLOISTER_VERSION, "OperatingSystem", "Linux", "KernelVersion",
                          o->kernel_version, "DockerInfo", json_object(), "CustomMetadata", custom);
    if (!m)
        return cl_error_set(CL_ENOMEM, "out of memory");
    *out = json_dumps(m, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(m);
    return *out ? CL_OK : cl_error_set(CL_ENOMEM, "out of memory");
}

static int load_signer(const char *key_path, const char *cert_path, EVP_PKEY **key, char **cert_pem)
{
    cl_buf key_pem = CL_BUF_INIT, cert = CL_BUF_INIT;
    int rc = CL_OK;
    CL_TRY_OUT(cl_read_secret_file(key_path, 64 * 1024, &key_pem));
    CL_TRY_OUT(cl_read_file(cert_path, 64 * 1024, &cert));
    BIO *bio = BIO_new_mem_buf(key_pem.data, (int)key_pem.len);
    *key = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    if (!*key)
        CL_OSSL_OUT(CL_EINVAL, "%s is not a PEM private key", key_path);
    if (EVP_PKEY_get_base_id(*key) != EVP_PKEY_EC || EVP_PKEY_get_bits(*key) != 384)
        CL_FAIL_OUT(CL_EINVAL, "%s: the signing key must be EC P-384 (ES384, as Nitro's PCR8 signatures)", key_path);
    if (!(*cert_pem = strndup((const char *)cert.data, cert.len)))
        CL_FAIL_OUT(CL_ENOMEM, "out of memory");
out:
    if (rc < 0 && *key) {
        EVP_PKEY_free(*key);
        *key = NULL;
    }
    cl_buf_free(&key_pem);
    cl_buf_free(&cert);
    return rc;
}

static int print_measurements(const cl_buf *image)
{
    cl_eif eif;
    CL_TRY(cl_eif_parse(image->data, image->len, &eif));
    cl_eif_signature_info sig;
    bool is_signed = cl_eif_signature(&eif, &sig, NULL) == CL_OK;
    json_t *o = json_object();
    json_object_set_new(o, "Measurements", measurements_json(&eif, is_signed ? sig.pcr8 : NULL));
    return print_json(o) == 0 ? CL_OK : cl_error_set(CL_ENOMEM, "out of memory");
}

static int build_run(const build_options *o)
{
    bool from_rootfs = o->rootfs || o->init || o->nsm_module || o->cmd.count || o->env.count;
    if (from_rootfs && (!o->rootfs || !o->init || !o->nsm_module))
        return cl_error_set(CL_EINVAL, "--rootfs, --init and --nsm-module go together");
    if (from_rootfs && o->ramdisks.count)
        return cl_error_set(CL_EINVAL, "give either --ramdisk files or --rootfs with --init and --nsm-module, not both");
    if (!from_rootfs && !o->ramdisks.count)
        return cl_error_set(CL_EINVAL, "no ramdisk: give --ramdisk FILE... or --rootfs DIR --init FILE --nsm-module FILE");
    if (from_rootfs && !o->cmd.count)
        return cl_error_set(CL_EINVAL, "--rootfs needs --cmd: what init runs");
    if (!o->sign_key != !o->sign_cert)
        return cl_error_set(CL_EINVAL, "--sign-key and --sign-cert go together");

    uint32_t mtime;
    CL_TRY(source_date(&mtime));
    int rc = CL_OK;
    cl_buf kernel = CL_BUF_INIT, image = CL_BUF_INIT;
    cl_buf ramdisks[MAX_RAMDISKS];
    cl_slice slices[MAX_RAMDISKS];
    size_t n = from_rootfs ? 2 : o->ramdisks.count;
    for (size_t i = 0; i < MAX_RAMDISKS; i++)
        ramdisks[i] = (cl_buf)CL_BUF_INIT;
    char *cmdline = NULL, *metadata = NULL, *cert_pem = NULL;
    EVP_PKEY *key = NULL;
    CL_TRY_OUT(read_blob(o->kernel, &kernel));
    CL_TRY_OUT(read_cmdline(o->cmdline, &cmdline));
    if (from_rootfs) {
        CL_TRY_OUT(bootstrap_ramdisk(o, mtime, &ramdisks[0]));
        CL_TRY_OUT(customer_ramdisk(o, mtime, &ramdisks[1]));
    } else {
        for (size_t i = 0; i < n; i++)
            CL_TRY_OUT(read_blob(o->ramdisks.items[i], &ramdisks[i]));
    }
    for (size_t i = 0; i < n; i++)
        slices[i] = (cl_slice){ramdisks[i].data, ramdisks[i].len};
    CL_TRY_OUT(metadata_json(o, mtime, &metadata));
    if (o->sign_key)
        CL_TRY_OUT(load_signer(o->sign_key, o->sign_cert, &key, &cert_pem));
    cl_eif_inputs in = {.kernel = {kernel.data, kernel.len},
                        .cmdline = cmdline,
                        .ramdisks = slices,
                        .num_ramdisks = (unsigned)n,
                        .metadata_json = metadata,
                        .flags = !strcmp(o->arch, "aarch64") ? CL_EIF_FLAG_ARM64 : 0,
                        .default_mem = (uint64_t)o->memory_mib << 20,
                        .default_cpus = o->cpus,
                        .sign_key = key,
                        .sign_cert_pem = cert_pem};
    CL_TRY_OUT(cl_eif_write(&in, &image));
    CL_TRY_OUT(write_file(o->output, &image));
    fprintf(stderr, "cloister eif build: wrote %s (%zu bytes)\n", o->output, image.len);
    CL_TRY_OUT(print_measurements(&image));
out:
    cl_buf_free(&kernel);
    cl_buf_free(&image);
    for (size_t i = 0; i < MAX_RAMDISKS; i++)
        cl_buf_free(&ramdisks[i]);
    free(cmdline);
    free(metadata);
    free(cert_pem);
    EVP_PKEY_free(key);
    return rc;
}

/* ---- sign: (re)sign an existing image, as nitro-cli sign-eif ---- */

typedef struct sign_options {
    char *sign_key, *sign_cert, *output;
} sign_options;

static const cl_opt sign_table[] = {
    {.name = "sign-key", CL_OPT_STR(sign_options, sign_key), .flags = CL_OPT_REQUIRED | CL_OPT_NONEMPTY, .arg = "PEM",
     .help = "a P-384 private key"},
    {.name = "sign-cert", CL_OPT_STR(sign_options, sign_cert), .flags = CL_OPT_REQUIRED | CL_OPT_NONEMPTY,
     .arg = "PEM", .help = "its certificate: PCR8 is the hash of it"},
    {.name = "output", .short_name = 'o', CL_OPT_STR(sign_options, output), .arg = "FILE",
     .help = "where to write the signed image (default: replace the input)"},
};

static int sign_run(const sign_options *o, const char *input)
{
    cl_buf bytes = CL_BUF_INIT, image = CL_BUF_INIT;
    cl_eif eif;
    EVP_PKEY *key = NULL;
    char *cert_pem = NULL, *cmdline = NULL, *metadata = NULL;
    cl_slice ramdisks[CL_EIF_MAX_SECTIONS];
    int rc = CL_OK;
    CL_TRY_OUT(load_image(input, &bytes, &eif));
    CL_TRY_OUT(load_signer(o->sign_key, o->sign_cert, &key, &cert_pem));
    unsigned n = 0;
    for (unsigned i = 0; i < eif.num_sections; i++)
        if (eif.sections[i].type == CL_EIF_SECTION_RAMDISK)
            ramdisks[n++] = eif.sections[i].data;
    if (memchr(eif.cmdline.data, 0, eif.cmdline.len) || memchr(eif.metadata.data, 0, eif.metadata.len))
        CL_FAIL_OUT(CL_EPARSE, "%s: the cmdline or metadata holds a NUL byte", input);
    if (!(cmdline = strndup((const char *)eif.cmdline.data, eif.cmdline.len)) ||
        !(metadata = strndup((const char *)eif.metadata.data, eif.metadata.len)))
        CL_FAIL_OUT(CL_ENOMEM, "out of memory");
    cl_eif_inputs in = {.kernel = eif.kernel, .cmdline = cmdline, .ramdisks = ramdisks, .num_ramdisks = n,
                        .metadata_json = metadata, .flags = eif.flags, .default_mem = eif.default_mem,
                        .default_cpus = eif.default_cpus, .sign_key = key, .sign_cert_pem = cert_pem};
    CL_TRY_OUT(cl_eif_write(&in, &image));
    CL_TRY_OUT(write_file(o->output ? o->output : input, &image));
    fprintf(stderr, "cloister eif sign: wrote %s\n", o->output ? o->output : input);
    CL_TRY_OUT(print_measurements(&image));
out:
    cl_buf_free(&bytes);
    cl_buf_free(&image);
    EVP_PKEY_free(key);
    free(cert_pem);
    free(cmdline);
    free(metadata);
    return rc;
}

/* ---- describe ---- */

static json_t *certificate_json(const cl_buf *pem)
{
    BIO *bio = BIO_new_mem_buf(pem->data, (int)pem->len);
    X509 *cert = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    if (!cert)
        return json_null();
    json_t *o = json_object(), *issuer = json_object();
    const X509_NAME *name = X509_get_issuer_name(cert);
    for (int i = 0; i < X509_NAME_entry_count(name); i++) {
        const X509_NAME_ENTRY *e = X509_NAME_get_entry(name, i);
        const char *sn = OBJ_nid2sn(OBJ_obj2nid(X509_NAME_ENTRY_get_object(e)));
        const ASN1_STRING *v = X509_NAME_ENTRY_get_data(e);
        json_object_set_new(issuer, sn, json_stringn((const char *)ASN1_STRING_get0_data(v), (size_t)ASN1_STRING_length(v)));
    }
    json_object_set_new(o, "IssuerName", issuer);
    json_object_set_new(o, "Algorithm", json_string(OBJ_nid2ln(X509_get_signature_nid(cert))));
    char when[64];
    struct tm tm;
    if (ASN1_TIME_to_tm(X509_get0_notBefore(cert), &tm) == 1 && strftime(when, sizeof when, "%b %e %H:%M:%S %Y GMT", &tm))
        json_object_set_new(o, "NotBefore", json_string(when));
    if (ASN1_TIME_to_tm(X509_get0_notAfter(cert), &tm) == 1 && strftime(when, sizeof when, "%b %e %H:%M:%S %Y GMT", &tm))
        json_object_set_new(o, "NotAfter", json_string(when));
    const ASN1_BIT_STRING *sig;
    X509_get0_signature(&sig, NULL, cert);
    size_t len = (size_t)ASN1_STRING_length(sig);
    char *text = malloc(3 * len + 1);
    if (text) {
        text[0] = 0;
        for (size_t i = 0; i < len; i++)
            sprintf(text + 3 * i, i + 1 < len ? "%02X:" : "%02X", ASN1_STRING_get0_data(sig)[i]);
        json_object_set_new(o, "Signature", json_string(text));
        free(text);
    }
    X509_free(cert);
    return o;
}

static int describe_run(const char *input)
{
    cl_buf bytes = CL_BUF_INIT, pem = CL_BUF_INIT;
    cl_eif eif;
    int rc = CL_OK;
    CL_TRY_OUT(load_image(input, &bytes, &eif));
    cl_eif_signature_info sig;
    rc = cl_eif_signature(&eif, &sig, &pem);
    bool is_signed = rc == CL_OK;
    if (rc < 0 && rc != CL_ENOTFOUND) {
        cl_error_prefix(rc, "%s: ", input);
        goto out;
    }
    rc = CL_OK;
    json_t *o = json_object();
    json_object_set_new(o, "EifVersion", json_integer(eif.version));
    json_object_set_new(o, "Measurements", measurements_json(&eif, is_signed ? sig.pcr8 : NULL));
    json_object_set_new(o, "IsSigned", json_boolean(is_signed));
    if (is_signed)
        json_object_set_new(o, "SigningCertificate", certificate_json(&pem));
    json_object_set_new(o, "CheckCRC", json_true()); /* a bad CRC was refused above */
    if (is_signed) {
        json_object_set_new(o, "SignatureCheck", json_boolean(sig.signature_valid));
        if (!sig.signature_valid)
            fprintf(stderr, "cloister eif describe: %s: signature does not hold: %s\n", input, sig.signature_problem);
    }
    json_t *meta = eif.metadata.len ? json_loadb((const char *)eif.metadata.data, eif.metadata.len,
                                                 JSON_REJECT_DUPLICATES, NULL)
                                    : NULL;
    if (json_is_object(meta)) {
        json_t *v;
        if ((v = json_object_get(meta, "ImageName")))
            json_object_set(o, "ImageName", v);
        if ((v = json_object_get(meta, "ImageVersion")))
            json_object_set(o, "ImageVersion", v);
        json_t *m = json_object(), *b = json_object_get(meta, "BuildMetadata");
        if (json_is_object(b))
            json_object_update(m, b);
        json_object_set(m, "DockerInfo", json_object_get(meta, "DockerInfo") ? json_object_get(meta, "DockerInfo")
                                                                              : json_null());
        json_t *custom = json_object_get(meta, "CustomMetadata");
        if (json_is_object(custom))
            json_object_update(m, custom); /* flattened, as nitro-cli shows it */
        json_object_set_new(o, "Metadata", m);
    } else if (eif.metadata.len) {
        fprintf(stderr, "cloister eif describe: %s: the metadata section is not a JSON object\n", input);
    }
    json_decref(meta);
    json_object_set_new(o, "Sections", json_integer(eif.num_sections));
    json_object_set_new(o, "DefaultMemoryMiB", json_integer((json_int_t)(eif.default_mem >> 20)));
    json_object_set_new(o, "DefaultCpus", json_integer((json_int_t)eif.default_cpus));
    json_object_set_new(o, "Architecture", json_string(eif.flags & CL_EIF_FLAG_ARM64 ? "aarch64" : "x86_64"));
    if (print_json(o) < 0)
        rc = cl_error_set(CL_ENOMEM, "out of memory");
    if (is_signed && !sig.signature_valid)
        rc = cl_error_set(CL_EVERIFY, "%s: the signature does not hold: %s", input, sig.signature_problem);
out:
    cl_buf_free(&bytes);
    cl_buf_free(&pem);
    return rc;
}

static int measure_run(const char *input)
{
    cl_buf bytes = CL_BUF_INIT;
    cl_eif eif;
    int rc = load_image(input, &bytes, &eif);
    if (rc == CL_OK)
        rc = print_measurements(&bytes);
    cl_buf_free(&bytes);
    return rc;
}

/* ---- the verbs ---- */

static int exit_for(int rc)
{
    if (rc == CL_OK)
        return 0;
    return rc == CL_EINVAL ? EXIT_USAGE : rc == CL_EVERIFY || rc == CL_EPARSE ? EXIT_REJECTED : EXIT_FAILED;
}

static int run_verb(const char *verb, int argc, char **argv)
{
    build_options b = {0};
    sign_options s = {0};
    cl_opt_section build_sections[] = {CL_OPT_SECTION("options", build_table, &b)};
    cl_opt_section sign_sections[] = {CL_OPT_SECTION("options", sign_table, &s)};
    bool is_build = !strcmp(verb, "build"), is_sign = !strcmp(verb, "sign");
    char prog[64];
    snprintf(prog, sizeof prog, "cloister eif %s", verb);
    cl_options spec = {.prog = prog, .sections = NULL, .section_count = 0};
    if (is_build) {
        spec.usage = "usage: cloister eif build --kernel FILE --cmdline FILE|TEXT -o OUT.eif\n"
                     "         (--ramdisk FILE... | --rootfs DIR --init FILE --nsm-module FILE --cmd ARG...)\n\n"
                     "Writes an Enclave Image Format file, the same bytes for the same inputs (times from\n"
                     "SOURCE_DATE_EPOCH, 0 when unset), and prints its measurements as nitro-cli does.\n\n";
        spec.sections = build_sections;
        spec.section_count = 1;
    } else if (is_sign) {
        spec.usage = "usage: cloister eif sign IMAGE.eif --sign-key KEY.pem --sign-cert CERT.pem [-o OUT.eif]\n\n"
                     "Adds (or replaces) the signature section: PCR8 becomes the hash of the certificate.\n\n";
        spec.positional = "IMAGE.eif";
        spec.max_positional = 1;
        spec.sections = sign_sections;
        spec.section_count = 1;
    } else {
        spec.usage = !strcmp(verb, "measure")
                         ? "usage: cloister eif measure IMAGE.eif\n\nPrints PCR0, PCR1, PCR2 (and PCR8 when signed) "
                           "as nitro-cli computes them.\n\n"
                         : "usage: cloister eif describe IMAGE.eif\n\nPrints what nitro-cli describe-eif prints: "
                           "version, measurements, signature, CRC, metadata.\n\n";
        spec.positional = "IMAGE.eif";
        spec.max_positional = 1;
    }
    cl_options_result r;
    int parsed = cl_options_main(&spec, argc, argv, &r);
    int status;
    if (parsed != 0) {
        status = parsed > 0 ? 0 : EXIT_USAGE;
    } else if (!is_build && r.positional_count != 1) {
        fprintf(stderr, "%s: one IMAGE.eif is needed (see --help)\n", prog);
        status = EXIT_USAGE;
    } else {
        int rc = is_build  ? build_run(&b)
                 : is_sign ? sign_run(&s, r.positional[0])
                 : !strcmp(verb, "measure") ? measure_run(r.positional[0])
                                            : describe_run(r.positional[0]);
        if (rc < 0)
            fprintf(stderr, "%s: %s\n", prog, cl_error_message());
        status = exit_for(rc);
    }
    cl_options_free(&spec, &r);
    return status;
}

int cmd_eif(int argc, char **argv)
{
    static const char *const verbs[] = {"build", "measure", "describe", "sign"};
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        FILE *out = argc < 2 ? stderr : stdout;
        fprintf(out, "usage: cloister eif VERB [ARGS...]\n\n"
                     "Enclave Image Format files, without Docker, reproducibly.\n"
                     "  build      an image from AWS's kernel and init and a root file system (or ramdisks)\n"
                     "  measure    its PCR0, PCR1, PCR2 (PCR8 when signed), as nitro-cli computes them\n"
                     "  describe   everything nitro-cli describe-eif shows\n"
                     "  sign       add the PCR8 signing certificate and signature\n"
                     "'cloister eif VERB --help' says more; docs/eif.md describes the format.\n");
        return argc < 2 ? EXIT_USAGE : 0;
    }
    for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++)
        if (!strcmp(argv[1], verbs[i]))
            return run_verb(verbs[i], argc - 1, argv + 1);
    fprintf(stderr, "cloister eif: unknown verb '%s' (build, measure, describe, sign)\n", argv[1]);
    return EXIT_USAGE;
}

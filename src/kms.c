/* cloister kms: KMS calls for scripts inside the enclave (with a Recipient:
 * plaintexts never leave the enclave in the clear) and for operators
 * outside it. */
#include "cloister/core/buf.h"
#include "cloister/core/encoding.h"
#include "cloister/core/options.h"
#include "cloister/enclave/kms.h"
#include "commands.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_CONTEXT 64
#define KMS_INPUT_MAX (64 * 1024)

static const char usage_text[] =
    "usage: cloister kms [OPTIONS] encrypt --key-id ID [--in FILE] [-o FILE]\n"
    "       cloister kms [OPTIONS] decrypt [--key-id ID] [--in FILE] [-o FILE] [--base64]\n"
    "       cloister kms [OPTIONS] generate-data-key --key-id ID [--key-spec AES_256|AES_128 | --bytes N]\n"
    "                                                [-o FILE]\n"
    "       cloister kms [OPTIONS] generate-random --bytes N [-o FILE] [--base64]\n"
    "\n"
    "AWS KMS over its JSON 1.1 protocol, signed with SigV4.  With --recipient (inside an\n"
    "enclave) Decrypt, GenerateDataKey and GenerateRandom send an attestation document\n"
    "carrying a fresh RSA-2048 key, and KMS answers with a CMS envelope that only this\n"
    "process opens: KMS key policies can then require the enclave's measurements.\n"
    "\n"
    "operations:\n"
    "  encrypt            the plaintext (--in FILE or stdin, 1..4096 bytes) -> the base64\n"
    "                     CiphertextBlob on stdout (raw bytes with -o FILE)\n"
    "  decrypt            a CiphertextBlob (raw or base64, --in FILE or stdin) -> the\n"
    "                     plaintext on stdout or in -o FILE (mode 0600); --base64 prints base64\n"
    "  generate-data-key  prints {\"KeyId\", \"CiphertextBlob\", \"Plaintext\"} (base64) as JSON\n"
    "  generate-random    N random bytes (1..1024) from KMS; --base64 prints base64\n"
    "\n";

static const char epilog[] =
    "Exit status: 0 done, 1 KMS refused (AccessDenied, InvalidCiphertext, NotFound, ...),\n"
    "2 bad command line, 3 could not do the call (network, credentials, NSM, bad answer).\n";

/* The command line's values (owned by the options layer). */
typedef struct kms_options {
    char *region, *endpoint, *proxy, *ca_file, *imds, *role, *access_key_id, *secret_access_key, *session_token;
    char *nsm, *key_id, *purpose, *algorithm, *in, *out, *key_spec;
    bool recipient, stats, base64;
    cl_opt_list context;
    unsigned max_attempts, timeout_s, bytes;
} kms_options;

static int check_context(void *base, const char *value)
{
    (void)base;
    const char *eq = strchr(value, '=');
    CL_ENSURE(eq && eq != value, CL_EINVAL, "'%s': expected KEY=VALUE", value);
    return CL_OK;
}

static int check_purpose(void *base, const char *value)
{
    kms_options *o = base;
    CL_ENSURE(!o->purpose, CL_EINVAL, "given twice (%s)", value);
    char purpose[32];
    cl_kms_purpose_context ctx;
    return cl_kms_purpose_context_parse(value, purpose, sizeof purpose, &ctx);
}

#define K kms_options
static const cl_opt kms_option_table[] = {
    {.name = "region", CL_OPT_STR(K, region), .arg = "R",
     .help = "the region (else $AWS_REGION, $AWS_DEFAULT_REGION, or IMDS's)"},
    {.name = "endpoint", CL_OPT_STR(K, endpoint), .arg = "URL",
     .help = "https://HOST[:PORT] (https://kms.REGION.amazonaws.com)"},
    {.name = "proxy", CL_OPT_STR(K, proxy), .arg = "ADDR",
     .help = "dial ADDR instead of HOST: the host's outbound proxy, e.g. vsock:3:8000 (cloister host --outbound, "
             "vsock-proxy) or unix:PATH; TLS stays end to end, checked for HOST"},
    {.name = "ca-file", CL_OPT_STR(K, ca_file), .arg = "PEM",
     .help = "trust these CAs instead of the system's store (local KMS)"},
    {.name = "imds", CL_OPT_STR(K, imds), .arg = "ADDR",
     .help = "credentials from IMDSv2 at ADDR (cloister host --imds, e.g. vsock:3:8002 or unix:PATH), refreshed "
             "before they expire"},
    {.name = "role", CL_OPT_STR(K, role), .arg = "NAME",
     .help = "the instance profile's role (default: the one IMDS names)"},
    {.name = "access-key-id", CL_OPT_STR(K, access_key_id), .arg = "ID",
     .help = "explicit credentials (else --imds, else $AWS_ACCESS_KEY_ID, $AWS_SECRET_ACCESS_KEY, "
             "$AWS_SESSION_TOKEN)"},
    {.name = "secret-access-key", CL_OPT_STR(K, secret_access_key), .arg = "KEY", .help = "with --access-key-id"},
    {.name = "session-token", CL_OPT_STR(K, session_token), .arg = "TOKEN", .help = "with --access-key-id"},
    {.name = "recipient", CL_OPT_FLAG(K, recipient),
     .help = "the Recipient forms (attestation document from the NSM)"},
    {.name = "nsm", CL_OPT_STR(K, nsm), .arg = "ADDR",
     .help = "the NSM for --recipient (implies it): unix:PATH of nsm-sim or /dev/nsm (default $" CL_NSM_ENV
             ", else /dev/nsm)"},
    {.name = "key-id", CL_OPT_STR(K, key_id), .arg = "ID", .help = "key id, ARN or alias/NAME"},
    {.name = "context", CL_OPT_LIST_AT(K, context, MAX_CONTEXT), .set = check_context, .arg = "K=V",
     .help = "encryption context entry (repeatable)"},
    {.name = "purpose", CL_OPT_STR(K, purpose), .set = check_purpose, .arg = "P[:NAME]",
     .help = "the context cloister requires for what the ciphertext is for: pkcs11-token:LABEL (acm pack-key, "
             "key-holder), enclave-tls-key (enclave --tls-key-ciphertext), enclave-secret:NAME (enclave -secret "
             "NAME=...); adds purpose=P and token= or name=NAME"},
    {.name = "encryption-algorithm", CL_OPT_STR(K, algorithm), .arg = "A", .help = "(SYMMETRIC_DEFAULT)"},
    {.name = "max-attempts", CL_OPT_UINT_AT(K, max_attempts, 1, 20), .arg = "N",
     .help = "tries per call, retrying throttling and 5xx with backoff (5)"},
    {.name = "timeout", CL_OPT_DURATION_AT(K, timeout_s, 1000, 1, 3600), .arg = "SECONDS",
     .help = "per attempt (10)"},
    {.name = "stats", CL_OPT_FLAG(K, stats), .help = "print where the time went on stderr"},
    {.name = "in", CL_OPT_STR(K, in), .arg = "FILE", .help = "the input (default: stdin)"},
    {.name = "output", .short_name = 'o', CL_OPT_STR(K, out), .arg = "FILE", .help = "the output (default: stdout)"},
    {.name = "key-spec", CL_OPT_STR(K, key_spec), .arg = "SPEC", .help = "generate-data-key: AES_256 or AES_128"},
    {.name = "bytes", CL_OPT_UINT_AT(K, bytes, 1, 1024), .arg = "N",
     .help = "generate-data-key, generate-random: this many bytes"},
    {.name = "base64", CL_OPT_FLAG(K, base64), .help = "decrypt, generate-random: print base64"},
};
#undef K

typedef struct args {
    cl_kms_setup setup;
    const char *op, *in, *out, *key_spec, *algorithm, *key_id;
    unsigned bytes;
    bool base64, stats;
    cl_kms_context_entry context[MAX_CONTEXT];
    size_t context_count;
    char purpose[32];
    cl_kms_purpose_context purpose_context;
} args;

static int bad(const char *fmt, const char *arg)
{
    fprintf(stderr, "cloister kms: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (see --help)\n");
    return EXIT_USAGE;
}

/* Returns 0, EXIT_USAGE, or -1 for --help.  a borrows o's strings. */
static int parse_args(int argc, char **argv, const cl_options *spec, kms_options *o, args *a)
{
    memset(a, 0, sizeof *a);
    cl_options_result r;
    int rc = cl_options_main(spec, argc, argv, &r);
    const char *op = r.positional_count > 0 ? r.positional[0] : NULL;
    const char *extra = r.positional_count > 1 ? r.positional[1] : NULL;
    cl_options_free(NULL, &r);
    if (rc != 0)
        return rc > 0 ? -1 : EXIT_USAGE;
    a->setup = (cl_kms_setup){.region = o->region,
                              .endpoint = o->endpoint,
                              .proxy = o->proxy,
                              .ca_file = o->ca_file,
                              .imds = o->imds,
                              .role = o->role,
                              .access_key_id = o->access_key_id,
                              .secret_access_key = o->secret_access_key,
                              .session_token = o->session_token,
                              .recipient = o->recipient || o->nsm,
                              .nsm = o->nsm,
                              .max_attempts = o->max_attempts,
                              .timeout_ms = o->timeout_s * 1000u};
    a->key_id = o->key_id;
    a->algorithm = o->algorithm;
    a->in = o->in;
    a->out = o->out;
    a->key_spec = o->key_spec;
    a->bytes = o->bytes;
    a->base64 = o->base64;
    a->stats = o->stats;
    for (size_t i = 0; i < o->context.count; i++) {
        char *item = o->context.items[i];
        char *eq = strchr(item, '='); /* checked as it was given */
        *eq = '\0';
        a->context[a->context_count++] = (cl_kms_context_entry){item, eq + 1};
    }
    if (o->purpose) {
        if (cl_kms_purpose_context_parse(o->purpose, a->purpose, sizeof a->purpose, &a->purpose_context) < 0)
            return bad("--purpose: %s", cl_error_message());
        if (a->context_count + a->purpose_context.count > MAX_CONTEXT)
            return bad("more than %s --context entries", "64");
        for (size_t i = 0; i < a->purpose_context.count; i++)
            a->context[a->context_count++] = a->purpose_context.entries[i];
    }
    if (!op)
        return bad("%s", "which operation? encrypt, decrypt, generate-data-key or generate-random");
    a->op = op;
    if (extra)
        return bad("unexpected argument '%s'", extra);
    bool enc = !strcmp(a->op, "encrypt"), dec = !strcmp(a->op, "decrypt"),
         gdk = !strcmp(a->op, "generate-data-key"), rnd = !strcmp(a->op, "generate-random");
    if (!enc && !dec && !gdk && !rnd)
        return bad("unknown operation '%s'", a->op);
    if ((enc || gdk) && !a->key_id)
        return bad("%s needs --key-id", a->op);
    if (rnd && !a->bytes)
        return bad("%s needs --bytes N", a->op);
    if (gdk && a->bytes && a->key_spec)
        return bad("%s: --key-spec or --bytes, not both", a->op);
    if (!!a->setup.access_key_id != !!a->setup.secret_access_key)
        return bad("%s", "--access-key-id and --secret-access-key go together");
    if (a->setup.recipient && enc)
        return bad("%s", "--recipient applies to decrypt, generate-data-key and generate-random, not encrypt");
    if (a->base64 && (enc || gdk))
        return bad("--base64 applies to decrypt and generate-random, not %s", a->op);
    return 0;
}

static int write_output(const char *path, const uint8_t *data, size_t len, bool secret)
{
    int fd = STDOUT_FILENO;
    if (path && strcmp(path, "-")) {
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, secret ? 0600 : 0644);
        if (fd < 0) {
            fprintf(stderr, "cloister kms: %s: %s\n", path, strerror(errno));
            return EXIT_FAILED;
        }
    }
    size_t done = 0;
    while (done < len) {
        ssize_t w = write(fd, data + done, len - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            fprintf(stderr, "cloister kms: writing %s: %s\n", path ? path : "stdout", strerror(errno));
            if (fd != STDOUT_FILENO)
                close(fd);
            return EXIT_FAILED;
        }
        done += (size_t)w;
    }
    if (fd != STDOUT_FILENO && close(fd) != 0) {
        fprintf(stderr, "cloister kms: %s: %s\n", path, strerror(errno));
        return EXIT_FAILED;
    }
    return 0;
}

static int write_base64_line(const char *path, const uint8_t *data, size_t len, bool secret)
{
    cl_buf b = CL_BUF_INIT;
    int rc = cl_base64_encode(data, len, &b);
    if (rc == CL_OK)
        rc = cl_buf_append(&b, "\n", 1);
    if (rc < 0) {
        cl_buf_free(&b);
        fprintf(stderr, "cloister kms: out of memory\n");
        return EXIT_FAILED;
    }
    int status = write_output(path, b.data, b.len, secret);
    cl_buf_free(&b);
    return status;
}

static int failed(cl_kms_session *s, const char *what, int rc)
{
    fprintf(stderr, "cloister kms: %s: %s\n", what, cl_error_message());
    /* KMS said no: exit 1; everything else: 3 */
    bool refused = s && s->kms && cl_kms_error_type(s->kms)[0] && (rc == CL_EVERIFY || rc == CL_ENOTFOUND || rc == CL_EINVAL);
    return refused ? EXIT_REJECTED : EXIT_FAILED;
}

static void print_stats(const cl_kms_session *s)
{
    cl_kms_stats st;
    cl_kms_get_stats(s->kms, &st);
    fprintf(stderr,
            "kms-stats: calls=%llu attempts=%llu retries=%llu total_us=%llu attestation_us=%llu rsa_us=%llu "
            "network_us=%llu credentials=%s\n",
            (unsigned long long)st.calls, (unsigned long long)st.attempts, (unsigned long long)st.retries,
            (unsigned long long)st.total_us, (unsigned long long)st.attestation_us, (unsigned long long)st.rsa_us,
            (unsigned long long)st.network_us, cl_aws_credentials_source(s->credentials));
}

static int read_input(const char *path, cl_buf *out)
{
    int rc = cl_read_file(path ? path : "-", KMS_INPUT_MAX, out);
    if (rc < 0) {
        fprintf(stderr, "cloister kms: %s: %s\n", path ? path : "stdin", cl_error_message());
        return EXIT_FAILED;
    }
    return 0;
}

static int run(args *a, cl_kms_session *s)
{
    cl_kms_options o = {
        .key_id = a->key_id,
        .context = a->context,
        .context_count = a->context_count,
        .encryption_algorithm = a->algorithm,
        .key_spec = a->key_spec,
        .number_of_bytes = a->bytes,
    };
    cl_buf in = CL_BUF_INIT, pt = CL_BUF_INIT, blob = CL_BUF_INIT;
    int status = 0, rc;
    if (!strcmp(a->op, "encrypt")) {
        if ((status = read_input(a->in, &in)))
            goto out;
        if ((rc = cl_kms_encrypt(s->kms, &o, in.data, in.len, &blob)) < 0) {
            status = failed(s, "encrypt", rc);
            goto out;
        }
        status = a->out ? write_output(a->out, blob.data, blob.len, false)
                        : write_base64_line(NULL, blob.data, blob.len, false);
    } else if (!strcmp(a->op, "decrypt")) {
        cl_buf raw = CL_BUF_INIT;
        if ((status = read_input(a->in, &raw)))
            goto out;
        rc = cl_decode_binary_or_base64(raw.data, raw.len, &in);
        cl_buf_free(&raw);
        if (rc < 0) {
            fprintf(stderr, "cloister kms: decrypt: the input is neither raw bytes nor base64: %s\n",
                    cl_error_message());
            status = EXIT_FAILED;
            goto out;
        }
        if ((rc = cl_kms_decrypt(s->kms, &o, in.data, in.len, &pt)) < 0) {
            status = failed(s, "decrypt", rc);
            goto out;
        }
        status = a->base64 ? write_base64_line(a->out, pt.data, pt.len, true)
                           : write_output(a->out, pt.data, pt.len, true);
    } else if (!strcmp(a->op, "generate-data-key")) {
        if ((rc = cl_kms_generate_data_key(s->kms, &o, &pt, &blob)) < 0) {
            status = failed(s, "generate-data-key", rc);
            goto out;
        }
        cl_buf p64 = CL_BUF_INIT, c64 = CL_BUF_INIT;
        rc = cl_base64_encode(pt.data, pt.len, &p64);
        if (rc == CL_OK)
            rc = cl_base64_encode(blob.data, blob.len, &c64);
        json_t *obj = rc == CL_OK ? json_pack("{s:s, s:s, s:s}", "KeyId", cl_kms_key_id(s->kms), "CiphertextBlob",
                                              (const char *)c64.data, "Plaintext", (const char *)p64.data)
                                  : NULL;
        char *text = obj ? json_dumps(obj, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
        json_t *ptv = obj ? json_object_get(obj, "Plaintext") : NULL;
        if (ptv)
            cl_wipe((void *)json_string_value(ptv), json_string_length(ptv));
        json_decref(obj);
        cl_buf_free(&p64);
        cl_buf_free(&c64);
        if (!text) {
            fprintf(stderr, "cloister kms: out of memory\n");
            status = EXIT_FAILED;
            goto out;
        }
        size_t n = strlen(text);
        text[n] = '\n'; /* replaces the NUL; written with its length */
        status = write_output(a->out, (const uint8_t *)text, n + 1, true);
        cl_wipe(text, n + 1);
        free(text);
    } else {
        if ((rc = cl_kms_generate_random(s->kms, a->bytes, &pt)) < 0) {
            status = failed(s, "generate-random", rc);
            goto out;
        }
        status = a->base64 ? write_base64_line(a->out, pt.data, pt.len, false)
                           : write_output(a->out, pt.data, pt.len, false);
    }
out:
    cl_buf_free(&in);
    cl_buf_free(&pt);
    cl_buf_free(&blob);
    return status;
}

/* The credentials are wiped before the layer frees its copies. */
static void options_free(const cl_options *spec, kms_options *o)
{
    char *secrets[] = {o->secret_access_key, o->session_token};
    for (size_t i = 0; i < sizeof secrets / sizeof secrets[0]; i++)
        if (secrets[i])
            cl_wipe(secrets[i], strlen(secrets[i]));
    cl_options_free(spec, NULL);
}

int cmd_kms(int argc, char **argv)
{
    kms_options o = {0};
    cl_opt_section section = CL_OPT_SECTION("options", kms_option_table, &o);
    cl_options spec = {.prog = "cloister kms", .usage = usage_text, .epilog = epilog,
                       .positional = "OPERATION", .sections = &section, .section_count = 1};
    args a;
    int status = parse_args(argc, argv, &spec, &o, &a);
    if (status) {
        options_free(&spec, &o);
        return status < 0 ? 0 : status;
    }
    cl_kms_session s;
    int rc = cl_kms_session_open(&a.setup, &s);
    if (rc < 0) {
        fprintf(stderr, "cloister kms: %s\n", cl_error_message());
        options_free(&spec, &o);
        return rc == CL_EINVAL ? EXIT_USAGE : EXIT_FAILED;
    }
    status = run(&a, &s);
    if (a.stats)
        print_stats(&s);
    cl_kms_session_close(&s);
    options_free(&spec, &o);
    return status;
}

/* cloister kms: KMS calls for scripts inside the enclave (with a Recipient:
 * plaintexts never leave the enclave in the clear) and for operators
 * outside it. */
#include "cloister/core/encoding.h"
#include "cloister/enclave/kms.h"
#include "commands.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_CONTEXT 64
#define KMS_INPUT_MAX (64 * 1024)

static void usage(FILE *out)
{
    fprintf(out,
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
            "\n"
            "options:\n"
            "  --region R               the region (else $AWS_REGION, $AWS_DEFAULT_REGION, or IMDS's)\n"
            "  --endpoint URL           https://HOST[:PORT] (https://kms.REGION.amazonaws.com)\n"
            "  --proxy ADDR             dial ADDR instead of HOST: the host's outbound proxy, e.g.\n"
            "                           vsock:3:8000 (cloister host --outbound, vsock-proxy) or unix:PATH;\n"
            "                           TLS stays end to end, checked for HOST\n"
            "  --ca-file PEM            trust these CAs instead of the system's store (local KMS)\n"
            "  --imds ADDR              credentials from IMDSv2 at ADDR (cloister host --imds, e.g.\n"
            "                           vsock:3:8002 or unix:PATH), refreshed before they expire\n"
            "  --role NAME              the instance profile's role (default: the one IMDS names)\n"
            "  --access-key-id ID       explicit credentials (else --imds, else $AWS_ACCESS_KEY_ID,\n"
            "  --secret-access-key KEY  $AWS_SECRET_ACCESS_KEY, $AWS_SESSION_TOKEN)\n"
            "  --session-token TOKEN\n"
            "  --recipient              the Recipient forms (attestation document from the NSM)\n"
            "  --nsm ADDR               the NSM for --recipient (implies it): unix:PATH of nsm-sim or\n"
            "                           /dev/nsm (default $" CL_NSM_ENV ", else /dev/nsm)\n"
            "  --key-id ID              key id, ARN or alias/NAME\n"
            "  --context K=V            encryption context entry (repeatable)\n"
            "  --encryption-algorithm A (SYMMETRIC_DEFAULT)\n"
            "  --max-attempts N         tries per call, retrying throttling and 5xx with backoff (5)\n"
            "  --timeout SECONDS        per attempt (10)\n"
            "  --stats                  print where the time went on stderr\n"
            "\n"
            "Exit status: 0 done, 1 KMS refused (AccessDenied, InvalidCiphertext, NotFound, ...),\n"
            "2 bad command line, 3 could not do the call (network, credentials, NSM, bad answer).\n");
}

typedef struct args {
    cl_kms_setup setup;
    const char *op, *in, *out, *key_spec, *algorithm, *key_id;
    unsigned bytes;
    bool base64, stats;
    cl_kms_context_entry context[MAX_CONTEXT];
    size_t context_count;
} args;

enum {
    O_REGION = 256, O_ENDPOINT, O_PROXY, O_CA, O_IMDS, O_ROLE, O_AKID, O_SECRET, O_TOKEN, O_RECIPIENT, O_NSM,
    O_KEY_ID, O_CONTEXT, O_ALG, O_ATTEMPTS, O_TIMEOUT, O_STATS, O_IN, O_KEY_SPEC, O_BYTES, O_BASE64
};

static const struct option long_options[] = {
    {"region", required_argument, NULL, O_REGION},
    {"endpoint", required_argument, NULL, O_ENDPOINT},
    {"proxy", required_argument, NULL, O_PROXY},
    {"ca-file", required_argument, NULL, O_CA},
    {"imds", required_argument, NULL, O_IMDS},
    {"role", required_argument, NULL, O_ROLE},
    {"access-key-id", required_argument, NULL, O_AKID},
    {"secret-access-key", required_argument, NULL, O_SECRET},
    {"session-token", required_argument, NULL, O_TOKEN},
    {"recipient", no_argument, NULL, O_RECIPIENT},
    {"nsm", required_argument, NULL, O_NSM},
    {"key-id", required_argument, NULL, O_KEY_ID},
    {"context", required_argument, NULL, O_CONTEXT},
    {"encryption-algorithm", required_argument, NULL, O_ALG},
    {"max-attempts", required_argument, NULL, O_ATTEMPTS},
    {"timeout", required_argument, NULL, O_TIMEOUT},
    {"stats", no_argument, NULL, O_STATS},
    {"in", required_argument, NULL, O_IN},
    {"key-spec", required_argument, NULL, O_KEY_SPEC},
    {"bytes", required_argument, NULL, O_BYTES},
    {"base64", no_argument, NULL, O_BASE64},
    {"output", required_argument, NULL, 'o'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static int bad(const char *fmt, const char *arg)
{
    fprintf(stderr, "cloister kms: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (see --help)\n");
    return EXIT_USAGE;
}

static int number(const char *text, uint64_t max, const char *what, unsigned *out)
{
    uint64_t v;
    if (cl_parse_u64(text, max, &v) < 0 || v == 0) {
        fprintf(stderr, "cloister kms: %s: expected 1..%llu, got '%s'\n", what, (unsigned long long)max, text);
        return EXIT_USAGE;
    }
    *out = (unsigned)v;
    return 0;
}

/* Returns 0, EXIT_USAGE, or -1 for --help. */
static int parse_args(int argc, char **argv, args *a)
{
    memset(a, 0, sizeof *a);
    int c, rc;
    unsigned timeout_s = 0;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":ho:", long_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            usage(stdout);
            return -1;
        case 'o': a->out = optarg; break;
        case O_REGION: a->setup.region = optarg; break;
        case O_ENDPOINT: a->setup.endpoint = optarg; break;
        case O_PROXY: a->setup.proxy = optarg; break;
        case O_CA: a->setup.ca_file = optarg; break;
        case O_IMDS: a->setup.imds = optarg; break;
        case O_ROLE: a->setup.role = optarg; break;
        case O_AKID: a->setup.access_key_id = optarg; break;
        case O_SECRET: a->setup.secret_access_key = optarg; break;
        case O_TOKEN: a->setup.session_token = optarg; break;
        case O_RECIPIENT: a->setup.recipient = true; break;
        case O_NSM:
            a->setup.nsm = optarg;
            a->setup.recipient = true;
            break;
        case O_KEY_ID: a->key_id = optarg; break;
        case O_ALG: a->algorithm = optarg; break;
        case O_IN: a->in = optarg; break;
        case O_KEY_SPEC: a->key_spec = optarg; break;
        case O_BASE64: a->base64 = true; break;
        case O_STATS: a->stats = true; break;
        case O_CONTEXT: {
            char *eq = strchr(optarg, '=');
            if (!eq || eq == optarg)
                return bad("--context '%s': expected KEY=VALUE", optarg);
            if (a->context_count == MAX_CONTEXT)
                return bad("more than %s --context entries", "64");
            *eq = '\0';
            a->context[a->context_count++] = (cl_kms_context_entry){optarg, eq + 1};
            break;
        }
        case O_ATTEMPTS:
            if ((rc = number(optarg, 20, "--max-attempts", &a->setup.max_attempts)))
                return rc;
            break;
        case O_TIMEOUT:
            if ((rc = number(optarg, 3600, "--timeout", &timeout_s)))
                return rc;
            a->setup.timeout_ms = timeout_s * 1000u;
            break;
        case O_BYTES:
            if ((rc = number(optarg, 1024, "--bytes", &a->bytes)))
                return rc;
            break;
        case ':':
            return bad("%s needs a value", argv[optind - 1]);
        default:
            return bad("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind >= argc)
        return bad("%s", "which operation? encrypt, decrypt, generate-data-key or generate-random");
    a->op = argv[optind];
    if (optind + 1 < argc)
        return bad("unexpected argument '%s'", argv[optind + 1]);
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

int cmd_kms(int argc, char **argv)
{
    args a;
    int status = parse_args(argc, argv, &a);
    if (status)
        return status < 0 ? 0 : status;
    cl_kms_session s;
    int rc = cl_kms_session_open(&a.setup, &s);
    if (rc < 0) {
        fprintf(stderr, "cloister kms: %s\n", cl_error_message());
        return rc == CL_EINVAL ? EXIT_USAGE : EXIT_FAILED;
    }
    status = run(&a, &s);
    if (a.stats)
        print_stats(&s);
    cl_kms_session_close(&s);
    return status;
}

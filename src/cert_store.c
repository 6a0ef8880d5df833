/* cloister cert-store: the ACME store (cloister/enclave/cert_store.h) from
 * the command line: put and read records, take and give up the lease.  Run
 * inside the enclave (KMS with a Recipient, IMDS credentials, the outbound
 * proxy, the host's file store) and in tests. */
#include "cloister/core/encoding.h"
#include "cloister/core/options.h"
#include "cloister/core/secret_file.h"
#include "cloister/enclave/cert_store.h"
#include "cloister/enclave/dynamodb.h"
#include "cloister/enclave/kms.h"
#include "commands.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage_text[] =
    "usage: cloister cert-store [OPTIONS] put --name N --account-key PEM [--cert-key PEM --chain PEM]\n"
    "                                         [--metadata JSON]\n"
    "       cloister cert-store [OPTIONS] get --name N [--chain-out FILE]\n"
    "       cloister cert-store [OPTIONS] delete --name N\n"
    "       cloister cert-store [OPTIONS] lease-acquire|lease-renew --name N --owner O [--ttl 60s]\n"
    "       cloister cert-store [OPTIONS] lease-release --name N --owner O\n"
    "\n"
    "The ACME store: records {account key, certificate key, chain, metadata} in\n"
    "--store dynamodb:TABLE or file:DIR (through `cloister host file-store`), the keys only\n"
    "as KMS ciphertexts bound to the record (docs/acme-store.md).  get verifies the record\n"
    "(KMS opens the keys only for the chain and metadata they were stored with; the leaf\n"
    "must hold the certificate key) and prints its metadata and what it holds, never a key.\n"
    "\n";

static const char epilog[] =
    "Exit status: 0 done, 1 refused (no such record, a record that does not verify, a lease\n"
    "another owner holds, access denied), 2 bad command line, 3 could not do it.\n";

typedef struct cs_options {
    char *store, *name, *owner, *account_key, *cert_key, *chain, *metadata, *chain_out;
    char *region, *imds, *role, *access_key_id, *secret_access_key, *ca_file, *nsm;
    char *kms_endpoint, *kms_proxy, *key_id, *ddb_endpoint, *ddb_proxy, *file_store;
    bool allow_http;
    unsigned ttl_ms, max_attempts;
} cs_options;

#define O cs_options
static const cl_opt cs_table[] = {
    {.name = "store", CL_OPT_STR(O, store), .flags = CL_OPT_REQUIRED, .arg = "SPEC",
     .help = "dynamodb:TABLE or file:DIR"},
    {.name = "name", CL_OPT_STR(O, name), .arg = "N", .help = "the record's (or lease's) name"},
    {.name = "owner", CL_OPT_STR(O, owner), .arg = "O", .help = "lease-*: who takes the lease"},
    {.name = "ttl", CL_OPT_DURATION_AT(O, ttl_ms, 1, 1, 86400000), .def = "60s", .arg = "D",
     .help = "lease-acquire, lease-renew: how long the lease lasts"},
    {.name = "account-key", CL_OPT_STR(O, account_key), .arg = "PEM", .help = "put: the ACME account's private key"},
    {.name = "cert-key", CL_OPT_STR(O, cert_key), .arg = "PEM", .help = "put: the certificate's private key"},
    {.name = "chain", CL_OPT_STR(O, chain), .arg = "PEM", .help = "put: the certificate chain, leaf first"},
    {.name = "metadata", CL_OPT_STR(O, metadata), .arg = "JSON", .help = "put: a JSON object"},
    {.name = "chain-out", CL_OPT_STR(O, chain_out), .arg = "FILE", .help = "get: write the verified chain here"},
    {.name = "key-id", CL_OPT_STR(O, key_id), .arg = "ID", .help = "the KMS key the keys are sealed under"},
    {.name = "region", CL_OPT_STR(O, region), .arg = "R", .help = "the region (else the environment's or IMDS's)"},
    {.name = "imds", CL_OPT_STR(O, imds), .arg = "ADDR", .help = "credentials from IMDSv2 at ADDR"},
    {.name = "role", CL_OPT_STR(O, role), .arg = "NAME", .help = "the instance profile's role"},
    {.name = "access-key-id", CL_OPT_STR(O, access_key_id), .arg = "ID", .help = "explicit credentials"},
    {.name = "secret-access-key", CL_OPT_STR(O, secret_access_key), .arg = "KEY", .help = "with --access-key-id"},
    {.name = "ca-file", CL_OPT_STR(O, ca_file), .arg = "PEM", .help = "CAs for KMS and DynamoDB (local stand-ins)"},
    {.name = "nsm", CL_OPT_STR(O, nsm), .arg = "ADDR",
     .help = "open keys with a Recipient from this NSM (inside the enclave: /dev/nsm)"},
    {.name = "kms-endpoint", CL_OPT_STR(O, kms_endpoint), .arg = "URL", .help = "https://HOST[:PORT] of KMS"},
    {.name = "kms-proxy", CL_OPT_STR(O, kms_proxy), .arg = "ADDR", .help = "the outbound proxy to KMS"},
    {.name = "dynamodb-endpoint", CL_OPT_STR(O, ddb_endpoint), .arg = "URL", .help = "https://HOST[:PORT] of DynamoDB"},
    {.name = "dynamodb-proxy", CL_OPT_STR(O, ddb_proxy), .arg = "ADDR", .help = "the outbound proxy to DynamoDB"},
    {.name = "allow-http", CL_OPT_FLAG(O, allow_http), .help = "accept an http:// DynamoDB endpoint (dynalite)"},
    {.name = "file-store", CL_OPT_STR(O, file_store), .arg = "ADDR",
     .help = "file: the host's file store (" CL_CERT_STORE_FILE_DEFAULT ")"},
    {.name = "max-attempts", CL_OPT_UINT_AT(O, max_attempts, 1, 20), .arg = "N", .help = "tries per call (5)"},
};
#undef O

static int usage_error(const char *msg)
{
    fprintf(stderr, "cloister cert-store: %s (see --help)\n", msg);
    return EXIT_USAGE;
}

static int refused_or_failed(const char *op, int rc)
{
    fprintf(stderr, "cloister cert-store: %s: %s\n", op, cl_error_message());
    return rc == CL_ENOTFOUND || rc == CL_EVERIFY || rc == CL_EPARSE || rc == CL_ECONFLICT || rc == CL_EDENIED
               ? EXIT_REJECTED
               : EXIT_FAILED;
}

static int read_in(const char *path, bool secret, cl_buf *out)
{
    int rc = secret ? cl_read_secret_file(path, 8192, out) : cl_read_file(path, CL_CERT_STORE_CHAIN_MAX, out);
    if (rc < 0)
        fprintf(stderr, "cloister cert-store: %s: %s\n", path, cl_error_message());
    return rc < 0 ? EXIT_FAILED : 0;
}

static int do_put(cl_cert_store *st, const cs_options *o)
{
    cl_cert_record r = {0};
    int status = read_in(o->account_key, true, &r.account_key);
    if (!status && o->cert_key)
        status = read_in(o->cert_key, true, &r.cert_key);
    if (!status && o->chain)
        status = read_in(o->chain, false, &r.chain_pem);
    if (!status && o->metadata && cl_buf_append(&r.metadata, o->metadata, strlen(o->metadata)) < 0)
        status = EXIT_FAILED;
    if (!status) {
        int rc = cl_cert_store_put(st, o->name, &r);
        status = rc < 0 ? refused_or_failed("put", rc) : 0;
    }
    cl_cert_record_free(&r);
    return status;
}

static int do_get(cl_cert_store *st, const cs_options *o)
{
    cl_cert_record r = {0};
    int rc = cl_cert_store_get(st, o->name, &r);
    if (rc < 0)
        return refused_or_failed("get", rc);
    json_error_t e;
    json_t *meta = r.metadata.len ? json_loadb((const char *)r.metadata.data, r.metadata.len, 0, &e) : json_object();
    json_t *out = json_pack("{sssosbsbsisI}", "name", o->name, "metadata", meta ? meta : json_object(),
                            "account_key", r.account_key.len > 0, "cert_key", r.cert_key.len > 0, "chain_bytes",
                            (int)r.chain_pem.len, "updated_ms", (json_int_t)r.updated_ms);
    char *t = out ? json_dumps(out, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(out);
    int status = t ? 0 : EXIT_FAILED;
    if (t)
        printf("%s\n", t);
    free(t);
    if (!status && o->chain_out) {
        FILE *f = fopen(o->chain_out, "w");
        if (!f || fwrite(r.chain_pem.data, 1, r.chain_pem.len, f) != r.chain_pem.len) {
            fprintf(stderr, "cloister cert-store: cannot write %s\n", o->chain_out);
            status = EXIT_FAILED;
        }
        if (f && fclose(f) != 0)
            status = EXIT_FAILED;
    }
    cl_cert_record_free(&r);
    return status;
}

static int do_lease(cl_cert_store *st, const char *op, const cs_options *o)
{
    cl_cert_lease held;
    int rc;
    if (!strcmp(op, "lease-release"))
        rc = cl_cert_store_lease_release(st, o->name, o->owner);
    else if (!strcmp(op, "lease-renew"))
        rc = cl_cert_store_lease_renew(st, o->name, o->owner, o->ttl_ms, &held);
    else
        rc = cl_cert_store_lease_acquire(st, o->name, o->owner, o->ttl_ms, &held);
    if (rc < 0)
        return refused_or_failed(op, rc);
    if (strcmp(op, "lease-release"))
        printf("lease %s held by %s until %lld\n", o->name, held.owner, (long long)held.expires_ms);
    else
        printf("lease %s released\n", o->name);
    return 0;
}

static int check(const char *op, const cs_options *o)
{
    static const char *const ops[] = {"put", "get", "delete", "lease-acquire", "lease-renew", "lease-release"};
    bool known = false;
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        known |= !strcmp(op, ops[i]);
    if (!known)
        return usage_error("unknown operation (put, get, delete, lease-acquire, lease-renew, lease-release)");
    if (!o->name)
        return usage_error("--name is required");
    if (!strncmp(op, "lease-", 6) && !o->owner)
        return usage_error("a lease operation needs --owner");
    if (!strcmp(op, "put") && !o->account_key)
        return usage_error("put needs --account-key");
    if (!o->key_id)
        return usage_error("--key-id is required (the KMS key of the record's ciphertexts)");
    return 0;
}

int cmd_cert_store(int argc, char **argv)
{
    cs_options o = {0};
    cl_opt_section section = CL_OPT_SECTION("options", cs_table, &o);
    cl_options spec = {.prog = "cloister cert-store", .usage = usage_text, .epilog = epilog,
                       .positional = "OPERATION", .sections = &section, .section_count = 1};
    cl_options_result r;
    int rc = cl_options_main(&spec, argc, argv, &r);
    char op[32] = "";
    if (r.positional_count == 1)
        snprintf(op, sizeof op, "%s", r.positional[0]);
    cl_options_free(NULL, &r);
    cl_kms_session s = {0};
    cl_dynamodb *d = NULL;
    cl_cert_store *st = NULL;
    int status = 0;
    if (rc != 0) {
        status = rc > 0 ? 0 : EXIT_USAGE;
        goto out;
    }
    if (!op[0]) {
        status = usage_error("one operation: put, get, delete, lease-acquire, lease-renew or lease-release");
        goto out;
    }
    if ((status = check(op, &o)))
        goto out;
    cl_kms_setup ks = {.region = o.region, .endpoint = o.kms_endpoint, .proxy = o.kms_proxy, .ca_file = o.ca_file,
                       .access_key_id = o.access_key_id, .secret_access_key = o.secret_access_key,
                       .imds = o.imds, .role = o.role, .recipient = o.nsm != NULL, .nsm = o.nsm,
                       .max_attempts = o.max_attempts};
    if ((rc = cl_kms_session_open(&ks, &s)) < 0) {
        fprintf(stderr, "cloister cert-store: %s\n", cl_error_message());
        status = rc == CL_EINVAL ? EXIT_USAGE : EXIT_FAILED;
        goto out;
    }
    if (!strncmp(o.store, "dynamodb:", 9)) {
        cl_dynamodb_config dc = {.region = s.region, .endpoint = o.ddb_endpoint, .allow_http = o.allow_http,
                                 .connect = o.ddb_proxy, .ca_file = o.ca_file, .credentials = s.credentials,
                                 .max_attempts = o.max_attempts};
        if ((rc = cl_dynamodb_new(&dc, &d)) < 0) {
            fprintf(stderr, "cloister cert-store: %s\n", cl_error_message());
            status = EXIT_USAGE;
            goto out;
        }
    }
    cl_cert_store_config cc = {.spec = o.store, .file_address = o.file_store, .dynamodb = d, .kms = s.kms,
                               .kms_key_id = o.key_id};
    if ((rc = cl_cert_store_open(&cc, &st)) < 0) {
        fprintf(stderr, "cloister cert-store: %s\n", cl_error_message());
        status = rc == CL_EINVAL ? EXIT_USAGE : EXIT_FAILED;
        goto out;
    }
    if (!strcmp(op, "put"))
        status = do_put(st, &o);
    else if (!strcmp(op, "get"))
        status = do_get(st, &o);
    else if (!strcmp(op, "delete"))
        status = (rc = cl_cert_store_delete(st, o.name)) < 0 ? refused_or_failed("delete", rc) : 0;
    else
        status = do_lease(st, op, &o);
out:
    cl_cert_store_free(st);
    cl_dynamodb_free(d);
    if (s.kms)
        cl_kms_session_close(&s);
    if (o.secret_access_key)
        cl_wipe(o.secret_access_key, strlen(o.secret_access_key));
    cl_options_free(&spec, NULL);
    return status;
}

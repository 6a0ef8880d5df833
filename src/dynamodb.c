/* cloister dynamodb: DynamoDB calls through the library's client, for
 * scripts inside the enclave (IMDS credentials, the outbound proxy) and for
 * tests and operators outside it. */
#include "cloister/core/options.h"
#include "cloister/enclave/dynamodb.h"
#include "cloister/enclave/kms.h"
#include "commands.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage_text[] =
    "usage: cloister dynamodb [OPTIONS] get    --table T --key JSON [--consistent-read]\n"
    "       cloister dynamodb [OPTIONS] put    --table T --item JSON [--condition EXPR ...]\n"
    "       cloister dynamodb [OPTIONS] update --table T --key JSON --update EXPR [--condition EXPR ...]\n"
    "       cloister dynamodb [OPTIONS] delete --table T --key JSON [--condition EXPR ...]\n"
    "       cloister dynamodb [OPTIONS] create-table --table T [--partition-key NAME]\n"
    "       cloister dynamodb [OPTIONS] describe-table --table T\n"
    "\n"
    "Amazon DynamoDB over its JSON 1.0 protocol, signed with SigV4 (the same credentials,\n"
    "region and proxy options as cloister kms).  Keys and items are DynamoDB's attribute-value\n"
    "JSON, e.g. --key '{\"pk\": {\"S\": \"a\"}}'; get prints the item (or nothing, exit 1, when\n"
    "there is none), update/put/delete print the new/old attributes with --return-values.\n"
    "\n";

static const char epilog[] =
    "Exit status: 0 done, 1 DynamoDB said no (condition failed, no such item or table, access\n"
    "denied), 2 bad command line, 3 could not do the call (network, throttled, bad answer).\n";

typedef struct ddb_options {
    char *region, *endpoint, *proxy, *ca_file, *imds, *role, *access_key_id, *secret_access_key, *session_token;
    char *table, *key, *item, *condition, *update, *names, *values, *partition_key;
    bool consistent_read, return_values, allow_http;
    unsigned max_attempts, timeout_s;
} ddb_options;

#define D ddb_options
static const cl_opt ddb_option_table[] = {
    {.name = "region", CL_OPT_STR(D, region), .arg = "R",
     .help = "the region (else $AWS_REGION, $AWS_DEFAULT_REGION, or IMDS's)"},
    {.name = "endpoint", CL_OPT_STR(D, endpoint), .arg = "URL",
     .help = "https://HOST[:PORT] (https://dynamodb.REGION.amazonaws.com)"},
    {.name = "allow-http", CL_OPT_FLAG(D, allow_http),
     .help = "accept an http:// endpoint (a local dynalite): whoever relays it reads and rewrites everything"},
    {.name = "proxy", CL_OPT_STR(D, proxy), .arg = "ADDR",
     .help = "dial ADDR instead of HOST: the host's outbound proxy (vsock:3:PORT, unix:PATH, tcp:H:P); TLS stays "
             "end to end"},
    {.name = "ca-file", CL_OPT_STR(D, ca_file), .arg = "PEM", .help = "trust these CAs instead of the system's"},
    {.name = "imds", CL_OPT_STR(D, imds), .arg = "ADDR", .help = "credentials from IMDSv2 at ADDR (cloister host --imds)"},
    {.name = "role", CL_OPT_STR(D, role), .arg = "NAME", .help = "the instance profile's role"},
    {.name = "access-key-id", CL_OPT_STR(D, access_key_id), .arg = "ID",
     .help = "explicit credentials (else --imds, else the environment's)"},
    {.name = "secret-access-key", CL_OPT_STR(D, secret_access_key), .arg = "KEY", .help = "with --access-key-id"},
    {.name = "session-token", CL_OPT_STR(D, session_token), .arg = "TOKEN", .help = "with --access-key-id"},
    {.name = "max-attempts", CL_OPT_UINT_AT(D, max_attempts, 1, 20), .arg = "N",
     .help = "tries per call, retrying throttling and 5xx with backoff (5)"},
    {.name = "timeout", CL_OPT_DURATION_AT(D, timeout_s, 1000, 1, 3600), .arg = "SECONDS", .help = "per attempt (10)"},
    {.name = "table", CL_OPT_STR(D, table), .arg = "T", .help = "the table"},
    {.name = "key", CL_OPT_STR(D, key), .arg = "JSON", .help = "get, update, delete: the item's key"},
    {.name = "item", CL_OPT_STR(D, item), .arg = "JSON", .help = "put: the item"},
    {.name = "condition", CL_OPT_STR(D, condition), .arg = "EXPR", .help = "ConditionExpression"},
    {.name = "update", CL_OPT_STR(D, update), .arg = "EXPR", .help = "update: UpdateExpression"},
    {.name = "names", CL_OPT_STR(D, names), .arg = "JSON", .help = "ExpressionAttributeNames {\"#n\": \"name\"}"},
    {.name = "values", CL_OPT_STR(D, values), .arg = "JSON",
     .help = "ExpressionAttributeValues {\":v\": {\"S\": \"x\"}}"},
    {.name = "consistent-read", CL_OPT_FLAG(D, consistent_read), .help = "get: a strongly consistent read"},
    {.name = "return-values", CL_OPT_FLAG(D, return_values),
     .help = "put, delete: print the old attributes; update: the new ones"},
    {.name = "partition-key", CL_OPT_STR(D, partition_key), .def = "pk", .arg = "NAME",
     .help = "create-table: the string partition key's name"},
};
#undef D

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "cloister dynamodb: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (see --help)\n");
    return EXIT_USAGE;
}

static int parse_json(const char *flag, const char *text, json_t **out)
{
    *out = NULL;
    if (!text)
        return 0;
    json_error_t e;
    *out = json_loads(text, JSON_REJECT_DUPLICATES, &e);
    if (!json_is_object(*out)) {
        json_decref(*out);
        *out = NULL;
        fprintf(stderr, "cloister dynamodb: %s: not a JSON object%s%s (see --help)\n", flag, e.text[0] ? ": " : "",
                e.text);
        return EXIT_USAGE;
    }
    return 0;
}

static int print_json(const json_t *v)
{
    if (!v)
        return 0;
    char *t = json_dumps(v, JSON_SORT_KEYS | JSON_COMPACT);
    if (!t) {
        fprintf(stderr, "cloister dynamodb: out of memory\n");
        return EXIT_FAILED;
    }
    printf("%s\n", t);
    free(t);
    return 0;
}

static int failed(cl_dynamodb *d, const char *op, int rc)
{
    fprintf(stderr, "cloister dynamodb: %s: %s\n", op, cl_error_message());
    const char *type = cl_dynamodb_error_type(d);
    if (type[0])
        fprintf(stderr, "cloister dynamodb: error type %s\n", type);
    return rc == CL_ECONFLICT || rc == CL_ENOTFOUND || rc == CL_EDENIED || rc == CL_EINVAL ? EXIT_REJECTED
                                                                                          : EXIT_FAILED;
}

static int run(cl_dynamodb *d, const char *op, const ddb_options *o, json_t *key, json_t *item, json_t *names,
               json_t *values)
{
    cl_dynamodb_options opt = {.condition = o->condition, .update = o->update, .names = names, .values = values,
                               .consistent_read = o->consistent_read, .return_values = o->return_values};
    json_t *out = NULL;
    int rc, status = 0;
    if (!strcmp(op, "get")) {
        rc = cl_dynamodb_get_item(d, o->table, key, &opt, &out);
        if (rc == CL_OK && !out) {
            fprintf(stderr, "cloister dynamodb: get: no such item\n");
            return EXIT_REJECTED;
        }
    } else if (!strcmp(op, "put")) {
        rc = cl_dynamodb_put_item(d, o->table, item, &opt, &out);
    } else if (!strcmp(op, "update")) {
        rc = cl_dynamodb_update_item(d, o->table, key, &opt, &out);
    } else if (!strcmp(op, "delete")) {
        rc = cl_dynamodb_delete_item(d, o->table, key, &opt, &out);
    } else if (!strcmp(op, "create-table")) {
        rc = cl_dynamodb_create_table(d, o->table, o->partition_key);
        if (rc == CL_OK)
            rc = cl_dynamodb_wait_active(d, o->table, 30000);
    } else {
        char st[32];
        rc = cl_dynamodb_describe_table(d, o->table, st, sizeof st);
        if (rc == CL_OK)
            printf("%s\n", st);
    }
    if (rc < 0)
        return failed(d, op, rc);
    status = print_json(out);
    json_decref(out);
    return status;
}

static int check_args(const char *op, const ddb_options *o)
{
    static const char *const ops[] = {"get", "put", "update", "delete", "create-table", "describe-table"};
    bool known = false;
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        known |= !strcmp(op, ops[i]);
    if (!known)
        return usage_error("unknown operation '%s'", op);
    if (!o->table)
        return usage_error("%s needs --table", op);
    bool keyed = !strcmp(op, "get") || !strcmp(op, "update") || !strcmp(op, "delete");
    if (keyed && !o->key)
        return usage_error("%s needs --key JSON", op);
    if (!keyed && o->key)
        return usage_error("%s takes no --key", op);
    if (!strcmp(op, "put") != !!o->item)
        return usage_error("--item goes with put (and put needs it): %s", op);
    if (!strcmp(op, "update") != !!o->update)
        return usage_error("--update goes with update (and update needs it): %s", op);
    if (o->condition && (!strcmp(op, "get") || strstr(op, "table")))
        return usage_error("%s takes no --condition", op);
    if (!!o->access_key_id != !!o->secret_access_key)
        return usage_error("%s", "--access-key-id and --secret-access-key go together");
    return 0;
}

static void options_free(const cl_options *spec, ddb_options *o)
{
    char *secrets[] = {o->secret_access_key, o->session_token};
    for (size_t i = 0; i < sizeof secrets / sizeof secrets[0]; i++)
        if (secrets[i])
            cl_wipe(secrets[i], strlen(secrets[i]));
    cl_options_free(spec, NULL);
}

int cmd_dynamodb(int argc, char **argv)
{
    ddb_options o = {0};
    cl_opt_section section = CL_OPT_SECTION("options", ddb_option_table, &o);
    cl_options spec = {.prog = "cloister dynamodb", .usage = usage_text, .epilog = epilog,
                       .positional = "OPERATION", .sections = &section, .section_count = 1};
    cl_options_result r;
    int rc = cl_options_main(&spec, argc, argv, &r);
    char op[32] = "";
    bool extra = r.positional_count > 1;
    if (r.positional_count > 0)
        snprintf(op, sizeof op, "%s", r.positional[0]);
    cl_options_free(NULL, &r);
    json_t *key = NULL, *item = NULL, *names = NULL, *values = NULL;
    cl_kms_session s = {0};
    cl_dynamodb *d = NULL;
    int status = 0;
    if (rc != 0) {
        status = rc > 0 ? 0 : EXIT_USAGE;
        goto out;
    }
    if (!op[0]) {
        status = usage_error("%s", "which operation? get, put, update, delete, create-table or describe-table");
        goto out;
    }
    if (extra) {
        status = usage_error("%s", "one operation at a time");
        goto out;
    }
    if ((status = check_args(op, &o)) || (status = parse_json("--key", o.key, &key)) ||
        (status = parse_json("--item", o.item, &item)) || (status = parse_json("--names", o.names, &names)) ||
        (status = parse_json("--values", o.values, &values)))
        goto out;
    /* the KMS set-up's credential and region rules, without KMS calls */
    cl_kms_setup setup = {.region = o.region, .imds = o.imds, .role = o.role, .access_key_id = o.access_key_id,
                          .secret_access_key = o.secret_access_key, .session_token = o.session_token};
    rc = cl_kms_session_open(&setup, &s);
    if (rc < 0) {
        fprintf(stderr, "cloister dynamodb: %s\n", cl_error_message());
        status = rc == CL_EINVAL ? EXIT_USAGE : EXIT_FAILED;
        goto out;
    }
    cl_dynamodb_config cfg = {.region = s.region, .endpoint = o.endpoint, .allow_http = o.allow_http,
                              .connect = o.proxy, .ca_file = o.ca_file, .credentials = s.credentials,
                              .max_attempts = o.max_attempts, .timeout_ms = o.timeout_s * 1000u};
    rc = cl_dynamodb_new(&cfg, &d);
    if (rc < 0) {
        fprintf(stderr, "cloister dynamodb: %s\n", cl_error_message());
        status = rc == CL_EINVAL ? EXIT_USAGE : EXIT_FAILED;
        goto out;
    }
    status = run(d, op, &o, key, item, names, values);
out:
    cl_dynamodb_free(d);
    if (s.kms)
        cl_kms_session_close(&s);
    json_decref(key);
    json_decref(item);
    json_decref(names);
    json_decref(values);
    options_free(&spec, &o);
    return status;
}

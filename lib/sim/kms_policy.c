/* KMS key policies: validation when a policy is set, evaluation per request. */
#include "cloister/sim/kms_policy.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct cl_kms_policy {
    json_t *root;
    json_t *statements; /* borrowed from root: an array */
};

/* ---- matching helpers ---------------------------------------------------------------------- */

static char lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
}

/* Glob with '*' (any run) and '?' (one character). */
static bool glob_match(const char *pat, const char *s, bool nocase)
{
    const char *star = NULL, *resume = NULL;
    while (*s) {
        if (*pat == '*') {
            star = pat++;
            resume = s;
        } else if (*pat == '?' || (nocase ? lower(*pat) == lower(*s) : *pat == *s)) {
            if (!*pat)
                return false;
            pat++;
            s++;
        } else if (star) {
            pat = star + 1;
            s = ++resume;
        } else {
            return false;
        }
    }
    while (*pat == '*')
        pat++;
    return !*pat;
}

/* A string or an array of strings: calls each; true if any matched. */
typedef bool (*string_pred)(const char *value, const void *arg);

static bool any_string(json_t *v, string_pred pred, const void *arg)
{
    if (json_is_string(v))
        return pred(json_string_value(v), arg);
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e) if (pred(json_string_value(e), arg)) return true;
    return false;
}

static bool action_pred(const char *pattern, const void *arg)
{
    return glob_match(pattern, arg, true);
}

static bool resource_pred(const char *pattern, const void *arg)
{
    return glob_match(pattern, arg, false);
}

static bool principal_pred(const char *p, const void *arg)
{
    const cl_kms_policy_context *ctx = arg;
    if (!strcmp(p, "*"))
        return true;
    if (ctx->principal && !strcmp(p, ctx->principal))
        return true;
    if (!ctx->account)
        return false;
    char root[128];
    snprintf(root, sizeof root, "arn:aws:iam::%s:root", ctx->account);
    return !strcmp(p, ctx->account) || !strcmp(p, root);
}

/* ---- validation ---------------------------------------------------------------------------- */

static bool string_or_strings(json_t *v)
{
    if (json_is_string(v))
        return true;
    if (!json_is_array(v) || json_array_size(v) == 0)
        return false;
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e) if (!json_is_string(e)) return false;
    return true;
}

static const char *const operators[] = {"StringEquals",           "StringNotEquals", "StringEqualsIgnoreCase",
                                        "StringNotEqualsIgnoreCase", "StringLike",      "StringNotLike"};
#define OPERATOR_COUNT (sizeof operators / sizeof operators[0])

/* The operator's index in operators[] and whether it ends in IfExists;
 * false when the operator is not supported. */
static bool operator_index(const char *name, int *index, bool *if_exists)
{
    size_t n = strlen(name);
    *if_exists = n > 8 && !strcmp(name + n - 8, "IfExists");
    if (*if_exists)
        n -= 8;
    for (size_t i = 0; i < OPERATOR_COUNT; i++)
        if (strlen(operators[i]) == n && !strncmp(operators[i], name, n)) {
            *index = (int)i;
            return true;
        }
    return false;
}

static bool known_condition_key(const char *k)
{
    if (!strcasecmp(k, "kms:RecipientAttestation:ImageSha384") || !strcasecmp(k, "kms:CallerAccount") ||
        !strcasecmp(k, "aws:PrincipalArn"))
        return true;
    if (!strncasecmp(k, "kms:EncryptionContext:", 22) && k[22])
        return true;
    if (!strncasecmp(k, "kms:RecipientAttestation:PCR", 28)) {
        const char *d = k + 28;
        if (!d[0] || strlen(d) > 2 || (d[0] == '0' && d[1]))
            return false;
        int n = 0;
        for (; *d; d++) {
            if (*d < '0' || *d > '9')
                return false;
            n = n * 10 + (*d - '0');
        }
        return n < CL_KMS_PCR_COUNT;
    }
    return false;
}

static int validate_statement(json_t *st, size_t index)
{
    CL_ENSURE(json_is_object(st), CL_EPARSE, "Statement %zu is not an object", index);
    const char *key;
    json_t *v;
    json_object_foreach(st, key, v) {
        if (!strcmp(key, "Sid")) {
            CL_ENSURE(json_is_string(v), CL_EPARSE, "Statement %zu: Sid must be a string", index);
        } else if (!strcmp(key, "Effect")) {
            CL_ENSURE(json_is_string(v) && (!strcmp(json_string_value(v), "Allow") ||
                                            !strcmp(json_string_value(v), "Deny")),
                      CL_EPARSE, "Statement %zu: Effect must be \"Allow\" or \"Deny\"", index);
        } else if (!strcmp(key, "Principal")) {
            if (json_is_string(v)) {
                CL_ENSURE(!strcmp(json_string_value(v), "*"), CL_EPARSE,
                          "Statement %zu: Principal must be \"*\" or an object such as {\"AWS\": ARN}", index);
            } else {
                CL_ENSURE(json_is_object(v) && json_object_size(v) > 0, CL_EPARSE,
                          "Statement %zu: Principal must be \"*\" or an object such as {\"AWS\": ARN}", index);
                const char *pk;
                json_t *pv;
                json_object_foreach(v, pk, pv) {
                    CL_ENSURE(!strcmp(pk, "AWS") || !strcmp(pk, "Service"), CL_EPARSE,
                              "Statement %zu: unsupported principal type \"%s\" (AWS or Service)", index, pk);
                    CL_ENSURE(string_or_strings(pv), CL_EPARSE,
                              "Statement %zu: Principal.%s must be a string or an array of strings", index, pk);
                }
            }
        } else if (!strcmp(key, "Action") || !strcmp(key, "NotAction") || !strcmp(key, "Resource") ||
                   !strcmp(key, "NotResource")) {
            CL_ENSURE(string_or_strings(v), CL_EPARSE,
                      "Statement %zu: %s must be a string or a non-empty array of strings", index, key);
        } else if (!strcmp(key, "Condition")) {
            CL_ENSURE(json_is_object(v), CL_EPARSE, "Statement %zu: Condition must be an object", index);
            const char *op;
            json_t *block;
            json_object_foreach(v, op, block) {
                bool if_exists;
                int idx;
                CL_ENSURE(operator_index(op, &idx, &if_exists), CL_EPARSE,
                          "Statement %zu: condition operator \"%s\" is not supported (String[Not]Equals, "
                          "String[Not]EqualsIgnoreCase, String[Not]Like, optionally ...IfExists)",
                          index, op);
                CL_ENSURE(json_is_object(block) && json_object_size(block) > 0, CL_EPARSE,
                          "Statement %zu: Condition.%s must be an object of condition keys", index, op);
                const char *ck;
                json_t *cv;
                json_object_foreach(block, ck, cv) {
                    CL_ENSURE(known_condition_key(ck), CL_EPARSE,
                              "Statement %zu: condition key \"%s\" is not supported", index, ck);
                    CL_ENSURE(string_or_strings(cv), CL_EPARSE,
                              "Statement %zu: Condition.%s.%s must be a string or an array of strings", index, op, ck);
                }
            }
        } else {
            return cl_error_set(CL_EPARSE, "Statement %zu: unknown element \"%s\"", index, key);
        }
    }
    CL_ENSURE(json_object_get(st, "Effect"), CL_EPARSE, "Statement %zu: Effect is required", index);
    CL_ENSURE(json_object_get(st, "Principal"), CL_EPARSE,
              "Statement %zu: Principal is required in a key policy", index);
    CL_ENSURE(!json_object_get(st, "Action") != !json_object_get(st, "NotAction"), CL_EPARSE,
              "Statement %zu: exactly one of Action and NotAction is required", index);
    CL_ENSURE(!json_object_get(st, "Resource") != !json_object_get(st, "NotResource"), CL_EPARSE,
              "Statement %zu: exactly one of Resource and NotResource is required", index);
    return CL_OK;
}

int cl_kms_policy_parse(const char *text, size_t len, cl_kms_policy **out)
{
    *out = NULL;
    CL_ENSURE(len > 0 && len <= CL_KMS_POLICY_MAX_LEN, CL_ELIMIT, "a key policy is 1 to %d bytes",
              CL_KMS_POLICY_MAX_LEN);
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    CL_ENSURE(root, CL_EPARSE, "the policy is not JSON: %s (at character %d)", jerr.text, jerr.position);
    int rc = CL_OK;
    json_t *statements = NULL;
    CL_ENSURE_OUT(json_is_object(root), CL_EPARSE, "the policy must be a JSON object");
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (!strcmp(key, "Version")) {
            CL_ENSURE_OUT(json_is_string(v) && (!strcmp(json_string_value(v), "2012-10-17") ||
                                                !strcmp(json_string_value(v), "2008-10-17")),
                          CL_EPARSE, "Version must be \"2012-10-17\" or \"2008-10-17\"");
        } else if (!strcmp(key, "Id")) {
            CL_ENSURE_OUT(json_is_string(v), CL_EPARSE, "Id must be a string");
        } else if (!strcmp(key, "Statement")) {
            if (json_is_object(v)) {
                statements = json_array();
                CL_ENSURE_OUT(statements && json_array_append(statements, v) == 0, CL_ENOMEM, "out of memory");
            } else {
                CL_ENSURE_OUT(json_is_array(v) && json_array_size(v) > 0, CL_EPARSE,
                              "Statement must be an object or a non-empty array");
                statements = json_incref(v);
            }
        } else {
            CL_FAIL_OUT(CL_EPARSE, "unknown policy element \"%s\"", key);
        }
    }
    CL_ENSURE_OUT(statements, CL_EPARSE, "the policy has no Statement");
    size_t i;
    json_array_foreach(statements, i, v) CL_TRY_OUT(validate_statement(v, i));
    cl_kms_policy *p = calloc(1, sizeof *p);
    CL_ENSURE_OUT(p, CL_ENOMEM, "out of memory");
    p->root = root;
    p->statements = statements;
    *out = p;
    return CL_OK;
out:
    json_decref(statements);
    json_decref(root);
    return rc;
}

void cl_kms_policy_free(cl_kms_policy *p)
{
    if (!p)
        return;
    json_decref(p->statements);
    json_decref(p->root);
    free(p);
}

/* ---- evaluation ---------------------------------------------------------------------------- */

static const char *context_value(const cl_kms_policy_context *ctx, const char *key)
{
    if (!strcasecmp(key, "kms:RecipientAttestation:ImageSha384"))
        return ctx->image_sha384;
    if (!strcasecmp(key, "kms:CallerAccount"))
        return ctx->account;
    if (!strcasecmp(key, "aws:PrincipalArn"))
        return ctx->principal;
    if (!strncasecmp(key, "kms:EncryptionContext:", 22)) {
        for (size_t i = 0; i < ctx->encryption_context_len; i++)
            if (!strcmp(ctx->encryption_context[i].key, key + 22))
                return ctx->encryption_context[i].value;
        return NULL;
    }
    if (!strncasecmp(key, "kms:RecipientAttestation:PCR", 28))
        return ctx->pcrs[atoi(key + 28) % CL_KMS_PCR_COUNT];
    return NULL;
}

typedef struct value_arg {
    const char *value;
    int op; /* index into operators, positive form */
} value_arg;

static bool value_pred(const char *want, const void *arg)
{
    const value_arg *a = arg;
    switch (a->op) {
    case 0: return !strcmp(want, a->value);
    case 2: return !strcasecmp(want, a->value);
    default: return glob_match(want, a->value, false);
    }
}

static bool condition_holds(json_t *cond, const cl_kms_policy_context *ctx)
{
    const char *op;
    json_t *block;
    json_object_foreach(cond, op, block) {
        bool if_exists;
        int idx;
        /* the policy was checked when stored; an unknown operator cannot
         * be evaluated, so its condition does not hold */
        if (!operator_index(op, &idx, &if_exists))
            return false;
        bool negated = idx == 1 || idx == 3 || idx == 5;
        value_arg arg = {.op = negated ? idx - 1 : idx};
        const char *key;
        json_t *want;
        json_object_foreach(block, key, want) {
            arg.value = context_value(ctx, key);
            if (!arg.value) {
                if (if_exists || negated)
                    continue;
                return false;
            }
            bool any = any_string(want, value_pred, &arg);
            if (negated ? any : !any)
                return false;
        }
    }
    return true;
}

static bool statement_applies(json_t *st, const cl_kms_policy_context *ctx)
{
    json_t *principal = json_object_get(st, "Principal");
    bool who = json_is_string(principal) ? true : json_object_get(principal, "AWS") &&
                                                      any_string(json_object_get(principal, "AWS"), principal_pred, ctx);
    if (!who)
        return false;
    json_t *a = json_object_get(st, "Action");
    if (a ? !any_string(a, action_pred, ctx->action) : any_string(json_object_get(st, "NotAction"), action_pred, ctx->action))
        return false;
    json_t *r = json_object_get(st, "Resource");
    const char *res = ctx->resource ? ctx->resource : "";
    if (r ? !any_string(r, resource_pred, res) : any_string(json_object_get(st, "NotResource"), resource_pred, res))
        return false;
    json_t *cond = json_object_get(st, "Condition");
    return !cond || condition_holds(cond, ctx);
}

cl_kms_decision cl_kms_policy_evaluate(const cl_kms_policy *p, const cl_kms_policy_context *ctx)
{
    bool allowed = false;
    size_t i;
    json_t *st;
    json_array_foreach(p->statements, i, st) {
        if (!statement_applies(st, ctx))
            continue;
        if (!strcmp(json_string_value(json_object_get(st, "Effect")), "Deny"))
            return CL_KMS_EXPLICIT_DENY;
        allowed = true;
    }
    return allowed ? CL_KMS_ALLOW : CL_KMS_IMPLICIT_DENY;
}

int cl_kms_policy_default(const char *account, char **out_json)
{
    char text[512];
    int n = snprintf(text, sizeof text,
                     "{\n  \"Version\" : \"2012-10-17\",\n  \"Id\" : \"key-default-1\",\n  \"Statement\" : [ {\n"
                     "    \"Sid\" : \"Enable IAM User Permissions\",\n    \"Effect\" : \"Allow\",\n"
                     "    \"Principal\" : {\n      \"AWS\" : \"arn:aws:iam::%s:root\"\n    },\n"
                     "    \"Action\" : \"kms:*\",\n    \"Resource\" : \"*\"\n  } ]\n}",
                     account);
    CL_ENSURE(n > 0 && (size_t)n < sizeof text, CL_EINVAL, "account id too long");
    *out_json = strdup(text);
    CL_ENSURE(*out_json, CL_ENOMEM, "out of memory");
    return CL_OK;
}

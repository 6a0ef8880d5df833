/* KMS key policies in AWS's JSON policy language.
 *
 * Supported: Version, Id, Statement (one object or an array) with Sid,
 * Effect Allow|Deny, Principal ("*" or {"AWS": ARN | account id | "*" |
 * [...]}), Action or NotAction (with * and ? wildcards, case-insensitive),
 * Resource or NotResource, and Condition with the operators StringEquals,
 * StringNotEquals, StringEqualsIgnoreCase, StringNotEqualsIgnoreCase,
 * StringLike, StringNotLike, each optionally ...IfExists.  Condition keys
 * (case-insensitive): kms:RecipientAttestation:ImageSha384 (PCR0),
 * kms:RecipientAttestation:PCR0..PCR31, kms:CallerAccount, aws:PrincipalArn,
 * kms:EncryptionContext:NAME.  Anything else in a policy is refused when it
 * is set (MalformedPolicyDocumentException), never silently ignored.
 *
 * Evaluation as AWS does it: an explicit Deny wins, else an Allow whose
 * every part matches, else an implicit deny.  A principal
 * arn:aws:iam::ACCOUNT:root (or ACCOUNT) matches every caller of that
 * account, as it does when IAM policies allow the caller. */
#ifndef CLOISTER_KMS_POLICY_H
#define CLOISTER_KMS_POLICY_H

#pragma GCC visibility push(default)

#include "cloister/core/error.h"

#include <stdbool.h>
#include <stddef.h>

#define CL_KMS_POLICY_MAX_LEN 32768
#define CL_KMS_PCR_COUNT 32

typedef struct cl_kms_policy cl_kms_policy;

/* CL_EPARSE with a message naming what is wrong. */
CL_MUST_CHECK int cl_kms_policy_parse(const char *json, size_t len, cl_kms_policy **out);
void cl_kms_policy_free(cl_kms_policy *p);

typedef struct cl_kms_policy_pair {
    const char *key, *value;
} cl_kms_policy_pair;

/* What a request is: the values of its condition keys. */
typedef struct cl_kms_policy_context {
    const char *action;    /* "kms:Decrypt" */
    const char *principal; /* the caller's ARN */
    const char *account;   /* the caller's account id */
    const char *resource;  /* the key ARN */
    /* With a verified Recipient attestation document: lowercase hex of
     * each PCR present (image_sha384 is PCR0), NULL otherwise. */
    const char *image_sha384;
    const char *pcrs[CL_KMS_PCR_COUNT];
    const cl_kms_policy_pair *encryption_context;
    size_t encryption_context_len;
} cl_kms_policy_context;

enum cl_kms_decision { CL_KMS_IMPLICIT_DENY, CL_KMS_ALLOW, CL_KMS_EXPLICIT_DENY };

int cl_kms_policy_evaluate(const cl_kms_policy *p, const cl_kms_policy_context *ctx);

/* AWS's default key policy: the account's root principal may do kms:*. */
CL_MUST_CHECK int cl_kms_policy_default(const char *account, char **out_json);

#pragma GCC visibility pop

#endif

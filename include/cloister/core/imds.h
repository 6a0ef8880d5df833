/* The instance metadata service (IMDS) calls an enclave needs, and only
 * those: `cloister host --imds` forwards these and answers 403 to any other.
 *
 *   PUT /latest/api/token                               an IMDSv2 session token
 *   GET /latest/meta-data/iam/security-credentials/     the role's name
 *   GET /latest/meta-data/iam/security-credentials/ROLE the role's credentials
 *   GET /latest/meta-data/placement/region
 *   GET /latest/meta-data/local-hostname
 *   GET /latest/dynamic/instance-identity/document
 *
 * ROLE is one path segment of the characters IAM allows in role names
 * (letters, digits and + = , . @ _ -), 1 to 64 of them, not "." or "..".
 * Paths compare byte for byte: no percent-decoding, no query strings. */
#ifndef CLOISTER_IMDS_H
#define CLOISTER_IMDS_H

#pragma GCC visibility push(default)

#include "cloister/core/slice.h"

#include <stdbool.h>

#define CL_IMDS_TOKEN_PATH "/latest/api/token"
#define CL_IMDS_CREDENTIALS_PATH "/latest/meta-data/iam/security-credentials/"
#define CL_IMDS_TOKEN_HEADER "X-aws-ec2-metadata-token"
#define CL_IMDS_TTL_HEADER "X-aws-ec2-metadata-token-ttl-seconds"
#define CL_IMDS_MAX_TTL 21600
#define CL_IMDS_ROLE_MAX 64

bool cl_imds_call_allowed(cl_slice method, cl_slice path);
/* True for a valid IAM role name as it appears in the credentials path. */
bool cl_imds_role_name_valid(const char *name, size_t len);
/* One line per allowed call, for messages and --help. */
const char *cl_imds_allowed_calls(void);

#pragma GCC visibility pop

#endif

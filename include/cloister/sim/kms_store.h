/* kms-local's state in SQLite: keys (their material sealed with
 * AES-256-GCM under a master key), policies, aliases.  One connection,
 * guarded by the caller (cl_kms_local serializes requests).
 *
 * The database remembers a check value sealed under the master key, so
 * that opening it with another master key fails at once instead of
 * leaving keys that cannot be opened. */
#ifndef CLOISTER_KMS_STORE_H
#define CLOISTER_KMS_STORE_H

#pragma GCC visibility push(default)

#include "cloister/core/buf.h"
#include "cloister/core/error.h"

#include <stdbool.h>
#include <stdint.h>

#define CL_KMS_KEY_ID_LEN 36 /* UUID text */
#define CL_KMS_MATERIAL_LEN 32
#define CL_KMS_MASTER_KEY_LEN 32
#define CL_KMS_DESCRIPTION_MAX 8192
#define CL_KMS_ALIAS_MAX 256

enum cl_kms_key_state { CL_KMS_ENABLED, CL_KMS_DISABLED, CL_KMS_PENDING_DELETION };

typedef struct cl_kms_key {
    char id[CL_KMS_KEY_ID_LEN + 1];
    int64_t creation_s;
    int state;
    int64_t deletion_s; /* PendingDeletion: when */
    char *description;  /* owned */
    char *policy;       /* owned JSON */
    uint8_t material[CL_KMS_MATERIAL_LEN];
} cl_kms_key;

void cl_kms_key_free(cl_kms_key *k); /* frees the strings, wipes the material */

typedef struct cl_kms_store cl_kms_store;

/* path: a file, or ":memory:" */
CL_MUST_CHECK int cl_kms_store_open(const char *path, const uint8_t master[CL_KMS_MASTER_KEY_LEN], cl_kms_store **out);
void cl_kms_store_close(cl_kms_store *s);

CL_MUST_CHECK int cl_kms_store_put_key(cl_kms_store *s, const cl_kms_key *k); /* insert or replace */
/* CL_ENOTFOUND when there is no such key */
CL_MUST_CHECK int cl_kms_store_get_key(cl_kms_store *s, const char *id, cl_kms_key *out);
CL_MUST_CHECK int cl_kms_store_delete_key(cl_kms_store *s, const char *id);

/* Key ids in order after `after` ("" for the start), at most limit;
 * *more set when others follow. */
typedef void (*cl_kms_id_fn)(void *ctx, const char *id);
CL_MUST_CHECK int cl_kms_store_list_keys(cl_kms_store *s, const char *after, unsigned limit, cl_kms_id_fn fn, void *ctx,
                                         bool *more);

typedef struct cl_kms_alias {
    char name[CL_KMS_ALIAS_MAX + 1]; /* "alias/..." */
    char key_id[CL_KMS_KEY_ID_LEN + 1];
    int64_t creation_s, updated_s;
} cl_kms_alias;

/* CL_EVERIFY when the alias exists already */
CL_MUST_CHECK int cl_kms_store_create_alias(cl_kms_store *s, const cl_kms_alias *a);
/* CL_ENOTFOUND when there is no such alias */
CL_MUST_CHECK int cl_kms_store_get_alias(cl_kms_store *s, const char *name, cl_kms_alias *out);
typedef void (*cl_kms_alias_fn)(void *ctx, const cl_kms_alias *a);
/* key_id NULL: all; names in order after `after`. */
CL_MUST_CHECK int cl_kms_store_list_aliases(cl_kms_store *s, const char *key_id, const char *after, unsigned limit,
                                            cl_kms_alias_fn fn, void *ctx, bool *more);
CL_MUST_CHECK int cl_kms_store_delete_aliases_of(cl_kms_store *s, const char *key_id);

/* AES-256-GCM: out = iv(12) || ciphertext || tag(16). */
CL_MUST_CHECK int cl_kms_seal(const uint8_t key[32], const uint8_t *aad, size_t aad_len, const uint8_t *pt,
                              size_t pt_len, cl_buf *out);
/* CL_EVERIFY when the tag does not match. */
CL_MUST_CHECK int cl_kms_unseal(const uint8_t key[32], const uint8_t *aad, size_t aad_len, const uint8_t *in,
                                size_t in_len, cl_buf *out);

#pragma GCC visibility pop

#endif

/* The parent's side of the ACME store's file: back end: objects in one
 * directory, read and written by the enclave through `cloister host
 * file-store` with compare-and-swap, and nothing else.
 *
 * Requests (POST, JSON bodies; the enclave's cert_store.c is the client):
 *   /v1/get    {"dir", "key"}                       200 {"version", "data"} | 404
 *   /v1/put    {"dir", "key", "data", ["expect"]}   200 {"version"} | 412
 *   /v1/delete {"dir", "key", ["expect"]}           200 {} | 404 | 412
 * data is base64; version is the hex SHA-256 of the object's bytes; expect
 * "" means "only if absent", a version "only if the object is still that",
 * no expect "whatever is there".  dir must be the directory this store
 * serves (a check against a mis-set enclave, not a security boundary);
 * keys are 1..160 of [A-Za-z0-9._-], not starting with '.'.  Errors are
 * {"error": "..."} with 400, 404, 412, 413 or 500.
 *
 * The parent is the enclave's adversary: nothing here is trusted by the
 * enclave, which stores only KMS ciphertexts bound to the rest of each
 * record.  The store keeps honest enclaves' writes atomic (a temporary
 * file, fsync, rename) and serialised. */
#ifndef CLOISTER_HOST_FILE_STORE_H
#define CLOISTER_HOST_FILE_STORE_H

#pragma GCC visibility push(default)

#include "cloister/core/buf.h"
#include "cloister/core/error.h"

#include <stddef.h>
#include <stdint.h>

#define CL_FILE_STORE_KEY_MAX 160
#define CL_FILE_STORE_OBJECT_MAX (256 * 1024)
#define CL_FILE_STORE_REQUEST_MAX (CL_FILE_STORE_OBJECT_MAX * 4 / 3 + 4096)

typedef struct cl_file_store cl_file_store;

/* dir must exist and be a directory. */
CL_MUST_CHECK int cl_file_store_open(const char *dir, cl_file_store **out);
void cl_file_store_free(cl_file_store *fs);

/* One request -> one answer: op is "get", "put" or "delete" (the path's
 * last segment); *status the HTTP status and reply its JSON body.  Errors
 * of the request are answers (4xx), not failures: CL_OK unless memory ran
 * out. Thread-safe. */
CL_MUST_CHECK int cl_file_store_handle(cl_file_store *fs, const char *op, const uint8_t *body, size_t len,
                                       int *status, cl_buf *reply);

#pragma GCC visibility pop

#endif

/* The host's file store (the parent's side of file:DIR): compare-and-swap
 * semantics, key and directory checks, atomic files. */
#include "cloister/host/file_store.h"
#include "test.h"

#include <jansson.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[] = "/tmp/cloister-file-store-XXXXXX";
static cl_file_store *fs;

/* One request; returns the status, *answer the JSON (caller decrefs). */
static int req(const char *op, const char *fmt, json_t **answer)
{
    char body[2048];
    snprintf(body, sizeof body, fmt, dir);
    cl_buf reply = CL_BUF_INIT;
    int status = 0;
    int rc = cl_file_store_handle(fs, op, (const uint8_t *)body, strlen(body), &status, &reply);
    CHECK(rc == CL_OK);
    json_error_t e;
    json_t *a = json_loadb((const char *)reply.data, reply.len, 0, &e);
    CHECK(json_is_object(a));
    cl_buf_free(&reply);
    if (answer)
        *answer = a;
    else
        json_decref(a);
    return status;
}

static void compare_and_swap(void)
{
    json_t *a = NULL;
    CHECK(req("get", "{\"dir\": \"%s\", \"key\": \"lease.x\"}", NULL) == 404);
    /* "AQID" = 01 02 03; only if absent */
    CHECK(req("put", "{\"dir\": \"%s\", \"key\": \"lease.x\", \"data\": \"AQID\", \"expect\": \"\"}", &a) == 200);
    char v1[65];
    snprintf(v1, sizeof v1, "%s", json_string_value(json_object_get(a, "version")));
    json_decref(a);
    CHECK(strlen(v1) == 64);
    CHECK(req("put", "{\"dir\": \"%s\", \"key\": \"lease.x\", \"data\": \"BAUG\", \"expect\": \"\"}", NULL) == 412);
    CHECK(req("get", "{\"dir\": \"%s\", \"key\": \"lease.x\"}", &a) == 200);
    CHECK(!strcmp(json_string_value(json_object_get(a, "data")), "AQID"));
    CHECK(!strcmp(json_string_value(json_object_get(a, "version")), v1));
    json_decref(a);

    char body[512];
    snprintf(body, sizeof body, "{\"dir\": \"%%s\", \"key\": \"lease.x\", \"data\": \"BAUG\", \"expect\": \"%s\"}", v1);
    CHECK(req("put", body, NULL) == 200);
    /* the same expectation again: the object changed, so it fails */
    CHECK(req("put", body, NULL) == 412);
    snprintf(body, sizeof body, "{\"dir\": \"%%s\", \"key\": \"lease.x\", \"expect\": \"%s\"}", v1);
    CHECK(req("delete", body, NULL) == 412);
    CHECK(req("delete", "{\"dir\": \"%s\", \"key\": \"lease.x\"}", NULL) == 200);
    CHECK(req("delete", "{\"dir\": \"%s\", \"key\": \"lease.x\"}", NULL) == 200);
    CHECK(req("delete", "{\"dir\": \"%s\", \"key\": \"lease.x\", \"expect\": \"\"}", NULL) == 404);
    /* unconditional */
    CHECK(req("put", "{\"dir\": \"%s\", \"key\": \"record.a\", \"data\": \"AQID\"}", NULL) == 200);
    CHECK(req("put", "{\"dir\": \"%s\", \"key\": \"record.a\", \"data\": \"\"}", NULL) == 200);
    CHECK(req("get", "{\"dir\": \"%s\", \"key\": \"record.a\"}", &a) == 200);
    CHECK(!strcmp(json_string_value(json_object_get(a, "data")), ""));
    json_decref(a);
    /* nothing temporary is left behind, and the file is 0600 */
    char path[300];
    snprintf(path, sizeof path, "%s/record.a", dir);
    struct stat st;
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
    snprintf(path, sizeof path, "ls -A '%s' | grep -q '^\\.tmp'", dir);
    CHECK(system(path) != 0);
}

static void refusals(void)
{
    CHECK(req("get", "{\"dir\": \"/elsewhere\", \"key\": \"record.a\"}", NULL) == 404);
    CHECK(req("get", "{\"dir\": \"%s\", \"key\": \"../etc/passwd\"}", NULL) == 400);
    CHECK(req("get", "{\"dir\": \"%s\", \"key\": \".tmp.x\"}", NULL) == 400);
    CHECK(req("get", "{\"dir\": \"%s\", \"key\": \"\"}", NULL) == 400);
    CHECK(req("get", "{\"dir\": \"%s\"}", NULL) == 400);
    CHECK(req("put", "{\"dir\": \"%s\", \"key\": \"a\", \"data\": \"***\"}", NULL) == 400);
    CHECK(req("put", "{\"dir\": \"%s\", \"key\": \"a\", \"data\": \"AA==\", \"expect\": 1}", NULL) == 400);
    CHECK(req("rename", "{}", NULL) == 404);
    CHECK(req("get", "[1]", NULL) == 400);
    CHECK(req("get", "{\"dir\": \"%s\", \"key\": \"a\", \"key\": \"b\"}", NULL) == 400);
    /* a symbolic link planted in the directory is not followed */
    char path[300];
    snprintf(path, sizeof path, "%s/record.link", dir);
    CHECK(symlink("/etc/hostname", path) == 0);
    CHECK(req("get", "{\"dir\": \"%s\", \"key\": \"record.link\"}", NULL) == 500);
    cl_file_store *none = NULL;
    CHECK_ERR(cl_file_store_open("relative", &none), CL_EINVAL, "absolute");
    CHECK_ERR(cl_file_store_open("/nonexistent-cloister-dir", &none), CL_EIO, "nonexistent");
}

int main(void)
{
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    if (cl_file_store_open(dir, &fs) < 0) {
        fprintf(stderr, "open: %s\n", cl_error_message());
        return 1;
    }
    RUN(compare_and_swap);
    RUN(refusals);
    cl_file_store_free(fs);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return test_summary();
}

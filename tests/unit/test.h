/* A minimal unit-test harness: CHECK records a failure and goes on; each
 * test file is one CTest test whose last line is "N passed, N failed". */
#ifndef CLOISTER_TEST_H
#define CLOISTER_TEST_H

#include "cloister/core/error.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int test_failed_checks;
static int test_current_failed;
static int test_passed, test_failed;

#define CHECK(cond)                                                                       \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            test_failed_checks++;                                                         \
            test_current_failed = 1;                                                      \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);      \
        }                                                                                 \
    } while (0)

#define CHECK_OK(expr)                                                                    \
    do {                                                                                  \
        int check_rc_ = (expr);                                                           \
        if (check_rc_ != 0) {                                                             \
            test_failed_checks++;                                                         \
            test_current_failed = 1;                                                      \
            fprintf(stderr, "%s:%d: %s failed: %s: %s\n", __FILE__, __LINE__, #expr,      \
                    cl_error_name(check_rc_), cl_error_message());                        \
        }                                                                                 \
    } while (0)

/* Expects failure with the given code; a message fragment may be checked too. */
#define CHECK_ERR(expr, code, fragment)                                                   \
    do {                                                                                  \
        cl_error_clear();                                                                 \
        int check_rc_ = (expr);                                                           \
        if (check_rc_ != (code) ||                                                        \
            ((fragment) != NULL && !strstr(cl_error_message(), (fragment) ? (fragment) : ""))) { \
            test_failed_checks++;                                                         \
            test_current_failed = 1;                                                      \
            fprintf(stderr, "%s:%d: %s: expected %s (\"%s\"), got %s: %s\n", __FILE__,    \
                    __LINE__, #expr, cl_error_name(code), (fragment) ? (fragment) : "",   \
                    cl_error_name(check_rc_), cl_error_message());                        \
        }                                                                                 \
    } while (0)

#define RUN(fn)                                                                           \
    do {                                                                                  \
        test_current_failed = 0;                                                          \
        fn();                                                                             \
        if (test_current_failed) {                                                        \
            test_failed++;                                                                \
            fprintf(stderr, "FAIL %s\n", #fn);                                            \
        } else {                                                                          \
            test_passed++;                                                                \
            printf("ok   %s\n", #fn);                                                     \
        }                                                                                 \
    } while (0)

/* Removes a test's temporary directory and everything below it. */
static inline void test_remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char path[4096];
        if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path)
            continue; /* no test makes a path that long */
        struct stat st;
        if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode))
            test_remove_tree(path);
        else
            unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

static inline int test_summary(void)
{
    printf("%d passed, %d failed\n", test_passed, test_failed);
    return test_failed ? 1 : 0;
}

/* Path of a file under tests/vectors/.  The vectors are part of the
 * repository, so a missing one fails the current test rather than skipping
 * the checks that need it (a skip would count as a pass). */
#ifndef CLOISTER_TEST_VECTORS
#error "tests/CMakeLists.txt defines CLOISTER_TEST_VECTORS (the tests/vectors folder)"
#endif
static inline const char *test_vector_path(const char *rel)
{
    static char path[4096];
    snprintf(path, sizeof path, "%s/%s", CLOISTER_TEST_VECTORS, rel);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "FAIL: test vector %s cannot be opened (tests/vectors is part of the repository)\n",
                path);
        test_failed_checks++;
        test_current_failed = 1;
        return NULL;
    }
    fclose(f);
    return path;
}

#define TEST_SKIP 77

#endif

/* cloister's one error convention.
 *
 * Every fallible function returns an int: 0 (CL_OK) on success or a negative
 * cl_err code.  The code says what kind of failure it was; the human-readable
 * detail ("certificate 2 not valid at 2024-09-07T18:00:00Z") is recorded in a
 * thread-local slot by cl_error_set() at the point of failure and read with
 * cl_error_message().  Callers that add context use cl_error_prefix().
 *
 * The result is marked CL_MUST_CHECK so that the compiler rejects an ignored
 * error.  The library never aborts on bad input. */
#ifndef CLOISTER_ERROR_H
#define CLOISTER_ERROR_H

#pragma GCC visibility push(default)

#include <stddef.h>

#define CL_MUST_CHECK __attribute__((warn_unused_result))
#define CL_PRINTF(f, a) __attribute__((format(printf, f, a)))

enum cl_err {
    CL_OK = 0,
    CL_EINVAL = -1,    /* the caller passed a bad argument or option */
    CL_EPARSE = -2,    /* untrusted input is malformed */
    CL_EVERIFY = -3,   /* well-formed input failed a verification or policy check */
    CL_ENOMEM = -4,    /* allocation failed */
    CL_EIO = -5,       /* a system call or the peer's transport failed */
    CL_ECRYPTO = -6,   /* OpenSSL failed on an operation that should work */
    CL_ELIMIT = -7,    /* input exceeds a documented size or count limit */
    CL_ENOTFOUND = -8, /* a named thing does not exist */
    CL_EPROTO = -9,    /* the peer answered outside its protocol */
    CL_ENSM = -10,     /* the NSM answered with an error code */
    CL_ECONFLICT = -11, /* a conditional write lost: its condition did not hold (DynamoDB's
                           ConditionalCheckFailedException, a lease another owner holds) */
    CL_EDENIED = -12,  /* the service refused the caller's authority (AccessDeniedException) */
    CL_EBUSY = -13,    /* the service is throttling us, still after the retries */
};

/* Records the detail for code and returns code, so that
 * `return cl_error_set(CL_EPARSE, "...")` reads naturally. */
int cl_error_set(int code, const char *fmt, ...) CL_PRINTF(2, 3);

/* Like cl_error_set, appending the first entry of OpenSSL's error queue
 * and then clearing the queue. */
int cl_error_ossl(int code, const char *fmt, ...) CL_PRINTF(2, 3);

/* Prepends context to the recorded detail and returns code unchanged. */
int cl_error_prefix(int code, const char *fmt, ...) CL_PRINTF(2, 3);

const char *cl_error_message(void);
const char *cl_error_name(int code);
void cl_error_clear(void);

/* Early-return helpers for functions without resources to release. */
#define CL_TRY(expr)                                                           \
    do {                                                                       \
        int cl_try_rc_ = (expr);                                               \
        if (cl_try_rc_ < 0)                                                    \
            return cl_try_rc_;                                                 \
    } while (0)

#define CL_ENSURE(cond, code, ...)                                             \
    do {                                                                       \
        if (!(cond))                                                           \
            return cl_error_set((code), __VA_ARGS__);                          \
    } while (0)

/* The same for functions with a single `out:` exit that owns resources;
 * they expect an `int rc` in scope. */
#define CL_TRY_OUT(expr)                                                       \
    do {                                                                       \
        rc = (expr);                                                           \
        if (rc < 0)                                                            \
            goto out;                                                          \
    } while (0)

#define CL_FAIL_OUT(code, ...)                                                 \
    do {                                                                       \
        rc = cl_error_set((code), __VA_ARGS__);                                \
        goto out;                                                              \
    } while (0)

#define CL_OSSL_OUT(code, ...)                                                 \
    do {                                                                       \
        rc = cl_error_ossl((code), __VA_ARGS__);                               \
        goto out;                                                              \
    } while (0)

/* The CL_ENSURE forms for a failed OpenSSL call: the detail gets the first
 * entry of OpenSSL's error queue and the queue is drained (cl_error_ossl). */
#define CL_ENSURE_OSSL(cond, code, ...)                                        \
    do {                                                                       \
        if (!(cond))                                                           \
            return cl_error_ossl((code), __VA_ARGS__);                         \
    } while (0)

#define CL_ENSURE_OSSL_OUT(cond, code, ...)                                    \
    do {                                                                       \
        if (!(cond))                                                           \
            CL_OSSL_OUT((code), __VA_ARGS__);                                  \
    } while (0)

#define CL_ENSURE_OUT(cond, code, ...)                                         \
    do {                                                                       \
        if (!(cond))                                                           \
            CL_FAIL_OUT((code), __VA_ARGS__);                                  \
    } while (0)

#pragma GCC visibility pop

#endif

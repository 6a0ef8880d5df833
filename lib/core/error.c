#include "cloister/core/error.h"

#include <openssl/err.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define CL_ERROR_MESSAGE_MAX 1024 /* kms-local's AWS-shaped messages fit whole */

static _Thread_local char error_message[CL_ERROR_MESSAGE_MAX];

/* Formats into a temporary first: a caller may pass cl_error_message() itself
 * as an argument, and vsnprintf with overlapping source and destination is
 * undefined behaviour. */
static void set_message(const char *fmt, va_list ap)
{
    char tmp[CL_ERROR_MESSAGE_MAX];
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    memcpy(error_message, tmp, sizeof error_message);
}

int cl_error_set(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_message(fmt, ap);
    va_end(ap);
    return code;
}

int cl_error_ossl(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_message(fmt, ap);
    va_end(ap);
    unsigned long e = ERR_get_error();
    if (e != 0) {
        size_t used = strlen(error_message);
        char detail[256];
        ERR_error_string_n(e, detail, sizeof detail);
        snprintf(error_message + used, sizeof error_message - used, " (%s)", detail);
    }
    ERR_clear_error();
    return code;
}

int cl_error_prefix(int code, const char *fmt, ...)
{
    char prefix[CL_ERROR_MESSAGE_MAX];
    char old[CL_ERROR_MESSAGE_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, error_message, sizeof old);
    size_t plen = strnlen(prefix, sizeof error_message - 1);
    memcpy(error_message, prefix, plen);
    size_t olen = strnlen(old, sizeof error_message - 1 - plen);
    memcpy(error_message + plen, old, olen);
    error_message[plen + olen] = '\0';
    return code;
}

const char *cl_error_message(void)
{
    return error_message;
}

void cl_error_clear(void)
{
    error_message[0] = '\0';
}

const char *cl_error_name(int code)
{
    switch (code) {
    case CL_OK: return "ok";
    case CL_EINVAL: return "invalid argument";
    case CL_EPARSE: return "malformed input";
    case CL_EVERIFY: return "rejected";
    case CL_ENOMEM: return "out of memory";
    case CL_EIO: return "i/o error";
    case CL_ECRYPTO: return "crypto error";
    case CL_ELIMIT: return "limit exceeded";
    case CL_ENOTFOUND: return "not found";
    case CL_EPROTO: return "protocol error";
    case CL_ENSM: return "nsm error";
    case CL_ECONFLICT: return "condition failed";
    case CL_EDENIED: return "access denied";
    case CL_EBUSY: return "throttled";
    }
    return "unknown error";
}

/* libcurl through a table filled on first use (lib/core/lazy.h says why):
 * include this instead of <curl/curl.h> and call cl_curl_load() before
 * any curl_* function. */
#ifndef CLOISTER_LIB_CURL_LAZY_H
#define CLOISTER_LIB_CURL_LAZY_H

#define CURL_DISABLE_TYPECHECK /* curl_easy_setopt stays a plain function */
#include "cloister/core/error.h"

#include <curl/curl.h>

typedef struct cl_curl_api {
    __typeof__(&curl_global_init) global_init;
    __typeof__(&curl_easy_init) easy_init;
    __typeof__(&curl_easy_setopt) easy_setopt;
    __typeof__(&curl_easy_perform) easy_perform;
    __typeof__(&curl_easy_getinfo) easy_getinfo;
    __typeof__(&curl_easy_cleanup) easy_cleanup;
    __typeof__(&curl_easy_strerror) easy_strerror;
    __typeof__(&curl_slist_append) slist_append;
    __typeof__(&curl_slist_free_all) slist_free_all;
    __typeof__(&curl_free) free;
    __typeof__(&curl_url) url;
    __typeof__(&curl_url_set) url_set;
    __typeof__(&curl_url_get) url_get;
    __typeof__(&curl_url_cleanup) url_cleanup;
} cl_curl_api;

extern cl_curl_api cl_curl;
CL_MUST_CHECK int cl_curl_load(void);

/* curl.h wraps these two to count their arguments; ours go to the table */
#undef curl_easy_setopt
#undef curl_easy_getinfo
#define curl_global_init cl_curl.global_init
#define curl_easy_init cl_curl.easy_init
#define curl_easy_setopt cl_curl.easy_setopt
#define curl_easy_perform cl_curl.easy_perform
#define curl_easy_getinfo cl_curl.easy_getinfo
#define curl_easy_cleanup cl_curl.easy_cleanup
#define curl_easy_strerror cl_curl.easy_strerror
#define curl_slist_append cl_curl.slist_append
#define curl_slist_free_all cl_curl.slist_free_all
#define curl_free cl_curl.free
#define curl_url cl_curl.url
#define curl_url_set cl_curl.url_set
#define curl_url_get cl_curl.url_get
#define curl_url_cleanup cl_curl.url_cleanup

#endif

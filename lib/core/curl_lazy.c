#include "core/curl_lazy.h"

#include "core/lazy.h"

cl_curl_api cl_curl;

int cl_curl_load(void)
{
    static const char *const names[] = {
        "curl_global_init",   "curl_easy_init", "curl_easy_setopt", "curl_easy_perform", "curl_easy_getinfo",
        "curl_easy_cleanup",  "curl_easy_strerror", "curl_slist_append", "curl_slist_free_all", "curl_free",
        "curl_url",           "curl_url_set",   "curl_url_get",     "curl_url_cleanup",
    };
    _Static_assert(sizeof names / sizeof names[0] == sizeof(cl_curl_api) / sizeof(void *), "one name per entry");
    static int state;
    return cl_lazy_load("libcurl.so.4", names, (void **)&cl_curl, sizeof names / sizeof names[0], &state);
}

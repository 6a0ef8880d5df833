#include "core/curl_lazy.h"
#include "core/lazy.h"
#include "sim/sqlite_lazy.h"
#include "test.h"

static void missing_library_and_symbol_are_named(void)
{
    const char *const names[] = {"curl_easy_init"};
    void *table[1];
    int state = 0;
    CHECK_ERR(cl_lazy_load("libcloister-no-such-library.so.9", names, table, 1, &state), CL_EIO,
              "libcloister-no-such-library.so.9");
    /* the failure is remembered, and said again */
    CHECK_ERR(cl_lazy_load("libcloister-no-such-library.so.9", names, table, 1, &state), CL_EIO, "cannot load");
    const char *const bogus[] = {"curl_easy_init", "curl_no_such_function"};
    void *table2[2];
    int state2 = 0;
    CHECK_ERR(cl_lazy_load("libcurl.so.4", bogus, table2, 2, &state2), CL_EIO, "curl_no_such_function");
}

static void the_real_tables_load_and_work(void)
{
    CHECK_OK(cl_curl_load());
    CHECK_OK(cl_curl_load()); /* once */
    CHECK(curl_easy_strerror(CURLE_OK) != NULL);
    CURL *c = curl_easy_init();
    CHECK(c != NULL);
    CHECK(curl_easy_setopt(c, CURLOPT_URL, "http://127.0.0.1:1/") == CURLE_OK);
    curl_easy_cleanup(c);
    CHECK_OK(cl_sqlite_load());
    sqlite3 *db = NULL;
    CHECK(sqlite3_open_v2(":memory:", &db, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK);
    CHECK(sqlite3_exec(db, "CREATE TABLE t (x INTEGER)", NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
}

int main(void)
{
    RUN(missing_library_and_symbol_are_named);
    RUN(the_real_tables_load_and_work);
    return test_summary();
}

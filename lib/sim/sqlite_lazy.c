#include "sim/sqlite_lazy.h"

#include "core/lazy.h"

cl_sqlite_api cl_sqlite;

int cl_sqlite_load(void)
{
    static const char *const names[] = {
        "sqlite3_bind_blob",
        "sqlite3_bind_int",
        "sqlite3_bind_int64",
        "sqlite3_bind_text",
        "sqlite3_busy_timeout",
        "sqlite3_close",
        "sqlite3_column_blob",
        "sqlite3_column_bytes",
        "sqlite3_column_int",
        "sqlite3_column_int64",
        "sqlite3_column_text",
        "sqlite3_errmsg",
        "sqlite3_exec",
        "sqlite3_finalize",
        "sqlite3_free",
        "sqlite3_open_v2",
        "sqlite3_prepare_v2",
        "sqlite3_step",
    };
    _Static_assert(sizeof names / sizeof names[0] == sizeof(cl_sqlite_api) / sizeof(void *), "one name per entry");
    static int state;
    return cl_lazy_load("libsqlite3.so.0", names, (void **)&cl_sqlite, sizeof names / sizeof names[0], &state);
}

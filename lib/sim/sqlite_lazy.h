/* SQLite through a table filled on first use (lib/core/lazy.h says why):
 * include this instead of <sqlite3.h> and call cl_sqlite_load() first. */
#ifndef CLOISTER_LIB_SQLITE_LAZY_H
#define CLOISTER_LIB_SQLITE_LAZY_H

#include "cloister/core/error.h"

#include <sqlite3.h>

typedef struct cl_sqlite_api {
    __typeof__(&sqlite3_bind_blob) bind_blob;
    __typeof__(&sqlite3_bind_int) bind_int;
    __typeof__(&sqlite3_bind_int64) bind_int64;
    __typeof__(&sqlite3_bind_text) bind_text;
    __typeof__(&sqlite3_busy_timeout) busy_timeout;
    __typeof__(&sqlite3_close) close;
    __typeof__(&sqlite3_column_blob) column_blob;
    __typeof__(&sqlite3_column_bytes) column_bytes;
    __typeof__(&sqlite3_column_int) column_int;
    __typeof__(&sqlite3_column_int64) column_int64;
    __typeof__(&sqlite3_column_text) column_text;
    __typeof__(&sqlite3_errmsg) errmsg;
    __typeof__(&sqlite3_exec) exec;
    __typeof__(&sqlite3_finalize) finalize;
    __typeof__(&sqlite3_free) free;
    __typeof__(&sqlite3_open_v2) open_v2;
    __typeof__(&sqlite3_prepare_v2) prepare_v2;
    __typeof__(&sqlite3_step) step;
} cl_sqlite_api;

extern cl_sqlite_api cl_sqlite;
CL_MUST_CHECK int cl_sqlite_load(void);

#define sqlite3_bind_blob cl_sqlite.bind_blob
#define sqlite3_bind_int cl_sqlite.bind_int
#define sqlite3_bind_int64 cl_sqlite.bind_int64
#define sqlite3_bind_text cl_sqlite.bind_text
#define sqlite3_busy_timeout cl_sqlite.busy_timeout
#define sqlite3_close cl_sqlite.close
#define sqlite3_column_blob cl_sqlite.column_blob
#define sqlite3_column_bytes cl_sqlite.column_bytes
#define sqlite3_column_int cl_sqlite.column_int
#define sqlite3_column_int64 cl_sqlite.column_int64
#define sqlite3_column_text cl_sqlite.column_text
#define sqlite3_errmsg cl_sqlite.errmsg
#define sqlite3_exec cl_sqlite.exec
#define sqlite3_finalize cl_sqlite.finalize
#define sqlite3_free cl_sqlite.free
#define sqlite3_open_v2 cl_sqlite.open_v2
#define sqlite3_prepare_v2 cl_sqlite.prepare_v2
#define sqlite3_step cl_sqlite.step

#endif

/* test_sqlite_build: the tests link the SQLite that ships in chatrelay.exe.
 *
 * Every test binary (native with sanitizers, and the Windows build under
 * Wine) links chatrelay::sqlite3 (cmake/ChatrelaySqlite.cmake).  This one
 * fails if that is not the amalgamation scripts/setup pins, built with the
 * release's definitions: a system libsqlite3 (another version, other
 * options) or a header from elsewhere would make every storage test prove
 * something about a different SQLite.  CHATRELAY_PINNED_SQLITE_VERSION comes
 * from scripts/setup's pin (tests/CMakeLists.txt reads it).
 */
#include <stdio.h>

#include <sqlite3.h>

#include "check.h"

#ifndef CHATRELAY_PINNED_SQLITE_VERSION
#error "CHATRELAY_PINNED_SQLITE_VERSION must be defined (tests/CMakeLists.txt reads it from scripts/setup)"
#endif

/* The definitions cmake/ChatrelaySqlite.cmake gives the amalgamation on
 * every platform, as sqlite3_compileoption_used names them. */
static const char *const expected_options[] = {
    "ENABLE_FTS5",
    "DEFAULT_WAL_SYNCHRONOUS=1",
    "OMIT_LOAD_EXTENSION",
    "THREADSAFE=1",
    "DQS=0",
    "DEFAULT_MEMSTATUS=0",
    "OMIT_DEPRECATED",
};

static void list_options(void)
{
    const char *opt;
    int i;
    fprintf(stderr, "  linked SQLite %s (%s), compiled with:\n", sqlite3_libversion(), sqlite3_sourceid());
    for (i = 0; (opt = sqlite3_compileoption_get(i)) != NULL; i++)
        fprintf(stderr, "    %s\n", opt);
}

static void test_version(void)
{
    /* The library, the header we compiled against, and the pin agree. */
    CHECK_STR(sqlite3_libversion(), SQLITE_VERSION);
    CHECK_STR(sqlite3_libversion(), CHATRELAY_PINNED_SQLITE_VERSION);
    CHECK_INT(sqlite3_libversion_number(), SQLITE_VERSION_NUMBER);
    CHECK_STR(sqlite3_sourceid(), SQLITE_SOURCE_ID);
}

static void test_options(void)
{
    size_t i;
    for (i = 0; i < sizeof expected_options / sizeof expected_options[0]; i++) {
        int used = sqlite3_compileoption_used(expected_options[i]);
        if (!used)
            fprintf(stderr, "  SQLITE_%s is not among the linked SQLite's compile options\n", expected_options[i]);
        CHECK_INT(used, 1);
    }
    CHECK_INT(sqlite3_threadsafe(), 1);
}

/* FTS5 is there and works (not only named by an option). */
static void test_fts5(void)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *stmt = NULL;
    int rc = sqlite3_open(":memory:", &db);
    CHECK_INT(rc, SQLITE_OK);
    if (rc != SQLITE_OK) {
        sqlite3_close(db);
        return;
    }
    rc = sqlite3_exec(db, "CREATE VIRTUAL TABLE t USING fts5(body);"
                          "INSERT INTO t(body) VALUES ('we deploy on friday'), ('lunch');",
                      NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        fprintf(stderr, "  fts5: %s\n", sqlite3_errmsg(db));
    CHECK_INT(rc, SQLITE_OK);
    rc = sqlite3_prepare_v2(db, "SELECT count(*) FROM t WHERE t MATCH 'deploy'", -1, &stmt, NULL);
    CHECK_INT(rc, SQLITE_OK);
    if (rc == SQLITE_OK) {
        CHECK_INT(sqlite3_step(stmt), SQLITE_ROW);
        CHECK_INT(sqlite3_column_int(stmt, 0), 1);
    }
    CHECK_INT(sqlite3_finalize(stmt), SQLITE_OK);
    CHECK_INT(sqlite3_close(db), SQLITE_OK);
}

int main(void)
{
    test_version();
    test_options();
    test_fts5();
    if (check_failed)
        list_options();
    return check_done();
}

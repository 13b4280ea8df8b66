/* test_history: storage/history against real database files.
 *
 * The files are created in the current directory (ctest runs each test in
 * its build directory; under Wine too) with a per-run prefix, or in the
 * directory named by CHATRELAY_TEST_DIR, and deleted at the end.  A second,
 * plain sqlite3 connection plays the sqlite3 CLI user: it inspects the
 * schema, holds the write lock, deletes rows and checks the FTS index.
 */
#if defined(_MSC_VER) && !defined(_CRT_SECURE_NO_WARNINGS)
#define _CRT_SECURE_NO_WARNINGS   /* fopen, getenv, gmtime (the test oracle) are the portable calls here */
#endif
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sqlite3.h>

#include "check.h"
#include "db_support.h"
#include "history.h"

#ifndef _WIN32
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#endif

/* ---- helpers ---------------------------------------------------------- */

#define STR_(x) #x
#define STR(x) STR_(x)
#define NEWER_VERSION 99  /* a schema version this program does not know */
#if NEWER_VERSION <= HISTORY_SCHEMA_VERSION
#error "NEWER_VERSION must be newer than HISTORY_SCHEMA_VERSION"
#endif

static char file_prefix[256];

/* A fresh path for one test case (any old file of that name removed). */
static const char *db_path(const char *tag)
{
    static char paths[32][300];
    static int used;
    char *p = paths[used++ % 32];
    snprintf(p, 300, "%s%s.db", file_prefix, tag);
    remove_db(p);
    return p;
}

static int file_exists(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f)
        fclose(f);
    return f != NULL;
}

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (!f)
        return;
    CHECK_INT(fwrite(data, 1, len, f), len);
    fclose(f);
}

/* Reads a whole (small) file; returns its length, or -1. */
static long read_file(const char *path, unsigned char *buf, size_t cap)
{
    size_t n;
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    n = fread(buf, 1, cap, f);
    fclose(f);
    return (long)n;
}

static sqlite3 *cli_open(const char *path)
{
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    CHECK_INT(rc, SQLITE_OK);
    return db;
}

static int cli_exec(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK)
        fprintf(stderr, "  (second connection: %s -> %s)\n", sql, msg ? msg : "?");
    sqlite3_free(msg);
    return rc;
}

static long long cli_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *stmt = NULL;
    long long v = -999;
    int rc = sqlite3_prepare_v2(db, sql, -1, &stmt, NULL);
    CHECK_INT(rc, SQLITE_OK);
    if (rc != SQLITE_OK) {
        fprintf(stderr, "  (%s: %s)\n", sql, sqlite3_errmsg(db));
        return v;
    }
    if (sqlite3_step(stmt) == SQLITE_ROW)
        v = sqlite3_column_int64(stmt, 0);
    sqlite3_finalize(stmt);
    return v;
}

static void cli_close(sqlite3 *db)
{
    CHECK_INT(sqlite3_close(db), SQLITE_OK);
}

/* Asks FTS5 to check its index, including against the messages table. */
static void check_fts_consistent(const char *path)
{
    sqlite3 *db = cli_open(path);
    CHECK_INT(cli_exec(db, "INSERT INTO messages_fts(messages_fts) VALUES('integrity-check')"), SQLITE_OK);
    CHECK_INT(cli_exec(db, "INSERT INTO messages_fts(messages_fts, rank) VALUES('integrity-check', 1)"), SQLITE_OK);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM pragma_integrity_check WHERE integrity_check <> 'ok'"), 0);
    cli_close(db);
}

static history *open_ok(const char *path, const history_options *opt)
{
    char err[512];
    history *h = NULL;
    int r = history_open(&h, path, opt, err, sizeof err);
    CHECK_INT(r, HISTORY_OK);
    if (r != HISTORY_OK)
        fprintf(stderr, "  history_open: %s\n", err);
    return h;
}

static history_record rec_of(const char *at, const char *room, const char *nick,
                             const char *kind, const char *body)
{
    history_record r;
    r.id = 0;
    r.at = at;
    r.room = room;
    r.nick = nick;
    r.kind = history_kind_parse(kind);   /* NONE for a kind that is not ours ("shout") */
    r.body = body;
    r.body_len = strlen(body);
    return r;
}

static int append_one(history *h, const char *at, const char *room, const char *nick,
                      const char *kind, const char *body)
{
    history_record r = rec_of(at, room, nick, kind, body);
    int rc = history_begin(h);
    if (rc == HISTORY_OK)
        rc = history_append(h, &r);
    if (rc == HISTORY_OK)
        rc = history_commit(h);
    else
        history_rollback(h);
    return rc;
}

/* Collects query results: ids, nicks and bodies (with their lengths). */
typedef struct rows {
    int n, stop_after;
    int64_t id[64];
    char nick[64][32];
    char kind[64][8];
    char body[64][64];
    size_t body_len[64];
} rows;

static int collect(void *ctx, const history_record *rec)
{
    rows *r = ctx;
    if (r->n < 64) {
        r->id[r->n] = rec->id;
        snprintf(r->nick[r->n], sizeof r->nick[0], "%s", rec->nick);
        snprintf(r->kind[r->n], sizeof r->kind[0], "%s", history_kind_name(rec->kind) ? history_kind_name(rec->kind) : "?");
        r->body_len[r->n] = rec->body_len;
        memcpy(r->body[r->n], rec->body, rec->body_len < 64 ? rec->body_len : 64);
    }
    r->n++;
    return r->stop_after && r->n >= r->stop_after;
}

static int count_recent(history *h, const char *room)
{
    rows r;
    memset(&r, 0, sizeof r);
    CHECK_INT(history_recent(h, room, 1000000, collect, &r), HISTORY_OK);
    return r.n;
}

static int count_search(history *h, const char *room, const char *words)
{
    rows r;
    int rc;
    memset(&r, 0, sizeof r);
    rc = history_search(h, room, words, 1000, collect, &r);
    CHECK_INT(rc, HISTORY_OK);
    if (rc != HISTORY_OK)
        fprintf(stderr, "  search [%s]: %s\n", words, history_errmsg(h));
    return r.n;
}

/* ---- time ------------------------------------------------------------- */

static void test_format_time(void)
{
    char out[HISTORY_TIME_LEN + 1];
    int64_t day;

    history_format_time(0, out);
    CHECK_STR(out, "1970-01-01T00:00:00.000Z");
    history_format_time(INT64_C(1795748645123), out);
    CHECK_STR(out, "2026-11-27T03:04:05.123Z");
    history_format_time(INT64_C(1709251199999), out);
    CHECK_STR(out, "2024-02-29T23:59:59.999Z");
    history_format_time(INT64_C(951782400000), out);   /* 2000 is a leap year (400) */
    CHECK_STR(out, "2000-02-29T00:00:00.000Z");
    history_format_time(INT64_C(4107499200000) + INT64_C(86400000), out); /* 2100 is not (100) */
    CHECK_STR(out, "2100-03-01T12:00:00.000Z");
    history_format_time(INT64_C(4133980799999), out);
    CHECK_STR(out, "2100-12-31T23:59:59.999Z");
    history_format_time(-1, out);
    CHECK_STR(out, "1969-12-31T23:59:59.999Z");
    /* Out of range: clamped, never more than HISTORY_TIME_LEN chars. */
    history_format_time(INT64_MAX, out);
    CHECK_STR(out, "9999-12-31T23:59:59.999Z");
    history_format_time(INT64_MIN, out);
    CHECK_STR(out, "0000-01-01T00:00:00.000Z");

    /* Every day 1970..2100 against the C library's gmtime, at a time of day
     * that moves through hours, minutes, seconds and milliseconds. */
    for (day = 0; day <= 47846; day++) {
        int64_t ms_of_day = (day * INT64_C(7919001)) % 86400000;
        time_t t = (time_t)(day * 86400 + ms_of_day / 1000);
        struct tm *tm = gmtime(&t);
        char want[64];
        if (!tm) {
            CHECK(tm != NULL);
            break;
        }
        snprintf(want, sizeof want, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm->tm_year + 1900,
                 tm->tm_mon + 1, tm->tm_mday, tm->tm_hour, tm->tm_min, tm->tm_sec,
                 (int)(ms_of_day % 1000));
        history_format_time(day * 86400000 + ms_of_day, out);
        if (strcmp(out, want) != 0) {
            CHECK_STR(out, want);
            break;
        }
    }
    CHECK_INT(day, 47847);
}

/* ---- opening, schema, migration -------------------------------------- */

static void test_create_schema(void)
{
    const char *path = db_path("create");
    history *h = open_ok(path, NULL);
    sqlite3 *db;
    history_close(h);

    db = cli_open(path);
    CHECK_INT(cli_int(db, "PRAGMA user_version"), HISTORY_SCHEMA_VERSION);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='messages'"), 1);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM sqlite_master WHERE type='index' AND name='messages_room_id'"
                          " AND tbl_name='messages'"), 1);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='messages_fts'"
                          " AND sql LIKE '%fts5%content=''messages''%'"), 1);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM sqlite_master WHERE type='trigger' AND tbl_name='messages'"), 3);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM pragma_table_info('messages') WHERE \"notnull\" = 1"), 5);
    CHECK_INT(cli_int(db, "SELECT pk FROM pragma_table_info('messages') WHERE name = 'id'"), 1);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM pragma_index_info('messages_room_id')"), 2);
    CHECK_INT(cli_int(db, "SELECT journal_mode = 'wal' FROM pragma_journal_mode"), 1);
    cli_close(db);

    /* Reopening a current database changes nothing and works. */
    h = open_ok(path, NULL);
    CHECK_INT(append_one(h, "2026-11-27T03:04:05.123Z", "lobby", "ann", "say", "hello"), HISTORY_OK);
    history_close(h);
    h = open_ok(path, NULL);
    CHECK_INT(count_recent(h, "lobby"), 1);
    history_close(h);
    remove_db(path);
}

static void test_migrate_from_v0(void)
{
    const char *path = db_path("v0empty");
    const char *path2 = db_path("v0other");
    const char *path3 = db_path("v0clash");
    char err[512];
    history *h = NULL;
    sqlite3 *db;

    /* An empty file is a database at user_version 0 with nothing in it. */
    write_file(path, "", 0);
    h = open_ok(path, NULL);
    CHECK_INT(append_one(h, "2026-11-27T03:04:05.123Z", "lobby", "ann", "say", "from empty"), HISTORY_OK);
    history_close(h);
    db = cli_open(path);
    CHECK_INT(cli_int(db, "PRAGMA user_version"), HISTORY_SCHEMA_VERSION);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM messages"), 1);
    cli_close(db);

    /* Version 0 holding someone else's tables: ours are added beside them. */
    db = cli_open(path2);
    CHECK_INT(cli_exec(db, "CREATE TABLE notes(x TEXT); INSERT INTO notes VALUES ('keep me');"), SQLITE_OK);
    cli_close(db);
    h = open_ok(path2, NULL);
    CHECK_INT(append_one(h, "2026-11-27T03:04:05.123Z", "lobby", "ann", "say", "beside notes"), HISTORY_OK);
    history_close(h);
    db = cli_open(path2);
    CHECK_INT(cli_int(db, "PRAGMA user_version"), HISTORY_SCHEMA_VERSION);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM notes WHERE x = 'keep me'"), 1);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH 'notes'"), 1);
    cli_close(db);

    /* Version 0 with a foreign table called messages: the migration fails as
     * a whole and rolls back, nothing is adopted or half-created. */
    db = cli_open(path3);
    CHECK_INT(cli_exec(db, "CREATE TABLE messages(t TEXT); INSERT INTO messages VALUES ('theirs');"), SQLITE_OK);
    cli_close(db);
    CHECK_INT(history_open(&h, path3, NULL, err, sizeof err), HISTORY_ERROR);
    CHECK(h == NULL);
    CHECK(strstr(err, path3) != NULL);
    CHECK(strstr(err, "from version 0 to " STR(HISTORY_SCHEMA_VERSION) " failed") != NULL);
    CHECK(strstr(err, "already exists") != NULL);
    db = cli_open(path3);
    CHECK_INT(cli_int(db, "PRAGMA user_version"), 0);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM sqlite_master"), 1);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM messages WHERE t = 'theirs'"), 1);
    CHECK_INT(cli_int(db, "SELECT journal_mode = 'delete' FROM pragma_journal_mode"), 1);
    cli_close(db);

    remove_db(path);
    remove_db(path2);
    remove_db(path3);
}

static void test_refuse_newer(void)
{
    const char *path = db_path("newer");
    static unsigned char before[65536], after[65536];
    long n_before, n_after;
    char err[512], side[320];
    history *h = NULL;
    sqlite3 *db = cli_open(path);

    CHECK_INT(cli_exec(db, "CREATE TABLE messages(id INTEGER PRIMARY KEY, future TEXT);"
                           "INSERT INTO messages(future) VALUES ('v2 data');"
                           "PRAGMA user_version = " STR(NEWER_VERSION) ";"), SQLITE_OK);
    cli_close(db);
    n_before = read_file(path, before, sizeof before);
    CHECK(n_before > 0);

    CHECK_INT(history_open(&h, path, NULL, err, sizeof err), HISTORY_TOO_NEW);
    CHECK(h == NULL);
    CHECK(strstr(err, path) != NULL);
    CHECK(strstr(err, "schema version " STR(NEWER_VERSION) " is newer than this program's "
                      STR(HISTORY_SCHEMA_VERSION)) != NULL);
    CHECK(strstr(err, "untouched") != NULL);

    n_after = read_file(path, after, sizeof after);
    CHECK_INT(n_after, n_before);
    CHECK(n_after == n_before && memcmp(before, after, (size_t)n_after) == 0);
    snprintf(side, sizeof side, "%s-wal", path);
    CHECK(!file_exists(side));
    db = cli_open(path);
    CHECK_INT(cli_int(db, "PRAGMA user_version"), NEWER_VERSION);
    CHECK_INT(cli_int(db, "SELECT journal_mode = 'delete' FROM pragma_journal_mode"), 1);
    cli_close(db);
    remove_db(path);
}

static void test_not_a_database(void)
{
    const char *path = db_path("notadb");
    const char *short_path = db_path("notadb-short");
    static unsigned char text[4096], after[8192];
    char err[512], side[320];
    history *h = NULL;
    size_t i;
    long n;

    for (i = 0; i < sizeof text; i++)
        text[i] = (unsigned char)"These are my notes, not a database.\n"[i % 36];
    write_file(path, text, sizeof text);
    CHECK_INT(history_open(&h, path, NULL, err, sizeof err), HISTORY_ERROR);
    CHECK(h == NULL);
    CHECK(strstr(err, path) != NULL);
    CHECK(strstr(err, "file is not a database") != NULL);
    CHECK(strstr(err, "(code 26)") != NULL);
    CHECK(strstr(err, "untouched") != NULL);
    n = read_file(path, after, sizeof after);
    CHECK_INT(n, sizeof text);
    CHECK(n == (long)sizeof text && memcmp(text, after, sizeof text) == 0);
    snprintf(side, sizeof side, "%s-wal", path);
    CHECK(!file_exists(side));
    snprintf(side, sizeof side, "%s-journal", path);
    CHECK(!file_exists(side));

    write_file(short_path, "hello\n", 6);
    CHECK_INT(history_open(&h, short_path, NULL, err, sizeof err), HISTORY_ERROR);
    CHECK(strstr(err, "file is not a database") != NULL);
    n = read_file(short_path, after, sizeof after);
    CHECK_MEM(after, n, "hello\n");

    /* A folder that does not exist: a clear error naming the path. */
    CHECK_INT(history_open(&h, "no-such-folder-here/history.db", NULL, err, sizeof err), HISTORY_ERROR);
    CHECK(strstr(err, "no-such-folder-here/history.db") != NULL);
    CHECK(strstr(err, "sqlite3_open_v2") != NULL);

    remove_db(path);
    remove_db(short_path);
}

/* ---- group commit ----------------------------------------------------- */

static void test_batch_commit(void)
{
    const char *path = db_path("batch");
    history *h = open_ok(path, NULL);
    history_record r;
    rows got;
    char body[32];
    int i, rc = HISTORY_OK;
    sqlite3 *db;

    CHECK_INT(history_begin(h), HISTORY_OK);
    for (i = 0; i < 5000 && rc == HISTORY_OK; i++) {
        snprintf(body, sizeof body, "line %d", i);
        r = rec_of("2026-11-27T03:04:05.123Z", "lobby", "ann", "say", body);
        rc = history_append(h, &r);
    }
    CHECK_INT(rc, HISTORY_OK);
    /* Nothing is visible to another connection before the commit. */
    db = cli_open(path);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM messages"), 0);
    CHECK_INT(history_commit(h), HISTORY_OK);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM messages"), 5000);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH '4999'"), 1);
    /* ids follow the order of the appends, line for line */
    CHECK_INT(cli_int(db, "SELECT count(*) FROM messages WHERE body <> 'line ' || (id - 1)"), 0);
    cli_close(db);
    CHECK_INT(count_recent(h, "lobby"), 5000);

    memset(&got, 0, sizeof got);
    CHECK_INT(history_recent(h, "lobby", 3, collect, &got), HISTORY_OK);
    CHECK_INT(got.n, 3);
    CHECK_MEM(got.body[0], got.body_len[0], "line 4997");
    CHECK_MEM(got.body[2], got.body_len[2], "line 4999");

    /* A rolled-back batch leaves nothing. */
    CHECK_INT(history_begin(h), HISTORY_OK);
    r = rec_of("2026-11-27T03:04:05.123Z", "lobby", "ann", "say", "abandoned");
    CHECK_INT(history_append(h, &r), HISTORY_OK);
    history_rollback(h);
    CHECK_INT(count_search(h, "lobby", "abandoned"), 0);

    /* Misuse is an error, not a crash; a malformed record is refused as such
     * (HISTORY_REJECTED) and poisons the batch: all or nothing. */
    CHECK_INT(history_append(h, &r), HISTORY_ERROR);
    CHECK(strstr(history_errmsg(h), "no batch open") != NULL);
    CHECK_INT(history_commit(h), HISTORY_ERROR);
    CHECK_INT(history_begin(h), HISTORY_OK);
    CHECK_INT(history_begin(h), HISTORY_ERROR);
    CHECK_INT(history_append(h, &r), HISTORY_OK);
    r = rec_of("2026-11-27T03:04:05.123Z", "lobby", "ann", "shout", "bad kind");
    CHECK_INT(history_append(h, &r), HISTORY_REJECTED);
    CHECK(strstr(history_errmsg(h), "kind 0 is not one of") != NULL);
    r = rec_of("2026-11-27", "lobby", "ann", "say", "bad time");
    CHECK_INT(history_append(h, &r), HISTORY_REJECTED);
    CHECK(strstr(history_errmsg(h), "kind 0 is not one of") != NULL);  /* the first error is kept */
    CHECK_INT(history_prune_step(h, 0, 10), -1);
    CHECK_INT(history_commit(h), HISTORY_REJECTED);
    CHECK_INT(count_search(h, "lobby", "abandoned"), 0);
    CHECK_INT(count_recent(h, "lobby"), 5000);
    r = rec_of("2026-11-27T03:04:05.123Z", "lobby", "ann", "say", "after");
    r.nick = NULL;
    CHECK_INT(history_begin(h), HISTORY_OK);
    CHECK_INT(history_append(h, &r), HISTORY_REJECTED);
    CHECK(strstr(history_errmsg(h), "missing field") != NULL);
    history_rollback(h);
    CHECK_INT(append_one(h, "2026-11-27T03:04:05.123Z", "lobby", "ann", "say", "after"), HISTORY_OK);
    CHECK_INT(count_recent(h, "lobby"), 5001);
    history_close(h);
    remove_db(path);
}

/* The batch lives in the handle's memory until history_commit: the strings
 * passed to history_append may change right after the call, a table of the
 * same name in the file never stands in for it, and batches far larger
 * than usual come and go whole. */
static void test_batch_memory(void)
{
    const char *path = db_path("batchmem");
    const size_t big = 700000;
    history *h = open_ok(path, NULL);
    history_record r;
    char *body = malloc(big + 1);
    char small[32];
    sqlite3 *db;
    int i;

    CHECK(body != NULL);
    if (!body || !h) {
        free(body);
        history_close(h);
        return;
    }
    db = cli_open(path);
    CHECK_INT(cli_exec(db, "CREATE TABLE history_batch(at, room, nick, kind, body);"
                           "INSERT INTO history_batch VALUES ('2026-11-27T03:04:05.123Z', 'lobby', 'x', 'say', 'intruder')"),
              SQLITE_OK);

    CHECK_INT(history_begin(h), HISTORY_OK);
    for (i = 0; i < 3; i++) {
        snprintf(small, sizeof small, "reused %d", i);
        r = rec_of("2026-11-27T03:04:05.123Z", "lobby", "ann", "say", small);
        CHECK_INT(history_append(h, &r), HISTORY_OK);
        memset(small, '#', sizeof small - 1);   /* the caller's buffer changes at once */
    }
    CHECK_INT(history_commit(h), HISTORY_OK);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM messages"), 3);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM messages WHERE body = 'reused ' || (id - 1)"), 3);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM messages WHERE body = 'intruder'"), 0);
    CHECK_INT(count_search(h, "lobby", "intruder"), 0);

    /* Three lines of 700 kB (2 MB of batch), rolled back, then committed. */
    memset(body, 'x', big);
    body[big] = '\0';
    memcpy(body + big / 2, " needle ", 8);
    CHECK_INT(history_begin(h), HISTORY_OK);
    for (i = 0; i < 3; i++) {
        r = rec_of("2026-11-27T03:04:05.123Z", "lobby", "bob", "say", body);
        CHECK_INT(history_append(h, &r), HISTORY_OK);
    }
    history_rollback(h);
    CHECK_INT(count_search(h, "lobby", "needle"), 0);
    CHECK_INT(history_begin(h), HISTORY_OK);
    for (i = 0; i < 3; i++) {
        body[0] = (char)('a' + i);
        r = rec_of("2026-11-27T03:04:05.123Z", "lobby", "bob", "say", body);
        CHECK_INT(history_append(h, &r), HISTORY_OK);
    }
    CHECK_INT(history_commit(h), HISTORY_OK);
    CHECK_INT(count_search(h, "lobby", "needle"), 3);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM messages WHERE length(body) = 700000"), 3);
    CHECK_INT(cli_int(db, "SELECT group_concat(substr(body, 1, 1), '') = 'abc' FROM"
                          " (SELECT body FROM messages WHERE nick = 'bob' ORDER BY id)"), 1);

    /* And a small batch after the big one. */
    CHECK_INT(append_one(h, "2026-11-27T03:04:05.124Z", "lobby", "cyd", "say", "small again"), HISTORY_OK);
    CHECK_INT(count_recent(h, "lobby"), 7);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM history_batch"), 1);   /* theirs, untouched */
    cli_close(db);
    history_close(h);
    check_fts_consistent(path);
    free(body);
    remove_db(path);
}

static void test_busy(void)
{
    const char *path = db_path("busy");
    history *h = open_ok(path, NULL);   /* busy_timeout 0 */
    sqlite3 *db = cli_open(path);
    history_record batch[3];
    rows got;
    double t0, elapsed;
    int i, rc;

    batch[0] = rec_of("2026-11-27T03:04:05.001Z", "lobby", "ann", "say", "first");
    batch[1] = rec_of("2026-11-27T03:04:05.002Z", "lobby", "bob", "me", "second");
    batch[2] = rec_of("2026-11-27T03:04:05.003Z", "lobby", "cyd", "say", "third");

    CHECK_INT(cli_exec(db, "BEGIN IMMEDIATE; INSERT INTO messages(at, room, nick, kind, body)"
                           " VALUES ('2026-11-27T03:04:05.000Z', 'lobby', 'cli', 'say', 'zeroth')"), SQLITE_OK);
    t0 = monotonic_ms();
    rc = history_begin(h);
    elapsed = monotonic_ms() - t0;
    CHECK_INT(rc, HISTORY_BUSY);
    CHECK(elapsed < 100.0);
    printf("history_begin while locked: HISTORY_BUSY after %.3f ms\n", elapsed);
    CHECK(strstr(history_errmsg(h), "sqlite3_step(BEGIN IMMEDIATE)") != NULL);
    CHECK(strstr(history_errmsg(h), "(code 5)") != NULL);
    /* Nothing is open: appends are refused, and a later begin works. */
    CHECK_INT(history_append(h, &batch[0]), HISTORY_ERROR);
    CHECK_INT(history_prune_step(h, 0, 10), 0);   /* no retention configured: nothing to do */
    CHECK_INT(count_recent(h, "lobby"), 0);       /* readers are not blocked in WAL */

    CHECK_INT(cli_exec(db, "COMMIT"), SQLITE_OK);
    CHECK_INT(history_begin(h), HISTORY_OK);
    for (i = 0; i < 3; i++)
        CHECK_INT(history_append(h, &batch[i]), HISTORY_OK);
    CHECK_INT(history_commit(h), HISTORY_OK);

    memset(&got, 0, sizeof got);
    CHECK_INT(history_recent(h, "lobby", 10, collect, &got), HISTORY_OK);
    CHECK_INT(got.n, 4);
    CHECK_MEM(got.body[0], got.body_len[0], "zeroth");
    CHECK_MEM(got.body[1], got.body_len[1], "first");
    CHECK_MEM(got.body[2], got.body_len[2], "second");
    CHECK_MEM(got.body[3], got.body_len[3], "third");
    CHECK(got.id[0] < got.id[1] && got.id[1] < got.id[2] && got.id[2] < got.id[3]);
    cli_close(db);
    history_close(h);
    remove_db(path);
}

#ifndef _WIN32
/* The disk fills up mid-commit (a file size limit stands in for a full
 * disk): the commit fails with a message naming the call, nothing of the
 * batch is stored, and the same batch commits once there is room again. */
/* What history_commit returned as stored is in the files at that moment,
 * not in some buffer of the process: a child commits batches of 1, 100
 * and 3000 lines, says so through a pipe and is killed with SIGKILL before
 * it can close anything (tests/durability/ sweeps sizes and cache sizes). */
static void test_killed_after_commit(void)
{
    const char *path = db_path("killed");
    int fds[2], status = 0;
    char said = 0;
    pid_t pid;
    sqlite3 *db;

    CHECK_INT(pipe(fds), 0);
    fflush(NULL);
    pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        static const int sizes[] = { 1, 100, 3000 };
        char err[512], body[64];
        history *h = NULL;
        size_t b;
        int i, rc;
        close(fds[0]);
        if (history_open(&h, path, NULL, err, sizeof err) != HISTORY_OK)
            _exit(1);
        for (b = 0; b < sizeof sizes / sizeof sizes[0]; b++) {
            rc = history_begin(h);
            for (i = 0; i < sizes[b] && rc == HISTORY_OK; i++) {
                history_record r;
                snprintf(body, sizeof body, "batch%d line %d of the killed writer", (int)b, i);
                r = rec_of("2026-11-27T03:04:05.123Z", "lobby", "ann", "say", body);
                rc = history_append(h, &r);
            }
            if (rc != HISTORY_OK || history_commit(h) != HISTORY_OK)
                _exit(2);
        }
        if (write(fds[1], "c", 1) != 1)
            _exit(3);
        for (;;)
            pause();
    }
    close(fds[1]);
    CHECK_INT(read(fds[0], &said, 1), 1);
    close(fds[0]);
    CHECK_INT(kill(pid, SIGKILL), 0);
    CHECK_INT(waitpid(pid, &status, 0), pid);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);

    db = cli_open(path);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM messages"), 3101);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH 'batch2 AND killed'"), 3000);
    CHECK_INT(cli_int(db, "SELECT max(id) FROM messages WHERE body = 'batch2 line 2999 of the killed writer'"), 3101);
    cli_close(db);
    check_fts_consistent(path);
    remove_db(path);
}

static void test_disk_full(void)
{
    const char *path = db_path("full");
    history *h = open_ok(path, NULL);
    struct rlimit old_limit, small;
    static char body[4096];
    history_record r;
    int i, rc = HISTORY_OK;
    void (*old_handler)(int);

    memset(body, 'x', sizeof body - 1);
    CHECK_INT(append_one(h, "2026-11-27T03:04:05.123Z", "lobby", "ann", "say", "before"), HISTORY_OK);
    CHECK_INT(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
    small = old_limit;
    small.rlim_cur = 256 * 1024;
    old_handler = signal(SIGXFSZ, SIG_IGN);
    CHECK_INT(setrlimit(RLIMIT_FSIZE, &small), 0);

    CHECK_INT(history_begin(h), HISTORY_OK);
    for (i = 0; i < 300 && rc == HISTORY_OK; i++) {
        r = rec_of("2026-11-27T03:04:05.123Z", "lobby", "ann", "say", body);
        rc = history_append(h, &r);
    }
    CHECK_INT(rc, HISTORY_OK);
    rc = history_commit(h);
    CHECK_INT(rc, HISTORY_ERROR);
    CHECK(strncmp(history_errmsg(h), "sqlite3_step(COMMIT): ", 22) == 0);
    CHECK(strstr(history_errmsg(h), "(code 13") || strstr(history_errmsg(h), "(code 10"));
    printf("disk full: %s\n", history_errmsg(h));
    CHECK_INT(count_recent(h, "lobby"), 1);

    CHECK_INT(setrlimit(RLIMIT_FSIZE, &old_limit), 0);
    signal(SIGXFSZ, old_handler);
    CHECK_INT(history_begin(h), HISTORY_OK);
    for (i = 0, rc = HISTORY_OK; i < 300 && rc == HISTORY_OK; i++) {
        r = rec_of("2026-11-27T03:04:05.123Z", "lobby", "ann", "say", body);
        rc = history_append(h, &r);
    }
    CHECK_INT(rc, HISTORY_OK);
    CHECK_INT(history_commit(h), HISTORY_OK);
    CHECK_INT(count_recent(h, "lobby"), 301);
    history_close(h);
    check_fts_consistent(path);
    remove_db(path);
}
#endif

/* ---- queries ---------------------------------------------------------- */

static void test_recent(void)
{
    const char *path = db_path("recent");
    history *h = open_ok(path, NULL);
    rows got;
    char body[16];
    int i;

    CHECK_INT(history_begin(h), HISTORY_OK);
    for (i = 0; i < 10; i++) {
        history_record r;
        snprintf(body, sizeof body, "a%d", i);
        r = rec_of("2026-11-27T03:04:05.123Z", i % 2 ? "lobby" : "other", "ann", i == 7 ? "msg" : "say", body);
        CHECK_INT(history_append(h, &r), HISTORY_OK);
    }
    CHECK_INT(history_commit(h), HISTORY_OK);

    /* lobby holds a1 a3 a5 a7(private) a9: the last 3 public ones, oldest first */
    memset(&got, 0, sizeof got);
    CHECK_INT(history_recent(h, "lobby", 3, collect, &got), HISTORY_OK);
    CHECK_INT(got.n, 3);
    CHECK_MEM(got.body[0], got.body_len[0], "a3");
    CHECK_MEM(got.body[1], got.body_len[1], "a5");
    CHECK_MEM(got.body[2], got.body_len[2], "a9");
    CHECK_STR(got.nick[0], "ann");
    CHECK_STR(got.kind[0], "say");
    memset(&got, 0, sizeof got);
    got.stop_after = 2;
    CHECK_INT(history_recent(h, "lobby", 100, collect, &got), HISTORY_OK);
    CHECK_INT(got.n, 2);
    CHECK_MEM(got.body[0], got.body_len[0], "a1");
    CHECK_INT(count_recent(h, "other"), 5);
    CHECK_INT(count_recent(h, "nobody-here"), 0);
    memset(&got, 0, sizeof got);
    CHECK_INT(history_recent(h, "lobby", 0, collect, &got), HISTORY_OK);
    CHECK_INT(history_recent(h, "lobby", -5, collect, &got), HISTORY_OK);
    CHECK_INT(got.n, 0);
    history_close(h);
    remove_db(path);
}

static void test_search(void)
{
    static const char *const hostile[] = {
        "\"", "\"\"", "deploy\"", "\"deploy\"", "(deploy", "deploy)", "(", ")", "()",
        "NEAR(deploy friday)", "NEAR(deploy friday, 2)", "NEAR", "deploy*", "*", "AND", "OR deploy",
        "NOT", "deploy NOT friday", "body:deploy", "{body}:deploy", "^deploy", "-deploy", "+", "'",
        "''", "\"\"\"\"", "   ", "", "\t\n", "deploy AND", "a\"b\"c", "caf\xc3\xa9", "\xff\xfe",
        "rowid:1", "messages_fts", "*deploy*", "dep\"loy", ":", "\\", "%", "_", "\"\"\"", "\" \"",
        "a \" b \" c", "\"\" \"\" \"\"",
    };
    const char *path = db_path("search");
    history *h = open_ok(path, NULL);
    rows got;
    size_t i;

    CHECK_INT(history_begin(h), HISTORY_OK);
    {
        history_record r[9];
        r[0] = rec_of("2026-11-27T01:00:00.000Z", "ops", "ann", "say", "we deploy on friday");
        r[1] = rec_of("2026-11-27T02:00:00.000Z", "ops", "bob", "me", "hates the deploy");
        r[2] = rec_of("2026-11-27T03:00:00.000Z", "dev", "cyd", "say", "deploy in dev");
        r[3] = rec_of("2026-11-27T04:00:00.000Z", "ops", "dan", "msg", "secret deploy key");
        r[4] = rec_of("2026-11-27T05:00:00.000Z", "ops", "eve", "say", "the deployment is done");
        r[5] = rec_of("2026-11-27T06:00:00.000Z", "ops", "fay", "say", "this or that, near me");
        r[6] = rec_of("2026-11-27T07:00:00.000Z", "ops", "gus", "say", "DEPLOY again on Friday");
        r[7] = rec_of("2026-11-27T08:00:00.000Z", "ops", "hal", "say", "caf\xc3\xa9 time");
        r[8] = rec_of("2026-11-27T09:00:00.000Z", "ops", "ivy", "say", "a\"b\"c quoted");
        for (i = 0; i < 9; i++)
            CHECK_INT(history_append(h, &r[i]), HISTORY_OK);
    }
    CHECK_INT(history_commit(h), HISTORY_OK);

    /* Room only, no private messages, newest first, case-insensitive. */
    memset(&got, 0, sizeof got);
    CHECK_INT(history_search(h, "ops", "deploy", 10, collect, &got), HISTORY_OK);
    CHECK_INT(got.n, 3);
    CHECK_STR(got.nick[0], "gus");
    CHECK_STR(got.nick[1], "bob");
    CHECK_STR(got.nick[2], "ann");
    CHECK(got.id[0] > got.id[1] && got.id[1] > got.id[2]);
    memset(&got, 0, sizeof got);
    CHECK_INT(history_search(h, "ops", "deploy", 2, collect, &got), HISTORY_OK);
    CHECK_INT(got.n, 2);
    CHECK_STR(got.nick[1], "bob");
    memset(&got, 0, sizeof got);
    got.stop_after = 1;
    CHECK_INT(history_search(h, "ops", "deploy", 10, collect, &got), HISTORY_OK);
    CHECK_INT(got.n, 1);
    CHECK_INT(count_search(h, "ops", "DEPLOY friday"), 2);   /* words are ANDed */
    CHECK_INT(count_search(h, "dev", "deploy"), 1);
    CHECK_INT(count_search(h, "ops", "secret"), 0);          /* only in a private message */
    CHECK_INT(count_search(h, "ops", "deploy"), 3);
    CHECK_INT(count_search(h, "nobody", "deploy"), 0);

    /* FTS5 syntax is quoted away: operators are words, a star is no prefix. */
    CHECK_INT(count_search(h, "ops", "deploy*"), 3);          /* not "deployment" */
    CHECK_INT(count_search(h, "ops", "deployment"), 1);
    CHECK_INT(count_search(h, "ops", "OR"), 1);               /* the word "or" */
    CHECK_INT(count_search(h, "ops", "NEAR"), 1);
    CHECK_INT(count_search(h, "ops", "NEAR(deploy friday)"), 0); /* the phrase "near deploy", and "friday" */
    CHECK_INT(count_search(h, "ops", "NEAR( me"), 1);         /* "near" and "me": fay's line */
    CHECK_INT(count_search(h, "ops", "deploy NOT friday"), 0); /* "not" is a word nobody wrote */
    CHECK_INT(count_search(h, "ops", "(deploy"), 3);
    CHECK_INT(count_search(h, "ops", "\"deploy\""), 3);
    CHECK_INT(count_search(h, "ops", "( deploy )"), 3);      /* punctuation-only words drop out */
    CHECK_INT(count_search(h, "ops", "a\"b\"c"), 1);
    CHECK_INT(count_search(h, "ops", "caf\xc3\xa9"), 1);
    CHECK_INT(count_search(h, "ops", "body:deploy"), 0);      /* the phrase "body deploy" */
    CHECK_INT(count_search(h, "ops", ""), 0);
    CHECK_INT(count_search(h, "ops", "   "), 0);
    for (i = 0; i < sizeof hostile / sizeof hostile[0]; i++) {
        memset(&got, 0, sizeof got);
        CHECK_INT(history_search(h, "ops", hostile[i], 10, collect, &got), HISTORY_OK);
    }
    CHECK_INT(history_search(h, "ops", "deploy", 0, collect, &got), HISTORY_OK);
    history_close(h);
    check_fts_consistent(path);
    remove_db(path);
}

static void test_odd_bodies(void)
{
    const char *path = db_path("bodies");
    history *h = open_ok(path, NULL);
    static const char with_nul[] = "before\0after nul";
    static const char bad_utf8[] = "caf\xc3 \xff\xfe \xed\xa0\x80 ok";
    history_record r;
    rows got;
    sqlite3 *db;

    CHECK_INT(history_begin(h), HISTORY_OK);
    r = rec_of("2026-11-27T03:04:05.123Z", "lobby", "ann", "say", "");
    r.body = with_nul;
    r.body_len = sizeof with_nul - 1;
    CHECK_INT(history_append(h, &r), HISTORY_OK);
    r.body = bad_utf8;
    r.body_len = sizeof bad_utf8 - 1;
    CHECK_INT(history_append(h, &r), HISTORY_OK);
    r.body = NULL;   /* an empty body may come without a pointer */
    r.body_len = 0;
    CHECK_INT(history_append(h, &r), HISTORY_OK);
    CHECK_INT(history_commit(h), HISTORY_OK);

    memset(&got, 0, sizeof got);
    CHECK_INT(history_recent(h, "lobby", 10, collect, &got), HISTORY_OK);
    CHECK_INT(got.n, 3);
    CHECK_INT(got.body_len[0], sizeof with_nul - 1);
    CHECK(memcmp(got.body[0], with_nul, sizeof with_nul - 1) == 0);
    CHECK_INT(got.body_len[1], sizeof bad_utf8 - 1);
    CHECK(memcmp(got.body[1], bad_utf8, sizeof bad_utf8 - 1) == 0);
    CHECK_INT(got.body_len[2], 0);

    /* The words after the NUL are indexed too, and found through search. */
    memset(&got, 0, sizeof got);
    CHECK_INT(history_search(h, "lobby", "after", 10, collect, &got), HISTORY_OK);
    CHECK_INT(got.n, 1);
    CHECK_INT(got.body_len[0], sizeof with_nul - 1);
    CHECK_INT(count_search(h, "lobby", "ok"), 1);
    history_close(h);

    /* Stored as TEXT of the right length; deleting them from the CLI keeps FTS consistent. */
    db = cli_open(path);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM messages WHERE typeof(body) = 'text'"), 3);
    CHECK_INT(cli_int(db, "SELECT length(CAST(body AS BLOB)) FROM messages ORDER BY id LIMIT 1"),
              sizeof with_nul - 1);
    cli_close(db);
    check_fts_consistent(path);
    db = cli_open(path);
    CHECK_INT(cli_exec(db, "DELETE FROM messages WHERE id IN (1, 2)"), SQLITE_OK);
    cli_close(db);
    check_fts_consistent(path);
    h = open_ok(path, NULL);
    CHECK_INT(count_search(h, "lobby", "after"), 0);
    CHECK_INT(count_recent(h, "lobby"), 1);
    history_close(h);
    remove_db(path);
}

/* ---- retention -------------------------------------------------------- */

static void test_prune_by_count(void)
{
    const char *path = db_path("prune-count");
    history_options opt;
    history *h;
    rows got;
    char body[32];
    int i, n, total = 0, steps = 0;

    memset(&opt, 0, sizeof opt);
    opt.retain_messages = 10;
    h = open_ok(path, &opt);
    CHECK_INT(history_prune_step(h, 0, 100), 0);   /* empty database */
    CHECK_INT(history_begin(h), HISTORY_OK);
    for (i = 1; i <= 25; i++) {
        history_record r;
        snprintf(body, sizeof body, "%s number%d", i <= 15 ? "oldword" : "newword", i);
        r = rec_of("2026-11-27T03:04:05.123Z", i % 2 ? "lobby" : "other", "ann", "say", body);
        CHECK_INT(history_append(h, &r), HISTORY_OK);
    }
    CHECK_INT(history_commit(h), HISTORY_OK);
    CHECK_INT(count_search(h, "lobby", "oldword"), 8);

    while ((n = history_prune_step(h, 0, 4)) > 0 && steps < 100) {
        CHECK(n <= 4);
        total += n;
        steps++;
    }
    CHECK_INT(n, 0);
    CHECK_INT(total, 15);
    CHECK_INT(steps, 4);   /* 4 + 4 + 4 + 3 */
    CHECK_INT(count_recent(h, "lobby") + count_recent(h, "other"), 10);
    CHECK_INT(count_search(h, "lobby", "oldword"), 0);
    CHECK_INT(count_search(h, "other", "oldword"), 0);
    CHECK_INT(count_search(h, "lobby", "newword"), 5);
    memset(&got, 0, sizeof got);
    CHECK_INT(history_recent(h, "other", 100, collect, &got), HISTORY_OK);
    CHECK_MEM(got.body[0], got.body_len[0], "newword number16");
    CHECK_INT(history_prune_step(h, 0, 0), 0);
    history_close(h);
    check_fts_consistent(path);
    remove_db(path);
}

static void test_prune_by_days(void)
{
    const int64_t day_ms = 86400000;
    const int64_t now = INT64_C(1795748645123);   /* 2026-11-27T03:04:05.123Z */
    /* Age in days of each row, in insertion order.  Exactly 7 days old is
     * still kept; older goes. */
    static const int ages[] = { 30, 10, 10, 9, 8, 8, 7, 1, 0, 0 };
    const char *path = db_path("prune-days");
    history_options opt;
    history *h;
    rows got;
    char at[HISTORY_TIME_LEN + 1];
    size_t i;

    memset(&opt, 0, sizeof opt);
    opt.retain_days = 7;
    h = open_ok(path, &opt);
    CHECK_INT(history_begin(h), HISTORY_OK);
    for (i = 0; i < sizeof ages / sizeof ages[0]; i++) {
        history_record r;
        history_format_time(now - ages[i] * day_ms, at);
        r = rec_of(at, "lobby", "ann", "say", ages[i] > 7 ? "stale words" : "fresh words");
        CHECK_INT(history_append(h, &r), HISTORY_OK);
    }
    CHECK_INT(history_commit(h), HISTORY_OK);
    CHECK_INT(count_search(h, "lobby", "stale"), 6);

    /* Bounded steps: each looks at the oldest max_rows rows only. */
    CHECK_INT(history_prune_step(h, now, 4), 4);
    CHECK_INT(history_prune_step(h, now, 4), 2);
    CHECK_INT(history_prune_step(h, now, 4), 0);
    CHECK_INT(count_search(h, "lobby", "stale"), 0);
    CHECK_INT(count_search(h, "lobby", "fresh"), 4);
    memset(&got, 0, sizeof got);
    CHECK_INT(history_recent(h, "lobby", 100, collect, &got), HISTORY_OK);
    CHECK_INT(got.n, 4);
    CHECK_INT(got.id[0], 7);
    /* A day later, the 7-day-old row is due too. */
    CHECK_INT(history_prune_step(h, now + day_ms, 100), 1);
    CHECK_INT(count_recent(h, "lobby"), 3);
    history_close(h);
    check_fts_consistent(path);

    /* Days and count together: whichever is stricter. */
    opt.retain_messages = 1;
    h = open_ok(path, &opt);
    CHECK_INT(history_prune_step(h, now, 100), 2);
    CHECK_INT(count_recent(h, "lobby"), 1);
    /* Without retention nothing is ever due. */
    history_close(h);
    memset(&opt, 0, sizeof opt);
    h = open_ok(path, &opt);
    CHECK_INT(history_prune_step(h, now + 1000 * day_ms, 100), 0);
    CHECK_INT(count_recent(h, "lobby"), 1);
    history_close(h);
    check_fts_consistent(path);
    remove_db(path);
}

static long file_size(const char *path)
{
    long n = -1;
    FILE *f = fopen(path, "rb");
    if (f) {
        if (fseek(f, 0, SEEK_END) == 0)
            n = ftell(f);
        fclose(f);
    }
    return n;
}

/* Calls history_idle_step until it has nothing left to do; returns how many
 * steps did some work (1000 if it never stops). */
static int idle_until_done(history *h)
{
    int steps = 0, r;
    while (steps < 1000 && (r = history_idle_step(h)) == 1)
        steps++;
    CHECK_INT(history_idle_step(h), 0);
    return steps;
}

static long long segments(const char *path)
{
    sqlite3 *db = cli_open(path);
    long long n = cli_int(db, "SELECT count(DISTINCT segid) FROM messages_fts_idx");
    cli_close(db);
    return n;
}

/* Appends `batches` batches of 20 lines of 2000 bytes (about 12 WAL pages a batch). */
static void append_bulk(history *h, int batches, const char *word)
{
    char body[2001];
    int b, i, rc = HISTORY_OK;
    memset(body, 'x', sizeof body - 1);
    body[sizeof body - 1] = '\0';
    memcpy(body, word, strlen(word));
    body[strlen(word)] = ' ';
    for (b = 0; b < batches && rc == HISTORY_OK; b++) {
        rc = history_begin(h);
        for (i = 0; i < 20 && rc == HISTORY_OK; i++) {
            history_record r = rec_of("2026-11-27T03:04:05.123Z", "lobby", "ann", "say", body);
            rc = history_append(h, &r);
        }
        if (rc == HISTORY_OK)
            rc = history_commit(h);
    }
    CHECK_INT(rc, HISTORY_OK);
}

/* Checkpoints: history_idle_step copies the WAL back into the database file
 * once a megabyte has gathered; without it, commits do so at 16 MiB. */
static void test_idle_checkpoint(void)
{
    const char *path = db_path("idle");
    char wal[320];
    history *h = open_ok(path, NULL);
    long db_before, wal_before;
    history_record r;

    snprintf(wal, sizeof wal, "%s-wal", path);
    CHECK_INT(history_idle_step(h), 0);                 /* nothing written yet */
    append_bulk(h, 2, "first");
    CHECK_INT(history_idle_step(h), 0);                 /* ~25 pages: not worth two fsyncs */
    db_before = file_size(path);
    append_bulk(h, 30, "second");                       /* ~1.5 MB more */
    CHECK_INT(file_size(path), db_before);              /* no commit checkpointed */
    CHECK_INT(history_idle_step(h), 1);
    CHECK(file_size(path) > db_before + 1000000);        /* copied back */
    CHECK(idle_until_done(h) < 100);                    /* then index merges, then nothing is due */
    CHECK_INT(history_idle_step(h), 0);
    CHECK_INT(count_search(h, "lobby", "second"), 600);

    /* A reader in the middle of a read does not make it fail or wait. */
    {
        sqlite3 *db = cli_open(path);
        CHECK_INT(cli_exec(db, "BEGIN; SELECT count(*) FROM messages"), SQLITE_OK);
        append_bulk(h, 30, "third");
        CHECK_INT(history_idle_step(h), 1);
        CHECK_INT(cli_exec(db, "COMMIT"), SQLITE_OK);
        cli_close(db);
    }

    CHECK_INT(history_begin(h), HISTORY_OK);
    r = rec_of("2026-11-27T03:04:05.123Z", "lobby", "ann", "say", "open batch");
    CHECK_INT(history_append(h, &r), HISTORY_OK);
    CHECK_INT(history_idle_step(h), -1);
    CHECK(strstr(history_errmsg(h), "batch is open") != NULL);
    CHECK_INT(history_commit(h), HISTORY_OK);
    history_close(h);

    /* Never idle: the commits keep the WAL bounded by themselves (16 MiB of
     * pages, plus one batch); 50 MB go through it. */
    h = open_ok(path, NULL);
    wal_before = file_size(wal);
    {
        /* SQLite's own automatic checkpoint would keep the WAL near 1000
         * pages (4 MiB); ours lets it reach 16 MiB before a commit does one.
         * So the WAL must pass 8 MiB on the way, and never 18 MiB. */
        long peak = 0;
        int chunk;
        for (chunk = 0; chunk < 12; chunk++) {
            append_bulk(h, 100, "never idle");
            if (file_size(wal) > peak)
                peak = file_size(wal);
        }
        printf("never idle: WAL peak %ld bytes\n", peak);
        CHECK(peak > 8L * 1024 * 1024);
        CHECK(peak < 18L * 1024 * 1024);
    }
    CHECK(file_size(wal) > wal_before);
    history_close(h);
    {
        sqlite3 *db = cli_open(path);
        CHECK_INT(cli_int(db, "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH 'never idle'"), 24000);
        CHECK_INT(cli_int(db, "SELECT count(*) FROM messages"), 24000 + 1240 + 1);
        cli_close(db);
    }
    check_fts_consistent(path);
    remove_db(path);
}

/* The FTS5 merge settings are stored in the file at open, and the idle
 * steps merge the index segments back down; neither changes what is found. */
static void test_idle_merge(void)
{
    const char *path = db_path("merge");
    history *h = open_ok(path, NULL);
    char body[64];
    long long before;
    int b, i, rc = HISTORY_OK;
    sqlite3 *db;

    db = cli_open(path);
    CHECK_INT(cli_int(db, "SELECT v FROM messages_fts_config WHERE k = 'automerge'"), 16);
    CHECK_INT(cli_int(db, "SELECT v FROM messages_fts_config WHERE k = 'crisismerge'"), 64);
    cli_close(db);

    for (b = 0; b < 60 && rc == HISTORY_OK; b++) {     /* one index segment per commit */
        rc = history_begin(h);
        for (i = 0; i < 10 && rc == HISTORY_OK; i++) {
            history_record r;
            snprintf(body, sizeof body, "merge%d word%d common", b, i);
            r = rec_of("2026-11-27T03:04:05.123Z", "lobby", "ann", "say", body);
            rc = history_append(h, &r);
        }
        if (rc == HISTORY_OK)
            rc = history_commit(h);
    }
    CHECK_INT(rc, HISTORY_OK);
    before = segments(path);
    CHECK(before >= 16);
    CHECK(idle_until_done(h) > 0);
    CHECK(segments(path) <= 8);
    CHECK(segments(path) < before);
    CHECK_INT(count_search(h, "lobby", "common"), 600);
    CHECK_INT(count_search(h, "lobby", "merge59"), 10);
    CHECK_INT(count_search(h, "lobby", "word7 merge0"), 1);
    CHECK_INT(history_idle_step(h), 0);                 /* nothing new: no transaction at all */
    history_close(h);
    check_fts_consistent(path);

    /* A setting changed by hand is put back at the next open ... */
    db = cli_open(path);
    CHECK_INT(cli_exec(db, "INSERT INTO messages_fts(messages_fts, rank) VALUES ('automerge', 4)"), SQLITE_OK);
    cli_close(db);
    h = open_ok(path, NULL);
    history_close(h);
    db = cli_open(path);
    CHECK_INT(cli_int(db, "SELECT v FROM messages_fts_config WHERE k = 'automerge'"), 16);
    /* ... unless the file cannot be written then: opening still works. */
    CHECK_INT(cli_exec(db, "INSERT INTO messages_fts(messages_fts, rank) VALUES ('automerge', 4)"), SQLITE_OK);
    CHECK_INT(cli_exec(db, "BEGIN IMMEDIATE"), SQLITE_OK);
    h = open_ok(path, NULL);
    CHECK_STR(history_errmsg(h), "no error");
    CHECK_INT(count_search(h, "lobby", "merge59"), 10);
    CHECK_INT(cli_exec(db, "COMMIT"), SQLITE_OK);
    CHECK_INT(cli_int(db, "SELECT v FROM messages_fts_config WHERE k = 'automerge'"), 4);
    cli_close(db);
    history_close(h);
    remove_db(path);
}

/* Deletes and updates made by hand in the sqlite3 CLI keep the FTS index in step. */
static void test_cli_edits(void)
{
    const char *path = db_path("cli");
    history *h = open_ok(path, NULL);
    sqlite3 *db;

    CHECK_INT(append_one(h, "2026-11-27T03:04:05.123Z", "lobby", "ann", "say", "alpha words"), HISTORY_OK);
    CHECK_INT(append_one(h, "2026-11-27T03:04:05.124Z", "lobby", "bob", "say", "beta words"), HISTORY_OK);
    db = cli_open(path);
    CHECK_INT(cli_exec(db, "DELETE FROM messages WHERE nick = 'ann'"), SQLITE_OK);
    CHECK_INT(cli_exec(db, "UPDATE messages SET body = 'gamma words' WHERE nick = 'bob'"), SQLITE_OK);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH 'words'"), 1);
    CHECK_INT(cli_int(db, "SELECT m.id FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid"
                          " WHERE messages_fts MATCH 'gamma'"), 2);
    cli_close(db);
    CHECK_INT(count_search(h, "lobby", "alpha"), 0);
    CHECK_INT(count_search(h, "lobby", "beta"), 0);
    CHECK_INT(count_search(h, "lobby", "gamma"), 1);
    history_close(h);
    check_fts_consistent(path);
    remove_db(path);
}

/* A common word searched from a quiet room must not scan the whole history
 * on the relay's only thread: the search stops at its budget. */
static void test_search_budget(void)
{
    const char *path = db_path("budget");
    history *h = open_ok(path, NULL);
    char body[64];
    rows got;
    int i;

    CHECK_INT(history_begin(h), HISTORY_OK);
    for (i = 0; i < 300000; i++) {
        snprintf(body, sizeof body, "hello number %d", i);
        history_record r = rec_of("2026-11-27T01:00:00.000Z", "busy", "ann", "say", body);
        if (history_append(h, &r) != HISTORY_OK)
            break;
    }
    CHECK_INT(i, 300000);
    CHECK_INT(history_commit(h), HISTORY_OK);

    memset(&got, 0, sizeof got);
    CHECK_INT(history_search(h, "quiet", "hello", 20, collect, &got), HISTORY_LIMIT);
    CHECK_INT(got.n, 0);
    memset(&got, 0, sizeof got);
    CHECK_INT(history_search(h, "busy", "hello", 20, collect, &got), HISTORY_OK);   /* bounded by LIMIT */
    CHECK_INT(got.n, 20);
    history_close(h);
    remove_db(path);
}


/* ---- refusals, rooms, the WAL's size ---------------------------------- */

/* A record the database refuses (here a trigger a sqlite3 CLI user added;
 * likewise a malformed record) fails the commit as HISTORY_REJECTED, not as
 * a database outage: the caller must find the record, retrying cannot help. */
static void test_rejected_record(void)
{
    const char *path = db_path("rejected");
    history *h = open_ok(path, NULL);
    sqlite3 *db = cli_open(path);
    history_record good = rec_of("2026-11-27T03:04:05.123Z", "lobby", "ann", "say", "fine words");
    history_record bad = rec_of("2026-11-27T03:04:05.123Z", "lobby", "ann", "say", "a forbidden word");
    history_record odd = rec_of("2026-11-27T03:04:05.123Z", "lobby", "ann", "shout", "no such kind");

    CHECK_INT(cli_exec(db, "CREATE TRIGGER no_forbidden BEFORE INSERT ON messages"
                           " WHEN new.body LIKE '%forbidden%' BEGIN SELECT RAISE(ABORT, 'forbidden'); END"),
              SQLITE_OK);
    CHECK_INT(history_begin(h), HISTORY_OK);
    CHECK_INT(history_append(h, &good), HISTORY_OK);
    CHECK_INT(history_append(h, &bad), HISTORY_OK);   /* refused only when SQLite sees it */
    CHECK_INT(history_commit(h), HISTORY_REJECTED);
    CHECK(strstr(history_errmsg(h), "forbidden") != NULL);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM messages"), 0);

    CHECK_INT(history_begin(h), HISTORY_OK);
    CHECK_INT(history_append(h, &odd), HISTORY_REJECTED);
    CHECK_INT(history_append(h, &good), HISTORY_REJECTED);   /* the batch is lost already */
    CHECK_INT(history_commit(h), HISTORY_REJECTED);
    CHECK(strstr(history_errmsg(h), "kind 0 is not one of") != NULL);

    CHECK_INT(append_one(h, good.at, good.room, good.nick, "say", good.body), HISTORY_OK);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM messages"), 1);
    cli_close(db);
    history_close(h);
    remove_db(path);
}

/* Room names are case-insensitive: a room's past is found whatever spelling
 * re-created it, and rows keep the spelling they were said with. */
static void test_room_case(void)
{
    const char *path = db_path("roomcase");
    history *h = open_ok(path, NULL);
    sqlite3 *db;
    rows r;

    CHECK_INT(append_one(h, "2026-11-27T03:04:05.123Z", "Games", "alice", "say", "first move"), HISTORY_OK);
    CHECK_INT(append_one(h, "2026-11-27T03:04:06.123Z", "games", "bob", "say", "second move"), HISTORY_OK);
    CHECK_INT(append_one(h, "2026-11-27T03:04:07.123Z", "lobby", "bob", "say", "elsewhere move"), HISTORY_OK);
    memset(&r, 0, sizeof r);
    CHECK_INT(history_recent(h, "gAmEs", 10, collect, &r), HISTORY_OK);
    CHECK_INT(r.n, 2);
    CHECK_STR(r.nick[0], "alice");
    CHECK_STR(r.nick[1], "bob");
    CHECK_INT(count_search(h, "GAMES", "move"), 2);
    CHECK_INT(count_search(h, "games", "first"), 1);
    history_close(h);
    db = cli_open(path);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM messages WHERE room = 'Games'"), 1);
    /* the index itself compares without case, so the room query is an index walk */
    CHECK_INT(cli_int(db, "SELECT count(*) FROM sqlite_master WHERE name = 'messages_room_id'"
                          " AND sql LIKE '%room COLLATE NOCASE, id%'"), 1);
    cli_close(db);
    remove_db(path);
}

/* A version 1 file (the room index compared case) is brought to version 2
 * at open, rows untouched, and its rooms are then found without case. */
static void test_migrate_from_v1(void)
{
    const char *path = db_path("v1");
    sqlite3 *db = cli_open(path);
    history *h;

    CHECK_INT(cli_exec(db,
        "CREATE TABLE messages(id INTEGER PRIMARY KEY, at TEXT NOT NULL, room TEXT NOT NULL,"
        " nick TEXT NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL);"
        "CREATE INDEX messages_room_id ON messages(room, id);"
        "CREATE VIRTUAL TABLE messages_fts USING fts5(body, content='messages', content_rowid='id');"
        "CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN"
        "  INSERT INTO messages_fts(rowid, body) VALUES (new.id, new.body); END;"
        "CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN"
        "  INSERT INTO messages_fts(messages_fts, rowid, body) VALUES ('delete', old.id, old.body); END;"
        "CREATE TRIGGER messages_fts_update AFTER UPDATE ON messages BEGIN"
        "  INSERT INTO messages_fts(messages_fts, rowid, body) VALUES ('delete', old.id, old.body);"
        "  INSERT INTO messages_fts(rowid, body) VALUES (new.id, new.body); END;"
        "INSERT INTO messages(at, room, nick, kind, body) VALUES"
        " ('2026-11-27T03:04:05.123Z', 'Games', 'alice', 'say', 'old times'),"
        " ('2026-11-27T03:04:06.123Z', 'games', 'bob', 'say', 'older times');"
        "PRAGMA user_version = 1; PRAGMA journal_mode = WAL;"), SQLITE_OK);
    cli_close(db);
    h = open_ok(path, NULL);
    CHECK_INT(count_recent(h, "GAMES"), 2);
    CHECK_INT(count_search(h, "Games", "times"), 2);
    history_close(h);
    db = cli_open(path);
    CHECK_INT(cli_int(db, "PRAGMA user_version"), HISTORY_SCHEMA_VERSION);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM messages WHERE room = 'Games' AND body = 'old times'"), 1);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM sqlite_master WHERE name = 'messages_room_id'"
                          " AND sql LIKE '%COLLATE NOCASE%'"), 1);
    cli_close(db);
    check_fts_consistent(path);
    remove_db(path);
}

/* A reader holding a snapshot lets the WAL grow past its bound (no
 * checkpoint can restart it); once the reader is gone, idle steps bring the
 * file back, never waiting for the reader while it is there. */
static void test_wal_shrinks_after_reader(void)
{
    const char *path = db_path("walshrink");
    char wal[320];
    history *h = open_ok(path, NULL);
    sqlite3 *db = cli_open(path);
    double t0;
    int steps;

    snprintf(wal, sizeof wal, "%s-wal", path);
    append_bulk(h, 2, "before");
    CHECK_INT(cli_exec(db, "BEGIN; SELECT count(*) FROM messages"), SQLITE_OK);
    append_bulk(h, 400, "held");                        /* 16 MB of text while the reader holds its snapshot */
    CHECK(file_size(wal) > 40L * 1024 * 1024);
    t0 = monotonic_ms();
    for (steps = 0; steps < 50; steps++)
        CHECK(history_idle_step(h) >= 0);               /* the reader is still there: no error */
    printf("50 idle steps with a reader: %.1f ms; WAL %ld bytes\n", monotonic_ms() - t0, file_size(wal));
    CHECK(file_size(wal) > 40L * 1024 * 1024);          /* it could not be cut yet */
    CHECK_INT(cli_exec(db, "COMMIT"), SQLITE_OK);
    idle_until_done(h);
    printf("after the reader left: WAL %ld bytes\n", file_size(wal));
    CHECK(file_size(wal) <= 1L * 1024 * 1024);
    CHECK_INT(count_search(h, "lobby", "held"), 1000);  /* count_search stops at 1000 */
    cli_close(db);
    history_close(h);
    db = cli_open(path);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM messages"), (400 + 2) * 20);
    cli_close(db);
    check_fts_consistent(path);
    remove_db(path);
}

/* A database this process cannot write fails the open, naming the file and
 * the cause, instead of opening and then refusing every line. */
static void test_unwritable(void)
{
    const char *path = db_path("unwritable");
    char err[512];
    history *h = open_ok(path, NULL);
    CHECK_INT(append_one(h, "2026-11-27T03:04:05.123Z", "lobby", "ann", "say", "written once"), HISTORY_OK);
    history_close(h);
#ifdef _WIN32
    /* Under Wine the read-only attribute is the Unix mode, which root (CI)
     * ignores, and there are no file size limits: the end-to-end tests put
     * the file on a read-only filesystem instead (e2e.service). */
    (void)err;
    printf("SKIPPED under Windows: test_unwritable (no way to deny root a write here)\n");
#else
    /* Root ignores file modes.  A file size limit makes every write that
     * grows a file fail, as a full or read-only volume would: a second
     * connection keeps the -shm and the WAL in place (no checkpoint can
     * restart the WAL while it reads), so the proof's WAL frame is the
     * first write past the limit. */
    {
        struct rlimit old_limit, limit;
        char wal[320];
        sqlite3 *db;
        void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
        snprintf(wal, sizeof wal, "%s-wal", path);
        h = open_ok(path, NULL);
        db = cli_open(path);
        CHECK_INT(cli_exec(db, "BEGIN; SELECT count(*) FROM messages"), SQLITE_OK);
        history_close(h);
        CHECK(file_size(wal) > 0);
        CHECK_INT(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
        limit = old_limit;
        limit.rlim_cur = (rlim_t)file_size(wal);
        CHECK_INT(setrlimit(RLIMIT_FSIZE, &limit), 0);
        h = NULL;
        CHECK_INT(history_open(&h, path, NULL, err, sizeof err), HISTORY_ERROR);
        CHECK(h == NULL);
        printf("unwritable database: %s\n", err);
        CHECK(strstr(err, path) != NULL);
        CHECK(strstr(err, "cannot write the database") != NULL);
        CHECK_INT(setrlimit(RLIMIT_FSIZE, &old_limit), 0);
        signal(SIGXFSZ, old_handler);
        CHECK_INT(cli_exec(db, "COMMIT"), SQLITE_OK);
        cli_close(db);
    }
#endif
    h = open_ok(path, NULL);   /* writable again: opens, and the row is still there */
    CHECK_INT(count_recent(h, "lobby"), 1);
    history_close(h);
    remove_db(path);
}

/* ---- cluster mode ----------------------------------------------------- */

#define STREAM_CREATED "2026-12-01T10:00:00.123456789Z"
#define STREAM_RECREATED "2026-12-02T08:30:00.5Z"

/* history_cluster_state, checked to succeed; returns *bound, fills seq. */
static int cluster_state_ok(history *h, char *stream, char *created, uint64_t *seq)
{
    int bound = -1;
    int r = history_cluster_state(h, &bound, stream, 64, created, 64, seq);
    CHECK_INT(r, HISTORY_OK);
    if (r != HISTORY_OK)
        fprintf(stderr, "  history_cluster_state: %s\n", history_errmsg(h));
    return bound;
}

static uint64_t applied_of(history *h)
{
    char stream[64], created[64];
    uint64_t seq = 999999;
    CHECK_INT(cluster_state_ok(h, stream, created, &seq), 1);
    return seq;
}

/* One batch of n lines "<tag> <i>" that applies the stream up to seq. */
static int commit_applied(history *h, const char *tag, int n, uint64_t seq)
{
    char body[64];
    int i, r = history_begin(h);
    for (i = 0; i < n && r == HISTORY_OK; i++) {
        history_record rec;
        snprintf(body, sizeof body, "%s %d", tag, i);
        rec = rec_of("2026-12-01T10:00:01.000Z", "lobby", "ann", "say", body);
        r = history_append(h, &rec);
    }
    if (r == HISTORY_OK)
        r = history_cluster_applied(h, seq);
    if (r == HISTORY_OK)
        return history_commit(h);
    history_rollback(h);
    return r;
}

/* A new file is unbound; binding it stores one row at sequence 0; binding
 * it again to the same stream is fine, to another name or another creation
 * of the same name is refused with a reason naming both. */
static void test_cluster_bind(void)
{
    const char *path = db_path("cbind");
    char stream[64], created[64], err[512], tiny[4];
    uint64_t seq = 77;
    int bound = -1;
    history *h = open_ok(path, NULL);
    sqlite3 *db;

    CHECK_INT(cluster_state_ok(h, stream, created, &seq), 0);
    CHECK_STR(stream, "");
    CHECK_STR(created, "");
    CHECK_INT(seq, 0);
    CHECK_INT(history_cluster_state(h, &bound, NULL, 0, NULL, 0, NULL), HISTORY_OK);
    CHECK_INT(bound, 0);
    db = cli_open(path);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM cluster"), 0);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM pragma_table_info('cluster')"), 4);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM pragma_table_info('cluster') WHERE \"notnull\" = 1"), 3);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM pragma_table_info('cluster_gaps') WHERE \"notnull\" = 1"), 3);

    CHECK_INT(history_cluster_bind(h, "CHAT", STREAM_CREATED, err, sizeof err), HISTORY_OK);
    CHECK_STR(err, "");
    CHECK_INT(cluster_state_ok(h, stream, created, &seq), 1);
    CHECK_STR(stream, "CHAT");
    CHECK_STR(created, STREAM_CREATED);
    CHECK_INT(seq, 0);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM cluster WHERE id = 1 AND stream = 'CHAT'"
                          " AND stream_created = '" STREAM_CREATED "' AND applied_seq = 0"), 1);
    /* the row has one place only: a second one made by hand is refused */
    CHECK(cli_exec(db, "INSERT INTO cluster VALUES (2, 'X', 'Y', 0)") != SQLITE_OK);

    CHECK_INT(history_cluster_bind(h, "CHAT", STREAM_CREATED, err, sizeof err), HISTORY_OK);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM cluster"), 1);

    CHECK_INT(history_cluster_bind(h, "OTHER", STREAM_CREATED, err, sizeof err), HISTORY_REJECTED);
    printf("bound to another stream: %s\n", err);
    CHECK(strstr(err, "\"CHAT\"") != NULL);
    CHECK(strstr(err, "\"OTHER\"") != NULL);
    CHECK(strchr(err, '\n') == NULL);
    CHECK_STR(history_errmsg(h), err);
    CHECK_INT(history_cluster_bind(h, "CHAT", STREAM_RECREATED, err, sizeof err), HISTORY_REJECTED);
    printf("the stream created again: %s\n", err);
    CHECK(strstr(err, STREAM_CREATED) != NULL);
    CHECK(strstr(err, STREAM_RECREATED) != NULL);
    CHECK(strstr(err, "created again") != NULL);
    CHECK_INT(history_cluster_bind(h, "chat", STREAM_CREATED, err, sizeof err), HISTORY_REJECTED);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM cluster WHERE stream = 'CHAT' AND stream_created = '"
                          STREAM_CREATED "'"), 1);

    /* Misuse: no name, no time, a batch open, a buffer too small. */
    CHECK_INT(history_cluster_bind(h, "", STREAM_CREATED, err, sizeof err), HISTORY_ERROR);
    CHECK_INT(history_cluster_bind(h, "CHAT", NULL, err, sizeof err), HISTORY_ERROR);
    CHECK_INT(history_cluster_bind(h, "CHAT", STREAM_CREATED, NULL, 0), HISTORY_OK);
    CHECK_INT(history_begin(h), HISTORY_OK);
    CHECK_INT(history_cluster_bind(h, "CHAT", STREAM_CREATED, err, sizeof err), HISTORY_ERROR);
    CHECK(strstr(err, "a batch is open") != NULL);
    history_rollback(h);
    CHECK_INT(history_cluster_state(h, &bound, tiny, sizeof tiny, NULL, 0, &seq), HISTORY_ERROR);
    CHECK(strstr(history_errmsg(h), "does not fit") != NULL);
    CHECK_STR(tiny, "");
    cli_close(db);
    history_close(h);

    /* It is in the file: the next start finds it. */
    h = open_ok(path, NULL);
    CHECK_INT(cluster_state_ok(h, stream, created, &seq), 1);
    CHECK_STR(stream, "CHAT");
    CHECK_STR(created, STREAM_CREATED);
    CHECK_INT(history_cluster_bind(h, "OTHER", "2026-12-03T00:00:00Z", err, sizeof err), HISTORY_REJECTED);
    history_close(h);
    remove_db(path);
}

/* A file with lines stored as a single node cannot join a stream. */
static void test_cluster_single_node_refused(void)
{
    const char *path = db_path("csingle");
    char stream[64], created[64], err[512];
    uint64_t seq = 5;
    history *h = open_ok(path, NULL);
    sqlite3 *db;

    CHECK_INT(append_one(h, "2026-11-27T03:04:05.123Z", "lobby", "ann", "say", "alone"), HISTORY_OK);
    CHECK_INT(append_one(h, "2026-11-27T03:04:06.123Z", "lobby", "ann", "say", "still alone"), HISTORY_OK);
    CHECK_INT(history_cluster_bind(h, "CHAT", STREAM_CREATED, err, sizeof err), HISTORY_REJECTED);
    printf("single-node rows: %s\n", err);
    CHECK(strstr(err, "single node") != NULL);
    CHECK(strstr(err, "ids up to 2") != NULL);
    CHECK(strstr(err, "\"CHAT\"") != NULL);
    CHECK_INT(cluster_state_ok(h, stream, created, &seq), 0);
    db = cli_open(path);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM cluster"), 0);
    cli_close(db);
    CHECK_INT(count_recent(h, "lobby"), 2);
    history_close(h);
    remove_db(path);
}

/* The applied sequence is stored with its batch, and not at all when the
 * batch is rolled back or its commit fails. */
static void test_cluster_applied(void)
{
    const char *path = db_path("capplied");
    const char *unbound = db_path("cunbound");
    char err[512];
    history *h = open_ok(path, NULL);
    history *u = open_ok(unbound, NULL);
    history_record rec = rec_of("2026-12-01T10:00:02.000Z", "lobby", "bob", "say", "a forbidden word");
    sqlite3 *db = cli_open(path);

    CHECK_INT(history_cluster_bind(h, "CHAT", STREAM_CREATED, err, sizeof err), HISTORY_OK);
    CHECK_INT(history_cluster_applied(h, 1), HISTORY_ERROR);   /* no batch */
    CHECK(strstr(history_errmsg(h), "no batch open") != NULL);

    /* Stored together, visible only at the commit. */
    CHECK_INT(history_begin(h), HISTORY_OK);
    CHECK_INT(history_append(h, &rec), HISTORY_OK);
    CHECK_INT(history_cluster_applied(h, 2), HISTORY_OK);
    CHECK_INT(applied_of(h), 2);                                   /* the batch sees its own */
    CHECK_INT(cli_int(db, "SELECT applied_seq FROM cluster"), 0);  /* nobody else does yet */
    CHECK_INT(history_commit(h), HISTORY_OK);
    CHECK_INT(cli_int(db, "SELECT applied_seq FROM cluster"), 2);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM messages"), 1);
    CHECK_INT(applied_of(h), 2);

    /* Rolled back: neither the rows nor the sequence. */
    CHECK_INT(history_begin(h), HISTORY_OK);
    CHECK_INT(history_append(h, &rec), HISTORY_OK);
    CHECK_INT(history_cluster_applied(h, 3), HISTORY_OK);
    history_rollback(h);
    CHECK_INT(applied_of(h), 2);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM messages"), 1);

    /* Several sequences in one batch, and a batch of no rows (records the
     * relay does not store still move the sequence on). */
    CHECK_INT(history_begin(h), HISTORY_OK);
    CHECK_INT(history_cluster_applied(h, 4), HISTORY_OK);
    CHECK_INT(history_cluster_applied(h, 7), HISTORY_OK);
    CHECK_INT(history_commit(h), HISTORY_OK);
    CHECK_INT(cli_int(db, "SELECT applied_seq FROM cluster"), 7);
    CHECK_INT(commit_applied(h, "ten", 3, 10), HISTORY_OK);
    CHECK_INT(cli_int(db, "SELECT applied_seq FROM cluster"), 10);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM messages"), 4);

    /* Not after what was applied: an error that loses the whole batch. */
    CHECK_INT(history_begin(h), HISTORY_OK);
    CHECK_INT(history_append(h, &rec), HISTORY_OK);
    CHECK_INT(history_cluster_applied(h, 10), HISTORY_ERROR);
    printf("applied again: %s\n", history_errmsg(h));
    CHECK(strstr(history_errmsg(h), "sequence 10 is not after the one already applied (10)") != NULL);
    CHECK_INT(history_cluster_applied(h, 11), HISTORY_ERROR);     /* poisoned */
    CHECK_INT(history_append(h, &rec), HISTORY_ERROR);
    CHECK_INT(history_commit(h), HISTORY_ERROR);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM messages"), 4);
    CHECK_INT(commit_applied(h, "back", 1, 3), HISTORY_ERROR);
    CHECK_INT(commit_applied(h, "zero", 1, 0), HISTORY_ERROR);
    CHECK_INT(commit_applied(h, "huge", 1, UINT64_MAX), HISTORY_ERROR);
    CHECK(strstr(history_errmsg(h), "past SQLite's largest integer") != NULL);
    CHECK_INT(cli_int(db, "SELECT applied_seq FROM cluster"), 10);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM messages"), 4);

    /* The commit fails (a trigger a sqlite3 user added refuses a row): the
     * sequence goes with the rows. */
    CHECK_INT(cli_exec(db, "CREATE TRIGGER no_forbidden BEFORE INSERT ON messages"
                           " WHEN new.body LIKE '%forbidden%' BEGIN SELECT RAISE(ABORT, 'forbidden'); END"),
              SQLITE_OK);
    CHECK_INT(history_begin(h), HISTORY_OK);
    CHECK_INT(history_append(h, &rec), HISTORY_OK);
    CHECK_INT(history_cluster_applied(h, 11), HISTORY_OK);
    CHECK_INT(history_commit(h), HISTORY_REJECTED);
    CHECK_INT(applied_of(h), 10);
    CHECK_INT(cli_int(db, "SELECT applied_seq FROM cluster"), 10);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM messages"), 4);
    CHECK_INT(cli_exec(db, "DROP TRIGGER no_forbidden"), SQLITE_OK);
    CHECK_INT(commit_applied(h, "eleven", 2, 11), HISTORY_OK);
    CHECK_INT(cli_int(db, "SELECT applied_seq FROM cluster"), 11);

    /* A database never bound has no sequence to move. */
    CHECK_INT(commit_applied(u, "loose", 1, 1), HISTORY_ERROR);
    CHECK(strstr(history_errmsg(u), "not bound to a stream") != NULL);
    CHECK_INT(count_recent(u, "lobby"), 0);
    cli_close(db);
    history_close(u);
    history_close(h);
    check_fts_consistent(path);
    remove_db(path);
    remove_db(unbound);
}

/* A gap is a row of cluster_gaps stored with its batch, after the applied
 * sequence, never inside it. */
static void test_cluster_gap(void)
{
    const char *path = db_path("cgap");
    char err[512];
    history *h = open_ok(path, NULL);
    sqlite3 *db = cli_open(path);

    CHECK_INT(history_cluster_bind(h, "CHAT", STREAM_CREATED, err, sizeof err), HISTORY_OK);
    CHECK_INT(commit_applied(h, "first", 2, 2), HISTORY_OK);
    CHECK_INT(history_cluster_gap(h, 3, 9, "2026-12-01T10:00:03.000Z"), HISTORY_ERROR);   /* no batch */

    CHECK_INT(history_begin(h), HISTORY_OK);
    CHECK_INT(history_cluster_gap(h, 3, 9, "2026-12-01T10:00:03.000Z"), HISTORY_OK);
    CHECK_INT(history_cluster_applied(h, 10), HISTORY_OK);
    history_rollback(h);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM cluster_gaps"), 0);
    CHECK_INT(applied_of(h), 2);

    CHECK_INT(history_begin(h), HISTORY_OK);
    CHECK_INT(history_cluster_gap(h, 3, 9, "2026-12-01T10:00:03.000Z"), HISTORY_OK);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM cluster_gaps"), 0);
    CHECK_INT(history_cluster_applied(h, 10), HISTORY_OK);
    CHECK_INT(history_commit(h), HISTORY_OK);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM cluster_gaps WHERE first_seq = 3 AND last_seq = 9"
                          " AND noted_at = '2026-12-01T10:00:03.000Z'"), 1);
    CHECK_INT(cli_int(db, "SELECT applied_seq FROM cluster"), 10);

    /* A gap in what was applied, or no range at all, loses the batch. */
    CHECK_INT(history_begin(h), HISTORY_OK);
    CHECK_INT(history_cluster_gap(h, 10, 12, "2026-12-01T10:00:04.000Z"), HISTORY_ERROR);
    CHECK(strstr(history_errmsg(h), "at or before the applied sequence 10") != NULL);
    CHECK_INT(history_cluster_applied(h, 13), HISTORY_ERROR);
    CHECK_INT(history_commit(h), HISTORY_ERROR);
    CHECK_INT(history_begin(h), HISTORY_OK);
    CHECK_INT(history_cluster_gap(h, 14, 12, "2026-12-01T10:00:04.000Z"), HISTORY_ERROR);
    history_rollback(h);
    CHECK_INT(history_begin(h), HISTORY_OK);
    CHECK_INT(history_cluster_gap(h, 0, 12, "2026-12-01T10:00:04.000Z"), HISTORY_ERROR);
    history_rollback(h);
    CHECK_INT(history_begin(h), HISTORY_OK);
    CHECK_INT(history_cluster_gap(h, 11, 12, "yesterday"), HISTORY_ERROR);
    history_rollback(h);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM cluster_gaps"), 1);
    CHECK_INT(cli_int(db, "SELECT applied_seq FROM cluster"), 10);
    cli_close(db);
    history_close(h);
    remove_db(path);
}

/* A version 3 file (before cluster mode) is brought to version 4 at open
 * with its rows untouched, unbound; one with a table of ours already called
 * cluster is refused and left at version 3. */
static void test_migrate_from_v3(void)
{
    static const char v3_schema[] =
        "CREATE TABLE messages(id INTEGER PRIMARY KEY, at TEXT NOT NULL, room TEXT NOT NULL,"
        " nick TEXT NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL);"
        "CREATE INDEX messages_room_id ON messages(room COLLATE NOCASE, id);"
        "CREATE VIRTUAL TABLE messages_fts USING fts5(body, content='messages', content_rowid='id');"
        "CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN"
        "  INSERT INTO messages_fts(rowid, body) VALUES (new.id, new.body); END;"
        "CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN"
        "  INSERT INTO messages_fts(messages_fts, rowid, body) VALUES ('delete', old.id, old.body); END;"
        "CREATE TRIGGER messages_fts_update AFTER UPDATE ON messages BEGIN"
        "  INSERT INTO messages_fts(messages_fts, rowid, body) VALUES ('delete', old.id, old.body);"
        "  INSERT INTO messages_fts(rowid, body) VALUES (new.id, new.body); END;"
        "CREATE INDEX messages_topic ON messages(room COLLATE NOCASE, id) WHERE kind = 'topic';"
        "INSERT INTO messages(at, room, nick, kind, body) VALUES"
        " ('2026-11-27T03:04:05.123Z', 'lobby', 'alice', 'say', 'version three words'),"
        " ('2026-11-27T03:04:06.123Z', 'lobby', 'bob', 'topic', 'three topics');"
        "PRAGMA user_version = 3; PRAGMA journal_mode = WAL;";
    const char *path = db_path("v3");
    const char *clash = db_path("v3clash");
    char stream[64], created[64], err[512];
    uint64_t seq = 9;
    history *h = NULL;
    sqlite3 *db = cli_open(path);

    CHECK_INT(cli_exec(db, v3_schema), SQLITE_OK);
    cli_close(db);
    h = open_ok(path, NULL);
    if (!h) {
        remove_db(path);
        return;
    }
    CHECK_INT(count_recent(h, "lobby"), 2);
    CHECK_INT(count_search(h, "lobby", "three"), 2);
    CHECK_INT(cluster_state_ok(h, stream, created, &seq), 0);
    CHECK_INT(history_cluster_bind(h, "CHAT", STREAM_CREATED, err, sizeof err), HISTORY_REJECTED);
    history_close(h);
    db = cli_open(path);
    CHECK_INT(cli_int(db, "PRAGMA user_version"), HISTORY_SCHEMA_VERSION);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM messages WHERE id = 1 AND body = 'version three words'"), 1);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
                          " AND name IN ('cluster', 'cluster_gaps')"), 2);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM cluster"), 0);
    cli_close(db);
    check_fts_consistent(path);

    db = cli_open(clash);
    CHECK_INT(cli_exec(db, v3_schema), SQLITE_OK);
    CHECK_INT(cli_exec(db, "CREATE TABLE cluster(node TEXT); INSERT INTO cluster VALUES ('theirs');"), SQLITE_OK);
    cli_close(db);
    CHECK_INT(history_open(&h, clash, NULL, err, sizeof err), HISTORY_ERROR);
    CHECK(h == NULL);
    CHECK(strstr(err, "from version 3 to " STR(HISTORY_SCHEMA_VERSION) " failed") != NULL);
    CHECK(strstr(err, "already exists") != NULL);
    db = cli_open(clash);
    CHECK_INT(cli_int(db, "PRAGMA user_version"), 3);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM cluster WHERE node = 'theirs'"), 1);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM sqlite_master WHERE name = 'cluster_gaps'"), 0);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM messages"), 2);
    cli_close(db);
    remove_db(path);
    remove_db(clash);
}

/* A cluster row changed by hand into something chatrelay never writes is
 * a clear HISTORY_ERROR wherever it is read, never a guess or a crash. */
static void test_cluster_row_damaged(void)
{
    static const struct {
        const char *set, *says;
    } damage[] = {
        { "applied_seq = -5", "applied_seq is -5" },
        { "applied_seq = 'abc'", "applied_seq is text (abc), not an integer" },
        { "applied_seq = 2.5", "applied_seq is a real (2.5), not an integer" },
        { "applied_seq = 'line' || char(10) || 'break'", "applied_seq is text (line?break), not an integer" },
        { "applied_seq = X'0102'", "applied_seq is a blob of 2 bytes, not an integer" },
        { "stream = X'43'", "stream is a blob of 1 bytes, not text" },
        { "stream_created = X'00'", "stream_created is a blob of 1 bytes, not text" },
    };
    const char *path = db_path("cdamaged");
    char stream[64], created[64], err[512];
    uint64_t seq = 0;
    int bound = -1;
    size_t i;
    history *h = open_ok(path, NULL);
    sqlite3 *db = cli_open(path);

    CHECK_INT(history_cluster_bind(h, "CHAT", STREAM_CREATED, err, sizeof err), HISTORY_OK);
    CHECK_INT(commit_applied(h, "before", 1, 4), HISTORY_OK);
    for (i = 0; i < sizeof damage / sizeof damage[0]; i++) {
        char sql[128];
        snprintf(sql, sizeof sql, "UPDATE cluster SET %s", damage[i].set);
        CHECK_INT(cli_exec(db, sql), SQLITE_OK);
        seq = 1234;
        CHECK_INT(history_cluster_state(h, &bound, stream, sizeof stream, created, sizeof created, &seq),
                  HISTORY_ERROR);
        printf("damaged (%s): %s\n", damage[i].set, history_errmsg(h));
        CHECK(strstr(history_errmsg(h), "history_cluster_state: the cluster row was changed by hand") != NULL);
        CHECK(strstr(history_errmsg(h), damage[i].says) != NULL);
        CHECK_INT(bound, 0);
        CHECK_INT(seq, 0);
        CHECK_INT(history_cluster_bind(h, "CHAT", STREAM_CREATED, err, sizeof err), HISTORY_ERROR);
        CHECK(strstr(err, "history_cluster_bind: the cluster row was changed by hand") != NULL);
        CHECK_INT(commit_applied(h, "after", 1, 5), HISTORY_ERROR);
        CHECK(strstr(history_errmsg(h), "history_cluster_applied: the cluster row was changed by hand") != NULL);
        CHECK_INT(cli_exec(db, "UPDATE cluster SET stream = 'CHAT', stream_created = '" STREAM_CREATED "',"
                               " applied_seq = 4"), SQLITE_OK);
    }
    CHECK_INT(cli_int(db, "SELECT count(*) FROM messages"), 1);
    /* Names compare byte for byte: one with a NUL inside is another name. */
    CHECK_INT(cli_exec(db, "UPDATE cluster SET stream = 'CHAT' || char(0) || 'X'"), SQLITE_OK);
    CHECK_INT(history_cluster_bind(h, "CHAT", STREAM_CREATED, err, sizeof err), HISTORY_REJECTED);
    CHECK_INT(cli_exec(db, "UPDATE cluster SET stream = 'CHAT'"), SQLITE_OK);
    CHECK_INT(history_cluster_bind(h, "CHAT", STREAM_CREATED, err, sizeof err), HISTORY_OK);
    /* A number written as text is an integer once stored (INTEGER affinity). */
    CHECK_INT(cli_exec(db, "UPDATE cluster SET applied_seq = '12'"), SQLITE_OK);
    CHECK_INT(applied_of(h), 12);
    CHECK_INT(commit_applied(h, "after", 1, 13), HISTORY_OK);
    cli_close(db);
    history_close(h);
    remove_db(path);
}

#ifndef _WIN32
/* A node killed -9 resumes right after what its file holds: a child
 * commits batches with their sequences, opens one more batch that applies
 * sequence 6102 (its UPDATE is in the open transaction), says so and is
 * killed; the file then holds the three batches and sequence 3101. */
static void test_cluster_killed(void)
{
    const char *path = db_path("ckilled");
    history_options opt;
    int fds[2], status = 0;
    char said = 0;
    pid_t pid;
    history *h;
    sqlite3 *db;

    memset(&opt, 0, sizeof opt);
    opt.cache_pages = 10;
    CHECK_INT(pipe(fds), 0);
    fflush(NULL);
    pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        static const int sizes[] = { 1, 100, 3000 };
        char err[512];
        uint64_t seq = 0;
        size_t b;
        h = NULL;
        close(fds[0]);
        if (history_open(&h, path, &opt, err, sizeof err) != HISTORY_OK ||
            history_cluster_bind(h, "CHAT", STREAM_CREATED, err, sizeof err) != HISTORY_OK)
            _exit(1);
        for (b = 0; b < sizeof sizes / sizeof sizes[0]; b++) {
            seq += (uint64_t)sizes[b];
            if (commit_applied(h, "killed", sizes[b], seq) != HISTORY_OK)
                _exit(2);
        }
        if (history_begin(h) != HISTORY_OK || history_cluster_applied(h, seq + 3001) != HISTORY_OK)
            _exit(3);
        if (write(fds[1], "c", 1) != 1)
            _exit(4);
        for (;;)
            pause();
    }
    close(fds[1]);
    CHECK_INT(read(fds[0], &said, 1), 1);
    close(fds[0]);
    CHECK_INT(kill(pid, SIGKILL), 0);
    CHECK_INT(waitpid(pid, &status, 0), pid);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);

    db = cli_open(path);
    CHECK_INT(cli_int(db, "SELECT applied_seq FROM cluster"), 3101);
    CHECK_INT(cli_int(db, "SELECT count(*) FROM messages"), 3101);
    cli_close(db);
    h = open_ok(path, NULL);
    CHECK_INT(applied_of(h), 3101);
    CHECK_INT(commit_applied(h, "resumed", 1, 3102), HISTORY_OK);
    history_close(h);
    check_fts_consistent(path);
    remove_db(path);
}

/* The commit itself fails (a file size limit stands in for a full disk):
 * the sequence is not stored, and the same batch commits once there is room. */
static void test_cluster_commit_fails(void)
{
    const char *path = db_path("cfull");
    static char body[4096];
    struct rlimit old_limit, small;
    void (*old_handler)(int);
    char err[512];
    history *h = open_ok(path, NULL);
    int attempt, i, r;

    memset(body, 'x', sizeof body - 1);
    CHECK_INT(history_cluster_bind(h, "CHAT", STREAM_CREATED, err, sizeof err), HISTORY_OK);
    CHECK_INT(commit_applied(h, "before", 1, 1), HISTORY_OK);
    CHECK_INT(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
    old_handler = signal(SIGXFSZ, SIG_IGN);
    for (attempt = 0; attempt < 2; attempt++) {
        if (attempt == 0) {
            small = old_limit;
            small.rlim_cur = 256 * 1024;
            CHECK_INT(setrlimit(RLIMIT_FSIZE, &small), 0);
        }
        r = history_begin(h);
        for (i = 0; i < 300 && r == HISTORY_OK; i++) {
            history_record rec = rec_of("2026-12-01T10:00:05.000Z", "lobby", "ann", "say", body);
            r = history_append(h, &rec);
        }
        if (r == HISTORY_OK)
            r = history_cluster_applied(h, 301);
        CHECK_INT(r, HISTORY_OK);
        r = history_commit(h);
        if (attempt == 0) {
            CHECK_INT(r, HISTORY_ERROR);
            printf("cluster batch on a full disk: %s\n", history_errmsg(h));
            CHECK_INT(setrlimit(RLIMIT_FSIZE, &old_limit), 0);
            CHECK_INT(applied_of(h), 1);
            CHECK_INT(count_recent(h, "lobby"), 1);
        } else {
            CHECK_INT(r, HISTORY_OK);
            CHECK_INT(applied_of(h), 301);
            CHECK_INT(count_recent(h, "lobby"), 301);
        }
    }
    signal(SIGXFSZ, old_handler);
    history_close(h);
    remove_db(path);
}
#endif

int main(int argc, char **argv)
{
    const char *dir = getenv("CHATRELAY_TEST_DIR");
    int local;
    if (argc > 1)
        dir = argv[1];
    /* Unique per run: the time and a stack address (randomised by ASLR). */
    snprintf(file_prefix, sizeof file_prefix, "%s%sth-%lx-%lx-", dir ? dir : "", dir ? "/" : "",
             (unsigned long)time(NULL), (unsigned long)(((uintptr_t)&local >> 4) & 0xfffff));
    printf("sqlite %s, files %s*\n", sqlite3_libversion(), file_prefix);

    test_format_time();
    test_create_schema();
    test_migrate_from_v0();
    test_refuse_newer();
    test_not_a_database();
    test_batch_commit();
    test_batch_memory();
    test_busy();
#ifndef _WIN32
    test_killed_after_commit();
    test_disk_full();
#else
    /* fork and file size limits are POSIX: under Wine, tests/durability/ kills a writer instead. */
    printf("SKIPPED under Windows: test_killed_after_commit, test_disk_full (POSIX only)\n");
#endif
    test_recent();
    test_search();
    test_search_budget();
    test_odd_bodies();
    test_prune_by_count();
    test_prune_by_days();
    test_cli_edits();
    test_idle_checkpoint();
    test_idle_merge();
    test_rejected_record();
    test_room_case();
    test_migrate_from_v1();
    test_wal_shrinks_after_reader();
    test_unwritable();
    test_cluster_bind();
    test_cluster_single_node_refused();
    test_cluster_applied();
    test_cluster_gap();
    test_migrate_from_v3();
    test_cluster_row_damaged();
#ifndef _WIN32
    test_cluster_killed();
    test_cluster_commit_fails();
#else
    printf("SKIPPED under Windows: test_cluster_killed, test_cluster_commit_fails (POSIX only)\n");
#endif
    return check_done();
}

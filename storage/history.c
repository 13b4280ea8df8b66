/* history: the chat history in SQLite (see history.h and docs/HISTORY.md).
 *
 * One connection, one thread, statements prepared once at open.  The hub
 * calls history_begin / history_append... / history_commit once per loop
 * turn; a batch is all or nothing: after any failed history_append the batch
 * is poisoned and history_commit rolls it back and returns that failure, so
 * the caller keeps every line of it pending and retries the same batch later.
 *
 * history_append copies the row into the handle's batch, plain memory;
 * history_commit moves the whole batch into messages with one INSERT ...
 * SELECT from history_batch, an eponymous virtual table that reads that
 * memory, and commits.  Why one statement: FTS5 writes its pending index
 * data out as a new segment at every statement savepoint, and an INSERT
 * that fires a trigger opens one, so one INSERT per line costs a segment
 * (and merge work) per line: ~4x slower than one statement per batch (27k
 * vs 120k lines/s in batches of 1000, bench/bench_history.c).  Why memory
 * rather than a TEMP table: staging a row in a b-tree, reading it back and
 * deleting it cost a tenth of a batched line's instructions.  The rows
 * reach SQLite only inside the transaction history_begin opened, so
 * nothing is visible before the commit, and a rollback just forgets them.
 *
 * The connection runs on SQLite's default VFS, unwrapped: durability is
 * SQLite's own (docs/HISTORY.md, "Durability", says why an earlier write
 * buffer was removed).  Checkpoints and FTS5 index merges are left to
 * history_idle_step as far as possible (the WAL hook and FTS_AUTOMERGE below).
 *
 * Opening reads PRAGMA user_version before writing anything, so a file that
 * is not a database or carries a newer schema is refused untouched.  Forward
 * migrations are an ordered array of SQL steps, run in one BEGIN IMMEDIATE
 * transaction together with the new user_version; WAL is switched on only
 * after a successful migration, so a failed one leaves the file as it was.
 */
#include "history.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

/* Opening runs once, before the relay serves anyone: waiting up to a second
 * for a sqlite3 CLI user who holds the write lock is better than refusing to
 * start.  Every later call uses the (tiny) busy_timeout of the options. */
#define HISTORY_OPEN_BUSY_TIMEOUT_MS 1000

#define HISTORY_ERRMSG_LEN 512

#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)

/* The eponymous virtual table that shows the open batch to SQL.  Named
 * with the temp schema in sql_flush, so that a table of the same name in
 * the file (a CLI user's) can never stand in for it. */
#define BATCH_TABLE "history_batch"
/* After a batch that needed more, the batch memory is given back. */
#define BATCH_KEEP_BYTES (1u << 20)

/* Checkpoints (copying the WAL back into the database file: page writes and
 * two fsyncs, ~5-15 ms under Wine) belong in history_idle_step.  A commit
 * does one itself only when the WAL has grown to WAL_COMMIT_CHECKPOINT_PAGES
 * (16 MiB), which bounds the WAL when the relay is never idle; SQLite's own
 * automatic checkpoint would run one every 1000 pages, ~30 commits of 100
 * lines.  history_idle_step checkpoints once WAL_IDLE_CHECKPOINT_PAGES have
 * been added since the last checkpoint, so a quiet room does not cost two
 * fsyncs per line. */
#define WAL_COMMIT_CHECKPOINT_PAGES 4096
#define WAL_IDLE_CHECKPOINT_PAGES 256
/* The WAL file never shrinks by itself: a reader that holds a snapshot keeps
 * the WAL from restarting, and it grows past the bound above (a reader held
 * for 5 s under chat load made it 118 MiB).  journal_size_limit cuts the file
 * back to the bound whenever a commit restarts the WAL; history_idle_step
 * truncates it once it has been larger (WAL frames are a page plus a 24-byte
 * header). */
#define WAL_PAGE_BYTES 4096
#define WAL_SIZE_LIMIT_BYTES ((long long)WAL_COMMIT_CHECKPOINT_PAGES * (WAL_PAGE_BYTES + 24) + 32)

/* FTS5 merges its index segments (one per commit) inside the commits: about
 * a fifth of a stored line's instructions with its defaults (automerge 4,
 * crisismerge 16).  Merging 16 segments at a time instead of 4 rewrites each
 * entry about half as often (-18% instructions per line over 300,000 lines),
 * and crisismerge 64 keeps the synchronous whole-level merges (hundreds of ms
 * once a level is large, when crisismerge equals automerge) out of reach.
 * The price is more segments for a search to visit; history_idle_step
 * merges them back down (MERGE_PAGES of output per step, FTS5's usermerge
 * default of 4 segments) whenever the relay is idle.  The settings live in
 * the file (messages_fts_config), so sqlite3 CLI writes follow them too. */
#define FTS_AUTOMERGE 16
#define FTS_CRISISMERGE 64
#define MERGE_PAGES 32

/* Forward migrations: migrations[v] takes a database from user_version v to
 * v + 1.  Version 0 is "no chatrelay schema yet" (a new or empty file, or a
 * database that holds only other people's tables).  Step 0 -> 1 uses plain
 * CREATE (not IF NOT EXISTS): a foreign table that happens to be called
 * messages makes the migration fail and roll back instead of being adopted. */
static const char *const migrations[] = {
    /* 0 -> 1: messages, its room index, the external-content FTS5 index and
     * the triggers that keep it in the same transaction as the rows (also for
     * deletes and updates made from the sqlite3 CLI). */
    "CREATE TABLE messages(\n"
    "  id INTEGER PRIMARY KEY,\n"
    "  at TEXT NOT NULL,\n"
    "  room TEXT NOT NULL,\n"
    "  nick TEXT NOT NULL,\n"
    "  kind TEXT NOT NULL,\n"
    "  body TEXT NOT NULL\n"
    ");\n"
    "CREATE INDEX messages_room_id ON messages(room, id);\n"
    "CREATE VIRTUAL TABLE messages_fts USING fts5(body, content='messages', content_rowid='id');\n"
    "CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN\n"
    "  INSERT INTO messages_fts(rowid, body) VALUES (new.id, new.body);\n"
    "END;\n"
    "CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN\n"
    "  INSERT INTO messages_fts(messages_fts, rowid, body) VALUES ('delete', old.id, old.body);\n"
    "END;\n"
    "CREATE TRIGGER messages_fts_update AFTER UPDATE ON messages BEGIN\n"
    "  INSERT INTO messages_fts(messages_fts, rowid, body) VALUES ('delete', old.id, old.body);\n"
    "  INSERT INTO messages_fts(rowid, body) VALUES (new.id, new.body);\n"
    "END;\n",
    /* 1 -> 2: room names are case-insensitive (ASCII letters, like nicks), so
     * the room index compares them without case: `Games` and `games` are one
     * room's history whoever re-created it.  The rows keep their spelling. */
    "DROP INDEX messages_room_id;\n"
    "CREATE INDEX messages_room_id ON messages(room COLLATE NOCASE, id);\n",
};

_Static_assert(sizeof migrations / sizeof migrations[0] == HISTORY_SCHEMA_VERSION,
               "one migration step per schema version");

static const char sql_begin[] = "BEGIN IMMEDIATE";
static const char sql_commit[] = "COMMIT";
static const char sql_rollback[] = "ROLLBACK";
/* The batch, read through the virtual table registered on our connection
 * only (see "the batch as a table" below), in the order it was appended. */
static const char sql_flush[] =
    "INSERT INTO main.messages(at, room, nick, kind, body)"
    " SELECT at, room, nick, kind, body FROM temp." BATCH_TABLE " ORDER BY rowid";
/* The newest `limit` rows through messages_room_id, then re-sorted oldest first. */
static const char sql_recent[] =
    "SELECT id, at, room, nick, kind, body FROM ("
    " SELECT id, at, room, nick, kind, body FROM messages"
    " WHERE room = ?1 COLLATE NOCASE AND kind <> 'msg' AND id <= ?3 ORDER BY id DESC LIMIT ?2"
    ") ORDER BY id ASC";
/* Ordering by the FTS rowid lets FTS5 walk its index newest first and stop at the limit. */
static const char sql_search[] =
    "SELECT m.id, m.at, m.room, m.nick, m.kind, m.body"
    " FROM messages_fts JOIN messages AS m ON m.id = messages_fts.rowid"
    " WHERE messages_fts MATCH ?1 AND messages_fts.rowid <= ?4 AND m.room = ?2 COLLATE NOCASE"
    " AND m.kind <> 'msg'"
    " ORDER BY messages_fts.rowid DESC LIMIT ?3";
static const char sql_max_id[] = "SELECT max(id) FROM messages";
static const char sql_fts_merge[] =
    "INSERT INTO messages_fts(messages_fts, rank) VALUES ('merge', " STRINGIFY(MERGE_PAGES) ")";
/* Looks only at the oldest ?3 rows (rows are appended in time order), so one
 * step costs at most ?3 row reads even when nothing is due.  ?1: ids at or
 * below it exceed retain_messages; ?2: rows older than this time exceed
 * retain_days (ISO-8601 strings of one fixed format sort like the times). */
static const char sql_prune[] =
    "DELETE FROM messages WHERE id IN ("
    " SELECT id FROM (SELECT id, at FROM messages ORDER BY id LIMIT ?3)"
    " WHERE id <= ?1 OR at < ?2)";

/* The fields of a batch row, in the column order of the virtual table. */
enum { FIELD_AT, FIELD_ROOM, FIELD_NICK, FIELD_KIND, FIELD_BODY, FIELDS };

/* One appended row: where its fields are in batch_text, and their lengths. */
typedef struct batch_row {
    size_t off[FIELDS];
    size_t len[FIELDS];
} batch_row;

struct history {
    sqlite3 *db;
    sqlite3_stmt *begin, *commit, *rollback, *flush, *recent, *search, *max_id, *prune, *fts_merge;
    history_options opt;
    int in_batch;        /* history_begin succeeded, no commit/rollback yet */
    int batch_failed;    /* HISTORY_OK, or the code of the first failed append */
    /* The open batch: rows[0..nrows) with their text in batch_text (offsets,
     * not pointers, so that growing the buffer moves nothing). */
    batch_row *rows;
    size_t nrows, rows_cap;
    char *batch_text;
    size_t text_len, text_cap;
    /* The WAL as of our last commit (pages in it) and last checkpoint (pages
     * copied back), see wal_committed; wal_peak: the most pages it held since
     * it was last truncated (its file is at least that large). */
    int wal_pages, wal_copied, wal_peak;
    int merge_due;       /* rows changed since history_idle_step last found no merge work */
    int64_t last_id;     /* the id of the last row stored through this handle */
    char errmsg[HISTORY_ERRMSG_LEN];
};

/* BUSY: another connection has the lock.  REJECTED: the content itself was
 * refused (a CHECK or a trigger a sqlite3 CLI user added, a value over a
 * limit), so retrying the same rows cannot help.  Everything else (I/O, disk
 * full, a missing table, out of memory) is the database's state: retry. */
static int code_of(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return HISTORY_BUSY;
    case SQLITE_CONSTRAINT:
    case SQLITE_TOOBIG:
    case SQLITE_MISMATCH:
    case SQLITE_RANGE:
        return HISTORY_REJECTED;
    default:
        return HISTORY_ERROR;
    }
}

static void set_errmsg(history *h, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(h->errmsg, sizeof h->errmsg, fmt, ap);
    va_end(ap);
}

/* Records a failed SQLite call as "call: message (code N)" and maps it. */
static int fail(history *h, const char *call, int rc)
{
    int primary = rc & 0xff;
    /* For the errors that come from the file system, the OS's own code says
     * which of the many causes it was (no permission, read-only, no space). */
    int os = primary == SQLITE_CANTOPEN || primary == SQLITE_IOERR || primary == SQLITE_FULL ||
             primary == SQLITE_READONLY || primary == SQLITE_PERM ? sqlite3_system_errno(h->db) : 0;
    if (os != 0)
        set_errmsg(h, "%s: %s (code %d; OS error %d)", call, sqlite3_errmsg(h->db), rc, os);
    else
        set_errmsg(h, "%s: %s (code %d)", call, sqlite3_errmsg(h->db), rc);
    return code_of(rc);
}

/* Puts a statement back for its next use.  sqlite3_reset repeats the error
 * of the last sqlite3_step, which the caller has already handled, so its
 * result carries no news.  Resetting also ends the statement's read of the
 * database, so no snapshot is held between calls (checkpoints can proceed). */
static void stmt_done(sqlite3_stmt *stmt)
{
    (void)sqlite3_reset(stmt);
    (void)sqlite3_clear_bindings(stmt);
}

/* Runs a statement that returns no rows.  `name` is the SQL shown in errors. */
static int step_done(history *h, sqlite3_stmt *stmt, const char *name)
{
    int rc = sqlite3_step(stmt);
    char call[128];
    stmt_done(stmt);
    if (rc == SQLITE_DONE)
        return HISTORY_OK;
    snprintf(call, sizeof call, "sqlite3_step(%s)", name);
    return fail(h, call, rc);
}

/* Abandons the open transaction, if SQLite has not already rolled it back
 * itself (it does after some I/O and disk-full errors).  Keeps the message
 * of the error that led here; adds the rollback's own failure to it. */
static void rollback_keep_error(history *h)
{
    int rc;
    if (sqlite3_get_autocommit(h->db))
        return;
    rc = sqlite3_step(h->rollback);
    stmt_done(h->rollback);
    if (rc != SQLITE_DONE) {
        size_t used = strlen(h->errmsg);
        snprintf(h->errmsg + used, sizeof h->errmsg - used,
                 "; then sqlite3_step(ROLLBACK): %s (code %d)", sqlite3_errmsg(h->db), rc);
    }
}

/* ---- the batch as a table --------------------------------------------- */

/* history_batch(at, room, nick, kind, body): the rows of the open batch, in
 * append order (rowid = position).  Eponymous (no CREATE VIRTUAL TABLE, no
 * trace in the file), read-only, and only on our own connection: the
 * sqlite3 CLI never sees it.  Its text is handed to SQLite as SQLITE_STATIC:
 * the batch does not change while the one statement that reads it runs. */
typedef struct batch_vtab {
    sqlite3_vtab base;
    const history *h;
} batch_vtab;

typedef struct batch_cursor {
    sqlite3_vtab_cursor base;
    size_t row;
} batch_cursor;

static int batch_connect(sqlite3 *db, void *aux, int argc, const char *const *argv,
                         sqlite3_vtab **out, char **err)
{
    batch_vtab *vt;
    int rc;
    (void)argc;
    (void)argv;
    (void)err;
    rc = sqlite3_declare_vtab(db, "CREATE TABLE x(at TEXT, room TEXT, nick TEXT, kind TEXT, body TEXT)");
    if (rc != SQLITE_OK)
        return rc;
    vt = sqlite3_malloc(sizeof *vt);
    if (!vt)
        return SQLITE_NOMEM;
    memset(vt, 0, sizeof *vt);
    vt->h = aux;
    *out = &vt->base;
    return SQLITE_OK;
}

static int batch_disconnect(sqlite3_vtab *vt)
{
    sqlite3_free(vt);
    return SQLITE_OK;
}

/* A plain scan; it already delivers rows in rowid order, so an ORDER BY
 * rowid costs no sort. */
static int batch_best_index(sqlite3_vtab *vt, sqlite3_index_info *info)
{
    (void)vt;
    if (info->nOrderBy == 1 && info->aOrderBy[0].iColumn < 0 && !info->aOrderBy[0].desc)
        info->orderByConsumed = 1;
    info->estimatedCost = 1000.0;
    info->estimatedRows = 1000;
    return SQLITE_OK;
}

static int batch_open(sqlite3_vtab *vt, sqlite3_vtab_cursor **out)
{
    batch_cursor *c = sqlite3_malloc(sizeof *c);
    (void)vt;
    if (!c)
        return SQLITE_NOMEM;
    memset(c, 0, sizeof *c);
    *out = &c->base;
    return SQLITE_OK;
}

static int batch_close(sqlite3_vtab_cursor *cur)
{
    sqlite3_free(cur);
    return SQLITE_OK;
}

static int batch_filter(sqlite3_vtab_cursor *cur, int idx_num, const char *idx_str,
                        int argc, sqlite3_value **argv)
{
    (void)idx_num;
    (void)idx_str;
    (void)argc;
    (void)argv;
    ((batch_cursor *)cur)->row = 0;
    return SQLITE_OK;
}

static int batch_next(sqlite3_vtab_cursor *cur)
{
    ((batch_cursor *)cur)->row++;
    return SQLITE_OK;
}

static int batch_eof(sqlite3_vtab_cursor *cur)
{
    const batch_vtab *vt = (const batch_vtab *)cur->pVtab;
    return ((batch_cursor *)cur)->row >= vt->h->nrows;
}

static int batch_column(sqlite3_vtab_cursor *cur, sqlite3_context *ctx, int col)
{
    const history *h = ((const batch_vtab *)cur->pVtab)->h;
    const batch_row *row = &h->rows[((batch_cursor *)cur)->row];
    if (col < 0 || col >= FIELDS) {
        sqlite3_result_null(ctx);
        return SQLITE_OK;
    }
    /* The explicit length keeps an embedded NUL or an invalid byte of a
     * body as it is, never cut short. */
    sqlite3_result_text64(ctx, h->batch_text + row->off[col], (sqlite3_uint64)row->len[col],
                          SQLITE_STATIC, SQLITE_UTF8);
    return SQLITE_OK;
}

static int batch_rowid(sqlite3_vtab_cursor *cur, sqlite3_int64 *rowid)
{
    *rowid = (sqlite3_int64)((batch_cursor *)cur)->row + 1;
    return SQLITE_OK;
}

/* xCreate NULL: eponymous only, CREATE VIRTUAL TABLE ... USING history_batch fails. */
static const sqlite3_module batch_module = {
    .iVersion = 0,
    .xCreate = NULL,
    .xConnect = batch_connect,
    .xBestIndex = batch_best_index,
    .xDisconnect = batch_disconnect,
    .xDestroy = batch_disconnect,
    .xOpen = batch_open,
    .xClose = batch_close,
    .xFilter = batch_filter,
    .xNext = batch_next,
    .xEof = batch_eof,
    .xColumn = batch_column,
    .xRowid = batch_rowid,
};

/* Forgets the batch; gives its memory back after an unusually large one. */
static void batch_reset(history *h)
{
    h->nrows = 0;
    h->text_len = 0;
    if (h->text_cap + h->rows_cap * sizeof *h->rows > BATCH_KEEP_BYTES) {
        free(h->rows);
        free(h->batch_text);
        h->rows = NULL;
        h->batch_text = NULL;
        h->rows_cap = h->text_cap = 0;
    }
}

/* Makes room for one more row of `text` bytes; 0 when out of memory. */
static int batch_reserve(history *h, size_t text)
{
    if (h->nrows == h->rows_cap) {
        size_t cap = h->rows_cap ? 2 * h->rows_cap : 64;
        batch_row *rows;
        if (cap > SIZE_MAX / sizeof *rows)
            return 0;
        rows = realloc(h->rows, cap * sizeof *rows);
        if (!rows)
            return 0;
        h->rows = rows;
        h->rows_cap = cap;
    }
    if (text > h->text_cap - h->text_len) {
        size_t cap = h->text_cap ? h->text_cap : 8192;
        char *buf;
        if (text > SIZE_MAX / 2 - h->text_len)
            return 0;
        while (cap - h->text_len < text)
            cap *= 2;
        buf = realloc(h->batch_text, cap);
        if (!buf)
            return 0;
        h->batch_text = buf;
        h->text_cap = cap;
    }
    return 1;
}

/* ---- opening ---------------------------------------------------------- */

static int prepare(history *h, sqlite3_stmt **stmt, const char *sql)
{
    int rc = sqlite3_prepare_v3(h->db, sql, -1, SQLITE_PREPARE_PERSISTENT, stmt, NULL);
    if (rc != SQLITE_OK) {
        set_errmsg(h, "sqlite3_prepare_v3(%.40s...): %s (code %d)", sql, sqlite3_errmsg(h->db), rc);
        return code_of(rc);
    }
    return HISTORY_OK;
}

/* Reads one integer from a one-row statement such as PRAGMA user_version. */
static int query_int(history *h, const char *sql, sqlite3_int64 *value)
{
    sqlite3_stmt *stmt = NULL;
    char call[80];
    int rc = sqlite3_prepare_v2(h->db, sql, -1, &stmt, NULL);
    if (rc != SQLITE_OK) {
        snprintf(call, sizeof call, "sqlite3_prepare_v2(%s)", sql);
        return fail(h, call, rc);
    }
    rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW)
        *value = sqlite3_column_int64(stmt, 0);
    (void)sqlite3_finalize(stmt); /* repeats the step's error, handled below */
    if (rc == SQLITE_ROW)
        return HISTORY_OK;
    snprintf(call, sizeof call, "sqlite3_step(%s)", sql);
    return fail(h, call, rc == SQLITE_DONE ? SQLITE_ERROR : rc);
}

static int exec_sql(history *h, const char *sql, const char *name)
{
    char *msg = NULL;
    int rc = sqlite3_exec(h->db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        set_errmsg(h, "sqlite3_exec(%s): %s (code %d)", name, msg ? msg : sqlite3_errstr(rc), rc);
        sqlite3_free(msg);
        return code_of(rc);
    }
    return HISTORY_OK;
}

/* Brings the schema from *version up to HISTORY_SCHEMA_VERSION in one
 * transaction.  The version is read again under the write lock, in case
 * another process migrated the file since we first looked. */
static int migrate(history *h, sqlite3_int64 *version)
{
    char name[48], sql[48];
    sqlite3_int64 v = 0;
    int r = step_done(h, h->begin, sql_begin);
    if (r != HISTORY_OK)
        return r;
    r = query_int(h, "PRAGMA user_version", &v);
    if (r == HISTORY_OK && v > HISTORY_SCHEMA_VERSION) {
        *version = v;
        r = HISTORY_TOO_NEW;
    }
    for (; r == HISTORY_OK && v < HISTORY_SCHEMA_VERSION; v++) {
        snprintf(name, sizeof name, "migration %d -> %d", (int)v, (int)v + 1);
        r = exec_sql(h, migrations[v], name);
    }
    if (r == HISTORY_OK) {
        snprintf(sql, sizeof sql, "PRAGMA user_version = %d", HISTORY_SCHEMA_VERSION);
        r = exec_sql(h, sql, sql);
    }
    if (r == HISTORY_OK)
        r = step_done(h, h->commit, sql_commit);
    if (r != HISTORY_OK) {
        rollback_keep_error(h);
        return r;
    }
    *version = HISTORY_SCHEMA_VERSION;
    return HISTORY_OK;
}

static int set_wal(history *h)
{
    sqlite3_stmt *stmt = NULL;
    int r = HISTORY_OK;
    int rc = sqlite3_prepare_v2(h->db, "PRAGMA journal_mode = WAL", -1, &stmt, NULL);
    if (rc != SQLITE_OK)
        return fail(h, "sqlite3_prepare_v2(PRAGMA journal_mode = WAL)", rc);
    rc = sqlite3_step(stmt);
    if (rc != SQLITE_ROW)
        r = fail(h, "sqlite3_step(PRAGMA journal_mode = WAL)", rc == SQLITE_DONE ? SQLITE_ERROR : rc);
    else {
        const char *mode = (const char *)sqlite3_column_text(stmt, 0);
        /* "memory" is what an in-memory database answers; anything else
         * would silently give up the crash safety we promise. */
        if (!mode || (sqlite3_stricmp(mode, "wal") != 0 && sqlite3_stricmp(mode, "memory") != 0)) {
            set_errmsg(h, "PRAGMA journal_mode = WAL: the journal mode stayed \"%s\"", mode ? mode : "");
            r = HISTORY_ERROR;
        }
    }
    (void)sqlite3_finalize(stmt); /* repeats the step's error, handled above */
    return r;
}

/* The transaction statements need no schema: migrations use them too. */
static int prepare_transactions(history *h)
{
    int r = prepare(h, &h->begin, sql_begin);
    if (r == HISTORY_OK) r = prepare(h, &h->commit, sql_commit);
    if (r == HISTORY_OK) r = prepare(h, &h->rollback, sql_rollback);
    return r;
}

static int prepare_queries(history *h)
{
    int r = HISTORY_OK;
    int rc = sqlite3_create_module_v2(h->db, BATCH_TABLE, &batch_module, h, NULL);
    if (rc != SQLITE_OK)
        r = fail(h, "sqlite3_create_module_v2(" BATCH_TABLE ")", rc);
    if (r == HISTORY_OK) r = prepare(h, &h->flush, sql_flush);
    if (r == HISTORY_OK) r = prepare(h, &h->recent, sql_recent);
    if (r == HISTORY_OK) r = prepare(h, &h->search, sql_search);
    if (r == HISTORY_OK) r = prepare(h, &h->max_id, sql_max_id);
    if (r == HISTORY_OK) r = prepare(h, &h->prune, sql_prune);
    if (r == HISTORY_OK) r = prepare(h, &h->fts_merge, sql_fts_merge);
    return r;
}

/* Reads one FTS5 setting as stored in the file; -1 when it was never set. */
static int fts_setting(history *h, const char *key, sqlite3_int64 *value)
{
    sqlite3_stmt *stmt = NULL;
    int rc = sqlite3_prepare_v2(h->db, "SELECT v FROM messages_fts_config WHERE k = ?1", -1, &stmt, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(stmt, 1, key, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(stmt);
        *value = rc == SQLITE_ROW ? sqlite3_column_int64(stmt, 0) : -1;
        rc = rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
    }
    (void)sqlite3_finalize(stmt);   /* repeats the error handled here */
    return rc;
}

/* Stores FTS_AUTOMERGE and FTS_CRISISMERGE in the file unless they are
 * there already (so opening normally writes nothing and needs no lock).
 * Only speed depends on them: when the file cannot be written now (another
 * connection holds the write lock past the open's busy timeout, a full
 * disk), opening goes on without them and the next open tries again. */
static void tune_fts(history *h)
{
    sqlite3_int64 automerge = -1, crisismerge = -1;
    char sql[160];
    if (fts_setting(h, "automerge", &automerge) != SQLITE_OK ||
        fts_setting(h, "crisismerge", &crisismerge) != SQLITE_OK)
        return;
    if (automerge == FTS_AUTOMERGE && crisismerge == FTS_CRISISMERGE)
        return;
    snprintf(sql, sizeof sql,
             "INSERT INTO messages_fts(messages_fts, rank) VALUES ('automerge', %d);"
             "INSERT INTO messages_fts(messages_fts, rank) VALUES ('crisismerge', %d)",
             FTS_AUTOMERGE, FTS_CRISISMERGE);
    if (step_done(h, h->begin, sql_begin) == HISTORY_OK && exec_sql(h, sql, "FTS5 settings") == HISTORY_OK &&
        step_done(h, h->commit, sql_commit) == HISTORY_OK)
        return;
    rollback_keep_error(h);
    h->errmsg[0] = '\0';   /* not an error of the handle: nothing it does depends on this */
}

/* SQLite's WAL hook, after each commit of our connection, in place of its
 * automatic checkpoint (see WAL_COMMIT_CHECKPOINT_PAGES).  `pages` is the
 * size of the WAL; it shrinks only when a commit restarts the WAL from the
 * beginning, which it does once everything was copied back.  The commit has
 * happened whatever this returns, so it always returns SQLITE_OK: an error
 * here would make history_commit report a stored batch as failed (and the
 * caller store it twice).  A checkpoint that fails is simply tried again
 * at a later commit or idle step. */
static int wal_committed(void *ctx, sqlite3 *db, const char *name, int pages)
{
    history *h = ctx;
    if (pages < h->wal_pages)
        h->wal_copied = 0;
    h->wal_pages = pages;
    if (pages > h->wal_peak)
        h->wal_peak = pages;
    if (pages >= WAL_COMMIT_CHECKPOINT_PAGES && pages - h->wal_copied >= WAL_IDLE_CHECKPOINT_PAGES) {
        int copied = 0;
        if (sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, &copied) == SQLITE_OK)
            h->wal_copied = copied;
    }
    return SQLITE_OK;
}

/* One write transaction that changes nothing a reader can see (user_version
 * set to what it is), committed through the WAL: a file, WAL or -shm this
 * process cannot write fails here, at the start, where the service manager
 * and the admin see it.  Another connection holding the write lock past the
 * open's wait does not make the database unusable: accepted (the relay holds
 * lines and retries until the lock is released). */
static int prove_writable(history *h)
{
    int r = step_done(h, h->begin, sql_begin);
    if (r == HISTORY_OK)
        r = exec_sql(h, "PRAGMA user_version = " STRINGIFY(HISTORY_SCHEMA_VERSION), "PRAGMA user_version");
    if (r == HISTORY_OK)
        r = step_done(h, h->commit, sql_commit);
    if (r != HISTORY_OK) {
        rollback_keep_error(h);
        if (r == HISTORY_BUSY) {
            h->errmsg[0] = '\0';
            return HISTORY_OK;
        }
        size_t used = strlen(h->errmsg);
        snprintf(h->errmsg + used, sizeof h->errmsg - used, " (cannot write the database)");
    }
    return r;
}

/* history_last_id starts at the newest row already in the file. */
static int read_last_id(history *h)
{
    int rc = sqlite3_step(h->max_id);
    if (rc == SQLITE_ROW)
        h->last_id = sqlite3_column_int64(h->max_id, 0);
    stmt_done(h->max_id);
    return rc == SQLITE_ROW ? HISTORY_OK : fail(h, "sqlite3_step(SELECT max(id) FROM messages)", rc);
}

static int open_steps(history *h, const char *path, const history_options *opt,
                      char *err, size_t errlen)
{
    sqlite3_int64 version = 0;
    int rc, r;

    rc = sqlite3_open_v2(path, &h->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "history \"%s\": cannot open: sqlite3_open_v2: %s (code %d)",
                 path, h->db ? sqlite3_errmsg(h->db) : sqlite3_errstr(rc), rc);
        return HISTORY_ERROR;
    }
    rc = sqlite3_busy_timeout(h->db, HISTORY_OPEN_BUSY_TIMEOUT_MS);
    if (rc != SQLITE_OK) {
        r = fail(h, "sqlite3_busy_timeout", rc);
        snprintf(err, errlen, "history \"%s\": %s", path, h->errmsg);
        return r;
    }

    /* The first read: a file that is not a database fails here (SQLITE_NOTADB),
     * before anything has been written to it. */
    r = query_int(h, "PRAGMA user_version", &version);
    if (r != HISTORY_OK) {
        snprintf(err, errlen, "history \"%s\": %s (the file was left untouched): %s", path,
                 sqlite3_errcode(h->db) == SQLITE_NOTADB ? "not an SQLite database"
                                                         : "cannot read the schema version",
                 h->errmsg);
        return r;
    }
    if (version > HISTORY_SCHEMA_VERSION) {
        snprintf(err, errlen, "history \"%s\": schema version %lld is newer than this program's %d; "
                 "use a newer chatrelay or another file (the file was left untouched)",
                 path, (long long)version, HISTORY_SCHEMA_VERSION);
        return HISTORY_TOO_NEW;
    }
    /* SQLite opens a file it may not write read-only, silently; every chat
     * line would then be held and refused.  Say so now, at the start. */
    if (sqlite3_db_readonly(h->db, "main") == 1) {
        snprintf(err, errlen, "history \"%s\": the file is read-only (no write permission, or a "
                 "read-only filesystem); the relay must be able to write its history", path);
        return HISTORY_ERROR;
    }
    if (version < 0) {
        snprintf(err, errlen, "history \"%s\": schema version %lld is not one of ours "
                 "(the file was left untouched)", path, (long long)version);
        return HISTORY_ERROR;
    }
    r = prepare_transactions(h);
    if (r != HISTORY_OK) {
        snprintf(err, errlen, "history \"%s\": %s", path, h->errmsg);
        return HISTORY_ERROR;
    }
    if (version < HISTORY_SCHEMA_VERSION) {
        sqlite3_int64 from = version;
        r = migrate(h, &version);
        if (r == HISTORY_TOO_NEW) {
            snprintf(err, errlen, "history \"%s\": schema version %lld is newer than this program's %d; "
                     "use a newer chatrelay or another file (the file was left untouched)",
                     path, (long long)version, HISTORY_SCHEMA_VERSION);
            return r;
        }
        if (r != HISTORY_OK) {
            snprintf(err, errlen, "history \"%s\": upgrading the schema from version %lld to %d failed "
                     "and was rolled back: %s", path, (long long)from, HISTORY_SCHEMA_VERSION, h->errmsg);
            return HISTORY_ERROR;
        }
    }

    r = set_wal(h);
    if (r == HISTORY_OK)
        r = exec_sql(h, "PRAGMA synchronous = NORMAL", "PRAGMA synchronous = NORMAL");
    if (r == HISTORY_OK) {
        char sql[64];
        snprintf(sql, sizeof sql, "PRAGMA journal_size_limit = %lld", WAL_SIZE_LIMIT_BYTES);
        r = exec_sql(h, sql, sql);
    }
    if (r == HISTORY_OK && opt->cache_pages > 0) {
        char sql[48];
        snprintf(sql, sizeof sql, "PRAGMA cache_size = %d", opt->cache_pages);
        r = exec_sql(h, sql, sql);
    }
    if (r == HISTORY_OK)
        (void)sqlite3_wal_hook(h->db, wal_committed, h);   /* returns the previous hook's context */
    if (r == HISTORY_OK)
        r = prepare_queries(h);
    if (r == HISTORY_OK)
        tune_fts(h);
    if (r == HISTORY_OK)
        r = prove_writable(h);
    if (r == HISTORY_OK)
        r = read_last_id(h);
    h->merge_due = 1;   /* whatever earlier runs left unmerged */
    if (r == HISTORY_OK) {
        rc = sqlite3_busy_timeout(h->db, opt->busy_timeout_ms > 0 ? opt->busy_timeout_ms : 0);
        if (rc != SQLITE_OK)
            r = fail(h, "sqlite3_busy_timeout", rc);
    }
    if (r != HISTORY_OK) {
        snprintf(err, errlen, "history \"%s\": %s", path, h->errmsg);
        return HISTORY_ERROR;
    }
    return HISTORY_OK;
}

int history_open(history **out, const char *path, const history_options *opt,
                 char *err, size_t errlen)
{
    static const history_options defaults;
    char dummy[1];
    history *h;
    int r;

    if (!err || errlen == 0) {
        err = dummy;
        errlen = sizeof dummy;
    }
    err[0] = '\0';
    if (!out) {
        snprintf(err, errlen, "history_open: no place for the handle");
        return HISTORY_ERROR;
    }
    *out = NULL;
    if (!path || !path[0]) {
        snprintf(err, errlen, "history_open: no database path");
        return HISTORY_ERROR;
    }
    h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(err, errlen, "history \"%s\": out of memory", path);
        return HISTORY_ERROR;
    }
    h->opt = opt ? *opt : defaults;
    if (h->opt.retain_days < 0) h->opt.retain_days = 0;
    if (h->opt.retain_messages < 0) h->opt.retain_messages = 0;
    r = open_steps(h, path, &h->opt, err, errlen);
    if (r != HISTORY_OK) {
        history_close(h);
        return r;
    }
    *out = h;
    return HISTORY_OK;
}

void history_close(history *h)
{
    sqlite3_stmt **stmts[9];
    size_t i;
    if (!h)
        return;
    if (h->in_batch)
        history_rollback(h);
    stmts[0] = &h->begin; stmts[1] = &h->commit; stmts[2] = &h->rollback; stmts[3] = &h->flush;
    stmts[4] = &h->recent; stmts[5] = &h->search; stmts[6] = &h->max_id; stmts[7] = &h->prune;
    stmts[8] = &h->fts_merge;
    for (i = 0; i < sizeof stmts / sizeof stmts[0]; i++) {
        /* finalize returns the last step's error, already reported */
        (void)sqlite3_finalize(*stmts[i]);
        *stmts[i] = NULL;
    }
    if (h->db && sqlite3_close(h->db) != SQLITE_OK) {
        /* Only unfinalized statements make close fail, and all of ours are
         * finalized; sqlite3_close_v2 still frees the connection once they go. */
        (void)sqlite3_close_v2(h->db);
    }
    free(h->rows);
    free(h->batch_text);
    free(h);
}

const char *history_errmsg(const history *h)
{
    if (!h)
        return "history: no handle";
    return h->errmsg[0] ? h->errmsg : "no error";
}

/* ---- group commit ----------------------------------------------------- */

int history_begin(history *h)
{
    int r;
    if (h->in_batch) {
        set_errmsg(h, "history_begin: a batch is already open");
        return HISTORY_ERROR;
    }
    r = step_done(h, h->begin, sql_begin);
    if (r != HISTORY_OK) {
        rollback_keep_error(h);
        return r;
    }
    h->in_batch = 1;
    h->batch_failed = HISTORY_OK;
    return HISTORY_OK;
}

static int is_kind(const char *kind)
{
    static const char *const kinds[] = { "say", "me", "join", "leave", "nick", "msg" };
    size_t i;
    for (i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (strcmp(kind, kinds[i]) == 0)
            return 1;
    return 0;
}

static int check_record(history *h, const history_record *rec)
{
    if (!rec || !rec->at || !rec->room || !rec->nick || !rec->kind || (!rec->body && rec->body_len)) {
        set_errmsg(h, "history_append: record with a missing field");
        return HISTORY_REJECTED;
    }
    if (strlen(rec->at) != HISTORY_TIME_LEN) {
        set_errmsg(h, "history_append: time \"%.40s\" is not in the form 2026-11-27T03:04:05.123Z", rec->at);
        return HISTORY_REJECTED;
    }
    if (!is_kind(rec->kind)) {
        set_errmsg(h, "history_append: kind \"%.20s\" is not one of say, me, join, leave, nick, msg", rec->kind);
        return HISTORY_REJECTED;
    }
    return HISTORY_OK;
}

static int append_row(history *h, const history_record *rec)
{
    size_t len[FIELDS], total = 0, max_len;
    const char *src[FIELDS];
    batch_row *row;
    int i;
    if (!h->in_batch) {
        set_errmsg(h, "history_append: no batch open (call history_begin first)");
        return HISTORY_ERROR;
    }
    if (check_record(h, rec) != HISTORY_OK)
        return HISTORY_REJECTED;
    src[FIELD_AT] = rec->at;
    src[FIELD_ROOM] = rec->room;
    src[FIELD_NICK] = rec->nick;
    src[FIELD_KIND] = rec->kind;
    src[FIELD_BODY] = rec->body ? rec->body : "";
    len[FIELD_AT] = HISTORY_TIME_LEN;
    len[FIELD_ROOM] = strlen(rec->room);
    len[FIELD_NICK] = strlen(rec->nick);
    len[FIELD_KIND] = strlen(rec->kind);
    len[FIELD_BODY] = rec->body_len;
    /* What SQLite would refuse at the commit is refused here, naming the
     * line, while the caller still knows which one it is. */
    max_len = (size_t)sqlite3_limit(h->db, SQLITE_LIMIT_LENGTH, -1);
    for (i = 0; i < FIELDS; i++) {
        if (len[i] > max_len) {
            set_errmsg(h, "history_append: a field of %llu bytes is longer than SQLite's limit of %llu",
                       (unsigned long long)len[i], (unsigned long long)max_len);
            return HISTORY_REJECTED;
        }
        total += len[i];
    }
    if (!batch_reserve(h, total)) {
        set_errmsg(h, "history_append: out of memory for a batch of %llu lines",
                   (unsigned long long)h->nrows + 1);
        return HISTORY_ERROR;
    }
    row = &h->rows[h->nrows];
    for (i = 0; i < FIELDS; i++) {
        row->off[i] = h->text_len;
        row->len[i] = len[i];
        if (len[i])
            memcpy(h->batch_text + h->text_len, src[i], len[i]);
        h->text_len += len[i];
    }
    h->nrows++;
    return HISTORY_OK;
}

int history_append(history *h, const history_record *rec)
{
    int r;
    if (h->in_batch && h->batch_failed != HISTORY_OK)
        return h->batch_failed;  /* the batch is lost already; keep the first message */
    r = append_row(h, rec);
    if (r != HISTORY_OK && h->in_batch)
        h->batch_failed = r;
    return r;
}

int history_commit(history *h)
{
    sqlite3_int64 last_id;
    int r, flushed;
    if (!h->in_batch) {
        set_errmsg(h, "history_commit: no batch open");
        return HISTORY_ERROR;
    }
    h->in_batch = 0;
    if (h->batch_failed != HISTORY_OK) {
        batch_reset(h);
        rollback_keep_error(h);
        return h->batch_failed;
    }
    r = HISTORY_OK;
    flushed = h->nrows > 0;
    if (flushed)
        r = step_done(h, h->flush, "INSERT INTO messages SELECT ... FROM " BATCH_TABLE);
    if (r == HISTORY_OK && h->nrows > 0)
        h->merge_due = 1;
    batch_reset(h);
    last_id = sqlite3_last_insert_rowid(h->db);
    if (r == HISTORY_OK)
        r = step_done(h, h->commit, sql_commit);
    if (r != HISTORY_OK)
        rollback_keep_error(h);
    else if (flushed)
        h->last_id = last_id;
    return r;
}

void history_rollback(history *h)
{
    if (!h || !h->in_batch)
        return;
    h->in_batch = 0;
    h->batch_failed = HISTORY_OK;
    batch_reset(h);
    rollback_keep_error(h);
}

/* ---- queries ---------------------------------------------------------- */

static int each_row(history *h, sqlite3_stmt *stmt, const char *name, history_row_fn fn, void *ctx)
{
    char call[48];
    int rc;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        history_record rec;
        const unsigned char *text;
        rec.id = sqlite3_column_int64(stmt, 0);
        text = sqlite3_column_text(stmt, 1); rec.at = text ? (const char *)text : "";
        text = sqlite3_column_text(stmt, 2); rec.room = text ? (const char *)text : "";
        text = sqlite3_column_text(stmt, 3); rec.nick = text ? (const char *)text : "";
        text = sqlite3_column_text(stmt, 4); rec.kind = text ? (const char *)text : "";
        text = sqlite3_column_text(stmt, 5); rec.body = text ? (const char *)text : "";
        /* after column_text, so the length is that of the text form */
        rec.body_len = (size_t)sqlite3_column_bytes(stmt, 5);
        if (!text && sqlite3_errcode(h->db) == SQLITE_NOMEM) {
            rc = SQLITE_NOMEM;
            break;
        }
        if (fn(ctx, &rec) != 0) {
            rc = SQLITE_DONE;
            break;
        }
    }
    stmt_done(stmt);
    if (rc == SQLITE_DONE)
        return HISTORY_OK;
    snprintf(call, sizeof call, "sqlite3_step(%s)", name);
    return fail(h, call, rc);
}

int history_recent(history *h, const char *room, int limit, history_row_fn fn, void *ctx)
{
    return history_recent_upto(h, room, limit, INT64_MAX, fn, ctx);
}

int history_recent_upto(history *h, const char *room, int limit, int64_t max_id,
                        history_row_fn fn, void *ctx)
{
    int rc;
    if (!room || !fn) {
        set_errmsg(h, "history_recent: no room or no callback");
        return HISTORY_ERROR;
    }
    if (limit <= 0)
        return HISTORY_OK;
    rc = sqlite3_bind_text(h->recent, 1, room, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int(h->recent, 2, limit);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(h->recent, 3, max_id);
    if (rc != SQLITE_OK) {
        int r = fail(h, "sqlite3_bind(recent)", rc);
        stmt_done(h->recent);
        return r;
    }
    return each_row(h, h->recent, "recent", fn, ctx);
}

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* Turns the user's words into an FTS5 query of plain terms: each
 * whitespace-separated word becomes a string ("..." with inner quotes
 * doubled), and strings side by side mean AND.  Nothing the user types can
 * then be an operator, a column filter, a prefix star or a parenthesis.
 * Returns the malloc'ed query (the empty string when there are no words),
 * or NULL when out of memory. */
static char *fts_query(const char *words)
{
    size_t n = strlen(words), i = 0, o = 0;
    char *q;
    /* Each byte is copied once, or twice for a quote; each word adds two
     * quotes and a space, and there are at most (n + 1) / 2 words: under
     * 4n + 3 bytes with the terminating NUL. */
    if (n > (SIZE_MAX - 3) / 4)
        return NULL;
    q = malloc(4 * n + 3);
    if (!q)
        return NULL;
    while (i < n) {
        while (i < n && is_space(words[i]))
            i++;
        if (i == n)
            break;
        if (o)
            q[o++] = ' ';
        q[o++] = '"';
        for (; i < n && !is_space(words[i]); i++) {
            if (words[i] == '"')
                q[o++] = '"';
            q[o++] = words[i];
        }
        q[o++] = '"';
    }
    q[o] = '\0';
    return q;
}

/* The search's work budget: FTS5 walks every match newest first and the room
 * filter comes after, so a common word searched from a quiet room could scan
 * the whole history on the relay's only thread.  The progress handler stops
 * the statement after SEARCH_BUDGET_CALLS * SEARCH_BUDGET_OPS VM steps: ~10 ms
 * under Wine, a few natively.  The hub answers a few queries per loop turn at
 * most, so what queries add to everyone's latency stays in tens of ms. */
#define SEARCH_BUDGET_OPS 1000
#define SEARCH_BUDGET_CALLS 150

static int search_budget(void *arg)
{
    int *calls = arg;
    return ++*calls > SEARCH_BUDGET_CALLS;
}

int history_search(history *h, const char *room, const char *words, int limit,
                   history_row_fn fn, void *ctx)
{
    return history_search_upto(h, room, words, limit, INT64_MAX, fn, ctx);
}

int64_t history_last_id(const history *h)
{
    return h->last_id;
}

int history_search_upto(history *h, const char *room, const char *words, int limit, int64_t max_id,
                        history_row_fn fn, void *ctx)
{
    int budget_calls = 0;
    char *query;
    int rc, r;
    if (!room || !words || !fn) {
        set_errmsg(h, "history_search: no room, no words or no callback");
        return HISTORY_ERROR;
    }
    if (limit <= 0)
        return HISTORY_OK;
    query = fts_query(words);
    if (!query) {
        set_errmsg(h, "history_search: out of memory for the query");
        return HISTORY_ERROR;
    }
    if (!query[0]) {   /* no words: nothing matches */
        free(query);
        return HISTORY_OK;
    }
    rc = sqlite3_bind_text(h->search, 1, query, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK) rc = sqlite3_bind_text(h->search, 2, room, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK) rc = sqlite3_bind_int(h->search, 3, limit);
    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(h->search, 4, max_id);
    if (rc != SQLITE_OK) {
        r = fail(h, "sqlite3_bind(search)", rc);
        stmt_done(h->search);
    } else {
        sqlite3_progress_handler(h->db, SEARCH_BUDGET_OPS, search_budget, &budget_calls);
        r = each_row(h, h->search, "search", fn, ctx);
        sqlite3_progress_handler(h->db, 0, NULL, NULL);
        if (r != HISTORY_OK && budget_calls > SEARCH_BUDGET_CALLS) {
            set_errmsg(h, "history_search: stopped at its work budget (too many matches outside the room)");
            r = HISTORY_LIMIT;
        }
    }
    free(query);
    return r;
}

/* ---- retention -------------------------------------------------------- */

int history_prune_step(history *h, int64_t now_ms, int max_rows)
{
    sqlite3_int64 id_cut = 0;  /* rows with id <= id_cut exceed retain_messages */
    char time_cut[HISTORY_TIME_LEN + 1] = "";  /* "" sorts before every time: none due */
    int rc, r, deleted;

    if (h->in_batch) {
        set_errmsg(h, "history_prune_step: a batch is open");
        return -1;
    }
    if (max_rows <= 0 || (h->opt.retain_days == 0 && h->opt.retain_messages == 0))
        return 0;
    if (h->opt.retain_days > 0)
        history_format_time(now_ms - (int64_t)h->opt.retain_days * 86400000, time_cut);

    r = step_done(h, h->begin, sql_begin);
    if (r != HISTORY_OK) {
        rollback_keep_error(h);
        return -1;
    }
    if (h->opt.retain_messages > 0) {
        /* Ids are handed out consecutively, so the last N messages are those
         * within N of the newest id.  Cheap (one b-tree seek) where counting
         * rows would read them all; if rows were deleted by hand in between,
         * fewer than N remain, never more. */
        rc = sqlite3_step(h->max_id);
        if (rc == SQLITE_ROW) {
            sqlite3_int64 max_id = sqlite3_column_int64(h->max_id, 0);
            id_cut = max_id - h->opt.retain_messages;
            rc = SQLITE_DONE;
        }
        stmt_done(h->max_id);
        if (rc != SQLITE_DONE) {
            fail(h, "sqlite3_step(SELECT max(id) FROM messages)", rc);
            rollback_keep_error(h);
            return -1;
        }
    }
    rc = sqlite3_bind_int64(h->prune, 1, id_cut);
    if (rc == SQLITE_OK) rc = sqlite3_bind_text(h->prune, 2, time_cut, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK) rc = sqlite3_bind_int(h->prune, 3, max_rows);
    if (rc != SQLITE_OK) {
        fail(h, "sqlite3_bind(prune)", rc);
        stmt_done(h->prune);
        rollback_keep_error(h);
        return -1;
    }
    r = step_done(h, h->prune, "DELETE FROM messages (prune)");
    deleted = sqlite3_changes(h->db);
    if (deleted > 0)
        h->merge_due = 1;   /* FTS5 records deletions as entries of the next segment */
    if (r == HISTORY_OK)
        r = step_done(h, h->commit, sql_commit);
    if (r != HISTORY_OK) {
        rollback_keep_error(h);
        return -1;
    }
    return deleted;
}

/* ---- upkeep ----------------------------------------------------------- */

/* One step of FTS5's incremental merge, in its own transaction.  FTS5
 * changes at least two rows when it found work (its documented test), so
 * fewer means the index is as merged as it gets until new rows arrive. */
static int merge_step(history *h)
{
    int before, r = step_done(h, h->begin, sql_begin);
    if (r != HISTORY_OK) {
        rollback_keep_error(h);
        return -1;
    }
    before = sqlite3_total_changes(h->db);
    r = step_done(h, h->fts_merge, "INSERT INTO messages_fts ('merge')");
    if (r == HISTORY_OK && sqlite3_total_changes(h->db) - before < 2)
        h->merge_due = 0;
    if (r == HISTORY_OK)
        r = step_done(h, h->commit, sql_commit);
    if (r != HISTORY_OK) {
        rollback_keep_error(h);
        return -1;
    }
    return h->merge_due;
}

/* Cuts the WAL file back to nothing once no reader needs it.  TRUNCATE
 * waits for readers and writers through the busy handler, and there is none
 * (busy_timeout 0 on the I/O thread), so a reader still present makes it
 * return SQLITE_BUSY at once: tried again on a later idle turn, while the
 * merge work goes on meanwhile. */
static int truncate_step(history *h)
{
    int in_wal = 0, copied = 0;
    int rc = sqlite3_wal_checkpoint_v2(h->db, "main", SQLITE_CHECKPOINT_TRUNCATE, &in_wal, &copied);
    if (rc == SQLITE_OK) {
        h->wal_pages = h->wal_copied = h->wal_peak = 0;
        return 1;
    }
    if ((rc & 0xff) == SQLITE_BUSY)
        return h->merge_due ? merge_step(h) : 1;
    fail(h, "sqlite3_wal_checkpoint_v2(TRUNCATE)", rc);
    return -1;
}

int history_idle_step(history *h)
{
    int rc, in_wal = 0, copied = 0;
    if (!h)
        return -1;
    if (h->in_batch) {
        set_errmsg(h, "history_idle_step: a batch is open");
        return -1;
    }
    if (h->wal_peak > WAL_COMMIT_CHECKPOINT_PAGES && h->wal_pages - h->wal_copied < WAL_IDLE_CHECKPOINT_PAGES)
        return truncate_step(h);
    if (h->wal_pages - h->wal_copied < WAL_IDLE_CHECKPOINT_PAGES)
        return h->merge_due ? merge_step(h) : 0;
    /* PASSIVE: copies what no reader still needs, never waits for a reader
     * or a writer, and leaves the rest for the next step. */
    rc = sqlite3_wal_checkpoint_v2(h->db, "main", SQLITE_CHECKPOINT_PASSIVE, &in_wal, &copied);
    if (rc != SQLITE_OK) {
        fail(h, "sqlite3_wal_checkpoint_v2(PASSIVE)", rc);
        return -1;
    }
    h->wal_pages = in_wal;
    h->wal_copied = copied;
    return 1;
}

/* ---- time ------------------------------------------------------------- */

/* Days since 1970-01-01 -> proleptic Gregorian year/month/day.  Howard
 * Hinnant's civil_from_days: eras of 400 years (146097 days) starting on
 * March 1st, so the leap day is the last day of a year and needs no special
 * case.  Exact for every day we can format; no gmtime_r/gmtime_s needed. */
static void civil_from_days(int64_t days, int *year, int *month, int *day)
{
    int64_t z = days + 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;                                    /* [0, 146096] */
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365; /* [0, 399] */
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);            /* [0, 365], from March 1st */
    int64_t mp = (5 * doy + 2) / 153;                                 /* [0, 11], March = 0 */
    int64_t m = mp < 10 ? mp + 3 : mp - 9;
    *day = (int)(doy - (153 * mp + 2) / 5 + 1);
    *month = (int)m;
    *year = (int)(yoe + era * 400 + (m <= 2));
}

static void put_digits(char *out, int value, int width)
{
    while (width-- > 0) {
        out[width] = (char)('0' + value % 10);
        value /= 10;
    }
}

void history_format_time(int64_t unix_ms, char *out)
{
    /* Clamped to years 0000..9999 so the text always has HISTORY_TIME_LEN chars. */
    const int64_t min_ms = INT64_C(-62167219200000);  /* 0000-01-01T00:00:00.000Z */
    const int64_t max_ms = INT64_C(253402300799999);  /* 9999-12-31T23:59:59.999Z */
    int64_t ms, days, ms_of_day;
    int year, month, day;

    ms = unix_ms < min_ms ? min_ms : unix_ms > max_ms ? max_ms : unix_ms;
    days = ms / 86400000;
    ms_of_day = ms % 86400000;
    if (ms_of_day < 0) {   /* floor division for times before 1970 */
        ms_of_day += 86400000;
        days -= 1;
    }
    civil_from_days(days, &year, &month, &day);
    put_digits(out, year, 4);
    out[4] = '-';
    put_digits(out + 5, month, 2);
    out[7] = '-';
    put_digits(out + 8, day, 2);
    out[10] = 'T';
    put_digits(out + 11, (int)(ms_of_day / 3600000), 2);
    out[13] = ':';
    put_digits(out + 14, (int)(ms_of_day / 60000 % 60), 2);
    out[16] = ':';
    put_digits(out + 17, (int)(ms_of_day / 1000 % 60), 2);
    out[19] = '.';
    put_digits(out + 20, (int)(ms_of_day % 1000), 3);
    out[23] = 'Z';
    out[24] = '\0';
}

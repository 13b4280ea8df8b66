/* history: the chat history in SQLite (see history.h and docs/HISTORY.md):
 * opening and closing, errors, the statements and group commit.  The other
 * concerns of the module live beside it (history_internal.h lists them).
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
 * memory (batch_table.c), and commits.  Why one statement: FTS5 writes its pending index
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
 * history_idle_step as far as possible (upkeep.c).
 *
 * Opening reads PRAGMA user_version before writing anything, so a file that
 * is not a database or carries a newer schema is refused untouched; the
 * schema and its migrations are schema.c's.
 */
#include "history_internal.h"

#include "clock.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Opening runs once, before the relay serves anyone: waiting up to a second
 * for a sqlite3 CLI user who holds the write lock is better than refusing to
 * start.  Every later call uses the (tiny) busy_timeout of the options. */
#define HISTORY_OPEN_BUSY_TIMEOUT_MS 1000

/* ---- the statements -------------------------------------------------- */

/* Every statement the handle keeps prepared, with the name errors show. */
static const struct {
    const char *sql;
    const char *name;
} stmt_table[STMT_COUNT] = {
    [STMT_BEGIN] = { "BEGIN IMMEDIATE", "BEGIN IMMEDIATE" },
    [STMT_COMMIT] = { "COMMIT", "COMMIT" },
    [STMT_ROLLBACK] = { "ROLLBACK", "ROLLBACK" },
    /* The batch, read through the virtual table registered on our connection
     * only (batch_table.c), in the order it was appended. */
    [STMT_FLUSH] = { "INSERT INTO main.messages(at, room, nick, kind, body)"
                     " SELECT at, room, nick, kind, body FROM temp." BATCH_TABLE " ORDER BY rowid",
                     "INSERT INTO messages SELECT ... FROM " BATCH_TABLE },
    /* The newest ?2 rows up to id ?3 through messages_room_id, then re-sorted oldest first. */
    [STMT_RECENT] = { "SELECT id, at, room, nick, kind, body FROM ("
                      " SELECT id, at, room, nick, kind, body FROM messages"
                      " WHERE room = ?1 COLLATE NOCASE AND kind <> 'msg' AND id <= ?3 ORDER BY id DESC LIMIT ?2"
                      ") ORDER BY id ASC",
                      "recent" },
    /* Ordering by the FTS rowid lets FTS5 walk its index newest first and stop at the limit. */
    [STMT_SEARCH] = { "SELECT m.id, m.at, m.room, m.nick, m.kind, m.body"
                      " FROM messages_fts JOIN messages AS m ON m.id = messages_fts.rowid"
                      " WHERE messages_fts MATCH ?1 AND messages_fts.rowid <= ?4 AND m.room = ?2 COLLATE NOCASE"
                      " AND m.kind <> 'msg'"
                      " ORDER BY messages_fts.rowid DESC LIMIT ?3",
                      "search" },
    [STMT_MAX_ID] = { "SELECT max(id) FROM messages", "SELECT max(id) FROM messages" },
    /* Every topic row through the partial index, newest first; the caller
     * keeps the first it sees of each room. */
    /* CHATHISTORY: ids in (?2, ?3), times in (?4, ?5), through messages_room_id;
     * the time bounds only narrow an id walk (times grow with ids). */
    [STMT_RANGE_OLDEST] = { "SELECT id, at, room, nick, kind, body FROM messages"
                            " WHERE room = ?1 COLLATE NOCASE AND id > ?2 AND id < ?3 AND at > ?4 AND at < ?5"
                            " AND kind IN ('say', 'me') ORDER BY id ASC LIMIT ?6",
                            "range" },
    [STMT_RANGE_NEWEST] = { "SELECT id, at, room, nick, kind, body FROM ("
                            " SELECT id, at, room, nick, kind, body FROM messages"
                            " WHERE room = ?1 COLLATE NOCASE AND id > ?2 AND id < ?3 AND at > ?4 AND at < ?5"
                            " AND kind IN ('say', 'me') ORDER BY id DESC LIMIT ?6"
                            ") ORDER BY id ASC",
                            "range" },
    [STMT_TOPICS] = { "SELECT id, at, room, nick, kind, body FROM messages INDEXED BY messages_topic"
                      " WHERE kind = 'topic' ORDER BY room COLLATE NOCASE, id DESC",
                      "topics" },
    /* Looks only at the oldest ?3 rows (rows are appended in time order), so one
     * step costs at most ?3 row reads even when nothing is due.  ?1: ids at or
     * below it exceed retain_messages; ?2: rows older than this time exceed
     * retain_days (ISO-8601 strings of one fixed format sort like the times). */
    [STMT_PRUNE] = { "DELETE FROM messages WHERE id IN ("
                     " SELECT id FROM (SELECT id, at FROM messages ORDER BY id LIMIT ?3)"
                     " WHERE id <= ?1 OR at < ?2)",
                     "DELETE FROM messages (prune)" },
    [STMT_FTS_MERGE] = { "INSERT INTO messages_fts(messages_fts, rank) VALUES ('merge', " STRINGIFY(MERGE_PAGES) ")",
                         "INSERT INTO messages_fts ('merge')" },
    /* The cluster row; its columns have affinities, not types, so a row
     * changed by hand ('abc', 1.5) is told from ours by sqlite3_column_type. */
    [STMT_CLUSTER_STATE] = { "SELECT stream, stream_created, applied_seq FROM main.cluster WHERE id = 1",
                             "SELECT ... FROM cluster" },
    [STMT_CLUSTER_BIND] = { "INSERT INTO main.cluster(id, stream, stream_created, applied_seq) VALUES (1, ?1, ?2, 0)",
                            "INSERT INTO cluster" },
    [STMT_CLUSTER_APPLIED] = { "UPDATE main.cluster SET applied_seq = ?1 WHERE id = 1",
                               "UPDATE cluster SET applied_seq" },
    [STMT_CLUSTER_GAP] = { "INSERT INTO main.cluster_gaps(first_seq, last_seq, noted_at) VALUES (?1, ?2, ?3)",
                           "INSERT INTO cluster_gaps" },
};

/* ---- errors and statements ------------------------------------------- */

/* BUSY: another connection has the lock.  REJECTED: the content itself was
 * refused (a CHECK or a trigger a sqlite3 CLI user added, a value over a
 * limit), so retrying the same rows cannot help.  Everything else (I/O, disk
 * full, a missing table, out of memory) is the database's state: retry. */
int hist_code_of(int rc)
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

void hist_set_errmsg(history *h, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(h->errmsg, sizeof h->errmsg, fmt, ap);
    va_end(ap);
}

/* Records a failed SQLite call as "call: message (code N)" and maps it. */
int hist_fail(history *h, const char *call, int rc)
{
    int primary = rc & 0xff;
    /* For the errors that come from the file system, the OS's own code says
     * which of the many causes it was (no permission, read-only, no space). */
    int os = primary == SQLITE_CANTOPEN || primary == SQLITE_IOERR || primary == SQLITE_FULL ||
             primary == SQLITE_READONLY || primary == SQLITE_PERM ? sqlite3_system_errno(h->db) : 0;
    if (os != 0)
        hist_set_errmsg(h, "%s: %s (code %d; OS error %d)", call, sqlite3_errmsg(h->db), rc, os);
    else
        hist_set_errmsg(h, "%s: %s (code %d)", call, sqlite3_errmsg(h->db), rc);
    return hist_code_of(rc);
}

/* Puts a statement back for its next use.  sqlite3_reset repeats the error
 * of the last sqlite3_step, which the caller has already handled, so its
 * result carries no news.  Resetting also ends the statement's read of the
 * database, so no snapshot is held between calls (checkpoints can proceed). */
void hist_stmt_done(sqlite3_stmt *stmt)
{
    (void)sqlite3_reset(stmt);
    (void)sqlite3_clear_bindings(stmt);
}

int hist_step(history *h, enum history_stmt id)
{
    int rc = sqlite3_step(h->stmt[id]);
    char call[128];
    hist_stmt_done(h->stmt[id]);
    if (rc == SQLITE_DONE)
        return HISTORY_OK;
    snprintf(call, sizeof call, "sqlite3_step(%s)", stmt_table[id].name);
    return hist_fail(h, call, rc);
}

/* Abandons the open transaction, if SQLite has not already rolled it back
 * itself (it does after some I/O and disk-full errors).  Keeps the message
 * of the error that led here; adds the rollback's own failure to it. */
void hist_rollback_keep_error(history *h)
{
    int rc;
    if (sqlite3_get_autocommit(h->db))
        return;
    rc = sqlite3_step(h->stmt[STMT_ROLLBACK]);
    hist_stmt_done(h->stmt[STMT_ROLLBACK]);
    if (rc != SQLITE_DONE) {
        size_t used = strlen(h->errmsg);
        snprintf(h->errmsg + used, sizeof h->errmsg - used,
                 "; then sqlite3_step(ROLLBACK): %s (code %d)", sqlite3_errmsg(h->db), rc);
    }
}

/* Reads one integer from a one-row statement such as PRAGMA user_version. */
int hist_query_int(history *h, const char *sql, sqlite3_int64 *value)
{
    sqlite3_stmt *stmt = NULL;
    char call[80];
    int rc = sqlite3_prepare_v2(h->db, sql, -1, &stmt, NULL);
    if (rc != SQLITE_OK) {
        snprintf(call, sizeof call, "sqlite3_prepare_v2(%s)", sql);
        return hist_fail(h, call, rc);
    }
    rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW)
        *value = sqlite3_column_int64(stmt, 0);
    (void)sqlite3_finalize(stmt); /* repeats the step's error, handled below */
    if (rc == SQLITE_ROW)
        return HISTORY_OK;
    snprintf(call, sizeof call, "sqlite3_step(%s)", sql);
    return hist_fail(h, call, rc == SQLITE_DONE ? SQLITE_ERROR : rc);
}

int hist_exec(history *h, const char *sql, const char *name)
{
    char *msg = NULL;
    int rc = sqlite3_exec(h->db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        hist_set_errmsg(h, "sqlite3_exec(%s): %s (code %d)", name, msg ? msg : sqlite3_errstr(rc), rc);
        sqlite3_free(msg);
        return hist_code_of(rc);
    }
    return HISTORY_OK;
}

/* ---- opening ---------------------------------------------------------- */

static int prepare_range(history *h, int from, int to)
{
    int i;
    for (i = from; i < to; i++) {
        int rc = sqlite3_prepare_v3(h->db, stmt_table[i].sql, -1, SQLITE_PREPARE_PERSISTENT, &h->stmt[i], NULL);
        if (rc != SQLITE_OK) {
            hist_set_errmsg(h, "sqlite3_prepare_v3(%s): %s (code %d)", stmt_table[i].name,
                            sqlite3_errmsg(h->db), rc);
            return hist_code_of(rc);
        }
    }
    return HISTORY_OK;
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
        r = hist_fail(h, "sqlite3_busy_timeout", rc);
        snprintf(err, errlen, "history \"%s\": %s", path, h->errmsg);
        return r;
    }

    /* The first read: a file that is not a database fails here (SQLITE_NOTADB),
     * before anything has been written to it. */
    r = hist_query_int(h, "PRAGMA user_version", &version);
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
    r = prepare_range(h, STMT_BEGIN, STMT_ROLLBACK + 1);
    if (r != HISTORY_OK) {
        snprintf(err, errlen, "history \"%s\": %s", path, h->errmsg);
        return HISTORY_ERROR;
    }
    if (version < HISTORY_SCHEMA_VERSION) {
        sqlite3_int64 from = version;
        r = hist_schema_migrate(h, &version);
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

    r = hist_schema_wal(h);
    if (r == HISTORY_OK)
        r = hist_exec(h, "PRAGMA synchronous = NORMAL", "PRAGMA synchronous = NORMAL");
    if (r == HISTORY_OK) {
        char sql[64];
        snprintf(sql, sizeof sql, "PRAGMA journal_size_limit = %lld", WAL_SIZE_LIMIT_BYTES);
        r = hist_exec(h, sql, sql);
    }
    if (r == HISTORY_OK && opt->cache_pages > 0) {
        char sql[48];
        snprintf(sql, sizeof sql, "PRAGMA cache_size = %d", opt->cache_pages);
        r = hist_exec(h, sql, sql);
    }
    if (r == HISTORY_OK)
        (void)sqlite3_wal_hook(h->db, hist_wal_committed, h);   /* returns the previous hook's context */
    if (r == HISTORY_OK)
        r = hist_batch_register(h);
    if (r == HISTORY_OK)
        r = prepare_range(h, STMT_ROLLBACK + 1, STMT_COUNT);
    if (r == HISTORY_OK)
        r = hist_schema_tune_fts(h);
    if (r == HISTORY_OK)
        r = hist_schema_prove_writable(h);
    if (r == HISTORY_OK)
        r = hist_schema_read_last_id(h);
    h->merge_due = 1;   /* whatever earlier runs left unmerged */
    if (r == HISTORY_OK) {
        rc = sqlite3_busy_timeout(h->db, opt->busy_timeout_ms > 0 ? opt->busy_timeout_ms : 0);
        if (rc != SQLITE_OK)
            r = hist_fail(h, "sqlite3_busy_timeout", rc);
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
    int i;
    if (!h)
        return;
    if (h->in_batch)
        history_rollback(h);
    for (i = 0; i < STMT_COUNT; i++) {
        /* finalize returns the last step's error, already reported */
        (void)sqlite3_finalize(h->stmt[i]);
        h->stmt[i] = NULL;
    }
    if (h->db && sqlite3_close(h->db) != SQLITE_OK) {
        /* Only unfinalized statements make close fail, and all of ours are
         * finalized; sqlite3_close_v2 still frees the connection once they go. */
        (void)sqlite3_close_v2(h->db);
    }
    hist_batch_free(h);
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
        hist_set_errmsg(h, "history_begin: a batch is already open");
        return HISTORY_ERROR;
    }
    r = hist_step(h, STMT_BEGIN);
    if (r != HISTORY_OK) {
        hist_rollback_keep_error(h);
        return r;
    }
    h->in_batch = 1;
    h->batch_failed = HISTORY_OK;
    return HISTORY_OK;
}

static const char *const kind_names[HISTORY_KIND_COUNT] = {
    [HISTORY_SAY] = "say", [HISTORY_ME] = "me", [HISTORY_JOIN] = "join",
    [HISTORY_LEAVE] = "leave", [HISTORY_NICK] = "nick", [HISTORY_MSG] = "msg",
    [HISTORY_TOPIC] = "topic",
};

const char *history_kind_name(history_kind kind)
{
    return kind > HISTORY_KIND_NONE && kind < HISTORY_KIND_COUNT ? kind_names[kind] : NULL;
}

history_kind history_kind_parse(const char *name)
{
    int k;
    for (k = HISTORY_KIND_NONE + 1; name && k < HISTORY_KIND_COUNT; k++)
        if (strcmp(name, kind_names[k]) == 0)
            return (history_kind)k;
    return HISTORY_KIND_NONE;
}

static int check_record(history *h, const history_record *rec)
{
    if (!rec || !rec->at || !rec->room || !rec->nick || (!rec->body && rec->body_len)) {
        hist_set_errmsg(h, "history_append: record with a missing field");
        return HISTORY_REJECTED;
    }
    if (strlen(rec->at) != HISTORY_TIME_LEN) {
        hist_set_errmsg(h, "history_append: time \"%.40s\" is not in the form 2026-11-27T03:04:05.123Z", rec->at);
        return HISTORY_REJECTED;
    }
    if (!history_kind_name(rec->kind)) {
        hist_set_errmsg(h, "history_append: kind %d is not one of say, me, join, leave, nick, msg, topic", (int)rec->kind);
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
        hist_set_errmsg(h, "history_append: no batch open (call history_begin first)");
        return HISTORY_ERROR;
    }
    if (check_record(h, rec) != HISTORY_OK)
        return HISTORY_REJECTED;
    src[FIELD_AT] = rec->at;
    src[FIELD_ROOM] = rec->room;
    src[FIELD_NICK] = rec->nick;
    src[FIELD_KIND] = history_kind_name(rec->kind);
    src[FIELD_BODY] = rec->body ? rec->body : "";
    len[FIELD_AT] = HISTORY_TIME_LEN;
    len[FIELD_ROOM] = strlen(rec->room);
    len[FIELD_NICK] = strlen(rec->nick);
    len[FIELD_KIND] = strlen(src[FIELD_KIND]);
    len[FIELD_BODY] = rec->body_len;
    /* What SQLite would refuse at the commit is refused here, naming the
     * line, while the caller still knows which one it is. */
    max_len = (size_t)sqlite3_limit(h->db, SQLITE_LIMIT_LENGTH, -1);
    for (i = 0; i < FIELDS; i++) {
        if (len[i] > max_len) {
            hist_set_errmsg(h, "history_append: a field of %llu bytes is longer than SQLite's limit of %llu",
                       (unsigned long long)len[i], (unsigned long long)max_len);
            return HISTORY_REJECTED;
        }
        total += len[i];
    }
    if (!hist_batch_reserve(h, total)) {
        hist_set_errmsg(h, "history_append: out of memory for a batch of %llu lines",
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
        hist_set_errmsg(h, "history_commit: no batch open");
        return HISTORY_ERROR;
    }
    h->in_batch = 0;
    if (h->batch_failed != HISTORY_OK) {
        hist_batch_reset(h);
        hist_rollback_keep_error(h);
        return h->batch_failed;
    }
    r = HISTORY_OK;
    flushed = h->nrows > 0;
    if (flushed)
        r = hist_step(h, STMT_FLUSH);
    if (r == HISTORY_OK && h->nrows > 0)
        h->merge_due = 1;
    hist_batch_reset(h);
    last_id = sqlite3_last_insert_rowid(h->db);
    if (r == HISTORY_OK)
        r = hist_step(h, STMT_COMMIT);
    if (r != HISTORY_OK)
        hist_rollback_keep_error(h);
    else if (flushed)
        h->last_id = last_id;
    return r;
}

int64_t history_last_commit_id(const history *h)
{
    return h ? h->last_id : 0;
}

void history_rollback(history *h)
{
    if (!h || !h->in_batch)
        return;
    h->in_batch = 0;
    h->batch_failed = HISTORY_OK;
    hist_batch_reset(h);
    hist_rollback_keep_error(h);
}


/* ---- cluster mode ----------------------------------------------------- */

/* Values quoted in messages: at most SHOWN_LEN bytes of them (a JetStream
 * name is at most 255, a time about 30), control bytes as '?', so that a
 * value changed by hand cannot break the log's one line per message. */
#define SHOWN_LEN 100

static const char *shown(const char *in, char out[SHOWN_LEN + 1])
{
    size_t i;
    for (i = 0; in && in[i] && i < SHOWN_LEN; i++)
        out[i] = (unsigned char)in[i] < 0x20 || in[i] == 0x7f ? '?' : in[i];
    out[i] = '\0';
    return out;
}

static const char *type_name(int type)
{
    switch (type) {
    case SQLITE_INTEGER: return "an integer";
    case SQLITE_FLOAT: return "a real";
    case SQLITE_TEXT: return "text";
    case SQLITE_BLOB: return "a blob";
    default: return "NULL";
    }
}

/* Steps STMT_CLUSTER_STATE.  HISTORY_OK with *bound = 0 (statement reset)
 * or *bound = 1 with the statement on the row, its three columns checked to
 * be what chatrelay writes (the caller reads them, then hist_stmt_done).
 * Anything else leaves the reason, prefixed with caller, in h->errmsg. */
static int cluster_row(history *h, const char *caller, int *bound)
{
    static const char *const column[3] = { "stream", "stream_created", "applied_seq" };
    sqlite3_stmt *stmt = h->stmt[STMT_CLUSTER_STATE];
    char call[96];
    int rc = sqlite3_step(stmt), i;
    *bound = 0;
    if (rc == SQLITE_DONE) {
        hist_stmt_done(stmt);
        return HISTORY_OK;
    }
    if (rc != SQLITE_ROW) {
        hist_stmt_done(stmt);
        snprintf(call, sizeof call, "%s: sqlite3_step(%s)", caller, stmt_table[STMT_CLUSTER_STATE].name);
        return hist_fail(h, call, rc);
    }
    /* Types before any conversion: INTEGER affinity keeps 'abc' as text. */
    for (i = 0; i < 3; i++) {
        int want = i < 2 ? SQLITE_TEXT : SQLITE_INTEGER;
        int type = sqlite3_column_type(stmt, i);
        if (type != want) {
            char text[SHOWN_LEN + 1], value[SHOWN_LEN + 16];
            if (type == SQLITE_BLOB)
                snprintf(value, sizeof value, "of %d bytes", sqlite3_column_bytes(stmt, i));
            else
                snprintf(value, sizeof value, "(%s)", shown((const char *)sqlite3_column_text(stmt, i), text));
            hist_set_errmsg(h, "%s: the cluster row was changed by hand: %s is %s %s, not %s; "
                            "the file no longer says %s",
                            caller, column[i], type_name(type), value, type_name(want),
                            i < 2 ? "which stream it holds" : "where to resume");
            hist_stmt_done(stmt);
            return HISTORY_ERROR;
        }
    }
    if (sqlite3_column_int64(stmt, 2) < 0) {
        hist_set_errmsg(h, "%s: the cluster row was changed by hand: applied_seq is %lld, and stream "
                        "sequences are never negative; the file no longer says where to resume",
                        caller, (long long)sqlite3_column_int64(stmt, 2));
        hist_stmt_done(stmt);
        return HISTORY_ERROR;
    }
    if (!sqlite3_column_text(stmt, 0) || !sqlite3_column_text(stmt, 1)) {   /* text already: only NOMEM */
        hist_stmt_done(stmt);
        snprintf(call, sizeof call, "%s: sqlite3_column_text(cluster)", caller);
        return hist_fail(h, call, SQLITE_NOMEM);
    }
    *bound = 1;
    return HISTORY_OK;
}

/* Copies column i of the state row into out (if wanted); HISTORY_ERROR
 * when it does not fit, rather than a name cut into another stream's. */
static int copy_column(history *h, int i, const char *what, char *out, size_t cap)
{
    sqlite3_stmt *stmt = h->stmt[STMT_CLUSTER_STATE];
    const char *text = (const char *)sqlite3_column_text(stmt, i);
    size_t len = (size_t)sqlite3_column_bytes(stmt, i);
    if (!out)
        return HISTORY_OK;
    if (len >= cap) {
        hist_set_errmsg(h, "history_cluster_state: the %s (%llu bytes) does not fit in %llu bytes",
                        what, (unsigned long long)len, (unsigned long long)cap);
        return HISTORY_ERROR;
    }
    memcpy(out, text, len);
    out[len] = '\0';
    return HISTORY_OK;
}

int history_cluster_state(history *h, int *bound, char *stream, size_t stream_cap,
                          char *created, size_t created_cap, uint64_t *applied_seq)
{
    int is_bound = 0, r;
    if (stream && stream_cap)
        stream[0] = '\0';
    if (created && created_cap)
        created[0] = '\0';
    if (applied_seq)
        *applied_seq = 0;
    if (bound)
        *bound = 0;
    r = cluster_row(h, "history_cluster_state", &is_bound);
    if (r != HISTORY_OK || !is_bound)
        return r;
    r = copy_column(h, 0, "stream name", stream, stream_cap);
    if (r == HISTORY_OK)
        r = copy_column(h, 1, "stream's creation time", created, created_cap);
    if (r == HISTORY_OK && applied_seq)
        *applied_seq = (uint64_t)sqlite3_column_int64(h->stmt[STMT_CLUSTER_STATE], 2);
    hist_stmt_done(h->stmt[STMT_CLUSTER_STATE]);
    if (r != HISTORY_OK) {
        if (stream && stream_cap)
            stream[0] = '\0';
        if (created && created_cap)
            created[0] = '\0';
        return r;
    }
    if (bound)
        *bound = 1;
    return HISTORY_OK;
}

/* Steps an INSERT or UPDATE of the cluster tables that must change exactly
 * one row (a trigger added by hand could make it change none). */
static int cluster_write(history *h, enum history_stmt id, const char *caller)
{
    int r = hist_step(h, id);
    if (r == HISTORY_OK && sqlite3_changes(h->db) != 1) {
        hist_set_errmsg(h, "%s: %s changed %d rows, not 1", caller, stmt_table[id].name, sqlite3_changes(h->db));
        r = HISTORY_ERROR;
    }
    return r;
}

/* Inside BEGIN IMMEDIATE: the file's row against the stream asked for, or
 * the new row.  A refusal leaves its reason in h->errmsg. */
static int cluster_bind_locked(history *h, const char *stream, const char *created)
{
    sqlite3_stmt *stmt = h->stmt[STMT_CLUSTER_STATE];
    int bound = 0, rc;
    int r = cluster_row(h, "history_cluster_bind", &bound);
    if (r != HISTORY_OK)
        return r;
    if (bound) {
        const char *have = (const char *)sqlite3_column_text(stmt, 0);
        const char *have_created = (const char *)sqlite3_column_text(stmt, 1);
        char a[SHOWN_LEN + 1], b[SHOWN_LEN + 1], c[SHOWN_LEN + 1], d[SHOWN_LEN + 1];
        /* Byte for byte: a name with a NUL inside (made by hand) is not ours. */
        if ((size_t)sqlite3_column_bytes(stmt, 0) != strlen(stream) || strcmp(have, stream) != 0) {
            hist_set_errmsg(h, "history_cluster_bind: this database belongs to stream \"%s\" (created %s), "
                            "not to stream \"%s\" (created %s); use that stream's database or a new file",
                            shown(have, a), shown(have_created, b), shown(stream, c), shown(created, d));
            r = HISTORY_REJECTED;
        } else if ((size_t)sqlite3_column_bytes(stmt, 1) != strlen(created) || strcmp(have_created, created) != 0) {
            hist_set_errmsg(h, "history_cluster_bind: this database belongs to stream \"%s\" created %s, "
                            "not to the stream of that name created %s: a stream deleted and created again "
                            "restarts its sequences; use a new file",
                            shown(have, a), shown(have_created, b), shown(created, c));
            r = HISTORY_REJECTED;
        }
        hist_stmt_done(stmt);
        return r;
    }
    /* Unbound: only an empty file may join, since the cluster's ids and
     * order are the stream's, which a single node's rows never were. */
    rc = sqlite3_step(h->stmt[STMT_MAX_ID]);
    if (rc == SQLITE_ROW && sqlite3_column_type(h->stmt[STMT_MAX_ID], 0) != SQLITE_NULL) {
        char a[SHOWN_LEN + 1], b[SHOWN_LEN + 1];
        hist_set_errmsg(h, "history_cluster_bind: this database holds lines stored as a single node "
                        "(ids up to %lld), whose ids and order are not those of stream \"%s\" "
                        "(created %s); cluster mode needs a new file",
                        (long long)sqlite3_column_int64(h->stmt[STMT_MAX_ID], 0), shown(stream, a), shown(created, b));
        hist_stmt_done(h->stmt[STMT_MAX_ID]);
        return HISTORY_REJECTED;
    }
    hist_stmt_done(h->stmt[STMT_MAX_ID]);
    if (rc != SQLITE_ROW)
        return hist_fail(h, "history_cluster_bind: sqlite3_step(SELECT max(id) FROM messages)", rc);
    rc = sqlite3_bind_text(h->stmt[STMT_CLUSTER_BIND], 1, stream, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(h->stmt[STMT_CLUSTER_BIND], 2, created, -1, SQLITE_STATIC);
    if (rc != SQLITE_OK) {
        hist_stmt_done(h->stmt[STMT_CLUSTER_BIND]);
        return hist_fail(h, "history_cluster_bind: sqlite3_bind_text(INSERT INTO cluster)", rc);
    }
    return cluster_write(h, STMT_CLUSTER_BIND, "history_cluster_bind");
}

int history_cluster_bind(history *h, const char *stream, const char *created, char *err, size_t errlen)
{
    char dummy[1];
    int r;
    if (!err || errlen == 0) {
        err = dummy;
        errlen = sizeof dummy;
    }
    err[0] = '\0';
    if (h->in_batch) {
        hist_set_errmsg(h, "history_cluster_bind: a batch is open (bind before history_begin)");
        r = HISTORY_ERROR;
    } else if (!stream || !stream[0] || !created || !created[0]) {
        hist_set_errmsg(h, "history_cluster_bind: no stream name or creation time");
        r = HISTORY_ERROR;
    } else {
        r = hist_step(h, STMT_BEGIN);
        if (r == HISTORY_OK)
            r = cluster_bind_locked(h, stream, created);
        /* Also when nothing was written (already bound): ends the read. */
        if (r == HISTORY_OK)
            r = hist_step(h, STMT_COMMIT);
        if (r != HISTORY_OK)
            hist_rollback_keep_error(h);
    }
    if (r != HISTORY_OK)
        snprintf(err, errlen, "%s", h->errmsg);
    return r;
}

/* The checks history_cluster_applied and _gap share: an open, unpoisoned
 * batch, a bound database; *applied := its applied sequence. */
static int cluster_in_batch(history *h, const char *caller, sqlite3_int64 *applied)
{
    int bound = 0, r;
    if (!h->in_batch) {
        hist_set_errmsg(h, "%s: no batch open (call history_begin first)", caller);
        return HISTORY_ERROR;
    }
    r = cluster_row(h, caller, &bound);
    if (r != HISTORY_OK)
        return r;
    if (!bound) {
        hist_set_errmsg(h, "%s: the database is not bound to a stream (history_cluster_bind first)", caller);
        return HISTORY_ERROR;
    }
    *applied = sqlite3_column_int64(h->stmt[STMT_CLUSTER_STATE], 2);
    hist_stmt_done(h->stmt[STMT_CLUSTER_STATE]);
    return HISTORY_OK;
}

static int cluster_applied(history *h, uint64_t seq)
{
    sqlite3_int64 applied = 0;
    int rc, r;
    if (seq > (uint64_t)INT64_MAX) {
        hist_set_errmsg(h, "history_cluster_applied: sequence %llu is past SQLite's largest integer",
                        (unsigned long long)seq);
        return HISTORY_ERROR;
    }
    r = cluster_in_batch(h, "history_cluster_applied", &applied);
    if (r != HISTORY_OK)
        return r;
    if ((sqlite3_int64)seq <= applied) {
        hist_set_errmsg(h, "history_cluster_applied: sequence %llu is not after the one already applied (%lld): "
                        "the stream is applied in order, each record once",
                        (unsigned long long)seq, (long long)applied);
        return HISTORY_ERROR;
    }
    rc = sqlite3_bind_int64(h->stmt[STMT_CLUSTER_APPLIED], 1, (sqlite3_int64)seq);
    if (rc != SQLITE_OK) {
        hist_stmt_done(h->stmt[STMT_CLUSTER_APPLIED]);
        return hist_fail(h, "history_cluster_applied: sqlite3_bind_int64(UPDATE cluster)", rc);
    }
    return cluster_write(h, STMT_CLUSTER_APPLIED, "history_cluster_applied");
}

static int cluster_gap(history *h, uint64_t first_seq, uint64_t last_seq, const char *at)
{
    sqlite3_stmt *stmt = h->stmt[STMT_CLUSTER_GAP];
    sqlite3_int64 applied = 0;
    int rc, r;
    if (first_seq < 1 || first_seq > last_seq || last_seq > (uint64_t)INT64_MAX) {
        hist_set_errmsg(h, "history_cluster_gap: %llu .. %llu is not a range of stream sequences",
                        (unsigned long long)first_seq, (unsigned long long)last_seq);
        return HISTORY_ERROR;
    }
    if (!at || strlen(at) != HISTORY_TIME_LEN) {
        hist_set_errmsg(h, "history_cluster_gap: time \"%.40s\" is not in the form 2026-11-27T03:04:05.123Z",
                        at ? at : "(null)");
        return HISTORY_ERROR;
    }
    r = cluster_in_batch(h, "history_cluster_gap", &applied);
    if (r != HISTORY_OK)
        return r;
    if ((sqlite3_int64)first_seq <= applied) {
        hist_set_errmsg(h, "history_cluster_gap: the gap %llu .. %llu starts at or before the applied sequence "
                        "%lld (note a gap before applying what follows it)",
                        (unsigned long long)first_seq, (unsigned long long)last_seq, (long long)applied);
        return HISTORY_ERROR;
    }
    rc = sqlite3_bind_int64(stmt, 1, (sqlite3_int64)first_seq);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(stmt, 2, (sqlite3_int64)last_seq);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(stmt, 3, at, HISTORY_TIME_LEN, SQLITE_STATIC);
    if (rc != SQLITE_OK) {
        hist_stmt_done(stmt);
        return hist_fail(h, "history_cluster_gap: sqlite3_bind(INSERT INTO cluster_gaps)", rc);
    }
    return cluster_write(h, STMT_CLUSTER_GAP, "history_cluster_gap");
}

/* Both poison the batch on failure, as history_append does: the batch is
 * then lost already, and the first message is kept. */
int history_cluster_applied(history *h, uint64_t seq)
{
    int r;
    if (h->in_batch && h->batch_failed != HISTORY_OK)
        return h->batch_failed;
    r = cluster_applied(h, seq);
    if (r != HISTORY_OK && h->in_batch)
        h->batch_failed = r;
    return r;
}

int history_cluster_gap(history *h, uint64_t first_seq, uint64_t last_seq, const char *at)
{
    int r;
    if (h->in_batch && h->batch_failed != HISTORY_OK)
        return h->batch_failed;
    r = cluster_gap(h, first_seq, last_seq, at);
    if (r != HISTORY_OK && h->in_batch)
        h->batch_failed = r;
    return r;
}

int64_t history_newest_id(history *h)
{
    if (!h->in_batch)
        (void)hist_schema_read_last_id(h);   /* keeps h->last_id on failure */
    return h->last_id;
}

/* ---- time ------------------------------------------------------------- */

/* The one formatter of times is clock.c's; `at` is its text. */
_Static_assert(HISTORY_TIME_LEN == CLOCK_TIME_LEN, "history's `at` is clock_format_utc's text");

void history_format_time(int64_t unix_ms, char *out)
{
    clock_format_utc(unix_ms, out);
}

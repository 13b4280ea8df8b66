/* schema: the history file's layout, its forward migrations, the pragmas of
 * the relay's connection and the proof that the file can be written (see
 * history_internal.h; the layout itself is documented in docs/HISTORY.md).
 *
 * Forward migrations are an ordered array of SQL steps, run in one BEGIN
 * IMMEDIATE transaction together with the new user_version; WAL is switched
 * on only after a successful migration, so a failed one leaves the file as
 * it was.
 */
#include "history_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    ("DROP INDEX messages_room_id;\n"
     "CREATE INDEX messages_room_id ON messages(room COLLATE NOCASE, id);\n"),
    /* 2 -> 3: rooms have topics (kind 'topic', set from IRC); the relay
     * reads the newest of each room at start through this partial index,
     * which holds only the topic rows. */
    "CREATE INDEX messages_topic ON messages(room COLLATE NOCASE, id) WHERE kind = 'topic';\n",
    /* 3 -> 4: cluster mode (docs/CLUSTER.md).  cluster holds at most one
     * row, the stream the file was bound to and the last stream sequence
     * applied to it, written in the same transaction as the rows it brought,
     * so a node killed at any moment resumes right after what the file holds;
     * no row is a single-node database.  cluster_gaps lists the sequences the
     * stream no longer held when the node caught up: a gap in the history
     * said, not hidden.  Plain CREATE, as in 0 -> 1: a table of the same name
     * someone else made fails the step instead of being adopted. */
    ("CREATE TABLE cluster(\n"
     "  id INTEGER PRIMARY KEY CHECK (id = 1),\n"
     "  stream TEXT NOT NULL,\n"
     "  stream_created TEXT NOT NULL,\n"
     "  applied_seq INTEGER NOT NULL\n"
     ");\n"
     "CREATE TABLE cluster_gaps(\n"
     "  first_seq INTEGER NOT NULL,\n"
     "  last_seq INTEGER NOT NULL,\n"
     "  noted_at TEXT NOT NULL\n"
     ");\n"),
};

_Static_assert(sizeof migrations / sizeof migrations[0] == HISTORY_SCHEMA_VERSION,
               "one migration step per schema version");

/* Brings the schema from *version up to HISTORY_SCHEMA_VERSION in one
 * transaction.  The version is read again under the write lock, in case
 * another process migrated the file since we first looked. */
int hist_schema_migrate(history *h, sqlite3_int64 *version)
{
    char name[48], sql[48];
    sqlite3_int64 v = 0;
    int r = hist_step(h, STMT_BEGIN);
    if (r != HISTORY_OK)
        return r;
    r = hist_query_int(h, "PRAGMA user_version", &v);
    if (r == HISTORY_OK && v > HISTORY_SCHEMA_VERSION) {
        *version = v;
        r = HISTORY_TOO_NEW;
    }
    for (; r == HISTORY_OK && v < HISTORY_SCHEMA_VERSION; v++) {
        snprintf(name, sizeof name, "migration %d -> %d", (int)v, (int)v + 1);
        r = hist_exec(h, migrations[v], name);
    }
    if (r == HISTORY_OK) {
        snprintf(sql, sizeof sql, "PRAGMA user_version = %d", HISTORY_SCHEMA_VERSION);
        r = hist_exec(h, sql, sql);
    }
    if (r == HISTORY_OK)
        r = hist_step(h, STMT_COMMIT);
    if (r != HISTORY_OK) {
        hist_rollback_keep_error(h);
        return r;
    }
    *version = HISTORY_SCHEMA_VERSION;
    return HISTORY_OK;
}

int hist_schema_wal(history *h)
{
    sqlite3_stmt *stmt = NULL;
    int r = HISTORY_OK;
    int rc = sqlite3_prepare_v2(h->db, "PRAGMA journal_mode = WAL", -1, &stmt, NULL);
    if (rc != SQLITE_OK)
        return hist_fail(h, "sqlite3_prepare_v2(PRAGMA journal_mode = WAL)", rc);
    rc = sqlite3_step(stmt);
    if (rc != SQLITE_ROW)
        r = hist_fail(h, "sqlite3_step(PRAGMA journal_mode = WAL)", rc == SQLITE_DONE ? SQLITE_ERROR : rc);
    else {
        const char *mode = (const char *)sqlite3_column_text(stmt, 0);
        /* "memory" is what an in-memory database answers; anything else
         * would silently give up the crash safety we promise. */
        if (!mode || (sqlite3_stricmp(mode, "wal") != 0 && sqlite3_stricmp(mode, "memory") != 0)) {
            hist_set_errmsg(h, "PRAGMA journal_mode = WAL: the journal mode stayed \"%s\"", mode ? mode : "");
            r = HISTORY_ERROR;
        }
    }
    (void)sqlite3_finalize(stmt); /* repeats the step's error, handled above */
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
 * disk), opening goes on without them and the next open tries again.  A
 * failed read is another matter: the file cannot be read (or SQLite lost
 * track of its lock, which makes every later write need an exclusive lock
 * that any other open connection refuses, as the fault sweep found), so it
 * fails the open. */
int hist_schema_tune_fts(history *h)
{
    sqlite3_int64 automerge = -1, crisismerge = -1;
    char sql[160];
    int rc = fts_setting(h, "automerge", &automerge);
    if (rc == SQLITE_OK)
        rc = fts_setting(h, "crisismerge", &crisismerge);
    if (rc != SQLITE_OK)
        return hist_fail(h, "reading the FTS5 settings (messages_fts_config)", rc);
    if (automerge == FTS_AUTOMERGE && crisismerge == FTS_CRISISMERGE)
        return HISTORY_OK;
    snprintf(sql, sizeof sql,
             "INSERT INTO messages_fts(messages_fts, rank) VALUES ('automerge', %d);"
             "INSERT INTO messages_fts(messages_fts, rank) VALUES ('crisismerge', %d)",
             FTS_AUTOMERGE, FTS_CRISISMERGE);
    if (hist_step(h, STMT_BEGIN) == HISTORY_OK && hist_exec(h, sql, "FTS5 settings") == HISTORY_OK &&
        hist_step(h, STMT_COMMIT) == HISTORY_OK)
        return HISTORY_OK;
    hist_rollback_keep_error(h);
    h->errmsg[0] = '\0';   /* not an error of the handle: nothing it does depends on this */
    return HISTORY_OK;
}

/* One write transaction that changes nothing a reader can see (user_version
 * set to what it is), committed through the WAL: a file, WAL or -shm this
 * process cannot write fails here, at the start, where the service manager
 * and the admin see it.  Another connection holding the write lock past the
 * open's wait does not make the database unusable: accepted (the relay holds
 * lines and retries until the lock is released). */
int hist_schema_prove_writable(history *h)
{
    int r = hist_step(h, STMT_BEGIN);
    if (r == HISTORY_OK)
        r = hist_exec(h, "PRAGMA user_version = " STRINGIFY(HISTORY_SCHEMA_VERSION), "PRAGMA user_version");
    if (r == HISTORY_OK)
        r = hist_step(h, STMT_COMMIT);
    if (r != HISTORY_OK) {
        hist_rollback_keep_error(h);
        if (r == HISTORY_BUSY) {
            h->errmsg[0] = '\0';
            return HISTORY_OK;
        }
        size_t used = strlen(h->errmsg);
        snprintf(h->errmsg + used, sizeof h->errmsg - used, " (cannot write the database)");
    }
    return r;
}

/* h->last_id := the newest id in the file (history_newest_id). */
int hist_schema_read_last_id(history *h)
{
    int rc = sqlite3_step(h->stmt[STMT_MAX_ID]);
    if (rc == SQLITE_ROW)
        h->last_id = sqlite3_column_int64(h->stmt[STMT_MAX_ID], 0);
    hist_stmt_done(h->stmt[STMT_MAX_ID]);
    return rc == SQLITE_ROW ? HISTORY_OK : hist_fail(h, "sqlite3_step(SELECT max(id) FROM messages)", rc);
}

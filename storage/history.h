/* history: the chat history in SQLite, the table users query with the sqlite3 CLI.
 *
 * Owns: opening/creating the database (WAL, synchronous=NORMAL, a tiny
 * busy_timeout so the I/O thread never sleeps long), the schema and its
 * forward migrations (PRAGMA user_version), prepared statements, batched
 * appends (one transaction per loop turn: history_begin, history_append...,
 * history_commit), replay/search queries, retention pruning, and the upkeep
 * that waits for idle moments (WAL checkpoints, full-text index merges).
 * Never: runs inside a completion routine, retries by sleeping, or decides
 * what to do when the database is busy (the caller keeps the batch pending).
 * Portable C11 over the SQLite C API; the schema is documented in docs/HISTORY.md.
 *
 *   messages(id INTEGER PRIMARY KEY, at TEXT NOT NULL, room TEXT NOT NULL,
 *            nick TEXT NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL)
 *   index messages_room_id ON messages(room COLLATE NOCASE, id): room names are
 *   case-insensitive (ASCII), so a room's past does not depend on its spelling
 *   messages_fts: FTS5 over body (external content = messages, kept by triggers)
 *   cluster(id = 1, stream, stream_created, applied_seq): at most one row, the
 *   JetStream stream a cluster node's file belongs to and the last stream
 *   sequence applied to it; no row = a single-node database
 *   cluster_gaps(first_seq, last_seq, noted_at): sequences the stream no
 *   longer held when this node caught up (docs/CLUSTER.md)
 */
#ifndef CHATRELAY_HISTORY_H
#define CHATRELAY_HISTORY_H

#include <stddef.h>
#include <stdint.h>

enum {
    HISTORY_OK = 0,
    HISTORY_BUSY = 1,    /* locked by another connection: nothing written, retry later */
    HISTORY_ERROR = 2,   /* I/O error, disk full, ...: nothing written, retry later; see history_errmsg */
    HISTORY_TOO_NEW = 3, /* history_open: the file's schema is newer than this program; untouched */
    HISTORY_LIMIT = 4,   /* history_search: stopped at its work budget (rows so far were delivered) */
    HISTORY_REJECTED = 5 /* history_commit: the database refused the batch's content (a constraint or
                          * trigger, a value too big, a malformed record): nothing written, and the same
                          * batch would be refused again; the caller must find and drop the record */
};

#define HISTORY_SCHEMA_VERSION 4
#define HISTORY_TIME_LEN 24   /* "2026-11-27T03:04:05.123Z" */

/* What a stored line is, shared by chat (which says it), the hub (which
 * holds it) and storage (which writes it as the text of the `kind` column:
 * the only place the strings appear).  HISTORY_KIND_NONE: "not stored" for
 * writers, "not one of ours" (a row someone else wrote) for readers. */
typedef enum history_kind {
    HISTORY_KIND_NONE = 0,
    HISTORY_SAY,         /* "say": a chat line */
    HISTORY_ME,          /* "me": an action (/me) */
    HISTORY_JOIN,        /* "join" */
    HISTORY_LEAVE,       /* "leave": body = the reason */
    HISTORY_NICK,        /* "nick": nick = the old one, body = the new one */
    HISTORY_MSG,         /* "msg": a private message (--log-private), body "to NICK: text" */
    HISTORY_TOPIC,       /* "topic": nick set the room's topic to body ("" = cleared) */
    HISTORY_KIND_COUNT
} history_kind;

/* The kind column's text of kind ("say", ...); NULL for NONE or out of range. */
const char *history_kind_name(history_kind kind);
/* The kind whose column text is name; HISTORY_KIND_NONE if none is. */
history_kind history_kind_parse(const char *name);

typedef struct history_record {
    int64_t id;          /* set by queries; ignored by history_append */
    const char *at;      /* UTC ISO-8601 with milliseconds, HISTORY_TIME_LEN chars */
    const char *room;
    const char *nick;
    history_kind kind;
    const char *body;    /* valid UTF-8 (cleaned by the caller) */
    size_t body_len;
} history_record;

typedef struct history_options {
    int busy_timeout_ms;       /* default 0 when the struct is zeroed; keep <= 5 on the I/O thread */
    int retain_days;           /* 0 = keep forever */
    int64_t retain_messages;   /* 0 = keep everything */
    int cache_pages;           /* 0 = SQLite's default page cache; tests use a tiny one so that a
                                * large batch spills pages into the WAL before its commit */
} history_options;

typedef struct history history;

/* Opens or creates path (UTF-8; parent folder must exist), applies the
 * pragmas, creates or migrates the schema, and proves the file writable with
 * one small write transaction (a database this process cannot write fails
 * here, not at the first chat line; one locked by another connection past
 * the open's wait is accepted: writes are retried).  On failure returns
 * HISTORY_ERROR or HISTORY_TOO_NEW with a one-line explanation (naming path
 * and cause) in err. */
int history_open(history **out, const char *path, const history_options *opt,
                 char *err, size_t errlen);
void history_close(history *h);
/* The last SQLite error of h as "call: message (code N)". */
const char *history_errmsg(const history *h);

/* Group commit.  history_begin starts a write transaction (BEGIN IMMEDIATE);
 * HISTORY_BUSY if another connection holds the write lock.  history_append
 * inserts one row (messages + FTS in the same transaction).  history_commit
 * commits; on any non-OK result the transaction has been rolled back and
 * nothing of the batch is stored: HISTORY_BUSY or HISTORY_ERROR (the
 * database, retry later) or HISTORY_REJECTED (the content: retrying the same
 * batch fails again).  history_rollback abandons a batch. */
int history_begin(history *h);
int history_append(history *h, const history_record *rec);
int history_commit(history *h);
void history_rollback(history *h);

/* Called once per row; strings are valid only during the call.  Return
 * nonzero to stop early. */
typedef int (*history_row_fn)(void *ctx, const history_record *rec);

/* The last `limit` rows of room (kind 'msg' excluded), oldest first. */
int history_recent(history *h, const char *room, int limit, history_row_fn fn, void *ctx);
/* The same among the rows with id <= max_id (INT64_MAX: no bound): what was
 * stored when a query was asked, for a caller that answers it later. */
int history_recent_upto(history *h, const char *room, int limit, int64_t max_id,
                        history_row_fn fn, void *ctx);
/* A bound of a range: a row id (id > 0) or a time (at, ISO-8601 as
 * stored); neither = open. */
typedef struct history_bound {
    int64_t id;
    const char *at;
} history_bound;
/* The chat lines (say, me) of room strictly between lo and hi, at most limit
 * of them, the newest ones if from_newest (else the oldest), given oldest
 * first; none above max_id (see history_recent_upto).  IRC's CHATHISTORY. */
int history_range(history *h, const char *room, const history_bound *lo, const history_bound *hi,
                  int limit, int from_newest, int64_t max_id, history_row_fn fn, void *ctx);

/* The newest topic row of every room (kind "topic"), oldest room first, so
 * the rooms' topics survive a restart.  Read through the partial index
 * messages_topic: costs one row per topic ever set, not a scan. */
int history_topics(history *h, history_row_fn fn, void *ctx);
/* Full-text search of room (kind 'msg' excluded): words are matched as plain
 * terms (any FTS5 syntax in them is quoted away), newest first, at most limit.
 * Bounded work: a search that would scan too much returns HISTORY_LIMIT. */
int history_search(history *h, const char *room, const char *words, int limit,
                   history_row_fn fn, void *ctx);
int history_search_upto(history *h, const char *room, const char *words, int limit, int64_t max_id,
                        history_row_fn fn, void *ctx);
/* The newest id in the file now (one index seek), whoever stored it: the
 * bound for a query answered later (history_*_upto).  If it cannot be read,
 * the newest id this handle itself stored or saw at open. */
int64_t history_newest_id(history *h);
/* The id of the last row of this handle's last committed batch.  A batch's
 * rows are inserted by one statement inside one write transaction, so its n
 * rows have the ids last-n+1 .. last, in append order (rowids are max+1). */
int64_t history_last_commit_id(const history *h);

/* Cluster mode (docs/CLUSTER.md): a node applies the stream's records in
 * stream order, each batch in one transaction with the last sequence it
 * applied, so after a crash it resumes right after what its file holds.
 * Sequences are JetStream's (1, 2, ...), at most INT64_MAX (SQLite's integer).
 *
 * The stream this database is bound to: HISTORY_OK with *bound = 1 and the
 * stream's name, its creation time as the stream reports it, and the last
 * stream sequence applied; *bound = 0 (empty strings, *applied_seq = 0) if it
 * never was.  stream / created may be NULL (not wanted); a value longer than
 * its buffer is HISTORY_ERROR, never cut.  HISTORY_ERROR also if the row
 * cannot be read, or holds what chatrelay never writes (a name or time that
 * is not text, a sequence that is not an integer >= 0: changed by hand), the
 * reason in history_errmsg.  Works inside an open batch too (it then sees the
 * batch's own history_cluster_applied). */
int history_cluster_state(history *h, int *bound, char *stream, size_t stream_cap,
                          char *created, size_t created_cap, uint64_t *applied_seq);
/* Binds an unbound database to a stream (applied_seq 0), in its own
 * transaction (not inside a batch: HISTORY_ERROR).  Refused with
 * HISTORY_REJECTED if it is bound to another stream or another creation time
 * of the same name (a stream deleted and created again restarts its
 * sequences), or if it holds rows stored as a single node (their ids and
 * order are not the cluster's); err gets a one-line reason naming both.
 * HISTORY_OK if it is already bound to exactly this stream (names and times
 * compare byte for byte; nothing is written).  HISTORY_BUSY / HISTORY_ERROR
 * as usual, with history_errmsg's text in err too. */
int history_cluster_bind(history *h, const char *stream, const char *created, char *err, size_t errlen);
/* Inside an open batch (between history_begin and history_commit): the batch
 * applies the stream up to seq, written in the same transaction as the rows,
 * so the rows and the sequence are stored together or not at all.  seq must
 * be after the applied sequence (as stored, or as set earlier in this batch)
 * and the database bound: else HISTORY_ERROR.  Any failure poisons the batch
 * like a failed history_append (history_commit rolls it back and returns it):
 * rows stored without their sequence would be applied twice after a restart. */
int history_cluster_applied(history *h, uint64_t seq);
/* Inside an open batch: notes that the stream no longer held first_seq ..
 * last_seq (1 <= first_seq <= last_seq) when this node caught up, at `at`
 * (HISTORY_TIME_LEN chars, as history_record.at), as a row of cluster_gaps
 * in the same transaction.  The gap lies after what was applied: call it
 * before history_cluster_applied(last_seq or later), which the batch still
 * needs; a gap at or below the applied sequence, an unbound database or bad
 * arguments are HISTORY_ERROR.  Failures poison the batch, as above. */
int history_cluster_gap(history *h, uint64_t first_seq, uint64_t last_seq, const char *at);

/* One bounded retention step (deletes at most max_rows rows that fall outside
 * retain_days/retain_messages, FTS kept consistent).  now_ms is Unix time in
 * milliseconds.  Returns the number of rows deleted (0 when nothing is due),
 * or -1 on error/busy (try again later). */
int history_prune_step(history *h, int64_t now_ms, int max_rows);

/* Upkeep that can wait for a quiet moment, so that commits need not do it.
 * Call it when the relay is idle (no batch open; e.g. when a wait for events
 * timed out), and again on later idle turns while it returns 1.  Each call
 * does one bounded step: once the commits since the last checkpoint have
 * added 256 pages (1 MiB) to the WAL, it copies the WAL back into the
 * database file (a PASSIVE checkpoint: never waits for or blocks a reader;
 * page writes and two fsyncs, a few ms, ~5-15 ms under Wine); once a reader
 * that held the WAL back has let it grow past its bound (4096 pages, 16 MiB),
 * it truncates the WAL file back to nothing as soon as no reader needs it
 * (a TRUNCATE checkpoint, which with no busy handler never waits: it is
 * simply tried again on a later idle turn); else it merges the full-text
 * index.  Without it, a commit checkpoints by itself once the WAL reaches
 * 4096 pages and the WAL file is cut back to that size when it restarts:
 * never calling this costs commit time and disk, never data or a guarantee.
 * Returns 1 if it did some work, 0 if nothing is due, -1 on error or when
 * another connection holds what it needs (see history_errmsg; try again on
 * a later idle turn). */
int history_idle_step(history *h);

/* Formats Unix time in milliseconds as "2026-11-27T03:04:05.123Z" into out
 * (at least HISTORY_TIME_LEN + 1 bytes): clock_format_utc (core/clock.h),
 * the one formatter of times, clamped to years 0000..9999. */
void history_format_time(int64_t unix_ms, char *out);

#endif

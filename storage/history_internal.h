/* history_internal: what the files of storage/ share, and nothing else
 * includes.  The public face of the module is history.h; this header only
 * lets its parts, one file per concern the way SQLite keeps a VFS or a
 * virtual table in a file of its own, see the one handle:
 *
 *   history.c      opening and closing, errors, the statements, group commit,
 *                  the cluster row that commits with the batch
 *   schema.c       the schema, its migrations, the pragmas, the writable proof
 *   batch_table.c  the open batch in memory and the virtual table that reads it
 *   query.c        replay, /history and /search (and the FTS5 query builder)
 *   upkeep.c       the WAL hook, idle checkpoints and merges, retention
 *
 * Every function here returns a HISTORY_* code and leaves the reason in
 * h->errmsg, as the public ones do.
 */
#ifndef CHATRELAY_HISTORY_INTERNAL_H
#define CHATRELAY_HISTORY_INTERNAL_H

#include "history.h"

#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

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


/* The statements the handle prepares once at open, by their index in
 * h->stmt; their SQL and the names errors show are in history.c. */
enum history_stmt {
    STMT_BEGIN, STMT_COMMIT, STMT_ROLLBACK,   /* need no schema: prepared first (migrations use them) */
    STMT_FLUSH, STMT_RECENT, STMT_SEARCH, STMT_MAX_ID, STMT_TOPICS, STMT_RANGE_OLDEST, STMT_RANGE_NEWEST, STMT_PRUNE, STMT_FTS_MERGE,
    STMT_CLUSTER_STATE, STMT_CLUSTER_BIND, STMT_CLUSTER_APPLIED, STMT_CLUSTER_GAP,
    STMT_COUNT
};

/* The fields of a batch row, in the column order of the virtual table. */
enum { FIELD_AT, FIELD_ROOM, FIELD_NICK, FIELD_KIND, FIELD_BODY, FIELDS };

/* One appended row: where its fields are in batch_text, and their lengths. */
typedef struct batch_row {
    size_t off[FIELDS];
    size_t len[FIELDS];
} batch_row;

struct history {
    sqlite3 *db;
    sqlite3_stmt *stmt[STMT_COUNT];   /* prepared at open (stmt_table in history.c), finalized at close */
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
     * copied back), see hist_wal_committed; wal_peak: the most pages it held since
     * it was last truncated (its file is at least that large). */
    int wal_pages, wal_copied, wal_peak;
    int merge_due;       /* rows changed since history_idle_step last found no merge work */
    int64_t last_id;     /* the newest id known: read by history_newest_id, or stored by a commit */
    char errmsg[HISTORY_ERRMSG_LEN];
};


/* history.c: errors and statements */
int hist_code_of(int rc);
void hist_set_errmsg(history *h, const char *fmt, ...);
int hist_fail(history *h, const char *call, int rc);
void hist_stmt_done(sqlite3_stmt *stmt);
int hist_step(history *h, enum history_stmt id);
void hist_rollback_keep_error(history *h);
int hist_query_int(history *h, const char *sql, sqlite3_int64 *value);
int hist_exec(history *h, const char *sql, const char *name);

/* schema.c */
int hist_schema_migrate(history *h, sqlite3_int64 *version);
int hist_schema_wal(history *h);
int hist_schema_tune_fts(history *h);
int hist_schema_prove_writable(history *h);
int hist_schema_read_last_id(history *h);

/* batch_table.c */
int hist_batch_register(history *h);
int hist_batch_reserve(history *h, size_t text);
void hist_batch_reset(history *h);
void hist_batch_free(history *h);

/* upkeep.c */
int hist_wal_committed(void *ctx, sqlite3 *db, const char *name, int pages);

#endif

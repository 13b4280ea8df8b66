/* upkeep: what can wait for a quiet moment or a timer so that commits need
 * not do it: the WAL hook that replaces SQLite's automatic checkpoint, the
 * idle steps (checkpoint, WAL truncation, full-text index merge), and the
 * retention step (see history.h and history_internal.h).
 */
#include "history_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* SQLite's WAL hook, after each commit of our connection, in place of its
 * automatic checkpoint (see WAL_COMMIT_CHECKPOINT_PAGES).  `pages` is the
 * size of the WAL; it shrinks only when a commit restarts the WAL from the
 * beginning, which it does once everything was copied back.  The commit has
 * happened whatever this returns, so it always returns SQLITE_OK: an error
 * here would make history_commit report a stored batch as failed (and the
 * caller store it twice).  A checkpoint that fails is simply tried again
 * at a later commit or idle step. */
int hist_wal_committed(void *ctx, sqlite3 *db, const char *name, int pages)
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

/* ---- retention -------------------------------------------------------- */

int history_prune_step(history *h, int64_t now_ms, int max_rows)
{
    sqlite3_int64 id_cut = 0;  /* rows with id <= id_cut exceed retain_messages */
    char time_cut[HISTORY_TIME_LEN + 1] = "";  /* "" sorts before every time: none due */
    int rc, r, deleted;

    if (h->in_batch) {
        hist_set_errmsg(h, "history_prune_step: a batch is open");
        return -1;
    }
    if (max_rows <= 0 || (h->opt.retain_days == 0 && h->opt.retain_messages == 0))
        return 0;
    if (h->opt.retain_days > 0)
        history_format_time(now_ms - (int64_t)h->opt.retain_days * 86400000, time_cut);

    r = hist_step(h, STMT_BEGIN);
    if (r != HISTORY_OK) {
        hist_rollback_keep_error(h);
        return -1;
    }
    if (h->opt.retain_messages > 0) {
        /* Ids are handed out consecutively, so the last N messages are those
         * within N of the newest id.  Cheap (one b-tree seek) where counting
         * rows would read them all; if rows were deleted by hand in between,
         * fewer than N remain, never more. */
        rc = sqlite3_step(h->stmt[STMT_MAX_ID]);
        if (rc == SQLITE_ROW) {
            sqlite3_int64 max_id = sqlite3_column_int64(h->stmt[STMT_MAX_ID], 0);
            id_cut = max_id - h->opt.retain_messages;
            rc = SQLITE_DONE;
        }
        hist_stmt_done(h->stmt[STMT_MAX_ID]);
        if (rc != SQLITE_DONE) {
            hist_fail(h, "sqlite3_step(SELECT max(id) FROM messages)", rc);
            hist_rollback_keep_error(h);
            return -1;
        }
    }
    rc = sqlite3_bind_int64(h->stmt[STMT_PRUNE], 1, id_cut);
    if (rc == SQLITE_OK) rc = sqlite3_bind_text(h->stmt[STMT_PRUNE], 2, time_cut, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK) rc = sqlite3_bind_int(h->stmt[STMT_PRUNE], 3, max_rows);
    if (rc != SQLITE_OK) {
        hist_fail(h, "sqlite3_bind(prune)", rc);
        hist_stmt_done(h->stmt[STMT_PRUNE]);
        hist_rollback_keep_error(h);
        return -1;
    }
    r = hist_step(h, STMT_PRUNE);
    deleted = sqlite3_changes(h->db);
    if (deleted > 0)
        h->merge_due = 1;   /* FTS5 records deletions as entries of the next segment */
    if (r == HISTORY_OK)
        r = hist_step(h, STMT_COMMIT);
    if (r != HISTORY_OK) {
        hist_rollback_keep_error(h);
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
    int before, r = hist_step(h, STMT_BEGIN);
    if (r != HISTORY_OK) {
        hist_rollback_keep_error(h);
        return -1;
    }
    before = sqlite3_total_changes(h->db);
    r = hist_step(h, STMT_FTS_MERGE);
    if (r == HISTORY_OK && sqlite3_total_changes(h->db) - before < 2)
        h->merge_due = 0;
    if (r == HISTORY_OK)
        r = hist_step(h, STMT_COMMIT);
    if (r != HISTORY_OK) {
        hist_rollback_keep_error(h);
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
    hist_fail(h, "sqlite3_wal_checkpoint_v2(TRUNCATE)", rc);
    return -1;
}

int history_idle_step(history *h)
{
    int rc, in_wal = 0, copied = 0;
    if (!h)
        return -1;
    if (h->in_batch) {
        hist_set_errmsg(h, "history_idle_step: a batch is open");
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
        hist_fail(h, "sqlite3_wal_checkpoint_v2(PASSIVE)", rc);
        return -1;
    }
    h->wal_pages = in_wal;
    h->wal_copied = copied;
    return 1;
}


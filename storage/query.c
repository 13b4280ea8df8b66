/* query: replay, /history and /search over the stored lines (see history.h
 * and history_internal.h): bounded reads on the relay's only thread.
 */
#include "history_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
        text = sqlite3_column_text(stmt, 4); rec.kind = history_kind_parse((const char *)text);
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
    hist_stmt_done(stmt);
    if (rc == SQLITE_DONE)
        return HISTORY_OK;
    snprintf(call, sizeof call, "sqlite3_step(%s)", name);
    return hist_fail(h, call, rc);
}

int history_recent(history *h, const char *room, int limit, history_row_fn fn, void *ctx)
{
    return history_recent_upto(h, room, limit, INT64_MAX, fn, ctx);
}

typedef struct newest_topic {
    history_row_fn fn;
    void *ctx;
    char room[64];   /* the room of the previous row: rows come newest first per room */
    int seen;
} newest_topic;

static int keep_newest(void *ctx, const history_record *rec)
{
    newest_topic *t = ctx;
    if (t->seen && sqlite3_stricmp(t->room, rec->room) == 0)
        return 0;
    t->seen = 1;
    snprintf(t->room, sizeof t->room, "%s", rec->room);
    return t->fn(t->ctx, rec);
}

int history_topics(history *h, history_row_fn fn, void *ctx)
{
    if (!fn) {
        hist_set_errmsg(h, "history_topics: no callback");
        return HISTORY_ERROR;
    }
    newest_topic t;
    memset(&t, 0, sizeof t);
    t.fn = fn;
    t.ctx = ctx;
    return each_row(h, h->stmt[STMT_TOPICS], "topics", keep_newest, &t);
}

int history_range(history *h, const char *room, const history_bound *lo, const history_bound *hi,
                  int limit, int from_newest, int64_t max_id, history_row_fn fn, void *ctx)
{
    if (!room || !fn || !lo || !hi) {
        hist_set_errmsg(h, "history_range: no room, bound or callback");
        return HISTORY_ERROR;
    }
    if (limit <= 0)
        return HISTORY_OK;
    sqlite3_stmt *st = h->stmt[from_newest ? STMT_RANGE_NEWEST : STMT_RANGE_OLDEST];
    int64_t upper = hi->id > 0 ? hi->id : INT64_MAX;
    if (max_id < INT64_MAX && upper > max_id + 1)
        upper = max_id + 1;
    int rc = sqlite3_bind_text(st, 1, room, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, 2, lo->id > 0 ? lo->id : 0);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, 3, upper);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(st, 4, lo->at ? lo->at : "", -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)   /* '~' sorts after every digit and letter of a time */
        rc = sqlite3_bind_text(st, 5, hi->at ? hi->at : "~", -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int(st, 6, limit);
    if (rc != SQLITE_OK) {
        int r = hist_fail(h, "sqlite3_bind(range)", rc);
        hist_stmt_done(st);
        return r;
    }
    return each_row(h, st, "range", fn, ctx);
}

int history_recent_upto(history *h, const char *room, int limit, int64_t max_id,
                        history_row_fn fn, void *ctx)
{
    int rc;
    if (!room || !fn) {
        hist_set_errmsg(h, "history_recent: no room or no callback");
        return HISTORY_ERROR;
    }
    if (limit <= 0)
        return HISTORY_OK;
    rc = sqlite3_bind_text(h->stmt[STMT_RECENT], 1, room, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int(h->stmt[STMT_RECENT], 2, limit);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(h->stmt[STMT_RECENT], 3, max_id);
    if (rc != SQLITE_OK) {
        int r = hist_fail(h, "sqlite3_bind(recent)", rc);
        hist_stmt_done(h->stmt[STMT_RECENT]);
        return r;
    }
    return each_row(h, h->stmt[STMT_RECENT], "recent", fn, ctx);
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


int history_search_upto(history *h, const char *room, const char *words, int limit, int64_t max_id,
                        history_row_fn fn, void *ctx)
{
    int budget_calls = 0;
    char *query;
    int rc, r;
    if (!room || !words || !fn) {
        hist_set_errmsg(h, "history_search: no room, no words or no callback");
        return HISTORY_ERROR;
    }
    if (limit <= 0)
        return HISTORY_OK;
    query = fts_query(words);
    if (!query) {
        hist_set_errmsg(h, "history_search: out of memory for the query");
        return HISTORY_ERROR;
    }
    if (!query[0]) {   /* no words: nothing matches */
        free(query);
        return HISTORY_OK;
    }
    rc = sqlite3_bind_text(h->stmt[STMT_SEARCH], 1, query, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK) rc = sqlite3_bind_text(h->stmt[STMT_SEARCH], 2, room, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK) rc = sqlite3_bind_int(h->stmt[STMT_SEARCH], 3, limit);
    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(h->stmt[STMT_SEARCH], 4, max_id);
    if (rc != SQLITE_OK) {
        r = hist_fail(h, "sqlite3_bind(search)", rc);
        hist_stmt_done(h->stmt[STMT_SEARCH]);
    } else {
        sqlite3_progress_handler(h->db, SEARCH_BUDGET_OPS, search_budget, &budget_calls);
        r = each_row(h, h->stmt[STMT_SEARCH], "search", fn, ctx);
        sqlite3_progress_handler(h->db, 0, NULL, NULL);
        if (r != HISTORY_OK && budget_calls > SEARCH_BUDGET_CALLS) {
            hist_set_errmsg(h, "history_search: stopped at its work budget (too many matches outside the room)");
            r = HISTORY_LIMIT;
        }
    }
    free(query);
    return r;
}


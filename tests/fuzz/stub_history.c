/* stub_history: storage/history.h answered by a script.  See stub_history.h. */
#include "stub_history.h"

#include "clock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The hub broke the order storage/history.h asks for: a bug, reported like a crash. */
#define STUB_ASSERT(cond) do { \
    if (!(cond)) { \
        fprintf(stderr, "%s:%d: the hub misused the history API: %s\n", __FILE__, __LINE__, #cond); \
        abort(); \
    } \
} while (0)

typedef struct stub_row {
    history_record rec;         /* points to the copies below (the rows move; the copies do not) */
    char *at, *room, *nick, *body;
} stub_row;

typedef struct row_list {
    stub_row *v;
    size_t n, cap;
} row_list;

struct history {
    const unsigned char *script;
    size_t script_len;
    size_t commit_cursor, other_cursor;
    unsigned char poison;
    int in_txn;
    int commit_outcome;         /* what this transaction's commit will say */
    int fail_next_append;
    int append_failed;          /* an append failed: only a rollback may follow */
    int poisoned;               /* a refused record was appended: the commit refuses */
    int64_t next_id;
    int64_t last_commit_id;
    row_list rows;              /* committed, in order */
    size_t first_visible;       /* rows before it were removed by retention */
    row_list batch;             /* the open transaction's appends */
    stub_history_stats stats;
    char err[160];
};

static struct history g_stub;

static unsigned char next_byte(size_t *cursor)
{
    if (g_stub.script_len == 0)
        return 0;
    return g_stub.script[(*cursor)++ % g_stub.script_len];
}

static void set_err(const char *call, const char *what, int code)
{
    snprintf(g_stub.err, sizeof g_stub.err, "%s: %s (code %d)", call, what, code);
}

static char *copy_text(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (!p) {
        fprintf(stderr, "stub_history: out of memory\n");
        abort();
    }
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

static void row_free(stub_row *r)
{
    free(r->at);
    free(r->room);
    free(r->nick);
    free(r->body);
}

static void list_clear(row_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        row_free(&l->v[i]);
    l->n = 0;
}

static stub_row *list_push(row_list *l)
{
    if (l->n == l->cap) {
        size_t ncap = l->cap ? 2 * l->cap : 64;
        stub_row *v = realloc(l->v, ncap * sizeof *v);
        if (!v) {
            fprintf(stderr, "stub_history: out of memory\n");
            abort();
        }
        l->v = v;
        l->cap = ncap;
    }
    return &l->v[l->n++];
}

void stub_history_reset(const unsigned char *script, size_t len)
{
    stub_history_free();
    g_stub.script = len > 1 ? script + 1 : NULL;
    g_stub.script_len = len > 1 ? len - 1 : 0;
    g_stub.poison = len > 0 ? script[0] : 0;
}

history *stub_history_handle(void)
{
    return &g_stub;
}

void stub_history_free(void)
{
    list_clear(&g_stub.rows);
    list_clear(&g_stub.batch);
    free(g_stub.rows.v);
    free(g_stub.batch.v);
    memset(&g_stub, 0, sizeof g_stub);
}

size_t stub_history_committed(void)
{
    return g_stub.rows.n;
}

const history_record *stub_history_record(size_t i)
{
    return i < g_stub.rows.n ? &g_stub.rows.v[i].rec : NULL;
}

void stub_history_get_stats(stub_history_stats *out)
{
    *out = g_stub.stats;
}

/* ---- storage/history.h ------------------------------------------------- */

const char *history_errmsg(const history *h)
{
    return h->err;
}

int history_begin(history *h)
{
    STUB_ASSERT(h == &g_stub && !h->in_txn);
    unsigned char b = next_byte(&h->commit_cursor);
    h->stats.begins++;
    if ((b & 3) >= 2)
        h->stats.failures++;
    if ((b & 3) == 2) {
        set_err("BEGIN IMMEDIATE", "database is locked", 5);
        return HISTORY_BUSY;
    }
    if ((b & 3) == 3) {
        set_err("BEGIN IMMEDIATE", "disk I/O error", 10);
        return HISTORY_ERROR;
    }
    h->in_txn = 1;
    h->commit_outcome = (b >> 2) & 3;
    h->fail_next_append = ((b >> 4) & 3) == 3;
    h->append_failed = 0;
    h->poisoned = 0;
    return HISTORY_OK;
}

int history_append(history *h, const history_record *rec)
{
    STUB_ASSERT(h == &g_stub && h->in_txn && !h->append_failed && !h->poisoned);
    STUB_ASSERT(rec->at && rec->room && rec->nick && rec->body);
    STUB_ASSERT(rec->kind > HISTORY_KIND_NONE && rec->kind < HISTORY_KIND_COUNT);
    STUB_ASSERT(strlen(rec->at) == HISTORY_TIME_LEN);
    if (h->fail_next_append) {
        h->fail_next_append = 0;
        h->append_failed = 1;
        h->stats.failures++;
        set_err("INSERT INTO messages", "disk I/O error", 10);
        return HISTORY_ERROR;
    }
    if (h->poison && memchr(rec->body, h->poison, rec->body_len)) {
        h->poisoned = 1;
        set_err("INSERT INTO messages", "CHECK constraint failed: body", 275);
        return HISTORY_REJECTED;
    }
    stub_row *r = list_push(&h->batch);
    memset(r, 0, sizeof *r);
    r->at = copy_text(rec->at, HISTORY_TIME_LEN);
    r->room = copy_text(rec->room, strlen(rec->room));
    r->nick = copy_text(rec->nick, strlen(rec->nick));
    r->body = copy_text(rec->body, rec->body_len);
    r->rec.kind = rec->kind;
    r->rec.body_len = rec->body_len;
    return HISTORY_OK;
}

int history_commit(history *h)
{
    STUB_ASSERT(h == &g_stub && h->in_txn && !h->append_failed);
    h->in_txn = 0;
    if (h->poisoned || h->commit_outcome >= 2) {
        list_clear(&h->batch);
        if (h->poisoned) {
            h->stats.rejected++;
            return HISTORY_REJECTED;   /* the error of the refused append stands */
        }
        h->stats.failures++;
        if (h->commit_outcome == 2) {
            set_err("COMMIT", "database is locked", 5);
            return HISTORY_BUSY;
        }
        set_err("COMMIT", "disk I/O error", 10);
        return HISTORY_ERROR;
    }
    for (size_t i = 0; i < h->batch.n; i++) {
        stub_row *r = list_push(&h->rows);
        *r = h->batch.v[i];   /* the copies move; the batch forgets them */
        r->rec.id = ++h->next_id;
        r->rec.at = r->at;
        r->rec.room = r->room;
        r->rec.nick = r->nick;
        r->rec.body = r->body;
    }
    h->batch.n = 0;
    h->stats.commits_ok++;
    h->last_commit_id = h->next_id;
    return HISTORY_OK;
}

int64_t history_last_commit_id(const history *h)
{
    STUB_ASSERT(h == &g_stub);
    return h->last_commit_id;
}

void history_rollback(history *h)
{
    /* The hub also calls it after a begin that failed: then there is nothing to undo. */
    STUB_ASSERT(h == &g_stub);
    h->in_txn = 0;
    h->append_failed = 0;
    h->poisoned = 0;
    list_clear(&h->batch);
}

int64_t history_newest_id(history *h)
{
    STUB_ASSERT(h == &g_stub);
    return h->next_id;
}

static int ascii_lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

static int same_room(const char *a, const char *b)
{
    while (*a && ascii_lower((unsigned char)*a) == ascii_lower((unsigned char)*b))
        a++, b++;
    return *a == *b;
}

/* A row a query of room up to max_id may return. */
static int visible(const stub_row *r, const char *room, int64_t max_id)
{
    return r->rec.id <= max_id && r->rec.kind != HISTORY_MSG && same_room(r->room, room);
}

/* The script's word on one query: 0, or HISTORY_BUSY. */
static int query_start(history *h)
{
    STUB_ASSERT(h == &g_stub && !h->in_txn);   /* never inside the turn's batch */
    h->stats.queries++;
    unsigned char b = next_byte(&h->other_cursor);
    if ((b & 3) == 3) {
        h->stats.queries_failed++;
        set_err("SELECT", "database is locked", 5);
        return -1;
    }
    return b;
}

int history_recent_upto(history *h, const char *room, int limit, int64_t max_id,
                        history_row_fn fn, void *ctx)
{
    int b = query_start(h);
    if (b < 0)
        return HISTORY_BUSY;
    STUB_ASSERT(limit > 0 && max_id <= h->next_id);
    /* the last `limit` rows, oldest first */
    size_t from = h->rows.n, found = 0;
    while (from > h->first_visible && found < (size_t)limit) {
        from--;
        found += visible(&h->rows.v[from], room, max_id);
    }
    for (size_t i = from; i < h->rows.n; i++)
        if (visible(&h->rows.v[i], room, max_id) && fn(ctx, &h->rows.v[i].rec))
            break;
    return HISTORY_OK;
}

/* CHATHISTORY's range, with history.c's semantics: say/me rows strictly
 * between the bounds (ids, or times), the newest or oldest `limit`. */
static int in_range(const stub_row *r, const char *room, const history_bound *lo, const history_bound *hi,
                    int64_t max_id)
{
    if (r->rec.id > max_id || !same_room(r->room, room))
        return 0;
    if (r->rec.kind != HISTORY_SAY && r->rec.kind != HISTORY_ME)
        return 0;
    if (lo->id > 0 && r->rec.id <= lo->id)
        return 0;
    if (hi->id > 0 && r->rec.id >= hi->id)
        return 0;
    if (lo->at && strcmp(r->at, lo->at) <= 0)
        return 0;
    if (hi->at && strcmp(r->at, hi->at) >= 0)
        return 0;
    return 1;
}

int history_range(history *h, const char *room, const history_bound *lo, const history_bound *hi,
                  int limit, int from_newest, int64_t max_id, history_row_fn fn, void *ctx)
{
    int b = query_start(h);
    if (b < 0)
        return HISTORY_BUSY;
    STUB_ASSERT(room && lo && hi && max_id <= h->next_id);
    if (limit <= 0)
        return HISTORY_OK;
    size_t from = h->first_visible, to = h->rows.n, found = 0;
    if (from_newest) {
        from = h->rows.n;
        while (from > h->first_visible && found < (size_t)limit) {
            from--;
            found += in_range(&h->rows.v[from], room, lo, hi, max_id);
        }
    }
    for (size_t i = from, sent = 0; i < to && sent < (size_t)limit; i++)
        if (in_range(&h->rows.v[i], room, lo, hi, max_id)) {
            sent++;
            if (fn(ctx, &h->rows.v[i].rec))
                break;
        }
    return HISTORY_OK;
}

int history_topics(history *h, history_row_fn fn, void *ctx)
{
    /* the hub reads them once, at creation, before any row exists here */
    STUB_ASSERT(h == &g_stub && fn != NULL);
    (void)ctx;
    return HISTORY_OK;
}

int history_recent(history *h, const char *room, int limit, history_row_fn fn, void *ctx)
{
    return history_recent_upto(h, room, limit, h->next_id, fn, ctx);
}

/* Every blank-separated word of words occurs in body (ASCII case-insensitive):
 * enough of FTS5 for the hub, which only passes the answer on. */
static int matches(const char *body, size_t body_len, const char *words)
{
    const char *w = words;
    for (;;) {
        while (*w == ' ' || *w == '\t')
            w++;
        if (!*w)
            return 1;
        size_t n = 0;
        while (w[n] && w[n] != ' ' && w[n] != '\t')
            n++;
        int found = 0;
        for (size_t i = 0; !found && i + n <= body_len; i++) {
            size_t k = 0;
            while (k < n && ascii_lower((unsigned char)body[i + k]) == ascii_lower((unsigned char)w[k]))
                k++;
            found = k == n;
        }
        if (!found)
            return 0;
        w += n;
    }
}

int history_search_upto(history *h, const char *room, const char *words, int limit, int64_t max_id,
                        history_row_fn fn, void *ctx)
{
    int b = query_start(h);
    if (b < 0)
        return HISTORY_BUSY;
    STUB_ASSERT(limit > 0 && max_id <= h->next_id && words != NULL);
    int budget = ((b >> 2) & 3) == 3 ? (b >> 4) & 7 : -1;   /* rows before the work budget runs out */
    int sent = 0;
    for (size_t i = h->rows.n; i > h->first_visible && sent < limit; i--) {
        const stub_row *r = &h->rows.v[i - 1];
        if (!visible(r, room, max_id) || !matches(r->body, r->rec.body_len, words))
            continue;
        if (sent == budget)
            return HISTORY_LIMIT;
        sent++;
        if (fn(ctx, &r->rec))
            break;
    }
    return budget == 0 ? HISTORY_LIMIT : HISTORY_OK;
}

int history_search(history *h, const char *room, const char *words, int limit,
                   history_row_fn fn, void *ctx)
{
    return history_search_upto(h, room, words, limit, h->next_id, fn, ctx);
}

int history_prune_step(history *h, int64_t now_ms, int max_rows)
{
    (void)now_ms;
    STUB_ASSERT(h == &g_stub && !h->in_txn && max_rows > 0);
    unsigned char b = next_byte(&h->other_cursor);
    if ((b & 3) == 3) {
        set_err("DELETE FROM messages", "database is locked", 5);
        return -1;
    }
    if ((b & 3) == 2 && h->first_visible < h->rows.n) {
        h->first_visible++;
        return 1;
    }
    return 0;
}

int history_idle_step(history *h)
{
    STUB_ASSERT(h == &g_stub && !h->in_txn);
    unsigned char b = next_byte(&h->other_cursor);
    if ((b & 3) == 3) {
        set_err("wal_checkpoint", "database is locked", 5);
        return -1;
    }
    return (b & 3) == 2;
}

static const char *const kind_names[HISTORY_KIND_COUNT] = {
    NULL, "say", "me", "join", "leave", "nick", "msg", "topic",
};

const char *history_kind_name(history_kind kind)
{
    return kind > HISTORY_KIND_NONE && kind < HISTORY_KIND_COUNT ? kind_names[kind] : NULL;
}

history_kind history_kind_parse(const char *name)
{
    for (int k = HISTORY_KIND_NONE + 1; k < HISTORY_KIND_COUNT; k++)
        if (name && strcmp(name, kind_names[k]) == 0)
            return (history_kind)k;
    return HISTORY_KIND_NONE;
}

void history_format_time(int64_t unix_ms, char *out)
{
    clock_format_utc(unix_ms, out);   /* the product's one formatter */
}

/* Cluster mode is not fuzzed through the hub (its records are checked by
 * test_cluster and the hub's decoder's own checks); the hub links these. */
int history_cluster_applied(history *h, uint64_t seq)
{
    (void)h;
    (void)seq;
    return HISTORY_ERROR;
}

int history_cluster_gap(history *h, uint64_t first_seq, uint64_t last_seq, const char *at)
{
    (void)h;
    (void)first_seq;
    (void)last_seq;
    (void)at;
    return HISTORY_ERROR;
}

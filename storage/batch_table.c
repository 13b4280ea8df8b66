/* batch_table: the open batch of history_append, kept in plain memory, and
 * history_batch, the eponymous virtual table through which history_commit's
 * one INSERT ... SELECT reads it (see history.c for why one statement, and
 * history_internal.h).
 */
#include "history_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
void hist_batch_reset(history *h)
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
int hist_batch_reserve(history *h, size_t text)
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


void hist_batch_free(history *h)
{
    free(h->rows);
    free(h->batch_text);
    h->rows = NULL;
    h->batch_text = NULL;
}

int hist_batch_register(history *h)
{
    int rc = sqlite3_create_module_v2(h->db, BATCH_TABLE, &batch_module, h, NULL);
    return rc == SQLITE_OK ? HISTORY_OK : hist_fail(h, "sqlite3_create_module_v2(" BATCH_TABLE ")", rc);
}

/* test_hub_faults: the hub's store-then-forward promise under every failure
 * the operating system can hand SQLite while the hub commits, checkpoints or
 * opens its history, found the way SQLite tests itself: a fault-injecting VFS
 * (fault_vfs.h, installed as the default VFS, so under history's own
 * connection) and a sweep.
 *
 * For each scenario (what happens before the operation under test, and the
 * operation: a hub_turn that commits a batch, a hub_idle step, a history_open)
 * a dry run first counts the calls the operation makes for the database's
 * files, by category.  Then for every category and every N from 1 to that
 * count, in a fresh database with a fresh hub: prepare, make call N fail
 * (once; from N on, the database down for a while; once with SQLITE_FULL
 * and a torn write, or SQLITE_BUSY for a lock), run the operation, and check
 * after every turn that
 *   - the file holds exactly the first k lines said, in order, each once,
 *     where k is either what it held before the turn or everything said
 *     before it (one transaction per turn: all of the batch or nothing);
 *   - every session has been sent exactly the lines of the first k said by
 *     the others, in order, since the last check: nothing that is not in the
 *     file, nothing twice, never its own (no echo), nothing else;
 *   - when the turn stored nothing new, the hub holds the lines and asks to
 *     be called back within the retry interval;
 *   - the armed call did come (the sweep reaches what the dry run counted).
 * Then the fault ends and the turns go on (the clock moves past the retry
 * interval each time) until everything was delivered, a new round is stored
 * at once, and after history_close the file passes SQLite's and FTS5's
 * integrity checks.  At the end the test asserts what the sweep reached
 * (writes, syncs, locks, shared memory, the COMMIT's commit frame, a spill,
 * a restarted WAL, a checkpoint, a recovery) and prints the counts.
 *
 * A "fresh database" is a copy of one built once (templates below): only
 * open-new creates its databases, and it skips its successful fsyncs
 * (fault_vfs_skip_syncs) to keep the run short.  The files live in the
 * current directory (or CHATRELAY_TEST_DIR, or the first argument), named
 * per run.  The checker, a plain connection on the wrapped (real) VFS like
 * the sqlite3 CLI, reads them; it never checkpoints on close.
 *
 * Options: -v prints the calls each dry run counted; -s SCENARIO sweeps only
 * that one; -s SCENARIO -c CATEGORY N MODE runs one case with every call
 * traced and the hub's log shown; -p gives the checker a connection per look
 * instead of one per case (see keep_checker).
 */
#if defined(_MSC_VER) && !defined(_CRT_SECURE_NO_WARNINGS)
#define _CRT_SECURE_NO_WARNINGS   /* fopen, getenv: the portable calls here */
#endif
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L   /* clock_gettime, for db_support.h */
#endif
#include "check.h"
#include "db_support.h"
#include "fault_vfs.h"
#include "hub.h"
#include "hub_support.h"
#include "log.h"

#include <sqlite3.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SESSIONS 3
#define MAX_SAID 160
#define HUB_RETRY_MS 50           /* COMMIT_RETRY_MS in core/hub.c */
#define STEP_MS 60                /* each later turn comes after the retry interval */
#define RETRY_TURNS 10            /* turns after the fault ended by which all must be delivered */
#define OUTAGE_TURNS 2            /* turns the database stays down in the persistent cases */
#define OUT_MAX (1 << 16)
#define BODY_MAX 400

static int verbose;
/* -s SCENARIO: sweep only that one; -c CATEGORY N MODE: run only that case
 * of it, printing every call the shim sees (to study one failure). */
static const char *only_scenario, *only_category, *only_mode;
static unsigned long only_n;
/* The checker keeps its connection open for the whole case, like a sqlite3
 * shell left running (and a connection per look costs a third of the run
 * under Wine); -p opens one per look instead.  An open reader changes one
 * outcome: after an unlock of the database file failed while SQLite was
 * recovering from an error, it no longer knows which lock it holds and
 * takes an EXCLUSIVE lock before its next read (in case a hot journal needs
 * playing back), which the reader's SHARED lock refuses for as long as the
 * reader stays.  So when lines are still held RETRY_TURNS / 2 turns after
 * the fault ended, the checker closes (the user quits the shell), and the
 * case is listed as one that needed the others to leave. */
static int keep_checker = 1;
static int waited_for_reader;      /* cases that needed the checker to close */
static char dir_prefix[300];      /* "" or "<dir>/" */
static char run_prefix[64];       /* unique per run */

/* ---- reporting ---------------------------------------------------------- */

static int reported;

typedef struct said_line {
    int slot;            /* the sender, or -1 for a line stored by an earlier run */
    char nick[16];
    char body[BODY_MAX];
    char wire[BODY_MAX + 32];   /* what the others must be sent */
} said_line;

enum { OP_TURN, OP_IDLE, OP_OPEN };

/* Modes besides once and persistent: SQLITE_FULL with a torn write, and
 * SQLITE_BUSY for file and shm lock requests (another process holds it).
 * The commits get all; the others, whose batches are stored already or
 * not yet taken, get BUSY for file locks (a sqlite3 shell holding the file
 * while the relay starts), which keeps the run near 30 s under Wine on a
 * loaded machine. */
#define EXTRA_FULL 1
#define EXTRA_BUSY_LOCK 2
#define EXTRA_BUSY_SHM 4
#define EXTRA_ALL (EXTRA_FULL | EXTRA_BUSY_LOCK | EXTRA_BUSY_SHM)

typedef struct scenario scenario;

typedef struct run {
    const scenario *sc;
    char label[128];
    char name[128];          /* file name: the fault target */
    char path[450];
    history_options ho;
    history *db;
    hub *h;
    sqlite3 *checker;        /* the plain connection that reads the file, while it is open */
    int keep_checker_now;    /* teardown: the checker stays open while history closes */
    int checker_left;        /* from now on a connection per look (see keep_checker) */
    int64_t now;
    said_line lines[MAX_SAID];
    int nsaid;
    int base;                /* lines[0..base) were in the file before this hub */
    int stored;              /* the file holds lines[0..stored) */
    long me_rows;            /* rows of kind 'me' the file must keep (a template's) */
    int allow_joins;         /* join notices may arrive among the lines (open scenarios) */
    int open_rc;
    int category;            /* the armed fault's, -1 in a dry run */
    int persistent;
    int bad;
    /* which statement a failed commit named (history_errmsg) */
    int failed_begin, failed_insert, failed_commit, failed_other;
} run;

static void fail(run *r, const char *fmt, ...)
{
    va_list ap;
    check_failed++;
    if (r)
        r->bad++;
    if (reported++ >= 80)
        return;
    fprintf(stderr, "FAIL [%s] ", r ? r->label : "-");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static void ok(void)
{
    check_passed++;
}

/* ---- the checker: a plain connection on the real VFS -------------------- */

typedef struct file_view {
    int exists;              /* the file could be opened and has the messages table */
    int n;                   /* say rows */
    char nick[MAX_SAID][16];
    char body[MAX_SAID][BODY_MAX];
    long me;                 /* rows of kind 'me', or -1 when not counted */
    char err[256];           /* why it could not be read, "" if it was */
} file_view;

static sqlite3 *checker_open(const char *path, char *err, size_t errlen)
{
    sqlite3 *c = NULL;
    int rc = sqlite3_open_v2(path, &c, SQLITE_OPEN_READWRITE, fault_vfs_real_name());
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "sqlite3_open_v2: %s (code %d)", c ? sqlite3_errmsg(c) : sqlite3_errstr(rc), rc);
        sqlite3_close(c);
        return NULL;
    }
    /* Closing as the last connection must not checkpoint: the checker looks,
     * it does not tidy up what the next open of the relay will find. */
    rc = sqlite3_db_config(c, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, (int *)NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "sqlite3_db_config(NO_CKPT_ON_CLOSE): code %d", rc);
        sqlite3_close(c);
        return NULL;
    }
    return c;
}

static int file_exists(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f)
        fclose(f);
    return f != NULL;
}

/* What the file holds now, as the checker sees it (see keep_checker). */
static void read_file(run *r, file_view *v)
{
    sqlite3_stmt *st = NULL;
    int rc;
    memset(v, 0, sizeof *v);
    v->me = -1;
    if (!r->checker) {
        if (!file_exists(r->path))
            return;
        r->checker = checker_open(r->path, v->err, sizeof v->err);
        if (!r->checker)
            return;
    }
    rc = sqlite3_prepare_v2(r->checker, "SELECT nick, body FROM messages WHERE kind = 'say' ORDER BY id",
                            -1, &st, NULL);
    if (rc != SQLITE_OK) {
        /* a file whose schema was never created (a failed first open) holds
         * nothing; the next look starts with a new connection */
        if (!strstr(sqlite3_errmsg(r->checker), "no such table"))
            snprintf(v->err, sizeof v->err, "prepare: %s (code %d)", sqlite3_errmsg(r->checker), rc);
        sqlite3_close(r->checker);
        r->checker = NULL;
        return;
    }
    v->exists = 1;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (v->n < MAX_SAID) {
            snprintf(v->nick[v->n], sizeof v->nick[0], "%s", (const char *)sqlite3_column_text(st, 0));
            snprintf(v->body[v->n], sizeof v->body[0], "%s", (const char *)sqlite3_column_text(st, 1));
        }
        v->n++;
    }
    if (rc != SQLITE_DONE)
        snprintf(v->err, sizeof v->err, "step: %s (code %d)", sqlite3_errmsg(r->checker), rc);
    sqlite3_finalize(st);
    /* The template's rows are counted at the end only (one statement less
     * per look; the count would change only if committed data were lost,
     * which the end sees as well). */
    if (!v->err[0] && r->keep_checker_now) {
        rc = sqlite3_prepare_v2(r->checker, "SELECT count(*) FROM messages WHERE kind = 'me'", -1, &st, NULL);
        if (rc == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
            v->me = (long)sqlite3_column_int64(st, 0);
        else
            snprintf(v->err, sizeof v->err, "count me: %s (code %d)", sqlite3_errmsg(r->checker), rc);
        sqlite3_finalize(st);
    }
    if ((!keep_checker || r->checker_left) && !r->keep_checker_now) {
        sqlite3_close(r->checker);
        r->checker = NULL;
    }
}

/* The file holds lines[0..v->n) exactly, and the template's rows.
 * Returns 1 if so. */
static int file_is_prefix(run *r, const file_view *v)
{
    int i;
    if (v->err[0]) {
        fail(r, "the checker cannot read %s: %s", r->name, v->err);
        return 0;
    }
    if (v->n > r->nsaid) {
        fail(r, "the file holds %d say rows, only %d lines were said (a line stored twice?)", v->n, r->nsaid);
        return 0;
    }
    for (i = 0; i < v->n; i++) {
        if (strcmp(v->nick[i], r->lines[i].nick) != 0 || strcmp(v->body[i], r->lines[i].body) != 0) {
            fail(r, "file row %d is <%s> %s, expected <%s> %s", i + 1, v->nick[i], v->body[i],
                 r->lines[i].nick, r->lines[i].body);
            return 0;
        }
    }
    if (v->me >= 0 && v->me != r->me_rows) {
        fail(r, "the file holds %ld rows of the template, expected %ld", v->me, r->me_rows);
        return 0;
    }
    return 1;
}

/* ---- the hub's side ------------------------------------------------------ */



/* Drops "*** guestN joined lobby" lines (in place). */
static void drop_joins(char *s)
{
    char *in = s, *out = s;
    while (*in) {
        char *end = strstr(in, "\r\n");
        size_t len = end ? (size_t)(end - in) + 2 : strlen(in);
        int join = strncmp(in, "*** ", 4) == 0 && strstr(in, " joined ") && strstr(in, " joined ") < in + len;
        if (!join) {
            memmove(out, in, len);
            out += len;
        }
        in += len;
    }
    *out = '\0';
}

static hub_config hub_cfg(history *db)
{
    hub_config c;
    memset(&c, 0, sizeof c);
    c.chat.server_name = "faultrelay";
    c.chat.replay = 0;
    c.max_sessions = SESSIONS;
    c.max_queue_bytes = 1 << 20;
    c.history = db;
    /* far above anything said here: no line is refused during an outage */
    c.pending_max_lines = 10000;
    c.pending_max_bytes = 8 << 20;
    c.pending_max_ms = 600000;
    return c;
}

/* slot says one line; `pad` bytes of padding make its row bigger (the
 * padding is part of the body: stored, sent and compared). */
static void say_line(run *r, int slot, int pad)
{
    said_line *l;
    char text[BODY_MAX + 2];
    int n;
    if (r->nsaid >= MAX_SAID) {
        fail(r, "test bug: more than %d lines", MAX_SAID);
        return;
    }
    l = &r->lines[r->nsaid];
    l->slot = slot;
    snprintf(l->nick, sizeof l->nick, "guest%u", (unsigned)hub_session_conn_id(r->h, (uint32_t)slot));
    n = snprintf(l->body, sizeof l->body, "line %d from s%d%s", r->nsaid, slot, pad > 0 ? " " : "");
    while (pad-- > 1 && n < (int)sizeof l->body - 1) {
        l->body[n] = (char)('a' + n % 26);
        n++;
    }
    l->body[n] = '\0';
    snprintf(l->wire, sizeof l->wire, "<%s> %s\r\n", l->nick, l->body);
    r->nsaid++;
    n = snprintf(text, sizeof text, "%s\r\n", l->body);
    hub_session_input(r->h, (uint32_t)slot, (const unsigned char *)text, (size_t)n, r->now);
}

/* Every session says `per_session` lines, interleaved. */
static void say_round(run *r, int per_session, int pad)
{
    for (int k = 0; k < per_session; k++)
        for (int s = 0; s < SESSIONS; s++)
            say_line(r, s, pad);
}

/* What recipient `to` must have been sent for lines[from..upto). */
static void expected_for(const run *r, int to, int from, int upto, char *buf, size_t cap)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int i = from < r->base ? r->base : from; i < upto; i++) {
        size_t n;
        if (r->lines[i].slot == to)
            continue;
        n = strlen(r->lines[i].wire);
        if (used + n + 1 > cap)
            break;
        memcpy(buf + used, r->lines[i].wire, n + 1);
        used += n;
    }
}

/* The outputs since the last check must be lines[from..upto) as each
 * recipient sees them. */
static void check_outputs(run *r, int from, int upto)
{
    static char exp[OUT_MAX];
    uint32_t slot;
    const char *reason;
    while (hub_next_flush(r->h, &slot))
        ;
    for (int s = 0; s < SESSIONS; s++) {
        char *got = (char *)take_output(r->h, (uint32_t)s);
        if (r->allow_joins)
            drop_joins(got);
        expected_for(r, s, from, upto, exp, sizeof exp);
        if (strcmp(got, exp) == 0) {
            ok();
        } else {
            fail(r, "session %d was sent \"%.300s\", expected \"%.300s\" (the file holds %d of %d lines)",
                 s, got, exp, upto, r->nsaid);
        }
    }
    if (hub_next_close(r->h, &slot, &reason))
        fail(r, "the hub asked to close session %u (%s)", (unsigned)slot, reason);
}

/* Classifies a failed commit by the statement history_errmsg names. */
static void note_failure(run *r)
{
    const char *m = history_errmsg(r->db);
    if (strncmp(m, "sqlite3_step(BEGIN", 18) == 0)
        r->failed_begin++;
    else if (strncmp(m, "sqlite3_step(INSERT", 19) == 0)
        r->failed_insert++;
    else if (strncmp(m, "sqlite3_step(COMMIT", 19) == 0)
        r->failed_commit++;
    else
        r->failed_other++;
}

/* One hub_turn, checked: all of the batch or nothing, delivered iff stored. */
static void turn(run *r)
{
    static file_view v;   /* large; not reentrant anyway */
    int before = r->stored, said = r->nsaid;
    int wait = hub_turn(r->h, r->now);
    read_file(r, &v);
    if (!file_is_prefix(r, &v)) {
        check_outputs(r, before, before);   /* whatever came is reported against nothing */
        return;
    }
    if (v.n < before) {
        fail(r, "the file held %d lines before the turn, now %d", before, v.n);
    } else if (v.n != before && v.n != said) {
        fail(r, "the turn stored %d of the %d held lines: part of a batch", v.n - before, said - before);
    } else {
        ok();
    }
    if (v.n == before && said > before) {
        /* held: the hub must come back for them */
        if (wait < 0 || wait > HUB_RETRY_MS)
            fail(r, "%d lines held but hub_turn asks to be called in %d ms", said - before, wait);
        else
            ok();
        note_failure(r);
    }
    check_outputs(r, before, v.n);
    r->stored = v.n;
}

/* Nothing moves: the file still holds what it held, nobody is sent anything. */
static void check_quiet(run *r)
{
    static file_view v;   /* large; not reentrant anyway */
    read_file(r, &v);
    if (file_is_prefix(r, &v)) {
        if (v.n != r->stored)
            fail(r, "the file holds %d lines, it held %d before", v.n, r->stored);
        else
            ok();
    }
    check_outputs(r, r->stored, r->stored);
}

/* ---- building blocks of the scenarios ------------------------------------ */

static void name_run(run *r, const char *tag)
{
    snprintf(r->name, sizeof r->name, "%s%s.db", run_prefix, tag);
    snprintf(r->path, sizeof r->path, "%s%s", dir_prefix, r->name);
}

static int open_history(run *r)
{
    char err[512];
    int rc = history_open(&r->db, r->path, &r->ho, err, sizeof err);
    if (rc != HISTORY_OK) {
        fail(r, "history_open (no fault): %s", err);
        r->db = NULL;
        return 0;
    }
    return 1;
}

/* A hub on r->db with SESSIONS sessions in the lobby; their joins are
 * committed and delivered by one turn (not checked here). */
static int start_hub(run *r)
{
    hub_config cfg = hub_cfg(r->db);
    r->h = hub_create(&cfg);
    if (!r->h) {
        fail(r, "hub_create failed");
        return 0;
    }
    for (int s = 0; s < SESSIONS; s++)
        hub_session_open(r->h, (uint32_t)s, "127.0.0.1", HUB_LISTEN_LINE, r->now);
    return 1;
}

static void drain(run *r)
{
    uint32_t slot;
    while (hub_next_flush(r->h, &slot))
        ;
    for (int s = 0; s < SESSIONS; s++)
        take_output(r->h, (uint32_t)s);
}

/* ---- templates ------------------------------------------------------------ *
 * Creating a database costs about seven fsyncs, copying one none, and every
 * case needs a new one: the sweeps start from copies of databases built
 * once (open-new is the sweep that creates them).  A template's WAL is kept
 * as a crash would leave it: the checker holds the file open while history
 * closes (so history cannot checkpoint), then closes without checkpointing.
 * A copy gets no -shm file, so its first connection rebuilds the index from
 * the WAL, as after a crash. */

typedef struct template_db {
    const char *tag;
    int earlier;            /* lines stored by "an earlier run" (kind 'say') */
    long wal_frames;        /* commits of /me rows until the WAL holds this many frames */
    int keep_wal;           /* 0: closed cleanly (checkpointed, no WAL) */
    char db[450], wal[450];
    long me_rows;
} template_db;

static template_db tpl_fresh = { "fresh", 0, 0, 1, "", "", 0 };
static template_db tpl_big = { "big", 0, 300, 1, "", "", 0 };   /* history_idle_step checkpoints at 256 */
static template_db tpl_closed = { "closed", 3, 0, 0, "", "", 0 };
static template_db tpl_crashed = { "crashed", 3, 0, 1, "", "", 0 };

static void earlier_line(int i, said_line *l)
{
    l->slot = -1;
    snprintf(l->nick, sizeof l->nick, "earlier");
    snprintf(l->body, sizeof l->body, "earlier line %d", i);
    l->wire[0] = '\0';
}

static int copy_file(const char *from, const char *to)
{
    static unsigned char buf[1 << 16];
    FILE *in = fopen(from, "rb"), *out;
    size_t n;
    int okay = 1;
    if (!in)
        return 0;
    out = fopen(to, "wb");
    if (!out) {
        fclose(in);
        return 0;
    }
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n)
            okay = 0;
    if (ferror(in))
        okay = 0;
    fclose(in);
    if (fclose(out) != 0)
        okay = 0;
    return okay;
}

static long file_size(const char *path)
{
    FILE *f = fopen(path, "rb");
    long n;
    if (!f)
        return -1;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fclose(f);
    return n;
}

static int tpl_commit(run *r, history *db, const char *kind, const char *nick, const char *body)
{
    char at[HISTORY_TIME_LEN + 1];
    history_record rec;
    history_format_time(INT64_C(1700000000000), at);
    memset(&rec, 0, sizeof rec);
    rec.at = at;
    rec.room = "lobby";
    rec.nick = nick;
    rec.kind = history_kind_parse(kind);
    rec.body = body;
    rec.body_len = strlen(body);
    if (history_begin(db) != HISTORY_OK || history_append(db, &rec) != HISTORY_OK ||
        history_commit(db) != HISTORY_OK) {
        fail(r, "template commit: %s", history_errmsg(db));
        return 0;
    }
    return 1;
}

static int build_template(template_db *t)
{
    run r;
    history *db = NULL;
    sqlite3 *c = NULL;
    char err[512], body[64];
    said_line l;
    memset(&r, 0, sizeof r);
    snprintf(r.label, sizeof r.label, "template %s", t->tag);
    snprintf(r.path, sizeof r.path, "%s%stemplate-%s.db", dir_prefix, run_prefix, t->tag);
    snprintf(t->db, sizeof t->db, "%s", r.path);
    snprintf(t->wal, sizeof t->wal, "%s-wal", r.path);
    remove_db(r.path);
    if (history_open(&db, r.path, NULL, err, sizeof err) != HISTORY_OK) {
        fail(&r, "history_open: %s", err);
        return 0;
    }
    for (int i = 0; i < t->earlier; i++) {
        earlier_line(i, &l);
        if (!tpl_commit(&r, db, "say", l.nick, l.body))
            goto fail;
    }
    while (file_size(t->wal) < t->wal_frames * (4096 + 24)) {
        snprintf(body, sizeof body, "template action %ld", t->me_rows);
        if (t->me_rows > 1000 || !tpl_commit(&r, db, "me", "tpl", body))
            goto fail;
        t->me_rows++;
    }
    if (t->keep_wal) {
        c = checker_open(r.path, err, sizeof err);
        if (!c || sqlite3_exec(c, "SELECT count(*) FROM messages", NULL, NULL, NULL) != SQLITE_OK) {
            fail(&r, "checker: %s", c ? sqlite3_errmsg(c) : err);
            goto fail;
        }
    }
    history_close(db);
    sqlite3_close(c);
    if (t->keep_wal != (file_size(t->wal) > 0)) {
        fail(&r, "the template's WAL has %ld bytes", file_size(t->wal));
        return 0;
    }
    if (verbose)
        printf("template %s: %d earlier lines, %ld /me rows, WAL %ld bytes\n", t->tag, t->earlier,
               t->me_rows, file_size(t->wal));
    return 1;
fail:
    sqlite3_close(c);
    history_close(db);
    return 0;
}

static void remove_template(const template_db *t)
{
    if (t->db[0])
        remove_db(t->db);
}

/* The template's files as this run's database, its lines as said before. */
static int copy_template(run *r, const template_db *t)
{
    char wal[460];
    remove_db(r->path);
    snprintf(wal, sizeof wal, "%s-wal", r->path);
    if (!copy_file(t->db, r->path) || (t->keep_wal && !copy_file(t->wal, wal))) {
        fail(r, "copying template %s failed", t->tag);
        return 0;
    }
    r->me_rows = t->me_rows;
    for (int i = 0; i < t->earlier; i++)
        earlier_line(i, &r->lines[r->nsaid++]);
    r->base = r->stored = r->nsaid;
    return 1;
}

/* ---- the scenarios -------------------------------------------------------- */

struct scenario {
    const char *name;
    const char *what;
    int op;
    int (*prepare)(run *r);
    int extra_modes;   /* EXTRA_*: the modes swept besides once and persistent */
    int skip_syncs;    /* fault_vfs_skip_syncs during the sweep: open-new, whose cases each create a
                        * database (seven fsyncs), twice when the first open failed: that was
                        * half of the test's time under Wine */
};

/* A database as history_open left it, and a hub whose sessions' joins are
 * stored and delivered. */
static int fresh_hub(run *r, const template_db *t)
{
    if (!copy_template(r, t) || !open_history(r) || !start_hub(r))
        return 0;
    hub_turn(r->h, r->now);   /* the joins */
    drain(r);
    return 1;
}

/* A batch of 2 lines per session, the WAL already going. */
static int prep_commit(run *r)
{
    if (!fresh_hub(r, &tpl_fresh))
        return 0;
    say_round(r, 2, 0);
    return 1;
}

/* A batch bigger than a tiny page cache: pages spill into the WAL while the
 * INSERT runs, before COMMIT. */
static int prep_commit_spill(run *r)
{
    r->ho.cache_pages = 10;
    if (!fresh_hub(r, &tpl_fresh))
        return 0;
    say_round(r, 20, 300);
    return 1;
}

/* The first commit after a complete checkpoint: it starts the WAL over
 * (a new WAL header, synced even with synchronous=NORMAL). */
static int prep_commit_new_wal(run *r)
{
    if (!fresh_hub(r, &tpl_big))   /* the joins' commit tells the WAL hook its size */
        return 0;
    hub_idle(r->h);                /* the checkpoint, no fault */
    say_round(r, 2, 0);
    return 1;
}

/* Four batches stored and delivered (four FTS5 segments), then the idle
 * step: a WAL this small is not checkpointed, the index is merged. */
static int prep_idle_merge(run *r)
{
    if (!fresh_hub(r, &tpl_fresh))
        return 0;
    for (int i = 0; i < 4; i++) {
        say_round(r, 1, 0);
        r->now += STEP_MS;
        turn(r);
    }
    return r->stored == r->nsaid;
}

/* Lines stored and delivered on top of a big WAL: the idle step checkpoints. */
static int prep_idle_checkpoint(run *r)
{
    if (!fresh_hub(r, &tpl_big))
        return 0;
    say_round(r, 2, 0);
    r->now += STEP_MS;
    turn(r);
    return r->stored == r->nsaid;
}

/* No file yet: the open creates the schema. */
static int prep_open_new(run *r)
{
    remove_db(r->path);
    return 1;
}

/* A file an earlier run closed cleanly, with lines in it. */
static int prep_open_existing(run *r)
{
    return copy_template(r, &tpl_closed);
}

/* A file whose last writer died: its lines are in the WAL only, and the
 * open must recover them. */
static int prep_open_crashed(run *r)
{
    return copy_template(r, &tpl_crashed);
}

static const scenario scenarios[] = {
    { "commit", "hub_turn commits 2 lines from each of 3 sessions",
      OP_TURN, prep_commit, EXTRA_ALL, 0 },
    { "commit-spill", "hub_turn commits 60 lines through a 10-page cache",
      OP_TURN, prep_commit_spill, EXTRA_ALL, 0 },
    { "commit-new-wal", "hub_turn commits the first batch after a checkpoint",
      OP_TURN, prep_commit_new_wal, EXTRA_ALL, 0 },
    { "idle-merge", "hub_idle runs an FTS5 merge step",
      OP_IDLE, prep_idle_merge, EXTRA_BUSY_LOCK, 0 },
    { "idle-checkpoint", "hub_idle checkpoints a 300-frame WAL",
      OP_IDLE, prep_idle_checkpoint, EXTRA_BUSY_LOCK, 0 },
    { "open-new", "history_open creates the database",
      OP_OPEN, prep_open_new, EXTRA_BUSY_LOCK, 1 },
    { "open-existing", "history_open on a cleanly closed database",
      OP_OPEN, prep_open_existing, EXTRA_BUSY_LOCK, 0 },
    { "open-crashed", "history_open recovers a WAL left by a dead writer",
      OP_OPEN, prep_open_crashed, EXTRA_BUSY_LOCK, 0 },
};
#define NSCENARIOS (sizeof scenarios / sizeof scenarios[0])

/* ---- one case ----------------------------------------------------------- */

typedef struct fault_mode {
    const char *name;
    int flags;
    int rc;
} fault_mode;

static const fault_mode mode_once = { "once", FAULT_ONCE, 0 };
static const fault_mode mode_persistent = { "persistent", FAULT_PERSISTENT, 0 };
static const fault_mode mode_full_torn = { "once-full-torn", FAULT_ONCE | FAULT_TORN, SQLITE_FULL };
static const fault_mode mode_busy = { "once-busy", FAULT_ONCE, SQLITE_BUSY };

/* The modes swept for a category; 0 for one that cannot fail. */
static int modes_for(const scenario *sc, int category, const fault_mode **out)
{
    int n = 0;
    if (category == FAULT_SHMBARRIER)
        return 0;
    out[n++] = &mode_once;
    out[n++] = &mode_persistent;
    if ((sc->extra_modes & EXTRA_FULL) && category == FAULT_WRITE)
        out[n++] = &mode_full_torn;
    if (((sc->extra_modes & EXTRA_BUSY_LOCK) && category == FAULT_LOCK) ||
        ((sc->extra_modes & EXTRA_BUSY_SHM) && category == FAULT_SHMLOCK))
        out[n++] = &mode_busy;
    return n;
}

/* What the trace saw fail, for the coverage asserts. */
static struct {
    int collect;                 /* print the dry run's calls */
    unsigned long commit_frame_faults, wal_header_sync_faults, db_sync_faults;
    int last_was_wal_header;
} tr;

static void on_trace(void *ctx, int category, unsigned long index, const char *what, int failed)
{
    (void)ctx;
    if (tr.collect)
        printf("    %-10s #%-3lu %s%s\n", fault_category_name(category), index, what, failed ? "  <- fails" : "");
    if (failed && category == FAULT_WRITE && strstr(what, "(commit)"))
        tr.commit_frame_faults++;
    if (failed && category == FAULT_SYNC && strstr(what, " wal ") && tr.last_was_wal_header)
        tr.wal_header_sync_faults++;
    if (failed && category == FAULT_SYNC && strstr(what, " db "))
        tr.db_sync_faults++;
    if (category == FAULT_WRITE)
        tr.last_was_wal_header = strstr(what, "wal 0+32 header") != NULL;
}

/* The operation under test (armed or counted by the caller), checked. */
static void operate(run *r)
{
    char err[512];
    switch (r->sc->op) {
    case OP_TURN:
        turn(r);
        break;
    case OP_IDLE:
        hub_idle(r->h);
        check_quiet(r);
        break;
    case OP_OPEN:
        err[0] = '\0';
        r->open_rc = history_open(&r->db, r->path, &r->ho, err, sizeof err);
        if (r->open_rc != HISTORY_OK) {
            if (r->db != NULL)
                fail(r, "history_open failed (%d) but returned a handle", r->open_rc);
            if (!err[0])
                fail(r, "history_open failed (%d) without a message", r->open_rc);
            r->db = NULL;
        } else if (!r->db) {
            fail(r, "history_open succeeded without a handle");
        }
        break;
    }
}

/* After the operation: the outage (persistent faults), its end, the
 * retries, and one ordinary round to show the hub is back to normal. */
static void aftermath(run *r)
{
    int i;
    if (r->sc->op == OP_OPEN) {
        if (!r->db) {
            static file_view v;   /* large; not reentrant anyway */
            fault_vfs_disarm();   /* the relay would not have started; it is started again */
            read_file(r, &v);
            if (file_is_prefix(r, &v) && v.n != r->base)
                fail(r, "after the failed open the file holds %d lines, it held %d", v.n, r->base);
            if (!open_history(r))
                return;
        }
        r->allow_joins = 1;
        if (!start_hub(r))
            return;
        drain(r);   /* the greetings: replies, sent at once */
        r->now += STEP_MS;
        turn(r);
        say_round(r, 1, 0);
        r->now += STEP_MS;
        turn(r);
    }
    if (r->persistent) {
        for (i = 0; i < OUTAGE_TURNS; i++) {
            say_line(r, i % SESSIONS, 0);
            r->now += STEP_MS;
            turn(r);
        }
    }
    fault_vfs_disarm();
    for (i = 0; i < RETRY_TURNS && r->stored < r->nsaid; i++) {
        if (i == RETRY_TURNS / 2 && r->checker) {
            sqlite3_close(r->checker);   /* the other user leaves (see keep_checker) */
            r->checker = NULL;
            r->checker_left = 1;
            if (waited_for_reader++ < 20)
                printf("needed the other connection to close: %s (%s)\n", r->label, history_errmsg(r->db));
            /* only a failed unlock of the database file leaves that state */
            if (r->category != FAULT_LOCK)
                fail(r, "the hub could not store again until the other connection closed");
        }
        r->now += STEP_MS;
        turn(r);
    }
    if (r->stored < r->nsaid) {
        fail(r, "%d lines still held %d turns after the fault ended (%s)", r->nsaid - r->stored,
             RETRY_TURNS, history_errmsg(r->db));
        return;
    }
    say_round(r, 1, 0);
    r->now += STEP_MS;
    turn(r);
    if (r->stored < r->nsaid)
        fail(r, "a fresh round was not stored at once after the fault ended: %s", history_errmsg(r->db));
}

/* The hub and the history closed, the file checked whole.  The checker is
 * open while history closes, so the close does not checkpoint: the check
 * reads what the relay's connection left, and no case pays two fsyncs. */
static void teardown(run *r)
{
    static file_view v;
    sqlite3_stmt *st = NULL;
    int rc;
    fault_vfs_disarm();
    r->keep_checker_now = 1;
    read_file(r, &v);   /* opens the checker */
    hub_destroy(r->h);
    history_close(r->db);
    r->h = NULL;
    r->db = NULL;
    read_file(r, &v);
    if (file_is_prefix(r, &v)) {
        if (v.n != r->nsaid)
            fail(r, "after close the file holds %d of %d lines", v.n, r->nsaid);
        else
            ok();
    }
    if (!r->checker) {
        fail(r, "no checker connection at the end (%s)", v.err);
    } else {
        rc = sqlite3_prepare_v2(r->checker, "PRAGMA integrity_check", -1, &st, NULL);
        if (rc != SQLITE_OK || sqlite3_step(st) != SQLITE_ROW ||
            strcmp((const char *)sqlite3_column_text(st, 0), "ok") != 0)
            fail(r, "integrity_check: %s", rc == SQLITE_OK && sqlite3_column_text(st, 0)
                                                ? (const char *)sqlite3_column_text(st, 0)
                                                : sqlite3_errmsg(r->checker));
        else
            ok();
        sqlite3_finalize(st);
        rc = sqlite3_exec(r->checker, "INSERT INTO messages_fts(messages_fts) VALUES ('integrity-check')",
                          NULL, NULL, NULL);
        if (rc != SQLITE_OK)
            fail(r, "FTS5 integrity-check: %s (code %d)", sqlite3_errmsg(r->checker), rc);
        else
            ok();
        sqlite3_close(r->checker);
        r->checker = NULL;
    }
    remove_db(r->path);
}

static void init_run(run *r, const scenario *sc, const char *label)
{
    memset(r, 0, sizeof r[0]);
    r->sc = sc;
    snprintf(r->label, sizeof r->label, "%s", label);
    name_run(r, sc->name);
    r->now = 1000;
}

typedef struct sweep_stats {
    unsigned long count[FAULT_CATEGORIES];   /* the dry run's calls */
    unsigned long cases, bad_cases;
    int failed_begin, failed_insert, failed_commit, failed_other;
    unsigned long commit_frame_faults, wal_header_sync_faults, db_sync_faults;
    double ms;
} sweep_stats;

static void run_case(const scenario *sc, int category, unsigned long n, const fault_mode *m, sweep_stats *st)
{
    run *r = calloc(1, sizeof *r);
    char label[128];
    if (!r) {
        fail(NULL, "out of memory");
        return;
    }
    snprintf(label, sizeof label, "%s: %s #%lu %s", sc->name, fault_category_name(category), n, m->name);
    init_run(r, sc, label);
    r->category = category;
    r->persistent = (m->flags & FAULT_PERSISTENT) != 0;
    if (sc->prepare(r)) {
        fault_vfs_arm(category, n, m->flags, m->rc);
        operate(r);
        if (fault_vfs_fired() == 0)
            fail(r, "call #%lu never came: the sweep did not reach what the dry run counted", n);
        if (!r->persistent)
            fault_vfs_disarm();
        aftermath(r);
    }
    teardown(r);
    st->cases++;
    if (r->bad)
        st->bad_cases++;
    st->failed_begin += r->failed_begin;
    st->failed_insert += r->failed_insert;
    st->failed_commit += r->failed_commit;
    st->failed_other += r->failed_other;
    free(r);
}

static void dry_run(const scenario *sc, sweep_stats *st)
{
    run *r = calloc(1, sizeof *r);
    char label[128];
    if (!r) {
        fail(NULL, "out of memory");
        return;
    }
    snprintf(label, sizeof label, "%s: dry run", sc->name);
    init_run(r, sc, label);
    r->category = -1;
    if (sc->prepare(r)) {
        fault_vfs_disarm();
        fault_vfs_reset_counts();
        tr.collect = verbose;
        if (verbose)
            printf("  %s, the calls of the operation:\n", sc->name);
        operate(r);
        tr.collect = 0;
        for (int c = 0; c < FAULT_CATEGORIES; c++)
            st->count[c] = fault_vfs_count(c);
        aftermath(r);
    }
    teardown(r);
    free(r);
}

static void sweep(const scenario *sc, sweep_stats *st)
{
    double t0 = monotonic_ms();
    memset(st, 0, sizeof *st);
    memset(&tr, 0, sizeof tr);
    dry_run(sc, st);
    for (int c = 0; c < FAULT_CATEGORIES; c++) {
        const fault_mode *modes[4];
        int nm = modes_for(sc, c, modes);
        for (unsigned long n = 1; n <= st->count[c]; n++)
            for (int m = 0; m < nm; m++) {
                if (only_category && (strcmp(only_category, fault_category_name(c)) != 0 ||
                                      only_n != n || strcmp(only_mode, modes[m]->name) != 0))
                    continue;
                tr.collect = only_category != NULL;
                run_case(sc, c, n, modes[m], st);
                tr.collect = 0;
            }
    }
    st->commit_frame_faults = tr.commit_frame_faults;
    st->wal_header_sync_faults = tr.wal_header_sync_faults;
    st->db_sync_faults = tr.db_sync_faults;
    st->ms = monotonic_ms() - t0;
}

/* ---- what the sweep reached ----------------------------------------------- */

static const sweep_stats *stats_of(const sweep_stats *stats, const char *name)
{
    for (size_t i = 0; i < NSCENARIOS; i++)
        if (strcmp(scenarios[i].name, name) == 0)
            return &stats[i];
    return NULL;
}

#define COVERS(cond, what) do { \
    if (cond) ok(); else fail(NULL, "the sweep did not reach %s (%s)", what, #cond); \
} while (0)

/* The sweep must reach the calls it claims to: writes, syncs, locks and
 * shared memory, the COMMIT's own steps, a spill's, a checkpoint's. */
static void check_coverage(const sweep_stats *stats, const unsigned long *total)
{
    const sweep_stats *commit = stats_of(stats, "commit"), *spill = stats_of(stats, "commit-spill");
    const sweep_stats *new_wal = stats_of(stats, "commit-new-wal"), *merge = stats_of(stats, "idle-merge");
    const sweep_stats *ckpt = stats_of(stats, "idle-checkpoint"), *open_new = stats_of(stats, "open-new");
    const sweep_stats *open_existing = stats_of(stats, "open-existing");
    const sweep_stats *open_crashed = stats_of(stats, "open-crashed");

    printf("a commit's syncs with synchronous=NORMAL: %lu (commit), %lu (commit-spill), %lu (commit-new-wal: "
           "the header of the restarted WAL)\n",
           commit->count[FAULT_SYNC], spill->count[FAULT_SYNC], new_wal->count[FAULT_SYNC]);
    printf("a commit's file locks: %lu (WAL mode keeps its SHARED lock; writers take shm locks); "
           "opening: %lu (new), %lu (existing), %lu (crashed)\n", commit->count[FAULT_LOCK],
           open_new->count[FAULT_LOCK], open_existing->count[FAULT_LOCK], open_crashed->count[FAULT_LOCK]);
    printf("faults on a commit frame: %lu; on a restarted WAL's header sync: %lu; on a checkpoint's "
           "database sync: %lu\n", commit->commit_frame_faults + spill->commit_frame_faults +
           new_wal->commit_frame_faults, new_wal->wal_header_sync_faults, ckpt->db_sync_faults);

    COVERS(total[FAULT_WRITE] > 0, "writes");
    COVERS(total[FAULT_SYNC] > 0, "syncs");
    COVERS(total[FAULT_LOCK] > 0, "file locks");
    COVERS(total[FAULT_SHMMAP] + total[FAULT_SHMLOCK] > 0, "shared memory");
    COVERS(commit->count[FAULT_WRITE] > 0 && commit->count[FAULT_SHMLOCK] > 0, "a commit's writes and shm locks");
    COVERS(commit->failed_commit > 0 && commit->commit_frame_faults > 0, "the COMMIT's own steps");
    COVERS(spill->failed_insert > 0, "a spill during the INSERT");
    COVERS(new_wal->count[FAULT_SYNC] > 0 && new_wal->wal_header_sync_faults > 0, "a restarted WAL's sync");
    COVERS(merge->count[FAULT_WRITE] > 0, "an FTS5 merge step's writes");
    COVERS(ckpt->count[FAULT_SYNC] > 0 && ckpt->count[FAULT_WRITE] > 0 && ckpt->count[FAULT_TRUNCATE] > 0 &&
           ckpt->db_sync_faults > 0, "a checkpoint's writes, syncs and truncation");
    COVERS(open_new->count[FAULT_LOCK] > 0 && open_new->count[FAULT_SHMMAP] > 0 &&
           open_new->count[FAULT_OPEN] > 0 && open_new->count[FAULT_SYNC] > 0, "an open's locks, shm, files, syncs");
    COVERS(open_crashed->count[FAULT_READ] > open_existing->count[FAULT_READ], "a WAL recovery's reads");
    for (size_t i = 0; i < NSCENARIOS; i++)
        COVERS(stats[i].cases > 0, scenarios[i].name);
}

/* ---- main ------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    const char *dir = getenv("CHATRELAY_TEST_DIR");
    static sweep_stats stats[NSCENARIOS], all;
    unsigned long total[FAULT_CATEGORIES] = { 0 };
    int local, rc;
    size_t i;

    for (int a = 1; a < argc; a++) {
        if (strcmp(argv[a], "-v") == 0)
            verbose = 1;
        else if (strcmp(argv[a], "-p") == 0)
            keep_checker = 0;
        else if (strcmp(argv[a], "-s") == 0 && a + 1 < argc)
            only_scenario = argv[++a];
        else if (strcmp(argv[a], "-c") == 0 && a + 3 < argc) {
            only_category = argv[++a];
            only_n = strtoul(argv[++a], NULL, 10);
            only_mode = argv[++a];
        } else
            dir = argv[a];
    }
    snprintf(dir_prefix, sizeof dir_prefix, "%s%s", dir ? dir : "", dir ? "/" : "");
    /* Unique per run: the time and a stack address (randomised by ASLR). */
    snprintf(run_prefix, sizeof run_prefix, "hf-%lx-%lx-", (unsigned long)time(NULL),
             (unsigned long)(((uintptr_t)&local >> 4) & 0xfffff));
    log_to_stderr(only_category != NULL);   /* the hub's log only when studying one case */

    rc = fault_vfs_install();
    if (rc != SQLITE_OK) {
        fprintf(stderr, "fault_vfs_install: code %d\n", rc);
        return 1;
    }
    fault_vfs_trace(on_trace, NULL);
    printf("sqlite %s, VFS fault over %s, files %s%s*\n", sqlite3_libversion(), fault_vfs_real_name(),
           dir_prefix, run_prefix);

    if (!build_template(&tpl_fresh) || !build_template(&tpl_big) || !build_template(&tpl_closed) ||
        !build_template(&tpl_crashed)) {
        remove_template(&tpl_fresh);
        remove_template(&tpl_big);
        remove_template(&tpl_closed);
        remove_template(&tpl_crashed);
        return check_done();
    }
    for (i = 0; i < NSCENARIOS; i++) {
        const scenario *sc = &scenarios[i];
        char target[200];
        if (only_scenario && strcmp(only_scenario, sc->name) != 0)
            continue;
        snprintf(target, sizeof target, "%s%s.db", run_prefix, sc->name);
        fault_vfs_target(target);
        fault_vfs_skip_syncs(sc->skip_syncs);
        sweep(sc, &stats[i]);
        fault_vfs_skip_syncs(0);
    }
    fault_vfs_target(NULL);
    remove_template(&tpl_fresh);
    remove_template(&tpl_big);
    remove_template(&tpl_closed);
    remove_template(&tpl_crashed);

    printf("\n%-16s", "swept N");
    for (int c = 0; c < FAULT_CATEGORIES; c++)
        printf(" %9s", fault_category_name(c));
    printf("   cases  bad   BEGIN INSERT COMMIT other     ms\n");
    for (i = 0; i < NSCENARIOS; i++) {
        sweep_stats *st = &stats[i];
        printf("%-16s", scenarios[i].name);
        for (int c = 0; c < FAULT_CATEGORIES; c++) {
            printf(" %9lu", st->count[c]);
            total[c] += st->count[c];
        }
        printf(" %7lu %4lu  %6d %6d %6d %5d %6.0f\n", st->cases, st->bad_cases, st->failed_begin,
               st->failed_insert, st->failed_commit, st->failed_other, st->ms);
        all.cases += st->cases;
        all.bad_cases += st->bad_cases;
        all.ms += st->ms;
    }
    printf("%-16s", "all");
    for (int c = 0; c < FAULT_CATEGORIES; c++)
        printf(" %9lu", total[c]);
    printf(" %7lu %4lu  %27s %6.0f\n", all.cases, all.bad_cases, "", all.ms);
    printf("(each count is the number of N swept in each mode; shmbarrier is counted, never failed:\n"
           " xShmBarrier returns nothing; BEGIN..other: the statement a held batch's error named)\n");
    if (!only_scenario)
        check_coverage(stats, total);

    fault_vfs_trace(NULL, NULL);
    fault_vfs_uninstall();
    msgbuf_pool_drain();
    return check_done();
}

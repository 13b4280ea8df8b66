/* bench_history: the cost of storing a line through storage/history, in
 * microseconds per line and lines per second, for transactions of 1, 10,
 * 100 and 1000 lines, in the same build and the same run, in 5 interleaved
 * rounds, each on a fresh temporary database in WAL + synchronous=NORMAL
 * (what history_open sets); each figure is the median of the rounds.
 * Times cover the writes (including any automatic checkpoint), not opening
 * or the checkpoint at close (which favours per-line).
 * As a second per-line baseline, the cheapest thing one line can cost:
 * one plain autocommit INSERT through the SQLite API on the same schema
 * (no history layer, no staging); the speed-up is taken against the faster
 * of the two per-line figures.
 *
 *   bench_history [folder [per_line_count [batched_count [only_batch [idle]]]]]
 *
 * per_line_count lines (default 3000) go one per transaction, batched_count
 * lines (default 100000) through each batch size.  With only_batch, a
 * single run of batched_count lines in batches of only_batch, for profilers;
 * with idle = 1 it also calls history_idle_step after every batch, untimed:
 * what the commits cost when the relay has idle moments between its turns.
 *
 * The database is folder/bench_history-<time>-<n>.db (default: the current
 * folder), deleted at the end.  A benchmark, not a test: it prints figures
 * and fails only if the history calls fail.  Figures: docs/HISTORY.md.
 */
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sqlite3.h>

#include "history.h"
#include "../tests/unit/db_support.h"   /* remove_db, monotonic_ms: shared with the storage tests */

#define ROUNDS 5

/* Chat-like lines of 20..120 bytes from a small vocabulary (deterministic),
 * so the FTS index does the work it does in production. */
static uint32_t rng_state = 12345;

static uint32_t rng(void)
{
    rng_state = rng_state * 1103515245u + 12345u;
    return rng_state >> 8;
}

static size_t make_body(char *out, size_t cap, long n)
{
    static const char *const words[] = {
        "deploy", "friday", "the", "build", "is", "green", "again", "who", "broke", "tests",
        "lunch", "coffee", "review", "merge", "please", "ok", "thanks", "later", "ship", "it",
        "database", "locked", "retry", "window", "service", "relay", "works", "here", "now", "why",
    };
    size_t len = (size_t)snprintf(out, cap, "%ld", n);
    size_t target = 20 + rng() % 100;
    while (len < target && len + 12 < cap) {
        const char *w = words[rng() % (sizeof words / sizeof words[0])];
        out[len++] = ' ';
        memcpy(out + len, w, strlen(w));
        len += strlen(w);
    }
    out[len] = '\0';
    return len;
}

/* Appends `count` lines in transactions of `batch` lines; returns the time
 * taken in ms, or -1 if a history call failed.  *slowest: the longest
 * batch (begin, appends, commit) in ms: what one loop turn of the relay
 * would wait for, merges and checkpoints included.  *idle: the time of one
 * history_idle_step after the last batch (the upkeep the relay does when
 * it has nothing else to do), in ms. */
static int idle_between_batches;   /* see the usage above */

static double run(const char *path, long count, long batch, double *slowest, double *idle)
{
    static const char *const rooms[] = { "lobby", "dev", "ops", "random" };
    char err[512], body[160], at[HISTORY_TIME_LEN + 1];
    history *h = NULL;
    double t0, elapsed;
    long i = 0;
    int64_t t_ms = INT64_C(1795748645123);

    remove_db(path);
    if (history_open(&h, path, NULL, err, sizeof err) != HISTORY_OK) {
        fprintf(stderr, "bench_history: %s\n", err);
        return -1;
    }
    *slowest = 0;
    t0 = monotonic_ms();
    while (i < count) {
        double t_batch = monotonic_ms();
        long j;
        if (history_begin(h) != HISTORY_OK)
            goto failed;
        for (j = 0; j < batch && i < count; j++, i++) {
            history_record rec;
            history_format_time(t_ms + i, at);
            rec.id = 0;
            rec.at = at;
            rec.room = rooms[i % 4];
            rec.nick = "bench";
            rec.kind = HISTORY_SAY;
            rec.body = body;
            rec.body_len = make_body(body, sizeof body, i);
            if (history_append(h, &rec) != HISTORY_OK) {
                history_rollback(h);
                goto failed;
            }
        }
        if (history_commit(h) != HISTORY_OK)
            goto failed;
        t_batch = monotonic_ms() - t_batch;
        if (t_batch > *slowest)
            *slowest = t_batch;
        if (idle_between_batches) {
            double t_idle = monotonic_ms();
            while (history_idle_step(h) == 1)
                ;
            t0 += monotonic_ms() - t_idle;   /* not part of storing */
        }
    }
    elapsed = monotonic_ms() - t0;
    t0 = monotonic_ms();
    if (history_idle_step(h) < 0)
        goto failed;
    *idle = monotonic_ms() - t0;
    history_close(h);
    remove_db(path);
    return elapsed;

failed:
    fprintf(stderr, "bench_history: %s\n", history_errmsg(h));
    history_close(h);
    remove_db(path);
    return -1;
}

/* The raw baseline: history_open creates the schema, then a plain
 * connection in WAL + NORMAL inserts each line in its own implicit
 * transaction (FTS triggers included). */
static double run_raw(const char *path, long count)
{
    static const char *const rooms[] = { "lobby", "dev", "ops", "random" };
    char err[512], body[160], at[HISTORY_TIME_LEN + 1];
    history *h = NULL;
    sqlite3 *db = NULL;
    sqlite3_stmt *ins = NULL;
    double t0, elapsed = 0;
    long i;
    int rc;
    int64_t t_ms = INT64_C(1795748645123);

    remove_db(path);
    if (history_open(&h, path, NULL, err, sizeof err) != HISTORY_OK) {
        fprintf(stderr, "bench_history: %s\n", err);
        return -1;
    }
    history_close(h);
    rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL", NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(db, "INSERT INTO messages(at, room, nick, kind, body) VALUES (?1, ?2, ?3, ?4, ?5)",
                                -1, &ins, NULL);
    t0 = monotonic_ms();
    for (i = 0; i < count && rc == SQLITE_OK; i++) {
        size_t len = make_body(body, sizeof body, i);
        history_format_time(t_ms + i, at);
        rc = sqlite3_bind_text(ins, 1, at, -1, SQLITE_STATIC);
        if (rc == SQLITE_OK) rc = sqlite3_bind_text(ins, 2, rooms[i % 4], -1, SQLITE_STATIC);
        if (rc == SQLITE_OK) rc = sqlite3_bind_text(ins, 3, "bench", -1, SQLITE_STATIC);
        if (rc == SQLITE_OK) rc = sqlite3_bind_text(ins, 4, "say", -1, SQLITE_STATIC);
        if (rc == SQLITE_OK) rc = sqlite3_bind_text(ins, 5, body, (int)len, SQLITE_STATIC);
        if (rc == SQLITE_OK) rc = sqlite3_step(ins) == SQLITE_DONE ? SQLITE_OK : sqlite3_errcode(db);
        if (rc == SQLITE_OK) rc = sqlite3_reset(ins);
    }
    elapsed = monotonic_ms() - t0;
    if (rc != SQLITE_OK)
        fprintf(stderr, "bench_history: raw INSERT: %s (code %d)\n", sqlite3_errmsg(db), rc);
    sqlite3_finalize(ins);
    sqlite3_close(db);
    remove_db(path);
    return rc == SQLITE_OK ? elapsed : -1;
}

/* The ways of writing, in the order printed: one raw autocommit INSERT per
 * line, then history batches of these sizes. */
static const long batch_sizes[] = { 1, 10, 100, 1000 };
#define BATCH_WAYS ((int)(sizeof batch_sizes / sizeof batch_sizes[0]))
#define WAYS (1 + BATCH_WAYS)
#define WAY_RAW 0

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median_of(const double *v, int n)
{
    double sorted[ROUNDS];
    memcpy(sorted, v, (size_t)n * sizeof *v);
    qsort(sorted, (size_t)n, sizeof *sorted, compare_double);
    return n % 2 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
}

int main(int argc, char **argv)
{
    const char *folder = argc > 1 ? argv[1] : ".";
    long per_line = argc > 2 ? atol(argv[2]) : 3000;
    long batched = argc > 3 ? atol(argv[3]) : 100000;
    long only_batch = argc > 4 ? atol(argv[4]) : 0;
    char path[1024];
    double us[WAYS][ROUNDS], idle[WAYS][ROUNDS], med[WAYS], slowest[WAYS] = { 0 }, per_line_best;
    long lines[WAYS], size[WAYS];
    int round, way;

    idle_between_batches = argc > 5 && atoi(argv[5]) == 1;
    if (per_line < ROUNDS || batched < ROUNDS || only_batch < 0) {
        fprintf(stderr, "usage: bench_history [folder [per_line_count [batched_count [only_batch [idle]]]]]"
                " (counts >= %d)\n", ROUNDS);
        return 2;
    }
    /* The time and a stack address (randomised by ASLR): two runs in one
     * folder in the same second do not share a database. */
    snprintf(path, sizeof path, "%s/bench_history-%lx-%lx.db", folder, (unsigned long)time(NULL),
             (unsigned long)(((uintptr_t)&round >> 4) & 0xfffff));
    if (only_batch > 0) {
        /* One way only, one run: for profilers (perf, callgrind). */
        double slow, idle_ms;
        double t = run(path, batched, only_batch, &slow, &idle_ms);
        if (t < 0)
            return 1;
        printf("bench_history: %ld lines in batches of %ld%s: %.3f us/line, slowest batch %.2f ms,"
               " then history_idle_step %.2f ms\n", batched, only_batch,
               idle_between_batches ? " (idle steps between them)" : "", t * 1000.0 / (double)batched, slow, idle_ms);
        return 0;
    }
    printf("bench_history: %s, sqlite %s, WAL + synchronous=NORMAL, FTS5 index by triggers,"
           " %d interleaved rounds\n", path, sqlite3_libversion(), ROUNDS);

    size[WAY_RAW] = 1;
    lines[WAY_RAW] = per_line / ROUNDS;
    for (way = 1; way < WAYS; way++) {
        size[way] = batch_sizes[way - 1];
        lines[way] = size[way] == 1 ? per_line / ROUNDS : batched / ROUNDS;
    }
    /* Interleaved rounds, each on a fresh database: a load change on the
     * (shared) machine then hits every way of writing alike; the median of
     * the rounds leaves out a round that a burst of other work slowed. */
    for (round = 0; round < ROUNDS; round++) {
        for (way = 0; way < WAYS; way++) {
            double slow = 0;
            double t = way == WAY_RAW ? run_raw(path, lines[way])
                                      : run(path, lines[way], size[way], &slow, &idle[way][round]);
            if (t < 0)
                return 1;
            if (slow > slowest[way])
                slowest[way] = slow;
            us[way][round] = t * 1000.0 / (double)lines[way];
        }
    }
    for (way = 0; way < WAYS; way++)
        med[way] = median_of(us[way], ROUNDS);
    printf("  %-34s %8s %10s %12s %14s %12s\n", "", "lines", "us/line", "lines/s", "slowest batch",
           "idle step");
    printf("  %-34s %8ld %10.2f %12.0f  (SQLite API, no history layer)\n", "1 plain INSERT (autocommit)",
           lines[WAY_RAW] * ROUNDS, med[WAY_RAW], 1e6 / med[WAY_RAW]);
    for (way = 1; way < WAYS; way++) {
        char label[64];
        snprintf(label, sizeof label, "%ld line%s per transaction", size[way], size[way] == 1 ? "" : "s");
        printf("  %-34s %8ld %10.2f %12.0f %11.1f ms %9.1f ms\n", label, lines[way] * ROUNDS, med[way],
               1e6 / med[way], slowest[way], median_of(idle[way], ROUNDS));
    }
    per_line_best = med[WAY_RAW] < med[1] ? med[WAY_RAW] : med[1];
    printf("  group commit speed-up over the faster per-line figure:");
    for (way = 2; way < WAYS; way++)
        printf(" x%.1f (batches of %ld)%s", per_line_best / med[way], size[way], way + 1 < WAYS ? "," : "\n");
    return 0;
}

/* durability_writer: commits history batches through storage/history and then
 * waits to be killed (tests/durability/kill_after_commit.py is the driver).
 *
 *   durability_writer DB CACHE_PAGES BEFORE BATCH MIN_LEN MAX_LEN
 *
 * Opens DB (a new file) with cache_pages = CACHE_PAGES (0: SQLite's default
 * cache; a tiny one makes a large batch spill pages into the WAL before its
 * commit), commits one earlier batch of BEFORE lines, then one batch of BATCH
 * lines, bodies of MIN_LEN..MAX_LEN bytes.  Once that commit returned OK it
 * prints "committed ROWS BYTES" (rows in the table, bytes of all bodies),
 * flushes, and blocks on stdin without touching the database again: whatever
 * the driver finds after its SIGKILL is what history_commit had made durable.
 * Every body contains the word "durable", so a MATCH count checks the index.
 *
 * Exit codes: 1 bad arguments or a history call failed (it says which); 0 when
 * stdin reaches its end, which means the driver is gone (never during a test).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "history.h"

#define MAX_BODY 4096

/* xorshift32: the same bodies on every platform and every run. */
static uint32_t next_random(uint32_t *state)
{
    uint32_t x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *state = x;
    return x;
}

/* "durable r<row>" and then lowercase words, cut to exactly len bytes
 * (len >= 10 keeps "durable" whole, followed by a space). */
static void make_body(char *out, size_t len, long long row, uint32_t *state)
{
    size_t n = (size_t)snprintf(out, MAX_BODY + 1, "durable r%lld", row);
    while (n < len) {
        size_t word = 1 + next_random(state) % 11, i;
        out[n++] = ' ';
        for (i = 0; i < word && n < len; i++)
            out[n++] = (char)('a' + next_random(state) % 26);
    }
    out[len] = '\0';
}

static int parse_count(const char *s, long long lo, long long hi, long long *out)
{
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end != '\0' || v < lo || v > hi)
        return 0;
    *out = v;
    return 1;
}

/* One transaction of count lines.  Returns 0, or 1 after saying what failed. */
static int commit_batch(history *h, long long count, long long min_len, long long max_len,
                        long long *rows, long long *bytes, uint32_t *state)
{
    static char body[MAX_BODY + 1];
    char at[HISTORY_TIME_LEN + 1];
    long long i;
    int rc = history_begin(h);
    if (rc != HISTORY_OK) {
        fprintf(stderr, "durability_writer: history_begin: %d: %s\n", rc, history_errmsg(h));
        return 1;
    }
    for (i = 0; i < count; i++) {
        size_t len = (size_t)(min_len + (long long)(next_random(state) % (uint32_t)(max_len - min_len + 1)));
        history_record r;
        make_body(body, len, *rows + i + 1, state);
        /* A millisecond per line from a fixed moment: ordered like the ids. */
        history_format_time(1796000000000LL + *rows + i, at);
        memset(&r, 0, sizeof r);
        r.at = at;
        r.room = "lobby";
        r.nick = "writer";
        r.kind = HISTORY_SAY;
        r.body = body;
        r.body_len = len;
        rc = history_append(h, &r);
        if (rc != HISTORY_OK) {
            fprintf(stderr, "durability_writer: history_append (line %lld of %lld): %d: %s\n",
                    i + 1, count, rc, history_errmsg(h));
            history_rollback(h);
            return 1;
        }
        *bytes += (long long)len;
    }
    rc = history_commit(h);
    if (rc != HISTORY_OK) {
        fprintf(stderr, "durability_writer: history_commit (%lld lines): %d: %s\n", count, rc, history_errmsg(h));
        return 1;
    }
    *rows += count;
    return 0;
}

int main(int argc, char **argv)
{
    long long cache, before, batch, min_len, max_len, rows = 0, bytes = 0;
    history_options opt;
    history *h = NULL;
    char err[512];
    uint32_t state = 2463534242u;
    int rc;

    if (argc != 7 || !parse_count(argv[2], 0, 1000000, &cache) || !parse_count(argv[3], 0, 1000000, &before) ||
        !parse_count(argv[4], 1, 1000000, &batch) || !parse_count(argv[5], 10, MAX_BODY, &min_len) ||
        !parse_count(argv[6], min_len, MAX_BODY, &max_len)) {
        fprintf(stderr, "usage: durability_writer DB CACHE_PAGES BEFORE BATCH MIN_LEN MAX_LEN "
                        "(lengths 10..%d, MIN_LEN <= MAX_LEN, BATCH >= 1)\n", MAX_BODY);
        return 1;
    }
    memset(&opt, 0, sizeof opt);
    opt.cache_pages = (int)cache;
    rc = history_open(&h, argv[1], &opt, err, sizeof err);
    if (rc != HISTORY_OK) {
        fprintf(stderr, "durability_writer: history_open: %d: %s\n", rc, err);
        return 1;
    }
    if (before > 0 && commit_batch(h, before, min_len, max_len, &rows, &bytes, &state) != 0)
        return 1;
    if (commit_batch(h, batch, min_len, max_len, &rows, &bytes, &state) != 0)
        return 1;
    if (printf("committed %lld %lld\n", rows, bytes) < 0 || fflush(stdout) != 0) {
        fprintf(stderr, "durability_writer: writing the committed line to stdout failed\n");
        return 1;
    }
    /* Nothing more happens here: no close, no checkpoint, no upkeep.  Reading
     * stdin blocks until the driver kills us (or is gone, then we just exit,
     * still without closing the database). */
    while (getchar() != EOF)
        ;
    return 0;
}

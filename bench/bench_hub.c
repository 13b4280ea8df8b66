/* bench_hub: the delivery cost of one room per dialect mix, in process and
 * deterministic: no sockets, no clock, no threads, so an instruction count
 * (valgrind --tool=callgrind) does not depend on the machine's load.
 *
 * It plays the Win32 shell (core/relay.c) around the hub through the same
 * turn_run the relay runs: N sessions in #lobby (line clients opened as on
 * a line listener, IRC clients as on --listen-irc, registered with
 * NICK/USER and joined with JOIN #lobby, like bench/loadgen's), of which the
 * first K send M lines each; the IRC ones spread evenly among them (loadgen's
 * rule), so a half-IRC room has senders and receivers of both kinds.  A line
 * is loadgen's: "<tag> <sender> <seq> <t> xxxx..." of --size bytes plus CRLF,
 * after "PRIVMSG #lobby :" for an IRC sender.
 *
 * Each turn, like the relay's:
 *   completions: the sends gathered last turn complete whole (hub_session_sent),
 *     and each sender's next bytes arrive (hub_session_input): at most
 *     hub_session_read_size of its stream, the relay's one WSARecv per
 *     session per turn, so the lines a turn carries depend on how long a
 *     sender's lines are, as they do in the relay; or --recv-bytes R for
 *     every session; or, with --lines-per-turn L, exactly L lines per sender
 *     whatever their length (to compare the output path alone);
 *   hub_turn (one transaction, delivery);
 *   flush: each queue gathered into one send as session_flush does
 *     (sendq_gather, 1024 spans, 1 MiB), counted: sends, spans, bytes.
 * Then (outside traffic_turn, so a profile can leave it out) every client
 * reads what its send carried: deliveries are counted and each sender's
 * sequence checked at every receiver, and a digest of all the bytes each
 * client received in the traffic phase is printed, so two builds can be
 * shown to send the same bytes.
 *
 *   bench_hub [--clients N] [--senders K] [--lines M] [--irc-clients I]
 *             [--size B] [--recv-bytes R | --lines-per-turn L]
 *             [--no-history] [--db PATH]
 *
 * Defaults: 100 clients, 10 senders, 1000 lines each, 0 IRC clients, 64
 * bytes, the relay's reads, history on in ./bench_hub.db (--db; deleted
 * at the end).  The relay's options are the benchmark's (--flood-burst 0
 * --flood-rate 0 --max-per-ip 0, otherwise defaults).  Under callgrind,
 * --toggle-collect='traffic_turn*' counts the relay's work of the traffic
 * phase only (not the setup, not the clients): docs/BENCHMARKS.md,
 * "Delivery cost per dialect (callgrind)".  A benchmark, not a test: it
 * exits 1 only if a delivery was lost, duplicated or reordered, or a call
 * failed.
 */
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hub.h"
#include "log.h"
#include "options.h"
#include "turn.h"
#include "../tests/unit/db_support.h"   /* remove_db */

#if defined(__GNUC__) || defined(__clang__)
#define NOINLINE __attribute__((noinline))
#elif defined(_MSC_VER)
#define NOINLINE __declspec(noinline)
#else
#define NOINLINE
#endif

/* relay.c's session_flush bounds */
#define MAX_SEND_SPANS 1024
#define MAX_SEND_BYTES (1024 * 1024)
#define TAG "b7e1"
#define LINE_MAX_BYTES 600
#define SETUP_TURNS_MAX 1000

typedef struct client {
    int irc;
    int sender;                 /* its index among the senders, or -1 */
    /* the send gathered this turn, read by the client, completed next turn */
    sendq_span *spans;
    size_t span_count, inflight_bytes;
    uint64_t *last_seq;         /* per sender: the last sequence received */
    uint64_t digest;
    /* sending: its lines, the relay reads from stream_off on */
    char *stream;
    size_t stream_len, stream_off;
    size_t *line_end;           /* [k]: where line k ends (k = 1..lines) */
    uint64_t lines_fed;         /* --lines-per-turn: whole lines handed over */
} client;

typedef struct dialect_counts {
    uint64_t sends, spans, bytes, deliveries, max_spans, capped_sends;
} dialect_counts;

typedef struct bench {
    hub *h;
    uint32_t clients, senders, irc_clients;
    uint64_t lines;
    uint32_t size, recv_bytes, lines_per_turn;
    client *c;
    int64_t now;
    int traffic;                /* counting: the setup's output is read, not counted */
    uint64_t turns;
    dialect_counts by[2];       /* [0] line recipients, [1] IRC recipients */
    uint64_t other_lines, errors;
} bench;

static uint64_t fnv(uint64_t hsh, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        hsh ^= b[i];
        hsh *= 1099511628211ull;
    }
    return hsh;
}

/* ---- the shell: what relay.c does around turn_run ---------------------- */

/* Sender c's whole stream, written before the traffic starts so that a
 * profile of the turns counts the relay's reading, not the writing. */
static int make_stream(bench *b, client *c)
{
    size_t cap = (size_t)b->lines * (b->size + 16 + 2);
    c->stream = malloc(cap ? cap : 1);
    c->line_end = malloc(((size_t)b->lines + 1) * sizeof *c->line_end);
    if (!c->stream || !c->line_end)
        return -1;
    char *o = c->stream;
    c->line_end[0] = 0;
    for (uint64_t seq = 1; seq <= b->lines; seq++) {
        char text[LINE_MAX_BYTES];
        /* loadgen's text; its t_ns is a 15-digit CLOCK_MONOTONIC, any fixed value keeps lengths equal */
        int n = snprintf(text, sizeof text, "%s %d %" PRIu64 " %" PRIu64 " ", TAG, c->sender, seq,
                         (uint64_t)100000000000000ull + seq);
        if (n < 0 || (size_t)n >= sizeof text)
            return -1;
        if ((uint32_t)n < b->size) {
            memset(text + n, 'x', b->size - (uint32_t)n);
            n = (int)b->size;
        }
        if (c->irc) {
            memcpy(o, "PRIVMSG #lobby :", 16);
            o += 16;
        }
        memcpy(o, text, (size_t)n);
        o += n;
        *o++ = '\r';
        *o++ = '\n';
        c->line_end[seq] = (size_t)(o - c->stream);
    }
    c->stream_len = (size_t)(o - c->stream);
    return 0;
}

/* What one WSARecv hands the hub: at most the read size of the stream, or
 * lines_per_turn whole lines. */
static void feed_sender(bench *b, uint32_t slot)
{
    client *c = &b->c[slot];
    size_t n = c->stream_len - c->stream_off;
    if (b->lines_per_turn) {
        uint64_t line = c->lines_fed + b->lines_per_turn;
        if (line > b->lines)
            line = b->lines;
        n = c->line_end[line] - c->stream_off;
        c->lines_fed = line;
    } else {
        size_t want = b->recv_bytes ? b->recv_bytes : hub_session_read_size(b->h, slot);
        if (n > want)
            n = want;
    }
    if (n == 0)
        return;
    hub_session_input(b->h, slot, (const unsigned char *)c->stream + c->stream_off, n, b->now);
    c->stream_off += n;
}

static void shell_completions(void *ctx)
{
    bench *b = ctx;
    for (uint32_t i = 0; i < b->clients; i++) {
        client *c = &b->c[i];
        if (c->span_count) {
            hub_session_sent(b->h, i, c->inflight_bytes);
            c->span_count = 0;
            c->inflight_bytes = 0;
        }
    }
    if (b->traffic)
        for (uint32_t i = 0; i < b->senders; i++)
            feed_sender(b, i);
}

static int64_t shell_now(void *ctx)
{
    return ((bench *)ctx)->now;
}

static void shell_begin_close(void *ctx, uint32_t slot, const char *reason)
{
    bench *b = ctx;
    fprintf(stderr, "bench_hub: the hub closes session %u (%s)\n", (unsigned)slot, reason);
    b->errors++;
}

static void shell_reap(void *ctx, int64_t now)
{
    (void)ctx;
    (void)now;
}

static void shell_flush(void *ctx, uint32_t slot)
{
    bench *b = ctx;
    client *c = &b->c[slot];
    if (c->span_count)
        return;   /* a send in flight: flushed after it completes */
    size_t n = sendq_gather(hub_sendq(b->h, slot), c->spans, MAX_SEND_SPANS, MAX_SEND_BYTES);
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++)
        bytes += c->spans[i].len;
    c->span_count = n;
    c->inflight_bytes = bytes;
    if (n && b->traffic) {
        dialect_counts *d = &b->by[c->irc];
        d->sends++;
        d->spans += n;
        d->bytes += bytes;
        if (n > d->max_spans)
            d->max_spans = n;
        d->capped_sends += n == MAX_SEND_SPANS;
    }
}

static const turn_shell shell = {
    NULL, shell_completions, shell_now, shell_begin_close, shell_reap, shell_flush,
};

/* One loop turn of the relay. */
static int relay_turn(bench *b)
{
    turn_shell s = shell;
    s.ctx = b;
    b->now++;
    b->turns++;
    return turn_run(b->h, &s, NULL);
}

/* A turn of the traffic phase: the part a profile counts
 * (--toggle-collect='traffic_turn*': the compiler may clone it). */
static NOINLINE void traffic_turn(bench *b)
{
    (void)relay_turn(b);
}

/* ---- the clients: what each one reads --------------------------------- */

static void read_line(bench *b, uint32_t slot, const char *p, size_t n)
{
    client *c = &b->c[slot];
    const char *text = NULL, *end = p + n;
    if (!c->irc && n > 0 && p[0] == '<') {
        const char *q = memchr(p, '>', n);
        if (q && q + 2 <= end)
            text = q + 2;
    } else if (c->irc && n > 0 && p[0] == ':') {
        const char *q = memchr(p, ' ', n);
        if (q && (size_t)(end - q) > 17 && memcmp(q, " PRIVMSG #lobby :", 17) == 0)
            text = q + 17;
    }
    if (!text || (size_t)(end - text) < sizeof TAG || memcmp(text, TAG " ", sizeof TAG) != 0) {
        b->other_lines++;
        return;
    }
    char *q;
    unsigned long sender = strtoul(text + sizeof TAG, &q, 10);
    uint64_t seq = strtoull(q, NULL, 10);
    if (sender >= b->senders || seq != c->last_seq[sender] + 1) {
        if (b->errors++ < 5)
            fprintf(stderr, "bench_hub: client %u: got %.*s\n", (unsigned)slot, (int)n, p);
        return;
    }
    c->last_seq[sender] = seq;
    b->by[c->irc].deliveries++;
}

static NOINLINE void clients_read(bench *b)
{
    for (uint32_t i = 0; i < b->clients; i++) {
        client *c = &b->c[i];
        if (!b->traffic)
            continue;
        for (size_t k = 0; k < c->span_count; k++) {
            const char *p = c->spans[k].ptr, *end = p + c->spans[k].len;
            c->digest = fnv(c->digest, p, c->spans[k].len);
            while (p < end) {
                const char *nl = memchr(p, '\n', (size_t)(end - p));
                if (!nl) {
                    b->errors++;   /* every buffer holds whole lines */
                    break;
                }
                size_t len = (size_t)(nl - p);
                read_line(b, i, p, len > 0 && p[len - 1] == '\r' ? len - 1 : len);
                p = nl + 1;
            }
        }
    }
}

static int settle(bench *b)
{
    for (int t = 0; t < SETUP_TURNS_MAX; t++) {
        int busy = 0;
        for (uint32_t i = 0; i < b->clients; i++)
            busy |= b->c[i].span_count != 0;
        if (!busy && t > 0)
            return 0;
        relay_turn(b);
        clients_read(b);
    }
    return -1;
}

static int arg_u32(int argc, char **argv, int *i, uint32_t *out)
{
    if (*i + 1 >= argc)
        return -1;
    char *end;
    unsigned long v = strtoul(argv[++*i], &end, 10);
    if (*end != '\0' || v > 10000000ul)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

int main(int argc, char **argv)
{
    bench b;
    memset(&b, 0, sizeof b);
    b.clients = 100;
    b.senders = 10;
    b.size = 64;
    uint32_t lines = 1000;
    int no_history = 0;
    char db_path[256];
    snprintf(db_path, sizeof db_path, "bench_hub.db");
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int bad = 0;
        if (strcmp(a, "--clients") == 0)
            bad = arg_u32(argc, argv, &i, &b.clients);
        else if (strcmp(a, "--senders") == 0)
            bad = arg_u32(argc, argv, &i, &b.senders);
        else if (strcmp(a, "--lines") == 0)
            bad = arg_u32(argc, argv, &i, &lines);
        else if (strcmp(a, "--irc-clients") == 0)
            bad = arg_u32(argc, argv, &i, &b.irc_clients);
        else if (strcmp(a, "--size") == 0)
            bad = arg_u32(argc, argv, &i, &b.size) || b.size < 40 || b.size > 400;
        else if (strcmp(a, "--recv-bytes") == 0)
            bad = arg_u32(argc, argv, &i, &b.recv_bytes) || b.recv_bytes == 0;
        else if (strcmp(a, "--lines-per-turn") == 0)
            bad = arg_u32(argc, argv, &i, &b.lines_per_turn) || b.lines_per_turn == 0 ||
                  b.lines_per_turn > 64;
        else if (strcmp(a, "--no-history") == 0)
            no_history = 1;
        else if (strcmp(a, "--db") == 0 && i + 1 < argc)
            snprintf(db_path, sizeof db_path, "%s", argv[++i]);
        else
            bad = 1;
        if (bad) {
            fprintf(stderr, "bench_hub: bad argument '%s' (see the comment at the top of bench/bench_hub.c)\n", a);
            return 2;
        }
    }
    if (b.clients < 2 || b.senders == 0 || b.senders > b.clients || b.irc_clients > b.clients) {
        fprintf(stderr, "bench_hub: need 2 <= clients, 1 <= senders <= clients, irc-clients <= clients\n");
        return 2;
    }
    b.lines = lines;
    log_set_level(LOG_WARN);

    relay_options opt;
    options_defaults(&opt);
    char *bench_args[] = { "bench_hub", "--flood-burst", "0", "--flood-rate", "0", "--max-per-ip", "0" };
    char err[256];
    if (options_parse(&opt, 7, bench_args, 1, err, sizeof err) != 0) {
        fprintf(stderr, "bench_hub: options_parse: %s\n", err);
        return 1;
    }
    opt.max_sessions = b.clients;
    history *db = NULL;
    if (!no_history) {
        remove_db(db_path);
        history_options ho;
        memset(&ho, 0, sizeof ho);
        if (history_open(&db, db_path, &ho, err, sizeof err) != HISTORY_OK) {
            fprintf(stderr, "bench_hub: history_open %s: %s\n", db_path, err);
            return 1;
        }
    }
    hub_config cfg;
    hub_config_from_options(&cfg, &opt, db);
    b.h = hub_create(&cfg);
    b.c = calloc(b.clients, sizeof *b.c);
    if (!b.h || !b.c) {
        fprintf(stderr, "bench_hub: out of memory\n");
        return 1;
    }
    for (uint32_t i = 0; i < b.clients; i++) {
        client *c = &b.c[i];
        /* loadgen's spread: client i speaks IRC if floor(i*I/N) steps at i */
        c->irc = (uint64_t)i * b.irc_clients / b.clients != ((uint64_t)i + 1) * b.irc_clients / b.clients;
        c->sender = i < b.senders ? (int)i : -1;
        c->spans = malloc(MAX_SEND_SPANS * sizeof *c->spans);
        c->last_seq = calloc(b.senders, sizeof *c->last_seq);
        c->digest = 1469598103934665603ull;
        if (!c->spans || !c->last_seq || (c->sender >= 0 && make_stream(&b, c) != 0)) {
            fprintf(stderr, "bench_hub: out of memory\n");
            return 1;
        }
    }

    /* Setup: everyone in #lobby, everything the setup sent read. */
    for (uint32_t i = 0; i < b.clients; i++) {
        hub_session_open(b.h, i, "127.0.0.1", b.c[i].irc ? HUB_LISTEN_IRC : HUB_LISTEN_LINE, b.now);
        if (b.c[i].irc) {
            char reg[128];
            int n = snprintf(reg, sizeof reg, "NICK lg%u\r\nUSER lg%u 0 * :loadgen %u\r\n", (unsigned)i,
                             (unsigned)i, (unsigned)i);
            hub_session_input(b.h, i, (const unsigned char *)reg, (size_t)n, b.now);
        }
    }
    if (settle(&b) != 0)
        return 1;
    for (uint32_t i = 0; i < b.clients; i++)
        if (b.c[i].irc)
            hub_session_input(b.h, i, (const unsigned char *)"JOIN #lobby\r\n", 13, b.now);
    if (settle(&b) != 0)
        return 1;

    hub_stats before, after;
    hub_get_stats(b.h, &before);
    uint64_t setup_turns = b.turns;
    b.traffic = 1;
    for (;;) {
        int more = 0;
        for (uint32_t i = 0; i < b.senders; i++)
            more |= b.c[i].stream_off < b.c[i].stream_len;
        for (uint32_t i = 0; i < b.clients; i++)
            more |= b.c[i].span_count != 0;
        if (!more)
            break;
        traffic_turn(&b);
        clients_read(&b);
    }
    hub_get_stats(b.h, &after);
    uint64_t turns = b.turns - setup_turns;

    uint64_t expected = (uint64_t)b.senders * b.lines * (b.clients - 1);
    uint64_t got = b.by[0].deliveries + b.by[1].deliveries;
    uint64_t digest = 1469598103934665603ull;
    for (uint32_t i = 0; i < b.clients; i++)
        digest = fnv(digest, &b.c[i].digest, sizeof b.c[i].digest);
    uint64_t sends = b.by[0].sends + b.by[1].sends, spans = b.by[0].spans + b.by[1].spans;
    uint64_t bytes = b.by[0].bytes + b.by[1].bytes;
    char reads[64];
    if (b.lines_per_turn)
        snprintf(reads, sizeof reads, "lines_per_turn=%u", (unsigned)b.lines_per_turn);
    else if (b.recv_bytes)
        snprintf(reads, sizeof reads, "recv_bytes=%u", (unsigned)b.recv_bytes);
    else
        snprintf(reads, sizeof reads, "recv_bytes=relay(line %u, irc %u)", (unsigned)HUB_READ_LINE,
                 (unsigned)HUB_READ_IRC);
    printf("bench_hub clients=%u senders=%u lines=%" PRIu64 " irc_clients=%u size=%u %s history=%s\n",
           (unsigned)b.clients, (unsigned)b.senders, b.lines, (unsigned)b.irc_clients, (unsigned)b.size, reads,
           db ? "on" : "off");
    printf("  turns=%" PRIu64 " lines_in=%" PRIu64 " lines_per_turn=%.1f commits=%" PRIu64
           " hub_deliveries=%" PRIu64 " received=%" PRIu64 " expected=%" PRIu64 " other_lines=%" PRIu64
           " errors=%" PRIu64 "\n",
           turns, after.lines_in - before.lines_in, (double)(after.lines_in - before.lines_in) / (double)turns,
           after.commits - before.commits, after.deliveries - before.deliveries, got, expected, b.other_lines,
           b.errors);
    printf("  sends=%" PRIu64 " deliveries_per_send=%.1f spans_per_send=%.1f spans_per_delivery=%.3f"
           " bytes_per_delivery=%.1f bytes_per_send=%.0f sends_per_1k_deliveries=%.2f\n",
           sends, (double)got / (double)sends, (double)spans / (double)sends, (double)spans / (double)got,
           (double)bytes / (double)got, (double)bytes / (double)sends, 1000.0 * (double)sends / (double)got);
    for (int d = 0; d < 2; d++) {
        const dialect_counts *x = &b.by[d];
        if (!x->sends)
            continue;
        printf("  %s recipients: sends=%" PRIu64 " deliveries=%" PRIu64 " deliveries_per_send=%.1f"
               " spans_per_send=%.1f max_spans=%" PRIu64 " capped_sends=%" PRIu64 " bytes_per_delivery=%.1f\n",
               d ? "irc" : "line", x->sends, x->deliveries, (double)x->deliveries / (double)x->sends,
               (double)x->spans / (double)x->sends, x->max_spans, x->capped_sends,
               (double)x->bytes / (double)x->deliveries);
    }
    printf("  digest=%016" PRIx64 "\n", digest);

    hub_destroy(b.h);
    for (uint32_t i = 0; i < b.clients; i++) {
        free(b.c[i].spans);
        free(b.c[i].last_seq);
        free(b.c[i].stream);
        free(b.c[i].line_end);
    }
    free(b.c);
    msgbuf_pool_drain();
    if (db) {
        history_close(db);
        remove_db(db_path);
    }
    return got == expected && b.errors == 0 ? 0 : 1;
}

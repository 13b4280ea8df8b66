/* fuzz_input: libFuzzer target for everything that reads client bytes.
 *
 * One fuzz input is decoded into a fuzz_case (header bytes choose how often
 * the payload repeats, where the stream is cut into feeds and a small output
 * cap), then every stage in `stages` runs on it.  A stage checks invariants
 * and aborts on a violation, so libFuzzer reports it like a crash.
 *
 * Stages: text_clean on the raw bytes; framing + text_clean per line; and the
 * whole portable pipeline behind a socket (stage_hub: the hub with several
 * sessions, so framing, cleaning, command parsing, chat effects, delivery and
 * the send queues all see the fuzz input, checked at the bytes a client gets).
 * To fuzz a further layer, write `static void stage_x(const fuzz_case *fc)`,
 * add its sources to tests/fuzz/CMakeLists.txt and one row to `stages`.
 *
 * Input layout: [repeat] [ncuts] [ncuts x 2 bytes cut positions] [small cap] payload...
 * Each cut's high byte doubles as an "op" byte for stage_hub (which session the
 * next piece goes to, time passing, a reset, a stalled reader, a short send),
 * so libFuzzer steers the session events with the same bytes that place the cuts.
 */
#include "framing.h"
#include "hub.h"
#include "turn.h"
#include "outbuf.h"
#include "text.h"
#include "../unit/utf8_check.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *current_stage = "decode";

#define FUZZ_ASSERT(cond) do { \
    if (!(cond)) { \
        fprintf(stderr, "%s:%d: stage \"%s\": invariant broken: %s\n", __FILE__, __LINE__, current_stage, #cond); \
        abort(); \
    } \
} while (0)

#define MAX_STREAM 8192  /* payload x repeat is capped here: long enough for over-long lines, short enough for speed */
#define MAX_CUTS 16

typedef struct fuzz_case {
    const unsigned char *stream; /* the bytes a client sends */
    size_t len;
    size_t cuts[MAX_CUTS];       /* ascending positions in stream where one feed ends (may repeat) */
    unsigned char ops[MAX_CUTS]; /* the high byte of each cut as given, kept with its cut when sorted */
    size_t ncuts;
    size_t small_cap;            /* 1..32: an output capacity that truncates often */
} fuzz_case;

static unsigned char stream_buf[MAX_STREAM];

static int decode_case(const uint8_t *data, size_t size, fuzz_case *fc)
{
    static const size_t repeats[8] = { 1, 1, 1, 1, 1, 2, 5, 40 };
    size_t repeat, payload_len, i, j;
    const uint8_t *payload;

    if (size < 3) return 0;
    repeat = repeats[data[0] & 7];
    fc->ncuts = data[1] % (MAX_CUTS + 1);
    if (size < 3 + 2 * fc->ncuts) return 0;
    fc->small_cap = 1 + data[2 + 2 * fc->ncuts] % 32;
    payload = data + 3 + 2 * fc->ncuts;
    payload_len = size - 3 - 2 * fc->ncuts;
    if (payload_len == 0) return 0;
    if (payload_len > MAX_STREAM) payload_len = MAX_STREAM;
    if (repeat > MAX_STREAM / payload_len) repeat = MAX_STREAM / payload_len;

    fc->len = 0;
    for (i = 0; i < repeat; i++) {
        memcpy(stream_buf + fc->len, payload, payload_len);
        fc->len += payload_len;
    }
    fc->stream = stream_buf;

    for (i = 0; i < fc->ncuts; i++) {
        fc->cuts[i] = ((size_t)data[2 + 2 * i] << 8 | data[3 + 2 * i]) % (fc->len + 1);
        fc->ops[i] = data[2 + 2 * i];
    }
    for (i = 1; i < fc->ncuts; i++) /* insertion sort, at most 16 */
        for (j = i; j > 0 && fc->cuts[j - 1] > fc->cuts[j]; j--) {
            size_t t = fc->cuts[j];
            unsigned char op = fc->ops[j];
            fc->cuts[j] = fc->cuts[j - 1];
            fc->cuts[j - 1] = t;
            fc->ops[j] = fc->ops[j - 1];
            fc->ops[j - 1] = op;
        }
    return 1;
}

/* ---- shared checks -------------------------------------------------------- */


static size_t char_len(unsigned char lead)
{
    return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}

static char clean_full[3 * MAX_STREAM + 1];
static char clean_again[3 * MAX_STREAM + 1];
static char clean_capped[TEXT_MAX_LINE + 1];
static unsigned char with_forbidden[MAX_STREAM + 3];
static char clean_with[3 * (MAX_STREAM + 3) + 1];
static char clean_tail[3 * MAX_STREAM + 1];

/* Every well-formed character that must never survive is removed wherever it
 * stands: cleaning in[0..k) + X + in[k..n) gives clean(in[0..k)) followed by
 * clean(in[k..n)), since X ends any sequence left open before it and cleaning
 * starts afresh after it.  The fuzzer seldom builds these 3-byte characters by
 * itself (two minutes did not find U+202E left in), so one is put in: which one
 * and where, the input chooses. */
static void check_forbidden_removed(const unsigned char *in, size_t n, size_t k, size_t pick)
{
    static unsigned long forbidden[64];
    static size_t forbidden_count;
    unsigned long cp;
    size_t head_len, tail_len, len;
    int truncated = -1;

    if (forbidden_count == 0) /* the 3-byte ones, as utf8_check.h defines them */
        for (cp = 0x800; cp <= 0xFFFF && forbidden_count < 64; cp++)
            if (is_forbidden_code_point(cp))
                forbidden[forbidden_count++] = cp;
    FUZZ_ASSERT(forbidden_count > 0);
    cp = forbidden[pick % forbidden_count];

    head_len = text_clean((const char *)in, k, clean_again, 3 * k + 1, &truncated);
    tail_len = text_clean((const char *)in + k, n - k, clean_tail, 3 * (n - k) + 1, &truncated);
    memcpy(with_forbidden, in, k);
    with_forbidden[k] = (unsigned char)(0xE0 | (cp >> 12));
    with_forbidden[k + 1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    with_forbidden[k + 2] = (unsigned char)(0x80 | (cp & 0x3F));
    memcpy(with_forbidden + k + 3, in + k, n - k);
    len = text_clean((const char *)with_forbidden, n + 3, clean_with, sizeof clean_with, &truncated);
    FUZZ_ASSERT(is_clean_utf8((const unsigned char *)clean_with, len));
    FUZZ_ASSERT(len == head_len + tail_len);
    FUZZ_ASSERT(memcmp(clean_with, clean_again, head_len) == 0);
    FUZZ_ASSERT(memcmp(clean_with + head_len, clean_tail, tail_len) == 0);
}

/* Cleans in[0..n) with a roomy buffer, then with caps, and checks everything text.h promises. */
static void check_text_clean(const unsigned char *in, size_t n, size_t small_cap)
{
    size_t caps[2], c, full_len, len, k;
    int truncated = -1, blank;

    full_len = text_clean((const char *)in, n, clean_full, 3 * n + 1, &truncated);
    FUZZ_ASSERT(truncated == 0);                  /* one byte never grows past 3 */
    FUZZ_ASSERT(full_len <= 3 * n);
    FUZZ_ASSERT(clean_full[full_len] == 0);
    FUZZ_ASSERT(is_clean_utf8((const unsigned char *)clean_full, full_len));
    FUZZ_ASSERT(memchr(clean_full, 0xFF, full_len) == NULL);
    FUZZ_ASSERT(memchr(clean_full, 0x1B, full_len) == NULL);
    FUZZ_ASSERT(strlen(clean_full) == full_len);

    /* clean text is a fixed point */
    len = text_clean(clean_full, full_len, clean_again, full_len + 1, &truncated);
    FUZZ_ASSERT(truncated == 0 && len == full_len && memcmp(clean_again, clean_full, len) == 0);

    /* a capped result is the longest whole-character prefix that fits */
    caps[0] = sizeof clean_capped;
    caps[1] = small_cap;
    for (c = 0; c < 2; c++) {
        len = text_clean((const char *)in, n, clean_capped, caps[c], &truncated);
        FUZZ_ASSERT(len <= caps[c] - 1);
        FUZZ_ASSERT(clean_capped[len] == 0);
        FUZZ_ASSERT(len <= full_len && memcmp(clean_capped, clean_full, len) == 0);
        FUZZ_ASSERT(truncated == (len < full_len));
        if (truncated) FUZZ_ASSERT(len + char_len((unsigned char)clean_full[len]) > caps[c] - 1);
    }

    /* boundaries: never inside a character, never more than 3 bytes back
     * (every position of short texts; the ends and a sample of long ones) */
    for (k = 0; k <= full_len; k += (k < 64 || full_len - k < 64) ? 1 : 61) {
        size_t b = text_utf8_boundary(clean_full, k);
        int k_is_start = k == full_len || ((unsigned char)clean_full[k] & 0xC0) != 0x80;
        FUZZ_ASSERT(b <= k && k - b <= 3);
        FUZZ_ASSERT(b == full_len || ((unsigned char)clean_full[b] & 0xC0) != 0x80);
        if (k_is_start) FUZZ_ASSERT(b == k);
    }

    blank = 1;
    for (k = 0; k < full_len; k++)
        if (clean_full[k] != ' ' && clean_full[k] != '\t') blank = 0;
    FUZZ_ASSERT(text_is_blank(clean_full, full_len) == blank);

    /* small_cap is 1..32: it places the character; with n it picks which */
    check_forbidden_removed(in, n, n * (small_cap - 1) / 31, small_cap + n);
}

/* ---- stage: text_clean on the raw stream ----------------------------------- */

static void stage_clean_raw(const fuzz_case *fc)
{
    size_t n = fc->len;
    check_text_clean(fc->stream, n, fc->small_cap);
}

/* ---- stage: framing, then text_clean on every line ------------------------- */

typedef struct frame_run {
    uint64_t digest; /* FNV-1a over lines, flags and replies in the order they came */
    size_t lines, replies;
    int check_lines; /* run the (slower) cleaning checks on every line */
    size_t small_cap;
} frame_run;

static void digest_bytes(frame_run *r, const void *p, size_t n)
{
    const unsigned char *b = p;
    size_t i;
    for (i = 0; i < n; i++) {
        r->digest ^= b[i];
        r->digest *= 0x100000001b3u;
    }
}

static void on_line(void *ctx, const char *line, size_t len, unsigned flags)
{
    frame_run *r = ctx;
    const unsigned char *u = (const unsigned char *)line;
    size_t i;
    unsigned char header[5];

    FUZZ_ASSERT(len <= FRAMER_MAX_LINE);
    FUZZ_ASSERT((flags & ~(unsigned)FRAMER_LINE_TRUNCATED) == 0);
    /* cut back by at most one partial character (the line before the cut may
     * still end in an invalid sequence: raw bytes are not UTF-8 yet) */
    if (flags & FRAMER_LINE_TRUNCATED) FUZZ_ASSERT(len + 3 >= FRAMER_MAX_LINE);
    for (i = 0; i < len; i++)
        FUZZ_ASSERT(u[i] != '\r' && u[i] != '\n' && u[i] != 0x08 && u[i] != 0x7F);

    header[0] = 'L';
    header[1] = (unsigned char)flags;
    header[2] = (unsigned char)(len >> 8);
    header[3] = (unsigned char)len;
    header[4] = 0;
    digest_bytes(r, header, sizeof header);
    digest_bytes(r, line, len);
    r->lines++;

    if (r->check_lines) check_text_clean(u, len, r->small_cap);
}

static void on_reply(void *ctx, const unsigned char *bytes, size_t len)
{
    frame_run *r = ctx;
    FUZZ_ASSERT(len == 3);
    FUZZ_ASSERT(bytes[0] == 0xFF && (bytes[1] == 0xFC || bytes[1] == 0xFE)); /* only WONT and DONT */
    digest_bytes(r, "R", 1);
    digest_bytes(r, bytes, len);
    r->replies++;
}

static void frame_pieces(const fuzz_case *fc, const size_t *cuts, size_t ncuts, frame_run *r)
{
    framer f;
    size_t i, from = 0;
    framer_init(&f);
    for (i = 0; i < ncuts; i++) {
        framer_feed(&f, fc->stream + from, cuts[i] - from, on_line, on_reply, r);
        from = cuts[i];
    }
    framer_feed(&f, fc->stream + from, fc->len - from, on_line, on_reply, r);
}

static void stage_framing(const fuzz_case *fc)
{
    frame_run whole, split, bytewise;

    memset(&whole, 0, sizeof whole);
    whole.check_lines = 1;
    whole.small_cap = fc->small_cap;
    frame_pieces(fc, NULL, 0, &whole);

    /* the same stream cut anywhere must give the same lines and replies */
    memset(&split, 0, sizeof split);
    frame_pieces(fc, fc->cuts, fc->ncuts, &split);
    FUZZ_ASSERT(split.digest == whole.digest && split.lines == whole.lines && split.replies == whole.replies);

    if (fc->len <= 512) {
        framer f;
        size_t i;
        memset(&bytewise, 0, sizeof bytewise);
        framer_init(&f);
        for (i = 0; i < fc->len; i++) framer_feed(&f, fc->stream + i, 1, on_line, on_reply, &bytewise);
        FUZZ_ASSERT(bytewise.digest == whole.digest && bytewise.lines == whole.lines);
    }
}

/* ---- stage: the hub (framing + cleaning + commands + effects + delivery) -- */

/* The stage plays the Win32 shell (core/relay.c): it opens sessions, feeds
 * them the stream piece by piece, runs a turn after each piece, sends what the
 * hub queued (gather, then a completion, sometimes short), closes what the hub
 * asks to close, and reopens slots.  What each session would receive is
 * checked byte by byte: telnet replies (IAC WONT/DONT x) between lines, and
 * otherwise lines of clean UTF-8 (no control but TAB) each ended by CRLF. */

#define HUB_SLOTS 4
#define HUB_QUEUE_MAX 4096     /* the smallest --max-queue-bytes: slow consumers are common */
#define HUB_LINE_MAX 2048      /* longer than any server line (a 1024-byte text plus its prefix) */
#define HUB_SPANS 16

typedef struct client_view {
    int open;                  /* the shell has a session in this slot */
    int closing;               /* the hub asked to close it: closed at the end of the turn */
    const char *reason;
    size_t reply_len;          /* bytes of a telnet reply seen so far (0: not inside one) */
    unsigned char reply[3];
    size_t len;                /* bytes of the current line */
    unsigned char line[HUB_LINE_MAX + 2];
    size_t lines;
} client_view;

typedef struct send_in_flight {
    sendq_span spans[HUB_SPANS];  /* valid while in flight: the queue holds the buffers */
    size_t n, total;
} send_in_flight;

typedef struct hub_run {
    hub *h;
    client_view view[HUB_SLOTS];
    send_in_flight flight[HUB_SLOTS];
    int64_t now;
    int stalled[HUB_SLOTS];    /* this slot's reader does not read this turn: its send stays in flight */
    int short_send;            /* complete the next send short (half of it) */
} hub_run;

/* Shows the offending line before an invariant on it aborts. */
static void print_line(const char *what, const unsigned char *p, size_t n)
{
    size_t i;
    fprintf(stderr, "%s (%zu bytes): \"", what, n);
    for (i = 0; i < n; i++)
        if (p[i] >= 0x20 && p[i] < 0x7F && p[i] != '\\' && p[i] != '"') fputc(p[i], stderr);
        else fprintf(stderr, "\\x%02x", p[i]);
    fprintf(stderr, "\"\n");
}

/* Bytes slot's client received, in order. */
static void client_receive(client_view *v, const unsigned char *p, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (v->reply_len > 0) {
            v->reply[v->reply_len++] = c;
            if (v->reply_len == 3) {
                FUZZ_ASSERT(v->reply[1] == 0xFC || v->reply[1] == 0xFE); /* only WONT and DONT */
                v->reply_len = 0;
            }
            continue;
        }
        if (v->len == 0 && c == 0xFF) { /* 0xFF never occurs in UTF-8: a telnet reply, between lines */
            v->reply[0] = c;
            v->reply_len = 1;
            continue;
        }
        if (c == '\n') {
            if (v->len < 2 || v->line[v->len - 1] != '\r' || !is_clean_utf8(v->line, v->len - 1))
                print_line("a client received", v->line, v->len);
            FUZZ_ASSERT(v->len >= 2 && v->line[v->len - 1] == '\r'); /* CRLF, after a non-empty line */
            FUZZ_ASSERT(is_clean_utf8(v->line, v->len - 1));
            v->len = 0;
            v->lines++;
            continue;
        }
        FUZZ_ASSERT(v->len < sizeof v->line);
        v->line[v->len++] = c;
    }
}

/* Every queue within its hard bound (plus the slow-consumer notice); the hub's
 * session count and in-flight state agree with the shell's. */
static void check_queue_bounds(hub_run *r)
{
    uint32_t slot, open = 0;
    hub_stats st;
    hub_get_stats(r->h, &st);
    for (slot = 0; slot < HUB_SLOTS; slot++) open += r->view[slot].open ? 1u : 0u;
    FUZZ_ASSERT(st.sessions == open);
    for (slot = 0; slot < HUB_SLOTS; slot++) {
        const sendq *q = hub_sendq(r->h, slot);
        /* The hard bound on what a queue pins (4x max_queue_bytes; no query
         * or outage bursts here: no history), plus the slow-consumer notice's
         * buffer; and bytes never exceed what is pinned for them. */
        FUZZ_ASSERT(q->pinned <= 4 * HUB_QUEUE_MAX + sizeof(msgbuf) + 128 + sizeof(sendq_entry));
        FUZZ_ASSERT(q->bytes <= q->pinned);
        if (!r->view[slot].open) FUZZ_ASSERT(q->count == 0 && q->bytes == 0);
        FUZZ_ASSERT(sendq_in_flight(q) == (r->flight[slot].n > 0));
    }
}

/* WSASend: everything queued (up to HUB_SPANS pieces) goes in flight. */
static void send_start(hub_run *r, uint32_t slot)
{
    sendq *q = hub_sendq(r->h, slot);
    send_in_flight *f = &r->flight[slot];
    size_t i;
    FUZZ_ASSERT(f->n == 0);
    f->n = sendq_gather(q, f->spans, HUB_SPANS, 64 * 1024);
    f->total = 0;
    for (i = 0; i < f->n; i++) {
        FUZZ_ASSERT(f->spans[i].len > 0);
        f->total += f->spans[i].len;
    }
    FUZZ_ASSERT(sendq_in_flight(q) == (f->n > 0));
}

/* Its completion routine: `sent` of the bytes reached the client (0: cancelled). */
static void send_complete(hub_run *r, uint32_t slot, size_t sent)
{
    send_in_flight *f = &r->flight[slot];
    size_t i, left = sent;
    FUZZ_ASSERT(f->n > 0 && sent <= f->total);
    for (i = 0; i < f->n && left > 0; i++) {
        size_t k = f->spans[i].len < left ? f->spans[i].len : left;
        client_receive(&r->view[slot], (const unsigned char *)f->spans[i].ptr, k);
        left -= k;
    }
    f->n = 0;
    hub_session_sent(r->h, slot, sent);
    FUZZ_ASSERT(!sendq_in_flight(hub_sendq(r->h, slot)));
}

/* A send that is not held up by a stalled reader completes at once, sometimes short. */
static void send_now(hub_run *r, uint32_t slot)
{
    send_start(r, slot);
    if (r->flight[slot].n == 0 || r->stalled[slot]) return;
    if (r->short_send && r->flight[slot].total > 1) {
        r->short_send = 0;
        send_complete(r, slot, r->flight[slot].total / 2);
    } else {
        send_complete(r, slot, r->flight[slot].total);
    }
}

static void open_slot(hub_run *r, uint32_t slot)
{
    client_view *v = &r->view[slot];
    FUZZ_ASSERT(hub_admit(r->h, "192.0.2.7", 1) == NULL); /* --max-per-ip 0 */
    memset(v, 0, sizeof *v);
    v->open = 1;
    hub_session_open(r->h, slot, "192.0.2.7", HUB_LISTEN_LINE, r->now);
    FUZZ_ASSERT(hub_session_conn_id(r->h, slot) != 0);
}

/* relay.c's reap: a send still in flight is cancelled first (its routine reports 0 bytes). */
static void close_slot(hub_run *r, uint32_t slot, const char *reason)
{
    if (r->flight[slot].n > 0) send_complete(r, slot, 0);
    r->view[slot].open = 0;
    r->view[slot].closing = 0;
    hub_session_closed(r->h, slot, reason);
    FUZZ_ASSERT(hub_session_conn_id(r->h, slot) == 0);
    hub_session_closed(r->h, slot, reason); /* idempotent */
}

/* The shell's side of a turn; core/turn.c runs the steps in the product's
 * order.  Completions: sends not held up by a stalled reader complete.  A
 * session asked to close lingers to the next turn's reap, as relay.c's do:
 * then its last bytes go out unless its reader is stalled (the linger ends,
 * the send is cancelled), and it goes away. */
static void fz_completions(void *ctx)
{
    hub_run *r = ctx;
    uint32_t slot;
    for (slot = 0; slot < HUB_SLOTS; slot++)
        if (r->flight[slot].n > 0 && !r->stalled[slot]) send_complete(r, slot, r->flight[slot].total);
    check_queue_bounds(r);
}

static int64_t fz_now(void *ctx)
{
    return ((hub_run *)ctx)->now;
}

static void fz_begin_close(void *ctx, uint32_t slot, const char *reason)
{
    hub_run *r = ctx;
    FUZZ_ASSERT(slot < HUB_SLOTS && r->view[slot].open);
    FUZZ_ASSERT(reason != NULL && reason[0] != '\0');
    r->view[slot].closing = 1;
    r->view[slot].reason = reason;
}

static void fz_reap(void *ctx, int64_t now)
{
    hub_run *r = ctx;
    uint32_t slot;
    (void)now;
    for (slot = 0; slot < HUB_SLOTS; slot++)
        if (r->view[slot].open && r->view[slot].closing) {
            while (!r->stalled[slot] && r->flight[slot].n == 0 && sendq_has_unsent(hub_sendq(r->h, slot)))
                send_now(r, slot);
            close_slot(r, slot, r->view[slot].reason); /* the hub's own copy of the reason, as relay.c passes it */
        }
    check_queue_bounds(r);
}

static void fz_flush(void *ctx, uint32_t slot)
{
    hub_run *r = ctx;
    FUZZ_ASSERT(slot < HUB_SLOTS);
    if (r->view[slot].open && r->flight[slot].n == 0) send_now(r, slot);
}

static void shell_turn(hub_run *r)
{
    const turn_shell shell = { r, fz_completions, fz_now, fz_begin_close, fz_reap, fz_flush };
    int wait = turn_run(r->h, &shell, NULL);
    FUZZ_ASSERT(wait >= -1);
    check_queue_bounds(r);
}

static void stage_hub(const fuzz_case *fc)
{
    hub_config cfg;
    hub_run r;
    hub_stats st;
    size_t piece, from = 0;
    uint32_t slot;

    memset(&cfg, 0, sizeof cfg);
    cfg.chat.server_name = "fuzz.example.org";
    cfg.chat.replay = 5;               /* with no history: the "switched off" notice */
    cfg.chat.flood_burst = 10;
    cfg.chat.flood_rate = 5;
    cfg.chat.flood_kick = 20;
    cfg.chat.log_private = (int)(fc->small_cap & 1);
    cfg.max_sessions = HUB_SLOTS;
    cfg.max_queue_bytes = HUB_QUEUE_MAX;
    cfg.max_per_ip = 0;
    cfg.idle_timeout_ms = 3000;
    cfg.history = NULL;
    cfg.pending_max_lines = 10000;
    cfg.pending_max_bytes = 8u << 20;
    cfg.pending_max_ms = 5000;

    memset(&r, 0, sizeof r);
    r.h = hub_create(&cfg);
    FUZZ_ASSERT(r.h != NULL);
    r.now = 1000000;
    for (slot = 0; slot < 3; slot++) open_slot(&r, slot);
    shell_turn(&r);

    /* piece k (the bytes before cut k, or the rest) goes to the slot its op names */
    for (piece = 0; piece <= fc->ncuts; piece++) {
        size_t to = piece < fc->ncuts ? fc->cuts[piece] : fc->len;
        unsigned op = piece < fc->ncuts ? fc->ops[piece] : (unsigned)fc->small_cap;
        slot = op % HUB_SLOTS;
        r.now += (op & 0x0C) == 0x0C ? 3500 : (int64_t)((op >> 2) & 3) * 150; /* sometimes past the idle timeout */
        for (uint32_t s = 0; s < HUB_SLOTS; s++) r.stalled[s] = 0;
        r.stalled[(slot + 1) % HUB_SLOTS] = (op & 0x30) == 0x30;
        r.short_send = (op & 0x40) != 0;
        if ((op & 0xC0) == 0xC0 && r.view[slot].open && !r.view[slot].closing)
            close_slot(&r, slot, "connection lost");     /* the peer reset: the slot is reused below */
        if (!r.view[slot].open) open_slot(&r, slot);
        hub_session_input(r.h, slot, fc->stream + from, to - from, r.now);
        check_queue_bounds(&r);
        shell_turn(&r);
        from = to;
    }

    /* Quiet: readers catch up; then the service stops. */
    for (slot = 0; slot < HUB_SLOTS; slot++) r.stalled[slot] = 0;
    r.now += 100;
    shell_turn(&r);
    if (fc->small_cap & 2) {
        hub_stopping(r.h, r.now);
        shell_turn(&r);
    }
    for (slot = 0; slot < HUB_SLOTS; slot++) {
        while (r.view[slot].open && sendq_has_unsent(hub_sendq(r.h, slot))) send_now(&r, slot);
        if (r.view[slot].open) {
            FUZZ_ASSERT(r.view[slot].len == 0 && r.view[slot].reply_len == 0); /* everything ended cleanly */
            FUZZ_ASSERT(r.view[slot].lines >= 4);                             /* at least the greeting */
        }
    }
    for (slot = 0; slot < HUB_SLOTS; slot++)
        if (r.view[slot].open) close_slot(&r, slot, "server stopping");
    hub_turn(r.h, r.now);
    hub_get_stats(r.h, &st);
    FUZZ_ASSERT(st.sessions == 0);
    hub_destroy(r.h);
    msgbuf_pool_drain();
}

/* ---- driver --------------------------------------------------------------- */

typedef void (*fuzz_stage)(const fuzz_case *fc);

static const struct {
    const char *name;
    fuzz_stage run;
} stages[] = {
    { "text_clean on raw bytes", stage_clean_raw },
    { "framing + text_clean per line", stage_framing },
    { "hub: sessions, commands, delivery", stage_hub },
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_case fc;
    size_t i;
    if (!decode_case(data, size, &fc)) return 0;
    for (i = 0; i < sizeof stages / sizeof stages[0]; i++) {
        current_stage = stages[i].name;
        stages[i].run(&fc);
    }
    return 0;
}

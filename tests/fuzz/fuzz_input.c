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
 * the send queues all see the fuzz input, checked at the bytes a client gets,
 * with a history (tests/fuzz/stub_history.c) that is busy, failing or refusing
 * records as the input says, checked against what it stored).
 * To fuzz a further layer, write `static void stage_x(const fuzz_case *fc)`,
 * add its sources to tests/fuzz/CMakeLists.txt and one row to `stages`.
 *
 * Input layout: [flags] [ncuts] [ncuts x 2 bytes cut positions] [small cap]
 *               ([script length] [script], if flags say so) payload...
 * flags: bits 0-2 how often the payload repeats; the rest is for stage_hub:
 * bit 3 no history (--no-history), bit 4 a database script follows the small
 * cap (tests/fuzz/stub_history.h says what its bytes do), bits 5-6 which
 * outage bounds apply, bit 7 retention on.
 * Each cut's high byte doubles as an "op" byte for stage_hub (which session the
 * next piece goes to, time passing, a reset, a stalled reader, a short send),
 * so libFuzzer steers the session events with the same bytes that place the cuts.
 */
#include "framing.h"
#include "hub.h"
#include "log.h"
#include "turn.h"
#include "outbuf.h"
#include "text.h"
#include "stub_history.h"
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

/* fuzz_case.flags (the first byte without its repeat bits) */
#define CASE_NO_HISTORY 0x01
#define CASE_SCRIPT 0x02
#define CASE_RETENTION 0x10

typedef struct fuzz_case {
    const unsigned char *stream; /* the bytes a client sends */
    size_t len;
    size_t cuts[MAX_CUTS];       /* ascending positions in stream where one feed ends (may repeat) */
    unsigned char ops[MAX_CUTS]; /* the high byte of each cut as given, kept with its cut when sorted */
    size_t ncuts;
    size_t small_cap;            /* 1..32: an output capacity that truncates often */
    unsigned flags;              /* CASE_*; bits 2-3: the outage bounds */
    const unsigned char *script; /* the stub history's script (stub_history.h) */
    size_t script_len;
} fuzz_case;

static unsigned char stream_buf[MAX_STREAM];

static int decode_case(const uint8_t *data, size_t size, fuzz_case *fc)
{
    static const size_t repeats[8] = { 1, 1, 1, 1, 1, 2, 5, 40 };
    size_t repeat, payload_len, i, j;
    const uint8_t *payload;

    if (size < 3) return 0;
    repeat = repeats[data[0] & 7];
    fc->flags = data[0] >> 3;
    fc->ncuts = data[1] % (MAX_CUTS + 1);
    if (size < 3 + 2 * fc->ncuts) return 0;
    fc->small_cap = 1 + data[2 + 2 * fc->ncuts] % 32;
    payload = data + 3 + 2 * fc->ncuts;
    payload_len = size - 3 - 2 * fc->ncuts;
    fc->script = NULL;
    fc->script_len = 0;
    if (fc->flags & CASE_SCRIPT) {
        if (payload_len == 0 || payload_len - 1 < payload[0]) return 0;
        fc->script = payload + 1;
        fc->script_len = payload[0];
        payload_len -= 1 + fc->script_len;
        payload += 1 + fc->script_len;
    }
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

    FUZZ_ASSERT(len <= TEXT_MAX_LINE);
    FUZZ_ASSERT((flags & ~(unsigned)FRAMER_LINE_TRUNCATED) == 0);
    /* cut back by at most one partial character (the line before the cut may
     * still end in an invalid sequence: raw bytes are not UTF-8 yet) */
    if (flags & FRAMER_LINE_TRUNCATED) FUZZ_ASSERT(len + 3 >= TEXT_MAX_LINE);
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
 * them the stream piece by piece, runs a turn after each piece (and one
 * more, with hub_idle, when the hub's wait would have timed out first),
 * sends what the hub queued (gather, then a completion, sometimes short),
 * closes what the hub asks to close, and reopens slots.  The history is
 * tests/fuzz/stub_history.c, busy, failing or refusing records as the input's
 * script says (or none at all: --no-history).  What each session would
 * receive is checked byte by byte: telnet replies (IAC WONT/DONT x) between
 * lines, and otherwise lines of clean UTF-8 (no control but TAB) each ended
 * by CRLF; and line by line against the guarantees of docs/ARCHITECTURE.md:
 *   - store-then-forward: a line in the form of a stored record (chat, action,
 *     join, leave, nick, and private messages with --log-private) reaches a
 *     session only after a commit stored such a record, and no more often
 *     than such records were stored; a replayed or found line was stored;
 *   - no echo: a chat line or action never reaches the session that said it;
 *   - slot reuse: a line said before a session connected never reaches it
 *     (live; its replay is history), private messages included;
 *   - /quit: nothing a session sent after its /quit is stored or delivered.
 * The last three need to know who said what: the stage keeps its own framer
 * per session (framing.h, text.h: the same cleaning the hub applies) and
 * records every cleaned line with its connection and when it came.  A body
 * is matched to the lines that contain it, which is never fewer than the
 * line that really said it, so a check only fires when no line at all could
 * have said it legitimately. */

#define HUB_SLOTS 4
#define HUB_QUEUE_MAX 4096     /* the smallest --max-queue-bytes: slow consumers are common */
#define HUB_LINE_MAX 2048      /* longer than any server line (a 1024-byte text plus its prefix) */
#define HUB_SPANS 16
#define FORM_MAX (2 * TEXT_MAX_LINE + 256) /* a record's line: nick, room, body and the words between */

typedef struct client_view {
    int open;                  /* the shell has a session in this slot */
    int closing;               /* the hub asked to close it: closed at the end of the turn */
    const char *reason;
    uint32_t conn;             /* hub_session_conn_id when it opened */
    uint32_t open_seq;         /* the stage's clock (hub_run.seq) when it opened */
    size_t piece_first;        /* the first of said[] that its latest input made */
    size_t reply_len;          /* bytes of a telnet reply seen so far (0: not inside one) */
    unsigned char reply[3];
    size_t len;                /* bytes of the current line */
    unsigned char line[HUB_LINE_MAX + 2];
    size_t lines;
    int irc;                   /* its first line was IRC (the hub detected the dialect) */
    int said_any;              /* it sent a line; said_irc: its first was IRC registration */
    int said_irc;
} client_view;

typedef struct send_in_flight {
    sendq_span spans[HUB_SPANS];  /* valid while in flight: the queue holds the buffers */
    size_t n, total;
} send_in_flight;

/* A cleaned line a session sent, as the stage's own framer saw it. */
typedef struct said_line {
    size_t off, len;           /* in hub_run.said_text */
    uint32_t conn, seq;
    int dead;                  /* sent after the session's accepted /quit */
} said_line;

/* A line a stored record shows as, with how often it was stored and how
 * often each session (slot, conn) received it. */
typedef struct form_entry {
    char *key;                 /* NULL: a free cell */
    size_t len;
    uint64_t hash;
    uint32_t stored;
    uint32_t recv_conn[HUB_SLOTS], recv[HUB_SLOTS];
} form_entry;

typedef struct hub_run {
    hub *h;
    int with_history;
    int log_private;
    client_view view[HUB_SLOTS];
    send_in_flight flight[HUB_SLOTS];
    int64_t now;
    int wait;                  /* what the last turn asked for (-1: nothing) */
    int stalled[HUB_SLOTS];    /* this slot's reader does not read this turn: its send stays in flight */
    int short_send;            /* complete the next send short (half of it) */
    size_t pinned_max;         /* check_queue_bounds' bound while the database never failed */

    uint32_t seq;              /* ticks at every open and every input */
    framer shadow[HUB_SLOTS];
    uint32_t shadow_slot;
    said_line *said;
    size_t nsaid, said_cap;
    char *said_text;
    size_t said_text_len, said_text_cap;

    form_entry *forms;         /* open addressing, capacity a power of two */
    size_t forms_cap, forms_n;
    size_t synced;             /* stored records already in forms */
} hub_run;

static void *grow(void *p, size_t *cap, size_t need, size_t elem)
{
    size_t ncap = *cap ? *cap : 64;
    while (ncap < need) ncap *= 2;
    if (ncap == *cap) return p;
    p = realloc(p, ncap * elem);
    FUZZ_ASSERT(p != NULL);
    *cap = ncap;
    return p;
}

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

/* ---- who said what: the stage's own framer per session ---- */

static void shadow_line(void *ctx, const char *line, size_t len, unsigned flags)
{
    hub_run *r = ctx;
    char clean[TEXT_MAX_LINE + 1];
    int cut = 0;
    size_t n = text_clean(line, len, clean, sizeof clean, &cut);
    said_line *s;
    (void)flags;
    if (n == 0) return;
    r->said = grow(r->said, &r->said_cap, r->nsaid + 1, sizeof *r->said);
    r->said_text = grow(r->said_text, &r->said_text_cap, r->said_text_len + n, 1);
    client_view *v = &r->view[r->shadow_slot];
    if (!v->said_any) {
        v->said_any = 1;
        v->said_irc = chat_irc_first_line(clean, n);
    }
    s = &r->said[r->nsaid++];
    s->off = r->said_text_len;
    s->len = n;
    s->conn = r->view[r->shadow_slot].conn;
    s->seq = r->seq;
    s->dead = 0;
    memcpy(r->said_text + r->said_text_len, clean, n);
    r->said_text_len += n;
}

static void shadow_reply(void *ctx, const unsigned char *bytes, size_t len)
{
    (void)ctx; (void)bytes; (void)len;
}

static int contains(const char *p, size_t n, const unsigned char *what, size_t w)
{
    size_t i;
    if (w == 0) return 1;
    for (i = 0; i + w <= n; i++) {
        const char *c = memchr(p + i, what[0], n - w + 1 - i);
        if (!c) return 0;
        i = (size_t)(c - p);
        if (memcmp(c, what, w) == 0) return 1;
    }
    return 0;
}

/* A line that can be a /quit: "/quit" first, in any case (docs/PROTOCOL.md:
 * the command word is case-insensitive).  Never fewer lines than chat takes
 * for one: "/quitter" counts too. */
static int could_be_quit(const char *p, size_t n)
{
    static const char word[] = "/quit";
    size_t k;
    /* IRC's QUIT (after an optional "@tags " and ":source "), any case */
    const char *q = p;
    size_t m = n;
    for (int skip = 0; skip < 2 && m > 0 && (*q == '@' || *q == ':'); skip++) {
        while (m > 0 && *q != ' ') q++, m--;
        while (m > 0 && *q == ' ') q++, m--;
    }
    while (m > 0 && *q == ' ') q++, m--;
    if (m >= 4 && (q[0] | 0x20) == 'q' && (q[1] | 0x20) == 'u' && (q[2] | 0x20) == 'i' && (q[3] | 0x20) == 't')
        return 1;
    if (n < sizeof word - 1) return 0;
    for (k = 0; k < sizeof word - 1; k++)
        if ((p[k] | 0x20) != (word[k] | 0x20)) return 0;
    return 1;
}

/* The hub closed slot for its /quit (or IRC QUIT): the quit was one of the
 * lines the connection sent.  Every line after the last one that could be a
 * quit was sent after the quit. */
static void mark_after_quit(hub_run *r, uint32_t slot)
{
    client_view *v = &r->view[slot];
    size_t i, last = SIZE_MAX;
    /* Not only the latest input: a quit waits behind the session's own
     * pending output (an echo, a reply held behind one), so its close can
     * come turns later. */
    for (i = 0; i < r->nsaid; i++)
        if (r->said[i].conn == v->conn && could_be_quit(r->said_text + r->said[i].off, r->said[i].len))
            last = i;
    FUZZ_ASSERT(last != SIZE_MAX); /* closed for a /quit it never sent */
    for (i = last + 1; i < r->nsaid; i++)
        if (r->said[i].conn == v->conn) r->said[i].dead = 1;
}

/* body (a chat line's text, an action, a private message) reached the
 * session in slot, or was stored (slot UINT32_MAX).  Some line that contains
 * it must have said it: not after its sender's /quit, and for a delivery
 * also after the receiver connected and (no echo) from another session. */
static void check_said(hub_run *r, uint32_t slot, const unsigned char *body, size_t n,
                       const unsigned char *line, size_t line_len)
{
    const client_view *v = slot == UINT32_MAX ? NULL : &r->view[slot];
    int any = 0, live = 0, after_open = 0;
    size_t i;
    for (i = 0; i < r->nsaid; i++) {
        const said_line *s = &r->said[i];
        if (s->len < n || !contains(r->said_text + s->off, s->len, body, n)) continue;
        any = 1;
        if (s->dead) continue;
        live = 1;
        if (!v) return;
        if (s->seq <= v->open_seq) continue;
        after_open = 1;
        if (s->conn != v->conn) return;
    }
    print_line(v ? "a session received" : "the history stored", line, line_len);
    if (v) fprintf(stderr, "by slot %u, connection %u\n", (unsigned)slot, (unsigned)v->conn);
    FUZZ_ASSERT(any);        /* no session sent that text */
    FUZZ_ASSERT(live);       /* /quit: only lines sent after their sender's /quit contain it */
    FUZZ_ASSERT(after_open); /* slot reuse: said before this session connected */
    FUZZ_ASSERT(!"no echo: only this session said it");
}

/* ---- what was stored: the lines records show as ---- */

static uint64_t hash_bytes(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint64_t x = 0xcbf29ce484222325u;
    size_t i;
    for (i = 0; i < n; i++) {
        x ^= b[i];
        x *= 0x100000001b3u;
    }
    return x;
}

static form_entry *form_find(hub_run *r, const char *key, size_t n, int create)
{
    uint64_t hash = hash_bytes(key, n);
    size_t i;
    if (create && 2 * (r->forms_n + 1) > r->forms_cap) {
        form_entry *old = r->forms;
        size_t old_cap = r->forms_cap, ncap = old_cap ? 2 * old_cap : 256;
        r->forms = calloc(ncap, sizeof *r->forms);
        FUZZ_ASSERT(r->forms != NULL);
        r->forms_cap = ncap;
        for (i = 0; i < old_cap; i++)
            if (old[i].key) {
                size_t k = old[i].hash & (ncap - 1);
                while (r->forms[k].key) k = (k + 1) & (ncap - 1);
                r->forms[k] = old[i];
            }
        free(old);
    }
    if (r->forms_cap == 0) return NULL;
    for (i = hash & (r->forms_cap - 1); r->forms[i].key; i = (i + 1) & (r->forms_cap - 1))
        if (r->forms[i].hash == hash && r->forms[i].len == n && memcmp(r->forms[i].key, key, n) == 0)
            return &r->forms[i];
    if (!create) return NULL;
    r->forms[i].key = malloc(n ? n : 1);
    FUZZ_ASSERT(r->forms[i].key != NULL);
    memcpy(r->forms[i].key, key, n);
    r->forms[i].len = n;
    r->forms[i].hash = hash;
    r->forms_n++;
    return &r->forms[i];
}

static int is_name_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

/* Length of the nick or room name at p (1-32 of [A-Za-z0-9_-]), 0 if none is. */
static size_t name_at(const unsigned char *p, size_t n)
{
    size_t i = 0;
    while (i < n && i <= 32 && is_name_char(p[i])) i++;
    return i >= 1 && i <= 32 ? i : 0;
}

/* A private message's stored body, "to NICK: text": the offset of text. */
static size_t msg_text_at(const char *body, size_t n)
{
    size_t k;
    FUZZ_ASSERT(n > 3 && memcmp(body, "to ", 3) == 0);
    k = name_at((const unsigned char *)body + 3, n - 3);
    FUZZ_ASSERT(k > 0 && n >= 3 + k + 2 && memcmp(body + 3 + k, ": ", 2) == 0);
    return 3 + k + 2;
}

static size_t put(char *out, size_t at, const char *s, size_t n)
{
    FUZZ_ASSERT(at + n <= FORM_MAX);
    memcpy(out + at, s, n);
    return at + n;
}

/* The line a stored record is shown as live (chat.h's wire forms). */
static size_t record_form(const history_record *rec, char *out)
{
    size_t n = 0, nl = strlen(rec->nick), rl = strlen(rec->room), t;
    switch (rec->kind) {
    case HISTORY_SAY:
        n = put(out, n, "<", 1); n = put(out, n, rec->nick, nl); n = put(out, n, "> ", 2);
        return put(out, n, rec->body, rec->body_len);
    case HISTORY_ME:
        n = put(out, n, "* ", 2); n = put(out, n, rec->nick, nl); n = put(out, n, " ", 1);
        return put(out, n, rec->body, rec->body_len);
    case HISTORY_MSG:
        t = msg_text_at(rec->body, rec->body_len);
        n = put(out, n, "*", 1); n = put(out, n, rec->nick, nl); n = put(out, n, "* ", 2);
        return put(out, n, rec->body + t, rec->body_len - t);
    case HISTORY_JOIN:
        n = put(out, n, "*** ", 4); n = put(out, n, rec->nick, nl); n = put(out, n, " joined ", 8);
        return put(out, n, rec->room, rl);
    case HISTORY_LEAVE:
        n = put(out, n, "*** ", 4); n = put(out, n, rec->nick, nl); n = put(out, n, " left ", 6);
        n = put(out, n, rec->room, rl);
        if (rec->body_len == 0) return n;
        n = put(out, n, " (", 2); n = put(out, n, rec->body, rec->body_len);
        return put(out, n, ")", 1);
    case HISTORY_NICK:
        n = put(out, n, "*** ", 4); n = put(out, n, rec->nick, nl); n = put(out, n, " is now known as ", 17);
        return put(out, n, rec->body, rec->body_len);
    case HISTORY_TOPIC:
        n = put(out, n, "*** ", 4); n = put(out, n, rec->nick, nl);
        if (rec->body_len == 0) {
            n = put(out, n, " cleared the topic of ", 22);
            return put(out, n, rec->room, rl);
        }
        n = put(out, n, " set the topic of ", 18); n = put(out, n, rec->room, rl); n = put(out, n, ": ", 2);
        return put(out, n, rec->body, rec->body_len);
    default:
        FUZZ_ASSERT(!"the hub stored a record of no kind");
        return 0;
    }
}

/* Takes in what the stub's commits stored since the last call: their lines
 * may now be delivered; and what a user said was stored only if it was
 * said before its sender's /quit. */
static void sync_stored(hub_run *r)
{
    static char form[FORM_MAX];
    size_t n = stub_history_committed();
    if (!r->with_history) return;
    for (; r->synced < n; r->synced++) {
        const history_record *rec = stub_history_record(r->synced);
        size_t len = record_form(rec, form), t = 0;
        form_find(r, form, len, 1)->stored++;
        if (rec->kind == HISTORY_SAY || rec->kind == HISTORY_ME || rec->kind == HISTORY_MSG) {
            if (rec->kind == HISTORY_MSG) t = msg_text_at(rec->body, rec->body_len);
            check_said(r, UINT32_MAX, (const unsigned char *)rec->body + t, rec->body_len - t,
                       (const unsigned char *)form, len);
        }
    }
}

/* ---- what a session receives ---- */

enum { LINE_OTHER, LINE_SAY, LINE_ME, LINE_MSG, LINE_NOTICE, LINE_HISTORY };

/* Which of chat.h's wire forms line is; *body: where a say/me/msg text starts. */
static int classify(const unsigned char *p, size_t n, size_t *body)
{
    size_t k;
    if (n >= 1 && p[0] == '<') {
        k = name_at(p + 1, n - 1);
        FUZZ_ASSERT(k > 0 && n >= k + 3 && p[1 + k] == '>' && p[2 + k] == ' '); /* "<nick> text" */
        *body = k + 3;
        return LINE_SAY;
    }
    if (n >= 2 && p[0] == '*' && p[1] == ' ') {
        k = name_at(p + 2, n - 2);
        FUZZ_ASSERT(k > 0 && n >= k + 3 && p[2 + k] == ' '); /* "* nick text" */
        *body = k + 3;
        return LINE_ME;
    }
    if (n >= 2 && p[0] == '*' && p[1] != '*') {
        k = name_at(p + 1, n - 1);
        FUZZ_ASSERT(k > 0 && n >= k + 3 && p[1 + k] == '*' && p[2 + k] == ' '); /* "*nick* text" */
        *body = k + 3;
        return LINE_MSG;
    }
    if (n >= 5 && memcmp(p, "*** [", 5) == 0) {
        FUZZ_ASSERT(n > 26 && p[24] == ']' && p[25] == ' '); /* "*** [YYYY-MM-DD HH:MM:SS] form" */
        return LINE_HISTORY;
    }
    if (n < 4 || memcmp(p, "*** ", 4) != 0 || (k = name_at(p + 4, n - 4)) == 0) return LINE_OTHER;
    p += 4 + k;
    n -= 4 + k;
    if (n > 8 && memcmp(p, " joined ", 8) == 0 && name_at(p + 8, n - 8) == n - 8) return LINE_NOTICE;
    if (n > 17 && memcmp(p, " is now known as ", 17) == 0 && name_at(p + 17, n - 17) == n - 17)
        return LINE_NOTICE;
    if (n > 6 && memcmp(p, " left ", 6) == 0) {
        k = name_at(p + 6, n - 6);
        if (k > 0 && (k == n - 6 || (n > 6 + k + 3 && memcmp(p + 6 + k, " (", 2) == 0 && p[n - 1] == ')')))
            return LINE_NOTICE;
    }
    return LINE_OTHER;
}

static int show_lines; /* CHATRELAY_FUZZ_LOG: every line a session receives goes to stderr too */

/* One whole line (without CRLF) reached the session in slot. */
/* An IRC session's line: one protocol line (no CR, LF or NUL: client_receive
 * split it), IRC's 512 bytes with CRLF once its tags are set aside, and the
 * only control the CTCP delimiter. */
static void check_irc_line(const unsigned char *p, size_t n)
{
    size_t tags = 0;
    if (n > 0 && p[0] == '@') {
        while (tags < n && p[tags] != ' ') tags++;
        tags++;
    }
    if (n - (tags < n ? tags : n) > 510) print_line("an IRC line over 512 bytes", p, n);
    FUZZ_ASSERT(n - (tags < n ? tags : n) <= 510);
    FUZZ_ASSERT(n > 0 && p[0] != ' ');
}

static void check_received(hub_run *r, uint32_t slot, const unsigned char *p, size_t n)
{
    static char key[FORM_MAX];
    client_view *v = &r->view[slot];
    size_t body = 0;
    int kind;
    form_entry *f;

    if (show_lines) {
        fprintf(stderr, "slot %u, connection %u: ", (unsigned)slot, (unsigned)v->conn);
        print_line("received", p, n);
    }
    if (v->lines == 0)
        v->irc = n > 0 && p[0] != '*';   /* a line client's first line is "*** Welcome to ..." */
    if (v->irc) {
        check_irc_line(p, n);
        return;
    }
    kind = classify(p, n, &body);
    sync_stored(r);
    if (kind == LINE_SAY || kind == LINE_ME || kind == LINE_MSG)
        check_said(r, slot, p + body, n - body, p, n);
    if (!r->with_history || kind == LINE_OTHER || (kind == LINE_MSG && !r->log_private)) return;
    if (kind == LINE_HISTORY) {
        /* a replayed or found row shows a stored record, as it was shown live */
        size_t k = 0;
        if (p[26] != '<' && !(p[26] == '*' && n > 27 && p[27] == ' ')) k = put(key, 0, "*** ", 4);
        k = put(key, k, (const char *)p + 26, n - 26);
        if (!form_find(r, key, k, 0)) print_line("a session was replayed", p, n);
        FUZZ_ASSERT(form_find(r, key, k, 0) != NULL);
        return;
    }
    f = form_find(r, (const char *)p, n, 0);
    if (f && f->recv_conn[slot] != v->conn) {
        f->recv_conn[slot] = v->conn;
        f->recv[slot] = 0;
    }
    if (!f || f->recv[slot] >= f->stored) {
        print_line("a session received", p, n);
        fprintf(stderr, "stored %u time(s), received before by this session %u time(s)\n",
                f ? (unsigned)f->stored : 0u, f ? (unsigned)f->recv[slot] : 0u);
    }
    FUZZ_ASSERT(f != NULL);                 /* store-then-forward: delivered, never stored */
    FUZZ_ASSERT(f->recv[slot] < f->stored); /* delivered more often than stored */
    f->recv[slot]++;
}

/* Bytes slot's client received, in order. */
static void client_receive(hub_run *r, uint32_t slot, const unsigned char *p, size_t n)
{
    client_view *v = &r->view[slot];
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
            /* IRC's CTCP delimiter is the one control an IRC session may receive */
            int irc = v->lines == 0 ? v->len > 0 && v->line[0] != '*' : v->irc;
            static unsigned char plain[HUB_LINE_MAX + 2];
            memcpy(plain, v->line, v->len);
            for (size_t k = 0; irc && k < v->len; k++)
                if (plain[k] == 1) plain[k] = 'x';
            if (v->len < 2 || v->line[v->len - 1] != '\r' || !is_clean_utf8(plain, v->len - 1))
                print_line("a client received", v->line, v->len);
            FUZZ_ASSERT(v->len >= 2 && v->line[v->len - 1] == '\r'); /* CRLF, after a non-empty line */
            FUZZ_ASSERT(is_clean_utf8(plain, v->len - 1));
            check_received(r, slot, v->line, v->len - 1);
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
    stub_history_stats db;
    int bounded = 1;
    hub_get_stats(r->h, &st);
    for (slot = 0; slot < HUB_SLOTS; slot++) open += r->view[slot].open ? 1u : 0u;
    FUZZ_ASSERT(st.sessions == open);
    /* Lines held through an outage go out as a backlog that the hard bound
     * does not judge (ARCHITECTURE.md, "Store-then-forward"), and unstored
     * private messages wait in it with no bound of their own: once a commit
     * failed, only the accounting is checked. */
    if (r->with_history) {
        stub_history_get_stats(&db);
        bounded = db.failures == 0;
    }
    for (slot = 0; slot < HUB_SLOTS; slot++) {
        const sendq *q = hub_sendq(r->h, slot);
        if (bounded) FUZZ_ASSERT(q->pinned <= r->pinned_max);
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
        client_receive(r, slot, (const unsigned char *)f->spans[i].ptr, k);
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
    v->open_seq = ++r->seq;
    v->piece_first = r->nsaid;
    /* the product's default listener: IRC if the first line is CAP/NICK/USER/PASS */
    hub_session_open(r->h, slot, "192.0.2.7", HUB_LISTEN_DETECT, r->now);
    v->conn = hub_session_conn_id(r->h, slot);
    FUZZ_ASSERT(v->conn != 0);
    framer_init(&r->shadow[slot]);
}

/* Bytes from slot's client: to the hub, and to the stage's own framer. */
static void input_slot(hub_run *r, uint32_t slot, const unsigned char *p, size_t n)
{
    client_view *v = &r->view[slot];
    r->seq++;
    v->piece_first = r->nsaid;
    r->shadow_slot = slot;
    framer_feed(&r->shadow[slot], p, n, shadow_line, shadow_reply, r);
    hub_session_input(r->h, slot, p, n, r->now);
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
    if (strcmp(reason, "quit") == 0 || strncmp(reason, "quit: ", 6) == 0) mark_after_quit(r, slot);
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
    r->wait = turn_run(r->h, &shell, NULL);
    FUZZ_ASSERT(r->wait >= -1);
    sync_stored(r);
    check_queue_bounds(r);
}

/* Time passes until t.  If the hub's wait ends first, relay.c's wait times
 * out: a quiet moment (hub_idle), then a turn with no input (the commit
 * retry, timers, queries left for later). */
static void time_passes(hub_run *r, int64_t t)
{
    if (r->wait >= 0 && r->now + r->wait <= t) {
        r->now += r->wait;
        hub_idle(r->h);
        shell_turn(r);
    }
    if (t > r->now) r->now = t;
}

/* The hub's log lines are formatted (their arguments are part of what is
 * fuzzed) but not shown, unless CHATRELAY_FUZZ_LOG is set (to read what led
 * up to a crash: fuzz_input CRASH_FILE; each line a session receives is shown too). */
static void log_swallow(log_level level, const char *line)
{
    (void)level;
    FUZZ_ASSERT(line != NULL && strchr(line, '\n') == NULL);
}

static void quiet_log(void)
{
    static int done;
    if (done) return;
    done = 1;
    show_lines = getenv("CHATRELAY_FUZZ_LOG") != NULL;
    log_to_stderr(show_lines);
    log_set_level(LOG_DEBUG);
    log_set_sink(log_swallow, LOG_DEBUG);
}

static void stage_hub(const fuzz_case *fc)
{
    /* the outage bounds: the product's, or small enough for the input to pass them */
    static const struct { size_t lines, bytes; int ms; } bounds[4] = {
        { HUB_OUTAGE_MAX_LINES, HUB_OUTAGE_MAX_BYTES, HUB_OUTAGE_MAX_MS },
        { 4, HUB_OUTAGE_MAX_BYTES, HUB_OUTAGE_MAX_MS },
        { HUB_OUTAGE_MAX_LINES, 2048, HUB_OUTAGE_MAX_MS },
        { 16, 4096, 500 },
    };
    hub_config cfg;
    static hub_run r;
    hub_stats st;
    size_t piece, from = 0, i;
    uint32_t slot;
    msgbuf *row;
    int unstored;

    quiet_log();
    memset(&cfg, 0, sizeof cfg);
    cfg.chat.server_name = "fuzz.example.org";
    cfg.chat.replay = 5;               /* replay on connect and /join (with no history: the "switched off" notice) */
    cfg.detect_ms = 300;
    cfg.chat.flood_burst = 10;
    cfg.chat.flood_rate = 5;
    cfg.chat.flood_kick = 20;
    cfg.chat.log_private = (int)(fc->small_cap & 1);
    cfg.max_sessions = HUB_SLOTS;
    cfg.max_queue_bytes = HUB_QUEUE_MAX;
    cfg.max_per_ip = 0;
    cfg.idle_timeout_ms = 3000;
    cfg.pending_max_lines = bounds[(fc->flags >> 2) & 3].lines;
    cfg.pending_max_bytes = bounds[(fc->flags >> 2) & 3].bytes;
    cfg.pending_max_ms = bounds[(fc->flags >> 2) & 3].ms;
    if (!(fc->flags & CASE_NO_HISTORY)) {
        stub_history_reset(fc->script, fc->script_len);
        cfg.history = stub_history_handle();
        cfg.retention = (fc->flags & CASE_RETENTION) != 0;
    }

    memset(&r, 0, sizeof r);
    r.with_history = cfg.history != NULL;
    r.log_private = cfg.chat.log_private;
    r.wait = -1;
    /* The hard bound on what a queue pins (4x max_queue_bytes, through output
     * that is not a burst), one query's answer (sent while the queue pins at
     * most the bound: 200 rows at most) and the slow-consumer notice. */
    row = msgbuf_alloc(TEXT_MAX_LINE + 130);
    FUZZ_ASSERT(row != NULL);
    r.pinned_max = 4 * HUB_QUEUE_MAX + sizeof(msgbuf) + 128 + sizeof(sendq_entry);
    if (r.with_history) r.pinned_max += (CHAT_HISTORY_MAX + 1) * sendq_cost(row);
    msgbuf_release(row);
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
        time_passes(&r, r.now + ((op & 0x0C) == 0x0C ? 3500 : (int64_t)((op >> 2) & 3) * 150)); /* sometimes past the idle timeout */
        for (uint32_t s = 0; s < HUB_SLOTS; s++) r.stalled[s] = 0;
        r.stalled[(slot + 1) % HUB_SLOTS] = (op & 0x30) == 0x30;
        r.short_send = (op & 0x40) != 0;
        if ((op & 0xC0) == 0xC0 && r.view[slot].open && !r.view[slot].closing)
            close_slot(&r, slot, "connection lost");     /* the peer reset: the slot is reused below */
        if (!r.view[slot].open) open_slot(&r, slot);
        input_slot(&r, slot, fc->stream + from, to - from);
        check_queue_bounds(&r);
        shell_turn(&r);
        from = to;
    }

    /* Quiet: readers catch up; then the service stops. */
    for (slot = 0; slot < HUB_SLOTS; slot++) r.stalled[slot] = 0;
    time_passes(&r, r.now + 400);   /* past the greet delay: a silent session is a greeted line client */
    shell_turn(&r);
    if (fc->small_cap & 2) {
        hub_stopping(r.h, r.now);
        shell_turn(&r);
    }
    for (slot = 0; slot < HUB_SLOTS; slot++) {
        while (r.view[slot].open && sendq_has_unsent(hub_sendq(r.h, slot))) send_now(&r, slot);
        if (r.view[slot].open) {
            FUZZ_ASSERT(r.view[slot].len == 0 && r.view[slot].reply_len == 0); /* everything ended cleanly */
            /* at least the greeting (an IRC session that never registered has heard nothing) */
            FUZZ_ASSERT(r.view[slot].irc || r.view[slot].said_irc || r.view[slot].lines >= 4);
        }
    }
    for (slot = 0; slot < HUB_SLOTS; slot++)
        if (r.view[slot].open) close_slot(&r, slot, "server stopping");
    unstored = hub_final_commit(r.h, r.now);
    FUZZ_ASSERT(unstored >= 0);
    if (!r.with_history) FUZZ_ASSERT(unstored == 0);
    sync_stored(&r);
    hub_get_stats(r.h, &st);
    FUZZ_ASSERT(st.sessions == 0);
    hub_destroy(r.h);
    msgbuf_pool_drain();
    if (r.with_history) stub_history_free();
    for (i = 0; i < r.forms_cap; i++) free(r.forms[i].key);
    free(r.forms);
    free(r.said);
    free(r.said_text);
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

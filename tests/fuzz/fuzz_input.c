/* fuzz_input: libFuzzer target for everything that reads client bytes.
 *
 * One fuzz input is decoded into a fuzz_case (header bytes choose how often
 * the payload repeats, where the stream is cut into feeds and a small output
 * cap), then every stage in `stages` runs on it.  A stage checks invariants
 * and aborts on a violation, so libFuzzer reports it like a crash.
 *
 * To fuzz a further layer (e.g. the hub: framing + cleaning + commands), write
 * `static void stage_hub(const fuzz_case *fc)` that feeds fc->stream in the
 * pieces fc->cuts describes, add its sources to tests/fuzz/CMakeLists.txt and
 * one row to `stages`.
 *
 * Input layout: [repeat] [ncuts] [ncuts x 2 bytes cut positions] [small cap] payload...
 */
#include "framing.h"
#include "text.h"

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

    for (i = 0; i < fc->ncuts; i++)
        fc->cuts[i] = ((size_t)data[2 + 2 * i] << 8 | data[3 + 2 * i]) % (fc->len + 1);
    for (i = 1; i < fc->ncuts; i++) /* insertion sort, at most 16 */
        for (j = i; j > 0 && fc->cuts[j - 1] > fc->cuts[j]; j--) {
            size_t t = fc->cuts[j];
            fc->cuts[j] = fc->cuts[j - 1];
            fc->cuts[j - 1] = t;
        }
    return 1;
}

/* ---- shared checks -------------------------------------------------------- */

/* Independent strict UTF-8 decoder (code point arithmetic, not text.c's tables),
 * plus text.h's promise: no control character except TAB.  Returns 1 if s is clean. */
static int is_clean_utf8(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned long cp;
        size_t len, k;
        unsigned char c = s[i];
        if (c < 0x80) { cp = c; len = 1; }
        else if ((c & 0xE0) == 0xC0) { cp = c & 0x1F; len = 2; }
        else if ((c & 0xF0) == 0xE0) { cp = c & 0x0F; len = 3; }
        else if ((c & 0xF8) == 0xF0) { cp = c & 0x07; len = 4; }
        else return 0;
        if (i + len > n) return 0;
        for (k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)) return 0;
        if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        if ((cp < 0x20 && cp != '\t') || (cp >= 0x7F && cp <= 0x9F)) return 0;
        i += len;
    }
    return 1;
}

static size_t char_len(unsigned char lead)
{
    return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}

static char clean_full[3 * MAX_STREAM + 1];
static char clean_again[3 * MAX_STREAM + 1];
static char clean_capped[TEXT_MAX_LINE + 1];

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

/* ---- driver --------------------------------------------------------------- */

typedef void (*fuzz_stage)(const fuzz_case *fc);

static const struct {
    const char *name;
    fuzz_stage run;
} stages[] = {
    { "text_clean on raw bytes", stage_clean_raw },
    { "framing + text_clean per line", stage_framing },
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

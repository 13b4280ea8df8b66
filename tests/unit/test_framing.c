/* Unit tests for core/framing: line ends, telnet, BS/DEL editing and the
 * line-length limit.  Most cases are run three ways (one feed, every two-feed
 * split, one byte a feed) and must give the same lines and replies each time. */
#include "framing.h"

#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define IAC "\xFF"
#define DONT "\xFE"
#define DO "\xFD"
#define WONT "\xFC"
#define WILL "\xFB"
#define SB "\xFA"
#define SE "\xF0"

/* What the callbacks saw: lines as "text\n" (a truncated one as "!text\n"), replies raw. */
typedef struct capture {
    char lines[8192];
    size_t lines_len;
    unsigned char replies[512];
    size_t replies_len;
    int line_count, truncated_count;
    size_t last_len;
    int bad_bytes; /* a line held CR, LF, BS or DEL */
} capture;

static void on_line(void *ctx, const char *line, size_t len, unsigned flags)
{
    capture *c = ctx;
    size_t i;
    c->line_count++;
    c->last_len = len;
    if (flags & FRAMER_LINE_TRUNCATED) c->truncated_count++;
    for (i = 0; i < len; i++)
        if (line[i] == '\r' || line[i] == '\n' || line[i] == 0x08 || line[i] == 0x7F) c->bad_bytes++;
    if (c->lines_len + len + 2 > sizeof c->lines) return;
    if (flags & FRAMER_LINE_TRUNCATED) c->lines[c->lines_len++] = '!';
    memcpy(c->lines + c->lines_len, line, len);
    c->lines_len += len;
    c->lines[c->lines_len++] = '\n';
    c->lines[c->lines_len] = 0;
}

static void on_reply(void *ctx, const unsigned char *bytes, size_t len)
{
    capture *c = ctx;
    if (c->replies_len + len > sizeof c->replies) return;
    memcpy(c->replies + c->replies_len, bytes, len);
    c->replies_len += len;
}

static capture cap;
static framer fr;

static void reset(void)
{
    memset(&cap, 0, sizeof cap);
    framer_init(&fr);
}

static void feed(const void *data, size_t n)
{
    framer_feed(&fr, data, n, on_line, on_reply, &cap);
}

/* Feeds in[0..n) split at the given positions (ascending, may repeat: empty feeds). */
static void feed_split(const char *in, size_t n, const size_t *cuts, size_t ncuts)
{
    size_t i, from = 0;
    reset();
    for (i = 0; i < ncuts; i++) {
        feed(in + from, cuts[i] - from);
        from = cuts[i];
    }
    feed(in + from, n - from);
}

static int same_result(const char *lines, const char *replies, size_t replies_len)
{
    return strcmp(cap.lines, lines) == 0 && cap.replies_len == replies_len &&
           memcmp(cap.replies, replies, replies_len) == 0 && cap.bad_bytes == 0;
}

/* in[0..n) must give exactly these lines and replies whole, split once at every
 * position, split twice at every pair of positions, and one byte at a time. */
static void expect_n(const char *in, size_t n, const char *lines, const char *replies, size_t replies_len, int line)
{
    size_t cuts[2], i, j;
    int failures = 0;

    feed_split(in, n, NULL, 0);
    if (!same_result(lines, replies, replies_len)) {
        failures++;
        fprintf(stderr, "test_framing.c:%d: whole feed gave lines \"%s\" (%zu reply bytes)\n",
                line, cap.lines, cap.replies_len);
    }
    for (i = 0; i <= n && failures < 3; i++) {
        for (j = i; j <= n && failures < 3; j++) {
            cuts[0] = i;
            cuts[1] = j;
            feed_split(in, n, cuts, 2);
            if (!same_result(lines, replies, replies_len)) {
                failures++;
                fprintf(stderr, "test_framing.c:%d: split at %zu,%zu gave lines \"%s\" (%zu reply bytes)\n",
                        line, i, j, cap.lines, cap.replies_len);
            }
        }
    }
    reset();
    for (i = 0; i < n; i++) feed(in + i, 1);
    if (!same_result(lines, replies, replies_len)) {
        failures++;
        fprintf(stderr, "test_framing.c:%d: byte-at-a-time gave lines \"%s\"\n", line, cap.lines);
    }
    CHECK(failures == 0);
}
#define EXPECT(in, lines) expect_n(in, sizeof(in) - 1, lines, "", 0, __LINE__)
#define EXPECT_REPLIES(in, lines, replies) \
    expect_n(in, sizeof(in) - 1, lines, replies, sizeof(replies) - 1, __LINE__)

static void test_line_ends(void)
{
    EXPECT("hello\n", "hello\n");
    EXPECT("a\r\nb\n", "a\nb\n");
    EXPECT("a\rb\n", "a\nb\n");
    EXPECT("a\r\0b\r\0", "a\nb\n");
    EXPECT("a\r\r\n", "a\n\n");
    EXPECT("a\n\r", "a\n\n");
    EXPECT("a\n\n\r\n\r\r", "a\n\n\n\n\n");
    EXPECT("\n", "\n");
    EXPECT("\r\n", "\n");
    EXPECT("one\r\ntwo\nthree\rfour\r\0five", "one\ntwo\nthree\nfour\n");
    EXPECT("no end yet", "");
    EXPECT("a\n\r\n\n", "a\n\n\n");
    EXPECT("x\r" IAC "\xF1" "\n", "x\n");       /* CR, IAC NOP, LF: still one line end */

    /* a lone NUL is data here (text_clean drops it), only CR NUL is a line end */
    reset();
    feed("a\0b\n", 4);
    CHECK_INT(cap.line_count, 1);
    CHECK_INT(cap.last_len, 3);

    /* the rest stays buffered across feeds */
    reset();
    feed("hel", 3);
    CHECK_INT(cap.line_count, 0);
    feed("lo\r", 3);
    CHECK_STR(cap.lines, "hello\n");
    feed("\n", 1);
    CHECK_INT(cap.line_count, 1);
    feed("x\n", 2);
    CHECK_STR(cap.lines, "hello\nx\n");
}

static void test_editing(void)
{
    EXPECT("abc\b\bd\n", "ad\n");
    EXPECT("abc\x7f\x7f" "d\n", "ad\n");
    EXPECT("\b\b\x7fx\n", "x\n");
    EXPECT("ab\b\b\b\bcd\n", "cd\n");
    EXPECT("h\xC3\xA9\x7f\n", "h\n");                  /* 2-byte character goes whole */
    EXPECT("x\xE2\x82\xAC\b\n", "x\n");                /* 3-byte */
    EXPECT("x\xF0\x9F\x98\x80\x7f!\n", "x!\n");        /* 4-byte */
    EXPECT("\xC3\xA9\xC3\xA9\b\n", "\xC3\xA9\n");
    EXPECT("x\xE2\x82\b\n", "x\n");                    /* incomplete sequence counts as one */
    EXPECT("a\xC3\xA9\x80\b\n", "a\xC3\xA9\n");        /* a stray continuation byte alone */
    EXPECT("\x80\x80\x80\x80\x80\b\b\n", "\x80\x80\x80\n");
    EXPECT("ab\r\b\n", "ab\n\n");                      /* BS after CR: the LF is a new line end */
    EXPECT("abc" IAC "\xF7" "d\n", "abd\n");           /* IAC EC */
    EXPECT("abc" IAC "\xF8" "d\n", "d\n");             /* IAC EL */
}

static void test_telnet(void)
{
    EXPECT_REPLIES(IAC DO "\x01" "hi\n", "hi\n", IAC WONT "\x01");
    EXPECT_REPLIES(IAC WILL "\x1f" "hi\n", "hi\n", IAC DONT "\x1f");
    EXPECT_REPLIES(IAC DONT "\x01" IAC WONT "\x03" "hi\n", "hi\n", "");
    EXPECT_REPLIES("a" IAC DO "\n" "b\n", "ab\n", IAC WONT "\n");          /* option byte 10 is no line end */
    EXPECT_REPLIES(IAC DO IAC "x\n", "x\n", IAC WONT IAC);                 /* option 255 */
    EXPECT("a" IAC IAC "b\n", "a\xFF" "b\n");
    EXPECT(IAC IAC IAC IAC "\n", "\xFF\xFF\n");
    EXPECT("x" IAC SB "\x18\x01" IAC SE "y\n", "xy\n");
    EXPECT("x" IAC SB "\x1f\x00\x50\x00\x18" IAC SE "y\n", "xy\n");        /* NAWS with NULs */
    EXPECT("x" IAC SB "\x18" IAC IAC "\r\n" IAC SE "y\n", "xy\n");          /* IAC IAC and CR LF inside SB */
    EXPECT("a" IAC "\xF1" "b" IAC "\xF9" "c" IAC "\xF6" "d" IAC "\xF4" "e" IAC SE "f\n", "abcdef\n");
    EXPECT("a" IAC SB "\x18zz" IAC "\xF1" "b\n", "ab\n");                   /* IAC + other ends a broken SB */
    EXPECT("a" IAC SB "\x18zz" IAC SB "\x18" IAC SE "b\n", "ab\n");
    EXPECT_REPLIES("a" IAC SB "\x18zz" IAC DO "\x03" "b\n", "ab\n", IAC WONT "\x03");

    /* the opening of a typical telnet client, then a line */
    EXPECT_REPLIES(IAC WILL "\x1f" IAC WILL "\x20" IAC WILL "\x18" IAC WILL "\x27" IAC DO "\x03"
                   IAC DO "\x01" "hello\r\n",
                   "hello\n",
                   IAC DONT "\x1f" IAC DONT "\x20" IAC DONT "\x18" IAC DONT "\x27" IAC WONT "\x03"
                   IAC WONT "\x01");

    /* replies may be dropped */
    reset();
    framer_feed(&fr, (const unsigned char *)IAC DO "\x01" "ok\n", 6, on_line, NULL, &cap);
    CHECK_STR(cap.lines, "ok\n");
}

static void test_runaway_subnegotiation(void)
{
    /* IAC SB without IAC SE must not swallow the session */
    char in[600];
    size_t n = 0;
    memcpy(in, IAC SB "\x18", 3);
    n = 3;
    memset(in + n, 'a', 300);
    n += 300;
    memcpy(in + n, "\nhello\n", 7);
    n += 7;
    reset();
    feed(in, n);
    CHECK_INT(cap.line_count, 2);
    CHECK(cap.lines_len > 7 && strcmp(cap.lines + cap.lines_len - 6, "hello\n") == 0);
}

static void expect_long_line(size_t fill, const char *tail, size_t want_len, int want_truncated, int line)
{
    static char in[4096];
    size_t tail_len = strlen(tail);
    size_t cut;
    int ok = 1;
    memset(in, 'a', fill);
    memcpy(in + fill, tail, tail_len);
    memcpy(in + fill + tail_len, "next\n", 5);
    /* whole, and split at each position around the limit */
    for (cut = 0; cut <= fill + tail_len + 5; cut += (cut >= 990 && cut <= 1040) ? 1 : 10) {
        size_t cuts[1];
        cuts[0] = cut;
        feed_split(in, fill + tail_len + 5, cuts, 1);
        if (cap.line_count != 2 || cap.truncated_count != want_truncated ||
            strcmp(cap.lines + cap.lines_len - 5, "next\n") != 0 ||
            cap.lines_len != (want_truncated ? 1u : 0u) + want_len + 1 + 5) {
            ok = 0;
            fprintf(stderr, "test_framing.c:%d: split at %zu: %d lines, %d truncated, %zu bytes\n",
                    line, cut, cap.line_count, cap.truncated_count, cap.lines_len);
            break;
        }
    }
    CHECK(ok);
}

static void test_line_limit(void)
{
    expect_long_line(1024, "\n", 1024, 0, __LINE__);
    expect_long_line(1024, "\r\n", 1024, 0, __LINE__);
    expect_long_line(1025, "\n", 1024, 1, __LINE__);
    expect_long_line(1025, "\r\n", 1024, 1, __LINE__);   /* the LF after the cut line makes no empty line */
    expect_long_line(1025, "\r\0", 1024, 1, __LINE__);
    expect_long_line(3000, "\n", 1024, 1, __LINE__);
    expect_long_line(1023, "\xC3\xA9\n", 1023, 1, __LINE__);         /* cut before the split é */
    expect_long_line(1022, "\xE2\x82\xAC\n", 1022, 1, __LINE__);
    expect_long_line(1021, "\xE2\x82\xAC\n", 1024, 0, __LINE__);     /* exactly fits */
    expect_long_line(1021, "\xF0\x9F\x98\x80\n", 1021, 1, __LINE__);
    expect_long_line(1020, "\xF0\x9F\x98\x80\n", 1024, 0, __LINE__);
    expect_long_line(1022, "\xE2\x82\xAC" "bbb\n", 1022, 1, __LINE__);
    expect_long_line(1024, "\b\n", 1023, 0, __LINE__);                 /* BS at the limit */
    expect_long_line(1024, "\bx\n", 1024, 0, __LINE__);
    expect_long_line(1025, "\b\b\b\n", 1024, 1, __LINE__);             /* editing a cut line does nothing */
    expect_long_line(1024, IAC IAC "\n", 1024, 1, __LINE__);           /* the 0xFF data byte overflows */
    expect_long_line(1024, IAC DO "\x01" "\n", 1024, 0, __LINE__);     /* telnet bytes do not count */

    /* the truncated line is reported as soon as it overflows */
    reset();
    {
        char a[1100];
        memset(a, 'x', sizeof a);
        feed(a, sizeof a);
        CHECK_INT(cap.line_count, 1);
        CHECK_INT(cap.truncated_count, 1);
        CHECK_INT(cap.last_len, 1024);
    }
}

static void test_one_megabyte_line(void)
{
    static char chunk[4093]; /* odd size: chunk ends fall everywhere */
    size_t sent = 0, i;
    reset();
    for (i = 0; i < sizeof chunk; i++) chunk[i] = (char)('a' + i % 26);
    while (sent < 1024 * 1024) {
        feed(chunk, sizeof chunk);
        sent += sizeof chunk;
    }
    CHECK_INT(cap.line_count, 1);
    CHECK_INT(cap.truncated_count, 1);
    CHECK_INT(cap.last_len, 1024);
    feed("\r\n", 2);
    CHECK_INT(cap.line_count, 1);
    feed("normal line\r\n", 13);
    CHECK_INT(cap.line_count, 2);
    CHECK_INT(cap.truncated_count, 1);
    CHECK(strcmp(cap.lines + cap.lines_len - 12, "normal line\n") == 0);

    /* one feed of 1 MB */
    {
        size_t big = 1024 * 1024 + 7;
        char *mb = malloc(big);
        CHECK(mb != NULL);
        if (mb) {
            memset(mb, 'z', big);
            memcpy(mb + big - 7, "\nok\r\n", 5); /* and "zz" stays buffered */
            reset();
            feed(mb, big);
            CHECK_INT(cap.line_count, 2);
            CHECK_INT(cap.truncated_count, 1);
            CHECK(strcmp(cap.lines + cap.lines_len - 4, "\nok\n") == 0);
            free(mb);
        }
    }
}

static void test_garbage(void)
{
    unsigned char junk[4096];
    unsigned state = 12345;
    size_t i, pos;
    reset();
    for (i = 0; i < sizeof junk; i++) {
        state = state * 1103515245u + 12345u;
        junk[i] = (unsigned char)(state >> 16);
    }
    for (pos = 0; pos < sizeof junk;) {
        size_t step = 1 + junk[pos] % 61;
        if (step > sizeof junk - pos) step = sizeof junk - pos;
        feed(junk + pos, step);
        pos += step;
    }
    CHECK_INT(cap.bad_bytes, 0);
    CHECK(cap.replies_len % 3 == 0);
    for (i = 0; i < cap.replies_len; i += 3) {
        CHECK_INT(cap.replies[i], 0xFF);
        CHECK(cap.replies[i + 1] == 0xFC || cap.replies[i + 1] == 0xFE);
    }
    /* whatever state the garbage left, 300 plain bytes (more than a subnegotiation
     * may last) and a line end bring it back to normal */
    memset(junk, 'x', 300);
    feed(junk, 300);
    feed("\r\nback\r\n", 8);
    CHECK(strcmp(cap.lines + cap.lines_len - 5, "back\n") == 0);
}

static void test_size(void)
{
    CHECK(sizeof(framer) <= 1100);
    CHECK(sizeof(framer) >= TEXT_MAX_LINE);
}

int main(void)
{
    test_line_ends();
    test_editing();
    test_telnet();
    test_runaway_subnegotiation();
    test_line_limit();
    test_one_megabyte_line();
    test_garbage();
    test_size();
    return check_done();
}

/* Unit tests for core/text: cleaning untrusted bytes (invalid UTF-8 of every
 * kind, terminal escapes, controls, NUL, line separators and bidi controls),
 * the output cap, boundaries, blanks. */
#include "framing.h"
#include "text.h"

#include "check.h"
#include "utf8_check.h"

#include <stdio.h>
#include <string.h>

#define FFFD "\xEF\xBF\xBD"

static char out[4 * TEXT_MAX_LINE + 16];

/* Cleans a literal (may contain NUL, hence the explicit length) with a roomy buffer. */
static const char *clean_n(const char *in, size_t n)
{
    int truncated = -1;
    size_t len = text_clean(in, n, out, sizeof out, &truncated);
    CHECK_INT(truncated, 0);
    CHECK_INT(strlen(out), len);
    return out;
}
#define CLEAN(lit) clean_n(lit, sizeof(lit) - 1)


static void test_plain_text_is_kept(void)
{
    CHECK_STR(CLEAN("hello, world"), "hello, world");
    CHECK_STR(CLEAN(""), "");
    CHECK_STR(CLEAN("a\tb"), "a\tb");
    CHECK_STR(CLEAN("h\xC3\xA9llo \xE2\x82\xAC \xF0\x9D\x84\x9E \xE4\xBD\xA0\xE5\xA5\xBD"),
              "h\xC3\xA9llo \xE2\x82\xAC \xF0\x9D\x84\x9E \xE4\xBD\xA0\xE5\xA5\xBD");
    /* edges of the valid ranges */
    CHECK_STR(CLEAN("\xC2\xA0"), "\xC2\xA0");             /* U+00A0, first after C1 */
    CHECK_STR(CLEAN("\xDF\xBF"), "\xDF\xBF");             /* U+07FF */
    CHECK_STR(CLEAN("\xE0\xA0\x80"), "\xE0\xA0\x80");     /* U+0800 */
    CHECK_STR(CLEAN("\xED\x9F\xBF"), "\xED\x9F\xBF");     /* U+D7FF */
    CHECK_STR(CLEAN("\xEE\x80\x80"), "\xEE\x80\x80");     /* U+E000 */
    CHECK_STR(CLEAN("\xEF\xBF\xBF"), "\xEF\xBF\xBF");     /* U+FFFF */
    CHECK_STR(CLEAN("\xF0\x90\x80\x80"), "\xF0\x90\x80\x80"); /* U+10000 */
    CHECK_STR(CLEAN("\xF4\x8F\xBF\xBF"), "\xF4\x8F\xBF\xBF"); /* U+10FFFF */
    CHECK_STR(CLEAN(FFFD), FFFD);
}

static void test_controls_are_removed(void)
{
    CHECK_STR(CLEAN("\x1b[31mred\x1b[0m"), "[31mred[0m");
    CHECK_STR(CLEAN("\x1b]0;owned\x07title"), "]0;ownedtitle");
    CHECK_STR(CLEAN("a\x01\x02\x03\x04\x05\x06\x07\x08z"), "az");
    CHECK_STR(CLEAN("a\r\nb\x0b\x0c"), "ab");
    CHECK_STR(CLEAN("del\x7f!"), "del!");
    CHECK_STR(clean_n("a\0b\0", 4), "ab");
    CHECK_STR(clean_n("\0", 1), "");
    /* C1 controls as characters: U+0080..U+009F, incl. CSI U+009B and NEL U+0085 */
    CHECK_STR(CLEAN("x\xC2\x80y\xC2\x9B" "31mz\xC2\x85\xC2\x9F"), "xy31mz");
    /* C1 as raw bytes are invalid UTF-8 */
    CHECK_STR(CLEAN("\x9b" "31m"), FFFD "31m");
    {
        char all[32];
        int i;
        for (i = 0; i < 32; i++) all[i] = (char)i;
        CHECK_STR(clean_n(all, sizeof all), "\t");
    }
}

/* The UTF-8 encoding of one code point below U+10000 (3 bytes from U+0800). */
static size_t encode(unsigned long cp, char *p)
{
    if (cp < 0x80) { p[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        p[0] = (char)(0xC0 | (cp >> 6));
        p[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    p[0] = (char)(0xE0 | (cp >> 12));
    p[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    p[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
}

/* Cleans "<before><cp><after>" and checks it became want ("<before><after>" if NULL). */
static void check_removed_between(unsigned long cp, const char *before, const char *after, const char *want)
{
    char in[64], joined[64];
    size_t n = strlen(before);
    memcpy(in, before, n);
    n += encode(cp, in + n);
    memcpy(in + n, after, strlen(after));
    n += strlen(after);
    snprintf(joined, sizeof joined, "%s%s", before, after);
    if (!want)
        want = joined;
    if (strcmp(clean_n(in, n), want) != 0)
        fprintf(stderr, "U+%04lX between \"%s\" and \"%s\" was not removed\n", cp, before, after);
    CHECK_STR(out, want);
}

static const unsigned long removed_ranges[][2] = {
    { 0x2028, 0x2029 },   /* LINE SEPARATOR, PARAGRAPH SEPARATOR */
    { 0x202A, 0x202E },   /* LRE RLE PDF LRO RLO */
    { 0x2066, 0x2069 },   /* LRI RLI FSI PDI */
};

static void test_separators_and_bidi_controls_are_removed(void)
{
    size_t r;
    unsigned long cp;
    for (r = 0; r < sizeof removed_ranges / sizeof removed_ranges[0]; r++) {
        for (cp = removed_ranges[r][0]; cp <= removed_ranges[r][1]; cp++) {
            check_removed_between(cp, "", "", NULL);                                /* alone */
            check_removed_between(cp, "", "*** alice is now known as admin", NULL); /* line start */
            check_removed_between(cp, "hi", "", NULL);                              /* line end */
            check_removed_between(cp, "a", "b", NULL);                              /* between ASCII */
            check_removed_between(cp, "\xC3\xA9", "\xE2\x82\xAC", NULL);            /* between multibyte */
            check_removed_between(cp, "\t", " ", NULL);
            check_removed_between(cp, FFFD, FFFD, NULL);                            /* next to replacements */
            check_removed_between(cp, "\x1b", "\xC2\x9B", "");                      /* next to controls */
            check_removed_between(cp, "\xE2\x80\xA8", "x\xE2\x81\xA6", "x");          /* next to its own kind */
            check_removed_between(cp, "\xE2\x80\x8F", "\xE2\x80\x8D", NULL);        /* next to RLM, ZWJ (kept) */
        }
    }
    /* the forged notice on a line of its own */
    CHECK_STR(CLEAN("hi\xE2\x80\xA8*** alice is now known as admin"), "hi*** alice is now known as admin");
    CHECK_STR(CLEAN("\xE2\x80\xA9\xE2\x80\xA9\xE2\x80\xA8"), "");
    /* Trojan-source style reordering: RLO ... PDF, LRI ... PDI */
    CHECK_STR(CLEAN("admin\xE2\x80\xAE" "txt.exe\xE2\x80\xAC"), "admintxt.exe");
    CHECK_STR(CLEAN("\xE2\x81\xA7" "abc\xE2\x81\xA9" "def"), "abcdef");
    /* every removed character mixed with others and with controls, in one line */
    {
        char in[256];
        size_t n = 0;
        for (r = 0; r < sizeof removed_ranges / sizeof removed_ranges[0]; r++)
            for (cp = removed_ranges[r][0]; cp <= removed_ranges[r][1]; cp++) {
                n += encode(cp, in + n);
                in[n++] = 'x';
                in[n++] = '\x1b';
            }
        CHECK_STR(clean_n(in, n), "xxxxxxxxxxx");   /* 2 + 5 + 4 */
    }
    /* their broken forms are ill-formed UTF-8, as for any character */
    CHECK_STR(CLEAN("a\xE2\x80"), "a" FFFD);                     /* truncated U+2028 */
    CHECK_STR(CLEAN("\xE2\x80" "x\xA8"), FFFD "x" FFFD);          /* interrupted */
    CHECK_STR(CLEAN("\xE2\x80\xE2\x80\xA8\xA8"), FFFD FFFD);      /* removal never joins neighbours */
    CHECK_STR(CLEAN("\xE2\x81\xE2\x81\xA6\xA6"), FFFD FFFD);
    CHECK_STR(CLEAN("\xF0\x82\x80\xA8"), FFFD FFFD FFFD FFFD);    /* overlong U+2028 */
    CHECK_STR(CLEAN("\xE0\x82\xA8"), FFFD FFFD FFFD);             /* overlong U+00A8, not a separator */
}

static void test_neighbours_and_marks_are_kept(void)
{
    /* just outside each removed range */
    CHECK_STR(CLEAN("\xE2\x80\xA7"), "\xE2\x80\xA7");     /* U+2027 HYPHENATION POINT */
    CHECK_STR(CLEAN("\xE2\x80\xAF"), "\xE2\x80\xAF");     /* U+202F NARROW NO-BREAK SPACE */
    CHECK_STR(CLEAN("\xE2\x81\xA5"), "\xE2\x81\xA5");     /* U+2065 */
    CHECK_STR(CLEAN("\xE2\x81\xAA"), "\xE2\x81\xAA");     /* U+206A */
    /* the same low bytes under other lead bytes are other characters */
    CHECK_STR(CLEAN("\xE3\x80\xA8"), "\xE3\x80\xA8");     /* U+3028 */
    CHECK_STR(CLEAN("\xE1\x80\xAE"), "\xE1\x80\xAE");     /* U+102E */
    CHECK_STR(CLEAN("\xE2\x82\xA8"), "\xE2\x82\xA8");     /* U+20A8 RUPEE SIGN */
    /* marks without scope stay: LRM, RLM, ALM (see text.c) */
    CHECK_STR(CLEAN("a\xE2\x80\x8E" "b"), "a\xE2\x80\x8E" "b");
    CHECK_STR(CLEAN("\xD7\xA9\xD7\x9C\xD7\x95\xD7\x9D 2\xE2\x80\x8F!"),
              "\xD7\xA9\xD7\x9C\xD7\x95\xD7\x9D 2\xE2\x80\x8F!");
    CHECK_STR(CLEAN("\xD8\x9C" "1"), "\xD8\x9C" "1");
    /* joiners stay: an emoji ZWJ sequence (woman technologist) and ZWNJ */
    CHECK_STR(CLEAN("\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x92\xBB"), "\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x92\xBB");
    CHECK_STR(CLEAN("\xD9\x85\xE2\x80\x8C\xDB\x8C"), "\xD9\x85\xE2\x80\x8C\xDB\x8C");
    /* every other code point from U+2000 to U+206F passes unchanged */
    {
        unsigned long cp;
        char in[4];
        for (cp = 0x2000; cp <= 0x206F; cp++) {
            size_t n = encode(cp, in);
            int removed = (cp >= 0x2028 && cp <= 0x202E) || (cp >= 0x2066 && cp <= 0x2069);
            clean_n(in, n);
            CHECK_INT(strlen(out), removed ? 0 : n);
        }
    }
}

static void test_removed_characters_at_the_cap(void)
{
    char small[8];
    int truncated = -1;
    size_t len;

    len = text_clean("abc\xE2\x80\xA8", 6, small, 4, &truncated); /* only a removed character was left */
    CHECK_INT(len, 3);
    CHECK_STR(small, "abc");
    CHECK_INT(truncated, 0);

    len = text_clean("ab\xE2\x80\xAE" "cd", 7, small, 5, &truncated); /* removing it made room */
    CHECK_STR(small, "abcd");
    CHECK_INT(truncated, 0);

    len = text_clean("ab\xE2\x81\xA6" "cde", 8, small, 5, &truncated);
    CHECK_STR(small, "abcd");
    CHECK_INT(truncated, 1);
}

/* Cleaning runs on whole lines: a separator whose bytes arrive in different
 * reads is put together by the framer first, then removed. */
struct lines { char text[4][TEXT_MAX_LINE + 1]; int count; };

static void collect_line(void *ctx, const char *line, size_t len, unsigned flags)
{
    struct lines *l = ctx;
    (void)flags;
    if (l->count < 4)
        text_clean(line, len, l->text[l->count++], sizeof l->text[0], NULL);
}

static void test_split_across_reads(void)
{
    static const char *const pieces[][3] = {
        { "hi\xE2", "\x80\xA8*** alice is now known as admin\r\n", "" },
        { "hi\xE2\x80", "\xA8", "x\r\n" },
        { "\xE2", "\x81", "\xA6rtl\xE2\x81\xA9\r\n" },
    };
    static const char *const want[] = { "hi*** alice is now known as admin", "hix", "rtl" };
    size_t k;
    for (k = 0; k < sizeof pieces / sizeof pieces[0]; k++) {
        static framer f;
        struct lines l;
        int p;
        l.count = 0;
        framer_init(&f);
        for (p = 0; p < 3; p++)
            framer_feed(&f, (const unsigned char *)pieces[k][p], strlen(pieces[k][p]), collect_line, NULL, &l);
        CHECK_INT(l.count, 1);
        CHECK_STR(l.text[0], want[k]);
    }
    /* a line over the framer's limit is cut at a character boundary, so no
     * half separator is left to become U+FFFD */
    {
        static framer f;
        static unsigned char line[TEXT_MAX_LINE + 8];
        struct lines l;
        size_t n = TEXT_MAX_LINE - 2;
        l.count = 0;
        memset(line, 'x', n);
        memcpy(line + n, "\xE2\x80\xA8\r\n", 5);
        framer_init(&f);
        framer_feed(&f, line, n + 5, collect_line, NULL, &l);
        CHECK_INT(l.count, 1);
        CHECK_INT(strlen(l.text[0]), n);
        CHECK(strstr(l.text[0], FFFD) == NULL);
    }
}

static void test_invalid_utf8_becomes_replacement(void)
{
    /* overlong forms: no prefix can become valid, one U+FFFD per byte */
    CHECK_STR(CLEAN("\xC0\xAF"), FFFD FFFD);
    CHECK_STR(CLEAN("\xC1\xBF"), FFFD FFFD);
    CHECK_STR(CLEAN("\xC0\x80"), FFFD FFFD);                     /* overlong NUL */
    CHECK_STR(CLEAN("\xE0\x80\xAF"), FFFD FFFD FFFD);
    CHECK_STR(CLEAN("\xE0\x9F\xBF"), FFFD FFFD FFFD);
    CHECK_STR(CLEAN("\xF0\x80\x80\xAF"), FFFD FFFD FFFD FFFD);
    CHECK_STR(CLEAN("\xF0\x8F\xBF\xBF"), FFFD FFFD FFFD FFFD);
    CHECK_STR(CLEAN("\xE0\x80\x9B"), FFFD FFFD FFFD);           /* overlong CSI stays harmless */
    /* surrogates */
    CHECK_STR(CLEAN("\xED\xA0\x80"), FFFD FFFD FFFD);
    CHECK_STR(CLEAN("\xED\xBF\xBF"), FFFD FFFD FFFD);
    CHECK_STR(CLEAN("\xED\xA0\xBD\xED\xB8\x80"), FFFD FFFD FFFD FFFD FFFD FFFD); /* CESU-8 pair */
    /* beyond U+10FFFF and bytes that start nothing */
    CHECK_STR(CLEAN("\xF4\x90\x80\x80"), FFFD FFFD FFFD FFFD);
    CHECK_STR(CLEAN("\xF5\x80\x80\x80"), FFFD FFFD FFFD FFFD);
    CHECK_STR(CLEAN("\xF8\x88\x80\x80\x80"), FFFD FFFD FFFD FFFD FFFD);
    CHECK_STR(CLEAN("\xFC\x84\x80\x80\x80\x80"), FFFD FFFD FFFD FFFD FFFD FFFD);
    CHECK_STR(CLEAN("\xFE\xFF"), FFFD FFFD);
    /* lone continuation bytes */
    CHECK_STR(CLEAN("\x80"), FFFD);
    CHECK_STR(CLEAN("a\xBF" "b"), "a" FFFD "b");
    CHECK_STR(CLEAN("\x80\x81\x82"), FFFD FFFD FFFD);
    CHECK_STR(CLEAN("\xC3\xA9\xA9"), "\xC3\xA9" FFFD);
    /* truncated sequences: the maximal valid prefix is one U+FFFD */
    CHECK_STR(CLEAN("a\xC3"), "a" FFFD);
    CHECK_STR(CLEAN("a\xE2\x82"), "a" FFFD);
    CHECK_STR(CLEAN("\xF0\x9F\x98"), FFFD);
    CHECK_STR(CLEAN("\xF0\x9F"), FFFD);
    CHECK_STR(CLEAN("\xE2\x82z"), FFFD "z");
    CHECK_STR(CLEAN("\xE2\x82\xE2\x82\xAC"), FFFD "\xE2\x82\xAC");
    CHECK_STR(CLEAN("\xF0\x9F\x98\x1b[1m"), FFFD "[1m");
    CHECK_STR(CLEAN("\xC2\xC2\x9B" "1"), FFFD "1");              /* the C1 after a broken lead still goes */
}

static void test_every_byte_value(void)
{
    char in[512];
    size_t len;
    int i, truncated = -1;
    for (i = 0; i < 256; i++) {
        in[2 * i] = (char)i;
        in[2 * i + 1] = (char)(255 - i);
    }
    len = text_clean(in, sizeof in, out, sizeof out, &truncated);
    CHECK_INT(truncated, 0);
    CHECK(is_clean_utf8((const unsigned char *)out, len));
    CHECK(memchr(out, 0xFF, len) == NULL);
    CHECK(memchr(out, 0x1B, len) == NULL);
    /* idempotent: clean text comes back unchanged */
    {
        char again[sizeof out];
        size_t len2 = text_clean(out, len, again, sizeof again, &truncated);
        CHECK_INT(len2, len);
        CHECK(memcmp(again, out, len) == 0);
    }
}

static void test_output_cap(void)
{
    char small[8];
    int truncated = -1;
    size_t len;

    len = text_clean("abc", 3, small, 1, &truncated);
    CHECK_INT(len, 0);
    CHECK_STR(small, "");
    CHECK_INT(truncated, 1);

    len = text_clean("", 0, small, 1, &truncated);
    CHECK_INT(len, 0);
    CHECK_INT(truncated, 0);

    len = text_clean("abc", 3, small, 4, &truncated); /* exactly fits */
    CHECK_INT(len, 3);
    CHECK_STR(small, "abc");
    CHECK_INT(truncated, 0);

    len = text_clean("abcd", 4, small, 4, &truncated);
    CHECK_STR(small, "abc");
    CHECK_INT(truncated, 1);

    len = text_clean("abc\x01\x1b", 5, small, 4, &truncated); /* only removed bytes were left */
    CHECK_STR(small, "abc");
    CHECK_INT(truncated, 0);

    len = text_clean("ab\xE2\x82\xAC", 5, small, 5, &truncated); /* never splits a character */
    CHECK_INT(len, 2);
    CHECK_STR(small, "ab");
    CHECK_INT(truncated, 1);

    len = text_clean("ab\xE2\x82\xAC", 5, small, 6, &truncated);
    CHECK_STR(small, "ab\xE2\x82\xAC");
    CHECK_INT(truncated, 0);

    len = text_clean("abcd\xFF", 5, small, 7, &truncated); /* U+FFFD needs 3 bytes, 2 left */
    CHECK_STR(small, "abcd");
    CHECK_INT(truncated, 1);

    len = text_clean("\xF0\x9F\x98\x80", 4, small, 4, &truncated);
    CHECK_INT(len, 0);
    CHECK_INT(truncated, 1);

    len = text_clean("abc", 3, small, sizeof small, NULL); /* truncated may be NULL */
    CHECK_INT(len, 3);

    {
        char big[TEXT_MAX_LINE * 2];
        char line[TEXT_MAX_LINE + 1];
        memset(big, 'x', sizeof big);
        len = text_clean(big, sizeof big, line, sizeof line, &truncated);
        CHECK_INT(len, TEXT_MAX_LINE);
        CHECK_INT(truncated, 1);
        CHECK_INT(line[TEXT_MAX_LINE], 0);
    }
}

static void test_utf8_boundary(void)
{
    const char *s = "ab\xE2\x82\xAC" "c\xF0\x9F\x98\x80";
    CHECK_INT(text_utf8_boundary(s, 0), 0);
    CHECK_INT(text_utf8_boundary(s, 1), 1);
    CHECK_INT(text_utf8_boundary(s, 2), 2);
    CHECK_INT(text_utf8_boundary(s, 3), 2);
    CHECK_INT(text_utf8_boundary(s, 4), 2);
    CHECK_INT(text_utf8_boundary(s, 5), 5);
    CHECK_INT(text_utf8_boundary(s, 6), 6);
    CHECK_INT(text_utf8_boundary(s, 7), 6);
    CHECK_INT(text_utf8_boundary(s, 8), 6);
    CHECK_INT(text_utf8_boundary(s, 9), 6);
    CHECK_INT(text_utf8_boundary(s, 10), 10);
    CHECK_INT(text_utf8_boundary("\xC3\xA9", 1), 0);
    /* robust on bytes that are not valid UTF-8: stray continuation bytes end cleanly */
    CHECK_INT(text_utf8_boundary("\x80\x80\x80\x80\x80", 5), 5);
    CHECK_INT(text_utf8_boundary("a\x80", 2), 2);
    CHECK_INT(text_utf8_boundary("\xFF", 1), 1);
}

static void test_blank(void)
{
    CHECK(text_is_blank("", 0));
    CHECK(text_is_blank("   ", 3));
    CHECK(text_is_blank(" \t ", 3));
    CHECK(!text_is_blank(" a ", 3));
    CHECK(!text_is_blank("x", 1));
    CHECK(text_is_blank("  x", 2));
    CHECK(!text_is_blank("\xC2\xA0", 2));
}

int main(void)
{
    test_plain_text_is_kept();
    test_controls_are_removed();
    test_separators_and_bidi_controls_are_removed();
    test_neighbours_and_marks_are_kept();
    test_removed_characters_at_the_cap();
    test_split_across_reads();
    test_invalid_utf8_becomes_replacement();
    test_every_byte_value();
    test_output_cap();
    test_utf8_boundary();
    test_blank();
    return check_done();
}

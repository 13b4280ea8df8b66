/* Unit tests for core/text: cleaning untrusted bytes (invalid UTF-8 of every
 * kind, terminal escapes, controls, NUL), the output cap, boundaries, blanks. */
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
    test_invalid_utf8_becomes_replacement();
    test_every_byte_value();
    test_output_cap();
    test_utf8_boundary();
    test_blank();
    return check_done();
}

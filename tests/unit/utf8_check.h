/* utf8_check: an independent strict UTF-8 validator for the tests and the
 * fuzzer (RFC 3629 by code point arithmetic, not text.c's tables), plus the
 * promise of text.h: no control character except TAB, and none of the
 * characters that make one line look like another in a GUI client. */
#ifndef CHATRELAY_UTF8_CHECK_H
#define CHATRELAY_UTF8_CHECK_H

#include <stddef.h>

/* 1 for a code point text.h promises never to let through although it is
 * well-formed: C0 but TAB, DEL, C1; LINE and PARAGRAPH SEPARATOR; the bidi
 * embeddings and overrides (LRE RLE PDF LRO RLO) and isolates (LRI RLI FSI PDI). */
static int is_forbidden_code_point(unsigned long cp)
{
    if ((cp < 0x20 && cp != '\t') || (cp >= 0x7F && cp <= 0x9F)) return 1;
    if (cp == 0x2028 || cp == 0x2029) return 1;
    if (cp >= 0x202A && cp <= 0x202E) return 1;
    if (cp >= 0x2066 && cp <= 0x2069) return 1;
    return 0;
}

/* 1 if s[0..n) is valid UTF-8 with none of the forbidden code points. */
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
        if (is_forbidden_code_point(cp)) return 0;
        i += len;
    }
    return 1;
}

#endif

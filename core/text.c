/* text: make one line of untrusted bytes safe to show in other people's terminals.
 *
 * Invalid UTF-8 follows the Unicode "substitution of maximal subparts" rule
 * (Unicode ch. 3, U+FFFD substitution; the same rule as the WHATWG decoder):
 * a byte that can start a well-formed sequence (Table 3-7) and the continuation
 * bytes that still fit that sequence form one maximal subpart, replaced by ONE
 * U+FFFD; a byte that can start nothing (80..BF alone, C0, C1, F5..FF) is its
 * own subpart.  So "E2 82" (truncated euro sign) is one U+FFFD, while the
 * overlong "C0 AF", the surrogate "ED A0 80" and "F4 90 80 80" (> U+10FFFF)
 * are one U+FFFD per byte, since no prefix of them can ever be well-formed.
 *
 * Removed without replacement: C0 controls except TAB (so also NUL, CR, LF,
 * ESC), DEL, and C1 controls U+0080..U+009F (encoded C2 80..C2 9F; 8-bit CSI
 * 0x9B alone is invalid UTF-8 and becomes U+FFFD).  With ESC and CSI gone no
 * terminal escape sequence can start; what is left of one ("[31m") is plain text.
 *
 * Removed the same way, because they let one line look like something else in
 * a GUI client: U+2028 LINE SEPARATOR and U+2029 PARAGRAPH SEPARATOR (shown as
 * line breaks, so "hi\u2028*** alice is now known as admin" would fake a server
 * notice on a line of its own, as LF would), and the bidi embedding, override
 * and isolate controls U+202A..U+202E and U+2066..U+2069 (their effect reaches
 * to the end of the paragraph: an RLO shows the rest of the line reversed).
 * Kept: LRM U+200E, RLM U+200F and ALM U+061C.  They have no scope; each acts
 * like one invisible strong right-to-left or left-to-right letter, so they can
 * reorder nothing that a visible Hebrew or Arabic letter could not, and
 * right-to-left writers need them to place punctuation and numbers in mixed
 * text.  Kept as well: ZWJ U+200D and ZWNJ U+200C (emoji sequences, Persian).
 */
#include "text.h"

#include <string.h>

/* "\xEF\xBF\xBD" */
static const unsigned char replacement_char[3] = { 0xEF, 0xBF, 0xBD };

/* Bytes copied as they are: printable ASCII and TAB. */
static int is_plain_ascii(unsigned char c)
{
    return (c >= 0x20 && c < 0x7F) || c == '\t';
}

/* 1 for the characters removed although well-formed (see the top comment):
 * p[0..len) is one complete UTF-8 sequence of 2 to 4 bytes. */
static int is_removed_char(const unsigned char *p, size_t len)
{
    unsigned long cp;
    if (len == 2) {
        cp = ((unsigned long)(p[0] & 0x1F) << 6) | (p[1] & 0x3F);
        return cp <= 0x9F;                            /* C1 controls */
    }
    if (len != 3 || p[0] != 0xE2)                     /* only U+2000..U+2FFF start with E2 */
        return 0;
    cp = ((unsigned long)(p[0] & 0x0F) << 12) | ((unsigned long)(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
    return (cp >= 0x2028 && cp <= 0x202E)             /* LS, PS, LRE RLE PDF LRO RLO */
        || (cp >= 0x2066 && cp <= 0x2069);            /* LRI RLI FSI PDI */
}

/* Length of the well-formed sequence a lead byte starts, 0 if it starts none,
 * and the allowed range of the byte after it (Unicode Table 3-7; every later
 * byte must be 80..BF).  The narrowed second-byte ranges are what excludes
 * overlong forms, surrogates and code points above U+10FFFF. */
static size_t utf8_sequence(unsigned char lead, unsigned char *second_lo, unsigned char *second_hi)
{
    *second_lo = 0x80;
    *second_hi = 0xBF;
    if (lead < 0x80) return 1;
    if (lead < 0xC2) return 0;
    if (lead < 0xE0) return 2;
    if (lead < 0xF0) {
        if (lead == 0xE0) *second_lo = 0xA0;
        else if (lead == 0xED) *second_hi = 0x9F;
        return 3;
    }
    if (lead < 0xF5) {
        if (lead == 0xF0) *second_lo = 0x90;
        else if (lead == 0xF4) *second_hi = 0x8F;
        return 4;
    }
    return 0;
}

size_t text_clean(const char *in, size_t n, char *out, size_t cap, int *truncated)
{
    return text_clean_keeping(in, n, out, cap, truncated, 0);
}

size_t text_clean_keeping(const char *in, size_t n, char *out, size_t cap, int *truncated,
                          unsigned char keep)
{
    const unsigned char *s = (const unsigned char *)in;
    unsigned char *o = (unsigned char *)out;
    size_t room, i = 0, w = 0;
    int cut = 0;

    if (cap == 0) { /* outside the contract; nothing can be written, not even the NUL */
        if (truncated) *truncated = n > 0;
        return 0;
    }
    room = cap - 1;

    while (i < n) {
        const unsigned char *piece;
        size_t piece_len, used;
        unsigned char c = s[i];

        if (is_plain_ascii(c)) {
            size_t run = i + 1;
            while (run < n && is_plain_ascii(s[run])) run++;
            piece_len = run - i;
            if (piece_len > room - w) {
                memcpy(o + w, s + i, room - w);
                w = room;
                cut = 1;
                break;
            }
            memcpy(o + w, s + i, piece_len);
            w += piece_len;
            i = run;
            continue;
        }

        if (c < 0x80) { /* C0 control or DEL */
            if (c == keep && keep != 0) {
                if (w == room) {
                    cut = 1;
                    break;
                }
                o[w++] = c;
            }
            i++;
            continue;
        }

        {
            unsigned char lo, hi;
            size_t need = utf8_sequence(c, &lo, &hi);
            used = 1;
            if (need > 1) {
                while (used < need && i + used < n && s[i + used] >= lo && s[i + used] <= hi) {
                    used++;
                    lo = 0x80;
                    hi = 0xBF;
                }
            }
            if (need > 1 && used == need) {
                if (is_removed_char(s + i, used)) {
                    i += used;
                    continue;
                }
                piece = s + i;
                piece_len = used;
            } else {
                piece = replacement_char;
                piece_len = sizeof replacement_char;
            }
        }

        if (piece_len > room - w) {
            cut = 1;
            break;
        }
        memcpy(o + w, piece, piece_len);
        w += piece_len;
        i += used;
    }

    o[w] = 0;
    if (truncated) *truncated = cut;
    return w;
}

size_t text_utf8_boundary(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t lead = n, continuation = 0;
    unsigned char lo, hi;
    size_t need;

    /* Walk back over at most 3 continuation bytes to the byte that starts the last character. */
    while (lead > 0 && continuation < 3 && (u[lead - 1] & 0xC0) == 0x80) {
        lead--;
        continuation++;
    }
    if (lead == 0) return n;
    lead--;
    need = utf8_sequence(u[lead], &lo, &hi);
    /* Cut only a sequence that is still waiting for bytes; anything else
     * (ASCII, stray continuation bytes, a complete character) ends cleanly. */
    if (need > 1 && n - lead < need) return lead;
    return n;
}

int text_is_blank(const char *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t') return 0;
    return 1;
}

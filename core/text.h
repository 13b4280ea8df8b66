/* text: make one line of untrusted bytes safe to show in other people's terminals.
 *
 * Owns: UTF-8 validation (invalid, overlong, surrogate and truncated sequences
 * become U+FFFD), removal of C0 controls other than TAB, of DEL and of C1
 * controls (U+0080..U+009F), so no client can inject terminal escapes, and of
 * U+2028/U+2029 and the bidi controls U+202A..U+202E, U+2066..U+2069, so no
 * line can show as two lines or be reordered in a GUI client.
 * Never: allocates, knows about sessions or the protocol.  Portable C11.
 */
#ifndef CHATRELAY_TEXT_H
#define CHATRELAY_TEXT_H

#include <stddef.h>

/* Longest line a client may send, in bytes: what the framer keeps of a raw
 * line, and what a cleaned line may hold (the one name for that limit). */
#define TEXT_MAX_LINE 1024

/* Cleans in[0..n) into out (capacity cap, always NUL-terminated, so cap >= 1).
 * Writes at most cap-1 bytes and never splits a UTF-8 character; if the cleaned
 * text did not fit, *truncated is set to 1 (else 0).  Returns the length written.
 * The output is valid UTF-8 with no control characters except TAB, and none of
 * U+2028..U+202E, U+2066..U+2069. */
size_t text_clean(const char *in, size_t n, char *out, size_t cap, int *truncated);

/* The same, but the C0 control byte `keep` (not NUL) is copied, not removed:
 * the IRC dialect's CTCP delimiter 0x01, which it consumes before any text
 * reaches another client. */
size_t text_clean_keeping(const char *in, size_t n, char *out, size_t cap, int *truncated,
                          unsigned char keep);

/* Largest k <= n such that s[0..k) does not end inside a UTF-8 sequence
 * (s is assumed to be valid UTF-8, e.g. text_clean output). */
size_t text_utf8_boundary(const char *s, size_t n);

/* 1 if s[0..n) is all spaces/TABs (an "empty" chat line). */
int text_is_blank(const char *s, size_t n);

#endif

/* framing: a session's byte stream -> lines.
 *
 * Owns: line ends (LF, CRLF, CR NUL and bare CR), the telnet protocol (IAC
 * commands and subnegotiations are removed, even when split across reads;
 * DO/WILL are refused with WONT/DONT), BS/DEL line editing, and the maximum
 * line length (TEXT_MAX_LINE raw bytes: the rest of an over-long line is
 * discarded up to its end, and the line is reported as truncated, cut at a
 * UTF-8 character boundary).
 * Never: allocates, cleans text (see text.h), knows about sessions.  Portable C11.
 * Memory: one framer per session, sizeof(framer) stays near 1.1 KiB.
 */
#ifndef CHATRELAY_FRAMING_H
#define CHATRELAY_FRAMING_H

#include <stddef.h>
#include <stdint.h>

#include "text.h"   /* TEXT_MAX_LINE: the one line limit, raw and cleaned */

enum {
    FRAMER_LINE_TRUNCATED = 1 /* the client sent more than TEXT_MAX_LINE bytes on this line */
};

/* Called once per complete line, without its line end.  line is not
 * NUL-terminated and is valid only during the call. */
typedef void (*framer_line_fn)(void *ctx, const char *line, size_t len, unsigned flags);
/* Called with telnet negotiation replies (WONT/DONT) to send back to the client. */
typedef void (*framer_reply_fn)(void *ctx, const unsigned char *bytes, size_t len);

typedef struct framer {
    uint16_t len;           /* bytes in line[] */
    uint8_t state;          /* telnet / line-end parser state (private) */
    uint8_t flags;          /* private */
    uint8_t opt_cmd;        /* private: pending telnet command */
    unsigned char line[TEXT_MAX_LINE];
} framer;

void framer_init(framer *f);

/* Feeds n bytes; calls on_line for every complete line and on_reply for
 * every telnet reply, in order.  Bytes after the last line end stay buffered
 * for the next call.  on_reply may be NULL (replies are then dropped). */
void framer_feed(framer *f, const unsigned char *data, size_t n,
                 framer_line_fn on_line, framer_reply_fn on_reply, void *ctx);

#endif

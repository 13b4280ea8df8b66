/* framing: a session's byte stream -> lines.
 *
 * One pass over the input with a tiny state machine; every state lives in the
 * framer, so a telnet sequence or a CR LF split at any byte between two
 * framer_feed calls gives the same lines and replies as one call.
 *
 * Line ends: LF, CR LF, CR NUL and bare CR.  A CR ends the line at once (a
 * client that sends only CR is not kept waiting); an LF or NUL right after it
 * is swallowed, also when it arrives in the next feed or after telnet
 * commands (they are out of band).
 *
 * Telnet: we never enable any option, so every DO x gets WONT x and every
 * WILL x gets DONT x; DONT and WONT agree with our state and get no answer,
 * so two peers can never loop.  IAC IAC is a literal 0xFF data byte (text_clean
 * later turns it into U+FFFD).  IAC EC and IAC EL edit the line like BS and
 * Ctrl-U; every other two-byte command is dropped.  A subnegotiation
 * (IAC SB ... IAC SE) is dropped whole; since we refused every option a real
 * client sends none, so one that runs past SB_MAX_BYTES without IAC SE (or
 * that has IAC + a byte other than IAC/SE inside) is taken as a broken raw
 * client and the stream returns to data instead of swallowing the session.
 *
 * Over-long lines: when a data byte arrives with line[] full, the line is
 * reported at once with FRAMER_LINE_TRUNCATED, cut back to a UTF-8 character
 * boundary, and everything up to the next line end is discarded.
 *
 * Speed: plain text (no CR, LF, NUL, BS, DEL, IAC) is found eight bytes at a
 * time and copied with memcpy; a line that starts and ends inside one feed is
 * handed to on_line straight from the caller's buffer without a copy.
 */
#include "framing.h"

#include "text.h"

#include <string.h>

enum {
    TELNET_SE = 240,
    TELNET_EL = 248,
    TELNET_EC = 247,
    TELNET_SB = 250,
    TELNET_WILL = 251,
    TELNET_WONT = 252,
    TELNET_DO = 253,
    TELNET_DONT = 254,
    TELNET_IAC = 255
};

/* f->state */
enum {
    ST_DATA = 0,
    ST_IAC,         /* got IAC */
    ST_OPTION,      /* got IAC DO/DONT/WILL/WONT (kept in opt_cmd), the option byte is next */
    ST_SB,          /* inside IAC SB ...; opt_cmd counts its bytes */
    ST_SB_IAC       /* got IAC inside a subnegotiation */
};

/* f->flags */
enum {
    FL_AFTER_CR = 1,    /* the last data byte was a CR: a following LF or NUL belongs to it */
    FL_DISCARDING = 2   /* the current line was too long and already reported */
};

#define SB_MAX_BYTES 255 /* opt_cmd is a uint8_t counter */

static const unsigned char special_byte[256] = {
    [0x00] = 1, [0x08] = 1, ['\n'] = 1, ['\r'] = 1, [0x7F] = 1, [0xFF] = 1
};

/* Length of the leading run of bytes that need no attention: no CR, LF, NUL,
 * BS, DEL or IAC.  Word at a time: the three masks flag bytes < 0x0E (which
 * covers NUL, BS, LF, CR and a few harmless ones such as TAB), bytes == 0x7F
 * and bytes == 0xFF; a flagged word is finished byte by byte. */
static size_t plain_run(const unsigned char *p, size_t n)
{
    const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
    size_t i = 0;

    while (n - i >= 8) {
        uint64_t w, low, del, iac;
        memcpy(&w, p + i, 8);
        low = (w - ones * 0x0E) & ~w & highs;
        del = ((w ^ (ones * 0x7F)) - ones) & ~(w ^ (ones * 0x7F)) & highs;
        iac = (~w - ones) & w & highs;
        if (low | del | iac) break;
        i += 8;
    }
    while (i < n && !special_byte[p[i]]) i++;
    return i;
}

void framer_init(framer *f)
{
    f->len = 0;
    f->state = ST_DATA;
    f->flags = 0;
    f->opt_cmd = 0;
}

/* The line is full and another data byte arrived: report it cut at a character boundary. */
static void report_truncated(framer *f, framer_line_fn on_line, void *ctx)
{
    size_t keep = text_utf8_boundary((const char *)f->line, f->len);
    f->len = 0;
    f->flags |= FL_DISCARDING;
    on_line(ctx, (const char *)f->line, keep, FRAMER_LINE_TRUNCATED);
}

static void append_data(framer *f, const unsigned char *p, size_t n, framer_line_fn on_line, void *ctx)
{
    size_t room;

    f->flags &= (uint8_t)~FL_AFTER_CR;
    if (f->flags & FL_DISCARDING) return;
    room = TEXT_MAX_LINE - f->len;
    if (n > room) {
        memcpy(f->line + f->len, p, room);
        f->len = TEXT_MAX_LINE;
        report_truncated(f, on_line, ctx);
        return;
    }
    memcpy(f->line + f->len, p, n);
    f->len = (uint16_t)(f->len + n);
}

static void end_line(framer *f, framer_line_fn on_line, void *ctx)
{
    size_t len = f->len;
    f->len = 0;
    if (f->flags & FL_DISCARDING) {
        f->flags &= (uint8_t)~FL_DISCARDING;
        return;
    }
    on_line(ctx, (const char *)f->line, len, 0);
}

/* Bytes a UTF-8 lead byte announces (2..4); 1 for anything that cannot lead. */
static size_t utf8_length(unsigned char lead)
{
    if (lead >= 0xC0 && lead < 0xE0) return 2;
    if (lead >= 0xE0 && lead < 0xF0) return 3;
    if (lead >= 0xF0 && lead < 0xF8) return 4;
    return 1;
}

/* BS, DEL, IAC EC: removes the last character.  A complete or still
 * incomplete multi-byte sequence at the end goes as one; a stray
 * continuation byte goes alone. */
static void erase_char(framer *f)
{
    size_t len = f->len, lead;
    if ((f->flags & FL_DISCARDING) || len == 0) return;
    lead = len - 1;
    while (lead > 0 && len - lead < 4 && (f->line[lead] & 0xC0) == 0x80) lead--;
    if (len - lead <= utf8_length(f->line[lead])) f->len = (uint16_t)lead;
    else f->len = (uint16_t)(len - 1);
}

static void reply(framer_reply_fn on_reply, void *ctx, unsigned char command, unsigned char option)
{
    unsigned char bytes[3];
    if (!on_reply) return;
    bytes[0] = TELNET_IAC;
    bytes[1] = command;
    bytes[2] = option;
    on_reply(ctx, bytes, sizeof bytes);
}

/* One byte in any telnet state (not ST_DATA).  Returns 0 if c must be looked at again in the new state. */
static int telnet_byte(framer *f, unsigned char c, framer_line_fn on_line, framer_reply_fn on_reply, void *ctx)
{
    switch (f->state) {
    case ST_IAC:
        f->state = ST_DATA;
        switch (c) {
        case TELNET_IAC:
            append_data(f, &c, 1, on_line, ctx);
            break;
        case TELNET_DO: case TELNET_DONT: case TELNET_WILL: case TELNET_WONT:
            f->opt_cmd = c;
            f->state = ST_OPTION;
            break;
        case TELNET_SB:
            f->opt_cmd = 0;
            f->state = ST_SB;
            break;
        case TELNET_EC:
            erase_char(f);
            break;
        case TELNET_EL:
            if (!(f->flags & FL_DISCARDING)) f->len = 0;
            break;
        default: /* NOP, GA, AYT, IP, DM, a stray SE, ...: nothing to do */
            break;
        }
        return 1;
    case ST_OPTION:
        if (f->opt_cmd == TELNET_DO) reply(on_reply, ctx, TELNET_WONT, c);
        else if (f->opt_cmd == TELNET_WILL) reply(on_reply, ctx, TELNET_DONT, c);
        f->opt_cmd = 0;
        f->state = ST_DATA;
        return 1;
    case ST_SB:
        if (c == TELNET_IAC) f->state = ST_SB_IAC;
        else if (++f->opt_cmd == SB_MAX_BYTES) f->state = ST_DATA;
        return 1;
    case ST_SB_IAC:
        if (c == TELNET_SE) {
            f->state = ST_DATA;
        } else if (c == TELNET_IAC) { /* escaped 0xFF inside the subnegotiation */
            f->state = (++f->opt_cmd == SB_MAX_BYTES) ? ST_DATA : ST_SB;
        } else { /* malformed: the subnegotiation is over, c is a command after IAC */
            f->state = ST_IAC;
            return 0;
        }
        return 1;
    default: /* unreachable; recover rather than stall */
        f->state = ST_DATA;
        return 0;
    }
}

void framer_feed(framer *f, const unsigned char *data, size_t n,
                 framer_line_fn on_line, framer_reply_fn on_reply, void *ctx)
{
    const unsigned char *p, *end;

    if (n == 0) return; /* data may then be NULL, and NULL + 0 is undefined in C */
    p = data;
    end = data + n;
    while (p < end) {
        unsigned char c;

        if (f->state != ST_DATA) {
            if (telnet_byte(f, *p, on_line, on_reply, ctx)) p++;
            continue;
        }

        {
            size_t run = plain_run(p, (size_t)(end - p));
            if (run > 0) {
                if (f->len == 0 && !(f->flags & FL_DISCARDING) && run <= TEXT_MAX_LINE &&
                    run < (size_t)(end - p) && (p[run] == '\n' || p[run] == '\r')) {
                    /* the whole line is in the caller's buffer: no copy */
                    f->flags &= (uint8_t)~FL_AFTER_CR;
                    on_line(ctx, (const char *)p, run, 0);
                    p += run;
                    c = *p++;
                    if (c == '\r') f->flags |= FL_AFTER_CR;
                    continue;
                }
                append_data(f, p, run, on_line, ctx);
                p += run;
                if (p == end) break;
            }
        }

        c = *p++;
        switch (c) {
        case '\n':
        case 0:
            if (f->flags & FL_AFTER_CR) f->flags &= (uint8_t)~FL_AFTER_CR;
            else if (c == '\n') end_line(f, on_line, ctx);
            else append_data(f, &c, 1, on_line, ctx); /* a lone NUL is data; text_clean drops it */
            break;
        case '\r':
            f->flags &= (uint8_t)~FL_AFTER_CR;
            end_line(f, on_line, ctx);
            f->flags |= FL_AFTER_CR;
            break;
        case 0x08:
        case 0x7F:
            f->flags &= (uint8_t)~FL_AFTER_CR;
            erase_char(f);
            break;
        case TELNET_IAC:
            f->state = ST_IAC;
            break;
        default: /* plain_run stopped here, so this cannot happen; treat as data */
            append_data(f, &c, 1, on_line, ctx);
            break;
        }
    }
}

/* nats: the NATS client protocol's wire format.  See nats.h; the protocol
 * is nats.docs "reference/nats-protocol/nats-protocol" (and
 * /work/shared/NATS-NOTES.md for the facts this relies on).
 *
 * The parser keeps unconsumed bytes in one buffer: a control line
 * (at most NATS_CONTROL_MAX bytes) and, for MSG/HMSG, its payload and CRLF.
 * A message is handed to the callback only when it is whole, with pointers
 * into that buffer, valid until the callback returns.
 */
#include "nats.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void set_error(nats_parser *p, const char *what)
{
    snprintf(p->error, sizeof p->error, "%s", what);
}

void nats_parser_init(nats_parser *p, size_t max_payload)
{
    memset(p, 0, sizeof *p);
    p->max_payload = max_payload;
}

void nats_parser_free(nats_parser *p)
{
    free(p->buf);
    memset(p, 0, sizeof *p);
}

static char lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/* The op word at line[0..n) equals lower-case word. */
static int op_is(const char *line, size_t n, const char *word)
{
    size_t k = strlen(word);
    if (n < k)
        return 0;
    for (size_t i = 0; i < k; i++)
        if (lower(line[i]) != word[i])
            return 0;
    return n == k || line[k] == ' ' || line[k] == '\t';
}

/* Splits line into blank-separated tokens (at most max). */
static size_t tokens(const char *line, size_t n, const char **tok, size_t *len, size_t max)
{
    size_t count = 0, i = 0;
    while (i < n) {
        while (i < n && (line[i] == ' ' || line[i] == '\t'))
            i++;
        if (i == n)
            break;
        size_t start = i;
        while (i < n && line[i] != ' ' && line[i] != '\t')
            i++;
        if (count == max)
            return max + 1;   /* too many */
        tok[count] = line + start;
        len[count] = i - start;
        count++;
    }
    return count;
}

/* A decimal without sign, at most 19 digits. */
static int number(const char *s, size_t n, uint64_t *out)
{
    uint64_t v = 0;
    if (n == 0 || n > 19)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return 0;
}

/* One message at b[0..avail): its length in *used (1), 0 if more bytes
 * are needed, -1 for a protocol error. */
static int parse_one(nats_parser *p, const char *b, size_t avail, nats_msg *m, size_t *used)
{
    const char *lf = memchr(b, '\n', avail < NATS_CONTROL_MAX + 2 ? avail : NATS_CONTROL_MAX + 2);
    if (!lf) {
        if (avail > NATS_CONTROL_MAX + 1) {
            set_error(p, "a control line longer than 4096 bytes");
            return -1;
        }
        return 0;
    }
    size_t line_len = (size_t)(lf - b);
    size_t after = line_len + 1;
    if (line_len > 0 && b[line_len - 1] == '\r')
        line_len--;
    memset(m, 0, sizeof *m);
    if (op_is(b, line_len, "ping")) {
        m->op = NATS_PING;
    } else if (op_is(b, line_len, "pong")) {
        m->op = NATS_PONG;
    } else if (op_is(b, line_len, "+ok")) {
        m->op = NATS_OK;
    } else if (op_is(b, line_len, "-err")) {
        m->op = NATS_ERR;
        const char *t = b + 4;
        size_t tn = line_len - 4;
        while (tn > 0 && (*t == ' ' || *t == '\t'))
            t++, tn--;
        if (tn >= 2 && t[0] == '\'' && t[tn - 1] == '\'')
            t++, tn -= 2;
        m->text = t;
        m->text_len = tn;
    } else if (op_is(b, line_len, "info")) {
        m->op = NATS_INFO;
        m->text = b + 5 <= b + line_len ? b + 5 : b + line_len;
        m->text_len = line_len >= 5 ? line_len - 5 : 0;
    } else if (op_is(b, line_len, "msg") || op_is(b, line_len, "hmsg")) {
        int with_headers = lower(b[0]) == 'h';
        const char *tok[6];
        size_t len[6];
        size_t nt = tokens(b, line_len, tok, len, 6);
        uint64_t hdr = 0, total = 0;
        /* MSG subj sid [reply] n  |  HMSG subj sid [reply] hdr total */
        size_t need = with_headers ? 5 : 4;
        if (nt != need && nt != need + 1) {
            set_error(p, with_headers ? "HMSG with the wrong number of fields" : "MSG with the wrong number of fields");
            return -1;
        }
        int has_reply = nt == need + 1;
        if (number(tok[2], len[2], &m->sid) != 0 ||
            number(tok[nt - 1], len[nt - 1], &total) != 0 ||
            (with_headers && (number(tok[nt - 2], len[nt - 2], &hdr) != 0 || hdr > total))) {
            set_error(p, "a message whose sizes or sid are not numbers");
            return -1;
        }
        if (total > p->max_payload) {
            set_error(p, "a message larger than the largest payload allowed");
            return -1;
        }
        if (avail < after + total + 2)
            return 0;   /* the payload is still coming */
        const char *payload = b + after;
        if (payload[total] != '\r' || payload[total + 1] != '\n') {
            set_error(p, "a message payload not followed by CRLF");
            return -1;
        }
        m->op = NATS_MSG;
        m->subject = tok[1];
        m->subject_len = len[1];
        if (has_reply) {
            m->reply = tok[3];
            m->reply_len = len[3];
        } else {
            m->reply = "";
        }
        m->headers = payload;
        m->headers_len = (size_t)hdr;
        m->payload = payload + hdr;
        m->payload_len = (size_t)(total - hdr);
        after += (size_t)total + 2;
    } else {
        set_error(p, "an unknown protocol operation");
        return -1;
    }
    *used = after;
    return 1;
}

int nats_feed(nats_parser *p, const void *data, size_t n, nats_msg_fn fn, void *ctx)
{
    if (p->error[0])
        return -1;
    if (p->len + n > p->cap) {
        size_t ncap = p->cap ? p->cap : 4096;
        while (ncap < p->len + n)
            ncap *= 2;
        if (ncap > p->max_payload + NATS_CONTROL_MAX + 4 && p->len + n <= p->max_payload + NATS_CONTROL_MAX + 4)
            ncap = p->max_payload + NATS_CONTROL_MAX + 4;
        char *nb = realloc(p->buf, ncap);
        if (!nb) {
            set_error(p, "out of memory");
            return -1;
        }
        p->buf = nb;
        p->cap = ncap;
    }
    if (n > 0) {
        memcpy(p->buf + p->len, data, n);
        p->len += n;
    }
    size_t off = 0;
    int rc = 0;
    while (off < p->len) {
        nats_msg m;
        size_t used = 0;
        int r = parse_one(p, p->buf + off, p->len - off, &m, &used);
        if (r < 0)
            return -1;
        if (r == 0)
            break;
        off += used;
        rc = fn(ctx, &m);   /* m points into the buffer: it moves only below */
        if (rc != 0)
            break;
    }
    if (off > 0) {
        memmove(p->buf, p->buf + off, p->len - off);
        p->len -= off;
    }
    return rc;
}

/* ---- writers ---- */

static int token_ok(const char *s)
{
    if (!s || !*s)
        return 0;
    for (; *s; s++)
        if (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n')
            return 0;
    return 1;
}

typedef struct out_buf {
    char *p;
    size_t len, cap;
    int full;
} out_buf;

static void put(out_buf *o, const void *s, size_t n)
{
    if (o->full || n > o->cap - o->len) {
        o->full = 1;
        return;
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

static void puts_(out_buf *o, const char *s)
{
    put(o, s, strlen(s));
}

static void put_u64(out_buf *o, uint64_t v)
{
    char d[24];
    int n = snprintf(d, sizeof d, "%llu", (unsigned long long)v);
    put(o, d, (size_t)n);
}

/* A JSON string literal. */
static void put_json(out_buf *o, const char *s)
{
    put(o, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            char e[2] = { '\\', (char)c };
            put(o, e, 2);
        } else if (c < 0x20) {
            char e[8];
            int n = snprintf(e, sizeof e, "\\u%04x", c);
            put(o, e, (size_t)n);
        } else {
            put(o, &c, 1);
        }
    }
    put(o, "\"", 1);
}

static size_t done(out_buf *o)
{
    return o->full ? 0 : o->len;
}

size_t nats_write_connect(char *out, size_t cap, const char *name, const char *user, const char *pass,
                          const char *token)
{
    out_buf o = { out, 0, cap, 0 };
    /* verbose off (no +OK per command), echo off (not our own publishes back),
     * headers on (HPUB, for Nats-Msg-Id), no_responders on (a request nobody
     * serves, such as a pull from a consumer that is gone, is answered with
     * a 503 status at once instead of never) */
    puts_(&o, "CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false,\"headers\":true,"
              "\"no_responders\":true,\"protocol\":1,"
              "\"lang\":\"c\",\"version\":\"chatrelay\"");
    if (name) {
        puts_(&o, ",\"name\":");
        put_json(&o, name);
    }
    if (user) {
        puts_(&o, ",\"user\":");
        put_json(&o, user);
    }
    if (pass) {
        puts_(&o, ",\"pass\":");
        put_json(&o, pass);
    }
    if (token) {
        puts_(&o, ",\"auth_token\":");
        put_json(&o, token);
    }
    puts_(&o, "}\r\n");
    return done(&o);
}

size_t nats_write_pub(char *out, size_t cap, const char *subject, const char *reply, const char *msg_id,
                      const void *payload, size_t payload_len)
{
    out_buf o = { out, 0, cap, 0 };
    if (!token_ok(subject) || (reply && !token_ok(reply)) || (msg_id && (strchr(msg_id, '\r') || strchr(msg_id, '\n'))))
        return 0;
    if (!msg_id) {
        puts_(&o, "PUB ");
        puts_(&o, subject);
        if (reply) {
            puts_(&o, " ");
            puts_(&o, reply);
        }
        puts_(&o, " ");
        put_u64(&o, payload_len);
        puts_(&o, "\r\n");
    } else {
        /* headers block: "NATS/1.0\r\nNats-Msg-Id: <id>\r\n\r\n" */
        size_t hdr = strlen("NATS/1.0\r\nNats-Msg-Id: ") + strlen(msg_id) + 4;
        puts_(&o, "HPUB ");
        puts_(&o, subject);
        if (reply) {
            puts_(&o, " ");
            puts_(&o, reply);
        }
        puts_(&o, " ");
        put_u64(&o, hdr);
        puts_(&o, " ");
        put_u64(&o, hdr + payload_len);
        puts_(&o, "\r\nNATS/1.0\r\nNats-Msg-Id: ");
        puts_(&o, msg_id);
        puts_(&o, "\r\n\r\n");
    }
    put(&o, payload, payload_len);
    puts_(&o, "\r\n");
    return done(&o);
}

size_t nats_write_sub(char *out, size_t cap, const char *subject, uint64_t sid)
{
    out_buf o = { out, 0, cap, 0 };
    if (!token_ok(subject))
        return 0;
    puts_(&o, "SUB ");
    puts_(&o, subject);
    puts_(&o, " ");
    put_u64(&o, sid);
    puts_(&o, "\r\n");
    return done(&o);
}

size_t nats_write_unsub(char *out, size_t cap, uint64_t sid)
{
    out_buf o = { out, 0, cap, 0 };
    puts_(&o, "UNSUB ");
    put_u64(&o, sid);
    puts_(&o, "\r\n");
    return done(&o);
}

size_t nats_write_ping(char *out, size_t cap)
{
    out_buf o = { out, 0, cap, 0 };
    puts_(&o, "PING\r\n");
    return done(&o);
}

size_t nats_write_pong(char *out, size_t cap)
{
    out_buf o = { out, 0, cap, 0 };
    puts_(&o, "PONG\r\n");
    return done(&o);
}

int nats_ack_stream_seq(const char *reply, size_t len, uint64_t *seq)
{
    return nats_ack_parse(reply, len, seq, NULL, NULL);
}

int nats_ack_parse(const char *reply, size_t len, uint64_t *seq, const char **consumer, size_t *consumer_len)
{
    const char *tok[16];
    size_t tl[16], nt = 0, start = 0;
    for (size_t i = 0; i <= len && nt < 16; i++) {
        if (i == len || reply[i] == '.') {
            tok[nt] = reply + start;
            tl[nt] = i - start;
            nt++;
            start = i + 1;
        }
    }
    if (nt < 9 || tl[0] != 3 || memcmp(tok[0], "$JS", 3) != 0 || tl[1] != 3 || memcmp(tok[1], "ACK", 3) != 0)
        return -1;
    /* 9 tokens: $JS ACK stream consumer delivered sseq cseq time pending;
     * 12 or more: $JS ACK domain hash stream consumer delivered sseq ... */
    size_t at = nt == 9 ? 5 : nt >= 12 ? 7 : 0;
    if (at == 0)
        return -1;
    if (consumer) {
        *consumer = tok[at - 2];
        *consumer_len = tl[at - 2];
    }
    return number(tok[at], tl[at], seq);
}

/* Header lines are "Name: value" after the "NATS/1.0[ status]" line; names
 * compare without regard to case (they are MIME-style). */
int nats_header(const char *headers, size_t len, const char *name, const char **val, size_t *val_len)
{
    size_t name_len = strlen(name), i = 0;
    /* skip the status line */
    while (i < len && headers[i] != '\n')
        i++;
    while (++i < len) {
        size_t start = i;
        while (i < len && headers[i] != '\n')
            i++;
        size_t end = i;   /* at the LF or len */
        if (end > start && headers[end - 1] == '\r')
            end--;
        if (end - start > name_len && headers[start + name_len] == ':') {
            size_t k = 0;
            while (k < name_len && lower(headers[start + k]) == lower(name[k]))
                k++;
            if (k == name_len) {
                size_t v = start + name_len + 1;
                while (v < end && (headers[v] == ' ' || headers[v] == '\t'))
                    v++;
                *val = headers + v;
                *val_len = end - v;
                return 0;
            }
        }
    }
    return -1;
}

int nats_status(const char *headers, size_t len)
{
    /* "NATS/1.0 408 Request Timeout" */
    if (len < 12 || memcmp(headers, "NATS/1.0 ", 9) != 0)
        return 0;
    int code = 0;
    for (size_t i = 9; i < 12; i++) {
        if (headers[i] < '0' || headers[i] > '9')
            return 0;
        code = code * 10 + (headers[i] - '0');
    }
    if (len > 12 && headers[12] != ' ' && headers[12] != '\r' && headers[12] != '\n')
        return 0;
    return code;
}

/* The NATS wire format (core/nats.c): every server operation parsed whole,
 * byte by byte and in random pieces to the same messages; the protocol
 * errors that must close a connection; the client commands' exact bytes;
 * the stream sequence of a JetStream ack subject. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "nats.h"

/* What the callback saw, as one text per message: "OP|subject|sid|reply|headers|payload|text\n". */
static char seen[65536];
static size_t seen_len;

static int record(void *ctx, const nats_msg *m)
{
    static const char *const names[] = { "INFO", "MSG", "PING", "PONG", "OK", "ERR" };
    (void)ctx;
    seen_len += (size_t)snprintf(seen + seen_len, sizeof seen - seen_len, "%s|%.*s|%llu|%.*s|%.*s|%.*s|%.*s\n",
                                 names[m->op], (int)m->subject_len, m->subject ? m->subject : "",
                                 (unsigned long long)m->sid, (int)m->reply_len, m->reply ? m->reply : "",
                                 (int)m->headers_len, m->headers ? m->headers : "", (int)m->payload_len,
                                 m->payload ? m->payload : "", (int)m->text_len, m->text ? m->text : "");
    return 0;
}

static const char STREAM[] =
    "INFO {\"server_id\":\"x\",\"headers\":true,\"max_payload\":1048576}\r\n"
    "PING\r\n"
    "MSG chat.lobby 7 12\r\nhello\r\nworld\r\n"
    "msg chat.lobby 7 $JS.ACK.CHAT.node1.1.42.42.1733050000000000000.0 0\r\n\r\n"
    "HMSG chat.x 9 _INBOX.r 18 23\r\nNATS/1.0\r\nA: b\r\n\r\nhello\r\n"
    "+OK\r\n"
    "PONG\n"
    "-ERR 'Stale Connection'\r\n";

static const char EXPECTED[] =
    "INFO||0||||{\"server_id\":\"x\",\"headers\":true,\"max_payload\":1048576}\n"
    "PING||0||||\n"
    "MSG|chat.lobby|7|||hello\r\nworld|\n"
    "MSG|chat.lobby|7|$JS.ACK.CHAT.node1.1.42.42.1733050000000000000.0|||\n"
    "MSG|chat.x|9|_INBOX.r|NATS/1.0\r\nA: b\r\n\r\n|hello|\n"
    "OK||0||||\n"
    "PONG||0||||\n"
    "ERR||0||||Stale Connection\n";

static void feed_in_pieces(const char *data, size_t n, const size_t *cuts, size_t ncuts)
{
    nats_parser p;
    nats_parser_init(&p, 1 << 20);
    seen_len = 0;
    seen[0] = '\0';
    size_t from = 0;
    for (size_t i = 0; i <= ncuts; i++) {
        size_t to = i < ncuts ? cuts[i] : n;
        CHECK_INT(nats_feed(&p, data + from, to - from, record, NULL), 0);
        from = to;
    }
    CHECK_INT(p.len, 0);
    nats_parser_free(&p);
}

static void test_parse(void)
{
    size_t n = sizeof STREAM - 1;
    feed_in_pieces(STREAM, n, NULL, 0);
    CHECK_STR(seen, EXPECTED);
    /* one byte at a time */
    size_t *cuts = malloc(n * sizeof *cuts);
    for (size_t i = 0; i + 1 < n; i++)
        cuts[i] = i + 1;
    feed_in_pieces(STREAM, n, cuts, n - 1);
    CHECK_STR(seen, EXPECTED);
    /* random pieces */
    srand(7);
    for (int round = 0; round < 200; round++) {
        size_t k = (size_t)(rand() % 12), c[12];
        for (size_t i = 0; i < k; i++)
            c[i] = (size_t)rand() % (n + 1);
        for (size_t i = 1; i < k; i++)   /* ascending */
            for (size_t j = i; j > 0 && c[j - 1] > c[j]; j--) {
                size_t t = c[j];
                c[j] = c[j - 1];
                c[j - 1] = t;
            }
        feed_in_pieces(STREAM, n, c, k);
        if (strcmp(seen, EXPECTED) != 0) {
            CHECK_STR(seen, EXPECTED);
            break;
        }
    }
    free(cuts);
}

static void expect_error(const char *data, const char *why, size_t max_payload)
{
    nats_parser p;
    nats_parser_init(&p, max_payload);
    seen_len = 0;
    CHECK_INT(nats_feed(&p, data, strlen(data), record, NULL), -1);
    if (strcmp(p.error, why) != 0)
        fprintf(stderr, "for %.40s\n", data);
    CHECK_STR(p.error, why);
    CHECK_INT(nats_feed(&p, "PING\r\n", 6, record, NULL), -1);   /* broken for good */
    nats_parser_free(&p);
}

static void test_errors(void)
{
    expect_error("HELLO\r\n", "an unknown protocol operation", 1024);
    expect_error("MSG a b 3\r\nabc\r\n", "a message whose sizes or sid are not numbers", 1024);
    expect_error("MSG a 1 -3\r\n", "a message whose sizes or sid are not numbers", 1024);
    expect_error("MSG a 1 x y 3\r\nabc\r\n", "MSG with the wrong number of fields", 1024);
    expect_error("HMSG a 1 3\r\nabc\r\n", "HMSG with the wrong number of fields", 1024);
    expect_error("HMSG a 1 9 3\r\nabc\r\n", "a message whose sizes or sid are not numbers", 1024);
    expect_error("MSG a 1 2000\r\n", "a message larger than the largest payload allowed", 1024);
    expect_error("MSG a 1 3\r\nabcd\r\n", "a message payload not followed by CRLF", 1024);
    char longline[5000];
    memset(longline, 'x', sizeof longline);
    memcpy(longline, "INFO ", 5);
    longline[sizeof longline - 1] = '\0';
    expect_error(longline, "a control line longer than 4096 bytes", 1024);
}

static int stop_at_first(void *ctx, const nats_msg *m)
{
    (void)m;
    ++*(int *)ctx;
    return 5;
}

/* A callback's non-zero stops the feed and keeps the rest for later. */
static void test_stop(void)
{
    nats_parser p;
    int calls = 0;
    nats_parser_init(&p, 1024);
    CHECK_INT(nats_feed(&p, "PING\r\nPONG\r\n", 12, stop_at_first, &calls), 5);
    CHECK_INT(calls, 1);
    CHECK_INT(p.len, 6);                      /* "PONG\r\n" waits */
    seen_len = 0;
    CHECK_INT(nats_feed(&p, "", 0, record, NULL), 0);
    CHECK_STR(seen, "PONG||0||||\n");
    nats_parser_free(&p);
}

static void test_writers(void)
{
    char out[512];
    size_t n = nats_write_connect(out, sizeof out, "relay \"a\"\n", "u", NULL, NULL);
    out[n] = '\0';
    CHECK_STR(out, "CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false,\"headers\":true,\"no_responders\":true,\"protocol\":1,"
                   "\"lang\":\"c\",\"version\":\"chatrelay\",\"name\":\"relay \\\"a\\\"\\u000a\",\"user\":\"u\"}\r\n");
    n = nats_write_pub(out, sizeof out, "chat.lobby", "_INBOX.1", NULL, "hi", 2);
    out[n] = '\0';
    CHECK_STR(out, "PUB chat.lobby _INBOX.1 2\r\nhi\r\n");
    n = nats_write_pub(out, sizeof out, "chat.lobby", NULL, "node1-42", "hi", 2);
    out[n] = '\0';
    CHECK_STR(out, "HPUB chat.lobby 35 37\r\nNATS/1.0\r\nNats-Msg-Id: node1-42\r\n\r\nhi\r\n");
    /* the header size counts exactly the header block */
    CHECK_INT(strlen("NATS/1.0\r\nNats-Msg-Id: node1-42\r\n\r\n"), 35);
    /* what a server would deliver for it parses back to the same headers and payload */
    nats_parser p;
    nats_parser_init(&p, 1024);
    seen_len = 0;
    const char *deliver = "HMSG chat.lobby 1 35 37\r\nNATS/1.0\r\nNats-Msg-Id: node1-42\r\n\r\nhi\r\n";
    CHECK_INT(nats_feed(&p, deliver, strlen(deliver), record, NULL), 0);
    CHECK_STR(seen, "MSG|chat.lobby|1||NATS/1.0\r\nNats-Msg-Id: node1-42\r\n\r\n|hi|\n");
    nats_parser_free(&p);
    CHECK_INT(nats_write_pub(out, sizeof out, "bad subject", NULL, NULL, "x", 1), 0);
    CHECK_INT(nats_write_pub(out, sizeof out, "", NULL, NULL, "x", 1), 0);
    CHECK_INT(nats_write_pub(out, sizeof out, "a", "r\r\n", NULL, "x", 1), 0);
    CHECK_INT(nats_write_pub(out, sizeof out, "a", NULL, "id\r\nX: y", "x", 1), 0);
    CHECK_INT(nats_write_pub(out, 10, "chat.lobby", NULL, NULL, "too long for ten", 16), 0);
    n = nats_write_sub(out, sizeof out, "chat.>", 3);
    out[n] = '\0';
    CHECK_STR(out, "SUB chat.> 3\r\n");
    n = nats_write_unsub(out, sizeof out, 3);
    out[n] = '\0';
    CHECK_STR(out, "UNSUB 3\r\n");
    CHECK_INT(nats_write_ping(out, sizeof out), 6);
    CHECK_INT(nats_write_pong(out, 5), 0);
}

static void test_ack_subject(void)
{
    uint64_t seq = 0;
    const char *v1 = "$JS.ACK.CHAT.node1.1.42.40.1733050000000000000.3";
    CHECK_INT(nats_ack_stream_seq(v1, strlen(v1), &seq), 0);
    CHECK_INT(seq, 42);
    const char *v2 = "$JS.ACK.hub.ACCHASH.CHAT.node1.2.77.70.1733050000000000000.0.rand";
    CHECK_INT(nats_ack_stream_seq(v2, strlen(v2), &seq), 0);
    CHECK_INT(seq, 77);
    CHECK_INT(nats_ack_stream_seq("_INBOX.x.y", 10, &seq), -1);
    CHECK_INT(nats_ack_stream_seq("$JS.ACK.a.b.c", 13, &seq), -1);
    const char *bad = "$JS.ACK.CHAT.node1.1.4x2.40.17.3";
    CHECK_INT(nats_ack_stream_seq(bad, strlen(bad), &seq), -1);
}

/* Bytes nats-server 2.9.10 sent (captured with JetStream on: a PubAck to an
 * empty-reply MSG, written with two spaces; a pull consumer's delivery with
 * its ack subject; a 408 status when the pull expired). */
static void test_captured(void)
{
    static const char from_server[] =
        "MSG _INBOX.p 1  44\r\n{\"stream\":\"CHAT\", \"seq\":1,\"duplicate\": true}\r\n"
        "HMSG chat.lobby 1 $JS.ACK.CHAT.node1.1.1.1.1796133692248201832.0 34 39\r\n"
        "NATS/1.0\r\nNats-Msg-Id: node1-1\r\n\r\nhello\r\n"
        "HMSG _INBOX.p 1  81 81\r\nNATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 4\r\n"
        "Nats-Pending-Bytes: 0\r\n\r\n\r\n";
    feed_in_pieces(from_server, sizeof from_server - 1, NULL, 0);
    CHECK_STR(seen,
              "MSG|_INBOX.p|1|||{\"stream\":\"CHAT\", \"seq\":1,\"duplicate\": true}|\n"
              "MSG|chat.lobby|1|$JS.ACK.CHAT.node1.1.1.1.1796133692248201832.0|NATS/1.0\r\nNats-Msg-Id: node1-1\r\n\r\n|hello|\n"
              "MSG|_INBOX.p|1||NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 4\r\nNats-Pending-Bytes: 0\r\n\r\n||\n");
    uint64_t seq = 0;
    const char *ack = "$JS.ACK.CHAT.node1.1.1.1.1796133692248201832.0";
    CHECK_INT(nats_ack_stream_seq(ack, strlen(ack), &seq), 0);
    CHECK_INT(seq, 1);
    const char *consumer = NULL;
    size_t consumer_len = 0;
    CHECK_INT(nats_ack_parse(ack, strlen(ack), &seq, &consumer, &consumer_len), 0);
    CHECK_MEM(consumer, consumer_len, "node1");
}

/* The header block of the captured delivery and of the captured 408. */
static void test_headers(void)
{
    static const char delivery[] = "NATS/1.0\r\nNats-Msg-Id: node1-1\r\n\r\n";
    static const char expired[] = "NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 4\r\n"
                                  "Nats-Pending-Bytes: 0\r\n\r\n";
    const char *v = NULL;
    size_t n = 0;
    CHECK_INT(nats_header(delivery, sizeof delivery - 1, "Nats-Msg-Id", &v, &n), 0);
    CHECK_INT(n, 7);
    CHECK(memcmp(v, "node1-1", 7) == 0);
    CHECK_INT(nats_header(delivery, sizeof delivery - 1, "nats-msg-id", &v, &n), 0);   /* any case */
    CHECK_INT(nats_header(delivery, sizeof delivery - 1, "Nats-Msg", &v, &n), -1);     /* not a prefix */
    CHECK_INT(nats_header(delivery, sizeof delivery - 1, "NATS/1.0", &v, &n), -1);     /* not the status line */
    CHECK_INT(nats_header(expired, sizeof expired - 1, "Nats-Pending-Messages", &v, &n), 0);
    CHECK_INT(n, 1);
    CHECK_INT(v[0], '4');
    CHECK_INT(nats_status(delivery, sizeof delivery - 1), 0);
    CHECK_INT(nats_status(expired, sizeof expired - 1), 408);
    CHECK_INT(nats_status("NATS/1.0 404\r\n\r\n", 16), 404);
    CHECK_INT(nats_status("NATS/1.0 40", 11), 0);          /* cut short */
    CHECK_INT(nats_status("NATS/1.0 4089 x\r\n", 17), 0); /* not three digits */
    /* a header block cut in the middle of a line ends the search cleanly */
    CHECK_INT(nats_header("NATS/1.0\r\nNats-Msg-Id", 21, "Nats-Msg-Id", &v, &n), -1);
}

int main(void)
{
    test_captured();
    test_headers();
    test_parse();
    test_errors();
    test_stop();
    test_writers();
    test_ack_subject();
    return check_done();
}

/* Unit test: core/cluster.c, the bus session, driven with the bytes a
 * nats-server would send (the JetStream answers' shapes as nats-server
 * 2.9.10 writes them, cut to the fields read) and checked on the bytes it
 * writes: handshake, stream check and creation, the consumer's start, pulls,
 * publishes held until ready and sent again after a reconnect, own
 * deliveries recognised, acks, gaps, and hostile input. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "cluster.h"

static char written[65536];
static size_t written_len;

/* Takes everything the cluster wants to send (as a shell whose sends all complete). */
static const char *drain(cluster *c)
{
    const void *p;
    size_t n;
    written_len = 0;
    while (cluster_output(c, &p, &n)) {
        if (written_len + n < sizeof written) {
            memcpy(written + written_len, p, n);
            written_len += n;
        }
        cluster_output_sent(c, n);
    }
    written[written_len] = '\0';
    return written;
}

static int bind_calls, bind_refuse;
static char consumer_req[2048];   /* the last CONSUMER.CREATE handshake wrote */
static char bound_created[64];

static int bind(void *ctx, const char *stream, const char *created, char *err, size_t errlen)
{
    (void)ctx;
    bind_calls++;
    CHECK_STR(stream, "CHATRELAY");
    snprintf(bound_created, sizeof bound_created, "%s", created);
    if (bind_refuse) {
        snprintf(err, errlen, "refused by the test");
        return -1;
    }
    return 0;
}

static int feed(cluster *c, const char *s)
{
    return cluster_input(c, s, strlen(s), 1000);
}

/* "MSG <subject> 1 <len>\r\n<payload>\r\n" */
static int feed_msg(cluster *c, const char *subject, const char *payload)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "MSG %s 1 %u\r\n%s\r\n", subject, (unsigned)strlen(payload), payload);
    return feed(c, buf);
}

/* a delivery of stream sequence seq with message id id */
static int feed_delivery(cluster *c, unsigned seq, const char *id, const char *payload)
{
    char hdr[256], buf[4096];
    snprintf(hdr, sizeof hdr, "NATS/1.0\r\nNats-Msg-Id: %s\r\n\r\n", id);
    snprintf(buf, sizeof buf, "HMSG chatrelay.chat 1 $JS.ACK.CHATRELAY.abc.1.%u.%u.1796133692248201832.0 %u %u\r\n%s%s\r\n",
             seq, seq, (unsigned)strlen(hdr), (unsigned)(strlen(hdr) + strlen(payload)), hdr, payload);
    return feed(c, buf);
}

static const char INFO[] =
    "INFO {\"server_id\":\"NBX\",\"server_name\":\"n-a\",\"version\":\"2.9.10\",\"proto\":1,\"headers\":true,"
    "\"max_payload\":1048576,\"jetstream\":true,\"client_id\":5}\r\n";

static void stream_info_reply(char *out, size_t cap, unsigned first, unsigned last, const char *subject)
{
    snprintf(out, cap,
             "{\"type\":\"io.nats.jetstream.api.v1.stream_info_response\",\"config\":{\"name\":\"CHATRELAY\","
             "\"subjects\":[\"%s\"],\"retention\":\"limits\",\"num_replicas\":1},"
             "\"created\":\"2026-12-01T15:00:00.123456789Z\",\"state\":{\"messages\":%u,\"first_seq\":%u,"
             "\"last_seq\":%u}}",
             subject, last >= first ? last - first + 1 : 0, first, last);
}

/* Connects and brings c to ready against a stream holding first..last. */
static void handshake(cluster *c, unsigned api_base, unsigned first, unsigned last)
{
    char subj[128], reply[1024];
    cluster_connected(c, 1000);
    CHECK_INT(feed(c, INFO), 0);
    const char *out = drain(c);
    CHECK(strstr(out, "CONNECT {") == out);
    CHECK(strstr(out, "\"name\":\"n1\"") != NULL);
    CHECK(strstr(out, "SUB _INBOX.chatrelay.n1.1000.> 1\r\n") != NULL);
    /* api_base: the request number expected, 0 = whatever the cluster counted to */
    const char *info = strstr(out, "PUB $JS.API.STREAM.INFO.CHATRELAY _INBOX.chatrelay.n1.1000.api.");
    CHECK(info != NULL);
    if (info && api_base == 0)
        api_base = (unsigned)strtoul(info + strlen("PUB $JS.API.STREAM.INFO.CHATRELAY _INBOX.chatrelay.n1.1000.api."),
                                     NULL, 10);
    snprintf(subj, sizeof subj, "PUB $JS.API.STREAM.INFO.CHATRELAY _INBOX.chatrelay.n1.1000.api.%u 0\r\n", api_base);
    CHECK(strstr(out, subj) != NULL);
    CHECK(!cluster_ready(c));
    stream_info_reply(reply, sizeof reply, first, last, "chatrelay.chat");
    snprintf(subj, sizeof subj, "_INBOX.chatrelay.n1.1000.api.%u", api_base);
    CHECK_INT(feed_msg(c, subj, reply), 0);
    out = drain(c);
    CHECK(strstr(out, "PUB $JS.API.CONSUMER.CREATE.CHATRELAY") != NULL);
    snprintf(consumer_req, sizeof consumer_req, "%s", out);
    snprintf(subj, sizeof subj, "_INBOX.chatrelay.n1.1000.api.%u", api_base + 1);
    CHECK_INT(feed_msg(c, subj, "{\"type\":\"io.nats.jetstream.api.v1.consumer_create_response\",\"name\":\"abc\","
                                "\"config\":{\"deliver_policy\":\"by_start_sequence\"}}"), 0);
    out = drain(c);
    CHECK(strstr(out, "PUB $JS.API.CONSUMER.MSG.NEXT.CHATRELAY.abc _INBOX.chatrelay.n1.1000.pull") != NULL);
}

static cluster *make(uint64_t applied)
{
    cluster_config cc;
    memset(&cc, 0, sizeof cc);
    cc.node = "n1";
    cc.token = "s3cret";
    cc.applied_seq = applied;
    cc.epoch = 1000;
    cc.bind = bind;
    cluster *c = cluster_create(&cc);
    CHECK(c != NULL);
    return c;
}

static void test_new_stream(void)
{
    cluster *c = make(0);
    cluster_connected(c, 1000);
    CHECK_INT(feed(c, INFO), 0);
    const char *out = drain(c);
    CHECK(strstr(out, "\"auth_token\":\"s3cret\"") != NULL);
    /* the stream does not exist: created, with one replica (no "cluster" in INFO) */
    CHECK_INT(feed_msg(c, "_INBOX.chatrelay.n1.1000.api.1",
                       "{\"type\":\"io.nats.jetstream.api.v1.stream_info_response\",\"error\":{\"code\":404,"
                       "\"err_code\":10059,\"description\":\"stream not found\"}}"), 0);
    out = drain(c);
    CHECK(strstr(out, "PUB $JS.API.STREAM.CREATE.CHATRELAY _INBOX.chatrelay.n1.1000.api.2") != NULL);
    CHECK(strstr(out, "\"subjects\":[\"chatrelay.chat\"]") != NULL);
    CHECK(strstr(out, "\"num_replicas\":1") != NULL);
    /* a line said meanwhile waits */
    CHECK_INT(cluster_publish(c, 1, "{\"v\":1}", 7), 0);
    CHECK(strstr(drain(c), "HPUB") == NULL);
    char reply[1024];
    stream_info_reply(reply, sizeof reply, 0, 0, "chatrelay.chat");
    bind_calls = 0;
    CHECK_INT(feed_msg(c, "_INBOX.chatrelay.n1.1000.api.2", reply), 0);
    CHECK_INT(bind_calls, 1);
    CHECK_STR(bound_created, "2026-12-01T15:00:00.123456789Z");
    out = drain(c);
    CHECK(strstr(out, "\"opt_start_seq\":1,") != NULL);
    CHECK_INT(feed_msg(c, "_INBOX.chatrelay.n1.1000.api.3", "{\"name\":\"abc\"}"), 0);
    CHECK(cluster_ready(c));   /* nothing to catch up with */
    out = drain(c);
    /* the held line goes out once ready, with its message id */
    CHECK(strstr(out, "HPUB chatrelay.chat _INBOX.chatrelay.n1.1000.ack.1 ") != NULL);
    CHECK(strstr(out, "Nats-Msg-Id: n1-1000-1\r\n") != NULL);
    /* it comes back: ours */
    CHECK_INT(feed_delivery(c, 1, "n1-1000-1", "{\"v\":1}"), 0);
    const cluster_delivery *d;
    CHECK_INT(cluster_deliveries(c, &d), 1);
    CHECK_INT(d[0].seq, 1);
    CHECK_INT(d[0].own_serial, 1);
    CHECK_INT(d[0].gap_first, 0);
    CHECK_MEM(d[0].payload, d[0].payload_len, "{\"v\":1}");
    /* another node's, and one of an earlier run of this node: not ours */
    CHECK_INT(feed_delivery(c, 2, "n2-77-1", "x"), 0);
    CHECK_INT(feed_delivery(c, 3, "n1-999-2", "y"), 0);
    CHECK_INT(feed_delivery(c, 3, "n1-999-2", "y"), 0);   /* delivered again: ignored */
    CHECK_INT(cluster_deliveries(c, &d), 3);
    CHECK_INT(d[1].own_serial, 0);
    CHECK_INT(d[2].own_serial, 0);
    cluster_applied(c, 3);
    CHECK_INT(cluster_applied_seq(c), 3);
    out = drain(c);
    CHECK(strstr(out, "PUB $JS.ACK.CHATRELAY.abc.1.3.3.1796133692248201832.0 0\r\n\r\n") != NULL);
    CHECK(strstr(out, "$JS.ACK.CHATRELAY.abc.1.1.") == NULL);   /* ack all: only the last */
    /* a skipped sequence is a gap, then the record */
    CHECK_INT(feed_delivery(c, 6, "n2-77-2", "z"), 0);
    CHECK_INT(cluster_deliveries(c, &d), 2);
    CHECK_INT(d[0].gap_first, 4);
    CHECK_INT(d[0].seq, 5);
    CHECK_INT(d[1].seq, 6);
    cluster_applied(c, 2);
    CHECK_INT(cluster_applied_seq(c), 6);
    /* the pull expired: another follows at the next tick */
    static const char expired[] = "NATS/1.0 408 Request Timeout\r\n\r\n";
    char buf[256];
    snprintf(buf, sizeof buf, "HMSG _INBOX.chatrelay.n1.1000.pull 1 %u %u\r\n%s\r\n", (unsigned)strlen(expired),
             (unsigned)strlen(expired), expired);
    CHECK_INT(feed(c, buf), 0);
    int close_now = 1;
    (void)cluster_tick(c, 1100, &close_now);
    CHECK_INT(close_now, 0);
    CHECK(strstr(drain(c), "CONSUMER.MSG.NEXT") != NULL);
    cluster_destroy(c);
}

static void test_reconnect_resends(void)
{
    cluster *c = make(10);
    handshake(c, 1, 5, 10);
    CHECK(cluster_ready(c));
    CHECK_INT(cluster_publish(c, 1, "a", 1), 0);
    CHECK_INT(cluster_publish(c, 2, "b", 1), 0);
    CHECK(strstr(drain(c), "Nats-Msg-Id: n1-1000-2") != NULL);
    /* the first comes back, then the connection drops before the second did */
    CHECK_INT(feed_delivery(c, 11, "n1-1000-1", "a"), 0);
    cluster_applied(c, 1);
    cluster_disconnected(c, "test");
    CHECK(!cluster_ready(c));
    /* the stream meanwhile holds 12 (the second, stored before the drop):
     * caught up first, then only what is still unseen goes out again */
    handshake(c, 3, 5, 12);
    CHECK(!cluster_ready(c));
    CHECK(strstr(consumer_req, "\"opt_start_seq\":12,") != NULL);
    CHECK(strstr(written, "HPUB") == NULL);
    CHECK_INT(feed_delivery(c, 12, "n1-1000-2", "b"), 0);
    cluster_applied(c, 1);
    CHECK(cluster_ready(c));
    CHECK(strstr(drain(c), "HPUB") == NULL);   /* both are in the stream: nothing resent */
    /* a publish with no answer is sent again, same id */
    CHECK_INT(cluster_publish(c, 3, "c", 1), 0);
    CHECK(strstr(drain(c), "Nats-Msg-Id: n1-1000-3") != NULL);
    int close_now = 0;
    (void)cluster_tick(c, 1000 + 3000, &close_now);
    CHECK(strstr(drain(c), "Nats-Msg-Id: n1-1000-3") != NULL);
    cluster_destroy(c);
}

static void test_gap_at_start_and_refusals(void)
{
    /* the stream dropped 3..6 before this node applied them */
    cluster *c = make(2);
    handshake(c, 1, 7, 9);
    const cluster_delivery *d;
    CHECK_INT(cluster_deliveries(c, &d), 1);
    CHECK_INT(d[0].gap_first, 3);
    CHECK_INT(d[0].seq, 6);
    CHECK(strstr(consumer_req, "\"opt_start_seq\":7,") != NULL);   /* from what the stream still holds */
    cluster_applied(c, 1);
    CHECK_INT(cluster_applied_seq(c), 6);
    cluster_destroy(c);

    /* a stream with other subjects is not used */
    c = make(0);
    cluster_connected(c, 1000);
    CHECK_INT(feed(c, INFO), 0);
    (void)drain(c);
    char reply[1024];
    stream_info_reply(reply, sizeof reply, 1, 1, "other.>");
    bind_calls = 0;
    CHECK_INT(feed_msg(c, "_INBOX.chatrelay.n1.1000.api.1", reply), 0);
    CHECK_INT(bind_calls, 0);
    CHECK(strstr(drain(c), "CONSUMER.CREATE") == NULL);
    /* the history refuses the stream (another one's database) */
    CHECK_INT(feed(c, "PONG\r\n"), 0);
    int close_now;
    (void)cluster_tick(c, 1000 + 10000, &close_now);
    CHECK(strstr(drain(c), "STREAM.INFO") != NULL);   /* asked again later */
    stream_info_reply(reply, sizeof reply, 1, 1, "chatrelay.chat");
    bind_refuse = 1;
    CHECK_INT(feed_msg(c, "_INBOX.chatrelay.n1.1000.api.2", reply), 0);
    bind_refuse = 0;
    CHECK_INT(bind_calls, 1);
    CHECK(strstr(drain(c), "CONSUMER.CREATE") == NULL);
    CHECK(!cluster_ready(c));
    /* a stream that ends before what this node applied: its data was lost */
    cluster_destroy(c);
    c = make(50);
    cluster_connected(c, 1000);
    CHECK_INT(feed(c, INFO), 0);
    (void)drain(c);
    stream_info_reply(reply, sizeof reply, 1, 20, "chatrelay.chat");
    CHECK_INT(feed_msg(c, "_INBOX.chatrelay.n1.1000.api.1", reply), 0);
    CHECK(strstr(drain(c), "CONSUMER.CREATE") == NULL);
    /* answers that are not JSON, or stale, change nothing and crash nothing */
    CHECK_INT(feed_msg(c, "_INBOX.chatrelay.n1.1000.api.1", "{not json"), 0);
    CHECK_INT(feed_msg(c, "_INBOX.chatrelay.n1.1000.api.99", "{}"), 0);
    CHECK_INT(feed_msg(c, "_INBOX.chatrelay.n1.1000.ack.5", "]"), 0);
    CHECK_INT(feed_msg(c, "_INBOX.chatrelay.n1.1000.api.x", "{}"), 0);
    /* -ERR closes */
    CHECK_INT(feed(c, "-ERR 'Authorization Violation'\r\n"), -1);
    CHECK(strstr(cluster_error(c), "Authorization Violation") != NULL);
    cluster_destroy(c);

    /* a server without headers cannot carry message ids */
    c = make(0);
    cluster_connected(c, 1000);
    CHECK_INT(feed(c, "INFO {\"server_id\":\"x\",\"headers\":false}\r\n"), -1);
    CHECK(strstr(cluster_error(c), "headers") != NULL);
    cluster_destroy(c);
    c = make(0);
    cluster_connected(c, 1000);
    CHECK_INT(feed(c, "INFO {\"server_id\":\r\n"), -1);
    cluster_destroy(c);
}

static void test_silent_server(void)
{
    cluster *c = make(0);
    handshake(c, 1, 0, 0);
    CHECK_INT(feed(c, "PONG\r\n"), 0);   /* the handshake's ping */
    int close_now = 0;
    (void)cluster_tick(c, 1000 + 5000, &close_now);
    CHECK(strstr(drain(c), "PING\r\n") != NULL);
    CHECK_INT(close_now, 0);
    (void)cluster_tick(c, 1000 + 5000 + 10000, &close_now);
    CHECK_INT(close_now, 1);
    /* answered in time instead: stays */
    cluster_disconnected(c, "test");
    handshake(c, 0, 0, 0);
    (void)cluster_tick(c, 1000 + 5000, &close_now);
    CHECK_INT(feed(c, "PONG\r\n"), 0);
    (void)cluster_tick(c, 1000 + 5000 + 10000, &close_now);
    CHECK_INT(close_now, 0);
    /* the server's own PING is answered */
    (void)drain(c);
    CHECK_INT(feed(c, "PING\r\n"), 0);
    CHECK(strstr(drain(c), "PONG\r\n") != NULL);
    cluster_destroy(c);
}

/* What the review of the first version found: deliveries of an earlier
 * consumer, a consumer that is gone, acked publishes sent again, a server
 * that never says INFO. */
static void test_review_findings(void)
{
    cluster *c = make(0);
    handshake(c, 1, 0, 0);
    /* a delivery from another consumer (an earlier connection's, still
     * delivering to our inbox) is not ours: no false gap, nothing queued */
    char hdr[] = "NATS/1.0\r\nNats-Msg-Id: n2-5-9\r\n\r\n";
    char buf[512];
    snprintf(buf, sizeof buf, "HMSG chatrelay.chat 1 $JS.ACK.CHATRELAY.old.1.6.6.1796133692248201832.0 %u %u\r\n%sx\r\n",
             (unsigned)strlen(hdr), (unsigned)strlen(hdr) + 1, hdr);
    CHECK_INT(feed(c, buf), 0);
    const cluster_delivery *d;
    CHECK_INT(cluster_deliveries(c, &d), 0);
    CHECK_INT(feed_delivery(c, 1, "n2-5-1", "a"), 0);
    CHECK_INT(cluster_deliveries(c, &d), 1);
    CHECK_INT(d[0].gap_first, 0);
    /* an acked publish is not sent again while connected */
    CHECK_INT(cluster_publish(c, 1, "p", 1), 0);
    (void)drain(c);
    CHECK_INT(feed_msg(c, "_INBOX.chatrelay.n1.1000.ack.1", "{\"stream\":\"CHATRELAY\",\"seq\":2}"), 0);
    CHECK_INT(feed(c, "PONG\r\n"), 0);
    int close_now = 0;
    (void)cluster_tick(c, 1000 + 3500, &close_now);
    CHECK(strstr(drain(c), "Nats-Msg-Id: n1-1000-1") == NULL);
    /* the pull is answered "no responders": the consumer is gone; the
     * waiting deliveries are dropped and a new consumer starts after what
     * was applied */
    static const char gone[] = "NATS/1.0 503\r\n\r\n";
    snprintf(buf, sizeof buf, "HMSG _INBOX.chatrelay.n1.1000.pull 1 %u %u\r\n%s\r\n", (unsigned)strlen(gone),
             (unsigned)strlen(gone), gone);
    CHECK_INT(feed(c, buf), 0);
    CHECK(!cluster_ready(c));
    CHECK_INT(cluster_deliveries(c, &d), 0);
    CHECK(strstr(drain(c), "PUB $JS.API.STREAM.INFO.CHATRELAY _INBOX.chatrelay.n1.1000.api.3 0") != NULL);
    cluster_destroy(c);

    /* a publish the stream refused: the later ones wait, and all go out
     * again oldest first, so the stream keeps this node's order */
    c = make(0);
    handshake(c, 1, 0, 0);
    CHECK_INT(feed(c, "PONG\r\n"), 0);
    CHECK_INT(cluster_publish(c, 1, "a", 1), 0);
    CHECK_INT(cluster_publish(c, 2, "b", 1), 0);
    (void)drain(c);
    CHECK_INT(feed_msg(c, "_INBOX.chatrelay.n1.1000.ack.1",
                       "{\"error\":{\"code\":503,\"description\":\"no leader\"}}"), 0);
    CHECK_INT(cluster_publish(c, 3, "c", 1), 0);
    CHECK(strstr(drain(c), "HPUB") == NULL);   /* held behind the refused one */
    (void)cluster_tick(c, 1000 + 1000, &close_now);
    const char *o = drain(c);
    const char *p1 = strstr(o, "Nats-Msg-Id: n1-1000-1\r\n"), *p2 = strstr(o, "Nats-Msg-Id: n1-1000-2\r\n"),
               *p3 = strstr(o, "Nats-Msg-Id: n1-1000-3\r\n");
    CHECK(p1 && p2 && p3 && p1 < p2 && p2 < p3);
    for (int i = 1; i <= 3; i++) {
        char subj[64];
        snprintf(subj, sizeof subj, "_INBOX.chatrelay.n1.1000.ack.%d", i);
        CHECK_INT(feed_msg(c, subj, "{\"stream\":\"CHATRELAY\",\"seq\":1}"), 0);
    }
    (void)cluster_tick(c, 1000 + 1100, &close_now);
    (void)drain(c);
    CHECK_INT(cluster_publish(c, 4, "d", 1), 0);
    CHECK(strstr(drain(c), "Nats-Msg-Id: n1-1000-4\r\n") != NULL);   /* all acknowledged: at once again */
    cluster_destroy(c);

    /* who is where: asked once ready, asks and answers queued for the hub */
    c = make(0);
    cluster_connected(c, 1000);
    CHECK_INT(feed(c, INFO), 0);
    (void)drain(c);
    char reply[1024];
    stream_info_reply(reply, sizeof reply, 0, 0, "chatrelay.chat");
    CHECK_INT(feed_msg(c, "_INBOX.chatrelay.n1.1000.api.1", reply), 0);
    (void)drain(c);
    CHECK_INT(feed_msg(c, "_INBOX.chatrelay.n1.1000.api.2", "{\"name\":\"abc\"}"), 0);
    CHECK(strstr(drain(c), "PUB chatrelay.who _INBOX.chatrelay.n1.1000.who 0\r\n") != NULL);
    CHECK_INT(feed(c, "MSG chatrelay.who 4 _INBOX.x.who 0\r\n\r\n"), 0);
    CHECK_INT(feed_msg(c, "_INBOX.chatrelay.n1.1000.who", "{\"node\":\"n2\"}"), 0);
    CHECK_INT(feed(c, "HMSG _INBOX.chatrelay.n1.1000.who 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"), 0);   /* no one: no answer */
    const cluster_who *w;
    CHECK_INT(cluster_who_messages(c, &w), 2);
    CHECK_STR(w[0].reply, "_INBOX.x.who");
    CHECK(w[1].reply == NULL);
    CHECK_MEM(w[1].payload, w[1].payload_len, "{\"node\":\"n2\"}");
    CHECK_INT(cluster_answer_who(c, w[0].reply, "{}", 2), 0);
    CHECK(strstr(drain(c), "PUB _INBOX.x.who 2\r\n{}\r\n") != NULL);
    cluster_who_done(c);
    CHECK_INT(cluster_who_messages(c, &w), 0);

    cluster_destroy(c);
    c = make(0);
    cluster_connected(c, 1000);
    (void)cluster_tick(c, 1000 + 4000, &close_now);
    CHECK_INT(close_now, 0);
    (void)cluster_tick(c, 1000 + 5000, &close_now);
    CHECK_INT(close_now, 1);
    CHECK(strstr(cluster_error(c), "no INFO") != NULL);
    cluster_destroy(c);
}

int main(void)
{
    test_review_findings();
    test_new_stream();
    test_reconnect_resends();
    test_gap_at_start_and_refusals();
    test_silent_server();
    return check_done();
}

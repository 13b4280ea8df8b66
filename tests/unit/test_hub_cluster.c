/* Unit test: the hub in cluster mode, over a real SQLite history and the
 * real bus session (core/cluster.c) fed the bytes a nats-server would send.
 * What it proves: a line reaches no one before the stream delivered it back
 * and it is stored with its sequence (store-then-forward across nodes);
 * records of other nodes are stored and shown like local ones; other nodes'
 * users are in /who and hold their nicks; a local nick claim that loses to
 * an earlier one in the stream is renamed; a line said under a nick that
 * lost is shown under the user's nick in the view; a "gone" record stores
 * one leave per user and room and empties the view; a busy database holds
 * the deliveries and stores them later, in order, once. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "db_support.h"
#include "hub_support.h"
#include "../storage/history.h"
#include <sqlite3.h>

#define DB "test_hub_cluster.db"

static history *db;
static cluster *bus;
static hub *h;
static int64_t now = 1000;
static unsigned api = 0, seq = 0;

static char bus_out[1 << 16];

static const char *drain_bus(void)
{
    const void *p;
    size_t n, used = 0;
    while (cluster_output(bus, &p, &n)) {
        if (used + n < sizeof bus_out) {
            memcpy(bus_out + used, p, n);
            used += n;
        }
        cluster_output_sent(bus, n);
    }
    bus_out[used] = '\0';
    return bus_out;
}

static void feed(const char *s)
{
    CHECK_INT(cluster_input(bus, s, strlen(s), now), 0);
}

static void feed_msg(const char *subject, const char *payload)
{
    char buf[8192];
    snprintf(buf, sizeof buf, "MSG %s 1 %u\r\n%s\r\n", subject, (unsigned)strlen(payload), payload);
    feed(buf);
}

/* The stream delivers a record as sequence ++seq. */
static void deliver(const char *msg_id, const char *payload)
{
    char hdr[256], buf[16384];
    seq++;
    snprintf(hdr, sizeof hdr, "NATS/1.0\r\nNats-Msg-Id: %s\r\n\r\n", msg_id);
    snprintf(buf, sizeof buf, "HMSG chatrelay.chat 1 $JS.ACK.CHATRELAY.c1.1.%u.%u.1796133692248201832.0 %u %u\r\n%s%s\r\n",
             seq, seq, (unsigned)strlen(hdr), (unsigned)(strlen(hdr) + strlen(payload)), hdr, payload);
    feed(buf);
}

/* Every publish the hub made since the last call goes back through the
 * stream, in order, as the server would deliver them. */
static int echo_publishes(void)
{
    static char copy[1 << 16];
    snprintf(copy, sizeof copy, "%s", drain_bus());
    int count = 0;
    for (char *p = strstr(copy, "HPUB chatrelay.chat "); p; p = strstr(p + 1, "HPUB chatrelay.chat ")) {
        char *id = strstr(p, "Nats-Msg-Id: ");
        char *end = id ? strstr(id, "\r\n") : NULL;
        char *body = end ? strstr(end, "\r\n\r\n") : NULL;
        char *body_end = body ? strstr(body + 4, "\r\n") : NULL;
        if (!body_end)
            break;
        char msg_id[128], payload[8192];
        snprintf(msg_id, sizeof msg_id, "%.*s", (int)(end - id - 13), id + 13);
        snprintf(payload, sizeof payload, "%.*s", (int)(body_end - body - 4), body + 4);
        deliver(msg_id, payload);
        count++;
    }
    return count;
}

static int bind(void *ctx, const char *stream, const char *created, char *err, size_t errlen)
{
    return history_cluster_bind(ctx, stream, created, err, errlen) == HISTORY_OK ? 0 : -1;
}

static void turn(void)
{
    now += 10;
    int close_now = 0;
    hub_turn(h, now);
    (void)cluster_tick(bus, now, &close_now);
    CHECK_INT(close_now, 0);
}

static void say(uint32_t slot, const char *line)
{
    char buf[1200];
    snprintf(buf, sizeof buf, "%s\r\n", line);
    hub_session_input(h, slot, (const unsigned char *)buf, strlen(buf), now);
}

static long long scalar(const char *sql)
{
    sqlite3 *s;
    sqlite3_stmt *st;
    long long v = -1;
    if (sqlite3_open_v2(DB, &s, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(s, sql, -1, &st, NULL) == SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW)
            v = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
    }
    sqlite3_close(s);
    return v;
}

static void start(void)
{
    seq = 0;
    remove_db(DB);
    char err[256];
    history_options ho;
    memset(&ho, 0, sizeof ho);
    CHECK_INT(history_open(&db, DB, &ho, err, sizeof err), HISTORY_OK);
    cluster_config cc;
    memset(&cc, 0, sizeof cc);
    cc.node = "n1";
    cc.epoch = 1000;
    cc.bind = bind;
    cc.ctx = db;
    bus = cluster_create(&cc);
    relay_options opt;
    options_defaults(&opt);
    opt.flood_burst = 0;
    hub_config cfg;
    hub_config_from_options(&cfg, &opt, db);
    cfg.max_sessions = 8;
    cfg.cluster = bus;
    cfg.node = "n1";
    cfg.epoch = 1000;
    cfg.detect_ms = 0;
    h = hub_create(&cfg);
    CHECK(bus && h);
    /* the handshake, against an empty stream */
    cluster_connected(bus, now);
    feed("INFO {\"server_id\":\"S\",\"version\":\"2.9.10\",\"headers\":true,\"max_payload\":1048576}\r\n");
    (void)drain_bus();
    feed_msg("_INBOX.chatrelay.n1.1000.api.1",
             "{\"config\":{\"name\":\"CHATRELAY\",\"subjects\":[\"chatrelay.chat\"],\"retention\":\"limits\"},"
             "\"created\":\"2026-12-01T15:00:00Z\",\"state\":{\"first_seq\":0,\"last_seq\":0}}");
    (void)drain_bus();
    feed_msg("_INBOX.chatrelay.n1.1000.api.2", "{\"name\":\"c1\"}");
    CHECK(cluster_ready(bus));
    api = 2;
    turn();
    (void)drain_bus();
}

static void stop(void)
{
    hub_destroy(h);
    cluster_destroy(bus);
    history_close(db);
    remove_db(DB);
}

#define REMOTE(kind, nick, body, extra) \
    "{\"v\":1,\"kind\":\"" kind "\",\"notice\":0,\"quit\":0,\"at\":\"2026-12-01T15:00:01.000Z\",\"epoch\":77," \
    "\"node\":\"n2\",\"nick\":\"" nick "\",\"target\":\"\",\"body\":\"" body "\",\"rooms\":[\"lobby\"]" extra "}"

static void test_store_then_forward(void)
{
    start();
    hub_session_open(h, 0, "10.0.0.1", HUB_LISTEN_LINE, now);
    hub_session_open(h, 1, "10.0.0.2", HUB_LISTEN_LINE, now);
    turn();
    (void)take_output(h, 0);
    (void)take_output(h, 1);
    say(0, "hello");
    turn();
    /* published, not delivered: the stream has not given it back */
    CHECK(strstr(bus_out, "") != NULL);
    CHECK(strstr(take_output(h, 1), "hello") == NULL);
    CHECK_INT(scalar("select count(*) from messages where kind = 'say'"), 0);
    CHECK_INT(echo_publishes(), 3);   /* two joins and the line */
    turn();
    CHECK(strstr(take_output(h, 1), "<guest1> hello") != NULL);
    CHECK_INT(scalar("select count(*) from messages"), 3);
    CHECK_INT(scalar("select applied_seq from cluster"), 3);
    CHECK_INT(scalar("select id from messages where body = 'hello'"), 3);
    /* another node's line: stored, then shown to both */
    deliver("n2-77-1", REMOTE("join", "zed", "", ",\"sid\":4"));
    deliver("n2-77-2", REMOTE("say", "zed", "hi from n2", ",\"sid\":4"));
    turn();
    const char *o0 = take_output(h, 0);
    CHECK(strstr(o0, "*** zed joined lobby") != NULL);
    CHECK(strstr(o0, "<zed> hi from n2") != NULL);
    CHECK(strstr(take_output(h, 1), "<zed> hi from n2") != NULL);
    CHECK_INT(scalar("select count(*) from messages where nick = 'zed'"), 2);
    CHECK_INT(scalar("select applied_seq from cluster"), 5);
    /* zed is in /who, and holds its nick */
    say(0, "/who");
    turn();
    CHECK(strstr(take_output(h, 0), "*** In lobby (3): guest1, guest2, zed.") != NULL);
    say(1, "/nick zed");
    turn();
    CHECK(strstr(take_output(h, 1), "*** The nick zed is taken.") != NULL);
    /* a record that is not one: skipped alike, the sequence still applied */
    deliver("n2-77-3", "{\"v\":1,\"kind\":\"say\"}");
    turn();
    CHECK_INT(scalar("select applied_seq from cluster"), 6);
    CHECK_INT(scalar("select count(*) from messages"), 5);
    stop();
}

static void test_nick_race_and_gone(void)
{
    start();
    hub_session_open(h, 0, "10.0.0.1", HUB_LISTEN_LINE, now);
    turn();
    CHECK_INT(echo_publishes(), 1);
    turn();
    deliver("n2-77-1", REMOTE("join", "yan", "", ",\"sid\":9"));
    turn();
    (void)take_output(h, 0);
    /* guest1 asks for bob; before its claim comes back, n2's yan took bob first */
    say(0, "/nick bob");
    turn();
    static char mine[1 << 16];
    snprintf(mine, sizeof mine, "%s", drain_bus());
    deliver("n2-77-2", REMOTE("nick", "yan", "bob", ",\"sid\":9"));
    turn();
    /* its own claim comes back second: shown here (as it happened here), then the loss */
    char *id = strstr(mine, "Nats-Msg-Id: ");
    CHECK(id != NULL);
    if (id) {
        char *body = strstr(id, "\r\n\r\n");
        char *end = body ? strstr(body + 4, "\r\n") : NULL;
        char msg_id[64], payload[4096];
        snprintf(msg_id, sizeof msg_id, "%.*s", (int)(strstr(id, "\r\n") - id - 13), id + 13);
        snprintf(payload, sizeof payload, "%.*s", end ? (int)(end - body - 4) : 0, body ? body + 4 : "");
        deliver(msg_id, payload);
    }
    turn();
    /* in the order it happened here: the claim, the loss and why */
    const char *o = take_output(h, 0);
    const char *claim = strstr(o, "*** guest1 is now known as bob"),
               *why = strstr(o, "*** bob was taken on another node of the cluster at the same moment; you are now guest1-2");
    CHECK(claim != NULL && why != NULL && claim < why);
    CHECK(strstr(o, "*** yan is now known as bob") != NULL);
    /* the rename goes through the stream like any nick change */
    CHECK_INT(echo_publishes(), 1);
    turn();
    CHECK(strstr(take_output(h, 0), "*** bob is now known as guest1-2") != NULL);
    say(0, "/who");
    turn();
    CHECK(strstr(take_output(h, 0), "*** In lobby (2): guest1-2, bob.") != NULL);
    /* a line of n2's user under a nick its node gave it but that lost here
     * is shown under the nick in this node's view */
    deliver("n2-77-3", REMOTE("say", "notbob", "who am i", ",\"sid\":9"));
    turn();
    CHECK(strstr(take_output(h, 0), "<bob> who am i") != NULL);
    /* n2 is declared gone: one leave row per user and room, from the record */
    deliver("gone-n2-77", "{\"v\":1,\"ctl\":\"gone\",\"node\":\"n2\",\"epoch\":77,\"by\":\"n3\","
                          "\"at\":\"2026-12-01T15:00:09.000Z\",\"users\":[{\"nick\":\"bob\",\"rooms\":[\"lobby\"]}]}");
    turn();
    CHECK(strstr(take_output(h, 0), "*** bob left lobby (node lost)") != NULL);
    CHECK_INT(scalar("select count(*) from messages where kind = 'leave' and nick = 'bob' and body = 'node lost'"), 1);
    say(0, "/who");
    turn();
    CHECK(strstr(take_output(h, 0), "*** In lobby (1): guest1-2.") != NULL);
    stop();
}

static void test_busy_database(void)
{
    start();
    hub_session_open(h, 0, "10.0.0.1", HUB_LISTEN_LINE, now);
    turn();
    CHECK_INT(echo_publishes(), 1);
    turn();
    (void)take_output(h, 0);
    /* another connection holds the write lock: the deliveries wait */
    sqlite3 *locker;
    CHECK_INT(sqlite3_open(DB, &locker), SQLITE_OK);
    CHECK_INT(sqlite3_exec(locker, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    deliver("n2-77-1", REMOTE("say", "zed", "first", ",\"sid\":4"));
    deliver("n2-77-2", REMOTE("say", "zed", "second", ",\"sid\":4"));
    turn();
    CHECK(strstr(take_output(h, 0), "first") == NULL);
    now += 100;
    turn();
    CHECK(strstr(take_output(h, 0), "first") == NULL);
    CHECK_INT(sqlite3_exec(locker, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(locker);
    now += 100;
    turn();
    const char *o = take_output(h, 0);
    const char *a = strstr(o, "<zed> first"), *b = strstr(o, "<zed> second");
    CHECK(a != NULL && b != NULL && a < b);
    CHECK_INT(scalar("select count(*) from messages where nick = 'zed'"), 2);
    CHECK_INT(scalar("select applied_seq from cluster"), 3);
    stop();
}

int main(void)
{
    test_store_then_forward();
    test_nick_race_and_gone();
    test_busy_database();
    (void)api;
    return check_done();
}

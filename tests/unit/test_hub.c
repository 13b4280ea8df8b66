/* Unit tests of the hub: sessions driven with bytes, output read from their send
 * queues, a real SQLite history (store-then-forward, busy database, bounds). */
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L   /* clock_gettime, for db_support.h */
#endif
#include "check.h"
#include "db_support.h"
#include "hub.h"
#include "hub_support.h"
#include "log.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SLOTS 8


static void drain_all(hub *h)
{
    uint32_t slot;
    while (hub_next_flush(h, &slot))
        ;
    for (uint32_t i = 0; i < MAX_SLOTS; i++)
        if (hub_session_conn_id(h, i))
            take_output(h, i);
}

static void say(hub *h, uint32_t slot, const char *text, int64_t now)
{
    hub_session_input(h, slot, (const unsigned char *)text, strlen(text), now);
}

/* Line i of a run of ~900-byte lines from slot: "<prefix> NNN " and padding. */
static void say_padded(hub *h, uint32_t slot, const char *prefix, int i, char pad, int64_t now)
{
    char body[902];
    memset(body, pad, sizeof body);
    int n = snprintf(body, sizeof body, "%s %03d ", prefix, i);
    body[n] = pad;
    memcpy(body + 900, "\r\n", 2);
    hub_session_input(h, slot, (const unsigned char *)body, sizeof body, now);
}

static hub_config base_config(history *db)
{
    hub_config c;
    memset(&c, 0, sizeof c);
    c.chat.server_name = "testrelay";
    c.chat.replay = 20;
    c.max_sessions = MAX_SLOTS;
    c.max_queue_bytes = 256 * 1024;
    c.max_per_ip = 0;
    c.history = db;
    c.pending_max_lines = 5;
    c.pending_max_bytes = 1 << 20;
    c.pending_max_ms = 5000;
    return c;
}

static history *open_db(const char *path)
{
    remove_db(path);
    history *db = NULL;
    history_options ho;
    memset(&ho, 0, sizeof ho);
    char err[256];
    CHECK_INT(history_open(&db, path, &ho, err, sizeof err), HISTORY_OK);
    return db;
}

static int count_rows(const char *path, const char *where)
{
    sqlite3 *c;
    sqlite3_open(path, &c);
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM messages WHERE %s", where);
    sqlite3_stmt *st;
    int n = -1;
    if (sqlite3_prepare_v2(c, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(c);
    return n;
}

/* The sqlite3 CLI user holding the write lock (BEGIN IMMEDIATE) until cli_unlock. */
static sqlite3 *cli_lock(const char *path)
{
    sqlite3 *locker = NULL;
    CHECK_INT(sqlite3_open(path, &locker), SQLITE_OK);
    CHECK_INT(sqlite3_exec(locker, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    return locker;
}

static void cli_unlock(sqlite3 *locker)
{
    CHECK_INT(sqlite3_exec(locker, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(locker);
}

/* A hub on cfg with sessions 0 and 1 (guest1, guest2) in the lobby, their
 * greetings and joins delivered and read. */
static hub *two_in_lobby(const hub_config *cfg)
{
    hub *h = hub_create(cfg);
    CHECK(h != NULL);
    hub_session_open(h, 0, "127.0.0.1", HUB_LISTEN_LINE, 0);
    hub_session_open(h, 1, "127.0.0.1", HUB_LISTEN_LINE, 0);
    hub_turn(h, 0);
    drain_all(h);
    return h;
}

static void test_broadcast_not_echoed_and_ordered(void)
{
    const char *path = "test_hub_a.db";
    history *db = open_db(path);
    hub_config cfg = base_config(db);
    hub *h = hub_create(&cfg);
    CHECK(h != NULL);
    hub_session_open(h, 0, "127.0.0.1", HUB_LISTEN_LINE, 0);
    hub_session_open(h, 1, "127.0.0.1", HUB_LISTEN_LINE, 0);
    hub_session_open(h, 2, "127.0.0.1", HUB_LISTEN_LINE, 0);
    hub_turn(h, 0);
    const char *first = take_output(h, 0);
    CHECK(strstr(first, "guest1") != NULL);               /* greeting names the nick */
    CHECK(strstr(first, "guest2 joined") != NULL);        /* later arrivals are announced */
    /* guest1's join was said before guest2 connected: not announced to guest2,
     * whose greeting already counted guest1 (it waited for the same commit);
     * guest3's, said after, is. */
    const char *second = take_output(h, 1);
    CHECK(strstr(second, "*** Your nick is guest2; change it with /nick NAME.\r\n") != NULL);
    CHECK(strstr(second, "guest3 joined") != NULL);
    CHECK(strstr(second, "guest1 joined") == NULL);
    drain_all(h);

    say(h, 0, "one\r\ntwo\n", 1);
    /* Not delivered before the turn commits (store-then-forward). */
    CHECK_STR(take_output(h, 1), "");
    hub_turn(h, 1);
    CHECK_STR(take_output(h, 1), "<guest1> one\r\n<guest1> two\r\n");
    CHECK_STR(take_output(h, 2), "<guest1> one\r\n<guest1> two\r\n");
    CHECK_STR(take_output(h, 0), "");                     /* not echoed */
    CHECK_INT(count_rows(path, "kind='say' AND room='lobby' AND nick='guest1'"), 2);

    hub_stats st;
    hub_get_stats(h, &st);
    CHECK_INT(st.sessions, 3);
    CHECK_INT(st.commits, 2);                             /* the three joins, then the two lines */

    /* After commits the hub wants a quiet moment for database upkeep; once
     * history_idle_step says nothing is due, it needs no timer at all. */
    int wait = hub_turn(h, 1);
    CHECK(wait > 0 && wait <= 200);
    hub_idle(h);
    CHECK_INT(hub_turn(h, 1), -1);

    hub_session_closed(h, 2, "connection lost");
    hub_turn(h, 2);
    CHECK(strstr(take_output(h, 1), "guest3") != NULL);   /* leave announced */
    CHECK_INT(count_rows(path, "kind='leave' AND nick='guest3'"), 1);
    hub_destroy(h);
    history_close(db);
    remove_db(path);
}

static void test_busy_database_holds_then_delivers_in_order(void)
{
    const char *path = "test_hub_b.db";
    history *db = open_db(path);
    hub_config cfg = base_config(db);
    hub *h = two_in_lobby(&cfg);

    sqlite3 *locker = cli_lock(path);

    say(h, 0, "held 1\r\nheld 2\r\nheld 3\r\n", 10);
    int wait = hub_turn(h, 10);
    CHECK_INT(wait, 50);                                  /* called back at the retry interval */
    CHECK_STR(take_output(h, 1), "");                     /* nothing delivered unrecorded */
    say(h, 0, "held 4\r\nheld 5\r\n", 20);
    hub_turn(h, 100);
    CHECK_STR(take_output(h, 1), "");
    /* Past the bound (5 lines pending): refused with a notice, not queued. */
    say(h, 0, "refused\r\n", 120);
    CHECK(strstr(take_output(h, 0), "history unavailable, message not sent") != NULL);

    /* Reconnect churn while the database is down: announcements are held up to
     * a hard bound (4 x 5 entries here), never without end. */
    for (int i = 0; i < 40; i++) {
        hub_session_open(h, 2, "127.0.0.1", HUB_LISTEN_LINE, 130);
        hub_session_closed(h, 2, "connection closed");
    }
    hub_turn(h, 150);
    hub_stats st;
    hub_get_stats(h, &st);
    /* The outbox holds 4 x 5 = 20 entries: the 5 lines, then 15 of the 80
     * announcements (8 joins, 7 leaves); the other 65 are dropped. */
    CHECK_INT(st.dropped_notices, 65);
    CHECK_INT(count_rows(path, "kind='join'"), 2);           /* the file is still locked: nothing new yet */

    cli_unlock(locker);
    hub_turn(h, 200);
    CHECK_INT(count_rows(path, "kind='join' OR kind='leave'"), 2 + 15);
    /* the held lines first, in order; then the announcements that were kept */
    static const char held[] =
        "<guest1> held 1\r\n<guest1> held 2\r\n<guest1> held 3\r\n<guest1> held 4\r\n<guest1> held 5\r\n";
    const char *out = take_output(h, 1);
    CHECK(strncmp(out, held, sizeof held - 1) == 0);
    CHECK(strstr(out, "joined") != NULL);
    CHECK_INT(count_rows(path, "kind='say'"), 5);
    CHECK_INT(count_rows(path, "body='refused'"), 0);
    say(h, 0, "normal again\r\n", 300);
    hub_turn(h, 300);
    CHECK_STR(take_output(h, 1), "<guest1> normal again\r\n");
    hub_destroy(h);
    history_close(db);
    remove_db(path);
}

/* The /msg confirmation travels with the message: while the message waits
 * behind held lines, so does "*** to ...". */
static void test_private_confirmation_waits_for_the_message(void)
{
    const char *path = "test_hub_d.db";
    history *db = open_db(path);
    hub_config cfg = base_config(db);
    cfg.chat.log_private = 1;
    hub *h = two_in_lobby(&cfg);

    sqlite3 *locker = cli_lock(path);
    say(h, 0, "/msg guest2 psst\r\n", 10);
    hub_turn(h, 10);
    CHECK_STR(take_output(h, 0), "");                     /* not confirmed before it is stored */
    CHECK_STR(take_output(h, 1), "");
    cli_unlock(locker);
    hub_turn(h, 100);
    CHECK_STR(take_output(h, 1), "*guest1* psst\r\n");
    CHECK(strstr(take_output(h, 0), "to guest2: psst") != NULL);
    CHECK_INT(count_rows(path, "kind='msg'"), 1);
    hub_destroy(h);
    history_close(db);
    remove_db(path);
}

/* A session that stops reading is cut once its queue has stayed over the
 * bound with nothing sent for the grace time; one that reads is never cut,
 * and nobody else waits for the stopped one. */
static void test_slow_consumer_is_closed(void)
{
    hub_config cfg = base_config(NULL);
    cfg.max_queue_bytes = 4096;
    hub *h = hub_create(&cfg);
    hub_session_open(h, 0, "127.0.0.1", HUB_LISTEN_LINE, 0);
    hub_session_open(h, 1, "127.0.0.1", HUB_LISTEN_LINE, 0);
    hub_session_open(h, 2, "127.0.0.1", HUB_LISTEN_LINE, 0);
    hub_turn(h, 0);
    drain_all(h);
    char line[120];
    uint32_t slot = 99;
    const char *reason = NULL;
    int lines = 0;
    /* 25 lines a second for 2.5 s: slot 1 is over the bound, but within the grace */
    for (int64_t t = 1; t <= 2500; t += 40, lines++) {
        int n = snprintf(line, sizeof line, "line %03d padding padding padding\r\n", lines);
        hub_session_input(h, 0, (const unsigned char *)line, (size_t)n, t);
        hub_turn(h, t);
        take_output(h, 2);                                /* slot 2 reads, slot 1 never does */
    }
    CHECK(hub_sendq(h, 1)->pinned > 4096);
    CHECK(!hub_next_close(h, &slot, &reason));            /* not yet: within the grace time */
    for (int64_t t = 2500; t <= 5000; t += 40, lines++) {
        int n = snprintf(line, sizeof line, "line %03d padding padding padding\r\n", lines);
        hub_session_input(h, 0, (const unsigned char *)line, (size_t)n, t);
        hub_turn(h, t);
        take_output(h, 2);
    }
    CHECK(hub_next_close(h, &slot, &reason));
    CHECK_INT(slot, 1);
    CHECK_STR(reason, "slow consumer");
    CHECK(!hub_next_close(h, &slot, &reason));            /* the reader is never cut */
    /* bounded: under the hard bound, plus the notice */
    CHECK(hub_sendq(h, 1)->pinned <= 4 * 4096 + 256);
    const char *got = take_output(h, 1);
    size_t n = strlen(got);
    static const char notice[] = "*** you are not reading fast enough; disconnecting (slow consumer)\r\n";
    CHECK(n >= sizeof notice - 1 && strcmp(got + n - (sizeof notice - 1), notice) == 0);
    hub_destroy(h);
}

/* A session that reads as its queue drains is never cut, however large the
 * bursts the server itself makes: the backlog of an outage, a replay, two
 * /history 200 in a row.  Its queue stays near the bound meanwhile. */
static void test_reader_survives_server_bursts(void)
{
    const char *path = "test_hub_bursts.db";
    history *db = open_db(path);
    hub_config cfg = base_config(db);
    cfg.max_queue_bytes = 16 * 1024;
    cfg.pending_max_lines = 100000;
    cfg.pending_max_bytes = 64u << 20;
    cfg.chat.replay = 20;
    hub *h = two_in_lobby(&cfg);

    /* An outage: 400 lines of ~900 bytes held, then stored at once. */
    sqlite3 *locker = cli_lock(path);
    for (int i = 0; i < 400; i++) {
        say_padded(h, 0, "held", i, 'x', 10 + i);
        hub_turn(h, 10 + i);
    }
    CHECK_STR(take_output(h, 1), "");
    cli_unlock(locker);
    int got = 0;
    size_t peak = 0;
    uint32_t slot;
    const char *reason;
    for (int64_t t = 1000; t < 1000 + 20000 && got < 400; t += 10) {
        hub_turn(h, t);
        if (hub_sendq(h, 1)->pinned > peak)
            peak = hub_sendq(h, 1)->pinned;
        /* the reader takes 8 KiB a turn: slower than the burst arrives */
        sendq *q = hub_sendq(h, 1);
        sendq_span spans[64];
        size_t ns = sendq_gather(q, spans, 64, 8192), total = 0;
        for (size_t i = 0; i < ns; i++) {
            total += spans[i].len;
            for (const char *p = spans[i].ptr; (p = memchr(p, '\n', (size_t)(spans[i].ptr + spans[i].len - p))) != NULL; p++)
                got++;
        }
        hub_session_sent(h, 1, total);
    }
    CHECK_INT(got, 400);
    if (hub_next_close(h, &slot, &reason)) {
        CHECK(!"a session was closed");
        fprintf(stderr, "  closed: slot %u (%s)\n", (unsigned)slot, reason);
    }
    printf("backlog of 400 x 900 B to a reader at 8 KiB/turn: peak queue %zu bytes\n", peak);

    /* Two /history 200 in a row, and a new session's replay of 20 long lines
     * with a 16 KiB bound: answered as the client reads, never cut. */
    say(h, 1, "/history 200\r\n/history 200\r\n", 30000);
    hub_session_open(h, 2, "127.0.0.1", HUB_LISTEN_LINE, 30000);
    int history_lines = 0, replay_lines = 0;
    for (int64_t t = 30000; t < 60000; t += 10) {
        hub_turn(h, t);
        for (uint32_t s = 1; s <= 2; s++) {
            sendq *q = hub_sendq(h, s);
            sendq_span spans[64];
            size_t ns = sendq_gather(q, spans, 64, 8192), total = 0;
            for (size_t i = 0; i < ns; i++) {
                total += spans[i].len;
                for (const char *p = spans[i].ptr;
                     (p = memchr(p, '\n', (size_t)(spans[i].ptr + spans[i].len - p))) != NULL; p++)
                    *(s == 1 ? &history_lines : &replay_lines) += 1;
            }
            hub_session_sent(h, s, total);
        }
        if (history_lines >= 400 && replay_lines >= 20)
            break;
    }
    CHECK(history_lines >= 400);   /* 2 x 200 rows (plus their notices, if any) */
    CHECK(replay_lines >= 20);
    CHECK(!hub_next_close(h, &slot, &reason));
    hub_destroy(h);
    history_close(db);
    remove_db(path);
}

/* The answer to /history that waits behind the queue's bound moves on as
 * the client reads; a send the shell completes at once in its flush wakes
 * nothing, so hub_turn_due must say the next turn is due (once), and only
 * when the send made room for held output. */
static void test_held_output_makes_the_next_turn_due(void)
{
    const char *path = "test_hub_due.db";
    history *db = open_db(path);
    hub_config cfg = base_config(db);
    cfg.max_queue_bytes = 16 * 1024;
    hub *h = two_in_lobby(&cfg);
    for (int i = 0; i < 100; i++) {
        say_padded(h, 0, "long", i, 'y', 10 + i);
        hub_turn(h, 10 + i);
        drain_all(h);
    }
    CHECK(!hub_turn_due(h));
    say(h, 1, "/history 100\r\n/history 100\r\n", 500);
    hub_turn(h, 500);
    sendq *q = hub_sendq(h, 1);
    CHECK(q->pinned > cfg.max_queue_bytes);     /* the second answer waits behind the bound */
    CHECK(!hub_turn_due(h));
    sendq_span spans[1024];
    hub_session_sent(h, 1, 0);                   /* nothing taken (WSAEWOULDBLOCK): not due */
    CHECK(!hub_turn_due(h));
    size_t ns = sendq_gather(q, spans, 1024, 1 << 20), total = 0;
    for (size_t i = 0; i < ns; i++)
        total += spans[i].len;
    hub_session_sent(h, 1, total);               /* all of it taken at once */
    CHECK(hub_turn_due(h));
    CHECK(!hub_turn_due(h));                     /* reading it cleared it */
    hub_session_sent(h, 0, 0);                   /* a session with nothing held */
    CHECK(!hub_turn_due(h));
    /* and the next turn does move the answer on */
    hub_turn(h, 501);
    CHECK(q->count > 0);
    hub_destroy(h);
    history_close(db);
    remove_db(path);
}

/* A client that floods telnet negotiation and never reads pins its reply
 * bytes, not a buffer per 3-byte reply, and is cut within the bound. */
static void test_negotiation_flood_is_bounded(void)
{
    hub_config cfg = base_config(NULL);
    cfg.max_queue_bytes = 256 * 1024;
    hub *h = hub_create(&cfg);
    hub_session_open(h, 0, "127.0.0.1", HUB_LISTEN_LINE, 0);
    hub_turn(h, 0);
    drain_all(h);
    static unsigned char flood[3 * 2048];
    for (size_t i = 0; i < sizeof flood; i += 3) {
        flood[i] = 255;       /* IAC */
        flood[i + 1] = 253;   /* DO */
        flood[i + 2] = 31;    /* NAWS */
    }
    size_t fed = 0, peak = 0;
    uint32_t slot;
    const char *reason;
    int cut = 0;
    for (int64_t t = 1; t < 10000 && !cut; t += 1) {
        hub_session_input(h, 0, flood, sizeof flood, t);
        fed += sizeof flood;
        hub_turn(h, t);
        if (hub_sendq(h, 0)->pinned > peak)
            peak = hub_sendq(h, 0)->pinned;
        cut = hub_next_close(h, &slot, &reason);
    }
    CHECK(cut);
    CHECK_STR(reason, "slow consumer");
    printf("negotiation flood: cut after %zu bytes in, peak pinned %zu\n", fed, peak);
    CHECK(peak <= 4 * 256 * 1024 + 4096);
    hub_destroy(h);
}

static void test_admission_limits(void)
{
    hub_config cfg = base_config(NULL);
    cfg.max_per_ip = 2;
    hub *h = hub_create(&cfg);
    CHECK(hub_admit(h, "10.0.0.1", 1) == NULL);
    hub_session_open(h, 0, "10.0.0.1", HUB_LISTEN_LINE, 0);
    hub_session_open(h, 1, "10.0.0.1", HUB_LISTEN_LINE, 0);
    const char *no = hub_admit(h, "10.0.0.1", 1);
    CHECK(no != NULL && strncmp(no, "*** ", 4) == 0);
    CHECK(hub_admit(h, "10.0.0.2", 1) == NULL);
    const char *full = hub_admit(h, "10.0.0.2", 0);
    CHECK(full != NULL && strstr(full, "full") != NULL);
    hub_session_closed(h, 0, "quit");
    CHECK(hub_admit(h, "10.0.0.1", 1) == NULL);
    hub_destroy(h);
}

static void test_idle_timeout_and_telnet_reply(void)
{
    hub_config cfg = base_config(NULL);
    cfg.idle_timeout_ms = 5000;
    hub *h = two_in_lobby(&cfg);
    /* telnet: IAC DO ECHO is refused with IAC WONT ECHO */
    const unsigned char iac_do_echo[] = { 255, 253, 1 };
    hub_session_input(h, 0, iac_do_echo, sizeof iac_do_echo, 100);
    CHECK_MEM(take_output(h, 0), 3, "\xff\xfc\x01");
    say(h, 0, "active\r\n", 4000);
    hub_turn(h, 4000);
    uint32_t slot;
    const char *reason;
    hub_turn(h, 6000);
    CHECK(hub_next_close(h, &slot, &reason));
    CHECK_INT(slot, 1);                                   /* slot 0 spoke at 4000 */
    CHECK_STR(reason, "timeout");
    CHECK(strstr(take_output(h, 1), "idle") != NULL);
    CHECK(!hub_next_close(h, &slot, &reason));
    hub_turn(h, 9500);
    CHECK(hub_next_close(h, &slot, &reason));
    CHECK_INT(slot, 0);
    hub_destroy(h);
}

static void test_no_history_delivers_at_once(void)
{
    hub_config cfg = base_config(NULL);
    hub *h = two_in_lobby(&cfg);
    say(h, 1, "/history\r\n", 1);
    CHECK(strstr(take_output(h, 1), "history is switched off") != NULL);
    say(h, 1, "plain\r\n", 1);
    hub_turn(h, 1);
    CHECK_STR(take_output(h, 0), "<guest2> plain\r\n");
    hub_destroy(h);
}

static void test_replay_on_connect(void)
{
    const char *path = "test_hub_c.db";
    history *db = open_db(path);
    hub_config cfg = base_config(db);
    cfg.chat.replay = 2;
    hub *h = hub_create(&cfg);
    hub_session_open(h, 0, "127.0.0.1", HUB_LISTEN_LINE, 0);
    hub_turn(h, 0);
    say(h, 0, "first\r\nsecond\r\nthird\r\n", 1);
    hub_turn(h, 1);
    drain_all(h);
    hub_session_open(h, 1, "127.0.0.1", HUB_LISTEN_LINE, 2);
    hub_turn(h, 2);   /* queries are answered by the turn (the later list) */
    const char *out = take_output(h, 1);
    CHECK(strstr(out, "first") == NULL);
    const char *s2 = strstr(out, "<guest1> second");
    const char *s3 = strstr(out, "<guest1> third");
    CHECK(s2 != NULL && s3 != NULL && s2 < s3);           /* the last 2, oldest first */
    CHECK(strstr(out, "*** [") != NULL);                  /* marked as history */
    hub_destroy(h);
    history_close(db);
    remove_db(path);
}


/* A record the database refuses (a trigger a CLI user added) must not block
 * the outbox: it alone is dropped and its sender told; every other line of
 * the same turn, before and after it, is stored and delivered in order.  A
 * refused private message takes its confirmation with it. */
static void test_refused_record_is_isolated(void)
{
    const char *path = "test_hub_refused.db";
    history *db = open_db(path);
    hub_config cfg = base_config(db);
    cfg.chat.log_private = 1;
    cfg.pending_max_lines = 100000;
    hub *h = two_in_lobby(&cfg);

    sqlite3 *cli;
    CHECK_INT(sqlite3_open(path, &cli), SQLITE_OK);
    CHECK_INT(sqlite3_exec(cli, "CREATE TRIGGER no_forbidden BEFORE INSERT ON messages"
                                " WHEN new.body LIKE '%forbidden%' BEGIN SELECT RAISE(ABORT, 'forbidden'); END",
                           NULL, NULL, NULL), SQLITE_OK);
    char input[64 * 1024];
    size_t used = 0;
    for (int i = 0; i < 1000; i++)
        used += (size_t)snprintf(input + used, sizeof input - used, "%sline %d\r\n",
                                 i == 400 || i == 401 || i == 999 ? "forbidden " : "", i);
    say(h, 0, input, 10);
    say(h, 0, "/msg guest2 a forbidden secret\r\n/msg guest2 a fine secret\r\n", 10);
    hub_turn(h, 10);

    const char *got = take_output(h, 1);
    char want[64 * 1024];
    size_t wn = 0;
    for (int i = 0; i < 1000; i++)
        if (i != 400 && i != 401 && i != 999)
            wn += (size_t)snprintf(want + wn, sizeof want - wn, "<guest1> line %d\r\n", i);
    wn += (size_t)snprintf(want + wn, sizeof want - wn, "*guest1* a fine secret\r\n");
    CHECK_STR(got, want);
    static const char notice[] = "*** message not sent: the history database refused to store it\r\n";
    char want0[1024];
    snprintf(want0, sizeof want0, "%s%s%s%s*** to guest2: a fine secret\r\n", notice, notice, notice, notice);
    CHECK_STR(take_output(h, 0), want0);
    CHECK_INT(count_rows(path, "kind='say'"), 997);
    CHECK_INT(count_rows(path, "body LIKE '%forbidden%'"), 0);
    CHECK_INT(count_rows(path, "kind='msg'"), 1);
    /* stored in the order they were said */
    CHECK_INT(count_rows(path, "kind='say' AND id < (SELECT id FROM messages WHERE body='line 998')"
                               " AND id > (SELECT id FROM messages WHERE body='line 402')"), 998 - 402 - 1);
    hub_stats st;
    hub_get_stats(h, &st);
    CHECK_INT(st.rejected_lines, 4);
    CHECK_INT(st.lines_stored, 2 + 997 + 1);   /* the two joins, the lines, the fine /msg */

    /* Once the trigger is gone, the same words are stored again. */
    CHECK_INT(sqlite3_exec(cli, "DROP TRIGGER no_forbidden", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(cli);
    say(h, 0, "forbidden no more\r\n", 20);
    hub_turn(h, 20);
    CHECK_STR(take_output(h, 1), "<guest1> forbidden no more\r\n");
    CHECK_INT(count_rows(path, "body = 'forbidden no more'"), 1);
    hub_destroy(h);
    history_close(db);
    remove_db(path);
}

/* A query's answer comes before the replies to the commands after it, and a
 * line said after the question is not in the answer (it arrives live). */
static void test_query_answers_keep_command_order(void)
{
    const char *path = "test_hub_order.db";
    history *db = open_db(path);
    hub_config cfg = base_config(db);
    hub *h = hub_create(&cfg);
    hub_session_open(h, 0, "127.0.0.1", HUB_LISTEN_LINE, 0);
    hub_session_open(h, 1, "127.0.0.1", HUB_LISTEN_LINE, 0);
    hub_turn(h, 0);
    say(h, 0, "alpha\r\nbeta\r\n", 1);
    hub_turn(h, 1);
    drain_all(h);
    say(h, 1, "/history 2\r\n/who\r\n", 2);
    say(h, 0, "gamma\r\n", 2);
    hub_turn(h, 2);
    const char *out = take_output(h, 1);
    const char *a = strstr(out, "<guest1> alpha"), *b = strstr(out, "<guest1> beta");
    const char *who = strstr(out, "*** In "), *g = strstr(out, "<guest1> gamma");
    CHECK(a && b && who && g);
    CHECK(a && b && who && a < b && b < who);
    CHECK(g && strstr(g + sizeof "<guest1> gamma" - 1, "gamma") == NULL);   /* once: live, not replayed */

    /* A row the sqlite3 shell inserted is part of the history at once. */
    sqlite3 *cli;
    CHECK_INT(sqlite3_open(path, &cli), SQLITE_OK);
    CHECK_INT(sqlite3_exec(cli, "INSERT INTO messages(at, room, nick, kind, body)"
                                " VALUES ('2026-11-27T03:04:05.123Z', 'lobby', 'shell', 'say', 'from the shell')",
                           NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(cli);
    say(h, 1, "/history 1\r\n", 3);
    hub_turn(h, 3);
    CHECK(strstr(take_output(h, 1), "<shell> from the shell") != NULL);
    hub_destroy(h);
    history_close(db);
    remove_db(path);
}

/* A /msg held behind the database whose recipient leaves (and whose slot a
 * newcomer takes) before it can be delivered reaches no one: the newcomer
 * never sees it, and the sender is told it was not delivered instead of
 * getting its confirmation. */
static void test_held_msg_to_a_leaver(void)
{
    const char *path = "test_hub_leaver.db";
    history *db = open_db(path);
    hub_config cfg = base_config(db);
    hub *h = two_in_lobby(&cfg);
    sqlite3 *locker = cli_lock(path);
    say(h, 0, "a room line first\r\n/msg guest2 you will never see this\r\n", 10);
    hub_turn(h, 10);
    hub_session_closed(h, 1, "connection closed");
    hub_session_open(h, 1, "127.0.0.1", HUB_LISTEN_LINE, 20);          /* guest3 in guest2's slot */
    hub_turn(h, 20);
    cli_unlock(locker);
    hub_turn(h, 100);
    const char *newcomer = take_output(h, 1);
    CHECK(strstr(newcomer, "never see this") == NULL);
    const char *sender = take_output(h, 0);
    CHECK(strstr(sender, "*** to guest2") == NULL);
    CHECK(strstr(sender, "*** message not delivered: the recipient left before it could be\r\n") != NULL);
    hub_destroy(h);
    history_close(db);
    remove_db(path);
}

/* The options become the hub's policy in one portable place. */
static void test_config_from_options(void)
{
    relay_options o;
    hub_config c;
    options_defaults(&o);
    hub_config_from_options(&c, &o, NULL);
    CHECK_INT(c.max_sessions, 1024);
    CHECK_INT(c.max_queue_bytes, 256 * 1024);
    CHECK_INT(c.max_per_ip, 16);
    CHECK_INT(c.chat.replay, 20);
    CHECK_INT(c.chat.flood_burst, 10);
    CHECK_INT(c.chat.flood_rate, 5);
    CHECK_INT(c.retention, 0);
    CHECK(c.history == NULL);
    CHECK_INT(c.pending_max_lines, 10000);
    CHECK_INT(c.pending_max_bytes, 8u << 20);
    CHECK_INT(c.pending_max_ms, 5000);
    CHECK_STR(c.chat.server_name, "chatrelay");
    o.flood_rate = 0;            /* either one at 0 switches flood control off */
    o.idle_timeout = 30;
    o.retain_days = 7;           /* retention needs a database */
    hub_config_from_options(&c, &o, NULL);
    CHECK_INT(c.chat.flood_burst, 0);
    CHECK_INT(c.chat.flood_rate, 0);
    CHECK_INT(c.idle_timeout_ms, 30000);
    CHECK_INT(c.retention, 0);
}

/* How much one receive asks for: a line session's, an IRC session's (on
 * an IRC port, or once its first line said so), and a detecting one's. */
static void test_read_size_per_dialect(void)
{
    hub_config cfg = base_config(NULL);
    cfg.detect_ms = 300;
    hub *h = hub_create(&cfg);
    CHECK(h != NULL);
    if (!h)
        return;
    hub_session_open(h, 0, "10.0.0.1", HUB_LISTEN_LINE, 0);
    hub_session_open(h, 1, "10.0.0.2", HUB_LISTEN_IRC, 0);
    hub_session_open(h, 2, "10.0.0.3", HUB_LISTEN_DETECT, 0);
    CHECK_INT(hub_session_read_size(h, 0), HUB_READ_LINE);
    CHECK_INT(hub_session_read_size(h, 1), HUB_READ_IRC);
    CHECK_INT(hub_session_read_size(h, 2), HUB_READ_LINE);   /* not known yet: the smaller one */
    hub_session_input(h, 2, (const unsigned char *)"NICK zoe\r\n", 10, 1);
    CHECK_INT(hub_session_read_size(h, 2), HUB_READ_IRC);
    CHECK(HUB_READ_IRC <= HUB_READ_MAX && HUB_READ_LINE <= HUB_READ_MAX);
    hub_destroy(h);
}

int main(void)
{
    test_read_size_per_dialect();
    log_to_stderr(0);
    test_broadcast_not_echoed_and_ordered();
    test_busy_database_holds_then_delivers_in_order();
    test_private_confirmation_waits_for_the_message();
    test_slow_consumer_is_closed();
    test_reader_survives_server_bursts();
    test_held_output_makes_the_next_turn_due();
    test_negotiation_flood_is_bounded();
    test_admission_limits();
    test_idle_timeout_and_telnet_reply();
    test_no_history_delivers_at_once();
    test_replay_on_connect();
    test_refused_record_is_isolated();
    test_query_answers_keep_command_order();
    test_held_msg_to_a_leaver();
    test_config_from_options();
    msgbuf_pool_drain();
    return check_done();
}

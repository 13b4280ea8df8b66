/* Drives chat with session events and lines and checks the effects it asks for
 * and how its events render (the line form, the IRC form). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "chat.h"
#include "utf8_check.h"
#include "text.h"

static int64_t now = 1000000;

static chat *make(int replay, int burst, int rate, int kick, int log_private, uint32_t slots)
{
    chat_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.server_name = "Test Relay";
    cfg.replay = replay;
    cfg.flood_burst = burst;
    cfg.flood_rate = rate;
    cfg.flood_kick = kick;
    cfg.log_private = log_private;
    return chat_create(&cfg, slots);
}

static size_t count(const chat *c)
{
    const chat_effect *e;
    return chat_effects(c, &e);
}

static const chat_effect *effect(const chat *c, size_t i)
{
    const chat_effect *e;
    size_t n = chat_effects(c, &e);
    return i < n ? &e[i] : NULL;
}

/* Effect i, which the caller expects to exist: if it does not, a failed
 * check and an empty stand-in (for no session, with empty strings), so that
 * the test goes on to its other checks instead of crashing. */
static const chat_effect *must(const chat *c, size_t i)
{
    static chat_effect none;
    const chat_effect *e = effect(c, i);
    CHECK(e != NULL);
    if (e)
        return e;
    memset(&none, 0, sizeof none);
    none.kind = CHAT_CLOSE;
    none.slot = none.to_slot = CHAT_NO_SLOT;
    none.text = none.reason = none.room = "";
    none.event.nick = none.event.body = none.event.target = "";
    return &none;
}

static void send_line(chat *c, uint32_t slot, const char *s)
{
    chat_session_line(c, slot, s, strlen(s), 0, now);
}

/* Checks that effect i is a reply to slot with exactly text. */
#define CHECK_REPLY(c, i, slot_, s) do { \
    const chat_effect *r_ = effect((c), (i)); \
    CHECK(r_ != NULL); \
    if (r_) { \
        CHECK_INT(r_->kind, CHAT_REPLY); \
        CHECK_INT(r_->slot, (slot_)); \
        CHECK_MEM(r_->text, r_->text_len, (s)); \
    } \
} while (0)

/* The only effect is one reply with this text. */
#define CHECK_ONLY_REPLY(c, slot_, s) do { \
    CHECK_INT(count(c), 1); \
    CHECK_REPLY((c), 0, (slot_), (s)); \
} while (0)

/* The time given to chat_render_event (only the IRC server-time form shows it). */
#define EVENT_AT "2026-01-01T00:00:00.000Z"

/* ev in form, as the hub renders it (into one of a few rotating buffers, so
 * that a check can hold two); *len: the bytes written. */
static char *render_form(const chat *c, chat_form form, const chat_event *ev, uint32_t room, int echo,
                         size_t *len)
{
    static char bufs[4][4096];
    static unsigned next;
    char *buf = bufs[next++ % 4];
    *len = chat_render_event(c, form, ev, room, echo, EVENT_AT, buf, sizeof bufs[0]);
    return buf;
}

/* The line form of ev in its room number `room` (echo: the actor's own copy)
 * without its CRLF: the text the old effect carried.  "" if nothing was
 * rendered, "(no CRLF)" if the form did not end in one. */
static const char *render_line(const chat *c, const chat_event *ev, uint32_t room, int echo)
{
    size_t n;
    char *buf = render_form(c, CHAT_FORM_LINE, ev, room, echo, &n);
    if (n == 0)
        return "";
    if (n < 2 || buf[n - 2] != '\r' || buf[n - 1] != '\n')
        return "(no CRLF)";
    buf[n - 2] = '\0';
    return buf;
}

/* The line form (room 0, as a member sees it) of effect i, which must be an event. */
static const char *event_line(const chat *c, size_t i)
{
    const chat_effect *e = effect(c, i);
    if (!e || e->kind != CHAT_EVENT)
        return "(not an event)";
    return render_line(c, &e->event, 0, 0);
}

/* The actor's own copy (its echo form) of effect i, in the line form. */
static const char *echo_line(const chat *c, size_t i)
{
    const chat_effect *e = effect(c, i);
    if (!e || e->kind != CHAT_EVENT)
        return "(not an event)";
    return render_line(c, &e->event, 0, 1);
}

/* Effect i is an event by slot of that kind, stored or not, whose line form is s. */
#define CHECK_EVENT(c, i, slot_, kind_, stored_, s) do { \
    const chat_effect *v_ = effect((c), (i)); \
    CHECK(v_ != NULL); \
    if (v_) { \
        CHECK_INT(v_->kind, CHAT_EVENT); \
        CHECK_INT(v_->slot, (slot_)); \
        CHECK_INT(v_->event.kind, (kind_)); \
        CHECK_INT(v_->stored, (stored_)); \
        CHECK_STR(event_line((c), (i)), (s)); \
    } \
} while (0)

typedef struct members {
    uint32_t slots[64];
    size_t n;
} members;

static void collect(void *ctx, uint32_t slot)
{
    members *m = (members *)ctx;
    if (m->n < 64)
        m->slots[m->n] = slot;
    m->n++;
}

static members members_of(const chat *c, const char *room)
{
    members m;
    memset(&m, 0, sizeof m);
    chat_room_members(c, room, collect, &m);
    return m;
}

static int is_member(const chat *c, const char *room, uint32_t slot)
{
    members m = members_of(c, room);
    size_t k;
    for (k = 0; k < m.n && k < 64; k++)
        if (m.slots[k] == slot)
            return 1;
    return 0;
}

/* What text.h promises clients: valid UTF-8 with no control character but
 * TAB (C1 included) and no line or bidi separator. */
static int bytes_clean(const char *s, size_t n)
{
    return is_clean_utf8((const unsigned char *)s, n);
}

static int field_clean(const char *s)
{
    return s != NULL && bytes_clean(s, strlen(s));
}

/* No text an effect carries or an event renders to (in the line form, in
 * each of its rooms, as members and as the actor see it) may be other than
 * clean UTF-8 (bytes_clean), but the CRLF that ends a rendered line. */
static int texts_clean(const chat *c)
{
    const chat_effect *e;
    size_t n = chat_effects(c, &e), i;
    for (i = 0; i < n; i++) {
        if (e[i].text != NULL &&
            (strlen(e[i].text) != e[i].text_len || !bytes_clean(e[i].text, e[i].text_len)))
            return 0;
        if (e[i].kind == CHAT_EVENT) {
            const chat_event *ev = &e[i].event;
            uint32_t r;
            int echo;
            if (!field_clean(ev->nick) || ev->body == NULL || !bytes_clean(ev->body, ev->body_len) ||
                (ev->target != NULL && !field_clean(ev->target)) || ev->room_count > CHAT_ROOMS_PER_SESSION)
                return 0;
            for (r = 0; r < ev->room_count; r++)
                if (!field_clean(ev->rooms[r]))
                    return 0;
            for (r = 0; r < (ev->room_count > 0 ? ev->room_count : 1); r++)
                for (echo = 0; echo < 2; echo++) {
                    size_t len;
                    const char *out = render_form(c, CHAT_FORM_LINE, ev, r, echo, &len);
                    if (len < 2 || out[len - 2] != '\r' || out[len - 1] != '\n' ||
                        !bytes_clean(out, len - 2))
                        return 0;
                }
        }
    }
    return 1;
}

static void test_open(void)
{
    chat *c = make(15, 0, 0, 0, 0, 8);
    const chat_effect *e;
    CHECK(c != NULL);
    chat_session_open(c, 3, 7, CHAT_DIALECT_LINE, now);
    /* The join is announced right after it happens, before the replies that
     * describe the room and the replay. */
    CHECK_INT(count(c), 6);
    CHECK_REPLY(c, 0, 3, "*** Welcome to Test Relay.");
    CHECK_REPLY(c, 1, 3, "*** Your nick is guest7; change it with /nick NAME.");
    CHECK_EVENT(c, 2, 3, HISTORY_JOIN, 1, "*** guest7 joined lobby");
    e = must(c, 2);
    CHECK_INT(e->event.room_count, 1);
    CHECK_STR(e->event.rooms[0], "lobby");
    CHECK_STR(e->event.nick, "guest7");
    CHECK_INT(e->event.body_len, 0);
    CHECK(e->event.body != NULL);
    CHECK_INT(e->event.quit, 0);
    CHECK(!chat_session_echoes(c, 3, &e->event));   /* the joiner is told by the replies instead */
    CHECK_REPLY(c, 3, 3, "*** You are in lobby (1 here).");
    CHECK_REPLY(c, 4, 3, "*** Type /help for the commands.");
    e = must(c, 5);
    CHECK_INT(e->kind, CHAT_QUERY);
    CHECK_INT(e->slot, 3);
    CHECK_STR(e->room, "lobby");
    CHECK(e->words == NULL);
    CHECK_INT(e->limit, 15);
    CHECK_INT(chat_session_dialect(c, 3), CHAT_DIALECT_LINE);
    CHECK_INT(chat_session_form(c, 3), CHAT_FORM_LINE);
    CHECK_STR(chat_session_nick(c, 3), "guest7");
    CHECK_STR(chat_session_room(c, 3), "lobby");
    CHECK(chat_session_nick(c, 2) == NULL);
    CHECK(chat_session_room(c, 2) == NULL);
    CHECK(chat_session_nick(c, 99) == NULL);

    chat_session_open(c, 4, 8, CHAT_DIALECT_LINE, now);
    CHECK_REPLY(c, 3, 4, "*** You are in lobby (2 here).");
    chat_destroy(c);

    /* replay 0: no history effect; an empty server name falls back to the default. */
    {
        chat_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.server_name = "";
        c = chat_create(&cfg, 4);
        chat_session_open(c, 0, 1, CHAT_DIALECT_LINE, now);
        CHECK_INT(count(c), 5);
        CHECK_REPLY(c, 0, 0, "*** Welcome to chatrelay.");
        CHECK_INT(must(c, 2)->kind, CHAT_EVENT);
        CHECK_INT(must(c, 4)->kind, CHAT_REPLY);   /* the last effect, and no query */
        chat_destroy(c);
        /* A server name with control characters never reaches a client raw. */
        cfg.server_name = "evil\x1b[2Jname\x07";
        c = chat_create(&cfg, 4);
        chat_session_open(c, 0, 1, CHAT_DIALECT_LINE, now);
        CHECK_REPLY(c, 0, 0, "*** Welcome to evil[2Jname.");
        chat_destroy(c);
    }
    CHECK(chat_create(NULL, 4) == NULL);
    CHECK(make(0, 0, 0, 0, 0, 0) == NULL);
}

/* --password-file: a line client gets no nick, room, history or chat until
 * /pass gives the password; three wrong ones close it.  Nothing it says
 * before is an event (so nothing is stored or delivered). */
static void test_password(void)
{
    chat_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.server_name = "Test Relay";
    cfg.replay = 5;
    char secret[] = "s3cret pass";
    cfg.password = secret;
    chat *c = chat_create(&cfg, 8);
    memset(secret, 'x', sizeof secret - 1);   /* chat keeps its own copy */
    CHECK(c != NULL);
    chat_session_open(c, 0, 1, CHAT_DIALECT_LINE, now);
    CHECK_INT(count(c), 2);
    CHECK_REPLY(c, 0, 0, "*** Welcome to Test Relay.");
    CHECK_REPLY(c, 1, 0, "*** This server needs a password: type /pass PASSWORD.");
    CHECK(chat_session_nick(c, 0) == NULL);
    CHECK(chat_session_room(c, 0) == NULL);
    /* an admitted client to watch for leaks */
    chat_session_open(c, 1, 2, CHAT_DIALECT_LINE, now);
    send_line(c, 1, "/pass s3cret pass");
    CHECK_STR(chat_session_nick(c, 1), "guest2");
    CHECK_STR(chat_session_room(c, 1), "lobby");
    send_line(c, 0, "hello before the password");
    CHECK_ONLY_REPLY(c, 0, "*** Type /pass PASSWORD first (or /quit).");
    send_line(c, 0, "/who");
    CHECK_ONLY_REPLY(c, 0, "*** Type /pass PASSWORD first (or /quit).");
    send_line(c, 0, "/pass s3cret");
    CHECK_ONLY_REPLY(c, 0, "*** Wrong password.");
    send_line(c, 0, "/pass s3cret passX");
    CHECK_ONLY_REPLY(c, 0, "*** Wrong password.");
    send_line(c, 0, "/PASS s3cret pass  ");         /* the command in any case, trailing blanks */
    const chat_effect *e = must(c, 0);
    CHECK_INT(e->kind, CHAT_REPLY);
    CHECK_STR(chat_session_nick(c, 0), "guest1");
    CHECK_STR(chat_session_room(c, 0), "lobby");
    size_t n = count(c);
    int joined = 0, queried = 0;
    for (size_t i = 0; i < n; i++) {
        e = must(c, i);
        joined += e->kind == CHAT_EVENT && e->event.kind == HISTORY_JOIN;
        queried += e->kind == CHAT_QUERY;
    }
    CHECK_INT(joined, 1);
    CHECK_INT(queried, 1);                        /* the replay comes only now */
    send_line(c, 0, "/pass again");               /* admitted: /pass is an unknown command */
    CHECK_ONLY_REPLY(c, 0, "*** Unknown command /pass; type /help for the list.");

    /* three wrong passwords: closed, no leave (it never joined) */
    chat_session_open(c, 2, 3, CHAT_DIALECT_LINE, now);
    send_line(c, 2, "/pass a");
    send_line(c, 2, "/pass b");
    send_line(c, 2, "/pass c");
    CHECK_INT(count(c), 1);
    e = must(c, 0);
    CHECK_INT(e->kind, CHAT_CLOSE);
    CHECK_MEM(e->text, e->text_len, "*** Wrong password; disconnecting.");
    CHECK_STR(e->reason, "bad password");
    chat_session_close(c, 2, "bad password");
    CHECK_INT(count(c), 0);
    /* /quit before the password */
    chat_session_open(c, 3, 4, CHAT_DIALECT_LINE, now);
    send_line(c, 3, "/quit");
    e = must(c, 0);
    CHECK_INT(e->kind, CHAT_CLOSE);
    chat_session_close(c, 3, "quit");
    /* a stranger cannot keep the slot: 10 lines, or 60 s of silence, before the password */
    chat_session_open(c, 4, 5, CHAT_DIALECT_LINE, now);
    for (int k = 0; k < 10; k++) {
        send_line(c, 4, "hello?");
        CHECK_ONLY_REPLY(c, 4, "*** Type /pass PASSWORD first (or /quit).");
    }
    send_line(c, 4, "/pass s3cret pass");                 /* the 11th line: too late */
    e = must(c, 0);
    CHECK_INT(e->kind, CHAT_CLOSE);
    CHECK_MEM(e->text, e->text_len, "*** No password given; disconnecting.");
    CHECK_STR(e->reason, "no password");
    chat_session_close(c, 4, "no password");
    chat_session_open(c, 5, 6, CHAT_DIALECT_LINE, now);
    chat_session_tick(c, 5, 59999);
    CHECK_INT(count(c), 0);
    chat_session_tick(c, 5, 60000);
    e = must(c, 0);
    CHECK_INT(e->kind, CHAT_CLOSE);
    CHECK_STR(e->reason, "no password");
    chat_session_tick(c, 1, 600000);                     /* an admitted line client is never ticked out */
    CHECK_INT(count(c), 0);
    chat_destroy(c);
}

static void test_say_and_me(void)
{
    chat *c = make(0, 0, 0, 0, 0, 8);
    const chat_effect *e;
    chat_session_open(c, 0, 1, CHAT_DIALECT_LINE, now);
    chat_session_open(c, 1, 2, CHAT_DIALECT_LINE, now);

    send_line(c, 0, "hello there");
    CHECK_INT(count(c), 1);
    CHECK_EVENT(c, 0, 0, HISTORY_SAY, 1, "<guest1> hello there");
    e = must(c, 0);
    CHECK(!chat_session_echoes(c, 0, &e->event));   /* the sender typed it: not sent back */
    CHECK_INT(e->event.room_count, 1);
    CHECK_STR(e->event.rooms[0], "lobby");
    CHECK_STR(e->event.nick, "guest1");
    CHECK_MEM(e->event.body, e->event.body_len, "hello there");

    /* Spaces and tabs are kept as typed; UTF-8 passes through. */
    send_line(c, 0, "  caf\xc3\xa9\t\xe2\x82\xac ");
    CHECK_STR(event_line(c, 0), "<guest1>   caf\xc3\xa9\t\xe2\x82\xac ");

    send_line(c, 0, "");
    CHECK_INT(count(c), 0);
    send_line(c, 0, "   \t  ");
    CHECK_INT(count(c), 0);

    send_line(c, 1, "//etc/passwd is a path");
    CHECK_INT(count(c), 1);
    e = must(c, 0);
    CHECK_STR(event_line(c, 0), "<guest2> /etc/passwd is a path");
    CHECK_MEM(e->event.body, e->event.body_len, "/etc/passwd is a path");
    send_line(c, 1, "//");
    CHECK_STR(event_line(c, 0), "<guest2> /");
    /* Only a leading slash makes a command. */
    send_line(c, 1, " /nick x");
    CHECK_STR(event_line(c, 0), "<guest2>  /nick x");

    send_line(c, 0, "/me waves  at\tyou  ");
    CHECK_INT(count(c), 1);
    CHECK_EVENT(c, 0, 0, HISTORY_ME, 1, "* guest1 waves  at\tyou");
    e = must(c, 0);
    CHECK(!chat_session_echoes(c, 0, &e->event));
    CHECK_MEM(e->event.body, e->event.body_len, "waves  at\tyou");
    send_line(c, 0, "/ME   ");
    CHECK_ONLY_REPLY(c, 0, "*** Usage: /me ACTION");

    /* A line cut by the framer is still said, after a notice to the sender. */
    chat_session_line(c, 0, "long line", 9, 1, now);
    CHECK_INT(count(c), 2);
    CHECK_REPLY(c, 0, 0, "*** Your line was too long: it was cut at 1024 bytes.");
    CHECK_STR(event_line(c, 1), "<guest1> long line");

    /* A line longer than the contract is cut at a character boundary and flagged. */
    {
        static char big[3000];
        size_t i;
        for (i = 0; i + 3 <= sizeof big; i += 3)
            memcpy(big + i, "\xe2\x82\xac", 3);   /* 1024 = 3 * 341 + 1: the cut lands at 1023 */
        chat_session_line(c, 0, big, sizeof big, 0, now);
        CHECK_INT(count(c), 2);
        CHECK_REPLY(c, 0, 0, "*** Your line was too long: it was cut at 1024 bytes.");
        e = must(c, 1);
        CHECK_INT(e->event.body_len, 1023);
        CHECK_INT(strlen(event_line(c, 1)), 1023 + strlen("<guest1> "));
        CHECK(memcmp(e->event.body, big, 1023) == 0);
    }
    CHECK(texts_clean(c));
    chat_destroy(c);
}

static void test_nick(void)
{
    chat *c = make(0, 0, 0, 0, 0, 8);
    const chat_effect *e;
    char longname[1000];
    chat_session_open(c, 0, 1, CHAT_DIALECT_LINE, now);
    chat_session_open(c, 1, 2, CHAT_DIALECT_LINE, now);

    /* One event for the session's one room, stored, and shown to the sender
     * too (its confirmation): the same text as the members'. */
    send_line(c, 0, "/nick alice");
    CHECK_INT(count(c), 1);
    CHECK_EVENT(c, 0, 0, HISTORY_NICK, 1, "*** guest1 is now known as alice");
    e = must(c, 0);
    CHECK(chat_session_echoes(c, 0, &e->event));   /* the sender sees it too */
    CHECK_STR(echo_line(c, 0), "*** guest1 is now known as alice");
    CHECK_STR(e->event.nick, "guest1");
    CHECK_MEM(e->event.body, e->event.body_len, "alice");
    CHECK_INT(e->event.room_count, 1);
    CHECK_STR(e->event.rooms[0], "lobby");
    CHECK_STR(chat_session_nick(c, 0), "alice");

    /* Taken, case-insensitively. */
    send_line(c, 1, "/NICK ALICE");
    CHECK_ONLY_REPLY(c, 1, "*** The nick alice is taken.");
    CHECK_STR(chat_session_nick(c, 1), "guest2");
    /* The old nick is free again. */
    send_line(c, 1, "/Nick  guest1 \t");
    CHECK_STR(event_line(c, 0), "*** guest2 is now known as guest1");
    CHECK_STR(chat_session_nick(c, 1), "guest1");

    /* Same nick: a notice.  A change of case only: allowed and announced. */
    send_line(c, 0, "/nick alice");
    CHECK_ONLY_REPLY(c, 0, "*** You are already alice.");
    send_line(c, 0, "/nick Alice");
    CHECK_INT(count(c), 1);
    CHECK_STR(event_line(c, 0), "*** alice is now known as Alice");
    CHECK_STR(chat_session_nick(c, 0), "Alice");
    send_line(c, 1, "/nick aLiCe");
    CHECK_ONLY_REPLY(c, 1, "*** The nick Alice is taken.");

    send_line(c, 0, "/nick");
    CHECK_ONLY_REPLY(c, 0, "*** Usage: /nick NAME (1-32 letters, digits, _ or -)");
    send_line(c, 0, "/nick    ");
    CHECK_ONLY_REPLY(c, 0, "*** Usage: /nick NAME (1-32 letters, digits, _ or -)");
    send_line(c, 0, "/nick bob smith");
    CHECK_ONLY_REPLY(c, 0, "*** Invalid nick \"bob smith\": use 1-32 letters, digits, _ or -.");
    send_line(c, 0, "/nick b\xc3\xb6" "b");
    CHECK_ONLY_REPLY(c, 0, "*** Invalid nick \"b\xc3\xb6" "b\": use 1-32 letters, digits, _ or -.");
    send_line(c, 0, "/nick #x");
    CHECK_ONLY_REPLY(c, 0, "*** Invalid nick \"#x\": use 1-32 letters, digits, _ or -.");
    send_line(c, 0, "/nick 0123456789abcdefghijklmnopqrstuv");   /* 32: fine */
    CHECK_STR(chat_session_nick(c, 0), "0123456789abcdefghijklmnopqrstuv");
    send_line(c, 0, "/nick 0123456789abcdefghijklmnopqrstuvw");  /* 33: too long, echo cut */
    CHECK_ONLY_REPLY(c, 0,
        "*** Invalid nick \"0123456789abcdefghijklmnopqrstuv...\": use 1-32 letters, digits, _ or -.");
    /* A very long name of multi-byte characters: the echo is cut on a character boundary. */
    memcpy(longname, "/nick ", 6);
    {
        size_t i;
        for (i = 6; i + 3 < sizeof longname; i += 3)
            memcpy(longname + i, "\xe2\x82\xac", 3);
        longname[i] = '\0';
    }
    send_line(c, 0, longname);
    CHECK_ONLY_REPLY(c, 0,
        "*** Invalid nick \"\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac"
        "\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac...\": use 1-32 letters, digits, _ or -.");
    send_line(c, 0, "/nick under_score-dash");
    CHECK_STR(chat_session_nick(c, 0), "under_score-dash");
    CHECK(texts_clean(c));
    chat_destroy(c);
}

static void test_join_rooms_who(void)
{
    chat *c = make(10, 0, 0, 0, 0, 8);
    const chat_effect *e;
    members m;
    chat_session_open(c, 0, 1, CHAT_DIALECT_LINE, now);
    chat_session_open(c, 1, 2, CHAT_DIALECT_LINE, now);
    chat_session_open(c, 2, 3, CHAT_DIALECT_LINE, now);
    send_line(c, 0, "/nick alice");
    send_line(c, 1, "/nick bob");

    m = members_of(c, "lobby");
    CHECK_INT(m.n, 3);
    CHECK_INT(m.slots[0], 0);
    CHECK_INT(m.slots[1], 1);
    CHECK_INT(m.slots[2], 2);

    /* The leave, the join, then the replies and the replay. */
    send_line(c, 0, "/join Games");
    CHECK_INT(count(c), 4);
    CHECK_EVENT(c, 0, 0, HISTORY_LEAVE, 1, "*** alice left lobby (joined Games)");
    e = must(c, 0);
    CHECK_INT(e->event.room_count, 1);
    CHECK_STR(e->event.rooms[0], "lobby");
    CHECK_INT(e->event.quit, 0);
    CHECK_STR(e->event.nick, "alice");
    CHECK_MEM(e->event.body, e->event.body_len, "joined Games");
    /* The old room's members see it; alice, out of it, gets no copy. */
    CHECK(!chat_session_echoes(c, 0, &e->event));
    CHECK(!is_member(c, "lobby", 0));
    CHECK_EVENT(c, 1, 0, HISTORY_JOIN, 1, "*** alice joined Games");
    e = must(c, 1);
    CHECK_INT(e->event.room_count, 1);
    CHECK_STR(e->event.rooms[0], "Games");
    CHECK(!chat_session_echoes(c, 0, &e->event));
    CHECK_REPLY(c, 2, 0, "*** You are now in Games (1 here).");
    e = must(c, 3);
    CHECK_INT(e->kind, CHAT_QUERY);
    CHECK_STR(e->room, "Games");
    CHECK(e->words == NULL);
    CHECK_INT(e->limit, 10);
    CHECK_STR(chat_session_room(c, 0), "Games");

    /* Isolation: a line in one room goes to that room only. */
    m = members_of(c, "games");
    CHECK_INT(m.n, 1);
    CHECK_INT(m.slots[0], 0);
    m = members_of(c, "lobby");
    CHECK_INT(m.n, 2);
    CHECK_INT(m.slots[0], 1);
    CHECK_INT(m.slots[1], 2);
    send_line(c, 1, "only lobby hears this");
    CHECK_INT(must(c, 0)->event.room_count, 1);
    CHECK_STR(must(c, 0)->event.rooms[0], "lobby");
    send_line(c, 0, "only games hears this");
    CHECK_INT(must(c, 0)->event.room_count, 1);
    CHECK_STR(must(c, 0)->event.rooms[0], "Games");

    /* Joining keeps the room's first spelling; already there -> a notice only. */
    send_line(c, 1, "/join GAMES");
    CHECK_REPLY(c, 2, 1, "*** You are now in Games (2 here).");
    CHECK_STR(chat_session_room(c, 1), "Games");
    send_line(c, 1, "/join games");
    CHECK_ONLY_REPLY(c, 1, "*** You are already in Games.");
    send_line(c, 2, "/join LOBBY");
    CHECK_ONLY_REPLY(c, 2, "*** You are already in lobby.");

    send_line(c, 2, "/rooms");
    CHECK_ONLY_REPLY(c, 2, "*** 2 rooms: lobby (1), Games (2).");
    send_line(c, 2, "/who");
    CHECK_ONLY_REPLY(c, 2, "*** In lobby (1): guest3.");
    send_line(c, 1, "/WHO extra words are ignored");
    CHECK_ONLY_REPLY(c, 1, "*** In Games (2): alice, bob.");

    /* The lobby stays when empty; other rooms go with their last member. */
    send_line(c, 2, "/join side");
    send_line(c, 2, "/rooms");
    CHECK_ONLY_REPLY(c, 2, "*** 3 rooms: lobby (0), Games (2), side (1).");
    send_line(c, 2, "/join lobby");
    CHECK_STR(must(c, 0)->event.rooms[0], "side");
    CHECK_STR(event_line(c, 0), "*** guest3 left side (joined lobby)");
    m = members_of(c, "side");
    CHECK_INT(m.n, 0);
    send_line(c, 2, "/rooms");
    CHECK_ONLY_REPLY(c, 2, "*** 2 rooms: lobby (1), Games (2).");
    send_line(c, 0, "/join lobby");
    send_line(c, 1, "/join lobby");
    send_line(c, 1, "/rooms");
    CHECK_ONLY_REPLY(c, 1, "*** 1 room: lobby (3).");
    m = members_of(c, "Games");
    CHECK_INT(m.n, 0);
    /* A freed room name can be created again, with a new spelling. */
    send_line(c, 1, "/join gAmEs");
    CHECK_STR(chat_session_room(c, 1), "gAmEs");

    send_line(c, 0, "/join");
    CHECK_ONLY_REPLY(c, 0, "*** Usage: /join ROOM (1-32 letters, digits, _ or -)");
    send_line(c, 0, "/join #chat");
    CHECK_ONLY_REPLY(c, 0, "*** Invalid room name \"#chat\": use 1-32 letters, digits, _ or -.");
    send_line(c, 0, "/join two words");
    CHECK_ONLY_REPLY(c, 0, "*** Invalid room name \"two words\": use 1-32 letters, digits, _ or -.");
    CHECK_STR(chat_session_room(c, 0), "lobby");

    /* Membership lookups with hostile names find nothing. */
    m = members_of(c, "");
    CHECK_INT(m.n, 0);
    m = members_of(c, "lobbylobbylobbylobbylobbylobbylobbylobby");
    CHECK_INT(m.n, 0);
    m = members_of(c, "lob by");
    CHECK_INT(m.n, 0);
    chat_room_members(c, NULL, collect, &m);
    chat_room_members(c, "lobby", NULL, NULL);
    CHECK(texts_clean(c));
    chat_destroy(c);
}

static void test_join_without_replay(void)
{
    chat *c = make(0, 0, 0, 0, 0, 4);
    chat_session_open(c, 0, 1, CHAT_DIALECT_LINE, now);
    send_line(c, 0, "/join x");
    CHECK_INT(count(c), 3);
    CHECK_INT(must(c, 0)->kind, CHAT_EVENT);
    CHECK_INT(must(c, 0)->event.kind, HISTORY_LEAVE);
    CHECK_INT(must(c, 1)->kind, CHAT_EVENT);
    CHECK_INT(must(c, 1)->event.kind, HISTORY_JOIN);
    CHECK_INT(must(c, 2)->kind, CHAT_REPLY);
    chat_destroy(c);
}

static void test_msg(void)
{
    chat *c = make(0, 0, 0, 0, 0, 8);
    const chat_effect *e;
    chat_session_open(c, 0, 1, CHAT_DIALECT_LINE, now);
    chat_session_open(c, 1, 2, CHAT_DIALECT_LINE, now);
    send_line(c, 0, "/nick alice");
    send_line(c, 1, "/nick Bob");
    send_line(c, 1, "/join elsewhere");   /* private messages cross rooms */

    send_line(c, 0, "/msg bob   hi  there \t");
    CHECK_INT(count(c), 1);
    CHECK_EVENT(c, 0, 0, HISTORY_MSG, 0, "*alice* hi  there");   /* log_private 0: not stored */
    e = must(c, 0);
    CHECK_INT(e->to_slot, 1);
    CHECK_STR(e->event.target, "Bob");   /* as the recipient spells it */
    CHECK_MEM(e->event.body, e->event.body_len, "hi  there");
    /* The sender's confirmation is its echo form. */
    CHECK(chat_session_echoes(c, 0, &e->event));
    CHECK_STR(echo_line(c, 0), "*** to Bob: hi  there");

    send_line(c, 0, "/msg zed hello");
    CHECK_ONLY_REPLY(c, 0, "*** No such nick: zed.");
    send_line(c, 0, "/msg no/such hello");
    CHECK_ONLY_REPLY(c, 0, "*** No such nick: no/such.");
    send_line(c, 0, "/msg ALICE hello me");
    CHECK_ONLY_REPLY(c, 0, "*** That is you: /msg sends to someone else.");
    send_line(c, 0, "/msg bob");
    CHECK_ONLY_REPLY(c, 0, "*** Usage: /msg NICK TEXT");
    send_line(c, 0, "/msg bob    ");
    CHECK_ONLY_REPLY(c, 0, "*** Usage: /msg NICK TEXT");
    send_line(c, 0, "/msg");
    CHECK_ONLY_REPLY(c, 0, "*** Usage: /msg NICK TEXT");
    chat_destroy(c);

    /* log_private: stored as kind "msg" in the sender's room, body "to <nick>: text". */
    c = make(0, 0, 0, 0, 1, 8);
    chat_session_open(c, 0, 1, CHAT_DIALECT_LINE, now);
    chat_session_open(c, 1, 2, CHAT_DIALECT_LINE, now);
    send_line(c, 0, "/join den");
    send_line(c, 0, "/msg guest2 psst");
    CHECK_INT(count(c), 1);
    CHECK_EVENT(c, 0, 0, HISTORY_MSG, 1, "*guest1* psst");
    e = must(c, 0);
    CHECK_INT(e->to_slot, 1);
    CHECK_INT(e->event.room_count, 1);
    CHECK_STR(e->event.rooms[0], "den");
    CHECK_STR(e->event.nick, "guest1");
    /* The hub stores "to guest2: psst" from these two. */
    CHECK_STR(e->event.target, "guest2");
    CHECK_MEM(e->event.body, e->event.body_len, "psst");
    CHECK(chat_session_echoes(c, 0, &e->event));
    CHECK_STR(echo_line(c, 0), "*** to guest2: psst");
    chat_destroy(c);
}

static void check_history_limit(chat *c, const char *line, int limit)
{
    const chat_effect *e;
    send_line(c, 0, line);
    CHECK_INT(count(c), 1);
    e = must(c, 0);
    CHECK_INT(e->kind, CHAT_QUERY);
    CHECK_INT(e->slot, 0);
    CHECK_STR(e->room, "lobby");
    CHECK(e->words == NULL);
    CHECK_INT(e->limit, limit);
}

static void test_history_search(void)
{
    static const char usage[] = "*** Usage: /history [N] (N from 1 to 200, default 20)";
    chat *c = make(0, 0, 0, 0, 0, 4);
    const chat_effect *e;
    chat_session_open(c, 0, 1, CHAT_DIALECT_LINE, now);
    check_history_limit(c, "/history", 20);
    check_history_limit(c, "/HISTORY   ", 20);
    check_history_limit(c, "/history 1", 1);
    check_history_limit(c, "/history 5", 5);
    check_history_limit(c, "/history  007 ", 7);
    check_history_limit(c, "/history 200", 200);
    check_history_limit(c, "/history 201", 200);
    check_history_limit(c, "/history 99999999999999999999999999999", 200);
    send_line(c, 0, "/history 0");
    CHECK_ONLY_REPLY(c, 0, usage);
    send_line(c, 0, "/history -3");
    CHECK_ONLY_REPLY(c, 0, usage);
    send_line(c, 0, "/history +3");
    CHECK_ONLY_REPLY(c, 0, usage);
    send_line(c, 0, "/history ten");
    CHECK_ONLY_REPLY(c, 0, usage);
    send_line(c, 0, "/history 5 6");
    CHECK_ONLY_REPLY(c, 0, usage);
    send_line(c, 0, "/history 5x");
    CHECK_ONLY_REPLY(c, 0, usage);

    send_line(c, 0, "/join books");
    send_line(c, 0, "/search  dune   arrakis ");
    CHECK_INT(count(c), 1);
    e = must(c, 0);
    CHECK_INT(e->kind, CHAT_QUERY);
    CHECK_INT(e->slot, 0);
    CHECK_STR(e->room, "books");
    CHECK_STR(e->words, "dune   arrakis");
    CHECK_INT(e->limit, CHAT_SEARCH_MAX);
    send_line(c, 0, "/search \"quoted\" OR NEAR(x*)");
    CHECK_STR(must(c, 0)->words, "\"quoted\" OR NEAR(x*)");
    send_line(c, 0, "/search");
    CHECK_ONLY_REPLY(c, 0, "*** Usage: /search WORDS");
    send_line(c, 0, "/search \t ");
    CHECK_ONLY_REPLY(c, 0, "*** Usage: /search WORDS");
    chat_destroy(c);
}

static void test_help_unknown(void)
{
    chat *c = make(0, 0, 0, 0, 0, 4);
    const chat_effect *e;
    size_t n, i;
    static const char *const commands[] = {"/nick", "/join", "/rooms", "/who", "/me", "/msg",
                                           "/history", "/search", "/topic", "/help", "/quit", "//"};
    chat_session_open(c, 0, 1, CHAT_DIALECT_LINE, now);
    send_line(c, 0, "/help");
    n = chat_effects(c, &e);
    CHECK_INT(n, 13);
    for (i = 0; i < n; i++) {
        CHECK_INT(e[i].kind, CHAT_REPLY);
        CHECK(e[i].text_len > 4 && memcmp(e[i].text, "*** ", 4) == 0);
    }
    /* Every command is named at the start of its own line (or, for //, somewhere). */
    for (i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        size_t k;
        int found = 0;
        for (k = 0; k < n; k++)
            if (strstr(e[k].text, commands[i]))
                found = 1;
        CHECK(found);
    }
    send_line(c, 0, "/HeLp");
    CHECK_INT(count(c), 13);

    send_line(c, 0, "/frobnicate now");
    CHECK_ONLY_REPLY(c, 0, "*** Unknown command /frobnicate; type /help for the list.");
    send_line(c, 0, "/");
    CHECK_ONLY_REPLY(c, 0, "*** Unknown command /; type /help for the list.");
    send_line(c, 0, "/ nick x");
    CHECK_ONLY_REPLY(c, 0, "*** Unknown command /; type /help for the list.");
    send_line(c, 0, "/nickname x");
    CHECK_ONLY_REPLY(c, 0, "*** Unknown command /nickname; type /help for the list.");
    send_line(c, 0, "/mee");
    CHECK_ONLY_REPLY(c, 0, "*** Unknown command /mee; type /help for the list.");
    send_line(c, 0, "/abcdefghijklmnopqrstuvwxyz0123456789");
    CHECK_ONLY_REPLY(c, 0,
        "*** Unknown command /abcdefghijklmnopqrstuvwxyz012345...; type /help for the list.");
    chat_destroy(c);
}

static void test_quit_close(void)
{
    chat *c = make(0, 0, 0, 0, 0, 4);
    const chat_effect *e;
    char reason[512];
    chat_session_open(c, 0, 1, CHAT_DIALECT_LINE, now);
    chat_session_open(c, 1, 2, CHAT_DIALECT_LINE, now);
    send_line(c, 0, "/nick alice");

    send_line(c, 0, "/quit   see you  later ");
    CHECK_INT(count(c), 1);
    e = must(c, 0);
    CHECK_INT(e->kind, CHAT_CLOSE);
    CHECK_INT(e->slot, 0);
    CHECK_MEM(e->text, e->text_len, "*** Bye.");
    CHECK_STR(e->reason, "quit: see you  later");
    /* The hub passes the effect's own reason back (it points into chat's arena). */
    chat_session_line(c, 0, "after quit", 10, 0, now);
    CHECK_INT(count(c), 0);
    send_line(c, 0, "/quit");
    CHECK_INT(count(c), 0);
    send_line(c, 0, "/quit again");
    e = effect(c, 0);
    CHECK(e == NULL);
    send_line(c, 0, "/quit   see you  later ");   /* ignored: closing */
    CHECK_INT(count(c), 0);
    CHECK_STR(chat_session_nick(c, 0), "alice");   /* still known until the hub closes it */
    chat_session_close(c, 0, "quit: see you  later");
    CHECK_INT(count(c), 1);
    CHECK_EVENT(c, 0, 0, HISTORY_LEAVE, 1, "*** alice left lobby (quit: see you  later)");
    e = must(c, 0);
    CHECK_INT(e->event.room_count, 1);
    CHECK_STR(e->event.rooms[0], "lobby");
    CHECK_INT(e->event.quit, 1);
    CHECK_STR(e->event.nick, "alice");
    CHECK_MEM(e->event.body, e->event.body_len, "quit: see you  later");
    /* Nobody is left out: the slot is out of the room already (a new session
     * reusing it must see the line), and a leaver gets no copy of its own. */
    CHECK(!is_member(c, "lobby", 0));
    CHECK(!chat_session_echoes(c, 0, &e->event));
    CHECK(chat_session_nick(c, 0) == NULL);
    CHECK_INT(members_of(c, "lobby").n, 1);

    /* The hub keeps the CLOSE effect's reason and hands it back later, after
     * other sessions' lines: it must still read the same. */
    chat_session_open(c, 0, 3, CHAT_DIALECT_LINE, now);
    send_line(c, 0, "/quit bye");
    e = must(c, 0);
    {
        const char *kept = e->reason;
        int i;
        for (i = 0; i < 50; i++)
            send_line(c, 1, "/help");
        send_line(c, 1, "some chat that reuses the arena");
        CHECK_STR(kept, "quit: bye");
        chat_session_close(c, 0, kept);
    }
    CHECK_STR(event_line(c, 0), "*** guest3 left lobby (quit: bye)");
    chat_session_open(c, 0, 4, CHAT_DIALECT_LINE, now);
    send_line(c, 0, "/quit");
    CHECK_STR(must(c, 0)->reason, "quit");
    chat_session_close(c, 0, must(c, 0)->reason);
    CHECK_STR(event_line(c, 0), "*** guest4 left lobby (quit)");

    /* A long reason is cut (at a character boundary). */
    {
        size_t i;
        memcpy(reason, "/quit ", 6);
        for (i = 6; i + 2 < sizeof reason; i += 2)
            memcpy(reason + i, "\xc3\xa9", 2);
        reason[i] = '\0';
        chat_session_open(c, 0, 5, CHAT_DIALECT_LINE, now);
        send_line(c, 0, reason);
        e = must(c, 0);
        CHECK(strlen(e->reason) <= 6 + 200);
        CHECK(strlen(e->reason) >= 6 + 198);
        CHECK(((unsigned char)e->reason[strlen(e->reason) - 1] & 0xC0u) == 0x80u);
        chat_session_close(c, 0, e->reason);
        CHECK_INT(count(c), 1);
    }

    /* Other reasons, from the hub. */
    chat_session_open(c, 0, 6, CHAT_DIALECT_LINE, now);
    send_line(c, 0, "/join quiet");
    chat_session_close(c, 0, "timeout");
    CHECK_INT(count(c), 1);
    e = must(c, 0);
    CHECK_STR(e->event.rooms[0], "quiet");
    CHECK_STR(event_line(c, 0), "*** guest6 left quiet (timeout)");
    CHECK_INT(members_of(c, "quiet").n, 0);
    /* A long reason from the hub is cut on a character boundary. */
    chat_session_open(c, 0, 8, CHAT_DIALECT_LINE, now);
    chat_session_close(c, 0, reason + 6);
    e = must(c, 0);
    CHECK(e->event.body_len <= 215 && e->event.body_len >= 213);
    CHECK(((unsigned char)e->event.body[e->event.body_len - 1] & 0xC0u) == 0x80u);
    CHECK(texts_clean(c));
    /* A session that quits and is reopened without a close frees its reason. */
    chat_session_open(c, 0, 9, CHAT_DIALECT_LINE, now);
    send_line(c, 0, "/quit leaking?");
    chat_session_open(c, 0, 10, CHAT_DIALECT_LINE, now);
    CHECK_STR(event_line(c, 0), "*** guest9 left lobby (connection lost)");
    send_line(c, 0, "/quit still open at destroy");
    chat_session_close(c, 0, NULL);
    chat_session_open(c, 0, 7, CHAT_DIALECT_LINE, now);
    chat_session_close(c, 0, NULL);
    CHECK_STR(event_line(c, 0), "*** guest7 left lobby");
    CHECK_INT(must(c, 0)->event.body_len, 0);
    /* Closing a free slot or one out of range: nothing. */
    chat_session_close(c, 0, "connection lost");
    CHECK_INT(count(c), 0);
    chat_session_close(c, 77, "connection lost");
    CHECK_INT(count(c), 0);
    send_line(c, 0, "to nobody");
    CHECK_INT(count(c), 0);
    send_line(c, 77, "to nobody");
    CHECK_INT(count(c), 0);
    chat_session_line(c, 1, NULL, 5, 0, now);
    CHECK_INT(count(c), 0);
    chat_session_open(c, 77, 1, CHAT_DIALECT_LINE, now);
    CHECK_INT(count(c), 0);
    chat_destroy(c);
}

static void test_slot_reuse(void)
{
    chat *c = make(0, 0, 0, 0, 0, 4);
    const chat_effect *e;
    size_t n;
    chat_session_open(c, 2, 10, CHAT_DIALECT_LINE, now);
    chat_session_close(c, 2, "connection lost");
    chat_session_open(c, 2, 11, CHAT_DIALECT_LINE, now);
    CHECK_STR(chat_session_nick(c, 2), "guest11");
    send_line(c, 2, "/nick guest10");   /* the old nick was released */
    CHECK_STR(chat_session_nick(c, 2), "guest10");

    /* A guest name taken with /nick gets a suffix. */
    send_line(c, 2, "/nick guest12");
    chat_session_open(c, 0, 12, CHAT_DIALECT_LINE, now);
    CHECK_STR(chat_session_nick(c, 0), "guest12-2");
    chat_session_open(c, 3, 99, CHAT_DIALECT_LINE, now);
    send_line(c, 3, "/nick guest12-3");
    chat_session_open(c, 1, 12, CHAT_DIALECT_LINE, now);
    CHECK_STR(chat_session_nick(c, 1), "guest12-4");
    send_line(c, 1, "/msg GUEST12-2 hi");
    CHECK_INT(must(c, 0)->to_slot, 0);

    /* Opening a slot that was never closed: the old session leaves first. */
    chat_session_open(c, 0, 13, CHAT_DIALECT_LINE, now);
    n = chat_effects(c, &e);
    CHECK_INT(n, 6);
    CHECK_STR(event_line(c, 0), "*** guest12-2 left lobby (connection lost)");
    CHECK_INT(e[0].event.kind, HISTORY_LEAVE);
    CHECK_STR(chat_session_nick(c, 0), "guest13");
    CHECK_INT(members_of(c, "lobby").n, 4);
    chat_destroy(c);
}

static void test_flood(void)
{
    static const char too_fast[] = "*** Too fast: line not sent (limit 2 lines/s, bursts of 3).";
    chat *c = make(0, 3, 2, 4, 0, 4);
    const chat_effect *e;
    int64_t t = 5000;
    chat_session_open(c, 0, 1, CHAT_DIALECT_LINE, t);

    /* The burst goes through... */
    chat_session_line(c, 0, "a", 1, 0, t);
    CHECK_INT(must(c, 0)->kind, CHAT_EVENT);
    chat_session_line(c, 0, "/who", 4, 0, t);   /* commands cost a token too */
    CHECK_INT(must(c, 0)->kind, CHAT_REPLY);
    chat_session_line(c, 0, "c", 1, 0, t);
    CHECK_INT(must(c, 0)->kind, CHAT_EVENT);
    /* ...then lines are refused: not delivered, not stored. */
    chat_session_line(c, 0, "d", 1, 0, t);
    CHECK_ONLY_REPLY(c, 0, too_fast);
    chat_session_line(c, 0, "/nick x", 7, 0, t + 100);
    CHECK_ONLY_REPLY(c, 0, too_fast);
    CHECK_STR(chat_session_nick(c, 0), "guest1");
    /* Blank lines are free and silent. */
    chat_session_line(c, 0, "  ", 2, 0, t + 100);
    CHECK_INT(count(c), 0);
    /* 2 lines/s: 499 ms after the last refill point is still short of a token... */
    chat_session_line(c, 0, "e", 1, 0, t + 499);
    CHECK_ONLY_REPLY(c, 0, too_fast);
    /* ...500 ms gives exactly one, which resets the refused count. */
    chat_session_line(c, 0, "f", 1, 0, t + 500);
    CHECK_INT(count(c), 1);
    CHECK_STR(event_line(c, 0), "<guest1> f");
    chat_session_line(c, 0, "g", 1, 0, t + 500);
    CHECK_ONLY_REPLY(c, 0, too_fast);
    chat_session_line(c, 0, "h", 1, 0, t + 500);
    chat_session_line(c, 0, "i", 1, 0, t + 500);
    CHECK_ONLY_REPLY(c, 0, too_fast);
    /* The fourth refusal in a row disconnects. */
    chat_session_line(c, 0, "j", 1, 0, t + 500);
    CHECK_INT(count(c), 1);
    e = must(c, 0);
    CHECK_INT(e->kind, CHAT_CLOSE);
    CHECK_INT(e->slot, 0);
    CHECK_STR(e->reason, "flood");
    CHECK_MEM(e->text, e->text_len, "*** Disconnected for flooding: 4 lines in a row were over the limit.");
    /* Nothing more is taken from it, even after a pause. */
    chat_session_line(c, 0, "k", 1, 0, t + 100000);
    CHECK_INT(count(c), 0);
    chat_session_close(c, 0, e->reason);
    CHECK_STR(event_line(c, 0), "*** guest1 left lobby (flood)");

    /* A full pause refills the whole burst, not more. */
    chat_session_open(c, 1, 2, CHAT_DIALECT_LINE, t);
    chat_session_line(c, 1, "1", 1, 0, t);
    chat_session_line(c, 1, "2", 1, 0, t);
    chat_session_line(c, 1, "3", 1, 0, t);
    chat_session_line(c, 1, "4", 1, 0, t);
    CHECK_ONLY_REPLY(c, 1, too_fast);
    t += 3600 * 1000;
    chat_session_line(c, 1, "1", 1, 0, t);
    CHECK_INT(must(c, 0)->kind, CHAT_EVENT);
    chat_session_line(c, 1, "2", 1, 0, t);
    chat_session_line(c, 1, "3", 1, 0, t);
    CHECK_INT(must(c, 0)->kind, CHAT_EVENT);
    chat_session_line(c, 1, "4", 1, 0, t);
    CHECK_ONLY_REPLY(c, 1, too_fast);
    /* A clock going backwards gives no tokens and breaks nothing. */
    chat_session_line(c, 1, "5", 1, 0, t - 100000);
    CHECK_ONLY_REPLY(c, 1, too_fast);
    chat_session_line(c, 1, "6", 1, 0, INT64_MIN);
    CHECK_ONLY_REPLY(c, 1, too_fast);
    /* ...and a jump from INT64_MIN to INT64_MAX refills without overflow. */
    chat_session_line(c, 1, "7", 1, 0, INT64_MAX);
    CHECK_INT(must(c, 0)->kind, CHAT_EVENT);
    /* /quit works even when out of tokens. */
    chat_session_line(c, 1, "8", 1, 0, INT64_MAX);
    chat_session_line(c, 1, "9", 1, 0, INT64_MAX);
    chat_session_line(c, 1, "x", 1, 0, INT64_MAX);
    CHECK_ONLY_REPLY(c, 1, too_fast);
    chat_session_line(c, 1, "/QUIT flooded", 13, 0, INT64_MAX);
    CHECK_INT(must(c, 0)->kind, CHAT_CLOSE);
    CHECK_STR(must(c, 0)->reason, "quit: flooded");
    chat_destroy(c);

    /* flood_kick 0: refused forever, never disconnected. */
    c = make(0, 1, 1, 0, 0, 2);
    chat_session_open(c, 0, 1, CHAT_DIALECT_LINE, 0);
    chat_session_line(c, 0, "a", 1, 0, 0);
    {
        int i, refused = 0;
        for (i = 0; i < 1000; i++) {
            chat_session_line(c, 0, "b", 1, 0, 0);
            if (count(c) == 1 && must(c, 0)->kind == CHAT_REPLY)
                refused++;
        }
        CHECK_INT(refused, 1000);
    }
    chat_destroy(c);

    /* Burst 0 or rate 0: flood control off. */
    c = make(0, 0, 5, 1, 0, 2);
    chat_session_open(c, 0, 1, CHAT_DIALECT_LINE, 0);
    {
        int i, said = 0;
        for (i = 0; i < 1000; i++) {
            chat_session_line(c, 0, "b", 1, 0, 0);
            if (count(c) == 1 && must(c, 0)->kind == CHAT_EVENT)
                said++;
        }
        CHECK_INT(said, 1000);
    }
    chat_destroy(c);
    c = make(0, 5, 0, 1, 0, 2);
    chat_session_open(c, 0, 1, CHAT_DIALECT_LINE, 0);
    {
        int i, said = 0;
        for (i = 0; i < 100; i++) {
            chat_session_line(c, 0, "b", 1, 0, 0);
            said += count(c) == 1 && must(c, 0)->kind == CHAT_EVENT;
        }
        CHECK_INT(said, 100);
    }
    chat_destroy(c);
}

/* The kind column's text -> history_kind, as storage reads it (this test
 * links chat only, not storage). */
static history_kind kind_of(const char *name)
{
    static const char *const names[HISTORY_KIND_COUNT] = { NULL, "say", "me", "join", "leave", "nick", "msg", "topic" };
    for (int k = 1; k < HISTORY_KIND_COUNT; k++)
        if (name && names[k] && strcmp(name, names[k]) == 0)
            return (history_kind)k;
    return HISTORY_KIND_NONE;
}

static void check_format(const char *at, const char *kind, const char *nick, const char *room,
                         const char *body, const char *expect)
{
    history_record rec;
    char out[512];
    size_t n;
    memset(&rec, 0, sizeof rec);
    rec.id = 1;
    rec.at = at;
    rec.kind = kind_of(kind);   /* "future-kind": a row not of ours */
    rec.nick = nick;
    rec.room = room;
    rec.body = body;
    rec.body_len = body ? strlen(body) : 0;
    n = chat_format_history(&rec, out, sizeof out);
    CHECK_INT(n, strlen(out));
    CHECK_STR(out, expect);
}

static void test_format_history(void)
{
    static const char at[] = "2026-11-27T03:04:05.123Z";
    history_record rec;
    char out[64];
    size_t n;
    check_format(at, "say", "alice", "lobby", "hello world", "*** [2026-11-27 03:04:05] <alice> hello world");
    check_format(at, "me", "alice", "lobby", "waves", "*** [2026-11-27 03:04:05] * alice waves");
    check_format(at, "join", "alice", "lobby", "", "*** [2026-11-27 03:04:05] alice joined lobby");
    check_format(at, "leave", "alice", "lobby", "quit: bye",
                 "*** [2026-11-27 03:04:05] alice left lobby (quit: bye)");
    check_format(at, "leave", "alice", "lobby", "", "*** [2026-11-27 03:04:05] alice left lobby");
    check_format(at, "nick", "alice", "lobby", "bob", "*** [2026-11-27 03:04:05] alice is now known as bob");
    check_format(at, "msg", "alice", "lobby", "to bob: hi", "*** [2026-11-27 03:04:05] *alice* to bob: hi");
    check_format(at, "future-kind", "alice", "lobby", "x", "*** [2026-11-27 03:04:05] <alice> x");
    check_format("2026-11-27T03:04:05Z", "say", "a", "r", "x", "*** [2026-11-27 03:04:05] <a> x");
    check_format("2026-11-27T03:04:05", "say", "a", "r", "x", "*** [2026-11-27 03:04:05] <a> x");
    /* Malformed times are shown as they are. */
    check_format("yesterday", "say", "a", "r", "x", "*** [yesterday] <a> x");
    check_format("", "say", "a", "r", "x", "*** [] <a> x");
    check_format("2026-11-27", "say", "a", "r", "x", "*** [2026-11-27] <a> x");
    check_format("2026-11-27X03:04:05.123Z", "say", "a", "r", "x", "*** [2026-11-27X03:04:05.123Z] <a> x");
    check_format("2026-11-27T03:04:05junk", "say", "a", "r", "x", "*** [2026-11-27T03:04:05junk] <a> x");
    check_format(NULL, NULL, NULL, NULL, NULL, "*** [] <> ");
    /* A database edited by hand: controls dropped, bad UTF-8 replaced. */
    check_format("2026\x1b[1m", "say", "ev\x1bil", "r", "a\x1b[2Jb\x07\tc\x7f\xc2\x9b\xc2\xa0",
                 "*** [2026[1m] <evil> a[2Jb\tc\xc2\xa0");
    check_format(at, "say", "a", "r", "bad \xff \xc3 \xe2\x82 \xed\xa0\x80 \xf4\x90\x80\x80 ok \xf0\x9f\x98\x80",
                 "*** [2026-11-27 03:04:05] <a> bad \xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd "
                 "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd ok "
                 "\xf0\x9f\x98\x80");

    /* body_len is honoured (the body may hold more). */
    memset(&rec, 0, sizeof rec);
    rec.at = at;
    rec.kind = HISTORY_SAY;
    rec.nick = "a";
    rec.room = "r";
    rec.body = "hello world";
    rec.body_len = 5;
    n = chat_format_history(&rec, out, sizeof out);
    CHECK_STR(out, "*** [2026-11-27 03:04:05] <a> hello");
    CHECK_INT(n, 35);

    /* Truncation: NUL-terminated, never inside a character. */
    rec.body = "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9";
    rec.body_len = 8;
    n = chat_format_history(&rec, out, 34);   /* 30 bytes of prefix, room for 3 more */
    CHECK_INT(n, 32);
    CHECK_STR(out, "*** [2026-11-27 03:04:05] <a> \xc3\xa9");
    n = chat_format_history(&rec, out, 33);
    CHECK_INT(n, 32);
    n = chat_format_history(&rec, out, 32);
    CHECK_INT(n, 30);
    CHECK_STR(out, "*** [2026-11-27 03:04:05] <a> ");
    n = chat_format_history(&rec, out, 1);
    CHECK_INT(n, 0);
    CHECK_STR(out, "");
    n = chat_format_history(&rec, out, 4);
    CHECK_INT(n, 3);
    CHECK_STR(out, "***");
    out[0] = 'x';
    CHECK_INT(chat_format_history(&rec, out, 0), 0);
    CHECK_INT(out[0], 'x');
    CHECK_INT(chat_format_history(NULL, out, sizeof out), 0);
    CHECK_STR(out, "");
    CHECK_INT(chat_format_history(&rec, NULL, 10), 0);

    /* For a line session, chat_render_history is that line with its CRLF,
     * which a cut keeps. */
    {
        chat *c = make(0, 0, 0, 0, 0, 2);
        char wire[64];
        chat_session_open(c, 0, 1, CHAT_DIALECT_LINE, now);
        rec.body = "hello world";
        rec.body_len = 11;
        n = chat_render_history(c, 0, &rec, wire, sizeof wire);
        CHECK_INT(n, 43);
        CHECK_STR(wire, "*** [2026-11-27 03:04:05] <a> hello world\r\n");
        rec.body = "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9";
        rec.body_len = 8;
        n = chat_render_history(c, 0, &rec, wire, 34);
        CHECK_INT(n, 32);
        CHECK_STR(wire, "*** [2026-11-27 03:04:05] <a> \r\n");
        n = chat_render_history(c, 0, &rec, wire, 36);
        CHECK_INT(n, 34);
        CHECK_STR(wire, "*** [2026-11-27 03:04:05] <a> \xc3\xa9\r\n");
        CHECK_INT(chat_render_history(c, 0, NULL, wire, sizeof wire), 0);
        chat_destroy(c);
    }
}

/* An event in several rooms (an IRC client's quit): the line form names each
 * room, so the hub renders it once per room. */
static void test_multi_room_render(void)
{
    chat *c = make(0, 0, 0, 0, 0, 2);
    chat_event ev;
    memset(&ev, 0, sizeof ev);
    ev.kind = HISTORY_LEAVE;
    ev.quit = 1;
    ev.nick = "bob";
    ev.body = "quit: bye";
    ev.body_len = strlen(ev.body);
    ev.rooms[0] = "a";
    ev.rooms[1] = "b";
    ev.room_count = 2;
    CHECK_STR(render_line(c, &ev, 0, 0), "*** bob left a (quit: bye)");
    CHECK_STR(render_line(c, &ev, 1, 0), "*** bob left b (quit: bye)");
    CHECK_INT(chat_form_names_room(CHAT_FORM_LINE, &ev), 1);
    CHECK_INT(chat_form_names_room(CHAT_FORM_IRC, &ev), 0);       /* one QUIT for all */
    CHECK_INT(chat_form_names_room(CHAT_FORM_IRC_TIME, &ev), 0);
    ev.room_count = 1;
    CHECK_STR(render_line(c, &ev, 0, 0), "*** bob left a (quit: bye)");
    CHECK_INT(chat_form_names_room(CHAT_FORM_LINE, &ev), 0);
    chat_destroy(c);
}

/* Effect i is a reply to slot whose text starts with prefix. */
static int reply_starts(const chat *c, size_t i, uint32_t slot, const char *prefix)
{
    const chat_effect *e = effect(c, i);
    size_t n = strlen(prefix);
    return e && e->kind == CHAT_REPLY && e->slot == slot && e->text_len >= n && memcmp(e->text, prefix, n) == 0;
}

/* A line as the hub hands it to an IRC session: cleaned, the CTCP delimiter kept. */
static void send_irc(chat *c, uint32_t slot, const char *s)
{
    char clean[TEXT_MAX_LINE + 1];
    int cut = 0;
    size_t n = text_clean_keeping(s, strlen(s), clean, sizeof clean, &cut, 0x01);
    CHECK(!cut);
    chat_session_line(c, slot, clean, n, 0, now);
}

/* An IRC client and a line client in one room: registration, JOIN with its
 * names, and a line each way in the other's form. */
static void test_irc(void)
{
    chat_config cfg;
    chat *c;
    const chat_effect *e;
    size_t n, i, len;
    const char *out;
    memset(&cfg, 0, sizeof cfg);
    cfg.server_name = "chatrelay";
    cfg.replay = 5;
    c = chat_create(&cfg, 4);
    chat_session_open(c, 0, 1, CHAT_DIALECT_LINE, now);   /* guest1, in lobby */

    /* Nobody until it registers: no greeting, no room, no nick. */
    chat_session_open(c, 1, 2, CHAT_DIALECT_IRC, now);
    CHECK_INT(count(c), 0);
    CHECK_INT(chat_session_dialect(c, 1), CHAT_DIALECT_IRC);
    CHECK_INT(chat_session_form(c, 1), CHAT_FORM_IRC);
    CHECK(chat_session_nick(c, 1) == NULL);
    CHECK(chat_session_room(c, 1) == NULL);
    send_irc(c, 1, "NICK alice");
    CHECK_INT(count(c), 0);
    send_irc(c, 1, "USER a 0 * :A");
    n = chat_effects(c, &e);
    CHECK(n >= 1);
    CHECK(reply_starts(c, 0, 1, ":chatrelay 001 alice "));
    for (i = 0; i < n; i++) {
        CHECK_INT(e[i].kind, CHAT_REPLY);   /* registering joins nothing: no event */
        CHECK_INT(e[i].slot, 1);
    }
    CHECK_STR(chat_session_nick(c, 1), "alice");
    CHECK(chat_session_room(c, 1) == NULL);
    CHECK_INT(members_of(c, "lobby").n, 1);

    /* JOIN: the event (which the joiner gets back, as IRC wants), then the
     * names, then the replay. */
    send_irc(c, 1, "JOIN #lobby");
    CHECK_INT(count(c), 4);
    CHECK_EVENT(c, 0, 1, HISTORY_JOIN, 1, "*** alice joined lobby");
    e = must(c, 0);
    CHECK_INT(e->event.room_count, 1);
    CHECK_STR(e->event.rooms[0], "lobby");
    CHECK_STR(e->event.nick, "alice");
    CHECK(chat_session_echoes(c, 1, &e->event));
    out = render_form(c, CHAT_FORM_IRC, &e->event, 0, 1, &len);
    CHECK_MEM(out, len, ":alice!alice@chatrelay JOIN #lobby\r\n");
    CHECK_REPLY(c, 1, 1, ":chatrelay 353 alice = #lobby :guest1 alice");
    CHECK_REPLY(c, 2, 1, ":chatrelay 366 alice #lobby :End of /NAMES list");
    e = must(c, 3);
    CHECK_INT(e->kind, CHAT_QUERY);
    CHECK_STR(e->room, "lobby");
    CHECK(e->words == NULL);
    CHECK_INT(e->limit, 5);
    CHECK_STR(chat_session_room(c, 1), "lobby");
    CHECK(is_member(c, "lobby", 0) && is_member(c, "lobby", 1));

    /* The line client's line, as the IRC client gets it. */
    send_line(c, 0, "hi");
    CHECK_INT(count(c), 1);
    CHECK_EVENT(c, 0, 0, HISTORY_SAY, 1, "<guest1> hi");
    out = render_form(c, chat_session_form(c, 1), &must(c, 0)->event, 0, 0, &len);
    CHECK_MEM(out, len, ":guest1!guest1@chatrelay PRIVMSG #lobby :hi\r\n");

    /* The IRC client's CTCP ACTION is a /me, as the line client gets it. */
    send_irc(c, 1, "PRIVMSG #lobby :\x01" "ACTION waves\x01");
    CHECK_INT(count(c), 1);
    CHECK_EVENT(c, 0, 1, HISTORY_ME, 1, "* alice waves");
    e = must(c, 0);
    CHECK_MEM(e->event.body, e->event.body_len, "waves");
    CHECK_STR(e->event.rooms[0], "lobby");
    CHECK(!chat_session_echoes(c, 1, &e->event));   /* no echo-message asked for */
    out = render_form(c, CHAT_FORM_IRC, &e->event, 0, 0, &len);
    CHECK_MEM(out, len, ":alice!alice@chatrelay PRIVMSG #lobby :\x01" "ACTION waves\x01\r\n");
    CHECK(texts_clean(c));

    /* In two rooms, its quit is one event naming both: once per room in the
     * line form, one QUIT in IRC's. */
    send_irc(c, 1, "JOIN #games");
    CHECK_INT(must(c, 0)->event.kind, HISTORY_JOIN);
    chat_session_close(c, 1, "quit: bye");
    CHECK_INT(count(c), 1);
    CHECK_EVENT(c, 0, 1, HISTORY_LEAVE, 1, "*** alice left lobby (quit: bye)");
    e = must(c, 0);
    CHECK_INT(e->event.quit, 1);
    CHECK_INT(e->event.room_count, 2);
    CHECK_STR(e->event.rooms[0], "lobby");
    CHECK_STR(e->event.rooms[1], "games");
    CHECK_STR(render_line(c, &e->event, 1, 0), "*** alice left games (quit: bye)");
    CHECK_INT(chat_form_names_room(CHAT_FORM_LINE, &e->event), 1);
    out = render_form(c, CHAT_FORM_IRC, &e->event, 0, 0, &len);
    CHECK_MEM(out, len, ":alice!alice@chatrelay QUIT :quit: bye\r\n");
    CHECK(texts_clean(c));
    CHECK_INT(members_of(c, "games").n, 0);
    chat_destroy(c);
}

/* A long line from a line client, in the IRC form: several PRIVMSGs, each
 * within IRC's 512 bytes, carrying the whole text, never half a character. */
static void test_irc_split(void)
{
    chat_config cfg;
    chat *c;
    char body[1001], got[1001];
    size_t i, len, got_len = 0, lines = 0;
    const char *out, *p, *end;
    static const char prefix[] = ":guest1!guest1@chatrelay PRIVMSG #lobby :";
    memset(&cfg, 0, sizeof cfg);
    cfg.server_name = "chatrelay";
    c = chat_create(&cfg, 2);
    chat_session_open(c, 0, 1, CHAT_DIALECT_LINE, now);
    /* 200 times "é€": 1000 bytes, a 2- and a 3-byte character in turn, so
     * no fixed cut lands between characters every time. */
    for (i = 0; i < 1000; i += 5)
        memcpy(body + i, "\xc3\xa9\xe2\x82\xac", 5);
    body[1000] = '\0';
    send_line(c, 0, body);
    CHECK_INT(count(c), 1);
    CHECK_INT(must(c, 0)->event.body_len, 1000);
    out = render_form(c, CHAT_FORM_IRC, &must(c, 0)->event, 0, 0, &len);
    end = out + len;
    CHECK(len > 1000);
    for (p = out; p < end; lines++) {
        const char *crlf = NULL, *q;
        size_t chunk;
        for (q = p; q + 1 < end; q++)
            if (q[0] == '\r' && q[1] == '\n') {
                crlf = q;
                break;
            }
        CHECK(crlf != NULL);
        if (!crlf)
            break;
        CHECK((size_t)(crlf + 2 - p) <= 512);
        CHECK((size_t)(crlf - p) > sizeof prefix - 1);
        CHECK(memcmp(p, prefix, sizeof prefix - 1) == 0);
        p += sizeof prefix - 1;
        chunk = (size_t)(crlf - p);
        /* A chunk starts and ends on a character boundary. */
        CHECK(((unsigned char)p[0] & 0xC0u) != 0x80u);
        CHECK(crlf + 2 == end || ((unsigned char)crlf[2 + sizeof prefix - 1] & 0xC0u) != 0x80u);
        CHECK(memchr(p, '\r', chunk) == NULL && memchr(p, '\n', chunk) == NULL);
        if (got_len + chunk <= 1000)
            memcpy(got + got_len, p, chunk);
        got_len += chunk;
        p = crlf + 2;
    }
    CHECK(lines >= 2);
    CHECK_INT(got_len, 1000);
    CHECK(got_len == 1000 && memcmp(got, body, 1000) == 0);
    chat_destroy(c);
}

/* Many sessions in one room: /who and /rooms stay bounded, nick lookups stay right. */
static void test_scale(void)
{
    enum { N = 100000 };
    chat *c = make(0, 0, 0, 0, 0, N);
    const chat_effect *e;
    size_t n, i;
    char line[64];
    uint32_t s;
    CHECK(c != NULL);
    for (s = 0; s < N; s++)
        chat_session_open(c, s, s + 1, CHAT_DIALECT_LINE, now);
    CHECK_INT(members_of(c, "lobby").n, N);
    send_line(c, 5, "/who");
    n = chat_effects(c, &e);
    CHECK(n >= 2 && n <= 10);
    for (i = 0; i < n; i++) {
        CHECK_INT(e[i].kind, CHAT_REPLY);
        CHECK(e[i].text_len <= 500);
    }
    CHECK(memcmp(e[0].text, "*** In lobby (100000): guest1, guest2, ", 39) == 0);
    CHECK(strstr(e[n - 1].text, " and 99900 more people.") != NULL);
    /* Give everyone a room of their own, then list them. */
    for (s = 0; s < N; s += 2) {
        snprintf(line, sizeof line, "/join r%u", (unsigned)s);
        send_line(c, s, line);
    }
    send_line(c, 1, "/rooms");
    n = chat_effects(c, &e);
    CHECK(n >= 2 && n <= 10);
    CHECK(memcmp(e[0].text, "*** 50001 rooms: lobby (50000), r0 (1), r2 (1)", 46) == 0);
    CHECK(strstr(e[n - 1].text, " and 49901 more rooms.") != NULL);
    for (s = 0; s < N; s += 1000) {
        snprintf(line, sizeof line, "/msg GUEST%u hi", (unsigned)(N - s));
        send_line(c, s == 0 ? 1 : 0, line);
        CHECK_INT(must(c, 0)->kind, CHAT_EVENT);
        CHECK_INT(must(c, 0)->event.kind, HISTORY_MSG);
        CHECK_INT(must(c, 0)->to_slot, N - s - 1);
    }
    for (s = 0; s < N; s++)
        chat_session_close(c, s, "server stopping");
    CHECK_INT(members_of(c, "lobby").n, 0);
    send_line(c, 1, "/rooms");
    CHECK_INT(count(c), 0);
    chat_session_open(c, 0, 1, CHAT_DIALECT_LINE, now);
    send_line(c, 0, "/rooms");
    CHECK_ONLY_REPLY(c, 0, "*** 1 room: lobby (1).");
    chat_destroy(c);
}

/* Random sessions, random lines (commands, names, garbage): nothing crashes, every
 * text stays clean, and membership stays consistent. */
static uint32_t rng_state = 12345;
static uint32_t rnd(uint32_t n)
{
    rng_state = rng_state * 1103515245u + 12345u;
    return (rng_state >> 8) % n;
}

/* password: a server password (the words include /pass and it), or NULL. */
static void random_run(const char *password, int iterations)
{
    enum { SLOTS = 16 };
    static const char *const words[] = {"/nick", "/join", "/rooms", "/who", "/me", "/msg", "/history",
                                        "/search", "/help", "/quit", "//", "/", "hello", "/NICK", "/Join",
                                        "guest1", "lobby", "a", "B", "\xc3\xa9", "\t", " ", "x-y_z",
                                        "0123456789012345678901234567890123", "/pass", "/PASS", "pw", "/pass pw"};
    chat_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.server_name = "Test Relay";
    cfg.replay = 5;
    cfg.flood_burst = 4;
    cfg.flood_rate = 2;
    cfg.flood_kick = 6;
    cfg.log_private = 1;
    cfg.password = password;
    chat *c = chat_create(&cfg, SLOTS);
    int live[SLOTS];
    uint32_t conn = 1;
    int64_t t = 0;
    int iter;
    char line[1200];
    memset(live, 0, sizeof live);
    for (iter = 0; iter < iterations; iter++) {
        uint32_t slot = rnd(SLOTS);
        const chat_effect *e;
        size_t n, i, len = 0, parts = rnd(6);
        t += rnd(300);
        if (!live[slot]) {
            chat_session_open(c, slot, conn++, CHAT_DIALECT_LINE, t);
            live[slot] = 1;
        } else if (rnd(40) == 0) {
            chat_session_close(c, slot, "connection lost");
            live[slot] = 0;
        } else {
            for (i = 0; i < parts; i++) {
                const char *w = words[rnd(sizeof words / sizeof words[0])];
                size_t wl = strlen(w);
                if (len + wl + 1 >= sizeof line)
                    break;
                memcpy(line + len, w, wl);
                len += wl;
                if (rnd(2))
                    line[len++] = ' ';
            }
            if (rnd(50) == 0) {   /* a long line */
                while (len + 3 < sizeof line)
                    line[len++] = "ab \xc3\xa9"[rnd(3)];
            }
            chat_session_line(c, slot, line, len, (int)rnd(2), t);
        }
        n = chat_effects(c, &e);
        CHECK(n <= 48);
        for (i = 0; i < n; i++) {
            if (e[i].kind == CHAT_EVENT && e[i].event.kind != HISTORY_LEAVE && chat_session_nick(c, e[i].slot) == NULL)
                CHECK(!"an event of a session that was not admitted");
            if (e[i].kind == CHAT_CLOSE) {
                chat_session_close(c, e[i].slot, e[i].reason);
                live[e[i].slot] = 0;
                break;   /* the close replaced the effect list */
            }
        }
        if (!texts_clean(c)) {
            CHECK(texts_clean(c));
            break;
        }
        if (iter % 1000 == 0) {
            /* Everyone live and admitted is in exactly one room (a session not admitted
             * has no nick and no room), and the lobby always exists. */
            uint32_t s, total = 0, in_lobby = 0;
            for (s = 0; s < SLOTS; s++)
                if (live[s] && password && chat_session_nick(c, s) == NULL) {
                    CHECK(chat_session_room(c, s) == NULL);
                    live[s] = 2;   /* not admitted: skipped below */
                }
            for (s = 0; s < SLOTS; s++)
                if (live[s] == 1) {
                    CHECK(chat_session_room(c, s) != NULL);
                    CHECK(chat_session_nick(c, s) != NULL);
                    total++;
                    in_lobby += strcmp(chat_session_room(c, s), "lobby") == 0;
                }
            CHECK_INT(members_of(c, "lobby").n, in_lobby);
            for (s = 0; s < SLOTS; s++)
                if (live[s] == 1) {
                    members m = members_of(c, chat_session_room(c, s));
                    size_t k;
                    int found = 0;
                    for (k = 0; k < m.n && k < 64; k++)
                        found |= m.slots[k] == s;
                    if (!found)
                        CHECK(found);
                }
            (void)total;
            for (s = 0; s < SLOTS; s++)
                live[s] = live[s] != 0;
        }
    }
    chat_destroy(c);
}

static void test_random(void)
{
    random_run(NULL, 200000);
    random_run("pw", 100000);   /* sessions admitted by "/pass pw" among others still locked */
}

/* Calls on no chat at all do nothing (and do not crash). */
static void test_null_chat(void)
{
    const chat_effect *e = (const chat_effect *)&e;
    chat *c;
    CHECK_INT(chat_effects(NULL, &e), 0);
    CHECK(e == NULL);
    CHECK_INT(chat_effects(NULL, NULL), 0);
    chat_session_open(NULL, 0, 1, CHAT_DIALECT_LINE, now);
    chat_session_line(NULL, 0, "x", 1, 0, now);
    chat_session_close(NULL, 0, "quit");
    CHECK(chat_session_nick(NULL, 0) == NULL);
    CHECK(chat_session_room(NULL, 0) == NULL);
    chat_room_members(NULL, "lobby", collect, NULL);
    chat_destroy(NULL);
    /* A negative replay means none; a destroyed chat with a pending /quit frees it. */
    c = make(-5, 0, 0, 0, 0, 2);
    chat_session_open(c, 0, 1, CHAT_DIALECT_LINE, now);
    CHECK_INT(count(c), 5);
    send_line(c, 0, "/quit left open");
    chat_destroy(c);
}

static int dropped;
static void count_dropped(void *ctx, uint32_t slot)
{
    (void)ctx;
    (void)slot;
    dropped++;
}

/* Cluster mode: users of other nodes share the nick namespace and the
 * rooms' member lists, never get effects, and go with their node. */
static void test_remote_users(void)
{
    chat_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.server_name = "Test Relay";
    cfg.remote_slots = 3;
    chat *c = chat_create(&cfg, 4);
    CHECK(c != NULL);
    if (!c)
        return;
    chat_session_open(c, 0, 1, CHAT_DIALECT_LINE, now);
    send_line(c, 0, "/nick alice");
    CHECK_INT(chat_remote_join(c, "n2", 7, 1, "bob", "lobby"), CHAT_REMOTE_JOINED);
    uint32_t bob = chat_nick_holder(c, "bob");
    CHECK(bob >= 4 && bob < 7);
    CHECK(chat_slot_is_remote(c, bob));
    CHECK(!chat_slot_is_remote(c, 0));
    CHECK_INT(chat_remote_find(c, "n2", 7, 1), bob);
    CHECK_INT(chat_remote_find(c, "n2", 8, 1), CHAT_NO_SLOT);   /* another run of n2 */
    CHECK(is_member(c, "lobby", bob));
    /* joined twice (a record applied again): still one membership */
    CHECK_INT(chat_remote_join(c, "n2", 7, 1, "bob", "lobby"), CHAT_REMOTE_JOINED);
    CHECK_INT(members_of(c, "lobby").n, 2);
    /* a local user cannot take a remote user's nick; /who lists both */
    send_line(c, 0, "/nick bob");
    CHECK_ONLY_REPLY(c, 0, "*** The nick bob is taken.");
    send_line(c, 0, "/who");
    CHECK_ONLY_REPLY(c, 0, "*** In lobby (2): alice, bob.");
    /* a new remote user whose nick is taken: the later claim is ignored */
    CHECK_INT(chat_remote_join(c, "n3", 9, 4, "alice", "lobby"), CHAT_REMOTE_IGNORED);
    CHECK_INT(chat_remote_find(c, "n3", 9, 4), CHAT_NO_SLOT);
    /* renames: free nick applied, taken nick ignored */
    CHECK_INT(chat_remote_nick(c, bob, "alice"), CHAT_REMOTE_IGNORED);
    CHECK_INT(chat_remote_nick(c, bob, "carol"), CHAT_REMOTE_JOINED);
    CHECK_INT(chat_nick_holder(c, "bob"), CHAT_NO_SLOT);
    CHECK_INT(chat_nick_holder(c, "carol"), bob);
    const char *rooms[CHAT_ROOMS_PER_SESSION];
    CHECK_INT(chat_remote_join(c, "n2", 7, 1, "carol", "dev"), CHAT_REMOTE_JOINED);
    CHECK_INT(chat_session_rooms(c, bob, rooms, CHAT_ROOMS_PER_SESSION), 2);
    CHECK_STR(rooms[1], "dev");
    chat_remote_leave(c, bob, "dev", 0);
    CHECK_INT(chat_session_rooms(c, bob, rooms, CHAT_ROOMS_PER_SESSION), 1);
    CHECK_INT(members_of(c, "dev").n, 0);
    /* the remote slots are bounded; bad names are refused */
    CHECK_INT(chat_remote_join(c, "n2", 7, 2, "dan", "lobby"), CHAT_REMOTE_JOINED);
    CHECK_INT(chat_remote_join(c, "n3", 9, 1, "erin", "lobby"), CHAT_REMOTE_JOINED);
    CHECK_INT(chat_remote_join(c, "n3", 9, 2, "fay", "lobby"), -1);
    CHECK_INT(chat_remote_join(c, "n3", 9, 3, "bad nick", "lobby"), -1);
    /* a local guest never gets a remote user's nick */
    CHECK_INT(chat_remote_join(c, "n3", 9, 1, "erin", "lobby"), CHAT_REMOTE_JOINED);
    chat_remote_leave(c, chat_nick_holder(c, "erin"), NULL, 1);
    CHECK_INT(chat_remote_join(c, "n3", 9, 5, "guest2", "lobby"), CHAT_REMOTE_JOINED);
    chat_session_open(c, 1, 2, CHAT_DIALECT_LINE, now);
    CHECK_STR(chat_session_nick(c, 1), "guest2-2");
    /* the node goes: its users of that run, and only those */
    dropped = 0;
    chat_remote_node_users(c, "n2", 7, 1, count_dropped, NULL);
    CHECK_INT(dropped, 2);
    CHECK_INT(chat_nick_holder(c, "carol"), CHAT_NO_SLOT);
    CHECK(chat_nick_holder(c, "guest2") != CHAT_NO_SLOT);
    CHECK_INT(members_of(c, "lobby").n, 3);   /* alice, guest2 (n3), guest2-2 */
    /* a local user that loses its nick takes a guest nick, as a nick change */
    chat_session_lost_nick(c, 0);
    CHECK_INT(count(c), 2);
    CHECK_REPLY(c, 0, 0, "*** alice was taken on another node of the cluster at the same moment; you are now guest1-2");
    const chat_effect *e = must(c, 1);
    CHECK_INT(e->kind, CHAT_EVENT);
    CHECK_INT(e->event.kind, HISTORY_NICK);
    CHECK_STR(e->event.nick, "alice");
    CHECK_MEM(e->event.body, e->event.body_len, "guest1-2");
    CHECK_STR(chat_session_nick(c, 0), "guest1-2");
    chat_destroy(c);
}

int main(void)
{
    test_open();
    test_password();
    test_remote_users();
    test_say_and_me();
    test_nick();
    test_join_rooms_who();
    test_join_without_replay();
    test_msg();
    test_history_search();
    test_help_unknown();
    test_quit_close();
    test_slot_reuse();
    test_flood();
    test_format_history();
    test_multi_room_render();
    test_irc();
    test_irc_split();
    test_scale();
    test_random();
    test_null_chat();
    return check_done();
}

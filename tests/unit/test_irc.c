/* The IRC dialect (core/dialect_irc.c) through chat's public face: the
 * parser (tags, sources, trailing parameters, comma lists, CTCP), the
 * registration and its numerics, every error numeric the issue names, the
 * IRC forms of events, notices, history rows and answer frames, and the
 * bounds a line from the database cannot break. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "chat.h"
#include "version.h"

static int64_t now = 5000000;

static chat *make(int replay)
{
    chat_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.server_name = "irc.test";
    cfg.replay = replay;
    return chat_create(&cfg, 8);
}

static void send_line(chat *c, uint32_t slot, const char *s)
{
    chat_session_line(c, slot, s, strlen(s), 0, now);
}

/* The replies of the last call, joined with '\n' (events as "EVENT kind"). */
static const char *replies(const chat *c)
{
    static char out[65536];
    const chat_effect *e;
    size_t n = chat_effects(c, &e), used = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n && used < sizeof out - 600; i++) {
        if (e[i].kind == CHAT_REPLY || (e[i].kind == CHAT_CLOSE && e[i].text))
            used += (size_t)snprintf(out + used, sizeof out - used, "%.*s\n", (int)e[i].text_len, e[i].text);
        else if (e[i].kind == CHAT_EVENT)
            used += (size_t)snprintf(out + used, sizeof out - used, "EVENT %d\n", (int)e[i].event.kind);
        else if (e[i].kind == CHAT_QUERY)
            used += (size_t)snprintf(out + used, sizeof out - used, "QUERY%s\n", e[i].range ? " range" : "");
    }
    return out;
}

static int has(const char *hay, const char *needle)
{
    return strstr(hay, needle) != NULL;
}

/* slot registers as nick, with CAP REQ of caps first when caps is not NULL. */
static void registered(chat *c, uint32_t slot, uint32_t conn, const char *nick, const char *caps)
{
    char line[256];
    chat_session_open(c, slot, conn, CHAT_DIALECT_IRC, now);
    CHECK_INT(chat_effects(c, NULL), 0);     /* an IRC client speaks first */
    if (caps) {
        send_line(c, slot, "CAP LS 302");
        snprintf(line, sizeof line, "CAP REQ :%s", caps);
        send_line(c, slot, line);
        CHECK(has(replies(c), " ACK :"));
    }
    snprintf(line, sizeof line, "NICK %s", nick);
    send_line(c, slot, line);
    send_line(c, slot, "USER u 0 * :Real Name");
    if (caps) {
        CHECK(!has(replies(c), " 001 "));    /* CAP holds registration until CAP END */
        send_line(c, slot, "CAP END");
    }
    CHECK(has(replies(c), ":irc.test 001 "));
}

/* A new IRC session in slot sends pass_line (unless NULL), NICK nick and
 * USER, without CAP; replies(c) is then the answer to USER. */
static void register_lines(chat *c, uint32_t slot, uint32_t conn, const char *pass_line, const char *nick)
{
    char line[128];
    chat_session_open(c, slot, conn, CHAT_DIALECT_IRC, now);
    if (pass_line)
        send_line(c, slot, pass_line);
    snprintf(line, sizeof line, "NICK %s", nick);
    send_line(c, slot, line);
    send_line(c, slot, "USER u 0 * :R");
}

static void test_registration(void)
{
    chat *c = make(0);
    chat_session_open(c, 0, 1, CHAT_DIALECT_IRC, now);
    send_line(c, 0, "JOIN #lobby");
    CHECK_STR(replies(c), ":irc.test 451 * :You have not registered\n");
    send_line(c, 0, "cap ls 302");               /* commands are case-insensitive */
    CHECK_STR(replies(c), ":irc.test CAP * LS :server-time message-tags batch echo-message draft/chathistory\n");
    send_line(c, 0, "CAP REQ :server-time nonsense");
    CHECK_STR(replies(c), ":irc.test CAP * NAK :server-time nonsense\n");
    send_line(c, 0, "NICK alice");
    send_line(c, 0, "USER a 0 * :A");
    CHECK_STR(replies(c), "");                   /* still negotiating */
    send_line(c, 0, "CAP END");
    const char *r = replies(c);
    CHECK(has(r, ":irc.test 001 alice :Welcome to irc.test, alice\n"));
    CHECK(has(r, ":irc.test 005 alice CASEMAPPING=ascii CHANTYPES=# PREFIX=() "));
    CHECK(has(r, "CHATHISTORY=200"));
    CHECK(has(r, ":irc.test 251 alice :There are 1 users"));
    CHECK(has(r, ":irc.test 422 alice :MOTD File is missing\n"));
    send_line(c, 0, "USER again 0 * :x");
    CHECK_STR(replies(c), ":irc.test 462 alice :You may not reregister\n");
    send_line(c, 0, "PASS secret");
    CHECK_STR(replies(c), ":irc.test 462 alice :You may not reregister\n");

    /* a second client: a taken nick (any case), an invalid one, then a good one */
    chat_session_open(c, 1, 2, CHAT_DIALECT_IRC, now);
    send_line(c, 1, "PASS ignored");
    CHECK_STR(replies(c), "");
    send_line(c, 1, "NICK ALICE");
    send_line(c, 1, "USER b 0 * :B");
    CHECK_STR(replies(c), ":irc.test 433 * ALICE :Nickname is already in use\n");
    send_line(c, 1, "NICK b@d");
    CHECK_STR(replies(c), ":irc.test 432 * b@d :Erroneous nickname\n");
    send_line(c, 1, "NICK bob");
    CHECK(has(replies(c), ":irc.test 001 bob "));
    CHECK_STR(chat_session_nick(c, 1), "bob");
    chat_destroy(c);
}

/* --password-file: PASS must give it before registration ends, else 464 and
 * the close; without a password PASS is accepted and ignored (above). */
static void test_password(void)
{
    chat_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.server_name = "irc.test";
    cfg.password = "hunter2";
    chat *c = chat_create(&cfg, 8);
    register_lines(c, 0, 1, "PASS hunter2", "alice");
    CHECK(has(replies(c), ":irc.test 001 alice "));
    /* a wrong one, then registration: 464 and the close */
    register_lines(c, 1, 2, "PASS hunter3", "mallory");
    CHECK_STR(replies(c), ":irc.test 464 * :Password incorrect\nERROR :Closing link (bad password)\n");
    const chat_effect *e;
    CHECK_INT(chat_effects(c, &e), 2);
    CHECK(e[1].kind == CHAT_CLOSE && strcmp(e[1].reason, "bad password") == 0);
    CHECK(chat_session_nick(c, 1) == NULL);
    chat_session_close(c, 1, "bad password");
    /* none at all, held by CAP until END: refused at END */
    chat_session_open(c, 2, 3, CHAT_DIALECT_IRC, now);
    send_line(c, 2, "CAP LS 302");
    send_line(c, 2, "NICK eve");
    send_line(c, 2, "USER e 0 * :E");
    CHECK_STR(replies(c), "");
    send_line(c, 2, "CAP END");
    CHECK(has(replies(c), ":irc.test 464 * :Password incorrect\n"));
    chat_session_close(c, 2, "bad password");
    /* the last PASS counts; an empty one is 461 */
    chat_session_open(c, 3, 4, CHAT_DIALECT_IRC, now);
    send_line(c, 3, "PASS");
    CHECK_STR(replies(c), ":irc.test 461 * PASS :Not enough parameters\n");
    send_line(c, 3, "PASS wrong");
    send_line(c, 3, "PASS hunter2 x");
    send_line(c, 3, "PASS hunter2");
    send_line(c, 3, "NICK bob");
    send_line(c, 3, "USER b 0 * :B");
    CHECK(has(replies(c), ":irc.test 001 bob "));
    chat_destroy(c);
    /* a password of several words, as ii sends it (no ':') and as others do */
    cfg.password = "two words";
    c = chat_create(&cfg, 8);
    register_lines(c, 0, 1, "PASS two words", "ii");
    CHECK(has(replies(c), ":irc.test 001 ii "));
    register_lines(c, 1, 2, "PASS :two words", "hexchat");
    CHECK(has(replies(c), ":irc.test 001 hexchat "));
    chat_destroy(c);
}

static void test_parser(void)
{
    chat *c = make(0);
    registered(c, 0, 1, "alice", NULL);
    registered(c, 1, 2, "bob", NULL);
    /* client tags and a source are ignored; extra spaces between parameters too */
    send_line(c, 0, "@label=x;+typing=active :alice!u@h JOIN   #lobby,#games");
    const chat_effect *e;
    size_t n = chat_effects(c, &e);
    int joins = 0;
    for (size_t i = 0; i < n; i++)
        joins += e[i].kind == CHAT_EVENT && e[i].event.kind == HISTORY_JOIN;
    CHECK_INT(joins, 2);
    CHECK(has(replies(c), ":irc.test 353 alice = #lobby :alice\n"));
    CHECK(has(replies(c), ":irc.test 366 alice #games :End of /NAMES list\n"));
    send_line(c, 1, "JOIN #lobby");
    /* a trailing parameter keeps its spaces and colons */
    send_line(c, 0, "PRIVMSG #lobby :  two  spaces: and a colon :)");
    n = chat_effects(c, &e);
    CHECK_INT(n, 1);
    CHECK_INT(e[0].event.kind, HISTORY_SAY);
    CHECK_MEM(e[0].event.body, e[0].event.body_len, "  two  spaces: and a colon :)");
    /* a last parameter without ':' */
    send_line(c, 0, "PRIVMSG #lobby word");
    n = chat_effects(c, &e);
    CHECK(n == 1 && e[0].event.body_len == 4);
    /* comma lists of targets: a channel and a nick */
    send_line(c, 0, "PRIVMSG #lobby,bob :both");
    n = chat_effects(c, &e);
    CHECK_INT(n, 2);
    CHECK(n == 2 && e[0].event.kind == HISTORY_SAY && e[1].event.kind == HISTORY_MSG && e[1].to_slot == 1);
    /* CTCP ACTION is /me; another CTCP is not relayed; stray delimiters vanish */
    send_line(c, 0, "PRIVMSG #lobby :\x01" "ACTION waves\x01");
    n = chat_effects(c, &e);
    CHECK(n == 1 && e[0].event.kind == HISTORY_ME);
    CHECK_MEM(e[0].event.body, e[0].event.body_len, "waves");
    send_line(c, 0, "PRIVMSG bob :\x01VERSION\x01");
    CHECK_INT(chat_effects(c, NULL), 0);
    send_line(c, 0, "PRIVMSG #lobby :a\x01" "b");
    n = chat_effects(c, &e);
    CHECK(n == 1);
    CHECK_MEM(e[0].event.body, e[0].event.body_len, "ab");
    /* NOTICE: the same, marked, and never an error reply */
    send_line(c, 0, "NOTICE #lobby :hear ye");
    n = chat_effects(c, &e);
    CHECK(n == 1 && e[0].event.notice == 1);
    send_line(c, 0, "NOTICE nobody :x");
    CHECK_STR(replies(c), "");
    /* PING echoes its token; TAGMSG is accepted and not relayed */
    send_line(c, 0, "PING :tok 123");
    CHECK_STR(replies(c), ":irc.test PONG irc.test :tok 123\n");
    send_line(c, 0, "@+typing=active TAGMSG #lobby");
    CHECK_STR(replies(c), "");
    chat_destroy(c);
}

static void test_error_numerics(void)
{
    chat *c = make(0);
    registered(c, 0, 1, "err", NULL);
    registered(c, 1, 2, "other", NULL);
    send_line(c, 1, "JOIN #here");
    static const struct { const char *in, *out; } cases[] = {
        { "PRIVMSG nobody :hi", ":irc.test 401 err nobody :No such nick/channel\n" },
        { "PRIVMSG #nowhere :hi", ":irc.test 403 err #nowhere :No such channel\n" },
        { "PRIVMSG #here :hi", ":irc.test 404 err #here :Cannot send to channel (join it first)\n" },
        { "PRIVMSG", ":irc.test 411 err :No recipient given (PRIVMSG)\n" },
        { "PRIVMSG #here", ":irc.test 412 err :No text to send\n" },
        { "PRIVMSG #here :   ", ":irc.test 412 err :No text to send\n" },
        { "FROB x", ":irc.test 421 err FROB :Unknown command\n" },
        { "NICK", ":irc.test 431 err :No nickname given\n" },
        { "NICK 1+1", ":irc.test 432 err 1+1 :Erroneous nickname\n" },
        { "NICK OTHER", ":irc.test 433 err OTHER :Nickname is already in use\n" },
        { "PART #here", ":irc.test 442 err #here :You're not on that channel\n" },
        { "TOPIC #here :mine", ":irc.test 442 err #here :You're not on that channel\n" },
        { "JOIN", ":irc.test 461 err JOIN :Not enough parameters\n" },
        { "JOIN lobby", ":irc.test 403 err lobby :No such channel\n" },
        { "WHOIS ghost", ":irc.test 401 err ghost :No such nick/channel\n:irc.test 318 err ghost :End of /WHOIS list\n" },
        { "MODE other", ":irc.test 502 err :Can't change mode for other users\n" },
        { "KICK #here other", ":irc.test 442 err #here :You're not on that channel\n" },
        { "KICK #nowhere other", ":irc.test 403 err #nowhere :No such channel\n" },
        { "KICK #here", ":irc.test 461 err KICK :Not enough parameters\n" },
        { "USERHOST", ":irc.test 461 err USERHOST :Not enough parameters\n" },
        { "WHOWAS", ":irc.test 431 err :No nickname given\n" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        send_line(c, 0, cases[i].in);
        const char *got = replies(c);
        if (strcmp(got, cases[i].out) != 0)
            fprintf(stderr, "for %s\n", cases[i].in);
        CHECK_STR(got, cases[i].out);
    }
    /* a line the client sent too long: 417 */
    char long_line[1200];
    memset(long_line, 'x', sizeof long_line);
    memcpy(long_line, "PRIVMSG #here :", 15);
    chat_session_line(c, 0, long_line, 1100, 1, now);
    CHECK_STR(replies(c), ":irc.test 417 err :Input line was too long\n");
    /* more channels than CHANLIMIT: 405 */
    char join[64];
    for (int k = 0; k < CHAT_ROOMS_PER_SESSION; k++) {
        snprintf(join, sizeof join, "JOIN #r%d", k);
        send_line(c, 0, join);
    }
    send_line(c, 0, "JOIN #onetoomany");
    CHECK_STR(replies(c), ":irc.test 405 err #onetoomany :You have joined too many channels\n");
    send_line(c, 0, "JOIN 0");                   /* leaves all 20 */
    const chat_effect *e;
    size_t n = chat_effects(c, &e);
    CHECK_INT(n, CHAT_ROOMS_PER_SESSION);
    CHECK(chat_session_room(c, 0) == NULL);
    chat_destroy(c);
}

static void test_queries_and_lists(void)
{
    chat *c = make(5);
    registered(c, 0, 1, "alice", "server-time draft/chathistory");
    registered(c, 1, 2, "bob", NULL);
    chat_session_open(c, 2, 3, CHAT_DIALECT_LINE, now);   /* guest3 in the lobby */
    send_line(c, 1, "JOIN #lobby");
    /* bob has no chathistory: replayed on join (a range of messages), after NAMES */
    const char *r = replies(c);
    CHECK(has(r, "EVENT 3\n"));                  /* HISTORY_JOIN */
    CHECK(has(r, "366 bob #lobby"));
    CHECK(has(r, "QUERY range\n"));
    CHECK(strstr(r, "366 bob") < strstr(r, "QUERY"));
    send_line(c, 0, "JOIN #lobby");
    CHECK(!has(replies(c), "QUERY"));            /* alice asks for history herself */
    send_line(c, 0, "CHATHISTORY LATEST #lobby * 10");
    CHECK_STR(replies(c), "QUERY range\n");
    send_line(c, 0, "CHATHISTORY BEFORE #lobby msgid=12 500");
    const chat_effect *e;
    CHECK_INT(chat_effects(c, &e), 1);
    CHECK(e[0].range && e[0].from_newest && e[0].hi.id == 12 && e[0].limit == CHAT_HISTORY_MAX);
    send_line(c, 0, "CHATHISTORY AFTER #lobby timestamp=2026-11-27T03:04:05.000Z 3");
    CHECK_INT(chat_effects(c, &e), 1);
    CHECK(e[0].range && !e[0].from_newest && e[0].lo.at && strcmp(e[0].lo.at, "2026-11-27T03:04:05.000Z") == 0);
    send_line(c, 0, "CHATHISTORY BETWEEN #lobby msgid=40 msgid=10 5");
    CHECK_INT(chat_effects(c, &e), 1);
    CHECK(e[0].lo.id == 10 && e[0].hi.id == 40 && e[0].from_newest);   /* from 40 back towards 10 */
    send_line(c, 0, "CHATHISTORY AROUND #lobby msgid=20 10");
    CHECK_INT(chat_effects(c, &e), 2);
    send_line(c, 0, "CHATHISTORY BEFORE #lobby timestamp=not-a-time 3");
    CHECK_STR(replies(c), ":irc.test FAIL CHATHISTORY INVALID_PARAMS :Bad message reference\n");
    send_line(c, 0, "CHATHISTORY LATEST #nowhere * 3");
    CHECK_STR(replies(c), ":irc.test FAIL CHATHISTORY INVALID_TARGET #nowhere :No such channel\n");
    send_line(c, 0, "CHATHISTORY LATEST #lobby * 0");
    CHECK_STR(replies(c), ":irc.test FAIL CHATHISTORY INVALID_PARAMS :Bad limit\n");
    /* SEARCH: soju's parameters, or plain words for the first channel */
    send_line(c, 0, "SEARCH text=quick fox;in=#lobby;limit=3");
    CHECK_INT(chat_effects(c, &e), 1);
    CHECK(e[0].kind == CHAT_QUERY && e[0].words && strcmp(e[0].words, "quick fox") == 0 && e[0].limit == 3);
    send_line(c, 0, "SEARCH quick fox");
    CHECK_INT(chat_effects(c, &e), 1);
    CHECK(e[0].words && strcmp(e[0].words, "quick fox") == 0 && strcmp(e[0].room, "lobby") == 0);
    send_line(c, 0, "SEARCH in=#nowhere;text=x");
    CHECK_STR(replies(c), ":irc.test 403 alice #nowhere :No such channel\n");
    /* WHO lists everyone, the caller and the line client included; NAMES, MODE, LIST */
    send_line(c, 0, "WHO #lobby");
    r = replies(c);
    CHECK(has(r, ":irc.test 352 alice #lobby guest3 irc.test irc.test guest3 H :0 line client\n"));
    CHECK(has(r, " alice H :0 IRC client\n"));
    CHECK(has(r, ":irc.test 315 alice #lobby :End of /WHO list\n"));
    send_line(c, 0, "MODE #lobby");
    CHECK_STR(replies(c), ":irc.test 324 alice #lobby +nt\n");
    send_line(c, 0, "MODE #lobby b");
    CHECK_STR(replies(c), ":irc.test 368 alice #lobby :End of channel ban list\n");
    send_line(c, 0, "MODE alice");
    CHECK_STR(replies(c), ":irc.test 221 alice +i\n");
    send_line(c, 0, "TOPIC #lobby :quick brown fox");
    CHECK_STR(replies(c), "EVENT 7\n");          /* HISTORY_TOPIC, echoed back */
    send_line(c, 0, "LIST");
    CHECK(has(replies(c), ":irc.test 322 alice #lobby 3 :quick brown fox\n"));
    send_line(c, 1, "TOPIC #lobby");
    CHECK_STR(replies(c), ":irc.test 332 bob #lobby :quick brown fox\n");
    send_line(c, 0, "AWAY :lunch");
    CHECK_STR(replies(c), ":irc.test 306 alice :You have been marked as being away\n");
    send_line(c, 1, "PRIVMSG alice :there?");
    CHECK(has(replies(c), ":irc.test 301 bob alice :lunch\n"));
    send_line(c, 1, "ISON alice nobody ALICE");
    CHECK_STR(replies(c), ":irc.test 303 bob :alice alice\n");
    /* what clients send by themselves or on a user's /command */
    send_line(c, 1, "USERHOST bob alice nobody guest3");
    CHECK_STR(replies(c), ":irc.test 302 bob :bob=+bob@irc.test alice=-alice@irc.test guest3=+guest3@irc.test\n");
    send_line(c, 1, "KICK #lobby alice :out");
    CHECK_STR(replies(c), ":irc.test 482 bob #lobby :You're not channel operator\n");
    const char *rooms[4];
    CHECK_INT(chat_session_rooms(c, 0, rooms, 4), 1);   /* alice is still in #lobby */
    send_line(c, 1, "MOTD");
    CHECK_STR(replies(c), ":irc.test 422 bob :MOTD File is missing\n");
    send_line(c, 1, "LUSERS");
    CHECK_STR(replies(c), ":irc.test 251 bob :There are 3 users and 0 invisible on 1 server\n"
                          ":irc.test 254 bob 1 :channels formed\n"
                          ":irc.test 255 bob :I have 3 clients and 1 servers\n");
    send_line(c, 1, "VERSION");
    r = replies(c);
    CHECK(has(r, ":irc.test 351 bob chatrelay-" CHATRELAY_VERSION " irc.test :"));
    CHECK(has(r, ":irc.test 005 bob CASEMAPPING=ascii "));
    send_line(c, 1, "TIME");
    r = replies(c);
    CHECK(strncmp(r, ":irc.test 391 bob irc.test :20", 30) == 0 && strlen(r) == 30 - 2 + 24 + 1);
    send_line(c, 1, "WHOWAS carol,dave");
    CHECK_STR(replies(c), ":irc.test 406 bob carol :There was no such nickname\n"
                          ":irc.test 369 bob carol :End of WHOWAS\n");
    send_line(c, 1, "WHOWAS :a b");              /* not a nick: never echoed into the middle */
    CHECK_STR(replies(c), ":irc.test 406 bob * :There was no such nickname\n:irc.test 369 bob * :End of WHOWAS\n");
    chat_destroy(c);

    /* USERHOST and ISON stay within 512 bytes with a 63-byte server name and long nicks */
    chat_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.server_name = "a-very-long-server-name.of-sixty-three-characters.example.org.x";
    c = chat_create(&cfg, 8);
    char nick[40], line[600] = "USERHOST";
    char ison[600] = "ISON";
    for (uint32_t k = 0; k < 6; k++) {
        snprintf(nick, sizeof nick, "n%031u", (unsigned)k);   /* 32 characters */
        register_lines(c, k, k + 1, NULL, nick);
        CHECK(has(replies(c), " 001 "));
        strcat(line, " ");
        strcat(line, nick);
        strcat(ison, " ");
        strcat(ison, nick);
    }
    for (int k = 0; k < 2; k++) {
        send_line(c, 0, k ? ison : line);
        const chat_effect *fx;
        CHECK_INT(chat_effects(c, &fx), 1);
        CHECK(fx[0].text_len <= 512);
        CHECK(has(replies(c), k ? " 303 " : " 302 "));
    }
    chat_destroy(c);
}

/* The CTCP delimiter the hub's cleaning leaves in an IRC client's line is
 * read by PRIVMSG and NOTICE only; in any other text it is dropped, so it
 * never reaches a line client (the fuzzer found it in a TOPIC). */
static void test_ctcp_delimiter_only_in_messages(void)
{
    chat *c = make(0);
    registered(c, 0, 1, "ircer", NULL);
    chat_session_open(c, 1, 2, CHAT_DIALECT_LINE, now);   /* a line client in the lobby */
    send_line(c, 0, "JOIN #lobby");
    send_line(c, 0, "TOPIC #lobby :\1before\1 and after\1");
    const chat_effect *e;
    CHECK_INT(chat_effects(c, &e), 1);
    CHECK(e[0].kind == CHAT_EVENT && e[0].event.kind == HISTORY_TOPIC);
    CHECK_MEM(e[0].event.body, e[0].event.body_len, "before and after");
    send_line(c, 0, "PART #lobby :\1bye\1");
    CHECK_INT(chat_effects(c, &e), 1);
    CHECK(e[0].kind == CHAT_EVENT && e[0].event.kind == HISTORY_LEAVE);
    CHECK(memchr(e[0].event.body, '\1', e[0].event.body_len) == NULL);
    send_line(c, 0, "JOIN #lobby");
    send_line(c, 0, "PRIVMSG #lobby :\1ACTION waves\1");   /* still a CTCP ACTION */
    CHECK_INT(chat_effects(c, &e), 1);
    CHECK(e[0].kind == CHAT_EVENT && e[0].event.kind == HISTORY_ME);
    CHECK_MEM(e[0].event.body, e[0].event.body_len, "waves");
    chat_destroy(c);
}

static void test_renderings(void)
{
    chat *c = make(0);
    registered(c, 0, 1, "plain", NULL);
    registered(c, 1, 2, "tagged", "server-time message-tags batch");
    char out[8192];
    chat_event ev;
    memset(&ev, 0, sizeof ev);
    ev.kind = HISTORY_SAY;
    ev.nick = "bob";
    ev.body = "hi";
    ev.body_len = 2;
    ev.room_count = 1;
    ev.rooms[0] = "lobby";
    ev.id = 42;
    const char *at = "2026-11-27T03:04:05.123Z";
    CHECK_INT(chat_session_form(c, 0), CHAT_FORM_IRC);
    CHECK_INT(chat_session_form(c, 1), CHAT_FORM_IRC_TIME_MSGID);
    chat_render_event(c, CHAT_FORM_IRC, &ev, 0, 0, at, out, sizeof out);
    CHECK_STR(out, ":bob!bob@irc.test PRIVMSG #lobby :hi\r\n");
    chat_render_event(c, CHAT_FORM_IRC_TIME_MSGID, &ev, 0, 0, at, out, sizeof out);
    CHECK_STR(out, "@time=2026-11-27T03:04:05.123Z;msgid=42 :bob!bob@irc.test PRIVMSG #lobby :hi\r\n");
    chat_render_event(c, CHAT_FORM_IRC_TIME, &ev, 0, 0, "bad time; QUIT", out, sizeof out);
    CHECK_STR(out, ":bob!bob@irc.test PRIVMSG #lobby :hi\r\n");   /* a time that is not one: no tag */
    ev.kind = HISTORY_LEAVE;
    ev.quit = 1;
    ev.body = "quit: bye";
    ev.body_len = 9;
    ev.room_count = 2;
    ev.rooms[1] = "games";
    chat_render_event(c, CHAT_FORM_IRC, &ev, 1, 0, at, out, sizeof out);
    CHECK_STR(out, ":bob!bob@irc.test QUIT :quit: bye\r\n");     /* once, whatever the rooms */
    CHECK_INT(chat_form_names_room(CHAT_FORM_IRC, &ev), 0);
    ev.quit = 0;
    ev.room_count = 1;
    ev.body = "joined games";
    ev.body_len = 12;
    chat_render_event(c, CHAT_FORM_IRC, &ev, 0, 0, at, out, sizeof out);
    CHECK_STR(out, ":bob!bob@irc.test PART #lobby :joined games\r\n");
    ev.kind = HISTORY_NICK;
    ev.body = "robert";
    ev.body_len = 6;
    chat_render_event(c, CHAT_FORM_IRC, &ev, 0, 0, at, out, sizeof out);
    CHECK_STR(out, ":bob!bob@irc.test NICK :robert\r\n");
    ev.kind = HISTORY_MSG;
    ev.target = "plain";
    ev.body = "psst";
    ev.body_len = 4;
    chat_render_event(c, CHAT_FORM_IRC, &ev, 0, 0, at, out, sizeof out);
    CHECK_STR(out, ":bob!bob@irc.test PRIVMSG plain :psst\r\n");

    /* a hub notice, in each dialect */
    chat_render_notice(c, 0, "*** history unavailable, message not sent", 41, out, sizeof out);
    CHECK_STR(out, ":irc.test NOTICE plain :history unavailable, message not sent\r\n");

    /* history rows: only messages; the time as a tag or in the text; a foreign
     * row with an impossible nick or room cannot break the line */
    history_record rec;
    memset(&rec, 0, sizeof rec);
    rec.id = 7;
    rec.at = at;
    rec.room = "lobby";
    rec.nick = "carol";
    rec.kind = HISTORY_SAY;
    rec.body = "old line";
    rec.body_len = 8;
    chat_render_history(c, 0, &rec, out, sizeof out);
    CHECK_STR(out, ":carol!carol@irc.test PRIVMSG #lobby :[2026-11-27 03:04:05] old line\r\n");
    chat_render_history(c, 1, &rec, out, sizeof out);
    CHECK_STR(out, "@msgid=7;time=2026-11-27T03:04:05.123Z :carol!carol@irc.test PRIVMSG #lobby :old line\r\n");
    rec.kind = HISTORY_JOIN;
    CHECK_INT(chat_render_history(c, 1, &rec, out, sizeof out), 0);
    rec.kind = HISTORY_SAY;
    rec.nick = "evil nick :x";
    rec.body = "a\r\nQUIT :gone";
    rec.body_len = strlen(rec.body);
    chat_render_history(c, 0, &rec, out, sizeof out);
    CHECK_STR(out, ":unknown!unknown@irc.test PRIVMSG #lobby :[2026-11-27 03:04:05] aQUIT :gone\r\n");
    rec.room = "no such room!";
    CHECK_INT(chat_render_history(c, 0, &rec, out, sizeof out), 0);

    /* the frame of an answer: a batch, or notices */
    chat_render_query_mark(c, 1, "lobby", NULL, 0, out, sizeof out);
    CHECK_STR(out, "BATCH +h1 chathistory #lobby\r\n");
    rec.room = "lobby";
    rec.nick = "carol";
    rec.body = "in batch";
    rec.body_len = 8;
    chat_render_history(c, 1, &rec, out, sizeof out);
    CHECK_STR(out, "@batch=h1;msgid=7;time=2026-11-27T03:04:05.123Z :carol!carol@irc.test PRIVMSG #lobby :in batch\r\n");
    chat_render_query_mark(c, 1, "lobby", NULL, 1, out, sizeof out);
    CHECK_STR(out, "BATCH -h1\r\n");
    chat_render_query_mark(c, 1, "lobby", "fox", 0, out, sizeof out);
    CHECK_STR(out, "BATCH +h2 soju.im/search\r\n");
    chat_render_query_mark(c, 0, "lobby", "fox", 0, out, sizeof out);
    CHECK_STR(out, ":irc.test NOTICE #lobby :Search results for: fox\r\n");
    chat_render_query_mark(c, 0, "lobby", NULL, 1, out, sizeof out);
    CHECK_STR(out, ":irc.test NOTICE #lobby :End of replay\r\n");
    chat_destroy(c);
}

/* A 1,000-byte body becomes several PRIVMSG lines of at most 512 bytes each
 * (CRLF included), on character boundaries, with every byte kept in order;
 * so does an ACTION, each part framed as one. */
static void test_split(void)
{
    chat *c = make(0);
    registered(c, 0, 1, "sp", NULL);
    char body[1000];
    for (size_t i = 0; i < sizeof body; i++)
        body[i] = "abc\xe2\x82\xac"[i % 6] ;   /* ASCII and a 3-byte character, cut anywhere */
    size_t len = 996;                      /* ends on a character boundary */
    chat_event ev;
    memset(&ev, 0, sizeof ev);
    ev.nick = "sp";
    ev.body = body;
    ev.body_len = len;
    ev.room_count = 1;
    ev.rooms[0] = "lobby";
    for (int action = 0; action < 2; action++) {
        static char out[16384];
        ev.kind = action ? HISTORY_ME : HISTORY_SAY;
        size_t n = chat_render_event(c, CHAT_FORM_IRC, &ev, 0, 0, NULL, out, sizeof out);
        CHECK(n > 0);
        char joined[2048];
        size_t got = 0, lines = 0;
        const char *p = out;
        const char *head = action ? ":sp!sp@irc.test PRIVMSG #lobby :\x01" "ACTION " : ":sp!sp@irc.test PRIVMSG #lobby :";
        while (p < out + n) {
            const char *eol = strstr(p, "\r\n");
            CHECK(eol != NULL);
            if (!eol)
                break;
            size_t line_len = (size_t)(eol - p) + 2;
            CHECK(line_len <= 512);
            CHECK(strncmp(p, head, strlen(head)) == 0);
            const char *t = p + strlen(head);
            size_t tl = (size_t)(eol - t) - (action ? 1 : 0);
            if (action)
                CHECK(t[tl] == '\x01');
            CHECK(((unsigned char)t[0] & 0xC0) != 0x80);   /* no part starts inside a character */
            memcpy(joined + got, t, tl);
            got += tl;
            lines++;
            p = eol + 2;
        }
        CHECK(lines >= 2);
        CHECK(got == len && memcmp(joined, body, len) == 0);
    }
    chat_destroy(c);
}

int main(void)
{
    test_registration();
    test_password();
    test_parser();
    test_error_numerics();
    test_queries_and_lists();
    test_ctcp_delimiter_only_in_messages();
    test_renderings();
    test_split();
    return check_done();
}

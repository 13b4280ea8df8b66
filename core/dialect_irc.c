/* dialect_irc: the IRC client protocol (modern.ircdocs.horse, with the IRCv3
 * capabilities server-time, message-tags, batch and echo-message), so that
 * irssi, HexChat, mIRC, WeeChat and ii sit in the same rooms as line
 * clients.  Rooms are channels: room `lobby` is `#lobby`.
 *
 * Owns: registration (CAP LS/REQ/END holding it, NICK, USER, PASS checked
 * against --password-file's password, else ignored),
 * the numerics (and the server queries clients send by themselves: USERHOST,
 * VERSION, TIME, LUSERS, MOTD, WHOWAS; KICK refused: nobody is an operator),
 * the IRC form of events and history rows (one long line is
 * split into several PRIVMSGs on character boundaries), CTCP ACTION <-> /me,
 * the server's PING of a silent client.
 * Never: lets a client's text start a new IRC line (the hub's cleaning has
 * removed CR, LF and every control but the CTCP delimiter, which is consumed
 * here), or sends a tag to a client that did not ask for it.
 */
#include "chat_internal.h"

#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "invariant.h"
#include "version.h"

#define IRC_LINE_MAX 510              /* bytes before CRLF, tags excluded */
#define IRC_PING_AFTER_MS 90000       /* a silent registered client is pinged (chat_config.irc_ping_ms)... */
#define IRC_REGISTER_TIMEOUT_MS 60000 /* an unregistered connection is cut after this */
#define IRC_AWAY_MAX 200u
#define IRC_SEARCH_FLOOD_COST 4
#define IRC_HISTORY_DEFAULT 50

enum {
    CAP_SERVER_TIME = 1u << 0,
    CAP_MESSAGE_TAGS = 1u << 1,
    CAP_BATCH = 1u << 2,
    CAP_ECHO = 1u << 3,
    CAP_CHATHISTORY = 1u << 4,
};

static const struct cap_name {
    const char *name;
    unsigned bit;
} caps_offered[] = {
    {"server-time", CAP_SERVER_TIME},
    {"message-tags", CAP_MESSAGE_TAGS},
    {"batch", CAP_BATCH},
    {"echo-message", CAP_ECHO},
    {"draft/chathistory", CAP_CHATHISTORY},
};

struct irc_state {
    unsigned caps;
    uint8_t negotiating;              /* CAP LS or REQ seen, END not yet: registration waits */
    uint8_t has_user;
    uint8_t pass_ok;                  /* PASS gave the server password (or none is configured) */
    uint8_t ping_sent;
    uint8_t want_len;
    char want_nick[CHAT_NAME_MAX + 1];   /* NICK before registration */
    char *away;                          /* AWAY text, or NULL */
    uint32_t batch_seq;                  /* batch ids: "h1", "h2"... */
    uint8_t in_batch;                    /* an answer's batch is open: rows carry its tag */
};

/* ---- output helpers ---- */

static const char *my_nick(const session *s)
{
    return s->nick_len > 0 ? s->nick : "*";
}

/* ":server NNN nick " */
static void num_open(chat *c, sbuf *b, uint32_t slot, const char *code)
{
    sb_open(c, b);
    sb_puts(b, ":");
    sb_puts(b, c->irc_name);
    sb_puts(b, " ");
    sb_puts(b, code);
    sb_puts(b, " ");
    sb_puts(b, my_nick(&c->sessions[slot]));
    sb_puts(b, " ");
}

/* One numeric with a constant tail (params and trailing text). */
static void num(chat *c, uint32_t slot, const char *code, const char *tail)
{
    sbuf b;
    num_open(c, &b, slot, code);
    sb_puts(&b, tail);
    chat_reply_built(c, slot, &b);
}

/* A numeric about something the client named: "<code> nick <echo> :<text>". */
static void num_about(chat *c, uint32_t slot, const char *code, const char *what, size_t what_len,
                      const char *text)
{
    sbuf b;
    num_open(c, &b, slot, code);
    sb_put_echo(&b, what, what_len);
    sb_puts(&b, " :");
    sb_puts(&b, text);
    chat_reply_built(c, slot, &b);
}

static void put_prefix(sbuf *b, const chat *c, const char *nick)
{
    sb_puts(b, ":");
    sb_puts(b, nick);
    sb_puts(b, "!");
    sb_puts(b, nick);
    sb_puts(b, "@");
    sb_puts(b, c->irc_name);
}

/* ---- parsing ---- */

#define IRC_PARAMS_MAX 15

typedef struct irc_msg {
    args command;
    args param[IRC_PARAMS_MAX];
    size_t params;
} irc_msg;

/* Splits "[@tags ][:source ]COMMAND params [:trailing]".  Client tags and
 * the source are ignored (a client has no say in either). */
static int irc_parse(const char *line, size_t len, irc_msg *m)
{
    args a = { line, len };
    memset(m, 0, sizeof *m);
    while (a.n > 0 && a.p[0] == ' ')
        a.p++, a.n--;
    if (a.n > 0 && a.p[0] == '@')
        (void)chat_next_word(&a);
    if (a.n > 0 && a.p[0] == ':')
        (void)chat_next_word(&a);
    m->command = chat_next_word(&a);
    if (m->command.n == 0)
        return -1;
    while (a.n > 0 && m->params < IRC_PARAMS_MAX) {
        if (a.p[0] == ':' || m->params == IRC_PARAMS_MAX - 1) {
            args t = a;
            if (t.p[0] == ':')
                t.p++, t.n--;
            m->param[m->params++] = t;
            break;
        }
        m->param[m->params++] = chat_next_word(&a);
    }
    return 0;
}

/* The next item of a comma list. */
static int next_item(args *list, args *item)
{
    if (list->n == 0)
        return 0;
    size_t i = 0;
    while (i < list->n && list->p[i] != ',')
        i++;
    item->p = list->p;
    item->n = i;
    list->p += i < list->n ? i + 1 : i;
    list->n -= i < list->n ? i + 1 : i;
    return 1;
}

/* "#room" -> room name (without '#'); 0 if it is not a channel name. */
static int channel_name(args ch, args *room_name)
{
    if (ch.n < 2 || ch.p[0] != '#')
        return 0;
    room_name->p = ch.p + 1;
    room_name->n = ch.n - 1;
    return chat_name_valid(room_name->p, room_name->n);
}

/* Removes the CTCP delimiters (the only control the hub lets through):
 * "\1ACTION waves\1" -> *is_action, "waves".  Returns 0 for another CTCP
 * (VERSION, PING...), which is not relayed. */
static int take_ctcp(args *text, int *is_action, char *scratch, size_t cap)
{
    *is_action = 0;
    if (text->n > 0 && text->p[0] == '\1') {
        args t = { text->p + 1, text->n - 1 };
        if (t.n > 0 && t.p[t.n - 1] == '\1')
            t.n--;
        args w = chat_next_word(&t);
        if (!chat_word_is(w.p, w.n, "action"))
            return 0;
        *is_action = 1;
        *text = t;
    }
    /* Stray delimiters elsewhere are dropped: copy without them (a plain
     * line, the usual case, has none and is used where it is). */
    if (text->n > 0 && !memchr(text->p, '\1', text->n))
        return 1;
    size_t w = 0;
    for (size_t i = 0; i < text->n && w < cap; i++)
        if (text->p[i] != '\1')
            scratch[w++] = text->p[i];
    text->p = scratch;
    text->n = w;
    return 1;
}

/* ---- registration ---- */

int irc_open(chat *c, uint32_t slot)
{
    session *s = &c->sessions[slot];
    CR_ASSERT(s->irc == NULL);
    s->irc = calloc(1, sizeof *s->irc);
    return s->irc ? 0 : -1;
}

void irc_free(irc_state *st)
{
    if (!st)
        return;
    free(st->away);
    free(st);
}

/* 005, after the welcome and in answer to VERSION */
static void isupport_reply(chat *c, uint32_t slot)
{
    sbuf b;
    num_open(c, &b, slot, "005");
    sb_puts(&b, "CASEMAPPING=ascii CHANTYPES=# PREFIX=() CHANMODES=,,,nt NICKLEN=32 CHANNELLEN=33 "
                "CHANLIMIT=#:20 TOPICLEN=300 CHATHISTORY=200 MSGREFTYPES=msgid,timestamp NETWORK=");
    sb_puts(&b, c->irc_name);
    sb_puts(&b, " :are supported by this server");
    chat_reply_built(c, slot, &b);
}

/* 251 and 254, after the welcome and in answer to LUSERS */
static void lusers_reply(chat *c, uint32_t slot)
{
    sbuf b;
    uint32_t users = 0;
    for (uint32_t i = 0; i < c->max_slots; i++)
        users += c->sessions[i].state == SESSION_LIVE;
    num_open(c, &b, slot, "251");
    sb_puts(&b, ":There are ");
    sb_put_u64(&b, users);
    sb_puts(&b, " users and 0 invisible on 1 server");
    chat_reply_built(c, slot, &b);
    num_open(c, &b, slot, "254");
    sb_put_u64(&b, c->room_count);
    sb_puts(&b, " :channels formed");
    chat_reply_built(c, slot, &b);
    num_open(c, &b, slot, "255");
    sb_puts(&b, ":I have ");
    sb_put_u64(&b, users);
    sb_puts(&b, " clients and 1 servers");
    chat_reply_built(c, slot, &b);
}

/* 422 (there is no MOTD file), after the welcome and in answer to MOTD */
static void motd_reply(chat *c, uint32_t slot)
{
    num(c, slot, "422", ":MOTD File is missing");
}

static void welcome(chat *c, uint32_t slot)
{
    const session *s = &c->sessions[slot];
    sbuf b;
    num_open(c, &b, slot, "001");
    sb_puts(&b, ":Welcome to ");
    sb_puts(&b, c->irc_name);
    sb_puts(&b, ", ");
    sb_put(&b, s->nick, s->nick_len);
    chat_reply_built(c, slot, &b);
    num_open(c, &b, slot, "002");
    sb_puts(&b, ":Your host is ");
    sb_puts(&b, c->irc_name);
    sb_puts(&b, ", running chatrelay");
    chat_reply_built(c, slot, &b);
    num(c, slot, "003", ":This server keeps every line in a SQLite history");
    num_open(c, &b, slot, "004");
    sb_puts(&b, c->irc_name);
    sb_puts(&b, " chatrelay i nt");
    chat_reply_built(c, slot, &b);
    isupport_reply(c, slot);
    lusers_reply(c, slot);
    motd_reply(c, slot);
    sb_open(c, &b);
    sb_puts(&b, ":");
    sb_puts(&b, c->irc_name);
    sb_puts(&b, " NOTICE ");
    sb_put(&b, s->nick, s->nick_len);
    sb_puts(&b, " :Rooms are channels: /join #lobby to meet the people on nc and telnet."
                " /search WORDS searches this channel's history.");
    chat_reply_built(c, slot, &b);
}

static void try_register(chat *c, uint32_t slot)
{
    session *s = &c->sessions[slot];
    irc_state *st = s->irc;
    if (st->negotiating || !st->has_user || st->want_len == 0)
        return;
    if (chat_password_required(c) && !st->pass_ok) {
        static const char bye[] = "ERROR :Closing link (bad password)";
        num(c, slot, "464", ":Password incorrect");
        chat_close(c, slot, bye, sizeof bye - 1, "bad password");
        return;
    }
    switch (chat_op_register(c, slot, st->want_nick, st->want_len)) {
    case CHAT_OK:
        st->want_len = 0;
        welcome(c, slot);
        break;
    case CHAT_TAKEN:
        num_about(c, slot, "433", st->want_nick, st->want_len, "Nickname is already in use");
        st->want_len = 0;
        break;
    default:
        num_about(c, slot, "432", st->want_nick, st->want_len, "Erroneous nickname");
        st->want_len = 0;
        break;
    }
}

/* ":server CAP nick VERB :" */
static void cap_open(chat *c, sbuf *b, const session *s, const char *verb)
{
    sb_open(c, b);
    sb_puts(b, ":");
    sb_puts(b, c->irc_name);
    sb_puts(b, " CAP ");
    sb_puts(b, my_nick(s));
    sb_puts(b, " ");
    sb_puts(b, verb);
    sb_puts(b, " :");
}

static void cmd_cap(chat *c, uint32_t slot, const irc_msg *m)
{
    session *s = &c->sessions[slot];
    irc_state *st = s->irc;
    sbuf b;
    args sub = m->params > 0 ? m->param[0] : (args){ "", 0 };
    if (chat_word_is(sub.p, sub.n, "ls") || chat_word_is(sub.p, sub.n, "list")) {
        int list = chat_word_is(sub.p, sub.n, "list");
        if (!list && s->state == SESSION_UNREGISTERED)
            st->negotiating = 1;
        cap_open(c, &b, s, list ? "LIST" : "LS");
        int first = 1;
        for (size_t i = 0; i < sizeof caps_offered / sizeof caps_offered[0]; i++) {
            if (list && !(st->caps & caps_offered[i].bit))
                continue;
            if (!first)
                sb_puts(&b, " ");
            sb_puts(&b, caps_offered[i].name);
            first = 0;
        }
        chat_reply_built(c, slot, &b);
    } else if (chat_word_is(sub.p, sub.n, "req")) {
        if (s->state == SESSION_UNREGISTERED)
            st->negotiating = 1;
        args list = m->params > 1 ? m->param[1] : (args){ "", 0 };
        args all = list;
        unsigned add = 0, del = 0;
        int ok = 1;
        while (list.n > 0 && ok) {
            args w = chat_next_word(&list);
            int minus = w.n > 0 && w.p[0] == '-';
            if (minus)
                w.p++, w.n--;
            unsigned bit = 0;
            for (size_t i = 0; i < sizeof caps_offered / sizeof caps_offered[0]; i++)
                if (w.n == strlen(caps_offered[i].name) && memcmp(w.p, caps_offered[i].name, w.n) == 0)
                    bit = caps_offered[i].bit;
            if (!bit)
                ok = 0;
            else if (minus)
                del |= bit;
            else
                add |= bit;
        }
        if (ok) {
            st->caps = (st->caps | add) & ~del;
            s->form = (uint8_t)irc_form(s);
        }
        cap_open(c, &b, s, ok ? "ACK" : "NAK");
        sb_put_echo(&b, all.p, all.n > 200 ? 200 : all.n);
        chat_reply_built(c, slot, &b);
    } else if (chat_word_is(sub.p, sub.n, "end")) {
        st->negotiating = 0;
        if (s->state == SESSION_UNREGISTERED)
            try_register(c, slot);
    } else {
        num_about(c, slot, "410", sub.p, sub.n, "Invalid CAP command");
    }
}

/* ---- channels ---- */

static void put_channel(sbuf *b, const room *r)
{
    sb_puts(b, "#");
    sb_put(b, r->name, r->name_len);
}

static void topic_reply(chat *c, uint32_t slot, uint32_t ri, int say_none);

/* 353 lines of about 400 bytes, then 366. */
static void names_reply(chat *c, uint32_t slot, uint32_t ri)
{
    const room *r = &c->rooms[ri];
    sbuf b;
    size_t items = 0, shown = 0;
    for (uint32_t m = r->head; m != NONE; m = c->members[m].room_next) {
        const session *p = &c->sessions[c->members[m].slot];
        if (shown >= CHAT_LIST_SHOWN * 4)
            break;   /* a huge room: the rest is left out, as WHO says */
        if (items == 0) {
            num_open(c, &b, slot, "353");
            sb_puts(&b, "= ");
            put_channel(&b, r);
            sb_puts(&b, " :");
        } else {
            sb_puts(&b, " ");
        }
        sb_put(&b, p->nick, p->nick_len);
        items++;
        shown++;
        if (b.len > 400) {
            chat_reply_built(c, slot, &b);
            items = 0;
        }
    }
    if (items > 0)
        chat_reply_built(c, slot, &b);
    num_open(c, &b, slot, "366");
    put_channel(&b, r);
    sb_puts(&b, " :End of /NAMES list");
    chat_reply_built(c, slot, &b);
}

static void cmd_join(chat *c, uint32_t slot, const irc_msg *m, int64_t now_ms)
{
    if (m->params < 1) {
        num(c, slot, "461", "JOIN :Not enough parameters");
        return;
    }
    args list = m->param[0], item;
    if (list.n == 1 && list.p[0] == '0') {   /* JOIN 0: leave every channel */
        while (c->sessions[slot].first_member != NONE)
            (void)chat_op_part(c, slot, chat_first_room(c, slot), "", 0);
        return;
    }
    while (next_item(&list, &item)) {
        args name;
        uint32_t ri;
        if (!channel_name(item, &name)) {
            num_about(c, slot, "403", item.p, item.n, "No such channel");
            continue;
        }
        if (!chat_flood_take(c, slot, now_ms))
            return;
        switch (chat_op_join(c, slot, name.p, name.n, &ri)) {
        case CHAT_OK:
            /* The JOIN itself comes back as the event's echo; then the
             * names and the replay, behind it (the hub keeps the order). */
            topic_reply(c, slot, ri, 0);
            names_reply(c, slot, ri);
            /* a client that asks for history itself gets no automatic replay */
            /* the last messages (joins and parts are not played back to IRC) */
            if (c->cfg.replay > 0 && !(c->sessions[slot].irc->caps & CAP_CHATHISTORY))
                chat_query_on_join(c, slot, ri, c->cfg.replay, 1);
            break;
        case CHAT_SAME:
            break;
        case CHAT_TOO_MANY:
            num_about(c, slot, "405", item.p, item.n, "You have joined too many channels");
            return;
        default:
            num_about(c, slot, "403", item.p, item.n, "No such channel");
            break;
        }
    }
}

static void cmd_part(chat *c, uint32_t slot, const irc_msg *m, int64_t now_ms)
{
    if (m->params < 1) {
        num(c, slot, "461", "PART :Not enough parameters");
        return;
    }
    args list = m->param[0], item, reason = m->params > 1 ? m->param[1] : (args){ "", 0 };
    reason.n = chat_cut(reason.p, reason.n, CHAT_REASON_MAX);
    while (next_item(&list, &item)) {
        args name;
        uint32_t ri = channel_name(item, &name) ? chat_room_find(c, name.p, name.n) : NONE;
        if (ri == NONE) {
            num_about(c, slot, "403", item.p, item.n, "No such channel");
            continue;
        }
        if (!chat_flood_take(c, slot, now_ms))
            return;
        if (chat_op_part(c, slot, ri, reason.p, reason.n) == CHAT_NOT_IN)
            num_about(c, slot, "442", item.p, item.n, "You're not on that channel");
    }
}

static void away_notice(chat *c, uint32_t slot, uint32_t to)
{
    const session *r = &c->sessions[to];
    if (c->sessions[slot].dialect != CHAT_DIALECT_IRC || !r->irc || !r->irc->away)
        return;
    sbuf b;
    num_open(c, &b, slot, "301");
    sb_put(&b, r->nick, r->nick_len);
    sb_puts(&b, " :");
    sb_puts(&b, r->irc->away);
    chat_reply_built(c, slot, &b);
}

static void cmd_privmsg(chat *c, uint32_t slot, const irc_msg *m, int notice, int64_t now_ms)
{
    char scratch[TEXT_MAX_LINE];
    if (m->params < 1 || m->param[0].n == 0) {
        if (!notice)
            num(c, slot, "411", ":No recipient given (PRIVMSG)");
        return;
    }
    if (m->params < 2 || m->param[1].n == 0) {
        if (!notice)
            num(c, slot, "412", ":No text to send");
        return;
    }
    args text = m->param[1];
    int action;
    if (!take_ctcp(&text, &action, scratch, sizeof scratch))
        return;   /* CTCP queries (VERSION...) are not relayed */
    if (text.n == 0 || text_is_blank(text.p, text.n)) {
        if (!notice)
            num(c, slot, "412", ":No text to send");
        return;
    }
    args list = m->param[0], item;
    while (next_item(&list, &item)) {
        if (!chat_flood_take(c, slot, now_ms))
            return;
        if (item.n > 0 && item.p[0] == '#') {
            args name;
            uint32_t ri = channel_name(item, &name) ? chat_room_find(c, name.p, name.n) : NONE;
            if (ri == NONE) {
                if (!notice)
                    num_about(c, slot, "403", item.p, item.n, "No such channel");
            } else if (chat_op_say(c, slot, ri, action ? HISTORY_ME : HISTORY_SAY, notice && !action,
                                   text.p, text.n) != CHAT_OK) {
                if (!notice)
                    num_about(c, slot, "404", item.p, item.n, "Cannot send to channel (join it first)");
            }
            continue;
        }
        uint32_t to;
        chat_result r = chat_op_msg(c, slot, item.p, item.n, notice, text.p, text.n, &to);
        if (r == CHAT_NO_SUCH) {
            if (!notice)
                num_about(c, slot, "401", item.p, item.n, "No such nick/channel");
        } else if (r == CHAT_SELF) {
            /* to oneself: nothing to store or route, shown back as sent */
            const session *s = &c->sessions[slot];
            sbuf b;
            sb_open(c, &b);
            put_prefix(&b, c, s->nick);
            sb_puts(&b, notice ? " NOTICE " : " PRIVMSG ");
            sb_put(&b, s->nick, s->nick_len);
            sb_puts(&b, " :");
            sb_put(&b, text.p, text.n > 400 ? chat_cut(text.p, text.n, 400) : text.n);
            chat_reply_built(c, slot, &b);
        } else if (!notice) {
            away_notice(c, slot, to);
        }
    }
}

static void who_line(chat *c, uint32_t slot, const char *channel, size_t channel_len, uint32_t who)
{
    const session *p = &c->sessions[who];
    sbuf b;
    num_open(c, &b, slot, "352");
    sb_put(&b, channel, channel_len);
    sb_puts(&b, " ");
    sb_put(&b, p->nick, p->nick_len);
    sb_puts(&b, " ");
    sb_puts(&b, c->irc_name);
    sb_puts(&b, " ");
    sb_puts(&b, c->irc_name);
    sb_puts(&b, " ");
    sb_put(&b, p->nick, p->nick_len);
    sb_puts(&b, p->irc && p->irc->away ? " G :0 " : " H :0 ");
    sb_puts(&b, p->dialect == CHAT_DIALECT_IRC ? "IRC client" : "line client");
    chat_reply_built(c, slot, &b);
}

static void cmd_who(chat *c, uint32_t slot, const irc_msg *m)
{
    args mask = m->params > 0 ? m->param[0] : (args){ "*", 1 };
    sbuf b;
    args name;
    if (channel_name(mask, &name)) {
        uint32_t ri = chat_room_find(c, name.p, name.n);
        if (ri != NONE) {
            size_t shown = 0;
            for (uint32_t mm = c->rooms[ri].head; mm != NONE && shown < CHAT_LIST_SHOWN;
                 mm = c->members[mm].room_next, shown++)
                who_line(c, slot, mask.p, mask.n, c->members[mm].slot);
        }
    } else {
        uint32_t who = chat_nick_find(c, mask.p, mask.n);
        if (who != NONE && c->sessions[who].state == SESSION_LIVE)
            who_line(c, slot, "*", 1, who);
    }
    num_open(c, &b, slot, "315");
    sb_put_echo(&b, mask.p, mask.n);
    sb_puts(&b, " :End of /WHO list");
    chat_reply_built(c, slot, &b);
}

static void cmd_whois(chat *c, uint32_t slot, const irc_msg *m)
{
    if (m->params < 1) {
        num(c, slot, "431", ":No nickname given");
        return;
    }
    args target = m->param[m->params - 1];   /* WHOIS [server] nick */
    uint32_t who = chat_nick_find(c, target.p, target.n);
    sbuf b;
    if (who == NONE || c->sessions[who].state != SESSION_LIVE) {
        num_about(c, slot, "401", target.p, target.n, "No such nick/channel");
    } else {
        const session *p = &c->sessions[who];
        num_open(c, &b, slot, "311");
        sb_put(&b, p->nick, p->nick_len);
        sb_puts(&b, " ");
        sb_put(&b, p->nick, p->nick_len);
        sb_puts(&b, " ");
        sb_puts(&b, c->irc_name);
        sb_puts(&b, " * :");
        sb_puts(&b, p->dialect == CHAT_DIALECT_IRC ? "IRC client" : "line client");
        chat_reply_built(c, slot, &b);
        if (p->room_count > 0) {
            num_open(c, &b, slot, "319");
            sb_put(&b, p->nick, p->nick_len);
            sb_puts(&b, " :");
            for (uint32_t mm = p->first_member; mm != NONE; mm = c->members[mm].sess_next) {
                put_channel(&b, &c->rooms[c->members[mm].room]);
                if (c->members[mm].sess_next != NONE)
                    sb_puts(&b, " ");
            }
            chat_reply_built(c, slot, &b);
        }
        num_open(c, &b, slot, "312");
        sb_put(&b, p->nick, p->nick_len);
        sb_puts(&b, " ");
        sb_puts(&b, c->irc_name);
        sb_puts(&b, " :chatrelay");
        chat_reply_built(c, slot, &b);
        if (p->irc && p->irc->away) {
            num_open(c, &b, slot, "301");
            sb_put(&b, p->nick, p->nick_len);
            sb_puts(&b, " :");
            sb_puts(&b, p->irc->away);
            chat_reply_built(c, slot, &b);
        }
    }
    num_open(c, &b, slot, "318");
    sb_put_echo(&b, target.p, target.n);
    sb_puts(&b, " :End of /WHOIS list");
    chat_reply_built(c, slot, &b);
}

static void cmd_mode(chat *c, uint32_t slot, const irc_msg *m)
{
    const session *s = &c->sessions[slot];
    sbuf b;
    if (m->params < 1) {
        num(c, slot, "461", "MODE :Not enough parameters");
        return;
    }
    args target = m->param[0], name;
    if (target.n > 0 && target.p[0] == '#') {
        uint32_t ri = channel_name(target, &name) ? chat_room_find(c, name.p, name.n) : NONE;
        if (ri == NONE) {
            num_about(c, slot, "403", target.p, target.n, "No such channel");
            return;
        }
        if (m->params >= 2 && m->param[1].n > 0 && (m->param[1].p[m->param[1].n - 1] == 'b')) {
            num_open(c, &b, slot, "368");
            put_channel(&b, &c->rooms[ri]);
            sb_puts(&b, " :End of channel ban list");
            chat_reply_built(c, slot, &b);
            return;
        }
        if (m->params >= 2)
            return;   /* nobody is an operator here: mode changes are ignored */
        num_open(c, &b, slot, "324");
        put_channel(&b, &c->rooms[ri]);
        sb_puts(&b, " +nt");
        chat_reply_built(c, slot, &b);
        return;
    }
    if (!chat_name_equal(target.p, target.n, s->nick, s->nick_len)) {
        num(c, slot, "502", ":Can't change mode for other users");
        return;
    }
    num(c, slot, "221", "+i");
}

/* USERHOST nick...: "nick=+nick@server" for each of the first 5 that are
 * here ('-' for away), what mIRC and HexChat ask to learn their own host. */
static void cmd_userhost(chat *c, uint32_t slot, const irc_msg *m)
{
    sbuf b;
    if (m->params < 1) {
        num(c, slot, "461", "USERHOST :Not enough parameters");
        return;
    }
    num_open(c, &b, slot, "302");
    sb_puts(&b, ":");
    int shown = 0;
    for (size_t i = 0; i < m->params && i < 5; i++) {
        uint32_t who = chat_nick_find(c, m->param[i].p, m->param[i].n);
        if (who == NONE || c->sessions[who].state != SESSION_LIVE)
            continue;
        const session *p = &c->sessions[who];
        /* " nick=+nick@server" must fit the 512-byte line (a long --name) */
        if (b.len + 1 + 2 * (size_t)p->nick_len + 3 + strlen(c->irc_name) > IRC_LINE_MAX)
            break;
        if (shown++)
            sb_puts(&b, " ");
        sb_put(&b, p->nick, p->nick_len);
        sb_puts(&b, p->irc && p->irc->away ? "=-" : "=+");
        sb_put(&b, p->nick, p->nick_len);
        sb_puts(&b, "@");
        sb_puts(&b, c->irc_name);
    }
    chat_reply_built(c, slot, &b);
}

/* KICK #channel nick: nobody is an operator here (docs/PROTOCOL.md), so a
 * kick is refused with the reason a client shows, never ignored. */
static void cmd_kick(chat *c, uint32_t slot, const irc_msg *m)
{
    if (m->params < 2) {
        num(c, slot, "461", "KICK :Not enough parameters");
        return;
    }
    args name;
    uint32_t ri = channel_name(m->param[0], &name) ? chat_room_find(c, name.p, name.n) : NONE;
    if (ri == NONE)
        num_about(c, slot, "403", m->param[0].p, m->param[0].n, "No such channel");
    else if (chat_member_of(c, slot, ri) == NONE)
        num_about(c, slot, "442", m->param[0].p, m->param[0].n, "You're not on that channel");
    else
        num_about(c, slot, "482", m->param[0].p, m->param[0].n, "You're not channel operator");
}

static void cmd_version(chat *c, uint32_t slot)
{
    sbuf b;
    num_open(c, &b, slot, "351");
    sb_puts(&b, "chatrelay-" CHATRELAY_VERSION " ");
    sb_puts(&b, c->irc_name);
    sb_puts(&b, " :TCP chat relay with a SQLite history");
    chat_reply_built(c, slot, &b);
    isupport_reply(c, slot);
}

static void cmd_time(chat *c, uint32_t slot)
{
    sbuf b;
    char at[CLOCK_TIME_LEN + 1];
    clock_format_utc(clock_wall_ms(), at);
    num_open(c, &b, slot, "391");
    sb_puts(&b, c->irc_name);
    sb_puts(&b, " :");
    sb_puts(&b, at);
    chat_reply_built(c, slot, &b);
}

/* WHOWAS nick: no past nicks are kept (the history has who said what). */
static void cmd_whowas(chat *c, uint32_t slot, const irc_msg *m)
{
    if (m->params < 1 || m->param[0].n == 0) {
        num(c, slot, "431", ":No nickname given");
        return;
    }
    args first = m->param[0], nick;
    if (!next_item(&first, &nick) || !chat_name_valid(nick.p, nick.n))
        nick = (args){ "*", 1 };   /* never echo what is not a nick into the numeric's middle */
    num_about(c, slot, "406", nick.p, nick.n, "There was no such nickname");
    num_about(c, slot, "369", nick.p, nick.n, "End of WHOWAS");
}

static void cmd_list(chat *c, uint32_t slot)
{
    sbuf b;
    uint32_t shown = 0;
    num(c, slot, "321", "Channel :Users  Name");
    for (uint32_t i = c->room_first; i != NONE && shown < CHAT_LIST_SHOWN; i = c->rooms[i].next, shown++) {
        num_open(c, &b, slot, "322");
        put_channel(&b, &c->rooms[i]);
        sb_puts(&b, " ");
        sb_put_u64(&b, c->rooms[i].members);
        sb_puts(&b, " :");
        const char *topic = chat_topic_of(c, i);
        if (topic)
            sb_puts(&b, topic);
        chat_reply_built(c, slot, &b);
    }
    num(c, slot, "323", ":End of /LIST");
}

static void cmd_away(chat *c, uint32_t slot, const irc_msg *m)
{
    irc_state *st = c->sessions[slot].irc;
    free(st->away);
    st->away = NULL;
    if (m->params > 0 && m->param[0].n > 0) {
        size_t n = chat_cut(m->param[0].p, m->param[0].n, IRC_AWAY_MAX);
        st->away = malloc(n + 1);
        if (st->away) {
            memcpy(st->away, m->param[0].p, n);
            st->away[n] = '\0';
        }
        num(c, slot, "306", ":You have been marked as being away");
    } else {
        num(c, slot, "305", ":You are no longer marked as being away");
    }
}

static void cmd_ison(chat *c, uint32_t slot, const irc_msg *m)
{
    sbuf b;
    int first = 1;
    num_open(c, &b, slot, "303");
    sb_puts(&b, ":");
    for (size_t i = 0; i < m->params; i++) {
        args list = m->param[i];
        while (list.n > 0) {
            args w = chat_next_word(&list);
            uint32_t who = chat_nick_find(c, w.p, w.n);
            if (who == NONE || c->sessions[who].state != SESSION_LIVE)
                continue;
            if (b.len + 1 + c->sessions[who].nick_len > IRC_LINE_MAX)
                break;   /* the rest would pass the 512-byte line */
            if (!first)
                sb_puts(&b, " ");
            sb_put(&b, c->sessions[who].nick, c->sessions[who].nick_len);
            first = 0;
        }
    }
    chat_reply_built(c, slot, &b);
}

/* SEARCH text=words;in=#chan;limit=N (soju.im/search's parameters), or
 * plain words (irssi sends "/search words" as "SEARCH words") in the
 * client's first channel. */
static void cmd_search(chat *c, uint32_t slot, const irc_msg *m)
{
    char words[TEXT_MAX_LINE];
    size_t words_len = 0;
    uint32_t ri = chat_first_room(c, slot);
    int limit = CHAT_SEARCH_MAX;
    args all = { NULL, 0 };
    if (m->params > 0) {
        all.p = m->param[0].p;
        all.n = (size_t)(m->param[m->params - 1].p + m->param[m->params - 1].n - m->param[0].p);
    }
    if (all.n > 0 && memchr(all.p, '=', all.n)) {
        args rest = all, kv;
        while (rest.n > 0) {
            size_t i = 0;
            while (i < rest.n && rest.p[i] != ';')
                i++;
            kv.p = rest.p;
            kv.n = i;
            rest.p += i < rest.n ? i + 1 : i;
            rest.n -= i < rest.n ? i + 1 : i;
            const char *eq = memchr(kv.p, '=', kv.n);
            if (!eq)
                continue;
            args key = { kv.p, (size_t)(eq - kv.p) }, val = { eq + 1, kv.n - (size_t)(eq - kv.p) - 1 };
            args name;
            if (chat_word_is(key.p, key.n, "text")) {
                words_len = val.n < sizeof words ? val.n : sizeof words - 1;
                memcpy(words, val.p, words_len);
            } else if (chat_word_is(key.p, key.n, "in")) {
                ri = channel_name(val, &name) ? chat_room_find(c, name.p, name.n) : NONE;
                if (ri == NONE) {
                    num_about(c, slot, "403", val.p, val.n, "No such channel");
                    return;
                }
            } else if (chat_word_is(key.p, key.n, "limit")) {
                int v = 0;
                for (size_t k = 0; k < val.n && val.p[k] >= '0' && val.p[k] <= '9' && v < 1000; k++)
                    v = v * 10 + (val.p[k] - '0');
                if (v > 0)
                    limit = v < CHAT_HISTORY_MAX ? v : CHAT_HISTORY_MAX;
            }
        }
    } else if (all.n > 0) {
        words_len = all.n < sizeof words ? all.n : sizeof words - 1;
        memcpy(words, all.p, words_len);
    }
    if (words_len == 0) {
        num(c, slot, "461", "SEARCH :Not enough parameters (SEARCH text=WORDS;in=#channel)");
        return;
    }
    if (ri == NONE) {
        num(c, slot, "403", "* :Join a channel first, or name one with in=#channel");
        return;
    }
    chat_flood_charge(c, slot, IRC_SEARCH_FLOOD_COST - 1);
    chat_query(c, slot, ri, words, words_len, limit);
}

static void topic_reply(chat *c, uint32_t slot, uint32_t ri, int say_none)
{
    const char *topic = chat_topic_of(c, ri);
    sbuf b;
    if (!topic && !say_none)
        return;
    num_open(c, &b, slot, topic ? "332" : "331");
    put_channel(&b, &c->rooms[ri]);
    sb_puts(&b, " :");
    sb_puts(&b, topic ? topic : "No topic is set");
    chat_reply_built(c, slot, &b);
}

static void cmd_topic(chat *c, uint32_t slot, const irc_msg *m, int64_t now_ms)
{
    args name;
    if (m->params < 1) {
        num(c, slot, "461", "TOPIC :Not enough parameters");
        return;
    }
    uint32_t ri = channel_name(m->param[0], &name) ? chat_room_find(c, name.p, name.n) : NONE;
    if (ri == NONE) {
        num_about(c, slot, "403", m->param[0].p, m->param[0].n, "No such channel");
        return;
    }
    if (m->params < 2) {
        topic_reply(c, slot, ri, 1);
        return;
    }
    if (!chat_flood_take(c, slot, now_ms))
        return;
    char scratch[TEXT_MAX_LINE];
    args text = m->param[1];
    int action;
    (void)take_ctcp(&text, &action, scratch, sizeof scratch);   /* no delimiters in a topic */
    chat_result r = chat_op_topic(c, slot, ri, text.p, text.n);
    if (r == CHAT_NOT_IN)
        num_about(c, slot, "442", m->param[0].p, m->param[0].n, "You're not on that channel");
    /* else the TOPIC comes back as the event's echo */
}

static int time_ok(const char *at);

/* A standard reply: ":server FAIL CHATHISTORY CODE [context] :description". */
static void fail_reply(chat *c, uint32_t slot, const char *code, const char *ctx, size_t ctx_len, const char *text)
{
    sbuf b;
    sb_open(c, &b);
    sb_puts(&b, ":");
    sb_puts(&b, c->irc_name);
    sb_puts(&b, " FAIL CHATHISTORY ");
    sb_puts(&b, code);
    if (ctx) {
        sb_puts(&b, " ");
        sb_put_echo(&b, ctx, ctx_len);
    }
    sb_puts(&b, " :");
    sb_puts(&b, text);
    chat_reply_built(c, slot, &b);
}

/* "msgid=42", "timestamp=2026-11-27T03:04:05.123Z" or "*"; 0 if malformed. */
static int parse_ref(args a, history_bound *b, char *at_buf)
{
    memset(b, 0, sizeof *b);
    if (a.n == 1 && a.p[0] == '*')
        return 1;
    if (a.n > 6 && memcmp(a.p, "msgid=", 6) == 0) {
        int64_t v = 0;
        for (size_t i = 6; i < a.n; i++) {
            if (a.p[i] < '0' || a.p[i] > '9' || v > INT64_MAX / 10 - 10)
                return 0;
            v = v * 10 + (a.p[i] - '0');
        }
        b->id = v;
        return v > 0;
    }
    if (a.n > 10 && a.n - 10 <= HISTORY_TIME_LEN && memcmp(a.p, "timestamp=", 10) == 0) {
        memcpy(at_buf, a.p + 10, a.n - 10);
        at_buf[a.n - 10] = '\0';
        b->at = at_buf;
        return time_ok(at_buf);
    }
    return 0;
}

static int ref_before(const history_bound *a, const history_bound *b)
{
    if (a->id > 0 && b->id > 0)
        return a->id < b->id;
    if (a->at && b->at)
        return strcmp(a->at, b->at) < 0;
    return 1;   /* mixed kinds: taken in the order given */
}

/* CHATHISTORY LATEST|BEFORE|AFTER|AROUND|BETWEEN #channel refs... limit,
 * answered from SQLite by id or time (draft/chathistory). */
static void cmd_chathistory(chat *c, uint32_t slot, const irc_msg *m)
{
    char at1[HISTORY_TIME_LEN + 1], at2[HISTORY_TIME_LEN + 1];
    history_bound r1, r2, none;
    args name;
    memset(&none, 0, sizeof none);
    if (m->params < 3) {
        fail_reply(c, slot, "NEED_MORE_PARAMS", NULL, 0, "Missing parameters");
        return;
    }
    args sub = m->param[0];
    if (chat_word_is(sub.p, sub.n, "targets")) {
        sbuf b;
        sb_open(c, &b);
        sb_puts(&b, "BATCH +t1 draft/chathistory-targets");
        chat_reply_built(c, slot, &b);
        chat_reply(c, slot, "BATCH -t1");
        return;
    }
    uint32_t ri = channel_name(m->param[1], &name) ? chat_room_find(c, name.p, name.n) : NONE;
    if (ri == NONE) {
        fail_reply(c, slot, "INVALID_TARGET", m->param[1].p, m->param[1].n, "No such channel");
        return;
    }
    args limit_arg = m->param[m->params - 1];
    int limit = 0;
    for (size_t i = 0; i < limit_arg.n && limit_arg.p[i] >= '0' && limit_arg.p[i] <= '9' && limit < 100000; i++)
        limit = limit * 10 + (limit_arg.p[i] - '0');
    if (limit <= 0) {
        fail_reply(c, slot, "INVALID_PARAMS", NULL, 0, "Bad limit");
        return;
    }
    if (limit > CHAT_HISTORY_MAX)
        limit = CHAT_HISTORY_MAX;
    int ok = parse_ref(m->param[2], &r1, at1);
    if (chat_word_is(sub.p, sub.n, "latest")) {
        if (ok)
            chat_query_range(c, slot, ri, &r1, &none, limit, 1);
    } else if (chat_word_is(sub.p, sub.n, "before")) {
        if (ok && (r1.id || r1.at))
            chat_query_range(c, slot, ri, &none, &r1, limit, 1);
        else
            ok = 0;
    } else if (chat_word_is(sub.p, sub.n, "after")) {
        if (ok && (r1.id || r1.at))
            chat_query_range(c, slot, ri, &r1, &none, limit, 0);
        else
            ok = 0;
    } else if (chat_word_is(sub.p, sub.n, "around")) {
        /* two answers: the lines before the reference, then it and those after */
        if (ok && (r1.id || r1.at)) {
            history_bound at_or_after = r1;
            if (at_or_after.id > 0)
                at_or_after.id--;
            chat_query_range(c, slot, ri, &none, &r1, limit / 2, 1);
            chat_query_range(c, slot, ri, &at_or_after, &none, limit - limit / 2, 0);
        } else {
            ok = 0;
        }
    } else if (chat_word_is(sub.p, sub.n, "between") && m->params >= 5) {
        ok = ok && parse_ref(m->param[3], &r2, at2) && (r1.id || r1.at) && (r2.id || r2.at);
        if (ok) {
            if (ref_before(&r1, &r2))
                chat_query_range(c, slot, ri, &r1, &r2, limit, 0);
            else
                chat_query_range(c, slot, ri, &r2, &r1, limit, 1);
        }
    } else {
        fail_reply(c, slot, "INVALID_PARAMS", sub.p, sub.n, "Unknown subcommand");
        return;
    }
    if (!ok)
        fail_reply(c, slot, "INVALID_PARAMS", NULL, 0, "Bad message reference");
}

static void cmd_nick(chat *c, uint32_t slot, const irc_msg *m)
{
    session *s = &c->sessions[slot];
    if (m->params < 1 || m->param[0].n == 0) {
        num(c, slot, "431", ":No nickname given");
        return;
    }
    args n = m->param[0];
    if (s->state == SESSION_UNREGISTERED) {
        if (!chat_name_valid(n.p, n.n)) {
            num_about(c, slot, "432", n.p, n.n, "Erroneous nickname");
            return;
        }
        memcpy(s->irc->want_nick, n.p, n.n);
        s->irc->want_nick[n.n] = '\0';
        s->irc->want_len = (uint8_t)n.n;
        try_register(c, slot);
        return;
    }
    switch (chat_op_nick(c, slot, n.p, n.n)) {
    case CHAT_OK:
    case CHAT_SAME:
        break;   /* the NICK comes back as the event's echo */
    case CHAT_TAKEN:
        num_about(c, slot, "433", n.p, n.n, "Nickname is already in use");
        break;
    default:
        num_about(c, slot, "432", n.p, n.n, "Erroneous nickname");
        break;
    }
}

void irc_input(chat *c, uint32_t slot, const char *line, size_t len, int truncated, int64_t now_ms)
{
    session *s = &c->sessions[slot];
    irc_state *st = s->irc;
    irc_msg m;
    sbuf b;
    char plain[TEXT_MAX_LINE];
    CR_ASSERT(st != NULL);
    st->ping_sent = 0;   /* any line shows the client is alive */
    if (irc_parse(line, len, &m) != 0)
        return;
    /* The hub's cleaning leaves the CTCP delimiter in an IRC client's line for
     * PRIVMSG and NOTICE, whose text take_ctcp reads.  In any other command it
     * would reach others as a control character (a TOPIC, a PART or QUIT
     * reason): it goes, before the line is read. */
    if (!chat_word_is(m.command.p, m.command.n, "privmsg") && !chat_word_is(m.command.p, m.command.n, "notice") &&
        memchr(line, '\1', len)) {
        size_t n = 0;
        for (size_t i = 0; i < len && n < sizeof plain; i++)
            if (line[i] != '\1')
                plain[n++] = line[i];
        line = plain;
        len = n;
        if (irc_parse(line, len, &m) != 0)
            return;
    }
    if (truncated || len > IRC_LINE_MAX + 4096) {
        num(c, slot, "417", ":Input line was too long");
        return;
    }
    const args cmd = m.command;
#define IS(word) chat_word_is(cmd.p, cmd.n, word)
    if (IS("cap")) {
        cmd_cap(c, slot, &m);
    } else if (IS("ping")) {
        sb_open(c, &b);
        sb_puts(&b, ":");
        sb_puts(&b, c->irc_name);
        sb_puts(&b, " PONG ");
        sb_puts(&b, c->irc_name);
        sb_puts(&b, " :");
        if (m.params > 0)
            sb_put_echo(&b, m.param[0].p, m.param[0].n > 64 ? 64 : m.param[0].n);
        chat_reply_built(c, slot, &b);
    } else if (IS("pong")) {
        /* liveness only: ping_sent was cleared above */
    } else if (IS("quit")) {
        args why = m.params > 0 ? m.param[0] : (args){ "", 0 };
        sb_open(c, &b);
        sb_puts(&b, "ERROR :Closing link (");
        sb_put_echo(&b, why.n ? why.p : "quit", why.n ? why.n : 4);
        sb_puts(&b, ")");
        size_t n;
        const char *text = sb_close(c, &b, &n);
        chat_op_quit(c, slot, why.p, why.n, text);
    } else if (IS("nick")) {
        cmd_nick(c, slot, &m);
    } else if (IS("user")) {
        if (s->state != SESSION_UNREGISTERED) {
            num(c, slot, "462", ":You may not reregister");
        } else if (m.params < 4) {
            num(c, slot, "461", "USER :Not enough parameters");
        } else {
            st->has_user = 1;
            try_register(c, slot);
        }
    } else if (IS("pass")) {
        if (s->state != SESSION_UNREGISTERED)
            num(c, slot, "462", ":You may not reregister");
        else if (m.params < 1)
            num(c, slot, "461", "PASS :Not enough parameters");
        else {
            /* checked at registration: the last PASS counts.  All its words are the
             * password: clients such as ii send "PASS two words" without the ':' */
            const args *last = &m.param[m.params - 1];
            size_t n = (size_t)(last->p + last->n - m.param[0].p);
            st->pass_ok = (uint8_t)chat_password_ok(c, m.param[0].p, n);
        }
    } else if (s->state == SESSION_UNREGISTERED) {
        num(c, slot, "451", ":You have not registered");
    } else if (IS("privmsg")) {
        cmd_privmsg(c, slot, &m, 0, now_ms);
    } else if (IS("notice")) {
        cmd_privmsg(c, slot, &m, 1, now_ms);
    } else if (IS("join")) {
        cmd_join(c, slot, &m, now_ms);
    } else if (IS("part")) {
        cmd_part(c, slot, &m, now_ms);
    } else if (IS("names")) {
        args list = m.params > 0 ? m.param[0] : (args){ "", 0 }, item, name;
        while (next_item(&list, &item)) {
            uint32_t ri = channel_name(item, &name) ? chat_room_find(c, name.p, name.n) : NONE;
            if (ri != NONE) {
                names_reply(c, slot, ri);
            } else {
                num_about(c, slot, "366", item.p, item.n, "End of /NAMES list");
            }
        }
    } else if (IS("who")) {
        cmd_who(c, slot, &m);
    } else if (IS("whois")) {
        cmd_whois(c, slot, &m);
    } else if (IS("mode")) {
        cmd_mode(c, slot, &m);
    } else if (IS("list")) {
        cmd_list(c, slot);
    } else if (IS("away")) {
        cmd_away(c, slot, &m);
    } else if (IS("ison")) {
        cmd_ison(c, slot, &m);
    } else if (IS("chathistory")) {
        if (chat_flood_take(c, slot, now_ms))
            cmd_chathistory(c, slot, &m);
    } else if (IS("search")) {
        if (chat_flood_take(c, slot, now_ms))
            cmd_search(c, slot, &m);
    } else if (IS("topic")) {
        cmd_topic(c, slot, &m, now_ms);
    } else if (IS("tagmsg")) {
        /* typing notifications and the like: not relayed */
    } else if (IS("userhost")) {
        cmd_userhost(c, slot, &m);
    } else if (IS("motd")) {
        motd_reply(c, slot);
    } else if (IS("lusers")) {
        lusers_reply(c, slot);
    } else if (IS("version")) {
        cmd_version(c, slot);
    } else if (IS("time")) {
        cmd_time(c, slot);
    } else if (IS("whowas")) {
        cmd_whowas(c, slot, &m);
    } else if (IS("kick")) {
        cmd_kick(c, slot, &m);
    } else {
        num_about(c, slot, "421", cmd.p, cmd.n, "Unknown command");
    }
#undef IS
}

void irc_tick(chat *c, uint32_t slot, int64_t idle_ms)
{
    session *s = &c->sessions[slot];
    irc_state *st = s->irc;
    if (s->state == SESSION_UNREGISTERED) {
        if (idle_ms >= IRC_REGISTER_TIMEOUT_MS)
            chat_close(c, slot, "ERROR :Closing link (registration timed out)",
                       strlen("ERROR :Closing link (registration timed out)"), "registration timeout");
        return;
    }
    int64_t ping_after = c->cfg.irc_ping_ms > 0 ? c->cfg.irc_ping_ms : IRC_PING_AFTER_MS;
    /* ...and cut when still silent twice as long */
    if (idle_ms >= 2 * ping_after && st->ping_sent) {
        chat_close(c, slot, "ERROR :Closing link (ping timeout)", strlen("ERROR :Closing link (ping timeout)"),
                   "ping timeout");
    } else if (idle_ms >= ping_after && !st->ping_sent) {
        sbuf b;
        st->ping_sent = 1;
        sb_open(c, &b);
        sb_puts(&b, "PING :");
        sb_puts(&b, c->irc_name);
        chat_reply_built(c, slot, &b);
    }
}

void irc_flood_refused(chat *c, uint32_t slot, int kicked)
{
    if (kicked) {
        chat_close(c, slot, "ERROR :Closing link (flooding)", strlen("ERROR :Closing link (flooding)"), "flood");
        return;
    }
    sbuf b;
    sb_open(c, &b);
    sb_puts(&b, ":");
    sb_puts(&b, c->irc_name);
    sb_puts(&b, " NOTICE ");
    sb_puts(&b, my_nick(&c->sessions[slot]));
    sb_puts(&b, " :Too fast: message not sent (limit ");
    sb_put_u64(&b, (uint64_t)c->cfg.flood_rate);
    sb_puts(&b, " lines/s, bursts of ");
    sb_put_u64(&b, (uint64_t)c->cfg.flood_burst);
    sb_puts(&b, ")");
    chat_reply_built(c, slot, &b);
}

/* ---- the IRC form of events, notices and history ---- */

static int time_ok(const char *at);

chat_form irc_form(const session *s)
{
    unsigned caps = s->irc ? s->irc->caps : 0;
    if (caps & CAP_MESSAGE_TAGS)
        return caps & CAP_SERVER_TIME ? CHAT_FORM_IRC_TIME_MSGID : CHAT_FORM_IRC_MSGID;
    return caps & CAP_SERVER_TIME ? CHAT_FORM_IRC_TIME : CHAT_FORM_IRC;
}

int irc_echoes(const session *s, const chat_event *ev)
{
    switch (ev->kind) {
    case HISTORY_JOIN:
    case HISTORY_NICK:
    case HISTORY_TOPIC:
        return 1;
    case HISTORY_LEAVE:
        return !ev->quit;   /* a PART comes back; after a QUIT there is no one to tell */
    case HISTORY_SAY:
    case HISTORY_ME:
    case HISTORY_MSG:
        return s->irc && (s->irc->caps & CAP_ECHO);
    default:
        return 0;
    }
}

/* A stored time goes into a tag only if it has the tag's shape: a time
 * edited into something else with the sqlite3 CLI must not break the line. */
static int time_ok(const char *at)
{
    size_t n = 0;
    if (!at)
        return 0;
    for (; at[n] != '\0'; n++)
        if (n >= HISTORY_TIME_LEN || !((at[n] >= '0' && at[n] <= '9') || at[n] == '-' || at[n] == ':' ||
                                       at[n] == 'T' || at[n] == '.' || at[n] == 'Z'))
            return 0;
    return n >= 19;
}


/* One or more "PRIVMSG target :chunk" lines carrying body, each within
 * IRC_LINE_MAX bytes (tags aside), split on character boundaries. */
static void put_text_lines(sbuf *b, const chat *c, const char *tags, size_t tags_len, const char *nick,
                           const char *verb, const char *hash, const char *target, int action,
                           const char *body, size_t body_len, int clean)
{
    sbuf head;
    char head_buf[256];
    sb_init(&head, head_buf, sizeof head_buf);
    put_prefix(&head, c, nick);
    sb_puts(&head, " ");
    sb_puts(&head, verb);
    sb_puts(&head, " ");
    sb_puts(&head, hash);
    sb_puts(&head, target);
    sb_puts(&head, action ? " :\1ACTION " : " :");
    size_t chunk_max = IRC_LINE_MAX - head.len - (action ? 1 : 0);
    do {
        size_t n = body_len <= chunk_max ? body_len : text_utf8_boundary(body, chunk_max);
        if (n == 0 && body_len > 0)
            n = body_len < chunk_max ? body_len : chunk_max;   /* cannot happen with valid UTF-8 */
        sb_put(b, tags, tags_len);
        sb_put(b, head.p, head.len);
        if (clean)
            sb_put_clean(b, body, n);
        else
            sb_put(b, body, n);
        if (action)
            sb_put(b, "\1", 1);
        sb_put(b, "\r\n", 2);
        body += n;
        body_len -= n;
    } while (body_len > 0);
}

/* "[tags]:nick!nick@server VERB [#room] [:text]\r\n" */
static void put_command(sbuf *b, const chat *c, const sbuf *tags, const char *nick, const char *verb,
                        const char *room_name, const char *text, size_t text_len)
{
    sb_put(b, tags->p, tags->len);
    put_prefix(b, c, nick);
    sb_puts(b, " ");
    sb_puts(b, verb);
    if (room_name) {
        sb_puts(b, " #");
        sb_puts(b, room_name);
    }
    if (text) {
        sb_puts(b, " :");
        sb_put(b, text, text_len);
    }
    sb_puts(b, "\r\n");
}

size_t irc_render_event(const chat *c, chat_form form, const chat_event *ev, int echo, const char *at, sbuf *b)
{
    size_t start = b->len;
    char tags[96];
    sbuf t;
    sb_init(&t, tags, sizeof tags);
    int with_time = form == CHAT_FORM_IRC_TIME || form == CHAT_FORM_IRC_TIME_MSGID;
    int with_msgid = (form == CHAT_FORM_IRC_MSGID || form == CHAT_FORM_IRC_TIME_MSGID) && ev->id > 0;
    if (with_time && time_ok(at)) {
        sb_puts(&t, "@time=");
        sb_puts(&t, at);
    }
    if (with_msgid) {
        sb_puts(&t, t.len ? ";msgid=" : "@msgid=");
        sb_put_u64(&t, (uint64_t)ev->id);
    }
    if (t.len)
        sb_puts(&t, " ");
    (void)echo;   /* an IRC client's own copy is the same line (echo-message) */
    const char *rname = ev->room_count > 0 ? ev->rooms[0] : "";
    switch (ev->kind) {
    case HISTORY_SAY:
    case HISTORY_ME:
        put_text_lines(b, c, t.p, t.len, ev->nick, ev->notice ? "NOTICE" : "PRIVMSG", "#", rname,
                       ev->kind == HISTORY_ME, ev->body, ev->body_len, 0);
        break;
    case HISTORY_MSG:
        put_text_lines(b, c, t.p, t.len, ev->nick, ev->notice ? "NOTICE" : "PRIVMSG", "", ev->target, 0,
                       ev->body, ev->body_len, 0);
        break;
    case HISTORY_JOIN:
        put_command(b, c, &t, ev->nick, "JOIN", rname, NULL, 0);
        break;
    case HISTORY_LEAVE:
        if (ev->quit)
            put_command(b, c, &t, ev->nick, "QUIT", NULL, ev->body, chat_cut(ev->body, ev->body_len, 300));
        else
            put_command(b, c, &t, ev->nick, "PART", rname, ev->body, chat_cut(ev->body, ev->body_len, 300));
        break;
    case HISTORY_NICK:
        put_command(b, c, &t, ev->nick, "NICK", NULL, ev->body, ev->body_len);
        break;
    case HISTORY_TOPIC:
        put_command(b, c, &t, ev->nick, "TOPIC", rname, ev->body, ev->body_len);
        break;
    default:
        break;
    }
    if (b->full)   /* never half a line: nothing rather than a cut protocol line */
        b->len = start;
    return b->len - start;
}

size_t irc_render_notice(const chat *c, const session *s, const char *text, size_t len, sbuf *b)
{
    size_t start = b->len;
    if (len >= 4 && memcmp(text, "*** ", 4) == 0)
        text += 4, len -= 4;
    sb_puts(b, ":");
    sb_puts(b, c->irc_name);
    sb_puts(b, " NOTICE ");
    sb_puts(b, my_nick(s));
    sb_puts(b, " :");
    sb_put(b, text, chat_cut(text, len, 400));
    sb_puts(b, "\r\n");
    return b->len - start;
}

size_t irc_render_query_mark(const chat *c, session *s, const char *room_name, const char *words, int end, sbuf *b)
{
    irc_state *st = s->irc;
    size_t start = b->len;
    if (!st)
        return 0;
    if (st->caps & CAP_BATCH) {
        if (!end) {
            st->batch_seq++;
            st->in_batch = 1;
            sb_puts(b, "BATCH +h");
            sb_put_u64(b, st->batch_seq);
            sb_puts(b, words ? " soju.im/search" : " chathistory #");
            if (!words)
                sb_puts(b, room_name);
        } else {
            st->in_batch = 0;
            sb_puts(b, "BATCH -h");
            sb_put_u64(b, st->batch_seq);
        }
        sb_puts(b, "\r\n");
        return b->len - start;
    }
    /* no batch: notices say where the old lines begin and end */
    sb_puts(b, ":");
    sb_puts(b, c->irc_name);
    sb_puts(b, " NOTICE #");
    sb_puts(b, room_name);
    if (words) {
        sb_puts(b, end ? " :End of search results" : " :Search results for: ");
        if (!end)
            sb_put(b, words, chat_cut(words, strlen(words), 200));
    } else {
        sb_puts(b, end ? " :End of replay" : " :Replay of the last lines (history)");
    }
    sb_puts(b, "\r\n");
    return b->len - start;
}

size_t irc_render_history(const chat *c, const session *s, const history_record *rec, sbuf *b)
{
    size_t start = b->len;
    char tags[128];
    sbuf t;
    sb_init(&t, tags, sizeof tags);
    int timed = s->irc && (s->irc->caps & CAP_SERVER_TIME);
    int tagged = timed || (s->irc && (s->irc->in_batch || (s->irc->caps & CAP_MESSAGE_TAGS)));
    if (tagged) {
        /* one tag list: "@batch=h1;msgid=42;time=... " */
        char sep = '@';
        if (s->irc->in_batch) {
            sb_put(&t, &sep, 1);
            sb_puts(&t, "batch=h");
            sb_put_u64(&t, s->irc->batch_seq);
            sep = ';';
        }
        if (s->irc->caps & CAP_MESSAGE_TAGS) {
            sb_put(&t, &sep, 1);
            sb_puts(&t, "msgid=");
            sb_put_u64(&t, (uint64_t)(rec->id > 0 ? rec->id : 0));
            sep = ';';
        }
        if (timed && time_ok(rec->at)) {
            size_t n = 0;
            while (n < HISTORY_TIME_LEN && rec->at[n] != '\0')
                n++;
            sb_put(&t, &sep, 1);
            sb_puts(&t, "time=");
            sb_put_clean(&t, rec->at, n);
        }
        if (t.len > 0)
            sb_puts(&t, " ");
    }
    if (rec->kind != HISTORY_SAY && rec->kind != HISTORY_ME && rec->kind != HISTORY_KIND_NONE)
        return 0;   /* without event-playback only messages are played back */
    char nick[CHAT_NAME_MAX + 1], rname[CHAT_NAME_MAX + 1];
    /* Names from the database may be anything: only a valid name is used as
     * one (a broken one would break the line's syntax). */
    size_t nl = rec->nick ? strlen(rec->nick) : 0, rl = rec->room ? strlen(rec->room) : 0;
    if (!chat_name_valid(rec->nick ? rec->nick : "", nl))
        memcpy(nick, "unknown", 8);
    else
        memcpy(nick, rec->nick, nl + 1);
    if (!chat_name_valid(rec->room ? rec->room : "", rl))
        return 0;
    memcpy(rname, rec->room, rl + 1);
    char body[TEXT_MAX_LINE + 40];
    size_t body_len = 0;
    const char *text = rec->body ? rec->body : "";
    size_t text_len = rec->body ? rec->body_len : 0;
    if (!timed) {
        /* no server-time: the time goes in front of the text */
        sbuf w;
        sb_init(&w, body, sizeof body);
        sb_puts(&w, "[");
        if (rec->at && strlen(rec->at) >= 19) {
            sb_put_clean(&w, rec->at, 10);
            sb_puts(&w, " ");
            sb_put_clean(&w, rec->at + 11, 8);
        }
        sb_puts(&w, "] ");
        sb_put_clean(&w, text, text_len);
        body_len = w.len;
    } else {
        sbuf w;
        sb_init(&w, body, sizeof body);
        sb_put_clean(&w, text, text_len);
        body_len = w.len;
    }
    put_text_lines(b, c, t.p, t.len, nick, "PRIVMSG", "#", rname, rec->kind == HISTORY_ME, body, body_len, 0);
    if (b->full)
        b->len = start;
    return b->len - start;
}

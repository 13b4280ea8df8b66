/* dialect_line: the line protocol of docs/PROTOCOL.md (nc, telnet, PuTTY):
 * what a typed line means (/nick /join /rooms /who /me /msg /history
 * /search /help /quit, case-insensitive, "//text" says "/text", anything
 * else is said to the current room), every text the server writes to such a
 * client, and the line form of events and history rows:
 *   chat "<nick> text", action "* nick text", private "*nick* text",
 *   notices and replies "*** ...", history "*** [YYYY-MM-DD HH:MM:SS] <form above>".
 * A line session is always in exactly one room.
 */
#include "chat_internal.h"

#include <string.h>

#include "invariant.h"

#define CHAT_HISTORY_DEFAULT 20
#define CHAT_LIST_LINE 400u             /* list replies wrap near this many bytes */
/* A /search scans the full-text index: it costs this many lines of the flood
 * bucket (the line itself and the rest, which may leave the bucket below
 * zero: the next lines wait for the refill). */
#define SEARCH_FLOOD_COST 4

typedef void (*command_fn)(chat *c, uint32_t slot, args a);

static uint32_t current_room(const chat *c, uint32_t slot)
{
    uint32_t ri = chat_first_room(c, slot);
    CR_ASSERT(ri != NONE && c->sessions[slot].room_count == 1);
    return ri;
}

/* ---- the line form of events: one text shared by live delivery and history ---- */

/* The form after "*** " (notices) or "*** [time] " (history), or the whole
 * line for say/me/msg, whose body always comes last.  clean: the fields come
 * from the database. */
static void put_event(sbuf *b, history_kind kind, const char *nick, size_t nick_len,
                      const char *room_name, size_t room_len, const char *body, size_t body_len,
                      int clean)
{
    void (*put)(sbuf *, const char *, size_t) = clean ? sb_put_clean : sb_put;
    switch (kind) {
    case HISTORY_SAY:
        sb_put(b, "<", 1);
        put(b, nick, nick_len);
        sb_put(b, "> ", 2);
        put(b, body, body_len);
        break;
    case HISTORY_ME:
        sb_put(b, "* ", 2);
        put(b, nick, nick_len);
        sb_put(b, " ", 1);
        put(b, body, body_len);
        break;
    case HISTORY_MSG:
        sb_put(b, "*", 1);
        put(b, nick, nick_len);
        sb_put(b, "* ", 2);
        put(b, body, body_len);
        break;
    case HISTORY_JOIN:
        put(b, nick, nick_len);
        sb_puts(b, " joined ");
        put(b, room_name, room_len);
        break;
    case HISTORY_LEAVE:
        put(b, nick, nick_len);
        sb_puts(b, " left ");
        put(b, room_name, room_len);
        if (body_len > 0) {
            sb_puts(b, " (");
            put(b, body, body_len);
            sb_puts(b, ")");
        }
        break;
    case HISTORY_NICK:
        put(b, nick, nick_len);
        sb_puts(b, " is now known as ");
        put(b, body, body_len);
        break;
    case HISTORY_TOPIC:
        put(b, nick, nick_len);
        if (body_len > 0) {
            sb_puts(b, " set the topic of ");
            put(b, room_name, room_len);
            sb_puts(b, ": ");
            put(b, body, body_len);
        } else {
            sb_puts(b, " cleared the topic of ");
            put(b, room_name, room_len);
        }
        break;
    case HISTORY_KIND_NONE:
    case HISTORY_KIND_COUNT:
        break;   /* never an event: callers map a foreign row to HISTORY_SAY */
    }
}

size_t line_render_event(const chat_event *ev, uint32_t room_index, int echo, sbuf *b)
{
    const char *rname = room_index < ev->room_count ? ev->rooms[room_index] : "";
    size_t start = b->len;
    switch (ev->kind) {
    case HISTORY_SAY:
    case HISTORY_ME:
        put_event(b, ev->kind, ev->nick, strlen(ev->nick), NULL, 0, ev->body, ev->body_len, 0);
        break;
    case HISTORY_MSG:
        if (echo) {   /* the sender's confirmation */
            sb_puts(b, "*** to ");
            sb_puts(b, ev->target);
            sb_puts(b, ": ");
            sb_put(b, ev->body, ev->body_len);
        } else {
            put_event(b, ev->kind, ev->nick, strlen(ev->nick), NULL, 0, ev->body, ev->body_len, 0);
        }
        break;
    default:
        sb_puts(b, "*** ");
        put_event(b, ev->kind, ev->nick, strlen(ev->nick), rname, strlen(rname), ev->body, ev->body_len, 0);
        break;
    }
    return b->len - start;
}

/* "2026-11-27T03:04:05.123Z" -> "2026-11-27 03:04:05"; 0 if at is not of that shape. */
static int history_time(const char *at, char out[20])
{
    static const char shape[] = "dddd-dd-ddTdd:dd:dd";
    for (size_t i = 0; i < 19; i++) {
        char ch = at[i];
        if (shape[i] == 'd' ? (ch < '0' || ch > '9') : ch != shape[i])
            return 0;
    }
    if (at[19] != '\0' && at[19] != '.' && at[19] != 'Z')
        return 0;
    memcpy(out, at, 19);
    out[10] = ' ';
    out[19] = '\0';
    return 1;
}

size_t line_render_history(const history_record *rec, sbuf *b)
{
    char when[20];
    size_t start = b->len;
    const char *nick = rec->nick ? rec->nick : "";
    const char *room_name = rec->room ? rec->room : "";
    const char *body = rec->body ? rec->body : "";
    sb_puts(b, "*** [");
    if (rec->at && history_time(rec->at, when))
        sb_puts(b, when);
    else if (rec->at)
        sb_put_clean(b, rec->at, strlen(rec->at));
    sb_puts(b, "] ");
    put_event(b, rec->kind == HISTORY_KIND_NONE ? HISTORY_SAY : rec->kind,  /* not ours: shown as said */
              nick, strlen(nick), room_name, strlen(room_name), body, rec->body ? rec->body_len : 0, 1);
    return b->len - start;
}

/* ---- the greeting ---- */

/* "*** Topic of lobby: text", when the room has one. */
static void reply_topic(chat *c, uint32_t slot, uint32_t ri)
{
    const char *topic = chat_topic_of(c, ri);
    sbuf b;
    if (!topic)
        return;
    sb_open(c, &b);
    sb_puts(&b, "*** Topic of ");
    sb_put(&b, c->rooms[ri].name, c->rooms[ri].name_len);
    sb_puts(&b, ": ");
    sb_puts(&b, topic);
    chat_reply_built(c, slot, &b);
}

static void reply_welcome(chat *c, uint32_t slot)
{
    sbuf b;
    sb_open(c, &b);
    sb_puts(&b, "*** Welcome to ");
    sb_puts(&b, c->server_name);
    sb_puts(&b, ".");
    chat_reply_built(c, slot, &b);
}

void line_open_locked(chat *c, uint32_t slot)
{
    reply_welcome(c, slot);
    chat_reply(c, slot, "*** This server needs a password: type /pass PASSWORD.");
}

/* A line client not admitted yet that used up its lines or its time. */
static void close_unadmitted(chat *c, uint32_t slot)
{
    static const char bye[] = "*** No password given; disconnecting.";
    chat_close(c, slot, bye, sizeof bye - 1, "no password");
}

/* A line client not admitted yet (a password is configured): /pass and
 * /quit, nothing else; its lines go nowhere and are not stored. */
static void locked_input(chat *c, uint32_t slot, const char *line, size_t len, int64_t now_ms)
{
    session *s = &c->sessions[slot];
    args rest = { line, len }, word = { NULL, 0 };
    if (len > 0 && line[0] == '/') {
        rest.p++;
        rest.n--;
        word = chat_next_word(&rest);
    }
    if (chat_word_is(word.p, word.n, "quit")) {
        chat_op_quit(c, slot, NULL, 0, "*** Bye.");
        return;
    }
    if (!chat_flood_take(c, slot, now_ms))
        return;
    /* bounded, so that a stranger cannot keep a slot by talking */
    if (++s->locked_lines > CHAT_LOCKED_LINES) {
        close_unadmitted(c, slot);
        return;
    }
    if (!chat_word_is(word.p, word.n, "pass")) {
        chat_reply(c, slot, "*** Type /pass PASSWORD first (or /quit).");
        return;
    }
    while (rest.n > 0 && (rest.p[rest.n - 1] == ' ' || rest.p[rest.n - 1] == '\t'))
        rest.n--;
    if (chat_password_ok(c, rest.p, rest.n)) {
        chat_line_admit(c, slot);
        return;
    }
    if (++s->password_misses >= CHAT_PASSWORD_TRIES) {
        chat_close(c, slot, "*** Wrong password; disconnecting.", strlen("*** Wrong password; disconnecting."),
                   "bad password");
        return;
    }
    chat_reply(c, slot, "*** Wrong password.");
}

void line_tick_locked(chat *c, uint32_t slot, int64_t idle_ms)
{
    if (idle_ms >= CHAT_LOCKED_MS)
        close_unadmitted(c, slot);
}

void line_open(chat *c, uint32_t slot)
{
    const session *s = &c->sessions[slot];
    uint32_t lobby;
    sbuf b;
    if (!chat_password_required(c))
        reply_welcome(c, slot);   /* else line_open_locked said it */
    sb_open(c, &b);
    sb_puts(&b, "*** Your nick is ");
    sb_put(&b, s->nick, s->nick_len);
    sb_puts(&b, "; change it with /nick NAME.");
    chat_reply_built(c, slot, &b);
    if (chat_op_join(c, slot, CHAT_LOBBY_NAME, strlen(CHAT_LOBBY_NAME), &lobby) != CHAT_OK) {
        chat_close(c, slot, "*** The server is out of memory.", strlen("*** The server is out of memory."),
                   "out of memory");
        return;
    }
    sb_open(c, &b);
    sb_puts(&b, "*** You are in ");
    sb_put(&b, c->rooms[lobby].name, c->rooms[lobby].name_len);
    sb_puts(&b, " (");
    sb_put_u64(&b, c->rooms[lobby].members);
    sb_puts(&b, " here).");
    chat_reply_built(c, slot, &b);
    reply_topic(c, slot, lobby);
    chat_reply(c, slot, "*** Type /help for the commands.");
    if (c->cfg.replay > 0)
        chat_query_on_join(c, slot, lobby, c->cfg.replay, 0);
}

void line_flood_refused(chat *c, uint32_t slot, int kicked)
{
    const session *s = &c->sessions[slot];
    sbuf b;
    sb_open(c, &b);
    if (kicked) {
        sb_puts(&b, "*** Disconnected for flooding: ");
        sb_put_u64(&b, s->flood_refused);
        sb_puts(&b, " lines in a row were over the limit.");
        size_t len;
        const char *text = sb_close(c, &b, &len);
        chat_close(c, slot, text, len, "flood");
        return;
    }
    sb_puts(&b, "*** Too fast: line not sent (limit ");
    sb_put_u64(&b, (uint64_t)c->cfg.flood_rate);
    sb_puts(&b, " lines/s, bursts of ");
    sb_put_u64(&b, (uint64_t)c->cfg.flood_burst);
    sb_puts(&b, ").");
    chat_reply_built(c, slot, &b);
}

/* ---- commands ---- */

static void cmd_help(chat *c, uint32_t slot, args a)
{
    static const char *const lines[] = {
        "*** Commands (the command word is case-insensitive):",
        "*** /nick NAME      change your nick (1-32 letters, digits, _ or -)",
        "*** /join ROOM      leave this room for ROOM (created if new)",
        "*** /rooms          list the rooms and how many are in each",
        "*** /who            list who is in your room",
        "*** /me ACTION      send an action: * yournick ACTION",
        "*** /msg NICK TEXT  send TEXT to NICK only",
        "*** /history [N]    show the last N lines of this room (default 20, at most 200)",
        "*** /search WORDS   show up to 20 lines of this room containing WORDS",
        "*** /topic [TEXT]   show this room's topic, or set it (/topic - clears it)",
        "*** /help           this list",
        "*** /quit [REASON]  leave the server",
        "*** Any other line is said to your room; start it with // to say a line beginning with /.",
    };
    (void)a;
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++)
        chat_reply(c, slot, lines[i]);
}

static void bad_name(chat *c, uint32_t slot, const char *what, args name)
{
    sbuf b;
    sb_open(c, &b);
    sb_puts(&b, "*** Invalid ");
    sb_puts(&b, what);
    sb_puts(&b, " \"");
    sb_put_echo(&b, name.p, name.n);
    sb_puts(&b, "\": use 1-32 letters, digits, _ or -.");
    chat_reply_built(c, slot, &b);
}

static void cmd_nick(chat *c, uint32_t slot, args a)
{
    const session *s = &c->sessions[slot];
    sbuf b;
    if (a.n == 0) {
        chat_reply(c, slot, "*** Usage: /nick NAME (1-32 letters, digits, _ or -)");
        return;
    }
    switch (chat_op_nick(c, slot, a.p, a.n)) {
    case CHAT_OK:
        break;   /* announced to the room, the sender included: that is the confirmation */
    case CHAT_INVALID_NAME:
        bad_name(c, slot, "nick", a);
        break;
    case CHAT_TAKEN: {
        uint32_t holder = chat_nick_find(c, a.p, a.n);
        sb_open(c, &b);
        sb_puts(&b, "*** The nick ");
        sb_put(&b, c->sessions[holder].nick, c->sessions[holder].nick_len);
        sb_puts(&b, " is taken.");
        chat_reply_built(c, slot, &b);
        break;
    }
    default:
        sb_open(c, &b);
        sb_puts(&b, "*** You are already ");
        sb_put(&b, s->nick, s->nick_len);
        sb_puts(&b, ".");
        chat_reply_built(c, slot, &b);
        break;
    }
}

static void cmd_join(chat *c, uint32_t slot, args a)
{
    uint32_t old = current_room(c, slot), target;
    sbuf b;
    if (a.n == 0) {
        chat_reply(c, slot, "*** Usage: /join ROOM (1-32 letters, digits, _ or -)");
        return;
    }
    if (!chat_name_valid(a.p, a.n)) {
        bad_name(c, slot, "room name", a);
        return;
    }
    target = chat_room_find(c, a.p, a.n);
    if (target == old) {
        sb_open(c, &b);
        sb_puts(&b, "*** You are already in ");
        sb_put(&b, c->rooms[target].name, c->rooms[target].name_len);
        sb_puts(&b, ".");
        chat_reply_built(c, slot, &b);
        return;
    }
    /* A line client is in one room: it leaves the old one for the new,
     * whose name (as it will be spelled) is the leave's reason. */
    char reason[CHAT_NAME_MAX + 8];
    const char *spelled = target != NONE ? c->rooms[target].name : NULL;
    size_t spelled_len = target != NONE ? c->rooms[target].name_len : a.n;
    memcpy(reason, "joined ", 7);
    memcpy(reason + 7, spelled ? spelled : a.p, spelled_len);
    (void)chat_op_part(c, slot, old, reason, 7 + spelled_len);
    if (chat_op_join(c, slot, a.p, a.n, &target) != CHAT_OK) {
        /* out of memory: back where it was, which cannot need memory */
        (void)chat_op_join(c, slot, CHAT_LOBBY_NAME, strlen(CHAT_LOBBY_NAME), &target);
        chat_reply(c, slot, "*** No room can be created right now.");
        return;
    }
    const room *r = &c->rooms[target];
    sb_open(c, &b);
    sb_puts(&b, "*** You are now in ");
    sb_put(&b, r->name, r->name_len);
    sb_puts(&b, " (");
    sb_put_u64(&b, r->members);
    sb_puts(&b, " here).");
    chat_reply_built(c, slot, &b);
    reply_topic(c, slot, target);
    if (c->cfg.replay > 0)
        chat_query_on_join(c, slot, target, c->cfg.replay, 0);
}

/* Packs "a, b, c" lists into reply lines of about CHAT_LIST_LINE bytes. */
typedef struct lister {
    chat *c;
    uint32_t slot;
    sbuf b;
    size_t items;   /* in the current line */
} lister;

static void lister_item(lister *l, const char *s, size_t n, uint32_t count, int with_count)
{
    if (l->items > 0 && l->b.len + n + 16 > CHAT_LIST_LINE) {
        chat_reply_built(l->c, l->slot, &l->b);
        sb_open(l->c, &l->b);
        sb_puts(&l->b, "***   ");
        l->items = 0;
    } else if (l->items > 0) {
        sb_puts(&l->b, ", ");
    }
    sb_put(&l->b, s, n);
    if (with_count) {
        sb_puts(&l->b, " (");
        sb_put_u64(&l->b, count);
        sb_puts(&l->b, ")");
    }
    l->items++;
}

static void lister_end(lister *l, uint64_t not_shown, const char *what)
{
    if (not_shown > 0) {
        sb_puts(&l->b, " and ");
        sb_put_u64(&l->b, not_shown);
        sb_puts(&l->b, " more ");
        sb_puts(&l->b, what);
    }
    sb_puts(&l->b, ".");
    chat_reply_built(l->c, l->slot, &l->b);
}

static void cmd_rooms(chat *c, uint32_t slot, args a)
{
    lister l;
    uint32_t shown = 0;
    (void)a;
    l.c = c;
    l.slot = slot;
    l.items = 0;
    sb_open(c, &l.b);
    sb_puts(&l.b, "*** ");
    sb_put_u64(&l.b, c->room_count);
    sb_puts(&l.b, c->room_count == 1 ? " room: " : " rooms: ");
    for (uint32_t i = c->room_first; i != NONE && shown < CHAT_LIST_SHOWN; i = c->rooms[i].next, shown++)
        lister_item(&l, c->rooms[i].name, c->rooms[i].name_len, c->rooms[i].members, 1);
    lister_end(&l, c->room_count - shown, "rooms");
}

static void cmd_who(chat *c, uint32_t slot, args a)
{
    const room *r = &c->rooms[current_room(c, slot)];
    lister l;
    uint32_t shown = 0;
    (void)a;
    l.c = c;
    l.slot = slot;
    l.items = 0;
    sb_open(c, &l.b);
    sb_puts(&l.b, "*** In ");
    sb_put(&l.b, r->name, r->name_len);
    sb_puts(&l.b, " (");
    sb_put_u64(&l.b, r->members);
    sb_puts(&l.b, "): ");
    for (uint32_t m = r->head; m != NONE && shown < CHAT_LIST_SHOWN; m = c->members[m].room_next, shown++) {
        const session *s = &c->sessions[c->members[m].slot];
        lister_item(&l, s->nick, s->nick_len, 0, 0);
    }
    lister_end(&l, r->members - shown, "people");
}

static void cmd_me(chat *c, uint32_t slot, args a)
{
    if (a.n == 0) {
        chat_reply(c, slot, "*** Usage: /me ACTION");
        return;
    }
    (void)chat_op_say(c, slot, current_room(c, slot), HISTORY_ME, 0, a.p, a.n);
}

static void cmd_msg(chat *c, uint32_t slot, args a)
{
    args name = chat_next_word(&a);
    uint32_t to;
    sbuf b;
    if (name.n == 0 || a.n == 0) {
        chat_reply(c, slot, "*** Usage: /msg NICK TEXT");
        return;
    }
    switch (chat_op_msg(c, slot, name.p, name.n, 0, a.p, a.n, &to)) {
    case CHAT_OK:
        break;   /* "*** to bob: text" follows the message, once it went out */
    case CHAT_SELF:
        chat_reply(c, slot, "*** That is you: /msg sends to someone else.");
        break;
    default:
        sb_open(c, &b);
        sb_puts(&b, "*** No such nick: ");
        sb_put_echo(&b, name.p, name.n);
        sb_puts(&b, ".");
        chat_reply_built(c, slot, &b);
        break;
    }
}

static void cmd_history(chat *c, uint32_t slot, args a)
{
    int limit = CHAT_HISTORY_DEFAULT;
    if (a.n > 0) {
        size_t i;
        long v = 0;
        for (i = 0; i < a.n; i++) {
            if (a.p[i] < '0' || a.p[i] > '9')
                break;
            v = v * 10 + (a.p[i] - '0');
            if (v > CHAT_HISTORY_MAX)
                v = CHAT_HISTORY_MAX + 1;   /* saturate: any larger N is capped below */
        }
        if (i < a.n || v == 0) {
            chat_reply(c, slot, "*** Usage: /history [N] (N from 1 to 200, default 20)");
            return;
        }
        limit = v > CHAT_HISTORY_MAX ? CHAT_HISTORY_MAX : (int)v;
    }
    chat_query(c, slot, current_room(c, slot), NULL, 0, limit);
}

static void cmd_search(chat *c, uint32_t slot, args a)
{
    if (a.n == 0) {
        chat_reply(c, slot, "*** Usage: /search WORDS");
        return;
    }
    chat_flood_charge(c, slot, SEARCH_FLOOD_COST - 1);
    chat_query(c, slot, current_room(c, slot), a.p, a.n, CHAT_SEARCH_MAX);
}

static void cmd_topic(chat *c, uint32_t slot, args a)
{
    uint32_t ri = current_room(c, slot);
    if (a.n == 0) {
        if (chat_topic_of(c, ri)) {
            reply_topic(c, slot, ri);
        } else {
            sbuf b;
            sb_open(c, &b);
            sb_puts(&b, "*** ");
            sb_put(&b, c->rooms[ri].name, c->rooms[ri].name_len);
            sb_puts(&b, " has no topic; set one with /topic TEXT.");
            chat_reply_built(c, slot, &b);
        }
        return;
    }
    if (a.n == 1 && a.p[0] == '-')
        a.n = 0;   /* "/topic -" clears it */
    if (chat_op_topic(c, slot, ri, a.p, a.n) != CHAT_OK)
        chat_reply(c, slot, "*** The topic cannot be changed right now.");
}

static void cmd_quit(chat *c, uint32_t slot, args a)
{
    chat_op_quit(c, slot, a.p, a.n, "*** Bye.");
}

static const struct command {
    const char *name;   /* lower case */
    command_fn run;
} commands[] = {
    {"nick", cmd_nick},     {"join", cmd_join}, {"rooms", cmd_rooms}, {"who", cmd_who},
    {"me", cmd_me},         {"msg", cmd_msg},   {"history", cmd_history},
    {"search", cmd_search}, {"help", cmd_help}, {"quit", cmd_quit}, {"topic", cmd_topic},
};

static const struct command *command_lookup(const char *word, size_t n)
{
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (chat_word_is(word, n, commands[i].name))
            return &commands[i];
    return NULL;
}

void line_input(chat *c, uint32_t slot, const char *line, size_t len, int truncated, int64_t now_ms)
{
    args word = { NULL, 0 }, rest = { NULL, 0 };
    const struct command *cmd = NULL;
    if (c->sessions[slot].state == SESSION_UNREGISTERED) {
        locked_input(c, slot, line, len, now_ms);
        return;
    }
    int is_command = line[0] == '/' && !(len >= 2 && line[1] == '/');
    if (is_command) {
        /* "/word args", args without surrounding blanks */
        rest.p = line + 1;
        rest.n = len - 1;
        word = chat_next_word(&rest);
        while (rest.n > 0 && (rest.p[rest.n - 1] == ' ' || rest.p[rest.n - 1] == '\t'))
            rest.n--;
        cmd = command_lookup(word.p, word.n);
    }
    /* /quit costs nothing, so a flooded client can still leave cleanly. */
    if (!(cmd && cmd->run == cmd_quit) && !chat_flood_take(c, slot, now_ms))
        return;
    if (truncated) {
        sbuf b;
        sb_open(c, &b);
        sb_puts(&b, "*** Your line was too long: it was cut at ");
        sb_put_u64(&b, TEXT_MAX_LINE);
        sb_puts(&b, " bytes.");
        chat_reply_built(c, slot, &b);
    }
    if (!is_command) {
        if (line[0] == '/')
            (void)chat_op_say(c, slot, current_room(c, slot), HISTORY_SAY, 0, line + 1, len - 1);
        else
            (void)chat_op_say(c, slot, current_room(c, slot), HISTORY_SAY, 0, line, len);
    } else if (cmd) {
        cmd->run(c, slot, rest);
    } else {
        sbuf b;
        sb_open(c, &b);
        sb_puts(&b, "*** Unknown command /");
        sb_put_echo(&b, word.p, word.n);
        sb_puts(&b, "; type /help for the list.");
        chat_reply_built(c, slot, &b);
    }
}

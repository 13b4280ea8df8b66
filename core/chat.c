/* chat: nicks, rooms, commands and flood control, turned into effects.
 * The wire forms and every user-visible rule are documented in docs/PROTOCOL.md;
 * keep the two in step.
 *
 * Memory: everything is allocated in chat_create (sessions, rooms, hash
 * buckets, the effect list and its string arena), so a line costs no
 * allocation.  Each public call resets the arena and the effect list; every
 * string an effect points to lives in the arena or is a constant.
 *
 * Hot path (a plain chat line): bucket arithmetic, two name copies and one
 * "<nick> text" copy; no scan of sessions or rooms.
 *
 * One exception to "valid until the next call": a CHAT_CLOSE effect's reason
 * stays valid until chat_session_close for that slot, because the hub keeps it
 * and hands it back there (it is a constant, or the session's own copy of
 * "quit: <message>", allocated once at /quit).
 */
#include "chat.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "text.h"

#define CHAT_LINE_MAX TEXT_MAX_LINE
#define CHAT_ARENA_BYTES (32u * 1024u)  /* worst single call (/msg, /who) needs under 8 KiB */
#define CHAT_EFFECTS_MAX 48u            /* worst single call (/help on a cut line) needs 13 */
#define CHAT_LIST_SHOWN 100u            /* /who and /rooms name at most this many entries */
#define CHAT_LIST_LINE 400u             /* list replies wrap near this many bytes */
#define CHAT_REASON_MAX 200u            /* a /quit reason is cut here (it is logged and stored) */
#define CHAT_ECHO_MAX 32u               /* bad input quoted back in an error is cut here */
#define CHAT_SERVER_NAME_MAX 64u
#define CHAT_HISTORY_DEFAULT 20
#define CHAT_LOBBY_NAME "lobby"
#define CHAT_LOBBY 0u                   /* rooms[0] is the lobby, which never goes away */
#define NONE UINT32_MAX
#define TOKEN 1000                      /* flood buckets count thousandths of a line */
/* A /search scans the full-text index: it costs this many lines of the flood
 * bucket (the line itself and the rest, which may leave the bucket below
 * zero: the next lines wait for the refill). */
#define SEARCH_FLOOD_COST 4

enum { SESSION_FREE = 0, SESSION_LIVE, SESSION_CLOSING };

typedef struct session {
    uint8_t state;
    uint8_t nick_len;
    char nick[CHAT_NAME_MAX + 1];
    uint32_t conn_id;
    uint32_t room;
    uint32_t room_prev, room_next;   /* members of the room, in joining order */
    uint32_t nick_next;              /* nick hash chain */
    uint32_t flood_refused;          /* lines refused since the last accepted one */
    int64_t flood_tokens;            /* in 1/TOKEN lines */
    int64_t flood_last_ms;
    char *quit_reason;               /* "quit: <message>", from /quit until chat_session_close */
} session;

typedef struct room {
    uint8_t name_len;
    uint8_t live;
    char name[CHAT_NAME_MAX + 1];
    uint32_t members;
    uint32_t head, tail;             /* member sessions */
    uint32_t hash_next;              /* room hash chain */
    uint32_t prev, next;             /* live rooms in creation order; free list uses next */
} room;

struct chat {
    chat_config cfg;
    char server_name[CHAT_SERVER_NAME_MAX + 1];
    uint32_t max_slots;
    session *sessions;               /* max_slots */
    room *rooms;                     /* max_slots + 1: every non-lobby room has a member */
    uint32_t room_free;
    uint32_t room_first, room_last;
    uint32_t room_count;
    uint32_t *nick_buckets;
    uint32_t *room_buckets;
    uint32_t bucket_mask;
    uint64_t hash_seed;
    size_t effect_count;
    chat_effect effects[CHAT_EFFECTS_MAX];
    chat_effect overflow_effect;     /* absorbs effects past the bound (never expected) */
    size_t arena_used;
    char arena[CHAT_ARENA_BYTES];
};

/* ---- small text helpers (names are ASCII by construction) ---- */

static int is_blank_char(char ch)
{
    return ch == ' ' || ch == '\t';
}

static char ascii_lower(char ch)
{
    return (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
}

static int name_char_ok(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '_' || ch == '-';
}

static int name_valid(const char *s, size_t n)
{
    size_t i;
    if (n < 1 || n > CHAT_NAME_MAX)
        return 0;
    for (i = 0; i < n; i++)
        if (!name_char_ok(s[i]))
            return 0;
    return 1;
}

static int name_equal_nocase(const char *a, size_t an, const char *b, size_t bn)
{
    size_t i;
    if (an != bn)
        return 0;
    for (i = 0; i < an; i++)
        if (ascii_lower(a[i]) != ascii_lower(b[i]))
            return 0;
    return 1;
}

static int word_equal_nocase(const char *w, size_t wn, const char *lower)
{
    size_t i;
    for (i = 0; i < wn; i++)
        if (lower[i] == '\0' || ascii_lower(w[i]) != lower[i])
            return 0;
    return lower[wn] == '\0';
}

/* s[0..len) cut to at most max bytes, never inside a character. */
static size_t cut_to(const char *s, size_t len, size_t max)
{
    return len <= max ? len : text_utf8_boundary(s, max);
}

/* Seeded so that nicks chosen to collide on one build do not collide on another run. */
static uint32_t name_hash(const chat *c, const char *s, size_t n)
{
    uint64_t h = c->hash_seed ^ 0xcbf29ce484222325ull;
    size_t i;
    for (i = 0; i < n; i++) {
        h ^= (unsigned char)ascii_lower(s[i]);
        h *= 0x100000001b3ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return (uint32_t)h;
}

/* ---- string builder: into the arena, or into a caller's buffer ---- */

typedef struct sbuf {
    char *p;
    size_t len, cap;   /* cap excludes the terminating NUL */
    int full;          /* something did not fit: later puts are dropped so the text stays a prefix */
} sbuf;

static void sb_open(chat *c, sbuf *b)
{
    if (c->arena_used >= CHAT_ARENA_BYTES - 1) {
        b->p = c->arena + CHAT_ARENA_BYTES - 1;
        b->cap = 0;
    } else {
        b->p = c->arena + c->arena_used;
        b->cap = CHAT_ARENA_BYTES - c->arena_used - 1;
    }
    b->len = 0;
    b->full = 0;
}

/* NUL-terminates and keeps the text in the arena; returns its start. */
static const char *sb_close(chat *c, sbuf *b, size_t *len)
{
    b->p[b->len] = '\0';
    c->arena_used += b->len + 1;
    if (c->arena_used > CHAT_ARENA_BYTES)
        c->arena_used = CHAT_ARENA_BYTES;
    if (len)
        *len = b->len;
    return b->p;
}

/* s is valid UTF-8: a cut lands on a character boundary. */
static void sb_put(sbuf *b, const char *s, size_t n)
{
    if (b->full)
        return;
    if (n > b->cap - b->len) {
        n = cut_to(s, n, b->cap - b->len);
        b->full = 1;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void sb_puts(sbuf *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

/* Decimal digits of v into out (at least 20 bytes, not NUL-terminated); returns the count. */
static size_t format_u64(char *out, uint64_t v)
{
    char digits[20];
    size_t n = sizeof digits;
    do {
        digits[--n] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    memcpy(out, digits + n, sizeof digits - n);
    return sizeof digits - n;
}

static void sb_put_u64(sbuf *b, uint64_t v)
{
    char digits[20];
    sb_put(b, digits, format_u64(digits, v));
}

/* Untrusted text quoted in an error: at most CHAT_ECHO_MAX bytes, then "...". */
static void sb_put_echo(sbuf *b, const char *s, size_t n)
{
    if (n > CHAT_ECHO_MAX) {
        sb_put(b, s, cut_to(s, n, CHAT_ECHO_MAX));
        sb_puts(b, "...");
    } else {
        sb_put(b, s, n);
    }
}

/* Text read back from the database, which anyone may edit with the sqlite3
 * CLI, goes through text_clean again, so history never carries terminal
 * escapes or ill-formed UTF-8 to a client. */
static void sb_put_clean(sbuf *b, const char *s, size_t n)
{
    int cut = 0;
    if (b->full)
        return;
    /* b->p[b->cap] is reserved for the NUL, which text_clean writes too. */
    b->len += text_clean(s, n, b->p + b->len, b->cap - b->len + 1, &cut);
    if (cut)
        b->full = 1;
}

/* ---- effects ---- */

static void effects_reset(chat *c)
{
    c->effect_count = 0;
    c->arena_used = 0;
}

static chat_effect *effect_add(chat *c, chat_effect_kind kind, uint32_t slot)
{
    chat_effect *e = c->effect_count < CHAT_EFFECTS_MAX ? &c->effects[c->effect_count++]
                                                        : &c->overflow_effect;
    memset(e, 0, sizeof *e);
    e->kind = kind;
    e->slot = slot;
    e->to_slot = NONE;
    e->except_slot = NONE;
    return e;
}

static const char *arena_copy(chat *c, const char *s, size_t n)
{
    sbuf b;
    sb_open(c, &b);
    sb_put(&b, s, n);
    return sb_close(c, &b, NULL);
}

static void reply_const(chat *c, uint32_t slot, const char *text)
{
    chat_effect *e = effect_add(c, CHAT_REPLY, slot);
    e->text = text;
    e->text_len = strlen(text);
}

static void reply_built(chat *c, uint32_t slot, sbuf *b)
{
    chat_effect *e = effect_add(c, CHAT_REPLY, slot);
    e->text = sb_close(c, b, &e->text_len);
}

/* ---- the name tables ---- */

static uint32_t nick_find(const chat *c, const char *s, size_t n)
{
    uint32_t i = c->nick_buckets[name_hash(c, s, n) & c->bucket_mask];
    while (i != NONE) {
        const session *ss = &c->sessions[i];
        if (name_equal_nocase(ss->nick, ss->nick_len, s, n))
            return i;
        i = ss->nick_next;
    }
    return NONE;
}

static void nick_link(chat *c, uint32_t slot)
{
    session *s = &c->sessions[slot];
    uint32_t *bucket = &c->nick_buckets[name_hash(c, s->nick, s->nick_len) & c->bucket_mask];
    s->nick_next = *bucket;
    *bucket = slot;
}

static void nick_unlink(chat *c, uint32_t slot)
{
    session *s = &c->sessions[slot];
    uint32_t *link = &c->nick_buckets[name_hash(c, s->nick, s->nick_len) & c->bucket_mask];
    while (*link != NONE) {
        if (*link == slot) {
            *link = s->nick_next;
            break;
        }
        link = &c->sessions[*link].nick_next;
    }
    s->nick_next = NONE;
}

static void nick_set(session *s, const char *name, size_t n)
{
    memcpy(s->nick, name, n);
    s->nick[n] = '\0';
    s->nick_len = (uint8_t)n;
}

static uint32_t room_find(const chat *c, const char *s, size_t n)
{
    uint32_t i = c->room_buckets[name_hash(c, s, n) & c->bucket_mask];
    while (i != NONE) {
        const room *r = &c->rooms[i];
        if (name_equal_nocase(r->name, r->name_len, s, n))
            return i;
        i = r->hash_next;
    }
    return NONE;
}

static uint32_t room_create(chat *c, const char *name, size_t n)
{
    uint32_t i = c->room_free;
    room *r;
    uint32_t *bucket;
    if (i == NONE)
        return NONE;
    r = &c->rooms[i];
    c->room_free = r->next;
    memcpy(r->name, name, n);
    r->name[n] = '\0';
    r->name_len = (uint8_t)n;
    r->live = 1;
    r->members = 0;
    r->head = r->tail = NONE;
    bucket = &c->room_buckets[name_hash(c, name, n) & c->bucket_mask];
    r->hash_next = *bucket;
    *bucket = i;
    r->prev = c->room_last;
    r->next = NONE;
    if (c->room_last != NONE)
        c->rooms[c->room_last].next = i;
    else
        c->room_first = i;
    c->room_last = i;
    c->room_count++;
    return i;
}

static void room_destroy(chat *c, uint32_t i)
{
    room *r = &c->rooms[i];
    uint32_t *link = &c->room_buckets[name_hash(c, r->name, r->name_len) & c->bucket_mask];
    while (*link != NONE) {
        if (*link == i) {
            *link = r->hash_next;
            break;
        }
        link = &c->rooms[*link].hash_next;
    }
    if (r->prev != NONE)
        c->rooms[r->prev].next = r->next;
    else
        c->room_first = r->next;
    if (r->next != NONE)
        c->rooms[r->next].prev = r->prev;
    else
        c->room_last = r->prev;
    r->live = 0;
    r->name[0] = '\0';
    r->name_len = 0;
    r->next = c->room_free;
    c->room_free = i;
    c->room_count--;
}

static void member_add(chat *c, uint32_t slot, uint32_t ri)
{
    session *s = &c->sessions[slot];
    room *r = &c->rooms[ri];
    s->room = ri;
    s->room_prev = r->tail;
    s->room_next = NONE;
    if (r->tail != NONE)
        c->sessions[r->tail].room_next = slot;
    else
        r->head = slot;
    r->tail = slot;
    r->members++;
}

/* Rooms other than the lobby disappear with their last member. */
static void member_remove(chat *c, uint32_t slot)
{
    session *s = &c->sessions[slot];
    uint32_t ri = s->room;
    room *r = &c->rooms[ri];
    if (s->room_prev != NONE)
        c->sessions[s->room_prev].room_next = s->room_next;
    else
        r->head = s->room_next;
    if (s->room_next != NONE)
        c->sessions[s->room_next].room_prev = s->room_prev;
    else
        r->tail = s->room_prev;
    s->room_prev = s->room_next = NONE;
    s->room = NONE;
    r->members--;
    if (r->members == 0 && ri != CHAT_LOBBY)
        room_destroy(c, ri);
}

/* ---- room events: one text form shared by live delivery and history ---- */

/* What a room line is: the record kind it is stored as (history.h). */
typedef history_kind event;

/* The form after "*** " (notices) or "*** [time] " (history), or the whole
 * line for say/me/msg, whose body always comes last.  clean: the fields come
 * from the database. */
static void put_event(sbuf *b, event ev, const char *nick, size_t nick_len,
                      const char *room_name, size_t room_len, const char *body, size_t body_len,
                      int clean)
{
    void (*put)(sbuf *, const char *, size_t) = clean ? sb_put_clean : sb_put;
    switch (ev) {
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
    case HISTORY_KIND_NONE:
    case HISTORY_KIND_COUNT:
        break;   /* never an event: callers map a foreign row to HISTORY_SAY */
    }
}

/* A stored notice (join/leave/nick) to the room; text "*** <form>". */
static chat_effect *room_notice(chat *c, uint32_t slot, uint32_t except, event ev,
                                const session *s, const char *room_name, size_t room_len,
                                const char *body, size_t body_len)
{
    chat_effect *e;
    const char *nick = arena_copy(c, s->nick, s->nick_len);
    const char *rname = arena_copy(c, room_name, room_len);
    const char *stored_body = arena_copy(c, body, body_len);
    sbuf b;
    sb_open(c, &b);
    sb_puts(&b, "*** ");
    put_event(&b, ev, s->nick, s->nick_len, room_name, room_len, body, body_len, 0);
    e = effect_add(c, CHAT_ROOM, slot);
    e->text = sb_close(c, &b, &e->text_len);
    e->except_slot = except;
    e->record_kind = ev;
    e->room = rname;
    e->nick = nick;
    e->body = stored_body;
    e->body_len = body_len;
    return e;
}

static void history_effect(chat *c, uint32_t slot, const room *r, int limit)
{
    chat_effect *e;
    const char *rname = arena_copy(c, r->name, r->name_len);
    e = effect_add(c, CHAT_HISTORY, slot);
    e->room = rname;
    e->limit = limit;
}

/* Removes the session from its room and the nick table, frees the slot and
 * announces the leave. */
static void session_detach(chat *c, uint32_t slot, const char *reason, size_t reason_len)
{
    session *s = &c->sessions[slot];
    const room *r = &c->rooms[s->room];
    char room_name[CHAT_NAME_MAX + 1];
    size_t room_len = r->name_len;
    memcpy(room_name, r->name, room_len + 1);
    nick_unlink(c, slot);
    member_remove(c, slot);
    /* The slot is already out of the room, so nobody needs excepting; naming it
     * would hide the line from a new session reusing the slot before delivery. */
    room_notice(c, slot, NONE, HISTORY_LEAVE, s, room_name, room_len, reason, reason_len);
    s->state = SESSION_FREE;
    s->nick_len = 0;
    s->nick[0] = '\0';
    free(s->quit_reason);
    s->quit_reason = NULL;
}

/* ---- flood control ---- */

static int flood_enabled(const chat *c)
{
    return c->cfg.flood_burst > 0 && c->cfg.flood_rate > 0;
}

static void flood_refill(const chat *c, session *s, int64_t now_ms)
{
    int64_t full = (int64_t)c->cfg.flood_burst * TOKEN;
    int64_t rate = c->cfg.flood_rate;   /* lines/s == tokens per ms */
    if (now_ms > s->flood_last_ms) {
        uint64_t elapsed = (uint64_t)now_ms - (uint64_t)s->flood_last_ms;
        if (elapsed >= (uint64_t)(full / rate) + 1)
            s->flood_tokens = full;
        else {
            s->flood_tokens += (int64_t)elapsed * rate;
            if (s->flood_tokens > full)
                s->flood_tokens = full;
        }
    }
    /* A clock that goes backwards just restarts the refill from now. */
    s->flood_last_ms = now_ms;
}

/* 1 if the line may go through (a token was spent), 0 if it is refused. */
static int flood_take(chat *c, session *s, int64_t now_ms)
{
    if (!flood_enabled(c))
        return 1;
    flood_refill(c, s, now_ms);
    if (s->flood_tokens >= TOKEN) {
        s->flood_tokens -= TOKEN;
        s->flood_refused = 0;
        return 1;
    }
    return 0;
}

static void flood_refuse(chat *c, uint32_t slot)
{
    session *s = &c->sessions[slot];
    sbuf b;
    if (s->flood_refused < UINT32_MAX)
        s->flood_refused++;
    if (c->cfg.flood_kick > 0 && s->flood_refused >= (uint32_t)c->cfg.flood_kick) {
        chat_effect *e;
        sb_open(c, &b);
        sb_puts(&b, "*** Disconnected for flooding: ");
        sb_put_u64(&b, s->flood_refused);
        sb_puts(&b, " lines in a row were over the limit.");
        e = effect_add(c, CHAT_CLOSE, slot);
        e->text = sb_close(c, &b, &e->text_len);
        e->reason = "flood";
        s->state = SESSION_CLOSING;
        return;
    }
    sb_open(c, &b);
    sb_puts(&b, "*** Too fast: line not sent (limit ");
    sb_put_u64(&b, (uint64_t)c->cfg.flood_rate);
    sb_puts(&b, " lines/s, bursts of ");
    sb_put_u64(&b, (uint64_t)c->cfg.flood_burst);
    sb_puts(&b, ").");
    reply_built(c, slot, &b);
}

/* ---- commands ---- */

typedef struct args {
    const char *p;
    size_t n;
} args;

typedef void (*command_fn)(chat *c, uint32_t slot, args a);

static args next_word(args *a)
{
    args w;
    size_t i = 0;
    while (i < a->n && !is_blank_char(a->p[i]))
        i++;
    w.p = a->p;
    w.n = i;
    while (i < a->n && is_blank_char(a->p[i]))
        i++;
    a->p += i;
    a->n -= i;
    return w;
}

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
        "*** /help           this list",
        "*** /quit [REASON]  leave the server",
        "*** Any other line is said to your room; start it with // to say a line beginning with /.",
    };
    size_t i;
    (void)a;
    for (i = 0; i < sizeof lines / sizeof lines[0]; i++)
        reply_const(c, slot, lines[i]);
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
    reply_built(c, slot, &b);
}

static void cmd_nick(chat *c, uint32_t slot, args a)
{
    session *s = &c->sessions[slot];
    uint32_t holder;
    sbuf b;
    if (a.n == 0) {
        reply_const(c, slot, "*** Usage: /nick NAME (1-32 letters, digits, _ or -)");
        return;
    }
    if (!name_valid(a.p, a.n)) {
        bad_name(c, slot, "nick", a);
        return;
    }
    holder = nick_find(c, a.p, a.n);
    if (holder != NONE && holder != slot) {
        sb_open(c, &b);
        sb_puts(&b, "*** The nick ");
        sb_put(&b, c->sessions[holder].nick, c->sessions[holder].nick_len);
        sb_puts(&b, " is taken.");
        reply_built(c, slot, &b);
        return;
    }
    if (holder == slot && s->nick_len == a.n && memcmp(s->nick, a.p, a.n) == 0) {
        sb_open(c, &b);
        sb_puts(&b, "*** You are already ");
        sb_put(&b, s->nick, s->nick_len);
        sb_puts(&b, ".");
        reply_built(c, slot, &b);
        return;
    }
    /* Announced to everyone in the room, the sender included (that is their confirmation). */
    room_notice(c, slot, NONE, HISTORY_NICK, s, c->rooms[s->room].name, c->rooms[s->room].name_len,
                a.p, a.n);
    nick_unlink(c, slot);
    nick_set(s, a.p, a.n);
    nick_link(c, slot);
}

static void cmd_join(chat *c, uint32_t slot, args a)
{
    session *s = &c->sessions[slot];
    uint32_t target;
    char old_name[CHAT_NAME_MAX + 1];
    size_t old_len;
    char leave_body[CHAT_NAME_MAX + 8];
    size_t leave_len;
    const room *r;
    sbuf b;
    if (a.n == 0) {
        reply_const(c, slot, "*** Usage: /join ROOM (1-32 letters, digits, _ or -)");
        return;
    }
    if (!name_valid(a.p, a.n)) {
        bad_name(c, slot, "room name", a);
        return;
    }
    target = room_find(c, a.p, a.n);
    if (target == s->room) {
        sb_open(c, &b);
        sb_puts(&b, "*** You are already in ");
        sb_put(&b, c->rooms[target].name, c->rooms[target].name_len);
        sb_puts(&b, ".");
        reply_built(c, slot, &b);
        return;
    }
    if (target == NONE && c->room_free == NONE) {   /* cannot happen: rooms >= sessions + 1 */
        reply_const(c, slot, "*** No room can be created right now.");
        return;
    }
    old_len = c->rooms[s->room].name_len;
    memcpy(old_name, c->rooms[s->room].name, old_len + 1);
    member_remove(c, slot);
    if (target == NONE)
        target = room_create(c, a.p, a.n);
    member_add(c, slot, target);
    r = &c->rooms[target];

    memcpy(leave_body, "joined ", 7);
    memcpy(leave_body + 7, r->name, r->name_len);
    leave_len = 7 + (size_t)r->name_len;
    room_notice(c, slot, NONE, HISTORY_LEAVE, s, old_name, old_len, leave_body, leave_len);

    sb_open(c, &b);
    sb_puts(&b, "*** You are now in ");
    sb_put(&b, r->name, r->name_len);
    sb_puts(&b, " (");
    sb_put_u64(&b, r->members);
    sb_puts(&b, " here).");
    reply_built(c, slot, &b);
    if (c->cfg.replay > 0)
        history_effect(c, slot, r, c->cfg.replay);
    room_notice(c, slot, slot, HISTORY_JOIN, s, r->name, r->name_len, "", 0);
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
        reply_built(l->c, l->slot, &l->b);
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
    reply_built(l->c, l->slot, &l->b);
}

static void cmd_rooms(chat *c, uint32_t slot, args a)
{
    lister l;
    uint32_t i, shown = 0;
    (void)a;
    l.c = c;
    l.slot = slot;
    l.items = 0;
    sb_open(c, &l.b);
    sb_puts(&l.b, "*** ");
    sb_put_u64(&l.b, c->room_count);
    sb_puts(&l.b, c->room_count == 1 ? " room: " : " rooms: ");
    for (i = c->room_first; i != NONE && shown < CHAT_LIST_SHOWN; i = c->rooms[i].next, shown++)
        lister_item(&l, c->rooms[i].name, c->rooms[i].name_len, c->rooms[i].members, 1);
    lister_end(&l, c->room_count - shown, "rooms");
}

static void cmd_who(chat *c, uint32_t slot, args a)
{
    const room *r = &c->rooms[c->sessions[slot].room];
    lister l;
    uint32_t i, shown = 0;
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
    for (i = r->head; i != NONE && shown < CHAT_LIST_SHOWN; i = c->sessions[i].room_next, shown++)
        lister_item(&l, c->sessions[i].nick, c->sessions[i].nick_len, 0, 0);
    lister_end(&l, r->members - shown, "people");
}

/* "<nick> text" or "* nick text" to the room except the sender, stored with body = text.
 * The hot path: two name copies and one formatted copy of the line. */
static void say(chat *c, uint32_t slot, event ev, const char *text, size_t len)
{
    session *s = &c->sessions[slot];
    const room *r = &c->rooms[s->room];
    chat_effect *e;
    const char *nick = arena_copy(c, s->nick, s->nick_len);
    const char *rname = arena_copy(c, r->name, r->name_len);
    size_t prefix;
    sbuf b;
    sb_open(c, &b);
    put_event(&b, ev, s->nick, s->nick_len, NULL, 0, "", 0, 0);   /* "<nick> " or "* nick " */
    prefix = b.len;
    sb_put(&b, text, len);
    e = effect_add(c, CHAT_ROOM, slot);
    e->text = sb_close(c, &b, &e->text_len);
    e->except_slot = slot;
    e->record_kind = ev;
    e->room = rname;
    e->nick = nick;
    e->body = e->text + prefix;   /* the text's own tail: no second copy */
    e->body_len = e->text_len - prefix;
}

static void cmd_me(chat *c, uint32_t slot, args a)
{
    if (a.n == 0) {
        reply_const(c, slot, "*** Usage: /me ACTION");
        return;
    }
    say(c, slot, HISTORY_ME, a.p, a.n);
}

static void cmd_msg(chat *c, uint32_t slot, args a)
{
    session *s = &c->sessions[slot];
    args name = next_word(&a);
    uint32_t to;
    chat_effect *e;
    const char *nick, *rname, *confirm;
    size_t confirm_len;
    sbuf b;
    if (name.n == 0 || a.n == 0) {
        reply_const(c, slot, "*** Usage: /msg NICK TEXT");
        return;
    }
    to = name_valid(name.p, name.n) ? nick_find(c, name.p, name.n) : NONE;
    if (to == NONE) {
        sb_open(c, &b);
        sb_puts(&b, "*** No such nick: ");
        sb_put_echo(&b, name.p, name.n);
        sb_puts(&b, ".");
        reply_built(c, slot, &b);
        return;
    }
    if (to == slot) {
        reply_const(c, slot, "*** That is you: /msg sends to someone else.");
        return;
    }
    nick = arena_copy(c, s->nick, s->nick_len);
    rname = arena_copy(c, c->rooms[s->room].name, c->rooms[s->room].name_len);
    /* The stored body names the recipient (there is no column for it): the
     * confirmation "*** to bob: text" without its "*** ", "to bob: text". */
    sb_open(c, &b);
    sb_puts(&b, "*** to ");
    sb_put(&b, c->sessions[to].nick, c->sessions[to].nick_len);
    sb_puts(&b, ": ");
    sb_put(&b, a.p, a.n);
    confirm = sb_close(c, &b, &confirm_len);

    sb_open(c, &b);
    put_event(&b, HISTORY_MSG, s->nick, s->nick_len, NULL, 0, a.p, a.n, 0);
    e = effect_add(c, CHAT_PRIVATE, slot);
    e->text = sb_close(c, &b, &e->text_len);
    e->to_slot = to;
    e->record_kind = c->cfg.log_private ? HISTORY_MSG : HISTORY_KIND_NONE;
    e->room = rname;
    e->nick = nick;
    e->body = confirm + (sizeof "*** " - 1);
    e->body_len = confirm_len - (sizeof "*** " - 1);
    e->confirm = confirm;
    e->confirm_len = confirm_len;
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
            reply_const(c, slot, "*** Usage: /history [N] (N from 1 to 200, default 20)");
            return;
        }
        limit = v > CHAT_HISTORY_MAX ? CHAT_HISTORY_MAX : (int)v;
    }
    history_effect(c, slot, &c->rooms[c->sessions[slot].room], limit);
}

static void cmd_search(chat *c, uint32_t slot, args a)
{
    const room *r = &c->rooms[c->sessions[slot].room];
    chat_effect *e;
    const char *rname, *words;
    if (a.n == 0) {
        reply_const(c, slot, "*** Usage: /search WORDS");
        return;
    }
    if (flood_enabled(c))
        c->sessions[slot].flood_tokens -= (int64_t)(SEARCH_FLOOD_COST - 1) * TOKEN;
    rname = arena_copy(c, r->name, r->name_len);
    words = arena_copy(c, a.p, a.n);
    e = effect_add(c, CHAT_SEARCH, slot);
    e->room = rname;
    e->words = words;
    e->limit = CHAT_SEARCH_MAX;
}

static void cmd_quit(chat *c, uint32_t slot, args a)
{
    session *s = &c->sessions[slot];
    chat_effect *e;
    const char *reason = "quit";
    if (a.n > 0) {
        size_t n = cut_to(a.p, a.n, CHAT_REASON_MAX);
        free(s->quit_reason);
        s->quit_reason = (char *)malloc(6 + n + 1);
        if (s->quit_reason) {   /* without memory the leave just says "quit" */
            memcpy(s->quit_reason, "quit: ", 6);
            memcpy(s->quit_reason + 6, a.p, n);
            s->quit_reason[6 + n] = '\0';
            reason = s->quit_reason;
        }
    }
    e = effect_add(c, CHAT_CLOSE, slot);
    e->text = "*** Bye.";
    e->text_len = strlen(e->text);
    e->reason = reason;
    s->state = SESSION_CLOSING;
}

static const struct command {
    const char *name;   /* lower case */
    command_fn run;
} commands[] = {
    {"nick", cmd_nick},     {"join", cmd_join}, {"rooms", cmd_rooms}, {"who", cmd_who},
    {"me", cmd_me},         {"msg", cmd_msg},   {"history", cmd_history},
    {"search", cmd_search}, {"help", cmd_help}, {"quit", cmd_quit},
};

static const struct command *command_lookup(const char *word, size_t n)
{
    size_t i;
    for (i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (word_equal_nocase(word, n, commands[i].name))
            return &commands[i];
    return NULL;
}

/* line[0] == '/': splits "/word args", args without surrounding blanks. */
static args command_split(const char *line, size_t len, args *word)
{
    args rest;
    rest.p = line + 1;
    rest.n = len - 1;
    *word = next_word(&rest);
    while (rest.n > 0 && is_blank_char(rest.p[rest.n - 1]))
        rest.n--;
    return rest;
}

/* ---- public face ---- */

chat *chat_create(const chat_config *cfg, uint32_t max_slots)
{
    chat *c;
    uint32_t buckets = 16, i;
    const char *name;
    sbuf b;
    if (!cfg || max_slots == 0 || max_slots >= UINT32_MAX / 4)
        return NULL;
    while (buckets < max_slots * 2u)
        buckets *= 2;
    c = (chat *)calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->sessions = (session *)calloc(max_slots, sizeof *c->sessions);
    c->rooms = (room *)calloc((size_t)max_slots + 1, sizeof *c->rooms);
    c->nick_buckets = (uint32_t *)malloc((size_t)buckets * sizeof *c->nick_buckets);
    c->room_buckets = (uint32_t *)malloc((size_t)buckets * sizeof *c->room_buckets);
    if (!c->sessions || !c->rooms || !c->nick_buckets || !c->room_buckets) {
        chat_destroy(c);
        return NULL;
    }
    c->cfg = *cfg;
    c->cfg.server_name = c->server_name;
    if (c->cfg.replay < 0)
        c->cfg.replay = 0;
    /* The server name comes from configuration, not from cleaned input. */
    name = cfg->server_name && cfg->server_name[0] ? cfg->server_name : "chatrelay";
    b.p = c->server_name;
    b.cap = CHAT_SERVER_NAME_MAX;
    b.len = 0;
    b.full = 0;
    sb_put_clean(&b, name, strlen(name));
    c->server_name[b.len] = '\0';
    c->max_slots = max_slots;
    c->bucket_mask = buckets - 1;
    c->hash_seed = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull ^ (uint64_t)(uintptr_t)c ^
                   ((uint64_t)clock() << 32);
    for (i = 0; i < buckets; i++)
        c->nick_buckets[i] = c->room_buckets[i] = NONE;
    for (i = 0; i < max_slots; i++) {
        session *s = &c->sessions[i];
        s->room = s->room_prev = s->room_next = s->nick_next = NONE;
    }
    for (i = 0; i <= max_slots; i++)
        c->rooms[i].next = i < max_slots ? i + 1 : NONE;
    c->room_free = 0;
    c->room_first = c->room_last = NONE;
    room_create(c, CHAT_LOBBY_NAME, strlen(CHAT_LOBBY_NAME));   /* takes index 0 == CHAT_LOBBY */
    return c;
}

void chat_destroy(chat *c)
{
    if (!c)
        return;
    if (c->sessions) {
        uint32_t i;
        for (i = 0; i < c->max_slots; i++)
            free(c->sessions[i].quit_reason);
    }
    free(c->sessions);
    free(c->rooms);
    free(c->nick_buckets);
    free(c->room_buckets);
    free(c);
}

size_t chat_effects(const chat *c, const chat_effect **out)
{
    if (!c) {
        if (out)
            *out = NULL;
        return 0;
    }
    if (out)
        *out = c->effects;
    return c->effect_count;
}

void chat_session_open(chat *c, uint32_t slot, uint32_t conn_id, int64_t now_ms)
{
    session *s;
    const room *lobby;
    char nick[CHAT_NAME_MAX + 1];
    size_t base_len, nick_len;
    uint32_t suffix;
    sbuf b;
    if (!c)
        return;
    effects_reset(c);
    if (slot >= c->max_slots)
        return;
    s = &c->sessions[slot];
    if (s->state != SESSION_FREE)   /* the hub missed a close: clean up before reuse */
        session_detach(c, slot, "connection lost", strlen("connection lost"));

    /* guest<conn_id>, or guest<conn_id>-2, -3... if someone took it with /nick.
     * At most max_slots names exist, so this ends; the longest is 5+10+1+10 chars. */
    memcpy(nick, "guest", 5);
    base_len = 5 + format_u64(nick + 5, conn_id);
    nick_len = base_len;
    for (suffix = 2; nick_find(c, nick, nick_len) != NONE; suffix++) {
        nick[base_len] = '-';
        nick_len = base_len + 1 + format_u64(nick + base_len + 1, suffix);
    }
    nick_set(s, nick, nick_len);
    s->conn_id = conn_id;
    s->state = SESSION_LIVE;
    s->flood_refused = 0;
    s->flood_tokens = flood_enabled(c) ? (int64_t)c->cfg.flood_burst * TOKEN : 0;
    s->flood_last_ms = now_ms;
    nick_link(c, slot);
    member_add(c, slot, CHAT_LOBBY);
    lobby = &c->rooms[CHAT_LOBBY];

    sb_open(c, &b);
    sb_puts(&b, "*** Welcome to ");
    sb_puts(&b, c->server_name);
    sb_puts(&b, ".");
    reply_built(c, slot, &b);
    sb_open(c, &b);
    sb_puts(&b, "*** Your nick is ");
    sb_put(&b, s->nick, s->nick_len);
    sb_puts(&b, "; change it with /nick NAME.");
    reply_built(c, slot, &b);
    sb_open(c, &b);
    sb_puts(&b, "*** You are in ");
    sb_put(&b, lobby->name, lobby->name_len);
    sb_puts(&b, " (");
    sb_put_u64(&b, lobby->members);
    sb_puts(&b, " here).");
    reply_built(c, slot, &b);
    reply_const(c, slot, "*** Type /help for the commands.");
    if (c->cfg.replay > 0)
        history_effect(c, slot, lobby, c->cfg.replay);
    room_notice(c, slot, slot, HISTORY_JOIN, s, lobby->name, lobby->name_len, "", 0);
}

void chat_session_line(chat *c, uint32_t slot, const char *line, size_t len,
                       int truncated, int64_t now_ms)
{
    session *s;
    args word, rest;
    const struct command *cmd = NULL;
    int is_command;
    if (!c)
        return;
    effects_reset(c);
    if (slot >= c->max_slots || !line)
        return;
    s = &c->sessions[slot];
    if (s->state != SESSION_LIVE)   /* closing: whatever else it sent is dropped */
        return;
    if (len > CHAT_LINE_MAX) {
        len = cut_to(line, len, CHAT_LINE_MAX);
        truncated = 1;
    }
    if (text_is_blank(line, len))
        return;
    is_command = line[0] == '/' && !(len >= 2 && line[1] == '/');
    if (is_command) {
        rest = command_split(line, len, &word);
        cmd = command_lookup(word.p, word.n);
    }
    /* /quit costs nothing, so a flooded client can still leave cleanly. */
    if (!(cmd && cmd->run == cmd_quit) && !flood_take(c, s, now_ms)) {
        flood_refuse(c, slot);
        return;
    }
    if (truncated) {
        sbuf b;
        sb_open(c, &b);
        sb_puts(&b, "*** Your line was too long: it was cut at ");
        sb_put_u64(&b, CHAT_LINE_MAX);
        sb_puts(&b, " bytes.");
        reply_built(c, slot, &b);
    }
    if (!is_command) {
        if (line[0] == '/')
            say(c, slot, HISTORY_SAY, line + 1, len - 1);
        else
            say(c, slot, HISTORY_SAY, line, len);
    } else if (cmd) {
        cmd->run(c, slot, rest);
    } else {
        sbuf b;
        sb_open(c, &b);
        sb_puts(&b, "*** Unknown command /");
        sb_put_echo(&b, word.p, word.n);
        sb_puts(&b, "; type /help for the list.");
        reply_built(c, slot, &b);
    }
}

void chat_session_close(chat *c, uint32_t slot, const char *reason)
{
    char why[CHAT_REASON_MAX + 16];
    size_t why_len = 0;
    if (!c)
        return;
    /* reason may be the session's own quit_reason, freed below, or point into
     * the arena: copy it out first. */
    if (reason) {
        why_len = strlen(reason);
        if (why_len > sizeof why - 1)
            why_len = cut_to(reason, why_len, sizeof why - 1);
        memcpy(why, reason, why_len);
    }
    why[why_len] = '\0';
    effects_reset(c);
    if (slot >= c->max_slots || c->sessions[slot].state == SESSION_FREE)
        return;
    session_detach(c, slot, why, why_len);
}

const char *chat_session_nick(const chat *c, uint32_t slot)
{
    if (!c || slot >= c->max_slots || c->sessions[slot].state == SESSION_FREE)
        return NULL;
    return c->sessions[slot].nick;
}

const char *chat_session_room(const chat *c, uint32_t slot)
{
    if (!c || slot >= c->max_slots || c->sessions[slot].state == SESSION_FREE)
        return NULL;
    return c->rooms[c->sessions[slot].room].name;
}

void chat_room_members(const chat *c, const char *room_name, chat_member_fn fn, void *ctx)
{
    size_t n;
    uint32_t ri, i;
    if (!c || !room_name || !fn)
        return;
    for (n = 0; n <= CHAT_NAME_MAX && room_name[n] != '\0'; n++) {
    }
    if (!name_valid(room_name, n))
        return;
    ri = room_find(c, room_name, n);
    if (ri == NONE)
        return;
    for (i = c->rooms[ri].head; i != NONE; i = c->sessions[i].room_next)
        fn(ctx, i);
}

/* "2026-11-27T03:04:05.123Z" -> "2026-11-27 03:04:05"; 0 if at is not of that shape. */
static int history_time(const char *at, char out[20])
{
    static const char shape[] = "dddd-dd-ddTdd:dd:dd";
    size_t i;
    for (i = 0; i < 19; i++) {
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

size_t chat_format_history(const history_record *rec, char *out, size_t cap)
{
    sbuf b;
    char when[20];
    const char *nick, *room_name, *body;
    if (!out || cap == 0)
        return 0;
    b.p = out;
    b.cap = cap - 1;
    b.len = 0;
    b.full = 0;
    if (rec) {
        nick = rec->nick ? rec->nick : "";
        room_name = rec->room ? rec->room : "";
        body = rec->body ? rec->body : "";
        sb_puts(&b, "*** [");
        if (rec->at && history_time(rec->at, when))
            sb_puts(&b, when);
        else if (rec->at)
            sb_put_clean(&b, rec->at, strlen(rec->at));
        sb_puts(&b, "] ");
        put_event(&b, rec->kind == HISTORY_KIND_NONE ? HISTORY_SAY : rec->kind,  /* not ours: shown as said */
                  nick, strlen(nick), room_name, strlen(room_name), body,
                  rec->body ? rec->body_len : 0, 1);
    }
    out[b.len] = '\0';
    return b.len;
}

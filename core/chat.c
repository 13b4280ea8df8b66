/* chat: the engine: sessions, nicks, rooms and memberships, flood control,
 * and the operations that change them, each emitting its protocol-neutral
 * event.  What a client's line means is its dialect's business
 * (dialect_line.c, dialect_irc.c); the user-visible rules are documented in
 * docs/PROTOCOL.md.
 *
 * Memory: sessions and the hash buckets are allocated in chat_create; rooms
 * and memberships grow by doubling when an IRC client joins more rooms than
 * there were slots (a line client is in one, so a line-only server never
 * grows them).  Each public call resets the arena and the effect list; every
 * string an effect points to lives in the arena or is a constant.
 *
 * Hot path (a plain chat line): bucket arithmetic, two name copies and one
 * copy of the text; no scan of sessions or rooms.
 *
 * One exception to "valid until the next call": a CHAT_CLOSE effect's reason
 * stays valid until chat_session_close for that slot, because the hub keeps it
 * and hands it back there (it is a constant, or the session's own copy of
 * "quit: <message>", allocated once at /quit).
 */
#include "chat_internal.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "invariant.h"

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

int chat_name_valid(const char *s, size_t n)
{
    if (n < 1 || n > CHAT_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!name_char_ok(s[i]))
            return 0;
    return 1;
}

int chat_name_equal(const char *a, size_t an, const char *b, size_t bn)
{
    if (an != bn)
        return 0;
    for (size_t i = 0; i < an; i++)
        if (ascii_lower(a[i]) != ascii_lower(b[i]))
            return 0;
    return 1;
}

int chat_word_is(const char *w, size_t wn, const char *lower)
{
    for (size_t i = 0; i < wn; i++)
        if (lower[i] == '\0' || ascii_lower(w[i]) != lower[i])
            return 0;
    return lower[wn] == '\0';
}

size_t chat_cut(const char *s, size_t len, size_t max)
{
    return len <= max ? len : text_utf8_boundary(s, max);
}

size_t chat_format_u64(char *out, uint64_t v)
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

args chat_next_word(args *a)
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

/* Seeded so that nicks chosen to collide on one build do not collide on another run. */
static uint32_t name_hash(const chat *c, const char *s, size_t n)
{
    uint64_t h = c->hash_seed ^ 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)ascii_lower(s[i]);
        h *= 0x100000001b3ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return (uint32_t)h;
}

/* ---- string builder ---- */

void sb_open(chat *c, sbuf *b)
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

void sb_init(sbuf *b, char *out, size_t cap)
{
    b->p = out;
    b->cap = cap - 1;
    b->len = 0;
    b->full = 0;
}

const char *sb_close(chat *c, sbuf *b, size_t *len)
{
    b->p[b->len] = '\0';
    if (b->full)
        c->effects_lost = 1;
    c->arena_used += b->len + 1;
    if (c->arena_used > CHAT_ARENA_BYTES)
        c->arena_used = CHAT_ARENA_BYTES;
    if (len)
        *len = b->len;
    return b->p;
}

void sb_put(sbuf *b, const char *s, size_t n)
{
    if (b->full)
        return;
    if (n > b->cap - b->len) {
        n = chat_cut(s, n, b->cap - b->len);
        b->full = 1;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

void sb_puts(sbuf *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

void sb_put_u64(sbuf *b, uint64_t v)
{
    char digits[20];
    sb_put(b, digits, chat_format_u64(digits, v));
}

void sb_put_echo(sbuf *b, const char *s, size_t n)
{
    if (n > CHAT_ECHO_MAX) {
        sb_put(b, s, chat_cut(s, n, CHAT_ECHO_MAX));
        sb_puts(b, "...");
    } else {
        sb_put(b, s, n);
    }
}

/* Text read back from the database, which anyone may edit with the sqlite3
 * CLI, goes through text_clean again, so history never carries terminal
 * escapes or ill-formed UTF-8 to a client. */
void sb_put_clean(sbuf *b, const char *s, size_t n)
{
    int cut = 0;
    if (b->full)
        return;
    /* b->p[b->cap] is reserved for the NUL, which text_clean writes too. */
    b->len += text_clean(s, n, b->p + b->len, b->cap - b->len + 1, &cut);
    if (cut)
        b->full = 1;
}

const char *chat_copy(chat *c, const char *s, size_t n)
{
    sbuf b;
    sb_open(c, &b);
    sb_put(&b, s, n);
    return sb_close(c, &b, NULL);
}

/* ---- effects ---- */

static void effects_reset(chat *c)
{
    c->effect_count = 0;
    c->arena_used = 0;
    c->effects_lost = 0;
}

chat_effect *chat_effect_add(chat *c, chat_effect_kind kind, uint32_t slot)
{
    chat_effect *e;
    if (c->effect_count < CHAT_EFFECTS_MAX) {
        e = &c->effects[c->effect_count++];
    } else {
        e = &c->overflow_effect;
        c->effects_lost = 1;
    }
    /* The bounds are sized for the worst single call (chat_internal.h): an
     * effect or text lost means a bound is wrong, which the tests must see. */
    CR_ASSERT(!c->effects_lost);
    memset(e, 0, sizeof *e);
    e->kind = kind;
    e->slot = slot;
    e->to_slot = NONE;
    return e;
}

void chat_reply(chat *c, uint32_t slot, const char *text)
{
    chat_effect *e = chat_effect_add(c, CHAT_REPLY, slot);
    e->text = text;
    e->text_len = strlen(text);
}

void chat_reply_built(chat *c, uint32_t slot, sbuf *b)
{
    chat_effect *e = chat_effect_add(c, CHAT_REPLY, slot);
    e->text = sb_close(c, b, &e->text_len);
}

void chat_close(chat *c, uint32_t slot, const char *text, size_t len, const char *reason)
{
    chat_effect *e = chat_effect_add(c, CHAT_CLOSE, slot);
    e->text = text;
    e->text_len = len;
    e->reason = reason;
    c->sessions[slot].state = SESSION_CLOSING;
}

void chat_query(chat *c, uint32_t slot, uint32_t ri, const char *words, size_t words_len, int limit)
{
    const room *r = &c->rooms[ri];
    const char *rname = chat_copy(c, r->name, r->name_len);
    const char *w = words ? chat_copy(c, words, words_len) : NULL;
    chat_effect *e = chat_effect_add(c, CHAT_QUERY, slot);
    e->room = rname;
    e->words = w;
    e->limit = limit;
}

void chat_query_range(chat *c, uint32_t slot, uint32_t ri, const history_bound *lo, const history_bound *hi,
                      int limit, int from_newest)
{
    chat_query(c, slot, ri, NULL, 0, limit);
    chat_effect *e = &c->effects[c->effect_count - 1];
    e->range = 1;
    e->from_newest = (uint8_t)from_newest;
    e->lo = *lo;
    e->hi = *hi;
    if (lo->at)
        e->lo.at = chat_copy(c, lo->at, strlen(lo->at));
    if (hi->at)
        e->hi.at = chat_copy(c, hi->at, strlen(hi->at));
}

void chat_query_on_join(chat *c, uint32_t slot, uint32_t ri, int limit, int range)
{
    history_bound open_end;
    memset(&open_end, 0, sizeof open_end);
    if (range)
        chat_query_range(c, slot, ri, &open_end, &open_end, limit, 1);
    else
        chat_query(c, slot, ri, NULL, 0, limit);
    c->effects[c->effect_count - 1].on_join = 1;
}

/* ---- the name tables ----
 * Nicks -> sessions and room names -> rooms: one chained hash each, written
 * once.  An entry is an index; the table's key function gives its name and
 * its chain link. */

typedef struct name_key {
    const char *name;
    size_t len;
    uint32_t *next;
} name_key;

typedef name_key (*key_fn)(const chat *c, uint32_t i);

static name_key nick_key(const chat *c, uint32_t i)
{
    session *s = &c->sessions[i];
    name_key k = { s->nick, s->nick_len, &s->nick_next };
    return k;
}

static name_key room_key(const chat *c, uint32_t i)
{
    room *r = &c->rooms[i];
    name_key k = { r->name, r->name_len, &r->hash_next };
    return k;
}

static uint32_t table_find(const chat *c, const uint32_t *buckets, key_fn key, const char *s, size_t n)
{
    uint32_t i = buckets[name_hash(c, s, n) & c->bucket_mask];
    while (i != NONE) {
        name_key k = key(c, i);
        if (chat_name_equal(k.name, k.len, s, n))
            return i;
        i = *k.next;
    }
    return NONE;
}

static void table_link(chat *c, uint32_t *buckets, key_fn key, uint32_t i)
{
    name_key k = key(c, i);
    uint32_t *bucket = &buckets[name_hash(c, k.name, k.len) & c->bucket_mask];
    *k.next = *bucket;
    *bucket = i;
}

static void table_unlink(chat *c, uint32_t *buckets, key_fn key, uint32_t i)
{
    name_key k = key(c, i);
    uint32_t *link = &buckets[name_hash(c, k.name, k.len) & c->bucket_mask];
    while (*link != NONE) {
        if (*link == i) {
            *link = *k.next;
            break;
        }
        link = key(c, *link).next;
    }
    *k.next = NONE;
}

uint32_t chat_nick_find(const chat *c, const char *s, size_t n)
{
    return table_find(c, c->nick_buckets, nick_key, s, n);
}

static void nick_link(chat *c, uint32_t slot)
{
    table_link(c, c->nick_buckets, nick_key, slot);
}

static void nick_unlink(chat *c, uint32_t slot)
{
    table_unlink(c, c->nick_buckets, nick_key, slot);
}

static void nick_set(session *s, const char *name, size_t n)
{
    memcpy(s->nick, name, n);
    s->nick[n] = '\0';
    s->nick_len = (uint8_t)n;
}

uint32_t chat_room_find(const chat *c, const char *s, size_t n)
{
    return table_find(c, c->room_buckets, room_key, s, n);
}

/* Doubles a pool of elem-byte elements (the new part zeroed) and threads
 * the new elements onto its free list through the uint32_t link at
 * link_off in each (the list was empty).  0, or -1 when out of memory. */
static int grow_pool(void **arr, uint32_t *cap, size_t elem, size_t link_off, uint32_t *free_head)
{
    uint32_t old = *cap, ncap = old * 2;
    if (ncap <= old || ncap > UINT32_MAX / 2)
        return -1;
    char *p = realloc(*arr, (size_t)ncap * elem);
    if (!p)
        return -1;
    memset(p + (size_t)old * elem, 0, (size_t)(ncap - old) * elem);
    for (uint32_t k = old; k < ncap; k++) {
        uint32_t next = k + 1 < ncap ? k + 1 : NONE;
        memcpy(p + (size_t)k * elem + link_off, &next, sizeof next);
    }
    *arr = p;
    *cap = ncap;
    *free_head = old;
    return 0;
}

static uint32_t room_create(chat *c, const char *name, size_t n)
{
    if (c->room_free == NONE) {
        void *arr = c->rooms;
        if (grow_pool(&arr, &c->room_cap, sizeof *c->rooms, offsetof(room, next), &c->room_free) != 0)
            return NONE;
        c->rooms = arr;
    }
    uint32_t i = c->room_free;
    room *r = &c->rooms[i];
    c->room_free = r->next;
    memcpy(r->name, name, n);
    r->name[n] = '\0';
    r->name_len = (uint8_t)n;
    r->live = 1;
    r->members = 0;
    r->head = r->tail = NONE;
    table_link(c, c->room_buckets, room_key, i);
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
    CR_ASSERT(r->live && r->members == 0 && i != CHAT_LOBBY);
    table_unlink(c, c->room_buckets, room_key, i);
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

uint32_t chat_member_of(const chat *c, uint32_t slot, uint32_t ri)
{
    for (uint32_t m = c->sessions[slot].first_member; m != NONE; m = c->members[m].sess_next)
        if (c->members[m].room == ri)
            return m;
    return NONE;
}

uint32_t chat_first_room(const chat *c, uint32_t slot)
{
    uint32_t m = c->sessions[slot].first_member;
    return m == NONE ? NONE : c->members[m].room;
}

/* -1 when out of memory. */
static int member_add(chat *c, uint32_t slot, uint32_t ri)
{
    if (c->member_free == NONE) {
        void *arr = c->members;
        if (grow_pool(&arr, &c->member_cap, sizeof *c->members, offsetof(member, sess_next), &c->member_free) != 0)
            return -1;
        c->members = arr;
    }
    uint32_t mi = c->member_free;
    member *m = &c->members[mi];
    session *s = &c->sessions[slot];
    room *r = &c->rooms[ri];
    c->member_free = m->sess_next;
    m->slot = slot;
    m->room = ri;
    m->room_prev = r->tail;
    m->room_next = NONE;
    if (r->tail != NONE)
        c->members[r->tail].room_next = mi;
    else
        r->head = mi;
    r->tail = mi;
    r->members++;
    /* the session's list keeps joining order: append */
    m->sess_next = NONE;
    uint32_t *link = &s->first_member;
    while (*link != NONE)
        link = &c->members[*link].sess_next;
    *link = mi;
    s->room_count++;
    return 0;
}

/* Rooms other than the lobby disappear with their last member. */
static void member_remove(chat *c, uint32_t mi)
{
    member *m = &c->members[mi];
    session *s = &c->sessions[m->slot];
    uint32_t ri = m->room;
    room *r = &c->rooms[ri];
    if (m->room_prev != NONE)
        c->members[m->room_prev].room_next = m->room_next;
    else
        r->head = m->room_next;
    if (m->room_next != NONE)
        c->members[m->room_next].room_prev = m->room_prev;
    else
        r->tail = m->room_prev;
    uint32_t *link = &s->first_member;
    while (*link != mi) {
        CR_ASSERT(*link != NONE);
        link = &c->members[*link].sess_next;
    }
    *link = m->sess_next;
    s->room_count--;
    r->members--;
    m->sess_next = c->member_free;
    c->member_free = mi;
    if (r->members == 0 && ri != CHAT_LOBBY)
        room_destroy(c, ri);
}

/* ---- events ---- */

static chat_effect *event_add(chat *c, uint32_t slot, history_kind kind, int stored)
{
    const session *s = &c->sessions[slot];
    const char *nick = chat_copy(c, s->nick, s->nick_len);
    chat_effect *e = chat_effect_add(c, CHAT_EVENT, slot);
    e->event.kind = kind;
    e->event.nick = nick;
    e->event.body = "";
    e->stored = (uint8_t)stored;
    return e;
}

static void event_in_room(chat *c, chat_effect *e, uint32_t ri)
{
    const room *r = &c->rooms[ri];
    CR_ASSERT(e->event.room_count < CHAT_ROOMS_PER_SESSION);
    e->event.rooms[e->event.room_count++] = chat_copy(c, r->name, r->name_len);
}

static void event_body(chat *c, chat_effect *e, const char *body, size_t len)
{
    e->event.body = chat_copy(c, body, len);
    e->event.body_len = len;
}

/* ---- flood control ---- */

int chat_flood_on(const chat *c)
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

int chat_flood_take(chat *c, uint32_t slot, int64_t now_ms)
{
    session *s = &c->sessions[slot];
    if (!chat_flood_on(c))
        return 1;
    flood_refill(c, s, now_ms);
    if (s->flood_tokens >= TOKEN) {
        s->flood_tokens -= TOKEN;
        s->flood_refused = 0;
        return 1;
    }
    if (s->flood_refused < UINT32_MAX)
        s->flood_refused++;
    int kicked = c->cfg.flood_kick > 0 && s->flood_refused >= (uint32_t)c->cfg.flood_kick;
    if (s->dialect == CHAT_DIALECT_IRC)
        irc_flood_refused(c, slot, kicked);
    else
        line_flood_refused(c, slot, kicked);
    return 0;
}

void chat_flood_charge(chat *c, uint32_t slot, int lines)
{
    if (chat_flood_on(c))
        c->sessions[slot].flood_tokens -= (int64_t)lines * TOKEN;
}

/* ---- operations ---- */

chat_result chat_op_register(chat *c, uint32_t slot, const char *nick, size_t n)
{
    session *s = &c->sessions[slot];
    if (!chat_name_valid(nick, n))
        return CHAT_INVALID_NAME;
    if (chat_nick_find(c, nick, n) != NONE)
        return CHAT_TAKEN;
    nick_set(s, nick, n);
    nick_link(c, slot);
    s->state = SESSION_LIVE;
    return CHAT_OK;
}

chat_result chat_op_nick(chat *c, uint32_t slot, const char *nick, size_t n)
{
    session *s = &c->sessions[slot];
    if (!chat_name_valid(nick, n))
        return CHAT_INVALID_NAME;
    uint32_t holder = chat_nick_find(c, nick, n);
    if (holder != NONE && holder != slot)
        return CHAT_TAKEN;
    if (holder == slot && s->nick_len == n && memcmp(s->nick, nick, n) == 0)
        return CHAT_SAME;
    /* One event for all its rooms: stored once per room, shown once to each
     * person who shares one, and to the renamed session (its confirmation). */
    chat_effect *e = event_add(c, slot, HISTORY_NICK, s->room_count > 0);
    for (uint32_t m = s->first_member; m != NONE; m = c->members[m].sess_next)
        event_in_room(c, e, c->members[m].room);
    event_body(c, e, nick, n);
    nick_unlink(c, slot);
    nick_set(s, nick, n);
    nick_link(c, slot);
    return CHAT_OK;
}

chat_result chat_op_join(chat *c, uint32_t slot, const char *name, size_t n, uint32_t *room_out)
{
    session *s = &c->sessions[slot];
    if (!chat_name_valid(name, n))
        return CHAT_INVALID_NAME;
    uint32_t ri = chat_room_find(c, name, n);
    if (ri != NONE && chat_member_of(c, slot, ri) != NONE) {
        *room_out = ri;
        return CHAT_SAME;
    }
    if (s->room_count >= CHAT_ROOMS_PER_SESSION)
        return CHAT_TOO_MANY;
    int created = ri == NONE;
    if (created)
        ri = room_create(c, name, n);
    if (ri == NONE || member_add(c, slot, ri) != 0) {
        if (created && ri != NONE)
            room_destroy(c, ri);
        return CHAT_TOO_MANY;   /* out of memory: reported as "no more rooms" */
    }
    chat_effect *e = event_add(c, slot, HISTORY_JOIN, 1);
    event_in_room(c, e, ri);
    *room_out = ri;
    return CHAT_OK;
}

chat_result chat_op_part(chat *c, uint32_t slot, uint32_t ri, const char *reason, size_t reason_len)
{
    uint32_t mi = ri == NONE ? NONE : chat_member_of(c, slot, ri);
    if (mi == NONE)
        return CHAT_NOT_IN;
    chat_effect *e = event_add(c, slot, HISTORY_LEAVE, 1);
    event_in_room(c, e, ri);
    event_body(c, e, reason, reason_len);
    member_remove(c, mi);
    return CHAT_OK;
}

chat_result chat_op_say(chat *c, uint32_t slot, uint32_t ri, history_kind kind, int notice,
                        const char *text, size_t len)
{
    if (ri == NONE || chat_member_of(c, slot, ri) == NONE)
        return CHAT_NOT_IN;
    chat_effect *e = event_add(c, slot, kind, 1);
    e->event.notice = (uint8_t)notice;
    event_in_room(c, e, ri);
    event_body(c, e, text, len);
    return CHAT_OK;
}

chat_result chat_op_msg(chat *c, uint32_t slot, const char *nick, size_t n, int notice,
                        const char *text, size_t len, uint32_t *to_out)
{
    uint32_t to = chat_name_valid(nick, n) ? chat_nick_find(c, nick, n) : NONE;
    if (to == NONE)   /* a session that is closing still has its nick until it is gone */
        return CHAT_NO_SUCH;
    *to_out = to;
    if (to == slot)
        return CHAT_SELF;
    chat_effect *e = event_add(c, slot, HISTORY_MSG, c->cfg.log_private);
    const session *r = &c->sessions[to];
    e->to_slot = to;
    e->event.notice = (uint8_t)notice;
    e->event.target = chat_copy(c, r->nick, r->nick_len);
    /* Stored under the sender's room (the row needs one; "" when in none). */
    uint32_t ri = chat_first_room(c, slot);
    if (ri != NONE)
        event_in_room(c, e, ri);
    else
        e->event.rooms[e->event.room_count++] = "";
    event_body(c, e, text, len);
    return CHAT_OK;
}

static chat_topic *topic_find(const chat *c, const char *name, size_t n)
{
    for (uint32_t i = 0; i < c->topic_count; i++)
        if (chat_name_equal(c->topics[i].room, strlen(c->topics[i].room), name, n))
            return &c->topics[i];
    return NULL;
}

/* 0, or -1 when out of memory (the topic is then unchanged). */
static int topic_set(chat *c, const char *name, size_t n, const char *text, size_t len)
{
    chat_topic *t = topic_find(c, name, n);
    if (len == 0) {
        if (t) {
            free(t->text);
            *t = c->topics[--c->topic_count];
        }
        return 0;
    }
    char *copy = malloc(len + 1);
    if (!copy)
        return -1;
    memcpy(copy, text, len);
    copy[len] = '\0';
    if (!t) {
        if (c->topic_count == c->topic_cap) {
            uint32_t ncap = c->topic_cap ? c->topic_cap * 2 : 16;
            chat_topic *grown = realloc(c->topics, ncap * sizeof *grown);
            if (!grown) {
                free(copy);
                return -1;
            }
            c->topics = grown;
            c->topic_cap = ncap;
        }
        t = &c->topics[c->topic_count++];
        memcpy(t->room, name, n);
        t->room[n] = '\0';
        t->text = NULL;
    }
    free(t->text);
    t->text = copy;
    return 0;
}

const char *chat_topic_of(const chat *c, uint32_t ri)
{
    const chat_topic *t = topic_find(c, c->rooms[ri].name, c->rooms[ri].name_len);
    return t ? t->text : NULL;
}

chat_result chat_op_topic(chat *c, uint32_t slot, uint32_t ri, const char *text, size_t len)
{
    if (ri == NONE || chat_member_of(c, slot, ri) == NONE)
        return CHAT_NOT_IN;
    len = chat_cut(text, len, CHAT_TOPIC_MAX);
    if (topic_set(c, c->rooms[ri].name, c->rooms[ri].name_len, text, len) != 0)
        return CHAT_TOO_MANY;
    chat_effect *e = event_add(c, slot, HISTORY_TOPIC, 1);
    event_in_room(c, e, ri);
    event_body(c, e, text, len);
    return CHAT_OK;
}

void chat_restore_topic(chat *c, const history_record *rec)
{
    if (!c || !rec || !rec->room || rec->kind != HISTORY_TOPIC)
        return;
    size_t n = strlen(rec->room);
    if (!chat_name_valid(rec->room, n))
        return;   /* a row someone wrote by hand: not a room of ours */
    /* from the database: cleaned like any text read back */
    char text[CHAT_TOPIC_MAX * 4 + 1];
    sbuf b;
    sb_init(&b, text, sizeof text);
    sb_put_clean(&b, rec->body ? rec->body : "", rec->body ? rec->body_len : 0);
    (void)topic_set(c, rec->room, n, text, chat_cut(text, b.len, CHAT_TOPIC_MAX));
}

void chat_op_quit(chat *c, uint32_t slot, const char *why, size_t why_len, const char *text)
{
    session *s = &c->sessions[slot];
    const char *reason = "quit";
    if (why_len > 0) {
        size_t n = chat_cut(why, why_len, CHAT_REASON_MAX);
        free(s->quit_reason);
        s->quit_reason = (char *)malloc(6 + n + 1);
        if (s->quit_reason) {   /* without memory the leave just says "quit" */
            memcpy(s->quit_reason, "quit: ", 6);
            memcpy(s->quit_reason + 6, why, n);
            s->quit_reason[6 + n] = '\0';
            reason = s->quit_reason;
        }
    }
    chat_close(c, slot, text, text ? strlen(text) : 0, reason);
}

/* Removes the session from its rooms and the nick table, frees the slot and
 * announces the leave (one event for all its rooms). */
static void session_detach(chat *c, uint32_t slot, const char *reason, size_t reason_len)
{
    session *s = &c->sessions[slot];
    if (s->nick_len > 0) {
        if (s->room_count > 0) {
            chat_effect *e = event_add(c, slot, HISTORY_LEAVE, 1);
            e->event.quit = 1;
            for (uint32_t m = s->first_member; m != NONE; m = c->members[m].sess_next)
                event_in_room(c, e, c->members[m].room);
            event_body(c, e, reason, reason_len);
        }
        nick_unlink(c, slot);
    }
    while (s->first_member != NONE)
        member_remove(c, s->first_member);
    s->state = SESSION_FREE;
    s->nick_len = 0;
    s->nick[0] = '\0';
    free(s->quit_reason);
    s->quit_reason = NULL;
    irc_free(s->irc);
    s->irc = NULL;
}

/* ---- public face ---- */

chat *chat_create(const chat_config *cfg, uint32_t max_slots)
{
    uint32_t buckets = 16;
    if (!cfg || max_slots == 0 || max_slots >= UINT32_MAX / 4)
        return NULL;
    uint32_t remote = cfg->remote_slots;
    if (remote >= UINT32_MAX / 4 - max_slots)
        return NULL;
    uint32_t total = max_slots + remote;
    while (buckets < total * 2u)
        buckets *= 2;
    chat *c = (chat *)calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->room_cap = max_slots + 1;
    c->member_cap = max_slots;
    c->sessions = (session *)calloc(total, sizeof *c->sessions);
    c->remote_slots = remote;
    c->remote_free = remote ? (uint32_t *)malloc(sizeof *c->remote_free * remote) : NULL;
    if (remote && !c->remote_free) {
        chat_destroy(c);
        return NULL;
    }
    for (uint32_t i = 0; i < remote; i++)
        c->remote_free[c->remote_free_count++] = total - 1 - i;
    c->rooms = (room *)calloc(c->room_cap, sizeof *c->rooms);
    c->members = (member *)calloc(c->member_cap, sizeof *c->members);
    c->nick_buckets = (uint32_t *)malloc((size_t)buckets * sizeof *c->nick_buckets);
    c->room_buckets = (uint32_t *)malloc((size_t)buckets * sizeof *c->room_buckets);
    if (!c->sessions || !c->rooms || !c->members || !c->nick_buckets || !c->room_buckets) {
        chat_destroy(c);
        return NULL;
    }
    c->cfg = *cfg;
    c->cfg.server_name = c->server_name;
    c->cfg.motd = NULL;   /* the configured text is not kept: see irc_open */
    c->cfg.password = NULL;   /* kept in c->password, never through cfg */
    if (cfg->password && cfg->password[0]) {
        size_t n = strlen(cfg->password);
        if (n > CHAT_PASSWORD_MAX) {
            chat_destroy(c);
            return NULL;
        }
        memcpy(c->password, cfg->password, n + 1);
        c->password_len = n;
    }
    if (c->cfg.replay < 0)
        c->cfg.replay = 0;
    /* The server name comes from configuration, not from cleaned input. */
    const char *name = cfg->server_name && cfg->server_name[0] ? cfg->server_name : "chatrelay";
    sbuf b;
    sb_init(&b, c->server_name, sizeof c->server_name);
    sb_put_clean(&b, name, strlen(name));
    c->server_name[b.len] = '\0';
    for (size_t i = 0; i <= b.len; i++) {
        char ch = c->server_name[i];
        c->irc_name[i] = ch == '\0' || name_char_ok(ch) || ch == '.' ? ch : '-';
    }
    c->max_slots = max_slots;
    c->bucket_mask = buckets - 1;
    c->hash_seed = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull ^ (uint64_t)(uintptr_t)c ^
                   ((uint64_t)clock() << 32);
    for (uint32_t i = 0; i < buckets; i++)
        c->nick_buckets[i] = c->room_buckets[i] = NONE;
    for (uint32_t i = 0; i < total; i++) {
        session *s = &c->sessions[i];
        s->first_member = s->nick_next = NONE;
    }
    for (uint32_t i = 0; i < c->room_cap; i++)
        c->rooms[i].next = i + 1 < c->room_cap ? i + 1 : NONE;
    for (uint32_t i = 0; i < c->member_cap; i++)
        c->members[i].sess_next = i + 1 < c->member_cap ? i + 1 : NONE;
    c->room_free = 0;
    c->member_free = 0;
    c->room_first = c->room_last = NONE;
    room_create(c, CHAT_LOBBY_NAME, strlen(CHAT_LOBBY_NAME));   /* takes index 0 == CHAT_LOBBY */
    return c;
}

void chat_destroy(chat *c)
{
    if (!c)
        return;
    volatile char *secret = c->password;   /* volatile: a plain memset before free may be dropped */
    for (size_t i = 0; i < sizeof c->password; i++)
        secret[i] = 0;
    if (c->sessions)
        for (uint32_t i = 0; i < c->max_slots; i++) {
            free(c->sessions[i].quit_reason);
            irc_free(c->sessions[i].irc);
        }
    for (uint32_t i = 0; i < c->topic_count; i++)
        free(c->topics[i].text);
    free(c->topics);
    free(c->remote_free);
    free(c->sessions);
    free(c->rooms);
    free(c->members);
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

/* guest<conn_id>, or guest<conn_id>-2, -3... if someone took it with /nick
 * (from -2 on when first is 0).  At most max_slots + remote_slots names
 * exist, so this ends; the longest is 5+10+1+10 chars. */
static size_t guest_nick(const chat *c, uint32_t conn_id, int first, char nick[CHAT_NAME_MAX + 1])
{
    memcpy(nick, "guest", 5);
    size_t base_len = 5 + chat_format_u64(nick + 5, conn_id);
    size_t nick_len = base_len;
    for (uint32_t suffix = 2; !first || chat_nick_find(c, nick, nick_len) != NONE; suffix++) {
        first = 1;
        nick[base_len] = '-';
        nick_len = base_len + 1 + chat_format_u64(nick + base_len + 1, suffix);
    }
    nick[nick_len] = '\0';
    return nick_len;
}

void chat_session_open(chat *c, uint32_t slot, uint32_t conn_id, chat_dialect dialect, int64_t now_ms)
{
    if (!c)
        return;
    effects_reset(c);
    if (slot >= c->max_slots)
        return;
    session *s = &c->sessions[slot];
    if (s->state != SESSION_FREE)   /* the hub missed a close: clean up before reuse */
        session_detach(c, slot, "connection lost", strlen("connection lost"));
    s->conn_id = conn_id;
    s->dialect = (uint8_t)dialect;
    s->form = dialect == CHAT_DIALECT_IRC ? CHAT_FORM_IRC : CHAT_FORM_LINE;   /* no caps yet */
    s->flood_refused = 0;
    s->flood_tokens = chat_flood_on(c) ? (int64_t)c->cfg.flood_burst * TOKEN : 0;
    s->flood_last_ms = now_ms;
    if (dialect == CHAT_DIALECT_IRC) {
        s->state = SESSION_UNREGISTERED;
        if (irc_open(c, slot) != 0)
            chat_close(c, slot, NULL, 0, "out of memory");
        return;
    }
    s->password_misses = 0;
    s->locked_lines = 0;
    if (chat_password_required(c)) {
        s->state = SESSION_UNREGISTERED;   /* no nick, no room, no history until /pass */
        line_open_locked(c, slot);
        return;
    }
    chat_line_admit(c, slot);
}

void chat_line_admit(chat *c, uint32_t slot)
{
    session *s = &c->sessions[slot];
    char nick[CHAT_NAME_MAX + 1];
    size_t nick_len = guest_nick(c, s->conn_id, 1, nick);
    nick_set(s, nick, nick_len);
    nick_link(c, slot);
    s->state = SESSION_LIVE;
    line_open(c, slot);
}

int chat_password_ok(const chat *c, const char *given, size_t n)
{
    if (!chat_password_required(c))
        return 1;
    /* every byte of the given text is looked at, whatever matched before */
    unsigned diff = (unsigned)(n != c->password_len);
    for (size_t i = 0; i < n; i++)
        diff |= (unsigned char)given[i] ^ (unsigned char)c->password[i < c->password_len ? i : 0];
    return diff == 0;
}

void chat_session_line(chat *c, uint32_t slot, const char *line, size_t len,
                       int truncated, int64_t now_ms)
{
    if (!c)
        return;
    effects_reset(c);
    if (slot >= c->max_slots || !line)
        return;
    session *s = &c->sessions[slot];
    if (s->state != SESSION_LIVE && s->state != SESSION_UNREGISTERED)
        return;   /* closing: whatever else it sent is dropped */
    if (len > TEXT_MAX_LINE) {
        len = chat_cut(line, len, TEXT_MAX_LINE);
        truncated = 1;
    }
    if (text_is_blank(line, len))
        return;
    if (s->dialect == CHAT_DIALECT_IRC)
        irc_input(c, slot, line, len, truncated, now_ms);
    else
        line_input(c, slot, line, len, truncated, now_ms);
}

void chat_session_tick(chat *c, uint32_t slot, int64_t idle_ms)
{
    if (!c)
        return;
    effects_reset(c);
    if (slot >= c->max_slots)
        return;
    session *s = &c->sessions[slot];
    if ((s->state == SESSION_LIVE || s->state == SESSION_UNREGISTERED) && s->dialect == CHAT_DIALECT_IRC)
        irc_tick(c, slot, idle_ms);
    else if (s->state == SESSION_UNREGISTERED && s->dialect == CHAT_DIALECT_LINE)
        line_tick_locked(c, slot, idle_ms);
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
            why_len = chat_cut(reason, why_len, sizeof why - 1);
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
    if (!c || slot >= c->max_slots + c->remote_slots || c->sessions[slot].state == SESSION_FREE ||
        c->sessions[slot].nick_len == 0)
        return NULL;   /* (remote users too: the hub names them in a gone record) */
    return c->sessions[slot].nick;
}

const char *chat_session_room(const chat *c, uint32_t slot)
{
    if (!c || slot >= c->max_slots || c->sessions[slot].state == SESSION_FREE)
        return NULL;
    uint32_t ri = chat_first_room(c, slot);
    return ri == NONE ? NULL : c->rooms[ri].name;
}

int chat_irc_first_line(const char *line, size_t len)
{
    args a = { line, len };
    args w = chat_next_word(&a);
    return chat_word_is(w.p, w.n, "cap") || chat_word_is(w.p, w.n, "nick") ||
           chat_word_is(w.p, w.n, "user") || chat_word_is(w.p, w.n, "pass");
}

chat_dialect chat_session_dialect(const chat *c, uint32_t slot)
{
    if (!c || slot >= c->max_slots)
        return CHAT_DIALECT_LINE;
    return (chat_dialect)c->sessions[slot].dialect;
}

chat_form chat_session_form(const chat *c, uint32_t slot)
{
    if (!c || slot >= c->max_slots)
        return CHAT_FORM_LINE;
    return (chat_form)c->sessions[slot].form;
}

int chat_session_echoes(const chat *c, uint32_t slot, const chat_event *ev)
{
    if (!c || slot >= c->max_slots)
        return 0;
    const session *s = &c->sessions[slot];
    if (s->dialect == CHAT_DIALECT_IRC)
        return irc_echoes(s, ev);
    /* A line client sees its nick and topic changes (their confirmation)
     * and "*** to bob: text" for a private message; its own lines it typed
     * itself. */
    return ev->kind == HISTORY_NICK || ev->kind == HISTORY_MSG || ev->kind == HISTORY_TOPIC;
}

void chat_room_members(const chat *c, const char *room_name, chat_member_fn fn, void *ctx)
{
    size_t n;
    if (!c || !room_name || !fn)
        return;
    for (n = 0; n <= CHAT_NAME_MAX && room_name[n] != '\0'; n++) {
    }
    if (!chat_name_valid(room_name, n))
        return;
    uint32_t ri = chat_room_find(c, room_name, n);
    if (ri == NONE)
        return;
    for (uint32_t m = c->rooms[ri].head; m != NONE; m = c->members[m].room_next)
        fn(ctx, c->members[m].slot);
}

size_t chat_render_event(const chat *c, chat_form form, const chat_event *ev, uint32_t room_index,
                         int echo, const char *at, char *out, size_t cap)
{
    sbuf b;
    if (!out || cap < 3)
        return 0;
    sb_init(&b, out, cap);
    if (form == CHAT_FORM_LINE) {
        if (line_render_event(ev, room_index, echo, &b) == 0)
            return 0;
        sb_put(&b, "\r\n", 2);
    } else {
        irc_render_event(c, form, ev, echo, at, &b);   /* complete lines */
    }
    out[b.len] = '\0';
    return b.len;
}

int chat_form_names_room(chat_form form, const chat_event *ev)
{
    return form == CHAT_FORM_LINE && ev->room_count > 1;
}

size_t chat_render_notice(const chat *c, uint32_t slot, const char *text, size_t len, char *out, size_t cap)
{
    sbuf b;
    if (!out || cap < 3)
        return 0;
    sb_init(&b, out, cap);
    if (c && slot < c->max_slots && c->sessions[slot].dialect == CHAT_DIALECT_IRC) {
        irc_render_notice(c, &c->sessions[slot], text, len, &b);
    } else {
        sb_put(&b, text, chat_cut(text, len, cap > 3 ? cap - 3 : 0));
        sb_put(&b, "\r\n", 2);
    }
    out[b.len] = '\0';
    return b.len;
}

size_t chat_render_history(const chat *c, uint32_t slot, const history_record *rec, char *out, size_t cap)
{
    sbuf b;
    if (!out || cap < 3 || !rec)
        return 0;
    sb_init(&b, out, cap);
    if (c && slot < c->max_slots && c->sessions[slot].dialect == CHAT_DIALECT_IRC) {
        irc_render_history(c, &c->sessions[slot], rec, &b);
    } else {
        b.cap -= 2;   /* room for the CRLF after a cut */
        line_render_history(rec, &b);
        b.cap += 2;
        b.full = 0;
        sb_put(&b, "\r\n", 2);
    }
    out[b.len] = '\0';
    return b.len;
}

size_t chat_render_query_mark(chat *c, uint32_t slot, const char *room_name, const char *words, int end,
                              char *out, size_t cap)
{
    sbuf b;
    if (!c || !out || cap < 3 || slot >= c->max_slots || c->sessions[slot].dialect != CHAT_DIALECT_IRC)
        return 0;
    sb_init(&b, out, cap);
    irc_render_query_mark(c, &c->sessions[slot], room_name, words, end, &b);
    out[b.len] = '\0';
    return b.len;
}

size_t chat_format_history(const history_record *rec, char *out, size_t cap)
{
    sbuf b;
    if (!out || cap == 0)
        return 0;
    sb_init(&b, out, cap);
    if (rec)
        line_render_history(rec, &b);
    out[b.len] = '\0';
    return b.len;
}

/* ---- cluster mode: users of other nodes (chat.h) ---- */

uint32_t chat_remote_find(const chat *c, const char *node, uint64_t epoch, uint64_t sid)
{
    /* remote users are few per node and looked up once per record: a scan
     * of the remote slots in use would do, but the nick chain is shorter
     * when the record names the user's nick; this is the general case */
    for (uint32_t i = c->max_slots; i < c->max_slots + c->remote_slots; i++) {
        const session *s = &c->sessions[i];
        if (s->remote && s->sid == sid && s->epoch == epoch && strcmp(s->node, node) == 0)
            return i;
    }
    return NONE;
}

int chat_slot_is_remote(const chat *c, uint32_t slot)
{
    return slot >= c->max_slots && slot < c->max_slots + c->remote_slots && c->sessions[slot].remote;
}

uint32_t chat_nick_holder(const chat *c, const char *nick)
{
    size_t n = strlen(nick);
    return chat_name_valid(nick, n) ? chat_nick_find(c, nick, n) : NONE;
}

int chat_remote_join(chat *c, const char *node, uint64_t epoch, uint64_t sid, const char *nick, const char *room_name)
{
    size_t nn = strlen(nick), rn = strlen(room_name), node_len = strlen(node);
    if (!chat_name_valid(nick, nn) || !chat_name_valid(room_name, rn) || node_len == 0 || node_len > CHAT_NAME_MAX)
        return -1;
    uint32_t slot = chat_remote_find(c, node, epoch, sid);
    if (slot == NONE) {
        if (chat_nick_find(c, nick, nn) != NONE)
            return CHAT_REMOTE_IGNORED;
        if (c->remote_free_count == 0)
            return -1;
        slot = c->remote_free[--c->remote_free_count];
        session *s = &c->sessions[slot];
        memset(s, 0, sizeof *s);
        s->first_member = s->nick_next = NONE;
        s->remote = 1;
        s->state = SESSION_LIVE;
        s->dialect = CHAT_DIALECT_LINE;
        memcpy(s->node, node, node_len + 1);
        s->epoch = epoch;
        s->sid = sid;
        nick_set(s, nick, nn);
        nick_link(c, slot);
    }
    session *s = &c->sessions[slot];
    uint32_t ri = chat_room_find(c, room_name, rn);
    if (ri != NONE && chat_member_of(c, slot, ri) != NONE)
        return CHAT_REMOTE_JOINED;
    if (s->room_count >= CHAT_ROOMS_PER_SESSION)
        return -1;
    int created = ri == NONE;
    if (created)
        ri = room_create(c, room_name, rn);
    if (ri == NONE || member_add(c, slot, ri) != 0) {
        if (created && ri != NONE)
            room_destroy(c, ri);
        return -1;
    }
    return CHAT_REMOTE_JOINED;
}

static void remote_forget(chat *c, uint32_t slot)
{
    session *s = &c->sessions[slot];
    while (s->first_member != NONE)
        member_remove(c, s->first_member);
    nick_unlink(c, slot);
    memset(s, 0, sizeof *s);
    s->first_member = s->nick_next = NONE;
    c->remote_free[c->remote_free_count++] = slot;
}

void chat_remote_leave(chat *c, uint32_t slot, const char *room_name, int quit)
{
    if (!chat_slot_is_remote(c, slot))
        return;
    if (quit) {
        remote_forget(c, slot);
        return;
    }
    uint32_t ri = chat_room_find(c, room_name, strlen(room_name));
    uint32_t mi = ri == NONE ? NONE : chat_member_of(c, slot, ri);
    if (mi != NONE)
        member_remove(c, mi);
}

int chat_remote_nick(chat *c, uint32_t slot, const char *nick)
{
    size_t n = strlen(nick);
    if (!chat_slot_is_remote(c, slot) || !chat_name_valid(nick, n))
        return -1;
    uint32_t holder = chat_nick_find(c, nick, n);
    if (holder != NONE && holder != slot)
        return CHAT_REMOTE_IGNORED;
    session *s = &c->sessions[slot];
    nick_unlink(c, slot);
    nick_set(s, nick, n);
    nick_link(c, slot);
    return CHAT_REMOTE_JOINED;
}

void chat_remote_node_users(chat *c, const char *node, uint64_t epoch, int drop, chat_remote_fn fn, void *ctx)
{
    for (uint32_t i = c->max_slots; i < c->max_slots + c->remote_slots; i++) {
        session *s = &c->sessions[i];
        if (!s->remote || s->epoch != epoch || strcmp(s->node, node) != 0)
            continue;
        if (fn)
            fn(ctx, i);
        if (drop)
            remote_forget(c, i);
    }
}

const char *chat_remote_node(const chat *c, uint32_t slot, uint64_t *epoch, uint64_t *sid)
{
    if (!chat_slot_is_remote(c, slot))
        return NULL;
    *epoch = c->sessions[slot].epoch;
    *sid = c->sessions[slot].sid;
    return c->sessions[slot].node;
}

uint32_t chat_session_rooms(const chat *c, uint32_t slot, const char **rooms, uint32_t max)
{
    uint32_t n = 0;
    if (slot >= c->max_slots + c->remote_slots)
        return 0;
    for (uint32_t m = c->sessions[slot].first_member; m != NONE && n < max; m = c->members[m].sess_next)
        rooms[n++] = c->rooms[c->members[m].room].name;
    return n;
}

void chat_session_lost_nick(chat *c, uint32_t slot)
{
    effects_reset(c);
    if (slot >= c->max_slots || c->sessions[slot].state != SESSION_LIVE)
        return;
    session *s = &c->sessions[slot];
    char lost[CHAT_NAME_MAX + 1], nick[CHAT_NAME_MAX + 1];
    memcpy(lost, s->nick, (size_t)s->nick_len + 1);
    size_t n = guest_nick(c, s->conn_id, 0, nick);
    /* the reason first, then the nick change (an IRC client learns its new
     * nick from the NICK echo alone) */
    if (s->dialect == CHAT_DIALECT_LINE) {
        sbuf b;
        sb_open(c, &b);
        sb_puts(&b, "*** ");
        sb_puts(&b, lost);
        sb_puts(&b, " was taken on another node of the cluster at the same moment; you are now ");
        sb_puts(&b, nick);
        chat_reply_built(c, slot, &b);
    }
    (void)chat_op_nick(c, slot, nick, n);   /* a free guest nick: it cannot fail */
}

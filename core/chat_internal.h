/* chat_internal: what the chat engine (chat.c) shares with its dialects
 * (dialect_line.c, dialect_irc.c), and nothing else includes.
 *
 * The engine owns the state and the operations that change it (a nick
 * change, a join, a part, saying something, a private message, leaving);
 * each operation checks what it can and returns a chat_result, and emits the
 * protocol-neutral event for everyone else.  A dialect reads its client's
 * lines, calls the operations, and writes the replies in its own words.
 */
#ifndef CHATRELAY_CHAT_INTERNAL_H
#define CHATRELAY_CHAT_INTERNAL_H

#include "chat.h"

#include <stddef.h>
#include <stdint.h>

#include "text.h"

#define CHAT_ARENA_BYTES (64u * 1024u)  /* worst single call (IRC WHO/NAMES of a full room) needs under 24 KiB */
#define CHAT_EFFECTS_MAX 160u           /* worst single call (IRC registration, WHO of 100) needs under 120 */
#define CHAT_LIST_SHOWN 100u            /* /who, /rooms, WHO and LIST name at most this many entries */
#define CHAT_REASON_MAX 200u            /* a /quit reason is cut here (it is logged and stored) */
#define CHAT_ECHO_MAX 32u               /* bad input quoted back in an error is cut here */
#define CHAT_SERVER_NAME_MAX 64u
#define CHAT_PASSWORD_MAX 255u
#define CHAT_PASSWORD_TRIES 3u   /* wrong passwords before a line client is disconnected */
#define CHAT_LOCKED_LINES 10u    /* lines of any kind a line client may send before it gives the password */
#define CHAT_LOCKED_MS 60000     /* silence before the password that disconnects (as an IRC registration) */
#define CHAT_LOBBY_NAME "lobby"
#define CHAT_LOBBY 0u                   /* rooms[0] is the lobby, which never goes away */
#define NONE UINT32_MAX
#define TOKEN 1000                      /* flood buckets count thousandths of a line */

enum { SESSION_FREE = 0, SESSION_UNREGISTERED, SESSION_LIVE, SESSION_CLOSING };

typedef struct irc_state irc_state;    /* dialect_irc.c */

typedef struct session {
    uint8_t state;
    uint8_t dialect;                 /* chat_dialect */
    uint8_t nick_len;
    uint8_t room_count;
    uint8_t form;                    /* chat_form: how events reach it, kept with its dialect and
                                      * caps (read once per delivery) */
    char nick[CHAT_NAME_MAX + 1];
    uint32_t conn_id;
    uint32_t first_member;           /* its memberships, in joining order (member.sess_next) */
    uint32_t nick_next;              /* nick hash chain */
    uint32_t flood_refused;          /* lines refused since the last accepted one */
    uint8_t password_misses;         /* wrong /pass attempts of a line client not yet admitted */
    uint8_t locked_lines;            /* lines it sent before the password */
    int64_t flood_tokens;            /* in 1/TOKEN lines */
    int64_t flood_last_ms;
    char *quit_reason;               /* "quit: <message>", from /quit until chat_session_close */
    irc_state *irc;                  /* IRC sessions only */
    /* cluster mode: a user of another node (slots from max_slots on) */
    uint8_t remote;
    char node[CHAT_NAME_MAX + 1];
    uint64_t epoch, sid;             /* the node's run and the user's connection there */
} session;

/* One session in one room: in the room's list (joining order) and the session's. */
typedef struct member {
    uint32_t slot, room;
    uint32_t room_prev, room_next;
    uint32_t sess_next;              /* also the free-list link */
} member;

typedef struct room {
    uint8_t name_len;
    uint8_t live;
    char name[CHAT_NAME_MAX + 1];
    uint32_t members;
    uint32_t head, tail;             /* member nodes */
    uint32_t hash_next;              /* room hash chain */
    uint32_t prev, next;             /* live rooms in creation order; free list uses next */
} room;

/* A room's topic outlives the room (rooms go when their last member
 * leaves; the topic is there when someone comes back), so topics live in a
 * table of their own, looked up by name.  Topics are few: a linear table. */
#define CHAT_TOPIC_MAX 300u
typedef struct chat_topic {
    char room[CHAT_NAME_MAX + 1];
    char *text;                      /* malloc'd, never empty */
} chat_topic;

struct chat {
    chat_config cfg;
    chat_topic *topics;
    uint32_t topic_count, topic_cap;
    char server_name[CHAT_SERVER_NAME_MAX + 1];
    char irc_name[CHAT_SERVER_NAME_MAX + 1];   /* the server name as one IRC token */
    char password[CHAT_PASSWORD_MAX + 1];      /* "" = none (chat_config.password) */
    size_t password_len;
    uint32_t max_slots;              /* local sessions: slots 0 .. max_slots-1 */
    uint32_t remote_slots;           /* cluster mode: users of other nodes, slots max_slots .. + remote_slots-1 */
    uint32_t *remote_free, remote_free_count;
    session *sessions;               /* max_slots + remote_slots */
    room *rooms;                     /* grows: every non-lobby room has a member */
    uint32_t room_cap;
    uint32_t room_free;
    uint32_t room_first, room_last;
    uint32_t room_count;
    member *members;                 /* grows */
    uint32_t member_cap, member_free;
    uint32_t *nick_buckets;
    uint32_t *room_buckets;
    uint32_t bucket_mask;
    uint64_t hash_seed;
    size_t effect_count;
    int effects_lost;                /* effects or text past the bounds were dropped (asserted against) */
    chat_effect effects[CHAT_EFFECTS_MAX];
    chat_effect overflow_effect;     /* absorbs effects past the bound (never expected) */
    size_t arena_used;
    char arena[CHAT_ARENA_BYTES];
};

/* ---- names and words ---- */
int chat_name_valid(const char *s, size_t n);
int chat_name_equal(const char *a, size_t an, const char *b, size_t bn);   /* ASCII case-insensitive */
int chat_word_is(const char *w, size_t wn, const char *lower);             /* w equals lower, any case */
size_t chat_cut(const char *s, size_t len, size_t max);                   /* never inside a character */
size_t chat_format_u64(char *out, uint64_t v);                             /* >= 20 bytes, no NUL */

typedef struct args {
    const char *p;
    size_t n;
} args;
args chat_next_word(args *a);         /* splits at blanks, skips the blanks after */

/* ---- string builder: into the effect arena, or into a caller's buffer ---- */
typedef struct sbuf {
    char *p;
    size_t len, cap;   /* cap excludes the terminating NUL */
    int full;          /* something did not fit: later puts are dropped so the text stays a prefix */
} sbuf;
void sb_open(chat *c, sbuf *b);
void sb_init(sbuf *b, char *out, size_t cap);       /* a caller's buffer (cap >= 1: room for the NUL) */
const char *sb_close(chat *c, sbuf *b, size_t *len); /* keeps the text in the arena */
void sb_put(sbuf *b, const char *s, size_t n);       /* s valid UTF-8 */
void sb_puts(sbuf *b, const char *s);
void sb_put_u64(sbuf *b, uint64_t v);
void sb_put_echo(sbuf *b, const char *s, size_t n);  /* untrusted text quoted in an error, cut */
void sb_put_clean(sbuf *b, const char *s, size_t n); /* text from the database: cleaned again */
const char *chat_copy(chat *c, const char *s, size_t n);

/* ---- effects ---- */
chat_effect *chat_effect_add(chat *c, chat_effect_kind kind, uint32_t slot);
void chat_reply(chat *c, uint32_t slot, const char *text);   /* a constant text */
void chat_reply_built(chat *c, uint32_t slot, sbuf *b);
void chat_close(chat *c, uint32_t slot, const char *text, size_t len, const char *reason);
void chat_query(chat *c, uint32_t slot, uint32_t room, const char *words, size_t words_len, int limit);
/* The replay of a room just joined (see chat_effect.on_join): range for IRC (messages only). */
void chat_query_on_join(chat *c, uint32_t slot, uint32_t room, int limit, int range);
void chat_query_range(chat *c, uint32_t slot, uint32_t room, const history_bound *lo, const history_bound *hi,
                      int limit, int from_newest);

/* ---- lookups ---- */
uint32_t chat_nick_find(const chat *c, const char *s, size_t n);
uint32_t chat_room_find(const chat *c, const char *s, size_t n);
uint32_t chat_member_of(const chat *c, uint32_t slot, uint32_t room);   /* member index or NONE */
/* The session's only room (line sessions) or its first (NONE if in none). */
uint32_t chat_first_room(const chat *c, uint32_t slot);

/* ---- operations: the state changes, each with its events ---- */
typedef enum chat_result {
    CHAT_OK = 0,
    CHAT_INVALID_NAME,   /* not 1-32 of [A-Za-z0-9_-] */
    CHAT_TAKEN,          /* the nick belongs to someone else */
    CHAT_SAME,           /* nothing to change (already that nick, already in that room) */
    CHAT_TOO_MANY,       /* CHAT_ROOMS_PER_SESSION reached */
    CHAT_NOT_IN,         /* not a member of that room */
    CHAT_NO_SUCH,        /* no such nick */
    CHAT_SELF            /* a private message to oneself */
} chat_result;

/* Floods: 1 if the session may act now (a token was spent); else the
 * refusal (or the kick) has been emitted in the session's dialect. */
int chat_flood_take(chat *c, uint32_t slot, int64_t now_ms);
void chat_flood_charge(chat *c, uint32_t slot, int lines);  /* extra cost (a search) */
int chat_flood_on(const chat *c);

/* Registers the session under nick (IRC registration; line sessions are
 * registered at open): it joins nothing. */
chat_result chat_op_register(chat *c, uint32_t slot, const char *nick, size_t n);
/* Nick change, announced to the session's rooms and echoed to it. */
chat_result chat_op_nick(chat *c, uint32_t slot, const char *nick, size_t n);
/* Joins room (created if new).  *room_out: its index.  The join is announced
 * to the room (and echoed to the joiner where its dialect wants it). */
chat_result chat_op_join(chat *c, uint32_t slot, const char *name, size_t n, uint32_t *room_out);
/* Leaves room with reason (stored as the leave's body). */
chat_result chat_op_part(chat *c, uint32_t slot, uint32_t room, const char *reason, size_t reason_len);
/* Says text (SAY or ME, notice for IRC NOTICE) in room. */
chat_result chat_op_say(chat *c, uint32_t slot, uint32_t room, history_kind kind, int notice,
                        const char *text, size_t len);
/* Sets (or, with len 0, clears) room's topic, announced to its members. */
chat_result chat_op_topic(chat *c, uint32_t slot, uint32_t room, const char *text, size_t len);
/* The room's topic, or NULL. */
const char *chat_topic_of(const chat *c, uint32_t room);
/* A private message to nick; *to_out: the recipient. */
chat_result chat_op_msg(chat *c, uint32_t slot, const char *nick, size_t n, int notice,
                        const char *text, size_t len, uint32_t *to_out);
/* The session asked to leave: the close effect with `text` to send first;
 * the leave is announced by chat_session_close (with "quit" or "quit: why"). */
void chat_op_quit(chat *c, uint32_t slot, const char *why, size_t why_len, const char *text);

/* ---- the server password (--password-file) ---- */
/* A password is configured: a line client is admitted by /pass, an IRC
 * client registers only after PASS gave it. */
static inline int chat_password_required(const chat *c) { return c->password_len > 0; }
/* given is the password (compared in time that depends on its length only). */
int chat_password_ok(const chat *c, const char *given, size_t n);
/* A line client that gave the password: its guest nick, the lobby, the greeting. */
void chat_line_admit(chat *c, uint32_t slot);

/* ---- the dialects ---- */
void line_open(chat *c, uint32_t slot);
void line_open_locked(chat *c, uint32_t slot);   /* the greeting that asks for the password */
void line_tick_locked(chat *c, uint32_t slot, int64_t idle_ms);   /* its timeout */
void line_input(chat *c, uint32_t slot, const char *line, size_t len, int truncated, int64_t now_ms);
void line_flood_refused(chat *c, uint32_t slot, int kicked);
size_t line_render_event(const chat_event *ev, uint32_t room_index, int echo, sbuf *b);
size_t line_render_history(const history_record *rec, sbuf *b);

int irc_open(chat *c, uint32_t slot);            /* -1: out of memory */
void irc_free(irc_state *st);
void irc_input(chat *c, uint32_t slot, const char *line, size_t len, int truncated, int64_t now_ms);
void irc_tick(chat *c, uint32_t slot, int64_t idle_ms);
void irc_flood_refused(chat *c, uint32_t slot, int kicked);
chat_form irc_form(const session *s);
int irc_echoes(const session *s, const chat_event *ev);
size_t irc_render_event(const chat *c, chat_form form, const chat_event *ev, int echo, const char *at, sbuf *b);
size_t irc_render_notice(const chat *c, const session *s, const char *text, size_t len, sbuf *b);
size_t irc_render_history(const chat *c, const session *s, const history_record *rec, sbuf *b);
size_t irc_render_query_mark(const chat *c, session *s, const char *room_name, const char *words, int end, sbuf *b);

#endif

/* chat: the chat engine: who is here, under which nick, in which rooms, and
 * what each thing someone does means for everyone else.
 *
 * Owns: each session's nick (guestN at connect, or what an IRC client asked
 * for), its dialect and its rooms (a line client is in exactly one room,
 * lobby at connect; an IRC client in 0 to CHAT_ROOMS_PER_SESSION); the rooms
 * and their members and topics; flood buckets; and the turning of inputs
 * into a list of effects that the hub executes.  Events (someone said X in
 * rooms R, joined, left, renamed, a private message, a topic) are
 * protocol-neutral: the hub renders each one once per dialect in use with
 * chat_render_event.  Replies to one session are already in its dialect.
 * The dialects themselves (what a line means, every text the server writes)
 * are dialect_line.c and dialect_irc.c, behind chat_internal.h.
 * Never: touches sockets, Win32 or SQLite.  Portable C11.
 */
#ifndef CHATRELAY_CHAT_H
#define CHATRELAY_CHAT_H

#include <stddef.h>
#include <stdint.h>

#include "../storage/history.h"   /* history_kind (the one typed record kind) and history_record */

#define CHAT_NAME_MAX 32          /* nick and room names: 1-32 of [A-Za-z0-9_-] */
#define CHAT_ROOMS_PER_SESSION 20 /* IRC's CHANLIMIT; a line client is in one */
#define CHAT_HISTORY_MAX 200      /* /history N is capped here */
#define CHAT_SEARCH_MAX 20
#define CHAT_NO_SLOT UINT32_MAX

typedef struct chat_config {
    const char *server_name;   /* shown in the greeting */
    int replay;                /* lines replayed on connect and on /join (0 = none) */
    int flood_burst;           /* token bucket size in lines; 0 = flood control off */
    int flood_rate;            /* lines per second refilled */
    int flood_kick;            /* refused lines within one burst window before disconnect; 0 = never */
    int log_private;           /* store /msg with kind "msg" */
    const char *motd;          /* IRC message of the day (NULL = none: 422) */
    int irc_ping_ms;           /* ping a silent IRC client after this, cut it after twice (0 = 90 s) */
    uint32_t remote_slots;     /* cluster mode: how many users of other nodes it can know (0 = none) */
    const char *password;      /* --password-file: what a client must give first (NULL or "" = none);
                                * chat keeps a copy, wiped by chat_destroy */
} chat_config;

/* How a session speaks.  Detected by the hub from the first line. */
typedef enum chat_dialect {
    CHAT_DIALECT_LINE = 0,     /* docs/PROTOCOL.md: nc, telnet, PuTTY */
    CHAT_DIALECT_IRC,          /* docs/PROTOCOL.md "IRC": irssi, HexChat, mIRC... */
    CHAT_DIALECT_COUNT
} chat_dialect;

/* The byte forms an event can take: a broadcast renders each form in use once. */
typedef enum chat_form {
    CHAT_FORM_LINE = 0,
    CHAT_FORM_IRC,             /* IRC without tags */
    CHAT_FORM_IRC_TIME,        /* IRC with the server-time tag */
    CHAT_FORM_IRC_MSGID,       /* IRC with the msgid tag (message-tags) */
    CHAT_FORM_IRC_TIME_MSGID,  /* both */
    CHAT_FORM_COUNT
} chat_form;

/* One thing that happened, for everyone it concerns. */
typedef struct chat_event {
    history_kind kind;         /* SAY ME MSG JOIN LEAVE NICK TOPIC */
    int64_t id;                /* its (first) row id once stored, else 0: IRC's msgid */
    uint8_t quit;              /* LEAVE: the session left the server, not only these rooms */
    uint8_t notice;            /* SAY/MSG sent as an IRC NOTICE (stored as say/msg) */
    const char *nick;          /* who did it (before the change, for NICK) */
    const char *target;        /* MSG: the recipient's nick */
    const char *body;          /* SAY/ME/MSG: the text; LEAVE: the reason; NICK: the new nick; TOPIC: the topic */
    size_t body_len;
    uint32_t room_count;       /* rooms it happened in (MSG: 0) */
    const char *rooms[CHAT_ROOMS_PER_SESSION];
} chat_event;

typedef enum chat_effect_kind {
    CHAT_REPLY,      /* `text` (one line, no CRLF, in the session's dialect) to session `slot` */
    CHAT_EVENT,      /* `event` by session `slot`: stored first (one row per room) when `stored`,
                      * then delivered to the members of its rooms but the actor, to `to_slot`
                      * (MSG), and to the actor in its dialect's echo form (chat_render_event) */
    CHAT_QUERY,      /* answer session `slot` from history: recent lines or a search of `room` */
    CHAT_CLOSE       /* close session `slot`, after sending it `text` if not NULL; reason for the log */
} chat_effect_kind;

typedef struct chat_effect {
    chat_effect_kind kind;
    uint32_t slot;          /* the session it is for, or the actor of an EVENT */
    uint32_t to_slot;       /* EVENT MSG: recipient */
    const char *text;       /* REPLY/CLOSE */
    size_t text_len;
    chat_event event;       /* EVENT */
    uint8_t stored;         /* EVENT: must be in the history file before anyone sees it */
    const char *room;       /* QUERY */
    const char *words;      /* QUERY: NULL = recent lines (or a range), else a search */
    int limit;              /* QUERY */
    uint8_t on_join;        /* QUERY: the replay of a room just joined: what was stored when the
                             * session came (else: what is stored once the lines before the
                             * command are, so a line said just before /history is in it) */
    uint8_t range;          /* QUERY: the lines between lo and hi (IRC CHATHISTORY) */
    uint8_t from_newest;    /* QUERY range: the newest `limit` of them, else the oldest */
    history_bound lo, hi;   /* QUERY range (the `at` strings live in the arena) */
    const char *reason;     /* CLOSE: "quit", "flood", ... for the log and the leave record */
} chat_effect;

typedef struct chat chat;

chat *chat_create(const chat_config *cfg, uint32_t max_slots);
void chat_destroy(chat *c);

/* Every call below replaces the effect list; read it with chat_effects before
 * the next call.  Strings in effects stay valid until the next call. */
size_t chat_effects(const chat *c, const chat_effect **out);

/* A new session in slot with connection number conn_id.  A line session is
 * guest<conn_id> (made unique if taken) in the lobby: greeting, replay, join
 * announcement.  An IRC session is nobody until it registers (no effects). */
void chat_session_open(chat *c, uint32_t slot, uint32_t conn_id, chat_dialect dialect, int64_t now_ms);
/* One cleaned line (text.h output, valid UTF-8, no controls) from slot, read
 * by the session's dialect.  truncated: the client sent more than the
 * maximum line length (tell them). */
void chat_session_line(chat *c, uint32_t slot, const char *line, size_t len,
                       int truncated, int64_t now_ms);
/* A timer tick for slot (IRC: ping a silent client, cut it after the ping
 * timeout).  idle_ms: how long the client has sent nothing. */
void chat_session_tick(chat *c, uint32_t slot, int64_t idle_ms);
/* The session is gone (reason: "quit", "timeout", "slow consumer", "flood",
 * "server stopping", "connection lost"...): leave announcement to its rooms. */
void chat_session_close(chat *c, uint32_t slot, const char *reason);

/* The session's current nick / first room (for logs and tests); NULL if slot
 * is free (or, for the room, in none). */
const char *chat_session_nick(const chat *c, uint32_t slot);
const char *chat_session_room(const chat *c, uint32_t slot);
/* 1 if a connection's first line is an IRC registration command (CAP,
 * NICK, USER, PASS, any case, no slash): the session speaks IRC. */
int chat_irc_first_line(const char *line, size_t len);
chat_dialect chat_session_dialect(const chat *c, uint32_t slot);
/* The form in which events reach slot (its dialect and capabilities). */
chat_form chat_session_form(const chat *c, uint32_t slot);
/* 1 if the actor of an event of kind gets it back (its echo form). */
int chat_session_echoes(const chat *c, uint32_t slot, const chat_event *ev);

/* ---- cluster mode: users of other nodes -------------------------------
 * Known from the stream's records, in stream order, so every node knows the
 * same ones: they have a nick (in the one namespace: a local /nick cannot
 * take theirs) and rooms (so /who, NAMES and WHO list them), no connection
 * and no dialect; they occupy slots from max_slots on, which chat_room_members
 * reports like any member and the hub never sends to.  None of these calls
 * emits effects. */
#define CHAT_REMOTE_JOINED 1     /* applied */
#define CHAT_REMOTE_IGNORED 0    /* its nick belongs to someone else: the later claim loses */
/* The remote user (node, epoch, sid), or CHAT_NO_SLOT. */
uint32_t chat_remote_find(const chat *c, const char *node, uint64_t epoch, uint64_t sid);
/* 1 if slot is a remote user. */
int chat_slot_is_remote(const chat *c, uint32_t slot);
/* The holder of nick (local or remote), or CHAT_NO_SLOT. */
uint32_t chat_nick_holder(const chat *c, const char *nick);
/* A remote user joins room under nick (created if unknown).  Returns
 * CHAT_REMOTE_JOINED, CHAT_REMOTE_IGNORED (a new user whose nick is taken),
 * or -1 (no room for more remote users, or a bad name). */
int chat_remote_join(chat *c, const char *node, uint64_t epoch, uint64_t sid, const char *nick, const char *room);
/* A remote user leaves room (quit: all its rooms, and it is forgotten). */
void chat_remote_leave(chat *c, uint32_t slot, const char *room, int quit);
/* A remote user's new nick: CHAT_REMOTE_JOINED, or CHAT_REMOTE_IGNORED when it is taken. */
int chat_remote_nick(chat *c, uint32_t slot, const char *nick);
/* Every remote user of node whose epoch is epoch: fn(ctx, slot) for each
 * (its nick and rooms still readable), then, if drop, it is forgotten.  A
 * node that restarted, or was declared gone. */
typedef void (*chat_remote_fn)(void *ctx, uint32_t slot);
void chat_remote_node_users(chat *c, const char *node, uint64_t epoch, int drop, chat_remote_fn fn, void *ctx);
/* slot's node (NULL if it is not a remote user), its epoch and sid there. */
const char *chat_remote_node(const chat *c, uint32_t slot, uint64_t *epoch, uint64_t *sid);
/* The rooms of slot (local or remote), for a leave record. */
uint32_t chat_session_rooms(const chat *c, uint32_t slot, const char **rooms, uint32_t max);
/* A local session whose nick another node's user claimed first: it takes
 * a free guest nick (a NICK event, in the effects, with a notice why). */
void chat_session_lost_nick(chat *c, uint32_t slot);

/* A stored topic row (history_topics at start): the room's topic again. */
void chat_restore_topic(chat *c, const history_record *rec);

/* Room membership, for delivery: calls fn for every slot in room (by name,
 * case-insensitive).  A room that no longer exists has no members. */
typedef void (*chat_member_fn)(void *ctx, uint32_t slot);
void chat_room_members(const chat *c, const char *room, chat_member_fn fn, void *ctx);

/* Renders ev in form into out (capacity cap): complete lines, each ending in
 * CRLF (IRC may need several for one long line).  room: which of ev's rooms
 * the recipient sees it in (the line form names it; see
 * chat_form_names_room); echo: the actor's own copy.  at: the event's time
 * (HISTORY_TIME_LEN chars), for the server-time tag.  Returns the bytes
 * written, 0 if this form shows nothing for it. */
size_t chat_render_event(const chat *c, chat_form form, const chat_event *ev, uint32_t room_index,
                         int echo, const char *at, char *out, size_t cap);
/* 1 if form renders ev differently per room (so a multi-room event is
 * rendered once per room, still never per recipient). */
int chat_form_names_room(chat_form form, const chat_event *ev);
/* A server notice (hub texts such as "*** history unavailable...", given in
 * the line form) for slot, in its dialect; CRLF-terminated. */
size_t chat_render_notice(const chat *c, uint32_t slot, const char *text, size_t len, char *out, size_t cap);
/* One history row for slot in its dialect ("*** [2026-11-27 03:04:05] <nick> body"
 * for a line client); CRLF-terminated lines; 0 if its dialect shows no such row. */
size_t chat_render_history(const chat *c, uint32_t slot, const history_record *rec, char *out, size_t cap);
/* What frames an answer from history for slot: begin (end 0) and end (end
 * 1) of the replay of room, or of a search of it for words (NULL: a replay).
 * An IRC batch when the client negotiated batch, else notices; nothing for
 * a line client.  CRLF-terminated; 0 = nothing. */
size_t chat_render_query_mark(chat *c, uint32_t slot, const char *room_name, const char *words, int end,
                              char *out, size_t cap);
/* The line form of one history row without CRLF (for tests and logs). */
size_t chat_format_history(const history_record *rec, char *out, size_t cap);

#endif

/* chat: what a line typed by a user means: nicks, rooms, commands, flood control.
 *
 * Owns: each session's nick (guestN at connect), room (lobby at connect) and
 * flood bucket; the rooms and their members; the parsing of commands (/nick
 * /join /rooms /who /me /msg /history /search /help /quit, case-insensitive,
 * "//text" sends "/text"); and every text the server writes to clients
 * (chat lines, notices, errors, history lines).
 * Never: touches sockets, Win32 or SQLite.  It turns inputs into a list of
 * effects that the hub executes (persist + deliver, reply, close, queries).
 * Portable C11.
 *
 * Wire forms (CRLF is appended by the hub):
 *   chat "<nick> text", action "* nick text", private "*nick* text",
 *   notices and replies "*** ...", history lines "*** [YYYY-MM-DD HH:MM:SS] <form above>".
 */
#ifndef CHATRELAY_CHAT_H
#define CHATRELAY_CHAT_H

#include <stddef.h>
#include <stdint.h>

#include "../storage/history.h"   /* history_record, for chat_format_history */

#define CHAT_NAME_MAX 32          /* nick and room names: 1-32 of [A-Za-z0-9_-] */
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
} chat_config;

typedef enum chat_effect_kind {
    CHAT_REPLY,      /* text to session `slot` only, now */
    CHAT_ROOM,       /* text to every member of `room` except `except_slot`; persisted first if kind != NULL */
    CHAT_PRIVATE,    /* text to session `to_slot`; persisted first if kind != NULL (kind "msg");
                      * then `confirm` to the sender, only once the message went out */
    CHAT_HISTORY,    /* send session `slot` the last `limit` history lines of `room` */
    CHAT_SEARCH,     /* send session `slot` up to `limit` lines of `room` matching `words` */
    CHAT_CLOSE       /* close session `slot`, after sending it `text` if not NULL; reason for the log */
} chat_effect_kind;

typedef struct chat_effect {
    chat_effect_kind kind;
    uint32_t slot;          /* REPLY/HISTORY/SEARCH/CLOSE: the session; ROOM/PRIVATE: the sender */
    uint32_t to_slot;       /* PRIVATE: recipient */
    uint32_t except_slot;   /* ROOM: not delivered to this session (CHAT_NO_SLOT = none) */
    const char *text;       /* wire text without CRLF (REPLY/ROOM/PRIVATE/CLOSE notice) */
    size_t text_len;
    /* What to store (ROOM/PRIVATE); HISTORY_KIND_NONE = not stored: */
    history_kind record_kind;
    const char *room;       /* ROOM/HISTORY/SEARCH: room name; stored room */
    const char *nick;       /* stored nick */
    const char *body;       /* stored body */
    size_t body_len;
    const char *words;      /* SEARCH */
    int limit;              /* HISTORY/SEARCH */
    const char *reason;     /* CLOSE: "quit", "flood", ... for the log and the leave record */
    const char *confirm;    /* PRIVATE: the sender's confirmation ("*** to bob: text"): delivered
                             * behind the message, never if the message is refused or dropped */
    size_t confirm_len;
} chat_effect;

typedef struct chat chat;

chat *chat_create(const chat_config *cfg, uint32_t max_slots);
void chat_destroy(chat *c);

/* Every call below replaces the effect list; read it with chat_effects before
 * the next call.  Strings in effects stay valid until the next call. */
size_t chat_effects(const chat *c, const chat_effect **out);

/* A new session in slot with connection number conn_id (its nick is guest<conn_id>,
 * made unique if taken): greeting replies, a HISTORY replay, the join announcement. */
void chat_session_open(chat *c, uint32_t slot, uint32_t conn_id, int64_t now_ms);
/* One cleaned line (text.h output, valid UTF-8, no controls) from slot.
 * truncated: the client sent more than the maximum line length (tell them). */
void chat_session_line(chat *c, uint32_t slot, const char *line, size_t len,
                       int truncated, int64_t now_ms);
/* The session is gone (reason: "quit", "timeout", "slow consumer", "flood",
 * "server stopping", "connection lost"...): leave announcement to its room. */
void chat_session_close(chat *c, uint32_t slot, const char *reason);

/* The session's current nick / room (for logs and tests); NULL if slot is free. */
const char *chat_session_nick(const chat *c, uint32_t slot);
const char *chat_session_room(const chat *c, uint32_t slot);

/* Room membership, for delivery: calls fn for every slot in room (by name,
 * case-insensitive).  A room that no longer exists has no members. */
typedef void (*chat_member_fn)(void *ctx, uint32_t slot);
void chat_room_members(const chat *c, const char *room, chat_member_fn fn, void *ctx);

/* Formats one history row for a client: "*** [2026-11-27 03:04:05] <nick> body"
 * (or the action/join/leave/nick form).  Returns the length written into out
 * (capacity cap, NUL-terminated, truncated at a character boundary). */
size_t chat_format_history(const history_record *rec, char *out, size_t cap);

#endif

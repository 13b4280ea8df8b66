/* hub: the relay's portable engine.  See hub.h.
 *
 * Data flow for one line: hub_session_input -> framer_feed -> on_line ->
 * text_clean -> chat_session_line -> effects.  A CHAT_ROOM/CHAT_PRIVATE effect
 * becomes an outbox entry; hub_turn commits every unstored entry of the turn in
 * one transaction and then delivers entries from the head of the outbox in
 * order, stopping at the first one not yet stored (store-then-forward).
 * Delivery encodes the line once (msgbuf) and pushes it on each recipient's
 * sendq; the shell gathers each queue into one WSASend.
 */
#include "hub.h"

#include "clock.h"
#include "framing.h"
#include "json.h"
#include "invariant.h"
#include "log.h"
#include "ring.h"
#include "text.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HUB_IP_MAX 48
/* /quit reasons are up to 200 bytes (chat cuts them), plus room for "quit: ". */
#define HUB_REASON_MAX 256

/* Lifetime of a slot: free (conn_id 0) -> open (hub_session_open) -> closing
 * (the hub asked the shell to close it, or the shell reported it gone: input
 * is ignored and nothing more is queued) -> free again (hub_session_closed,
 * called by the shell once no overlapped operation is outstanding). */
typedef struct hub_slot {
    uint32_t conn_id;           /* 0 = free */
    uint8_t closing;
    uint8_t in_flush_list;
    uint8_t in_close_list;
    char close_reason[HUB_REASON_MAX]; /* a copy: chat's strings do not live that long */
    uint8_t in_later_list;
    uint8_t sent_since_check;   /* a send completed with bytes since the last slow check */
    uint8_t detecting;          /* the dialect is not known yet: waiting for a first line */
    uint8_t irc;                /* the session speaks IRC (its cleaning keeps the CTCP delimiter) */
    uint32_t ob_pending;        /* outbox entries by or for this connection that will output to it: its replies queue behind them */
    uint32_t queries;           /* queries asked and not answered yet (bounded by LATER_MAX_QUERIES) */
    uint32_t deliver_stamp;     /* the last room delivery that reached it (one copy per event) */
    uint64_t open_seq;          /* when its dialect was known (it was greeted), in open order */
    int64_t detect_until;
    int64_t last_input_ms;
    int64_t over_since;         /* when the queue was first seen over max_queue_bytes without progress; 0 = not */
    char ip[HUB_IP_MAX];
    sendq q;
    /* Output that must wait its turn, in order: queries (tag LATER_QUERY) and
     * everything queued for the session after one (see "the later list"). */
    sendq later;
    framer fr;
} hub_slot;

/* What waits in the outbox, in arrival order: an event to store and then
 * deliver, or a reply or query for one session that must not overtake that
 * session's own earlier events (an IRC client learns its nick from the NICK
 * echo: the reply to its next command must come after it). */
enum { ENTRY_EVENT, ENTRY_REPLY, ENTRY_QUERY, ENTRY_CLOSE };

typedef struct outbox_entry {
    uint8_t type;
    uint8_t persist;            /* must be stored before delivery */
    uint8_t stored;
    uint8_t user_line;          /* say/me/msg (refused when the database is down) */
    uint8_t rejected;           /* the database refused this record: neither stored nor delivered */
    uint8_t held;               /* a commit failed while it waited: delivered as part of a backlog */
    uint8_t kind, quit, notice; /* the event's */
    uint8_t room_count;
    uint8_t pending_for_slot;   /* counted in from_slot's ob_pending: it will output to that session */
    uint8_t published;          /* cluster mode: handed to the bus, waiting to come back from the stream */
    uint64_t serial;            /* cluster mode: its message id's serial */
    int64_t published_ms;
    int64_t id;                 /* EVENT: its first row's id once stored */
    uint32_t from_slot, from_conn;  /* the actor, or the session a reply/query is for */
    uint64_t last_open;             /* sessions opened after this (open_seq) came after the event */
    uint32_t to_slot, to_conn;      /* MSG: the recipient */
    /* EVENT: "nick\0target\0body\0" then room_count "room\0", then for a
     * stored MSG the stored body "to NICK: text\0"; REPLY: the bytes to send;
     * QUERY: the later-list entry (later_query). */
    msgbuf *data;
    uint32_t target_off, body_off, body_len, rooms_off, stored_off, stored_len;
    msgbuf *wire[CHAT_FORM_COUNT];  /* the event rendered once per form, at delivery */
    const char *reason;             /* CLOSE: chat keeps it until chat_session_close */
    char at[HISTORY_TIME_LEN + 1];
} outbox_entry;

struct hub {
    hub_config cfg;
    chat *chat;
    hub_slot *slots;
    uint32_t next_conn_id;
    uint64_t open_seq;          /* counts sessions greeted (or registering): see hub_slot.open_seq */
    uint32_t open_count;

    uint32_t *flush_list, flush_count;
    uint32_t *close_list, close_count;
    uint32_t *later_list, later_count;  /* slots with a non-empty later list, in no order */
    uint32_t later_next;                /* round robin: where the next turn starts */
    int64_t next_slow_check;
    int slow_watch;                     /* some queue may be over max_queue_bytes */
    int later_budget_spent;             /* this turn's queries ran out with more waiting */
    int later_movable;                  /* a send (one done at once in the flush) made room for a
                                         * later list: the next turn must come at once */
    int password_set;                   /* --password-file: locked line sessions are ticked */
    uint32_t answering;                 /* the slot whose query is being answered, or UINT32_MAX:
                                         * its answer goes straight to the send queue, ahead of
                                         * what waits behind the query in its later list */

    outbox_entry *outbox;       /* ring, capacity a power of two */
    uint32_t ob_cap, ob_head, ob_count;
    uint32_t ob_unstored;       /* entries with persist && !stored */
    size_t ob_unstored_bytes;
    int db_failing;             /* the last commit attempt failed */
    int64_t db_failing_since;
    int bus_failing;            /* cluster mode: the bus is not taking lines (down, catching up, stalled) */
    int bus_was_ready;          /* it took lines once (before, waiting for it is the start, not an outage) */
    int stopping;               /* hub_stopping ran: the bus closing is the stop, not an outage */
    int64_t bus_failing_since;
    uint64_t next_serial;       /* cluster mode: the last serial given to a published entry */
    int64_t next_liveness;      /* cluster mode: when silent nodes are looked for again */
    char gone_node[CLUSTER_NODE_MAX + 1];   /* the last node declared gone, and when to say it again */
    uint64_t gone_epoch;
    int64_t gone_again;
    int64_t next_commit_try;

    int64_t next_idle_check;
    int upkeep_due;             /* commits happened since history_idle_step last said "nothing due" */
    int64_t next_prune;

    uint32_t deliver_stamp;     /* one per room delivery (see hub_slot.deliver_stamp) */
    uint32_t detecting;         /* slots still waiting for their first line */
    uint32_t irc_sessions;      /* open IRC sessions (pinged when silent) */
    uint32_t input_slot;        /* the slot whose bytes the framer callbacks belong to */
    int64_t input_now;
    int64_t input_wall_ms;      /* wall clock for `at`, read once per input batch */
    hub_stats stats;
    char clean[TEXT_MAX_LINE + 1];
};

static const char NOTICE_HISTORY_DOWN[] = "*** history unavailable, message not sent";
static const char NOTICE_CLUSTER_DOWN[] = "*** cluster unavailable, message not sent";
static const char NOTICE_HISTORY_OFF[] = "*** history is switched off on this server";
static const char NOTICE_REJECTED[] = "*** message not sent: the history database refused to store it";
static const char NOTICE_UNDELIVERED[] = "*** message not delivered: the recipient left before it could be";
static const char NOTICE_SLOW[] = "*** you are not reading fast enough; disconnecting (slow consumer)";

/* cluster mode, below: a private message to a user of another node */
static int bus_send_direct(hub *h, const outbox_entry *e);
typedef struct record_who record_who;
static int msg_recipient_here(hub *h, outbox_entry *e, const record_who *who);

#define COMMIT_RETRY_MS 50
#define IDLE_CHECK_MS 1000
#define PRUNE_IDLE_MS 1000      /* a cheap check when nothing is due */
#define PRUNE_BATCH 500
#define UPKEEP_DELAY_MS 200
#define OUTBOX_NOTICES_FACTOR 4 /* bound on held announcements, in units of pending_max_lines */
/* Slow consumers (see queue_to): a session whose queue pins more than
 * max_queue_bytes is cut once it has sent nothing for SLOW_GRACE_MS (checked
 * every SLOW_CHECK_MS), or at once when what it was sent of its own (not a
 * burst the server made: a query's answer, the backlog after an outage)
 * passes QUEUE_HARD_FACTOR times the bound. */
#define SLOW_GRACE_MS 3000
#define SLOW_CHECK_MS 250
#define QUEUE_HARD_FACTOR 4
/* Queries (/history, /search, replay on connect and join) answered per loop
 * turn at most, in round robin over the sessions that asked: each is bounded
 * (200 rows; a search's work budget), so together they add a bounded delay
 * to everyone else's chat, however many clients ask. */
#define QUERIES_PER_TURN 4
#define LATER_MAX_QUERIES 16    /* per session; past it a query is refused */

/* Tags of the later list's entries. */
enum { LATER_BYTES = 0, LATER_BURST = 1, LATER_QUERY = 2 };

void hub_config_from_options(hub_config *cfg, const relay_options *opt, history *db)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->chat.server_name = opt->server_name;
    cfg->chat.replay = opt->replay;
    /* flood control is on only with both a burst and a rate */
    cfg->chat.flood_burst = opt->flood_rate > 0 ? opt->flood_burst : 0;
    cfg->chat.flood_rate = opt->flood_burst > 0 ? opt->flood_rate : 0;
    cfg->chat.flood_kick = opt->flood_kick;
    cfg->chat.log_private = opt->log_private;
    cfg->chat.irc_ping_ms = opt->irc_ping * 1000;
    cfg->max_sessions = opt->max_sessions;
    cfg->max_queue_bytes = opt->max_queue_bytes;
    cfg->max_per_ip = opt->max_per_ip;
    cfg->idle_timeout_ms = opt->idle_timeout * 1000;
    cfg->history = db;
    cfg->retention = db && (opt->retain_days > 0 || opt->retain_messages > 0);
    cfg->pending_max_lines = HUB_OUTAGE_MAX_LINES;
    cfg->pending_max_bytes = HUB_OUTAGE_MAX_BYTES;
    cfg->pending_max_ms = HUB_OUTAGE_MAX_MS;
    cfg->detect_ms = opt->greet_delay_ms;
}

static int restore_topic(void *ctx, const history_record *rec)
{
    chat_restore_topic(ctx, rec);
    return 0;
}

hub *hub_create(const hub_config *cfg)
{
    hub *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->cfg = *cfg;
    h->answering = UINT32_MAX;
    h->slots = calloc(cfg->max_sessions, sizeof *h->slots);
    h->flush_list = malloc(sizeof(uint32_t) * cfg->max_sessions);
    h->close_list = malloc(sizeof(uint32_t) * cfg->max_sessions);
    h->later_list = malloc(sizeof(uint32_t) * cfg->max_sessions);
    if (cfg->cluster && h->cfg.chat.remote_slots == 0)
        h->cfg.chat.remote_slots = cfg->max_sessions * 4 < 1024 ? 1024 : cfg->max_sessions * 4;
    h->chat = chat_create(&h->cfg.chat, cfg->max_sessions);
    h->password_set = cfg->chat.password && cfg->chat.password[0];
    h->cfg.chat.password = NULL;   /* the caller's buffer is wiped after this; chat has its copy */
    if (!h->slots || !h->flush_list || !h->close_list || !h->later_list || !h->chat) {
        hub_destroy(h);
        return NULL;
    }
    /* The rooms' topics, as the history last recorded them.  A read that
     * fails costs only the topics (rooms start without), not the start. */
    if (cfg->history && history_topics(cfg->history, restore_topic, h->chat) != HISTORY_OK)
        log_warn("history: the rooms' topics could not be read: %s", history_errmsg(cfg->history));
    return h;
}

static void outbox_entry_free(outbox_entry *e)
{
    if (e->data)
        msgbuf_release(e->data);
    for (int f = 0; f < CHAT_FORM_COUNT; f++)
        if (e->wire[f])
            msgbuf_release(e->wire[f]);
}

void hub_destroy(hub *h)
{
    if (!h)
        return;
    if (h->slots)
        for (uint32_t i = 0; i < h->cfg.max_sessions; i++) {
            sendq_clear(&h->slots[i].q);
            sendq_clear(&h->slots[i].later);
        }
    for (uint32_t i = 0; i < h->ob_count; i++)
        outbox_entry_free(&h->outbox[(h->ob_head + i) & (h->ob_cap - 1)]);
    free(h->outbox);
    if (h->chat)
        chat_destroy(h->chat);
    free(h->slots);
    free(h->flush_list);
    free(h->close_list);
    free(h->later_list);
    free(h);
}

/* ---- per-slot output --------------------------------------------------- */

static int slot_live(const hub *h, uint32_t slot)
{
    return slot < h->cfg.max_sessions && h->slots[slot].conn_id != 0 && !h->slots[slot].closing;
}

static void request_close(hub *h, uint32_t slot, const char *reason)
{
    hub_slot *s = &h->slots[slot];
    if (s->conn_id == 0 || s->closing)
        return;
    s->closing = 1;
    size_t n = strlen(reason);
    if (n > sizeof s->close_reason - 1)
        n = text_utf8_boundary(reason, sizeof s->close_reason - 1);
    memcpy(s->close_reason, reason, n);
    s->close_reason[n] = '\0';
    if (!s->in_close_list) {
        s->in_close_list = 1;
        h->close_list[h->close_count++] = slot;
    }
}

static void mark_flush(hub *h, uint32_t slot)
{
    hub_slot *s = &h->slots[slot];
    if (!s->in_flush_list) {
        s->in_flush_list = 1;
        h->flush_list[h->flush_count++] = slot;
    }
}

static void cut_slow_consumer(hub *h, uint32_t slot)
{
    hub_slot *s = &h->slots[slot];
    /* Best effort: the notice goes out only if the socket drains before the
     * shell's linger ends.  The later list will never be sent. */
    char out[256];
    size_t n = chat_render_notice(h->chat, slot, NOTICE_SLOW, sizeof NOTICE_SLOW - 1, out, sizeof out);
    msgbuf *notice = msgbuf_bytes(out, n);
    if (notice) {
        sendq_push(&s->q, notice);
        msgbuf_release(notice);
    }
    sendq_clear(&s->later);
    s->queries = 0;
    mark_flush(h, slot);
    request_close(h, slot, "slow consumer");
}

static void later_list_add(hub *h, uint32_t slot)
{
    hub_slot *s = &h->slots[slot];
    if (!s->in_later_list) {
        s->in_later_list = 1;
        h->later_list[h->later_count++] = slot;
    }
}

/* Queues m for slot.  The slow-consumer rule judges the client, not the
 * server's bursts: a session is never cut for what it was sent while it keeps
 * reading, only once its queue has stayed over max_queue_bytes with no byte
 * sent for SLOW_GRACE_MS (slow_check), or when what it pinned passes
 * QUEUE_HARD_FACTOR times the bound through output that is not a server
 * burst (`burst`: a query's answer, paced by the later list, or the backlog
 * held during an outage, whose buffers are shared by every recipient).  So
 * memory per session stays bounded and a stopped reader is cut in bounded
 * time.  Output for a session that has a later list joins its end, in order. */
static void queue_to_as(hub *h, uint32_t slot, msgbuf *m, int burst)
{
    if (!slot_live(h, slot) || !m)
        return;
    hub_slot *s = &h->slots[slot];
    if (s->later.count > 0 && slot != h->answering) {
        if (sendq_push_tagged(&s->later, m, burst ? LATER_BURST : LATER_BYTES) != 0) {
            log_error("hub: out of memory queueing to session %u; closing it", (unsigned)slot);
            request_close(h, slot, "out of memory");
        }
        return;
    }
    size_t bound = h->cfg.max_queue_bytes;
    if (bound && !burst && s->q.pinned + s->later.pinned + sendq_cost(m) > bound * QUEUE_HARD_FACTOR) {
        cut_slow_consumer(h, slot);
        return;
    }
    if (sendq_push(&s->q, m) != 0) {
        log_error("hub: out of memory queueing to session %u; closing it", (unsigned)slot);
        request_close(h, slot, "out of memory");
        return;
    }
    if (bound && s->q.pinned > bound)
        h->slow_watch = 1;
    h->stats.deliveries++;
    mark_flush(h, slot);
}

static void queue_to(hub *h, uint32_t slot, msgbuf *m)
{
    queue_to_as(h, slot, m, 0);
}

static outbox_entry *outbox_push(hub *h);

/* Bytes for slot, now or, when the slot has entries waiting in the outbox
 * (its own events, earlier replies), behind them: a session's output keeps
 * the order of its commands. */
static void send_bytes(hub *h, uint32_t slot, msgbuf *m)
{
    if (!slot_live(h, slot))
        return;
    hub_slot *s = &h->slots[slot];
    if (s->ob_pending > 0) {
        outbox_entry *e = outbox_push(h);
        if (!e) {
            request_close(h, slot, "out of memory");
            return;
        }
        e->type = ENTRY_REPLY;
        e->from_slot = slot;
        e->from_conn = s->conn_id;
        msgbuf_retain(m);
        e->data = m;
        e->pending_for_slot = 1;
        s->ob_pending++;
        return;
    }
    queue_to(h, slot, m);
}

/* A reply chat wrote in the session's dialect (one line, no CRLF). */
static void reply_text(hub *h, uint32_t slot, const char *text, size_t len)
{
    msgbuf *m = msgbuf_line(text, len);
    if (!m) {
        request_close(h, slot, "out of memory");
        return;
    }
    send_bytes(h, slot, m);
    msgbuf_release(m);
}

/* One of the hub's own notices (given in the line form) in slot's dialect;
 * now: about the outbox entry being delivered, so nothing earlier waits. */
static void notice_as(hub *h, uint32_t slot, const char *text, size_t len, int now)
{
    char out[512];
    size_t n = chat_render_notice(h->chat, slot, text, len, out, sizeof out);
    msgbuf *m = msgbuf_bytes(out, n);
    if (!m) {
        request_close(h, slot, "out of memory");
        return;
    }
    if (now)
        queue_to(h, slot, m);
    else
        send_bytes(h, slot, m);
    msgbuf_release(m);
}

static void notice_text(hub *h, uint32_t slot, const char *text, size_t len)
{
    notice_as(h, slot, text, len, 0);
}

/* ---- the outbox (store-then-forward) ----------------------------------- */

static outbox_entry *outbox_push(hub *h)
{
    if (h->ob_count == h->ob_cap) {
        void *ring = h->outbox;
        if (ring_grow(&ring, &h->ob_cap, &h->ob_head, h->ob_count, sizeof(outbox_entry), 256) != 0)
            return NULL;
        h->outbox = ring;
    }
    outbox_entry *e = &h->outbox[(h->ob_head + h->ob_count) & (h->ob_cap - 1)];
    memset(e, 0, sizeof *e);
    h->ob_count++;
    return e;
}

static size_t held_cost(const outbox_entry *e)
{
    return sizeof *e + e->data->len;
}

/* While the database is failing, new user lines are refused once the pending
 * ones pass a bound (count, bytes, or age): never delivered unrecorded, never
 * silently dropped, and memory stays bounded. */
static int in_outage(const hub *h)
{
    return h->db_failing || h->bus_failing;
}

static int outbox_over_bound(const hub *h, int64_t now)
{
    if (!in_outage(h))
        return 0;
    if (h->ob_unstored >= h->cfg.pending_max_lines || h->ob_unstored_bytes >= h->cfg.pending_max_bytes)
        return 1;
    int64_t since = !h->db_failing ? h->bus_failing_since
                    : !h->bus_failing ? h->db_failing_since
                    : h->db_failing_since < h->bus_failing_since ? h->db_failing_since : h->bus_failing_since;
    return now - since >= h->cfg.pending_max_ms;
}

static int is_user_kind(history_kind kind)
{
    return kind == HISTORY_SAY || kind == HISTORY_ME || kind == HISTORY_MSG;
}

/* Lays an event out in a new entry's data: "nick\0target\0body\0" then
 * room_count "room\0", then, for a private message that is stored, its
 * stored body "to NICK: text\0".  Returns 0, or -1 out of memory. */
static int entry_fill(outbox_entry *e, const chat_event *ev, int stored_msg)
{
    size_t nick_len = strlen(ev->nick), target_len = ev->target ? strlen(ev->target) : 0;
    size_t need = nick_len + target_len + ev->body_len + 3;
    for (uint32_t r = 0; r < ev->room_count; r++)
        need += strlen(ev->rooms[r]) + 1;
    size_t stored_len = 0;
    if (stored_msg)   /* the row names the recipient: "to bob: text" */
        stored_len = 3 + target_len + 2 + ev->body_len;
    need += stored_len + 1;
    msgbuf *data = msgbuf_alloc(need);
    if (!data)
        return -1;
    char *p = data->data;
    size_t off = 0;
#define PUT(s_, n_) do { memcpy(p + off, (s_), (n_)); off += (n_); p[off++] = '\0'; } while (0)
    PUT(ev->nick, nick_len);
    e->target_off = (uint32_t)off;
    PUT(ev->target ? ev->target : "", target_len);
    e->body_off = (uint32_t)off;
    e->body_len = (uint32_t)ev->body_len;
    PUT(ev->body, ev->body_len);
    e->rooms_off = (uint32_t)off;
    for (uint32_t r = 0; r < ev->room_count; r++)
        PUT(ev->rooms[r], strlen(ev->rooms[r]));
    if (stored_len) {
        e->stored_off = (uint32_t)off;
        e->stored_len = (uint32_t)stored_len;
        memcpy(p + off, "to ", 3);
        memcpy(p + off + 3, ev->target, target_len);
        memcpy(p + off + 3 + target_len, ": ", 2);
        memcpy(p + off + 5 + target_len, ev->body, ev->body_len);
        off += stored_len;
        p[off++] = '\0';
    } else {
        e->stored_off = e->body_off;
        e->stored_len = e->body_len;
    }
#undef PUT
    CR_ASSERT(off <= need);
    data->len = (uint32_t)off;
    e->type = ENTRY_EVENT;
    e->data = data;
    e->kind = (uint8_t)ev->kind;
    e->quit = ev->quit;
    e->notice = ev->notice;
    e->room_count = (uint8_t)ev->room_count;
    return 0;
}

/* Queues an event.  Returns 0, or -1 if it was refused (the actor has been told). */
static int outbox_add_event(hub *h, const chat_effect *fx)
{
    const chat_event *ev = &fx->event;
    uint32_t actor = fx->slot;
    int persist = fx->stored && h->cfg.history != NULL && ev->room_count > 0;
    /* Stored chat is refused while the database is down past the bound; an
     * unstored /msg (no --log-private) still waits in order but needs no database. */
    int user_line = is_user_kind(ev->kind) && persist;
    if (user_line && outbox_over_bound(h, h->input_now)) {
        h->stats.refused_lines++;
        if (h->bus_failing)
            notice_text(h, actor, NOTICE_CLUSTER_DOWN, sizeof NOTICE_CLUSTER_DOWN - 1);
        else
            notice_text(h, actor, NOTICE_HISTORY_DOWN, sizeof NOTICE_HISTORY_DOWN - 1);
        return -1;
    }
    /* Joins, leaves and nick changes are never refused to anyone, but during a
     * long outage with reconnect churn they must not grow memory without end:
     * past OUTBOX_NOTICES_FACTOR times the line bound they are dropped (neither
     * stored nor shown: nothing is ever shown unrecorded), and counted. */
    if (persist && !user_line && in_outage(h) &&
        h->ob_count >= h->cfg.pending_max_lines * OUTBOX_NOTICES_FACTOR) {
        if (h->stats.dropped_notices++ == 0)
            log_warn("history: unavailable for long; join/leave/nick announcements are dropped until it returns");
        return -1;
    }
    outbox_entry *e = outbox_push(h);
    if (!e || entry_fill(e, ev, persist && ev->kind == HISTORY_MSG) != 0) {
        if (e)
            h->ob_count--;   /* the entry just pushed, at the tail */
        log_error("hub: out of memory queueing a line from session %u", (unsigned)actor);
        notice_text(h, actor, NOTICE_HISTORY_DOWN, sizeof NOTICE_HISTORY_DOWN - 1);
        return -1;
    }
    e->user_line = (uint8_t)user_line;
    e->held = (uint8_t)in_outage(h);   /* it joins the backlog of an outage */
    e->from_slot = actor;
    e->from_conn = actor < h->cfg.max_sessions ? h->slots[actor].conn_id : 0;
    e->last_open = h->open_seq;
    if (ev->kind == HISTORY_MSG) {
        e->to_slot = fx->to_slot;
        e->to_conn = fx->to_slot < h->cfg.max_sessions ? h->slots[fx->to_slot].conn_id : 0;
    }
    history_format_time(h->input_wall_ms, e->at);
    /* Only an event the actor will see (its echo) holds the actor's later
     * replies back: a line client's own chat lines never delay its notices. */
    if (actor < h->cfg.max_sessions && chat_session_echoes(h->chat, actor, ev)) {
        e->pending_for_slot = 1;
        h->slots[actor].ob_pending++;
    }
    if (persist) {
        e->persist = 1;
        h->ob_unstored++;
        /* what the held line really costs while it waits */
        h->ob_unstored_bytes += held_cost(e);
    }
    return 0;
}

/* The event an entry holds, pointing into its data. */
static void entry_event(const outbox_entry *e, chat_event *ev)
{
    const char *p = e->data->data;
    memset(ev, 0, sizeof *ev);
    ev->kind = (history_kind)e->kind;
    ev->id = e->stored ? e->id : 0;
    ev->quit = e->quit;
    ev->notice = e->notice;
    ev->nick = p;
    ev->target = p + e->target_off;
    ev->body = p + e->body_off;
    ev->body_len = e->body_len;
    const char *r = p + e->rooms_off;
    for (uint32_t k = 0; k < e->room_count; k++) {
        ev->rooms[ev->room_count++] = r;
        r += strlen(r) + 1;
    }
}

static outbox_entry *outbox_at(hub *h, uint32_t i)
{
    return &h->outbox[(h->ob_head + i) & (h->ob_cap - 1)];
}


/* The entry no longer waits for the database (stored, or refused by it). */
static void entry_settled(hub *h, outbox_entry *e)
{
    h->ob_unstored--;
    h->ob_unstored_bytes -= held_cost(e);
}

/* An event's rows, one per room it happened in (a nick change or quit in
 * several), in the open transaction. */
static int append_entry_rows(history *db, const outbox_entry *e)
{
    int rc = HISTORY_OK;
    const char *room = e->data->data + e->rooms_off;
    for (uint32_t i = 0; i < e->room_count && rc == HISTORY_OK; i++) {
        history_record r;
        r.id = 0;
        r.at = e->at;
        r.room = room;
        r.nick = e->data->data;
        r.kind = (history_kind)e->kind;
        r.body = e->data->data + e->stored_off;
        r.body_len = e->stored_len;
        rc = history_append(db, &r);
        room += strlen(room) + 1;
    }
    return rc;
}

/* One transaction for the unstored entries among `idx` (outbox positions, in
 * order).  On success they are marked stored. */
static int commit_entries(hub *h, const uint32_t *idx, uint32_t n)
{
    history *db = h->cfg.history;
    int rc = history_begin(db);
    for (uint32_t k = 0; k < n && rc == HISTORY_OK; k++)
        rc = append_entry_rows(db, outbox_at(h, idx[k]));
    if (rc == HISTORY_OK)
        rc = history_commit(db);
    else if (rc != HISTORY_REJECTED || n == 0)
        history_rollback(db);
    else
        rc = history_commit(db);   /* rolls the poisoned batch back and says why */
    if (rc != HISTORY_OK)
        return rc;
    /* the batch's rows have consecutive ids ending at the last one */
    int64_t next_id = history_last_commit_id(db) + 1;
    for (uint32_t k = 0; k < n; k++)
        next_id -= outbox_at(h, idx[k])->room_count;
    for (uint32_t k = 0; k < n; k++) {
        outbox_entry *e = outbox_at(h, idx[k]);
        e->id = next_id;
        next_id += e->room_count;
        e->stored = 1;
        entry_settled(h, e);
        h->stats.lines_stored += e->room_count;
    }
    h->stats.commits++;
    return HISTORY_OK;
}

/* The database refused a record (see HISTORY_REJECTED): commit the entries
 * in halves, in order, until each refused one stands alone, and drop those:
 * their senders are told at delivery, the rest is stored and delivered as
 * usual.  Halving costs about 2 log2(n) transactions per refused record, so
 * a batch of 10,000 with one such line is stored in ~30 commits, in this
 * turn.  Stops at the first commit that fails for another reason (busy,
 * I/O), leaving the rest held as any failed commit does. */
static int commit_isolating(hub *h, const uint32_t *idx, uint32_t n)
{
    int rc = commit_entries(h, idx, n);
    if (rc != HISTORY_REJECTED)
        return rc;
    if (n == 1) {
        outbox_entry *e = outbox_at(h, idx[0]);
        e->rejected = 1;
        e->persist = 0;
        entry_settled(h, e);
        h->stats.rejected_lines++;
        log_error("history: the database refused a '%s' line of %s in %s, which is dropped, not delivered: %s",
                  history_kind_name((history_kind)e->kind), e->data->data, e->data->data + e->rooms_off,
                  history_errmsg(h->cfg.history));
        return HISTORY_OK;
    }
    rc = commit_isolating(h, idx, n / 2);
    if (rc == HISTORY_OK)
        rc = commit_isolating(h, idx + n / 2, n - n / 2);
    return rc;
}

/* Every unstored entry in one transaction, in outbox order.  Returns 1 if
 * everything in the outbox is now stored (or refused by the database). */
static int outbox_commit(hub *h, int64_t now)
{
    if (h->ob_unstored == 0)
        return 1;
    if (h->db_failing && now < h->next_commit_try)
        return 0;
    uint32_t *idx = malloc(sizeof *idx * h->ob_unstored);
    uint32_t n = 0;
    uint64_t stored_before = h->stats.lines_stored;
    int rc = HISTORY_ERROR;
    if (idx) {
        for (uint32_t i = 0; i < h->ob_count; i++) {
            const outbox_entry *e = outbox_at(h, i);
            if (e->persist && !e->stored)
                idx[n++] = i;
        }
        CR_ASSERT(n == h->ob_unstored);
        rc = commit_entries(h, idx, n);
        if (rc == HISTORY_REJECTED)
            rc = commit_isolating(h, idx, n);
        free(idx);
    }
    if (rc != HISTORY_OK) {
        for (uint32_t i = 0; i < h->ob_count; i++)
            outbox_at(h, i)->held = 1;
        h->stats.commit_busy++;
        if (!h->db_failing) {
            h->db_failing = 1;
            h->db_failing_since = now;
            log_warn("history: cannot write (%s); %u line(s) held, retrying",
                     !idx ? "out of memory"
                     : rc == HISTORY_BUSY ? "database is locked by another connection"
                                          : history_errmsg(h->cfg.history),
                     (unsigned)h->ob_unstored);
        }
        h->next_commit_try = now + COMMIT_RETRY_MS;
        return 0;
    }
    if (h->db_failing) {
        log_info("history: writable again after %lld ms; stored %u held line(s); %llu announcement(s) dropped",
                 (long long)(now - h->db_failing_since), (unsigned)(h->stats.lines_stored - stored_before),
                 (unsigned long long)h->stats.dropped_notices);
        h->stats.dropped_notices = 0;
        h->db_failing = 0;
    }
    CR_ASSERT(h->ob_unstored == 0 && h->ob_unstored_bytes == 0);
    h->upkeep_due = 1;
    return 1;
}

typedef struct deliver_ctx {
    hub *h;
    outbox_entry *e;
    const chat_event *ev;
    uint32_t room;       /* which of the event's rooms is being delivered */
    uint32_t stamp;
    /* 1 if a form's rendering is the same in every room of the event, so a
     * recipient takes e->wire[form] once it is rendered (event_wire caches it) */
    uint8_t shared[CHAT_FORM_COUNT];
} deliver_ctx;

/* The event in form, rendered once per entry and form (and per room for a
 * form that names it); NULL if the form shows nothing. */
static msgbuf *event_wire(hub *h, outbox_entry *e, const chat_event *ev, chat_form form, uint32_t room,
                          int echo, msgbuf **own)
{
    int cacheable = !echo && !chat_form_names_room(form, ev);
    if (cacheable && e->wire[form])
        return e->wire[form];
    char out[4 * TEXT_MAX_LINE];
    size_t n = chat_render_event(h->chat, form, ev, room, echo, e->at, out, sizeof out);
    if (n == 0)
        return NULL;
    msgbuf *m = msgbuf_bytes(out, n);
    if (m && cacheable)
        e->wire[form] = m;
    else
        *own = m;   /* the caller releases it after queueing */
    return m;
}

static void deliver_to(hub *h, outbox_entry *e, const chat_event *ev, uint32_t slot, uint32_t room, int echo)
{
    msgbuf *own = NULL;
    msgbuf *m = event_wire(h, e, ev, chat_session_form(h->chat, slot), room, echo, &own);
    if (m)
        queue_to_as(h, slot, m, e->held);
    if (own)
        msgbuf_release(own);
}

static void deliver_member(void *ctx, uint32_t slot)
{
    deliver_ctx *d = ctx;
    if (slot >= d->h->cfg.max_sessions)
        return;   /* a user of another node: its own node delivers to it */
    hub_slot *s = &d->h->slots[slot];
    /* the actor gets its echo form, below */
    if (slot == d->e->from_slot && s->conn_id == d->e->from_conn)
        return;
    /* A session greeted after the event (while it waited for its commit)
     * was already counted in its greeting, or never saw it happen.  Greeting
     * order, not connection order: a connection waits --greet-delay before
     * it is greeted. */
    if (s->open_seq > d->e->last_open)
        return;
    if (s->deliver_stamp == d->stamp)
        return;   /* it shares another of the event's rooms: one copy */
    s->deliver_stamp = d->stamp;
    /* Every member but the first of each form takes the cached rendering
     * here: this runs once per delivery, so it skips event_wire's checks. */
    chat_form form = chat_session_form(d->h->chat, slot);
    msgbuf *m = d->shared[form] ? d->e->wire[form] : NULL;
    if (m)
        queue_to_as(d->h, slot, m, d->e->held);
    else
        deliver_to(d->h, d->e, d->ev, slot, d->room, 0);
}

static int is_actor(const hub *h, const outbox_entry *e)
{
    return slot_live(h, e->from_slot) && h->slots[e->from_slot].conn_id == e->from_conn;
}

/* Delivers one event entry; for a private message, whether it reached its recipient. */
static int deliver_event(hub *h, outbox_entry *e)
{
    chat_event ev;
    entry_event(e, &ev);
    if (e->rejected) {
        if (e->user_line && is_actor(h, e))
            notice_as(h, e->from_slot, NOTICE_REJECTED, sizeof NOTICE_REJECTED - 1, 1);
        return 0;
    }
    if (ev.kind == HISTORY_MSG && h->cfg.cluster && e->to_slot != CHAT_NO_SLOT && e->to_slot >= h->cfg.max_sessions) {
        /* to a user of another node: that node delivers it, from the
         * stream (stored) or straight from here (not stored) */
        if (!e->persist && bus_send_direct(h, e) != 0) {
            if (is_actor(h, e))
                notice_as(h, e->from_slot, NOTICE_UNDELIVERED, sizeof NOTICE_UNDELIVERED - 1, 1);
            return 0;
        }
    } else if (ev.kind == HISTORY_MSG) {
        if (!(slot_live(h, e->to_slot) && h->slots[e->to_slot].conn_id == e->to_conn)) {
            /* the recipient left while the message waited: no confirmation
             * may claim it reached them */
            if (is_actor(h, e))
                notice_as(h, e->from_slot, NOTICE_UNDELIVERED, sizeof NOTICE_UNDELIVERED - 1, 1);
            return 0;
        }
        deliver_to(h, e, &ev, e->to_slot, 0, 0);
    } else {
        if (++h->deliver_stamp == 0)
            h->deliver_stamp = 1;
        deliver_ctx d = { h, e, &ev, 0, h->deliver_stamp, { 0 } };
        for (int f = 0; f < CHAT_FORM_COUNT; f++)
            d.shared[f] = !chat_form_names_room((chat_form)f, &ev);
        for (d.room = 0; d.room < ev.room_count; d.room++)
            chat_room_members(h->chat, ev.rooms[d.room], deliver_member, &d);
    }
    if (is_actor(h, e) && chat_session_echoes(h->chat, e->from_slot, &ev))
        deliver_to(h, e, &ev, e->from_slot, 0, 1);
    return 1;
}

static void later_push_query(hub *h, uint32_t slot, msgbuf *m);
static int earliest(int a, int b);

static void run_effects(hub *h);

static void outbox_deliver(hub *h)
{
    while (h->ob_count > 0) {
        if (h->outbox[h->ob_head].persist && !h->outbox[h->ob_head].stored)
            break;
        /* A copy: delivering may queue more entries and move the ring. */
        outbox_entry cur = h->outbox[h->ob_head];
        outbox_entry *e = &cur;
        /* Off the outbox before it is delivered: what it queues for its
         * slot goes straight out (or to the later list), not behind itself. */
        /* counted for its own connection only: a later occupant of the slot starts at 0 */
        if (e->pending_for_slot && h->slots[e->from_slot].conn_id == e->from_conn) {
            CR_ASSERT(h->slots[e->from_slot].ob_pending > 0);
            h->slots[e->from_slot].ob_pending--;
        }
        h->ob_head = (h->ob_head + 1) & (h->ob_cap - 1);
        h->ob_count--;
        if (e->type == ENTRY_EVENT)
            (void)deliver_event(h, e);
        else if (is_actor(h, e) && e->type == ENTRY_REPLY)
            queue_to(h, e->from_slot, e->data);
        else if (is_actor(h, e) && e->type == ENTRY_CLOSE)
            request_close(h, e->from_slot, e->reason);
        else if (is_actor(h, e) && e->type == ENTRY_QUERY)
            later_push_query(h, e->from_slot, e->data);
        outbox_entry_free(e);
    }
}

/* ---- cluster mode: the stream is the commit -----------------------------
 *
 * With --cluster a stored event is not written to SQLite where it happened:
 * it is published to the stream (cluster_publish) and waits in the outbox,
 * like a line waiting for a commit, until the stream delivers it back.  Every
 * node, this one included, stores what the stream delivers, in stream order,
 * in one transaction with the last sequence applied (history_cluster_applied),
 * and only then delivers it: this node's own entries from the outbox (their
 * echoes, their order behind the sender's replies), the other nodes' records
 * to the members of their rooms here.  So every node's file holds the same
 * rows in the same order, and no node shows a line that is not both in the
 * stream and in its own file.  A record is JSON (docs/CLUSTER.md):
 *   {"v":1,"node":..,"kind":"say","at":..,"nick":..,"target":..,
 *    "notice":0,"quit":0,"rooms":[..],"body":..}                            */

#define BUS_STALL_MS 2000        /* a published line not back this long: the bus is failing */
#define RECORD_MAX (8 * TEXT_MAX_LINE + 1024)

static size_t put_json_field(char *out, size_t cap, size_t off, const char *name, const char *s, size_t n)
{
    size_t k = strlen(name);
    if (off == 0 || cap - off < k + 4)
        return 0;
    memcpy(out + off, name, k);
    off += k;
    size_t w = json_write_string_n(out + off, cap - off, s, n);
    return w ? off + w : 0;
}

/* The record of an entry, into out; its length, or 0 if it does not fit. */
static size_t record_encode(const hub *h, const outbox_entry *e, char *out, size_t cap)
{
    const char *p = e->data->data;
    int n = snprintf(out, cap, "{\"v\":1,\"kind\":\"%s\",\"notice\":%d,\"quit\":%d,\"at\":\"%s\","
                     "\"epoch\":%lld,\"sid\":%u",
                     history_kind_name((history_kind)e->kind), e->notice, e->quit, e->at,
                     (long long)h->cfg.epoch, (unsigned)e->from_conn);
    size_t off = n > 0 && (size_t)n < cap ? (size_t)n : 0;
    off = put_json_field(out, cap, off, ",\"node\":", h->cfg.node, strlen(h->cfg.node));
    off = put_json_field(out, cap, off, ",\"nick\":", p, strlen(p));
    off = put_json_field(out, cap, off, ",\"target\":", p + e->target_off, strlen(p + e->target_off));
    off = put_json_field(out, cap, off, ",\"body\":", p + e->body_off, e->body_len);
    if (e->kind == HISTORY_MSG) {
        /* the node that delivers it: the recipient's */
        uint64_t epoch, sid;
        const char *to_node = chat_remote_node(h->chat, e->to_slot, &epoch, &sid);
        if (!to_node) {
            to_node = h->cfg.node;
            epoch = (uint64_t)h->cfg.epoch;
            sid = e->to_conn;
        }
        off = put_json_field(out, cap, off, ",\"to_node\":", to_node, strlen(to_node));
        /* the recipient's connection, not its nick: a nick may change hands
         * while the message travels */
        char ids[64];
        int w = snprintf(ids, sizeof ids, ",\"to_epoch\":%llu,\"to_sid\":%llu", (unsigned long long)epoch,
                         (unsigned long long)sid);
        if (off == 0 || cap - off <= (size_t)w)
            return 0;
        memcpy(out + off, ids, (size_t)w);
        off += (size_t)w;
    }
    if (off == 0 || cap - off < 12)
        return 0;
    memcpy(out + off, ",\"rooms\":[", 10);
    off += 10;
    const char *room = p + e->rooms_off;
    for (uint32_t i = 0; i < e->room_count; i++) {
        if (i > 0 && off < cap)
            out[off++] = ',';
        size_t w = off < cap ? json_write_string(out + off, cap - off, room) : 0;
        if (w == 0)
            return 0;
        off += w;
        room += strlen(room) + 1;
    }
    if (cap - off < 3)
        return 0;
    out[off++] = ']';
    out[off++] = '}';
    return off;
}

/* "2026-12-01T15:49:29.855Z": digits where digits go, as every node writes it */
static int time_ok(const char *at)
{
    static const char pattern[] = "dddd-dd-ddTdd:dd:dd.dddZ";
    if (strlen(at) != HISTORY_TIME_LEN)
        return 0;
    for (size_t i = 0; i < HISTORY_TIME_LEN; i++)
        if (pattern[i] == 'd' ? at[i] < '0' || at[i] > '9' : at[i] != pattern[i])
            return 0;
    return 1;
}

static int name_ok(const char *s, int allow_empty)
{
    size_t n = strlen(s);
    if (n > CHAT_NAME_MAX || (n == 0 && !allow_empty))
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* A record from the stream (any node's, so untrusted) as an entry that can
 * be stored and delivered like one of ours.  Returns 0, or -1 with why. */
/* Who a record is about: the node, its run and the user's connection there;
 * for a "gone" record, the node whose users left. */
struct record_who {
    char node[CLUSTER_NODE_MAX + 1];
    char to_node[CLUSTER_NODE_MAX + 1];   /* a private message: the node of its recipient, */
    uint64_t to_epoch, to_sid;            /* and its connection there */
    uint64_t epoch, sid;
    int gone;
};

static int record_decode(const cluster_delivery *d, outbox_entry *e, record_who *who, const char **why)
{
    const char *doc = d->payload;
    size_t n = d->payload_len;
    char *node = who->node;
    char kind[16], nick[CHAT_NAME_MAX + 1], target[CHAT_NAME_MAX + 1];
    char rooms[CHAT_ROOMS_PER_SESSION][CHAT_NAME_MAX + 1];
    static char body[RECORD_MAX], clean[RECORD_MAX];   /* the I/O thread's only */
    uint64_t v = 0, notice = 0, quit = 0;
    memset(e, 0, sizeof *e);
    *why = "not JSON";
    if (json_valid(doc, n) != 0)
        return -1;
    *why = "not a version 1 record";
    if (json_get_u64(doc, n, "v", &v) != 0 || v != 1)
        return -1;
    *why = "a field is missing or malformed";
    if (json_get_u64(doc, n, "epoch", &who->epoch) != 0)
        return -1;
    char ctl[16];
    if (json_get_string(doc, n, "ctl", ctl, sizeof ctl) == 0) {
        *why = "an unknown control record";
        if (strcmp(ctl, "gone") != 0 || json_get_string(doc, n, "node", node, CLUSTER_NODE_MAX + 1) != 0 ||
            !name_ok(node, 0))
            return -1;
        who->gone = 1;
        return 0;
    }
    if (json_get_u64(doc, n, "sid", &who->sid) != 0)
        return -1;
    if (json_get_string(doc, n, "to_node", who->to_node, sizeof who->to_node) != 0 ||
        json_get_u64(doc, n, "to_epoch", &who->to_epoch) != 0 || json_get_u64(doc, n, "to_sid", &who->to_sid) != 0)
        who->to_node[0] = '\0';
    *why = "a field is missing or malformed";
    if (json_get_string(doc, n, "kind", kind, sizeof kind) != 0 ||
        json_get_string(doc, n, "node", node, CLUSTER_NODE_MAX + 1) != 0 ||
        json_get_string(doc, n, "nick", nick, sizeof nick) != 0 ||
        json_get_string(doc, n, "target", target, sizeof target) != 0 ||
        json_get_string(doc, n, "at", e->at, sizeof e->at) != 0 ||
        json_get_string(doc, n, "body", body, sizeof body) != 0 ||
        json_get_u64(doc, n, "notice", &notice) != 0 || json_get_u64(doc, n, "quit", &quit) != 0)
        return -1;
    chat_event ev;
    memset(&ev, 0, sizeof ev);
    ev.kind = history_kind_parse(kind);
    *why = "an unknown kind";
    if (ev.kind == HISTORY_KIND_NONE)
        return -1;
    *why = "a malformed name or time";
    if (!name_ok(node, 0) || !name_ok(nick, 0) || !name_ok(target, 1) || !time_ok(e->at) ||
        (ev.kind == HISTORY_NICK && !name_ok(body, 0)))
        return -1;
    const char *arr;
    size_t arr_len, pos = 0;
    *why = "no rooms";
    if (json_get(doc, n, "rooms", &arr, &arr_len) != JSON_ARRAY)
        return -1;
    const char *val;
    size_t val_len;
    json_type t;
    while ((t = json_array_next(arr, arr_len, &pos, &val, &val_len)) != JSON_ABSENT) {
        *why = "a malformed room";
        if (t != JSON_STRING || ev.room_count == CHAT_ROOMS_PER_SESSION ||
            json_unescape(val, val_len, rooms[ev.room_count], sizeof rooms[0]) != 0 ||
            !name_ok(rooms[ev.room_count], 0))
            return -1;
        ev.rooms[ev.room_count] = rooms[ev.room_count];
        ev.room_count++;
    }
    *why = "no rooms";
    if (ev.room_count == 0 && ev.kind != HISTORY_MSG)
        return -1;   /* (a private message from someone in no room has none) */
    /* the same cleaning and the same limit as a line typed here: no control
     * can reach a client */
    int truncated = 0;
    ev.body_len = text_clean_keeping(body, strlen(body), clean, TEXT_MAX_LINE + 1, &truncated, 0x01);
    ev.body = clean;
    ev.nick = nick;
    ev.target = target;
    ev.notice = notice != 0;
    ev.quit = quit != 0;
    *why = "out of memory";
    if (entry_fill(e, &ev, ev.kind == HISTORY_MSG) != 0)
        return -1;
    e->persist = 1;
    e->from_slot = CHAT_NO_SLOT;
    e->to_slot = CHAT_NO_SLOT;
    return 0;
}

/* The outbox entry this node published with serial, if it still waits. */
static outbox_entry *published_entry(hub *h, uint64_t serial)
{
    for (uint32_t i = 0; i < h->ob_count; i++) {
        outbox_entry *e = outbox_at(h, i);
        if (e->published && !e->stored && e->serial == serial)
            return e;
    }
    return NULL;
}

static void bus_health(hub *h, int64_t now)
{
    cluster *c = h->cfg.cluster;
    const outbox_entry *oldest = NULL;
    for (uint32_t i = 0; i < h->ob_count && !oldest; i++) {
        const outbox_entry *e = outbox_at(h, i);
        if (e->published && !e->stored)
            oldest = e;
    }
    int stalled = oldest && now - oldest->published_ms >= BUS_STALL_MS;
    int failing = !cluster_ready(c) || stalled;
    if (failing && !h->bus_failing) {
        h->bus_failing = 1;
        h->bus_failing_since = now;
        if (h->bus_was_ready && !h->stopping)
            log_warn("cluster: the bus does not take lines (%s); %u line(s) held",
                     stalled ? "a published line has not come back from the stream" : cluster_status(c),
                     (unsigned)h->ob_unstored);
    } else if (!failing && h->bus_failing) {
        log_info("cluster: the bus takes lines%s after %lld ms", h->bus_was_ready ? " again" : "",
                 (long long)(now - h->bus_failing_since));
        h->bus_failing = 0;
        h->bus_was_ready = 1;
        h->stats.dropped_notices = 0;
    }
}

/* Publishes what is new in the outbox, in order. */
static void bus_publish(hub *h, int64_t now)
{
    static char rec[RECORD_MAX];
    for (uint32_t i = 0; i < h->ob_count; i++) {
        outbox_entry *e = outbox_at(h, i);
        if (!e->persist || e->stored || e->published)
            continue;
        size_t n = record_encode(h, e, rec, sizeof rec);
        CR_ASSERT(n > 0);   /* bounded by the line limit */
        e->serial = ++h->next_serial;
        if (n == 0 || cluster_publish(h->cfg.cluster, e->serial, rec, n) != 0) {
            log_error("cluster: cannot queue a line for the bus (out of memory); it is dropped, not delivered");
            e->rejected = 1;
            e->persist = 0;
            entry_settled(h, e);
            continue;
        }
        e->published = 1;
        e->published_ms = now;
    }
}

/* ---- presence across nodes ----------------------------------------------
 *
 * Every node applies the other nodes' joins, leaves and nick changes to its
 * own view of their users (chat's remote users), in stream order, so every
 * node has the same view.  One nick, one user: when two nodes' users claim
 * a nick at the same moment, the claim first in the stream wins everywhere.
 * A later claim is ignored by every node (its announcement not shown), and
 * the loser's own node renames it to a free guest nick when it applies the
 * winner's claim: its own claim was still on its way through the stream
 * (a local session with a published join or nick change not yet back). */

/* The local session has a join or nick change in the stream not yet applied. */
static int claim_in_flight(const hub *h, uint32_t slot)
{
    for (uint32_t i = 0; i < h->ob_count; i++) {
        const outbox_entry *e = &h->outbox[(h->ob_head + i) & (h->ob_cap - 1)];
        if (e->persist && !e->stored && e->from_slot == slot && e->from_conn == h->slots[slot].conn_id &&
            (e->kind == HISTORY_JOIN || e->kind == HISTORY_NICK))
            return 1;
    }
    return 0;
}

/* Before another node's user takes nick here: a local holder whose own
 * claim is later in the stream loses it. */
static void yield_nick(hub *h, const char *nick)
{
    uint32_t holder = chat_nick_holder(h->chat, nick);
    if (holder >= h->cfg.max_sessions || !slot_live(h, holder) || !claim_in_flight(h, holder))
        return;
    log_info("cluster: %s on this node loses its nick to a user of another node who claimed it first", nick);
    chat_session_lost_nick(h->chat, holder);
    run_effects(h);
}

/* Applies a remote record to the view of remote users.  Returns 1 if it is
 * shown to the members here, 0 if not (a claim that lost). */
/* The record names its user by the nick its node gave it; where this
 * node's view has another (the user's claim of that nick lost), the view's
 * is shown, so a line is never shown under the nick of someone else.  The
 * row keeps the record's: every node stores the same. */
static void show_as_viewed(hub *h, outbox_entry *e, uint32_t slot)
{
    const char *viewed = slot == CHAT_NO_SLOT ? NULL : chat_session_nick(h->chat, slot);
    if (!viewed || strcmp(viewed, e->data->data) == 0)
        return;
    chat_event ev;
    entry_event(e, &ev);
    char nick[CHAT_NAME_MAX + 1];
    snprintf(nick, sizeof nick, "%s", viewed);
    ev.nick = nick;
    outbox_entry fixed = *e;
    fixed.data = NULL;
    if (entry_fill(&fixed, &ev, 0) != 0)
        return;   /* out of memory: shown as the record says */
    msgbuf_release(e->data);
    *e = fixed;
}

static int presence_apply(hub *h, outbox_entry *e, const record_who *who)
{
    uint32_t slot = chat_remote_find(h->chat, who->node, who->epoch, who->sid);
    show_as_viewed(h, e, slot);
    chat_event ev;
    entry_event(e, &ev);
    int shown = 1;
    switch (ev.kind) {
    case HISTORY_JOIN:
    case HISTORY_NICK: {
        const char *nick = ev.kind == HISTORY_NICK ? ev.body : ev.nick;
        if (slot != CHAT_NO_SLOT && ev.kind == HISTORY_NICK) {
            yield_nick(h, nick);
            if (chat_remote_nick(h->chat, slot, nick) != CHAT_REMOTE_JOINED)
                shown = 0;
            break;
        }
        /* a join, or a rename of a user this node never saw (its first
         * claim lost): it is here now, in the event's rooms */
        if (slot == CHAT_NO_SLOT)
            yield_nick(h, nick);
        for (uint32_t r = 0; r < ev.room_count; r++) {
            int rc = chat_remote_join(h->chat, who->node, who->epoch, who->sid, nick, ev.rooms[r]);
            if (rc == CHAT_REMOTE_IGNORED)
                shown = 0;
            else if (rc < 0)
                log_warn("cluster: no room for %s of node %s in %s (at most %u users of other nodes)", nick,
                         who->node, ev.rooms[r], (unsigned)h->cfg.chat.remote_slots);
        }
        break;
    }
    case HISTORY_LEAVE:
        if (slot == CHAT_NO_SLOT)
            shown = 0;   /* never seen: its join lost */
        else if (ev.quit)
            chat_remote_leave(h->chat, slot, NULL, 1);
        else
            for (uint32_t r = 0; r < ev.room_count; r++)
                chat_remote_leave(h->chat, slot, ev.rooms[r], 0);
        break;
    default:
        break;
    }
    return shown;
}

/* A "gone" record: node's users of one run left (it died, or restarted).
 * Its rows come from the record, so every node stores the same ones. */
typedef struct gone_user {
    char nick[CHAT_NAME_MAX + 1];
    const char *rooms[CHAT_ROOMS_PER_SESSION];
    char room_names[CHAT_ROOMS_PER_SESSION][CHAT_NAME_MAX + 1];
    uint32_t room_count;
} gone_user;

#define GONE_BODY "node lost"

/* The leave entries of a gone record, into out (at most max).  Returns
 * how many, -1 if the record is malformed. */
static int gone_entries(const cluster_delivery *d, const char *at, outbox_entry *out, int max)
{
    const char *arr, *val;
    size_t arr_len, val_len, pos = 0;
    int count = 0;
    if (json_get(d->payload, d->payload_len, "users", &arr, &arr_len) != JSON_ARRAY)
        return -1;
    while (json_array_next(arr, arr_len, &pos, &val, &val_len) == JSON_OBJECT) {
        gone_user u;
        memset(&u, 0, sizeof u);
        const char *rarr, *rv;
        size_t rarr_len, rv_len, rpos = 0;
        if (json_get_string(val, val_len, "nick", u.nick, sizeof u.nick) != 0 || !name_ok(u.nick, 0) ||
            json_get(val, val_len, "rooms", &rarr, &rarr_len) != JSON_ARRAY)
            return -1;
        while (u.room_count < CHAT_ROOMS_PER_SESSION &&
               json_array_next(rarr, rarr_len, &rpos, &rv, &rv_len) == JSON_STRING) {
            if (json_unescape(rv, rv_len, u.room_names[u.room_count], sizeof u.room_names[0]) != 0 ||
                !name_ok(u.room_names[u.room_count], 0))
                return -1;
            u.rooms[u.room_count] = u.room_names[u.room_count];
            u.room_count++;
        }
        if (u.room_count == 0 || count == max)
            continue;
        chat_event ev;
        memset(&ev, 0, sizeof ev);
        ev.kind = HISTORY_LEAVE;
        ev.quit = 1;
        ev.nick = u.nick;
        ev.target = "";
        ev.body = GONE_BODY;
        ev.body_len = sizeof GONE_BODY - 1;
        ev.room_count = u.room_count;
        memcpy(ev.rooms, u.rooms, sizeof u.rooms);
        outbox_entry *e = &out[count];
        memset(e, 0, sizeof *e);
        if (entry_fill(e, &ev, 0) != 0)
            return -1;
        memcpy(e->at, at, sizeof e->at);
        e->persist = 1;
        e->from_slot = e->to_slot = CHAT_NO_SLOT;
        count++;
    }
    return count;
}

/* This node was declared gone while it was not (the bus lost it for a
 * while): its users are shown joining again, everywhere. */
static void reannounce(hub *h)
{
    log_warn("cluster: the cluster declared this node gone (it was cut off); its users join their rooms again");
    for (uint32_t slot = 0; slot < h->cfg.max_sessions; slot++) {
        if (!slot_live(h, slot) || h->slots[slot].detecting)
            continue;
        const char *rooms[CHAT_ROOMS_PER_SESSION];
        uint32_t n = chat_session_rooms(h->chat, slot, rooms, CHAT_ROOMS_PER_SESSION);
        const char *nick = chat_session_nick(h->chat, slot);
        for (uint32_t r = 0; r < n && nick; r++) {
            chat_effect fx;
            memset(&fx, 0, sizeof fx);
            fx.kind = CHAT_EVENT;
            fx.slot = slot;
            fx.stored = 1;
            fx.event.kind = HISTORY_JOIN;
            fx.event.nick = nick;
            fx.event.body = "";
            fx.event.room_count = 1;
            fx.event.rooms[0] = rooms[r];
            (void)outbox_add_event(h, &fx);
        }
    }
}

#define GONE_USERS_MAX 4096   /* a gone record names at most this many users */
#define GONE_RECORD_MAX (60u * 1024)  /* and stays this small: under any max_payload a server is likely set to */
#define GONE_AGAIN_MS 60000   /* a gone record not yet applied is asked again: within the 2-minute
                               * duplicate window, so the stream keeps one */

typedef struct gone_ctx {
    hub *h;
    char *out;
    size_t off, cap;
    int users;
} gone_ctx;

static void gone_add_user(void *ctx, uint32_t slot)
{
    gone_ctx *g = ctx;
    const char *rooms[CHAT_ROOMS_PER_SESSION];
    uint32_t n = chat_session_rooms(g->h->chat, slot, rooms, CHAT_ROOMS_PER_SESSION);
    const char *nick = chat_session_nick(g->h->chat, slot);
    size_t need = 64 + CHAT_NAME_MAX + n * (CHAT_NAME_MAX + 4);
    if (!nick || n == 0 || g->users >= GONE_USERS_MAX || g->cap - g->off < need)
        return;
    int w = snprintf(g->out + g->off, g->cap - g->off, "%s{\"nick\":\"%s\",\"rooms\":[", g->users ? "," : "", nick);
    g->off += (size_t)w;
    for (uint32_t r = 0; r < n; r++) {
        w = snprintf(g->out + g->off, g->cap - g->off, "%s\"%s\"", r ? "," : "", rooms[r]);
        g->off += (size_t)w;
    }
    memcpy(g->out + g->off, "]}", 2);
    g->off += 2;
    g->users++;
}

/* Once a second: a node whose users are shown here but that fell silent
 * (or restarted) is declared gone, with its users; every node that notices
 * publishes the same message id, so the stream keeps one. */
static void liveness_check(hub *h, int64_t now)
{
    if (now < h->next_liveness)
        return;
    h->next_liveness = now + 1000;
    cluster *c = h->cfg.cluster;
    uint32_t first = h->cfg.max_sessions, end = first + h->cfg.chat.remote_slots;
    for (uint32_t slot = first; slot < end; slot++) {
        uint64_t epoch, sid;
        const char *node = chat_remote_node(h->chat, slot, &epoch, &sid);
        if (!node || !cluster_node_silent(c, node, (int64_t)epoch, now))
            continue;
        /* one gone record per (node, epoch), asked again every 5 s until applied */
        if (strcmp(h->gone_node, node) == 0 && h->gone_epoch == epoch && now < h->gone_again)
            continue;
        static char rec[GONE_RECORD_MAX];   /* static: the I/O thread's only, too big for its stack */
        char at[HISTORY_TIME_LEN + 1], msg_id[96];
        history_format_time(clock_wall_ms(), at);
        int w = snprintf(rec, sizeof rec, "{\"v\":1,\"ctl\":\"gone\",\"node\":\"%s\",\"epoch\":%llu,\"by\":\"%s\","
                         "\"at\":\"%s\",\"users\":[", node, (unsigned long long)epoch, h->cfg.node, at);
        gone_ctx g = { h, rec, (size_t)w, sizeof rec - 4, 0 };
        char node_copy[CLUSTER_NODE_MAX + 1];
        snprintf(node_copy, sizeof node_copy, "%s", node);
        chat_remote_node_users(h->chat, node_copy, epoch, 0, gone_add_user, &g);
        memcpy(rec + g.off, "]}", 2);
        g.off += 2;
        snprintf(msg_id, sizeof msg_id, "gone-%s-%llu", node_copy, (unsigned long long)epoch);
        if (cluster_publish_once(c, msg_id, rec, g.off) == 0)
            log_warn("cluster: node %s is silent; its %d user(s) are declared gone", node_copy, g.users);
        snprintf(h->gone_node, sizeof h->gone_node, "%s", node_copy);
        h->gone_epoch = epoch;
        h->gone_again = now + GONE_AGAIN_MS;
        break;   /* one node a second is plenty */
    }
}

/* Stores what the stream delivered (one transaction, with the sequence),
 * then delivers it.  Returns the wait until it should be tried again. */
static int bus_apply(hub *h, int64_t now)
{
    cluster *c = h->cfg.cluster;
    history *db = h->cfg.history;
    const cluster_delivery *dv;
    size_t n = cluster_deliveries(c, &dv);
    if (n == 0 || (h->db_failing && now < h->next_commit_try))
        return n ? COMMIT_RETRY_MS : -1;
    record_who *who = calloc(n, sizeof *who);
    outbox_entry *rec = calloc(n, sizeof *rec);
    uint8_t *valid = calloc(n, 1);
    outbox_entry *gone = NULL;
    int gone_count = 0;
    int rc = rec && valid && who ? history_begin(db) : HISTORY_ERROR;
    for (size_t k = 0; k < n && rc == HISTORY_OK; k++) {
        if (dv[k].gap_first) {
            history_format_time(h->input_wall_ms, rec[k].at);
            rc = history_cluster_gap(db, dv[k].gap_first, dv[k].seq, rec[k].at);
            continue;
        }
        const char *why;
        if (record_decode(&dv[k], &rec[k], &who[k], &why) != 0) {
            /* every node skips it alike: the files stay the same */
            log_warn("cluster: stream record %llu is not a chatrelay record (%s); skipped",
                     (unsigned long long)dv[k].seq, why);
            outbox_entry_free(&rec[k]);
            memset(&rec[k], 0, sizeof rec[k]);
            continue;
        }
        if (dv[k].own_serial && !published_entry(h, dv[k].own_serial))
            log_debug("cluster: our record %llu has no entry waiting (an earlier connection's)",
                      (unsigned long long)dv[k].seq);
        if (who[k].gone) {
            if (k > 0) {   /* it starts a batch of its own: see below */
                n = k;
                break;
            }
            char at[HISTORY_TIME_LEN + 1] = "";
            (void)json_get_string(dv[k].payload, dv[k].payload_len, "at", at, sizeof at);
            if (strlen(at) != HISTORY_TIME_LEN)
                history_format_time(h->input_wall_ms, at);
            gone = calloc(GONE_USERS_MAX, sizeof *gone);
            gone_count = gone ? gone_entries(&dv[k], at, gone, GONE_USERS_MAX) : -1;
            if (gone_count < 0) {
                log_warn("cluster: stream record %llu is a malformed gone record; its users stay",
                         (unsigned long long)dv[k].seq);
                gone_count = 0;
                who[k].gone = 0;
            }
            for (int g = 0; g < gone_count && rc == HISTORY_OK; g++)
                rc = append_entry_rows(db, &gone[g]);
            continue;
        }
        valid[k] = 1;
        rc = append_entry_rows(db, &rec[k]);
    }
    /* A gone record is applied first in its batch: its rows name the users
     * the record lists, and the view of remote users it then changes is the
     * one every node has after the records before it. */
    if (rc == HISTORY_OK)
        rc = history_cluster_applied(db, dv[n - 1].seq);
    if (rc == HISTORY_OK)
        rc = history_commit(db);
    else if (rec && valid && who)
        history_rollback(db);
    if (rc != HISTORY_OK) {
        /* A record SQLite refuses would be refused on every node and at
         * every retry: the stream is stuck here until an admin acts, which
         * the log says at once. */
        if (!h->db_failing) {
            h->db_failing = 1;
            h->db_failing_since = now;
            log_warn("history: cannot store the stream's records (%s); %u record(s) wait, retrying",
                     !rec || !valid || !who ? "out of memory"
                     : rc == HISTORY_BUSY ? "database is locked by another connection" : history_errmsg(db),
                     (unsigned)n);
        }
        h->stats.commit_busy++;
        h->next_commit_try = now + COMMIT_RETRY_MS;
        for (size_t k = 0; rec && k < n; k++)
            outbox_entry_free(&rec[k]);
        for (int g = 0; g < gone_count; g++)
            outbox_entry_free(&gone[g]);
        free(gone);
        free(rec);
        free(valid);
        free(who);
        return COMMIT_RETRY_MS;
    }
    if (h->db_failing) {
        log_info("history: writable again after %lld ms", (long long)(now - h->db_failing_since));
        h->db_failing = 0;
    }
    h->stats.commits++;
    h->upkeep_due = 1;
    /* the rows have consecutive ids ending at the last one */
    int64_t next_id = history_last_commit_id(db) + 1;
    for (int g = 0; g < gone_count; g++)
        next_id -= gone[g].room_count;
    for (size_t k = 0; k < n; k++)
        if (valid[k])
            next_id -= rec[k].room_count;
    if (n > 0 && who[0].gone) {
        for (int g = 0; g < gone_count; g++) {
            gone[g].id = next_id;
            gone[g].stored = 1;
            next_id += gone[g].room_count;
            h->stats.lines_stored += gone[g].room_count;
            gone[g].last_open = h->open_seq;
            (void)deliver_event(h, &gone[g]);
        }
        if (strcmp(who[0].node, h->cfg.node) == 0 && (int64_t)who[0].epoch == h->cfg.epoch)
            reannounce(h);
        else
            chat_remote_node_users(h->chat, who[0].node, who[0].epoch, 1, NULL, NULL);
    }
    for (int g = 0; g < gone_count; g++)
        outbox_entry_free(&gone[g]);
    free(gone);
    for (size_t k = 0; k < n; k++) {
        if (!valid[k]) {
            /* ours, but no node could read it: its sender is told, and
             * nothing waits behind it */
            outbox_entry *bad = dv[k].own_serial && !dv[k].gap_first ? published_entry(h, dv[k].own_serial) : NULL;
            if (bad && !who[k].gone) {
                bad->rejected = 1;
                bad->persist = 0;
                entry_settled(h, bad);
                h->stats.rejected_lines++;
                outbox_deliver(h);
            }
            outbox_entry_free(&rec[k]);
            continue;
        }
        rec[k].id = next_id;
        rec[k].stored = 1;
        next_id += rec[k].room_count;
        h->stats.lines_stored += rec[k].room_count;
        outbox_entry *mine = dv[k].own_serial ? published_entry(h, dv[k].own_serial) : NULL;
        if (mine) {
            /* ours: delivered from the outbox, in its place among the
             * sender's replies */
            mine->id = rec[k].id;
            mine->stored = 1;
            entry_settled(h, mine);
            outbox_entry_free(&rec[k]);
            outbox_deliver(h);
            continue;
        }
        int shown = presence_apply(h, &rec[k], &who[k]);
        if (rec[k].kind == HISTORY_MSG)
            shown = msg_recipient_here(h, &rec[k], &who[k]);
        if (rec[k].kind == HISTORY_TOPIC) {
            history_record topic = { rec[k].id, rec[k].at, rec[k].data->data + rec[k].rooms_off,
                                     rec[k].data->data, HISTORY_TOPIC, rec[k].data->data + rec[k].body_off,
                                     rec[k].body_len };
            chat_restore_topic(h->chat, &topic);
        }
        rec[k].last_open = h->open_seq;   /* everyone here now sees it */
        rec[k].held = !cluster_ready(c);   /* a catch-up's backlog is a burst, as after an outage */
        if (shown)
            (void)deliver_event(h, &rec[k]);
        outbox_entry_free(&rec[k]);
    }
    free(rec);
    free(valid);
    free(who);
    cluster_applied(c, n);
    return cluster_deliveries(c, &dv) ? 0 : -1;
}

/* A private message's recipient, if it is a user of this node: the record's
 * to_slot set to it.  Returns 1 if so. */
static int msg_recipient_here(hub *h, outbox_entry *e, const record_who *who)
{
    if (strcmp(who->to_node, h->cfg.node) != 0 || who->to_epoch != (uint64_t)h->cfg.epoch)
        return 0;
    uint32_t to = chat_nick_holder(h->chat, e->data->data + e->target_off);
    if (to >= h->cfg.max_sessions || !slot_live(h, to) || h->slots[to].conn_id != who->to_sid) {
        /* the nick changed hands: look for the connection itself */
        to = CHAT_NO_SLOT;
        for (uint32_t i = 0; i < h->cfg.max_sessions && to == CHAT_NO_SLOT; i++)
            if (slot_live(h, i) && h->slots[i].conn_id == who->to_sid)
                to = i;
        if (to == CHAT_NO_SLOT)
            return 0;   /* left meanwhile: at most once, like a line to a room */
    }
    e->to_slot = to;
    e->to_conn = h->slots[to].conn_id;
    return 1;
}

static int bus_send_direct(hub *h, const outbox_entry *e)
{
    static char rec[RECORD_MAX];
    uint64_t epoch, sid;
    const char *node = chat_remote_node(h->chat, e->to_slot, &epoch, &sid);
    size_t n = node ? record_encode(h, e, rec, sizeof rec) : 0;
    return n && cluster_send_direct(h->cfg.cluster, node, rec, n) == 0 ? 0 : -1;
}

/* Private messages other nodes sent straight to users here. */
static void bus_direct(hub *h)
{
    const cluster_delivery *dm;
    size_t n = cluster_direct_messages(h->cfg.cluster, &dm);
    for (size_t k = 0; k < n; k++) {
        outbox_entry e;
        record_who who;
        const char *why;
        memset(&who, 0, sizeof who);
        if (record_decode(&dm[k], &e, &who, &why) != 0 || who.gone || e.kind != HISTORY_MSG) {
            log_warn("cluster: a private message from another node was not one (%s); dropped",
                     who.gone ? "a control record" : why);
            outbox_entry_free(&e);
            continue;
        }
        e.persist = 0;
        e.last_open = h->open_seq;
        if (msg_recipient_here(h, &e, &who))
            (void)deliver_event(h, &e);
        outbox_entry_free(&e);
    }
    cluster_direct_done(h->cfg.cluster);
}

/* Who is here, for a node that just started (cluster.h): asked, this node
 * answers with its own users; answered, the other node's users join this
 * node's view.  Not through the stream: a started node's view is seeded,
 * then kept by the records like everyone's. */
static void bus_who(hub *h)
{
    const cluster_who *w;
    size_t n = cluster_who_messages(h->cfg.cluster, &w);
    for (size_t k = 0; k < n; k++) {
        if (w[k].reply) {
            static char ans[GONE_RECORD_MAX];   /* static: the I/O thread's only, too big for its stack */
            size_t off = (size_t)snprintf(ans, sizeof ans, "{\"node\":\"%s\",\"epoch\":%lld,\"users\":[",
                                          h->cfg.node, (long long)h->cfg.epoch);
            int users = 0;
            for (uint32_t slot = 0; slot < h->cfg.max_sessions; slot++) {
                const char *rooms[CHAT_ROOMS_PER_SESSION];
                const char *nick = slot_live(h, slot) && !h->slots[slot].detecting ? chat_session_nick(h->chat, slot)
                                                                                   : NULL;
                uint32_t rc = nick ? chat_session_rooms(h->chat, slot, rooms, CHAT_ROOMS_PER_SESSION) : 0;
                if (rc == 0 || sizeof ans - off < 64 + CHAT_NAME_MAX + rc * (CHAT_NAME_MAX + 4))
                    continue;
                off += (size_t)snprintf(ans + off, sizeof ans - off, "%s{\"sid\":%u,\"nick\":\"%s\",\"rooms\":[",
                                        users++ ? "," : "", (unsigned)h->slots[slot].conn_id, nick);
                for (uint32_t r = 0; r < rc; r++)
                    off += (size_t)snprintf(ans + off, sizeof ans - off, "%s\"%s\"", r ? "," : "", rooms[r]);
                memcpy(ans + off, "]}", 2);
                off += 2;
            }
            memcpy(ans + off, "]}", 2);
            off += 2;
            (void)cluster_answer_who(h->cfg.cluster, w[k].reply, ans, off);
            continue;
        }
        const char *doc = w[k].payload, *arr, *val;
        size_t len = w[k].payload_len, arr_len, val_len, pos = 0;
        char node[CLUSTER_NODE_MAX + 1];
        uint64_t epoch;
        if (json_valid(doc, len) != 0 || json_get_string(doc, len, "node", node, sizeof node) != 0 ||
            !name_ok(node, 0) || strcmp(node, h->cfg.node) == 0 || json_get_u64(doc, len, "epoch", &epoch) != 0 ||
            json_get(doc, len, "users", &arr, &arr_len) != JSON_ARRAY) {
            log_warn("cluster: an answer to who-is-where was not one; ignored");
            continue;
        }
        int added = 0;
        while (json_array_next(arr, arr_len, &pos, &val, &val_len) == JSON_OBJECT) {
            char nick[CHAT_NAME_MAX + 1], room[CHAT_NAME_MAX + 1];
            uint64_t sid;
            const char *rarr, *rv;
            size_t rarr_len, rv_len, rpos = 0;
            if (json_get_u64(val, val_len, "sid", &sid) != 0 ||
                json_get_string(val, val_len, "nick", nick, sizeof nick) != 0 || !name_ok(nick, 0) ||
                json_get(val, val_len, "rooms", &rarr, &rarr_len) != JSON_ARRAY)
                continue;
            while (json_array_next(rarr, rarr_len, &rpos, &rv, &rv_len) == JSON_STRING)
                if (json_unescape(rv, rv_len, room, sizeof room) == 0 && name_ok(room, 0) &&
                    chat_remote_join(h->chat, node, epoch, sid, nick, room) == CHAT_REMOTE_JOINED)
                    added = 1;
        }
        if (added)
            log_info("cluster: node %s's users are known here now", node);
    }
    cluster_who_done(h->cfg.cluster);
}

static int bus_step(hub *h, int64_t now)
{
    bus_publish(h, now);
    bus_direct(h);
    bus_who(h);
    int wait = bus_apply(h, now);
    bus_health(h, now);
    liveness_check(h, now);
    wait = earliest(wait, (int)(h->next_liveness > now ? h->next_liveness - now : 0));
    if (h->bus_failing || h->ob_unstored > 0)
        wait = earliest(wait, h->bus_failing ? COMMIT_RETRY_MS : BUS_STALL_MS);
    return wait;
}

/* ---- effects ----------------------------------------------------------- */

/* ---- the later list: queries answered in turn ---------------------------
 *
 * A query (/history, /search, the replay on connect and on /join) is not
 * answered where it is asked: it joins the end of the session's later list,
 * an ordered list of msgbufs (sendq used as a list, never sent), together
 * with everything queued for that session after it, so the session's output
 * keeps the order of its commands.  Each turn, drain_later moves a session's
 * list into its send queue while the queue pins at most max_queue_bytes, and
 * answers at most QUERIES_PER_TURN queries over all sessions, round robin:
 * an answer is sent only as fast as the client reads it, and no number of
 * queries from any number of clients can hold the thread for long.  A query
 * is answered from what was stored when it was asked (max_id), so a line
 * delivered live in between is never replayed after it, nor twice. */

typedef struct query_ctx {
    hub *h;
    uint32_t slot;
    int rows;
} query_ctx;

/* The query as kept in its msgbuf: fixed fields, then "room\0words\0". */
typedef struct later_query {
    int64_t max_id;
    int32_t limit;
    uint8_t is_search;
    uint8_t range, from_newest;        /* a CHATHISTORY range */
    uint8_t bound_fixed;               /* max_id was read when asked (a replay on join) */
    int64_t lo_id, hi_id;
    char lo_at[HISTORY_TIME_LEN + 1], hi_at[HISTORY_TIME_LEN + 1];   /* "" = none */
} later_query;

static int send_history_row(void *ctx, const history_record *rec)
{
    query_ctx *q = ctx;
    char out[4 * TEXT_MAX_LINE];
    size_t n = chat_render_history(q->h->chat, q->slot, rec, out, sizeof out);
    q->rows++;
    if (n == 0)
        return 0;   /* a row its dialect does not show */
    msgbuf *m = msgbuf_bytes(out, n);
    if (!m) {
        request_close(q->h, q->slot, "out of memory");
        return 1;
    }
    queue_to_as(q->h, q->slot, m, 1);
    msgbuf_release(m);
    return 0;
}

static void later_push_query(hub *h, uint32_t slot, msgbuf *m)
{
    hub_slot *s = &h->slots[slot];
    /* The bound of the answer: what is stored now.  Everything delivered
     * before this point is at or below it, everything after above it, so a
     * line is neither replayed after it was shown live nor shown twice. */
    later_query lq;
    memcpy(&lq, m->data, sizeof lq);
    if (!lq.bound_fixed) {
        lq.max_id = history_newest_id(h->cfg.history);
        memcpy(m->data, &lq, sizeof lq);
    }
    if (sendq_push_tagged(&s->later, m, LATER_QUERY) != 0)
        request_close(h, slot, "out of memory");
    else
        later_list_add(h, slot);
}

static void defer_query(hub *h, const chat_effect *fx)
{
    if (!slot_live(h, fx->slot))
        return;
    hub_slot *s = &h->slots[fx->slot];
    if (!h->cfg.history) {
        notice_text(h, fx->slot, NOTICE_HISTORY_OFF, sizeof NOTICE_HISTORY_OFF - 1);
        return;
    }
    if (s->queries >= LATER_MAX_QUERIES) {
        static const char msg[] = "*** too many requests waiting for their answers; try again later";
        notice_text(h, fx->slot, msg, sizeof msg - 1);
        return;
    }
    const char *words = fx->words ? fx->words : "";
    size_t room_len = strlen(fx->room), words_len = strlen(words);
    msgbuf *m = msgbuf_alloc(sizeof(later_query) + room_len + words_len + 2);
    if (!m) {
        request_close(h, fx->slot, "out of memory");
        return;
    }
    later_query lq;
    memset(&lq, 0, sizeof lq);
    lq.limit = fx->limit;
    /* The bound of the answer: a replay on join shows what was there when
     * the session came (not its own join); a command, what is stored once
     * the lines before it are (read when it leaves the outbox). */
    lq.bound_fixed = fx->on_join;
    if (fx->on_join)
        lq.max_id = history_newest_id(h->cfg.history);
    lq.is_search = fx->words != NULL;
    lq.range = fx->range;
    lq.from_newest = fx->from_newest;
    lq.lo_id = fx->lo.id;
    lq.hi_id = fx->hi.id;
    snprintf(lq.lo_at, sizeof lq.lo_at, "%s", fx->lo.at ? fx->lo.at : "");
    snprintf(lq.hi_at, sizeof lq.hi_at, "%s", fx->hi.at ? fx->hi.at : "");
    memcpy(m->data, &lq, sizeof lq);
    memcpy(m->data + sizeof lq, fx->room, room_len + 1);
    memcpy(m->data + sizeof lq + room_len + 1, words, words_len + 1);
    m->len = (uint32_t)(sizeof lq + room_len + words_len + 2);
    s->queries++;
    if (fx->on_join ? s->ob_pending > 0 : h->ob_count > 0) {
        /* Behind what the outbox holds (the session's own JOIN before its
         * replay; lines said just before it): answered from what is stored
         * once they are (later_push_query reads max_id then). */
        outbox_entry *e = outbox_push(h);
        if (!e) {
            request_close(h, fx->slot, "out of memory");
        } else {
            e->type = ENTRY_QUERY;
            e->from_slot = fx->slot;
            e->from_conn = s->conn_id;
            msgbuf_retain(m);
            e->data = m;
            e->pending_for_slot = 1;
            s->ob_pending++;
        }
    } else {
        later_push_query(h, fx->slot, m);
    }
    msgbuf_release(m);
}

/* The dialect's frame around an answer (an IRC batch, or notices). */
static void query_mark(hub *h, uint32_t slot, const char *room, const char *words, int end)
{
    char out[512];
    size_t n = chat_render_query_mark(h->chat, slot, room, words, end, out, sizeof out);
    msgbuf *m = n ? msgbuf_bytes(out, n) : NULL;
    if (m) {
        queue_to_as(h, slot, m, 1);
        msgbuf_release(m);
    }
}

static void answer_query(hub *h, uint32_t slot, const msgbuf *m)
{
    later_query lq;
    memcpy(&lq, m->data, sizeof lq);
    const char *room = m->data + sizeof lq;
    const char *words = room + strlen(room) + 1;
    query_ctx q = { h, slot, 0 };
    int rc;
    query_mark(h, slot, room, lq.is_search ? words : NULL, 0);
    if (lq.range) {
        history_bound lo = { lq.lo_id, lq.lo_at[0] ? lq.lo_at : NULL };
        history_bound hi = { lq.hi_id, lq.hi_at[0] ? lq.hi_at : NULL };
        rc = history_range(h->cfg.history, room, &lo, &hi, lq.limit, lq.from_newest, lq.max_id,
                           send_history_row, &q);
    } else if (!lq.is_search)
        rc = history_recent_upto(h->cfg.history, room, lq.limit, lq.max_id, send_history_row, &q);
    else
        rc = history_search_upto(h->cfg.history, room, words, lq.limit, lq.max_id, send_history_row, &q);
    query_mark(h, slot, room, lq.is_search ? words : NULL, 1);
    /* the answer is going out now (h->answering): so do these */
    if (rc == HISTORY_LIMIT) {
        static const char msg[] = "*** search stopped: too many matches elsewhere to scan; try more specific words";
        notice_as(h, slot, msg, sizeof msg - 1, 1);
    } else if (rc != HISTORY_OK) {
        log_warn("history: %s query failed: %s", lq.is_search ? "search" : "replay",
                 history_errmsg(h->cfg.history));
        static const char msg[] = "*** history is unavailable right now";
        notice_as(h, slot, msg, sizeof msg - 1, 1);
    } else if (lq.is_search && q.rows == 0) {
        static const char msg[] = "*** no matches";
        notice_as(h, slot, msg, sizeof msg - 1, 1);
    }
}

/* Moves slot's later list into its send queue, in order, while the queue
 * pins at most max_queue_bytes; a query is answered only while *budget lasts.
 * Returns 1 when the list is empty. */
static int drain_later(hub *h, uint32_t slot, int *budget)
{
    hub_slot *s = &h->slots[slot];
    size_t bound = h->cfg.max_queue_bytes;
    uint32_t tag;
    msgbuf *m;
    while (slot_live(h, slot) && (m = sendq_peek(&s->later, &tag)) != NULL) {
        if (bound && s->q.pinned > bound)
            return 0;   /* sent as the client reads: hub_session_sent brings us back */
        if (tag == LATER_QUERY) {
            if (*budget <= 0) {
                h->later_budget_spent = 1;
                return 0;
            }
            --*budget;
            CR_ASSERT(s->queries > 0);
            s->queries--;
            msgbuf_retain(m);
            sendq_drop_first(&s->later);
            h->answering = slot;
            answer_query(h, slot, m);
            h->answering = UINT32_MAX;
            msgbuf_release(m);
            continue;
        }
        msgbuf_retain(m);
        sendq_drop_first(&s->later);
        if (sendq_push(&s->q, m) == 0) {
            h->stats.deliveries++;
            mark_flush(h, slot);
        } else {
            request_close(h, slot, "out of memory");
        }
        msgbuf_release(m);
    }
    if (!slot_live(h, slot))
        sendq_clear(&s->later);
    return s->later.count == 0;
}

static void drain_later_lists(hub *h)
{
    int budget = QUERIES_PER_TURN;
    uint32_t n = h->later_count;
    h->later_budget_spent = 0;
    if (n == 0)
        return;
    uint32_t start = h->later_next % n;
    /* One pass in round-robin order; slots emptied are removed afterwards
     * (drain_later never adds to the list: queries are deferred from input). */
    for (uint32_t k = 0; k < n; k++) {
        uint32_t slot = h->later_list[(start + k) % n];
        (void)drain_later(h, slot, &budget);
    }
    h->later_next = start + 1;
    uint32_t kept = 0;
    for (uint32_t k = 0; k < h->later_count; k++) {
        uint32_t slot = h->later_list[k];
        if (h->slots[slot].later.count > 0 && slot_live(h, slot))
            h->later_list[kept++] = slot;
        else
            h->slots[slot].in_later_list = 0;
    }
    h->later_count = kept;
}

/* The session asked to go (or chat cut it): closed once what it was told
 * before is out, so a QUIT after a NICK still sees the NICK's echo. */
static void close_after_output(hub *h, uint32_t slot, const char *reason)
{
    hub_slot *s = &h->slots[slot];
    if (!slot_live(h, slot))
        return;
    if (s->ob_pending == 0) {
        request_close(h, slot, reason);
        return;
    }
    outbox_entry *e = outbox_push(h);
    if (!e) {
        request_close(h, slot, reason);
        return;
    }
    e->type = ENTRY_CLOSE;
    e->from_slot = slot;
    e->from_conn = s->conn_id;
    e->reason = reason;
    e->pending_for_slot = 1;
    s->ob_pending++;
}

static void run_effects(hub *h)
{
    const chat_effect *fx;
    size_t n = chat_effects(h->chat, &fx);
    for (size_t i = 0; i < n; i++) {
        switch (fx[i].kind) {
        case CHAT_REPLY:
            reply_text(h, fx[i].slot, fx[i].text, fx[i].text_len);
            break;
        case CHAT_EVENT:
            (void)outbox_add_event(h, &fx[i]);
            break;
        case CHAT_QUERY:
            defer_query(h, &fx[i]);
            break;
        case CHAT_CLOSE:
            if (fx[i].text)
                reply_text(h, fx[i].slot, fx[i].text, fx[i].text_len);
            /* where password guesses come from, for the operator (the secret is never logged) */
            if (fx[i].reason && h->password_set &&
                (strcmp(fx[i].reason, "bad password") == 0 || strcmp(fx[i].reason, "no password") == 0))
                log_info("session %u: %s, client %s", (unsigned)fx[i].slot, fx[i].reason, h->slots[fx[i].slot].ip);
            close_after_output(h, fx[i].slot, fx[i].reason ? fx[i].reason : "closed");
            break;
        }
    }
}

/* ---- sessions ---------------------------------------------------------- */

const char *hub_admit(const hub *h, const char *peer_ip, int have_free_slot)
{
    static char notice[160];
    if (!have_free_slot) {
        snprintf(notice, sizeof notice, "*** server is full (%u sessions); try again later",
                 (unsigned)h->cfg.max_sessions);
        return notice;
    }
    if (h->cfg.max_per_ip > 0) {
        int same = 0;
        for (uint32_t i = 0; i < h->cfg.max_sessions && same < h->cfg.max_per_ip; i++)
            if (h->slots[i].conn_id != 0 && strcmp(h->slots[i].ip, peer_ip) == 0)
                same++;
        if (same >= h->cfg.max_per_ip) {
            snprintf(notice, sizeof notice, "*** too many connections from your address (limit %d)",
                     h->cfg.max_per_ip);
            return notice;
        }
    }
    return NULL;
}

/* The session's dialect is known: chat greets it (or, for IRC, waits for
 * its registration). */
static void open_as(hub *h, uint32_t slot, chat_dialect dialect, int64_t now_ms)
{
    hub_slot *s = &h->slots[slot];
    if (s->detecting) {
        s->detecting = 0;
        h->detecting--;
    }
    s->irc = dialect == CHAT_DIALECT_IRC;
    s->open_seq = ++h->open_seq;
    h->irc_sessions += s->irc;
    h->input_now = now_ms;
    h->input_wall_ms = clock_wall_ms();
    chat_session_open(h->chat, slot, s->conn_id, dialect, now_ms);
    run_effects(h);
}

void hub_session_open(hub *h, uint32_t slot, const char *peer_ip, hub_listen listen, int64_t now_ms)
{
    hub_slot *s = &h->slots[slot];
    /* in_flush_list/in_close_list survive reuse: stale list entries for the
     * old session may still be queued, and the lists must never hold a slot twice. */
    s->closing = 0;
    s->close_reason[0] = '\0';
    s->over_since = 0;
    s->sent_since_check = 0;
    s->queries = 0;
    s->ob_pending = 0;   /* what the outbox holds for the previous occupant is not ours to wait for */
    s->detecting = 0;
    if (++h->next_conn_id == 0)
        h->next_conn_id = 1;
    s->conn_id = h->next_conn_id;
    s->last_input_ms = now_ms;
    snprintf(s->ip, sizeof s->ip, "%s", peer_ip);
    sendq_init(&s->q);
    sendq_init(&s->later);
    framer_init(&s->fr);
    h->open_count++;
    if (listen == HUB_LISTEN_DETECT && h->cfg.detect_ms > 0) {
        /* IRC clients speak first; a line client hears the greeting when it
         * says something or after detect_ms (see on_line, detect_check) */
        s->detecting = 1;
        s->detect_until = now_ms + h->cfg.detect_ms;
        h->detecting++;
        return;
    }
    open_as(h, slot, listen == HUB_LISTEN_IRC ? CHAT_DIALECT_IRC : CHAT_DIALECT_LINE, now_ms);
}

static void on_line(void *ctx, const char *line, size_t len, unsigned flags)
{
    hub *h = ctx;
    uint32_t slot = h->input_slot;
    if (!slot_live(h, slot))
        return;
    hub_slot *s = &h->slots[slot];
    int cut = 0;
    size_t n = text_clean_keeping(line, len, h->clean, sizeof h->clean, &cut, s->irc || s->detecting ? 1 : 0);
    int truncated = cut || (flags & FRAMER_LINE_TRUNCATED);
    if (!truncated && text_is_blank(h->clean, n))
        return;
    if (s->detecting)
        open_as(h, slot, chat_irc_first_line(h->clean, n) ? CHAT_DIALECT_IRC : CHAT_DIALECT_LINE, h->input_now);
    if (!s->irc && memchr(h->clean, 1, n)) {
        /* a line client's CTCP delimiter: removed like any other control */
        size_t w = 0;
        for (size_t i = 0; i < n; i++)
            if (h->clean[i] != 1)
                h->clean[w++] = h->clean[i];
        n = w;
        h->clean[n] = '\0';
        if (text_is_blank(h->clean, n))
            return;
    }
    if (!slot_live(h, slot))
        return;
    h->stats.lines_in++;
    chat_session_line(h->chat, slot, h->clean, n, truncated, h->input_now);
    run_effects(h);
}

static void on_telnet_reply(void *ctx, const unsigned char *bytes, size_t len)
{
    hub *h = ctx;
    hub_slot *s = &h->slots[h->input_slot];
    if (!slot_live(h, h->input_slot))
        return;
    /* Replies to a negotiation flood would each cost a buffer: appended to
     * the last queued one when it has room (see sendq_append). */
    if (s->later.count == 0 && s->ob_pending == 0 && sendq_append(&s->q, bytes, len)) {
        mark_flush(h, h->input_slot);
        return;
    }
    msgbuf *m = msgbuf_bytes(bytes, len);
    if (m) {
        send_bytes(h, h->input_slot, m);
        msgbuf_release(m);
    }
}

void hub_session_input(hub *h, uint32_t slot, const unsigned char *data, size_t n, int64_t now_ms)
{
    if (!slot_live(h, slot))
        return;
    h->slots[slot].last_input_ms = now_ms;
    h->input_slot = slot;
    h->input_now = now_ms;
    h->input_wall_ms = clock_wall_ms();
    framer_feed(&h->slots[slot].fr, data, n, on_line, on_telnet_reply, h);
}

size_t hub_session_read_size(const hub *h, uint32_t slot)
{
    if (slot >= h->cfg.max_sessions)
        return HUB_READ_LINE;
    return h->slots[slot].irc ? HUB_READ_IRC : HUB_READ_LINE;
}

void hub_session_sent(hub *h, uint32_t slot, size_t transferred)
{
    hub_slot *s = &h->slots[slot];
    if (transferred > 0)
        s->sent_since_check = 1;
    sendq_complete(&s->q, transferred);
    if (sendq_has_unsent(&s->q))
        mark_flush(h, slot);
    /* drain_later stopped at the bound and waits for this: a send completed
     * at once in the flush wakes nothing, so say the next turn is due now */
    if (transferred > 0 && s->in_later_list && (!h->cfg.max_queue_bytes || s->q.pinned <= h->cfg.max_queue_bytes))
        h->later_movable = 1;
}

int hub_turn_due(hub *h)
{
    int due = h->later_movable;
    h->later_movable = 0;
    return due;
}

void hub_session_closed(hub *h, uint32_t slot, const char *reason)
{
    hub_slot *s = &h->slots[slot];
    if (s->conn_id == 0)
        return;
    s->closing = 1;
    if (s->detecting) {
        s->detecting = 0;
        h->detecting--;
    }
    h->irc_sessions -= s->irc;
    s->irc = 0;
    h->input_wall_ms = clock_wall_ms();
    chat_session_close(h->chat, slot, reason);
    run_effects(h);
    sendq_clear(&s->q);
    sendq_clear(&s->later);
    s->conn_id = 0;
    h->open_count--;
}

/* ---- the turn ---------------------------------------------------------- */

/* Once a second: the idle timeout (both dialects) and the IRC dialect's
 * pings of silent clients. */
static int idle_check(hub *h, int64_t now)
{
    if (!h->cfg.idle_timeout_ms && h->irc_sessions == 0 && !h->password_set)
        return -1;
    if (now >= h->next_idle_check) {
        /* the clocks of what a tick may make, read once for the whole pass */
        h->input_now = now;
        h->input_wall_ms = clock_wall_ms();
        for (uint32_t i = 0; i < h->cfg.max_sessions; i++) {
            hub_slot *s = &h->slots[i];
            if (s->conn_id == 0 || s->closing || s->detecting)
                continue;
            if (h->cfg.idle_timeout_ms && now - s->last_input_ms >= h->cfg.idle_timeout_ms) {
                char text[96];
                int n = snprintf(text, sizeof text, "*** idle for %d seconds; disconnecting",
                                 h->cfg.idle_timeout_ms / 1000);
                notice_text(h, i, text, (size_t)n);
                request_close(h, i, "timeout");
            } else if (s->irc || h->password_set) {   /* pings; registration and password timeouts */
                chat_session_tick(h->chat, i, now - s->last_input_ms);
                run_effects(h);
            }
        }
        h->next_idle_check = now + IDLE_CHECK_MS;
    }
    return (int)(h->next_idle_check - now);
}

/* Connections that said nothing within detect_ms are line clients: greeted now. */
static int detect_check(hub *h, int64_t now)
{
    if (h->detecting == 0)
        return -1;
    int64_t next = -1;
    for (uint32_t i = 0; i < h->cfg.max_sessions && h->detecting > 0; i++) {
        hub_slot *s = &h->slots[i];
        if (!s->detecting || s->conn_id == 0)
            continue;
        if (now >= s->detect_until)
            open_as(h, i, CHAT_DIALECT_LINE, now);
        else if (next < 0 || s->detect_until - now < next)
            next = s->detect_until - now;
    }
    return (int)next;
}

/* The slow-consumer rule's clock (see queue_to_as). */
static int slow_check(hub *h, int64_t now)
{
    size_t bound = h->cfg.max_queue_bytes;
    if (!bound || !h->slow_watch)
        return -1;
    if (now >= h->next_slow_check) {
        int any_over = 0;
        for (uint32_t i = 0; i < h->cfg.max_sessions; i++) {
            hub_slot *s = &h->slots[i];
            if (!slot_live(h, i))
                continue;
            any_over |= s->q.pinned > bound;
            if (s->q.pinned <= bound || s->sent_since_check)
                s->over_since = s->q.pinned <= bound ? 0 : now;
            else if (s->over_since == 0)
                s->over_since = now;
            else if (now - s->over_since >= SLOW_GRACE_MS)
                cut_slow_consumer(h, i);
            s->sent_since_check = 0;
        }
        h->next_slow_check = now + SLOW_CHECK_MS;
        h->slow_watch = any_over;
        if (!any_over)
            return -1;
    }
    return (int)(h->next_slow_check - now);
}

static int prune_step(hub *h, int64_t now)
{
    if (!h->cfg.history || !h->cfg.retention)
        return -1;
    if (now >= h->next_prune) {
        int n = history_prune_step(h->cfg.history, clock_wall_ms(), PRUNE_BATCH);
        if (n > 0) {
            log_info("history: retention removed %d old line(s)", n);
            h->upkeep_due = 1;   /* the index can be merged down in a quiet moment */
        } else if (n < 0) {
            log_warn("history: retention step failed: %s", history_errmsg(h->cfg.history));
        }
        h->next_prune = now + (n == PRUNE_BATCH ? 10 : PRUNE_IDLE_MS);
    }
    return (int)(h->next_prune - now);
}

static int earliest(int a, int b)
{
    if (a < 0)
        return b;
    if (b < 0)
        return a;
    return a < b ? a : b;
}

int hub_turn(hub *h, int64_t now_ms)
{
    int wait = -1;
    h->input_now = now_ms;
    /* the timers first: what they make (a greeting's join, an IRC ping, an
     * idle cut's notice) is stored and delivered in this turn */
    wait = earliest(wait, detect_check(h, now_ms));
    wait = earliest(wait, idle_check(h, now_ms));
    if (h->cfg.cluster)
        wait = earliest(wait, bus_step(h, now_ms));
    else if (h->cfg.history && !outbox_commit(h, now_ms))
        wait = earliest(wait, COMMIT_RETRY_MS);
    outbox_deliver(h);
    drain_later_lists(h);
    if (h->later_budget_spent)
        wait = 0;   /* more queries wait for the next turn, not for input */
    wait = earliest(wait, slow_check(h, now_ms));
    wait = earliest(wait, prune_step(h, now_ms));
    if (h->upkeep_due)
        wait = earliest(wait, UPKEEP_DELAY_MS);   /* so that a quiet moment is noticed */
    return wait;
}

void hub_idle(hub *h)
{
    if (!h->upkeep_due || !h->cfg.history || h->ob_count > 0)
        return;
    int rc = history_idle_step(h->cfg.history);
    if (rc == 0)
        h->upkeep_due = 0;
    else if (rc < 0)
        log_debug("history: idle upkeep deferred: %s", history_errmsg(h->cfg.history));
}

void hub_stopping(hub *h, int64_t now_ms)
{
    static const char msg[] = "*** server is stopping; goodbye";
    h->input_now = now_ms;
    h->stopping = 1;
    for (uint32_t i = 0; i < h->cfg.max_sessions; i++)
        if (slot_live(h, i) && !h->slots[i].detecting)
            notice_text(h, i, msg, sizeof msg - 1);
    h->db_failing = 0;   /* one last attempt now, whatever the retry timer says */
    hub_turn(h, now_ms);
}

int hub_final_commit(hub *h, int64_t now_ms)
{
    h->db_failing = 0;
    hub_turn(h, now_ms);
    if (h->ob_count > 0)
        log_error("history: %u line(s) could not be stored before the stop and were not delivered (%s)",
                  (unsigned)h->ob_count,
                  h->cfg.cluster && h->bus_failing ? "the cluster's bus did not take them"
                  : h->cfg.history ? history_errmsg(h->cfg.history) : "no history");
    return (int)h->ob_count;
}

int hub_next_flush(hub *h, uint32_t *slot)
{
    if (h->flush_count == 0)
        return 0;
    *slot = h->flush_list[--h->flush_count];
    h->slots[*slot].in_flush_list = 0;
    return 1;
}

int hub_next_close(hub *h, uint32_t *slot, const char **reason)
{
    while (h->close_count > 0) {
        uint32_t i = h->close_list[--h->close_count];
        hub_slot *s = &h->slots[i];
        s->in_close_list = 0;
        if (s->conn_id == 0 || !s->closing)
            continue;   /* stale: that session is gone and the slot maybe reused */
        *slot = i;
        *reason = s->close_reason;
        return 1;
    }
    return 0;
}

sendq *hub_sendq(hub *h, uint32_t slot)
{
    return &h->slots[slot].q;
}

uint32_t hub_session_conn_id(const hub *h, uint32_t slot)
{
    return h->slots[slot].conn_id;
}

uint32_t hub_held(const hub *h)
{
    return h->ob_count;
}

void hub_get_stats(const hub *h, hub_stats *out)
{
    *out = h->stats;
    out->sessions = h->open_count;
}

/* hub: the relay's portable engine, everything between "bytes arrived" and
 * "bytes to send", for a fixed array of session slots.
 *
 * Owns: per-slot framing, cleaning and send queue; admission (capacity and
 * per-IP limits); executing chat effects; the outbox of lines waiting to be
 * stored (store-then-forward: a line is delivered only after the transaction
 * holding it committed; one transaction per turn; if the database is busy the
 * lines wait in order and the turn retries; past a bound new lines are refused);
 * idle timeouts; slow consumers (queue over max_queue_bytes -> closed).
 * Never: touches sockets or Win32.  The Win32 shell (relay.c) calls it after
 * every APC drain and performs the sends and closes it asks for.
 * Portable C11, single-threaded.
 */
#ifndef CHATRELAY_HUB_H
#define CHATRELAY_HUB_H

#include <stddef.h>
#include <stdint.h>

#include "chat.h"
#include "cluster.h"
#include "options.h"
#include "outbuf.h"
#include "../storage/history.h"

typedef struct hub_config {
    chat_config chat;
    uint32_t max_sessions;
    size_t max_queue_bytes;      /* slow-consumer bound on one session's unsent bytes */
    int max_per_ip;              /* 0 = no limit */
    int idle_timeout_ms;         /* 0 = off */
    history *history;            /* NULL = --no-history: lines are delivered at once */
    int retention;               /* run history_prune_step now and then */
    size_t pending_max_lines;    /* outbox bounds while the database is unavailable */
    size_t pending_max_bytes;
    int pending_max_ms;
    int detect_ms;               /* HUB_LISTEN_DETECT: how long a silent client waits for the line greeting */
    cluster *cluster;            /* --cluster: stored lines go through the stream (NULL = one node) */
    const char *node;            /* --cluster: this node's name, in its records */
    int64_t epoch;               /* --cluster: this run of the node (its records and beats carry it) */
} hub_config;

/* What a listener speaks. */
typedef enum hub_listen {
    HUB_LISTEN_LINE,             /* the line protocol, greeted at once */
    HUB_LISTEN_DETECT,           /* IRC if the first line is CAP/NICK/USER/PASS, else the line protocol */
    HUB_LISTEN_IRC               /* --listen-irc: IRC only */
} hub_listen;

typedef struct hub hub;

/* Counters for logs and the benchmark. */
typedef struct hub_stats {
    uint64_t lines_in, lines_stored, deliveries, commits, commit_busy, refused_lines;
    uint64_t dropped_notices;    /* announcements dropped during the current database outage */
    uint64_t rejected_lines;     /* records the database refused (HISTORY_REJECTED): dropped, sender told */
    uint32_t sessions;
} hub_stats;

/* While the database is unavailable, new chat is refused once the held lines
 * pass any of these (docs/ARCHITECTURE.md, "Store-then-forward"). */
#define HUB_OUTAGE_MAX_LINES 10000
#define HUB_OUTAGE_MAX_BYTES (8u << 20)
#define HUB_OUTAGE_MAX_MS 5000

/* The hub's configuration for the relay's options (db: the opened history,
 * or NULL with --no-history): the one place options become hub policy. */
void hub_config_from_options(hub_config *cfg, const relay_options *opt, history *db);

hub *hub_create(const hub_config *cfg);
void hub_destroy(hub *h);

/* Admission.  Returns NULL if a new connection from peer_ip may take a slot,
 * else the one-line notice (without CRLF) to send it before closing. */
const char *hub_admit(const hub *h, const char *peer_ip, int have_free_slot);
/* The slot is now a live session accepted on a listener of kind `listen`
 * (a line session is greeted at once, with replay and join announcement; an
 * IRC session registers; a detecting one waits for its first line). */
void hub_session_open(hub *h, uint32_t slot, const char *peer_ip, hub_listen listen, int64_t now_ms);
/* Bytes received on slot. */
void hub_session_input(hub *h, uint32_t slot, const unsigned char *data, size_t n, int64_t now_ms);

/* The most the shell reads for one session in one turn (one receive, sized
 * by hub_session_read_size): the bound on what one sender puts into a turn,
 * and so on the lines a turn delivers in one gathered send to each reader.
 * An IRC client's line carries a command and a target (`PRIVMSG #room :`,
 * 16 bytes and more) that a line client's does not: its read is larger by
 * that much for each of the ~32 lines a line client's read holds, so that a
 * turn takes as many chat lines from a sender of either dialect (bench_hub:
 * 241 deliveries per gathered send in an IRC room with 2048 bytes, 300 with
 * 2560, as in a room of line clients; docs/BENCHMARKS.md, "Delivery cost per
 * dialect (callgrind)"). */
#define HUB_READ_LINE 2048
#define HUB_READ_IRC (HUB_READ_LINE + 32 * 16)
#define HUB_READ_MAX HUB_READ_IRC
/* How many bytes the next receive on slot should ask for (at most
 * HUB_READ_MAX): HUB_READ_IRC once it speaks IRC, else HUB_READ_LINE. */
size_t hub_session_read_size(const hub *h, uint32_t slot);
/* The send in flight on slot completed with `transferred` bytes. */
void hub_session_sent(hub *h, uint32_t slot, size_t transferred);
/* After the flush: 1 when a send that completed during it made room for
 * output held behind a query (the shell's next turn must not wait).  Reading
 * it clears it. */
int hub_turn_due(hub *h);
/* The session is gone or being torn down: announce the leave, drop its queue
 * (only once no send is in flight).  Idempotent. */
void hub_session_closed(hub *h, uint32_t slot, const char *reason);

/* End of a loop turn: commit the outbox (one transaction) and deliver what
 * committed, run due timers (idle sessions, retention step).  Returns the
 * number of milliseconds until it needs another turn without input (-1 = none). */
int hub_turn(hub *h, int64_t now_ms);

/* The loop found nothing to do for a while (its wait timed out): database
 * upkeep (the WAL checkpoint) that commits should not pay for.  One bounded
 * step; hub_turn asks for another quiet moment while more is due. */
void hub_idle(hub *h);

/* Sends the server-stopping notice to every session and tries a last commit. */
void hub_stopping(hub *h, int64_t now_ms);
/* The very last commit (after every session is gone: their leave records),
 * tried whatever the retry timer says.  Returns the number of lines that could
 * not be stored (and so were never delivered), after logging it. */
int hub_final_commit(hub *h, int64_t now_ms);

/* Work for the shell, each slot reported once until it is reported again. */
int hub_next_flush(hub *h, uint32_t *slot);            /* has unsent data */
int hub_next_close(hub *h, uint32_t *slot, const char **reason); /* asks to be closed */
sendq *hub_sendq(hub *h, uint32_t slot);
uint32_t hub_session_conn_id(const hub *h, uint32_t slot);
void hub_get_stats(const hub *h, hub_stats *out);
/* Entries still waiting in the outbox (to be stored, or behind one that is). */
uint32_t hub_held(const hub *h);

#endif

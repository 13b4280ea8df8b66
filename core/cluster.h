/* cluster: this relay's session with the NATS JetStream bus, in cluster
 * mode (--cluster, docs/CLUSTER.md), driven by the I/O thread like any
 * other socket.
 *
 * Owns: the protocol state of one bus connection at a time (INFO and
 * CONNECT, the inbox subscription, the stream's check or creation, an
 * ephemeral pull consumer that starts right after the last sequence this
 * node's history applied, pulls, acks, pings); the publishes not yet seen
 * back in the stream, in order (sent again, with the same Nats-Msg-Id, after
 * a reconnect or when no acknowledgement came, so JetStream stores each
 * once); and the deliveries not yet applied, in stream order.
 * Never: touches sockets (the shell moves the bytes: cluster_connected,
 * cluster_input, cluster_output, cluster_output_sent), the database or the
 * chat state (the hub applies the deliveries and says so with
 * cluster_applied), or waits.  Portable C11.
 */
#ifndef CHATRELAY_CLUSTER_H
#define CHATRELAY_CLUSTER_H

#include <stddef.h>
#include <stdint.h>

#define CLUSTER_NODE_MAX 32         /* node names: 1-32 of [A-Za-z0-9_-] */
#define CLUSTER_STREAM "CHATRELAY"  /* the stream every node applies */
#define CLUSTER_SUBJECT "chatrelay.chat"

typedef struct cluster_config {
    const char *node;               /* this relay's name in the cluster */
    const char *user, *pass, *token;/* NATS credentials, NULL = none */
    int replicas;                   /* the stream's replicas when this node creates it; 0 = 3 if the
                                     * server is clustered, else 1 */
    uint64_t applied_seq;           /* the last stream sequence this node's history holds */
    int64_t epoch;                  /* this run (ms at start): part of our message ids */
    /* The stream was found or created: the hub binds its history to it.
     * Returns 0 to go on, or -1 with a reason in err: the node then stays
     * off the bus (and tries again now and then). */
    int (*bind)(void *ctx, const char *stream, const char *created, char *err, size_t errlen);
    void *ctx;
} cluster_config;

typedef struct cluster cluster;

/* One record delivered by the stream, or a gap: sequences the stream no
 * longer holds though this node never applied them. */
typedef struct cluster_delivery {
    uint64_t seq;                   /* its stream sequence (a gap: the last missing one) */
    uint64_t gap_first;             /* a gap: the first missing sequence; 0 for a record */
    uint64_t own_serial;            /* published by this run of this node: the serial it gave
                                     * cluster_publish; 0 if not */
    const char *payload;
    size_t payload_len;
} cluster_delivery;

cluster *cluster_create(const cluster_config *cfg);
void cluster_destroy(cluster *c);

/* ---- the shell ---------------------------------------------------------- */
/* A TCP connection to a server is up: the handshake starts (the server
 * speaks first). */
void cluster_connected(cluster *c, int64_t now_ms);
/* The connection is gone and no I/O on it is outstanding. */
void cluster_disconnected(cluster *c, const char *why);
/* Bytes from the server.  Returns 0, or -1 when the connection must be
 * closed (cluster_error says why). */
int cluster_input(cluster *c, const void *data, size_t n, int64_t now_ms);
/* Bytes to send, when no send is in flight: 1 and the span (valid and
 * unchanged until cluster_output_sent), or 0 when there is nothing. */
int cluster_output(cluster *c, const void **data, size_t *n);
/* The send of cluster_output's span completed with `transferred` bytes. */
void cluster_output_sent(cluster *c, size_t transferred);
/* Timers (pings, requests that got no answer, pulls, publishes to send
 * again).  Returns ms until it needs another call (-1 = none); sets
 * *close_now when the connection must be closed (a server that stopped
 * answering). */
int cluster_tick(cluster *c, int64_t now_ms, int *close_now);
const char *cluster_error(const cluster *c);

/* ---- the hub ------------------------------------------------------------ */
/* Connected, the stream checked, and caught up with what the stream held
 * when this connection began: new lines go out at once and come back in
 * order.  Else they wait (cluster_status says for what). */
int cluster_ready(const cluster *c);
const char *cluster_status(const cluster *c);
/* Queues a record for the stream, with serial (> every earlier one) as its
 * message id's last part.  Held until its delivery is applied.  Returns 0,
 * or -1 out of memory. */
int cluster_publish(cluster *c, uint64_t serial, const char *payload, size_t n);
/* The deliveries waiting to be applied, in stream order. */
size_t cluster_deliveries(cluster *c, const cluster_delivery **out);
/* The first n of them are stored (with their sequence): ack, drop, pull more. */
void cluster_applied(cluster *c, size_t n);
uint64_t cluster_applied_seq(const cluster *c);

/* Private messages to a user of another node that are not stored (no
 * --log-private) do not go through the stream (a copy on the bus's disks
 * would be one): core NATS, straight to that node's subject
 * CLUSTER_DIRECT_SUBJECT.<node>, at most once. */
#define CLUSTER_DIRECT_SUBJECT "chatrelay.direct"
int cluster_send_direct(cluster *c, const char *node, const char *payload, size_t n);
/* The direct messages received (payload only), and dropping them once handled. */
size_t cluster_direct_messages(cluster *c, const cluster_delivery **out);
void cluster_direct_done(cluster *c);

/* Who is on the other nodes, for a node that just (re)started: its view of
 * other nodes' users is built from the stream from where its history
 * stands, so users who joined before are unknown to it.  Once ready it asks
 * every node (core NATS request CLUSTER_WHO_SUBJECT); each answers with its
 * own users; the hub adds them to its view.  Asks and answers are queued
 * here for the hub: an ask has reply set (answer it with cluster_answer_who),
 * an answer has reply NULL. */
#define CLUSTER_WHO_SUBJECT "chatrelay.who"
typedef struct cluster_who {
    char *reply;
    char *payload;
    size_t payload_len;
} cluster_who;
size_t cluster_who_messages(cluster *c, const cluster_who **out);
void cluster_who_done(cluster *c);
int cluster_answer_who(cluster *c, const char *reply, const char *payload, size_t n);

/* Liveness.  While ready, every node says it is alive every
 * CLUSTER_BEAT_MS on CLUSTER_BEAT_SUBJECT.<node> (core NATS: not stored),
 * with its epoch; this records when each node last did.  A node is silent
 * when ready for CLUSTER_SILENT_MS and no beat of it came for as long, or
 * when its beats carry another epoch (it restarted): then its users are
 * gone (the hub publishes that, once, through the stream). */
#define CLUSTER_BEAT_SUBJECT "chatrelay.beat"
#define CLUSTER_BEAT_MS 2000
#define CLUSTER_SILENT_MS 15000
int cluster_node_silent(const cluster *c, const char *node, int64_t epoch, int64_t now_ms);
/* Publishes a control record (the hub's "gone") with msg_id, outside the
 * held-publish queue: sent now if ready, else dropped (it will be decided
 * again).  Returns 0 or -1. */
int cluster_publish_once(cluster *c, const char *msg_id, const char *payload, size_t n);

#endif

/* cluster: the bus session.  See cluster.h and docs/CLUSTER.md.
 *
 * One connection's life: DOWN -> (TCP up) HANDSHAKE: the server's INFO,
 * our CONNECT + SUB on our inbox + PING -> STREAM: $JS.API.STREAM.INFO
 * (and STREAM.CREATE when it does not exist), the hub binds its history ->
 * CONSUMER: $JS.API.CONSUMER.CREATE, an ephemeral pull consumer from the
 * sequence after the last one applied -> CATCHUP: pulls until what the
 * stream held at the check is applied -> READY: our held publishes go out,
 * in order, and new ones at once.
 *
 * Everything arrives on one wildcard subscription, our inbox:
 *   <inbox>.api.<n>    the answer to API request n (only the newest counts)
 *   <inbox>.ack.<s>    the PubAck of our publish with serial s
 *   <inbox>.pull       the end of a pull (408 ...)
 * and the deliveries of our pulls, with their own subject and an ack
 * subject ($JS.ACK...) as reply.
 */
#include "cluster.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "invariant.h"
#include "json.h"
#include "log.h"
#include "nats.h"

#define API_TIMEOUT_MS 3000       /* an API request with no answer is asked again */
#define API_RETRY_MS 1000         /* after an answer that says "not now" (no quorum, no leader) */
#define REFUSED_RETRY_MS 10000    /* after a stream we must not use: the admin fixes it */
#define PING_EVERY_MS 5000
#define PING_TIMEOUT_MS 10000     /* no PONG for this long: the server is gone */
#define PUB_RESEND_MS 3000        /* a publish not acknowledged this long is sent again (with the rest) */
#define PUB_RETRY_MS 1000         /* while the stream refuses or does not answer: how often */
#define PULL_BATCH 256
#define PULL_EXPIRES_MS 3000      /* short: a pull that neither delivers nor ends says the consumer */
#define PULL_LOST_MS (PULL_EXPIRES_MS + 2000) /* is gone (its server died) within this */
#define CONSUMER_INACTIVE_S 300   /* the server drops our consumer this long after we are gone (or
                                   * stopped pulling: a database locked that long; then it is made again) */
#define HANDSHAKE_TIMEOUT_MS 5000 /* a server that accepted the connection but says nothing */
#define MAX_PAYLOAD_CAP (8u << 20)/* whatever INFO claims, no message is buffered past this */
#define DUPLICATE_WINDOW_S 120    /* the stream's Nats-Msg-Id window (JetStream's default) */
#define MAX_PAYLOAD_DEFAULT (1u << 20)
#define CLUSTER_BEATS_MAX 64      /* nodes whose beats are tracked; more are never declared silent */

typedef enum state { ST_DOWN, ST_HANDSHAKE, ST_STREAM, ST_CONSUMER, ST_CATCHUP, ST_READY } state;
typedef enum api_kind { API_NONE, API_STREAM_INFO, API_STREAM_CREATE, API_CONSUMER_CREATE } api_kind;

typedef struct bytes {
    char *p;
    size_t len, cap;
} bytes;

typedef struct held_pub {
    uint64_t serial;
    char *payload;
    size_t len;
    int64_t sent_at;              /* 0 = not sent on this connection */
    int acked;                    /* the stream said it has it: never sent again while connected */
} held_pub;

struct cluster {
    char node[CLUSTER_NODE_MAX + 1];
    char *user, *pass, *token;
    int replicas;
    int64_t epoch;
    int (*bind)(void *ctx, const char *stream, const char *created, char *err, size_t errlen);
    void *ctx;
    char inbox[96];               /* _INBOX.chatrelay.<node>.<epoch> */
    char msgid_prefix[80];        /* <node>-<epoch>- */

    state st;
    nats_parser parser;
    char error[200];
    bytes out, flight;            /* accumulating; being sent (the shell's until sent) */
    size_t flight_off;
    int64_t now;
    int64_t connected_at;
    int broken;                   /* the output could not be written: the connection must close */
    int64_t same_name_logged;

    api_kind api;
    uint64_t api_serial;
    int64_t api_sent_at, api_retry_at;
    int api_logged;               /* the current wait was logged already */
    char last_reason[320];        /* ... with this reason */

    int server_clustered;
    size_t max_payload;
    uint64_t stream_first, stream_last, catchup_to;
    char consumer[128];

    uint64_t applied;             /* the last sequence the hub stored */
    uint64_t seen;                /* the last sequence queued (applied or waiting) */
    cluster_delivery *dv;         /* what the hub sees, in stream order */
    char **acks;                  /* dv[i]'s reply subject, which acks it (NULL for a gap) */
    size_t dv_count, dv_cap;

    int pull_open;
    uint32_t pull_left;
    int64_t pull_sent_at;

    held_pub *pubs;
    size_t pub_count, pub_cap;

    int64_t ping_sent_at, last_ping_at;
    int pub_blocked;              /* a publish failed: new ones wait, and all go out again in order */
    int64_t ready_since, last_beat_sent;
    cluster_delivery *direct;     /* private messages to our users, straight from another node */
    size_t direct_count, direct_cap;
    cluster_who *who;             /* asks and answers of who is where (cluster.h) */
    size_t who_count, who_cap;
    struct beat { char node[CLUSTER_NODE_MAX + 1]; int64_t epoch, at; } beats[CLUSTER_BEATS_MAX];
    size_t beat_count;
    uint64_t pubacks_failed;
};

/* ---- small helpers -------------------------------------------------------- */

static int bytes_reserve(bytes *b, size_t more)
{
    if (b->cap - b->len >= more)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < more)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static char *dup_n(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

/* Text from the server, for the log: controls replaced, so it stays one line. */
static void printable(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            *s = '?';
}

static void fail(cluster *c, const char *fmt, const char *what)
{
    snprintf(c->error, sizeof c->error, fmt, what);
    printable(c->error);
}

/* Appends one command written by a nats_write_* function (or raw bytes). */
static int emit_raw(cluster *c, const void *data, size_t n)
{
    if (bytes_reserve(&c->out, n) != 0) {
        fail(c, "%s", "out of memory for the bus's output");
        c->broken = 1;
        return -1;
    }
    memcpy(c->out.p + c->out.len, data, n);
    c->out.len += n;
    return 0;
}

static int emit_pub(cluster *c, const char *subject, const char *reply, const char *msg_id,
                    const void *payload, size_t n)
{
    size_t need = strlen(subject) + (reply ? strlen(reply) : 0) + (msg_id ? strlen(msg_id) : 0) + n + 96;
    if (bytes_reserve(&c->out, need) != 0) {
        fail(c, "%s", "out of memory for the bus's output");
        c->broken = 1;
        return -1;
    }
    size_t w = nats_write_pub(c->out.p + c->out.len, c->out.cap - c->out.len, subject, reply, msg_id, payload, n);
    if (w == 0) {
        fail(c, "cannot write a publish to %s", subject);
        c->broken = 1;
        return -1;
    }
    c->out.len += w;
    return 0;
}

/* ---- API requests --------------------------------------------------------- */

static int api_request(cluster *c, api_kind kind, const char *subject, const char *body)
{
    char reply[128];
    c->api = kind;
    c->api_serial++;
    c->api_sent_at = c->now;
    c->api_retry_at = 0;
    snprintf(reply, sizeof reply, "%s.api.%" PRIu64, c->inbox, c->api_serial);
    return emit_pub(c, subject, reply, NULL, body, strlen(body));
}

static int ask_stream_info(cluster *c)
{
    c->st = ST_STREAM;
    return api_request(c, API_STREAM_INFO, "$JS.API.STREAM.INFO." CLUSTER_STREAM, "");
}

static int ask_stream_create(cluster *c)
{
    char body[512];
    int replicas = c->replicas > 0 ? c->replicas : c->server_clustered ? 3 : 1;
    /* limits retention, kept on disk; history is trimmed by each node's own
     * --retain-* in SQLite, so the stream keeps everything by default */
    snprintf(body, sizeof body,
             "{\"name\":\"" CLUSTER_STREAM "\",\"subjects\":[\"" CLUSTER_SUBJECT "\"],"
             "\"retention\":\"limits\",\"storage\":\"file\",\"num_replicas\":%d,"
             "\"duplicate_window\":%" PRIu64 "}",
             replicas, (uint64_t)DUPLICATE_WINDOW_S * 1000000000u);
    log_info("cluster: creating stream " CLUSTER_STREAM " (subject " CLUSTER_SUBJECT ", %d replica(s))", replicas);
    return api_request(c, API_STREAM_CREATE, "$JS.API.STREAM.CREATE." CLUSTER_STREAM, body);
}

static int ask_consumer(cluster *c)
{
    char body[512];
    uint64_t start = c->applied + 1;
    if (start < c->stream_first)
        start = c->stream_first;
    snprintf(body, sizeof body,
             "{\"stream_name\":\"" CLUSTER_STREAM "\",\"config\":{\"deliver_policy\":\"by_start_sequence\","
             "\"opt_start_seq\":%" PRIu64 ",\"ack_policy\":\"all\",\"max_ack_pending\":%d,"
             "\"inactive_threshold\":%" PRIu64 ",\"mem_storage\":true,\"num_replicas\":1}}",
             start, 4 * PULL_BATCH, (uint64_t)CONSUMER_INACTIVE_S * 1000000000u);
    c->st = ST_CONSUMER;
    c->seen = start - 1 > c->applied ? start - 1 : c->applied;
    return api_request(c, API_CONSUMER_CREATE, "$JS.API.CONSUMER.CREATE." CLUSTER_STREAM, body);
}

static int send_pull(cluster *c)
{
    char subject[256], reply[128], body[96];
    snprintf(subject, sizeof subject, "$JS.API.CONSUMER.MSG.NEXT." CLUSTER_STREAM ".%s", c->consumer);
    snprintf(reply, sizeof reply, "%s.pull", c->inbox);
    snprintf(body, sizeof body, "{\"batch\":%d,\"expires\":%" PRIu64 "}", PULL_BATCH,
             (uint64_t)PULL_EXPIRES_MS * 1000000u);
    c->pull_open = 1;
    c->pull_left = PULL_BATCH;
    c->pull_sent_at = c->now;
    return emit_pub(c, subject, reply, NULL, body, strlen(body));
}

static int send_held_pub(cluster *c, held_pub *p)
{
    char reply[128], msg_id[128];
    snprintf(reply, sizeof reply, "%s.ack.%" PRIu64, c->inbox, p->serial);
    snprintf(msg_id, sizeof msg_id, "%s%" PRIu64, c->msgid_prefix, p->serial);
    p->sent_at = c->now;
    return emit_pub(c, CLUSTER_SUBJECT, reply, msg_id, p->payload, p->len);
}

static int become_ready(cluster *c)
{
    c->st = ST_READY;
    c->ready_since = c->now;
    c->last_beat_sent = 0;
    log_info("cluster: ready at stream sequence %" PRIu64 "; %u held line(s) go out", c->applied,
             (unsigned)c->pub_count);
    char reply[128];
    snprintf(reply, sizeof reply, "%s.who", c->inbox);
    if (emit_pub(c, CLUSTER_WHO_SUBJECT, reply, NULL, "", 0) != 0)
        return -1;
    for (size_t i = 0; i < c->pub_count; i++)
        if (send_held_pub(c, &c->pubs[i]) != 0)
            return -1;
    return 0;
}

static int queue_delivery(cluster *c, uint64_t seq, uint64_t gap_first, uint64_t own, const char *payload,
                          size_t n, const char *ack, size_t ack_len)
{
    if (c->dv_count == c->dv_cap) {
        size_t cap = c->dv_cap ? c->dv_cap * 2 : PULL_BATCH;
        cluster_delivery *d = realloc(c->dv, cap * sizeof *d);
        if (d)
            c->dv = d;
        char **a = d ? realloc(c->acks, cap * sizeof *a) : NULL;
        if (!a)
            goto oom;
        c->acks = a;
        c->dv_cap = cap;
    }
    cluster_delivery *d = &c->dv[c->dv_count];
    memset(d, 0, sizeof *d);
    d->seq = seq;
    d->gap_first = gap_first;
    d->own_serial = own;
    char *copy = dup_n(payload ? payload : "", n);
    char *ack_copy = ack ? dup_n(ack, ack_len) : NULL;
    if (!copy || (ack && !ack_copy)) {
        free(copy);
        free(ack_copy);
        goto oom;
    }
    d->payload = copy;
    d->payload_len = n;
    c->acks[c->dv_count] = ack_copy;
    c->dv_count++;
    c->seen = seq;
    return 0;
oom:
    fail(c, "%s", "out of memory for the stream's deliveries");
    return -1;
}

static void drop_deliveries(cluster *c, size_t n);

/* ---- answers -------------------------------------------------------------- */

/* A JetStream error answer: its code, or 0 when the answer is not one. */
static uint64_t api_error(const char *doc, size_t n, char *desc, size_t cap)
{
    uint64_t code = 0;
    if (json_get_u64(doc, n, "error.code", &code) != 0)
        return 0;
    if (json_get_string(doc, n, "error.description", desc, cap) != 0)
        snprintf(desc, cap, "(no description)");
    printable(desc);
    return code ? code : 1;
}

static int wait_retry(cluster *c, const char *why, int64_t ms)
{
    /* once per reason: a streak of the same one is one line, a new one is told */
    if (!c->api_logged || strcmp(c->last_reason, why) != 0) {
        log_warn("cluster: %s; trying again every %lld ms", why, (long long)ms);
        c->api_logged = 1;
        snprintf(c->last_reason, sizeof c->last_reason, "%s", why);
    }
    c->api = API_NONE;
    c->api_retry_at = c->now + ms;
    return 0;
}

static int on_stream(cluster *c, const char *doc, size_t n)
{
    char subject[128], created[64], err[256];
    int subject_ok = 0;
    const char *arr;
    size_t arr_len;
    if (json_get(doc, n, "config.subjects", &arr, &arr_len) == JSON_ARRAY) {
        size_t pos = 0;
        const char *v;
        size_t vl;
        json_type t;
        while ((t = json_array_next(arr, arr_len, &pos, &v, &vl)) != JSON_ABSENT)
            if (t == JSON_STRING && json_unescape(v, vl, subject, sizeof subject) == 0 &&
                strcmp(subject, CLUSTER_SUBJECT) == 0)
                subject_ok = 1;
    }
    char retention[32] = "";
    (void)json_get_string(doc, n, "config.retention", retention, sizeof retention);
    if (!subject_ok || (retention[0] && strcmp(retention, "limits") != 0)) {
        snprintf(err, sizeof err, "stream " CLUSTER_STREAM " exists with other settings: it must capture subject "
                 CLUSTER_SUBJECT " with limits retention (it has %s, retention '%s')",
                 subject_ok ? "the subject" : "other subjects", retention);
        return wait_retry(c, err, REFUSED_RETRY_MS);
    }
    if (json_get_string(doc, n, "created", created, sizeof created) != 0 ||
        json_get_u64(doc, n, "state.first_seq", &c->stream_first) != 0 ||
        json_get_u64(doc, n, "state.last_seq", &c->stream_last) != 0)
        return wait_retry(c, "the stream's description lacks created/first_seq/last_seq", REFUSED_RETRY_MS);
    if (c->bind(c->ctx, CLUSTER_STREAM, created, err, sizeof err) != 0)
        return wait_retry(c, err, REFUSED_RETRY_MS);
    if (c->stream_last < c->applied) {
        snprintf(err, sizeof err, "the stream ends at %" PRIu64 " but this node's history applied %" PRIu64
                 " (was the stream's data lost?)", c->stream_last, c->applied);
        return wait_retry(c, err, REFUSED_RETRY_MS);
    }
    c->api_logged = 0;
    c->catchup_to = c->stream_last;
    /* what the stream dropped (its limits, a purge) before this node applied it */
    if (c->stream_first > c->applied + 1 && c->dv_count == 0) {
        log_warn("cluster: the stream no longer holds sequences %" PRIu64 "-%" PRIu64
                 ", which this node never applied; recorded as a gap in its history",
                 c->applied + 1, c->stream_first - 1);
        if (queue_delivery(c, c->stream_first - 1, c->applied + 1, 0, NULL, 0, NULL, 0) != 0)
            return -1;
    }
    return ask_consumer(c);
}

static int on_api(cluster *c, uint64_t serial, const char *doc, size_t n)
{
    if (serial != c->api_serial || c->api == API_NONE)
        return 0;   /* an answer to a request asked again since */
    char desc[200];
    if (json_valid(doc, n) != 0)
        return wait_retry(c, "the JetStream API answered something that is not JSON", API_RETRY_MS);
    uint64_t code = api_error(doc, n, desc, sizeof desc);
    api_kind kind = c->api;
    c->api = API_NONE;
    switch (kind) {
    case API_STREAM_INFO:
        if (code == 404)
            return ask_stream_create(c);
        if (code) {
            char why[320];   /* desc is at most 199 bytes */
            snprintf(why, sizeof why, "stream " CLUSTER_STREAM " cannot be read (%s, code %" PRIu64 ")", desc, code);
            return wait_retry(c, why, API_RETRY_MS);
        }
        return on_stream(c, doc, n);
    case API_STREAM_CREATE:
        if (code) {
            char why[320];   /* desc is at most 199 bytes */
            snprintf(why, sizeof why, "stream " CLUSTER_STREAM " cannot be created (%s, code %" PRIu64 ")", desc, code);
            c->st = ST_STREAM;
            return wait_retry(c, why, API_RETRY_MS);
        }
        return on_stream(c, doc, n);
    case API_CONSUMER_CREATE:
        if (code || json_get_string(doc, n, "name", c->consumer, sizeof c->consumer) != 0) {
            char why[320];   /* desc is at most 199 bytes */
            snprintf(why, sizeof why, "the stream's consumer cannot be created (%s, code %" PRIu64 ")",
                     code ? desc : "no name in the answer", code);
            c->st = ST_STREAM;   /* from the stream again: it may have changed meanwhile */
            return wait_retry(c, why, API_RETRY_MS);
        }
        c->api_logged = 0;
        c->st = ST_CATCHUP;
        log_info("cluster: applying the stream from sequence %" PRIu64 " (it holds up to %" PRIu64 ")",
                 c->seen + 1, c->stream_last);
        if (send_pull(c) != 0)
            return -1;
        return c->applied >= c->catchup_to ? become_ready(c) : 0;
    case API_NONE:
        break;
    }
    return 0;
}

static int on_puback(cluster *c, uint64_t serial, const char *doc, size_t n)
{
    char desc[200];
    uint64_t code = json_valid(doc, n) == 0 ? api_error(doc, n, desc, sizeof desc) : 1;
    if (!code) {
        /* stored (or a duplicate of a stored one): its delivery will come,
         * and it is not sent again while this connection lasts */
        for (size_t i = 0; i < c->pub_count; i++)
            if (c->pubs[i].serial == serial)
                c->pubs[i].acked = 1;
        return 0;
    }
    if (code == 1)
        snprintf(desc, sizeof desc, "no answer from the stream (no leader, or a status)");
    c->pub_blocked = 1;   /* (see cluster_tick: in order from the oldest not acknowledged) */
    for (size_t i = 0; i < c->pub_count; i++)
        if (c->pubs[i].serial == serial) {
            /* sent again, in order with the rest, like one that got no answer */
            if (c->pubacks_failed++ % 100 == 0)
                log_warn("cluster: the stream refused a line for now (%s, code %" PRIu64 "); it is sent again",
                         desc, code);
            break;
        }
    return 0;
}

static const char *memmem_(const char *hay, size_t n, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = 0; k <= n && i <= n - k; i++)
        if (memcmp(hay + i, needle, k) == 0)
            return hay + i;
    return NULL;
}

/* The consumer is gone (deleted after inactivity, or with the server that
 * held it): the deliveries not applied are dropped and come again from a
 * new one, made from the stream's description as at a connection. */
static int consumer_lost(cluster *c, const char *why)
{
    log_warn("cluster: %s; making a new one from sequence %" PRIu64, why, c->applied + 1);
    drop_deliveries(c, c->dv_count);
    c->seen = c->applied;
    c->pull_open = 0;
    c->consumer[0] = '\0';
    return ask_stream_info(c);
}

static int on_pull(cluster *c, const nats_msg *m)
{
    int status = m->headers ? nats_status(m->headers, m->headers_len) : 0;
    if (status) {
        /* 408: the pull expired; 409: the server ended it (too many waiting,
         * or the consumer was deleted); 404: nothing for a no-wait pull; 503:
         * no one serves the pull: the consumer is gone.  The next pull
         * follows, from a new consumer when this one is gone. */
        c->pull_open = 0;
        if (status != 408 && status != 404)
            log_debug("cluster: a pull ended with status %d", status);
        if (status == 503 || (status == 409 && memmem_(m->headers, m->headers_len, "Consumer Deleted")))
            return consumer_lost(c, "the stream's consumer for this node is gone");
        return 0;
    }
    uint64_t seq;
    const char *consumer;
    size_t consumer_len;
    if (nats_ack_parse(m->reply, m->reply_len, &seq, &consumer, &consumer_len) != 0 || seq > INT64_MAX) {
        log_warn("cluster: a delivery without a valid stream sequence was ignored");
        return 0;
    }
    if (consumer_len != strlen(c->consumer) || memcmp(consumer, c->consumer, consumer_len) != 0)
        return 0;   /* from a consumer of an earlier connection, still delivering: not ours now */
    if (c->pull_left > 0 && --c->pull_left == 0)
        c->pull_open = 0;
    if (seq <= c->seen)
        return 0;   /* delivered again (its ack was late): already queued or applied */
    if (seq != c->seen + 1) {
        /* a sequence skipped: the stream deleted it, or it was not ours to
         * see.  Recorded as a gap, like a stream that dropped its start. */
        log_warn("cluster: the stream skipped sequences %" PRIu64 "-%" PRIu64 "; recorded as a gap",
                 c->seen + 1, seq - 1);
        if (queue_delivery(c, seq - 1, c->seen + 1, 0, NULL, 0, NULL, 0) != 0)
            return -1;
    }
    uint64_t own = 0;
    const char *id;
    size_t id_len, pre = strlen(c->msgid_prefix);
    if (m->headers && nats_header(m->headers, m->headers_len, "Nats-Msg-Id", &id, &id_len) == 0 &&
        id_len > pre && id_len - pre <= 20 && memcmp(id, c->msgid_prefix, pre) == 0) {
        for (size_t i = pre; i < id_len; i++) {
            if (id[i] < '0' || id[i] > '9') {
                own = 0;
                break;
            }
            own = own * 10 + (uint64_t)(id[i] - '0');
        }
    }
    return queue_delivery(c, seq, 0, own, m->payload, m->payload_len, m->reply, m->reply_len);
}

static int on_info(cluster *c, const nats_msg *m)
{
    if (c->st != ST_HANDSHAKE)
        return 0;   /* a later INFO (cluster topology): nothing we act on */
    const char *doc = m->text;
    size_t n = m->text_len;
    if (json_valid(doc, n) != 0) {
        fail(c, "%s", "the server's INFO is not JSON");
        return -1;
    }
    int headers = 0;
    if (json_get_bool(doc, n, "headers", &headers) != 0 || !headers) {
        fail(c, "%s", "the server does not support headers (nats-server 2.2 or later is needed)");
        return -1;
    }
    uint64_t max_payload = 0;
    c->max_payload = json_get_u64(doc, n, "max_payload", &max_payload) == 0 && max_payload > 0
                         ? (size_t)(max_payload < MAX_PAYLOAD_CAP ? max_payload : MAX_PAYLOAD_CAP)
                         : MAX_PAYLOAD_DEFAULT;
    const char *v;
    size_t vl;
    c->server_clustered = json_get(doc, n, "cluster", &v, &vl) == JSON_STRING;
    int jetstream = 0;
    if (json_get_bool(doc, n, "jetstream", &jetstream) == 0 && !jetstream)
        log_warn("cluster: the server says JetStream is off; the stream cannot be reached through it");
    c->parser.max_payload = c->max_payload;
    char buf[1024], sub[160];
    size_t w = nats_write_connect(buf, sizeof buf, c->node, c->user, c->pass, c->token);
    if (w == 0) {
        fail(c, "%s", "the credentials are too long for CONNECT");
        return -1;
    }
    snprintf(sub, sizeof sub, "%s.>", c->inbox);
    size_t ws = nats_write_sub(buf + w, sizeof buf - w, sub, 1);
    if (ws)
        ws += nats_write_sub(buf + w + ws, sizeof buf - w - ws, CLUSTER_BEAT_SUBJECT ".*", 2);
    char direct[96];
    snprintf(direct, sizeof direct, CLUSTER_DIRECT_SUBJECT ".%s", c->node);
    if (ws)
        ws += nats_write_sub(buf + w + ws, sizeof buf - w - ws, direct, 3);
    if (ws)
        ws += nats_write_sub(buf + w + ws, sizeof buf - w - ws, CLUSTER_WHO_SUBJECT, 4);
    size_t wp = ws ? nats_write_ping(buf + w + ws, sizeof buf - w - ws) : 0;
    if (ws == 0 || wp == 0) {
        fail(c, "%s", "cannot write the subscription");
        return -1;
    }
    if (emit_raw(c, buf, w + ws + wp) != 0)
        return -1;
    c->ping_sent_at = c->now;
    c->last_ping_at = c->now;
    return ask_stream_info(c);
}

/* "<inbox>.<what>.<n>" -> n */
static int inbox_number(const char *s, size_t n, size_t skip, uint64_t *out)
{
    if (n <= skip || n - skip > 20)
        return -1;
    uint64_t v = 0;
    for (size_t i = skip; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return 0;
}

static void note_beat(cluster *c, const char *node, int64_t epoch)
{
    size_t i = 0;
    while (i < c->beat_count && strcmp(c->beats[i].node, node) != 0)
        i++;
    if (i == c->beat_count) {
        if (c->beat_count == CLUSTER_BEATS_MAX)
            return;
        c->beat_count++;
        snprintf(c->beats[i].node, sizeof c->beats[i].node, "%s", node);
    }
    c->beats[i].epoch = epoch;
    c->beats[i].at = c->now;
}

static int queue_who(cluster *c, const char *reply, size_t reply_len, const char *payload, size_t n)
{
    if (c->who_count == c->who_cap) {
        size_t cap = c->who_cap ? c->who_cap * 2 : 8;
        if (cap > 1024)
            return 0;   /* drained every turn: more is a flood, dropped */
        cluster_who *w = realloc(c->who, cap * sizeof *w);
        if (!w)
            return 0;
        c->who = w;
        c->who_cap = cap;
    }
    cluster_who *w = &c->who[c->who_count];
    w->reply = reply ? dup_n(reply, reply_len) : NULL;
    w->payload = dup_n(payload, n);
    w->payload_len = n;
    if (!w->payload || (reply && !w->reply)) {
        free(w->reply);
        free(w->payload);
        return 0;
    }
    c->who_count++;
    return 0;
}

static int on_msg(void *ctx, const nats_msg *m)
{
    cluster *c = ctx;
    switch (m->op) {
    case NATS_INFO:
        return on_info(c, m);
    case NATS_PING: {
        char pong[16];
        size_t w = nats_write_pong(pong, sizeof pong);
        return emit_raw(c, pong, w);
    }
    case NATS_PONG:
        c->ping_sent_at = 0;
        return 0;
    case NATS_OK:
        return 0;
    case NATS_ERR: {
        char text[160];
        size_t k = m->text_len < sizeof text - 1 ? m->text_len : sizeof text - 1;
        memcpy(text, m->text, k);
        text[k] = '\0';
        fail(c, "the server said: %s", text);
        /* authorization, permissions, a bad subject: the server closes after most */
        return -1;
    }
    case NATS_MSG:
        break;
    }
    if (m->sid == 4 && m->reply_len > 0 && m->reply_len < 200)
        return queue_who(c, m->reply, m->reply_len, m->payload, m->payload_len);
    if (m->sid == 3) {
        if (c->direct_count == c->direct_cap) {
            size_t cap = c->direct_cap ? c->direct_cap * 2 : 16;
            if (cap > 4096)
                return 0;   /* the hub drains them every turn: this is a flood, dropped */
            cluster_delivery *d = realloc(c->direct, cap * sizeof *d);
            if (!d)
                return 0;
            c->direct = d;
            c->direct_cap = cap;
        }
        cluster_delivery *d = &c->direct[c->direct_count];
        memset(d, 0, sizeof *d);
        char *copy = dup_n(m->payload, m->payload_len);
        if (copy) {
            d->payload = copy;
            d->payload_len = m->payload_len;
            c->direct_count++;
        }
        return 0;
    }
    if (m->sid == 2) {
        static const char pre[] = CLUSTER_BEAT_SUBJECT ".";
        if (m->subject_len > sizeof pre - 1 && m->subject_len - (sizeof pre - 1) <= CLUSTER_NODE_MAX &&
            memcmp(m->subject, pre, sizeof pre - 1) == 0) {
            char node[CLUSTER_NODE_MAX + 1];
            size_t k = m->subject_len - (sizeof pre - 1);
            memcpy(node, m->subject + sizeof pre - 1, k);
            node[k] = '\0';
            uint64_t epoch = 0;
            if (strcmp(node, c->node) == 0) {
                /* echo is off: a beat on our own subject is another relay
                 * with our --node name, which breaks every rule above */
                if (c->now - c->same_name_logged >= 60000 || !c->same_name_logged) {
                    log_error("cluster: another relay uses this node's name %s: give each relay its own --node",
                              c->node);
                    c->same_name_logged = c->now;
                }
            } else if (inbox_number(m->payload, m->payload_len, 0, &epoch) == 0) {
                note_beat(c, node, (int64_t)epoch);
            }
        }
        return 0;
    }
    /* A delivery keeps its own subject (chatrelay.chat); its reply subject,
     * the ack, says it is one.  Everything else comes to our inbox. */
    if (m->reply_len > 8 && memcmp(m->reply, "$JS.ACK.", 8) == 0)
        return c->st >= ST_CATCHUP ? on_pull(c, m) : 0;
    size_t il = strlen(c->inbox);
    if (m->subject_len <= il + 1 || memcmp(m->subject, c->inbox, il) != 0 || m->subject[il] != '.')
        return 0;
    const char *rest = m->subject + il + 1;
    size_t rest_len = m->subject_len - il - 1;
    uint64_t n;
    if (rest_len == 4 && memcmp(rest, "pull", 4) == 0)
        return c->st >= ST_CATCHUP ? on_pull(c, m) : 0;
    if (rest_len == 3 && memcmp(rest, "who", 3) == 0)
        return m->headers_len ? 0 : queue_who(c, NULL, 0, m->payload, m->payload_len);   /* a status: no one */
    if (inbox_number(rest, rest_len, 4, &n) == 0 && memcmp(rest, "api.", 4) == 0)
        return on_api(c, n, m->payload, m->payload_len);
    if (inbox_number(rest, rest_len, 4, &n) == 0 && memcmp(rest, "ack.", 4) == 0)
        return on_puback(c, n, m->payload, m->payload_len);
    return 0;
}

/* ---- public ---------------------------------------------------------------- */

cluster *cluster_create(const cluster_config *cfg)
{
    cluster *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    snprintf(c->node, sizeof c->node, "%s", cfg->node);
    c->user = cfg->user ? dup_n(cfg->user, strlen(cfg->user)) : NULL;
    c->pass = cfg->pass ? dup_n(cfg->pass, strlen(cfg->pass)) : NULL;
    c->token = cfg->token ? dup_n(cfg->token, strlen(cfg->token)) : NULL;
    c->replicas = cfg->replicas;
    c->epoch = cfg->epoch;
    c->bind = cfg->bind;
    c->ctx = cfg->ctx;
    c->applied = c->seen = cfg->applied_seq;
    snprintf(c->inbox, sizeof c->inbox, "_INBOX.chatrelay.%s.%" PRId64, c->node, c->epoch);
    snprintf(c->msgid_prefix, sizeof c->msgid_prefix, "%s-%" PRId64 "-", c->node, c->epoch);
    c->max_payload = MAX_PAYLOAD_DEFAULT;
    nats_parser_init(&c->parser, c->max_payload);
    return c;
}

static void drop_deliveries(cluster *c, size_t n)
{
    if (n == 0)
        return;
    for (size_t i = 0; i < n; i++) {
        free((char *)c->dv[i].payload);
        free(c->acks[i]);
    }
    memmove(c->dv, c->dv + n, (c->dv_count - n) * sizeof *c->dv);
    memmove(c->acks, c->acks + n, (c->dv_count - n) * sizeof *c->acks);
    c->dv_count -= n;
}

void cluster_destroy(cluster *c)
{
    if (!c)
        return;
    drop_deliveries(c, c->dv_count);
    free(c->dv);
    free(c->acks);
    cluster_direct_done(c);
    free(c->direct);
    cluster_who_done(c);
    free(c->who);
    for (size_t i = 0; i < c->pub_count; i++)
        free(c->pubs[i].payload);
    free(c->pubs);
    free(c->out.p);
    free(c->flight.p);
    nats_parser_free(&c->parser);
    free(c->user);
    free(c->pass);
    free(c->token);
    free(c);
}

void cluster_connected(cluster *c, int64_t now_ms)
{
    CR_ASSERT(c->st == ST_DOWN && c->flight.len == 0);
    c->now = now_ms;
    c->st = ST_HANDSHAKE;
    c->connected_at = now_ms;
    c->broken = 0;
    c->pub_blocked = 0;
    c->error[0] = '\0';
    c->out.len = 0;
    c->api = API_NONE;
    c->api_logged = 0;
    c->pull_open = 0;
    c->ping_sent_at = 0;
    c->last_ping_at = now_ms;
    /* what was delivered but not applied comes again from the new consumer */
    drop_deliveries(c, c->dv_count);
    c->seen = c->applied;
    for (size_t i = 0; i < c->pub_count; i++) {
        c->pubs[i].sent_at = 0;
        c->pubs[i].acked = 0;
    }
    nats_parser_free(&c->parser);
    nats_parser_init(&c->parser, c->max_payload);
}

void cluster_disconnected(cluster *c, const char *why)
{
    if (c->st == ST_DOWN)
        return;
    log_warn("cluster: disconnected from the bus (%s); %u line(s) held until it is back", why,
             (unsigned)c->pub_count);
    c->st = ST_DOWN;
    c->out.len = 0;
    c->flight.len = 0;
    c->flight_off = 0;
}

int cluster_input(cluster *c, const void *data, size_t n, int64_t now_ms)
{
    c->now = now_ms;
    if (c->st == ST_DOWN)
        return 0;
    int rc = nats_feed(&c->parser, data, n, on_msg, c);
    if (rc == -1 && !c->error[0])
        fail(c, "the bus's stream is broken: %s", c->parser.error);
    return rc == 0 ? 0 : -1;
}

int cluster_output(cluster *c, const void **data, size_t *n)
{
    if (c->flight.len == 0) {
        if (c->out.len == 0)
            return 0;
        bytes t = c->flight;
        c->flight = c->out;
        c->out = t;
        c->out.len = 0;
        c->flight_off = 0;
    }
    *data = c->flight.p + c->flight_off;
    *n = c->flight.len - c->flight_off;
    return 1;
}

void cluster_output_sent(cluster *c, size_t transferred)
{
    CR_ASSERT(transferred <= c->flight.len - c->flight_off);
    c->flight_off += transferred;
    if (c->flight_off == c->flight.len) {
        c->flight.len = 0;
        c->flight_off = 0;
    }
}

static int earliest(int wait, int64_t due, int64_t now)
{
    int until = due <= now ? 0 : due - now > 600000 ? 600000 : (int)(due - now);
    return wait < 0 || until < wait ? until : wait;
}

int cluster_tick(cluster *c, int64_t now_ms, int *close_now)
{
    c->now = now_ms;
    *close_now = 0;
    if (c->broken) {
        *close_now = 1;
        return -1;
    }
    if (c->st == ST_DOWN)
        return -1;
    if (c->st == ST_HANDSHAKE) {
        if (now_ms - c->connected_at >= HANDSHAKE_TIMEOUT_MS) {
            fail(c, "%s", "the server accepted the connection but sent no INFO");
            *close_now = 1;
            return -1;
        }
        return earliest(-1, c->connected_at + HANDSHAKE_TIMEOUT_MS, now_ms);
    }
    int wait = -1;
    if (c->ping_sent_at && now_ms - c->ping_sent_at >= PING_TIMEOUT_MS) {
        fail(c, "%s", "the server stopped answering pings");
        *close_now = 1;
        return -1;
    }
    if (!c->ping_sent_at && now_ms - c->last_ping_at >= PING_EVERY_MS) {
        char ping[16];
        if (emit_raw(c, ping, nats_write_ping(ping, sizeof ping)) != 0) {
            *close_now = 1;
            return -1;
        }
        c->ping_sent_at = c->last_ping_at = now_ms;
    }
    wait = earliest(wait, c->ping_sent_at ? c->ping_sent_at + PING_TIMEOUT_MS : c->last_ping_at + PING_EVERY_MS,
                    now_ms);
    int rc = 0;
    if (c->api != API_NONE && now_ms - c->api_sent_at >= API_TIMEOUT_MS) {
        /* no answer: JetStream may have no leader yet; ask again */
        c->api_retry_at = now_ms;
        c->api = API_NONE;
        if (!c->api_logged) {
            log_warn("cluster: the JetStream API did not answer in %d ms; asking again", API_TIMEOUT_MS);
            c->api_logged = 1;
        }
    }
    if (c->api == API_NONE && c->api_retry_at && now_ms >= c->api_retry_at) {
        c->api_retry_at = 0;
        rc = c->st == ST_CONSUMER ? ask_consumer(c) : ask_stream_info(c);
    }
    if (c->api != API_NONE)
        wait = earliest(wait, c->api_sent_at + API_TIMEOUT_MS, now_ms);
    else if (c->api_retry_at)
        wait = earliest(wait, c->api_retry_at, now_ms);
    if (rc == 0 && c->st >= ST_CATCHUP) {
        if (c->pull_open && now_ms - c->pull_sent_at >= PULL_LOST_MS) {
            /* neither messages nor its end came: the consumer is gone
             * (no_responders would have said so, unless the server that
             * held it went silently) */
            rc = consumer_lost(c, "a pull got no answer");
        }
        if (!c->pull_open && c->dv_count < PULL_BATCH)
            rc = send_pull(c);
        if (c->pull_open)
            wait = earliest(wait, c->pull_sent_at + PULL_LOST_MS, now_ms);
    }
    /* beats say "this node is alive and on the bus": from the handshake on,
     * so a move to another server (a stream check, a new consumer, a
     * catch-up: seconds) is not taken for a node lost */
    if (rc == 0 && now_ms - c->last_beat_sent >= CLUSTER_BEAT_MS) {
        char subject[64], epoch[24];
        snprintf(subject, sizeof subject, CLUSTER_BEAT_SUBJECT ".%s", c->node);
        snprintf(epoch, sizeof epoch, "%" PRId64, c->epoch);
        rc = emit_pub(c, subject, NULL, NULL, epoch, strlen(epoch));
        c->last_beat_sent = now_ms;
    }
    wait = earliest(wait, c->last_beat_sent + CLUSTER_BEAT_MS, now_ms);
    if (rc == 0 && c->st == ST_READY) {
        /* In order: once a publish failed or went unanswered, new ones wait
         * (cluster_publish holds them) and every one not acknowledged goes
         * out again, oldest first, so the stream keeps this node's order
         * (a later one stored ahead of an earlier one would have other
         * nodes apply, say, a part before its join). */
        size_t first = 0;
        while (first < c->pub_count && c->pubs[first].acked)
            first++;
        if (first < c->pub_count && c->pubs[first].sent_at && now_ms - c->pubs[first].sent_at >= PUB_RESEND_MS)
            c->pub_blocked = 1;
        if (c->pub_blocked && first == c->pub_count)
            c->pub_blocked = 0;   /* all acknowledged: new lines go out at once again */
        if (c->pub_blocked && first < c->pub_count &&
            (!c->pubs[first].sent_at || now_ms - c->pubs[first].sent_at >= PUB_RETRY_MS))
            for (size_t i = first; i < c->pub_count && rc == 0; i++)
                if (!c->pubs[i].acked)
                    rc = send_held_pub(c, &c->pubs[i]);
        for (size_t i = first; i < c->pub_count && rc == 0; i++)
            if (!c->pubs[i].sent_at && !c->pub_blocked)
                rc = send_held_pub(c, &c->pubs[i]);
        if (first < c->pub_count)
            wait = earliest(wait, c->pubs[first].sent_at + (c->pub_blocked ? PUB_RETRY_MS : PUB_RESEND_MS), now_ms);
    }
    if (rc != 0 || c->broken)
        *close_now = 1;
    return wait;
}

const char *cluster_error(const cluster *c)
{
    return c->error[0] ? c->error : "no error";
}

int cluster_ready(const cluster *c)
{
    return c->st == ST_READY;
}

const char *cluster_status(const cluster *c)
{
    switch (c->st) {
    case ST_DOWN: return "not connected to any server";
    case ST_HANDSHAKE: return "connecting";
    case ST_STREAM: return "waiting for the stream";
    case ST_CONSUMER: return "waiting for the stream's consumer";
    case ST_CATCHUP: return "catching up with the stream";
    case ST_READY: return "ready";
    }
    return "?";
}

int cluster_publish(cluster *c, uint64_t serial, const char *payload, size_t n)
{
    if (n + 256 > c->max_payload)
        return -1;   /* the server would close the connection on it */
    CR_ASSERT(c->pub_count == 0 || c->pubs[c->pub_count - 1].serial < serial);
    if (c->pub_count == c->pub_cap) {
        size_t cap = c->pub_cap ? c->pub_cap * 2 : 64;
        held_pub *p = realloc(c->pubs, cap * sizeof *p);
        if (!p)
            return -1;
        c->pubs = p;
        c->pub_cap = cap;
    }
    held_pub *p = &c->pubs[c->pub_count];
    p->serial = serial;
    p->len = n;
    p->sent_at = 0;
    p->acked = 0;
    p->payload = dup_n(payload, n);
    if (!p->payload)
        return -1;
    c->pub_count++;
    /* queued: a failure to write it now closes the connection (broken),
     * and it goes out again after the reconnect */
    if (c->st == ST_READY && !c->pub_blocked)
        (void)send_held_pub(c, p);
    return 0;
}

size_t cluster_deliveries(cluster *c, const cluster_delivery **out)
{
    *out = c->dv;
    return c->dv_count;
}

void cluster_applied(cluster *c, size_t n)
{
    CR_ASSERT(n <= c->dv_count);
    if (n == 0)
        return;
    const char *last_ack = NULL;
    for (size_t i = 0; i < n; i++) {
        const cluster_delivery *d = &c->dv[i];
        CR_ASSERT(d->seq > c->applied);
        c->applied = d->seq;
        if (c->acks[i])
            last_ack = c->acks[i];
        if (d->own_serial) {
            for (size_t k = 0; k < c->pub_count; k++)
                if (c->pubs[k].serial == d->own_serial) {
                    free(c->pubs[k].payload);
                    memmove(c->pubs + k, c->pubs + k + 1, (c->pub_count - k - 1) * sizeof *c->pubs);
                    c->pub_count--;
                    break;
                }
        }
    }
    /* ack_policy all: acking the last acks every earlier one */
    if (last_ack && c->st >= ST_CATCHUP)
        (void)emit_pub(c, last_ack, NULL, NULL, "", 0);
    drop_deliveries(c, n);
    if (c->st == ST_CATCHUP && c->applied >= c->catchup_to)
        (void)become_ready(c);
}

uint64_t cluster_applied_seq(const cluster *c)
{
    return c->applied;
}

int cluster_node_silent(const cluster *c, const char *node, int64_t epoch, int64_t now_ms)
{
    if (c->st != ST_READY || now_ms - c->ready_since < CLUSTER_SILENT_MS)
        return 0;   /* not listening long enough to tell */
    for (size_t i = 0; i < c->beat_count; i++)
        if (strcmp(c->beats[i].node, node) == 0)
            return c->beats[i].epoch != epoch || now_ms - c->beats[i].at >= CLUSTER_SILENT_MS;
    return c->beat_count < CLUSTER_BEATS_MAX;
}

int cluster_publish_once(cluster *c, const char *msg_id, const char *payload, size_t n)
{
    char reply[128];
    if (c->st != ST_READY || n + 256 > c->max_payload)
        return -1;
    snprintf(reply, sizeof reply, "%s.ack.0", c->inbox);
    return emit_pub(c, CLUSTER_SUBJECT, reply, msg_id, payload, n);
}

int cluster_send_direct(cluster *c, const char *node, const char *payload, size_t n)
{
    char subject[96];
    if (c->st != ST_READY || n + 256 > c->max_payload)
        return -1;
    snprintf(subject, sizeof subject, CLUSTER_DIRECT_SUBJECT ".%s", node);
    return emit_pub(c, subject, NULL, NULL, payload, n);
}

size_t cluster_direct_messages(cluster *c, const cluster_delivery **out)
{
    *out = c->direct;
    return c->direct_count;
}

void cluster_direct_done(cluster *c)
{
    for (size_t i = 0; i < c->direct_count; i++)
        free((char *)c->direct[i].payload);
    c->direct_count = 0;
}

size_t cluster_who_messages(cluster *c, const cluster_who **out)
{
    *out = c->who;
    return c->who_count;
}

void cluster_who_done(cluster *c)
{
    for (size_t i = 0; i < c->who_count; i++) {
        free(c->who[i].reply);
        free(c->who[i].payload);
    }
    c->who_count = 0;
}

int cluster_answer_who(cluster *c, const char *reply, const char *payload, size_t n)
{
    if (c->st < ST_CATCHUP || n + 256 > c->max_payload)
        return -1;
    return emit_pub(c, reply, NULL, NULL, payload, n);
}

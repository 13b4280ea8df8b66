/* nats: the NATS client protocol's wire format, the subset the cluster mode
 * (issue 14, docs/CLUSTER.md) needs, for a connection driven by the relay's
 * own I/O thread (the official C client brings threads of its own).
 *
 * Owns: reading what a server sends (INFO, MSG, HMSG, PING, PONG, +OK,
 * -ERR) from a byte stream cut anywhere; writing what a client sends
 * (CONNECT, PUB, HPUB with a Nats-Msg-Id header for JetStream's
 * deduplication, SUB, UNSUB, PING, PONG); the stream sequence in a
 * JetStream delivery's reply subject.
 * Never: touches sockets, parses the JSON of INFO or of the JetStream API
 * (the caller does), allocates per message (one buffer per connection,
 * grown up to the largest message allowed).  Portable C11.
 */
#ifndef CHATRELAY_NATS_H
#define CHATRELAY_NATS_H

#include <stddef.h>
#include <stdint.h>

#define NATS_CONTROL_MAX 4096   /* nats-server's limit on a control line */

typedef enum nats_op {
    NATS_INFO,      /* text: the JSON after "INFO " */
    NATS_MSG,       /* subject, sid, reply (may be empty), headers (HMSG only), payload */
    NATS_PING,      /* answer with nats_write_pong */
    NATS_PONG,
    NATS_OK,
    NATS_ERR        /* text: the reason, without its quotes */
} nats_op;

typedef struct nats_msg {
    nats_op op;
    const char *subject, *reply, *headers, *payload, *text;   /* not NUL-terminated */
    size_t subject_len, reply_len, headers_len, payload_len, text_len;
    uint64_t sid;
} nats_msg;

/* Returns 0 to go on, anything else to stop feeding (returned by nats_feed). */
typedef int (*nats_msg_fn)(void *ctx, const nats_msg *m);

typedef struct nats_parser {
    char *buf;
    size_t len, cap;
    size_t max_payload;           /* a larger message is a protocol error */
    char error[96];               /* why the stream is broken, "" while it is not */
} nats_parser;

void nats_parser_init(nats_parser *p, size_t max_payload);
void nats_parser_free(nats_parser *p);
/* Takes n more bytes and calls fn for every message they complete, in order.
 * Returns 0; fn's non-zero value; or -1 when the stream is not NATS (then
 * p->error says why and the connection must be closed: nothing after it
 * can be trusted), or when memory ran out. */
int nats_feed(nats_parser *p, const void *data, size_t n, nats_msg_fn fn, void *ctx);

/* Writers: the bytes of one command into out (capacity cap), returning
 * their count, or 0 if they do not fit or an argument is not allowed (a
 * subject or reply that is empty or holds a space, tab, CR or LF; a msg id
 * with CR or LF).  Strings are NUL-terminated; NULL = absent. */
size_t nats_write_connect(char *out, size_t cap, const char *name, const char *user, const char *pass,
                          const char *token);
size_t nats_write_pub(char *out, size_t cap, const char *subject, const char *reply, const char *msg_id,
                      const void *payload, size_t payload_len);
size_t nats_write_sub(char *out, size_t cap, const char *subject, uint64_t sid);
size_t nats_write_unsub(char *out, size_t cap, uint64_t sid);
size_t nats_write_ping(char *out, size_t cap);
size_t nats_write_pong(char *out, size_t cap);

/* The stream sequence of a JetStream delivery, from its reply subject:
 * "$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>"
 * or the newer form with domain and account hash in front
 * ("$JS.ACK.<domain>.<hash>.<stream>.<consumer>.<delivered>.<stream seq>..." ,
 * 12 or more tokens).  Returns 0 and sets *seq, or -1 if it is neither. */
int nats_ack_stream_seq(const char *reply, size_t len, uint64_t *seq);
/* The same, and the consumer's name (a span of reply) when consumer is not NULL. */
int nats_ack_parse(const char *reply, size_t len, uint64_t *seq, const char **consumer, size_t *consumer_len);

/* The value of header `name` (case-insensitive) in an HMSG's header block;
 * 0 and the span, or -1 if absent. */
int nats_header(const char *headers, size_t len, const char *name, const char **val, size_t *val_len);
/* The status code of a status message's header block ("NATS/1.0 408
 * Request Timeout" -> 408: JetStream's answers to a pull); 0 if none. */
int nats_status(const char *headers, size_t len);

#endif

/* outbuf: reference-counted message buffers and per-session send queues.
 *
 * Owns: msgbuf, an immutable encoded line (text + CRLF) shared by every
 * recipient; sendq, the ordered queue of one session's unsent bytes and the
 * accounting of the one send in flight.  Broadcasting a line costs one
 * msgbuf_new and one sendq_push (a pointer and a refcount increment) per
 * recipient: no copy of the text, and no allocation in the steady state
 * (msgbufs come from size-class free lists; a queue of a few entries keeps
 * its ring).  A queue that empties gives a larger ring back: a join storm
 * (each of N joins queued to everyone there) grows every session's ring, and
 * kept, each would pin its peak, 16 bytes an entry, for the session's life.
 * Its next ring is allocated at once at the size of the burst just sent, so a
 * saturated session pays one malloc and free per send, not a regrowth.
 * Never: touches sockets.  Portable C11; single-threaded (the I/O thread).
 *
 * Lifetime: a msgbuf is freed (returned to its pool) when its last reference
 * is released: by msgbuf_release after the creator is done, by sendq_complete
 * when a recipient's send completed, or by sendq_clear when a recipient closed.
 */
#ifndef CHATRELAY_OUTBUF_H
#define CHATRELAY_OUTBUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct msgbuf {
    uint32_t refs;
    uint32_t len;               /* bytes in data[] */
    uint32_t cap;               /* size class capacity of data[] */
    struct msgbuf *next_free;   /* free-list link while pooled */
    char data[];
} msgbuf;

/* A new buffer holding text[0..len) followed by CRLF, with one reference
 * (the caller's).  NULL when memory is exhausted. */
msgbuf *msgbuf_line(const char *text, size_t len);
/* printf-style, truncated at 2 KiB; appends CRLF. */
msgbuf *msgbuf_linef(const char *fmt, ...);
/* A new buffer holding bytes[0..len) as they are (telnet replies). */
msgbuf *msgbuf_bytes(const void *bytes, size_t len);
/* An empty buffer with room for cap bytes (len 0), for callers that fill data[]
 * themselves; one reference. */
msgbuf *msgbuf_alloc(size_t cap);
static inline void msgbuf_retain(msgbuf *m) { m->refs++; }
void msgbuf_release(msgbuf *m);
/* Frees every pooled buffer (at exit, so leak checkers stay quiet). */
void msgbuf_pool_drain(void);
/* 1 if released buffers are kept for reuse; 0 under AddressSanitizer (or
 * CHATRELAY_NO_POOLS), where every buffer is freed so a use after free shows. */
int msgbuf_pooling(void);

/* One contiguous piece of a send: the portable shape of a WSABUF. */
typedef struct sendq_span {
    const char *ptr;
    uint32_t len;
} sendq_span;

typedef struct sendq_entry {
    msgbuf *buf;
    uint32_t off;               /* bytes of buf already sent */
    uint32_t tag;               /* the caller's (sendq_push_tagged), 0 otherwise */
} sendq_entry;

typedef struct sendq {
    sendq_entry *ring;          /* capacity cap (a power of two), NULL until first push */
    uint32_t cap, head, count;
    uint32_t inflight_entries;  /* entries [head, head+inflight) are in the send in flight */
    uint32_t sent_since_empty;  /* entries sendq_complete released since the queue was last empty */
    uint32_t next_cap;          /* size of the next ring (the last burst's), 0 = the smallest */
    size_t bytes;               /* unsent bytes queued, in flight included */
    size_t inflight_bytes;
    /* What the queue keeps alive: each queued buffer's whole allocation (its
     * size class, header included) plus its entry.  A buffer shared with other
     * queues is counted in full by each: the bound it serves is per session. */
    size_t pinned;
} sendq;

/* The memory one queued buffer costs its queue (see sendq.pinned).  Inline:
 * the hub checks it once per delivery. */
static inline size_t sendq_cost(const msgbuf *m)
{
    return sizeof *m + m->cap + sizeof(sendq_entry);
}

void sendq_init(sendq *q);
/* Appends m (taking a new reference).  Returns 0, or -1 if memory ran out. */
int sendq_push(sendq *q, msgbuf *m);
/* The same with a tag the caller reads back with sendq_peek, for a queue
 * used as an ordered list of work rather than sent (the hub's later list). */
int sendq_push_tagged(sendq *q, msgbuf *m, uint32_t tag);
/* Appends bytes to the last queued buffer when that costs no new buffer: it
 * is not in flight, no one else holds it, and it has room.  Returns 1 if
 * appended, 0 if the caller must queue a buffer of its own.  So a stream of
 * tiny replies (telnet negotiation) pins its bytes, not a buffer each. */
int sendq_append(sendq *q, const void *bytes, size_t len);
/* The first entry's buffer and tag, or NULL when empty (nothing in flight). */
msgbuf *sendq_peek(const sendq *q, uint32_t *tag);
/* Removes the first entry (nothing may be in flight) and releases its buffer.
 * A queue used as a list, drained this way, gives its ring back whenever it
 * empties: the hub's later list holds output only while a query waits, so
 * whatever size it reached was a burst, never a steady state. */
void sendq_drop_first(sendq *q);
/* Marks up to max_spans queued entries (and at most max_bytes bytes,
 * whole entries only unless the first alone is larger) as in flight and
 * describes them in spans.  Returns the number of spans (0 if nothing is
 * queued or a send is already in flight). */
size_t sendq_gather(sendq *q, sendq_span *spans, size_t max_spans, size_t max_bytes);
/* The send in flight completed with `transferred` bytes.  Fully sent entries
 * are released; a partly sent entry keeps its offset and is resent by the next
 * gather (a short completion).  When that empties the queue, a ring larger
 * than SENDQ_KEEP_CAP entries is freed, and the next push allocates one for
 * as many entries as were sent since the queue was last empty (at most
 * SENDQ_NEXT_CAP_MAX).  The ring holds only the entries, never bytes a send
 * uses, and nothing is in flight once the queue is empty.  Returns the bytes
 * that remain unsent from the completed send (0 normally). */
size_t sendq_complete(sendq *q, size_t transferred);
static inline int sendq_in_flight(const sendq *q) { return q->inflight_entries != 0; }
static inline int sendq_has_unsent(const sendq *q) { return q->count > q->inflight_entries; }
/* Rings of at most this many entries (256 bytes) are kept when their queue
 * empties: an idle session costs little, and a quiet one does not allocate. */
#define SENDQ_KEEP_CAP 16u
/* The largest ring a queue starts with after giving one back: one send's
 * worth of entries (relay.c's MAX_SEND_SPANS).  A larger ring means output
 * piled up behind a slow send, and it grows again by doubling. */
#define SENDQ_NEXT_CAP_MAX 1024u
/* Drops every entry (in flight or not), releasing their buffers, and frees the
 * ring.  Only once no send is in flight (the completion routine ran). */
void sendq_clear(sendq *q);

#endif

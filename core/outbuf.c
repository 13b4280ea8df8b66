/* outbuf: reference-counted message buffers and per-session send queues.
 * See outbuf.h for the lifetime rules. */
#include "outbuf.h"

#include "ring.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Size classes keep the steady state free of malloc: a broadcast line of a
 * typical chat (under 128 bytes) is recycled from the 128-byte list.  Larger
 * than the last class: plain malloc/free. */
static const uint32_t class_caps[] = { 64, 128, 256, 512, 1024, 2048, 4096 };
#define CLASS_COUNT (sizeof class_caps / sizeof class_caps[0])
/* Bound on pooled buffers per class, so a burst does not pin memory forever.
 * Under AddressSanitizer there is no pool (POOL_KEEP 0): a recycled buffer
 * would hide a use after free of exactly the refcounted object that most
 * needs the check.  CHATRELAY_NO_POOLS switches them off elsewhere too. */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CHATRELAY_NO_POOLS 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) && !defined(CHATRELAY_NO_POOLS)
#define CHATRELAY_NO_POOLS 1
#endif
#ifdef CHATRELAY_NO_POOLS
#define POOL_KEEP 0
#else
#define POOL_KEEP 16384
#endif

int msgbuf_pooling(void)
{
    return POOL_KEEP > 0;
}

static struct pool {
    msgbuf *free;
    uint32_t count;
} pools[CLASS_COUNT];

static int class_of(size_t cap)
{
    for (size_t i = 0; i < CLASS_COUNT; i++)
        if (cap <= class_caps[i])
            return (int)i;
    return -1;
}

msgbuf *msgbuf_alloc(size_t cap)
{
    if (cap > UINT32_MAX - 64)
        return NULL;
    int c = class_of(cap);
    msgbuf *m;
    if (c >= 0 && pools[c].free) {
        m = pools[c].free;
        pools[c].free = m->next_free;
        pools[c].count--;
    } else {
        size_t real_cap = c >= 0 ? class_caps[c] : cap;
        m = malloc(sizeof(msgbuf) + real_cap);
        if (!m)
            return NULL;
        m->cap = (uint32_t)real_cap;
    }
    m->refs = 1;
    m->len = 0;
    m->next_free = NULL;
    return m;
}

void msgbuf_release(msgbuf *m)
{
    if (--m->refs != 0)
        return;
    int c = class_of(m->cap);
    if (c >= 0 && class_caps[c] == m->cap && pools[c].count < POOL_KEEP) {
        m->next_free = pools[c].free;
        pools[c].free = m;
        pools[c].count++;
    } else {
        free(m);
    }
}

void msgbuf_pool_drain(void)
{
    for (size_t i = 0; i < CLASS_COUNT; i++) {
        while (pools[i].free) {
            msgbuf *m = pools[i].free;
            pools[i].free = m->next_free;
            free(m);
        }
        pools[i].count = 0;
    }
}

msgbuf *msgbuf_bytes(const void *bytes, size_t len)
{
    msgbuf *m = msgbuf_alloc(len);
    if (!m)
        return NULL;
    memcpy(m->data, bytes, len);
    m->len = (uint32_t)len;
    return m;
}

msgbuf *msgbuf_line(const char *text, size_t len)
{
    msgbuf *m = msgbuf_alloc(len + 2);
    if (!m)
        return NULL;
    memcpy(m->data, text, len);
    m->data[len] = '\r';
    m->data[len + 1] = '\n';
    m->len = (uint32_t)(len + 2);
    return m;
}

msgbuf *msgbuf_linef(const char *fmt, ...)
{
    char text[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (n < 0)
        return NULL;
    if ((size_t)n >= sizeof text)
        n = (int)sizeof text - 1;
    return msgbuf_line(text, (size_t)n);
}

void sendq_init(sendq *q)
{
    memset(q, 0, sizeof *q);
}

#if defined(__GNUC__) || defined(__clang__)
__attribute__((noinline, cold))
#endif
static int sendq_grow(sendq *q)
{
    void *ring = q->ring;
    if (ring_grow(&ring, &q->cap, &q->head, q->count, sizeof(sendq_entry), q->next_cap ? q->next_cap : 8) != 0)
        return -1;
    q->ring = ring;
    return 0;
}

/* An empty queue's ring goes back to the heap; the next push allocates one
 * of next_cap entries (a power of two, or 0 for the smallest).  The caller
 * knows the queue is empty, so nothing is in flight. */
static void sendq_free_ring(sendq *q, uint32_t next_cap)
{
    free(q->ring);
    q->ring = NULL;
    q->cap = 0;
    q->head = 0;
    q->next_cap = next_cap;
}

/* The ring for a burst of n entries: the next power of two, within
 * [8, SENDQ_NEXT_CAP_MAX]. */
static uint32_t ring_cap_for(uint32_t n)
{
    uint32_t cap = 8;
    while (cap < n && cap < SENDQ_NEXT_CAP_MAX)
        cap *= 2;
    return cap;
}

int sendq_push_tagged(sendq *q, msgbuf *m, uint32_t tag)
{
    /* Once per delivery: the rare growth is a call of its own, so that this
     * path needs no saved registers. */
    if (q->count == q->cap && sendq_grow(q) != 0)
        return -1;
    sendq_entry *e = &q->ring[(q->head + q->count) & (q->cap - 1)];
    e->buf = m;
    e->off = 0;
    e->tag = tag;
    msgbuf_retain(m);
    q->count++;
    q->bytes += m->len;
    q->pinned += sendq_cost(m);
    return 0;
}

int sendq_push(sendq *q, msgbuf *m)
{
    return sendq_push_tagged(q, m, 0);
}

int sendq_append(sendq *q, const void *bytes, size_t len)
{
    if (q->count == 0 || q->count == q->inflight_entries)
        return 0;
    msgbuf *m = q->ring[(q->head + q->count - 1) & (q->cap - 1)].buf;
    if (m->refs != 1 || len > m->cap - m->len)
        return 0;
    memcpy(m->data + m->len, bytes, len);
    m->len += (uint32_t)len;
    q->bytes += len;
    return 1;
}

msgbuf *sendq_peek(const sendq *q, uint32_t *tag)
{
    if (q->count == 0)
        return NULL;
    const sendq_entry *e = &q->ring[q->head];
    if (tag)
        *tag = e->tag;
    return e->buf;
}

void sendq_drop_first(sendq *q)
{
    if (q->count == 0 || q->inflight_entries)
        return;
    sendq_entry *e = &q->ring[q->head];
    q->bytes -= e->buf->len - e->off;
    q->pinned -= sendq_cost(e->buf);
    msgbuf_release(e->buf);
    q->head = (q->head + 1) & (q->cap - 1);
    q->count--;
    if (q->count == 0 && q->cap > SENDQ_KEEP_CAP)
        sendq_free_ring(q, 0);
}

size_t sendq_gather(sendq *q, sendq_span *spans, size_t max_spans, size_t max_bytes)
{
    if (q->inflight_entries || q->count == 0 || max_spans == 0)
        return 0;
    size_t n = 0, bytes = 0;
    while (n < q->count && n < max_spans) {
        const sendq_entry *e = &q->ring[(q->head + n) & (q->cap - 1)];
        uint32_t len = e->buf->len - e->off;
        if (n > 0 && bytes + len > max_bytes)
            break;
        spans[n].ptr = e->buf->data + e->off;
        spans[n].len = len;
        bytes += len;
        n++;
    }
    q->inflight_entries = (uint32_t)n;
    q->inflight_bytes = bytes;
    return n;
}

size_t sendq_complete(sendq *q, size_t transferred)
{
    size_t left = transferred;
    if (left > q->inflight_bytes)
        left = q->inflight_bytes;   /* never trust a count past what was asked */
    size_t unsent = q->inflight_bytes - left;
    q->bytes -= left;
    while (q->count > 0 && q->inflight_entries > 0) {
        sendq_entry *e = &q->ring[q->head];
        uint32_t rest = e->buf->len - e->off;
        if (left < rest) {
            e->off += (uint32_t)left;   /* short completion: resend the rest next time */
            break;
        }
        left -= rest;
        q->pinned -= sendq_cost(e->buf);
        msgbuf_release(e->buf);
        q->head = (q->head + 1) & (q->cap - 1);
        q->count--;
        q->inflight_entries--;
        q->sent_since_empty++;
    }
    q->inflight_entries = 0;
    q->inflight_bytes = 0;
    if (q->count == 0) {
        if (q->cap > SENDQ_KEEP_CAP)
            sendq_free_ring(q, ring_cap_for(q->sent_since_empty));
        q->sent_since_empty = 0;
    }
    return unsent;
}

void sendq_clear(sendq *q)
{
    for (uint32_t i = 0; i < q->count; i++)
        msgbuf_release(q->ring[(q->head + i) & (q->cap - 1)].buf);
    free(q->ring);
    sendq_init(q);
}

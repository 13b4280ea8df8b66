/* Unit tests of outbuf: refcounted shared buffers and send-queue accounting. */
#include "check.h"
#include "outbuf.h"

#include <stdlib.h>

static void test_shared_buffer_refcount(void)
{
    msgbuf *m = msgbuf_line("hello", 5);
    CHECK(m != NULL);
    CHECK_MEM(m->data, m->len, "hello\r\n");
    sendq a, b;
    sendq_init(&a);
    sendq_init(&b);
    CHECK_INT(sendq_push(&a, m), 0);
    CHECK_INT(sendq_push(&b, m), 0);
    CHECK_INT(m->refs, 3);
    msgbuf_release(m);              /* the creator is done; recipients hold it */
    CHECK_INT(m->refs, 2);
    sendq_span s[4];
    CHECK_INT(sendq_gather(&a, s, 4, 1 << 20), 1);
    CHECK(s[0].ptr == m->data);     /* no per-recipient copy */
    CHECK_INT(sendq_complete(&a, 7), 0);
    CHECK_INT(m->refs, 1);
    CHECK_INT(a.bytes, 0);
    sendq_clear(&b);                /* a closed recipient releases too */
    sendq_clear(&a);
}

static void test_gather_coalesces_and_one_in_flight(void)
{
    sendq q;
    sendq_init(&q);
    for (int i = 0; i < 20; i++) {
        msgbuf *m = msgbuf_linef("line %02d", i);     /* 9 bytes each */
        CHECK_INT(sendq_push(&q, m), 0);
        msgbuf_release(m);
    }
    CHECK_INT(q.bytes, 180);
    sendq_span s[32];
    CHECK_INT(sendq_gather(&q, s, 8, 1 << 20), 8);    /* span limit */
    CHECK(sendq_in_flight(&q));
    CHECK_INT(sendq_gather(&q, s, 8, 1 << 20), 0);    /* at most one send in flight */
    CHECK(sendq_has_unsent(&q));
    CHECK_INT(sendq_complete(&q, 72), 0);
    CHECK_INT(q.count, 12);
    CHECK_INT(sendq_gather(&q, s, 32, 40), 4);        /* byte limit: whole entries only */
    CHECK_MEM(s[0].ptr, s[0].len, "line 08\r\n");
    CHECK_INT(sendq_complete(&q, 36), 0);
    CHECK_INT(sendq_gather(&q, s, 32, 1 << 20), 8);
    CHECK_MEM(s[7].ptr, s[7].len, "line 19\r\n");
    CHECK_INT(sendq_complete(&q, 72), 0);
    CHECK_INT(q.count, 0);
    CHECK_INT(q.bytes, 0);
    sendq_clear(&q);
}

static void test_short_completion_resends_rest(void)
{
    sendq q;
    sendq_init(&q);
    msgbuf *a = msgbuf_line("abcdef", 6), *b = msgbuf_line("xyz", 3);
    sendq_push(&q, a);
    sendq_push(&q, b);
    msgbuf_release(a);
    msgbuf_release(b);
    sendq_span s[4];
    CHECK_INT(sendq_gather(&q, s, 4, 1 << 20), 2);
    CHECK_INT(sendq_complete(&q, 10), 3);             /* 8 of a + 2 of b sent; 3 of b left */
    CHECK_INT(q.count, 1);
    CHECK_INT(q.bytes, 3);
    CHECK_INT(sendq_gather(&q, s, 4, 1 << 20), 1);
    CHECK_MEM(s[0].ptr, s[0].len, "z\r\n");
    CHECK_INT(sendq_complete(&q, 0), 3);              /* nothing sent at all */
    CHECK_INT(sendq_gather(&q, s, 4, 1 << 20), 1);
    CHECK_INT(sendq_complete(&q, 999), 0);            /* a bogus count is clamped */
    CHECK_INT(q.bytes, 0);
    CHECK_INT(q.count, 0);
    sendq_clear(&q);
}

static void test_ring_growth_keeps_order(void)
{
    sendq q;
    sendq_init(&q);
    sendq_span s[1];
    int next_expected = 0;
    for (int i = 0; i < 1000; i++) {
        msgbuf *m = msgbuf_linef("%d", i);
        CHECK_INT(sendq_push(&q, m), 0);
        msgbuf_release(m);
        if (i % 3 == 0) {   /* drain one every third push, so the ring wraps while it grows */
            CHECK_INT(sendq_gather(&q, s, 1, 1 << 20), 1);
            CHECK_INT(atoi(s[0].ptr), next_expected);
            next_expected++;
            sendq_complete(&q, s[0].len);
        }
    }
    while (sendq_gather(&q, s, 1, 1 << 20) == 1) {
        CHECK_INT(atoi(s[0].ptr), next_expected);
        next_expected++;
        sendq_complete(&q, s[0].len);
    }
    CHECK_INT(next_expected, 1000);
    sendq_clear(&q);
}

/* Sends everything queued, up to 1024 entries a send, completing each in full. */
static void send_all(sendq *q)
{
    static sendq_span s[1024];
    size_t n;
    while ((n = sendq_gather(q, s, 1024, 1 << 20)) > 0) {
        size_t bytes = 0;
        for (size_t i = 0; i < n; i++)
            bytes += s[i].len;
        CHECK_INT(sendq_complete(q, bytes), 0);
    }
}

/* A join storm queues thousands of entries to every session; once it is
 * over, an idle session must not keep the ring of its peak (10,000 idle
 * sessions kept ~6.8 KB each in benchmark (e)).  A session that keeps
 * sending bursts gets its next ring at the size of the last one at once. */
static void test_storm_ring_given_back(void)
{
    sendq q;
    sendq_init(&q);
    msgbuf *m = msgbuf_line("*** someone joined lobby", 24);
    for (int i = 0; i < 3000; i++)      /* the peak: piled up behind a slow send */
        CHECK_INT(sendq_push(&q, m), 0);
    CHECK_INT(q.cap, 4096);
    send_all(&q);
    CHECK_INT(q.count, 0);
    CHECK(q.ring == NULL);              /* given back */
    CHECK_INT(q.cap, 0);
    CHECK_INT(q.bytes, 0);
    CHECK_INT(q.pinned, 0);
    CHECK_INT(m->refs, 1);              /* every queued reference released */
    CHECK_INT(sendq_push(&q, m), 0);    /* the next ring: one send's worth, not the peak */
    CHECK_INT(q.cap, SENDQ_NEXT_CAP_MAX);
    for (int i = 1; i < 600; i++)
        CHECK_INT(sendq_push(&q, m), 0);
    CHECK_INT(q.cap, 1024);
    send_all(&q);
    CHECK(q.ring == NULL);
    CHECK_INT(sendq_push(&q, m), 0);    /* a burst of 600 is followed by a ring for 600 */
    CHECK_INT(q.cap, 1024);
    for (int i = 1; i < 3; i++)         /* the storm's tail: a few joins */
        CHECK_INT(sendq_push(&q, m), 0);
    send_all(&q);
    CHECK(q.ring == NULL);
    CHECK_INT(sendq_push(&q, m), 0);    /* and after a burst of 3, the smallest ring */
    CHECK_INT(q.cap, 8);
    sendq_span s[2];
    CHECK_INT(sendq_gather(&q, s, 2, 1 << 20), 1);
    CHECK_MEM(s[0].ptr, s[0].len, "*** someone joined lobby\r\n");
    /* a short completion leaves an entry: nothing is freed under it */
    CHECK_INT(sendq_complete(&q, 4), 22);
    CHECK(q.ring != NULL);
    CHECK_INT(sendq_gather(&q, s, 2, 1 << 20), 1);
    CHECK_MEM(s[0].ptr, s[0].len, "someone joined lobby\r\n");
    CHECK_INT(sendq_complete(&q, s[0].len), 0);
    CHECK_INT(q.cap, 8);                /* small rings stay: a quiet session does not allocate */
    CHECK_INT(q.bytes, 0);
    CHECK_INT(q.pinned, 0);
    sendq_clear(&q);
    msgbuf_release(m);
}

/* The hub's later list holds everything queued to a session while its
 * replay waits (a whole storm, when queries wait their turn): drained, it
 * gives the ring back at once. */
static void test_list_ring_given_back_when_drained(void)
{
    sendq l;
    sendq_init(&l);
    msgbuf *m = msgbuf_line("x", 1);
    for (uint32_t i = 0; i < 3000; i++)
        CHECK_INT(sendq_push_tagged(&l, m, i), 0);
    CHECK_INT(l.cap, 4096);
    for (uint32_t i = 0; i < 3000; i++) {
        uint32_t tag = 0;
        CHECK(sendq_peek(&l, &tag) == m);
        CHECK_INT(tag, i);
        sendq_drop_first(&l);
    }
    CHECK(l.ring == NULL);
    CHECK_INT(l.cap, 0);
    CHECK_INT(l.pinned, 0);
    CHECK_INT(m->refs, 1);
    for (uint32_t i = 0; i < 5; i++)    /* a short list keeps its small ring */
        CHECK_INT(sendq_push_tagged(&l, m, i), 0);
    for (uint32_t i = 0; i < 5; i++)
        sendq_drop_first(&l);
    CHECK_INT(l.cap, 8);
    sendq_clear(&l);
    msgbuf_release(m);
}

static void test_pool_recycles_and_large_buffers(void)
{
    if (msgbuf_pooling()) {
        msgbuf *m = msgbuf_line("x", 1);
        msgbuf_release(m);
        msgbuf *again = msgbuf_line("y", 1);
        CHECK(again == m);              /* the steady state reuses buffers */
        msgbuf_release(again);
    } else {
        printf("SKIPPED: buffer reuse (pools are off under AddressSanitizer, so a use after free shows)\n");
    }
    char big[10000];
    memset(big, 'b', sizeof big);
    msgbuf *l = msgbuf_line(big, sizeof big);
    CHECK(l != NULL);
    CHECK_INT(l->len, 10002);
    msgbuf_release(l);
    msgbuf *t = msgbuf_bytes("\xff\xfc\x01", 3);
    CHECK_MEM(t->data, t->len, "\xff\xfc\x01");
    msgbuf_release(t);
}

int main(void)
{
    test_shared_buffer_refcount();
    test_gather_coalesces_and_one_in_flight();
    test_short_completion_resends_rest();
    test_ring_growth_keeps_order();
    test_storm_ring_given_back();
    test_list_ring_given_back_when_drained();
    test_pool_recycles_and_large_buffers();
    msgbuf_pool_drain();
    return check_done();
}

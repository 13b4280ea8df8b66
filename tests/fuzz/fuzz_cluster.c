/* libFuzzer target: core/cluster.c (and the nats.c parser and json.c under
 * it), the bus session, fed what a hostile or broken NATS server could send.
 *
 * The input is the server's byte stream.  Its first byte picks the size of
 * the pieces it arrives in and the second the sequence this node's history
 * applied; between pieces the clock moves (timers: pings, requests asked
 * again, pulls) and the hub's part is played: some of the deliveries are
 * "stored" (cluster_applied), publishes are queued.  A piece the cluster
 * refuses (-1) closes the connection, and the rest arrives on a new one.
 * Checked after every step: deliveries are in strictly increasing stream
 * order, each above what was applied, a gap's first sequence is at most its
 * last; the applied sequence never goes back; what the cluster writes is
 * whole commands (CRLF-terminated); nothing crashes, leaks or reads out of
 * bounds (ASan, UBSan). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster.h"

static int bind_ok(void *ctx, const char *stream, const char *created, char *err, size_t errlen)
{
    (void)ctx;
    (void)created;
    if (strcmp(stream, CLUSTER_STREAM) != 0)
        __builtin_trap();
    if (created[0] == 'X') {   /* a stream the history refuses */
        snprintf(err, errlen, "refused");
        return -1;
    }
    return 0;
}

static void check_deliveries(cluster *c)
{
    const cluster_delivery *d;
    size_t n = cluster_deliveries(c, &d);
    uint64_t prev = cluster_applied_seq(c);
    for (size_t i = 0; i < n; i++) {
        if (d[i].seq <= prev)
            __builtin_trap();
        if (d[i].gap_first && (d[i].gap_first > d[i].seq || d[i].gap_first <= prev))
            __builtin_trap();
        if (!d[i].payload)
            __builtin_trap();
        prev = d[i].seq;
    }
}

static void drain_output(cluster *c)
{
    const void *p;
    size_t n;
    while (cluster_output(c, &p, &n)) {
        const char *s = p;
        if (n < 2 || s[n - 2] != '\r' || s[n - 1] != '\n')
            __builtin_trap();
        /* sent in two pieces now and then: a short completion */
        if (n > 3 && (n & 1)) {
            cluster_output_sent(c, n / 2);
            if (!cluster_output(c, &p, &n))
                __builtin_trap();
        }
        cluster_output_sent(c, n);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t piece = (size_t)(data[0] % 64) + 1;
    cluster_config cc;
    memset(&cc, 0, sizeof cc);
    cc.node = "n1";
    cc.applied_seq = data[1] % 8;
    cc.epoch = 1000;
    cc.bind = bind_ok;
    cluster *c = cluster_create(&cc);
    if (!c)
        return 0;
    data += 2;
    size -= 2;
    int64_t now = 1000;
    uint64_t serial = 0, applied = cluster_applied_seq(c);
    cluster_connected(c, now);
    for (size_t off = 0; off < size; off += piece) {
        size_t n = size - off < piece ? size - off : piece;
        if (cluster_input(c, data + off, n, now) != 0) {
            cluster_disconnected(c, "fuzz");
            cluster_connected(c, now);
        }
        check_deliveries(c);
        const cluster_delivery *d;
        size_t waiting = cluster_deliveries(c, &d);
        if (waiting)
            cluster_applied(c, (data[off] % (waiting + 1)));
        if (cluster_applied_seq(c) < applied)
            __builtin_trap();
        applied = cluster_applied_seq(c);
        if (data[off] & 0x40)
            (void)cluster_publish(c, ++serial, "{\"v\":1}", 7);
        now += data[off] & 0x80 ? 4000 : 10;
        int close_now = 0;
        (void)cluster_tick(c, now, &close_now);
        if (close_now) {
            cluster_disconnected(c, "fuzz tick");
            cluster_connected(c, now);
        }
        drain_output(c);
        check_deliveries(c);
    }
    cluster_destroy(c);
    return 0;
}

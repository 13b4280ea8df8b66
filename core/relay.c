/* relay: the I/O thread.  See relay.h.
 *
 * One loop turn:
 *   1. wait alertably (WaitForMultipleObjectsEx(..., TRUE)): the stop event,
 *      the listeners' FD_ACCEPT events, or a timeout; completion routines run
 *      during the wait.  A signalled handle is returned *before* queued APCs
 *      run, so after an object wake we drain them with SleepEx(0, TRUE): an
 *      always-signalled handle can never starve the routines.
 *   2. completions: the routines only recorded what happened and put the
 *      session on the `done` list; now, outside any routine, received bytes go
 *      to the hub (framing, chat) and the WSARecv is re-armed, and finished
 *      sends are accounted.
 *   3. close requests from the hub; reap: a closing session is cancelled when
 *      its linger ends, and handed back to the hub (leave record) and freed
 *      once its recv and send routines have both run.
 *   4. hub_turn: one SQLite transaction for the turn, then delivery.
 *   5. flush: each session with unsent data and no send in flight gets ONE
 *      gathered WSASend of its queue, first without an OVERLAPPED (the
 *      socket is non-blocking); only what the kernel does not take at once
 *      goes out overlapped, with a completion routine (see session_flush).
 *   6. accept, when a listener is signalled (at most ACCEPT_PER_TURN) or is
 *      due for a retry (see accept_all).
 *
 * Session lifetime: FREE -> OPEN (accepted, first WSARecv posted) -> CLOSING
 * (no new I/O is posted except the final flush; lingers up to LINGER_MS for
 * queued notices) -> CANCELLED (CancelIoEx + closesocket done) -> FREE once
 * recv_pending and send_pending are both 0, i.e. every completion routine of
 * the session has run.  Only then may the slot (and its OVERLAPPEDs) be reused.
 */
#include "relay.h"

#include <winsock2.h>
#include <ws2tcpip.h>
#include <windows.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../storage/history.h"
#include "clock.h"
#include "cluster.h"
#include "hub.h"
#include "log.h"
#include "turn.h"

/* Spans gathered into one WSASend.  Under Wine every WSASend costs ~4 wineserver
 * round trips whatever its size, so a saturated session should send its whole
 * queue at once (Linux takes up to 1024 iovecs per sendmsg). */
#define MAX_SEND_SPANS 1024
#define MAX_SEND_BYTES (1024 * 1024)
/* The most a send without an OVERLAPPED offers at once.  Windows's AFD may
 * take a whole non-blocking send into kernel memory, past the socket buffer
 * and out of --max-queue-bytes' sight; an overlapped send instead keeps its
 * bytes in our queue, counted, until they are taken.  A saturated turn's
 * send is ~30 KiB (BENCHMARKS.md), well under it. */
#define SEND_NOW_MAX_BYTES (64 * 1024)
#define LINGER_MS 1000            /* how long a closing session may flush its last notices */
#define STOP_DRAIN_MS 500         /* on stop: time given to queued sends */
#define STOP_REAP_MS 3000         /* on stop: bound on waiting for cancelled routines */
#define STOP_BUS_MS 2000          /* on stop: bound on the leave records' trip through the stream */
#define ACCEPT_BACKOFF_MS 100
#define ACCEPT_PER_TURN 64        /* bounded, so a connection storm cannot monopolise the thread */
#define ACCEPT_RECHECK_MS 100     /* a listener that may have lost its FD_ACCEPT is tried this often */
#define WARN_REPEAT_MS 60000      /* a repeated warning is logged once a minute */
#define STUCK_WARN_MS 5000
#define WAIT_FAILURES_MAX 100
#define MAX_LISTENERS (2 * OPTIONS_MAX_LISTEN)   /* all interfaces: an IPv4 and an IPv6 socket each */

typedef enum session_state { S_FREE, S_OPEN, S_CLOSING, S_CANCELLED } session_state;

typedef struct session {
    SOCKET sock;
    WSAOVERLAPPED recv_ov;        /* owned by the kernel while recv_pending */
    WSAOVERLAPPED send_ov;        /* owned by the kernel while send_pending */
    struct relay *owner;
    struct session *next_done;    /* on relay.done while on_done */
    uint32_t slot;
    uint8_t state;
    uint8_t recv_pending, send_pending;
    uint8_t recv_done, send_done, on_done;
    uint8_t in_closing_list;
    DWORD recv_err, recv_bytes, recv_flags;
    DWORD send_err, send_bytes;
    const char *close_reason;     /* a constant, or the hub's copy (valid until hub_session_closed) */
    int64_t linger_until;
    int64_t cancelled_at;         /* when CancelIoEx + closesocket ran (stuck-routine watchdog) */
    uint8_t stuck_logged;
    unsigned char recv_buf[HUB_READ_MAX];   /* each WSARecv asks for hub_session_read_size of it */
} session;

struct bus_link;

struct relay {
    relay_options opt;
    hub *hub;
    history *db;
    cluster *cluster;             /* --cluster: the bus session (NULL = a single relay) */
    struct bus_link *bus;
    struct sockaddr_storage bus_addrs[OPTIONS_MAX_CLUSTER * 2];
    int bus_url_of[OPTIONS_MAX_CLUSTER * 2];   /* which --cluster URL each address came from */
    int bus_addr_count;
    char node[OPTIONS_NODE_MAX + 1];
    int64_t epoch;                /* this run, in the cluster's message ids, records and beats */
    session *sessions;
    uint32_t *free_slots;
    uint32_t free_count;
    uint32_t *closing;            /* slots in CLOSING or CANCELLED */
    uint32_t closing_count;
    session *done_head, *done_tail;
    SOCKET listeners[MAX_LISTENERS];
    WSAEVENT listen_events[MAX_LISTENERS];
    uint8_t listener_irc[MAX_LISTENERS];   /* --listen-irc: IRC only */
    int listener_count;
    int64_t accept_resume_at;     /* backoff after accept failures */
    int accept_more;              /* the per-turn accept cap was hit: accept again at once */
    int accept_suspect;           /* listeners woken with nothing to accept: FD_ACCEPT may be lost */
    int64_t accept_recheck_at;    /* when the suspect listeners are tried again */
    int64_t accept_warned_at;     /* rate limit of the accept-failure warning */
    uint32_t accept_failures;
    int64_t accept_resets_noted_at;   /* rate limit of the per-connection failure line */
    uint32_t accept_resets;           /* per-connection failures since that line */
    uint64_t accept_resets_total;     /* ... since the start, for the stop log */
    int wait_failures;            /* consecutive WaitForMultipleObjectsEx failures */
    HANDLE stop_event;
    HANDLE thread;
    int stopping;
    int exit_status;              /* the I/O thread's result: 0, or 1 if it had to give up */
    int io_outstanding;           /* stop gave up waiting for routines: memory must not be freed */
    /* Counters for the stop log and the benchmark: syscalls per delivery. */
    uint64_t n_wsasend, n_wsasend_overlapped, n_wsarecv, n_turns, bytes_sent;
};

static int64_t now_ms(void)
{
    return (int64_t)GetTickCount64();
}

/* ---- completion routines: record, never act ---------------------------- */

static void mark_done(session *s)
{
    if (s->on_done)
        return;
    s->on_done = 1;
    s->next_done = NULL;
    relay *r = s->owner;
    if (r->done_tail)
        r->done_tail->next_done = s;
    else
        r->done_head = s;
    r->done_tail = s;
}

static void CALLBACK on_recv_complete(DWORD err, DWORD bytes, LPWSAOVERLAPPED ov, DWORD flags)
{
    (void)flags;
    session *s = CONTAINING_RECORD(ov, session, recv_ov);
    s->recv_pending = 0;
    s->recv_done = 1;
    s->recv_err = err;
    s->recv_bytes = bytes;
    mark_done(s);
}

static void CALLBACK on_send_complete(DWORD err, DWORD bytes, LPWSAOVERLAPPED ov, DWORD flags)
{
    (void)flags;
    session *s = CONTAINING_RECORD(ov, session, send_ov);
    s->send_pending = 0;
    s->send_done = 1;
    s->send_err = err;
    s->send_bytes = bytes;
    mark_done(s);
}

/* ---- session I/O -------------------------------------------------------- */

static void session_begin_close(relay *r, session *s, const char *reason, int linger);

static void session_post_recv(relay *r, session *s)
{
    WSABUF buf;
    size_t want = hub_session_read_size(r->hub, s->slot);
    buf.buf = (char *)s->recv_buf;
    buf.len = (ULONG)(want < sizeof s->recv_buf ? want : sizeof s->recv_buf);
    s->recv_flags = 0;
    memset(&s->recv_ov, 0, sizeof s->recv_ov);
    s->recv_pending = 1;
    r->n_wsarecv++;
    if (WSARecv(s->sock, &buf, 1, NULL, &s->recv_flags, &s->recv_ov, on_recv_complete) != 0) {
        int err = WSAGetLastError();
        if (err != WSA_IO_PENDING) {
            /* Failed at once: the routine will never run for this call. */
            s->recv_pending = 0;
            log_info("session %u: WSARecv failed (error %d); closing", (unsigned)s->slot, err);
            session_begin_close(r, s, "connection lost", 0);
        }
    }
}

/* Describes the unsent part of slot's queue in bufs (marking it in flight);
 * returns the number of spans, 0 when nothing is queued. */
static size_t gather_unsent(relay *r, session *s, WSABUF *bufs, size_t max_bytes)
{
    sendq_span spans[MAX_SEND_SPANS];
    size_t n = sendq_gather(hub_sendq(r->hub, s->slot), spans, MAX_SEND_SPANS, max_bytes);
    for (size_t i = 0; i < n; i++) {
        bufs[i].buf = (char *)spans[i].ptr;
        bufs[i].len = spans[i].len;
    }
    return n;
}

static void send_failed(relay *r, session *s, const char *call, int err)
{
    sendq_complete(hub_sendq(r->hub, s->slot), 0);
    log_info("session %u: %s failed (error %d); closing", (unsigned)s->slot, call, err);
    session_begin_close(r, s, "connection lost", 0);
    s->linger_until = 0;   /* already closing: the socket is dead, stop lingering */
}

/* Turn step 5 for one session.  The queue goes out first in a WSASend
 * without an OVERLAPPED on the non-blocking socket: what the kernel's send
 * buffer takes is done when the call returns, with no completion routine to
 * come (on Windows that saves the APC's delivery, a kernel transition per
 * send; under Wine, the round trip that fetches it: docs/BENCHMARKS.md,
 * "Sending at once").  Only the rest, when the client reads slower than we
 * write (a partial send, or WSAEWOULDBLOCK), goes out overlapped and
 * completes through on_send_complete, which keeps the bytes pinned in the
 * queue until it ran.  Redis's networking.c writes the same way: directly,
 * with a write handler only for what is left. */
static void session_flush(relay *r, session *s)
{
    if (s->send_pending || (s->state != S_OPEN && s->state != S_CLOSING))
        return;
    WSABUF bufs[MAX_SEND_SPANS];   /* WSASend captures the array; only the bytes must live on */
    size_t n = gather_unsent(r, s, bufs, SEND_NOW_MAX_BYTES);
    if (n == 0)
        return;
    DWORD sent = 0;
    r->n_wsasend++;
    if (WSASend(s->sock, bufs, (DWORD)n, &sent, 0, NULL, NULL) == 0) {
        r->bytes_sent += sent;
        hub_session_sent(r->hub, s->slot, sent);
        n = gather_unsent(r, s, bufs, MAX_SEND_BYTES);   /* what it did not take, and what the cap left */
        if (n == 0)
            return;
    } else {
        int err = WSAGetLastError();
        if (err != WSAEWOULDBLOCK) {
            send_failed(r, s, "WSASend", err);
            return;
        }
        /* the send buffer is full: the same spans, still in flight, go overlapped */
    }
    memset(&s->send_ov, 0, sizeof s->send_ov);
    s->send_pending = 1;
    r->n_wsasend++;
    r->n_wsasend_overlapped++;
    if (WSASend(s->sock, bufs, (DWORD)n, NULL, 0, &s->send_ov, on_send_complete) != 0) {
        int err = WSAGetLastError();
        if (err != WSA_IO_PENDING) {
            s->send_pending = 0;   /* failed at once: the routine will never run for this call */
            send_failed(r, s, "WSASend (overlapped)", err);
        }
    }
}

static void session_begin_close(relay *r, session *s, const char *reason, int linger)
{
    if (s->state != S_OPEN)
        return;
    s->state = S_CLOSING;
    s->close_reason = reason;
    s->linger_until = linger ? now_ms() + LINGER_MS : 0;
    if (!s->in_closing_list) {
        s->in_closing_list = 1;
        r->closing[r->closing_count++] = s->slot;
    }
}

/* CancelIoEx then closesocket: under Wine closesocket alone does not complete
 * a stalled send, so the cancel is what guarantees the routines will run. */
static void session_cancel(session *s)
{
    if (s->recv_pending || s->send_pending) {
        if (!CancelIoEx((HANDLE)s->sock, NULL)) {
            DWORD err = GetLastError();
            if (err != ERROR_NOT_FOUND)
                log_warn("session %u: CancelIoEx failed (error %lu)", (unsigned)s->slot, (unsigned long)err);
        }
    }
    if (closesocket(s->sock) != 0)
        log_warn("session %u: closesocket failed (error %d)", (unsigned)s->slot, WSAGetLastError());
    s->sock = INVALID_SOCKET;
    s->state = S_CANCELLED;
    s->cancelled_at = now_ms();
    s->stuck_logged = 0;
}

/* Logs the process handle count: tests watch it to prove sessions leak nothing. */
static void log_handles(relay *r, const char *what)
{
    DWORD handles = 0;
    if (!GetProcessHandleCount(GetCurrentProcess(), &handles))
        log_warn("GetProcessHandleCount failed (error %lu)", (unsigned long)GetLastError());
    log_info("%s: sessions=%u handles=%lu", what, (unsigned)(r->opt.max_sessions - r->free_count),
             (unsigned long)handles);
}

/* Turn step 3 (core/turn.h), reap: closing sessions whose linger ended are
 * cancelled; cancelled ones whose routines have all run go back to the hub
 * and the free list. */
static void reap_sessions(relay *r, int64_t now)
{
    uint32_t i = 0;
    while (i < r->closing_count) {
        session *s = &r->sessions[r->closing[i]];
        if (s->state == S_CLOSING) {
            int drained = !s->send_pending && !sendq_has_unsent(hub_sendq(r->hub, s->slot));
            if (drained || now >= s->linger_until)
                session_cancel(s);
        }
        if (s->state == S_CANCELLED && (s->recv_pending || s->send_pending) && !s->stuck_logged &&
            now - s->cancelled_at > STUCK_WARN_MS) {
            /* Its slot stays reserved: reusing it before the routine ran would corrupt memory. */
            log_error("session %u: I/O still outstanding %d ms after CancelIoEx (recv %d, send %d); slot held",
                      (unsigned)s->slot, STUCK_WARN_MS, s->recv_pending, s->send_pending);
            s->stuck_logged = 1;
        }
        if (s->state == S_CANCELLED && !s->recv_pending && !s->send_pending && !s->on_done) {
            log_info("session %u: closed (%s)", (unsigned)s->slot, s->close_reason);
            hub_session_closed(r->hub, s->slot, s->close_reason);
            s->state = S_FREE;
            s->in_closing_list = 0;
            r->free_slots[r->free_count++] = s->slot;
            r->closing[i] = r->closing[--r->closing_count];
            if (r->free_count == r->opt.max_sessions)
                log_handles(r, "all sessions closed");
            continue;
        }
        i++;
    }
}

/* Step 2: act on what the routines recorded. */
static void process_completions(relay *r)
{
    int64_t now = now_ms();
    while (r->done_head) {
        session *s = r->done_head;
        r->done_head = s->next_done;
        if (!r->done_head)
            r->done_tail = NULL;
        s->on_done = 0;

        if (s->send_done) {
            s->send_done = 0;
            if (s->send_err != 0) {
                hub_session_sent(r->hub, s->slot, 0);
                if (s->state == S_OPEN)
                    log_info("session %u: send failed (error %lu)", (unsigned)s->slot, (unsigned long)s->send_err);
                session_begin_close(r, s, "connection lost", 0);
            } else {
                r->bytes_sent += s->send_bytes;
                hub_session_sent(r->hub, s->slot, s->send_bytes);
            }
        }
        if (s->recv_done) {
            s->recv_done = 0;
            if (s->state != S_OPEN) {
                /* closing: the data (if any) is dropped; the routine has run */
            } else if (s->recv_err != 0) {
                log_info("session %u: receive failed (error %lu)", (unsigned)s->slot, (unsigned long)s->recv_err);
                session_begin_close(r, s, "connection lost", 0);
            } else if (s->recv_bytes == 0) {
                session_begin_close(r, s, "connection closed", 0);
            } else {
                hub_session_input(r->hub, s->slot, s->recv_buf, s->recv_bytes, now);
                if (s->state == S_OPEN && !r->stopping)
                    session_post_recv(r, s);
            }
        }
    }
}

static void flush_and_close(relay *r)
{
    uint32_t slot;
    const char *reason;
    while (hub_next_close(r->hub, &slot, &reason))
        session_begin_close(r, &r->sessions[slot], reason, 1);
    while (hub_next_flush(r->hub, &slot))
        session_flush(r, &r->sessions[slot]);
}

/* ---- the cluster bus: one more socket on the same loop ------------------
 *
 * With --cluster the relay keeps one TCP connection to a NATS server (the
 * next in the --cluster list after a failure, with backoff).  It connects
 * without blocking (FD_CONNECT on an event the alertable wait includes, as a
 * listener's FD_ACCEPT), then reads and writes with overlapped WSARecv and
 * WSASend and completion routines, exactly as a session does; the bytes go
 * to and come from core/cluster.c.  Lifetime: IDLE -> CONNECTING -> OPEN ->
 * CLOSING (cancelled, waiting for its routines) -> IDLE; the OVERLAPPEDs
 * and the buffers are reused only once both routines have run. */

#define BUS_CONNECT_TIMEOUT_MS 3000   /* the close reason below says 3 s */
#define BUS_BACKOFF_MIN_MS 100
#define BUS_BACKOFF_MAX_MS 5000
#define BUS_RECV_SIZE 65536

typedef enum bus_state { BUS_IDLE, BUS_CONNECTING, BUS_OPEN, BUS_CLOSING } bus_state;

typedef struct bus_link {
    struct relay *owner;
    SOCKET sock;
    WSAEVENT connect_event;
    bus_state state;
    WSAOVERLAPPED recv_ov, send_ov;   /* the kernel's while *_pending */
    uint8_t recv_pending, send_pending, recv_done, send_done;
    DWORD recv_err, recv_bytes, recv_flags, send_err, send_bytes;
    int server;                       /* index in the resolved --cluster list */
    int attempts;                     /* failures since the last good connection */
    int64_t connect_deadline, next_attempt;
    int backoff_ms;
    char why[200];                    /* why it is closing */
    unsigned char recv_buf[BUS_RECV_SIZE];
} bus_link;

static void CALLBACK on_bus_recv(DWORD err, DWORD bytes, LPWSAOVERLAPPED ov, DWORD flags)
{
    (void)flags;
    bus_link *b = CONTAINING_RECORD(ov, bus_link, recv_ov);
    b->recv_pending = 0;
    b->recv_done = 1;
    b->recv_err = err;
    b->recv_bytes = bytes;
}

static void CALLBACK on_bus_send(DWORD err, DWORD bytes, LPWSAOVERLAPPED ov, DWORD flags)
{
    (void)flags;
    bus_link *b = CONTAINING_RECORD(ov, bus_link, send_ov);
    b->send_pending = 0;
    b->send_done = 1;
    b->send_err = err;
    b->send_bytes = bytes;
}

static void bus_close(relay *r, const char *why)
{
    bus_link *b = r->bus;
    if (b->state != BUS_OPEN && b->state != BUS_CONNECTING)
        return;
    snprintf(b->why, sizeof b->why, "%s", why);
    if (b->state == BUS_CONNECTING) {
        if (WSAEventSelect(b->sock, NULL, 0) != 0)
            log_warn("cluster: WSAEventSelect(clear) failed (error %d)", WSAGetLastError());
    }
    if ((b->recv_pending || b->send_pending) && !CancelIoEx((HANDLE)b->sock, NULL)) {
        DWORD err = GetLastError();
        if (err != ERROR_NOT_FOUND)
            log_warn("cluster: CancelIoEx failed (error %lu)", (unsigned long)err);
    }
    if (closesocket(b->sock) != 0)
        log_warn("cluster: closesocket failed (error %d)", WSAGetLastError());
    b->sock = INVALID_SOCKET;
    b->state = BUS_CLOSING;
}

static void bus_fail(relay *r, const char *call, int err)
{
    char why[96];
    snprintf(why, sizeof why, "%s failed (error %d)", call, err);
    bus_close(r, why);
}

/* CLOSING -> IDLE once both routines have run. */
static void bus_reap(relay *r, int64_t now)
{
    bus_link *b = r->bus;
    if (b->state != BUS_CLOSING || b->recv_pending || b->send_pending)
        return;
    b->recv_done = b->send_done = 0;
    cluster_disconnected(r->cluster, b->why);
    b->state = BUS_IDLE;
    b->attempts++;
    b->server = (b->server + 1) % r->bus_addr_count;
    /* the whole list once quickly, then backing off */
    if (b->attempts >= r->bus_addr_count)
        b->backoff_ms = b->backoff_ms ? (b->backoff_ms * 2 > BUS_BACKOFF_MAX_MS ? BUS_BACKOFF_MAX_MS
                                                                              : b->backoff_ms * 2)
                                      : BUS_BACKOFF_MIN_MS;
    b->next_attempt = now + (b->attempts >= r->bus_addr_count ? b->backoff_ms : 0);
}

static void bus_post_recv(relay *r)
{
    bus_link *b = r->bus;
    WSABUF buf;
    buf.buf = (char *)b->recv_buf;
    buf.len = sizeof b->recv_buf;
    b->recv_flags = 0;
    memset(&b->recv_ov, 0, sizeof b->recv_ov);
    b->recv_pending = 1;
    if (WSARecv(b->sock, &buf, 1, NULL, &b->recv_flags, &b->recv_ov, on_bus_recv) != 0) {
        int err = WSAGetLastError();
        if (err != WSA_IO_PENDING) {
            b->recv_pending = 0;
            bus_fail(r, "WSARecv", err);
        }
    }
}

static void bus_flush(relay *r)
{
    bus_link *b = r->bus;
    const void *data;
    size_t n;
    if (b->state != BUS_OPEN || b->send_pending || !cluster_output(r->cluster, &data, &n))
        return;
    WSABUF buf;
    buf.buf = (char *)data;
    buf.len = n > MAX_SEND_BYTES ? MAX_SEND_BYTES : (ULONG)n;
    memset(&b->send_ov, 0, sizeof b->send_ov);
    b->send_pending = 1;
    if (WSASend(b->sock, &buf, 1, NULL, 0, &b->send_ov, on_bus_send) != 0) {
        int err = WSAGetLastError();
        if (err != WSA_IO_PENDING) {
            b->send_pending = 0;
            bus_fail(r, "WSASend", err);
        }
    }
}

static void bus_connect(relay *r, int64_t now)
{
    bus_link *b = r->bus;
    const struct sockaddr_storage *addr = &r->bus_addrs[b->server];
    int len = addr->ss_family == AF_INET6 ? (int)sizeof(struct sockaddr_in6) : (int)sizeof(struct sockaddr_in);
    SOCKET s = WSASocketW(addr->ss_family, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
    if (s == INVALID_SOCKET) {
        log_warn("cluster: WSASocket failed (error %d)", WSAGetLastError());
        b->next_attempt = now + BUS_BACKOFF_MAX_MS;
        return;
    }
    /* event-select makes the socket non-blocking: connect returns at once */
    if (WSAEventSelect(s, b->connect_event, FD_CONNECT) != 0) {
        log_warn("cluster: WSAEventSelect(FD_CONNECT) failed (error %d)", WSAGetLastError());
        if (closesocket(s) != 0)
            log_warn("cluster: closesocket failed (error %d)", WSAGetLastError());
        b->next_attempt = now + BUS_BACKOFF_MAX_MS;
        return;
    }
    b->sock = s;
    b->state = BUS_CONNECTING;
    b->connect_deadline = now + BUS_CONNECT_TIMEOUT_MS;
    if (connect(s, (const struct sockaddr *)addr, len) != 0) {
        int err = WSAGetLastError();
        if (err != WSAEWOULDBLOCK)
            bus_fail(r, "connect", err);
    }
}

/* The connect event fired: connected, or refused. */
static void bus_on_connect_event(relay *r, int64_t now)
{
    bus_link *b = r->bus;
    WSANETWORKEVENTS ne;
    if (b->state != BUS_CONNECTING)
        return;
    if (WSAEnumNetworkEvents(b->sock, b->connect_event, &ne) != 0) {
        bus_fail(r, "WSAEnumNetworkEvents", WSAGetLastError());
        return;
    }
    if (!(ne.lNetworkEvents & FD_CONNECT))
        return;
    int err = ne.iErrorCode[FD_CONNECT_BIT];
    if (err != 0) {
        bus_fail(r, "connect", err);
        return;
    }
    u_long blocking = 0;
    BOOL nodelay = TRUE;
    if (WSAEventSelect(b->sock, NULL, 0) != 0) {
        bus_fail(r, "WSAEventSelect(clear)", WSAGetLastError());
        return;
    }
    if (ioctlsocket(b->sock, FIONBIO, &blocking) != 0) {
        bus_fail(r, "ioctlsocket(FIONBIO)", WSAGetLastError());
        return;
    }
    if (setsockopt(b->sock, IPPROTO_TCP, TCP_NODELAY, (const char *)&nodelay, sizeof nodelay) != 0)
        log_warn("cluster: setsockopt(TCP_NODELAY) failed (error %d)", WSAGetLastError());
    b->state = BUS_OPEN;
    log_info("cluster: connected to %s:%u", r->opt.cluster[r->bus_url_of[b->server]].host,
             (unsigned)r->opt.cluster[r->bus_url_of[b->server]].port);
    cluster_connected(r->cluster, now);
    bus_post_recv(r);
}

/* Turn step 2 for the bus: what its routines recorded. */
static void bus_completions(relay *r, int64_t now)
{
    bus_link *b = r->bus;
    if (b->send_done) {
        b->send_done = 0;
        if (b->state == BUS_OPEN) {
            if (b->send_err != 0)
                bus_fail(r, "send", (int)b->send_err);
            else
                cluster_output_sent(r->cluster, b->send_bytes);
        }
    }
    if (b->recv_done) {
        b->recv_done = 0;
        if (b->state != BUS_OPEN) {
            /* closing: dropped */
        } else if (b->recv_err != 0) {
            bus_fail(r, "receive", (int)b->recv_err);
        } else if (b->recv_bytes == 0) {
            bus_close(r, "the server closed the connection");
        } else if (cluster_input(r->cluster, b->recv_buf, b->recv_bytes, now) != 0) {
            log_warn("cluster: %s", cluster_error(r->cluster));
            bus_close(r, "protocol error");
        } else {
            /* the backoff starts again only once a server took us (a server
             * that answers and then refuses, bad credentials say, is tried
             * with backoff like one that does not answer) */
            if (b->attempts && cluster_ready(r->cluster)) {
                b->attempts = 0;
                b->backoff_ms = 0;
            }
            bus_post_recv(r);
        }
    }
    bus_reap(r, now);
}

/* After the hub's turn: timers, output, connecting.  Returns the wait. */
static int bus_turn(relay *r, int64_t now)
{
    bus_link *b = r->bus;
    int wait = -1, close_now = 0;
    if (b->state == BUS_OPEN) {
        wait = cluster_tick(r->cluster, now, &close_now);
        if (close_now) {
            log_warn("cluster: %s", cluster_error(r->cluster));
            bus_close(r, cluster_error(r->cluster));
        }
    }
    bus_flush(r);
    if (b->state == BUS_CONNECTING && now >= b->connect_deadline)
        bus_close(r, "no answer to connect within " "3 s");
    bus_reap(r, now);
    if (b->state == BUS_IDLE && !r->stopping) {
        if (now >= b->next_attempt)
            bus_connect(r, now);
        else
            wait = wait < 0 || b->next_attempt - now < wait ? (int)(b->next_attempt - now) : wait;
    }
    if (b->state == BUS_CONNECTING) {
        int until = b->connect_deadline <= now ? 0 : (int)(b->connect_deadline - now);
        wait = wait < 0 || until < wait ? until : wait;
    }
    return wait;
}

/* ---- accepting ---------------------------------------------------------- */

static void peer_ip_string(const struct sockaddr_storage *ss, char *out, size_t cap)
{
    const void *addr;
    int family = ss->ss_family;
    if (family == AF_INET6) {
        const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)ss;
        if (IN6_IS_ADDR_V4MAPPED(&a6->sin6_addr)) {
            /* the same client must count once for --max-per-ip over v4 and v6 */
            family = AF_INET;
            addr = &a6->sin6_addr.s6_addr[12];
        } else {
            addr = &a6->sin6_addr;
        }
    } else {
        addr = &((const struct sockaddr_in *)ss)->sin_addr;
    }
    if (!inet_ntop(family, addr, out, cap))
        snprintf(out, cap, "?");
}

/* irc: the connection came on an IRC-only listener, whose clients read an
 * ERROR line (the notice is in the line protocol's "*** ..." form). */
static void refuse_connection(SOCKET c, const char *notice, int irc)
{
    char line[256];
    int n = irc ? snprintf(line, sizeof line, "ERROR :Closing link (%s)\r\n",
                           strncmp(notice, "*** ", 4) == 0 ? notice + 4 : notice)
                : snprintf(line, sizeof line, "%s\r\n", notice);
    if (n < 0 || n >= (int)sizeof line)
        n = (int)strlen(line);
    /* The socket is still non-blocking here: best effort, never waits. */
    if (send(c, line, n, 0) == SOCKET_ERROR)
        log_debug("refusal notice not sent (error %d)", WSAGetLastError());
    if (closesocket(c) != 0)
        log_warn("closesocket failed (error %d)", WSAGetLastError());
}

static int session_setup_socket(session *s, SOCKET c)
{
    u_long nonblocking = 1;
    BOOL nodelay = TRUE;
    /* Accepted sockets inherit the listener's event-select and non-blocking
     * mode.  The event-select goes; non-blocking stays, and is set again so
     * that it never depends on that inheritance: session_flush's first send
     * must never block the thread.  Overlapped calls ignore the mode
     * (Microsoft, "Overlapped I/O and Event Objects"). */
    if (WSAEventSelect(c, NULL, 0) != 0) {
        log_warn("WSAEventSelect(clear) failed (error %d)", WSAGetLastError());
        return -1;
    }
    if (ioctlsocket(c, FIONBIO, &nonblocking) != 0) {
        log_warn("ioctlsocket(FIONBIO) failed (error %d)", WSAGetLastError());
        return -1;
    }
    /* Without it Nagle + delayed ACK adds ~40 ms to every chat line. */
    if (setsockopt(c, IPPROTO_TCP, TCP_NODELAY, (const char *)&nodelay, sizeof nodelay) != 0)
        log_warn("setsockopt(TCP_NODELAY) failed (error %d)", WSAGetLastError());
    /* A peer that vanishes without FIN or RST (NAT timeout, pulled cable)
     * must not hold its slot forever when --idle-timeout is off. */
    BOOL keepalive = TRUE;
    if (setsockopt(c, SOL_SOCKET, SO_KEEPALIVE, (const char *)&keepalive, sizeof keepalive) != 0)
        log_warn("setsockopt(SO_KEEPALIVE) failed (error %d)", WSAGetLastError());
    s->sock = c;
    return 0;
}

/* Errors of accept that belong to the one connection it tried to take: that
 * connection is already gone (consumed from the backlog), nothing is wrong with
 * the listener or the process, and the next queued connection may be fine.
 *   WSAECONNRESET    Microsoft's accept page: "an incoming connection was
 *                    indicated, but was subsequently terminated by the remote
 *                    peer prior to accepting the call".
 *   WSAENOTCONN      Wine: accept(2) hands over a connection already reset in
 *                    the backlog, then ws2_32's getpeername on it fails, and
 *                    accept closes it and returns this.
 *   WSAECONNABORTED  POSIX ECONNABORTED ("a connection has been aborted"), which
 *                    Wine passes through.
 *   WSAETIMEDOUT, WSAEHOSTUNREACH, WSAENETUNREACH, WSAEHOSTDOWN
 *                    Linux accept(2) passes a pending network error of the new
 *                    connection as accept's own error and says to retry.
 * Everything else (WSAEMFILE, WSAENOBUFS, Wine's WSAEINVAL when out of fds,
 * WSAENETDOWN, which Microsoft documents as "the network subsystem has failed")
 * is about the process or the host and backs off. */
static int accept_error_is_per_connection(int err)
{
    switch (err) {
    case WSAECONNRESET:
    case WSAENOTCONN:
    case WSAECONNABORTED:
    case WSAETIMEDOUT:
    case WSAEHOSTUNREACH:
    case WSAENETUNREACH:
    case WSAEHOSTDOWN:
        return 1;
    default:
        return 0;
    }
}

/* Counted, not warned about: a peer resetting its own connection is not the
 * relay's problem, but an operator should see that it happens and how often. */
static void note_accept_reset(relay *r, int err)
{
    int64_t now = now_ms();
    r->accept_resets++;
    r->accept_resets_total++;
    log_debug("accept: a connection was gone before it could be accepted (error %d)", err);
    if (r->accept_resets_noted_at == 0 || now - r->accept_resets_noted_at >= WARN_REPEAT_MS) {
        log_info("%u connection(s) reset before they could be accepted (last error %d; "
                 "this line comes at most once a minute)", (unsigned)r->accept_resets, err);
        r->accept_resets_noted_at = now;
        r->accept_resets = 0;
    }
}

/* An accept on listener li took a connection (Wine re-arms FD_ACCEPT then). */
static void accept_took(relay *r, int li, int recheck, int *took)
{
    if (*took)
        return;
    *took = 1;
    if (recheck)
        log_debug("listener %d: a connection was waiting although FD_ACCEPT was not signalled", li);
    r->accept_suspect &= ~(1 << li);
}

/* Accepts what listener li has queued.  A listener whose first accept finds
 * nothing is marked suspect and tried again every ACCEPT_RECHECK_MS until an
 * accept takes something.  Why: the wineserver (Wine 8.0) can act on a stale
 * poll result and report FD_ACCEPT for a connection that an accept handled
 * just before, in the same server loop, has already taken.  The event then
 * fires with nothing queued, and Wine does not watch the listener again until
 * an accept takes a connection, so without the retry the relay would never
 * hear of a new one (seen in about 1 of 15 reset storms: the backlog filled
 * while the relay waited).  On Windows the retry only follows a spurious wake. */
static void accept_all(relay *r, int li, int recheck)
{
    WSANETWORKEVENTS ne;
    int took = 0;
    if (WSAEnumNetworkEvents(r->listeners[li], r->listen_events[li], &ne) != 0)
        log_warn("WSAEnumNetworkEvents failed (error %d)", WSAGetLastError());
    r->accept_more &= ~(1 << li);
    for (int accepted = 0;; accepted++) {
        if (accepted == ACCEPT_PER_TURN) {
            r->accept_more |= 1 << li;   /* the loop comes back without waiting */
            return;
        }
        struct sockaddr_storage ss;
        int sslen = sizeof ss;
        SOCKET c = accept(r->listeners[li], (struct sockaddr *)&ss, &sslen);
        if (c == INVALID_SOCKET) {
            int err = WSAGetLastError();
            if (err == WSAEWOULDBLOCK) {
                if (!took) {
                    r->accept_suspect |= 1 << li;
                    r->accept_recheck_at = now_ms() + ACCEPT_RECHECK_MS;
                }
                return;
            }
            if (accept_error_is_per_connection(err)) {
                /* That connection is gone and the next one may be fine: a
                 * pause here would let anyone who resets connections stall
                 * every newcomer.  The failure still counts against the cap. */
                note_accept_reset(r, err);
                accept_took(r, li, recheck, &took);
                continue;
            }
            /* Out of descriptors (Wine reports 10022) or similar: FD_ACCEPT
             * stays signalled, so back off instead of spinning. */
            int64_t now = now_ms();
            r->accept_failures++;
            if (r->accept_warned_at == 0 || now - r->accept_warned_at >= WARN_REPEAT_MS) {
                log_warn("accept failed (error %d); pausing accepts for %d ms (%u failure(s) since the last warning)",
                         err, ACCEPT_BACKOFF_MS, (unsigned)r->accept_failures);
                r->accept_warned_at = now;
                r->accept_failures = 0;
            }
            r->accept_resume_at = now + ACCEPT_BACKOFF_MS;
            return;
        }
        accept_took(r, li, recheck, &took);
        char ip[64];
        peer_ip_string(&ss, ip, sizeof ip);
        const char *refusal = hub_admit(r->hub, ip, r->free_count > 0);
        if (refusal) {
            log_info("refused connection from %s: %s", ip, refusal);
            refuse_connection(c, refusal, r->listener_irc[li]);
            continue;
        }
        session *s = &r->sessions[r->free_slots[r->free_count - 1]];
        if (session_setup_socket(s, c) != 0) {
            if (closesocket(c) != 0)
                log_warn("closesocket failed (error %d)", WSAGetLastError());
            continue;
        }
        r->free_count--;
        s->state = S_OPEN;
        s->close_reason = NULL;
        log_debug("session %u: connected from %s", (unsigned)s->slot, ip);
        hub_session_open(r->hub, s->slot, ip, r->listener_irc[li] ? HUB_LISTEN_IRC : HUB_LISTEN_DETECT, now_ms());
        session_post_recv(r, s);
    }
}

/* ---- listening ---------------------------------------------------------- */

static int listen_on(relay *r, int family, const struct sockaddr *addr, int addrlen, const char *shown, int irc)
{
    if (r->listener_count == MAX_LISTENERS) {
        log_error("too many listening addresses (at most %d)", MAX_LISTENERS);
        return -1;
    }
    SOCKET ls = WSASocketW(family, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
    if (ls == INVALID_SOCKET) {
        log_error("listen %s: WSASocket failed (error %d)", shown, WSAGetLastError());
        return -1;
    }
    BOOL on = TRUE;
    /* One relay per port: refuse to share it with another process. */
    if (setsockopt(ls, SOL_SOCKET, SO_EXCLUSIVEADDRUSE, (const char *)&on, sizeof on) != 0)
        log_warn("listen %s: setsockopt(SO_EXCLUSIVEADDRUSE) failed (error %d)", shown, WSAGetLastError());
    if (family == AF_INET6) {
        DWORD v6only = 1;   /* IPv4 has its own listener */
        if (setsockopt(ls, IPPROTO_IPV6, IPV6_V6ONLY, (const char *)&v6only, sizeof v6only) != 0)
            log_warn("listen %s: setsockopt(IPV6_V6ONLY) failed (error %d)", shown, WSAGetLastError());
    }
    if (bind(ls, addr, addrlen) != 0) {
        int err = WSAGetLastError();
        log_error("listen %s: bind failed (error %d%s)", shown, err,
                  err == WSAEADDRINUSE ? ": the port is already in use" : "");
        closesocket(ls);
        return -1;
    }
    if (listen(ls, SOMAXCONN) != 0) {
        log_error("listen %s: listen failed (error %d)", shown, WSAGetLastError());
        closesocket(ls);
        return -1;
    }
    WSAEVENT ev = WSACreateEvent();
    if (ev == WSA_INVALID_EVENT) {
        log_error("listen %s: WSACreateEvent failed (error %d)", shown, WSAGetLastError());
        closesocket(ls);
        return -1;
    }
    if (WSAEventSelect(ls, ev, FD_ACCEPT) != 0) {
        log_error("listen %s: WSAEventSelect failed (error %d)", shown, WSAGetLastError());
        WSACloseEvent(ev);
        closesocket(ls);
        return -1;
    }
    r->listeners[r->listener_count] = ls;
    r->listen_events[r->listener_count] = ev;
    r->listener_irc[r->listener_count] = (uint8_t)irc;
    r->listener_count++;
    log_info("listening on %s%s", shown, irc ? " (IRC)" : "");
    return 0;
}

static int open_listeners(relay *r)
{
    for (int i = 0; i < r->opt.listen_count; i++) {
        const listen_addr *la = &r->opt.listen[i];
        char shown[96];
        if (la->host[0] == '\0') {
            /* All interfaces: IPv4 is required, IPv6 is added when the host has it. */
            struct sockaddr_in a4;
            memset(&a4, 0, sizeof a4);
            a4.sin_family = AF_INET;
            a4.sin_port = htons(la->port);
            snprintf(shown, sizeof shown, "0.0.0.0:%u", (unsigned)la->port);
            if (listen_on(r, AF_INET, (struct sockaddr *)&a4, sizeof a4, shown, la->irc) != 0)
                return -1;
            struct sockaddr_in6 a6;
            memset(&a6, 0, sizeof a6);
            a6.sin6_family = AF_INET6;
            a6.sin6_port = htons(la->port);
            snprintf(shown, sizeof shown, "[::]:%u", (unsigned)la->port);
            if (listen_on(r, AF_INET6, (struct sockaddr *)&a6, sizeof a6, shown, la->irc) != 0)
                log_warn("IPv6 listener not available; serving IPv4 only");
            continue;
        }
        struct addrinfo hints, *res = NULL;
        char port[8];
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
        snprintf(port, sizeof port, "%u", (unsigned)la->port);
        int rc = getaddrinfo(la->host, port, &hints, &res);
        if (rc != 0 || !res) {
            log_error("listen %s:%s: getaddrinfo failed (error %d)", la->host, port, rc);
            return -1;
        }
        snprintf(shown, sizeof shown, res->ai_family == AF_INET6 ? "[%s]:%s" : "%s:%s", la->host, port);
        rc = listen_on(r, res->ai_family, res->ai_addr, (int)res->ai_addrlen, shown, la->irc);
        freeaddrinfo(res);
        if (rc != 0)
            return -1;
    }
    return 0;
}

static void close_listeners(relay *r)
{
    for (int i = 0; i < r->listener_count; i++) {
        if (closesocket(r->listeners[i]) != 0)
            log_warn("closesocket(listener) failed (error %d)", WSAGetLastError());
        if (!WSACloseEvent(r->listen_events[i]))
            log_warn("WSACloseEvent(listener) failed (error %d)", WSAGetLastError());
    }
    r->listener_count = 0;
}

/* ---- the loop ----------------------------------------------------------- */

/* The shell's side of a turn (core/turn.h owns the order). */
static void shell_completions(void *ctx)
{
    relay *r = ctx;
    process_completions(r);
    if (r->bus)
        bus_completions(r, now_ms());
}

static int64_t shell_now(void *ctx)
{
    (void)ctx;
    return now_ms();
}

static void shell_begin_close(void *ctx, uint32_t slot, const char *reason)
{
    relay *r = ctx;
    session_begin_close(r, &r->sessions[slot], reason, 1);
}

static void shell_reap(void *ctx, int64_t now)
{
    reap_sessions(ctx, now);
}

static void shell_flush(void *ctx, uint32_t slot)
{
    relay *r = ctx;
    session_flush(r, &r->sessions[slot]);
}

/* One turn after the wait returned, in turn.h's order. */
static int run_turn(relay *r)
{
    const turn_shell shell = { r, shell_completions, shell_now, shell_begin_close, shell_reap, shell_flush };
    int64_t now;
    r->n_turns++;
    int wait = turn_run(r->hub, &shell, &now);
    if (r->bus) {
        int bus_wait = bus_turn(r, now);
        if (bus_wait >= 0 && (wait < 0 || bus_wait < wait))
            wait = bus_wait;
    }
    /* Lingering sessions need a timer (none when their last bytes already went
     * out: reap closes them, and no routine would wake the loop for it);
     * cancelled ones are woken by their routines, but the stuck-routine
     * watchdog wants an occasional look. */
    for (uint32_t i = 0; i < r->closing_count; i++) {
        const session *s = &r->sessions[r->closing[i]];
        int drained = s->state == S_CLOSING && !s->send_pending && !sendq_has_unsent(hub_sendq(r->hub, s->slot));
        int64_t due = drained ? now : s->state == S_CLOSING ? s->linger_until : s->cancelled_at + STUCK_WARN_MS + 1;
        int until = due <= now ? 0 : (int)(due - now);
        if (wait < 0 || until < wait)
            wait = until;
    }
    if (r->accept_more)
        wait = 0;
    return wait;
}

static void alertable_wait(relay *r, DWORD timeout, int accepting, int *stop, int *accept_ready, int *timed_out)
{
    HANDLE handles[2 + MAX_LISTENERS];
    DWORD n = 0;
    handles[n++] = r->stop_event;
    if (accepting)
        for (int i = 0; i < r->listener_count; i++)
            handles[n++] = r->listen_events[i];
    DWORD bus_index = n;
    int bus_waits = r->bus && r->bus->state == BUS_CONNECTING;
    if (bus_waits)
        handles[n++] = r->bus->connect_event;
    DWORD rc = WaitForMultipleObjectsEx(n, handles, FALSE, timeout, TRUE);
    *stop = 0;
    *accept_ready = -1;
    *timed_out = rc == WAIT_TIMEOUT;
    if (rc == WAIT_IO_COMPLETION || rc == WAIT_TIMEOUT)
        return;   /* the wait itself ran every queued routine */
    if (rc == WAIT_FAILED) {
        log_error("WaitForMultipleObjectsEx failed (error %lu)", (unsigned long)GetLastError());
        if (++r->wait_failures >= WAIT_FAILURES_MAX) {
            log_error("the I/O loop cannot wait any more; stopping the relay");
            r->exit_status = 1;
            *stop = 1;
            return;
        }
        SleepEx(10, TRUE);
        return;
    }
    r->wait_failures = 0;
    DWORD idx = rc - WAIT_OBJECT_0;
    if (idx == 0)
        *stop = 1;
    else if (bus_waits && idx == bus_index)
        bus_on_connect_event(r, now_ms());
    else if (idx < n)
        *accept_ready = (int)idx - 1;
    /* An object won the wait: queued completion routines have not run yet. */
    SleepEx(0, TRUE);
}

static void stop_sequence(relay *r)
{
    int64_t start = now_ms();
    log_info("stopping: %u session(s) open", (unsigned)(r->opt.max_sessions - r->free_count));
    r->stopping = 1;
    close_listeners(r);
    hub_stopping(r->hub, start);
    flush_and_close(r);
    /* Give queued sends a short bounded time to drain. */
    for (;;) {
        int busy = 0;
        for (uint32_t i = 0; i < r->opt.max_sessions && !busy; i++) {
            session *s = &r->sessions[i];
            busy = s->state != S_FREE && (s->send_pending || sendq_has_unsent(hub_sendq(r->hub, i)));
        }
        if (!busy || now_ms() - start >= STOP_DRAIN_MS)
            break;
        SleepEx(10, TRUE);
        run_turn(r);
    }
    for (uint32_t i = 0; i < r->opt.max_sessions; i++) {
        session *s = &r->sessions[i];
        if (s->state == S_OPEN)
            session_begin_close(r, s, "server stopping", 0);
        if (s->state == S_CLOSING)
            session_cancel(s);
    }
    /* Wait for every routine: only then may the memory go. */
    int64_t deadline = now_ms() + STOP_REAP_MS;
    while (r->closing_count > 0 && now_ms() < deadline) {
        SleepEx(10, TRUE);
        process_completions(r);
        reap_sessions(r, now_ms());
    }
    if (r->closing_count > 0) {
        /* Their OVERLAPPEDs and the buffers being sent still belong to the
         * kernel: keep that memory (the process is ending) rather than free it. */
        log_error("stopping: %u session(s) still had I/O outstanding after %d ms; their memory is kept",
                  (unsigned)r->closing_count, STOP_REAP_MS);
        r->io_outstanding = 1;
        r->exit_status = 1;
    }
    if (r->bus) {
        /* The leave records go through the stream like any line: give them
         * a bounded time to come back and be stored. */
        int64_t bus_deadline = now_ms() + STOP_BUS_MS;
        run_turn(r);
        while (hub_held(r->hub) > 0 && r->bus->state == BUS_OPEN && now_ms() < bus_deadline) {
            SleepEx(10, TRUE);
            run_turn(r);
        }
        if (r->bus->state == BUS_OPEN || r->bus->state == BUS_CONNECTING)
            bus_close(r, "stopping");
        int64_t reap_deadline = now_ms() + STOP_REAP_MS;
        while (r->bus->state == BUS_CLOSING && now_ms() < reap_deadline) {
            SleepEx(10, TRUE);
            bus_completions(r, now_ms());
        }
        if (r->bus->state == BUS_CLOSING) {
            log_error("stopping: the cluster connection still had I/O outstanding; its memory is kept");
            r->io_outstanding = 1;
            r->exit_status = 1;
        }
    }
    hub_final_commit(r->hub, now_ms());   /* the leave records, and anything still held */
    hub_stats st;
    hub_get_stats(r->hub, &st);
    if (r->accept_resets_total > 0)
        log_info("%llu connection(s) reset before they could be accepted since the start",
                 (unsigned long long)r->accept_resets_total);
    log_info("stopped in %lld ms (lines in %llu, stored %llu, deliveries %llu, commits %llu, "
             "wsasend %llu, wsarecv %llu, turns %llu, bytes sent %llu, commits retried %llu, lines refused %llu, "
             "wsasend overlapped %llu)",
             (long long)(now_ms() - start), (unsigned long long)st.lines_in,
             (unsigned long long)st.lines_stored, (unsigned long long)st.deliveries,
             (unsigned long long)st.commits, (unsigned long long)r->n_wsasend,
             (unsigned long long)r->n_wsarecv, (unsigned long long)r->n_turns,
             (unsigned long long)r->bytes_sent, (unsigned long long)st.commit_busy,
             (unsigned long long)st.refused_lines, (unsigned long long)r->n_wsasend_overlapped);
}

static DWORD WINAPI io_thread(LPVOID arg)
{
    relay *r = arg;
    int wait = run_turn(r);   /* starts the hub's timers (retention) before any client */
    for (;;) {
        int64_t now = now_ms();
        int accepting = now >= r->accept_resume_at;
        DWORD timeout = wait < 0 ? INFINITE : (DWORD)wait;
        if (!accepting) {
            DWORD until = (DWORD)(r->accept_resume_at - now);
            if (timeout == INFINITE || until < timeout)
                timeout = until;
        } else if (r->accept_suspect) {
            DWORD until = r->accept_recheck_at <= now ? 0 : (DWORD)(r->accept_recheck_at - now);
            if (timeout == INFINITE || until < timeout)
                timeout = until;
        }
        int stop, ready, timed_out;
        alertable_wait(r, timeout, accepting, &stop, &ready, &timed_out);
        if (stop)
            break;
        if (timed_out && r->closing_count == 0 && !r->accept_more)
            hub_idle(r->hub);   /* a quiet moment: database upkeep */
        int recheck = accepting && r->accept_suspect && now_ms() >= r->accept_recheck_at;
        wait = run_turn(r);
        if (accepting && (ready >= 0 || r->accept_more || recheck)) {
            for (int i = 0; i < r->listener_count; i++) {
                int again = recheck && (r->accept_suspect & (1 << i));
                if (i == ready || (r->accept_more & (1 << i)) || again)
                    accept_all(r, i, again && i != ready);
            }
            wait = run_turn(r);   /* greetings and replays go out now */
        }
    }
    stop_sequence(r);
    return (DWORD)r->exit_status;
}

/* ---- start / stop ------------------------------------------------------- */

static void relay_free(relay *r)
{
    if (!r)
        return;
    if (r->io_outstanding) {
        /* Deliberately leaked: see stop_sequence.  Only the listeners go. */
        close_listeners(r);
        return;
    }
    close_listeners(r);
    if (r->hub)
        hub_destroy(r->hub);
    cluster_destroy(r->cluster);
    if (r->bus) {
        if (r->bus->connect_event && r->bus->connect_event != WSA_INVALID_EVENT && !WSACloseEvent(r->bus->connect_event))
            log_warn("WSACloseEvent(cluster) failed (error %d)", WSAGetLastError());
        free(r->bus);
    }
    if (r->db)
        history_close(r->db);
    if (r->stop_event && !CloseHandle(r->stop_event))
        log_warn("CloseHandle(stop event) failed (error %lu)", (unsigned long)GetLastError());
    free(r->sessions);
    free(r->free_slots);
    free(r->closing);
    free(r);
    msgbuf_pool_drain();
    if (WSACleanup() != 0)
        log_warn("WSACleanup failed (error %d)", WSAGetLastError());
}

static int open_history(relay *r)
{
    if (r->opt.no_history)
        return 0;
    if (r->opt.db_path[0] == '\0') {
        log_error("history: no database path given (--db PATH or --no-history)");
        return -1;
    }
    history_options ho;
    memset(&ho, 0, sizeof ho);
    ho.busy_timeout_ms = 0;
    ho.retain_days = r->opt.retain_days;
    ho.retain_messages = r->opt.retain_messages;
    char err[512];
    int rc = history_open(&r->db, r->opt.db_path, &ho, err, sizeof err);
    if (rc != HISTORY_OK) {
        log_error("history: %s", err);
        r->db = NULL;
        return -1;
    }
    log_info("history: %s", r->opt.db_path);
    return 0;
}

/* ---- the cluster at start ------------------------------------------------ */

static int bind_history(void *ctx, const char *stream, const char *created, char *err, size_t errlen)
{
    int rc = history_cluster_bind(ctx, stream, created, err, errlen);
    if (rc == HISTORY_BUSY)
        snprintf(err, errlen, "the history database is locked by another connection");
    return rc == HISTORY_OK ? 0 : -1;
}

/* A file of KEY=VALUE lines holding secrets ('#' starts a comment line):
 * --cluster-credentials (user=, password= or token=) and --password-file
 * (password=).  A file, so that no secret is on a command line (which any
 * local user can read) or in the log: values are never logged.  Each key's
 * value goes to the dest of the same index (cap bytes each); `form` says
 * what a line should look like, for the error about one that does not. */
static int read_secrets(const char *option, const char *form, const char *path, const char *const *keys,
                        char *const *dests, int nkeys, size_t cap)
{
    wchar_t wpath[OPTIONS_PATH_MAX];
    if (MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, path, -1, wpath, OPTIONS_PATH_MAX) == 0) {
        log_error("%s: the path is not valid UTF-8 (error %lu)", option, (unsigned long)GetLastError());
        return -1;
    }
    FILE *f = _wfopen(wpath, L"rb");
    if (!f) {
        log_error("%s: cannot open %s (errno %d)", option, path, errno);
        return -1;
    }
    /* unbuffered: no copy of the secret is left in the C library's buffer */
    if (setvbuf(f, NULL, _IONBF, 0) != 0)
        log_warn("%s: setvbuf failed (errno %d)", option, errno);
    char line[512];
    int lineno = 0, ok = 1;
    while (ok && fgets(line, sizeof line, f)) {
        lineno++;
        size_t n = strlen(line);
        if (lineno == 1 && n >= 3 && memcmp(line, "\xEF\xBB\xBF", 3) == 0) {
            memmove(line, line + 3, n - 2);   /* Notepad's UTF-8 byte order mark */
            n -= 3;
        }
        if (n == sizeof line - 1 && line[n - 1] != '\n') {
            log_error("%s: %s line %d: longer than %d bytes", option, path, lineno, (int)sizeof line - 2);
            ok = 0;
            break;
        }
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' '))
            line[--n] = '\0';
        if (n == 0 || line[0] == '#')
            continue;
        char *eq = strchr(line, '=');
        char *dest = NULL;
        if (eq) {
            *eq = '\0';
            for (int k = 0; k < nkeys && !dest; k++)
                if (strcmp(line, keys[k]) == 0)
                    dest = dests[k];
        }
        if (!dest || strlen(eq + 1) == 0 || strlen(eq + 1) >= cap) {
            log_error("%s: %s line %d: expected %s", option, path, lineno, form);
            ok = 0;
            break;
        }
        memcpy(dest, eq + 1, strlen(eq + 1) + 1);
    }
    if (ferror(f)) {
        log_error("%s: cannot read %s (errno %d)", option, path, errno);
        ok = 0;
    }
    if (fclose(f) != 0)
        log_warn("%s: closing %s failed (errno %d)", option, path, errno);
    SecureZeroMemory(line, sizeof line);   /* it held a secret (a plain memset may be dropped) */
    if (!ok)
        for (int k = 0; k < nkeys; k++)
            SecureZeroMemory(dests[k], cap);
    return ok ? 0 : -1;
}

/* --cluster-credentials: "user=NAME" and "password=SECRET" lines, or
 * "token=SECRET". */
static int read_credentials(const char *path, char *user, char *pass, char *token, size_t cap)
{
    static const char *const keys[] = { "user", "password", "token" };
    char *const dests[] = { user, pass, token };
    if (read_secrets("cluster: --cluster-credentials", "user=NAME, password=SECRET or token=SECRET", path, keys,
                     dests, 3, cap) != 0)
        return -1;
    if ((user[0] != 0) != (pass[0] != 0) || (token[0] && user[0])) {
        log_error("cluster: %s: give user= and password= together, or token= alone", path);
        return -1;
    }
    return 0;
}

/* --password-file: one "password=SECRET" line; the hub's copy is the only
 * one kept (the caller wipes its buffer). */
static int read_server_password(const char *path, char *pass, size_t cap)
{
    static const char *const keys[] = { "password" };
    char *const dests[] = { pass };
    if (read_secrets("--password-file", "password=SECRET", path, keys, dests, 1, cap) != 0)
        return -1;
    if (pass[0] == 0) {
        log_error("--password-file: %s has no password= line", path);
        return -1;
    }
    return 0;
}

/* The computer name as a node name: the characters a node name allows. */
static void default_node(char *out, size_t cap)
{
    char name[MAX_COMPUTERNAME_LENGTH + 1];
    DWORD n = sizeof name;
    size_t k = 0;
    if (!GetComputerNameA(name, &n)) {
        log_warn("cluster: GetComputerName failed (error %lu); the node is called 'node'",
                 (unsigned long)GetLastError());
        n = 0;
    }
    for (DWORD i = 0; i < n && k + 1 < cap && k < OPTIONS_NODE_MAX; i++) {
        char c = name[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-')
            out[k++] = c;
    }
    if (k == 0)
        memcpy(out, "node", 5);
    else
        out[k] = '\0';
}

static int open_cluster(relay *r)
{
    if (r->opt.cluster_count == 0)
        return 0;
    if (!r->db) {
        log_error("cluster: --cluster needs the history (every node keeps all of it): drop --no-history");
        return -1;
    }
    if (r->opt.node[0])
        memcpy(r->node, r->opt.node, sizeof r->node);
    else
        default_node(r->node, sizeof r->node);
    char user[256] = "", pass[256] = "", token[256] = "";
    if (r->opt.cluster_credentials[0] &&
        read_credentials(r->opt.cluster_credentials, user, pass, token, sizeof user) != 0)
        return -1;
    /* Resolved once, here: getaddrinfo may block on DNS, which the I/O
     * thread must never do. */
    for (int i = 0; i < r->opt.cluster_count; i++) {
        char port[8];
        struct addrinfo hints, *res = NULL;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_protocol = IPPROTO_TCP;
        snprintf(port, sizeof port, "%u", (unsigned)r->opt.cluster[i].port);
        int rc = getaddrinfo(r->opt.cluster[i].host, port, &hints, &res);
        if (rc != 0) {
            log_error("cluster: cannot resolve %s (getaddrinfo error %d)", r->opt.cluster[i].host, rc);
            return -1;
        }
        int taken = 0;
        for (struct addrinfo *a = res; a && taken < 2; a = a->ai_next) {
            if ((a->ai_family != AF_INET && a->ai_family != AF_INET6) || a->ai_addrlen > sizeof r->bus_addrs[0])
                continue;
            memcpy(&r->bus_addrs[r->bus_addr_count], a->ai_addr, a->ai_addrlen);
            r->bus_url_of[r->bus_addr_count++] = i;
            taken++;
        }
        freeaddrinfo(res);
        if (taken == 0) {
            log_error("cluster: %s has no IPv4 or IPv6 address", r->opt.cluster[i].host);
            return -1;
        }
    }
    int bound = 0;
    char stream[64] = "", created[64] = "";
    uint64_t applied = 0;
    if (history_cluster_state(r->db, &bound, stream, sizeof stream, created, sizeof created, &applied) != HISTORY_OK) {
        log_error("cluster: cannot read the history's cluster state: %s", history_errmsg(r->db));
        return -1;
    }
    if (bound && strcmp(stream, CLUSTER_STREAM) != 0) {
        log_error("cluster: the history database belongs to stream %s, not " CLUSTER_STREAM, stream);
        return -1;
    }
    cluster_config cc;
    memset(&cc, 0, sizeof cc);
    cc.node = r->node;
    cc.user = user[0] ? user : NULL;
    cc.pass = pass[0] ? pass : NULL;
    cc.token = token[0] ? token : NULL;
    cc.applied_seq = applied;
    cc.epoch = r->epoch = clock_wall_ms();
    cc.bind = bind_history;
    cc.ctx = r->db;
    r->cluster = cluster_create(&cc);
    SecureZeroMemory(user, sizeof user);   /* the session keeps its own copy; a plain memset may be dropped */
    SecureZeroMemory(pass, sizeof pass);
    SecureZeroMemory(token, sizeof token);
    r->bus = calloc(1, sizeof *r->bus);
    if (!r->cluster || !r->bus) {
        log_error("cluster: out of memory");
        return -1;
    }
    r->bus->owner = r;
    r->bus->sock = INVALID_SOCKET;
    r->bus->connect_event = WSACreateEvent();
    if (r->bus->connect_event == WSA_INVALID_EVENT) {
        log_error("cluster: WSACreateEvent failed (error %d)", WSAGetLastError());
        return -1;
    }
    log_info("cluster: node %s, %d server(s), history applied up to stream sequence %llu%s", r->node,
             r->opt.cluster_count, (unsigned long long)applied, bound ? "" : " (not yet bound to the stream)");
    return 0;
}

int relay_start(const relay_options *opt, relay **out, relay_progress_fn progress, void *ctx)
{
    *out = NULL;
    WSADATA wsa;
    int rc = WSAStartup(MAKEWORD(2, 2), &wsa);
    if (rc != 0) {
        log_error("WSAStartup failed (error %d)", rc);
        return RELAY_ERR_WINSOCK;
    }
    relay *r = calloc(1, sizeof *r);
    if (!r) {
        WSACleanup();
        return RELAY_ERR_MEMORY;
    }
    r->opt = *opt;
    uint32_t max = opt->max_sessions;
    r->sessions = calloc(max, sizeof *r->sessions);
    r->free_slots = malloc(sizeof(uint32_t) * max);
    r->closing = malloc(sizeof(uint32_t) * max);
    if (!r->sessions || !r->free_slots || !r->closing) {
        log_error("out of memory for %u sessions", (unsigned)max);
        relay_free(r);
        return RELAY_ERR_MEMORY;
    }
    for (uint32_t i = 0; i < max; i++) {
        r->sessions[i].slot = i;
        r->sessions[i].owner = r;
        r->sessions[i].sock = INVALID_SOCKET;
        r->free_slots[i] = max - 1 - i;   /* slot 0 is handed out first */
    }
    r->free_count = max;
    if (progress)
        progress(ctx);

    if (open_history(r) != 0) {
        relay_free(r);
        return RELAY_ERR_DATABASE;
    }
    if (open_cluster(r) != 0) {
        relay_free(r);
        return RELAY_ERR_OPTIONS;
    }
    if (progress)
        progress(ctx);

    char password[256] = "";
    if (r->opt.password_file[0] && read_server_password(r->opt.password_file, password, sizeof password) != 0) {
        SecureZeroMemory(password, sizeof password);
        relay_free(r);
        return RELAY_ERR_OPTIONS;
    }
    hub_config hc;
    hub_config_from_options(&hc, &r->opt, r->db);
    hc.cluster = r->cluster;
    hc.node = r->node;
    hc.epoch = r->epoch;
    hc.chat.password = password[0] ? password : NULL;   /* chat keeps its own copy */
    r->hub = hub_create(&hc);
    SecureZeroMemory(password, sizeof password);
    if (!r->hub) {
        log_error("out of memory creating the hub for %u sessions", (unsigned)max);
        relay_free(r);
        return RELAY_ERR_MEMORY;
    }

    if (open_listeners(r) != 0) {
        relay_free(r);
        return RELAY_ERR_LISTEN;
    }
    if (progress)
        progress(ctx);

    r->stop_event = CreateEventW(NULL, TRUE, FALSE, NULL);
    if (!r->stop_event) {
        log_error("CreateEvent failed (error %lu)", (unsigned long)GetLastError());
        relay_free(r);
        return RELAY_ERR_THREAD;
    }
    r->thread = CreateThread(NULL, 0, io_thread, r, 0, NULL);
    if (!r->thread) {
        log_error("CreateThread failed (error %lu)", (unsigned long)GetLastError());
        relay_free(r);
        return RELAY_ERR_THREAD;
    }
    log_info("relay running: max %u sessions, history %s%s", (unsigned)max, r->db ? "on" : "off",
             r->opt.password_file[0] ? ", a password is required" : "");
    *out = r;
    return RELAY_OK;
}

void relay_request_stop(relay *r)
{
    if (!SetEvent(r->stop_event))
        log_error("SetEvent(stop) failed (error %lu)", (unsigned long)GetLastError());
}

int relay_wait(relay *r, relay_progress_fn progress, void *ctx)
{
    for (;;) {
        DWORD rc = WaitForSingleObject(r->thread, 200);
        if (rc == WAIT_OBJECT_0)
            break;
        if (rc == WAIT_FAILED) {
            /* The thread may still run: freeing now would pull memory from under it. */
            log_error("WaitForSingleObject(io thread) failed (error %lu); relay memory kept",
                      (unsigned long)GetLastError());
            return 1;
        }
        if (progress)
            progress(ctx);
    }
    DWORD code = 0;
    if (!GetExitCodeThread(r->thread, &code))
        log_warn("GetExitCodeThread failed (error %lu)", (unsigned long)GetLastError());
    if (!CloseHandle(r->thread))
        log_warn("CloseHandle(io thread) failed (error %lu)", (unsigned long)GetLastError());
    relay_free(r);
    return (int)code;
}

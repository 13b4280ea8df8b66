/* loadgen: a native Linux load generator for chatrelay (docs/BENCHMARKS.md).
 *
 * Connects N clients to a relay (all in the lobby), waits for each greeting,
 * then has the first S clients send M chat lines each, as fast as possible
 * with at most W lines per sender not yet received by every other client, or at a
 * fixed rate.  Every line carries the run's tag, the sender, a sequence
 * number and its CLOCK_MONOTONIC send time:
 *
 *     sent:       "<tag> <sender> <seq> <t_ns> xxxx..."            (--size bytes + CRLF)
 *     delivered:  "<guest17> <tag> <sender> <seq> <t_ns> xxxx..."
 *
 * A delivery is a received line starting with '<' whose tag is ours; notices
 * ("*** ...", history replays included) are not deliveries.  The relay never
 * echoes a line to its sender, so each line sent is expected at the N-1 other
 * clients.  Every receiver checks the per-sender sequence (duplicates, gaps).
 *
 * IRC mode (--irc, or --irc-clients K for K of the N clients, spread evenly so
 * that senders and receivers of both kinds mix): such a client registers with
 * NICK lg<i> / USER, sends JOIN --channel (#lobby) after 001, and counts as up
 * at the 366 that ends the NAMES of its JOIN.  It sends
 *
 *     "PRIVMSG #lobby :<tag> <sender> <seq> <t_ns> xxxx..."
 *
 * and a received ":nick!user@host PRIVMSG #lobby :<tag> ..." is a delivery,
 * counted by the same code as a line client's "<nick> <tag> ...": so a room of
 * both kinds is measured with one count, one window and one loss check.  A
 * server's PING is answered with PONG.  An IRC error numeric (4xx/5xx) fails
 * the run; before the client is up it counts as refused.  Without
 * echo-message an IRC server does not echo either, so N-1 holds for both.
 *
 * Flow control without echo: a sender cannot see its own lines, so its window
 * is counted at the receivers: a line stays "in flight" until EVERY other
 * client received it.  So no client ever has more than senders x window lines
 * queued at the relay, and a slow-consumer disconnect in a run is the relay's
 * doing, never the load generator's.  (Counting at one observer client is not
 * enough: when every client sends, the observer misses its own lines, so the
 * others can be handed more per turn than the observer and fall behind it.
 * `--pace observer` does exactly that, to reproduce what it shows: the relay
 * drains at most MAX_SEND_SPANS lines per session per loop turn.)
 *
 * With --recv-port the clients that do not send connect to another port: in
 * a cluster, another node, so the latency measured (one process's monotonic
 * clock at both ends) is from a sender on one node to receivers on another.
 *
 * With --senders 0 it only holds sessions: RSS of the relay (and wineserver)
 * before connecting and after every client is greeted and the line is quiet;
 * with --hold it then prints "ready", and waits until the server closes every
 * connection (the `sc stop` case), reporting when the first and last closed.
 *
 * The run is bounded: it ends when every expected delivery arrived, when no
 * delivery arrived for --drain seconds, or after --timeout seconds; whatever is
 * missing then is reported as lost.  One summary line of key=value pairs goes
 * to stdout; the exit status is 0 only if nothing was lost, duplicated,
 * reordered, refused or closed.
 *
 * Linux only (epoll, /proc); not part of the relay.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define READ_BUF_SIZE (256 * 1024)
#define CARRY_MAX 4096          /* longest line kept across reads (the relay's are <= ~1.2 KiB) */
#define SEND_BATCH_MAX 256      /* lines formatted into one write() per sender */
#define MAX_EVENTS 1024
#define REPLY_ROOM 4096         /* registration, JOIN and PONGs queued behind a sender's lines */
#define QUIET_NS (500 * 1000000LL)  /* idle mode: the line is quiet after this long without bytes */
#define SETTLE_MAX_NS (120 * 1000000000LL)

/* ---- options ------------------------------------------------------------ */

typedef struct options {
    const char *host;
    int port;
    uint32_t clients, senders;
    uint64_t lines;
    uint32_t window;
    double rate;                /* lines/s per sender, 0 = as fast as the window allows */
    uint32_t size;              /* bytes per sent line, CRLF not counted */
    uint32_t batch;             /* connections being set up at once */
    double send_secs;           /* stop sending after this long (0 = send all M) */
    double timeout_secs;
    double drain_secs;
    double hold_secs;           /* idle mode: wait this long for the server to close us */
    int relay_pid, server_pid;
    int extra_pids[16];         /* other processes whose CPU the send phase counts (NATS servers) */
    int extra_count;
    int pace_observer;          /* window counted at one observer client (diagnostic) */
    uint32_t irc_clients;       /* of the clients, this many speak IRC */
    int irc_port;               /* where IRC clients connect (0 = --port) */
    int recv_port;              /* where the clients that do not send connect (0 = as the others) */
    const char *channel;        /* the channel IRC clients join */
    int verbose;
} options;

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen --port P [options]\n"
            "  --host ADDR       relay address (127.0.0.1)\n"
            "  --clients N       connections (10)\n"
            "  --senders S       of them, the first S send (N); 0 = only hold sessions\n"
            "  --lines M         lines per sender (1000)\n"
            "  --window W        lines per sender not yet received by every other client (64)\n"
            "  --rate R          lines/s per sender (0 = as fast as the window allows)\n"
            "  --size B          bytes per line without CRLF (64)\n"
            "  --batch K         connections set up at once (200)\n"
            "  --send-secs D     stop sending after D s even if M lines were not sent (0 = off)\n"
            "  --drain SECS      give up when no delivery arrived (or, connecting, no client\n"
            "                    came up) for this long (10)\n"
            "  --timeout SECS    bound on the whole run (300)\n"
            "  --hold SECS       senders 0: print \"ready\", wait up to SECS for the server to close us\n"
            "  --relay-pid PID   the relay process: CPU and RSS from /proc\n"
            "  --server-pid PID  its wineserver: CPU and RSS from /proc\n"
            "  --extra-pid PID   another process (repeatable, up to 16: a cluster's NATS servers);\n"
            "                    their CPU over the send phase is reported as cpu_extra_s\n"
            "  --pace observer   count the window at one observer client instead of at every\n"
            "                    receiver (diagnostic: lets other clients fall behind)\n"
            "  --irc             every client speaks IRC (NICK/USER, JOIN, PRIVMSG, PONG)\n"
            "  --irc-clients K   K of the clients speak IRC, spread evenly among them (0)\n"
            "  --irc-port P      IRC clients connect to port P (default: --port)\n"
            "  --recv-port P     the clients that do not send connect to port P instead (another\n"
            "                    relay of a cluster: latency from one node to another)\n"
            "  --channel NAME    the channel IRC clients join (#lobby, the line clients' room)\n"
            "  --verbose         progress on stderr\n");
}

static int parse_num(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end != '\0' || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int parse_options(int argc, char **argv, options *o)
{
    memset(o, 0, sizeof *o);
    o->host = "127.0.0.1";
    o->clients = 10;
    o->senders = UINT32_MAX;    /* = clients */
    o->lines = 1000;
    o->window = 64;
    o->size = 64;
    o->batch = 200;
    o->timeout_secs = 300;
    o->drain_secs = 10;
    o->relay_pid = -1;
    o->server_pid = -1;
    o->channel = "#lobby";
    int all_irc = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--verbose") == 0) {
            o->verbose = 1;
            continue;
        }
        if (strcmp(a, "--irc") == 0) {
            all_irc = 1;
            continue;
        }
        if (strcmp(a, "--help") == 0) {
            usage();
            exit(0);
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "loadgen: %s: missing value\n", a);
            return -1;
        }
        const char *v = argv[++i];
        double d;
        int bad = 0;
        if (strcmp(a, "--host") == 0)
            o->host = v;
        else if (strcmp(a, "--port") == 0)
            bad = parse_num(v, 1, 65535, &d) || ((o->port = (int)d), 0);
        else if (strcmp(a, "--clients") == 0)
            bad = parse_num(v, 1, 100000, &d) || ((o->clients = (uint32_t)d), 0);
        else if (strcmp(a, "--senders") == 0)
            bad = parse_num(v, 0, 100000, &d) || ((o->senders = (uint32_t)d), 0);
        else if (strcmp(a, "--lines") == 0)
            bad = parse_num(v, 1, 1e12, &d) || ((o->lines = (uint64_t)d), 0);
        else if (strcmp(a, "--window") == 0)
            bad = parse_num(v, 1, 1e6, &d) || ((o->window = (uint32_t)d), 0);
        else if (strcmp(a, "--rate") == 0)
            bad = parse_num(v, 0, 1e7, &o->rate);
        else if (strcmp(a, "--size") == 0)
            bad = parse_num(v, 1, 1000, &d) || ((o->size = (uint32_t)d), 0);
        else if (strcmp(a, "--batch") == 0)
            bad = parse_num(v, 1, 100000, &d) || ((o->batch = (uint32_t)d), 0);
        else if (strcmp(a, "--send-secs") == 0)
            bad = parse_num(v, 0, 1e6, &o->send_secs);
        else if (strcmp(a, "--drain") == 0)
            bad = parse_num(v, 0.1, 1e6, &o->drain_secs);
        else if (strcmp(a, "--timeout") == 0)
            bad = parse_num(v, 1, 1e6, &o->timeout_secs);
        else if (strcmp(a, "--hold") == 0)
            bad = parse_num(v, 0, 1e6, &o->hold_secs);
        else if (strcmp(a, "--relay-pid") == 0)
            bad = parse_num(v, 1, 1e9, &d) || ((o->relay_pid = (int)d), 0);
        else if (strcmp(a, "--server-pid") == 0)
            bad = parse_num(v, 1, 1e9, &d) || ((o->server_pid = (int)d), 0);
        else if (strcmp(a, "--extra-pid") == 0)
            bad = o->extra_count == (int)(sizeof o->extra_pids / sizeof o->extra_pids[0]) ||
                  parse_num(v, 1, 1e9, &d) || ((o->extra_pids[o->extra_count++] = (int)d), 0);
        else if (strcmp(a, "--irc-clients") == 0)
            bad = parse_num(v, 0, 100000, &d) || ((o->irc_clients = (uint32_t)d), 0);
        else if (strcmp(a, "--irc-port") == 0)
            bad = parse_num(v, 1, 65535, &d) || ((o->irc_port = (int)d), 0);
        else if (strcmp(a, "--recv-port") == 0)
            bad = parse_num(v, 1, 65535, &d) || ((o->recv_port = (int)d), 0);
        else if (strcmp(a, "--channel") == 0)
            bad = v[0] == '\0' || strlen(v) > 64 || strpbrk(v, " ,\r\n\a") != NULL || ((o->channel = v), 0);
        else if (strcmp(a, "--pace") == 0)
            bad = strcmp(v, "observer") == 0 ? ((o->pace_observer = 1), 0) : strcmp(v, "all") != 0;
        else {
            fprintf(stderr, "loadgen: unknown option %s\n", a);
            return -1;
        }
        if (bad) {
            fprintf(stderr, "loadgen: %s: bad value '%s'\n", a, v);
            return -1;
        }
    }
    if (o->port == 0) {
        fprintf(stderr, "loadgen: --port is required\n");
        return -1;
    }
    if (o->senders == UINT32_MAX)
        o->senders = o->clients;
    if (o->senders > o->clients) {
        fprintf(stderr, "loadgen: --senders %u is more than --clients %u\n", o->senders, o->clients);
        return -1;
    }
    if (o->senders > 0 && o->clients < 2) {
        fprintf(stderr, "loadgen: senders need at least one other client to deliver to\n");
        return -1;
    }
    if (all_irc)
        o->irc_clients = o->clients;
    if (o->irc_clients > o->clients) {
        fprintf(stderr, "loadgen: --irc-clients %u is more than --clients %u\n", o->irc_clients, o->clients);
        return -1;
    }
    /* The text must fit an IRC line (512 bytes with the prefix the server adds) whole:
     * a server would cut the padding, and a shorter line is not what was sent. */
    if (o->irc_clients > 0 && o->size > 400) {
        fprintf(stderr, "loadgen: --size %u is too long for an IRC line (at most 400)\n", o->size);
        return -1;
    }
    if (o->irc_port == 0)
        o->irc_port = o->port;
    return 0;
}

/* ---- time, /proc --------------------------------------------------------- */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* utime + stime of a process (all its threads), in seconds; -1 if unreadable. */
static double proc_cpu_secs(int pid)
{
    if (pid <= 0)
        return -1;
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The command name may hold spaces and parentheses: fields start after the last ')'. */
    char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    unsigned long long utime = 0, stime = 0;
    /* field 3 is the state; utime and stime are fields 14 and 15 */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
        return -1;
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

/* A "Key:   123 kB" field of /proc/PID/status in KiB; -1 if unreadable. */
static long proc_status_kib(int pid, const char *key)
{
    if (pid <= 0)
        return -1;
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long v = -1;
    size_t klen = strlen(key);
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
            v = strtol(line + klen + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return v;
}

/* The --extra-pid processes together; -1 if one is unreadable (or none given). */
static double extra_cpu_secs(const options *o)
{
    double sum = 0;
    for (int i = 0; i < o->extra_count; i++) {
        double v = proc_cpu_secs(o->extra_pids[i]);
        if (v < 0)
            return -1;
        sum += v;
    }
    return o->extra_count ? sum : -1;
}

static double self_cpu_secs(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return -1;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           (double)ru.ru_stime.tv_usec / 1e6;
}

/* ---- latency histogram: log-linear buckets, ~3% wide, in microseconds ---- */

#define HIST_SUB_BITS 6
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_BUCKETS (HIST_SUB + 58u * (HIST_SUB / 2u))

static uint64_t hist[HIST_BUCKETS];
static uint64_t hist_count, hist_max_us;

static unsigned msb64(uint64_t v)
{
    unsigned b = 0;
    while (v >>= 1)
        b++;
    return b;
}

static unsigned hist_bucket(uint64_t us)
{
    if (us < HIST_SUB)
        return (unsigned)us;
    unsigned shift = msb64(us) - (HIST_SUB_BITS - 1);   /* us >> shift is in [32, 64) */
    unsigned i = HIST_SUB + (shift - 1) * (HIST_SUB / 2) + (unsigned)((us >> shift) - HIST_SUB / 2);
    return i < HIST_BUCKETS ? i : HIST_BUCKETS - 1;
}

/* The middle of bucket i. */
static uint64_t hist_value(unsigned i)
{
    if (i < HIST_SUB)
        return i;
    unsigned k = i - HIST_SUB;
    unsigned shift = k / (HIST_SUB / 2) + 1;
    uint64_t low = (uint64_t)(k % (HIST_SUB / 2) + HIST_SUB / 2) << shift;
    return low + ((uint64_t)1 << shift) / 2;
}

static void hist_add(int64_t ns)
{
    uint64_t us = ns > 0 ? (uint64_t)ns / 1000 : 0;
    hist[hist_bucket(us)]++;
    hist_count++;
    if (us > hist_max_us)
        hist_max_us = us;
}

static uint64_t hist_percentile(double p)
{
    if (hist_count == 0)
        return 0;
    uint64_t rank = (uint64_t)(p * (double)hist_count);
    if (rank >= hist_count)
        rank = hist_count - 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += hist[i];
        if (seen > rank) {
            uint64_t v = hist_value(i);
            return v < hist_max_us ? v : hist_max_us;
        }
    }
    return hist_max_us;
}

/* ---- clients ------------------------------------------------------------- */

enum { C_NEW, C_CONNECTING, C_GREETING, C_READY, C_CLOSED };

typedef struct client {
    int fd;
    uint8_t state;
    uint8_t irc;                /* speaks IRC (else the line protocol) */
    uint8_t want_out;           /* EPOLLOUT is registered */
    uint8_t skipping;           /* dropping an over-long line up to its end */
    uint32_t carry_len;
    char *carry;                /* the partial last line of the previous read */
    char *out;                  /* senders and IRC clients: bytes not yet written */
    uint32_t out_len, out_off, out_cap;
} client;

typedef struct sender {
    uint64_t sent;              /* lines written (seq of the last one) */
    uint64_t acked;             /* every line up to this seq reached every other client */
    uint32_t *receipts;         /* [seq % window]: receivers that got that in-flight line */
    int done;
} sender;

static options opt;
static int epfd = -1;
static client *clients;
static sender *senders;
static uint32_t *last_seq;      /* [receiver * senders + sender]: highest seq received */
static char tag[9];
static char *pad;
static int64_t t_start, t_send_start, t_last_delivery, t_send_stop, t_last_progress;
static int sending;             /* the send phase started */
static int64_t last_bytes_ns;   /* the last time any byte arrived */

static struct {
    uint32_t connecting, greeted, connect_failed, refused, closed;
    uint64_t lines_sent, expected, received, dup, gap, foreign, notices, other;
    uint64_t kicked, goodbye, overlong, irc_errors, pongs;
    int64_t first_close_ns, last_close_ns;
} st;

static void die(const char *what)
{
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void set_events(uint32_t idx, int want_out)
{
    client *c = &clients[idx];
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN | (want_out ? EPOLLOUT : 0u);
    ev.data.u32 = idx;
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) != 0)
        die("epoll_ctl(MOD)");
    c->want_out = (uint8_t)want_out;
}

static void client_closed(uint32_t idx, int64_t now)
{
    client *c = &clients[idx];
    if (c->state == C_CLOSED)
        return;
    if (c->state == C_CONNECTING || c->state == C_GREETING)
        st.connecting--;
    if (c->state == C_CONNECTING)
        st.connect_failed++;
    c->state = C_CLOSED;
    close(c->fd);   /* also leaves the epoll set */
    c->fd = -1;
    st.closed++;
    if (st.first_close_ns == 0)
        st.first_close_ns = now;
    st.last_close_ns = now;
}

static void client_connect(uint32_t idx, const struct sockaddr_in *addr)
{
    client *c = &clients[idx];
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket (raise ulimit -n?)");
    int on = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on) != 0)
        die("setsockopt(TCP_NODELAY)");
    c->fd = fd;
    c->state = C_CONNECTING;
    st.connecting++;
    if (connect(fd, (const struct sockaddr *)addr, sizeof *addr) != 0 && errno != EINPROGRESS) {
        fprintf(stderr, "loadgen: connect: %s\n", strerror(errno));
        c->state = C_CLOSED;
        st.connecting--;
        st.connect_failed++;
        st.closed++;
        close(fd);
        c->fd = -1;
        return;
    }
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN | EPOLLOUT;
    ev.data.u32 = idx;
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0)
        die("epoll_ctl(ADD)");
    c->want_out = 1;
}

static int starts_with(const char *p, size_t n, const char *prefix)
{
    size_t k = strlen(prefix);
    return n >= k && memcmp(p, prefix, k) == 0;
}

static int contains(const char *p, size_t n, const char *needle)
{
    return memmem(p, n, needle, strlen(needle)) != NULL;
}

/* Parses a decimal number at *p (bounded by end) and the one space after it. */
static int take_u64(const char **p, const char *end, uint64_t *out)
{
    const char *s = *p;
    uint64_t v = 0;
    if (s >= end || *s < '0' || *s > '9')
        return -1;
    while (s < end && *s >= '0' && *s <= '9')
        v = v * 10 + (uint64_t)(*s++ - '0');
    if (s < end && *s == ' ')
        s++;
    *p = s;
    *out = v;
    return 0;
}

/* One chat line's text as received, "<tag> <sender> <seq> <t_ns> xxx...", in
 * either dialect: the one place deliveries are counted and checked. */
static void count_delivery(uint32_t receiver, const char *q, const char *end, int64_t now)
{
    if (end - q < 9 || memcmp(q, tag, 8) != 0 || q[8] != ' ') {
        st.foreign++;   /* a line from someone else (another run?) */
        return;
    }
    q += 9;
    uint64_t s, seq, t;
    if (take_u64(&q, end, &s) || take_u64(&q, end, &seq) || take_u64(&q, end, &t) || s >= opt.senders) {
        st.foreign++;
        return;
    }
    uint32_t *last = &last_seq[(size_t)receiver * opt.senders + s];
    if (seq <= *last) {
        st.dup++;
        return;
    }
    if (seq != *last + 1)
        st.gap += seq - *last - 1;
    *last = (uint32_t)seq;
    st.received++;
    hist_add(now - (int64_t)t);
    t_last_delivery = now;
    t_last_progress = now;
    /* Open the window once every other client has the oldest line in flight.
     * A receiver never runs more than `window` lines ahead of `acked`, so the
     * ring slot of seq is not shared with another line still in flight. */
    sender *sd = &senders[s];
    if (opt.pace_observer) {
        /* the last client observes everyone but itself; the first observes the last */
        uint32_t observer = (s == opt.clients - 1) ? 0 : opt.clients - 1;
        if (receiver == observer)
            sd->acked = seq;
    } else if (seq > sd->acked && seq <= sd->acked + opt.window) {
        sd->receipts[seq % opt.window]++;
        while (sd->acked < sd->sent && sd->receipts[(sd->acked + 1) % opt.window] == opt.clients - 1) {
            sd->receipts[(sd->acked + 1) % opt.window] = 0;
            sd->acked++;
        }
    }
}

/* A line client's "<nick> text". */
static void on_delivery(uint32_t receiver, const char *p, size_t n, int64_t now)
{
    const char *end = p + n;
    const char *q = memchr(p, '>', n);
    if (!q || q + 2 > end || q[1] != ' ') {
        st.other++;
        return;
    }
    count_delivery(receiver, q + 2, end, now);
}

/* Queues bytes behind whatever the client has not written yet (IRC replies,
 * registration); a sender's next batch waits until they are out. */
static void out_append(uint32_t idx, const char *data, size_t n)
{
    client *c = &clients[idx];
    if (c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    if (c->out_len + n > c->out_cap && c->out_off > 0) {
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
    }
    if (c->out_len + n > c->out_cap) {
        fprintf(stderr, "loadgen: client %u: %u bytes of replies not written (the server stopped reading?)\n", idx,
                c->out_len);
        exit(2);
    }
    memcpy(c->out + c->out_len, data, n);
    c->out_len += (uint32_t)n;
}

static void client_flush(uint32_t idx, int64_t now);

static void client_up(client *c)
{
    c->state = C_READY;
    st.connecting--;
    st.greeted++;
}

/* The notices both dialects share: a slow-consumer cut, the goodbye, a refusal. */
static void check_notice(const char *p, size_t n)
{
    if (contains(p, n, "not reading fast enough") || contains(p, n, "buffer space exhausted"))
        st.kicked++;
    else if (contains(p, n, "server is stopping"))
        st.goodbye++;
    else if (contains(p, n, "server is full") || contains(p, n, "too many connections"))
        st.refused++;
}

/* One IRC line: [@tags] [:source] COMMAND params... */
static void on_irc_line(uint32_t idx, const char *p, size_t n, int64_t now)
{
    client *c = &clients[idx];
    const char *end = p + n, *q = p;
    if (q < end && *q == '@') {
        while (q < end && *q != ' ')
            q++;
        while (q < end && *q == ' ')
            q++;
    }
    if (q < end && *q == ':') {
        while (q < end && *q != ' ')
            q++;
        while (q < end && *q == ' ')
            q++;
    }
    const char *cmd = q;
    while (q < end && *q != ' ')
        q++;
    size_t cmd_len = (size_t)(q - cmd);
    while (q < end && *q == ' ')
        q++;
    const char *params = q;     /* the rest: "target :text", "nick #chan :End of NAMES" */
#define IS_CMD(s) (cmd_len == sizeof(s) - 1 && memcmp(cmd, s, cmd_len) == 0)
    if (IS_CMD("PRIVMSG")) {
        const char *t = memmem(params, (size_t)(end - params), " :", 2);
        if (t)
            count_delivery(idx, t + 2, end, now);
        else
            st.other++;
    } else if (IS_CMD("PING")) {
        char pong[600];
        size_t k = (size_t)(end - params);
        if (k > 500)
            k = 500;
        int h = snprintf(pong, sizeof pong, "PONG %s%.*s\r\n", params[0] == ':' ? "" : ":", (int)k, params);
        out_append(idx, pong, (size_t)h);
        client_flush(idx, now);
        st.pongs++;
    } else if (IS_CMD("001")) {
        char join[96];
        int h = snprintf(join, sizeof join, "JOIN %s\r\n", opt.channel);
        out_append(idx, join, (size_t)h);
        client_flush(idx, now);
        st.other++;
    } else if (IS_CMD("366")) {
        /* "<nick> <channel> :End of NAMES": ours ends the join (channel names compare without case) */
        const char *ch = memchr(params, ' ', (size_t)(end - params));
        size_t cl = strlen(opt.channel);
        if (c->state == C_GREETING && ch && end - ch > (ptrdiff_t)cl && strncasecmp(ch + 1, opt.channel, cl) == 0 &&
            (ch + 1 + cl == end || ch[1 + cl] == ' '))
            client_up(c);
        st.other++;
    } else if (IS_CMD("NOTICE") || IS_CMD("ERROR")) {
        st.notices++;
        check_notice(params, (size_t)(end - params));
    } else if (IS_CMD("422")) {
        st.other++;   /* ERR_NOMOTD ends a registration like 376: a server without a MOTD file */
    } else if (cmd_len == 3 && (cmd[0] == '4' || cmd[0] == '5') && cmd[1] >= '0' && cmd[1] <= '9') {
        st.irc_errors++;
        if (c->state == C_GREETING)
            st.refused++;
        if (st.irc_errors <= 3)
            fprintf(stderr, "loadgen: client %u: %.*s\n", idx, (int)n, p);
    } else {
        st.other++;
    }
#undef IS_CMD
}

static void on_line(uint32_t idx, const char *p, size_t n, int64_t now)
{
    if (n > 0 && p[n - 1] == '\r')
        n--;
    if (clients[idx].irc) {
        on_irc_line(idx, p, n, now);
        return;
    }
    if (n > 0 && p[0] == '<') {
        on_delivery(idx, p, n, now);
        return;
    }
    if (!starts_with(p, n, "*** ")) {
        st.other++;
        return;
    }
    st.notices++;
    client *c = &clients[idx];
    if (c->state == C_GREETING && contains(p, n, "/help")) {
        client_up(c);
    } else if (contains(p, n, "not reading fast enough")) {
        st.kicked++;
    } else if (contains(p, n, "server is stopping")) {
        st.goodbye++;
    } else if (starts_with(p, n, "*** server is full") || starts_with(p, n, "*** too many connections")) {
        st.refused++;
    }
}

static void client_read(uint32_t idx, int64_t now)
{
    static char buf[CARRY_MAX + READ_BUF_SIZE];
    client *c = &clients[idx];
    size_t have = c->carry_len;
    if (have)
        memcpy(buf, c->carry, have);
    ssize_t r = read(c->fd, buf + have, READ_BUF_SIZE);
    if (r < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return;
        client_closed(idx, now);   /* reset: counted as a close */
        return;
    }
    if (r == 0) {
        client_closed(idx, now);
        return;
    }
    last_bytes_ns = now;
    size_t len = have + (size_t)r;
    char *p = buf, *end = buf + len;
    for (;;) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl)
            break;
        if (c->skipping)
            c->skipping = 0;
        else
            on_line(idx, p, (size_t)(nl - p), now);
        p = nl + 1;
    }
    size_t rest = (size_t)(end - p);
    if (rest > CARRY_MAX) {
        st.overlong++;
        c->skipping = 1;
        rest = 0;
    }
    if (rest && !c->carry) {
        c->carry = malloc(CARRY_MAX);
        if (!c->carry)
            die("malloc");
    }
    if (rest)
        memmove(c->carry, p, rest);
    c->carry_len = (uint32_t)rest;
}

static void client_flush(uint32_t idx, int64_t now)
{
    client *c = &clients[idx];
    while (c->out_off < c->out_len) {
        ssize_t w = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                if (!c->want_out)
                    set_events(idx, 1);
                return;
            }
            client_closed(idx, now);
            return;
        }
        c->out_off += (uint32_t)w;
    }
    c->out_off = c->out_len = 0;
    if (c->want_out)
        set_events(idx, 0);
}

static void client_writable(uint32_t idx, int64_t now)
{
    client *c = &clients[idx];
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
            if (opt.verbose)
                fprintf(stderr, "loadgen: client %u: connect failed: %s\n", idx, strerror(err));
            client_closed(idx, now);
            return;
        }
        c->state = C_GREETING;
        set_events(idx, 0);
        if (c->irc) {
            /* IRC clients speak first; registration needs no CAP */
            char reg[128];
            int h = snprintf(reg, sizeof reg, "NICK lg%u\r\nUSER lg%u 0 * :loadgen %u\r\n", idx, idx, idx);
            out_append(idx, reg, (size_t)h);
            client_flush(idx, now);
        }
        return;
    }
    client_flush(idx, now);
}

/* ---- sending ------------------------------------------------------------- */

/* Lines of sender s due by `now` in fixed-rate mode (staggered across senders). */
static uint64_t lines_due(uint32_t s, int64_t now)
{
    if (opt.rate <= 0)
        return opt.lines;
    double interval = 1e9 / opt.rate;
    double t = (double)(now - t_send_start) - interval * (double)s / (double)opt.senders;
    if (t < 0)
        return 0;
    uint64_t due = (uint64_t)(t / interval) + 1;
    return due < opt.lines ? due : opt.lines;
}

static void sender_fill(uint32_t s, int64_t now)
{
    sender *sd = &senders[s];
    client *c = &clients[s];
    if (sd->done || c->state != C_READY || c->out_len > c->out_off)
        return;
    if (sd->sent >= opt.lines || (opt.send_secs > 0 && now - t_send_start >= (int64_t)(opt.send_secs * 1e9))) {
        sd->done = 1;
        return;
    }
    uint64_t room = sd->sent - sd->acked < opt.window ? opt.window - (sd->sent - sd->acked) : 0;
    uint64_t due = lines_due(s, now);
    uint64_t n = due > sd->sent ? due - sd->sent : 0;
    if (n > room)
        n = room;
    if (n > SEND_BATCH_MAX)
        n = SEND_BATCH_MAX;
    if (n == 0)
        return;
    char *o = c->out;
    for (uint64_t i = 0; i < n; i++) {
        if (c->irc)
            o += sprintf(o, "PRIVMSG %s :", opt.channel);
        int h = sprintf(o, "%s %u %llu %lld ", tag, (unsigned)s, (unsigned long long)(sd->sent + 1),
                        (long long)now);
        o += h;
        if ((uint32_t)h < opt.size) {
            memcpy(o, pad, opt.size - (uint32_t)h);
            o += opt.size - (uint32_t)h;
        }
        *o++ = '\r';
        *o++ = '\n';
        sd->sent++;
    }
    st.lines_sent += n;
    st.expected += n * (opt.clients - 1);
    c->out_len = (uint32_t)(o - c->out);
    c->out_off = 0;
    client_flush(s, now);
    if (sd->sent >= opt.lines)
        sd->done = 1;
}

/* ---- main loop ----------------------------------------------------------- */

static int all_senders_done(void)
{
    for (uint32_t s = 0; s < opt.senders; s++)
        if (!senders[s].done && clients[s].state == C_READY)
            return 0;
    return 1;
}

static void poll_once(int timeout_ms)
{
    static struct epoll_event evs[MAX_EVENTS];
    int n = epoll_wait(epfd, evs, MAX_EVENTS, timeout_ms);
    if (n < 0) {
        if (errno == EINTR)
            return;
        die("epoll_wait");
    }
    int64_t now = now_ns();
    for (int i = 0; i < n; i++) {
        uint32_t idx = evs[i].data.u32;
        if (clients[idx].state == C_CLOSED)
            continue;   /* closed earlier in this batch */
        if (evs[i].events & EPOLLOUT)
            client_writable(idx, now);
        if (clients[idx].state != C_CLOSED && (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
            client_read(idx, now);
    }
}

static double secs(int64_t ns)
{
    return (double)ns / 1e9;
}

int main(int argc, char **argv)
{
    if (parse_options(argc, argv, &opt) != 0) {
        usage();
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)opt.clients + 16) {
        fprintf(stderr, "loadgen: ulimit -n is %llu, too low for %u clients\n", (unsigned long long)rl.rlim_cur,
                opt.clients);
        return 2;
    }

    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)opt.port);
    if (inet_pton(AF_INET, opt.host, &addr.sin_addr) != 1) {
        fprintf(stderr, "loadgen: --host must be an IPv4 address, got %s\n", opt.host);
        return 2;
    }
    struct sockaddr_in irc_addr = addr, recv_addr = addr;
    irc_addr.sin_port = htons((uint16_t)opt.irc_port);
    recv_addr.sin_port = htons((uint16_t)opt.recv_port);

    snprintf(tag, sizeof tag, "%08x", (unsigned)(now_ns() ^ ((int64_t)getpid() << 16)));
    clients = calloc(opt.clients, sizeof *clients);
    senders = calloc(opt.senders ? opt.senders : 1, sizeof *senders);
    last_seq = calloc((size_t)opt.clients * (opt.senders ? opt.senders : 1), sizeof *last_seq);
    pad = malloc(opt.size + 1);
    if (!clients || !senders || !last_seq || !pad)
        die("calloc");
    memset(pad, 'x', opt.size);
    /* a header longer than --size is sent unpadded; IRC adds "PRIVMSG <channel> :" */
    size_t line_max = opt.size + 64 + 80;
    for (uint32_t i = 0; i < opt.clients; i++) {
        /* K IRC clients evenly among N: client i is one where floor(i * K / N) steps */
        clients[i].irc = opt.irc_clients &&
                         (uint64_t)i * opt.irc_clients / opt.clients != ((uint64_t)i + 1) * opt.irc_clients / opt.clients;
        if (i < opt.senders || clients[i].irc) {
            clients[i].out_cap = (uint32_t)((i < opt.senders ? SEND_BATCH_MAX * line_max : 0) + REPLY_ROOM);
            clients[i].out = malloc(clients[i].out_cap);
            if (!clients[i].out)
                die("malloc");
        }
    }
    for (uint32_t s = 0; s < opt.senders; s++) {
        senders[s].receipts = calloc(opt.window, sizeof *senders[s].receipts);
        if (!senders[s].receipts)
            die("malloc");
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1");

    double cpu_relay0 = proc_cpu_secs(opt.relay_pid), cpu_server0 = proc_cpu_secs(opt.server_pid);
    long rss_relay0 = proc_status_kib(opt.relay_pid, "VmRSS");
    long rss_server0 = proc_status_kib(opt.server_pid, "VmRSS");
    t_start = now_ns();
    int64_t deadline = t_start + (int64_t)(opt.timeout_secs * 1e9);
    const char *status = "ok";

    /* Connect: at most --batch connections being set up at once; each counts
     * as up once its greeting's /help line arrived. */
    uint32_t next = 0;
    /* A server that never completes a greeting (an IRC client at a server without IRC)
     * ends the run after --drain seconds without a client coming up, not at --timeout. */
    uint32_t up_before = 0;
    int64_t t_up = now_ns(), stall_ns = (int64_t)(opt.drain_secs * 1e9);
    while (st.greeted + st.closed < opt.clients) {
        while (next < opt.clients && st.connecting < opt.batch) {
            client_connect(next, opt.recv_port && next >= opt.senders ? &recv_addr
                                 : clients[next].irc ? &irc_addr : &addr);
            next++;
        }
        poll_once(100);
        int64_t now = now_ns();
        if (st.greeted + st.closed != up_before) {
            up_before = st.greeted + st.closed;
            t_up = now;
        } else if (now - t_up > stall_ns) {
            status = "connect_stalled";
            break;
        }
        if (now > deadline) {
            status = "timeout";
            break;
        }
    }
    int64_t t_connected = now_ns();
    if (opt.verbose)
        fprintf(stderr, "loadgen: %u/%u clients greeted in %.3f s\n", st.greeted, opt.clients,
                secs(t_connected - t_start));
    if (st.greeted < opt.clients && strcmp(status, "ok") == 0)
        status = "connect_failed";

    double cpu_relay1 = cpu_relay0, cpu_server1 = cpu_server0, cpu_self1 = self_cpu_secs();
    double cpu_extra1 = extra_cpu_secs(&opt);
    long rss_relay1 = -1, rss_server1 = -1;
    double cpu_relay2, cpu_server2, cpu_self2;
    if (opt.senders == 0 && strcmp(status, "ok") == 0) {
        /* Idle sessions: wait until the join notices stopped flowing, then measure. */
        last_bytes_ns = now_ns();
        while (now_ns() - last_bytes_ns < QUIET_NS && now_ns() - t_connected < SETTLE_MAX_NS)
            poll_once(50);
        rss_relay1 = proc_status_kib(opt.relay_pid, "VmRSS");
        rss_server1 = proc_status_kib(opt.server_pid, "VmRSS");
        if (opt.hold_secs > 0) {
            printf("ready\n");
            fflush(stdout);
            uint32_t closed_before = st.closed;
            st.first_close_ns = st.last_close_ns = 0;
            int64_t hold_end = now_ns() + (int64_t)(opt.hold_secs * 1e9);
            while (st.closed < opt.clients && now_ns() < hold_end)
                poll_once(100);
            if (st.closed - closed_before < st.greeted)
                status = "not_closed";
        }
    } else if (strcmp(status, "ok") == 0) {
        cpu_relay1 = proc_cpu_secs(opt.relay_pid);
        cpu_server1 = proc_cpu_secs(opt.server_pid);
        cpu_self1 = self_cpu_secs();
        cpu_extra1 = extra_cpu_secs(&opt);
        t_send_start = t_last_progress = now_ns();
        sending = 1;
        int64_t drain_ns = (int64_t)(opt.drain_secs * 1e9);
        for (;;) {
            int64_t now = now_ns();
            for (uint32_t s = 0; s < opt.senders; s++)
                sender_fill(s, now);
            if (t_send_stop == 0 && all_senders_done())
                t_send_stop = now;
            if (t_send_stop && st.received >= st.expected)
                break;
            if (now - t_last_progress > drain_ns) {
                status = t_send_stop ? "lost" : "stalled";
                break;
            }
            if (now > deadline) {
                status = "timeout";
                break;
            }
            poll_once(opt.rate > 0 ? 1 : 100);
        }
    }
    cpu_relay2 = proc_cpu_secs(opt.relay_pid);
    cpu_server2 = proc_cpu_secs(opt.server_pid);
    cpu_self2 = self_cpu_secs();
    double cpu_extra2 = extra_cpu_secs(&opt);
    long rss_relay = proc_status_kib(opt.relay_pid, "VmRSS");
    long hwm_relay = proc_status_kib(opt.relay_pid, "VmHWM");
    long rss_server = proc_status_kib(opt.server_pid, "VmRSS");

    uint64_t lost = st.expected > st.received ? st.expected - st.received : 0;
    if (strcmp(status, "ok") == 0 && (lost || st.dup || st.gap || st.kicked || st.refused))
        status = "lost";
    if (strcmp(status, "ok") == 0 && opt.senders > 0 && st.closed)
        status = "closed";
    if (strcmp(status, "ok") == 0 && st.irc_errors)
        status = "irc_error";

    double span = sending && t_last_delivery > t_send_start ? secs(t_last_delivery - t_send_start) : 0;
    double cpu_relay = cpu_relay0 >= 0 ? cpu_relay2 - cpu_relay1 : -1;
    double cpu_server = cpu_server0 >= 0 ? cpu_server2 - cpu_server1 : -1;
    /* a native server (ngIRCd) has no wineserver: its own CPU is the whole cost */
    double cpu_server_part = opt.server_pid < 0 ? 0 : cpu_server;
    printf("loadgen clients=%u senders=%u lines=%llu size=%u window=%u%s rate=%g irc_clients=%u"
           " status=%s connect_s=%.3f greeted=%u connect_failed=%u refused=%llu",
           opt.clients, opt.senders, (unsigned long long)opt.lines, opt.size, opt.window,
           opt.pace_observer ? " pace=observer" : "", opt.rate, opt.irc_clients, status,
           secs(t_connected - t_start), st.greeted, st.connect_failed, (unsigned long long)st.refused);
    if (opt.irc_clients)
        printf(" irc_errors=%llu pongs=%llu", (unsigned long long)st.irc_errors, (unsigned long long)st.pongs);
    if (opt.senders > 0) {
        printf(" lines_sent=%llu expected=%llu received=%llu lost=%llu dup=%llu gap=%llu kicked=%llu closed=%u"
               " foreign=%llu send_s=%.3f deliveries_per_s=%.0f lines_per_s=%.0f"
               " lat_p50_us=%llu lat_p99_us=%llu lat_max_us=%llu",
               (unsigned long long)st.lines_sent, (unsigned long long)st.expected,
               (unsigned long long)st.received, (unsigned long long)lost, (unsigned long long)st.dup,
               (unsigned long long)st.gap, (unsigned long long)st.kicked, st.closed,
               (unsigned long long)st.foreign, span, span > 0 ? (double)st.received / span : 0,
               span > 0 ? (double)st.lines_sent / span : 0, (unsigned long long)hist_percentile(0.50),
               (unsigned long long)hist_percentile(0.99), (unsigned long long)hist_max_us);
        printf(" cpu_relay_s=%.2f cpu_server_s=%.2f cpu_loadgen_s=%.2f cpu_us_per_delivery=%.3f", cpu_relay,
               cpu_server, cpu_self2 - cpu_self1,
               st.received && cpu_relay >= 0 && cpu_server_part >= 0
                   ? (cpu_relay + cpu_server_part) * 1e6 / (double)st.received
                   : -1.0);
        if (opt.extra_count)
            printf(" cpu_extra_s=%.2f", cpu_extra1 >= 0 && cpu_extra2 >= 0 ? cpu_extra2 - cpu_extra1 : -1.0);
    } else {
        printf(" rss_relay_before_kib=%ld rss_relay_after_kib=%ld rss_server_before_kib=%ld rss_server_after_kib=%ld",
               rss_relay0, rss_relay1, rss_server0, rss_server1);
        if (rss_relay0 >= 0 && rss_relay1 >= 0 && st.greeted)
            printf(" rss_relay_per_session_b=%.0f", (double)(rss_relay1 - rss_relay0) * 1024.0 / st.greeted);
        if (rss_server0 >= 0 && rss_server1 >= 0 && st.greeted)
            printf(" rss_server_per_session_b=%.0f", (double)(rss_server1 - rss_server0) * 1024.0 / st.greeted);
        printf(" cpu_relay_s=%.2f cpu_server_s=%.2f kicked=%llu",
               cpu_relay0 >= 0 ? cpu_relay2 - cpu_relay0 : -1.0, cpu_server0 >= 0 ? cpu_server2 - cpu_server0 : -1.0,
               (unsigned long long)st.kicked);
        if (opt.hold_secs > 0)
            printf(" closed=%u goodbye=%llu first_close_ns=%lld last_close_ns=%lld", st.closed,
                   (unsigned long long)st.goodbye, (long long)st.first_close_ns, (long long)st.last_close_ns);
    }
    printf(" rss_relay_kib=%ld hwm_relay_kib=%ld rss_server_kib=%ld notices=%llu other=%llu\n", rss_relay,
           hwm_relay, rss_server, (unsigned long long)st.notices, (unsigned long long)st.other);
    fflush(stdout);
    return strcmp(status, "ok") == 0 ? 0 : 1;
}

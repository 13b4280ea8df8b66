/* options: the command line -> relay_options, one table of option specs.
 *
 * Every option is one row of OPTION_TABLE below: its name, what kind of value
 * it takes, its range, and its --help line.  Parsing, validation and the help
 * text all come from that row, so they cannot drift apart.
 * Never: acts on the options (paths are not opened, addresses not resolved).
 * Portable C11, no <windows.h>.
 */
#include "options.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define KIB ((int64_t)1024)
#define MIB (KIB * 1024)
#define GIB (MIB * 1024)

typedef enum option_kind {
    OPT_FLAG,      /* no value; sets an int to 1 */
    OPT_INT,       /* decimal integer within [min, max] */
    OPT_SIZE,      /* byte count within [min, max], optional K/M/G suffix (binary) */
    OPT_PATH,      /* non-empty string shorter than OPTIONS_PATH_MAX */
    OPT_NAME,      /* printable text, 1..63 bytes */
    OPT_LISTEN,    /* ADDR:PORT, repeatable */
    OPT_CLUSTER,   /* nats://HOST:PORT[,nats://...] */
    OPT_NODE       /* 1..32 of [A-Za-z0-9_-] */
} option_kind;

typedef enum option_id {
    ID_CONSOLE, ID_HELP, ID_VERSION, ID_LISTEN, ID_LISTEN_IRC, ID_GREET_DELAY, ID_IRC_PING, ID_MAX_SESSIONS, ID_MAX_QUEUE_BYTES,
    ID_DB, ID_NO_HISTORY, ID_REPLAY, ID_RETAIN_DAYS, ID_RETAIN_MESSAGES, ID_FLOOD_BURST,
    ID_FLOOD_RATE, ID_FLOOD_KICK, ID_MAX_PER_IP, ID_IDLE_TIMEOUT, ID_LOG_PRIVATE, ID_LOG, ID_LOG_MAX_BYTES,
    ID_NAME, ID_CLUSTER, ID_NODE, ID_CLUSTER_CREDENTIALS, ID_PASSWORD_FILE
} option_id;

typedef struct option_spec {
    const char *name;        /* "--listen" */
    option_id id;
    option_kind kind;
    int64_t min, max;        /* OPT_INT / OPT_SIZE */
} option_spec;

static const option_spec OPTION_TABLE[] = {
    { "--console",         ID_CONSOLE,         OPT_FLAG,   0, 0 },
    { "--help",            ID_HELP,            OPT_FLAG,   0, 0 },
    { "--version",         ID_VERSION,         OPT_FLAG,   0, 0 },
    { "--listen",          ID_LISTEN,          OPT_LISTEN, 0, 0 },
    { "--listen-irc",      ID_LISTEN_IRC,      OPT_LISTEN, 0, 0 },
    { "--greet-delay",     ID_GREET_DELAY,     OPT_INT,    0, 5000 },
    { "--irc-ping",        ID_IRC_PING,        OPT_INT,    5, 3600 },
    { "--max-sessions",    ID_MAX_SESSIONS,    OPT_INT,    1, 100000 },
    { "--max-queue-bytes", ID_MAX_QUEUE_BYTES, OPT_SIZE,   4 * KIB, GIB },
    { "--db",              ID_DB,              OPT_PATH,   0, 0 },
    { "--no-history",      ID_NO_HISTORY,      OPT_FLAG,   0, 0 },
    { "--replay",          ID_REPLAY,          OPT_INT,    0, 200 },
    { "--retain-days",     ID_RETAIN_DAYS,     OPT_INT,    0, 36500 },
    { "--retain-messages", ID_RETAIN_MESSAGES, OPT_INT,    0, INT64_C(1000000000000) },
    { "--flood-burst",     ID_FLOOD_BURST,     OPT_INT,    0, 1000 },
    { "--flood-rate",      ID_FLOOD_RATE,      OPT_INT,    0, 1000 },
    { "--flood-kick",      ID_FLOOD_KICK,      OPT_INT,    0, 100000 },
    { "--max-per-ip",      ID_MAX_PER_IP,      OPT_INT,    0, 100000 },
    { "--idle-timeout",    ID_IDLE_TIMEOUT,    OPT_INT,    0, 7 * 86400 },
    { "--log-private",     ID_LOG_PRIVATE,     OPT_FLAG,   0, 0 },
    { "--log",             ID_LOG,             OPT_PATH,   0, 0 },
    { "--log-max-bytes",   ID_LOG_MAX_BYTES,   OPT_SIZE,   KIB, GIB },
    { "--name",            ID_NAME,            OPT_NAME,   0, 0 },
    { "--cluster",         ID_CLUSTER,         OPT_CLUSTER, 0, 0 },
    { "--node",            ID_NODE,            OPT_NODE,   0, 0 },
    { "--cluster-credentials", ID_CLUSTER_CREDENTIALS, OPT_PATH, 0, 0 },
    { "--password-file",   ID_PASSWORD_FILE,   OPT_PATH,   0, 0 },
};

#define OPTION_COUNT (sizeof OPTION_TABLE / sizeof OPTION_TABLE[0])

/* Kept in step with OPTION_TABLE and options_defaults (the unit test checks
 * that every option in the table appears here). */
static const char HELP_TEXT[] =
    "Options:\n"
    "  --listen ADDR:PORT      listen on ADDR:PORT; repeatable (up to 8 addresses in\n"
    "                          all); ADDR may be an IPv4 address, [IPv6] or a host name;\n"
    "                          \":PORT\" or \"PORT\" alone means all interfaces, IPv4 and\n"
    "                          IPv6 (default 7777); IRC clients are recognised by their\n"
    "                          first line, line clients are greeted\n"
    "  --listen-irc ADDR:PORT  also listen for IRC clients only (usually port 6667);\n"
    "                          repeatable (default none)\n"
    "  --greet-delay MS        how long a silent client waits before it is greeted as\n"
    "                          a line client, 0-5000 (default 300)\n"
    "  --irc-ping SECONDS      ping an IRC client silent this long, disconnect it when\n"
    "                          still silent twice as long, 5-3600 (default 90)\n"
    "  --max-sessions N        most clients connected at once, 1-100000 (default 1024)\n"
    "  --max-queue-bytes N     memory one client's queue may keep past 3 s without\n"
    "                          reading before it is disconnected as a slow consumer;\n"
    "                          K/M/G suffixes allowed, 4K-1G (default 256K)\n"
    "  --max-per-ip N          connections from one IP address, 0 = no limit (default 16)\n"
    "  --idle-timeout SECONDS  disconnect clients silent this long, 0 = never (default 0)\n"
    "  --flood-burst N         lines a client may send in a burst, 0 = no flood control\n"
    "                          (default 10)\n"
    "  --flood-rate N          lines per second refilled to that burst, 0 = no flood\n"
    "                          control (default 5)\n"
    "  --flood-kick N          disconnect a client after N refused lines within one\n"
    "                          burst window, 0 = never (default 20)\n"
    "  --name NAME             server name shown in the greeting (default chatrelay)\n"
    "  --password-file PATH    a file with a password=SECRET line: clients must give\n"
    "                          it (/pass SECRET, IRC's PASS) before they chat\n"
    "                          (default none: anyone may)\n"
    "  --db PATH               history database (default\n"
    "                          %ProgramData%\\ChatRelay\\history.db)\n"
    "  --no-history            keep no history: lines are delivered and forgotten\n"
    "  --replay N              history lines shown on connect and /join, 0-200\n"
    "                          (default 20)\n"
    "  --retain-days D         delete history older than D days, 0 = keep (default 0)\n"
    "  --retain-messages M     keep only the newest M history lines, 0 = all (default 0)\n"
    "  --log-private           also store private messages (/msg) in the history\n"
    "  --log PATH              log file (default: the console in --console mode,\n"
    "                          %ProgramData%\\ChatRelay\\chatrelay.log as a service)\n"
    "  --log-max-bytes N       rotate the log file (to PATH.1) past this size, K/M/G\n"
    "                          suffixes allowed, 1K-1G (default 10M)\n"
    "  --cluster URL[,URL...]  join a cluster of relays through NATS JetStream: the\n"
    "                          servers to try, nats://HOST:PORT (port 4222 if left\n"
    "                          out), up to 8 (default none: a single relay)\n"
    "  --node NAME             this relay's name in the cluster, 1-32 of A-Z a-z 0-9\n"
    "                          _ - (default the computer name)\n"
    "  --cluster-credentials PATH  a file with the NATS credentials: user=NAME and\n"
    "                          password=SECRET lines, or token=SECRET (default none)\n"
    "  --console               run in this console instead of as a service (Ctrl+C stops)\n"
    "  --version               print the version and exit\n"
    "  --help                  print this help and exit\n"
    "Options also take the form --option=VALUE.\n";

void options_defaults(relay_options *o)
{
    memset(o, 0, sizeof *o);
    o->listen[0].host[0] = '\0';
    o->listen[0].port = 7777;
    o->listen_count = 1;
    o->greet_delay_ms = 300;
    o->irc_ping = 90;
    o->max_sessions = 1024;
    o->max_queue_bytes = (size_t)(256 * KIB);
    o->replay = 20;
    o->flood_burst = 10;
    o->flood_rate = 5;
    o->flood_kick = 20;
    o->max_per_ip = 16;
    o->idle_timeout = 0;
    o->log_max_bytes = (size_t)(10 * MIB);
    memcpy(o->server_name, "chatrelay", sizeof "chatrelay");
}

const char *options_help(void)
{
    return HELP_TEXT;
}

#if defined(__GNUC__) || defined(__clang__)
#define OPTIONS_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define OPTIONS_PRINTF(a, b)
#endif

/* A printf-checked error writer that tolerates err == NULL. */
static void set_err(char *err, size_t errlen, const char *fmt, ...) OPTIONS_PRINTF(3, 4);
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Strict unsigned decimal: digits only, no sign, no spaces, no overflow. */
static int parse_decimal(const char *s, int64_t limit, int64_t *out)
{
    int64_t v = 0;
    if (*s == '\0')
        return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        if (v > (limit - (*s - '0')) / 10)
            return -1;
        v = v * 10 + (*s - '0');
    }
    *out = v;
    return 0;
}

static int parse_size(const char *s, int64_t *out)
{
    char digits[32];
    size_t n = strlen(s);
    int64_t unit = 1, v;
    if (n == 0 || n >= sizeof digits)
        return -1;
    memcpy(digits, s, n + 1);
    switch (digits[n - 1]) {
    case 'k': case 'K': unit = KIB; break;
    case 'm': case 'M': unit = MIB; break;
    case 'g': case 'G': unit = GIB; break;
    default: break;
    }
    if (unit != 1)
        digits[--n] = '\0';
    if (parse_decimal(digits, INT64_MAX / unit, &v) != 0)
        return -1;
    *out = v * unit;
    return 0;
}

/* Host names and address literals: letters, digits and . - _ : % (scope ids). */
static int valid_host(const char *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == '_' || c == ':' || c == '%'))
            return 0;
    }
    return 1;
}

int options_parse_listen(const char *s, listen_addr *a)
{
    const char *host = s, *port_text;
    size_t host_len;
    int64_t port;
    listen_addr result;

    if (s == NULL || a == NULL)
        return -1;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (close == NULL || close[1] != ':')
            return -1;
        host = s + 1;
        host_len = (size_t)(close - host);
        if (host_len == 0 || memchr(host, ':', host_len) == NULL)
            return -1;   /* brackets are for IPv6 literals only */
        port_text = close + 2;
    } else {
        const char *colon = strrchr(s, ':');
        if (colon == NULL) {
            host_len = 0;           /* "PORT" */
            port_text = s;
        } else {
            host_len = (size_t)(colon - s);
            if (memchr(s, ':', host_len) != NULL)
                return -1;          /* bare IPv6 is ambiguous: write [addr]:port */
            port_text = colon + 1;
        }
        if (host_len == 1 && host[0] == '*')
            host_len = 0;           /* "*:PORT" = all interfaces */
    }
    if (host_len >= sizeof result.host || !valid_host(host, host_len))
        return -1;
    if (parse_decimal(port_text, 65535, &port) != 0 || port < 1)
        return -1;
    memset(&result, 0, sizeof result);
    memcpy(result.host, host, host_len);
    result.host[host_len] = '\0';
    result.port = (uint16_t)port;
    *a = result;
    return 0;
}

int options_valid_node(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > OPTIONS_NODE_MAX)
        return -1;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return -1;
    }
    return 0;
}

int options_parse_cluster_url(const char *s, cluster_url *u)
{
    static const char scheme[] = "nats://";
    if (strncmp(s, scheme, sizeof scheme - 1) == 0)
        s += sizeof scheme - 1;
    else if (strstr(s, "://"))
        return -1;   /* tls://, ws://: not spoken here (TLS is for the links between NATS servers) */
    const char *colon = strrchr(s, ':');
    size_t host_len = colon ? (size_t)(colon - s) : strlen(s);
    int64_t port = 4222;
    if (host_len == 0 || host_len >= sizeof u->host || !valid_host(s, host_len) || memchr(s, ':', host_len))
        return -1;
    if (colon && (parse_decimal(colon + 1, 65535, &port) != 0 || port < 1))
        return -1;
    memset(u, 0, sizeof *u);
    memcpy(u->host, s, host_len);
    u->port = (uint16_t)port;
    return 0;
}

static const option_spec *find_option(const char *name, size_t len)
{
    size_t i;
    for (i = 0; i < OPTION_COUNT; i++) {
        if (strlen(OPTION_TABLE[i].name) == len && memcmp(OPTION_TABLE[i].name, name, len) == 0)
            return &OPTION_TABLE[i];
    }
    return NULL;
}

/* Printable text: no C0 controls or DEL (UTF-8 beyond ASCII is passed through). */
static int valid_name(const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20 || c == 0x7f)
            return 0;
    }
    return 1;
}

static void store_int(relay_options *o, option_id id, int64_t v)
{
    switch (id) {
    case ID_MAX_SESSIONS:    o->max_sessions = (uint32_t)v; break;
    case ID_MAX_QUEUE_BYTES: o->max_queue_bytes = (size_t)v; break;
    case ID_REPLAY:          o->replay = (int)v; break;
    case ID_RETAIN_DAYS:     o->retain_days = (int)v; break;
    case ID_RETAIN_MESSAGES: o->retain_messages = v; break;
    case ID_FLOOD_BURST:     o->flood_burst = (int)v; break;
    case ID_FLOOD_RATE:      o->flood_rate = (int)v; break;
    case ID_FLOOD_KICK:      o->flood_kick = (int)v; break;
    case ID_MAX_PER_IP:      o->max_per_ip = (int)v; break;
    case ID_IDLE_TIMEOUT:    o->idle_timeout = (int)v; break;
    case ID_GREET_DELAY:     o->greet_delay_ms = (int)v; break;
    case ID_IRC_PING:        o->irc_ping = (int)v; break;
    case ID_LOG_MAX_BYTES:   o->log_max_bytes = (size_t)v; break;
    default: break;
    }
}

static void store_flag(relay_options *o, option_id id)
{
    switch (id) {
    case ID_CONSOLE:     o->console = 1; break;
    case ID_HELP:        o->help = 1; break;
    case ID_VERSION:     o->version = 1; break;
    case ID_NO_HISTORY:  o->no_history = 1; break;
    case ID_LOG_PRIVATE: o->log_private = 1; break;
    default: break;
    }
}

/* Applies one option with its value (NULL for flags).  *listen_replaced
 * tracks whether this parse already replaced the listen list. */
static int apply(relay_options *o, const option_spec *spec, const char *value,
                 int *listen_replaced, char *err, size_t errlen)
{
    int64_t v;
    size_t len;

    switch (spec->kind) {
    case OPT_FLAG:
        store_flag(o, spec->id);
        return 0;
    case OPT_INT:
        if (parse_decimal(value, INT64_MAX, &v) != 0 || v < spec->min || v > spec->max) {
            set_err(err, errlen, "%s: expected a number from %lld to %lld, got '%s'", spec->name,
                    (long long)spec->min, (long long)spec->max, value);
            return -1;
        }
        store_int(o, spec->id, v);
        return 0;
    case OPT_SIZE:
        if (parse_size(value, &v) != 0 || v < spec->min || v > spec->max) {
            set_err(err, errlen, "%s: expected a size from %lld to %lld bytes (K, M, G suffixes allowed), got '%s'",
                    spec->name, (long long)spec->min, (long long)spec->max, value);
            return -1;
        }
        store_int(o, spec->id, v);
        return 0;
    case OPT_PATH:
        len = strlen(value);
        if (len == 0 || len >= OPTIONS_PATH_MAX) {
            set_err(err, errlen, "%s: expected a path of 1 to %d bytes, got %s", spec->name,
                    OPTIONS_PATH_MAX - 1, len == 0 ? "an empty one" : "a longer one");
            return -1;
        }
        memcpy(spec->id == ID_DB ? o->db_path : spec->id == ID_LOG ? o->log_path
               : spec->id == ID_PASSWORD_FILE ? o->password_file : o->cluster_credentials,
               value, len + 1);
        return 0;
    case OPT_NAME:
        len = strlen(value);
        if (len == 0 || len >= sizeof o->server_name || !valid_name(value)) {
            set_err(err, errlen, "%s: expected 1 to %d printable bytes, got '%.80s'", spec->name,
                    (int)sizeof o->server_name - 1, value);
            return -1;
        }
        memcpy(o->server_name, value, len + 1);
        return 0;
    case OPT_NODE:
        if (options_valid_node(value) != 0) {
            set_err(err, errlen, "%s: expected 1 to %d of A-Z a-z 0-9 _ -, got '%.80s'", spec->name,
                    OPTIONS_NODE_MAX, value);
            return -1;
        }
        memcpy(o->node, value, strlen(value) + 1);
        return 0;
    case OPT_CLUSTER: {
        cluster_url urls[OPTIONS_MAX_CLUSTER];
        int count = 0;
        const char *p = value;
        for (;;) {
            const char *comma = strchr(p, ',');
            size_t n = comma ? (size_t)(comma - p) : strlen(p);
            char one[128];
            if (count == OPTIONS_MAX_CLUSTER) {
                set_err(err, errlen, "%s: at most %d servers, got more", spec->name, OPTIONS_MAX_CLUSTER);
                return -1;
            }
            if (n >= sizeof one || (memcpy(one, p, n), one[n] = '\0', options_parse_cluster_url(one, &urls[count])) != 0) {
                set_err(err, errlen, "%s: expected nats://HOST:PORT (or HOST:PORT), got '%.*s'", spec->name,
                        (int)(n > 80 ? 80 : n), p);
                return -1;
            }
            count++;
            if (!comma)
                break;
            p = comma + 1;
        }
        memcpy(o->cluster, urls, sizeof urls[0] * (size_t)count);
        o->cluster_count = count;
        return 0;
    }
    case OPT_LISTEN: {
        listen_addr a;
        if (options_parse_listen(value, &a) != 0) {
            set_err(err, errlen, "%s: expected ADDR:PORT, [IPv6]:PORT, :PORT or PORT with a port from 1 to 65535, got '%.80s'",
                    spec->name, value);
            return -1;
        }
        /* The first --listen (or --listen-irc) of a parse replaces the
         * addresses of its kind that were there (the default, or the
         * binPath's list when parsing `sc start` arguments); later ones in
         * the same parse add to it. */
        a.irc = (uint8_t)(spec->id == ID_LISTEN_IRC);
        int kind_bit = a.irc ? 2 : 1;
        if (!(*listen_replaced & kind_bit)) {
            int kept = 0;
            for (int k = 0; k < o->listen_count; k++)
                if (o->listen[k].irc != a.irc)
                    o->listen[kept++] = o->listen[k];
            o->listen_count = kept;
            *listen_replaced |= kind_bit;
        }
        if (o->listen_count >= OPTIONS_MAX_LISTEN) {
            set_err(err, errlen, "%s: at most %d addresses in all, got more", spec->name, OPTIONS_MAX_LISTEN);
            return -1;
        }
        o->listen[o->listen_count++] = a;
        return 0;
    }
    }
    return -1;
}

int options_parse(relay_options *o, int argc, char **argv, int first, char *err, size_t errlen)
{
    int i, listen_replaced = 0;

    if (err != NULL && errlen > 0)
        err[0] = '\0';
    for (i = first; i < argc; i++) {
        const char *arg = argv[i];
        const char *eq, *value = NULL;
        size_t name_len;
        const option_spec *spec;

        if (arg == NULL)
            continue;
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "-?") == 0 || strcmp(arg, "/?") == 0)
            arg = "--help";
        if (arg[0] != '-' || arg[1] != '-') {
            set_err(err, errlen, "unexpected argument '%.80s' (options start with --; see --help)", arg);
            return -1;
        }
        eq = strchr(arg, '=');
        name_len = eq != NULL ? (size_t)(eq - arg) : strlen(arg);
        spec = find_option(arg, name_len);
        if (spec == NULL) {
            set_err(err, errlen, "unknown option '%.*s' (see --help)", (int)(name_len > 80 ? 80 : name_len), arg);
            return -1;
        }
        if (spec->kind == OPT_FLAG) {
            if (eq != NULL) {
                set_err(err, errlen, "%s: takes no value, got '%.80s'", spec->name, eq + 1);
                return -1;
            }
        } else if (eq != NULL) {
            value = eq + 1;
        } else if (i + 1 < argc && argv[i + 1] != NULL) {
            value = argv[++i];
        } else {
            set_err(err, errlen, "%s: expected a value after it", spec->name);
            return -1;
        }
        if (apply(o, spec, value, &listen_replaced, err, errlen) != 0)
            return -1;
    }
    return 0;
}

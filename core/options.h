/* options: the command line, for console mode, service mode (binPath and
 * `sc start` arguments) and the install verb alike.
 *
 * Owns: every option, its default, its validation and its --help text.
 * Never: acts on the options.  Portable C11 (arguments arrive as UTF-8).
 */
#ifndef CHATRELAY_OPTIONS_H
#define CHATRELAY_OPTIONS_H

#include <stddef.h>
#include <stdint.h>

#define OPTIONS_MAX_LISTEN 8
#define OPTIONS_PATH_MAX 1024

typedef struct listen_addr {
    char host[64];          /* "" = all interfaces (IPv6 dual-stack, plus IPv4) */
    uint16_t port;
    uint8_t irc;            /* --listen-irc: IRC only (else the dialect is detected) */
} listen_addr;

#define OPTIONS_MAX_CLUSTER 8
#define OPTIONS_NODE_MAX 32

typedef struct cluster_url {
    char host[64];
    uint16_t port;
} cluster_url;

typedef struct relay_options {
    int console;                         /* --console */
    int help;                            /* --help */
    int version;                         /* --version */
    listen_addr listen[OPTIONS_MAX_LISTEN];
    int listen_count;                    /* --listen ADDR:PORT (repeatable); default one, all interfaces :7777;
                                          * --listen-irc ADDR:PORT (repeatable) adds IRC-only ones */
    int irc_ping;                        /* --irc-ping SECONDS: ping a silent IRC client after this, cut it after twice (default 90) */
    int greet_delay_ms;                  /* --greet-delay MS: a silent client is greeted as a line client after this (default 300) */
    uint32_t max_sessions;               /* --max-sessions N (1..100000), default 1024 */
    size_t max_queue_bytes;              /* --max-queue-bytes N, default 256 KiB */
    char db_path[OPTIONS_PATH_MAX];      /* --db PATH, "" = %ProgramData%\ChatRelay\history.db */
    int no_history;                      /* --no-history */
    int replay;                          /* --replay N (0..200), default 20 */
    int retain_days;                     /* --retain-days D, 0 = forever */
    int64_t retain_messages;             /* --retain-messages M, 0 = all */
    int flood_burst;                     /* --flood-burst N, default 10, 0 = off */
    int flood_rate;                      /* --flood-rate N lines/s, default 5, 0 = off */
    int flood_kick;                      /* --flood-kick N refused lines before disconnect, default 20, 0 = never */
    int max_per_ip;                      /* --max-per-ip N, default 16, 0 = off */
    int idle_timeout;                    /* --idle-timeout SECONDS, default 0 = off */
    int log_private;                     /* --log-private */
    char log_path[OPTIONS_PATH_MAX];     /* --log PATH, "" = stderr (console) or %ProgramData%\ChatRelay\chatrelay.log */
    size_t log_max_bytes;                /* --log-max-bytes N, default 10 MiB */
    char server_name[64];                /* --name NAME, default "chatrelay" */
    cluster_url cluster[OPTIONS_MAX_CLUSTER];
    int cluster_count;                   /* --cluster URL[,URL...]: 0 = a single relay */
    char node[OPTIONS_NODE_MAX + 1];     /* --node NAME, "" = the computer name */
    char cluster_credentials[OPTIONS_PATH_MAX]; /* --cluster-credentials PATH, "" = none */
    char password_file[OPTIONS_PATH_MAX]; /* --password-file PATH, "" = no server password */
} relay_options;

void options_defaults(relay_options *o);
/* Parses argv[first..argc).  Returns 0, or -1 with a one-line message such as
 * "--max-sessions: expected a number from 1 to 100000, got 'x'" in err. */
int options_parse(relay_options *o, int argc, char **argv, int first, char *err, size_t errlen);
/* The --help text (every option, its default). */
const char *options_help(void);
/* Parses "ADDR:PORT", "[v6]:PORT", ":PORT" or "PORT" into a. */
int options_parse_listen(const char *s, listen_addr *a);
/* Parses "nats://HOST:PORT", "HOST:PORT" or "HOST" (port 4222) into u. */
int options_parse_cluster_url(const char *s, cluster_url *u);
/* 0 if s is a valid --node name (1-32 of A-Z a-z 0-9 _ -). */
int options_valid_node(const char *s);

#endif

/* test_options: defaults, every option's parsing and validation, the error
 * messages, the listen address forms and the --help text. */
#include "check.h"
#include "options.h"

#include <string.h>

#define ARGC(a) ((int)(sizeof(a) / sizeof((a)[0])))

static char err[256];

/* Parses argv (a NULL-free array) onto defaults; returns options_parse's result. */
static int parse(relay_options *o, int argc, char **argv)
{
    options_defaults(o);
    return options_parse(o, argc, argv, 0, err, sizeof err);
}

static void test_defaults(void)
{
    relay_options o;
    options_defaults(&o);
    CHECK_INT(o.listen_count, 1);
    CHECK_STR(o.listen[0].host, "");
    CHECK_INT(o.listen[0].port, 7777);
    CHECK_INT(o.max_sessions, 1024);
    CHECK_INT(o.max_queue_bytes, 256 * 1024);
    CHECK_STR(o.db_path, "");
    CHECK_INT(o.no_history, 0);
    CHECK_INT(o.replay, 20);
    CHECK_INT(o.retain_days, 0);
    CHECK_INT(o.retain_messages, 0);
    CHECK_INT(o.flood_burst, 10);
    CHECK_INT(o.flood_rate, 5);
    CHECK_INT(o.flood_kick, 20);
    CHECK_INT(o.max_per_ip, 16);
    CHECK_INT(o.idle_timeout, 0);
    CHECK_INT(o.log_private, 0);
    CHECK_STR(o.log_path, "");
    CHECK_INT(o.log_max_bytes, 10 * 1024 * 1024);
    CHECK_STR(o.server_name, "chatrelay");
    CHECK_INT(o.console + o.help + o.version, 0);
}

static void test_every_option(void)
{
    relay_options o;
    char *argv[] = {
        "--console", "--listen", "127.0.0.1:8001", "--listen=[::1]:8002",
        "--max-sessions", "5000", "--max-queue-bytes", "64K", "--db", "C:\\data dir\\h.db",
        "--replay", "0", "--retain-days", "30", "--retain-messages", "1000000",
        "--flood-burst", "0", "--flood-rate=7", "--flood-kick", "3", "--max-per-ip", "3", "--idle-timeout", "600",
        "--log-private", "--log", "x.log", "--log-max-bytes", "2M", "--name", "my relay",
        "--no-history", "--version", "--help"
    };
    CHECK_INT(parse(&o, ARGC(argv), argv), 0);
    CHECK_STR(err, "");
    CHECK_INT(o.console, 1);
    CHECK_INT(o.listen_count, 2);
    CHECK_STR(o.listen[0].host, "127.0.0.1");
    CHECK_INT(o.listen[0].port, 8001);
    CHECK_STR(o.listen[1].host, "::1");
    CHECK_INT(o.listen[1].port, 8002);
    CHECK_INT(o.max_sessions, 5000);
    CHECK_INT(o.max_queue_bytes, 64 * 1024);
    CHECK_STR(o.db_path, "C:\\data dir\\h.db");
    CHECK_INT(o.replay, 0);
    CHECK_INT(o.retain_days, 30);
    CHECK_INT(o.retain_messages, 1000000);
    CHECK_INT(o.flood_burst, 0);
    CHECK_INT(o.flood_rate, 7);
    CHECK_INT(o.flood_kick, 3);
    CHECK_INT(o.max_per_ip, 3);
    CHECK_INT(o.idle_timeout, 600);
    CHECK_INT(o.log_private, 1);
    CHECK_STR(o.log_path, "x.log");
    CHECK_INT(o.log_max_bytes, 2 * 1024 * 1024);
    CHECK_STR(o.server_name, "my relay");
    CHECK_INT(o.no_history, 1);
    CHECK_INT(o.version, 1);
    CHECK_INT(o.help, 1);
}

/* Each bad command line fails with a message that starts with expect. */
static void check_rejected(int argc, char **argv, const char *expect)
{
    relay_options o;
    int rc = parse(&o, argc, argv);
    CHECK_INT(rc, -1);
    if (strncmp(err, expect, strlen(expect)) != 0) {
        check_failed++;
        fprintf(stderr, "error for '%s': expected to start with \"%s\", got \"%s\"\n", argv[0], expect, err);
    } else {
        check_passed++;
    }
    CHECK(strchr(err, '\n') == NULL);   /* one line */
}

static void test_rejections(void)
{
    char *a1[] = { "--max-sessions", "x" };
    char *a2[] = { "--max-sessions", "0" };
    char *a3[] = { "--max-sessions", "100001" };
    char *a4[] = { "--max-sessions", "-5" };
    char *a5[] = { "--max-sessions", "99999999999999999999999" };
    char *a6[] = { "--replay", "201" };
    char *a7[] = { "--frobnicate" };
    char *a8[] = { "--listen" };
    char *a9[] = { "--listen", "127.0.0.1:0" };
    char *a10[] = { "--listen", "::1:80" };
    char *a11[] = { "--console=yes" };
    char *a12[] = { "stray" };
    char *a13[] = { "--max-queue-bytes", "12Q" };
    char *a14[] = { "--max-queue-bytes", "2G" };
    char *a15[] = { "--db", "" };
    char *a16[] = { "--name", "bad\x1bname" };
    char *a17[] = { "--listen", "1:1", "--listen", "2:2", "--listen", "3:3", "--listen", "4:4", "--listen", "5:5",
                    "--listen-irc", "6:6", "--listen-irc", "7:7", "--listen", "8:8", "--listen-irc", "9:9" };
    char *a18[] = { "--idle-timeout", " 5" };
    char *a19[] = { "--log-max-bytes", "10" };
    char *a20[] = { "--listen", "host name:80" };

    check_rejected(ARGC(a1), a1, "--max-sessions: expected a number from 1 to 100000, got 'x'");
    check_rejected(ARGC(a2), a2, "--max-sessions: expected a number from 1 to 100000, got '0'");
    check_rejected(ARGC(a3), a3, "--max-sessions: expected");
    check_rejected(ARGC(a4), a4, "--max-sessions: expected");
    check_rejected(ARGC(a5), a5, "--max-sessions: expected");
    check_rejected(ARGC(a6), a6, "--replay: expected a number from 0 to 200, got '201'");
    check_rejected(ARGC(a7), a7, "unknown option '--frobnicate'");
    check_rejected(ARGC(a8), a8, "--listen: expected a value");
    check_rejected(ARGC(a9), a9, "--listen: expected ADDR:PORT");
    check_rejected(ARGC(a10), a10, "--listen: expected ADDR:PORT");
    check_rejected(ARGC(a11), a11, "--console: takes no value");
    check_rejected(ARGC(a12), a12, "unexpected argument 'stray'");
    check_rejected(ARGC(a13), a13, "--max-queue-bytes: expected a size");
    check_rejected(ARGC(a14), a14, "--max-queue-bytes: expected a size");
    check_rejected(ARGC(a15), a15, "--db: expected a path");
    check_rejected(ARGC(a16), a16, "--name: expected 1 to 63 printable bytes");
    check_rejected(ARGC(a17), a17, "--listen-irc: at most 8 addresses in all");
    check_rejected(ARGC(a18), a18, "--idle-timeout: expected");
    check_rejected(ARGC(a19), a19, "--log-max-bytes: expected");
    check_rejected(ARGC(a20), a20, "--listen: expected ADDR:PORT");
}

/* --listen-irc adds IRC-only addresses beside the --listen ones (or the default). */
static void test_listen_irc(void)
{
    relay_options o;
    char *a1[] = { "--listen-irc", "127.0.0.1:6667" };
    CHECK_INT(parse(&o, ARGC(a1), a1), 0);
    CHECK_INT(o.listen_count, 2);
    CHECK_INT(o.listen[0].port, 7777);
    CHECK_INT(o.listen[0].irc, 0);
    CHECK_INT(o.listen[1].port, 6667);
    CHECK_INT(o.listen[1].irc, 1);
    char *a2[] = { "--listen-irc", ":6667", "--listen", ":7000", "--listen-irc", ":6668", "--greet-delay", "0" };
    CHECK_INT(parse(&o, ARGC(a2), a2), 0);
    CHECK_INT(o.listen_count, 3);
    CHECK_INT(o.listen[0].irc + o.listen[1].irc + o.listen[2].irc, 2);
    CHECK_INT(o.greet_delay_ms, 0);
    char *a3[] = { "--greet-delay", "5001" };
    check_rejected(ARGC(a3), a3, "--greet-delay: expected a number from 0 to 5000");
}

static void test_listen_forms(void)
{
    listen_addr a;
    CHECK_INT(options_parse_listen("127.0.0.1:7000", &a), 0);
    CHECK_STR(a.host, "127.0.0.1");
    CHECK_INT(a.port, 7000);
    CHECK_INT(options_parse_listen("[::]:7001", &a), 0);
    CHECK_STR(a.host, "::");
    CHECK_INT(a.port, 7001);
    CHECK_INT(options_parse_listen("[fe80::1%3]:7002", &a), 0);
    CHECK_STR(a.host, "fe80::1%3");
    CHECK_INT(options_parse_listen(":7003", &a), 0);
    CHECK_STR(a.host, "");
    CHECK_INT(a.port, 7003);
    CHECK_INT(options_parse_listen("7004", &a), 0);
    CHECK_STR(a.host, "");
    CHECK_INT(a.port, 7004);
    CHECK_INT(options_parse_listen("*:7005", &a), 0);
    CHECK_STR(a.host, "");
    CHECK_INT(options_parse_listen("localhost:65535", &a), 0);
    CHECK_STR(a.host, "localhost");
    CHECK_INT(a.port, 65535);

    a.port = 1234;
    CHECK_INT(options_parse_listen("65536", &a), -1);
    CHECK_INT(a.port, 1234);        /* untouched on failure */
    CHECK_INT(options_parse_listen("", &a), -1);
    CHECK_INT(options_parse_listen(":", &a), -1);
    CHECK_INT(options_parse_listen("1.2.3.4:", &a), -1);
    CHECK_INT(options_parse_listen("[::1]", &a), -1);
    CHECK_INT(options_parse_listen("[::1]7000", &a), -1);
    CHECK_INT(options_parse_listen("[1.2.3.4]:7000", &a), -1);
    CHECK_INT(options_parse_listen("[]:7000", &a), -1);
    CHECK_INT(options_parse_listen("1.2.3.4:+80", &a), -1);
    CHECK_INT(options_parse_listen("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa:1", &a), -1);
    CHECK_INT(options_parse_listen(NULL, &a), -1);
}

/* binPath arguments, then `sc start` arguments on the same struct: the
 * second --listen list replaces the first, other options override. */
static void test_layered_parse(void)
{
    relay_options o;
    char *bin_args[] = { "ChatRelay.exe", "--listen", "0.0.0.0:7777", "--listen", "[::]:7777", "--replay", "5" };
    char *start_args[] = { "ChatRelay", "--listen", "127.0.0.1:9000", "--replay", "7" };
    char *no_listen[] = { "ChatRelay", "--max-per-ip", "2" };

    options_defaults(&o);
    CHECK_INT(options_parse(&o, ARGC(bin_args), bin_args, 1, err, sizeof err), 0);
    CHECK_INT(o.listen_count, 2);
    CHECK_INT(options_parse(&o, ARGC(start_args), start_args, 1, err, sizeof err), 0);
    CHECK_INT(o.listen_count, 1);
    CHECK_STR(o.listen[0].host, "127.0.0.1");
    CHECK_INT(o.listen[0].port, 9000);
    CHECK_INT(o.replay, 7);
    CHECK_INT(options_parse(&o, ARGC(no_listen), no_listen, 1, err, sizeof err), 0);
    CHECK_INT(o.listen_count, 1);        /* kept when not given again */
    CHECK_INT(o.max_per_ip, 2);

    /* A NULL err buffer is allowed. */
    CHECK_INT(options_parse(&o, 1, no_listen, 0, NULL, 0), -1);
}

static void test_help(void)
{
    const char *help = options_help();
    const char *names[] = {
        "--console", "--help", "--version", "--listen", "--max-sessions", "--max-queue-bytes",
        "--db", "--no-history", "--replay", "--retain-days", "--retain-messages",
        "--flood-burst", "--flood-rate", "--flood-kick", "--max-per-ip", "--idle-timeout", "--log-private",
        "--log ", "--log-max-bytes", "--name", "--listen-irc", "--greet-delay", "--irc-ping",
        "--password-file"
    };
    size_t i;
    CHECK(help != NULL && strlen(help) > 100);
    for (i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strstr(help, names[i]) == NULL) {
            check_failed++;
            fprintf(stderr, "--help does not mention %s\n", names[i]);
        } else {
            check_passed++;
        }
    }
    CHECK(strstr(help, "default 1024") != NULL);
    CHECK(strstr(help, "default 7777") != NULL);
    /* Every option the parser knows is in the help: "-h" aliases work too. */
    {
        relay_options o;
        char *h[] = { "-h" };
        CHECK_INT(parse(&o, 1, h), 0);
        CHECK_INT(o.help, 1);
    }
}

static void test_cluster_options(void)
{
    relay_options o;
    char *a[] = { "--cluster", "nats://127.0.0.1:4222,10.0.0.2,nats-b.example:14222", "--node", "relay-1_a",
                  "--cluster-credentials", "C:\\nats\\relay.creds" };
    CHECK_INT(parse(&o, ARGC(a), a), 0);
    CHECK_INT(o.cluster_count, 3);
    CHECK_STR(o.cluster[0].host, "127.0.0.1");
    CHECK_INT(o.cluster[0].port, 4222);
    CHECK_STR(o.cluster[1].host, "10.0.0.2");
    CHECK_INT(o.cluster[1].port, 4222);   /* NATS's port when none is given */
    CHECK_STR(o.cluster[2].host, "nats-b.example");
    CHECK_INT(o.cluster[2].port, 14222);
    CHECK_STR(o.node, "relay-1_a");
    CHECK_STR(o.cluster_credentials, "C:\\nats\\relay.creds");
    /* a single relay by default, its node named at start */
    options_defaults(&o);
    CHECK_INT(o.cluster_count, 0);
    CHECK_STR(o.node, "");
    char *b1[] = { "--cluster", "tls://10.0.0.1:4222" };
    char *b2[] = { "--cluster", "nats://:4222" };
    char *b3[] = { "--cluster", "a:1,b:2,c:3,d:4,e:5,f:6,g:7,h:8,i:9" };
    char *b4[] = { "--cluster", "a:1,,b:2" };
    char *b5[] = { "--node", "has space" };
    char *b6[] = { "--node", "a23456789012345678901234567890123" };
    char *b7[] = { "--cluster", "a:70000" };
    char *b8[] = { "--node", "" };
    check_rejected(ARGC(b1), b1, "--cluster: expected nats://HOST:PORT (or HOST:PORT), got 'tls://10.0.0.1:4222'");
    check_rejected(ARGC(b2), b2, "--cluster: expected nats://HOST:PORT");
    check_rejected(ARGC(b3), b3, "--cluster: at most 8 servers");
    check_rejected(ARGC(b4), b4, "--cluster: expected nats://HOST:PORT (or HOST:PORT), got ''");
    check_rejected(ARGC(b5), b5, "--node: expected 1 to 32 of A-Z a-z 0-9 _ -, got 'has space'");
    check_rejected(ARGC(b6), b6, "--node: expected 1 to 32");
    check_rejected(ARGC(b7), b7, "--cluster: expected nats://HOST:PORT");
    check_rejected(ARGC(b8), b8, "--node: expected 1 to 32");
}

/* --password-file names a file (the secret itself is never an argument). */
static void test_password_file(void)
{
    relay_options o;
    char *a[] = { "--password-file=C:\\ChatRelay\\password.txt" };
    CHECK_INT(parse(&o, ARGC(a), a), 0);
    CHECK_STR(o.password_file, "C:\\ChatRelay\\password.txt");
    options_defaults(&o);
    CHECK_STR(o.password_file, "");
    char *b[] = { "--password-file", "" };
    check_rejected(ARGC(b), b, "--password-file: expected a path of 1 to");
}

int main(void)
{
    test_defaults();
    test_cluster_options();
    test_password_file();
    test_every_option();
    test_rejections();
    test_listen_forms();
    test_listen_irc();
    test_layered_parse();
    test_help();
    return check_done();
}

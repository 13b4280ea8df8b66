/* JSON (core/json.c): what json_valid accepts and refuses; the fields the
 * cluster mode reads from documents captured from nats-server 2.9.10 (INFO
 * alone and in a cluster, JetStream API replies, PubAcks); paths, duplicate
 * keys, escaped keys; the typed getters at their bounds; array iteration;
 * unescaping; the writer's bytes and write -> read round trips.  Every
 * document is read from a heap copy of exactly its length, so under ASan a
 * read one byte past its end fails the test. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "json.h"

/* A heap copy without a NUL after it (so over-reads are caught); freed by the caller. */
static char *exact(const char *s, size_t n)
{
    char *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "malloc(%zu) failed\n", n);
        exit(2);
    }
    memcpy(p, s, n);
    return p;
}

static int valid_n(const char *s, size_t n)
{
    char *p = exact(s, n);
    int rc = json_valid(p, n);
    free(p);
    return rc;
}

static int valid(const char *s)
{
    return valid_n(s, strlen(s));
}

/* Captured from nats-server 2.9.10 (nats-server -js -a 127.0.0.1 -p PORT -sd DIR,
 * raw sockets): the INFO line's JSON (with the space the server sends before
 * CRLF), then the same from a node of a two-node cluster (cluster, connect_urls). */
static const char INFO_SINGLE[] =
    "{\"server_id\":\"NDJN37C4FORUJPHDE2MHD2KLPA5CDP5MXQXIMPPPM7OIQECI7P4SIZOZ\",\"server_name\":\"NDJN37C4FORUJPHDE2MHD2KLPA5CDP5MXQXIMPPPM7OIQECI7P4SIZOZ\","
    "\"version\":\"2.9.10\",\"proto\":1,\"go\":\"go1.19.8\",\"host\":\"127.0.0.1\",\"port\":52393,\"headers\":true,"
    "\"max_payload\":1048576,\"jetstream\":true,\"client_id\":4,\"client_ip\":\"127.0.0.1\"} ";
static const char INFO_CLUSTER[] =
    "{\"server_id\":\"NBRKZCE55CWUWIXP64TIMO4DL6XLEQFATABWGXFVXZKRQ6IOQVDLPT4O\",\"server_name\":\"n1\","
    "\"version\":\"2.9.10\",\"proto\":1,\"go\":\"go1.19.8\",\"host\":\"127.0.0.1\",\"port\":45101,\"headers\":true,"
    "\"max_payload\":1048576,\"jetstream\":true,\"client_id\":9,\"client_ip\":\"127.0.0.1\",\"cluster\":\"CR\","
    "\"connect_urls\":[\"127.0.0.1:45101\",\"127.0.0.1:50771\"]} ";
/* Replies to $JS.API.STREAM.CREATE.CHAT {"name":"CHAT","subjects":["chatrelay.chat"]},
 * $JS.API.STREAM.INFO.CHAT, $JS.API.STREAM.INFO.NOPE; the PubAcks of an HPUB to
 * chatrelay.chat with Nats-Msg-Id: m-1, sent twice; the reply to
 * $JS.API.CONSUMER.CREATE.CHAT {"stream_name":"CHAT","config":{"deliver_policy":"all","ack_policy":"explicit"}}. */
static const char STREAM_CREATE[] =
    "{\"type\":\"io.nats.jetstream.api.v1.stream_create_response\",\"config\":{\"name\":\"CHAT\",\"subjects\":[\"chatrelay.chat\"],"
    "\"retention\":\"limits\",\"max_consumers\":-1,\"max_msgs\":-1,\"max_bytes\":-1,\"max_age\":0,\"max_msgs_per_subject\":-1,"
    "\"max_msg_size\":-1,\"discard\":\"old\",\"storage\":\"file\",\"num_replicas\":1,\"duplicate_window\":120000000000,"
    "\"allow_direct\":false,\"mirror_direct\":false,\"sealed\":false,\"deny_delete\":false,\"deny_purge\":false,"
    "\"allow_rollup_hdrs\":false},\"created\":\"2026-12-01T15:32:23.117079813Z\",\"state\":{\"messages\":0,"
    "\"bytes\":0,\"first_seq\":0,\"first_ts\":\"0001-01-01T00:00:00Z\",\"last_seq\":0,\"last_ts\":\"0001-01-01T00:00:00Z\","
    "\"consumer_count\":0},\"did_create\":true}";

static const char STREAM_INFO[] =
    "{\"type\":\"io.nats.jetstream.api.v1.stream_info_response\",\"total\":0,\"offset\":0,\"limit\":0,"
    "\"config\":{\"name\":\"CHAT\",\"subjects\":[\"chatrelay.chat\"],\"retention\":\"limits\",\"max_consumers\":-1,"
    "\"max_msgs\":-1,\"max_bytes\":-1,\"max_age\":0,\"max_msgs_per_subject\":-1,\"max_msg_size\":-1,\"discard\":\"old\","
    "\"storage\":\"file\",\"num_replicas\":1,\"duplicate_window\":120000000000,\"allow_direct\":false,"
    "\"mirror_direct\":false,\"sealed\":false,\"deny_delete\":false,\"deny_purge\":false,\"allow_rollup_hdrs\":false},"
    "\"created\":\"2026-12-01T15:32:23.117079813Z\",\"state\":{\"messages\":0,\"bytes\":0,\"first_seq\":0,"
    "\"first_ts\":\"0001-01-01T00:00:00Z\",\"last_seq\":0,\"last_ts\":\"0001-01-01T00:00:00Z\",\"consumer_count\":0}}";

static const char STREAM_NOPE[] =
    "{\"type\":\"io.nats.jetstream.api.v1.stream_info_response\",\"error\":{\"code\":404,\"err_code\":10059,"
    "\"description\":\"stream not found\"},\"total\":0,\"offset\":0,\"limit\":0}";

static const char PUBACK[] =
    "{\"stream\":\"CHAT\", \"seq\":1}";

static const char PUBACK_DUP[] =
    "{\"stream\":\"CHAT\", \"seq\":1,\"duplicate\": true}";

static const char CONSUMER_CREATE[] =
    "{\"type\":\"io.nats.jetstream.api.v1.consumer_create_response\",\"stream_name\":\"CHAT\",\"name\":\"TC1DwqJe\","
    "\"created\":\"2026-12-01T15:32:23.120213932Z\",\"config\":{\"deliver_policy\":\"all\",\"ack_policy\":\"explicit\","
    "\"ack_wait\":30000000000,\"max_deliver\":-1,\"replay_policy\":\"instant\",\"max_waiting\":512,\"max_ack_pending\":1000,"
    "\"inactive_threshold\":5000000000,\"num_replicas\":0},\"delivered\":{\"consumer_seq\":0,\"stream_seq\":0},"
    "\"ack_floor\":{\"consumer_seq\":0,\"stream_seq\":0},\"num_ack_pending\":0,\"num_redelivered\":0,"
    "\"num_waiting\":0,\"num_pending\":1}";


static void test_valid(void)
{
    static const char *const good[] = {
        "0", "-0", "1", "-12", "3.25", "1e9", "1E+9", "-1.5e-3", "0.0", "true", "false", "null",
        "\"\"", "\"a\"", "  \t\r\n 7 \n", "[]", "{}", "[ ]", "{ }", "[1,2,[3,[]],{}]",
        "{\"a\":{\"b\":[true,false,null]},\"c\":\"d\"}", " { \"a\" : 1 , \"b\" : [ 2 , 3 ] } ",
        "\"\\\" \\\\ \\/ \\b \\f \\n \\r \\t\"", "\"\\u0041\\u00e9\\u20ac\"", "\"\\uD83D\\uDE00\"",
        "\"\\ud83d\\ude00\"", "\"h\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xef\xbf\xbf \xf4\x8f\xbf\xbf\"",
        "\"\\u0000\"", "{\"a\":1,\"a\":2}", "\"\x7f\"",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        if (valid(good[i]) != 0)
            fprintf(stderr, "refused: %s\n", good[i]);
        CHECK_INT(valid(good[i]), 0);
    }
    static const char *const bad[] = {
        "", " ", "\n\t", "tru", "True", "nul", "falsey", "nan", "Infinity", "+1", "01", "-01", "00",
        "1.", ".5", "-", "1e", "1e+", "0x10", "1 2", "[1] x", "{} {}", "\"a\" \"b\"", "[1,]", "[,1]", "[,]",
        "{\"a\":1,}", "{,}", "{\"a\"}", "{\"a\":}", "{\"a\" 1}", "{a:1}", "{'a':1}", "{1:1}", "[1 2]",
        "[", "]", "{", "}", "[1", "{\"a\":1", "[[]", "{\"a\":[}", "[}", "{]",
        "\"", "\"abc", "\"abc\\\"", "\"\\\"", "\"\\x\"", "\"\\U0041\"", "\"\\u12\"", "\"\\u12G4\"", "\"\\'\"",
        "\"\\uD800\"", "\"\\uDC00\"", "\"\\uDBFF\\u0041\"", "\"\\uD800\\uD800\"", "\"\\uD800x\"",
        "\"\\uDE00\\uD83D\"", "\"a\tb\"", "\"a\nb\"", "\"\x1f\"",
        "\"\x80\"", "\"\xc0\xaf\"", "\"\xc1\xbf\"", "\"\xc3\"", "\"\xe0\x80\xaf\"", "\"\xe2\x82\"",
        "\"\xed\xa0\x80\"", "\"\xf0\x80\x80\xaf\"", "\"\xf4\x90\x80\x80\"", "\"\xf5\x80\x80\x80\"", "\"\xff\"",
        "\xef\xbb\xbf{}", "//c\n1", "/*c*/1",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (valid(bad[i]) == 0)
            fprintf(stderr, "accepted: %s\n", bad[i]);
        CHECK_INT(valid(bad[i]), -1);
    }
    /* a NUL inside a document, in a string or after the value */
    CHECK_INT(valid_n("\"a\0b\"", 5), -1);
    CHECK_INT(valid_n("[1]\0", 4), -1);
    CHECK_INT(valid_n("1", 0), -1);
    CHECK_INT(json_valid(NULL, 0), -1);
}

/* '[' or '{"k":' depth times, then the closers. */
static size_t nest(char *out, int depth, int objects)
{
    size_t n = 0;
    for (int i = 0; i < depth; i++) {
        memcpy(out + n, objects ? "{\"k\":" : "[", objects ? 5 : 1);
        n += objects ? 5 : 1;
    }
    out[n++] = '1';
    for (int i = 0; i < depth; i++)
        out[n++] = objects ? '}' : ']';
    return n;
}

static void test_depth(void)
{
    char buf[400];
    for (int objects = 0; objects <= 1; objects++) {
        CHECK_INT(valid_n(buf, nest(buf, JSON_MAX_DEPTH, objects)), 0);
        CHECK_INT(valid_n(buf, nest(buf, JSON_MAX_DEPTH + 1, objects)), -1);
    }
    /* the limit counts containers, not their kind: 16 arrays in 17 objects */
    size_t n = 0;
    for (int i = 0; i < 33; i++)
        n += (size_t)sprintf(buf + n, i % 2 ? "[" : "{\"k\":");
    n += (size_t)sprintf(buf + n, "0");
    for (int i = 32; i >= 0; i--)
        buf[n++] = i % 2 ? ']' : '}';
    CHECK_INT(valid_n(buf, n), -1);
    /* depth 32 is still read to the bottom */
    n = nest(buf, JSON_MAX_DEPTH, 1);
    char path[2 * JSON_MAX_DEPTH];
    for (int i = 0; i < JSON_MAX_DEPTH; i++)
        memcpy(path + 2 * i, "k.", 2);
    path[2 * JSON_MAX_DEPTH - 1] = '\0';
    uint64_t v = 9;
    char *p = exact(buf, n);
    CHECK_INT(json_get_u64(p, n, path, &v), 0);
    CHECK_INT(v, 1);
    free(p);
    /* 100,000 nested arrays: refused without recursion (no stack overflow) */
    size_t deep = 100000;
    char *d = malloc(2 * deep);
    memset(d, '[', deep);
    memset(d + deep, ']', deep);
    CHECK_INT(json_valid(d, 2 * deep), -1);
    CHECK_INT(json_get(d, 2 * deep, "", NULL, NULL), JSON_ABSENT);
    free(d);
}

/* A document as a heap copy of its exact length, for the field checks below. */
typedef struct doc {
    char *p;
    size_t n;
} doc;

static doc open_doc(const char *s)
{
    doc d;
    d.n = strlen(s);
    d.p = exact(s, d.n);
    CHECK_INT(json_valid(d.p, d.n), 0);
    return d;
}

static void check_string(doc d, const char *path, const char *want)
{
    char out[128];
    int rc = json_get_string(d.p, d.n, path, out, sizeof out);
    if (rc != 0)
        fprintf(stderr, "no string at %s\n", path);
    else if (strcmp(out, want) != 0)
        fprintf(stderr, "at %s:\n", path);
    CHECK_INT(rc, 0);
    CHECK_STR(out, want);
}

static void check_u64(doc d, const char *path, uint64_t want)
{
    uint64_t v = 0xdead;
    int rc = json_get_u64(d.p, d.n, path, &v);
    if (rc != 0)
        fprintf(stderr, "no u64 at %s\n", path);
    else if (v != want)
        fprintf(stderr, "at %s: %llu, not %llu\n", path, (unsigned long long)v, (unsigned long long)want);
    CHECK_INT(rc, 0);
    CHECK(v == want);
}

static void check_absent(doc d, const char *path)
{
    const char *v = NULL;
    size_t n = 0;
    json_type t = json_get(d.p, d.n, path, &v, &n);
    if (t != JSON_ABSENT)
        fprintf(stderr, "found at %s: %.*s\n", path, (int)n, v);
    CHECK_INT(t, JSON_ABSENT);
}

static void test_nats_info(void)
{
    doc d = open_doc(INFO_SINGLE);
    int b = 0;
    check_string(d, "server_id", "NDJN37C4FORUJPHDE2MHD2KLPA5CDP5MXQXIMPPPM7OIQECI7P4SIZOZ");
    check_u64(d, "max_payload", 1048576);
    CHECK_INT(json_get_bool(d.p, d.n, "headers", &b), 0);
    CHECK_INT(b, 1);
    CHECK_INT(json_get_bool(d.p, d.n, "jetstream", &b), 0);
    check_absent(d, "cluster");        /* not clustered */
    check_absent(d, "connect_urls");
    check_string(d, "version", "2.9.10");
    /* the document itself, without the space the server sent after it */
    const char *v;
    size_t n;
    CHECK_INT(json_get(d.p, d.n, "", &v, &n), JSON_OBJECT);
    CHECK(v == d.p);
    CHECK_INT(n, d.n - 1);
    free(d.p);

    d = open_doc(INFO_CLUSTER);
    check_string(d, "server_id", "NBRKZCE55CWUWIXP64TIMO4DL6XLEQFATABWGXFVXZKRQ6IOQVDLPT4O");
    check_string(d, "server_name", "n1");
    check_u64(d, "max_payload", 1048576);
    CHECK_INT(json_get_bool(d.p, d.n, "headers", &b), 0);
    CHECK_INT(b, 1);
    check_string(d, "cluster", "CR");
    CHECK_INT(json_get(d.p, d.n, "connect_urls", &v, &n), JSON_ARRAY);
    static const char *const urls[] = { "127.0.0.1:45101", "127.0.0.1:50771" };
    size_t pos = 0, count = 0;
    const char *e;
    size_t en;
    json_type t;
    while ((t = json_array_next(v, n, &pos, &e, &en)) != JSON_ABSENT) {
        char url[64];
        CHECK_INT(t, JSON_STRING);
        CHECK_INT(json_unescape(e, en, url, sizeof url), 0);
        if (count < 2)
            CHECK_STR(url, urls[count]);
        count++;
    }
    CHECK_INT(count, 2);
    free(d.p);
}

/* STREAM.CREATE's and STREAM.INFO's replies carry the same config and state. */
static void check_stream(doc d)
{
    check_string(d, "config.name", "CHAT");
    const char *v, *e;
    size_t n, en, pos = 0;
    char subject[64];
    CHECK_INT(json_get(d.p, d.n, "config.subjects", &v, &n), JSON_ARRAY);
    CHECK_INT(json_array_next(v, n, &pos, &e, &en), JSON_STRING);
    CHECK_INT(json_unescape(e, en, subject, sizeof subject), 0);
    CHECK_STR(subject, "chatrelay.chat");
    CHECK_INT(json_array_next(v, n, &pos, &e, &en), JSON_ABSENT);
    CHECK_INT(json_array_next(v, n, &pos, &e, &en), JSON_ABSENT);   /* and stays at the end */
    check_u64(d, "config.num_replicas", 1);
    check_u64(d, "config.duplicate_window", 120000000000ull);
    int64_t max_msgs = 0;
    CHECK_INT(json_get_i64(d.p, d.n, "config.max_msgs", &max_msgs), 0);
    CHECK_INT(max_msgs, -1);
    uint64_t u;
    CHECK_INT(json_get_u64(d.p, d.n, "config.max_msgs", &u), -1);   /* negative */
    check_string(d, "created", "2026-12-01T15:32:23.117079813Z");
    check_u64(d, "state.first_seq", 0);
    check_u64(d, "state.last_seq", 0);
    check_absent(d, "error");
    check_absent(d, "error.code");
    check_absent(d, "config.name.x");        /* a step into a string */
    check_absent(d, "config.subjects.0");    /* arrays are not indexed by paths */
    check_absent(d, "first_seq");            /* only at its own level */
}

static void test_nats_jetstream(void)
{
    doc d = open_doc(STREAM_CREATE);
    int b = 0;
    check_stream(d);
    CHECK_INT(json_get_bool(d.p, d.n, "did_create", &b), 0);
    CHECK_INT(b, 1);
    check_string(d, "type", "io.nats.jetstream.api.v1.stream_create_response");
    free(d.p);

    d = open_doc(STREAM_INFO);
    check_stream(d);
    check_absent(d, "did_create");
    free(d.p);

    d = open_doc(STREAM_NOPE);
    check_u64(d, "error.code", 404);
    check_u64(d, "error.err_code", 10059);
    check_string(d, "error.description", "stream not found");
    check_absent(d, "config");
    check_absent(d, "config.name");
    free(d.p);

    d = open_doc(PUBACK);
    check_string(d, "stream", "CHAT");
    check_u64(d, "seq", 1);
    CHECK_INT(json_get_bool(d.p, d.n, "duplicate", &b), -1);   /* absent: not a duplicate */
    free(d.p);

    d = open_doc(PUBACK_DUP);
    check_string(d, "stream", "CHAT");
    check_u64(d, "seq", 1);
    b = 0;
    CHECK_INT(json_get_bool(d.p, d.n, "duplicate", &b), 0);
    CHECK_INT(b, 1);
    free(d.p);

    d = open_doc(CONSUMER_CREATE);
    check_string(d, "name", "TC1DwqJe");
    check_string(d, "stream_name", "CHAT");
    check_string(d, "config.deliver_policy", "all");
    check_u64(d, "config.ack_wait", 30000000000ull);
    check_u64(d, "delivered.stream_seq", 0);
    check_u64(d, "num_pending", 1);
    free(d.p);
}

/* Every proper prefix of a captured document is refused (but the one that
 * only lacks the trailing space), and reading one stays inside it. */
static void test_prefixes(void)
{
    static const char *const docs[] = { INFO_CLUSTER, STREAM_CREATE, STREAM_NOPE, PUBACK_DUP, CONSUMER_CREATE };
    for (size_t k = 0; k < sizeof docs / sizeof docs[0]; k++) {
        size_t full = strlen(docs[k]), end = full;
        while (docs[k][end - 1] == ' ')
            end--;
        int wrong = 0;
        for (size_t n = 0; n < end; n++) {
            char *p = exact(docs[k], n);
            const char *v;
            size_t vn;
            char s[64];
            uint64_t u;
            if (json_valid(p, n) != -1)
                wrong++;
            /* undefined answers, but in bounds (ASan) */
            (void)json_get(p, n, "", &v, &vn);
            (void)json_get(p, n, "config.subjects", &v, &vn);
            (void)json_get_string(p, n, "error.description", s, sizeof s);
            (void)json_get_u64(p, n, "state.last_seq", &u);
            if (json_get(p, n, "connect_urls", &v, &vn) == JSON_ARRAY) {
                size_t pos = 0;
                while (json_array_next(v, vn, &pos, &v, &vn) != JSON_ABSENT)
                    ;
            }
            free(p);
        }
        CHECK_INT(wrong, 0);
        CHECK_INT(valid_n(docs[k], end), 0);
    }
}

static void test_paths(void)
{
    doc d = open_doc("{\"a\":1,\"b\":{\"c\":{\"d\":\"deep\"},\"a\":2},\"a\":3,"
                     "\"k\\u0065y\":\"escaped\",\"\\u00e9t\\u00e9\":\"summer\",\"x\\\"y\":4,"
                     "\"\":{\"\":5},\"dot.ted\":6,\"n\":null,\"arr\":[1,{\"a\":7}]}");
    const char *v;
    size_t n;
    check_u64(d, "a", 3);                  /* the last of three wins */
    check_u64(d, "b.a", 2);
    check_string(d, "b.c.d", "deep");
    CHECK_INT(json_get(d.p, d.n, "b.c", &v, &n), JSON_OBJECT);
    CHECK_MEM(v, n, "{\"d\":\"deep\"}");
    CHECK_INT(json_get(d.p, d.n, "b.c.d", &v, &n), JSON_STRING);
    CHECK_MEM(v, n, "\"deep\"");           /* with its quotes */
    check_string(d, "key", "escaped");     /* keys compared unescaped */
    check_absent(d, "k\\u0065y");
    check_string(d, "\xc3\xa9t\xc3\xa9", "summer");
    check_u64(d, "x\"y", 4);
    check_u64(d, ".", 5);                  /* the empty key, twice */
    check_absent(d, "dot.ted");            /* a key holding '.' cannot be named */
    CHECK_INT(json_get(d.p, d.n, "n", &v, &n), JSON_NULL);
    CHECK_MEM(v, n, "null");
    CHECK_INT(json_get(d.p, d.n, "arr", &v, &n), JSON_ARRAY);
    CHECK_MEM(v, n, "[1,{\"a\":7}]");
    check_absent(d, "arr.a");
    check_absent(d, "b.c.d.e");
    check_absent(d, "A");
    check_absent(d, "b.");
    check_absent(d, "ke");
    check_absent(d, "keyy");
    CHECK_INT(json_get(d.p, d.n, "a", NULL, NULL), JSON_NUMBER);   /* the spans are optional */
    free(d.p);

    /* the document is no object: only "" reaches it */
    d = open_doc(" [1,2] ");
    CHECK_INT(json_get(d.p, d.n, "", &v, &n), JSON_ARRAY);
    CHECK_MEM(v, n, "[1,2]");
    check_absent(d, "a");
    free(d.p);
    d = open_doc("\"s\"");
    CHECK_INT(json_get(d.p, d.n, "", &v, &n), JSON_STRING);
    check_absent(d, "s");
    free(d.p);
    d = open_doc("{}");
    check_absent(d, "a");
    check_absent(d, ".");
    free(d.p);
    CHECK_INT(json_get(NULL, 0, "", &v, &n), JSON_ABSENT);
    CHECK_INT(json_get("{}", 2, NULL, &v, &n), JSON_ABSENT);
}

static void test_numbers(void)
{
    doc d = open_doc("{\"max\":18446744073709551615,\"over\":18446744073709551616,\"big\":99999999999999999999,"
                     "\"i_max\":9223372036854775807,\"i_over\":9223372036854775808,\"i_min\":-9223372036854775808,"
                     "\"i_under\":-9223372036854775809,\"zero\":0,\"neg_zero\":-0,\"neg\":-5,\"frac\":1.0,"
                     "\"exp\":1e3,\"s\":\"7\",\"t\":true,\"f\":false,\"nul\":null,\"o\":{},\"a\":[]}");
    uint64_t u = 0;
    int64_t i = 0;
    int b = 7;
    CHECK_INT(json_get_u64(d.p, d.n, "max", &u), 0);
    CHECK(u == UINT64_MAX);
    CHECK_INT(json_get_u64(d.p, d.n, "over", &u), -1);
    CHECK_INT(json_get_u64(d.p, d.n, "big", &u), -1);
    CHECK_INT(json_get_u64(d.p, d.n, "i_over", &u), 0);
    CHECK(u == (uint64_t)INT64_MAX + 1);
    CHECK_INT(json_get_u64(d.p, d.n, "zero", &u), 0);
    CHECK(u == 0);
    CHECK_INT(json_get_u64(d.p, d.n, "neg", &u), -1);
    CHECK_INT(json_get_u64(d.p, d.n, "frac", &u), -1);
    CHECK_INT(json_get_u64(d.p, d.n, "exp", &u), -1);
    CHECK_INT(json_get_u64(d.p, d.n, "s", &u), -1);
    CHECK_INT(json_get_u64(d.p, d.n, "t", &u), -1);
    CHECK_INT(json_get_u64(d.p, d.n, "nul", &u), -1);
    CHECK_INT(json_get_u64(d.p, d.n, "missing", &u), -1);

    CHECK_INT(json_get_i64(d.p, d.n, "i_max", &i), 0);
    CHECK(i == INT64_MAX);
    CHECK_INT(json_get_i64(d.p, d.n, "i_min", &i), 0);
    CHECK(i == INT64_MIN);
    CHECK_INT(json_get_i64(d.p, d.n, "i_over", &i), -1);
    CHECK_INT(json_get_i64(d.p, d.n, "i_under", &i), -1);
    CHECK_INT(json_get_i64(d.p, d.n, "max", &i), -1);
    CHECK_INT(json_get_i64(d.p, d.n, "neg", &i), 0);
    CHECK_INT(i, -5);
    CHECK_INT(json_get_i64(d.p, d.n, "neg_zero", &i), 0);
    CHECK_INT(i, 0);
    CHECK_INT(json_get_i64(d.p, d.n, "frac", &i), -1);
    CHECK_INT(json_get_i64(d.p, d.n, "exp", &i), -1);
    CHECK_INT(json_get_i64(d.p, d.n, "s", &i), -1);

    CHECK_INT(json_get_bool(d.p, d.n, "t", &b), 0);
    CHECK_INT(b, 1);
    CHECK_INT(json_get_bool(d.p, d.n, "f", &b), 0);
    CHECK_INT(b, 0);
    CHECK_INT(json_get_bool(d.p, d.n, "nul", &b), -1);
    CHECK_INT(json_get_bool(d.p, d.n, "zero", &b), -1);
    CHECK_INT(json_get_bool(d.p, d.n, "s", &b), -1);

    char s[8];
    CHECK_INT(json_get_string(d.p, d.n, "t", s, sizeof s), -1);
    CHECK_INT(json_get_string(d.p, d.n, "o", s, sizeof s), -1);
    CHECK_INT(json_get_string(d.p, d.n, "s", s, sizeof s), 0);
    CHECK_STR(s, "7");
    free(d.p);
}

static void test_arrays(void)
{
    doc d = open_doc("{\"a\":[ 1 , \"two\" ,[3,[4]], {\"five\":5} ,true,null,-7.5e1 ],\"e\":[ ],\"s\":\"x\"}");
    static const json_type types[] = { JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT, JSON_BOOL, JSON_NULL, JSON_NUMBER };
    static const char *const spans[] = { "1", "\"two\"", "[3,[4]]", "{\"five\":5}", "true", "null", "-7.5e1" };
    const char *v, *e;
    size_t n, en, pos = 0, count = 0;
    json_type t;
    CHECK_INT(json_get(d.p, d.n, "a", &v, &n), JSON_ARRAY);
    while ((t = json_array_next(v, n, &pos, &e, &en)) != JSON_ABSENT && count < 7) {
        CHECK_INT(t, types[count]);
        CHECK_MEM(e, en, spans[count]);
        if (t == JSON_OBJECT) {   /* an element is a document of its own */
            uint64_t five = 0;
            CHECK_INT(json_get_u64(e, en, "five", &five), 0);
            CHECK_INT(five, 5);
        }
        if (t == JSON_ARRAY) {
            size_t p2 = 0;
            const char *e2;
            size_t en2;
            CHECK_INT(json_array_next(e, en, &p2, &e2, &en2), JSON_NUMBER);
            CHECK_INT(json_array_next(e, en, &p2, &e2, &en2), JSON_ARRAY);
            CHECK_MEM(e2, en2, "[4]");
            CHECK_INT(json_array_next(e, en, &p2, &e2, &en2), JSON_ABSENT);
        }
        count++;
    }
    CHECK_INT(count, 7);
    CHECK_INT(t, JSON_ABSENT);
    pos = 0;
    CHECK_INT(json_get(d.p, d.n, "e", &v, &n), JSON_ARRAY);
    CHECK_INT(json_array_next(v, n, &pos, &e, &en), JSON_ABSENT);
    CHECK_INT(json_array_next(v, n, &pos, &e, &en), JSON_ABSENT);
    /* no array: nothing to iterate */
    pos = 0;
    CHECK_INT(json_get(d.p, d.n, "s", &v, &n), JSON_STRING);
    CHECK_INT(json_array_next(v, n, &pos, &e, &en), JSON_ABSENT);
    pos = 0;
    CHECK_INT(json_array_next(d.p, d.n, &pos, &e, &en), JSON_ABSENT);
    free(d.p);
}

static int unescape(const char *raw, char *out, size_t cap)
{
    size_t n = strlen(raw);
    char *p = exact(raw, n);
    int rc = json_unescape(p, n, out, cap);
    free(p);
    return rc;
}

static void test_unescape(void)
{
    char out[64];
    CHECK_INT(unescape("\"a\\\"b\\\\c\\/d\\be\\ff\\ng\\rh\\ti\"", out, sizeof out), 0);
    CHECK_STR(out, "a\"b\\c/d\be\ff\ng\rh\ti");
    CHECK_INT(unescape("\"\\u0041\\u00e9\\u20AC\\uD83D\\uDE00\\u007f\\u0001\"", out, sizeof out), 0);
    CHECK_STR(out, "A\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\x7f\x01");
    CHECK_INT(unescape("\"\\uDBFF\\uDFFF\"", out, sizeof out), 0);
    CHECK_STR(out, "\xf4\x8f\xbf\xbf");
    CHECK_INT(unescape("\"h\xc3\xa9\"", out, sizeof out), 0);
    CHECK_STR(out, "h\xc3\xa9");
    CHECK_INT(unescape("\"\"", out, sizeof out), 0);
    CHECK_STR(out, "");
    CHECK_INT(unescape("\"a\\u0000b\"", out, sizeof out), -1);   /* a C string cannot hold it */
    CHECK_STR(out, "");
    /* not one valid string */
    CHECK_INT(unescape("\"a", out, sizeof out), -1);
    CHECK_INT(unescape("a\"", out, sizeof out), -1);
    CHECK_INT(unescape("\"a\"b\"", out, sizeof out), -1);
    CHECK_INT(unescape("\"\\uD800\"", out, sizeof out), -1);
    CHECK_INT(unescape("\"\\q\"", out, sizeof out), -1);
    CHECK_INT(unescape("\"\xff\"", out, sizeof out), -1);
    CHECK_INT(unescape("\"", out, sizeof out), -1);
    CHECK_INT(unescape("", out, sizeof out), -1);
    CHECK_INT(unescape("7", out, sizeof out), -1);
    /* capacity: "abc" and the 2-byte e-acute need exactly their bytes + the NUL */
    CHECK_INT(unescape("\"abc\"", out, 4), 0);
    CHECK_STR(out, "abc");
    CHECK_INT(unescape("\"abc\"", out, 3), -1);
    CHECK_STR(out, "");
    CHECK_INT(unescape("\"\\u00e9\"", out, 3), 0);
    CHECK_INT(unescape("\"\\u00e9\"", out, 2), -1);   /* never half a character */
    CHECK_INT(unescape("\"\"", out, 1), 0);
    CHECK_INT(unescape("\"\"", out, 0), -1);
    CHECK_INT(json_unescape(NULL, 0, out, sizeof out), -1);
}

static void test_write(void)
{
    char out[128];
    size_t n = json_write_string(out, sizeof out, "a\"b\\c\nd\re\tf\x01\x1f\x7f/\xc3\xa9");
    CHECK_MEM(out, n, "\"a\\\"b\\\\c\\nd\\re\\tf\\u0001\\u001f\x7f/\xc3\xa9\"");
    n = json_write_string(out, sizeof out, "");
    CHECK_MEM(out, n, "\"\"");
    n = json_write_string_n(out, sizeof out, "a\0b", 3);
    CHECK_MEM(out, n, "\"a\\u0000b\"");
    n = json_write_string_n(out, sizeof out, "\b\f", 2);
    CHECK_MEM(out, n, "\"\\u0008\\u000c\"");
    /* exactly what it needs, and every capacity below it: 0 */
    const char *s = "q\"\x01\xe2\x82\xac";
    size_t need = json_write_string(out, sizeof out, s);
    CHECK_INT(need, 1 + 1 + 2 + 6 + 3 + 1);
    int wrong = 0;
    for (size_t cap = 0; cap < need; cap++) {
        char *small = malloc(cap ? cap : 1);
        if (json_write_string(small, cap, s) != 0)
            wrong++;
        free(small);
    }
    CHECK_INT(wrong, 0);
    char *fit = malloc(need);
    CHECK_INT(json_write_string(fit, need, s), need);
    free(fit);
    /* what is not UTF-8 is refused, not written as broken JSON */
    CHECK_INT(json_write_string(out, sizeof out, "a\xff"), 0);
    CHECK_INT(json_write_string(out, sizeof out, "\xc3"), 0);
    CHECK_INT(json_write_string(out, sizeof out, "\xed\xa0\x80"), 0);   /* an encoded surrogate */
    CHECK_INT(json_write_string(out, sizeof out, "\xc0\xaf"), 0);
    CHECK_INT(json_write_string_n(out, sizeof out, "\xe2\x82\xac", 2), 0);   /* cut in the middle */
    CHECK_INT(json_write_string(out, sizeof out, NULL), 0);
    CHECK_INT(json_write_string(NULL, 10, "a"), 0);
}

/* write -> read: a small document made with the writer gives back every string. */
static void test_round_trip(void)
{
    static const char *const strings[] = {
        "", "plain", "with \"quotes\" and \\backslashes\\", "\\\"", "\"", "\\",
        "controls \x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f end",
        "\r\n\t", "h\xc3\xa9llo \xe2\x80\x94 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf \xef\xbf\xbd",
        "\x7f \xc2\x80 \xe2\x80\xa8 / \\u0041", "{\"a\":1}", "ann:lobby:42",
    };
    for (size_t k = 0; k < sizeof strings / sizeof strings[0]; k++) {
        char docbuf[512], back[256];
        size_t n = 0, w;
        memcpy(docbuf, "{\"v\":", 5);
        n = 5;
        w = json_write_string(docbuf + n, sizeof docbuf - n - 1, strings[k]);
        CHECK(w > 0);
        n += w;
        docbuf[n++] = '}';
        char *p = exact(docbuf, n);
        CHECK_INT(json_valid(p, n), 0);
        CHECK_INT(json_get_string(p, n, "v", back, sizeof back), 0);
        CHECK_STR(back, strings[k]);
        /* the value's span is the writer's bytes */
        const char *v;
        size_t vn;
        CHECK_INT(json_get(p, n, "v", &v, &vn), JSON_STRING);
        CHECK_INT(vn, w);
        /* as a key too */
        n = 1;
        docbuf[0] = '{';
        n += json_write_string(docbuf + n, sizeof docbuf - n - 8, strings[k]);
        memcpy(docbuf + n, ":1}", 3);
        n += 3;
        free(p);
        p = exact(docbuf, n);
        CHECK_INT(json_valid(p, n), 0);
        if (strchr(strings[k], '.') == NULL && strings[k][0] != '\0') {
            uint64_t one = 0;
            CHECK_INT(json_get_u64(p, n, strings[k], &one), 0);
            CHECK_INT(one, 1);
        }
        free(p);
    }
    /* every byte 1..127 on its own */
    int wrong = 0;
    for (int c = 1; c < 128; c++) {
        char s[2] = { (char)c, 0 }, buf[16], back[4];
        size_t w = json_write_string(buf, sizeof buf, s);
        if (w == 0 || json_valid(buf, w) != 0 || json_unescape(buf, w, back, sizeof back) != 0 || strcmp(back, s) != 0)
            wrong++;
    }
    CHECK_INT(wrong, 0);
    /* a written NUL reads back as the refusal json_get_string promises */
    char buf[16], back[8];
    size_t w = json_write_string_n(buf, sizeof buf, "a\0b", 3);
    CHECK_INT(json_valid(buf, w), 0);
    CHECK_INT(json_unescape(buf, w, back, sizeof back), -1);
}

int main(void)
{
    test_valid();
    test_depth();
    test_nats_info();
    test_nats_jetstream();
    test_prefixes();
    test_paths();
    test_numbers();
    test_arrays();
    test_unescape();
    test_write();
    test_round_trip();
    return check_done();
}

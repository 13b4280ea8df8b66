/* test_log: the line format, level filtering, the extra sink, control
 * characters, over-long messages, and size-bounded rotation to name.1. */
#if defined(_MSC_VER) && !defined(_CRT_SECURE_NO_WARNINGS)
#define _CRT_SECURE_NO_WARNINGS
#endif
#include "check.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _WIN32
#include <wchar.h>
#endif

#define TEST_LOG "test_log_tmp.log"
#define TEST_LOG_OLD "test_log_tmp.log.1"

static long file_size(const char *path)
{
    FILE *f = fopen(path, "rb");
    long n;
    if (f == NULL)
        return -1;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fclose(f);
    return n;
}

/* Reads the whole file into buf (NUL-terminated); returns its length or -1. */
static long read_file(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "rb");
    size_t n;
    if (f == NULL)
        return -1;
    n = fread(buf, 1, cap - 1, f);
    buf[n] = '\0';
    fclose(f);
    return (long)n;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* "YYYY-MM-DDTHH:MM:SS.mmmZ " at the start of line. */
static int has_timestamp(const char *s)
{
    const char *shape = "dddd-dd-ddTdd:dd:dd.dddZ ";
    size_t i;
    for (i = 0; shape[i]; i++) {
        if (shape[i] == 'd' ? !is_digit(s[i]) : s[i] != shape[i])
            return 0;
    }
    return 1;
}

static int sink_calls;
static log_level sink_last_level;
static char sink_last_line[4096];

static void test_sink(log_level level, const char *line)
{
    sink_calls++;
    sink_last_level = level;
    snprintf(sink_last_line, sizeof sink_last_line, "%s", line);
}

static void test_format(void)
{
    char buf[8192], expect_date[32];
    long n;
    time_t before, after;
    char err[256];

    remove(TEST_LOG);
    remove(TEST_LOG_OLD);
    log_to_stderr(0);
    CHECK_INT(log_open_file(TEST_LOG, 1024 * 1024, err, sizeof err), 0);

    before = time(NULL);
    log_info("hello %s %d", "world", 42);
    after = time(NULL);
    log_warn("careful");
    log_error("broken: %s", "x");
    log_debug("not shown at the default level");
    log_set_level(LOG_DEBUG);
    log_debug("shown now");
    log_set_level(LOG_WARN);
    log_info("filtered");
    log_set_level(LOG_INFO);
    log_info("evil\r\n2026-01-01T00:00:00.000Z ERROR forged\x1b[2J\ttab");

    n = read_file(TEST_LOG, buf, sizeof buf);
    CHECK(n > 0);
    /* Line 1: timestamp, level, message; the date is today's (UTC). */
    CHECK(has_timestamp(buf));
    CHECK(strncmp(buf + 24, " INFO hello world 42\n", 21) == 0);
    {
        struct tm *tm = gmtime(&before);
        strftime(expect_date, sizeof expect_date, "%Y-%m-%dT%H:%M", tm);
        if (strncmp(buf, expect_date, strlen(expect_date)) != 0) {
            tm = gmtime(&after);      /* the minute may have just turned */
            strftime(expect_date, sizeof expect_date, "%Y-%m-%dT%H:%M", tm);
        }
        CHECK(strncmp(buf, expect_date, strlen(expect_date)) == 0);
    }
    {
        const char *l2 = strchr(buf, '\n') + 1;
        const char *l3 = strchr(l2, '\n') + 1;
        const char *l4 = strchr(l3, '\n') + 1;
        const char *l5 = strchr(l4, '\n') + 1;
        CHECK(has_timestamp(l2));
        CHECK(strncmp(l2 + 24, " WARN careful\n", 14) == 0);
        CHECK(strncmp(l3 + 24, " ERROR broken: x\n", 17) == 0);
        CHECK(strncmp(l4 + 24, " DEBUG shown now\n", 17) == 0);
        /* The injected CR LF and ESC are neutralised: still one line, TAB kept. */
        CHECK(strncmp(l5 + 24, " INFO evil??2026-01-01T00:00:00.000Z ERROR forged?[2J\ttab\n", 59) == 0);
        CHECK(strchr(l5, '\n')[1] == '\0');
    }
    CHECK(strstr(buf, "not shown") == NULL);
    CHECK(strstr(buf, "filtered") == NULL);
    log_close();
}

static void test_sink_and_long_lines(void)
{
    char big[5000], buf[8192], err[256];
    long n;

    remove(TEST_LOG);
    CHECK_INT(log_open_file(TEST_LOG, 1024 * 1024, err, sizeof err), 0);
    log_set_sink(test_sink, LOG_WARN);
    sink_calls = 0;
    log_info("file only");
    CHECK_INT(sink_calls, 0);
    log_error("both %d", 1);
    CHECK_INT(sink_calls, 1);
    CHECK_INT(sink_last_level, LOG_ERROR);
    CHECK(has_timestamp(sink_last_line));
    CHECK_STR(sink_last_line + 24, " ERROR both 1");   /* no newline for the sink */
    log_set_sink(NULL, LOG_DEBUG);
    log_error("no sink");
    CHECK_INT(sink_calls, 1);

    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    log_info("%s", big);
    log_info("after");
    n = read_file(TEST_LOG, buf, sizeof buf);
    CHECK(n > 0);
    {
        const char *l3 = strstr(buf, "INFO xxx");
        const char *end = l3 ? strchr(l3, '\n') : NULL;
        CHECK(l3 != NULL && end != NULL);
        if (l3 != NULL && end != NULL) {
            CHECK(end - l3 < 2100);              /* cut... */
            CHECK(strncmp(end - 3, "...", 3) == 0);  /* ...and says so */
            CHECK(strstr(end, "INFO after\n") != NULL);
        }
    }
    log_close();
}

static void test_rotation(void)
{
    char err[256], buf[8192];
    int i;
    long total_new, total_old;

    remove(TEST_LOG);
    remove(TEST_LOG_OLD);
    /* An existing file's size counts towards the bound. */
    {
        FILE *f = fopen(TEST_LOG, "wb");
        CHECK(f != NULL);
        if (f != NULL) {
            fputs("previous run\n", f);
            fclose(f);
        }
    }
    CHECK_INT(log_open_file(TEST_LOG, 1000, err, sizeof err), 0);
    for (i = 0; i < 40; i++)
        log_info("line %02d padding padding padding", i);   /* 62 bytes a line: two rotations */
    total_new = file_size(TEST_LOG);
    total_old = file_size(TEST_LOG_OLD);
    CHECK(total_new > 0 && total_new <= 1000);
    CHECK(total_old > 900 && total_old <= 1000);
    /* Nothing lost across the last rotation: the newest line is in the new
     * file, the one before the new file's first line ends the old file. */
    CHECK(read_file(TEST_LOG, buf, sizeof buf) > 0);
    CHECK(has_timestamp(buf));
    CHECK(strstr(buf, "line 39 padding") != NULL);
    {
        int first = atoi(strstr(buf, "line ") + 5);
        char expect[32];
        CHECK(read_file(TEST_LOG_OLD, buf, sizeof buf) > 0);
        CHECK(has_timestamp(buf));
        snprintf(expect, sizeof expect, "line %02d padding", first - 1);
        CHECK(strstr(buf, expect) != NULL);
        CHECK(strstr(buf, "previous run") == NULL);   /* only one old copy is kept */
    }

    /* Reopening appends rather than truncating. */
    log_close();
    total_new = file_size(TEST_LOG);
    CHECK_INT(log_open_file(TEST_LOG, 1000000, err, sizeof err), 0);
    log_info("appended");
    CHECK(file_size(TEST_LOG) > total_new);
    log_close();

    /* After log_close nothing is written to the file. */
    total_new = file_size(TEST_LOG);
    log_info("closed");
    CHECK_INT(file_size(TEST_LOG), total_new);

    remove(TEST_LOG);
    remove(TEST_LOG_OLD);
}

static void test_open_errors(void)
{
    char err[256];
    err[0] = '\0';
    CHECK_INT(log_open_file("no_such_dir_for_test_log/x.log", 1000, err, sizeof err), -1);
    CHECK(strstr(err, "no_such_dir_for_test_log/x.log") != NULL);
    CHECK_INT(log_open_file("", 1000, err, sizeof err), -1);
    CHECK(err[0] != '\0');
    CHECK_INT(log_open_file("no_such_dir_for_test_log/x.log", 1000, NULL, 0), -1);  /* NULL err is allowed */
#ifdef _WIN32
    /* The path is UTF-8; invalid UTF-8 cannot name a Windows file. */
    CHECK_INT(log_open_file("bad\xff.log", 1000, err, sizeof err), -1);
#endif
    log_close();

    /* A non-ASCII (UTF-8) file name works: on Windows it goes through _wfopen. */
    CHECK_INT(log_open_file("test_log_\xc3\xa9.log", 1000, err, sizeof err), 0);
    log_info("accented");
    log_close();
#ifdef _WIN32
    CHECK_INT(_wremove(L"test_log_\u00e9.log"), 0);
#else
    CHECK_INT(remove("test_log_\xc3\xa9.log"), 0);
#endif
}

int main(void)
{
    test_format();
    test_sink_and_long_lines();
    test_rotation();
    test_open_errors();
    return check_done();
}

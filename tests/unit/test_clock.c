/* test_clock: clock_format_utc, the one formatter of times (log lines and
 * history's `at`): the epoch, leap days (4, 100 and 400 year rules, year 0),
 * floor division before 1970, the clamps to 0000..9999, that it writes
 * exactly CLOCK_TIME_LEN + 1 bytes; and that clock_wall_ms is the same time
 * as the C library's. */
#include "check.h"
#include "clock.h"

#include <stdint.h>
#include <string.h>
#include <time.h>

/* Formats t into a buffer that is longer than needed and checks that
 * nothing past the NUL was touched. */
static void check_format(int64_t t, const char *want)
{
    char buf[CLOCK_TIME_LEN + 8];
    memset(buf, '#', sizeof buf);
    clock_format_utc(t, buf);
    CHECK_INT(buf[CLOCK_TIME_LEN], '\0');
    CHECK_INT(buf[CLOCK_TIME_LEN + 1], '#');
    buf[sizeof buf - 1] = '\0';
    CHECK_STR(buf, want);
}

static void test_format(void)
{
    CHECK_INT(CLOCK_TIME_LEN, strlen("2026-11-27T03:04:05.123Z"));
    check_format(0, "1970-01-01T00:00:00.000Z");
    check_format(INT64_C(1795748645123), "2026-11-27T03:04:05.123Z");
    /* Leap days: 2024 (every 4th year), 2000 and 1600 (every 400th), year 0. */
    check_format(INT64_C(1709210096789), "2024-02-29T12:34:56.789Z");
    check_format(INT64_C(1709251199999), "2024-02-29T23:59:59.999Z");
    check_format(INT64_C(1709251200000), "2024-03-01T00:00:00.000Z");
    check_format(INT64_C(951782400000), "2000-02-29T00:00:00.000Z");
    check_format(INT64_C(-11670912000001), "1600-02-29T23:59:59.999Z");
    check_format(INT64_C(-62162121600000), "0000-02-29T00:00:00.000Z");
    /* 1900 and 2100 are not leap years (every 100th is not). */
    check_format(INT64_C(-2203891200000), "1900-03-01T00:00:00.000Z");
    check_format(INT64_C(4107542400000) - 1, "2100-02-28T23:59:59.999Z");
    check_format(INT64_C(4107542400000), "2100-03-01T00:00:00.000Z");
    /* Before 1970: floor division, never a negative field. */
    check_format(-1, "1969-12-31T23:59:59.999Z");
    check_format(-1000, "1969-12-31T23:59:59.000Z");
    check_format(-1001, "1969-12-31T23:59:58.999Z");
    check_format(INT64_C(-86400000), "1969-12-31T00:00:00.000Z");
    check_format(INT64_C(-86400001), "1969-12-30T23:59:59.999Z");
    /* The clamps: the first and last representable instants, one past
     * each, and the int64 extremes. */
    check_format(INT64_C(-62167219200000), "0000-01-01T00:00:00.000Z");
    check_format(INT64_C(-62167219200001), "0000-01-01T00:00:00.000Z");
    check_format(INT64_MIN, "0000-01-01T00:00:00.000Z");
    check_format(INT64_C(253402300799999), "9999-12-31T23:59:59.999Z");
    check_format(INT64_C(253402300800000), "9999-12-31T23:59:59.999Z");
    check_format(INT64_MAX, "9999-12-31T23:59:59.999Z");
}

/* clock_wall_ms (GetSystemTimeAsFileTime on Windows, timespec_get
 * elsewhere) and time() read the same system clock: the reading lies
 * between two time() calls made around it, give or take one second, because
 * time() may read a coarser copy of the clock (glibc: CLOCK_REALTIME_COARSE,
 * a tick behind) and truncates to whole seconds.  This proves the epoch and
 * the unit, not the precision. */
static void test_wall(void)
{
    time_t before = time(NULL);
    int64_t now = clock_wall_ms();
    time_t after = time(NULL);
    CHECK(before != (time_t)-1 && after != (time_t)-1);
    CHECK(now >= ((int64_t)before - 1) * 1000);
    CHECK(now < ((int64_t)after + 2) * 1000);
}

int main(void)
{
    test_format();
    test_wall();
    return check_done();
}

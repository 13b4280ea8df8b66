/* clock: see clock.h.  The one file of the portable core with <windows.h>: on
 * Windows the C runtime's clocks are slow (mingw's msvcrt _ftime64 asks for the
 * time zone, a file stat under Wine, on every call), so read the system time
 * directly there.  The formatter below the branch is plain C. */
#include "clock.h"

#ifdef _WIN32
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>

int64_t clock_wall_ms(void)
{
    FILETIME ft;
    GetSystemTimeAsFileTime(&ft);   /* 100 ns ticks since 1601-01-01, cannot fail */
    uint64_t ticks = ((uint64_t)ft.dwHighDateTime << 32) | ft.dwLowDateTime;
    return (int64_t)(ticks / 10000u) - INT64_C(11644473600000);
}
#else
#include <time.h>

int64_t clock_wall_ms(void)
{
    struct timespec ts;
    if (timespec_get(&ts, TIME_UTC) != TIME_UTC)
        return 0;
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
#endif

/* Days since 1970-01-01 -> proleptic Gregorian year/month/day.  Howard
 * Hinnant's civil_from_days: eras of 400 years (146097 days) starting on
 * March 1st, so the leap day is the last day of a year and needs no special
 * case.  Exact for every day we can format; no gmtime_r/gmtime_s needed. */
static void civil_from_days(int64_t days, int *year, int *month, int *day)
{
    int64_t z = days + 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;                                    /* [0, 146096] */
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365; /* [0, 399] */
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);            /* [0, 365], from March 1st */
    int64_t mp = (5 * doy + 2) / 153;                                 /* [0, 11], March = 0 */
    int64_t m = mp < 10 ? mp + 3 : mp - 9;
    *day = (int)(doy - (153 * mp + 2) / 5 + 1);
    *month = (int)m;
    *year = (int)(yoe + era * 400 + (m <= 2));
}

static void put_digits(char *out, int value, int width)
{
    while (width-- > 0) {
        out[width] = (char)('0' + value % 10);
        value /= 10;
    }
}

void clock_format_utc(int64_t unix_ms, char out[CLOCK_TIME_LEN + 1])
{
    /* Clamped to years 0000..9999 so the text always has CLOCK_TIME_LEN chars. */
    const int64_t min_ms = INT64_C(-62167219200000);  /* 0000-01-01T00:00:00.000Z */
    const int64_t max_ms = INT64_C(253402300799999);  /* 9999-12-31T23:59:59.999Z */
    int64_t ms, days, ms_of_day;
    int year, month, day;

    ms = unix_ms < min_ms ? min_ms : unix_ms > max_ms ? max_ms : unix_ms;
    days = ms / 86400000;
    ms_of_day = ms % 86400000;
    if (ms_of_day < 0) {   /* floor division for times before 1970 */
        ms_of_day += 86400000;
        days -= 1;
    }
    civil_from_days(days, &year, &month, &day);
    put_digits(out, year, 4);
    out[4] = '-';
    put_digits(out + 5, month, 2);
    out[7] = '-';
    put_digits(out + 8, day, 2);
    out[10] = 'T';
    put_digits(out + 11, (int)(ms_of_day / 3600000), 2);
    out[13] = ':';
    put_digits(out + 14, (int)(ms_of_day / 60000 % 60), 2);
    out[16] = ':';
    put_digits(out + 17, (int)(ms_of_day / 1000 % 60), 2);
    out[19] = '.';
    put_digits(out + 20, (int)(ms_of_day % 1000), 3);
    out[23] = 'Z';
    out[CLOCK_TIME_LEN] = '\0';
}

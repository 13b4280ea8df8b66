/* clock: see clock.h.  The only platform branch of the portable core: on
 * Windows the C runtime's clocks are slow (mingw's msvcrt _ftime64 asks for the
 * time zone, a file stat under Wine, on every call), so read the system time
 * directly there. */
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

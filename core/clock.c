#include "clock.h"

#include <time.h>

#if defined(_WIN32) && !defined(TIME_UTC)
/* mingw-w64 on the old msvcrt has no timespec_get (only the UCRT does). */
#include <sys/timeb.h>

int64_t clock_wall_ms(void)
{
    struct __timeb64 tb;
    _ftime64(&tb);
    return (int64_t)tb.time * 1000 + tb.millitm;
}
#else
int64_t clock_wall_ms(void)
{
    struct timespec ts;
    if (timespec_get(&ts, TIME_UTC) != TIME_UTC)
        return 0;
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
#endif

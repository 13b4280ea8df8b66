/* clock: wall-clock time for timestamps (history `at`, log lines).
 * Portable C11: timespec_get where the C runtime has it (UCRT, glibc, MSVC),
 * _ftime on mingw's old msvcrt.  Intervals and timeouts use the shell's
 * monotonic clock instead, passed into the hub as now_ms. */
#ifndef CHATRELAY_CLOCK_H
#define CHATRELAY_CLOCK_H

#include <stdint.h>

/* Milliseconds since 1970-01-01T00:00:00Z. */
int64_t clock_wall_ms(void);

#endif

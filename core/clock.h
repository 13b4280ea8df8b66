/* clock: wall-clock time for timestamps (history `at`, log lines), and the one
 * formatter that turns it into text.
 *
 * Owns: reading the wall clock (timespec_get where the C runtime has it:
 * UCRT, glibc, MSVC; GetSystemTimeAsFileTime on Windows, see clock.c), and
 * writing a Unix time as "2026-11-27T03:04:05.123Z".
 * Never: measures intervals.  Intervals and timeouts use the shell's
 * monotonic clock instead, passed into the hub as now_ms.
 * A leaf: depends on nothing else of the project (storage links it too).
 */
#ifndef CHATRELAY_CLOCK_H
#define CHATRELAY_CLOCK_H

#include <stdint.h>

/* Length of clock_format_utc's text, without the NUL. */
#define CLOCK_TIME_LEN 24   /* "2026-11-27T03:04:05.123Z" */

/* Milliseconds since 1970-01-01T00:00:00Z. */
int64_t clock_wall_ms(void);

/* Writes unix_ms (milliseconds since 1970-01-01T00:00:00Z, negative before)
 * as "YYYY-MM-DDTHH:MM:SS.mmmZ", UTC, proleptic Gregorian calendar, and a NUL.
 * Times before 0000-01-01 or after 9999-12-31T23:59:59.999Z are clamped to
 * those, so the text is always CLOCK_TIME_LEN characters.  Pure arithmetic:
 * no gmtime/gmtime_r/gmtime_s, no time zone, safe on any thread. */
void clock_format_utc(int64_t unix_ms, char out[CLOCK_TIME_LEN + 1]);

#endif

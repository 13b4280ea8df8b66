/* log: one place where the relay says what happened.
 *
 * Owns: formatting ("2026-11-27T03:04:05.123Z LEVEL message"), the sinks
 * (stderr in console mode; a size-bounded file with one rotated copy,
 * name.log -> name.log.1, in service mode; an optional extra sink such as the
 * Windows Event Log, set by service/).  Never: decides policy.
 * Called from the I/O thread and, rarely, from the thread that started the
 * relay and from the stop handlers' threads: the one spin lock in log.c keeps
 * each line (and a rotation) whole; it is held only while a finished line is
 * written (log.c's top comment says who takes it and why that is short).
 */
#ifndef CHATRELAY_LOG_H
#define CHATRELAY_LOG_H

#include <stddef.h>

typedef enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR } log_level;

/* Extra sink (e.g. the Event Log): called for every line at or above min_level. */
typedef void (*log_sink_fn)(log_level level, const char *line);

void log_to_stderr(int on);
/* Opens (appends to) path, UTF-8; rotates to path.1 when it passes max_bytes.
 * Returns 0, or -1 with errno-style detail in the returned message buffer. */
int log_open_file(const char *path, size_t max_bytes, char *err, size_t errlen);
void log_set_sink(log_sink_fn fn, log_level min_level);
void log_set_level(log_level min_level);
void log_close(void);

#if defined(__GNUC__) || defined(__clang__)
#define LOG_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define LOG_PRINTF(a, b)
#endif

void log_msg(log_level level, const char *fmt, ...) LOG_PRINTF(2, 3);
/* For a crash handler only: writes line (with its newline) to the file and
 * stderr sinks as it is, without the lock or a time stamp: the process is
 * ending, and the lock may be held by the thread that crashed; a torn line
 * beats no line. */
void log_emergency(const char *line);

#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif

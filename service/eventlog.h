/* eventlog: the Windows Event Log (Application log) for the service.
 *
 * Owns: registering and removing the event source (at install/uninstall:
 * HKLM\SYSTEM\CurrentControlSet\Services\EventLog\Application\<name>, with
 * chatrelay.exe as its message file, see chatrelay.mc), and reporting the
 * start, stop and failure events plus every warning/error log line (as the
 * log.h extra sink).
 * Never: fails the service: an Event Log that cannot be written is only noted
 * in the file log.  Win32 only.  (Under Wine, ReportEventW stores nothing.)
 */
#ifndef CHATRELAY_EVENTLOG_H
#define CHATRELAY_EVENTLOG_H

#include <stddef.h>
#include <wchar.h>

#include "log.h"

/* Registers source `name` with exe_path as its message file.  Returns 0 or -1. */
int eventlog_register(const wchar_t *name, const wchar_t *exe_path, char *err, size_t errlen);
/* Removes the source; a source that is not registered is not an error. */
int eventlog_unregister(const wchar_t *name, char *err, size_t errlen);

/* Opens the source for reporting (RegisterEventSourceW).  Returns 0 or -1. */
int eventlog_open(const wchar_t *name);
void eventlog_close(void);

typedef enum eventlog_event {
    EVENTLOG_STARTED,
    EVENTLOG_STOPPED,
    EVENTLOG_START_FAILED
} eventlog_event;

/* Reports one of the service's life events with its text (UTF-8). */
void eventlog_report(eventlog_event ev, const char *text);

/* A log_sink_fn: reports a log line (its text after "timestamp LEVEL "). */
void eventlog_sink(log_level level, const char *line);

#endif

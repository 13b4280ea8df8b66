/* svc: chatrelay as a Windows service (own process) under the SCM.
 *
 * Owns: the dispatcher, ServiceMain, the control handler and every
 * SetServiceStatus: START_PENDING with rising checkpoints until the relay
 * listens, RUNNING, STOP_PENDING with checkpoints while it stops, STOPPED
 * (with ERROR_SERVICE_SPECIFIC_ERROR and the RELAY_ERR_* code when a start
 * fails).  Options are the binPath's command line overlaid with the
 * `sc start NAME args...` parameters.  In service mode the log goes to a file
 * (default %ProgramData%\ChatRelay\chatrelay.log) and warnings, errors, start
 * and stop to the Event Log.
 * Never: parses options itself (options.h) or does relay work (relay.h).
 */
#ifndef CHATRELAY_SVC_H
#define CHATRELAY_SVC_H

#include "options.h"

#define SVC_DEFAULT_NAME L"ChatRelay"

/* Connects to the SCM and runs the service until it has stopped.
 * base: the options of the process command line (the binPath).  base_error:
 * NULL, or why those options were invalid (the service then only reports that
 * failure).  Returns 0 once the service has run, or the Win32 error of
 * StartServiceCtrlDispatcherW (ERROR_FAILED_SERVICE_CONTROLLER_CONNECT when the
 * program was not started by the SCM, e.g. from a console). */
unsigned long svc_run(const relay_options *base, const char *base_error);

/* What a RELAY_ERR_* code (the service-specific exit code) means, in a few words. */
const char *svc_start_error_text(int code);

#endif

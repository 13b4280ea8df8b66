/* svc: see svc.h.
 *
 * Threads: the dispatcher calls the control handler (on Windows that is the
 * process's main thread, inside StartServiceCtrlDispatcherW; Wine's sechost
 * runs it on a thread of its own); ServiceMain runs on a thread of its own and
 * does all the work (start, then relay_wait until the relay has stopped).
 * The handler only records the request, reports STOP_PENDING and calls
 * relay_request_stop: no file I/O, nothing that can wait, because the SCM
 * holds the caller (`sc stop`) until the handler's answer arrives and gives
 * up after a bound (Wine: 10 s, then error 1053).  ServiceMain logs the
 * request when it next looks (within ~200 ms).  `lock` guards the status
 * record, the relay pointer and the stop flags between those threads.
 *
 * The relay's I/O thread ends only after relay_request_stop, and the handler
 * calls that at most once (guarded by stop_requested), so the handler can
 * never touch a relay that relay_wait has freed.
 */
#include "svc.h"

#include <windows.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "datadir.h"
#include "eventlog.h"
#include "log.h"
#include "relay.h"
#include "version.h"
#include "winutil.h"


#define START_WAIT_HINT_MS 10000
#define STOP_WAIT_HINT_MS 10000

static struct {
    relay_options base;
    const char *base_error;
    SERVICE_STATUS_HANDLE handle;
    CRITICAL_SECTION lock;
    SERVICE_STATUS status;
    relay *relay;
    int stop_requested;
    int stop_logged;            /* ServiceMain has written "service: STOP requested" */
    DWORD stop_control;
} g_svc;

static const char *control_name(DWORD control)
{
    switch (control) {
    case SERVICE_CONTROL_STOP: return "STOP";
    case SERVICE_CONTROL_SHUTDOWN: return "SHUTDOWN";
    case SERVICE_CONTROL_PRESHUTDOWN: return "PRESHUTDOWN";
    default: return "?";
    }
}

static const char *state_name(DWORD state)
{
    switch (state) {
    case SERVICE_START_PENDING: return "START_PENDING";
    case SERVICE_RUNNING: return "RUNNING";
    case SERVICE_STOP_PENDING: return "STOP_PENDING";
    case SERVICE_STOPPED: return "STOPPED";
    default: return "?";
    }
}

/* Reports state; a pending state reported again counts one checkpoint up. */
static void set_status_locked(DWORD state, DWORD win32_exit, DWORD specific_exit, DWORD wait_hint)
{
    SERVICE_STATUS *st = &g_svc.status;
    int pending = state == SERVICE_START_PENDING || state == SERVICE_STOP_PENDING;
    char why[256];

    st->dwServiceType = SERVICE_WIN32_OWN_PROCESS;
    st->dwCheckPoint = !pending ? 0 : st->dwCurrentState == state ? st->dwCheckPoint + 1 : 1;
    st->dwCurrentState = state;
    /* Controls only while running: a stop during START_PENDING would race the
     * start; the SCM then answers "cannot accept control" and the caller retries. */
    st->dwControlsAccepted = state == SERVICE_RUNNING
        ? SERVICE_ACCEPT_STOP | SERVICE_ACCEPT_SHUTDOWN | SERVICE_ACCEPT_PRESHUTDOWN : 0;
    st->dwWin32ExitCode = win32_exit;
    st->dwServiceSpecificExitCode = specific_exit;
    st->dwWaitHint = wait_hint;
    if (!SetServiceStatus(g_svc.handle, st))
        log_error("SetServiceStatus(%s) failed: %s", state_name(state),
                  win_error_text(GetLastError(), why, sizeof why));
}

static void set_status(DWORD state, DWORD win32_exit, DWORD specific_exit, DWORD wait_hint)
{
    EnterCriticalSection(&g_svc.lock);
    set_status_locked(state, win32_exit, specific_exit, wait_hint);
    LeaveCriticalSection(&g_svc.lock);
}

static DWORD WINAPI control_handler(DWORD control, DWORD event_type, LPVOID event_data, LPVOID ctx)
{
    (void)event_type;
    (void)event_data;
    (void)ctx;
    switch (control) {
    case SERVICE_CONTROL_STOP:
    case SERVICE_CONTROL_SHUTDOWN:
    case SERVICE_CONTROL_PRESHUTDOWN:
        EnterCriticalSection(&g_svc.lock);
        if (!g_svc.stop_requested) {
            g_svc.stop_requested = 1;
            g_svc.stop_control = control;
            if (g_svc.relay != NULL) {
                set_status_locked(SERVICE_STOP_PENDING, NO_ERROR, 0, STOP_WAIT_HINT_MS);
                relay_request_stop(g_svc.relay);
            }
        }
        LeaveCriticalSection(&g_svc.lock);
        return NO_ERROR;
    case SERVICE_CONTROL_INTERROGATE:
        return NO_ERROR;      /* the SCM re-sends the last reported status */
    default:
        return ERROR_CALL_NOT_IMPLEMENTED;
    }
}

static void start_progress(void *ctx)
{
    (void)ctx;
    set_status(SERVICE_START_PENDING, NO_ERROR, 0, START_WAIT_HINT_MS);
}

/* The control handler's line, written here on ServiceMain's thread (the
 * handler itself does no I/O). */
static void log_stop_request(void)
{
    DWORD control = 0;
    EnterCriticalSection(&g_svc.lock);
    if (g_svc.stop_requested && !g_svc.stop_logged) {
        g_svc.stop_logged = 1;
        control = g_svc.stop_control;
    }
    LeaveCriticalSection(&g_svc.lock);
    if (control != 0)
        log_info("service: %s requested", control_name(control));
}

/* Called by relay_wait about every 200 ms, while running as well as while
 * stopping: only a stop in progress moves the checkpoint. */
static void stop_progress(void *ctx)
{
    (void)ctx;
    EnterCriticalSection(&g_svc.lock);
    if (g_svc.stop_requested)
        set_status_locked(SERVICE_STOP_PENDING, NO_ERROR, 0, STOP_WAIT_HINT_MS);
    LeaveCriticalSection(&g_svc.lock);
    log_stop_request();
}

const char *svc_start_error_text(int code)
{
    switch (code) {
    case RELAY_ERR_OPTIONS:  return "invalid options";
    case RELAY_ERR_WINSOCK:  return "Winsock could not be initialised";
    case RELAY_ERR_LISTEN:   return "cannot listen on the requested address (in use or not available)";
    case RELAY_ERR_DATABASE: return "the history database cannot be opened";
    case RELAY_ERR_MEMORY:   return "out of memory";
    case RELAY_ERR_THREAD:   return "the I/O thread cannot be started";
    default:                 return "unexpected error";
    }
}

/* Ends a start that failed: the why is already in the log. */
static void fail_start(int code)
{
    char text[256];
    snprintf(text, sizeof text, "%s (service-specific error %d)", svc_start_error_text(code), code);
    log_set_sink(NULL, LOG_ERROR);          /* this summary goes to the Event Log once, below */
    log_error("service: start failed: %s", text);
    eventlog_report(EVENTLOG_START_FAILED, text);
    eventlog_close();
    set_status(SERVICE_STOPPED, ERROR_SERVICE_SPECIFIC_ERROR, (DWORD)code, 0);
}

/* The start parameters as one line for the log. */
static void join_args(int argc, char **argv, char *out, size_t cap)
{
    size_t len = 0;
    int i;
    out[0] = '\0';
    for (i = 1; i < argc && len + 1 < cap; i++) {
        int n = snprintf(out + len, cap - len, "%s%s", i > 1 ? " " : "", argv[i] ? argv[i] : "");
        if (n < 0)
            break;
        len += (size_t)n;
    }
}

/* "listening on 127.0.0.1:7000, *:7777" for the log and the Event Log. */
static void describe_listen(const relay_options *o, char *out, size_t cap)
{
    size_t len;
    int i;
    snprintf(out, cap, "listening on");
    for (i = 0; i < o->listen_count; i++) {
        const listen_addr *a = &o->listen[i];
        int v6 = strchr(a->host, ':') != NULL;
        len = strlen(out);
        snprintf(out + len, cap - len, "%s %s%s%s:%u", i > 0 ? "," : "", v6 ? "[" : "",
                 a->host[0] ? a->host : "*", v6 ? "]" : "", (unsigned)a->port);
    }
}

static void WINAPI service_main(DWORD argc, LPWSTR *argv)
{
    const wchar_t *name = argc > 0 && argv[0] != NULL ? argv[0] : SVC_DEFAULT_NAME;
    relay_options opt = g_svc.base;
    char **args8 = NULL;
    char parse_err[512] = "", data_err[512] = "", log_err[512] = "", joined[1024];
    char *name8;
    int parse_failed = 0, rc, status;
    DWORD i;
    relay *r = NULL;

    g_svc.handle = RegisterServiceCtrlHandlerExW(name, control_handler, NULL);
    if (g_svc.handle == NULL) {
        char why[256];
        log_error("RegisterServiceCtrlHandlerExW failed: %s", win_error_text(GetLastError(), why, sizeof why));
        return;
    }
    set_status(SERVICE_START_PENDING, NO_ERROR, 0, START_WAIT_HINT_MS);

    /* `sc start NAME args...`: argv[0] is the service name; the rest overlay
     * the binPath options (options_parse replaces the --listen list). */
    args8 = calloc(argc > 0 ? argc : 1, sizeof *args8);
    for (i = 0; args8 != NULL && i < argc; i++) {
        args8[i] = win_utf8_from_wide(argv[i] != NULL ? argv[i] : L"");
        if (args8[i] == NULL) {
            snprintf(parse_err, sizeof parse_err, "start parameter %lu is not valid text", (unsigned long)i);
            parse_failed = 1;
        }
    }
    if (args8 == NULL) {
        snprintf(parse_err, sizeof parse_err, "out of memory reading the start parameters");
        parse_failed = 1;
    }
    if (!parse_failed && options_parse(&opt, (int)argc, args8, 1, parse_err, sizeof parse_err) != 0)
        parse_failed = 1;
    join_args(parse_failed ? 0 : (int)argc, args8, joined, sizeof joined);

    /* The log file first, so that every failure below is written down. */
    log_to_stderr(0);                        /* a service has no console */
    if (datadir_fill_defaults(&opt, 1, data_err, sizeof data_err) != 0 && opt.log_path[0] == '\0')
        snprintf(log_err, sizeof log_err, "no log file: %s", data_err);
    else if (log_open_file(opt.log_path, opt.log_max_bytes, log_err, sizeof log_err) == 0)
        log_err[0] = '\0';
    eventlog_open(name);
    /* Errors only: ReportEventW is a synchronous RPC, and warnings (a refused
     * client, a failed send) come from the I/O thread, sometimes in bursts. */
    log_set_sink(eventlog_sink, LOG_ERROR);

    name8 = win_utf8_from_wide(name);
    log_info("chatrelay %s starting as service %s (pid %lu)", CHATRELAY_VERSION, name8 ? name8 : "?",
             (unsigned long)GetCurrentProcessId());
    free(name8);
    if (log_err[0] != '\0')
        log_error("log file: %s", log_err);
    if (joined[0] != '\0')
        log_info("service: start parameters: %s", joined);
    for (i = 0; args8 != NULL && i < argc; i++)
        free(args8[i]);
    free(args8);

    if (g_svc.base_error != NULL) {
        log_error("service: invalid option in the service command line (binPath): %s", g_svc.base_error);
        fail_start(RELAY_ERR_OPTIONS);
        return;
    }
    if (parse_failed) {
        log_error("service: invalid start parameter: %s", parse_err);
        fail_start(RELAY_ERR_OPTIONS);
        return;
    }
    if (!opt.no_history && opt.db_path[0] == '\0') {
        log_error("history: %s (give --db PATH or --no-history)", data_err);
        fail_start(RELAY_ERR_DATABASE);
        return;
    }
    if (!opt.no_history && datadir_check_db_folder(opt.db_path, data_err, sizeof data_err) != 0) {
        log_error("%s", data_err);
        fail_start(RELAY_ERR_DATABASE);
        return;
    }

    rc = relay_start(&opt, &r, start_progress, NULL);
    if (rc != RELAY_OK) {
        fail_start(rc);
        return;
    }
    EnterCriticalSection(&g_svc.lock);
    g_svc.relay = r;
    if (g_svc.stop_requested) {
        /* A SHUTDOWN arrived while starting (controls are not accepted then,
         * but be safe): stop at once. */
        set_status_locked(SERVICE_STOP_PENDING, NO_ERROR, 0, STOP_WAIT_HINT_MS);
        relay_request_stop(r);
    } else {
        set_status_locked(SERVICE_RUNNING, NO_ERROR, 0, 0);
    }
    LeaveCriticalSection(&g_svc.lock);
    describe_listen(&opt, joined, sizeof joined);
    log_info("service: running, %s", joined);
    eventlog_report(EVENTLOG_STARTED, joined);

    status = relay_wait(r, stop_progress, NULL);
    EnterCriticalSection(&g_svc.lock);
    g_svc.relay = NULL;
    LeaveCriticalSection(&g_svc.lock);
    log_stop_request();         /* a stop faster than relay_wait's first look */

    if (status != 0) {
        /* Stopped on its own with an error: a non-zero exit lets the SCM's
         * failure actions (restart) apply. */
        log_error("service: the relay ended with status %d", status);
        log_set_sink(NULL, LOG_ERROR);
        eventlog_report(EVENTLOG_STOPPED, "the relay ended with an error");
        eventlog_close();
        set_status(SERVICE_STOPPED, ERROR_SERVICE_SPECIFIC_ERROR, (DWORD)status, 0);
        return;
    }
    log_info("service: stopped");
    log_set_sink(NULL, LOG_ERROR);
    eventlog_report(EVENTLOG_STOPPED, "stopped on request");
    eventlog_close();
    /* After STOPPED the SCM may end the process at any moment: the log lines
     * above are already flushed. */
    set_status(SERVICE_STOPPED, NO_ERROR, 0, 0);
}

unsigned long svc_run(const relay_options *base, const char *base_error)
{
    static wchar_t service_name[] = SVC_DEFAULT_NAME;   /* ignored for own-process services */
    SERVICE_TABLE_ENTRYW table[] = { { service_name, service_main }, { NULL, NULL } };

    g_svc.base = *base;
    g_svc.base_error = base_error;
    InitializeCriticalSection(&g_svc.lock);
    if (!StartServiceCtrlDispatcherW(table))
        return GetLastError();
    return 0;
}

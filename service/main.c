/* main: chatrelay.exe's entry point: which mode, then hand over.
 *
 *   chatrelay.exe --help | --version
 *   chatrelay.exe --console [options]      the relay in this console; Ctrl+C,
 *                                          Ctrl+Break or closing the window stops it
 *   chatrelay.exe install | uninstall | configure [...]     (install.h)
 *   chatrelay.exe [options]                the service, as the SCM starts it (svc.h)
 *
 * Exit codes: 0 done; 1 failed (relay could not start, not started by the SCM,
 * install failed); 2 bad command line.
 * The command line is read as UTF-16 (GetCommandLineW) and converted to
 * UTF-8, so paths with any characters reach options.h intact.
 */
#include <windows.h>
#include <shellapi.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "datadir.h"
#include "install.h"
#include "log.h"
#include "options.h"
#include "relay.h"
#include "svc.h"
#include "version.h"
#include "winutil.h"


#define CONSOLE_CLOSE_WAIT_MS 4500   /* Windows ends the process ~5 s after CTRL_CLOSE_EVENT */

static const char USAGE[] =
    "chatrelay " CHATRELAY_VERSION ": a TCP chat relay that runs as a Windows service.\n"
    "\n"
    "Usage:\n"
    "  chatrelay.exe --console [options]   run in this console; Ctrl+C stops\n"
    "  chatrelay.exe install [--service-name NAME] [options]\n"
    "  chatrelay.exe uninstall [--service-name NAME]\n"
    "  chatrelay.exe configure [--service-name NAME]\n"
    "  chatrelay.exe [options]             (how the service control manager runs it)\n"
    "  chatrelay.exe --help | --version\n"
    "\n"
    "Verbs:\n";

static const char NOT_A_SERVICE[] =
    "chatrelay.exe is a Windows service; it was started from a console (or by\n"
    "double-click) rather than by the service control manager.\n"
    "\n"
    "To run the relay here, in this console (Ctrl+C stops it):\n"
    "    chatrelay.exe --console [options]\n"
    "To install it as the ChatRelay service (from an elevated prompt), then start it:\n"
    "    chatrelay.exe install [options]\n"
    "    sc start ChatRelay\n"
    "For every option: chatrelay.exe --help\n";

/* ---- console mode --------------------------------------------------------- */

static volatile LONG g_console_stop;        /* Ctrl+C & co. seen */
static relay *volatile g_console_relay;     /* published once started */
static HANDLE g_console_done;               /* set when the relay has stopped */

static BOOL WINAPI console_ctrl(DWORD type)
{
    switch (type) {
    case CTRL_C_EVENT:
    case CTRL_BREAK_EVENT:
    case CTRL_CLOSE_EVENT:
    case CTRL_LOGOFF_EVENT:
    case CTRL_SHUTDOWN_EVENT:
        /* The first request stops the relay; main() also checks the flag
         * after relay_start, so a Ctrl+C during the start is not lost. */
        if (InterlockedExchange(&g_console_stop, 1) == 0) {
            relay *r = InterlockedCompareExchangePointer((PVOID volatile *)&g_console_relay, NULL, NULL);
            if (r != NULL)
                relay_request_stop(r);
        }
        /* For these the process ends when the handler returns: let the
         * relay say goodbye and commit first (bounded). */
        if (type == CTRL_CLOSE_EVENT || type == CTRL_LOGOFF_EVENT || type == CTRL_SHUTDOWN_EVENT)
            WaitForSingleObject(g_console_done, CONSOLE_CLOSE_WAIT_MS);
        return TRUE;
    default:
        return FALSE;
    }
}

static void no_progress(void *ctx)
{
    (void)ctx;
}

static int run_console(relay_options *opt)
{
    char err[512], why[256];
    relay *r = NULL;
    int rc, status;

    log_to_stderr(1);
    if (opt->log_path[0] != '\0' && log_open_file(opt->log_path, opt->log_max_bytes, err, sizeof err) != 0) {
        win_printf(stderr, "chatrelay: --log: %s\n", err);
        return 2;
    }
    /* A database that cannot be used ends the start the same way whichever
     * check finds it, so one line (with the service's exit code) says so. */
    if (datadir_fill_defaults(opt, 0, err, sizeof err) != 0) {
        log_error("history: %s (give --db PATH or --no-history)", err);
        log_error("could not start: %s (error %d)", svc_start_error_text(RELAY_ERR_DATABASE), RELAY_ERR_DATABASE);
        return 1;
    }
    if (!opt->no_history && datadir_check_db_folder(opt->db_path, err, sizeof err) != 0) {
        log_error("%s", err);
        log_error("could not start: %s (error %d)", svc_start_error_text(RELAY_ERR_DATABASE), RELAY_ERR_DATABASE);
        return 1;
    }
    g_console_done = CreateEventW(NULL, TRUE, FALSE, NULL);
    if (g_console_done == NULL) {
        log_error("CreateEventW failed: %s", win_error_text(GetLastError(), why, sizeof why));
        return 1;
    }
    if (!SetConsoleCtrlHandler(console_ctrl, TRUE))
        log_warn("SetConsoleCtrlHandler failed: %s; Ctrl+C will not stop cleanly",
                 win_error_text(GetLastError(), why, sizeof why));
    log_info("chatrelay %s in console mode (pid %lu); Ctrl+C stops", CHATRELAY_VERSION,
             (unsigned long)GetCurrentProcessId());

    rc = relay_start(opt, &r, no_progress, NULL);
    if (rc != RELAY_OK) {
        log_error("could not start: %s (error %d)", svc_start_error_text(rc), rc);
        SetEvent(g_console_done);
        return 1;
    }
    InterlockedExchangePointer((PVOID volatile *)&g_console_relay, r);
    if (InterlockedCompareExchange(&g_console_stop, 0, 0) != 0)
        relay_request_stop(r);

    status = relay_wait(r, no_progress, NULL);
    log_info("stopped%s", status == 0 ? "" : " with an error");
    log_close();
    SetEvent(g_console_done);
    return status == 0 ? 0 : 1;
}

/* ---- entry ---------------------------------------------------------------- */

/* argv as UTF-8 from the UTF-16 command line; NULL on failure. */
static char **utf8_argv(int *argc)
{
    LPWSTR *wargv = CommandLineToArgvW(GetCommandLineW(), argc);
    char **argv;
    int i;
    if (wargv == NULL)
        return NULL;
    argv = calloc((size_t)*argc + 1, sizeof *argv);
    for (i = 0; argv != NULL && i < *argc; i++) {
        argv[i] = win_utf8_from_wide(wargv[i]);
        if (argv[i] == NULL) {
            while (i-- > 0)
                free(argv[i]);
            free(argv);
            argv = NULL;
        }
    }
    LocalFree(wargv);
    return argv;
}

/* An exception nothing handled ends the process; under Wine (no crash
 * debugger) and for a service (no console) it would end without a word.  The
 * log says what and where, so a silent death of the service is never silent. */
static LONG WINAPI on_unhandled_exception(EXCEPTION_POINTERS *ep)
{
    char line[200];
    snprintf(line, sizeof line, "FATAL unhandled exception 0x%08lx at %p in thread %lu; the process ends\n",
             (unsigned long)ep->ExceptionRecord->ExceptionCode, ep->ExceptionRecord->ExceptionAddress,
             (unsigned long)GetCurrentThreadId());
    log_emergency(line);
    return EXCEPTION_CONTINUE_SEARCH;
}

int main(void)
{
    int argc = 0;
    char **argv = utf8_argv(&argc);
    relay_options opt;
    char err[512];
    int parse_rc;
    unsigned long dispatch_err;

    if (argv == NULL) {
        fprintf(stderr, "chatrelay: cannot read the command line (error %lu)\n", (unsigned long)GetLastError());
        return 2;
    }
    (void)SetUnhandledExceptionFilter(on_unhandled_exception);   /* returns the previous filter */
    if (argc >= 2 && strcmp(argv[1], "install") == 0)
        return install_main(argc, argv, 2);
    if (argc >= 2 && strcmp(argv[1], "uninstall") == 0)
        return uninstall_main(argc, argv, 2);
    if (argc >= 2 && strcmp(argv[1], "configure") == 0)
        return configure_main(argc, argv, 2);

    options_defaults(&opt);
    parse_rc = options_parse(&opt, argc, argv, 1, err, sizeof err);
    if (parse_rc == 0 && opt.help) {
        win_print(stdout, USAGE);
        win_print(stdout, install_help());
        win_print(stdout, "\n");
        win_print(stdout, options_help());
        return 0;
    }
    if (parse_rc == 0 && opt.version) {
        win_print(stdout, "chatrelay " CHATRELAY_VERSION "\n");
        return 0;
    }
    if (parse_rc == 0 && opt.console)
        return run_console(&opt);
    if (parse_rc != 0 && opt.console) {
        win_printf(stderr, "chatrelay: %s\n", err);
        return 2;
    }

    /* No mode given: the SCM started us, or someone ran us by hand.  With bad
     * options the service still connects, to report why it cannot start. */
    dispatch_err = svc_run(&opt, parse_rc == 0 ? NULL : err);
    if (dispatch_err == ERROR_FAILED_SERVICE_CONTROLLER_CONNECT) {
        if (parse_rc != 0) {
            win_printf(stderr, "chatrelay: %s\n", err);
            return 2;
        }
        win_print(stderr, NOT_A_SERVICE);
        return 1;
    }
    if (dispatch_err != 0) {
        char why[256];
        win_printf(stderr, "chatrelay: StartServiceCtrlDispatcherW: %s\n",
                   win_error_text(dispatch_err, why, sizeof why));
        return 1;
    }
    log_close();
    return 0;
}

/* install: see install.h. */
#include "install.h"

#include <windows.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "datadir.h"
#include "eventlog.h"
#include "options.h"
#include "svc.h"
#include "winutil.h"

#define SERVICE_NAME_MAX 80
#define BINPATH_MAX 8192
#define UNINSTALL_STOP_WAIT_MS 30000

static const char INSTALL_HELP[] =
    "  install [--service-name NAME] [options]\n"
    "      register the Windows service (run as administrator): NAME (default\n"
    "      ChatRelay) runs this chatrelay.exe with the options given, as\n"
    "      NT AUTHORITY\\LocalService, started automatically (delayed) and\n"
    "      restarted if it fails.  Start it with: sc start NAME\n"
    "  uninstall [--service-name NAME]\n"
    "      stop the service if it runs and remove it (run as administrator);\n"
    "      the data folder %ProgramData%\\ChatRelay is kept\n"
    "  configure [--service-name NAME]\n"
    "      apply the settings `install` makes beyond creating the service\n"
    "      (restart on failure, delayed start, data folder permissions, event\n"
    "      source) to an existing service; the MSI runs this\n";

const char *install_help(void)
{
    return INSTALL_HELP;
}

static int has_control(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return 1;
    return 0;
}

/* Takes --service-name NAME / --service-name=NAME out of argv[first..argc)
 * (moving the other arguments down) and returns the new argc, or -1 with a
 * message printed. */
static int take_service_name(int argc, char **argv, int first, wchar_t *name, size_t cap)
{
    int i, out = first;
    wcscpy(name, SVC_DEFAULT_NAME);
    for (i = first; i < argc; i++) {
        const char *value = NULL;
        wchar_t *w;
        size_t n;
        if (strcmp(argv[i], "--service-name") == 0) {
            if (i + 1 >= argc) {
                win_print(stderr, "chatrelay: --service-name: expected a value after it\n");
                return -1;
            }
            value = argv[++i];
        } else if (strncmp(argv[i], "--service-name=", 15) == 0) {
            value = argv[i] + 15;
        } else {
            argv[out++] = argv[i];
            continue;
        }
        n = strlen(value);
        w = win_wide_from_utf8(value);
        /* The SCM forbids / and \ in names; keep them printable too. */
        if (w == NULL || n == 0 || wcslen(w) >= cap || wcslen(w) > SERVICE_NAME_MAX ||
            strpbrk(value, "/\\\"") != NULL || has_control(value)) {
            win_printf(stderr, "chatrelay: --service-name: expected 1 to %d characters without / \\ \" "
                               "or control characters, got '%s'\n", SERVICE_NAME_MAX, value);
            free(w);
            return -1;
        }
        wcscpy(name, w);
        free(w);
    }
    return out;
}

static void print_win_error(const char *what, DWORD err)
{
    char why[256];
    win_printf(stderr, "chatrelay: %s: %s\n", what, win_error_text(err, why, sizeof why));
    if (err == ERROR_ACCESS_DENIED)
        win_print(stderr, "chatrelay: run this from an elevated prompt (Run as administrator).\n");
}

static SC_HANDLE open_scm(DWORD access)
{
    SC_HANDLE scm = OpenSCManagerW(NULL, NULL, access);
    if (scm == NULL)
        print_win_error("OpenSCManagerW", GetLastError());
    return scm;
}

/* The optional parts of the configuration: a failure is reported, not fatal. */
static int configure_service(SC_HANDLE svc)
{
    static wchar_t description[] =
        L"ChatRelay: a line-based TCP chat relay with SQLite history. "
        L"Log: %ProgramData%\\ChatRelay\\chatrelay.log";
    SERVICE_DESCRIPTIONW desc;
    SERVICE_DELAYED_AUTO_START_INFO delayed;
    SERVICE_FAILURE_ACTIONSW failure;
    SERVICE_FAILURE_ACTIONS_FLAG failure_flag;
    SERVICE_PRESHUTDOWN_INFO preshutdown;
    SC_ACTION actions[3];
    int warnings = 0;

    desc.lpDescription = description;
    if (!ChangeServiceConfig2W(svc, SERVICE_CONFIG_DESCRIPTION, &desc)) {
        print_win_error("warning: ChangeServiceConfig2W(DESCRIPTION)", GetLastError());
        warnings++;
    }
    /* Delayed: the network and the disks are up by then. */
    delayed.fDelayedAutostart = TRUE;
    if (!ChangeServiceConfig2W(svc, SERVICE_CONFIG_DELAYED_AUTO_START_INFO, &delayed)) {
        print_win_error("warning: ChangeServiceConfig2W(DELAYED_AUTO_START_INFO)", GetLastError());
        warnings++;
    }
    /* Restart after 5 s, then 30 s, then every 2 min; the count resets after a day. */
    actions[0].Type = SC_ACTION_RESTART;
    actions[0].Delay = 5000;
    actions[1].Type = SC_ACTION_RESTART;
    actions[1].Delay = 30000;
    actions[2].Type = SC_ACTION_RESTART;
    actions[2].Delay = 120000;
    memset(&failure, 0, sizeof failure);
    failure.dwResetPeriod = 86400;
    failure.cActions = 3;
    failure.lpsaActions = actions;
    if (!ChangeServiceConfig2W(svc, SERVICE_CONFIG_FAILURE_ACTIONS, &failure)) {
        print_win_error("warning: ChangeServiceConfig2W(FAILURE_ACTIONS)", GetLastError());
        warnings++;
    }
    /* Also when the service stops itself with an error (not only on a crash). */
    failure_flag.fFailureActionsOnNonCrashFailures = TRUE;
    if (!ChangeServiceConfig2W(svc, SERVICE_CONFIG_FAILURE_ACTIONS_FLAG, &failure_flag)) {
        print_win_error("warning: ChangeServiceConfig2W(FAILURE_ACTIONS_FLAG)", GetLastError());
        warnings++;
    }
    /* Enough time at shutdown to say goodbye to clients and commit. */
    preshutdown.dwPreshutdownTimeout = 15000;
    if (!ChangeServiceConfig2W(svc, SERVICE_CONFIG_PRESHUTDOWN_INFO, &preshutdown)) {
        print_win_error("warning: ChangeServiceConfig2W(PRESHUTDOWN_INFO)", GetLastError());
        warnings++;
    }
    return warnings;
}

/* Creates the data folder with permissions for LocalService. */
static int prepare_data_folder(void)
{
    char dir[OPTIONS_PATH_MAX], err[512];
    if (datadir_path(dir, sizeof dir, err, sizeof err) != 0 || datadir_ensure(dir, 1, err, sizeof err) != 0) {
        win_printf(stderr, "chatrelay: warning: data folder: %s\n", err);
        return 1;
    }
    if (datadir_grant_service_access(dir, err, sizeof err) != 0) {
        win_printf(stderr, "chatrelay: warning: data folder permissions: %s\n", err);
        return 1;
    }
    win_printf(stdout, "Data folder: %s (LocalService may write, administrators have full control)\n", dir);
    return 0;
}

/* Everything beyond CreateServiceW; failures are warnings.  Returns the count. */
static int configure_all(SC_HANDLE svc, const wchar_t *name, const wchar_t *exe)
{
    char err[512];
    int warnings = configure_service(svc);
    warnings += prepare_data_folder();
    if (eventlog_register(name, exe, err, sizeof err) != 0) {
        win_printf(stderr, "chatrelay: warning: event source: %s\n", err);
        warnings++;
    }
    return warnings;
}

int install_main(int argc, char **argv, int first)
{
    wchar_t name[SERVICE_NAME_MAX + 1];
    wchar_t *exe, *binpath;
    char err[512], *binpath8;
    relay_options check;
    SC_HANDLE scm, svc;
    int i;

    argc = take_service_name(argc, argv, first, name, sizeof name / sizeof name[0]);
    if (argc < 0)
        return 2;
    /* Reject now what the service would reject at every start. */
    options_defaults(&check);
    if (options_parse(&check, argc, argv, first, err, sizeof err) != 0) {
        win_printf(stderr, "chatrelay: install: %s\n", err);
        return 2;
    }
    if (check.console || check.help || check.version) {
        win_print(stderr, "chatrelay: install: --console, --help and --version are not service options\n");
        return 2;
    }

    exe = win_exe_path();
    binpath = calloc(BINPATH_MAX, sizeof *binpath);
    if (exe == NULL || binpath == NULL) {
        print_win_error("GetModuleFileNameW", exe == NULL ? GetLastError() : ERROR_NOT_ENOUGH_MEMORY);
        free(exe);
        free(binpath);
        return 1;
    }
    /* Always quoted: an unquoted path with spaces is the classic service
     * hijack (C:\Program.exe). */
    binpath[0] = L'"';
    if (wcslen(exe) + 3 >= BINPATH_MAX) {
        win_print(stderr, "chatrelay: install: the program path is too long\n");
        free(exe);
        free(binpath);
        return 1;
    }
    wcscat(binpath, exe);
    wcscat(binpath, L"\"");
    for (i = first; i < argc; i++) {
        wchar_t *w = win_wide_from_utf8(argv[i]);
        if (w == NULL || win_append_arg(binpath, BINPATH_MAX, w) != 0) {
            win_print(stderr, "chatrelay: install: the options are too long for a service command line\n");
            free(w);
            free(exe);
            free(binpath);
            return 2;
        }
        free(w);
    }

    scm = open_scm(SC_MANAGER_CONNECT | SC_MANAGER_CREATE_SERVICE);
    if (scm == NULL) {
        free(exe);
        free(binpath);
        return 1;
    }
    svc = CreateServiceW(scm, name,
                         wcscmp(name, SVC_DEFAULT_NAME) == 0 ? L"ChatRelay chat relay" : name,
                         SERVICE_ALL_ACCESS, SERVICE_WIN32_OWN_PROCESS, SERVICE_AUTO_START,
                         SERVICE_ERROR_NORMAL, binpath, NULL, NULL, NULL,
                         L"NT AUTHORITY\\LocalService", L"");
    if (svc == NULL) {
        DWORD e = GetLastError();
        char *name8 = win_utf8_from_wide(name);
        if (e == ERROR_SERVICE_EXISTS)
            win_printf(stderr, "chatrelay: install: a service named %s already exists; "
                               "remove it first with: chatrelay.exe uninstall%s%s\n",
                       name8 ? name8 : "?", wcscmp(name, SVC_DEFAULT_NAME) ? " --service-name " : "",
                       wcscmp(name, SVC_DEFAULT_NAME) && name8 ? name8 : "");
        else if (e == ERROR_SERVICE_MARKED_FOR_DELETE)
            win_printf(stderr, "chatrelay: install: service %s is still being deleted; close the Services "
                               "console and try again\n", name8 ? name8 : "?");
        else
            print_win_error("install: CreateServiceW", e);
        free(name8);
        CloseServiceHandle(scm);
        free(exe);
        free(binpath);
        return 1;
    }
    configure_all(svc, name, exe);
    CloseServiceHandle(svc);
    CloseServiceHandle(scm);

    binpath8 = win_utf8_from_wide(binpath);
    {
        char *name8 = win_utf8_from_wide(name);
        win_printf(stdout, "Installed service %s: %s\nStart it with: sc start %s\n", name8 ? name8 : "?",
                   binpath8 ? binpath8 : "?", name8 ? name8 : "?");
        free(name8);
    }
    free(binpath8);
    free(exe);
    free(binpath);
    return 0;
}

int configure_main(int argc, char **argv, int first)
{
    wchar_t name[SERVICE_NAME_MAX + 1];
    wchar_t *exe;
    SC_HANDLE scm, svc;
    int warnings;

    argc = take_service_name(argc, argv, first, name, sizeof name / sizeof name[0]);
    if (argc < 0)
        return 2;
    if (argc > first) {
        win_printf(stderr, "chatrelay: configure: unexpected argument '%s' (only --service-name NAME)\n", argv[first]);
        return 2;
    }
    exe = win_exe_path();
    if (exe == NULL) {
        print_win_error("configure: GetModuleFileNameW", GetLastError());
        return 1;
    }
    scm = open_scm(SC_MANAGER_CONNECT);
    if (scm == NULL) {
        free(exe);
        return 1;
    }
    svc = OpenServiceW(scm, name, SERVICE_CHANGE_CONFIG | SERVICE_START | SERVICE_QUERY_CONFIG);
    if (svc == NULL) {
        print_win_error("configure: OpenServiceW", GetLastError());
        CloseServiceHandle(scm);
        free(exe);
        return 1;
    }
    warnings = configure_all(svc, name, exe);
    CloseServiceHandle(svc);
    CloseServiceHandle(scm);
    free(exe);
    return warnings == 0 ? 0 : 1;
}

/* Stops svc if it runs and waits (bounded) until the SCM reports STOPPED. */
static int stop_and_wait(SC_HANDLE svc)
{
    SERVICE_STATUS st;
    DWORD waited = 0;
    if (!QueryServiceStatus(svc, &st)) {
        print_win_error("uninstall: QueryServiceStatus", GetLastError());
        return -1;
    }
    if (st.dwCurrentState == SERVICE_STOPPED)
        return 0;
    if (st.dwCurrentState != SERVICE_STOP_PENDING) {
        win_print(stdout, "Stopping the service...\n");
        if (!ControlService(svc, SERVICE_CONTROL_STOP, &st)) {
            DWORD e = GetLastError();
            /* Still starting (1061) or just stopped (1062): keep polling. */
            if (e != ERROR_SERVICE_CANNOT_ACCEPT_CTRL && e != ERROR_SERVICE_NOT_ACTIVE) {
                print_win_error("uninstall: ControlService(STOP)", e);
                return -1;
            }
        }
    }
    while (waited < UNINSTALL_STOP_WAIT_MS) {
        if (!QueryServiceStatus(svc, &st)) {
            print_win_error("uninstall: QueryServiceStatus", GetLastError());
            return -1;
        }
        if (st.dwCurrentState == SERVICE_STOPPED)
            return 0;
        if (st.dwCurrentState == SERVICE_RUNNING || st.dwCurrentState == SERVICE_START_PENDING)
            ControlService(svc, SERVICE_CONTROL_STOP, &st);   /* it was starting: ask again */
        Sleep(250);
        waited += 250;
    }
    win_printf(stderr, "chatrelay: uninstall: the service did not stop within %d s; it is removed once it stops\n",
               UNINSTALL_STOP_WAIT_MS / 1000);
    return -1;
}

int uninstall_main(int argc, char **argv, int first)
{
    wchar_t name[SERVICE_NAME_MAX + 1];
    char err[512], *name8;
    SC_HANDLE scm, svc;
    int rc = 0;

    argc = take_service_name(argc, argv, first, name, sizeof name / sizeof name[0]);
    if (argc < 0)
        return 2;
    if (argc > first) {
        win_printf(stderr, "chatrelay: uninstall: unexpected argument '%s' (only --service-name NAME)\n", argv[first]);
        return 2;
    }
    name8 = win_utf8_from_wide(name);
    scm = open_scm(SC_MANAGER_CONNECT);
    if (scm == NULL) {
        free(name8);
        return 1;
    }
    svc = OpenServiceW(scm, name, SERVICE_STOP | SERVICE_QUERY_STATUS | DELETE);
    if (svc == NULL) {
        DWORD e = GetLastError();
        if (e == ERROR_SERVICE_DOES_NOT_EXIST)
            win_printf(stderr, "chatrelay: uninstall: service %s is not installed\n", name8 ? name8 : "?");
        else
            print_win_error("uninstall: OpenServiceW", e);
        CloseServiceHandle(scm);
        eventlog_unregister(name, err, sizeof err);   /* a leftover source goes too */
        free(name8);
        return 1;
    }
    stop_and_wait(svc);
    if (!DeleteService(svc)) {
        DWORD e = GetLastError();
        if (e != ERROR_SERVICE_MARKED_FOR_DELETE) {
            print_win_error("uninstall: DeleteService", e);
            rc = 1;
        }
    }
    CloseServiceHandle(svc);
    CloseServiceHandle(scm);
    if (rc == 0) {
        if (eventlog_unregister(name, err, sizeof err) != 0)
            win_printf(stderr, "chatrelay: warning: event source: %s\n", err);
        win_printf(stdout, "Removed service %s.  The data folder (history, log) is kept: "
                           "%%ProgramData%%\\ChatRelay\n", name8 ? name8 : "?");
    }
    free(name8);
    return rc;
}

/* datadir: see datadir.h. */
#include "datadir.h"

#include <windows.h>
#include <aclapi.h>
#include <sddl.h>
#include <shlobj.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "winutil.h"

#define DATADIR_NAME "ChatRelay"

int datadir_path(char *out, size_t cap, char *err, size_t errlen)
{
    wchar_t base[MAX_PATH];
    char *base8;
    HRESULT hr = SHGetFolderPathW(NULL, CSIDL_COMMON_APPDATA, NULL, SHGFP_TYPE_CURRENT, base);
    if (FAILED(hr)) {
        /* The environment of a service has it too. */
        DWORD n = GetEnvironmentVariableW(L"ProgramData", base, MAX_PATH);
        if (n == 0 || n >= MAX_PATH) {
            snprintf(err, errlen, "cannot find %%ProgramData%%: SHGetFolderPathW failed (0x%08lx)",
                     (unsigned long)hr);
            return -1;
        }
    }
    base8 = win_utf8_from_wide(base);
    if (base8 == NULL) {
        snprintf(err, errlen, "cannot convert the %%ProgramData%% path to UTF-8");
        return -1;
    }
    if ((size_t)snprintf(out, cap, "%s\\%s", base8, DATADIR_NAME) >= cap) {
        snprintf(err, errlen, "the %%ProgramData%% path is too long");
        free(base8);
        return -1;
    }
    free(base8);
    return 0;
}

/* Protected DACL, inherited by files and subfolders:
 *   SYSTEM, Administrators: full control;
 *   LocalService (the service account): modify (0x1301bf, icacls "M"):
 *   read, write, append, execute and delete, but not change permissions.
 * install.cmd sets the same with icacls. */
static const wchar_t SERVICE_SDDL[] = L"D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICI;0x1301bf;;;LS)";

static int service_security(PSECURITY_DESCRIPTOR *sd, char *err, size_t errlen)
{
    char why[256];
    if (!ConvertStringSecurityDescriptorToSecurityDescriptorW(SERVICE_SDDL, SDDL_REVISION_1, sd, NULL)) {
        snprintf(err, errlen, "ConvertStringSecurityDescriptorToSecurityDescriptorW: %s",
                 win_error_text(GetLastError(), why, sizeof why));
        return -1;
    }
    return 0;
}

int datadir_ensure(const char *dir, int service_acl, char *err, size_t errlen)
{
    wchar_t *w = win_wide_from_utf8(dir);
    SECURITY_ATTRIBUTES sa;
    PSECURITY_DESCRIPTOR sd = NULL;
    char why[256];
    BOOL ok;
    DWORD e;

    if (w == NULL) {
        snprintf(err, errlen, "%s: not a valid UTF-8 path", dir);
        return -1;
    }
    if (service_acl && service_security(&sd, err, errlen) != 0) {
        free(w);
        return -1;
    }
    sa.nLength = sizeof sa;
    sa.lpSecurityDescriptor = sd;
    sa.bInheritHandle = FALSE;
    ok = CreateDirectoryW(w, sd != NULL ? &sa : NULL);
    e = GetLastError();
    free(w);
    if (sd != NULL)
        LocalFree(sd);
    if (ok)
        return 0;
    if (e == ERROR_ALREADY_EXISTS)
        /* A file of that name is "already there" too: it must be a folder. */
        return datadir_check_folder(dir, err, errlen);
    snprintf(err, errlen, "cannot create folder %s: CreateDirectoryW: %s", dir, win_error_text(e, why, sizeof why));
    return -1;
}

int datadir_check_folder(const char *dir, char *err, size_t errlen)
{
    wchar_t *w = win_wide_from_utf8(dir);
    char why[256];
    DWORD attr, e;

    if (w == NULL) {
        snprintf(err, errlen, "%s: not a valid UTF-8 path", dir);
        return -1;
    }
    attr = GetFileAttributesW(w);
    e = GetLastError();
    free(w);
    if (attr == INVALID_FILE_ATTRIBUTES) {
        if (e == ERROR_FILE_NOT_FOUND || e == ERROR_PATH_NOT_FOUND)
            snprintf(err, errlen, "the folder %s does not exist (GetFileAttributesW: %s)", dir,
                     win_error_text(e, why, sizeof why));
        else
            snprintf(err, errlen, "cannot reach the folder %s: GetFileAttributesW: %s", dir,
                     win_error_text(e, why, sizeof why));
        return -1;
    }
    if (!(attr & FILE_ATTRIBUTE_DIRECTORY)) {
        snprintf(err, errlen, "%s is a file, not a folder", dir);
        return -1;
    }
    return 0;
}

int datadir_check_db_folder(const char *db_path, char *err, size_t errlen)
{
    char dir[OPTIONS_PATH_MAX], why[512];
    const char *slash = NULL, *p;
    size_t len;

    for (p = db_path; *p != '\0'; p++)
        if (*p == '\\' || *p == '/')
            slash = p;
    if (slash == NULL)
        return 0;                           /* in the current folder, which exists */
    len = (size_t)(slash - db_path);
    /* "C:\history.db", "\history.db": the root of a drive; it exists if the drive does,
     * and SQLite says so if it does not. */
    if (len == 0 || (len == 2 && db_path[1] == ':'))
        return 0;
    if (len >= sizeof dir) {
        snprintf(err, errlen, "history \"%s\": the path is too long", db_path);
        return -1;
    }
    memcpy(dir, db_path, len);
    dir[len] = '\0';
    if (datadir_check_folder(dir, why, sizeof why) != 0) {
        snprintf(err, errlen, "history \"%s\": cannot be opened: %s; create the folder or give another "
                 "--db", db_path, why);
        return -1;
    }
    return 0;
}

int datadir_grant_service_access(const char *dir, char *err, size_t errlen)
{
    PSECURITY_DESCRIPTOR sd = NULL;
    PACL dacl = NULL;
    BOOL present = FALSE, defaulted = FALSE;
    wchar_t *w;
    DWORD rc;
    char why[256];

    if (service_security(&sd, err, errlen) != 0)
        return -1;
    if (!GetSecurityDescriptorDacl(sd, &present, &dacl, &defaulted) || !present) {
        snprintf(err, errlen, "GetSecurityDescriptorDacl: %s", win_error_text(GetLastError(), why, sizeof why));
        LocalFree(sd);
        return -1;
    }
    w = win_wide_from_utf8(dir);
    if (w == NULL) {
        snprintf(err, errlen, "%s: not a valid UTF-8 path", dir);
        LocalFree(sd);
        return -1;
    }
    rc = SetNamedSecurityInfoW(w, SE_FILE_OBJECT, DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
                               NULL, NULL, dacl, NULL);
    free(w);
    LocalFree(sd);
    if (rc != ERROR_SUCCESS) {
        snprintf(err, errlen, "SetNamedSecurityInfoW(%s): %s", dir, win_error_text(rc, why, sizeof why));
        return -1;
    }
    return 0;
}

int datadir_fill_defaults(relay_options *o, int service, char *err, size_t errlen)
{
    char dir[OPTIONS_PATH_MAX];
    int need_db = !o->no_history && o->db_path[0] == '\0';
    int need_log = service && o->log_path[0] == '\0';

    if (!need_db && !need_log)
        return 0;
    if (datadir_path(dir, sizeof dir - 16, err, errlen) != 0 || datadir_ensure(dir, service, err, errlen) != 0)
        return -1;
    if (need_db)
        snprintf(o->db_path, sizeof o->db_path, "%s\\history.db", dir);
    if (need_log)
        snprintf(o->log_path, sizeof o->log_path, "%s\\chatrelay.log", dir);
    return 0;
}

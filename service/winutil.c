/* winutil: see winutil.h. */
#include "winutil.h"

#include <windows.h>

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

char *win_utf8_from_wide(const wchar_t *w)
{
    int n = WideCharToMultiByte(CP_UTF8, 0, w, -1, NULL, 0, NULL, NULL);
    char *s;
    if (n <= 0)
        return NULL;
    s = malloc((size_t)n);
    if (s == NULL)
        return NULL;
    if (WideCharToMultiByte(CP_UTF8, 0, w, -1, s, n, NULL, NULL) != n) {
        free(s);
        return NULL;
    }
    return s;
}

wchar_t *win_wide_from_utf8(const char *s)
{
    int n = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, s, -1, NULL, 0);
    wchar_t *w;
    if (n <= 0)
        return NULL;
    w = malloc((size_t)n * sizeof *w);
    if (w == NULL)
        return NULL;
    if (MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, s, -1, w, n) != n) {
        free(w);
        return NULL;
    }
    return w;
}

const char *win_error_text(unsigned long err, char *buf, size_t cap)
{
    wchar_t wide[512];
    DWORD n = FormatMessageW(FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS, NULL, (DWORD)err,
                             0, wide, (DWORD)(sizeof wide / sizeof wide[0]), NULL);
    char *text = NULL;
    if (cap == 0)
        return buf;
    /* Messages end in ".\r\n": keep one line. */
    while (n > 0 && (wide[n - 1] == L'\r' || wide[n - 1] == L'\n' || wide[n - 1] == L' '))
        wide[--n] = 0;
    if (n > 0)
        text = win_utf8_from_wide(wide);
    if (text != NULL) {
        snprintf(buf, cap, "%s (error %lu)", text, err);
        free(text);
    } else {
        snprintf(buf, cap, "error %lu", err);
    }
    return buf;
}

void win_print(FILE *stream, const char *utf8)
{
    HANDLE h = GetStdHandle(stream == stderr ? STD_ERROR_HANDLE : STD_OUTPUT_HANDLE);
    DWORD mode, written;
    if (h != NULL && h != INVALID_HANDLE_VALUE && GetConsoleMode(h, &mode)) {
        wchar_t *w = win_wide_from_utf8(utf8);
        if (w != NULL) {
            fflush(stream);
            if (WriteConsoleW(h, w, (DWORD)wcslen(w), &written, NULL)) {
                free(w);
                return;
            }
            free(w);
        }
    }
    fputs(utf8, stream);
    fflush(stream);
}

void win_printf(FILE *stream, const char *fmt, ...)
{
    char buf[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    win_print(stream, buf);
}

wchar_t *win_exe_path(void)
{
    DWORD cap = MAX_PATH;
    for (;;) {
        wchar_t *path = malloc(cap * sizeof *path);
        DWORD n;
        if (path == NULL) {
            SetLastError(ERROR_NOT_ENOUGH_MEMORY);
            return NULL;
        }
        n = GetModuleFileNameW(NULL, path, cap);
        if (n == 0) {
            free(path);
            return NULL;
        }
        if (n < cap)
            return path;
        free(path);                 /* truncated: try a larger buffer */
        if (cap >= 32768) {
            SetLastError(ERROR_INSUFFICIENT_BUFFER);
            return NULL;
        }
        cap *= 2;
    }
}

/* The rules of CommandLineToArgvW / the MSVC CRT: inside quotes, 2n
 * backslashes before a quote are n backslashes, 2n+1 plus a quote are n
 * backslashes and a literal quote; backslashes elsewhere are literal. */
int win_append_arg(wchar_t *cmd, size_t cap, const wchar_t *arg)
{
    size_t len = wcslen(cmd), original_len = len;
    int need_quotes = arg[0] == 0 || wcspbrk(arg, L" \t\n\v\"") != NULL;
    const wchar_t *p;

#define PUT(c) do { if (len + 1 >= cap) goto too_long; cmd[len++] = (c); } while (0)
    if (len > 0)
        PUT(L' ');
    if (!need_quotes) {
        for (p = arg; *p; p++)
            PUT(*p);
        cmd[len] = 0;
        return 0;
    }
    PUT(L'"');
    for (p = arg;; p++) {
        size_t backslashes = 0, i;
        while (*p == L'\\') {
            backslashes++;
            p++;
        }
        if (*p == 0) {
            for (i = 0; i < backslashes * 2; i++)      /* before the closing quote */
                PUT(L'\\');
            break;
        }
        if (*p == L'"') {
            for (i = 0; i < backslashes * 2 + 1; i++)
                PUT(L'\\');
        } else {
            for (i = 0; i < backslashes; i++)
                PUT(L'\\');
        }
        PUT(*p);
    }
    PUT(L'"');
#undef PUT
    cmd[len] = 0;
    return 0;
too_long:
    cmd[original_len] = 0;
    return -1;
}

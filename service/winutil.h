/* winutil: the small Win32 chores shared by main, svc and install.
 *
 * Owns: UTF-8 <-> UTF-16 conversion, turning a Win32 error code into one line
 * of text, printing UTF-8 to the console, this program's own path, and
 * quoting one argument for a Windows command line.
 * Never: keeps state.  Win32 only.
 */
#ifndef CHATRELAY_WINUTIL_H
#define CHATRELAY_WINUTIL_H

#include <stddef.h>
#include <stdio.h>
#include <wchar.h>

/* Newly allocated conversions (free() them); NULL on invalid input or no memory. */
char *win_utf8_from_wide(const wchar_t *w);
wchar_t *win_wide_from_utf8(const char *s);

/* "Access is denied. (error 5)" for err, in buf (always NUL-terminated);
 * returns buf. */
const char *win_error_text(unsigned long err, char *buf, size_t cap);

/* Writes UTF-8 text to stdout/stderr: WriteConsoleW when the stream is a
 * console (so non-ASCII paths show right), plain bytes when redirected. */
void win_print(FILE *stream, const char *utf8);
void win_printf(FILE *stream, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* The full path of the running exe, newly allocated; NULL on failure
 * (GetLastError tells why). */
wchar_t *win_exe_path(void);

/* Appends arg to cmd (capacity cap wide chars), preceded by a space unless
 * cmd is empty, quoted so that CommandLineToArgvW gives arg back unchanged.
 * Returns 0, or -1 if it does not fit. */
int win_append_arg(wchar_t *cmd, size_t cap, const wchar_t *arg);

#endif

/* log: formats one line per event and hands it to the sinks.
 *
 * A line is "2026-11-27T03:04:05.123Z INFO message\n": the wall clock and its
 * text are clock.h's (clock_format_utc, the formatter history's `at` uses
 * too).  Control characters in a message (a client's text, a path) become
 * '?', so one event is always one line and nobody can forge log lines.
 *
 * The file sink is opened in binary append mode and flushed after every line
 * (tests and administrators read it while the relay runs).  Past max_bytes it
 * is closed, renamed to path.1 (replacing the previous copy) and reopened
 * empty: at most about 2 * max_bytes on disk.
 *
 * Threads: more than one logs, so there is one lock, g_lock_word below, the
 * only lock of the portable core (docs/ARCHITECTURE.md).  The I/O thread
 * writes nearly every line.  The thread that started the relay (ServiceMain's,
 * or main's in console mode) logs before the I/O thread exists and after it
 * ended, and while it runs writes the stop request ("service: STOP requested",
 * from relay_wait's progress callback) and relay_wait's own errors.  The SCM
 * control handler and the console Ctrl handler threads log only if SetEvent
 * or SetServiceStatus fails.  The lock is a spin lock held only to read the
 * settings and to write one finished line to stderr and the file (and, once
 * per max_bytes, to rotate): formatting and the extra sink (the Event Log, an
 * RPC) run outside it.  The other threads write a handful of lines in the
 * relay's lifetime, so the I/O thread rarely waits, and then for one other
 * line's write (or a rotation).  log_emergency (the unhandled-exception
 * filter, on whichever thread crashed) takes no lock: that thread may be the
 * one holding it.
 *
 * Never: decides what is logged (callers do).
 * Portable C11, no <windows.h>.  The Windows branches are all about file
 * names: paths are UTF-8 in this program, but the CRT's fopen/rename/remove
 * read a char path in the process's ANSI code page, so a non-ASCII --log path
 * would name another file.  The _w* calls take UTF-16, and the Win32
 * converter (MultiByteToWideChar) would need <windows.h>: hence utf8_to_wide
 * below, which refuses (EINVAL) invalid UTF-8 rather than open a different
 * name.  text.h cannot stand in for it: it converts nothing to UTF-16, and its
 * cleaning replaces and removes characters, right for a chat line and wrong
 * for a file name.  (Nor can text_clean do the message's '?': it removes
 * control characters, and a removed CR LF would hide that one was there.)
 */
#if defined(_MSC_VER) && !defined(_CRT_SECURE_NO_WARNINGS)
#define _CRT_SECURE_NO_WARNINGS   /* fopen, _wfopen, strerror are the portable calls here */
#endif
#include "log.h"

#include "clock.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _WIN32
#include <wchar.h>
#endif
#define LOG_LINE_MAX 2048          /* longer messages are cut and end in "..." */
#define LOG_PATH_MAX 1024

static struct {
    int to_stderr;
    log_level level;
    FILE *file;
    char path[LOG_PATH_MAX];
    size_t max_bytes;
    size_t file_bytes;             /* current size of the file */
    log_sink_fn sink;
    log_level sink_level;
} g_log = { 1, LOG_INFO, NULL, "", 0, 0, NULL, LOG_ERROR };

/* The lock (see the top of the file: who takes it and for how long): compiler
 * intrinsics (no <windows.h>, no C11 atomics, which MSVC lacks); a compiler
 * without either gets no lock (single-threaded use). */
static volatile long g_lock_word;

#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
static void log_lock(void)
{
    while (_InterlockedExchange(&g_lock_word, 1) != 0) {
#if defined(_M_IX86) || defined(_M_X64)
        _mm_pause();
#endif
    }
}
static void log_unlock(void)
{
    _InterlockedExchange(&g_lock_word, 0);
}
#elif defined(__GNUC__) || defined(__clang__)
static void log_lock(void)
{
    while (__atomic_exchange_n(&g_lock_word, 1, __ATOMIC_ACQUIRE) != 0)
        ;
}
static void log_unlock(void)
{
    __atomic_store_n(&g_lock_word, 0, __ATOMIC_RELEASE);
}
#else
static void log_lock(void) {}
static void log_unlock(void) {}
#endif

static const char *level_name(log_level level)
{
    switch (level) {
    case LOG_DEBUG: return "DEBUG";
    case LOG_INFO:  return "INFO";
    case LOG_WARN:  return "WARN";
    case LOG_ERROR: return "ERROR";
    }
    return "?";
}

#ifdef _WIN32
/* UTF-8 -> UTF-16 for the _w* CRT calls.  Returns 0, or -1 if s is not valid
 * UTF-8 or does not fit. */
static int utf8_to_wide(const char *s, wchar_t *out, size_t cap)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = 0;
    while (*p) {
        uint32_t cp;
        int extra, i;
        if (*p < 0x80) { cp = *p; extra = 0; }
        else if ((*p & 0xE0) == 0xC0) { cp = *p & 0x1Fu; extra = 1; }
        else if ((*p & 0xF0) == 0xE0) { cp = *p & 0x0Fu; extra = 2; }
        else if ((*p & 0xF8) == 0xF0) { cp = *p & 0x07u; extra = 3; }
        else return -1;
        p++;
        for (i = 0; i < extra; i++, p++) {
            if ((*p & 0xC0) != 0x80)
                return -1;
            cp = (cp << 6) | (*p & 0x3Fu);
        }
        if ((extra == 1 && cp < 0x80) || (extra == 2 && cp < 0x800) || (extra == 3 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return -1;
        if (cp >= 0x10000) {
            if (n + 2 >= cap)
                return -1;
            cp -= 0x10000;
            out[n++] = (wchar_t)(0xD800 + (cp >> 10));
            out[n++] = (wchar_t)(0xDC00 + (cp & 0x3FF));
        } else {
            if (n + 1 >= cap)
                return -1;
            out[n++] = (wchar_t)cp;
        }
    }
    out[n] = 0;
    return 0;
}
#endif

static FILE *open_append(const char *path)
{
#ifdef _WIN32
    wchar_t wpath[LOG_PATH_MAX];
    if (utf8_to_wide(path, wpath, LOG_PATH_MAX) != 0) {
        errno = EINVAL;
        return NULL;
    }
    return _wfopen(wpath, L"ab");
#else
    return fopen(path, "ab");
#endif
}

/* Moves path to path.1, replacing an older copy.  Returns 0 or an errno. */
static int rotate_rename(const char *path)
{
    char old_path[LOG_PATH_MAX + 2];
    snprintf(old_path, sizeof old_path, "%s.1", path);
#ifdef _WIN32
    {
        wchar_t wfrom[LOG_PATH_MAX], wto[LOG_PATH_MAX + 2];
        if (utf8_to_wide(path, wfrom, LOG_PATH_MAX) != 0 ||
            utf8_to_wide(old_path, wto, LOG_PATH_MAX + 2) != 0)
            return EINVAL;
        /* The CRT rename does not replace an existing file on Windows. */
        if (_wremove(wto) != 0 && errno != ENOENT)
            return errno;
        if (_wrename(wfrom, wto) != 0)
            return errno;
    }
#else
    if (rename(path, old_path) != 0)
        return errno;
#endif
    return 0;
}

static void write_file(const char *line, size_t len);

/* Called before a line of len bytes is written to the file. */
static void rotate_if_needed(size_t len)
{
    int rename_err;
    if (g_log.max_bytes == 0 || g_log.file_bytes == 0 || g_log.file_bytes + len <= g_log.max_bytes)
        return;
    fclose(g_log.file);
    g_log.file = NULL;
    rename_err = rotate_rename(g_log.path);
    g_log.file = open_append(g_log.path);
    if (g_log.file == NULL) {
        if (g_log.to_stderr)
            fprintf(stderr, "log: cannot reopen %s after rotation: %s\n", g_log.path, strerror(errno));
        return;
    }
    /* If the rename failed (e.g. another program holds the file open), keep
     * appending and try again after another max_bytes rather than every line. */
    g_log.file_bytes = 0;
    if (rename_err != 0) {
        char note[LOG_PATH_MAX + 128];
        int n = snprintf(note, sizeof note, "log: could not rotate %s to .1: %s; still appending\n",
                         g_log.path, strerror(rename_err));
        if (n > 0)
            write_file(note, (size_t)n < sizeof note ? (size_t)n : sizeof note - 1);
    }
}

static void write_file(const char *line, size_t len)
{
    if (g_log.file == NULL)
        return;
    if (fwrite(line, 1, len, g_log.file) == len)
        g_log.file_bytes += len;
    fflush(g_log.file);
}

void log_emergency(const char *line)
{
    if (g_log.file) {
        fputs(line, g_log.file);
        fflush(g_log.file);
    }
    if (g_log.to_stderr)
        fputs(line, stderr);
}

void log_to_stderr(int on)
{
    log_lock();
    g_log.to_stderr = on;
    log_unlock();
}

static void close_locked(void)
{
    if (g_log.file != NULL)
        fclose(g_log.file);
    g_log.file = NULL;
    g_log.path[0] = '\0';
    g_log.file_bytes = 0;
}

int log_open_file(const char *path, size_t max_bytes, char *err, size_t errlen)
{
    FILE *f;
    long size;
    size_t len = path != NULL ? strlen(path) : 0;

    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (len == 0 || len >= LOG_PATH_MAX) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "log file path must be 1 to %d bytes", LOG_PATH_MAX - 1);
        return -1;
    }
    f = open_append(path);
    if (f == NULL) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "cannot open log file %s: %s", path, strerror(errno));
        return -1;
    }
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0)
        size = 0;
    log_lock();
    close_locked();
    g_log.file = f;
    memcpy(g_log.path, path, len + 1);
    g_log.max_bytes = max_bytes;
    g_log.file_bytes = (size_t)size;
    log_unlock();
    return 0;
}

void log_set_sink(log_sink_fn fn, log_level min_level)
{
    log_lock();
    g_log.sink = fn;
    g_log.sink_level = min_level;
    log_unlock();
}

void log_set_level(log_level min_level)
{
    log_lock();
    g_log.level = min_level;
    log_unlock();
}

void log_close(void)
{
    log_lock();
    close_locked();
    log_unlock();
}

void log_msg(log_level level, const char *fmt, ...)
{
    char line[LOG_LINE_MAX];
    char stamp[CLOCK_TIME_LEN + 1];
    va_list ap;
    int head, n;
    size_t len, i;
    int want_main, want_sink;
    log_sink_fn sink;

    log_lock();
    want_main = level >= g_log.level && (g_log.to_stderr || g_log.file != NULL);
    sink = level >= g_log.sink_level ? g_log.sink : NULL;
    want_sink = sink != NULL;
    log_unlock();

    if (!want_main && !want_sink)
        return;
    clock_format_utc(clock_wall_ms(), stamp);
    head = snprintf(line, sizeof line, "%s %s ", stamp, level_name(level));
    if (head < 0)
        return;
    va_start(ap, fmt);
    n = vsnprintf(line + head, sizeof line - (size_t)head - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    len = (size_t)head + (size_t)n;
    if (len > sizeof line - 2) {
        len = sizeof line - 2;
        memcpy(line + len - 3, "...", 3);
    }
    for (i = (size_t)head; i < len; i++) {
        unsigned char c = (unsigned char)line[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            line[i] = '?';
    }
    line[len] = '\0';

    /* The sink (the Event Log: an RPC) runs outside the lock. */
    if (want_sink)
        sink(level, line);
    if (!want_main)
        return;
    line[len] = '\n';
    line[len + 1] = '\0';
    log_lock();
    if (g_log.to_stderr) {
        fwrite(line, 1, len + 1, stderr);
        fflush(stderr);
    }
    if (g_log.file != NULL) {
        rotate_if_needed(len + 1);
        write_file(line, len + 1);
    }
    log_unlock();
}

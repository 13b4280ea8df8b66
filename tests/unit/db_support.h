/* db_support: what the storage tests and benchmarks share: deleting a
 * database with its side files, and a monotonic clock in milliseconds.
 * Header-only (static inline) so each test stays one executable.  Users
 * define _POSIX_C_SOURCE before any include (clock_gettime on Linux). */
#ifndef CHATRELAY_DB_SUPPORT_H
#define CHATRELAY_DB_SUPPORT_H

#include <stdio.h>
#include <time.h>

#ifdef _WIN32
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>   /* QueryPerformanceCounter: the tests' clock only */
#endif

/* Removes path and its -wal, -shm and -journal files (missing ones are fine). */
static inline void remove_db(const char *path)
{
    static const char *const suffixes[] = { "", "-wal", "-shm", "-journal" };
    char name[1100];
    size_t i;
    for (i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
        snprintf(name, sizeof name, "%s%s", path, suffixes[i]);
        remove(name);
    }
}

/* A monotonic clock, in milliseconds from an arbitrary origin. */
static inline double monotonic_ms(void)
{
#ifdef _WIN32
    LARGE_INTEGER freq, t;
    QueryPerformanceFrequency(&freq);
    QueryPerformanceCounter(&t);
    return (double)t.QuadPart * 1000.0 / (double)freq.QuadPart;
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
#endif
}

#endif

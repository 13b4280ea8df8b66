/* fault_vfs: a fault-injecting SQLite VFS for the tests, in the manner of
 * SQLite's own test VFS (src/test_vfs.c): a shim over the default VFS that
 * forwards every method (iVersion 3 files: shm and fetch methods too), counts
 * the calls made for the files of one database by category, and can make the
 * Nth call of a category fail, once or from then on, with the error a real
 * operating system would give.
 *
 * Install it once (fault_vfs_install registers it as the default VFS, so
 * every connection opened afterwards with a NULL VFS goes through it, the
 * relay's history included); a connection that must see the files untouched
 * (a checker playing the sqlite3 CLI) opens them with fault_vfs_real_name().
 * Only files whose name (last path component) is the target's, or the
 * target's followed by '-' ("x.db-wal", "x.db-journal"), are counted and
 * failed; the shared-memory index of a WAL database is reached through the
 * main file's xShm* methods and so belongs to it.
 *
 * A failing call does nothing and returns the error, except:
 *   - a failing unlock (xUnlock, xShmLock with SQLITE_SHM_UNLOCK) releases
 *     the lock and then reports the error: SQLite ignores or cannot act on
 *     those errors, and a lock the shim kept would be held by this process
 *     forever (a stuck database that no retry can free, which says nothing
 *     about the code above SQLite);
 *   - a torn write (FAULT_TORN) writes the first half of the buffer first;
 *   - a failing read fills the buffer with garbage (0xA5), so a caller that
 *     used it anyway would see junk rather than stale data.
 * xShmBarrier cannot fail (it returns nothing): it is counted only.
 *
 * Single-threaded, like the tests that use it (no mutex: a test drives one
 * connection at a time on one thread).  Portable C11 over the SQLite VFS
 * API: the same code runs natively (unix VFS, ASan/UBSan) and under Wine
 * (win32 VFS).
 */
#ifndef CHATRELAY_FAULT_VFS_H
#define CHATRELAY_FAULT_VFS_H

#include <stddef.h>

enum fault_category {
    FAULT_WRITE,        /* xWrite */
    FAULT_SYNC,         /* xSync */
    FAULT_TRUNCATE,     /* xTruncate */
    FAULT_FILESIZE,     /* xFileSize */
    FAULT_LOCK,         /* xLock, xUnlock, xCheckReservedLock */
    FAULT_SHMMAP,       /* xShmMap */
    FAULT_SHMLOCK,      /* xShmLock */
    FAULT_SHMBARRIER,   /* xShmBarrier: counted, never failed */
    FAULT_READ,         /* xRead */
    FAULT_OPEN,         /* xOpen, xDelete, xAccess (VFS methods, by file name) */
    FAULT_CATEGORIES
};

/* fault_vfs_arm flags */
#define FAULT_ONCE        0   /* only call N fails (SQLite's "transient" faults) */
#define FAULT_PERSISTENT  1   /* call N and every later call of the category fail */
#define FAULT_TORN        2   /* FAULT_WRITE: write half the buffer, then fail */

/* Registers the shim as the default VFS, wrapping the current default.
 * Returns SQLITE_OK or the error of sqlite3_vfs_register (or SQLITE_ERROR
 * when there is no default VFS).  Idempotent. */
int fault_vfs_install(void);
/* Unregisters it; the wrapped VFS becomes the default again.  Connections
 * opened through the shim must be closed first. */
void fault_vfs_uninstall(void);
/* The name of the wrapped VFS ("unix", "win32"), for sqlite3_open_v2. */
const char *fault_vfs_real_name(void);

/* The database whose files are counted and failed: its file name (the
 * last path component only, e.g. "x.db"); NULL or "" counts nothing. */
void fault_vfs_target(const char *file_name);

/* Counting: calls per category since the last reset (or arm). */
void fault_vfs_reset_counts(void);
unsigned long fault_vfs_count(int category);

/* Makes call n (1 = the next one) of category fail with rc, counted from now;
 * rc 0 means the category's usual error (SQLITE_IOERR_WRITE, _FSYNC,
 * _TRUNCATE, _FSTAT, _LOCK / _UNLOCK / _CHECKRESERVEDLOCK, _SHMMAP,
 * _SHMLOCK, _READ; SQLITE_CANTOPEN / SQLITE_IOERR_DELETE / _ACCESS).
 * Sensible rc values besides: SQLITE_FULL for writes, SQLITE_BUSY for
 * lock and shm-lock requests (never for unlocks, which keep their
 * SQLITE_IOERR_UNLOCK / _SHMLOCK).  One fault is armed at a time; arming
 * replaces the previous one and resets the counts. */
void fault_vfs_arm(int category, unsigned long n, int flags, int rc);
void fault_vfs_disarm(void);
/* How many calls have failed since the last arm. */
unsigned long fault_vfs_fired(void);

/* Off by default.  On: a sync of the target's files that is not made to
 * fail returns SQLITE_OK without reaching the disk (it is still counted,
 * traced and failable).  For a sweep that creates hundreds of databases in
 * a process that never loses power: there what a sync adds cannot be
 * observed, and its cost (seven fsyncs per created database, ~4 ms each on
 * a shared VM disk) is most of the sweep's time.  The only method the shim
 * does not forward, and only when asked. */
void fault_vfs_skip_syncs(int on);

/* An optional trace of every counted call, for a test that wants to see what
 * a sweep covers: category, the call's index in its category (1-based,
 * since the last reset or arm), a short description such as
 * "xWrite wal 4152+24 frame header (commit)", and whether it was made to
 * fail.  NULL turns it off. */
typedef void (*fault_trace_fn)(void *ctx, int category, unsigned long index, const char *what,
                               int failed);
void fault_vfs_trace(fault_trace_fn fn, void *ctx);

const char *fault_category_name(int category);

#endif

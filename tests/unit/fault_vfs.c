/* fault_vfs: see fault_vfs.h.
 *
 * Layout: every file the shim opens is a fault_file followed (8-aligned) by
 * the wrapped VFS's own file object, so one allocation by SQLite holds both
 * (szOsFile is the sum).  Each fault_file carries its own copy of the I/O
 * method table, with the wrapped file's iVersion and with every optional
 * method the wrapped file lacks left NULL: SQLite decides from those fields
 * whether a file supports WAL (xShmMap) or memory mapping (xFetch), and the
 * shim must not change its mind.
 */
#include "fault_vfs.h"

#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

typedef struct fault_file {
    sqlite3_file base;             /* base.pMethods = &methods, or NULL if the open failed */
    sqlite3_file *real;            /* the wrapped VFS's file, just past this struct */
    sqlite3_io_methods methods;
    int counted;                   /* a file of the target database */
    int open_flags;                /* SQLITE_OPEN_MAIN_DB, _WAL, _MAIN_JOURNAL, ... */
} fault_file;

#define REAL_OFFSET ((sizeof(fault_file) + 7) & ~(size_t)7)

#define FAULT_TARGET_MAX 256

static struct {
    sqlite3_vfs vfs;
    sqlite3_vfs *real;
    int installed;
    char target[FAULT_TARGET_MAX];
    size_t target_len;
    unsigned long count[FAULT_CATEGORIES];
    int armed, category, flags, rc;
    unsigned long n, fired;
    int skip_syncs;
    fault_trace_fn trace;
    void *trace_ctx;
} g;

static const char *const category_names[FAULT_CATEGORIES] = {
    "write", "sync", "truncate", "filesize", "lock", "shmmap", "shmlock", "shmbarrier", "read", "open"
};

const char *fault_category_name(int category)
{
    return category >= 0 && category < FAULT_CATEGORIES ? category_names[category] : "?";
}

/* ---- the fault decision ------------------------------------------------ */

/* Counts one call of category for a file of the target database; returns
 * nonzero if the armed fault says it must fail.  fmt describes the call for
 * the trace (formatted only when a trace is on). */
static int fault_hit(int category, const char *fmt, ...)
{
    unsigned long index = ++g.count[category];
    int fail = g.armed && g.category == category && category != FAULT_SHMBARRIER &&
               (index == g.n || (index > g.n && (g.flags & FAULT_PERSISTENT)));
    if (fail)
        g.fired++;
    if (g.trace) {
        char what[200];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(what, sizeof what, fmt, ap);
        va_end(ap);
        g.trace(g.trace_ctx, category, index, what, fail);
    }
    return fail;
}

/* The armed error, or the category's usual one. */
static int fault_rc(int usual)
{
    return g.rc ? g.rc : usual;
}

/* The file's last path component is the target's name, alone or followed by
 * '-' (the -wal, -journal, -shm side files). */
static int is_target(const char *name)
{
    const char *base = name, *p;
    if (!name || g.target_len == 0)
        return 0;
    for (p = name; *p; p++)
        if (*p == '/' || *p == '\\')
            base = p + 1;
    return strncmp(base, g.target, g.target_len) == 0 &&
           (base[g.target_len] == '\0' || base[g.target_len] == '-');
}

static const char *kind_of(const fault_file *p)
{
    if (p->open_flags & SQLITE_OPEN_MAIN_DB) return "db";
    if (p->open_flags & SQLITE_OPEN_WAL) return "wal";
    if (p->open_flags & SQLITE_OPEN_MAIN_JOURNAL) return "journal";
    return "file";
}

static sqlite3_file *real_of(sqlite3_file *f)
{
    return ((fault_file *)f)->real;
}

/* ---- file methods ------------------------------------------------------ */

static int fv_close(sqlite3_file *f)
{
    sqlite3_file *r = real_of(f);
    return r->pMethods ? r->pMethods->xClose(r) : SQLITE_OK;
}

static int fv_read(sqlite3_file *f, void *buf, int amt, sqlite3_int64 off)
{
    fault_file *p = (fault_file *)f;
    if (p->counted && fault_hit(FAULT_READ, "xRead %s %lld+%d", kind_of(p), (long long)off, amt)) {
        memset(buf, 0xA5, (size_t)amt);
        return fault_rc(SQLITE_IOERR_READ);
    }
    return p->real->pMethods->xRead(p->real, buf, amt, off);
}

/* What a write of the WAL is: its header, a frame header (a commit frame
 * carries the database size in pages after the commit, nonzero), or a page. */
static const char *wal_write_kind(const void *buf, int amt, sqlite3_int64 off)
{
    const unsigned char *b = buf;
    if (off == 0 && amt == 32)
        return " header";
    if (amt == 24)
        return (b[4] | b[5] | b[6] | b[7]) ? " frame header (commit)" : " frame header";
    return " page";
}

static int fv_write(sqlite3_file *f, const void *buf, int amt, sqlite3_int64 off)
{
    fault_file *p = (fault_file *)f;
    if (p->counted && fault_hit(FAULT_WRITE, "xWrite %s %lld+%d%s", kind_of(p), (long long)off, amt,
                                (p->open_flags & SQLITE_OPEN_WAL) ? wal_write_kind(buf, amt, off) : "")) {
        if ((g.flags & FAULT_TORN) && amt > 1)
            (void)p->real->pMethods->xWrite(p->real, buf, amt / 2, off);  /* the error below says it all */
        return fault_rc(SQLITE_IOERR_WRITE);
    }
    return p->real->pMethods->xWrite(p->real, buf, amt, off);
}

static int fv_truncate(sqlite3_file *f, sqlite3_int64 size)
{
    fault_file *p = (fault_file *)f;
    if (p->counted && fault_hit(FAULT_TRUNCATE, "xTruncate %s %lld", kind_of(p), (long long)size))
        return fault_rc(SQLITE_IOERR_TRUNCATE);
    return p->real->pMethods->xTruncate(p->real, size);
}

static int fv_sync(sqlite3_file *f, int flags)
{
    fault_file *p = (fault_file *)f;
    if (p->counted && fault_hit(FAULT_SYNC, "xSync %s 0x%x", kind_of(p), (unsigned)flags))
        return fault_rc(SQLITE_IOERR_FSYNC);
    if (p->counted && g.skip_syncs)
        return SQLITE_OK;   /* see fault_vfs_skip_syncs */
    return p->real->pMethods->xSync(p->real, flags);
}

static int fv_file_size(sqlite3_file *f, sqlite3_int64 *size)
{
    fault_file *p = (fault_file *)f;
    if (p->counted && fault_hit(FAULT_FILESIZE, "xFileSize %s", kind_of(p))) {
        *size = 0;
        return fault_rc(SQLITE_IOERR_FSTAT);
    }
    return p->real->pMethods->xFileSize(p->real, size);
}

static int fv_lock(sqlite3_file *f, int level)
{
    fault_file *p = (fault_file *)f;
    if (p->counted && fault_hit(FAULT_LOCK, "xLock %s %d", kind_of(p), level))
        return fault_rc(SQLITE_IOERR_LOCK);
    return p->real->pMethods->xLock(p->real, level);
}

static int fv_unlock(sqlite3_file *f, int level)
{
    fault_file *p = (fault_file *)f;
    int rc = p->real->pMethods->xUnlock(p->real, level);
    if (p->counted && fault_hit(FAULT_LOCK, "xUnlock %s %d", kind_of(p), level))
        return SQLITE_IOERR_UNLOCK;   /* released all the same: see fault_vfs.h */
    return rc;
}

static int fv_check_reserved_lock(sqlite3_file *f, int *out)
{
    fault_file *p = (fault_file *)f;
    if (p->counted && fault_hit(FAULT_LOCK, "xCheckReservedLock %s", kind_of(p))) {
        *out = 0;
        return SQLITE_IOERR_CHECKRESERVEDLOCK;
    }
    return p->real->pMethods->xCheckReservedLock(p->real, out);
}

/* Forwarded as they are, except that the VFS name shows the shim, as
 * SQLite's own shims do ("fault/unix"). */
static int fv_file_control(sqlite3_file *f, int op, void *arg)
{
    sqlite3_file *r = real_of(f);
    int rc = r->pMethods->xFileControl(r, op, arg);
    if (op == SQLITE_FCNTL_VFSNAME && rc == SQLITE_OK)
        *(char **)arg = sqlite3_mprintf("fault/%z", *(char **)arg);
    return rc;
}

static int fv_sector_size(sqlite3_file *f)
{
    sqlite3_file *r = real_of(f);
    return r->pMethods->xSectorSize(r);
}

static int fv_device_characteristics(sqlite3_file *f)
{
    sqlite3_file *r = real_of(f);
    return r->pMethods->xDeviceCharacteristics(r);
}

static int fv_shm_map(sqlite3_file *f, int page, int page_size, int extend, void volatile **pp)
{
    fault_file *p = (fault_file *)f;
    if (p->counted && fault_hit(FAULT_SHMMAP, "xShmMap page %d size %d%s", page, page_size,
                                extend ? " extend" : "")) {
        *pp = NULL;
        return fault_rc(SQLITE_IOERR_SHMMAP);
    }
    return p->real->pMethods->xShmMap(p->real, page, page_size, extend, pp);
}

static int fv_shm_lock(sqlite3_file *f, int offset, int n, int flags)
{
    fault_file *p = (fault_file *)f;
    int unlock = (flags & SQLITE_SHM_UNLOCK) != 0;
    int rc;
    if (p->counted && fault_hit(FAULT_SHMLOCK, "xShmLock %d+%d %s %s", offset, n,
                                unlock ? "unlock" : "lock",
                                (flags & SQLITE_SHM_EXCLUSIVE) ? "exclusive" : "shared")) {
        if (!unlock)
            return fault_rc(SQLITE_IOERR_SHMLOCK);
        (void)p->real->pMethods->xShmLock(p->real, offset, n, flags);  /* released all the same */
        return SQLITE_IOERR_SHMLOCK;
    }
    rc = p->real->pMethods->xShmLock(p->real, offset, n, flags);
    return rc;
}

static void fv_shm_barrier(sqlite3_file *f)
{
    fault_file *p = (fault_file *)f;
    if (p->counted)
        (void)fault_hit(FAULT_SHMBARRIER, "xShmBarrier");
    p->real->pMethods->xShmBarrier(p->real);
}

static int fv_shm_unmap(sqlite3_file *f, int delete_flag)
{
    sqlite3_file *r = real_of(f);
    return r->pMethods->xShmUnmap(r, delete_flag);
}

static int fv_fetch(sqlite3_file *f, sqlite3_int64 off, int amt, void **pp)
{
    sqlite3_file *r = real_of(f);
    return r->pMethods->xFetch(r, off, amt, pp);
}

static int fv_unfetch(sqlite3_file *f, sqlite3_int64 off, void *page)
{
    sqlite3_file *r = real_of(f);
    return r->pMethods->xUnfetch(r, off, page);
}

static const sqlite3_io_methods io_template = {
    3,
    fv_close,
    fv_read,
    fv_write,
    fv_truncate,
    fv_sync,
    fv_file_size,
    fv_lock,
    fv_unlock,
    fv_check_reserved_lock,
    fv_file_control,
    fv_sector_size,
    fv_device_characteristics,
    fv_shm_map,
    fv_shm_lock,
    fv_shm_barrier,
    fv_shm_unmap,
    fv_fetch,
    fv_unfetch,
};

/* The wrapped file's abilities, exactly: its iVersion, and NULL wherever it
 * has no method. */
static void mirror_methods(fault_file *p)
{
    const sqlite3_io_methods *rm = p->real->pMethods;
    p->methods = io_template;
    p->methods.iVersion = rm->iVersion < 3 ? rm->iVersion : 3;
    if (rm->iVersion < 2) {
        p->methods.xShmMap = NULL;
        p->methods.xShmLock = NULL;
        p->methods.xShmBarrier = NULL;
        p->methods.xShmUnmap = NULL;
    } else {
        if (!rm->xShmMap) p->methods.xShmMap = NULL;
        if (!rm->xShmLock) p->methods.xShmLock = NULL;
        if (!rm->xShmBarrier) p->methods.xShmBarrier = NULL;
        if (!rm->xShmUnmap) p->methods.xShmUnmap = NULL;
    }
    if (rm->iVersion < 3) {
        p->methods.xFetch = NULL;
        p->methods.xUnfetch = NULL;
    } else {
        if (!rm->xFetch) p->methods.xFetch = NULL;
        if (!rm->xUnfetch) p->methods.xUnfetch = NULL;
    }
    p->base.pMethods = &p->methods;
}

/* ---- VFS methods ------------------------------------------------------- */

static int fv_open(sqlite3_vfs *vfs, sqlite3_filename name, sqlite3_file *f, int flags, int *out_flags)
{
    fault_file *p = (fault_file *)f;
    int rc;
    (void)vfs;
    p->base.pMethods = NULL;
    p->real = (sqlite3_file *)((char *)f + REAL_OFFSET);
    p->real->pMethods = NULL;
    p->counted = is_target(name);
    p->open_flags = flags;
    if (p->counted && fault_hit(FAULT_OPEN, "xOpen %s", name))
        return fault_rc(SQLITE_CANTOPEN);
    /* the same name pointer: SQLite finds URI parameters and the database
     * of a journal by pointer arithmetic on it */
    rc = g.real->xOpen(g.real, name, p->real, flags, out_flags);
    /* A method table set even on failure means SQLite will call xClose. */
    if (p->real->pMethods)
        mirror_methods(p);
    return rc;
}

static int fv_delete(sqlite3_vfs *vfs, const char *name, int sync_dir)
{
    (void)vfs;
    if (is_target(name) && fault_hit(FAULT_OPEN, "xDelete %s", name))
        return fault_rc(SQLITE_IOERR_DELETE);
    return g.real->xDelete(g.real, name, sync_dir);
}

static int fv_access(sqlite3_vfs *vfs, const char *name, int flags, int *out)
{
    (void)vfs;
    if (is_target(name) && fault_hit(FAULT_OPEN, "xAccess %s %d", name, flags)) {
        *out = 0;
        return fault_rc(SQLITE_IOERR_ACCESS);
    }
    return g.real->xAccess(g.real, name, flags, out);
}

static int fv_full_pathname(sqlite3_vfs *vfs, const char *name, int n, char *out)
{
    (void)vfs;
    return g.real->xFullPathname(g.real, name, n, out);
}

static void *fv_dl_open(sqlite3_vfs *vfs, const char *name)
{
    (void)vfs;
    return g.real->xDlOpen(g.real, name);
}

static void fv_dl_error(sqlite3_vfs *vfs, int n, char *msg)
{
    (void)vfs;
    g.real->xDlError(g.real, n, msg);
}

static void (*fv_dl_sym(sqlite3_vfs *vfs, void *handle, const char *sym))(void)
{
    (void)vfs;
    return g.real->xDlSym(g.real, handle, sym);
}

static void fv_dl_close(sqlite3_vfs *vfs, void *handle)
{
    (void)vfs;
    g.real->xDlClose(g.real, handle);
}

static int fv_randomness(sqlite3_vfs *vfs, int n, char *out)
{
    (void)vfs;
    return g.real->xRandomness(g.real, n, out);
}

static int fv_sleep(sqlite3_vfs *vfs, int us)
{
    (void)vfs;
    return g.real->xSleep(g.real, us);
}

static int fv_current_time(sqlite3_vfs *vfs, double *out)
{
    (void)vfs;
    return g.real->xCurrentTime(g.real, out);
}

static int fv_get_last_error(sqlite3_vfs *vfs, int n, char *msg)
{
    (void)vfs;
    return g.real->xGetLastError ? g.real->xGetLastError(g.real, n, msg) : 0;
}

static int fv_current_time_int64(sqlite3_vfs *vfs, sqlite3_int64 *out)
{
    (void)vfs;
    return g.real->xCurrentTimeInt64(g.real, out);
}

static int fv_set_system_call(sqlite3_vfs *vfs, const char *name, sqlite3_syscall_ptr fn)
{
    (void)vfs;
    return g.real->xSetSystemCall(g.real, name, fn);
}

static sqlite3_syscall_ptr fv_get_system_call(sqlite3_vfs *vfs, const char *name)
{
    (void)vfs;
    return g.real->xGetSystemCall(g.real, name);
}

static const char *fv_next_system_call(sqlite3_vfs *vfs, const char *name)
{
    (void)vfs;
    return g.real->xNextSystemCall(g.real, name);
}

/* ---- the public face --------------------------------------------------- */

int fault_vfs_install(void)
{
    sqlite3_vfs *real;
    int rc;
    if (g.installed)
        return SQLITE_OK;
    real = sqlite3_vfs_find(NULL);
    if (!real)
        return SQLITE_ERROR;
    g.real = real;
    memset(&g.vfs, 0, sizeof g.vfs);
    g.vfs.iVersion = real->iVersion < 3 ? real->iVersion : 3;
    g.vfs.szOsFile = (int)REAL_OFFSET + real->szOsFile;
    g.vfs.mxPathname = real->mxPathname;
    g.vfs.zName = "fault";
    g.vfs.xOpen = fv_open;
    g.vfs.xDelete = fv_delete;
    g.vfs.xAccess = fv_access;
    g.vfs.xFullPathname = fv_full_pathname;
    g.vfs.xDlOpen = real->xDlOpen ? fv_dl_open : NULL;
    g.vfs.xDlError = real->xDlError ? fv_dl_error : NULL;
    g.vfs.xDlSym = real->xDlSym ? fv_dl_sym : NULL;
    g.vfs.xDlClose = real->xDlClose ? fv_dl_close : NULL;
    g.vfs.xRandomness = fv_randomness;
    g.vfs.xSleep = fv_sleep;
    g.vfs.xCurrentTime = fv_current_time;
    g.vfs.xGetLastError = fv_get_last_error;
    if (g.vfs.iVersion >= 2)
        g.vfs.xCurrentTimeInt64 = real->xCurrentTimeInt64 ? fv_current_time_int64 : NULL;
    if (g.vfs.iVersion >= 3) {
        g.vfs.xSetSystemCall = real->xSetSystemCall ? fv_set_system_call : NULL;
        g.vfs.xGetSystemCall = real->xGetSystemCall ? fv_get_system_call : NULL;
        g.vfs.xNextSystemCall = real->xNextSystemCall ? fv_next_system_call : NULL;
    }
    rc = sqlite3_vfs_register(&g.vfs, 1);
    if (rc == SQLITE_OK)
        g.installed = 1;
    return rc;
}

void fault_vfs_uninstall(void)
{
    if (!g.installed)
        return;
    (void)sqlite3_vfs_unregister(&g.vfs);   /* SQLITE_OK for a registered VFS */
    g.installed = 0;
}

const char *fault_vfs_real_name(void)
{
    return g.real ? g.real->zName : NULL;
}

void fault_vfs_target(const char *file_name)
{
    size_t n = file_name ? strlen(file_name) : 0;
    if (n >= sizeof g.target)
        n = 0;   /* a name this long is no test's: count nothing rather than the wrong files */
    memcpy(g.target, file_name ? file_name : "", n);
    g.target[n] = '\0';
    g.target_len = n;
}

void fault_vfs_reset_counts(void)
{
    memset(g.count, 0, sizeof g.count);
}

unsigned long fault_vfs_count(int category)
{
    return category >= 0 && category < FAULT_CATEGORIES ? g.count[category] : 0;
}

void fault_vfs_arm(int category, unsigned long n, int flags, int rc)
{
    fault_vfs_reset_counts();
    g.armed = category >= 0 && category < FAULT_CATEGORIES && n > 0;
    g.category = category;
    g.n = n;
    g.flags = flags;
    g.rc = rc;
    g.fired = 0;
}

void fault_vfs_disarm(void)
{
    g.armed = 0;
}

unsigned long fault_vfs_fired(void)
{
    return g.fired;
}

void fault_vfs_skip_syncs(int on)
{
    g.skip_syncs = on;
}

void fault_vfs_trace(fault_trace_fn fn, void *ctx)
{
    g.trace = fn;
    g.trace_ctx = ctx;
}

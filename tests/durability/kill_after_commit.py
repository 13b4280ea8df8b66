#!/usr/bin/env python3
"""kill_after_commit: what history_commit returned OK for survives a SIGKILL right after it.

Runs durability_writer (natively, or under Wine with --wine SCRIPT), reads its stdout, and kills it
with SIGKILL the moment it prints "committed ROWS BYTES" (it then blocks without touching the
database).  Once no process holds the database files open any more (under Wine the wineserver
keeps a file's descriptors until it has noticed the process died), the stock Linux `sqlite3` CLI,
the first to open the file after the crash, checks:
  - every committed row is there: count, first and last id, total body bytes;
  - PRAGMA integrity_check is ok;
  - the FTS5 index agrees with the table: 'integrity-check' with rank 1 (compares the index with
    the content table) succeeds, and MATCH 'durable' (a word in every body) counts every row.

  kill_after_commit.py --writer EXE [--wine SCRIPT] --db PATH --cache PAGES --before N --batch N
                       --min LEN --max LEN
Exit status 0 on success, 1 on a failed check (the reason is printed).
"""
import argparse
import json
import os
import selectors
import signal
import subprocess
import sys
import time

START_TIMEOUT_S = 300.0     # a bound for a writer that hangs, never a pass condition
RELEASE_TIMEOUT_S = 60.0


class Failure(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def winpath(path):
    return "Z:" + os.path.abspath(path).replace("/", "\\")


def remove_db(db):
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.unlink(db + suffix)
        except FileNotFoundError:
            pass


def holders(db):
    """Pids of every process (the wineserver included) with one of the database files open."""
    names = {os.path.realpath(db + s) for s in ("", "-wal", "-shm", "-journal")}
    found = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            for fd in os.listdir("/proc/%s/fd" % pid):
                try:
                    if os.readlink("/proc/%s/fd/%s" % (pid, fd)) in names:
                        found.add(int(pid))
                except OSError:
                    continue
        except OSError:
            continue
    return found


def describe(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return "%d (%s)" % (pid, f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip())
    except OSError:
        return "%d (gone)" % pid


def sqlite_cli(db, sql, json_mode=True):
    args = ["sqlite3", "-batch", "-bail"]
    if json_mode:
        args.append("-json")
    r = subprocess.run(args + [db, sql], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    check(r.returncode == 0 and r.stderr == "",
          "sqlite3 %r failed (rc %d): %s" % (sql, r.returncode, r.stderr.strip()))
    if not json_mode:
        return r.stdout.strip()
    return json.loads(r.stdout) if r.stdout.strip() else []


def run_and_kill(args):
    """Starts the writer, SIGKILLs it when it says it committed; returns (rows, bytes)."""
    db_arg = winpath(args.db) if args.wine else args.db
    cmd = ([args.wine] if args.wine else []) + [args.writer, db_arg, str(args.cache), str(args.before),
                                                 str(args.batch), str(args.min), str(args.max)]
    # stdin stays an open pipe we never write to: the writer blocks reading it.  Its own session:
    # scripts/wine execs wine64 (same pid), and killpg reaches anything it might have started.
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    line = b""
    deadline = time.time() + START_TIMEOUT_S
    try:
        while not line.endswith(b"\n"):
            left = deadline - time.time()
            check(left > 0, "the writer did not say it committed within %.0f s" % START_TIMEOUT_S)
            if not sel.select(left):
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                proc.wait()
                raise Failure("the writer exited with %s before committing: %s"
                              % (proc.returncode, proc.stderr.read().decode("utf-8", "replace").strip()))
            line += chunk
        # The moment the line is here: nothing else is read or checked first.
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        sel.close()
    check(proc.returncode == -signal.SIGKILL, "the writer ended with %s, not by SIGKILL" % proc.returncode)
    words = line.decode().split()
    check(len(words) == 3 and words[0] == "committed" and line.count(b"\n") == 1,
          "the writer said %r, expected one line 'committed ROWS BYTES'" % line)
    return int(words[1]), int(words[2])


def wait_released(db):
    """Waits until no process holds the files: the killed process, and under Wine the wineserver's
    copy of its handles, are really gone, so nothing can still write to the file."""
    deadline = time.time() + RELEASE_TIMEOUT_S
    while True:
        held = holders(db)
        if not held:
            return
        check(time.time() < deadline, "%.0f s after the kill the database is still open in %s"
              % (RELEASE_TIMEOUT_S, ", ".join(describe(p) for p in sorted(held))))
        time.sleep(0.02)


def verify(db, rows, nbytes):
    check(os.path.exists(db), "no database file at %s" % db)
    got = sqlite_cli(db, "SELECT count(*) AS n, min(id) AS lo, max(id) AS hi, "
                         "sum(length(CAST(body AS BLOB))) AS bytes FROM messages")[0]
    check(got == {"n": rows, "lo": 1, "hi": rows, "bytes": nbytes},
          "after the kill the table holds %r; committed were %d rows (ids 1..%d), %d body bytes"
          % (got, rows, rows, nbytes))
    integrity = sqlite_cli(db, "PRAGMA integrity_check", json_mode=False)
    check(integrity == "ok", "PRAGMA integrity_check: %r" % integrity[:500])
    out = sqlite_cli(db, "INSERT INTO messages_fts(messages_fts, rank) VALUES('integrity-check', 1)",
                     json_mode=False)
    check(out == "", "FTS5 integrity-check printed %r" % out)
    matched = sqlite_cli(db, "SELECT count(*) AS n FROM messages_fts WHERE messages_fts MATCH 'durable'")[0]["n"]
    check(matched == rows, "MATCH 'durable' finds %d rows, the table has %d" % (matched, rows))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--writer", required=True)
    p.add_argument("--wine", help="scripts/wine: run the writer (a Windows build) under Wine")
    p.add_argument("--db", required=True)
    p.add_argument("--cache", type=int, required=True)
    p.add_argument("--before", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--min", type=int, required=True)
    p.add_argument("--max", type=int, required=True)
    args = p.parse_args()

    os.makedirs(os.path.dirname(os.path.abspath(args.db)), exist_ok=True)
    remove_db(args.db)
    start = time.time()
    try:
        rows, nbytes = run_and_kill(args)
        check(rows == args.before + args.batch, "the writer committed %d rows, expected %d"
              % (rows, args.before + args.batch))
        killed = time.time()
        wal = os.path.getsize(args.db + "-wal") if os.path.exists(args.db + "-wal") else 0
        wait_released(args.db)
        verify(args.db, rows, nbytes)
    except Failure as e:
        print("FAIL %s: %s" % (os.path.basename(args.db), e))
        return 1
    print("PASS %s: %d rows (%d bytes of bodies) committed, SIGKILL, all there; WAL %d bytes at the kill; "
          "writer %.1f s, checks %.1f s" % (os.path.basename(args.db), rows, nbytes, wal, killed - start,
                                             time.time() - killed))
    remove_db(args.db)
    return 0


if __name__ == "__main__":
    sys.exit(main())

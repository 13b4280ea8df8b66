"""test_history: the history guarantees (issue "History in SQLite"), end to end.

chatrelay.exe --console runs under Wine; clients are real Linux TCP sockets; the database is read
(and locked) with the stock Linux `sqlite3` shell, as an operator would: `sqlite3 <db> "<sql>"`.

Cases (one ctest test each, run with `python3 test_history.py CASE`):
  visible_while_running_and_after_stop  every delivered line is already in the file (CLI, FTS5)
  replay_after_restart                  a new client after a restart gets the last --replay lines
  kill9_during_load                     kill -9 under load: whatever anyone saw is stored, file ok
  cli_holds_write_lock                  the CLI holds BEGIN IMMEDIATE 3 s: lines wait, none lost
  refuses_when_held_too_long            past the 5 s bound new chat lines are refused, told so
  backlog_survives_kill9                a 3 MB backlog held by the CLI's lock, committed at once, kill -9
                                        at its first delivery: every line of it is in the file
  retention                             --retain-messages 50: the newest 50 remain, FTS consistent
  newer_schema_refused                  user_version 99: refused, file byte-for-byte unchanged
  no_history_mode                       --no-history: lines relayed, no database, /history is off
"""
import contextlib
import datetime
import hashlib
import json
import os
import random
import re
import selectors
import socket
import subprocess
import tempfile
import threading
import time

from harness import (EXE, SOURCE, WINE, WORK, Client, Relay, TestFailure, check, free_port, raise_fd_limit,
                     run_cases, winpath)

# Every client is 127.0.0.1: per-IP limit and flood control off unless a case needs them.
OPEN_LIMITS = ["--max-per-ip", "0", "--flood-burst", "0", "--flood-rate", "0"]
AT_FORM = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
HELD_NOTICE = "*** history unavailable, message not sent"
BOUND_S = 5.0          # the relay's bound on holding lines (hub pending_max_ms)


# ---- the sqlite3 shell ---------------------------------------------------------------------

def sqlite_cli(db, sql, json_mode=True):
    """Runs `sqlite3 db sql` like a user; returns the rows as dicts (json_mode) or the text."""
    args = ["sqlite3", "-batch", "-bail", "-cmd", ".timeout 5000"]
    if json_mode:
        args.append("-json")
    r = subprocess.run(args + [db, sql], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    check(r.returncode == 0 and r.stderr == "",
          "sqlite3 %r failed (rc %d): %s" % (sql, r.returncode, r.stderr.strip()))
    if not json_mode:
        return r.stdout.strip()
    return json.loads(r.stdout) if r.stdout.strip() else []


def lobby_rows(db, limit=20):
    """The last `limit` lobby rows, newest first, as the operator's query shows them."""
    return sqlite_cli(db, "SELECT id, at, nick, kind, body FROM messages WHERE room='lobby' "
                          "ORDER BY id DESC LIMIT %d" % limit)


def fts_check(db):
    out = sqlite_cli(db, "INSERT INTO messages_fts(messages_fts) VALUES('integrity-check')", json_mode=False)
    check(out == "", "FTS integrity-check printed %r" % out)


class CliWriteLock:
    """The sqlite3 shell holding the write lock: `BEGIN IMMEDIATE;` typed into it, `COMMIT;` later."""

    def __init__(self, db):
        self.proc = subprocess.Popen(["sqlite3", "-batch", "-bail", db], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.proc.stdout, selectors.EVENT_READ)
        # .timeout: the relay may be committing at this very moment; -bail: a failed BEGIN ends the shell.
        self._type(".timeout 5000\nBEGIN IMMEDIATE;\nSELECT 'locked';\n", "locked")
        self.since = time.time()

    def _type(self, text, answer):
        self.proc.stdin.write(text)
        self.proc.stdin.flush()
        check(self.sel.select(10), "sqlite3 shell did not answer %r" % answer)
        line = self.proc.stdout.readline().strip()
        if line != answer:
            self.proc.kill()
            raise TestFailure("sqlite3 shell: expected %r, got %r (stderr %r)"
                              % (answer, line, self.proc.stderr.read()))

    def release(self):
        self._type("COMMIT;\nSELECT 'released';\n", "released")
        self.proc.stdin.close()
        self.proc.wait(10)
        return time.time() - self.since

    def abandon(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def restarted(relay):
    """The relay started again on the same database (a fresh port: the old one may linger).
    Relay.start waits for "relay running" in a log it appends to, so on a restart it would return
    at once: wait for one more such line than before."""
    runs = relay.log().count("relay running")
    relay.port = free_port()
    relay.start()
    try:
        deadline = time.time() + 30
        while relay.log().count("relay running") <= runs:
            check(relay.proc.poll() is None, "the restarted relay exited with %s: %s"
                  % (relay.proc.returncode, relay.log()[-500:]))
            check(time.time() < deadline, "the restarted relay is not running after 30 s")
            time.sleep(0.05)
        yield relay
    finally:
        relay.__exit__(None, None, None)


# ---- clients -------------------------------------------------------------------------------

def connect(port):
    """A client past its greeting; returns (client, guest nick)."""
    c = Client(port)
    line = c.expect("Your nick is")
    m = re.search(r"Your nick is (guest[\w-]+);", line)
    check(m, "no guest nick in %r" % line)
    c.greeted()
    return c, m.group(1)


def rename(c, guest, nick, watchers=()):
    """/nick, seen by every watcher (so the record is stored).  Returns whether the renamer was told
    too, as docs/PROTOCOL.md promises ("your own nick change ... you see it too")."""
    c.say("/nick " + nick)
    notice = "*** %s is now known as %s" % (guest, nick)
    for w in watchers:
        w.expect(notice)
    own = collect(c, 1, 0.5, lambda l: l == notice)
    return own == [notice]


class Findings:
    """Product faults met on the way to a case's real subject: recorded, worked around so the
    history checks still run, and failed at the end of the case (`settle`)."""

    def __init__(self):
        self.items = []

    def add(self, msg):
        self.items.append(msg)

    def settle(self):
        check(not self.items, "; ".join(self.items))


def leave_seen(watcher, line, findings):
    """The room must see a leave promptly.  If it does not, say so and nudge the relay with a
    command (any input makes it run a turn), so the rest of the case can go on."""
    try:
        watcher.expect(line, 3)
    except TestFailure:
        findings.add("%r was not delivered within 3 s (it came only once the room sent a line)" % line)
        watcher.say("/who")
        watcher.expect("*** In ")
        watcher.expect(line, 5)


def chat_lines(lines):
    return [l for l in lines if l.startswith("<")]


def collect(c, count, timeout, pred=lambda l: True):
    """Reads until `count` lines matching pred arrived; returns every line read, in order."""
    got = []
    deadline = time.time() + timeout
    while sum(1 for l in got if pred(l)) < count and time.time() < deadline and not c.closed:
        c._fill(min(0.3, max(0.01, deadline - time.time())))
        got += c.lines
        c.lines = []
    return got


def history_line(row, room="lobby"):
    """What the protocol says a stored row looks like in a replay (docs/PROTOCOL.md)."""
    at, nick, kind, body = row["at"], row["nick"], row["kind"], row["body"]
    when = at[0:10] + " " + at[11:19]
    text = {"say": "<%s> %s" % (nick, body),
            "me": "* %s %s" % (nick, body),
            "join": "%s joined %s" % (nick, room),
            "leave": "%s left %s" % (nick, room) + (" (%s)" % body if body else ""),
            "nick": "%s is now known as %s" % (nick, body)}[kind]
    return "*** [%s] %s" % (when, text)


def utc_stamp(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:23] + "Z"


def check_times(rows, t_from, t_to):
    """`at` has the one documented form, lies in the test's window and never goes back in id order."""
    lo, hi = utc_stamp(t_from - 1), utc_stamp(t_to + 1)
    ordered = sorted(rows, key=lambda r: r["id"])
    for r in ordered:
        check(AT_FORM.match(r["at"]), "at %r of row %d is not YYYY-MM-DDTHH:MM:SS.mmmZ" % (r["at"], r["id"]))
        check(lo <= r["at"] <= hi, "at %r of row %d is outside the test's run %s..%s" % (r["at"], r["id"], lo, hi))
    for a, b in zip(ordered, ordered[1:]):
        check(a["at"] <= b["at"], "times go back: id %d at %s, id %d at %s" % (a["id"], a["at"], b["id"], b["at"]))


def shape(rows):
    return [(r["nick"], r["kind"], r["body"]) for r in rows]


# ---- cases ---------------------------------------------------------------------------------

def case_visible_while_running_and_after_stop():
    t0 = time.time()
    findings = Findings()
    relay = Relay("hist_visible", OPEN_LIMITS + ["--replay", "0"])
    relay.reset_db()
    with relay:
        a, ga = connect(relay.port)
        b, gb = connect(relay.port)
        a.expect("*** %s joined lobby" % gb)
        told_own_nick = rename(a, ga, "alice", (b,))
        rename(b, gb, "bob", (a,))

        said = [(a, b, "alice", "we deploy on friday"),
                (b, a, "bob", "DEPLOY after lunch, ok?"),
                (a, b, "alice", "/me is deploying now"),
                (a, b, "alice", "the deployment is friday")]
        for sender, receiver, nick, text in said:
            sender.say(text)
            if text.startswith("/me "):
                receiver.expect("* %s %s" % (nick, text[4:]))
                kind, body = "me", text[4:]
            else:
                receiver.expect("<%s> %s" % (nick, text))
                kind, body = "say", text
            # Store-then-forward: the moment the receiver has it, the file has it (as the newest row).
            newest = lobby_rows(relay.db, 1)
            check(shape(newest) == [(nick, kind, body)],
                  "delivered %r but the newest row is %r" % (text, shape(newest)))

        b.say("/quit see you")
        leave_seen(a, "*** bob left lobby (quit: see you)", findings)
        closes = re.findall(r"session \d+: closed \((.*)\)", relay.log())
        if closes[-1:] != ["quit: see you"]:
            findings.add("the log gives bob's close reason as %r, not 'quit: see you'" % closes[-1:])
        expected = [(ga, "join", ""), (gb, "join", ""), (ga, "nick", "alice"), (gb, "nick", "bob"),
                    ("alice", "say", "we deploy on friday"), ("bob", "say", "DEPLOY after lunch, ok?"),
                    ("alice", "me", "is deploying now"), ("alice", "say", "the deployment is friday"),
                    ("bob", "leave", "quit: see you")]
        running = lobby_rows(relay.db)
        check(shape(running) == expected[::-1], "while running the lobby holds %r, expected %r"
              % (shape(running), expected[::-1]))
        check_times(running, t0, time.time())
        ids = [r["id"] for r in running][::-1]
        check(ids == list(range(ids[0], ids[0] + len(ids))), "ids are not consecutive: %r" % ids)

        # FTS5 from the stock shell: whole words, case-insensitive; 'deploying'/'deployment' are other words.
        query = "SELECT rowid, body FROM messages_fts WHERE messages_fts MATCH 'deploy' ORDER BY rowid"
        found = sqlite_cli(relay.db, query)
        check(found == [{"rowid": ids[4], "body": "we deploy on friday"},
                        {"rowid": ids[5], "body": "DEPLOY after lunch, ok?"}],
              "MATCH 'deploy' found %r" % found)

        rc = relay.stop()
        check(rc == 0, "relay exited with %r after Ctrl+C" % rc)
        check(a.wait_closed(5), "alice was not disconnected by the stop")

    after = lobby_rows(relay.db)
    check(after[1:] == running, "the stop changed stored rows: %r" % shape(after[1:]))
    check(shape(after[:1]) == [("alice", "leave", "server stopping")],
          "after the stop the newest row is %r, expected alice's leave (server stopping)" % shape(after[:1]))
    check_times(after, t0, time.time())
    check(sqlite_cli(relay.db, query) == found, "FTS results changed across the stop")
    check(sqlite_cli(relay.db, "PRAGMA integrity_check", json_mode=False) == "ok", "integrity_check after stop")
    fts_check(relay.db)
    # Not history, but seen on the way (checked last so the history checks above still run).
    if not told_own_nick:
        findings.add("alice was not shown her own nick change '*** %s is now known as alice' "
                     "(docs/PROTOCOL.md: it is announced to the room, and you are in the room)" % ga)
    findings.settle()


def case_replay_after_restart():
    replay = 6
    findings = Findings()
    relay = Relay("hist_replay", OPEN_LIMITS + ["--replay", str(replay)])
    relay.reset_db()
    with relay:
        a, ga = connect(relay.port)
        b, gb = connect(relay.port)
        a.expect("joined lobby")
        rename(a, ga, "alice", (b,))
        rename(b, gb, "bob", (a,))
        for i in range(1, 9):
            a.say("old %d" % i)
        got = chat_lines(collect(b, 8, 10, lambda l: l.startswith("<")))
        check(got == ["<alice> old %d" % i for i in range(1, 9)], "bob saw %r" % got)
        b.say("/quit done")
        leave_seen(a, "*** bob left lobby (quit: done)", findings)
        check(relay.stop() == 0, "relay did not stop cleanly")

    stored = lobby_rows(relay.db, replay)[::-1]
    check(shape(stored) == [("alice", "say", "old 5"), ("alice", "say", "old 6"), ("alice", "say", "old 7"),
                            ("alice", "say", "old 8"), ("bob", "leave", "quit: done"),
                            ("alice", "leave", "server stopping")],
          "the last %d stored rows are %r" % (replay, shape(stored)))

    with restarted(relay):
        c, gc = connect(relay.port)
        got_c = collect(c, replay, 10)
        expected_replay = [history_line(r) for r in stored]
        check(got_c[:replay] == expected_replay, "after the restart the replay was\n  %r\nexpected\n  %r"
              % (got_c[:replay], expected_replay))
        check(all(re.match(r"^\*\*\* \[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] ", l) for l in got_c[:replay]),
              "replay lines not marked *** [YYYY-MM-DD HH:MM:SS]: %r" % got_c[:replay])

        # The next client's replay ends with c's join, stored by this run.
        stored2 = lobby_rows(relay.db, replay)[::-1]
        check(shape(stored2[-1:]) == [(gc, "join", "")], "c's join is not the newest row: %r" % shape(stored2))
        d, gd = connect(relay.port)
        got_d = collect(d, replay, 10)
        check(got_d[:replay] == [history_line(r) for r in stored2], "second replay was %r" % got_d[:replay])

        d.say("/nick dave")
        d.say("live 1")
        d.say("live 2")
        seen_c = got_c + collect(c, 2, 10, lambda l: l.startswith("<"))
        expected_c = expected_replay + ["*** %s joined lobby" % gd, "*** %s is now known as dave" % gd,
                                        "<dave> live 1", "<dave> live 2"]
        check(seen_c == expected_c, "client c saw\n  %r\nexpected\n  %r" % (seen_c, expected_c))
        check(not any("old 4" in l for l in got_c + got_d), "a line beyond --replay %d was replayed" % replay)
    findings.settle()


class LoadClient:
    """Sends its numbered lines in paced chunks while a thread reads everything the room says."""

    def __init__(self, port, k, count):
        self.c, self.nick = connect(port)
        self.k = k
        self.count = count
        self.sent = 0
        self.received = set()        # bodies of chat lines this client saw
        self.sock = self.c.sock
        self.sock.settimeout(30)     # one timeout for both threads; never changed later

    def body(self, n):
        return "c%02d-%03d" % (self.k, n)

    def read_loop(self):
        buf = self.c.buf
        pat = re.compile(r"^<guest[\w-]+> (c\d\d-\d\d\d)$")
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            *lines, buf = buf.split(b"\r\n")
            for line in lines:
                m = pat.match(line.decode("utf-8", "replace"))
                if m:
                    self.received.add(m.group(1))

    def send_loop(self, chunk=10, pause=0.1):
        try:
            while self.sent < self.count:
                n = min(chunk, self.count - self.sent)
                self.sock.sendall("".join(self.body(self.sent + i) + "\r\n" for i in range(n)).encode())
                self.sent += n
                time.sleep(pause)
        except OSError:
            return


def case_kill9_during_load():
    raise_fd_limit()
    clients_n, per_client = 20, 500
    relay = Relay("hist_kill9", OPEN_LIMITS + ["--replay", "0"])
    relay.reset_db()
    relay.start()
    try:
        clients = [LoadClient(relay.port, k, per_client) for k in range(clients_n)]
        last = clients[-1]
        for c in clients[:-1]:
            c.c.expect("*** %s joined lobby" % last.nick)
        threads = [threading.Thread(target=c.read_loop, daemon=True) for c in clients]
        threads += [threading.Thread(target=c.send_loop, daemon=True) for c in clients]
        for t in threads:
            t.start()
        # Kill once a fair part of the load went through, well before the senders are done
        # (they need about 5 s for their 500 lines).
        deadline = time.time() + 60
        while len(set().union(*(c.received for c in clients))) < 2500 and time.time() < deadline \
                and sum(c.sent for c in clients) < 6000:
            time.sleep(0.02)
        relay.kill()
        sent_at_kill = sum(c.sent for c in clients)
        for t in threads:
            t.join(40)
        check(not any(t.is_alive() for t in threads), "client threads still running 40 s after the kill")
    finally:
        relay.kill()

    seen = set().union(*(c.received for c in clients))
    check(sent_at_kill < clients_n * per_client,
          "the kill came after every line was sent (%d); the case proved nothing" % sent_at_kill)
    check(len(seen) >= 1000, "only %d distinct lines were received before the kill" % len(seen))

    check(sqlite_cli(relay.db, "PRAGMA integrity_check", json_mode=False) == "ok",
          "integrity_check after kill -9 is not ok")
    fts_check(relay.db)
    rows = sqlite_cli(relay.db, "SELECT id, nick, body FROM messages WHERE kind='say' ORDER BY id")
    bodies = [r["body"] for r in rows]
    check(len(bodies) == len(set(bodies)), "%d say rows but %d distinct bodies" % (len(bodies), len(set(bodies))))
    missing = seen - set(bodies)
    check(not missing, "%d line(s) were delivered but are not in the database, e.g. %r"
          % (len(missing), sorted(missing)[:5]))
    nick_of = {c.k: c.nick for c in clients}
    for k in range(clients_n):
        mine = [r for r in rows if r["body"].startswith("c%02d-" % k)]
        check(all(r["nick"] == nick_of[k] for r in mine), "client %d's lines stored under another nick" % k)
        numbers = [int(r["body"][4:]) for r in mine]
        check(numbers == list(range(len(numbers))),
              "client %d's stored lines are not a gap-free prefix in order: %r..." % (k, numbers[:10]))
    check(len(bodies) < clients_n * per_client, "every line was stored before the kill; it came too late")
    print("kill -9 after %d lines sent, %d distinct received, %d stored" % (sent_at_kill, len(seen), len(bodies)))

    # The relay carries on from the same file: ids continue, new lines are stored and delivered.
    max_before = sqlite_cli(relay.db, "SELECT max(id) AS m, count(*) AS n FROM messages")[0]
    with restarted(relay):
        x, gx = connect(relay.port)
        y, gy = connect(relay.port)
        x.expect("*** %s joined lobby" % gy)
        x.say("after the crash")
        y.expect("<%s> after the crash" % gx)
        new = sqlite_cli(relay.db, "SELECT id, nick, kind, body FROM messages WHERE id > %d ORDER BY id"
                         % max_before["m"])
        check([(r["id"], r["nick"], r["kind"], r["body"]) for r in new] ==
              [(max_before["m"] + 1, gx, "join", ""), (max_before["m"] + 2, gy, "join", ""),
               (max_before["m"] + 3, gx, "say", "after the crash")],
              "rows after the restart: %r (max id before %d)" % (new, max_before["m"]))
        check(sqlite_cli(relay.db, "SELECT count(*) AS n FROM messages WHERE id <= %d" % max_before["m"])[0]["n"]
              == max_before["n"], "rows from before the crash changed on restart")


def held_setup(name):
    relay = Relay(name, OPEN_LIMITS + ["--replay", "0"])
    relay.reset_db()
    relay.start()
    a, ga = connect(relay.port)
    b, gb = connect(relay.port)
    a.expect("*** %s joined lobby" % gb)
    rename(a, ga, "alice", (b,))
    rename(b, gb, "bob", (a,))
    a.say("before the lock")
    b.expect("<alice> before the lock")
    return relay, a, b


def stored_bodies(db, pattern):
    return [r["body"] for r in sqlite_cli(db, "SELECT body FROM messages WHERE body LIKE '%s' ORDER BY id"
                                          % pattern)]


def check_log_outage(relay, held, min_ms):
    log = relay.log()
    m1 = re.search(r"history: cannot write \(database is locked by another connection\); (\d+) line\(s\) held", log)
    m2 = re.search(r"history: writable again after (\d+) ms; stored (\d+) held line\(s\)", log)
    check(m1, "the log does not say history was unavailable: %r" % log[-800:])
    check(m2 and m2.start() > m1.start(), "the log does not say history was writable again: %r" % log[-800:])
    check(int(m1.group(1)) >= 1, "the log says %s lines were held" % m1.group(1))
    check(int(m2.group(2)) == held, "the log says %s held lines were stored, expected %d" % (m2.group(2), held))
    check(int(m2.group(1)) >= min_ms, "the outage was logged as %s ms, the lock was held longer" % m2.group(1))


def case_cli_holds_write_lock():
    relay, a, b = held_setup("hist_lock")
    lock = None
    try:
        held = ["held-%02d" % i for i in range(1, 11)]
        lock = CliWriteLock(relay.db)
        for text in held:
            a.say(text)
            time.sleep(0.1)
        # 1 s of sending, then 1.5 s more: nothing may reach bob, nothing may be in the file.
        quiet = b.drain(1.5)
        check(quiet == [], "bob received %r while the write lock was held" % quiet)
        check(stored_bodies(relay.db, "held-%") == [], "held lines are in the database before commit")
        check(a.drain(0.1) == [], "alice was told something while her lines were held")
        time.sleep(max(0.0, 3.0 - (time.time() - lock.since)))
        took = lock.release()
        lock = None
        got = collect(b, len(held), 10)
        check(got == ["<alice> " + t for t in held], "after the release bob got %r" % got)
        check(stored_bodies(relay.db, "held-%") == held, "stored held lines: %r"
              % stored_bodies(relay.db, "held-%"))
        check(a.drain(0.2) == [], "alice was told something about her held lines")
        a.say("after the release")
        check(collect(b, 1, 3) == ["<alice> after the release"], "the relay did not resume by itself")
        check_log_outage(relay, len(held), int((took - 1.2) * 1000))
        check(HELD_NOTICE not in relay.log(), "lines were refused within the bound")
    finally:
        if lock:
            lock.abandon()
        relay.kill()


def case_refuses_when_held_too_long():
    relay, a, b = held_setup("hist_refuse")
    lock = None
    try:
        early = ["early-%d" % i for i in range(1, 4)]
        late = ["late-%d" % i for i in range(1, 4)]
        lock = CliWriteLock(relay.db)
        for text in early:
            a.say(text)
        check(b.drain(1.0) == [], "bob received lines while the write lock was held")
        time.sleep(max(0.0, BOUND_S + 1.0 - (time.time() - lock.since)))
        for text in late:
            a.say(text)
        notices = collect(a, len(late), 5)
        check(notices == [HELD_NOTICE] * len(late), "past the bound alice was told %r" % notices)
        # A newcomer is admitted and its join still queues (only chat lines are refused).
        c, gc = connect(relay.port)
        check(b.drain(0.5) == [], "bob received something while the write lock was held")
        check(lock.proc.poll() is None, "the sqlite3 shell ended early")
        took = lock.release()
        lock = None
        got = collect(b, len(early) + 1, 10)
        expected = ["<alice> " + t for t in early] + ["*** %s joined lobby" % gc]
        check(got == expected, "after the release bob got %r, expected %r" % (got, expected))
        check(collect(a, 1, 5) == ["*** %s joined lobby" % gc], "alice did not see the held join alone")
        check(b.drain(0.5) == [], "refused lines were delivered")
        check(stored_bodies(relay.db, "early-%") == early, "early lines stored: %r" % stored_bodies(relay.db, "early-%"))
        check(stored_bodies(relay.db, "late-%") == [], "refused lines were stored")
        check(sqlite_cli(relay.db, "SELECT count(*) AS n FROM messages WHERE kind='join' AND nick='%s'" % gc)
              == [{"n": 1}], "the newcomer's join was not stored once")
        a.say("after-1")
        check(collect(b, 1, 3) == ["<alice> after-1"], "the relay did not accept lines again after the release")
        check(a.drain(0.3) == [], "alice was refused after the release")
        check(stored_bodies(relay.db, "after-%") == ["after-1"], "the line after the release was not stored")
        check_log_outage(relay, len(early) + 1, int((took - 1.2) * 1000))
        print("lock held %.1f s" % took)
    finally:
        if lock:
            lock.abandon()
        relay.kill()


def db_file_holders(db):
    """Pids with the database or its side files open; under Wine that includes the wineserver,
    which keeps a file's descriptors until it has noticed that the process holding them died."""
    names = {os.path.realpath(db + s) for s in ("", "-wal", "-shm", "-journal")}
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir("/proc/%s/fd" % pid)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink("/proc/%s/fd/%s" % (pid, fd)) in names:
                    found.add(int(pid))
            except OSError:
                continue
    return found


def case_backlog_survives_kill9():
    """A backlog held while the CLI has the write lock is committed in one large transaction (more
    than SQLite's page cache, so pages spill into the WAL before the commit); the relay is killed
    -9 the moment the first of those lines reaches bob: every line of the backlog is in the file."""
    # Within the outage bounds (10,000 lines, 8 MiB, 5 s; docs/HISTORY.md): the byte bound counts a
    # held line's wire form and its record, ~1.9 KB here, so 3500 lines are ~6.7 MB of it.
    count, size = 3500, 900
    relay, a, b = held_setup("hist_backlog_kill9")
    lock = None
    # Made-up words, so that the full-text index of the batch is large too: FTS5 then writes
    # several segments within the one transaction, and updates pages it already spilled.
    letters = "abcdefghijklmnopqrstuvwxyz"
    backlog = []
    for i in range(count):
        line = "bl-%04d backlog" % i
        while len(line) < size:
            line += " " + "".join(random.choices(letters, k=random.randint(1, 11)))
        backlog.append(line[:size])
    try:
        lock = CliWriteLock(relay.db)
        a.send("".join(t + "\r\n" for t in backlog))
        # /who is answered at once, not held: its answer means every line before it was read and
        # is waiting for the database (refused lines would have been answered before it).
        a.say("/who")
        told = collect(a, 1, 30, lambda l: l.startswith("*** In "))
        check(told[-1:] and told[-1].startswith("*** In "), "no /who answer while the lock was held: %r" % told[-3:])
        check(told[:-1] == [], "while the lock was held alice was told %r" % told[:3])
        check(lock.proc.poll() is None, "the sqlite3 shell ended early")
        took = lock.release()
        lock = None
        first = b.wait_for(lambda l: l.startswith("<alice> bl-"), 30, "the first backlog line")
        relay.kill()
        check(first == "<alice> " + backlog[0], "the first line bob got was %r" % first[:40])
        deadline = time.time() + 30
        while db_file_holders(relay.db):
            check(time.time() < deadline, "30 s after the kill the database is still open in %r"
                  % sorted(db_file_holders(relay.db)))
            time.sleep(0.02)
    finally:
        if lock:
            lock.abandon()
        relay.kill()

    log = relay.log()
    m = re.search(r"history: writable again after (\d+) ms; stored (\d+) held line\(s\)", log)
    check(m, "the log does not say the held lines were stored: %r" % log[-600:])
    check(int(m.group(2)) == count, "the log says %s held lines were stored in one commit, expected %d"
          % (m.group(2), count))
    check(sqlite_cli(relay.db, "PRAGMA integrity_check", json_mode=False) == "ok",
          "integrity_check after kill -9 is not ok")
    fts_check(relay.db)
    rows = sqlite_cli(relay.db, "SELECT id, nick, body FROM messages WHERE body LIKE 'bl-%' ORDER BY id")
    stored = [r["body"] for r in rows]
    if stored != backlog:
        lost = len(set(backlog) - set(stored))
        raise TestFailure("after the kill %d of the %d backlog lines are stored (%d lost; first stored %r)"
                          % (len(stored), count, lost, stored[0][:20] if stored else None))
    check(all(r["nick"] == "alice" for r in rows), "backlog lines stored under another nick")
    ids = [r["id"] for r in rows]
    check(ids == list(range(ids[0], ids[0] + count)), "the backlog's ids are not consecutive")
    found = sqlite_cli(relay.db, "SELECT count(*) AS n FROM messages_fts WHERE messages_fts MATCH 'backlog'")
    check(found == [{"n": count}], "MATCH 'backlog' finds %r, expected %d" % (found, count))
    print("lock held %.1f s; outage %s ms; all %d lines (%d bytes each) stored" % (took, m.group(1), count, size))


def case_retention():
    keep, total, step = 50, 1200, 500      # step: the most one prune step deletes (hub PRUNE_BATCH)
    relay = Relay("hist_retain", OPEN_LIMITS + ["--replay", "0", "--retain-messages", str(keep)])
    relay.reset_db()
    bodies = ["line %04d tok%04d" % (i, i) for i in range(total)]
    converged_after = None
    with relay:
        a, ga = connect(relay.port)
        b, gb = connect(relay.port)
        a.expect("*** %s joined lobby" % gb)
        a.send("".join(t + "\r\n" for t in bodies))
        got = chat_lines(collect(b, total, 30, lambda l: l.startswith("<")))
        check(got == ["<%s> %s" % (ga, t) for t in bodies], "bob got %d of %d lines" % (len(got), total))
        t_sent = time.time()
        while time.time() - t_sent < 8:
            if row_count(relay.db) <= keep:
                converged_after = time.time() - t_sent
                break
            time.sleep(0.25)
        count_running = row_count(relay.db)
        if converged_after is not None:
            check_newest(relay.db, bodies, keep, [("say", t) for t in bodies[-keep:]])
        check(relay.stop() == 0, "relay did not stop cleanly")

    # Whatever happened while running, on the next start the first turn (the first client) prunes,
    # in bounded steps, down to the newest `keep` rows: 47 chat lines, the 2 leaves of the stop, c's join.
    with restarted(relay):
        c, gc = connect(relay.port)
        deadline = time.time() + 10
        while row_count(relay.db) > keep and time.time() < deadline:
            time.sleep(0.2)
        check_newest(relay.db, bodies, keep, [("say", t) for t in bodies[-(keep - 3):]]
                     + [("leave", "server stopping")] * 2 + [("join", "")])
        max_id = sqlite_cli(relay.db, "SELECT max(id) AS m FROM messages")[0]["m"]
        removed = [int(n) for n in re.findall(r"history: retention removed (\d+) old line", relay.log())]
        check(removed and max(removed) <= step, "prune steps were %r, each at most %d expected" % (removed, step))
        check(sum(removed) == max_id - keep, "the log counts %d pruned rows, %d were due" % (sum(removed), max_id - keep))
        c.say("still here")     # no one else is in the room: watch the file instead of a receiver
        deadline = time.time() + 5
        newest = None
        while newest != [{"body": "still here"}] and time.time() < deadline:
            time.sleep(0.1)
            newest = sqlite_cli(relay.db, "SELECT body FROM messages ORDER BY id DESC LIMIT 1")
        check(newest == [{"body": "still here"}], "the relay does not store lines after pruning: %r" % newest)
    check(converged_after is not None,
          "with --retain-messages %d the table still held %d rows %d s after %d lines were delivered "
          "(it shrank only on the next start; prune steps in the log: %r)"
          % (keep, count_running, 8, total, removed))
    print("converged %.1f s after the last line; steps %r" % (converged_after, removed))


def row_count(db):
    return sqlite_cli(db, "SELECT count(*) AS n FROM messages")[0]["n"]


def check_newest(db, bodies, keep, expect_rows):
    """Exactly the newest `keep` rows remain: expect_rows, oldest first, as (kind, body)."""
    rows = sqlite_cli(db, "SELECT id, kind, body FROM messages ORDER BY id")
    ids = [r["id"] for r in rows]
    check([(r["kind"], r["body"]) for r in rows] == expect_rows,
          "%d rows remain (%r .. %r), expected the newest %d: %r .. %r"
          % (len(rows), rows[:1], rows[-1:], keep, expect_rows[:1], expect_rows[-1:]))
    check(ids == list(range(ids[-1] - keep + 1, ids[-1] + 1)), "the remaining ids are not the newest %d" % keep)
    fts_check(db)
    check(sqlite_cli(db, "SELECT rowid FROM messages_fts WHERE messages_fts MATCH 'tok0010'") == [],
          "a pruned line is still found by FTS")
    newest = sqlite_cli(db, "SELECT rowid, body FROM messages_fts WHERE messages_fts MATCH '%s'"
                        % bodies[-1].split()[1])
    check([r["body"] for r in newest] == [bodies[-1]], "the newest line is not found by FTS: %r" % newest)


def case_newer_schema_refused():
    os.makedirs(WORK, exist_ok=True)
    db = os.path.join(WORK, "hist_newer.db")
    for suffix in ("", "-wal", "-shm", "-journal"):
        if os.path.exists(db + suffix):
            os.unlink(db + suffix)
    sqlite_cli(db, "CREATE TABLE notes(x TEXT); INSERT INTO notes VALUES ('keep me'); PRAGMA user_version=99;",
               json_mode=False)
    check(sqlite_cli(db, "PRAGMA user_version", json_mode=False) == "99", "could not prepare the file")
    before = hashlib.sha256(open(db, "rb").read()).hexdigest()
    stat_before = os.stat(db)
    port = free_port()
    cmd = [WINE, EXE, "--console", "--listen", "127.0.0.1:%d" % port, "--db", winpath(db)]
    # Output through a file, not a pipe: a lingering wine child must not keep us waiting for EOF.
    with tempfile.TemporaryFile() as f:
        try:
            r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=f, timeout=60)
        except subprocess.TimeoutExpired:
            raise TestFailure("the relay did not exit on a newer schema (it should refuse to start)")
        f.seek(0)
        out = f.read().decode("utf-8", "replace")
    check(r.returncode != 0, "the relay exited with 0 on a newer schema: %r" % out[-500:])
    with open(os.path.join(SOURCE, "storage", "history.h")) as h:
        ours = re.search(r"#define HISTORY_SCHEMA_VERSION (\d+)", h.read()).group(1)
    check("schema version 99 is newer than this program's %s" % ours in out,
          "the message does not name the cause: %r" % out[-800:])
    check("left untouched" in out, "the message does not say the file was left alone: %r" % out[-800:])
    check("relay running" not in out, "the relay said it was running: %r" % out[-500:])
    check(hashlib.sha256(open(db, "rb").read()).hexdigest() == before, "the file's content changed")
    check(os.stat(db).st_size == stat_before.st_size, "the file's size changed")
    for suffix in ("-wal", "-shm", "-journal"):
        check(not os.path.exists(db + suffix), "the relay left %s beside the file" % (db + suffix))
    check(sqlite_cli(db, "PRAGMA journal_mode", json_mode=False) == "delete", "the journal mode was changed")
    check(sqlite_cli(db, "SELECT x FROM notes", json_mode=False) == "keep me", "the user's table changed")
    with socket.socket() as s:     # and nothing listens
        check(s.connect_ex(("127.0.0.1", port)) != 0, "something listens on the relay's port")
    print("exit code %d; %s" % (r.returncode, [l for l in out.splitlines() if "newer" in l]))


def db_files(folder):
    if not os.path.isdir(folder):
        return set()
    return {os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs
            if f.endswith((".db", ".db-wal", ".db-shm", ".db-journal"))}


def case_no_history_mode():
    prefix = os.environ.get("CHATRELAY_WINEPREFIX", os.path.join(os.path.dirname(EXE), "wineprefix"))
    watched = [WORK, os.path.join(prefix, "drive_c"), os.path.dirname(os.path.abspath(EXE)), os.getcwd()]
    before = set().union(*(db_files(f) for f in watched))
    relay = Relay("hist_off", OPEN_LIMITS, history=False)
    relay.reset_db()
    with relay:
        check("history off" in relay.log(), "the log does not say history is off: %r" % relay.log()[-300:])
        a, ga = connect(relay.port)
        b, gb = connect(relay.port)
        a.expect("*** %s joined lobby" % gb)
        a.say("no archive for this")
        b.expect("<%s> no archive for this" % ga)
        b.say("/history")
        check(collect(b, 1, 5) == ["*** history is switched off on this server"], "/history answered otherwise")
        b.say("/history 5")
        check(collect(b, 1, 5) == ["*** history is switched off on this server"], "/history 5 answered otherwise")
        b.say("/search archive")
        check(collect(b, 1, 5) == ["*** history is switched off on this server"], "/search answered otherwise")
        c, gc = connect(relay.port)
        # The replay a newcomer gets becomes, without history, at most this one notice (today it is
        # sent on every connect and /join; docs/PROTOCOL.md does not say either way).
        extra = c.drain(0.5)
        check(extra in ([], ["*** history is switched off on this server"]),
              "a newcomer got %r without history" % extra)
        check(relay.stop() == 0, "relay did not stop cleanly")
    after = set().union(*(db_files(f) for f in watched))
    check(after == before, "database files appeared: %r" % sorted(after - before))
    check(not os.path.exists(relay.db), "a database file was created at %s" % relay.db)


CASES = {
    "visible_while_running_and_after_stop": case_visible_while_running_and_after_stop,
    "replay_after_restart": case_replay_after_restart,
    "kill9_during_load": case_kill9_during_load,
    "cli_holds_write_lock": case_cli_holds_write_lock,
    "refuses_when_held_too_long": case_refuses_when_held_too_long,
    "backlog_survives_kill9": case_backlog_survives_kill9,
    "retention": case_retention,
    "newer_schema_refused": case_newer_schema_refused,
    "no_history_mode": case_no_history_mode,
}

if __name__ == "__main__":
    run_cases(CASES)

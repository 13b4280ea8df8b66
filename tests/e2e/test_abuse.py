"""test_abuse: nobody stalls the relay and nobody reading is cut off (issue 10), end to end.

chatrelay.exe --console runs under Wine; clients are real Linux TCP sockets; the database is
locked, filled and read with the stock Linux `sqlite3` shell.  The rules checked are the ones of
docs/PROTOCOL.md ("Answers come in turn", "Slow consumers", "Flood control") and
docs/ARCHITECTURE.md ("Queries and slow consumers").

Cases (one ctest test each, run with `python3 test_abuse.py CASE`):
  backlog_reader_not_cut    the CLI holds the write lock 3 s while ~400 KB is said: a reader gets
                            the whole backlog, in order, and stays connected
  replay_with_small_queue   --max-queue-bytes 16K, replays of 20 lines of ~1 KB: nobody is cut
  history_twice             `/history 200` twice in one packet (~400 KB): all of it, then /who
  negotiation_flood_memory  clients send MBs of IAC DO and never read: cut, and the relay's memory
                            stays within 4 x --max-queue-bytes per client (plus slack)
  search_storm_latency      14 clients search a word in 200,000 lines at the flood limit: two
                            others' chat still arrives within a bound, nothing lost
  room_case_history         `Games` gone, `games` re-created: replay, /history, /search find it
"""
import os
import re
import socket
import statistics
import threading
import time

from harness import Client, Relay, TestFailure, check, free_port, run_cases, read_through
from test_history import CliWriteLock, sqlite_cli

# Flood control off where a case needs to say many lines quickly (it is not what they test).
NO_FLOOD = ["--flood-burst", "0"]
HISTORY_LINE = re.compile(r"^\*\*\* \[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] ")
SLOW_NOTICE = "*** you are not reading fast enough; disconnecting (slow consumer)"
GREETING_END = "*** Type /help for the commands."
IAC, DO = 0xFF, 0xFD
TTYPE = 0x18            # any option: the relay refuses every DO with WONT
# The search storm's bounds on chat latency, generous on purpose: on this 2-core machine under a
# load average of 10-15 (other builds running) this code measured medians of 15-220 ms and maxima
# of 240-460 ms over 6 runs.  The code before issue 10 delivered none of the storm's chat lines
# until 20-26 s after they were said; this code with the old search budget (1000 progress calls
# instead of 150) measured a median of 1.6 s and a maximum of 2.1 s.
LATENCY_MAX_S = 2.0
LATENCY_MEDIAN_S = 0.75


# ---- helpers -------------------------------------------------------------------------------

def connect(relay, nick=None, source=None):
    """A greeted client (renamed to nick if given): (client, greeting lines, nick)."""
    c = ClientFrom(relay.port, source) if source else Client(relay.port)
    greeting = read_through(c, lambda l: l == GREETING_END, what="the greeting")
    m = [re.match(r"\*\*\* Your nick is (guest[\w-]+); change it", l) for l in greeting]
    m = [x for x in m if x]
    check(m, "no guest nick in the greeting %r" % greeting)
    guest = m[0].group(1)
    if nick:
        c.say("/nick " + nick)
        c.expect("*** %s is now known as %s" % (guest, nick))
    return c, greeting, nick or guest


class ClientFrom(Client):
    """A Client whose connection comes from another loopback address (127.0.0.x is all local on
    Linux), so the relay sees another user's IP: used to stay clear of the per-IP limit."""

    def __init__(self, port, source):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10.0, source_address=(source, 0))
        self.buf = b""
        self.lines = []
        self.closed = False
        self.raw = None




def read_count(client, n, timeout, what):
    """Exactly the next n lines."""
    deadline = time.time() + timeout
    while len(client.lines) < n:
        left = deadline - time.time()
        if left <= 0 or client.closed:
            raise TestFailure("%s: %d of %d lines within %.0f s (closed=%s); last lines: %r"
                              % (what, len(client.lines), n, timeout, client.closed,
                                 [l[:120] for l in client.lines[-3:]]))
        client._fill(min(left, 0.5))
    out = client.lines[:n]
    del client.lines[:n]
    return out


def still_connected(client, room, what):
    """The client is served: a /who gets its answer (and nothing says it was cut)."""
    client.say("/who")
    got = read_through(client, lambda l: l.startswith("*** In %s (" % room), 10, what="/who of " + what)
    check(SLOW_NOTICE not in got, "%s was told it is a slow consumer" % what)


def history_line(row):
    """A stored row as the protocol shows it in a replay, /history or /search (docs/PROTOCOL.md)."""
    at, nick, kind, body, room = row["at"], row["nick"], row["kind"], row["body"], row["room"]
    text = {"say": "<%s> %s" % (nick, body),
            "me": "* %s %s" % (nick, body),
            "join": "%s joined %s" % (nick, room),
            "leave": "%s left %s" % (nick, room) + (" (%s)" % body if body else ""),
            "nick": "%s is now known as %s" % (nick, body)}[kind]
    return "*** [%s %s] %s" % (at[0:10], at[11:19], text)


def rows(relay, where, limit):
    """The newest `limit` non-private rows matching `where`, oldest first, through the sqlite3 CLI."""
    got = sqlite_cli(relay.db, "SELECT id, at, room, nick, kind, body FROM messages WHERE (%s) "
                               "AND kind <> 'msg' ORDER BY id DESC LIMIT %d" % (where, limit))
    return got[::-1]


def join_id(relay, nick):
    got = sqlite_cli(relay.db, "SELECT max(id) AS id FROM messages WHERE kind = 'join' AND nick = '%s'" % nick)
    check(got and got[0]["id"] is not None, "no join row for %s" % nick)
    return got[0]["id"]


def wait_stored(relay, where, n, timeout=15.0):
    """Waits until the file holds n rows matching where (polls the sqlite3 CLI)."""
    deadline = time.time() + timeout
    while True:
        got = sqlite_cli(relay.db, "SELECT count(*) AS n FROM messages WHERE %s" % where)[0]["n"]
        if got >= n:
            return
        check(time.time() < deadline, "%d of %d rows (%s) stored after %.0f s" % (got, n, where, timeout))
        time.sleep(0.1)


def long_body(tag, size=1000):
    """A chat line of `size` bytes that starts with tag (one word per 10 bytes or so)."""
    body = tag + " "
    while len(body) < size:
        body += "lorem%04d " % len(body)
    return body[:size].rstrip()


class Reader:
    """Reads a client's socket on a thread for as long as it is open, keeping (arrival, line)."""

    def __init__(self, client):
        self.c = client
        self.got = [(time.monotonic(), l) for l in client.lines]
        client.lines = []
        self.lock = threading.Lock()
        self.closed = False
        self.c.sock.settimeout(None)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        buf = self.c.buf
        while True:
            try:
                chunk = self.c.sock.recv(65536)
            except OSError:
                chunk = b""
            now = time.monotonic()
            if not chunk:
                self.closed = True
                return
            buf += chunk
            *lines, buf = buf.split(b"\r\n")
            with self.lock:
                self.got += [(now, l.decode("utf-8", "replace")) for l in lines]

    def lines(self):
        with self.lock:
            return [l for _, l in self.got]

    def wait(self, pred, timeout, what):
        """Waits until pred(lines) is true; returns the lines."""
        deadline = time.time() + timeout
        while True:
            got = self.lines()
            if pred(got):
                return got
            if time.time() > deadline or self.closed:
                raise TestFailure("%s: not within %.0f s (closed=%s); %d lines, last %r"
                                  % (what, timeout, self.closed, len(got), [l[:100] for l in got[-3:]]))
            time.sleep(0.05)


def relay_pid(relay):
    """The pid of the Wine process that runs chatrelay.exe (scripts/wine execs the loader, which
    may re-exec; look in the relay's session for the process whose command line names the exe)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.getsid(int(pid)) != relay.proc.pid:
                continue
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"chatrelay.exe" in cmd.lower() and b"wineserver" not in cmd:
            return int(pid)
    raise TestFailure("no chatrelay.exe process in the relay's session")


def mem_kb(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise TestFailure("/proc/%d/status has no %s" % (pid, field))


# ---- cases ---------------------------------------------------------------------------------

def case_backlog_reader_not_cut():
    """docs/PROTOCOL.md "Slow consumers": a client that keeps reading is never cut, however much
    the server sends it at once -- here the backlog held while the database was locked."""
    count = 400
    with Relay("abuse_backlog", NO_FLOOD + ["--replay", "0"]) as relay:
        talker, _, _ = connect(relay, "talker")
        reader_c, _, _ = connect(relay, "reader")
        talker.expect("is now known as reader")
        reader_c.drain(0.3)
        reader = Reader(reader_c)
        bodies = [long_body("backlog-%03d" % i) for i in range(count)]
        lock = CliWriteLock(relay.db)
        try:
            # ~400 KB said while the lock is held: held in order (within the outage's bounds of
            # 10,000 lines, 8 MiB and 5 s), then delivered at once as one backlog.
            talker.send("".join(b + "\r\n" for b in bodies))
            time.sleep(max(0.0, 3.0 - (time.time() - lock.since)))
            early = [l for l in reader.lines() if l.startswith("<talker> ")]
            check(early == [], "the reader got %d lines while the write lock was held" % len(early))
            held_s = lock.release()
            lock = None
        finally:
            if lock:
                lock.abandon()
        print("write lock held %.1f s while %d lines (%d KB) were said" % (held_s, count, sum(map(len, bodies)) // 1024))
        t0 = time.monotonic()
        want = ["<talker> " + b for b in bodies]
        got = reader.wait(lambda ls: len([l for l in ls if l.startswith("<talker> ")]) >= count
                          or SLOW_NOTICE in ls, 30, "the backlog at the reader")
        print("backlog of %d lines reached the reader %.2f s after the release" % (count, time.monotonic() - t0))
        check(SLOW_NOTICE not in got, "the reader was cut as a slow consumer while it read")
        chat = [l for l in got if l.startswith("<talker> ")]
        check(chat == want, "the reader got %d lines, not the %d said in order (first difference at %r)"
              % (len(chat), count, next((i for i, (a, b) in enumerate(zip(chat, want)) if a != b), len(chat))))
        told = talker.drain(0.3)
        check(told == [], "the talker was told %r (the hold was within the outage's bounds)" % told[:3])
        talker.say("after the outage")
        reader.wait(lambda ls: "<talker> after the outage" in ls, 10, "later chat at the reader")
        check(not reader.closed, "the reader was disconnected")
        check("slow consumer" not in relay.log(), "the log names a slow consumer")


def case_replay_with_small_queue():
    """A replay is paced by the client's reading: with --max-queue-bytes 16K, replays of 20 lines
    of ~1 KB (over 20 KB each) reach every newcomer whole and cut nobody."""
    clients = 5
    with Relay("abuse_replay", NO_FLOOD + ["--max-queue-bytes", "16K"]) as relay:
        filler, _, _ = connect(relay, "filler")
        bodies = [long_body("replayed-%02d" % i) for i in range(20)]
        filler.send("".join(b + "\r\n" for b in bodies))
        wait_stored(relay, "nick = 'filler' AND kind = 'say'", len(bodies))
        sizes, kept = [], []
        for k in range(clients):
            c, greeting, nick = connect(relay)
            kept.append(c)      # each stays connected while the next one comes
            check(len(greeting) == 4 and greeting[0].startswith("*** Welcome to "),
                  "newcomer %d: greeting %r" % (k, greeting))
            replay = read_count(c, 20, 15, "newcomer %d's replay" % k)
            want = [history_line(r) for r in rows(relay, "room = 'lobby' AND id < %d" % join_id(relay, nick), 20)]
            check(replay == want, "newcomer %d's replay differs from the stored rows:\n  %r\nexpected\n  %r"
                  % (k, [l[:60] for l in replay], [l[:60] for l in want]))
            check(sum(1 for l in replay if "<filler> replayed-" in l) >= 20 - k,
                  "newcomer %d's replay lacks filler's lines" % k)
            sizes.append(sum(len(l) + 2 for l in replay))
            still_connected(c, "lobby", "newcomer %d" % k)
        for k, c in enumerate(kept):
            still_connected(c, "lobby", "newcomer %d at the end" % k)
        print("replays of %s bytes each went through a 16 KB queue bound" % sizes)
        check("slow consumer" not in relay.log(), "the log names a slow consumer")


def case_history_twice():
    """`/history 200` twice in one packet (~400 KB, over the 256 KB bound) is answered whole, in
    turn, and what was asked after it comes after both answers."""
    with Relay("abuse_history", NO_FLOOD + ["--replay", "0"]) as relay:
        filler, _, _ = connect(relay, "filler")
        bodies = [long_body("hist-%03d" % i) for i in range(210)]
        filler.send("".join(b + "\r\n" for b in bodies))
        wait_stored(relay, "nick = 'filler' AND kind = 'say'", len(bodies))
        asker, _, _ = connect(relay, "asker")
        filler.expect("is now known as asker")
        asker.drain(0.3)
        want = [history_line(r) for r in rows(relay, "room = 'lobby'", 200)]
        check(sum(1 for l in want if "<filler> hist-" in l) >= 190, "the room's last 200 rows are not long lines")
        asker.send("/history 200\r\n/history 200\r\n/who\r\n")
        t0 = time.monotonic()
        got = read_count(asker, 401, 30, "two /history 200 and /who")
        took = time.monotonic() - t0
        print("2 x /history 200 (%d KB) and /who read in %.2f s" % (sum(len(l) + 2 for l in got) // 1024, took))
        check(SLOW_NOTICE not in got, "the asker was cut as a slow consumer while reading")
        check(got[:200] == want, "the first /history 200 differs from the stored rows")
        check(got[200:400] == want, "the second /history 200 differs from the stored rows")
        check(got[400] == "*** In lobby (2): filler, asker.", "after both answers came %r, not the /who reply" % got[400])
        check(asker.drain(0.3) == [], "more lines after the /who reply")
        still_connected(asker, "lobby", "the asker")
        check("slow consumer" not in relay.log(), "the log names a slow consumer")


def case_negotiation_flood_memory():
    """docs/PROTOCOL.md: a connection is cut at once when its own output (telnet answers too)
    passes 4 x --max-queue-bytes, so what a stopped reader pins is bounded.  Several clients send
    MBs of IAC DO and, past their greeting, never read; the relay's RSS (the chatrelay.exe Wine
    process's VmRSS, sampled, and VmHWM) may grow by that bound per client plus slack."""
    flooders, per_flooder = 8, 6 * 1024 * 1024
    bound = 256 * 1024                     # --max-queue-bytes, the default, given explicitly
    # Wine's and the pools' own growth.  Measured: 8.9 MB in all for 8 flooders with this code
    # (1.1 MB each), 76 MB (9.6 MB each) with the code before issue 10; the bound is 32 MB.
    slack_kb = 24 * 1024
    with Relay("abuse_negotiation", ["--max-queue-bytes", "256K", "--replay", "0"]) as relay:
        pid = relay_pid(relay)
        alice, _, _ = connect(relay, "alice")
        bob, _, _ = connect(relay, "bob")
        alice.expect("is now known as bob")
        socks = []
        for _ in range(flooders):
            c, _, _ = connect(relay)
            socks.append(c)
        time.sleep(0.5)     # let the joins settle before the baseline (not a pass condition)
        alice.drain(0.2)
        bob.drain(0.2)
        base_kb = mem_kb(pid, "VmRSS")
        sent = [0] * flooders
        errors = [None] * flooders
        chunk = bytes([IAC, DO, TTYPE]) * (64 * 1024 // 3)

        def flood(k):
            s = socks[k].sock
            s.settimeout(30)
            try:
                while sent[k] < per_flooder:
                    s.sendall(chunk)
                    sent[k] += len(chunk)
            except OSError as e:
                errors[k] = e.__class__.__name__

        peak = [base_kb]
        done = threading.Event()

        def sample():
            while not done.is_set():
                try:
                    peak[0] = max(peak[0], mem_kb(pid, "VmRSS"))
                except (OSError, TestFailure):
                    return
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        threads = [threading.Thread(target=flood, args=(k,), daemon=True) for k in range(flooders)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        # Alice and Bob keep talking meanwhile; every line gets through.
        talk = 0
        while any(t.is_alive() for t in threads) and time.monotonic() - t0 < 40:
            alice.say("a%03d" % talk)
            bob.say("b%03d" % talk)
            bob.expect("<alice> a%03d" % talk, 10)
            alice.expect("<bob> b%03d" % talk, 10)
            talk += 1
            time.sleep(0.25)
        for t in threads:
            t.join(5)
        check(not any(t.is_alive() for t in threads), "a flooder still sends after 40 s")
        # The relay works through what the flooders sent after they sent it, and a flooder's answers
        # fill its socket buffers before they stay in the relay's queue: wait for the cuts in the log
        # without reading (a read here would make room and put the cut off), then see the closes.
        deadline = time.time() + 30
        while relay.log().count("closed (slow consumer)") < flooders and time.time() < deadline:
            time.sleep(0.1)
        cut = [c.wait_closed(10) for c in socks]
        done.set()
        sampler.join(2)
        hwm_kb = mem_kb(pid, "VmHWM")
        peak_kb = max(peak[0], hwm_kb)
        growth_kb = peak_kb - base_kb
        limit_kb = flooders * 4 * bound // 1024 + slack_kb
        print("negotiation flood: %d clients sent %s KB each (stopped by %s); %d chat exchanges meanwhile"
              % (flooders, [s // 1024 for s in sent], errors, talk))
        print("relay RSS: baseline %d KB, peak %d KB (VmHWM %d KB), growth %d KB = %d KB per flooder; "
              "bound %d KB (%d x 4 x %d KB + %d KB slack)"
              % (base_kb, peak_kb, hwm_kb, growth_kb, growth_kb // flooders, limit_kb, flooders,
                 bound // 1024, slack_kb))
        check(all(cut), "flooders not disconnected: %r" % [k for k, x in enumerate(cut) if not x])
        check(relay.log().count("closed (slow consumer)") == flooders,
              "the log names %d slow consumers, not %d" % (relay.log().count("closed (slow consumer)"), flooders))
        check(talk >= 2, "alice and bob exchanged only %d lines during the flood" % talk)
        check(growth_kb <= limit_kb, "the relay's RSS grew by %d KB for %d flooders, over %d KB"
              % (growth_kb, flooders, limit_kb))
        alice.say("after the flood")
        bob.expect("<alice> after the flood")


def case_search_storm_latency():
    """docs/PROTOCOL.md "Answers come in turn": other people's chat is never held up by anyone's
    questions.  14 clients of one address, in a room of their own, search a word found in 200,000
    lines of another room (the costliest search: it runs to its work budget) as fast as the flood
    limit lets them for ~10 s; two others' chat lines all arrive, in order, each within
    LATENCY_MAX_S and half of them within LATENCY_MEDIAN_S."""
    rows_n, searchers, storm_s = 200000, 14, 10.0
    word = "needle"
    relay = Relay("abuse_search", ["--replay", "0"])
    with relay:
        pass            # creates the schema (whichever version this build writes), then stops
    t0 = time.monotonic()
    sqlite_cli(relay.db, """
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < %d)
        INSERT INTO messages(at, room, nick, kind, body)
        SELECT strftime('%%Y-%%m-%%dT%%H:%%M:%%fZ', 'now', '-1 day'), 'archive', 'seed', 'say',
               'line ' || i || ' has the %s in it and some other words ' || (i * 7919 %% 10007)
        FROM n""" % (rows_n, word), json_mode=False)
    count = sqlite_cli(relay.db, "SELECT count(*) AS n FROM messages_fts WHERE messages_fts MATCH '%s'" % word)
    check(count == [{"n": rows_n}], "the FTS index finds %r rows with %s" % (count, word))
    print("%d rows inserted with the sqlite3 CLI in %.1f s" % (rows_n, time.monotonic() - t0))
    relay.port = free_port()     # the first run's port may linger
    with relay:                  # starts it again, on the filled file
        alice, _, _ = connect(relay, "alice", source="127.0.0.2")
        bob, _, _ = connect(relay, "bob", source="127.0.0.3")
        alice.expect("is now known as bob")
        # A probe: the word's search really answers from the big room.
        probe, _, _ = connect(relay)
        probe.say("/join archive")
        probe.expect("*** You are now in archive")
        probe.say("/search " + word)
        probe.say("/who")
        ans = read_through(probe, lambda l: l.startswith("*** In archive"), 15, "the probe's search")
        hits = [l for l in ans if HISTORY_LINE.match(l) and word in l]
        check(len(hits) == 20, "the probe's /search %s gave %d lines: %r" % (word, len(hits), ans[:3]))
        probe.close()
        alice.drain(0.5)
        bob.drain(0.5)
        clients = []
        for _ in range(searchers):
            c, _, _ = connect(relay)
            c.say("/join quiet")
            c.expect("*** You are now in quiet")
            clients.append(c)
        # One match in the searchers' own room, newer than the archive: each search finds it at
        # once, then walks the archive's 200,000 matches of other rooms up to its work budget.
        clients[0].say("a %s in the quiet room" % word)
        alice.drain(0.5)
        bob.drain(0.5)
        stop = threading.Event()
        stats = {"answers": 0, "refused": 0, "stopped": 0, "cut": 0}
        stats_lock = threading.Lock()

        def search_loop(c):
            # At the flood rate (5 lines/s) after a burst of 10: what the bucket lets a client try;
            # refusals are counted by the relay and reset by each accepted line, so none is kicked.
            rd = Reader(c)
            try:
                c.send(("/search %s\r\n" % word) * 10)
                while not stop.wait(0.2):
                    c.send("/search %s\r\n" % word)
            except OSError:
                pass
            time.sleep(1.0)
            got = rd.lines()
            with stats_lock:
                stats["answers"] += sum(1 for l in got if HISTORY_LINE.match(l) and "quiet room" in l)
                stats["refused"] += sum(1 for l in got if l.startswith("*** Too fast"))
                stats["stopped"] += sum(1 for l in got if l.startswith("*** search stopped"))
                stats["cut"] += rd.closed or any("isconnect" in l for l in got)

        a_rd, b_rd = Reader(alice), Reader(bob)
        threads = [threading.Thread(target=search_loop, args=(c,), daemon=True) for c in clients]
        for t in threads:
            t.start()
        sent = {"a": {}, "b": {}}
        n = 0
        start = time.monotonic()
        while time.monotonic() - start < storm_s:
            # Each sends 2 lines a second (within the flood limit); each line carries its number.
            alice.say("a%03d" % n)
            sent["a"][n] = time.monotonic()
            bob.say("b%03d" % n)
            sent["b"][n] = time.monotonic()
            n += 1
            time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(15)
        # The last lines may still be on their way: wait for them (or give up 15 s after the
        # storm, far past the bound, and count what is missing as late).
        deadline = time.time() + 15
        while time.time() < deadline and not ("<alice> a%03d" % (n - 1) in b_rd.lines()
                                               and "<bob> b%03d" % (n - 1) in a_rd.lines()):
            time.sleep(0.05)
        gave_up = time.monotonic()
        latencies, missing = [], 0
        for rd, who, tag in ((b_rd, "alice", "a"), (a_rd, "bob", "b")):
            with rd.lock:
                arrived = [(t, l) for t, l in rd.got if l.startswith("<%s> %s" % (who, tag))]
            nums = [int(l.split()[1][1:]) for _, l in arrived]
            check(nums == list(range(len(nums))), "%s's lines arrived as %r: not in order" % (who, nums))
            latencies += [t - sent[tag][k] for k, (t, _) in zip(nums, arrived)]
            latencies += [gave_up - sent[tag][k] for k in range(len(nums), n)]
            missing += n - len(nums)
        worst, median = max(latencies), statistics.median(latencies)
        print("search storm: %d searchers, %d searches answered (%d stopped at the work budget), %d "
              "refused by flood control, %d searchers cut" % (searchers, stats["answers"], stats["stopped"],
                                                             stats["refused"], stats["cut"]))
        print("chat latency over %d lines during the storm: median %.0f ms, max %.0f ms, %d not arrived "
              "(bounds: median %.0f ms, max %.0f ms)" % (len(latencies), median * 1000, worst * 1000, missing,
                                                        LATENCY_MEDIAN_S * 1000, LATENCY_MAX_S * 1000))
        check(worst < LATENCY_MAX_S and median < LATENCY_MEDIAN_S and missing == 0,
              "chat during the search storm: max %.0f ms, median %.0f ms (bounds %.0f and %.0f ms); %d of %d "
              "lines had not arrived 15 s after the storm" % (worst * 1000, median * 1000, LATENCY_MAX_S * 1000,
                                                               LATENCY_MEDIAN_S * 1000, missing, 2 * n))
        check(stats["cut"] == 0, "%d searchers were disconnected" % stats["cut"])
        check(stats["answers"] >= searchers, "only %d searches were answered" % stats["answers"])
        check(not a_rd.closed and not b_rd.closed, "a chatter was disconnected")


def case_room_case_history():
    """Rooms are case-insensitive for history too (schema 2): `Games` re-created as `games` keeps
    its past in the replay, /history and /search; the file keeps each row's own spelling."""
    with Relay("abuse_roomcase", ["--replay", "20"]) as relay:
        alice, _, _ = connect(relay, "alice")
        alice.say("/join Games")
        alice.expect("*** You are now in Games (1 here).")
        said = ["who wants a round of chess", "the board is ready", "chess later then"]
        for s in said:
            alice.say(s)
        alice.say("/join lobby")
        alice.expect("*** You are now in lobby")
        alice.say("/rooms")
        rooms = read_through(alice, lambda l: l.startswith("*** ") and "room" in l and "lobby (" in l, 10, "/rooms")
        check("Games" not in rooms[-1] and "games" not in rooms[-1], "Games still exists: %r" % rooms[-1])
        bob, _, _ = connect(relay, "bob")
        bob.say("/join games")
        bob.expect("*** You are now in games (1 here).")
        bob.say("/who")
        replay = read_through(bob, lambda l: l.startswith("*** In games"), 10, "bob's replay")[:-1]
        want_replay = [history_line(r) for r in
                       rows(relay, "room = 'games' COLLATE NOCASE AND id < %d" % join_id(relay, "bob"), 20)]
        check(["<alice> " + s in " ".join(replay) for s in said] == [True] * 3,
              "bob's replay of games lacks alice's lines from Games: %r" % replay)
        check(replay == want_replay, "bob's replay %r differs from the stored rows %r" % (replay, want_replay))
        bob.say("/history")
        bob.say("/who")
        hist = read_through(bob, lambda l: l.startswith("*** In games"), 10, "bob's /history")[:-1]
        want_hist = [history_line(r) for r in rows(relay, "room = 'games' COLLATE NOCASE", 20)]
        check(hist == want_hist, "bob's /history %r differs from the stored rows %r" % (hist, want_hist))
        check(all(any(l.endswith("<alice> " + s) for l in hist) for s in said), "/history lacks alice's lines")
        bob.say("/search chess")
        bob.say("/who")
        found = read_through(bob, lambda l: l.startswith("*** In games"), 10, "bob's /search")[:-1]
        want_found = [history_line(r) for r in rows(relay, "room = 'Games' AND body LIKE '%chess%'", 20)][::-1]
        check(len(want_found) == 2 and found == want_found,
              "bob's /search chess gave %r, expected alice's two lines newest first %r" % (found, want_found))
        spelled = sqlite_cli(relay.db, "SELECT nick, kind, room FROM messages WHERE room = 'games' "
                                       "COLLATE NOCASE ORDER BY id")
        print("rows of the room as the sqlite3 CLI shows them: %r" % spelled)
        check([r["room"] for r in spelled if r["nick"] == "alice"] == ["Games"] * 5,
              "alice's rows are not spelled Games: %r" % spelled)
        check([r["room"] for r in spelled if r["nick"] == "bob"] == ["games"],
              "bob's join is not spelled games: %r" % spelled)


CASES = {
    "backlog_reader_not_cut": case_backlog_reader_not_cut,
    "replay_with_small_queue": case_replay_with_small_queue,
    "history_twice": case_history_twice,
    "negotiation_flood_memory": case_negotiation_flood_memory,
    "search_storm_latency": case_search_storm_latency,
    "room_case_history": case_room_case_history,
}

if __name__ == "__main__":
    run_cases(CASES)

"""test_cluster: the cluster mode (issue 14) end to end: real nats-servers in a JetStream cluster
on loopback (nats_cluster.NatsCluster) and relays under Wine in console mode with `--cluster`
listing every server (each relay its own server first) and a `--node` name of its own.

Cases (one ctest test each, `python3 test_cluster.py CASE`):
  chat             line clients on each node and an IRC client: everyone sees every line in the
                   stream's order, the same on every node; a late client replays other nodes' lines
  relay_killed     kill -9 of a relay under load, restarted on its file: it catches up and serves
  nats_killed      kill -9 of the nats-server a relay uses, under load: every line once, in order;
                   then of the stream's leader: every line refused (told) or delivered once
  bus_down         every nats-server stopped: lines held, then refused with the notice; never both,
                   never lost; the servers back: chat resumes by itself
  stream_mismatch  a file bound to another instance of the stream refuses it (running and at a
                   start); --cluster without history, a missing credentials file, a token
  nicks            one nick namespace: taken on another node (line and IRC), /who and NAMES list
                   every node's users, distinct guests, a nick claimed on two nodes at once
  node_lost        a relay killed -9: its users leave the other nodes' lists (node lost), one
                   leave row each, in every file

Every case ends with `settle`: every node applied the whole stream, and the three files hold the
same rows (`select id,at,room,nick,kind,body from messages order by id`, read with the sqlite3
CLI), among them every chat line any client received.
"""
import contextlib
import datetime
import json
import os
import re
import signal
import subprocess
import threading
import time

from harness import (Client, Relay, TestFailure, WORK, check, expect_line, free_port, read_through, run_cases,
                     winpath)
from irc_clients import IrcClient
from nats_cluster import JetStreamError, NatsCluster, NatsError

OPEN_LIMITS = ["--max-per-ip", "0", "--flood-burst", "0", "--flood-rate", "0"]
STREAM = "CHATRELAY"
SUBJECT = "chatrelay.chat"
NOTICE = "*** cluster unavailable, message not sent"
READY = "cluster: ready at stream sequence"
ROWS_SQL = "select id,at,room,nick,kind,body from messages order by id"
CHAT = re.compile(r"^<([^>]+)> (.*)$")
HISTORY = re.compile(r"^\*\*\* \[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\] <([^>]+)> (.*)$")


def wait_until(pred, timeout, what, poll=0.05):
    """Polls a condition that no socket announces (a log line, a file's rows) until it holds;
    what: the failure's text, or a function that makes it then (with the log of that moment)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() >= deadline:
            raise TestFailure("not within %.0f s: %s" % (timeout, what() if callable(what) else what))
        time.sleep(poll)


# ---- the sqlite3 CLI ------------------------------------------------------------------------

def cli(db, sql):
    """Rows of sql on db as dicts, through the sqlite3 shell (as an operator reads the file)."""
    r = subprocess.run(["sqlite3", "-batch", "-bail", "-cmd", ".timeout 5000", "-json", db, sql],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    check(r.returncode == 0 and r.stderr == "", "sqlite3 %r on %s failed (rc %d): %s"
          % (sql, db, r.returncode, r.stderr.strip()))
    return json.loads(r.stdout) if r.stdout.strip() else []


def cluster_row(db):
    rows = cli(db, "select stream, stream_created, applied_seq from cluster")
    return rows[0] if rows else None


def applied_seq(db):
    row = cluster_row(db)
    return row["applied_seq"] if row else None


# ---- relays ---------------------------------------------------------------------------------

class Node(Relay):
    """Relay i of a cluster: --cluster lists every server, its own (i) first."""

    def __init__(self, case, i, urls, extra=(), node=None):
        order = list(urls[i:]) + list(urls[:i])
        self.node = node or "node%d" % (i + 1)
        Relay.__init__(self, "cluster_%s_%d" % (case, i + 1),
                       OPEN_LIMITS + ["--cluster", ",".join(order), "--node", self.node] + list(extra))
        self.index = i

    def ready_count(self):
        try:
            return self.log().count(READY)
        except FileNotFoundError:
            return 0

    def start_ready(self, timeout=40.0):
        """Starts (again: on the same file, a new port, since a killed relay's may linger) and
        waits until the relay says it is ready on the bus."""
        before = self.ready_count() if self.starts else 0
        if self.starts:
            self.port = free_port()
        self.start()
        self.wait_ready(before, timeout)
        return self

    def wait_ready(self, before, timeout=40.0):
        wait_until(lambda: self.ready_count() > before or self.proc.poll() is not None, timeout,
                   lambda: "relay %s ready on the bus; log:\n%s" % (self.node, self.log_tail()))
        check(self.proc.poll() is None, "relay %s exited with %s:\n%s" % (self.node, self.proc.returncode,
                                                                          self.log_tail()))

    def log_tail(self, n=40):
        try:
            return "\n".join(self.log().splitlines()[-n:])
        except FileNotFoundError:
            return "(no log)"

    def server_port(self):
        """The port of the nats-server it connected to last."""
        ports = re.findall(r"cluster: connected to 127\.0\.0\.1:(\d+)", self.log())
        return int(ports[-1]) if ports else None


@contextlib.contextmanager
def relays(case, nats, n=3, extra=()):
    """n relays of the cluster, each ready on the bus; stopped (Ctrl+C) at the end.  A failure
    shows the end of every relay's log and of every nats-server's."""
    nodes = [Node(case, i, nats.urls(), extra) for i in range(n)]
    try:
        for nd in nodes:
            nd.start_ready()
        yield nodes
    except BaseException:
        for nd in nodes:
            print("--- relay %s (%s):\n%s" % (nd.node, nd.log_path, nd.log_tail()))
        for i in range(nats.n):
            print(nats.describe(i, 15))
        raise
    finally:
        for nd in nodes:
            nd.__exit__(None, None, None)


# ---- clients --------------------------------------------------------------------------------

class Line(Client):
    """A greeted line client (like nc) that took `nick`; `seen` keeps every line received."""

    def __init__(self, relay, nick=None):
        self.seen = []
        Client.__init__(self, relay.port)
        lines = read_through(self, lambda l: l.startswith("*** Type /help"), 15, what="the greeting")
        m = [re.match(r"\*\*\* Your nick is (\S+); change it", l) for l in lines]
        m = [x for x in m if x]
        check(m, "no nick in the greeting %r" % lines)
        self.nick = m[0].group(1)
        if nick:
            self.say("/nick " + nick)
            expect_line(self, "*** %s is now known as %s" % (self.nick, nick), 20)
            self.nick = nick

    def _fill(self, timeout):
        n = len(self.lines)
        got = Client._fill(self, timeout)
        self.seen.extend(self.lines[n:])
        return got

    def wait_seen(self, line, timeout=30.0):
        """Until `line` has been received (at any time since the connection began); unlike
        expect_line, no line is dropped from view."""
        return self.wait_match(lambda l: l == line, timeout, repr(line))

    def wait_match(self, pred, timeout=30.0, what="a matching line"):
        """The first line received (since the connection began) for which pred holds."""
        deadline = time.monotonic() + timeout
        while True:
            hit = next((l for l in self.seen if pred(l)), None)
            if hit is not None:
                return hit
            left = deadline - time.monotonic()
            check(left > 0 and not self.closed, "%s: no %s within %.0f s (closed=%s); last lines: %r"
                  % (self.nick, what, timeout, self.closed, self.seen[-5:]))
            self._fill(min(left, 0.5))

    def chat(self):
        """(nick, text) of every live chat line received, in order."""
        return [(m.group(1), m.group(2)) for m in map(CHAT.match, self.seen) if m]

    def history(self):
        """(time, nick, text) of every history line (replay, /history) received, in order."""
        return [m.groups() for m in map(HISTORY.match, self.seen) if m]

    def notices(self, text=NOTICE):
        return [l for l in self.seen if l == text]

    def who(self, timeout=15.0):
        """The nicks /who lists for this client's room (a short room: the answer is one line)."""
        self.say("/who")
        line = read_through(self, lambda l: l.startswith("*** In "), timeout, what="the answer to /who")[-1]
        m = re.match(r"\*\*\* In (\S+) \((\d+)\): (.*)\.$", line)
        check(m, "%s: /who answered %r" % (self.nick, line))
        names = [n.strip() for n in m.group(3).split(",")]
        check(len(names) == int(m.group(2)), "%s: /who counts %s but lists %r" % (self.nick, m.group(2), names))
        return names

    def sync(self, timeout=15.0):
        """Everything the relay sent before the answer to a /who has been read."""
        self.say("/who")
        read_through(self, lambda l: l.startswith("*** In "), timeout, what="the answer to /who")


def irc_client(relay, nick):
    c = IrcClient(nick)
    c.connect("127.0.0.1", relay.port)
    c.register(nick, caps=["echo-message", "message-tags", "server-time"], timeout=20)
    c.join("#lobby", timeout=20)
    return c


def irc_wait_seen(c, nick, text, timeout=30.0):
    """Until a PRIVMSG of nick's with text has been received (the cursor is not used)."""
    deadline = time.monotonic() + timeout
    while not c.messages("PRIVMSG", lambda m: m.nick == nick and m.text == text):
        left = deadline - time.monotonic()
        check(left > 0 and not c.closed, "%s: no PRIVMSG %r from %s within %.0f s; last lines:%s"
              % (c.name, text, nick, timeout, c.dump(5)))
        c._fill(min(left, 0.5))


class Load(threading.Thread):
    """A line client's lines `prefix-0000`... at `rate` a second, from a thread of its own.  The
    rate shapes the load; the test never waits for a time but for how many were sent
    (wait_sent).  probe: after each line `/probe-<i>`, an unknown command whose answer tells
    the reader, in the client's output, whether a refusal notice came for line i."""

    def __init__(self, client, prefix, count, rate=100.0, probe=False):
        threading.Thread.__init__(self, daemon=True)
        self.client = client
        self.lines = ["%s-%04d" % (prefix, i) for i in range(count)]
        self.rate = rate
        self.probe = probe
        self.sent = 0
        self.done = False
        self.error = None
        self.cond = threading.Condition()

    def run(self):
        start = time.monotonic()
        try:
            for i, text in enumerate(self.lines):
                delay = start + i / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                data = text + "\r\n" + ("/probe-%d\r\n" % i if self.probe else "")
                self.client.sock.sendall(data.encode())
                with self.cond:
                    self.sent = i + 1
                    self.cond.notify_all()
        except OSError as e:
            self.error = e
        finally:
            with self.cond:
                self.done = True
                self.cond.notify_all()

    def wait_sent(self, n, timeout=60.0):
        with self.cond:
            self.cond.wait_for(lambda: self.sent >= n or self.done, timeout)
        check(self.sent >= n, "the load sent %d of %d lines (error %s)" % (self.sent, n, self.error))

    def finish(self, timeout=60.0):
        self.join(timeout)
        check(not self.is_alive() and self.error is None,
              "the load did not finish: %d of %d sent, error %s" % (self.sent, len(self.lines), self.error))


def probe_outcomes(client, count, timeout=60.0):
    """For a probed Load: reads through the answer to every probe; returns the set of line
    indexes that were refused (a refusal notice between the previous probe's answer and its own)."""
    refused = set()
    for i in range(count):
        want = "*** Unknown command /probe-%d; type /help for the list." % i
        got = read_through(client, lambda l: l == want, timeout, what=repr(want))
        if NOTICE in got:
            refused.add(i)
    return refused


def say_until_refused(client, prefix, timeout=25.0, run=3):
    """Says `prefix-00`, `prefix-01`... every 0.3 s, a probe after each telling whether it was
    refused, until `run` in a row are; returns (held texts, refused texts).  Once the relay
    refuses, it must refuse every later line (while the outage lasts)."""
    start = time.monotonic()
    texts, refused = [], []
    while len(refused) < run or refused[-run:] != list(range(len(texts) - run, len(texts))):
        check(time.monotonic() - start < timeout, "%s: no refusal within %.0f s (said %d lines)"
              % (client.nick, timeout, len(texts)))
        i = len(texts)
        texts.append("%s-%02d" % (prefix, i))
        client.say(texts[-1])
        client.say("/probe-%s-%d" % (prefix, i))
        got = read_through(client, lambda l: l.startswith("*** Unknown command /probe-%s-%d;" % (prefix, i)), 15,
                           what="the answer to probe %d" % i)
        if NOTICE in got:
            refused.append(i)
        time.sleep(0.3)     # pacing: lines spread over the outage, not a wait for an event
    first = refused[0]
    check(refused == list(range(first, len(texts))),
          "%s: lines refused %r of 0..%d: once refusing, the relay took a line again"
          % (client.nick, refused, len(texts) - 1))
    return texts[:first], texts[first:]


def say_taken(client, text, timeout=60.0):
    """Says text (then "text (again N)") until a line is not refused, a probe after each telling;
    returns the text that was taken.  For a marker line said while the bus may still be failing."""
    deadline = time.monotonic() + timeout
    for n in range(1000):
        line = text if n == 0 else "%s (again %d)" % (text, n)
        client.say(line)
        client.say("/probe-taken-%d" % n)
        got = read_through(client, lambda l: l.startswith("*** Unknown command /probe-taken-%d;" % n), 15,
                           what="the answer to a probe")
        if NOTICE not in got:
            return line
        check(time.monotonic() < deadline, "%s: every line refused for %.0f s" % (client.nick, timeout))
        time.sleep(0.5)     # pacing while the bus is failing, not a wait for an event


def check_once_in_order(name, got, want, what):
    """got (what a receiver saw) is exactly want, in order: every line once, none added."""
    if got == want:
        return
    dups = sorted({x for x in got if got.count(x) > 1})[:5]
    missing = [x for x in want if x not in got][:5]
    extra = [x for x in got if x not in want][:5]
    first = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    raise TestFailure("%s: %s: got %d lines, expected %d; duplicated %r, missing %r, unexpected %r; first "
                      "difference at %d: got %r, expected %r"
                      % (name, what, len(got), len(want), dups, missing, extra, first, got[first:first + 3],
                         want[first:first + 3]))


# ---- the files ------------------------------------------------------------------------------

def stream_state(nats):
    """The stream's state (messages, first_seq, last_seq...) through a running server, or None
    while none answers (an election, a restart)."""
    for i in range(nats.n):
        if not nats.running(i):
            continue
        try:
            with nats.client(i, name="test-info", timeout=5) as c:
                return c.stream_info(STREAM, timeout=3)["state"]
        except NatsError:
            continue
    return None


def first_difference(a, b):
    for k, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return "row %d: %r vs %r" % (k, x, y)
    return "one has %d rows, the other %d; first extra: %r" % (len(a), len(b), (a[len(b):] or b[len(a):])[:1])


def settle(nats, nodes, clients=(), timeout=60.0):
    """Waits until every node applied the stream up to its last sequence and nothing more comes
    (two readings agree), then checks the files hold identical rows and every chat line a client
    received; returns (rows, last_seq)."""
    deadline = time.monotonic() + timeout
    why = "not tried"
    while True:
        state = stream_state(nats)
        if state is None:
            why = "no server answers STREAM.INFO"
        else:
            last = state["last_seq"]
            applied = [applied_seq(nd.db) for nd in nodes]
            why = "the stream ends at %d; the nodes applied %r" % (last, applied)
            if all(a == last for a in applied):
                rows = [cli(nd.db, ROWS_SQL) for nd in nodes]
                again = stream_state(nats)
                if again is not None and again["last_seq"] == last and \
                        [applied_seq(nd.db) for nd in nodes] == applied:
                    for nd, r in zip(nodes[1:], rows[1:]):
                        check(r == rows[0], "%s and %s hold different rows: %s"
                              % (nodes[0].db, nd.db, first_difference(rows[0], r)))
                    check_received(rows[0], clients)
                    return rows[0], last
        check(time.monotonic() < deadline, "the nodes did not settle within %.0f s: %s" % (timeout, why))
        time.sleep(0.1)


def check_received(rows, clients):
    """Every chat line (live, replayed, IRC) a client received is a row of the file."""
    said = {(r["nick"], r["body"]) for r in rows if r["kind"] == "say"}
    for c in clients:
        if isinstance(c, IrcClient):
            got = [(m.nick, m.text) for m in c.messages("PRIVMSG") if m.params and m.params[0] == "#lobby"]
            name = c.name
        else:
            got = c.chat() + [(n, t) for _, n, t in c.history()]
            name = c.nick
        missing = [x for x in got if x not in said]
        check(not missing, "%s received lines that no file holds: %r" % (name, missing[:5]))


def says(rows, prefix=None):
    """(nick, body) of the say rows, in id order (of one room: these cases use the lobby)."""
    return [(r["nick"], r["body"]) for r in rows
            if r["kind"] == "say" and (prefix is None or r["body"].startswith(prefix))]


# ---- cases ----------------------------------------------------------------------------------

def case_chat():
    """Line clients on each node and an IRC client on node 2 talk at once; each sees every other
    line in the stream's order (the same sequence on every node, the file's); the IRC client's
    echoes carry the row's id and time; a client arriving later on node 3 is replayed all of it."""
    n_lines = 25
    with NatsCluster(3) as nats, relays("chat", nats, extra=["--replay", "200"]) as nodes:
        ira = irc_client(nodes[1], "ira")
        ann, bob, cyd = Line(nodes[0], "ann"), Line(nodes[1], "bob"), Line(nodes[2], "cyd")
        lines = [ann, bob, cyd]
        for k in range(n_lines):
            for c in lines:
                c.say("%s line %d" % (c.nick, k))
            ira.privmsg("#lobby", "ira line %d" % k)
        nicks = [c.nick for c in lines] + ["ira"]
        for c in lines:
            for other in nicks:
                if other != c.nick:
                    c.wait_seen("<%s> %s line %d" % (other, other, n_lines - 1))
        for other in nicks:
            irc_wait_seen(ira, other, "%s line %d" % (other, n_lines - 1))
        rows, _ = settle(nats, nodes, lines + [ira])
        order = says(rows)
        check(len(order) == 4 * n_lines and len(set(order)) == len(order),
              "the file holds %d say rows (%d distinct), expected %d" % (len(order), len(set(order)), 4 * n_lines))
        for c in lines:
            check_once_in_order(c.nick, c.chat(), [x for x in order if x[0] != c.nick], "lines in the file's order")
        echoes = [m for m in ira.messages("PRIVMSG") if m.params[0] == "#lobby"]
        check_once_in_order("ira", [(m.nick, m.text) for m in echoes], order, "lines (echo-message) in order")
        by_line = {(r["nick"], r["body"]): r for r in rows if r["kind"] == "say"}
        for m in echoes:
            r = by_line[(m.nick, m.text)]
            check(m.tags.get("msgid") == str(r["id"]) and m.tags.get("time") == r["at"],
                  "ira: %s has msgid %r time %r; its row is id %d at %s"
                  % (m.line, m.tags.get("msgid"), m.tags.get("time"), r["id"], r["at"]))
        # A later client on node 3 gets the whole lobby replayed (--replay 200), nodes 1 and 2's
        # lines too, with their stored times.
        late = Line(nodes[2])
        late.sync()
        replayed = late.history()
        check_once_in_order("late", [(n, t) for _, n, t in replayed], order, "replayed lines")
        for when, n, t in replayed:
            at = by_line[(n, t)]["at"]
            check(when == at[:10] + " " + at[11:19], "replayed %r at %s; stored at %s" % (t, when, at))
        settle(nats, nodes, lines + [ira, late])


def case_relay_killed():
    """A client on node 1 says 600 lines at ~100/s; relay 2 is killed -9 at line 150 and
    restarted on its file at line 300.  It catches up (its file holds every line, its
    applied_seq is the stream's last_seq), a new client of node 2 gets the rest of the load
    live and a line said after it; node 3's client got every line once, in order."""
    count = 600
    with NatsCluster(3) as nats, relays("relay_killed", nats) as nodes:
        sender = Line(nodes[0], "sender")
        r1, r2, r3 = Line(nodes[0], "r1"), Line(nodes[1], "r2"), Line(nodes[2], "r3")
        load = Load(sender, "load", count)
        load.start()
        load.wait_sent(150)
        nodes[1].kill()
        load.wait_sent(300)
        nodes[1].start_ready()
        r2b = Line(nodes[1], "r2b")
        load.finish()
        sender.say("after the restart")
        for c in (r1, r2b, r3):
            c.wait_seen("<sender> after the restart", 30)
        want = [("sender", t) for t in load.lines] + [("sender", "after the restart")]
        check_once_in_order("r1", r1.chat(), want, "the load")
        check_once_in_order("r3", r3.chat(), want, "the load")
        # r2 saw a beginning of the load until its relay died; r2b the rest after its replay
        check(r2.closed or r2.wait_closed(5), "r2's connection outlived its relay")
        got2 = r2.chat()
        check_once_in_order("r2", got2, want[:len(got2)], "the load before the kill")
        got2b = r2b.chat()
        check(got2b and got2b[-1] == want[-1], "r2b: no live line after the restart: %r" % got2b[-3:])
        start = want.index(got2b[0])
        check_once_in_order("r2b", got2b, want[start:], "the load after the restart")
        check(not sender.notices(), "the sender was refused: %r" % sender.notices())
        rows, last = settle(nats, nodes, [r1, r2, r2b, r3])
        check(applied_seq(nodes[1].db) == last, "relay 2 applied %s; the stream ends at %d"
              % (applied_seq(nodes[1].db), last))
        check_once_in_order("the files", says(rows, "load-"), want[:-1], "the load's rows")


class Consumers:
    """Which consumer of the stream each relay applies it from, and which nats-server hosts it.
    A relay makes an ephemeral pull consumer each time it connects and pulls from it with
    `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`, the reply subject naming the relay
    (`_INBOX.chatrelay.<node>.<epoch>.pull`): a subscriber on that subject, one per server (any
    may be killed), sees every pull.  A relay's newest consumer is its current one."""

    def __init__(self, nats):
        self.nats = nats
        self.names = {}         # node name -> consumer names it pulled from
        self.watchers = []
        for i in range(nats.n):
            c = nats.client(i, name="test-pull-watch")
            sid = c.subscribe("$JS.API.CONSUMER.MSG.NEXT.%s.*" % STREAM)
            c.flush()
            self.watchers.append((c, sid))

    def close(self):
        for c, _ in self.watchers:
            c.close()

    def _read(self):
        for c, sid in self.watchers:
            if c.closed:
                continue
            try:
                c.flush(5)      # every pull the server sent before its PONG is read
            except NatsError:
                continue        # its server was killed: the others saw the same pulls
            for m in c.msgs.get(sid, []):
                parts = (m.reply or "").split(".")
                if len(parts) == 5 and parts[:2] == ["_INBOX", "chatrelay"]:
                    self.names.setdefault(parts[2], set()).add(m.subject.rsplit(".", 1)[1])
            c.msgs[sid] = []

    def current(self):
        """node name -> index of the server hosting its newest consumer (asked of the servers)."""
        self._read()
        out = {}
        i = next(j for j in range(self.nats.n) if self.nats.running(j))
        with self.nats.client(i, name="test-consumers", timeout=5) as c:
            for node, names in self.names.items():
                newest = None
                for name in names:
                    try:
                        info = c.js_api("CONSUMER.INFO.%s.%s" % (STREAM, name), timeout=3)
                    except NatsError:
                        continue    # gone (inactive) or its server is down
                    if newest is None or info["created"] > newest[1]:
                        newest = (int(info["cluster"]["leader"][1:]), info["created"])
                if newest:
                    out[node] = newest[0]
        return out

    def stranded(self, nodes):
        """(server index, relay) pairs: the server hosts the current consumer of a relay that is
        connected to another server, so a kill of it leaves that relay connected, consumer-less."""
        cur = self.current()
        return [(cur[nd.node], nd) for nd in nodes
                if nd.node in cur and nd.server_port() != self.nats.client_ports[cur[nd.node]]]


def node_on(nodes, nats, server):
    """The relay connected to the server, None if none is."""
    return next((nd for nd in nodes if nd.server_port() == nats.client_ports[server]), None)


def killed_under_load(nats, nodes, victim, sender_node, label, receivers, short):
    """kill -9 of server `victim` at line 100 of a probed load from a client of sender_node:
    every receiver gets each line that was not refused (the sender was told of each refusal)
    exactly once, in order; with short, none is refused.  Returns the refused count."""
    for c in receivers:
        c.sync()
    marks = [len(c.chat()) for c in receivers]
    sender = Line(sender_node, "s" + label)
    affected = [nd for nd in nodes if nd.server_port() == nats.client_ports[victim]]
    ready_before = {nd.node: nd.ready_count() for nd in affected}
    log_mark = len(sender_node.log())
    load = Load(sender, label, 300, probe=True)
    load.start()
    load.wait_sent(100)
    nats.kill(victim)
    killed_at = time.monotonic()
    for nd in affected:
        nd.wait_ready(ready_before[nd.node], 40)
    load.finish()
    refused = probe_outcomes(sender, len(load.lines))
    print("%s: probes answered %.1f s after the kill" % (label, time.monotonic() - killed_at))
    end = say_taken(sender, "end of " + label)
    print("%s: %r taken %.1f s after the kill" % (label, end, time.monotonic() - killed_at))
    for c in receivers:
        c.wait_seen("<s%s> %s" % (label, end), 40)
    want = [("s" + label, t) for i, t in enumerate(load.lines) if i not in refused] + [("s" + label, end)]
    for c, mark in zip(receivers, marks):
        check_once_in_order(c.nick, c.chat()[mark:], want, "the load across the kill of %s (%d lines refused)"
                            % (nats.node_name(victim), len(refused)))
    if short:
        # A short outage refuses nothing: the bound is 5 s of a failing bus.  How long it failed
        # is the relay's own account (a consumer the meta leader placed on the dead server
        # costs a 3 s retry, twice in a row now and then).
        spans = [int(ms) for ms in re.findall(r"the bus takes lines again after (\d+) ms",
                                              sender_node.log()[log_mark:])]
        if spans and max(spans) < 5000:
            check(not refused, "%d line(s) refused though the bus failed for %r ms only" % (len(refused), spans))
        else:
            print("the outage lasted %r ms: refusals allowed" % spans)
    rows, _ = settle(nats, nodes, receivers + [sender])
    check_once_in_order("the files", says(rows, label + "-"), want[:-1], "the rows of the load")
    # nobody left: a relay moving to another server is not a node lost
    moved = [(r["id"], r["nick"], r["kind"], r["body"]) for r in rows
             if r["nick"] in [c.nick for c in receivers] and r["kind"] in ("join", "leave")]
    check(not moved, "users who never left left and joined again across the kill of %s: %r"
          % (nats.node_name(victim), moved))
    sender.close()
    print("kill -9 of %s under load: %d of %d lines refused" % (nats.node_name(victim), len(refused), len(load.lines)))
    return len(refused)


def case_nats_killed():
    """Under load (a probed client, so each refusal is tied to its line), kill -9 of a
    nats-server: each line is refused (and the sender told) or delivered once, in order, to a
    receiver on every node; never both, never lost, possibly late.  Three kills, each after the
    previous server is back:
      1. a server a relay is connected to that leads neither the stream nor the meta group:
         a short outage, so no line may be refused;
      2. a server hosting the consumer of a relay connected elsewhere (when the placement
         made one): that relay must notice and go on;
      3. the stream's leader: publishes fail until a new leader is elected (4-8 s)."""
    with NatsCluster(3) as nats:
        consumers = Consumers(nats)
        with relays("nats_killed", nats) as nodes:
            receivers = [Line(nd, "rcv%d" % (nd.index + 1)) for nd in nodes]
            # 1: the sender's relay's own server, which leads nothing
            leader = nats.stream_leader(STREAM)
            meta = nats.meta_leader(leader)
            k = [i for i in range(3) if i not in (leader, meta)][0]
            check(nodes[k].server_port() == nats.client_ports[k],
                  "relay %s is connected to port %s, not to its own server's %d"
                  % (nodes[k].node, nodes[k].server_port(), nats.client_ports[k]))
            killed_under_load(nats, nodes, k, nodes[k], "first", receivers, short=True)
            nats.start_node(k)
            nats.wait_stream_current(STREAM, k)
            # 2: a relay's consumer on a server it is not connected to
            stranded = consumers.stranded(nodes)
            consumers.close()
            if stranded:
                victim, owner = stranded[0]
                print("the consumer of %s is on %s" % (owner.node, nats.node_name(victim)))
                sender_node = node_on(nodes, nats, victim) or owner
                killed_under_load(nats, nodes, victim, sender_node, "second", receivers, short=False)
                nats.start_node(victim)
                nats.wait_stream_current(STREAM, victim)
            else:
                print("no consumer is on a server its relay is not connected to: kill 2 skipped")
                victim = None
            # 3: the stream's leader
            leader = nats.stream_leader(STREAM)
            if leader != victim:
                sender_node = nodes[(leader + 1) % 3]
                killed_under_load(nats, nodes, leader, sender_node, "third", receivers, short=False)


def case_bus_down():
    """Every nats-server stopped: a line said every 0.3 s is held, then (once the bus has been
    gone for the bound, 5 s) refused with the notice; the servers back, the relays reconnect by
    themselves: every held line is delivered once, in order, on every node, no refused one ever,
    and a new line goes across nodes."""
    with NatsCluster(3) as nats, relays("bus_down", nats) as nodes:
        sender = Line(nodes[0], "sender")
        receivers = [Line(nodes[0], "rcv1"), Line(nodes[1], "rcv2"), Line(nodes[2], "rcv3")]
        sender.say("before")
        for c in receivers:
            c.wait_seen("<sender> before", 20)
        # all at once: one by one, a relay would move to the next server still up
        for i in range(3):
            nats.procs[i].send_signal(signal.SIGTERM)
        for i in range(3):
            nats.stop(i)
        # every connection a relay made is gone
        wait_until(lambda: all(nd.log().count("disconnected from the bus") >= nd.log().count("cluster: connected to")
                               for nd in nodes), 20, "every relay saw the bus go")
        held, refused = say_until_refused(sender, "held")
        check(held, "the first line after the bus went down was refused: held lines never waited")
        nats.start_nodes(range(3), timeout=60)
        for c in receivers:
            c.wait_seen("<sender> %s" % held[-1], 60)
        resumed = say_taken(sender, "resumed")
        for c in receivers:
            c.wait_seen("<sender> " + resumed, 30)
        want = [("sender", t) for t in ["before"] + held + [resumed]]
        for c in receivers:
            check_once_in_order(c.nick, c.chat(), want, "the held lines, and no refused one")
        rows, _ = settle(nats, nodes, receivers)
        check_once_in_order("the files", says(rows), want, "the rows")
        print("bus down: %d line(s) held and delivered, %d refused" % (len(held), len(refused)))


def foreign_record(body):
    """A chatrelay record from another cluster's node, as it would be in its stream."""
    return json.dumps({"v": 1, "kind": "say", "notice": 0, "quit": 0, "at": "2026-01-01T00:00:00.000Z",
                       "node": "intruder", "nick": "intruder", "target": "", "body": body, "rooms": ["lobby"]})


def recreate_stream(nats, body=None, subjects=(SUBJECT,), timeout=20.0):
    """Deletes the stream and creates another of the same name (so another created time) with
    subjects, holding one record from elsewhere when body is given.  nats-server 2.9 removes a
    deleted stream's files after it answered the delete: a stream created at once can fail
    ("could not create message storage directory") or lose its files ("error opening msg block
    file", err_code 10077), so each step is tried again, a broken stream made again."""
    deadline = time.monotonic() + timeout
    with nats.client(0, name="test-recreate") as c:
        while True:
            try:
                c.stream_delete(STREAM)
            except JetStreamError as e:
                if e.err_code != 10059:     # stream not found
                    raise
            try:
                c.stream_create(STREAM, list(subjects), replicas=1, retention="limits",
                                duplicate_window=120 * 10**9)
                if body is not None:
                    c.publish_js(SUBJECT, foreign_record(body), msg_id="intruder-%d" % time.monotonic_ns())
                return c.stream_info(STREAM)["created"]
            except JetStreamError as e:
                if e.code not in (500, 503) or time.monotonic() > deadline:
                    raise
            time.sleep(0.1)     # the server's own cleanup has no event to wait for


def put_intruder(nats, body):
    """A record from elsewhere into the stream as it is (made by the relay); a stream broken by
    the server's late cleanup of the one deleted before (see recreate_stream) is made again."""
    with nats.client(0, name="test-intruder") as c:
        try:
            c.publish_js(SUBJECT, foreign_record(body), msg_id="intruder-%d" % time.monotonic_ns())
            return
        except JetStreamError as e:
            if e.err_code != 10077:
                raise
    recreate_stream(nats, body)


def start_fails(name, args, history=True, expect=None):
    """The relay must exit with a non-zero code before it runs; its log must say `expect`."""
    r = Relay(name, args, history=history)
    try:
        r.start()
    except TestFailure:
        pass
    finally:
        try:
            rc = r.proc.wait(30)
        except subprocess.TimeoutExpired:
            r.kill()
            raise TestFailure("%s: the relay kept running" % name)
        r.kill()
    log = r.log()
    check(rc != 0, "%s: exited with 0: %s" % (name, log[-400:]))
    check("relay running" not in log, "%s: it ran: %s" % (name, log[-400:]))
    check(expect in log, "%s: the log does not say %r: %s" % (name, expect, log[-600:]))
    return rc, log


def case_stream_mismatch():
    """--cluster with --no-history and a missing --cluster-credentials file fail the start,
    naming the cause; a token from the credentials file connects, a wrong one is logged, retried
    with backoff and crashes nothing.  A file bound to one instance of the stream refuses another
    of the same name: when the stream is deleted under a running relay, and at a start (after a
    stream with other settings); the log says why, chat is refused with the notice and no row of
    the other stream is ever stored."""
    # --cluster without history: nothing to apply the stream to
    url = "nats://127.0.0.1:%d" % free_port()
    start_fails("cluster_nohistory", ["--cluster", url, "--node", "n1"], history=False,
                expect="--cluster needs the history")
    # a credentials file that is not there: the start fails and names the path
    missing = winpath(os.path.join(WORK, "no-such-credentials.txt"))
    start_fails("cluster_nocreds", ["--cluster", url, "--node", "n1", "--cluster-credentials", missing],
                expect=missing)

    # a token: the right one connects, a wrong one is refused by the server, and said so
    with NatsCluster(1, token="s3cret-token") as nats:
        good = os.path.join(WORK, "cluster_token_good.txt")
        bad = os.path.join(WORK, "cluster_token_bad.txt")
        with open(good, "w") as f:
            f.write("# the NATS token\ntoken=s3cret-token\n")
        with open(bad, "w") as f:
            f.write("token=wrong-token\n")
        with relays("token", nats, n=1, extra=["--cluster-credentials", winpath(good)]) as nodes:
            c = Line(nodes[0], "tok")
            c.say("through a token")
            c.sync()
            settle(nats, nodes, [c])
            check(("tok", "through a token") in says(cli(nodes[0].db, ROWS_SQL)), "the line was not stored")
            check("s3cret-token" not in nodes[0].log(), "the token is in the log")
        r = Node("token_bad", 0, nats.urls(), ["--cluster-credentials", winpath(bad)])
        with r:
            wait_until(lambda: "Authorization Violation" in r.log(), 20,
                       lambda: "the relay logged the server's refusal; log:\n%s" % r.log_tail())
            c = Line(r)
            say_until_refused(c, "badtoken")
            check(r.proc.poll() is None, "the relay exited: %s" % r.log_tail())
            check(READY not in r.log() and "wrong-token" not in r.log(), "ready with a wrong token, or it is logged")
            # A refused login is retried with backoff (100 ms doubling to 5 s), not at once:
            # counted over the span of the log's own times, so a slow machine only helps.
            times = [datetime.datetime.strptime(t, "%Y-%m-%dT%H:%M:%S.%fZ")
                     for t in re.findall(r"^(\S+) INFO cluster: connected to ", r.log(), re.M)]
            span = (times[-1] - times[0]).total_seconds()
            check(len(times) <= 8 + span / 5, "%d connections in %.1f s with a wrong token: no backoff"
                  % (len(times), span))

    with NatsCluster(1) as nats, relays("stream_mismatch", nats, n=1) as nodes:
        node = nodes[0]
        c = Line(node, "alice")
        c.say("in the first stream")
        c.sync()
        wait_until(lambda: ("alice", "in the first stream") in says(cli(node.db, ROWS_SQL)), 20,
                   "the first line stored")
        bound = cluster_row(node.db)
        rows_before = cli(node.db, ROWS_SQL)
        # The stream deleted under the running relay: it notices, makes the stream again (a
        # new instance) and refuses it for this file, saying why; a record put there later by
        # someone else is never stored.
        with nats.client(0, name="test-delete") as nc:
            nc.stream_delete(STREAM)
        wait_until(lambda: "this database belongs to stream" in node.log(), 30,
                   lambda: "the running relay logged that its stream was replaced; log:\n%s" % node.log_tail())
        put_intruder(nats, "from the wrong stream (running)")
        with nats.client(0, name="test-info") as nc:
            check(nc.stream_info(STREAM)["created"] != bound["stream_created"], "the stream was not replaced")
        say_until_refused(c, "replaced")
        check(node.proc.poll() is None, "the relay exited: %s" % node.log_tail())
        check(cli(node.db, ROWS_SQL) == rows_before and cluster_row(node.db) == bound,
              "the file changed after the stream was replaced: %r" % cli(node.db, ROWS_SQL)[len(rows_before):])
        c.close()
        node.stop()
        # at a start, the stream first with other settings (the relay says so), then one with
        # the right settings but another instance: the relay must say that too, whatever it
        # said before
        recreate_stream(nats, subjects=["chatrelay.other"])
        node.port = free_port()
        mark = len(node.log())
        node.start()
        wait_until(lambda: "exists with other settings" in node.log()[mark:], 30,
                   lambda: "the restarted relay logged that the stream has other settings; log:\n%s"
                   % node.log_tail())
        recreate_stream(nats, "from the wrong stream (at start)")
        wait_until(lambda: "this database belongs to stream" in node.log()[mark:], 30,
                   lambda: "the restarted relay logged that the stream is not its own, once its settings "
                   "were right; log:\n%s" % node.log_tail())
        c = Line(node)
        say_until_refused(c, "restarted")
        check(cli(node.db, ROWS_SQL) == rows_before and cluster_row(node.db) == bound,
              "the file changed at a start on the wrong stream")
        c.close()
        with nats.client(0) as nc:
            info = nc.stream_info(STREAM)
            check(info["state"]["messages"] == 1, "the relay published into the wrong stream: %r" % info["state"])


# ---- users of other nodes (after the presence work on main) ----------------------------------

def case_nicks():
    """One nick namespace: alice and bob on node 1; on node 2 `/nick alice` gets the taken
    message and an IRC client 433 (at registration and for NICK later); /who on node 2 and IRC
    NAMES list node 1's users; a guest on node 2 gets no guest nick of node 1; two nodes
    claiming one nick at the same moment end with one holder, the same on every node."""
    with NatsCluster(3) as nats, relays("nicks", nats) as nodes:
        alice, bob = Line(nodes[0], "alice"), Line(nodes[0], "bob")
        c2 = Line(nodes[1])
        c2.sync()
        for attempt in ("alice", "ALICE"):
            c2.say("/nick " + attempt)
            c2.wait_seen("*** The nick alice is taken.", 15)
            c2.seen.remove("*** The nick alice is taken.")
        names = c2.who()
        check({"alice", "bob", c2.nick} <= set(names), "/who on node 2 does not list node 1's users: %r" % names)
        # IRC: 433 at registration, then for NICK; NAMES lists node 1's users
        irc = IrcClient("irc2")
        irc.connect("127.0.0.1", nodes[1].port)
        irc.send("NICK alice")
        irc.send("USER u 0 * :x")
        irc.expect("433", lambda m: len(m.params) > 1 and m.params[1].lower() == "alice", 15)
        irc.send("NICK ira")
        irc.expect("001", lambda m: m.params[0] == "ira", 15)
        irc.join("#lobby", timeout=20)
        irc.send("NICK bob")
        irc.expect("433", lambda m: len(m.params) > 1 and m.params[1].lower() == "bob", 15)
        nicks = [n.lstrip("@+") for n in irc.names("#lobby")]
        check({"alice", "bob", "ira", c2.nick} <= set(nicks), "NAMES on node 2: %r" % nicks)
        # a guest of node 1 keeps its guest nick; a guest of node 2 that comes once node 2 knows
        # it gets another one
        g1 = Line(nodes[0])
        c2.wait_seen("*** %s joined lobby" % g1.nick, 20)
        g2 = Line(nodes[1])
        check(g2.nick.lower() != g1.nick.lower(), "a guest of node 2 got %s, the nick of a guest of node 1"
              % g2.nick)
        # the same nick claimed on node 2 and node 3 at once
        c3 = Line(nodes[2])
        for c in (alice, c2, c3):
            c.wait_match(lambda l: l == "*** %s joined lobby" % c3.nick or c is c3, 20)
        c2.say("/nick carol")
        c3.say("/nick carol")
        # the first claim in the stream wins everywhere; the other is refused at once (its node
        # knew), or shown to its claimer and then undone ("taken ... at the same moment")
        alice.wait_match(lambda l: l.endswith(" is now known as carol"), 30, "someone becoming carol")
        settle(nats, nodes)
        whos = []

        def same_who():
            whos[:] = [sorted(c.who()) for c in (alice, c2, c3)]
            return whos[0] == whos[1] == whos[2]
        wait_until(same_who, 20, lambda: "the nodes list the same users: %r" % (whos,), poll=0.2)
        check(whos[0].count("carol") == 1, "carol held %d times: %r" % (whos[0].count("carol"), whos[0]))
        check(len(whos[0]) == len(set(n.lower() for n in whos[0])), "/who lists a name twice: %r" % whos[0])
        undone = "*** carol was taken on another node of the cluster at the same moment; you are now "
        lost = {c: [l for l in c.seen if l == "*** The nick carol is taken." or l.startswith(undone)]
                for c in (c2, c3)}
        losers = [c for c in lost if lost[c]]
        check(len(losers) == 1 and len(lost[losers[0]]) == 1,
              "claimers told they lost: %r" % {c.nick: v for c, v in lost.items()})
        shown = [l for l in alice.seen if l.endswith(" is now known as carol")]
        check(len(shown) == 1, "node 1 showed %d claims of carol: %r" % (len(shown), shown))
        settle(nats, nodes, [alice, bob, c2, c3, g1, g2, irc])


def case_node_lost():
    """A relay killed -9 with two users in the lobby: within 20 s they leave (node lost) the
    /who of the other nodes; each has exactly one leave row, in every file once the relay,
    restarted on its own file, has caught up."""
    with NatsCluster(3) as nats, relays("node_lost", nats) as nodes:
        obs1, obs2 = Line(nodes[0], "obs1"), Line(nodes[1], "obs2")
        dave, erin = Line(nodes[2], "dave"), Line(nodes[2], "erin")
        for c in (obs1, obs2):
            wait_until(lambda: {"dave", "erin"} <= set(c.who()), 20, "%s lists dave and erin" % c.nick, poll=0.2)
        dave.say("dave is here")
        obs1.wait_seen("<dave> dave is here")
        nodes[2].kill()
        killed = time.monotonic()
        for c in (obs1, obs2):
            for n in ("dave", "erin"):
                c.wait_seen("*** %s left lobby (node lost)" % n, 20)
        print("node lost seen %.1f s after the kill" % (time.monotonic() - killed))
        for c in (obs1, obs2):
            names = c.who()
            check("dave" not in names and "erin" not in names, "%s still lists them: %r" % (c.nick, names))
        nodes[2].start_ready()
        rows, _ = settle(nats, nodes, [obs1, obs2, dave, erin])
        for n in ("dave", "erin"):
            leaves = [r for r in rows if r["nick"] == n and r["kind"] == "leave"]
            check(len(leaves) == 1 and leaves[0]["body"] == "node lost",
                  "%s has %d leave rows: %r" % (n, len(leaves), leaves))
        late = Line(nodes[2], "late")
        names = late.who()
        check("dave" not in names and "erin" not in names and {"obs1", "obs2", "late"} <= set(names),
              "/who on the restarted node: %r" % names)
        settle(nats, nodes, [obs1, obs2, late])


CASES = {
    "chat": case_chat,
    "relay_killed": case_relay_killed,
    "nats_killed": case_nats_killed,
    "bus_down": case_bus_down,
    "stream_mismatch": case_stream_mismatch,
    "nicks": case_nicks,
    "node_lost": case_node_lost,
}

if __name__ == "__main__":
    run_cases(CASES)

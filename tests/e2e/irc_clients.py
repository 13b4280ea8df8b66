"""irc_clients: IRC clients for the end-to-end tests of the IRC dialect (issue 13).

Three ways to talk IRC to a server, from exact to real:

  IrcClient  a raw-socket client for exact protocol assertions: every line received is parsed
             (IRCv3 tags unescaped) and kept, in order, for the whole connection.
  Irssi      a real irssi 1.4 in a tmux session of its own, watched through its log files.
  Ii         the file-based `ii` client: FIFOs in, `out` files watched.

and one reference server, `Ngircd` (Debian's ngIRCd on a free loopback port with a private
config), to check a test against a real IRC server before it is pointed at chatrelay.

Every wait is for an event (a line, a file, a process exit) with a timeout; a timeout raises
harness.TestFailure naming what was awaited and showing what did arrive.

What irssi 1.4.3 does that the tests rely on (read in its source, src/irc/core/irc-servers.c
and src/fe-common/core/fe-log.c, and seen against ngIRCd):
- it sends `CAP LS 302`, NICK and USER at once and requests multi-prefix, extended-join,
  setname, invite-notify, away-notify, chghost, account-notify, znc.in/self-message,
  server-time (and `tls`, i.e. STARTTLS, when offered and not connected with TLS): not batch,
  message-tags, echo-message or draft/chathistory;
- by default it shows and logs the local time a line arrived, not its server-time tag:
  `show_server_time` (fe-text) and `log_server_time` (auto = follow show_server_time) are off.
  This harness turns both on, and logs with a full UTC timestamp, so a replayed line's log
  entry carries its original time (see Irssi.line_time);
- after JOIN and NAMES it sends MODE #chan, WHO #chan and MODE #chan b, and prints
  "Join to #chan was synced" once all three were answered (Irssi.join waits for it).
"""
import datetime
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from harness import TestFailure, check, free_port

POLL_S = 0.02       # how often a watched file is read again; only latency, never a verdict


def _deadline(timeout):
    return time.monotonic() + timeout


def _left(deadline):
    return deadline - time.monotonic()


# ---- IRC messages ---------------------------------------------------------------------------

_TAG_UNESCAPES = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}


def unescape_tag_value(value):
    """An IRCv3 tag value as sent -> its meaning (message-tags: \\: ; \\s space \\\\ \\r \\n;
    any other escaped character stands for itself; a lone trailing backslash is dropped)."""
    out, i = [], 0
    while i < len(value):
        c = value[i]
        if c == "\\":
            if i + 1 < len(value):
                out.append(_TAG_UNESCAPES.get(value[i + 1], value[i + 1]))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def escape_tag_value(value):
    return (value.replace("\\", "\\\\").replace(";", "\\:").replace(" ", "\\s")
            .replace("\r", "\\r").replace("\n", "\\n"))


class IrcMessage:
    """One received line.  tags: dict (values unescaped; a tag without a value is ""),
    source: the prefix without ':' or None, command: upper-cased, params: list (the trailing
    parameter last, without its ':').  line: the line as received (decoded, no CR/LF);
    wire_len: its bytes on the wire with CRLF; body_len: the same without the tags part
    (the part IRC limits to 512); crlf: False if it ended with a bare LF; at: time.monotonic()
    when it was read; index: its position in IrcClient.received."""

    __slots__ = ("tags", "source", "command", "params", "line", "wire_len", "body_len", "crlf", "at",
                 "index")

    def __init__(self, line, wire_len=None, crlf=True, at=None, index=-1):
        self.line = line
        self.crlf = crlf
        self.at = at if at is not None else time.monotonic()
        self.index = index
        self.tags = {}
        self.source = None
        self.params = []
        rest = line
        tags_len = 0
        if rest.startswith("@"):
            tagstr, _, rest = rest[1:].partition(" ")
            tags_len = len(("@" + tagstr + " ").encode("utf-8"))
            for item in tagstr.split(";"):
                if item:
                    key, _, value = item.partition("=")
                    self.tags[key] = unescape_tag_value(value)
            rest = rest.lstrip(" ")
        if rest.startswith(":"):
            self.source, _, rest = rest[1:].partition(" ")
            rest = rest.lstrip(" ")
        command, _, rest = rest.partition(" ")
        self.command = command.upper()
        while rest:
            rest = rest.lstrip(" ")
            if not rest:
                break
            if rest.startswith(":"):
                self.params.append(rest[1:])
                break
            param, _, rest = rest.partition(" ")
            self.params.append(param)
        self.wire_len = wire_len if wire_len is not None else len(line.encode("utf-8")) + 2
        self.body_len = self.wire_len - tags_len

    @property
    def nick(self):
        """The nick of the source (or the server name), None without a source."""
        return self.source.split("!", 1)[0] if self.source else None

    @property
    def text(self):
        """The last parameter (a PRIVMSG's text, a numeric's message), "" without parameters."""
        return self.params[-1] if self.params else ""

    @property
    def numeric(self):
        return len(self.command) == 3 and self.command.isdigit()

    @property
    def error(self):
        """True for ERROR and for the 4xx/5xx numerics."""
        return self.command == "ERROR" or (self.numeric and self.command[0] in "45")

    def ctcp(self):
        """(command, argument) of a CTCP message (\\x01CMD arg\\x01), else None."""
        t = self.text
        if self.command not in ("PRIVMSG", "NOTICE") or len(t) < 2 or not t.startswith("\x01"):
            return None
        body = t[1:-1] if t.endswith("\x01") else t[1:]
        cmd, _, arg = body.partition(" ")
        return cmd.upper(), arg

    def time(self):
        """The server-time tag as an aware UTC datetime, None without one."""
        v = self.tags.get("time")
        if not v:
            return None
        return datetime.datetime.strptime(v.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z"
                                          if "." in v else "%Y-%m-%dT%H:%M:%S%z")

    def __repr__(self):
        return "IrcMessage(%r)" % self.line

    def __str__(self):
        return self.line


def parse_message(line):
    return IrcMessage(line)


def _command_matcher(command):
    if command is None:
        return lambda c: True
    if isinstance(command, str):
        want = command.upper()
        return lambda c: c == want
    wanted = {c.upper() for c in command}
    return lambda c: c in wanted


class Batch:
    """An IRCv3 batch read by IrcClient.read_batch.  start/end: the BATCH +id / BATCH -id
    messages; messages: every message tagged with this batch (or with a batch nested in it),
    in order, nested BATCH lines included; interleaved: the untagged messages that arrived
    between start and end (a live line during a replay, for instance)."""

    def __init__(self, start):
        self.start = start
        self.id = start.params[0][1:]
        self.type = start.params[1] if len(start.params) > 1 else ""
        self.params = start.params[2:]
        self.messages = []
        self.interleaved = []
        self.end = None

    def __repr__(self):
        return "Batch(%s %s, %d messages)" % (self.id, self.type, len(self.messages))


class IrcClient:
    """A raw-socket IRC client.

    Every line received stays in `received` (IrcMessage objects, in order).  expect() and its
    relatives read from a cursor (`pos`): they return the first matching message after the
    cursor and move the cursor past it, so a sequence of expects also checks the order; the
    messages skipped over are still in `received` for assertions over everything.

    auto_pong: answer a server's PING at once (while reading), counted in `pings_answered`."""

    def __init__(self, name="irc", auto_pong=True, keep_raw=False):
        self.name = name
        self.auto_pong = auto_pong
        self.sock = None
        self.received = []
        self.pos = 0
        self.raw = bytearray() if keep_raw else None
        self.buf = b""
        self.closed = False
        self.nick = None
        self.caps_offered = {}
        self.caps_enabled = set()
        self.isupport = {}
        self.pings_answered = 0
        self.sent = []
        self._sync_n = 0

    # -- connection --

    def connect(self, host, port, timeout=10.0):
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as e:
            raise TestFailure("%s: connect to %s:%d failed: %s" % (self.name, host, port, e))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self

    def send_raw(self, data):
        """Bytes as they are (for malformed-input tests)."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.settimeout(30)
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise TestFailure("%s: send failed (%s); last lines: %s" % (self.name, e, self.dump(10)))

    def send(self, line):
        """One IRC line; CRLF is added.  A CR or LF inside is refused (use send_raw)."""
        check("\r" not in line and "\n" not in line, "%s: send(%r): CR/LF inside a line" % (self.name, line))
        self.sent.append(line)
        self.send_raw(line + "\r\n")

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- reading --

    def _fill(self, timeout):
        """One recv (up to timeout); parses whole lines into `received`.  False on timeout or close."""
        if self.closed:
            return False
        self.sock.settimeout(max(timeout, 0.001))
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            return False
        except (ConnectionResetError, ConnectionAbortedError):
            chunk = b""
        if not chunk:
            self.closed = True
            return False
        if self.raw is not None:
            self.raw += chunk
        self.buf += chunk
        now = time.monotonic()
        while True:
            nl = self.buf.find(b"\n")
            if nl < 0:
                break
            raw_line, self.buf = self.buf[:nl], self.buf[nl + 1:]
            crlf = raw_line.endswith(b"\r")
            if crlf:
                raw_line = raw_line[:-1]
            msg = IrcMessage(raw_line.decode("utf-8", "replace"), wire_len=len(raw_line) + (2 if crlf else 1),
                             crlf=crlf, at=now, index=len(self.received))
            self.received.append(msg)
            self._track(msg)
        return True

    def _track(self, msg):
        if msg.command == "PING" and self.auto_pong:
            token = msg.params[-1] if msg.params else ""
            self.send("PONG :" + token)
            self.pings_answered += 1
        elif msg.command == "NICK" and self.nick and msg.nick and msg.nick.lower() == self.nick.lower() and msg.params:
            self.nick = msg.params[0]
        elif msg.command == "001" and msg.params:
            self.nick = msg.params[0]
        elif msg.command == "005":
            for token in msg.params[1:-1]:
                if token.startswith("-"):
                    self.isupport.pop(token[1:].upper(), None)
                else:
                    k, _, v = token.partition("=")
                    self.isupport[k.upper()] = re.sub(r"\\x([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), v)
        elif msg.command == "CAP" and len(msg.params) >= 3:
            sub = msg.params[1].upper()
            if sub in ("LS", "NEW"):
                for item in msg.params[-1].split():
                    k, _, v = item.partition("=")
                    self.caps_offered[k] = v
            elif sub == "DEL":
                for item in msg.params[-1].split():
                    self.caps_offered.pop(item, None)
                    self.caps_enabled.discard(item)
            elif sub == "ACK":
                for item in msg.params[-1].split():
                    if item.startswith("-"):
                        self.caps_enabled.discard(item[1:])
                    else:
                        self.caps_enabled.add(item)

    def dump(self, n=30, start=None):
        """The last n lines received (or those from index `start`), one per line, for messages."""
        lines = self.received[start:] if start is not None else self.received[-n:]
        if start is not None and len(lines) > n:
            lines = lines[:n] + [None]
        out = ["    %s" % (m.line if m is not None else "...") for m in lines]
        if self.buf:
            out.append("    (partial line: %r)" % self.buf[:200])
        return "\n" + "\n".join(out) if out else " (nothing)"

    def _fail(self, what, timeout, start):
        raise TestFailure("%s: no %s within %.0f s (closed=%s); received since the cursor:%s"
                          % (self.name, what, timeout, self.closed, self.dump(40, start)))

    def expect(self, command=None, pred=None, timeout=10.0, what=None):
        """The first message after the cursor whose command matches (a string, or several in a
        list/tuple/set; None = any) and for which pred(msg) is true; the cursor moves past it."""
        match = _command_matcher(command)
        deadline = _deadline(timeout)
        start = self.pos
        i = self.pos
        while True:
            while i < len(self.received):
                m = self.received[i]
                i += 1
                if match(m.command) and (pred is None or pred(m)):
                    self.pos = i
                    return m
            left = _left(deadline)
            if left <= 0 or self.closed:
                self._fail(what or "%s%s" % (command or "message", " matching the predicate" if pred else ""),
                           timeout, start)
            self._fill(min(left, 0.5))

    def expect_text(self, command, text, timeout=10.0):
        """expect() of a message whose last parameter is exactly text."""
        return self.expect(command, lambda m: m.text == text, timeout, what="%s with text %r" % (command, text))

    def read_until(self, command=None, pred=None, timeout=10.0, what=None):
        """Every message from the cursor through the first match (a list; the match is last)."""
        start = self.pos
        self.expect(command, pred, timeout, what)
        return self.received[start:self.pos]

    def messages(self, command=None, pred=None, since=0):
        """Every message received so far (from index `since`) with that command and pred."""
        match = _command_matcher(command)
        return [m for m in self.received[since:] if match(m.command) and (pred is None or pred(m))]

    def mark(self):
        """An index to pass as `since`: where the next message received will be."""
        return len(self.received)

    def sync(self, timeout=10.0):
        """A barrier: sends PING with a fresh token and waits for its PONG, so everything the
        server sent before answering has been read.  Returns the PONG (the cursor is not moved)."""
        self._sync_n += 1
        token = "irctools-sync-%d" % self._sync_n
        self.send("PING :" + token)
        deadline = _deadline(timeout)
        i = len(self.received)
        while True:
            while i < len(self.received):
                m = self.received[i]
                i += 1
                if m.command == "PONG" and m.params and m.params[-1] == token:
                    return m
            left = _left(deadline)
            if left <= 0 or self.closed:
                raise TestFailure("%s: no PONG for %s within %.0f s (closed=%s); last lines:%s"
                                  % (self.name, token, timeout, self.closed, self.dump(20)))
            self._fill(min(left, 0.5))

    def assert_none(self, command=None, pred=None, since=None, what=None, timeout=10.0):
        """Checks, after a sync(), that no message matching command/pred arrived since `since`
        (default: the cursor).  An event-driven "nothing else came"."""
        since = self.pos if since is None else since
        pong = self.sync(timeout)
        bad = [m for m in self.messages(command, pred, since) if m.index < pong.index]
        check(not bad, "%s: unexpected %s:%s" % (self.name, what or command or "message",
                                                 "".join("\n    " + m.line for m in bad[:20])))

    def wait_closed(self, timeout=10.0):
        deadline = _deadline(timeout)
        while not self.closed and _left(deadline) > 0:
            self._fill(min(0.5, _left(deadline)))
        return self.closed

    # -- registration and commands --

    def register(self, nick, caps=(), user=None, realname=None, password=None, cap_ls=True, strict_caps=True,
                 wait_motd=True, timeout=10.0):
        """Registers as modern clients do: `CAP LS 302` (unless cap_ls is False and no caps are
        asked), PASS, NICK, USER at once; after the LS reply `CAP REQ` of `caps` (each must be
        offered and ACKed when strict_caps), `CAP END`; then waits for 001 (and for the end of
        the MOTD, 376 or 422, when wait_motd).  An error numeric, ERROR or a close on the way
        fails with every line received.  Returns the 001 message."""
        caps = list(caps)
        user = user or nick
        start = self.pos
        use_cap = cap_ls or bool(caps)
        if use_cap:
            self.send("CAP LS 302")
        if password is not None:
            self.send("PASS " + password)
        self.send("NICK " + nick)
        self.send("USER %s 0 * :%s" % (user, realname or nick))
        deadline = _deadline(timeout)

        def step(what, pred):
            def guarded(m):
                if m.error and m.command != "422":      # ERR_NOMOTD is a normal end of registration
                    raise TestFailure("%s: registration as %s failed at %s: %s; received:%s"
                                      % (self.name, nick, what, m.line, self.dump(40, start)))
                return pred(m)
            return self.expect(None, guarded, max(0.0, _left(deadline)), what=what)

        if use_cap:
            while True:
                ls = step("CAP LS reply", lambda m: m.command == "CAP" and len(m.params) >= 3
                          and m.params[1].upper() == "LS")
                if not (len(ls.params) >= 4 and ls.params[2] == "*"):
                    break
            if caps:
                missing = [c for c in caps if c not in self.caps_offered]
                if missing and strict_caps:
                    raise TestFailure("%s: server does not offer %s; it offers: %s"
                                      % (self.name, " ".join(missing), " ".join(sorted(self.caps_offered)) or "nothing"))
                want = [c for c in caps if c in self.caps_offered]
                if want:
                    self.send("CAP REQ :" + " ".join(want))
                    reply = step("CAP ACK/NAK", lambda m: m.command == "CAP" and len(m.params) >= 3
                                 and m.params[1].upper() in ("ACK", "NAK"))
                    if reply.params[1].upper() == "NAK" and strict_caps:
                        raise TestFailure("%s: server refused CAP REQ %s: %s" % (self.name, " ".join(want), reply.line))
            self.send("CAP END")
        welcome = step("001 (RPL_WELCOME)", lambda m: m.command == "001")
        if wait_motd:
            step("end of MOTD (376 or 422)", lambda m: m.command in ("376", "422"))
        return welcome

    def join(self, channel, timeout=10.0):
        """JOIN and wait for our own JOIN echo and the 366 that ends its NAMES; returns the
        messages from the cursor through the 366."""
        start = self.pos
        self.send("JOIN " + channel)
        low = channel.lower()

        def joined(m):
            if m.error and any(p.lower() == low for p in m.params):
                raise TestFailure("%s: JOIN %s refused: %s" % (self.name, channel, m.line))
            return m.command == "JOIN" and m.nick and self.nick and m.nick.lower() == self.nick.lower() \
                and m.params and m.params[0].lower() == low
        self.expect(None, joined, timeout, what="our JOIN %s" % channel)
        self.expect("366", lambda m: len(m.params) >= 2 and m.params[1].lower() == low, timeout,
                    what="366 (end of NAMES) for %s" % channel)
        return self.received[start:self.pos]

    def names(self, channel, timeout=10.0):
        """NAMES: the nicks of the 353 replies up to 366, prefixes (@+ ...) kept."""
        start = self.pos
        low = channel.lower()
        self.send("NAMES " + channel)
        self.expect("366", lambda m: len(m.params) >= 2 and m.params[1].lower() == low, timeout,
                    what="366 for NAMES %s" % channel)
        out = []
        for m in self.received[start:self.pos]:
            if m.command == "353" and len(m.params) >= 3 and m.params[-2].lower() == low:
                out += m.params[-1].split()
        return out

    def privmsg(self, target, text):
        self.send("PRIVMSG %s :%s" % (target, text))

    def notice(self, target, text):
        self.send("NOTICE %s :%s" % (target, text))

    def action(self, target, text):
        """A /me: CTCP ACTION."""
        self.send("PRIVMSG %s :\x01ACTION %s\x01" % (target, text))

    def quit(self, message="bye", timeout=10.0):
        """QUIT and wait until the server closes the connection."""
        self.send("QUIT :" + message)
        check(self.wait_closed(timeout), "%s: server did not close after QUIT within %.0f s" % (self.name, timeout))

    def read_batch(self, batch_type=None, pred=None, timeout=10.0):
        """Waits for `BATCH +id type ...` (of batch_type if given, and pred(start) if given) and
        reads through its `BATCH -id`; returns a Batch.  The cursor moves past the end."""
        start = self.expect("BATCH", lambda m: m.params and m.params[0].startswith("+") and
                            (batch_type is None or (len(m.params) > 1 and m.params[1] == batch_type)) and
                            (pred is None or pred(m)), timeout,
                            what="BATCH +id %s" % (batch_type or ""))
        batch = Batch(start)
        ids = {batch.id}
        deadline = _deadline(timeout)
        i = self.pos
        while True:
            while i < len(self.received):
                m = self.received[i]
                i += 1
                tag = m.tags.get("batch")
                if m.command == "BATCH" and m.params and m.params[0] == "-" + batch.id:
                    batch.end = m
                    self.pos = i
                    return batch
                if tag in ids:
                    batch.messages.append(m)
                    if m.command == "BATCH" and m.params and m.params[0].startswith("+"):
                        ids.add(m.params[0][1:])
                else:
                    batch.interleaved.append(m)
            left = _left(deadline)
            if left <= 0 or self.closed:
                self._fail("BATCH -%s (end of the %s batch, %d messages in it so far)"
                           % (batch.id, batch.type, len(batch.messages)), timeout, start.index)
            self._fill(min(left, 0.5))


# ---- watched files (irssi's logs, ii's out files) -----------------------------------------

class WatchedFile:
    """A file another process appends lines to.  lines: every complete line so far; a cursor
    (like IrcClient's) lets wait_for read a sequence in order."""

    def __init__(self, path, label):
        self.path = path
        self.label = label
        self.offset = 0
        self.partial = b""
        self.lines = []
        self.pos = 0

    def refresh(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        if not data:
            return
        self.offset += len(data)
        data = self.partial + data
        *whole, self.partial = data.split(b"\n")
        self.lines += [l.decode("utf-8", "replace") for l in whole]

    def exists(self):
        return os.path.exists(self.path)


def _wait_lines(files, regex, timeout, what, from_start, diagnostics):
    """Polls files (WatchedFile list) until a line after the cursor (or from the start) matches
    regex in any of them; moves that file's cursor past it; returns the re.Match."""
    rx = re.compile(regex) if isinstance(regex, str) else regex
    deadline = _deadline(timeout)
    scanned = {id(f): (0 if from_start else f.pos) for f in files}
    while True:
        for f in files:
            f.refresh()
            i = scanned[id(f)]
            while i < len(f.lines):
                m = rx.search(f.lines[i])
                i += 1
                if m:
                    f.pos = max(f.pos, i)
                    return m
            scanned[id(f)] = i
        if _left(deadline) <= 0:
            seen = []
            for f in files:
                tail = f.lines[-25:]
                seen.append("  %s (%s, %d lines%s):%s" % (
                    f.label, f.path, len(f.lines), "" if f.exists() else ", does not exist",
                    "".join("\n    " + l for l in tail) or " (empty)"))
            extra = diagnostics() if diagnostics else ""
            raise TestFailure("no line matching %r in %s within %.0f s; seen:\n%s%s"
                              % (rx.pattern, what, timeout, "\n".join(seen), extra))
        time.sleep(POLL_S)


# ---- irssi in tmux ----------------------------------------------------------------------------

_IRSSI_TS = "%Y-%m-%dT%H:%M:%SZ "
_IRSSI_TS_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) ")


def _irssi_str(s):
    return '"%s"' % s.replace("\\", "\\\\").replace('"', '\\"')


class Irssi:
    """A real irssi in a private tmux server (`tmux -L <socket>`), with its own home folder
    and config: one server entry (network tag `irc`, no autoconnect, started with -! so nothing
    else connects), no scripts, no command queue delay (cmd_queue_speed 0), paste detection off,
    settings never saved.  Logs, with a UTC timestamp `2026-12-01T12:38:12Z ` and server-time
    when the server sent one (show_server_time + log_server_time on, TZ=UTC):
      logs/main.log                 everything irssi prints (lines of a channel prefixed "#chan: ")
      logs/irc/<target>.log         autolog of each channel and query, lower case ("#lobby.log")
    Log line forms (after the timestamp): public and own messages "<nick> text" (nick mode
    prefix kept: "<@alice>"), actions " * nick text", joins "-!- nick [user@host] has joined
    #chan", topic changes "-!- nick changed the topic of #chan to: text", NAMES "[Users #chan]"
    then "[@a] [ b]", WHOIS "-!- nick [~user@host]", " ircname  : ...", "-!- End of WHOIS".
    Lines irssi prints for what we typed are written before the server saw them: prove a
    delivery in the other client's log."""

    TAG = "irc"
    _count = 0

    def __init__(self, workdir=None, name="irssi", server_time=True):
        Irssi._count += 1
        self.name = name
        self.server_time = server_time   # False: irssi's defaults (local arrival time shown and logged)
        self.dir = os.path.abspath(workdir) if workdir else tempfile.mkdtemp(prefix="irctools-irssi-")
        self.home = os.path.join(self.dir, "home")
        self.logdir = os.path.join(self.dir, "logs")
        self.socket = "irctools-%d-%d-%s" % (os.getpid(), Irssi._count, re.sub(r"\W", "", name))
        self.started = False
        self.nick = None
        self._files = {}

    # -- files --

    def log_path(self, target=None):
        if target is None:
            return os.path.join(self.logdir, "main.log")
        # irssi's escape_target(): '/' and characters illegal in Windows names become '_'
        fixed = re.sub(r'[/\\:*?"<>|]', "_", target).lower()
        return os.path.join(self.logdir, self.TAG, fixed + ".log")

    def _file(self, target=None):
        key = (target or "").lower()
        if key not in self._files:
            self._files[key] = WatchedFile(self.log_path(target), "%s log %s" % (self.name, target or "main"))
        return self._files[key]

    def lines(self, target=None):
        """Every line of a log so far (main log by default, or a channel/query's)."""
        f = self._file(target)
        f.refresh()
        return list(f.lines)

    def wait_for(self, regex, timeout=10.0, log=None, from_start=False):
        """Waits until a line of the log (main by default; "#chan" or a nick for its autolog)
        matches regex (re.search), after the previous wait_for's match in that log unless
        from_start; returns the re.Match (match.string is the whole line)."""
        return _wait_lines([self._file(log)], regex, timeout, "%s's %s log" % (self.name, log or "main"),
                           from_start, self._diagnostics)

    @staticmethod
    def line_time(line):
        """The timestamp of a log line (the server-time when the server sent one) as an aware
        UTC datetime (second precision)."""
        m = _IRSSI_TS_RE.match(line)
        check(m is not None, "irssi log line without a timestamp: %r" % line)
        return datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)

    # -- tmux --

    def _tmux(self, *args, input_bytes=None, check_rc=True):
        r = subprocess.run(["tmux", "-L", self.socket] + list(args), input=input_bytes,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if check_rc and r.returncode != 0:
            raise TestFailure("%s: tmux %s failed (rc %d): %s" % (self.name, " ".join(args[:2]), r.returncode,
                                                                  r.stderr.decode(errors="replace").strip()))
        return r.stdout.decode("utf-8", "replace")

    def capture(self):
        """The irssi screen now (diagnostics; the logs are what tests read)."""
        return self._tmux("capture-pane", "-p", "-J", "-t", "irssi", check_rc=False)

    def alive(self):
        out = self._tmux("display-message", "-p", "-t", "irssi", "#{pane_dead} #{pane_pid}", check_rc=False).split()
        return bool(out) and out[0] == "0"

    def pid(self):
        out = self._tmux("display-message", "-p", "-t", "irssi", "#{pane_pid}", check_rc=False).strip()
        return int(out) if out.isdigit() else None

    def _diagnostics(self):
        if not self.started:
            return ""
        screen = [l for l in self.capture().splitlines() if l.strip()]
        return "\n  irssi %s; screen (last lines):%s" % (
            "running" if self.alive() else "EXITED", "".join("\n    " + l for l in screen[-15:]) or " (empty)")

    # -- running --

    def _write_config(self, host, port, nick, user, realname, password):
        os.makedirs(self.home, exist_ok=True)
        os.makedirs(os.path.join(self.logdir, self.TAG), exist_ok=True)
        server = 'address = %s; chatnet = "%s"; port = "%d"; autoconnect = "no"; use_tls = "no";' % (
            _irssi_str(host), self.TAG, port)
        if password is not None:
            server += " password = %s;" % _irssi_str(password)
        config = """servers = ( { %(server)s } );
chatnets = { %(tag)s = { type = "IRC"; autosendcmd = "/echo irctools-registered $N"; }; };
channels = ( );
logs = { %(main)s = { auto_open = "yes"; level = "ALL"; }; };
settings = {
  core = {
    nick = %(nick)s; user_name = %(user)s; real_name = %(realname)s;
    settings_autosave = "no";
    log_timestamp = "%(ts)s";
    log_open_string = "--- Log opened";
    log_close_string = "--- Log closed";
    log_day_changed = "";
  };
  "irc/core" = { cmd_queue_speed = "0"; alternate_nick = ""; };
  "fe-common/core" = {
    autolog = "yes";
    autolog_path = %(autolog)s;
    autolog_level = "ALL";
    log_server_time = "%(st)s";
    show_nickmode_empty = "no";
    beep_msg_level = "";
  };
  "fe-text" = { show_server_time = "%(show)s"; paste_detect_time = "0"; };
};
""" % dict(server=server, tag=self.TAG, main=_irssi_str(self.log_path()), nick=_irssi_str(nick),
           user=_irssi_str(user), realname=_irssi_str(realname), ts=_IRSSI_TS,
           st="on" if self.server_time else "auto", show="yes" if self.server_time else "no",
           autolog=_irssi_str(os.path.join(self.logdir, "$tag", "$0.log")))
        with open(os.path.join(self.home, "config"), "w") as f:
            f.write(config)
        with open(os.path.join(self.dir, "tmux.conf"), "w") as f:
            # keep a dead pane (and its last screen) for diagnostics until stop()
            f.write("set -g remain-on-exit on\nset -g history-limit 5000\n")

    def start(self, host, port, nick, user=None, realname=None, password=None, timeout=20.0):
        """Starts irssi, connects it and waits until it is registered (its autosendcmd echoes
        the nick it got, after 001); fails if it got another nick or nothing came."""
        check(shutil.which("irssi") and shutil.which("tmux"), "irssi and tmux must be installed (scripts/setup)")
        self._write_config(host, port, nick, user or nick, realname or "irctools " + nick, password)
        cmd = "exec env HOME=%s TZ=UTC LANG=C.UTF-8 LC_ALL=C.UTF-8 irssi --home=%s -!" % (
            shlex.quote(self.dir), shlex.quote(self.home))
        self._tmux("-f", os.path.join(self.dir, "tmux.conf"), "new-session", "-d", "-s", "irssi", "-x", "200",
                   "-y", "50", cmd)
        self.started = True
        try:
            self.wait_for(r"^--- Log opened", timeout, from_start=True)
            self.wait_for(r"Irssi v\d", timeout, from_start=True)
            self.command("/connect " + self.TAG)
            m = self.wait_for(r"irctools-registered (\S+)$", timeout)
            check(m.group(1) == nick, "%s: registered as %s, not %s; main log:%s" % (
                self.name, m.group(1), nick, "".join("\n    " + l for l in self.lines()[-20:])))
        except BaseException:
            self.stop()
            raise
        self.nick = nick
        return self

    def type_line(self, text):
        """Types one line and Enter.  Through a tmux buffer: send-keys would parse a trailing
        ';' as a command separator."""
        check("\n" not in text and "\r" not in text, "%s: one line at a time: %r" % (self.name, text))
        check(self.alive(), "%s: irssi is not running%s" % (self.name, self._diagnostics()))
        self._tmux("load-buffer", "-b", "irctools", "-", input_bytes=text.encode("utf-8"))
        self._tmux("paste-buffer", "-d", "-b", "irctools", "-t", "irssi")
        self._tmux("send-keys", "-t", "irssi", "Enter")

    def command(self, text):
        """An irssi command, e.g. "/join #lobby" (a leading / is added if missing)."""
        self.type_line(text if text.startswith("/") else "/" + text)

    def say(self, text, channel=None):
        """Says text in the active window (or in `channel`'s window first); a text starting
        with / is said, not run (as "/msg * text": irssi has no /say)."""
        if channel is not None:
            self.command("/window goto " + channel)
        self.type_line(("/msg * " + text) if text.startswith("/") else text)

    def join(self, channel, timeout=20.0, synced=True):
        """/join and wait for irssi's "has joined" (and, when synced, "Join to #chan was synced":
        the server answered the MODE/WHO/MODE b irssi sends after NAMES)."""
        self.command("/join " + channel)
        esc = re.escape(channel)
        self.wait_for(r"(?i)-!- %s \[.*\] has joined %s\b" % (re.escape(self.nick), esc), timeout, log=channel)
        if synced:
            self.wait_for(r"(?i)Irssi: Join to %s was synced" % esc, timeout)

    def stop(self, timeout=10.0):
        """/quit, wait for irssi to exit, kill the private tmux server."""
        if not self.started:
            return
        try:
            if self.alive():
                self.command("/quit irctools")
                deadline = _deadline(timeout)
                while self.alive() and _left(deadline) > 0:
                    time.sleep(POLL_S)
                if self.alive():
                    pid = self.pid()
                    if pid:
                        os.kill(pid, signal.SIGKILL)
        finally:
            self._tmux("kill-server", check_rc=False)
            self.started = False
            # a server that went away by itself can leave its socket behind
            sock = os.path.join(os.environ.get("TMUX_TMPDIR", "/tmp"), "tmux-%d" % os.getuid(), self.socket)
            if os.path.exists(sock) and subprocess.run(["tmux", "-L", self.socket, "list-sessions"],
                                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode != 0:
                try:
                    os.unlink(sock)
                except OSError:
                    pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# ---- ii ---------------------------------------------------------------------------------------

class Ii:
    """The `ii` file-based client (ii 1.8): in <prefix>/<host>/ an `in` FIFO and an `out` file
    for the server, and <prefix>/<host>/<#chan or nick>/ for each channel and query (names in
    lower case).  out lines are "<unix time> <text>": "<nick> text" for messages (ours too),
    "-!- nick(~user@host) has joined #chan", "-!- nick changed topic to \"...\"", numerics as
    their parameters after our nick ("= #lobby @bob alice", "#lobby End of NAMES list").
    ii has no /me: action() sends the CTCP raw, and a received one shows as
    "<nick> \\x01ACTION text\\x01".  Lines typed into a FIFO that start with / and are not one of
    ii's commands (/j /t /n /a /l /q) go to the server raw without the slash."""

    READY = r"(?i)\bwelcome\b|end of .*motd|motd.*missing"

    def __init__(self, workdir=None, name="ii"):
        self.name = name
        self.dir = os.path.abspath(workdir) if workdir else tempfile.mkdtemp(prefix="irctools-ii-")
        self.prefix = os.path.join(self.dir, "irc")
        self.proc = None
        self.host = None
        self.nick = None
        self._files = {}

    def path(self, target=None):
        d = os.path.join(self.prefix, self.host)
        return d if target is None else os.path.join(d, target.lower())

    def _file(self, target=None):
        key = (target or "").lower()
        if key not in self._files:
            self._files[key] = WatchedFile(os.path.join(self.path(target), "out"),
                                           "%s out %s" % (self.name, target or "(server)"))
        return self._files[key]

    def lines(self, target=None):
        f = self._file(target)
        f.refresh()
        return list(f.lines)

    def _diagnostics(self):
        rc = self.proc.poll() if self.proc else None
        out = []
        try:
            # ii echoes every raw line from the server on stdout: the protocol as ii saw it
            with open(os.path.join(self.dir, "ii.stderr"), errors="replace") as f:
                out = f.read().splitlines()[-15:]
        except OSError:
            pass
        return "\n  ii %s; its output (raw lines, last 15):%s" % (
            "running" if rc is None else "EXITED with %s" % rc, "".join("\n    " + l for l in out) or " (none)")

    def wait_for(self, regex, target=None, timeout=10.0, from_start=False):
        """Waits until a line of target's out file (the server's by default) matches regex."""
        return _wait_lines([self._file(target)], regex, timeout, "%s's %s out" % (self.name, target or "server"),
                           from_start, self._diagnostics)

    def start(self, host, port, nick, realname=None, password=None, ready=None, timeout=10.0):
        """Starts ii and waits for the server out file to show `ready` (default: the 001
        welcome, or the end of the MOTD)."""
        check(shutil.which("ii"), "ii must be installed (scripts/setup)")
        self.host, self.nick = host, nick
        os.makedirs(self.prefix, exist_ok=True)
        cmd = ["ii", "-s", host, "-p", str(port), "-n", nick, "-i", self.prefix, "-f", realname or "irctools " + nick]
        env = dict(os.environ)
        if password is not None:
            env["IRCTOOLS_II_PASS"] = password
            cmd += ["-k", "IRCTOOLS_II_PASS"]
        self.stderr = open(os.path.join(self.dir, "ii.stderr"), "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.stderr, stderr=self.stderr, env=env,
                                     start_new_session=True)
        try:
            self.wait_for(ready or self.READY, None, timeout, from_start=True)
        except BaseException:
            self.stop()
            raise
        return self

    def write(self, line, target=None, timeout=10.0):
        """One line into the `in` FIFO of the server (target None) or of a channel/query.
        Waits for the FIFO to exist and for ii to be reading it."""
        check("\n" not in line, "%s: one line at a time: %r" % (self.name, line))
        fifo = os.path.join(self.path(target), "in")
        deadline = _deadline(timeout)
        while True:
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except (FileNotFoundError, OSError) as e:   # ENXIO: no reader yet
                if self.proc.poll() is not None or _left(deadline) <= 0:
                    raise TestFailure("%s: cannot write to %s (%s)%s" % (self.name, fifo, e, self._diagnostics()))
                time.sleep(POLL_S)
        try:
            os.set_blocking(fd, True)
            os.write(fd, (line + "\n").encode("utf-8"))
        finally:
            os.close(fd)

    def raw(self, line):
        """A raw IRC command through the server FIFO ("WHOIS bob", "NAMES #lobby")."""
        self.write("/" + line)

    def join(self, channel, timeout=10.0):
        """/j and wait for our join in the channel's out file."""
        self.write("/j " + channel)
        self.wait_for(r"(?i)-!- %s\(.*\) has joined %s$" % (re.escape(self.nick), re.escape(channel)), channel, timeout)

    def say(self, target, text):
        self.write(text, target)

    def msg(self, nick, text):
        """A private message, the ii way (/j nick text): it shows in <nick>/out."""
        self.write("/j %s %s" % (nick, text))

    def action(self, target, text):
        self.raw("PRIVMSG %s :\x01ACTION %s\x01" % (target, text))

    def topic(self, channel, text):
        self.write("/t " + text, channel)

    def stop(self, timeout=10.0):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.write("/q irctools", timeout=2)
                self.proc.wait(timeout)
            except (TestFailure, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.stderr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# ---- ngIRCd as a reference server ---------------------------------------------------------

class Ngircd:
    """Debian's ngIRCd, run natively in the foreground (`ngircd -n -f CONF`) with a config of
    its own on a free 127.0.0.1 port: no PAM, ident or DNS, no per-IP limit, penalties off,
    no system config snippets (IncludeDir is an empty folder of ours).  As root it drops to
    `nobody`; its files here need only be readable."""

    def __init__(self, workdir=None, port=None, ping_timeout=120, pong_timeout=20, require_auth_ping=False,
                 motd="irctools reference server", name="irc.test"):
        self.dir = os.path.abspath(workdir) if workdir else tempfile.mkdtemp(prefix="irctools-ngircd-")
        self.port = port or free_port()
        self.opts = dict(ping_timeout=ping_timeout, pong_timeout=pong_timeout, motd=motd, name=name,
                         auth_ping="yes" if require_auth_ping else "no")
        self.proc = None
        self.conf = os.path.join(self.dir, "ngircd.conf")
        self.log_path = os.path.join(self.dir, "ngircd.log")

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def start(self, timeout=10.0):
        check(shutil.which("ngircd") or os.path.exists("/usr/sbin/ngircd"), "ngircd must be installed (scripts/setup)")
        include = os.path.join(self.dir, "conf.d")
        os.makedirs(include, exist_ok=True)
        os.chmod(self.dir, 0o755)
        with open(self.conf, "w") as f:
            f.write(NGIRCD_CONF % dict(self.opts, port=self.port, include=include))
        exe = shutil.which("ngircd") or "/usr/sbin/ngircd"
        self.logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen([exe, "-n", "-f", self.conf], stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=self.logf, start_new_session=True)
        deadline = _deadline(timeout)
        while "Now listening on" not in self.log():
            if self.proc.poll() is not None or _left(deadline) <= 0:
                self.stop()
                raise TestFailure("ngircd did not start listening on %d: %s" % (self.port, self.log()[-1500:]))
            time.sleep(POLL_S)
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc is not None:
            self.logf.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


NGIRCD_CONF = """[Global]
Name = %(name)s
Info = irctools reference server
AdminInfo1 = irctools
AdminInfo2 = irctools
AdminEMail = root@localhost
Listen = 127.0.0.1
Ports = %(port)d
MotdPhrase = %(motd)s
[Limits]
MaxConnections = 0
MaxConnectionsIP = 0
MaxJoins = 0
MaxNickLength = 31
MaxPenaltyTime = 0
PingTimeout = %(ping_timeout)d
PongTimeout = %(pong_timeout)d
[Options]
DNS = no
Ident = no
PAM = no
RequireAuthPing = %(auth_ping)s
IncludeDir = %(include)s
"""

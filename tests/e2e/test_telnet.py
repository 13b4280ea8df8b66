"""End-to-end tests with a real telnet client (Debian's inetutils telnet) driven through tmux,
and with raw telnet negotiation sent the way a telnet client sends it, split across packets.

docs/PROTOCOL.md promises: telnet works; the server refuses every option (WONT/DONT) so the
client stays in its simple line mode; negotiation bytes never show up as text; Backspace and
Delete edit the line on the server when the client sends each key as it is pressed.

What the real-telnet cases can and cannot show: once the relay has answered WONT ECHO / WONT SGA,
inetutils telnet edits the line itself, even in `mode character`, and sends the finished line
("typo fixed\r\n"): the server never sees a 0x08 or 0x7F from it.  So those cases prove the
negotiation and a clean screen, not server-side editing; `server_side_editing` proves that, with a
raw socket that sends one key per TCP segment the way the Windows telnet client does.

Each case runs its own tmux server (tmux -L <private socket>) and kills only that.
"""
import os
import re
import socket
import subprocess
import time

from harness import Client, Relay, TestFailure, check, run_cases

ARGS = ["--flood-burst", "0", "--replay", "0"]
GARBAGE = re.compile("[\u00ff\u00fd\u00fe\u00fb\u00fc\ufffd]|\\^\\[|\\^\\]")   # IAC DO/DONT/WILL/WONT shown as Latin-1, escapes


class Tmux:
    """One tmux server of our own with one window running `command` (a 200x50 terminal)."""

    def __init__(self, command):
        self.name = "chatrelay-e2e-%d-%d" % (os.getpid(), int(time.time() * 1000) % 100000)
        env = dict(os.environ)
        env.setdefault("TERM", "xterm")
        self.env = env
        # The window outlives telnet, so its last screen can still be read.
        self.tmux("new-session", "-d", "-s", "t", "-x", "200", "-y", "50",
                  "%s; echo '[telnet exited]'; sleep 600" % command)

    def tmux(self, *args):
        out = subprocess.run(["tmux", "-L", self.name] + list(args), capture_output=True, text=True,
                             env=self.env, timeout=10)
        if out.returncode != 0 and args[0] != "kill-server":
            raise TestFailure("tmux %s failed (%d): %s" % (args[0], out.returncode, out.stderr.strip()))
        return out.stdout

    def type(self, text):
        """Types text literally (no key names)."""
        self.tmux("send-keys", "-t", "t", "-l", text)

    def key(self, *names):
        self.tmux("send-keys", "-t", "t", *names)

    def line(self, text):
        self.type(text)
        self.key("Enter")

    def screen(self):
        return self.tmux("capture-pane", "-p", "-J", "-t", "t", "-S", "-").rstrip("\n").split("\n")

    def wait_screen(self, text, timeout=10.0):
        """Waits until a screen line equals text; returns the screen."""
        deadline = time.time() + timeout
        while True:
            lines = [l.rstrip() for l in self.screen()]
            if text in lines:
                return lines
            if time.time() > deadline:
                raise TestFailure("the telnet window never showed %r; it shows:\n%s" % (text, "\n".join(lines[-15:])))
            time.sleep(0.1)

    def close(self):
        self.tmux("kill-server")
        try:    # tmux leaves its socket file behind
            os.unlink(os.path.join(os.environ.get("TMUX_TMPDIR", "/tmp"), "tmux-%d" % os.getuid(), self.name))
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def screen_after_connect(lines):
    """The part of the telnet window that came from the server (after telnet's own banner)."""
    for i, l in enumerate(lines):
        if l.startswith("Escape character is"):
            return lines[i + 1:]
    raise TestFailure("telnet did not connect: %r" % lines[-10:])


def check_clean_screen(lines, what):
    bad = [l for l in lines if GARBAGE.search(l)]
    check(not bad, "%s: negotiation bytes or escapes on the telnet screen: %r" % (what, bad))


def expect_line(client, text, timeout=10.0):
    """Waits for the line equal to text (lines before it are dropped)."""
    return client.wait_for(lambda l: l == text, timeout, what=repr(text))


def watcher(relay):
    """An nc-like client called bob."""
    b = Client(relay.port)
    guest = re.match(r"\*\*\* Your nick is (guest\d+);", b.expect("*** Your nick is ")).group(1)
    expect_line(b, "*** Type /help for the commands.")
    b.say("/nick bob")
    expect_line(b, "*** %s is now known as bob" % guest)
    return b


def greeting_on_screen(tm):
    lines = tm.wait_screen("*** Type /help for the commands.")
    shown = screen_after_connect(lines)
    check(len(shown) >= 4 and shown[0] == "*** Welcome to chatrelay." and shown[2] == "*** You are in lobby (2 here).",
          "greeting on the telnet screen: %r" % shown[:4])
    m = re.match(r"\*\*\* Your nick is (guest\d+); change it with /nick NAME\.$", shown[1])
    check(m, "nick line on the telnet screen: %r" % shown[1])
    check_clean_screen(shown, "greeting")
    return m.group(1)


def chat_both_ways(tm, b, nick, tag):
    """The telnet user and bob talk; both sides get exactly the text."""
    tm.line("hello from telnet " + tag)
    expect_line(b, "<%s> hello from telnet %s" % (nick, tag))
    b.say("hi telnet " + tag)
    tm.wait_screen("<bob> hi telnet " + tag)


def case_line_mode():
    """telnet HOST PORT: no negotiation from either side, the terminal edits the line."""
    with Relay("telnet_line", ARGS) as relay:
        b = watcher(relay)
        with Tmux("telnet 127.0.0.1 %d" % relay.port) as tm:
            nick = greeting_on_screen(tm)
            expect_line(b, "*** %s joined lobby" % nick)
            chat_both_ways(tm, b, nick, "1")
            tm.line("/nick tel")
            tm.wait_screen("*** %s is now known as tel" % nick)
            expect_line(b, "*** %s is now known as tel" % nick)
            tm.type("hellp")
            tm.key("BSpace")
            tm.line("o after an edit")
            line = b.wait_for(lambda l: l.startswith("<tel> "), what="tel's edited line")
            check(line == "<tel> hello after an edit", "bob got %r" % line)
            tm.line("/who")
            tm.wait_screen("*** In lobby (2): bob, tel.")
            check_clean_screen(screen_after_connect(tm.screen()), "after chatting")
            tm.line("/quit done")
            tm.wait_screen("*** Bye.")
            expect_line(b, "*** tel left lobby (quit: done)")
            lines = tm.wait_screen("[telnet exited]", timeout=5)
            check("Connection closed by foreign host." in lines, "telnet's last screen: %r" % lines[-4:])


def case_character_mode():
    """`mode character` on a real telnet: the client asks DO SGA / DO ECHO, the relay answers WONT,
    and telnet falls back to editing the line itself; what it sends arrives as one clean line and
    nothing of the negotiation reaches the screen.  (The Backspaces typed here are applied by
    telnet, not by the server: see server_side_editing for that.)"""
    with Relay("telnet_char", ARGS) as relay:
        b = watcher(relay)
        with Tmux("telnet 127.0.0.1 %d" % relay.port) as tm:
            nick = greeting_on_screen(tm)
            tm.key("C-]")
            tm.wait_screen("telnet>")   # telnet's own prompt
            tm.line("mode character")
            time.sleep(0.5)            # telnet asks DO SGA / DO ECHO; the server answers WONT
            tm.type("abx")
            tm.key("BSpace")
            tm.type("c def")
            tm.key("BSpace", "BSpace", "BSpace")
            tm.line("and more")
            line = b.expect("<%s> " % nick)
            check(line == "<%s> abc and more" % nick, "typed with Backspace in character mode, bob got %r" % line)
            chat_both_ways(tm, b, nick, "2")
            tm.line("/nick charmode")
            expect_line(b, "*** %s is now known as charmode" % nick)
            tm.wait_screen("*** %s is now known as charmode" % nick)
            shown = [l for l in screen_after_connect(tm.screen()) if l not in ("^]", "telnet> mode character")]
            check_clean_screen(shown, "character mode")
            check("relay running" in relay.log() and "error" not in relay.log().lower(), "relay log: %s" % relay.log())


def case_negotiating_client():
    """`open HOST -PORT` makes this telnet negotiate like the Windows one (DO/WILL for ten options):
    every option is refused, chat works both ways, UTF-8 reaches the screen intact and no
    negotiation byte shows.  (The Backspace typed here is applied by telnet itself after the
    refusals: the relay receives "typo fixed"; see server_side_editing for the server's editing.)"""
    with Relay("telnet_negotiate", ARGS) as relay:
        b = watcher(relay)
        with Tmux("telnet") as tm:
            tm.wait_screen("telnet>")
            tm.line("open 127.0.0.1 -%d" % relay.port)
            nick = greeting_on_screen(tm)
            chat_both_ways(tm, b, nick, "3")
            tm.line("/nick negotiator")
            expect_line(b, "*** %s is now known as negotiator" % nick)
            tm.type("typx")
            tm.key("BSpace")
            tm.line("o fixed")
            line = b.wait_for(lambda l: l.startswith("<negotiator> "), what="the edited line")
            check(line == "<negotiator> typo fixed", "bob got %r" % line)
            b.say("/msg negotiator private \u00e9\u2713")
            tm.wait_screen("*bob* private \u00e9\u2713")
            check_clean_screen(screen_after_connect(tm.screen()), "negotiating client")


def recv_all(sock, quiet=0.4):
    data = b""
    sock.settimeout(quiet)
    while True:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return data
        if not chunk:
            return data
        data += chunk


def raw_client(relay, watcher_client):
    """A raw TCP client (TCP_NODELAY: each send its own segment), greeted, and its nick, once the
    watcher has seen it join."""
    s = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    greeting = b""
    while b"/help for the commands.\r\n" not in greeting:
        greeting += s.recv(4096)
    nick = re.search(rb"Your nick is (guest\d+)", greeting).group(1).decode()
    expect_line(watcher_client, "*** %s joined lobby" % nick)
    return s, nick


def case_iac_split_across_packets():
    """Raw negotiation as telnet sends it, cut into one TCP segment per piece."""
    IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240
    with Relay("telnet_iac", ARGS) as relay:
        b = watcher(relay)
        s, nick = raw_client(relay, b)

        def send_pieces(*pieces):
            for p in pieces:
                s.sendall(p)
                time.sleep(0.05)      # one segment each: the relay reads them separately

        # What inetutils telnet sends when it negotiates (captured), one byte per packet.
        opening = bytes([IAC, DO, 38, IAC, WILL, 38, IAC, DO, 3, IAC, WILL, 24, IAC, WILL, 31, IAC, WILL, 32,
                         IAC, WILL, 33, IAC, WILL, 34, IAC, WILL, 39, IAC, DO, 5])
        send_pieces(*[opening[i:i + 1] for i in range(len(opening))])
        replies = recv_all(s)
        want = bytes([IAC, WONT, 38, IAC, DONT, 38, IAC, WONT, 3, IAC, DONT, 24, IAC, DONT, 31, IAC, DONT, 32,
                      IAC, DONT, 33, IAC, DONT, 34, IAC, DONT, 39, IAC, WONT, 5])
        check(replies == want, "replies to the opening negotiation: %r, expected %r" % (replies, want))

        send_pieces(b"hel", bytes([IAC]), bytes([WILL]), bytes([31]) + b"lo", b"\r", b"\n",
                    bytes([IAC, SB, 24, 0]) + b"xterm", bytes([IAC]), bytes([SE]) + b"after sb\r\n",
                    bytes([IAC, DONT, 1, IAC, WONT, 1]),                 # agree with us: no answer
                    bytes([IAC, 244, IAC, 246]) + b"ip and ayt dropped\r\n",
                    b"abx", bytes([IAC, 247]), b"c\r\n",                 # IAC EC erases a character
                    b"junk", bytes([IAC, 248]), b"good\r\n",             # IAC EL erases the line
                    b"line one\r", b"\x00line two\r\n",                  # CR NUL split
                    bytes([IAC]), bytes([IAC]) + b" literal ff\r\n",     # IAC IAC = data 0xFF -> U+FFFD
                    b"tab\there\r\n")
        replies = recv_all(s)
        check(replies == bytes([IAC, DONT, 31]), "replies after the second burst: %r" % replies)
        want = ["<%s> %s" % (nick, t) for t in ("hello", "after sb", "ip and ayt dropped", "abc", "good",
                                                  "line one", "line two", "\ufffd literal ff", "tab\there")]
        got = []
        while len(got) < len(want):
            got.append(b.wait_for(lambda l: l.startswith("<%s> " % nick), what="line %d" % len(got)))
        check(got == want, "bob got %r, expected %r" % (got, want))
        check(not [l for l in b.drain(0.3) if l.startswith("<")], "more lines than were sent")
        s.sendall(b"/quit\r\n")
        tail = recv_all(s, 2.0)
        check(tail == b"*** Bye.\r\n", "after /quit the raw client got %r" % tail)
        s.close()


def case_server_side_editing():
    """The server applies Backspace (0x08) and Delete (0x7F) to the line being typed, one key per
    TCP segment, as the Windows telnet client sends them: a whole UTF-8 character is erased (2, 3
    and 4 bytes), a Backspace at the start of a line erases nothing, a line erased to nothing is
    ignored like any blank line, and a line end resets nothing the next line needs."""
    BS, DEL = b"\x08", b"\x7f"
    with Relay("telnet_editing", ARGS) as relay:
        b = watcher(relay)
        s, nick = raw_client(relay, b)

        def keys(*ks):
            """Each key its own send (TCP_NODELAY: its own segment), as a key-at-a-time client does;
            a character typed is one key even when it is several bytes."""
            for k in ks:
                if isinstance(k, str):
                    for ch in k:
                        s.sendall(ch.encode("utf-8"))
                        time.sleep(0.002)   # keeps the segments apart; the result must not depend on it
                else:
                    s.sendall(k)
                    time.sleep(0.002)

        typed_and_shown = [
            (("hellp", BS, "o"), "hello"),                                    # Backspace
            (("abx", DEL, "c"), "abc"),                                       # Delete
            (("caf\u00e9", BS, "e"), "cafe"),                                 # a 2-byte character, BS
            (("caf\u00e9", DEL, "e!"), "cafe!"),                              # ... and DEL
            (("ok \u2713", BS, "done"), "ok done"),                           # 3 bytes
            (("smile \U0001F600", DEL, ":)"), "smile :)"),                    # 4 bytes
            (("\u00e9\u00e9", BS, BS, "x"), "x"),                             # erasing back to empty
            ((BS, "start"), "start"),                                         # BS at the start of a line
            ((DEL, BS, DEL, "from nothing"), "from nothing"),                 # several, on an empty line
            (("ab", BS, BS, BS, BS, "cd"), "cd"),                             # more erases than characters
            (("one two", BS, BS, BS, "2"), "one 2"),
        ]
        for ks, _ in typed_and_shown:
            keys(*ks, b"\r\n")
        keys("gone", BS, BS, BS, BS, b"\r\n")                               # erased to nothing: ignored
        keys(BS, b"\r\n")                                                     # BS alone: ignored
        keys("\u00e9", b"\r", b"\n", BS, "after the line end", b"\r\n")     # BS after CRLF: no effect on the old line
        want = ["<%s> %s" % (nick, shown) for _, shown in typed_and_shown]
        want += ["<%s> \u00e9" % nick, "<%s> after the line end" % nick]
        got = []
        while len(got) < len(want):
            got.append(b.wait_for(lambda l: l.startswith("<%s> " % nick), what="line %d" % len(got)))
        check(got == want, "bob got (got, expected):\n%s"
              % "\n".join("%r\n%r" % p for p in zip(got, want) if p[0] != p[1]))
        s.sendall(b"/who\r\n")
        tail = b""
        while not tail.endswith(b".\r\n"):
            chunk = s.recv(4096)
            check(chunk, "the connection closed before the /who reply")
            tail += chunk
        check(tail == ("*** In lobby (2): bob, %s.\r\n" % nick).encode(), "the typist got %r" % tail)
        check(not [l for l in b.drain(0.3) if l.startswith("<")], "more lines than were typed")
        rows = [r[0] for r in relay.query("SELECT body FROM messages WHERE kind = 'say' ORDER BY id")]
        check(rows == [w[len("<%s> " % nick):] for w in want], "stored bodies: %r" % rows)
        s.close()


CASES = {
    "server_side_editing": case_server_side_editing,
    "line_mode": case_line_mode,
    "character_mode": case_character_mode,
    "negotiating_client": case_negotiating_client,
    "iac_split_across_packets": case_iac_split_across_packets,
}

if __name__ == "__main__":
    run_cases(CASES)

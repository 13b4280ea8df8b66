"""End-to-end tests with a real telnet client (Debian's inetutils telnet) driven through tmux,
and with raw telnet negotiation sent the way a telnet client sends it, split across packets.

docs/PROTOCOL.md promises: telnet works; the server refuses every option (WONT/DONT) so the
client stays in its simple line mode; negotiation bytes never show up as text; Backspace and
Delete edit the line on the server when the client sends each key as it is pressed.

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


def watcher(relay):
    """An nc-like client called bob."""
    b = Client(relay.port)
    b.expect("Type /help")
    b.say("/nick bob")
    b.expect("is now known as bob")
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
    b.expect("<%s> hello from telnet %s" % (nick, tag))
    b.say("hi telnet " + tag)
    tm.wait_screen("<bob> hi telnet " + tag)


def case_line_mode():
    """telnet HOST PORT: no negotiation from either side, the terminal edits the line."""
    with Relay("telnet_line", ARGS) as relay:
        b = watcher(relay)
        with Tmux("telnet 127.0.0.1 %d" % relay.port) as tm:
            nick = greeting_on_screen(tm)
            b.expect("*** %s joined lobby" % nick)
            chat_both_ways(tm, b, nick, "1")
            tm.line("/nick tel")
            tm.wait_screen("*** %s is now known as tel" % nick)
            b.expect("*** %s is now known as tel" % nick)
            tm.type("hellp")
            tm.key("BSpace")
            tm.line("o after an edit")
            line = b.expect("after an edit")
            check(line == "<tel> hello after an edit", "bob got %r" % line)
            tm.line("/who")
            tm.wait_screen("*** In lobby (2): bob, tel.")
            check_clean_screen(screen_after_connect(tm.screen()), "after chatting")
            tm.line("/quit done")
            tm.wait_screen("*** Bye.")
            b.expect("*** tel left lobby (quit: done)")
            lines = tm.wait_screen("[telnet exited]", timeout=5)
            check("Connection closed by foreign host." in lines, "telnet's last screen: %r" % lines[-4:])


def case_character_mode():
    """`mode character`: telnet sends every key as it is pressed (DEL included); the server edits."""
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
            b.expect("*** %s is now known as charmode" % nick)
            tm.wait_screen("*** %s is now known as charmode" % nick)
            shown = [l for l in screen_after_connect(tm.screen()) if l not in ("^]", "telnet> mode character")]
            check_clean_screen(shown, "character mode")
            check("relay running" in relay.log() and "error" not in relay.log().lower(), "relay log: %s" % relay.log())


def case_negotiating_client():
    """`open HOST -PORT` makes this telnet negotiate like the Windows one (DO/WILL for ten options)."""
    with Relay("telnet_negotiate", ARGS) as relay:
        b = watcher(relay)
        with Tmux("telnet") as tm:
            tm.wait_screen("telnet>")
            tm.line("open 127.0.0.1 -%d" % relay.port)
            nick = greeting_on_screen(tm)
            chat_both_ways(tm, b, nick, "3")
            tm.line("/nick negotiator")
            b.expect("*** %s is now known as negotiator" % nick)
            tm.type("typx")
            tm.key("BSpace")
            tm.line("o fixed")
            line = b.expect("fixed")
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


def case_iac_split_across_packets():
    """Raw negotiation as telnet sends it, cut into one TCP segment per piece."""
    IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240
    with Relay("telnet_iac", ARGS) as relay:
        b = watcher(relay)
        s = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        greeting = b""
        while b"/help for the commands.\r\n" not in greeting:
            greeting += s.recv(4096)
        nick = re.search(rb"Your nick is (guest\d+)", greeting).group(1).decode()
        b.expect("*** %s joined lobby" % nick)

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


CASES = {
    "line_mode": case_line_mode,
    "character_mode": case_character_mode,
    "negotiating_client": case_negotiating_client,
    "iac_split_across_packets": case_iac_split_across_packets,
}

if __name__ == "__main__":
    run_cases(CASES)

"""End-to-end tests of the relay core: chatrelay.exe --console under Wine, real TCP clients."""
import os
import re
import signal
import socket
import struct
import threading
import time

from harness import (Client, Relay, SmallWindow, TestFailure, check, free_port, raise_fd_limit, read_through,
                     read_to, run_cases)

# Load tests switch off the per-IP limit and flood control (all clients are 127.0.0.1).
OPEN_LIMITS = ["--max-per-ip", "0", "--flood-burst", "0", "--flood-rate", "0"]


def nick_of(client):
    line = client.expect("Your nick is")
    m = re.search(r"Your nick is (guest\d+)", line)
    check(m, "no guest nick in greeting line %r" % line)
    client.greeted()
    return m.group(1)


def case_three_clients_chat():
    with Relay("three_clients", OPEN_LIMITS + ["--replay", "0"]) as relay:
        clients = [Client(relay.port) for _ in range(3)]
        nicks = [nick_of(c) for c in clients]
        check(len(set(nicks)) == 3, "nicks are not unique: %r" % nicks)
        time.sleep(0.3)
        for c in clients:
            c.drain(0.2)   # join announcements
        for i in range(20):
            for k, c in enumerate(clients):
                c.say("msg %d from %d" % (i, k))
        for k, c in enumerate(clients):
            got = [l for l in c.drain(1.0) if l.startswith("<")]
            for other in range(3):
                expected = ["<%s> msg %d from %d" % (nicks[other], i, other) for i in range(20)] if other != k else []
                seen = [l for l in got if l.startswith("<%s>" % nicks[other])]
                check(seen == expected, "client %d saw from %d: %r, expected %r" % (k, other, seen[:3], expected[:3]))
        for c in clients:
            c.close()


def case_disconnect_mid_line():
    """A line without its end when the client leaves is neither delivered nor stored: the other
    client gets exactly the leave notice, and then only what the next client says."""
    with Relay("mid_line", OPEN_LIMITS + ["--replay", "0"]) as relay:
        a, b = Client(relay.port), Client(relay.port)
        nick_a = nick_of(a)
        nick_b = nick_of(b)
        # A reads everything it was sent, so its close is a FIN after the data, not an RST.
        check(read_through(a, lambda l: "joined" in l, what="b's join") == ["*** %s joined lobby" % nick_b],
              "a saw more than b's join: %r" % a.lines)
        a.send("this line never ends")
        a.close()
        seen = read_through(b, lambda l: "left" in l, what="a's leave")
        check(seen == ["*** %s left lobby (connection closed)" % nick_a],
              "before a's leave notice b got %r" % seen)
        c = Client(relay.port)
        nick_c = nick_of(c)
        c.say("still alive")
        seen = read_through(b, lambda l: "still alive" in l, what="c's line")
        check(seen == ["*** %s joined lobby" % nick_c, "<%s> still alive" % nick_c],
              "after a's leave b got %r" % seen)
        check(b.buf == b"", "b has an unfinished line: %r" % b.buf)
        rows = relay.query("SELECT nick, kind, body FROM messages ORDER BY id")
        check(rows == [(nick_a, "join", ""), (nick_b, "join", ""), (nick_a, "leave", "connection closed"),
                       (nick_c, "join", ""), (nick_c, "say", "still alive")],
              "the history holds %r" % rows)


def case_slow_consumer_is_cut():
    bound = 64 * 1024
    with Relay("slow_consumer", OPEN_LIMITS + ["--max-queue-bytes", str(bound), "--replay", "0"]) as relay:
        slow = Client(relay.port)
        slow.greeted()
        readers = [Client(relay.port) for _ in range(2)]
        for r in readers:
            r.greeted()
        sender = Client(relay.port)
        nick = nick_of(sender)
        time.sleep(0.3)
        for r in readers:
            r.drain(0.2)
        count = 20000            # ~8 MB per reader: far more than the socket buffers hold
        pad = "x" * 400
        results = [None, None]

        def read_all(k):
            r = readers[k]
            expected = 0
            deadline = time.time() + 90
            while expected < count and time.time() < deadline and not r.closed:
                r._fill(0.5)
                for line in r.lines:
                    if line.startswith("<%s> " % nick):
                        n = int(line.split()[1])
                        if n != expected:
                            results[k] = "got line %d, expected %d" % (n, expected)
                            return
                        expected += 1
                r.lines.clear()
            results[k] = expected

        threads = [threading.Thread(target=read_all, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for first in range(0, count, 500):
            sender.send("".join("%d %s\r\n" % (i, pad) for i in range(first, min(first + 500, count))))
        for t in threads:
            t.join(100)
        check(results == [count, count], "readers got %r of %d lines" % (results, count))
        check(slow.wait_closed(15), "the slow consumer was not disconnected")
        check("closed (slow consumer)" in relay.log(), "the log does not say why the slow consumer was cut")
        check(relay.log().count("closed (slow consumer)") == 1, "more than one session was cut as slow")


STOP_COUNTERS = re.compile(r"stopped in \d+ ms \(.*wsasend (\d+), .*wsasend overlapped (\d+)\)")


def case_paused_reader():
    """core/relay.c session_flush: a session's queue goes out in a WSASend without an OVERLAPPED
    first, and only what the kernel does not take at once goes overlapped.  A reader that keeps up
    is served by the first kind alone; one that stops reading (small window, 6.4 MB said meanwhile)
    leaves partial sends and full buffers, so the rest must go overlapped and then resume: every
    line arrives once, in order, and the stop line's counters show both kinds of send were made."""
    count, pad = 16000, "y" * 400     # 6.4 MB: past what Linux lets a send buffer grow to (4 MiB)
    with Relay("paused_reader", OPEN_LIMITS + ["--replay", "0", "--max-queue-bytes", "8M"]) as relay:
        paused = SmallWindow(relay.port)
        paused_nick = nick_of(paused)
        sender = Client(relay.port)
        nick = nick_of(sender)
        paused.expect("*** %s joined lobby" % nick)
        sender.say("before the pause")
        paused.expect("<%s> before the pause" % nick)
        sender.send("".join("%d %s\r\n" % (i, pad) for i in range(count)))
        time.sleep(1.5)      # not reading (the slow-consumer grace is 3 s, the bound 8 MiB)
        got = []
        deadline = time.time() + 60
        while len(got) < count and time.time() < deadline and not paused.closed:
            paused._fill(0.5)
            got += [l for l in paused.lines if l.startswith("<%s> " % nick)]
            paused.lines.clear()
        want = ["<%s> %d %s" % (nick, i, pad) for i in range(count)]
        check(got == want, "the paused reader got %d lines, not the %d said in order (first difference at %r)"
              % (len(got), count, next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), len(got))))
        check(not paused.closed, "the paused reader was disconnected")
        check(relay.stop() == 0, "relay did not stop cleanly")
        m = STOP_COUNTERS.search(relay.log())
        check(m, "no send counters in the stop line: %s" % relay.log()[-600:])
        sends, overlapped = int(m.group(1)), int(m.group(2))
        check(overlapped >= 1, "%d sends, none overlapped: the paused reader's backlog never waited" % sends)
        check(sends - overlapped >= 1, "%d sends, all overlapped: none went out at once" % sends)
        print("%s: %d sends, %d of them overlapped" % (paused_nick, sends, overlapped))


def case_max_sessions():
    with Relay("max_sessions", OPEN_LIMITS + ["--max-sessions", "4"]) as relay:
        clients = []
        for _ in range(4):
            c = Client(relay.port)
            c.greeted()
            clients.append(c)
        extra = [Client(relay.port) for _ in range(2)]
        for e in extra:
            line = e.expect("full")
            check(line.startswith("*** "), "refusal is not a notice: %r" % line)
            check(e.wait_closed(10), "a client beyond capacity was not closed")
        clients[0].say("hello after refusals")
        clients[1].expect("hello after refusals")
        clients[3].close()
        time.sleep(0.5)
        again = Client(relay.port)
        again.greeted()      # a freed slot is usable again


def case_connect_churn():
    """500 connect/close cycles leak nothing: every session is closed, the relay says all are
    (after the last close), and neither the relay's handles and fds nor the wineserver's grew."""
    with Relay("churn", OPEN_LIMITS + ["--replay", "0"]) as relay:
        def settle(expected_closed):
            """Waits for the log to count expected_closed closes and, after the last of them, an
            "all sessions closed: sessions=0 handles=N" line; returns N."""
            deadline = time.time() + 20
            while True:
                lines = relay.log().splitlines()
                closes = [i for i, l in enumerate(lines) if ": closed (" in l]
                counts = [(i, m) for i, m in ((i, re.search(r"sessions=(\d+) handles=(\d+)", l))
                                              for i, l in enumerate(lines)) if m]
                done = len(closes) >= expected_closed and counts and counts[-1][0] > closes[-1]
                if done or time.time() > deadline:
                    break
                time.sleep(0.2)
            check(len(closes) == expected_closed, "%d sessions closed, expected %d" % (len(closes), expected_closed))
            check(counts and counts[-1][0] > closes[-1],
                  "no session count after the last close; the log ends %r" % lines[closes[-1]:][-5:])
            check(counts[-1][1].group(1) == "0", "the session count is not back to zero: %r" % lines[counts[-1][0]])
            return int(counts[-1][1].group(2))
        for cycle in range(20):
            c = Client(relay.port)
            c.greeted()
            c.close()
        handles_before = settle(20)
        before = relay.fd_counts()
        for cycle in range(500):
            c = Client(relay.port)
            if cycle % 50 == 0:
                c.greeted()
            c.close()
        handles_after = settle(520)
        after = relay.fd_counts()
        check(before[1] > 0, "the prefix's wineserver was not found")
        # Wine's GetProcessHandleCount reports 0 whatever is open, so under Wine the fds are what
        # can show a leak: the wineserver holds one per socket and handle of the prefix.
        check(handles_after <= handles_before + 2, "the relay's handles grew over 500 cycles: %d -> %d"
              % (handles_before, handles_after))
        check(after[0] <= before[0] + 2 and after[1] <= before[1] + 2,
              "fds grew over 500 cycles: relay %d -> %d, wineserver %d -> %d"
              % (before[0], after[0], before[1], after[1]))
        print("handles %d -> %d, relay fds %d -> %d, wineserver fds %d -> %d"
              % (handles_before, handles_after, before[0], after[0], before[1], after[1]))


def case_long_line():
    with Relay("long_line", OPEN_LIMITS) as relay:
        a, b = Client(relay.port), Client(relay.port)
        nick_a = nick_of(a)
        nick_of(b)
        a.send("y" * 5000 + "\r\n")
        notice = a.expect("1024")
        check(notice.startswith("*** "), "the sender was not told with a notice: %r" % notice)
        line = b.wait_for(lambda l: l.startswith("<%s> yyy" % nick_a), what="the cut line")
        body = line[len("<%s> " % nick_a):]
        check(len(body) == 1024, "delivered body has %d bytes, expected 1024" % len(body))
        a.say("short again")
        b.wait_for(lambda l: l == "<%s> short again" % nick_a, what="the next line")


# What docs/PROTOCOL.md ("Lines") says never reaches another client: C0 controls but TAB, DEL,
# C1 controls, and the line separators and bidi embedding, override and isolate controls.
FORBIDDEN = set(range(0x00, 0x20)) - {0x09} | set(range(0x7F, 0xA0)) | {0x2028, 0x2029} \
    | set(range(0x202A, 0x202F)) | set(range(0x2066, 0x206A))

# One of each forbidden kind in a line of its own (random bytes almost never hold the 3-byte
# ones), and what is left of it: removed without replacement, a lone 8-bit CSI (0x9B) is
# ill-formed UTF-8 and becomes U+FFFD, the rest of an escape sequence is plain text.  BS and DEL
# are absent: the framer applies them as edits before any cleaning.
HOSTILE = (b"evil:A\x1b[31mB\xc2\x9bC\xe2\x80\xa8D\xe2\x80\xa9E\xe2\x80\xaaF\xe2\x80\xaeG"
           b"\xe2\x81\xa6H\xe2\x81\xa9I\x01J\x9bK\x00L\xc2\x85M\x1fN\tO")
HOSTILE_CLEANED = "evil:A[31mBCDEFGHIJ\ufffdKLMN\tO"


def case_binary_garbage():
    """200 KB of random bytes, then a line with one of each forbidden character: every byte the
    other client gets before the marker is well-formed UTF-8 with none of them in it."""
    with Relay("garbage", OPEN_LIMITS) as relay:
        a, b = Client(relay.port), Client(relay.port)
        b.raw = bytearray()         # every byte b is sent, from its greeting on
        nick_a = nick_of(a)
        nick_of(b)
        rnd = random.Random(7)
        blob = bytes(rnd.randrange(256) for _ in range(200000))
        a.send(blob)
        a.send(b"\r\n" + HOSTILE + b"\r\nafter garbage\r\n")
        b.expect("<%s> after garbage" % nick_a, timeout=20)
        marker = ("<%s> after garbage\r\n" % nick_a).encode()
        end = b.raw.find(marker)
        check(end >= 0, "the marker line is not in the bytes b received")
        raw = bytes(b.raw[: end + len(marker)])
        try:
            text = raw.decode("utf-8")      # strict: ill-formed UTF-8 must have become U+FFFD
        except UnicodeDecodeError as e:
            raise TestFailure("ill-formed UTF-8 delivered at byte %d: %r" % (e.start, raw[e.start - 20: e.end + 20]))
        check(text.endswith("\r\n"), "the marker line does not end with CRLF")
        lines = text[:-2].split("\r\n")
        for line in lines:
            bad = sorted({"U+%04X" % ord(ch) for ch in line if ord(ch) in FORBIDDEN})
            check(not bad, "%s delivered in %r" % (", ".join(bad), line[:200]))
        said = [l for l in lines if l.startswith("<%s> " % nick_a)]
        # Seed 7 gives ~1500 line ends in the blob (1478 lines reach b): far fewer would mean
        # garbage was dropped rather than cleaned, and the checks above would prove little.
        check(len(said) > 1000, "only %d of a's lines reached b" % len(said))
        check("<%s> %s" % (nick_a, HOSTILE_CLEANED) in said,
              "the hostile line was not delivered cleaned as %r; b got %r"
              % (HOSTILE_CLEANED, [l for l in said if "evil:" in l]))
        c = Client(relay.port)
        c.greeted()     # still serving


GOODBYE = "*** server is stopping; goodbye"     # docs/PROTOCOL.md, "Leaving"


def case_stop_with_100_connected():
    """Ctrl+C with 100 clients: each gets exactly the goodbye notice, then the close."""
    raise_fd_limit()
    with Relay("stop100", OPEN_LIMITS + ["--replay", "0"]) as relay:
        clients = []
        for _ in range(100):
            clients.append(Client(relay.port))
        nicks = [nick_of(c) for c in clients]
        # Each client is told of everyone who came after it (accepted in connection order); once
        # it has all of them, the goodbye is the only line still to come.
        for k, c in enumerate(clients):
            later = ["*** %s joined lobby" % n for n in nicks[k + 1:]]
            if later:
                got = read_to(c, later[-1])
                check(got == later, "client %d got %r, expected the joins %r" % (k, got[:3], later[:3]))
        start = time.time()
        rc = relay.stop()
        took = time.time() - start
        check(rc == 0, "relay exited with %r after Ctrl+C" % rc)
        check(took < 10, "stop took %.1f s" % took)
        for k, c in enumerate(clients):
            check(c.wait_closed(5), "client %d's connection was not closed on stop" % k)
            check(c.lines == [GOODBYE] and c.buf == b"",
                  "client %d got %r (unfinished: %r) before the close, expected exactly %r"
                  % (k, c.lines, c.buf, [GOODBYE]))
        check("stopped in" in relay.log(), "the log does not record the stop")


import random  # noqa: E402  (used by case_binary_garbage)

def case_command_line():
    """--help lists every option; a bad option is one clear line and a non-zero exit."""
    from harness import EXE, WINE
    import subprocess

    def run(*args):
        p = subprocess.run([WINE, EXE] + list(args), stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")

    rc, out = run("--help")
    check(rc == 0, "--help exited %d" % rc)
    # Each option starts a line of its own ("  --log PATH ..."), so "--log" is not found in
    # "--log-private" nor "--listen" in "--listen-irc".
    starts = {l.split()[0] for l in out.splitlines() if l.strip().startswith("--")}
    for opt in ("--console", "--listen", "--listen-irc", "--greet-delay", "--irc-ping", "--max-sessions",
                "--max-queue-bytes", "--db", "--no-history", "--replay", "--retain-days", "--retain-messages",
                "--flood-burst", "--flood-rate", "--flood-kick", "--max-per-ip", "--idle-timeout",
                "--log-private", "--log"):
        check(opt in starts, "--help has no line for %s (lines start with %r)" % (opt, sorted(starts)))
    rc, out = run("--console", "--max-sessions", "x")
    check(rc == 2, "a bad --max-sessions exited %d, expected 2" % rc)
    check("--max-sessions" in out and "'x'" in out, "the error does not name the option and value: %r" % out)
    rc, out = run("--console", "--no-such-option")
    check(rc == 2 and "--no-such-option" in out, "an unknown option: rc %d, %r" % (rc, out))
    rc, out = run("--console", "--listen", "127.0.0.1:99999")
    check(rc == 2 and "--listen" in out, "a bad port: rc %d, %r" % (rc, out))


def case_ipv4_and_ipv6():
    """Listening on all interfaces serves IPv4 and IPv6 clients alike."""
    with Relay("dual_stack", OPEN_LIMITS, listen=":{port}") as relay:
        port = relay.port
        check("[::]:%d" % port in relay.log(), "no IPv6 listener in the log: %s" % relay.log()[-400:])
        v4 = Client(port, host="127.0.0.1")
        v4_nick = nick_of(v4)
        v6 = Client(port, host="::1")
        nick_of(v6)
        v6.say("hello over IPv6")
        v4.wait_for(lambda l: l.endswith("> hello over IPv6"), what="the IPv6 client's line")
        v4.say("hello over IPv4")
        v6.wait_for(lambda l: l == "<%s> hello over IPv4" % v4_nick, what="the IPv4 client's line")


def _reset_connection(port):
    """Connects, then closes with SO_LINGER 0: the kernel answers with RST instead of FIN."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)   # the kernel completes it: no relay needed
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def case_reset_storm():
    """Connections reset while still in the backlog cost only themselves: during a storm of them,
    and after a burst queued while the relay could not run, every fresh client is greeted within 1 s."""
    bound = 1.0                     # the product promise for a greeting
    with Relay("reset_storm", OPEN_LIMITS + ["--replay", "0"]) as relay:
        made = [0]
        cond = threading.Condition()
        stop = threading.Event()
        errors = []

        def storm():
            try:
                while not stop.is_set():
                    _reset_connection(relay.port)
                    with cond:
                        made[0] += 1
                        cond.notify_all()
                    time.sleep(0.02)    # paces the storm (~50/s), not an assertion
            except OSError as e:
                errors.append(e)
                with cond:
                    cond.notify_all()

        def await_made(n):
            with cond:
                check(cond.wait_for(lambda: made[0] >= n or errors, 30), "the storm stalled at %d" % made[0])
            check(not errors, "the storm could not connect: %r" % errors[:1])

        def probe(what):
            start = time.monotonic()
            c = Client(relay.port)
            try:
                c.expect("/help", timeout=bound + 1)   # waits past the bound, to tell slow from never
            except TestFailure:
                raise TestFailure("%s: not greeted within %.0f s" % (what, bound + 1))
            took = time.monotonic() - start
            c.close()
            return took

        # 1. A live storm: probes spread over it (each after 10 more resets).
        t = threading.Thread(target=storm, daemon=True)
        t.start()
        took = []
        try:
            for i in range(8):
                await_made(20 + 10 * i)
                took.append(probe("probe %d during the storm" % (i + 1)))
        finally:
            stop.set()
            t.join(30)
        check(all(x <= bound for x in took),
              "greetings during the storm took %s s (bound %.0f s)" % (["%.2f" % x for x in took], bound))

        # 2. Resets that are certainly in the backlog: made while the relay is stopped, so none
        # of them can be accepted before its RST; a client queued behind them must not wait for them.
        queued = 40
        os.killpg(relay.proc.pid, signal.SIGSTOP)
        try:
            for _ in range(queued):
                _reset_connection(relay.port)
            start = time.monotonic()
            behind = Client(relay.port)
        finally:
            os.killpg(relay.proc.pid, signal.SIGCONT)
        behind.expect("/help", timeout=bound + 4)
        waited = time.monotonic() - start
        check(waited <= bound, "a client queued behind %d resets was greeted after %.2f s" % (queued, waited))
        behind.close()

        # The log counts them (info, not a warning), once a minute at most, and the total at stop.
        log = relay.log()
        periodic = re.findall(r"INFO (\d+) connection\(s\) reset before they could be accepted \(last error", log)
        check(len(periodic) == 1, "expected one periodic reset line in a short test: %r" % periodic)
        check("accept failed" not in log, "per-connection failures were logged as accept failures")
        relay.stop()
        log = relay.log()
        total = re.findall(r"(\d+) connection\(s\) reset before they could be accepted since the start", log)
        check(len(total) == 1, "no total of resets at stop: %s" % log[-600:])
        check(queued <= int(total[0]) <= made[0] + queued,
              "%s resets counted; at least %d were queued, %d made" % (total[0], queued, made[0] + queued))


CASES = {
    "ipv4_and_ipv6": case_ipv4_and_ipv6,
    "command_line": case_command_line,
    "three_clients_chat": case_three_clients_chat,
    "disconnect_mid_line": case_disconnect_mid_line,
    "slow_consumer_is_cut": case_slow_consumer_is_cut,
    "paused_reader": case_paused_reader,
    "max_sessions": case_max_sessions,
    "connect_churn": case_connect_churn,
    "long_line": case_long_line,
    "binary_garbage": case_binary_garbage,
    "stop_with_100_connected": case_stop_with_100_connected,
    "reset_storm": case_reset_storm,
}

if __name__ == "__main__":
    run_cases(CASES)

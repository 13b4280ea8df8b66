"""End-to-end tests of the relay core: chatrelay.exe --console under Wine, real TCP clients."""
import os
import re
import signal
import socket
import struct
import threading
import time

from harness import Client, Relay, TestFailure, check, free_port, raise_fd_limit, run_cases

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
    with Relay("mid_line", OPEN_LIMITS) as relay:
        a, b = Client(relay.port), Client(relay.port)
        nick_of(a)
        nick_of(b)
        a.send("this line never ends")
        a.close()
        b.expect("left")       # the leave announcement, not the partial line
        c = Client(relay.port)
        nick_c = nick_of(c)
        c.say("still alive")
        b.expect("<%s> still alive" % nick_c)
        check(not any("never ends" in l for l in b.lines), "a partial line was delivered")


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
    with Relay("churn", OPEN_LIMITS + ["--replay", "0"]) as relay:
        def settle(expected_closed):
            deadline = time.time() + 20
            while relay.log().count(": closed (") < expected_closed and time.time() < deadline:
                time.sleep(0.2)
            check(relay.log().count(": closed (") == expected_closed,
                  "%d sessions closed, expected %d" % (relay.log().count(": closed ("), expected_closed))
            check(relay.log().rstrip().endswith(("sessions=0 handles=%s" % relay.log().rsplit("handles=", 1)[-1].strip())),
                  "the session count is not back to zero")
        for cycle in range(20):
            c = Client(relay.port)
            c.greeted()
            c.close()
        settle(20)
        before = relay.fd_counts()
        for cycle in range(500):
            c = Client(relay.port)
            if cycle % 50 == 0:
                c.greeted()
            c.close()
        settle(520)
        after = relay.fd_counts()
        check(before[1] > 0, "the prefix's wineserver was not found")
        check(after[0] <= before[0] + 2 and after[1] <= before[1] + 2,
              "fds grew over 500 cycles: relay %d -> %d, wineserver %d -> %d"
              % (before[0], after[0], before[1], after[1]))


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


def case_binary_garbage():
    with Relay("garbage", OPEN_LIMITS) as relay:
        a, b = Client(relay.port), Client(relay.port)
        nick_of(a)
        nick_of(b)
        rnd = random.Random(7)
        blob = bytes(rnd.randrange(256) for _ in range(200000))
        a.send(blob)
        a.send(b"\r\nafter garbage\r\n")
        b.expect("after garbage", timeout=20)
        raw = b.buf
        for line in b.lines:
            check(not any(ord(ch) < 32 and ch != "\t" for ch in line), "control character delivered: %r" % line)
        check(b"\x1b" not in raw, "an escape byte was delivered")
        c = Client(relay.port)
        c.greeted()     # still serving


def case_stop_with_100_connected():
    raise_fd_limit()
    with Relay("stop100", OPEN_LIMITS + ["--replay", "0"]) as relay:
        clients = []
        for _ in range(100):
            clients.append(Client(relay.port))
        for c in clients:
            c.greeted()
        start = time.time()
        rc = relay.stop()
        took = time.time() - start
        check(rc == 0, "relay exited with %r after Ctrl+C" % rc)
        check(took < 10, "stop took %.1f s" % took)
        for c in clients:
            check(c.wait_closed(5), "a client's connection was not closed on stop")
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
    for opt in ("--console", "--listen", "--max-sessions", "--max-queue-bytes", "--db", "--no-history",
                "--replay", "--retain-days", "--retain-messages", "--flood-burst", "--flood-rate",
                "--flood-kick", "--max-per-ip", "--idle-timeout", "--log-private", "--log"):
        check(opt in out, "--help does not mention %s" % opt)
    rc, out = run("--console", "--max-sessions", "x")
    check(rc == 2, "a bad --max-sessions exited %d, expected 2" % rc)
    check("--max-sessions" in out and "'x'" in out, "the error does not name the option and value: %r" % out)
    rc, out = run("--console", "--no-such-option")
    check(rc == 2 and "--no-such-option" in out, "an unknown option: rc %d, %r" % (rc, out))
    rc, out = run("--console", "--listen", "127.0.0.1:99999")
    check(rc == 2 and "--listen" in out, "a bad port: rc %d, %r" % (rc, out))


def case_ipv4_and_ipv6():
    """Listening on all interfaces serves IPv4 and IPv6 clients alike."""
    port = free_port()
    with Relay("dual_stack", OPEN_LIMITS, port=port, listen=":%d" % port) as relay:
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
    "max_sessions": case_max_sessions,
    "connect_churn": case_connect_churn,
    "long_line": case_long_line,
    "binary_garbage": case_binary_garbage,
    "stop_with_100_connected": case_stop_with_100_connected,
    "reset_storm": case_reset_storm,
}

if __name__ == "__main__":
    run_cases(CASES)

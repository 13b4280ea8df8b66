"""selftest_nats: proves nats_cluster.py against Debian's nats-server, by hand (not in ctest).

    python3 tests/e2e/selftest_nats.py [--runs N]   the cluster and single-server checks, N times
    python3 tests/e2e/selftest_nats.py --facts      measures what the cluster tests must expect of
                                                     nats-server (failover, lost quorum), ~2 min

Each run must leave no nats-server and no folder behind; it says so, or fails.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import TestFailure, check                                # noqa: E402
from nats_cluster import (NatsCluster, NatsStatusError, NatsTimeout,  # noqa: E402
                          JetStreamError)

SUBJECT = "chatrelay.chat"


def servers_in(folder):
    """pids of nats-server processes whose command line names something under folder."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                argv = f.read().decode("utf-8", "replace").split("\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == "nats-server" and any(a.startswith(folder) for a in argv):
            out.append(int(pid))
    return out


def publish_until_acked(client, subject, payload, msg_id, timeout=30.0, attempt_timeout=1.0):
    """Publishes with the same Nats-Msg-Id until a PubAck comes (what a relay does while the
    stream elects a leader).  Returns (ack, [what each failed attempt got])."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.publish_js(subject, payload, msg_id=msg_id, timeout=attempt_timeout), seen
        except NatsStatusError as e:
            seen.append("status %s" % e.status)
            time.sleep(0.05)        # no stream leader subscribed yet: the election is running
        except NatsTimeout:
            seen.append("timeout")
        except JetStreamError as e:
            seen.append("JetStream error %s/%s" % (e.code, e.err_code))
            time.sleep(0.05)
        if time.monotonic() > deadline:
            raise TestFailure("publish %s not acknowledged within %.0f s; attempts got: %s"
                              % (msg_id, timeout, _summary(seen)))


def _summary(seen):
    """["timeout", "timeout", "status 503"] -> "2 x timeout, 1 x status 503" (in order of runs)."""
    runs = []
    for s in seen:
        if runs and runs[-1][0] == s:
            runs[-1][1] += 1
        else:
            runs.append([s, 1])
    return ", ".join("%d x %s" % (n, s) for s, n in runs) or "none"


def msg_ids(client, stream, first, last):
    return [client.stream_get(stream, seq)["headers"].get("Nats-Msg-Id") for seq in range(first, last + 1)]


def cluster_run():
    t0 = time.monotonic()
    c = NatsCluster(3, name="selftest")
    folder = c.dir
    try:
        c.start()
        print("  3 nodes ready in %.1f s: %s" % (time.monotonic() - t0, " ".join(c.urls())))
        check(len(c.urls()) == 3 and len(set(c.urls())) == 3, "urls: %r" % c.urls())
        check("cluster {" in c.config(0) and "routes" in c.config(0), "no cluster block:\n" + c.config(0))

        c0 = c.client(0)
        info = c0.stream_create("CHAT", [SUBJECT], replicas=3)
        check(info["config"]["num_replicas"] == 3, "stream created with %r" % info["config"])
        for k in range(100):
            ack = c0.publish_js(SUBJECT, b"line %d" % k, msg_id="selftest-%d" % k)
            check(ack == {"stream": "CHAT", "seq": k + 1}, "publish %d acknowledged as %r" % (k, ack))
        dup = c0.publish_js(SUBJECT, b"line 42", msg_id="selftest-42")
        check(dup.get("duplicate") is True and dup["seq"] == 43, "the repeated selftest-42 got %r" % dup)
        check(c0.stream_info("CHAT")["state"]["messages"] == 100, "a duplicate was stored")
        m = c0.stream_get("CHAT", 1)
        check(m["subject"] == SUBJECT and m["data"] == b"line 0" and m["headers"]["Nats-Msg-Id"] == "selftest-0",
              "message 1 is %r" % m)
        c0.close()

        # Kill -9 the stream's leader: the survivors elect another, publishes resume.
        c.move_stream_leader("CHAT", 0)
        c.kill(0)
        t_kill = time.monotonic()
        c1 = c.client(1)
        ack, seen = publish_until_acked(c1, SUBJECT, b"line 100", "selftest-100")
        check(ack["seq"] == 101, "first publish after the kill acknowledged as %r" % ack)
        print("  leader n0 killed: first PubAck through n1 after %.1f s (before it: %s)"
              % (time.monotonic() - t_kill, _summary(seen)))
        for k in range(101, 110):
            ack = c1.publish_js(SUBJECT, b"line %d" % k, msg_id="selftest-%d" % k)
            check(ack["seq"] == k + 1, "publish %d with 2 of 3 nodes got %r" % (k, ack))
        c1.close()

        # Node 0 comes back with its store, catches up, and (as leader) shows all 110.
        c.start_node(0)
        c.wait_stream_current("CHAT", 0)
        c.move_stream_leader("CHAT", 0)
        with c.client(0) as c0:
            info = c0.stream_info("CHAT")
            check(info["cluster"]["leader"] == "n0", "leader is %r" % info["cluster"])
            check(info["state"]["messages"] == 110 and info["state"]["last_seq"] == 110,
                  "restarted n0 has %r" % info["state"])
            check(msg_ids(c0, "CHAT", 108, 110) == ["selftest-107", "selftest-108", "selftest-109"],
                  "n0's last messages are %r" % msg_ids(c0, "CHAT", 108, 110))
        print("  n0 restarted, current, leads with %d messages" % info["state"]["messages"])

        # Two of three stopped: no quorum, the publish is not acknowledged.
        for i in (1, 2):
            rc = c.stop(i)
            check(c.stopped_cleanly(i), "n%d exited with %r after SIGTERM, log:\n%s" % (i, rc, c.log_tail(i)))
        with c.client(0) as c0:
            try:
                ack = c0.publish_js(SUBJECT, b"no quorum", msg_id="selftest-nq", timeout=2.0)
                raise TestFailure("a publish with 1 of 3 nodes was acknowledged: %r" % ack)
            except (NatsTimeout, NatsStatusError) as e:
                print("  n1 n2 stopped: publish through n0 -> %s: %s" % (type(e).__name__, e))
        # Back to three: the same Nats-Msg-Id retried is stored once, whether or not the
        # unacknowledged publish made it (it can: a leader's uncommitted entry survives when
        # it wins the next election).
        c.start_node(1)
        c.start_node(2)
        with c.client(0) as c0:
            ack, seen = publish_until_acked(c0, SUBJECT, b"no quorum", "selftest-nq")
            last = c0.stream_info("CHAT")["state"]["last_seq"]
            ids = msg_ids(c0, "CHAT", 111, last)
            check(ids.count("selftest-nq") == 1 and ack["seq"] == 111 and last == 111,
                  "after the retry (ack %r) the stream holds %r from 111" % (ack, ids))
            print("  quorum back: retried selftest-nq acknowledged as %r (before it: %s)" % (ack, _summary(seen)))
            ack = c0.publish_js(SUBJECT, b"final", msg_id="selftest-final")
            check(ack["seq"] == 112 and "duplicate" not in ack, "final publish got %r" % ack)
        for i in range(3):
            c.wait_stream_current("CHAT", i)
        check(len(servers_in(folder)) == 3, "servers running: %r" % servers_in(folder))
        check(c.log_tail(0, 5) != "", "no log for n0")
    finally:
        c.close()
    check(not servers_in(folder), "nats-server left running after close: %r" % servers_in(folder))
    check(not os.path.exists(folder), "%s left after close" % folder)
    return time.monotonic() - t0


def single_run():
    t0 = time.monotonic()
    c = NatsCluster(1)
    folder = c.dir
    try:
        c.start()
        check("cluster" not in c.config(0), "single server has a cluster block:\n" + c.config(0))
        with c.client(0) as cl:
            cl.stream_create("CHAT", [SUBJECT])
            for k in range(10):
                check(cl.publish_js(SUBJECT, b"%d" % k, msg_id="one-%d" % k)["seq"] == k + 1, "publish %d" % k)
            check(cl.publish_js(SUBJECT, b"3", msg_id="one-3").get("duplicate") is True, "no duplicate flag")
            h, data = cl.request("nobody.listens", b"x", timeout=5)
            check(h.status == 503 and data == b"", "a request nobody answers got %r %r" % (h.status, data))
        c.stop(0)
        check(c.stopped_cleanly(0), "no clean shutdown on SIGTERM:\n" + c.log_tail(0))
        c.start_node(0)
        with c.client(0) as cl:
            check(cl.stream_info("CHAT")["state"]["messages"] == 10, "the store did not survive a restart")
        c.kill(0)
        c.start_node(0)
        with c.client(0) as cl:
            check(cl.publish_js(SUBJECT, b"after", msg_id="one-after")["seq"] == 11, "publish after kill -9")
    finally:
        c.close()
    check(not servers_in(folder), "nats-server left running after close: %r" % servers_in(folder))
    check(not os.path.exists(folder), "%s left after close" % folder)
    return time.monotonic() - t0


# ---- --facts: timelines of what clients see --------------------------------------------------

def _probe(cl, what, timeout, unacked):
    try:
        if what == "publish":
            msg_id = "probe-%.6f" % time.time()
            try:
                r = cl.publish_js(SUBJECT, b"probe", msg_id=msg_id, timeout=timeout)
            except NatsTimeout:
                unacked.append(msg_id)
                raise
            return "PubAck seq %d" % r["seq"]
        if what == "JS.API.INFO":
            cl.account_info(timeout=timeout)
            return "answered"
        if what == "STREAM.INFO CHAT":
            r = cl.stream_info("CHAT", timeout=timeout)
            return "answered, leader=%s" % r["cluster"].get("leader")
        if what == "STREAM.INFO absent":
            cl.stream_info("ABSENT", timeout=timeout)
            return "answered?!"
    except NatsTimeout:
        return "no reply in %.0f s" % timeout
    except NatsStatusError as e:
        return "status %s" % e.status
    except JetStreamError as e:
        return "error %s/%s %s" % (e.code, e.err_code, e.description)


def _timeline(c, via, whats, seconds, until=None, timeout=1.0):
    """Asks each of whats through node via over and over; prints each change with its time.
    Returns the Nats-Msg-Ids of the publishes that got no reply at all (a 503 is not a
    proposal: nobody took the message)."""
    t0 = time.monotonic()
    last = {}
    unacked = []
    with c.client(via) as cl:
        while time.monotonic() - t0 < seconds:
            for w in whats:
                t = time.monotonic() - t0
                out = _probe(cl, w, timeout, unacked)
                if out != last.get(w):
                    print("    %5.1f s  %-19s %s" % (t, w, out))
                    last[w] = out
            if until is not None and until(last):
                break
            time.sleep(0.05)
    return unacked


def facts():
    whats = ["publish", "STREAM.INFO CHAT", "STREAM.INFO absent", "JS.API.INFO"]
    with NatsCluster(3, name="facts") as c:
        with c.client(0) as cl:
            cl.stream_create("CHAT", [SUBJECT], replicas=3)
        meta = c.meta_leader(0)
        stream = (meta + 1) % 3
        c.move_stream_leader("CHAT", stream)
        via = 3 - meta - stream
        print("kill -9 the stream leader n%d (meta leader n%d stays), asking through n%d:" % (stream, meta, via))
        c.kill(stream)
        _timeline(c, via, whats, 30, until=lambda l: l["publish"].startswith("PubAck"))
        c.start_node(stream)
        c.wait_stream_current("CHAT", stream)

        meta = c.meta_leader(0)
        stream = (meta + 1) % 3
        c.move_stream_leader("CHAT", stream)
        via = 3 - meta - stream
        print("kill -9 the meta leader n%d (stream leader n%d stays), asking through n%d:" % (meta, stream, via))
        c.kill(meta)
        _timeline(c, via, whats, 30, until=lambda l: l["STREAM.INFO absent"].startswith("error 404"))
        c.start_node(meta)
        c.wait_stream_current("CHAT", meta)

        leader = c.stream_leader("CHAT")
        if c.meta_leader(leader) != leader:
            # one node leading both, so that one SIGTERM shows both hand-overs
            c.move_stream_leader("CHAT", c.meta_leader(leader))
            leader = c.stream_leader("CHAT")
        via = (leader + 1) % 3
        print("SIGTERM the stream and meta leader n%d, asking through n%d:" % (leader, via))
        c.stop(leader)
        _timeline(c, via, whats, 30, until=lambda l: l["publish"].startswith("PubAck")
                  and l["STREAM.INFO absent"].startswith("error 404"))
        print("  meta leader now n%d" % c.meta_leader(via))
        c.start_node(leader)
        c.wait_stream_current("CHAT", leader)

        keep = c.stream_leader("CHAT")
        others = [i for i in range(3) if i != keep]
        print("SIGTERM n%d and n%d, keeping the stream leader n%d (meta leader n%d), asking through it:"
              % (others[0], others[1], keep, c.meta_leader(keep)))
        for i in others:
            c.stop(i)
        unacked = _timeline(c, keep, whats, 25, timeout=2.0)
        for i in others:
            c._spawn(i)     # both at once: neither alone would give the meta group a quorum
        print("  both started again:")
        _timeline(c, keep, whats, 30, timeout=2.0, until=lambda l: l["publish"].startswith("PubAck")
                  and l["JS.API.INFO"] == "answered")
        c.wait_ready()
        with c.client(keep) as cl:
            ids = msg_ids(cl, "CHAT", 1, cl.stream_info("CHAT")["state"]["last_seq"])
        print("  of the %d publishes without a reply while n%d was alone, %d are in the stream now"
              " (stream leader now n%d)" % (len(unacked), keep, sum(1 for i in unacked if i in ids),
                                           c.stream_leader("CHAT")))

        keep = (c.stream_leader("CHAT") + 1) % 3
        others = [i for i in range(3) if i != keep]
        print("SIGTERM n%d and n%d, keeping the follower n%d (meta leader n%d), asking through it:"
              % (others[0], others[1], keep, c.meta_leader(keep)))
        for i in others:
            c.stop(i)
        _timeline(c, keep, whats, 25, timeout=2.0)


def main():
    args = sys.argv[1:]
    if args == ["--facts"]:
        facts()
        return
    runs = 1
    if args[:1] == ["--runs"] and len(args) == 2:
        runs = int(args[1])
    elif args:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    for r in range(runs):
        try:
            t_cluster = cluster_run()
            t_single = single_run()
            check(t_cluster < 60, "the cluster run took %.0f s" % t_cluster)
        except TestFailure as e:
            print("FAIL run %d: %s" % (r + 1, e))
            sys.exit(1)
        print("PASS run %d: cluster %.1f s, single server %.1f s" % (r + 1, t_cluster, t_single))


if __name__ == "__main__":
    main()

"""cluster_bench: the cluster cases of the chatrelay benchmark (issue 14, docs/BENCHMARKS.md
"Cluster mode").  Run it as `bench/run-bench --cluster` (all three) or `--cases g`, `--cases hi`:

  g  CPU per delivery: case (b)'s load (100 clients, 10 senders, window 64) against a single
     relay and against a relay that is one node of a 3-server NATS JetStream cluster (R3
     stream), every client on that node; the variants alternate run by run.
  h  latency across nodes: one sender at a fixed rate (--rates, 200 and 1000 lines/s) and 20
     receivers, on a single relay, on one cluster node, and with the sender on node 1 and the
     receivers on node 2 (one loadgen, so one monotonic clock at both ends); alternating.
  i  catch-up: nodes 1 and 2 up, node 2 stopped with Ctrl+C, --catchup-lines (100,000) lines
     pushed through node 1 by 10 senders, node 2 started again on its database: the time until
     its history.db has applied every record the stream held (polled read-only every 50 ms,
     and the relay's own log lines "applying the stream from ..." / "ready at stream sequence").

The NATS servers are tests/e2e/nats_cluster.NatsCluster (Debian's nats-server, JetStream,
loopback, routes between all three), started once for the whole run; the stream is deleted
between runs so every run starts empty.  Pinning: the relays and their (one, shared)
wineserver on CPU 0, as in the other cases; the loadgen and the three nats-servers on CPU 1.
CPU seconds come from /proc/PID/stat (utime + stime) over the loadgen's send phase (g, h) or
the catch-up (i): the relay process, this prefix's wineserver, and the nats-servers together.
"""
import argparse
import contextlib
import os
import re
import resource
import sqlite3
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "e2e"))
from nats_cluster import JetStreamError, NatsCluster, NatsError  # noqa: E402

NATS_CPU = "1"
STREAM = "CHATRELAY"
CASES = "ghi"
G_LOAD = dict(clients=100, senders=10, lines=3000)        # case (b) with 3,000 lines per sender
H_RECEIVERS = 20
H_SECONDS = {200: 15.0, 1000: 10.0}                       # at other rates: 10 s
H_WINDOW = 8192                                            # never the limit at a fixed rate
I_SENDERS = 10
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z ", re.M)


class ClusterBenchError(Exception):
    pass


def log(msg):
    print("run-bench: " + msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def cpus(cpu, pin):
    """Children started inside inherit this CPU (fork copies the calling thread's affinity)."""
    if not pin:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(cpu)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


class PinnedNatsCluster(NatsCluster):
    pin = True

    def _spawn(self, i):
        with cpus(NATS_CPU, self.pin):
            NatsCluster._spawn(self, i)


def log_ms(line_text):
    """The UTC time of a relay log line, in ms since the epoch."""
    m = LOG_TIME.match(line_text)
    if not m:
        return None
    import calendar
    t = time.strptime(m.group(1)[:19], "%Y-%m-%dT%H:%M:%S")
    return calendar.timegm(t) * 1000 + int(m.group(1)[20:23])


def find_log_line(text, needle):
    for line in text.splitlines():
        if needle in line:
            return line
    return None


class Bench:
    def __init__(self, rb, ctx, a):
        self.rb = rb
        self.ctx = ctx
        self.a = a
        self.nats = None
        self.hz = os.sysconf("SC_CLK_TCK")

    # ---- the NATS servers and the stream ----------------------------------------------

    def start_nats(self):
        log("starting 3 nats-servers (JetStream, loopback, on CPU %s)" % (NATS_CPU if self.ctx.pin else "any"))
        PinnedNatsCluster.pin = self.ctx.pin
        self.nats = PinnedNatsCluster(3, name="chatrelay-bench")
        self.nats.start(timeout=60)
        self.nats_pids = [self.nats.pid(i) for i in range(3)]
        if self.ctx.pin:
            for pid in self.nats_pids:
                if self.rb.affinity(pid) != [int(NATS_CPU)]:
                    raise ClusterBenchError("nats-server %d runs on CPUs %s" % (pid, self.rb.affinity(pid)))
        self.nats_version = subprocess.run([self.nats.exe, "--version"], stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT).stdout.decode(errors="replace").strip()

    def delete_stream(self):
        with self.nats.client(0, name="bench") as c:
            try:
                c.stream_delete(STREAM)
            except JetStreamError as e:
                if e.err_code != 10059:     # stream not found: nothing to delete
                    raise

    def stream_info(self):
        with self.nats.client(0, name="bench") as c:
            return c.stream_info(STREAM)

    def urls(self, first):
        """Every server's URL, the node's own server first (the recommended deployment: each
        relay connects to its local server, the others are fallbacks)."""
        u = self.nats.urls()
        return ",".join([u[first]] + [x for i, x in enumerate(u) if i != first])

    # ---- relays -----------------------------------------------------------------------

    def relay(self, tag, node=None, server=0, db=None, exe=None):
        """A relay; node: a cluster node of that name, connected to server first."""
        r = self.rb.Relay(self.rb.FAST_FLAGS, self.ctx.env, tag, db=db)
        r.exe = exe or self.ctx.exe
        r.node = node
        r.extra = ["--cluster", self.urls(server), "--node", node] if node else []
        return r

    def start(self, r, keep_db=False):
        r.start(r.exe, True, None, self.ctx.pin, extra=r.extra, keep_db=keep_db)
        if r.node:
            self.wait_log(r, "cluster: ready at stream sequence", 60)

    def wait_log(self, r, needle, timeout):
        deadline = time.monotonic() + timeout
        while needle not in r.log():
            if r.proc.poll() is not None:
                raise ClusterBenchError("relay %s exited with %s: %s" % (r.log_path, r.proc.returncode,
                                                                          r.log()[-1500:]))
            if time.monotonic() > deadline:
                raise ClusterBenchError("relay %s: no %r within %.0f s: %s" % (r.log_path, needle, timeout,
                                                                                 r.log()[-1500:]))
            time.sleep(0.05)

    def stop_all(self, relays):
        stats = {}
        err = None
        for r in relays:
            if r.proc is None or r.proc.poll() is not None:
                continue
            try:
                stats[r.log_path] = r.stop()
            except self.rb.BenchError as e:
                err = e
            finally:
                r.kill()
        if err:
            raise err
        return stats

    def perf_start(self, tag):
        """--perf: perf record -g of CPU 0 (the relays and the wineserver), CPU-wide: sampling
        one process with -p slows it ~3x (docs/BENCHMARKS.md, "How it is measured")."""
        if not self.a.perf:
            return None
        path = os.path.join(self.rb.BENCH_DIR, "work", tag + ".perf")
        p = subprocess.Popen(["perf", "record", "-F", "999", "-g", "-C", self.rb.RELAY_CPU, "-o", path],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)     # attached before the work starts
        log("perf record of CPU %s to %s" % (self.rb.RELAY_CPU, path))
        p.path = path
        return p

    def perf_note(self, p, relays):
        """Which processes are ours, for bench/perf-functions."""
        if p is None:
            return
        with open(p.path + ".pids", "w") as f:
            f.write("".join("relay %d\n" % r.proc.pid for r in relays if r.proc))
            f.write("wineserver %d\n" % self.ctx.server_pid)

    def perf_stop(self, p):
        if p is None:
            return
        p.send_signal(2)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    # ---- one loadgen run --------------------------------------------------------------

    def loadgen(self, port, relay_pids, args, recv_port=None, timeout=900):
        """Runs the loadgen (pinned to CPU 1) and returns its summary, with the busy share of
        both CPUs during the run and what processes other than ours took of them."""
        rb, ctx = self.rb, self.ctx
        cmd = [ctx.loadgen, "--port", str(port), "--relay-pid", str(relay_pids[0]),
               "--server-pid", str(ctx.server_pid)]
        if recv_port:
            cmd += ["--recv-port", str(recv_port)]
        for pid in self.nats_pids:
            cmd += ["--extra-pid", str(pid)]
        for k, v in args.items():
            cmd += ["--" + k.replace("_", "-"), str(v)]
        ours0 = list(relay_pids) + [ctx.server_pid]
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        c0, c1 = rb.cpu_ticks(0), rb.cpu_ticks(1)
        own0 = [rb.proc_ticks(p) for p in ours0]
        nats0 = [rb.proc_ticks(p) for p in self.nats_pids]
        p = subprocess.Popen(rb.pinned(rb.LOADGEN_CPU, cmd, ctx.pin), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        wall = time.monotonic() - t0
        own = sum(rb.proc_ticks(x) for x in ours0) - sum(own0)
        nats = sum(rb.proc_ticks(x) for x in self.nats_pids) - sum(nats0)
        kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)   # the loadgen's whole run, reaped
        lg = (kids1.ru_utime + kids1.ru_stime - kids0.ru_utime - kids0.ru_stime) * self.hz
        d0 = [b - a for a, b in zip(c0, rb.cpu_ticks(0))]
        d1 = [b - a for a, b in zip(c1, rb.cpu_ticks(1))]
        text = out.decode(errors="replace")
        ctx.raw(" ".join(cmd) + "\n" + text)
        s = rb.parse_summary(text)
        if s is None:
            raise ClusterBenchError("loadgen printed no summary (rc %d): %s" % (p.returncode,
                                                                               err.decode(errors="replace")))
        s["rc"] = p.returncode
        if wall > 0:
            hz = self.hz
            s["cpu0_busy_pct"] = 100.0 * d0[0] / hz / wall
            s["cpu1_busy_pct"] = 100.0 * d1[0] / hz / wall
            if ctx.pin:
                s["cpu0_others_pct"] = max(0.0, 100.0 * (d0[0] - own) / hz / wall)
                s["cpu1_others_pct"] = max(0.0, 100.0 * (d1[0] - nats - lg) / hz / wall)
        ctx.raw("cpu0 busy %.0f%% (others %.0f%%), cpu1 busy %.0f%% (others %.0f%%) over %.1f s" % (
            s.get("cpu0_busy_pct", -1), s.get("cpu0_others_pct", -1), s.get("cpu1_busy_pct", -1),
            s.get("cpu1_others_pct", -1), wall))
        rec = s.get("received") or 0
        if rec:
            s["relay_cpu_per_100k"] = 1e5 * (s["cpu_relay_s"] + s["cpu_server_s"]) / rec
            s["relay_only_per_100k"] = 1e5 * s["cpu_relay_s"] / rec
            s["wineserver_per_100k"] = 1e5 * s["cpu_server_s"] / rec
            if s.get("cpu_extra_s", -1) >= 0:
                s["nats_cpu_per_100k"] = 1e5 * s["cpu_extra_s"] / rec
        span = s.get("send_s") or 0
        if span > 0:
            # shares of one CPU over the send phase, the window the CPU seconds cover
            s["relay_busy_pct"] = 100.0 * (s["cpu_relay_s"] + s["cpu_server_s"]) / span
            s["cpu1_ours_pct"] = 100.0 * (max(0.0, s.get("cpu_extra_s", 0)) + s.get("cpu_loadgen_s", 0)) / span
        return s

    # ---- (g) CPU per delivery ---------------------------------------------------------

    def case_g(self, variant, rep):
        tag = "g-%s-%d" % (variant, rep)
        load = dict(G_LOAD, window=self.a.window)
        load["lines"] = max(1, int(load["lines"] * self.a.scale))
        if variant == "cluster":
            self.delete_stream()
        r = self.relay(tag, node="g1" if variant == "cluster" else None)
        try:
            self.start(r)
            perf = self.perf_start(tag) if variant == "cluster" else None
            self.perf_note(perf, [r])
            try:
                res = self.loadgen(r.port, [r.proc.pid], load)
            finally:
                self.perf_stop(perf)
            if variant == "cluster":
                info = self.stream_info()
                res["replicas"] = info["config"]["num_replicas"]
                res["stream_leader"] = info.get("cluster", {}).get("leader")
                res["stream_msgs"] = info["state"]["messages"]
        finally:
            stats = self.stop_all([r])
        res.update(stats.get(r.log_path, {}))
        log("g/%s #%d: %s deliveries/s, relay+wineserver %.2f s per 100k deliveries, nats %.2f s, status %s%s" % (
            variant, rep + 1, self.rb.fmt_int(res.get("deliveries_per_s", 0)), res.get("relay_cpu_per_100k", -1),
            res.get("nats_cpu_per_100k", -1), res.get("status"),
            ", stream R%s led by %s" % (res.get("replicas"), res.get("stream_leader")) if variant == "cluster" else ""))
        return res

    # ---- (h) latency across nodes -----------------------------------------------------

    def case_h(self, rate, variant, rep):
        tag = "h%d-%s-%d" % (rate, variant, rep)
        secs = H_SECONDS.get(rate, 10.0) * self.a.scale
        load = dict(clients=H_RECEIVERS + 1, senders=1, lines=max(10, int(rate * secs)), rate=rate, window=H_WINDOW)
        relays = []
        try:
            if variant == "single":
                r1 = self.relay(tag)
                relays = [r1]
                self.start(r1)
                recv = None
            else:
                self.delete_stream()
                r1 = self.relay(tag + "-n1", node="h1", server=0)
                r2 = self.relay(tag + "-n2", node="h2", server=1)
                relays = [r1, r2]
                self.start(r1)
                self.start(r2)
                recv = r2.port if variant == "cross" else None
            res = self.loadgen(r1.port, [r.proc.pid for r in relays], load, recv_port=recv)
            if variant != "single":
                info = self.stream_info()
                res["stream_leader"] = info.get("cluster", {}).get("leader")
        finally:
            self.stop_all(relays)
        log("h/%d/%s #%d: %s lines/s, p50 %.1f ms, p99 %.1f ms, max %.1f ms, status %s" % (
            rate, variant, rep + 1, self.rb.fmt_int(res.get("lines_per_s", 0)), res.get("lat_p50_us", 0) / 1000,
            res.get("lat_p99_us", 0) / 1000, res.get("lat_max_us", 0) / 1000, res.get("status")))
        return res

    # ---- (i) catch-up -----------------------------------------------------------------

    def applied_seq(self, db):
        """The stream sequence a node's history.db applied, read-only (None while unreadable)."""
        try:
            con = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=0.2)
            try:
                row = con.execute("SELECT applied_seq FROM cluster").fetchone()
                return row[0] if row else 0
            finally:
                con.close()
        except sqlite3.Error:
            return None

    def case_i(self, rep, build="A"):
        """build A: --exe on both nodes; B: --compare-exe on both."""
        rb = self.rb
        exe = self.ctx.compare_exe if build == "B" else self.ctx.exe
        lines = max(I_SENDERS, int(self.a.catchup_lines * self.a.scale))
        self.delete_stream()
        r1 = self.relay("i%s-%d-n1" % (build, rep), node="i1", server=0, exe=exe)
        r2 = self.relay("i%s-%d-n2" % (build, rep), node="i2", server=1, exe=exe)
        res = dict(lines=lines, build=build)
        r2b = None
        try:
            self.start(r1)
            self.start(r2)
            stats2 = self.stop_all([r2])
            log("i #%d: node 2 stopped (%s); pushing %s lines through node 1" % (
                rep + 1, "clean" if stats2 else "?", rb.fmt_int(lines)))
            push = self.loadgen(r1.port, [r1.proc.pid], dict(clients=I_SENDERS + 1, senders=I_SENDERS,
                                                           lines=lines // I_SENDERS, window=rb.WINDOW))
            if push.get("status") != "ok":
                raise ClusterBenchError("the push through node 1 failed: %s" % push.get("status"))
            res["push_lines_per_s"] = push.get("lines_per_s")
            res["push_status"] = push.get("status")
            target = self.settled_seq(r1)
            start_seq = self.applied_seq(r2.db) or 0
            res["records"] = target - start_seq
            # node 2 again, on its database, with a log of its own
            r2b = self.relay("i%s-%d-n2-restart" % (build, rep), node="i2", server=1, db=r2.db, exe=exe)
            samples = []
            perf = self.perf_start("i%s-%d" % (build, rep))
            t0 = time.monotonic()
            r2b.start(exe, True, None, self.ctx.pin, extra=r2b.extra, keep_db=True, wait=False)
            self.perf_note(perf, [r1, r2b])
            pid = r2b.proc.pid
            ours = [pid, self.ctx.server_pid]
            deadline = t0 + 600
            while True:
                now = time.monotonic()
                seq = self.applied_seq(r2.db)
                samples.append((now, seq, sum(rb.proc_ticks(p) for p in ours),
                                sum(rb.proc_ticks(p) for p in self.nats_pids), rb.cpu_ticks(rb.RELAY_CPU)[0]))
                if seq is not None and seq >= target:
                    break
                if r2b.proc.poll() is not None:
                    raise ClusterBenchError("node 2 exited with %s while catching up: %s" % (
                        r2b.proc.returncode, r2b.log()[-1500:]))
                if now > deadline:
                    raise ClusterBenchError("node 2 applied %s of %d after 600 s" % (seq, target))
                time.sleep(0.05)
            t_done = samples[-1][0]
            self.perf_stop(perf)
            # the first sample that saw a sequence applied past where node 2 stopped
            first = next(s for s in samples if s[1] is not None and s[1] > start_seq)
            res["to_first_row_s"] = first[0] - t0
            res["until_all_s"] = t_done - t0
            res["poll_s"] = t_done - first[0]
            # CPU between the first progress seen and the last record applied
            res["relay_cpu_pct"] = 100.0 * (samples[-1][2] - first[2]) / self.hz / max(1e-9, t_done - first[0])
            res["nats_cpu_pct"] = 100.0 * (samples[-1][3] - first[3]) / self.hz / max(1e-9, t_done - first[0])
            # what else ran on CPU 0 meanwhile (node 1 is idle: no client sends)
            res["cpu0_others_pct"] = max(0.0, 100.0 * ((samples[-1][4] - first[4]) - (samples[-1][2] - first[2]))
                                         / self.hz / max(1e-9, t_done - first[0]))
            self.wait_log(r2b, "cluster: ready at stream sequence", 60)
            text = r2b.log()
            a_line = find_log_line(text, "cluster: applying the stream from sequence")
            r_line = find_log_line(text, "cluster: ready at stream sequence")
            if a_line and r_line:
                res["log_catchup_s"] = (log_ms(r_line) - log_ms(a_line)) / 1000.0
                res["ready_seq"] = int(re.search(r"ready at stream sequence (\d+)", r_line).group(1))
            n1 = self.count_rows(r1.db)
            n2 = self.count_rows(r2.db)
            res["rows_equal"] = n1 == n2
            res["rows"] = n2
            stats = self.stop_all([r2b])
            st = stats.get(r2b.log_path, {})
            res["commits"] = st.get("commits")
            res["stored"] = st.get("stored")
            res["turns"] = st.get("turns")
            self.ctx.raw("i%s #%d: %r" % (build, rep + 1, res))
        finally:
            self.stop_all([r for r in (r1, r2, r2b) if r is not None])
        secs = res.get("log_catchup_s") or res["poll_s"]
        res["records_per_s"] = res["records"] / secs if secs > 0 else 0
        res["pull_ms"] = 1000.0 * secs / max(1, res["records"] / 256.0)
        if res.get("commits"):
            res["per_commit"] = (res.get("stored") or 0) / res["commits"]
        res["status"] = "ok" if res["rows_equal"] else "rows differ"
        log("i%s #%d: %s records caught up in %.2f s (log) / %.2f s (polled): %s records/s; relay+wineserver %.0f%%, "
            "nats %.0f%% of a CPU; %s commits in %s loop turns; %s" % (
                "" if build == "A" else " (build B)", rep + 1, rb.fmt_int(res["records"]),
                res.get("log_catchup_s", -1), res["poll_s"],
                rb.fmt_int(res["records_per_s"]), res["relay_cpu_pct"], res["nats_cpu_pct"], res.get("commits"),
                res.get("turns"), res["status"]))
        return res

    def settled_seq(self, r1):
        """The stream's last sequence once node 1 applied it and nothing came for 0.5 s (the
        loadgen's clients leave as it exits: their leave records follow the last line)."""
        deadline = time.monotonic() + 60
        last, since = None, time.monotonic()
        while True:
            seq = self.stream_info()["state"]["last_seq"]
            if seq != last:
                last, since = seq, time.monotonic()
            elif time.monotonic() - since >= 0.5 and self.applied_seq(r1.db) == seq:
                return seq
            if time.monotonic() > deadline:
                raise ClusterBenchError("the stream did not settle after the push (last %s)" % last)
            time.sleep(0.1)

    def count_rows(self, db):
        con = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=5)
        try:
            return con.execute("SELECT count(*), max(id) FROM messages").fetchone()
        finally:
            con.close()


# ---- tables ------------------------------------------------------------------------------

def col(runs, key):
    return [r.get(key) for r in runs if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]


def spread(rb, runs, key, fmt):
    return rb.spread(col(runs, key), fmt)


def med(runs, key):
    v = col(runs, key)
    return statistics.median(v) if v else None


def table_g(rb, results):
    f2 = lambda v: "%.2f" % v   # noqa: E731
    out = ["| variant | deliveries/s | lines/s | relay + wineserver CPU s per 100k deliveries | relay : wineserver "
           "| nats-servers CPU s per 100k deliveries | relay + wineserver, share of CPU 0 "
           "| nats-servers + loadgen, share of CPU 1 | p50 ms | p99 ms | lost | CPU 0 used by others |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    names = {"single": "single relay (no --cluster)", "cluster": "node of a 3-server cluster, R3"}
    for variant, runs in results.items():
        r, w = med(runs, "relay_only_per_100k"), med(runs, "wineserver_per_100k")
        out.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            names[variant], spread(rb, runs, "deliveries_per_s", rb.fmt_int), rb.fmt_int(med(runs, "lines_per_s") or 0),
            spread(rb, runs, "relay_cpu_per_100k", f2),
            "%.0f : %.0f" % (100 * r / (r + w), 100 * w / (r + w)) if r is not None and w and r + w > 0 else "n/a",
            spread(rb, runs, "nats_cpu_per_100k", f2),
            spread(rb, runs, "relay_busy_pct", lambda v: "%.0f%%" % v),
            spread(rb, runs, "cpu1_ours_pct", lambda v: "%.0f%%" % v),
            rb.ms(med(runs, "lat_p50_us") or 0), rb.ms(med(runs, "lat_p99_us") or 0),
            sum(x.get("lost", 0) if isinstance(x.get("lost"), int) else 1 for x in runs),
            spread(rb, runs, "cpu0_others_pct", lambda v: "%.0f%%" % v)))
    return out


def table_h(rb, results):
    out = ["| rate lines/s | sender -> receivers | lines/s sent | p50 ms | p99 ms | max ms | lost "
           "| CPU 0 used by others |",
           "|---|---|---|---|---|---|---|---|"]
    names = {"single": "one relay (no --cluster)", "same": "cluster: node 1 -> node 1",
             "cross": "cluster: node 1 -> node 2"}
    f1 = lambda v: "%.1f" % (v / 1000.0)   # noqa: E731
    for (rate, variant), runs in results.items():
        out.append("| %d | %s | %s | %s | %s | %s | %s | %s |" % (
            rate, names[variant], rb.fmt_int(med(runs, "lines_per_s") or 0), spread(rb, runs, "lat_p50_us", f1),
            spread(rb, runs, "lat_p99_us", f1), spread(rb, runs, "lat_max_us", f1),
            sum(x.get("lost", 0) if isinstance(x.get("lost"), int) else 1 for x in runs),
            spread(rb, runs, "cpu0_others_pct", lambda v: "%.0f%%" % v)))
    return out


def table_i(rb, runs):
    f2 = lambda v: "%.2f" % v   # noqa: E731
    out = ["| run | lines pushed (push lines/s) | records to apply | start -> first row applied s "
           "| start -> all applied s | catch-up s (relay log: applying -> ready) | records/s "
           "| relay + wineserver CPU | nats-servers CPU | ms per 256 records | records per commit | rows equal "
           "| CPU 0 used by others |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    builds = sorted(set(r["build"] for r in runs))
    for i, r in enumerate(runs):
        out.append("| %s | %s (%s) | %s | %.2f | %.2f | %s | %s | %.0f%% | %.0f%% | %.1f | %s | %s | %.0f%% |" % (
            "%d%s" % (i // len(builds) + 1, "" if len(builds) == 1 else " " + r["build"]), rb.fmt_int(r["lines"]),
            rb.fmt_int(r.get("push_lines_per_s") or 0), rb.fmt_int(r["records"]),
            r["to_first_row_s"], r["until_all_s"], f2(r["log_catchup_s"]) if "log_catchup_s" in r else "n/a",
            rb.fmt_int(r["records_per_s"]), r["relay_cpu_pct"], r["nats_cpu_pct"], r["pull_ms"],
            "%.0f" % r["per_commit"] if r.get("per_commit") else "n/a",
            "yes (%s rows)" % rb.fmt_int(r["rows"][0]) if r["rows_equal"] else "NO", r.get("cpu0_others_pct", -1)))
    for b in builds:
        rs = [r for r in runs if r["build"] == b]
        out.append("| median%s | | | %.2f | %.2f | %s | %s | %.0f%% | %.0f%% | %.1f | | | |" % (
            "" if len(builds) == 1 else " " + b, med(rs, "to_first_row_s"), med(rs, "until_all_s"),
            f2(med(rs, "log_catchup_s") or 0), rb.fmt_int(med(rs, "records_per_s")), med(rs, "relay_cpu_pct"),
            med(rs, "nats_cpu_pct"), med(rs, "pull_ms")))
    return out


# ---- main --------------------------------------------------------------------------------

def main(rb, argv):
    ap = argparse.ArgumentParser(prog="run-bench --cluster", description="the cluster cases g, h, i")
    ap.add_argument("--cases", default=CASES, help="letters of g, h, i (default ghi)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--exe", default=os.path.join(rb.ROOT, "build", "windows", "chatrelay.exe"))
    ap.add_argument("--loadgen")
    ap.add_argument("--prefix")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply line counts and durations (a short try: 0.1)")
    ap.add_argument("--window", type=int, default=None,
                    help="case g: lines per sender in flight (default 64, as in a-f; more than ~300 lets a "
                         "client's queue pass the relay's 256 KiB bound)")
    ap.add_argument("--rates", default="200,1000", help="case h: the sender's lines/s, comma list")
    ap.add_argument("--catchup-lines", type=int, default=100000, help="case i: lines pushed while node 2 is down")
    ap.add_argument("--compare-exe", help="case i: another chatrelay.exe, run alternately with --exe (rows 'B')")
    ap.add_argument("--perf", action="store_true",
                    help="perf record -g of CPU 0 during each cluster run of g and each catch-up of i, to "
                         "build/bench/work/*.perf (bench/perf-functions reads them)")
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--raw")
    a = ap.parse_args(argv)
    a.window = a.window or rb.WINDOW
    cases = a.cases.replace(",", "")
    if not cases or any(c not in CASES for c in cases):
        log("--cluster takes cases of %s, not %r" % (CASES, a.cases))
        return 2

    class Ctx:
        pass
    ctx = Ctx()
    ctx.pin = not a.no_pin and os.cpu_count() >= 2
    prefix = a.prefix or os.path.join(rb.BENCH_DIR, "wineprefix")
    ctx.env = dict(os.environ)
    ctx.env["CHATRELAY_WINEPREFIX"] = ctx.env["WINEPREFIX"] = os.path.abspath(prefix)
    os.makedirs(rb.BENCH_DIR, exist_ok=True)
    raw_path = a.raw or os.path.join(rb.BENCH_DIR, "raw-cluster-%s.txt" % time.strftime("%Y%m%d-%H%M%S"))
    rawf = open(raw_path, "a")

    def raw(text):
        rawf.write(text.rstrip("\n") + "\n")
        rawf.flush()
    ctx.raw = raw
    b = Bench(rb, ctx, a)
    try:
        ctx.loadgen = a.loadgen or rb.build_loadgen()
        ctx.exe = rb.stage_exe(a.exe, "chatrelay.exe")
        ctx.compare_exe = rb.stage_exe(a.compare_exe, "chatrelay-compare.exe") if a.compare_exe else None
        st = os.stat(a.exe)
        head = subprocess.run(["git", "-C", rb.ROOT, "log", "-1", "--format=%h"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL).stdout.decode(errors="replace").strip()
        exe_info = "%s (%d bytes, built %s; checkout at %s)" % (
            os.path.relpath(a.exe, rb.ROOT), st.st_size, time.strftime("%Y-%m-%d %H:%M", time.localtime(st.st_mtime)),
            head)
        ctx.server_pid = rb.start_prefix(ctx.env, ctx.pin)
        b.start_nats()
    except (rb.BenchError, ClusterBenchError, NatsError, OSError, subprocess.SubprocessError) as e:
        log("setup failed: %s" % e)
        if b.nats:
            b.nats.close()
        rb.stop_prefix(ctx.env)
        return 2

    results_g, results_h, results_i = {}, {}, []
    load_before = open("/proc/loadavg").read().split()[:3]
    started = time.time()
    rates = [int(x) for x in a.rates.split(",") if x]
    try:
        for case in cases:
            if case == "g":
                for v in ("single", "cluster"):
                    results_g[v] = []
                for i in range(a.reps):
                    for v in ("single", "cluster"):
                        results_g[v].append(b.case_g(v, i))
            elif case == "h":
                for rate in rates:
                    for v in ("single", "same", "cross"):
                        results_h[(rate, v)] = []
                    for i in range(a.reps):
                        for v in ("single", "same", "cross"):
                            results_h[(rate, v)].append(b.case_h(rate, v, i))
            elif case == "i":
                for i in range(a.reps):
                    results_i.append(b.case_i(i))
                    if ctx.compare_exe:
                        results_i.append(b.case_i(i, "B"))
    except (rb.BenchError, ClusterBenchError, NatsError, OSError, subprocess.SubprocessError) as e:
        log("failed: %s" % e)
        b.nats.close()
        rb.stop_prefix(ctx.env)
        return 2
    b.nats.close()
    rb.stop_prefix(ctx.env)
    load_after = open("/proc/loadavg").read().split()[:3]

    print("chatrelay cluster benchmark, %s" % time.strftime("%Y-%m-%d %H:%M"))
    print("machine: %s" % rb.machine())
    print("relay: %s" % exe_info)
    if ctx.compare_exe:
        print("build B (case i): %s" % a.compare_exe)
    print("NATS: %s, 3 servers routed on 127.0.0.1 (tests/e2e/nats_cluster.py), stream %s created by the first "
          "relay (R3: 3 servers clustered)" % (b.nats_version, STREAM))
    print("pinning: %s" % ("relays + their wineserver on CPU %s; loadgen and the 3 nats-servers on CPU %s (taskset)"
                           % (rb.RELAY_CPU, NATS_CPU) if ctx.pin else "none"))
    print("relay options: %s, 64-byte lines" % " ".join(rb.FAST_FLAGS))
    print("load average before / after: %s / %s; %.0f s in all; raw: %s" % (
        " ".join(load_before), " ".join(load_after), time.time() - started, raw_path))
    if results_g:
        print()
        load = dict(G_LOAD)
        load["lines"] = max(1, int(load["lines"] * a.scale))
        print("(g) CPU per delivery: %d clients, %d senders x %s lines, window %d; min / median / max of %d run(s)" % (
            load["clients"], load["senders"], rb.fmt_int(load["lines"]), a.window, a.reps))
        print()
        print("\n".join(table_g(rb, results_g)))
        leaders = [r.get("stream_leader") for r in results_g.get("cluster", [])]
        print()
        print("stream replicas: %s; stream leader per cluster run: %s" % (
            ",".join(str(r.get("replicas")) for r in results_g.get("cluster", [])), ",".join(map(str, leaders))))
    if results_h:
        print()
        print("(h) latency: 1 sender, %d receivers, fixed rate (%s); send -> receipt, one monotonic clock; "
              "min / median / max of %d run(s)" % (H_RECEIVERS, ", ".join(
                  "%d lines/s for %.0f s" % (r, H_SECONDS.get(r, 10.0) * a.scale) for r in rates), a.reps))
        print()
        print("\n".join(table_h(rb, results_h)))
        leaders = ["%d/%s:%s" % (k[0], k[1], ",".join(str(r.get("stream_leader")) for r in v))
                   for k, v in results_h.items() if k[1] != "single"]
        print()
        print("stream leader per run: %s (node 1 connects to n0 first, node 2 to n1)" % "; ".join(leaders))
    if results_i:
        print()
        print("(i) catch-up: node 2 stopped, %s lines pushed through node 1 by %d senders, node 2 restarted"
              % (rb.fmt_int(max(I_SENDERS, int(a.catchup_lines * a.scale))), I_SENDERS))
        print()
        print("\n".join(table_i(rb, results_i)))
    bad = [r.get("status") for runs in list(results_g.values()) + list(results_h.values()) for r in runs
           if r.get("status") != "ok"] + [r.get("status") for r in results_i if r.get("status") != "ok"]
    print()
    print("zero lost lines and identical history in every run: %s" % ("met" if not bad else "MISSED (%s)" % ",".join(
        map(str, bad))))
    return 1 if bad else 0

"""nats_cluster: real nats-server processes for the cluster mode's end-to-end tests (issue 14),
and a raw-socket NATS client to look at what the relays put into JetStream.

  NatsClient   the core protocol over one TCP socket (INFO/CONNECT with headers, PUB/HPUB, SUB,
               MSG/HMSG, PING/PONG), request/reply, and the JetStream API calls a test needs
               (stream create/info/get/delete, a publish that returns its PubAck).
  NatsCluster  n nats-server processes on 127.0.0.1 with JetStream, each from a config file of
               its own, routed to each other (n=1: one server, no cluster block); stop, kill -9
               and restart a node with its store; logs kept for failure messages.

Every wait is for an event (a reply, a PONG, a log line, a process exit) with a timeout; a
timeout raises a TestFailure (NatsTimeout) naming what was awaited.  Errors from the server
arrive as exceptions that keep what it said: NatsStatusError (a status-only reply such as
503 no responders), JetStreamError (an API reply carrying {"error": ...}).

What nats-server 2.9.10 (Debian's) does that the cluster tests must expect, seen with
`python3 tests/e2e/selftest_nats.py --facts` (3 nodes, an R3 stream, loopback):
- kill -9 of a stream's leader: publishes through a survivor get 503 (no responders: only a
  leader subscribes to the stream's subjects) until a new leader is elected, 4-8 s later (raft
  election timeout 4-9 s); STREAM.INFO of that stream gets no reply meanwhile.  kill -9 of the
  meta leader leaves publishes alone; the API calls only the meta leader answers ($JS.API.INFO,
  STREAM.INFO of an absent stream, STREAM.CREATE) get no reply for 4-6 s.
- SIGTERM of a leader (stream and meta) hands leadership over: no publish fails.  The process
  exits with 1 on SIGTERM, 0 on SIGINT, both clean ("Server Exiting..").
- two of three stopped: through the survivor, if it led the stream, a publish gets NO reply
  (it is proposed, not committed) until the leader notices the lost quorum, 10-20 s, then 503;
  STREAM.INFO keeps answering, leader=itself, then leader=None.  A survivor that did not lead
  answers 503 at once.  The meta API answers 503 err_code 10008 ("JetStream system
  temporarily unavailable") once the survivor's meta group has been leaderless for 10 s.
- a publish that got no reply may still be stored when the quorum comes back (the old leader
  won the election and committed its entries) or may be lost (another won): only a retry with
  the same Nats-Msg-Id, within the duplicate window, makes the outcome known.
"""
import atexit
import base64
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from harness import TestFailure, free_port


def _deadline(timeout):
    return time.monotonic() + timeout


def _left(deadline):
    return deadline - time.monotonic()


class NatsError(TestFailure):
    """The connection broke, the server sent -ERR, or it said something this client cannot read."""


class NatsTimeout(NatsError):
    """Nothing came within the timeout (a request without a reply, a PING without its PONG)."""


class NatsStatusError(NatsError):
    """A reply that is only a status (no responders: 503, request timeout: 408)."""

    def __init__(self, what, headers):
        self.status = headers.status
        self.description = headers.description
        NatsError.__init__(self, "%s: status %s %s" % (what, headers.status, headers.description))


class JetStreamError(NatsError):
    """A JetStream API reply with an error: code (HTTP-like, 503, 404...), err_code (JetStream's
    own, 10059 stream not found...), description; reply is the whole decoded reply."""

    def __init__(self, what, reply):
        err = reply.get("error", {})
        self.code = err.get("code")
        self.err_code = err.get("err_code")
        self.description = err.get("description", "")
        self.reply = reply
        NatsError.__init__(self, "%s: JetStream error %s (err_code %s): %s"
                           % (what, self.code, self.err_code, self.description))


# ---- headers --------------------------------------------------------------------------------

class NatsHeaders(dict):
    """Message headers: name -> value (the first of a repeated name; pairs keeps all, in order).
    status/description: from the "NATS/1.0 503 No Responders" line; status is an int or None."""

    def __init__(self, pairs=(), status=None, description=""):
        dict.__init__(self)
        self.pairs = list(pairs)
        for k, v in self.pairs:
            self.setdefault(k, v)
        self.status = status
        self.description = description


def encode_headers(headers):
    """dict or list of pairs -> the header block of an HPUB ("NATS/1.0\\r\\n...\\r\\n\\r\\n")."""
    pairs = headers.items() if isinstance(headers, dict) else headers
    out = ["NATS/1.0\r\n"]
    for k, v in pairs:
        k, v = str(k), str(v)
        if any(c in k for c in ":\r\n ") or any(c in v for c in "\r\n"):
            raise ValueError("header %r: %r cannot be sent" % (k, v))
        out.append("%s: %s\r\n" % (k, v))
    out.append("\r\n")
    return "".join(out).encode("utf-8")


def parse_headers(block):
    """The header block of an HMSG (or of a stored message) -> NatsHeaders."""
    text = block.decode("utf-8", "replace")
    lines = text.split("\r\n")
    first = lines[0]
    if not first.startswith("NATS/1.0"):
        raise NatsError("header block does not start with NATS/1.0: %r" % text[:200])
    status, description = None, ""
    rest = first[len("NATS/1.0"):].strip()
    if rest:
        code, _, description = rest.partition(" ")
        try:
            status = int(code)
        except ValueError:
            raise NatsError("bad status in header line %r" % first)
    pairs = []
    for line in lines[1:]:
        if not line:
            continue
        k, sep, v = line.partition(":")
        if not sep:
            raise NatsError("header line without ':': %r" % line)
        pairs.append((k.strip(), v.strip()))
    return NatsHeaders(pairs, status, description.strip())


class NatsMsg:
    """One MSG/HMSG: subject, sid, reply (None without one), headers (NatsHeaders, empty for a
    MSG), data (bytes), at (time.monotonic() when it was read)."""

    __slots__ = ("subject", "sid", "reply", "headers", "data", "at")

    def __init__(self, subject, sid, reply, headers, data):
        self.subject = subject
        self.sid = sid
        self.reply = reply
        self.headers = headers
        self.data = data
        self.at = time.monotonic()

    def json(self):
        return json.loads(self.data.decode("utf-8"))

    def __repr__(self):
        return "NatsMsg(%s sid=%s reply=%s status=%s %r)" % (self.subject, self.sid, self.reply,
                                                              self.headers.status, self.data[:80])


# ---- the client -----------------------------------------------------------------------------

def _hostport(url):
    """ "nats://127.0.0.1:4222", "127.0.0.1:4222" or a port number -> (host, port)."""
    if isinstance(url, int):
        return "127.0.0.1", url
    if "://" in url:
        url = url.split("://", 1)[1]
    host, _, port = url.rpartition(":")
    return host or "127.0.0.1", int(port)


class NatsClient:
    """One connection to one nats-server.  Messages of every subscription are kept per sid, in
    order, until a test takes them (next_msg); requests use one wildcard inbox subscription.
    The server's PINGs are answered whenever the client reads."""

    def __init__(self, url, name="chatrelay-e2e", timeout=10.0, echo=True, user=None, password=None, token=None):
        self.url = url
        self.host, self.port = _hostport(url)
        try:
            self.sock = socket.create_connection((self.host, self.port), timeout=timeout)
        except OSError as e:
            raise NatsError("connect to %s:%d: %s" % (self.host, self.port, e))
        self.buf = bytearray()
        self.closed = False
        self.info = None
        self.infos = []             # every INFO, the first one included
        self.pongs = 0              # PONGs received
        self.next_sid = 1
        self.msgs = {}              # sid -> [NatsMsg] not taken yet
        self.inbox_prefix = "_INBOX.%016x" % random.getrandbits(64)
        self.inbox_sid = None
        self.next_req = 1
        deadline = _deadline(timeout)
        while self.info is None:
            self._read_op(deadline, "INFO from %s:%d" % (self.host, self.port))
        connect = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True,
                   "protocol": 1, "echo": echo, "name": name, "lang": "python-e2e", "version": "0"}
        if user is not None:
            connect["user"], connect["pass"] = user, password
        if token is not None:
            connect["auth_token"] = token
        self._send(b"CONNECT " + json.dumps(connect).encode() + b"\r\n")
        self.flush(_left(deadline))     # a refused CONNECT shows up as -ERR before the PONG

    # -- bytes --

    def _send(self, data):
        if self.closed:
            raise NatsError("connection to %s:%d is closed" % (self.host, self.port))
        try:
            self.sock.settimeout(30)
            self.sock.sendall(data)
        except OSError as e:
            self.closed = True
            raise NatsError("send to %s:%d: %s" % (self.host, self.port, e))

    def _fill(self, deadline, what):
        left = _left(deadline)
        if left <= 0:
            raise NatsTimeout("no %s within the timeout (from %s:%d)" % (what, self.host, self.port))
        if self.closed:
            raise NatsError("connection to %s:%d closed while waiting for %s" % (self.host, self.port, what))
        self.sock.settimeout(min(left, 1.0))
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            return
        except OSError as e:
            self.closed = True
            raise NatsError("connection to %s:%d broke while waiting for %s: %s" % (self.host, self.port, what, e))
        if not chunk:
            self.closed = True
            raise NatsError("connection to %s:%d closed by the server while waiting for %s"
                            % (self.host, self.port, what))
        self.buf += chunk

    def _line(self, deadline, what):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 2]
                return line
            if len(self.buf) > 4096:
                raise NatsError("control line longer than 4096 bytes: %r" % bytes(self.buf[:200]))
            self._fill(deadline, what)

    def _bytes(self, n, deadline, what):
        while len(self.buf) < n + 2:
            self._fill(deadline, what)
        if self.buf[n:n + 2] != b"\r\n":
            raise NatsError("payload of %d bytes not followed by CRLF: %r" % (n, bytes(self.buf[:n + 2])[-40:]))
        data = bytes(self.buf[:n])
        del self.buf[: n + 2]
        return data

    def _read_op(self, deadline, what):
        """Reads one operation and acts on it (keeps a message, answers a PING, ...)."""
        line = self._line(deadline, what)
        op, _, rest = line.partition(b" ")
        op = op.upper()
        if op == b"MSG" or op == b"HMSG":
            args = rest.split()     # the server may write two blanks where the reply is absent
            try:
                if op == b"MSG":
                    if len(args) not in (3, 4):
                        raise ValueError
                    hlen, total = 0, int(args[-1])
                else:
                    if len(args) not in (4, 5):
                        raise ValueError
                    hlen, total = int(args[-2]), int(args[-1])
                subject, sid = args[0].decode(), int(args[1])
                reply = args[2].decode() if len(args) == (4 if op == b"MSG" else 5) else None
            except (ValueError, UnicodeDecodeError):
                raise NatsError("bad %s line: %r" % (op.decode(), line))
            body = self._bytes(total, deadline, what)
            headers = parse_headers(body[:hlen]) if hlen else NatsHeaders()
            self.msgs.setdefault(sid, []).append(NatsMsg(subject, sid, reply, headers, body[hlen:]))
        elif op == b"PING":
            self._send(b"PONG\r\n")
        elif op == b"PONG":
            self.pongs += 1
        elif op == b"INFO":
            try:
                self.info = json.loads(rest.decode())
            except ValueError:
                raise NatsError("bad INFO: %r" % line[:300])
            self.infos.append(self.info)
        elif op == b"+OK":
            pass
        elif op == b"-ERR":
            # Most errors close the connection; the ones that do not (a bad subject) are still a
            # test's mistake, so every -ERR is raised.
            raise NatsError("server %s:%d said -ERR %s" % (self.host, self.port, rest.decode("utf-8", "replace")))
        else:
            raise NatsError("unknown operation from the server: %r" % line[:200])

    # -- core protocol --

    def flush(self, timeout=10.0):
        """PING and wait for its PONG: everything sent before has been processed by the server."""
        want = self.pongs + 1
        self._send(b"PING\r\n")
        deadline = _deadline(timeout)
        while self.pongs < want:
            self._read_op(deadline, "PONG")

    def publish(self, subject, payload=b"", reply=None, headers=None):
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        r = (" " + reply) if reply else ""
        if headers is not None:
            hdr = encode_headers(headers)
            self._send(("HPUB %s%s %d %d\r\n" % (subject, r, len(hdr), len(hdr) + len(payload))).encode()
                       + hdr + payload + b"\r\n")
        else:
            self._send(("PUB %s%s %d\r\n" % (subject, r, len(payload))).encode() + payload + b"\r\n")

    def subscribe(self, subject, queue=None):
        """Returns the sid; take its messages with next_msg(sid)."""
        sid = self.next_sid
        self.next_sid += 1
        self.msgs[sid] = []
        self._send(("SUB %s%s %d\r\n" % (subject, (" " + queue) if queue else "", sid)).encode())
        return sid

    def unsubscribe(self, sid):
        self._send(("UNSUB %d\r\n" % sid).encode())

    def next_msg(self, sid, timeout=10.0, pred=None, what=None):
        """The first message on sid (matching pred, if given) not taken yet; it is taken, and the
        messages before it are kept."""
        deadline = _deadline(timeout)
        while True:
            pending = self.msgs.get(sid, [])
            for i, m in enumerate(pending):
                if pred is None or pred(m):
                    del pending[i]
                    return m
            self._read_op(deadline, what or "message on sid %d" % sid)

    def request(self, subject, payload=b"", headers=None, timeout=5.0):
        """Publish with a reply subject of our own and wait for the first reply.
        Returns (NatsHeaders, payload bytes); a status-only reply (503 no responders: nobody
        subscribes to subject) comes back as headers.status with an empty payload.
        Raises NatsTimeout when nothing came."""
        if self.inbox_sid is None:
            self.inbox_sid = self.subscribe(self.inbox_prefix + ".*")
        reply = "%s.%d" % (self.inbox_prefix, self.next_req)
        self.next_req += 1
        self.publish(subject, payload, reply=reply, headers=headers)
        try:
            m = self.next_msg(self.inbox_sid, timeout, pred=lambda m: m.subject == reply,
                              what="reply to %s" % subject)
        except NatsTimeout:
            raise NatsTimeout("no reply to %s within %.1f s (via %s:%d)" % (subject, timeout, self.host, self.port))
        return m.headers, m.data

    def close(self):
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- JetStream --

    def js_api(self, api, body=None, timeout=5.0):
        """One JetStream API call: "$JS.API." + api, body a dict (or None: empty payload).
        Returns the decoded reply; raises JetStreamError for {"error":...}, NatsStatusError for a
        status-only reply (503: no server answers the API), NatsTimeout for none."""
        subject = "$JS.API." + api
        payload = json.dumps(body).encode() if body is not None else b""
        headers, data = self.request(subject, payload, timeout=timeout)
        if headers.status is not None and not data:
            raise NatsStatusError(subject, headers)
        try:
            reply = json.loads(data.decode("utf-8"))
        except ValueError:
            raise NatsError("%s: reply is not JSON: %r" % (subject, data[:300]))
        if "error" in reply:
            raise JetStreamError(subject, reply)
        return reply

    def account_info(self, timeout=5.0):
        return self.js_api("INFO", timeout=timeout)

    def stream_create(self, name, subjects, replicas=1, timeout=10.0, **config):
        """Creates the stream (file storage unless config says otherwise); returns its info."""
        cfg = {"name": name, "subjects": list(subjects), "num_replicas": replicas, "storage": "file"}
        cfg.update(config)
        return self.js_api("STREAM.CREATE." + name, cfg, timeout=timeout)

    def stream_delete(self, name, timeout=10.0):
        return self.js_api("STREAM.DELETE." + name, timeout=timeout)

    def stream_info(self, name, timeout=5.0):
        """The stream's info: config, state ({"messages", "first_seq", "last_seq", ...}) and, in a
        cluster, cluster {"leader", "replicas": [{"name", "current", "lag", ...}]}."""
        return self.js_api("STREAM.INFO." + name, timeout=timeout)

    def stream_get(self, name, seq, timeout=5.0):
        """The stored message with stream sequence seq: {"subject", "seq", "headers" (NatsHeaders),
        "data" (bytes), "time"}.  A missing sequence raises JetStreamError (err_code 10037)."""
        reply = self.js_api("STREAM.MSG.GET." + name, {"seq": seq}, timeout=timeout)
        m = reply["message"]
        hdrs = base64.b64decode(m["hdrs"]) if m.get("hdrs") else b""
        return {"subject": m["subject"], "seq": m["seq"], "time": m.get("time"),
                "headers": parse_headers(hdrs) if hdrs else NatsHeaders(),
                "data": base64.b64decode(m["data"]) if m.get("data") else b""}

    def publish_js(self, subject, payload, msg_id=None, headers=None, timeout=5.0):
        """A publish to a stream's subject that waits for its PubAck and returns it
        ({"stream", "seq"} and "duplicate": true for a repeated Nats-Msg-Id).
        Raises NatsStatusError (503) when no stream leader takes the subject, JetStreamError
        when the stream refuses it, NatsTimeout when no acknowledgement came."""
        hdrs = dict(headers or {})
        if msg_id is not None:
            hdrs["Nats-Msg-Id"] = msg_id
        h, data = self.request(subject, payload, headers=hdrs or None, timeout=timeout)
        if h.status is not None and not data:
            raise NatsStatusError("publish to %s" % subject, h)
        try:
            ack = json.loads(data.decode("utf-8"))
        except ValueError:
            raise NatsError("publish to %s: the reply is not a PubAck: %r" % (subject, data[:300]))
        if "error" in ack:
            raise JetStreamError("publish to %s" % subject, ack)
        return ack


# ---- the servers ----------------------------------------------------------------------------

def nats_server_binary():
    for path in (shutil.which("nats-server"), "/usr/sbin/nats-server", "/usr/bin/nats-server"):
        if path and os.access(path, os.X_OK):
            return path
    raise TestFailure("nats-server is not installed (scripts/setup installs Debian's nats-server)")


_LIVE = []      # clusters not closed yet, killed at exit whatever the test did
DIR_TAG = "chatrelay-nats-"     # + owner pid + "-": the folder of every cluster


@atexit.register
def _close_all():
    for c in list(_LIVE):
        c.close()


def sweep_leftovers():
    """Kills the nats-servers, and removes the folders, of clusters whose test process is gone.
    atexit does not run when a test is killed (a ctest timeout kills with SIGKILL), and the
    servers run in sessions of their own, so they would outlive it and keep their ports; the
    next cluster made on this machine cleans up after it.  A cluster is recognised by its
    folder, <tmp>/chatrelay-nats-<owner pid>-*, in the server's command line."""
    tmp = tempfile.gettempdir()
    marker = os.path.join(tmp, DIR_TAG)

    def owner_gone(path):
        try:
            owner = int(path[len(marker):].split("-", 1)[0])
        except ValueError:
            return False
        try:
            with open("/proc/%d/stat" % owner) as f:
                # a killed owner stays a zombie until its parent reaps it
                return f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except FileNotFoundError:
            return True
        except (OSError, IndexError):
            return False

    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                argv = f.read().decode("utf-8", "replace").split("\0")
        except OSError:
            continue
        if not argv or os.path.basename(argv[0]) != "nats-server":
            continue
        if any(a.startswith(marker) and owner_gone(a) for a in argv):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
    for entry in os.listdir(tmp):
        path = os.path.join(tmp, entry)
        if entry.startswith(DIR_TAG) and owner_gone(path):
            shutil.rmtree(path, ignore_errors=True)


class NatsCluster:
    """n nats-server processes on 127.0.0.1, JetStream on, one config file, store and log per
    node under one temporary folder; for n > 1 a cluster (routes to every other node, a
    server_name per node: n0, n1, ...).  Ports are chosen once and kept across restarts, so a
    restarted node comes back where the relays and the other servers expect it.

    Ready means: every running node answers $JS.API.INFO and sees a JetStream meta leader (a
    $JS.API.STREAM.INFO for a stream that does not exist gets "stream not found", which only
    the meta leader says; without one the servers answer 503 or nothing).  start() also
    creates and deletes an R<n> probe stream, so every node has joined the meta group."""

    PROBE = "NATS_HARNESS_PROBE"

    def __init__(self, n=3, name="chatrelay-e2e", workdir=None, monitor=True, token=None):
        self.n = n
        # token: every client must present it (`authorization { token }` in each config); the
        # harness's own clients do
        self.token = token
        self.name = name
        self.own_dir = workdir is None
        if workdir is None:
            sweep_leftovers()
        self.dir = os.path.abspath(workdir) if workdir else tempfile.mkdtemp(prefix="%s%d-" % (DIR_TAG, os.getpid()))
        self.monitor = monitor
        self.exe = nats_server_binary()
        self.procs = [None] * n
        self.logfs = [None] * n
        self.starts = [0] * n
        self._choose_ports()
        _LIVE.append(self)

    # -- files --

    def node_name(self, i):
        return "n%d" % i

    def node_dir(self, i):
        return os.path.join(self.dir, self.node_name(i))

    def conf_path(self, i):
        return os.path.join(self.node_dir(i), "nats.conf")

    def log_path(self, i):
        return os.path.join(self.node_dir(i), "nats.log")

    def store_dir(self, i):
        return os.path.join(self.node_dir(i), "store")

    def _choose_ports(self):
        taken = set()

        def pick():
            while True:
                p = free_port()
                if p not in taken:
                    taken.add(p)
                    return p
        self.client_ports = [pick() for _ in range(self.n)]
        self.cluster_ports = [pick() for _ in range(self.n)] if self.n > 1 else []
        self.http_ports = [pick() for _ in range(self.n)] if self.monitor else []

    def config(self, i):
        """The text of node i's config file."""
        out = ['server_name: "%s"' % self.node_name(i),
               'listen: "127.0.0.1:%d"' % self.client_ports[i]]
        if self.monitor:
            out.append('http: "127.0.0.1:%d"' % self.http_ports[i])
        out += ["logtime: true",
                "jetstream {",
                '  store_dir: "%s"' % self.store_dir(i),
                "  max_memory_store: 64MB",
                "  max_file_store: 1GB",
                "}"]
        if self.token is not None:
            out += ["authorization {", "  token: %s" % json.dumps(self.token), "}"]
        if self.n > 1:
            routes = ", ".join('"nats://127.0.0.1:%d"' % p for j, p in enumerate(self.cluster_ports) if j != i)
            out += ["cluster {",
                    '  name: "%s"' % self.name,
                    '  listen: "127.0.0.1:%d"' % self.cluster_ports[i],
                    "  routes: [%s]" % routes,
                    "}"]
        return "\n".join(out) + "\n"

    def _write_configs(self):
        for i in range(self.n):
            os.makedirs(self.store_dir(i), exist_ok=True)
            with open(self.conf_path(i), "w") as f:
                f.write(self.config(i))

    def urls(self):
        return ["nats://127.0.0.1:%d" % p for p in self.client_ports]

    def url(self, i):
        return self.urls()[i]

    def log(self, i):
        try:
            with open(self.log_path(i), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, i, lines=30):
        return "\n".join(self.log(i).splitlines()[-lines:])

    def describe(self, i, lines=30):
        """Node i's config and the end of its log, for a failure message."""
        return "--- node %s (%s) config %s:\n%s--- last lines of %s:\n%s" % (
            self.node_name(i), "running" if self.running(i) else "not running", self.conf_path(i),
            self.config(i), self.log_path(i), self.log_tail(i, lines))

    def _fail(self, msg, nodes=None):
        nodes = range(self.n) if nodes is None else nodes
        return TestFailure(msg + "\n" + "\n".join(self.describe(i) for i in nodes))

    # -- processes --

    def running(self, i):
        return self.procs[i] is not None and self.procs[i].poll() is None

    def pid(self, i):
        return self.procs[i].pid if self.running(i) else None

    def _spawn(self, i):
        if self.running(i):
            raise TestFailure("node %s is already running" % self.node_name(i))
        self.logfs[i] = open(self.log_path(i), "ab")
        self.starts[i] += 1
        self.logfs[i].write(("=== harness: start %d of %s\n" % (self.starts[i], self.node_name(i))).encode())
        self.logfs[i].flush()
        self.procs[i] = subprocess.Popen([self.exe, "-c", self.conf_path(i)], stdin=subprocess.DEVNULL,
                                         stdout=self.logfs[i], stderr=self.logfs[i], start_new_session=True)

    def _this_start_log(self, i):
        text = self.log(i)
        marker = "=== harness: start %d of %s\n" % (self.starts[i], self.node_name(i))
        return text[text.rfind(marker):]

    def _wait_listening(self, i, deadline):
        """Until this start of node i logged "Server is ready"; a node that exited is a failure."""
        while "Server is ready" not in self._this_start_log(i):
            if not self.running(i):
                raise self._fail("nats-server %s exited with %s before it was ready"
                                 % (self.node_name(i), self.procs[i].returncode), [i])
            if _left(deadline) <= 0:
                raise self._fail("nats-server %s did not log \"Server is ready\" in time" % self.node_name(i), [i])
            time.sleep(0.02)

    def _port_in_use(self, i):
        return "address already in use" in self._this_start_log(i)

    def start(self, timeout=30.0):
        """Starts every node and waits until the cluster is ready (see the class comment).
        Ports taken by another process before a node bound them are chosen anew (first start
        only: later starts must keep them)."""
        if any(self.starts):
            raise TestFailure("NatsCluster.start is for the first start; use start_node(i)")
        deadline = _deadline(timeout)
        for attempt in range(5):
            self._write_configs()
            for i in range(self.n):
                self._spawn(i)
            try:
                # A port is bound after "Server is ready" too (the route port): a node that
                # exits because one was taken is seen by the readiness checks, which ask
                # for every node, not only the running ones.
                for i in range(self.n):
                    self._wait_listening(i, deadline)
                self.wait_ready(nodes=range(self.n), deadline=deadline, timeout=timeout)
                if self.n > 1:
                    self._probe_stream(deadline)
                break
            except TestFailure:
                if attempt == 4 or not any(self._port_in_use(i) for i in range(self.n)):
                    raise
                for i in range(self.n):
                    self.kill(i)
                    shutil.rmtree(self.store_dir(i), ignore_errors=True)   # nothing of a cluster that never met
                self._choose_ports()
        return self

    def _probe_stream(self, deadline):
        """Creating an R<n> stream succeeds only once the meta leader counts n JetStream peers
        (before that: "insufficient resources"); deleting it leaves the account empty."""
        last = None
        with NatsClient(self.url(0), name="harness-probe", token=self.token, timeout=max(_left(deadline), 1)) as c:
            while _left(deadline) > 0:
                for i in range(self.n):
                    if not self.running(i):
                        raise self._fail("nats-server %s exited with %s"
                                         % (self.node_name(i), self.procs[i].returncode), [i])
                try:
                    c.stream_create(self.PROBE, [self.PROBE.lower()], replicas=self.n,
                                    timeout=max(min(_left(deadline), 5.0), 0.1))
                    c.stream_delete(self.PROBE, timeout=max(min(_left(deadline), 5.0), 0.1))
                    return
                except NatsError as e:
                    last = e
                    time.sleep(0.1)     # the meta leader learns of peers on its own: poll it
        raise self._fail("JetStream in cluster %s took no R%d stream before the start's timeout: %s"
                         % (self.name, self.n, last))

    def wait_ready(self, nodes=None, timeout=30.0, deadline=None):
        """Until every node in nodes (default: every running one) answers $JS.API.INFO and sees a
        meta leader."""
        deadline = deadline if deadline is not None else _deadline(timeout)
        nodes = [i for i in range(self.n) if self.running(i)] if nodes is None else list(nodes)
        for i in nodes:
            self._wait_node_ready(i, deadline, timeout)

    def _wait_node_ready(self, i, deadline, timeout):
        last = "no attempt"
        while True:
            if not self.running(i):
                raise self._fail("nats-server %s exited with %s" % (self.node_name(i), self.procs[i].returncode), [i])
            left = _left(deadline)
            if left <= 0:
                raise self._fail("JetStream on %s not ready within %.0f s; last check: %s"
                                 % (self.node_name(i), timeout, last))
            try:
                with NatsClient(self.url(i), name="harness-ready", token=self.token, timeout=min(left, 5.0)) as c:
                    c.account_info(timeout=max(min(_left(deadline), 2.0), 0.1))
                    if self.n == 1:
                        return
                    try:
                        c.stream_info(self.PROBE + "_ABSENT", timeout=max(min(_left(deadline), 2.0), 0.1))
                        last = "a stream that should not exist exists"
                    except JetStreamError as e:
                        last = str(e)
                        # "stream not found" comes from the meta leader alone; that it answers
                        # through this node says a route reaches it, and the node's own view
                        # (its /jsz) says the node itself follows it.
                        if e.err_code == 10059:
                            if not self.monitor:
                                return
                            leader = self.meta_leader(i)
                            if leader is not None:
                                return
                            last = "node's /jsz names no meta leader yet"
            except (NatsError, OSError) as e:
                last = str(e)
            time.sleep(0.1)     # a failed check is retried; each try itself waits for its reply

    def stop(self, i, timeout=20.0):
        """SIGTERM and wait for the exit; returns its code.  nats-server 2.9.10 shuts down
        cleanly on it ("Initiating Shutdown...", "Server Exiting..") and exits with 1 (with 0
        on SIGINT): stopped_cleanly(i) tells a clean stop from a crash."""
        p = self.procs[i]
        if p is None or p.poll() is not None:
            return p.returncode if p else None
        p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(i)
            raise self._fail("nats-server %s did not exit within %.0f s of SIGTERM" % (self.node_name(i), timeout), [i])
        self.logfs[i].close()
        return rc

    def stopped_cleanly(self, i):
        """Node i is not running and its last start ended with a clean shutdown."""
        return not self.running(i) and "Server Exiting.." in self._this_start_log(i)

    def kill(self, i):
        """SIGKILL: no goodbye to the routes, no store flush."""
        p = self.procs[i]
        if p is not None and p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        if self.logfs[i] is not None:
            self.logfs[i].close()

    def start_node(self, i, timeout=30.0):
        """Restarts node i with the same config, ports and store, and waits until it is ready
        (it answers $JS.API.INFO and sees a meta leader: a quorum of nodes must be up)."""
        deadline = _deadline(timeout)
        self._spawn(i)
        self._wait_listening(i, deadline)
        self._wait_node_ready(i, deadline, timeout)
        return self

    def start_nodes(self, nodes, timeout=30.0):
        """Restarts several stopped nodes at once and waits until each is ready: after a stop of
        a quorum, no node alone can be ready (start_node of one would wait for the others)."""
        deadline = _deadline(timeout)
        nodes = list(nodes)
        for i in nodes:
            self._spawn(i)
        for i in nodes:
            self._wait_listening(i, deadline)
        self.wait_ready(nodes=nodes, deadline=deadline, timeout=timeout)
        return self

    def close(self):
        for i in range(self.n):
            self.kill(i)
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        if self in _LIVE:
            _LIVE.remove(self)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # -- looking inside --

    def client(self, i, name="chatrelay-e2e", timeout=10.0):
        return NatsClient(self.url(i), name=name, timeout=timeout, token=self.token)

    def monitor_json(self, i, path):
        """GET http://127.0.0.1:<http port><path> of node i (/varz, /jsz, /routez, /healthz)."""
        import urllib.request
        if not self.monitor:
            raise TestFailure("this cluster was made with monitor=False")
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (self.http_ports[i], path), timeout=5) as r:
            return json.loads(r.read().decode("utf-8"))

    def meta_leader(self, i):
        """The index of the JetStream meta leader as node i sees it (its /jsz), None if none."""
        leader = self.monitor_json(i, "/jsz").get("meta_cluster", {}).get("leader")
        return self._index(leader) if leader else None

    def _index(self, server_name):
        try:
            return [self.node_name(j) for j in range(self.n)].index(server_name)
        except ValueError:
            raise TestFailure("server name %r is not one of this cluster's" % server_name)

    def _stream_cluster(self, stream, deadline, via=None):
        """The "cluster" part of the stream's info (asked through node via, or any running
        node), once a running node answers as its leader: (leader index, info)."""
        last = "no attempt"
        while _left(deadline) > 0:
            for i in ([via] if via is not None else [j for j in range(self.n) if self.running(j)]):
                try:
                    with NatsClient(self.url(i), name="harness-leader", token=self.token,
                                    timeout=min(max(_left(deadline), 0.1), 5)) as c:
                        info = c.stream_info(stream, timeout=min(max(_left(deadline), 0.1), 2.0))
                    leader = info.get("cluster", {}).get("leader")
                    # A leader that lost its quorum keeps saying it leads until it notices (10 to
                    # 20 s): a node we stopped is never taken for the leader.
                    if leader and self.running(self._index(leader)):
                        return self._index(leader), info
                    last = "no running leader in %s" % info.get("cluster")
                except NatsError as e:
                    last = str(e)
            time.sleep(0.1)     # an election is under way: ask again
        raise self._fail("stream %s: no leader: %s" % (stream, last))

    def stream_leader(self, stream, via=None, timeout=30.0):
        """The index of the running node that leads stream, once there is one."""
        return self._stream_cluster(stream, _deadline(timeout), via)[0]

    def wait_stream_current(self, stream, i, timeout=30.0):
        """Until node i leads stream or its leader lists node i's replica as current with no
        lag (a restarted node has caught up).  Returns the stream's info."""
        deadline = _deadline(timeout)
        last = None
        while _left(deadline) > 0:
            leader, info = self._stream_cluster(stream, deadline)
            if leader == i:
                return info
            for r in info["cluster"].get("replicas", []):
                if r.get("name") == self.node_name(i) and r.get("current") and not r.get("lag"):
                    return info
            last = info["cluster"]
            time.sleep(0.1)     # catching up: ask again
        raise self._fail("stream %s: node %s not current after %.0f s: %s" % (stream, self.node_name(i), timeout, last))

    def move_stream_leader(self, stream, i, timeout=30.0):
        """Makes node i the stream's leader by asking the leader to step down until the
        election picks i (2.9 takes no preferred successor).  Node i must be current."""
        deadline = _deadline(timeout)
        while True:
            leader, _ = self._stream_cluster(stream, deadline)
            if leader == i:
                return
            if _left(deadline) <= 0:
                raise self._fail("stream %s: node %s never became its leader" % (stream, self.node_name(i)))
            with NatsClient(self.url(leader), name="harness-stepdown", token=self.token, timeout=5) as c:
                try:
                    c.js_api("STREAM.LEADER.STEPDOWN." + stream, timeout=5)
                except NatsError:
                    pass        # an election was already running: look again
            # The old leader answers as leader until the new one is elected; a stepdown that
            # did not take (no current follower yet) is asked again after a while.
            step = min(deadline, _deadline(10.0))
            while _left(step) > 0:
                try:
                    if self._stream_cluster(stream, step)[0] != leader:
                        break
                except TestFailure:
                    break
                time.sleep(0.05)

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

    def __init__(self, url, name="chatrelay-e2e", timeout=10.0, echo=True, user=None, password=None):
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


"""harness: run chatrelay.exe under Wine and talk to it with real Linux TCP sockets.

Used by every end-to-end test.  Each test file is a script whose cases are run one
per ctest test: `python3 test_x.py CASE`.  The environment comes from ctest:
  CHATRELAY_EXE        path of chatrelay.exe (Linux path)
  CHATRELAY_WORK       a scratch folder for databases and logs (Linux path)
  CHATRELAY_SOURCE     the checkout (for scripts/wine)
"""
import os
import random
import socket
import sqlite3
import subprocess
import sys
import time

SOURCE = os.environ.get("CHATRELAY_SOURCE", os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
EXE = os.environ.get("CHATRELAY_EXE", os.path.join(SOURCE, "build", "windows", "chatrelay.exe"))
WORK = os.environ.get("CHATRELAY_WORK", os.path.join(SOURCE, "build", "windows", "e2e-work"))
WINE = os.path.join(SOURCE, "scripts", "wine")


class TestFailure(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise TestFailure(msg)


def winpath(linux_path):
    """The Windows view of a Linux path through Wine's Z: drive."""
    return "Z:" + os.path.abspath(linux_path).replace("/", "\\")


def free_port():
    """A TCP port free on 127.0.0.1 right now (the relay binds it moments later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_fd_limit():
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def wait_port(port, timeout=30.0, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise TestFailure("relay exited with %s before listening" % proc.returncode)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TestFailure("nothing listening on port %d after %.0f s" % (port, timeout))


class Relay:
    """chatrelay.exe --console under Wine, stderr captured to a log file."""

    def __init__(self, name, args=(), history=True, port=None, listen=None):
        os.makedirs(WORK, exist_ok=True)
        self.name = name
        self.port = port or free_port()
        self.port_chosen = port is None   # ours to change if another process takes it first
        # None: 127.0.0.1 on self.port (which a test may change between runs);
        # "{port}" in it stands for self.port.
        self.listen = listen
        self.db = os.path.join(WORK, name + ".db")
        self.log_path = os.path.join(WORK, name + ".log")
        self.args = list(args)
        # "{irc}" in an argument stands for a second free port (an IRC listener's)
        self.irc_port = free_port() if any("{irc}" in a for a in self.args) else None
        self.history = history
        self.proc = None
        self.starts = 0

    def reset_db(self):
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(self.db + suffix)
            except FileNotFoundError:
                pass

    def start(self, extra=()):
        """Starts the relay and waits until it runs.  free_port's port can be taken by another
        process before the relay binds it (other test runs share this machine): on the first
        start, a port of our own choosing that turns out to be in use is chosen anew."""
        for attempt in range(5):
            try:
                return self._start_once(extra)
            except TestFailure:
                if not (self.port_chosen and self.starts == 1 and attempt < 4 and
                        "the port is already in use" in self.log()):
                    raise
                self.logf.close()
                self.starts = 0
                self.port = free_port()

    def _start_once(self, extra):
        listen = self.listen.replace("{port}", str(self.port)) if self.listen else "127.0.0.1:%d" % self.port
        cmd = [WINE, EXE, "--console", "--listen", listen]
        if self.history:
            cmd += ["--db", winpath(self.db)]
        else:
            cmd += ["--no-history"]
        cmd += [a.replace("{irc}", str(self.irc_port)) for a in self.args] + list(extra)
        if not self.starts:
            self.reset_db()     # every test run starts from an empty history
        # A fresh log per test run; restarts within the test append to it.
        self.logf = open(self.log_path, "ab" if self.starts else "wb")
        self.starts += 1
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.logf, stderr=self.logf,
                                     start_new_session=True)
        # Wait for the log rather than probing the port: a probe would be a session.
        # The log is appended to on a restart: wait for one more "relay running".
        runs_before = self.log().count("relay running") if self.starts > 1 else 0
        deadline = time.time() + 30
        while self.log().count("relay running") <= runs_before:
            if self.proc.poll() is not None:
                raise TestFailure("relay exited with %s before listening: %s" % (self.proc.returncode, self.log()[-500:]))
            if time.time() > deadline:
                raise TestFailure("relay not running after 30 s: %s" % self.log()[-500:])
            time.sleep(0.05)
        return self

    def fd_counts(self):
        """(fds of the relay process, fds of this prefix's wineserver).

        Wine keeps one Unix fd per socket in the wineserver, so the second number
        counts the relay's open sockets and handles: a leak shows up there."""
        prefix = os.environ.get("CHATRELAY_WINEPREFIX", os.path.join(SOURCE, "build", "windows", "wineprefix"))
        st = os.stat(prefix)
        server_dir = "server-%x-%x" % (st.st_dev, st.st_ino)
        server_fds = -1
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                if os.path.basename(os.readlink("/proc/%s/cwd" % pid)) == server_dir and \
                        "wineserver" in open("/proc/%s/cmdline" % pid).read():
                    server_fds = len(os.listdir("/proc/%s/fd" % pid))
            except OSError:
                continue
        return len(os.listdir("/proc/%d/fd" % self.proc.pid)), server_fds

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self, timeout=20.0):
        """Ctrl+C equivalent: SIGINT, which Wine turns into CTRL_C_EVENT for the console handler."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(2)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise TestFailure("relay did not stop within %.0f s of Ctrl+C" % timeout)
        self.logf.close()
        return rc

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        try:
            self.logf.close()
        except Exception:
            pass

    def query(self, sql, params=()):
        """Read the history as a user would (the Linux sqlite3 library on the same file)."""
        con = sqlite3.connect(self.db, timeout=5)
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.stop()
            except TestFailure:
                pass
        self.kill()


class Client:
    """A line-oriented TCP client, like nc."""

    def __init__(self, port, host="127.0.0.1", timeout=10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.lines = []
        self.closed = False
        self.raw = None             # a bytearray here keeps every byte received, for byte-level checks

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.settimeout(30)    # reads shorten the timeout; a send may wait for the relay
        self.sock.sendall(data)

    def say(self, text):
        self.send(text + "\r\n")

    def _fill(self, timeout):
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            return False
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.closed = True
            return False
        if self.raw is not None:
            self.raw += chunk
        self.buf += chunk
        while b"\r\n" in self.buf:
            line, self.buf = self.buf.split(b"\r\n", 1)
            self.lines.append(line.decode("utf-8", "replace"))
        return True

    def wait_for(self, pred, timeout=10.0, what=None):
        """Reads until a line matching pred arrives; returns it (and drops the lines before it)."""
        deadline = time.time() + timeout
        while True:
            for i, line in enumerate(self.lines):
                if pred(line):
                    del self.lines[: i + 1]
                    return line
            left = deadline - time.time()
            if left <= 0 or self.closed:
                raise TestFailure("no line matching %s within %.0f s (closed=%s); last lines: %r"
                                  % (what or pred, timeout, self.closed, self.lines[-5:]))
            self._fill(min(left, 0.5))

    def expect(self, substring, timeout=10.0):
        return self.wait_for(lambda l: substring in l, timeout, what=repr(substring))

    def drain(self, quiet=0.3):
        """Reads everything that arrives until the line is quiet for `quiet` seconds."""
        while self._fill(quiet):
            pass
        out, self.lines = self.lines, []
        return out

    def wait_closed(self, timeout=10.0):
        deadline = time.time() + timeout
        while not self.closed and time.time() < deadline:
            self._fill(min(0.5, deadline - time.time()))
        return self.closed

    def greeted(self):
        """Waits for the end of the greeting (the /help hint) and returns our nick."""
        return self.expect("/help")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class SmallWindow(Client):
    """A client with a small receive buffer (set before connecting), so what it does not read
    stays in the relay's queue rather than in this machine's socket buffers."""

    def __init__(self, port, rcvbuf=4096):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(10)
        s.connect(("127.0.0.1", port))
        self.sock, self.buf, self.lines, self.closed, self.raw = s, b"", [], False, None


def read_through(client, pred, timeout=10.0, what=None):
    """Every line up to and including the first one matching pred (removed from client.lines)."""
    deadline = time.time() + timeout
    while True:
        for i, line in enumerate(client.lines):
            if pred(line):
                out = client.lines[: i + 1]
                del client.lines[: i + 1]
                return out
        left = deadline - time.time()
        if left <= 0 or client.closed:
            raise TestFailure("no line matching %s within %.0f s (closed=%s); last lines: %r"
                              % (what or pred, timeout, client.closed, client.lines[-5:]))
        client._fill(min(left, 0.5))


def read_to(client, text, timeout=10.0):
    """Every line up to and including the line equal to text."""
    return read_through(client, lambda l: l == text, timeout, what=repr(text))


def expect_line(client, text, timeout=10.0):
    """Waits for the line equal to text; lines before it are dropped."""
    return client.wait_for(lambda l: l == text, timeout, what=repr(text))


def run_cases(cases):
    """Entry point of a test script: run the case named in argv[1]."""
    if len(sys.argv) != 2 or sys.argv[1] not in cases:
        print("usage: %s CASE (one of: %s)" % (sys.argv[0], ", ".join(sorted(cases))), file=sys.stderr)
        sys.exit(2)
    name = sys.argv[1]
    random.seed(name)
    start = time.time()
    try:
        cases[name]()
    except TestFailure as e:
        print("FAIL %s: %s" % (name, e))
        sys.exit(1)
    print("PASS %s (%.1f s)" % (name, time.time() - start))


class ReadOnlyMount:
    """A small tmpfs of the test's own that can be switched to read-only: what "the history
    database is on a read-only filesystem" means on a real machine, made as root with mount(8)
    (the tests run as root, CI too).  Wine opens files in the wineserver, so the mount must be
    visible to it: a plain mount in this mount namespace is.

    Without `at`, the mount point is a new folder under /tmp (not in the build folder, so a mount
    left behind by a killed test never stops `rm -rf build`); with `at`, an existing folder is
    covered for the duration (its content is hidden, not touched).  Every mount is tagged with the
    owner's pid, and a new ReadOnlyMount first unmounts the leftovers of owners that are gone."""

    TAG = "chatrelay-e2e-"

    def __init__(self, at=None):
        self.at = at
        self.path = None
        self.mounted = False

    @classmethod
    def _sweep(cls):
        with open("/proc/self/mounts") as f:
            entries = [line.split()[:2] for line in f]
        for source, target in entries:
            if not source.startswith(cls.TAG):
                continue
            try:
                os.kill(int(source[len(cls.TAG):]), 0)
                continue            # its test is still running
            except (ValueError, ProcessLookupError):
                pass
            target = target.replace("\\040", " ")
            subprocess.run(["umount", "-l", target], stdin=subprocess.DEVNULL, capture_output=True)

    def _mount(self, *args):
        r = subprocess.run(["mount"] + list(args), stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if r.returncode != 0:
            raise TestFailure("mount %s failed (rc %d): %s -- this test needs root and mount(8)"
                              % (" ".join(args), r.returncode, r.stderr.strip()))

    def __enter__(self):
        self._sweep()
        if self.at is None:
            import tempfile
            self.path = tempfile.mkdtemp(prefix="chatrelay-e2e-ro-")
        else:
            self.path = self.at
        self._mount("-t", "tmpfs", "-o", "size=16m,mode=0755", "%s%d" % (self.TAG, os.getpid()), self.path)
        self.mounted = True
        return self

    def read_only(self):
        """From now on every write to the mount fails with EROFS, for root as well."""
        self._mount("-o", "remount,ro", self.path)
        check(os.statvfs(self.path).f_flag & os.ST_RDONLY, "%s is still writable after remount,ro" % self.path)

    def __exit__(self, *exc):
        if self.mounted:
            # A process that just exited may still be closing its files: a few tries, then lazily.
            for _ in range(50):
                if subprocess.run(["umount", self.path], stdin=subprocess.DEVNULL,
                                  capture_output=True).returncode == 0:
                    break
                time.sleep(0.1)
            else:
                subprocess.run(["umount", "-l", self.path], stdin=subprocess.DEVNULL, capture_output=True)
            self.mounted = False
        if self.at is None and self.path is not None:
            try:
                os.rmdir(self.path)
            except OSError:
                pass
        return False

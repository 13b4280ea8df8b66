"""IRC clients on the relay (docs/PROTOCOL.md, "IRC clients"): registration, mixed rooms with line
clients, the order of a session's output, history for IRC clients (replay, CHATHISTORY, SEARCH),
the error numerics, pings, topics, and the real clients irssi and ii.

Exact protocol checks use irc_clients.IrcClient (every line kept and parsed); line clients are
harness.Client; the history is read with the sqlite3 CLI's view of the file (Relay.query)."""
import time
import types

import os
import re
import subprocess

from harness import EXE, WINE, WORK, Client, Relay, check, expect_line, free_port, read_through, run_cases, winpath
from irc_clients import IrcClient, Irssi, Ii
from test_protocol import connect, greeted_nick

PLAIN = ["--flood-burst", "0", "--max-per-ip", "0"]


def irc(relay, nick, caps=(), port=None):
    c = IrcClient(nick)
    c.connect("127.0.0.1", port or relay.port)
    c.register(nick, caps=caps)
    return c


def line_client(relay):
    """A greeted line client and its guest nick (test_protocol's connect)."""
    return connect(relay)


def case_registration():
    """CAP LS/REQ/END holds registration; 001-005 with the documented tokens, LUSERS, 422; the
    same on the detecting port and on --listen-irc."""
    with Relay("irc_reg", PLAIN + ["--listen-irc", "127.0.0.1:{irc}"]) as relay:
        for port in (relay.port, relay.irc_port):
            nick = "reg%d" % port
            c = IrcClient(nick)
            c.connect("127.0.0.1", port)
            c.send("CAP LS 302")
            c.send("NICK " + nick)
            c.send("USER u 0 * :Real")
            ls = c.expect("CAP", lambda m: m.params[1] == "LS")
            check(set(ls.text.split()) == {"server-time", "message-tags", "batch", "echo-message",
                                            "draft/chathistory"}, "CAP LS offered %r" % ls.text)
            c.assert_none("001", what="a welcome before CAP END")
            c.send("CAP REQ :server-time bogus-cap")
            nak = c.expect("CAP", lambda m: m.params[1] in ("ACK", "NAK"))
            check(nak.params[1] == "NAK", "an unknown capability was not refused: %s" % nak.line)
            c.send("CAP REQ :server-time echo-message")
            ack = c.expect("CAP", lambda m: m.params[1] in ("ACK", "NAK"))
            check(ack.params[1] == "ACK" and ack.text == "server-time echo-message", "CAP REQ: %s" % ack.line)
            c.send("CAP END")
            welcome = c.expect("001")
            check(welcome.params[0] == nick, "001 is not addressed to the nick: %s" % welcome.line)
            for code in ("002", "003", "004", "005", "251", "254", "422"):
                c.expect(code)
            isupport = {}
            for m in c.messages("005"):
                for tok in m.params[1:-1]:
                    k, _, v = tok.partition("=")
                    isupport[k] = v
            for k, v in (("CASEMAPPING", "ascii"), ("CHANTYPES", "#"), ("NICKLEN", "32"), ("CHANNELLEN", "33"),
                         ("PREFIX", "()"), ("CHANLIMIT", "#:20"), ("CHATHISTORY", "200"), ("NETWORK", "chatrelay")):
                check(isupport.get(k) == v, "005 %s=%r, expected %r (all: %r)" % (k, isupport.get(k), v, isupport))
            c.send("USER again 0 * :x")
            c.expect("462")
            c.quit()
        # before registration: 451; a taken nick: 433 and registration waits for another
        c = IrcClient("early")
        c.connect("127.0.0.1", relay.irc_port)
        c.send("JOIN #lobby")
        c.expect("451")
        a = irc(relay, "taken")
        c.send("NICK taken")
        c.send("USER u 0 * :x")
        c.expect("433", lambda m: m.params[1] == "taken")
        c.send("NICK bad!nick")
        c.expect("432")
        c.send("NICK free")
        c.expect("001", lambda m: m.params[0] == "free")
        a.quit()
        c.quit()


def case_mixed_room():
    """An IRC client and a line client in #lobby / lobby see each other's lines, actions, private
    messages, nick changes, joins, parts and quits, each in its own form; the file stores both
    alike."""
    with Relay("irc_mixed", PLAIN + ["--replay", "0"]) as relay:
        line, gl = line_client(relay)
        alice = irc(relay, "alice")
        alice.join("#lobby")
        expect_line(line, "*** alice joined lobby")
        names = alice.names("#lobby")
        check(sorted(names) == sorted(["alice", gl]), "NAMES #lobby: %r" % names)

        line.say("hello from nc")
        m = alice.expect("PRIVMSG", lambda m: m.nick == gl)
        check(m.params == ["#lobby", "hello from nc"], "the IRC client got %s" % m.line)
        alice.privmsg("#lobby", "hello from irc")
        expect_line(line, "<alice> hello from irc")

        line.say("/me waves")
        m = alice.expect("PRIVMSG", lambda m: m.nick == gl)
        check(m.ctcp() == ("ACTION", "waves"), "a line /me reached IRC as %s" % m.line)
        alice.action("#lobby", "dances")
        expect_line(line, "* alice dances")

        line.say("/msg alice psst")
        m = alice.expect("PRIVMSG", lambda m: m.nick == gl)
        check(m.params == ["alice", "psst"], "/msg reached IRC as %s" % m.line)
        expect_line(line, "*** to alice: psst")
        alice.privmsg(gl, "secret back")
        expect_line(line, "*alice* secret back")

        line.say("/nick bob")
        expect_line(line, "*** %s is now known as bob" % gl)
        m = alice.expect("NICK", lambda m: m.nick == gl)
        check(m.params == ["bob"], "the nick change reached IRC as %s" % m.line)
        alice.send("NICK alice2")
        expect_line(line, "*** alice is now known as alice2")
        alice.expect("NICK", lambda m: m.nick == "alice" and m.params == ["alice2"])

        alice.join("#games")
        alice.send("PART #games :later")
        alice.expect("PART", lambda m: m.params == ["#games", "later"])
        line.say("/join games")
        expect_line(line, "*** You are now in games (1 here).")
        m = alice.expect("PART", lambda m: m.nick == "bob")
        check(m.params == ["#lobby", "joined games"], "a line client's /join reached IRC as %s" % m.line)
        line.say("/join lobby")
        alice.expect("JOIN", lambda m: m.nick == "bob" and m.params[0] == "#lobby")
        alice.send("QUIT :see you")
        check(alice.wait_closed(), "QUIT did not close the connection")
        check(any(m.command == "ERROR" for m in alice.received), "no ERROR before the close")
        expect_line(line, "*** alice2 left lobby (quit: see you)")

        rows = relay.query("SELECT nick, kind, body FROM messages WHERE room = 'lobby' AND kind IN ('say', 'me')"
                           " ORDER BY id")
        check(rows == [(gl, "say", "hello from nc"), ("alice", "say", "hello from irc"), (gl, "me", "waves"),
                       ("alice", "me", "dances")], "the lobby's lines: %r" % rows)
        nicks = relay.query("SELECT nick, body FROM messages WHERE kind = 'nick' ORDER BY id")
        check(nicks == [(gl, "bob"), ("alice", "alice2")], "nick rows: %r" % nicks)


def case_order():
    """A session's output follows its commands: the echo of a nick change that waits for its
    commit comes before the reply to the next command (issue 13), in both dialects."""
    with Relay("irc_order", PLAIN + ["--replay", "0"]) as relay:
        line, gl = line_client(relay)
        line.send("/nick bob\r\n/who\r\n")
        got = read_through(line, lambda l: l.startswith("*** In "), what="the /who reply")
        check(got == ["*** %s is now known as bob" % gl, "*** In lobby (1): bob."], "the line client got %r" % got)
        a = irc(relay, "ann")
        a.join("#lobby")
        a.send("NICK ann2")
        a.send("WHO #lobby")
        first = a.expect(("NICK", "352", "315"))
        check(first.command == "NICK", "the WHO reply came before the NICK echo: %s" % first.line)
        who = a.read_until("315")
        listed = [m.params[5] for m in who if m.command == "352"]
        check(sorted(listed) == ["ann2", "bob"], "WHO listed %r" % listed)


def case_long_line_split():
    """A line client's 1,000-byte line reaches IRC clients as several PRIVMSGs, each within 512
    bytes, cut on character boundaries, in order; no CR/LF or escape reaches either kind of client."""
    with Relay("irc_split", PLAIN + ["--replay", "0"]) as relay:
        line, gl = line_client(relay)
        a = irc(relay, "reader")
        a.join("#lobby")
        text = ("\u00e9\u20ac" * 200)[:333]          # 2- and 3-byte characters, 833 bytes
        line.say(text)
        parts = []
        while "".join(parts) != text:
            m = a.expect("PRIVMSG", lambda m: m.nick == gl, what="the rest of the long line")
            check(m.body_len <= 512, "a PRIVMSG of %d bytes: %s" % (m.body_len, m.line[:80]))
            parts.append(m.text)
            check(len("".join(parts)) <= len(text), "more text than was said: %r" % parts)
        check(len(parts) >= 2, "the long line was not split: %d part(s)" % len(parts))
        # injection: an IRC client's escape and control bytes never reach the line client
        a.send_raw(b"PRIVMSG #lobby :red \x1b[31mALERT\x07 \x02bold\x02 \x03" b"4color\r\n")
        got = read_through(line, lambda l: "ALERT" in l, what="the IRC client's line")
        check(got[-1] == "<reader> red [31mALERT bold 4color", "the line client got %r" % got[-1])
        # A line client's CR, LF, NUL and escapes end or vanish from its lines: what reaches the
        # IRC client is PRIVMSGs from it and nothing else (no line it could forge).
        mark = a.mark()
        line.send(b"one\rQUIT :forged\nPRIVMSG #lobby :also forged\x00 \x1b[2Jtail\r\n")
        a.expect("PRIVMSG", lambda m: m.text.endswith("tail"), what="the line client's last line")
        got = [(m.command, m.nick, m.params) for m in a.messages(since=mark)]
        check(got == [("PRIVMSG", gl, ["#lobby", "one"]), ("PRIVMSG", gl, ["#lobby", "QUIT :forged"]),
                      ("PRIVMSG", gl, ["#lobby", "PRIVMSG #lobby :also forged [2Jtail"])],
              "the IRC client got %r" % got)


def case_errors():
    """The error numerics of the issue: 401 403 404 411 412 417 421 431 432 433 442 461."""
    with Relay("irc_errors", PLAIN + ["--replay", "0"]) as relay:
        a = irc(relay, "err")
        other = irc(relay, "other")
        other.join("#here")
        checks = [
            ("PRIVMSG nobody :hi", "401"), ("PRIVMSG #nowhere :hi", "403"), ("PRIVMSG #here :hi", "404"),
            ("PRIVMSG", "411"), ("PRIVMSG #here", "412"), ("FROBNICATE", "421"), ("NICK", "431"),
            ("NICK 9-bad!", "432"), ("NICK other", "433"), ("PART #here", "442"), ("JOIN", "461"),
            ("PRIVMSG #here :" + "x" * 1100, "417"),
        ]
        for cmd, code in checks:
            a.send(cmd)
            m = a.expect(None, lambda m: m.error or m.numeric, what="the reply to %s" % cmd[:30])
            check(m.command == code, "%s got %s, expected %s" % (cmd[:30], m.line, code))
        a.assert_none(what="anything else", pred=lambda m: m.error)


def case_replay_and_history():
    """After a restart, a JOIN replays the channel's last lines: in a chathistory batch with the
    stored times (server-time, batch), or between NOTICEs with the time in the text; CHATHISTORY
    and SEARCH answer from the file; a client with draft/chathistory gets no automatic replay."""
    relay = Relay("irc_history", PLAIN + ["--replay", "5"])
    with relay:
        w, gw = line_client(relay)
        for i in range(7):
            w.say("line number %d" % i)
        w.say("/me looks for the fox")
        w.say("/history 1")
        read_through(w, lambda l: "looks for the fox" in l, what="the last line stored")
    relay.stop()
    stored = relay.query("SELECT id, at, body FROM messages WHERE kind IN ('say', 'me') ORDER BY id")
    check(len(stored) == 8, "stored %r" % stored)
    with relay:
        a = irc(relay, "timed", caps=["server-time", "batch", "message-tags"])
        a.send("JOIN #lobby")
        batch = a.read_batch("chathistory")
        got = [(int(m.tags["msgid"]), m.tags["time"], m.ctcp()[1] if m.ctcp() else m.text) for m in batch.messages]
        want = [(i, at, body) for i, at, body in stored[-5:]]
        check(got == want, "the replay in the batch: %r, expected %r" % (got, want))
        check(batch.params == ["#lobby"], "the batch's target: %r" % batch.params)

        b = irc(relay, "plain")
        b.send("JOIN #lobby")
        b.expect("NOTICE", lambda m: m.params[0] == "#lobby" and "Replay" in m.text)
        lines = b.read_until("NOTICE", lambda m: m.text == "End of replay")[:-1]
        texts = [m.ctcp()[1] if m.ctcp() else m.text for m in lines if m.command == "PRIVMSG"]
        check(texts == ["[%s %s] %s" % (at[:10], at[11:19], body) for _, at, body in stored[-5:]],
              "the plain replay: %r" % texts)
        check(all("time" not in m.tags for m in b.received), "a tag reached a client that asked for none")

        c = irc(relay, "asker", caps=["server-time", "batch", "message-tags", "draft/chathistory"])
        c.join("#lobby")
        c.assert_none("PRIVMSG", what="an automatic replay to a draft/chathistory client")
        c.send("CHATHISTORY LATEST #lobby * 3")
        got = [int(m.tags["msgid"]) for m in c.read_batch("chathistory").messages]
        check(got == [r[0] for r in stored[-3:]], "LATEST 3: %r" % got)
        mid = stored[3][0]
        c.send("CHATHISTORY BEFORE #lobby msgid=%d 2" % mid)
        got = [int(m.tags["msgid"]) for m in c.read_batch("chathistory").messages]
        check(got == [stored[1][0], stored[2][0]], "BEFORE: %r" % got)
        t = stored[2][1]            # lines said in one packet may share a millisecond: "after" is strict
        c.send("CHATHISTORY AFTER #lobby timestamp=%s 2" % t)
        got = [int(m.tags["msgid"]) for m in c.read_batch("chathistory").messages]
        check(got == [r[0] for r in stored if r[1] > t][:2], "AFTER timestamp=%s: %r of %r" % (t, got, stored))
        c.send("CHATHISTORY BETWEEN #lobby msgid=%d msgid=%d 10" % (stored[0][0], stored[3][0]))
        got = [int(m.tags["msgid"]) for m in c.read_batch("chathistory").messages]
        check(got == [stored[1][0], stored[2][0]], "BETWEEN: %r" % got)
        c.send("CHATHISTORY LATEST #nowhere * 3")
        f = c.expect("FAIL")
        check(f.params[:2] == ["CHATHISTORY", "INVALID_TARGET"], "bad target: %s" % f.line)
        c.send("SEARCH text=fox;in=#lobby")
        found = c.read_batch("soju.im/search").messages
        check([m.ctcp() for m in found] == [("ACTION", "looks for the fox")], "SEARCH fox: %r" % found)
        c.send("SEARCH nothingmatchesthis")
        c.read_batch("soju.im/search")
        c.expect("NOTICE", lambda m: m.text == "no matches")


def case_topic_kept():
    """TOPIC is stored (kind 'topic'), shown on JOIN (332) and to line clients, and kept across a
    restart."""
    relay = Relay("irc_topic", PLAIN + ["--replay", "0"])
    with relay:
        line, gl = line_client(relay)
        a = irc(relay, "setter")
        a.join("#lobby")
        a.send("TOPIC #lobby :the quick brown fox")
        a.expect("TOPIC", lambda m: m.params == ["#lobby", "the quick brown fox"])
        expect_line(line, "*** setter set the topic of lobby: the quick brown fox")
    relay.stop()
    check(relay.query("SELECT nick, kind, body FROM messages WHERE kind = 'topic'") ==
          [("setter", "topic", "the quick brown fox")], "the topic row")
    with relay:
        b = irc(relay, "comer")
        joined = b.join("#lobby")
        t = [m for m in joined if m.command == "332"]
        check(t and t[0].params[1:] == ["#lobby", "the quick brown fox"], "no 332 after the restart: %r" % joined)
        line, gl = line_client(relay)
        line.say("/topic")
        expect_line(line, "*** Topic of lobby: the quick brown fox")


def case_ping_timeout():
    """The server pings a silent IRC client after --irc-ping and cuts it at twice that; a client
    that answers stays."""
    with Relay("irc_ping", PLAIN + ["--irc-ping", "5"]) as relay:
        quiet = IrcClient("quiet", auto_pong=False)
        quiet.connect("127.0.0.1", relay.port)
        quiet.register("quiet")
        alive = irc(relay, "alive")
        t0 = time.time()
        while not quiet.closed and time.time() < t0 + 30:
            quiet.wait_closed(0.5)
            alive.wait_closed(0.5)  # only reads (and so answers the server's PINGs): silent otherwise
        check(quiet.closed, "a client that never answered PING was not cut within 30 s")
        check(any(m.command == "PING" for m in quiet.received), "the silent client was never pinged")
        check(any(m.command == "ERROR" and "ping timeout" in m.text for m in quiet.received),
              "no ping timeout ERROR: %s" % quiet.dump(5))
        check(alive.pings_answered >= 1, "the answering client was never pinged")
        alive.sync()
        check(not alive.closed, "the client that answered was cut")
        check("ping timeout" in relay.log(), "the log does not say why")


def case_irssi():
    """A real irssi (in tmux) and an nc user in the same room through the service's port: lines
    both ways, /me, /msg, /topic, /names, /whois, /version, /time, a refused /kick; after a restart irssi sees the replay with its
    original times; the sqlite3 CLI shows both clients' lines alike."""
    relay = Relay("irc_irssi", PLAIN + ["--replay", "5"])
    with relay, Irssi() as ir:
        line, gl = line_client(relay)
        ir.start("127.0.0.1", relay.port, "irssiuser")
        ir.join("#lobby")
        expect_line(line, "*** irssiuser joined lobby")
        ir.say("hello from irssi", "#lobby")
        expect_line(line, "<irssiuser> hello from irssi")
        line.say("hello from nc")
        ir.wait_for(r"<\s*%s> hello from nc" % gl, log="#lobby")
        ir.command("/me waves")
        expect_line(line, "* irssiuser waves")
        line.say("/msg irssiuser psst")
        ir.wait_for(r"psst", log=gl)
        ir.command("/msg %s back at you" % gl)
        expect_line(line, "*irssiuser* back at you")
        ir.command("/topic a topic from irssi")
        expect_line(line, "*** irssiuser set the topic of lobby: a topic from irssi")
        ir.command("/names #lobby")
        ir.wait_for(r"%s" % gl)
        ir.command("/whois %s" % gl)
        ir.wait_for(r"line client")
        # what a user types to a server, answered instead of "Unknown command"
        ir.command("/version")
        ir.wait_for(r"chatrelay-\d+\.\d+\.\d+")
        ir.command("/time")
        ir.wait_for(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
        ir.command("/kick %s" % gl)
        ir.wait_for(r"not channel operator", log="#lobby")
        check(not line.closed and line.drain(0.3) == [], "the nc user was touched by the refused kick")
    rows = relay.query("SELECT nick, kind, body FROM messages WHERE kind IN ('say', 'me') ORDER BY id")
    check(rows == [("irssiuser", "say", "hello from irssi"), (gl, "say", "hello from nc"), ("irssiuser", "me", "waves")],
          "the file holds %r" % rows)
    stored = relay.query("SELECT at, body FROM messages WHERE body = 'hello from irssi'")[0]
    with relay, Irssi() as ir2:
        ir2.start("127.0.0.1", relay.port, "second")
        ir2.join("#lobby")
        got = ir2.wait_for(r"hello from irssi", log="#lobby")
        when = Irssi.line_time(got.string)
        check(when is not None and when.strftime("%Y-%m-%dT%H:%M:%S") == stored[0][:19],
              "irssi showed the replayed line at %r, stored at %s" % (when, stored[0]))


def case_ii():
    """ii, the file-driven client: a scripted exchange with an nc user, and the CLI's view."""
    with Relay("irc_ii", PLAIN + ["--replay", "0"]) as relay, Ii() as ii:
        line, gl = line_client(relay)
        ii.start("127.0.0.1", relay.port, "iiuser")
        ii.join("#lobby")
        expect_line(line, "*** iiuser joined lobby")
        ii.say("#lobby", "scripted hello")
        expect_line(line, "<iiuser> scripted hello")
        line.say("answer from nc")
        ii.wait_for(r"<%s> answer from nc" % gl, target="#lobby")
        ii.msg(gl, "private from ii")
        expect_line(line, "*iiuser* private from ii")
    check(relay.query("SELECT nick, body FROM messages WHERE kind = 'say' ORDER BY id") ==
          [("iiuser", "scripted hello"), (gl, "answer from nc")], "rows")


def case_password():
    """--password-file: an nc user is asked for the password and gets nothing (no nick, room,
    history or chat) until /pass gives it, and is cut after three wrong ones; ii with the password
    registers and chats with the nc user, an IRC client with a wrong one gets 464 and the close;
    nothing said before the password is in the file; the secret is never in the log; a missing
    or empty file stops the start with the reason."""
    secret = "correct horse battery"
    path = os.path.join(WORK, "irc_password.txt")
    with open(path, "w") as f:
        f.write("# the relay's password\npassword=%s\n" % secret)
    with Relay("irc_password", PLAIN + ["--replay", "5", "--password-file", winpath(path)]) as relay:
        nc = Client(relay.port)
        lines = read_through(nc, lambda l: "needs a password" in l, what="the password prompt")
        check(lines == ["*** Welcome to chatrelay.", "*** This server needs a password: type /pass PASSWORD."],
              "the locked greeting: %r" % lines)
        nc.say("hello before the password")
        expect_line(nc, "*** Type /pass PASSWORD first (or /quit).")
        nc.say("/pass wrong")
        expect_line(nc, "*** Wrong password.")
        nc.say("/pass " + secret)
        gl = greeted_nick(nc, "the greeting after /pass")
        with Ii() as ii:
            ii.start("127.0.0.1", relay.port, "iiuser", password=secret)
            ii.join("#lobby")
            expect_line(nc, "*** iiuser joined lobby")
            ii.say("#lobby", "with the password")
            expect_line(nc, "<iiuser> with the password")
            nc.say("welcome, ii")
            ii.wait_for(r"<%s> welcome, ii" % gl, target="#lobby")
        bad = IrcClient("mallory")
        bad.connect("127.0.0.1", relay.port)
        bad.send("PASS not-it")
        bad.send("NICK mallory")
        bad.send("USER m 0 * :M")
        bad.expect("464")
        bad.expect("ERROR")
        check(bad.wait_closed(10), "the IRC client with a wrong password was not disconnected")
        thrice = Client(relay.port)
        read_through(thrice, lambda l: "needs a password" in l, what="the prompt")
        thrice.send("/pass a\r\n/pass b\r\n/pass c\r\n")
        expect_line(thrice, "*** Wrong password; disconnecting.")
        check(thrice.wait_closed(10), "three wrong passwords did not disconnect")
        check(relay.stop() == 0, "relay did not stop cleanly")
        log = relay.log()
        check("a password is required" in log, "the log does not say a password is required")
        check(secret not in log and "not-it" not in log, "a password is in the log")
        check("closed (bad password)" in log, "the log does not say why the sessions were closed")
        check(len(re.findall(r"session \d+: bad password, client 127\.0\.0\.1", log)) == 2,
              "the log does not name the address of each refused client: %s" % log[-800:])
    rows = relay.query("SELECT nick, kind, body FROM messages WHERE kind IN ('say', 'join') ORDER BY id")
    check(rows == [(gl, "join", ""), ("iiuser", "join", ""), ("iiuser", "say", "with the password"),
                   (gl, "say", "welcome, ii")], "the file holds %r" % rows)
    # a missing file, and one without a password= line: the start fails with the reason
    empty = os.path.join(WORK, "irc_password_empty.txt")
    with open(empty, "w") as f:
        f.write("# nothing here\n")
    for bad_path, why in ((os.path.join(WORK, "no-such-password.txt"), "cannot open"), (empty, "no password= line")):
        p = subprocess.run([WINE, EXE, "--console", "--no-history", "--listen", "127.0.0.1:%d" % free_port(),
                            "--password-file", winpath(bad_path)],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        out = (p.stdout + p.stderr).decode("utf-8", "replace")
        check(p.returncode != 0 and "--password-file" in out and why in out,
              "--password-file %s: rc %d, %r" % (bad_path, p.returncode, out[-400:]))


def case_service():
    """Done when of issue 13: irssi, ii and nc users chat in the same room through the service
    installed with `sc create` (an IRC-only --listen-irc port for irssi, the detecting port for ii
    and nc); after `sc stop` / `sc start` irssi gets the replay with its original times; the
    sqlite3 CLI shows every client's lines alike."""
    import os
    from harness import WORK, free_port, winpath
    import test_service as svc
    name = svc.unique_name("irc")
    port, irc_port = free_port(), free_port()
    log = svc.fresh(os.path.join(WORK, name + ".log"))
    db = svc.fresh(os.path.join(WORK, name + ".db"))
    os.makedirs(WORK, exist_ok=True)
    try:
        svc.create(name, ["--listen", "127.0.0.1:%d" % port, "--listen-irc", "127.0.0.1:%d" % irc_port,
                          "--replay", "10", "--db", winpath(db), "--log", winpath(log)])
        rc, out = svc.sc("start", name)
        check(rc == 0, "sc start failed (rc %d): %s" % (rc, out))
        svc.wait_state(name, "RUNNING")
        with Irssi() as ir, Ii() as ii:
            line, gl = connect(types.SimpleNamespace(port=port))   # a service, not a Relay
            ir.start("127.0.0.1", irc_port, "irssisvc")
            ir.join("#lobby")
            ii.start("127.0.0.1", port, "iisvc")
            ii.join("#lobby")
            expect_line(line, "*** irssisvc joined lobby")
            expect_line(line, "*** iisvc joined lobby")
            ir.say("irssi says hi", "#lobby")
            expect_line(line, "<irssisvc> irssi says hi")
            ii.wait_for(r"<irssisvc> irssi says hi", target="#lobby")
            ii.say("#lobby", "ii says hi")
            ir.wait_for(r"ii says hi", log="#lobby")
            line.say("nc says hi")
            ir.wait_for(r"nc says hi", log="#lobby")
            ii.wait_for(r"<%s> nc says hi" % gl, target="#lobby")
            ir.command("/me waves from irssi")
            expect_line(line, "* irssisvc waves from irssi")
            line.close()
        svc.stop(name, log)
        svc.wait_state(name, "STOPPED", 10)
        rows = relay_rows(db)
        check(rows == [("irssisvc", "say", "irssi says hi"), ("iisvc", "say", "ii says hi"),
                       (gl, "say", "nc says hi"), ("irssisvc", "me", "waves from irssi")], "the file holds %r" % rows)
        at = sqlite_cli(db, "SELECT at FROM messages WHERE body = 'irssi says hi'")
        rc, out = svc.sc("start", name)
        check(rc == 0, "sc start (again) failed (rc %d): %s" % (rc, out))
        svc.wait_state(name, "RUNNING")
        with Irssi() as ir:
            ir.start("127.0.0.1", irc_port, "irssiback")
            ir.join("#lobby")
            got = ir.wait_for(r"irssi says hi", log="#lobby")
            when = Irssi.line_time(got.string)
            check(when.strftime("%Y-%m-%dT%H:%M:%S") == at[:19],
                  "after the restart irssi showed the line at %s, stored at %s" % (when, at))
        svc.stop(name, log)
        svc.wait_state(name, "STOPPED", 10)
        rc, out = svc.sc("delete", name)
        check(rc == 0, "sc delete failed (rc %d): %s" % (rc, out))
    finally:
        svc.remove_service(name)


def sqlite_cli(db, sql):
    """One value through the real sqlite3 CLI, as a user would read it."""
    import subprocess
    out = subprocess.run(["sqlite3", db, sql], capture_output=True, text=True, timeout=30)
    check(out.returncode == 0, "sqlite3 failed: %s" % out.stderr)
    return out.stdout.strip()


def relay_rows(db):
    out = sqlite_cli(db, "SELECT nick || '|' || kind || '|' || body FROM messages WHERE kind IN ('say', 'me')"
                         " ORDER BY id")
    return [tuple(l.split("|", 2)) for l in out.splitlines()]


CASES = {
    "service": case_service,
    "registration": case_registration,
    "mixed_room": case_mixed_room,
    "order": case_order,
    "long_line_split": case_long_line_split,
    "errors": case_errors,
    "replay_and_history": case_replay_and_history,
    "topic_kept": case_topic_kept,
    "ping_timeout": case_ping_timeout,
    "irssi": case_irssi,
    "ii": case_ii,
    "password": case_password,
}

if __name__ == "__main__":
    run_cases(CASES)

#!/usr/bin/env python3
"""Writes the hub seeds of tests/fuzz/corpus (hub_*): sessions that use every command,
flood, a stalled reader, telnet bytes between commands, idle time and resets; and,
with the stub history's script (tests/fuzz/stub_history.h), database outages, a
refused record, failing queries, a held private message whose recipient's slot is
reused, lines after /quit, and the same commands with no history at all.

Layout (fuzz_input.c): [flags] [ncuts] [ncuts x (op, low)] [small cap]
([script length] [script]) payload.
flags: bit 3 no history, bit 4 a script follows, bits 5-6 outage bounds, bit 7 retention.
A cut falls at (op << 8 | low) % (len + 1); the op byte also tells stage_hub what
happens before the piece that ends at that cut: the slot (op & 3), time passing
((op >> 2) & 3: 0-2 x 150 ms, 3: 3.5 s), the next slot's reader stalled
(op & 0x30 == 0x30), a short send (op & 0x40), a reset (op & 0xC0 == 0xC0).
The last piece goes to slot small_cap % 4, which also says --log-private
(small_cap & 1) and a stop notice before the end (small_cap & 2).

    python3 tests/fuzz/make_hub_seeds.py tests/fuzz/corpus
"""
import os
import sys

NO_HISTORY = 0x08
BOUNDS_4_LINES = 1 << 5      # outage bounds: 4 lines (else the product's)
BOUNDS_SMALL = 3 << 5        # 16 lines, 4 KiB, 500 ms
RETENTION = 0x80

# script bytes (stub_history.h): one per history_begin, and one per query or upkeep step
OK = 0x00
BUSY = 0x02                  # history_begin: database is locked
COMMIT_FAILS = 0x0C          # history_begin succeeds, the commit fails with an I/O error
APPEND_FAILS = 0x30          # the first append fails with an I/O error
QUERY_FAILS = 0x03           # a query: unavailable; also a begin that fails with an I/O error


def op_byte(slot, wait=0, stall=False, short=False, reset=False):
    op = (slot & 3) | ((wait & 3) << 2)
    if stall:
        op |= 0x30
    if reset:
        op |= 0xC0
    elif short:
        op |= 0x40
    return op


def seed(pieces, last_slot, small_cap_flags=0, flags=0, script=None):
    """pieces: [(bytes, op)]; each but the last ends at a cut with that op.
    script: None, or [poison byte, outcome bytes...] for the stub history."""
    payload = b"".join(p for p, _ in pieces)
    L = len(payload) + 1
    if script is not None:
        flags |= 0x10
    header = bytes([flags, len(pieces) - 1])
    pos = 0

    def same(o, op):   # the same slot, stall and reset; time and short send may differ
        return (o & 3) == (op & 3) and ((o & 0x30) == 0x30) == ((op & 0x30) == 0x30) \
            and ((o & 0xC0) == 0xC0) == ((op & 0xC0) == 0xC0)

    for data, op in pieces[:-1]:
        pos += len(data)
        for cand in [op] + [o for o in range(256) if o != op and same(o, op)]:
            lows = [lo for lo in range(256) if ((cand << 8) | lo) % L == pos]
            if lows:
                header += bytes([cand, lows[0]])
                break
        else:
            raise SystemExit("cannot place a cut at %d with op %#x (len %d)" % (pos, op, L - 1))
    cap_byte = next(b for b in range(256)
                    if (1 + b % 32) % 4 == last_slot % 4 and ((1 + b % 32) & small_cap_flags) == small_cap_flags)
    header += bytes([cap_byte])
    if script is not None:
        header += bytes([len(script)]) + bytes(script)
    return header + payload


def lines(*texts):
    return "".join(t + "\r\n" for t in texts).encode()


COMMANDS = [
    (lines("/nick alice", "/join games", "/who", "/rooms", "/me waves"), op_byte(0)),
    (lines("/nick bob", "/msg ALICE hi there", "/msg zed x", "/msg bob self"), op_byte(1)),
    (lines("//etc/hosts", "/history 5", "/search fox", "/help", "/frob", "/nick alice"), op_byte(2, 1)),
    (lines("/join Games", "hello games", "/who"), op_byte(1)),
    (lines("/quit bye"), op_byte(0, short=True)),
]

SEEDS = {
    "hub_commands": seed(COMMANDS, 2, small_cap_flags=2),
    "hub_commands_no_history": seed(COMMANDS, 2, small_cap_flags=2, flags=NO_HISTORY),
    # A /quit reason longer than the hub's copy of close reasons, in 2-byte characters.
    "hub_quit_long_utf8_reason": seed([
        (lines("/nick alice"), op_byte(1)),
        (("/quit " + "\u00e9" * 30 + "\r\n").encode(), op_byte(0)),
    ], 1),
    "hub_flood_kick": seed([(lines(*["flood %d" % i for i in range(34)]), op_byte(0)),
                            (lines("/quit"), op_byte(1))], 1),
    "hub_slow_consumer": seed([
        (lines(*[("y" * 990) + " %d" % i for i in range(2)]), op_byte(0, stall=True)),
        (lines(*[("z" * 990) + " %d" % i for i in range(2)]), op_byte(0, stall=True)),
        (lines("/who"), op_byte(1)),
    ], 1),
    "hub_telnet_and_commands": seed([
        (b"\xff\xfd\x18\xff\xfb\x1f/ni", op_byte(0)),
        (b"ck tel\r\x00\xff\xfa\x18\x00xterm\xff", op_byte(0)),
        (b"\xf0/join t\x7fx\r\n\xff\xff/me \x1b[31m\xc2\x9bred\r\n", op_byte(0)),
    ], 0),
    "hub_idle_and_reset": seed([
        (lines("/nick idle1"), op_byte(1)),
        (lines("still here"), op_byte(0, wait=3)),
        (lines("/nick guest3"), op_byte(2, reset=True)),
        (lines("/who", "/rooms"), op_byte(3, wait=3)),
    ], 2),
    # The database is locked or failing for a while: lines are held in order, then
    # everything held is stored and delivered as a backlog.
    "hub_outage_backlog": seed([
        (lines("held one", "held two", "/me held three"), op_byte(0)),
        (lines("held four", "held five", "refused six"), op_byte(1, wait=1)),
        (lines("/nick carol", "/join elsewhere", "/join lobby"), op_byte(2, wait=2)),
        (lines("after the outage"), op_byte(0, wait=3)),
    ], 1, flags=BOUNDS_SMALL, script=[0, BUSY, BUSY, COMMIT_FAILS, APPEND_FAILS, OK]),
    # An outage that never ends, with resets: chat past 4 held lines is refused,
    # joins and leaves past 4x that are dropped; the stop's final commit.
    "hub_outage_long": seed(
        [(lines("x%d" % i), op_byte(i % 3, wait=2, reset=(i % 2 == 1))) for i in range(15)]
        + [(lines("last"), op_byte(3, wait=3))],
        3, small_cap_flags=2, flags=BOUNDS_4_LINES, script=[0, BUSY]),
    # The database refuses every record with a '!' in it: it is dropped (its sender
    # is told), the rest of the turn's lines are stored and delivered.
    "hub_rejected_record": seed([
        (lines("fine one", "bad one!", "fine two", "/me also bad!", "fine three"), op_byte(0)),
        (lines("/msg guest1 private! one", "fine four"), op_byte(1)),
    ], 1, script=[ord("!"), OK]),
    # A private message held by an outage whose recipient's slot is reused before
    # it could be delivered: the newcomer must not get it; the sender is told.
    "hub_held_msg_slot_reuse": seed([
        (lines("/msg guest3 held for you", "also held"), op_byte(0)),
        (lines("/nick newcomer"), op_byte(2, reset=True)),
        (lines("after"), op_byte(1, wait=3)),
    ], 1, script=[0, BUSY, OK, OK, OK, OK]),
    # Everything a session sends after its /quit, in the same packet, is dropped.
    "hub_quit_then_more": seed([
        (lines("before the quit", "/quit bye now", "said after the quit", "/me acts after the quit",
               "/msg guest2 after the quit"), op_byte(0)),
        (lines("still here"), op_byte(1)),
    ], 1),
    # Replays and searches that find the database locked, or stop at their budget.
    "hub_queries_failing": seed([
        (lines("fox one", "fox two", "fox three"), op_byte(0)),
        (lines("/history 3", "/search fox", "/search fox", "/history"), op_byte(1, wait=1)),
        (lines("/join lobby2", "/join lobby", "/search fox"), op_byte(2, wait=3)),
    ], 1, flags=RETENTION, script=[0, OK, OK, OK, OK, 0x1C, QUERY_FAILS, 0x0C, OK]),
    # IRC beside line clients (the listener detects the dialect from the first line): every
    # command, a long line split for IRC, CTCP, CHATHISTORY, SEARCH, topics, QUIT, an outage
    "hub_irc_mixed": seed([
        (lines("CAP LS 302", "NICK ircer", "USER u 0 * :R", "CAP REQ :server-time batch message-tags echo-message",
               "CAP END", "JOIN #lobby,#games", "PRIVMSG #lobby :hi \x01ACTION waves\x01",
               "PRIVMSG #lobby :\x01ACTION dances\x01", "TOPIC #lobby :a topic"), op_byte(0)),
        (lines("hello from a line client", "/me " + "x" * 900, "/msg ircer psst", "/nick liner"), op_byte(1, wait=3)),
        (lines("NICK ircer2", "WHO #lobby", "NAMES #lobby", "WHOIS liner", "MODE #lobby", "MODE #lobby b", "LIST",
               "AWAY :gone", "ISON liner nobody", "CHATHISTORY LATEST #lobby * 5",
               "CHATHISTORY BEFORE #lobby msgid=3 2", "SEARCH text=hello;in=#lobby", "SEARCH hello",
               "USERHOST liner ircer2 nobody", "VERSION", "TIME", "LUSERS", "MOTD", "WHOWAS x,y", "KICK #lobby liner",
               "PRIVMSG liner :back", "PART #games :bye", "PING :t", "FROB", "QUIT :done"), op_byte(0, wait=1)),
        (lines("NICK second", "USER u 0 * :R", "JOIN #lobby", "PRIVMSG #lobby :" + "\u00e9" * 400), op_byte(2)),
    ], 1),
    "hub_irc_outage": seed([
        (lines("NICK held", "USER u 0 * :R", "JOIN #lobby"), op_byte(0)),
        (lines("line client here"), op_byte(1, wait=3)),
        (lines("NICK held2", "WHO #lobby", "PRIVMSG #lobby :during the outage", "QUIT :bye"), op_byte(0, wait=1)),
        (lines("/who", "after"), op_byte(1, wait=3)),
    ], 1, flags=BOUNDS_4_LINES, script=[0, OK, OK, BUSY, BUSY, BUSY, OK, OK]),
}

if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: make_hub_seeds.py CORPUS_DIR")
    for name, data in SEEDS.items():
        with open(os.path.join(sys.argv[1], name), "wb") as f:
            f.write(data)
        print("%s: %d bytes" % (name, len(data)))

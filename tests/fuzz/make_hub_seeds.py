#!/usr/bin/env python3
"""Writes the hub seeds of tests/fuzz/corpus (hub_*): sessions that use every command,
flood, a stalled reader, telnet bytes between commands, idle time and resets.

Layout (fuzz_input.c): [repeat] [ncuts] [ncuts x (op, low)] [small cap] payload.
A cut falls at (op << 8 | low) % (len + 1); the op byte also tells stage_hub what
happens before the piece that ends at that cut: the slot (op & 3), time passing
((op >> 2) & 3: 0-2 x 150 ms, 3: 3.5 s), the next slot's reader stalled
(op & 0x30 == 0x30), a short send (op & 0x40), a reset (op & 0xC0 == 0xC0).
The last piece goes to slot small_cap % 4.

    python3 tests/fuzz/make_hub_seeds.py tests/fuzz/corpus
"""
import os
import sys

REPEATS = [1, 1, 1, 1, 1, 2, 5, 40]


def op_byte(slot, wait=0, stall=False, short=False, reset=False):
    op = (slot & 3) | ((wait & 3) << 2)
    if stall:
        op |= 0x30
    if reset:
        op |= 0xC0
    elif short:
        op |= 0x40
    return op


def seed(pieces, last_slot, small_cap_flags=0):
    """pieces: [(bytes, op)]; each but the last ends at a cut with that op."""
    payload = b"".join(p for p, _ in pieces)
    L = len(payload) + 1
    header = bytes([0, len(pieces) - 1])
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
    return header + bytes([cap_byte]) + payload


def lines(*texts):
    return "".join(t + "\r\n" for t in texts).encode()


SEEDS = {
    "hub_commands": seed([
        (lines("/nick alice", "/join games", "/who", "/rooms", "/me waves"), op_byte(0)),
        (lines("/nick bob", "/msg ALICE hi there", "/msg zed x", "/msg bob self"), op_byte(1)),
        (lines("//etc/hosts", "/history 5", "/search fox", "/help", "/frob", "/nick alice"), op_byte(2, 1)),
        (lines("/join Games", "hello games", "/who"), op_byte(1)),
        (lines("/quit bye"), op_byte(0, short=True)),
    ], 2, small_cap_flags=2),
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
}

if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: make_hub_seeds.py CORPUS_DIR")
    for name, data in SEEDS.items():
        with open(os.path.join(sys.argv[1], name), "wb") as f:
            f.write(data)
        print("%s: %d bytes" % (name, len(data)))

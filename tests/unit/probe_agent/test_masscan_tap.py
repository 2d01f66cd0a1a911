"""The masscan backend's SYN-ACK tap: its kernel filter program and the frame parser (the socket
itself is exercised on the testbed, tests/integration/test_agent_masscan.py)."""

from __future__ import annotations

import socket
import struct

from probe_agent.backends.masscan import _synack_to, parse_synack


def _frame(src: str, sport: int, ttl: int, ihl_words: int = 5) -> bytes:
    eth = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
    ip = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl_words, 0, 40, 1, 0, ttl, 6, 0, socket.inet_aton(src),
                     socket.inet_aton("198.18.0.1")) + b"\x00" * (4 * (ihl_words - 5))
    tcp = struct.pack("!HHIIBBHHH", sport, 61007, 1, 2, 0x50, 0x12, 1024, 0, 0)
    return eth + ip + tcp


def test_a_syn_ack_frame_gives_its_source_and_ttl():
    assert parse_synack(_frame("198.19.238.99", 2323, 64)) == ("198.19.238.99", 2323, 64)
    # IP options move the TCP header: the port is read after them
    assert parse_synack(_frame("198.18.0.7", 80, 61, ihl_words=6)) == ("198.18.0.7", 80, 61)


def test_a_short_or_broken_frame_gives_nothing():
    frame = _frame("198.18.0.7", 80, 64)
    assert parse_synack(frame[:30]) is None
    broken = bytearray(frame)
    broken[14] = 0x43                      # header length 12 bytes: not IPv4 as sent
    assert parse_synack(bytes(broken)) is None


def test_the_filter_program_is_whole_instructions_ending_in_accept_then_drop():
    code = _synack_to("198.18.0.1", 61007)
    assert len(code) % 8 == 0
    ins = [struct.unpack("HBBI", code[i:i + 8]) for i in range(0, len(code), 8)]
    assert ins[-2] == (0x06, 0, 0, 128) and ins[-1] == (0x06, 0, 0, 0)
    # every conditional jump lands inside the program
    for k, (op, jt, jf, _) in enumerate(ins):
        if op & 0x07 == 0x05:
            assert k + 1 + jt < len(ins) and k + 1 + jf < len(ins)

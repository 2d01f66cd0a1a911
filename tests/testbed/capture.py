"""Packet capture for the test networks: ``tcpdump -w`` on one interface, and a small pcap reader.

    with Capture("sfb1a2b3c", tmp / "scan.pcap", local="198.18.7.1") as cap:
        ...                                   # the scan
    cap.synacks()     # {(ip, port)} that answered the local address with a SYN-ACK
    cap.sent()        # (packets, bytes) the local address sent at the IP layer (ARP excluded)
    cap.arp()         # ARP frames the local side sent (requests and replies)
    cap.dropped       # frames tcpdump could not keep (0 on a healthy run)
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SYN, RST, ACK = 0x02, 0x04, 0x10


@dataclass(frozen=True)
class Packet:
    """One captured frame: IPv4 (``proto`` 6 for TCP), ARP (``proto`` 0, the sender and target
    addresses as ``src`` and ``dst``) or anything else (``proto`` -1, no addresses). ``length`` is
    the IP total length for IPv4, the frame length otherwise."""

    ts: float
    src: str
    dst: str
    proto: int
    sport: int
    dport: int
    flags: int
    length: int


def read_pcap(path: str | Path) -> list[Packet]:
    """Parse a classic pcap file of Ethernet frames (what ``tcpdump -w`` writes)."""
    data = Path(path).read_bytes()
    if len(data) < 24:
        return []
    magic = struct.unpack_from("<I", data, 0)[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    nano = magic in (0xA1B23C4D, 0x4D3CB2A1)
    out: list[Packet] = []
    pos = 24
    while pos + 16 <= len(data):
        sec, frac, incl, orig = struct.unpack_from(endian + "IIII", data, pos)
        frame = data[pos + 16:pos + 16 + incl]
        pos += 16 + incl
        ts = sec + frac / (1e9 if nano else 1e6)
        if len(frame) >= 42 and frame[12:14] == b"\x08\x06":  # ARP: sender and target address
            out.append(Packet(ts, socket.inet_ntoa(frame[28:32]), socket.inet_ntoa(frame[38:42]), 0, 0, 0, 0, orig))
            continue
        if len(frame) < 34 or frame[12:14] != b"\x08\x00":
            out.append(Packet(ts, "", "", -1, 0, 0, 0, orig))
            continue
        ip = frame[14:]
        ihl = (ip[0] & 15) * 4
        proto = ip[9]
        src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
        sport = dport = flags = 0
        if proto == 6 and len(ip) >= ihl + 14:
            sport, dport = struct.unpack_from("!HH", ip, ihl)
            flags = ip[ihl + 13]
        out.append(Packet(ts, src, dst, proto, sport, dport, flags, struct.unpack_from("!H", ip, 2)[0]))
    return out


class Capture:
    """``tcpdump -w`` on one interface for the duration of a ``with`` block; then :meth:`packets`.

    ``local`` names the address of this side of the link (the scanner) for :meth:`synacks`,
    :meth:`sent` and :meth:`arp`.
    """

    def __init__(self, iface: str, path: str | Path, bpf: str = "", local: str = ""):
        self.iface, self.path, self.bpf, self.local = iface, Path(path), bpf, local
        self.dropped = 0
        self._proc: subprocess.Popen | None = None
        self._packets: list[Packet] | None = None

    def __enter__(self) -> "Capture":
        if not shutil.which("tcpdump"):
            raise RuntimeError("tcpdump is not installed (apt-get install tcpdump)")
        # A 16 MiB buffer and short snapshots: a loaded machine drops nothing at test rates.
        cmd = ["tcpdump", "-i", self.iface, "-n", "-U", "--immediate-mode", "-B", "16384", "-s", "128",
               "-w", str(self.path)]
        if self.bpf:
            cmd.append(self.bpf)
        self._proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True)
        line = self._proc.stderr.readline()          # "listening on IFACE ..." once it captures
        if "listening on" not in line:
            raise RuntimeError(f"tcpdump did not start: {line.strip()}")
        return self

    def __exit__(self, *exc) -> None:
        proc = self._proc
        if proc is None:
            return
        time.sleep(0.2)  # let the last frames reach tcpdump before it stops
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        proc.wait(10)
        self._proc = None
        m = re.search(r"(\d+) packets? dropped by kernel", rest)
        self.dropped = int(m.group(1)) if m else 0

    def packets(self) -> list[Packet]:
        """Every captured packet, in capture order (parsed once)."""
        if self._packets is None:
            self._packets = read_pcap(self.path)
        return self._packets

    def _need_local(self) -> str:
        if not self.local:
            raise ValueError("this capture was made without `local` (the scanner's address)")
        return self.local

    def synacks(self) -> set[tuple[str, int]]:
        """(ip, port) pairs that sent a SYN-ACK to the local address."""
        me = self._need_local()
        return {(p.src, p.sport) for p in self.packets()
                if p.proto == 6 and p.dst == me and p.flags & (SYN | ACK) == SYN | ACK and not p.flags & RST}

    def sent_packets(self) -> list[Packet]:
        """IPv4 packets the local address sent (ARP excluded)."""
        me = self._need_local()
        return [p for p in self.packets() if p.proto > 0 and p.src == me]

    def sent(self) -> tuple[int, int]:
        """(packets, bytes) the local address sent at the IP layer; ARP is not included."""
        out = self.sent_packets()
        return len(out), sum(p.length for p in out)

    def arp(self) -> int:
        """ARP frames (requests and replies) the local side sent."""
        me = self._need_local()
        return sum(1 for p in self.packets() if p.proto == 0 and p.src == me)

    def arp_requests_for(self) -> dict[str, int]:
        """ARP frames the local side sent, by the address asked about."""
        me = self._need_local()
        out: dict[str, int] = {}
        for p in self.packets():
            if p.proto == 0 and p.src == me:
                out[p.dst] = out.get(p.dst, 0) + 1
        return out

"""The ``masscan`` backend: SYN discovery with Debian's masscan, then banners with the connect grabber.

Two phases, like ZMap + ZGrab2:

1. masscan sends SYNs at the job's rate from a raw socket on ``agent.masscan_interface`` to the
   router (or on-link peer) MAC ``agent.masscan_router_mac``, over an include file of exactly the
   addresses the core found eligible (allowlisted, not excluded, not tracked in sweeps, this shard's),
   with the exclusion list passed again as ``--excludefile``. Each SYN-ACK becomes a SYN_ACK event
   (with the TTL masscan saw) as soon as masscan prints it.
2. Once masscan has sent its last SYN (its progress line says 100 % and it only waits for late
   answers), every open port gets one connect-and-grab through the core's rate caps; a banner becomes
   a BANNER event.

masscan's own receive side is not relied on alone: on the testbed it missed SYN-ACKs that were on the
wire (0 to 20 of 36 open ports of single-address scans, more the busier the machine; the answers to a
small scan's first SYNs can arrive before its receive thread listens). The backend opens a packet
socket of its own (:class:`SynAckTap`) *before* masscan starts, with a kernel filter passing only
SYN-ACKs to masscan's source port on the adapter address, and reports each one from a target and port
of the chunk once, whichever of the two saw it first (masscan checks its SYN cookie as well; the tap
accepts what answers the chunk's addresses and ports at masscan's source port, a port no other socket
of this host uses).

masscan's own ``--banners`` mode is not used: it needs a firewalled source port and hung in tests
here. masscan 1.3.2 also does not always exit after ``--wait`` when nothing more arrives (its receive
thread blocks), so the backend runs it line-buffered (``stdbuf -oL``: every result is out as soon as it
is printed) and ends it once the wait is over. Large jobs run as several masscan invocations of at
most ``masscan_chunk_probes`` probes, so exclusion list changes apply between them.

Accounting, as measured on the testbed's capture (40 bytes each at the IP layer, as masscan builds
them): the SYNs (addresses x ports x (1 + retries)); per SYN-ACK two RSTs (masscan's and, when
the adapter address is this host's own, the kernel's); per RST from a closed port masscan's answering
RST (masscan runs with ``--show closed`` so those are counted). ARP is not counted.
"""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import socket
import struct
import tempfile
import time

from probe_agent.backends import AddressChunk, Backend, BackendError, Job, ProbeResult, ProbeStatus
from probe_agent.backends.connect import ConnectGrabber
from probe_agent.safety import Allowlist
from probe_agent.settings import AgentSettings

log = logging.getLogger("scanflow.agent.masscan")

SYN_BYTES = 40
RST_BYTES = 40
_WAITING = re.compile(rb"100\.00% done, waiting (-?\d+)-secs")


def interface_ipv4(name: str) -> str | None:
    """The IPv4 address of interface ``name`` (SIOCGIFADDR), or None."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
        return socket.inet_ntoa(packed[20:24])
    except OSError:
        return None
    finally:
        s.close()


# Classic BPF (linux/filter.h) opcodes for the counting sockets.
_LDH_ABS, _LDW_ABS, _LDB_ABS, _LDX_MSH, _LDH_IND, _LDB_IND = 0x28, 0x20, 0x30, 0xB1, 0x48, 0x50
_JEQ, _JSET, _RET = 0x15, 0x45, 0x06
_SO_ATTACH_FILTER, _SOL_PACKET, _PACKET_STATISTICS, _ETH_P_ALL = 26, 263, 6, 0x0003


def _tcp_header_checks(ip: str, from_ip: bool, port: int, drop: int) -> list[tuple[int, int, int, int]]:
    """The first instructions of both filters: an IPv4 TCP first fragment from (``from_ip``) or to
    ``ip``, then its source (or destination) port equal to ``port``; a failed check jumps to ``drop``
    (the index of the program's last instruction, its "drop")."""
    addr = struct.unpack("!I", socket.inet_aton(ip))[0]
    return [
        (_LDH_ABS, 0, 0, 12), (_JEQ, 0, drop - 2, 0x0800),                  # IPv4
        (_LDW_ABS, 0, 0, 26 if from_ip else 30), (_JEQ, 0, drop - 4, addr),  # from / to the adapter address
        (_LDB_ABS, 0, 0, 23), (_JEQ, 0, drop - 6, 6),                       # TCP
        (_LDH_ABS, 0, 0, 20), (_JSET, drop - 8, 0, 0x1FFF),                 # first fragment
        (_LDX_MSH, 0, 0, 14), (_LDH_IND, 0, 0, 14 if from_ip else 16),      # X = IP header length; the port
        (_JEQ, 0, drop - 11, port),
    ]


def _program(prog: list[tuple[int, int, int, int]]) -> bytes:
    return b"".join(struct.pack("HBBI", *ins) for ins in prog)


def _tcp_from(ip: str, port: int, syn_only: bool) -> bytes:
    """A classic BPF program accepting the IPv4 TCP frames from ``ip:port`` (only pure SYNs when
    ``syn_only``); everything else is dropped before it reaches the socket."""
    drop = 14
    prog = _tcp_header_checks(ip, True, port, drop) + [
        (_LDB_IND, 0, 0, 27),                                       # TCP flags
        (_JEQ, 0, drop - 13, 0x02) if syn_only else (_JEQ, 0, 0, 0),
        (_RET, 0, 0, 64),
        (_RET, 0, 0, 0),
    ]
    assert len(prog) == drop + 1
    return _program(prog)


class WireCounter:
    """Counts, in the kernel, the frames leaving ``iface`` from ``ip:port`` while masscan runs: its
    SYNs, its RSTs and the kernel's RSTs to the SYN-ACKs masscan's SYNs drew (they all carry
    masscan's source port). Two packet sockets with a BPF filter each (all TCP from the port; pure
    SYNs only); their frames are never read: ``PACKET_STATISTICS`` counts what passed the filter,
    kept or dropped (reading it resets it)."""

    def __init__(self, iface: str, ip: str, port: int):
        import ctypes

        self._socks: list[socket.socket] = []
        try:
            for syn_only in (False, True):
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
                self._socks.append(sock)
                code = _tcp_from(ip, port, syn_only)
                buf = ctypes.create_string_buffer(code)
                fprog = struct.pack("HL", len(code) // 8, ctypes.addressof(buf))
                sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.bind((iface, _ETH_P_ALL))
            self.read()  # frames of other interfaces that passed before bind() are not ours
        except OSError:
            self.close()
            raise

    def read(self) -> tuple[int, int]:
        """(all frames, SYNs) since the last read."""
        out = []
        for sock in self._socks:
            packets, _drops = struct.unpack("II", sock.getsockopt(_SOL_PACKET, _PACKET_STATISTICS, 8))
            out.append(packets)  # tp_packets includes the frames dropped for want of buffer
        return out[0], out[1]

    def close(self) -> None:
        for sock in self._socks:
            sock.close()
        self._socks.clear()


_ALU_AND_K = 0x54


def _synack_to(ip: str, port: int) -> bytes:
    """A classic BPF program accepting the IPv4 TCP SYN-ACKs (SYN and ACK set, RST not) sent to
    ``ip:port``, the first 128 bytes of each (Ethernet, IP and TCP headers)."""
    drop = 15
    prog = _tcp_header_checks(ip, False, port, drop) + [
        (_LDB_IND, 0, 0, 27), (_ALU_AND_K, 0, 0, 0x16),             # TCP flags & (SYN | RST | ACK)
        (_JEQ, 0, drop - 14, 0x12),                                 # SYN | ACK
        (_RET, 0, 0, 128),
        (_RET, 0, 0, 0),
    ]
    assert len(prog) == drop + 1
    return _program(prog)


def parse_synack(frame: bytes) -> tuple[str, int, int] | None:
    """(source address, source port, TTL) of an Ethernet + IPv4 + TCP frame, or None if short."""
    if len(frame) < 14 + 20:
        return None
    ihl = (frame[14] & 0x0F) * 4
    if ihl < 20 or len(frame) < 14 + ihl + 4:
        return None
    ip = socket.inet_ntoa(frame[26:30])
    port = struct.unpack("!H", frame[14 + ihl:14 + ihl + 2])[0]
    return ip, port, frame[22]


class SynAckTap:
    """The SYN-ACKs that reach ``iface`` for ``ip:port`` (masscan's adapter address and source port),
    read from a packet socket with a kernel filter, opened before masscan sends its first SYN."""

    def __init__(self, iface: str, ip: str, port: int):
        import ctypes

        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
        try:
            code = _synack_to(ip, port)
            self._buf = ctypes.create_string_buffer(code)
            fprog = struct.pack("HL", len(code) // 8, ctypes.addressof(self._buf))
            self._sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self._sock.bind((iface, _ETH_P_ALL))
            self._sock.setblocking(False)
            self.drain()   # what passed before bind() (other interfaces) is not ours
        except OSError:
            self._sock.close()
            raise

    def fileno(self) -> int:
        return self._sock.fileno()

    def drain(self) -> list[tuple[str, int, int]]:
        """Every SYN-ACK queued since the last call: (address, port, TTL)."""
        out = []
        while True:
            try:
                frame = self._sock.recv(128)
            except (BlockingIOError, InterruptedError):
                return out
            got = parse_synack(frame)
            if got is not None:
                out.append(got)

    def close(self) -> None:
        self._sock.close()


def source_port(pid: int | None = None) -> int:
    """masscan's source port: above the kernel's ephemeral range (so no connection of this host,
    e.g. a banner grab, ever has it), and distinct between the agents of one host (by process id)."""
    try:
        lo, hi = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    except (OSError, ValueError):
        lo, hi = 32768, 60999
    pid = os.getpid() if pid is None else pid
    if hi < 65000:
        return hi + 1 + pid % (65535 - hi)
    return 1024 + pid % max(1, lo - 1024)


def _is_local_address(ip: str) -> bool:
    """True when ``ip`` is an address of this host: its kernel then answers masscan's SYN-ACKs
    with a RST of its own (no socket has the port)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((ip, 0))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _ip(value: int) -> str:
    return str(ipaddress.IPv4Address(value))


class MasscanBackend(Backend):
    """SYN discovery through a masscan subprocess (root), banners through :class:`ConnectGrabber`."""

    name = "masscan"
    needs_root = True
    ipv6 = False
    #: Probes per masscan invocation (exclusions are re-read between invocations).
    chunk_probes = 10_000_000

    def __init__(self, settings: AgentSettings):
        super().__init__(settings)
        self.grabber = ConnectGrabber(settings)
        self.allowlist = Allowlist(settings.allowed_networks())
        self._lock: asyncio.Lock | None = None
        self._grab_slots: asyncio.Semaphore | None = None
        self.adapter_ip = settings.masscan_adapter_ip
        self._kernel_answers = True
        self._warned: set[type] = set()
        #: masscan's source port (``--source-port``): its frames, and the kernel's RSTs, are counted by it.
        self.source_port = source_port()
        self.runs = 0

    def command(self, include: str, exclude: str, ports: list[int], rate: float) -> list[str]:
        """The masscan command line for one chunk (an explicit interface, MAC, source and guard)."""
        s = self.settings
        cmd = [s.masscan_path, "--interface", s.masscan_interface, "--router-mac", s.masscan_router_mac,
               "--adapter-ip", self.adapter_ip, "--source-port", str(self.source_port),
               "--rate", str(max(1, int(rate))), "--seed", str(s.seed),
               "--ports", ",".join(map(str, ports)), "--include-file", include, "--excludefile", exclude,
               "--exclude", "255.255.255.255", "--wait", str(max(0, round(s.masscan_wait_s))),
               "--retries", str(s.masscan_retries), "--show", "closed", "--output-format", "ndjson",
               "--output-filename", "-"]
        stdbuf = shutil.which("stdbuf")
        return ([stdbuf, "-oL"] if stdbuf else []) + cmd

    async def open(self) -> None:
        s = self.settings
        if os.geteuid() != 0:
            raise BackendError("masscan: sends raw packets and needs root; run the agent as root or use "
                               "--backend connect")
        if not shutil.which(s.masscan_path):
            raise BackendError(f"masscan: {s.masscan_path!r} not found; apt-get install masscan")
        if not s.masscan_interface or not os.path.isdir(f"/sys/class/net/{s.masscan_interface}"):
            raise BackendError(f"masscan: agent.masscan_interface {s.masscan_interface!r} is not an "
                               "interface here; name the one the probes must leave through")
        if not s.masscan_router_mac:
            raise BackendError("masscan: set agent.masscan_router_mac to the MAC of the next hop (the "
                               "router, or the peer on a point-to-point link)")
        if not self.adapter_ip:
            self.adapter_ip = interface_ipv4(s.masscan_interface) or ""
            if not self.adapter_ip:
                raise BackendError(f"masscan: interface {s.masscan_interface} has no IPv4 address; set "
                                   "agent.masscan_adapter_ip")
        self._kernel_answers = _is_local_address(self.adapter_ip)
        self._lock = asyncio.Lock()
        self._grab_slots = asyncio.Semaphore(s.concurrency)

    async def run(self, job: Job) -> None:
        if self._lock is None:
            await self.open()
        for chunk in job.address_chunks(self.chunk_probes):
            if job.stopping:
                return
            async with self._lock:  # one masscan at a time: they would share the link and the rate
                await self._scan_chunk(job, chunk)

    def _check_allowed(self, chunk: AddressChunk) -> None:
        # Defence in depth: the core only hands out vetted addresses, and masscan must never see others.
        for lo, hi in chunk.ranges:
            first, last = ipaddress.IPv4Address(lo), ipaddress.IPv4Address(hi)
            for net in ipaddress.summarize_address_range(first, last):
                if not any(net.version == a.version and net.subnet_of(a) for a in self.allowlist.networks):
                    raise BackendError(f"masscan: refusing to scan {net}: outside the allowlist")

    async def _scan_chunk(self, job: Job, chunk: AddressChunk) -> None:
        self._check_allowed(chunk)
        s = self.settings
        opened: set[tuple[str, int]] = set()   # each open port once, whoever saw it first
        closed: list[tuple[str, int]] = []
        tx_done = asyncio.Event()
        grabs: set[asyncio.Task] = set()
        with tempfile.TemporaryDirectory(prefix="scanflow-masscan-") as tmp:
            include = os.path.join(tmp, "include.txt")
            exclude = os.path.join(tmp, "exclude.txt")
            with open(include, "w") as fh:
                fh.writelines(f"{_ip(lo)}-{_ip(hi)}\n" for lo, hi in chunk.ranges)
            with open(exclude, "w") as fh:
                lines = [n for n in job.excluded_networks() if ":" not in n]
                fh.writelines(f"{n}\n" for n in lines + ["255.255.255.255/32"])
            cmd = self.command(include, exclude, chunk.ports, job.rate_pps)
            log.info("masscan: %d addresses x %d ports at %d pps", chunk.addresses, len(chunk.ports),
                     int(job.rate_pps))
            counter = self._counter()
            tap = self._tap()
            ports = set(chunk.ports)

            def found(ip: str, port: int, ttl, timestamp_us: int) -> None:
                """One open port, reported once per chunk whether masscan or the tap saw it first."""
                if (ip, port) in opened:
                    return
                opened.add((ip, port))
                job.report(ProbeResult(ip, port, ProbeStatus.OPEN, kind="SYN_ACK", ttl=ttl,
                                       packets=0, bytes=0, timestamp_us=timestamp_us))
                task = asyncio.create_task(grab(ip, port))
                grabs.add(task)
                task.add_done_callback(grabs.discard)

            def tapped() -> None:
                now_us = int(time.time() * 1_000_000)
                for ip, port, ttl in tap.drain():
                    value = struct.unpack("!I", socket.inet_aton(ip))[0]
                    if port in ports and any(lo <= value <= hi for lo, hi in chunk.ranges):
                        found(ip, port, ttl, now_us)

            loop = asyncio.get_running_loop()
            # The tap is open (and queueing) before masscan starts; it is read from the loop below.
            try:
                proc = await asyncio.create_subprocess_exec(
                    *cmd, cwd=tmp, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                    start_new_session=True)
            except BaseException:
                for sock in (tap, counter):
                    if sock is not None:
                        sock.close()
                raise
            self.runs += 1

            async def grab(ip: str, port: int) -> None:
                await tx_done.wait()
                async with self._grab_slots:
                    if not await job.pace(ip):
                        return
                    result = await self.grabber.grab(ip, port)
                if result.kind != "BANNER":
                    result.kind = None  # the SYN_ACK event is out already; this only accounts packets
                job.report(result)

            async def read_results() -> None:
                async for line in proc.stdout:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        if line.strip():
                            log.warning("masscan: output line not understood, skipped: %r", line[:200])
                        continue
                    data = rec.get("data") or {}
                    if rec.get("rec_type") != "status":
                        continue
                    ip, port = rec["ip"], int(rec["port"])
                    if data.get("status") == "closed":
                        closed.append((ip, port))   # only accounted: masscan answered its RST
                        continue
                    if data.get("status") != "open":
                        continue
                    found(ip, port, data.get("ttl"), int(rec.get("timestamp", 0)) * 1_000_000 or job.start_us)

            async def watch_progress() -> None:
                buf = b""
                stop_at = None
                loop = asyncio.get_running_loop()
                while True:
                    try:
                        data = await asyncio.wait_for(proc.stderr.read(4096), 0.5)
                    except asyncio.TimeoutError:
                        data = None
                    if data == b"":
                        return
                    if data:
                        buf = (buf + data)[-4096:]
                        m = _WAITING.findall(buf)
                        if m and not tx_done.is_set():
                            tx_done.set()
                            stop_at = loop.time() + s.masscan_wait_s + 1.5
                        if m and int(m[-1]) <= 0 and stop_at is not None:
                            # Its own countdown is over: what could still arrive has arrived.
                            stop_at = min(stop_at, loop.time() + 0.3)
                    if job.stopping or (stop_at is not None and loop.time() >= stop_at):
                        # Either abandoned, or the wait is over and masscan's receive thread hangs.
                        _signal(proc, signal.SIGTERM)
                        try:
                            await asyncio.wait_for(proc.wait(), 3)
                        except asyncio.TimeoutError:
                            _signal(proc, signal.SIGKILL)
                        return

            if tap is not None:
                loop.add_reader(tap.fileno(), tapped)
            try:
                await asyncio.gather(read_results(), watch_progress())
                await proc.wait()
            except asyncio.CancelledError:
                _signal(proc, signal.SIGKILL)
                raise
            else:
                if tap is not None:
                    tapped()                # what arrived up to masscan's end
            finally:
                tx_done.set()
                if tap is not None:
                    loop.remove_reader(tap.fileno())
                    tap.close()
            if proc.returncode not in (0, -signal.SIGTERM, -signal.SIGKILL) and not opened:
                log.warning("masscan exited with %s", proc.returncode)
            wire = None
            if counter is not None:
                wire = counter.read()
                counter.close()
            if grabs:
                await asyncio.gather(*grabs)
        self._account(job, chunk, opened, closed, wire)

    def _tap(self) -> "SynAckTap | None":
        return self._packet_socket(SynAckTap, "read SYN-ACKs on the wire", "relying on masscan's own receive "
                                   "side, which can miss the first answers of a small scan")

    def _counter(self) -> "WireCounter | None":
        return self._packet_socket(WireCounter, "count its packets on the wire",
                                   "accounting from the probes and answers instead")

    def _packet_socket(self, kind, what: str, instead: str):
        """A packet socket of ``kind`` on masscan's interface, address and source port, or None
        (no CAP_NET_RAW, say) with one warning per kind for the agent's life."""
        try:
            return kind(self.settings.masscan_interface, self.adapter_ip, self.source_port)
        except OSError as exc:
            if kind not in self._warned:
                log.warning("masscan: cannot %s (%s); %s", what, exc, instead)
                self._warned.add(kind)
            return None

    def _account(self, job: Job, chunk: AddressChunk, opened: set, closed: list,
                 wire: tuple[int, int] | None) -> None:
        """Packets and bytes of this chunk besides the banner grabs (40 bytes each at the IP layer:
        masscan's SYNs and RSTs and the kernel's RSTs carry no options).

        ``wire`` is what :class:`WireCounter` saw leave the interface from masscan's source port:
        (all, SYNs). SYNs are shared out by the targets' probes, the rest (RSTs) by the answers
        each target's addresses gave: per SYN-ACK masscan's RST plus the kernel's (when the
        adapter address is this host's, no socket has the port), per closed port's RST masscan's
        RST in answer. Without a counter the same model is applied to the probes and answers
        (exact without retries; masscan 1.3.2 sends a varying number of retries, see
        docs/TESTBED.md)."""
        sends = 1 + self.settings.masscan_retries
        probes = {t: a * len(chunk.ports) for t, a in chunk.per_target.items()}
        answers: dict[int, int] = {}
        per_open = 2 if self._kernel_answers else 1
        for pairs, weight in ((opened, per_open), (closed, 1)):
            for ip, _ in pairs:
                index = job.target_of(ip)
                if index is not None:
                    answers[index] = answers.get(index, 0) + weight
        if wire is None:
            syns = {t: n * sends for t, n in probes.items()}
            rsts = {t: n * sends for t, n in answers.items()}
        else:
            total, syn_total = wire
            syns = _share(syn_total, probes)
            rsts = _share(max(0, total - syn_total), answers or probes)
        for target in set(syns) | set(rsts):
            packets = syns.get(target, 0) + rsts.get(target, 0)
            job.account(target, packets, packets * SYN_BYTES)


def _share(total: int, weights: dict[int, int]) -> dict[int, int]:
    """``total`` split in proportion to ``weights`` (largest remainders; sums to ``total``)."""
    whole = sum(weights.values())
    if not weights or whole <= 0:
        return {}
    exact = {k: total * w / whole for k, w in weights.items()}
    out = {k: int(v) for k, v in exact.items()}
    left = total - sum(out.values())
    for k in sorted(exact, key=lambda k: exact[k] - out[k], reverse=True)[:left]:
        out[k] += 1
    return out


def _signal(proc, sig) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass

"""The ``connect`` backend: asyncio TCP connect and banner grab. No root needed.

Each probe is one TCP connection made by the kernel: SYN, and on success one read of what the
service says (greeting ports), or one harmless request and its answer (HTTP ``GET /``, RTSP
``OPTIONS``; see :mod:`probe_agent.banners`), cut at the banner cap, then a normal close.

Packets and bytes are taken from the kernel's own counters (``TCP_INFO``: segments and payload sent,
SYN retransmissions included) plus the close (FIN, and the ACK of the peer's FIN), at the IP layer:
60 bytes for an IPv4 SYN with its options, 52 for other segments with timestamps (80/72 on IPv6).
A closed port costs the SYNs only (the RST comes from the target). A SYN to an address on the
scanner's own link whose ARP never resolved stays in the kernel's neighbour queue and never reaches
the wire: such probes count no packet (the ARP requests are not IP packets and are not counted; see
:class:`Neighbours`).

A port is reported open only when the kernel says the connection is established: after asyncio's
``sock_connect`` returns, the socket's peer (``getpeername``) must be the probe's address and port,
and its state ESTABLISHED or CLOSE_WAIT in ``TCP_INFO``; anything else is an ``ERROR`` ("not
connected"), never an open port (docs/TESTBED.md, the phantom port).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import resource
import socket
import struct
import time

from probe_agent.backends import Backend, BackendError, Job, Probe, ProbeResult, ProbeStatus
from probe_agent import grabbers
from probe_agent.banners import identify
from probe_agent.grabbers import Outcome, Status
from probe_agent.grabbers.conn import Conn
from probe_agent.settings import AgentSettings

# struct tcp_info offsets (linux/tcp.h): tcpi_segs_out (u32) and tcpi_bytes_sent (u64, Linux 4.19+).
_SEGS_OUT = 136
_BYTES_SENT = 200
_TCP_INFO_LEN = 232
_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}
# tcpi_state values (linux/tcp.h) of a connection that was established.
_TCP_ESTABLISHED, _TCP_CLOSE_WAIT = 1, 8
_ATF_COM = 0x02  # /proc/net/arp flag: the entry is resolved


class Neighbours:
    """What the kernel knows about the scanner's own link, for counting SYNs that never left.

    The neighbour (ARP) table from ``/proc/net/arp``, re-read at most every ``max_age_s``, and the
    main routing table from ``/proc/net/route`` (every second). A probe's address that is on a
    link of this host (its best route has no gateway) and has no resolved neighbour entry never had
    a SYN sent: it waited for ARP and was dropped (a failed entry may already have been collected).
    Routed addresses (a gateway) never count as unresolved."""

    def __init__(self, max_age_s: float = 0.1, arp: str = "/proc/net/arp", route: str = "/proc/net/route"):
        self.max_age_s, self.arp_path, self.route_path = max_age_s, arp, route
        self._at = self._routes_at = float("-inf")
        self._flags: dict[str, int] = {}
        self._routes: list[tuple[int, int, bool]] = []     # (network, mask, on-link), longest first
        self._on_link: dict[str, bool] = {}

    def _load(self) -> None:
        table: dict[str, int] = {}
        try:
            with open(self.arp_path) as fh:
                next(fh, None)
                for line in fh:
                    parts = line.split()
                    if len(parts) >= 3:
                        try:
                            table[parts[0]] = int(parts[2], 16)
                        except ValueError:
                            continue
        except OSError:
            pass
        self._flags = table
        self._at = time.monotonic()

    def _load_routes(self) -> None:
        routes = []
        try:
            with open(self.route_path) as fh:
                next(fh, None)
                for line in fh:
                    parts = line.split()
                    if len(parts) < 8:
                        continue
                    try:
                        dest, flags, mask = (int(parts[1], 16), int(parts[3], 16), int(parts[7], 16))
                    except ValueError:
                        continue
                    # Host byte order (little-endian here); RTF_GATEWAY 0x2, RTF_REJECT 0x200.
                    dest, mask = (struct.unpack(">I", struct.pack("<I", v))[0] for v in (dest, mask))
                    routes.append((dest, mask, not flags & 0x2 and not flags & 0x200))
        except OSError:
            pass
        routes.sort(key=lambda r: bin(r[1]).count("1"), reverse=True)
        self._routes = routes
        self._on_link = {}
        self._routes_at = time.monotonic()

    def on_link(self, ip: str) -> bool:
        """True when the best route of ``ip`` (main table) has no gateway."""
        if time.monotonic() - self._routes_at > 1.0:
            self._load_routes()
        known = self._on_link.get(ip)
        if known is None:
            value = struct.unpack(">I", socket.inet_aton(ip))[0]
            known = next((link for net, mask, link in self._routes if value & mask == net), False)
            if len(self._on_link) > 100_000:
                self._on_link.clear()
            self._on_link[ip] = known
        return known

    def unresolved(self, ip: str) -> bool:
        """True when ``ip`` is on this host's link and its link-layer address is not resolved."""
        if ":" in ip:
            return False
        if time.monotonic() - self._at > self.max_age_s:
            self._load()
        flags = self._flags.get(ip)
        if flags is not None:
            return not flags & _ATF_COM
        return self.on_link(ip)


def _tcp_info(sock: socket.socket) -> bytes | None:
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    except (OSError, AttributeError):
        return None
    return raw if len(raw) >= _BYTES_SENT + 8 else None


def _tcp_counters(sock: socket.socket) -> tuple[int, int] | None:
    """(segments sent, payload bytes sent) from TCP_INFO, or None where unavailable."""
    raw = _tcp_info(sock)
    if raw is None:
        return None
    return struct.unpack_from("I", raw, _SEGS_OUT)[0], struct.unpack_from("Q", raw, _BYTES_SENT)[0]


def _not_connected(sock: socket.socket, ip: str | None = None, port: int | None = None) -> str | None:
    """Why ``sock`` is not an established connection to ``ip:port`` after a successful
    ``sock_connect`` (None when it is): no peer, another peer than the probe's (the descriptor
    names another socket), or a TCP state other than ESTABLISHED/CLOSE_WAIT."""
    try:
        peer = sock.getpeername()
    except OSError as exc:
        return f"no peer ({exc.strerror or exc})"
    if ip is not None and (ipaddress.ip_address(peer[0]) != ipaddress.ip_address(ip) or peer[1] != port):
        return f"connected to {peer[0]}:{peer[1]}, not to the probe's address"
    raw = _tcp_info(sock)
    if raw is not None and raw[0] not in (_TCP_ESTABLISHED, _TCP_CLOSE_WAIT):
        return f"TCP state {raw[0]}"
    return None


def _now_us() -> int:
    return time.time_ns() // 1000


class ConnectGrabber:
    """Connects to one (ip, port), grabs the banner, counts what it sent. Used by ``connect`` and by
    ``masscan``'s second phase."""

    def __init__(self, settings: AgentSettings):
        self.settings = settings
        self.neighbours = Neighbours()
        #: Connects asyncio called successful on a socket that was not connected (never reported open).
        self.not_connected = 0
        grabbers.load_all()     # no import mid-scan (it would stall the event loop)

    def _syns(self, sock: socket.socket, ip: str, default: int) -> int:
        """SYNs a probe that got no connection put on the wire: what TCP sent (TCP_INFO), or none when
        the address is on this link and its ARP never resolved (they waited in the neighbour queue)."""
        if self.neighbours.unresolved(ip):
            return 0
        counters = _tcp_counters(sock)
        return counters[0] if counters and counters[0] else default

    def _socket(self, ip: str) -> socket.socket:
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            # Bound the kernel's SYN retransmissions: a scanner needs one answer, not six tries.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, self.settings.syn_retries)
        except (OSError, AttributeError):
            pass
        if self.settings.interface:
            # Packets can leave only through this interface, whatever the routing table says.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.settings.interface.encode())
        return sock

    async def grab(self, ip: str, port: int, grabber: str | None = None) -> ProbeResult:
        """Probe ``ip:port``; never raises for network outcomes (they are statuses). ``grabber``: a
        registered grabber name instead of the port's own (tests and benchmarks on odd ports)."""
        s = self.settings
        v6 = ":" in ip
        syn_bytes, seg_bytes = (80, 72) if v6 else (60, 52)
        loop = asyncio.get_running_loop()
        try:
            sock = self._socket(ip)
        except OSError as exc:
            return ProbeResult(ip, port, ProbeStatus.ERROR, packets=0, bytes=0, error=f"socket: {exc}")
        try:
            try:
                # asyncio.timeout, not wait_for: no extra task per probe.
                async with asyncio.timeout(s.connect_timeout_s):
                    await loop.sock_connect(sock, (ip, port))
            except ConnectionRefusedError:
                # The SYN(s) only: the RST came from the target.
                counters = _tcp_counters(sock)
                syns = counters[0] if counters and counters[0] else 1
                return ProbeResult(ip, port, ProbeStatus.CLOSED, packets=syns, bytes=syns * syn_bytes,
                                   timestamp_us=_now_us(), grab_status=Status.CONNECTION_REFUSED.value)
            except (TimeoutError, asyncio.TimeoutError):
                syns = self._syns(sock, ip, 1 + s.syn_retries)
                return ProbeResult(ip, port, ProbeStatus.TIMEOUT, packets=syns, bytes=syns * syn_bytes,
                                   timestamp_us=_now_us())
            except OSError as exc:
                if exc.errno in _UNREACHABLE:
                    sent = 0 if exc.errno == errno.ENETUNREACH else self._syns(sock, ip, 1)
                    return ProbeResult(ip, port, ProbeStatus.UNREACHABLE, packets=sent,
                                       bytes=sent * syn_bytes, error=str(exc), timestamp_us=_now_us())
                return ProbeResult(ip, port, ProbeStatus.ERROR, packets=0, bytes=0, error=str(exc))
            if sock.getsockname()[1] == port and ip == sock.getsockname()[0]:
                # TCP "self-connect": on loopback the kernel may pick the closed target port as the
                # source port and the socket answers itself. Nothing listens there.
                return ProbeResult(ip, port, ProbeStatus.CLOSED, packets=1, bytes=syn_bytes,
                                   timestamp_us=_now_us(), grab_status=Status.CONNECTION_REFUSED.value)
            why = _not_connected(sock, ip, port)
            if why is not None:
                # asyncio calls a connect successful when the socket turns writable with SO_ERROR 0;
                # only an established connection is an open port.
                self.not_connected += 1
                syns = self._syns(sock, ip, 1)
                return ProbeResult(ip, port, ProbeStatus.ERROR, packets=syns, bytes=syns * syn_bytes,
                                   error=f"not connected: {why}", timestamp_us=_now_us())
            opened_us = _now_us()
            outcome, banner, cut, eof, first_us = await self._read_banner(loop, sock, ip, port, grabber)
            counters = _tcp_counters(sock)
        finally:
            sock.close()
        # Closing sent a FIN, and will ACK the peer's FIN unless the peer closed first (that ACK was
        # already sent and counted by the kernel).
        close_packets = 1 if eof else 2
        if counters:
            segs, payload = counters
        else:  # no TCP_INFO: SYN, ACK, and one segment for a request
            segs, payload = 2, 0
        packets = segs + close_packets
        nbytes = syn_bytes + (packets - 1) * seg_bytes + payload
        result = ProbeResult(ip, port, ProbeStatus.OPEN, packets=packets, bytes=nbytes,
                             timestamp_us=first_us or opened_us)
        result.grabber, result.grab_status, result.tls = outcome.grabber, outcome.status.value, outcome.tls
        if banner:
            result.kind = "BANNER"
            result.banner = banner
            result.banner_truncated = cut
            result.protocol = outcome.banner_protocol or identify(banner)
        else:
            result.kind = "SYN_ACK"
        return result

    async def _read_banner(self, loop, sock: socket.socket, ip: str, port: int, name: str | None = None):
        """Run the port's grabber (:mod:`probe_agent.grabbers`) on the connection:
        (outcome, banner cut to the cap, cut?, eof, first byte time)."""
        s = self.settings
        grabber = grabbers.get(name) if name else grabbers.for_port(port, s.ask_unknown)
        conn = Conn(sock, ip, port, contact=s.contact, cap=s.banner_cap, read_timeout_s=s.read_timeout_s,
                    passive_wait_s=s.passive_wait_s, idle_gap_s=s.idle_gap_s, ask_unknown=s.ask_unknown)
        try:
            outcome = await grabber.grab(conn)
        except (TimeoutError, asyncio.TimeoutError):
            outcome = Outcome(Status.TIMEOUT)
        except OSError as exc:
            outcome = Outcome(Status.IO_ERROR, detail=str(exc))
        if outcome.status is Status.NO_BANNER and conn.reset:
            outcome.status = Status.IO_ERROR          # reset before a word: not a silent service
        outcome.grabber = grabber.name
        banner = outcome.banner or b""
        cut = len(banner) > s.banner_cap or conn.cut
        return outcome, banner[:s.banner_cap], cut, conn.eof, conn.first_us


class ConnectBackend(Backend):
    """Asyncio TCP connect + banner grab, ``concurrency`` connections in flight at most."""

    name = "connect"

    def __init__(self, settings: AgentSettings):
        super().__init__(settings)
        self.grabber = ConnectGrabber(settings)
        self._sem: asyncio.Semaphore | None = None

    async def open(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = self.settings.concurrency + 256
        if soft < want:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
            except (ValueError, OSError):
                pass
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            if soft < want:
                raise BackendError(f"connect: {self.settings.concurrency} concurrent connections need "
                                   f"{want} open files but the limit is {soft}; lower agent.concurrency "
                                   "or raise `ulimit -n`")
        if self.settings.interface:
            try:
                self.grabber._socket("127.0.0.1").close()
            except PermissionError:
                raise BackendError(f"connect: binding probes to interface {self.settings.interface} needs "
                                   "root or CAP_NET_RAW; run as root or leave agent.interface empty") from None
            except OSError as exc:
                raise BackendError(f"connect: agent.interface {self.settings.interface!r}: {exc}") from None
        self._sem = asyncio.Semaphore(self.settings.concurrency)

    async def run(self, job: Job) -> None:
        if self._sem is None:
            await self.open()
        sem = self._sem
        tasks: set[asyncio.Task] = set()
        probes = job.probes().__aiter__()
        try:
            while not job.stopping:
                # The slot first, then the probe: a token is spent only when the probe can go out.
                await sem.acquire()
                try:
                    probe = await probes.__anext__()
                except StopAsyncIteration:
                    sem.release()
                    break
                except BaseException:
                    sem.release()
                    raise
                task = asyncio.create_task(self._one(job, probe, sem))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while tasks:
                await asyncio.wait(set(tasks), timeout=0.2)
                if job.stopping:
                    # Abandoned: do not wait for slow services to time out.
                    for task in list(tasks):
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
        except asyncio.CancelledError:
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            await probes.aclose()

    async def _one(self, job: Job, probe: Probe, sem: asyncio.Semaphore) -> None:
        try:
            result = await self.grabber.grab(probe.ip, probe.port)
        except asyncio.CancelledError:
            # The SYN went out: account it even though the probe was abandoned.
            job.report(ProbeResult(probe.ip, probe.port, ProbeStatus.TIMEOUT, packets=1,
                                   bytes=80 if ":" in probe.ip else 60, target=probe.target,
                                   error="abandoned"))
            raise
        finally:
            sem.release()
        result.target = probe.target
        job.report(result)

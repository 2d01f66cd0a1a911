"""How the efficient scan is judged against the standard one: port detection rate, device detection
rate, traffic and scan attempts.

- **Port detection rate** ``PDR = |Ps ∩ Pe| / |Ps ∪ Pe|`` over the sets of (ip, port) responses found
  by the standard (Ps) and efficient (Pe) scans in the same period (Jaccard index).
- **Device detection rate** ``DDR = De / Ds``: IPs found with at least one port by the efficient
  scan over those found by the standard scan. De counts only IPs also in Ds, so the rate is a recall
  in [0, 1]; :func:`device_detection_rate` with ``restrict=False`` gives the paper's raw ratio.
- **Traffic**: bytes the scanners send (server egress), from the per-probe byte model
  :class:`ByteModel` unless agents report measured bytes, which then take precedence.
- **Scan attempts**: (IP, scan round) pairs attempted.

Time is not involved: callers feed what was found in their evaluation window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Hashable, Iterable

Cell = tuple[Hashable, int]  # (ip, port)


def port_detection_rate(standard: Iterable[Cell], efficient: Iterable[Cell]) -> float:
    """Jaccard index of the two sets of (ip, port) responses; 1.0 when both are empty."""
    ps, pe = _as_set(standard), _as_set(efficient)
    union = len(ps | pe)
    return len(ps & pe) / union if union else 1.0


def device_detection_rate(standard_ips: Iterable[Hashable], efficient_ips: Iterable[Hashable], *,
                          restrict: bool = True) -> float:
    """De / Ds for the IPs found with at least one open port; 1.0 when the standard found none.

    With ``restrict`` (default) De counts only IPs the standard scan also found.
    """
    ds, de = _as_set(standard_ips), _as_set(efficient_ips)
    if not ds:
        return 1.0
    return len((de & ds) if restrict else de) / len(ds)


def ips_of(cells: Iterable[Cell]) -> set[Hashable]:
    """The IPs appearing in (ip, port) cells."""
    return {ip for ip, _ in cells}


def _as_set(items: Iterable) -> set | frozenset:
    return items if isinstance(items, (set, frozenset)) else set(items)


@dataclass(frozen=True)
class ByteModel:
    """Bytes a scanner sends, per probe, counted at the Ethernet frame without preamble or FCS (what
    a server's interface counter sees); the paper compares server egress.

    - A SYN probe is ``syn`` = 14 (Ethernet) + 20 (IPv4) + 20 (TCP, no options) = **54 bytes**, as
      stateless scanners send it. Calibration: the paper's standard scan of 100,000 IPs x 11,000
      ports x 28 rounds (2 weeks at 12 h) is 3.08e10 probes; at 54 B that is 1,663 GB against the
      1,676 GB measured, the rest being banner exchanges.
    - An open port that is not banner-grabbed costs one ``rst`` (54 B) to tear the half-open
      connection down.
    - A banner exchange on an open port costs: the handshake ``ack``; the request segment
      (``header`` + request bytes) if the grabber must speak first; one ``ack`` per two response
      segments of ``mss`` bytes (delayed ACK); and ``close`` (FIN + last ACK, 2 x 54 B).
    - ``requests`` gives the request size per port (e.g. ``GET / HTTP/1.0`` and a Host header for
      HTTP, a TLS ClientHello for HTTPS); ports not listed are listened to only (``default_request``).
    """

    syn: int = 54
    rst: int = 54
    ack: int = 54
    header: int = 54
    close: int = 108
    mss: int = 1460
    default_request: int = 0
    requests: tuple[tuple[int, int], ...] = (
        (80, 40), (81, 40), (88, 40), (8000, 40), (8008, 40), (8080, 40), (8081, 40), (8888, 40),
        (443, 300), (8443, 300), (5555, 32), (1883, 20), (502, 12), (102, 22), (44818, 28),
    )
    _requests: dict[int, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("syn", "rst", "ack", "header", "close", "mss", "default_request"):
            if getattr(self, name) < 0 or (name == "mss" and self.mss == 0):
                raise ValueError(f"ByteModel.{name} must be >= 0 (mss > 0), got {getattr(self, name)}")
        self._requests.update(self.requests)

    @classmethod
    def ip_layer(cls) -> "ByteModel":
        """The same exchanges counted at the IP layer (no 14-byte Ethernet header), as agents
        report ``bytes_sent``; a SYN is then 40 bytes."""
        return cls(syn=40, rst=40, ack=40, header=40, close=80)

    def request_bytes(self, port: int) -> int:
        """Payload bytes the banner grabber sends first on ``port`` (0 = it only listens)."""
        return self._requests.get(port, self.default_request)

    def banner_exchange(self, port: int, response_bytes: int) -> int:
        """Egress bytes of grabbing a banner of ``response_bytes`` on ``port`` (after the SYN)."""
        request = self.request_bytes(port)
        segments = math.ceil(max(response_bytes, 0) / self.mss)
        return (self.ack + (self.header + request if request else 0)
                + self.ack * math.ceil(segments / 2) + self.close)

    def round_bytes(self, probes: int, open_without_banner: int = 0,
                    banners: Iterable[tuple[int, int]] = ()) -> int:
        """Egress bytes of one scan round: ``probes`` SYNs, an RST for each open port not grabbed,
        and a banner exchange for each ``(port, response_bytes)`` in ``banners``."""
        return (probes * self.syn + open_without_banner * self.rst
                + sum(self.banner_exchange(p, n) for p, n in banners))


@dataclass
class PolicyTally:
    """Running totals for one policy over an evaluation window: what it found, what it sent.

    Mutable on purpose (an accumulator); each :meth:`add_round` is one (IP, scan round) attempt.
    """

    byte_model: ByteModel = field(default_factory=ByteModel)
    cells: set[Cell] = field(default_factory=set)
    attempts: int = 0
    probes: int = 0
    modelled_bytes: int = 0
    measured_bytes: int = 0
    measured_rounds: int = 0

    def add_round(self, ip: Hashable, probes: int, open_ports: Iterable[int] = (),
                  banners: Iterable[tuple[int, int]] = (), measured_bytes: int | None = None) -> None:
        """Record one scan round of ``ip``: ``probes`` ports probed, the open ports found, the
        ``(port, response_bytes)`` banners grabbed, and the agent's measured bytes if it reported
        them (which then count instead of the model for this round)."""
        opened = set(open_ports)
        grabbed = list(banners)
        self.cells.update((ip, p) for p in opened)
        self.cells.update((ip, p) for p, _ in grabbed)
        self.attempts += 1
        self.probes += probes
        if measured_bytes is not None:
            self.measured_bytes += measured_bytes
            self.measured_rounds += 1
        else:
            no_banner = len(opened - {p for p, _ in grabbed})
            self.modelled_bytes += self.byte_model.round_bytes(probes, no_banner, grabbed)

    @property
    def bytes(self) -> int:
        """Traffic: measured bytes where reported, modelled bytes elsewhere."""
        return self.measured_bytes + self.modelled_bytes

    @property
    def ips(self) -> set[Hashable]:
        """IPs found with at least one open port."""
        return ips_of(self.cells)


@dataclass(frozen=True)
class Comparison:
    """Efficient against standard over the same window: the four figures of the paper."""

    pdr: float
    ddr: float
    traffic_ratio: float
    attempts_ratio: float
    standard_bytes: int
    efficient_bytes: int
    standard_attempts: int
    efficient_attempts: int

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        return [f"port detection rate    {self.pdr:7.2%}",
                f"device detection rate  {self.ddr:7.2%}",
                f"traffic                {self.traffic_ratio:7.2%}  "
                f"({self.efficient_bytes:,} / {self.standard_bytes:,} bytes)",
                f"scan attempts          {self.attempts_ratio:7.2%}  "
                f"({self.efficient_attempts:,} / {self.standard_attempts:,})"]


def compare(standard: PolicyTally, efficient: PolicyTally) -> Comparison:
    """The paper's figures for two tallies of the same IPs and window."""
    return Comparison(
        pdr=port_detection_rate(standard.cells, efficient.cells),
        ddr=device_detection_rate(standard.ips, efficient.ips),
        traffic_ratio=ratio(efficient.bytes, standard.bytes),
        attempts_ratio=ratio(efficient.attempts, standard.attempts),
        standard_bytes=standard.bytes, efficient_bytes=efficient.bytes,
        standard_attempts=standard.attempts, efficient_attempts=efficient.attempts)


def ratio(efficient: float, standard: float) -> float:
    """efficient / standard; 0.0 when both are zero, inf when only the standard is."""
    if standard:
        return efficient / standard
    return 0.0 if not efficient else math.inf

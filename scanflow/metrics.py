"""How the efficient scan is judged against the standard one: port detection rate, device detection
rate, traffic and scan attempts. This module is the one definition: the simulator
(:func:`scanflow.evaluation.window_metrics`), the replay (:mod:`pipelines.replay`), the lake's canned
queries (:meth:`connectors.duckdb_catalog.Catalog.traffic`) and the report all end in
:func:`compare_counts`.

- **Port detection rate** ``PDR = |Ps ∩ Pe| / |Ps ∪ Pe|`` over the sets of (ip, port) responses found
  by the standard (Ps) and efficient (Pe) scans in the same period (Jaccard index).
- **Device detection rate** ``DDR = De / Ds``: IPs found with at least one port by the efficient
  scan over those found by the standard scan. De counts only IPs also in Ds, so the rate is a recall
  in [0, 1]; :func:`device_detection_rate` with ``restrict=False`` gives the paper's raw ratio.
- **Honeypot exclusion** (``honeypot_min_ports``, default :data:`HONEYPOT_MIN_PORTS` = 100; ``None``
  or 0 = off): IPs with that many or more distinct open ports among the *standard* run's cells of the
  window are left out of both runs' cells before PDR and DDR are counted (honeypots and
  pseudo-services, which the paper does not count as IoT). The figures say which threshold was
  applied and how many IPs it left out.
- **Traffic**: bytes the scanners send (server egress), from the per-probe byte model
  :class:`ByteModel` unless agents report measured bytes, which then take precedence.
- **Scan attempts**: (IP, scan round) pairs attempted.

Time is not involved: callers feed what was found in their evaluation window. Callers that hold
millions of cells elsewhere (DuckDB) may count the sets there, the exclusion included, and pass the
sizes as :class:`CellCounts` to :func:`compare_counts`; the tests check that both ways agree.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Hashable, Iterable

Cell = tuple[Hashable, int]  # (ip, port)

#: IPs the standard run found with this many or more open ports are left out of PDR and DDR.
HONEYPOT_MIN_PORTS = 100


def honeypot_threshold(honeypot_min_ports: int | None) -> int:
    """The exclusion threshold as an int, 0 meaning off (``None`` and 0 both turn it off)."""
    if honeypot_min_ports is None:
        return 0
    value = int(honeypot_min_ports)
    if value < 0 or value != honeypot_min_ports:
        raise ValueError("honeypot_min_ports must be a whole number >= 0 (0 = keep every IP), "
                         f"got {honeypot_min_ports!r}")
    return value


@dataclass(frozen=True)
class CellCounts:
    """The set sizes behind PDR and DDR, after the honeypot exclusion.

    ``standard_cells`` = |Ps|, ``efficient_cells`` = |Pe|, ``common_cells`` = |Ps ∩ Pe|;
    ``standard_ips`` = |Ds|, ``efficient_ips`` = |De| (every IP the efficient run found),
    ``common_ips`` = |De ∩ Ds|; ``honeypot_min_ports`` the threshold applied (0 = none) and
    ``excluded_ips`` how many IPs of the standard run it left out.
    """

    standard_cells: int
    efficient_cells: int
    common_cells: int
    standard_ips: int
    efficient_ips: int
    common_ips: int
    honeypot_min_ports: int = 0
    excluded_ips: int = 0

    @property
    def pdr(self) -> float:
        """|Ps ∩ Pe| / |Ps ∪ Pe|; 1.0 when both are empty."""
        return _jaccard(self.common_cells, self.standard_cells, self.efficient_cells)

    @property
    def ddr(self) -> float:
        """|De ∩ Ds| / |Ds|; 1.0 when the standard found no IP."""
        return _recall(self.common_ips, self.standard_ips)


def _jaccard(common: int, standard: int, efficient: int) -> float:
    union = standard + efficient - common
    return common / union if union else 1.0


def _recall(found: int, standard: int) -> float:
    return found / standard if standard else 1.0


def honeypot_ips(standard: Iterable[Cell], honeypot_min_ports: int | None = HONEYPOT_MIN_PORTS) -> set[Hashable]:
    """IPs with ``honeypot_min_ports`` or more distinct open ports among the standard run's cells
    (none when the exclusion is off)."""
    threshold = honeypot_threshold(honeypot_min_ports)
    if not threshold:
        return set()
    per_ip = Counter(ip for ip, _ in _as_set(standard))
    return {ip for ip, n in per_ip.items() if n >= threshold}


@dataclass(frozen=True)
class JudgedCells:
    """Both runs' cells with the honeypot exclusion applied: what PDR and DDR are counted over."""

    standard: set
    efficient: set
    excluded: set
    honeypot_min_ports: int

    def counts(self) -> CellCounts:
        """The set sizes of :class:`CellCounts`."""
        ds, de = ips_of(self.standard), ips_of(self.efficient)
        return CellCounts(len(self.standard), len(self.efficient), len(self.standard & self.efficient),
                          len(ds), len(de), len(ds & de), self.honeypot_min_ports, len(self.excluded))


def judge_cells(standard: Iterable[Cell], efficient: Iterable[Cell], *,
                honeypot_min_ports: int | None = HONEYPOT_MIN_PORTS) -> JudgedCells:
    """Both runs' distinct (ip, port) cells without the IPs :func:`honeypot_ips` finds in the
    standard run's."""
    threshold = honeypot_threshold(honeypot_min_ports)
    ps, pe = _as_set(standard), _as_set(efficient)
    excluded = honeypot_ips(ps, threshold)
    if excluded:
        ps = {c for c in ps if c[0] not in excluded}
        pe = {c for c in pe if c[0] not in excluded}
    return JudgedCells(ps if isinstance(ps, set) else set(ps), pe if isinstance(pe, set) else set(pe),
                       excluded, threshold)


def count_cells(standard: Iterable[Cell], efficient: Iterable[Cell], *,
                honeypot_min_ports: int | None = HONEYPOT_MIN_PORTS) -> CellCounts:
    """:class:`CellCounts` of two runs' (ip, port) cells, the honeypot exclusion applied."""
    return judge_cells(standard, efficient, honeypot_min_ports=honeypot_min_ports).counts()


def port_detection_rate(standard: Iterable[Cell], efficient: Iterable[Cell]) -> float:
    """Jaccard index of the two sets of (ip, port) responses; 1.0 when both are empty (no exclusion:
    :func:`count_cells` applies it)."""
    ps, pe = _as_set(standard), _as_set(efficient)
    return _jaccard(len(ps & pe), len(ps), len(pe))


def device_detection_rate(standard_ips: Iterable[Hashable], efficient_ips: Iterable[Hashable], *,
                          restrict: bool = True) -> float:
    """De / Ds for the IPs found with at least one open port; 1.0 when the standard found none.

    With ``restrict`` (default) De counts only IPs the standard scan also found.
    """
    ds, de = _as_set(standard_ips), _as_set(efficient_ips)
    return _recall(len((de & ds) if restrict else de), len(ds))


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
    """Efficient against standard over the same window: the four figures of the paper, the totals
    and set sizes behind them, and the honeypot exclusion that was applied (0 = none)."""

    pdr: float
    ddr: float
    traffic_ratio: float
    attempts_ratio: float
    standard_bytes: int
    efficient_bytes: int
    standard_attempts: int
    efficient_attempts: int
    standard_cells: int = 0
    efficient_cells: int = 0
    common_cells: int = 0
    standard_ips: int = 0
    efficient_ips: int = 0
    common_ips: int = 0
    honeypot_min_ports: int = 0
    excluded_ips: int = 0

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        return [f"port detection rate    {self.pdr:7.2%}",
                f"device detection rate  {self.ddr:7.2%}",
                f"traffic                {self.traffic_ratio:7.2%}  "
                f"({self.efficient_bytes:,} / {self.standard_bytes:,} bytes)",
                f"scan attempts          {self.attempts_ratio:7.2%}  "
                f"({self.efficient_attempts:,} / {self.standard_attempts:,})",
                exclusion_line(self.honeypot_min_ports, self.excluded_ips)]


def exclusion_line(honeypot_min_ports: int, excluded_ips: int) -> str:
    """One line saying which honeypot exclusion PDR and DDR were counted with."""
    if not honeypot_min_ports:
        return "honeypots              none left out (PDR and DDR count every IP)"
    return (f"honeypots              {excluded_ips:,} IP{'' if excluded_ips == 1 else 's'} left out of PDR and DDR "
            f"(>= {honeypot_min_ports} open ports in the standard run)")


def compare_counts(counts: CellCounts, *, standard_bytes: int = 0, efficient_bytes: int = 0,
                   standard_attempts: int = 0, efficient_attempts: int = 0) -> Comparison:
    """The paper's figures from the set sizes and the two runs' bytes and attempts: the formula
    every caller ends in."""
    return Comparison(
        pdr=counts.pdr, ddr=counts.ddr,
        traffic_ratio=ratio(efficient_bytes, standard_bytes),
        attempts_ratio=ratio(efficient_attempts, standard_attempts),
        standard_bytes=standard_bytes, efficient_bytes=efficient_bytes,
        standard_attempts=standard_attempts, efficient_attempts=efficient_attempts,
        standard_cells=counts.standard_cells, efficient_cells=counts.efficient_cells,
        common_cells=counts.common_cells, standard_ips=counts.standard_ips, efficient_ips=counts.efficient_ips,
        common_ips=counts.common_ips, honeypot_min_ports=counts.honeypot_min_ports,
        excluded_ips=counts.excluded_ips)


def compare_cells(standard: Iterable[Cell], efficient: Iterable[Cell], *, standard_bytes: int = 0,
                  efficient_bytes: int = 0, standard_attempts: int = 0, efficient_attempts: int = 0,
                  honeypot_min_ports: int | None = HONEYPOT_MIN_PORTS) -> Comparison:
    """The paper's figures from two runs' (ip, port) cells, bytes and attempts."""
    return compare_counts(count_cells(standard, efficient, honeypot_min_ports=honeypot_min_ports),
                          standard_bytes=standard_bytes, efficient_bytes=efficient_bytes,
                          standard_attempts=standard_attempts, efficient_attempts=efficient_attempts)


def compare(standard: PolicyTally, efficient: PolicyTally, *,
            honeypot_min_ports: int | None = HONEYPOT_MIN_PORTS) -> Comparison:
    """The paper's figures for two tallies of the same IPs and window."""
    return compare_cells(standard.cells, efficient.cells, standard_bytes=standard.bytes,
                         efficient_bytes=efficient.bytes, standard_attempts=standard.attempts,
                         efficient_attempts=efficient.attempts, honeypot_min_ports=honeypot_min_ports)


def ratio(efficient: float, standard: float) -> float:
    """efficient / standard; 0.0 when both are zero, inf when only the standard is."""
    if standard:
        return efficient / standard
    return 0.0 if not efficient else math.inf

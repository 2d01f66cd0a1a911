"""The port budget of the paper's Table 5, and what-ifs for other parameters.

Table 5 counts, for 100,000 IPs, the ports one scan of each IP probes under the standard policy and
under the efficient one, with 97 % of IPs non-responsive and ~3 % of the responsive ones estimable:

    standard                   11,000 x 100,000 = 1,100,000,000
    responsive, estimated         2.2 x      90 =           198
    responsive, not estimated   5,100 x   2,910 =    14,841,000
    non-responsive                500 x  97,000 =    48,500,000
    efficient total                                  63,341,198  (5.8 %)

Arithmetic is exact (fractions): shares and port counts given as decimals are taken at their
decimal value, IP counts are rounded half up to whole IPs. :func:`cadence_budget` adds the scan
frequencies for a period (a lower bound for the efficient policy: it assumes no answer ever changes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from scanflow.metrics import ByteModel
from scanflow.policy import PolicyParams, ladder_steps

DAY = 86400.0


def _exact(value: float | int | str | Fraction) -> Fraction:
    return value if isinstance(value, Fraction) else Fraction(str(value))


def _whole(value: Fraction) -> int:
    return math.floor(value + Fraction(1, 2))


@dataclass(frozen=True)
class BudgetParams:
    """Inputs of the budget; the defaults are the paper's Table 5."""

    ips: int = 100_000
    responsive_share: float | str = "0.03"
    estimable_share: float | str = "0.03"
    standard_ports: float | str = 11_000
    estimated_ports: float | str = "2.2"
    unknown_ports: float | str = 5_100
    silent_ports: float | str = 500

    def __post_init__(self) -> None:
        if self.ips < 0:
            raise ValueError(f"ips must be >= 0, got {self.ips}")
        for name in ("responsive_share", "estimable_share"):
            if not 0 <= _exact(getattr(self, name)) <= 1:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        for name in ("standard_ports", "estimated_ports", "unknown_ports", "silent_ports"):
            if _exact(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class BudgetRow:
    """One class of IPs: ports per IP, number of IPs, ports in total (exact)."""

    label: str
    ports_per_ip: Fraction
    ips: int

    @property
    def ports(self) -> Fraction:
        """ports_per_ip x ips."""
        return self.ports_per_ip * self.ips


@dataclass(frozen=True)
class Budget:
    """The standard row, the three efficient rows, and their totals."""

    standard: BudgetRow
    efficient: tuple[BudgetRow, BudgetRow, BudgetRow]

    @property
    def standard_total(self) -> Fraction:
        """Ports probed by the standard scan."""
        return self.standard.ports

    @property
    def efficient_total(self) -> Fraction:
        """Ports probed by the efficient scan (sum of its three rows)."""
        return sum((r.ports for r in self.efficient), Fraction(0))

    @property
    def share(self) -> Fraction:
        """Efficient total over standard total (0 when the standard total is 0)."""
        return self.efficient_total / self.standard_total if self.standard_total else Fraction(0)


def compute_budget(p: BudgetParams = BudgetParams()) -> Budget:
    """The Table 5 budget for ``p``."""
    responsive = _whole(p.ips * _exact(p.responsive_share))
    estimated = _whole(responsive * _exact(p.estimable_share))
    return Budget(
        BudgetRow("standard", _exact(p.standard_ports), p.ips),
        (BudgetRow("responsive, estimated", _exact(p.estimated_ports), estimated),
         BudgetRow("responsive, not estimated", _exact(p.unknown_ports), responsive - estimated),
         BudgetRow("non-responsive", _exact(p.silent_ports), p.ips - responsive)))


def fmt_number(value: Fraction | int | float) -> str:
    """Thousands separators; whole numbers without decimals, others with up to 2."""
    value = _exact(value)
    if value.denominator == 1:
        return f"{value.numerator:,}"
    text = f"{float(value):,.2f}".rstrip("0").rstrip(".")
    return text


def fmt_share(share: Fraction) -> str:
    """A share as a percentage with one decimal, e.g. ``5.8 %``."""
    return f"{float(share) * 100:.1f} %"


def format_budget(b: Budget, title: str | None = None) -> str:
    """The budget as the paper's table: class, ports per IP x IPs = ports; the efficient total with
    its share of the standard."""
    rows = [b.standard, *b.efficient]
    w0 = max(len(r.label) for r in rows + [BudgetRow("efficient total", Fraction(0), 0)])
    w1 = max(len("ports/IP"), *(len(fmt_number(r.ports_per_ip)) for r in rows))
    w2 = max(len("IPs"), *(len(fmt_number(r.ips)) for r in rows))
    w3 = max(len("ports"), len(fmt_number(b.efficient_total)), *(len(fmt_number(r.ports)) for r in rows))
    out = [title] if title else []
    out.append(f"{'class':<{w0}}  {'ports/IP':>{w1}}   {'IPs':>{w2}}   {'ports':>{w3}}")
    for r in rows:
        out.append(f"{r.label:<{w0}}  {fmt_number(r.ports_per_ip):>{w1}} x {fmt_number(r.ips):>{w2}} = "
                   f"{fmt_number(r.ports):>{w3}}")
    out.append(f"{'efficient total':<{w0}}  {'':>{w1}}   {'':>{w2}}   {fmt_number(b.efficient_total):>{w3}}"
               f"  ({fmt_share(b.share)} of standard)")
    return "\n".join(out)


@dataclass(frozen=True)
class CadenceRow:
    """One class over a period: scan rounds per IP, probes in total, bytes by the byte model."""

    label: str
    rounds_per_ip: int
    probes: Fraction
    bytes: int


def cadence_budget(b: Budget, days: float, policy: PolicyParams = PolicyParams(),
                   byte_model: ByteModel = ByteModel()) -> tuple[CadenceRow, ...]:
    """Probes and SYN bytes over ``days`` with the policies' frequencies: standard every
    ``standard_interval``; responsive IPs on the back-off ladder with an answer that never changes
    (the efficient policy's best case); silent IPs every ``silent_interval``. Banner exchanges are
    not included. The last row is the efficient total."""
    horizon = days * DAY
    std_rounds = math.ceil(horizon / policy.standard_interval)
    ladder_rounds = len(ladder_steps(policy, horizon))
    silent_rounds = math.ceil(horizon / policy.silent_interval)
    rows = []
    for row, rounds in ((b.standard, std_rounds), (b.efficient[0], ladder_rounds),
                        (b.efficient[1], ladder_rounds), (b.efficient[2], silent_rounds)):
        probes = row.ports * rounds
        rows.append(CadenceRow(row.label, rounds, probes, _whole(probes * byte_model.syn)))
    total = sum((r.probes for r in rows[1:]), Fraction(0))
    rows.append(CadenceRow("efficient total", 0, total, _whole(total * byte_model.syn)))
    return tuple(rows)


def format_cadence(rows: tuple[CadenceRow, ...], days: float) -> str:
    """The cadence budget as a table with the efficient share of probes."""
    std, total = rows[0], rows[-1]
    out = [f"over {days:g} days, SYN probes only, answers never changing (efficient best case):",
           f"{'class':<26}  {'rounds/IP':>9}   {'probes':>15}   {'bytes':>17}"]
    for r in rows:
        rounds = "" if r is total else str(r.rounds_per_ip)
        out.append(f"{r.label:<26}  {rounds:>9}   {fmt_number(r.probes):>15}   {r.bytes:>17,}")
    share = total.probes / std.probes if std.probes else Fraction(0)
    out.append(f"efficient / standard probes: {fmt_share(share)}")
    return "\n".join(out)

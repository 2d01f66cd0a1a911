"""The wall clock of a live ``scanflow run`` on a real network: how long a virtual day must be.

``scanflow run`` compresses the policy's durations (12 h rescans, 3.5-day sweeps) so that a run shows
weeks in minutes. On the synthetic world the agents answer in virtual time, so any compression works.
On a real network every probe takes real time, and a clock that is too fast breaks the loop: a
rescan falls due while its IP's previous scan is still running, a block is swept again before its
last sweep ended, commands expire in the agents' queue before they start. This module works out
the fastest clock under which none of that happens, from what the scans will cost:

- probes/s of the agents together: their rate cap, and for the ``connect`` backend also its
  concurrency divided by the connect timeout (a silent address holds a connection slot for the
  whole timeout: on a sparse network that, not the rate cap, is the limit);
- the first pass (every address, the initial set) and a sweep (every address, the silent set) at
  that rate; one IP's largest per-IP scan at its politeness cap (``per_target_pps``) plus its
  timeouts.

The virtual day is long enough that the shortest rescan interval holds ``margin`` classification
scans, and the sweep period ``margin`` sweeps; the first pass is spread over its own duration (its
blocks are issued about as fast as the agents take them, so none waits in a queue until it
expires). Pure: numbers in, numbers out.
"""

from __future__ import annotations

from dataclasses import dataclass

DAY_S = 86_400.0
#: The shortest virtual day: a second of wall time per virtual ~1.2 h keeps the pipeline's own
#: bookkeeping (timers, watermarks, the progress line) meaningful.
MIN_DAY_S = 20.0


@dataclass(frozen=True)
class ScanCosts:
    """What the run will scan: addresses, and the sizes of the port sets that matter."""

    addresses: int
    initial_ports: int
    silent_ports: int
    largest_ip_ports: int


@dataclass(frozen=True)
class AgentPace:
    """How fast the agents go (``[agent]`` settings and ``--agents``/``--rate``)."""

    agents: int
    rate_pps: float
    per_target_pps: float
    backend: str = "connect"
    concurrency: int = 256
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 5.0
    syn_retries: int = 1


@dataclass(frozen=True)
class ClockPlan:
    """The chosen clock and why: wall seconds per virtual day, the first pass's window, and the
    estimates it was derived from (wall seconds)."""

    day_seconds: float
    first_pass_s: float
    sweep_s: float
    classify_s: float
    probes_per_s: float
    reason: str

    def describe(self) -> str:
        """One line for the run's banner."""
        return (f"{self.day_seconds:.0f} s per virtual day ({self.reason}; agents ~{self.probes_per_s:,.0f} "
                f"probes/s: first pass ~{self.first_pass_s:.0f} s, a sweep ~{self.sweep_s:.0f} s, one IP's "
                f"classification ~{self.classify_s:.0f} s)")


def probes_per_s(pace: AgentPace) -> float:
    """Probes per second of all agents together on a mostly silent network."""
    rate = pace.rate_pps
    if pace.backend == "connect":
        # A probe to a silent address holds its connection slot for the whole connect timeout.
        rate = min(rate, pace.concurrency / max(pace.connect_timeout_s, 1e-3))
    return max(rate, 1e-3) * max(pace.agents, 1)


def plan_clock(costs: ScanCosts, pace: AgentPace, *, shortest_interval_h: float, sweep_interval_h: float,
               margin: float = 2.0) -> ClockPlan:
    """The fastest safe clock for a real network (see the module docstring)."""
    rate = probes_per_s(pace)
    first = costs.addresses * costs.initial_ports / rate
    sweep = costs.addresses * costs.silent_ports / rate
    per_ip = min(pace.per_target_pps, pace.rate_pps)
    classify = costs.largest_ip_ports / max(per_ip, 1e-3) + pace.connect_timeout_s + pace.read_timeout_s
    needs = {
        "the minimum": MIN_DAY_S,
        f"{margin:g} classification scans per {shortest_interval_h:g} h rescan": margin * classify * 24 / shortest_interval_h,
        f"{margin:g} sweeps per {sweep_interval_h:g} h sweep period": margin * sweep * 24 / sweep_interval_h,
        "the first pass within one sweep period": margin * first * 24 / sweep_interval_h,
    }
    reason, day = max(needs.items(), key=lambda kv: kv[1])
    return ClockPlan(round(day, 1), first, sweep, classify, rate, f"set by {reason}")

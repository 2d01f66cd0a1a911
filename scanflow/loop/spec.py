"""What one ``scanflow run`` does: :class:`LoopSpec` (the synthetic world or the allowlist, the
compressed virtual clock, the agents, where the run's files go), the clock of a run on a real
network (:func:`plan_real_clock`), and :class:`LoopError`, how a run that cannot go on says so.
"""

from __future__ import annotations

import ipaddress
import math
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

DAY_S = 86_400.0
#: First address of the synthetic world (``scanflow.world.model.BASE_ADDRESS``).
WORLD_BASE = ipaddress.IPv4Address("10.0.0.0")


class LoopError(RuntimeError):
    """The loop could not start or a process died; the message names the log to read."""


@dataclass
class LoopSpec:
    """What one ``scanflow run`` does. Durations of the policy are compressed so that one virtual
    day takes ``day_seconds`` of wall time."""

    run_dir: Path
    lake_dir: Path
    report_dir: Path
    ips: int = 20_000
    days: float = 7.0
    day_seconds: float = 20.0
    agents: int = 2
    backend: str = "sim"
    allow: tuple[str, ...] = ()
    seed: int = 1
    rate: float = 0.0
    contact: str = ""
    keep_topics: bool = False
    report: bool = True
    #: Begin with a first pass over every address with the policy's initial (classification) set,
    #: spread over ``first_pass_window_s`` wall seconds (see :mod:`scanflow.loop.clock`).
    first_pass: bool = True
    first_pass_window_s: float = 0.0
    #: Scheduler jobs splitting the events partitions (``pipeline.partitions`` ``j/n``); 1: one job.
    scheduler_jobs: int = 1
    run_id: str = field(default_factory=lambda: time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6])
    #: Global CLI arguments (``--config``, ``--set``) handed on to every child ``scanflow``.
    cli_args: tuple[str, ...] = ()
    config_file: str | None = None
    set_items: tuple[str, ...] = ()
    #: Each agent's Prometheus endpoint (set when the agents start).
    agent_metrics: dict[str, str] = field(default_factory=dict)

    @property
    def scale(self) -> float:
        """Wall seconds per virtual second."""
        return self.day_seconds / DAY_S

    @property
    def sim(self) -> bool:
        return self.backend == "sim"

    def world_networks(self) -> list[ipaddress.IPv4Network]:
        """The synthetic world rounded up to whole /24 blocks (sweep commands are /24 ranges)."""
        blocks = math.ceil(self.ips / 256)
        last = WORLD_BASE + blocks * 256 - 1
        return list(ipaddress.summarize_address_range(WORLD_BASE, last))

    def scan_networks(self) -> list[str]:
        """What the agents may scan and the scheduler sweeps: the world (sim) or the allowlist."""
        if self.sim:
            return [str(n) for n in self.world_networks()]
        return list(self.allow)

    def addresses(self) -> int:
        """Addresses the run scans (the world's, or the allowlist's)."""
        return sum(ipaddress.ip_network(n, strict=False).num_addresses for n in self.scan_networks())

    def sweep_prefix(self) -> int:
        """/24 sweep blocks, or smaller when an allowlist entry is smaller than a /24."""
        return max([24] + [ipaddress.ip_network(a, strict=False).prefixlen for a in self.scan_networks()])


def plan_real_clock(spec: LoopSpec, settings):
    """The clock of a run on a real network (:func:`scanflow.loop.clock.plan_clock`): from the
    policy's port sets as the scheduler will build them, and the agents' settings."""
    from pipelines.policy_setup import build_policy
    from pipelines.settings import pipeline_settings
    from scanflow.loop.clock import AgentPace, ScanCosts, plan_clock

    policy = build_policy(settings, pipeline_settings(settings))
    sets = policy.port_sets
    largest = max([len(sets.unknown.ports), len(sets.standard.ports)]
                  + [len(ps.ports) for ps in policy.estimator.port_sets()])
    costs = ScanCosts(spec.addresses(), len(policy.initial_ports.ports), len(sets.silent.ports), largest)
    a = settings.agent
    pace = AgentPace(spec.agents, spec.rate or a.rate_pps, a.per_target_pps, spec.backend, a.concurrency,
                     a.connect_timeout_s, a.read_timeout_s, a.syn_retries)
    p = settings.policy
    # The adaptive policy sweeps busy prefixes and probes tracked devices every cadence (its light
    # set); the paper's sweeps every silent interval.
    adaptive = getattr(policy, "variant", "paper") == "adaptive"
    sweep_h = p.cadence_h if adaptive else p.silent_interval_h
    shortest_h = min(p.ladder_hours[0], p.retry_interval_h, *((p.cadence_h,) if adaptive else ()))
    return plan_clock(costs, pace, shortest_interval_h=shortest_h, sweep_interval_h=sweep_h)

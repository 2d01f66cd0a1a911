"""What happens to an IP the lifecycle does not track: its first probe and the sweeps.

An IP that never answered, or that was demoted, has no per-IP state (:class:`~scanflow.lifecycle.step.Lifecycle`
returns None for it); the sweeps cover it. What a sweep probes and how often is the policy's own
plan for a silent IP, read from the policy once (:func:`bulk_silent_rule`) and checked to be a fixed
cadence, so runners that sweep in bulk (the simulator, the counterfactual replay) plan exactly what
the policy would. :func:`first_scan` is the policy's first scan of an IP never scanned.
"""

from __future__ import annotations

from dataclasses import dataclass

from scanflow.policy import Observation, ScanPlan
from scanflow.portsets import PortSet


def first_scan(policy, now: float) -> ScanPlan:
    """The first scan of an IP never scanned (the policy's ``start``): when and with which set."""
    return policy.start(now)[1]


@dataclass(frozen=True)
class BulkRule:
    """What the policy does with IPs that stay silent, read from the policy by :func:`bulk_silent_rule`
    (never assumed): the first probe of a never-seen IP uses ``first``; after a silent round the IP is
    probed again ``rounds`` rounds later with ``sweep``, for as long as it stays silent."""

    first: PortSet
    sweep: PortSet
    rounds: int


def bulk_silent_rule(policy, slot: float) -> BulkRule:
    """Ask the policy what follows silent rounds of a never-seen IP and check that bulk handling is
    exact: after the first silent round the plan is a whole number of rounds with one port set, and a
    further silent round gives the same plan again."""
    state0, plan0 = policy.start(0.0)
    state1, plan1 = policy.decide(state0, Observation(frozenset(), (), plan0.ports, True), 0.0)
    state2, plan2 = policy.decide(state1, Observation(frozenset(), (), plan1.ports, True), plan1.at)
    rounds = plan1.at / slot
    if (state1.responsive or state2.responsive or plan2.ports != plan1.ports
            or abs(plan2.at - plan1.at - plan1.at) > 1e-6 or abs(rounds - round(rounds)) > 1e-9 or rounds < 1):
        raise ValueError(f"policy {policy.name}: silent IPs must be rescanned on a fixed cadence of whole "
                         f"{slot:.0f} s rounds with one port set; got {plan1.at} s with {plan1.ports.ref}, "
                         f"then {plan2.at - plan1.at} s with {plan2.ports.ref}")
    return BulkRule(plan0.ports, plan1.ports, int(round(rounds)))


def first_probe_rounds(rule: BulkRule) -> int:
    """Over how many rounds the first probes of a policy are spread: a silent first probe is a sweep and
    is spread over one silent interval like every sweep; a first probe with another set (the paper's
    classification scan with the standard set) is one full round at the start, like the standard
    scan's first round."""
    return rule.rounds if rule.first.ref == rule.sweep.ref else 1


def sweep_rounds(policy, rule: BulkRule, ips, slot: float):
    """Rounds until the next sweep of each untracked address in ``ips`` (integer addresses): the
    policy's per-prefix interval where it has one (the adaptive policy's :meth:`sweep_intervals`),
    ``rule.rounds`` for every address otherwise."""
    import numpy as np

    intervals = getattr(policy, "sweep_intervals", None)
    if intervals is None:
        return np.full(len(ips), rule.rounds, dtype=np.int64)
    return np.maximum(np.rint(intervals(np.asarray(ips)) / slot), 1).astype(np.int64)

"""The counterfactual replay of one IP with the adaptive policy, on hand-made recordings: a follow-up
is made within its round (at its own time, on what the round saw) and the cadence goes on from the
round; an untracked IP is swept at its prefix's interval. The same decisions as the simulator on a
whole world: ``test_same_decisions.py``."""

from __future__ import annotations

import ipaddress

from pipelines.counterfactual import RecordedRound, replay_ip
from pipelines.policy_setup import PAPER_TOP_PORTS, provisional_port_sets
from scanflow.adaptive import PREFIX_BITS, AdaptiveParams, SweepCadence, make_policy
from scanflow.estimate import Estimator
from scanflow.knowledge import load_knowledge
from scanflow.lifecycle.untracked import bulk_silent_rule
from scanflow.policy import DAY, HOUR, PolicyPortSets

IP = "192.0.2.44"
T0 = 1_700_000_000.0
HIK = b"HTTP/1.1 200 OK\r\nServer: Hikvision-Webs\r\n\r\n"


def _adaptive(cadence: SweepCadence | None = None, **params):
    """An adaptive policy on the provisional sets, ranked with the paper's top ports first."""
    kb = load_knowledge()
    sets = provisional_port_sets(kb)
    ranking = tuple(PAPER_TOP_PORTS) + tuple(sorted(sets.standard.ports - set(PAPER_TOP_PORTS)))
    sets = PolicyPortSets(sets.standard, sets.silent, sets.unknown, ranking=ranking)
    return make_policy("adaptive", sets, Estimator(kb), cadence=cadence,
                       adaptive_params=AdaptiveParams(light_ports=10, **params))


def _recording(policy, answering: set[int], n: int) -> list[RecordedRound]:
    """A standard scan every 12 h; the IP answers on port 80 in the rounds ``answering``."""
    standard = policy.port_sets.standard
    return [RecordedRound(T0 + k * 12 * HOUR, f"std-{k}", "STANDARD",
                          frozenset({80}) if k in answering else frozenset(),
                          ((80, HIK),) if k in answering else (), standard, len(standard), True)
            for k in range(n)]


def test_a_follow_up_is_made_at_its_time_on_what_its_round_saw_and_the_cadence_goes_on():
    policy = _adaptive(learned_cadence=False)
    rule = bulk_silent_rule(policy, policy.params.standard_interval)
    out = replay_ip(IP, _recording(policy, set(range(2, 12)), 12), policy, phase=0, tolerance_s=60,
                    silent_rule=rule)
    first, followup, *rest = sorted(out.decisions, key=lambda d: d["decided_at"])
    assert (first["scan_id"], first["reason"]) == ("std-2~efficient", "NEW_RESPONDER")
    assert first["port_set"]["name"] == policy.port_sets.followup.name
    # the follow-up: followup_delay after its round, on that round's answer, with the follow-up set
    assert followup["scan_id"] == "std-2~efficient-followup"
    assert followup["decided_at"] - first["decided_at"] == policy.params.followup_delay * 1_000_000
    assert followup["status"] == "RESPONSIVE_ESTIMATED" and followup["device"] is not None
    scan = {s["scan_id"]: s for s in out.scans}["std-2~efficient-followup"]
    assert scan["port_set"]["name"] == policy.port_sets.followup.name
    assert scan["ended_at"] == followup["decided_at"]
    # then every recorded round: none skipped for the minutes the follow-up came after its round
    assert [d["scan_id"] for d in rest] == [f"std-{k}~efficient" for k in range(3, 12)]
    assert out.replayed.attempts == 12 + 1


def test_an_untracked_ip_is_swept_at_its_prefix_interval():
    prefix = int(ipaddress.IPv4Address(IP)) >> PREFIX_BITS
    for quiet, every in ((frozenset({prefix}), 7), (frozenset({prefix + 1}), 1)):
        policy = _adaptive(SweepCadence(12 * HOUR, 3.5 * DAY, quiet), learned_cadence=True)
        rule = bulk_silent_rule(policy, policy.params.standard_interval)
        out = replay_ip(IP, _recording(policy, set(), 30), policy, phase=0, tolerance_s=60, silent_rule=rule)
        assert not out.decisions
        swept = [int(s["scan_id"].split("~")[0].split("-")[1]) for s in out.scans if s["scan_id"].endswith("~efficient")]
        assert swept == list(range(0, 30, every))

"""The counterfactual replay of one IP decides through the one lifecycle (``Lifecycle.observe``): the
same decisions the live pipeline and the simulator make, and an IP the lifecycle does not track is
swept, undecided, on the policy's silent cadence."""

from __future__ import annotations

from pipelines.policy_setup import build_policy
from pipelines.counterfactual import RecordedRound, replay_ip
from pipelines.settings import PipelineSettings
from scanflow.config import Settings
from scanflow.lifecycle.step import Lifecycle
from scanflow.lifecycle.untracked import bulk_silent_rule
from scanflow.policy import HOUR, Observation

POLICY = build_policy(Settings(), PipelineSettings(), name="paper")
RULE = bulk_silent_rule(POLICY, POLICY.params.standard_interval)
IP = "192.0.2.44"
T0 = 1_700_000_000.0
HIK = b"HTTP/1.1 200 OK\r\nServer: Hikvision-Webs\r\n\r\n"
STANDARD = POLICY.port_sets.standard


def _recording(answering: set[int], n: int = 40) -> list[RecordedRound]:
    """A standard scan every 12 h; the IP answers on port 80 in the rounds ``answering``."""
    return [RecordedRound(T0 + k * 12 * HOUR, f"std-{k}", "STANDARD",
                          frozenset({80}) if k in answering else frozenset(),
                          ((80, HIK),) if k in answering else (), STANDARD, len(STANDARD), True)
            for k in range(n)]


def test_the_replay_decides_what_the_lifecycle_decides_and_sweeps_untracked_rounds_undecided():
    # answers at first, silent for ~2 weeks (demoted, swept), then answers again (promoted)
    rounds = _recording(set(range(0, 6)) | set(range(34, 40)))
    out = replay_ip(IP, rounds, POLICY, phase=0, tolerance_s=60, silent_rule=RULE)
    decided_rounds = {d["scan_id"].split("~")[0] for d in out.decisions}
    replayed = {s["scan_id"].split("~")[0] for s in out.scans if s["scan_id"].endswith("~efficient")}
    swept = sorted(replayed - decided_rounds, key=lambda s: int(s.split("-")[1]))
    assert swept, "the silent rounds of the demoted IP are sweeps"
    # every swept round is silent and complete, one silent interval apart, with the sweep set
    at = {r.scan_id: r.at for r in rounds}
    assert all(not rounds[int(s.split("-")[1])].open_ports for s in swept)
    gaps = {round(at[b] - at[a]) for a, b in zip(swept, swept[1:])}
    assert gaps <= {round(RULE.rounds * POLICY.params.standard_interval)}
    sweep_scans = [s for s in out.scans if s["scan_id"].split("~")[0] in swept and s["scan_id"].endswith("~efficient")]
    assert {s["port_set"]["name"] for s in sweep_scans} == {RULE.sweep.name}

    # the decisions are exactly the lifecycle's, step by step, on what the replay observed
    lc, tracked, by_id = Lifecycle(POLICY), None, {r.scan_id: r for r in rounds}
    for d in sorted(out.decisions, key=lambda d: d["decided_at"]):
        r = by_id[d["scan_id"].split("~")[0]]
        if tracked is not None:
            probed = lc.next_scan(tracked)[1]
        else:                              # the first scan (the initial set), then the sweeps
            probed = POLICY.initial_ports if r.scan_id == "std-0" else RULE.sweep
        seen = r.open_ports & probed.ports
        tracked, want = lc.observe(IP, tracked, Observation(seen, tuple(b for b in r.banners if b[0] in seen),
                                                            probed, True), r.at, d["scan_id"])
        assert (d["status"], d["reason"], d["backoff_step"]) == (want.state.status.value, want.plan.reason.value,
                                                                 want.state.step)
    promotions = [d for d in out.decisions if d["reason"] == "NEW_RESPONDER"]
    assert [d["previous_status"] for d in promotions] == ["UNKNOWN", "UNKNOWN"]
    demotion = [d for d in out.decisions if d["status"] == "NON_RESPONSIVE"]
    assert len(demotion) == 1 and demotion[0]["next_scan_at"] is None and demotion[0]["command_id"] is None


def test_without_counterfactual_every_recorded_round_is_decided():
    rounds = _recording({0, 1, 2, 20})
    out = replay_ip(IP, rounds, POLICY, counterfactual=False)
    assert len(out.decisions) == len(rounds)

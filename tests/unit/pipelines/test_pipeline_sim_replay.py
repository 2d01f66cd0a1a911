"""The bounded pipeline on the FnApiRunner makes the simulator's decisions on the simulator's history.

The history comes from the project's simulator itself: :func:`scanflow.simulate.run_policy` runs the
efficient policy over a generated world (:mod:`scanflow.world`) and records what it observed as the
event contract's records (:class:`connectors.sim_recorder.EventRecorder`): every per-IP round it decided
on (one ``ScanEvent`` per open probed port, one ``ScanDone`` per address) and, for the addresses it
probed in bulk and that stayed silent (the first classification scan, the silent sweeps), one range
``ScanDone`` per /24 block and round with no response. Those records go through the same stages as
in ``tests/unit/pipelines/test_pipeline_replay.py``; every decision the simulator made (port set, next scan
time, state, reason, back-off step, device) must come out of the pipeline identically, and the
pipeline must make no other (the silent range scans in particular close no per-IP round).

With the recall extension on (off by default) every decision must agree too; the IPs the core
recalls (silent, still probed on their last ports) are checked on their own, as the pipeline once
dropped their state (docs/PIPELINE.md, "Same decisions as the simulator").
"""

from __future__ import annotations

import json
from collections import Counter

import apache_beam as beam
import pytest
from apache_beam.transforms.window import TimestampedValue

from connectors.avro_codec import encode
from scanflow.lifecycle.rounds import Done
from pipelines.decode import from_record
from pipelines.policy_setup import build_policy
from pipelines.scheduler import build_replay, replay_runner
from pipelines.settings import PipelineSettings
from scanflow.config import Settings
from scanflow.knowledge import load_knowledge
from scanflow.policy import DAY, HOUR, EfficientPolicy, PolicyParams
from connectors.sim_recorder import EventRecorder
from scanflow.simulate import make_schedule, run_policy
from scanflow.evaluation import EvaluationConfig, derive_policy_sets
from scanflow.lifecycle.untracked import bulk_silent_rule, first_probe_rounds
from scanflow.scenarios import scenario
from scanflow.world import World

N_IPS = 4_000
DAYS = 14
SEED = 11
#: Addresses of the synthetic full-port survey the port sets are derived from.
SURVEY_IPS = 400_000
FIELDS = ("ip", "decided_at", "scan_id", "previous_status", "status", "reason", "changed", "backoff_step",
          "device", "next_scan_at", "port_set")


def _key(decision: dict) -> str:
    return json.dumps([decision[f] for f in FIELDS])


def _stamp(item):
    return TimestampedValue(item, (item.ended_us if isinstance(item, Done) else item.ts_us) / 1e6)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """The world, the pipeline's policy and settings, the simulator's run and its recording.

    The port sets are derived from the synthetic full-port survey as ``scanflow evaluate`` does and
    published as files that the pipeline settings name, so both sides load the same named sets."""
    kb = load_knowledge()
    derivation, _ = derive_policy_sets(EvaluationConfig(ips=N_IPS, survey_ips=SURVEY_IPS), kb)
    sets = tmp_path_factory.mktemp("portsets")
    settings = PipelineSettings(sweep_ranges=("10.0.0.0/20",), sweep_prefix=24,
                                **{f"{role}_set": str(getattr(derivation, role).write(sets / f"{role}.json"))
                                   for role in ("standard", "silent", "unknown")})
    policy = build_policy(Settings(), settings, name="paper")
    # a world rich in IPs that answer and go silent (sporadic-heavy: 12.5 % sporadic responders), so
    # demotions, promotions and recalls are all exercised; the calibrated default has few of them
    world = World.generate(scenario("sporadic-heavy").config().replace(n_ips=N_IPS), SEED, horizon_days=DAYS,
                           kb=policy.estimator.kb)
    rule = bulk_silent_rule(policy, policy.params.standard_interval)
    schedule = make_schedule(world.n_ips, SEED, world.horizon, slot=policy.params.standard_interval,
                             silent_rounds=first_probe_rounds(rule))
    recorder = EventRecorder(block_prefix=settings.sweep_prefix)
    run = run_policy(world, schedule, policy, events=recorder)
    return settings, policy, world, schedule, run, recorder


def test_the_recording_is_valid_and_covers_every_path(simulated):
    _, policy, world, _, run, recorder = simulated
    decisions = recorder.decisions
    assert len(decisions) == run.decisions > 500
    for name, record in recorder.records:
        encode(name, record)  # valid against schemas/ (the codec validates the contract's invariants)
    reasons = Counter(d["reason"] for d in decisions)
    assert {"NEW_RESPONDER", "BACKOFF", "CHANGED", "SWEEP"} <= set(reasons), reasons
    assert any(d["status"] == "RESPONSIVE_ESTIMATED" for d in decisions)
    assert any(d["previous_status"] != "UNKNOWN" and d["status"] == "NON_RESPONSIVE" for d in decisions)
    assert max(d["backoff_step"] for d in decisions) >= 3
    dones = [r for name, r in recorder.records if name == "ScanDone"]
    probed = {r["scan_id"]: r["port_set"]["name"] for r in dones}
    # a demoted IP found again by a silent sweep: decided from no per-IP state, as the pipeline does
    demoted = {d["ip"] for d in decisions if d["previous_status"] != "UNKNOWN" and d["status"] == "NON_RESPONSIVE"}
    assert any(d["ip"] in demoted and d["reason"] == "NEW_RESPONDER" and d["previous_status"] == "UNKNOWN"
               and probed[d["scan_id"]] == policy.port_sets.silent.name for d in decisions)
    # one ScanDone per decision (the address) plus the silent range scans, which carry no response
    ranges = [r for r in dones if "/" in r["target"]]
    assert len(dones) - len(ranges) == len(decisions)
    assert ranges and all(r["responses"] == 0 for r in ranges)
    # every address is probed in round 0 (the classification scan, standard set): either it answered
    # (a per-IP round) or it is counted in a range scan of round 0
    first = sum(r["addresses_probed"] for r in dones if r["scan_id"].startswith("sim-0-"))
    assert first == world.n_ips


def _replay(simulated_run, recorder: EventRecorder, path, batch: bool = False) -> Counter:
    """The decisions of the bounded pipeline fed the recorder's records, as ``_key`` strings."""
    settings, policy, _, schedule = simulated_run
    items = [from_record(name, record) for name, record in recorder.stream()]
    with beam.Pipeline(runner=replay_runner()) as p:
        events = p | "Events" >> beam.Create(items, reshuffle=False) | "Stamp" >> beam.Map(_stamp)
        out, _ = build_replay(p, events, settings, policy, start=recorder.epoch,
                              horizon=recorder.epoch + schedule.n_slots * schedule.slot, batch=batch)
        _ = (out.decisions | "Key" >> beam.Map(_key)
             | "Write" >> beam.io.WriteToText(str(path), shard_name_template=""))
    return Counter(path.read_text().splitlines())


def _same(got: Counter, want: Counter) -> None:
    extra, missing = got - want, want - got
    assert not extra and not missing, (
        f"{sum(extra.values())} decisions the simulator did not make, {sum(missing.values())} of the simulator's "
        f"missing; first unexpected {list(extra)[:3]}, first missing {list(missing)[:3]}")


@pytest.mark.parametrize("batch", [False, True], ids=["per-ip-timers", "batch"])
def test_bounded_pipeline_decides_exactly_as_the_simulator(simulated, tmp_path, batch):
    settings, policy, world, schedule, _, recorder = simulated
    got = _replay((settings, policy, world, schedule), recorder, tmp_path / "decisions", batch=batch)
    _same(got, Counter(_key(d) for d in recorder.decisions))
    assert sum(got.values()) == len(recorder.decisions)


# -- recall (beyond the paper, off by default) -----------------------------------------------------------
#
# With ``PolicyParams.recall_interval`` > 0 the core demotes a responsive IP that went silent to a
# *recall*: non-responsive, but probed on its last ports every ``recall_interval`` for ``recall_for``
# (``IpState.recall``). The pipeline used to keep per-IP state only for responsive IPs, so it dropped
# the recall state at the demotion (no next scan time there, and every later recall round decided
# from no state). It now keeps the state while a recall lasts (``scanflow/lifecycle/step.py``) and packs the
# recall ports (``scanflow/lifecycle/state.py``); the decisions on recalled IPs are checked on their own so a
# regression there is named as such.

RECALL = PolicyParams(recall_interval=12 * HOUR, recall_for=2 * DAY)


@pytest.fixture(scope="module")
def recalled(simulated, tmp_path_factory):
    """The simulator's decisions with recall on, the pipeline's on its records, the recalled IPs."""
    settings, policy, world, schedule, _, _ = simulated
    policy = EfficientPolicy(policy.port_sets, policy.estimator, RECALL)
    recorder = EventRecorder(block_prefix=settings.sweep_prefix)
    run_policy(world, schedule, policy, events=recorder)
    # IPs the simulator put into a recall: silent, yet still scanned individually
    ips = {d["ip"] for d in recorder.decisions if d["status"] == "NON_RESPONSIVE" and d["next_scan_at"] is not None}
    got = _replay((settings, policy, world, schedule), recorder, tmp_path_factory.mktemp("recall") / "decisions")
    return got, Counter(_key(d) for d in recorder.decisions), ips


def _split(keys: Counter, ips: set[str]) -> tuple[Counter, Counter]:
    inside = Counter({k: n for k, n in keys.items() if json.loads(k)[0] in ips})
    return keys - inside, inside


def test_with_recall_every_decision_on_an_ip_never_recalled_agrees(recalled):
    got, want, ips = recalled
    assert len(ips) > 20
    (got_rest, _), (want_rest, _) = _split(got, ips), _split(want, ips)
    assert sum(want_rest.values()) > 300
    _same(got_rest, want_rest)


def test_with_recall_the_pipeline_decides_recalled_ips_as_the_core(recalled):
    got, want, ips = recalled
    inside = _split(want, ips)[1]
    assert sum(inside.values()) > 100
    _same(_split(got, ips)[1], inside)

"""The bounded pipeline on the FnApiRunner makes the same decisions as the policy core driven directly.

The history comes from :func:`tests.support.history.record_history`: a small synthetic world scanned
the way the live system scans it (sweeps of /28 blocks, per-IP scans at each plan's time), with
agents that die mid-scan and rounds delivered twice. Every decision the policy core made there must
come out of the pipeline identically (state, reason, back-off step, device, port set, next scan
time), every command the timers had to issue must be issued once, and nothing else: with the
per-IP stage the live scheduler runs (state and timers), and with the batch stage replays use.
"""

from __future__ import annotations

import json
from collections import Counter

import apache_beam as beam
import pytest
from apache_beam.transforms.window import TimestampedValue

from scanflow.lifecycle.rounds import Done
from pipelines.decode import from_record
from tests.support.history import record_history, toy_world
from pipelines.policy_setup import build_policy
from scanflow.lifecycle.records import command_id
from pipelines.scheduler import build_replay, replay_runner
from pipelines.settings import PipelineSettings
from pipelines.sweeps import SweepPlan
from scanflow.config import Settings
from scanflow.policy import DAY

T0 = 1_700_000_000.0
DAYS = 12
HORIZON = T0 + DAYS * DAY
FIELDS = ("ip", "decided_at", "scan_id", "previous_status", "status", "reason", "changed", "backoff_step",
          "device", "next_scan_at", "port_set")


def _key(decision: dict) -> str:
    return json.dumps([decision[f] for f in FIELDS])


def _write(pcoll, path, label):
    _ = pcoll | f"Write{label}" >> beam.io.WriteToText(str(path), shard_name_template="")


def _same(got: list[str], want: list[str], what: str) -> None:
    extra, missing = Counter(got) - Counter(want), Counter(want) - Counter(got)
    assert not extra and not missing, (f"{what}: {sum(extra.values())} unexpected, {sum(missing.values())} "
                                       f"missing; first unexpected {list(extra)[:3]}, first missing {list(missing)[:3]}")


def _stamp(item):
    return TimestampedValue(item, (item.ended_us if isinstance(item, Done) else item.ts_us) / 1e6)


def _expected_commands(decisions: list[dict]) -> list[str]:
    """A tracked decision's command is issued when its next scan time comes before the IP's next
    decision (and before the horizon)."""
    by_ip: dict[str, list[dict]] = {}
    for d in sorted(decisions, key=lambda d: d["decided_at"]):
        by_ip.setdefault(d["ip"], []).append(d)
    out = []
    for ip, ds in by_ip.items():
        for d, after in zip(ds, ds[1:] + [None]):
            at = d["next_scan_at"]
            if at is not None and at < HORIZON * 1e6 and (after is None or at <= after["decided_at"]):
                out.append(command_id("EFFICIENT", ip, at))
    return out


@pytest.mark.parametrize("batch", [False, True], ids=["per-ip-timers", "batch"])
def test_bounded_pipeline_decides_exactly_as_the_policy_core(tmp_path, batch):
    settings = PipelineSettings(sweep_ranges=("198.51.100.0/25",), sweep_prefix=28)
    policy = build_policy(Settings(), settings, name="paper")
    hosts = toy_world(80, kb=policy.estimator.kb, silent=policy.port_sets.silent.ports, start=T0, days=DAYS)
    history = record_history(hosts, policy, start=T0, horizon=HORIZON, prefix=28,
                             round_timeout_s=settings.round_timeout_s, command_ttl_s=settings.command_ttl_s,
                             dead_agent_every=7, duplicate_every=4)
    decisions = history.decisions
    # The history exercises every path: promotion from sweeps, back-off, changes, demotion,
    # rounds cut short by a dead agent (timed out, or not reported at all: the watchdog).
    reasons = {d["reason"] for d in decisions}
    assert {"NEW_RESPONDER", "BACKOFF", "CHANGED", "SWEEP"} <= reasons
    assert any(d["scan_id"] is None for d in decisions)
    assert any(d["status"] == "NON_RESPONSIVE" and d["previous_status"] != "UNKNOWN" for d in decisions)
    assert max(d["backoff_step"] for d in decisions) >= 3
    expected_commands = _expected_commands(decisions)
    sweeps_due = SweepPlan(settings.sweep_networks(), 28, policy.params.silent_interval).due(T0, HORIZON)

    items = [from_record(name, record) for name, record in history.records]
    with beam.Pipeline(runner=replay_runner()) as p:
        events = p | "Events" >> beam.Create(items, reshuffle=False) | "Stamp" >> beam.Map(_stamp)
        out, sweeps = build_replay(p, events, settings, policy, start=T0, horizon=HORIZON, batch=batch)
        _write(out.decisions | "Key" >> beam.Map(_key), tmp_path / "decisions", "Decisions")
        _write(out.commands | "CommandIds" >> beam.Map(lambda kv: kv[1]["command_id"]), tmp_path / "commands",
               "Commands")
        _write(sweeps | "Blocks" >> beam.Map(lambda kv: kv[0]), tmp_path / "sweeps", "Sweeps")

    def lines(name):
        return (tmp_path / name).read_text().splitlines()

    _same(lines("decisions"), [_key(d) for d in decisions], "decisions")
    _same(lines("commands"), expected_commands, "commands")
    _same(lines("sweeps"), [b for _, b in sweeps_due], "sweep commands")
    assert len(decisions) > 200 and len(expected_commands) > 100

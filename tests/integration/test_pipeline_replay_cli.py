"""``scanflow pipeline replay`` over a real Kafka topic: the batch stage (default) and the live
per-IP stage (``--timers``) make every decision of a recorded history, and the same commands."""

from __future__ import annotations

import os
import re

from click.testing import CliRunner

from connectors.kafka_io import AvroProducer
from tests.support.history import record_history, toy_world
from pipelines.policy_setup import build_policy
from pipelines.settings import pipeline_settings
from scanflow.cli import main
from scanflow.policy import DAY

T0 = 1_700_000_000.0
DAYS = 6


def _counters(output: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2).replace(",", ""))
            for m in re.finditer(r"^\s+(scanflow\.\S+)\s+([\d,]+)$", output, re.MULTILINE)}


def test_replay_from_kafka_decides_every_round_with_either_stage(settings, kafka, make_topic):
    ps = pipeline_settings(settings)
    policy = build_policy(settings, ps)
    hosts = toy_world(60, kb=policy.estimator.kb, silent=policy.port_sets.silent.ports, start=T0, days=DAYS)
    history = record_history(hosts, policy, start=T0, horizon=T0 + DAYS * DAY, prefix=28,
                             round_timeout_s=ps.round_timeout_s, command_ttl_s=ps.command_ttl_s,
                             dead_agent_every=9, duplicate_every=5)
    assert len(history.decisions) > 100
    topic = make_topic("replay-cli", partitions=3)
    with AvroProducer(kafka, event_time_timestamps=True) as producer:
        for name, record in history.records:
            producer.send(topic, name, record)

    env = {k: v for k, v in os.environ.items() if k.startswith("SCANFLOW_")}
    runs = {}
    for mode, extra in (("batch", []), ("timers", ["--timers"])):
        result = CliRunner().invoke(main, ["--set", f"topics.events={topic}", "pipeline", "replay",
                                           "--since", str(T0), "--until", str(T0 + DAYS * DAY), *extra],
                                    env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert "DONE" in result.output
        runs[mode] = _counters(result.output)
    for mode, got in runs.items():
        assert got["scanflow.pipeline/decisions"] == len(history.decisions), (mode, got)
    assert runs["batch"]["scanflow.pipeline/commands"] == runs["timers"]["scanflow.pipeline/commands"] > 50

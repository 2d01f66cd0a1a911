"""The live scheduler's write step: a bundle's ip-state records go out only after its commands are
acknowledged (``pipelines.commands.WriteCommandsThenStates``), on the session broker.

Why: an ip-state record can say "the command is out" (issued); a scheduler restarted from it does
not issue the command again. With two independent sinks a kill -9 could land after the state's
write and before the command's (the intermittent failure of
``tests/e2e/test_faults.py::test_pipeline_kill9_mid_run_no_decision_twice``).

- a commands topic that refuses every record (``max.message.bytes`` too small): the bundle fails and
  not one state record reaches the ip-state topic;
- both topics fine: every command and every state arrives, and no state was sent before the last
  command (the producer stamps each record when it is sent).
"""

from __future__ import annotations

import time

import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from connectors.kafka_io import make_consumer, topic_partitions
from pipelines.commands import WriteCommandsThenStates
from pipelines.per_ip_stage import COMMANDS, STATES
from scanflow.lifecycle.records import command_record
from scanflow.portsets import PortSet

N = 20


class _Decide(beam.DoFn):
    """Like the per-IP stage with ``writes=True``: each IP's command and the state that records it,
    tagged on one output, from one bundle."""

    def process(self, i):
        ip = f"198.18.7.{i}"
        yield COMMANDS, ip, command_record(
            policy="EFFICIENT", target=ip, not_before=1_700_000_000.0 + i, ttl_s=3600,
            ports=PortSet.inline([22, 80]), reason="NEW_RESPONDER")
        yield STATES, ip, None, ()              # a tombstone: any state will do


def _run(kafka, commands_topic: str, states_topic: str, dead: str) -> None:
    with beam.Pipeline(runner=FnApiRunner()) as p:
        _ = (p | beam.Create(list(range(N)), reshuffle=False) | beam.ParDo(_Decide())
             | WriteCommandsThenStates(kafka, commands_topic, states_topic, dead))


def _read(kafka, topic: str, want: int, timeout_s: float = 30.0) -> list:
    consumer = make_consumer(kafka)
    tps = topic_partitions(consumer, [topic])
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    records: list = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and len(records) < want:
        for batch in consumer.poll(timeout_ms=300).values():
            records.extend(batch)
    if want == 0:       # nothing expected: read to the end once to be sure
        records.extend(r for batch in consumer.poll(timeout_ms=2000).values() for r in batch)
    consumer.close()
    return records


def test_states_wait_for_their_commands(kafka, make_topic):
    commands, states, dead = make_topic("cmd"), make_topic("state"), make_topic("dead", partitions=1)
    _run(kafka, commands, states, dead)
    sent_commands = _read(kafka, commands, N)
    sent_states = _read(kafka, states, N)
    assert len({r.key for r in sent_commands}) == N and len({r.key for r in sent_states}) == N
    assert max(r.timestamp for r in sent_commands) <= min(r.timestamp for r in sent_states)


def test_no_state_goes_out_when_its_commands_are_refused(kafka, make_topic):
    commands = make_topic("cmd", **{"max.message.bytes": "64"})      # smaller than any record batch
    states, dead = make_topic("state"), make_topic("dead", partitions=1)
    with pytest.raises(Exception, match="not acknowledged"):
        _run(kafka, commands, states, dead)
    assert _read(kafka, states, 0) == []
    assert _read(kafka, commands, 0) == []

"""The Beam Kafka connectors against the real broker: bounded on the FnApiRunner, live on Prism."""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter

import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window

from connectors.avro_codec import make_record
from connectors.beam_kafka_decode import DecodeRecords
from connectors.beam_kafka_sink import WriteToKafka
from connectors.beam_kafka_source import ReadFromKafka
from connectors.kafka_io import (
    AvroProducer,
    committed_offsets,
    make_consumer,
    partition_for,
    topic_partitions,
)

T0_MS = 1_700_000_000_000


def _event(i: int, *, prefix: str = "scan", ts_us: int | None = None) -> dict:
    return make_record("ScanEvent", scan_id=f"{prefix}-{i // 4}", agent_id="agent-1",
                       ip=f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", port=1 + i % 4,
                       transport="TCP", kind="SYN_ACK",
                       timestamp=ts_us if ts_us is not None else T0_MS * 1000 + i)


def _produce(kafka, topic, records, **kwargs) -> list:
    """Send ScanEvents; returns the RecordMetadata (topic, partition, offset) of each, in order."""
    with AvroProducer(kafka, **kwargs) as producer:
        futures = [producer.send(topic, "ScanEvent", r) for r in records]
    return [f.get(timeout=30) for f in futures]


def _id_checksum(ids) -> int:
    return sum(int(i[:12], 16) for i in ids)


class _Collect:
    """Reads an output topic from the beginning and accumulates its values as text."""

    def __init__(self, kafka, topic):
        self.consumer = make_consumer(kafka)
        tps = topic_partitions(self.consumer, [topic])
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.values: list[str] = []

    def until(self, done, timeout_s: float = 120.0) -> list[str]:
        """Poll until ``done(values)`` holds (waits for a condition; not a speed assertion)."""
        deadline = time.monotonic() + timeout_s
        while not done(self.values) and time.monotonic() < deadline:
            for batch in self.consumer.poll(timeout_ms=500).values():
                self.values.extend(r.value.decode() for r in batch)
        return self.values

    def close(self):
        self.consumer.close()


# --- bounded (replay) on the FnApiRunner --------------------------------------------------------

def test_bounded_read_of_100k_events_exact_count_no_duplicates(kafka, make_topic):
    topic = make_topic("bounded", partitions=6)
    events = [_event(i) for i in range(100_000)]
    _produce(kafka, topic, events)
    ids = [e["event_id"] for e in events]
    assert len(set(ids)) == 100_000

    with beam.Pipeline(runner=FnApiRunner()) as p:
        decoded, dead = (p | "Read" >> ReadFromKafka(kafka, topic, start="earliest", stop="end")
                         | "Decode" >> DecodeRecords())
        event_ids = decoded | "Id" >> beam.Map(lambda kv: kv[1].record["event_id"])
        total = event_ids | "Count" >> beam.combiners.Count.Globally()
        distinct = event_ids | "Distinct" >> beam.Distinct() | "CountDistinct" >> beam.combiners.Count.Globally()
        checksum = (event_ids | "IdValue" >> beam.Map(lambda i: _id_checksum([i]))
                    | "Checksum" >> beam.CombineGlobally(sum))
        assert_that(total, equal_to([100_000]), label="ExactCount")
        assert_that(distinct, equal_to([100_000]), label="NoDuplicates")
        assert_that(checksum, equal_to([_id_checksum(ids)]), label="SameIds")
        assert_that(dead, equal_to([]), label="NoDeadLetters")


def test_bounded_replay_of_an_offset_range_and_a_time_range(kafka, make_topic):
    topic = make_topic("replay", partitions=2)
    # One event per second of event time, the Kafka timestamp taken from the event.
    events = [_event(i, ts_us=(T0_MS + i * 1000) * 1000) for i in range(200)]
    metadata = _produce(kafka, topic, events, event_time_timestamps=True)
    by_offset = {(m.partition, m.offset): e["event_id"] for m, e in zip(metadata, events)}

    start = {(topic, 0): 10, (topic, 1): 0}
    stop = {(topic, 0): 30, (topic, 1): 5}
    expected_offsets = sorted(k for k in by_offset
                              if start[(topic, k[0])] <= k[1] < stop[(topic, k[0])])
    expected_time = sorted(e["event_id"] for e in events
                           if T0_MS + 50_000 <= e["timestamp"] // 1000 < T0_MS + 80_000)

    with beam.Pipeline(runner=FnApiRunner()) as p:
        by_range = p | "ByOffsets" >> ReadFromKafka(kafka, topic, start_offsets=start, stop_offsets=stop)
        by_time = p | "ByTime" >> ReadFromKafka(kafka, topic, start_time_ms=T0_MS + 50_000,
                                                   stop_time_ms=T0_MS + 80_000)
        assert_that(by_range | "Where" >> beam.Map(lambda r: (r.partition, r.offset)),
                    equal_to(expected_offsets), label="OffsetRange")
        decoded, _ = by_time | "Decode" >> DecodeRecords()
        assert_that(decoded | "Ids" >> beam.Map(lambda kv: kv[1].record["event_id"]),
                    equal_to(expected_time), label="TimeRange")
        # Element timestamps are the records' Kafka timestamps.
        stamped = by_time | "Stamps" >> beam.Map(
            lambda r, ts=beam.DoFn.TimestampParam: ts.micros // 1000 == r.timestamp_ms)
        assert_that(stamped | "AllTrue" >> beam.CombineGlobally(all), equal_to([True]), label="Stamps")
    assert len(expected_time) == 30 and len(expected_offsets) == 25


@pytest.mark.parametrize("kwargs, message", [
    ({"start": "beginning"}, "start="),
    ({"stop": "now"}, "stop="),
    ({"stop": "end", "stop_time_ms": 1}, "one of stop"),
    ({"start": "committed"}, "needs a group_id"),
    ({"start": "earliest", "commit_offsets": True}, "commit_offsets needs a group_id"),
])
def test_misconfiguration_says_what_to_do(kafka, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ReadFromKafka(kafka, "scanflow.events", **kwargs)


# --- live (unbounded) on Prism --------------------------------------------------------------------

def _live_pipeline(options, kafka, topic, group, out, run_name):
    """Read live, decode, write ``run|event_id|partition|offset`` to ``out`` (a sink fused with the read)."""
    p = beam.Pipeline(options=options)
    decoded, _ = (p | "Read" >> ReadFromKafka(kafka, topic, group_id=group)
                  | "Decode" >> DecodeRecords())
    _ = (decoded
         | "Tag" >> beam.Map(lambda kv: (kv[0], f"{run_name}|{kv[1].record['event_id']}".encode()))
         | "Write" >> WriteToKafka(kafka, out))
    return p


def _with_offsets_pipeline(options, kafka, topic, group, out, run_name):
    p = beam.Pipeline(options=options)
    _ = (p | "Read" >> ReadFromKafka(kafka, topic, group_id=group)
         | "Tag" >> beam.Map(lambda r: (r.key, f"{run_name}|{r.partition}|{r.offset}".encode()))
         | "Write" >> WriteToKafka(kafka, out))
    return p


def _committed_total(kafka, group, topic) -> int:
    consumer = make_consumer(kafka, group_id=group)
    try:
        offsets = committed_offsets(consumer, topic_partitions(consumer, [topic]))
        return sum(o or 0 for o in offsets.values())
    finally:
        consumer.close()


def test_live_read_on_prism_sees_new_events_and_resumes_from_committed_offsets(kafka, make_topic,
                                                                                prism_options):
    topic, out = make_topic("live", partitions=4), make_topic("live-out", partitions=2)
    group = f"scanflow-test-{uuid.uuid4().hex[:8]}"
    batch_a = [_event(i, prefix="a") for i in range(1_500)]
    batch_b = [_event(i, prefix="b") for i in range(1_500)]
    batch_c = [_event(i, prefix="c") for i in range(1_500)]
    produced = {e["event_id"] for e in batch_a + batch_b + batch_c}
    collect = _Collect(kafka, out)
    try:
        _produce(kafka, topic, batch_a)
        first = _with_offsets_pipeline(prism_options(), kafka, topic, group, out, "run1").run()
        try:
            got = collect.until(lambda v: len(v) >= len(batch_a))
            assert len(got) >= len(batch_a)
            # Produced while the pipeline runs: seen too.
            _produce(kafka, topic, batch_b)
            got = collect.until(lambda v: len(set(v)) >= len(batch_a) + len(batch_b))
            assert len({v for v in got if v.startswith("run1|")}) == len(batch_a) + len(batch_b)
            # Offsets are committed by the bundle finalizer while the pipeline runs.
            deadline = time.monotonic() + 60
            while _committed_total(kafka, group, topic) < len(batch_a) and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            first.cancel()
        assert str(first.state).endswith("CANCELLED")
        committed_at_stop = {}
        consumer = make_consumer(kafka, group_id=group)
        for tp, offset in committed_offsets(consumer, topic_partitions(consumer, [topic])).items():
            committed_at_stop[tp.partition] = offset or 0
        consumer.close()
        assert sum(committed_at_stop.values()) >= len(batch_a)

        # Produced while nothing runs: picked up by the restarted pipeline.
        _produce(kafka, topic, batch_c)
        second = _with_offsets_pipeline(prism_options(), kafka, topic, group, out, "run2").run()
        try:
            total = len(batch_a) + len(batch_b) + len(batch_c)
            got = collect.until(lambda v: len({x.split("|", 1)[1] for x in v}) >= total)
        finally:
            second.cancel()

        read_at = {}  # (partition, offset) -> runs that delivered it
        for value in got:
            run, partition, offset = value.split("|")
            read_at.setdefault((int(partition), int(offset)), set()).add(run)
        # Nothing lost: every offset of every partition was delivered by one run or the other.
        consumer = make_consumer(kafka)
        ends = consumer.end_offsets(topic_partitions(consumer, [topic]))
        consumer.close()
        for tp, end in ends.items():
            missing = [o for o in range(end) if (tp.partition, o) not in read_at]
            assert not missing, f"partition {tp.partition}: offsets never delivered: {missing[:10]}"
        assert sum(ends.values()) == len(produced)
        # The restart resumed from the committed offsets, not from the beginning.
        second_min = {}
        for (partition, offset), runs in read_at.items():
            if "run2" in runs:
                second_min[partition] = min(offset, second_min.get(partition, offset))
        for partition, committed in committed_at_stop.items():
            assert second_min.get(partition, committed) >= committed
        redelivered = sum(1 for runs in read_at.values() if runs == {"run1", "run2"})
        assert redelivered < len(batch_a) + len(batch_b)
    finally:
        collect.close()


def test_live_decode_keeps_every_event_after_dedupe_by_id(kafka, make_topic, prism_options):
    topic, out = make_topic("live-ids", partitions=3), make_topic("live-ids-out", partitions=1)
    group = f"scanflow-test-{uuid.uuid4().hex[:8]}"
    events = [_event(i, prefix="d") for i in range(2_000)]
    collect = _Collect(kafka, out)
    try:
        result = _live_pipeline(prism_options(), kafka, topic, group, out, "live").run()
        try:
            _produce(kafka, topic, events[:1_000])
            _produce(kafka, topic, events[1_000:])
            got = collect.until(lambda v: len(set(v)) >= len(events))
        finally:
            result.cancel()
        assert {v.split("|", 1)[1] for v in got} == {e["event_id"] for e in events}
    finally:
        collect.close()


class _WindowCount(beam.DoFn):
    def process(self, count, win=beam.DoFn.WindowParam):
        yield None, f"{int(win.start.micros // 1000)}|{count}".encode()


def test_idle_partitions_do_not_hold_back_the_watermark(kafka, make_topic, prism_options):
    """Only one of four partitions ever gets data; a window can only fire if the others' watermark moves."""
    topic, out = make_topic("idle", partitions=4), make_topic("idle-out", partitions=1)
    window_start_ms = (int(time.time()) - 600) // 60 * 60 * 1000
    events, i = [], 0
    while len(events) < 50:
        e = _event(i, prefix="w", ts_us=(window_start_ms + 1_000 + len(events)) * 1000)
        if partition_for(e["ip"].encode(), 4) == 0:
            events.append(e)
        i += 1
    _produce(kafka, topic, events, event_time_timestamps=True)

    collect = _Collect(kafka, out)
    p = beam.Pipeline(options=prism_options())
    _ = (p | "Read" >> ReadFromKafka(kafka, topic, start="earliest", watermark_lag_s=2.0)
         | "Window" >> beam.WindowInto(window.FixedWindows(60))
         | "Count" >> beam.CombineGlobally(beam.combiners.CountCombineFn()).without_defaults()
         | "Format" >> beam.ParDo(_WindowCount())
         | "Write" >> WriteToKafka(kafka, out))
    result = p.run()
    try:
        got = collect.until(lambda v: len(v) >= 1)
    finally:
        result.cancel()
        collect.close()
    # One on-time pane for the window of the records' own timestamps, with all of them.
    assert Counter(got) == Counter([f"{window_start_ms}|{len(events)}"])
    assert all(partition_for(e["ip"].encode(), 4) == 0 for e in events)


# --- offsets are committed only after the effects downstream are durable --------------------------

def _read_and_copy(kafka, topic, group, out):
    """A bounded read that commits (as a live read would) and copies each value, padded, to ``out``."""
    p = beam.Pipeline(runner=FnApiRunner())
    _ = (p | "Read" >> ReadFromKafka(kafka, topic, group_id=group, start="earliest", stop="end",
                                      commit_offsets=True)
         # Incompressible padding, so the topic's max.message.bytes decides whether the write succeeds.
         | "Pad" >> beam.Map(lambda r: (r.key, r.value + random.Random(r.offset).randbytes(3000)))
         | "Write" >> WriteToKafka(kafka, out))
    return p


def test_offsets_are_committed_after_the_sink_acknowledged(kafka, make_topic):
    topic, out = make_topic("commit-ok", partitions=3), make_topic("commit-ok-out", partitions=1)
    group = f"scanflow-test-{uuid.uuid4().hex[:8]}"
    metadata = _produce(kafka, topic, [_event(i) for i in range(300)])
    _read_and_copy(kafka, topic, group, out).run().wait_until_finish()
    ends = Counter()
    for m in metadata:
        ends[m.partition] = max(ends[m.partition], m.offset + 1)
    consumer = make_consumer(kafka, group_id=group)
    committed = committed_offsets(consumer, topic_partitions(consumer, [topic]))
    consumer.close()
    assert {tp.partition: o for tp, o in committed.items()} == dict(ends)


def test_nothing_is_committed_when_the_sink_fails(kafka, make_topic):
    topic = make_topic("commit-fail", partitions=3)
    out = make_topic("commit-fail-out", partitions=1, **{"max.message.bytes": "1024"})
    group = f"scanflow-test-{uuid.uuid4().hex[:8]}"
    _produce(kafka, topic, [_event(i) for i in range(300)])
    # The sink's error says the records were not acknowledged; on a loaded machine the runner has
    # been seen to surface the producer's own error for them instead ("Future not done").
    with pytest.raises(Exception, match="not acknowledged|Future not done"):
        _read_and_copy(kafka, topic, group, out).run().wait_until_finish()
    consumer = make_consumer(kafka, group_id=group)
    committed = committed_offsets(consumer, topic_partitions(consumer, [topic]))
    consumer.close()
    assert set(committed.values()) == {None}

"""Stage: read the scheduler's inputs from Kafka.

- :class:`ReadEvents`: ``scanflow.events`` -> :class:`~scanflow.lifecycle.rounds.Event` / :class:`~scanflow.lifecycle.rounds.Done`
  through the Beam Kafka connector (live: consumer group, wall-clock watermark on idle partitions;
  replay: a time range) and decode-with-dead-letter. Besides what the codec refuses, a record with
  an absurd time (:func:`scanflow.lifecycle.rounds.check_times`) is a dead letter (``InvalidTimestamp``).
- :class:`ReadIpStates`: ``scanflow.ip-state`` from the beginning to its end at start ->
  ``(ip, RestoreRecord)``, the state a restarted scheduler resumes from. Its watermark is held back
  until it is read completely, so no round is decided before every IP's state is restored. A record
  whose key is not an address (``InvalidIp``), whose value is not an ``IpState`` of that address,
  whose scheduler-state header does not unpack (``InvalidState``) or whose times are absurd
  (``InvalidTimestamp``) is a dead letter, never restored.
- :func:`rewound_start_offsets`: where a live run starts reading events: ``rewind_s`` before the
  group's committed position, so rounds still open when the previous run stopped are assembled
  again (rounds already applied are dropped by scan id).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Mapping

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue

from connectors.avro_codec import (AvroCodec, CodecError, Decoded, InvalidIp, InvalidRecord, canonical_ip,
                                   default_codec)
from connectors.beam_kafka_common import DeadLetter
from connectors.beam_kafka_decode import DecodeWithDeadLetter
from connectors.beam_kafka_sink import WriteToKafka
from connectors.beam_kafka_source import KafkaRecord, ReadFromKafka
from connectors.kafka_io import dead_letter_headers, make_consumer, topic_partitions
from scanflow.config import KafkaSettings

from pipelines.partitions import PartitionShare
from pipelines.per_ip_stage import RestoreRecord
from scanflow.lifecycle.rounds import US
from pipelines.decode import MAX_TIME_US, MIN_TIME_US, check_times, from_record
from scanflow.lifecycle.state import STATE_HEADER, RefTable, unpack_header

log = logging.getLogger(__name__)

#: Element time of restored states (the epoch): before every round, see :class:`_ToRestore`.
RESTORE_TIME = 0

#: Watermark lag of the restore read: larger than any epoch time, so the watermark stays before
#: every event until the read is complete (a bounded read then jumps to the end of time).
_HOLD_WATERMARK_S = 1e10


class InvalidState(InvalidRecord):
    """An ``ip-state`` record's scheduler-state header does not unpack, or holds absurd times."""

    error_class = "InvalidState"


class _EventCodec(AvroCodec):
    """The validating codec plus the scheduler's own check: absurd record times are refused
    (:class:`scanflow.lifecycle.rounds.InvalidTime`), so the decode step dead-letters them with their bytes."""

    def __reduce__(self):
        return (_EventCodec, (self.registry,), {"validate": self.validate})

    def decode(self, data, expect=None) -> Decoded:
        decoded = super().decode(data, expect)
        check_times(decoded.schema, decoded.record)
        return decoded


class _AnyRef(RefTable):
    """Resolves every port-set hash, so a header's layout can be checked without the policy (the
    scheduler stage resolves the refs against its policy)."""

    def __init__(self):
        super().__init__(())

    def lookup(self, digest: bytes) -> str | None:
        return digest.hex()


def check_state_header(header: bytes) -> None:
    """:class:`InvalidState` unless ``header`` unpacks as a scheduler state (or tombstone mark)
    whose times are finite and within :data:`scanflow.lifecycle.rounds.MIN_TIME_US`..``MAX_TIME_US``."""
    try:
        tracked, updated_at = unpack_header(header, _AnyRef())
    except (ValueError, IndexError) as exc:
        raise InvalidState(f"{STATE_HEADER} header of {len(header)} bytes: {exc}") from None
    times = [updated_at]
    if tracked is not None:
        s = tracked.state
        times += [tracked.next_at, tracked.decided_at, s.first_seen, s.last_seen, s.last_scanned, s.last_changed]
    for t in times:
        if t is not None and not (math.isfinite(t) and MIN_TIME_US <= t * US < MAX_TIME_US):
            raise InvalidState(f"{STATE_HEADER} header holds the time {t!r} (seconds), not one between "
                               "2000-01-01 and 2100-01-01")


class _ToItems(beam.DoFn):
    def setup(self):
        self._skipped = Metrics.counter("scanflow.events", "not_for_the_scheduler")

    def process(self, element):
        _, decoded = element
        item = from_record(decoded.schema, decoded.record)
        if item is None:
            self._skipped.inc()  # e.g. a UDP response: the policy's port sets are TCP
            return
        yield item


class ReadEvents(beam.PTransform):
    """Events for the scheduler: live from a consumer group, or a bounded replay.

    Live (``group_id`` given, no stop): offsets are committed as the connector reads (see
    :mod:`connectors.beam_kafka_source`); ``start_offsets`` (see :func:`rewound_start_offsets`) says where to
    begin. Replay: ``start_time_ms`` / ``stop_time_ms``. Undecodable records go to
    ``dead_letter_topic`` with the reason in headers. ``partitions``: only these partitions (one
    job's share, :mod:`pipelines.partitions`).
    """

    def __init__(self, kafka: KafkaSettings, topic: str, dead_letter_topic: str, *, group_id: str | None = None,
                 start_offsets: Mapping[tuple[str, int], int] | None = None, start_time_ms: int | None = None,
                 stop_time_ms: int | None = None, watermark_lag_s: float = 5.0,
                 partitions: tuple[int, ...] | None = None):
        super().__init__()
        kwargs: dict = dict(watermark_lag_s=watermark_lag_s, partitions=partitions)
        if stop_time_ms is not None:
            kwargs.update(stop_time_ms=stop_time_ms)
            if start_time_ms is not None:
                kwargs.update(start_time_ms=start_time_ms)
            else:
                kwargs.update(start="earliest")
        elif start_offsets:
            kwargs.update(group_id=group_id, start_offsets=start_offsets)
        else:
            kwargs.update(group_id=group_id)
            if group_id is None:
                kwargs.update(start="earliest")
        self._read = ReadFromKafka(kafka, topic, **kwargs)
        self._decode = DecodeWithDeadLetter(kafka, dead_letter_topic, codec=_EventCodec())

    def expand(self, pbegin):
        return (pbegin
                | "Read" >> self._read
                | "Decode" >> self._decode
                | "ToItems" >> beam.ParDo(_ToItems()))


class _ToRestore(beam.DoFn):
    DEAD_LETTER = "dead_letter"

    def __init__(self, share: PartitionShare | None = None):
        self._share = share

    def setup(self):
        self._codec = default_codec()
        self._read = Metrics.counter("scanflow.restore", "records")
        self._others = Metrics.counter("scanflow.restore", "other_jobs_records")

    def process(self, rec: KafkaRecord):
        if rec.key is None:
            return
        if self._share is not None and not self._share.owns_key(rec.key):
            # Another job's address (its events partition is not ours): that job restores it, and
            # dead-letters it if it is bad, so each record is handled by exactly one job.
            self._others.inc()
            return
        self._read.inc()
        try:
            ip, restore = self._parse(rec)
        except CodecError as exc:
            yield beam.pvalue.TaggedOutput(self.DEAD_LETTER, DeadLetter(
                rec.key, rec.value, rec.headers + dead_letter_headers(
                    exc.error_class, str(exc), rec.topic, rec.partition, rec.offset, rec.timestamp_ms)))
            return
        # Stamped at the epoch, not at the record's time: a state written after the rounds it covers
        # must still reach the per-IP stage before their timers fire. An element holds the
        # watermark of the stages after it at its own time until it is processed, so at 0 it
        # holds back every round of the restarted run until the state is restored.
        yield TimestampedValue((ip, restore), RESTORE_TIME)

    def _parse(self, rec: KafkaRecord) -> tuple[str, RestoreRecord]:
        """The record's address and what to restore; a :class:`CodecError` names why it cannot be."""
        try:
            key = rec.key.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidIp(f"key {rec.key[:40]!r} is not UTF-8 text (an address)") from None
        ip = canonical_ip(key)
        if ip != key:
            raise InvalidIp(f"key {key!r} is not an address in canonical form ({ip})")
        header = next((value for name, value in rec.headers if name == STATE_HEADER), None)
        if header is not None or rec.value is None:
            if header is not None:
                check_state_header(header)
            return ip, RestoreRecord(header, None, rec.timestamp_ms / 1000)
        record = self._codec.decode_as("IpState", rec.value)
        if record["ip"] != ip:
            raise InvalidRecord(f"IpState of {record['ip']} under the key {ip}")
        check_times("IpState", record)
        return ip, RestoreRecord(None, record, rec.timestamp_ms / 1000)


class ReadIpStates(beam.PTransform):
    """``scanflow.ip-state`` as it is at start (a bounded read) -> ``(ip, RestoreRecord)``.

    ``share`` (one of several scheduler jobs, :mod:`pipelines.partitions`): only the records whose
    address is keyed to the job's events partitions; ``partitions``: read only these ip-state
    partitions (right when the ip-state topic has as many partitions as the events topic, so an
    address is on the same partition number of both)."""

    def __init__(self, kafka: KafkaSettings, topic: str, dead_letter_topic: str, *,
                 share: PartitionShare | None = None, partitions: tuple[int, ...] | None = None):
        super().__init__()
        self._kafka, self._dead_letter = kafka, dead_letter_topic
        self._share = None if share is None or share.whole else share
        # Part of the live scheduler: a broker lost during the restore is waited for, not a failed job.
        self._read = ReadFromKafka(kafka, topic, start="earliest", stop="end",
                                   watermark_lag_s=_HOLD_WATERMARK_S, partitions=partitions, wait_for_broker=True)

    def expand(self, pbegin):
        out = (pbegin
               | "Read" >> self._read
               | "Parse" >> beam.ParDo(_ToRestore(self._share)).with_outputs(_ToRestore.DEAD_LETTER,
                                                                             main="restore"))
        _ = out[_ToRestore.DEAD_LETTER] | "WriteDeadLetters" >> WriteToKafka(self._kafka, self._dead_letter)
        return out.restore


def rewound_start_offsets(kafka: KafkaSettings, topic: str, group_id: str, rewind_s: float,
                          partitions: tuple[int, ...] | None = None) -> dict[tuple[str, int], int] | None:
    """Per partition, the first offset whose record is at most ``rewind_s`` older than the record
    before the group's committed offset (never after the committed offset). None when the group has
    committed nothing yet (the reader then starts at the earliest offset). ``partitions``: only
    these (one job's share)."""
    consumer = make_consumer(kafka, group_id=group_id)
    try:
        tps = topic_partitions(consumer, [topic])
        if partitions is not None:
            tps = [tp for tp in tps if tp.partition in partitions]
        committed = {tp: consumer.committed(tp) for tp in tps}
        if all(c is None for c in committed.values()):
            return None
        beginning = consumer.beginning_offsets(tps)
        out: dict[tuple[str, int], int] = {}
        for tp in tps:
            c = committed[tp]
            if c is None or c <= beginning[tp]:
                out[(tp.topic, tp.partition)] = beginning[tp]
                continue
            consumer.assign([tp])
            consumer.seek(tp, c - 1)
            last = None
            deadline = time.monotonic() + 60
            while last is None and time.monotonic() < deadline:
                batch = consumer.poll(timeout_ms=500, max_records=1).get(tp)
                if batch:
                    last = batch[0]
            if last is None:
                # Unreadable: re-read the partition from its beginning rather than risk skipping
                # rounds that were read but not decided (re-read rounds are dropped by scan id).
                log.warning("events: could not read %s at %d; resuming it from its beginning", tp, c - 1)
                out[(tp.topic, tp.partition)] = beginning[tp]
                continue
            target = last.timestamp - int(rewind_s * 1000)
            found = consumer.offsets_for_times({tp: target}).get(tp)
            out[(tp.topic, tp.partition)] = min(c, found.offset) if found is not None else c
        log.info("events: resuming %s from %s (rewound %.0f s before the committed offsets)",
                 topic, out, rewind_s)
        return out
    finally:
        consumer.close(autocommit=False)

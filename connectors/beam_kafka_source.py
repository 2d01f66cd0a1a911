"""The Beam Kafka source: :class:`ReadFromKafka`, a splittable DoFn over topic-partition offset ranges.

(Over ~500 lines on purpose: one concern, reading, whose offset tracker, watermark and committer
share the splittable DoFn's state; decoding is :mod:`connectors.beam_kafka_decode`, writing
:mod:`connectors.beam_kafka_sink`.)

Pure Python on kafka-python (see :mod:`connectors.beam_kafka_common`). Live (unbounded): reads from
the group's committed offsets, checkpoints itself every ``max_bundle_s``, keeps a watermark from
record timestamps that also advances when a partition is idle, and commits offsets in the bundle
finalizer. Replay (bounded): an offset range or a time range per partition. This module holds the
partition discovery with its start and stop offsets, the restriction tracker and watermark, the
reading DoFns and the offset committer. Decoding is in :mod:`connectors.beam_kafka_decode`.

Delivery guarantee: at-least-once, made effectively-once by idempotent sinks keyed on ids. Offsets
are committed only when the runner finalizes a bundle, i.e. after the bundle's outputs are committed
by the runner and every sink fused into the bundle has flushed with ``acks=all``. After a crash the
reader restarts from the last commit, so records after it can be delivered again, never skipped.

Broker outages: a live read that cannot make a consumer defers its partition for a moment instead
of failing (a runner like Prism fails the whole job on a failed bundle).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Sequence

import apache_beam as beam
from apache_beam.io.iobase import RestrictionProgress
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider, WatermarkEstimatorProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Duration, Timestamp
from kafka import TopicPartition
from kafka.errors import IllegalStateError, KafkaError

from connectors.beam_kafka_common import METRICS_NAMESPACE
from connectors.kafka_io import commit_offsets, make_consumer, topic_partitions
from scanflow.config import KafkaSettings

log = logging.getLogger(__name__)

#: Stop offset of a live (unbounded) restriction.
UNBOUNDED = sys.maxsize
#: Partition consumers kept open per reading DoFn instance.
_MAX_CONSUMERS = 64


class KafkaPartition(NamedTuple):
    """What the read SDF works on: one partition and the offsets to read (``stop=None``: live)."""

    topic: str
    partition: int
    start: int
    stop: int | None


class KafkaRecord(NamedTuple):
    """One Kafka record as read: raw key and value bytes, headers as a tuple of (name, bytes)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


# ------------------------------------------------------------------------------------------------
# Partition discovery and start/stop offsets


class _DiscoverPartitions(beam.DoFn):
    """Impulse -> one :class:`KafkaPartition` per partition of the topics, with resolved offsets."""

    def __init__(self, read: "_ReadConfig"):
        self._read = read

    def process(self, _impulse):
        r = self._read
        consumer = make_consumer(r.kafka, group_id=r.group_id, **r.consumer_overrides)
        try:
            tps = topic_partitions(consumer, r.topics)
            if r.partitions is not None:
                missing = sorted(set(r.partitions) - {tp.partition for tp in tps})
                if missing:
                    raise ValueError(f"ReadFromKafka: partition(s) {missing} not in {', '.join(r.topics)}")
                tps = [tp for tp in tps if tp.partition in r.partitions]
            beginning = consumer.beginning_offsets(tps)
            end = consumer.end_offsets(tps)
            starts = self._starts(consumer, tps, beginning, end)
            stops = self._stops(consumer, tps, end)
        finally:
            consumer.close(autocommit=False)
        for tp in tps:
            start = starts[tp]
            if start < beginning[tp]:
                # Retention already deleted what the group had not read: say so, then go on.
                log.warning("%s[%d]: offsets %d..%d were deleted by retention before being read",
                            tp.topic, tp.partition, start, beginning[tp] - 1)
                start = beginning[tp]
            stop = stops.get(tp)
            if stop is not None:
                stop = max(start, stop)
            yield KafkaPartition(tp.topic, tp.partition, start, stop)

    def _starts(self, consumer, tps, beginning, end):
        r = self._read
        if r.start_offsets is not None:
            return {tp: r.start_offsets.get((tp.topic, tp.partition), beginning[tp]) for tp in tps}
        if r.start_time_ms is not None:
            return _offsets_at(consumer, tps, r.start_time_ms, end)
        if r.start == "earliest":
            return dict(beginning)
        if r.start == "latest":
            return dict(end)
        fallback = beginning if r.reset == "earliest" else end
        out = {}
        for tp in tps:
            committed = consumer.committed(tp)
            out[tp] = committed if committed is not None else fallback[tp]
        return out

    def _stops(self, consumer, tps, end):
        r = self._read
        if r.stop_offsets is not None:
            return {tp: r.stop_offsets.get((tp.topic, tp.partition), end[tp]) for tp in tps}
        if r.stop_time_ms is not None:
            return _offsets_at(consumer, tps, r.stop_time_ms, end)
        if r.stop == "end":
            return dict(end)
        return {}


def _offsets_at(consumer, tps, timestamp_ms: int, end) -> dict:
    """First offset whose record timestamp is >= ``timestamp_ms`` (the end offset if none)."""
    found = consumer.offsets_for_times({tp: timestamp_ms for tp in tps})
    return {tp: (found[tp].offset if found.get(tp) is not None else end[tp]) for tp in tps}


# ------------------------------------------------------------------------------------------------
# The splittable DoFn


class _OffsetTracker(OffsetRestrictionTracker):
    """Offset tracker that never splits a live range except to checkpoint.

    A fractional split of ``[start, 2**63)`` would hand another worker a residual starting at an
    absurd offset (which Kafka would reset to the earliest one); only the self-checkpoint
    (``fraction == 0``) is meaningful for a live partition.
    """

    def try_split(self, fraction_of_remainder):
        if self._range.stop == UNBOUNDED and fraction_of_remainder > 0:
            return None
        return super().try_split(fraction_of_remainder)

    def current_progress(self) -> RestrictionProgress:
        if self._range.stop == UNBOUNDED:
            done = 0 if self._current_position is None else self._current_position - self._range.start + 1
            return RestrictionProgress(completed=float(done), remaining=1.0)
        return super().current_progress()

    def is_bounded(self):
        return self._range.stop != UNBOUNDED


class _PartitionRestrictions(RestrictionProvider):
    def initial_restriction(self, element: KafkaPartition) -> OffsetRange:
        return OffsetRange(element.start, UNBOUNDED if element.stop is None else element.stop)

    def create_tracker(self, restriction: OffsetRange) -> _OffsetTracker:
        return _OffsetTracker(restriction)

    def restriction_size(self, element, restriction: OffsetRange) -> float:
        # Live restrictions have no known size; a constant keeps runners' weighting sane.
        return 1.0 if restriction.stop == UNBOUNDED else float(restriction.size())

    def truncate(self, element, restriction: OffsetRange):
        # On drain a live partition simply stops; a bounded replay finishes its range.
        return None if restriction.stop == UNBOUNDED else restriction


class _WatermarkProvider(WatermarkEstimatorProvider):
    def initial_estimator_state(self, element, restriction):
        return MIN_TIMESTAMP

    def create_watermark_estimator(self, estimator_state):
        return ManualWatermarkEstimator(estimator_state)


_RESTRICTIONS = _PartitionRestrictions()
_WATERMARKS = _WatermarkProvider()


class _Committer:
    """Commits next offsets for one consumer group and one pipeline run, shared by its DoFn instances.

    Bundle finalizers run on the SDK harness's threads, possibly concurrently with reads, and a
    KafkaConsumer is not thread-safe: the committer has its own consumer and lock. Within a run it
    never moves a partition's committed offset backwards, whatever the order finalizers arrive in; a
    new run (which may have been reset to earlier offsets on purpose) gets a new committer.
    """

    _instances: "OrderedDict[tuple, _Committer]" = OrderedDict()
    _instances_lock = threading.Lock()
    _MAX_INSTANCES = 8

    def __init__(self, kafka: KafkaSettings, group_id: str, overrides: Mapping[str, Any]):
        self._kafka, self._group_id, self._overrides = kafka, group_id, dict(overrides)
        self._lock = threading.Lock()
        self._consumer = None
        self._committed: dict[tuple[str, int], int] = {}

    @classmethod
    def for_run(cls, read: "_ReadConfig") -> "_Committer":
        key = (read.kafka, read.group_id, read.run_id)
        with cls._instances_lock:
            committer = cls._instances.get(key)
            if committer is None:
                committer = cls._instances[key] = cls(read.kafka, read.group_id, read.consumer_overrides)
                while len(cls._instances) > cls._MAX_INSTANCES:
                    cls._instances.popitem(last=False)[1].close()
            return committer

    def close(self) -> None:
        with self._lock:
            if self._consumer is not None:
                self._consumer.close(autocommit=False)
                self._consumer = None

    def commit(self, topic: str, partition: int, next_offset: int) -> None:
        with self._lock:
            if self._committed.get((topic, partition), -1) >= next_offset:
                return
            if self._consumer is None:
                self._consumer = make_consumer(self._kafka, group_id=self._group_id, **self._overrides)
            commit_offsets(self._consumer, {(topic, partition): next_offset})
            self._committed[(topic, partition)] = next_offset


class _ReadPartition(beam.DoFn):
    """Reads one partition's offset range; the base of the bounded and the live variants."""

    def __init__(self, read: "_ReadConfig"):
        self._read = read
        self._consumers: OrderedDict = OrderedDict()
        self._pending: dict = {}
        self._warm_pool = None
        self._torn_down = False

    def setup(self):
        self._records = Metrics.counter(METRICS_NAMESPACE, "records_read")
        self._checkpoints = Metrics.counter(METRICS_NAMESPACE, "checkpoints")

    def _new_consumer(self, tp):
        r = self._read
        consumer = make_consumer(r.kafka, group_id=None, **r.consumer_overrides)
        # Fetching the topic's metadata up front saves a retry-backoff round (~100 ms in
        # kafka-python) in the first poll.
        partitions = consumer.partitions_for_topic(tp.topic) or ()
        consumer.assign([tp])
        return consumer, partitions

    def _consumer_at(self, tp, offset: int):
        """A consumer assigned to ``tp`` and positioned at ``offset``.

        One consumer per partition, kept between calls (consumers hold sockets and do not pickle, so
        they are made on use). A resumed live restriction starts where the previous call stopped,
        so the consumer's prefetched data is still good and no seek is needed; and no partition
        waits behind another partition's in-flight fetch on a shared connection.
        """
        consumer = self._consumers.get(tp)
        if consumer is not None:
            self._consumers.move_to_end(tp)
            if consumer.position(tp) != offset:
                consumer.seek(tp, offset)
            return consumer
        pending = self._pending.pop(tp, None)
        consumer, partitions = pending.result() if pending is not None else self._new_consumer(tp)
        consumer.seek(tp, offset)
        self._consumers[tp] = consumer
        while len(self._consumers) > _MAX_CONSUMERS:
            _, old = self._consumers.popitem(last=False)
            old.close(autocommit=False)
        if self._read.bounded and self._warm_pool is None:
            self._warm_up([TopicPartition(tp.topic, p) for p in sorted(partitions)])
        return consumer

    def _warm_up(self, tps):
        """Replay: make the consumers of the topic's other partitions in the background.

        A bounded read usually goes through every partition one after the other; connecting and
        fetching metadata for the next ones while this one is read hides ~0.1-0.2 s per partition.
        """
        from concurrent.futures import ThreadPoolExecutor

        self._warm_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kafka-warm-up")
        room = _MAX_CONSUMERS - len(self._consumers)
        for other in tps:
            if room <= 0:
                break
            if other not in self._consumers and other not in self._pending:
                self._pending[other] = self._warm_pool.submit(self._new_consumer, other)
                room -= 1

    def teardown(self):
        self._torn_down = True
        for future in self._pending.values():
            try:
                future.result()[0].close(autocommit=False)
            except Exception:  # noqa: BLE001 - a consumer that failed to start has nothing to close
                pass
        self._pending.clear()
        if self._warm_pool is not None:
            self._warm_pool.shutdown(wait=False)
        while self._consumers:
            _, consumer = self._consumers.popitem()
            consumer.close(autocommit=False)

    def _read_range(self, element: KafkaPartition, tracker, watermark, finalizer, live: bool):
        r = self._read
        tp = TopicPartition(element.topic, element.partition)
        rng = tracker.current_restriction()
        if rng.start >= rng.stop:
            tracker.try_claim(rng.stop)
            if finalizer is not None:
                finalizer.register(_no_op)      # see the end of this method: keep it finalizable
            return
        try:
            consumer = self._consumer_at(tp, rng.start)
        except KafkaError as exc:
            if not live and not r.wait_for_broker:
                raise
            # The broker is away (restarting): try again later rather than fail the bundle, and with
            # it the job; the watermark waits where it is.
            log.warning("read %s: no consumer (%r); resuming in %.0f s", tp, exc, _OUTAGE_RESUME_S)
            if finalizer is not None:
                finalizer.register(_no_op)
            tracker.defer_remainder(Duration(seconds=_OUTAGE_RESUME_S))
            return
        deadline = time.monotonic() + r.max_bundle_s
        lag = Duration(seconds=r.watermark_lag_s)
        last_offset = rng.stop - 1
        last_claimed = None
        max_ts = None
        count = 0
        end_asked = False
        try:
            while True:
                try:
                    batch = consumer.poll(timeout_ms=r.poll_timeout_ms, max_records=r.max_poll_records).get(tp)
                except IllegalStateError:
                    if self._torn_down:
                        # The runner tore the DoFn down mid-bundle (cancel, shutdown): hand back
                        # the unread rest instead of failing the bundle.
                        tracker.defer_remainder()
                        return
                    raise
                if batch:
                    for rec in batch:
                        if not tracker.try_claim(rec.offset):
                            return
                        last_claimed = rec.offset
                        count += 1
                        ts = rec.timestamp if rec.timestamp >= 0 else 0
                        if max_ts is None or ts > max_ts:
                            max_ts = ts
                        yield TimestampedValue(
                            KafkaRecord(rec.topic, rec.partition, rec.offset, ts, rec.key, rec.value,
                                        tuple(rec.headers) if rec.headers else ()),
                            Timestamp(micros=ts * 1000))
                        if rec.offset == last_offset:
                            # The end of a bounded range: close it without waiting for a poll that
                            # could only return records past it.
                            tracker.try_claim(rng.stop)
                            return
                    _advance(watermark, Timestamp(micros=max_ts * 1000) - lag)
                else:
                    position = consumer.position(tp)
                    if position >= rng.stop:
                        # Past the end of a bounded range across a gap (deleted or control records).
                        tracker.try_claim(rng.stop)
                        return
                    highwater = consumer.highwater(tp)
                    if live and highwater is None and not end_asked:
                        # The client knows a partition's end only from a fetch response, and an
                        # empty partition's fetch waits out the broker's fetch_max_wait: a bundle can
                        # end before one came back (every bundle, on a loaded machine, after a seek),
                        # and an idle partition's watermark then never moved. Ask the broker once.
                        end_asked = True
                        highwater = _end_offset(consumer, tp)
                    if live and highwater is not None and position >= highwater:
                        # Idle and caught up: nothing older than "now - lag" can still arrive from
                        # producers stamping CreateTime, so the watermark moves with the wall clock.
                        _advance(watermark, Timestamp.now() - lag)
                        tracker.defer_remainder(Duration(seconds=r.idle_resume_s))
                        self._checkpoints.inc()
                        return
                if live and time.monotonic() >= deadline:
                    tracker.defer_remainder()
                    self._checkpoints.inc()
                    return
        finally:
            if max_ts is not None:
                _advance(watermark, Timestamp(micros=max_ts * 1000) - lag)
            if count:
                self._records.inc(count)
            if finalizer is not None:
                if last_claimed is not None and r.commit_offsets:
                    finalizer.register(_commit_callback(r, element.topic, element.partition, last_claimed + 1))
                else:
                    # Prism sends a finalize request for every bundle of a stage that can ask for
                    # one; a bundle that registered nothing has been released by then and the SDK
                    # answers with an error. A no-op keeps every bundle finalizable.
                    finalizer.register(_no_op)


#: A live read that cannot reach the broker tries again after this long.
_OUTAGE_RESUME_S = 2.0


def _end_offset(consumer, tp: TopicPartition, timeout_ms: int = 5_000) -> int | None:
    """The partition's end offset from the broker; None when it does not answer in time."""
    try:
        return consumer.end_offsets([tp], timeout_ms=timeout_ms).get(tp)
    except (KafkaError, RuntimeError) as exc:   # RuntimeError: the client closed (the DoFn torn down)
        log.info("end offset of %s unknown (%r): its watermark waits", tp, exc)
        return None


def _advance(watermark, candidate: Timestamp) -> None:
    if candidate > watermark.current_watermark():
        watermark.set_watermark(candidate)


def _no_op():
    pass


def _commit_callback(read: "_ReadConfig", topic: str, partition: int, next_offset: int):
    def commit():
        _Committer.for_run(read).commit(topic, partition, next_offset)
    return commit


class _ReadBounded(_ReadPartition):
    # The finalizer comes first: Beam passes it positionally and the SDF parameters by keyword.
    def process(self, element: KafkaPartition, finalizer=beam.DoFn.BundleFinalizerParam,
                tracker=beam.DoFn.RestrictionParam(_RESTRICTIONS),
                watermark=beam.DoFn.WatermarkEstimatorParam(_WATERMARKS)):
        yield from self._read_range(element, tracker, watermark, finalizer, live=False)


class _ReadLive(_ReadPartition):
    # The finalizer comes first: Beam passes it positionally and the SDF parameters by keyword.
    @beam.DoFn.unbounded_per_element()
    def process(self, element: KafkaPartition, finalizer=beam.DoFn.BundleFinalizerParam,
                tracker=beam.DoFn.RestrictionParam(_RESTRICTIONS),
                watermark=beam.DoFn.WatermarkEstimatorParam(_WATERMARKS)):
        yield from self._read_range(element, tracker, watermark, finalizer, live=True)


class ReadFromKafka(beam.PTransform):
    """Read Kafka topics into a PCollection of :class:`KafkaRecord` (element time = record timestamp).

    Live (default, unbounded): ``start="committed"`` resumes from ``group_id``'s committed offsets
    (``reset`` says where to begin when the group has none); offsets are committed in the bundle
    finalizer (``commit_offsets``, default on when a ``group_id`` is given). The watermark is the
    newest record timestamp minus ``watermark_lag_s``, and follows the wall clock (minus the lag) while
    a partition is idle and caught up. Partitions are listed once at start: restart the pipeline after
    adding partitions. ``partitions``: read only these partition numbers (of each topic), e.g. one
    scheduler job's share (:mod:`pipelines.partitions`); offsets are committed per partition, so
    readers of disjoint partitions may share a ``group_id``.

    Replay (bounded) as soon as one stop is given: ``stop="end"`` (the end offsets at start),
    ``stop_offsets={(topic, partition): offset}`` (exclusive; partitions not listed stop at their end
    offset) or ``stop_time_ms`` (records with a timestamp before it). Starts: ``start``
    (``committed``, ``earliest``, ``latest``), ``start_offsets`` (partitions not listed start at the
    beginning) or ``start_time_ms`` (the first record at or after it).

    The ``group_id`` must be dedicated to this reader: it only commits, it never joins the group,
    so a subscribed consumer in the same group would have its commits rejected.
    """

    def __init__(self, kafka: KafkaSettings, topics: str | Sequence[str], *, group_id: str | None = None,
                 start: str = "committed", start_offsets: Mapping[tuple[str, int], int] | None = None,
                 start_time_ms: int | None = None, stop: str | None = None,
                 stop_offsets: Mapping[tuple[str, int], int] | None = None, stop_time_ms: int | None = None,
                 reset: str = "earliest", commit_offsets: bool | None = None, max_bundle_s: float = 1.0,
                 poll_timeout_ms: int = 100, idle_resume_s: float = 0.2, watermark_lag_s: float = 5.0,
                 max_poll_records: int = 5000, consumer_overrides: Mapping[str, Any] | None = None,
                 wait_for_broker: bool = False, partitions: Sequence[int] | None = None):
        super().__init__()
        bounded = stop is not None or stop_offsets is not None or stop_time_ms is not None
        self.config = _ReadConfig(
            kafka=kafka, topics=(topics,) if isinstance(topics, str) else tuple(topics), group_id=group_id,
            start=start, start_offsets=_offsets(start_offsets), start_time_ms=start_time_ms,
            stop=stop, stop_offsets=_offsets(stop_offsets), stop_time_ms=stop_time_ms, reset=reset,
            bounded=bounded,
            commit_offsets=(group_id is not None and not bounded) if commit_offsets is None else commit_offsets,
            max_bundle_s=max_bundle_s, poll_timeout_ms=poll_timeout_ms, idle_resume_s=idle_resume_s,
            watermark_lag_s=watermark_lag_s, max_poll_records=max_poll_records,
            consumer_overrides=dict(consumer_overrides or {}), run_id=uuid.uuid4().hex,
            wait_for_broker=wait_for_broker,
            partitions=None if partitions is None else tuple(sorted(set(int(x) for x in partitions))))
        self.config.validate()

    @property
    def bounded(self) -> bool:
        """Whether this is a replay (a stop was given) rather than a live read."""
        return self.config.bounded

    def expand(self, pbegin):
        read = _ReadBounded(self.config) if self.config.bounded else _ReadLive(self.config)
        return (pbegin
                | "Impulse" >> beam.Impulse()
                | "DiscoverPartitions" >> beam.ParDo(_DiscoverPartitions(self.config))
                | "ReadPartitions" >> beam.ParDo(read))


@dataclass(frozen=True)
class _ReadConfig:
    """What the reading DoFns need of a :class:`ReadFromKafka` (small, picklable, no pipeline)."""

    kafka: KafkaSettings
    topics: tuple[str, ...]
    group_id: str | None
    start: str
    start_offsets: dict[tuple[str, int], int] | None
    start_time_ms: int | None
    stop: str | None
    stop_offsets: dict[tuple[str, int], int] | None
    stop_time_ms: int | None
    reset: str
    bounded: bool
    commit_offsets: bool
    max_bundle_s: float
    poll_timeout_ms: int
    idle_resume_s: float
    watermark_lag_s: float
    max_poll_records: int
    consumer_overrides: dict[str, Any] = field(default_factory=dict)
    #: Tells one pipeline's committer from another's in the same worker process.
    run_id: str = ""
    #: A bounded read that cannot reach the broker waits for it (as a live read always does) instead
    #: of failing the job: a bounded read inside a live job (the scheduler's restore of ip-state).
    wait_for_broker: bool = False
    #: Only these partition numbers (None: all).
    partitions: tuple[int, ...] | None = None

    def validate(self) -> None:
        if not self.topics or not all(isinstance(t, str) and t for t in self.topics):
            raise ValueError("ReadFromKafka: give at least one topic name")
        if self.start not in ("committed", "earliest", "latest"):
            raise ValueError(f"ReadFromKafka: start={self.start!r}; use 'committed', 'earliest' or "
                             "'latest' (or start_offsets / start_time_ms)")
        if self.reset not in ("earliest", "latest"):
            raise ValueError(f"ReadFromKafka: reset={self.reset!r}; use 'earliest' or 'latest'")
        if self.start_offsets is not None and self.start_time_ms is not None:
            raise ValueError("ReadFromKafka: give start_offsets or start_time_ms, not both")
        stops = [s for s in (self.stop, self.stop_offsets, self.stop_time_ms) if s is not None]
        if len(stops) > 1:
            raise ValueError("ReadFromKafka: give one of stop, stop_offsets, stop_time_ms")
        if self.stop not in (None, "end"):
            raise ValueError(f"ReadFromKafka: stop={self.stop!r}; use 'end' for the current end offsets "
                             "(or stop_offsets / stop_time_ms), or leave it out for a live read")
        uses_committed = self.start == "committed" and self.start_offsets is None and self.start_time_ms is None
        if uses_committed and self.group_id is None:
            raise ValueError("ReadFromKafka: start='committed' needs a group_id; pass group_id=... or "
                             "start='earliest'/'latest'")
        if self.commit_offsets and self.group_id is None:
            raise ValueError("ReadFromKafka: commit_offsets needs a group_id")
        if self.partitions is not None and (not self.partitions or min(self.partitions) < 0):
            raise ValueError("ReadFromKafka: partitions must list at least one partition number >= 0")
        if self.max_bundle_s <= 0 or self.poll_timeout_ms <= 0 or self.max_poll_records <= 0:
            raise ValueError("ReadFromKafka: max_bundle_s, poll_timeout_ms and max_poll_records must be > 0")

def _offsets(mapping: Mapping[tuple[str, int], int] | None) -> dict[tuple[str, int], int] | None:
    return None if mapping is None else {(str(t), int(p)): int(o) for (t, p), o in mapping.items()}

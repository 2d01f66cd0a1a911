"""Plain kafka-python producers and consumers configured the scanflow way.

Used directly by the probe agents and tools, and inside the Beam connectors
(``beam_kafka_source``, ``beam_kafka_sink``).

- Producers: ``acks=all`` with the idempotent producer (a retried batch is not written twice),
  batching (``linger_ms``/``batch_size``), zstd compression when available, and the
  :class:`StablePartitioner`: Java's default murmur2 hash of the key bytes, so one IP always lands in
  the same partition whichever client (Python, Java, kcat) wrote it. Never Python's ``hash()``,
  which is salted per process.
- Consumers: no auto-commit. Offsets are committed explicitly, only after what was done with the
  records is durable (see :func:`commit_offsets` and docs/CONTRACT.md).
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any, Iterable, Mapping

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.partitioner.abc import Partitioner
from kafka.partitioner.default import murmur2
from kafka.structs import OffsetAndMetadata

from connectors.avro_codec import AvroCodec, default_codec, key_for
from scanflow.config import KafkaSettings

log = logging.getLogger(__name__)

#: Producer settings unless overridden: durable, ordered per partition, batched.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,
    # Up to 25 ms of added latency buys fuller batches: fewer requests, less per-record work.
    "linger_ms": 25,
    "batch_size": 512 * 1024,
    "max_request_size": 1024 * 1024,
    "max_in_flight_requests_per_connection": 5,
    # kafka-python's own client metrics cost ~10 % of the send path and nothing in scanflow reads
    # them (the Beam transforms keep their own counters).
    "metrics_enabled": False,
}

#: Consumer settings unless overridden: nothing is committed behind the caller's back.
CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable_auto_commit": False,
    "auto_offset_reset": "earliest",
    "max_poll_records": 5000,
    "fetch_max_bytes": 32 * 1024 * 1024,
    "max_partition_fetch_bytes": 8 * 1024 * 1024,
    # kafka-python's CRC-32C is pure Python (~10 us per record, more than decoding the record).
    # The broker verified every batch's CRC when it was produced and TCP protects the transfer;
    # pass check_crcs=True to verify again on the client.
    "check_crcs": False,
    "metrics_enabled": False,
}

#: Record-time field of each schema; the Kafka timestamp is taken from it when asked to.
EVENT_TIME_FIELD = {
    "ScanEvent": "timestamp", "ScanDone": "ended_at", "ScanCommand": "issued_at",
    "IpState": "updated_at", "Observation": "ended_at", "Decision": "decided_at",
}


#: Headers of a dead letter (the original key, value and headers are kept unchanged).
HEADER_ERROR_CLASS = "scanflow.error.class"
HEADER_ERROR_MESSAGE = "scanflow.error.message"
HEADER_SOURCE_TOPIC = "scanflow.source.topic"
HEADER_SOURCE_PARTITION = "scanflow.source.partition"
HEADER_SOURCE_OFFSET = "scanflow.source.offset"
HEADER_SOURCE_TIMESTAMP = "scanflow.source.timestamp"
_MAX_MESSAGE = 1000


def dead_letter_headers(error_class: str, message: str, topic: str | None = None,
                        partition: int | None = None, offset: int | None = None,
                        timestamp_ms: int | None = None) -> tuple[tuple[str, bytes], ...]:
    """Headers that say why a record is a dead letter and where it came from (UTF-8 text values)."""
    headers = [(HEADER_ERROR_CLASS, error_class.encode()),
               (HEADER_ERROR_MESSAGE, message[:_MAX_MESSAGE].encode("utf-8", "replace"))]
    for name, value in ((HEADER_SOURCE_TOPIC, topic), (HEADER_SOURCE_PARTITION, partition),
                        (HEADER_SOURCE_OFFSET, offset), (HEADER_SOURCE_TIMESTAMP, timestamp_ms)):
        if value is not None:
            headers.append((name, str(value).encode()))
    return tuple(headers)


class DeliveryError(KafkaError):
    """One or more records were not acknowledged by the brokers (after the producer's retries).

    ``retriable``: every failure was of a kind that can pass (a timeout, a lost connection, a leader
    election), so sending the same records again may succeed; False when one cannot (a record too
    large, a missing authorisation)."""

    def __init__(self, message: str, failures: list[BaseException] | None = None):
        super().__init__(message)
        self.failures = list(failures or [])
        self.retriable = bool(self.failures) and all(getattr(f, "retriable", False) for f in self.failures)


def partition_for(key: bytes, num_partitions: int) -> int:
    """The partition of ``key``: Java's ``toPositive(murmur2(key)) % numPartitions``.

    Stable across processes, machines and client languages.
    """
    if num_partitions < 1:
        raise ValueError("num_partitions must be >= 1")
    return (murmur2(key) & 0x7FFFFFFF) % num_partitions


class StablePartitioner(Partitioner):
    """Keyed records go to :func:`partition_for` of their key; unkeyed ones to a random partition."""

    def partition(self, topic, key, serialized_key, value, serialized_value, cluster):
        partitions = cluster.partitions_for_topic(topic)
        if not partitions:
            raise ValueError(f"topic {topic} is not in the cluster metadata; create it first")
        ordered = sorted(partitions)
        if serialized_key is None:
            return random.choice(ordered)
        return ordered[partition_for(serialized_key, len(ordered))]


def _zstd_available() -> bool:
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return False
    return True


def make_producer(kafka: KafkaSettings, **overrides: Any) -> KafkaProducer:
    """A KafkaProducer with :data:`PRODUCER_DEFAULTS`, the stable partitioner and zstd if installed.

    Keys and values are bytes (or None); ``overrides`` are kafka-python producer options.
    """
    options = {**kafka.client_options(), **PRODUCER_DEFAULTS,
               "partitioner": StablePartitioner(),
               "compression_type": "zstd" if _zstd_available() else None}
    options.update(overrides)
    return KafkaProducer(**options)


def make_consumer(kafka: KafkaSettings, group_id: str | None = None, **overrides: Any) -> KafkaConsumer:
    """A KafkaConsumer with :data:`CONSUMER_DEFAULTS` (no auto-commit); subscribe or assign it yourself."""
    options = {**kafka.client_options(), **CONSUMER_DEFAULTS, "group_id": group_id}
    options.update(overrides)
    return KafkaConsumer(**options)


class AvroProducer:
    """Sends scanflow records (dicts) single-object encoded, keyed and partitioned by address.

    ``send`` is asynchronous; :meth:`flush` blocks until every record sent so far is acknowledged by
    all in-sync replicas and raises :class:`DeliveryError` if any was not. Only after a successful
    flush may the caller treat the records as durable (e.g. commit the offsets that produced them).

    With ``event_time_timestamps=True`` the Kafka timestamp is the record's event time instead of
    the send time. Leave it off for live data older than the topic retention would keep (simulated
    history): the broker deletes segments by their newest timestamp.
    """

    def __init__(self, kafka: KafkaSettings, codec: AvroCodec | None = None, *,
                 event_time_timestamps: bool = False, producer: KafkaProducer | None = None,
                 **producer_overrides: Any):
        self.codec = codec or default_codec()
        self.event_time_timestamps = event_time_timestamps
        self._producer = producer or make_producer(kafka, **producer_overrides)
        self._failures: list[BaseException] = []
        self.sent = 0

    def send(self, topic: str, name: str, record: Mapping[str, Any], *, key: bytes | None = None,
             headers: list[tuple[str, bytes]] | None = None, timestamp_ms: int | None = None):
        """Encode ``record`` with schema ``name`` and send it; the key defaults to :func:`key_for`."""
        value = self.codec.encode(name, record)
        if key is None:
            key = key_for(name, record)
        if timestamp_ms is None and self.event_time_timestamps:
            micros = record.get(EVENT_TIME_FIELD.get(name, ""))
            timestamp_ms = micros // 1000 if isinstance(micros, int) and micros > 0 else None
        return self.send_bytes(topic, key, value, headers=headers, timestamp_ms=timestamp_ms)

    def send_bytes(self, topic: str, key: bytes | None, value: bytes | None, *,
                   headers: list[tuple[str, bytes]] | None = None, timestamp_ms: int | None = None):
        """Send already encoded bytes (e.g. a dead letter, which keeps the original bytes)."""
        future = self._producer.send(topic, key=key, value=value, headers=headers, timestamp_ms=timestamp_ms)
        future.add_errback(self._failures.append)
        self.sent += 1
        return future

    def flush(self, timeout_s: float | None = None) -> None:
        """Block until everything sent is acknowledged (acks=all); raise :class:`DeliveryError` if not."""
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            # kafka-python's flush can fail as a whole when a batch failed; report it the same way.
            self._failures.append(exc)
        if self._failures:
            failures, self._failures = self._failures, []
            raise DeliveryError(f"{len(failures)} record(s) were not delivered; first error: "
                                f"{type(failures[0]).__name__}: {failures[0]}", failures)

    def close(self, timeout_s: float | None = None) -> None:
        """Flush, then close the underlying producer."""
        try:
            self.flush(timeout_s)
        finally:
            self._producer.close(timeout=timeout_s)

    def __enter__(self) -> "AvroProducer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()


def topic_partitions(consumer: KafkaConsumer, topics: Iterable[str],
                     timeout_s: float = 30.0) -> list[TopicPartition]:
    """Every partition of ``topics``, waiting for metadata; ``ValueError`` if a topic does not exist.

    A node of the cluster that is down does not fail the call: kafka-python 3.0 raises the
    connection error of a metadata request sent to a dead node (seen with one broker of three
    killed, on the restart of the scheduler); the request is made again, and the client's backoff
    for that node sends it to another one."""
    from kafka.errors import KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError

    deadline = time.monotonic() + timeout_s
    result: list[TopicPartition] = []
    for topic in topics:
        while True:
            try:
                partitions = consumer.partitions_for_topic(topic)
            except (KafkaConnectionError, NodeNotReadyError, KafkaTimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise
                log.info("metadata of %s: %s; asking again", topic, exc)
                partitions = None
            if partitions:
                result.extend(TopicPartition(topic, p) for p in sorted(partitions))
                break
            if time.monotonic() > deadline:
                raise ValueError(f"topic {topic!r} does not exist (or has no partitions); create it "
                                 "first, e.g. with `scanflow topics create`")
            time.sleep(0.2)
    return result


def commit_offsets(consumer: KafkaConsumer, next_offsets: Mapping[tuple[str, int], int]) -> None:
    """Commit, for the consumer's group, the *next* offset to read of each (topic, partition).

    Works with manually assigned consumers (no group membership needed), which is how the Beam reader
    commits the partitions it was given.
    """
    if next_offsets:
        consumer.commit({TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                         for (t, p), o in next_offsets.items()})


def committed_offsets(consumer: KafkaConsumer,
                      partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
    """The group's committed next offset per partition (None where nothing was committed)."""
    return {tp: consumer.committed(tp) for tp in partitions}

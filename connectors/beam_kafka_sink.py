"""The Beam Kafka sink: :class:`EncodeRecords` (records to single-object bytes) and :class:`WriteToKafka`.

:class:`WriteToKafka` is a batching, ``acks=all`` producer keyed by address with the stable
(murmur2) partitioner; every bundle is flushed before it completes, so the source's offset commit
(:mod:`connectors.beam_kafka_source`) follows the writes of the records that led to it.

Broker outages: a write keeps its bundle's records and sends the unacknowledged ones again (a new
producer each time) for up to :data:`WRITE_OUTAGE_S` before it fails the bundle. A runner like Prism
fails the whole job on a failed bundle, so a broker restart must not fail one.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping

import apache_beam as beam
from apache_beam.metrics import Metrics
from kafka.errors import KafkaError, OutOfOrderSequenceNumberError, RetriableError, UnknownProducerIdError

from connectors.avro_codec import AvroCodec, CodecError, default_codec, key_for
from connectors.beam_kafka_common import METRICS_NAMESPACE, DeadLetter
from connectors.kafka_io import dead_letter_headers, make_producer
from scanflow.config import KafkaSettings

log = logging.getLogger(__name__)


class _EncodeFn(beam.DoFn):
    DEAD_LETTER = "dead_letter"

    def __init__(self, schema: str, codec: AvroCodec | None):
        self._schema, self._codec = schema, codec

    def setup(self):
        if self._codec is None:
            self._codec = default_codec()

    def process(self, element):
        key, record = element if isinstance(element, tuple) else (None, element)
        try:
            value = self._codec.encode(self._schema, record)
            if key is None:
                key = key_for(self._schema, record)
        except (CodecError, KeyError, TypeError) as exc:
            error_class = getattr(exc, "error_class", "InvalidRecord")
            yield beam.pvalue.TaggedOutput(self.DEAD_LETTER, DeadLetter(
                _key_bytes(key), repr(record).encode(), dead_letter_headers(error_class, str(exc))))
            return
        yield _key_bytes(key), value


class EncodeRecords(beam.PTransform):
    """Records (dicts, or ``(key, dict)``) -> ``(key bytes, single-object bytes)`` with schema ``schema``.

    The key defaults to the record's address (see :func:`connectors.avro_codec.key_for`). Records that
    break the contract go to the ``dead_letter`` output (value = the record's ``repr``) instead of
    failing the pipeline. Returns ``(encoded, dead_letter)``.
    """

    def __init__(self, schema: str, *, codec: AvroCodec | None = None):
        super().__init__()
        self._schema, self._codec = schema, codec

    def expand(self, records):
        out = records | f"Encode{self._schema}" >> beam.ParDo(
            _EncodeFn(self._schema, self._codec)).with_outputs(_EncodeFn.DEAD_LETTER, main="encoded")
        return out.encoded, out[_EncodeFn.DEAD_LETTER]


def _key_bytes(key) -> bytes | None:
    return key.encode() if isinstance(key, str) else key


#: How long a write keeps trying through a broker outage (the broker restarting, a partition
#: leader moving) before it fails its bundle, and on a portable runner the job.
WRITE_OUTAGE_S = 600.0


def _outage(error: BaseException | None) -> bool:
    """Whether a write error can pass with time (broker away, leader moving, a producer id lost in
    a broker restart) rather than being about the records (too large, not authorised, ...)."""
    return isinstance(error, (RetriableError, TimeoutError, OutOfOrderSequenceNumberError,
                              UnknownProducerIdError))


class _WriteFn(beam.DoFn):
    def __init__(self, kafka: KafkaSettings, topic: str, overrides: Mapping[str, Any],
                 outage_s: float = WRITE_OUTAGE_S):
        self._kafka, self._topic, self._overrides = kafka, topic, dict(overrides)
        self._outage_s = outage_s
        self._producer = None

    def setup(self):
        self._written = Metrics.counter(METRICS_NAMESPACE, "records_written")
        self._retries = Metrics.counter(METRICS_NAMESPACE, "write_retries")

    def start_bundle(self):
        self._records: list[tuple] = []
        self._futures: list = []

    def process(self, element):
        key, value, *rest = element
        record = (_key_bytes(key), value, list(rest[0]) if rest and rest[0] else None)
        self._records.append(record)
        if self._futures is None:
            return              # the broker is away: finish_bundle sends everything once it is back
        try:
            if self._producer is None:
                self._producer = make_producer(self._kafka, **self._overrides)
            self._futures.append(self._send(record))
        except KafkaError:
            self._futures = None

    def _send(self, record):
        key, value, headers = record
        return self._producer.send(self._topic, key=key, value=value, headers=headers)

    def finish_bundle(self):
        # The bundle (and so the offset commit of the records that led here) completes only once
        # every record is acknowledged by all in-sync replicas. Through a broker outage the records
        # not acknowledged are sent again (a new producer each time) until WRITE_OUTAGE_S has passed;
        # only then does the bundle fail. At-least-once: a re-sent record that had in fact arrived is
        # a duplicate, absorbed by consumers keyed on ids.
        if not self._records:
            return
        deadline = time.monotonic() + self._outage_s
        pending = list(self._records)
        futures = self._futures
        attempt = 0
        while True:
            error: BaseException | None = None
            try:
                if self._producer is None:
                    self._producer = make_producer(self._kafka, **self._overrides)
                if futures is None:
                    futures = [self._send(r) for r in pending]
                self._producer.flush(timeout=max(1.0, deadline - time.monotonic()))
                failed = [(r, f) for r, f in zip(pending, futures) if not f.is_done or f.failed()]
                if not failed:
                    break
                error = failed[0][1].exception if failed[0][1].is_done else TimeoutError("not acknowledged")
                pending = [r for r, _ in failed]
            except KafkaError as exc:
                error = exc
            if not _outage(error):
                # A producer that aborted its batches fails again on close; drop it here so that the
                # bundle's error is this one (teardown has nothing left to raise).
                self._drop_producer()
                raise RuntimeError(f"{len(pending)} record(s) to {self._topic} were not acknowledged: {error!r}")
            if time.monotonic() >= deadline:
                self._drop_producer()
                raise RuntimeError(f"{len(pending)} record(s) to {self._topic} were not acknowledged within "
                                   f"{self._outage_s:.0f} s: {error!r}")
            attempt += 1
            self._retries.inc()
            log.warning("write to %s: %d record(s) not acknowledged (%r); retrying (attempt %d)",
                        self._topic, len(pending), error, attempt)
            self._drop_producer()
            futures = None
            time.sleep(min(5.0, 0.5 * attempt))
        self._written.inc(len(self._records))
        self._records, self._futures = [], []

    def _drop_producer(self):
        if self._producer is not None:
            try:
                self._producer.close(timeout=0)
            except Exception:  # noqa: BLE001 - a broken producer is being replaced anyway
                pass
            self._producer = None

    def teardown(self):
        # Never raises: a teardown error would replace the error of the bundle that failed (the one
        # that says which records were not acknowledged); what is unsent here was never acknowledged,
        # so its bundle did not complete and its input is read again.
        if self._producer is not None:
            try:
                self._producer.close()
            except Exception as exc:  # noqa: BLE001 - reported, not raised (see above)
                log.warning("write to %s: closing the producer failed: %r", self._topic, exc)
            self._producer = None


class WriteToKafka(beam.PTransform):
    """Write ``(key, value)`` or ``(key, value, headers)`` elements (bytes or str keys) to ``topic``.

    A batching producer with ``acks=all`` and idempotence, keys partitioned by murmur2 like Java's
    default partitioner. Each bundle is flushed before it completes. Returns nothing useful (an empty
    PCollection from the write step).
    """

    def __init__(self, kafka: KafkaSettings, topic: str, **producer_overrides: Any):
        super().__init__()
        if not topic:
            raise ValueError("WriteToKafka: give a topic name")
        self._kafka, self._topic, self._overrides = kafka, topic, producer_overrides

    def expand(self, pcoll):
        return pcoll | "Write" >> beam.ParDo(_WriteFn(self._kafka, self._topic, self._overrides))

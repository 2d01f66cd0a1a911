"""Decoding Kafka records read by :mod:`connectors.beam_kafka_source`, with dead letters.

:class:`DecodeRecords` turns single-object Avro into ``(key, Decoded)``; everything that does not
decode or breaks the contract goes to the ``dead_letter`` output with the reason in headers.
:class:`DecodeWithDeadLetter` does the same and writes the dead letters to Kafka
(with :class:`connectors.beam_kafka_sink.WriteToKafka`).
"""

from __future__ import annotations

from typing import Iterable

import apache_beam as beam
from apache_beam.metrics import Metrics

from connectors.avro_codec import AvroCodec, CodecError, Decoded, default_codec
from connectors.beam_kafka_common import METRICS_NAMESPACE, DeadLetter
from connectors.beam_kafka_sink import WriteToKafka
from connectors.beam_kafka_source import KafkaRecord
from connectors.kafka_io import dead_letter_headers
from scanflow.config import KafkaSettings

#: Names of the schemas carried by scanflow.events.
EVENT_SCHEMAS = ("ScanEvent", "ScanDone")


class _DecodeFn(beam.DoFn):
    DEAD_LETTER = "dead_letter"

    def __init__(self, codec: AvroCodec | None, expect: tuple[str, ...] | None, keep_tombstones: bool):
        self._codec = codec
        self._expect = frozenset(expect) if expect else None
        self._keep_tombstones = keep_tombstones

    def setup(self):
        if self._codec is None:
            self._codec = default_codec()
        self._dead = Metrics.counter(METRICS_NAMESPACE, "dead_letters")

    def process(self, rec: KafkaRecord):
        if rec.value is None and self._keep_tombstones and rec.key is not None:
            yield rec.key.decode("utf-8", "replace"), None
            return
        try:
            decoded = self._codec.decode(rec.value, self._expect)
        except CodecError as exc:
            self._dead.inc()
            yield beam.pvalue.TaggedOutput(self.DEAD_LETTER, DeadLetter(
                rec.key, rec.value, rec.headers + dead_letter_headers(
                    exc.error_class, str(exc), rec.topic, rec.partition, rec.offset, rec.timestamp_ms)))
            return
        yield _record_key(decoded), decoded


def _record_key(decoded: Decoded) -> str:
    record = decoded.record
    if decoded.schema == "ScanDone":
        return record["target"]
    if decoded.schema == "ScanCommand":
        targets = record["targets"]
        return targets[0] if len(targets) == 1 else record["command_id"]
    if decoded.schema == "KnowledgeUpdate":
        return record["update_id"]
    return record["ip"]


class DecodeRecords(beam.PTransform):
    """:class:`KafkaRecord` -> ``(key, Decoded)`` plus a ``dead_letter`` output of :class:`DeadLetter`.

    The key is the record's address (``ScanDone``: its target, an address or CIDR range). ``expect``
    limits the accepted schemas (default: those of scanflow.events). Malformed bytes, unknown
    fingerprints, unresolvable schemas, invalid addresses or ports all become dead letters whose
    headers name the error class and message and the source topic, partition and offset; the pipeline
    never stops on a bad record. With ``keep_tombstones`` a null value (compacted-topic delete) is
    emitted as ``(key, None)`` instead of being a dead letter.

    Returns ``(decoded, dead_letter)`` PCollections.
    """

    def __init__(self, expect: Iterable[str] | None = EVENT_SCHEMAS, *, codec: AvroCodec | None = None,
                 keep_tombstones: bool = False):
        super().__init__()
        self._codec = codec
        self._expect = tuple(expect) if expect is not None else None
        self._keep_tombstones = keep_tombstones

    def expand(self, records):
        out = records | "Decode" >> beam.ParDo(
            _DecodeFn(self._codec, self._expect, self._keep_tombstones)).with_outputs(
                _DecodeFn.DEAD_LETTER, main="decoded")
        return out.decoded, out[_DecodeFn.DEAD_LETTER]


class DecodeWithDeadLetter(beam.PTransform):
    """:class:`DecodeRecords` whose dead letters are written to ``dead_letter_topic``; returns the decoded."""

    def __init__(self, kafka: KafkaSettings, dead_letter_topic: str, expect: Iterable[str] | None = EVENT_SCHEMAS,
                 *, codec: AvroCodec | None = None, keep_tombstones: bool = False):
        super().__init__()
        self._kafka, self._topic = kafka, dead_letter_topic
        self._decode = DecodeRecords(expect, codec=codec, keep_tombstones=keep_tombstones)

    def expand(self, records):
        decoded, dead = records | "DecodeRecords" >> self._decode
        _ = dead | "WriteDeadLetters" >> WriteToKafka(self._kafka, self._topic)
        return decoded

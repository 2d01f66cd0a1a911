"""Stage: send the scheduler's commands and state changes to Kafka.

- :class:`WriteCommands`: ``(key, ScanCommand record)`` (per-IP commands from the timers, range
  commands from the sweeps) -> ``scanflow.commands``, keyed by the single target.
- :class:`WriteIpStates`: ``(ip, IpState record or None, headers)`` -> ``scanflow.ip-state``
  (compacted); None is written as a tombstone. Headers carry the scheduler's exact state.

Both write with the connector's ``acks=all`` producer and flush before a bundle completes. A record
that breaks the contract goes to the dead-letter topic instead of failing the pipeline. Every
command id is derived from (policy, target, not_before), so a command written twice (a retried
bundle) is one command to the agents.
"""

from __future__ import annotations

import apache_beam as beam

from connectors.avro_codec import CodecError, default_codec
from connectors.beam_kafka_common import DeadLetter
from connectors.beam_kafka_sink import EncodeRecords, WriteToKafka
from connectors.kafka_io import dead_letter_headers
from scanflow.config import KafkaSettings


class WriteCommands(beam.PTransform):
    """``(key, ScanCommand record)`` -> ``topic``; contract violations -> ``dead_letter_topic``."""

    def __init__(self, kafka: KafkaSettings, topic: str, dead_letter_topic: str):
        super().__init__()
        self._kafka, self._topic, self._dead_letter = kafka, topic, dead_letter_topic

    def expand(self, commands):
        encoded, dead = commands | "Encode" >> EncodeRecords("ScanCommand")
        _ = dead | "WriteDeadLetters" >> WriteToKafka(self._kafka, self._dead_letter)
        return encoded | "Write" >> WriteToKafka(self._kafka, self._topic)


class _EncodeStateFn(beam.DoFn):
    DEAD_LETTER = "dead_letter"

    def setup(self):
        self._codec = default_codec()

    def process(self, element):
        ip, record, headers = element
        try:
            value = self._codec.encode("IpState", record) if record is not None else None
        except CodecError as exc:
            yield beam.pvalue.TaggedOutput(self.DEAD_LETTER, DeadLetter(
                ip.encode(), repr(record).encode(), dead_letter_headers(exc.error_class, str(exc))))
            return
        yield ip.encode(), value, tuple(headers)


class WriteIpStates(beam.PTransform):
    """``(ip, IpState record or None, headers)`` -> the compacted ``topic`` (None = tombstone)."""

    def __init__(self, kafka: KafkaSettings, topic: str, dead_letter_topic: str):
        super().__init__()
        self._kafka, self._topic, self._dead_letter = kafka, topic, dead_letter_topic

    def expand(self, states):
        out = states | "Encode" >> beam.ParDo(_EncodeStateFn()).with_outputs(_EncodeStateFn.DEAD_LETTER,
                                                                              main="encoded")
        _ = out[_EncodeStateFn.DEAD_LETTER] | "WriteDeadLetters" >> WriteToKafka(self._kafka, self._dead_letter)
        return out.encoded | "Write" >> WriteToKafka(self._kafka, self._topic)

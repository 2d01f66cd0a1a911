"""Stage: send the scheduler's commands and state changes to Kafka.

- :class:`WriteCommands`: ``(key, ScanCommand record)`` (per-IP commands from the timers, range
  commands from the sweeps) -> ``scanflow.commands``, keyed by the single target.
- :class:`WriteIpStates`: ``(ip, IpState record or None, headers)`` -> ``scanflow.ip-state``
  (compacted); None is written as a tombstone. Headers carry the scheduler's exact state.
- :class:`WriteCommandsThenStates`: both, from the per-IP stage's one ``writes`` output, in one step
  that sends a bundle's states only once every command of that bundle is acknowledged (what the
  live scheduler uses for the per-IP commands; the sweeps' commands go through WriteCommands).

Both write with the connector's ``acks=all`` producer and flush before a bundle completes. A record
that breaks the contract goes to the dead-letter topic instead of failing the pipeline. Every
command id is derived from (policy, target, not_before), so a command written twice (a retried
bundle) is one command to the agents.
"""

from __future__ import annotations

import apache_beam as beam

from connectors.avro_codec import CodecError, default_codec
from connectors.beam_kafka_common import DeadLetter
from connectors.beam_kafka_sink import EncodeRecords, WriteToKafka, _WriteFn
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


#: The tags of ``(tag, *element)`` on the per-IP stage's ``writes`` output (pipelines.per_ip_stage).
_COMMAND, _STATE = "commands", "states"


class _EncodeWritesFn(beam.DoFn):
    """``("commands", ip, ScanCommand)`` / ``("states", ip, IpState or None, headers)`` -> the same
    tags with Kafka key and value bytes; records that break the contract -> dead letters."""

    DEAD_LETTER = "dead_letter"

    def setup(self):
        self._codec = default_codec()

    def process(self, element):
        tag, ip, record, *headers = element
        try:
            if tag == _COMMAND:
                value = self._codec.encode("ScanCommand", record)
            else:
                value = self._codec.encode("IpState", record) if record is not None else None
        except (CodecError, KeyError, TypeError) as exc:
            error_class = getattr(exc, "error_class", "InvalidRecord")
            yield beam.pvalue.TaggedOutput(self.DEAD_LETTER, DeadLetter(
                ip.encode(), repr(record).encode(), dead_letter_headers(error_class, str(exc))))
            return
        yield (tag, ip.encode(), value, *(tuple(h) for h in headers))


class _CommandsThenStatesFn(beam.DoFn):
    """Sends a bundle's commands as they come; holds its states until every command of the bundle
    is acknowledged (``acks=all``), then sends and flushes them. Both writes keep the connector's
    outage handling (:class:`connectors.beam_kafka_sink._WriteFn`)."""

    def __init__(self, kafka: KafkaSettings, commands_topic: str, ip_state_topic: str):
        self._commands = _WriteFn(kafka, commands_topic, {})
        self._states = _WriteFn(kafka, ip_state_topic, {})

    def setup(self):
        self._commands.setup()
        self._states.setup()

    def start_bundle(self):
        self._commands.start_bundle()
        self._states.start_bundle()
        self._held: list[tuple] = []

    def process(self, element):
        tag, *record = element
        if tag == _COMMAND:
            self._commands.process(tuple(record))
        else:
            self._held.append(tuple(record))

    def finish_bundle(self):
        self._commands.finish_bundle()          # raises (fails the bundle) if not acknowledged
        for record in self._held:
            self._states.process(record)
        self._held = []
        self._states.finish_bundle()

    def teardown(self):
        self._commands.teardown()
        self._states.teardown()


class WriteCommandsThenStates(beam.PTransform):
    """The per-IP stage's ``writes`` output (``("commands", ip, ScanCommand)`` and ``("states", ip,
    IpState or None, headers)``) -> the commands topic and the ip-state topic, commands first.

    An ip-state record can say "the command is out" (``issued``); a restarted scheduler restores that
    state and does not issue the command again (the watchdog retries it later, under another command
    id). The live scheduler used to write the two with separate sinks, the commands behind a
    ``Flatten`` with the sweeps, which on Prism is a fusion break: the states were written when the
    per-IP stage's bundle finished, the commands by a later bundle of another stage, and a kill -9
    in between left IPs whose restored state said issued while no command was ever sent. Here the
    write is a chain of ParDos on one output of the per-IP stage (fused with it) and a bundle's
    states are sent only after all of its commands are acknowledged, so a kill at any point leaves
    either the command without its state (the restarted scheduler issues it again from the same next
    scan time, with the same id: agents skip a command id they have done) or both. Contract
    violations go to the dead-letter topic.
    """

    def __init__(self, kafka: KafkaSettings, commands_topic: str, ip_state_topic: str, dead_letter_topic: str):
        super().__init__()
        self._kafka, self._commands, self._states = kafka, commands_topic, ip_state_topic
        self._dead_letter = dead_letter_topic

    def expand(self, writes):
        out = writes | "Encode" >> beam.ParDo(_EncodeWritesFn()).with_outputs(_EncodeWritesFn.DEAD_LETTER,
                                                                               main="encoded")
        _ = out[_EncodeWritesFn.DEAD_LETTER] | "WriteDeadLetters" >> WriteToKafka(self._kafka, self._dead_letter)
        return out.encoded | "Write" >> beam.ParDo(_CommandsThenStatesFn(self._kafka, self._commands, self._states))

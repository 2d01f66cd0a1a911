"""What the Beam Kafka transforms share: the dead-letter record and the metrics namespace.

The transforms themselves are in :mod:`connectors.beam_kafka_source` (read),
:mod:`connectors.beam_kafka_decode` (decode with dead letters) and :mod:`connectors.beam_kafka_sink`
(encode, write); see docs/CONTRACT.md for the whole contract. They are pure Python on kafka-python:
Beam's own ``ReadFromKafka`` is a Java cross-language transform that needs a Java expansion service,
while these run on every runner that runs Python (FnApiRunner, Prism, Flink, Dataflow).
"""

from __future__ import annotations

from typing import NamedTuple

#: Namespace of the Kafka transforms' Beam metrics.
METRICS_NAMESPACE = "scanflow.kafka"


class DeadLetter(NamedTuple):
    """A record that could not be processed: original key and value bytes, headers with the reason."""

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

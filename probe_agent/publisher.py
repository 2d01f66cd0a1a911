"""The agent's Kafka side: events out, dead letters out, tracked IPs in.

- :class:`EventPublisher` turns results into ``ScanEvent`` s and target tallies into ``ScanDone`` s on
  ``scanflow.events`` (acks=all, idempotent, keyed by address / target) and refused or malformed
  commands into dead letters. Nothing is durable before :meth:`EventPublisher.flush` returns; the
  agent commits a command's offset only after that.
- :class:`IpStateReader` follows ``scanflow.ip-state`` in a thread and keeps :class:`TrackedIps`
  current (a state record tracks an IP, a tombstone un-tracks it).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from connectors.avro_codec import CodecError, make_event_id
from connectors.kafka_io import (
    AvroProducer,
    dead_letter_headers,
    make_consumer,
    topic_partitions,
)
from probe_agent.safety import TrackedIps
from scanflow.config import KafkaSettings, TopicsSettings

if TYPE_CHECKING:  # pragma: no cover
    from probe_agent.backends import ProbeResult
    from probe_agent.job import TargetTally

log = logging.getLogger("scanflow.agent.kafka")


class EventPublisher:
    """Sends ScanEvents, ScanDones and dead letters; :meth:`flush` makes them durable or raises."""

    def __init__(self, kafka: KafkaSettings, topics: TopicsSettings, agent_id: str, *,
                 producer: AvroProducer | None = None):
        self.topics = topics
        self.agent_id = agent_id
        self.producer = producer or AvroProducer(kafka)
        self.events = 0
        self.dones = 0
        self.dead_letters = 0
        #: Callables given every ScanEvent / ScanDone record sent (``(schema, record)``), e.g. to print them.
        self.listeners: list = []

    def event(self, scan_id: str, result: "ProbeResult") -> None:
        """One ScanEvent for a result whose ``kind`` is set, keyed by its address."""
        record = {
            "event_id": make_event_id(scan_id, result.ip, result.port, "TCP", result.kind),
            "scan_id": scan_id, "agent_id": self.agent_id, "ip": result.ip, "port": result.port,
            "transport": "TCP", "kind": result.kind, "timestamp": result.timestamp_us,
            "banner": result.banner if result.kind == "BANNER" else None,
            "banner_truncated": bool(result.banner_truncated and result.kind == "BANNER"),
            "banner_protocol": result.protocol, "ttl": result.ttl, "window": result.window,
            "protocol": result.grabber, "status": result.grab_status or "UNKNOWN", "tls": result.tls,
        }
        self.producer.send(self.topics.events, "ScanEvent", record)
        self.events += 1
        for listener in self.listeners:
            listener("ScanEvent", record)

    def done(self, tally: "TargetTally") -> None:
        """The ScanDone of one target, after its events (same key for a single address)."""
        record = tally.record(self.agent_id)
        self.producer.send(self.topics.events, "ScanDone", record)
        self.dones += 1
        for listener in self.listeners:
            listener("ScanDone", record)

    def dead_letter(self, key: bytes | None, value: bytes | None, error_class: str, message: str, *,
                    topic: str | None = None, partition: int | None = None, offset: int | None = None,
                    timestamp_ms: int | None = None, headers: list[tuple[str, bytes]] | None = None) -> None:
        """The original record, unchanged, with the reason in headers."""
        all_headers = list(headers or []) + list(dead_letter_headers(
            error_class, message, topic, partition, offset, timestamp_ms))
        self.producer.send_bytes(self.topics.dead_letter, key, value, headers=all_headers)
        self.dead_letters += 1

    def flush(self, timeout_s: float | None = None) -> None:
        """Block until everything sent is acknowledged; :class:`DeliveryError` if anything was not."""
        self.producer.flush(timeout_s)

    def close(self, timeout_s: float | None = None) -> None:
        """Flush and close."""
        self.producer.close(timeout_s)


class IpStateReader:
    """Reads ``scanflow.ip-state`` from the beginning in a daemon thread into :class:`TrackedIps`.

    ``tracked.caught_up`` is set once every partition has been read up to its end offset as of the
    start, so the agent can wait for it before running sweeps.
    """

    def __init__(self, kafka: KafkaSettings, topic: str, tracked: TrackedIps, codec: Any = None):
        from connectors.avro_codec import default_codec

        self.kafka = kafka
        self.topic = topic
        self.tracked = tracked
        self.codec = codec or default_codec()
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ip-state-reader", daemon=True)

    def start(self) -> "IpStateReader":
        """Start the thread."""
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread."""
        self._stop.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        consumer = make_consumer(self.kafka, group_id=None)
        try:
            tps = topic_partitions(consumer, [self.topic])
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            targets = consumer.end_offsets(tps)
            while not self._stop.is_set():
                for records in consumer.poll(timeout_ms=200).values():
                    for rec in records:
                        self._apply(rec)
                if not self.tracked.caught_up.is_set() and all(
                        consumer.position(tp) >= end for tp, end in targets.items()):
                    self.tracked.caught_up.set()
                    log.info("ip-state read: %d tracked IPs", len(self.tracked))
        except Exception:  # noqa: BLE001 - the thread must report, not vanish
            log.exception("ip-state reader stopped")
        finally:
            consumer.close()

    def _apply(self, rec) -> None:
        ip = rec.key.decode("utf-8", "replace") if rec.key else None
        if rec.value is None:
            if ip:
                self.tracked.update(ip, None)
            return
        try:
            state = self.codec.decode_as("IpState", rec.value)
        except CodecError as exc:
            # The scheduler owns this topic and dead-letters its own output; here it is only counted.
            self.errors += 1
            log.warning("ip-state record at %s/%d@%d skipped: %s", rec.topic, rec.partition, rec.offset, exc)
            return
        self.tracked.update(state["ip"], state.get("policy") or "UNKNOWN")

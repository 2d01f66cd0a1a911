"""Stage: knowledge updates -> an urgent rescan of every tracked address estimated as an affected model.

``scanflow kb update`` publishes one ``KnowledgeUpdate`` record to ``scanflow.kb-updates`` (the models
that gained scan ports and their new ports). The per-IP state lives in the per-IP stage, keyed by
address, so the update is fanned out: for each update the compacted ``scanflow.ip-state`` topic (the
current state of every tracked address, the one the scheduler restores from) is read to its end, and
every address whose last state names an affected model becomes one ``(ip, KnowledgeUrgent)`` item
of the per-IP stage (:mod:`pipelines.per_ip_stage`). There it waits for the watermark like a round,
is checked against the address's live state (still tracked, still that model, not applied before)
and issued as an ``URGENT`` command on the address's open ports plus the model's new ports
(:meth:`scanflow.lifecycle.step.Lifecycle.wake`).

Delivery: the update's offset is committed with the consumer group of the events reader once its
bundle is done; an update read again after a restart fans out again and the per-IP stage drops it
for addresses it was applied to (their state says so), so each address is rescanned once per update.
Undecodable updates and updates that break the contract (an empty id, a model listed twice or
without ports, a port outside 1..65535) go to the dead-letter topic with the reason.

Cost: one read of the ip-state topic per update (updates are rare; decoding the records alone takes
about 2.7 s per 100,000 tracked addresses on the development machine). An address whose state was written in the last seconds before the read (its
first estimate as the model) can be missed; its next full probe, once the scheduler runs with the
new knowledge, covers the new ports.
"""

from __future__ import annotations

import logging
import time
from typing import Iterable, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from connectors.avro_codec import CodecError, default_codec
from connectors.beam_kafka_decode import DecodeWithDeadLetter
from connectors.beam_kafka_source import ReadFromKafka
from connectors.kafka_io import make_consumer, topic_partitions
from scanflow.config import KafkaSettings
from scanflow.lifecycle.step import KnowledgeUrgent

log = logging.getLogger(__name__)
_METRICS = "scanflow.kb_updates"


def changes_of(record) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """``((model, (new port, ...)), ...)`` of a decoded ``KnowledgeUpdate`` record, sorted."""
    return tuple(sorted((c["model"], tuple(sorted(set(c["new_ports"])))) for c in record["changes"]))


def select_affected(states: Iterable[tuple[str, dict | None]], models) -> dict[str, str]:
    """The addresses whose *last* state names one of ``models``: ``{ip: model}``.

    ``states`` are ``(ip, IpState record or None)`` in topic order (None: a tombstone, the address was
    demoted); a later record of an address replaces an earlier one, as compaction would.
    """
    models = frozenset(models)
    hits: dict[str, str] = {}
    for ip, record in states:
        device = record.get("device") if record is not None else None
        if device in models:
            hits[ip] = device
        else:
            hits.pop(ip, None)
    return hits


def read_ip_states(kafka: KafkaSettings, topic: str, codec=None, *, timeout_s: float = 300.0,
                   skipped: list | None = None) -> Iterator[tuple[str, dict | None]]:
    """Every record of the ip-state topic from its beginning to its end as it is now:
    ``(ip, IpState record or None)``. Records that do not decode are skipped (the restore read
    dead-letters them) and counted in ``skipped``."""
    codec = codec or default_codec()
    consumer = make_consumer(kafka, max_poll_records=5000)
    try:
        tps = topic_partitions(consumer, [topic])
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = {tp: o for tp, o in consumer.end_offsets(tps).items() if o > 0}
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < o for tp, o in end.items()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: not read to its end within {timeout_s:.0f} s")
            for tp, batch in consumer.poll(timeout_ms=500).items():
                for rec in batch:
                    if rec.key is None or (tp in end and rec.offset >= end[tp]):
                        continue
                    ip = rec.key.decode("utf-8", "replace")
                    if rec.value is None:
                        yield ip, None
                        continue
                    try:
                        yield ip, codec.decode_as("IpState", rec.value)
                    except CodecError:
                        if skipped is not None:
                            skipped.append(ip)
    finally:
        consumer.close(autocommit=False)


class _FanOutFn(beam.DoFn):
    """One decoded update -> ``(ip, KnowledgeUrgent)`` for every address estimated as an affected model.

    The update's time is its element time (the Kafka timestamp its producer set): what the rescans
    are due at, and what tells the per-IP stage whether an address was rescanned for it already.
    """

    def __init__(self, kafka: KafkaSettings, ip_state_topic: str, share=None):
        self._kafka, self._topic = kafka, ip_state_topic
        #: One of several scheduler jobs (:class:`pipelines.partitions.PartitionShare`): only its addresses.
        self._share = share

    def setup(self):
        self._codec = default_codec()
        self._updates = Metrics.counter(_METRICS, "updates")
        self._addresses = Metrics.counter(_METRICS, "addresses")
        self._unreadable = Metrics.counter(_METRICS, "ip_state_unreadable")

    def process(self, element, ts=beam.DoFn.TimestampParam):
        _, decoded = element
        record = decoded.record
        changes = changes_of(record)
        self._updates.inc()
        if not changes:
            log.info("knowledge update %s affects no model (published with --force): nothing to rescan",
                     record["update_id"])
            return
        started = time.monotonic()
        skipped: list = []
        hits = select_affected(read_ip_states(self._kafka, self._topic, self._codec, skipped=skipped),
                               (model for model, _ in changes))
        if self._share is not None:
            hits = {ip: model for ip, model in hits.items() if self._share.owns_ip(ip)}
        if skipped:
            self._unreadable.inc(len(skipped))
        self._addresses.inc(len(hits))
        log.info("knowledge update %s: %d tracked addresses of %d affected models (ip-state read in %.1f s)",
                 record["update_id"], len(hits), len(changes), time.monotonic() - started)
        item = KnowledgeUrgent(record["update_id"], ts.micros, changes)
        for ip in sorted(hits):
            yield ip, item


class ReadKnowledgeUpdates(beam.PTransform):
    """``scanflow.kb-updates`` (live, the scheduler's consumer group) -> ``(ip, KnowledgeUrgent)`` for
    the per-IP stage; bad records to ``dead_letter_topic``.

    ``share`` (one of several scheduler jobs, :mod:`pipelines.partitions`): every job reads every
    update, under a consumer group of its own (``group_id`` + the share's label, so the jobs' commits
    of the same partitions never collide), and rescans only the addresses it owns."""

    def __init__(self, kafka: KafkaSettings, topic: str, ip_state_topic: str, dead_letter_topic: str, *,
                 group_id: str, watermark_lag_s: float = 5.0, share=None):
        super().__init__()
        if share is not None and share.whole:
            share = None
        if share is not None:
            group_id = f"{group_id}.{share.label}"
        self._read = ReadFromKafka(kafka, topic, group_id=group_id, watermark_lag_s=watermark_lag_s)
        self._decode = DecodeWithDeadLetter(kafka, dead_letter_topic, expect=("KnowledgeUpdate",))
        self._fan_out = _FanOutFn(kafka, ip_state_topic, share)

    def expand(self, pbegin):
        return (pbegin
                | "Read" >> self._read
                | "Decode" >> self._decode
                | "FanOut" >> beam.ParDo(self._fan_out))


def topic_exists(kafka: KafkaSettings, topic: str) -> bool:
    """True when the broker lists ``topic``."""
    consumer = make_consumer(kafka)
    try:
        return topic in consumer.topics()
    finally:
        consumer.close(autocommit=False)

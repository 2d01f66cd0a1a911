"""The live scheduler (adaptive policy, the default) follows a new responder up minutes after its
round, on the loop's compressed clock, against the real broker.

The policy's settings are compressed exactly as ``scanflow run`` compresses them
(:func:`scanflow.loop.scheduler.scaled_policy`), at one virtual minute per wall second: the follow-up
delay of 300 s becomes 5 wall seconds, the 12 h light cadence 720. Two addresses answer for the first
time: one in a sweep of its block (the light set, promoted by its answer), one in a per-IP light
probe. Each must get a command with the follow-up set, due ``followup_delay`` after its round and on
the commands topic within ten virtual minutes of it (long before the next light probe); the
follow-up's answer classifies the device, and its next probe is the light set with its model's ports,
one cadence later.
"""

from __future__ import annotations

import dataclasses
import time
import uuid

import apache_beam as beam

from connectors.avro_codec import default_codec, make_record
from connectors.kafka_io import AvroProducer, make_consumer, topic_partitions
from pipelines.policy_setup import build_policy
from pipelines.scheduler import NO_STATE_CACHE, build_live
from pipelines.settings import PipelineSettings
from scanflow.lifecycle.records import micros, port_set_record
from scanflow.lifecycle.rounds import US
from scanflow.loop.scheduler import scaled_policy

SCALE = 1 / 60                       # wall seconds per virtual second: a virtual minute a second
HIK = b"HTTP/1.1 200 OK\r\nServer: Hikvision-Webs\r\n\r\n"
BLOCK = "198.18.40.0/28"
SWEPT = "198.18.40.7"                # answers a sweep of BLOCK
PROBED = "198.18.41.9"               # answers a per-IP light probe


class _Follow:
    """Reads a topic from the beginning, noting when each record was seen."""

    def __init__(self, kafka, topic):
        self.consumer = make_consumer(kafka)
        tps = topic_partitions(self.consumer, [topic])
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.records: list[tuple[float, object]] = []

    def until(self, cond, timeout_s: float = 120.0):
        # A deadline only so that a broken pipeline fails instead of hanging.
        deadline = time.monotonic() + timeout_s
        while not cond(self.records) and time.monotonic() < deadline:
            for batch in self.consumer.poll(timeout_ms=200).values():
                self.records.extend((time.time(), r) for r in batch)
        return self.records

    def close(self):
        self.consumer.close()


def _answer(producer, topic, scan, ip, at):
    producer.send(topic, "ScanEvent", make_record(
        "ScanEvent", scan_id=scan, agent_id="agent-1", ip=ip, port=80, transport="TCP", kind="BANNER",
        banner=HIK, timestamp=micros(at)))
    producer.send(topic, "ScanEvent", make_record(
        "ScanEvent", scan_id=scan, agent_id="agent-1", ip=ip, port=554, transport="TCP", kind="SYN_ACK",
        banner=None, timestamp=micros(at)))


def _done(producer, topic, scan, target, ports, started, ended, addresses=1):
    producer.send(topic, "ScanDone", make_record(
        "ScanDone", scan_id=scan, agent_id="agent-1", target=target, policy="EFFICIENT",
        started_at=micros(started), ended_at=micros(ended), port_set=port_set_record(ports),
        ports_probed=len(ports), addresses_probed=addresses, status="COMPLETE"))


def test_a_new_responder_is_followed_up_within_minutes_of_compressed_time(kafka, make_topic, settings,
                                                                          prism_options):
    topics = dataclasses.replace(
        settings.topics, events=make_topic("fu-events", partitions=3), commands=make_topic("fu-commands", partitions=3),
        ip_state=make_topic("fu-state", partitions=3, **{"cleanup.policy": "compact"}),
        dead_letter=make_topic("fu-dead", partitions=1))
    base = dataclasses.replace(settings.policy, name="adaptive")
    cfg = dataclasses.replace(settings, topics=topics, policy=scaled_policy(base, SCALE))
    pipeline = PipelineSettings(round_timeout_s=60, rewind_s=120, command_ttl_s=600, watermark_lag_s=1.0,
                                group_id=f"fu-scheduler-{uuid.uuid4().hex[:8]}", sweep_gather_s=2.0)
    policy = build_policy(cfg, pipeline)
    assert policy.variant == "adaptive"
    delay = policy.params.followup_delay
    assert abs(delay - 300 * SCALE) < 1e-9 and abs(policy.params.cadence - 12 * 3600 * SCALE) < 1e-6
    light, followup = policy.port_sets.light, policy.port_sets.followup
    codec = default_codec()
    commands = _Follow(kafka, topics.commands)
    result = None
    try:
        p = beam.Pipeline(options=prism_options(NO_STATE_CACHE))
        build_live(p, cfg, pipeline, policy, restore=False, rewind=False)
        result = p.run()
        time.sleep(3)                     # the reader is assigned its partitions
        t0 = time.time()
        with AvroProducer(kafka, event_time_timestamps=True) as producer:
            sweep = f"cmd-sweep-{uuid.uuid4().hex[:6]}/{BLOCK}"
            _answer(producer, topics.events, sweep, SWEPT, t0)
            _done(producer, topics.events, sweep, BLOCK, light, t0 - 0.2, t0 + 0.1, addresses=16)
            probe = f"cmd-light-{uuid.uuid4().hex[:6]}/{PROBED}"
            _answer(producer, topics.events, probe, PROBED, t0)
            _done(producer, topics.events, probe, PROBED, light, t0 - 0.1, t0 + 0.2)
        probed_end = t0 + 0.2

        def per_ip(records):
            return {codec.decode(r.value).record["targets"][0]: (seen, codec.decode(r.value).record)
                    for seen, r in records}

        commands.until(lambda rs: {SWEPT, PROBED} <= set(per_ip(rs)))
        got = per_ip(commands.records)
        assert {SWEPT, PROBED} <= set(got), got
        ten_minutes = 600 * SCALE
        for ip in (SWEPT, PROBED):
            seen, cmd = got[ip]
            assert cmd["port_set"] == followup.to_record() and cmd["reason"] == "NEW_RESPONDER", cmd
            due = cmd["not_before"] / US
            # planned followup_delay after the round (a sweep's round closes when its answers stop)
            assert t0 + delay - 0.01 <= due <= t0 + delay + pipeline.sweep_gather_s + 1.0, (ip, due - t0)
            # and on the topic within ten virtual minutes of the answer, long before the next light probe
            assert seen - t0 <= ten_minutes, (ip, seen - t0)
        assert abs(got[PROBED][1]["not_before"] / US - (probed_end + delay)) < 1e-3

        # The follow-up answers: the device is classified, its next probe is one cadence later with
        # the light set and its model's ports.
        t1 = time.time()
        with AvroProducer(kafka, event_time_timestamps=True) as producer:
            scan = f"{got[PROBED][1]['command_id']}/{PROBED}"
            _answer(producer, topics.events, scan, PROBED, t1)
            _done(producer, topics.events, scan, PROBED, followup, t1 - 0.1, t1 + 0.1)
        # the next command is due a cadence (720 s) later: its state says so at once
        states = _Follow(kafka, topics.ip_state)
        try:
            def classified(records):
                # the state after the follow-up's round (the first answer may name the device already)
                return any(r.value is not None and r.key.decode() == PROBED
                           and codec.decode(r.value).record["device"]
                           and (codec.decode(r.value).record["last_scanned_at"] or 0) >= micros(t1) for _, r in records)

            states.until(classified)
            last = [rec for rec in (codec.decode(r.value).record for _, r in states.records
                                    if r.value is not None and r.key.decode() == PROBED)
                    if (rec["last_scanned_at"] or 0) >= micros(t1)][-1]
        finally:
            states.close()
        # the same as the core decides for the same two rounds
        from scanflow.policy import Observation

        first, _ = policy.decide(None, Observation.of([80, 554], {80: HIK}, probed=light), probed_end, PROBED)
        state, plan = policy.decide(first, Observation.of([80, 554], {80: HIK}, probed=followup), t1 + 0.1, PROBED)
        assert state.device == last["device"] == "hikvision-ipc" and last["status"] == "RESPONSIVE_ESTIMATED"
        assert abs(plan.at - (t1 + 0.1) - policy.params.cadence) < 1e-6
        assert last["next_scan_at"] == micros(plan.at)
        assert policy.ports_for(state).name.startswith("light+")
    finally:
        if result is not None:
            result.cancel()
        commands.close()


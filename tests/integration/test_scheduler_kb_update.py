"""A knowledge update acts at once: the live scheduler (adaptive policy, Prism, real broker, the loop's
compressed clock of one virtual minute per wall second) rescans every tracked address estimated as an
affected model on its new ports, and only those, within an hour of compressed time.

Four addresses are tracked (their states are on the ip-state topic the scheduler restores from): a
Hikvision camera and an HP printer, which a new malware family infects (by naming the model, by
category), a Dahua camera it does not infect, and an address whose device is not estimated.
``scanflow kb update FILE`` publishes the update; the two affected addresses must get an URGENT
command on their open ports plus the new ports, the others none. A malformed record on the updates
topic before it goes to the dead-letter topic with the reason and stops nothing.
"""

from __future__ import annotations

import dataclasses
import time
import uuid

import apache_beam as beam
from click.testing import CliRunner

from connectors.avro_codec import default_codec
from connectors.kafka_io import AvroProducer, make_producer
from pipelines.policy_setup import build_policy
from pipelines.scheduler import NO_STATE_CACHE, build_live
from pipelines.settings import PipelineSettings
from scanflow.cli import main
from scanflow.knowledge import load_knowledge
from scanflow.knowledge_update import compare
from scanflow.lifecycle.records import ip_state_record, micros
from scanflow.lifecycle.rounds import US
from scanflow.loop.scheduler import scaled_policy
from scanflow.policy import IpState, IpStatus
from scanflow.portsets import PortSet
from tests.integration.test_scheduler_followup import SCALE, _Follow

NEW_MALWARE = """[kb]
schema = 1

[[malware]]
id = "kbtest-worm"
name = "A test worm"
infects = ["printer"]
targets = ["hikvision-ipc"]
target_ports = [37777, 9527]
listen_ports = [31337]
"""
TRACKED = {"198.18.50.1": ("hikvision-ipc", (80, 554)), "198.18.50.2": ("hp-printer", (80, 631, 9100)),
           "198.18.50.3": ("dahua-ipc", (80, 37777)), "198.18.50.4": (None, (80, 8080))}
AFFECTED = {"198.18.50.1", "198.18.50.2"}


def _state(ip, device, ports, now):
    status = IpStatus.RESPONSIVE_ESTIMATED if device else IpStatus.RESPONSIVE_UNESTIMATED
    state = IpState(status, 1, frozenset(ports), (), device, 0.9 if device else 0.0, None, 0, 0,
                    now - 7200, now - 600, now - 600, now - 7200)
    # next scan far after the test: every command seen is the update's
    return ip_state_record(ip, "EFFICIENT", state, now + 3600, now - 600)


def test_a_knowledge_update_rescans_exactly_the_affected_addresses_within_an_hour(kafka, make_topic, settings,
                                                                                   prism_options, tmp_path):
    topics = dataclasses.replace(
        settings.topics, events=make_topic("kb-events", partitions=3), commands=make_topic("kb-commands", partitions=3),
        ip_state=make_topic("kb-state", partitions=3, **{"cleanup.policy": "compact"}),
        dead_letter=make_topic("kb-dead", partitions=1), kb_updates=make_topic("kb-updates", partitions=1))
    base = dataclasses.replace(settings.policy, name="adaptive")
    cfg = dataclasses.replace(settings, topics=topics, policy=scaled_policy(base, SCALE))
    pipeline = PipelineSettings(round_timeout_s=60, rewind_s=120, command_ttl_s=600, watermark_lag_s=1.0,
                                group_id=f"kb-scheduler-{uuid.uuid4().hex[:8]}", sweep_gather_s=2.0)
    policy = build_policy(cfg, pipeline)
    kb_file = tmp_path / "kbtest-worm.toml"
    kb_file.write_text(NEW_MALWARE)
    before = load_knowledge(cfg.policy.kb_paths(), builtin=cfg.policy.builtin_kb)
    gain = compare(before, load_knowledge([*cfg.policy.kb_paths(), kb_file], builtin=cfg.policy.builtin_kb))
    assert {"hikvision-ipc", "hp-printer"} <= set(gain.gained) and "dahua-ipc" not in gain.gained

    now = time.time()
    with AvroProducer(kafka) as producer:
        for ip, (device, ports) in TRACKED.items():
            producer.send(topics.ip_state, "IpState", _state(ip, device, ports, now))
    codec = default_codec()
    commands = _Follow(kafka, topics.commands)
    dead = _Follow(kafka, topics.dead_letter)
    result = None
    try:
        p = beam.Pipeline(options=prism_options(NO_STATE_CACHE))
        build_live(p, cfg, pipeline, policy, rewind=False, kb_updates=True)
        result = p.run()
        time.sleep(5)                     # the readers are assigned their partitions, the states restored
        raw = make_producer(kafka)
        raw.send(topics.kb_updates, key=b"junk", value=b"not an update").get(timeout=30)
        raw.close()
        t_pub = time.time()
        r = CliRunner().invoke(main, ["--set", f"topics.kb_updates={topics.kb_updates}", "kb", "update",
                                      str(kb_file)], catch_exceptions=False)
        assert r.exit_code == 0 and "published kbu-" in r.output, r.output
        published = time.time()

        def urgent(records):
            out = {}
            for seen, rec in records:
                cmd = codec.decode(rec.value).record
                if cmd["reason"] == "URGENT":
                    out.setdefault(cmd["targets"][0], []).append((seen, cmd))
            return out

        commands.until(lambda rs: AFFECTED <= set(urgent(rs)), timeout_s=120)
        time.sleep(5)                     # anything else would have come by now
        commands.until(lambda rs: False, timeout_s=1)
        got = urgent(commands.records)
        assert set(got) == AFFECTED, got
        assert all(len(v) == 1 for v in got.values()), got
        hour = 3600 * SCALE
        latency = {}
        for ip, [(seen, cmd)] in got.items():
            device, ports = TRACKED[ip]
            want = PortSet.inline(set(ports) | gain.gained[device], label="kb-update")
            assert cmd["port_set"] == want.to_record(), (ip, cmd["port_set"])
            # due at the update's time, on the topic within an hour of compressed time
            assert t_pub - 1 <= cmd["not_before"] / US <= published + 1, (ip, cmd["not_before"] / US - t_pub)
            latency[ip] = seen - t_pub
            assert latency[ip] <= hour, (ip, latency[ip])
        worst = max(latency.values())
        print(f"\nknowledge update -> urgent commands: {worst:.1f} wall s (= {worst / SCALE / 60:.1f} virtual "
              f"minutes at {1 / SCALE:.0f}x), per address {', '.join(f'{v:.1f}' for v in latency.values())} s")

        dead.until(lambda rs: len(rs) >= 1, timeout_s=30)
        (_, letter), = dead.records
        headers = dict(letter.headers)
        assert letter.value == b"not an update" and headers["scanflow.error.class"] == b"MalformedRecord"
    finally:
        if result is not None:
            result.cancel()
        commands.close()
        dead.close()

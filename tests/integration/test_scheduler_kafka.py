"""The live scheduler on Prism against the real broker: events in, commands and state out; a
cancel and restart in the middle loses nothing and duplicates nothing.

Time is compressed: the policy's ladder is 5 s, 10 s, 20 s, ... instead of 12 h, 1 d, 2 d, so the
wall-clock watermark reaches every next scan time within the test. 300 IPs are scanned once (run 1:
the first commands are issued), the pipeline is cancelled, a second round of scans is produced
while it is down (some answers unchanged, some changed, some silent), and a second run must pick up
exactly where the first stopped: state from ``scanflow.ip-state``, events from the committed
offsets (re-reading a little before them, which the restored scan ids absorb).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections import Counter

import apache_beam as beam

from connectors.avro_codec import default_codec, make_record
from connectors.kafka_io import AvroProducer, make_consumer, topic_partitions
from scanflow.lifecycle.rounds import US
from pipelines.policy_setup import build_policy
from scanflow.lifecycle.records import command_id, micros, port_set_record
from pipelines.runners import PRISM_JOB_ID, list_jobs
from pipelines.scheduler import NO_STATE_CACHE, build_live
from pipelines.settings import PipelineSettings
from pipelines.sweeps import SweepPlan
from scanflow.policy import Observation

N_IPS = 300
LADDER_S = (5, 10, 20, 40, 80, 160, 320, 640)
HIK = b"HTTP/1.1 200 OK\r\nServer: Hikvision-Webs\r\n\r\n"
NGINX = b"HTTP/1.1 200 OK\r\nServer: nginx/1.24.0\r\n\r\n"
SSH = b"SSH-2.0-OpenSSH_9.6\r\n"
SWEEP_BLOCK = "203.0.113.0/28"


def _ip(i: int) -> str:
    return f"198.18.{i // 200}.{i % 200 + 1}"


class _Topic:
    """Reads a topic from the beginning; ``until(cond)`` polls until ``cond(records)`` holds."""

    def __init__(self, kafka, topic):
        self.consumer = make_consumer(kafka)
        tps = topic_partitions(self.consumer, [topic])
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.records = []

    def until(self, cond, timeout_s: float = 120.0):
        # Waits for a condition (a deadline only so a broken pipeline fails instead of hanging).
        deadline = time.monotonic() + timeout_s
        while not cond(self.records) and time.monotonic() < deadline:
            for batch in self.consumer.poll(timeout_ms=300).values():
                self.records.extend(batch)
        return self.records

    def close(self):
        self.consumer.close()


def _answer(i: int, round_no: int):
    """What IP ``i`` answers in round 1 or 2: ports and banners (empty: silent)."""
    kind = i % 10
    if kind == 0:
        return [], {}                          # never answers (a per-IP scan of a silent IP)
    if round_no == 2 and kind == 1:
        return [], {}                          # went silent: demoted
    if kind in (2, 3, 4, 5):
        banner = NGINX if (round_no == 2 and kind == 2) else HIK
        return [80, 554], {80: banner}         # a camera (kind 2 becomes a web server in round 2)
    return [22], {22: SSH}                     # a generic server, never estimated


def _produce_round(kafka, topic, policy, ips, round_no, plans, start):
    """Per-IP scans of ``ips``: responses then a ScanDone each, timestamped from ``start`` on."""
    rounds = {}
    with AvroProducer(kafka, event_time_timestamps=True) as producer:
        for k, i in enumerate(ips):
            ip = _ip(i)
            t = start + k * 0.01
            ports, banners = _answer(i, round_no)
            probed = plans[ip].ports if ip in plans else policy.port_sets.silent
            scan = f"r{round_no}-{ip}"
            for port in ports:
                producer.send(topic, "ScanEvent", make_record(
                    "ScanEvent", scan_id=scan, agent_id="agent-1", ip=ip, port=port, transport="TCP",
                    kind="BANNER" if port in banners else "SYN_ACK", banner=banners.get(port),
                    timestamp=micros(t)))
            ended = t + 0.5
            producer.send(topic, "ScanDone", make_record(
                "ScanDone", scan_id=scan, agent_id="agent-1", target=ip, policy="EFFICIENT",
                started_at=micros(t), ended_at=micros(ended),
                port_set=port_set_record(probed),
                ports_probed=len(probed), addresses_probed=1, status="COMPLETE"))
            rounds[ip] = (scan, micros(ended) / US, Observation.of(ports, banners, probed=probed))
    return rounds


def _run(options, settings, pipeline, policy):
    p = beam.Pipeline(options=options)
    build_live(p, settings, pipeline, policy)
    return p.run()


def _check_prism(result, prism_server, options):
    """The job ran on the session's Prism (a cancelled job cannot pass the DONE proof)."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions
    from apache_beam.runners.portability.portable_runner import PipelineResult

    assert isinstance(result, PipelineResult) and PRISM_JOB_ID.match(result._job_id)
    name = options.view_as(GoogleCloudOptions).job_name
    jobs = {j.job_id: j for j in list_jobs(prism_server.endpoint)}
    assert result._job_id in jobs
    assert jobs[result._job_id].pipeline_options.fields["beam:option:job_name:v1"].string_value == name


def test_live_scheduler_commands_and_restart(kafka, make_topic, settings, prism_options, prism_server):
    topics = dataclasses.replace(
        settings.topics, events=make_topic("sched-events", partitions=6),
        commands=make_topic("sched-commands", partitions=3),
        ip_state=make_topic("sched-state", partitions=6, **{"cleanup.policy": "compact"}),
        dead_letter=make_topic("sched-dead", partitions=1))
    policy_settings = dataclasses.replace(settings.policy, name="paper", ladder_hours=tuple(s / 3600 for s in LADDER_S),
                                          silent_interval_h=10 / 3600)
    cfg = dataclasses.replace(settings, topics=topics, policy=policy_settings)
    pipeline = PipelineSettings(round_timeout_s=60, rewind_s=120, command_ttl_s=3600, watermark_lag_s=1.0,
                                group_id=f"scheduler-test-{uuid.uuid4().hex[:8]}", sweep_ranges=(SWEEP_BLOCK,),
                                sweep_prefix=28, sweep_tick_s=1.0)
    policy = build_policy(cfg, pipeline)
    commands, states = _Topic(kafka, topics.commands), _Topic(kafka, topics.ip_state)
    codec = default_codec()
    expected_commands: list[str] = []
    plans, state_of = {}, {}

    def decide(rounds):
        for ip, (scan, at, obs) in rounds.items():
            state, plan = policy.decide(state_of.get(ip), obs, at)
            if state.responsive:
                state_of[ip], plans[ip] = state, plan
                expected_commands.append(command_id("EFFICIENT", ip, micros(plan.at)))
            else:
                state_of.pop(ip, None)
                plans.pop(ip, None)

    def per_ip(records):
        return [r for r in records if "/" not in r.key.decode()]

    try:
        # Run 1: the first round of 300 IPs; every answering IP gets its first command.
        round1 = _produce_round(kafka, topics.events, policy, range(N_IPS), 1, plans, time.time())
        decide(round1)
        tracked_after_1 = set(plans)
        options1 = prism_options(NO_STATE_CACHE)
        first = _run(options1, cfg, pipeline, policy)
        try:
            commands.until(lambda rs: len(per_ip(rs)) >= len(expected_commands))
            # The state written when each command was issued: that is what a restart resumes from.
            states.until(lambda rs: len({r.key for r in rs if r.value is not None}) >= len(tracked_after_1)
                         and sum(1 for r in rs if r.value is not None) >= 2 * len(tracked_after_1))
        finally:
            first.cancel()
        assert str(first.state).endswith("CANCELLED")
        _check_prism(first, prism_server, options1)
        assert len(per_ip(commands.records)) == len(expected_commands) == len(tracked_after_1) == 270

        # While nothing runs: the second round, scanned with each IP's commanded ports.
        round2 = _produce_round(kafka, topics.events, policy, [i for i in range(N_IPS) if _ip(i) in plans], 2,
                                plans, time.time())
        decide(round2)
        assert len(round2) == 270 and len(plans) == 240  # 30 went silent

        options2 = prism_options(NO_STATE_CACHE)
        second = _run(options2, cfg, pipeline, policy)
        try:
            commands.until(lambda rs: len(per_ip(rs)) >= len(expected_commands))
            demoted = tracked_after_1 - set(plans)
            states.until(lambda rs: {r.key.decode() for r in rs if r.value is None} >= demoted)
            time.sleep(2 * LADDER_S[0])  # room for a wrong extra command to show up
            commands.until(lambda rs: False, timeout_s=1)
        finally:
            second.cancel()
        _check_prism(second, prism_server, options2)

        got = [codec.decode(r.value).record for r in per_ip(commands.records)]
        ids = Counter(c["command_id"] for c in got)
        # Nothing lost, nothing twice: exactly the policy's commands, each once, across the restart.
        assert sorted(ids) == sorted(expected_commands) and max(ids.values()) == 1
        by_ip = {}
        for c in got:
            by_ip.setdefault(c["targets"][0], []).append(c)
        camera = by_ip[_ip(3)]
        assert [c["reason"] for c in camera] == ["NEW_RESPONDER", "BACKOFF"]
        assert camera[1]["not_before"] == micros(plans[_ip(3)].at)
        assert camera[1]["port_set"] == policy.estimator.port_set("hikvision-ipc").to_record()
        assert [c["reason"] for c in by_ip[_ip(2)]] == ["NEW_RESPONDER", "CHANGED"]

        # The compacted table: the last record per IP is the policy's state, or a tombstone.
        last = {}
        for r in states.records:
            last[r.key.decode()] = codec.decode(r.value).record if r.value is not None else None
        for ip in tracked_after_1:
            if ip in plans:
                rec = last[ip]
                assert (rec["status"], rec["backoff_step"], rec["device"]) == (
                    state_of[ip].status.value, state_of[ip].step, state_of[ip].device), ip
                assert rec["next_scan_at"] == micros(plans[ip].at)
            else:
                assert last[ip] is None, ip
        assert all(ip in tracked_after_1 for ip in last)  # never-answering IPs have no state

        # Sweeps of the configured block ran in both runs, each slot once.
        sweeps = [codec.decode(r.value).record for r in commands.records if "/" in r.key.decode()]
        assert sweeps and all(s["targets"] == [SWEEP_BLOCK] and s["reason"] == "SWEEP" for s in sweeps)
        assert all(s["port_set"] == policy.port_sets.silent.to_record() for s in sweeps)
        slots = Counter(s["not_before"] for s in sweeps)
        assert max(slots.values()) == 1
        plan = SweepPlan(pipeline.sweep_networks(), 28, policy.params.silent_interval)
        for s in sweeps:
            at = s["not_before"] / US
            assert any(abs(t - at) < 1e-3 for t, _ in plan.due(at - 1, at + 1))
    finally:
        commands.close()
        states.close()

"""The closed loop: the scheduler pipeline on Prism commands a sim agent through the real broker.

The scheduler sweeps a small synthetic network (10.0.0.0/22, four /24 blocks), the sim agent (a real
``scanflow agent`` process in the agents' consumer group) scans it in virtual time and publishes the
answers, the scheduler promotes the responders to per-IP tracking and commands their next scans,
the agent executes those, and so on. Time is compressed as in the scheduler's own live test: the
back-off ladder is 5 s, 10 s, 20 s, ... and the silent sweep period 60 s, so within a minute the
back-off steps of unchanged IPs show in ``scanflow.ip-state``.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
import uuid

import apache_beam as beam

from connectors.avro_codec import default_codec
from connectors.kafka_io import make_consumer, topic_partitions
from pipelines.policy_setup import build_policy, publish_port_sets
from pipelines.scheduler import NO_STATE_CACHE, build_live
from pipelines.settings import PipelineSettings
from scanflow.config import REPO_ROOT

LADDER_S = (5, 10, 20, 40, 80, 160, 320, 640)
WORLD = "10.0.0.0/22"


class Follow:
    """Reads a topic from the beginning; :meth:`until` polls until a condition on the records holds."""

    def __init__(self, kafka, topic):
        self.consumer = make_consumer(kafka)
        tps = topic_partitions(self.consumer, [topic])
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.records = []

    def until(self, cond, timeout_s: float = 180.0):
        # A deadline only so that a broken loop fails instead of hanging.
        deadline = time.monotonic() + timeout_s
        while not cond(self.records) and time.monotonic() < deadline:
            for batch in self.consumer.poll(timeout_ms=300).values():
                self.records.extend(batch)
        return self.records

    def close(self):
        self.consumer.close()


def test_scheduler_and_sim_agent_close_the_loop(kafka, make_topic, settings, prism_options, tmp_path):
    topics = dataclasses.replace(
        settings.topics, events=make_topic("loop-events", partitions=6),
        commands=make_topic("loop-commands", partitions=3),
        ip_state=make_topic("loop-state", partitions=6, **{"cleanup.policy": "compact"}),
        dead_letter=make_topic("loop-dead", partitions=1))
    # The paper's policy: its back-off ladder is what this test follows (the adaptive policy's live
    # follow-ups: test_scheduler_followup; its whole loop: tests/e2e).
    policy_settings = dataclasses.replace(settings.policy, name="paper", ladder_hours=tuple(s / 3600 for s in LADDER_S),
                                          silent_interval_h=60 / 3600)
    cfg = dataclasses.replace(settings, topics=topics, policy=policy_settings)
    pipeline = PipelineSettings(round_timeout_s=60, rewind_s=120, command_ttl_s=3600, watermark_lag_s=1.0,
                                group_id=f"loop-scheduler-{uuid.uuid4().hex[:8]}", sweep_ranges=(WORLD,),
                                sweep_prefix=24, sweep_tick_s=1.0, sweep_gather_s=2.0)
    policy = build_policy(cfg, pipeline)
    publish_port_sets(policy, tmp_path)   # the agent resolves named sets here

    start = time.time()
    agent_cmd = [sys.executable, "-m", "scanflow"]
    for key in ("events", "commands", "ip_state", "dead_letter"):
        agent_cmd += ["--set", f"topics.{key}={getattr(topics, key)}"]
    agent_cmd += ["agent", "--backend", "sim", "--allow", WORLD, "--group", f"loop-agents-{uuid.uuid4().hex[:8]}",
                  "--agent-id", "sim-agent", "--no-progress", "--rate", "100000", "--per-target-rate", "1000",
                  "--set", "sim_n_ips=1024", "--set", "sim_seed=2",
                  "--set", f"sim_epoch_us={int(start) * 1_000_000}", "--set", f"portset_dir={tmp_path}",
                  "--set", "commit_interval_s=0.2"]
    agent = subprocess.Popen(agent_cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    commands, states, events = Follow(kafka, topics.commands), Follow(kafka, topics.ip_state), Follow(kafka, topics.events)
    codec = default_codec()
    p = beam.Pipeline(options=prism_options(NO_STATE_CACHE))
    build_live(p, cfg, pipeline, policy, now=start)
    result = p.run()
    try:
        def stepped(records, step=2):
            return any(r.value is not None and codec.decode(r.value).record["backoff_step"] >= step for r in records)

        states.until(stepped)
        assert agent.poll() is None, agent.stderr.read()
    finally:
        result.cancel()
        agent.send_signal(signal.SIGTERM)
        try:
            _, agent_err = agent.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            agent.kill()
            _, agent_err = agent.communicate()
    events.until(lambda rs: False, timeout_s=2)
    commands.until(lambda rs: False, timeout_s=1)
    for follower in (commands, states, events):
        follower.close()

    assert agent.returncode == 0, agent_err
    cmds = [codec.decode(r.value).record for r in commands.records]
    sweeps = [c for c in cmds if c["reason"] == "SWEEP"]
    per_ip = [c for c in cmds if c["reason"] != "SWEEP"]
    assert sweeps and {c["targets"][0] for c in sweeps} <= {f"10.0.{i}.0/24" for i in range(4)}
    assert {"NEW_RESPONDER", "BACKOFF"} <= {c["reason"] for c in per_ip}

    decoded = [codec.decode(r.value) for r in events.records]
    dones = [d.record for d in decoded if d.schema == "ScanDone"]
    answers = [d.record for d in decoded if d.schema == "ScanEvent"]
    assert answers and all(d["agent_id"] == "sim-agent" for d in dones)
    # Commands flow to the agent: every command it had time for has its ScanDone, with its port set.
    done_by_command = {d["command_id"]: d for d in dones}
    executed = [c for c in cmds if c["command_id"] in done_by_command]
    assert len(executed) >= len(sweeps) // 2 and any(c["reason"] == "BACKOFF" for c in executed)
    for c in executed:
        d = done_by_command[c["command_id"]]
        assert d["status"] == "COMPLETE" and d["target"] == c["targets"][0] and d["port_set"] == c["port_set"]
        assert d["started_at"] == c["not_before"]                  # scanned at its due time (virtual)

    # Back-off steps visible in scanflow.ip-state: an unchanged IP climbs the ladder one step per scan.
    history: dict[str, list[dict]] = {}
    for r in states.records:
        if r.value is not None:
            rec = codec.decode(r.value).record
            history.setdefault(rec["ip"], []).append(rec)
    climbed = {ip: [h["backoff_step"] for h in hs] for ip, hs in history.items()
               if max(h["backoff_step"] for h in hs) >= 2}
    assert climbed
    for ip, steps in climbed.items():
        assert steps == sorted(steps) and steps[0] == 0, (ip, steps)
        recs = history[ip]
        at_step = {h["backoff_step"]: h for h in recs}
        # The interval to the next scan follows the compressed ladder: 5 s at step 0, 10 s at step 1.
        for step in (0, 1):
            h = at_step[step]
            assert h["next_scan_at"] - h["last_scanned_at"] == LADDER_S[step] * 1_000_000

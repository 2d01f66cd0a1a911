"""``scanflow pipeline run`` as a user runs it: a subprocess against the real broker and Prism.

Fresh topics and a compressed ladder (first rescan 5 s after a round) via ``--set``: events for a
few IPs are produced, the command runs for a fixed time, and the commands it sent are read back.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from connectors.avro_codec import default_codec, make_record
from connectors.kafka_io import AvroProducer, make_consumer, topic_partitions
from scanflow.lifecycle.records import micros

HIK = b"HTTP/1.1 200 OK\r\nServer: Hikvision-Webs\r\n\r\n"


def test_pipeline_run_consumes_events_and_sends_commands(kafka, make_topic, prism_server):
    topics = {"events": make_topic("cli-events", partitions=3), "commands": make_topic("cli-commands", partitions=1),
              "ip_state": make_topic("cli-state", partitions=3, **{"cleanup.policy": "compact"}),
              "dead_letter": make_topic("cli-dead", partitions=1)}
    now = time.time()
    ips = [f"198.18.7.{i}" for i in range(1, 6)]
    with AvroProducer(kafka, event_time_timestamps=True) as producer:
        for k, ip in enumerate(ips):
            t = now + k * 0.1
            producer.send(topics["events"], "ScanEvent", make_record(
                "ScanEvent", scan_id=f"cli-{ip}", agent_id="a", ip=ip, port=80, transport="TCP", kind="BANNER",
                banner=HIK, timestamp=micros(t)))
            producer.send(topics["events"], "ScanDone", make_record(
                "ScanDone", scan_id=f"cli-{ip}", agent_id="a", target=ip, policy="EFFICIENT",
                started_at=micros(t), ended_at=micros(t + 0.5), status="COMPLETE",
                port_set={"name": "provisional-silent", "version": 1, "ports": []}))
    sets = [f"topics.{key}={name}" for key, name in topics.items()]
    # the paper's policy: its first command is the first step of the (compressed) ladder
    sets += ["policy.name=paper",
             "policy.ladder_hours=" + ",".join(str(s / 3600) for s in (5, 10, 20, 40, 80, 160, 320, 640))]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANFLOW_PIPELINE_")}
    cmd = [sys.executable, "-m", "scanflow"]
    for item in sets:
        cmd += ["--set", item]
    cmd += ["pipeline", "run", "--job-endpoint", prism_server.ensure_running().endpoint, "--duration", "30"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "scheduler: running" in done.stdout and "CANCELLED" in done.stdout
    # The counters printed at the end: one decision and one command per IP.
    counters = dict(line.split() for line in done.stdout.splitlines() if line.startswith("  scanflow."))
    assert counters["scanflow.pipeline/decisions"] == "5" and counters["scanflow.pipeline/commands"] == "5"

    consumer = make_consumer(kafka)
    consumer.assign(topic_partitions(consumer, [topics["commands"]]))
    consumer.seek_to_beginning()
    records = []
    deadline = time.monotonic() + 30
    while len(records) < len(ips) and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    consumer.close()
    commands = [default_codec().decode(r.value).record for r in records]
    assert sorted(c["targets"][0] for c in commands) == ips
    assert all(c["reason"] == "NEW_RESPONDER" and c["policy"] == "EFFICIENT" for c in commands)
    # Five seconds after each round: the first step of the (compressed) ladder.
    for c, k in zip(sorted(commands, key=lambda c: c["targets"][0]), range(len(ips))):
        assert c["not_before"] == micros(now + k * 0.1 + 0.5 + 5)


def test_sigterm_cancels_the_job_and_leaves_no_runner_behind(kafka, make_topic, prism_binary, tmp_path):
    """``scanflow pipeline run`` on a Prism of its own, stopped with SIGTERM (as a service manager
    stops it): the job is cancelled, the command exits 0, and nothing of its session is left running
    (before, SIGTERM ended the Python process and orphaned its Prism runner). The ordered stop logs
    no ERROR line (the runner's "Bundle Failed (pipeline canceled)" was one per bundle in flight), and
    the scheduler published its named port sets where agents look for them by default."""
    import signal

    topics = {"events": make_topic("term-events", partitions=1), "commands": make_topic("term-commands", partitions=1),
              "ip_state": make_topic("term-state", partitions=1, **{"cleanup.policy": "compact"}),
              "dead_letter": make_topic("term-dead", partitions=1)}
    cmd = [sys.executable, "-m", "scanflow"]
    for key, name in topics.items():
        cmd += ["--set", f"topics.{key}={name}"]
    cmd += ["--set", f"infra.state_dir={tmp_path / 'state'}", "pipeline", "run", "--runner", "prism"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANFLOW_PIPELINE_")}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        lines = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "scheduler: running" in line:
                break
        assert any("scheduler: running" in line for line in lines), "".join(lines)
        time.sleep(2)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, "".join(lines) + out
    assert "CANCELLED" in out
    errors = [line for line in "".join(lines).splitlines() + out.splitlines() if line.startswith("ERROR")]
    assert not errors, errors
    # every named set of the default (adaptive) policy: light, followup, ..., one light+<model> per model
    from pipelines.policy_setup import build_policy, named_sets
    from pipelines.settings import PipelineSettings
    from scanflow.config import Settings

    published = sorted(p.name for p in (tmp_path / "state" / "portsets").iterdir())
    expected = sorted({f"{ps.name}-v{ps.version}.json" for ps in named_sets(build_policy(Settings(), PipelineSettings()))})
    assert published == expected and "light-v1.json" in published and "followup-v1.json" in published
    # Nothing of the command's session is still running (its Prism job server in particular).
    time.sleep(1)
    left = [pid for pid in os.listdir("/proc") if pid.isdigit() and _session_of(int(pid)) == proc.pid]
    assert not left, f"processes left running in the command's session: {left}"


def _session_of(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except (ProcessLookupError, PermissionError):
        return None

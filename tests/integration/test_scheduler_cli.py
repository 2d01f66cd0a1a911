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
from pipelines.records import micros

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
    sets += ["policy.ladder_hours=" + ",".join(str(s / 3600) for s in (5, 10, 20, 40, 80, 160, 320, 640))]
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

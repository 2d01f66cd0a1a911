"""Faults: kill -9 of an agent, of the scheduler pipeline and of the broker, in the middle of a run.

Each fault runs on the smallest loop that exercises it (real processes, real signals, a real broker):

- **agent**: ScanCommands on the commands topic, a sim agent process (``scanflow agent --backend
  sim``) executing them, killed with SIGKILL after some commands were acknowledged and before all
  were; a second agent finishes the work. Afterwards every command has its ScanDone (executed at
  least once), a re-executed command re-sends the same scan id and event ids, and the lake archived
  from the events topic (``scanflow lake archive``) holds every event and every scan exactly once
  after dedupe.
- **pipeline**: a round of scans on the events topic, the scheduler (``scanflow pipeline run`` with
  its own Prism runner) killed with SIGKILL (the whole process group, runner included) once it has
  decided part of the IPs, then restarted. Afterwards every IP has its follow-up command, and no
  decision took effect twice: one distinct command id per IP and round, and every ip-state record of
  an IP after dedupe (by the scan it came from) is the same transition.
- **broker**: a second broker (own ports and state dir) killed with SIGKILL while a sim agent works
  through commands on it, then started again; the agent, never restarted, carries on, and the counts
  reconcile as in the agent case.

The full three-fault loop is not run at once: each fault is the smallest loop above.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter, defaultdict

import duckdb
import pytest

from connectors.avro_codec import make_record
from connectors.kafka_io import AvroProducer
from scanflow.config import REPO_ROOT
from tests.e2e.conftest import (SIM_WORLD, Follow, committed_total, kill9, new_group, scanflow_cmd,
                                start, stop, wait_for)

US = 1_000_000
PORTS = [21, 22, 23, 80, 443, 554, 8000, 8080]


def _sim_ip(i: int) -> str:
    return f"10.0.{i // 256}.{i % 256}"


def _commands(n: int, epoch_us: int, tag: str) -> list[dict]:
    """``n`` single-target commands over the sim world, due one virtual second apart."""
    return [make_record("ScanCommand", command_id=f"{tag}-{i:04d}", targets=[_sim_ip(i % 1024)],
                        issued_at=epoch_us, not_before=epoch_us + i * US, expires_at=epoch_us + 86_400 * US,
                        port_set={"name": None, "version": None, "ports": PORTS}, reason="INITIAL")
            for i in range(n)]


def _produce(kafka_options, topic: str, schema: str, records: list[dict]) -> None:
    with AvroProducer(kafka_options) as producer:
        for rec in records:
            producer.send(topic, schema, rec)
        producer.flush()


def _agent_argv(topics, group: str, agent_id: str, epoch_us: int, *extra: str, bootstrap: str | None = None) -> list[str]:
    pre = topics.cli_args()
    if bootstrap:
        pre += ["--set", f"kafka.bootstrap_servers={bootstrap}"]
    return scanflow_cmd(*pre, "agent", "--backend", "sim", "--allow", SIM_WORLD, "--group", group,
                        "--agent-id", agent_id, "--no-progress", "--rate", "100000", "--per-target-rate", "1000",
                        "--set", "sim_n_ips=1024", "--set", "sim_seed=3", "--set", f"sim_epoch_us={epoch_us}",
                        "--set", "commit_interval_s=0.2", *extra)


def _archive_and_count(topics, lake, bootstrap: str | None = None) -> dict[str, int]:
    """Archive the events topic into ``lake`` with the real CLI; rows and distinct keys per table."""
    pre = topics.cli_args() + (["--set", f"kafka.bootstrap_servers={bootstrap}"] if bootstrap else [])
    out = subprocess.run(scanflow_cmd(*pre, "lake", "archive", "--lake", str(lake)), cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    con = duckdb.connect()
    counts = {}
    for table, key in (("events", "event_id"), ("scans", "scan_id")):
        files = list((lake / table).rglob("*.parquet"))
        if not files:
            counts[table], counts[f"{table}_distinct"] = 0, 0
            continue
        rows, distinct = con.execute(
            f"SELECT count(*), count(DISTINCT {key}) FROM read_parquet(?, hive_partitioning=true)",
            [[str(f) for f in files]]).fetchone()
        counts[table], counts[f"{table}_distinct"] = rows, distinct
    return counts


def _reconcile(follow: Follow, commands: list[dict]) -> dict:
    """Check the events topic against the commands; returns the figures."""
    follow.drain()
    dones = follow.records("ScanDone")
    events = follow.records("ScanEvent")
    by_command: dict[str, set[str]] = defaultdict(set)
    for d in dones:
        by_command[d["command_id"]].add(d["scan_id"])
    wanted = {c["command_id"] for c in commands}
    missing = wanted - set(by_command)
    assert not missing, f"{len(missing)} commands never executed, e.g. {sorted(missing)[:3]}"
    # One scan id per command (single target): a command executed twice reports the same scan.
    assert all(len(ids) == 1 for ids in by_command.values())
    assert all(d["status"] == "COMPLETE" for d in dones)
    # A re-sent event carries the same id and the same content: duplicates are exact copies.
    seen: dict[str, tuple] = {}
    for e in events:
        content = (e["scan_id"], e["ip"], e["port"], e["kind"], e["banner"])
        assert seen.setdefault(e["event_id"], content) == content
    return {"commands": len(wanted), "dones": len(dones), "dones_distinct": len({d["scan_id"] for d in dones}),
            "events": len(events), "events_distinct": len(seen)}


def test_agent_kill9_mid_run_every_command_done_and_lake_reconciles(kafka, loop_topics, tmp_path):
    """SIGKILL an agent between its first and last acknowledged command; a second agent finishes."""
    epoch_us = int(time.time()) * US
    commands = _commands(600, epoch_us, "akill")
    _produce(kafka, loop_topics.commands, "ScanCommand", commands)
    group = new_group("e2e-agents")
    log = tmp_path / "agent.log"
    # One command in flight at a time, so the agent acknowledges command by command and the kill
    # lands between the first and the last acknowledgement.
    first = start(_agent_argv(loop_topics, group, "agent-a", epoch_us, "--set", "max_inflight_commands=1"), log)
    try:
        def progressed():
            assert first.poll() is None, log.read_text()[-2000:]
            n = committed_total(kafka, group, loop_topics.commands)
            return n >= 20 and n
        done_before = wait_for(progressed, timeout_s=120, step_s=0.05)
    finally:
        kill9(first)
    at_kill = committed_total(kafka, group, loop_topics.commands)
    assert first.returncode == -9
    assert 0 < at_kill < len(commands), f"the kill must land mid-run (committed {at_kill})"

    t0 = time.monotonic()
    second = start(_agent_argv(loop_topics, group, "agent-b", epoch_us, "--until-idle", "3"), log)
    assert second.wait(240) == 0, log.read_text()[-3000:]
    recovered_s = time.monotonic() - t0
    assert committed_total(kafka, group, loop_topics.commands) == len(commands)

    follow = Follow(kafka, loop_topics.events)
    try:
        figures = _reconcile(follow, commands)
    finally:
        follow.close()
    agents = Counter(d["agent_id"] for d in follow.records("ScanDone"))
    assert agents["agent-a"] >= at_kill and agents["agent-b"] >= len(commands) - at_kill
    assert figures["dones_distinct"] == len(commands)
    lake = _archive_and_count(loop_topics, tmp_path / "lake")
    assert lake["events_distinct"] == figures["events_distinct"] > 0
    assert lake["scans_distinct"] == len(commands)
    figures.update(committed_at_kill=at_kill, first_seen=done_before, agents=dict(agents),
                   recovery_s=round(recovered_s, 1), lake=lake)
    print("FIGURES agent-kill9", json.dumps(figures))

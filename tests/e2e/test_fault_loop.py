"""Three faults in one run of the whole loop: kill -9 of an agent, of the scheduler, of the broker.

The loop is the one ``scanflow run`` starts, process by process: a broker of the test's own (own
ports and state dir, so the session broker other tests share is never killed), a Prism job server
with the live scheduler (``python -m scanflow.loop.scheduler``, policy durations compressed so a
virtual day takes ``DAY_S`` wall seconds, sweeps over the sim world), two sim agents in one group
whose world runs in the same compressed time, and the scheduler's archive branch writing decisions
to a Parquet lake. In the middle of the run, each after the loop has made progress since the last:

1. an agent is killed with SIGKILL and a new one started in its place;
2. the scheduler and its Prism are killed with SIGKILL and started again (same consumer group);
3. the broker is killed with SIGKILL and started again; agents and scheduler are not restarted.

Then the agents get SIGTERM, the scheduler reads the last events and is stopped, and the counts
must reconcile exactly:

- every command an agent acknowledged (offset committed) has its ScanDone on the events topic;
- every event and every scan on the events topic is in the lake (``scanflow lake archive``) once
  after dedupe (distinct ids equal);
- no decision took effect twice: each decision id (one per IP and scan round) has one content in the
  scheduler's decisions, and each ip-state transition of an IP (keyed by the scan time it came
  from) has one value.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import duckdb

from tests.conftest import free_port
from tests.e2e.conftest import (Follow, Topics, committed_total, create_loop_topics, kill9, new_group, scanflow_cmd,
                                stacks, start, stop, wait_for)

US = 1_000_000
DAY_S = 10.0                         # wall seconds per virtual day
SCALE = DAY_S / 86_400.0
N_IPS = 512
WORLD = "10.0.0.0/23"
PROGRESS = 12                        # commands acknowledged between two faults


class Loop:
    """The loop's processes, started and killed the way ``scanflow run`` starts them."""

    def __init__(self, tmp: Path, bootstrap: str, topics: Topics, prism: Path, start_s: float):
        self.tmp, self.bootstrap, self.topics, self.prism, self.start_s = tmp, bootstrap, topics, prism, start_s
        self.group = new_group("loop")
        self.lake = tmp / "lake"
        self.portsets = tmp / "portsets"
        self.agents: dict[str, object] = {}
        self.scheduler = self.prism_proc = None
        self.restarts = 0

    def start_scheduler(self) -> None:
        port = free_port()
        self.prism_proc = start([str(self.prism), f"--job_port={port}", "--serve_http=false", "--log_level=warn",
                                 "--log_kind=text"], self.tmp / "prism.log")
        wait_for(lambda: _listening(port), timeout_s=60)
        ready = self.tmp / f"scheduler-{self.restarts}.ready"
        spec = {"config_file": None, "set": [f"kafka.bootstrap_servers={self.bootstrap}",
                                             "kafka.request_timeout_ms=10000"],
                "topics": dataclasses.asdict(self.topics), "scale": SCALE, "start": self.start_s,
                "sweep_ranges": [WORLD], "sweep_prefix": 26, "group_id": self.group,
                "lake_dir": str(self.lake), "portset_dir": str(self.portsets),
                "job_endpoint": f"127.0.0.1:{port}", "ready_file": str(ready),
                # Catch-up moves a next scan that fell behind the wall clock to the wall clock: the
                # one state change that does not follow from the records, so re-reading them after a
                # restart need not repeat it; with a 30 s command lifetime every fault here would
                # trigger it. It has its own test (tests/integration/test_scheduler_catch_up.py).
                "catch_up": False}
        path = self.tmp / f"scheduler-{self.restarts}.json"
        path.write_text(json.dumps(spec))
        self.scheduler = start([sys.executable, "-m", "scanflow.loop.scheduler", str(path)],
                               self.tmp / "scheduler.log", env=_env())
        self.restarts += 1
        wait_for(lambda: ready.exists() or self._dead(self.scheduler, "scheduler.log"), timeout_s=240)

    def start_agent(self, name: str, prefix: tuple[str, ...] = ()) -> None:
        """Start agent ``name``; ``prefix`` goes before its argv (e.g. ``ip netns exec NS``)."""
        argv = scanflow_cmd("--set", f"kafka.bootstrap_servers={self.bootstrap}",
                            "--set", "kafka.request_timeout_ms=10000", *self.topics.cli_args(),
                            "agent", "--backend", "sim", "--allow", WORLD, "--group", f"{self.group}-agents",
                            "--agent-id", name, "--no-progress", "--rate", "1000000", "--per-target-rate", "1000",
                            "--set", f"portset_dir={self.portsets}", "--set", "commit_interval_s=0.5",
                            "--set", f"sim_n_ips={N_IPS}", "--set", "sim_seed=1",
                            "--set", f"sim_epoch_us={int(self.start_s * US)}",
                            "--set", f"sim_time_scale={1 / SCALE!r}", "--set", "sim_horizon_days=30",
                            # a loop stuck longer than this (above every bounded wait) restarts the agent
                            "--set", "stuck_restart_s=150")
        self.agents[name] = start([*prefix, *argv], self.tmp / f"{name}.log", env=_env())

    def stop_all(self) -> dict[str, int]:
        """SIGTERM the agents, give the scheduler 5 s to read their last events, stop it and its
        Prism; the exit codes by name (``scheduler`` included)."""
        codes = {name: stop(proc) for name, proc in self.agents.items()}
        time.sleep(5)
        if self.scheduler is not None:
            codes["scheduler"] = stop(self.scheduler)
        if self.prism_proc is not None:
            stop(self.prism_proc)
        return codes

    def kill_scheduler(self) -> None:
        kill9(self.scheduler)
        kill9(self.prism_proc)

    def _dead(self, proc, log: str):
        if proc.poll() is not None:
            raise AssertionError(f"{log} exited with {proc.returncode}:\n"
                                 + (self.tmp / log).read_text()[-3000:])
        return False

    def check_alive(self) -> None:
        self._dead(self.scheduler, "scheduler.log")
        for name, proc in self.agents.items():
            self._dead(proc, f"{name}.log")

    def acknowledged(self, kafka) -> int:
        return committed_total(kafka, f"{self.group}-agents", self.topics.commands)

    def wait_progress(self, kafka, since: int, what: str, timeout_s: float = 240) -> int:
        def moved():
            self.check_alive()
            n = self.acknowledged(kafka)
            return n >= since + PROGRESS and n
        try:
            return wait_for(moved, timeout_s=timeout_s, step_s=0.5)
        except AssertionError as exc:
            agents = "".join(f"\n--- {name}: threads and log ---\n{stacks(proc, self.tmp / f'{name}.log', 6000)}"
                             for name, proc in self.agents.items())
            raise AssertionError(f"no progress {what} ({self.acknowledged(kafka)} acknowledged, {since} before); "
                                 f"scheduler log:\n{(self.tmp / 'scheduler.log').read_text()[-3000:]}{agents}") from exc


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _env() -> dict:
    # The children get their broker from --set; an inherited bootstrap variable must not win.
    return {k: v for k, v in os.environ.items() if not k.startswith("SCANFLOW_KAFKA_")}


def test_agent_scheduler_and_broker_kill9_in_one_run_counts_reconcile(second_broker, prism_binary, tmp_path):
    from scanflow.config import KafkaSettings
    from tests.e2e.test_faults import _archive_and_count

    up = second_broker("up")
    assert up.returncode == 0, up.stdout + up.stderr
    kafka = dataclasses.replace(KafkaSettings(), bootstrap_servers=second_broker.bootstrap)
    topics = create_loop_topics(kafka)
    loop = Loop(tmp_path, second_broker.bootstrap, topics, prism_binary, time.time())
    figures: dict = {}
    t0 = time.monotonic()
    try:
        loop.start_scheduler()
        loop.start_agent("agent-a")
        loop.start_agent("agent-b")
        n = loop.wait_progress(kafka, 0, "before the first fault")

        kill9(loop.agents.pop("agent-a"))
        figures["agent_killed_at"] = n
        loop.start_agent("agent-c")
        n = loop.wait_progress(kafka, n, "after the agent's kill -9")

        loop.kill_scheduler()
        figures["scheduler_killed_at"] = n
        loop.start_scheduler()
        n = loop.wait_progress(kafka, n, "after the scheduler's kill -9")

        pid = int((second_broker.state / "kafka.pid").read_text())
        os.kill(pid, 9)
        t_kill = time.monotonic()
        figures["broker_killed_at"] = n
        wait_for(lambda: second_broker("status").returncode != 0, timeout_s=30)
        time.sleep(3)
        restarted = second_broker("up")
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        figures["broker_up_s"] = round(time.monotonic() - t_kill, 1)
        n = loop.wait_progress(kafka, n, "after the broker's kill -9")
        figures["progress_after_broker_kill_s"] = round(time.monotonic() - t_kill, 1)
        loop.check_alive()
    finally:
        codes = loop.stop_all()
    figures["wall_s"] = round(time.monotonic() - t0, 1)
    figures["virtual_days"] = round(figures["wall_s"] / DAY_S, 1)
    assert all(code == 0 for code in codes.values()), codes

    # Every acknowledged command has its ScanDone.
    from connectors.kafka_io import committed_offsets, make_consumer, topic_partitions

    consumer = make_consumer(kafka, group_id=f"{loop.group}-agents")
    committed = committed_offsets(consumer, topic_partitions(consumer, [topics.commands]))
    consumer.close()
    commands = Follow(kafka, topics.commands)
    events = Follow(kafka, topics.events)
    states = Follow(kafka, topics.ip_state)
    try:
        for f in (commands, events, states):
            f.drain()
    finally:
        for f in (commands, events, states):
            f.close()
    from connectors.avro_codec import decode

    acked = [decode(rec.value).record for rec in commands.raw
             if rec.value is not None and rec.offset < (committed.get(_tp(rec)) or 0)]
    dones = events.records("ScanDone")
    done_commands = {d["command_id"] for d in dones}
    missing = [c["command_id"] for c in acked if c["command_id"] not in done_commands]
    assert acked and not missing, f"{len(missing)} acknowledged commands without a ScanDone, e.g. {missing[:3]}"

    # Every event and scan in the lake once after dedupe.
    scan_events = events.records("ScanEvent")
    lake = _archive_and_count(topics, tmp_path / "archive", bootstrap=second_broker.bootstrap)
    assert lake["events_distinct"] == len({e["event_id"] for e in scan_events}) > 0
    assert lake["scans_distinct"] == len({d["scan_id"] for d in dones})

    # No decision took effect twice.
    files = [str(p) for p in (loop.lake / "decisions").rglob("*.parquet")]
    assert files, "the scheduler archived no decisions"
    rows = duckdb.connect().execute(
        "SELECT decision_id, ip, scan_id, status, reason, backoff_step, next_scan_at, command_id "
        "FROM read_parquet(?, hive_partitioning=true)", [files]).fetchall()
    contents: dict[str, set] = defaultdict(set)
    ids_per_round: dict[tuple, set] = defaultdict(set)
    for decision_id, ip, scan_id, *rest in rows:
        contents[decision_id].add(tuple(rest))
        if scan_id is not None:          # None: the watchdog's decision on a scan that never came back
            ids_per_round[(ip, scan_id)].add(decision_id)
    twice = {k: v for k, v in contents.items() if len(v) > 1}
    assert not twice, f"{len(twice)} decisions took effect with different contents, e.g. {list(twice.items())[:2]}"
    assert all(len(v) == 1 for v in ids_per_round.values()), {k: v for k, v in ids_per_round.items() if len(v) > 1}
    # A transition is named by the time it was made (updated_at): an inconclusive round (a scan
    # that timed out, or ran twice after a rebalance) keeps last_scanned_at and moves next_scan_at
    # to a retry, a second transition with the same last_scanned_at. Only the same transition with
    # two values (a restart deciding it again differently) is a fault. Issuing a command (the
    # record's next_scan_at is its updated_at: the lifecycle issues at next_at) and a decision are
    # two kinds of transition that can share an instant (a round that ends when its command was
    # issued: an agent refusing an expired command), so the kind is part of the name.
    transitions: dict[tuple, set] = defaultdict(set)
    for key, d in states.decoded:
        r = d.record
        transitions[(r["ip"], r["updated_at"], r["next_scan_at"] == r["updated_at"])].add(
            (r["status"], r["backoff_step"], r["last_scanned_at"], r["next_scan_at"]))
    split = {k: v for k, v in transitions.items() if len(v) > 1}
    assert not split, f"{len(split)} ip-state transitions with two values, e.g. {list(split.items())[:2]}"

    figures.update(
        acknowledged_commands=len(acked), commands_on_topic=len(commands.records("ScanCommand")),
        scan_dones=len(dones), scans_distinct=len({d["scan_id"] for d in dones}),
        events=len(scan_events), events_distinct=lake["events_distinct"],
        decisions=len(rows), decisions_distinct=len(contents), ip_state_records=len(states.decoded),
        scheduler_starts=loop.restarts,
        agents=dict(Counter(d["agent_id"] for d in dones)))
    print("FIGURES fault-loop", json.dumps(figures))


def _tp(rec):
    from kafka.structs import TopicPartition

    return TopicPartition(rec.topic, rec.partition)

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
from tests.e2e.conftest import (SIM_WORLD, Follow, committed_total, kill9, new_group, scanflow_cmd, stacks,
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


def _agent_argv(topics, group: str, agent_id: str, epoch_us: int, *extra: str, bootstrap: str | None = None,
                kafka_sets: tuple[str, ...] = ()) -> list[str]:
    pre = topics.cli_args()
    if bootstrap:
        pre += ["--set", f"kafka.bootstrap_servers={bootstrap}"]
    for item in kafka_sets:
        pre += ["--set", f"kafka.{item}"]
    return scanflow_cmd(*pre, "agent", "--backend", "sim", "--allow", SIM_WORLD, "--group", group,
                        "--agent-id", agent_id, "--no-progress", "--rate", "100000", "--per-target-rate", "1000",
                        "--set", "sim_n_ips=1024", "--set", "sim_seed=3", "--set", f"sim_epoch_us={epoch_us}",
                        "--set", "commit_interval_s=0.2", *extra)


def _wait_acknowledged(kafka, group: str, topics, agent, log, n: int) -> int:
    """Wait until the agent acknowledged ``n`` commands (it must stay alive); the count."""
    def progressed():
        assert agent.poll() is None, log.read_text()[-2000:]
        done = committed_total(kafka, group, topics.commands)
        return done >= n and done
    return wait_for(progressed, timeout_s=300, step_s=0.05)


def _wait_all_acknowledged(kafka, group: str, topics, commands, agent, log) -> None:
    """Wait until every command is acknowledged; on failure, the agent's threads and log."""
    try:
        wait_for(lambda: agent.poll() is None and committed_total(kafka, group, topics.commands) == len(commands)
                 or (agent.poll() is not None and AssertionError(log.read_text()[-3000:])),
                 timeout_s=240, step_s=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{committed_total(kafka, group, topics.commands)} of {len(commands)} commands "
                             f"acknowledged; the agent's threads and log:\n{stacks(agent, log)}") from exc


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
        done_before = _wait_acknowledged(kafka, group, loop_topics, first, log, 20)
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


# The scheduler as its own process: the live pipeline (pipelines.scheduler.run_live) with the
# policy's ladder compressed to seconds and a group of its own, on a Prism runner it starts itself,
# so that a kill -9 of its process group takes the runner down with it. ``scanflow pipeline run``
# cannot be used as is: its [pipeline] section (group, timeouts) is not part of the settings yet.
SCHEDULER = """
import dataclasses, logging, os, sys
logging.basicConfig(level=logging.WARNING)
logging.getLogger("pipelines").setLevel(logging.INFO)    # where the restarted run resumes from
from scanflow.config import load_settings
from pipelines.scheduler import run_live
from pipelines.settings import PipelineSettings

settings = load_settings(environ={k: v for k, v in os.environ.items() if k.startswith("SCANFLOW_")})
# the adaptive policy's durations (the default policy) compressed like the ladder: 12 h -> 5 s
settings = dataclasses.replace(settings, policy=dataclasses.replace(
    settings.policy, ladder_hours=tuple(s / 3600 for s in (5, 10, 20, 40, 80, 160, 320, 640)),
    cadence_h=5 / 3600, followup_delay_s=300 * 5 / 43200, memory_for_h=640 / 3600))
ps = PipelineSettings(round_timeout_s=60, rewind_s=120, command_ttl_s=3600, watermark_lag_s=1.0,
                      group_id=sys.argv[1])
print("scheduler starting", flush=True)
run_live(settings, ps, runner="prism", on_start=lambda r: print("scheduler running", flush=True))
"""

SSH = b"SSH-2.0-OpenSSH_9.6\r\n"
HIK = b"HTTP/1.1 200 OK\r\nServer: Hikvision-Webs\r\n\r\n"


def _answering(i: int) -> bool:
    return i % 10 != 0                       # one IP in ten answers nothing (not tracked)


def _produce_scans(kafka_options, topic: str, ips: list[int], start_s: float) -> None:
    """One complete per-IP scan of each IP: its responses, then its ScanDone."""
    from scanflow.lifecycle.records import micros

    with AvroProducer(kafka_options, event_time_timestamps=True) as producer:
        for k, i in enumerate(ips):
            ip, t = f"198.18.1.{i + 1}", start_s + k * 0.01
            scan = f"r1-{ip}"
            if _answering(i):
                answer = [(80, HIK), (554, None)] if i % 2 else [(22, SSH)]
                for port, banner in answer:
                    producer.send(topic, "ScanEvent", make_record(
                        "ScanEvent", scan_id=scan, agent_id="agent-1", ip=ip, port=port, transport="TCP",
                        kind="BANNER" if banner else "SYN_ACK", banner=banner, timestamp=micros(t)))
            producer.send(topic, "ScanDone", make_record(
                "ScanDone", scan_id=scan, agent_id="agent-1", target=ip, policy="EFFICIENT",
                started_at=micros(t), ended_at=micros(t + 0.5),
                port_set={"name": None, "version": None, "ports": [22, 80, 554]},
                ports_probed=3, addresses_probed=1, status="COMPLETE"))
        producer.flush()


def test_pipeline_kill9_mid_run_no_decision_twice(kafka, loop_topics, tmp_path):
    """SIGKILL the scheduler (and its Prism runner) after part of the IPs were decided; restart it."""
    script = tmp_path / "scheduler.py"
    script.write_text(SCHEDULER)
    group = new_group("e2e-scheduler")
    env = dict(os.environ, **{f"SCANFLOW_TOPICS_{k.upper()}": getattr(loop_topics, k)
                              for k in ("events", "commands", "ip_state", "dead_letter")})
    log = tmp_path / "scheduler.log"
    batches = [list(range(b * 50, b * 50 + 50)) for b in range(4)]
    answering = {f"198.18.1.{i + 1}" for b in batches for i in b if _answering(i)}
    commands, states = Follow(kafka, loop_topics.commands), Follow(kafka, loop_topics.ip_state)

    def per_ip_ips(f):
        return {c["targets"][0] for c in f.records("ScanCommand") if "/" not in c["targets"][0]}

    try:
        _produce_scans(kafka, loop_topics.events, batches[0], time.time())
        first = start([os.sys.executable, str(script), group], log, env=env)
        try:
            # Part of the IPs decided (their first command out), not all: the kill lands mid-run.
            assert commands.until(lambda f: len(per_ip_ips(f)) >= 20, timeout_s=300), log.read_text()[-3000:]
        finally:
            kill9(first)
        at_kill = len(per_ip_ips(commands))
        assert first.returncode == -9 and 0 < at_kill < len(answering)
        # The rest of the round arrives while no scheduler runs.
        for batch in batches[1:]:
            _produce_scans(kafka, loop_topics.events, batch, time.time())

        t0 = time.monotonic()
        second = start([os.sys.executable, str(script), group], log, env=env)
        try:
            assert commands.until(lambda f: per_ip_ips(f) >= answering, timeout_s=300), (
                f"{len(per_ip_ips(commands) & answering)} of {len(answering)} IPs decided, e.g. missing "
                f"{sorted(answering - per_ip_ips(commands))[:3]}; log:\n" + log.read_text()[-4000:])
            recovered_s = time.monotonic() - t0
            # Room for a wrong second decision to show up (two ladder steps), then stop cleanly.
            time.sleep(10)
            commands.drain()
            states.drain()
        finally:
            stop(second)
    finally:
        commands.close()
        states.close()

    cmds = [c for c in commands.records("ScanCommand") if "/" not in c["targets"][0]]
    ids_by_ip: dict[str, set[str]] = defaultdict(set)
    for c in cmds:
        ids_by_ip[c["targets"][0]].add(c["command_id"])
    assert set(ids_by_ip) == answering                        # every answering IP decided
    assert all(len(ids) == 1 for ids in ids_by_ip.values())   # and decided once: one command id
    assert {c["reason"] for c in cmds} == {"NEW_RESPONDER"}
    resent = len(cmds) - len({c["command_id"] for c in cmds})
    # ip-state: after dedupe, each IP went through one transition (tracked, step 0, next scan =
    # its command's not_before); a replayed round re-writing the same state is absorbed.
    not_before = {c["targets"][0]: c["not_before"] for c in cmds}
    final: dict[str, dict] = {}
    transitions: dict[str, set] = defaultdict(set)
    for _, d in states.decoded:
        rec = d.record
        final[rec["ip"]] = rec
        transitions[rec["ip"]].add((rec["status"], rec["backoff_step"], rec["last_scanned_at"]))
    assert set(final) == answering
    assert all(len(t) == 1 for t in transitions.values()), {ip: t for ip, t in transitions.items() if len(t) > 1}
    assert all(r["backoff_step"] == 0 and r["next_scan_at"] == not_before[ip] for ip, r in final.items())
    print("FIGURES pipeline-kill9", json.dumps({
        "ips": 200, "answering": len(answering), "decided_at_kill": at_kill, "commands": len(cmds),
        "command_ids": len({c["command_id"] for c in cmds}), "resent_commands": resent,
        "ip_state_records": len(states.decoded), "recovery_s": round(recovered_s, 1)}))


@pytest.mark.faults
def test_broker_kill9_mid_run_agent_carries_on_and_counts_reconcile(second_broker, tmp_path):
    """SIGKILL a broker of the test's own while a sim agent works on it; start it again."""
    import dataclasses

    from scanflow.config import KafkaSettings
    from tests.e2e.conftest import create_loop_topics

    up = second_broker("up")
    assert up.returncode == 0, up.stdout + up.stderr
    kafka = dataclasses.replace(KafkaSettings(), bootstrap_servers=second_broker.bootstrap)
    topics = create_loop_topics(kafka)

    epoch_us = int(time.time()) * US
    commands = _commands(600, epoch_us, "bkill")
    _produce(kafka, topics.commands, "ScanCommand", commands)
    group = new_group("e2e-agents")
    log = tmp_path / "agent.log"
    # A 10 s request timeout (default 30 s) bounds how long a request sent to the dead broker's
    # stale connection blocks the agent after the restart; it changes when, not whether, it recovers.
    # A loop stuck longer than 150 s (above every bounded wait with these timeouts) restarts the agent.
    agent = start(_agent_argv(topics, group, "agent-c", epoch_us, "--set", "max_inflight_commands=1",
                              "--set", "stuck_restart_s=150",
                              bootstrap=second_broker.bootstrap, kafka_sets=("request_timeout_ms=10000",)), log)
    try:
        _wait_acknowledged(kafka, group, topics, agent, log, 20)
        pid = int((second_broker.state / "kafka.pid").read_text())
        at_kill = committed_total(kafka, group, topics.commands)
        os.kill(pid, 9)
        t_kill = time.monotonic()
        # The broker is gone; the agent keeps running (it retries) rather than exiting.
        wait_for(lambda: second_broker("status").returncode != 0, timeout_s=30)
        time.sleep(3)
        assert agent.poll() is None, log.read_text()[-3000:]
        t_up = time.monotonic()
        restarted = second_broker("up")
        broker_up_s = time.monotonic() - t_up
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        assert at_kill < len(commands), "the broker died mid-run"
        _wait_all_acknowledged(kafka, group, topics, commands, agent, log)
        recovered_s = time.monotonic() - t_kill
        assert agent.poll() is None, log.read_text()[-3000:]
    finally:
        code = stop(agent)
    assert code == 0, log.read_text()[-3000:]

    follow = Follow(kafka, topics.events)
    try:
        figures = _reconcile(follow, commands)
    finally:
        follow.close()
    lake = _archive_and_count(topics, tmp_path / "lake", bootstrap=second_broker.bootstrap)
    assert lake["events_distinct"] == figures["events_distinct"] > 0
    assert lake["scans_distinct"] == len(commands)
    figures.update(committed_at_kill=at_kill, broker_up_s=round(broker_up_s, 1), recovery_s=round(recovered_s, 1), lake=lake)
    print("FIGURES broker-kill9", json.dumps(figures))


@pytest.mark.faults
def test_agent_whose_loop_is_stuck_starts_again_and_loses_nothing(second_broker, tmp_path):
    """A broker frozen with SIGSTOP (a peer that takes connections and never answers) holds every
    Kafka call of the agent's loop for the request timeout; with ``stuck_restart_s`` below that, the
    agent's watchdog finds its loop stuck, writes its threads' stacks and starts the agent again in
    the same process (same PID). After SIGCONT every command is executed, each once per scan id, and
    the agent is still the one process."""
    import dataclasses
    import signal as sig

    from scanflow.config import KafkaSettings
    from tests.e2e.conftest import create_loop_topics

    up = second_broker("up")
    assert up.returncode == 0, up.stdout + up.stderr
    kafka = dataclasses.replace(KafkaSettings(), bootstrap_servers=second_broker.bootstrap)
    topics = create_loop_topics(kafka)
    epoch_us = int(time.time()) * US
    commands = _commands(300, epoch_us, "stuck")
    _produce(kafka, topics.commands, "ScanCommand", commands)
    group = new_group("e2e-agents")
    log = tmp_path / "agent.log"
    agent = start(_agent_argv(topics, group, "agent-s", epoch_us, "--set", "max_inflight_commands=1",
                              "--set", "stuck_restart_s=6", bootstrap=second_broker.bootstrap,
                              kafka_sets=("request_timeout_ms=30000",)), log)
    pid = int((second_broker.state / "kafka.pid").read_text())
    frozen = False
    try:
        _wait_acknowledged(kafka, group, topics, agent, log, 20)
        os.kill(pid, sig.SIGSTOP)
        frozen = True
        t_freeze = time.monotonic()
        wait_for(lambda: "starting the agent again" in log.read_text(errors="replace"), timeout_s=90, step_s=0.5)
        restarted_after_s = time.monotonic() - t_freeze
        time.sleep(3)
        assert agent.poll() is None, log.read_text()[-3000:]
        os.kill(pid, sig.SIGCONT)
        frozen = False
        _wait_all_acknowledged(kafka, group, topics, commands, agent, log)
        recovered_s = time.monotonic() - t_freeze
    finally:
        if frozen:
            os.kill(pid, sig.SIGCONT)
        code = stop(agent)
    text = log.read_text(errors="replace")
    assert code == 0, text[-3000:]
    # The watchdog wrote where the loop waited before it started the agent again.
    assert "Thread 0x" in text and "Current thread" in text, text[-3000:]
    follow = Follow(kafka, topics.events)
    try:
        figures = _reconcile(follow, commands)
    finally:
        follow.close()
    figures.update(restarts=text.count("starting the agent again"), restarted_after_s=round(restarted_after_s, 1),
                   recovered_s=round(recovered_s, 1))
    print("FIGURES agent-stuck-restart", json.dumps(figures))

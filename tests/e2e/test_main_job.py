"""The main job end to end: ``scanflow run`` on a tiny synthetic world against the session broker.

500 IPs (two /24 sweep blocks), 2 virtual days of 10 wall seconds each, one sim agent: the real
processes (Prism, the scheduler, an agent) run and stop by themselves; the lake, the printed
summary and the report files are checked afterwards. No packet leaves the machine (sim backend).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from connectors.duckdb_catalog import Catalog
from connectors.kafka_io import partition_for
from scanflow.config import REPO_ROOT


def _scanflow(kafka, *args, timeout=300):
    env = {**os.environ, "SCANFLOW_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers}
    return subprocess.run([sys.executable, "-m", "scanflow", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_main_job_runs_the_loop_and_reports(kafka, prism_binary, tmp_path):
    run_dir, lake, report = tmp_path / "run", tmp_path / "lake", tmp_path / "report"
    out = _scanflow(kafka, "run", "--ips", "500", "--days", "3", "--day-seconds", "15", "--agents", "1",
                    "--skip-kafka-up", "--run-dir", str(run_dir), "--lake", str(lake), "--out", str(report))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "scanflow run: done" in out.stdout
    assert "responsive IPs" in out.stdout and "back-off" in out.stdout

    with Catalog(lake) as cat:
        rows = {name: c["rows"] for name, c in cat.counts().items()}
        assert rows["events"] > 0 and rows["scans"] > 0
        assert rows["observations"] > 0 and rows["decisions"] > 0
        reasons = {r["status"] for r in cat.sql("SELECT DISTINCT status FROM decisions").to_pylist()}
        # Everything scanned lies inside the synthetic world (10.0.0.0 + 500 addresses).
        outside = cat.sql("SELECT count(*) AS n FROM events WHERE NOT starts_with(ip, '10.0.0.') "
                          "AND NOT starts_with(ip, '10.0.1.')").to_pylist()[0]["n"]
    assert any(s.startswith("RESPONSIVE") for s in reasons)
    assert outside == 0

    # Commands were emitted: the per-IP commands the agent executed show in the scans table as
    # scans of single addresses, the sweeps as /24 ranges.
    with Catalog(lake) as cat:
        targets = cat.sql("SELECT count(*) FILTER (WHERE contains(target, '/')) AS sweeps, "
                          "count(*) FILTER (WHERE NOT contains(target, '/')) AS per_ip FROM scans").to_pylist()[0]
    assert targets["sweeps"] >= 1 and targets["per_ip"] >= 1
    summary_line = next(line for line in out.stdout.splitlines() if line.strip().startswith("events "))
    commands = int(summary_line.split("commands")[1].split()[0].replace(",", ""))
    assert commands >= targets["per_ip"] > 0     # one single-address ScanDone per per-IP command

    # The adaptive policy ran (the default): the blocks were swept with its light set after the
    # first pass, and new answers were followed up with its follow-up set minutes (compressed: a
    # fraction of a second) after their round, each within the agent's reach before the next sweep.
    assert "adaptive policy" in out.stdout
    with Catalog(lake) as cat:
        sets = {(r["ps"], r["range"]): r["n"] for r in cat.sql(
            "SELECT port_set_name AS ps, contains(target, '/') AS range, count(*) AS n FROM scans_dedup "
            "GROUP BY ALL").to_pylist()}
    assert sets.get(("light", True), 0) >= 1, sets
    assert sets.get(("followup", False), 0) >= 1, sets

    assert (report / "index.html").is_file()
    assert any(p.suffix == ".csv" for p in report.iterdir())
    # Clean stop: every process's log ends without a traceback from the orchestrator's kill path.
    logs = {p.name for p in (run_dir / "logs").iterdir()}
    assert {"prism.log", "scheduler.log", "agent-0.log"} <= logs
    log = (run_dir / "logs" / "scheduler.log").read_text()
    assert "scheduler: CANCELLED" in log, log[-2000:]


def test_main_job_on_two_scheduler_jobs_splits_the_partitions_and_decides_each_round_once(kafka, prism_binary,
                                                                                         tmp_path):
    """``--scheduler-jobs 2``: two jobs on the one Prism, job j owning the events partitions j/2. Each
    job says which partitions it owns; together they own all 12, none twice. Every round is decided
    once (no decision id twice in the lake), and each /24 block gets its first pass once and its light
    sweeps at one job's cadence (each block is swept by the one job owning its key)."""
    import re

    run_dir, lake = tmp_path / "run", tmp_path / "lake"
    out = _scanflow(kafka, "run", "--ips", "500", "--days", "2", "--day-seconds", "15", "--agents", "1",
                    "--scheduler-jobs", "2", "--skip-kafka-up", "--no-report", "--run-dir", str(run_dir),
                    "--lake", str(lake), timeout=420)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "2 scheduler jobs" in out.stdout and "scanflow run: done" in out.stdout

    owned: list[list[int]] = []
    for j in (0, 1):
        log = (run_dir / "logs" / f"scheduler-{j}.log").read_text()
        assert "scheduler: CANCELLED" in log, (j, log[-2000:])
        m = re.search(r"scheduler job of partitions \[([\d, ]+)\] of 12 of ", log)
        assert m, log[-2000:]
        owned.append([int(x) for x in m.group(1).split(",")])
    assert owned == [list(range(0, 12, 2)), list(range(1, 12, 2))]
    assert not (run_dir / "logs" / "scheduler.log").exists()

    with Catalog(lake) as cat:
        dec = cat.sql("SELECT count(*) AS n, count(DISTINCT decision_id) AS ids FROM decisions").to_pylist()[0]
        decided = [r["ip"] for r in cat.sql("SELECT DISTINCT ip FROM decisions").to_pylist()]
        sweeps = {(r["target"], r["ps"]): r["n"] for r in cat.sql(
            "SELECT target, port_set_name AS ps, count(*) AS n FROM scans WHERE contains(target, '/') "
            "GROUP BY ALL").to_pylist()}
    assert dec["n"] > 0 and dec["n"] == dec["ids"], dec
    # both jobs decided: the decided addresses fall in both shares of the events partitions
    shares = {partition_for(ip.encode(), 12) % 2 for ip in decided}
    assert shares == {0, 1}, (len(decided), shares)
    # one first pass per block, and light sweeps at one job's cadence (every 12 virtual hours: at most
    # 5 in 2 days); a block swept by both jobs would show each twice
    blocks = ("10.0.0.0/24", "10.0.1.0/24")
    assert {b: sweeps.get((b, "provisional-standard")) for b in blocks} == dict.fromkeys(blocks, 1), sweeps
    assert all(1 <= sweeps.get((b, "light"), 0) <= 5 for b in blocks), sweeps


@pytest.mark.parametrize("args, fix", [
    (["--backend", "connect"], "--allow"),
    (["--backend", "connect", "--allow", "127.0.0.1/8"], "zero host bits"),
    (["--allow", "127.0.0.1/32"], "--backend connect"),
    (["--ips", "0"], "--ips 20000"),
    (["--days", "-1"], "--days 7"),
    (["--scheduler-jobs", "13"], "--scheduler-jobs 2"),
    (["--scheduler-jobs", "0"], "1..12"),
    (["--set", "policy.moves=true", "run", "--scheduler-jobs", "2"], "--scheduler-jobs 1 or --set policy.moves=false"),
])
def test_bad_input_is_one_line_naming_the_fix(args, fix):
    # a settings override (--set) comes before the command
    args = args if "run" in args else ["run", *args]
    out = subprocess.run([sys.executable, "-m", "scanflow", *args], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scanflow: error:") and fix in lines[0]
    assert out.stdout == ""          # nothing started

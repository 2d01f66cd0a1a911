"""``scanflow run`` leaves none of its per-run topics behind when it fails or is stopped early.

Real ``scanflow run`` processes on the session broker, each made to end early in a cheap way:

- the scheduler cannot start (a knowledge-base file that exists but is not TOML: the CLI accepts
  the path, the scheduler process dies loading it): one ``scanflow: error:`` line naming the
  scheduler's log, exit 1;
- SIGTERM of the orchestrator once its topics exist: the fast stop of an interruption (exit 130);
  its topics are kept (nothing archived half-way, no event lost) and the archive command printed.

Afterwards no process of the run is left, and no topic of a failed run.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from kafka import KafkaAdminClient

from scanflow.config import REPO_ROOT


def _run_argv(run_dir: Path, *pre: str) -> list[str]:
    return [sys.executable, "-m", "scanflow", *pre, "run", "--skip-kafka-up", "--run-dir", str(run_dir),
            "--ips", "256", "--days", "1", "--day-seconds", "5", "--agents", "1", "--no-report"]


def _run_id(output: str) -> str:
    match = re.search(r"^scanflow run (\S+):", output, re.M)
    assert match, output
    return match.group(1)


def _topics_of(kafka, run_id: str) -> list[str]:
    admin = KafkaAdminClient(**kafka.client_options())
    try:
        return sorted(t for t in admin.list_topics() if f".run-{run_id}." in t)
    finally:
        admin.close()


def _topics_left(kafka, run_id: str) -> list[str]:
    """The run's topics once a deletion had time to reach the metadata (the deadline only turns a
    topic that stays into a failure)."""
    deadline = time.monotonic() + 30
    while (left := _topics_of(kafka, run_id)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def _processes_mentioning(*needles: str) -> list[str]:
    """Command lines of live processes that contain one of ``needles`` (children left behind)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(n in cmdline for n in needles):
            found.append(f"{entry.name}: {cmdline}")
    return found


def _prism_port(run_dir: Path) -> str | None:
    log = run_dir / "logs" / "prism.log"
    match = re.search(r"--job_port=(\d+)", log.read_text()) if log.exists() else None
    return f"--job_port={match.group(1)}" if match else None


def test_scheduler_that_cannot_start_fails_the_run_in_one_line_and_deletes_its_topics(kafka, tmp_path):
    bad_kb = tmp_path / "bad-kb.toml"
    bad_kb.write_text("[device\nbroken =\n")
    run_dir = tmp_path / "run"
    out = subprocess.run(_run_argv(run_dir, "--set", f"policy.kb_files={bad_kb}"), cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=240)
    text = out.stdout + out.stderr
    run_id = _run_id(out.stdout)
    # The topics were created before the scheduler was started, and it is the scheduler that failed.
    assert "[5/7] scheduler" in out.stdout, text
    assert out.returncode == 1, text
    errors = [line for line in text.splitlines() if line.startswith("scanflow: error:")]
    assert len(errors) == 1, text
    assert str(run_dir / "logs" / "scheduler.log") in errors[0], errors[0]
    assert "Traceback" not in text.split("scanflow: error:")[0]     # the orchestrator itself did not crash
    assert "could not delete" not in text, text
    assert _topics_left(kafka, run_id) == [], text
    needles = [str(run_dir)] + [p for p in [_prism_port(run_dir)] if p]
    assert _processes_mentioning(*needles) == []
    assert "not valid UTF-8 TOML" in (run_dir / "logs" / "scheduler.log").read_text()


def test_sigterm_of_the_orchestrator_stops_the_run_within_seconds_and_keeps_its_events(kafka, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(_run_argv(run_dir), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    lines: list[str] = []
    try:
        # "[3/7]" is printed once the run's topics exist; the signal lands while Prism or the
        # scheduler is starting.
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("[3/7]"):
                break
        assert any(line.startswith("[3/7]") for line in lines), "".join(lines)
        run_id = _run_id("".join(lines))
        assert len(_topics_of(kafka, run_id)) == 5    # commands, events, ip-state, dead-letter, kb-updates
        time.sleep(1.0)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=180)
        took = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    text = "".join(lines) + rest
    assert proc.returncode == 130, text
    assert "interrupted" in text and "Traceback" not in text, text
    # Stopped at once (every child together, no archive), well inside the 10 s an operator waits;
    # the events stay in the run's topics, and the command that archives them is printed.
    assert took < 30, f"the interrupted run took {took:.1f} s to stop"
    assert "lake archive --lake" in text and f"topics.events=scanflow.run-{run_id}.events" in text, text
    kept = _topics_of(kafka, run_id)
    assert len(kept) == 5, text
    from connectors.kafka_admin import admin_client

    admin = admin_client(kafka)
    try:
        admin.delete_topics(kept)
    finally:
        admin.close()
    needles = [str(run_dir)] + [p for p in [_prism_port(run_dir)] if p]
    assert _processes_mentioning(*needles) == []


def test_a_run_stops_the_broker_it_started_and_leaves_one_it_found_running(second_broker, tmp_path):
    # A broker of the test's own, not running yet; each run ends early and cheaply (the scheduler
    # cannot load its knowledge base) once the broker, the topics and Prism are up.
    bad_kb = tmp_path / "bad-kb.toml"
    bad_kb.write_text("[device\nbroken =\n")
    env = dict(second_broker.env, SCANFLOW_KAFKA_BOOTSTRAP_SERVERS=second_broker.bootstrap)

    def run(name: str, *flags: str) -> str:
        argv = [a for a in _run_argv(tmp_path / name, "--set", f"policy.kb_files={bad_kb}") if a != "--skip-kafka-up"]
        out = subprocess.run([*argv, *flags], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
        text = out.stdout + out.stderr
        assert out.returncode == 1 and "[5/7] scheduler" in out.stdout, text
        return text

    assert second_broker("status").returncode != 0
    text = run("started")
    assert "kafka: stopping the broker this run started" in text, text
    assert second_broker("status").returncode != 0, "the broker the run started is still running"
    # --keep-kafka leaves it running; a run that finds it running leaves it so, and says nothing of it
    text = run("kept", "--keep-kafka")
    assert "kafka: stopping" not in text, text
    assert second_broker("status").returncode == 0
    text = run("found")
    assert "kafka: stopping" not in text, text
    assert second_broker("status").returncode == 0

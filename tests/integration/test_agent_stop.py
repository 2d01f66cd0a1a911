"""Starting and stopping ``scanflow agent`` as a real process against the real broker.

- Topics it needs are absent (the state after ``make setup`` and ``scanflow infra up``): one line
  naming the fix (``scanflow topics create``) and exit code 4, at once, in both modes; after that
  command the same scan runs. (Before, ``--scan`` blocked on the missing topic's metadata for a
  minute per record and ignored signals.)
- A running agent, in the middle of a probe that would last ten minutes, gets SIGTERM or SIGINT:
  it is gone within 10 s, exit code 0, and what it did is on Kafka (ScanDone ABORTED; in the
  consumer group the command's offset committed).

Every probe goes to a listener of the test's own on 127.0.0.1.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import uuid

import pytest

from connectors.avro_codec import make_record
from connectors.kafka_io import AvroProducer, committed_offsets, make_consumer, topic_partitions
from scanflow.config import REPO_ROOT
from tests.integration.netns import read_records

#: The first signal's promise (docs/AGENT.md, "Delivery and stopping").
STOP_WITHIN_S = 10


class SilentService:
    """A TCP listener on 127.0.0.1 that accepts and never says anything: a probe of it lasts as long
    as the agent's read timeout. ``connected`` is set on the first connection."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connected = threading.Event()
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._held.append(conn)
            self.connected.set()

    def close(self) -> None:
        self.sock.close()
        for conn in self._held:
            conn.close()


def _scanflow(*args: str) -> list[str]:
    return [sys.executable, "-m", "scanflow", *args]


def _topic_args(names: dict[str, str]) -> list[str]:
    return [a for key, name in names.items() for a in ("--set", f"topics.{key}={name}")]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_error_line(text: str) -> str:
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("scanflow: error:")]
    assert len(errors) == 1, text
    return errors[0]


def test_absent_topics_are_one_line_naming_the_fix_and_exit_4_then_the_fix_works(kafka):
    tag = uuid.uuid4().hex[:8]
    names = {"events": f"absent-events-{tag}", "commands": f"absent-commands-{tag}",
             "ip_state": f"absent-state-{tag}", "dead_letter": f"absent-dl-{tag}"}
    scan = _scanflow(*_topic_args(names), "agent", "--backend", "connect", "--allow", "127.0.0.1/32",
                     "--no-progress", "--scan", "127.0.0.1", "--ports", str(_closed_port()))
    group = _scanflow(*_topic_args(names), "agent", "--backend", "sim", "--allow", "10.0.0.0/24",
                      "--no-progress", "--group", f"test-{tag}")
    for argv, expected in ((scan, ("events", "dead_letter")), (group, ("commands", "events", "dead_letter", "ip_state"))):
        # The timeout only turns the old hang into a failure.
        out = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        line = _one_error_line(out.stdout + out.stderr)
        assert out.returncode == 4, out.stderr
        assert "scanflow topics create" in line
        for key in expected:
            assert f"topics.{key}" in line and names[key] in line, line

    # The command the line names creates them; the same scan then runs.
    created = subprocess.run(_scanflow(*_topic_args(names), "topics", "create"), cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=120)
    try:
        assert created.returncode == 0, created.stderr
        out = subprocess.run(scan, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "\tCOMPLETE\t" in out.stdout, out.stdout
    finally:
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(**kafka.client_options())
        try:
            admin.delete_topics(list(names.values()))
        finally:
            admin.close()


def test_no_broker_is_one_line_and_exit_4(kafka):
    port = _closed_port()
    out = subprocess.run(_scanflow("--set", f"kafka.bootstrap_servers=127.0.0.1:{port}", "agent", "--backend",
                                   "connect", "--allow", "127.0.0.1/32", "--no-progress", "--scan", "127.0.0.1",
                                   "--ports", "22"),
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    line = _one_error_line(out.stdout + out.stderr)
    assert out.returncode == 4
    assert f"127.0.0.1:{port}" in line and "scanflow infra up" in line


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_scanning_agent_stops_on_the_first_signal_within_10_s(kafka, make_topic, sig):
    """``--scan`` of a service that never answers, with a ten-minute read timeout and the default
    grace: one signal, and the process is gone within 10 s with the scan reported ABORTED."""
    events, dead = make_topic("stop-events", 3), make_topic("stop-dl", 1)
    silent = SilentService()
    proc = subprocess.Popen(_scanflow("--set", f"topics.events={events}", "--set", f"topics.dead_letter={dead}",
                                      "agent", "--backend", "connect", "--allow", "127.0.0.1/32", "--no-progress",
                                      "--set", "read_timeout_s=600", "--scan", "127.0.0.1",
                                      "--ports", str(silent.port)),
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert silent.connected.wait(120), "the agent never probed the service"
        proc.send_signal(sig)
        try:
            out, err = proc.communicate(timeout=STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {STOP_WITHIN_S} s after {sig.name}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        silent.close()
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    assert "127.0.0.1\tABORTED" in out, out
    done = read_records(kafka, events, lambda recs: any(d.schema == "ScanDone" for _, d in recs))
    (record,) = [d.record for _, d in done if d.schema == "ScanDone"]
    assert record["status"] == "ABORTED"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_agent_of_the_group_stops_on_the_first_signal_within_10_s(kafka, make_topic, sig):
    """The consumer-group agent in the middle of a command: gone within 10 s of one signal, the
    command answered ABORTED and its offset committed (a final answer, not re-run)."""
    topics = {"commands": make_topic("stop-cmd", 1), "events": make_topic("stop-events", 3),
              "dead_letter": make_topic("stop-dl", 1), "ip_state": make_topic("stop-state", 1)}
    group = f"test-stop-{uuid.uuid4().hex[:8]}"
    silent = SilentService()
    with AvroProducer(kafka) as producer:
        producer.send(topics["commands"], "ScanCommand", make_record(
            "ScanCommand", command_id=f"stop-{sig.name}", targets=["127.0.0.1"],
            port_set={"name": None, "version": None, "ports": [silent.port]}, reason="INITIAL"))
    proc = subprocess.Popen(_scanflow(*_topic_args(topics), "agent", "--backend", "connect", "--allow",
                                      "127.0.0.1/32", "--group", group, "--no-progress",
                                      "--set", "read_timeout_s=600", "--set", "commit_interval_s=0.2"),
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert silent.connected.wait(120), "the agent never probed the service"
        proc.send_signal(sig)
        try:
            _, err = proc.communicate(timeout=STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {STOP_WITHIN_S} s after {sig.name}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        silent.close()
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    done = read_records(kafka, topics["events"], lambda recs: any(d.schema == "ScanDone" for _, d in recs))
    (record,) = [d.record for _, d in done if d.schema == "ScanDone"]
    assert record["status"] == "ABORTED"
    consumer = make_consumer(kafka, group_id=group)
    try:
        committed = committed_offsets(consumer, topic_partitions(consumer, [topics["commands"]]))
    finally:
        consumer.close()
    assert sum(o or 0 for o in committed.values()) == 1

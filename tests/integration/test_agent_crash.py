"""Crash and stop: the agent as a real process, commands and events on the real broker.

- ``kill -9`` in the middle of a command: nothing was committed, so after a restart the command is
  executed again and every response reaches Kafka (re-sent events keep their ids).
- SIGTERM in the middle of a command: after the grace period the scan is abandoned cleanly, its
  ScanDone says ABORTED, the offset is committed and the process exits 0.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import uuid

from connectors.avro_codec import make_record
from connectors.kafka_io import AvroProducer, committed_offsets, make_consumer, topic_partitions
from scanflow.config import REPO_ROOT
from tests.integration.netns import read_records, start_services

CONTACT = "scanflow-integration-test (purpose and opt-out: https://lab.example/scan)"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Setup:
    def __init__(self, make_topic, tmp_path):
        self.commands = make_topic("agent-cmd", 1)
        self.events = make_topic("agent-events", 12)
        self.dead_letter = make_topic("agent-dl", 1)
        self.ip_state = make_topic("agent-state", 1)
        self.group = f"test-{uuid.uuid4().hex[:8]}"
        self.ssh, self.ftp, self.http, self.silent, self.closed = free_ports(5)
        self.services = start_services(None, "127.0.0.1", tmp_path / "services.log",
                                       [("ssh", self.ssh), ("ftp", self.ftp), ("http", self.http),
                                        ("silent", self.silent)])

    def agent(self, *extra: str) -> subprocess.Popen:
        args = [sys.executable, "-m", "scanflow"]
        for key in ("commands", "events", "dead_letter", "ip_state"):
            args += ["--set", f"topics.{key}={getattr(self, key)}"]
        args += ["agent", "--backend", "connect", "--allow", "127.0.0.1/32", "--contact", CONTACT,
                 "--group", self.group, "--agent-id", "crash-test", "--no-progress",
                 "--set", "passive_wait_s=0.5", "--set", "commit_interval_s=0.2", *extra]
        return subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def send_command(self, kafka, command_id: str) -> None:
        ports = sorted([self.ssh, self.ftp, self.http, self.silent, self.closed])
        with AvroProducer(kafka) as producer:
            producer.send(self.commands, "ScanCommand", make_record(
                "ScanCommand", command_id=command_id, targets=["127.0.0.1"],
                port_set={"name": None, "version": None, "ports": ports}, reason="INITIAL"))

    def committed(self, kafka) -> int:
        consumer = make_consumer(kafka, group_id=self.group)
        try:
            return sum(o or 0 for o in committed_offsets(consumer, topic_partitions(consumer, [self.commands])).values())
        finally:
            consumer.close()

    @staticmethod
    def log_of(agent: subprocess.Popen) -> str:
        """The agent published nothing: stop it and say what it logged."""
        agent.kill()
        _, err = agent.communicate()
        return f"the agent published nothing; its log:\n{err[-4000:]}"

    def close(self) -> None:
        self.services.terminate()
        self.services.wait(10)


def wait_for(predicate, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_a_command_killed_mid_scan_is_executed_again_and_no_response_is_lost(kafka, make_topic, tmp_path):
    s = Setup(make_topic, tmp_path)
    try:
        s.send_command(kafka, "crash-1")
        # The silent port holds the command open for minutes: the kill lands mid-command.
        first = s.agent("--set", "read_timeout_s=300")
        try:
            early = read_records(kafka, s.events, lambda out: any(d.schema == "ScanEvent" for _, d in out),
                                 timeout_s=180)
            assert [d for _, d in early if d.schema == "ScanEvent"], s.log_of(first)
            assert not [d for _, d in early if d.schema == "ScanDone"]
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        assert s.committed(kafka) == 0               # nothing acknowledged as done

        second = s.agent("--set", "read_timeout_s=2", "--until-idle", "3")
        out, err = second.communicate(timeout=120)
        assert second.returncode == 0, err
        assert s.committed(kafka) == 1

        got = read_records(kafka, s.events, lambda out: any(d.schema == "ScanDone" for _, d in out))
        events = [d.record for _, d in got if d.schema == "ScanEvent"]
        (done,) = [d.record for _, d in got if d.schema == "ScanDone"]
        assert done["status"] == "COMPLETE" and done["responses"] == 4
        assert {e["port"] for e in events} == {s.ssh, s.ftp, s.http, s.silent}
        by_id: dict[str, list[dict]] = {}
        for e in events:
            by_id.setdefault(e["event_id"], []).append(e)
        assert len(by_id) == 4                        # re-sent responses carry the same ids
        assert [e for e in events if e["port"] == s.silent][0]["kind"] == "SYN_ACK"
        early_ids = {d.record["event_id"] for _, d in early if d.schema == "ScanEvent"}
        assert all(len(by_id[i]) == 2 for i in early_ids)   # once before the crash, once after
    finally:
        s.close()


def test_sigterm_abandons_a_long_scan_cleanly_and_reports_it_aborted(kafka, make_topic, tmp_path):
    s = Setup(make_topic, tmp_path)
    try:
        s.send_command(kafka, "stop-1")
        agent = s.agent("--set", "read_timeout_s=600", "--set", "stop_grace_s=1")
        try:
            early = read_records(kafka, s.events, lambda out: any(d.schema == "ScanEvent" for _, d in out),
                                 timeout_s=180)
            assert [d for _, d in early if d.schema == "ScanEvent"], s.log_of(agent)
            agent.send_signal(signal.SIGTERM)
            out, err = agent.communicate(timeout=60)
        finally:
            if agent.poll() is None:
                agent.kill()
        assert agent.returncode == 0, err
        got = read_records(kafka, s.events, lambda out: any(d.schema == "ScanDone" for _, d in out))
        (done,) = [d.record for _, d in got if d.schema == "ScanDone"]
        assert done["status"] == "ABORTED" and "abandon" in done["status_detail"]
        assert done["packets_sent"] >= 5               # one SYN per port at least
        assert s.committed(kafka) == 1                 # the abandoned scan is a final, durable answer
    finally:
        s.close()


def test_a_missing_commands_topic_is_a_one_line_error(kafka):
    """The agent looks the commands topic up before joining its group; a missing one names the fix."""
    missing = f"no-such-commands-{uuid.uuid4().hex[:8]}"
    out = subprocess.run([sys.executable, "-m", "scanflow", "--set", f"topics.commands={missing}",
                          "agent", "--backend", "sim", "--allow", "10.0.0.0/24", "--no-progress",
                          "--group", f"test-{uuid.uuid4().hex[:8]}"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if line.startswith("scanflow: error:")]
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "topics.commands" in errors[0] and missing in errors[0] and "scanflow topics create" in errors[0]


def test_finished_commands_are_committed_when_a_rebalance_takes_their_partition(kafka, make_topic, tmp_path):
    """A second agent joins the group: the first loses its partition in the rebalance and commits
    the commands it finished first (its periodic commit is ten minutes away), so neither agent
    runs them again. (On kafka-python 3 the revocation listener runs on the client's IO thread; a
    blocking commit there failed, and every finished command was re-executed by the next owner.)"""
    s = Setup(make_topic, tmp_path)
    agents = []
    try:
        for i in range(3):
            s.send_command(kafka, f"rebalance-{i}")
        first = s.agent("--set", "read_timeout_s=1", "--set", "commit_interval_s=600", "--agent-id", "first")
        agents.append(first)
        done = read_records(kafka, s.events, lambda out: sum(d.schema == "ScanDone" for _, d in out) >= 3,
                            timeout_s=120)
        assert sum(d.schema == "ScanDone" for _, d in done) == 3, s.log_of(first)
        assert s.committed(kafka) == 0               # not yet: the periodic commit is far away
        second = s.agent("--set", "read_timeout_s=1", "--set", "commit_interval_s=600", "--agent-id", "second")
        agents.append(second)
        assert wait_for(lambda: s.committed(kafka) == 3, timeout_s=90)
        time.sleep(5)                                 # whoever owns the partition now has had time to re-run
        got = read_records(kafka, s.events, lambda out: sum(d.schema == "ScanDone" for _, d in out) >= 3)
        assert sorted(d.record["command_id"] for _, d in got if d.schema == "ScanDone") == \
            [f"rebalance-{i}" for i in range(3)]      # each executed once
    finally:
        for agent in agents:
            agent.kill()
            agent.wait(10)
        s.close()


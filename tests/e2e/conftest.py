"""Fixtures and helpers of the end-to-end fault and bad-input tests.

Everything here drives real processes (``python -m scanflow ...``) against a real broker: the
session broker for most tests, a second broker on its own free ports and state directory for the
test that kills a broker (never the session broker, which other tests share).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from scanflow.config import REPO_ROOT

SIM_WORLD = "10.0.0.0/22"          # the sim backend's synthetic addresses: nothing leaves the machine


@dataclasses.dataclass
class Topics:
    """Unique topic names of one test (the loop's four topics)."""

    events: str
    commands: str
    ip_state: str
    dead_letter: str

    def cli_args(self) -> list[str]:
        """``--set topics.<key>=<name>`` for every topic, placed before the subcommand."""
        args: list[str] = []
        for key in ("events", "commands", "ip_state", "dead_letter"):
            args += ["--set", f"topics.{key}={getattr(self, key)}"]
        return args


def create_loop_topics(kafka) -> Topics:
    """The loop's four topics, with plain names, on a broker of a test's own (``second_broker``)."""
    from kafka import KafkaAdminClient

    topics = Topics(events="events", commands="commands", ip_state="ip-state", dead_letter="dead-letter")
    admin = KafkaAdminClient(**kafka.client_options())
    try:
        admin.create_topics(
            {"events": {"num_partitions": 6, "replication_factor": 1},
             "commands": {"num_partitions": 3, "replication_factor": 1},
             "ip-state": {"num_partitions": 3, "replication_factor": 1, "configs": {"cleanup.policy": "compact"}},
             "dead-letter": {"num_partitions": 1, "replication_factor": 1}}, wait_for_metadata=True)
    finally:
        admin.close()
    return topics


@pytest.fixture
def loop_topics(make_topic) -> Topics:
    """Fresh events/commands/ip-state/dead-letter topics on the session broker."""
    return Topics(events=make_topic("e2e-events", partitions=6),
                  commands=make_topic("e2e-commands", partitions=3),
                  ip_state=make_topic("e2e-state", partitions=3, **{"cleanup.policy": "compact"}),
                  dead_letter=make_topic("e2e-dead", partitions=1))


def scanflow_cmd(*args: str) -> list[str]:
    """The argv of ``scanflow`` run from the venv's interpreter."""
    return [sys.executable, "-m", "scanflow", *args]


def start(argv: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """Start a process in its own session (so a kill -9 reaches its children too); output to ``log``."""
    handle = open(log, "ab")
    return subprocess.Popen(argv, cwd=REPO_ROOT, stdout=handle, stderr=subprocess.STDOUT,
                            env=env or dict(os.environ), start_new_session=True)


def kill9(proc: subprocess.Popen) -> None:
    """SIGKILL the process and everything in its session (e.g. the Prism runner it started)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(30)


def stacks(proc: subprocess.Popen, log: Path, tail: int = 12000) -> str:
    """Ask a running scanflow agent for every thread's stack (``kill -USR1``: it writes them to its
    stderr, here ``log``) and return the end of its log: what a stalled agent was waiting on."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGUSR1)
        time.sleep(1.5)
    return log.read_text(errors="replace")[-tail:]


def stop(proc: subprocess.Popen, timeout_s: float = 60) -> int:
    """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code. Whatever it left
    running in its session (e.g. a Prism runner its SIGTERM did not take down) is killed after."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            kill9(proc)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return proc.returncode


class Follow:
    """Reads a topic from the beginning, decoding values; :meth:`until` polls until a condition holds."""

    def __init__(self, kafka, topic: str):
        from connectors.kafka_io import make_consumer, topic_partitions

        self.consumer = make_consumer(kafka)
        tps = topic_partitions(self.consumer, [topic])
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.raw: list = []
        self.decoded: list = []          # (key, Decoded) of the values that decode

    def poll(self) -> None:
        from connectors.avro_codec import CodecError, decode

        for batch in self.consumer.poll(timeout_ms=300).values():
            for rec in batch:
                self.raw.append(rec)
                if rec.value is None:
                    continue
                try:
                    self.decoded.append((rec.key, decode(rec.value)))
                except CodecError:
                    pass

    def until(self, cond, timeout_s: float = 120.0):
        """Poll until ``cond(self)`` holds; the deadline only turns a hang into a failure."""
        deadline = time.monotonic() + timeout_s
        while not cond(self) and time.monotonic() < deadline:
            self.poll()
        return cond(self)

    def drain(self, quiet_s: float = 2.0) -> None:
        """Read until nothing new arrived for ``quiet_s`` seconds."""
        last = time.monotonic()
        while time.monotonic() - last < quiet_s:
            n = len(self.raw)
            self.poll()
            if len(self.raw) != n:
                last = time.monotonic()

    def records(self, schema: str) -> list[dict]:
        return [d.record for _, d in self.decoded if d.schema == schema]

    def close(self) -> None:
        self.consumer.close()


def wait_for(predicate, timeout_s: float = 60.0, step_s: float = 0.2):
    """Wait until ``predicate()`` is truthy; returns its value (a deadline so a hang fails)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step_s)
    raise AssertionError(f"condition not met within {timeout_s} s")


def committed_total(kafka, group: str, topic: str) -> int:
    """Sum of the group's committed offsets on ``topic``."""
    from connectors.kafka_io import committed_offsets, make_consumer, topic_partitions

    consumer = make_consumer(kafka, group_id=group)
    try:
        return sum(o or 0 for o in committed_offsets(consumer, topic_partitions(consumer, [topic])).values())
    finally:
        consumer.close()


def new_group(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"

"""Commands that read Kafka topics check them first: a missing topic is one line naming the fix and
exit code 4 at once (the Beam reader used to fail after 30 s with a traceback)."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from scanflow.config import REPO_ROOT


@pytest.mark.parametrize("argv, names", [
    (["--set", "topics.events={missing}", "lake", "archive", "--lake", "{lake}"], ["topics.events"]),
    (["--set", "topics.dead_letter={missing}", "lake", "archive", "--lake", "{lake}", "--live"], ["topics.dead_letter"]),
    (["replay", "--lake", "{lake}", "--topic", "{missing}", "--port-sets", "{lake}"], ["--topic"]),
    (["--set", "topics.commands={missing}", "pipeline", "run", "--duration", "5"], ["topics.commands"]),
], ids=["archive", "archive-live", "replay-topic", "pipeline-run"])
def test_a_missing_topic_is_one_line_and_exit_4(kafka, tmp_path, argv, names):
    missing = f"absent-{uuid.uuid4().hex[:8]}"
    args = [a.format(missing=missing, lake=tmp_path) for a in argv]
    out = subprocess.run([sys.executable, "-m", "scanflow", *args], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=180)
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("scanflow: error:")]
    assert out.returncode == 4 and len(errors) == 1, out.stderr
    assert missing in errors[0] and "scanflow topics create" in errors[0]
    assert all(name in errors[0] for name in names)
    assert not list(tmp_path.rglob("*.parquet")), "nothing written"


@pytest.mark.parametrize("argv", [["topics", "create"], ["topics", "list"], ["run", "--skip-kafka-up", "--days", "1"]],
                         ids=["create", "list", "run"])
def test_no_broker_is_one_line_and_exit_4(argv):
    """Nothing answers at the bootstrap address (a port of this machine nobody listens on)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = subprocess.run([sys.executable, "-m", "scanflow", "--set", f"kafka.bootstrap_servers=127.0.0.1:{port}",
                          *argv], cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("scanflow: error:")]
    assert out.returncode == 4 and len(errors) == 1, out.stderr
    assert f"127.0.0.1:{port}" in errors[0] and "scanflow infra up" in errors[0]

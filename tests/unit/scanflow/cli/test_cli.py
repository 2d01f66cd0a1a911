"""The CLI shell: help, version, effective config, one-line errors for bad input."""

from __future__ import annotations

import os
import subprocess
import sys

from click.testing import CliRunner

from scanflow import __version__
from scanflow.cli import main


def test_help_lists_the_command_groups():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in ("infra", "topics", "up", "config"):
        assert name in result.output


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_config_prints_effective_values_and_hides_passwords():
    result = CliRunner().invoke(main, ["--set", "kafka.client_id=abc", "--set", "kafka.sasl_password=s3cret",
                                       "config"], env={})
    assert result.exit_code == 0
    assert 'client_id = "abc"' in result.output
    assert "s3cret" not in result.output and 'sasl_password = "***"' in result.output


def test_bad_set_is_a_usage_error_naming_the_key():
    result = CliRunner().invoke(main, ["--set", "kafka.nope=1", "config"])
    assert result.exit_code == 2
    assert "unknown key kafka.nope" in result.output


def test_console_script_prints_one_line_error_without_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[infra]\nkafka_port = 70000\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANFLOW_")}  # env would win
    proc = subprocess.run([sys.executable, "-m", "scanflow", "--config", str(bad), "config"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "infra.kafka_port: 70000 is outside 1024..65535" in proc.stderr


def test_topics_file_errors_are_one_line(tmp_path):
    bad = tmp_path / "topics.toml"
    bad.write_text("[events]\npartitions = 0\n")
    result = CliRunner().invoke(main, ["topics", "create", "--file", str(bad)])
    assert result.exit_code == 2
    assert "partitions must be a whole number >= 1" in result.output


def test_config_shows_the_client_address_derived_from_the_broker_port():
    result = CliRunner().invoke(main, ["--set", "infra.kafka_port=39092", "config"], env={})
    assert result.exit_code == 0
    assert 'bootstrap_servers = "127.0.0.1:39092"' in result.output
    assert "kafka_port = 39092" in result.output


def test_config_says_when_an_explicit_local_address_misses_the_broker_port(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANFLOW_")}
    env.update(SCANFLOW_INFRA_KAFKA_PORT="39092", SCANFLOW_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9092")
    proc = subprocess.run([sys.executable, "-m", "scanflow", "config"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("scanflow: warning:")]
    assert "127.0.0.1:9092" in line and "39092" in line
    assert 'bootstrap_servers = "127.0.0.1:9092"' in proc.stdout      # an explicit value is kept


def test_the_agent_stop_deadline_ends_a_process_that_is_stuck(tmp_path):
    """The first signal's promise holds even when the orderly stop hangs (here: the main thread
    never returns): the watchdog ends the process with exit code 1 and one line saying so."""
    code = ("import time\nfrom scanflow.cli.agent import _arm_stop_deadline\n"
            "_arm_stop_deadline(0.2)\ntime.sleep(600)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    line, *stacks = proc.stderr.splitlines()
    assert line.startswith("scanflow: error: the agent did not stop within") and "run again" in line
    # then where each thread was: the main thread in its sleep
    assert any(s.startswith("Thread 0x") or s.startswith("Current thread") for s in stacks)
    assert any('File "<string>", line 4' in s for s in stacks), proc.stderr

"""Bad input: hostile records on the topics an agent reads, hostile flags and config on the CLI.

- **Topics**: malformed and hostile records (empty, garbage, truncated Avro, a foreign schema
  fingerprint, the wrong record type, a giant value, invalid IPs/ports, commands aimed outside the
  allowlist or at the whole internet) go to the commands and ip-state topics in front of and between
  good commands. A real sim agent process reads them: it must dead-letter or refuse every bad
  command with a reason, execute every good one and exit cleanly; nothing outside the allowlist gets
  a COMPLETE scan.
- **CLI**: every ``scanflow`` subcommand with a bad flag, value or config file answers with exit
  code 2, no traceback and one ``Error:`` / ``scanflow: error:`` line naming the fix.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter

import pytest

from connectors.avro_codec import AvroCodec, default_codec, make_record
from connectors.kafka_io import make_producer
from scanflow.config import REPO_ROOT
from tests.e2e.conftest import SIM_WORLD, Follow, new_group, scanflow_cmd, start

US = 1_000_000
PORTS = {"name": None, "version": None, "ports": [22, 80, 443]}


def _command(cid: str, targets: list[str], epoch_us: int, ports=PORTS) -> dict:
    return make_record("ScanCommand", command_id=cid, targets=targets, issued_at=epoch_us, not_before=epoch_us,
                       expires_at=epoch_us + 86_400 * US, port_set=ports, reason="INITIAL")


def _hostile_commands(epoch_us: int) -> dict[str, tuple[bytes | None, bytes]]:
    """Named hostile values for the commands topic, (key, value)."""
    codec, raw = default_codec(), AvroCodec(validate=False)
    good = codec.encode("ScanCommand", _command("template", ["10.0.0.1"], epoch_us))
    event = codec.encode("ScanEvent", make_record("ScanEvent", scan_id="s", agent_id="a", ip="10.0.0.1", port=80,
                                                  transport="TCP", kind="SYN_ACK", timestamp=epoch_us))
    out = {
        "empty": (b"x", b""),
        "garbage": (b"x", b"\x00\xffnot avro at all" * 4),
        "truncated": (b"10.0.0.1", good[: len(good) // 2]),
        "foreign_fingerprint": (b"10.0.0.1", good[:2] + b"\x01\x02\x03\x04\x05\x06\x07\x08" + good[10:]),
        "wrong_record_type": (b"10.0.0.1", event),
        "giant": (b"10.0.0.1", good[:10] + b"\x7f" * 900_000),
        "trailing_bytes": (b"10.0.0.1", good + b"\x00\x00"),
    }
    for name, targets, ports in (
            ("invalid_ip", ["10.0.0.999"], PORTS),
            ("invalid_port", ["10.0.0.2"], {"name": None, "version": None, "ports": [0, 70000]}),
            ("too_many_ports", ["10.0.0.3"], {"name": None, "version": None, "ports": list(range(1, 200))}),
            ("outside_allowlist", ["8.8.8.8"], PORTS),
            ("loopback_not_allowed", ["127.0.0.1"], PORTS),
            ("whole_internet", ["0.0.0.0/0"], PORTS),
            ("half_outside", ["10.0.0.0/16"], PORTS),
            ("empty_targets", [], PORTS)):
        try:
            value = raw.encode("ScanCommand", _command(f"bad-{name}", targets, epoch_us, ports))
        except Exception:  # noqa: BLE001 - a value even the raw writer refuses still gets a try below
            value = good[:10] + b"\x02"
        out[name] = (b"bad", value)
    return out


def test_hostile_commands_and_ip_state_are_refused_and_good_commands_still_run(kafka, loop_topics, tmp_path):
    """A sim agent survives a fuzzed commands and ip-state topic and still executes the good commands."""
    epoch_us = int(time.time()) * US
    codec = default_codec()
    hostile = _hostile_commands(epoch_us)
    good = [_command(f"good-{i:03d}", [f"10.0.0.{i}"], epoch_us + i * US) for i in range(1, 41)]
    producer = make_producer(kafka, max_request_size=2_000_000)
    # ip-state: garbage, truncated state, a record of the wrong type; the agent reads it for sweeps.
    state = codec.encode("IpState", make_record("IpState", ip="10.0.0.5", status="RESPONSIVE_UNESTIMATED", updated_at=epoch_us))
    for key, value in ((b"10.0.0.5", b"\x00garbage"), (b"10.0.0.6", state[:12]), (b"10.0.0.7", hostile["wrong_record_type"][1]),
                       (b"not-an-ip", state)):
        producer.send(loop_topics.ip_state, key=key, value=value)
    # Hostile records first, between and after the good ones, on every partition (keys vary).
    items = list(hostile.items())
    for n, cmd in enumerate(good):
        if n % 3 == 0 and items:
            name, (key, value) = items.pop()
            producer.send(loop_topics.commands, key=key + str(n).encode(), value=value)
        producer.send(loop_topics.commands, key=cmd["targets"][0].encode(), value=codec.encode("ScanCommand", cmd))
    for name, (key, value) in items:
        producer.send(loop_topics.commands, key=key, value=value)
    producer.flush()
    producer.close()

    log = tmp_path / "agent.log"
    agent = start(scanflow_cmd(*loop_topics.cli_args(), "agent", "--backend", "sim", "--allow", SIM_WORLD,
                               "--group", new_group("e2e-bad"), "--agent-id", "bad-input", "--no-progress",
                               "--rate", "100000", "--per-target-rate", "1000", "--set", "sim_n_ips=1024",
                               "--set", f"sim_epoch_us={epoch_us}", "--set", "commit_interval_s=0.2",
                               "--until-idle", "3"), log)
    assert agent.wait(180) == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()

    events, dead = Follow(kafka, loop_topics.events), Follow(kafka, loop_topics.dead_letter)
    try:
        events.drain()
        dead.drain()
    finally:
        events.close()
        dead.close()
    dones = events.records("ScanDone")
    by_command = {d["command_id"]: d for d in dones}
    # Every good command ran to completion, after and between the hostile ones.
    assert all(by_command[c["command_id"]]["status"] == "COMPLETE" for c in good)
    # Nothing outside the allowlist was scanned: no COMPLETE scan of a target outside it, and every
    # command that names such a target is answered REFUSED with the reason.
    import ipaddress
    world = ipaddress.ip_network(SIM_WORLD)
    for d in dones:
        if d["status"] == "COMPLETE":
            assert ipaddress.ip_network(d["target"]).subnet_of(world), d
    for name in ("outside_allowlist", "loopback_not_allowed", "whole_internet", "half_outside"):
        assert by_command[f"bad-{name}"]["status"] == "REFUSED" and by_command[f"bad-{name}"]["status_detail"], name
    assert not [e for e in events.records("ScanEvent") if not ipaddress.ip_address(e["ip"]) in world]
    # Every hostile command is in the dead-letter topic with its reason (original bytes unchanged).
    reasons = Counter()
    name_of = {value: name for name, (_, value) in hostile.items()}
    reason_of: dict[str, str] = {}
    for rec in dead.raw:
        headers = dict(rec.headers or [])
        assert headers.get("scanflow.error.class"), rec
        assert rec.value in name_of
        reason_of[name_of[rec.value]] = headers["scanflow.error.class"].decode()
        reasons[headers["scanflow.error.class"].decode()] += 1
    assert sum(reasons.values()) == len(hostile) == len(reason_of), (reasons, len(hostile))
    for name in ("outside_allowlist", "loopback_not_allowed", "whole_internet", "half_outside"):
        assert reason_of[name] == "OutsideAllowlist", (name, reason_of[name])
    assert reason_of["foreign_fingerprint"] == "UnknownFingerprint"
    assert reason_of["invalid_ip"] == "InvalidIp" and reason_of["invalid_port"] == "InvalidPort"
    print("FIGURES bad-commands", json.dumps({"hostile": len(hostile), "good": len(good),
                                              "dead_lettered_by_reason": dict(reasons), "reason_of": reason_of,
                                              "refused_dones": sum(d["status"] == "REFUSED" for d in dones)}))


# Every subcommand with a bad flag, a bad value or a bad config: exit code 2 and one line of error.
BAD_CLI = [
    ("agent", "--rate", "abc"), ("agent", "--bogus"), ("agent", "--allow", "999.1.1.1/8", "--scan", "10.0.0.1"),
    ("agent", "--set", "nope=1", "--scan", "10.0.0.1"), ("agent", "--shard", "5", "--shards", "2"),
    ("--set", "kafka.nope=1", "config"), ("--set", "infra.kafka_port=70000", "config"),
    ("--set", "policy.ladder_hours=abc", "config"), ("--config", "MISSING.toml", "config"),
    ("--config", "BAD.toml", "config"), ("--set", "noequals", "config"),
    ("budget", "--bogus"), ("estimate", "--ports", "70000"), ("evaluate", "--weeks", "-1"),
    ("infra", "bogus"), ("kb", "--kb", "MISSING.toml"), ("lake", "archive", "--start", "yesterday"), ("lake", "archive", "--end", "x"),
    ("report", "--out", "OUT", "--start", "yesterday"), ("replay", "--start", "yesterday"),
    ("lake", "compact", "--bogus"), ("lake", "info", "--bogus"), ("lake", "record-sim", "--bogus"),
    ("pipeline", "run", "--duration", "-1"), ("pipeline", "run", "--runner", "spark"),
    ("pipeline", "replay", "--since", "x", "--until", "y"), ("query", "SELEC"), ("replay", "--bogus"),
    ("report", "--bogus"), ("topics", "list", "--bogus"), ("topics", "create", "--bogus"), ("up", "--bogus"),
    ("nosuchcommand",),
]


@pytest.mark.parametrize("argv", BAD_CLI, ids=[" ".join(a) for a in BAD_CLI])
def test_bad_cli_input_gets_one_line_error(argv, tmp_path):
    """No traceback, exit code 2, exactly one error line (the usage lines above it are click's)."""
    (tmp_path / "BAD.toml").write_text("[kafka\nbootstrap_servers = 1\n")
    argv = [str(tmp_path / a) if a.endswith(".toml") else a for a in argv]
    out = subprocess.run(scanflow_cmd(*argv), cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    text = out.stdout + out.stderr
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith(("Error:", "scanflow: error:"))]
    assert out.returncode == 2 and len(errors) == 1, text
    assert len(errors[0]) > len("Error: ") + 10        # says what is wrong, not just "error"

"""Bad input: hostile records on the topics an agent reads, hostile flags and config on the CLI.

- **Topics**: malformed and hostile records (empty, garbage, truncated Avro, a foreign schema
  fingerprint, the wrong record type, a giant value, invalid IPs/ports, commands aimed outside the
  allowlist or at the whole internet) go to the commands and ip-state topics in front of and between
  good commands. A real sim agent process reads them: it must dead-letter or refuse every bad
  command with a reason, execute every good one and exit cleanly; nothing outside the allowlist gets
  a COMPLETE scan.
- **Scheduler**: the same kind of records (plus absurd times, keys that are not addresses or not
  UTF-8, a broken scheduler-state header) on the events topic read by a running live scheduler and
  on the ip-state topic it restores from. It must keep running, dead-letter each hostile record once
  with its reason and origin, command every good IP and decide nothing for anything else.
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
            ("host_bits", ["10.0.0.7/23"], PORTS),             # not a network: host bits set
            ("dash_range", ["10.0.0.1-10.0.0.5"], PORTS),      # the CLI's range form is not the contract's
            ("invalid_ip_beside_a_good_one", ["10.0.0.9", "10.0.0.300"], PORTS),
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
    for name in ("host_bits", "dash_range", "invalid_ip_beside_a_good_one"):
        assert reason_of[name] == "InvalidIp", (name, reason_of[name])
    print("FIGURES bad-commands", json.dumps({"hostile": len(hostile), "good": len(good),
                                              "dead_lettered_by_reason": dict(reasons), "reason_of": reason_of,
                                              "refused_dones": sum(d["status"] == "REFUSED" for d in dones)}))


# Every subcommand with a bad flag, a bad value or a bad config: exit code 2 and one line of error.
BAD_CLI = [
    ("agent", "--rate", "abc"), ("agent", "--bogus"), ("agent", "--allow", "999.1.1.1/8", "--scan", "10.0.0.1"),
    ("agent", "--set", "nope=1", "--scan", "10.0.0.1"), ("agent", "--shard", "5", "--shards", "2"),
    ("agent", "--backend", "connect", "--allow", "198.18.0.0/15", "--scan", "198.18.7.300", "--ports", "22"),
    ("agent", "--backend", "connect", "--allow", "198.18.0.0/15", "--scan", "198.18.7.0/23", "--ports", "22"),
    ("agent", "--backend", "connect", "--allow", "198.18.0.0/15", "--scan", "198.18.7.14-198.18.7.10",
     "--ports", "22"),
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


def test_a_scan_whose_targets_are_all_refused_is_one_line_and_exit_3(kafka, loop_topics):
    """``--scan`` of a first-last range outside the allowlist: each piece is vetted like any target,
    the command is refused whole before any packet (dead letter with the reason), exit code 3."""
    out = subprocess.run(scanflow_cmd(*loop_topics.cli_args(), "agent", "--backend", "connect",
                                      "--allow", "127.0.0.1/32", "--no-progress",
                                      "--scan", "198.18.7.10-198.18.7.14", "--ports", "22"),
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    text = out.stdout + out.stderr
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("scanflow: error:")]
    assert out.returncode == 3 and len(errors) == 1, text
    assert "allowlist" in errors[0] and "--allow" in errors[0]
    assert out.stdout.count("\tREFUSED\t") == 3, out.stdout        # 198.18.7.10/31, .12/31, .14
    dead = Follow(kafka, loop_topics.dead_letter)
    try:
        assert dead.until(lambda f: f.raw, timeout_s=60)
    finally:
        dead.close()
    (rec,) = dead.raw
    assert dict(rec.headers)["scanflow.error.class"] == b"OutsideAllowlist"
    assert default_codec().decode_as("ScanCommand", rec.value)["targets"] == [
        "198.18.7.10/31", "198.18.7.12/31", "198.18.7.14"]


# ------------------------------------------------------------------------------------------------
# Hostile records through a running scheduler (the live Beam pipeline on its own Prism runner).

SCHED_NET = "198.18.0.0/15"
T_FAR_FUTURE = 253_402_300_799 * US          # 9999-12-31T23:59:59Z
SSH_BANNER = b"SSH-2.0-OpenSSH_9.6\r\n"


def _scan_event(ip: str, scan: str, t_us: int, **fields) -> dict:
    record = dict(make_record("ScanEvent", scan_id=scan, agent_id="hostile", ip="198.18.0.1", port=22,
                              transport="TCP", kind="BANNER", banner=SSH_BANNER, timestamp=t_us), ip=ip)
    record.update(fields)
    return record


def _scan_done(target: str, scan: str, t_us: int, **fields) -> dict:
    record = make_record("ScanDone", scan_id=scan, agent_id="hostile", target="198.18.0.1", policy="EFFICIENT",
                         started_at=t_us, ended_at=t_us + 500_000,
                         port_set={"name": None, "version": None, "ports": [22, 80, 554]},
                         ports_probed=3, addresses_probed=1, status="COMPLETE")
    record.update(target=target, **fields)
    return record


def _hostile_events(t_us: int) -> dict[str, tuple[bytes | None, bytes | None, str]]:
    """Named hostile values for the events topic: (key, value, dead-letter reason expected)."""
    codec, raw = default_codec(), AvroCodec(validate=False)
    good = codec.encode("ScanEvent", _scan_event("198.18.3.1", "h-template", t_us))
    command = codec.encode("ScanCommand", _command("h-cmd", ["198.18.3.2"], t_us))
    state = codec.encode("IpState", make_record("IpState", ip="198.18.3.3", status="RESPONSIVE_UNESTIMATED",
                                                updated_at=t_us))

    def ev(name, ip, **f):
        return raw.encode("ScanEvent", _scan_event(ip, f"h-{name}", t_us, event_id=f"h-{name}", **f))

    def done(name, target, **f):
        return raw.encode("ScanDone", _scan_done(target, f"h-{name}", t_us, **f))

    out = {
        "empty": (b"198.18.3.10", b"", "MalformedRecord"),
        "null_value": (b"198.18.3.11", None, "MalformedRecord"),
        "garbage": (b"198.18.3.12", b"\x00\xffnot avro at all" * 4, "MalformedRecord"),
        "truncated": (b"198.18.3.1", good[: len(good) // 2], "MalformedRecord"),
        "trailing_bytes": (b"198.18.3.1", good + b"\x00\x00", "MalformedRecord"),
        "foreign_fingerprint": (b"198.18.3.1", good[:2] + b"\x01\x02\x03\x04\x05\x06\x07\x08" + good[10:],
                                "UnknownFingerprint"),
        "command_on_events": (b"198.18.3.2", command, "UnresolvableSchema"),
        "ip_state_on_events": (b"198.18.3.3", state, "UnresolvableSchema"),
        "giant_banner": (b"198.18.3.4", ev("giant", "198.18.3.4", banner=b"\x7f" * 600_000), "InvalidRecord"),
        "ip_out_of_range": (b"198.18.3.5", ev("ip999", "198.18.3.999"), "InvalidIp"),
        "ip_empty": (b"198.18.3.5", ev("ipempty", ""), "InvalidIp"),
        "ip_hostname": (b"198.18.3.5", ev("iphost", "scanme.example"), "InvalidIp"),
        "done_target_prefix_33": (b"198.18.3.6", done("prefix33", "198.18.3.6/33"), "InvalidIp"),
        "done_target_host_bits": (b"198.18.3.6", done("hostbits", "198.18.3.6/24"), "InvalidIp"),
        "port_zero": (b"198.18.3.7", ev("port0", "198.18.3.7", port=0), "InvalidPort"),
        "port_70000": (b"198.18.3.7", ev("port70000", "198.18.3.7", port=70000), "InvalidPort"),
        "port_negative": (b"198.18.3.7", ev("portneg", "198.18.3.7", port=-1), "InvalidPort"),
        "done_negative_ports_probed": (b"198.18.3.8", done("negprobed", "198.18.3.8", ports_probed=-5),
                                       "InvalidRecord"),
        "event_time_1970": (b"198.18.3.9", ev("t1970", "198.18.3.9", timestamp=1), "InvalidTimestamp"),
        "event_time_9999": (b"198.18.3.9", ev("t9999", "198.18.3.9", timestamp=T_FAR_FUTURE), "InvalidTimestamp"),
        "done_ended_1970": (b"198.18.3.13", done("d1970", "198.18.3.13", started_at=0, ended_at=1_000_000),
                            "InvalidTimestamp"),
        "done_ended_max_long": (b"198.18.3.14", done("dmax", "198.18.3.14", ended_at=(1 << 63) - 1),
                                "InvalidTimestamp"),
        "done_ended_negative": (b"198.18.3.15", done("dneg", "198.18.3.15", started_at=-(10 ** 12),
                                                     ended_at=-(10 ** 12)), "InvalidTimestamp"),
    }
    return out


def _hostile_states(t_us: int) -> dict[str, tuple[bytes, bytes | None, list, str]]:
    """Named hostile records for the ip-state topic: (key, value, headers, dead-letter reason)."""
    from scanflow.lifecycle.state import STATE_HEADER

    codec, raw = default_codec(), AvroCodec(validate=False)

    def state(ip, **f):
        return raw.encode("IpState", {**make_record("IpState", ip="198.18.0.1", status="RESPONSIVE_UNESTIMATED",
                                                    open_ports=[22], updated_at=t_us, next_scan_at=t_us), "ip": ip,
                                      **f})

    event = codec.encode("ScanEvent", _scan_event("198.18.2.4", "s-wrong", t_us))
    return {
        "state_garbage": (b"198.18.2.2", b"\x00garbage", [], "MalformedRecord"),
        "state_truncated": (b"198.18.2.3", state("198.18.2.3")[:12], [], "MalformedRecord"),
        "state_wrong_type": (b"198.18.2.4", event, [], "UnresolvableSchema"),
        "state_invalid_ip": (b"198.18.2.5", state("198.18.2.300"), [], "InvalidIp"),
        "state_key_not_an_ip": (b"not-an-ip", state("198.18.2.6"), [], "InvalidIp"),
        "state_key_not_utf8": (b"\xff\xfe\xfd", state("198.18.2.7"), [], "InvalidIp"),
        "state_key_of_another_ip": (b"198.18.2.8", state("198.18.2.18"), [], "InvalidRecord"),
        "state_next_scan_1970": (b"198.18.2.9", state("198.18.2.9", next_scan_at=1_000_000, updated_at=2_000_000),
                                 [], "InvalidTimestamp"),
        "state_bad_scheduler_header": (b"198.18.2.10", state("198.18.2.10"),
                                       [(STATE_HEADER, b"\x01\x00garbage")], "InvalidState"),
    }


def test_hostile_events_and_ip_state_through_a_running_scheduler(kafka, loop_topics, tmp_path):
    """The live scheduler survives a fuzzed events and ip-state topic: every hostile record is a
    dead letter with its reason, every good per-IP round still gets its command, and nothing is
    decided for an address that is not one."""
    import ipaddress
    import os

    from connectors.kafka_io import HEADER_ERROR_CLASS, HEADER_ERROR_MESSAGE
    from scanflow.lifecycle.state import STATE_HEADER
    from tests.e2e.conftest import kill9, stop
    from tests.e2e.test_faults import SCHEDULER

    codec = default_codec()
    t_us = int(time.time() * US)
    producer = make_producer(kafka, max_request_size=2_000_000)
    sent: dict[tuple[str, int, int], str] = {}      # (topic, partition, offset) -> hostile case
    mine: set[tuple[str, int, int]] = set()          # everything this test produced
    expected: dict[str, str] = {}

    def send(topic, key, value, name=None, headers=None):
        meta = producer.send(topic, key=key, value=value, headers=headers or None).get(timeout=60)
        mine.add((meta.topic, meta.partition, meta.offset))
        if name is not None:
            sent[(meta.topic, meta.partition, meta.offset)] = name

    # ip-state before the start: the hostile records and one good state, restored and due in 3 s.
    restored_ip = "198.18.2.1"
    send(loop_topics.ip_state, restored_ip.encode(), codec.encode("IpState", make_record(
        "IpState", ip=restored_ip, status="RESPONSIVE_UNESTIMATED", open_ports=[22], updated_at=t_us,
        next_scan_at=t_us + 3 * US)))
    for name, (key, value, headers, reason) in _hostile_states(t_us).items():
        send(loop_topics.ip_state, key, value, name, headers)
        expected[name] = reason

    hostile = _hostile_events(t_us)
    items = list(hostile.items())
    good_ips = [f"198.18.1.{i}" for i in range(1, 31)]
    silent_ip, odd_key_ip = "198.18.1.100", "198.18.1.31"

    def produce_round(ip: str, key: bytes | None = None, answer: bool = True):
        now_us = int(time.time() * US)
        scan = f"good-{ip}-{now_us}"
        if answer:
            send(loop_topics.events, key or ip.encode(), codec.encode("ScanEvent", _scan_event(ip, scan, now_us)))
        send(loop_topics.events, key or ip.encode(), codec.encode("ScanDone", _scan_done(ip, scan, now_us)))

    def produce_batch(ips):
        for ip in ips:
            if items:
                name, (key, value, reason) = items.pop()
                send(loop_topics.events, key, value, name)
                expected[name] = reason
            produce_round(ip)

    # Half of the rounds and hostile records before the start, the rest while the scheduler runs.
    produce_batch(good_ips[:15])
    produce_round(silent_ip, answer=False)                  # a ScanDone without events: a silent IP
    script = tmp_path / "scheduler.py"
    script.write_text(SCHEDULER)
    env = dict(os.environ, **{f"SCANFLOW_TOPICS_{k.upper()}": getattr(loop_topics, k)
                              for k in ("events", "commands", "ip_state", "dead_letter")})
    log = tmp_path / "scheduler.log"
    wanted = set(good_ips) | {odd_key_ip, restored_ip}
    commands, states, dead = (Follow(kafka, loop_topics.commands), Follow(kafka, loop_topics.ip_state),
                              Follow(kafka, loop_topics.dead_letter))

    def targets(f):
        return {c["targets"][0] for c in f.records("ScanCommand")}

    sched = start([os.sys.executable, str(script), "e2e-hostile-" + new_group("sched")], log, env=env)
    try:
        assert commands.until(lambda f: f.records("ScanCommand"), timeout_s=300), log.read_text()[-3000:]
        assert sched.poll() is None, log.read_text()[-3000:]
        produce_batch(good_ips[15:])
        produce_round(odd_key_ip, key=b"\xff\xfe\x00 not utf-8")  # a key that is not UTF-8 (unused)
        for name, (key, value, reason) in items:                # whatever hostile records are left
            send(loop_topics.events, key, value, name)
            expected[name] = reason
        producer.flush()
        assert len(expected) == len(hostile) + len(_hostile_states(t_us))
        decided = commands.until(lambda f: targets(f) >= wanted, timeout_s=300)
        assert decided, (f"never commanded: {sorted(wanted - targets(commands))}; log:\n" + log.read_text()[-4000:])
        assert dead.until(lambda f: len({_source(r) for r in f.raw}) >= len(expected), timeout_s=120), (
            f"{len(dead.raw)} dead letters of {len(expected)}; log:\n" + log.read_text()[-3000:])
        # Room for a late wrong decision or a crash to show up, then the scheduler must still run.
        time.sleep(5)
        commands.drain()
        states.drain()
        dead.drain()
        assert sched.poll() is None, log.read_text()[-4000:]
    finally:
        producer.close()
        stop(sched)
        kill9(sched)                      # its Prism runner, in the same process group
        for f in (commands, states, dead):
            f.close()

    # Every good IP has its command: new responders, and the restored IP by its back-off.
    cmds = commands.records("ScanCommand")
    reasons = {c["targets"][0]: c["reason"] for c in cmds}
    assert reasons[restored_ip] == "BACKOFF"
    assert all(reasons[ip] == "NEW_RESPONDER" for ip in good_ips + [odd_key_ip])
    # Nothing is decided for anything else: no command and no ip-state written by the scheduler for a
    # hostile record's address, the silent IP or an address that is not one.
    written = [r for r in states.raw if (r.topic, r.partition, r.offset) not in mine]
    assert set(reasons) == wanted, sorted(set(reasons) - wanted)
    assert written and {r.key.decode(errors="replace") for r in written} <= wanted, sorted(
        {r.key for r in written} - {ip.encode() for ip in wanted})
    assert all(any(h == STATE_HEADER for h, _ in (r.headers or [])) for r in written)
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network(SCHED_NET) for ip in reasons)
    # Every hostile record is a dead letter, once per source record, with its reason and origin.
    by_source: dict[tuple[str, int, int], str] = {}
    for rec in dead.raw:
        headers = dict(rec.headers or [])
        assert headers.get(HEADER_ERROR_CLASS) and headers.get(HEADER_ERROR_MESSAGE), rec
        by_source[_source(rec)] = headers[HEADER_ERROR_CLASS].decode()
    assert set(by_source) == set(sent), (sorted(set(sent) - set(by_source)), sorted(set(by_source) - set(sent)))
    reason_of = {sent[src]: reason for src, reason in by_source.items()}
    assert reason_of == expected, {n: (reason_of.get(n), r) for n, r in expected.items() if reason_of.get(n) != r}
    print("FIGURES hostile-scheduler", json.dumps({
        "good_ips": len(good_ips) + 1, "restored_ips": 1, "silent_ips": 1, "commands": len(cmds),
        "hostile_events": len(hostile), "hostile_ip_states": len(_hostile_states(t_us)),
        "dead_letters": len(dead.raw), "dead_letters_distinct": len(by_source),
        "dead_lettered_by_reason": dict(Counter(by_source.values())),
        "scheduler_log_tracebacks": log.read_text().count("Traceback")}))


def _source(rec) -> tuple[str, int, int] | tuple[str, bytes | None]:
    """The (topic, partition, offset) a dead letter came from, from its headers (a dead letter
    without them, e.g. a record the scheduler could not write, is named by its class and key)."""
    headers = dict(rec.headers or [])
    if "scanflow.source.offset" not in headers:
        return ("no source: " + headers.get("scanflow.error.class", b"?").decode(), rec.key)
    return (headers["scanflow.source.topic"].decode(), int(headers["scanflow.source.partition"]),
            int(headers["scanflow.source.offset"]))

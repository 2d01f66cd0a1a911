"""The whole loop on the real-network testbed finds exactly what is there.

``scanflow run`` with a real backend (connect, masscan) over the testbed's blocks (real daemons and
device greetings behind a router; silent addresses black-holed as on the Internet), on the clock
the run works out for itself, with a packet capture of the scanner's link running throughout. Then,
per (ip, port):

- every port recorded open in the lake has a SYN-ACK on the wire (zero false positives);
- every live port of the policy's port sets is recorded (with a banner where the service speaks);
- nmap, where installed, sees the same open ports on those port sets;
- the run began with the first pass (reason INITIAL, the initial set, every block), no two scans of
  one block overlap, every responsive address got a decision and at least one rescan;
- the packets and bytes the ScanDones report equal what the capture saw the scanner send (ARP
  excluded), within 1 %.

Root only (namespaces): skipped with the reason elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from connectors.duckdb_catalog import Catalog
from pipelines.policy_setup import build_policy
from pipelines.settings import PipelineSettings
from scanflow.config import REPO_ROOT, Settings
from tests.testbed import Testbed, testbed_skip_reason

pytestmark = pytest.mark.root

#: Fast probing of our own testbed: many slots and a short connect timeout (silent addresses hold a
#: slot for the whole timeout), a high politeness cap (the testbed's hosts are ours).
FAST = ["--set", "agent.concurrency=2048", "--set", "agent.connect_timeout_s=1", 
        "--set", "agent.per_target_pps=500", "--set", "agent.read_timeout_s=2", "--set", "agent.passive_wait_s=1",
        "--set", "agent.idle_gap_s=0.2"]


def _policy_ports() -> set[int]:
    """Every port the run's policy may probe: its named sets and every model's set."""
    policy = build_policy(Settings(), PipelineSettings())
    sets = policy.port_sets
    ports = set(sets.standard.ports) | set(sets.silent.ports) | set(sets.unknown.ports)
    for ps in policy.estimator.port_sets():
        ports |= set(ps.ports)
    return ports


def _run(kafka, tb: Testbed, tmp_path, backend: str, days: float, extra: list[str]):
    run_dir, lake = tmp_path / f"run-{backend}", tmp_path / f"lake-{backend}"
    args = [*FAST, *extra, "run", "--backend", backend, "--days", str(days), "--agents", "2",
            "--rate", "20000", "--skip-kafka-up", "--no-report", "--run-dir", str(run_dir), "--lake", str(lake)]
    for block in tb.blocks:
        args += ["--allow", block]
    env = {**os.environ, "SCANFLOW_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers}
    with tb.capture(f"loop-{backend}") as cap:
        out = subprocess.run([sys.executable, "-m", "scanflow", *args], cwd=REPO_ROOT, env=env,
                             capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "clock:" in out.stdout and "warning" not in out.stdout, out.stdout
    return out, cap, lake


def _check(tb: Testbed, cap, lake, backend: str) -> None:
    wire = cap.synacks()
    with Catalog(lake) as cat:
        opened = {(r["ip"], r["port"]) for r in cat.sql("SELECT DISTINCT ip, port FROM events").to_pylist()}
        banners = {(r["ip"], r["port"]) for r in cat.sql(
            "SELECT DISTINCT ip, port FROM events WHERE kind = 'BANNER'").to_pylist()}
        grabbed = {(r["ip"], r["port"]): r for r in cat.sql(
            "SELECT ip, port, banner, protocol, tls_leaf.subject AS subject FROM events "
            "WHERE kind = 'BANNER' ORDER BY timestamp").to_pylist()}
        scans = cat.sql("SELECT target, port_set_name AS ps, started_at, ended_at, status FROM scans_dedup "
                        "ORDER BY target, started_at").to_pylist()
        decisions = cat.sql("SELECT ip, count(*) AS n, count(*) FILTER (WHERE scan_id IS NOT NULL) AS rounds "
                            "FROM decisions_dedup GROUP BY ip").to_pylist()
        per_ip_scans = cat.sql("SELECT target, count(*) AS n FROM scans_dedup WHERE NOT contains(target, '/') "
                               "GROUP BY target").to_pylist()
        reported = cat.sql("SELECT sum(packets_sent) AS p, sum(bytes_sent) AS b FROM scans_dedup").to_pylist()[0]
    # The traffic the lake reports is what left the scanner (ARP excluded), within 1 %.
    wire_packets, wire_bytes = cap.sent()
    assert abs(reported["p"] - wire_packets) <= 0.01 * wire_packets, (reported, wire_packets)
    assert abs(reported["b"] - wire_bytes) <= 0.01 * wire_bytes, (reported, wire_bytes)
    # Zero false positives: every port recorded open answered with a SYN-ACK on the wire.
    assert opened <= wire, f"recorded open without a SYN-ACK on the wire: {sorted(opened - wire)}"
    # Everything there, within the policy's port sets, was found; and nothing else answered.
    expected = {(ip, port) for ip, port in tb.open_pairs if port in _policy_ports()}
    assert expected, "the testbed has no live port in the policy's port sets"
    assert opened == expected, f"missed {sorted(expected - opened)}, extra {sorted(opened - expected)}"
    assert {(ip, port) for ip, port in wire if port in _policy_ports()} == expected
    # Services that speak gave their banner.
    talkers = {(ip, port) for ip, ports in tb.services.items() for port, svc in ports.items()
               if (ip, port) in expected and svc.kind != "dvr"}
    assert talkers <= banners, f"no banner from {sorted(talkers - banners)}"
    # TLS devices: the certificate facts (ScanEvent v2's tls record, and the banner's first lines);
    # Telnet: the text after the negotiation, never the IAC bytes.
    for (ip, port), row in grabbed.items():
        svc = tb.services[ip][port]
        if svc.kind == "https":
            assert row["protocol"] == "tls" and row["banner"].startswith(b"TLS TLSv1."), row
            subject = f"CN={svc.params['cn']}, O={svc.params['org']}"
            assert row["subject"] == subject and f"\nsubject: {subject}\n".encode() in row["banner"], row
        elif svc.kind == "telnet":
            assert row["protocol"] in ("telnet", "unknown") and b"\xff" not in row["banner"], row
            assert row["banner"].rstrip().endswith(b"login:"), row
    # The run began with the first pass over every block, with the initial set.
    first = {}
    for s in scans:
        if "/" in s["target"]:
            first.setdefault(s["target"], s)
    assert set(first) == set(tb.blocks)
    initial = build_policy(Settings(), PipelineSettings()).initial_ports.name
    assert all(s["ps"] == initial for s in first.values())
    # No two scans of one block overlap.
    by_block: dict[str, list] = {}
    for s in scans:
        if "/" in s["target"]:
            by_block.setdefault(s["target"], []).append(s)
    for block, runs in by_block.items():
        for a, b in zip(runs, runs[1:]):
            assert a["ended_at"] <= b["started_at"], f"two scans of {block} overlap: {a} {b}"
    # Every responsive address got a decision and was scanned again on its own.
    live = {ip for ip, _ in expected}
    decided = {d["ip"] for d in decisions if d["rounds"] >= 1}
    assert live <= decided, f"no decision for {sorted(live - decided)}"
    rescanned = {r["target"] for r in per_ip_scans if r["n"] >= 1}
    assert live <= rescanned, f"never rescanned: {sorted(live - rescanned)}"


#: What a person would call the sparse24 hosts that say who they are (host number -> knowledge base
#: entry, and the model where the device states it): a TP-Link WR840N by its realm, a Xiongmai
#: recorder by its uc-httpd server and NETSURVEILLANCE realm, a Dahua IPC-HFW1320S camera by its
#: certificate, a BusyBox device by its Telnet banner. The others (a GoAhead camera with an OEM RTSP
#: server, a mail server, a "Broadband Router") name no vendor.
NAMED = {57: ("tplink-router", "WR840N"), 130: ("xiongmai-dvr", None), 108: ("dahua-ipc", "IPC-HFW1320S"),
         10: ("busybox-telnet", None)}


def _check_names(tb: Testbed, lake) -> None:
    """The loop estimates each testbed device as a person would (its last decision), on a next scan of
    at most a handful of ports beyond the light set."""
    from scanflow.estimate import Estimator
    from scanflow.knowledge import load_knowledge

    with Catalog(lake) as cat:
        last = {r["ip"]: r["device"] for r in cat.sql(
            "SELECT ip, arg_max(device, decided_at) AS device FROM decisions_dedup "
            "WHERE status = 'RESPONSIVE_ESTIMATED' GROUP BY ip").to_pylist()}
        grabbed = cat.sql("SELECT ip, port, arg_max(banner, timestamp) AS banner FROM events WHERE kind = 'BANNER' "
                          "GROUP BY ip, port").to_pylist()
    by_host = {int(ip.rsplit(".", 1)[1]): ip for ip in tb.services}
    named = {by_host[h]: want for h, want in NAMED.items() if h in by_host}
    assert {ip: last.get(ip) for ip in named} == {ip: want[0] for ip, want in named.items()}
    est = Estimator(load_knowledge())
    sizes = []
    for ip, (device, model) in named.items():
        banners = tuple((r["port"], r["banner"]) for r in grabbed if r["ip"] == ip)
        e = est.estimate(frozenset(tb.services[ip]), banners)
        assert e.model == device and (model is None or e.stated_model == model), (ip, e)
        sizes.append(len(e.ports))
    assert sum(sizes) / len(sizes) <= 5, sizes


def test_connect_loop_finds_exactly_what_is_on_the_testbed(kafka, prism_binary, tmp_path):
    reason = testbed_skip_reason()
    if reason:
        pytest.skip(reason)
    with Testbed(tmp_path / "bed", layout="sparse24", seed=13) as tb:
        out, cap, lake = _run(kafka, tb, tmp_path, "connect", days=2.5, extra=[])
        _check(tb, cap, lake, "connect")
        _check_names(tb, lake)
        ports = sorted(_policy_ports())
        nmap = tb.nmap(ports)
        if nmap is not None:
            assert nmap == {(ip, port) for ip, port in tb.open_pairs if port in ports}


def test_masscan_loop_finds_exactly_what_is_on_the_multi_block_testbed(kafka, prism_binary, tmp_path):
    reason = testbed_skip_reason()
    if reason:
        pytest.skip(reason)
    with Testbed(tmp_path / "bed", layout="multi", seed=17) as tb:
        extra = ["--set", f"agent.masscan_interface={tb.scanner_if}",
                 "--set", f"agent.masscan_router_mac={tb.router_mac}",
                 "--set", f"agent.masscan_adapter_ip={tb.scanner_ip}",
                 "--set", "agent.masscan_wait_s=1"]
        out, cap, lake = _run(kafka, tb, tmp_path, "masscan", days=2.5, extra=extra)
        _check(tb, cap, lake, "masscan")

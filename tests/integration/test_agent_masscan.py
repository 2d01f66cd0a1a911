"""The masscan backend in a network namespace finds the same open ports (and banners) as connect.

masscan sends raw frames through the host end of the test's own veth pair only (explicit
``--interface`` and peer MAC, an include file of the one test address, an exclude guard).
"""

from __future__ import annotations

import asyncio
import shutil

import pytest

from connectors.avro_codec import make_record
from probe_agent.core import Agent
from probe_agent.settings import AgentSettings
from scanflow.config import TopicsSettings
from scanflow.portsets import PortSet
from tests.integration.netns import TestNet, read_records, require_root, start_services, start_sshd

CONTACT = "scanflow-integration-test (purpose and opt-out: https://lab.example/scan)"
PORTS = list(range(1, 2049)) + [8080, 8554, 9999]


def run_scan(settings, kafka, topics, command):
    async def scan():
        agent = Agent(settings, kafka, topics)
        tallies = await agent.execute(command)
        agent.publisher.close(30)
        await agent.backend.close()
        return agent, tallies

    return asyncio.run(scan())


@pytest.mark.root
def test_masscan_finds_the_same_open_ports_as_connect(kafka, make_topic, tmp_path):
    require_root()
    if not shutil.which("masscan"):
        pytest.fail("masscan is missing: apt-get install masscan (infra/system-deps.sh)")
    PortSet.named("lab", 1, PORTS).write(tmp_path / "lab-v1.json")
    services = [("http", 80), ("http", 8080), ("rtsp", 554), ("rtsp", 8554), ("ftp", 2021),
                ("telnet", 23), ("silent", 9999), ("ssh", 1022)]
    results = {}
    with TestNet() as net:
        start_services(net, net.ns_ip, tmp_path / "services.log", services)
        start_sshd(net, tmp_path, 22)
        common = dict(allowlist=(f"{net.ns_ip}/32",), contact=CONTACT, rate_pps=1000, per_target_pps=1000,
                      concurrency=256, connect_timeout_s=2, read_timeout_s=3, passive_wait_s=1.0,
                      idle_gap_s=0.3, portset_dir=str(tmp_path), agent_id="test-agent", skip_tracked=False,
                      interface=net.host_if)
        for backend, extra in (("connect", {}),
                               ("masscan", dict(masscan_interface=net.host_if, masscan_router_mac=net.peer_mac,
                                                masscan_adapter_ip=net.host_ip, masscan_retries=1,
                                                masscan_wait_s=2, seed=11))):
            topics = TopicsSettings(events=make_topic(f"agent-{backend}", 12), dead_letter=make_topic("agent-dl", 1))
            command = make_record("ScanCommand", command_id=f"{backend}-1", targets=[net.ns_ip],
                                  port_set={"name": "lab", "version": 1, "ports": []})
            agent, tallies = run_scan(AgentSettings(backend=backend, **common, **extra), kafka, topics, command)
            got = read_records(kafka, topics.events, lambda out: any(d.schema == "ScanDone" for _, d in out))
            results[backend] = ([d.record for _, d in got if d.schema == "ScanEvent"],
                                [d.record for _, d in got if d.schema == "ScanDone"], agent)

    expected = {22, 23, 80, 554, 1022, 2021, 8080, 8554, 9999}
    connect_events, connect_dones, _ = results["connect"]
    masscan_events, masscan_dones, masscan_agent = results["masscan"]
    assert {e["port"] for e in connect_events} == expected
    assert {e["port"] for e in masscan_events} == expected
    # masscan reports every open port as a SYN-ACK with the TTL it saw, then the grabber's banner.
    syn_acks = {e["port"]: e for e in masscan_events if e["kind"] == "SYN_ACK"}
    assert set(syn_acks) == expected and all(e["ttl"] == 64 for e in syn_acks.values())
    banners = lambda events: {e["port"]: e["banner"] for e in events if e["kind"] == "BANNER"}  # noqa: E731
    assert banners(masscan_events) == banners(connect_events)
    assert set(banners(connect_events)) == expected - {9999}
    assert masscan_agent.backend.runs == 1
    (done,) = masscan_dones
    assert done["status"] == "COMPLETE" and done["ports_probed"] == len(PORTS)
    # SYNs (with one retry) and the two RSTs per open port, 40 bytes each; plus the banner grabs.
    assert done["packets_sent"] >= 2 * len(PORTS) + 2 * len(expected)
    assert connect_dones[0]["status"] == "COMPLETE"


@pytest.mark.root
def test_masscan_single_address_scans_on_a_busy_machine_miss_no_answer(kafka, make_topic, tmp_path):
    """Small scans (one address, ~180 ports at 20,000 pps: every SYN out within milliseconds) while
    two other processes keep both cores busy. masscan's own receive side missed answers that were on
    the wire here (21 of 36 open ports in 12 such scans; the first answers of a scan can come before
    it listens); the backend's own SYN-ACK tap, open before masscan starts, must see every one. Each
    scan must report exactly the address's open ports of the set, each once."""
    import subprocess
    import sys

    from tests.testbed.bed import Testbed, testbed_skip_reason

    reason = testbed_skip_reason()
    if reason:
        pytest.skip(reason)
    if not shutil.which("masscan"):
        pytest.fail("masscan is missing: apt-get install masscan (infra/system-deps.sh)")
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        with Testbed(tmp_path / "bed", layout="multi", seed=17) as tb:
            ports = sorted({p for _, p in tb.open_pairs} | set(range(1000, 1170)))
            PortSet.named("lab", 1, ports).write(tmp_path / "lab-v1.json")
            live = sorted({ip for ip, _ in tb.open_pairs})
            settings = AgentSettings(
                backend="masscan", allowlist=tuple(tb.blocks), contact=CONTACT, rate_pps=20000,
                per_target_pps=20000, concurrency=256, connect_timeout_s=1, read_timeout_s=2,
                passive_wait_s=0.5, idle_gap_s=0.2, portset_dir=str(tmp_path), agent_id="test-agent",
                skip_tracked=False, masscan_interface=tb.scanner_if, masscan_router_mac=tb.router_mac,
                masscan_adapter_ip=tb.scanner_ip, masscan_retries=0, masscan_wait_s=1, seed=5)
            topics = TopicsSettings(events=make_topic("agent-small-scans", 12), dead_letter=make_topic("agent-dl", 1))
            commands = [make_record("ScanCommand", command_id=f"r{r}-{ip}", targets=[ip],
                                    port_set={"name": "lab", "version": 1, "ports": []})
                        for r in range(2) for ip in live]

            async def scan_all():
                agent = Agent(settings, kafka, topics)
                for command in commands:
                    await agent.execute(command)
                agent.publisher.close(30)
                await agent.backend.close()
                return agent

            agent = asyncio.run(scan_all())
            open_ports = {ip: {p for i, p in tb.open_pairs if i == ip} for ip in live}
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    got = read_records(kafka, topics.events,
                       lambda out: sum(d.schema == "ScanDone" for _, d in out) >= len(commands))
    scans = {d.record["scan_id"]: d.record["command_id"] for _, d in got if d.schema == "ScanDone"}
    assert sorted(scans.values()) == sorted(c["command_id"] for c in commands)
    assert agent.backend.runs == len(commands)
    reported: dict[str, list[tuple[str, int]]] = {c["command_id"]: [] for c in commands}
    for _, d in got:
        if d.schema == "ScanEvent" and d.record["kind"] == "SYN_ACK":
            reported[scans[d.record["scan_id"]]].append((d.record["ip"], d.record["port"]))
    wrong = {}
    for command in commands:
        ip = command["targets"][0]
        want = sorted((ip, p) for p in open_ports[ip])
        if sorted(reported[command["command_id"]]) != want:   # a miss, an extra or a duplicate
            wrong[command["command_id"]] = {"reported": sorted(reported[command["command_id"]]), "open": want}
    assert wrong == {}, wrong

"""The connect backend against real services, checked against Debian's nmap, events on real Kafka.

- In a network namespace (root): Python services speaking HTTP, RTSP, FTP/SSH/Telnet greetings and
  a silent one, plus Debian's OpenSSH server and vsftpd; all 65,535 ports are scanned. The events on
  Kafka carry exactly the open ports and the banners served, the open-port set equals what
  ``nmap -sT`` finds, and the services saw nothing but one GET / or OPTIONS from the agent.
- On 127.0.0.1 (no root): the same through the ``scanflow agent --scan`` command line, on the
  services' ports and a few closed ones.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import sys

import pytest

from connectors.avro_codec import make_record
from probe_agent.banners import http_request, rtsp_request
from probe_agent.core import Agent
from probe_agent.settings import AgentSettings
from scanflow.config import REPO_ROOT, TopicsSettings
from scanflow.portsets import PortSet
from tests.integration.netns import (
    GREETINGS,
    RTSP_REPLY,
    TestNet,
    http_reply,
    read_records,
    require_root,
    start_services,
    start_sshd,
    start_vsftpd,
)

CONTACT = "scanflow-integration-test (purpose and opt-out: https://lab.example/scan)"


def nmap_open_ports(target: str, ports: str) -> set[int]:
    """Open TCP ports by ``nmap -sT`` (connect scan, no ping, no DNS)."""
    out = subprocess.run(["nmap", "-sT", "-Pn", "-n", "-p", ports, "--open", "-oG", "-", target],
                         capture_output=True, text=True, check=True).stdout
    return {int(p) for p in re.findall(r"(\d+)/open/tcp", out)}


def agent_topics(make_topic) -> TopicsSettings:
    return TopicsSettings(events=make_topic("agent-events", 12), dead_letter=make_topic("agent-dl", 1),
                          commands=make_topic("agent-cmd", 1), ip_state=make_topic("agent-state", 1))


def scan_results(kafka, topic: str, n_done: int = 1):
    got = read_records(kafka, topic, lambda out: sum(1 for _, d in out if d.schema == "ScanDone") >= n_done)
    events = [d.record for _, d in got if d.schema == "ScanEvent"]
    dones = [d.record for _, d in got if d.schema == "ScanDone"]
    return events, dones


def service_log(path) -> list[tuple[str, int, bytes]]:
    rows = []
    for line in path.read_text().splitlines():
        kind, port, data = line.split("\t")
        rows.append((kind, int(port), bytes.fromhex(data)))
    return rows


@pytest.mark.root
def test_every_open_port_and_banner_of_a_test_host_reaches_kafka(kafka, make_topic, tmp_path):
    require_root()
    if not shutil.which("nmap"):
        pytest.fail("nmap is missing: apt-get install nmap (infra/system-deps.sh)")
    topics = agent_topics(make_topic)
    services = [("ftp", 2121), ("ssh", 2222), ("telnet", 23), ("http", 80), ("http", 8080),
                ("rtsp", 554), ("silent", 9999)]
    PortSet.named("all", 1, range(1, 65536)).write(tmp_path / "all-v1.json")
    with TestNet() as net:
        log = tmp_path / "services.log"
        start_services(net, net.ns_ip, log, services)
        start_sshd(net, tmp_path, 22)
        start_vsftpd(net, tmp_path, 21, "scanflow test vsftpd")
        settings = AgentSettings(
            backend="connect", allowlist=(f"{net.ns_ip}/32",), interface=net.host_if, contact=CONTACT,
            rate_pps=8000, per_target_pps=8000, concurrency=512, connect_timeout_s=2, read_timeout_s=3,
            passive_wait_s=1.0, idle_gap_s=0.3, portset_dir=str(tmp_path), agent_id="test-agent",
            skip_tracked=False)
        command = make_record("ScanCommand", command_id="services-1", targets=[net.ns_ip],
                              port_set={"name": "all", "version": 1, "ports": []}, reason="INITIAL")

        async def scan():
            agent = Agent(settings, kafka, topics)
            await agent.execute(command)
            agent.publisher.close(30)

        asyncio.run(scan())
        nmap_ports = nmap_open_ports(net.ns_ip, "1-65535")
        events, dones = scan_results(kafka, topics.events)

    served = {21, 22, 23, 80, 554, 2121, 2222, 8080, 9999}
    by_port = {e["port"]: e for e in events}
    assert len(events) == len(by_port) == len(served)            # one event per open port
    assert set(by_port) == served
    assert nmap_ports == served                                   # what Debian's nmap finds
    assert all(e["ip"] == net.ns_ip and e["agent_id"] == "test-agent" for e in events)

    assert by_port[21]["banner"] == b"220 scanflow test vsftpd\r\n"
    assert re.fullmatch(rb"SSH-2\.0-OpenSSH_\S+( \S+)?\r\n", by_port[22]["banner"])
    # Telnet: the text after the option negotiation, not the negotiation bytes.
    assert by_port[23]["banner"] == b"\r\nscanflow-test telnet\r\nlogin: " and by_port[23]["banner_protocol"] == "telnet"
    assert {p: e["protocol"] for p, e in by_port.items()} == {
        21: "ftp", 22: "ssh", 23: "telnet", 80: "http", 554: "rtsp", 2121: "unknown", 2222: "ssh", 8080: "http",
        9999: "unknown"}
    assert by_port[2121]["banner"] == GREETINGS["ftp"] and by_port[2121]["banner_protocol"] == "ftp"
    assert by_port[2222]["banner"] == GREETINGS["ssh"] and by_port[2222]["banner_protocol"] == "ssh"
    for port in (80, 8080):
        assert by_port[port]["banner"] == http_reply(CONTACT) and by_port[port]["banner_protocol"] == "http"
    assert by_port[554]["banner"] == RTSP_REPLY and by_port[554]["banner_protocol"] == "rtsp"
    assert by_port[9999]["kind"] == "SYN_ACK" and by_port[9999]["banner"] is None
    assert all(e["kind"] == "BANNER" for p, e in by_port.items() if p != 9999)

    # What the services were sent: greeting services nothing at all, the others one request each.
    seen = service_log(log)
    assert sorted((k, p) for k, p, _ in seen) == sorted(services)
    for kind, port, data in seen:
        if kind == "telnet":  # negotiation and login prompt came at once: not even a refusal after it
            assert data == b"", (kind, port, data)
        elif kind in GREETINGS:
            assert data == b"", (kind, port, data)
        elif kind == "rtsp":
            assert data == rtsp_request(net.ns_ip, port, CONTACT)
        else:  # http, and the silent port asked once after its passive wait
            assert data == http_request(net.ns_ip, port, CONTACT)

    (done,) = dones
    assert done["status"] == "COMPLETE" and done["target"] == net.ns_ip
    assert (done["ports_probed"], done["addresses_probed"], done["responses"]) == (65535, 1, 9)
    assert done["packets_sent"] >= 65535 and done["bytes_sent"] >= 60 * 65535
    assert done["port_set"] == {"name": "all", "version": 1, "ports": []}


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_scanflow_agent_scan_publishes_a_local_service_to_kafka(kafka, make_topic, tmp_path):
    topics = agent_topics(make_topic)
    http, ftp, ssh, silent, closed1, closed2 = _free_ports(6)
    log = tmp_path / "services.log"
    proc = start_services(None, "127.0.0.1", log, [("http", http), ("ftp", ftp), ("ssh", ssh),
                                                   ("silent", silent)])
    try:
        ports = ",".join(map(str, sorted([http, ftp, ssh, silent, closed1, closed2])))
        result = subprocess.run(
            [sys.executable, "-m", "scanflow", "--set", f"topics.events={topics.events}",
             "--set", f"topics.dead_letter={topics.dead_letter}", "agent", "--backend", "connect",
             "--allow", "127.0.0.1/32", "--contact", CONTACT, "--scan", "127.0.0.1", "--ports", ports,
             "--set", "passive_wait_s=1", "--set", "read_timeout_s=2", "--no-progress"],
            capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
        assert result.returncode == 0, result.stderr
        nmap_ports = nmap_open_ports("127.0.0.1", ports) if shutil.which("nmap") else None
    finally:
        proc.terminate()
        proc.wait(10)
    events, dones = scan_results(kafka, topics.events)
    by_port = {e["port"]: e for e in events}
    assert set(by_port) == {http, ftp, ssh, silent}
    if nmap_ports is not None:
        assert nmap_ports == set(by_port)
    assert by_port[ftp]["banner"] == GREETINGS["ftp"] and by_port[ssh]["banner"] == GREETINGS["ssh"]
    assert by_port[http]["banner"] == http_reply(CONTACT)
    assert by_port[silent]["kind"] == "SYN_ACK"
    assert dones[0]["status"] == "COMPLETE" and dones[0]["responses"] == 4 and dones[0]["ports_probed"] == 6
    # The command line prints what it found, one line per response and one per target.
    assert f"127.0.0.1:{ssh}\tBANNER\tssh" in result.stdout and "127.0.0.1\tCOMPLETE" in result.stdout

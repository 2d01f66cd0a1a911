"""The grabbers on the testbed: a Dahua camera's HTTPS with its self-signed certificate, a router's
expired one, and a telnetd that negotiates before its BusyBox prompt, scanned by the real agent
(connect backend) through the router, events read back from a real broker (ScanEvent v2).

Checked: the TLS events carry the certificate facts (the ``tls`` record and the agreed banner text),
the Telnet banner is the text after negotiation, each device got at most one request per connection
and nothing after the login prompt. Root only (namespaces): skipped with the reason elsewhere."""

from __future__ import annotations

import time

import pytest

from probe_agent.banners import http_request
from scanflow.config import TopicsSettings
from tests.testbed import Testbed, testbed_skip_reason
from tests.testbed.scan import CONTACT, run_scans

pytestmark = pytest.mark.root


def devices_log(tb: Testbed) -> list[tuple[str, str, int, bytes]]:
    rows = []
    for line in tb.devices_log.read_text().splitlines():
        kind, ip, port, data = line.split("\t")
        rows.append((kind, ip, int(port), bytes.fromhex(data)))
    return rows


def test_tls_devices_give_certificate_facts_and_the_telnetd_its_prompt(kafka, make_topic, tmp_path):
    reason = testbed_skip_reason()
    if reason:
        pytest.skip(reason)
    topics = TopicsSettings(events=make_topic("tb-grab-events", 3), dead_letter=make_topic("tb-grab-dl", 1))
    with Testbed(tmp_path / "bed", layout="tls", seed=5) as tb:
        ports = sorted(set(tb.live_ports) | {22, 993})
        [result] = run_scans(tb, kafka, topics, [{"backend": "connect", "ports": ports, "seed": 3,
                                                  "over": {"read_timeout_s": 3, "passive_wait_s": 1}}],
                             tmp_path)
        log = devices_log(tb)
        synacks = result.cap.synacks()
    assert result.open == synacks == tb.open_pairs
    by = {(e["ip"], e["port"]): e for e in result.events}
    camera, router = (ip for ip, ports_ in sorted(tb.services.items(), key=lambda kv: 443 not in kv[1]))

    cam = by[(camera, 443)]
    assert (cam["kind"], cam["protocol"], cam["status"], cam["banner_protocol"]) == ("BANNER", "tls", "SUCCESS", "tls")
    assert cam["banner"].decode().startswith(
        "TLS TLSv1.2 ECDHE-RSA-AES128-GCM-SHA256\n"
        "subject: CN=IPC-HFW1320S, O=Dahua\n"
        "issuer: CN=IPC-HFW1320S, O=Dahua\n"
        "san: DNS:ipc.local, IP:192.168.1.108\n"
        "\n"
        "HTTP/1.1 200 OK\r\nServer: Dahua Rpc Server\r\n")
    leaf = cam["tls"]["leaf"]
    assert (leaf["subject"], leaf["sans"], leaf["key_type"], leaf["key_bits"]) == (
        "CN=IPC-HFW1320S, O=Dahua", ["DNS:ipc.local", "IP:192.168.1.108"], "rsa", 2048)
    assert len(leaf["sha256"]) == 64 and leaf["self_issued"]

    rtr = by[(router, 8443)]
    assert rtr["status"] == "SUCCESS" and rtr["tls"]["version"] == "TLSv1.3"
    assert rtr["tls"]["leaf"]["not_after"] < time.time_ns() // 1000          # expired, recorded anyway
    assert "\nsan:" not in rtr["banner"].decode(errors="replace")
    assert rtr["banner"].startswith(b"TLS TLSv1.3 ") and b"subject: CN=TL-WR940N, O=TP-LINK\n" in rtr["banner"]

    tel = by[(camera, 23)]
    assert (tel["protocol"], tel["banner_protocol"], tel["status"]) == ("telnet", "telnet", "SUCCESS")
    assert tel["banner"] == (b"\r\nBusyBox v1.19.4 (2014-03-12 14:22:59 CST) built-in shell (ash)\r\n\r\n"
                             b"(none) login: ")
    assert by[(router, 80)]["protocol"] == "http" and by[(router, 80)]["tls"] is None

    # What the devices were sent: one GET per HTTPS connection, refusals only to the telnetd, and
    # nothing after its login prompt.
    https = [(ip, port, data) for kind, ip, port, data in log if kind == "https"]
    assert sorted((ip, port) for ip, port, _ in https) == sorted([(camera, 443), (router, 8443)])
    for ip, port, data in https:
        assert data == http_request(ip, port, CONTACT, 443) and data.count(b"GET ") == 1
    [before] = [data for kind, ip, port, data in log if kind == "telnet"]
    [after] = [data for kind, ip, port, data in log if kind == "telnet-after-prompt"]
    assert before == bytes([255, 254, 1, 255, 254, 3, 255, 252, 24, 255, 252, 31])   # DONT x2, WONT x2
    assert after == b""


def test_tls_cost_layout_every_host_answers_tls_on_443_and_http_on_80(kafka, make_topic, tmp_path):
    """The testbed of ``bench/bench_tls_testbed.py``: the same device over TLS on 443 and in clear on
    80 on each live host; one scan of each port (plus a closed one) finds every host, each grab a
    success of its grabber, so the bench compares like with like."""
    from tests.testbed.bed import tls_cost_layout

    reason = testbed_skip_reason()
    if reason:
        pytest.skip(reason)
    with pytest.raises(ValueError, match="1-254"):
        tls_cost_layout(255)
    topics = TopicsSettings(events=make_topic("tb-tlscost-events", 3), dead_letter=make_topic("tb-tlscost-dl", 1))
    with Testbed(tmp_path / "bed", layout="tls-cost-6", spec=tls_cost_layout(6)) as tb:
        assert len(tb.truth) == 6 and all(ports == {443: "tls", 80: "http"} for ports in tb.truth.values())
        tls, plain = run_scans(tb, kafka, topics, [{"backend": "connect", "ports": [443, 4000], "seed": 1},
                                                   {"backend": "connect", "ports": [80, 4000], "seed": 2}],
                               tmp_path)
    assert tls.open == {(ip, 443) for ip in tb.truth} and plain.open == {(ip, 80) for ip in tb.truth}
    assert {(e["protocol"], e["status"]) for e in tls.events} == {("tls", "SUCCESS")}
    assert {(e["protocol"], e["status"]) for e in plain.events} == {("http", "SUCCESS")}
    assert all(b"subject: CN=IPC-HFW1320S, O=Dahua" in e["banner"] for e in tls.events)
    assert all(b'realm="IPC-HFW1320S"' in e["banner"] for e in plain.events)

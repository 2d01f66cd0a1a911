"""The inventory's definitions on a small hand-made lake (real Parquet, real DuckDB): the current
picture, the change events (new, changed, gone, moved), the filters, and exposure."""

from __future__ import annotations

import pytest

from connectors.exposure import exposure
from connectors.inventory import Inventory, certificate
from connectors.parquet_lake import write_table
from scanflow.knowledge import load_knowledge

T0 = 1_796_000_000.0
H = 3600.0


def _us(t: float) -> int:
    return int(t * 1e6)


def _round(ip: str, t: float, ports: dict[int, bytes | None], device: str | None, fingerprint: str) -> dict:
    return {"ip": ip, "scan_id": f"s-{ip}-{int(t)}", "agent_id": "a", "command_id": None, "policy": "EFFICIENT",
            "started_at": _us(t), "ended_at": _us(t), "port_set_name": "p", "port_set_version": 1,
            "port_set_ports": sorted(ports), "ports_probed": len(ports),
            "responses": [{"port": p, "transport": "TCP", "banner": b, "banner_protocol": None, "ttl": None,
                           "window": None} for p, b in sorted(ports.items())],
            "status": "COMPLETE", "fingerprint": fingerprint if ports else None, "device": device}


def _decision(ip: str, t: float, previous: str, status: str, step: int, next_in: float | None) -> dict:
    return {"decision_id": f"d-{ip}-{int(t)}", "ip": ip, "policy": "EFFICIENT", "decided_at": _us(t), "scan_id": None,
            "previous_status": previous, "status": status, "changed": False, "device": None, "backoff_step": step,
            "reason": "BACKOFF", "next_scan_at": None if next_in is None else _us(t + next_in), "port_set": None,
            "command_id": None}


@pytest.fixture(scope="module")
def kb():
    return load_knowledge()


@pytest.fixture(scope="module")
def lake(tmp_path_factory, kb):
    camera = next(d for d in kb.devices if d.id == "hikvision-ipc")
    mirai = next(m for m in kb.malware if m.id == "mirai")
    assert mirai.attack_on(camera) is not None
    root = tmp_path_factory.mktemp("inv") / "lake"
    telnet = sorted(mirai.attack_on(camera)[0])[0]
    rounds = [
        # a camera that answers three times; a light round (one port, no estimate) is not a change
        _round("10.0.0.1", T0, {80: b"HTTP/1.1 200 OK\r\nServer: Hikvision-Webs", telnet: None}, "hikvision-ipc", "fa"),
        _round("10.0.0.1", T0 + 12 * H, {80: b"HTTP/1.1 200 OK"}, None, "fa-light"),
        _round("10.0.0.1", T0 + 24 * H, {80: b"HTTP/1.1 200 OK\r\nServer: Hikvision-Webs", telnet: None,
                                         443: b"TLSv1.2 cert CN=cam.example serial=01"}, "hikvision-ipc", "fa"),
        # a device whose estimate changes
        _round("10.0.0.2", T0, {80: b"x"}, "hikvision-ipc", "fb"),
        _round("10.0.0.2", T0 + 24 * H, {80: b"y", 9100: None}, "hp-printer", "fb2"),
        # a device that goes silent, and its fingerprint appears at another address afterwards
        _round("10.0.1.5", T0, {80: b"z"}, "hikvision-ipc", "fm"),
        _round("10.0.1.5", T0 + 12 * H, {}, None, ""),
        _round("10.0.2.9", T0 + 36 * H, {80: b"z"}, "hikvision-ipc", "fm"),
    ]
    write_table(root, "observations", rounds)
    write_table(root, "decisions", [
        _decision("10.0.0.1", T0 + 24 * H, "RESPONSIVE_ESTIMATED", "RESPONSIVE_ESTIMATED", 2, 24 * H),
        _decision("10.0.0.2", T0 + 24 * H, "RESPONSIVE_ESTIMATED", "RESPONSIVE_ESTIMATED", 1, 12 * H),
        _decision("10.0.1.5", T0 + 12 * H, "RESPONSIVE_ESTIMATED", "NON_RESPONSIVE", 0, None),
        _decision("10.0.2.9", T0 + 36 * H, "UNKNOWN", "RESPONSIVE_ESTIMATED", 0, 12 * H)])
    return root


def test_the_picture_of_each_address(lake, kb):
    with Inventory(lake, kb) as inv:
        hosts = {h.ip: h for h in inv.all_hosts()}
    assert list(hosts) == ["10.0.0.1", "10.0.0.2", "10.0.1.5", "10.0.2.9"]
    cam = hosts["10.0.0.1"]
    assert cam.state == "up" and cam.device == "hikvision-ipc" and cam.category == "camera"
    camera = kb.device("hikvision-ipc")
    assert cam.open_ports == sorted({80, 443} | {min(next(m for m in kb.malware if m.id == "mirai").attack_on(camera)[0])})
    assert cam.certificates == {443: b"CN=cam.example serial=01"}
    assert cam.first_seen == pytest.approx(T0) and cam.last_seen == pytest.approx(T0 + 24 * H)
    assert cam.last_change == pytest.approx(T0)              # the light round changed nothing
    assert cam.backoff_step == 2 and cam.next_scan == pytest.approx(T0 + 48 * H)
    assert "mirai" in cam.threats
    assert hosts["10.0.1.5"].state == "gone" and hosts["10.0.1.5"].next_scan is None
    assert hosts["10.0.0.2"].device == "hp-printer" and hosts["10.0.0.2"].last_change == pytest.approx(T0 + 24 * H)


def test_changes_are_new_changed_gone_and_moved(lake, kb):
    with Inventory(lake, kb) as inv:
        events = [(c.kind, c.ip, c.previous, c.other) for c in inv.changes()]
        recent = inv.changes(since=T0 + 30 * H)
    assert ("changed", "10.0.0.2", "hikvision-ipc", None) in events
    assert not any(k == "changed" and ip == "10.0.0.1" for k, ip, _, _ in events)
    assert ("gone", "10.0.1.5", "RESPONSIVE_ESTIMATED", None) in events
    assert ("moved", "10.0.2.9", None, "10.0.1.5") in events
    assert sorted(ip for k, ip, _, _ in events if k == "new") == ["10.0.0.1", "10.0.0.2", "10.0.1.5", "10.0.2.9"]
    assert {(c.kind, c.ip) for c in recent} == {("new", "10.0.2.9"), ("moved", "10.0.2.9")}


def test_filters(lake, kb):
    with Inventory(lake, kb) as inv:
        assert [h.ip for h in inv.hosts(category="camera", state="up")] == ["10.0.0.1", "10.0.2.9"]
        assert [h.ip for h in inv.hosts(malware="Mirai")] == ["10.0.0.1"]
        assert [h.ip for h in inv.hosts(prefix="10.0.0.0/24", port=9100)] == ["10.0.0.2"]
        assert [h.ip for h in inv.hosts(search="cam.example")] == ["10.0.0.1"]
        assert [h.ip for h in inv.hosts(since=T0 + 20 * H)] == ["10.0.0.2", "10.0.2.9"]
        assert inv.parse_since("1d") == pytest.approx(T0 + 36 * H - 24 * H)


def test_exposure_counts_up_devices_of_infected_models_with_a_port_open(lake, kb):
    with Inventory(lake, kb) as inv:
        rep = exposure(inv)
    mirai = next(e for e in rep.malware if e.id == "mirai")
    assert mirai.devices == 1 and mirai.ips == ["10.0.0.1"] and mirai.prefixes == [("10.0.0.0/24", 1)]
    assert mirai.since == pytest.approx(T0) and mirai.total == 2          # two cameras up
    model = next(e for e in rep.models if e.id == "hikvision-ipc")
    families = kb.malware_for(kb.device("hikvision-ipc"))
    assert model.models == sorted(m.id for m in families)
    ports = set().union(*(m.attack_on(kb.device("hikvision-ipc"))[0] for m in families))
    # 10.0.0.1 has mirai's port open; 10.0.2.9 only 80, exposed if a family attacks this camera on 80
    assert (model.total, model.devices) == (2, 1 + (80 in ports))


def test_certificate_lines():
    assert certificate(b"TLSv1.3 cert CN=x serial=1") == b"CN=x serial=1"
    assert certificate(b"HTTP/1.1 200 OK") is None and certificate(None) is None

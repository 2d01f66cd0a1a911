"""Metrics: the paper's PDR and DDR definitions, the byte model and its calibration, tallies."""

from __future__ import annotations

import math

import pytest

from scanflow.metrics import (ByteModel, PolicyTally, compare, device_detection_rate, ips_of,
                              port_detection_rate, ratio)


def test_port_detection_rate_is_the_jaccard_index_of_ip_port_cells():
    standard = {("a", 80), ("a", 443), ("b", 22), ("c", 7547)}
    efficient = {("a", 80), ("b", 22), ("c", 7547), ("d", 23)}
    assert port_detection_rate(standard, efficient) == pytest.approx(3 / 5)
    assert port_detection_rate(iter(standard), list(standard)) == 1.0
    assert port_detection_rate([], []) == 1.0
    assert port_detection_rate(standard, []) == 0.0


def test_device_detection_rate_counts_ips_found_by_both():
    ds, de = {"a", "b", "c", "d"}, {"a", "b", "c", "x"}
    assert device_detection_rate(ds, de) == 0.75
    assert device_detection_rate(ds, de, restrict=False) == 1.0  # the paper's raw De / Ds
    assert device_detection_rate([], de) == 1.0
    assert ips_of({("a", 80), ("a", 443), ("b", 1)}) == {"a", "b"}


def test_a_syn_probe_is_54_bytes_and_matches_the_papers_standard_traffic():
    model = ByteModel()
    assert model.syn == 14 + 20 + 20
    probes = 100_000 * 11_000 * 28  # 2 weeks of 12-hourly standard scans of 100,000 IPs
    modelled = model.round_bytes(probes)
    assert modelled == 1_663_200_000_000
    # the paper measured 1,676 GB; SYNs alone are within 1 %, banner exchanges being the rest
    assert abs(modelled - 1_676e9) / 1_676e9 < 0.01


def test_banner_exchanges_cost_handshake_request_acks_and_close():
    model = ByteModel()
    # listen-only service with a 100-byte greeting: ACK + 1 delayed ACK + FIN/ACK
    assert model.banner_exchange(22, 100) == 54 + 54 + 108
    # HTTP: ACK + request (54 + 40) + acks for 3 segments (2 delayed ACKs) + close
    assert model.banner_exchange(80, 3000) == 54 + 94 + 2 * 54 + 108
    assert model.round_bytes(10, open_without_banner=2, banners=[(22, 100)]) == 540 + 108 + 216
    ip = ByteModel.ip_layer()
    assert ip.syn == 40 and ip.banner_exchange(22, 0) == 40 + 80


def test_byte_model_rejects_nonsense():
    with pytest.raises(ValueError):
        ByteModel(syn=-1)
    with pytest.raises(ValueError):
        ByteModel(mss=0)


def test_tally_prefers_measured_bytes_when_agents_report_them():
    tally = PolicyTally()
    tally.add_round("a", probes=100, open_ports=[80], banners=[(80, 500)])
    tally.add_round("b", probes=100, measured_bytes=4321)
    tally.add_round("c", probes=100)
    model = ByteModel()
    assert tally.modelled_bytes == 200 * model.syn + model.banner_exchange(80, 500)
    assert tally.measured_bytes == 4321 and tally.measured_rounds == 1
    assert tally.bytes == tally.modelled_bytes + 4321
    assert tally.attempts == 3 and tally.probes == 300
    assert tally.cells == {("a", 80)} and tally.ips == {"a"}


def test_compare_gives_the_four_figures():
    std, eff = PolicyTally(), PolicyTally()
    for ip, ports in (("a", [80, 443]), ("b", [22])):
        for _ in range(4):
            std.add_round(ip, probes=1000, open_ports=ports)
    eff.add_round("a", probes=10, open_ports=[80, 443])
    eff.add_round("b", probes=10, open_ports=[])
    c = compare(std, eff)
    assert c.pdr == pytest.approx(2 / 3) and c.ddr == 0.5
    assert c.attempts_ratio == 2 / 8
    assert c.traffic_ratio == pytest.approx(eff.bytes / std.bytes)
    assert any("port detection rate" in line and "66.67%" in line for line in c.lines())


def test_ratio_edge_cases():
    assert ratio(1, 4) == 0.25 and ratio(0, 0) == 0.0 and math.isinf(ratio(1, 0))

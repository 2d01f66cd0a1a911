"""Metrics: the paper's PDR and DDR definitions with the honeypot exclusion, the byte model and its
calibration, tallies, and the one formula every caller ends in (:func:`compare_counts`)."""

from __future__ import annotations

import math

import pytest

from scanflow.metrics import (HONEYPOT_MIN_PORTS, ByteModel, CellCounts, Comparison, PolicyTally, compare,
                              compare_cells, compare_counts, count_cells, device_detection_rate, honeypot_ips,
                              honeypot_threshold, ips_of, judge_cells, port_detection_rate, ratio)


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


def _ports(ip, ports):
    return {(ip, p) for p in ports}


#: Standard: "hp" 150 ports, "edge" exactly 100, "below" 99, "a" 2 ports; efficient: part of each, and
#: "wide" (120 ports that only the efficient run found: never a reason to leave an IP out).
STANDARD = (_ports("hp", range(1000, 1150)) | _ports("edge", range(2000, 2100)) | _ports("below", range(3000, 3099))
            | {("a", 80), ("a", 443)})
EFFICIENT = (_ports("hp", range(1000, 1010)) | _ports("edge", range(2000, 2050)) | {("below", 3000), ("a", 80)}
             | _ports("wide", range(4000, 4120)))


def test_ips_with_100_or_more_ports_in_the_standard_run_are_left_out_of_both_runs():
    assert HONEYPOT_MIN_PORTS == 100
    assert honeypot_ips(STANDARD) == {"hp", "edge"}
    assert honeypot_ips(STANDARD, 101) == {"hp"} and honeypot_ips(STANDARD, 99) == {"hp", "edge", "below"}
    assert honeypot_ips(STANDARD, 0) == honeypot_ips(STANDARD, None) == set()
    judged = judge_cells(STANDARD, EFFICIENT)
    assert judged.excluded == {"hp", "edge"} and judged.honeypot_min_ports == 100
    assert judged.standard == _ports("below", range(3000, 3099)) | {("a", 80), ("a", 443)}
    assert judged.efficient == {("below", 3000), ("a", 80)} | _ports("wide", range(4000, 4120))
    c = count_cells(STANDARD, EFFICIENT)
    assert c == CellCounts(standard_cells=101, efficient_cells=122, common_cells=2, standard_ips=2,
                           efficient_ips=3, common_ips=2, honeypot_min_ports=100, excluded_ips=2)
    assert c.pdr == 2 / (101 + 122 - 2) and c.ddr == 1.0
    assert c.pdr == port_detection_rate(judged.standard, judged.efficient)
    assert c.ddr == device_detection_rate(ips_of(judged.standard), ips_of(judged.efficient))


@pytest.mark.parametrize("off", [None, 0])
def test_the_exclusion_turned_off_counts_every_ip(off):
    c = count_cells(STANDARD, EFFICIENT, honeypot_min_ports=off)
    assert (c.honeypot_min_ports, c.excluded_ips) == (0, 0)
    assert (c.standard_cells, c.efficient_cells, c.common_cells) == (351, 182, 62)
    assert (c.standard_ips, c.efficient_ips, c.common_ips) == (4, 5, 4)
    assert c.pdr == port_detection_rate(STANDARD, EFFICIENT) == 62 / (351 + 182 - 62)
    assert c.ddr == device_detection_rate(ips_of(STANDARD), ips_of(EFFICIENT)) == 1.0


@pytest.mark.parametrize("bad", [-1, 2.5])
def test_a_nonsense_threshold_is_refused(bad):
    with pytest.raises(ValueError, match="honeypot_min_ports"):
        honeypot_threshold(bad)


def test_every_way_in_ends_in_the_same_formula():
    totals = {"standard_bytes": 10_000, "efficient_bytes": 300, "standard_attempts": 40, "efficient_attempts": 7}
    by_counts = compare_counts(count_cells(STANDARD, EFFICIENT), **totals)
    assert compare_cells(STANDARD, EFFICIENT, **totals) == by_counts
    assert (by_counts.traffic_ratio, by_counts.attempts_ratio) == (300 / 10_000, 7 / 40)
    assert (by_counts.honeypot_min_ports, by_counts.excluded_ips) == (100, 2)
    assert any("2 IPs left out" in line and ">= 100" in line for line in by_counts.lines())
    kept = compare_cells(STANDARD, EFFICIENT, honeypot_min_ports=0, **totals)
    assert kept.pdr == 62 / 471 and any("none left out" in line for line in kept.lines())
    # tallies (the replay's input) go the same way
    std, eff = PolicyTally(), PolicyTally()
    for ip in ("hp", "edge", "below", "a"):
        std.add_round(ip, probes=1000, open_ports=[p for i, p in STANDARD if i == ip])
    for ip in ("hp", "edge", "below", "a", "wide"):
        eff.add_round(ip, probes=10, open_ports=[p for i, p in EFFICIENT if i == ip])
    tallied = compare(std, eff)
    assert isinstance(tallied, Comparison)
    assert tallied == compare_cells(STANDARD, EFFICIENT, standard_bytes=std.bytes, efficient_bytes=eff.bytes,
                                    standard_attempts=4, efficient_attempts=5)
    assert compare(std, eff, honeypot_min_ports=0).pdr == kept.pdr

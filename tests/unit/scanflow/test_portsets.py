"""Port sets derived from a small hand-made full-port scan whose right answer is worked out below,
and the PortSet value itself (names, versions, inline form, round trips)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scanflow.portsets import PortSet, Provenance, derive_port_sets


def hand_made_scan() -> pa.Table:
    """20 responsive IPs.

    hp       : ports 1000..1099 and 80 (101 ports)  -> honeypot (>= 100), dropped
    ip1-ip10 : 80;  ip1-ip6 also 443
    ip11-14  : 7547
    ip15-16  : 22
    ip17     : 8080 (its only port)
    ip18     : 554
    ip19     : 554 and 9999
    plus one duplicate row (ip1, 80), counted once.

    With min_ip_share 0.1 the cut is 0.1 x 20 responsive IPs = 2 IPs: keep ports with >= 2 IPs.
    Counts without the honeypot: 80:10, 443:6, 7547:4, 22:2, 554:2, 8080:1, 9999:1
    -> standard = {80, 443, 7547, 22, 554}; ranking 80, 443, 7547, 22, 554 (22 before 554: tie, lower port).
    IPs with a standard port: ip1-16, ip18, ip19 = 18 (ip17 has none).
    Best rank per IP: rank 1 x10, rank 3 x4, rank 4 x2, rank 5 x2
    -> DDR(k) = 10/18, 10/18, 14/18, 16/18, 18/18.
    Base (device 554, 8080 + malware 23): standard cells = 24; 8080 adds 1 cell outside -> union 25.
    -> PDR = base 2/25, then +80: 12/25, +443: 18/25, +7547: 22/25, +22: 24/25, +554 (in base): 24/25.
    """
    rows = [("hp", p) for p in range(1000, 1100)] + [("hp", 80)]
    rows += [(f"ip{i}", 80) for i in range(1, 11)] + [(f"ip{i}", 443) for i in range(1, 7)]
    rows += [(f"ip{i}", 7547) for i in range(11, 15)] + [("ip15", 22), ("ip16", 22)]
    rows += [("ip17", 8080), ("ip18", 554), ("ip19", 554), ("ip19", 9999), ("ip1", 80)]
    return pa.table({"ip": [r[0] for r in rows], "port": [r[1] for r in rows]})


DEVICE, MALWARE = [554, 8080], [23]


@pytest.fixture(scope="module")
def derivation():
    return derive_port_sets(hand_made_scan(), device_ports=DEVICE, malware_ports=MALWARE, min_ip_share="0.1",
                            silent_target=0.85, unknown_target=0.85, created="2018-12-31", kb_version="kb1")


def test_counts_and_cuts(derivation):
    d = derivation
    assert (d.rows, d.responsive_ips, d.honeypot_ips, d.kept_ips) == (127, 20, 1, 19)
    assert d.threshold_ips == 2.0


def test_standard_set_and_ranking(derivation):
    assert derivation.standard.ports == {80, 443, 7547, 22, 554}
    assert derivation.ranking == ((80, 10), (443, 6), (7547, 4), (22, 2), (554, 2))


def test_device_detection_curve_and_silent_set(derivation):
    assert derivation.ddr_curve == pytest.approx((10 / 18, 10 / 18, 14 / 18, 16 / 18, 1.0))
    assert derivation.silent.ports == {80, 443, 7547, 22}  # first k with DDR >= 85 % is 4
    assert derivation.silent_size_for(0.95) == 5 and derivation.silent_size_for(0.5) == 1


def test_port_detection_curve_and_unknown_set(derivation):
    assert derivation.pdr_curve == pytest.approx((2 / 25, 12 / 25, 18 / 25, 22 / 25, 24 / 25, 24 / 25))
    assert derivation.unknown.ports == {554, 8080, 23, 80, 443, 7547}  # base + top 3 (88 %)
    assert derivation.unknown_top_for(0.97) == 5  # never reached: the whole ranking


def test_provenance_records_input_cuts_targets_and_date(derivation):
    prov = derivation.unknown.provenance
    params, stats = dict(prov.params), dict(prov.stats)
    assert prov.created == "2018-12-31" and prov.source == "arrow table (128 rows)"  # input rows, duplicate included
    assert params["min_ip_share"] == "0.1" and params["honeypot_min_ports"] == 100
    assert params["unknown_target"] == 0.85 and params["kb_version"] == "kb1" and params["base_ports"] == 3
    assert stats["k"] == 3 and stats["pdr"] == pytest.approx(22 / 25) and stats["responsive_ips"] == 20
    assert derivation.silent.ref == "silent@v1" and derivation.standard.name == "standard"


def test_the_share_cut_is_exact_at_the_boundary():
    # 0.001 % of 100,000 responsive IPs is exactly 1 IP: a port with 1 IP is kept, not lost to rounding
    table = pa.table({"ip": list(range(100_000)), "port": [80] * 99_999 + [9]})
    d = derive_port_sets(table)
    assert d.standard.ports == {80, 9}


def test_parquet_files_and_integer_ips_work_like_tables(tmp_path):
    table = hand_made_scan()
    ids = {ip: i for i, ip in enumerate(sorted(set(table.column("ip").to_pylist())))}
    as_int = pa.table({"ip": [ids[ip] for ip in table.column("ip").to_pylist()], "port": table.column("port")})
    pq.write_table(as_int.slice(0, 60), tmp_path / "part-0.parquet")
    pq.write_table(as_int.slice(60), tmp_path / "part-1.parquet")
    d = derive_port_sets(str(tmp_path / "*.parquet"), device_ports=DEVICE, malware_ports=MALWARE,
                         min_ip_share="0.1", silent_target=0.85, unknown_target=0.85)
    ref = derive_port_sets(table, device_ports=DEVICE, malware_ports=MALWARE, min_ip_share="0.1",
                           silent_target=0.85, unknown_target=0.85)
    assert (d.standard, d.silent, d.unknown, d.ranking) == (ref.standard, ref.silent, ref.unknown, ref.ranking)
    assert d.standard.provenance.source == str(tmp_path / "*.parquet")


@pytest.mark.parametrize("kwargs", [{"honeypot_min_ports": 0}, {"min_ip_share": "1.5"},
                                    {"silent_target": 0}, {"unknown_target": 1.2}])
def test_bad_parameters_are_refused(kwargs):
    with pytest.raises(ValueError):
        derive_port_sets(hand_made_scan(), **kwargs)


def test_bad_source_is_refused():
    with pytest.raises(TypeError, match="Parquet path"):
        derive_port_sets(42)


# --- the PortSet value ---------------------------------------------------------------------------

def test_named_and_inline_sets_and_their_records():
    named = PortSet.named("silent", 3, [443, 80])
    assert named.ref == "silent@v3" and named.sorted == (80, 443) and 80 in named and len(named) == 2
    assert named.to_record() == {"name": "silent", "version": 3, "ports": []}
    inline = PortSet.inline([8000, 80, 554], label="device:hikvision-ipc")
    assert inline.is_inline and inline.ref == f"inline:{inline.digest}" and inline.label == "device:hikvision-ipc"
    assert inline.to_record() == {"name": None, "version": None, "ports": [80, 554, 8000]}
    assert list(inline) == [80, 554, 8000]
    with pytest.raises(ValueError, match="cannot go inline"):
        PortSet.inline(range(1, 66)).to_record()


def test_records_resolve_back_to_the_same_sets():
    published = [PortSet.named("silent", 1, [80]), PortSet.named("silent", 2, [80, 443])]
    assert PortSet.from_record({"name": "silent", "version": 2, "ports": []}, published) is published[1]
    inline = PortSet.inline([554, 80], label="device:x")
    back = PortSet.from_record(inline.to_record())
    assert back == inline and back.ref == inline.ref
    with pytest.raises(KeyError, match="silent@v3"):
        PortSet.from_record({"name": "silent", "version": 3, "ports": []}, published)


def test_equality_is_on_name_version_and_ports_not_provenance():
    prov = Provenance("scan.parquet", "m", "2020-01-01")
    assert PortSet.named("s", 1, [1, 2], prov) == PortSet.named("s", 1, [2, 1])
    assert PortSet.named("s", 1, [1, 2]) != PortSet.named("s", 2, [1, 2])
    assert PortSet.inline([1, 2]).digest == PortSet.named("x", 9, [2, 1]).digest


@pytest.mark.parametrize("build", [lambda: PortSet.named("s", 1, [0]), lambda: PortSet.named("s", 0, [1]),
                                   lambda: PortSet("s", None, frozenset({1})), lambda: PortSet.named("a b", 1, [1])])
def test_invalid_port_sets_are_refused(build):
    with pytest.raises(ValueError):
        build()


def test_json_round_trip_keeps_provenance_and_checks_the_digest(tmp_path, derivation):
    path = derivation.unknown.write(tmp_path / "unknown.json")
    back = PortSet.read(path)
    assert back == derivation.unknown and back.provenance == derivation.unknown.provenance
    tampered = path.read_text().replace('"ports": [\n  23,', '"ports": [\n  24,')
    assert tampered != path.read_text()
    with pytest.raises(ValueError, match="digest"):
        PortSet.from_json(tampered)

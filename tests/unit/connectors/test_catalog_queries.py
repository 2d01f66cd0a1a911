"""Each canned query of the DuckDB catalog on small hand-made lakes with known answers, with and
without duplicates, from events or from observations, straight from the files or prepared (cached)."""

from __future__ import annotations

import datetime as dt
import shutil

import pytest

from connectors.avro_codec import make_record
from connectors.duckdb_catalog import Catalog
from connectors.duckdb_queries import Run
from connectors.parquet_lake import table_files, write_table
from scanflow.metrics import device_detection_rate, port_detection_rate
from scanflow.portsets import derive_port_sets

T0 = 1_575_244_800_000_000  # 2019-12-02T00:00Z
MIN, HOUR = 60_000_000, 3_600_000_000
HOSTILE = b"\x1b[2J\x1b]0;pwned\x07<script>alert(1)</script>\xff"
A, B, C, D = "192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"
#: (policy, round) -> {ip: open ports}; rounds are 12 h apart, two per UTC day
ANSWERS = {
    ("STANDARD", 0): {A: (80, 443), B: (22,), C: (80,)},
    ("STANDARD", 1): {A: (80, 443), B: (22,)},
    ("STANDARD", 2): {A: (80, 443), B: (22, 23), C: (80,)},
    ("STANDARD", 3): {A: (80, 443), B: (22, 23)},
    ("EFFICIENT", 0): {A: (80,), B: (22,)},
    ("EFFICIENT", 1): {A: (80,)},
    ("EFFICIENT", 2): {B: (22,)},
    ("EFFICIENT", 3): {A: (80,)},
}
PROBED = {"STANDARD": [A, B, C, D], "EFFICIENT": None}  # efficient probes only the IPs it answers for here


def _when(rnd: int, ip: str) -> int:
    return T0 + rnd * 12 * HOUR + int(ip.rsplit(".", 1)[1]) * MIN


def lake_records(duplicates: bool = True) -> dict[str, list[dict]]:
    """The hand-made evaluation: events, scans and decisions (see ANSWERS)."""
    events, scans = [], []
    for (policy, rnd), answers in sorted(ANSWERS.items()):
        for ip in PROBED[policy] or sorted(answers):
            sid = f"{policy[0]}{rnd}-{ip}"
            t = _when(rnd, ip)
            for port in answers.get(ip, ()):
                events.append(make_record("ScanEvent", scan_id=sid, agent_id="a", ip=ip, port=port,
                                          transport="TCP", kind="SYN_ACK", timestamp=t + 1))
                if port == 80:
                    events.append(make_record("ScanEvent", scan_id=sid, agent_id="a", ip=ip, port=port,
                                              transport="TCP", kind="BANNER", timestamp=t + 2, banner=HOSTILE,
                                              banner_protocol="http"))
            scans.append(make_record("ScanDone", scan_id=sid, agent_id="a", target=ip, policy=policy, started_at=t,
                                     ended_at=t + 10, ports_probed=100 if policy == "STANDARD" else 2,
                                     addresses_probed=1, packets_sent=100, responses=len(answers.get(ip, ())),
                                     bytes_sent=1000 if policy == "STANDARD" else 100, status="COMPLETE"))
    decisions = []
    for ip, rnd, days, status in ((A, 0, 0.5, "RESPONSIVE_ESTIMATED"), (A, 1, 1.0, "RESPONSIVE_ESTIMATED"),
                                  (A, 3, 2.0, "RESPONSIVE_ESTIMATED"), (B, 0, 0.5, "RESPONSIVE_UNESTIMATED"),
                                  (B, 2, 0.5, "RESPONSIVE_UNESTIMATED"), (C, 0, 3.5, "NON_RESPONSIVE")):
        t = _when(rnd, ip) + 20
        decisions.append(make_record("Decision", decision_id=f"d-{ip}-{rnd}", ip=ip, policy="EFFICIENT",
                                     decided_at=t, status=status, backoff_step=0, reason="BACKOFF",
                                     next_scan_at=t + int(days * 24 * HOUR)))
    if duplicates:  # at-least-once delivery: a standard round resent, a ScanDone and a decision twice
        events += [e for e in events if e["scan_id"].startswith("S0")]
        scans.append(scans[0])
        decisions.append(decisions[0])
    return {"events": events, "scans": scans, "decisions": decisions}


def build_lake(root, duplicates: bool = True):
    """Write the hand-made lake (each table in two batches, so partitions hold several files)."""
    for table, records in lake_records(duplicates).items():
        half = len(records) // 2
        write_table(root, table, records[:half])
        write_table(root, table, records[half:])
    return root


def observations_lake(root):
    """The same evaluation as observations (what the scheduler writes) plus the same scans."""
    records = lake_records(duplicates=False)
    observations = []
    for (policy, rnd), answers in sorted(ANSWERS.items()):
        for ip in PROBED[policy] or sorted(answers):
            ports = answers.get(ip, ())
            observations.append(make_record(
                "Observation", ip=ip, scan_id=f"{policy[0]}{rnd}-{ip}", agent_id="a", policy=policy,
                started_at=_when(rnd, ip), ended_at=_when(rnd, ip) + 10, ports_probed=2, status="COMPLETE",
                responses=[{"port": p, "transport": "TCP", "banner": HOSTILE if p == 80 else None,
                            "banner_protocol": None, "ttl": None, "window": None} for p in ports],
                fingerprint=",".join(map(str, ports)) or None))
    write_table(root, "observations", observations)
    write_table(root, "scans", records["scans"])
    write_table(root, "decisions", records["decisions"])
    return root


@pytest.fixture(params=["raw", "prepared"])
def cat(request, tmp_path):
    """The hand-made lake, queried straight from the files or after prepare() (cached rollups)."""
    catalog = Catalog(build_lake(tmp_path / "lake"))
    if request.param == "prepared":
        catalog.prepare()
    yield catalog
    catalog.close()


def test_views_and_dedup_views(cat):
    counts = cat.counts()
    assert counts["events"]["unique"] < counts["events"]["rows"]
    assert (counts["scans"]["rows"], counts["scans"]["unique"]) == (22, 21)  # 16 standard + 5 efficient, one twice
    assert counts["decisions"]["unique"] == 6
    assert cat.sql("SELECT count(*) AS n FROM ip_state").to_pylist() == [{"n": 0}]
    assert cat.source == "events"


def test_port_ranking_table1(cat):
    assert cat.port_ranking().to_pylist() == [
        {"rank": 1, "port": 80, "ips": 2, "share": 2 / 3}, {"rank": 2, "port": 22, "ips": 1, "share": 1 / 3},
        {"rank": 3, "port": 23, "ips": 1, "share": 1 / 3}, {"rank": 4, "port": 443, "ips": 1, "share": 1 / 3}]
    assert [r["port"] for r in cat.port_ranking(policy="EFFICIENT").to_pylist()] == [22, 80]
    assert [r["port"] for r in cat.port_ranking(limit=2).to_pylist()] == [80, 22]


def test_port_set_derivation_is_the_policy_cores(cat):
    ours = cat.derive_port_sets(created="2020-01-01", silent_target=0.6)
    theirs = derive_port_sets(cat.cells(), created="2020-01-01", silent_target=0.6)
    assert ours.standard == theirs.standard and ours.silent == theirs.silent and ours.ranking == theirs.ranking
    assert ours.standard.ports == {22, 23, 80, 443}
    assert ours.silent.ports == {80}  # port 80 alone finds 2 of the 3 responsive IPs


def test_traffic_table4_and_detection_rates(cat):
    t = cat.traffic()
    assert (t["standard_bytes"], t["efficient_bytes"]) == (16_000, 500)
    assert t["traffic_ratio"] == 500 / 16_000
    assert (t["standard_attempts"], t["efficient_attempts"]) == (16, 5)
    assert t["pdr"] == pytest.approx(2 / 5) and t["ddr"] == pytest.approx(2 / 3)
    standard = {(A, 80), (A, 443), (B, 22), (B, 23), (C, 80)}
    efficient = {(A, 80), (B, 22)}
    assert t["pdr"] == pytest.approx(port_detection_rate(standard, efficient))
    assert t["ddr"] == pytest.approx(device_detection_rate({A, B, C}, {A, B}))
    assert t["period_start"] == dt.datetime(2019, 12, 2, 0, 1, tzinfo=dt.timezone.utc)


def test_detection_rates_across_two_lakes_use_the_metrics_module(tmp_path, cat):
    other = tmp_path / "other"
    write_table(other, "events", [e for e in lake_records()["events"] if e["ip"] == A])
    write_table(other, "scans", [s for s in lake_records()["scans"] if s["target"] == A])
    rates = cat.detection_rates(Run("STANDARD"), Run("STANDARD", root=other))
    assert rates.pdr == pytest.approx(2 / 5) and rates.ddr == pytest.approx(1 / 3)
    assert (rates.standard_cells, rates.efficient_cells, rates.common_cells) == (5, 2, 2)


def test_responsive_rates(cat):
    rows = {(r["day"].isoformat(), r["policy"]): r for r in cat.responsive_rates().to_pylist()}
    assert rows[("2019-12-02", "STANDARD")]["addresses_probed"] == 8
    assert rows[("2019-12-02", "STANDARD")]["responsive_rounds"] == 5
    assert rows[("2019-12-02", "STANDARD")]["responsive_rate"] == 5 / 8
    assert rows[("2019-12-03", "EFFICIENT")]["responsive_rate"] == 1.0
    assert {r["sample"] for r in rows.values()} == {1}


def test_change_rates_and_stable_share(cat):
    rows = {(r["day"].isoformat(), r["policy"]): (r["compared"], r["changed"]) for r in cat.change_rates().to_pylist()}
    assert rows[("2019-12-02", "STANDARD")] == (2, 0)
    assert rows[("2019-12-03", "STANDARD")] == (5, 1)  # B opened 23 in round 2
    stable = {r["policy"]: (r["ips"], r["stable_ips"]) for r in cat.stable_share().to_pylist()}
    assert stable == {"STANDARD": (3, 2), "EFFICIENT": (2, 2)}


def test_backoff_distribution_figure6(cat):
    rows = [(r["day"].isoformat(), r["interval_days"], r["decisions"], r["share"])
            for r in cat.backoff_distribution().to_pylist()]
    assert rows == [("2019-12-02", 0.5, 2, 2 / 3), ("2019-12-02", 1.0, 1, 1 / 3),
                    ("2019-12-03", 0.5, 1, 0.5), ("2019-12-03", 2.0, 1, 0.5)]
    assert cat.backoff_latest().to_pylist() == [{"interval_days": 0.5, "ips": 1, "share": 0.5},
                                                {"interval_days": 2.0, "ips": 1, "share": 0.5}]


def test_attempts_over_time_figure7(cat):
    rows = [(r["day"].isoformat(), r["standard"], r["efficient"], r["ratio"], r["cumulative_ratio"])
            for r in cat.attempts_over_time().to_pylist()]
    assert rows == [("2019-12-02", 8, 3, 3 / 8, 3 / 8), ("2019-12-03", 8, 2, 2 / 8, 5 / 16)]


def test_time_filters(cat):
    day2 = "2019-12-03T00:00:00Z"
    assert [r["day"].isoformat() for r in cat.attempts_over_time(start=day2).to_pylist()] == ["2019-12-03"]
    t = cat.traffic(Run("STANDARD", start=day2), Run("EFFICIENT", start=day2))
    assert (t["standard_attempts"], t["efficient_attempts"]) == (8, 2)
    assert [r["port"] for r in cat.port_ranking(end=day2).to_pylist()] == [80, 22, 443]


def test_top_banners_are_returned_raw_for_the_caller_to_escape(cat):
    rows = cat.top_banners([80]).to_pylist()
    assert rows == [{"port": 80, "ips": 2, "banner": HOSTILE}]


def test_duplicates_never_change_an_answer(tmp_path):
    with Catalog(build_lake(tmp_path / "dup")) as dup, Catalog(build_lake(tmp_path / "clean", False)) as clean:
        for query in ("port_ranking", "responsive_rates", "change_rates", "stable_share", "backoff_distribution",
                      "backoff_latest", "attempts_over_time"):
            assert getattr(dup, query)() == getattr(clean, query)(), query
        assert dup.traffic() == clean.traffic()


def test_observations_give_the_same_answers_as_events(tmp_path):
    with Catalog(build_lake(tmp_path / "ev")) as ev, Catalog(observations_lake(tmp_path / "obs")) as obs:
        assert obs.source == "observations"
        assert obs.port_ranking() == ev.port_ranking()
        assert obs.traffic() == ev.traffic()
        for query in ("responsive_rates", "change_rates", "stable_share"):
            assert getattr(obs, query)() == getattr(ev, query)(), query
        assert obs.top_banners([80]).to_pylist() == ev.top_banners([80]).to_pylist()


def test_an_empty_lake_answers_every_query_with_nothing(tmp_path):
    with Catalog(tmp_path / "empty") as cat:
        for query in ("port_ranking", "cells", "responsive_rates", "change_rates", "stable_share",
                      "backoff_distribution", "backoff_latest", "attempts_over_time", "top_banners"):
            assert getattr(cat, query)().num_rows == 0, query
        t = cat.traffic()
        assert (t["standard_bytes"], t["pdr"], t["ddr"]) == (0, 1.0, 1.0)
        cat.prepare()
        assert cat.port_ranking().num_rows == 0


def test_prepared_sampling_scales_and_labels_per_round_statistics(tmp_path):
    with Catalog(build_lake(tmp_path / "lake")) as cat:
        info = cat.prepare(sample=2, cache=False)
        assert info["sample"] == 2
        rates = cat.responsive_rates().to_pylist()
        assert {r["sample"] for r in rates} == {2}
        assert all(r["responsive_rounds"] % 2 == 0 for r in rates)
        assert cat.port_ranking().num_rows == 4  # cells stay exact


def test_the_rollups_follow_new_and_removed_partitions(tmp_path):
    root = build_lake(tmp_path / "lake")
    with Catalog(root) as cat:
        cat.prepare()
        assert cat.port_ranking(limit=None).num_rows == 4
    assert (root / "_rollup").is_dir()
    # a late event in an old (settled) partition, on a new port
    late = make_record("ScanEvent", scan_id="S0-" + C, agent_id="a", ip=C, port=8080, transport="TCP",
                       kind="SYN_ACK", timestamp=_when(0, C) + 5)
    write_table(root, "events", [late])
    with Catalog(root) as cat:
        cat.prepare()
        assert 8080 in cat.port_ranking(limit=None).column("port").to_pylist()
    # data removed (retention): the rollups are rebuilt without it
    for path in table_files(root, "events"):
        if "hour=00" in path.parent.name and "2019-12-02" in path.parent.parent.name:
            shutil.rmtree(path.parent, ignore_errors=True)
    with Catalog(root) as cat, Catalog(root) as raw:
        cat.prepare()
        assert cat.port_ranking(limit=None) == raw.port_ranking(limit=None)
        assert 8080 not in cat.port_ranking(limit=None).column("port").to_pylist()

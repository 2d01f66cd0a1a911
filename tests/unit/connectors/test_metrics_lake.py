"""One definition of PDR, DDR, traffic and attempts: on a real lake (written by the project's Parquet
writer, read by real DuckDB) the catalog's figures, whose set sizes and honeypot exclusion are
counted in SQL, equal :mod:`scanflow.metrics` on the same cells in Python, to the last digit, with
the exclusion off, at the default threshold and around it; the lake holds IPs with >= 100 open ports.
"""

from __future__ import annotations

import datetime as dt

import pytest

from connectors.avro_codec import make_record
from connectors.duckdb_catalog import Catalog
from connectors.duckdb_queries import Run
from connectors.parquet_lake import write_table
from scanflow.metrics import compare_cells, count_cells

T0 = 1_575_244_800_000_000  # 2019-12-02T00:00Z
MIN, HOUR = 60_000_000, 3_600_000_000
DAY2 = "2019-12-03T00:00:00Z"  # rounds 2 and 3
HP, EDGE, BELOW = "198.51.100.1", "198.51.100.2", "198.51.100.3"
A, B, C, D, WIDE = "198.51.100.4", "198.51.100.5", "198.51.100.6", "198.51.100.7", "198.51.100.9"
#: (policy, round) -> {ip: open ports}; rounds 12 h apart. HP answers on 80 ports on day 1 and 70
#: others on day 2 (150 in the lake, 70 in the day-2 window); EDGE on exactly 100 in rounds 0 and 2;
#: BELOW on 99; WIDE on 120 ports the efficient run alone found (never a reason to leave it out).
ANSWERS = {
    ("STANDARD", 0): {HP: range(1000, 1080), EDGE: range(2000, 2100), BELOW: range(3000, 3099), A: (80, 443), B: (22,)},
    ("STANDARD", 1): {HP: range(1000, 1040), A: (80, 443), C: (7547,)},
    ("STANDARD", 2): {HP: range(1080, 1150), EDGE: range(2000, 2100), A: (80,), B: (22, 23)},
    ("STANDARD", 3): {BELOW: (3000,), A: (80, 443), C: (7547,)},
    ("EFFICIENT", 0): {HP: range(1000, 1010), EDGE: range(2000, 2050), A: (80,)},
    ("EFFICIENT", 1): {BELOW: (3000,), WIDE: range(4000, 4120)},
    ("EFFICIENT", 2): {HP: range(1080, 1085), B: (22,), D: (21,)},
    ("EFFICIENT", 3): {A: (443,), C: (7547,)},
}
STANDARD_PROBED = (HP, EDGE, BELOW, A, B, C, D, WIDE)
THRESHOLDS = [None, 0, 99, 100, 101, 151]


def _when(rnd: int, ip: str) -> int:
    return T0 + rnd * 12 * HOUR + int(ip.rsplit(".", 1)[1]) * MIN


def _rounds(policy: str, rounds=range(4)):
    for rnd in rounds:
        answers = ANSWERS[(policy, rnd)]
        for ip in STANDARD_PROBED if policy == "STANDARD" else sorted(answers):
            yield rnd, ip, tuple(answers.get(ip, ()))


def _scan(policy: str, rnd: int, ip: str, ports: tuple) -> dict:
    t = _when(rnd, ip)
    return make_record("ScanDone", scan_id=f"{policy[0]}{rnd}-{ip}", agent_id="a", target=ip, policy=policy,
                       started_at=t, ended_at=t + 10, ports_probed=1000 if policy == "STANDARD" else 20,
                       addresses_probed=1, packets_sent=100, responses=len(ports),
                       bytes_sent=(54_000 if policy == "STANDARD" else 1_080) + 54 * len(ports), status="COMPLETE")


def events_lake(root, policies=("STANDARD", "EFFICIENT")):
    """Events and ScanDones (a lake archived from the events topic), a standard round sent twice."""
    events, scans = [], []
    for policy in policies:
        for rnd, ip, ports in _rounds(policy):
            for port in ports:
                events.append(make_record("ScanEvent", scan_id=f"{policy[0]}{rnd}-{ip}", agent_id="a", ip=ip,
                                          port=port, transport="TCP", kind="SYN_ACK", timestamp=_when(rnd, ip) + 1))
            scans.append(_scan(policy, rnd, ip, ports))
    resent = [e for e in events if e["scan_id"].startswith("S0")]
    write_table(root, "events", events)
    write_table(root, "events", resent)  # at-least-once: the same rows again, another file
    write_table(root, "scans", scans)
    return root


def observations_lake(root):
    """The same scans as observations (what the scheduler and the replay write) and ScanDones."""
    observations, scans = [], []
    for policy in ("STANDARD", "EFFICIENT"):
        for rnd, ip, ports in _rounds(policy):
            t = _when(rnd, ip)
            observations.append(make_record(
                "Observation", ip=ip, scan_id=f"{policy[0]}{rnd}-{ip}", agent_id="a", policy=policy, started_at=t,
                ended_at=t + 10, ports_probed=len(ports), status="COMPLETE",
                responses=[{"port": p, "transport": "TCP", "banner": None, "banner_protocol": None, "ttl": None,
                            "window": None} for p in ports],
                fingerprint=",".join(map(str, ports)) or None))
            scans.append(_scan(policy, rnd, ip, ports))
    write_table(root, "observations", observations)
    write_table(root, "scans", scans)
    return root


def truth(policy: str, rounds=range(4)) -> tuple[set, int, int]:
    """The run's (ip, port) cells, bytes and attempts, straight from what the lake was written from."""
    cells, sent, attempts = set(), 0, 0
    for rnd, ip, ports in _rounds(policy, rounds):
        cells |= {(ip, p) for p in ports}
        sent += _scan(policy, rnd, ip, ports)["bytes_sent"]
        attempts += 1
    return cells, sent, attempts


def python_figures(rounds=range(4), honeypot_min_ports=None):
    (ps, sb, sa), (pe, eb, ea) = truth("STANDARD", rounds), truth("EFFICIENT", rounds)
    return compare_cells(ps, pe, standard_bytes=sb, efficient_bytes=eb, standard_attempts=sa, efficient_attempts=ea,
                         honeypot_min_ports=honeypot_min_ports)


@pytest.fixture(scope="module", params=["events", "observations"])
def lake(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    return events_lake(root) if request.param == "events" else observations_lake(root)


@pytest.fixture(params=["raw", "prepared"])
def cat(request, lake):
    catalog = Catalog(lake)
    if request.param == "prepared":
        catalog.prepare()
    yield catalog
    catalog.close()


def test_the_lake_holds_what_the_exclusion_is_about(cat):
    rows = cat.sql("SELECT ip, count(*) AS n FROM (SELECT DISTINCT ip, port FROM responses "
                   "WHERE policy = 'STANDARD') GROUP BY ip").to_pylist()
    per_ip = {r["ip"]: r["n"] for r in rows}
    assert (per_ip[HP], per_ip[EDGE], per_ip[BELOW]) == (150, 100, 99)
    assert WIDE not in per_ip


@pytest.mark.parametrize("honeypot_min_ports", THRESHOLDS)
def test_sql_counts_equal_the_python_definition(cat, honeypot_min_ports):
    ps, _, _ = truth("STANDARD")
    pe, _, _ = truth("EFFICIENT")
    want = count_cells(ps, pe, honeypot_min_ports=honeypot_min_ports)
    got = cat.detection_rates(Run("STANDARD"), Run("EFFICIENT"), honeypot_min_ports=honeypot_min_ports)
    assert got == want
    assert (got.pdr, got.ddr) == (want.pdr, want.ddr)


@pytest.mark.parametrize("honeypot_min_ports", THRESHOLDS)
def test_table4_equals_the_python_definition_to_the_last_digit(cat, honeypot_min_ports):
    want = python_figures(honeypot_min_ports=honeypot_min_ports)
    got = cat.traffic(Run("STANDARD"), Run("EFFICIENT"), honeypot_min_ports=honeypot_min_ports)
    for key in ("pdr", "ddr", "traffic_ratio", "attempts_ratio", "standard_bytes", "efficient_bytes",
                "standard_attempts", "efficient_attempts", "standard_cells", "efficient_cells", "common_cells",
                "standard_ips", "efficient_ips", "common_ips", "honeypot_min_ports", "excluded_ips"):
        assert got[key] == getattr(want, key), key


def test_the_default_leaves_out_100_or_more_standard_ports_and_says_so(cat):
    t = cat.traffic()
    assert (t["honeypot_min_ports"], t["excluded_ips"]) == (100, 2)  # HP and EDGE; not BELOW, not WIDE
    kept = cat.traffic(honeypot_min_ports=0)
    assert (kept["honeypot_min_ports"], kept["excluded_ips"]) == (0, 0)
    assert t["pdr"] != kept["pdr"] and t["standard_cells"] == kept["standard_cells"] - 250
    assert (t["traffic_ratio"], t["attempts_ratio"]) == (kept["traffic_ratio"], kept["attempts_ratio"])


@pytest.mark.parametrize("honeypot_min_ports", THRESHOLDS)
def test_the_exclusion_is_counted_in_the_window_asked_for(cat, honeypot_min_ports):
    want = python_figures(range(2, 4), honeypot_min_ports)
    got = cat.traffic(Run("STANDARD", start=DAY2), Run("EFFICIENT", start=DAY2), honeypot_min_ports=honeypot_min_ports)
    assert (got["pdr"], got["ddr"], got["excluded_ips"], got["standard_cells"]) == (
        want.pdr, want.ddr, want.excluded_ips, want.standard_cells)
    assert got["period_start"] == dt.datetime(2019, 12, 3, 0, 1, tzinfo=dt.timezone.utc)
    if honeypot_min_ports == 100:
        assert got["excluded_ips"] == 1  # EDGE; HP has 70 ports on day 2


@pytest.mark.parametrize("honeypot_min_ports", THRESHOLDS)
def test_a_run_in_another_lake_is_counted_in_python_with_the_same_result(cat, tmp_path, honeypot_min_ports):
    other = events_lake(tmp_path / "efficient-only", policies=("EFFICIENT",))
    in_lake = cat.detection_rates(Run("STANDARD"), Run("EFFICIENT"), honeypot_min_ports=honeypot_min_ports)
    across = cat.detection_rates(Run("STANDARD"), Run("EFFICIENT", root=other), honeypot_min_ports=honeypot_min_ports)
    assert across == in_lake and (across.pdr, across.ddr) == (in_lake.pdr, in_lake.ddr)

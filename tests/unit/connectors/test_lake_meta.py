"""A live run's compressed clock, as the lake carries it (``_run.json``) and the catalog reads it:
days are virtual days from the run's start, durations virtual days; a lake without it is real time."""

from __future__ import annotations

import pytest

from connectors.duckdb_catalog import Catalog
from connectors.lake_meta import LakeClock, RunMeta, lake_clock, read_run_meta, write_run_meta
from connectors.parquet_lake import write_table

START = 1_796_000_000.0          # wall-clock start of the run (epoch seconds)
DAY_S = 10.0                     # wall seconds per virtual day


def _decision(ip: str, decided: float, next_in_wall_s: float) -> dict:
    us = int(decided * 1e6)
    return {"decision_id": f"d-{ip}-{us}", "ip": ip, "policy": "EFFICIENT", "decided_at": us, "scan_id": None,
            "previous_status": "RESPONSIVE_UNESTIMATED", "status": "RESPONSIVE_UNESTIMATED", "changed": False,
            "device": None, "backoff_step": 1, "reason": "BACKOFF", "next_scan_at": us + int(next_in_wall_s * 1e6),
            "port_set": None, "command_id": None}


@pytest.fixture
def lake(tmp_path):
    root = tmp_path / "lake"
    # one decision on each of three virtual days, each 12 virtual hours (5 wall seconds) before its rescan
    write_table(root, "decisions", [_decision(f"10.0.0.{k}", START + k * DAY_S + 1, DAY_S / 2) for k in range(3)])
    return root


def test_the_meta_round_trips_and_gives_the_clock(tmp_path):
    write_run_meta(tmp_path, RunMeta(run_id="r", day_seconds=DAY_S, start=START, status="running"))
    meta = read_run_meta(tmp_path)
    assert meta.run_id == "r" and meta.status == "running" and meta.updated_at is not None
    clock = lake_clock(tmp_path)
    assert clock.compressed and clock.scale == pytest.approx(DAY_S / 86_400)
    assert clock.day(START + 2.5 * DAY_S) == pytest.approx(2.5)
    assert clock.duration_s(DAY_S / 2) == pytest.approx(43_200)
    assert "compressed" in clock.describe()
    assert lake_clock(tmp_path / "elsewhere") == LakeClock.real() and not LakeClock.real().compressed


def test_a_compressed_lake_has_virtual_days_and_intervals(lake):
    with Catalog(lake) as real:
        assert len(set(real.backoff_distribution().column("day").to_pylist())) == 1     # 30 wall seconds
        assert real.backoff_latest().column("interval_days").to_pylist() == [0.0]
    write_run_meta(lake, RunMeta(run_id="r", day_seconds=DAY_S, start=START))
    with Catalog(lake) as cat:
        dist = cat.backoff_distribution()
        assert len(set(dist.column("day").to_pylist())) == 3
        assert set(dist.column("interval_days").to_pylist()) == {0.5}
        assert cat.backoff_latest().column("interval_days").to_pylist() == [0.5]

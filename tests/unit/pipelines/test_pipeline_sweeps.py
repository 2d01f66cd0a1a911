"""Sweeps: blocks of the target ranges, each swept once per period at a stable scrambled slot."""

from __future__ import annotations

import ipaddress

import pytest

from pipelines.sweeps import SweepPlan, sweep_blocks
from scanflow.policy import DAY

PERIOD = 3.5 * DAY


def _nets(*texts):
    return [ipaddress.IPv4Network(t) for t in texts]


def test_blocks_cover_the_ranges_once():
    blocks = sweep_blocks(_nets("198.51.100.0/24", "198.51.100.128/25", "203.0.113.0/26"), 26)
    assert [str(b) for b in blocks] == ["198.51.100.0/26", "198.51.100.64/26", "198.51.100.128/26",
                                        "198.51.100.192/26", "203.0.113.0/26"]
    with pytest.raises(ValueError, match="at most"):
        sweep_blocks(_nets("0.0.0.0/0"), 32)


def test_each_block_is_swept_exactly_once_per_period_spread_over_it():
    plan = SweepPlan(_nets("10.0.0.0/16"), 24, PERIOD)
    due = plan.due(1000.0, 1000.0 + PERIOD)
    assert sorted(b for _, b in due) == sorted(str(b) for b in sweep_blocks(_nets("10.0.0.0/16"), 24))
    assert [t for t, _ in due] == sorted(t for t, _ in due)
    # Spread: no quarter of the period holds more than half of the blocks.
    quarters = [0] * 4
    for t, _ in due:
        quarters[int((t - 1000.0) // (PERIOD / 4)) % 4] += 1
    assert max(quarters) < 128
    # The next period repeats the same slots, one period later.
    again = plan.due(1000.0 + PERIOD, 1000.0 + 2 * PERIOD)
    assert sorted((round(t - PERIOD, 6), b) for t, b in again) == sorted((round(t, 6), b) for t, b in due)


def test_windows_partition_the_slots_and_the_schedule_is_stable_across_processes():
    plan = SweepPlan(_nets("10.0.0.0/20"), 24, PERIOD)
    whole = plan.due(0.0, 2 * PERIOD)
    pieces = [x for k in range(0, 2 * 84) for x in plan.due(k * 3600.0, (k + 1) * 3600.0)]
    assert pieces == whole
    # BLAKE2b of the block, never hash(): a fixed value for a fixed block.
    assert SweepPlan(_nets("10.0.3.0/24"), 24, PERIOD).due(0.0, PERIOD)[0][0] == pytest.approx(
        int.from_bytes(__import__("hashlib").blake2b(b"10.0.3.0/24", digest_size=8).digest(), "big")
        / 2.0 ** 64 * PERIOD)


def _issue(sweeps, start, stop):
    from pipelines.sweeps import _IssueFn

    fn = _IssueFn(sweeps._plan_args, sweeps._silent, sweeps._ttl, sweeps._policy, sweeps._first)
    fn.setup()
    return list(fn.process((start, stop)))


def test_a_run_begins_with_a_first_pass_over_every_block_then_sweeps_once_per_period():
    from pipelines.sweeps import Sweeps
    from scanflow.portsets import PortSet

    silent, initial = PortSet.named("silent", 1, [23, 80]), PortSet.named("standard", 1, [22, 23, 80, 443])
    start, window = 1_700_000_000.0, 600.0
    sweeps = Sweeps(_nets("198.18.0.0/22"), prefix=24, period_s=PERIOD, silent=silent, ttl_s=3600, start=start,
                    first_pass=initial, first_pass_window_s=window)
    # Ticks from a little before the start up to two periods: each block once in the first pass,
    # within the window, with the initial set; then once per period after its own first pass.
    ticks = [x for k in range(-2, int(2 * PERIOD // 60) + 2)
             for x in _issue(sweeps, start + k * 60.0, start + (k + 1) * 60.0)]
    first = [(cmd["not_before"] / 1e6, block) for block, cmd in ticks if cmd["reason"] == "INITIAL"]
    assert sorted(b for _, b in first) == ["198.18.0.0/24", "198.18.1.0/24", "198.18.2.0/24", "198.18.3.0/24"]
    assert all(start <= t < start + window for t, _ in first)
    assert all(cmd["port_set"]["name"] == "standard" for _, cmd in ticks if cmd["reason"] == "INITIAL")
    later = [(cmd["not_before"] / 1e6, block) for block, cmd in ticks if cmd["reason"] == "SWEEP"]
    assert all(cmd["port_set"]["name"] == "silent" for _, cmd in ticks if cmd["reason"] == "SWEEP")
    firsts = dict((b, t) for t, b in first)
    assert sorted((b, round(t - firsts[b], 3)) for t, b in later) == sorted((b, PERIOD) for b in firsts)
    # Without a first pass a block may wait most of a period for its first scan.
    plain = Sweeps(_nets("198.18.0.0/22"), prefix=24, period_s=PERIOD, silent=silent, ttl_s=3600, start=start)
    early = _issue(plain, start, start + window)
    assert len(early) < 4 and all(c["reason"] == "SWEEP" for _, c in early)


def test_each_block_sweeps_at_its_own_period_when_the_policy_gives_one():
    """The adaptive policy's learned cadence: quiet prefixes every 3.5 days, the others every 12 h;
    without ``period_of`` every block keeps the one period (the paper's)."""
    quiet = "10.0.1.0"
    plan = SweepPlan(_nets("10.0.0.0/22"), 24, 12 * 3600.0,
                     period_of=lambda ip: 84 * 3600.0 if ip == quiet else 12 * 3600.0)
    assert plan.periods == (12 * 3600.0, 84 * 3600.0) and len(plan) == 4
    due = plan.due(0.0, 84 * 3600.0)
    count = {b: sum(1 for _, x in due if x == b) for b in ("10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/24")}
    assert count == {"10.0.0.0/24": 7, "10.0.1.0/24": 1, "10.0.2.0/24": 7}
    assert [t for t, _ in due] == sorted(t for t, _ in due)
    same = SweepPlan(_nets("10.0.0.0/22"), 24, 12 * 3600.0)
    assert same.due(0.0, 84 * 3600.0) == SweepPlan(_nets("10.0.0.0/22"), 24, 12 * 3600.0,
                                                    period_of=lambda ip: 12 * 3600.0).due(0.0, 84 * 3600.0)

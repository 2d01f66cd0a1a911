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

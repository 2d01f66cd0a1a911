"""Token bucket and politeness cap, on a virtual clock (no sleeping)."""

from __future__ import annotations

import asyncio

import pytest

from probe_agent.ratelimit import PolitenessCap, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    async def sleep(self, dt: float) -> None:
        self.t += dt


def test_bucket_grants_the_rate_over_a_long_run():
    clock = Clock()
    bucket = TokenBucket(rate=500, capacity=25, clock=clock)

    async def drain(n: int) -> None:
        for _ in range(n):
            await bucket.acquire(1, sleep=clock.sleep)

    start = clock.t
    asyncio.run(drain(10_000))
    # The bucket starts empty: 10,000 packets take exactly 20 s at 500/s, no burst at the start.
    assert clock.t - start == pytest.approx(20.0, rel=1e-9)
    assert bucket.granted == 10_000


def test_a_full_bucket_lets_its_depth_through_at_once():
    clock = Clock()
    bucket = TokenBucket(rate=500, capacity=25, clock=clock, start_full=True)
    assert sum(1 for _ in range(30) if bucket.try_acquire() == 0) == 25


def test_a_sender_held_up_catches_up_at_most_the_depth():
    clock = Clock()
    bucket = TokenBucket(rate=100, capacity=50, clock=clock)
    clock.t += 0.3                                  # held up 0.3 s: 30 tokens accrued, all usable
    assert sum(1 for _ in range(100) if bucket.try_acquire() == 0) == 30
    clock.t += 2.0                                  # held up 2 s: only the depth (50) is kept
    assert sum(1 for _ in range(300) if bucket.try_acquire() == 0) == 50


def test_bucket_never_bursts_more_than_its_capacity_after_idling():
    clock = Clock()
    bucket = TokenBucket(rate=100, capacity=10, clock=clock)
    clock.t += 3600  # an hour idle
    granted = 0
    while bucket.try_acquire() == 0:
        granted += 1
    assert granted == 10


def test_charged_packets_are_paid_back_before_new_grants():
    clock = Clock()
    bucket = TokenBucket(rate=10, capacity=1, clock=clock, start_full=True)
    assert bucket.try_acquire() == 0
    bucket.charge(4)              # that probe cost 5 packets in all
    wait = bucket.try_acquire()
    assert wait == pytest.approx(0.5)   # 4 owed + 1 for the next packet, at 10/s
    clock.t += 0.5
    assert bucket.try_acquire() == 0
    assert bucket.charged == 4


def test_bucket_rejects_nonsense():
    with pytest.raises(ValueError):
        TokenBucket(0, 1)
    with pytest.raises(ValueError):
        PolitenessCap(0)


def test_politeness_spaces_probes_of_one_address_but_not_of_others():
    clock = Clock()
    cap = PolitenessCap(rate=4, clock=clock)
    slots = [cap.reserve("198.18.0.1") for _ in range(5)]
    assert [s - clock.t for s in slots] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    assert cap.reserve("198.18.0.2") == clock.t


def test_politeness_table_is_pruned():
    clock = Clock()
    cap = PolitenessCap(rate=1000, clock=clock, prune_every=100)
    for i in range(1000):
        clock.t += 0.01
        cap.reserve(f"198.18.{i // 256}.{i % 256}")
    assert len(cap) < 100

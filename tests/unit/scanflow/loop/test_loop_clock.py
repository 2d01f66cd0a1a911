"""The clock of a run on a real network: a virtual day long enough for the scans it holds."""

from __future__ import annotations

import pytest

from scanflow.loop.clock import MIN_DAY_S, AgentPace, ScanCosts, plan_clock, probes_per_s

LADDER0_H, SWEEP_H = 12.0, 84.0


def test_connect_on_a_sparse_network_is_bounded_by_its_connection_slots_not_its_rate():
    pace = AgentPace(agents=2, rate_pps=5000, per_target_pps=20, backend="connect", concurrency=256,
                     connect_timeout_s=2.0)
    assert probes_per_s(pace) == pytest.approx(2 * 256 / 2.0)
    assert probes_per_s(AgentPace(2, 5000, 20, backend="masscan")) == pytest.approx(10_000)


def test_the_day_holds_two_sweeps_per_period_and_two_classifications_per_rescan():
    costs = ScanCosts(addresses=1024, initial_ports=109, silent_ports=97, largest_ip_ports=109)
    pace = AgentPace(agents=1, rate_pps=1000, per_target_pps=20, backend="connect", concurrency=256,
                     connect_timeout_s=3.0, read_timeout_s=5.0)
    plan = plan_clock(costs, pace, shortest_interval_h=LADDER0_H, sweep_interval_h=SWEEP_H)
    rate = 256 / 3.0
    assert plan.sweep_s == pytest.approx(1024 * 97 / rate)
    assert plan.first_pass_s == pytest.approx(1024 * 109 / rate)
    assert plan.classify_s == pytest.approx(109 / 20 + 3 + 5)
    day = plan.day_seconds
    # The sweep period (3.5 days) holds two sweeps, and two first passes; the shortest rescan two
    # classification scans of one IP.
    assert day * SWEEP_H / 24 >= 2 * plan.sweep_s - 1 and day * SWEEP_H / 24 >= 2 * plan.first_pass_s - 1
    assert day * LADDER0_H / 24 >= 2 * plan.classify_s - 1
    assert "first pass" in plan.reason  # the largest need here


def test_a_fast_scanner_on_a_small_block_gets_the_minimum_day():
    costs = ScanCosts(addresses=256, initial_ports=109, silent_ports=97, largest_ip_ports=109)
    pace = AgentPace(agents=2, rate_pps=100_000, per_target_pps=5000, backend="masscan")
    plan = plan_clock(costs, pace, shortest_interval_h=LADDER0_H, sweep_interval_h=SWEEP_H)
    assert plan.day_seconds == pytest.approx(max(MIN_DAY_S, 2 * plan.classify_s * 2), abs=0.1)
    assert "s per virtual day" in plan.describe()


def test_the_politeness_cap_sets_the_day_when_one_ip_takes_longest():
    costs = ScanCosts(addresses=256, initial_ports=109, silent_ports=97, largest_ip_ports=5100)
    pace = AgentPace(agents=4, rate_pps=100_000, per_target_pps=20, backend="masscan")
    plan = plan_clock(costs, pace, shortest_interval_h=LADDER0_H, sweep_interval_h=SWEEP_H)
    assert plan.day_seconds == pytest.approx(2 * (5100 / 20 + 3 + 5) * 2, rel=1e-3)
    assert "classification" in plan.reason

"""The exploration of wider sweeps where sporadic devices live (``bench/explore_wide_sweeps.py``): which
/24s the oracle picks, and that only the silent, forgotten addresses of those /24s get the wide set;
the figures in docs/EVALUATION.md rest on this."""

from __future__ import annotations

import importlib.util

import numpy as np

from scanflow.adaptive import AdaptiveParams, make_policy
from scanflow.config import REPO_ROOT
from scanflow.policy import Reason
from scanflow.portsets import PortSet
from scanflow.world.dynamics import INITIAL, RETURNED, SPORADIC, STATIC
from scanflow.world.hosts import GENERIC
from tests.unit.scanflow.test_adaptive import ESTIMATOR, HIK, SETS, T0, obs
from tests.unit.scanflow.test_simulate import tiny_world

_spec = importlib.util.spec_from_file_location("explore_wide_sweeps", REPO_ROOT / "bench" / "explore_wide_sweeps.py")
explore = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(explore)

WIDE = PortSet.named("wide-sweep", 1, {80, 554, 8000, 8080})


def policy(blocks):
    pol = make_policy("adaptive", SETS, ESTIMATOR, adaptive_params=AdaptiveParams(light_ports=4, initial_scan="light"))
    pol.__class__ = explore.WideSweeps
    pol.wide, pol.wide_blocks = WIDE, frozenset(blocks)
    return pol


def test_the_oracle_picks_the_24s_where_a_sporadic_device_answers():
    world = tiny_world([(3, 0, 86400, {80}, STATIC, INITIAL, GENERIC),
                        (300, 3600, 7200, {8080}, SPORADIC, RETURNED, GENERIC),
                        (800, 0, 3600, {22}, SPORADIC, RETURNED, GENERIC)], n_ips=1024)
    assert explore.sporadic_blocks(world) == {1, 3}


def test_silent_addresses_of_a_wide_24_are_swept_with_the_wide_set_and_no_others():
    pol = policy({1})
    light = pol.port_sets.light
    for ip, expected in ((300, WIDE), (5, light)):
        _, plan = pol.decide(None, obs([], (), light), T0, ip)
        assert plan.reason is Reason.SWEEP and plan.ports == expected, ip
        assert pol.sweep_set(ip) == expected
    # a remembered device keeps its light probe in a wide /24: only forgotten addresses get the wide set
    state, _ = pol.decide(None, obs([80], {80: HIK}, light), T0, 300)
    state, _ = pol.decide(state, obs([80, 554], {80: HIK}, pol.port_sets.followup), T0 + 300, 300)
    silent, plan = pol.decide(state, obs([], (), pol.ports_for(state)), T0 + 43200, 300)
    assert silent.recall and plan.ports == light
    # without a wide /24 it is the adaptive policy as it is
    assert all(policy(()).sweep_set(ip) == light for ip in np.arange(0, 1024, 97))

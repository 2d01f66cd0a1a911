"""Calibration: the paper's measured facts, measured again on generated worlds.

Each test names the fact and its source (docs/WORLD.md has the table). Tolerances are what a world of
this size can resolve (sampling noise), not room for tuning.
"""

from __future__ import annotations

import numpy as np
import pytest

from scanflow.estimate import Estimator
from scanflow.knowledge import load_knowledge
from scanflow.world import World, WorldConfig
from scanflow.world.config import DAY
from scanflow.world.hosts import HONEYPOT
from scanflow.world.observe import fixed_point_observation

N = 300_000


@pytest.fixture(scope="module")
def worlds() -> list[World]:
    return [World.generate(WorldConfig(n_ips=N), seed=s, horizon_days=56) for s in (11, 12)]


@pytest.fixture(scope="module")
def observations(worlds):
    # the paper selected IPs in its Dec 2018 full-port scan and observed them from 18 Jan 2019, twice a
    # day for three weeks; here: selected at day 0, observed from day 35 for 42 rounds of 12 h
    return [fixed_point_observation(w, start=35 * DAY, select_at=0, rounds=42) for w in worlds]


def test_responsive_share_at_any_instant_is_between_the_papers_two_scans(worlds):
    # 2.7 % (Dec 2018 full-port scan) and 2.30 % (Apr 2019 national scan)
    for w in worlds:
        for t in (0, 9.5 * DAY, 30 * DAY, 55 * DAY):
            share = len(w.responsive_at(t)) / w.n_ips
            assert 0.023 <= share <= 0.027, (w.seed, t, share)


def test_about_70_percent_of_responsive_ips_never_change_in_three_weeks(observations):
    shares = [o.unchanged_share for o in observations]
    assert 0.67 <= np.mean(shares) <= 0.73, shares


def test_the_most_frequent_change_interval_is_12_hours(observations):
    for o in observations:
        assert o.most_frequent_change_interval_hours() == 12.0
        assert len(o.change_intervals()) > 1000


def test_sporadic_responders_answer_about_3_45_times_in_two_weeks():
    # IPs answering in < 80 % of the rounds answered 3.45 times in 2 weeks on average ("once in 4 days").
    # The fact says how rarely an intermittent host answers (sporadic_duty, sporadic_on_hours), not how
    # many there are: Table 4's PDR caps their share near 0.25 %, too few to form the group in the
    # default world, whose < 80 % group is then mostly static hosts that left (~12 answers; see
    # docs/WORLD.md, Limitations). So it is measured where the class forms the group: the default
    # world with the pre-calibration shares (scenario sporadic-heavy), same behaviour parameters.
    from scanflow.scenarios import scenario

    cfg = scenario("sporadic-heavy").config().replace(n_ips=N)
    worlds = [World.generate(cfg, seed=s, horizon_days=56) for s in (11, 12)]
    means = [fixed_point_observation(w, start=35 * DAY, select_at=0, rounds=42).sporadic_mean_answers(
        rounds=28, threshold=0.8) for w in worlds]
    assert all(n > 300 for _, n in means), means
    assert 3.0 <= np.mean([m for m, _ in means]) <= 3.9, means


def test_in_the_default_world_the_rarely_answering_group_is_small_and_says_so(observations):
    # the other side of the above, measured and kept visible: few IPs answer < 80 % of the rounds
    means = [o.sporadic_mean_answers(rounds=28, threshold=0.8) for o in observations]
    assert all(n < 300 for _, n in means), means


def test_about_0_2_percent_of_responsive_ips_are_honeypots_with_100_or_more_ports(worlds):
    for w in worlds:
        s = w.segments
        live = np.flatnonzero((s.start <= 0) & (s.end > 0))
        ports = w.profiles.n_ports[w.seg_profile[live]]
        share = (ports >= 100).mean()
        assert 0.0008 <= share <= 0.0035, share
        assert (w.profiles.kind[w.seg_profile[live]][ports >= 100] == HONEYPOT).all()


def test_about_3_percent_of_responsive_ips_run_a_model_the_estimator_recognises(worlds):
    kb = load_knowledge()
    est = Estimator(kb)
    w = worlds[0]
    s = w.segments
    live = np.flatnonzero((s.start <= 0) & (s.end > 0))
    recognised = 0
    for seg in live[w.profiles.model[w.seg_profile[live]] >= 0]:
        prof = w.seg_profile[seg]
        lo, hi = w.profiles.ptr[prof], w.profiles.ptr[prof + 1]
        banners = [(int(w.profiles.port[e]), w.banner(seg, e, 0)) for e in range(lo, hi)]
        got = est.estimate(frozenset(w.profiles.port[lo:hi].tolist()), [(p, b) for p, b in banners if b])
        recognised += got.model == kb.devices[w.profiles.model[prof]].id
    share = recognised / len(live)
    assert 0.023 <= share <= 0.037, share

"""Structure real scanners exploit, measured on generated worlds: hosts clustered in stable /24 blocks
(TASS), devices renumbered inside their pool, services that co-occur on one host (GPS), firmware
updates that change a version but not the model. Each property is switched by a WorldConfig field;
off, the world is the one without it."""

from __future__ import annotations

import numpy as np
import pytest

from scanflow.fingerprint import answer_fingerprint
from scanflow.world import World, WorldConfig
from scanflow.world.blocks import BLOCK_SIZE
from scanflow.world.config import DAY
from scanflow.world.dynamics import APPEARED, CHANGED, DYNAMIC

N = 100_000


@pytest.fixture(scope="module")
def world() -> World:
    return World.generate(WorldConfig(n_ips=N), seed=5, horizon_days=56)


@pytest.fixture(scope="module")
def flat() -> World:
    return World.generate(WorldConfig(n_ips=N, blocks=False, pool_move_share=0.0), seed=5, horizon_days=56)


def _per_block(w: World, t: float) -> np.ndarray:
    return np.bincount(w.responsive_at(t) // BLOCK_SIZE, minlength=-(-w.n_ips // BLOCK_SIZE))


def _fingerprint(w: World, seg: int) -> str:
    prof = int(w.seg_profile[seg])
    lo, hi = w.profiles.ptr[prof], w.profiles.ptr[prof + 1]
    t = int(w.segments.start[seg])
    banners = [(int(w.profiles.port[e]), w.banner(seg, e, t)) for e in range(lo, hi)]
    return answer_fingerprint(w.profiles.port[lo:hi].tolist(), [(p, b) for p, b in banners if b])


# -- blocks ---------------------------------------------------------------------------------------


def test_hosts_cluster_in_a_minority_of_24s_with_blocks_and_spread_without(world, flat):
    c, u = _per_block(world, 0), _per_block(flat, 0)
    assert c.var() / c.mean() > 5, c.var() / c.mean()
    assert 0.7 < u.var() / u.mean() < 1.4, u.var() / u.mean()
    share_for_90 = [(np.searchsorted(np.cumsum(np.sort(x)[::-1]), 0.9 * x.sum()) + 1) / len(x) for x in (c, u)]
    assert share_for_90[0] < 0.3 and share_for_90[1] > 0.6, share_for_90


def test_the_24s_with_hosts_are_stable_over_eight_weeks(world):
    week0, week8 = _per_block(world, 0) > 0, _per_block(world, 55.9 * DAY) > 0
    assert (week0 & week8).sum() / week0.sum() > 0.9


def test_blocks_move_hosts_but_keep_the_class_sizes_and_the_responsive_share(world, flat):
    s, f = world.segments, flat.segments
    for cls in range(4):
        a, b = len(np.unique(s.ip[s.cls == cls])), len(np.unique(f.ip[f.cls == cls]))
        assert abs(a - b) <= 3 * max(b, 1) ** 0.5 + 2, (cls, a, b)
    for t in (0, 20 * DAY):
        assert abs(len(world.responsive_at(t)) - len(flat.responsive_at(t))) < 0.05 * len(flat.responsive_at(t))


# -- moves inside a pool ---------------------------------------------------------------------------


def test_some_pooled_devices_move_inside_their_pool_keeping_their_fingerprint(world):
    s = world.segments
    dyn = np.flatnonzero(s.cls == DYNAMIC)
    moved = dyn[s.event[dyn] == APPEARED]
    arrivals = (s.event[dyn] == CHANGED).sum() + len(moved)
    # about pool_move_share of the leases that end bring back a device that left another address
    assert 0.25 * arrivals < len(moved) < 0.6 * arrivals, (len(moved), arrivals)
    checked = 0
    for seg in moved[:300]:
        segs = np.flatnonzero(s.device == s.device[seg])
        ips = np.unique(s.ip[segs])
        assert len(ips) >= 2 and len(ips) == len(segs), "a mover never comes back to an address it held"
        assert len(np.unique(ips // BLOCK_SIZE)) == 1, "a device stays in its pool"
        assert len({_fingerprint(world, int(x)) for x in segs}) == 1
        assert len(set(world.seg_profile[segs].tolist())) == 1
        checked += 1
    assert checked == min(300, len(moved)) > 50


def test_nobody_moves_with_a_zero_share(flat):
    s = flat.segments
    assert not ((s.cls == DYNAMIC) & (s.event == APPEARED)).any()
    dyn = s.cls == DYNAMIC
    _, n_ips = np.unique(s.device[dyn], return_counts=True)
    assert (n_ips == 1).all()


def test_the_new_fields_parse_from_text():
    cfg = WorldConfig().with_overrides({"blocks": "false", "pool_move_share": "0"})
    assert cfg.blocks is False and cfg.pool_move_share == 0.0
    assert WorldConfig(blocks=False).with_overrides({"blocks": "1"}).blocks is True
    with pytest.raises(ValueError, match="is not a bool"):
        WorldConfig().with_overrides({"blocks": "maybe"})
    d = WorldConfig().as_dict()
    assert {"blocks", "pool_move_share"} <= set(d)


# -- firmware updates ------------------------------------------------------------------------------


def _known_banners(w: World, seg: int, t: int) -> list[tuple[int, bytes]]:
    prof = int(w.seg_profile[seg])
    lo, hi = w.profiles.ptr[prof], w.profiles.ptr[prof + 1]
    return [(int(w.profiles.port[e]), b) for e in range(lo, hi) if (b := w.banner(seg, e, t))]


@pytest.mark.parametrize("days", [180.0, 0.0])
def test_firmware_updates_change_the_version_but_not_the_model(days):
    from scanflow.estimate import Estimator
    from scanflow.knowledge import load_knowledge
    from scanflow.world.hosts import KNOWN

    est = Estimator(load_knowledge())
    # many known devices (known_share raised) to measure the update rate on
    w = World.generate(WorldConfig(n_ips=40_000, known_share=0.5, firmware_update_days=days), seed=3,
                       horizon_days=365)
    s = w.segments
    # known devices on-line for a month or more: read at the start and the end of their stay
    segs = np.flatnonzero((s.end - s.start >= 30 * DAY) & (w.profiles.kind[w.seg_profile] == KNOWN))
    assert len(segs) > 200
    changed = same_model = 0
    for seg in segs:
        first = _known_banners(w, seg, int(s.start[seg]))
        last = _known_banners(w, seg, int(s.end[seg]) - 1)
        ports = frozenset(w.profiles.ports_of(int(w.seg_profile[seg])).tolist())
        if answer_fingerprint(sorted(ports), first) != answer_fingerprint(sorted(ports), last):
            changed += 1
            same_model += est.estimate(ports, first).model == est.estimate(ports, last).model
    if days == 0:
        assert changed == 0
        assert not w.firmware_version(s.device[segs], s.end[segs]).any()
    else:
        # Poisson updates, one per 180 days on average: P(at least one in a stay of L) = 1 - exp(-L/180 d)
        expected = (1 - np.exp(-(s.end[segs] - s.start[segs]) / (days * DAY))).mean()
        assert abs(changed / len(segs) - expected) < 0.06, (changed / len(segs), expected)
        assert same_model == changed, "the estimator names the same model after an update"


# -- software stacks (co-occurring services) --------------------------------------------------------


def _survey(stacks: bool):
    from scanflow.world import survey_world

    table = survey_world(WorldConfig(stacks=stacks), 0, n_ips=4_000_000, responsive_fraction=0.027)
    return table["ip"].to_numpy().astype(np.int64), table["port"].to_numpy().astype(np.int64)


@pytest.fixture(scope="module")
def surveys():
    return {s: _survey(s) for s in (True, False)}


def _top5_recall(ip: np.ndarray, port: np.ndarray, k: int = 5, seed: int = 0) -> tuple[float, float]:
    """GPS-style prediction: learn on half of the hosts (2-99 open ports) how often each port is open
    with each other one; on the other half, give one random open port of a host and measure the share
    of its other open ports found in the top ``k`` of (a) the ports most often open with it, (b) the
    plain popularity ranking. Returns the mean recalls (conditional, plain)."""
    w = 65536
    _, inv, cnt = np.unique(ip, return_inverse=True, return_counts=True)
    keep = (cnt[inv] >= 2) & (cnt[inv] < 100)
    order = np.lexsort((port[keep], inv[keep]))
    host, port = inv[keep][order], port[keep][order]
    train = (np.random.default_rng(seed).random(len(cnt)) < 0.5)[host]
    plain = np.argsort(-np.bincount(port[train], minlength=w), kind="stable")[:k].tolist()
    th, tp = host[train], port[train]
    starts = np.flatnonzero(np.r_[True, th[1:] != th[:-1]])
    sizes = np.diff(np.r_[starts, len(th)])
    pairs = []
    for n in np.unique(sizes):
        p = tp[starts[sizes == n][:, None] + np.arange(n)]
        a, b = np.repeat(p, n, axis=1).ravel(), np.tile(p, (1, n)).ravel()
        pairs.append((a * w + b)[a != b])
    code, times = np.unique(np.concatenate(pairs), return_counts=True)
    a, b = code // w, code % w
    o = np.lexsort((b, -times, a))
    top: dict[int, list[int]] = {}
    for x, y in zip(a[o].tolist(), b[o].tolist()):
        if len(top.setdefault(x, [])) < k:
            top[x].append(y)
    eh, ep = host[~train], port[~train]
    starts = np.flatnonzero(np.r_[True, eh[1:] != eh[:-1]])
    ends = np.r_[starts[1:], len(eh)]
    pick = np.random.default_rng(seed + 1)
    cond = flat = 0.0
    for s, e in zip(starts.tolist(), ends.tolist()):
        ports = ep[s:e].tolist()
        given = ports[int(pick.integers(len(ports)))]
        others = set(ports) - {given}
        ranked = top.get(given, [])
        ranked = ranked + [p for p in plain if p != given and p not in ranked][:k - len(ranked)]
        cond += len(others & set(ranked)) / len(others)
        flat += len(others & set(plain)) / len(others)
    return cond / len(starts), flat / len(starts)


def test_services_on_one_host_predict_each_other_with_stacks(surveys):
    # given one open port, ranking the others by co-occurrence beats the plain ranking (GPS); with
    # independent draws only by the place the plain ranking spends on the given port itself
    cond, plain = _top5_recall(*surveys[True])
    assert cond - plain > 0.10, (cond, plain)  # ~0.15
    cond, plain = _top5_recall(*surveys[False])
    assert -0.01 < cond - plain < 0.04, (cond, plain)  # ~0.015


def test_stacks_keep_every_ports_and_every_hosts_count(surveys):
    (ip1, p1), (ip0, p0) = surveys[True], surveys[False]
    assert np.array_equal(np.bincount(p1, minlength=65536), np.bincount(p0, minlength=65536))
    assert np.array_equal(np.unique(ip1, return_counts=True)[1], np.unique(ip0, return_counts=True)[1])
    assert np.array_equal(np.unique(ip1), np.unique(ip0))
    # and they do move ports: a good part of the (host, port) pairs of hosts with < 100 ports are new
    _, inv, cnt = np.unique(ip0, return_inverse=True, return_counts=True)
    moved = len(np.setdiff1d(ip1 * 65536 + p1, ip0 * 65536 + p0))
    assert moved > 0.2 * (cnt[inv] < 100).sum(), (moved, (cnt[inv] < 100).sum())


def test_stacks_keep_the_silent_set(surveys):
    # only the most popular ports move (a survey ranks them first) and every host keeps as many of
    # them: the device-detection curve of the paper's derivation is unchanged past them, so the
    # silent set is the same (and the ranking, hence the standard and unknown-device sets)
    import pyarrow as pa

    from scanflow.portsets import derive_port_sets
    from scanflow.world.hosts import movable_ranks

    top = movable_ranks(WorldConfig().ports)
    assert 100 <= top <= 200, top
    d = [derive_port_sets(pa.table({"ip": ip, "port": p.astype(np.int32)}), device_ports=(), malware_ports=(),
                          created="2018-12-31") for ip, p in (surveys[True], surveys[False])]
    assert d[0].ranking == d[1].ranking
    assert d[0].silent.ports == d[1].silent.ports and d[0].unknown.ports == d[1].unknown.ports
    assert d[0].ddr_curve[top + 20:] == d[1].ddr_curve[top + 20:]
    assert d[0].ddr_curve[:top] != d[1].ddr_curve[:top]  # stacks do move ports among the top ones


def test_stacks_parse_and_leave_everything_else_alone():
    cfg = WorldConfig().with_overrides({"stacks": "false", "stack_share": "0.5"})
    assert cfg.stacks is False and cfg.stack_share == 0.5
    with pytest.raises(ValueError, match="stack_share"):
        WorldConfig(stack_share=1.5)
    on = World.generate(WorldConfig(n_ips=20_000), seed=4, horizon_days=14)
    again = World.generate(WorldConfig(n_ips=20_000), seed=4, horizon_days=14)
    off = World.generate(WorldConfig(n_ips=20_000, stacks=False), seed=4, horizon_days=14)
    assert np.array_equal(on.profiles.port, again.profiles.port)
    assert np.array_equal(on.profiles.ptr, off.profiles.ptr) and np.array_equal(on.segments.ip, off.segments.ip)
    assert not np.array_equal(on.profiles.port, off.profiles.port)

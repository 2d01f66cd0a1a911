"""The synthetic world: structure, determinism and the probe API the sim backend uses."""

from __future__ import annotations

import numpy as np
import pytest

from scanflow.world import World, WorldConfig, survey_world
from scanflow.world.config import DAY
from scanflow.world.dynamics import DYNAMIC, HONEYPOT_CLASS, SPORADIC
from scanflow.world.hosts import HONEYPOT, KNOWN


@pytest.fixture(scope="module")
def world() -> World:
    return World.generate(WorldConfig(n_ips=40_000), seed=7, horizon_days=28)


def test_same_seed_same_world_other_seed_other_world(world):
    again = World.generate(WorldConfig(n_ips=40_000), seed=7, horizon_days=28)
    for name in ("ip", "start", "end", "device", "cls", "event"):
        assert np.array_equal(getattr(world.segments, name), getattr(again.segments, name)), name
    assert np.array_equal(world.profiles.port, again.profiles.port)
    assert np.array_equal(world.device_token, again.device_token)
    other = World.generate(WorldConfig(n_ips=40_000), seed=8, horizon_days=28)
    assert not np.array_equal(world.segments.ip[:100], other.segments.ip[:100])


def test_segments_are_sorted_disjoint_and_inside_the_horizon(world):
    s = world.segments
    assert (s.start >= 0).all() and (s.end <= world.horizon).all() and (s.end > s.start).all()
    key = s.ip * (1 << 30) + s.start
    assert (np.diff(key) > 0).all()
    same_ip = s.ip[1:] == s.ip[:-1]
    assert (s.start[1:][same_ip] >= s.end[:-1][same_ip]).all(), "two devices on one address at once"
    assert (s.ip >= 0).all() and (s.ip < world.n_ips).all()


def test_probe_answers_exactly_the_open_probed_ports(world):
    t = 3 * DAY + 1234
    live = world.responsive_at(t)
    scan = world.full_port_scan(t).to_pydict()
    truth: dict[int, set[int]] = {}
    for ip, port in zip(scan["ip"], scan["port"]):
        truth.setdefault(ip, set()).add(port)
    assert set(truth) == set(live.tolist())
    ips = np.concatenate([live[:50], np.setdiff1d(np.arange(200), live)[:50]])
    ports = [80, 443, 22, 25, 7547, 8080]
    got: dict[int, set[int]] = {}
    for r in world.probe(ips, ports, t):
        got.setdefault(r.ip, set()).add(r.port)
    want = {ip: truth[ip] & set(ports) for ip in ips.tolist() if truth.get(ip, set()) & set(ports)}
    assert got == want


def test_probe_is_deterministic_including_banners(world):
    ips = world.responsive_at(DAY)[:30]
    a = world.probe(ips, range(1, 65536), DAY)
    b = world.probe(ips, range(1, 65536), DAY)
    assert a == b and any(r.banner for r in a)
    later = world.probe(ips, range(1, 65536), DAY + 600)
    assert [r.banner for r in later if r.banner] != [r.banner for r in a if r.banner], "dates must tick"


def test_probe_rejects_addresses_outside_the_world(world):
    with pytest.raises(ValueError, match="address indices"):
        world.probe([world.n_ips], [80], 0)


def test_address_round_trip(world):
    assert world.address(0) == "10.0.0.0" and world.address(258) == "10.0.1.2"
    assert world.index(world.address(39_999)) == 39_999
    with pytest.raises(ValueError):
        world.index("192.168.0.1")


def test_loss_drops_probes_independently_per_scanner():
    lossy = World.generate(WorldConfig(n_ips=40_000, loss=0.3), seed=7, horizon_days=7)
    ips = lossy.responsive_at(DAY)
    full = World.generate(WorldConfig(n_ips=40_000), seed=7, horizon_days=7).probe(ips, range(1, 1025), DAY, banners=False)
    a = lossy.probe(ips, range(1, 1025), DAY, scanner=1, banners=False)
    b = lossy.probe(ips, range(1, 1025), DAY, scanner=2, banners=False)
    kept = len(a) / len(full)
    assert 0.65 < kept < 0.75
    assert {(r.ip, r.port) for r in a} <= {(r.ip, r.port) for r in full}
    overlap = len({(r.ip, r.port) for r in a} & {(r.ip, r.port) for r in b}) / len(full)
    assert abs(overlap - 0.7 * 0.7) < 0.05, "the two scanners' losses must be independent"


def test_dynamic_addresses_rotate_among_a_few_set_ups(world):
    s = world.segments
    dyn_ips = np.unique(s.ip[s.cls == DYNAMIC])[:200]
    assert len(dyn_ips)
    for ip in dyn_ips:
        segs = np.flatnonzero(s.ip == ip)
        profiles = set(world.seg_profile[segs].tolist())
        devices = set(s.device[segs].tolist())
        assert len(profiles) <= world.config.dynamic_pool_types
        assert len(devices) == len(segs), "every occupant is its own device"


def test_sporadic_devices_come_back_as_the_same_device(world):
    s = world.segments
    ips = np.unique(s.ip[s.cls == SPORADIC])[:200]
    assert any((s.ip == ip).sum() > 1 for ip in ips)
    for ip in ips:
        assert len(set(s.device[s.ip == ip].tolist())) == 1


def test_honeypots_have_many_ports_and_known_devices_their_model_ports(world):
    s = world.segments
    honey = np.unique(world.seg_profile[s.cls == HONEYPOT_CLASS])
    assert len(honey) and (world.profiles.n_ports[honey] >= world.config.honeypot_min_ports).all()
    assert (world.profiles.kind[honey] == HONEYPOT).all()
    known = np.flatnonzero(world.profiles.kind == KNOWN)[:100]
    for p in known:
        model = world.profiles.models[world.profiles.model[p]]
        assert set(world.profiles.ports_of(p).tolist()) & model.ports


def test_survey_has_the_requested_size_and_response_rate():
    table = survey_world(WorldConfig(), 3, n_ips=400_000, responsive_fraction=0.027)
    ips = np.unique(table.column("ip").to_numpy())
    assert abs(len(ips) / 400_000 - 0.027) < 0.002
    assert table.column("port").to_numpy().min() >= 1 and table.column("port").to_numpy().max() <= 65535


def test_config_rejects_impossible_shares_and_parses_overrides():
    with pytest.raises(ValueError, match="shares|sporadic"):
        WorldConfig(dynamic_share=0.6, sporadic_share=0.5)
    with pytest.raises(ValueError, match="of the addresses"):
        WorldConfig(responsive_fraction=0.5, sporadic_duty=0.1, sporadic_share=0.125, dynamic_share=0.125)
    cfg = WorldConfig().with_overrides({"sporadic_share": "0.05", "n_ips": "2000", "dynamic_pool_types": "0"})
    assert (cfg.sporadic_share, cfg.n_ips, cfg.dynamic_pool_types) == (0.05, 2000, 0)
    with pytest.raises(ValueError, match="unknown world parameter"):
        WorldConfig().with_overrides({"nope": "1"})

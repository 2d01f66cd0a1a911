"""The adaptive policy, mechanism by mechanism, on hand-made addresses whose answers are worked out by
hand: the light set cut from the detection curve, the follow-up within the slot and its probe budget,
remembered devices, the learned per-prefix sweep cadence, the back-off of full probes."""

from __future__ import annotations

import numpy as np
import pytest

from scanflow.adaptive import (FOLLOWUP, FULL, LIGHT, AdaptiveParams, AdaptivePolicy, SweepCadence, adaptive_sets,
                               build_adaptive, light_size, make_policy)
from scanflow.estimate import Estimator
from scanflow.knowledge import load_knowledge
from scanflow.lifecycle.state import RefTable, Tracked, pack, unpack
from scanflow.lifecycle.step import Lifecycle
from scanflow.policy import DAY, HOUR, EfficientPolicy, IpStatus, Observation, PolicyPortSets, Reason
from scanflow.portsets import PortSet

T0 = 1_700_000_000.0
HIK = b"HTTP/1.1 200 OK\r\nDate: Mon, 01 Jan 2024 12:34:56 GMT\r\nServer: Hikvision-Webs\r\n\r\n"
HIK_LATER = b"HTTP/1.1 200 OK\r\nDate: Thu, 04 Jan 2024 01:02:03 GMT\r\nServer: Hikvision-Webs\r\n\r\n"
NGINX = b"HTTP/1.1 200 OK\r\nDate: Mon, 01 Jan 2024 12:34:56 GMT\r\nServer: nginx/1.24.0\r\n\r\n"
ESTIMATOR = Estimator(load_knowledge())
# ranking: 80, 23, 554, 8000, 443, 22, then 1..2000 in order; the standard set is 1..2000 plus those
RANKING = (80, 23, 554, 8000, 443, 22) + tuple(p for p in range(1, 2001) if p not in (80, 23, 554, 443, 22))
SETS = PolicyPortSets(PortSet.named("standard", 1, set(RANKING)),
                      PortSet.named("silent", 1, RANKING[:10]),
                      PortSet.named("unknown", 1, RANKING[:1000]),
                      RANKING, tuple(min(1.0, 0.5 + 0.1 * k) for k in range(len(RANKING))))


def policy(**params) -> AdaptivePolicy:
    return make_policy("adaptive", SETS, ESTIMATOR, adaptive_params=AdaptiveParams(light_ports=4, **params))


def obs(ports, banners=(), probed=None, complete=True) -> Observation:
    return Observation.of(ports, dict(banners), probed, complete)


def test_the_light_set_is_as_many_top_ranked_ports_as_the_detection_curve_needs():
    curve = (0.5, 0.8, 0.93, 0.95, 0.99)
    assert light_size(curve, 0.93) == 3 and light_size(curve, 0.94) == 4 and light_size(curve, 1.0) == 5
    pol = build_adaptive(SETS, RANKING, curve, ESTIMATOR, AdaptiveParams(light_target=0.93))
    assert pol.port_sets.light.ports == {80, 23, 554}


def test_a_light_probe_and_its_follow_up_never_exceed_the_standard_set():
    pol = policy()
    s = pol.port_sets
    assert s.light.ports == {80, 23, 554, 8000}
    assert s.light.ports <= s.followup.ports <= s.standard.ports
    small = [ps for ps in pol.published()
             if ps.name not in ("standard", "followup", "unknown-light", "followup-rest", "followup-first", "silent")]
    assert max(len(ps) for ps in small) + len(s.followup) <= len(s.standard)
    # a change seen with the unknown-device set is followed up on the rest of the standard set
    assert s.rest.ports.isdisjoint(s.unknown.ports) and len(s.unknown) + len(s.rest) <= len(s.standard)
    # the dropped ports are the lowest-ranked ones
    assert s.standard.ports - s.followup.ports == set(RANKING[-(len(s.standard) - len(s.followup)):])


def test_a_new_responder_is_followed_up_within_minutes_with_the_follow_up_set():
    pol = policy(initial_scan="light")
    state, plan = pol.start(T0)
    assert plan.ports is pol.port_sets.light and plan.reason is Reason.INITIAL
    state, plan = pol.decide(state, obs([80], {80: HIK}, plan.ports), T0)
    assert plan.at == T0 + 300 and plan.ports is pol.port_sets.followup
    assert plan.reason is Reason.NEW_RESPONDER and plan.changed
    assert state.probe == FOLLOWUP and state.followup_at == T0 and state.responsive
    # the follow-up finds the camera's ports and names it; the next probe is 12 h later, a full one
    state, plan = pol.decide(state, obs([80, 554, 8000], {80: HIK}, plan.ports), T0 + 300)
    assert state.status is IpStatus.RESPONSIVE_ESTIMATED and state.device == "hikvision-ipc"
    assert state.open_ports == {80, 554, 8000} and state.full_at == T0 + 300
    assert plan.at == T0 + 300 + 12 * HOUR and state.probe == FULL
    assert plan.ports.ports == pol.port_sets.light.ports | ESTIMATOR.port_set("hikvision-ipc").ports
    assert not plan.changed


def test_full_probes_back_off_on_the_ladder_and_light_probes_fill_the_slots_between():
    pol = policy(initial_scan="light")
    state, plan = pol.start(T0)
    state, plan = pol.decide(state, obs([80], {80: HIK}, plan.ports), T0)
    now = T0 + 300
    state, plan = pol.decide(state, obs([80, 554, 8000], {80: HIK}, plan.ports), now)
    kinds = []
    for _ in range(10):
        now = plan.at
        answer = obs(sorted({80, 554, 8000} & plan.ports.ports), {80: HIK_LATER}, plan.ports)
        state, plan = pol.decide(state, answer, now)
        assert plan.at - now == 12 * HOUR and plan.reason is Reason.BACKOFF and not plan.changed
        kinds.append(state.probe)
    # ladder 12 h, 1 d, 2 d, ...: after the first full probe (step 1: 1 d) one light slot, then
    # (step 2: 2 d) three light slots, and so on
    assert kinds[:6] == [LIGHT, FULL, LIGHT, LIGHT, LIGHT, FULL]
    assert state.step == 3


def test_models_with_active_exploitation_have_a_shorter_back_off_cap():
    pol = make_policy("adaptive", SETS, ESTIMATOR, adaptive_params=AdaptiveParams(light_ports=4, exploited_cap=DAY),
                      exploited={"hikvision-ipc"})
    state, plan = pol.start(T0)
    state, plan = pol.decide(state, obs([80], {80: HIK}, pol.port_sets.light), T0)
    state, plan = pol.decide(state, obs([80, 554, 8000], {80: HIK}, plan.ports), T0 + 300)
    fulls = []
    for _ in range(12):
        now = plan.at
        was_full = state.probe == FULL
        state, plan = pol.decide(state, obs(sorted({80, 554, 8000} & plan.ports.ports), {80: HIK}, plan.ports), now)
        if was_full:
            fulls.append(now)
    gaps = {b - a for a, b in zip(fulls, fulls[1:])}
    assert gaps == {DAY}    # the cap (1 d) instead of the ladder's 2 d, 3 d, ...


def test_a_changed_answer_is_followed_up_but_only_once_per_slot():
    pol = policy(initial_scan="light")
    state, plan = pol.start(T0)
    state, plan = pol.decide(state, obs([80], {80: HIK}, plan.ports), T0)
    state, plan = pol.decide(state, obs([80, 554], {80: HIK}, plan.ports), T0 + 300)
    # 12 h later another device answers on port 80: follow up
    t1 = plan.at
    state, plan = pol.decide(state, obs([80], {80: NGINX}, plan.ports), t1)
    assert plan.reason is Reason.CHANGED and plan.at == t1 + 300 and plan.ports is pol.port_sets.followup
    state, plan = pol.decide(state, obs([80], {80: NGINX}, plan.ports), t1 + 300)
    assert state.probe != FOLLOWUP
    # and if it changes again within the same 12 h, no second follow-up: estimated from what answered
    state2, plan2 = pol.decide(state, obs([23], {}, pol.port_sets.light), t1 + 3600)
    assert plan2.reason is Reason.CHANGED and plan2.ports is not pol.port_sets.followup
    assert plan2.at == t1 + 3600 + 12 * HOUR


def test_a_remembered_device_coming_back_triggers_no_follow_up():
    pol = policy(initial_scan="light")
    state, plan = pol.start(T0)
    state, plan = pol.decide(state, obs([80], {80: HIK}, plan.ports), T0)
    state, plan = pol.decide(state, obs([80, 554], {80: HIK}, plan.ports), T0 + 300)
    device, step = state.device, state.step
    # it goes away: remembered, probed with the light set every 12 h, still tracked by the lifecycle
    now = plan.at
    gone, plan = pol.decide(state, obs([], (), plan.ports), now)
    assert gone.status is IpStatus.NON_RESPONSIVE and gone.recall == {80, 554} and plan.changed
    assert plan.ports is pol.port_sets.light and plan.at == now + 12 * HOUR
    tracked, _ = Lifecycle(pol).observe("198.18.0.9", None, obs([80], {80: HIK}, pol.port_sets.light), T0)
    assert tracked is not None
    # the same camera answers again: resumed where it was, no follow-up, not a change
    assert device == "hikvision-ipc"
    back, plan = pol.decide(gone, obs([80, 554], {80: HIK_LATER}, plan.ports), plan.at)
    assert back.status is IpStatus.RESPONSIVE_ESTIMATED and back.device == device and back.step == step
    assert plan.ports is not pol.port_sets.followup and not plan.changed and plan.reason is Reason.BACKOFF
    # another device on the address: a new responder, followed up
    other, plan = pol.decide(gone, obs([80], {80: NGINX}, pol.port_sets.light), now + 12 * HOUR)
    assert plan.ports is pol.port_sets.followup and plan.reason is Reason.NEW_RESPONDER


def test_a_remembered_device_is_forgotten_after_memory_for():
    pol = policy(initial_scan="light", memory_for=2 * DAY)
    state, plan = pol.start(T0)
    state, plan = pol.decide(state, obs([80], {80: HIK}, plan.ports), T0)
    state, plan = pol.decide(state, obs([80, 554], {80: HIK}, plan.ports), T0 + 300)
    now = plan.at
    while True:
        state, plan = pol.decide(state, obs([], (), plan.ports), now)
        if not state.recall:
            break
        now = plan.at
    assert now + 12 * HOUR - (T0 + 300) > 2 * DAY
    tracked, decided = Lifecycle(pol).observe("198.18.0.9", Tracked(state, 0, Reason.SWEEP, False, 0, 0),
                                              obs([], (), pol.port_sets.light), now + 12 * HOUR)
    assert tracked is None and decided.plan.ports is pol.port_sets.light


def test_quiet_prefixes_are_swept_less_often_once_learned():
    cadence = SweepCadence(12 * HOUR, 3.5 * DAY).learned(prefixes=[0, 1, 2], answered=[1])
    assert cadence.quiet == {0, 2}
    assert cadence.interval(5) == 3.5 * DAY and cadence.interval(256 + 5) == 12 * HOUR
    assert cadence.interval("10.0.0.7") == 12 * HOUR   # text addresses are parsed: 10.0.0.0/24 is not prefix 0
    assert list(cadence.intervals([5, 300, 600])) == [3.5 * DAY, 12 * HOUR, 3.5 * DAY]
    assert SweepCadence.from_dict(cadence.to_dict()).quiet == cadence.quiet
    pol = make_policy("adaptive", SETS, ESTIMATOR, adaptive_params=AdaptiveParams(light_ports=4), cadence=cadence)
    _, plan = pol.decide(None, obs([], (), pol.port_sets.light), T0, ip=7)
    assert plan.at == T0 + 3.5 * DAY and plan.reason is Reason.SWEEP
    _, plan = pol.decide(None, obs([], (), pol.port_sets.light), T0, ip=260)
    assert plan.at == T0 + 12 * HOUR
    off = make_policy("adaptive", SETS, ESTIMATOR, cadence=cadence,
                      adaptive_params=AdaptiveParams(light_ports=4, learned_cadence=False))
    assert off.decide(None, obs([], (), off.port_sets.light), T0, ip=7)[1].at == T0 + 12 * HOUR


def test_a_silent_first_probe_larger_than_the_light_probes_gets_a_follow_up_of_its_own():
    big_silent = PolicyPortSets(SETS.standard, PortSet.named("silent", 1, RANKING[:300]), SETS.unknown,
                                SETS.ranking, SETS.ddr_curve)
    pol = make_policy("adaptive", big_silent, ESTIMATOR, adaptive_params=AdaptiveParams(light_ports=4))
    s = pol.port_sets
    assert s.first is not None and len(s.deep) + len(s.first) == len(s.standard)
    assert len(s.followup) > len(s.first)       # a light probe's follow-up keeps more of the standard set
    state, plan = pol.decide(None, obs([80], {80: HIK}, big_silent.silent), T0)
    assert plan.ports is s.first and plan.at == T0 + 300
    state, plan = pol.decide(state, obs([80, 554, 8000], {80: HIK}, plan.ports), T0 + 300)
    assert state.device == "hikvision-ipc" and state.probe == FULL


def test_the_first_probe_is_the_papers_silent_set_by_default():
    pol = policy()
    assert pol.start(T0)[1].ports is SETS.silent
    # a first probe's answer is followed up: the silent set plus the follow-up fit in a slot
    state, plan = pol.decide(None, obs([80], {80: HIK}, SETS.silent), T0)
    assert plan.ports is pol.port_sets.followup and len(SETS.silent) + len(plan.ports) <= len(SETS.standard)


def test_adaptive_state_survives_the_compact_form_and_paper_state_keeps_version_1():
    pol = policy(initial_scan="light")
    state, plan = pol.start(T0)
    state, plan = pol.decide(state, obs([80], {80: HIK}, plan.ports), T0)
    t = Tracked(state, plan.at, plan.reason, False, T0, T0)
    refs = RefTable.of_policy(pol)
    data = pack(t, refs)
    assert data[0] == 2 and unpack(data, refs) == t
    paper = EfficientPolicy(SETS, ESTIMATOR)
    pstate, pplan = paper.decide(None, obs([80], {80: HIK}, SETS.standard), T0)
    pt = Tracked(pstate, pplan.at, pplan.reason, False, T0, T0)
    pdata = pack(pt, RefTable.of_policy(paper))
    assert pdata[0] == 1 and unpack(pdata, RefTable.of_policy(paper)) == pt


def test_unknown_policy_names_and_missing_rankings_are_clear_errors():
    with pytest.raises(ValueError, match="known: adaptive, paper"):
        make_policy("fast", SETS, ESTIMATOR)
    bare = PolicyPortSets(SETS.standard, SETS.silent, SETS.unknown)
    with pytest.raises(ValueError, match="ranking"):
        make_policy("adaptive", bare, ESTIMATOR)
    with pytest.raises(ValueError, match="followup_delay"):
        AdaptiveParams(followup_delay=13 * HOUR)
    assert isinstance(make_policy("paper", bare, ESTIMATOR), EfficientPolicy)


def test_adaptive_sets_refuse_a_light_set_larger_than_the_ranking():
    with pytest.raises(ValueError, match="light set"):
        adaptive_sets(SETS, RANKING[:3], 5)


# -- on a small simulated world -------------------------------------------------------------------


@pytest.fixture(scope="module")
def sporadic_world():
    from scanflow.evaluation import EvaluationConfig, derive_policy_sets
    from scanflow.scenarios import scenario

    kb = load_knowledge()
    cfg = EvaluationConfig(ips=6_000, weeks=2, windows=(2,), seeds=(3,), survey_ips=400_000, record=False,
                           world=scenario("sporadic-heavy").config(), policy="adaptive")
    derivation, _ = derive_policy_sets(cfg, kb)
    return cfg, PolicyPortSets.of(derivation), kb


def test_on_a_world_the_follow_up_finds_new_devices_within_the_round_and_no_slot_exceeds_the_standard(
        sporadic_world):
    from dataclasses import replace as dc_replace

    from scanflow.evaluation import _run_both

    cfg, sets, kb = sporadic_world
    _, _, _, eff, _ = _run_both(cfg, 3, 2, sets, kb, record=False, progress=None)
    _, _, _, slow, _ = _run_both(dc_replace(cfg, adaptive=AdaptiveParams(followup=False)), 3, 2, sets, kb,
                                 record=False, progress=None)
    assert 0 < eff.max_slot_probes <= len(sets.standard)
    assert 0 < slow.max_slot_probes <= len(sets.standard)

    def whole_in_first_round(run) -> float:
        """Share of the addresses found whose every port found was found in their first round."""
        ips = run.cells >> 16
        first, last = {}, {}
        for ip, r in zip(ips.tolist(), run.cell_round.tolist()):
            first[ip] = min(first.get(ip, r), r)
            last[ip] = max(last.get(ip, r), r)
        return sum(first[ip] == last[ip] for ip in first) / len(first)

    # with the follow-up an address's ports come in the round it first answered; without it, the
    # ports outside the light set wait for later probes
    assert whole_in_first_round(eff) > whole_in_first_round(slow)
    assert len(eff.cells) > len(slow.cells)


def test_a_change_seen_with_the_unknown_set_is_followed_up_on_the_rest_of_the_standard_set():
    pol = policy(initial_scan="light")
    s = pol.port_sets
    state, plan = pol.decide(None, obs([80], {}, s.light), T0)
    state, plan = pol.decide(state, obs([80, 1500], {}, plan.ports), T0 + 300)   # not a model: unestimated
    assert state.device is None and state.probe == FULL and plan.ports is s.unknown
    # 12 h later the full probe sees another port: estimated from it, then the rest within minutes
    t1 = plan.at
    state, plan = pol.decide(state, obs([80, 999], {}, s.unknown), t1)
    assert plan.reason is Reason.CHANGED and plan.ports is s.rest and plan.at == t1 + 300
    after, plan = pol.decide(state, obs([1999], {}, s.rest), t1 + 300)
    assert after.open_ports == {80, 999, 1999} and plan.at == t1 + 300 + 12 * HOUR and not plan.changed
    # nothing more on the rest is not silence: the device keeps its ports and stays tracked
    after, plan = pol.decide(state, obs([], {}, s.rest), t1 + 300)
    assert after.responsive and after.open_ports == {80, 999} and plan.reason is Reason.BACKOFF


def test_the_simulator_learns_the_sweep_table_on_the_worlds_real_prefixes(sporadic_world):
    from scanflow.evaluation import _run_both
    from scanflow.world.model import BASE_ADDRESS

    cfg, sets, kb = sporadic_world
    captured = {}
    import scanflow.adaptive as adaptive_mod
    real = adaptive_mod.make_policy

    def spy(*args, **kwargs):
        captured["policy"] = real(*args, **kwargs)
        return captured["policy"]

    adaptive_mod.make_policy = spy
    try:
        world, _, _, eff, _ = _run_both(cfg, 3, 2, sets, kb, record=False, progress=None)
    finally:
        adaptive_mod.make_policy = real
    cadence = captured["policy"].cadence
    assert cadence.offset == BASE_ADDRESS and cadence.quiet
    quiet = cadence.to_dict()["quiet_prefixes"]
    assert all(n.startswith("10.0.") for n in quiet)
    answered = {world.address(int(ip)).rsplit(".", 1)[0] for ip in (eff.cells >> 16).tolist()}
    assert not answered & {n.rsplit(".", 1)[0] for n in quiet}
    first_quiet = quiet[0].split("/")[0]
    assert cadence.interval(first_quiet) == cfg_quiet_interval()
    assert cadence.interval(world.index(first_quiet)) == cfg_quiet_interval()


def cfg_quiet_interval() -> float:
    return AdaptiveParams().quiet_interval


def test_a_knowledge_update_rescans_a_tracked_address_at_once_and_exploited_models_are_listed():
    kb = load_knowledge()
    exploited = kb.exploited_models()
    assert "hikvision-ipc" in exploited     # cameras: Mirai (active) infects them
    assert all(any(m.active for m in kb.malware_for(kb.device(d))) for d in exploited)
    pol = policy(initial_scan="light")
    lc = Lifecycle(pol)
    t, _ = lc.observe("198.18.0.9", None, obs([80], {80: HIK}, pol.port_sets.light), T0)
    t, _ = lc.observe("198.18.0.9", t, obs([80, 554], {80: HIK}, pol.port_sets.followup), T0 + 300)
    assert t.next_at == T0 + 300 + 12 * HOUR
    new_ports = PortSet.inline([80, 554, 9527], label="kb-update")
    urgent, out = lc.urgent("198.18.0.9", t, T0 + 3600, new_ports)
    due = out[0]
    assert due.at == T0 + 3600 and due.ports is new_ports and due.reason is Reason.URGENT
    assert urgent.issued and urgent.next_at == T0 + 3600 and urgent.reason is Reason.URGENT
    assert lc.urgent("198.18.0.10", None, T0 + 3600) == (None, [])
    # the urgent round comes back as any round: the new port, never probed before, joins what is
    # known (no change on the ports probed both times, so no follow-up)
    after, decided = lc.observe("198.18.0.9", urgent, obs([80, 554, 9527], {80: HIK}, new_ports), T0 + 3700)
    assert 9527 in after.state.open_ports and not decided.plan.changed
    assert decided.plan.at == T0 + 3700 + 12 * HOUR


def test_the_twin_standard_scan_is_the_standard_scan_when_synchronised_and_misses_add_up(sporadic_world):
    from scanflow.evaluation import _run_both, miss_breakdown, twin_standard, window_metrics
    from scanflow.simulate import make_schedule

    cfg, sets, kb = sporadic_world
    world, schedule, std, eff, _ = _run_both(cfg, 3, 2, sets, kb, record=False, progress=None)
    twin = twin_standard(world, schedule, sets.standard, loss=0.0)
    assert set(twin.cells.tolist()) == set(std.cells.tolist())          # same instants, no loss
    desync = make_schedule(world.n_ips, 3, world.horizon, slot=schedule.slot, silent_rounds=1, desync=True)
    shifted = twin_standard(world, desync, sets.standard, loss=0.0)
    m = window_metrics(world, std, shifted, schedule.slot, 2)
    assert 0.5 < m.pdr < 1.0      # other instants meet other short-lived devices
    light = make_policy("adaptive", sets, ESTIMATOR).port_sets.light.ports
    b = miss_breakdown(world, std, eff, light)
    assert b["missed_cells"] == sum(c["cells"] for c in b["by_class"].values()) > 0
    for c in b["by_class"].values():
        assert c["cells"] == (c["address_never_found"] + c["address_found_port_in_light"]
                              + c["address_found_port_outside_light"])
        assert c["address_never_found_no_light_port"] <= c["address_never_found"]



def test_a_probe_that_could_not_see_the_device_is_not_a_silence():
    pol = policy(initial_scan="light")
    s = pol.port_sets
    gone = _device_without_light_ports(pol)        # tracked, its one port outside the light set
    after, plan = pol.decide(gone, obs([], (), s.light), T0 + DAY)
    assert after.responsive and after.probe == FULL and plan.ports is s.unknown and not plan.changed


def _device_without_light_ports(pol):
    from scanflow.policy import IpState

    return IpState(IpStatus.RESPONSIVE_UNESTIMATED, 0, frozenset({1500}), (), None, 0.0, pol.port_sets.light.ref,
                   0, 3, T0, T0, T0, T0, frozenset(), LIGHT, None, T0)


@pytest.mark.parametrize("name", ["adaptive", "paper"])
def test_a_run_split_over_processes_by_prefix_is_the_one_process_run(sporadic_world, name):
    """Workers take ranges of whole /24s (the learned sweep table is per /24); the merged run must be
    the single process's, array for array, with and without packet loss."""
    from dataclasses import replace as dc_replace

    from scanflow.evaluation import _run_both
    from scanflow.simulate import _shard_ranges

    cfg, sets, kb = sporadic_world
    cfg = dc_replace(cfg, policy=name, loss=0.02, desync=True)
    one = _run_both(cfg, 3, 2, sets, kb, record=False, progress=None)[3]
    ranges = _shard_ranges(cfg.ips, 3, offset=0)
    assert len(ranges) == 3 and all(lo % 256 == 0 for lo, _ in ranges)
    three = _run_both(dc_replace(cfg, workers=3), 3, 2, sets, kb, record=False, progress=None)[3]
    for field in ("cells", "cell_round", "attempts", "probes", "bytes", "detected", "states"):
        assert np.array_equal(getattr(one, field), getattr(three, field)), field
    assert (one.decisions, one.max_slot_probes) == (three.decisions, three.max_slot_probes)
    assert one.decisions > 0 and len(one.cells) > 0


def test_no_empty_set_is_ever_planned_when_the_unknown_set_covers_the_standard_set():
    """The provisional sets' unknown-device set is the whole standard set: nothing is left for a
    follow-up on the rest, so there is none (an empty set would be refused by every agent)."""
    standard = PortSet.named("standard", 1, range(1, 41))
    sets = PolicyPortSets(standard, PortSet.named("silent", 1, range(1, 31)), PortSet.named("unknown", 1, range(1, 41)),
                          ranking=tuple((p, 100 - p) for p in range(1, 41)), ddr_curve=(1.0,) * 40)
    pol = make_policy("adaptive", sets, ESTIMATOR, adaptive_params=AdaptiveParams(light_ports=4))
    assert pol.port_sets.rest is None
    assert all(len(ps) for ps in pol.published())
    state, plan = pol.decide(None, obs([1, 39], {}, pol.port_sets.light), T0)
    for _ in range(6):
        assert len(plan.ports) > 0
        state, plan = pol.decide(state, obs([1, 39, 40], {}, plan.ports), plan.at)
    assert len(plan.ports) > 0


def test_a_device_named_by_a_port_the_follow_up_leaves_out_keeps_its_name():
    """The first answer names the device on a port the follow-up set drops (small sets: the live
    provisional ones); the follow-up's own answer names nothing; the estimate stands."""
    pol = policy()
    s = pol.port_sets
    dropped = sorted(s.standard.ports - s.followup.ports)
    port = dropped[-1]
    first = PortSet.inline([80, port], label="a small first probe")
    busybox = b"\r\nBusyBox v1.19.4 (2014-03-12 14:22:59 CST) built-in shell (ash)\r\n\r\n(none) login: "
    state, plan = pol.decide(None, obs([80, port], {port: busybox}, first), T0)
    assert plan.ports is s.followup and state.device == "busybox-telnet"
    state, plan = pol.decide(state, obs([80], {80: NGINX}, plan.ports), plan.at)
    assert state.device == "busybox-telnet" and state.open_ports == {80, port}
    # and a follow-up that names another device wins
    state, plan = pol.decide(None, obs([80, port], {port: busybox}, first), T0)
    state, plan = pol.decide(state, obs([80, 8000], {80: HIK}, plan.ports), plan.at)
    assert state.device is not None and state.device.startswith("hikvision")


def test_an_unnamed_device_is_named_when_a_later_answer_says_who_it_is():
    """Its first answer came without the banner that names it (too late for the round); the next
    answer with that banner names it, without a follow-up."""
    pol = policy()
    s = pol.port_sets
    busybox = b"\r\nBusyBox v1.19.4 (2014-03-12 14:22:59 CST) built-in shell (ash)\r\n\r\n(none) login: "
    state, plan = pol.decide(None, obs([80, 2323], {80: NGINX}, s.standard), T0)
    assert state.device is None
    state, plan = pol.decide(state, obs([80, 2323], {80: NGINX, 2323: busybox}, plan.ports), plan.at)
    assert state.device == "busybox-telnet" and not plan.changed
    # the same answer again names nothing new and changes nothing
    again, plan2 = pol.decide(state, obs([80, 2323], {80: NGINX, 2323: busybox}, plan.ports), plan.at)
    assert again.device == "busybox-telnet" and not plan2.changed


# -- devices that move (mechanism 4) ------------------------------------------------------------------


def _camera_gone(pol):
    """A Hikvision camera first seen at T0 (light probe, then its follow-up), silent 12 h later:
    the remembered state an address keeps, and the time it went silent."""
    state, plan = pol.start(T0)
    state, plan = pol.decide(state, obs([80], {80: HIK}, plan.ports), T0)
    state, plan = pol.decide(state, obs([80, 554], {80: HIK}, plan.ports), T0 + 300)
    state, plan = pol.decide(state, obs([80, 554], {80: HIK}, plan.ports), plan.at)   # a full probe: step 1
    left = plan.at
    gone, _ = pol.decide(state, obs([], (), plan.ports), left)
    assert gone.recall == {80, 554} and gone.step == 1 and gone.last_changed == left
    return gone, left


def _moving():
    """The policy with devices that move, the camera's remembered state and when it left, the light
    set, and the camera answering a light probe."""
    pol = policy(initial_scan="light", moves=True)
    gone, left = _camera_gone(pol)
    return pol, gone, left, pol.port_sets.light, obs([80, 554], {80: HIK_LATER}, pol.port_sets.light)


def test_a_device_another_address_of_the_24_remembers_resumes_its_state_there():
    pol, gone, left, light, camera = _moving()
    # an untracked address answering as the camera, after it left: the remembered state, as is
    assert pol.moved(None, camera, left + 600, [gone]) is gone
    # the policy then resumes it: its estimate and back-off step, no follow-up
    back, plan = pol.decide(gone, camera, left + 600)
    assert back.device == "hikvision-ipc" and back.step == 1 and plan.ports is not pol.port_sets.followup
    # not at the instant it left, nor before (a memory counts from after the departure)
    assert pol.moved(None, camera, left, [gone]) is None
    # not when two addresses remember a device that answers so: a fingerprint names a model, not a device
    assert pol.moved(None, camera, left + 600, [gone, gone]) is None
    # not without a banner (pools of one ISP's routers answer alike on ports alone)
    assert pol.moved(None, obs([80, 554], (), light), left + 600, [gone]) is None
    # not another device, nor the same camera showing other ports on the ports probed
    assert pol.moved(None, obs([80, 554], {80: NGINX}, light), left + 600, [gone]) is None
    assert pol.moved(None, obs([80, 23, 554], {80: HIK}, light), left + 600, [gone]) is None
    # off by default
    assert policy(initial_scan="light").moved(None, camera, left + 600, [gone]) is None


def test_an_address_s_own_device_and_a_classification_under_way_are_not_moves():
    pol, gone, left, light, camera = _moving()
    # the address's own remembered camera coming back is the memory mechanism, not a move
    assert pol.moved(gone, camera, left + 600, [gone]) is None
    # an address whose responsive device changed into the camera takes it (another device in its place)
    router, plan = pol.decide(None, obs([80], {80: NGINX}, light), left + 60)
    router, plan = pol.decide(router, obs([80], {80: NGINX}, plan.ports), plan.at)       # classified
    assert router.responsive and router.probe != FOLLOWUP
    assert pol.moved(router, camera, left + 600, [gone]) is gone
    # but not while its own classification is under way (the follow-up's answer is its own)
    fresh, _ = pol.decide(None, obs([80], {80: NGINX}, light), left + 60)
    assert fresh.probe == FOLLOWUP and pol.moved(fresh, camera, left + 600, [gone]) is None
    # nor an unchanged answer of its own device
    assert pol.moved(router, obs([80], {80: NGINX}, light), left + 600, [gone]) is None


def _round(ip, scan_id, at, responses, port_set):
    from scanflow.lifecycle.rounds import Round, ref_of

    us = int(at * 1e6)
    return Round(ip, scan_id, "a1", None, "EFFICIENT", us - 1_000_000, us, ref_of(port_set), len(port_set),
                 tuple((p, b, "http" if b else None) for p, b in sorted(responses.items())), "COMPLETE")


@pytest.mark.parametrize("moves", [False, True])
def test_the_lifecycle_wakes_a_24_in_time_order_and_lends_a_moved_device_its_state(moves):
    """A camera at .10 goes silent; 6 h later it answers at .20 of the same /24. With devices that move
    the /24 is one key: .20 is decided with the camera's remembered state (no follow-up, its step kept);
    without, .20 is a new responder, followed up 5 minutes later."""
    from scanflow.lifecycle.step import Decided, Due, Snapshot

    pol = policy(initial_scan="light", moves=moves)
    lc = Lifecycle(pol)
    a, b = "198.18.7.10", "198.18.7.20"
    assert lc.group_of(a) == ("198.18.7.0/24" if moves else a)
    assert (lc.group_of(a) == lc.group_of(b)) is moves
    gone, left = _camera_gone(pol)
    states = {a: Tracked(gone, left + 12 * HOUR, Reason.SWEEP, False, left, left)}
    light = pol.port_sets.light
    at = left + 6 * HOUR
    items = [(int(at * 1e6), _round(b, "s-b", at, {80: HIK_LATER, 554: None}, light))]
    new, out, rest = lc.wake_group(lc.group_of(b), states, items, int((at + 60) * 1e6))
    decided = [o for o in out if isinstance(o, Decided)]
    assert [d.ip for d in decided] == [b] and not rest
    d = decided[0]
    if moves:
        assert d.previous is gone and d.state.device == "hikvision-ipc" and d.state.step == 1
        assert d.plan.reason is Reason.BACKOFF and not d.plan.changed and lc.counts["moved"] == 1
        assert new[a] is states[a]                      # the address it left keeps its memory
    else:
        assert d.previous is None and d.plan.reason is Reason.NEW_RESPONDER and d.plan.ports is pol.port_sets.followup
        assert not [o for o in out if isinstance(o, Due)]            # the follow-up is due 5 minutes on
        assert lc.counts["moved"] == 0
    # one snapshot per changed address, last
    assert [o.ip for o in out if isinstance(o, Snapshot)] == [b] and isinstance(out[-1], Snapshot)


def test_in_one_wake_the_earlier_answer_of_a_24_is_decided_first():
    """The camera comes back at .10 an hour before .20 answers alike: .10 resumes it, so .20 finds no
    remembered device (a new responder); the other way round .20 takes the camera's state first."""
    from scanflow.lifecycle.step import Decided

    pol = policy(initial_scan="light", moves=True)
    gone, left = _camera_gone(pol)
    light = pol.port_sets.light
    a, b = "198.18.7.10", "198.18.7.20"

    def run(at_a, at_b):
        lc = Lifecycle(pol)
        states = {a: Tracked(gone, left + 12 * HOUR, Reason.SWEEP, True, left, left)}
        items = [(int(at_b * 1e6), _round(b, "s-b", at_b, {80: HIK_LATER, 554: None}, light)),
                 (int(at_a * 1e6), _round(a, "s-a", at_a, {80: HIK_LATER, 554: None}, light))]
        _, out, _ = lc.wake_group("198.18.7.0/24", states, items, int((left + 11 * HOUR) * 1e6))
        return {o.ip: o for o in out if isinstance(o, Decided) and o.scan_id}, lc.counts["moved"]

    first_a, moved = run(left + 5 * HOUR, left + 6 * HOUR)
    assert moved == 0 and first_a[a].plan.reason is Reason.BACKOFF and first_a[b].plan.reason is Reason.NEW_RESPONDER
    first_b, moved = run(left + 6 * HOUR, left + 5 * HOUR)
    assert moved == 1 and first_b[b].state.step == 1 and first_b[b].plan.reason is Reason.BACKOFF
    # .10 still remembers the camera, and resumes it too when it answers there
    assert first_b[a].plan.reason is Reason.BACKOFF


def test_addresses_of_a_24_answering_at_the_same_instant_are_decided_in_numeric_order():
    """.9 and .10 answer as the camera .10 remembers, at the same microsecond: .9 comes first (as in
    the simulator, which orders by address number), so it takes the camera's state; by text order
    ("198.18.7.10" < "198.18.7.9") .10 would resume it first and .9 would find none."""
    from scanflow.lifecycle.step import Decided

    pol, gone, left, light, _ = _moving()
    a, b = "198.18.7.10", "198.18.7.9"
    at = left + 5 * HOUR
    lc = Lifecycle(pol)
    states = {a: Tracked(gone, left + 12 * HOUR, Reason.SWEEP, True, left, left)}
    items = [(int(at * 1e6), _round(ip, f"s-{ip}", at, {80: HIK_LATER, 554: None}, light)) for ip in (a, b)]
    _, out, _ = lc.wake_group("198.18.7.0/24", states, items, int((at + 60) * 1e6))
    decided = [o for o in out if isinstance(o, Decided)]
    assert [d.ip for d in decided] == [b, a] and lc.counts["moved"] == 1

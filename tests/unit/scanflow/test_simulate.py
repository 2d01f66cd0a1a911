"""The discrete-event evaluation: hand-worked tiny worlds, equivalence of the closed-form standard scan
with the policy loop, determinism, and the bulk handling of silent IPs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from scanflow.estimate import Estimator
from scanflow.knowledge import load_knowledge
from scanflow.metrics import ByteModel, compare_cells
from scanflow.policy import EfficientPolicy, Observation, PolicyParams, PolicyPortSets, StandardPolicy
from scanflow.portsets import PortSet
from scanflow.simulate import SCANNER_STANDARD, Schedule, cover, make_schedule, run_policy, run_standard
from scanflow.evaluation import EvaluationConfig, derive_policy_sets, evaluate_seed, window_metrics
from scanflow.lifecycle.untracked import bulk_silent_rule, first_probe_rounds
from scanflow.world import World, WorldConfig
from scanflow.world.banners import NO_BANNER
from scanflow.world.dynamics import HONEYPOT_CLASS, INITIAL, RETURNED, SPORADIC, STATIC, Segments
from scanflow.world.hosts import GENERIC, HONEYPOT, HostProfiles

H = 12 * 3600  # one round
KB = load_knowledge()


def tiny_world(hosts, n_ips=10, days=14) -> World:
    """A world from ``(ip, start, end, ports, cls, event, kind)`` rows, no banners."""
    hosts = sorted(hosts)
    ptr = np.concatenate([[0], np.cumsum([len(h[3]) for h in hosts])]).astype(np.int64)
    port = np.concatenate([np.array(sorted(h[3]), dtype=np.int32) for h in hosts])
    n = len(hosts)
    profiles = HostProfiles(ptr=ptr, port=port, proto=np.zeros(len(port), np.int8),
                            choice=np.full(len(port), NO_BANNER, np.int16),
                            kind=np.array([h[6] for h in hosts], np.int8), model=np.full(n, -1, np.int16),
                            keyword=np.zeros(n, np.int16), token=np.arange(n, dtype=np.uint32), models=())
    seg = Segments(ip=np.array([h[0] for h in hosts], np.int64), start=np.array([h[1] for h in hosts], np.int64),
                   end=np.array([h[2] for h in hosts], np.int64), device=np.arange(n, dtype=np.int64),
                   cls=np.array([h[4] for h in hosts], np.int8), event=np.array([h[5] for h in hosts], np.int8))
    return World(WorldConfig(n_ips=n_ips), 1, days * 86400, seg, np.arange(n, dtype=np.int64),
                 np.arange(n, dtype=np.uint32), profiles)


def hand_sets(extra_standard=()) -> PolicyPortSets:
    return PolicyPortSets(PortSet.named("standard", 1, {80, 443, 8080, *extra_standard}),
                          PortSet.named("silent", 1, {80}), PortSet.named("unknown", 1, {80, 8080}))


def zero_schedule(n_ips: int, days: int = 14, phase: int = 0) -> Schedule:
    z = np.zeros(n_ips, dtype=np.int64)
    return Schedule(H, days * 2, z, z, np.full(n_ips, phase, dtype=np.int32))


STATIC_HOST = (2, 0, 14 * 86400, {80, 8080}, STATIC, INITIAL, GENERIC)
SPORADIC_HOST = (3, 3 * H, 3 * H + 3600, {80}, SPORADIC, RETURNED, GENERIC)


def test_one_static_host_worked_by_hand():
    world = tiny_world([STATIC_HOST])
    sets = hand_sets()
    sched = zero_schedule(10)
    std = run_standard(world, sched, sets.standard)
    eff = run_policy(world, sched, EfficientPolicy(sets, Estimator(KB)))
    m = window_metrics(world, std, eff, H, 2)
    # efficient (the paper's start): round 0 probes all 10 IPs with the standard set {80, 443, 8080};
    # the 9 silent IPs are then swept at rounds 7, 14, 21 on {80}; the host, found on {80, 8080} at
    # round 0, is rescanned on the unknown set {80, 8080} after 12 h, 1 d, 2 d, 3 d, 5 d (rounds 1, 3,
    # 7, 13, 23): the narrowing from 3 ports to 2 is not a change
    assert np.flatnonzero(eff.attempts).tolist() == [0, 1, 3, 7, 13, 14, 21, 23]
    assert eff.attempts[0] == 10 and int(eff.probes[0]) == 10 * 3
    assert m.efficient_attempts == 10 + 9 * 3 + 5
    assert int(eff.probes.sum()) == 30 + 9 * 3 * 1 + 5 * 2
    assert m.efficient_bytes == (67 + 6 * 2) * 54  # SYNs, plus an RST per open port found, 6 rounds x 2
    assert m.pdr == 1.0 and m.ddr == 1.0
    assert m.traffic_ratio == pytest.approx(79 * 54 / ((840 + 56) * 54))
    assert eff.detected.tolist() == [0]
    assert eff.states[1].sum() == 1  # the host is tracked individually from round 0 on


def test_one_static_host_worked_by_hand_with_a_silent_first_scan():
    world = tiny_world([STATIC_HOST])
    sets = hand_sets()
    sched = zero_schedule(10)
    std = run_standard(world, sched, sets.standard)
    eff = run_policy(world, sched, EfficientPolicy(sets, Estimator(KB), PolicyParams(initial_scan="silent")))
    m = window_metrics(world, std, eff, H, 2)
    # standard: 10 IPs x 28 rounds, 3 ports each; the host answers on 2 ports every round (RST each)
    assert (m.standard_attempts, int(std.probes.sum())) == (280, 840)
    assert m.standard_bytes == (840 + 28 * 2) * 54
    # efficient: 9 silent IPs swept at rounds 0, 7, 14, 21 on {80}; the host found at round 0 on {80},
    # then on {80, 8080} after 12 h, 1 d, 2 d, 3 d, 5 d (rounds 1, 3, 7, 13, 23); the next (7 d) is past 2 weeks
    assert np.flatnonzero(eff.attempts).tolist() == [0, 1, 3, 7, 13, 14, 21, 23]
    assert m.efficient_attempts == 9 * 4 + 6
    assert int(eff.probes.sum()) == 9 * 4 * 1 + 1 + 5 * 2
    assert m.efficient_bytes == (47 + 1 + 5 * 2) * 54
    assert m.pdr == 1.0 and m.ddr == 1.0
    assert m.traffic_ratio == pytest.approx(58 * 54 / ((840 + 56) * 54))
    assert m.attempts_ratio == pytest.approx(42 / 280)
    assert eff.detected.tolist() == [0] and std.detected.tolist() == [0]


def test_a_sporadic_host_between_two_sweeps_is_missed_by_the_efficient_scan():
    world = tiny_world([STATIC_HOST, SPORADIC_HOST])
    sets = hand_sets()
    sched = zero_schedule(10)
    std = run_standard(world, sched, sets.standard)
    eff = run_policy(world, sched, EfficientPolicy(sets, Estimator(KB)))
    m = window_metrics(world, std, eff, H, 2)
    # the standard scan sees (3, 80) in round 3; the efficient sweeps of IP 3 are rounds 0, 7, 14, 21
    assert (m.standard_cells, m.efficient_cells, m.common_cells) == (3, 2, 2)
    assert m.pdr == pytest.approx(2 / 3) and m.ddr == pytest.approx(1 / 2)
    assert m.missed_ips_by_class["sporadic"] == 1 and m.missed_ips_by_class["static"] == 0
    assert std.detected.tolist() == [0, 3 * H] and eff.detected.tolist() == [0, -1]
    # with the sweep of IP 3 in round 3 (phase 3) the efficient scan catches it
    eff3 = run_policy(world, zero_schedule(10, phase=3), EfficientPolicy(sets, Estimator(KB)))
    assert window_metrics(world, std, eff3, H, 2).ddr == 1.0


def test_a_recall_catches_a_sporadic_device_returning_between_sweeps():
    # on-line at round 0 (found by the standard first scan), off at the 12 h follow-up, back at round 3
    first = (3, 0, 3600, {80, 8080}, SPORADIC, INITIAL, GENERIC)
    back = (3, 3 * H, 3 * H + 3600, {80, 8080}, SPORADIC, RETURNED, GENERIC)
    world = tiny_world([STATIC_HOST, first, back])
    sets = hand_sets()
    sched = zero_schedule(10)
    plain = run_policy(world, sched, EfficientPolicy(sets, Estimator(KB)))
    params = PolicyParams(recall_interval=H, recall_for=2 * 86400)
    recall = run_policy(world, sched, EfficientPolicy(sets, Estimator(KB), params), record=True)
    seg_back = int(np.flatnonzero((world.segments.ip == 3) & (world.segments.start == 3 * H))[0])
    assert plain.detected[seg_back] == -1  # demoted at round 1, next sweep at round 8
    assert recall.detected[seg_back] == 3 * H  # recalled on {80, 8080} at round 2 (silent) and 3
    rec = recall.records
    rows = [(r, reason, probed) for ip, r, reason, probed in zip(rec["ip"], rec["round"], rec["reason"], rec["probed"])
            if ip == 3]
    recall_ref = PortSet.inline({80, 8080}).ref
    # round 0: standard set, answers; 1: unknown set, silent: demoted to a recall of {80, 8080}; 2: recall,
    # silent; 3: recall, answers (a new responder); 4: unknown set, silent; 5-7: recalls until 2 days
    # after the last answer (round 3); then the bulk sweep takes over: rounds 14, 21 with the others
    assert rows == [(0, "NEW_RESPONDER", sets.standard.ref), (1, "SWEEP", sets.unknown.ref),
                    (2, "SWEEP", recall_ref), (3, "NEW_RESPONDER", recall_ref), (4, "SWEEP", sets.unknown.ref),
                    (5, "SWEEP", recall_ref), (6, "SWEEP", recall_ref), (7, "SWEEP", recall_ref)]
    assert recall.attempts[14] == 9 and recall.attempts[15] == 0 and recall.attempts[21] == 9
    assert plain.attempts[14] == 8 and plain.attempts[15] == 1  # without recall: swept from round 8 on
    assert recall.decisions == plain.decisions + 6


def test_honeypots_are_left_out_of_pdr_but_counted_in_pdr_all():
    honeypot = (5, 0, 14 * 86400, set(range(1000, 1150)), HONEYPOT_CLASS, INITIAL, HONEYPOT)
    world = tiny_world([STATIC_HOST, honeypot])
    sets = hand_sets(extra_standard=range(1000, 1150))
    sched = zero_schedule(10)
    std = run_standard(world, sched, sets.standard)
    silent_first = EfficientPolicy(sets, Estimator(KB), PolicyParams(initial_scan="silent"))
    eff = run_policy(world, sched, silent_first)
    m = window_metrics(world, std, eff, H, 2)
    assert m.excluded_ips == 1 and m.honeypot_min_ports == 100
    assert m.pdr == 1.0 and m.ddr == 1.0
    assert m.pdr_all == pytest.approx(2 / 152) and m.ddr_all == pytest.approx(1 / 2)
    # the exclusion is an option: off, PDR and DDR are PDR* and DDR*; above the honeypot's 150 ports, too
    for off in (0, None, 151):
        kept = window_metrics(world, std, eff, H, 2, honeypot_min_ports=off)
        assert (kept.pdr, kept.ddr) == (m.pdr_all, m.ddr_all) and kept.excluded_ips == 0
        assert kept.standard_cells == 152 and kept.missed_cells_by_class["honeypot"] == 150
    # the paper's start probes the honeypot with the standard set once and finds all its ports
    m = window_metrics(world, std, run_policy(world, sched, EfficientPolicy(sets, Estimator(KB))), H, 2)
    assert m.excluded_ips == 1 and m.pdr == 1.0 and m.ddr == 1.0
    assert m.pdr_all == 1.0 and m.ddr_all == 1.0


def test_window_metrics_are_the_metrics_modules_figures_on_the_runs_cells():
    honeypot = (5, 0, 14 * 86400, set(range(1000, 1150)), HONEYPOT_CLASS, INITIAL, HONEYPOT)
    world = tiny_world([STATIC_HOST, SPORADIC_HOST, honeypot])
    sets = hand_sets(extra_standard=range(1000, 1150))
    sched = zero_schedule(10)
    std = run_standard(world, sched, sets.standard)
    eff = run_policy(world, sched, EfficientPolicy(sets, Estimator(KB), PolicyParams(initial_scan="silent")))
    for weeks, end in ((1, 14), (2, 28)):
        cells = [{(int(c >> 16), int(c & 0xFFFF)) for c, k in zip(run.cells, run.cell_round) if k < end}
                 for run in (std, eff)]
        totals = {"standard_bytes": int(std.bytes[:end].sum()), "efficient_bytes": int(eff.bytes[:end].sum()),
                  "standard_attempts": int(std.attempts[:end].sum()),
                  "efficient_attempts": int(eff.attempts[:end].sum())}
        for threshold in (100, 0):
            m = window_metrics(world, std, eff, H, weeks, honeypot_min_ports=threshold)
            want = compare_cells(*cells, honeypot_min_ports=threshold, **totals)
            got = {k: getattr(m, k) for k in ("pdr", "ddr", "traffic_ratio", "attempts_ratio", "standard_cells",
                                              "efficient_cells", "common_cells", "standard_ips", "efficient_ips",
                                              "excluded_ips", "honeypot_min_ports", *totals)}
            assert got == {k: getattr(want, k) for k in got}, (weeks, threshold)


def test_windows_count_only_their_own_rounds():
    world = tiny_world([STATIC_HOST, (4, 10 * 86400, 14 * 86400, {443}, STATIC, 1, GENERIC)])
    sets = hand_sets()
    sched = zero_schedule(10)
    std = run_standard(world, sched, sets.standard)
    eff = run_policy(world, sched, EfficientPolicy(sets, Estimator(KB)))
    one = window_metrics(world, std, eff, H, 1)
    assert one.standard_attempts == 10 * 14 and one.standard_cells == 2
    assert window_metrics(world, std, eff, H, 2).standard_cells == 3


@pytest.fixture(scope="module")
def small():
    cfg = EvaluationConfig(ips=6_000, weeks=2, windows=(1, 2), seeds=(4,), survey_ips=400_000, record=True)
    derivation, _ = derive_policy_sets(cfg, KB)
    return cfg, PolicyPortSets(derivation.standard, derivation.silent, derivation.unknown)


@pytest.mark.parametrize("loss", [0.0, 0.2])
def test_the_closed_form_standard_scan_equals_the_standard_policy_run_through_decide(small, loss):
    cfg, sets = small
    world = World.generate(cfg.world_config().replace(loss=loss), 4, horizon_days=14, kb=KB)
    sched = make_schedule(world.n_ips, 4, world.horizon, slot=H, silent_rounds=1)
    closed = run_standard(world, sched, sets.standard)
    looped = run_policy(world, sched, StandardPolicy(sets), scanner=SCANNER_STANDARD)
    assert looped.decisions > 0
    recorded = run_standard(world, sched, sets.standard, record=True)
    for name in ("cells", "cell_round", "attempts", "probes", "bytes", "detected"):
        assert np.array_equal(getattr(closed, name), getattr(looped, name)), name
        assert np.array_equal(getattr(closed, name), getattr(recorded, name)), name
    assert len(recorded.records["ip"]) == len(set(zip(recorded.records["ip"].tolist(), recorded.records["round"].tolist())))


def test_standard_against_itself_is_exactly_100_percent(small):
    cfg, sets = small
    world = World.generate(cfg.world_config(), 4, horizon_days=14, kb=KB)
    sched = make_schedule(world.n_ips, 4, world.horizon, slot=H, silent_rounds=1)
    std = run_standard(world, sched, sets.standard)
    m = window_metrics(world, std, std, H, 2)
    assert m.standard_cells > 100
    assert (m.pdr, m.ddr, m.pdr_all, m.ddr_all, m.traffic_ratio, m.attempts_ratio) == (1.0,) * 6


def test_same_seed_same_figures(small):
    cfg, sets = small
    a = evaluate_seed(cfg, 4, sets, KB)
    b = evaluate_seed(cfg, 4, sets, KB)
    assert [w.__dict__ for w in a.windows] == [w.__dict__ for w in b.windows]
    assert a.delays == b.delays or str(a.delays) == str(b.delays)  # NaN != NaN
    assert np.array_equal(a.efficient.states, b.efficient.states)
    assert a.efficient.records["next_at"] == b.efficient.records["next_at"]
    c = evaluate_seed(cfg, 5, sets, KB)
    assert [w.__dict__ for w in c.windows] != [w.__dict__ for w in a.windows]


@pytest.mark.parametrize("initial_scan", ["standard", "silent"])
def test_every_ips_first_probe_is_the_policys_start(small, initial_scan):
    cfg, sets = small
    cfg = EvaluationConfig(**{**cfg.__dict__, "params": PolicyParams(initial_scan=initial_scan), "record": False})
    r = evaluate_seed(cfg, 4, sets, KB)
    n = r.world.n_ips
    first = r.efficient.attempts[:7]
    if initial_scan == "standard":
        # one classification round at the start, timed like the standard scan's round 0
        assert not r.schedule.phase.any()
        assert first[0] == n and r.efficient.probes[0] == n * len(sets.standard)
        # synchronised and loss-free: the efficient scan's first round is exactly the standard scan's
        assert r.efficient.bytes[0] == r.standard.bytes[0]
        assert set(r.efficient.cells[r.efficient.cell_round == 0].tolist()) == \
            set(r.standard.cells[r.standard.cell_round == 0].tolist())
    else:
        # a first sweep spread over one silent interval (7 rounds); later rounds add 12 h follow-ups
        assert set(np.unique(r.schedule.phase).tolist()) == set(range(7))
        assert first[0] == int((r.schedule.phase == 0).sum()) < n / 5
        assert r.efficient.probes[0] == first[0] * len(sets.silent)


def test_every_answer_goes_through_the_policys_decide(small):
    cfg, sets = small

    class Spy(EfficientPolicy):
        calls = 0

        def decide(self, state, obs, now, ip=None):
            Spy.calls += 1
            return super().decide(state, obs, now)

    world = World.generate(cfg.world_config(), 4, horizon_days=14, kb=KB)
    spy = Spy(sets, Estimator(KB))
    sched = make_schedule(world.n_ips, 4, world.horizon, slot=H, silent_rounds=7)
    Spy.calls = 0
    run = run_policy(world, sched, spy, record=True)
    found_ips = set((run.cells >> 16).tolist())
    assert Spy.calls - 2 == run.decisions == len(run.records["ip"])  # 2 calls read the bulk rule
    assert found_ips <= set(run.records["ip"])


def test_desync_gives_the_efficient_scan_its_own_instants():
    sync = make_schedule(1000, 3, 14 * 86400, slot=H, silent_rounds=7)
    desync = make_schedule(1000, 3, 14 * 86400, slot=H, silent_rounds=7, desync=True)
    assert sync.offset_eff is sync.offset_std
    assert np.array_equal(sync.offset_std, desync.offset_std) and not np.array_equal(desync.offset_eff, desync.offset_std)
    assert sync.phase.min() == 0 and sync.phase.max() == 6 and sync.n_slots == 28


def test_cover_lists_exactly_the_rounds_probing_inside_each_segment():
    world = World.generate(WorldConfig(n_ips=3000), 9, horizon_days=7)
    sched = make_schedule(world.n_ips, 9, world.horizon, slot=H, silent_rounds=7)
    seg, k = cover(world, sched, efficient=True)
    got = set(zip(seg.tolist(), k.tolist()))
    s = world.segments
    want = {(i, r) for i in range(len(s)) for r in range(sched.n_slots)
            if s.start[i] <= r * H + sched.offset_eff[s.ip[i]] < s.end[i]}
    assert got == want and (np.diff(k) >= 0).all()


def test_the_bulk_rule_is_read_from_the_policy():
    sets = hand_sets()
    rule = bulk_silent_rule(EfficientPolicy(sets, Estimator(KB)), H)
    assert (rule.first, rule.sweep, rule.rounds) == (sets.standard, sets.silent, 7)
    assert first_probe_rounds(rule) == 1  # a classification round at the start, like the standard scan's
    rule = bulk_silent_rule(EfficientPolicy(sets, Estimator(KB), PolicyParams(initial_scan="silent")), H)
    assert (rule.first, rule.sweep, rule.rounds) == (sets.silent, sets.silent, 7)
    assert first_probe_rounds(rule) == 7  # a first sweep, spread over one silent interval
    rule = bulk_silent_rule(StandardPolicy(sets), H)
    assert (rule.sweep, rule.rounds) == (sets.standard, 1)
    with pytest.raises(ValueError, match="whole"):
        bulk_silent_rule(EfficientPolicy(sets, Estimator(KB), PolicyParams(silent_interval=3 * 86400 + 1)), H)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.frozensets(st.sampled_from([80, 8080, 443]), max_size=3), min_size=1, max_size=8),
       st.sampled_from(["standard", "silent"]))
def test_any_silent_ip_gets_the_bulk_plan_whatever_its_history(history, initial_scan):
    sets = hand_sets()
    policy = EfficientPolicy(sets, Estimator(KB), PolicyParams(initial_scan=initial_scan))
    rule = bulk_silent_rule(policy, H)
    state, plan = policy.start(0.0)
    now = 0.0
    for ports in history + [frozenset()]:
        state, plan = policy.decide(state, Observation(ports, (), plan.ports, True), now)
        now = plan.at
    # after a silent round the IP is silent, and a silent IP is swept on the bulk cadence
    assert not state.responsive
    before = now
    state, plan = policy.decide(state, Observation(frozenset(), (), plan.ports, True), now)
    assert (plan.ports, plan.at - before) == (rule.sweep, rule.rounds * H)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.frozensets(st.sampled_from([80, 8080, 443]), max_size=3), min_size=1, max_size=8),
       st.sampled_from([H, 2 * H]), st.sampled_from([86400, 7 * 86400]))
def test_once_the_policy_plans_the_bulk_sweep_it_keeps_planning_it(history, interval, window):
    """With recalls, a silent IP is probed individually for a while; the simulator hands it to the bulk
    sweeps only when the plan is the bulk plan, which must then hold for every further silent round."""
    sets = hand_sets()
    policy = EfficientPolicy(sets, Estimator(KB), PolicyParams(recall_interval=interval, recall_for=window))
    rule = bulk_silent_rule(policy, H)
    state, plan = policy.start(0.0)
    now = 0.0
    for ports in history:
        state, plan = policy.decide(state, Observation(ports, (), plan.ports, True), now)
        now = plan.at
    for _ in range(40):
        before = now
        state, plan = policy.decide(state, Observation(frozenset(), (), plan.ports, True), now)
        now = plan.at
        if (plan.ports, plan.at - before) == (rule.sweep, rule.rounds * H):
            break
    else:
        raise AssertionError("a silent IP never reached the bulk sweep")
    for _ in range(3):
        before = now
        state, plan = policy.decide(state, Observation(frozenset(), (), plan.ports, True), now)
        assert (plan.ports, plan.at - before) == (rule.sweep, rule.rounds * H) and not state.recall
        now = plan.at


def test_traffic_model_prices_banner_exchanges_above_rsts():
    world = World.generate(WorldConfig(n_ips=3000), 9, horizon_days=1)
    from scanflow.simulate import open_costs
    cost = open_costs(world, ByteModel())
    talks = world.profiles.choice != NO_BANNER
    assert (cost[~talks] == 54).all() and (cost[talks] > 54).all()


# -- the recorded event stream (EventRecorder) ---------------------------------------------------------


def test_recording_events_changes_nothing_and_records_every_decided_round_by_hand():
    from connectors.avro_codec import encode
    from connectors.sim_recorder import EventRecorder
    from scanflow.world.banners import EPOCH_UNIX

    world = tiny_world([STATIC_HOST])
    sets = hand_sets()
    plain = run_policy(world, zero_schedule(10), EfficientPolicy(sets, Estimator(KB)))
    rec = EventRecorder()
    eff = run_policy(world, zero_schedule(10), EfficientPolicy(sets, Estimator(KB)), events=rec)
    for name in ("cells", "cell_round", "attempts", "probes", "bytes", "detected", "states"):
        assert np.array_equal(getattr(plain, name), getattr(eff, name)), name

    def us(seconds):
        return (EPOCH_UNIX + seconds) * 1_000_000

    for name, record in rec.records:
        encode(name, record)  # valid against the schemas
    # the host (10.0.0.2) is decided at rounds 0, 1, 3, 7, 13, 23: one scan each, two SYN-ACKs (no banner)
    host = [(name, r) for name, r in rec.records if r.get("ip") == "10.0.0.2" or r.get("target") == "10.0.0.2"]
    assert len(host) == 6 * 3
    events = [r for name, r in host if name == "ScanEvent"]
    assert {(r["port"], r["kind"], r["banner"]) for r in events} == {(80, "SYN_ACK", None), (8080, "SYN_ACK", None)}
    dones = [r for name, r in host if name == "ScanDone"]
    assert [(r["scan_id"], r["started_at"], r["ended_at"]) for r in dones] == [
        (f"sim-{k}-10.0.0.2", us(k * H), us(k * H)) for k in (0, 1, 3, 7, 13, 23)]
    assert [r["port_set"] for r in dones] == [sets.standard.to_record()] + [sets.unknown.to_record()] * 5
    assert all(r["status"] == "COMPLETE" and r["responses"] == 2 and r["policy"] == "EFFICIENT" for r in dones)
    # the 9 silent addresses: one range scan of their /24 per round they are probed in bulk, no responses
    ranges = [r for name, r in rec.records if name == "ScanDone" and r["target"] == "10.0.0.0/24"]
    assert [(r["scan_id"], r["addresses_probed"], r["ports_probed"], r["responses"]) for r in ranges] == [
        ("sim-0-first-10.0.0.0/24", 9, 3, 0), ("sim-7-sweep-10.0.0.0/24", 9, 1, 0),
        ("sim-14-sweep-10.0.0.0/24", 9, 1, 0), ("sim-21-sweep-10.0.0.0/24", 9, 1, 0)]
    assert [r["port_set"] for r in ranges] == [sets.standard.to_record()] + [sets.silent.to_record()] * 3
    # the decisions, in the shape of the pipeline's Decision records
    assert len(rec.decisions) == eff.decisions == 6
    first, second = rec.decisions[:2]
    assert first == {"ip": "10.0.0.2", "policy": "EFFICIENT", "decided_at": us(0), "scan_id": "sim-0-10.0.0.2",
                     "previous_status": "UNKNOWN", "status": "RESPONSIVE_UNESTIMATED", "changed": True,
                     "device": None, "backoff_step": 0, "reason": "NEW_RESPONDER", "next_scan_at": us(H),
                     "port_set": sets.unknown.to_record()}
    assert (second["previous_status"], second["reason"], second["backoff_step"], second["next_scan_at"]) == (
        "RESPONSIVE_UNESTIMATED", "BACKOFF", 1, us(3 * H))
    # the stream is in time order, each scan's responses before its ScanDone
    stream = rec.stream()
    times = [r["ended_at"] if n == "ScanDone" else r["timestamp"] for n, r in stream]
    assert sorted(stream, key=repr) == sorted(rec.records, key=repr) and times == sorted(times)
    closed = set()
    for name, r in stream:
        assert r["scan_id"] not in closed
        if name == "ScanDone":
            closed.add(r["scan_id"])


def test_recorded_banners_are_the_bytes_the_simulator_observed():
    from connectors.sim_recorder import EventRecorder

    world = World.generate(WorldConfig(n_ips=3000), 9, horizon_days=2, kb=KB)
    sets = PolicyPortSets(PortSet.named("standard", 1, range(1, 65536)), PortSet.named("silent", 1, {80, 443}),
                          PortSet.named("unknown", 1, range(1, 65536)))
    rec = EventRecorder()
    run = run_policy(world, zero_schedule(3000, days=2), EfficientPolicy(sets, Estimator(KB)), events=rec,
                     record=True)
    banners = [r for name, r in rec.records if name == "ScanEvent" and r["kind"] == "BANNER"]
    assert banners and all(r["banner"] for r in banners)
    for r in banners[:200]:
        ip = world.index(r["ip"])
        t = r["timestamp"] // 1_000_000 - rec.epoch
        seg = int(world.segment_at(np.array([ip]), np.array([t]))[0])
        got = world.probe([ip], [r["port"]], t)
        assert seg >= 0 and got and got[0].banner == r["banner"]
    # one ScanEvent per open port of every decided round, as the run's own records count them
    assert sum(1 for name, _ in rec.records if name == "ScanEvent") == sum(len(p) for p in run.records["open_ports"])


def test_importing_the_simulator_loads_no_connector():
    import subprocess
    import sys

    code = ("import sys, scanflow.simulate; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('connectors', 'pipelines', 'apache_beam')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


class _PrefixSweepPolicy(EfficientPolicy):
    """The paper's policy, sweeping the second /24 (addresses 256-511) with ``{80, 8080}``."""

    WIDE = PortSet.named("wide", 1, {80, 8080})

    def sweep_set(self, ip):
        return self.WIDE if int(ip) // 256 == 1 else self.port_sets.silent

    def decide(self, state, obs, now, ip=None):
        from dataclasses import replace

        from scanflow.policy import Reason

        new, plan = super().decide(state, obs, now, ip)
        if ip is not None and plan.reason is Reason.SWEEP and plan.ports == self.port_sets.silent:
            plan = replace(plan, ports=self.sweep_set(ip))
        return new, plan


def test_a_policy_with_its_own_sweep_set_per_24_is_swept_with_it_worked_by_hand():
    # a host in the second /24 answering only on 8080, on-line for an hour at round 7 (the first sweep
    # after the silent first scan of round 0): the silent set {80} misses it, its prefix's {80, 8080} finds it
    host = (300, 7 * H, 7 * H + 3600, {8080}, SPORADIC, RETURNED, GENERIC)
    world = tiny_world([host], n_ips=512)
    sets = hand_sets()
    params = PolicyParams(initial_scan="silent")
    plain = run_policy(world, zero_schedule(512), EfficientPolicy(sets, Estimator(KB), params))
    wide = run_policy(world, zero_schedule(512), _PrefixSweepPolicy(sets, Estimator(KB), params))
    assert plain.detected.tolist() == [-1] and wide.detected.tolist() == [7 * H]
    assert int(plain.probes[0]) == int(wide.probes[0]) == 512          # every first probe is the silent set
    assert int(plain.probes[7]) == 512 and int(wide.probes[7]) == 256 * 1 + 256 * 2
    # the host, followed up 12 h later on the unknown set {80, 8080} and silent, is demoted to its
    # prefix's sweeps (the simulator checks the plan is that set) and swept on 2 ports again 3.5 d on
    assert int(wide.probes[8]) == 2
    assert int(wide.probes[14]) == 255 * 2 + 256 and int(wide.probes[15]) == 2

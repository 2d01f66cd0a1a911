"""One IP's life in the scheduler, without Beam: ordering, dedupe, commands, watchdog, demotion,
restore."""

from __future__ import annotations

from scanflow.lifecycle.rounds import Round
from pipelines.policy_setup import build_policy
from scanflow.lifecycle.records import micros
from pipelines.settings import PipelineSettings
from scanflow.lifecycle.state import Tracked
from scanflow.lifecycle.step import Decided, Due, Lifecycle, Snapshot, from_ip_state_record
from scanflow.config import Settings
from scanflow.policy import HOUR, IpState, IpStatus, Reason

POLICY = build_policy(Settings(), PipelineSettings(), name="paper")
SILENT = ("provisional-silent", 1, ())
IP = "192.0.2.10"
T0 = 1_700_000_000.0
HIK = b"HTTP/1.1 200 OK\r\nServer: Hikvision-Webs\r\n\r\n"
NGINX = b"HTTP/1.1 200 OK\r\nServer: nginx\r\n\r\n"
TTL, TIMEOUT = 6 * HOUR, 1 * HOUR


def _tracker(**kw):
    return Lifecycle(POLICY, command_ttl_s=TTL, round_timeout_s=TIMEOUT, **kw)


def _round(scan, at, responses=((80, HIK, "http"),), status="COMPLETE", port_set=SILENT, policy="EFFICIENT"):
    us = micros(at)
    return Round(IP, scan, "agent", None, policy, us - 30_000_000, us, port_set, 0, tuple(responses), status)


def _kinds(out):
    return [type(o).__name__ for o in out]


def _run(tracker, t, rounds, until):
    return tracker.wake(IP, t, [(r.ended_us, r) for r in rounds], micros(until))


def test_rounds_are_applied_in_event_time_order_whatever_the_arrival_order():
    tr = _tracker()
    first, second = _round("a", T0), _round("b", T0 + 13 * HOUR, ((80, NGINX, "http"),))
    t, out, rest = _run(tr, None, [second, first], T0 + 20 * HOUR)
    decided = [o for o in out if isinstance(o, Decided)]
    assert [d.scan_id for d in decided] == ["a", "b"]
    assert decided[0].state.device == "hikvision-ipc" and decided[1].plan.reason is Reason.CHANGED
    # The command for the first plan (due at T0 + 12 h) was issued between the two rounds.
    assert _kinds(out) == ["Decided", "Due", "Decided", "Snapshot"]
    assert out[1].at == T0 + 12 * HOUR and rest == []
    assert t.decided_at == T0 + 13 * HOUR and not t.issued


def test_a_round_delivered_twice_is_applied_once():
    tr = _tracker()
    t, out, _ = _run(tr, None, [_round("a", T0)], T0)
    again, out2, _ = _run(tr, t, [_round("a", T0)], T0 + HOUR)
    assert again is t and out2 == [] and tr.counts["duplicate_round"] == 1


def test_rounds_not_yet_reached_by_the_watermark_wait():
    tr = _tracker()
    later = _round("b", T0 + 13 * HOUR)
    t, out, rest = _run(tr, None, [_round("a", T0), later], T0 + HOUR)
    assert _kinds(out) == ["Decided", "Snapshot"] and rest == [(later.ended_us, later)]


def test_the_command_is_issued_once_at_the_next_scan_time():
    tr = _tracker()
    t, _, _ = _run(tr, None, [_round("a", T0)], T0)
    assert tr.due_at(t) == T0 + 12 * HOUR
    t2, out, _ = _run(tr, t, [], T0 + 12 * HOUR)
    (due, snap) = out
    assert isinstance(due, Due) and due.at == T0 + 12 * HOUR
    assert due.ports == POLICY.estimator.port_set("hikvision-ipc") and due.reason is Reason.NEW_RESPONDER
    assert isinstance(snap, Snapshot) and snap.tracked.issued and snap.updated_at == T0 + 12 * HOUR
    assert _run(tr, t2, [], T0 + 12 * HOUR)[1] == []  # not again


def test_the_watchdog_retries_when_no_round_comes_back():
    tr = _tracker()
    t, _, _ = _run(tr, None, [_round("a", T0)], T0)
    t, _, _ = _run(tr, t, [], T0 + 12 * HOUR)
    watchdog = T0 + 12 * HOUR + TTL + TIMEOUT
    assert tr.due_at(t) == watchdog
    t, out, _ = _run(tr, t, [], watchdog)
    (decided, snap) = out
    assert decided.scan_id is None and decided.at == watchdog and decided.plan.reason is Reason.BACKOFF
    assert decided.state == decided.previous  # an inconclusive round changes nothing but the time
    assert t.next_at == watchdog + POLICY.params.retry_interval and not t.issued


def test_a_silent_complete_round_demotes_with_a_tombstone():
    tr = _tracker()
    t, _, _ = _run(tr, None, [_round("a", T0)], T0)
    t2, out, _ = _run(tr, t, [_round("b", T0 + 12 * HOUR, ())], T0 + 12 * HOUR)
    decided = out[-2]
    assert t2 is None and decided.state.status is IpStatus.NON_RESPONSIVE and not decided.tracked
    assert decided.plan.reason is Reason.SWEEP
    assert out[-1] == Snapshot(IP, None, T0 + 12 * HOUR)


def test_an_untracked_silent_round_keeps_no_state():
    tr = _tracker()
    t, out, _ = _run(tr, None, [_round("a", T0, ())], T0)
    assert t is None and _kinds(out) == ["Decided"] and not out[0].tracked


def test_late_rounds_and_rounds_of_another_policy_are_ignored():
    tr = _tracker()
    t, _, _ = _run(tr, None, [_round("a", T0)], T0)
    same, out, _ = _run(tr, t, [_round("old", T0 - HOUR), _round("std", T0 + HOUR, policy="STANDARD")], T0 + HOUR)
    assert same is t and out == []
    assert tr.counts["late_round"] == 1 and tr.counts["other_policy"] == 1


def test_a_replay_horizon_stops_scheduling():
    tr = _tracker(horizon=T0 + 6 * HOUR)
    t, _, _ = _run(tr, None, [_round("a", T0)], T0)
    assert tr.due_at(t) is None


def test_restore_keeps_the_newer_state_and_applies_tombstones():
    tr = _tracker()
    old = Tracked(IpState(IpStatus.RESPONSIVE_UNESTIMATED, open_ports=frozenset({22})), T0, Reason.BACKOFF,
                  False, T0 - 10, T0 - 10)
    new = old.with_(updated_at=T0)
    assert tr.restore(None, old, old.updated_at) == old
    assert tr.restore(new, old, old.updated_at) is new
    assert tr.restore(old, new, new.updated_at) == new
    assert tr.restore(new, None, T0 + 1) is None
    assert tr.restore(new, None, T0 - 1) is new


def test_a_restored_device_the_knowledge_base_lost_falls_back_to_unestimated():
    tr = _tracker()
    gone = Tracked(IpState(IpStatus.RESPONSIVE_ESTIMATED, device="no-such-model", open_ports=frozenset({80})),
                   T0, Reason.BACKOFF, False, T0, T0)
    fixed = tr.restore(None, gone, T0)
    assert fixed.state.device is None and fixed.state.status is IpStatus.RESPONSIVE_UNESTIMATED
    assert POLICY.ports_for(fixed.state) is POLICY.port_sets.unknown


def test_a_bare_ip_state_record_restores_digests_probed_set_and_issue():
    tr = _tracker()
    t, _, _ = _run(tr, None, [_round("a", T0)], T0)
    record = {"ip": IP, "status": "RESPONSIVE_ESTIMATED", "device": t.state.device,
              "open_ports": sorted(t.state.open_ports),
              "port_digests": [{"port": p, "digest": d} for p, d in t.state.digests],
              "probed": {"name": "provisional-silent", "version": 1, "ports": []},
              "backoff_step": 0, "silent_rounds": 0, "first_seen_at": micros(T0), "last_seen_at": micros(T0),
              "last_scanned_at": micros(T0), "last_changed_at": micros(T0),
              "next_scan_at": micros(T0 + 12 * HOUR), "updated_at": micros(T0 + 12 * HOUR)}
    restored = from_ip_state_record(record, 12 * HOUR, tr.published)
    assert restored.state.digests == t.state.digests and restored.state.probed == t.state.probed
    assert restored.issued and restored.next_at == T0 + 12 * HOUR
    # The round applied before the restart is recognised as such, without its scan id.
    assert _run(tr, restored, [_round("a", T0)], T0 + 13 * HOUR)[1] == []


def test_rounds_a_restored_tombstone_covers_are_not_applied_again():
    """A restart re-reads rounds the previous run applied; for an IP it then demoted (a tombstone,
    no state), those ended at or before the tombstone are late, later ones are new."""
    tr = _tracker()
    tombstone_at = T0 + 13 * HOUR
    old, new = _round("a", T0), _round("b", T0 + 20 * HOUR)
    t, out, _ = tr.wake(IP, None, [(old.ended_us, old)], micros(T0 + HOUR), late_until=tombstone_at)
    assert t is None and out == [] and tr.counts["late_round"] == 1
    t, out, _ = tr.wake(IP, None, [(new.ended_us, new)], micros(T0 + 21 * HOUR), late_until=tombstone_at)
    assert [d.scan_id for d in out if isinstance(d, Decided)] == ["b"] and t is not None
    # Without a tombstone the same old round is a new responder, as before.
    t, out, _ = _tracker().wake(IP, None, [(old.ended_us, old)], micros(T0 + HOUR))
    assert [d.plan.reason for d in out if isinstance(d, Decided)] == [Reason.NEW_RESPONDER]


def test_after_an_outage_a_missed_scan_moves_to_now_instead_of_an_expired_command_per_cycle():
    # The state says: next scan at T0 + 12 h, command already issued; the scheduler comes back a week
    # later. Without catch-up every missed cycle makes a watchdog decision and an expired command.
    week = T0 + 7 * 24 * HOUR
    tr = _tracker()
    t, _, _ = _run(tr, None, [_round("a", T0)], T0)
    issued = t.with_(issued=True, updated_at=t.next_at)
    fired, n_due, n_watchdog = micros(tr.due_at(issued)), 0, 0
    state = issued
    while fired <= micros(week):                                   # the timers, one after another
        state, out, _ = tr.wake(IP, state, [], fired)
        n_due += sum(isinstance(o, Due) for o in out)
        n_watchdog += sum(isinstance(o, Decided) for o in out)
        fired = micros(tr.due_at(state))
    assert n_due >= 5 and n_watchdog >= 5                          # the flood
    # With the wall clock given: one watchdog decision (nothing came back), then, when the retry's
    # timer fires, the next scan is moved to now, and the one command is issued when its timer fires.
    tr2 = _tracker()
    state, out, _ = tr2.wake(IP, issued, [], micros(tr2.due_at(issued)), now=week)
    assert _kinds(out) == ["Decided", "Snapshot"] and state.next_at < week - TTL
    state, out, _ = tr2.wake(IP, state, [], micros(tr2.due_at(state)), now=week)
    assert _kinds(out) == ["Snapshot"] and tr2.counts["caught_up"] == 1
    assert state.next_at == week and not state.issued and tr2.due_at(state) == week
    state, out, _ = tr2.wake(IP, state, [], micros(week), now=week)
    assert _kinds(out) == ["Due", "Snapshot"] and out[0].at == week
    # A next scan whose command is still valid is issued as planned.
    t3 = _tracker()
    fresh, _, _ = _run(t3, None, [_round("a", T0)], T0)
    _, out, _ = t3.wake(IP, fresh, [], micros(T0 + 12 * HOUR), now=T0 + 13 * HOUR)
    assert _kinds(out) == ["Due", "Snapshot"] and out[0].at == T0 + 12 * HOUR and not t3.counts["caught_up"]


# -- the one decision step every runner takes: observe / next_scan -----------------------------------

def _obs(ports=(80,), banners=((80, HIK),), probed=None, complete=True):
    from scanflow.policy import Observation

    return Observation.of(ports, banners, probed=probed, complete=complete)


def test_observe_keeps_a_responsive_ip_and_schedules_its_next_scan_with_its_ports():
    lc = Lifecycle(POLICY)
    t, d = lc.observe(IP, None, _obs(probed=POLICY.port_sets.silent), T0, "scan-1")
    assert t is not None and d.tracked and d.previous is None and d.plan.reason is Reason.NEW_RESPONDER
    assert t.next_at == d.plan.at and t.decided_at == T0 and len(t.recent) == 1
    at, ports = lc.next_scan(t, d)
    assert (at, ports) == (d.plan.at, d.plan.ports) == (d.plan.at, POLICY.ports_for(t.state))


def test_observe_leaves_a_silent_ip_to_the_sweeps_with_the_policys_sweep_plan():
    lc = Lifecycle(POLICY)
    t, d = lc.observe(IP, None, _obs(), T0, "scan-1")
    silent = _obs((), (), probed=POLICY.ports_for(t.state))
    gone, d2 = lc.observe(IP, t, silent, T0 + 12 * HOUR, "scan-2")
    assert gone is None and not d2.tracked and d2.previous is t.state
    assert d2.state.status is IpStatus.NON_RESPONSIVE
    # untracked: the next scan is the sweep the policy plans for a silent IP
    assert lc.next_scan(gone, d2) == (T0 + 12 * HOUR + POLICY.params.silent_interval, POLICY.port_sets.silent)
    assert lc.next_scan(None) is None


def test_observe_keeps_a_recalled_ip_tracked_until_its_recall_ends():
    from scanflow.policy import EfficientPolicy, PolicyParams

    policy = EfficientPolicy(POLICY.port_sets, POLICY.estimator, PolicyParams(recall_interval=HOUR, recall_for=3 * HOUR))
    lc = Lifecycle(policy)
    t, _ = lc.observe(IP, None, _obs(), T0)
    t, d = lc.observe(IP, t, _obs((), (), probed=policy.ports_for(t.state)), T0 + 12 * HOUR)
    assert t is None and not d.tracked          # 13 h after its answer: past recall_for, swept
    # within recall_for of its last answer a silent IP is recalled on its ports and stays tracked
    t2, _ = lc.observe(IP, None, _obs(), T0)
    t2, d2 = lc.observe(IP, t2, _obs((), (), probed=policy.ports_for(t2.state)), T0 + HOUR)
    assert t2 is not None and t2.state.recall == frozenset({80}) and d2.tracked


def test_only_the_lifecycle_asks_the_policy_to_decide_or_start():
    """One per-IP decision flow: outside ``scanflow/lifecycle`` no production module calls a
    policy's ``decide`` or ``start`` (the simulator, replays and the test-history generator go through
    ``Lifecycle.observe``; the policy module defines them)."""
    import ast
    from pathlib import Path

    from scanflow.config import REPO_ROOT

    offenders = []
    for package in ("scanflow", "pipelines", "connectors", "probe_agent", "tests/support"):
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            rel = path.relative_to(REPO_ROOT).as_posix()
            if rel.startswith("scanflow/lifecycle/") or rel == "scanflow/policy.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), rel)):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in ("decide", "start")
                        and "policy" in ast.unparse(node.func.value).lower()):
                    offenders.append(f"{rel}:{node.lineno}: {ast.unparse(node.func)}")
    assert not offenders, offenders

"""The scheduling policies: state transitions, the back-off ladder, change detection that ignores
volatile banner parts and narrowed probes, and the standard baseline."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from scanflow.estimate import Estimator
from scanflow.knowledge import load_knowledge
from scanflow.policy import (DAY, DEFAULT_LADDER, HOUR, EfficientPolicy, IpState, IpStatus, Observation,
                             PolicyParams, PolicyPortSets, Reason, StandardPolicy, ladder_steps)
from scanflow.portsets import PortSet

T0 = 1_700_000_000.0
HIK = b"HTTP/1.1 200 OK\r\nDate: Mon, 01 Jan 2024 12:34:56 GMT\r\nServer: Hikvision-Webs\r\n\r\n"
HIK_LATER = b"HTTP/1.1 200 OK\r\nDate: Thu, 04 Jan 2024 01:02:03 GMT\r\nServer: Hikvision-Webs\r\n\r\n"
HG = b'HTTP/1.1 401 Unauthorized\r\nDate: Mon, 01 Jan 2024 12:34:56 GMT\r\nWWW-Authenticate: Basic realm="HG532e"\r\n\r\n'
HG_LATER = b'HTTP/1.1 401 Unauthorized\r\nDate: Thu, 04 Jan 2024 01:02:03 GMT\r\nWWW-Authenticate: Basic realm="HG532e"\r\n\r\n'
NGINX = b"HTTP/1.1 200 OK\r\nDate: Mon, 01 Jan 2024 12:34:56 GMT\r\nServer: nginx/1.24.0\r\n\r\n"


ESTIMATOR = Estimator(load_knowledge())
SETS = PolicyPortSets(PortSet.named("standard", 1, range(1, 11001)),
                      PortSet.named("silent", 1, [21, 22, 23, 80, 443, 554, 7547, 8080]),
                      PortSet.named("unknown", 1, list(range(1, 5001)) + [7547, 8291, 34567, 37215, 52869]))


@pytest.fixture(scope="module")
def estimator():
    return ESTIMATOR


@pytest.fixture(scope="module")
def sets():
    return SETS


@pytest.fixture(scope="module")
def policy(sets, estimator):
    return EfficientPolicy(sets, estimator)


def test_an_ip_starts_with_a_classification_scan_on_the_standard_set(policy, sets):
    # the paper: devices are estimated from the banners and ports of the *first* scan
    assert PolicyParams().initial_scan == "standard"
    state, plan = policy.start(T0)
    assert state.status is IpStatus.NON_RESPONSIVE and not state.responsive and state.scans == 0
    assert plan.at == T0 and plan.ports is sets.standard and plan.reason is Reason.INITIAL
    assert policy.initial_ports is sets.standard


def test_an_ip_starts_silent_with_the_silent_set_when_asked(sets, estimator):
    silent_first = EfficientPolicy(sets, estimator, PolicyParams(initial_scan="silent"))
    state, plan = silent_first.start(T0)
    assert state.status is IpStatus.NON_RESPONSIVE and not state.responsive
    assert plan.at == T0 and plan.ports is sets.silent and plan.reason is Reason.INITIAL


def test_a_silent_first_scan_joins_the_sweep(policy, sets):
    state, plan = policy.start(T0)
    state, plan = policy.decide(state, Observation.of([], probed=plan.ports), T0)
    assert state.status is IpStatus.NON_RESPONSIVE and state.probed == sets.standard.ref
    assert plan.ports is sets.silent and plan.reason is Reason.SWEEP and plan.at == T0 + 3.5 * DAY
    assert not plan.changed
    state, plan2 = policy.decide(state, Observation.of([], probed=plan.ports), plan.at)
    assert plan2.ports is sets.silent and plan2.at == plan.at + 3.5 * DAY  # the standard set never again


def test_the_device_is_estimated_from_the_standard_first_scan(policy, sets, estimator):
    state, plan = policy.start(T0)
    first = Observation.of([80, 554, 4444, 10001], {80: HIK}, probed=plan.ports)
    state, plan = policy.decide(state, first, T0)
    assert state.status is IpStatus.RESPONSIVE_ESTIMATED and state.device == "hikvision-ipc"
    assert plan.reason is Reason.NEW_RESPONDER and plan.changed and plan.at == T0 + 12 * HOUR
    assert plan.ports == estimator.port_set("hikvision-ipc") and state.probed == sets.standard.ref
    assert state.open_ports == {80, 554, 4444, 10001}


def test_narrowing_from_the_standard_set_to_the_model_ports_is_not_a_change(policy, sets):
    state, plan = policy.start(T0)
    # the first round (standard set, ports 1-11000) sees the router also on 4444 and 10001, outside
    # its model's ports; the model's 37215 (its UPnP service) lies outside the standard set
    state, plan = policy.decide(state, Observation.of([80, 7547, 4444, 10001], {80: HG}, probed=plan.ports), T0)
    model = plan.ports
    assert state.device == "huawei-hg532"
    assert not {4444, 10001} & model.ports and 37215 in model.ports
    assert 37215 not in sets.standard.ports
    # the next round probes only the model's ports: 4444 and 10001 unseen, 37215 newly seen open
    state, plan2 = policy.decide(state, Observation.of([80, 7547, 37215], {80: HG_LATER}, probed=model), plan.at)
    assert plan2.reason is Reason.BACKOFF and not plan2.changed and state.step == 1
    assert plan2.at == plan.at + DAY and plan2.ports == model
    assert state.open_ports == {80, 7547, 4444, 10001, 37215}  # unprobed ports keep their last state
    assert state.probed == model.ref and state.last_changed == T0
    # from now on the comparison is model set against model set: 37215 closing is a change
    state, plan3 = policy.decide(state, Observation.of([80, 7547], {80: HG_LATER}, probed=model), plan2.at)
    assert plan3.reason is Reason.CHANGED and plan3.changed and state.step == 0


def test_a_model_port_closing_right_after_the_standard_first_scan_is_a_change(policy):
    state, plan = policy.start(T0)
    state, plan = policy.decide(state, Observation.of([80, 554], {80: HIK}, probed=plan.ports), T0)
    state, plan2 = policy.decide(state, Observation.of([80], {80: HIK_LATER}, probed=plan.ports), plan.at)
    assert plan2.reason is Reason.CHANGED and state.step == 0
    # and so is a new banner on a port probed both times
    state, plan = policy.start(T0)
    state, plan = policy.decide(state, Observation.of([80, 554], {80: HIK}, probed=plan.ports), T0)
    state, plan3 = policy.decide(state, Observation.of([80, 554], {80: NGINX}, probed=plan.ports), plan.at)
    assert plan3.reason is Reason.CHANGED


def test_narrowing_from_the_standard_set_to_the_unknown_set_is_not_a_change(policy, sets):
    state, plan = policy.start(T0)
    state, plan = policy.decide(state, Observation.of([80, 443, 6543], {80: NGINX}, probed=plan.ports), T0)
    assert state.status is IpStatus.RESPONSIVE_UNESTIMATED and plan.ports is sets.unknown
    assert 6543 not in sets.unknown.ports
    state, plan2 = policy.decide(state, Observation.of([80, 443], {80: NGINX}, probed=sets.unknown), plan.at)
    assert plan2.reason is Reason.BACKOFF and state.step == 1 and 6543 in state.open_ports
    # a port probed both times that closes is a change
    state, plan3 = policy.decide(state, Observation.of([80], {80: NGINX}, probed=sets.unknown), plan2.at)
    assert plan3.reason is Reason.CHANGED


def test_an_incomplete_first_scan_is_retried_as_the_first_scan(policy, sets):
    state, plan = policy.start(T0)
    again, retry = policy.decide(state, Observation.of([], probed=plan.ports, complete=False), T0)
    assert again == state and retry.ports is sets.standard and retry.reason is Reason.INITIAL
    assert retry.at == T0 + 12 * HOUR
    # an incomplete silent sweep is retried as a sweep, not as a classification scan
    swept, retry2 = policy.decide(IpState(), Observation.of([], probed=sets.silent, complete=False), T0)
    assert swept == IpState() and retry2.ports is sets.silent and retry2.reason is Reason.BACKOFF


def test_silent_ips_are_swept_every_three_and_a_half_days(policy, sets):
    state, plan = policy.decide(None, Observation.of([], probed=sets.silent), T0)
    assert state.status is IpStatus.NON_RESPONSIVE and state.silent_rounds == 1 and state.scans == 1
    assert plan.at == T0 + 3.5 * DAY and plan.ports is sets.silent and plan.reason is Reason.SWEEP


def test_a_new_responder_with_a_known_device_is_scanned_on_its_ports(policy, estimator):
    state, plan = policy.decide(IpState(), Observation.of([80, 554], {80: HIK}), T0)
    assert state.status is IpStatus.RESPONSIVE_ESTIMATED and state.device == "hikvision-ipc"
    assert plan.reason is Reason.NEW_RESPONDER and plan.changed
    assert plan.at == T0 + 12 * HOUR
    assert plan.ports == estimator.port_set("hikvision-ipc") and plan.ports.is_inline
    assert state.first_seen == state.last_seen == state.last_changed == T0
    assert state.fingerprint is not None


def test_a_new_responder_without_an_estimate_gets_the_unknown_set(policy, sets):
    state, plan = policy.decide(IpState(), Observation.of([80, 443], {80: NGINX}), T0)
    assert state.status is IpStatus.RESPONSIVE_UNESTIMATED and state.device is None
    assert plan.ports is sets.unknown and plan.at == T0 + 12 * HOUR


def _walk(policy, observations, start=T0, state=None):
    """Feed observations, each at the time the previous plan asked for; return (states, plans)."""
    now, states, plans = start, [], []
    for obs in observations:
        state, plan = policy.decide(state, obs, now)
        states.append(state)
        plans.append(plan)
        now = plan.at
    return states, plans


def test_unchanged_answers_walk_the_ladder_to_the_cap(policy, sets):
    obs = [Observation.of([80, 443], {80: NGINX if i % 2 else NGINX.replace(b"Mon, 01", b"Fri, 05")},
                          probed=sets.unknown) for i in range(11)]
    states, plans = _walk(policy, obs)
    intervals = [p.at - s.last_scanned for s, p in zip(states, plans)]
    assert intervals == [12 * HOUR, DAY, 2 * DAY, 3 * DAY, 5 * DAY, 7 * DAY, 14 * DAY, 30 * DAY, 30 * DAY,
                         30 * DAY, 30 * DAY]
    assert [p.reason for p in plans[1:]] == [Reason.BACKOFF] * 10
    assert states[-1].step == len(DEFAULT_LADDER) - 1
    assert states[-1].last_changed == T0  # the Date header is not a change


def test_a_change_resets_to_twelve_hours(policy, sets):
    same = Observation.of([80, 443], {80: NGINX}, probed=sets.unknown)
    states, plans = _walk(policy, [same] * 5)
    assert states[-1].step == 4
    now = plans[-1].at
    state, plan = policy.decide(states[-1], Observation.of([80, 443, 22], {80: NGINX}, probed=sets.unknown), now)
    assert plan.reason is Reason.CHANGED and plan.changed and plan.at == now + 12 * HOUR
    assert state.step == 0 and state.last_changed == now
    # a new banner on the same ports is a change too
    state2, plan2 = policy.decide(states[-1], Observation.of([80, 443], {80: HIK}, probed=sets.unknown), now)
    assert plan2.reason is Reason.CHANGED and state2.device == "hikvision-ipc"


def test_narrowing_to_the_model_ports_is_not_a_change(policy, sets, estimator):
    # seen first with the unknown set: the camera also answers on 4444, outside its model's ports
    state, plan = policy.decide(IpState(), Observation.of([80, 554, 4444], {80: HIK}, probed=sets.unknown), T0)
    assert state.device == "hikvision-ipc" and 4444 not in plan.ports
    # the next round probes only the model's ports: 4444 is not seen, which is not a change
    state, plan2 = policy.decide(state, Observation.of([80, 554], {80: HIK_LATER}, probed=plan.ports), plan.at)
    assert plan2.reason is Reason.BACKOFF and state.step == 1
    assert 4444 in state.open_ports  # what was not looked at is remembered, not forgotten
    # a port of the model that closes is a change
    state, plan3 = policy.decide(state, Observation.of([80], {80: HIK_LATER}, probed=plan.ports), plan2.at)
    assert plan3.reason is Reason.CHANGED and state.step == 0


def test_a_missing_banner_is_not_a_banner_change(policy, sets):
    state, plan = policy.decide(IpState(), Observation.of([80, 443], {80: NGINX}, probed=sets.unknown), T0)
    state, plan = policy.decide(state, Observation.of([80, 443], {}, probed=sets.unknown), plan.at)
    assert plan.reason is Reason.BACKOFF
    assert dict(state.digests)  # the last known banner digest is kept


def test_a_responder_that_goes_silent_is_demoted_to_the_sweep(policy, sets):
    state, plan = policy.decide(IpState(), Observation.of([80], {80: HIK}), T0)
    state, plan = policy.decide(state, Observation.of([], probed=plan.ports), plan.at)
    assert state.status is IpStatus.NON_RESPONSIVE and state.device is None and not state.open_ports
    assert plan.ports is sets.silent and plan.reason is Reason.SWEEP and plan.changed
    assert plan.at == T0 + 12 * HOUR + 3.5 * DAY
    assert state.first_seen == T0 and state.last_seen == T0  # history survives demotion


def test_demotion_can_wait_for_several_silent_rounds(sets, estimator):
    patient = EfficientPolicy(sets, estimator, PolicyParams(demote_after=2))
    state, plan = patient.decide(IpState(), Observation.of([80], {80: NGINX}), T0)
    state, plan = patient.decide(state, Observation.of([], probed=plan.ports), plan.at)
    assert state.status is IpStatus.RESPONSIVE_UNESTIMATED and state.silent_rounds == 1
    assert plan.ports is sets.unknown
    state, plan = patient.decide(state, Observation.of([], probed=plan.ports), plan.at)
    assert state.status is IpStatus.NON_RESPONSIVE


def test_an_incomplete_round_changes_nothing_and_is_retried(policy, sets):
    state, plan = policy.decide(IpState(), Observation.of([80], {80: HIK}), T0)
    again, retry = policy.decide(state, Observation.of([], probed=plan.ports, complete=False), plan.at)
    assert again == state and retry.at == plan.at + 12 * HOUR and retry.ports == plan.ports
    silent, retry2 = policy.decide(None, Observation.of([], complete=False), T0)
    assert silent == IpState() and retry2.ports is sets.silent


def test_an_incomplete_round_with_answers_promotes_a_silent_ip(policy):
    state, plan = policy.decide(IpState(), Observation.of([80], {80: HIK}, complete=False), T0)
    assert state.responsive and plan.reason is Reason.NEW_RESPONDER


def test_urgent_rescans_now_with_the_current_ports(policy):
    state, plan = policy.decide(IpState(), Observation.of([80], {80: HIK}), T0)
    same, urgent = policy.urgent(state, T0 + 100)
    assert same == state and urgent.at == T0 + 100 and urgent.ports == plan.ports
    assert urgent.reason is Reason.URGENT


def test_same_history_same_decisions(policy, sets):
    obs = [Observation.of([80, 554], {80: HIK}), Observation.of([80, 554], {80: HIK_LATER}),
           Observation.of([]), Observation.of([80], {80: NGINX}, probed=sets.silent)]
    assert _walk(policy, obs) == _walk(policy, obs)


def test_the_standard_policy_scans_everything_every_twelve_hours(sets):
    std = StandardPolicy(sets)
    state, plan = std.start(T0)
    assert plan.ports is sets.standard and plan.at == T0
    for i, obs in enumerate([Observation.of([80], {80: NGINX}), Observation.of([]), Observation.of([22])]):
        now = T0 + i * 12 * HOUR
        state, plan = std.decide(state, obs, now)
        assert plan.ports is sets.standard and plan.at == now + 12 * HOUR
    assert state.status is IpStatus.RESPONSIVE_UNESTIMATED and state.scans == 3
    assert plan.reason is Reason.NEW_RESPONDER


@pytest.mark.parametrize("kwargs, message", [
    ({"ladder": ()}, "ladder"), ({"ladder": (10.0, 5.0)}, "must not decrease"),
    ({"ladder": (0.0,)}, "positive"), ({"silent_interval": 0}, "silent_interval"),
    ({"demote_after": 0}, "demote_after"), ({"initial_scan": "unknown"}, "initial_scan: must be one of"),
    ({"recall_interval": -1}, "recall_interval"), ({"recall_for": 0}, "recall_for"),
])
def test_bad_parameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PolicyParams(**kwargs)


def test_ladder_steps_lists_the_scan_times_of_an_unchanging_ip():
    assert ladder_steps(PolicyParams(), 14 * DAY) == [0, 0.5 * DAY, 1.5 * DAY, 3.5 * DAY, 6.5 * DAY, 11.5 * DAY]


# --- properties of the back-off ---------------------------------------------------------------------

ladders = st.lists(st.floats(min_value=60, max_value=90 * DAY, allow_nan=False), min_size=1, max_size=10).map(
    lambda xs: tuple(sorted(xs)))
answers = st.tuples(st.frozensets(st.sampled_from([22, 23, 80, 443, 554, 7547, 8000, 8080]), max_size=4),
                    st.sampled_from([HIK, HIK_LATER, NGINX, b"", b"\xff\xfe garbage", b"SSH-2.0-dropbear"]))


def _obs(answer):
    ports, banner = answer
    return Observation.of(ports, {min(ports): banner} if ports and banner else {})


@settings(max_examples=150, deadline=None)
@given(ladders, answers, st.integers(min_value=1, max_value=25))
def test_backoff_is_monotone_while_nothing_changes(ladder, answer, rounds):
    policy = EfficientPolicy(SETS, ESTIMATOR, PolicyParams(ladder=ladder))
    if not answer[0]:
        answer = (frozenset({80}), answer[1])
    states, plans = _walk(policy, [_obs(answer)] * rounds, start=0.0)
    steps = [s.step for s in states]
    assert steps == [min(i, len(ladder) - 1) for i in range(rounds)]
    intervals = [p.at - s.last_scanned for s, p in zip(states, plans)]
    assert intervals == pytest.approx([ladder[k] for k in steps], rel=1e-9)
    assert all(ladder[a] <= ladder[b] for a, b in zip(steps, steps[1:]))


@settings(max_examples=150, deadline=None)
@given(ladders, answers, answers, st.integers(min_value=1, max_value=12))
def test_backoff_resets_on_any_change(ladder, first, second, rounds):
    policy = EfficientPolicy(SETS, ESTIMATOR, PolicyParams(ladder=ladder))
    first = first if first[0] else (frozenset({80}), first[1])
    second = second if second[0] else (frozenset({22}), second[1])
    states, plans = _walk(policy, [_obs(first)] * rounds, start=0.0)
    state, plan = policy.decide(states[-1], _obs(second), plans[-1].at)
    if plan.changed:
        assert state.step == 0 and plan.at - plans[-1].at == pytest.approx(ladder[0], rel=1e-9)
    else:  # only possible when the two answers are the same up to volatile parts
        assert _obs(first).open_ports == _obs(second).open_ports
        assert state.step == min(rounds, len(ladder) - 1)


@settings(max_examples=150, deadline=None)
@given(ladders, st.lists(st.one_of(answers, st.just(None)), min_size=1, max_size=30))
def test_intervals_are_positive_and_capped_whatever_happens(ladder, history):
    params = PolicyParams(ladder=ladder)
    policy = EfficientPolicy(SETS, ESTIMATOR, params)
    now, state = 0.0, None
    for answer in history:
        obs = Observation.of([], complete=False) if answer is None else _obs(answer)
        state, plan = policy.decide(state, obs, now)
        interval = plan.at - now
        assert interval > 0
        if answer is None:
            assert interval == pytest.approx(params.retry_interval)
        elif state.responsive:
            assert state.step <= len(ladder) - 1
            assert interval <= ladder[-1] * (1 + 1e-9)
            assert (state.device is None) == (state.status is IpStatus.RESPONSIVE_UNESTIMATED)
        else:
            assert interval == pytest.approx(params.silent_interval)
        now = plan.at


host_ports = st.frozensets(st.sampled_from([21, 22, 23, 80, 443, 554, 4444, 7547, 8000, 8080, 9000, 10001,
                                            37215, 52869]), min_size=1, max_size=6)


@settings(max_examples=150, deadline=None)
@given(host_ports, st.sampled_from([HIK, NGINX, b"SSH-2.0-dropbear", b""]), st.integers(min_value=1, max_value=6))
def test_a_host_that_does_not_change_is_never_a_change_after_the_standard_first_scan(ports, banner, rounds):
    """Whatever the host has open, seeing it first through the standard set and then through the
    plan's (narrower, possibly partly new) ports is never a change while the host stays the same."""
    policy = EfficientPolicy(SETS, ESTIMATOR)
    state, plan = policy.start(0.0)
    now = 0.0
    talk = min(ports)
    for i in range(rounds + 1):
        probed = plan.ports
        seen = ports & probed.ports
        banners = {talk: banner.replace(b"Mon, 01", b"Fri, 05") if i % 2 else banner} if talk in seen and banner else {}
        state, plan = policy.decide(state, Observation.of(seen, banners, probed=probed), now)
        if not seen:
            # nothing of the host inside the probed set (e.g. a model estimated from a banner on a port
            # outside the model's ports): a complete silent round, which demotes, never a "change"
            assert not state.responsive and plan.reason is Reason.SWEEP and plan.ports is SETS.silent
            return
        if i == 0:
            assert plan.reason is Reason.NEW_RESPONDER
        else:
            assert plan.reason is Reason.BACKOFF and not plan.changed, (i, sorted(seen), probed.ref)
            assert state.step == min(i, len(DEFAULT_LADDER) - 1)
        assert state.open_ports <= ports
        now = plan.at


def test_probed_sets_rebuilt_from_records_compare_like_the_originals(policy, sets):
    state, plan = policy.decide(IpState(), Observation.of([80, 554, 4444], {80: HIK}, probed=sets.unknown), T0)
    rebuilt = PortSet.from_record(plan.ports.to_record(), [sets.standard, sets.silent, sets.unknown])
    assert rebuilt is not plan.ports and rebuilt.ref == plan.ports.ref
    state, plan2 = policy.decide(state, Observation.of([80, 554], {80: HIK_LATER}, probed=rebuilt), plan.at)
    assert plan2.reason is Reason.BACKOFF and state.probed == plan.ports.ref


def test_policies_states_and_plans_pickle_for_beam_workers(policy, sets):
    import pickle

    state, plan = policy.decide(IpState(), Observation.of([80, 554], {80: HIK}, probed=sets.silent), T0)
    again = pickle.loads(pickle.dumps(policy))
    assert pickle.loads(pickle.dumps(state)) == state and pickle.loads(pickle.dumps(plan)) == plan
    obs = Observation.of([80, 554], {80: HIK_LATER}, probed=plan.ports)
    assert again.decide(state, obs, plan.at) == policy.decide(state, obs, plan.at)


# --- beyond the paper: recall of known, now silent IPs (off by default) ---------------------------------

RECALL = PolicyParams(recall_interval=12 * HOUR, recall_for=2 * DAY)


def test_recall_is_off_by_default(policy, sets):
    assert PolicyParams().recall_interval == 0
    state, plan = policy.decide(IpState(), Observation.of([80, 554], {80: HIK}), T0)
    state, plan = policy.decide(state, Observation.of([], probed=plan.ports), plan.at)
    assert plan.ports is sets.silent and not state.recall


def test_a_demoted_ip_is_recalled_on_its_last_ports_then_swept(sets, estimator):
    recall = EfficientPolicy(sets, estimator, RECALL)
    state, plan = recall.decide(IpState(), Observation.of([80, 4444], {80: NGINX}, probed=sets.standard), T0)
    seen = state.last_seen
    state, plan = recall.decide(state, Observation.of([], probed=plan.ports), plan.at)  # silent: demoted
    assert state.status is IpStatus.NON_RESPONSIVE and state.recall == {80, 4444}
    assert plan.ports.ports == {80, 4444} and plan.ports.is_inline and plan.ports.label == "recall"
    assert plan.reason is Reason.SWEEP and plan.changed and plan.ports == recall.ports_for(state)
    times = []
    while plan.ports is not sets.silent:
        times.append(plan.at)
        state, plan = recall.decide(state, Observation.of([], probed=plan.ports), plan.at)
        assert not plan.changed
    # recall probes every 12 h while within 2 days of the last answer, then the 3.5-day sweep
    assert [t - seen for t in times] == [24 * HOUR, 36 * HOUR, 48 * HOUR]
    assert plan.at == times[-1] + 3.5 * DAY and not state.recall
    state, plan2 = recall.decide(state, Observation.of([], probed=plan.ports), plan.at)
    assert plan2.ports is sets.silent and plan2.at == plan.at + 3.5 * DAY


def test_an_ip_that_answers_a_recall_is_a_new_responder_and_the_recall_set_is_not_a_change(sets, estimator):
    recall = EfficientPolicy(sets, estimator, RECALL)
    state, plan = recall.decide(IpState(), Observation.of([80, 554, 4444], {80: HIK}, probed=sets.standard), T0)
    model = plan.ports
    state, plan = recall.decide(state, Observation.of([], probed=model), plan.at)
    assert plan.ports.ports == {80, 554, 4444}
    state, plan = recall.decide(state, Observation.of([80, 554, 4444], {80: HIK_LATER}, probed=plan.ports), plan.at)
    assert state.responsive and state.device == "hikvision-ipc" and plan.reason is Reason.NEW_RESPONDER
    assert plan.ports == model and state.recall == {80, 554, 4444}  # kept for the next comparison
    # the model's ports seen next: 4444 (recall only) unseen, 37215 (model only) new: no change
    after = recall.decide(state, Observation.of([80, 554, 37215], {80: HIK}, probed=model), plan.at)
    assert after[1].reason is Reason.BACKOFF and after[0].step == 1 and not after[0].recall
    assert after[0].open_ports == {80, 554, 4444, 37215}
    # but a port probed by both the recall and the model set that closes is a change
    closed = recall.decide(state, Observation.of([80, 37215], {80: HIK}, probed=model), plan.at)
    assert closed[1].reason is Reason.CHANGED


def test_no_recall_for_more_ports_than_an_inline_set_holds(sets, estimator):
    recall = EfficientPolicy(sets, estimator, RECALL)
    many = range(1000, 1100)
    state, plan = recall.decide(IpState(), Observation.of(many, probed=sets.standard), T0)
    state, plan = recall.decide(state, Observation.of([], probed=plan.ports), plan.at)
    assert plan.ports is sets.silent and not state.recall


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(answers, st.just(None)), min_size=1, max_size=20),
       st.sampled_from([6 * HOUR, 12 * HOUR, DAY]), st.sampled_from([DAY, 3 * DAY, 7 * DAY]))
def test_a_silent_ip_always_ends_in_the_sweep_within_the_recall_window(history, interval, window):
    params = PolicyParams(recall_interval=interval, recall_for=window)
    policy = EfficientPolicy(SETS, ESTIMATOR, params)
    state, plan = policy.start(0.0)
    now = 0.0
    for answer in history:
        obs = Observation.of([], probed=plan.ports, complete=False) if answer is None else \
            Observation(_obs(answer).open_ports, _obs(answer).banners, plan.ports, True)
        state, plan = policy.decide(state, obs, now)
        now = plan.at
    while True:  # silent from now on
        state, plan = policy.decide(state, Observation.of([], probed=plan.ports), now)
        assert not state.responsive
        if plan.ports is SETS.silent:
            break
        assert state.recall and plan.ports.ports == state.recall and plan.at - now == interval
        assert plan.at - state.last_seen <= window
        now = plan.at
    assert plan.at - now == params.silent_interval and not state.recall

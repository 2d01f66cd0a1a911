"""The scheduler's compact per-IP state: exact round trips, the size budget, the restore header."""

from __future__ import annotations

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from pipelines.policy_setup import build_policy
from pipelines.settings import PipelineSettings
from scanflow.lifecycle.state import RefTable, Tracked, pack, pack_header, short_hash, unpack, unpack_header
from scanflow.config import Settings
from scanflow.policy import IpState, IpStatus, Observation, Reason

POLICY = build_policy(Settings(), PipelineSettings(), name="paper")
REFS = RefTable.of_policy(POLICY)
T0 = 1_700_000_000.0
HIK = b"HTTP/1.1 200 OK\r\nServer: Hikvision-Webs\r\n\r\n"

times = st.one_of(st.none(), st.floats(min_value=0, max_value=4e9, allow_nan=False))
refs = st.one_of(st.none(), st.sampled_from([POLICY.port_sets.silent.ref, POLICY.port_sets.unknown.ref,
                                             POLICY.estimator.port_sets()[3].ref, "other@v7", "inline:0123"]))


@st.composite
def tracked_states(draw):
    ports = sorted(draw(st.sets(st.integers(1, 65535), max_size=40)))
    digests = tuple((p, draw(st.binary(min_size=8, max_size=8)).hex()) for p in ports if draw(st.booleans()))
    device = draw(st.one_of(st.none(), st.text(min_size=1, max_size=40)))
    state = IpState(draw(st.sampled_from(list(IpStatus))), draw(st.integers(0, 300)), frozenset(ports), digests,
                    device, draw(st.floats(0, 1)) if device else 0.0, draw(refs), draw(st.integers(0, 300)),
                    draw(st.integers(0, 10**9)), draw(times), draw(times), draw(times), draw(times),
                    frozenset(draw(st.sets(st.integers(1, 65535), max_size=12))))
    recent = tuple(draw(st.binary(min_size=8, max_size=8)) for _ in range(draw(st.integers(0, 8))))
    return Tracked(state, draw(st.floats(0, 4e9)), draw(st.sampled_from(list(Reason))), draw(st.booleans()),
                   draw(st.floats(0, 4e9)), draw(st.floats(0, 4e9)), recent)


@hsettings(max_examples=300, deadline=None)
@given(tracked_states())
def test_pack_unpack_is_exact(t):
    assert unpack(pack(t, REFS), REFS) == t


def test_states_the_policy_makes_fit_the_byte_budget():
    # A realistic tracked IP: an estimated camera after three unchanged rounds, four scan ids kept.
    obs = Observation.of([80, 554, 8000], {80: HIK}, probed=POLICY.port_sets.silent)
    state, plan = POLICY.decide(None, obs, T0)
    for i in range(3):
        state, plan = POLICY.decide(state, Observation.of([80, 554, 8000], {80: HIK}, probed=plan.ports), plan.at)
    assert state.status is IpStatus.RESPONSIVE_ESTIMATED and state.step == 3
    t = Tracked(state, plan.at, plan.reason, False, T0, T0, tuple(short_hash(f"s{i}") for i in range(4)))
    packed = pack(t, REFS)
    assert unpack(packed, REFS) == t
    # The ref of the model's inline port set is stored as 8 bytes, not as its text.
    assert state.probed.encode() not in packed
    assert len(packed) + len("203.0.113.200") <= 300


def test_an_unknown_ref_is_kept_as_text_and_a_known_one_as_a_hash():
    silent = POLICY.port_sets.silent.ref
    base = Tracked(IpState(IpStatus.RESPONSIVE_UNESTIMATED, probed="mine@v3"), T0, Reason.BACKOFF, False, T0, T0)
    assert b"mine@v3" in pack(base, REFS)
    known = base.with_(state=IpState(IpStatus.RESPONSIVE_UNESTIMATED, probed=silent))
    assert silent.encode() not in pack(known, REFS) and unpack(pack(known, REFS), REFS) == known
    assert REFS.port_set(silent) is POLICY.port_sets.silent


def test_damaged_or_foreign_bytes_are_refused_with_a_reason():
    t = Tracked(IpState(IpStatus.RESPONSIVE_UNESTIMATED, open_ports=frozenset({80})), T0, Reason.BACKOFF,
                False, T0, T0)
    data = pack(t, REFS)
    with pytest.raises(ValueError, match="version"):
        unpack(b"\x09" + data[1:], REFS)
    with pytest.raises(ValueError, match="does not unpack|trailing"):
        unpack(data[:-3], REFS)
    with pytest.raises(ValueError, match="trailing"):
        unpack(data + b"\x00", REFS)


def test_header_carries_a_state_or_a_dated_tombstone():
    t = Tracked(IpState(IpStatus.RESPONSIVE_ESTIMATED, device="hikvision-ipc", open_ports=frozenset({80})),
                T0 + 5, Reason.CHANGED, True, T0, T0 + 5)
    assert unpack_header(pack_header(t, t.updated_at, REFS), REFS) == (t, T0 + 5)
    assert unpack_header(pack_header(None, T0 + 9, REFS), REFS) == (None, T0 + 9)


def test_a_state_naming_a_port_set_the_policy_lost_is_left_to_the_sweeps_not_a_failed_job():
    """A restart under a policy that no longer has a port set a stored state names: that IP is not
    restored (counted), the other IP is, and the job goes on (it failed on the first before)."""
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.testing.util import assert_that, equal_to

    from pipelines.per_ip_stage import DetectChanges, RestoreRecord
    from scanflow.portsets import PortSet

    gone = PortSet("retired", 1, (80, 8080))
    wider = RefTable([*REFS._by_hash.values(), gone])
    lost = Tracked(IpState(IpStatus.RESPONSIVE_UNESTIMATED, open_ports=frozenset({80}), probed=gone.ref),
                   T0 + 60, Reason.BACKOFF, False, T0, T0)
    kept = lost.with_(state=IpState(IpStatus.RESPONSIVE_UNESTIMATED, open_ports=frozenset({80}),
                                    probed=POLICY.port_sets.unknown.ref))
    with pytest.raises(ValueError, match="does not know"):
        unpack_header(pack_header(lost, T0, wider), REFS)
    items = [("198.18.0.1", RestoreRecord(pack_header(lost, T0, wider), None, T0)),
             ("198.18.0.2", RestoreRecord(pack_header(kept, T0, REFS), None, T0))]
    p = beam.Pipeline(runner=FnApiRunner())
    _, commands, _ = (p | beam.Create(items)
                      | DetectChanges(POLICY, command_ttl_s=3600, round_timeout_s=600, horizon=T0 + 120))
    assert_that(commands | beam.Map(lambda kv: kv[0]), equal_to(["198.18.0.2"]))
    result = p.run()
    result.wait_until_finish()
    unreadable = result.metrics().query(beam.metrics.MetricsFilter().with_name("restore_unreadable"))["counters"]
    assert sum(c.committed for c in unreadable) == 1


def test_a_restored_tombstone_keeps_the_rounds_before_it_from_being_applied_again():
    """The Beam stage keeps a restored tombstone's time for an IP without state: a rewound round
    that ended before it yields no decision and no command; a later round does."""
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.testing.util import assert_that, equal_to
    from apache_beam.transforms.window import TimestampedValue

    from pipelines.per_ip_stage import DetectChanges, RestoreRecord
    from scanflow.lifecycle.rounds import Round
    from scanflow.lifecycle.records import micros

    silent = POLICY.port_sets.silent
    port_set = (silent.name, silent.version, ())

    def rnd(scan, at):
        return Round("198.18.0.1", scan, "agent", None, "EFFICIENT", micros(at) - 30_000_000, micros(at),
                     port_set, 0, ((80, HIK, "http"),), "COMPLETE")

    before, after = rnd("before", T0 + 100), rnd("after", T0 + 400)
    items = [TimestampedValue(("198.18.0.1", RestoreRecord(pack_header(None, T0 + 200, REFS), None, T0 + 200)), 0),
             TimestampedValue(("198.18.0.1", before), T0 + 100),
             TimestampedValue(("198.18.0.1", after), T0 + 400)]
    p = beam.Pipeline(runner=FnApiRunner())
    decisions, _, _ = (p | beam.Create(items, reshuffle=False)
                       | DetectChanges(POLICY, command_ttl_s=3600, round_timeout_s=600, horizon=T0 + 500))
    assert_that(decisions | beam.Map(lambda d: d["scan_id"]), equal_to(["after"]))
    p.run().wait_until_finish()


def test_a_demoted_ip_keeps_its_demotion_time_so_a_round_before_it_coming_again_is_late():
    """Within one run: an IP answers, then goes silent (demoted, no state); a second report of a
    round that ended before the demotion (a scan executed twice) comes after it. It must be late,
    not a new responder; and the mark is forgotten after ``forget_s``."""
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.testing.util import assert_that, equal_to
    from apache_beam.transforms.window import TimestampedValue

    from pipelines.per_ip_stage import DetectChanges
    from scanflow.lifecycle.rounds import Round
    from scanflow.lifecycle.records import micros

    silent = POLICY.port_sets.silent
    port_set = (silent.name, silent.version, ())

    def rnd(scan, at, responses):
        return Round("198.18.0.9", scan, "agent", None, "EFFICIENT", micros(at) - 30_000_000, micros(at),
                     port_set, 0, responses, "COMPLETE")

    answer = ((80, HIK, "http"),)
    items = [TimestampedValue(("198.18.0.9", rnd("a", T0 + 100, answer)), T0 + 100),
             TimestampedValue(("198.18.0.9", rnd("b", T0 + 200, ())), T0 + 200),
             # "a" once more (another agent's run of the same command), ending earlier, arriving later
             TimestampedValue(("198.18.0.9", rnd("a", T0 + 150, answer)), T0 + 300),
             # long after the mark is forgotten, a new answer is a new responder again
             TimestampedValue(("198.18.0.9", rnd("c", T0 + 5000, answer)), T0 + 5000)]
    p = beam.Pipeline(runner=FnApiRunner())
    decisions, _, _ = (p | beam.Create(items, reshuffle=False)
                       | DetectChanges(POLICY, command_ttl_s=60, round_timeout_s=60, horizon=T0 + 6000,
                                       forget_s=1000))
    assert_that(decisions | beam.Map(lambda d: (d["scan_id"], d["reason"])),
                equal_to([("a", "NEW_RESPONDER"), ("b", "SWEEP"), ("c", "NEW_RESPONDER")]))
    p.run().wait_until_finish()

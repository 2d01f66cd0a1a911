"""The agent's empty-assignment check (probe_agent/group.py): join again once, then, if the group
still gives nothing although it could, hand over to ``on_wedged`` (the CLI starts the agent again).
The consumer is a stand-in (this is the decision logic; the real client is in the e2e fault tests)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace

from probe_agent.group import EMPTY_REJOIN_S, EmptyAssignmentRejoin


class FakeConsumer:
    def __init__(self, stale: bool):
        self.kafka, self.group_id, self.topic, self.consumer = None, "g", "commands", object()
        self.stale, self.assigned, self.rejoins = stale, set(), 0

    async def assignment(self):
        return self.assigned

    async def call(self, fn, *args):
        return self.stale

    async def rejoin(self):
        self.rejoins += 1


def _looks(rejoin: EmptyAssignmentRejoin, times) -> None:
    async def go():
        for t in times:
            await rejoin.check(t, watching=True)
    asyncio.run(go())


def _metrics():
    return SimpleNamespace(errors=defaultdict(int))


def test_stale_empty_assignment_rejoins_then_restarts():
    consumer, wedged, metrics = FakeConsumer(stale=True), [], _metrics()
    rejoin = EmptyAssignmentRejoin(consumer, metrics, wedged.append)
    step = EMPTY_REJOIN_S
    _looks(rejoin, [0.0, step])                           # empty for EMPTY_REJOIN_S: join again
    assert consumer.rejoins == 1 and not wedged
    _looks(rejoin, [2 * step])                            # still empty after the rejoin: start again
    assert consumer.rejoins == 1 and len(wedged) == 1 and "joining the group again" in wedged[0]
    assert metrics.errors == {"empty-assignment-rejoin": 1, "empty-assignment-restart": 1}


def test_an_assignment_after_the_rejoin_resets_the_escalation():
    consumer, wedged = FakeConsumer(stale=True), []
    rejoin = EmptyAssignmentRejoin(consumer, _metrics(), wedged.append)
    _looks(rejoin, [0.0, EMPTY_REJOIN_S])
    consumer.assigned = {("commands", 0)}
    _looks(rejoin, [EMPTY_REJOIN_S + 1])                  # the rejoin worked
    consumer.assigned = set()
    _looks(rejoin, [100.0, 100.0 + EMPTY_REJOIN_S])       # a later empty spell starts over: a rejoin
    assert consumer.rejoins == 2 and not wedged


def test_an_empty_assignment_the_group_cannot_fill_is_left_alone():
    consumer, wedged = FakeConsumer(stale=False), []      # e.g. more members than partitions
    rejoin = EmptyAssignmentRejoin(consumer, _metrics(), wedged.append)
    _looks(rejoin, [0.0, EMPTY_REJOIN_S, 2 * EMPTY_REJOIN_S, 3 * EMPTY_REJOIN_S])
    assert consumer.rejoins == 0 and not wedged


def test_without_on_wedged_it_keeps_rejoining():
    consumer = FakeConsumer(stale=True)
    rejoin = EmptyAssignmentRejoin(consumer, _metrics())
    _looks(rejoin, [0.0, EMPTY_REJOIN_S, 2 * EMPTY_REJOIN_S, 3 * EMPTY_REJOIN_S])
    assert consumer.rejoins == 3


class LagConsumer:
    """Answers the backlog gauge's look-ups; records the bound each was given."""

    def __init__(self, positions, ends):
        self.positions, self.ends, self.bounds = positions, ends, []

    def assignment(self):
        return set(self.positions)

    def end_offsets(self, tps, timeout_ms=None):
        self.bounds.append(timeout_ms)
        return {tp: self.ends[tp] for tp in tps}

    def position(self, tp, timeout_ms=None):
        self.bounds.append(timeout_ms)
        return self.positions[tp]


def test_the_backlog_gauge_bounds_every_broker_look_up():
    from probe_agent.group import LAG_TIMEOUT_MS, _lag

    consumer = LagConsumer({"p0": 5, "p1": 7}, {"p0": 9, "p1": 7})
    assert _lag(consumer) == 4
    # kafka-python waits for good without a bound (position() after the only broker came back)
    assert len(consumer.bounds) == 3 and all(0 < b <= LAG_TIMEOUT_MS for b in consumer.bounds)


def test_a_position_the_broker_did_not_give_in_time_makes_the_backlog_unknown_not_zero():
    from probe_agent.group import _lag

    assert _lag(LagConsumer({"p0": None}, {"p0": 9})) is None
    assert _lag(LagConsumer({}, {})) == 0


def test_the_empty_assignment_check_with_the_broker_away_decides_nothing_and_never_raises(monkeypatch):
    """With the broker killed, making the check's own clients fails (bootstrap timeout): the check
    says "not stale" and the agent goes on (a clean-clone run saw the agent exit here instead)."""
    from kafka.errors import KafkaTimeoutError

    import connectors.kafka_admin
    import connectors.kafka_io
    from probe_agent.group import _stale_empty_assignment

    class NoPartitions:
        def assignment(self):
            return set()

    def unreachable(kafka, **kw):
        raise KafkaTimeoutError("Unable to bootstrap from ['127.0.0.1:1']")

    closed = []

    class Probe:
        def close(self, **kw):
            closed.append("probe")

    monkeypatch.setattr(connectors.kafka_io, "make_consumer", unreachable)
    assert _stale_empty_assignment(None, "g", "commands", NoPartitions()) is False
    # the first client made, the second not: the first is closed, nothing raised
    monkeypatch.setattr(connectors.kafka_io, "make_consumer", lambda kafka, **kw: Probe())
    monkeypatch.setattr(connectors.kafka_admin, "admin_client", unreachable)
    assert _stale_empty_assignment(None, "g", "commands", NoPartitions()) is False
    assert closed == ["probe"]

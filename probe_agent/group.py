"""Membership of the agents' consumer group on the commands topic.

:class:`CommandsConsumer` is the group's consumer, driven from the event loop on a thread of its
own (kafka-python blocks): it joins once the broker lists the topic's partitions, polls, pauses,
reports the lag and closes. :func:`rebalance_listener` commits the finished commands of a partition
being taken away. :class:`EmptyAssignmentRejoin` joins the group again when an agent has been left
without a partition although the broker says the group could give it one (seen on a just-started
broker).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from scanflow.config import KafkaSettings

log = logging.getLogger("scanflow.agent")

#: How long an agent of the group waits with no partition before checking whether that is stale.
EMPTY_REJOIN_S = 20.0


class CommandsConsumer:
    """The group's consumer of the commands topic; every call runs on its one executor thread."""

    def __init__(self, kafka: KafkaSettings, topic: str, group_id: str, client_id: str) -> None:
        self.kafka, self.topic, self.group_id, self.client_id = kafka, topic, group_id, client_id
        self._loop = asyncio.get_running_loop()
        self._kx = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commands-consumer")
        self.consumer = None
        self._listener = None

    def call(self, fn, *args, **kwargs):
        """Run ``fn(*args, **kwargs)`` on the consumer's thread (awaitable)."""
        return self._loop.run_in_executor(self._kx, lambda: fn(*args, **kwargs))

    async def create(self) -> None:
        """Make the consumer (not yet subscribed)."""
        from connectors.kafka_io import make_consumer

        # A 10 s session (heartbeats run in the client's own thread, so long scans do not count)
        # lets the group hand a crashed agent's partitions to another within seconds.
        # Metadata refreshed every 30 s (default 5 min), so partitions added to the commands topic
        # reach the group sooner. (It did not cure the idle agent of docs/RELIABILITY.md, whose
        # cause is still open.)
        self.consumer = await self.call(make_consumer, self.kafka, self.group_id,
                                        max_poll_interval_ms=300_000, session_timeout_ms=10_000,
                                        heartbeat_interval_ms=3_000, metadata_max_age_ms=30_000,
                                        client_id=self.client_id)

    async def wait_for_topic(self) -> None:
        """Return once the broker lists the topic's partitions; ``ValueError`` if it does not in time.

        Before joining the group: a join made while a just-created topic had none yet was assigned
        nothing (seen on a just-started broker). (A consumer of its own: asking the group's consumer
        itself made it rebalance once more right after joining.)
        """
        await self.call(_wait_for_topic, self.kafka, self.topic)

    async def close_unjoined(self) -> None:
        """Close a consumer that never joined (the topic is missing), without waiting for the thread."""
        await self.call(self.consumer.close, autocommit=False)
        self._kx.shutdown(wait=False)

    async def subscribe(self, listener) -> None:
        """Join the group with ``listener`` (:func:`rebalance_listener`)."""
        self._listener = listener
        await self.call(self.consumer.subscribe, [self.topic], listener=listener)

    async def rejoin(self) -> None:
        """Leave the group and join it again."""
        await self.call(self.consumer.unsubscribe)
        await self.call(self.consumer.subscribe, [self.topic], listener=self._listener)

    def poll(self, max_records: int):
        return self.call(self.consumer.poll, timeout_ms=200, max_records=max_records)

    def set_paused(self, pause: bool):
        return self.call(_set_paused, self.consumer, pause)

    def assignment(self):
        return self.call(self.consumer.assignment)

    def lag(self):
        return self.call(_lag, self.consumer)

    async def close(self) -> None:
        """Close without committing (the agent commits itself), then end the thread."""
        await self.call(self.consumer.close, autocommit=False)
        self._kx.shutdown(wait=True)


def rebalance_listener(consumer, finished_offsets: Callable[[set], dict],
                       on_revoked: Callable[[object], None], on_assigned: Callable[[], None]):
    """The listener of ``consumer`` (the kafka-python consumer): on revocation, commits what
    ``finished_offsets`` gives for the partitions lost (the rest is re-run by the next owner), then
    calls ``on_revoked(revoked)``; on assignment, calls ``on_assigned()``."""
    from kafka import AsyncConsumerRebalanceListener

    class Listener(AsyncConsumerRebalanceListener):
        # kafka-python 3 runs rebalance listeners on the consumer's IO thread, where the blocking
        # ``commit()`` refuses to run ("Cannot block on net.run() from the IO thread"): the
        # listener is a coroutine the client awaits, and commits with the coordinator's own
        # coroutine (the coroutine behind ``commit()``; kafka-python is pinned to 3.0.x).
        async def on_partitions_revoked(self, revoked):
            # Commit what is finished in the partitions we lose; the rest is re-run by the next owner.
            try:
                offsets = finished_offsets(set(revoked))
                if offsets:
                    await consumer._coordinator._commit_offsets_sync_async(offsets)
                    log.info("committed %d finished command offset(s) of revoked partitions", len(offsets))
            except Exception as exc:  # noqa: BLE001 - logged; the next owner re-runs
                log.warning("commit on revocation failed (those commands will be re-executed): %s", exc)
            on_revoked(revoked)

        async def on_partitions_assigned(self, assigned):
            on_assigned()
            log.info("assigned %s", sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))

    return Listener()


class EmptyAssignmentRejoin:
    """No partition for :data:`EMPTY_REJOIN_S` while the broker shows the group empty (seen on a
    just-started broker: the agent believed it had joined, got an empty assignment and idled for
    good) or able to give one: join again. When the next look finds the same after that rejoin, the
    client itself is in a state it does not leave: ``on_wedged(reason)`` (the CLI starts the agent
    again, a new client and a new member)."""

    def __init__(self, consumer: CommandsConsumer, metrics,
                 on_wedged: Callable[[str], None] | None = None) -> None:
        self.consumer, self.metrics, self.on_wedged = consumer, metrics, on_wedged
        self._empty_since: float | None = None
        self._rejoined = False

    async def check(self, now: float, watching: bool) -> None:
        """One look (``watching``: assigned once and not stopping; else the clock is reset)."""
        if not watching or await self.consumer.assignment():
            self._empty_since = None
            self._rejoined = False
        elif self._empty_since is None:
            self._empty_since = now
        elif now - self._empty_since >= EMPTY_REJOIN_S:
            self._empty_since = now
            c = self.consumer
            if not await c.call(_stale_empty_assignment, c.kafka, c.group_id, c.topic, c.consumer):
                self._rejoined = False
            elif self._rejoined and self.on_wedged is not None:
                self.metrics.errors["empty-assignment-restart"] += 1
                self.on_wedged(f"still no partition of {c.topic} {EMPTY_REJOIN_S:.0f} s after joining the "
                               "group again, although the group could give one")
            else:
                log.warning("assigned no partition of %s although the group could give one: "
                            "joining the group again", c.topic)
                self.metrics.errors["empty-assignment-rejoin"] += 1
                self._rejoined = True
                await c.rejoin()


def _wait_for_topic(kafka: KafkaSettings, topic: str, timeout_s: float = 15.0) -> None:
    """Return once the broker lists ``topic``'s partitions; ``ValueError`` if it does not in time."""
    from connectors.kafka_io import make_consumer, topic_partitions

    probe = make_consumer(kafka)
    try:
        topic_partitions(probe, [topic], timeout_s)
    finally:
        probe.close(autocommit=False)


def _stale_empty_assignment(kafka: KafkaSettings, group: str, topic: str, consumer) -> bool:
    """(consumer thread) True when ``consumer`` holds no partition of ``topic`` and the broker says
    its group has no member at all (the consumer believes it joined, the broker never kept it), or
    is stable with no more members than ``topic`` has partitions (every assignor then gives each
    member at least one)."""
    from connectors.kafka_admin import admin_client
    from connectors.kafka_io import make_consumer, topic_partitions

    if consumer.assignment():
        return False
    # The broker's view through a client of its own: the group's consumer may be the one whose
    # metadata lacks the topic (then its join saw no partition, and no later change shows one).
    # Both clients are made inside the try: with the broker away, making one fails (bootstrap
    # timeout), and that must not end the agent (a clean-clone run saw it exit on a broker kill).
    probe = admin = None
    try:
        probe = make_consumer(kafka)
        admin = admin_client(kafka)
        partitions = topic_partitions(probe, [topic], 5.0)
        info = admin.describe_groups([group]).get(group) or {}
    except Exception as exc:  # noqa: BLE001 - a check that cannot run decides nothing
        log.info("could not check the empty assignment (%s: %s)", type(exc).__name__, exc)
        return False
    finally:
        for client in (probe, admin):
            if client is not None:
                try:
                    client.close()
                except Exception:  # noqa: BLE001 - closing a probe never decides anything
                    pass
    members = info.get("members") or []
    state = info.get("group_state") or info.get("state")
    log.info("no partition assigned: group %s is %s with %d member(s), %s has %d partition(s), this "
             "consumer's metadata lists %s; its coordinator: %s", group, state, len(members), topic,
             len(partitions), sorted(consumer.partitions_for_topic(topic) or ()), _coordinator_view(consumer))
    # Empty (no member at all, this consumer included, though it believes it joined: what the
    # stuck agents showed), or stable with no more members than partitions (each gets one).
    return state in ("Empty", "Dead") or (state == "Stable" and len(members) <= len(partitions))


def _coordinator_view(consumer) -> str:
    """(consumer thread) What kafka-python's group coordinator believes: member state, generation,
    whether its heartbeat loop runs. For the log of a stale empty assignment: a member that believes
    it is stable while the broker lists the group empty has stopped heartbeating, and these say
    whether the loop ended (kafka-python 3.0 restarts a failed heartbeat loop only on a rejoin) or is
    disabled. Private attributes of kafka-python 3.0.x (pinned), read defensively."""
    c = getattr(consumer, "_coordinator", None)
    if c is None:
        return "unknown"
    fut = getattr(c, "_heartbeat_loop_future", None)
    loop = "none" if fut is None else ("ended" if getattr(fut, "is_done", False) else "running")
    gen = getattr(c, "_generation", None)
    return (f"state={getattr(getattr(c, 'state', None), 'name', None)} "
            f"generation={getattr(gen, 'generation_id', None)} member={getattr(gen, 'member_id', None)!r} "
            f"heartbeat_loop={loop} heartbeat_enabled={getattr(c, '_heartbeat_enabled', None)} "
            f"coordinator={getattr(c, 'coordinator_id', None)}")


def _set_paused(consumer, pause: bool) -> None:
    """(consumer thread) Pause every assigned partition, or resume the paused ones."""
    if pause:
        consumer.pause(*consumer.assignment())
    else:
        consumer.resume(*consumer.paused())


#: Bound of each broker look-up of the backlog gauge (it runs on the consumer's thread, in the loop).
LAG_TIMEOUT_MS = 2_000


def _lag(consumer, timeout_ms: int = LAG_TIMEOUT_MS) -> int | None:
    """(consumer thread) Records in the assigned partitions not yet read; None when the broker did
    not say in time. Every call is bounded: kafka-python's ``position()`` without a timeout waits for
    the group's committed offsets for as long as it takes, and after the only broker was killed and
    started again it waited for good (the coordinator answered NotCoordinator again and again), which
    held the agent's loop and then its stop (its stacks, from a fault test run, named this call)."""
    assigned = list(consumer.assignment())
    if not assigned:
        return 0
    deadline = time.monotonic() + timeout_ms / 1000     # one bound for all the look-ups together

    def left_ms() -> int:
        return max(1, int((deadline - time.monotonic()) * 1000))
    try:
        ends = consumer.end_offsets(assigned, timeout_ms=left_ms())
        lag = 0
        for tp in assigned:
            position = consumer.position(tp, timeout_ms=left_ms())
            if position is None or ends.get(tp) is None:
                return None
            lag += max(0, ends[tp] - position)
        return lag
    except Exception:  # noqa: BLE001 - a gauge, best effort: unknown this time
        return None

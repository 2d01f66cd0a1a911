"""The commands topic's offsets: which commands of each partition are finished, and committing the
finished prefix only once every record those commands produced is acknowledged (flush, then commit).

A flush that fails raises :class:`~connectors.kafka_io.DeliveryError` and commits nothing; the agent
then stops with an error (:meth:`probe_agent.core.Agent._commit_step`).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

log = logging.getLogger("scanflow.agent")


class OffsetTracker:
    """Per partition, the offsets handed out and which are finished; yields committable offsets.

    Thread-safe: the event loop adds and finishes, the consumer thread takes commits and revokes.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[Any, OrderedDict[int, bool]] = {}

    def add(self, tp: Any, offset: int) -> None:
        with self._lock:
            self._pending.setdefault(tp, OrderedDict())[offset] = False

    def finish(self, tp: Any, offset: int) -> None:
        with self._lock:
            pending = self._pending.get(tp)
            if pending is not None and offset in pending:
                pending[offset] = True

    def take_committable(self, only: set | None = None) -> dict[Any, int]:
        """Remove the finished prefix of each partition; returns ``{tp: next offset to read}``."""
        out: dict[Any, int] = {}
        with self._lock:
            for tp, pending in self._pending.items():
                if only is not None and tp not in only:
                    continue
                last = None
                while pending:
                    offset, done = next(iter(pending.items()))
                    if not done:
                        break
                    pending.popitem(last=False)
                    last = offset
                if last is not None:
                    out[tp] = last + 1
        return out

    def revoke(self, tps) -> None:
        with self._lock:
            for tp in tps:
                self._pending.pop(tp, None)

    def outstanding(self) -> int:
        with self._lock:
            return sum(len(p) for p in self._pending.values())


def partition_of(rec):
    """The ``TopicPartition`` a consumer record came from."""
    from kafka import TopicPartition

    return TopicPartition(rec.topic, rec.partition)


def finished_offsets(tracker: OffsetTracker, publisher, partitions: set) -> dict:
    """(rebalance listener) The finished prefix of ``partitions`` as offsets to commit, after
    everything they produced is acknowledged (the producer flushes on its own IO thread)."""
    from kafka.structs import OffsetAndMetadata

    offsets = tracker.take_committable(partitions)
    if not offsets:
        return {}
    publisher.flush()
    return {tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}


def commit_finished(tracker: OffsetTracker, publisher, consumer, only: set | None = None) -> None:
    """(consumer thread) Flush, then commit the finished prefix of each partition (of the assigned
    ones, unless ``only`` names them)."""
    from kafka.structs import OffsetAndMetadata

    offsets = tracker.take_committable(only)
    if not offsets:
        return
    publisher.flush()
    assigned = consumer.assignment()
    mine = {tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()
            if only is not None or tp in assigned}
    if mine:
        try:
            consumer.commit(mine)
        except Exception as exc:  # noqa: BLE001 - e.g. rebalanced meanwhile; records come again
            log.warning("offset commit failed (the commands will be re-executed): %s", exc)

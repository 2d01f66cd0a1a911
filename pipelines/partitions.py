"""Which share of the address space one live scheduler job owns, when several jobs split the work.

On Prism (and the Direct runner) one pipeline is one Python SDK worker, so one core
(docs/RUNNERS.md). To use more cores, run several scheduler jobs, each given a group of the
partitions of ``scanflow.events`` (``pipeline.partitions``): ``i/n`` (job ``i`` of ``n``: the
partitions ``p`` with ``p % n == i``) or an explicit list (``0,2,5`` or ``0-3``). Everything of an
address then follows its events partition, the partition the producers' murmur2 partitioner
(:func:`connectors.kafka_io.partition_for`) gives its key:

- events: a job reads only its partitions (agents key ``ScanEvent`` by address and the ``ScanDone``
  of a single-address scan by that address, so all of one address's rounds reach one job);
- restore: a job restores the ``scanflow.ip-state`` records whose key (the address) hashes to one of
  its partitions with the *events* topic's partition count (:meth:`PartitionShare.owns_key`), so
  the ip-state topic may have any partition count; when it has the same count, only the job's own
  ip-state partitions are read at all;
- sweeps: a block (one range command) is swept by the job that owns the block's command key, so
  every block is swept by exactly one job of a complete set of shares;
- knowledge updates: each job rescans only the affected addresses it owns.

Offsets: every job commits only its own partitions, per partition, into the scheduler's consumer
group, so two jobs never write the same partition's offset, and a change of the split (2 jobs -> 1)
resumes from the same committed offsets.

On Flink or Dataflow none of this is needed: the runner spreads the keyed stages over its workers
itself; leave ``pipeline.partitions`` empty there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from connectors.avro_codec import canonical_target
from connectors.kafka_io import partition_for
from scanflow.config import ConfigError

_WORKER = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_ITEM = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")
_FIX = "use i/n (job i of n, 0 <= i < n), or a list such as 0,2 or 0-3"


@dataclass(frozen=True)
class PartitionShare:
    """The events partitions one job owns (``partitions``, ascending) of ``count``."""

    partitions: tuple[int, ...]
    count: int

    @classmethod
    def everything(cls, count: int) -> "PartitionShare":
        return cls(tuple(range(count)), count)

    @property
    def whole(self) -> bool:
        """True when the job owns every partition (the single-job case)."""
        return len(self.partitions) == self.count

    @property
    def label(self) -> str:
        """A short name of the share, e.g. ``p0-2-4of6``."""
        return "p" + "-".join(map(str, self.partitions)) + f"of{self.count}"

    def owns_key(self, key: bytes) -> bool:
        """True when a record keyed ``key`` belongs to this job (its events partition is ours)."""
        return partition_for(key, self.count) in self.partitions

    def owns_ip(self, ip: str) -> bool:
        """True when the address ``ip`` (canonical text, as producers key it) is this job's."""
        return self.owns_key(ip.encode())

    def owns_block(self, block: str) -> bool:
        """True when this job sweeps ``block`` (a CIDR block, keyed as its range command is)."""
        return self.owns_key(canonical_target(block).encode())


def parse_share(text: str, count: int) -> PartitionShare:
    """The share ``text`` names (``pipeline.partitions``) of a topic of ``count`` partitions.

    Empty: every partition. :class:`ConfigError` (one line, with the fix) when it is malformed,
    names a partition outside ``0..count-1``, lists one twice, or owns nothing.
    """
    if count < 1:
        raise ValueError("count must be >= 1")
    text = text.strip()
    if not text or text == "all":
        return PartitionShare.everything(count)
    m = _WORKER.match(text)
    if m:
        i, n = int(m.group(1)), int(m.group(2))
        if n < 1 or i >= n:
            raise ConfigError(f"pipeline.partitions: {text!r} is not job i of n with 0 <= i < n; {_FIX}")
        if n > count:
            raise ConfigError(f"pipeline.partitions: {text!r} splits {count} partitions among {n} jobs, so job "
                              f"{i} could own none; run at most {count} jobs or add events partitions")
        return PartitionShare(tuple(p for p in range(count) if p % n == i), count)
    listed: list[int] = []
    for item in text.split(","):
        m = _ITEM.match(item)
        if not m:
            raise ConfigError(f"pipeline.partitions: {text!r} is not a partition group; {_FIX}")
        low = int(m.group(1))
        high = int(m.group(2)) if m.group(2) is not None else low
        if high < low:
            raise ConfigError(f"pipeline.partitions: range {item.strip()!r} runs backwards; write {high}-{low}")
        listed.extend(range(low, high + 1))
    twice = sorted({p for p in listed if listed.count(p) > 1})
    if twice:
        raise ConfigError(f"pipeline.partitions: {text!r} lists partition(s) {_spans(twice)} more than once "
                          "(overlapping); list each partition once")
    outside = sorted(p for p in listed if p >= count)
    if outside:
        raise ConfigError(f"pipeline.partitions: partition(s) {_spans(outside)} out of range: the events topic has "
                          f"{count} partitions (0-{count - 1}); {_FIX}")
    return PartitionShare(tuple(sorted(listed)), count)


def _spans(numbers: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"[0-2, 5]"`` (sorted input)."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return "[" + ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans) + "]"


def check_shares(texts: Sequence[str], count: int) -> list[PartitionShare]:
    """The shares of several jobs over one topic of ``count`` partitions, checked to split it:
    :class:`ConfigError` when two jobs own the same partition or a partition is owned by none."""
    shares = [parse_share(t, count) for t in texts]
    owner: dict[int, int] = {}
    for j, share in enumerate(shares):
        for p in share.partitions:
            if p in owner:
                raise ConfigError(f"pipeline.partitions: jobs {owner[p]} ({texts[owner[p]]!r}) and {j} "
                                  f"({texts[j]!r}) both own partition {p} (overlapping); give each job i/n "
                                  f"with the same n, or disjoint lists")
            owner[p] = j
    missing = [p for p in range(count) if p not in owner]
    if missing:
        raise ConfigError(f"pipeline.partitions: partition(s) {_spans(missing)} of {count} are owned by no job, so "
                          "their addresses would never be decided; give each job i/n with the same n")
    return shares


def worker_shares(n: int) -> list[str]:
    """``pipeline.partitions`` of ``n`` jobs that split a topic evenly: ``0/n`` .. ``n-1/n``."""
    return [f"{i}/{n}" for i in range(n)]


def partition_count(kafka, topic: str) -> int:
    """How many partitions ``topic`` has (:class:`ConfigError` naming the fix when it does not exist)."""
    from connectors.kafka_io import make_consumer

    consumer = make_consumer(kafka)
    try:
        parts = consumer.partitions_for_topic(topic)
    finally:
        consumer.close(autocommit=False)
    if not parts:
        raise ConfigError(f"topic {topic} does not exist; create it with `scanflow topics create`")
    return len(parts)


def refuse_split_moves(share: PartitionShare | None, policy) -> None:
    """Devices that move (``policy.moves``) key the scheduler's state by /24, but agents key events by
    address, so a /24's addresses fall in many partitions: a job that owns only some of them would
    decide a /24 without its other addresses. A one-line :class:`ConfigError` then names the fix."""
    from scanflow.lifecycle.step import moves_of

    if share is not None and not share.whole and moves_of(policy):
        raise ConfigError(f"pipeline.partitions = {share.label}: policy.moves decides the addresses of a /24 "
                          "together, which one job of several cannot (events are keyed by address); run one "
                          "scheduler job (leave pipeline.partitions empty) or set policy.moves = false")


def share_of(kafka, events_topic: str, text: str) -> PartitionShare:
    """The share ``pipeline.partitions`` = ``text`` names, checked against ``events_topic``."""
    return parse_share(text, partition_count(kafka, events_topic))

"""Stage: change detection and scheduling, stateful per IP, with event-time timers per IP.

The key is the IP, or its /24 when the policy lets devices move (``policy.moves``,
:meth:`scanflow.lifecycle.step.Lifecycle.group_of`): then one key holds the states of the /24's
addresses and each wake-up decides them together in event-time order
(:meth:`~scanflow.lifecycle.step.Lifecycle.wake_group`), so a new answer sees the other addresses'
remembered devices as they are at its time.

Per IP the stage keeps the compact :class:`~scanflow.lifecycle.state.Tracked` state (last answer's ports and
banner digests = its fingerprint, back-off step, device, next scan time, recent scan ids) and a bag
of rounds waiting for the watermark. The logic is :class:`scanflow.lifecycle.step.Lifecycle`, which calls
the policy core's ``decide``: the core compares the answer with the IP's last fingerprint, estimates
the device when it changed and picks the port set and next scan time. This stage only stores,
orders, dedupes and times.

Timers: ``round`` wakes the IP when the watermark passes a round that arrived (set without reading
any state, so an arriving round costs one append and one timer), ``due`` at its next scan time or
watchdog. Whichever fires, the same wake-up applies *everything* due by then in event-time order and
sets both timers again, so the order of decisions is the event-time order on any runner, whatever
order the runner fires timers or delivers elements in.

Outputs (all records ready for their sinks):

- main: ``Decision`` records (one per round applied, and per watchdog decision);
- ``commands``: ``(ip, ScanCommand record)`` when an IP's next scan time is reached;
- ``states``: ``(ip, IpState record or None, headers)`` for ``scanflow.ip-state`` (None = tombstone);
  the ``scanflow.scheduler.state`` header carries the exact packed state for a restart.

Restore: ``(ip, RestoreRecord)`` elements (the ``ip-state`` topic read at start) set the state
directly; the newer state wins.

Knowledge updates: ``(ip, KnowledgeUrgent)`` elements (:mod:`pipelines.kb_updates`) wait for the
watermark like rounds (so a restored state is in place first, and they are applied in event-time
order with the IP's rounds); the wake-up rescans the IP at once if its model is affected
(:meth:`scanflow.lifecycle.step.Lifecycle.wake`), and the command goes out like any other.
"""

from __future__ import annotations

import logging
import time

from typing import Any, Mapping, NamedTuple

import apache_beam as beam
from apache_beam.coders import FastPrimitivesCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, TimerSpec, on_timer

from pipelines.beam_workarounds import decline_nan_splits, lighten_state_cache_weigher
from scanflow.lifecycle.rounds import US, Round
from pipelines.decode import timer_time
from scanflow.lifecycle.records import command_record, decision_record, ip_state_record, micros
from scanflow.lifecycle.state import (STATE_HEADER, RefTable, Tracked, is_tombstone, pack, pack_header,
                                      unpack, unpack_header)
from scanflow.lifecycle.step import (Decided, Due, KnowledgeUrgent, Lifecycle, Snapshot, from_ip_state_record,
                                     moves_of, out_time, prefix_of)

COMMANDS = "commands"
STATES = "states"
#: Optional output: every ``commands`` and ``states`` element again, as ``(tag, *element)`` on one
#: PCollection, for a write step that must order them (``pipelines.commands.WriteCommandsThenStates``)
#: without a Flatten (on Prism a Flatten is a fusion break: its consumer runs in another stage).
WRITES = "writes"
log = logging.getLogger(__name__)
_METRICS = "scanflow.changes"
#: First field of a waiting knowledge update in the bag (a round's first field is its address).
_KB_TAG = "kb-update"


def _to_bag(item) -> tuple:
    """A waiting round or knowledge update as the plain tuple kept in the bag."""
    return (_KB_TAG, *item) if isinstance(item, KnowledgeUrgent) else tuple(item)


def _from_bag(fields: tuple):
    """The round or knowledge update a bag tuple holds."""
    return KnowledgeUrgent(*fields[1:]) if fields[0] == _KB_TAG else Round(*fields)


class RestoreRecord(NamedTuple):
    """One record of ``scanflow.ip-state`` read at start: the scheduler's state header if present,
    else the decoded ``IpState`` record; both None for a tombstone without header (then ``ts`` is
    its Kafka timestamp in seconds)."""

    header: bytes | None
    record: Mapping[str, Any] | None
    ts: float
    #: The address (set where the stage is keyed by /24, :meth:`Lifecycle.group_of`).
    ip: str | None = None


class CountReporter:
    """Reports what the lifecycle counted (``Lifecycle.counts``) as Beam counters ``scanflow.changes/*``:
    each :meth:`flush` adds what was counted since the last one."""

    def __init__(self, counts):
        self._counts = counts
        self._reported: dict[str, int] = {}
        self._counters: dict = {}

    def flush(self) -> None:
        for name, value in self._counts.items():
            delta = value - self._reported.get(name, 0)
            if delta:
                if name not in self._counters:
                    self._counters[name] = Metrics.counter(_METRICS, name)
                self._counters[name].inc(delta)
                self._reported[name] = value


class _TrackFn(beam.DoFn):
    """The states of a key's addresses and the rounds waiting for the watermark, in one bag; two timers.

    A key is one address, or one /24 with devices that move (:meth:`Lifecycle.group_of`). One bag
    rather than values and a bag: on a portable runner every state read is a round trip (Prism has no
    cache tokens, so the SDK's cache does not help), and a wake-up needs both. The bag holds one
    ``(address, packed state or demotion mark)`` item per address with state
    (:mod:`scanflow.lifecycle.state`), and any number of ``(element time in micros, Round as a plain
    tuple)`` items. An arriving round is appended without reading anything; a wake-up reads the bag
    once and writes it back only when something changed.
    """

    #: The packed states and the rounds waiting for the watermark.
    STORE = BagStateSpec("store", FastPrimitivesCoder())
    #: The watermark passed a round that arrived (the latest set wins; a wake-up re-arms it).
    ROUND = TimerSpec("round", TimeDomain.WATERMARK)
    #: The earliest next scan time (or watchdog, or end of a demotion mark) of the key's addresses.
    DUE = TimerSpec("due", TimeDomain.WATERMARK)

    def __init__(self, policy, *, recent_scans: int, command_ttl_s: float, round_timeout_s: float,
                 horizon: float | None, emit_states: bool = True, forget_s: float = 24 * 3600.0,
                 catch_up: bool = False, writes: bool = False):
        self._policy = policy
        self._emit_states = emit_states
        self._writes = writes
        self._catch_up = catch_up
        self._horizon = horizon
        self._forget_s = forget_s
        self._args = dict(recent_scans=recent_scans, command_ttl_s=command_ttl_s,
                          round_timeout_s=round_timeout_s, horizon=horizon)
        self._ttl = command_ttl_s

    def setup(self):
        lighten_state_cache_weigher()
        decline_nan_splits()
        self._lifecycle = Lifecycle(self._policy, **self._args)
        self._refs = RefTable.of_policy(self._policy)
        self._name = self._policy.name
        self._counts = CountReporter(self._lifecycle.counts)

    def finish_bundle(self):
        self._counts.flush()

    @staticmethod
    def _load(store) -> tuple[dict[str, bytes], list]:
        """The packed states (or marks) by address and the waiting ``(micros, round tuple)`` items."""
        raws, items = {}, []
        for item in store.read():
            if isinstance(item[0], str):
                raws[item[0]] = item[1]
            else:
                items.append(item)
        return raws, items

    @staticmethod
    def _save(store, raws: Mapping[str, bytes], items) -> None:
        store.clear()
        for ip in sorted(raws):
            store.add((ip, raws[ip]))
        for item in items:
            store.add(item)

    def process(self, element, ts=beam.DoFn.TimestampParam, store=beam.DoFn.StateParam(STORE),
                round_timer=beam.DoFn.TimerParam(ROUND), due_timer=beam.DoFn.TimerParam(DUE)):
        key, item = element
        if not isinstance(item, RestoreRecord):
            # A round (or a knowledge update) waits for the watermark; nothing is read here.
            store.add((ts.micros, _to_bag(item)))
            round_timer.set(timer_time(ts.micros))
            return
        ip = item.ip or key
        raws, waiting = self._load(store)
        current, floor = self._read(raws.get(ip))
        try:
            restored, updated_at = self._parse_restore(item)
        except (KeyError, ValueError, IndexError) as exc:
            # A well-formed state this policy cannot read (e.g. it names a port set the policy no
            # longer has): the IP starts again from its next sweep rather than failing the job.
            self._lifecycle.counts["restore_unreadable"] += 1
            log.warning("ip-state of %s not restored (%s: %s); it is left to the sweeps",
                        ip, type(exc).__name__, exc)
            return
        new = self._lifecycle.restore(current, restored, updated_at)
        if new is not current:
            keep = pack(new, self._refs) if new is not None else self._mark(None, updated_at, None)
        elif new is None and restored is None and (floor is None or updated_at > floor):
            keep = self._mark(None, updated_at, None)
        else:
            return
        raws[ip] = keep
        self._save(store, raws, waiting)
        self._set_due(due_timer, {a: self._read(raw) for a, raw in raws.items()})

    def _mark(self, raw: bytes | None, at: float, now_us: int | None) -> bytes | None:
        """An IP without state keeps the time it was demoted (10 bytes) for ``forget_s``: a round
        that ended before it and comes again (a rewound restart, a scan executed twice) is late,
        as it would be for a tracked IP. The DUE timer forgets the mark. Returns the mark to keep
        (``raw`` when it is that mark already; None: forgotten)."""
        if now_us is not None and now_us >= micros(at + self._forget_s):
            return None
        return raw if raw is not None else pack_header(None, at, self._refs)

    def _read(self, raw: bytes | None) -> tuple[Tracked | None, float | None]:
        """The IP's state, or None and the time of a restored tombstone (None if there is none)."""
        if raw is None:
            return None, None
        if is_tombstone(raw):
            return None, unpack_header(raw, self._refs)[1]
        return unpack(raw, self._refs), None

    def _set_due(self, due_timer, kept: Mapping[str, tuple[Tracked | None, float | None]]) -> None:
        """The DUE timer at the earliest next scan (or watchdog) of a tracked address, or end of a
        demotion mark (none at or after a bounded replay's horizon: nothing to forget then)."""
        times = []
        for t, floor in kept.values():
            if t is not None:
                due = self._lifecycle.due_at(t)
            elif floor is not None:
                due = floor + self._forget_s
                if self._horizon is not None and due >= self._horizon:
                    due = None
            else:
                due = None
            if due is not None:
                times.append(due)
        if times:
            due_timer.set(timer_time(micros(min(times))))
        else:
            due_timer.clear()

    def _parse_restore(self, item: RestoreRecord):
        if item.header is not None:
            return unpack_header(item.header, self._refs)
        if item.record is not None:
            t = from_ip_state_record(item.record, self._policy.params.retry_interval, self._lifecycle.published)
            return t, t.updated_at
        return None, item.ts

    @on_timer(ROUND)
    def on_round(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
                 store=beam.DoFn.StateParam(STORE), round_timer=beam.DoFn.TimerParam(ROUND),
                 due_timer=beam.DoFn.TimerParam(DUE)):
        """The watermark passed a round of this key: wake up (see :meth:`_wake`)."""
        yield from self._wake(key, fired, store, round_timer, due_timer)

    @on_timer(DUE)
    def on_due(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
               store=beam.DoFn.StateParam(STORE), round_timer=beam.DoFn.TimerParam(ROUND),
               due_timer=beam.DoFn.TimerParam(DUE)):
        """A next scan time (or watchdog) of this key came: wake up (see :meth:`_wake`)."""
        yield from self._wake(key, fired, store, round_timer, due_timer)

    def _wake(self, key, fired, store, round_timer, due_timer):
        """Apply everything of the key due by the firing time in event-time order, emit decisions,
        commands and the new states, and set both timers again."""
        raws, waiting = self._load(store)
        currents: dict[str, Tracked | None] = {}
        floors: dict[str, float] = {}
        for ip, raw in raws.items():
            currents[ip], floor = self._read(raw)
            if floor is not None:
                floors[ip] = floor
        items = [(us, _from_bag(r)) for us, r in waiting]
        news, out, rest = self._lifecycle.wake_group(key, currents, items, fired.micros, late_until=floors,
                                                     now=time.time() if self._catch_up else None)
        keeps: dict[str, bytes] = {}
        kept: dict[str, tuple[Tracked | None, float | None]] = {}
        changed = False
        for ip in set(raws) | set(news):
            current, new, raw = currents.get(ip), news.get(ip), raws.get(ip)
            at = floors.get(ip)
            if new is not None:
                keep = raw if new is current else pack(new, self._refs)
            elif current is not None:           # demoted now
                at = out_time([o for o in out if o.ip == ip], fired.micros / US)
                keep = self._mark(None, at, fired.micros)
            elif at is not None:                # demoted before: keep or forget the mark
                keep = self._mark(raw, at, fired.micros)
            else:
                keep = None
            changed = changed or keep is not raw
            if keep is not None:
                keeps[ip] = keep
                kept[ip] = (new, None) if new is not None else (None, at)
        self._set_due(due_timer, kept)
        if changed or len(rest) != len(items):
            self._save(store, keeps, ((us, _to_bag(item)) for us, item in rest))
        if rest:
            round_timer.set(timer_time(min(us for us, _ in rest)))
        else:
            round_timer.clear()
        for o in out:
            yield from self._emit(o)

    def _emit(self, o):
        for out in emit(o, self._name, self._ttl, self._refs, self._emit_states):
            yield out
            if self._writes and isinstance(out, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(WRITES, (out.tag, *out.value))


def emit(o, policy_name: str, ttl_s: float, refs: RefTable, emit_states: bool = True):
    """The records of one lifecycle output: a ``Decision`` (main), ``(ip, ScanCommand)`` on
    ``commands``, ``(ip, IpState or None, headers)`` on ``states``."""
    if isinstance(o, Decided):
        yield decision_record(ip=o.ip, policy=policy_name, decided_at=o.at, scan_id=o.scan_id,
                              previous=o.previous, state=o.state, plan=o.plan, tracked=o.tracked)
    elif isinstance(o, Due):
        yield beam.pvalue.TaggedOutput(COMMANDS, (o.ip, command_record(
            policy=policy_name, target=o.ip, not_before=o.at, ttl_s=ttl_s, ports=o.ports, reason=o.reason.value)))
    elif isinstance(o, Snapshot) and emit_states:
        t = o.tracked
        record = None if t is None else ip_state_record(o.ip, policy_name, t.state, t.next_at, t.updated_at,
                                                        refs.port_set(t.state.probed))
        yield beam.pvalue.TaggedOutput(STATES, (o.ip, record, ((STATE_HEADER, pack_header(t, o.updated_at, refs)),)))


def _keyed(kv, moves: bool):
    """``(ip, item)`` under the stage's key for ``ip``: itself, or its /24 with devices that move
    (:func:`~scanflow.lifecycle.step.group_of`; a restore record or knowledge update then carries its address)."""
    if not moves:
        return kv
    ip, item = kv
    if isinstance(item, (RestoreRecord, KnowledgeUrgent)):
        item = item._replace(ip=ip)
    return prefix_of(ip), item


class DetectChanges(beam.PTransform):
    """``(ip, Round)`` and ``(ip, RestoreRecord)`` -> ``(decisions, commands, states)``.

    ``horizon`` (bounded replay): no wake-up is scheduled at or after it, so the run ends.
    ``forget_s``: how long an IP demoted to the sweeps keeps the time of its demotion (rounds that
    ended before it and come again are late); the scheduler passes ``pipeline.dedupe_horizon_s``.
    ``emit_states=False`` leaves the ``states`` output empty (a replay writes no ip-state).
    ``catch_up`` (live only): next scans whose command would be expired by the wall clock move to
    now (``pipeline.catch_up``; see :meth:`scanflow.lifecycle.step.Lifecycle.wake`).
    ``writes=True`` adds a fourth output, :data:`WRITES` (the commands and states again, tagged, on
    one PCollection, in the order the stage emitted them).
    """

    def __init__(self, policy, *, recent_scans: int = 4, command_ttl_s: float, round_timeout_s: float,
                 horizon: float | None = None, emit_states: bool = True, forget_s: float = 24 * 3600.0,
                 catch_up: bool = False, writes: bool = False):
        super().__init__()
        self._writes = writes
        self._fn = _TrackFn(policy, recent_scans=recent_scans, command_ttl_s=command_ttl_s,
                            round_timeout_s=round_timeout_s, horizon=horizon, emit_states=emit_states,
                            forget_s=forget_s, catch_up=catch_up, writes=writes)

    def expand(self, keyed):
        moves = moves_of(self._fn._policy)
        out = (keyed
               # A declared key type gives the runner a deterministic key coder to group state by.
               | "KeyByIp" >> beam.Map(_keyed, moves).with_output_types(beam.typehints.KV[str, Any])
               | "Track" >> beam.ParDo(self._fn).with_outputs(COMMANDS, STATES, WRITES, main="decisions"))
        if self._writes:
            return out.decisions, out[COMMANDS], out[STATES], out[WRITES]
        return out.decisions, out[COMMANDS], out[STATES]

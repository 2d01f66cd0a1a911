"""The per-IP step: what happens to one IP, as a pure function of its state, its rounds and the time.

The Beam stage (:mod:`pipelines.per_ip_stage`) keeps a :class:`~scanflow.lifecycle.state.Tracked` per IP and a bag
of rounds waiting for the watermark, and calls :meth:`Lifecycle.wake` when the IP's one event-time
timer fires. ``wake`` processes, in event-time order, every round that ended by then and the IP's
due times:

- a round: dropped if its scan id was applied already (a round delivered twice) or if it ended
  at or before the IP's last decision (late); otherwise ``policy.decide(state, observation, round end)``;
- the next scan time: the command is issued (:class:`Due`);
- the watchdog (``command_ttl_s + round_timeout_s`` after an issued command with no round back): the
  policy decides on an incomplete, silent observation, which keeps the state and retries;
- a knowledge update (:class:`KnowledgeUrgent`, at the update's time): an IP estimated as an affected
  model is rescanned at once on its open ports and the model's new ports (:meth:`Lifecycle.urgent`).

A responsive result keeps (or starts) the IP's state; a non-responsive one removes it (the IP is
demoted to the sweeps: a tombstone if it was tracked), unless the policy still recalls the IP on its
last ports (``policy.recall_interval``, off by default): then the state stays until the recall ends. Every decision is reported (:class:`Decided`)
and the final state of each wake is reported once (:class:`Snapshot`) for ``scanflow.ip-state``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping, NamedTuple

from scanflow.lifecycle.records import micros
from scanflow.lifecycle.rounds import US, Round, observation, published_sets
from scanflow.lifecycle.state import Tracked, short_hash
from scanflow.policy import IpState, IpStatus, Observation, Reason, ScanPlan
from scanflow.portsets import PortSet

_INCONCLUSIVE = Observation(frozenset(), (), None, False)
#: At most this many ports go inline in an urgent command (the contract's ``INLINE_PORTS_CAP``).
URGENT_INLINE_CAP = 64


class KnowledgeUrgent(NamedTuple):
    """A knowledge update as it reaches one IP: the update's id, its time (the record's Kafka
    timestamp in microseconds: the rescan is due then) and ``changes``, ``((model id, (new port,
    ...)), ...)``. An IP whose state names one of the models is rescanned at once
    (:meth:`Lifecycle.wake`)."""

    update_id: str
    at_us: int
    changes: tuple[tuple[str, tuple[int, ...]], ...]
    #: The address it reaches (set where the stage is keyed by /24, :meth:`Lifecycle.group_of`).
    ip: str | None = None


def urgent_ports(open_ports, new_ports) -> PortSet | None:
    """What an urgent rescan after a knowledge update probes: the IP's open ports and its model's new
    ports, inline (label ``kb-update``); None (the policy's full set) when that is more than 64."""
    ports = frozenset(open_ports) | frozenset(new_ports)
    return PortSet.inline(ports, label="kb-update") if len(ports) <= URGENT_INLINE_CAP else None


def _time_us(item) -> int:
    return item.at_us if isinstance(item, KnowledgeUrgent) else item.ended_us


def _order(item) -> tuple:
    # At the same time a round is applied before an update (its decision is not newer than the update).
    if isinstance(item, KnowledgeUrgent):
        return item.at_us, 1, item.update_id
    return item.ended_us, 0, item.scan_id


class Decided(NamedTuple):
    """One decision: ``previous`` (None for an IP not tracked before) -> ``state`` with ``plan``.
    ``tracked`` says whether the IP keeps per-IP state (False: silent, left to the sweeps);
    ``scan_id`` is None for a decision made by the watchdog."""

    ip: str
    scan_id: str | None
    at: float
    previous: IpState | None
    state: IpState
    plan: ScanPlan
    tracked: bool


class Due(NamedTuple):
    """A scan that is due now: the command to issue."""

    ip: str
    at: float
    ports: PortSet
    reason: Reason


class Snapshot(NamedTuple):
    """The IP's state after a wake (None: a tombstone, the IP is no longer tracked)."""

    ip: str
    tracked: Tracked | None
    updated_at: float


class Lifecycle:
    """Applies rounds and due times to one IP's :class:`Tracked` state with an efficient policy.

    ``horizon`` (replay only): no due time at or after it is scheduled, so a bounded run ends.
    ``policies``: the ScanDone policies whose rounds are this scheduler's (UNKNOWN: a round that
    timed out without its ScanDone); rounds of another policy (the standard baseline running beside
    it) are ignored. Counts of what was dropped and why are in ``counts``.
    """

    def __init__(self, policy, *, recent_scans: int = 4, command_ttl_s: float = 0.0, round_timeout_s: float = 0.0,
                 horizon: float | None = None, policies: tuple[str, ...] = ("EFFICIENT", "UNKNOWN")):
        self.policy = policy
        self.recent_scans = recent_scans
        self.command_ttl_s = command_ttl_s
        self.watchdog_s = command_ttl_s + round_timeout_s
        self.horizon = horizon
        self.policies = frozenset(policies)
        self.published: Mapping[tuple[str, int], PortSet] = published_sets(policy)
        self.counts: Counter[str] = Counter()
        #: Devices that move (the adaptive policy's ``moves``): a /24's addresses are decided together,
        #: in time order, each new answer looked up among the other addresses' remembered devices.
        self.moves = moves_of(policy)
        self._group: Mapping[Any, Tracked | None] | None = None

    def group_of(self, ip: str) -> str:
        """The key the stages group ``ip`` under: its /24 (``a.b.c.0/24``) with devices that move,
        the address itself otherwise."""
        return group_of(ip, self.moves)

    def neighbours(self, ip, states: Mapping[Any, Tracked | None]):
        """The states of the other addresses in ``states`` (those of ``ip``'s /24)."""
        return (t.state for other, t in states.items() if t is not None and other != ip)

    def due_at(self, t: Tracked | None) -> float | None:
        """When the IP must be woken for its next scan (or its watchdog); None if never."""
        if t is None:
            return None
        at = t.next_at + self.watchdog_s if t.issued else t.next_at
        return None if self.horizon is not None and at >= self.horizon else at

    def restore(self, current: Tracked | None, restored: Tracked | None, updated_at: float) -> Tracked | None:
        """The state after a record from ``scanflow.ip-state`` (a restart): the newer one wins;
        ``restored`` None is a tombstone."""
        if current is not None and updated_at <= current.updated_at:
            self.counts["restore_older"] += 1
            return current
        self.counts["restored" if restored is not None else "restored_tombstone"] += 1
        return self.sanitize(restored) if restored is not None else None

    def sanitize(self, t: Tracked) -> Tracked:
        """A restored state whose device model the knowledge base no longer has falls back to
        responsive-not-estimated (the policy then probes the unknown set)."""
        device = t.state.device
        if device is None:
            return t
        try:
            self.policy.estimator.port_set(device)
        except KeyError:
            self.counts["restored_unknown_device"] += 1
            fields = {name: getattr(t.state, name) for name in IpState.__slots__}
            fields.update(device=None, confidence=0.0, status=IpStatus.RESPONSIVE_UNESTIMATED)
            return t.with_(state=IpState(**fields))
        return t

    def wake(self, ip: str, t: Tracked | None, pending: list[tuple[int, Round]], until_us: int,
             late_until: float | None = None,
             now: float | None = None) -> tuple[Tracked | None, list[Any], list[tuple[int, Round]]]:
        """Process everything of ``ip`` due by ``until_us`` (the watermark, in microseconds): rounds
        whose element time is <= it and due times <= it, in event-time order.

        ``late_until``: the time of a restored tombstone of an IP without state: rounds that ended
        at or before it were applied by the run that wrote it (a restart re-reads them) and are late.

        ``now`` (live only, the wall clock): a next scan whose command would be expired by now
        (``next_at + command_ttl_s < now``) is moved to ``now`` instead of issued: after an outage
        one command per IP, not one expired command per missed cycle (counted ``caught_up``).

        ``pending`` holds ``(element time in micros, round or KnowledgeUrgent)``. Returns the new state, the outputs
        (:class:`Decided`, :class:`Due`, then one :class:`Snapshot` if the state changed) and the
        rounds still waiting.
        """
        ready = sorted((r for us, r in pending if us <= until_us), key=_order)
        rest = [(us, r) for us, r in pending if us > until_us]
        out: list[Any] = []
        start = t
        i = 0
        while True:
            due = self.due_at(t)
            due_us = micros(due) if due is not None else None
            if due_us is not None and due_us > until_us:
                due_us = None
            nxt = ready[i] if i < len(ready) else None
            if nxt is None and due_us is None:
                break
            if nxt is not None and (due_us is None or _time_us(nxt) <= due_us):
                if isinstance(nxt, KnowledgeUrgent):
                    t = self._knowledge(ip, t, nxt, out)
                else:
                    t = self._round(ip, t, nxt, out, late_until)
                i += 1
            elif not t.issued:
                if now is not None and t.next_at + self.command_ttl_s < now:
                    self.counts["caught_up"] += 1
                    t = t.with_(next_at=now, updated_at=now)
                    continue
                out.append(Due(ip, t.next_at, self.policy.ports_for(t.state), t.reason))
                t = t.with_(issued=True, updated_at=t.next_at)
            else:
                self.counts["watchdog"] += 1
                t = self._decide(ip, t, None, _INCONCLUSIVE, due, out)
        if t is not start:
            out.append(Snapshot(ip, t, t.updated_at if t is not None else out_time(out, until_us / US)))
        return t, out, rest

    def wake_group(self, key: str, states: Mapping[str, Tracked | None], pending: list[tuple[int, Any]],
                   until_us: int, late_until: Mapping[str, float] | None = None,
                   now: float | None = None) -> tuple[dict[str, Tracked | None], list[Any], list[tuple[int, Any]]]:
        """:meth:`wake` for the addresses of one key (:meth:`group_of`): ``states`` maps each address
        to its state, ``pending`` items name their address (``Round.ip``, ``KnowledgeUrgent.ip``; None:
        ``key`` itself), ``late_until`` maps an address to its tombstone time.

        Without devices that move each address is woken on its own, exactly as :meth:`wake` does. With
        them the /24's addresses are woken together in event-time order (the earliest round or due
        time of any of them first, addresses at the same instant in numeric address order), so that each new
        answer is decided with the other addresses' states as they are at its time. Returns the new
        states (None: not tracked), the outputs (each changed address's :class:`Snapshot` last) and
        the items still waiting.
        """
        late_until = late_until or {}
        waiting: dict[str, list[tuple[int, Any]]] = {}
        for us, item in pending:
            waiting.setdefault(item.ip or key, []).append((us, item))
        states = dict(states)
        out: list[Any] = []
        rest: list[tuple[int, Any]] = []
        if not self.moves:
            for ip in sorted(set(states) | set(waiting)):
                states[ip], got, left = self.wake(ip, states.get(ip), waiting.get(ip, []), until_us,
                                                  late_until.get(ip), now)
                out.extend(got)
                rest.extend(left)
            return states, out, rest
        for items in waiting.values():
            items.sort(key=lambda item: item[0])
        start = dict(states)
        snapshots: dict[str, Snapshot] = {}
        self._group = states
        try:
            while True:
                at: dict[str, int] = {}
                for ip in set(states) | set(waiting):
                    times = []
                    items = waiting.get(ip)
                    if items and items[0][0] <= until_us:
                        times.append(items[0][0])
                    due = self.due_at(states.get(ip))
                    if due is not None and micros(due) <= until_us:
                        times.append(micros(due))
                    if times:
                        at[ip] = min(times)
                if not at:
                    break
                point = min(at.values())
                for ip in sorted((ip for ip, us in at.items() if us == point), key=address_order):
                    items = waiting.get(ip, [])
                    ready = [item for item in items if item[0] <= point]
                    waiting[ip] = items[len(ready):]
                    states[ip], got, _ = self.wake(ip, states.get(ip), ready, point, late_until.get(ip), now)
                    for o in got:
                        if isinstance(o, Snapshot):
                            snapshots[ip] = o
                        else:
                            out.append(o)
        finally:
            self._group = None
        out.extend(snapshots[ip] for ip in sorted(snapshots) if states.get(ip) is not start.get(ip))
        for items in waiting.values():
            rest.extend(items)
        return states, out, rest

    def run(self, ip: str, items: list[tuple[int, Any]], *, forget_s: float) -> list[Any]:
        """Every output for ``ip`` (an address, or a /24 with devices that move: :meth:`group_of`)
        over a bounded window, exactly as the per-IP stage (:mod:`pipelines.per_ip_stage`) makes them,
        without Beam: ``items`` are all the key's ``(element time in micros, round)``, every address
        starts without state.

        The stage's wake-ups are replayed in time order: a round's element time, a due time, the
        end of a demotion mark (``forget_s`` after it); each at the millisecond its timer would fire
        on and applying everything due by then (:meth:`wake_group`). A batch replay that has every
        round of a key at once gets the same decisions and commands as the timers would give.
        """
        pending = sorted(items, key=lambda item: item[0])
        states: dict[str, Tracked | None] = {}
        floors: dict[str, float] = {}     # time of an address's demotion while it keeps the mark
        outs: list[Any] = []
        while True:
            points = [pending[0][0]] if pending else []
            points.extend(micros(due) for due in map(self.due_at, states.values()) if due is not None)
            points.extend(micros(floor + forget_s) for floor in floors.values()
                          if self.horizon is None or floor + forget_s < self.horizon)
            if not points:
                return outs
            point = -(-min(points) // 1000) * 1000          # timers fire on whole milliseconds
            before = states
            states, out, pending = self.wake_group(ip, states, pending, point, late_until=floors)
            outs.extend(out)
            for addr, t in states.items():
                if t is not None:
                    floors.pop(addr, None)
                elif before.get(addr) is not None:        # demoted now: keep the time of it
                    floors[addr] = out_time([o for o in out if getattr(o, "ip", None) == addr], point / US)
            for addr in [a for a, floor in floors.items() if point >= micros(floor + forget_s)]:
                del floors[addr]
            states = {addr: t for addr, t in states.items() if t is not None}
            pending.sort(key=lambda item: item[0])

    def _round(self, ip: str, t: Tracked | None, rnd: Round, out: list,
               late_until: float | None = None) -> Tracked | None:
        if rnd.policy not in self.policies:
            self.counts["other_policy"] += 1
            return t
        if t is None and late_until is not None and rnd.at <= late_until:
            self.counts["late_round"] += 1
            return t
        if t is not None:
            if t.seen(rnd.scan_id):
                self.counts["duplicate_round"] += 1
                return t
            if rnd.at <= t.decided_at:
                # Ended at or before the IP's last decision: late, or a round applied before a
                # restart whose scan id the state does not hold (restored from a bare record).
                self.counts["late_round"] += 1
                return t
        return self._decide(ip, t, rnd.scan_id, observation(rnd, self.published), rnd.at, out)

    def _knowledge(self, ip: str, t: Tracked | None, update: KnowledgeUrgent, out: list) -> Tracked | None:
        """A knowledge update at its time: an IP estimated as an affected model gets an urgent rescan
        on :func:`urgent_ports`, once. Applied already (the update was read again after a restart or a
        rewind) when the IP was decided after the update's time, or its urgent command for that time is
        still out."""
        if t is None:
            self.counts["kb_update_untracked"] += 1
            return t
        new = dict(update.changes).get(t.state.device) if t.state.device is not None else None
        if new is None:
            self.counts["kb_update_other_model"] += 1
            return t
        at = update.at_us / US
        if t.decided_at > at or (t.reason is Reason.URGENT and t.next_at >= at):
            self.counts["kb_update_applied_before"] += 1
            return t
        t, outs = self.urgent(ip, t, at, urgent_ports(t.state.open_ports, new))
        out.extend(o for o in outs if isinstance(o, Due))    # the wake reports the final state once
        self.counts["kb_update_rescans"] += 1
        return t

    def observe(self, ip: Any, t: Tracked | None, obs: Observation, now: float,
                scan_id: str | None = None, neighbours=None) -> tuple[Tracked | None, Decided]:
        """The one decision step: the policy decides on ``obs`` made at ``now`` for an IP in state
        ``t`` (None: not tracked, e.g. promoted from a sweep), and who stays tracked is settled here.

        Returns the new state (None: the IP is demoted to the sweeps, or stays there) and the
        :class:`Decided`. Every runner reaches the policy through this method: the live and batch
        stages (through :meth:`wake`), the simulator, the counterfactual replay and the
        test-history generator (which supply the observations of their own worlds).

        ``neighbours`` (devices that move): the states of the other addresses of ``ip``'s /24 as they
        are at ``now``; a new answer that is a device one of them remembers resumes that device's state
        (:meth:`scanflow.adaptive.AdaptivePolicy.moved`, counted ``moved``).
        """
        previous = t.state if t is not None else None
        if self.moves and neighbours is not None and obs.open_ports:
            moved = self.policy.moved(previous, obs, now, neighbours)
            if moved is not None:
                self.counts["moved"] += 1
                previous = moved
        state, plan = self.policy.decide(previous, obs, now, ip)
        # A silent IP the policy still recalls on its last ports keeps its state until the recall ends.
        tracked = state.responsive or bool(state.recall)
        decided = Decided(ip, scan_id, now, previous, state, plan, tracked)
        if not tracked:
            return None, decided
        recent = t.recent if t is not None else ()
        if scan_id is not None:
            recent = (short_hash(scan_id),) + recent[:self.recent_scans - 1]
        return Tracked(state, plan.at, plan.reason, False, now, now, recent), decided

    def urgent(self, ip: Any, t: Tracked | None, now: float, ports: PortSet | None = None) -> tuple[Tracked | None, list]:
        """Rescan a tracked IP now (the knowledge base gained ports or a malware family for its model):
        the policy's urgent plan (its full set; ``ports`` instead when given, e.g. the model's new
        ports inline) is issued at once, and the round comes back through :meth:`wake` as usual. An
        IP without state is not tracked: nothing to do. Returns the new state and the outputs
        (:class:`Due`, :class:`Snapshot`)."""
        if t is None:
            return None, []
        state, plan = self.policy.urgent(t.state, now)
        self.counts["urgent"] += 1
        new = t.with_(state=state, next_at=now, reason=Reason.URGENT, issued=True, updated_at=now)
        return new, [Due(ip, now, ports or plan.ports, Reason.URGENT), Snapshot(ip, new, now)]

    def next_scan(self, t: Tracked | None, decided: Decided | None = None) -> tuple[float, PortSet] | None:
        """When an IP is scanned next and with what: a tracked IP's next scan (its ports from the
        policy's rule for its state); an untracked one's from the plan of its last decision (the
        sweep that covers it, or the retry of an inconclusive first scan); None if neither is known."""
        if t is not None:
            return t.next_at, self.policy.ports_for(t.state)
        if decided is not None:
            return decided.plan.at, decided.plan.ports
        return None

    def _decide(self, ip: str, t: Tracked | None, scan_id: str | None, obs: Observation, now: float,
                out: list) -> Tracked | None:
        group = self._group
        t, decided = self.observe(ip, t, obs, now, scan_id,
                                  self.neighbours(ip, group) if group is not None else None)
        out.append(decided)
        return t


def moves_of(policy) -> bool:
    """True when ``policy`` lets devices move (the adaptive policy's ``moves``): its stages then key
    by /24 (:func:`group_of`)."""
    return bool(getattr(getattr(policy, "params", None), "moves", False)) and hasattr(policy, "moved")


def group_of(ip: str, moves: bool) -> str:
    """The key the stages group ``ip`` under: its /24 with devices that move, the address otherwise."""
    return prefix_of(ip) if moves else ip


def address_order(ip: str) -> tuple[int, ...]:
    """Sort key of an address in numeric order (``198.18.7.9`` before ``198.18.7.10``), the order in
    which every runner decides addresses of a /24 at the same instant."""
    return tuple(int(part) for part in ip.split("."))


def prefix_of(ip: str) -> str:
    """The /24 of an address, as text (``a.b.c.0/24``)."""
    return f"{ip.rsplit('.', 1)[0]}.0/24"


def out_time(out: list, default: float) -> float:
    """The time of the last decision in ``out`` (when a tombstone was decided)."""
    for item in reversed(out):
        if isinstance(item, Decided):
            return item.at
    return default


def from_ip_state_record(record: Mapping[str, Any], retry_s: float,
                         published: Mapping[tuple[str, int], PortSet] = {}) -> Tracked:
    """A state rebuilt from an ``IpState`` record without the scheduler's header (written by hand or
    by another program). A v2 record carries the banner digests and the last probed set, so change
    detection is exact; a v1 record has neither (the next round is compared on open ports only).
    Recent scan ids are never in the record: the last decision's time (``last_scanned_at``) guards
    against rounds delivered again instead."""
    def sec(us):
        return None if us is None else us / US

    updated = sec(record.get("updated_at")) or 0.0
    next_at = sec(record.get("next_scan_at"))
    if next_at is None:
        next_at = updated + retry_s
    status = IpStatus(record["status"]) if record.get("status") in IpStatus.__members__ else \
        IpStatus.RESPONSIVE_UNESTIMATED
    if status is IpStatus.RESPONSIVE_ESTIMATED and not record.get("device"):
        status = IpStatus.RESPONSIVE_UNESTIMATED
    digests = tuple(sorted((int(d["port"]), d["digest"]) for d in record.get("port_digests") or ()))
    probed = None
    if record.get("probed"):
        try:
            probed = PortSet.from_record(record["probed"], published.values()).ref
        except (KeyError, ValueError):
            probed = None
    state = IpState(status, int(record.get("backoff_step") or 0), frozenset(record.get("open_ports") or ()),
                    digests, record.get("device") if status is IpStatus.RESPONSIVE_ESTIMATED else None, 0.0, probed,
                    int(record.get("silent_rounds") or 0), 0, sec(record.get("first_seen_at")),
                    sec(record.get("last_seen_at")), sec(record.get("last_scanned_at")),
                    sec(record.get("last_changed_at")))
    decided = max(sec(record.get("last_scanned_at")) or 0.0, min(updated, next_at))
    return Tracked(state, next_at, Reason.BACKOFF, updated >= next_at, decided, updated, ())

"""Pure glue between the event contract and the policy core: events -> scan rounds -> Observation.

No Beam, no Kafka: the pipeline's stages, the replay and any simulator that records events use these
functions, so the same events always make the same :class:`scanflow.policy.Observation`.

Times: records carry microseconds since the epoch (``*_us``); the policy core takes float seconds
(``us / 1e6``), converted here at the edge.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, NamedTuple

from connectors.avro_codec import InvalidRecord
from scanflow.policy import Observation
from scanflow.portsets import PortSet

US = 1_000_000

#: ScanDone statuses that close a round as complete (only these can show an IP silent).
COMPLETE = "COMPLETE"
#: Status of a round closed by the timeout because its ScanDone never came.
TIMED_OUT = "TIMED_OUT"
_DONE_STATUSES = ("COMPLETE", "ABORTED", "REFUSED")

#: Record times the scheduler accepts: [2000-01-01, 2100-01-01) UTC, in microseconds. A time outside
#: is absurd (a broken clock, a unit mix-up, a hostile record) and would make the scheduler act on
#: it: a round that "ended" in 1970 is followed by every scan, command and watchdog of the half
#: century since (tens of thousands of expired commands), one from the far future parks the IP past
#: the end of Beam's timers.
MIN_TIME_US = 946_684_800 * US
MAX_TIME_US = 4_102_444_800 * US
#: The time fields of the records the scheduler reads.
TIME_FIELDS = {"ScanEvent": ("timestamp",), "ScanDone": ("started_at", "ended_at"),
               "IpState": ("updated_at", "next_scan_at", "first_seen_at", "last_seen_at", "last_scanned_at",
                           "last_changed_at")}


class InvalidTime(InvalidRecord):
    """A record time outside [:data:`MIN_TIME_US`, :data:`MAX_TIME_US`)."""

    error_class = "InvalidTimestamp"


def check_time(us: Any, field: str) -> None:
    """:class:`InvalidTime` unless ``us`` is None or microseconds within the accepted range."""
    if us is None:
        return
    if not isinstance(us, (int, float)) or us != us or not MIN_TIME_US <= us < MAX_TIME_US:
        raise InvalidTime(f"{field} {us!r} is not a time between 2000-01-01 and 2100-01-01 "
                          "(microseconds since the epoch)")


def check_times(schema: str, record: Mapping[str, Any]) -> None:
    """:class:`InvalidTime` when a time field of ``record`` is absurd (see :data:`MIN_TIME_US`)."""
    for field in TIME_FIELDS.get(schema, ()):
        check_time(record.get(field), field)

#: A port-set reference as carried through the pipeline: (name, version, ports), hashable.
PortSetRef = tuple[str | None, int | None, tuple[int, ...]]


class Event(NamedTuple):
    """One response (a ``ScanEvent``): ``banner`` is None for a SYN-ACK."""

    scan_id: str
    ip: str
    port: int
    banner: bytes | None
    protocol: str | None
    ts_us: int
    agent_id: str


class Done(NamedTuple):
    """The end of one scan (a ``ScanDone``); ``target`` is an address or a CIDR range."""

    scan_id: str
    target: str
    agent_id: str
    command_id: str | None
    policy: str
    started_us: int
    ended_us: int
    port_set: PortSetRef | None
    ports_probed: int
    status: str
    #: How many ScanEvents the agent emitted for this scan (``ScanDone.responses``); -1 unknown.
    responses: int = -1


class Round(NamedTuple):
    """Everything one IP said in one scan round, closed by its ScanDone or by the timeout.

    ``responses``: ``((port, banner or None, protocol or None), ...)`` ascending by port, one per
    open port; empty when the IP answered nothing. ``status``: the ScanDone's status, or
    ``TIMED_OUT``.
    """

    ip: str
    scan_id: str
    agent_id: str
    command_id: str | None
    policy: str
    started_us: int
    ended_us: int
    port_set: PortSetRef | None
    ports_probed: int
    responses: tuple[tuple[int, bytes | None, str | None], ...]
    status: str

    @property
    def complete(self) -> bool:
        """Only a COMPLETE round may count the IP as silent."""
        return self.status == COMPLETE

    @property
    def at(self) -> float:
        """When the round ended, in seconds: the policy's ``now`` for the decision it leads to."""
        return self.ended_us / US


def timer_time(us: int):
    """The Beam timestamp to set an event-time timer for time ``us``: rounded *up* to a whole
    millisecond, because runners keep timers in milliseconds (a timer set between two milliseconds
    would fire before its time, and a due time checked against the firing time would never be
    reached)."""
    from apache_beam.utils.timestamp import Timestamp

    return Timestamp(micros=-(-us // 1000) * 1000)


def port_set_ref(record: Mapping[str, Any] | None) -> PortSetRef | None:
    """The Avro ``PortSet`` record as a hashable ref; None for a missing or empty record."""
    if not record:
        return None
    name, version, ports = record.get("name"), record.get("version"), tuple(record.get("ports") or ())
    if name is None and not ports:
        return None
    return (name, version, ports)


def ref_of(port_set: PortSet) -> PortSetRef:
    """A core :class:`PortSet` as the ref the pipeline carries (named sets travel by name)."""
    return (port_set.name, port_set.version, () if port_set.name is not None else port_set.sorted)


def from_record(schema: str, record: Mapping[str, Any]) -> Event | Done | None:
    """A decoded ``ScanEvent`` or ``ScanDone`` as an :class:`Event` / :class:`Done`.

    Returns None for what the scheduler does not use: responses over a transport other than TCP
    (the policy's ports are TCP ports) and other schemas. Raises :class:`InvalidTime` (an
    ``InvalidRecord``) for a record whose times are absurd.
    """
    check_times(schema, record)
    if schema == "ScanEvent":
        if record.get("transport") not in ("TCP", "UNKNOWN", None):
            return None
        banner = record.get("banner") if record.get("kind") == "BANNER" else None
        return Event(record["scan_id"], record["ip"], int(record["port"]), banner,
                     record.get("banner_protocol"), int(record["timestamp"]), record.get("agent_id") or "")
    if schema == "ScanDone":
        return Done(record["scan_id"], record["target"], record.get("agent_id") or "", record.get("command_id"),
                    record.get("policy") or "UNKNOWN", int(record["started_at"]), int(record["ended_at"]),
                    port_set_ref(record.get("port_set")), int(record.get("ports_probed") or 0),
                    record.get("status") or "UNKNOWN", _count(record.get("responses")))
    return None


def _count(value: Any) -> int:
    return int(value) if isinstance(value, int) and value >= 0 else -1


def complete_in(done: Done, events: list[Event]) -> bool:
    """True when ``events`` are exactly the responses of ``done``'s single-address scan: every one
    is for its target and there are as many as the ScanDone says the agent emitted. Such a round
    needs nothing else (no later response can belong to it), so it can be assembled at once."""
    return (done.responses == len(events) and not is_range(done.target)
            and all(e.ip == done.target for e in events))


def is_range(target: str) -> bool:
    """True for a CIDR range target (a sweep), False for one address."""
    return "/" in target


#: The tail of a range scan's id as agents make it (``<command id>/<network>/<prefix>``, a sharded
#: range with ``#shard<k>of<n>``; see ``probe_agent.job.scan_id_for`` and docs/CONTRACT.md).
_RANGE_SCAN = re.compile(r"/[0-9A-Fa-f.:]+/\d{1,3}(#shard\d+of\d+)?$")
#: Separates the scan id from the address in the key of a range scan's per-address group.
RANGE_KEY_SEP = "|"


def is_range_scan(scan_id: str) -> bool:
    """True when ``scan_id`` names the scan of a CIDR range (a sweep) rather than of one address."""
    return _RANGE_SCAN.search(scan_id) is not None


def range_key(scan_id: str, ip: str) -> str:
    """The key under which one address's answers to a range scan are gathered."""
    return f"{scan_id}{RANGE_KEY_SEP}{ip}"


def scan_of_key(key: str) -> str:
    """The scan id of a round-assembly key (:func:`range_key` or a plain scan id)."""
    return key.split(RANGE_KEY_SEP, 1)[0]


def assemble(scan_id: str, events: Iterable[Event], done: Done | None, closed_us: int) -> list[Round]:
    """The rounds of one scan: one per responding IP, plus the target itself when a single-address
    scan ended (a COMPLETE round without responses is how an IP shows silence).

    A port counts once; when it answered several times (agent retries) a banner beats a bare SYN-ACK
    and the earliest banner wins. Without ``done`` the scan timed out at ``closed_us``.
    """
    by_ip: dict[str, dict[int, tuple[int, bytes | None, str | None]]] = {}
    first_us: dict[str, int] = {}
    agent = done.agent_id if done is not None else ""
    for ev in sorted(events, key=lambda e: (e.ts_us, e.ip, e.port, e.banner or b"")):
        ports = by_ip.setdefault(ev.ip, {})
        first_us.setdefault(ev.ip, ev.ts_us)
        agent = agent or ev.agent_id
        seen = ports.get(ev.port)
        if seen is None or (seen[1] is None and ev.banner is not None):
            ports[ev.port] = (ev.port, ev.banner, ev.protocol)
    if done is not None and not is_range(done.target):
        by_ip.setdefault(done.target, {})
    rounds = []
    for ip in sorted(by_ip):
        responses = tuple(by_ip[ip][p] for p in sorted(by_ip[ip]))
        if done is not None:
            status = done.status if done.status in _DONE_STATUSES else "ABORTED"
            rounds.append(Round(ip, scan_id, agent, done.command_id, done.policy, done.started_us,
                                done.ended_us, done.port_set, done.ports_probed, responses, status))
        else:
            rounds.append(Round(ip, scan_id, agent, None, "UNKNOWN", first_us.get(ip, closed_us), closed_us,
                                None, 0, responses, TIMED_OUT))
    return rounds


def resolve_port_set(ref: PortSetRef | None, published: Mapping[tuple[str, int], PortSet]) -> PortSet | None:
    """The core port set a ref names: a published one by (name, version), or the inline ports.

    None when unknown (a named set this scheduler does not have): the policy then compares answers
    on all ports, as it does for an observation without a probed set.
    """
    if ref is None:
        return None
    name, version, ports = ref
    if name is None:
        return PortSet.inline(ports) if ports else None
    return published.get((name, version))


def observation(rnd: Round, published: Mapping[tuple[str, int], PortSet]) -> Observation:
    """The policy core's :class:`Observation` of a round."""
    return Observation.of((p for p, _, _ in rnd.responses), ((p, b) for p, b, _ in rnd.responses if b is not None),
                          probed=resolve_port_set(rnd.port_set, published), complete=rnd.complete)


def published_sets(policy) -> dict[tuple[str, int], PortSet]:
    """The named port sets a policy knows, by (name, version), for :func:`resolve_port_set`."""
    sets = policy.port_sets
    return {(ps.name, ps.version): ps for ps in (sets.standard, sets.silent, sets.unknown) if ps.name is not None}

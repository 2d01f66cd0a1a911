"""Scan rounds: what one address said in one scan, and the Observation the policy decides on.

Part of the per-IP lifecycle (:mod:`scanflow.lifecycle`): events (``ScanEvent``) and scan ends
(``ScanDone``) become :class:`Round` s (:func:`assemble`), and a round becomes the policy core's
:class:`~scanflow.policy.Observation` (:func:`observation`). Pure: the Beam stages, the batch replay
and the test-history generator all use these functions, so the same events always make the same
observation.

Times: records carry microseconds since the epoch (``*_us``); the policy core takes float seconds
(``us / 1e6``), converted here at the edge.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, NamedTuple

from scanflow.policy import Observation
from scanflow.portsets import PortSet

US = 1_000_000

#: ScanDone statuses that close a round as complete (only these can show an IP silent).
COMPLETE = "COMPLETE"
#: Status of a round closed by the timeout because its ScanDone never came.
TIMED_OUT = "TIMED_OUT"
_DONE_STATUSES = ("COMPLETE", "ABORTED", "REFUSED")

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
    every = policy.published() if hasattr(policy, "published") else (sets.standard, sets.silent, sets.unknown)
    return {(ps.name, ps.version): ps for ps in every if ps.name is not None}

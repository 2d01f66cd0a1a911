"""Event histories for replays, tests and benchmarks: a small synthetic world scanned by the policy core.

:func:`toy_world` makes hosts whose answer (open ports and banners) changes at known times: known
devices (estimated), generic servers (not estimated), devices replaced by others, hosts that go
silent, hosts that appear late. :func:`record_history` scans it the way the live system does, every
decision made by the one per-IP step, :class:`scanflow.lifecycle.step.Lifecycle` (no Beam):

- every ``sweep block`` is range-scanned with the silent set every silent interval (its slot from
  :class:`pipelines.sweeps.SweepPlan`); a host that answers is decided from no state (promoted);
- a tracked host is scanned at its next scan time with its ports (``Lifecycle.next_scan``; answers
  only on probed ports); a host the lifecycle stops tracking is left to the sweeps;
- each scan emits ``ScanEvent`` records for the open probed ports and one ``ScanDone``; with
  ``dead_agent_every`` some scans lose their ScanDone (the agent died): the round then closes
  ``round_timeout_s`` after its last response, not complete; a scan that died before any response
  is noticed by the scheduler's watchdog ``command_ttl_s + round_timeout_s`` after its slot.

It returns the records in time order and every decision the policy made, so a pipeline fed the
records can be checked decision by decision. The project's simulator records its own event stream
too (:class:`connectors.sim_recorder.EventRecorder`, replayed by ``tests/unit/pipelines/test_pipeline_sim_replay.py``);
this history stays for what the simulator never produces: agents that die mid-scan (timed-out
rounds, watchdog decisions), rounds delivered twice, and sweeps on the pipeline's block slots.
"""

from __future__ import annotations

import heapq
import ipaddress
import random
from dataclasses import dataclass, field
from typing import Any

from connectors.avro_codec import make_record
from scanflow.knowledge import KnowledgeBase
from scanflow.policy import Observation

from pipelines.sweeps import SweepPlan
from scanflow.lifecycle.records import decision_record, micros, port_set_record
from scanflow.lifecycle.rounds import US
from scanflow.lifecycle.step import Lifecycle

#: Seconds a scan lasts, first probe to ScanDone.
SCAN_SECONDS = 30.0


@dataclass(frozen=True)
class Answer:
    """What a host answers from ``since`` on: open ports and per-port banners (empty: silent)."""

    since: float
    ports: tuple[int, ...]
    banners: tuple[tuple[int, bytes], ...] = ()


@dataclass
class Host:
    """One address and its answers over time (sorted by ``since``)."""

    ip: str
    answers: list[Answer] = field(default_factory=list)

    def at(self, t: float) -> Answer | None:
        """The answer in force at ``t`` (None before the first)."""
        current = None
        for a in self.answers:
            if a.since <= t:
                current = a
        return current


def _device_answer(kb: KnowledgeBase, rng: random.Random, since: float, silent: frozenset[int]) -> Answer:
    devices = [d for d in kb.devices if d.keywords and d.ports & silent]
    d = rng.choice(devices)
    ports = sorted(set(rng.sample(sorted(d.ports), min(len(d.ports), 2))) | {min(d.ports & silent)})
    kw = d.keywords[0]
    banner = (f"HTTP/1.1 200 OK\r\nDate: Mon, 0{rng.randrange(1, 9)} Jan 2024 10:00:00 GMT\r\n"
              f"Server: {kw}\r\n\r\n").encode()
    return Answer(since, tuple(ports), ((ports[0], banner),))


def _generic_answer(rng: random.Random, since: float, silent: frozenset[int]) -> Answer:
    port = rng.choice(sorted(silent & {21, 22, 25, 80, 443}) or sorted(silent))
    banner = f"SSH-2.0-OpenSSH_{rng.randrange(6, 9)}.{rng.randrange(0, 9)}\r\n".encode()
    return Answer(since, (port,), ((port, banner),) if rng.random() < 0.7 else ())


def toy_world(n: int, *, kb: KnowledgeBase, silent: frozenset[int], start: float, days: float, seed: int = 1,
              base: str = "198.51.100.0") -> list[Host]:
    """``n`` hosts in consecutive addresses from ``base``: about half known devices, a quarter
    generic servers, the rest silent; some change device, go silent or appear during the period."""
    rng = random.Random(seed)
    first = int(ipaddress.IPv4Address(base))
    hosts = []
    span = days * 86400.0
    for i in range(n):
        host = Host(str(ipaddress.IPv4Address(first + i)))
        kind = rng.random()
        if kind < 0.5:
            host.answers.append(_device_answer(kb, rng, start, silent))
        elif kind < 0.75:
            host.answers.append(_generic_answer(rng, start, silent))
        else:
            host.answers.append(Answer(start, ()))
        fate = rng.random()
        if fate < 0.15:
            host.answers.append(_device_answer(kb, rng, start + rng.random() * span, silent))
        elif fate < 0.25:
            host.answers.append(Answer(start + rng.random() * span, ()))
        elif fate < 0.32:
            host.answers.append(_generic_answer(rng, start + rng.random() * span, silent))
        hosts.append(host)
    return hosts


@dataclass
class History:
    """Records in time order (``(schema, record)``) and the policy's decisions, one dict each."""

    records: list[tuple[str, dict[str, Any]]]
    decisions: list[dict[str, Any]]

    def event_count(self) -> int:
        return len(self.records)


def _scan(records, rng, agent: str, scan_id: str, target: str, hosts: list[Host], ports: frozenset[int],
          port_set_rec: dict, t0: float, *, done: bool) -> dict[str, tuple[list[int], list[tuple[int, bytes]]]]:
    """Emit one scan's records; returns what each answering host said."""
    answered = {}
    emitted = 0
    for h in hosts:
        a = h.at(t0)
        if a is None or not a.ports:
            continue
        seen = [p for p in a.ports if p in ports]
        if not seen:
            continue
        banners = [(p, b) for p, b in a.banners if p in ports]
        answered[h.ip] = (seen, banners)
        for j, port in enumerate(seen):
            emitted += 1
            ts = micros(t0 + 1.0 + j)
            records.append(("ScanEvent", make_record("ScanEvent", scan_id=scan_id, agent_id=agent, ip=h.ip, port=port,
                                                     transport="TCP", kind="SYN_ACK", timestamp=ts)))
            banner = dict(banners).get(port)
            if banner is not None:
                emitted += 1
                records.append(("ScanEvent", make_record(
                    "ScanEvent", scan_id=scan_id, agent_id=agent, ip=h.ip, port=port, transport="TCP",
                    kind="BANNER", timestamp=ts + 500_000, banner=banner, banner_protocol="http")))
    if done:
        records.append(("ScanDone", make_record(
            "ScanDone", scan_id=scan_id, agent_id=agent, command_id=None, target=target, policy="EFFICIENT",
            started_at=micros(t0), ended_at=micros(t0 + SCAN_SECONDS), port_set=port_set_rec,
            ports_probed=len(ports), addresses_probed=1, packets_sent=len(ports), bytes_sent=40 * len(ports),
            responses=emitted, status="COMPLETE")))
    return answered


def record_history(hosts: list[Host], policy, *, start: float, horizon: float, prefix: int = 28,
                   round_timeout_s: float = 3600.0, command_ttl_s: float = 6 * 3600.0, dead_agent_every: int = 0,
                   duplicate_every: int = 0, seed: int = 7) -> History:
    """Scan ``hosts`` from ``start`` to ``horizon`` as the live system would (see the module
    docstring); ``duplicate_every``: every n-th per-IP round is delivered twice (an agent retry)."""
    rng = random.Random(seed)
    silent = policy.port_sets.silent
    nets = ipaddress.collapse_addresses(ipaddress.IPv4Network(f"{h.ip}/{prefix}", strict=False) for h in hosts)
    plan_of_sweeps = SweepPlan(list(nets), prefix, policy.params.silent_interval)
    by_block: dict[str, list[Host]] = {}
    for h in hosts:
        by_block.setdefault(str(ipaddress.IPv4Network(f"{h.ip}/{prefix}", strict=False)), []).append(h)
    lifecycle = Lifecycle(policy, command_ttl_s=command_ttl_s, round_timeout_s=round_timeout_s)
    states: dict[str, Any] = {}          # ip -> the lifecycle's Tracked state of a tracked host
    records: list[tuple[str, dict]] = []
    decisions: list[dict] = []
    # (time, order, kind, target)
    agenda = [(t, 0, "sweep", block) for t, block in plan_of_sweeps.due(start, horizon)]
    heapq.heapify(agenda)
    scans = 0

    def decide(ip, obs, now, scan_id):
        tracked, d = lifecycle.observe(ip, states.pop(ip, None), obs, now, scan_id)
        decisions.append(decision_record(ip=ip, policy=policy.name, decided_at=now, scan_id=scan_id,
                                         previous=d.previous, state=d.state, plan=d.plan, tracked=d.tracked))
        if tracked is not None:
            states[ip] = tracked
            if tracked.next_at < horizon:
                heapq.heappush(agenda, (tracked.next_at, 1, "ip", ip))

    host_of = {h.ip: h for h in hosts}
    while agenda:
        t, _, kind, target = heapq.heappop(agenda)
        scans += 1
        scan_id = f"scan-{scans:06d}"
        if kind == "sweep":
            members = [h for h in by_block[target] if h.ip not in states]
            said = _scan(records, rng, "agent-1", scan_id, target, members, silent.ports,
                         port_set_record(silent), t, done=True)
            for ip, (ports, banners) in sorted(said.items()):
                decide(ip, Observation.of(ports, banners, probed=silent), t + SCAN_SECONDS, scan_id)
            continue
        if target not in states or states[target].next_at != t:
            continue  # superseded by a later decision
        _, ports_now = lifecycle.next_scan(states[target])
        died = dead_agent_every and scans % dead_agent_every == 0
        mark = len(records)
        said = _scan(records, rng, "agent-2", scan_id, target, [host_of[target]], ports_now.ports,
                     port_set_record(ports_now), t, done=not died)
        ports, banners = said.get(target, ([], []))
        if died:
            if not ports:
                # Nothing reached the pipeline: its watchdog decides on an inconclusive round (if
                # that falls within the history; a replay schedules nothing past its horizon).
                if t + command_ttl_s + round_timeout_s < horizon:
                    decide(target, Observation.of([], complete=False), t + command_ttl_s + round_timeout_s, None)
                continue
            last = max(r["timestamp"] for _, r in records[mark:])
            decide(target, Observation.of(ports, banners, probed=None, complete=False),
                   last / US + round_timeout_s, scan_id)
        else:
            decide(target, Observation.of(ports, banners, probed=ports_now), t + SCAN_SECONDS, scan_id)
        if duplicate_every and scans % duplicate_every == 0:
            records.extend(records[mark:])
    records.sort(key=lambda r: (_time_of(r), r[0] == "ScanDone"))
    return History(records, decisions)


def _time_of(item: tuple[str, dict]) -> int:
    name, record = item
    return record["ended_at"] if name == "ScanDone" else record["timestamp"]

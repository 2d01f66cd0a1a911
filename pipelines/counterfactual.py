"""The counterfactual replay of one IP, pure (no Beam): recorded rounds in, both sides' tallies out.

**Counterfactual replay.** From a recorded *standard* scan (every IP, every 12 h, the standard set),
the efficient policy is evaluated seeing only the (IP, port, round) cells it would have probed:

- it first probes an IP at round ``phase(ip)`` of that IP's recorded rounds (``phase`` spreads the
  first probes as the simulator does: over one sweep interval when they are sweeps, all in the first
  round when they are a classification scan; a stable hash of the address unless given);
- every decision is the lifecycle's (``Lifecycle.observe``, the step the live pipeline and the
  simulator take); when it schedules the next scan at time T (``Lifecycle.next_scan``), the next
  round it sees is the first recorded round at or after T (within ``tolerance_s``, for the jitter of
  real scans), T counted from the recorded round its last observation came from;
- in that round it sees the recorded open ports and banners on the ports of its plan only, and the
  round's completeness. Same responses, same timing: only the policy differs;
- a *follow-up* (a tracked IP's next scan due before the recording looks at the address again, and
  within one standard interval: the adaptive policy's classification probe minutes after a new
  answer) is made at its own time on what the recording saw last, the same round; at most one per
  recorded round, as the simulator makes at most one within a round. The recording cannot show a
  change in those minutes: the counterfactual takes the address as unchanged since its round.

What a counterfactual cannot see: ports of a plan that the recorded scan did not probe (outside the
standard set) read as closed, and are counted as ``unobserved_probes``. An IP the lifecycle does not
track (never answered, or demoted) is swept: its silent complete rounds are the policy's silent sweep
(read from the policy by :func:`scanflow.lifecycle.untracked.bulk_silent_rule`; every
``sweep_interval(ip)`` of its prefix for a policy that sweeps prefixes apart, :func:`sweep_seconds`),
as the live sweeps and the simulator sweep it, and no decision is written for them. The adaptive
policy's per-prefix sweep table (:class:`scanflow.adaptive.SweepCadence`) is an input: the replay
uses the policy's table as given and learns none (the simulator re-learns it weekly only with
``AdaptiveParams.learned_cadence``; give every runner the same table to compare them).

Both sides' traffic is modelled with the same :class:`scanflow.metrics.ByteModel`, so the ratio
compares policies, not agents. :mod:`pipelines.replay` runs this per IP on the bounded Beam pipeline.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, NamedTuple

from scanflow.lifecycle.records import decision_record
from scanflow.lifecycle.rounds import US, resolve_port_set
from scanflow.lifecycle.step import Lifecycle, address_order
from scanflow.lifecycle.untracked import first_scan
from scanflow.metrics import ByteModel, PolicyTally
from scanflow.policy import Observation
from scanflow.portsets import PortSet


class RecordedRound(NamedTuple):
    """One IP's recorded scan round: when it ended (seconds), what answered, what was probed."""

    at: float
    scan_id: str
    policy: str
    open_ports: frozenset[int]
    banners: tuple[tuple[int, bytes], ...]
    probed: PortSet | None
    ports_probed: int
    complete: bool
    agent_id: str = ""


@dataclass
class IpReplay:
    """What replaying one IP gave: both tallies, the efficient side's records, the blind spots."""

    standard: PolicyTally
    replayed: PolicyTally
    decisions: list[dict] = field(default_factory=list)
    observations: list[dict] = field(default_factory=list)
    scans: list[dict] = field(default_factory=list)
    unobserved_probes: int = 0
    recorded_bytes: int = 0
    events: int = 0


def stable_phase(ip: str, rounds: int) -> int:
    """The round (0..rounds-1) of an IP's first sweep: a stable hash of the address."""
    if rounds <= 1:
        return 0
    return int.from_bytes(hashlib.blake2b(ip.encode(), digest_size=8).digest(), "big") % rounds


def _record_of(ps: PortSet) -> dict:
    if ps.name is not None or len(ps) <= 64:
        return ps.to_record()
    return {"name": None, "version": None, "ports": []}  # an oversized anonymous set: not recordable inline


def replay_ip(ip: str, rounds: list[RecordedRound], policy, *, counterfactual: bool = True, phase: int = 0,
              tolerance_s: float = 3600.0, byte_model: ByteModel = ByteModel(), silent_rule=None,
              records: bool = True, lifecycle: Lifecycle | None = None) -> IpReplay:
    """Replay one IP's recorded rounds (sorted by time) through ``policy`` (see the module docstring).

    Without ``counterfactual`` the policy decides on every recorded round as recorded (its
    decisions on the same history); the replayed tally is then the recording itself.
    """
    out = IpReplay(PolicyTally(byte_model), PolicyTally(byte_model))
    for _ in _replay(ip, rounds, policy, out, counterfactual=counterfactual, phase=phase, tolerance_s=tolerance_s,
                     silent_rule=silent_rule, records=records, lifecycle=lifecycle or Lifecycle(policy)):
        pass
    return out


def replay_group(ips: Iterable[tuple[str, list[RecordedRound], int]], policy, *, counterfactual: bool = True,
                 tolerance_s: float = 3600.0, byte_model: ByteModel = ByteModel(), silent_rule=None,
                 records: bool = True, lifecycle: Lifecycle | None = None) -> dict[str, IpReplay]:
    """:func:`replay_ip` for the addresses of one /24 together, ``(ip, rounds, phase)`` each, with
    devices that move: every observation of the /24 is decided in time order (addresses at the same
    instant in address order), each with the other addresses' states as they are then, as the live
    stage decides a /24 (:meth:`Lifecycle.wake_group`). Without devices that move it is
    :func:`replay_ip` of each address."""
    lifecycle = lifecycle or Lifecycle(policy)
    states: dict[str, object] = {} if lifecycle.moves else None
    outs: dict[str, IpReplay] = {}
    heap: list = []
    for ip, rounds, phase in sorted(ips, key=lambda x: address_order(x[0])):
        out = outs[ip] = IpReplay(PolicyTally(byte_model), PolicyTally(byte_model))
        steps = _replay(ip, rounds, policy, out, counterfactual=counterfactual, phase=phase, tolerance_s=tolerance_s,
                        silent_rule=silent_rule, records=records, lifecycle=lifecycle, states=states)
        at = next(steps, None)
        if at is not None:
            heapq.heappush(heap, (at, address_order(ip), ip, steps))
    while heap:
        _, order, ip, steps = heapq.heappop(heap)
        at = next(steps, None)
        if at is not None:
            heapq.heappush(heap, (at, order, ip, steps))
    return outs


def _replay(ip: str, rounds: list[RecordedRound], policy, out: IpReplay, *, counterfactual: bool, phase: int,
            tolerance_s: float, silent_rule, records: bool, lifecycle: Lifecycle,
            states: dict | None = None) -> Iterator[float]:
    """The replay of one IP as steps: yields the time of each observation before it is decided (a
    driver decides the addresses of a /24 in time order, :func:`replay_group`); ``states``: the /24's
    states by address, kept up to date here, for devices that move (None: the address alone)."""
    byte_model = out.standard.byte_model
    for r in rounds:
        probes = r.ports_probed or (len(r.probed) if r.probed else 0)
        out.standard.add_round(ip, probes, r.open_ports, [(p, len(b)) for p, b in r.banners])
        if records:  # the recording itself, so the output lake holds both sides of the comparison
            out.scans.append(_scan_record(ip, r, r.policy, r.scan_id, probes, r.probed, r.open_ports, r.banners,
                                          byte_model))
            if r.open_ports:
                out.observations.append(_observation_record(
                    ip, r, Observation(r.open_ports, r.banners, r.probed, r.complete), r.policy, r.probed, r.scan_id))
    if not rounds:
        return
    tag = f"~{policy.name.lower()}"
    times = [r.at for r in rounds]
    slot = policy.params.standard_interval
    # an untracked IP's silent complete rounds are the policy's silent sweep of its prefix
    # (bulk_silent_rule checked that the plan after a silent round is a fixed cadence and set)
    sweep_s = sweep_seconds(policy, silent_rule, ip, slot) if silent_rule is not None else None
    lifecycle = lifecycle or Lifecycle(policy)
    tracked = None                     # the lifecycle's state of the IP while it is tracked
    if counterfactual:
        if phase >= len(rounds):
            return
        first = first_scan(policy, rounds[phase].at)
        at, ports, i = first.at, first.ports, phase
    else:
        at, ports, i = None, None, 0
    while i < len(rounds):
        r = rounds[i]
        # ``now``: when the policy looks; the recorded round's end, or a follow-up's planned time
        now, sid, followed = r.at, r.scan_id + tag, False
        while True:
            yield now
            if counterfactual:
                seen = r.open_ports & ports.ports
                banners = tuple((p, b) for p, b in r.banners if p in ports.ports)
                if r.probed is not None:
                    out.unobserved_probes += len(ports.ports - r.probed.ports)
                obs = Observation(frozenset(seen), banners, ports, r.complete)
                out.replayed.add_round(ip, len(ports), seen, [(p, len(b)) for p, b in banners])
            else:
                ports = r.probed
                obs = Observation(r.open_ports, r.banners, r.probed, r.complete)
                out.replayed.add_round(ip, r.ports_probed, r.open_ports, [(p, len(b)) for p, b in r.banners])
            probes = len(ports) if ports is not None else r.ports_probed
            if counterfactual and sweep_s is not None and tracked is None and not obs.open_ports and obs.complete:
                # an untracked IP silent in a complete round: a sweep, left undecided as the live sweeps
                # and the simulator leave it; the next sweep is one sweep interval of its prefix on
                if records:
                    out.scans.append(_scan_record(ip, r, policy.name, sid, probes, ports, frozenset(), (),
                                                  byte_model, now))
                at, ports = now + sweep_s, silent_rule.sweep
            else:
                tracked, decided = lifecycle.observe(
                    ip, tracked, obs, now, sid, lifecycle.neighbours(ip, states) if states is not None else None)
                if states is not None:
                    states[ip] = tracked
                if records:
                    out.observations.append(_observation_record(ip, r, obs, policy.name, ports, sid, now))
                    out.decisions.append(decision_record(ip=ip, policy=policy.name, decided_at=now, scan_id=sid,
                                                         previous=decided.previous, state=decided.state,
                                                         plan=decided.plan, tracked=decided.tracked))
                    out.scans.append(_scan_record(ip, r, policy.name, sid, probes, ports, obs.open_ports,
                                                  obs.banners, byte_model, now))
                at, ports = lifecycle.next_scan(tracked, decided)
            nxt = times[i + 1] if i + 1 < len(times) else float("inf")
            if (counterfactual and not followed and tracked is not None
                    and at < min(nxt, r.at + slot) - tolerance_s):
                # a follow-up: due before the recording looks at the address again, so it sees what
                # the recording saw last (this round), at its own time; one per round, as the simulator
                now, sid, followed = at, f"{r.scan_id}{tag}-followup", True
                continue
            break
        if counterfactual:
            # intervals count from the recorded round observed (a plan made by a follow-up minutes
            # after the round lands on the round of its cadence, as in the simulator)
            i = max(bisect.bisect_left(times, at - (now - r.at) - tolerance_s, lo=i + 1), i + 1)
        else:
            i += 1


def sweep_seconds(policy, rule, ip: str, slot: float) -> float:
    """Seconds between sweeps of ``ip`` while it is untracked and silent: whole rounds of ``slot``,
    its prefix's interval for a policy with per-prefix sweeps (the adaptive policy's
    ``sweep_interval``, rounded as :func:`scanflow.lifecycle.untracked.sweep_rounds` rounds it),
    ``rule.rounds`` otherwise."""
    interval = getattr(policy, "sweep_interval", None)
    if interval is None:
        return rule.rounds * slot
    return max(round(interval(ip) / slot), 1) * slot


def _scan_record(ip: str, r: RecordedRound, policy: str, scan_id: str, probes: int, ports: PortSet | None,
                 open_ports: frozenset[int], banners, byte_model: ByteModel, at: float | None = None) -> dict:
    """A ScanDone for one round of one side (at ``at``, default the round's end), its bytes from the
    byte model (as the tallies)."""
    at = r.at if at is None else at
    grabbed = [(p, len(b)) for p, b in banners]
    sent = byte_model.round_bytes(probes, len(open_ports - {p for p, _ in grabbed}), grabbed)
    return {"scan_id": scan_id, "agent_id": r.agent_id, "command_id": None, "target": ip, "policy": policy,
            "started_at": int(at * US), "ended_at": int(at * US),
            "port_set": _record_of(ports) if ports is not None else {"name": None, "version": None, "ports": []},
            "ports_probed": probes, "addresses_probed": 1, "packets_sent": probes, "bytes_sent": sent,
            "responses": len(open_ports), "status": "COMPLETE" if r.complete else "ABORTED", "status_detail": None}


def _observation_record(ip: str, r: RecordedRound, obs: Observation, policy: str, ports: PortSet | None,
                        scan_id: str, at: float | None = None) -> dict:
    from scanflow.fingerprint import answer_fingerprint

    at = r.at if at is None else at
    banners = dict(obs.banners)
    return {"ip": ip, "scan_id": scan_id, "agent_id": r.agent_id, "command_id": None, "policy": policy,
            "started_at": int(at * US), "ended_at": int(at * US),
            "port_set": _record_of(ports) if ports is not None else {"name": None, "version": None, "ports": []},
            "ports_probed": len(ports) if ports is not None else 0,
            "responses": [{"port": p, "transport": "TCP", "banner": banners.get(p), "banner_protocol": None,
                           "ttl": None, "window": None} for p in sorted(obs.open_ports)],
            "status": "COMPLETE" if r.complete else "ABORTED",
            "fingerprint": answer_fingerprint(obs.open_ports, obs.banners) if obs.open_ports else None,
            "device": None}


def assemble_rounds(items: Iterable[tuple], published: Mapping[tuple[str, int], PortSet],
                    ranges: Iterable[tuple] = ()) -> tuple[list[RecordedRound], int]:
    """One IP's rounds from its compact events ``(0, scan_id, port, banner, ts_us)`` and ScanDones
    ``(1, scan_id, ended_us, status, port_set_ref, ports_probed, policy, agent_id)``, plus the range
    ScanDones covering it (same shape). A round is one scan_id; its time is the ScanDone's end (the
    last response when the ScanDone is missing: an incomplete round). Returns (rounds, events)."""
    events: dict[str, dict[int, bytes | None]] = {}
    last_ts: dict[str, int] = {}
    dones: dict[str, tuple] = {}
    n_events = 0
    for item in items:
        if item[0] == 0:
            _, sid, port, banner, ts = item
            n_events += 1
            ports = events.setdefault(sid, {})
            if ports.get(port) is None:
                ports[port] = banner
            last_ts[sid] = max(last_ts.get(sid, ts), ts)
        else:
            dones[item[1]] = item
    for item in ranges:
        dones.setdefault(item[1], item)
    out = []
    for sid in set(events) | set(dones):
        ports = events.get(sid, {})
        done = dones.get(sid)
        if done is not None:
            _, _, ended, status, ref, probed, policy, agent = done
            at, complete = ended / US, status == "COMPLETE"
            port_set = resolve_port_set(ref, published)
        else:
            at, complete, port_set, probed, policy, agent = last_ts[sid] / US, False, None, 0, "UNKNOWN", ""
        out.append(RecordedRound(at, sid, policy, frozenset(ports),
                                 tuple(sorted((p, b) for p, b in ports.items() if b is not None)),
                                 port_set, probed, complete, agent))
    out.sort(key=lambda r: (r.at, r.scan_id))
    return out, n_events

"""Avro records the scheduler writes (ScanCommand, IpState, Decision, Observation) and their ids.

Pure functions over plain values; every id is derived from what it identifies (BLAKE2b, never
``hash()``), so a decision or command made again for the same input (replay, restart) has the same id
and id-keyed sinks absorb it.
"""

from __future__ import annotations

import hashlib
from typing import Any

from scanflow.lifecycle.rounds import US, PortSetRef, Round
from scanflow.policy import IpState, ScanPlan
from scanflow.portsets import PortSet


def _id(*parts: object) -> str:
    return hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=16).hexdigest()


def micros(seconds: float | None) -> int | None:
    """Float seconds -> integer microseconds (None stays None)."""
    return None if seconds is None else int(round(seconds * US))


def command_id(policy: str, target: str, not_before_us: int) -> str:
    """The id of the command scanning ``target`` at ``not_before_us``: one per (target, slot)."""
    return _id("cmd", policy, target, not_before_us)


def decision_id(ip: str, policy: str, decided_us: int, scan_id: str | None) -> str:
    """The id of a decision about ``ip`` at ``decided_us`` (after round ``scan_id``, or a timer)."""
    return _id("dec", ip, policy, decided_us, scan_id or "")


def port_set_record(port_set: PortSet | PortSetRef | None) -> dict[str, Any]:
    """The Avro ``PortSet`` record of a core port set or a pipeline ref."""
    if port_set is None:
        return {"name": None, "version": None, "ports": []}
    if isinstance(port_set, PortSet):
        return port_set.to_record()
    name, version, ports = port_set
    return {"name": name, "version": version, "ports": list(ports) if name is None else []}


def command_record(*, policy: str, target: str, not_before: float, ttl_s: float, ports: PortSet,
                   reason: str) -> dict[str, Any]:
    """A ``ScanCommand`` for one target (an address or a sweep block).

    ``issued_at`` is the slot time itself, not the wall clock, so the same slot always gives the
    same record.
    """
    nb = micros(not_before)
    return {"command_id": command_id(policy, target, nb), "issued_at": nb, "not_before": nb,
            "expires_at": nb + micros(ttl_s), "targets": [target], "port_set": port_set_record(ports),
            "reason": reason, "policy": policy, "shard_hint": None}


def ip_state_record(ip: str, policy: str, state: IpState, next_at: float | None, updated_at: float,
                    probed: PortSet | None = None) -> dict[str, Any]:
    """The ``IpState`` record (v2) of a tracked IP; ``probed`` is the set ``state.probed`` names."""
    return {"ip": ip, "status": state.status.value, "policy": policy, "device": state.device,
            "fingerprint": state.fingerprint, "open_ports": sorted(state.open_ports),
            "port_digests": [{"port": p, "digest": d} for p, d in state.digests],
            "probed": probed.to_record() if probed is not None else None,
            "backoff_step": state.step, "silent_rounds": state.silent_rounds,
            "first_seen_at": micros(state.first_seen), "last_seen_at": micros(state.last_seen),
            "last_scanned_at": micros(state.last_scanned), "last_changed_at": micros(state.last_changed),
            "next_scan_at": micros(next_at), "updated_at": micros(updated_at)}


def decision_record(*, ip: str, policy: str, decided_at: float, scan_id: str | None,
                    previous: IpState | None, state: IpState, plan: ScanPlan, tracked: bool) -> dict[str, Any]:
    """The ``Decision`` record: the state after ``plan`` was chosen; an IP that is not tracked
    afterwards (silent: covered by the sweeps) has no next scan time and no command."""
    decided_us = micros(decided_at)
    next_us = micros(plan.at) if tracked else None
    return {"decision_id": decision_id(ip, policy, decided_us, scan_id), "ip": ip, "policy": policy,
            "decided_at": decided_us, "scan_id": scan_id,
            "previous_status": previous.status.value if previous is not None else "UNKNOWN",
            "status": state.status.value, "changed": plan.changed, "device": state.device,
            "backoff_step": state.step, "reason": plan.reason.value, "next_scan_at": next_us,
            "port_set": port_set_record(plan.ports),
            "command_id": command_id(policy, ip, next_us) if tracked else None}


def observation_record(rnd: Round, *, fingerprint: str | None, device: str | None) -> dict[str, Any]:
    """The ``Observation`` record of a round, with the answer's fingerprint and estimated device."""
    return {"ip": rnd.ip, "scan_id": rnd.scan_id, "agent_id": rnd.agent_id, "command_id": rnd.command_id,
            "policy": rnd.policy if rnd.policy in ("STANDARD", "EFFICIENT") else "UNKNOWN",
            "started_at": rnd.started_us, "ended_at": rnd.ended_us, "port_set": port_set_record(rnd.port_set),
            "ports_probed": rnd.ports_probed,
            "responses": [{"port": p, "transport": "TCP", "banner": b, "banner_protocol": proto,
                           "ttl": None, "window": None} for p, b, proto in rnd.responses],
            "status": rnd.status, "fingerprint": fingerprint, "device": device}

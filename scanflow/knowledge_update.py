"""What a knowledge update changes for the scanner: which device models gained scan ports.

``scanflow kb update FILE...`` compares the knowledge base the scheduler runs with and the same plus
the new files (:func:`compare`), and publishes one ``KnowledgeUpdate`` record
(:func:`update_record`) that the live scheduler turns into urgent rescans of every tracked address
estimated as an affected model (:mod:`pipelines.kb_updates`). Pure: no Kafka here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Mapping

from scanflow.knowledge import KnowledgeBase


@dataclass(frozen=True)
class KnowledgeGain:
    """The difference between two knowledge bases that matters for scanning.

    ``gained``: model id -> the scan ports (:meth:`KnowledgeBase.scan_ports`) it has after and not
    before, for models known before (addresses can be estimated as them now); ``new_models``: models
    only the new knowledge has (no address is estimated as them until the scheduler restarts with it);
    ``added_malware``: malware families only the new knowledge has.
    """

    before: str
    after: str
    gained: Mapping[str, frozenset[int]]
    new_models: tuple[str, ...] = ()
    added_malware: tuple[str, ...] = ()

    @property
    def ports(self) -> frozenset[int]:
        """Every port some model gained."""
        return frozenset().union(*self.gained.values())


def compare(before: KnowledgeBase, after: KnowledgeBase) -> KnowledgeGain:
    """Which models of ``before`` gained scan ports in ``after`` (their own ports, or ports of a
    malware family that infects them), and what ``after`` adds besides."""
    known = {d.id for d in before.devices}
    gained = {}
    for device in after.devices:
        if device.id in known:
            new = after.scan_ports(device.id) - before.scan_ports(device.id)
            if new:
                gained[device.id] = frozenset(new)
    old_malware = {m.id for m in before.malware}
    return KnowledgeGain(before.version, after.version, dict(sorted(gained.items())),
                         tuple(sorted(d.id for d in after.devices if d.id not in known)),
                         tuple(sorted(m.id for m in after.malware if m.id not in old_malware)))


def summary(gain: KnowledgeGain) -> str:
    """One line: how many models gained which ports, and from what."""
    what = []
    if gain.added_malware:
        what.append(f"malware {', '.join(gain.added_malware)}")
    if gain.new_models:
        what.append(f"{len(gain.new_models)} new model{'s' if len(gain.new_models) != 1 else ''}")
    head = f"knowledge {gain.before} -> {gain.after}" + (f" ({'; '.join(what)})" if what else "")
    if not gain.gained:
        return f"{head}: no model known before gains a scan port"
    ports = sorted(gain.ports)
    shown = ", ".join(map(str, ports[:12])) + (f", ... ({len(ports)} ports)" if len(ports) > 12 else "")
    n = len(gain.gained)
    return f"{head}: {n} model{'s' if n != 1 else ''} gain{'' if n != 1 else 's'} ports {shown}"


def update_id(gain: KnowledgeGain, issued_at_us: int) -> str:
    """The update's id: the two versions and the time (the same update published twice is two)."""
    digest = hashlib.blake2b(f"{gain.before}\x1f{gain.after}\x1f{issued_at_us}".encode(), digest_size=8)
    return f"kbu-{digest.hexdigest()}"


def update_record(gain: KnowledgeGain, issued_at_us: int, sources: tuple[str, ...] = ()) -> dict[str, Any]:
    """The ``KnowledgeUpdate`` record of ``gain``."""
    return {"update_id": update_id(gain, issued_at_us), "issued_at": issued_at_us,
            "kb_version_before": gain.before, "kb_version_after": gain.after,
            "changes": [{"model": m, "new_ports": sorted(p)} for m, p in gain.gained.items()],
            "added_malware": list(gain.added_malware), "sources": list(sources), "summary": summary(gain)}

"""Build the policy core the pipeline runs: knowledge base, estimator, port sets, parameters.

Nothing here decides anything; it only loads what :class:`scanflow.policy.EfficientPolicy` needs from
the ``[policy]`` and ``[pipeline]`` settings, so the live pipeline, the replay and the tests build
the same policy from the same settings.
"""

from __future__ import annotations

import logging
from pathlib import Path

from scanflow.config import resolve_path
from scanflow.estimate import Estimator
from scanflow.knowledge import KnowledgeBase, load_knowledge
from scanflow.policy import EfficientPolicy, PolicyParams, PolicyPortSets, params_from_settings
from scanflow.portsets import PortSet, Provenance

from pipelines.settings import PipelineSettings

log = logging.getLogger(__name__)

#: The ten ports most IPs answered in the paper's full-port scan (its Table 1), in rank order.
PAPER_TOP_PORTS = (80, 443, 25, 21, 110, 587, 7547, 143, 340, 995)


def provisional_port_sets(kb: KnowledgeBase) -> PolicyPortSets:
    """Port sets usable before any derivation from a full-port scan exists.

    silent = the paper's ten most answered ports plus every port a known device model uses;
    unknown = silent plus every malware port. Far smaller than derived sets (~500 and ~5,100 ports),
    so they find less; they exist so that a fresh installation schedules something sensible.
    Derive real ones with :func:`scanflow.portsets.derive_port_sets` and set
    ``pipeline.silent_set`` / ``unknown_set`` / ``standard_set``.
    """
    prov = Provenance(source=f"knowledge base {kb.version}", method="provisional (no full-port scan)",
                      created="")
    silent = frozenset(PAPER_TOP_PORTS) | kb.device_ports()
    unknown = silent | kb.malware_ports()
    return PolicyPortSets(standard=PortSet.named("provisional-standard", 1, unknown, prov),
                          silent=PortSet.named("provisional-silent", 1, silent, prov),
                          unknown=PortSet.named("provisional-unknown", 1, unknown, prov))


def policy_port_sets(pipeline: PipelineSettings, kb: KnowledgeBase) -> PolicyPortSets:
    """The configured published port sets; any left empty comes from :func:`provisional_port_sets`."""
    fallback = provisional_port_sets(kb)
    chosen = {}
    for role in ("standard", "silent", "unknown"):
        path = getattr(pipeline, f"{role}_set")
        if path:
            chosen[role] = PortSet.read(resolve_path(path))
        else:
            log.warning("pipeline.%s_set is not set: using the provisional %s set (%d ports)",
                        role, role, len(getattr(fallback, role)))
            chosen[role] = getattr(fallback, role)
    return PolicyPortSets(**chosen)


def build_policy(settings, pipeline: PipelineSettings) -> EfficientPolicy:
    """The efficient policy from ``settings.policy`` (knowledge files, ladder, cadences) and the
    port sets named in ``pipeline``."""
    policy_settings = getattr(settings, "policy", None)
    if policy_settings is None:
        kb, params, min_confidence = load_knowledge(), PolicyParams(), 0.5
    else:
        kb = load_knowledge(policy_settings.kb_paths(), builtin=policy_settings.builtin_kb)
        params, min_confidence = params_from_settings(policy_settings), policy_settings.min_confidence
    estimator = Estimator(kb, min_confidence=min_confidence)
    return EfficientPolicy(policy_port_sets(pipeline, kb), estimator, params)


def published_dir(settings) -> Path:
    """Where a scheduler publishes its named port sets and agents read them by default:
    ``<infra.state_dir>/portsets`` (``agent.portset_dir`` overrides it on the agent's side)."""
    return settings.infra.state_path() / "portsets"


def publish_port_sets(policy: EfficientPolicy, directory: Path) -> list[Path]:
    """Write the policy's named port sets (standard, silent, unknown) to ``directory`` as
    ``<name>-v<version>.json``, where agents resolve the names the commands carry. A file already
    there with the same name and version is left alone when its ports are the same, and is an
    error when they differ (a published version never changes)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for ps in (policy.port_sets.standard, policy.port_sets.silent, policy.port_sets.unknown):
        if ps.name is None:
            continue
        path = directory / f"{ps.name}-v{ps.version}.json"
        if path.exists():
            old = PortSet.read(path)
            if old.ports != ps.ports:
                raise ValueError(f"{path} holds another {ps.name}@v{ps.version} ({len(old.ports)} ports, this "
                                 f"scheduler's has {len(ps.ports)}); a published version never changes: "
                                 "publish the new set under a new version")
            written.append(path)
            continue
        tmp = path.with_suffix(".json.tmp")
        ps.write(tmp)
        tmp.replace(path)  # agents never read a half-written file
        written.append(path)
    return written


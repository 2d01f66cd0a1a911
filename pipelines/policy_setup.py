"""Build the policy core the pipeline runs: knowledge base, estimator, port sets, parameters.

Nothing here decides anything; it only loads what the efficient policy named by ``[policy] name``
needs (``adaptive``, the default: :class:`scanflow.adaptive.AdaptivePolicy`; ``paper``:
:class:`scanflow.policy.EfficientPolicy`) from the ``[policy]`` and ``[pipeline]`` settings, so the
live pipeline, the replay and the tests build the same policy from the same settings. The adaptive
policy also needs the response ranking the sets were cut from (``ranking.json`` beside derived sets,
or the provisional ranking of the provisional sets).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path

from scanflow.config import ConfigError, resolve_path
from scanflow.estimate import Estimator
from scanflow.knowledge import KnowledgeBase, load_knowledge
from scanflow.policy import HOUR, PolicyParams, PolicyPortSets, params_from_settings
from scanflow.portsets import RANKING_FILE, PortSet, Provenance, Ranking

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
                          unknown=PortSet.named("provisional-unknown", 1, unknown, prov),
                          ranking=provisional_ranking(kb))


def provisional_ranking(kb: KnowledgeBase) -> tuple[int, ...]:
    """A ranking of the provisional standard set without a survey to measure it: the paper's ten
    most answered ports in its order, then the models' signature ports, then their other ports
    (each by the number of models using it, most first), then the malware-only ports. It has no
    detection curve, so the adaptive policy's light set is the paper's ten (``policy.light_ports``
    overrides it); its follow-up leaves out the end of this order first, so it keeps the ports that
    tell models apart."""
    from collections import Counter

    top = list(PAPER_TOP_PORTS)
    uses = Counter(p for d in kb.devices for p in d.ports)
    signature = {p for d in kb.devices for p in d.signature_ports}
    by_uses = sorted(kb.device_ports() - set(top), key=lambda p: (p not in signature, -uses[p], p))
    malware = sorted(kb.malware_ports() - set(top) - kb.device_ports())
    return tuple(top + by_uses + malware)


def policy_port_sets(pipeline: PipelineSettings, kb: KnowledgeBase, *, need_ranking: bool = False) -> PolicyPortSets:
    """The configured published port sets; any left empty comes from :func:`provisional_port_sets`.

    With a configured standard set and ``need_ranking`` (the adaptive policy), its ranking comes from
    ``pipeline.ranking_file`` (or the ``ranking.json`` beside it); a missing one is a
    :class:`ConfigError` naming the fix. Without ``need_ranking`` none is read (the paper's policy
    uses none). The provisional standard set brings its provisional ranking."""
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
    if not pipeline.standard_set:
        return PolicyPortSets(**chosen, ranking=fallback.ranking)
    if not need_ranking:
        return PolicyPortSets(**chosen)
    ranking = _read_ranking(pipeline, chosen["standard"])
    return PolicyPortSets(**chosen, ranking=tuple(p for p, _ in ranking.ports), ddr_curve=ranking.ddr_curve)


def _read_ranking(pipeline: PipelineSettings, standard: PortSet) -> Ranking:
    path = (resolve_path(pipeline.ranking_file) if pipeline.ranking_file
            else resolve_path(pipeline.standard_set).parent / RANKING_FILE)
    if not path.is_file():
        raise ConfigError(f"pipeline.ranking_file: the adaptive policy needs the response ranking the "
                          f"port sets were cut from and there is none at {path}; derive the sets again "
                          "with `scanflow portsets derive` (it writes ranking.json beside them), set "
                          "pipeline.ranking_file, or use policy.name = \"paper\" (--policy paper)")
    try:
        ranking = Ranking.read(path)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"pipeline.ranking_file: {path} is not a ranking ({exc}); derive the sets again "
                          "with `scanflow portsets derive`") from None
    if ranking.standard_digest != standard.digest:
        raise ConfigError(f"pipeline.ranking_file: {path} ranks another standard set (digest "
                          f"{ranking.standard_digest}, pipeline.standard_set is {standard.ref} {standard.digest}); "
                          "use the ranking.json derived with that standard set")
    return ranking


def adaptive_params_from_settings(policy_settings):
    """:class:`scanflow.adaptive.AdaptiveParams` from the ``[policy]`` section: the ladder, standard
    and retry intervals as the paper's; ``silent_interval_h`` is the sweep period of quiet prefixes;
    ``initial_scan`` as configured (``auto``, the default: the adaptive policy's own, the paper's silent
    set with its answers followed up at once)."""
    import scanflow.adaptive as adaptive

    p = policy_settings
    initial = adaptive.AdaptiveParams().initial_scan if p.initial_scan == "auto" else p.initial_scan
    return adaptive.AdaptiveParams(
        cadence=p.cadence_h * HOUR, quiet_interval=p.silent_interval_h * HOUR,
        ladder=tuple(h * HOUR for h in p.ladder_hours),
        standard_interval=p.standard_interval_h * HOUR, retry_interval=p.retry_interval_h * HOUR,
        followup_delay=p.followup_delay_s, memory_for=p.memory_for_h * HOUR,
        exploited_cap=p.exploited_cap_h * HOUR,
        light_target=p.light_target, light_ports=p.light_ports, initial_scan=initial, moves=p.moves)


def _sweep_cadence(policy_settings, params):
    """The adaptive sweeps' cadence table: every prefix at ``cadence`` but the quiet ones listed in
    ``policy.cadence_file`` (their periods are this run's, the file only says which are quiet)."""
    from scanflow.adaptive import SweepCadence

    if not policy_settings.cadence_file:
        return None
    path = resolve_path(policy_settings.cadence_file)
    try:
        learned = SweepCadence.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"policy.cadence_file: {path} is not a sweep cadence table ({exc}); give the JSON "
                          "of SweepCadence.to_dict or leave it empty") from None
    return SweepCadence(params.cadence, params.quiet_interval, learned.quiet)


def _provisional_adaptive(params, sets: PolicyPortSets, first_scan: str = "auto"):
    """The adaptive policy on the provisional sets: their ranking has no detection curve, so the
    light set is the paper's ten most answered ports (unless ``policy.light_ports``). The provisional
    sets are small (about a hundred ports), so unless ``policy.initial_scan`` says otherwise the first
    pass is the whole provisional standard set: every device is classified at once, for a few ports
    more than the provisional silent set."""
    from dataclasses import replace

    if not params.light_ports:
        params = replace(params, light_ports=min(len(PAPER_TOP_PORTS), len(sets.ranking)))
    if first_scan == "auto":
        params = replace(params, initial_scan="standard")
    return params, sets


def build_policy(settings, pipeline: PipelineSettings, *, name: str | None = None):
    """The efficient policy called ``name`` (default ``settings.policy.name``: ``adaptive`` unless
    configured) from ``settings.policy`` (knowledge files, ladder, cadences) and the port sets named
    in ``pipeline``. ``paper`` is :class:`scanflow.policy.EfficientPolicy` exactly as before."""
    from scanflow.adaptive import make_policy

    policy_settings = getattr(settings, "policy", None)
    if policy_settings is None:
        kb, params, min_confidence = load_knowledge(), PolicyParams(), 0.5
    else:
        kb = load_knowledge(policy_settings.kb_paths(), builtin=policy_settings.builtin_kb)
        params, min_confidence = params_from_settings(policy_settings), policy_settings.min_confidence
    name = name or (policy_settings.name if policy_settings is not None else "adaptive")
    estimator = Estimator(kb, min_confidence=min_confidence)
    sets = policy_port_sets(pipeline, kb, need_ranking=name == "adaptive")
    if name != "adaptive":
        return make_policy(name, sets, estimator, paper_params=params)
    from scanflow.config import PolicySettings

    policy_settings = policy_settings or PolicySettings()
    adaptive = adaptive_params_from_settings(policy_settings)
    if not pipeline.standard_set:
        adaptive, sets = _provisional_adaptive(adaptive, sets, first_scan=policy_settings.initial_scan)
    try:
        # models that actively exploited malware infects get the shorter back-off cap (as evaluated)
        exploited = kb.exploited_models() if hasattr(kb, "exploited_models") else ()
        return make_policy(name, sets, estimator, adaptive_params=adaptive,
                           cadence=_sweep_cadence(policy_settings, adaptive), exploited=exploited)
    except ValueError as exc:
        raise ConfigError(f"policy: {exc}") from None


def published_dir(settings) -> Path:
    """Where a scheduler publishes its named port sets and agents read them by default:
    ``<infra.state_dir>/portsets`` (``agent.portset_dir`` overrides it on the agent's side)."""
    return settings.infra.state_path() / "portsets"


def named_sets(policy) -> tuple[PortSet, ...]:
    """Every named set a command of ``policy`` can carry: ``policy.published()`` when the policy
    lists them (the adaptive policy: standard, light, followup, unknown-light and one
    ``light+<model>`` set per device model), else the standard, silent and unknown sets."""
    if hasattr(policy, "published"):
        return tuple(policy.published())
    return (policy.port_sets.standard, policy.port_sets.silent, policy.port_sets.unknown)


def publish_port_sets(policy, directory: Path) -> list[Path]:
    """Write the policy's named port sets (:func:`named_sets`) to ``directory`` as
    ``<name>-v<version>.json``, where agents resolve the names the commands carry. A file already
    there with the same name and version is left alone when its ports are the same, and is an
    error when they differ (a published version never changes)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for ps in named_sets(policy):
        if ps.name is None:
            continue
        path = directory / f"{ps.name}-v{ps.version}.json"
        if path.exists():
            old = PortSet.read(path)
            if old.ports != ps.ports:
                raise ValueError(f"{path} holds another {ps.name}@v{ps.version} ({len(old.ports)} ports, this "
                                 f"scheduler's has {len(ps.ports)}: the knowledge base or the port sets "
                                 "changed since it was published); a published version never changes: "
                                 "once no agent runs a command naming it, remove the old file (or the "
                                 "directory's stale sets) and start again, or publish the new set under a "
                                 "new version")
            written.append(path)
            continue
        # A temporary file of this writer's own: several scheduler jobs of one run publish the same
        # sets into one directory at the same moment (a shared name let one job move the other's
        # file away). Agents never read a half-written file; the last rename wins with equal content.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            ps.write(tmp)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        written.append(path)
    return written


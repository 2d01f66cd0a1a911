"""The simulator's evaluation: judging two runs (the paper's window figures, detection delays) and
one seed of ``scanflow evaluate`` (port sets derived from a survey, then both policies on one world).

The runs themselves are :mod:`scanflow.simulate`; the figures come from the one definition in
:mod:`scanflow.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable

import numpy as np

from scanflow.lifecycle.untracked import bulk_silent_rule, first_probe_rounds
from scanflow.metrics import HONEYPOT_MIN_PORTS
from scanflow.simulate import PolicyRun, Schedule, make_schedule, run_policy, run_standard
from scanflow.world.model import World

if TYPE_CHECKING:
    from scanflow.adaptive import AdaptiveParams
    from scanflow.policy import PolicyParams
    from scanflow.world import WorldConfig


# -- judging the runs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowMetrics:
    """The paper's figures for the first ``weeks`` of a run (efficient against standard), by
    :mod:`scanflow.metrics`.

    ``pdr``/``ddr`` leave out IPs the standard scan found with ``honeypot_min_ports`` (100) or more
    open ports (honeypots and pseudo-services, which the paper does not count as IoT; 0 = none left
    out); ``pdr_all``/``ddr_all`` keep them.
    """

    weeks: float
    traffic_ratio: float
    pdr: float
    ddr: float
    attempts_ratio: float
    pdr_all: float
    ddr_all: float
    standard_bytes: int
    efficient_bytes: int
    standard_attempts: int
    efficient_attempts: int
    standard_cells: int
    efficient_cells: int
    common_cells: int
    standard_ips: int
    efficient_ips: int
    excluded_ips: int
    missed_ips_by_class: dict
    missed_cells_by_class: dict
    honeypot_min_ports: int = HONEYPOT_MIN_PORTS
    #: The most probes the efficient scan sent one address in one round of this window's run (the
    #: ethics bound is the standard set's size).
    max_slot_probes: int = 0


def window_metrics(world: World, std: PolicyRun, eff: PolicyRun, slot: int, weeks: float,
                   honeypot_min_ports: int | None = HONEYPOT_MIN_PORTS) -> WindowMetrics:
    """Traffic, PDR, DDR and attempts over the rounds that start in the first ``weeks``
    (:func:`scanflow.metrics.compare_counts` on the cells found in them)."""
    from scanflow.metrics import compare_cells, compare_counts, ips_of, judge_cells
    from scanflow.world.dynamics import CLASS_NAMES

    end = int(np.ceil(weeks * 7 * 86400 / slot - 1e-9))
    ps = std.cells[std.cell_round < end]
    pe = eff.cells[eff.cell_round < end]
    cs, ce = _cell_pairs(ps), _cell_pairs(pe)
    totals = {"standard_bytes": int(std.bytes[:end].sum()), "efficient_bytes": int(eff.bytes[:end].sum()),
              "standard_attempts": int(std.attempts[:end].sum()), "efficient_attempts": int(eff.attempts[:end].sum())}
    judged = judge_cells(cs, ce, honeypot_min_ports=honeypot_min_ports)
    m = compare_counts(judged.counts(), **totals)
    every = compare_cells(cs, ce, honeypot_min_ports=None, **totals)
    ip_class = np.full(world.n_ips, -1, dtype=np.int8)
    ip_class[world.segments.ip] = world.segments.cls
    missed_ips = np.array(sorted(ips_of(judged.standard) - ips_of(judged.efficient)), dtype=np.int64)
    missed_cells = np.array([ip for ip, _ in judged.standard - judged.efficient], dtype=np.int64)

    def by_class(ips_: np.ndarray) -> dict:
        c = np.bincount(ip_class[ips_] + 1, minlength=len(CLASS_NAMES) + 1) if len(ips_) else np.zeros(5, int)
        return {name: int(c[i + 1]) for i, name in enumerate(CLASS_NAMES)}

    return WindowMetrics(
        weeks=weeks, traffic_ratio=m.traffic_ratio, pdr=m.pdr, ddr=m.ddr, attempts_ratio=m.attempts_ratio,
        pdr_all=every.pdr, ddr_all=every.ddr,
        standard_bytes=m.standard_bytes, efficient_bytes=m.efficient_bytes,
        standard_attempts=m.standard_attempts, efficient_attempts=m.efficient_attempts,
        standard_cells=m.standard_cells, efficient_cells=m.efficient_cells, common_cells=m.common_cells,
        standard_ips=m.standard_ips, efficient_ips=m.efficient_ips, excluded_ips=m.excluded_ips,
        missed_ips_by_class=by_class(missed_ips), missed_cells_by_class=by_class(missed_cells),
        honeypot_min_ports=m.honeypot_min_ports, max_slot_probes=int(eff.max_slot_probes))


def _cell_pairs(codes: np.ndarray) -> set[tuple[int, int]]:
    """Cells coded ``ip << 16 | port`` as the (ip, port) pairs :mod:`scanflow.metrics` counts."""
    return set(zip((codes >> 16).tolist(), (codes & 0xFFFF).tolist()))


#: The changes of the world whose detection delay is reported: (name, device class, event kind).
CHANGE_KINDS = (
    ("new device (static address)", 0, 1),
    ("replaced device (static address)", 0, 2),
    ("reassigned address (dynamic pool)", 1, 2),
    ("sporadic device back on-line", 2, 3),
    ("moved device (dynamic pool)", 1, 1),
)


def detection_delays(world: World, std: PolicyRun, eff: PolicyRun, horizon: int | None = None) -> dict:
    """For each kind of change in the world (:data:`CHANGE_KINDS`, plus the devices present at the
    start), how soon each scan saw the new device answer: the number of changes, the share each scan
    saw before the device went away, median and 90th-percentile delay in hours, and the share the
    efficient scan saw among those the standard scan saw."""
    from scanflow.world.dynamics import INITIAL

    s = world.segments
    horizon = world.horizon if horizon is None else horizon
    kinds = [("present at the start", None, INITIAL)] + list(CHANGE_KINDS)
    out = {}
    for name, cls, ev in kinds:
        mask = (s.event == ev) & (s.start < horizon)
        if cls is not None:
            mask &= s.cls == cls
        sel = np.flatnonzero(mask)
        entry: dict = {"events": int(len(sel))}
        for label, run in (("standard", std), ("efficient", eff)):
            entry[label] = _seen_and_delay(s, sel, run, horizon)
        both = (std.detected[sel] >= 0) & (std.detected[sel] < horizon)
        eff_ok = (eff.detected[sel] >= 0) & (eff.detected[sel] < horizon)
        entry["efficient_seen_of_standard_seen"] = float(eff_ok[both].mean()) if both.any() else float("nan")
        out[name] = entry
    return out


def _seen_and_delay(s, sel: np.ndarray, run: PolicyRun, horizon: int) -> dict:
    """Of the segments ``sel``: the share ``run`` saw before ``horizon``, and the median and
    90th-percentile delay (hours) from each segment's start to its first detection."""
    det = run.detected[sel]
    ok = (det >= 0) & (det < horizon)
    delay = (det[ok] - s.start[sel][ok]) / 3600.0
    return {"seen": float(ok.mean()) if len(sel) else float("nan"),
            "median_h": float(np.median(delay)) if len(delay) else float("nan"),
            "p90_h": float(np.percentile(delay, 90)) if len(delay) else float("nan")}


def delay_samples(world: World, run: PolicyRun, cls: int, event: int) -> np.ndarray:
    """Delays (hours) from each change of one kind (device class, event) to its first detection by
    ``run``; NaN where it was never seen (for CDF plots)."""
    s = world.segments
    sel = np.flatnonzero((s.cls == cls) & (s.event == event))
    det = run.detected[sel]
    return np.where(det >= 0, (det - s.start[sel]) / 3600.0, np.nan)


# -- one evaluation: port sets from a survey, then both policies per seed ------------------------------


@dataclass(frozen=True)
class EvaluationConfig:
    """What ``scanflow evaluate`` runs: the world, its size and horizon, the seeds, the judging
    windows, the real-network artefacts to reproduce (``loss``, ``desync``), and the survey the port
    sets are derived from (the paper's Dec 2018 full-port scan: 12.2 M addresses, 2.7 % answering).
    ``honeypot_min_ports`` is the judging's honeypot exclusion (:mod:`scanflow.metrics`; 0 = none)."""

    ips: int = 100_000
    weeks: float = 8.0
    windows: tuple[float, ...] = (2.0, 8.0)
    seeds: tuple[int, ...] = (1, 2, 3)
    loss: float = 0.0
    desync: bool = False
    world: "WorldConfig | None" = None
    survey_seed: int = 0
    survey_ips: int | None = None
    survey_responsive: float | None = None
    record: bool = True
    params: "PolicyParams | None" = None
    min_confidence: float = 0.5
    honeypot_min_ports: int | None = HONEYPOT_MIN_PORTS
    #: The named world (:mod:`scanflow.scenarios`) ``world`` was built from, for the record.
    scenario: str = "paper"
    #: The efficient policy judged against the standard scan: ``paper`` or ``adaptive``
    #: (:data:`scanflow.adaptive.POLICIES`), and the adaptive policy's parameters.
    policy: str = "paper"
    adaptive: "AdaptiveParams | None" = None
    #: The name of this policy variant in a comparison (:func:`policy_variants`); empty: ``policy``.
    variant: str = ""
    #: Processes one efficient run may use (ranges of /24s, :func:`scanflow.simulate.run_policy`);
    #: the figures do not depend on it.
    workers: int = 1

    @property
    def label(self) -> str:
        """The name this run goes by in tables, plots and directories."""
        return self.variant or self.policy

    def world_config(self):
        """The world parameters with this evaluation's size and loss."""
        from scanflow.world import WorldConfig

        base = self.world or WorldConfig()
        return base.replace(n_ips=self.ips, loss=self.loss)


@dataclass(frozen=True)
class PolicyVariant:
    """One efficient policy a comparison runs: its name, the policy (:data:`scanflow.adaptive.POLICIES`),
    the adaptive policy's parameters (None: the paper's method or the adaptive defaults) and what it is."""

    name: str
    policy: str
    adaptive: "AdaptiveParams | None" = None
    summary: str = ""

    def apply(self, cfg: EvaluationConfig) -> EvaluationConfig:
        """``cfg`` running this variant."""
        return replace(cfg, policy=self.policy, adaptive=self.adaptive, variant=self.name)


#: The adaptive policy's ablation (``scanflow evaluate --ablation``): each mechanism switched off in
#: turn, (variant name, :class:`~scanflow.adaptive.AdaptiveParams` change, what is left out).
ABLATIONS = (
    ("adaptive-no-followup", {"followup": False}, "no immediate follow-up: a new answer waits for the back-off"),
    ("adaptive-no-cadence", {"learned_cadence": False}, "no learned per-prefix sweep cadence: every prefix every 12 h"),
    ("adaptive-no-memory", {"memory": False}, "no remembered devices: a returning device is classified again"),
    ("adaptive-light-first", {"initial_scan": "light"}, "first probe of each address the light set, not the paper's silent set"),
)


def policy_variants(policy: str = "both", ablation: bool = False,
                    base: "AdaptiveParams | None" = None, ceiling: bool = False) -> list[PolicyVariant]:
    """The variants ``--policy paper|adaptive|both`` and ``--ablation`` name, in table order: the
    paper's method, the adaptive policy (``base``: its parameters), then the adaptive policy with each
    mechanism off (:data:`ABLATIONS`; ``--ablation`` brings the adaptive policy in as the reference)."""
    from scanflow.adaptive import POLICIES, AdaptiveParams

    if policy not in (*POLICIES, "both"):
        raise ValueError(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}, both")
    base = base or AdaptiveParams()
    out = []
    if policy in ("paper", "both"):
        out.append(PolicyVariant("paper", "paper", None, "the paper's method"))
    if policy in ("adaptive", "both") or ablation:
        out.append(PolicyVariant("adaptive", "adaptive", base, "the adaptive policy, every mechanism on"))
    if ablation:
        out += [PolicyVariant(name, "adaptive", replace(base, **change), what) for name, change, what in ABLATIONS]
        # devices that move are off by default (docs/EVALUATION.md): the ablation shows them switched over
        out.append(PolicyVariant("adaptive-no-moves", "adaptive", replace(base, moves=False),
                                 "no devices that move: a device at another address of its /24 starts over")
                   if base.moves else
                   PolicyVariant("adaptive-moves", "adaptive", replace(base, moves=True),
                                 "devices that move: a device another address of its /24 remembers resumes there"))
    if ceiling:
        from scanflow.adaptive import TWIN

        out.append(PolicyVariant(TWIN, TWIN, None, "the standard scan again at the efficient scan's own instants "
                                                   "and losses: the most any policy probing there finds"))
    return out


@dataclass
class SeedResult:
    """Everything one seed produced."""

    seed: int
    world: World
    schedule: Schedule
    standard: PolicyRun
    efficient: PolicyRun
    windows: list[WindowMetrics]
    delays: dict
    seconds: dict
    new_devices: dict = field(default_factory=dict)


def derive_policy_sets(cfg: EvaluationConfig, kb=None):
    """Emulate the full-port survey and derive the standard, silent and unknown-device port sets from
    it with :func:`scanflow.portsets.derive_port_sets` (device and malware ports from the knowledge
    base). Returns ``(derivation, survey_rows)``."""
    from scanflow.knowledge import load_knowledge
    from scanflow.portsets import derive_port_sets
    from scanflow.world import SURVEY_IPS, SURVEY_RESPONSIVE_FRACTION, survey_world

    kb = kb or load_knowledge()
    table = survey_world(cfg.world_config(), cfg.survey_seed, n_ips=cfg.survey_ips or SURVEY_IPS,
                         responsive_fraction=cfg.survey_responsive or SURVEY_RESPONSIVE_FRACTION, kb=kb)
    derivation = derive_port_sets(table, device_ports=kb.device_ports(), malware_ports=kb.malware_ports(),
                                  created="2018-12-31", source_label=f"synthetic full-port survey, seed {cfg.survey_seed}",
                                  kb_version=kb.version)
    from dataclasses import replace

    from scanflow.predict import PortPredictor

    derivation = replace(derivation, predictor=PortPredictor.from_table(table))
    return derivation, table.num_rows


def _run_both(cfg: EvaluationConfig, seed: int, weeks: float, port_sets, kb, *, record: bool,
              progress: Callable[[int], None] | None):
    """Generate the world of ``seed`` over ``weeks`` and run both policies on it."""
    import time

    from scanflow.adaptive import make_policy
    from scanflow.estimate import Estimator
    from scanflow.policy import PolicyParams

    params = cfg.params or PolicyParams()
    clock = {}
    t0 = time.perf_counter()
    world = World.generate(cfg.world_config(), seed, horizon_days=weeks * 7, kb=kb)
    from scanflow.adaptive import AdaptiveParams, SweepCadence
    from scanflow.world.model import BASE_ADDRESS

    ap = cfg.adaptive or AdaptiveParams()
    # the sweep table names the world's real /24s (10.0.0.0 upwards), as a lake's would
    policy = make_policy(cfg.policy, port_sets, Estimator(kb, min_confidence=cfg.min_confidence),
                         paper_params=params, adaptive_params=ap,
                         cadence=SweepCadence(ap.cadence, ap.quiet_interval, offset=BASE_ADDRESS),
                         exploited=kb.exploited_models())
    rule = bulk_silent_rule(policy, params.standard_interval)
    schedule = make_schedule(world.n_ips, seed, world.horizon, slot=params.standard_interval,
                             silent_rounds=first_probe_rounds(rule), desync=cfg.desync)
    clock["world"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    std = run_standard(world, schedule, port_sets.standard, record=record)
    clock["standard"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    eff = run_policy(world, schedule, policy, record=record, ladder_len=len(policy.params.ladder), progress=progress,
                     workers=cfg.workers)
    clock["efficient"] = time.perf_counter() - t0
    return world, schedule, std, eff, clock


def evaluation_rounds(cfg: EvaluationConfig) -> int:
    """Rounds simulated per seed (of the policy's standard interval): the full run and one run per
    shorter judging window."""
    from scanflow.policy import PolicyParams

    slot = (cfg.params or PolicyParams()).standard_interval
    weeks = [cfg.weeks] + [w for w in set(cfg.windows) if w < cfg.weeks - 1e-9]
    return sum(int(round(w * 7 * 86400 / slot)) for w in weeks)


def evaluate_seed(cfg: EvaluationConfig, seed: int, port_sets, kb=None, *,
                  progress: Callable[[int], None] | None = None) -> SeedResult:
    """Generate the world of ``seed`` and run both policies on it over ``cfg.weeks``; every shorter
    judging window is a run of its own length (a world generated over 2 weeks is not the first 2
    weeks of one generated over 8: the generator depends on the horizon), judged over all of it."""
    from scanflow.knowledge import load_knowledge

    kb = kb or load_knowledge()
    world, schedule, std, eff, clock = _run_both(cfg, seed, cfg.weeks, port_sets, kb, record=cfg.record,
                                                 progress=progress)
    windows = []
    for w in sorted(set(cfg.windows)):
        if w > cfg.weeks + 1e-9:
            continue
        if abs(w - cfg.weeks) < 1e-9:
            windows.append(window_metrics(world, std, eff, schedule.slot, w, cfg.honeypot_min_ports))
        else:
            w_world, w_schedule, w_std, w_eff, _ = _run_both(cfg, seed, w, port_sets, kb, record=False,
                                                             progress=progress)
            windows.append(window_metrics(w_world, w_std, w_eff, w_schedule.slot, w, cfg.honeypot_min_ports))
    return SeedResult(seed, world, schedule, std, eff, windows, detection_delays(world, std, eff), clock,
                      new_device_delays(world, std, eff))


def new_device_delays(world: World, std: PolicyRun, eff: PolicyRun) -> dict:
    """How soon each scan saw a device that appeared after the start (a device new at its address:
    every segment that is neither present at the start nor a sporadic device coming back): the
    number of them, the share each scan saw before it went away, and the median and 90th-percentile
    delay in hours of those it saw."""
    from scanflow.world.dynamics import INITIAL, RETURNED

    s = world.segments
    sel = np.flatnonzero((s.event != INITIAL) & (s.event != RETURNED) & (s.start > 0) & (s.start < world.horizon))
    out: dict = {"devices": int(len(sel))}
    for label, run in (("standard", std), ("efficient", eff)):
        out[label] = _seen_and_delay(s, sel, run, world.horizon)   # a run never detects at or past its horizon
    return out


def miss_breakdown(world: World, std: PolicyRun, eff: PolicyRun, light_ports, honeypot_min_ports: int | None = HONEYPOT_MIN_PORTS) -> dict:
    """Where the efficient scan's misses are: the (ip, port) cells the standard scan found and it did
    not, by device class of the address, by whether the efficient scan found the address at all, and
    by whether the port is in the light set; and, for addresses it did find, how many missed cells
    belong to a device whose open light ports and banner-less light answer were the same as its
    predecessor's on the address (a device the light set cannot tell from the one before it).
    Addresses the standard scan saw with ``honeypot_min_ports`` or more ports are left out, as in the
    judging."""
    from scanflow.world.banners import NO_BANNER
    from scanflow.world.dynamics import CLASS_NAMES

    light = np.zeros(65536, dtype=bool)
    light[np.fromiter(light_ports, dtype=np.int64)] = True
    missed = np.setdiff1d(std.cells, eff.cells)
    if honeypot_min_ports:
        ips, counts = np.unique(std.cells >> 16, return_counts=True)
        honey = ips[counts >= honeypot_min_ports]
        missed = missed[~np.isin(missed >> 16, honey)]
    ip, port = missed >> 16, missed & 0xFFFF
    found = np.isin(ip, np.unique(eff.cells >> 16))
    s, prof = world.segments, world.profiles
    cls = np.full(world.n_ips, -1, dtype=np.int64)
    cls[s.ip] = s.cls

    def light_face(seg: int) -> tuple:
        p = world.seg_profile[seg]
        lo, hi = prof.ptr[p], prof.ptr[p + 1]
        ports = prof.port[lo:hi]
        on = light[ports]
        return tuple(sorted(ports[on].tolist())), bool((prof.choice[lo:hi][on] != NO_BANNER).any())

    # segments whose light face (open light ports, no banner on them) equals the previous segment's
    # on the same address
    same_face = np.zeros(len(s), dtype=bool)
    for i in np.flatnonzero(np.r_[False, s.ip[1:] == s.ip[:-1]]):
        ports_now, banner_now = light_face(i)
        same_face[i] = not banner_now and (ports_now, banner_now) == light_face(i - 1)
    # the segment of a missed cell: the address's segments whose device has that port
    indistinct = 0
    for a, q in zip(ip[found].tolist(), port[found].tolist()):
        for g in np.flatnonzero(s.ip == a):
            p = world.seg_profile[g]
            if q in prof.port[prof.ptr[p]:prof.ptr[p + 1]] and same_face[g]:
                indistinct += 1
                break
    out: dict = {"missed_cells": int(len(missed)), "by_class": {}}
    for c, name in enumerate(CLASS_NAMES):
        sel = cls[ip] == c
        if not sel.any():
            continue
        out["by_class"][name] = {
            "cells": int(sel.sum()),
            "address_never_found": int((sel & ~found).sum()),
            "address_never_found_no_light_port": int((sel & ~found & ~light[port]).sum()),
            "address_found_port_in_light": int((sel & found & light[port]).sum()),
            "address_found_port_outside_light": int((sel & found & ~light[port]).sum()),
        }
    out["found_address_device_same_light_face_as_predecessor"] = int(indistinct)
    return out


def twin_standard(world: World, schedule: Schedule, standard, *, loss: float | None = None) -> PolicyRun:
    """A second standard scan at the efficient scan's own instants (what any policy probing at those
    instants could at most find): judged against the standard scan it gives the ceiling of PDR and
    DDR under ``desync`` and packet loss, where two scans meet different short-lived devices."""
    from scanflow.policy import PolicyPortSets, StandardPolicy
    from scanflow.simulate import SCANNER_EFFICIENT

    sets = PolicyPortSets(standard, standard, standard)
    return run_policy(world, schedule, StandardPolicy(sets), scanner=SCANNER_EFFICIENT, loss=loss)

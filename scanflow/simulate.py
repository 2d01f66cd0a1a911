"""Discrete-event evaluation: the standard and the efficient policy on the same world, same timeline.

Time runs in rounds of the standard interval (12 h). Every address has a fixed instant within the round
at which it is probed (a randomised scan order); the standard scan probes every address every round,
the efficient one when its policy says so, and in the default *synchronised* mode at the same instant,
so both observe the world's true state at the moment they probe and only the policy differs.
``desync`` gives the efficient scan its own instants (the paper's real-network set-up) and ``loss``
drops probes at random (its congestion losses), to measure how much of a shortfall they explain.

The efficient policy is the policy core itself (:class:`scanflow.policy.EfficientPolicy`): every IP's
first probe is the policy's ``start`` (by default a classification scan with the standard set, all in
the first round like the standard scan's), and each responsive IP's observation goes through
``decide`` exactly as in the stream. Only silent IPs are handled in bulk, like the sweeps of the live
system: the plan after a silent round is read from the policy once (:func:`bulk_silent_rule`) and
applied to every silent IP whose last plan was that bulk plan and that stays silent (a silent IP the
policy still probes otherwise, e.g. a recall, goes through ``decide``); the bookkeeping counters of a
silent IP's state (``scans``, ``last_scanned``) are therefore not advanced by bulk sweeps, and no
decision reads them. The standard scan is computed in closed form over the world's time segments
(:func:`run_standard`); :func:`run_policy` with :class:`scanflow.policy.StandardPolicy` gives the same
result and is used by the tests to check it.

``run_policy(..., events=recorder)`` also hands what the efficient scan observed, and every per-IP
decision, to a recorder (:class:`connectors.sim_recorder.EventRecorder` turns them into the event
contract's records and the pipeline's ``Decision`` shape, so the scheduler pipeline can be fed the
simulator's history and checked decision by decision). Off by default: without a recorder nothing of
it runs. The simulator itself builds no record and imports no I/O layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from scanflow.metrics import HONEYPOT_MIN_PORTS, ByteModel
from scanflow.policy import IpStatus, Observation
from scanflow.portsets import PortSet
from scanflow.world.banners import NO_BANNER, RESPONSE_BYTES
from scanflow.world.hosts import csr_gather
from scanflow.world.model import PortMasks, World

SCANNER_STANDARD, SCANNER_EFFICIENT = 1, 2


class Recorder(Protocol):
    """What :func:`run_policy` tells an opt-in recorder (``connectors.sim_recorder.EventRecorder``
    turns it into the event contract's records)."""

    def scan(self, world: World, k: int, ip: int, t: int, entries: np.ndarray, banners: dict[int, bytes],
             probed: PortSet, policy: str) -> str: ...

    def bulk(self, k: int, ips: np.ndarray, times: np.ndarray, probed: PortSet, label: str, policy: str) -> None: ...

    def decision(self, world: World, k: int, ip: int, t: int, before, state, plan, *, individually: bool,
                 policy: str) -> None: ...
STATUS_CODE = {IpStatus.NON_RESPONSIVE: 0, IpStatus.RESPONSIVE_ESTIMATED: 1, IpStatus.RESPONSIVE_UNESTIMATED: 2}


@dataclass(frozen=True, eq=False)
class Schedule:
    """When each address is probed: round ``k`` probes address ``i`` at ``k * slot + offset[i]``.

    ``phase[i]`` is the round of the efficient scan's first probe of ``i`` (its ``start``): round 0
    for every address when that probe is the paper's classification scan with the standard set (one
    full round at the start, timed like the standard scan's round 0); spread evenly over one silent
    interval when it is a silent sweep (``initial_scan = "silent"``), as sweeps are. See
    :func:`first_probe_rounds`.
    """

    slot: int
    n_slots: int
    offset_std: np.ndarray
    offset_eff: np.ndarray
    phase: np.ndarray

    def times(self, k: int, ips: np.ndarray, efficient: bool = True) -> np.ndarray:
        """Probe instants (seconds) of ``ips`` in round ``k``."""
        off = self.offset_eff if efficient else self.offset_std
        return k * self.slot + off[ips]

    def round_of(self, at: float, ip: int, efficient: bool = True) -> int:
        """The first round whose probe instant for ``ip`` is at or after ``at``."""
        off = (self.offset_eff if efficient else self.offset_std)[ip]
        return int(np.ceil((at - off) / self.slot - 1e-9))


def make_schedule(n_ips: int, seed: int, horizon: int, *, slot: float, silent_rounds: int,
                  desync: bool = False) -> Schedule:
    """The probe schedule of one evaluation (deterministic by seed); the first probes are spread over
    ``silent_rounds`` rounds (1: all in round 0; pass :func:`first_probe_rounds` of the policy's rule)."""
    slot_s = int(round(slot))
    rng = np.random.default_rng([int(seed), 0x5C4ED])
    off_std = rng.integers(0, slot_s, n_ips, dtype=np.int64)
    off_eff = rng.integers(0, slot_s, n_ips, dtype=np.int64) if desync else off_std
    phase = rng.integers(0, max(silent_rounds, 1), n_ips).astype(np.int32)
    return Schedule(slot_s, int(np.ceil(horizon / slot_s)), off_std, off_eff, phase)


@dataclass(frozen=True)
class BulkRule:
    """What the policy does with IPs that stay silent, read from the policy by :func:`bulk_silent_rule`
    (never assumed): the first probe of a never-seen IP uses ``first``; after a silent round the IP is
    probed again ``rounds`` rounds later with ``sweep``, for as long as it stays silent."""

    first: PortSet
    sweep: PortSet
    rounds: int


def bulk_silent_rule(policy, slot: float) -> BulkRule:
    """Ask the policy what follows silent rounds of a never-seen IP and check that bulk handling is
    exact: after the first silent round the plan is a whole number of rounds with one port set, and a
    further silent round gives the same plan again."""
    state0, plan0 = policy.start(0.0)
    state1, plan1 = policy.decide(state0, Observation(frozenset(), (), plan0.ports, True), 0.0)
    state2, plan2 = policy.decide(state1, Observation(frozenset(), (), plan1.ports, True), plan1.at)
    rounds = plan1.at / slot
    if (state1.responsive or state2.responsive or plan2.ports != plan1.ports
            or abs(plan2.at - plan1.at - plan1.at) > 1e-6 or abs(rounds - round(rounds)) > 1e-9 or rounds < 1):
        raise ValueError(f"policy {policy.name}: silent IPs must be rescanned on a fixed cadence of whole "
                         f"{slot:.0f} s rounds with one port set; got {plan1.at} s with {plan1.ports.ref}, "
                         f"then {plan2.at - plan1.at} s with {plan2.ports.ref}")
    return BulkRule(plan0.ports, plan1.ports, int(round(rounds)))


def first_probe_rounds(rule: BulkRule) -> int:
    """Over how many rounds the first probes of a policy are spread: a silent first probe is a sweep and
    is spread over one silent interval like every sweep; a first probe with another set (the paper's
    classification scan with the standard set) is one full round at the start, like the standard
    scan's first round."""
    return rule.rounds if rule.first.ref == rule.sweep.ref else 1


@dataclass
class PolicyRun:
    """What one policy did and found over the whole horizon.

    ``cells`` are distinct (ip, port) found, coded ``ip << 16 | port``, with the round they were first
    found in ``cell_round``; per round: ``attempts`` (IPs probed), ``probes`` (ports probed), ``bytes``
    (scanner egress by the byte model); ``detected[s]`` the first instant segment ``s``'s device was
    seen answering (-1: never). ``states`` (efficient only) counts tracked IPs per round by
    (status, ladder step); ``records`` are the observation rows for the Parquet output.
    """

    name: str
    cells: np.ndarray
    cell_round: np.ndarray
    attempts: np.ndarray
    probes: np.ndarray
    bytes: np.ndarray
    detected: np.ndarray
    states: np.ndarray | None = None
    records: dict[str, list] | None = None
    decisions: int = 0


def open_costs(world: World, byte_model: ByteModel) -> np.ndarray:
    """Egress bytes after the SYN for each profile entry once found open: a banner exchange where the
    service talks, an RST where it does not."""
    prof = world.profiles
    cost = np.full(len(prof.port), byte_model.rst, dtype=np.int64)
    talks = np.flatnonzero(prof.choice != NO_BANNER)
    if len(talks):
        size = RESPONSE_BYTES[prof.proto[talks]]
        pairs, inverse = np.unique(np.stack([prof.port[talks], size]), axis=1, return_inverse=True)
        values = np.array([byte_model.banner_exchange(int(p), int(n)) for p, n in pairs.T], dtype=np.int64)
        cost[talks] = values[inverse.ravel()]
    return cost


def cover(world: World, schedule: Schedule, efficient: bool) -> tuple[np.ndarray, np.ndarray]:
    """All (segment, round) pairs where the round's probe instant of the segment's address falls in
    the segment, sorted by round: what a scan probing every round would meet."""
    s = world.segments
    off = (schedule.offset_eff if efficient else schedule.offset_std)[s.ip]
    lo = np.maximum(-((off - s.start) // schedule.slot), 0)          # ceil((start - off) / slot)
    hi = np.minimum(-((off - s.end) // schedule.slot), schedule.n_slots)  # exclusive
    n = np.maximum(hi - lo, 0)
    seg = np.repeat(np.arange(len(s), dtype=np.int64), n)
    first = np.repeat(np.cumsum(n) - n, n)
    k = np.repeat(lo, n) + (np.arange(len(seg), dtype=np.int64) - first)
    order = np.argsort(k, kind="stable")
    return seg[order], k[order]


def run_standard(world: World, schedule: Schedule, standard: PortSet, byte_model: ByteModel = ByteModel(),
                 *, loss: float | None = None, record: bool = False) -> PolicyRun:
    """The standard scan in closed form: every address, every round, the standard set.

    Works per (segment, round) pair with each profile's standard ports computed once, so a honeypot's
    thousands of ports are not expanded per round unless packet loss or records need them.
    """
    prof = world.profiles
    in_set = np.zeros(65536, dtype=bool)
    in_set[np.fromiter(standard.ports, dtype=np.int64)] = True
    owner = np.repeat(np.arange(len(prof), dtype=np.int64), prof.n_ports)
    kept = np.flatnonzero(in_set[prof.port])
    ptr = np.zeros(len(prof) + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner[kept], minlength=len(prof)), out=ptr[1:])
    cost = open_costs(world, byte_model)
    seg, k = cover(world, schedule, efficient=False)
    ip = world.segments.ip[seg]
    times = k * schedule.slot + schedule.offset_std[ip]
    p = world.seg_profile[seg]
    hit = np.flatnonzero(ptr[p + 1] > ptr[p])
    loss = world.config.loss if loss is None else loss
    nr = schedule.n_slots
    detected = np.full(len(world.segments), -1, dtype=np.int64)
    records = None
    if loss > 0 or record:
        row, pos = csr_gather(ptr, p[hit])
        row, entry = hit[row], kept[pos]
        if loss > 0 and len(row):
            ok = world.delivered(ip[row], prof.port[entry], times[row], SCANNER_STANDARD, loss)
            row, entry = row[ok], entry[ok]
        found_bytes = np.bincount(k[row], weights=cost[entry], minlength=nr)
        cells, cell_round = _first_rounds((ip[row] << 16) | prof.port[entry].astype(np.int64), k[row])
        answered = np.unique(row)  # pair indices, sorted by round
        segs, idx = np.unique(seg[answered], return_index=True)
        detected[segs] = times[answered][idx]
        if record and len(row):
            starts = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
            first = row[starts]
            records = {"ip": ip[first], "t": times[first], "round": k[first],
                       "open_ports": np.split(prof.port[entry], starts[1:])}
    else:
        cost_of_profile = np.bincount(owner[kept], weights=cost[kept], minlength=len(prof))
        found_bytes = np.bincount(k, weights=cost_of_profile[p], minlength=nr)
        segs, idx = np.unique(seg[hit], return_index=True)  # first answering round of each segment
        detected[segs] = times[hit][idx]
        row, pos = csr_gather(ptr, world.seg_profile[segs])
        codes = (world.segments.ip[segs][row] << 16) | prof.port[kept[pos]].astype(np.int64)
        cells, cell_round = _first_rounds(codes, k[hit][idx][row])
    probes = np.full(nr, world.n_ips * len(standard), dtype=np.int64)
    return PolicyRun("STANDARD", cells, cell_round, np.full(nr, world.n_ips, dtype=np.int64), probes,
                     probes * byte_model.syn + np.round(found_bytes).astype(np.int64), detected, records=records)


def _first_rounds(codes: np.ndarray, rounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not len(codes):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int32)
    order = np.lexsort((rounds, codes))
    codes, rounds = codes[order], rounds[order]
    first = np.r_[True, codes[1:] != codes[:-1]]
    return codes[first], rounds[first].astype(np.int32)


@dataclass
class _Tracker:
    """Per-IP bookkeeping of the event loop (arrays over all addresses, dicts for tracked IPs)."""

    next_round: np.ndarray
    tracked: np.ndarray
    mask_of: np.ndarray
    size_of: np.ndarray
    code_of: np.ndarray
    probed_first: np.ndarray
    states: dict = field(default_factory=dict)
    plans: dict = field(default_factory=dict)


def run_policy(world: World, schedule: Schedule, policy, byte_model: ByteModel = ByteModel(), *,
               loss: float | None = None, record: bool = False, ladder_len: int = 8,
               scanner: int = SCANNER_EFFICIENT, progress: Callable[[int], None] | None = None,
               events: "Recorder | None" = None) -> PolicyRun:
    """Run ``policy`` (its ``start``/``decide``) over the world: silent IPs in bulk, every answering
    or tracked IP through ``decide``. ``scanner`` salts the packet-loss draws (each scanner loses its
    own probes); ``progress(1)`` is called after each round; ``events`` (opt-in) records the
    observations as event records and the decisions (:class:`EventRecorder`)."""
    rule = bulk_silent_rule(policy, schedule.slot)
    masks = PortMasks()
    first_mid = masks.id_for(rule.first.ref, rule.first.ports)
    sweep_mid = masks.id_for(rule.sweep.ref, rule.sweep.ports)
    n, nr = world.n_ips, schedule.n_slots
    tr = _Tracker(next_round=schedule.phase.astype(np.int64).copy(), tracked=np.zeros(n, dtype=bool),
                  mask_of=np.full(n, first_mid, dtype=np.int32), size_of=np.full(n, len(rule.first), dtype=np.int64),
                  code_of=np.full(n, -1, dtype=np.int32), probed_first=np.zeros(n, dtype=bool))
    seg_all, k_all = cover(world, schedule, efficient=True)
    bounds = np.searchsorted(k_all, np.arange(nr + 1))
    seg_ip = world.segments.ip
    seg_of_ip = np.full(n, -1, dtype=np.int64)
    cost = open_costs(world, byte_model)
    prof = world.profiles
    attempts = np.zeros(nr, dtype=np.int64)
    probes = np.zeros(nr, dtype=np.int64)
    sent = np.zeros(nr, dtype=np.int64)
    n_codes = 3 * ladder_len
    states = np.zeros((nr, n_codes), dtype=np.int64)
    detected = np.full(len(world.segments), -1, dtype=np.int64)
    code_parts, round_parts = [], []
    rec: dict[str, list] = {k: [] for k in ("ip", "t", "round", "open_ports", "probed", "status", "step",
                                            "device", "reason", "changed", "next_at")}
    decisions = 0
    for k in range(nr):
        due = np.flatnonzero(tr.next_round == k)
        if len(due):
            segs_k = seg_all[bounds[k]:bounds[k + 1]]
            seg_of_ip[seg_ip[segs_k]] = segs_k
            seg_due = seg_of_ip[due]
            seg_of_ip[seg_ip[segs_k]] = -1
            times = schedule.times(k, due)
            row, entry = world.answers(seg_due, masks.matrix, tr.mask_of[due], times, scanner, loss)
            attempts[k] = len(due)
            probes[k] = int(tr.size_of[due].sum())
            sent[k] = probes[k] * byte_model.syn + int(cost[entry].sum())
            if len(row):
                code_parts.append((due[row] << 16) | prof.port[entry].astype(np.int64))
                round_parts.append(np.full(len(row), k, dtype=np.int32))
                hit_seg = seg_due[row]
                fresh = detected[hit_seg] < 0
                detected[hit_seg[fresh]] = times[row[fresh]]
            answered = np.zeros(len(due), dtype=bool)
            answered[row] = True
            quiet = ~tr.tracked[due] & ~answered
            if events is not None and quiet.any():
                swept = ~tr.probed_first[due[quiet]]
                events.bulk(k, due[quiet][swept], times[quiet][swept], rule.first, "first", policy.name)
                events.bulk(k, due[quiet][~swept], times[quiet][~swept], rule.sweep, "sweep", policy.name)
            tr.next_round[due[quiet]] += rule.rounds
            tr.mask_of[due[quiet]] = sweep_mid
            tr.size_of[due[quiet]] = len(rule.sweep)
            tr.probed_first[due[quiet]] = True
            starts = np.searchsorted(row, np.arange(len(due) + 1))
            for r in np.flatnonzero(~quiet):
                _decide_one(world, schedule, policy, rule, masks, tr, int(due[r]), int(seg_due[r]), int(times[r]),
                            entry[starts[r]:starts[r + 1]], k, ladder_len, rec if record else None, events)
                decisions += 1
        tracked_now = np.flatnonzero(tr.tracked)
        states[k] = np.bincount(tr.code_of[tracked_now], minlength=n_codes)[:n_codes]
        if progress is not None:
            progress(1)
    codes = np.concatenate(code_parts) if code_parts else np.zeros(0, dtype=np.int64)
    rounds = np.concatenate(round_parts) if round_parts else np.zeros(0, dtype=np.int32)
    cells, cell_round = _first_rounds(codes, rounds)
    return PolicyRun(policy.name, cells, cell_round, attempts, probes, sent, detected, states,
                     rec if record else None, decisions)


def _decide_one(world: World, schedule: Schedule, policy, rule: BulkRule, masks: PortMasks, tr: _Tracker,
                ip: int, seg: int, t: int, entries: np.ndarray, k: int, ladder_len: int, rec,
                events: "Recorder | None" = None) -> None:
    prof = world.profiles
    ports = prof.port[entries]
    banners = []
    for e in entries[prof.choice[entries] != NO_BANNER]:
        banners.append((int(prof.port[e]), world.banner(seg, int(e), t)))
    probed = tr.plans[ip] if tr.tracked[ip] else (rule.sweep if tr.probed_first[ip] else rule.first)
    tr.probed_first[ip] = True
    obs = Observation(frozenset(ports.tolist()), tuple(banners), probed, True)
    prior = tr.states.get(ip)
    was_tracked = events is not None and bool(tr.tracked[ip])  # False: handled in bulk, no per-IP state
    state, plan = policy.decide(prior, obs, float(t))
    tr.states[ip] = state
    nxt = schedule.round_of(plan.at, ip)
    tr.next_round[ip] = max(nxt, k + 1)
    # bulk sweeps take over only when the policy's plan is exactly the bulk plan; anything else (a
    # responsive IP, or a silent one the policy still probes individually, e.g. a recall) is tracked
    bulk = (not state.responsive and plan.ports.ref == rule.sweep.ref
            and abs(plan.at - t - rule.rounds * schedule.slot) < 1e-6)
    if not bulk:
        tr.tracked[ip] = True
        tr.plans[ip] = plan.ports
        tr.mask_of[ip] = masks.id_for(plan.ports.ref, plan.ports.ports)
        tr.size_of[ip] = len(plan.ports)
        tr.code_of[ip] = STATUS_CODE[state.status] * ladder_len + min(state.step, ladder_len - 1)
    else:
        tr.tracked[ip] = False
        tr.plans.pop(ip, None)
        tr.mask_of[ip] = masks.id_for(rule.sweep.ref, rule.sweep.ports)
        tr.size_of[ip] = len(rule.sweep)
        tr.code_of[ip] = -1
    if events is not None:
        events.scan(world, k, ip, t, entries, dict(banners), probed, policy.name)
        events.decision(world, k, ip, t, prior if was_tracked else None, state, plan, individually=not bulk,
                        policy=policy.name)
    if rec is not None:
        rec["ip"].append(ip); rec["t"].append(t); rec["round"].append(k)
        rec["open_ports"].append(ports)
        rec["probed"].append(probed.ref); rec["status"].append(state.status.value); rec["step"].append(state.step)
        rec["device"].append(state.device); rec["reason"].append(plan.reason.value)
        rec["changed"].append(plan.changed); rec["next_at"].append(plan.at)


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
        honeypot_min_ports=m.honeypot_min_ports)


def _cell_pairs(codes: np.ndarray) -> set[tuple[int, int]]:
    """Cells coded ``ip << 16 | port`` as the (ip, port) pairs :mod:`scanflow.metrics` counts."""
    return set(zip((codes >> 16).tolist(), (codes & 0xFFFF).tolist()))


#: The changes of the world whose detection delay is reported: (name, device class, event kind).
CHANGE_KINDS = (
    ("new device (static address)", 0, 1),
    ("replaced device (static address)", 0, 2),
    ("reassigned address (dynamic pool)", 1, 2),
    ("sporadic device back on-line", 2, 3),
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
            det = run.detected[sel]
            ok = (det >= 0) & (det < horizon)
            delay = (det[ok] - s.start[sel][ok]) / 3600.0
            entry[label] = {"seen": float(ok.mean()) if len(sel) else float("nan"),
                            "median_h": float(np.median(delay)) if len(delay) else float("nan"),
                            "p90_h": float(np.percentile(delay, 90)) if len(delay) else float("nan")}
        both = (std.detected[sel] >= 0) & (std.detected[sel] < horizon)
        eff_ok = (eff.detected[sel] >= 0) & (eff.detected[sel] < horizon)
        entry["efficient_seen_of_standard_seen"] = float(eff_ok[both].mean()) if both.any() else float("nan")
        out[name] = entry
    return out


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

    def world_config(self):
        """The world parameters with this evaluation's size and loss."""
        from scanflow.world import WorldConfig

        base = self.world or WorldConfig()
        return base.replace(n_ips=self.ips, loss=self.loss)


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
    return derivation, table.num_rows


def evaluate_seed(cfg: EvaluationConfig, seed: int, port_sets, kb=None, *,
                  progress: Callable[[int], None] | None = None) -> SeedResult:
    """Generate the world of ``seed`` and run both policies on it."""
    import time

    from scanflow.estimate import Estimator
    from scanflow.knowledge import load_knowledge
    from scanflow.policy import EfficientPolicy, PolicyParams

    kb = kb or load_knowledge()
    params = cfg.params or PolicyParams()
    clock = {}
    t0 = time.perf_counter()
    world = World.generate(cfg.world_config(), seed, horizon_days=cfg.weeks * 7, kb=kb)
    policy = EfficientPolicy(port_sets, Estimator(kb, min_confidence=cfg.min_confidence), params)
    rule = bulk_silent_rule(policy, params.standard_interval)
    schedule = make_schedule(world.n_ips, seed, world.horizon, slot=params.standard_interval,
                             silent_rounds=first_probe_rounds(rule), desync=cfg.desync)
    clock["world"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    std = run_standard(world, schedule, port_sets.standard, record=cfg.record)
    clock["standard"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    eff = run_policy(world, schedule, policy, record=cfg.record, ladder_len=len(params.ladder), progress=progress)
    clock["efficient"] = time.perf_counter() - t0
    windows = [window_metrics(world, std, eff, schedule.slot, w, cfg.honeypot_min_ports)
               for w in sorted(set(cfg.windows)) if w <= cfg.weeks]
    return SeedResult(seed, world, schedule, std, eff, windows, detection_delays(world, std, eff), clock)

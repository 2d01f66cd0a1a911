"""Discrete-event evaluation: the standard and the efficient policy on the same world, same timeline.

Time runs in rounds of the standard interval (12 h). Every address has a fixed instant within the round
at which it is probed (a randomised scan order); the standard scan probes every address every round,
the efficient one when its policy says so, and in the default *synchronised* mode at the same instant,
so both observe the world's true state at the moment they probe and only the policy differs.
``desync`` gives the efficient scan its own instants (the paper's real-network set-up) and ``loss``
drops probes at random (its congestion losses), to measure how much of a shortfall they explain.

The efficient policy is the policy core itself (:class:`scanflow.policy.EfficientPolicy`), reached
through the one per-IP lifecycle (:meth:`scanflow.lifecycle.step.Lifecycle.observe`, the step the live
pipeline and the replays take): every IP's first probe is the policy's ``start`` (by default a
classification scan with the standard set, all in the first round like the standard scan's), and
each answering or tracked IP's round is a lifecycle step, which decides and settles whether the IP
stays tracked. An IP the lifecycle does not track (silent, no recall) is swept in bulk, like the
sweeps of the live system: the sweep's cadence and set are the policy's plan after a silent round,
read from it once (:func:`scanflow.lifecycle.untracked.bulk_silent_rule`); an untracked IP keeps no
state, so when it answers again it is decided from none, as a promotion from a live sweep is. A policy
may also sweep each /24 with its own set (``sweep_set(ip)``, asked once per /24, as ``sweep_interval(ip)``
gives its cadence); none of scanflow's policies does: ``bench/explore_wide_sweeps.py`` uses it to
measure what per-prefix sweep sets could buy. The
standard scan is computed in closed form over the world's time segments (:func:`run_standard`);
:func:`run_policy` with :class:`scanflow.policy.StandardPolicy` gives the same result and is used by
the tests to check it. The judging of runs and one seed of ``scanflow evaluate`` are
:mod:`scanflow.evaluation`.

``run_policy(..., events=recorder)`` also hands what the efficient scan observed, and every per-IP
decision, to a recorder (:class:`connectors.sim_recorder.EventRecorder` turns them into the event
contract's records and the pipeline's ``Decision`` shape, so the scheduler pipeline can be fed the
simulator's history and checked decision by decision). Off by default: without a recorder nothing of
it runs. The simulator itself builds no record and imports no I/O layer.
"""

from __future__ import annotations

import heapq

from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from scanflow.lifecycle.step import Lifecycle
from scanflow.lifecycle.untracked import BulkRule, bulk_silent_rule, sweep_rounds
from scanflow.metrics import ByteModel
from scanflow.policy import IpStatus, Observation
from scanflow.portsets import PortSet
from scanflow.world.banners import NO_BANNER, RESPONSE_BYTES
from scanflow.world.blocks import BLOCK_SIZE
from scanflow.world.hosts import csr_gather
from scanflow.world.model import PortMasks, World

SCANNER_STANDARD, SCANNER_EFFICIENT = 1, 2
#: How often (seconds) a policy with a learned sweep cadence learns it again from what it found.
LEARN_EVERY = 7 * 86400


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

    def round_near(self, at: float, ip: int, efficient: bool = True) -> int:
        """The round whose probe instant for ``ip`` is nearest ``at`` (ties: the later one)."""
        off = (self.offset_eff if efficient else self.offset_std)[ip]
        return int(np.floor((at - off) / self.slot + 0.5))

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
    #: The most probes one address received in one round (the ethics bound: the standard set's size).
    max_slot_probes: int = 0
    #: Devices that move: answers that resumed a device another address of the /24 remembered.
    moved: int = 0


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
class _Bookkeeping:
    """Per-IP bookkeeping of the event loop (arrays over all addresses, dicts for tracked IPs)."""

    next_round: np.ndarray
    tracked: np.ndarray
    mask_of: np.ndarray
    size_of: np.ndarray
    code_of: np.ndarray
    probed_first: np.ndarray
    states: dict = field(default_factory=dict)       # ip -> the lifecycle's Tracked state
    #: Devices that move: /24 number -> its tracked addresses (None when the policy keeps no such view).
    members: dict | None = None
    offset: int = 0                                   # address index -> address number


def run_policy(world: World, schedule: Schedule, policy, byte_model: ByteModel = ByteModel(), *,
               loss: float | None = None, record: bool = False, ladder_len: int = 8,
               scanner: int = SCANNER_EFFICIENT, progress: Callable[[int], None] | None = None,
               events: "Recorder | None" = None, workers: int = 1) -> PolicyRun:
    """Run ``policy`` (its ``start``/``decide``) over the world: silent IPs in bulk, every answering
    or tracked IP through ``decide``. ``scanner`` salts the packet-loss draws (each scanner loses its
    own probes); ``progress(1)`` is called after each round; ``events`` (opt-in) records the
    observations as event records and the decisions (:class:`EventRecorder`).

    ``workers`` > 1 splits the addresses into that many ranges of whole /24s, each run by its own
    process (forked: the world is shared, not copied): a policy's state is per address and per /24
    (the learned sweep cadence), and packet loss is a pure function of (address, port, instant), so
    the merged run is the one process's exactly (tested). Not with ``record`` or ``events``, whose
    row order is the run's."""
    ranges = _shard_ranges(world.n_ips, workers, getattr(getattr(policy, "cadence", None), "offset", 0))
    if len(ranges) > 1 and not record and events is None:
        return _run_sharded(world, schedule, policy, byte_model, ranges, loss=loss, ladder_len=ladder_len,
                            scanner=scanner, progress=progress)
    return _run_range(world, schedule, policy, byte_model, 0, world.n_ips, loss=loss, record=record,
                      ladder_len=ladder_len, scanner=scanner, progress=progress, events=events)


def _shard_ranges(n: int, workers: int, offset: int = 0) -> list[tuple[int, int]]:
    """``workers`` contiguous address ranges covering ``0..n`` whose inner bounds fall on /24
    boundaries of the address numbers (index + ``offset``); fewer when there are fewer /24s."""
    if workers <= 1 or n <= 256:
        return [(0, n)]
    first = (-offset) % 256                       # the first index that starts a /24
    blocks = max((n - first) // 256, 1)
    cuts = sorted({first + 256 * round(blocks * i / workers) for i in range(1, workers)} - {0})
    bounds = [0] + [c for c in cuts if 0 < c < n] + [n]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def _run_sharded(world: World, schedule: Schedule, policy, byte_model: ByteModel, ranges, *, loss, ladder_len,
                 scanner, progress) -> PolicyRun:
    """:func:`run_policy` over address ranges, the first in this process (which reports progress),
    the others in forked children; the partial runs merged."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    kw = dict(loss=loss, record=False, ladder_len=ladder_len, scanner=scanner)
    global _SHARD_JOB
    _SHARD_JOB = (world, schedule, policy, byte_model, kw)
    try:
        with ProcessPoolExecutor(len(ranges) - 1, mp_context=multiprocessing.get_context("fork")) as pool:
            others = [pool.submit(_run_shard, lo, hi) for lo, hi in ranges[1:]]
            lo, hi = ranges[0]
            parts = [_run_range(world, schedule, policy, byte_model, lo, hi, progress=progress, **kw)]
            parts += [f.result() for f in others]
    finally:
        _SHARD_JOB = None
    cells = np.concatenate([p.cells for p in parts])
    order = np.argsort(cells, kind="stable")
    return PolicyRun(parts[0].name, cells[order], np.concatenate([p.cell_round for p in parts])[order],
                     sum(p.attempts for p in parts), sum(p.probes for p in parts), sum(p.bytes for p in parts),
                     np.maximum.reduce([p.detected for p in parts]), sum(p.states for p in parts), None,
                     sum(p.decisions for p in parts), max(p.max_slot_probes for p in parts),
                     sum(p.moved for p in parts))


_SHARD_JOB = None


def _run_shard(lo: int, hi: int) -> PolicyRun:
    world, schedule, policy, byte_model, kw = _SHARD_JOB
    return _run_range(world, schedule, policy, byte_model, lo, hi, **kw)


def _run_range(world: World, schedule: Schedule, policy, byte_model: ByteModel, lo: int, hi: int, *,
               loss: float | None = None, record: bool = False, ladder_len: int = 8,
               scanner: int = SCANNER_EFFICIENT, progress: Callable[[int], None] | None = None,
               events: "Recorder | None" = None) -> PolicyRun:
    """:func:`run_policy` for the addresses ``lo..hi`` only (all of them: ``0..n``)."""
    rule = bulk_silent_rule(policy, schedule.slot)
    lifecycle = Lifecycle(policy)
    masks = PortMasks()
    first_mid = masks.id_for(rule.first.ref, rule.first.ports)
    sweep_mid = masks.id_for(rule.sweep.ref, rule.sweep.ports)
    per_prefix = _PrefixSweeps.of(policy, masks)
    if per_prefix is not None and events is not None:
        raise ValueError(f"policy {policy.name}: recording runs with per-prefix sweep sets is not supported")
    n, nr = world.n_ips, schedule.n_slots
    tr = _Bookkeeping(next_round=schedule.phase.astype(np.int64).copy(), tracked=np.zeros(n, dtype=bool),
                  mask_of=np.full(n, first_mid, dtype=np.int32), size_of=np.full(n, len(rule.first), dtype=np.int64),
                  code_of=np.full(n, -1, dtype=np.int32), probed_first=np.zeros(n, dtype=bool),
                  members={} if lifecycle.moves else None,
                  offset=getattr(getattr(policy, "cadence", None), "offset", 0))
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
    learn_rounds = _learn_rounds(policy, schedule.slot)

    def found(k: int, ips: np.ndarray, segs: np.ndarray, times: np.ndarray, row: np.ndarray, entry: np.ndarray):
        """Keep the cells probes of round ``k`` found and each segment's first detection."""
        if len(row):
            code_parts.append((ips[row] << 16) | prof.port[entry].astype(np.int64))
            round_parts.append(np.full(len(row), k, dtype=np.int32))
            hit_seg = segs[row]
            fresh = detected[hit_seg] < 0
            detected[hit_seg[fresh]] = times[row[fresh]]

    def follow_up(k: int, followups: list[tuple[int, int, int]]) -> None:
        """Follow-ups ``(instant, address, size of the probe it follows)``: a plan due before the
        address's next probe of the grid is made within the round, at its own instant, and decided
        like any round (a follow-up may not plan another in the slot)."""
        nonlocal slot_max, decisions
        ips = np.array([ip for _, ip, _ in followups], dtype=np.int64)
        times = np.array([at for at, _, _ in followups], dtype=np.int64)
        before = np.array([size for _, _, size in followups], dtype=np.int64)
        segs = world.segment_at(ips, times)
        row, entry = world.answers(segs, masks, tr.mask_of[ips], times, scanner, loss)
        attempts[k] += len(ips)
        sizes = tr.size_of[ips]
        probes[k] += int(sizes.sum())
        sent[k] += int(sizes.sum()) * byte_model.syn + int(cost[entry].sum())
        slot_max = max(slot_max, int((before + sizes).max()))
        found(k, ips, segs, times, row, entry)
        starts = np.searchsorted(row, np.arange(len(ips) + 1))
        for r in range(len(ips)):
            at = _decide_one(world, schedule, lifecycle, rule, masks, tr, int(ips[r]), int(segs[r]),
                             int(times[r]), entry[starts[r]:starts[r + 1]], k, ladder_len,
                             rec if record else None, events)
            decisions += 1
            if at is not None:
                raise ValueError(f"policy {policy.name}: a follow-up planned another probe in the same slot")

    slot_max = 0
    for k in range(nr):
        if learn_rounds and k and k % learn_rounds == 0:
            _learn_cadence(policy, n, code_parts)
        due = lo + np.flatnonzero(tr.next_round[lo:hi] == k)
        followups: list[tuple[int, int, int]] = []     # (instant, address, size of the probe before)
        if len(due):
            segs_k = seg_all[bounds[k]:bounds[k + 1]]
            seg_of_ip[seg_ip[segs_k]] = segs_k
            seg_due = seg_of_ip[due]
            seg_of_ip[seg_ip[segs_k]] = -1
            times = schedule.times(k, due)
            row, entry = world.answers(seg_due, masks, tr.mask_of[due], times, scanner, loss)
            attempts[k] = len(due)
            probes[k] = int(tr.size_of[due].sum())
            slot_max = max(slot_max, int(tr.size_of[due].max()))
            sent[k] = probes[k] * byte_model.syn + int(cost[entry].sum())
            found(k, due, seg_due, times, row, entry)
            answered = np.zeros(len(due), dtype=bool)
            answered[row] = True
            quiet = ~tr.tracked[due] & ~answered
            if events is not None and quiet.any():
                swept = ~tr.probed_first[due[quiet]]
                events.bulk(k, due[quiet][swept], times[quiet][swept], rule.first, "first", policy.name)
                events.bulk(k, due[quiet][~swept], times[quiet][~swept], rule.sweep, "sweep", policy.name)
            tr.next_round[due[quiet]] += sweep_rounds(policy, rule, due[quiet], schedule.slot)
            if per_prefix is None:
                tr.mask_of[due[quiet]] = sweep_mid
                tr.size_of[due[quiet]] = len(rule.sweep)
            else:
                tr.mask_of[due[quiet]], tr.size_of[due[quiet]] = per_prefix.for_ips(due[quiet])
            tr.probed_first[due[quiet]] = True
            starts = np.searchsorted(row, np.arange(len(due) + 1))
            grid_size = tr.size_of[due].copy()
            decide = np.flatnonzero(~quiet)
            if tr.members is not None:
                # devices that move: a /24's answers are decided in time order (addresses at the same
                # instant in address order), as the live stage wakes a /24
                decide = decide[np.argsort(times[decide], kind="stable")]
            for r in decide:
                if tr.members is not None:
                    # devices that move: the follow-ups made before this answer are decided before it
                    while followups and followups[0][:2] < (int(times[r]), int(due[r])):
                        follow_up(k, [heapq.heappop(followups)])
                at = _decide_one(world, schedule, lifecycle, rule, masks, tr, int(due[r]), int(seg_due[r]),
                                 int(times[r]), entry[starts[r]:starts[r + 1]], k, ladder_len,
                                 rec if record else None, events)
                decisions += 1
                if at is not None:
                    made = (at, int(due[r]), int(grid_size[r]))
                    (heapq.heappush(followups, made) if tr.members is not None else followups.append(made))
        if followups:
            # in the grid's order (in time order with devices that move: a heap)
            follow_up(k, [heapq.heappop(followups) for _ in range(len(followups))]
                      if tr.members is not None else followups)
        tracked_now = np.flatnonzero(tr.tracked)
        states[k] = np.bincount(tr.code_of[tracked_now], minlength=n_codes)[:n_codes]
        if progress is not None:
            progress(1)
    codes = np.concatenate(code_parts) if code_parts else np.zeros(0, dtype=np.int64)
    rounds = np.concatenate(round_parts) if round_parts else np.zeros(0, dtype=np.int32)
    cells, cell_round = _first_rounds(codes, rounds)
    return PolicyRun(policy.name, cells, cell_round, attempts, probes, sent, detected, states,
                     rec if record else None, decisions, slot_max, lifecycle.counts["moved"])


def _sweep_of(policy, rule: BulkRule, ip: int) -> PortSet:
    """What the sweeps probe untracked address ``ip`` with: its prefix's own set where the policy has
    one (``sweep_set(ip)``), the policy's one sweep set otherwise."""
    per = getattr(policy, "sweep_set", None)
    return rule.sweep if per is None else per(ip)


class _PrefixSweeps:
    """Mask ids and sizes of the sweeps of a policy that sweeps each /24 with its own set
    (``sweep_set(ip)``, like ``sweep_interval(ip)`` for the cadence), asked once per /24."""

    def __init__(self, policy, masks: PortMasks):
        self.policy, self.masks = policy, masks
        self.by_block: dict[int, tuple[int, int]] = {}

    @classmethod
    def of(cls, policy, masks: PortMasks) -> "_PrefixSweeps | None":
        return cls(policy, masks) if getattr(policy, "sweep_set", None) is not None else None

    def masks_for(self, block: int) -> tuple[int, int]:
        hit = self.by_block.get(block)
        if hit is None:
            ports = self.policy.sweep_set(block * BLOCK_SIZE)
            hit = self.by_block[block] = (self.masks.id_for(ports.ref, ports.ports), len(ports))
        return hit

    def for_ips(self, ips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        blocks = ips // BLOCK_SIZE
        uniq, inverse = np.unique(blocks, return_inverse=True)
        got = np.array([self.masks_for(int(b)) for b in uniq], dtype=np.int64).reshape(-1, 2)
        return got[inverse, 0].astype(np.int32), got[inverse, 1]


def _learn_rounds(policy, slot: int) -> int:
    """Every how many rounds the policy's sweep cadence is learned again (0: it has none)."""
    params = getattr(policy, "params", None)
    if getattr(policy, "cadence", None) is None or not getattr(params, "learned_cadence", False):
        return 0
    return max(int(round(LEARN_EVERY / slot)), 1)


def _learn_cadence(policy, n_ips: int, code_parts: list) -> None:
    """The sweep cadence learned from what the scan has found so far: prefixes where nothing has
    answered are quiet (what ``scanflow`` derives from a lake, here from the run's own answers)."""
    from scanflow.adaptive import PREFIX_BITS

    offset = policy.cadence.offset     # address index -> address number (the /24s are the live ones)
    answered = (np.unique(np.concatenate([((c >> 16) + offset) >> PREFIX_BITS for c in code_parts]))
                if code_parts else [])
    prefixes = range(offset >> PREFIX_BITS, ((offset + n_ips - 1) >> PREFIX_BITS) + 1)
    policy.cadence = policy.cadence.learned(prefixes, (int(p) for p in answered))


def _decide_one(world: World, schedule: Schedule, lifecycle: Lifecycle, rule: BulkRule, masks: PortMasks,
                tr: _Bookkeeping, ip: int, seg: int, t: int, entries: np.ndarray, k: int, ladder_len: int, rec,
                events: "Recorder | None" = None) -> None:
    """One answering or tracked IP's round: the lifecycle decides (who stays tracked is its rule);
    the simulator only turns the outcome into its arrays (next round, port mask, state code)."""
    prof = world.profiles
    ports = prof.port[entries]
    banners = []
    for e in entries[prof.choice[entries] != NO_BANNER]:
        banners.append((int(prof.port[e]), world.banner(seg, int(e), t)))
    prior = tr.states.pop(ip, None)
    sweep = _sweep_of(lifecycle.policy, rule, ip)
    probed = lifecycle.next_scan(prior)[1] if prior is not None else (sweep if tr.probed_first[ip] else rule.first)
    tr.probed_first[ip] = True
    obs = Observation(frozenset(ports.tolist()), tuple(banners), probed, True)
    neighbours = None
    if tr.members is not None:
        block = (ip + tr.offset) >> 8
        members = tr.members.setdefault(block, set())
        neighbours = (tr.states[j].state for j in members if j != ip)
    tracked, decided = lifecycle.observe(ip, prior, obs, float(t), neighbours=neighbours)
    at, ports_next = lifecycle.next_scan(tracked, decided)
    followup = tracked is not None and at < (k + 1) * schedule.slot + int(schedule.offset_eff[ip])
    # the grid round nearest the plan (a plan made by a follow-up minutes after the grid instant
    # lands on the grid instant of its cadence, not one round later)
    tr.next_round[ip] = max(schedule.round_near(at, ip), k + 1)
    if tr.members is not None:
        (members.add if tracked is not None else members.discard)(ip)
    if tracked is not None:
        tr.states[ip] = tracked
        tr.tracked[ip] = True
        tr.mask_of[ip] = masks.id_for(ports_next.ref, ports_next.ports)
        tr.size_of[ip] = len(ports_next)
        tr.code_of[ip] = STATUS_CODE[tracked.state.status] * ladder_len + min(tracked.state.step, ladder_len - 1)
    else:
        # left to the sweeps: their cadence and set are the policy's (bulk_silent_rule checked them)
        rounds = int(sweep_rounds(lifecycle.policy, rule, np.array([ip]), schedule.slot)[0])
        if ports_next.ref != sweep.ref or abs(at - t - rounds * schedule.slot) > 1e-6:
            raise ValueError(f"policy {lifecycle.policy.name}: an untracked IP is planned off the sweeps "
                             f"({ports_next.ref} in {at - t:.0f} s); the simulator sweeps untracked IPs in bulk")
        tr.tracked[ip] = False
        tr.mask_of[ip] = masks.id_for(sweep.ref, sweep.ports)
        tr.size_of[ip] = len(sweep)
        tr.code_of[ip] = -1
    state, plan = decided.state, decided.plan
    if events is not None:
        events.scan(world, k, ip, t, entries, dict(banners), probed, lifecycle.policy.name)
        events.decision(world, k, ip, t, decided.previous, state, plan, individually=tracked is not None,
                        policy=lifecycle.policy.name)
    if rec is not None:
        rec["ip"].append(ip); rec["t"].append(t); rec["round"].append(k)
        rec["open_ports"].append(ports)
        rec["probed"].append(probed.ref); rec["status"].append(state.status.value); rec["step"].append(state.step)
        rec["device"].append(state.device); rec["reason"].append(plan.reason.value)
        rec["changed"].append(plan.changed); rec["next_at"].append(plan.at)
    return int(np.ceil(at)) if followup else None

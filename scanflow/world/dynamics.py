"""Who is on which address when: the time segments of a world.

Every address that ever hosts something belongs to one class, and each class is an alternating
renewal process (on-line periods, possibly separated by empty periods), started in its stationary state
at time 0 so that the share of answering addresses is the same at every instant:

=========  ==========================================  ============================================
class      on-line period                              after it
=========  ==========================================  ============================================
static     exponential, mean ``static_tenure_days``    replaced by a new device at once
                                                       (``static_replace_fraction``) or empty for
                                                       exponential ``static_vacancy_days``, then a
                                                       new device appears
dynamic    exponential, mean ``dynamic_lease_hours``   the next occupant (a new device) at once
sporadic   exponential, mean ``sporadic_on_hours``     off-line, then the *same* device comes back;
                                                       off time chosen for ``sporadic_duty``
honeypot   the whole horizon                           -
=========  ==========================================  ============================================

Which addresses each class holds is :mod:`scanflow.world.blocks` (clustered in /24 blocks) or a
uniform draw (``blocks=False``). On dynamic addresses a share ``pool_move_share`` of the devices whose
lease ends reappear at another address of their pool (the dynamic addresses of their /24) as the same
device: renumbering inside the ISP's pool.

A segment is one device on one address for one on-line period. Its ``event`` says how it began:
``INITIAL`` (already there at time 0), ``APPEARED`` (a device at an address that was empty, or, on a
dynamic address, a device that held another address of the pool before: a move), ``CHANGED`` (a new
device right after another: replacement or address reassignment) or ``RETURNED`` (a sporadic device
back on-line). ``(DYNAMIC, APPEARED)`` segments are exactly the moves. Times are whole seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scanflow.world.blocks import BLOCK_SIZE, place_classes
from scanflow.world.config import DAY, HOUR, WorldConfig

STATIC, DYNAMIC, SPORADIC, HONEYPOT_CLASS = 0, 1, 2, 3
CLASS_NAMES = ("static", "dynamic", "sporadic", "honeypot")
INITIAL, APPEARED, CHANGED, RETURNED = 0, 1, 2, 3
EVENT_NAMES = ("initial", "appeared", "changed", "returned")


@dataclass(frozen=True, eq=False)
class Segments:
    """Time segments sorted by (ip, start); ``device`` indexes the world's device instances."""

    ip: np.ndarray
    start: np.ndarray
    end: np.ndarray
    device: np.ndarray
    cls: np.ndarray
    event: np.ndarray

    def __len__(self) -> int:
        return len(self.ip)


def class_sizes(rng: np.random.Generator, config: WorldConfig) -> np.ndarray:
    """Addresses per class (static, dynamic, sporadic, honeypot), so that on average
    ``n_ips * responsive_fraction`` answer at any instant (fractions rounded at random)."""
    answering = config.n_ips * config.responsive_fraction
    expected = np.array([answering * config.static_share / config.static_occupancy,
                         answering * config.dynamic_share,
                         answering * config.sporadic_share / config.sporadic_duty,
                         answering * config.honeypot_share])
    sizes = np.floor(expected) + (rng.random(4) < expected - np.floor(expected))
    if sizes.sum() > config.n_ips:
        raise ValueError("the classes need more addresses than the world has; check the shares")
    return sizes.astype(np.int64)


def _alternating(rng: np.random.Generator, n: int, horizon: float, *, on_mean: float, off_mean: float,
                 p_gap: float, same_after_gap: bool, p_on0: float):
    """One alternating renewal process per row; returns (row, start, end, device_no, event) arrays,
    ``device_no`` counting the devices a row has hosted (0, 1, ...)."""
    t = np.zeros(n)
    on = rng.random(n) < p_on0
    dev = np.zeros(n, dtype=np.int64)
    event = np.full(n, INITIAL, dtype=np.int8)
    rows = np.arange(n)
    # rows that start off-line: the first on-line period is a new appearance (or a return)
    event[~on] = RETURNED if same_after_gap else APPEARED
    out_row, out_start, out_end, out_dev, out_event = [], [], [], [], []
    while len(rows):
        is_on = on[rows]
        r_on, r_off = rows[is_on], rows[~is_on]
        if len(r_on):
            dur = rng.exponential(on_mean, len(r_on)) if np.isfinite(on_mean) else np.full(len(r_on), np.inf)
            start = t[r_on]
            end = np.minimum(start + dur, horizon)
            out_row.append(r_on); out_start.append(start); out_end.append(end)
            out_dev.append(dev[r_on].copy()); out_event.append(event[r_on].copy())
            t[r_on] = start + dur
            gap = rng.random(len(r_on)) < p_gap
            on[r_on[gap]] = False
            event[r_on[gap]] = RETURNED if same_after_gap else APPEARED
            if not same_after_gap:
                dev[r_on] += 1
            else:
                dev[r_on[~gap]] += 1
            event[r_on[~gap]] = CHANGED
        if len(r_off):
            t[r_off] += rng.exponential(off_mean, len(r_off)) if off_mean > 0 else 0.0
            on[r_off] = True
        rows = rows[t[rows] < horizon]
    if not out_row:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.astype(float), empty.astype(float), empty, empty.astype(np.int8)
    return (np.concatenate(out_row), np.concatenate(out_start), np.concatenate(out_end),
            np.concatenate(out_dev), np.concatenate(out_event))


def make_segments(rng: np.random.Generator, config: WorldConfig, horizon: float) -> tuple[Segments, np.ndarray]:
    """Segments of all classes over ``[0, horizon)`` seconds, and the class of each device instance.

    Returns ``(segments, device_class)``; devices are numbered 0.. in order of first appearance in the
    (ip, start)-sorted segments.
    """
    sizes = class_sizes(rng, config)
    total = int(sizes.sum())
    if config.blocks:
        ips = place_classes(rng, config.n_ips, sizes)
    else:
        ips = rng.choice(config.n_ips, total, replace=False).astype(np.int64)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    spor_off = config.sporadic_on_hours * HOUR * (1 - config.sporadic_duty) / config.sporadic_duty
    specs = [
        dict(on_mean=config.static_tenure_days * DAY, off_mean=config.static_vacancy_days * DAY,
             p_gap=1 - config.static_replace_fraction, same_after_gap=False, p_on0=config.static_occupancy),
        dict(on_mean=config.dynamic_lease_hours * HOUR, off_mean=0.0, p_gap=0.0, same_after_gap=False, p_on0=1.0),
        dict(on_mean=config.sporadic_on_hours * HOUR, off_mean=spor_off, p_gap=1.0, same_after_gap=True,
             p_on0=config.sporadic_duty),
        dict(on_mean=np.inf, off_mean=0.0, p_gap=0.0, same_after_gap=False, p_on0=1.0),
    ]
    parts = []
    for cls, spec in enumerate(specs):
        n = int(sizes[cls])
        row, start, end, dev, ev = _alternating(rng, n, horizon, **spec)
        ip = ips[bounds[cls]:bounds[cls + 1]][row]
        parts.append((ip, start, end, dev, ev, np.full(len(row), cls, dtype=np.int8)))
    ip, start, end, dev, ev, cls = (np.concatenate(x) for x in zip(*parts))
    start_s = np.round(start).astype(np.int64)
    end_s = np.round(np.minimum(end, horizon)).astype(np.int64)
    keep = end_s > start_s
    ip, start_s, end_s, dev, ev, cls = ip[keep], start_s[keep], end_s[keep], dev[keep], ev[keep], cls[keep]
    order = np.lexsort((start_s, ip))
    ip, start_s, end_s, dev, ev, cls = ip[order], start_s[order], end_s[order], dev[order], ev[order], cls[order]
    # one device instance per (ip, device_no): the key is unique because ips are unique per class
    key = ip * (1 << 20) + dev
    if config.pool_move_share > 0:
        ev = ev.copy()
        _pool_moves(rng, ip, start_s, end_s, cls, ev, key, int(round(horizon)), config.pool_move_share,
                    config.dynamic_lease_hours * HOUR)
    _, first_idx, device = np.unique(key, return_index=True, return_inverse=True)
    # renumber devices in order of first appearance so the numbering follows the sorted segments
    rank = np.empty(len(first_idx), dtype=np.int64)
    rank[np.argsort(first_idx, kind="stable")] = np.arange(len(first_idx))
    device = rank[device]
    device_class = np.zeros(len(first_idx), dtype=np.int8)
    device_class[device] = cls
    return Segments(ip, start_s, end_s, device.astype(np.int64), cls, ev), device_class


def _pool_moves(rng: np.random.Generator, ip: np.ndarray, start: np.ndarray, end: np.ndarray, cls: np.ndarray,
                event: np.ndarray, key: np.ndarray, horizon: int, share: float, max_wait: float) -> None:
    """Renumbering inside the pools, in place: a share of the dynamic devices whose lease ends move to
    the next address of their pool (the dynamic addresses of their /24) whose lease ends after theirs,
    and stay there as its next occupant: that segment takes the mover's device ``key`` and the event
    ``APPEARED``. Movers wait in a queue, first come first served; one that finds no address within
    ``max_wait`` seconds, or only addresses it has held before, has left the pool."""
    dyn = np.flatnonzero(cls == DYNAMIC)
    if not len(dyn):
        return
    moving = rng.random(len(dyn)) < share
    dep = dyn[moving & (end[dyn] < horizon)]
    arr = dyn[event[dyn] == CHANGED]
    seg = np.concatenate([arr, dep])
    is_dep = np.concatenate([np.zeros(len(arr), dtype=bool), np.ones(len(dep), dtype=bool)])
    when = np.concatenate([start[arr], end[dep]])
    pool = ip[seg] // BLOCK_SIZE
    order = np.lexsort((is_dep, when, pool))
    seg_l, dep_l, when_l, pool_l = seg[order].tolist(), is_dep[order].tolist(), when[order].tolist(), pool[order].tolist()
    ip_l = ip.tolist()
    queue: list[tuple[int, int]] = []   # (device key, left at), in order of leaving
    visited: dict[int, set[int]] = {}
    current = -1
    for s, leaving, t, p in zip(seg_l, dep_l, when_l, pool_l):
        if p != current:
            queue.clear()
            current = p
        if leaving:
            k = int(key[s])
            visited.setdefault(k, {ip_l[s]})
            queue.append((k, t))
            continue
        while queue and t - queue[0][1] > max_wait:
            queue.pop(0)
        b = ip_l[s]
        for j, (k, _) in enumerate(queue):
            if b not in visited[k]:
                key[s] = k
                event[s] = APPEARED
                visited[k].add(b)
                del queue[j]
                break

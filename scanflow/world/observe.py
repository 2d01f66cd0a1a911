"""The paper's fixed-point observation, run on a synthetic world, and the figures it measured.

The paper took the IPs that answered its full-port scan and scanned them twice a day for three weeks
(42 rounds). It reports: ~70 % always gave the same answer, ~30 % changed, and the most frequent interval
between changes was 12 h; IPs answering in fewer than 80 % of the rounds answered 3.45 times in two weeks
on average. :func:`fixed_point_observation` repeats that protocol on a world; the calibration tests
compare its figures with the paper's.

An *answer* is what the scanner would fingerprint: the open ports and the normalised banners
(:func:`scanflow.fingerprint.answer_fingerprint`), or silence. Banners are rendered at the first
instant a device instance is seen with a firmware version; that the normalised banner does not depend on
the instant otherwise is tested separately (``tests/unit/scanflow/world/test_world_banners.py``), so one rendering per device stands for all rounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scanflow.fingerprint import answer_fingerprint
from scanflow.world.config import HOUR
from scanflow.world.model import World


@dataclass(frozen=True)
class FixedPointResult:
    """Per selected IP, the answer id of each round (-1 = silent; equal ids = equal fingerprints),
    and the figures the paper reported."""

    ips: np.ndarray
    answers: np.ndarray
    round_seconds: float

    @property
    def unchanged_share(self) -> float:
        """Share of IPs whose answer was the same in every round (never silent)."""
        a = self.answers
        same = (a == a[:, :1]).all(axis=1) & (a[:, 0] >= 0)
        return float(same.mean()) if len(a) else 0.0

    def change_intervals(self) -> np.ndarray:
        """Intervals (in rounds) between consecutive changes of answer, pooled over the IPs."""
        a = self.answers
        changed = a[:, 1:] != a[:, :-1]
        out = []
        for row in changed:
            idx = np.flatnonzero(row)
            if len(idx) > 1:
                out.append(np.diff(idx))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def most_frequent_change_interval_hours(self) -> float:
        """The mode of :meth:`change_intervals`, in hours (NaN without two changes anywhere)."""
        iv = self.change_intervals()
        if not len(iv):
            return float("nan")
        return float(np.bincount(iv).argmax() * self.round_seconds / HOUR)

    def sporadic_mean_answers(self, rounds: int = 28, threshold: float = 0.8) -> tuple[float, int]:
        """Mean number of answering rounds among the first ``rounds`` for IPs that answered at least
        once but in fewer than ``threshold`` of them (the paper: 3.45 in 2 weeks), and how many IPs."""
        count = (self.answers[:, :rounds] >= 0).sum(axis=1)
        sel = (count >= 1) & (count < threshold * rounds)
        return (float(count[sel].mean()) if sel.any() else float("nan")), int(sel.sum())


def fixed_point_observation(world: World, *, start: float = 0.0, rounds: int = 42,
                            round_seconds: float = 12 * HOUR, select_at: float | None = None) -> FixedPointResult:
    """Scan the IPs answering at ``select_at`` (default ``start``) on all ports every ``round_seconds``
    for ``rounds`` rounds from ``start``; each IP at its own instant within the round (a fixed
    pseudo-random offset), as a randomised scanner would."""
    ips = world.responsive_at(start if select_at is None else select_at)
    offsets = (np.random.default_rng([world.seed, 0xF1C5]).random(len(ips)) * round_seconds).astype(np.int64)
    times = int(start) + offsets[:, None] + (np.arange(rounds, dtype=np.int64) * int(round_seconds))[None, :]
    seg = world.segment_at(np.repeat(ips, rounds), times.ravel()).reshape(len(ips), rounds)
    devices = np.where(seg >= 0, world.segments.device[np.maximum(seg, 0)], -1)
    answer_of_device: dict[tuple[int, int], int] = {}
    fingerprint_id: dict[str, int] = {}
    flat_seg, flat_dev, flat_t = seg.ravel(), devices.ravel(), times.ravel()
    firmware = world.firmware_version(np.maximum(flat_dev, 0), flat_t)
    answers = np.full(flat_dev.shape, -1, dtype=np.int64)
    for k in np.flatnonzero(flat_dev >= 0):
        key = (int(flat_dev[k]), int(firmware[k]))
        aid = answer_of_device.get(key)
        if aid is None:
            s = int(flat_seg[k])
            prof = int(world.seg_profile[s])
            lo, hi = world.profiles.ptr[prof], world.profiles.ptr[prof + 1]
            t = int(flat_t[k])
            banners = [(int(world.profiles.port[e]), world.banner(s, e, t)) for e in range(lo, hi)]
            fp = answer_fingerprint(world.profiles.port[lo:hi].tolist(), [(p, b) for p, b in banners if b])
            aid = answer_of_device[key] = fingerprint_id.setdefault(fp, len(fingerprint_id))
        answers[k] = aid
    return FixedPointResult(ips, answers.reshape(len(ips), rounds), round_seconds)

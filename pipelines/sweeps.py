"""Stage: sweeps, the range commands that cover the silent ~97 % of the target space.

The configured ranges are cut into blocks of ``sweep_prefix`` (a /24 = 256 addresses). Each block is
swept once per ``period`` with the policy's sweep set: the paper's policy sweeps every block every
silent interval (3.5 days) with its silent set; the adaptive one every ``sweep_interval`` of the
block's first address (its prefix's learned cadence: 12 h, or 3.5 days where nothing ever answered)
with its light set (:func:`sweep_period_of`). Its slot
within the period is a fixed pseudo-random offset from a BLAKE2b hash of the block, so the blocks are
spread evenly over the period in a scrambled order (no network sees a burst, and the schedule is the
same in every process and after every restart). An IP that answers a sweep is promoted to per-IP
tracking by the rounds it produces; agents skip tracked IPs inside a swept block.

Live, a :class:`~apache_beam.transforms.periodicsequence.PeriodicImpulse` ticks every
``sweep_tick_s`` on the wall clock and each tick issues the blocks whose slot falls within it. A
bounded run (replay) issues the slots of a time window at once. Command ids are derived from
(block, slot), so a slot issued twice is one command to the agents. A slot that passed while the
pipeline was down is not caught up: that block waits for its next period.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from array import array
from bisect import bisect_left
from typing import Callable, Iterable

import apache_beam as beam
from apache_beam.transforms.periodicsequence import PeriodicImpulse
from apache_beam.utils.timestamp import Timestamp

from scanflow.portsets import PortSet

from scanflow.lifecycle.records import command_record

#: Most blocks one scheduler sweeps (2^24 /24 blocks is all of IPv4).
MAX_BLOCKS = 1 << 24


def sweep_blocks(networks: Iterable[ipaddress.IPv4Network], prefix: int) -> list[ipaddress.IPv4Network]:
    """The /``prefix`` blocks covering ``networks``, overlaps merged, ascending."""
    merged = list(ipaddress.collapse_addresses(networks))
    count = sum(1 << max(0, prefix - n.prefixlen) for n in merged)
    if count > MAX_BLOCKS:
        raise ValueError(f"{count} sweep blocks of /{prefix}; at most {MAX_BLOCKS} (raise the block size)")
    blocks: list[ipaddress.IPv4Network] = []
    for net in merged:
        blocks.extend(net.subnets(new_prefix=prefix) if net.prefixlen < prefix else [net])
    return blocks


def _fraction(block: str) -> float:
    return int.from_bytes(hashlib.blake2b(block.encode(), digest_size=8).digest(), "big") / 2.0 ** 64


class SweepPlan:
    """When each block is swept: at ``epoch + k * period + offset(block)`` for every whole ``k``.

    ``period`` is ``period_s`` for every block, or ``period_of(address)`` of the block's first
    address when given (the adaptive policy's ``sweep_interval``: quiet prefixes less often than the
    others); blocks of one period form a group. ``offset(block)`` is the block's hash fraction times
    ``spread`` (default: its period, so the blocks are spread evenly over it). ``keep`` (a block's CIDR
    text -> bool): only the blocks it accepts (one scheduler job's share of them,
    :meth:`pipelines.partitions.PartitionShare.owns_block`); a block's slot does not depend on which
    other blocks are kept, so jobs that split the blocks sweep each when one job would. A run that starts with
    a first pass over everything (:class:`Sweeps` ``first_pass``) uses ``epoch`` = its start and
    ``spread`` = the first pass's window: every block is swept within that window, then once per
    period after its first sweep. Kept compact (two arrays sorted by offset per group, 12 bytes a
    block) so a national target space fits.
    """

    def __init__(self, networks: Iterable[ipaddress.IPv4Network], prefix: int, period_s: float, epoch: float = 0.0,
                 spread: float | None = None, period_of: Callable[[str], float] | None = None,
                 keep: Callable[[str], bool] | None = None):
        if period_s <= 0:
            raise ValueError(f"sweep period must be > 0 seconds, got {period_s}")
        if spread is not None and not 0 <= spread <= period_s:
            raise ValueError(f"sweep spread must be within [0, period] = [0, {period_s}] s, got {spread}")
        self.prefix, self.period, self.epoch = prefix, float(period_s), float(epoch)
        by_period: dict[float, list[ipaddress.IPv4Network]] = {}
        for b in sweep_blocks(networks, prefix):
            if keep is not None and not keep(str(b)):
                continue
            period = self.period if period_of is None else float(period_of(str(b.network_address)))
            if period <= 0:
                raise ValueError(f"sweep period of {b} must be > 0 seconds, got {period}")
            by_period.setdefault(period, []).append(b)
        #: ``(period, offsets, network addresses)`` per group, offsets ascending.
        self._groups: list[tuple[float, array, array]] = []
        for period, blocks in sorted(by_period.items()):
            width = period if spread is None else min(spread, period)
            slots = sorted((_fraction(str(b)) * width, int(b.network_address)) for b in blocks)
            self._groups.append((period, array("d", (o for o, _ in slots)), array("L", (n for _, n in slots))))

    def __len__(self) -> int:
        return sum(len(offsets) for _, offsets, _ in self._groups)

    @property
    def periods(self) -> tuple[float, ...]:
        """The distinct sweep periods, ascending."""
        return tuple(period for period, _, _ in self._groups)

    def _block(self, net: int) -> str:
        return f"{ipaddress.IPv4Address(net)}/{self.prefix}"

    def due_periods(self, start: float, stop: float) -> list[tuple[float, str, float]]:
        """Every ``(slot time, block, its period)`` with ``start <= slot < stop``, in time order."""
        out: list[tuple[float, str, float]] = []
        if stop <= start:
            return out
        for period, offsets, nets in self._groups:
            first = math.floor((start - self.epoch) / period)
            last = math.floor((stop - self.epoch) / period)
            for k in range(first, last + 1):
                base = self.epoch + k * period
                i = bisect_left(offsets, start - base)
                while i < len(offsets) and base + offsets[i] < stop:
                    out.append((base + offsets[i], self._block(nets[i]), period))
                    i += 1
        if len(self._groups) > 1:
            out.sort()
        return out

    def due(self, start: float, stop: float) -> list[tuple[float, str]]:
        """Every ``(slot time, block)`` with ``start <= slot < stop``, in time order."""
        return [(at, block) for at, block, _ in self.due_periods(start, stop)]


class _IssueFn(beam.DoFn):
    """A window ``(start, stop)`` -> the sweep commands due in it (the first pass's with its own
    port set and reason ``INITIAL``)."""

    def __init__(self, plan_args: tuple, silent: PortSet, ttl_s: float, policy: str,
                 first_pass: PortSet | None = None, period_of: Callable[[str], float] | None = None,
                 keep: Callable[[str], bool] | None = None):
        self._plan_args, self._silent, self._ttl, self._policy = plan_args, silent, ttl_s, policy
        self._first = first_pass
        self._period_of = period_of
        self._keep = keep

    def setup(self):
        self._plan = SweepPlan(*self._plan_args, period_of=self._period_of, keep=self._keep)

    def process(self, window):
        start, stop = window
        epoch = self._plan.epoch
        for at, block, period in self._plan.due_periods(start, stop):
            if self._first is not None and at < epoch:
                continue  # before the run's start: its first pass is what comes first
            if self._first is not None and at < epoch + period:
                yield block, command_record(policy=self._policy, target=block, not_before=at, ttl_s=self._ttl,
                                            ports=self._first, reason="INITIAL")
                continue
            yield block, command_record(policy=self._policy, target=block, not_before=at, ttl_s=self._ttl,
                                        ports=self._silent, reason="SWEEP")


class Sweeps(beam.PTransform):
    """Range commands ``(block, ScanCommand record)`` for the sweep ranges.

    Live (``stop`` None): from ``start`` on, every ``tick_s`` of wall-clock time. Bounded: the slots
    in ``[start, stop)`` at once. ``period_of`` (an address -> seconds; see :func:`sweep_period_of`):
    each block's own period instead of ``period_s``.

    ``first_pass`` (live runs that start from nothing, e.g. ``scanflow run``): the run begins by
    scanning every block with this port set (the policy's initial, classification set), all of them
    within ``first_pass_window_s`` of ``start``; each block is then swept with the silent set once per
    period after its first pass. Without it the blocks' slots are spread over the period from the
    epoch, so a block's first sweep may come up to a period after the start.

    ``keep`` (a block's CIDR text -> bool): sweep only the blocks it accepts (one scheduler job's
    share, :meth:`pipelines.partitions.PartitionShare.owns_block`).
    """

    def __init__(self, networks: Iterable[ipaddress.IPv4Network], *, prefix: int, period_s: float, silent: PortSet,
                 ttl_s: float, start: float, stop: float | None = None, tick_s: float = 60.0,
                 policy: str = "EFFICIENT", first_pass: PortSet | None = None, first_pass_window_s: float = 0.0,
                 period_of: Callable[[str], float] | None = None, keep: Callable[[str], bool] | None = None):
        super().__init__()
        self._keep = keep
        if first_pass is not None:
            self._plan_args = (tuple(networks), prefix, period_s, start, min(first_pass_window_s, period_s))
        else:
            self._plan_args = (tuple(networks), prefix, period_s)
        SweepPlan(*self._plan_args, period_of=period_of, keep=keep)  # fail at construction, not on a worker
        self._period_of = period_of
        self._first = first_pass
        self._silent, self._ttl, self._policy = silent, ttl_s, policy
        self._start, self._stop, self._tick = start, stop, tick_s

    def expand(self, pbegin):
        tick = self._tick
        if self._stop is None:
            start = math.floor(self._start / tick) * tick
            windows = (pbegin
                       | "Tick" >> PeriodicImpulse(start_timestamp=Timestamp(start), fire_interval=tick)
                       | "Window" >> beam.Map(lambda ts, tick=tick: (float(ts), float(ts) + tick)))
        else:
            windows = pbegin | "Window" >> beam.Create([(self._start, self._stop)])
        return windows | "Issue" >> beam.ParDo(_IssueFn(self._plan_args, self._silent, self._ttl, self._policy,
                                                        self._first, self._period_of, self._keep))


def sweep_period_of(policy) -> Callable[[str], float] | None:
    """The per-block sweep period of ``policy``: its ``sweep_interval(address)`` when it has one (the
    adaptive policy), else None (every block at ``policy.params.silent_interval``, the paper's)."""
    return getattr(policy, "sweep_interval", None)

"""Stage: sweeps, the range commands that cover the silent ~97 % of the target space.

The configured ranges are cut into blocks of ``sweep_prefix`` (a /24 = 256 addresses). Each block is
swept once per ``period`` (the policy's silent interval, 3.5 days) with the silent port set. Its slot
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
from typing import Iterable

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

    ``offset(block)`` is the block's hash fraction times ``spread`` (default: the whole period, so
    the blocks are spread evenly over it). A run that starts with a first pass over everything
    (:class:`Sweeps` ``first_pass``) uses ``epoch`` = its start and ``spread`` = the first pass's
    window: every block is swept within that window, then once per period after its first sweep.
    Kept compact (two arrays sorted by offset, 12 bytes a block) so a national target space fits.
    """

    def __init__(self, networks: Iterable[ipaddress.IPv4Network], prefix: int, period_s: float, epoch: float = 0.0,
                 spread: float | None = None):
        if period_s <= 0:
            raise ValueError(f"sweep period must be > 0 seconds, got {period_s}")
        spread = period_s if spread is None else spread
        if not 0 <= spread <= period_s:
            raise ValueError(f"sweep spread must be within [0, period] = [0, {period_s}] s, got {spread}")
        self.prefix, self.period, self.epoch = prefix, float(period_s), float(epoch)
        slots = sorted((_fraction(str(b)) * spread, int(b.network_address))
                       for b in sweep_blocks(networks, prefix))
        self._offsets = array("d", (o for o, _ in slots))
        self._nets = array("L", (n for _, n in slots))

    def __len__(self) -> int:
        return len(self._offsets)

    def block(self, i: int) -> str:
        return f"{ipaddress.IPv4Address(self._nets[i])}/{self.prefix}"

    def due(self, start: float, stop: float) -> list[tuple[float, str]]:
        """Every ``(slot time, block)`` with ``start <= slot < stop``, in time order."""
        out: list[tuple[float, str]] = []
        if stop <= start or not len(self):
            return out
        first = math.floor((start - self.epoch) / self.period)
        last = math.floor((stop - self.epoch) / self.period)
        for k in range(first, last + 1):
            base = self.epoch + k * self.period
            i = bisect_left(self._offsets, start - base)
            while i < len(self._offsets) and base + self._offsets[i] < stop:
                out.append((base + self._offsets[i], self.block(i)))
                i += 1
        return out


class _IssueFn(beam.DoFn):
    """A window ``(start, stop)`` -> the sweep commands due in it (the first pass's with its own
    port set and reason ``INITIAL``)."""

    def __init__(self, plan_args: tuple, silent: PortSet, ttl_s: float, policy: str,
                 first_pass: PortSet | None = None):
        self._plan_args, self._silent, self._ttl, self._policy = plan_args, silent, ttl_s, policy
        self._first = first_pass

    def setup(self):
        self._plan = SweepPlan(*self._plan_args)

    def process(self, window):
        start, stop = window
        first_end = self._plan.epoch + self._plan.period
        for at, block in self._plan.due(start, stop):
            if self._first is not None and at < self._plan.epoch:
                continue  # before the run's start: its first pass is what comes first
            if self._first is not None and at < first_end:
                yield block, command_record(policy=self._policy, target=block, not_before=at, ttl_s=self._ttl,
                                            ports=self._first, reason="INITIAL")
                continue
            yield block, command_record(policy=self._policy, target=block, not_before=at, ttl_s=self._ttl,
                                        ports=self._silent, reason="SWEEP")


class Sweeps(beam.PTransform):
    """Range commands ``(block, ScanCommand record)`` for the sweep ranges.

    Live (``stop`` None): from ``start`` on, every ``tick_s`` of wall-clock time. Bounded: the slots
    in ``[start, stop)`` at once.

    ``first_pass`` (live runs that start from nothing, e.g. ``scanflow run``): the run begins by
    scanning every block with this port set (the policy's initial, classification set), all of them
    within ``first_pass_window_s`` of ``start``; each block is then swept with the silent set once per
    period after its first pass. Without it the blocks' slots are spread over the period from the
    epoch, so a block's first sweep may come up to a period after the start.
    """

    def __init__(self, networks: Iterable[ipaddress.IPv4Network], *, prefix: int, period_s: float, silent: PortSet,
                 ttl_s: float, start: float, stop: float | None = None, tick_s: float = 60.0,
                 policy: str = "EFFICIENT", first_pass: PortSet | None = None, first_pass_window_s: float = 0.0):
        super().__init__()
        if first_pass is not None:
            self._plan_args = (tuple(networks), prefix, period_s, start, min(first_pass_window_s, period_s))
        else:
            self._plan_args = (tuple(networks), prefix, period_s)
        SweepPlan(*self._plan_args)  # fail at construction, not on a worker
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
                                                        self._first))

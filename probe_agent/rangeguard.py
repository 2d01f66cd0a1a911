"""The range guard: one scan of a range at a time in this agent. A command whose range overlaps a
range being scanned waits until that scan ends (``commands{outcome="waited-for-range"}``)."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from probe_agent.job import Prepared


class RangeGuard:
    """The ranges this agent is scanning now, each with the event set when its scan ends.

    Two sweeps of one block must never run at once (a slow sweep on a fast clock, a command
    delivered again): they would double the packets its addresses get and interleave two rounds'
    answers. A block's commands share its key, hence its partition and its agent, so a guard in
    the agent is enough.
    """

    def __init__(self, metrics) -> None:
        self.metrics = metrics
        self._ranges: list[tuple[Any, asyncio.Event]] = []

    async def claim(self, prepared: Prepared, check_stop: Callable[[], None]) -> asyncio.Event | None:
        """Wait until no range of ``prepared`` overlaps a range being scanned now, then claim them;
        returns the event to :meth:`release` when the scan ends (None: no range, nothing claimed).

        ``check_stop`` is called before each wait (every 0.5 s); what it raises ends the wait.
        """
        nets = [t.network for t in prepared.targets if not t.is_single]
        if not nets:
            return None
        while True:
            busy = [ev for net, ev in self._ranges if any(n.overlaps(net) for n in nets if n.version == net.version)]
            if not busy:
                break
            self.metrics.commands["waited-for-range"] += 1
            while not busy[0].is_set():
                check_stop()
                try:
                    await asyncio.wait_for(busy[0].wait(), 0.5)
                except asyncio.TimeoutError:
                    pass
        done = asyncio.Event()
        self._ranges.extend((net, done) for net in nets)
        return done

    def release(self, done: asyncio.Event | None) -> None:
        """The scan that claimed ``done`` ended: free its ranges and wake who waits for them."""
        if done is None:
            return
        done.set()
        self._ranges = [(net, ev) for net, ev in self._ranges if ev is not done]

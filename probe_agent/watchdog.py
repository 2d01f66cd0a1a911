"""The command loop's watchdog: a loop that has not turned for too long is stuck, and the agent
starts itself again.

The agent's command loop turns several times a second; every wait in it is bounded (a poll of
200 ms, a flush by the producer's delivery timeout, a commit and an offset look-up by the request
timeout). A Kafka client call that never returns (seen once after the only broker was killed and
started again: the agent held its partitions, completed nothing and did not even stop on SIGTERM)
holds the loop for good. :class:`LoopWatchdog` watches the loop from a thread of its own; once it has
not turned for ``limit_s`` it calls ``on_stuck`` once. The agent's CLI writes every thread's stack
(what the loop waited on) and replaces the process with a fresh one (same argv): new clients, a new
group member; the commands not yet committed run again (they always may: at-least-once), nothing
acknowledged is lost.
"""

from __future__ import annotations

import threading
import time
from typing import Callable


def overdue(last_turn: float, now: float, limit_s: float) -> float | None:
    """Seconds the loop has been stuck (``now - last_turn``) once that reaches ``limit_s``; else None."""
    waited = now - last_turn
    return waited if waited >= limit_s else None


class LoopWatchdog:
    """Calls ``on_stuck(seconds)`` (once, from its own daemon thread) when :meth:`turn` has not been
    called for ``limit_s``; :meth:`stop` ends the watch."""

    def __init__(self, limit_s: float, on_stuck: Callable[[float], None], *, check_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        if limit_s <= 0:
            raise ValueError(f"a watchdog needs a limit above 0 s, not {limit_s}")
        self.limit_s, self.on_stuck, self.check_s, self.clock = limit_s, on_stuck, check_s, clock
        self._last = clock()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="loop-watchdog", daemon=True)
        self.fired = False

    def start(self) -> "LoopWatchdog":
        self._last = self.clock()
        self._thread.start()
        return self

    def turn(self) -> None:
        """The loop turned (called from the loop at every turn)."""
        self._last = self.clock()

    def stop(self) -> None:
        self._halt.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(self.check_s * 2 + 1)

    def _watch(self) -> None:
        while not self._halt.wait(self.check_s):
            stuck = overdue(self._last, self.clock(), self.limit_s)
            if stuck is not None:
                self.fired = True
                self.on_stuck(stuck)
                return

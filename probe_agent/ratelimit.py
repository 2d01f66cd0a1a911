"""Rate caps: a token bucket for the agent's packets/s and a politeness cap per target address.

Both take their clock from outside (``time.monotonic`` live, a virtual clock in simulation), so they
are tested without sleeping.
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable


class TokenBucket:
    """Packets/s cap: ``rate`` tokens per second accrue up to ``capacity``; one token per packet.

    :meth:`acquire` waits for tokens before a packet is sent. Packets that are only known after the
    fact (the ACK and request of an established connection, its FIN) are :meth:`charge` d: the balance
    may go negative and later acquires wait until it is paid back, so the long-run packet rate stays
    at or under ``rate`` whatever each probe turned out to cost.

    The bucket starts empty (``start_full=False``): no burst when an agent (re)starts, and at most
    ``rate * t`` packets in the first ``t`` seconds. Its depth (``capacity``) is what a sender that
    was held up (a busy machine) may catch up at once, so the average keeps to the rate.
    """

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float] = time.monotonic, *,
                 start_full: bool = False):
        if rate <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be > 0")
        self.rate = float(rate)
        self.capacity = float(capacity)
        self.clock = clock
        self._tokens = float(capacity) if start_full else 0.0
        self._stamp = clock()
        self.granted = 0
        self.charged = 0

    def _refill(self) -> float:
        now = self.clock()
        if now > self._stamp:
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
        return now

    @property
    def tokens(self) -> float:
        """Tokens available now (negative while charged packets are being paid back)."""
        self._refill()
        return self._tokens

    def try_acquire(self, n: float = 1.0) -> float:
        """Take ``n`` tokens if available and return 0, else take nothing and return the wait (s)."""
        self._refill()
        # The epsilon absorbs float rounding of the refill, which could otherwise ask for a wait
        # shorter than the clock's resolution again and again.
        if self._tokens >= n - 1e-9:
            self._tokens -= n
            self.granted += int(n)
            return 0.0
        return (n - self._tokens) / self.rate

    async def acquire(self, n: float = 1.0,
                      sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """Wait until ``n`` tokens are available and take them (``n`` is capped at the capacity)."""
        n = min(float(n), self.capacity)
        while True:
            wait = self.try_acquire(n)
            if wait <= 0:
                return
            await sleep(wait)

    def charge(self, n: float) -> None:
        """Take ``n`` tokens now, without waiting (packets already sent)."""
        if n > 0:
            self._refill()
            self._tokens -= n
            self.charged += int(n)


class PolitenessCap:
    """At most ``rate`` probes per second to any one address (virtual scheduling per address).

    :meth:`reserve` books the next slot of an address and returns when it is: now, or later if the
    address was probed too recently. Entries whose slot has passed are pruned as the table grows, so
    memory follows the addresses probed in the last ``1/rate`` seconds, not all addresses ever seen.
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic, prune_every: int = 65536):
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.interval = 1.0 / rate
        self.clock = clock
        self._next: dict[str, float] = {}
        self._prune_every = prune_every
        self._since_prune = 0

    def reserve(self, address: str, now: float | None = None) -> float:
        """Book a probe of ``address``; returns the time (on the clock) at which it may be sent."""
        now = self.clock() if now is None else now
        slot = max(now, self._next.get(address, now))
        self._next[address] = slot + self.interval
        self._since_prune += 1
        if self._since_prune >= self._prune_every:
            self._prune(now)
        return slot

    def _prune(self, now: float) -> None:
        self._since_prune = 0
        self._next = {a: t for a, t in self._next.items() if t > now}

    def __len__(self) -> int:
        return len(self._next)

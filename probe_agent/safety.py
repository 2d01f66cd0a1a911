"""What the agent may probe: the allowlist, the exclusion (opt-out) list and tracked IPs.

- :class:`Allowlist`: explicit CIDRs. A target is allowed only when it lies entirely inside the
  allowlist; an empty allowlist allows nothing. A command with any target outside is refused whole.
- :class:`ExclusionList`: opt-out CIDRs from a file (re-read when it changes) plus built-in reserved
  ranges. Exclusions win over everything: an excluded address is never probed, even mid-scan. If the
  file cannot be read or parsed the list *fails closed*: it excludes everything until it is fixed.
- :class:`TrackedIps`: IPs under per-IP tracking (``scanflow.ip-state``), which sweeps skip.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from probe_agent.targets import Network, Target

log = logging.getLogger("scanflow.agent.safety")

#: Never probed whatever the allowlist says: "this network", multicast, reserved and broadcast.
BUILTIN_EXCLUSIONS = ("0.0.0.0/8", "224.0.0.0/3", "ff00::/8")


@dataclass(frozen=True)
class Refusal:
    """Why a command or a target is not scanned: a short class (dead-letter header) and a message."""

    error_class: str
    message: str


class Allowlist:
    """The networks the agent may probe; empty means none."""

    def __init__(self, networks: Iterable[Network | str]):
        nets = [ipaddress.ip_network(n) if isinstance(n, str) else n for n in networks]
        # Collapsed, so a target covered by adjacent entries (two /25s) counts as inside a /24.
        self.networks: list[Network] = (list(ipaddress.collapse_addresses(n for n in nets if n.version == 4))
                                         + list(ipaddress.collapse_addresses(n for n in nets if n.version == 6)))

    def permits(self, target: Target) -> bool:
        """True when every address of ``target`` is inside the allowlist."""
        return any(n.version == target.version and target.network.subnet_of(n) for n in self.networks)

    def check(self, targets: Iterable[Target]) -> Refusal | None:
        """A :class:`Refusal` naming the first target outside the allowlist, or None."""
        if not self.networks:
            return Refusal("OutsideAllowlist", "the agent's allowlist is empty, so every target is "
                           "refused; set agent.allowlist to the networks this agent may scan")
        for t in targets:
            if not self.permits(t):
                return Refusal("OutsideAllowlist", f"target {t.text} is not entirely inside the allowlist "
                               f"({', '.join(map(str, self.networks))}); the whole command is refused")
        return None


def parse_exclusions(text: str, source: str = "exclusion list") -> list[Network]:
    """CIDRs or addresses, one per line; ``#`` starts a comment. Host bits are allowed (an opt-out of
    ``192.0.2.5/24`` excludes the whole /24). ``ValueError`` names the first bad line."""
    nets: list[Network] = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        try:
            nets.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{source} line {number}: {entry!r} is not an address or CIDR range") from None
    return nets


class ExclusionList:
    """Opt-out ranges from ``path`` (may be None) plus :data:`BUILTIN_EXCLUSIONS`.

    :meth:`refresh` re-reads the file when its size, modification time or inode changed; it is called
    at most every ``check_interval_s`` by :meth:`maybe_refresh`, which the agent calls between probe
    blocks, so a new opt-out takes effect within about a second even in the middle of a long scan.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, builtin: Iterable[str] = BUILTIN_EXCLUSIONS,
                 check_interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.path = os.fspath(path) if path else None
        self.builtin = [ipaddress.ip_network(b) for b in builtin]
        self.check_interval_s = check_interval_s
        self.clock = clock
        self.error: str | None = None
        self.reloads = 0
        #: Changes on every reload or failure, so users of a filtered snapshot know to re-check.
        self.generation = 0
        self._signature: tuple | None = None
        self._checked = clock()
        self._set(list(self.builtin))
        if self.path is not None:
            self.refresh()
            if self.error:
                raise ValueError(self.error)

    @property
    def healthy(self) -> bool:
        """False while the file cannot be read or parsed (then everything is excluded)."""
        return self.error is None

    def _set(self, nets: list[Network]) -> None:
        v4 = list(ipaddress.collapse_addresses(n for n in nets if n.version == 4))
        # Merged intervals (adjacent ranges joined), so one lookup answers "is this range covered?".
        merged: list[list[int]] = []
        for n in v4:
            lo, hi = int(n.network_address), int(n.broadcast_address)
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        self.v4_starts = np.array([m[0] for m in merged], dtype=np.uint64)
        self.v4_ends = np.array([m[1] for m in merged], dtype=np.uint64)
        self.v6 = list(ipaddress.collapse_addresses(n for n in nets if n.version == 6))
        self.networks = v4 + self.v6

    def refresh(self) -> bool:
        """Re-read the file if it changed; True when the list changed."""
        self._checked = self.clock()
        if self.path is None:
            return False
        try:
            st = os.stat(self.path)
            signature = (st.st_ino, st.st_size, st.st_mtime_ns)
            if signature == self._signature and self.error is None:
                return False
            with open(self.path, encoding="utf-8") as fh:
                nets = parse_exclusions(fh.read(), self.path)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            if self.error is None:
                log.error("exclusion list %s is unreadable, excluding everything until it is fixed: %s",
                          self.path, exc)
            self.error = f"exclusion list unreadable, nothing is probed until it is fixed: {exc}"
            self._signature = None
            self.generation += 1
            return True
        self._signature = signature
        self.error = None
        self._set(self.builtin + nets)
        self.reloads += 1
        self.generation += 1
        log.info("exclusion list %s loaded: %d entries", self.path, len(nets))
        return True

    def maybe_refresh(self) -> bool:
        """:meth:`refresh` if ``check_interval_s`` has passed since the last check."""
        if self.path is not None and self.clock() - self._checked >= self.check_interval_s:
            return self.refresh()
        return False

    def covers(self, target: Target) -> bool:
        """True when every address of ``target`` is excluded (the whole target is skipped)."""
        if not self.healthy:
            return True
        if target.version == 4:
            lo, hi = target.base, target.base + target.size - 1
            i = int(np.searchsorted(self.v4_starts, np.uint64(lo), side="right")) - 1
            return i >= 0 and int(self.v4_ends[i]) >= hi
        return any(target.network.subnet_of(n) for n in self.v6)

    def excluded_v4(self, addresses: np.ndarray) -> np.ndarray:
        """Boolean mask: which of these IPv4 addresses (uint64) are excluded."""
        if not self.healthy:
            return np.ones(len(addresses), dtype=bool)
        if not len(self.v4_starts):
            return np.zeros(len(addresses), dtype=bool)
        i = np.searchsorted(self.v4_starts, addresses, side="right") - 1
        ok = i >= 0
        out = np.zeros(len(addresses), dtype=bool)
        out[ok] = addresses[ok] <= self.v4_ends[i[ok]]
        return out

    def excludes(self, address: str) -> bool:
        """True when one address (text) is excluded."""
        if not self.healthy:
            return True
        ip = ipaddress.ip_address(address)
        if ip.version == 4:
            return bool(self.excluded_v4(np.array([int(ip)], dtype=np.uint64))[0])
        return any(ip in n for n in self.v6)

    def lines(self) -> list[str]:
        """The effective list as CIDR text (for Masscan's ``--excludefile``)."""
        return [str(n) for n in self.networks]


class TrackedIps:
    """IPs under per-IP tracking, by policy; sweeps of a policy skip the IPs that policy tracks.

    Filled from ``scanflow.ip-state`` by :class:`probe_agent.publisher.IpStateReader` (a state
    record adds, a tombstone removes). Thread-safe: the reader thread writes, the agent reads.
    """

    def __init__(self) -> None:
        self._by_ip: dict[str, frozenset[str]] = {}
        self._lock = threading.Lock()
        self.caught_up = threading.Event()

    def update(self, ip: str, policy: str | None) -> None:
        """Mark ``ip`` tracked by ``policy``; ``policy=None`` (a tombstone) un-tracks it everywhere."""
        with self._lock:
            if policy is None:
                self._by_ip.pop(ip, None)
            else:
                self._by_ip[ip] = self._by_ip.get(ip, frozenset()) | {policy}

    def is_tracked(self, ip: str, policy: str = "UNKNOWN") -> bool:
        """Tracked by ``policy`` (any policy when ``policy`` is UNKNOWN)."""
        found = self._by_ip.get(ip)
        if not found:
            return False
        return policy == "UNKNOWN" or policy in found or "UNKNOWN" in found

    def __len__(self) -> int:
        return len(self._by_ip)

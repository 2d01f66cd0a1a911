"""Predicted ports for devices the knowledge base cannot name: co-occurrence learned from a scan.

The paper probes every responder it cannot estimate with one fixed set of ~5,100 ranked ports, on
every rescan. What such a device already showed says more: its own open ports, and the ports that
open together with them on other hosts (GPS, Izhikevich et al., "Predicting IPv4 services across all
ports", SIGCOMM 2022, predicts services from the co-occurrence of ports seen on a host). A
:class:`PortPredictor` is learned from full-port scan rows (``ip, port``: the survey the port sets are
cut from, or the lake's observations): for each port seen on at least ``min_support`` hosts, the
ports found on the same hosts with conditional frequency >= ``min_confidence``. A device's predicted
set is its open ports plus the best-supported co-occurring ports, at most ``max_ports`` (so it travels
inline in a command); a device with more open ports than that gets no prediction (the unknown set).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

from scanflow.portsets import MAX_INLINE_PORTS, PortSet


@dataclass(frozen=True)
class PortPredictor:
    """``rules[p]``: ports that co-occur with ``p``, as ``(port, confidence)`` best first."""

    rules: Mapping[int, tuple[tuple[int, float], ...]]
    max_ports: int = MAX_INLINE_PORTS

    def __post_init__(self) -> None:
        object.__setattr__(self, "_memo", {})

    def __getstate__(self):
        return {"rules": self.rules, "max_ports": self.max_ports}

    def __setstate__(self, state) -> None:
        object.__setattr__(self, "rules", state["rules"])
        object.__setattr__(self, "max_ports", state["max_ports"])
        object.__setattr__(self, "_memo", {})

    def predict(self, open_ports: Iterable[int]) -> PortSet | None:
        """The inline set to probe a device that showed ``open_ports`` on: its ports and the ports
        predicted from them, best-supported first; None when its own ports exceed ``max_ports``."""
        own = frozenset(open_ports)
        memo = self._memo
        if own in memo:
            return memo[own]
        if len(memo) > 1 << 16:
            memo.clear()
        memo[own] = found = self._predict(own)
        return found

    def _predict(self, own: frozenset[int]) -> PortSet | None:
        if not own or len(own) > self.max_ports:
            return None
        best: dict[int, float] = {}
        for p in own:
            for q, conf in self.rules.get(p, ()):
                if q not in own and conf > best.get(q, 0.0):
                    best[q] = conf
        room = self.max_ports - len(own)
        extra = sorted(best, key=lambda q: (-best[q], q))[:room]
        return PortSet.inline(own | frozenset(extra), label="predicted")

    @classmethod
    def learn(cls, ips: np.ndarray, ports: np.ndarray, *, min_support: int = 20, min_confidence: float = 0.05,
              honeypot_min_ports: int = 100, max_ports: int = MAX_INLINE_PORTS) -> "PortPredictor":
        """Learn the rules from scan rows (one per open ``(ip, port)``; duplicates counted once).
        Hosts with ``honeypot_min_ports`` or more open ports are left out (as in the port sets)."""
        ips = np.asarray(ips, dtype=np.int64)
        ports = np.asarray(ports, dtype=np.int64)
        codes = np.unique((ips << 17) | ports)          # ports < 2**17: (ip, port) pairs, sorted by ip
        ips, ports = codes >> 17, codes & 0x1FFFF
        starts = np.flatnonzero(np.r_[True, ips[1:] != ips[:-1]])
        sizes = np.diff(np.r_[starts, len(ips)])
        keep = np.repeat(sizes < honeypot_min_ports, sizes)
        ips, ports = ips[keep], ports[keep]
        starts = np.flatnonzero(np.r_[True, ips[1:] != ips[:-1]]) if len(ips) else np.zeros(0, np.int64)
        sizes = np.diff(np.r_[starts, len(ips)])
        support = np.bincount(ports, minlength=65536)
        # every ordered pair (p, q), p != q, on the same host
        pair_p, pair_q = [], []
        for n in np.unique(sizes):
            if n < 2:
                continue
            hosts = starts[sizes == n]
            block = ports[hosts[:, None] + np.arange(n)]          # (hosts, n)
            i, j = np.nonzero(~np.eye(n, dtype=bool))
            pair_p.append(block[:, i].ravel())
            pair_q.append(block[:, j].ravel())
        rules: dict[int, tuple[tuple[int, float], ...]] = {}
        if pair_p:
            pair = np.concatenate(pair_p) << 16 | np.concatenate(pair_q)
            uniq, count = np.unique(pair, return_counts=True)
            p, q = uniq >> 16, uniq & 0xFFFF
            conf = count / support[p]
            ok = (support[p] >= min_support) & (conf >= min_confidence)
            p, q, conf = p[ok], q[ok], conf[ok]
            order = np.lexsort((q, -conf, p))
            p, q, conf = p[order], q[order], conf[order]
            bounds = np.flatnonzero(np.r_[True, p[1:] != p[:-1], True])
            for a, b in zip(bounds[:-1], bounds[1:]):
                rules[int(p[a])] = tuple((int(x), round(float(c), 6)) for x, c in zip(q[a:b], conf[a:b]))
        return cls(rules, max_ports)

    @classmethod
    def from_table(cls, table, **kwargs) -> "PortPredictor":
        """:meth:`learn` from a pyarrow table with ``ip`` (integer) and ``port`` columns."""
        return cls.learn(table.column("ip").to_numpy(), table.column("port").to_numpy(), **kwargs)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"max_ports": self.max_ports,
                "rules": {str(p): [[q, c] for q, c in r] for p, r in sorted(self.rules.items())}}

    @classmethod
    def from_dict(cls, data: Mapping) -> "PortPredictor":
        """Inverse of :meth:`to_dict`."""
        return cls({int(p): tuple((int(q), float(c)) for q, c in r) for p, r in data["rules"].items()},
                   int(data.get("max_ports", MAX_INLINE_PORTS)))

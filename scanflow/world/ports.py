"""How popular each TCP port is among the services of the synthetic internet.

Ports are ranked. Ranks 1-10 are the paper's Table 1 (80, 443, 25, 21, 110, 587, 7547, 143, 340, 995),
ranks 11-50 a fixed list of well-known service ports chosen by this project, and every other port gets
a rank from a fixed pseudo-random permutation (``ranking_seed``), the same in every world: the port
"culture" of the internet does not depend on which addresses a world samples, just as the paper derived
its port sets from one sample (Dec 2018) and applied them to others (2019-2020).

The share of (host, port) draws falling on each rank is piecewise:

- ranks 1-10: ``head_shares`` (one per Table 1 port, decreasing, so the ranking is reproduced);
- ranks 11 .. ``body_end``: a Zipf law with exponent ``body_exponent``;
- ranks ``body_end`` .. ``cutoff_rank``: ``tail_share`` spread as a power law ``tail_exponent``;
- beyond ``cutoff_rank``: ``noise_share`` spread as a steep power law (ports almost nobody runs).

The defaults were fitted (see ``docs/WORLD.md``) so that a full-port scan of 328,240 responsive hosts,
put through the paper's derivation (:func:`scanflow.portsets.derive_port_sets`), gives the paper's
sizes: ~11,000 standard ports, ~500 ports for 95 % device detection, ~5,100 ports for 97 % port
detection. ``tests/unit/scanflow/world/test_calibration_ports.py`` measures them on a generated world.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

#: The paper's Table 1: the ten ports answered by most IPs in the Dec 2018 full-port scan, in order.
TABLE1_PORTS: tuple[int, ...] = (80, 443, 25, 21, 110, 587, 7547, 143, 340, 995)

#: Ranks 11-50: common service ports in an order chosen by this project (not from the paper).
WELL_KNOWN_PORTS: tuple[int, ...] = (
    22, 23, 993, 465, 8080, 53, 3389, 8443, 3306, 5060, 1723, 8000, 554, 8081, 111, 2000, 5000, 8888,
    81, 1900, 3000, 5900, 135, 139, 445, 10000, 8008, 9000, 2323, 4443, 5001, 49152, 1883, 8090, 9100,
    6000, 179, 5432, 1433, 6379)

N_PORTS = 65535


@dataclass(frozen=True)
class PortPopularity:
    """Parameters of the port popularity law (see the module docstring); immutable and hashable, so
    the derived arrays are computed once per distinct parameter set."""

    head_shares: tuple[float, ...] = (0.17, 0.13, 0.06, 0.052, 0.045, 0.04, 0.036, 0.032, 0.029, 0.026)
    body_exponent: float = 1.6
    body_end: int = 500
    tail_share: float = 0.166
    tail_exponent: float = 1.22
    cutoff_rank: int = 16_400
    noise_share: float = 0.005
    noise_exponent: float = 3.0
    ranking_seed: int = 20181201

    def __post_init__(self) -> None:
        if len(self.head_shares) != len(TABLE1_PORTS):
            raise ValueError(f"head_shares: give one share per Table 1 port ({len(TABLE1_PORTS)})")
        if any(b >= a for a, b in zip(self.head_shares, self.head_shares[1:])) or min(self.head_shares) <= 0:
            raise ValueError("head_shares must be positive and strictly decreasing (Table 1 is a ranking)")
        rest = 1.0 - sum(self.head_shares) - self.tail_share - self.noise_share
        if rest <= 0 or self.tail_share < 0 or self.noise_share < 0:
            raise ValueError("head_shares + tail_share + noise_share must leave a positive share for the body")
        fixed = len(TABLE1_PORTS) + len(WELL_KNOWN_PORTS)
        if not fixed < self.body_end < self.cutoff_rank < N_PORTS:
            raise ValueError(f"need {fixed} < body_end < cutoff_rank < {N_PORTS}")

    def ranked_ports(self) -> np.ndarray:
        """``ranked_ports()[r - 1]`` is the port of rank ``r`` (int32, all 65,535 ports once)."""
        return _ranked_ports(self.ranking_seed)

    def rank_shares(self) -> np.ndarray:
        """Share of draws per rank (float64, sums to 1)."""
        return _rank_shares(self)

    def port_shares(self) -> np.ndarray:
        """Share of draws per port number (index 0 unused, 0.0)."""
        out = np.zeros(N_PORTS + 1)
        out[self.ranked_ports()] = self.rank_shares()
        return out

    def sample(self, rng: np.random.Generator, draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For owner ``i`` draw ``draws[i]`` ports with replacement and keep the distinct ones.

        Returns ``(owner, port)`` arrays sorted by owner then port; an owner may get fewer distinct
        ports than draws when popular ports repeat (80 is drawn twice by some hosts).
        """
        draws = np.asarray(draws, dtype=np.int64)
        total = int(draws.sum())
        owner = np.repeat(np.arange(len(draws), dtype=np.int64), draws)
        ranks = np.searchsorted(_rank_cdf(self), rng.random(total), side="right")
        ports = self.ranked_ports()[np.minimum(ranks, N_PORTS - 1)].astype(np.int64)
        code = np.unique(owner * (N_PORTS + 1) + ports)
        return code // (N_PORTS + 1), (code % (N_PORTS + 1)).astype(np.int32)


@lru_cache(maxsize=4)
def _ranked_ports(seed: int) -> np.ndarray:
    fixed = list(TABLE1_PORTS) + [p for p in WELL_KNOWN_PORTS if p not in TABLE1_PORTS]
    taken = np.zeros(N_PORTS + 1, dtype=bool)
    taken[fixed] = True
    rest = np.flatnonzero(~taken[1:]) + 1
    np.random.default_rng(seed).shuffle(rest)
    out = np.concatenate([np.array(fixed, dtype=np.int64), rest]).astype(np.int32)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=8)
def _rank_shares(p: PortPopularity) -> np.ndarray:
    r = np.arange(1, N_PORTS + 1, dtype=np.float64)
    w = np.zeros(N_PORTS)
    head = np.array(p.head_shares)
    w[:len(head)] = head
    body = r[len(head):p.body_end] ** -p.body_exponent
    w[len(head):p.body_end] = body / body.sum() * (1.0 - head.sum() - p.tail_share - p.noise_share)
    tail = r[p.body_end:p.cutoff_rank] ** -p.tail_exponent
    w[p.body_end:p.cutoff_rank] = tail / tail.sum() * p.tail_share
    noise = r[p.cutoff_rank:] ** -p.noise_exponent
    w[p.cutoff_rank:] = noise / noise.sum() * p.noise_share
    w.setflags(write=False)
    return w


@lru_cache(maxsize=8)
def _rank_cdf(p: PortPopularity) -> np.ndarray:
    cdf = np.cumsum(_rank_shares(p))
    cdf /= cdf[-1]
    cdf.setflags(write=False)
    return cdf

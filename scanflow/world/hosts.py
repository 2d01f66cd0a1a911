"""Host profiles: what one device instance has open and what each open port says.

A profile is one kind of device set-up (a camera model with its services, a mail server, a honeypot);
the world's device instances point to profiles and carry their own instance token (host names in
banners), so that the customers' routers rotating through a dynamic address pool can share a few
set-ups while still being different devices. Profiles are stored column-wise
in compressed-sparse-row form (:class:`HostProfiles`): per profile its kind, knowledge-base model,
keyword pick and instance token; per (profile, port) entry the port, its protocol and its banner choice.
A world refers to profiles from its time segments; the same profile can appear in several segments (a
sporadic device coming back on-line is the same device).

Three kinds:

- ``GENERIC``: a device the knowledge base does not know. Its ports are draws from the popularity law
  (:class:`~scanflow.world.ports.PortPopularity`); banners name generic software.
- ``KNOWN``: a model of the knowledge base. Its own ports (each kept with ``known_port_keep``) carry
  the model's keywords in their banners; a few extra ports come from the popularity law.
- ``HONEYPOT``: >= ``honeypot_min_ports`` ports uniformly at random (log-uniform count); banners only on
  ports with a known protocol, SYN-ACK only elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from scanflow.knowledge import DeviceModel
from scanflow.world import banners as B
from scanflow.world.config import WorldConfig

GENERIC, KNOWN, HONEYPOT = 0, 1, 2
KIND_NAMES = ("generic", "known", "honeypot")

_OPTION_COUNT = np.array([len(B.GENERIC_SOFTWARE[p]) for p in range(len(B.PROTOCOLS))], dtype=np.int64)
_TALKATIVE = np.array([p in B.TALKATIVE for p in range(len(B.PROTOCOLS))])


@dataclass(frozen=True, eq=False)
class HostProfiles:
    """Device instances in CSR form: entries ``ptr[i]:ptr[i+1]`` are profile ``i``'s open ports,
    ascending, with their ``proto`` (:mod:`scanflow.world.banners` codes) and banner ``choice``."""

    ptr: np.ndarray
    port: np.ndarray
    proto: np.ndarray
    choice: np.ndarray
    kind: np.ndarray
    model: np.ndarray
    keyword: np.ndarray
    token: np.ndarray
    models: tuple[DeviceModel, ...]

    def __len__(self) -> int:
        return len(self.kind)

    @property
    def n_ports(self) -> np.ndarray:
        """Open ports per profile."""
        return np.diff(self.ptr)

    def ports_of(self, i: int) -> np.ndarray:
        """Open ports of profile ``i``, ascending."""
        return self.port[self.ptr[i]:self.ptr[i + 1]]

    def entries_of(self, profiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All entries of the given profiles: ``(row, entry)`` with ``row`` the index into
        ``profiles`` each entry belongs to (vectorised CSR gather)."""
        return csr_gather(self.ptr, profiles)

    def keyword_of(self, i: int) -> str | None:
        """The device keyword instance ``i`` shows in its banners (None for unknown devices)."""
        m = int(self.model[i])
        if m < 0:
            return None
        return B.keyword_for(self.models[m].keywords, int(self.keyword[i]))

    def banner(self, entry: int, *, profile: int, seed: int, ip: int, t: int, token: int | None = None,
               firmware: int | None = None) -> bytes | None:
        """Render entry ``entry`` (a port of ``profile``) as read by a grabber at time ``t``; ``token``
        names the device instance (default: the profile's own), ``firmware`` the number of firmware
        updates it has had (None: no version shown)."""
        return B.render(int(self.proto[entry]), int(self.choice[entry]), keyword=self.keyword_of(profile),
                        token=int(self.token[profile] if token is None else token), seed=seed, ip=ip,
                        port=int(self.port[entry]), t=t, firmware=firmware)


def csr_gather(ptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For CSR offsets ``ptr`` and selected ``rows``: ``(i, position)`` for every element of every
    selected row, ``i`` indexing ``rows``, in row order (vectorised, no Python loop)."""
    rows = np.asarray(rows, dtype=np.int64)
    start = ptr[rows]
    count = ptr[rows + 1] - start
    i = np.repeat(np.arange(len(rows), dtype=np.int64), count)
    first = np.repeat(np.cumsum(count) - count, count)
    return i, np.repeat(start, count) + (np.arange(len(i), dtype=np.int64) - first)


def make_profiles(rng: np.random.Generator, kinds: np.ndarray, config: WorldConfig,
                  models: Sequence[DeviceModel]) -> HostProfiles:
    """Draw one profile per element of ``kinds`` (``GENERIC``/``KNOWN``/``HONEYPOT``)."""
    kinds = np.asarray(kinds, dtype=np.int8)
    n = len(kinds)
    if len(models) == 0:
        kinds = np.where(kinds == KNOWN, GENERIC, kinds).astype(np.int8)
    owners, ports, own = [], [], []

    generic = np.flatnonzero(kinds == GENERIC)
    if len(generic):
        draws = rng.geometric(1.0 / config.generic_port_draws, len(generic))
        o, p = config.ports.sample(rng, draws)
        owners.append(generic[o]); ports.append(p); own.append(np.zeros(len(p), dtype=bool))

    model = np.full(n, -1, dtype=np.int16)
    known = np.flatnonzero(kinds == KNOWN)
    if len(known):
        model[known] = rng.integers(0, len(models), len(known))
        mports = [np.array(sorted(m.ports), dtype=np.int32) for m in models]
        sizes = np.array([len(mp) for mp in mports])
        flat = np.concatenate(mports)
        offs = np.concatenate([[0], np.cumsum(sizes)])
        m = model[known].astype(np.int64)
        row = np.repeat(np.arange(len(known)), sizes[m])
        first = np.repeat(np.cumsum(sizes[m]) - sizes[m], sizes[m])
        kp = flat[np.repeat(offs[m], sizes[m]) + np.arange(len(row)) - first]
        keep = rng.random(len(row)) < config.known_port_keep
        # at least one own port survives: force the first of every device that lost them all
        kept_any = np.bincount(row, weights=keep, minlength=len(known)) > 0
        keep[np.cumsum(sizes[m]) - sizes[m]] |= ~kept_any
        owners.append(known[row[keep]]); ports.append(kp[keep]); own.append(np.ones(int(keep.sum()), dtype=bool))
        extra = rng.poisson(config.known_extra_ports, len(known))
        if extra.sum():
            o, p = config.ports.sample(rng, extra)
            owners.append(known[o]); ports.append(p); own.append(np.zeros(len(p), dtype=bool))

    honey = np.flatnonzero(kinds == HONEYPOT)
    if len(honey):
        lo, hi = np.log(config.honeypot_min_ports), np.log(config.honeypot_max_ports)
        counts = np.round(np.exp(rng.uniform(lo, hi, len(honey)))).astype(np.int64)
        counts = np.clip(counts, config.honeypot_min_ports, config.honeypot_max_ports)
        for h, c in zip(honey, counts):
            p = rng.choice(65535, int(c), replace=False).astype(np.int32) + 1
            owners.append(np.full(len(p), h, dtype=np.int64)); ports.append(p); own.append(np.zeros(len(p), dtype=bool))

    if owners:
        owner = np.concatenate(owners).astype(np.int64)
        port = np.concatenate(ports).astype(np.int32)
        is_own = np.concatenate(own)
    else:
        owner, port, is_own = np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, bool)
    # sort by (owner, port, own first) and drop duplicate ports, keeping the model's own entry
    order = np.lexsort((~is_own, port, owner))
    owner, port, is_own = owner[order], port[order], is_own[order]
    first = np.ones(len(owner), dtype=bool)
    first[1:] = (owner[1:] != owner[:-1]) | (port[1:] != port[:-1])
    owner, port, is_own = owner[first], port[first], is_own[first]

    proto = B.PORT_PROTOCOL[port]
    choice = (rng.random(len(port)) * _OPTION_COUNT[proto]).astype(np.int16)
    silent = ~_TALKATIVE[proto] & (rng.random(len(port)) >= config.raw_banner_share)
    silent |= (kinds[owner] == HONEYPOT) & ~_TALKATIVE[proto]
    choice[silent] = B.NO_BANNER
    choice[is_own] = B.KEYWORD
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner, minlength=n), out=ptr[1:])
    return HostProfiles(ptr=ptr, port=port, proto=proto.astype(np.int8), choice=choice, kind=kinds,
                        model=model, keyword=rng.integers(0, 256, n).astype(np.int16),
                        token=rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32),
                        models=tuple(models))


def draw_kinds(rng: np.random.Generator, n: int, known_share: float) -> np.ndarray:
    """Kinds of ``n`` non-honeypot devices: ``KNOWN`` with probability ``known_share``."""
    return np.where(rng.random(n) < known_share, KNOWN, GENERIC).astype(np.int8)

"""The synthetic internet: a seeded, immutable world that answers probes at any virtual time.

>>> world = World.generate(WorldConfig(n_ips=10_000), seed=1, horizon_days=14)
>>> hits = world.probe([0, 1, 2], [80, 443], t=3600)      # what a scanner would see at t = 1 h
>>> world.full_port_scan(0).num_rows                      # every open (ip, port) at t = 0

Addresses are indices ``0 .. n_ips-1`` (:meth:`World.address` maps them into ``10.0.0.0/8``); times are
seconds since the world's epoch (2019-12-02 00:00 UTC, used only to render dates in banners). A probe
is a pure function of (seed, ip, port, time, scanner): the same question gets the same answer, and with
``loss > 0`` each scanner loses its own probes independently.
"""

from __future__ import annotations

import bisect
import ipaddress
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from scanflow.knowledge import DeviceModel, KnowledgeBase
from scanflow.world import banners as B
from scanflow.world.blocks import BLOCK_SIZE
from scanflow.world.config import DAY, WorldConfig
from scanflow.world.dynamics import DYNAMIC, HONEYPOT_CLASS, Segments, make_segments
from scanflow.world.hosts import HONEYPOT, KNOWN, HostProfiles, draw_kinds, make_profiles

#: Bits of the packed (ip, time) search key given to time: horizons up to 2**26 s (~776 days).
TIME_BITS = 26
MAX_HORIZON = (1 << TIME_BITS) - 1
BASE_ADDRESS = int(ipaddress.IPv4Address("10.0.0.0"))


@dataclass(frozen=True)
class ProbeResponse:
    """One answering (ip, port) of a probe, with the banner a grabber read (None: SYN-ACK only)."""

    ip: int
    port: int
    banner: bytes | None


class PortMasks:
    """Port sets by small integer id, so that "is this port probed?" is a vectorised lookup
    (:meth:`lookup`). Sets of more than :data:`SPARSE_MAX` ports are boolean rows of 65,536 (a direct
    index); smaller ones (a device's inline sets, of which a run can make thousands) are kept as
    sorted ``id << 16 | port`` codes and looked up by binary search."""

    def __init__(self) -> None:
        self._rows: list[np.ndarray] = []
        self._row_of: list[int] = []             # id -> dense row, -1 for a sparse set
        self._ids: dict[object, int] = {}
        self._matrix: np.ndarray | None = None
        self._codes: list[np.ndarray] = []
        self._sorted: np.ndarray | None = None

    def id_for(self, key: object, ports: Iterable[int]) -> int:
        """The id of the set named ``key`` (added on first use)."""
        found = self._ids.get(key)
        if found is None:
            plist = np.fromiter((int(p) for p in ports), dtype=np.int64)
            plist = plist[(plist >= 1) & (plist <= 65535)]
            found = self._ids[key] = len(self._row_of)
            if len(plist) > SPARSE_MAX:
                row = np.zeros(65536, dtype=bool)
                row[plist] = True
                self._row_of.append(len(self._rows))
                self._rows.append(row)
                self._matrix = None
            else:
                self._row_of.append(-1)
                self._codes.append((np.int64(found) << 16) | plist)
                self._sorted = None
        return found

    @property
    def matrix(self) -> np.ndarray:
        """The dense rows stacked (rebuilt after additions); index it with :meth:`dense_rows`."""
        if self._matrix is None:
            self._matrix = np.stack(self._rows) if self._rows else np.zeros((0, 65536), dtype=bool)
        return self._matrix

    def lookup(self, ids: np.ndarray, ports: np.ndarray) -> np.ndarray:
        """True where ``ports[i]`` is in the set ``ids[i]``."""
        ids = np.asarray(ids, dtype=np.int64)
        ports = np.asarray(ports, dtype=np.int64)
        rows = np.asarray(self._row_of, dtype=np.int64)[ids] if len(ids) else np.zeros(0, dtype=np.int64)
        out = np.zeros(len(ids), dtype=bool)
        dense = rows >= 0
        if dense.any():
            out[dense] = self.matrix[rows[dense], ports[dense]]
        if not dense.all():
            if self._sorted is None:
                self._sorted = np.sort(np.concatenate(self._codes)) if self._codes else np.zeros(0, np.int64)
            codes = (ids[~dense] << 16) | ports[~dense]
            at = np.searchsorted(self._sorted, codes)
            at = np.minimum(at, max(len(self._sorted) - 1, 0))
            out[~dense] = (self._sorted[at] == codes) if len(self._sorted) else False
        return out


#: Port sets up to this size are kept sparse by :class:`PortMasks`.
SPARSE_MAX = 64


class World:
    """A generated world: time segments (who is on which address when) and device profiles.

    Build with :meth:`generate`; all query methods are read-only and vectorised over IPs.
    """

    def __init__(self, config: WorldConfig, seed: int, horizon: int, segments: Segments,
                 device_profile: np.ndarray, device_token: np.ndarray, profiles: HostProfiles,
                 firmware_updates: np.ndarray | None = None):
        self.config = config
        self.seed = int(seed)
        self.horizon = int(horizon)
        self.segments = segments
        self.device_profile = device_profile
        self.device_token = device_token
        self.profiles = profiles
        self.seg_profile = device_profile[segments.device]
        self._key = (segments.ip << TIME_BITS) | segments.start
        # firmware updates: keys ``device << TIME_BITS | t``, sorted (None = no device shows a version)
        self.firmware_updates = firmware_updates
        self._firmware_keys: list[int] | None = None

    # -- construction -----------------------------------------------------------------------------

    @classmethod
    def generate(cls, config: WorldConfig = WorldConfig(), seed: int = 0, *, horizon_days: float = 56.0,
                 kb: KnowledgeBase | Sequence[DeviceModel] | None = None) -> "World":
        """Generate a world over ``[0, horizon_days)``; ``kb`` supplies the known device models
        (default: the built-in knowledge base)."""
        horizon = int(round(horizon_days * DAY))
        if not 0 < horizon <= MAX_HORIZON:
            raise ValueError(f"horizon_days must be in (0, {MAX_HORIZON / DAY:.0f}], got {horizon_days}")
        models = _models(kb)
        rng = np.random.default_rng([int(seed), 0x5CA9F10])
        segments, device_class = make_segments(rng, config, horizon)
        device_profile, profile_class = _assign_profiles(rng, segments, device_class, config.dynamic_pool_types)
        kinds = draw_kinds(rng, len(profile_class), config.known_share)
        kinds[profile_class == HONEYPOT_CLASS] = HONEYPOT
        profiles = make_profiles(rng, kinds, config, models)
        token = rng.integers(0, 1 << 32, len(device_class), dtype=np.uint64).astype(np.uint32)
        firmware = None
        if config.firmware_update_days > 0:
            firmware = _firmware_updates(np.random.default_rng([int(seed), 0xF1A3]),
                                         np.flatnonzero(profiles.kind[device_profile] == KNOWN),
                                         horizon, config.firmware_update_days * DAY)
        return cls(config, seed, horizon, segments, device_profile, token, profiles, firmware)

    # -- addresses --------------------------------------------------------------------------------

    @property
    def n_ips(self) -> int:
        """Number of addresses."""
        return self.config.n_ips

    def address(self, ip: int) -> str:
        """Dotted IPv4 text of address index ``ip`` (``10.0.0.0/8`` upwards)."""
        return str(ipaddress.IPv4Address(BASE_ADDRESS + int(ip)))

    def index(self, address: str) -> int:
        """Inverse of :meth:`address`; ``ValueError`` outside the world."""
        i = int(ipaddress.IPv4Address(address)) - BASE_ADDRESS
        if not 0 <= i < self.n_ips:
            raise ValueError(f"{address} is not an address of this world (10.0.0.0 + 0..{self.n_ips - 1})")
        return i

    # -- state at a time --------------------------------------------------------------------------

    def segment_at(self, ips: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Index of the segment covering each (ip, time), -1 where the address is silent."""
        ips = np.asarray(ips, dtype=np.int64)
        times = np.broadcast_to(np.asarray(times, dtype=np.int64), ips.shape)
        if len(self._key) == 0:
            return np.full(ips.shape, -1, dtype=np.int64)
        idx = np.searchsorted(self._key, (ips << TIME_BITS) | np.clip(times, 0, MAX_HORIZON), side="right") - 1
        safe = np.maximum(idx, 0)
        ok = (idx >= 0) & (self.segments.ip[safe] == ips) & (self.segments.end[safe] > times) & (times >= 0)
        return np.where(ok, idx, -1)

    def responsive_at(self, t: float) -> np.ndarray:
        """Addresses answering on at least one port at time ``t`` (sorted)."""
        s = self.segments
        live = (s.start <= t) & (s.end > t)
        return np.unique(s.ip[live])

    def answers(self, seg: np.ndarray, masks: "PortMasks | np.ndarray", mask_id: np.ndarray, times: np.ndarray,
                scanner: int = 0, loss: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The open, probed, not-lost entries for probes of segments ``seg`` (one per row, -1 = silent
        address) at ``times`` with port set ``mask_id[row]`` of ``masks`` (a :class:`PortMasks`, or a dense matrix indexed by it).

        Returns ``(row, entry)``: the probe row each answer belongs to and the profile entry (port,
        banner) that answered, grouped by row. ``loss`` defaults to the world's.
        """
        seg = np.asarray(seg, dtype=np.int64)
        live = np.flatnonzero(seg >= 0)
        row_l, entry = self.profiles.entries_of(self.seg_profile[seg[live]])
        row = live[row_l]
        port = self.profiles.port[entry]
        ids = np.asarray(mask_id)[row]
        keep = masks.lookup(ids, port) if isinstance(masks, PortMasks) else masks[ids, port]
        row, entry = row[keep], entry[keep]
        loss = self.config.loss if loss is None else loss
        if loss > 0 and len(row):
            keep = self.delivered(self.segments.ip[seg[row]], self.profiles.port[entry],
                                  np.asarray(times, dtype=np.int64)[row], scanner, loss)
            row, entry = row[keep], entry[keep]
        return row, entry

    def delivered(self, ips: np.ndarray, ports: np.ndarray, times: np.ndarray, scanner: int,
                  loss: float) -> np.ndarray:
        """True where the probe of (ip, port) at ``times`` by ``scanner`` is not lost (probability
        ``loss`` each, independent, a pure function of the world's seed and the probe)."""
        return B.hash_uniform(self.seed, 0x1055 + scanner, ips, ports, times) >= loss

    def firmware_version(self, devices: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Firmware updates each device has had by each time (0 without updates; arrays broadcast)."""
        devices = np.asarray(devices, dtype=np.int64)
        times = np.broadcast_to(np.asarray(times, dtype=np.int64), devices.shape)
        if self.firmware_updates is None or not len(self.firmware_updates):
            return np.zeros(devices.shape, dtype=np.int64)
        key = (devices << TIME_BITS) | np.clip(times, 0, MAX_HORIZON)
        upd = self.firmware_updates
        return (np.searchsorted(upd, key, side="right") - np.searchsorted(upd, devices << TIME_BITS, side="left"))

    def banner(self, seg: int, entry: int, t: int) -> bytes | None:
        """The banner of profile entry ``entry`` of segment ``seg``'s device, read at time ``t`` (a
        device of the knowledge base shows its firmware version when the world has updates)."""
        device = int(self.segments.device[seg])
        firmware = None
        if self.firmware_updates is not None and self.profiles.choice[entry] == B.KEYWORD:
            if self._firmware_keys is None:
                self._firmware_keys = self.firmware_updates.tolist()
            keys = self._firmware_keys
            firmware = (bisect.bisect_right(keys, (device << TIME_BITS) | min(max(int(t), 0), MAX_HORIZON))
                        - bisect.bisect_left(keys, device << TIME_BITS))
        return self.profiles.banner(int(entry), profile=int(self.seg_profile[seg]), seed=self.seed,
                                    ip=int(self.segments.ip[seg]), t=int(t),
                                    token=int(self.device_token[device]), firmware=firmware)

    def probe(self, ips: Sequence[int] | np.ndarray, ports: Iterable[int], t: float, *,
              scanner: int = 0, banners: bool = True) -> list[ProbeResponse]:
        """Probe every address in ``ips`` on every port in ``ports`` at virtual time ``t`` seconds.

        The query API for scanner backends: returns the answering (ip, port) pairs, ascending, with
        the banner a grabber reads (``banners=False`` skips rendering). Deterministic by seed.
        """
        ips = np.asarray(ips, dtype=np.int64)
        if len(ips) and (ips.min() < 0 or ips.max() >= self.n_ips):
            raise ValueError(f"ips must be address indices in 0..{self.n_ips - 1}")
        masks = PortMasks()
        mid = masks.id_for("probe", ports)
        tt = np.full(len(ips), int(t), dtype=np.int64)
        seg = self.segment_at(ips, tt)
        row, entry = self.answers(seg, masks, np.full(len(ips), mid), tt, scanner)
        out = [ProbeResponse(int(ips[r]), int(self.profiles.port[e]),
                             self.banner(int(seg[r]), int(e), int(t)) if banners else None)
               for r, e in zip(row, entry)]
        out.sort(key=lambda x: (x.ip, x.port))
        return out

    def full_port_scan(self, t: float = 0.0, ips: np.ndarray | None = None):
        """Every open (ip, port) at time ``t`` on all 65,535 ports (a pyarrow Table ``ip``, ``port``),
        what a loss-free TCP full-port scan of the world (or of the addresses ``ips``) finds."""
        import pyarrow as pa

        s = self.segments
        live = np.flatnonzero((s.start <= t) & (s.end > t))
        if ips is not None:
            live = live[np.isin(s.ip[live], np.asarray(ips, dtype=np.int64))]
        row, entry = self.profiles.entries_of(self.seg_profile[live])
        return pa.table({"ip": pa.array(s.ip[live][row], pa.int64()),
                         "port": pa.array(self.profiles.port[entry].astype(np.int32), pa.int32())})

    def is_honeypot(self, seg: np.ndarray) -> np.ndarray:
        """True for segments whose device is a honeypot/pseudo-service."""
        return self.profiles.kind[self.seg_profile[np.asarray(seg, dtype=np.int64)]] == HONEYPOT

    def summary(self) -> dict:
        """Counts that describe the world (for reports)."""
        s = self.segments
        return {"n_ips": self.n_ips, "seed": self.seed, "horizon_days": self.horizon / DAY,
                "segments": len(s), "devices": len(self.device_profile),
                "addresses_ever_occupied": int(len(np.unique(s.ip))),
                "responsive_at_0": int(len(self.responsive_at(0)))}


def survey_world(config: WorldConfig, seed: int, *, n_ips: int, responsive_fraction: float,
                 kb: KnowledgeBase | Sequence[DeviceModel] | None = None):
    """The full-port scan of a large sample of the same internet at one instant, as a pyarrow Table
    (``ip``, ``port``): ``n_ips`` addresses of which ``responsive_fraction`` answer, each host drawn
    from the stationary mix of the world's classes. Only the answering hosts are generated, so a
    12 M-address survey costs what its ~330 k hosts cost."""
    import pyarrow as pa

    cfg = config.replace(n_ips=n_ips, responsive_fraction=responsive_fraction)
    rng = np.random.default_rng([int(seed), 0x5E7E1])
    n_hosts = int(rng.binomial(n_ips, responsive_fraction))
    ips = np.sort(rng.choice(n_ips, n_hosts, replace=False)).astype(np.int64)
    kinds = draw_kinds(rng, n_hosts, cfg.known_share)
    kinds[rng.random(n_hosts) < cfg.honeypot_share] = HONEYPOT
    profiles = make_profiles(rng, kinds, cfg, _models(kb))
    row, entry = profiles.entries_of(np.arange(n_hosts))
    return pa.table({"ip": pa.array(ips[row], pa.int64()),
                     "port": pa.array(profiles.port[entry].astype(np.int32), pa.int32())})


def _assign_profiles(rng: np.random.Generator, segments: Segments, device_class: np.ndarray,
                     pool_types: int) -> tuple[np.ndarray, np.ndarray]:
    """Map device instances to profiles: one profile per device, except on dynamic addresses with
    ``pool_types > 0``, whose occupants each take one of their pool's ``pool_types`` set-ups (a pool:
    the dynamic addresses of one /24; a device that moves stays in its pool).
    Returns ``(device_profile, profile_class)``."""
    n_dev = len(device_class)
    dynamic = device_class == DYNAMIC
    if pool_types <= 0 or not dynamic.any():
        return np.arange(n_dev, dtype=np.int64), device_class.copy()
    dev_ip = np.zeros(n_dev, dtype=np.int64)
    dev_ip[segments.device] = segments.ip
    own = np.flatnonzero(~dynamic)
    dyn = np.flatnonzero(dynamic)
    pool_ips, pool_of = np.unique(dev_ip[dyn] // BLOCK_SIZE, return_inverse=True)
    device_profile = np.empty(n_dev, dtype=np.int64)
    device_profile[own] = np.arange(len(own))
    device_profile[dyn] = len(own) + pool_of * pool_types + rng.integers(0, pool_types, len(dyn))
    profile_class = np.concatenate([device_class[own], np.full(len(pool_ips) * pool_types, DYNAMIC, np.int8)])
    return device_profile, profile_class


def _firmware_updates(rng: np.random.Generator, devices: np.ndarray, horizon: int, mean: float) -> np.ndarray:
    """Update times of ``devices`` (a Poisson process each, mean interval ``mean`` seconds) over
    ``[0, horizon)``, as sorted keys ``device << TIME_BITS | t``."""
    count = rng.poisson(horizon / mean, len(devices))
    t = rng.integers(1, max(horizon, 2), int(count.sum()))
    keys = (np.repeat(devices.astype(np.int64), count) << TIME_BITS) | t
    return np.sort(keys)


def _models(kb: KnowledgeBase | Sequence[DeviceModel] | None) -> tuple[DeviceModel, ...]:
    if kb is None:
        from scanflow.knowledge import load_knowledge
        kb = load_knowledge()
    return tuple(kb.devices) if isinstance(kb, KnowledgeBase) else tuple(kb)

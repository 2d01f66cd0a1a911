"""One command's run: vetting, the per-target tallies that become ScanDones, and the :class:`Job` a
backend works through (probe order, filtering, pacing, accounting).

:func:`prepare` vets a decoded command before anything is sent: every target parses and lies
inside the allowlist, ranges are within the size cap, the port set resolves. Any failure refuses the
whole command. Per target, an opt-out that covers it entirely refuses only that target.

:class:`CommandRun` then hands the backend the (address, port) pairs of the remaining targets in
the command's keyed pseudorandom order, skipping excluded addresses (the list is re-checked between
blocks), tracked IPs in sweeps, other shards' addresses and addresses an earlier target already
covers; live probes wait for the agent's packets/s bucket and the per-address politeness cap.
"""

from __future__ import annotations

import asyncio
import heapq
import ipaddress
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator, Callable, Iterator

import numpy as np

from probe_agent.backends import AddressChunk, Job, Probe, ProbeResult, ProbeStatus
from probe_agent.ratelimit import PolitenessCap, TokenBucket
from probe_agent.safety import Allowlist, ExclusionList, Refusal, TrackedIps
from probe_agent.settings import AgentSettings
from probe_agent.targets import ProbeBlock, Target, TargetSpace, derive_key

if TYPE_CHECKING:  # pragma: no cover
    from probe_agent.metrics import AgentMetrics
    from probe_agent.publisher import EventPublisher

#: Probes held back by the politeness cap before the walk waits for the earliest of them.
MAX_DEFERRED = 20_000


class PortSetCatalog:
    """Published port sets (JSON files written by ``PortSet.write``) from a directory, by name and
    version; the directory is re-scanned when a command names a set not loaded yet."""

    def __init__(self, directory: str | Path | None):
        self.directory = Path(directory) if directory else None
        self._sets: dict[tuple[str, int], tuple[int, ...]] = {}
        self._scan()

    def _scan(self) -> None:
        if self.directory is None:
            return
        from scanflow.portsets import PortSet

        for path in sorted(self.directory.glob("*.json")):
            try:
                ps = PortSet.read(path)
            except (ValueError, KeyError, OSError):
                continue
            if ps.name is not None:
                self._sets[(ps.name, ps.version)] = ps.sorted

    def resolve(self, record: dict) -> tuple[int, ...]:
        """The ports of a PortSet record; ``KeyError`` when a named set is not published here."""
        name, version = record.get("name"), record.get("version")
        if name is None:
            return tuple(sorted(set(record.get("ports") or ())))
        if (name, version) not in self._sets:
            self._scan()
        try:
            return self._sets[(name, version)]
        except KeyError:
            where = self.directory or "(agent.portset_dir is not set)"
            raise KeyError(f"port set {name}@v{version} is not published in {where}; a scheduler publishes "
                           "its sets to <infra.state_dir>/portsets when it starts, copy them here or point "
                           "agent.portset_dir at them") from None


@dataclass
class Prepared:
    """A vetted command: its targets, resolved ports and what ScanDone copies from it."""

    command: dict
    targets: list[Target]
    ports: tuple[int, ...]
    sweep: bool
    policy: str

    @property
    def command_id(self) -> str:
        return self.command["command_id"]


def prepare(command: dict, settings: AgentSettings, allowlist: Allowlist,
            catalog: PortSetCatalog) -> Prepared | Refusal:
    """Vet a decoded ScanCommand; a :class:`Refusal` refuses it whole."""
    targets: list[Target] = []
    for text in command.get("targets") or ():
        try:
            targets.append(Target.parse(text))
        except ValueError:
            return Refusal("InvalidIp", f"target {text!r} is not an address or CIDR range")
    if not targets:
        return Refusal("InvalidRecord", "the command has no targets")
    refusal = allowlist.check(targets)
    if refusal:
        return refusal
    for t in targets:
        if t.size > settings.max_range_addresses:
            return Refusal("RangeTooLarge", f"target {t.text} has {t.size} addresses, more than "
                           f"agent.max_range_addresses ({settings.max_range_addresses}); split it")
    try:
        ports = catalog.resolve(command.get("port_set") or {})
    except KeyError as exc:
        return Refusal("UnknownPortSet", str(exc.args[0]))
    if not ports:
        return Refusal("InvalidRecord", "the port set is empty")
    return Prepared(command, targets, ports, command.get("reason") == "SWEEP",
                    command.get("policy") or "UNKNOWN")


@dataclass
class TargetTally:
    """What one target's scan did; becomes its ScanDone."""

    scan_id: str
    target: Target
    command: dict
    policy: str
    started_us: int = 0
    ended_us: int = 0
    packets: int = 0
    bytes: int = 0
    responses: int = 0
    addresses_probed: int = 0
    ports_seen: set[int] = field(default_factory=set)
    status: str = "UNKNOWN"
    detail: str | None = None
    bitmap: bytearray | None = None

    def _bits(self) -> bytearray | None:
        # Allocated on the first probe only: a refused target may be a range of any size.
        if self.bitmap is None and self.target.size > 1:
            self.bitmap = bytearray((self.target.size + 7) // 8)
        return self.bitmap

    def mark(self, offset: int, port: int) -> None:
        """One probe of the address at ``offset`` on ``port``."""
        self.ports_seen.add(port)
        bm = self._bits()
        if bm is None:
            self.addresses_probed = 1
            return
        byte, bit = offset >> 3, 1 << (offset & 7)
        if not bm[byte] & bit:
            bm[byte] |= bit
            self.addresses_probed += 1

    def mark_block(self, offsets: np.ndarray, ports: np.ndarray) -> None:
        """Many probes at once."""
        self.ports_seen.update(np.unique(ports).tolist())
        if self._bits() is None:
            self.addresses_probed = 1 if len(offsets) else self.addresses_probed
            return
        view = np.frombuffer(self.bitmap, dtype=np.uint8)
        u = np.unique(offsets.astype(np.uint64))
        byte = (u >> np.uint64(3)).astype(np.int64)
        bit = (np.uint8(1) << (u & np.uint64(7)).astype(np.uint8)).astype(np.uint8)
        new = (view[byte] & bit) == 0
        self.addresses_probed += int(new.sum())
        np.bitwise_or.at(view, byte[new], bit[new])

    def record(self, agent_id: str) -> dict:
        """The ScanDone record."""
        return {
            "scan_id": self.scan_id, "agent_id": agent_id, "command_id": self.command.get("command_id"),
            "target": self.target.text, "policy": self.policy,
            "started_at": self.started_us, "ended_at": max(self.ended_us, self.started_us),
            "port_set": self.command.get("port_set") or {"name": None, "version": None, "ports": []},
            "ports_probed": len(self.ports_seen), "addresses_probed": self.addresses_probed,
            "packets_sent": self.packets, "bytes_sent": self.bytes, "responses": self.responses,
            "status": self.status, "status_detail": self.detail,
        }


def scan_id_for(command_id: str, target: Target, settings: AgentSettings) -> str:
    """Deterministic scan id (a re-executed command gives the same event ids). A sharded range
    gets one scan per shard; a single address belongs to one shard and keeps the plain id."""
    sid = f"{command_id}/{target.text}"
    if settings.shards > 1 and not target.is_single:
        sid += f"#shard{settings.shard}of{settings.shards}"
    return sid


class CommandRun(Job):
    """The :class:`Job` of one vetted command (see the module docstring)."""

    def __init__(self, prepared: Prepared, settings: AgentSettings, *, bucket: TokenBucket,
                 polite: PolitenessCap, exclusions: ExclusionList, tracked: TrackedIps,
                 publisher: "EventPublisher", metrics: "AgentMetrics", start_us: int,
                 clock: Callable[[], float] = time.monotonic, virtual: bool = False,
                 wall_us: Callable[[], int] = lambda: time.time_ns() // 1000, ipv6: bool = True):
        self.prepared = prepared
        self.settings = settings
        self.bucket, self.polite = bucket, polite
        self.exclusions, self.tracked = exclusions, tracked
        self.publisher, self.metrics = publisher, metrics
        self.clock, self.virtual, self.wall_us = clock, virtual, wall_us
        self._start_us = start_us
        self.end_us: int | None = None
        self.aborted: str | None = None
        self.tallies = [TargetTally(scan_id_for(prepared.command_id, t, settings), t, prepared.command,
                                    prepared.policy) for t in prepared.targets]
        self.active: list[int] = []
        for i, t in enumerate(prepared.targets):
            if exclusions.covers(t):
                self.tallies[i].status = "REFUSED"
                self.tallies[i].detail = exclusions.error or "excluded by the opt-out list"
            elif t.version == 6 and not ipv6:
                self.tallies[i].status = "REFUSED"
                self.tallies[i].detail = f"the {settings.backend} backend does not scan IPv6"
            else:
                self.active.append(i)
        self.space: TargetSpace | None = None
        self._filtered_generation = exclusions.generation
        if self.active:
            key = derive_key(settings.seed, prepared.command_id)
            self.space = TargetSpace([prepared.targets[i] for i in self.active], prepared.ports, key,
                                     shards=settings.shards, shard=settings.shard)
        eligible = sum(prepared.targets[i].size for i in self.active)
        self.rate_pps = min(settings.rate_pps, settings.per_target_pps * max(1, eligible))
        self._networks = [(prepared.targets[i].network, n) for n, i in enumerate(self.active)]

    # -- Job interface ------------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self.aborted is not None

    @property
    def start_us(self) -> int:
        return self._start_us

    def abort(self, reason: str) -> None:
        """Ask the backend to stop; unfinished targets end ABORTED with ``reason``."""
        if self.aborted is None:
            self.aborted = reason

    def tally(self, index: int) -> TargetTally:
        """The tally of active target ``index`` (index into the job's space)."""
        return self.tallies[self.active[index]]

    def excluded_networks(self) -> list[str]:
        self.exclusions.maybe_refresh()
        return self.exclusions.lines()

    def target_of(self, ip: str) -> int | None:
        addr = ipaddress.ip_address(ip)
        for net, index in self._networks:
            if addr in net:
                return index
        return None

    def _filtered(self) -> Iterator[tuple[ProbeBlock, np.ndarray]]:
        """Permuted blocks without excluded addresses, other shards' and (in sweeps) tracked IPs."""
        space = self.space
        if space is None:
            return
        skip_tracked = self.prepared.sweep and self.settings.skip_tracked and len(self.tracked) > 0
        for _, block in space.blocks():
            if self.stopping:
                return
            self.exclusions.maybe_refresh()
            self._filtered_generation = self.exclusions.generation
            self.metrics.exclusions_healthy = int(self.exclusions.healthy)
            if not len(block):
                continue
            absolute = space.absolute_ints(block.target, block.offset)
            keep = np.ones(len(block), dtype=bool)
            versions = np.array([space.targets[i].version for i in block.target], dtype=np.int64)
            v4 = versions == 4
            if v4.any():
                keep[v4] = ~self.exclusions.excluded_v4(absolute[v4])
            for r in np.nonzero(~v4)[0]:
                keep[r] = not self.exclusions.excludes(space.targets[block.target[r]].address(int(block.offset[r])))
            if skip_tracked:
                policy = self.prepared.policy
                for r in np.nonzero(keep)[0]:
                    ip = space.targets[block.target[r]].address(int(block.offset[r]))
                    if self.tracked.is_tracked(ip, policy):
                        keep[r] = False
            if not keep.all():
                block = ProbeBlock(block.target[keep], block.offset[keep], block.port[keep])
                absolute = absolute[keep]
            if len(block):
                yield block, absolute

    def blocks(self) -> Iterator[tuple[ProbeBlock, np.ndarray]]:
        for block, absolute in self._filtered():
            for index in np.unique(block.target).tolist():
                rows = block.target == index
                tally = self.tally(index)
                if not tally.started_us:
                    tally.started_us = self._start_us
                tally.mark_block(block.offset[rows], block.port[rows])
            self.metrics.probes += len(block)
            yield block, absolute

    async def probes(self) -> AsyncIterator[Probe]:
        space = self.space
        if space is None:
            return
        deferred: list[tuple[float, int, Probe, int]] = []
        seq = 0
        for block, _ in self._filtered():
            for r in range(len(block)):
                now = self.clock()
                while deferred and deferred[0][0] <= now:
                    _, _, probe, offset = heapq.heappop(deferred)
                    await self._take_token()
                    if self.stopping:
                        return
                    if self._still_allowed(probe.ip):
                        self._issue(probe, offset)
                        yield probe
                    now = self.clock()
                tgt, offset = int(block.target[r]), int(block.offset[r])
                probe = Probe(space.targets[tgt].address(offset), int(block.port[r]), tgt)
                slot = self.polite.reserve(probe.ip, now)
                if slot > now:
                    heapq.heappush(deferred, (slot, seq, probe, offset))
                    seq += 1
                    if len(deferred) < MAX_DEFERRED:
                        continue
                    # Too many held back (one address, many ports): wait for the earliest.
                    slot, _, probe, offset = heapq.heappop(deferred)
                    await asyncio.sleep(max(0.0, slot - self.clock()))
                await self._take_token()
                if self.stopping:
                    return
                if self._still_allowed(probe.ip):
                    self._issue(probe, offset)
                    yield probe
        while deferred:
            slot, _, probe, offset = heapq.heappop(deferred)
            await asyncio.sleep(max(0.0, slot - self.clock()))
            await self._take_token()
            if self.stopping:
                return
            if self._still_allowed(probe.ip):
                self._issue(probe, offset)
                yield probe

    async def _take_token(self) -> None:
        if not self.virtual:
            await self.bucket.acquire(1)

    def _still_allowed(self, ip: str) -> bool:
        """False when an exclusion added since the block was filtered covers ``ip``."""
        self.exclusions.maybe_refresh()
        if self.exclusions.generation == self._filtered_generation:
            return True
        return not self.exclusions.excludes(ip)

    def _issue(self, probe: Probe, offset: int) -> None:
        tally = self.tally(probe.target)
        if not tally.started_us:
            tally.started_us = self.wall_us()
        tally.mark(offset, probe.port)
        self.metrics.probes += 1

    def address_chunks(self, max_probes: int) -> Iterator[AddressChunk]:
        space = self.space
        if space is None:
            return
        n_ports = len(space.ports)
        per_chunk = max(1, max_probes // n_ports)
        ranges: list[tuple[int, int]] = []
        per_target: dict[int, int] = {}
        count = 0
        skip_tracked = self.prepared.sweep and self.settings.skip_tracked and len(self.tracked) > 0
        for index, target in enumerate(space.targets):
            if target.version != 4:
                continue
            for lo in range(0, target.size, 65536):
                if self.stopping:
                    return
                self.exclusions.maybe_refresh()
                offsets = np.arange(lo, min(target.size, lo + 65536), dtype=np.uint64)
                tgt = np.full(len(offsets), index, dtype=np.int64)
                keep = space._keep(tgt, offsets)
                absolute = offsets + np.uint64(target.base)
                keep &= ~self.exclusions.excluded_v4(absolute)
                if skip_tracked:
                    for r in np.nonzero(keep)[0]:
                        if self.tracked.is_tracked(target.address(int(offsets[r])), self.prepared.policy):
                            keep[r] = False
                kept = absolute[keep]
                while len(kept):
                    take = kept[:per_chunk - count]
                    kept = kept[len(take):]
                    tally = self.tally(index)
                    if not tally.started_us:
                        tally.started_us = self.wall_us()
                    tally.mark_block(take - np.uint64(target.base), np.asarray(space.ports))
                    ranges.extend(_runs(take))
                    per_target[index] = per_target.get(index, 0) + len(take)
                    self.metrics.probes += len(take) * n_ports
                    count += len(take)
                    if count >= per_chunk:
                        yield AddressChunk(ranges, per_target, space.ports.tolist())
                        ranges, per_target, count = [], {}, 0
        if count:
            yield AddressChunk(ranges, per_target, space.ports.tolist())

    async def pace(self, ip: str) -> bool:
        if self.virtual:
            return True
        slot = self.polite.reserve(ip)
        delay = slot - self.clock()
        if delay > 0:
            await asyncio.sleep(delay)
        await self.bucket.acquire(1)
        self.exclusions.maybe_refresh()
        return not self.stopping and not self.exclusions.excludes(ip)

    def report(self, result: ProbeResult) -> None:
        index = result.target if result.target is not None else self.target_of(result.ip)
        if index is None:
            self.metrics.errors["result-outside-targets"] += 1
            return
        tally = self.tally(index)
        tally.packets += result.packets
        tally.bytes += result.bytes
        m = self.metrics
        m.packets += result.packets
        m.bytes += result.bytes
        m.statuses[result.status.value] += 1
        if result.status is ProbeStatus.ERROR:
            m.errors[(result.error or "error").split(":")[0][:40]] += 1
        if result.packets > 1 and not self.virtual:
            self.bucket.charge(result.packets - 1)
        if result.kind:
            self.publisher.event(tally.scan_id, result)
            tally.responses += 1
            m.responses[result.kind] += 1
            m.events_published += 1

    def account(self, target: int, packets: int, nbytes: int) -> None:
        tally = self.tally(target)
        tally.packets += packets
        tally.bytes += nbytes
        self.metrics.packets += packets
        self.metrics.bytes += nbytes

    def finish(self) -> list[TargetTally]:
        """Close every active tally (COMPLETE, or ABORTED when stopped early) and return all."""
        end = self.end_us if self.end_us is not None else self.wall_us()
        for i in self.active:
            tally = self.tallies[i]
            tally.ended_us = end
            if not tally.started_us:
                tally.started_us = self._start_us if self.virtual else end
            if self.aborted is not None:
                tally.status, tally.detail = "ABORTED", self.aborted
            else:
                tally.status = "COMPLETE"
        for tally in self.tallies:
            if tally.status == "REFUSED":
                tally.started_us = tally.ended_us = self._start_us
        return self.tallies


def _runs(values: np.ndarray) -> list[tuple[int, int]]:
    """Sorted integers as inclusive (first, last) runs of consecutive values."""
    if not len(values):
        return []
    v = np.sort(values.astype(np.int64))
    breaks = np.nonzero(np.diff(v) != 1)[0]
    starts = np.concatenate(([v[0]], v[breaks + 1]))
    ends = np.concatenate((v[breaks], [v[-1]]))
    return list(zip(starts.tolist(), ends.tolist()))

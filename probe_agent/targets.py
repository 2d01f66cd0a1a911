"""Targets and the pseudorandom order in which their (address, port) pairs are probed.

A command's probe space is every (address, port) pair of its targets, numbered ``0 .. n-1``
(address-major). :class:`KeyedPermutation` walks that space in a keyed pseudorandom order, so
consecutive probes land on unrelated addresses and no network sees a burst (like ZMap's cyclic group
and Masscan's BlackRock cipher). The order is a pure function of the key: the same seed and command
give the same order on every run and every machine.

The permutation is a balanced Feistel network over the smallest even number of bits that covers
``n``, with cycle walking for values ``>= n``; it is evaluated on numpy arrays, a block of indices at
a time, so walking ``2**32`` pairs costs about as much as the probes' own bookkeeping.

Sharding (``--shards N --shard I``) splits the space by address: an address belongs to exactly one
shard (keyed hash of the address), so one IP's ports are always probed by one agent and the shards
are disjoint and together complete.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)
ROUNDS = 6

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def derive_key(seed: int, *parts: str) -> bytes:
    """A 32-byte key from the agent's seed and identifying text (e.g. a command id)."""
    material = "\x1f".join((str(seed), *parts)).encode()
    return hashlib.blake2b(material, digest_size=32, person=b"scanflow-order").digest()


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a fast, well-spread bijection of uint64 (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * _M2
    x = (x ^ (x >> np.uint64(27))) * _M3
    return x ^ (x >> np.uint64(31))


class KeyedPermutation:
    """A keyed pseudorandom permutation of ``range(n)``.

    ``perm[i]`` for a scalar, :meth:`block` for ``perm[start:stop]`` as a numpy array. Not a
    cryptographic cipher: it hides no secret, it spreads probes.
    """

    def __init__(self, n: int, key: bytes):
        if n < 1:
            raise ValueError("a permutation needs n >= 1")
        if n > 1 << 64:
            raise ValueError("a permutation domain is at most 2**64")
        self.n = n
        bits = max(2, (n - 1).bit_length())
        self.half = (bits + 1) // 2
        self._mask = np.uint64((1 << self.half) - 1)
        self._shift = np.uint64(self.half)
        words = np.frombuffer(hashlib.blake2b(key, digest_size=8 * ROUNDS).digest(), dtype="<u8")
        self._keys = [np.uint64(w) for w in words]

    def _feistel(self, x: np.ndarray) -> np.ndarray:
        left = x >> self._shift
        right = x & self._mask
        with np.errstate(over="ignore"):
            for k in self._keys:
                left, right = right, left ^ (_mix((right * _M1) ^ k) & self._mask)
        return (left << self._shift) | right

    def block(self, start: int, stop: int) -> np.ndarray:
        """``[perm[i] for i in range(start, stop)]`` as uint64 (``0 <= start <= stop <= n``)."""
        if not 0 <= start <= stop <= self.n:
            raise IndexError(f"block {start}..{stop} is outside 0..{self.n}")
        out = self._feistel(np.arange(start, stop, dtype=np.uint64))
        n = np.uint64(self.n) if self.n < 1 << 64 else None
        if n is None:
            return out
        # Cycle walking: the Feistel domain is at most 4n, so each value needs < 4 steps on average,
        # and every cycle through a value < n comes back below n.
        bad = out >= n
        while bad.any():
            out[bad] = self._feistel(out[bad])
            bad = out >= n
        return out

    def __getitem__(self, i: int) -> int:
        return int(self.block(i, i + 1)[0])


def shard_of(values: np.ndarray, key: bytes, shards: int) -> np.ndarray:
    """The shard (``0 .. shards-1``) of each address (given as uint64 integers or offsets)."""
    if shards == 1:
        return np.zeros(len(values), dtype=np.int64)
    k = np.uint64(int.from_bytes(hashlib.blake2b(key, digest_size=8, person=b"scanflow-shard").digest(),
                                 "little"))
    with np.errstate(over="ignore"):
        mixed = _mix(values.astype(np.uint64) ^ k)
    return (mixed % np.uint64(shards)).astype(np.int64)


@dataclass(frozen=True)
class Target:
    """One target of a command: an address (``/32``, ``/128``) or a CIDR range, canonical text."""

    text: str
    network: Network

    @classmethod
    def parse(cls, text: str) -> "Target":
        """Parse an address or a CIDR range (host bits zero); ``ValueError`` otherwise."""
        net = ipaddress.ip_network(text.strip(), strict=True)
        canon = str(net.network_address) if net.num_addresses == 1 else str(net)
        return cls(canon, net)

    @property
    def size(self) -> int:
        """Number of addresses (ranges include their network and broadcast addresses, as Masscan)."""
        return self.network.num_addresses

    @property
    def base(self) -> int:
        """The first address as an integer."""
        return int(self.network.network_address)

    @property
    def version(self) -> int:
        """4 or 6."""
        return self.network.version

    @property
    def is_single(self) -> bool:
        """True for one address."""
        return self.size == 1

    def address(self, offset: int) -> str:
        """Canonical text of the address at ``offset`` in the range."""
        return str(ipaddress.ip_address(self.base + offset)) if self.version == 6 else \
            _ipv4_text(self.base + offset)


#: How the targets of ``scanflow agent --scan`` may be written (the error messages quote it).
TARGET_FORMS = "an address (198.18.7.10), a CIDR range with zero host bits (198.18.7.0/24) or a " \
               "first-last range (198.18.7.10-198.18.7.14)"


def parse_target_spec(text: str) -> list[Target]:
    """Targets a person wrote: an address, a CIDR range or a ``first-last`` address range.

    A ``first-last`` range becomes the fewest CIDR targets that cover exactly its addresses (each is
    then vetted by the agent like any target: allowlist, size cap, exclusions). ``ValueError`` with a
    one-line message that names the fix (for a range with host bits set, the network it belongs to).
    Commands on Kafka carry canonical targets only (see :meth:`Target.parse`); this is for the CLI.
    """
    raw = text.strip()
    if not raw:
        raise ValueError(f"{text!r} is empty; write {TARGET_FORMS}")
    first, dash, last = raw.partition("-")
    if dash and "/" not in raw:
        try:
            lo, hi = ipaddress.ip_address(first.strip()), ipaddress.ip_address(last.strip())
        except ValueError:
            raise ValueError(f"{raw!r} is not a first-last range of two addresses; write e.g. "
                             "198.18.7.10-198.18.7.14 (both ends in full)") from None
        if lo.version != hi.version:
            raise ValueError(f"{raw!r} mixes IPv4 and IPv6; give both ends in the same family")
        if hi < lo:
            raise ValueError(f"{raw!r} ends before it starts; write the lower address first")
        return [Target(str(n.network_address) if n.num_addresses == 1 else str(n), n)
                for n in ipaddress.summarize_address_range(lo, hi)]
    try:
        return [Target.parse(raw)]
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(raw, strict=False)
    except ValueError:
        raise ValueError(f"{raw!r} is not {TARGET_FORMS}") from None
    # Host bits set: name the network the address belongs to and the range the user may have meant.
    addr = raw.split("/", 1)[0]
    raise ValueError(f"{raw!r} has host bits set: {addr} is inside {loose}; write {loose} to scan that "
                     f"whole range, or {addr}-{loose.broadcast_address} for the part from {addr} on")


def _ipv4_text(value: int) -> str:
    return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"


@dataclass
class ProbeBlock:
    """A block of probes in permuted order: target index, address offset in that target, port."""

    target: np.ndarray
    offset: np.ndarray
    port: np.ndarray

    def __len__(self) -> int:
        return len(self.port)


class TargetSpace:
    """The (address, port) space of one command's targets, walked in a keyed order.

    An address covered by several targets of the same command belongs to the first of them only, so
    it is probed once. With ``shards > 1`` only this shard's addresses are yielded.
    """

    def __init__(self, targets: Sequence[Target], ports: Sequence[int], key: bytes, *,
                 shards: int = 1, shard: int = 0):
        if not targets or not ports:
            raise ValueError("a target space needs at least one target and one port")
        self.targets = list(targets)
        self.ports = np.asarray(sorted(set(int(p) for p in ports)), dtype=np.int64)
        self.key = key
        self.shards, self.shard = shards, shard
        sizes = [t.size for t in self.targets]
        self.starts = np.cumsum([0] + sizes[:-1]).astype(np.uint64)
        self.n_addresses = sum(sizes)
        self.n = self.n_addresses * len(self.ports)
        self.permutation = KeyedPermutation(self.n, key)
        # Earlier targets that overlap each target: their addresses are skipped in the later one.
        self._shadowed_by = [[j for j in range(i) if self.targets[j].version == t.version
                              and self.targets[j].network.overlaps(t.network)]
                             for i, t in enumerate(self.targets)]

    def blocks(self, start: int = 0, block_size: int = 4096) -> Iterator[tuple[int, ProbeBlock]]:
        """Yield ``(next_index, block)`` from permutation index ``start`` on; ``next_index`` resumes."""
        n_ports = np.uint64(len(self.ports))
        i = start
        while i < self.n:
            j = min(self.n, i + block_size)
            values = self.permutation.block(i, j)
            addr_index = values // n_ports
            port_index = (values % n_ports).astype(np.int64)
            tgt = np.searchsorted(self.starts, addr_index, side="right").astype(np.int64) - 1
            offset = addr_index - self.starts[tgt]
            keep = self._keep(tgt, offset)
            block = ProbeBlock(tgt[keep], offset[keep], self.ports[port_index[keep]])
            yield j, block
            i = j

    def _keep(self, tgt: np.ndarray, offset: np.ndarray) -> np.ndarray:
        keep = np.ones(len(tgt), dtype=bool)
        for i, earlier in enumerate(self._shadowed_by):
            if not earlier:
                continue
            rows = np.nonzero(tgt == i)[0]
            if not len(rows):
                continue
            t = self.targets[i]
            for j in earlier:
                other = self.targets[j].network
                lo = int(other.network_address) - t.base
                hi = lo + other.num_addresses
                off = offset[rows].astype(object) if t.version == 6 else offset[rows].astype(np.int64)
                inside = (off >= lo) & (off < hi)
                keep[rows[np.asarray(inside, dtype=bool)]] = False
        if self.shards > 1:
            absolute = self.absolute_ints(tgt, offset)
            keep &= shard_of(absolute, self.key, self.shards) == self.shard
        return keep

    def absolute_ints(self, tgt: np.ndarray, offset: np.ndarray) -> np.ndarray:
        """Addresses as uint64 (IPv4: the address; IPv6: its low 64 bits, enough to hash and test)."""
        bases = np.array([t.base & 0xFFFFFFFFFFFFFFFF for t in self.targets], dtype=np.uint64)
        with np.errstate(over="ignore"):
            return bases[tgt] + offset.astype(np.uint64)

    def owned_count(self, target_index: int) -> int:
        """Addresses of one target this shard owns, not shadowed by an earlier target (exact for
        single addresses and IPv4 ranges up to 2**24; the caller bounds range sizes)."""
        t = self.targets[target_index]
        offsets = np.arange(t.size, dtype=np.uint64)
        return int(self._keep(np.full(t.size, target_index, dtype=np.int64), offsets).sum())

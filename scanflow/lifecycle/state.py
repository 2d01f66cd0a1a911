"""The scheduler's per-IP state and its compact binary form (target: <= 300 bytes per tracked IP).

:class:`Tracked` wraps the policy core's :class:`~scanflow.policy.IpState` with what the pipeline adds:
the next scan time and its reason, whether its command was issued, when the IP was last decided and
last written, and the hashes of its last scan ids (to drop a round delivered twice).

:func:`pack` / :func:`unpack` give the bytes kept in Beam state and in the ``scanflow.ip-state``
record header that lets a restarted pipeline restore the exact state. Layout (version 1)::

    u8 version | u8 status(2) reason(3) issued(1) | u8 presence bits | varint step, silent_rounds, scans
    [f64 confidence, varint len + utf-8 device]        when a device is estimated
    f64 decided_at, f64 updated_at, f64 each present time (first/last seen, last scanned/changed, next)
    varint n + delta-varint open ports | varint n + (delta-varint port, u8 len, digest bytes) per banner
    probed ref: 8-byte hash of a ref the policy knows, or varint len + utf-8
    [varint n + delta-varint recall ports]              when a recall is on (presence bit 7)
    u8 n + 8-byte scan-id hashes

Version 2 (written only for states of the adaptive policy, whose extra fields are set) adds one byte
after the presence bits (probe kind in bits 0-2, bit 3 a follow-up time, bit 4 a full-probe time) and
those times after the others. Version 1 bytes still unpack.

Times stay float64 so a restored state is bit-identical (replays compare decisions exactly).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, replace
from typing import Iterable

from scanflow.policy import IpState, IpStatus, Reason
from scanflow.portsets import PortSet

VERSION = 2
#: Kafka header on ``scanflow.ip-state`` records carrying :func:`pack` bytes (or a tombstone mark).
STATE_HEADER = "scanflow.scheduler.state"

_STATUS = (IpStatus.NON_RESPONSIVE, IpStatus.RESPONSIVE_ESTIMATED, IpStatus.RESPONSIVE_UNESTIMATED)
_STATUS_CODE = {s: i for i, s in enumerate(_STATUS)}
_REASON = (Reason.INITIAL, Reason.BACKOFF, Reason.CHANGED, Reason.NEW_RESPONDER, Reason.SWEEP, Reason.URGENT)
_REASON_CODE = {r: i for i, r in enumerate(_REASON)}
_F64 = struct.Struct("<d")
_TOMBSTONE = b"\x00T"
_TIMES = ("first_seen", "last_seen", "last_scanned", "last_changed")


def short_hash(text: str) -> bytes:
    """8 bytes of BLAKE2b: stable across processes, unlike ``hash()``."""
    return hashlib.blake2b(text.encode(), digest_size=8).digest()


@dataclass(frozen=True, slots=True)
class Tracked:
    """One tracked (responsive) IP: the policy's state plus the pipeline's scheduling facts.

    ``next_at``: the next scan (seconds); ``issued``: its command has been sent; ``decided_at``: the
    ``now`` of the last decision (rounds that ended before it are late and ignored);
    ``updated_at``: the last time this state changed (decision or command issued); ``recent``: the
    8-byte hashes of the last scan ids applied, newest first.
    """

    state: IpState
    next_at: float
    reason: Reason
    issued: bool
    decided_at: float
    updated_at: float
    recent: tuple[bytes, ...] = ()

    def seen(self, scan_id: str) -> bool:
        """True when the round ``scan_id`` was applied already."""
        return short_hash(scan_id) in self.recent

    def with_(self, **changes) -> "Tracked":
        """A copy with ``changes``."""
        return replace(self, **changes)


class RefTable:
    """Port sets the policy knows, by the 8-byte hash of their ref, so state stores 8 bytes instead of
    the ref text, and a ref can be turned back into its set (for the ``IpState`` record)."""

    def __init__(self, port_sets: Iterable[PortSet]):
        self._by_hash = {short_hash(ps.ref): ps for ps in port_sets}

    @classmethod
    def of_policy(cls, policy) -> "RefTable":
        """Every port set :class:`~scanflow.policy.EfficientPolicy` can probe with."""
        if hasattr(policy, "published"):
            return cls([*policy.published(), *policy.estimator.port_sets()])
        sets = policy.port_sets
        return cls([sets.standard, sets.silent, sets.unknown, *policy.estimator.port_sets()])

    def lookup(self, digest: bytes) -> str | None:
        """The ref whose hash is ``digest``; None if unknown."""
        ps = self._by_hash.get(digest)
        return ps.ref if ps is not None else None

    def knows(self, ref: str) -> bool:
        """True for a ref of a set this policy has."""
        return short_hash(ref) in self._by_hash

    def port_set(self, ref: str | None) -> PortSet | None:
        """The set a ref names; None if unknown."""
        return self._by_hash.get(short_hash(ref)) if ref is not None else None


def _varint(out: bytearray, value: int) -> None:
    if value < 0:
        raise ValueError(f"varint of a negative number {value}")
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _text(out: bytearray, text: str) -> None:
    raw = text.encode()
    _varint(out, len(raw))
    out += raw


def _ports(out: bytearray, ports) -> None:
    prev = 0
    ports = sorted(ports)
    _varint(out, len(ports))
    for port in ports:
        _varint(out, port - prev)
        prev = port


def _read_ports(data: bytes, pos: int) -> tuple[list[int], int]:
    n, pos = _read_varint(data, pos)
    ports, port = [], 0
    for _ in range(n):
        delta, pos = _read_varint(data, pos)
        port += delta
        ports.append(port)
    return ports, pos


def pack(t: Tracked, refs: RefTable) -> bytes:
    """The compact bytes of ``t`` (see the module docstring for the layout)."""
    s = t.state
    version = 2 if (s.probe or s.followup_at is not None or s.full_at is not None) else 1
    out = bytearray((version, _STATUS_CODE[s.status] | _REASON_CODE[t.reason] << 2 | int(t.issued) << 5))
    presence = 0
    for i, name in enumerate(_TIMES):
        if getattr(s, name) is not None:
            presence |= 1 << i
    if s.device is not None:
        presence |= 1 << 4
    if s.probed is not None:
        presence |= (1 << 5) if refs.knows(s.probed) else (1 << 6)
    if s.recall:
        presence |= 1 << 7
    out.append(presence)
    if version == 2:   # the adaptive policy's fields: probe kind, follow-up and full-probe times
        out.append(s.probe | (s.followup_at is not None) << 3 | (s.full_at is not None) << 4)
    _varint(out, s.step)
    _varint(out, s.silent_rounds)
    _varint(out, s.scans)
    if s.device is not None:
        out += _F64.pack(s.confidence)
        _text(out, s.device)
    out += _F64.pack(t.decided_at) + _F64.pack(t.updated_at) + _F64.pack(t.next_at)
    for name in _TIMES:
        value = getattr(s, name)
        if value is not None:
            out += _F64.pack(value)
    if version == 2:
        for value in (s.followup_at, s.full_at):
            if value is not None:
                out += _F64.pack(value)
    _ports(out, s.open_ports)
    prev = 0
    _varint(out, len(s.digests))
    for port, digest in s.digests:  # the core keeps digests sorted by port
        raw = bytes.fromhex(digest)
        _varint(out, port - prev)
        prev = port
        out.append(len(raw))
        out += raw
    if s.probed is not None:
        if refs.knows(s.probed):
            out += short_hash(s.probed)
        else:
            _text(out, s.probed)
    if s.recall:
        _ports(out, s.recall)
    out.append(len(t.recent))
    for h in t.recent:
        out += h
    return bytes(out)


def unpack(data: bytes, refs: RefTable) -> Tracked:
    """Inverse of :func:`pack`; ``ValueError`` for bytes of another version or damaged bytes."""
    try:
        return _unpack(data, refs)
    except (IndexError, struct.error, UnicodeDecodeError, KeyError) as exc:
        raise ValueError(f"scheduler state of {len(data)} bytes does not unpack: {exc!r}") from None


def _unpack(data: bytes, refs: RefTable) -> Tracked:
    if not data or data[0] not in (1, VERSION):
        raise ValueError(f"scheduler state version {data[:1].hex() or 'none'} is not 1 or {VERSION}")
    codes, presence = data[1], data[2]
    status, reason, issued = _STATUS[codes & 3], _REASON[(codes >> 2) & 7], bool(codes >> 5 & 1)
    pos = 3
    extra = 0
    if data[0] == 2:
        extra, pos = data[3], 4
    step, pos = _read_varint(data, pos)
    silent_rounds, pos = _read_varint(data, pos)
    scans, pos = _read_varint(data, pos)
    device, confidence = None, 0.0
    if presence & 1 << 4:
        (confidence,) = _F64.unpack_from(data, pos)
        n, pos = _read_varint(data, pos + 8)
        device, pos = data[pos:pos + n].decode(), pos + n
    decided_at, updated_at, next_at = struct.unpack_from("<ddd", data, pos)
    pos += 24
    times = {}
    for i, name in enumerate(_TIMES):
        if presence & 1 << i:
            (times[name],) = _F64.unpack_from(data, pos)
            pos += 8
        else:
            times[name] = None
    adaptive: dict = {"probe": extra & 7, "followup_at": None, "full_at": None}
    for bit, name in ((3, "followup_at"), (4, "full_at")):
        if extra & 1 << bit:
            (adaptive[name],) = _F64.unpack_from(data, pos)
            pos += 8
    ports, pos = _read_ports(data, pos)
    n, pos = _read_varint(data, pos)
    digests, port = [], 0
    for _ in range(n):
        delta, pos = _read_varint(data, pos)
        port += delta
        size = data[pos]
        digests.append((port, data[pos + 1:pos + 1 + size].hex()))
        pos += 1 + size
    probed = None
    if presence & 1 << 5:
        probed = refs.lookup(data[pos:pos + 8])
        pos += 8
        if probed is None:
            raise ValueError("state names a port set this policy does not know")
    elif presence & 1 << 6:
        n, pos = _read_varint(data, pos)
        probed, pos = data[pos:pos + n].decode(), pos + n
    recall: list[int] = []
    if presence & 1 << 7:
        recall, pos = _read_ports(data, pos)
    count = data[pos]
    pos += 1
    recent = tuple(data[pos + 8 * i:pos + 8 * i + 8] for i in range(count))
    if pos + 8 * count != len(data):
        raise ValueError(f"scheduler state has {len(data) - pos - 8 * count} trailing bytes")
    state = IpState(status, step, frozenset(ports), tuple(digests), device, confidence, probed, silent_rounds,
                    scans, times["first_seen"], times["last_seen"], times["last_scanned"], times["last_changed"],
                    frozenset(recall), adaptive["probe"], adaptive["followup_at"], adaptive["full_at"])
    return Tracked(state, next_at, reason, issued, decided_at, updated_at, recent)


def pack_header(t: Tracked | None, updated_at: float, refs: RefTable) -> bytes:
    """Header value for an ``ip-state`` record: the packed state, or a tombstone mark with its time."""
    return pack(t, refs) if t is not None else _TOMBSTONE + _F64.pack(updated_at)


def is_tombstone(data: bytes) -> bool:
    """True for :func:`pack_header` bytes of a tombstone (no state, only its time)."""
    return data[:2] == _TOMBSTONE and len(data) == 10


def unpack_header(data: bytes, refs: RefTable) -> tuple[Tracked | None, float]:
    """``(state or None for a tombstone, updated_at)`` from :func:`pack_header` bytes."""
    if data[:2] == _TOMBSTONE and len(data) == 10:
        return None, _F64.unpack_from(data, 2)[0]
    t = unpack(data, refs)
    return t, t.updated_at

"""Avro single-object encoding of scanflow records, with validation of the contract's invariants.

Wire format (Avro spec, "Single-object encoding")::

    C3 01 | CRC-64-AVRO fingerprint of the writer schema (8 bytes, little-endian) | Avro binary body

The fingerprint names the exact writer schema, looked up in the :class:`SchemaRegistry` of every
version in ``schemas/``; the body is then resolved to the *latest* version of that record, so a reader
always sees the newest shape with defaults filled in for fields an older writer did not have.

Records are plain dicts. Timestamps (``timestamp-micros``) are ``int`` microseconds since the Unix
epoch on decode; on encode an ``int`` or an aware ``datetime`` is accepted. Every decode validates
what Avro cannot express (addresses parse, ports are 1..65535, banners within the cap, port sets
well-formed) and raises a :class:`CodecError` subclass whose ``error_class`` is the dead-letter reason.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import ipaddress
import socket
from collections.abc import Callable, Collection, Mapping
from typing import Any, NamedTuple

import fastavro
from fastavro.read import SchemaResolutionError

from connectors.schema_registry import SchemaRegistry, SchemaVersion, default_registry

#: The two marker bytes of single-object encoding.
MARKER = b"\xc3\x01"
#: Marker + fingerprint.
HEADER_SIZE = 10
#: Longest banner kept in a record; agents cut longer ones and set ``banner_truncated``.
BANNER_CAP = 4096
#: Most ports a port set may carry inline; larger sets are published and referenced by name+version.
INLINE_PORTS_CAP = 64


class CodecError(ValueError):
    """A record cannot be encoded or decoded; ``error_class`` names the reason for dead-letter headers."""

    error_class = "CodecError"


class MalformedRecord(CodecError):
    """Not single-object encoded (short, wrong marker) or the body does not decode (truncated, trailing bytes)."""

    error_class = "MalformedRecord"


class UnknownFingerprint(CodecError):
    """The writer schema's fingerprint is not any version in the registry."""

    error_class = "UnknownFingerprint"


class UnresolvableSchema(CodecError):
    """The writer schema is known but cannot be resolved to a schema this reader accepts."""

    error_class = "UnresolvableSchema"


class InvalidRecord(CodecError):
    """The record decodes but breaks the contract (missing id, oversized banner, bad port set, ...)."""

    error_class = "InvalidRecord"


class InvalidIp(InvalidRecord):
    """An address or CIDR range field does not parse."""

    error_class = "InvalidIp"


class InvalidPort(InvalidRecord):
    """A port is outside 1..65535."""

    error_class = "InvalidPort"


class Decoded(NamedTuple):
    """A decoded record: the short schema name (``ScanEvent``, ...) and the record as a dict."""

    schema: str
    record: dict[str, Any]


def canonical_ip(value: Any) -> str:
    """The canonical text form of an IPv4 or IPv6 address, or :class:`InvalidIp`."""
    if not isinstance(value, str) or not value:
        raise InvalidIp(f"address {value!r} is not a non-empty string")
    try:
        # Fast path for the common case (a canonical dotted quad): inet_pton is ~10x cheaper than
        # ipaddress and, like it, rejects leading zeros and short forms.
        return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, value))
    except (OSError, ValueError):
        pass
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise InvalidIp(f"{value!r} is not an IPv4 or IPv6 address") from None


def canonical_target(value: Any) -> str:
    """Canonical text of an address or a CIDR range (host bits must be zero), or :class:`InvalidIp`."""
    if isinstance(value, str) and "/" in value:
        try:
            return str(ipaddress.ip_network(value, strict=True))
        except ValueError:
            raise InvalidIp(f"{value!r} is not a CIDR range (network address/prefix length)") from None
    return canonical_ip(value)


def check_port(port: Any, field: str = "port") -> None:
    """:class:`InvalidPort` unless ``port`` is an int in 1..65535."""
    if type(port) is not int or not 0 < port < 65536:
        raise InvalidPort(f"{field} {port!r} is outside 1..65535")


def make_event_id(scan_id: str, ip: str, port: int, transport: str, kind: str) -> str:
    """Deterministic ScanEvent id: the same response of the same scan always gets the same id.

    BLAKE2b-128 of the identifying fields, hex; stable across processes and languages (unlike
    Python's ``hash()``), so a resent event deduplicates in idempotent sinks.
    """
    material = "\x1f".join((scan_id, canonical_ip(ip), str(port), transport, kind)).encode()
    return hashlib.blake2b(material, digest_size=16).hexdigest()


class AvroCodec:
    """Encode and decode scanflow records with single-object encoding against a schema registry.

    ``validate=False`` skips the contract checks (for replaying archived data known to be clean);
    decoding still checks the framing and the schema.
    """

    def __init__(self, registry: SchemaRegistry | None = None, *, validate: bool = True):
        self.registry = registry if registry is not None else default_registry()
        self.validate = validate
        # fingerprint -> (writer version, raw writer schema, raw reader schema or None when identical)
        self._readers: dict[bytes, tuple[SchemaVersion, dict, dict | None]] = {}
        for name in self.registry.names():
            latest = self.registry.latest(name)
            for sv in self.registry.versions(name):
                reader = None if sv.fingerprint == latest.fingerprint else latest.raw
                if sv.fingerprint not in self._readers or reader is None:
                    self._readers[sv.fingerprint] = (sv, sv.raw, reader)

    def __reduce__(self):
        # The lookup table is derived data: rebuild it on unpickling instead of shipping it.
        return (AvroCodec, (self.registry,), {"validate": self.validate})

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.validate = state["validate"]

    def encode(self, name: str, record: Mapping[str, Any], version: int | None = None) -> bytes:
        """Single-object bytes of ``record`` written with schema ``name`` (latest version by default).

        Validates first (when enabled), normalising addresses to canonical text; raises
        :class:`InvalidRecord` (or a subclass) on a contract violation and :class:`CodecError` when the
        dict does not fit the schema.
        """
        sv = self.registry.latest(name) if version is None else self.registry.get(name, version)
        if self.validate:
            record = validate_record(name, record)
        buf = io.BytesIO()
        buf.write(MARKER)
        buf.write(sv.fingerprint)
        try:
            fastavro.schemaless_writer(buf, sv.parsed, record)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise CodecError(f"{name} record does not fit schema v{sv.version}: {exc}") from None
        return buf.getvalue()

    def decode(self, data: bytes | bytearray | memoryview | None,
               expect: Collection[str] | None = None) -> Decoded:
        """Decode single-object bytes into :class:`Decoded` (resolved to the latest schema version).

        ``expect`` limits the accepted record names (e.g. ``{"ScanEvent", "ScanDone"}`` on the events
        topic); a known record of another name raises :class:`UnresolvableSchema`.
        """
        if data is None or len(data) < HEADER_SIZE + 1 or data[:2] != MARKER:
            raise MalformedRecord("not single-object encoded (expected C3 01 + 8-byte fingerprint + body; "
                                  f"got {len(data) if data is not None else 'no'} bytes)")
        entry = self._readers.get(bytes(data[2:HEADER_SIZE]))
        if entry is None:
            raise UnknownFingerprint(f"writer schema fingerprint {bytes(data[2:HEADER_SIZE]).hex()} "
                                     "is not in the schema registry")
        sv, writer, reader = entry
        if expect is not None and sv.name not in expect:
            raise UnresolvableSchema(f"{sv.name} v{sv.version} is not one of the schemas read here "
                                     f"({', '.join(sorted(expect))})")
        body = io.BytesIO(data)
        body.seek(HEADER_SIZE)
        try:
            record = fastavro.schemaless_reader(body, writer, reader)
        except SchemaResolutionError as exc:
            raise UnresolvableSchema(f"{sv.name} v{sv.version} cannot be read as the latest version: "
                                     f"{exc}") from None
        except (EOFError, StopIteration, ValueError, IndexError, KeyError, TypeError,
                OverflowError, MemoryError) as exc:
            # UnicodeDecodeError is a ValueError; MemoryError comes from absurd length prefixes.
            raise MalformedRecord(f"{sv.name} v{sv.version} body does not decode: "
                                  f"{type(exc).__name__}: {exc}") from None
        if body.tell() != len(data):
            raise MalformedRecord(f"{sv.name} v{sv.version} body has {len(data) - body.tell()} "
                                  "trailing bytes")
        if self.validate:
            record = validate_record(sv.name, record)
        return Decoded(sv.name, record)

    def decode_as(self, name: str, data: bytes) -> dict[str, Any]:
        """Decode bytes that must hold a ``name`` record; returns the record dict."""
        return self.decode(data, expect=(name,)).record

    def fingerprint(self, name: str, version: int | None = None) -> bytes:
        """The 8-byte wire fingerprint of a schema version (latest by default)."""
        sv = self.registry.latest(name) if version is None else self.registry.get(name, version)
        return sv.fingerprint


# ---------------------------------------------------------------------------------------------------
# Contract checks Avro cannot express. Each returns the record, copied only when normalised.

def _check_ids(record: Mapping[str, Any], *fields: str) -> None:
    for f in fields:
        if not record.get(f):
            raise InvalidRecord(f"{f} is empty")


def _with_ip(record: Mapping[str, Any], field: str = "ip") -> Mapping[str, Any]:
    value = record.get(field)
    canon = canonical_ip(value)
    return record if canon == value else {**record, field: canon}


def _check_port_set(port_set: Mapping[str, Any] | None, field: str, *, required: bool) -> None:
    if port_set is None:
        if required:
            raise InvalidRecord(f"{field} is missing")
        return
    name, version, ports = port_set.get("name"), port_set.get("version"), port_set.get("ports") or []
    if name is not None or version is not None:
        if not name or version is None or ports:
            raise InvalidRecord(f"{field}: a named port set needs a name and a version and no inline "
                                f"ports (got name={name!r}, version={version!r}, {len(ports)} ports)")
        return
    if len(ports) > INLINE_PORTS_CAP:
        raise InvalidRecord(f"{field}: {len(ports)} inline ports (at most {INLINE_PORTS_CAP}); "
                            "publish the set and reference it by name and version")
    if required and not ports:
        raise InvalidRecord(f"{field} is empty: give a name and version, or inline ports")
    for port in ports:
        check_port(port, f"{field} port")


def _check_banner(banner: Any, field: str = "banner") -> None:
    if banner is not None and len(banner) > BANNER_CAP:
        raise InvalidRecord(f"{field} has {len(banner)} bytes (at most {BANNER_CAP}); cut it and set "
                            "banner_truncated")


def _validate_scan_event(r: Mapping[str, Any]) -> Mapping[str, Any]:
    _check_ids(r, "event_id", "scan_id")
    check_port(r.get("port"))
    _check_banner(r.get("banner"))
    return _with_ip(r)


def _validate_scan_done(r: Mapping[str, Any]) -> Mapping[str, Any]:
    _check_ids(r, "scan_id")
    _check_port_set(r.get("port_set"), "port_set", required=False)
    for f in ("ports_probed", "addresses_probed", "packets_sent", "bytes_sent", "responses"):
        if (r.get(f) or 0) < 0:
            raise InvalidRecord(f"{f} is negative ({r.get(f)})")
    target = r.get("target")
    canon = canonical_target(target)
    return r if canon == target else {**r, "target": canon}


def _validate_scan_command(r: Mapping[str, Any]) -> Mapping[str, Any]:
    _check_ids(r, "command_id")
    targets = r.get("targets") or []
    if not targets:
        raise InvalidRecord("targets is empty")
    _check_port_set(r.get("port_set"), "port_set", required=True)
    canon = [canonical_target(t) for t in targets]
    return r if canon == list(targets) else {**r, "targets": canon}


def _validate_ip_state(r: Mapping[str, Any]) -> Mapping[str, Any]:
    for port in r.get("open_ports") or ():
        check_port(port, "open_ports port")
    return _with_ip(r)


def _validate_observation(r: Mapping[str, Any]) -> Mapping[str, Any]:
    _check_ids(r, "scan_id")
    _check_port_set(r.get("port_set"), "port_set", required=False)
    for resp in r.get("responses") or ():
        check_port(resp.get("port"), "responses port")
        _check_banner(resp.get("banner"), "responses banner")
    return _with_ip(r)


def _validate_decision(r: Mapping[str, Any]) -> Mapping[str, Any]:
    _check_ids(r, "decision_id")
    _check_port_set(r.get("port_set"), "port_set", required=False)
    return _with_ip(r)


def _validate_knowledge_update(r: Mapping[str, Any]) -> Mapping[str, Any]:
    _check_ids(r, "update_id")
    seen = set()
    for change in r.get("changes") or ():
        model = change.get("model")
        if not model:
            raise InvalidRecord("changes: a model id is empty")
        if model in seen:
            raise InvalidRecord(f"changes: model {model!r} is listed twice; give each model once")
        seen.add(model)
        if not change.get("new_ports"):
            raise InvalidRecord(f"changes: model {model!r} has no new ports")
        for port in change["new_ports"]:
            check_port(port, f"changes {model} port")
    return r


_VALIDATORS: dict[str, Callable[[Mapping[str, Any]], Mapping[str, Any]]] = {
    "ScanEvent": _validate_scan_event,
    "ScanDone": _validate_scan_done,
    "ScanCommand": _validate_scan_command,
    "IpState": _validate_ip_state,
    "Observation": _validate_observation,
    "Decision": _validate_decision,
    "KnowledgeUpdate": _validate_knowledge_update,
}


def validate_record(name: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """Check a record against the contract; returns it with addresses in canonical text form.

    Schemas without a validator (added later) pass unchanged.
    """
    if not isinstance(record, Mapping):
        raise InvalidRecord(f"{name} record must be a mapping, got {type(record).__name__}")
    validator = _VALIDATORS.get(name)
    return dict(record) if validator is None else dict(validator(record))


def key_for(name: str, record: Mapping[str, Any]) -> bytes:
    """The Kafka key of a record: its address (or the scan target, or the single command target;
    a ``KnowledgeUpdate``: its update_id).

    A command with several targets is keyed by its command_id. Keys are UTF-8 text so that the
    partition of an address is the same whichever record type carries it.
    """
    if name == "ScanDone":
        return canonical_target(record["target"]).encode()
    if name == "ScanCommand":
        targets = record["targets"]
        return (canonical_target(targets[0]) if len(targets) == 1 else record["command_id"]).encode()
    if name == "KnowledgeUpdate":
        return record["update_id"].encode()
    return canonical_ip(record["ip"]).encode()


def make_record(name: str, registry: SchemaRegistry | None = None, **fields: Any) -> dict[str, Any]:
    """A complete record of ``name`` (latest version): schema defaults plus ``fields``.

    Unknown field names raise ``ValueError``. A ScanEvent without ``event_id`` gets the deterministic
    one from :func:`make_event_id`.
    """
    sv = (registry or default_registry()).latest(name)
    known = {f["name"]: f for f in sv.schema["fields"]}
    unknown = set(fields) - set(known)
    if unknown:
        raise ValueError(f"{name} has no field(s) {sorted(unknown)}; fields: {', '.join(known)}")
    record = {n: copy.deepcopy(f.get("default")) for n, f in known.items()}
    record.update(fields)
    if name == "ScanEvent" and not record.get("event_id"):
        record["event_id"] = make_event_id(record["scan_id"], record["ip"], record["port"],
                                           record["transport"], record["kind"])
    return record


@functools.lru_cache(maxsize=1)
def default_codec() -> AvroCodec:
    """A validating codec over the repository's schemas, shared per process."""
    return AvroCodec()


def encode(name: str, record: Mapping[str, Any]) -> bytes:
    """Single-object bytes of ``record`` with the latest ``name`` schema (see :meth:`AvroCodec.encode`)."""
    return default_codec().encode(name, record)


def decode(data: bytes, expect: Collection[str] | None = None) -> Decoded:
    """Decode single-object bytes with the default codec (see :meth:`AvroCodec.decode`)."""
    return default_codec().decode(data, expect)

"""An in-process registry of every Avro schema version in ``schemas/``.

Schema files are named ``<RecordName>.v<N>.avsc`` (``ScanEvent.v1.avsc``); old versions stay in the
directory forever so that records written by any past producer can still be read. Each version is
identified on the wire by its CRC-64-AVRO fingerprint (the Avro spec's 64-bit Rabin fingerprint of the
schema's Parsing Canonical Form), which is what single-object encoding puts in front of every record.

There is no network schema registry: the ``schemas/`` directory *is* the registry, shipped with the
code, so a Beam worker, an agent and a replay job all resolve the same fingerprints offline.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import fastavro
from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from scanflow.config import REPO_ROOT

#: Where the contract lives in the source checkout.
SCHEMA_DIR = REPO_ROOT / "schemas"
#: The namespace of every scanflow record.
NAMESPACE = "scanflow"

_FILE_NAME = re.compile(r"^(?P<name>[A-Z][A-Za-z0-9]*)\.v(?P<version>[1-9][0-9]*)\.avsc$")


class SchemaRegistryError(ValueError):
    """The schema directory is inconsistent (bad file name, duplicate version, name mismatch)."""


def canonical_form(schema: dict[str, Any]) -> str:
    """The Parsing Canonical Form of a schema (spec: docs, defaults, logical types stripped)."""
    return to_parsing_canonical_form(fastavro.parse_schema(schema, named_schemas={}))


def schema_fingerprint(schema: dict[str, Any]) -> bytes:
    """CRC-64-AVRO fingerprint as the 8 little-endian bytes that single-object encoding writes."""
    return bytes.fromhex(_fastavro_fingerprint(canonical_form(schema), "CRC-64-AVRO"))


def strip_logical_types(schema: Any) -> Any:
    """A copy of ``schema`` without ``logicalType`` annotations.

    Decoding against the stripped schema yields timestamps as plain ``int`` microseconds instead of
    ``datetime`` objects: cheaper, picklable and what the pure policy code works with. The wire format
    is unchanged (the logical type is not part of the canonical form).
    """
    if isinstance(schema, dict):
        return {k: strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [strip_logical_types(v) for v in schema]
    return schema


@dataclass(frozen=True, eq=False)
class SchemaVersion:
    """One version of one record schema, with everything the codec needs precomputed."""

    name: str
    version: int
    schema: dict[str, Any] = field(repr=False)
    fingerprint: bytes
    #: fastavro-parsed schema with logical types: used to write (accepts ints or datetimes).
    parsed: dict[str, Any] = field(repr=False)
    #: fastavro-parsed schema without logical types: used to read (timestamps as int micros).
    raw: dict[str, Any] = field(repr=False)

    @property
    def full_name(self) -> str:
        return f"{self.schema.get('namespace', NAMESPACE)}.{self.name}"

    @classmethod
    def from_json(cls, schema: dict[str, Any], version: int) -> "SchemaVersion":
        """Build from a schema document (as loaded from an ``.avsc`` file)."""
        if schema.get("type") != "record" or not isinstance(schema.get("name"), str):
            raise SchemaRegistryError("a scanflow schema must be a named record at the top level")
        name = schema["name"].rpartition(".")[2]
        return cls(
            name=name,
            version=version,
            schema=schema,
            fingerprint=schema_fingerprint(schema),
            parsed=fastavro.parse_schema(copy.deepcopy(schema), named_schemas={}),
            raw=fastavro.parse_schema(strip_logical_types(schema), named_schemas={}),
        )


class SchemaRegistry:
    """Every known version of every record schema, by name and by fingerprint."""

    def __init__(self, versions: Iterable[SchemaVersion]):
        self._by_name: dict[str, dict[int, SchemaVersion]] = {}
        self._by_fingerprint: dict[bytes, SchemaVersion] = {}
        for sv in versions:
            per_name = self._by_name.setdefault(sv.name, {})
            if sv.version in per_name:
                raise SchemaRegistryError(f"{sv.name} version {sv.version} is defined twice")
            per_name[sv.version] = sv
            other = self._by_fingerprint.get(sv.fingerprint)
            if other is not None and other.name != sv.name:
                raise SchemaRegistryError(f"{sv.name} v{sv.version} and {other.name} v{other.version} "
                                          "have the same fingerprint; rename one of the records")
            # Versions that differ only in docs or defaults share a fingerprint (same wire format):
            # either one decodes the bytes, the lowest version is kept for stable reporting.
            if other is None or sv.version < other.version:
                self._by_fingerprint[sv.fingerprint] = sv

    @classmethod
    def from_directory(cls, directory: str | Path | None = None) -> "SchemaRegistry":
        """Load every ``<Name>.v<N>.avsc`` of ``directory`` (default: the repository's ``schemas/``)."""
        directory = Path(directory) if directory is not None else SCHEMA_DIR
        if not directory.is_dir():
            raise SchemaRegistryError(f"schema directory {directory} does not exist")
        versions = []
        for path in sorted(directory.glob("*.avsc")):
            match = _FILE_NAME.match(path.name)
            if match is None:
                raise SchemaRegistryError(f"{path.name}: schema files are named <RecordName>.v<N>.avsc")
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
                sv = SchemaVersion.from_json(doc, int(match["version"]))
            except (ValueError, TypeError, KeyError) as exc:
                raise SchemaRegistryError(f"{path.name}: not a valid Avro schema ({exc})") from None
            if sv.name != match["name"]:
                raise SchemaRegistryError(f"{path.name}: the file declares record {sv.name!r}; "
                                          f"name the file {sv.name}.v{sv.version}.avsc")
            versions.append(sv)
        if not versions:
            raise SchemaRegistryError(f"no .avsc files in {directory}")
        return cls(versions)

    def names(self) -> list[str]:
        """Short record names (``ScanEvent``, ...), sorted."""
        return sorted(self._by_name)

    def versions(self, name: str) -> list[SchemaVersion]:
        """Every version of ``name``, oldest first."""
        return [v for _, v in sorted(self._versions_of(name).items())]

    def latest(self, name: str) -> SchemaVersion:
        """The newest version of ``name``: the one writers use and readers resolve to."""
        per_name = self._versions_of(name)
        return per_name[max(per_name)]

    def get(self, name: str, version: int) -> SchemaVersion:
        """One specific version."""
        per_name = self._versions_of(name)
        if version not in per_name:
            raise KeyError(f"{name} has no version {version}; known: {sorted(per_name)}")
        return per_name[version]

    def by_fingerprint(self, fingerprint: bytes) -> SchemaVersion | None:
        """The schema version with this wire fingerprint, or ``None`` if none is known."""
        return self._by_fingerprint.get(bytes(fingerprint))

    def _versions_of(self, name: str) -> dict[int, SchemaVersion]:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"unknown schema {name!r}; known: {', '.join(self.names())}") from None


@functools.lru_cache(maxsize=1)
def default_registry() -> SchemaRegistry:
    """The registry of the repository's ``schemas/`` directory, loaded once per process."""
    return SchemaRegistry.from_directory(SCHEMA_DIR)

"""The contract in schemas/: well-formed, documented, evolvable, coherent across files."""

from __future__ import annotations

import json

import avro.schema
import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from connectors.schema_registry import (
    NAMESPACE,
    SCHEMA_DIR,
    SchemaRegistry,
    SchemaRegistryError,
    canonical_form,
    default_registry,
    strip_logical_types,
)

EXPECTED = {"ScanEvent", "ScanDone", "ScanCommand", "IpState", "Observation", "Decision"}
ALL_VERSIONS = [sv for name in default_registry().names() for sv in default_registry().versions(name)]
IDS = [f"{sv.name}.v{sv.version}" for sv in ALL_VERSIONS]


def _named_types(schema, found=None):
    """Every named type (record, enum, fixed) defined anywhere in a schema, by full name."""
    found = {} if found is None else found
    if isinstance(schema, list):
        for branch in schema:
            _named_types(branch, found)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "enum", "fixed"):
            full = schema["name"] if "." in schema["name"] else f"{schema.get('namespace', NAMESPACE)}.{schema['name']}"
            found.setdefault(full, []).append(schema)
            for f in schema.get("fields", []):
                _named_types(f["type"], found)
        elif kind == "array":
            _named_types(schema["items"], found)
        elif kind == "map":
            _named_types(schema["values"], found)
    return found


def _records(schema):
    return [s for defs in _named_types(schema).values() for s in defs if s["type"] == "record"]


def test_every_issue_schema_exists():
    assert EXPECTED <= set(default_registry().names())


@pytest.mark.parametrize("sv", ALL_VERSIONS, ids=IDS)
def test_namespace_docs_and_defaults_everywhere(sv):
    assert sv.schema["namespace"] == NAMESPACE
    for record in _records(sv.schema):
        assert record.get("doc"), f"record {record['name']} has no doc"
        for f in record["fields"]:
            assert f.get("doc"), f"{record['name']}.{f['name']} has no doc"
            # A default on every field keeps both directions of evolution open: a newer reader can
            # read an older writer that lacked the field, an older reader a newer one that dropped it.
            assert "default" in f, f"{record['name']}.{f['name']} has no default"


@pytest.mark.parametrize("sv", ALL_VERSIONS, ids=IDS)
def test_enums_have_a_fallback_symbol(sv):
    enums = [s for defs in _named_types(sv.schema).values() for s in defs if s["type"] == "enum"]
    # A schema without enums (KnowledgeUpdate) has nothing to check; the finder must not miss one.
    assert enums or '"enum"' not in json.dumps(sv.schema)
    for enum in enums:
        # An older reader maps a symbol it does not know (added later) to UNKNOWN instead of failing.
        assert enum["symbols"][0] == "UNKNOWN" and enum.get("default") == "UNKNOWN", enum["name"]


def test_shared_named_types_are_identical_across_files():
    """PortSet, ScanPolicy, ... are repeated in several files; a drift would fork the contract."""
    definitions: dict[str, list] = {}
    for sv in ALL_VERSIONS:
        for full, defs in _named_types(sv.schema).items():
            if full == f"scanflow.{sv.name}":  # a schema's own record differs between its versions
                continue
            definitions.setdefault(full, []).extend(json.dumps(d, sort_keys=True) for d in defs)
    shared = {full: set(texts) for full, texts in definitions.items() if len(texts) > 1}
    assert "scanflow.PortSet" in shared and "scanflow.ScanPolicy" in shared
    drifted = {full for full, texts in shared.items() if len(texts) > 1}
    assert not drifted, f"named types defined differently in different files: {sorted(drifted)}"


@pytest.mark.parametrize("sv", ALL_VERSIONS, ids=IDS)
def test_address_fields_are_text_that_holds_ipv6(sv):
    for record in _records(sv.schema):
        for f in record["fields"]:
            if f["name"] in ("ip", "target"):
                assert f["type"] == "string"
            if f["name"] == "targets":
                assert f["type"] == {"type": "array", "items": "string"}


@pytest.mark.parametrize("sv", ALL_VERSIONS, ids=IDS)
def test_canonical_form_and_fingerprint_agree_with_apache_avro(sv):
    ours = canonical_form(sv.schema)
    # Apache avro (Python, 1.12) keeps logical-type primitives as {"type":"long"} in its canonical form,
    # unlike the spec and the Java implementation; without logical types both must agree exactly.
    theirs = avro.schema.parse(json.dumps(strip_logical_types(sv.schema)))
    assert theirs.canonical_form == ours
    assert theirs.fingerprint("CRC-64-AVRO") == sv.fingerprint


def test_fingerprints_are_unique():
    fingerprints = [sv.fingerprint for sv in ALL_VERSIONS]
    assert len(set(fingerprints)) == len(fingerprints)


@pytest.mark.parametrize("name", sorted(default_registry().names()))
def test_every_version_is_compatible_with_the_latest_both_ways(name):
    checker = ReaderWriterCompatibilityChecker()
    versions = default_registry().versions(name)
    latest = avro.schema.parse(json.dumps(versions[-1].schema))
    for sv in versions:
        older = avro.schema.parse(json.dumps(sv.schema))
        backward = checker.get_compatibility(reader=latest, writer=older)
        forward = checker.get_compatibility(reader=older, writer=latest)
        assert backward.compatibility is SchemaCompatibilityType.compatible, backward.messages
        assert forward.compatibility is SchemaCompatibilityType.compatible, forward.messages


def test_registry_rejects_a_file_named_after_another_record(tmp_path):
    text = (SCHEMA_DIR / "ScanEvent.v1.avsc").read_text()
    (tmp_path / "ScanDone.v1.avsc").write_text(text)
    with pytest.raises(SchemaRegistryError, match="declares record 'ScanEvent'"):
        SchemaRegistry.from_directory(tmp_path)


def test_registry_rejects_unversioned_file_names(tmp_path):
    (tmp_path / "ScanEvent.avsc").write_text((SCHEMA_DIR / "ScanEvent.v1.avsc").read_text())
    with pytest.raises(SchemaRegistryError, match=r"<RecordName>\.v<N>\.avsc"):
        SchemaRegistry.from_directory(tmp_path)


def test_registry_keeps_every_version_and_resolves_latest(tmp_path):
    doc = json.loads((SCHEMA_DIR / "ScanEvent.v1.avsc").read_text())
    (tmp_path / "ScanEvent.v1.avsc").write_text(json.dumps(doc))
    doc["fields"].append({"name": "rtt_us", "type": ["null", "long"], "default": None, "doc": "x"})
    (tmp_path / "ScanEvent.v2.avsc").write_text(json.dumps(doc))
    registry = SchemaRegistry.from_directory(tmp_path)
    v1, v2 = registry.versions("ScanEvent")
    assert (v1.version, v2.version) == (1, 2)
    assert registry.latest("ScanEvent") is v2
    assert registry.by_fingerprint(v1.fingerprint) is v1
    assert registry.by_fingerprint(v2.fingerprint) is v2
    assert v1.fingerprint != v2.fingerprint


def test_contract_document_lists_every_field_of_every_schema():
    text = (SCHEMA_DIR.parent / "docs" / "CONTRACT.md").read_text(encoding="utf-8")
    for name in default_registry().names():
        sv = default_registry().latest(name)
        assert f"### {name} (v{sv.version}, fingerprint `{sv.fingerprint.hex()}`)" in text
        for f in sv.schema["fields"]:
            assert f"| `{f['name']}` |" in text, f"{name}.{f['name']} is not in docs/CONTRACT.md"

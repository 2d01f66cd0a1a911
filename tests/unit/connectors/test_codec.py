"""The single-object codec: round trips, framing, validation, evolution."""

from __future__ import annotations

import copy
import ipaddress
import json
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.avro_codec import (
    BANNER_CAP,
    HEADER_SIZE,
    INLINE_PORTS_CAP,
    MARKER,
    AvroCodec,
    CodecError,
    Decoded,
    InvalidIp,
    InvalidPort,
    InvalidRecord,
    MalformedRecord,
    UnknownFingerprint,
    UnresolvableSchema,
    decode,
    encode,
    key_for,
    make_event_id,
    make_record,
)
from connectors.schema_registry import SCHEMA_DIR, SchemaRegistry, default_registry

# --- a hypothesis strategy for any record of any schema, derived from the schema itself ----------

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ips = st.one_of(ipv4, ipv6)
ports = st.integers(1, 65535)


def _network(ip, prefix):
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


cidrs = st.one_of(st.builds(_network, ipv4, st.integers(8, 32)),
                  st.builds(_network, ipv6, st.integers(32, 128)))
micros = st.integers(0, 2**62)
text = st.text(max_size=20)
ids = st.text(min_size=1, max_size=40)
port_sets = st.one_of(
    st.fixed_dictionaries({"name": st.none(), "version": st.none(),
                           "ports": st.lists(ports, min_size=1, max_size=INLINE_PORTS_CAP)}),
    st.fixed_dictionaries({"name": st.sampled_from(["standard", "silent", "responsive"]),
                           "version": st.integers(1, 1000), "ports": st.just([])}),
)

# Field-name overrides where the contract is narrower than the Avro type.
OVERRIDES = {
    "ip": ips,
    "target": st.one_of(ips, cidrs),
    "targets": st.lists(st.one_of(ips, cidrs), min_size=1, max_size=8),
    "port": ports,
    "open_ports": st.lists(ports, max_size=30),
    "port_set": port_sets,
    "banner": st.one_of(st.none(), st.binary(max_size=BANNER_CAP)),
    "event_id": ids, "scan_id": ids, "decision_id": ids,
    "ports_probed": st.integers(0, 65535),
    "addresses_probed": st.integers(0, 2**40), "packets_sent": st.integers(0, 2**40),
    "bytes_sent": st.integers(0, 2**50), "responses": st.integers(0, 2**30),
    "update_id": ids,
    "changes": st.lists(st.fixed_dictionaries({"model": ids, "new_ports": st.lists(ports, min_size=1, max_size=10)}),
                        max_size=5, unique_by=lambda c: c["model"]),
}


def strategy_for(schema, named, field_name=None):
    if field_name in OVERRIDES and not (field_name == "responses" and isinstance(schema, dict)
                                         and schema.get("type") == "array"):
        return OVERRIDES[field_name]
    if field_name == "command_id" and schema == "string":
        return ids
    if isinstance(schema, list):
        return st.one_of(*[strategy_for(branch, named) for branch in schema])
    if isinstance(schema, str):
        if schema in named:
            return strategy_for(named[schema], named)
        return {"null": st.none(), "boolean": st.booleans(), "int": st.integers(-2**31, 2**31 - 1),
                "long": st.integers(-2**63, 2**63 - 1), "string": text, "bytes": st.binary(max_size=64),
                "float": st.floats(width=32, allow_nan=False), "double": st.floats(allow_nan=False)}[schema]
    kind = schema["type"]
    if schema.get("logicalType") == "timestamp-micros":
        return micros
    if kind == "record":
        named[schema["name"]] = schema
        named[f"scanflow.{schema['name']}"] = schema
        return st.fixed_dictionaries({f["name"]: strategy_for(f["type"], named, f["name"])
                                      for f in schema["fields"]})
    if kind == "enum":
        named[schema["name"]] = schema
        return st.sampled_from(schema["symbols"])
    if kind == "array":
        return st.lists(strategy_for(schema["items"], named, "item_of_" + str(field_name)), max_size=5)
    if kind == "map":
        return st.dictionaries(text, strategy_for(schema["values"], named), max_size=3)
    return strategy_for(kind, named, field_name)


def records_of(name):
    return strategy_for(copy.deepcopy(default_registry().latest(name).schema), {})


@pytest.mark.parametrize("name", default_registry().names())
def test_round_trip_every_schema(name):
    @settings(max_examples=150, deadline=None)
    @given(records_of(name))
    def check(record):
        data = encode(name, record)
        assert data[:2] == MARKER
        assert data[2:HEADER_SIZE] == default_registry().latest(name).fingerprint
        decoded = decode(data)
        assert decoded.schema == name
        assert decoded.record == AvroCodec().decode(encode(name, decoded.record)).record
        # Only addresses are normalised; everything else comes back exactly.
        for key, value in record.items():
            if key not in ("ip", "target", "targets"):
                assert decoded.record[key] == value, key

    check()


def test_round_trip_keeps_ipv6_and_normalises_addresses():
    rec = make_record("ScanEvent", scan_id="s", ip="2001:DB8:0:0::1", port=443, kind="SYN_ACK",
                      transport="TCP", timestamp=1)
    assert decode(encode("ScanEvent", rec)).record["ip"] == "2001:db8::1"


def test_timestamps_accept_datetimes_and_decode_as_int_micros():
    from datetime import datetime, timezone
    when = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
    rec = make_record("ScanEvent", scan_id="s", ip="192.0.2.1", port=22, kind="SYN_ACK", timestamp=when)
    assert decode(encode("ScanEvent", rec)).record["timestamp"] == 1714564800123456


# --- framing and error classes -----------------------------------------------------------------

@pytest.fixture(scope="module")
def good_event_bytes():
    rec = make_record("ScanEvent", scan_id="scan-1", agent_id="a", ip="198.51.100.7", port=80,
                      transport="TCP", kind="BANNER", timestamp=10, banner=b"SSH-2.0-x\r\n",
                      banner_protocol="ssh")
    return encode("ScanEvent", rec)


@pytest.mark.parametrize("data", [None, b"", b"\xc3\x01", b"\xc3\x01" + b"\0" * 8, b"{\"ip\": 1}" * 3,
                                  b"\x00\x01" + b"\0" * 20])
def test_not_single_object_encoded_is_malformed(data):
    with pytest.raises(MalformedRecord):
        decode(data)


def test_unknown_fingerprint(good_event_bytes):
    data = MARKER + b"\xde\xad\xbe\xef\0\0\0\0" + good_event_bytes[HEADER_SIZE:]
    with pytest.raises(UnknownFingerprint):
        decode(data)


def test_truncated_and_trailing_bodies_are_malformed(good_event_bytes):
    with pytest.raises(MalformedRecord):
        decode(good_event_bytes[:-5])
    with pytest.raises(MalformedRecord, match="trailing"):
        decode(good_event_bytes + b"\0")


def test_schema_not_read_here_is_unresolvable():
    cmd = make_record("ScanCommand", command_id="c", targets=["192.0.2.0/24"],
                      port_set={"name": "silent", "version": 3, "ports": []})
    with pytest.raises(UnresolvableSchema):
        decode(encode("ScanCommand", cmd), expect={"ScanEvent", "ScanDone"})


def test_bad_ip_and_port_in_body_are_reported_as_such():
    raw = AvroCodec(validate=False)
    base = make_record("ScanEvent", event_id="e", scan_id="s", ip="192.0.2.1", port=80)
    with pytest.raises(InvalidIp):
        decode(raw.encode("ScanEvent", {**base, "ip": "999.1.1.1"}))
    with pytest.raises(InvalidIp):
        decode(raw.encode("ScanEvent", {**base, "ip": ""}))
    for port in (0, 65536, -1):
        with pytest.raises(InvalidPort):
            decode(raw.encode("ScanEvent", {**base, "port": port}))
    # A non-validating codec passes them through (for replaying archives known to be clean).
    assert raw.decode(raw.encode("ScanEvent", {**base, "port": 0})).record["port"] == 0


def test_encoder_refuses_contract_violations():
    base = make_record("ScanEvent", event_id="e", scan_id="s", ip="192.0.2.1", port=80)
    with pytest.raises(InvalidIp):
        encode("ScanEvent", {**base, "ip": "192.0.2.300"})
    with pytest.raises(InvalidRecord, match="banner"):
        encode("ScanEvent", {**base, "banner": b"x" * (BANNER_CAP + 1)})
    with pytest.raises(InvalidRecord, match="scan_id"):
        encode("ScanEvent", {**base, "scan_id": ""})
    with pytest.raises(CodecError, match="does not fit"):
        encode("ScanEvent", {**base, "kind": "RST"})


@pytest.mark.parametrize("port_set, message", [
    ({"name": None, "version": None, "ports": []}, "empty"),
    ({"name": None, "version": None, "ports": list(range(1, INLINE_PORTS_CAP + 2))}, "inline ports"),
    ({"name": "silent", "version": None, "ports": []}, "named port set"),
    ({"name": "silent", "version": 1, "ports": [80]}, "named port set"),
])
def test_command_port_set_rules(port_set, message):
    cmd = make_record("ScanCommand", command_id="c", targets=["192.0.2.1"], port_set=port_set)
    with pytest.raises(InvalidRecord, match=message):
        encode("ScanCommand", cmd)


def test_command_targets_must_be_networks_or_addresses():
    ok = make_record("ScanCommand", command_id="c", targets=["192.0.2.0/24", "2001:db8::/32", "10.0.0.1"],
                     port_set={"name": None, "version": None, "ports": [80, 443]})
    assert decode(encode("ScanCommand", ok)).record["targets"] == ok["targets"]
    with pytest.raises(InvalidIp, match="CIDR"):
        encode("ScanCommand", {**ok, "targets": ["192.0.2.1/24"]})  # host bits set
    with pytest.raises(InvalidRecord, match="targets is empty"):
        encode("ScanCommand", {**ok, "targets": []})


# --- helpers ---------------------------------------------------------------------------------------

def test_event_id_is_deterministic_and_discriminating():
    a = make_event_id("s", "192.0.2.1", 80, "TCP", "BANNER")
    assert a == make_event_id("s", "192.0.2.1", 80, "TCP", "BANNER")
    assert len({a, make_event_id("s", "192.0.2.1", 80, "TCP", "SYN_ACK"),
                make_event_id("s", "192.0.2.1", 81, "TCP", "BANNER"),
                make_event_id("t", "192.0.2.1", 80, "TCP", "BANNER")}) == 4
    assert make_record("ScanEvent", scan_id="s", ip="192.0.2.1", port=80, transport="TCP",
                       kind="BANNER")["event_id"] == a


def test_make_record_rejects_unknown_fields():
    with pytest.raises(ValueError, match="no field"):
        make_record("ScanEvent", ipaddr="192.0.2.1")


def test_keys():
    assert key_for("ScanEvent", {"ip": "2001:DB8::1"}) == b"2001:db8::1"
    assert key_for("ScanDone", {"target": "192.0.2.0/24"}) == b"192.0.2.0/24"
    assert key_for("ScanCommand", {"targets": ["192.0.2.9"], "command_id": "c"}) == b"192.0.2.9"
    assert key_for("ScanCommand", {"targets": ["192.0.2.9", "192.0.2.10"], "command_id": "c"}) == b"c"


def test_codec_pickles(good_event_bytes):
    codec = pickle.loads(pickle.dumps(AvroCodec(validate=False)))
    assert codec.validate is False
    assert codec.decode(good_event_bytes).record["banner"] == b"SSH-2.0-x\r\n"


# --- evolution ---------------------------------------------------------------------------------

def _evolved_registry(tmp_path):
    """ScanEvent v1 as shipped plus a v2 that adds a field and an enum symbol."""
    doc = json.loads((SCHEMA_DIR / "ScanEvent.v1.avsc").read_text())
    (tmp_path / "ScanEvent.v1.avsc").write_text(json.dumps(doc))
    doc["fields"].append({"name": "rtt_us", "type": ["null", "long"], "default": None,
                          "doc": "Round-trip time of the probe."})
    kind = next(f for f in doc["fields"] if f["name"] == "kind")
    kind["type"]["symbols"].append("RST")
    (tmp_path / "ScanEvent.v2.avsc").write_text(json.dumps(doc))
    return SchemaRegistry.from_directory(tmp_path)


def test_data_written_with_an_older_version_is_read_by_the_newer(tmp_path):
    registry = _evolved_registry(tmp_path)
    old_writer = AvroCodec(registry)
    rec = make_record("ScanEvent", registry=registry, scan_id="s", ip="192.0.2.1", port=80,
                      kind="SYN_ACK", transport="TCP", timestamp=5)
    del rec["rtt_us"]
    data = old_writer.encode("ScanEvent", rec, version=1)
    assert data[2:HEADER_SIZE] == registry.get("ScanEvent", 1).fingerprint
    decoded = AvroCodec(registry).decode(data)
    assert decoded == Decoded("ScanEvent", {**rec, "rtt_us": None})


def test_newer_data_needs_the_newer_schema_file_first(tmp_path):
    """Single-object readers need the writer's schema: deploy schema files to readers before writers."""
    registry = _evolved_registry(tmp_path)
    rec = make_record("ScanEvent", registry=registry, scan_id="s", ip="192.0.2.1", port=80, kind="RST",
                      rtt_us=1200)
    data = AvroCodec(registry).encode("ScanEvent", rec)
    with pytest.raises(UnknownFingerprint):
        AvroCodec().decode(data)  # a reader that only has v1

"""Golden single-object bytes of every schema version, checked by fastavro and by Apache's avro.

The files in tests/golden/ are the contract on the wire: if an encoder change alters them, every
consumer in the field is affected. Old versions' golden files stay forever and must keep decoding
with the newest schemas (that is the evolution guarantee, tested against real bytes).

Regenerate (only when adding a schema version): ``SCANFLOW_REGEN_GOLDEN=1 pytest tests/unit/connectors/test_codec_golden.py``.
"""

from __future__ import annotations

import io
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import avro.io
import avro.schema
import pytest

from connectors.avro_codec import HEADER_SIZE, MARKER, AvroCodec, decode
from connectors.schema_registry import default_registry, strip_logical_types

GOLDEN_DIR = Path(__file__).resolve().parents[2] / "golden"
T0 = 1_714_564_800_000_000  # 2024-05-01T12:00:00Z in microseconds

PORT_SET = {"name": "responsive", "version": 7, "ports": []}
INLINE = {"name": None, "version": None, "ports": [23, 80, 443, 7547]}

#: One fully populated sample per (schema, version), unchanging once its golden file is committed.
SAMPLES = {
    ("ScanEvent", 1): {
        "event_id": "6f1c0a8e2d4b4f3a9e7d5c1b0a987654", "scan_id": "scan-0001", "agent_id": "agent-7",
        "ip": "2001:db8::42", "port": 443, "transport": "TCP", "kind": "BANNER", "timestamp": T0,
        "banner": b"HTTP/1.1 200 OK\r\nServer: lighttpd/1.4.35\r\n\r\n", "banner_truncated": False,
        "banner_protocol": "http", "ttl": 57, "window": 29200,
    },
    ("ScanEvent", 2): {
        "event_id": "0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f", "scan_id": "scan-0002", "agent_id": "agent-7",
        "ip": "198.18.0.23", "port": 443, "transport": "TCP", "kind": "BANNER", "timestamp": T0,
        "banner": (b"TLS TLSv1.2 ECDHE-RSA-AES128-GCM-SHA256\nsubject: CN=IPC-HFW1320S, O=Dahua\n"
                   b"issuer: CN=IPC-HFW1320S, O=Dahua\nsan: DNS:ipc.local, IP:192.168.1.108\n\n"
                   b"HTTP/1.1 200 OK\r\nServer: lighttpd/1.4.35\r\n\r\n"),
        "banner_truncated": False, "banner_protocol": "tls", "ttl": None, "window": None,
        "protocol": "tls", "status": "SUCCESS",
        "tls": {
            "version": "TLSv1.2", "cipher": "ECDHE-RSA-AES128-GCM-SHA256",
            "leaf": {
                "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                "subject": "CN=IPC-HFW1320S, O=Dahua", "issuer": "CN=IPC-HFW1320S, O=Dahua",
                "sans": ["DNS:ipc.local", "IP:192.168.1.108"], "serial": "3e8",
                "not_before": T0 - 31_536_000_000_000, "not_after": T0 - 86_400_000_000,
                "key_type": "rsa", "key_bits": 2048, "signature_algorithm": "sha256WithRSAEncryption",
                "self_issued": True, "parse_error": None,
            },
            "chain": [],
        },
    },
    ("ScanDone", 1): {
        "scan_id": "scan-0001", "agent_id": "agent-7", "command_id": "cmd-0001", "target": "192.0.2.0/28",
        "policy": "EFFICIENT", "started_at": T0, "ended_at": T0 + 2_500_000, "port_set": INLINE,
        "ports_probed": 4, "addresses_probed": 16, "packets_sent": 70, "bytes_sent": 4_200,
        "responses": 3, "status": "COMPLETE", "status_detail": None,
    },
    ("ScanCommand", 1): {
        "command_id": "cmd-0001", "issued_at": T0, "not_before": T0 + 60_000_000,
        "expires_at": T0 + 3_600_000_000, "targets": ["192.0.2.0/28", "198.51.100.7"],
        "port_set": PORT_SET, "reason": "BACKOFF", "policy": "EFFICIENT", "shard_hint": 3,
    },
    ("IpState", 1): {
        "ip": "198.51.100.7", "status": "RESPONSIVE_ESTIMATED", "policy": "EFFICIENT",
        "device": "vendor-x/router-y", "fingerprint": "b3f1", "open_ports": [23, 80, 7547],
        "backoff_step": 2, "silent_rounds": 0, "first_seen_at": T0 - 86_400_000_000,
        "last_seen_at": T0, "last_scanned_at": T0, "last_changed_at": T0 - 86_400_000_000,
        "next_scan_at": T0 + 172_800_000_000, "updated_at": T0,
    },
    ("IpState", 2): {
        "ip": "198.18.0.7", "status": "RESPONSIVE_ESTIMATED", "policy": "EFFICIENT",
        "device": "vendor-x/router-y", "fingerprint": "b3f1", "open_ports": [23, 80, 7547],
        "port_digests": [{"port": 23, "digest": "0a1b"}, {"port": 80, "digest": "2c3d"}],
        "probed": {"name": "responsive", "version": 3, "ports": []},
        "backoff_step": 2, "silent_rounds": 0, "first_seen_at": T0 - 86_400_000_000,
        "last_seen_at": T0, "last_scanned_at": T0, "last_changed_at": T0 - 86_400_000_000,
        "next_scan_at": T0 + 172_800_000_000, "updated_at": T0,
    },
    ("Observation", 1): {
        "ip": "198.51.100.7", "scan_id": "scan-0001", "agent_id": "agent-7", "command_id": "cmd-0001",
        "policy": "EFFICIENT", "started_at": T0, "ended_at": T0 + 2_500_000, "port_set": INLINE,
        "ports_probed": 4,
        "responses": [
            {"port": 23, "transport": "TCP", "banner": b"\xff\xfd\x18login: ", "banner_protocol": "telnet",
             "ttl": 57, "window": 5840},
            {"port": 80, "transport": "TCP", "banner": None, "banner_protocol": None, "ttl": None,
             "window": None},
        ],
        "status": "COMPLETE", "fingerprint": "b3f1", "device": None,
    },
    ("Decision", 1): {
        "decision_id": "dec-0001", "ip": "198.51.100.7", "policy": "EFFICIENT", "decided_at": T0,
        "scan_id": "scan-0001", "previous_status": "RESPONSIVE_UNESTIMATED",
        "status": "RESPONSIVE_ESTIMATED", "changed": True, "device": "vendor-x/router-y",
        "backoff_step": 0, "reason": "CHANGED", "next_scan_at": T0 + 43_200_000_000,
        "port_set": INLINE, "command_id": "cmd-0002",
    },
    ("KnowledgeUpdate", 1): {
        "update_id": "kbu-3f9a2c7d1e4b5a60", "issued_at": T0, "kb_version_before": "a1b2c3d4e5f60718",
        "kb_version_after": "0f1e2d3c4b5a6978",
        "changes": [{"model": "vendor-x-router-y", "new_ports": [2323, 37215]},
                    {"model": "vendor-z-camera", "new_ports": [37215]}],
        "added_malware": ["botnet-q"], "sources": ["botnet-q.toml"],
        "summary": "malware botnet-q: 2 models gain ports 2323, 37215",
    },
}

VERSIONS = [(sv.name, sv.version) for name in default_registry().names()
            for sv in default_registry().versions(name)]


def _golden_path(name, version):
    return GOLDEN_DIR / f"{name}.v{version}.hex"


def _read_golden(name, version):
    path = _golden_path(name, version)
    if os.environ.get("SCANFLOW_REGEN_GOLDEN") == "1":
        sample = SAMPLES[(name, version)]
        path.write_text(AvroCodec().encode(name, sample, version=version).hex() + "\n")
    if not path.exists():
        pytest.fail(f"{path.name} is missing: add a sample to SAMPLES and run with SCANFLOW_REGEN_GOLDEN=1")
    return bytes.fromhex(path.read_text().strip())


def test_every_schema_version_has_a_sample():
    assert set(VERSIONS) <= set(SAMPLES)


@pytest.mark.parametrize("name, version", VERSIONS)
def test_encoder_produces_the_golden_bytes(name, version):
    golden = _read_golden(name, version)
    assert golden[:2] == MARKER
    assert golden[2:HEADER_SIZE] == default_registry().get(name, version).fingerprint
    if (name, version) == (name, default_registry().latest(name).version):
        assert AvroCodec().encode(name, SAMPLES[(name, version)]) == golden


@pytest.mark.parametrize("name, version", VERSIONS)
def test_golden_bytes_decode_with_the_newest_schemas(name, version):
    decoded = decode(_read_golden(name, version))
    assert decoded.schema == name
    sample = SAMPLES[(name, version)]
    # Fields the sample had keep their values; fields added later take their defaults.
    assert {k: decoded.record[k] for k in sample if k in decoded.record} == sample


def _to_micros(value):
    if isinstance(value, datetime):
        return round((value - datetime(1970, 1, 1, tzinfo=timezone.utc)).total_seconds() * 1_000_000)
    if isinstance(value, dict):
        return {k: _to_micros(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_micros(v) for v in value]
    return value


@pytest.mark.parametrize("name, version", VERSIONS)
def test_apache_avro_reads_the_golden_bytes(name, version):
    """Interoperability: Apache's own avro package finds the schema by fingerprint and decodes the body."""
    golden = _read_golden(name, version)
    assert golden[:2] == b"\xc3\x01"
    schema_doc = default_registry().get(name, version).schema
    # Fingerprint as Apache avro computes it. Its canonical form of logical-type primitives deviates
    # from the spec (see test_schemas), so the fingerprint is taken over the schema without them,
    # which the spec says has the same canonical form.
    by_fingerprint = {
        avro.schema.parse(json.dumps(strip_logical_types(sv.schema))).fingerprint("CRC-64-AVRO"): sv.schema
        for n in default_registry().names() for sv in default_registry().versions(n)
    }
    writer_doc = by_fingerprint[golden[2:10]]
    assert writer_doc is schema_doc
    writer = avro.schema.parse(json.dumps(writer_doc))
    reader = avro.schema.parse(json.dumps(default_registry().latest(name).schema))
    body = io.BytesIO(golden[10:])
    record = avro.io.DatumReader(writer, reader).read(avro.io.BinaryDecoder(body))
    assert body.tell() == len(golden) - 10
    sample = SAMPLES[(name, version)]
    assert {k: _to_micros(record[k]) for k in sample} == sample

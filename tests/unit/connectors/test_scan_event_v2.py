"""ScanEvent v2 and v1 read each other (fastavro schema resolution, both directions), and the codec
writes v2."""

from __future__ import annotations

import io

import fastavro

from connectors.avro_codec import AvroCodec, make_record
from connectors.schema_registry import default_registry
from tests.unit.connectors.test_codec_golden import SAMPLES


def _roundtrip(writer_sv, reader_sv, record):
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, writer_sv.parsed, record)
    buf.seek(0)
    out = fastavro.schemaless_reader(buf, writer_sv.raw, reader_sv.raw)
    assert buf.tell() == len(buf.getvalue())
    return out


def test_a_v1_reader_reads_v2_data_without_the_new_fields():
    v1, v2 = default_registry().get("ScanEvent", 1), default_registry().get("ScanEvent", 2)
    sample = SAMPLES[("ScanEvent", 2)]
    got = _roundtrip(v2, v1, sample)
    assert set(got) == {f["name"] for f in v1.schema["fields"]}
    assert got == {k: sample[k] for k in got}
    assert got["banner"].startswith(b"TLS TLSv1.2 ")


def test_a_v2_reader_reads_v1_data_with_the_defaults():
    v1, v2 = default_registry().get("ScanEvent", 1), default_registry().get("ScanEvent", 2)
    sample = SAMPLES[("ScanEvent", 1)]
    got = _roundtrip(v1, v2, sample)
    assert {k: got[k] for k in sample} == sample
    assert (got["protocol"], got["status"], got["tls"]) == (None, "UNKNOWN", None)


def test_v2_tls_facts_survive_the_codec_and_writers_emit_v2():
    codec = AvroCodec()
    sample = SAMPLES[("ScanEvent", 2)]
    data = codec.encode("ScanEvent", sample)
    assert data[2:10] == default_registry().get("ScanEvent", 2).fingerprint
    got = codec.decode(data).record
    assert got["tls"]["leaf"]["subject"] == "CN=IPC-HFW1320S, O=Dahua"
    assert got["tls"]["leaf"]["sans"] == ["DNS:ipc.local", "IP:192.168.1.108"]
    assert got == sample


def test_a_record_without_the_new_fields_gets_their_defaults():
    record = make_record("ScanEvent", scan_id="s", ip="198.18.0.1", port=23, transport="TCP", kind="SYN_ACK",
                         timestamp=1)
    assert (record["protocol"], record["status"], record["tls"]) == (None, "UNKNOWN", None)
    assert AvroCodec().decode(AvroCodec().encode("ScanEvent", record)).record == record

"""Lake round trip on the real broker: events produced to Kafka, archived by the bounded pipeline
(FnApiRunner), are in the lake exactly once after dedupe, with every field intact."""

from __future__ import annotations

import dataclasses

import pyarrow.parquet as pq

from connectors.avro_codec import make_record
from connectors.duckdb_catalog import Catalog
from connectors.kafka_io import AvroProducer, make_consumer, topic_partitions
from connectors.parquet_lake import arrow_schema, arrow_to_records, table_files
from pipelines.archive import run_archive

T0_US = 1_575_244_800_000_000  # 2019-12-02T00:00Z
HOUR_US = 3_600_000_000
N_EVENTS = 3_000


def _events() -> list[dict]:
    out = []
    for i in range(N_EVENTS):
        banner = (b"\x1b[2J<script>x</script>" + bytes([i % 256])) if i % 3 == 0 else None
        out.append(make_record(
            "ScanEvent", scan_id=f"scan-{i // 3}", agent_id="agent-1", ip=f"10.1.{(i // 250) % 256}.{i % 250 + 1}",
            port=1 + (i * 7) % 1000, transport="TCP", kind="BANNER" if banner else "SYN_ACK",
            timestamp=T0_US + (i % 5) * HOUR_US + i, banner=banner,
            banner_protocol="http" if banner else None, ttl=64 if i % 2 else None))
    return out


def _dones() -> list[dict]:
    return [make_record("ScanDone", scan_id=f"scan-{j}", agent_id="agent-1", target=f"10.1.{j // 250 % 256}.0/24",
                        policy="STANDARD" if j % 2 else "EFFICIENT", started_at=T0_US + j, ended_at=T0_US + j + 10,
                        port_set={"name": "standard", "version": 1, "ports": []}, ports_probed=11_000,
                        addresses_probed=256, packets_sent=11_000 * 256, bytes_sent=40 * 11_000 * 256,
                        responses=3, status="COMPLETE")
            for j in range(N_EVENTS // 3)]


def _lake_row(record: dict) -> dict:
    """A ScanEvent as a lake row: nested records (ScanEvent v2's ``tls``) flattened into columns."""
    names = arrow_schema("ScanEvent").names
    out = {}
    for k, v in record.items():
        if k in names:
            out[k] = v
        else:
            out.update({n: (v or {}).get(n[len(k) + 1:]) for n in names if n.startswith(f"{k}_")})
    return out


def test_every_event_produced_is_in_the_lake_exactly_once_after_dedupe(kafka, make_topic, settings, tmp_path):
    events_topic = make_topic("lake-events", partitions=4)
    dead_topic = make_topic("lake-dead", partitions=1)
    events, dones = _events(), _dones()
    with AvroProducer(kafka) as producer:
        for e in events:
            producer.send(events_topic, "ScanEvent", e)
        for d in dones:
            producer.send(events_topic, "ScanDone", d)
        # at-least-once delivery: the agent resends 100 events (same ids) ...
        for e in events[:100]:
            producer.send(events_topic, "ScanEvent", e)
        # ... and something that is not a record at all must become a dead letter, not a row
        producer.send_bytes(events_topic, b"10.1.0.1", b"not avro")
    cfg = dataclasses.replace(settings, topics=dataclasses.replace(settings.topics, events=events_topic,
                                                                   dead_letter=dead_topic))
    lake = tmp_path / "lake"

    first = run_archive(cfg, root=str(lake))
    # archiving the same range again (an operator re-running it) must not add distinct rows either
    second = run_archive(cfg, root=str(lake))

    assert first.rows == N_EVENTS + 100 + len(dones)
    assert first.dead_letters == 1 and second.dead_letters == 1
    with Catalog(lake) as cat:
        counts = cat.counts()
        assert counts["events"]["unique"] == N_EVENTS
        assert counts["scans"]["unique"] == len(dones)
        ids = cat.sql("SELECT event_id, count(*) AS n FROM events_dedup GROUP BY event_id").to_pylist()
        assert {r["event_id"] for r in ids} == {e["event_id"] for e in events}
        assert all(r["n"] == 1 for r in ids)
        # every field survives Kafka -> Avro -> Parquet: compare whole records
        rows = arrow_to_records(cat.sql("SELECT * EXCLUDE (date, hour) FROM events_dedup"))
        assert sorted(rows, key=lambda r: r["event_id"]) == sorted(map(_lake_row, events), key=lambda r: r["event_id"])
        # hive partitions are the UTC hour of the event time
        hours = cat.sql("SELECT DISTINCT date::VARCHAR AS d, hour FROM events ORDER BY hour").to_pylist()
        assert hours == [{"d": "2019-12-02", "hour": h} for h in range(5)]
        policies = cat.sql("SELECT policy, count(*) AS n FROM scans_dedup GROUP BY policy ORDER BY policy").to_pylist()
        assert policies == [{"policy": "EFFICIENT", "n": N_EVENTS // 6}, {"policy": "STANDARD", "n": N_EVENTS // 6}]
    # the bounded archive groups per hour (one file per table and hour, not one per bundle), and
    # files are named after their content: the second run replaced the first run's files instead
    # of adding copies, so only the 100 resent events are duplicates in the raw view
    assert len(table_files(lake, "events")) == 5
    assert counts["events"]["rows"] == N_EVENTS + 100
    for path in table_files(lake, "events"):
        assert pq.ParquetFile(path).metadata.num_rows > 0

    consumer = make_consumer(kafka)
    try:
        tps = topic_partitions(consumer, [dead_topic])
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        dead = []
        for _ in range(50):
            for batch in consumer.poll(timeout_ms=200).values():
                dead.extend(batch)
            if len(dead) >= 2:
                break
        assert [r.value for r in dead] == [b"not avro", b"not avro"]
    finally:
        consumer.close()

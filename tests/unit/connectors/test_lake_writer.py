"""The Parquet lake writer: schemas from the Avro records, hive partitions, atomic finalize, sizing,
content-addressed names, compaction."""

from __future__ import annotations

import fcntl
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings, strategies as st

from connectors.avro_codec import make_record
from connectors.lake_settings import LakeSettings
from connectors.parquet_lake import (
    LOCKS,
    STAGING,
    TABLES,
    LakeWriter,
    arrow_to_records,
    compact,
    partition_dir,
    records_to_arrow,
    table_files,
    write_table,
)
from scanflow.config import ConfigError

T0 = 1_575_244_800_000_000  # 2019-12-02T00:00:00Z in microseconds
HOUR = 3_600_000_000


def event(i: int, ts: int | None = None, **kw) -> dict:
    fields = {"scan_id": f"s-{i // 4}", "agent_id": "a1", "ip": f"10.0.{i // 250 % 256}.{i % 250 + 1}",
              "port": 1 + i % 1000, "transport": "TCP", "kind": "SYN_ACK", "timestamp": T0 + i if ts is None else ts}
    return make_record("ScanEvent", **{**fields, **kw})


FULL_RECORDS = {
    "events": make_record("ScanEvent", scan_id="s", agent_id="a", ip="2001:db8::1", port=8080, transport="TCP",
                          kind="BANNER", timestamp=T0, banner=b"\x00\xffHTTP", banner_truncated=True,
                          banner_protocol="http", ttl=57, window=64240, protocol="tls", status="SUCCESS",
                          tls={"version": "TLSv1.2", "cipher": "ECDHE-RSA-AES128-GCM-SHA256",
                               "leaf": {"sha256": "ab" * 32, "subject": "CN=IPC-HFW1320S, O=Dahua",
                                        "issuer": "CN=IPC-HFW1320S, O=Dahua", "sans": ["DNS:ipc.local"],
                                        "serial": "3e8", "not_before": T0 - 1, "not_after": T0 + 1,
                                        "key_type": "rsa", "key_bits": 2048,
                                        "signature_algorithm": "sha256WithRSAEncryption", "self_issued": True,
                                        "parse_error": None},
                               "chain": []}),
    "scans": make_record("ScanDone", scan_id="s", agent_id="a", command_id="c", target="10.0.0.0/24",
                         policy="STANDARD", started_at=T0, ended_at=T0 + 5, port_set={"name": "standard", "version": 3,
                                                                                      "ports": []},
                         ports_probed=11000, addresses_probed=256, packets_sent=10**7, bytes_sent=4 * 10**8,
                         responses=7, status="ABORTED", status_detail="rate limit"),
    "observations": make_record("Observation", ip="10.0.0.9", scan_id="s", agent_id="a", command_id=None,
                                policy="EFFICIENT", started_at=T0, ended_at=T0 + 9,
                                port_set={"name": None, "version": None, "ports": [22, 80]}, ports_probed=2,
                                responses=[{"port": 22, "transport": "TCP", "banner": b"SSH-2.0", "banner_protocol": None,
                                            "ttl": None, "window": None},
                                           {"port": 80, "transport": "TCP", "banner": None, "banner_protocol": None,
                                            "ttl": 60, "window": 1}],
                                status="COMPLETE", fingerprint="f" * 32, device="acme-cam"),
    "decisions": make_record("Decision", decision_id="d", ip="10.0.0.9", policy="EFFICIENT", decided_at=T0,
                             scan_id=None, previous_status="NON_RESPONSIVE", status="RESPONSIVE_ESTIMATED",
                             changed=True, device="acme-cam", backoff_step=0, reason="NEW_RESPONDER",
                             next_scan_at=T0 + 12 * HOUR, port_set={"name": None, "version": None, "ports": [80]},
                             command_id="c2"),
    "ip_state": make_record("IpState", ip="10.0.0.9", status="RESPONSIVE_UNESTIMATED", policy="EFFICIENT",
                            fingerprint="ab", open_ports=[22, 80], backoff_step=3, silent_rounds=0,
                            port_digests=[{"port": 22, "digest": "d22"}, {"port": 80, "digest": "d80"}],
                            probed={"name": "unknown", "version": 2, "ports": []},
                            first_seen_at=T0, last_seen_at=T0 + 1, last_scanned_at=None, last_changed_at=T0,
                            next_scan_at=T0 + 3 * 86_400_000_000, updated_at=T0 + 2),
}


def _flatten(record: dict, table: str = "events") -> dict:
    names = TABLES[table].schema.names
    out = {}
    for k, v in record.items():
        if isinstance(v, dict):  # a nested record (PortSet, TlsInfo): one column per field
            out.update({f"{k}_{sub}": value for sub, value in v.items()})
        elif v is None and k not in names:  # a null nested record: null in each of its columns
            out.update({n: None for n in names if n.startswith(f"{k}_")})
        else:
            out[k] = v
    return out


@pytest.mark.parametrize("table", list(TABLES))
def test_every_field_of_every_record_round_trips_through_a_lake_file(table, tmp_path):
    record = FULL_RECORDS[table]
    files = write_table(tmp_path, table, [record])
    assert len(files) == 1 and files[0].rows == 1
    back = arrow_to_records(pq.read_table(tmp_path / files[0].path))
    assert back == [_flatten(record, table)]


def test_columns_follow_the_avro_record_flattened():
    names = TABLES["scans"].schema.names
    assert names[:7] == ["scan_id", "agent_id", "command_id", "target", "policy", "started_at", "ended_at"]
    assert "port_set_name" in names and "port_set" not in names
    resp = TABLES["observations"].schema.field("responses").type
    assert pa.types.is_list(resp) and pa.types.is_struct(resp.value_type)
    assert TABLES["events"].schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    assert TABLES["events"].schema.field("banner").type == pa.binary()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**6), st.binary(max_size=40) | st.none()), min_size=1, max_size=60))
def test_records_to_arrow_and_back_is_the_identity_for_events(rows):
    records = [event(i, banner=b, kind="BANNER" if b is not None else "SYN_ACK") for i, b in rows]
    assert arrow_to_records(records_to_arrow("events", records)) == [_flatten(r) for r in records]


def test_rows_land_in_the_utc_hour_of_their_event_time(tmp_path):
    records = [event(0, ts=T0), event(1, ts=T0 + HOUR - 1), event(2, ts=T0 + HOUR), event(3, ts=T0 + 25 * HOUR)]
    write_table(tmp_path, "events", records)
    dirs = sorted(p.parent.relative_to(tmp_path).as_posix() for p in table_files(tmp_path, "events"))
    assert dirs == ["events/date=2019-12-02/hour=00", "events/date=2019-12-02/hour=01",
                    "events/date=2019-12-03/hour=01"]
    assert partition_dir("events", 0) == "events/date=1970-01-01/hour=00"


def test_nothing_is_visible_before_finalize_and_every_visible_file_is_whole(tmp_path):
    cfg = LakeSettings(row_group_rows=1024, target_file_mb=0.05)
    writer = LakeWriter(tmp_path, cfg)
    seen_rows = 0
    for chunk in range(30):
        writer.write("events", [event(chunk * 500 + i) for i in range(500)])
        # what a query would list right now: only finalized files, each a complete Parquet file
        visible = table_files(tmp_path, "events")
        seen_rows = sum(pq.ParquetFile(p).metadata.num_rows for p in visible)
        assert seen_rows <= (chunk + 1) * 500
        assert not any(p.suffix == ".tmp" for p in visible)
    writer.write("events", [event(15_000)])
    visible = sum(pq.ParquetFile(p).metadata.num_rows for p in table_files(tmp_path, "events"))
    assert visible <= 15_000  # the row just written is buffered: not visible yet
    writer.flush()
    assert sum(pq.ParquetFile(p).metadata.num_rows for p in table_files(tmp_path, "events")) == 15_001
    assert list((tmp_path / STAGING).iterdir()) == []


def test_files_are_cut_at_the_target_size_not_left_tiny(tmp_path):
    cfg = LakeSettings(row_group_rows=2048, target_file_mb=0.1)
    with LakeWriter(tmp_path, cfg) as writer:
        for chunk in range(20):
            writer.write("events", [event(chunk * 2048 + i, ts=T0 + i) for i in range(2048)])
    sizes = sorted(p.stat().st_size for p in table_files(tmp_path, "events"))
    assert len(sizes) >= 3
    # every file but the last reached the target; none is more than one row group past it
    assert all(s >= cfg.target_file_bytes for s in sizes[1:])
    group_bytes = max(s for s in sizes) - cfg.target_file_bytes
    assert group_bytes < cfg.target_file_bytes


def test_the_flush_interval_finalizes_a_quiet_partition(tmp_path):
    now = [0.0]
    writer = LakeWriter(tmp_path, LakeSettings(flush_interval_s=60), clock=lambda: now[0])
    writer.write("events", [event(1)])
    now[0] = 59.0
    assert writer.poll() == [] and table_files(tmp_path, "events") == []
    now[0] = 60.0
    done = writer.poll()
    assert len(done) == 1 and done[0].rows == 1
    assert len(table_files(tmp_path, "events")) == 1


def test_too_many_open_partitions_finalize_the_least_recently_written(tmp_path):
    writer = LakeWriter(tmp_path, LakeSettings(max_open_files=2))
    writer.write("events", [event(0, ts=T0)])
    writer.write("events", [event(1, ts=T0 + HOUR)])
    writer.write("events", [event(2, ts=T0)])  # hour 0 is now the most recent
    done = writer.write("events", [event(3, ts=T0 + 2 * HOUR)])
    assert [d.path.split("/")[2] for d in done] == ["hour=01"]
    writer.flush()


def test_the_same_rows_get_the_same_file_name_so_a_rewrite_adds_nothing(tmp_path):
    records = [event(i) for i in range(100)]
    first = write_table(tmp_path, "events", records)
    second = write_table(tmp_path, "events", list(reversed(records)))
    assert [f.path for f in first] == [f.path for f in second]
    assert len(table_files(tmp_path, "events")) == 1
    other = write_table(tmp_path, "events", records[:50])
    assert other[0].path != first[0].path


def test_abort_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError):
        with LakeWriter(tmp_path) as writer:
            writer.write("events", [event(i) for i in range(10)])
            raise RuntimeError("crash")
    assert table_files(tmp_path, "events") == []
    assert list((tmp_path / STAGING).iterdir()) == []


def test_compaction_merges_small_files_and_drops_duplicate_keys(tmp_path):
    cfg = LakeSettings(target_file_mb=1)
    records = [event(i, ts=T0 + i) for i in range(1000)]
    for start in range(0, 1000, 100):  # ten small files in one partition
        write_table(tmp_path, "events", records[start:start + 100], cfg)
    write_table(tmp_path, "events", records[:10] + [event(5000, ts=T0 + 10)], cfg)  # 10 duplicates, 1 new
    write_table(tmp_path, "events", [event(9999, ts=T0 + 5 * HOUR)], cfg)  # a partition with one file
    before = table_files(tmp_path, "events")
    assert len(before) == 12

    [result] = compact(tmp_path, ["events"], cfg)

    after = table_files(tmp_path, "events")
    assert (result.partitions, result.files_before, result.files_after) == (1, 12, 2)
    assert (result.rows_before, result.rows_after) == (1011, 1001)
    rows = pa.concat_tables([pq.read_table(p) for p in after])
    assert rows.num_rows == 1002 and len(set(rows.column("event_id").to_pylist())) == 1002
    # compacting again changes nothing
    [again] = compact(tmp_path, ["events"], cfg)
    assert again.partitions == 0 and table_files(tmp_path, "events") == after


def test_a_table_being_compacted_elsewhere_is_skipped(tmp_path):
    write_table(tmp_path, "events", [event(1)])
    write_table(tmp_path, "events", [event(2)])
    (tmp_path / LOCKS).mkdir(exist_ok=True)
    with open(tmp_path / LOCKS / "compact-events.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        [result] = compact(tmp_path, ["events"])
    assert result.skipped and len(table_files(tmp_path, "events")) == 2


def test_compaction_deletes_staged_files_of_crashed_writers(tmp_path):
    staging = tmp_path / STAGING
    staging.mkdir()
    stale, fresh = staging / "old.parquet.tmp", staging / "new.parquet.tmp"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    old = time.time() - 2 * 86_400
    os.utime(stale, (old, old))
    compact(tmp_path, ["events"])
    assert not stale.exists() and fresh.exists()


@pytest.mark.parametrize("change, message", [
    ({"root": " "}, "lake.root"), ({"target_file_mb": 0}, "lake.target_file_mb"),
    ({"flush_interval_s": 0}, "lake.flush_interval_s"), ({"compression": "lz5"}, "lake.compression"),
    ({"row_group_rows": 10}, "lake.row_group_rows"), ({"max_open_files": 0}, "lake.max_open_files")])
def test_bad_lake_settings_name_the_key(change, message):
    with pytest.raises(ConfigError, match=message):
        LakeSettings(**change).validate()


def test_files_written_before_scan_event_v2_compact_with_new_ones(tmp_path):
    """A partition holding a file of the v1 columns (no protocol, status, tls_*) and a v2 file:
    compaction keeps every row, the old ones with nulls in the new columns."""
    cfg = LakeSettings(target_file_mb=1)
    [new] = write_table(tmp_path, "events", [event(1, ts=T0 + 1, protocol="http", status="SUCCESS")], cfg)
    [old] = write_table(tmp_path, "events", [event(2, ts=T0 + 2)], cfg)
    v1_columns = [n for n in TABLES["events"].schema.names
                  if n not in ("protocol", "status") and not n.startswith("tls_")]
    path = tmp_path / old.path
    pq.write_table(pq.read_table(path).select(v1_columns), path)
    [result] = compact(tmp_path, ["events"], cfg)
    assert (result.files_before, result.files_after, result.rows_after) == (2, 1, 2)
    rows = arrow_to_records(pq.read_table(tmp_path / table_files(tmp_path, "events")[0]))
    by_port = {r["port"]: r for r in rows}
    assert (by_port[2]["protocol"], by_port[2]["status"]) == ("http", "SUCCESS")              # event(1): v2
    assert (by_port[3]["protocol"], by_port[3]["status"], by_port[3]["tls_leaf"]) == (None, None, None)  # v1

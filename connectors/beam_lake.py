"""Apache Beam sink for the Parquet lake: :class:`WriteToLake`.

Two ways to cut files, for the two kinds of pipeline:

``mode="grouped"`` (bounded pipelines: archive, replay)
    records are keyed by (table, UTC hour, shard), optionally windowed (``window_s``: fixed
    event-time windows, for a streaming pipeline whose runner keeps state durably, e.g. Flink), then
    grouped; each group is written as files of about ``target_file_mb``, each finalized atomically.
    Outputs one :class:`~connectors.parquet_lake.LakeFile` per file.
``mode="bundle"`` (live pipelines that commit Kafka offsets)
    records are written when the bundle finishes, in the same fused stage as the Kafka read, so
    the reader's bundle finalizer commits offsets only after the files are finalized and fsynced:
    nothing is acknowledged before it is durable. Files are as big as a bundle (size bundles with
    the reader's ``max_bundle_s``); ``scanflow lake compact`` merges them. Outputs nothing.

Elements are records (dicts as decoded by :mod:`connectors.avro_codec`) when ``table`` is given;
otherwise :class:`~connectors.avro_codec.Decoded` values or ``(key, Decoded)`` pairs, routed to the
table of their schema (``ScanEvent`` -> events, ``ScanDone`` -> scans, ...).

Delivery: at-least-once. A retried bundle rewrites files with the same content under the same name
when its rows arrive in the same order, otherwise it can leave a second copy of some rows: the
catalog's ``*_dedup`` views and compaction remove them by key.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window

from connectors.lake_settings import LakeSettings
from connectors.parquet_lake import (
    HOUR_MICROS,
    TABLE_OF_RECORD,
    LakeWriter,
    records_to_arrow,
    spec,
)

_METRICS = "scanflow.lake"


def _route(element: Any, table: str | None) -> tuple[str, dict]:
    if table is not None:
        return table, element
    decoded = element[1] if isinstance(element, tuple) and len(element) == 2 and not hasattr(element, "schema") \
        else element
    try:
        return TABLE_OF_RECORD[decoded.schema], decoded.record
    except (AttributeError, KeyError):
        raise ValueError(f"WriteToLake without a table needs Decoded records of "
                         f"{', '.join(TABLE_OF_RECORD)}; got {type(decoded).__name__}") from None


class _KeyByPartition(beam.DoFn):
    """record -> ((table, hour bucket, shard), record)."""

    def __init__(self, table: str | None, shards: int):
        self._table, self._shards = table, shards

    def process(self, element):
        table, record = _route(element, self._table)
        t = spec(table)
        micros = record.get(t.time_column) or 0
        shard = 0
        if self._shards > 1:
            # A stable hash (never Python's salted hash()) so a retry shards the same way.
            shard = zlib.crc32(str(record.get(t.key[0], "")).encode()) % self._shards
        yield (table, max(int(micros), 0) // HOUR_MICROS, shard), record


class _WriteGroups(beam.DoFn):
    """((table, bucket, shard), records) -> finalized files of about the target size."""

    def __init__(self, root: str, settings: LakeSettings):
        self._root, self._settings = root, settings

    def setup(self):
        self._files = Metrics.counter(_METRICS, "files_written")
        self._rows = Metrics.counter(_METRICS, "rows_written")

    def process(self, element):
        (table, _bucket, _shard), records = element
        # One writer per group: it appends row groups and cuts files at the target size; the
        # interval never triggers inside a group (the group is already the unit of time).
        writer = LakeWriter(self._root, _no_timer(self._settings))
        batch: list[dict] = []
        done = []
        try:
            for record in records:
                batch.append(record)
                if len(batch) >= self._settings.row_group_rows:
                    done += writer.write_arrow(table, records_to_arrow(table, batch))
                    batch = []
            if batch:
                done += writer.write_arrow(table, records_to_arrow(table, batch))
            done += writer.flush()
        except BaseException:
            writer.abort()
            raise
        for lf in done:
            self._files.inc()
            self._rows.inc(lf.rows)
            yield lf


class _WriteBundle(beam.DoFn):
    """Buffers a bundle's records and writes them when the bundle finishes (see ``mode="bundle"``)."""

    def __init__(self, root: str, settings: LakeSettings, table: str | None):
        self._root, self._settings, self._table = root, settings, table

    def setup(self):
        self._files = Metrics.counter(_METRICS, "files_written")
        self._rows = Metrics.counter(_METRICS, "rows_written")

    def start_bundle(self):
        self._buffer: dict[str, list[dict]] = {}

    def process(self, element):
        table, record = _route(element, self._table)
        self._buffer.setdefault(table, []).append(record)

    def finish_bundle(self):
        if not self._buffer:
            return
        writer = LakeWriter(self._root, _no_timer(self._settings))
        try:
            for table, records in self._buffer.items():
                for i in range(0, len(records), self._settings.row_group_rows):
                    writer.write_arrow(table, records_to_arrow(table, records[i:i + self._settings.row_group_rows]))
            files = writer.flush()
        except BaseException:
            writer.abort()
            raise
        self._buffer = {}
        for lf in files:
            self._files.inc()
            self._rows.inc(lf.rows)


def _no_timer(settings: LakeSettings) -> LakeSettings:
    from dataclasses import replace

    return replace(settings, flush_interval_s=1e12, max_open_files=4096)


class WriteToLake(beam.PTransform):
    """Write records to the Parquet lake at ``root`` (see the module docstring for the modes).

    ``table``: the lake table of every element (``events``, ``scans``, ``observations``,
    ``decisions``, ``ip_state``), or None to route :class:`Decoded` records by schema.
    ``shards``: files written in parallel per hour partition (grouped mode). ``window_s``: fixed
    event-time windows before grouping (grouped mode, streaming); late data fires again (allowed
    lateness ``allowed_lateness_s``), making more small files that compaction merges.
    """

    def __init__(self, root: str | Path, table: str | None = None, settings: LakeSettings | None = None, *,
                 mode: str = "grouped", shards: int = 1, window_s: float | None = None,
                 allowed_lateness_s: float = 86_400.0):
        super().__init__()
        if table is not None:
            spec(table)
        if mode not in ("grouped", "bundle"):
            raise ValueError(f"WriteToLake: mode={mode!r}; use 'grouped' (bounded, or windowed on a runner "
                             "with durable state) or 'bundle' (live pipelines that commit offsets)")
        if shards < 1:
            raise ValueError("WriteToLake: shards must be >= 1")
        if window_s is not None and (window_s <= 0 or mode != "grouped"):
            raise ValueError("WriteToLake: window_s must be > 0 and only applies to mode='grouped'")
        self._root = str(root)
        self._table = table
        self._settings = settings or LakeSettings()
        self._settings.validate()
        self._mode, self._shards = mode, shards
        self._window_s, self._lateness = window_s, allowed_lateness_s

    def expand(self, pcoll):
        if self._mode == "bundle":
            return pcoll | "WriteBundles" >> beam.ParDo(_WriteBundle(self._root, self._settings, self._table))
        keyed = pcoll | "KeyByPartition" >> beam.ParDo(_KeyByPartition(self._table, self._shards))
        if self._window_s is not None:
            keyed = keyed | "Window" >> beam.WindowInto(
                window.FixedWindows(self._window_s),
                trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
                accumulation_mode=trigger.AccumulationMode.DISCARDING,
                allowed_lateness=self._lateness)
        return (keyed
                | "GroupByPartition" >> beam.GroupByKey()
                | "WriteFiles" >> beam.ParDo(_WriteGroups(self._root, self._settings)))

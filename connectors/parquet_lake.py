"""The Parquet lake: scanflow records as hive-partitioned Parquet files, written atomically.

(Just over ~500 lines: one concern, the lake's files; its reads are :mod:`connectors.duckdb_catalog`.)

Layout (``root`` is ``[lake] root``)::

    root/<table>/date=YYYY-MM-DD/hour=HH/part-<content digest>.parquet
    root/_staging/<random>.parquet.tmp        files being written (never read by queries)
    root/_locks/                              compaction locks

=============  ===============  ==============  ======================================
table          Avro record      partitioned by  duplicate key (ids kept in the files)
=============  ===============  ==============  ======================================
events         ScanEvent        timestamp       event_id
scans          ScanDone         ended_at        scan_id, target, agent_id, started_at
observations   Observation      ended_at        ip, scan_id, policy
decisions      Decision         decided_at      decision_id
ip_state       IpState          updated_at      ip, policy, updated_at
=============  ===============  ==============  ======================================

Columns follow the Avro record field by field: nested records are flattened with ``_``
(``port_set`` -> ``port_set_name``, ``port_set_version``, ``port_set_ports``), arrays stay lists
(``Observation.responses`` is a list of structs), enums are strings, ``timestamp-micros`` are
``timestamp[us, UTC]``, bytes (banners) are binary. ``date`` and ``hour`` (UTC) exist only in the
path, as hive partitions. Rows are sorted by time and key inside each row group.

**Atomic finalize.** A file is written under ``_staging/``, fsynced, then renamed into its partition
(``os.replace``, atomic on a POSIX file system) and the directory fsynced: a query sees a whole file
or nothing. Files are named after a digest of the keys they hold, so writing the same rows again
(a retried Beam bundle, a re-run simulation) replaces the file instead of adding one. Duplicates that
still happen (at-least-once delivery, different batching) are removed by the catalog's ``*_dedup``
views and by :func:`compact`. Object stores without an atomic rename are not supported.

**Sizing.** :class:`LakeWriter` keeps one open file per partition, appends a row group every
``row_group_rows`` rows and finalizes the file at ``target_file_mb`` or ``flush_interval_s`` after it
was opened (whichever first), so a live writer makes at most one file per partition per interval.
:func:`compact` merges a partition's small files (and drops duplicates) up to the target size.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from connectors.lake_settings import LakeSettings
from connectors.schema_registry import default_registry

HOUR_MICROS = 3_600_000_000
STAGING = "_staging"
LOCKS = "_locks"


@dataclass(frozen=True)
class TableSpec:
    """One lake table: its Avro record, the event-time column that partitions it, its key."""

    name: str
    record: str
    time_column: str
    key: tuple[str, ...]

    @property
    def schema(self) -> pa.Schema:
        """The Arrow schema of the files (without the ``date``/``hour`` partition columns)."""
        return arrow_schema(self.record)

    @property
    def sort_keys(self) -> list[tuple[str, str]]:
        """Order of rows inside a row group: time, then the key (a total order, so equal content
        gives equal files)."""
        cols = [self.time_column] + [k for k in self.key if k != self.time_column]
        return [(c, "ascending") for c in cols]


TABLES: dict[str, TableSpec] = {t.name: t for t in (
    TableSpec("events", "ScanEvent", "timestamp", ("event_id",)),
    # One row per execution of a scan: a command run again (its agent lost the partition, or died
    # before committing) keeps its scan id, and both executions' packets went out.
    TableSpec("scans", "ScanDone", "ended_at", ("scan_id", "target", "agent_id", "started_at")),
    TableSpec("observations", "Observation", "ended_at", ("ip", "scan_id", "policy")),
    TableSpec("decisions", "Decision", "decided_at", ("decision_id",)),
    TableSpec("ip_state", "IpState", "updated_at", ("ip", "policy", "updated_at")),
)}
#: Which table a record of each Avro schema goes to.
TABLE_OF_RECORD = {t.record: t.name for t in TABLES.values()}


def spec(table: str) -> TableSpec:
    """The :class:`TableSpec` of ``table``, or ``ValueError`` listing the tables."""
    try:
        return TABLES[table]
    except KeyError:
        raise ValueError(f"unknown lake table {table!r}; tables: {', '.join(TABLES)}") from None


# ------------------------------------------------------------------------------------------------
# Avro -> Arrow


def _non_null(avro_type: Any) -> tuple[Any, bool]:
    if isinstance(avro_type, list):
        rest = [t for t in avro_type if t != "null"]
        return (rest[0] if len(rest) == 1 else rest), len(rest) != len(avro_type)
    return avro_type, False


def _arrow_type(avro_type: Any, named: dict[str, Any]) -> pa.DataType:
    avro_type, _ = _non_null(avro_type)
    if isinstance(avro_type, str):
        if avro_type in named:
            return _arrow_type(named[avro_type], named)
        return {"string": pa.string(), "int": pa.int32(), "long": pa.int64(), "boolean": pa.bool_(),
                "bytes": pa.binary(), "float": pa.float32(), "double": pa.float64()}[avro_type]
    kind = avro_type["type"]
    if avro_type.get("logicalType") == "timestamp-micros":
        return pa.timestamp("us", tz="UTC")
    if kind == "enum":
        named[avro_type["name"]] = "string"
        return pa.string()
    if kind == "array":
        return pa.list_(_arrow_type(avro_type["items"], named))
    if kind == "record":
        named[avro_type["name"]] = avro_type
        return pa.struct([(f["name"], _arrow_type(f["type"], named)) for f in avro_type["fields"]])
    return _arrow_type(kind, named)


_SCHEMAS: dict[str, pa.Schema] = {}
_FLATTEN: dict[str, tuple[tuple[str, str, str | None], ...]] = {}


def arrow_schema(record: str) -> pa.Schema:
    """Arrow schema of a lake table holding ``record`` (latest Avro version), nested records
    flattened one level with ``parent_child`` names."""
    if record not in _SCHEMAS:
        named: dict[str, Any] = {}
        fields, flatten = [], []
        for f in default_registry().latest(record).schema["fields"]:
            avro_type, _ = _non_null(f["type"])
            resolved = named.get(avro_type, avro_type) if isinstance(avro_type, str) else avro_type
            if isinstance(resolved, dict) and resolved.get("type") == "record":
                named[resolved["name"]] = resolved
                for sub in resolved["fields"]:
                    fields.append(pa.field(f"{f['name']}_{sub['name']}", _arrow_type(sub["type"], named)))
                    flatten.append((fields[-1].name, f["name"], sub["name"]))
            else:
                fields.append(pa.field(f["name"], _arrow_type(f["type"], named)))
                flatten.append((f["name"], f["name"], None))
        _SCHEMAS[record] = pa.schema(fields)
        _FLATTEN[record] = tuple(flatten)
    return _SCHEMAS[record]


def records_to_arrow(table: str, records: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Decoded records (dicts as :mod:`connectors.avro_codec` returns them: timestamps as int
    microseconds, enums as strings) -> an Arrow table of ``table``'s schema."""
    schema = spec(table).schema
    rows = records if isinstance(records, list) else list(records)
    columns = []
    for field, (_, parent, child) in zip(schema, _FLATTEN[spec(table).record]):
        if child is None:
            values = [r.get(parent) for r in rows]
        else:
            values = [(r.get(parent) or {}).get(child) for r in rows]
        if pa.types.is_list(field.type) and not pa.types.is_struct(field.type.value_type):
            values = [v if v is not None else [] for v in values]
        columns.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _int_times(t: pa.DataType) -> pa.DataType:
    """``t`` with every timestamp (also inside structs and lists) as int64 microseconds."""
    if pa.types.is_timestamp(t):
        return pa.int64()
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _int_times(f.type), f.nullable) for f in t])
    if pa.types.is_list(t):
        return pa.list_(_int_times(t.value_type))
    return t


def arrow_to_records(data: pa.Table) -> list[dict[str, Any]]:
    """Lake rows back to flat dicts (timestamps as int microseconds, nested ones too), e.g. for a replay."""
    cast = []
    for field in data.schema:
        col = data.column(field.name)
        want = _int_times(field.type)
        cast.append(col.cast(want) if want != field.type else col)
    return pa.Table.from_arrays(cast, names=data.schema.names).to_pylist()


def conform(data: pa.Table, schema: pa.Schema) -> pa.Table:
    """``data`` with ``schema``'s columns in its order: columns a file written before a schema version
    added them (e.g. ScanEvent v1 files: no ``protocol``, ``status``, ``tls_*``) become nulls."""
    missing = [f for f in schema if f.name not in data.column_names]
    for f in missing:
        data = data.append_column(f.name, pa.nulls(len(data), type=f.type))
    return data.select(schema.names).cast(schema)


# ------------------------------------------------------------------------------------------------
# Partitions and files


class LakeFile(NamedTuple):
    """A finalized file: its table, path relative to the lake root, rows and bytes."""

    table: str
    path: str
    rows: int
    bytes: int


def partition_dir(table: str, hour_bucket: int) -> str:
    """``<table>/date=YYYY-MM-DD/hour=HH`` for an hour bucket (hours since the Unix epoch, UTC)."""
    t = time.gmtime(hour_bucket * 3600)
    return f"{table}/date={t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}/hour={t.tm_hour:02d}"


def hour_buckets(data: pa.Table, table: str) -> dict[int, pa.Table]:
    """Split rows by the UTC hour of their time column (null or pre-1970 times go to hour 0)."""
    micros = data.column(spec(table).time_column).cast(pa.int64()).fill_null(0).to_numpy()
    buckets = np.maximum(micros, 0) // HOUR_MICROS
    if len(buckets) and buckets.min() == buckets.max():
        return {int(buckets[0]): data}
    order = np.argsort(buckets, kind="stable")
    sorted_b = buckets[order]
    cuts = np.flatnonzero(np.diff(sorted_b)) + 1
    out = {}
    for idx in np.split(order, cuts):
        if len(idx):
            out[int(buckets[idx[0]])] = data.take(pa.array(idx))
    return out


def key_digest_update(hasher: Any, data: pa.Table, table: str) -> None:
    """Feed the key columns of ``data`` (in row order) to ``hasher``: the content part of file names."""
    for name in spec(table).key:
        col = data.column(name)
        if pa.types.is_timestamp(col.type) or pa.types.is_integer(col.type):
            hasher.update(np.asarray(col.cast(pa.int64()).fill_null(-1).to_numpy()).tobytes())
        else:
            hasher.update("\x1f".join("" if v is None else v for v in col.to_pylist()).encode())
        hasher.update(b"\x1e")


def staging_path(root: Path) -> Path:
    """A fresh path under ``root/_staging`` (the directory is created)."""
    staging = root / STAGING
    staging.mkdir(parents=True, exist_ok=True)
    return staging / f"{uuid.uuid4().hex}.parquet.tmp"


def finalize(root: Path, staged: Path, rel_dir: str, digest: str) -> Path:
    """Move a complete staged file into ``root/rel_dir`` as ``part-<digest>.parquet``, durably."""
    with open(staged, "rb") as fh:
        os.fsync(fh.fileno())
    target_dir = root / rel_dir
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / f"part-{digest}.parquet"
    os.replace(staged, target)
    fd = os.open(target_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return target


class _OpenFile:
    """One partition's file being written: a Parquet writer on a staged path and its row buffer."""

    def __init__(self, root: Path, table: str, bucket: int, settings: LakeSettings, opened_at: float):
        self.table, self.bucket = table, bucket
        self.path = staging_path(root)
        self.writer = pq.ParquetWriter(self.path, spec(table).schema,
                                       compression=None if settings.compression == "none" else settings.compression)
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.rows = 0
        self.opened_at = opened_at
        self.hasher = hashlib.blake2b(digest_size=16)

    def write_row_group(self) -> None:
        if not self.buffered:
            return
        data = pa.concat_tables(self.buffer).sort_by(spec(self.table).sort_keys)
        key_digest_update(self.hasher, data, self.table)
        self.writer.write_table(data, row_group_size=len(data))
        self.rows += len(data)
        self.buffer, self.buffered = [], 0

    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0


class LakeWriter:
    """Writes records to the lake with atomic, size- and time-bounded files (no Beam needed).

    ``write(table, records)`` buffers; a partition's file gets a row group every ``row_group_rows``
    rows and is finalized when it reaches ``target_file_mb``, when ``flush_interval_s`` has passed
    since it was opened (checked on every write and by :meth:`poll`), when more than
    ``max_open_files`` partitions are open (the least recently written is finalized), or on
    :meth:`flush`/:meth:`close`. Nothing buffered is visible before it is finalized, and nothing is
    durable before: call :meth:`flush` before acknowledging the input. ``clock`` (seconds, monotonic)
    is a parameter so tests and simulations control time. Not thread-safe.
    """

    def __init__(self, root: str | Path, settings: LakeSettings | None = None, *,
                 clock: Callable[[], float] = time.monotonic):
        self.root = Path(root)
        self.settings = settings or LakeSettings()
        self.settings.validate()
        self.clock = clock
        self._open: OrderedDict[tuple[str, int], _OpenFile] = OrderedDict()
        self.finalized: list[LakeFile] = []
        self.rows_written = 0

    def write(self, table: str, records: Iterable[Mapping[str, Any]]) -> list[LakeFile]:
        """Buffer decoded records of ``table``; returns the files finalized meanwhile."""
        rows = records if isinstance(records, list) else list(records)
        if not rows:
            return self.poll()
        return self.write_arrow(table, records_to_arrow(table, rows))

    def write_arrow(self, table: str, data: pa.Table) -> list[LakeFile]:
        """Buffer an Arrow table with ``table``'s schema; returns the files finalized meanwhile."""
        expected = spec(table).schema
        if data.schema != expected:
            data = data.select(expected.names).cast(expected)
        done: list[LakeFile] = []
        now = self.clock()
        for bucket, part in hour_buckets(data, table).items():
            key = (table, bucket)
            f = self._open.get(key)
            if f is None:
                f = self._open[key] = _OpenFile(self.root, table, bucket, self.settings, now)
                while len(self._open) > self.settings.max_open_files:
                    done.append(self._finalize(next(iter(self._open))))
            else:
                self._open.move_to_end(key)
            f.buffer.append(part)
            f.buffered += len(part)
            self.rows_written += len(part)
            if f.buffered >= self.settings.row_group_rows:
                f.write_row_group()
                if f.size() >= self.settings.target_file_bytes:
                    done.append(self._finalize(key))
        return done + self.poll()

    def poll(self) -> list[LakeFile]:
        """Finalize the files opened ``flush_interval_s`` or more ago."""
        now = self.clock()
        due = [k for k, f in self._open.items() if now - f.opened_at >= self.settings.flush_interval_s]
        return [self._finalize(k) for k in due]

    def flush(self) -> list[LakeFile]:
        """Finalize every open file: afterwards everything written is visible and durable."""
        return [self._finalize(k) for k in list(self._open)]

    def close(self) -> list[LakeFile]:
        """:meth:`flush`."""
        return self.flush()

    def abort(self) -> None:
        """Drop everything not finalized (staged files are deleted)."""
        for f in self._open.values():
            f.writer.close()
            f.path.unlink(missing_ok=True)
        self._open.clear()

    def __enter__(self) -> "LakeWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _finalize(self, key: tuple[str, int]) -> LakeFile:
        f = self._open.pop(key)
        f.write_row_group()
        f.writer.close()
        target = finalize(self.root, f.path, partition_dir(f.table, f.bucket), f.hasher.hexdigest())
        lf = LakeFile(f.table, str(target.relative_to(self.root)), f.rows, target.stat().st_size)
        self.finalized.append(lf)
        return lf


def write_table(root: str | Path, table: str, data: pa.Table | Iterable[Mapping[str, Any]],
                settings: LakeSettings | None = None) -> list[LakeFile]:
    """Write a whole batch (records or an Arrow table) and finalize it: one call, visible at return."""
    with LakeWriter(root, settings) as writer:
        if isinstance(data, pa.Table):
            writer.write_arrow(table, data)
        else:
            writer.write(table, data)
        return writer.flush()


# ------------------------------------------------------------------------------------------------
# Listing and compaction


def table_files(root: str | Path, table: str) -> list[Path]:
    """The finalized files of ``table``, sorted by path."""
    return sorted((Path(root) / spec(table).name).glob("date=*/hour=*/*.parquet"))


@dataclass(frozen=True)
class CompactionResult:
    """What :func:`compact` did to one table."""

    table: str
    partitions: int
    files_before: int
    files_after: int
    rows_before: int
    rows_after: int
    skipped: str = ""


def compact(root: str | Path, tables: Iterable[str] | None = None, settings: LakeSettings | None = None, *,
            dedupe: bool = True, stale_staging_s: float = 24 * 3600.0) -> list[CompactionResult]:
    """Merge each partition's small files (under half the target size) into target-sized files,
    dropping rows whose key was already seen (``dedupe``).

    New files are finalized before the old ones are deleted, so a query running meanwhile may see
    a row twice (the ``*_dedup`` views hide that) but never misses one; a crash in between leaves
    duplicates the next compaction removes. One compaction per table at a time (a lock file); a
    table already being compacted is skipped. Staged files older than ``stale_staging_s`` (left by
    crashed writers) are deleted.
    """
    import duckdb  # deferred: only compaction needs it here

    root = Path(root)
    settings = settings or LakeSettings()
    _clean_staging(root, stale_staging_s)
    results = []
    for name in (list(tables) if tables is not None else list(TABLES)):
        t = spec(name)
        (root / LOCKS).mkdir(parents=True, exist_ok=True)
        with open(root / LOCKS / f"compact-{t.name}.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                results.append(CompactionResult(t.name, 0, 0, 0, 0, 0, "another compaction holds the lock"))
                continue
            results.append(_compact_table(duckdb, root, t, settings, dedupe))
    return results


def _compact_table(duckdb, root: Path, t: TableSpec, settings: LakeSettings, dedupe: bool) -> CompactionResult:
    by_dir: dict[Path, list[Path]] = {}
    for path in table_files(root, t.name):
        by_dir.setdefault(path.parent, []).append(path)
    partitions = files_before = files_after = rows_before = rows_after = 0
    small_limit = settings.target_file_bytes // 2
    for directory, files in by_dir.items():
        small = [f for f in files if f.stat().st_size < small_limit]
        files_before += len(files)
        if len(small) < 2:
            files_after += len(files)
            continue
        partitions += 1
        con = duckdb.connect(":memory:")
        try:
            paths = ", ".join("'" + str(p).replace("'", "''") + "'" for p in small)
            keys = ", ".join(f'"{k}"' for k in t.key)
            order = ", ".join(f'"{c}"' for c, _ in t.sort_keys)
            source = f"read_parquet([{paths}], hive_partitioning = false, union_by_name = true)"
            rows_before += con.sql(f"SELECT count(*) FROM {source}").fetchall()[0][0]
            select = (f"SELECT DISTINCT ON ({keys}) * FROM {source} ORDER BY {order}" if dedupe
                      else f"SELECT * FROM {source} ORDER BY {order}")
            reader = con.sql(select).to_arrow_reader(settings.row_group_rows)
            written = _write_rolling(root, t, directory.relative_to(root).as_posix(), reader, settings)
        finally:
            con.close()
        outputs = {root / w.path for w in written}
        for old in small:
            if old not in outputs:
                old.unlink(missing_ok=True)
        rows_after += sum(w.rows for w in written)
        files_after += len(files) - len(small) + len(written)
    return CompactionResult(t.name, partitions, files_before, files_after, rows_before, rows_after)


def _write_rolling(root: Path, t: TableSpec, rel_dir: str, reader: pa.RecordBatchReader,
                   settings: LakeSettings) -> list[LakeFile]:
    """Write batches into files cut at the target size, each finalized atomically."""
    out: list[LakeFile] = []
    writer = path = hasher = None
    rows = 0
    compression = None if settings.compression == "none" else settings.compression
    schema = t.schema

    def close() -> None:
        nonlocal writer
        writer.close()
        target = finalize(root, path, rel_dir, hasher.hexdigest())
        out.append(LakeFile(t.name, str(target.relative_to(root)), rows, target.stat().st_size))
        writer = None

    for batch in reader:
        data = conform(pa.Table.from_batches([batch]), schema)
        if writer is None:
            path, rows = staging_path(root), 0
            writer = pq.ParquetWriter(path, schema, compression=compression)
            hasher = hashlib.blake2b(digest_size=16)
        key_digest_update(hasher, data, t.name)
        writer.write_table(data, row_group_size=len(data))
        rows += len(data)
        if path.stat().st_size >= settings.target_file_bytes:
            close()
    if writer is not None:
        close()
    return out


def _clean_staging(root: Path, older_than_s: float) -> None:
    staging = root / STAGING
    if not staging.is_dir():
        return
    cutoff = time.time() - older_than_s
    for f in staging.glob("*.tmp"):
        try:
            if f.stat().st_mtime < cutoff:
                f.unlink()
        except FileNotFoundError:
            pass

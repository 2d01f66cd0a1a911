"""The intermediates the canned queries read, computed once per report or on the fly.

Large lakes: :meth:`Intermediates.prepare` computes each intermediate once per report (deduplicated
scans and decisions, the distinct (policy, ip, port) cells, the per-round answers) as temporary
tables of the :class:`connectors.duckdb_catalog.Catalog`. For the whole lake they come from
per-partition caches (:class:`PartitionCache`) and an incremental rollup of the cells
(:class:`CellsRollup`) that only read partitions not seen before. Per-round statistics (responsive,
change and stable rates) are computed on a deterministic sample of the addresses
(``hash(ip) % n = 0``) when the lake holds more than ``SAMPLE_ABOVE`` response rows.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from connectors.duckdb_sql import as_time, sql_filters, sql_quote

if TYPE_CHECKING:
    from connectors.duckdb_catalog import Catalog

#: Above this many response rows, per-round statistics are computed on a sample of the addresses.
SAMPLE_ABOVE = 10_000_000
#: Response rows the per-round sample aims at.
SAMPLE_TARGET = 4_000_000


class Intermediates:
    """How :class:`connectors.duckdb_catalog.Catalog` prepares and reads the report's intermediates
    (a mixin: it uses the catalog's connection, views and plumbing)."""

    # -- intermediates: prepared once for a window, or computed on the fly -----------------------

    def prepare(self, *, start: Any = None, end: Any = None, sample: int | None = None,
                cache: bool = True) -> dict[str, Any]:
        """Compute the report's intermediates once, as temporary tables that the canned queries on
        the same window then read: per-day scan totals, per-day back-off counts, the distinct
        (policy, ip, port) cells and the per-round answers (of 1 address in ``sample``; default:
        exact up to ``SAMPLE_ABOVE`` response rows). For the whole lake (no ``start``/``end``) and
        ``cache``, they come from per-partition caches and the cells rollup under ``_rollup/``, so
        only partitions not seen before are read. Returns the sample factor and timings."""
        import time

        timings: dict[str, float] = {}
        mark = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal mark
            now = time.perf_counter()
            timings[name] = round(now - mark, 3)
            mark = now

        window = (as_time(start), as_time(end))
        rows = self.rows(self.source)
        n = sample or (1 if rows <= SAMPLE_ABOVE else 1 << max(0, (rows // SAMPLE_TARGET).bit_length()))
        self._prepared = None
        if cache and window == (None, None):
            persist = _writable(self.root)
            tables = {
                "_scans_daily": PartitionCache(self, f"scans_daily{self._clock_tag}", "scans", self._scans_daily_sql, persist=persist),
                "_decisions_daily": PartitionCache(self, f"decisions_daily{self._clock_tag}", "decisions", self._decisions_daily_sql,
                                                   persist=persist),
                "_sample": PartitionCache(self, f"sample-{n}", self.source,
                                          lambda rows, part: self._sample_rows_sql(rows, "true", n, part=part),
                                          persist=persist, settle=self.source == "events"),
            }
            for name, cached in tables.items():
                self.con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {cached.sql()}")
                lap(name.strip("_"))
            cells = CellsRollup(self).cells_sql() if persist else None
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE _cells AS "
                             f"{cells or 'SELECT DISTINCT policy, ip, port FROM responses'}")
            lap("cells")
        else:
            for name, (sql, params) in {"_scans_daily": self._raw_scans_daily(start, end),
                                        "_decisions_daily": self._raw_decisions_daily(start, end),
                                        "_sample": self._raw_sample(start, end, n)}.items():
                self.con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {sql}", params)
                lap(name.strip("_"))
            src, params = self._raw_responses(None, start, end)
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE _cells AS SELECT DISTINCT policy, ip, port FROM {src}",
                             params)
            lap("cells")
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE _rounds AS {self._rounds_sql('_sample')}")
        lap("rounds")
        self._prepared = {"window": window, "sample": n}
        return {"window": window, "sample": n, "timings": timings}

    @property
    def _clock_tag(self) -> str:
        """Suffix of the caches whose days depend on the lake's clock (a compressed run's)."""
        clock = self.clock
        return f"-c{clock.scale:.6g}-{clock.start:.0f}" if clock.compressed and clock.start is not None else ""

    def _is_prepared(self, start: Any, end: Any) -> bool:
        return self._prepared is not None and self._prepared["window"] == (as_time(start), as_time(end))

    # -- the four shapes every canned query reads: from prepared tables or straight from the views

    def _scans_daily_sql(self, rows: str, part: bool = False, where: str = "true") -> str:
        """Per (UTC day, policy): ScanDones, addresses probed, packets, bytes, first start, last end;
        duplicates (same scan_id and target) counted once."""
        p = "_part, " if part else ""
        return f"""SELECT {p}_day(ended_at) AS day, policy, count(*) AS scans,
                          CAST(sum(addresses_probed) AS BIGINT) AS attempts, CAST(sum(packets_sent) AS BIGINT) AS packets,
                          CAST(sum(bytes_sent) AS BIGINT) AS bytes, min(started_at) AS first_started,
                          max(ended_at) AS last_ended
                   FROM (SELECT {p}scan_id, target, agent_id, started_at, any_value(policy) AS policy,
                                any_value(ended_at) AS ended_at, any_value(addresses_probed) AS addresses_probed,
                                any_value(packets_sent) AS packets_sent, any_value(bytes_sent) AS bytes_sent
                         FROM {rows} WHERE {where} GROUP BY {p}scan_id, target, agent_id, started_at)
                   GROUP BY ALL"""

    def _decisions_daily_sql(self, rows: str, part: bool = False, where: str = "true") -> str:
        """Per (UTC day, policy, back-off interval in days, responsive or not): decisions, once each."""
        p = "_part, " if part else ""
        return f"""SELECT {p}_day(decided_at) AS day, policy,
                          round(_vdays(epoch_us(next_scan_at) - epoch_us(decided_at)), 1) AS interval_days,
                          status IN ('RESPONSIVE_ESTIMATED', 'RESPONSIVE_UNESTIMATED') AS responsive,
                          count(*) AS decisions
                   FROM (SELECT {p}decision_id, any_value(policy) AS policy, any_value(decided_at) AS decided_at,
                                any_value(next_scan_at) AS next_scan_at, any_value(status) AS status
                         FROM {rows} WHERE {where} GROUP BY {p}decision_id)
                   GROUP BY ALL"""

    def _sample_rows_sql(self, rows: str, where: str, sample: int, part: bool = False,
                         scan_policy: str = "_scan_policy") -> str:
        """Response rows of 1 address in ``sample`` (``hash(ip) % sample = 0``): from events
        ``policy, ip, scan_id, port, ts``; from observations one row per round with its fingerprint."""
        cond = f"hash(ip) % {int(sample)} = 0" if sample > 1 else "true"
        if self.source == "observations":
            p = "_part, " if part else ""
            return (f"SELECT DISTINCT ON ({p}policy, ip, scan_id) {p}policy, ip, scan_id, ended_at AS ts, "
                    f"fingerprint AS answer FROM {rows} WHERE fingerprint IS NOT NULL AND {cond} AND {where}")
        p = "e._part, " if part else ""
        return (f"SELECT {p}coalesce(s.policy, 'UNKNOWN') AS policy, e.ip, e.scan_id, e.port, e.\"timestamp\" AS ts "
                f"FROM (SELECT * FROM {rows} WHERE {cond} AND {where}) e LEFT JOIN {scan_policy} s USING (scan_id)")

    def _rounds_sql(self, sample_rows: str) -> str:
        """Per-round answers ``policy, ip, scan_id, ts, answer`` from sample rows. ``answer`` is the
        observation's fingerprint; from events alone, the open-port set (raw banners carry dates
        and nonces that only the policy core's normaliser removes)."""
        if self.source == "observations":
            return f"SELECT DISTINCT ON (policy, ip, scan_id) policy, ip, scan_id, ts, answer FROM {sample_rows}"
        return (f"SELECT policy, ip, scan_id, min(ts) AS ts, list(DISTINCT port ORDER BY port)::VARCHAR AS answer "
                f"FROM {sample_rows} GROUP BY policy, ip, scan_id")

    def _raw_scans_daily(self, start: Any, end: Any) -> tuple[str, list]:
        where, params = sql_filters("ended_at", None, start, end)
        return self._scans_daily_sql("scans", where=where), params

    def _raw_decisions_daily(self, start: Any, end: Any) -> tuple[str, list]:
        where, params = sql_filters("decided_at", None, start, end)
        return self._decisions_daily_sql("decisions", where=where), params

    def _raw_sample(self, start: Any, end: Any, sample: int = 1) -> tuple[str, list]:
        table = self.source
        where, params = sql_filters("ended_at" if table == "observations" else '"timestamp"', None, start, end)
        return self._sample_rows_sql(table, where, sample, scan_policy=_SCAN_POLICY_SQL), params

    def _raw_responses(self, policy: str | None, start: Any, end: Any) -> tuple[str, list]:
        where, params = sql_filters("ts", policy, start, end)
        return f"(SELECT * FROM ({self._responses_sql()}) WHERE {where})", params

    def _cells_src(self, policy: str | None, start: Any, end: Any) -> tuple[str, list]:
        if self._is_prepared(start, end):
            where, params = sql_filters(None, policy, None, None)
            return f"(SELECT DISTINCT ip, port FROM _cells WHERE {where})", params
        src, params = self._raw_responses(policy, start, end)
        return f"(SELECT DISTINCT ip, port FROM {src})", params

    def _src(self, shape: str, policy: str | None, start: Any, end: Any) -> tuple[str, list, int]:
        """``shape`` (scans_daily, decisions_daily, rounds) for a window and policy, and the
        sample factor behind it."""
        pol, pparams = sql_filters(None, policy, None, None)
        if self._is_prepared(start, end):
            return f"(SELECT * FROM _{shape} WHERE {pol})", pparams, self._prepared["sample"]
        if shape == "rounds":
            sql, params = self._raw_sample(start, end)
            sql = self._rounds_sql(f"({sql})")
        else:
            sql, params = getattr(self, f"_raw_{shape}")(start, end)
        return f"(SELECT * FROM ({sql}) WHERE {pol})", params + pparams, 1


SETTLE_HOURS = 24.0
_SCAN_POLICY_SQL = "(SELECT scan_id, any_value(policy) AS policy FROM scans GROUP BY scan_id)"


def _hour_of(rel_dir: str) -> int:
    """Hours since the epoch of a partition directory ``<table>/date=YYYY-MM-DD/hour=HH``."""
    _, date, hour = rel_dir.split("/")
    day = _dt.date.fromisoformat(date.partition("=")[2])
    return (day - _dt.date(1970, 1, 1)).days * 24 + int(hour.partition("=")[2])


def _partitions(cat: Catalog, table: str) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for path in cat.files[table]:
        out.setdefault(path.parent.relative_to(cat.root).as_posix(), []).append(path)
    return out


def _settled(cat: Catalog, parts: dict[str, list[Path]], settle: bool, settle_hours: float = SETTLE_HOURS) -> set[str]:
    """Partitions whose derived data will not change any more: all of them, or (``settle``: events,
    whose policy comes from ScanDones that arrive later) those ``settle_hours`` older than the
    newest scans partition. Lake time, not the wall clock: replayed and simulated data is old."""
    if not settle:
        return set(parts)
    newest = max((_hour_of(p.parent.relative_to(cat.root).as_posix()) for p in cat.files["scans"]), default=None)
    return {k for k in parts if newest is not None and _hour_of(k) <= newest - settle_hours}


def _ensure_scan_policy(cat: Catalog, min_hour: int | None) -> None:
    """``_scan_policy`` (scan_id -> policy) from the scans partitions an event at or after
    ``min_hour`` can end in (an hour of margin for agent clock skew); None: every scan."""
    have = getattr(cat, "_scan_policy_from", "none")
    if have != "none" and (have is None or (min_hour is not None and have <= min_hour)):
        return
    files = [p for p in cat.files["scans"]
             if min_hour is None or _hour_of(p.parent.relative_to(cat.root).as_posix()) >= min_hour - 1]
    source = _files_sql(files) if files else "scans"
    cat.con.execute(f"CREATE OR REPLACE TEMP TABLE _scan_policy AS "
                    f"SELECT scan_id, any_value(policy) AS policy FROM {source} GROUP BY scan_id")
    cat._scan_policy_from = min_hour


def _rows_with_part(files: list[Path]) -> str:
    return ("(SELECT * EXCLUDE (filename), regexp_extract(filename, '(date=[^/]+/hour=[^/]+)', 1) AS _part "
            f"FROM {_files_sql(files, filename=True)})")


def _writable(root: Path) -> bool:
    import os

    return os.access(root if root.exists() else root.parent, os.W_OK)


class PartitionCache:
    """A table derived partition by partition (duplicates share a partition, so deduplicating
    within one is exact), cached as ``root/_rollup/<name>/<partition>/<digest>.parquet``.

    The digest is of the partition's file names, which are content digests: a cached result is
    valid exactly as long as the partition holds the same files. Only partitions without a valid
    result are read; unsettled partitions (see :func:`_settled`) are always read and never cached.
    ``build(rows, part)`` is the per-partition SQL over ``rows`` (the table's columns plus
    ``_part``, which it must keep in its output).
    """

    VERSION = 1

    def __init__(self, catalog: Catalog, name: str, table: str, build, *, persist: bool = True,
                 settle: bool = False):
        self.cat, self.table, self.build = catalog, table, build
        self.persist, self.settle = persist, settle
        self.dir = catalog.root / "_rollup" / f"{name}.v{self.VERSION}"

    def sql(self) -> str:
        """SQL of the derived rows of every partition (without ``_part``)."""
        import hashlib

        parts = _partitions(self.cat, self.table)
        settled = _settled(self.cat, parts, self.settle) if self.persist else set()
        live = [p for k, v in parts.items() if k not in settled for p in v]
        cached, missing = [], {}
        for k in sorted(settled):
            digest = hashlib.blake2b("\n".join(sorted(p.name for p in parts[k])).encode(), digest_size=16).hexdigest()
            path = self.dir / k / f"{digest}.parquet"
            cached.append(path)
            if not path.exists():
                missing[k] = path
        if self.settle and (missing or live or not parts):
            hours = [_hour_of(k) for k in missing] + [_hour_of(p.parent.relative_to(self.cat.root).as_posix())
                                                      for p in live]
            _ensure_scan_policy(self.cat, min(hours) if hours else None)
        if missing:
            self._write(missing, [p for k in missing for p in parts[k]])
        pieces = []
        if cached:
            pieces.append(f"SELECT * FROM {_files_sql(cached)}")
        if live or not parts:
            rows = _rows_with_part(live) if live else f"(SELECT *, NULL::VARCHAR AS _part FROM {self.table})"
            pieces.append(f"SELECT * EXCLUDE (_part) FROM ({self.build(rows, True)})")
        return " UNION ALL BY NAME ".join(pieces)

    def _write(self, missing: dict[str, Path], files: list[Path]) -> None:
        import os

        import pyarrow.compute as pc

        from connectors.parquet_lake import staging_path

        result = self.cat.con.sql(self.build(_rows_with_part(files), True)).to_arrow_table()
        keys = result.column("_part")
        data = result.drop_columns(["_part"])
        for rel_dir, path in missing.items():
            piece = data.filter(pc.equal(keys, rel_dir.split("/", 1)[1]))
            staged = staging_path(self.cat.root)
            pq.write_table(piece, staged, compression="zstd")
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, path)
            for old in path.parent.glob("*.parquet"):
                if old != path:
                    old.unlink(missing_ok=True)


class CellsRollup:
    """The distinct (policy, ip, port) cells of the whole lake, kept up to date incrementally.

    Stored as ``root/_rollup/cells-<source>.parquet`` (``policy, ip, port, first_ts, last_ts``)
    with a manifest of the partitions (and their file names) merged into it. Files are named after
    their content, so an unchanged partition has the same names: only new or changed partitions
    are read. Merging is idempotent (distinct cells, min/max times), so a re-read partition (new
    late files, compaction) is harmless. A partition is merged once it has settled
    (:func:`_settled`); unsettled partitions are read on every call. When a merged partition
    disappears (retention, deletion) the rollup is rebuilt from scratch.
    """

    VERSION = 1

    def __init__(self, catalog: Catalog):
        self.cat = catalog
        self.dir = catalog.root / "_rollup"
        self.data = self.dir / f"cells-{catalog.source}.v{self.VERSION}.parquet"
        self.manifest_path = self.dir / f"cells-{catalog.source}.v{self.VERSION}.json"

    def _manifest(self) -> dict:
        import json

        try:
            data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return {}
        return data if self.data.exists() else {}

    def cells_sql(self) -> str:
        """SQL of the lake's distinct ``policy, ip, port``, after merging what is new."""
        import fcntl

        parts = _partitions(self.cat, self.cat.source)
        if not parts:
            return "SELECT NULL::VARCHAR AS policy, NULL::VARCHAR AS ip, NULL::INTEGER AS port WHERE false"
        events = self.cat.source == "events"
        settled = _settled(self.cat, parts, events)
        (self.cat.root / "_locks").mkdir(parents=True, exist_ok=True)
        with open(self.cat.root / "_locks" / "rollup.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            merged = self._manifest().get("partitions", {})
            if any(k not in parts for k in merged):
                merged = {}  # data was removed: start again
            names = {k: sorted(p.name for p in v) for k, v in parts.items()}
            todo = sorted(k for k in settled if merged.get(k) != names[k])
            live = [p for k, v in parts.items() if k not in settled for p in v]
            hours = [_hour_of(k) for k in todo] + [_hour_of(k) for k in parts if k not in settled]
            if events and hours:
                _ensure_scan_policy(self.cat, min(hours))
            if todo:
                self._merge([p for k in todo for p in parts[k]], base=bool(merged))
                self._write_manifest({**merged, **{k: names[k] for k in todo}})
        rollup = f"SELECT policy, ip, port FROM read_parquet('{sql_quote(str(self.data))}')"
        if live:
            src = self.cat._responses_sql(_files_sql(live), "_scan_policy" if events else None)
            rollup = f"SELECT DISTINCT policy, ip, port FROM ({rollup} UNION ALL SELECT policy, ip, port FROM ({src}))"
        return rollup

    def _merge(self, files: list[Path], *, base: bool) -> None:
        import os

        from connectors.parquet_lake import staging_path

        events = self.cat.source == "events"
        src = self.cat._responses_sql(_files_sql(files), "_scan_policy" if events else None)
        new = f"SELECT policy, ip, port, min(ts) AS first_ts, max(ts) AS last_ts FROM ({src}) GROUP BY ALL"
        if base:
            new = (f"SELECT policy, ip, port, min(first_ts) AS first_ts, max(last_ts) AS last_ts FROM "
                   f"(SELECT * FROM read_parquet('{sql_quote(str(self.data))}') UNION ALL {new}) GROUP BY ALL")
        staged = staging_path(self.cat.root)
        self.cat.con.execute(f"COPY ({new} ORDER BY policy, ip, port) TO '{sql_quote(str(staged))}' "
                             "(FORMAT parquet, COMPRESSION zstd)")
        self.dir.mkdir(parents=True, exist_ok=True)
        os.replace(staged, self.data)

    def _write_manifest(self, partitions: dict[str, list[str]]) -> None:
        import json
        import os

        tmp = self.manifest_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"source": self.cat.source, "partitions": partitions}), encoding="utf-8")
        os.replace(tmp, self.manifest_path)


def _files_sql(files: list[Path], *, filename: bool = False) -> str:
    quoted = ", ".join("'" + sql_quote(str(p)) + "'" for p in files)
    extra = ", filename = true" if filename else ""
    return f"read_parquet([{quoted}], hive_partitioning = false, union_by_name = true{extra})"

"""DuckDB over the Parquet lake: :class:`Catalog` and its views for ad hoc SQL.

:class:`Catalog` opens an in-memory DuckDB (session time zone UTC) with these views:

``events`` ``scans`` ``observations`` ``decisions`` ``ip_state``
    every finalized file of each table (:mod:`connectors.parquet_lake`), with the hive partition
    columns ``date`` (DATE) and ``hour`` (INTEGER). A table without files is an empty view of the
    right columns, so queries work on a fresh lake.
``events_dedup`` ``scans_dedup`` ``observations_dedup`` ``decisions_dedup`` ``ip_state_dedup``
    one row per key (``event_id``; ``scan_id, target, agent_id, started_at``; ``ip, scan_id, policy``; ``decision_id``;
    ``ip, policy, updated_at``): the lake without at-least-once duplicates.
``ip_state_latest``
    the newest state per (ip, policy).
``responses``
    one row per open port per scan round: ``policy, ip, scan_id, ts, port, banner``; from
    ``observations`` when the lake has any (the scheduler's and the simulator's output), else from
    ``events`` joined to ``scans`` for the policy (a lake archived from the events topic).

Its canned queries of the reports (Table 1, rates, Figures 6 and 7, Table 4, detection rates) are
in :mod:`connectors.duckdb_queries`; the intermediates they read (:meth:`Catalog.prepare`, the
per-partition caches and the cells rollup) in :mod:`connectors.duckdb_intermediates`.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from connectors.duckdb_intermediates import Intermediates
from connectors.duckdb_queries import CannedQueries, Run
from connectors.duckdb_sql import sql_quote
from connectors.lake_meta import LakeClock, lake_clock
from connectors.parquet_lake import TABLES, spec, table_files

DEDUP_VIEWS = {name: f"{name}_dedup" for name in TABLES}


class Catalog(CannedQueries, Intermediates):
    """An in-memory DuckDB with the lake's views (see the module docstring).

    ``threads`` and ``memory_limit`` (e.g. ``"4GB"``) bound DuckDB. ``clock``: the lake's clock
    (default: its ``_run.json``, :func:`connectors.lake_meta.lake_clock`); the macros ``_day(t)``
    (the day of a time: virtual days of a compressed run) and ``_vdays(us)`` (a duration in
    microseconds as days of that clock) follow it. Close it (:meth:`close`, or use
    it as a context manager) when done.
    """

    def __init__(self, root: str | Path, *, threads: int | None = None, memory_limit: str | None = None,
                 clock: LakeClock | None = None):
        import duckdb  # deferred: heavy, and only lake commands need it

        self.root = Path(root)
        self.con = duckdb.connect(":memory:")
        self.con.execute("SET TimeZone = 'UTC'")
        # UTC day of a timestamp in integer arithmetic: ICU's time-zone-aware date_trunc is ~15x
        # slower on 10^7 rows, and the lake is UTC throughout.
        # A live run's lake is in compressed time (connectors.lake_meta): its "days" are virtual days
        # counted from the run's start, and durations are divided by the compression.
        self.clock = clock if clock is not None else lake_clock(self.root)
        if self.clock.compressed and self.clock.start is not None:
            start_us = int(self.clock.start * 1e6)
            day_us = int(round(self.clock.scale * 86_400e6))
            first = _dt.datetime.fromtimestamp(self.clock.start, _dt.timezone.utc).date().isoformat()
            self.con.execute(f"CREATE MACRO _day(t) AS DATE '{first}' + "
                             f"CAST(floor((epoch_us(t) - {start_us}) / {day_us}) AS INTEGER)")
        else:
            self.con.execute("CREATE MACRO _day(t) AS DATE '1970-01-01' + CAST(epoch_us(t) // 86400000000 AS INTEGER)")
        self.con.execute(f"CREATE MACRO _vdays(us) AS us / {86_400e6 * self.clock.scale!r}")
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        if memory_limit:
            self.con.execute(f"SET memory_limit = '{sql_quote(memory_limit)}'")
        self.files = {name: table_files(self.root, name) for name in TABLES}
        self.present = {name: bool(files) for name, files in self.files.items()}
        self._prepared: dict[str, Any] | None = None
        for name in TABLES:
            self._create_table_view(name)
        self.con.execute("CREATE VIEW ip_state_latest AS SELECT * FROM ip_state_dedup "
                         "QUALIFY row_number() OVER (PARTITION BY ip, policy ORDER BY updated_at DESC) = 1")
        self.con.execute(f"CREATE VIEW responses AS {self._responses_sql()}")

    def _create_table_view(self, name: str) -> None:
        if self.present[name]:
            pattern = str(self.root / name / "date=*" / "hour=*" / "*.parquet")
            source = (f"read_parquet('{sql_quote(pattern)}', hive_partitioning = true, union_by_name = true, "
                      "hive_types = {'date': DATE, 'hour': INTEGER})")
        else:
            schema = spec(name).schema
            empty = pa.table({**{f.name: pa.array([], f.type) for f in schema},
                              "date": pa.array([], pa.date32()), "hour": pa.array([], pa.int32())})
            self.con.register(f"_empty_{name}", empty)
            source = f"_empty_{name}"
        self.con.execute(f"CREATE VIEW {name} AS SELECT * FROM {source}")
        keys = ", ".join(f'"{k}"' for k in spec(name).key)
        self.con.execute(f"CREATE VIEW {DEDUP_VIEWS[name]} AS SELECT DISTINCT ON ({keys}) * FROM {name}")

    @property
    def source(self) -> str:
        """Where response rows come from: ``observations`` if the lake has any, else ``events``."""
        return "observations" if self.present["observations"] else "events"

    def _responses_sql(self, rows_from: str | None = None, scan_policy: str | None = None) -> str:
        """Response rows of ``rows_from`` (default: the source table's view)."""
        if self.source == "observations":
            return ("SELECT policy, ip, scan_id, ended_at AS ts, r.port AS port, r.banner AS banner "
                    f"FROM (SELECT policy, ip, scan_id, ended_at, unnest(responses) AS r FROM {rows_from or 'observations'})")
        policy = scan_policy or "(SELECT scan_id, any_value(policy) AS policy FROM scans GROUP BY scan_id)"
        return ("SELECT coalesce(s.policy, 'UNKNOWN') AS policy, e.ip, e.scan_id, e.\"timestamp\" AS ts, "
                f"e.port, e.banner FROM {rows_from or 'events'} e LEFT JOIN {policy} s USING (scan_id)")

    # -- plumbing ------------------------------------------------------------------------------

    def sql(self, query: str, params: Sequence[Any] | None = None) -> pa.Table:
        """Run any SQL against the views; the result as an Arrow table."""
        return self.con.sql(query, params=list(params) if params else None).to_arrow_table()

    def reader(self, query: str, params: Sequence[Any] | None = None, batch_rows: int = 65_536):
        """Run SQL and stream the result as an Arrow ``RecordBatchReader`` (for big results)."""
        return self.con.sql(query, params=list(params) if params else None).to_arrow_reader(batch_rows)

    def close(self) -> None:
        """Close the DuckDB connection."""
        self.con.close()

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def rows(self, table: str) -> int:
        """Rows in a table's files, from the Parquet footers (no data is read)."""
        return sum(pq.ParquetFile(p).metadata.num_rows for p in self.files[table])

    def counts(self, *, distinct: bool = True) -> dict[str, dict[str, int]]:
        """Per table: finalized files, rows, and (``distinct``) rows after dedupe (reads every key)."""
        out = {}
        for name in TABLES:
            entry = {"files": len(self.files[name]), "rows": self.rows(name)}
            if distinct:
                keys = ", ".join(f'"{k}"' for k in spec(name).key)
                entry["unique"] = self.con.sql(f"SELECT count(*) FROM (SELECT DISTINCT {keys} FROM {name})").fetchall()[0][0]
            out[name] = entry
        return out

    def latest_date(self, table: str) -> _dt.date | None:
        """The newest ``date`` partition of ``table`` (from the file names, without reading data)."""
        dates = {p.parent.parent.name.partition("=")[2] for p in self.files[table]}
        return _dt.date.fromisoformat(max(dates)) if dates else None

    def _other(self, run: Run) -> "Catalog":
        return self if run.root is None or Path(run.root).resolve() == self.root.resolve() else Catalog(run.root)

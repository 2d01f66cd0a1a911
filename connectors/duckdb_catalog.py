"""DuckDB over the Parquet lake: views for ad hoc SQL, and the canned queries of the reports.

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

Canned queries (methods; ``policy``/``start``/``end`` filters, times as ``datetime``, ISO text or
epoch seconds): :meth:`port_ranking` (the paper's Table 1), :meth:`derive_port_sets` (the standard
port-set derivation of :mod:`scanflow.portsets`), :meth:`responsive_rates`, :meth:`change_rates`,
:meth:`stable_share`, :meth:`backoff_distribution` and :meth:`backoff_latest` (Figure 6),
:meth:`attempts_over_time` (Figure 7), :meth:`traffic` (Table 4) and :meth:`detection_rates` (PDR
and DDR between two runs: set sizes counted in DuckDB, the formula and the honeypot exclusion of
:mod:`scanflow.metrics`). Duplicate rows never change an answer.

Large lakes: :meth:`prepare` computes each intermediate once per report (deduplicated scans and
decisions, the distinct (policy, ip, port) cells, the per-round answers). The cells of the whole
lake come from an incremental rollup (:class:`CellsRollup`) that only reads partitions it has not
seen. Per-round statistics (responsive, change and stable rates) are computed on a
deterministic sample of the addresses (``hash(ip) % n = 0``) when the lake holds more than
``SAMPLE_ABOVE`` response rows; their results carry the ``sample`` factor (1 = exact).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from connectors.parquet_lake import TABLES, spec, table_files
from scanflow.metrics import HONEYPOT_MIN_PORTS, CellCounts, compare_counts, count_cells, honeypot_threshold

DEDUP_VIEWS = {name: f"{name}_dedup" for name in TABLES}
EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
#: Above this many response rows, per-round statistics are computed on a sample of the addresses.
SAMPLE_ABOVE = 10_000_000
#: Response rows the per-round sample aims at.
SAMPLE_TARGET = 4_000_000


def as_time(value: Any) -> _dt.datetime | None:
    """A filter bound as an aware UTC datetime: ``datetime`` (naive = UTC), ISO text, epoch seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, _dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)
    if isinstance(value, _dt.date):
        return _dt.datetime(value.year, value.month, value.day, tzinfo=_dt.timezone.utc)
    if isinstance(value, (int, float)):
        return EPOCH + _dt.timedelta(seconds=float(value))
    try:
        return as_time(_dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")))
    except ValueError:
        try:
            return as_time(float(value))
        except ValueError:
            raise ValueError(f"{value!r} is not a time; write ISO 8601 (2019-12-02T00:00Z) or epoch seconds") from None


@dataclass(frozen=True)
class Run:
    """One side of a comparison: a policy's scans in a time window, in this lake or another."""

    policy: str | None = None
    start: Any = None
    end: Any = None
    root: str | Path | None = None


#: PDR and DDR of an efficient run against a standard run, with the set sizes behind them and the
#: honeypot exclusion applied (``pdr`` and ``ddr`` are computed by :mod:`scanflow.metrics`).
DetectionRates = CellCounts


class Catalog:
    """An in-memory DuckDB with the lake's views (see the module docstring).

    ``threads`` and ``memory_limit`` (e.g. ``"4GB"``) bound DuckDB. Close it (:meth:`close`, or use
    it as a context manager) when done.
    """

    def __init__(self, root: str | Path, *, threads: int | None = None, memory_limit: str | None = None):
        import duckdb  # deferred: heavy, and only lake commands need it

        self.root = Path(root)
        self.con = duckdb.connect(":memory:")
        self.con.execute("SET TimeZone = 'UTC'")
        # UTC day of a timestamp in integer arithmetic: ICU's time-zone-aware date_trunc is ~15x
        # slower on 10^7 rows, and the lake is UTC throughout.
        self.con.execute("CREATE MACRO _day(t) AS DATE '1970-01-01' + CAST(epoch_us(t) // 86400000000 AS INTEGER)")
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        if memory_limit:
            self.con.execute(f"SET memory_limit = '{_quote(memory_limit)}'")
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
            source = (f"read_parquet('{_quote(pattern)}', hive_partitioning = true, union_by_name = true, "
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
                "_scans_daily": PartitionCache(self, "scans_daily", "scans", self._scans_daily_sql, persist=persist),
                "_decisions_daily": PartitionCache(self, "decisions_daily", "decisions", self._decisions_daily_sql,
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
                          round((epoch_us(next_scan_at) - epoch_us(decided_at)) / 86400e6, 1) AS interval_days,
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
        where, params = _filters("ended_at", None, start, end)
        return self._scans_daily_sql("scans", where=where), params

    def _raw_decisions_daily(self, start: Any, end: Any) -> tuple[str, list]:
        where, params = _filters("decided_at", None, start, end)
        return self._decisions_daily_sql("decisions", where=where), params

    def _raw_sample(self, start: Any, end: Any, sample: int = 1) -> tuple[str, list]:
        table = self.source
        where, params = _filters("ended_at" if table == "observations" else '"timestamp"', None, start, end)
        return self._sample_rows_sql(table, where, sample, scan_policy=_SCAN_POLICY_SQL), params

    def _raw_responses(self, policy: str | None, start: Any, end: Any) -> tuple[str, list]:
        where, params = _filters("ts", policy, start, end)
        return f"(SELECT * FROM ({self._responses_sql()}) WHERE {where})", params

    def _cells_src(self, policy: str | None, start: Any, end: Any) -> tuple[str, list]:
        if self._is_prepared(start, end):
            where, params = _filters(None, policy, None, None)
            return f"(SELECT DISTINCT ip, port FROM _cells WHERE {where})", params
        src, params = self._raw_responses(policy, start, end)
        return f"(SELECT DISTINCT ip, port FROM {src})", params

    def _src(self, shape: str, policy: str | None, start: Any, end: Any) -> tuple[str, list, int]:
        """``shape`` (scans_daily, decisions_daily, rounds) for a window and policy, and the
        sample factor behind it."""
        pol, pparams = _filters(None, policy, None, None)
        if self._is_prepared(start, end):
            return f"(SELECT * FROM _{shape} WHERE {pol})", pparams, self._prepared["sample"]
        if shape == "rounds":
            sql, params = self._raw_sample(start, end)
            sql = self._rounds_sql(f"({sql})")
        else:
            sql, params = getattr(self, f"_raw_{shape}")(start, end)
        return f"(SELECT * FROM ({sql}) WHERE {pol})", params + pparams, 1

    # -- canned queries ------------------------------------------------------------------------

    def port_ranking(self, limit: int | None = 10, *, policy: str | None = None, start: Any = None,
                     end: Any = None) -> pa.Table:
        """Ports by the number of distinct IPs that answered on them (the paper's Table 1):
        ``rank, port, ips, share`` (share of all responding IPs), ties broken by port number."""
        cells, params = self._cells_src(policy, start, end)
        limit_sql = f"LIMIT {int(limit)}" if limit else ""
        return self.sql(f"""
            WITH cells AS {cells},
                 per_port AS (SELECT port, count(*) AS ips FROM cells GROUP BY port),
                 total AS (SELECT count(DISTINCT ip) AS n FROM cells)
            SELECT CAST(row_number() OVER (ORDER BY ips DESC, port) AS INTEGER) AS rank, port, ips,
                   ips / nullif((SELECT n FROM total), 0) AS share
            FROM per_port ORDER BY ips DESC, port {limit_sql}""", params)

    def cells(self, *, policy: str | None = None, start: Any = None, end: Any = None) -> pa.Table:
        """Distinct ``(ip, port)`` responses in the window: the input of port-set derivation and PDR."""
        cells, params = self._cells_src(policy, start, end)
        return self.sql(f"SELECT * FROM {cells}", params)

    def derive_port_sets(self, *, policy: str | None = None, start: Any = None, end: Any = None, **kwargs: Any):
        """The standard, silent and unknown port sets derived from the lake's responses with
        :func:`scanflow.portsets.derive_port_sets` (``kwargs`` are its options)."""
        from scanflow.portsets import derive_port_sets

        kwargs.setdefault("source_label", f"lake {self.root.name}: {self.source}"
                          + (f" policy={policy}" if policy else ""))
        return derive_port_sets(self.cells(policy=policy, start=start, end=end), **kwargs)

    def responsive_rates(self, *, policy: str | None = None, start: Any = None, end: Any = None) -> pa.Table:
        """Per UTC day and policy: address-rounds probed (ScanDone ``addresses_probed``), rounds in
        which an address answered, and their ratio (the paper's 2.3-2.7 %). ``sample`` > 1: the
        answering rounds are estimated from 1 address in ``sample``."""
        rounds, rparams, n = self._src("rounds", policy, start, end)
        scans, sparams, _ = self._src("scans_daily", policy, start, end)
        return self.sql(f"""
            WITH answered AS (SELECT _day(ts) AS day, policy, count(*) * {n} AS responsive_rounds
                              FROM {rounds} GROUP BY ALL),
                 probed AS (SELECT day, policy, CAST(sum(attempts) AS BIGINT) AS addresses_probed
                            FROM {scans} GROUP BY ALL)
            SELECT day, policy, coalesce(p.addresses_probed, 0) AS addresses_probed,
                   coalesce(a.responsive_rounds, 0) AS responsive_rounds,
                   a.responsive_rounds / nullif(p.addresses_probed, 0) AS responsive_rate, {n} AS sample
            FROM answered a FULL OUTER JOIN probed p USING (day, policy) ORDER BY day, policy""", rparams + sparams)

    def change_rates(self, *, policy: str | None = None, start: Any = None, end: Any = None) -> pa.Table:
        """Per UTC day and policy: answers compared with the same IP's previous answer, how many
        differed, and the rate."""
        rounds, params, n = self._src("rounds", policy, start, end)
        return self.sql(f"""
            WITH l AS (SELECT *, lag(answer) OVER (PARTITION BY policy, ip ORDER BY ts, scan_id) AS prev FROM {rounds})
            SELECT _day(ts) AS day, policy, count(*) AS compared,
                   count(*) FILTER (WHERE prev <> answer) AS changed,
                   count(*) FILTER (WHERE prev <> answer) / count(*) AS change_rate, {n} AS sample
            FROM l WHERE prev IS NOT NULL GROUP BY ALL ORDER BY day, policy""", params)

    def stable_share(self, *, policy: str | None = None, start: Any = None, end: Any = None) -> pa.Table:
        """Per policy: IPs that answered in two or more rounds, and the share of them whose answer
        never changed (the paper's fixed-point observation: ~70 %)."""
        rounds, params, n = self._src("rounds", policy, start, end)
        return self.sql(f"""
            WITH per_ip AS (SELECT policy, ip, count(DISTINCT answer) AS answers FROM {rounds}
                            GROUP BY ALL HAVING count(*) >= 2)
            SELECT policy, count(*) AS ips, count(*) FILTER (WHERE answers = 1) AS stable_ips,
                   count(*) FILTER (WHERE answers = 1) / count(*) AS stable_share, {n} AS sample
            FROM per_ip GROUP BY ALL ORDER BY policy""", params)

    def backoff_distribution(self, *, policy: str | None = "EFFICIENT", start: Any = None,
                             end: Any = None) -> pa.Table:
        """The paper's Figure 6: per UTC day, the share of the day's decisions on responsive IPs
        at each back-off interval (days until the next scan)."""
        daily, params, _ = self._src("decisions_daily", policy, start, end)
        return self.sql(f"""
            SELECT day, interval_days, CAST(sum(decisions) AS BIGINT) AS decisions,
                   sum(decisions) / sum(sum(decisions)) OVER (PARTITION BY day) AS share
            FROM {daily} WHERE responsive AND interval_days IS NOT NULL
            GROUP BY day, interval_days ORDER BY day, interval_days""", params)

    def backoff_latest(self, *, policy: str | None = "EFFICIENT", start: Any = None, end: Any = None) -> pa.Table:
        """Each responsive IP's latest back-off interval in the window, as counts and shares (the
        paper: ~70 % reach the longest)."""
        # max/arg_max give the same answer with or without duplicate rows: no dedupe pass needed
        where, params = _filters("decided_at", policy, start, end)
        return self.sql(f"""
            WITH last AS (SELECT ip, policy, max(decided_at) AS decided_at,
                                 arg_max(next_scan_at, decided_at) AS next_scan_at, arg_max(status, decided_at) AS status
                          FROM decisions WHERE {where} GROUP BY ip, policy)
            SELECT round((epoch_us(next_scan_at) - epoch_us(decided_at)) / 86400e6, 1) AS interval_days,
                   count(*) AS ips, count(*) / sum(count(*)) OVER () AS share
            FROM last WHERE next_scan_at IS NOT NULL
              AND status IN ('RESPONSIVE_ESTIMATED', 'RESPONSIVE_UNESTIMATED')
            GROUP BY interval_days ORDER BY interval_days""", params)

    def attempts_over_time(self, *, start: Any = None, end: Any = None) -> pa.Table:
        """The paper's Figure 7: per UTC day, scan attempts (addresses probed) of each policy, the
        day's efficient/standard ratio and the cumulative ratio since the start."""
        daily, params, _ = self._src("scans_daily", None, start, end)
        return self.sql(f"""
            WITH d AS (SELECT day, CAST(sum(attempts) FILTER (WHERE policy = 'STANDARD') AS BIGINT) AS standard,
                              CAST(sum(attempts) FILTER (WHERE policy = 'EFFICIENT') AS BIGINT) AS efficient
                       FROM {daily} GROUP BY day)
            SELECT day, coalesce(standard, 0) AS standard, coalesce(efficient, 0) AS efficient,
                   efficient / nullif(standard, 0) AS ratio,
                   sum(coalesce(efficient, 0)) OVER w / nullif(sum(coalesce(standard, 0)) OVER w, 0) AS cumulative_ratio
            FROM d WINDOW w AS (ORDER BY day ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
            ORDER BY day""", params)

    def top_banners(self, ports: Sequence[int] = (), *, limit: int = 20, day: Any = None) -> pa.Table:
        """The most common banners (by distinct IPs) on ``ports`` (all ports if empty) on one UTC
        day (default: the newest day in the lake): ``port, ips, banner``. Raw bytes: escape them
        before showing them (:func:`connectors.report.cell_text`)."""
        table = self.source
        day = as_time(day).date() if day is not None else self.latest_date(table)
        if day is None:
            return pa.table({"port": pa.array([], pa.int32()), "ips": pa.array([], pa.int64()),
                             "banner": pa.array([], pa.binary())})
        port_filter = f"AND port IN ({', '.join(str(int(p)) for p in ports)})" if ports else ""
        if table == "events":
            src = "SELECT ip, port, banner FROM events WHERE date = ? AND banner IS NOT NULL"
        else:
            src = ("SELECT ip, r.port AS port, r.banner AS banner FROM (SELECT ip, unnest(responses) AS r "
                   "FROM observations WHERE date = ?) WHERE r.banner IS NOT NULL")
        return self.sql(f"""
            SELECT port, count(DISTINCT ip) AS ips, banner FROM ({src}) WHERE true {port_filter}
            GROUP BY port, banner ORDER BY ips DESC, port, banner LIMIT {int(limit)}""", [day])

    def _other(self, run: Run) -> "Catalog":
        return self if run.root is None or Path(run.root).resolve() == self.root.resolve() else Catalog(run.root)

    def scan_totals(self, run: Run) -> dict[str, Any]:
        """Attempts (addresses probed), packets and bytes a run sent (deduplicated ScanDone records)."""
        cat = self._other(run)
        try:
            daily, params, _ = cat._src("scans_daily", run.policy, run.start, run.end)
            row = cat.con.sql(f"""
                SELECT coalesce(sum(scans), 0), coalesce(sum(attempts), 0), coalesce(sum(packets), 0),
                       coalesce(sum(bytes), 0), min(first_started), max(last_ended) FROM {daily}""",
                              params=params).fetchall()[0]
        finally:
            if cat is not self:
                cat.close()
        return {"scans": int(row[0]), "attempts": int(row[1]), "packets": int(row[2]), "bytes": int(row[3]),
                "first": row[4], "last": row[5]}

    def detection_rates(self, standard: Run, efficient: Run, *,
                        honeypot_min_ports: int | None = HONEYPOT_MIN_PORTS) -> DetectionRates:
        """The set sizes behind PDR and DDR of ``efficient`` against ``standard`` (their ``pdr`` and
        ``ddr`` by :mod:`scanflow.metrics`), with the honeypot exclusion: IPs with
        ``honeypot_min_ports`` or more distinct open ports among the standard run's cells are left
        out of both runs' cells (``None`` or 0: none).

        Runs in this lake are counted in DuckDB (the cell and IP sets, their intersections and the
        exclusion: millions of cells never become Python objects); a run in another lake is counted
        by :func:`scanflow.metrics.count_cells` on Python sets. Both give the same counts (tested).
        """
        threshold = honeypot_threshold(honeypot_min_ports)
        if self._other(standard) is self and self._other(efficient) is self:
            s_sql, s_params = self._cells_src(standard.policy, standard.start, standard.end)
            e_sql, e_params = self._cells_src(efficient.policy, efficient.start, efficient.end)
            # the exclusion of scanflow.metrics.honeypot_ips: IPs with >= threshold distinct open
            # ports among the standard run's cells (each source is already distinct (ip, port))
            honeypots = ("SELECT ip FROM s0 GROUP BY ip HAVING count(*) >= ?" if threshold
                         else "SELECT ip FROM s0 WHERE false")
            row = self.con.sql(f"""
                WITH s0 AS {s_sql}, e0 AS {e_sql},
                     hp AS ({honeypots}),
                     s AS (SELECT ip, port FROM s0 ANTI JOIN hp USING (ip)),
                     e AS (SELECT ip, port FROM e0 ANTI JOIN hp USING (ip)),
                     ds AS (SELECT DISTINCT ip FROM s), de AS (SELECT DISTINCT ip FROM e)
                SELECT (SELECT count(*) FROM s), (SELECT count(*) FROM e),
                       (SELECT count(*) FROM s JOIN e USING (ip, port)),
                       (SELECT count(*) FROM ds), (SELECT count(*) FROM de),
                       (SELECT count(*) FROM ds JOIN de USING (ip)),
                       (SELECT count(*) FROM hp)""",
                params=s_params + e_params + ([threshold] if threshold else [])).fetchall()[0]
            ps, pe, common, ds, de, common_ips, excluded = (int(x) for x in row)
            return CellCounts(ps, pe, common, ds, de, common_ips, threshold, excluded)
        return count_cells(self._cell_set(standard), self._cell_set(efficient), honeypot_min_ports=threshold)

    def _cell_set(self, run: Run) -> set[tuple[str, int]]:
        cat = self._other(run)
        try:
            cells = cat.cells(policy=run.policy, start=run.start, end=run.end)
        finally:
            if cat is not self:
                cat.close()
        return set(zip(cells.column("ip").to_pylist(), cells.column("port").to_pylist()))

    def traffic(self, standard: Run = Run("STANDARD"), efficient: Run = Run("EFFICIENT"), *,
                honeypot_min_ports: int | None = HONEYPOT_MIN_PORTS) -> dict[str, Any]:
        """The paper's Table 4 for one pair of runs by :func:`scanflow.metrics.compare_counts`:
        traffic of each (bytes the agents reported) and the ratio, PDR and DDR (with the honeypot
        exclusion of :meth:`detection_rates`, and how many IPs it left out), scan attempts of each
        and their ratio, and the set sizes behind PDR and DDR."""
        s, e = self.scan_totals(standard), self.scan_totals(efficient)
        c = compare_counts(self.detection_rates(standard, efficient, honeypot_min_ports=honeypot_min_ports),
                           standard_bytes=s["bytes"], efficient_bytes=e["bytes"],
                           standard_attempts=s["attempts"], efficient_attempts=e["attempts"])
        return {"period_start": s["first"], "period_end": s["last"],
                "standard_bytes": c.standard_bytes, "efficient_bytes": c.efficient_bytes,
                "traffic_ratio": c.traffic_ratio, "pdr": c.pdr, "ddr": c.ddr,
                "standard_attempts": c.standard_attempts, "efficient_attempts": c.efficient_attempts,
                "attempts_ratio": c.attempts_ratio,
                "standard_cells": c.standard_cells, "efficient_cells": c.efficient_cells,
                "common_cells": c.common_cells, "standard_ips": c.standard_ips, "efficient_ips": c.efficient_ips,
                "common_ips": c.common_ips, "honeypot_min_ports": c.honeypot_min_ports,
                "excluded_ips": c.excluded_ips}


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
        rollup = f"SELECT policy, ip, port FROM read_parquet('{_quote(str(self.data))}')"
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
                   f"(SELECT * FROM read_parquet('{_quote(str(self.data))}') UNION ALL {new}) GROUP BY ALL")
        staged = staging_path(self.cat.root)
        self.cat.con.execute(f"COPY ({new} ORDER BY policy, ip, port) TO '{_quote(str(staged))}' "
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
    quoted = ", ".join("'" + _quote(str(p)) + "'" for p in files)
    extra = ", filename = true" if filename else ""
    return f"read_parquet([{quoted}], hive_partitioning = false, union_by_name = true{extra})"


def _filters(column: str | None, policy: str | None, start: Any, end: Any) -> tuple[str, list]:
    clauses, params = ["true"], []
    if policy is not None:
        clauses.append("policy = ?")
        params.append(policy.upper())
    if column is not None and as_time(start) is not None:
        clauses.append(f"{column} >= ?")
        params.append(as_time(start))
    if column is not None and as_time(end) is not None:
        clauses.append(f"{column} < ?")
        params.append(as_time(end))
    return " AND ".join(clauses), params


def _quote(text: str) -> str:
    return str(text).replace("'", "''")

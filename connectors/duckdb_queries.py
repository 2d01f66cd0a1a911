"""The canned queries of the reports, as methods of :class:`connectors.duckdb_catalog.Catalog`.

``policy``/``start``/``end`` filters, times as ``datetime``, ISO text or epoch seconds:
:meth:`~CannedQueries.port_ranking` (the paper's Table 1), :meth:`~CannedQueries.derive_port_sets`
(the standard port-set derivation of :mod:`scanflow.portsets`), :meth:`~CannedQueries.responsive_rates`,
:meth:`~CannedQueries.change_rates`, :meth:`~CannedQueries.stable_share`,
:meth:`~CannedQueries.backoff_distribution` and :meth:`~CannedQueries.backoff_latest` (Figure 6),
:meth:`~CannedQueries.attempts_over_time` (Figure 7), :meth:`~CannedQueries.traffic` (Table 4) and
:meth:`~CannedQueries.detection_rates` (PDR and DDR between two runs: set sizes counted in DuckDB, the
formula and the honeypot exclusion of :mod:`scanflow.metrics`). Duplicate rows never change an answer.
:class:`Run` names one side of a comparison.

Per-round statistics (responsive, change and stable rates) may be computed on a sample of the
addresses (:mod:`connectors.duckdb_intermediates`); their results carry the ``sample`` factor (1 = exact).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa

from connectors.duckdb_sql import as_time, sql_filters
from scanflow.metrics import HONEYPOT_MIN_PORTS, CellCounts, compare_counts, count_cells, honeypot_threshold


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


class CannedQueries:
    """The canned queries of :class:`connectors.duckdb_catalog.Catalog` (a mixin: they use its
    connection, views and plumbing, and the intermediates of
    :class:`connectors.duckdb_intermediates.Intermediates`)."""

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
        where, params = sql_filters("decided_at", policy, start, end)
        return self.sql(f"""
            WITH last AS (SELECT ip, policy, max(decided_at) AS decided_at,
                                 arg_max(next_scan_at, decided_at) AS next_scan_at, arg_max(status, decided_at) AS status
                          FROM decisions WHERE {where} GROUP BY ip, policy)
            SELECT round(_vdays(epoch_us(next_scan_at) - epoch_us(decided_at)), 1) AS interval_days,
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

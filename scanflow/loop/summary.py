"""What a ``scanflow run`` ends with: :class:`LoopResult` (counts, wall time, the peak memory of every
process), the DuckDB summary of the run's lake (:func:`summarize`) and that summary as lines for the
terminal (:func:`format_summary`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scanflow.loop.progress import Progress
from scanflow.loop.spec import LoopSpec


@dataclass
class LoopResult:
    """The outcome of a run: counts, wall time, the peak memory of every process, the summary."""

    run_id: str
    wall_s: float
    loop_wall_s: float
    progress: Progress
    peak_rss_kb: dict[str, int]
    summary: dict
    report_index: str = ""
    interrupted: bool = False


def summarize(lake_dir: Path, scale: float) -> dict:
    """The DuckDB summary of a run's lake: rows per table, responsive IPs, back-off distribution
    (latest step of each tracked IP, with its interval in virtual days) and traffic."""
    from connectors.duckdb_catalog import Catalog

    out: dict = {"tables": {}, "backoff": [], "traffic": {}}
    with Catalog(lake_dir) as cat:
        for name, c in cat.counts().items():
            out["tables"][name] = c["rows"]

        def one(sql: str):
            rows = cat.sql(sql).to_pylist()
            return rows[0] if rows else {}

        if out["tables"].get("events"):
            out["responsive_ips"] = one("SELECT count(DISTINCT ip) AS n FROM events").get("n", 0)
            out["open_ports"] = one("SELECT count(DISTINCT (ip, port)) AS n FROM events").get("n", 0)
        if out["tables"].get("decisions"):
            out["tracked_ips"] = one("SELECT count(DISTINCT ip) AS n FROM decisions WHERE status LIKE 'RESPONSIVE%'"
                                     ).get("n", 0)
            # Intervals are in compressed wall time in the lake; divide by the scale for virtual days.
            out["backoff"] = cat.sql(f"""
                WITH last AS (SELECT ip, arg_max(backoff_step, decided_at) AS step,
                                     arg_max(epoch_us(next_scan_at) - epoch_us(decided_at), decided_at) AS dt_us,
                                     arg_max(status, decided_at) AS status
                              FROM decisions GROUP BY ip)
                SELECT step, round(median(dt_us) / 1e6 / {scale} / 86400, 1) AS interval_days, count(*) AS ips
                FROM last WHERE status LIKE 'RESPONSIVE%' GROUP BY step ORDER BY step""").to_pylist()
        if out["tables"].get("scans"):
            # BIGINT casts: DuckDB sums integers into HUGEINT, which arrives as Decimal.
            out["traffic"] = one("""SELECT count(*) AS scans, CAST(sum(packets_sent) AS BIGINT) AS packets,
                                           CAST(sum(bytes_sent) AS BIGINT) AS bytes,
                                           CAST(sum(addresses_probed) AS BIGINT) AS addresses FROM scans""")
            out["scans_by_policy"] = cat.sql(
                "SELECT policy, count(*) AS scans, CAST(sum(packets_sent) AS BIGINT) AS packets FROM scans "
            "GROUP BY ALL ORDER BY 1"
            ).to_pylist()
    return out


def format_summary(result: LoopResult, spec: LoopSpec) -> list[str]:
    """The summary as lines for the terminal."""
    s, p = result.summary, result.progress
    lines = [f"summary of run {result.run_id} ({spec.backend}, "
             + (f"{spec.ips:,} IPs, " if spec.sim else f"allowlist {', '.join(spec.allow)}, ")
             + f"{p.virtual_days:.2f} virtual days in {result.loop_wall_s:.0f} s; total {result.wall_s:.0f} s)",
             f"  events {p.events:,}   commands {p.commands:,}   lake rows {p.lake_rows:,}"]
    lines.append("  lake tables: " + ", ".join(f"{k} {v:,}" for k, v in s.get("tables", {}).items()))
    if "responsive_ips" in s:
        lines.append(f"  responsive IPs {s['responsive_ips']:,} (open ip:port {s.get('open_ports', 0):,}); "
                     f"tracked by the scheduler {s.get('tracked_ips', 0):,}")
    if s.get("backoff"):
        # The interval is the time to the IP's next probe, whatever it is: under the adaptive policy a
        # light probe every cadence at every step (the step backs off its full probes only).
        lines.append("  back-off (latest step of each responsive IP; median time to its next probe):")
        for row in s["backoff"]:
            lines.append(f"    step {row['step']}  next probe after ~{row['interval_days']} d  {row['ips']:,} IPs")
    t = s.get("traffic") or {}
    if t.get("scans"):
        lines.append(f"  traffic: {t['scans']:,} scans, {t['addresses'] or 0:,} addresses, "
                     f"{t['packets'] or 0:,} packets, {(t['bytes'] or 0) / 1e6:,.1f} MB")
    if result.peak_rss_kb:
        lines.append("  peak memory (VmHWM): " + ", ".join(f"{k} {v / 1024:.0f} MB"
                                                           for k, v in sorted(result.peak_rss_kb.items())))
    if result.report_index:
        lines.append(f"  report: {result.report_index}")
    lines.append(f"  lake: {spec.lake_dir}   logs: {spec.run_dir / 'logs'}")
    return lines

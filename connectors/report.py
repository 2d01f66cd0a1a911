"""The canned report (HTML with PNG plots) and the output formats of ``scanflow query``.

Banners are hostile input: a service can answer with terminal escape sequences, HTML or bytes that
are not text. Everything taken from the lake is shown through :func:`cell_text` (control and
non-UTF-8 bytes as ``\\xNN`` escapes, via :func:`scanflow.estimate.safe_text`) and, in HTML, through
:func:`html.escape` as well; no value from the lake is ever written raw into a page or a terminal.

matplotlib is imported only when plots are drawn (``pip install matplotlib``).
"""

from __future__ import annotations

import csv
import datetime as _dt
import decimal
import html
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

from scanflow.estimate import safe_text
from scanflow.metrics import HONEYPOT_MIN_PORTS

FORMATS = ("table", "csv", "json")


def cell_text(value: Any, limit: int = 200) -> str:
    """One value as safe, printable text (bytes and strings escaped; times in ISO 8601 UTC)."""
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray, memoryview, str)):
        return safe_text(value, limit)
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else ""
    if isinstance(value, _dt.datetime):
        return value.astimezone(_dt.timezone.utc).isoformat().replace("+00:00", "Z") if value.tzinfo \
            else value.isoformat()
    if isinstance(value, (list, tuple)):
        return safe_text("[" + ", ".join(cell_text(v, limit) for v in value) + "]", limit)
    if isinstance(value, dict):
        return safe_text("{" + ", ".join(f"{k}: {cell_text(v, limit)}" for k, v in value.items()) + "}", limit)
    return safe_text(str(value), limit)


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return cell_text(value, limit=1 << 20)


def format_table(table: pa.Table, fmt: str = "table", *, max_width: int = 60) -> str:
    """An Arrow result as text: an aligned ``table``, ``csv`` (header row) or ``json`` (an array of
    objects). Text and bytes are escaped in every format (see the module docstring)."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: use one of {', '.join(FORMATS)}")
    rows = table.to_pylist()
    names = table.column_names
    if fmt == "json":
        return json.dumps([{k: _json_value(r[k]) for k in names} for r in rows], ensure_ascii=False, indent=1)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(names)
        for r in rows:
            writer.writerow([cell_text(r[k], limit=1 << 20) for k in names])
        return buf.getvalue()
    cells = [[cell_text(r[k], max_width) for k in names] for r in rows]
    widths = [max([len(n)] + [len(row[i]) for row in cells]) for i, n in enumerate(names)]
    numeric = [pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
               for t in table.schema.types]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    for row in cells:
        lines.append("  ".join(c.rjust(w) if num else c.ljust(w)
                               for c, w, num in zip(row, widths, numeric)).rstrip())
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# The HTML report


@dataclass
class ReportResult:
    """What :func:`build_report` wrote: the page, its plots, the time each section took."""

    index: Path
    files: list[Path] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)


def _html_table(table: pa.Table | list[dict], columns: list[str] | None = None, limit: int = 60,
                formats: dict[str, Callable[[Any], str]] | None = None) -> str:
    rows = table.to_pylist() if isinstance(table, pa.Table) else table
    if not rows:
        return "<p class='empty'>No data in the lake for this section.</p>"
    columns = columns or list(rows[0])
    formats = formats or {}
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for r in rows[:limit]:
        tds = "".join(f"<td>{html.escape(formats.get(c, cell_text)(r.get(c)))}</td>" for c in columns)
        body.append(f"<tr>{tds}</tr>")
    more = f"<p>{len(rows) - limit} more rows in the CSV.</p>" if len(rows) > limit else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


def _finite(value: Any) -> bool:
    """A number a page may show: not None, not NaN, not infinite."""
    if value is None:
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _pct(value: Any) -> str:
    return f"{float(value):.2%}" if _finite(value) else "n/a"


def _points(table: pa.Table, column: str = "day") -> int:
    """Distinct x values a plot of ``table`` would have (a plot needs two or more)."""
    return len(set(table.column(column).to_pylist())) if len(table) and column in table.column_names else 0


#: The fewest responsive IPs of a standard (exhaustive) scan a port set may be derived from: the
#: paper derives its sets from a survey of millions of responses; a few hundred IPs say nothing
#: about the ranks of ten thousand ports.
MIN_DERIVATION_IPS = 1_000


def _bytes(value: Any) -> str:
    return "" if value is None else f"{int(value) / 1e9:,.3f} GB"


def _write_csv(out: Path, name: str, table: pa.Table, files: list[Path]) -> None:
    path = out / f"{name}.csv"
    path.write_text(format_table(table, "csv"), encoding="utf-8")
    files.append(path)


def build_report(root: str | Path, out: str | Path, *, start: Any = None, end: Any = None,
                 threads: int | None = None, plots: bool = True, sample: int | None = None,
                 title: str = "scanflow lake report",
                 honeypot_min_ports: int | None = HONEYPOT_MIN_PORTS, kb: Any = None) -> ReportResult:
    """Run every canned query on the lake at ``root`` and write ``out/index.html`` with PNG plots
    and one CSV per table. Sections without data say so instead of failing. ``sample``: 1-in-n
    addresses for the per-round statistics (default: exact on lakes up to
    :data:`connectors.duckdb_intermediates.SAMPLE_ABOVE` response rows). ``honeypot_min_ports``: Table 4's
    PDR and DDR leave out IPs the standard run found with that many open ports or more
    (:mod:`scanflow.metrics`; ``None`` or 0: none). ``kb``: the knowledge base that names the models and
    threats of "What the scan found" (default: the built-in one)."""
    from connectors.duckdb_catalog import Catalog
    from connectors.duckdb_queries import Run

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = ReportResult(out / "index.html")
    sections: list[str] = []

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        try:
            return fn()
        finally:
            result.timings[name] = time.perf_counter() - started

    from connectors.lake_meta import read_run_meta

    meta = read_run_meta(root)
    with Catalog(root, threads=threads) as cat:
        virtual = cat.clock.compressed
        sections.append("<h2>What made this lake</h2>" + _meta_html(meta, cat.clock))
        prepared = timed("prepare", lambda: cat.prepare(start=start, end=end, sample=sample))
        result.timings.update({f"  {name}": seconds for name, seconds in prepared["timings"].items()})
        counts = timed("counts", lambda: cat.counts(distinct=False))
        result.rows = {name: c["rows"] for name, c in counts.items()}
        note = (f" Per-round statistics (responsive, change and stable rates) are computed on 1 address in "
                f"{prepared['sample']} (chosen by a hash of the address)." if prepared["sample"] > 1 else "")
        sections.append("<h2>Lake</h2>" + _html_table(
            [{"table": n, **c} for n, c in counts.items()], ["table", "files", "rows"])
            + f"<p>Responses are read from <code>{html.escape(cat.source)}</code>.{html.escape(note)}</p>")

        if start is None and end is None:
            sections.append(timed("found", lambda: _found_html(root, cat, kb)))

        ranking = timed("port_ranking", lambda: cat.port_ranking(limit=None, start=start, end=end))
        _write_csv(out, "table1_port_ranking", ranking, result.files)
        sections.append("<h2>Table 1: port ranking by responding IPs</h2>"
                        + _html_table(ranking, ["rank", "port", "ips", "share"], limit=20,
                                      formats={"share": _pct}))

        standard_ips = timed("standard_ips", lambda: cat.sql(
            "SELECT count(DISTINCT ip) AS n FROM _cells WHERE policy = 'STANDARD'").column("n")[0].as_py())
        if standard_ips >= MIN_DERIVATION_IPS:
            derivation = timed("port_sets", lambda: cat.derive_port_sets(policy="STANDARD", start=start, end=end))
            rows = [{"set": ps.name, "ports": len(ps), "provenance": dict(ps.provenance.stats) if ps.provenance else {}}
                    for ps in (derivation.standard, derivation.silent, derivation.unknown)]
            sections.append("<h2>Port sets derived from the lake</h2>" + _html_table(rows)
                            + f"<p>From the standard scan's {derivation.responsive_ips:,} responsive IPs, "
                              f"{derivation.honeypot_ips:,} with 100 or more open ports left out.</p>")
        else:
            why = ("this lake has no standard (exhaustive) scan: an efficient scan probes only the ports its "
                   "policy chose, so ranking ports by what it found would only repeat that choice"
                   if standard_ips == 0 else
                   f"the standard scan in this lake found {standard_ips:,} responsive IPs, fewer than the "
                   f"{MIN_DERIVATION_IPS:,} a port ranking needs to mean anything")
            sections.append("<h2>Port sets derived from the lake</h2>"
                            f"<p class='empty'>Not derived: {html.escape(why)}.</p>")

        traffic = timed("table4_traffic", lambda: cat.traffic(Run("STANDARD", start, end), Run("EFFICIENT", start, end),
                                                              honeypot_min_ports=honeypot_min_ports))
        sections.append("<h2>Table 4: traffic and detection, efficient against standard</h2>" + _table4_html(traffic))

        rates = timed("responsive_rates", lambda: cat.responsive_rates(start=start, end=end))
        _write_csv(out, "responsive_rates", rates, result.files)
        changes = timed("change_rates", lambda: cat.change_rates(start=start, end=end))
        _write_csv(out, "change_rates", changes, result.files)
        stable = timed("stable_share", lambda: cat.stable_share(start=start, end=end))
        day_note = ("<p>Days are virtual days of the run's compressed clock.</p>" if cat.clock.compressed else "")
        sections.append("<h2>Responsive and change rates</h2>" + day_note
                        + (_img("responsive.png") if plots and _points(rates) >= 2
                           else _few_points(rates, "rates"))
                        + _html_table(stable, formats={"stable_share": _pct})
                        + _html_table(rates, limit=30, formats={"responsive_rate": _pct})
                        + _html_table(changes, limit=30, formats={"change_rate": _pct}))

        backoff = timed("figure6_backoff", lambda: cat.backoff_distribution(start=start, end=end))
        latest = timed("backoff_latest", lambda: cat.backoff_latest(start=start, end=end))
        _write_csv(out, "figure6_backoff", backoff, result.files)
        sections.append("<h2>Figure 6: back-off intervals of the efficient scan</h2>" + day_note
                        + ("<p>Intervals are in virtual days.</p>" if cat.clock.compressed else "")
                        + (_img("figure6_backoff.png") if plots and _points(backoff) >= 2
                           else _few_points(backoff, "intervals") + _html_table(backoff, formats={"share": _pct}))
                        + "<p>Each responsive IP's latest interval:</p>"
                        + _html_table(latest, formats={"share": _pct}))

        attempts = timed("figure7_attempts", lambda: cat.attempts_over_time(start=start, end=end))
        _write_csv(out, "figure7_attempts", attempts, result.files)
        sections.append("<h2>Figure 7: scan attempts per day</h2>" + day_note
                        + (_img("figure7_attempts.png") if plots and _points(attempts) >= 2
                           else _few_points(attempts, "attempts"))
                        + _html_table(attempts, limit=60, formats={"ratio": _pct, "cumulative_ratio": _pct}))

        top_ports = ranking.column("port").to_pylist()[:10] if len(ranking) else []
        banners = timed("banners", lambda: cat.top_banners(top_ports, limit=30))
        sections.append("<h2>Most common banners on the top ports (latest day)</h2>"
                        "<p>Banners are untrusted bytes, shown escaped.</p>"
                        + _html_table(banners, ["port", "ips", "banner"],
                                      formats={"banner": lambda b: cell_text(b, 160)}))

    if plots:
        timed("plots", lambda: _plots(out, rates, changes, backoff, attempts, result.files, virtual=virtual))
    generated = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    result.index.write_text(_page(title, f"Lake {Path(root).name}, generated {generated}", sections), encoding="utf-8")
    result.files.insert(0, result.index)
    return result


def _found_html(root: Any, cat: Any, kb: Any = None) -> str:
    """What the scans found (the inventory and exposure of ``scanflow hosts`` and the dashboard)."""
    from connectors.exposure import exposure
    from connectors.inventory import Inventory

    if not cat.present["observations"]:
        return ("<h2>What the scan found</h2><p class='empty'>This lake holds no scan rounds (observations), "
                "only events: the inventory is built from the rounds a live run or a replay writes.</p>")
    inv = Inventory(root, kb, catalog=cat)
    hosts = inv.all_hosts()
    if not hosts:
        return "<h2>What the scan found</h2><p class='empty'>No address answered in this lake's rounds.</p>"
    up = [h for h in hosts if h.state == "up"]
    rep = exposure(inv)
    counts = [{"addresses that answered": len(hosts), "up": len(up), "gone": len(hosts) - len(up),
               "with a device estimate": sum(1 for h in up if h.device),
               "exposed to known malware": sum(1 for h in up if h.threats)}]
    models = [{"model": e.name, "devices up": e.total, "exposing a malware port": e.devices} for e in rep.models]
    families = [{"malware": e.name, "exposed devices": e.devices, "of devices it infects": e.total,
                 "top /24s": ", ".join(f"{p} ({n})" for p, n in e.prefixes[:3])}
                for e in rep.malware if e.devices][:15]
    return ("<h2>What the scan found</h2>" + _html_table(counts)
            + "<p>Per address: <code>scanflow hosts</code>, <code>scanflow host IP</code>, or the dashboard "
              "(<code>scanflow serve</code>).</p>"
            + (_html_table(models) if models else "<p class='empty'>No device estimated.</p>")
            + (_html_table(families) if families else "<p class='empty'>No device exposes a port a known malware "
                                                      "family uses.</p>"))


def _few_points(table: pa.Table, what: str) -> str:
    """Why a section shows a table instead of a plot."""
    n = _points(table)
    if n >= 2 or not len(table):
        return ""
    return (f"<p class='empty'>No plot: the {html.escape(what)} cover {n} day{'' if n == 1 else 's'} "
            "(a plot needs two or more); the table below has the values.</p>")


def _meta_html(meta: Any, clock: Any) -> str:
    """The run that made the lake and its clock (a live run's is compressed)."""
    if meta is None:
        return ("<p>No run description in this lake (<code>_run.json</code>): an evaluation, an archive or "
                "a deployment in real time. " + html.escape(clock.describe()) + "</p>")
    rows = [{"run": meta.run_id, "backend": meta.backend, "policy": meta.policy, "addresses": meta.ips,
             "virtual days": meta.days, "wall seconds per virtual day": meta.day_seconds, "agents": meta.agents,
             "status": meta.status}]
    return _html_table(rows) + f"<p>{html.escape(clock.describe())}</p>"


def _table4_html(traffic: dict[str, Any]) -> str:
    """Table 4, or, when the lake holds no standard scan, what the efficient scan alone sent (and
    the standard scan alone, when there is no efficient one)."""
    if not traffic["standard_attempts"] and not traffic["efficient_attempts"]:
        return "<p class='empty'>No scan in this lake.</p>"
    if not traffic["efficient_attempts"]:
        return ("<p><strong>No efficient scan in this lake</strong>, only a standard one: nothing to compare "
                "it with (<code>scanflow replay</code> runs the efficient policy on it). What the standard scan "
                "sent:</p>"
                + _html_table([traffic], ["period_start", "period_end", "standard_bytes", "standard_attempts",
                                          "standard_ips", "standard_cells"], formats={"standard_bytes": _bytes}))
    if not traffic["standard_attempts"]:
        return ("<p><strong>No standard baseline in this lake.</strong> A live run scans with the efficient "
                "policy only; traffic ratio, PDR and DDR compare it with a standard (exhaustive) scan of the "
                "same addresses at the same times, which this lake does not hold. <code>scanflow evaluate</code> "
                "runs both on a synthetic internet. What the efficient scan sent:</p>"
                + _html_table([traffic], ["period_start", "period_end", "efficient_bytes", "efficient_attempts",
                                          "efficient_ips", "efficient_cells"],
                              formats={"efficient_bytes": _bytes}))
    return (_html_table([traffic], ["period_start", "period_end", "standard_bytes", "efficient_bytes", "traffic_ratio",
                                    "pdr", "ddr", "standard_attempts", "efficient_attempts", "attempts_ratio",
                                    "excluded_ips"],
                        formats={"standard_bytes": _bytes, "efficient_bytes": _bytes, "traffic_ratio": _pct,
                                 "pdr": _pct, "ddr": _pct, "attempts_ratio": _pct})
            + f"<p>{html.escape(_exclusion_note(traffic))}</p>")


def _exclusion_note(traffic: dict[str, Any]) -> str:
    if not traffic["honeypot_min_ports"]:
        return "PDR and DDR count every IP (no honeypot exclusion)."
    n = traffic["excluded_ips"]
    return (f"PDR and DDR leave out {n:,} IP{'' if n == 1 else 's'} the standard scan found with "
            f"{traffic['honeypot_min_ports']} or more open ports (honeypots, as the paper does); "
            "scanflow report --honeypot-min-ports 0 counts them.")


def _img(name: str) -> str:
    return f"<p><img src='{html.escape(name)}' alt='{html.escape(name)}'></p>"


def _page(title: str, subtitle: str, sections: list[str]) -> str:
    style = ("body{font-family:sans-serif;max-width:72em;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.2em .5em;"
             "font-size:.9em;text-align:left;vertical-align:top}td{font-family:monospace;white-space:pre-wrap;"
             "word-break:break-all}img{max-width:100%}.empty{color:#888}")
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src 'self'; "
            "style-src 'unsafe-inline'\">"
            f"<title>{html.escape(title)}</title><style>{style}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p>{''.join(sections)}</body></html>\n")


def _plots(out: Path, rates: pa.Table, changes: pa.Table, backoff: pa.Table, attempts: pa.Table,
           files: list[Path], *, virtual: bool = False) -> None:
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("the report's plots need matplotlib: pip install matplotlib "
                           "(or pass plots=False / --no-plots)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, name: str) -> None:
        if virtual:   # a live run's compressed clock: the dates are virtual days from the run's start
            for ax in fig.axes:
                if not ax.get_xlabel():
                    ax.set_xlabel("virtual day (compressed clock)")
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        files.append(out / name)

    if _points(rates) >= 2:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.5))
        for policy, rows in _by(rates.to_pylist(), "policy").items():
            ax1.plot([r["day"] for r in rows], [r["responsive_rate"] or 0 for r in rows], marker=".",
                     label=safe_text(policy or "?", 20))
        for policy, rows in _by(changes.to_pylist(), "policy").items():
            ax2.plot([r["day"] for r in rows], [r["change_rate"] or 0 for r in rows], marker=".",
                     label=safe_text(policy or "?", 20))
        ax1.set_title("responsive IPs / addresses probed")
        ax2.set_title("answers that changed")
        for ax in (ax1, ax2):
            ax.legend()
            ax.tick_params(axis="x", rotation=45)
        save(fig, "responsive.png")
    if _points(backoff) >= 2:
        rows = backoff.to_pylist()
        days = sorted({r["day"] for r in rows})
        intervals = sorted({r["interval_days"] for r in rows})
        share = {(r["day"], r["interval_days"]): r["share"] for r in rows}
        fig, ax = plt.subplots(figsize=(11, 4))
        bottom = [0.0] * len(days)
        for interval in intervals:
            values = [share.get((d, interval), 0.0) for d in days]
            label = f"{interval:g} d" if interval else "< 0.05 d (a follow-up minutes later)"
            ax.bar(days, values, bottom=bottom, label=label, width=0.8)
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_ylabel("share of decisions")
        ax.set_title("back-off interval chosen, per day (efficient policy)")
        ax.legend(ncol=4, fontsize="small")
        ax.tick_params(axis="x", rotation=45)
        save(fig, "figure6_backoff.png")
    if _points(attempts) >= 2:
        rows = attempts.to_pylist()
        days = [r["day"] for r in rows]
        baseline = any(r["standard"] for r in rows) and any(r["efficient"] for r in rows)
        fig, ax = plt.subplots(figsize=(11, 4))
        for policy in ("standard", "efficient"):
            if any(r[policy] for r in rows):
                ax.plot(days, [r[policy] for r in rows], marker=".", label=policy)
        ax.set_ylabel("addresses probed")
        ax.set_ylim(bottom=0)
        if baseline:   # a ratio only against a standard scan that is there
            ax2 = ax.twinx()
            ax2.plot(days, [r["cumulative_ratio"] or 0 for r in rows], color="gray", linestyle="--",
                     label="efficient / standard (cumulative)")
            ax2.set_ylim(0, 1.05)
            ax2.legend(loc="upper right")
        ax.legend(loc="upper left")
        ax.set_title("scan attempts per day" + ("" if baseline else " (one policy only: no ratio)"))
        ax.tick_params(axis="x", rotation=45)
        save(fig, "figure7_attempts.png")


def _by(rows: list[dict], key: str) -> dict[Any, list[dict]]:
    out: dict[Any, list[dict]] = {}
    for r in rows:
        out.setdefault(r[key], []).append(r)
    return out

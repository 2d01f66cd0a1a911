"""Policy variants side by side (``scanflow evaluate --policy both``, ``--ablation``): one table of
every scenario, variant and judging window, and one Pareto plot of traffic against PDR.

The rows come from the variants' ``metrics.json`` summaries (:func:`scanflow.evaluate_report.build_summary`);
nothing is recomputed. Figures are means over seeds, except the probes per address per slot, which is
the largest any seed's run sent (the ethics bound is the standard set's size).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from scanflow.evaluate_report import PAPER_ATTEMPTS, PAPER_TABLE4, _pct, _pyplot, _save

#: What the adaptive policy aims at over the longest window, on every scenario (issue 16's targets).
ADAPTIVE_TARGET = {"traffic_ratio": 0.025, "pdr": 0.97, "ddr": 0.96}


def compare_table(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One row per (scenario, variant, window) in the order the summaries come, and the paper's
    Table 4 rows for reference."""
    rows = []
    for summ in summaries:
        cfg = summ["config"]
        new = summ.get("new_devices", {}).get("mean", {})
        windows = list(summ["windows"])
        for wk in windows:
            win = summ["windows"][wk]
            mean = win["mean"]
            row = {"scenario": cfg.get("scenario", "paper"), "variant": cfg.get("variant", "paper"),
                   "policy": cfg.get("efficient_policy", "paper"), "window": wk, "weeks": float(wk.rstrip("w")),
                   "ips": cfg["ips"], "seeds": len(cfg["seeds"]), "desync": cfg["desync"], "loss": cfg["loss"],
                   "traffic_ratio": mean["traffic_ratio"], "pdr": mean["pdr"], "ddr": mean["ddr"],
                   "attempts_ratio": mean["attempts_ratio"], "min_pdr": win["min"]["pdr"],
                   "min_ddr": win["min"]["ddr"], "max_traffic_ratio": win["max"]["traffic_ratio"],
                   "max_slot_probes": win.get("max_slot_probes"), "standard_set": summ["port_sets"]["standard"],
                   "new_devices": new.get("devices"), "new_seen": new.get("efficient", {}).get("seen"),
                   "new_median_h": new.get("efficient", {}).get("median_h"),
                   "new_p90_h": new.get("efficient", {}).get("p90_h"),
                   "standard_new_median_h": new.get("standard", {}).get("median_h")}
            row["within_ethics_bound"] = (row["max_slot_probes"] is not None
                                          and row["max_slot_probes"] <= row["standard_set"])
            if wk == windows[-1]:
                row["meets_adaptive_target"] = (win["max"]["traffic_ratio"] <= ADAPTIVE_TARGET["traffic_ratio"]
                                                and win["min"]["pdr"] >= ADAPTIVE_TARGET["pdr"]
                                                and win["min"]["ddr"] >= ADAPTIVE_TARGET["ddr"])
            rows.append(row)
    return {"rows": rows, "adaptive_target": ADAPTIVE_TARGET,
            "paper": {"table4": list(PAPER_TABLE4), "attempts": PAPER_ATTEMPTS}}


def _num(x: Any) -> bool:
    return x is not None and not (isinstance(x, float) and (math.isnan(x) or math.isinf(x)))


def _h(x: Any) -> str:
    return f"{x:.1f} h" if _num(x) else "-"


def _probes(r: dict[str, Any]) -> str:
    return f"{r['max_slot_probes']:,} / {r['standard_set']:,}" if _num(r["max_slot_probes"]) else "-"


def _cells(r: dict[str, Any]) -> list[str]:
    return [r["scenario"], r["variant"], r["window"], _pct(r["traffic_ratio"], 2), _pct(r["pdr"]), _pct(r["ddr"]),
            _pct(r["attempts_ratio"]), _probes(r), _pct(r["new_seen"]) if _num(r["new_seen"]) else "-",
            _h(r["new_median_h"]), _h(r["standard_new_median_h"])]


HEADINGS = ("scenario", "policy", "window", "traffic", "PDR", "DDR", "attempts", "max probes/slot (std set)",
            "new devices seen", "median delay", "standard's median")


def _verdicts(table: dict[str, Any]) -> list[str]:
    t = table["adaptive_target"]
    out = []
    for r in table["rows"]:
        if r["policy"] == "adaptive" and "meets_adaptive_target" in r:
            out.append(f"{r['scenario']} / {r['variant']} ({r['window']}): "
                       f"{'met' if r['meets_adaptive_target'] else 'NOT met'}")
    if not out:
        return []
    return [f"adaptive target (traffic <= {t['traffic_ratio'] * 100:g} %, PDR >= {t['pdr'] * 100:g} %, "
            f"DDR >= {t['ddr'] * 100:g} % over the longest window, every seed):"] + ["  " + v for v in out]


def format_compare_table(table: dict[str, Any]) -> str:
    """The comparison as text, then whether each adaptive variant met its target, then Table 4."""
    rows = [_cells(r) for r in table["rows"]]
    widths = [max(len(h), *(len(c[i]) for c in rows)) if rows else len(h) for i, h in enumerate(HEADINGS)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    head = fmt(HEADINGS)
    lines = ["Efficient policies against the standard scan (means over seeds; max probes per address per "
             "12 h slot over every seed, against the standard set's size; delay to see a device new "
             "after the start)", head, "-" * len(head)]
    lines += [fmt(c) for c in rows]
    lines += [""] + _verdicts(table) + ["", "paper, real network (Table 4; unsynchronised, with packet loss):"]
    for p in PAPER_TABLE4:
        lines.append(f"  run {p['run']}, {p['weeks']}w: traffic {_pct(p['traffic_ratio'], 2)}, PDR {_pct(p['pdr'])}, "
                     f"attempts ~{_pct(PAPER_ATTEMPTS[p['weeks']])}")
    return "\n".join(lines)


def compare_markdown(table: dict[str, Any]) -> str:
    """The comparison as a Markdown table (for the docs), the paper's Table 4 rows last."""
    lines = ["| " + " | ".join(HEADINGS) + " |", "|" + "---|" * len(HEADINGS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in table["rows"]]
    for p in PAPER_TABLE4:
        cells = ["paper, Table 4", f"run {p['run']}", f"{p['weeks']}w", _pct(p["traffic_ratio"], 2), _pct(p["pdr"]),
                 "-", _pct(PAPER_ATTEMPTS[p["weeks"]]), "-", "-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: Marker per scenario (scenarios beyond these cycle).
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def plot_pareto(path: Path, table: dict[str, Any]) -> Path:
    """Traffic (% of the standard scan) against PDR: one point per variant, scenario and window
    (colour: variant; marker: scenario; filled: the longest window, hollow: shorter ones), the paper's
    Table 4 runs as black stars and the adaptive target's corner shaded."""
    plt = _pyplot()
    rows = [r for r in table["rows"] if _num(r["traffic_ratio"]) and _num(r["pdr"])]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    longest = max((r["weeks"] for r in rows), default=0)
    fig, ax = plt.subplots(figsize=(9, 6))
    t = table.get("adaptive_target", ADAPTIVE_TARGET)
    target = ax.fill_between([0, t["traffic_ratio"] * 100], t["pdr"] * 100, 101, color="C2", alpha=0.12, lw=0,
                             label=f"adaptive target: traffic <= {t['traffic_ratio'] * 100:g} %, "
                                   f"PDR >= {t['pdr'] * 100:g} %")
    for r in rows:
        color = f"C{variants.index(r['variant']) % 10}"
        marker = MARKERS[scenarios.index(r["scenario"]) % len(MARKERS)]
        filled = r["weeks"] >= longest - 1e-9
        # the ablations small on top: where one equals the full policy, the full policy's ring shows
        ablated = r["variant"] not in ("paper", "adaptive")
        ax.scatter(r["traffic_ratio"] * 100, r["pdr"] * 100, s=34 if ablated else 90, marker=marker,
                   zorder=4 if ablated else 3, facecolors=color if filled else "none", edgecolors=color,
                   linewidths=1.3)
    for p in PAPER_TABLE4:
        ax.scatter(p["traffic_ratio"] * 100, p["pdr"] * 100, s=140, marker="*", color="k", zorder=4)
        ax.annotate(f"Table 4 run {p['run']} ({p['weeks']}w)", (p["traffic_ratio"] * 100, p["pdr"] * 100),
                    textcoords="offset points", xytext=(6, -10 if p["run"] == 1 else 4), fontsize=8)
    handles = [ax.scatter([], [], marker="s", color=f"C{i % 10}", label=v) for i, v in enumerate(variants)]
    handles += [ax.scatter([], [], marker=MARKERS[i % len(MARKERS)], facecolors="none", edgecolors="grey",
                           label=f"scenario {s}") for i, s in enumerate(scenarios)]
    handles.append(ax.scatter([], [], marker="*", color="k", s=140, label="paper, Table 4 (real network)"))
    windows = sorted({r["window"] for r in rows}, key=lambda w: float(w.rstrip("w")))
    note = (f"filled: {windows[-1]}, hollow: {', '.join(windows[:-1])}" if len(windows) > 1
            else f"window {windows[0]}" if windows else "")
    lowest = min([r["pdr"] * 100 for r in rows] + [p["pdr"] * 100 for p in PAPER_TABLE4])
    ax.set(xlabel="traffic (% of the standard scan's bytes)", ylabel="port detection rate, PDR (%)",
           title=f"Cost against coverage, one point per policy and scenario ({note})",
           xlim=(0, max([r["traffic_ratio"] * 100 for r in rows] + [10.0]) * 1.05),
           ylim=(max(0.0, lowest - 3), 100.5))
    ax.set_xlim(left=0)
    if max(r["traffic_ratio"] for r in rows) > 0.3 if rows else False:
        # a reference at the standard scan's own traffic (the ceiling): a log axis keeps the policies,
        # at a few percent, readable beside it
        ax.set_xscale("log")
        ax.set_xlim(0.5, 150)
    ax.grid(alpha=0.3)
    ax.legend(handles=handles + [target], fontsize=7, loc="lower right", ncol=2)
    return _save(fig, path, plt)

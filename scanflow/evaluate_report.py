"""What ``scanflow evaluate`` prints and writes: the Table-4-style table, ``metrics.json``, the
observations as Parquet, and the plots (Figures 3, 5, 6 and 7 analogs, detection delays, traffic).

matplotlib is imported only when plots are drawn; without it the table, JSON and Parquet are still
written and :func:`write_plots` raises :class:`PlotsUnavailable` with the install hint.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from scanflow.metrics import HONEYPOT_MIN_PORTS, honeypot_threshold
from scanflow.evaluation import CHANGE_KINDS, EvaluationConfig, SeedResult, delay_samples
from scanflow.world.dynamics import CLASS_NAMES, EVENT_NAMES

#: The paper's Table 4 (real network, Dec 2019 - May 2020), for the side-by-side table.
PAPER_TABLE4 = (
    {"run": 1, "weeks": 2, "standard_gb": 1676, "efficient_gb": 149, "traffic_ratio": 0.0894, "pdr": 0.949},
    {"run": 2, "weeks": 2, "standard_gb": 1676, "efficient_gb": 150, "traffic_ratio": 0.0896, "pdr": 0.965},
    {"run": 3, "weeks": 8, "standard_gb": 7901, "efficient_gb": 312, "traffic_ratio": 0.0395, "pdr": 0.943},
)
#: The paper's scan-attempt ratios (section 5.2): ~28 % over 2 weeks, ~21 % over 8 weeks.
PAPER_ATTEMPTS = {2: 0.28, 8: 0.21}
TARGET = {"traffic_ratio": 0.0395, "pdr": 0.95, "ddr": 0.95}


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed."""


def build_summary(cfg: EvaluationConfig, derivation, results: Sequence[SeedResult], *, survey_rows: int,
                  seconds: dict[str, float]) -> dict[str, Any]:
    """Everything ``metrics.json`` holds: the configuration, the derived port sets, per seed and
    window the paper's figures, their mean and minimum, detection delays, and timings."""
    windows: dict[str, Any] = {}
    for w in sorted({m.weeks for r in results for m in r.windows}):
        rows = [dict(seed=r.seed, **_metric_dict(m)) for r in results for m in r.windows if m.weeks == w]
        keys = ("traffic_ratio", "pdr", "ddr", "attempts_ratio", "pdr_all", "ddr_all")
        windows[_wkey(w)] = {
            "per_seed": rows,
            "mean": {k: float(np.mean([x[k] for x in rows])) for k in keys},
            "min": {k: float(np.min([x[k] for x in rows])) for k in keys},
            "max": {k: float(np.max([x[k] for x in rows])) for k in keys},
            "max_slot_probes": int(max(x["max_slot_probes"] for x in rows)),
            "meets_target_every_seed": all(x["traffic_ratio"] <= TARGET["traffic_ratio"] and x["pdr"] >= TARGET["pdr"]
                                           and x["ddr"] >= TARGET["ddr"] for x in rows),
        }
    d = derivation
    return {
        "config": {"scenario": cfg.scenario, "ips": cfg.ips, "weeks": cfg.weeks, "seeds": list(cfg.seeds), "loss": cfg.loss,
                   "desync": cfg.desync, "windows": list(cfg.windows), "world": cfg.world_config().as_dict(),
                   "survey_seed": cfg.survey_seed, "min_confidence": cfg.min_confidence,
                   "honeypot_min_ports": honeypot_threshold(cfg.honeypot_min_ports),
                   "policy": _params_dict(cfg.params), "efficient_policy": cfg.policy, "variant": cfg.label,
                   "adaptive": _adaptive_dict(cfg) if cfg.policy == "adaptive" else None},
        "port_sets": {"standard": len(d.standard), "silent": len(d.silent), "unknown": len(d.unknown),
                      "unknown_base_pdr": d.pdr_curve[0] if d.pdr_curve else None,
                      "survey_rows": survey_rows, "survey_responsive_ips": d.responsive_ips,
                      "survey_honeypot_ips": d.honeypot_ips, "threshold_ips": d.threshold_ips,
                      "top10": [p for p, _ in d.ranking[:10]],
                      "digests": {"standard": d.standard.digest, "silent": d.silent.digest, "unknown": d.unknown.digest}},
        "windows": windows,
        "delays": {str(r.seed): r.delays for r in results},
        "new_devices": {"per_seed": {str(r.seed): r.new_devices for r in results},
                        "mean": _mean_new_devices([r.new_devices for r in results])},
        "worlds": {str(r.seed): r.world.summary() for r in results},
        "efficient_decisions": {str(r.seed): r.efficient.decisions for r in results},
        "efficient_moved": {str(r.seed): r.efficient.moved for r in results},
        "final_backoff": {str(r.seed): _final_backoff(r) for r in results},
        "seconds": seconds,
        "paper": {"table4": list(PAPER_TABLE4), "attempts": PAPER_ATTEMPTS, "target": TARGET},
    }


def _params_dict(params) -> dict[str, Any]:
    from scanflow.policy import PolicyParams

    p = params or PolicyParams()
    return {"ladder_h": [x / 3600 for x in p.ladder], "silent_interval_h": p.silent_interval / 3600,
            "standard_interval_h": p.standard_interval / 3600, "demote_after": p.demote_after,
            "initial_scan": p.initial_scan, "recall_interval_h": p.recall_interval / 3600,
            "recall_for_h": p.recall_for / 3600}


def _adaptive_dict(cfg: EvaluationConfig) -> dict[str, Any]:
    """The adaptive policy's parameters as run (its defaults where ``cfg.adaptive`` is None)."""
    import dataclasses

    from scanflow.adaptive import AdaptiveParams

    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(cfg.adaptive or AdaptiveParams()).items()}


def _metric_dict(m) -> dict[str, Any]:
    out = dict(m.__dict__)
    out.pop("weeks")
    return out


def _wkey(weeks: float) -> str:
    return f"{weeks:g}w"


def _final_backoff(r: SeedResult) -> dict[str, Any]:
    """Share of tracked responsive IPs on each ladder step at the end (the paper: ~70 % at the cap)."""
    states = r.efficient.states
    if states is None or not len(states):
        return {}
    last = states[-1].reshape(3, -1)[1:].sum(axis=0)
    total = int(last.sum())
    return {"tracked": total, "share_by_step": [float(x / total) if total else 0.0 for x in last],
            "share_at_cap": float(last[-1] / total) if total else 0.0}


def format_table(summary: dict[str, Any]) -> str:
    """The Table-4-style text table: per seed and window, then mean and min, then the paper's rows."""
    cfg, ps = summary["config"], summary["port_sets"]
    mode = ("desynchronised" if cfg["desync"] else "synchronised") + (f", loss {cfg['loss']:g}" if cfg["loss"] else "")
    initial = cfg.get("policy", {}).get("initial_scan", "standard")
    first = ("first scan of each IP with the standard set (the paper's)" if initial == "standard"
             else "first scan of each IP a silent sweep (policy.initial_scan=silent)")
    recall = cfg.get("policy", {}).get("recall_interval_h") or 0
    adaptive = cfg.get("adaptive")
    if adaptive:
        off = [k for k in ("followup", "learned_cadence", "memory") if not adaptive[k]]
        first = (f"adaptive policy: first probe of each IP with the {adaptive['initial_scan']} set, light "
                 f"probes every {adaptive['cadence'] / 3600:g} h" + (f", off: {', '.join(off)}" if off else ""))
        if adaptive.get("moves"):
            moved = summary.get("efficient_moved") or {}
            first += ("; devices that move on: " + ", ".join(f"{n:,}" for n in moved.values())
                      + " answers resumed a device another address of their /24 remembered (per seed)")
    elif recall:
        first += (f"; beyond the paper: recall of silent IPs on their last ports every {recall:g} h for "
                  f"{cfg['policy']['recall_for_h']:g} h after their last answer")
    lines = [f"Efficient ({cfg.get('variant', 'paper')}) vs standard scan: scenario {cfg.get('scenario', 'paper')}, "
             f"{cfg['ips']:,} IPs, "
             f"{cfg['weeks']:g} weeks, seeds {', '.join(map(str, cfg['seeds']))}, {mode}",
             f"port sets (derived from a {ps['survey_responsive_ips']:,}-host full-port survey): standard "
             f"{ps['standard']:,}, silent {ps['silent']:,}, unknown-device {ps['unknown']:,}; {first}", ""]
    head = (f"{'period':<7}{'seed':<6}{'standard GB':>12}{'efficient GB':>14}{'traffic':>9}{'PDR':>9}"
            f"{'DDR':>9}{'attempts':>10}   {'PDR*':>7}{'DDR*':>7}")
    lines += [head, "-" * len(head)]
    for wk, win in summary["windows"].items():
        for row in win["per_seed"]:
            lines.append(f"{wk:<7}{row['seed']:<6}{row['standard_bytes'] / 1e9:>12,.1f}{row['efficient_bytes'] / 1e9:>14,.1f}"
                         f"{_pct(row['traffic_ratio'], 2):>9}{_pct(row['pdr']):>9}{_pct(row['ddr']):>9}"
                         f"{_pct(row['attempts_ratio']):>10}   {_pct(row['pdr_all']):>7}{_pct(row['ddr_all']):>7}")
        for label in ("mean", "min"):
            m = win[label]
            lines.append(f"{wk:<7}{label:<6}{'':>12}{'':>14}{_pct(m['traffic_ratio'], 2):>9}{_pct(m['pdr']):>9}"
                         f"{_pct(m['ddr']):>9}{_pct(m['attempts_ratio']):>10}   {_pct(m['pdr_all']):>7}{_pct(m['ddr_all']):>7}")
        verdict = "met" if win["meets_target_every_seed"] else "NOT met"
        lines.append(f"{'':<7}target (traffic <= 3.95 %, PDR >= 95 %, DDR >= 95 % on every seed): {verdict}")
        lines.append("")
    lines.append("paper, real network (Table 4; unsynchronised, with packet loss):")
    for p in PAPER_TABLE4:
        lines.append(f"{p['weeks']:>2} w   run {p['run']}{p['standard_gb']:>11,}{p['efficient_gb']:>14,}"
                     f"{_pct(p['traffic_ratio'], 2):>9}{_pct(p['pdr']):>9}{'-':>9}"
                     f"{_pct(PAPER_ATTEMPTS[p['weeks']]):>10}")
    threshold = cfg.get("honeypot_min_ports", HONEYPOT_MIN_PORTS)
    if threshold:
        lines.append(f"PDR*/DDR*: counting also IPs with >= {threshold} open ports (honeypots), "
                     "which PDR/DDR leave out.")
    else:
        lines.append("PDR/DDR count every IP (--honeypot-min-ports 0): PDR*/DDR* are the same figures.")
    return "\n".join(lines)


def _pct(x: float, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * 100:.{digits}f} %"


def write_json(path: Path, summary: dict[str, Any]) -> Path:
    """``metrics.json`` (sorted keys, NaN written as null)."""
    path.write_text(json.dumps(_clean(summary), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return None if math.isnan(x) or math.isinf(x) else float(x)
    return x


def write_parquet(out: Path, results: Sequence[SeedResult]) -> list[Path]:
    """``observations.parquet`` (every answering probe of both policies; the efficient policy's
    decision alongside), ``found.parquet`` (distinct (ip, port) found, with the round first found) and
    ``events.parquet`` (the world's changes and when each scan first saw them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    obs, found, events = [], [], []
    for r in results:
        for run in (r.standard, r.efficient):
            rec = run.records
            if rec and len(rec["ip"]):
                n = len(rec["ip"])
                cols = {"seed": pa.array(np.full(n, r.seed, dtype=np.int32)),
                        "policy": pa.array([run.name] * n),
                        "ip": pa.array(np.asarray(rec["ip"], dtype=np.int64)),
                        "t": pa.array(np.asarray(rec["t"], dtype=np.int64)),
                        "round": pa.array(np.asarray(rec["round"], dtype=np.int32)),
                        "open_ports": pa.array([np.asarray(p, dtype=np.int32) for p in rec["open_ports"]],
                                               pa.list_(pa.int32()))}
                for key, kind in (("probed", pa.string()), ("status", pa.string()), ("step", pa.int16()),
                                  ("device", pa.string()), ("reason", pa.string()), ("changed", pa.bool_()),
                                  ("next_at", pa.float64())):
                    cols[key] = pa.array(rec[key] if key in rec else [None] * n, kind)
                obs.append(pa.table(cols))
            found.append(pa.table({"seed": pa.array(np.full(len(run.cells), r.seed, dtype=np.int32)),
                                   "policy": pa.array([run.name] * len(run.cells)),
                                   "ip": pa.array(run.cells >> 16), "port": pa.array((run.cells & 0xFFFF).astype(np.int32)),
                                   "round": pa.array(run.cell_round)}))
        s = r.world.segments
        events.append(pa.table({"seed": pa.array(np.full(len(s), r.seed, dtype=np.int32)), "ip": pa.array(s.ip),
                                "start": pa.array(s.start), "end": pa.array(s.end),
                                "class": pa.array([CLASS_NAMES[c] for c in s.cls]),
                                "event": pa.array([EVENT_NAMES[e] for e in s.event]),
                                "standard_seen": pa.array(r.standard.detected),
                                "efficient_seen": pa.array(r.efficient.detected)}))
    written = []
    for name, parts in (("observations", obs), ("found", found), ("events", events)):
        if parts:
            path = out / f"{name}.parquet"
            pq.write_table(pa.concat_tables(parts), path, compression="zstd")
            written.append(path)
    return written


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotsUnavailable("plots need matplotlib: pip install matplotlib (or pass --no-plots)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def write_plots(out: Path, derivation, results: Sequence[SeedResult], base_ports) -> list[Path]:
    """The PNG figures; ``base_ports`` are the device + malware ports the unknown-device set starts
    from (the x offset of the Figure 3 curve). Returns the paths written."""
    plt = _pyplot()
    paths = []
    d = derivation
    # x of the Figure 3 curve: size of (device + malware ports) plus the top k ranked ports, k = 0, 1, ...
    ranked = [p for p, _ in d.ranking]
    seen = set(base_ports)
    sizes = [len(seen)]
    for p in ranked:
        seen.add(p)
        sizes.append(len(seen))

    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(sizes[: len(d.pdr_curve)], np.array(d.pdr_curve) * 100, lw=1.5, label="synthetic survey")
    ax.axhline(97, color="grey", ls=":", lw=1)
    ax.axvline(len(d.unknown), color="C1", ls="--", lw=1, label=f"derived: {len(d.unknown):,} ports")
    ax.plot([5100], [97], "k^", label="paper: 5,100 ports at 97 %")
    ax.set(xlabel="ports scanned (device + malware ports + top of the ranking)", ylabel="port detection rate (%)",
           title="Figure 3 analog: ports vs port detection rate (unknown devices)", xlim=(0, min(len(sizes), 12000)))
    ax.grid(alpha=0.3); ax.legend(loc="lower right")
    paths.append(_save(fig, out / "fig3_port_detection_vs_ports.png", plt))

    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(np.arange(1, len(d.ddr_curve) + 1), np.array(d.ddr_curve) * 100, lw=1.5, label="synthetic survey")
    ax.axhline(95, color="grey", ls=":", lw=1)
    ax.axvline(len(d.silent), color="C1", ls="--", lw=1, label=f"derived: {len(d.silent):,} ports")
    ax.plot([500], [95], "k^", label="paper: ~500 ports at 95 %")
    ax.set(xscale="log", xlabel="top ports of the response ranking", ylabel="device detection rate (%)",
           title="Figure 5 analog: ports vs device detection rate (silent IPs)")
    ax.grid(alpha=0.3, which="both"); ax.legend(loc="lower right")
    paths.append(_save(fig, out / "fig5_device_detection_vs_ports.png", plt))

    r = results[0]
    slot_days = r.schedule.slot / 86400
    if r.efficient.states is not None:
        st = r.efficient.states.reshape(len(r.efficient.states), 3, -1)[:, 1:, :].sum(axis=1)
        total = np.maximum(st.sum(axis=1, keepdims=True), 1)
        days = np.arange(len(st)) * slot_days
        labels = ["12 h", "1 d", "2 d", "3 d", "5 d", "7 d", "14 d", "30 d"][: st.shape[1]]
        fig, ax = plt.subplots(figsize=(7, 4.2))
        ax.stackplot(days, (st / total * 100).T, labels=labels, alpha=0.9)
        ax.set(xlabel="day", ylabel="share of tracked responsive IPs (%)", ylim=(0, 100),
               title=f"Figure 6 analog: back-off interval of responsive IPs (seed {r.seed})")
        ax.legend(loc="upper left", fontsize=8, ncol=4)
        paths.append(_save(fig, out / "fig6_backoff.png", plt))

    fig, ax = plt.subplots(figsize=(7, 4.2))
    days = np.arange(len(r.standard.attempts)) * slot_days
    ax.plot(days, r.standard.attempts, label="standard", lw=1.2)
    ax.plot(days, r.efficient.attempts, label="efficient", lw=1.2)
    ax.set(xlabel="day", ylabel="IPs probed per 12 h round", title=f"Figure 7 analog: scan attempts (seed {r.seed})")
    ax.set_ylim(bottom=0); ax.grid(alpha=0.3); ax.legend()
    paths.append(_save(fig, out / "fig7_attempts.png", plt))

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for res in results:
        cum = np.cumsum(res.efficient.bytes) / np.maximum(np.cumsum(res.standard.bytes), 1)
        ax.plot(np.arange(1, len(cum) + 1) * slot_days, cum * 100, lw=1.2, label=f"seed {res.seed}")
    ax.axhline(3.95, color="grey", ls=":", lw=1, label="paper, 8 weeks: 3.95 %")
    ax.set(xlabel="day", ylabel="efficient / standard bytes so far (%)", title="Traffic ratio over time")
    ax.set_ylim(bottom=0); ax.grid(alpha=0.3); ax.legend()
    paths.append(_save(fig, out / "traffic_ratio_over_time.png", plt))

    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5), sharey=True)
    for ax, (title, cls, event) in zip(axes.ravel(), CHANGE_KINDS):
        for run_name in ("standard", "efficient"):
            samples = np.concatenate([delay_samples(res.world, getattr(res, run_name), cls, event) for res in results])
            if not len(samples):
                continue
            xs = np.sort(samples[~np.isnan(samples)])
            ax.step(xs / 24, np.arange(1, len(xs) + 1) / len(samples) * 100, where="post",
                    label=f"{run_name} ({len(samples):,} changes)")
        ax.set(xscale="log", title=title, xlim=(1e-2, 60))
        ax.grid(alpha=0.3, which="both"); ax.legend(loc="upper left", fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel("days from the change to its first detection")
    for ax in axes[:, 0]:
        ax.set_ylabel("changes detected (%)")
    fig.suptitle("Detection delay, all seeds (a curve ends below 100 % where changes were never seen)")
    paths.append(_save(fig, out / "detection_delay.png", plt))
    return paths


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _mean_new_devices(rows: Sequence[dict]) -> dict:
    """The seeds' mean of :func:`scanflow.evaluation.new_device_delays` (NaN-aware)."""
    rows = [r for r in rows if r]
    if not rows:
        return {}
    out: dict[str, Any] = {"devices": float(np.mean([r["devices"] for r in rows]))}
    for side in ("standard", "efficient"):
        out[side] = {k: float(np.nanmean([r[side][k] for r in rows])) if any(
            not math.isnan(r[side][k]) for r in rows) else float("nan") for k in ("seen", "median_h", "p90_h")}
    return out


# -- across scenarios ----------------------------------------------------------------------------------

#: The columns of the cross-scenario table: (key, heading).
SCENARIO_COLUMNS = (("traffic_ratio", "traffic"), ("pdr", "PDR"), ("ddr", "DDR"), ("attempts_ratio", "attempts"))


def scenario_table(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One row per scenario and judging window: the paper's method's traffic, PDR, DDR and attempts
    (means over seeds, each window from a run of its own length) and the detection delay of devices
    that appeared after the start (median and 90th percentile, efficient scan, from the longest run)."""
    rows = []
    for summ in summaries:
        cfg = summ["config"]
        new = summ.get("new_devices", {}).get("mean", {})
        eff = new.get("efficient", {})
        for wk, win in summ["windows"].items():
            row = {"scenario": cfg.get("scenario", "paper"), "variant": cfg.get("variant", "paper"),
                   "window": wk, "ips": cfg["ips"],
                   "seeds": len(cfg["seeds"]), "desync": cfg["desync"], "loss": cfg["loss"]}
            row.update({k: win["mean"][k] for k, _ in SCENARIO_COLUMNS})
            row.update({f"min_{k}": win["min"][k] for k, _ in SCENARIO_COLUMNS})
            row.update(new_devices=new.get("devices"), new_seen=eff.get("seen"),
                       new_median_h=eff.get("median_h"), new_p90_h=eff.get("p90_h"),
                       standard_new_median_h=new.get("standard", {}).get("median_h"),
                       world=cfg["world"])
            rows.append(row)
    return {"rows": rows, "paper": {"table4": list(PAPER_TABLE4), "attempts": PAPER_ATTEMPTS}}


def _h(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.0f} h"


def _seen(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else _pct(x)


def format_scenario_table(table: dict[str, Any]) -> str:
    """The cross-scenario table as text, with the paper's Table 4 below it."""
    head = (f"{'scenario':<16}{'window':<8}{'traffic':>9}{'PDR':>8}{'DDR':>8}{'attempts':>10}"
            f"{'new devices: seen':>19}{'median':>8}{'p90':>8}")
    lines = [f"{_policy_title(table)} across scenarios (means over seeds; devices new after the start: the share "
             "the efficient scan saw and its delay to see them)", head, "-" * len(head)]
    for r in table["rows"]:
        lines.append(f"{r['scenario']:<16}{r['window']:<8}{_pct(r['traffic_ratio'], 2):>9}{_pct(r['pdr']):>8}"
                     f"{_pct(r['ddr']):>8}{_pct(r['attempts_ratio']):>10}{_seen(r['new_seen']):>19}"
                     f"{_h(r['new_median_h']):>8}{_h(r['new_p90_h']):>8}")
    lines.append("")
    lines.append("paper, real network (Table 4; unsynchronised, with packet loss):")
    for p in PAPER_TABLE4:
        lines.append(f"{'table 4, run ' + str(p['run']):<16}{str(p['weeks']) + 'w':<8}{_pct(p['traffic_ratio'], 2):>9}"
                     f"{_pct(p['pdr']):>8}{'-':>8}{_pct(PAPER_ATTEMPTS[p['weeks']]):>10}")
    return "\n".join(lines)


def _policy_title(table: dict[str, Any]) -> str:
    names = sorted({r.get("variant", "paper") for r in table["rows"]})
    return "The paper's method" if names in ([], ["paper"]) else f"The {', '.join(names)} policy"


def scenario_markdown(table: dict[str, Any]) -> str:
    """The cross-scenario table as Markdown (for the docs), the paper's rows last."""
    lines = ["| scenario | window | traffic | PDR | DDR | attempts | new devices seen | median delay | p90 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in table["rows"]:
        lines.append(f"| {r['scenario']} | {r['window']} | {_pct(r['traffic_ratio'], 2)} | {_pct(r['pdr'])} | "
                     f"{_pct(r['ddr'])} | {_pct(r['attempts_ratio'])} | {_seen(r['new_seen'])} | "
                     f"{_h(r['new_median_h'])} | {_h(r['new_p90_h'])} |")
    for p in PAPER_TABLE4:
        lines.append(f"| paper, Table 4 run {p['run']} | {p['weeks']}w | {_pct(p['traffic_ratio'], 2)} | "
                     f"{_pct(p['pdr'])} | - | {_pct(PAPER_ATTEMPTS[p['weeks']])} | - | - | - |")
    return "\n".join(lines)


def plot_scenarios(path: Path, table: dict[str, Any]) -> Path:
    """One figure across scenarios: PDR, DDR, traffic and attempts per scenario and window, with the
    paper's Table 4 values as reference lines, and the new-device detection delays."""
    plt = _pyplot()
    rows = table["rows"]
    names = list(dict.fromkeys(r["scenario"] for r in rows))
    windows = list(dict.fromkeys(r["window"] for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.5))
    width = 0.8 / max(len(windows), 1)
    x = np.arange(len(names))
    for j, wk in enumerate(windows):
        by = {r["scenario"]: r for r in rows if r["window"] == wk}
        for ax, keys in ((axes[0], ("pdr", "ddr")), (axes[1], ("traffic_ratio", "attempts_ratio"))):
            for k_i, key in enumerate(keys):
                vals = [100 * by[n][key] if n in by else np.nan for n in names]
                offset = (j * len(keys) + k_i - (len(windows) * len(keys) - 1) / 2) * width / len(keys)
                ax.bar(x + offset, vals, width / len(keys), label=f"{key.replace('_ratio', '').upper()} {wk}")
    axes[0].axhline(94.3, color="k", ls="--", lw=1, label="paper 8w PDR 94.3 %")
    axes[0].axhline(95.7, color="grey", ls=":", lw=1, label="paper 2w PDR (mean) 95.7 %")
    lowest = min((100 * r[k] for r in rows for k in ("pdr", "ddr") if r[k] == r[k]), default=70.0)
    axes[0].set_ylim(max(0.0, min(70.0, lowest - 5)), 101)
    axes[0].set_ylabel("%")
    axes[0].set_title("detection (PDR, DDR)")
    axes[1].axhline(3.95, color="k", ls="--", lw=1, label="paper 8w traffic 3.95 %")
    axes[1].axhline(8.95, color="grey", ls=":", lw=1, label="paper 2w traffic 8.95 %")
    axes[1].set_ylabel("% of the standard scan")
    axes[1].set_title("cost (traffic, attempts)")
    longest = windows[-1]
    by = {r["scenario"]: r for r in rows if r["window"] == longest}
    med = [by[n]["new_median_h"] if n in by and by[n]["new_median_h"] is not None else np.nan for n in names]
    p90 = [by[n]["new_p90_h"] if n in by and by[n]["new_p90_h"] is not None else np.nan for n in names]
    axes[2].bar(x - 0.2, med, 0.4, label="median")
    axes[2].bar(x + 0.2, p90, 0.4, label="90th percentile")
    axes[2].set_ylabel("hours")
    axes[2].set_title(f"delay to see a device new after the start ({longest})")
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=20)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
    fig.suptitle(f"{_policy_title(table)} across scenarios (means over seeds)")
    fig.tight_layout()
    return _save(fig, path, plt)


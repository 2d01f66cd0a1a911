"""Speed and memory of the synchronised evaluation: ``python bench/bench_simulate.py [--ips 100000 1000000]``.

For each size, one child process generates a world of that many addresses over ``--weeks`` (8) and
runs both policies on it (the standard scan in closed form, the efficient one through the policy
core's ``decide``), without Parquet records or plots, and reports wall time per stage and its peak
resident memory (``VmHWM``). The port sets are derived once beforehand (the paper's full-port
survey, ~12.2 M addresses) and timed separately; they are the same for every world.

With ``--calibration`` it prints the paper's measured facts as measured on generated worlds (the
table of ``docs/WORLD.md``). With ``--sensitivity`` it instead runs the what-if table of
``docs/EVALUATION.md``, one seed per row: the efficient policy's figures when the world parameters the
paper does not pin down vary, with the silent first scan variant, with other silent sweep intervals,
and with the recall extension (policy parameters; the world stays at its defaults in those rows).
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child(ips: int, weeks: float, seed: int, sets_path: str, overrides: dict, policy: dict,
           name: str = "paper", workers: int = 1, adaptive: dict | None = None) -> None:
    t0 = time.perf_counter()
    from scanflow.adaptive import AdaptiveParams
    from scanflow.knowledge import load_knowledge
    from scanflow.policy import PolicyParams
    from scanflow.evaluation import EvaluationConfig, evaluate_seed
    from scanflow.world import WorldConfig

    with open(sets_path, "rb") as fh:
        sets = pickle.load(fh)
    kb = load_knowledge()
    cfg = EvaluationConfig(ips=ips, weeks=weeks, windows=(2.0, weeks), seeds=(seed,), record=False,
                           world=WorldConfig().with_overrides(overrides), params=PolicyParams(**policy),
                           policy=name, workers=workers, adaptive=AdaptiveParams(**adaptive) if adaptive else None)
    imports = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = evaluate_seed(cfg, seed, sets, kb)
    total = time.perf_counter() - t0
    peak_mib = _peak_mib()
    print(json.dumps({"ips": ips, "weeks": weeks, "seed": seed, "policy": name, "seconds": result.seconds, "total_s": total,
                      "imports_s": imports, "peak_mib": peak_mib, "decisions": result.efficient.decisions,
                      "segments": len(result.world.segments),
                      "windows": {f"{w.weeks:g}w": {"traffic": w.traffic_ratio, "pdr": w.pdr, "ddr": w.ddr,
                                                    "attempts": w.attempts_ratio} for w in result.windows}}))


def _peak_mib() -> float:
    """Peak resident memory of this process: ``VmHWM`` where Linux has it (``ru_maxrss`` would include
    the parent's memory at fork time, which Linux carries across exec), else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run_child(ips: int, weeks: float, seed: int, sets_path: str, overrides: dict | None = None,
               policy: dict | None = None, name: str = "paper", workers: int = 1, adaptive: dict | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", str(ips), str(weeks), str(seed), sets_path,
           json.dumps(overrides or {}), json.dumps(policy or {}), name, str(workers), json.dumps(adaptive or {})]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _derive(sets_path: str) -> float:
    from scanflow.policy import PolicyPortSets
    from scanflow.evaluation import EvaluationConfig, derive_policy_sets

    t0 = time.perf_counter()
    derivation, _ = derive_policy_sets(EvaluationConfig())
    seconds = time.perf_counter() - t0
    with open(sets_path, "wb") as fh:
        pickle.dump(PolicyPortSets.of(derivation), fh)
    print(f"port sets: standard {len(derivation.standard):,}, silent {len(derivation.silent):,}, "
          f"unknown {len(derivation.unknown):,} ports; survey + derivation {seconds:.1f} s")
    return seconds


NO_SPORADIC = {"sporadic_share": "0", "dynamic_share": "0.25"}
STATIC_ONLY = {"sporadic_share": "0", "dynamic_share": "0"}
SILENT_FIRST = {"initial_scan": "silent"}
#: (label, world overrides, policy parameters): each row changes only what it names.
SENSITIVITY = [
    ("default (calibrated: sporadic 0.25 %, dynamic 20 %)", {}, {}),
    ("no sporadic responders (dynamic 25 %)", NO_SPORADIC, {}),
    ("sporadic 1 %, dynamic 24 %", {"sporadic_share": "0.01", "dynamic_share": "0.24"}, {}),
    ("sporadic 3 %, dynamic 22 %", {"sporadic_share": "0.03", "dynamic_share": "0.22"}, {}),
    ("sporadic 6 %, dynamic 19 %", {"sporadic_share": "0.06", "dynamic_share": "0.19"}, {}),
    ("sporadic 25 %, no dynamic", {"sporadic_share": "0.25", "dynamic_share": "0"}, {}),
    ("static only (no dynamic, no sporadic)", STATIC_ONLY, {}),
    ("dynamic occupants all different (pool types 0)", {"dynamic_pool_types": "0"}, {}),
    ("sporadic episodes 6 h (duty refit 0.105)", {"sporadic_on_hours": "6", "sporadic_duty": "0.105"}, {}),
    ("variant: silent first scan", {}, SILENT_FIRST),
    ("variant: silent first scan, no sporadic", NO_SPORADIC, SILENT_FIRST),
    ("variant: silent first scan, static only", STATIC_ONLY, SILENT_FIRST),
    ("policy what-if: silent sweep every 2 d", {}, {"silent_interval": 2 * 86400}),
    ("policy what-if: silent sweep every 1 d", {}, {"silent_interval": 86400}),
    ("policy what-if: silent sweep every 12 h", {}, {"silent_interval": 43200}),
    ("extension: recall every 12 h for 7 d", {}, {"recall_interval": 43200, "recall_for": 7 * 86400}),
    ("extension: recall every 1 d for 14 d", {}, {"recall_interval": 86400, "recall_for": 14 * 86400}),
]


def calibration(n_ips: int = 300_000, seeds: tuple[int, ...] = (11, 12)) -> None:
    """Measure every calibrated quantity on generated worlds and print it next to the paper's value."""
    import numpy as np

    from scanflow.estimate import Estimator
    from scanflow.knowledge import load_knowledge
    from scanflow.evaluation import EvaluationConfig, derive_policy_sets
    from scanflow.world import World, WorldConfig
    from scanflow.world.config import DAY
    from scanflow.world.observe import fixed_point_observation

    kb = load_knowledge()
    est = Estimator(kb)
    rows: dict[str, list[float]] = {}
    for seed in seeds:
        w = World.generate(WorldConfig(n_ips=n_ips), seed, horizon_days=56, kb=kb)
        shares = [len(w.responsive_at(t)) / n_ips for t in np.linspace(0, 55 * DAY, 12)]
        rows.setdefault("responsive share at an instant (min)", []).append(min(shares))
        rows.setdefault("responsive share at an instant (max)", []).append(max(shares))
        o = fixed_point_observation(w, start=35 * DAY, select_at=0, rounds=42)
        rows.setdefault("unchanged over 3 weeks (fixed-point)", []).append(o.unchanged_share)
        rows.setdefault("most frequent change interval (h)", []).append(o.most_frequent_change_interval_hours())
        rows.setdefault("answers in 2 weeks, IPs answering < 80 %", []).append(o.sporadic_mean_answers()[0])
        s = w.segments
        live = np.flatnonzero((s.start <= 0) & (s.end > 0))
        prof = w.seg_profile[live]
        rows.setdefault("honeypots (>= 100 ports) among responsive", []).append(float((w.profiles.n_ports[prof] >= 100).mean()))
        known = estimated = 0
        for seg, p in zip(live, prof):
            if w.profiles.n_ports[p] >= 100:
                continue
            lo, hi = w.profiles.ptr[p], w.profiles.ptr[p + 1]
            banners = [(int(w.profiles.port[e]), w.banner(seg, e, 0)) for e in range(lo, hi)]
            got = est.estimate(frozenset(w.profiles.port[lo:hi].tolist()), [(q, b) for q, b in banners if b])
            m = w.profiles.model[p]
            known += m >= 0 and got.model == kb.devices[m].id
            estimated += got.model is not None
        rows.setdefault("KB models recognised among responsive", []).append(known / len(live))
        rows.setdefault("any estimate among responsive (incl. signature ports)", []).append(estimated / len(live))
    paper = {"responsive share at an instant (min)": "2.30 %", "responsive share at an instant (max)": "2.7 %",
             "unchanged over 3 weeks (fixed-point)": "~70 %", "most frequent change interval (h)": "12",
             "answers in 2 weeks, IPs answering < 80 %": "3.45",
             "honeypots (>= 100 ports) among responsive": "~0.2 % (issue 5)",
             "KB models recognised among responsive": "~3 %",
             "any estimate among responsive (incl. signature ports)": "~3 %"}
    print(f"\nworlds of {n_ips:,} IPs, seeds {seeds}:")
    for key, values in rows.items():
        shown = ", ".join(f"{v:.4g}" for v in values)
        print(f"  {key:<56} {shown:<24} paper: {paper[key]}")
    t0 = time.perf_counter()
    d, n_rows = derive_policy_sets(EvaluationConfig(), kb)
    print(f"\nsurvey ({d.responsive_ips:,} responsive, {n_rows:,} rows, {time.perf_counter() - t0:.1f} s):")
    print(f"  top 10: {[p for p, _ in d.ranking[:10]]}   paper: [80, 443, 25, 21, 110, 587, 7547, 143, 340, 995]")
    print(f"  standard {len(d.standard):,} (paper ~11,000), silent {len(d.silent):,} (paper ~500), "
          f"unknown {len(d.unknown):,} (paper 5,100); device+malware ports alone: PDR {d.pdr_curve[0]:.1%} "
          f"with {len(kb.device_ports() | kb.malware_ports())} ports (paper ~75 % with ~540)")
    print(f"  honeypots {d.honeypot_ips:,} ({d.honeypot_ips / d.responsive_ips:.2%}), threshold {d.threshold_ips:.2f} IPs")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        ips, weeks, seed, sets_path, overrides, policy, name, workers, adaptive = argv[1:10]
        _child(int(ips), float(weeks), int(seed), sets_path, json.loads(overrides), json.loads(policy), name,
               int(workers), json.loads(adaptive))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ips", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--weeks", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--policy", choices=("paper", "adaptive"), default="paper",
                        help="the efficient policy timed against the standard scan")
    parser.add_argument("--sensitivity", action="store_true", help="run the what-if table instead")
    parser.add_argument("--calibration", action="store_true", help="print the calibration table instead")
    parser.add_argument("--sensitivity-ips", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=1,
                        help="processes for the efficient run (ranges of /24s; the figures do not change)")
    parser.add_argument("--moves", action="store_true",
                        help="with --policy adaptive: devices that move on (AdaptiveParams.moves)")
    args = parser.parse_args(argv)
    if args.moves and args.policy != "adaptive":
        parser.error("--moves: devices that move are the adaptive policy's; add --policy adaptive")
    if args.calibration:
        calibration()
        return
    with tempfile.TemporaryDirectory() as tmp:
        sets_path = str(Path(tmp) / "sets.pickle")
        _derive(sets_path)
        if args.sensitivity:
            print(f"\n{args.sensitivity_ips:,} IPs, {args.weeks:g} weeks, seed {args.seed}:")
            print(f"{'world / policy':<48}{'traffic 2w':>11}{'PDR 2w':>8}{'DDR 2w':>8}{'traffic 8w':>11}"
                  f"{'PDR 8w':>8}{'DDR 8w':>8}")
            for label, overrides, policy in SENSITIVITY:
                r = _run_child(args.sensitivity_ips, args.weeks, args.seed, sets_path, overrides, policy)
                w2, w8 = r["windows"]["2w"], r["windows"][f"{args.weeks:g}w"]
                print(f"{label:<48}{w2['traffic']:>10.2%}{w2['pdr']:>8.1%}{w2['ddr']:>8.1%}"
                      f"{w8['traffic']:>10.2%}{w8['pdr']:>8.1%}{w8['ddr']:>8.1%}", flush=True)
            return
        for ips in args.ips:
            r = _run_child(ips, args.weeks, args.seed, sets_path, name=args.policy, workers=args.workers,
                           adaptive={"moves": True} if args.moves else None)
            s = r["seconds"]
            run_s = s["world"] + s["standard"] + s["efficient"]
            w8 = r["windows"][f"{args.weeks:g}w"]
            print(f"{ips:>10,} IPs x {args.weeks:g} weeks, {args.policy}{' (moves)' if args.moves else ''}, "
                  f"{args.workers} worker(s): traffic "
                  f"{w8['traffic']:.3%} PDR {w8['pdr']:.2%} DDR {w8['ddr']:.2%}; {run_s:6.1f} s both policies "
                  f"(world {s['world']:.1f} s, standard {s['standard']:.1f} s, efficient {s['efficient']:.1f} s, "
                  f"{r['decisions']:,} decide calls, {r['segments']:,} world segments); with the 2-week run of its "
                  f"own and the judging {r['total_s']:.1f} s; peak RSS {r['peak_mib']:,.0f} MiB", flush=True)


if __name__ == "__main__":
    main()

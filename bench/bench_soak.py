"""Soak: the whole loop of ``scanflow run`` for a fixed wall time, memory of every process sampled.

Every ``--every`` seconds the resident memory (VmRSS) of each process of the loop (Prism, the
scheduler, the agents, the orchestrator itself) is read from /proc; at the end a least-squares
slope per process over the samples after the warm-up says whether memory is flat::

    .venv/bin/python bench/bench_soak.py                     # 10 minutes, a sample each 30 s
    .venv/bin/python bench/bench_soak.py --minutes 30 --ips 50000

"flat" means the fitted growth over the whole soak is under ``--flat-mb`` (default 20 MB) or
under 5 % of the process's mean RSS: a figure to read, not a test assertion.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scanflow.config import load_settings  # noqa: E402
from scanflow.loop.orchestrate import Loop  # noqa: E402
from scanflow.loop.processes import proc_status_kb  # noqa: E402
from scanflow.loop.spec import LoopError, LoopSpec  # noqa: E402


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) points, in MB per minute."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    return 0.0 if var == 0 else sum((t - mx) * (v - my) for t, v in points) / var * 60


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--every", type=float, default=30.0, help="Seconds between memory samples.")
    ap.add_argument("--warmup", type=float, default=60.0, help="Seconds left out of the slope fit.")
    ap.add_argument("--ips", type=int, default=20_000)
    ap.add_argument("--day-seconds", type=float, default=20.0)
    ap.add_argument("--agents", type=int, default=2)
    ap.add_argument("--flat-mb", type=float, default=20.0)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()

    settings = load_settings()
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-soak-"))
    days = args.minutes * 60 / args.day_seconds
    spec = LoopSpec(run_dir=work / "run", lake_dir=work / "lake", report_dir=work / "report", ips=args.ips,
                    days=days, day_seconds=args.day_seconds, agents=args.agents, report=False)
    samples: dict[str, list[tuple[float, float]]] = {}
    t0 = time.monotonic()

    def on_sample(loop: Loop, progress) -> None:
        t = time.monotonic() - t0
        rss = loop.rss_kb()
        rss["orchestrator"] = proc_status_kb(os.getpid(), "VmRSS")
        for name, kb in rss.items():
            samples.setdefault(name, []).append((t, kb / 1024))
        print(f"  t={t:6.0f} s  rss MB: " + "  ".join(f"{k} {v / 1024:.0f}" for k, v in sorted(rss.items())),
              flush=True)

    loop = Loop(spec, settings, echo=lambda line: print(line, flush=True), progress_every_s=args.every, tty=False,
                on_sample=on_sample)
    try:
        result = loop.run()
    except LoopError as exc:
        # A process died: the memory samples up to that point are still the soak's figures.
        result = None
        print(f"\nbench_soak: the loop failed after {(time.monotonic() - t0) / 60:.1f} min: {exc}")
    if result is not None:
        p = result.progress
        wall = result.loop_wall_s
        print()
        print(f"bench_soak: {wall / 60:.1f} min of the loop, {args.ips:,} IPs, {p.virtual_days:.1f} virtual days, "
              f"{args.agents} agents; {p.events:,} events ({p.events / wall:,.1f}/s), "
              f"{p.commands:,} commands ({p.commands / wall:,.1f}/s), {p.lake_rows:,} lake rows")
    print(f"  {'process':<13} {'samples':>7} {'first MB':>9} {'last MB':>8} {'max MB':>7} "
          f"{'slope MB/min':>13} {'growth MB':>10}  verdict")
    for name, points in sorted(samples.items()):
        fit = [pt for pt in points if pt[0] >= args.warmup] or points
        slope = slope_per_min(fit)
        span_min = (fit[-1][0] - fit[0][0]) / 60 if len(fit) > 1 else 0.0
        growth = slope * span_min
        mean = sum(v for _, v in fit) / len(fit)
        flat = abs(growth) < args.flat_mb or abs(growth) < 0.05 * mean
        print(f"  {name:<13} {len(points):>7} {points[0][1]:>9.1f} {points[-1][1]:>8.1f} "
              f"{max(v for _, v in points):>7.1f} {slope:>13.3f} {growth:>10.1f}  {'flat' if flat else 'GROWING'}")
    return 0 if result is not None else 1


if __name__ == "__main__":
    sys.exit(main())

"""Devices that move, off and on: ``python bench/evaluate_moves.py [--ips 100000] [--seeds 3]``.

Runs ``scanflow evaluate --scenario all --policy adaptive`` twice under the paper's conditions
(desynchronised, 1 % loss), once as configured by default and once with ``--set policy.moves=true``
(issue 16's mechanism 4: a device that another address of its /24 remembers resumes its state where
it answers), then prints one table (traffic, PDR and DDR of both at 2 weeks and at ``--weeks``, and
how many answers resumed a moved device) and plots traffic against PDR, one point per scenario and
setting. ``--reuse`` reads the two output directories of an earlier run instead of running again.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from explore_common import figure  # noqa: E402

SETTINGS = (("off", "false"), ("on", "true"))


def run(out: Path, ips: int, weeks: float, seeds: int, moves: str) -> None:
    """One ``scanflow evaluate`` over every scenario, its progress lines passed through."""
    cmd = [sys.executable, "-m", "scanflow", "--set", f"policy.moves={moves}", "evaluate", "--scenario", "all",
           "--policy", "adaptive", "--ips", str(ips), "--weeks", f"{weeks:g}", "--seeds", str(seeds),
           "--windows", "2", "--desync", "--loss", "0.01", "--no-parquet", "--no-plots", "--out", str(out)]
    print("$ scanflow " + " ".join(cmd[3:]), flush=True)
    subprocess.run(cmd, check=True)


def rows_of(out: Path, weeks: float) -> dict[tuple[str, str], dict]:
    """(scenario, window) -> the scenario table's row, with the moved answers summed over seeds."""
    table = json.loads((out / "scenarios.json").read_text())["rows"]
    rows = {}
    for r in table:
        if r["scenario"].startswith("paper, Table"):
            continue
        metrics = json.loads((out / r["scenario"] / "metrics.json").read_text())
        moved = metrics.get("efficient_moved") or {}
        rows[(r["scenario"], r["window"])] = {**r, "moved": sum(moved.values()), "moved_seeds": len(moved)}
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ips", type=int, default=100_000)
    ap.add_argument("--weeks", type=float, default=8.0)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default="out/evaluate_moves", help="the two runs go to OUT/off and OUT/on")
    ap.add_argument("--reuse", action="store_true", help="read OUT/off and OUT/on of an earlier run")
    ap.add_argument("--plot", default="out/evaluate_moves.png")
    args = ap.parse_args(argv)
    base = Path(args.out)
    if not args.reuse:
        for name, value in SETTINGS:
            run(base / name, args.ips, args.weeks, args.seeds, value)
    got = {name: rows_of(base / name, args.weeks) for name, _ in SETTINGS}
    long = f"{args.weeks:g}w"
    print(f"\n| scenario | window | off: traffic / PDR / DDR | on: traffic / PDR / DDR | moved answers (on, all seeds) |")
    print("|---|---|---|---|---|")
    for (scenario, window), off in got["off"].items():
        on = got["on"][(scenario, window)]
        cells = [f"{100 * r['traffic_ratio']:.3f} % / {100 * r['pdr']:.2f} % / {100 * r['ddr']:.2f} %" for r in (off, on)]
        moved = f"{on['moved']:,}" if window == long else ""
        print(f"| {scenario} | {window} | {cells[0]} | {cells[1]} | {moved} |")
    path = Path(args.plot)
    with figure(path, args.weeks, "PDR, %", "Devices that move: off (o) and on (x), every scenario") as ax:
        for i, scenario in enumerate(dict.fromkeys(s for s, _ in got["off"])):
            for (name, _), marker in zip(SETTINGS, ("o", "x")):
                r = got[name][(scenario, long)]
                ax.scatter([100 * r["traffic_ratio"]], [100 * r["pdr"]], marker=marker, color=f"C{i}",
                           label=f"{scenario}, {name}")
        ax.legend(fontsize=7, ncol=2)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

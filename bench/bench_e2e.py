"""End-to-end benchmark: the whole loop of ``scanflow run`` (Prism scheduler, sim agents, Kafka, lake).

Prints events/s and commands/s through the loop, virtual days per wall minute and the peak memory
(VmHWM from /proc/<pid>/status) of every process of the loop. Needs a running broker
(``scanflow infra up``) and the Prism binary (``scanflow infra prism``)::

    .venv/bin/python bench/bench_e2e.py                      # the main job's defaults
    .venv/bin/python bench/bench_e2e.py --ips 50000 --day-seconds 10 --agents 2

The rates are what the loop did at this time compression, not a capacity: the policy decides how
much there is to scan per virtual day, so a shorter ``--day-seconds`` pushes more through per second
until some process saturates (see the per-process CPU seconds printed at the end).
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
from scanflow.loop.spec import LoopSpec  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (0 when gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ips", type=int, default=20_000)
    ap.add_argument("--days", type=float, default=7.0)
    ap.add_argument("--day-seconds", type=float, default=20.0)
    ap.add_argument("--agents", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dir", default=None, help="Run directory (default: a temporary one).")
    args = ap.parse_args()

    settings = load_settings()
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-e2e-"))
    spec = LoopSpec(run_dir=work / "run", lake_dir=work / "lake", report_dir=work / "report", ips=args.ips,
                    days=args.days, day_seconds=args.day_seconds, agents=args.agents, seed=args.seed,
                    report=False)
    cpu: dict[str, float] = {}

    def on_sample(loop: Loop, progress) -> None:
        # CPU seconds are read while the processes live (a finished process's /proc entry is gone).
        for p in loop.procs:
            if p.alive():
                cpu[p.name] = cpu_seconds(p.popen.pid)

    loop = Loop(spec, settings, echo=print, progress_every_s=5.0, tty=False, on_sample=on_sample)
    t0 = time.monotonic()
    result = loop.run()
    total = time.monotonic() - t0
    p = result.progress
    wall = result.loop_wall_s
    print()
    print(f"bench_e2e: {args.ips:,} IPs, {p.virtual_days:.2f} virtual days at {args.day_seconds:g} s/day, "
          f"{args.agents} agents; loop {wall:.1f} s wall (start to stop {total:.1f} s incl. archive, summary)")
    print(f"  events (ScanEvent + ScanDone records)  {p.events:>12,}   {p.events / wall:>10,.1f} /s")
    print(f"  commands                               {p.commands:>12,}   {p.commands / wall:>10,.1f} /s")
    print(f"  virtual days per wall minute           {p.virtual_days / wall * 60:>12.2f}")
    print(f"  lake rows                              {p.lake_rows:>12,}")
    print(f"  summary tables: {result.summary.get('tables')}")
    print("  peak memory (VmHWM) and CPU seconds per process:")
    for name, kb in sorted(result.peak_rss_kb.items()):
        print(f"    {name:<12} {kb / 1024:>8.1f} MB   {cpu.get(name, 0.0):>7.1f} s CPU")
    print(f"    {'orchestrator':<12} {proc_status_kb(os.getpid(), 'VmHWM') / 1024:>8.1f} MB")
    pid_file = Path(settings.infra.state_dir) / "kafka" / "kafka.pid"
    if not pid_file.is_absolute():
        from scanflow.config import REPO_ROOT
        pid_file = REPO_ROOT / pid_file
    if pid_file.is_file():
        kb = proc_status_kb(int(pid_file.read_text().strip()), "VmHWM")
        print(f"    {'kafka':<12} {kb / 1024:>8.1f} MB   (broker lifetime peak; shared with other users)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

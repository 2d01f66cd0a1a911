"""How long the whole loop takes to find everything on the real-network testbed (root).

For each backend (connect, masscan) and testbed layout (``sparse24``: one /24 with seven live hosts;
``multi``: four /24s with six), runs ``scanflow run`` on the clock it works out for itself (plus the
fast-probing settings a testbed allows: it is ours) and reads the lake afterwards:

- time from the run's start to the first answer of every live (ip, port) of the policy's port sets
  (the loop "found everything"), and to the first decision of every live address;
- what it missed, and what it recorded that the capture has no SYN-ACK for (must be nothing);
- the packets and bytes the ScanDones report against what the capture saw the scanner send.

    sudo .venv/bin/python bench/bench_loop_testbed.py [--backends connect,masscan] [--layouts sparse24,multi]

Needs the broker (``scanflow infra up``) and Prism (``scanflow infra prism``). Prints one line per
run and a table; figures go to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from connectors.duckdb_catalog import Catalog  # noqa: E402
from tests.e2e.test_testbed_loop import FAST, _policy_ports  # noqa: E402
from tests.testbed import Testbed, testbed_skip_reason  # noqa: E402


def run_once(backend: str, layout: str, days: float, tmp: Path) -> dict:
    with Testbed(tmp / f"bed-{backend}-{layout}", layout=layout, seed=29) as tb:
        run_dir, lake = tmp / f"run-{backend}-{layout}", tmp / f"lake-{backend}-{layout}"
        extra = []
        if backend == "masscan":
            extra = ["--set", f"agent.masscan_interface={tb.scanner_if}",
                     "--set", f"agent.masscan_router_mac={tb.router_mac}",
                     "--set", f"agent.masscan_adapter_ip={tb.scanner_ip}", "--set", "agent.masscan_wait_s=1"]
        args = [*FAST, *extra, "run", "--backend", backend, "--days", str(days), "--agents", "2", "--rate", "20000",
                "--no-report", "--skip-kafka-up", "--run-dir", str(run_dir), "--lake", str(lake)]
        for block in tb.blocks:
            args += ["--allow", block]
        print(f"[{backend} {layout}] scanflow run over {', '.join(tb.blocks)} ...", flush=True)
        t0 = time.monotonic()
        with tb.capture(f"{backend}-{layout}") as cap:
            out = subprocess.run([sys.executable, "-m", "scanflow", *args], cwd=REPO, capture_output=True,
                                 text=True, timeout=1800)
        wall = time.monotonic() - t0
        if out.returncode != 0:
            raise SystemExit(f"run failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        clock = next((line for line in out.stdout.splitlines() if line.startswith("clock:")), "")
        start_us = int(json.loads((run_dir / "scheduler.json").read_text())["start"] * 1e6)
        ports = _policy_ports()
        expected = {(ip, p) for ip, p in tb.open_pairs if p in ports}
        with Catalog(lake) as cat:
            first = {(r["ip"], r["port"]): r["t"] for r in cat.sql(
                "SELECT ip, port, min(epoch_us(timestamp)) AS t FROM events GROUP BY ip, port").to_pylist()}
            decided = {r["ip"]: r["t"] for r in cat.sql(
                "SELECT ip, min(epoch_us(decided_at)) AS t FROM decisions_dedup WHERE scan_id IS NOT NULL "
                "GROUP BY ip").to_pylist()}
            reported = cat.sql("SELECT sum(packets_sent) AS p, sum(bytes_sent) AS b FROM scans_dedup").to_pylist()[0]
        wire = cap.synacks()
        sent_packets, sent_bytes = cap.sent()
        found = set(first) & expected
        live = {ip for ip, _ in expected}
        return {
            "backend": backend, "layout": layout, "addresses": tb.addresses(), "live_pairs": len(expected),
            "found": len(found), "missed": sorted(expected - set(first)),
            "false_positives": sorted(set(first) - wire),
            "all_found_s": (max(first[k] for k in found) - start_us) / 1e6 if found == expected else None,
            "all_decided_s": (max(decided[ip] for ip in live) - start_us) / 1e6 if live <= set(decided) else None,
            "run_wall_s": wall, "clock": clock,
            "reported_packets": int(reported["p"] or 0), "wire_packets": sent_packets,
            "reported_bytes": int(reported["b"] or 0), "wire_bytes": sent_bytes, "arp": cap.arp(),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="connect,masscan")
    parser.add_argument("--layouts", default="sparse24,multi")
    parser.add_argument("--days", type=float, default=1.5)
    args = parser.parse_args()
    reason = testbed_skip_reason()
    if reason:
        raise SystemExit(f"bench_loop_testbed: {reason}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="scanflow-bench-loop-") as tmp:
        for backend in args.backends.split(","):
            for layout in args.layouts.split(","):
                row = run_once(backend, layout, args.days, Path(tmp))
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    print("| backend | layout | addresses | live (ip, port) | found | false positives | all found after | "
          "all decided after | packets reported / on the wire | bytes reported / on the wire | clock |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        def s(v):
            return f"{v:.1f} s" if v is not None else "not all"
        print(f"| {r['backend']} | {r['layout']} | {r['addresses']} | {r['live_pairs']} | {r['found']} | "
              f"{len(r['false_positives'])} | {s(r['all_found_s'])} | {s(r['all_decided_s'])} | "
              f"{r['reported_packets']:,} / {r['wire_packets']:,} | {r['reported_bytes']:,} / {r['wire_bytes']:,} | "
              f"{r['clock'].split('(')[0].replace('clock: ', '')} |")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()

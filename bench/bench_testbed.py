"""Probes/s of the agent on the testbed (root, Kafka up): the connect backend against silent
addresses (dropped at the testbed's router: no ARP waits, no answers) next to masscan on the same
blocks, with the packets on the wire and the agent's own count of them.

    sudo .venv/bin/python bench/bench_testbed.py                      # multi layout: 4 /24s, 6 live hosts
    sudo .venv/bin/python bench/bench_testbed.py --ports 40 --rate 20000 --concurrency 1024,4096 --timeout 0.5,1

Every scan is the real agent (``Agent.execute`` of one command over every block) publishing to the
broker of ``scanflow.toml`` / ``SCANFLOW_KAFKA_*``; a tcpdump of the scanner's interface runs
during each. Prints one line per scan and a table at the end.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layout", default="multi", help="testbed layout: multi (1,024 addresses) or sparse24")
    p.add_argument("--ports", type=int, default=20, help="ports per address (closed everywhere)")
    p.add_argument("--rate", type=float, default=20000, help="agent.rate_pps")
    p.add_argument("--concurrency", default="1024,4096", help="connect: agent.concurrency values")
    p.add_argument("--timeout", default="0.5,1.0", help="connect: agent.connect_timeout_s values")
    p.add_argument("--masscan-rates", default="20000,50000", help="masscan: agent.rate_pps values")
    args = p.parse_args()

    from scanflow.config import TopicsSettings, load_settings
    from tests.testbed import Testbed, testbed_skip_reason
    from tests.testbed.scan import ScratchTopics, run_scans

    reason = testbed_skip_reason()
    if reason:
        print(f"bench_testbed: cannot build the testbed: {reason}", file=sys.stderr)
        return 2
    kafka = load_settings().kafka
    topic = ScratchTopics(kafka)

    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-testbed-") as tmp, Testbed(Path(tmp) / "bed",
                                                                                 layout=args.layout) as tb:
            rng = random.Random(1)
            ports = sorted(rng.sample([p for p in range(1024, 65536) if p not in tb.live_ports], args.ports))
            probes = tb.addresses() * len(ports)
            print(f"testbed {args.layout}: {len(tb.blocks)} blocks, {tb.addresses()} addresses "
                  f"({len(tb.truth)} live), {len(ports)} ports -> {probes} probes per scan", flush=True)
            specs = []
            for conc in map(int, args.concurrency.split(",")):
                for timeout in map(float, args.timeout.split(",")):
                    specs.append({"backend": "connect", "ports": ports, "seed": 1, "label":
                                  f"connect concurrency={conc} timeout={timeout}s",
                                  "over": {"rate_pps": args.rate, "per_target_pps": min(args.rate, 1000),
                                           "concurrency": conc, "connect_timeout_s": timeout}})
            for rate in map(float, args.masscan_rates.split(",")):
                specs.append({"backend": "masscan", "ports": ports, "seed": 1, "label": f"masscan rate={int(rate)}",
                              "over": {"rate_pps": rate, "per_target_pps": rate}})
            for spec in specs:
                topics = TopicsSettings(events=topic("bench-testbed", 6), dead_letter=topic("bench-testbed-dl", 1))
                print(f"... {spec['label']}", flush=True)
                started = time.monotonic()
                (result,) = run_scans(tb, kafka, topics, [spec], Path(tmp))
                wire_packets, wire_bytes = result.cap.sent()
                row = (spec["label"], result.probes, result.seconds, result.probes / result.seconds,
                       wire_packets, result.packets, result.cap.arp())
                rows.append(row)
                print(f"    {row[1]} probes in {row[2]:.2f} s = {row[3]:,.0f} probes/s; wire {wire_packets} packets "
                      f"{wire_bytes} bytes (+{row[6]} ARP), reported {result.packets} packets {result.bytes} bytes "
                      f"({time.monotonic() - started:.1f} s with the broker round trip)", flush=True)
    finally:
        topic.close()
    print()
    print("| scan | probes | seconds | probes/s | packets on the wire | packets reported | ARP |")
    print("|---|---|---|---|---|---|---|")
    for label, n, secs, rate, wire, reported, arp in rows:
        print(f"| {label} | {n} | {secs:.2f} | {rate:,.0f} | {wire} | {reported} | {arp} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

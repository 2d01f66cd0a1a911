"""What TLS adds to the connect backend's probes/s on the testbed (issue 17's grabber target).

    sudo .venv/bin/python bench/bench_tls_testbed.py                 # 16 and 254 live hosts of one /24
    sudo .venv/bin/python bench/bench_tls_testbed.py --live 32 --ports 20 --rounds 5

Each testbed is one /24 whose ``live`` hosts serve the same device twice (``tls_cost_layout``): its
web interface over TLS on 443 (self-signed RSA-2048 certificate, TLS 1.2, then ``GET /`` over it)
and in clear on 80. Every scan is the real agent (connect backend, ``Agent.execute`` of one command
over the /24, publishing to the broker of ``scanflow.toml`` / ``SCANFLOW_KAFKA_*``) on the same
addresses and the same number of ports; the two scans differ only in which one of them is open:

- ``tls``:   443 plus ``ports - 1`` closed ports: every open port costs a TLS handshake and HTTP;
- ``plain``: 80 plus the same closed ports: every open port costs HTTP in clear.

The other addresses of the /24 are silent (dropped at the testbed's router, as on the Internet).
``--ports 1`` scans the open port alone: every probe of a live host is then a grab (the worst case).
Rounds alternate the two scans; the table gives medians and the figure the target is about: how much
lower the ``tls`` scan's probes/s is than the ``plain`` one's. The bench also checks every live host
was found and named its grabber's way (a TLS grab that failed would look cheap).
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--live", default="16,254", help="live hosts of the /24, one testbed each (1-254)")
    p.add_argument("--ports", default="20,1", help="ports per address per scan (one of them open on live hosts)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of (tls, plain) per testbed and port count")
    p.add_argument("--concurrency", type=int, default=1024, help="agent.concurrency")
    p.add_argument("--timeout", type=float, default=0.5, help="agent.connect_timeout_s")
    args = p.parse_args()
    try:
        lives = [int(x) for x in args.live.split(",")]
        port_counts = [int(x) for x in args.ports.split(",")]
    except ValueError:
        print("bench_tls_testbed: --live and --ports take whole numbers separated by commas, e.g. --live 16,254",
              file=sys.stderr)
        return 2
    if any(not 1 <= n <= 254 for n in lives) or any(n < 1 for n in port_counts) or args.rounds < 1:
        print("bench_tls_testbed: --live must be 1-254, --ports and --rounds at least 1", file=sys.stderr)
        return 2

    from scanflow.config import TopicsSettings, load_settings
    from tests.testbed import Testbed, testbed_skip_reason
    from tests.testbed.bed import tls_cost_layout
    from tests.testbed.scan import ScratchTopics, run_scans

    reason = testbed_skip_reason()
    if reason:
        print(f"bench_tls_testbed: cannot build the testbed: {reason}", file=sys.stderr)
        return 2
    kafka = load_settings().kafka
    topic = ScratchTopics(kafka)

    # (live, ports, kind) -> [(probes/s, scanner CPU ms per probe, probes)]
    runs: dict[tuple[int, int, str], list[tuple[float, float, int]]] = {}
    over = {"rate_pps": 1_000_000, "per_target_pps": 100_000, "concurrency": args.concurrency,
            "connect_timeout_s": args.timeout, "read_timeout_s": 2.0}
    try:
        for live in lives:
            with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
                t_build = time.monotonic()
                with Testbed(Path(tmp) / "bed", layout=f"tls-cost-{live}", spec=tls_cost_layout(live)) as tb:
                    print(f"testbed: 1 /24, {live} live hosts (TLS on 443 and clear on 80 each), built in "
                          f"{time.monotonic() - t_build:.1f} s", flush=True)
                    rng = random.Random(live)
                    closed_pool = [q for q in range(1024, 65536) if q not in tb.live_ports]
                    for n_ports in port_counts:
                        closed = sorted(rng.sample(closed_pool, n_ports - 1))
                        for rnd in range(args.rounds):
                            for kind, open_port in (("tls", 443), ("plain", 80)):
                                spec = {"backend": "connect", "ports": [open_port, *closed], "seed": rnd + 1,
                                        "over": over}
                                topics = TopicsSettings(events=topic("bench-tls", 6),
                                                        dead_letter=topic("bench-tls-dl", 1))
                                cpu0 = _cpu_s()
                                (result,) = run_scans(tb, kafka, topics, [spec], Path(tmp))
                                # run_scans also reads the events back; the scan's own CPU is most of it
                                cpu = _cpu_s() - cpu0
                                found = {(e["ip"], e["port"]) for e in result.events}
                                want = {(ip, open_port) for ip in tb.truth}
                                if found != want:
                                    print(f"bench_tls_testbed: the {kind} scan found {len(found & want)} of "
                                          f"{len(want)} open ports (and {len(found - want)} others)",
                                          file=sys.stderr)
                                    return 1
                                grabbed = sum(1 for e in result.events
                                              if (e.get("protocol") or "") == ("tls" if kind == "tls" else "http")
                                              and e.get("status") == "SUCCESS")
                                if grabbed != len(want):
                                    statuses = sorted({(e.get("protocol"), e.get("status")) for e in result.events})
                                    print(f"bench_tls_testbed: {grabbed} of {len(want)} {kind} grabs ended SUCCESS: "
                                          f"{statuses}", file=sys.stderr)
                                    return 1
                                rate = result.probes / result.seconds
                                runs.setdefault((live, n_ports, kind), []).append(
                                    (rate, 1000 * cpu / result.probes, result.probes))
                                print(f"  live {live:>3} ports {n_ports:>2} round {rnd + 1} {kind:<5}: "
                                      f"{result.probes} probes in {result.seconds:.2f} s = {rate:,.0f} probes/s, "
                                      f"{grabbed} grabs SUCCESS", flush=True)
    finally:
        topic.close()

    print()
    print("| live hosts of 254 | ports per address | open ports that are TLS grabs | probes/s plain | "
          "probes/s TLS | TLS lowers probes/s by | scanner CPU per probe plain / TLS |")
    print("|---|---|---|---|---|---|---|")
    for live in lives:
        for n_ports in port_counts:
            plain, tls = runs[(live, n_ports, "plain")], runs[(live, n_ports, "tls")]
            rp, rt = statistics.median(r for r, _, _ in plain), statistics.median(r for r, _, _ in tls)
            cp, ct = statistics.median(c for _, c, _ in plain), statistics.median(c for _, c, _ in tls)
            probes = max(n for _, _, n in tls)
            print(f"| {live} | {n_ports} | {live} of {probes} probes ({100 * live / probes:.2f} %) | {rp:,.0f} | "
                  f"{rt:,.0f} | {100 * (1 - rt / rp):.1f} % | {cp:.3f} / {ct:.3f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

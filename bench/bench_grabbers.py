"""What TLS adds to a probe: the connect backend's grabber on plain HTTP vs TLS + HTTP, on 127.0.0.1.

Two device servers in a separate process (``tests.testbed.serve``, this host's 127.0.0.1 only): a
web interface answering ``GET /`` in clear, and the same behind TLS with a self-signed RSA-2048
certificate made now (``cryptography``). The probe is the connect backend's own
(:meth:`probe_agent.backends.connect.ConnectGrabber.grab`: connect, grab with the port's grabber,
close), ``--concurrency`` in flight. Rounds alternate http, tls, http, tls, ... so that a change of the
machine's load hits both; printed per round and as medians:

- probes/s (wall clock of the round),
- the scanner's CPU per probe (this process's user + system time / probes), which is what a probe
  costs the agent; the servers' CPU is in their own process and not counted.

Run::

    .venv/bin/python bench/bench_grabbers.py [--probes 3000] [--rounds 3] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from probe_agent.backends.connect import ConnectGrabber  # noqa: E402
from probe_agent.settings import AgentSettings  # noqa: E402
from tests.support.certs import self_signed  # noqa: E402
from tests.testbed.services import start_devices  # noqa: E402

CONTACT = "scanflow-benchmark (purpose: https://lab.example/scan)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def probe_round(grabber: ConnectGrabber, port: int, name: str, probes: int, concurrency: int):
    sem = asyncio.Semaphore(concurrency)
    ok = 0

    async def one():
        nonlocal ok
        async with sem:
            r = await grabber.grab("127.0.0.1", port, grabber=name)
            ok += r.kind == "BANNER" and r.grab_status == "SUCCESS"

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(probes)))
    return time.perf_counter() - t0, time.process_time() - cpu0, ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--probes", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-grab-"))
    cert, key = self_signed(tmp / "cert", "IPC-HFW1320S", "Dahua", dns=("ipc.local",))
    http_port, tls_port = free_port(), free_port()
    spec = [{"ip": "127.0.0.1", "port": http_port, "kind": "http-auth", "server": "Webs", "realm": "IPC"},
            {"ip": "127.0.0.1", "port": tls_port, "kind": "https", "server": "Webs", "cert": str(cert),
             "key": str(key)}]
    proc = start_devices(None, spec, tmp, tmp / "devices.log")
    settings = AgentSettings(backend="connect", allowlist=("127.0.0.1/32",), contact=CONTACT,
                             connect_timeout_s=3, read_timeout_s=5, passive_wait_s=1, idle_gap_s=0.05,
                             concurrency=args.concurrency).validate()
    figures: dict[str, list[tuple[float, float]]] = {"http": [], "tls": []}
    try:
        grabber = ConnectGrabber(settings)
        asyncio.run(probe_round(grabber, tls_port, "tls", 50, 8))          # warm-up (imports, caches)
        for n in range(args.rounds):
            for name, port in (("http", http_port), ("tls", tls_port)):
                wall, cpu, ok = asyncio.run(probe_round(grabber, port, name, args.probes, args.concurrency))
                rate, cpu_ms = args.probes / wall, cpu / args.probes * 1000
                figures[name].append((rate, cpu_ms))
                print(f"round {n + 1} {name:4s}: {args.probes} probes ({ok} banners) in {wall:.2f} s = "
                      f"{rate:,.0f} probes/s; scanner CPU {cpu_ms:.3f} ms/probe", flush=True)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: (statistics.median(r for r, _ in v), statistics.median(c for _, c in v)) for k, v in figures.items()}
    print(f"median http: {med['http'][0]:,.0f} probes/s, {med['http'][1]:.3f} ms CPU/probe")
    print(f"median tls : {med['tls'][0]:,.0f} probes/s, {med['tls'][1]:.3f} ms CPU/probe")
    print(f"TLS adds {med['tls'][1] / med['http'][1] - 1:+.0%} scanner CPU per probe, "
          f"{med['http'][0] / med['tls'][0] - 1:+.0%} wall time per probe (load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()

"""Probe agent throughput: the connect backend, the masscan backend beside masscan alone, events/s.

1. ``connect``: probes/s of the connect backend on a loopback interface. The scan runs inside a
   fresh network namespace (its own 127.0.0.1, so no service of this machine is touched) against
   all 65,535 ports of 127.0.0.1, a few hundred of them open with a greeting; events are counted,
   not published (the namespace has no route to Kafka). Needs root.
2. ``masscan``: packets/s through a veth pair into a namespace (198.18.X.0/24 x ``--ports``), masscan
   alone with the exact command line the backend builds, then the agent with the masscan backend
   publishing its events to Kafka. Rate = SYNs / time from the start (process launch; the agent's
   command) until that many packets had left the interface (sampled every millisecond); the time
   until every event was acknowledged is printed too. Needs root and masscan.
3. ``events``: ScanEvents/s through the agent's publisher (encode + send + flush, acks=all) and a
   sim-agent scan end to end (probes/s and events/s of the synthetic world).

Run (broker up: ``scanflow infra up``)::

    sudo .venv/bin/python bench/bench_agent.py [all|connect|masscan|events] [--rate 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from connectors.avro_codec import make_record  # noqa: E402
from probe_agent.backends import ProbeResult, ProbeStatus  # noqa: E402
from probe_agent.core import Agent  # noqa: E402
from probe_agent.settings import AgentSettings  # noqa: E402
from scanflow.config import TopicsSettings, load_settings  # noqa: E402
from scanflow.portsets import PortSet  # noqa: E402

CONTACT = "scanflow-benchmark (purpose: https://lab.example/scan)"


class CountingPublisher:
    """Counts what the agent would publish (for runs without a broker)."""

    def __init__(self) -> None:
        self.events = self.dones = 0
        self.listeners: list = []

    def event(self, scan_id, result):
        self.events += 1

    def done(self, tally):
        self.dones += 1

    def dead_letter(self, *args, **kwargs):
        pass

    def flush(self, timeout_s=None):
        pass

    def close(self, timeout_s=None):
        pass


def load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


# -- 1. connect on loopback, inside a namespace -------------------------------------------------------

def connect_inside(open_ports: int, concurrency: int) -> None:
    """(inside the namespace) Listeners on 127.0.0.1, then a full-port connect scan of it."""
    import socket

    listeners = []
    for port in range(40000, 40000 + open_ports):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(1024)
        listeners.append(s)

    def greet():  # accept-and-greet loop: an SSH-like banner at once, then close
        import selectors

        sel = selectors.DefaultSelector()
        for s in listeners:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        while True:
            for key, _ in sel.select(1.0):
                try:
                    conn, _ = key.fileobj.accept()
                except BlockingIOError:
                    continue
                conn.sendall(b"SSH-2.0-bench\r\n")
                conn.close()

    threading.Thread(target=greet, daemon=True).start()
    tmp = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    PortSet.named("all", 1, range(1, 65536)).write(tmp / "all-v1.json")
    settings = AgentSettings(backend="connect", allowlist=("127.0.0.1/32",), contact=CONTACT, rate_pps=1e6,
                             per_target_pps=1e6, burst_s=0.01, concurrency=concurrency, connect_timeout_s=2,
                             read_timeout_s=2, passive_wait_s=0.5, idle_gap_s=0.05, portset_dir=str(tmp),
                             skip_tracked=False, agent_id="bench")
    agent = Agent(settings, load_settings().kafka, TopicsSettings(), publisher=CountingPublisher())
    cmd = make_record("ScanCommand", command_id="bench-connect", targets=["127.0.0.1"],
                      port_set={"name": "all", "version": 1, "ports": []})
    t0, c0 = time.perf_counter(), time.process_time()
    (tally,) = asyncio.run(agent.execute(cmd))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"connect backend, 127.0.0.1 in a namespace: {tally.ports_seen.__len__():,} probes "
          f"({open_ports} open, greeting) in {wall:.2f} s = {65535 / wall:,.0f} probes/s, "
          f"{65535 / cpu:,.0f} probes/CPU-s; {agent.publisher.events} events, {tally.packets:,} packets "
          f"(concurrency {concurrency}; {load()})")


def bench_connect(args) -> None:
    from tests.integration.netns import TestNet

    with TestNet() as net:
        net.ns("ip", "link", "set", "lo", "up")
        proc = subprocess.run(["ip", "netns", "exec", net.name, sys.executable, __file__, "connect-inside",
                               "--open-ports", str(args.open_ports), "--concurrency", str(args.concurrency)],
                              cwd=REPO, capture_output=True, text=True)
        print(proc.stdout.strip() or proc.stderr.strip())


# -- 2. masscan, alone and as the backend -------------------------------------------------------------

class TxWatch:
    """Samples an interface's tx_packets every millisecond from now on; :meth:`result` gives the time
    at which ``threshold`` packets had left (the SYN phase), or the last increase without one."""

    def __init__(self, iface: str, threshold: int | None = None):
        self.path = Path(f"/sys/class/net/{iface}/statistics/tx_packets")
        self.threshold = threshold
        self.start_count = int(self.path.read_text())
        self.start = time.perf_counter()
        self.last_change = self.start
        self.reached: float | None = None
        self.last = self.start_count
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            value = int(self.path.read_text())
            if value != self.last:
                self.last, self.last_change = value, time.perf_counter()
                if self.threshold and self.reached is None and value - self.start_count >= self.threshold:
                    self.reached = self.last_change
            time.sleep(0.001)

    def result(self) -> tuple[int, float]:
        self._stop.set()
        self._thread.join()
        end = self.reached if self.reached is not None else self.last_change
        return (self.threshold or self.last - self.start_count), end - self.start


def bench_masscan(args, kafka) -> None:
    from probe_agent.backends.masscan import MasscanBackend
    from tests.integration.netns import TestNet, start_services

    ports = list(range(1, args.ports + 1))
    with TestNet() as net:
        tmp = Path(tempfile.mkdtemp(prefix="bench-agent-"))
        start_services(net, net.ns_ip, tmp / "services.log", [("ssh", 22), ("http", 80), ("ftp", 21)])
        PortSet.named("k", 1, ports).write(tmp / "k-v1.json")
        settings = AgentSettings(
            backend="masscan", allowlist=(net.subnet,), contact=CONTACT, rate_pps=args.rate,
            per_target_pps=args.rate, masscan_interface=net.host_if, masscan_router_mac=net.peer_mac,
            masscan_adapter_ip=net.host_ip, masscan_wait_s=1, seed=5, portset_dir=str(tmp),
            skip_tracked=False, agent_id="bench", interface=net.host_if, read_timeout_s=2, passive_wait_s=0.5)
        syns = 256 * len(ports)
        # masscan alone, the backend's own command line, ended the same way once its wait is over.
        backend = MasscanBackend(settings)
        asyncio.run(backend.open())
        (tmp / "inc.txt").write_text(f"{net.subnet.replace('.0/24', '.0')}-{net.subnet.replace('.0/24', '.255')}\n")
        (tmp / "exc.txt").write_text("255.255.255.255/32\n")
        cmd = backend.command(str(tmp / "inc.txt"), str(tmp / "exc.txt"), ports, args.rate)
        watch = TxWatch(net.host_if, syns)
        proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                start_new_session=True)
        # masscan 1.3.2 may not exit after its --wait (see the backend): end it the same way.
        while proc.poll() is None:
            time.sleep(0.05)
            quiet = time.perf_counter() - watch.last_change
            if watch.last - watch.start_count >= syns and quiet > settings.masscan_wait_s + 1.5:
                os.killpg(proc.pid, signal.SIGTERM)
        found = sum(1 for line in proc.stdout if '"open"' in line)
        alone_packets, alone_s = watch.result()
        print(f"masscan alone:   {alone_packets:,} SYNs out {alone_s:.2f} s after the start = "
              f"{alone_packets / alone_s:,.0f} packets/s (--rate {args.rate:,.0f}; {found} open)")
        # The agent with the masscan backend, events to Kafka.
        topics = TopicsSettings(events=_topic(kafka, 12), dead_letter=_topic(kafka, 1))
        agent = Agent(settings, kafka, topics)
        command = make_record("ScanCommand", command_id=f"bench-{uuid.uuid4().hex[:6]}", targets=[net.subnet],
                              port_set={"name": "k", "version": 1, "ports": []})

        async def run():
            await agent.open()
            watch2 = TxWatch(net.host_if, syns)
            t0 = time.perf_counter()
            (tally,) = await agent.execute(command)
            agent.publisher.flush()
            return tally, watch2.result(), time.perf_counter() - t0

        tally, (agent_packets, agent_s), total = asyncio.run(run())
        agent.publisher.close()
        print(f"masscan backend: {agent_packets:,} SYNs out {agent_s:.2f} s after the command started = "
              f"{agent_packets / agent_s:,.0f} packets/s = {agent_packets / agent_s / (alone_packets / alone_s):.0%} "
              f"of masscan alone; "
              f"{tally.responses} events published, all acknowledged {total:.2f} s after the start "
              f"(incl. {settings.masscan_wait_s:.0f} s --wait and the banner grabs; {load()})")


def _topic(kafka, partitions: int) -> str:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    name = f"bench.agent.{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(**kafka.client_options())
    admin.create_topics([NewTopic(name, partitions, 1)])
    admin.close()
    return name


# -- 3. events/s -----------------------------------------------------------------------------------------

def bench_events(args, kafka) -> None:
    from probe_agent.publisher import EventPublisher

    topics = TopicsSettings(events=_topic(kafka, 12), dead_letter=_topic(kafka, 1))
    publisher = EventPublisher(kafka, topics, "bench")
    banner = b"HTTP/1.1 200 OK\r\nServer: Hikvision-Webs\r\nContent-Length: 0\r\n\r\n"
    results = [ProbeResult(f"198.18.{(i >> 8) & 255}.{i & 255}", 80 + i % 3, ProbeStatus.OPEN,
                           kind="BANNER" if i % 2 else "SYN_ACK", banner=banner if i % 2 else None,
                           protocol="http" if i % 2 else None, timestamp_us=1_700_000_000_000_000 + i)
               for i in range(args.events)]
    t0, c0 = time.perf_counter(), time.process_time()
    for i, r in enumerate(results):
        publisher.event(f"bench/{i // 100}", r)
    publisher.flush()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    publisher.close()
    print(f"publisher: {args.events:,} ScanEvents in {wall:.2f} s = {args.events / wall:,.0f} events/s "
          f"({args.events / cpu:,.0f} per CPU-s), acks=all; {load()}")

    # A sim agent sweeping a synthetic /16 on its 97 silent ports, end to end through Kafka.
    from probe_agent.backends.sim import SimBackend

    settings = AgentSettings(backend="sim", allowlist=("10.0.0.0/16",), rate_pps=1e6, per_target_pps=1e3,
                             sim_n_ips=65536, sim_seed=1, skip_tracked=False, agent_id="bench-sim")
    topics = TopicsSettings(events=_topic(kafka, 12), dead_letter=_topic(kafka, 1))
    agent = Agent(settings, kafka, topics, backend=SimBackend(settings))
    ports = sorted(set(range(1, 65536)) & {21, 22, 23, 25, 80, 81, 110, 143, 443, 554, 587, 993, 995, 1883,
                                           2323, 5000, 7547, 8000, 8080, 8081, 8443, 8888, 9000, 37777})
    cmd = make_record("ScanCommand", command_id="bench-sim", targets=["10.0.0.0/16"],
                      port_set={"name": None, "version": None, "ports": ports},
                      not_before=1_575_244_800_000_000 + 3_600_000_000)
    t0, c0 = time.perf_counter(), time.process_time()
    (tally,) = asyncio.run(agent.execute(cmd))
    agent.publisher.flush()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    agent.publisher.close()
    probes = 65536 * len(ports)
    print(f"sim agent: {probes:,} virtual probes of 10.0.0.0/16 x {len(ports)} ports and their "
          f"{tally.responses:,} events published in {wall:.2f} s = {probes / wall:,.0f} probes/s "
          f"(CPU {cpu:.2f} s); {load()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", default="all", choices=["all", "connect", "masscan", "events",
                                                                   "connect-inside"])
    parser.add_argument("--rate", type=float, default=200_000, help="masscan packets/s cap")
    parser.add_argument("--ports", type=int, default=1000, help="masscan: ports per address of the /24")
    parser.add_argument("--events", type=int, default=100_000, help="ScanEvents for the publisher figure")
    parser.add_argument("--open-ports", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=1000)
    args = parser.parse_args(argv)
    if args.what == "connect-inside":
        connect_inside(args.open_ports, args.concurrency)
        return
    kafka = load_settings().kafka
    root = os.geteuid() == 0
    if args.what in ("all", "connect"):
        bench_connect(args) if root else print("connect: skipped, needs root for its own network namespace")
    if args.what in ("all", "masscan"):
        bench_masscan(args, kafka) if root else print("masscan: skipped, needs root")
    if args.what in ("all", "events"):
        bench_events(args, kafka)


if __name__ == "__main__":
    main()

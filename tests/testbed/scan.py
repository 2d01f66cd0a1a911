"""One agent scan of a testbed, captured on the wire: what tests and benchmarks of the agent share.

    result = agent_scan(tb, kafka, topics, "connect", ports, workdir, seed=3)
    result.open          # {(ip, port)} the agent published events for (read back from Kafka)
    result.packets, result.bytes   # what its ScanDones say it sent
    result.cap           # the capture of the scan (cap.synacks(), cap.sent(), cap.arp())

The agent is the real one (:class:`probe_agent.core.Agent`, :meth:`~probe_agent.core.Agent.execute`
of one ScanCommand naming every block of the testbed), publishing to a real broker.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.testbed.bed import Testbed
from tests.testbed.capture import Capture

CONTACT = "scanflow-testbed (purpose and opt-out: https://lab.example/scan)"

#: Agent settings for quick testbed scans (silent addresses cost one connect timeout each).
QUICK = dict(rate_pps=5000, per_target_pps=1000, burst_s=0.05, concurrency=1024, connect_timeout_s=0.4,
             read_timeout_s=1.5, passive_wait_s=0.5, idle_gap_s=0.2, syn_retries=1)


def agent_settings(tb: Testbed, backend: str, portset_dir: Path, seed: int = 0, **over):
    """Settings of an agent allowed to scan ``tb``'s blocks, its probes pinned to the scanner's
    interface (masscan: that interface, the router's MAC, the scanner's address)."""
    from probe_agent.settings import AgentSettings

    values = dict(QUICK, allowlist=tuple(tb.blocks), contact=CONTACT, portset_dir=str(portset_dir),
                  agent_id="testbed-agent", skip_tracked=False, interface=tb.scanner_if, seed=seed)
    if backend == "masscan":
        values.update(masscan_interface=tb.scanner_if, masscan_router_mac=tb.router_mac,
                      masscan_adapter_ip=tb.scanner_ip, masscan_retries=0, masscan_wait_s=1)
    values.update(over)
    return AgentSettings(backend=backend, **values)


@dataclass
class ScanResult:
    command_id: str
    cap: Capture
    dones: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    probes: int = 0

    @property
    def open(self) -> set[tuple[str, int]]:
        return {(e["ip"], e["port"]) for e in self.events}

    @property
    def packets(self) -> int:
        return sum(d["packets_sent"] for d in self.dones)

    @property
    def bytes(self) -> int:
        return sum(d["bytes_sent"] for d in self.dones)


def publish_ports(directory: Path, ports, name: str = "testbed", version: int = 1) -> dict:
    """Write a named port set for the agent; returns the command's ``port_set`` field."""
    from scanflow.portsets import PortSet

    directory.mkdir(parents=True, exist_ok=True)
    PortSet.named(name, version, sorted(ports)).write(directory / f"{name}-v{version}.json")
    return {"name": name, "version": version, "ports": []}


def run_scans(tb: Testbed, kafka, topics, specs: list[dict], workdir: Path) -> list[ScanResult]:
    """Run one command per spec (``backend``, ``ports``, ``seed``, optional settings ``over``), each
    in its own capture, then read every event and ScanDone back from ``topics.events``."""
    from connectors.avro_codec import make_record
    from probe_agent.core import Agent
    from tests.integration.netns import read_records

    results: list[ScanResult] = []
    for n, spec in enumerate(specs):
        portsets = workdir / f"portsets-{n}"
        port_set = publish_ports(portsets, spec["ports"])
        settings = agent_settings(tb, spec["backend"], portsets, spec.get("seed", 0), **spec.get("over", {}))
        cid = f"{spec['backend']}-{n}-{uuid.uuid4().hex[:8]}"
        command = make_record("ScanCommand", command_id=cid, targets=list(tb.blocks), port_set=port_set)

        async def scan():
            agent = Agent(settings, kafka, topics)
            try:
                await agent.execute(command)
                return agent.metrics.probes
            finally:
                agent.publisher.close(30)
                await agent.backend.close()

        with tb.capture(cid) as cap:
            started = time.monotonic()
            probes = asyncio.run(scan())
            seconds = time.monotonic() - started
        results.append(ScanResult(cid, cap, seconds=seconds, probes=probes))
    want = len(specs) * len(tb.blocks)
    got = read_records(kafka, topics.events, lambda out: sum(d.schema == "ScanDone" for _, d in out) >= want,
                       timeout_s=120)
    by_id = {r.command_id: r for r in results}
    for _, d in got:
        rec = getattr(d, "record", None)
        if rec is None:
            continue
        cid = rec["scan_id"].split("/", 1)[0]
        if cid in by_id:
            (by_id[cid].dones if d.schema == "ScanDone" else by_id[cid].events).append(rec)
    return results


class ScratchTopics:
    """Uniquely named topics for a benchmark's scans (``topics("prefix", partitions) -> name``) on
    the broker of ``kafka``; all deleted on exit (use as ``with``)."""

    def __init__(self, kafka):
        from kafka import KafkaAdminClient

        self.admin = KafkaAdminClient(**kafka.client_options())
        self.made: list[str] = []

    def __call__(self, prefix: str, partitions: int) -> str:
        name = f"{prefix}.{uuid.uuid4().hex[:12]}"
        self.admin.create_topics({name: {"num_partitions": partitions, "replication_factor": 1, "configs": {}}},
                                 timeout_ms=30_000, wait_for_metadata=True)
        self.made.append(name)
        return name

    def __enter__(self) -> "ScratchTopics":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Delete the topics made, close the admin client."""
        try:
            if self.made:
                self.admin.delete_topics(self.made)
        except Exception:  # noqa: BLE001 - clean-up only
            pass
        finally:
            self.admin.close()

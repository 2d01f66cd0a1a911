"""Sweeps skip IPs under per-IP tracking, read from a real ``scanflow.ip-state`` topic.

A sim agent runs the consumer-group loop: it reads the compacted state topic (states and a
tombstone), then executes a SWEEP of the synthetic network; tracked responders are not probed, the
one whose tracking ended (tombstone) is, and a per-IP command for a tracked IP is still executed.
"""

from __future__ import annotations

import asyncio
import uuid

import numpy as np

from connectors.avro_codec import make_record
from connectors.kafka_io import AvroProducer
from probe_agent.core import Agent
from probe_agent.settings import AgentSettings
from scanflow.config import TopicsSettings
from tests.integration.netns import read_records

EPOCH_US = 1_700_000_000 * 1_000_000
PORTS = [21, 22, 23, 80, 443, 554, 7547, 8080]


def test_sweeps_skip_ips_tracked_in_ip_state(kafka, make_topic):
    topics = TopicsSettings(events=make_topic("agent-events", 12), dead_letter=make_topic("agent-dl", 1),
                            commands=make_topic("agent-cmd", 1),
                            ip_state=make_topic("agent-state", 3, **{"cleanup.policy": "compact"}))
    settings = AgentSettings(backend="sim", allowlist=("10.0.0.0/24",), rate_pps=1e6, per_target_pps=1e6,
                             sim_n_ips=256, sim_seed=4, sim_epoch_us=EPOCH_US, agent_id="sim",
                             group_id=f"test-{uuid.uuid4().hex[:8]}")
    at = EPOCH_US + 3600 * 1_000_000
    agent = Agent(settings, kafka, topics)
    asyncio.run(agent.open())
    world = agent.backend.world
    responders = sorted({world.address(r.ip) for r in world.probe(np.arange(256), PORTS, 3600)})
    assert len(responders) >= 3
    tracked, released = responders[:2], responders[2]
    with AvroProducer(kafka) as producer:
        for ip in tracked + [released]:
            producer.send(topics.ip_state, "IpState", make_record(
                "IpState", ip=ip, status="RESPONSIVE_UNESTIMATED", policy="EFFICIENT", updated_at=at))
        producer.send_bytes(topics.ip_state, released.encode(), None)     # demoted: tombstone
        for cid, target, reason in (("sweep", "10.0.0.0/24", "SWEEP"), ("per-ip", tracked[0], "BACKOFF")):
            producer.send(topics.commands, "ScanCommand", make_record(
                "ScanCommand", command_id=cid, targets=[target], not_before=at, reason=reason,
                policy="EFFICIENT", port_set={"name": None, "version": None, "ports": PORTS}))

    assert asyncio.run(agent.run(until_idle_s=2.0)) == 0
    got = read_records(kafka, topics.events, lambda out: sum(d.schema == "ScanDone" for _, d in out) >= 2)
    dones = {d.record["command_id"]: d.record for _, d in got if d.schema == "ScanDone"}
    swept = {d.record["ip"] for _, d in got if d.schema == "ScanEvent" and d.record["scan_id"].startswith("sweep/")}
    assert agent.tracked.caught_up.is_set() and len(agent.tracked) == 2
    assert swept == set(responders) - set(tracked)               # the released IP is swept again
    assert dones["sweep"]["addresses_probed"] == 256 - len(tracked)
    assert dones["per-ip"]["status"] == "COMPLETE" and dones["per-ip"]["responses"] >= 1

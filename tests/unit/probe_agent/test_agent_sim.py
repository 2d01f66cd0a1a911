"""The sim backend: the agent core scanning the synthetic world in virtual time."""

from __future__ import annotations

import asyncio

import numpy as np

from connectors.avro_codec import make_record
from probe_agent.backends.sim import SimBackend
from probe_agent.core import Agent
from probe_agent.settings import AgentSettings
from scanflow.config import KafkaSettings, TopicsSettings
from tests.unit.probe_agent.test_agent_core import Recorder

EPOCH_US = 1_700_000_000 * 1_000_000
PORTS = [21, 22, 23, 80, 443, 554, 7547, 8080]


def sim_agent(**changes) -> Agent:
    opts = dict(backend="sim", allowlist=("10.0.0.0/16",), rate_pps=1e6, per_target_pps=1e6, agent_id="sim",
                sim_n_ips=4096, sim_seed=3, sim_epoch_us=EPOCH_US)
    opts.update(changes)
    settings = AgentSettings(**opts)
    return Agent(settings, KafkaSettings(), TopicsSettings(), backend=SimBackend(settings), publisher=Recorder())


def scan(agent: Agent, targets, at_us: int, cid="sim-1", **fields):
    cmd = make_record("ScanCommand", command_id=cid, targets=targets, not_before=at_us,
                      port_set={"name": None, "version": None, "ports": PORTS}, **fields)
    return asyncio.run(agent.execute(cmd))


def test_sim_scan_sees_exactly_what_the_world_answers_at_that_time():
    agent = sim_agent()
    at = EPOCH_US + 7 * 86_400 * 1_000_000            # day 7 of the world, on a whole second
    (tally,) = scan(agent, ["10.0.0.0/20"], at)
    world = agent.backend.world
    truth = {(world.address(r.ip), r.port): r.banner for r in world.probe(np.arange(4096), PORTS, 7 * 86_400)}
    got = {(r.ip, r.port): r.banner for _, r in agent.publisher.events}
    assert truth and got.keys() == truth.keys()
    assert all(got[k] == (truth[k][:4096] if truth[k] else None) for k in truth)
    (done,) = agent.publisher.dones
    assert done["status"] == "COMPLETE" and done["addresses_probed"] == 4096
    assert done["responses"] == len(truth) and done["packets_sent"] > 4096 * len(PORTS)
    # Virtual time: probes spread from the due time at the rate, not at the wall clock.
    stamps = [r.timestamp_us for _, r in agent.publisher.events]
    assert at <= min(stamps) and max(stamps) <= at + 4096 * len(PORTS)
    assert done["started_at"] == at and done["ended_at"] > max(stamps)


def test_sim_time_scale_runs_the_world_faster():
    """With sim_time_scale = 86400 / 20, twenty agent seconds are a whole world day."""
    scale = 86_400 / 20
    agent = sim_agent(sim_time_scale=scale)
    at = EPOCH_US + 7 * 20 * 1_000_000                # 140 agent seconds: world day 7
    scan(agent, ["10.0.0.0/20"], at)                  # 16 /24 blocks: most hold nothing (hosts cluster)
    assert agent.backend.world_time(at) == 7 * 86_400
    world = agent.backend.world
    truth = {(world.address(r.ip), r.port) for r in world.probe(np.arange(4096), PORTS, 7 * 86_400)}
    unscaled = {(world.address(r.ip), r.port) for r in world.probe(np.arange(4096), PORTS, 140)}
    assert truth != unscaled                          # the world did change in a week
    assert {(r.ip, r.port) for _, r in agent.publisher.events} == truth


def test_sim_is_deterministic_and_only_probes_the_world_where_allowed():
    a, b = sim_agent(), sim_agent()
    at = EPOCH_US + 3_600 * 1_000_000
    scan(a, ["10.0.1.0/24", "10.0.2.7"], at)
    scan(b, ["10.0.1.0/24", "10.0.2.7"], at)
    key = lambda rec: [(r.ip, r.port, r.banner, r.timestamp_us) for _, r in rec.events]  # noqa: E731
    assert key(a.publisher) == key(b.publisher)
    assert all(r.ip.startswith(("10.0.1.", "10.0.2.7")) for _, r in a.publisher.events)
    c = sim_agent(allowlist=("10.0.1.0/24",))
    scan(c, ["10.0.1.0/24", "10.0.2.7"], at)
    assert c.publisher.events == [] and [d["status"] for d in c.publisher.dones] == ["REFUSED", "REFUSED"]


def test_sim_sweeps_skip_tracked_ips():
    agent = sim_agent()
    at = EPOCH_US + 3_600 * 1_000_000
    scan(agent, ["10.0.0.0/22"], at, cid="full")
    responders = sorted({r.ip for _, r in agent.publisher.events})
    assert len(responders) > 2
    sweeper = sim_agent()
    for ip in responders[:2]:
        sweeper.tracked.update(ip, "EFFICIENT")
    sweeper.tracked.caught_up.set()
    scan(sweeper, ["10.0.0.0/22"], at, cid="sweep", reason="SWEEP", policy="EFFICIENT")
    swept = {r.ip for _, r in sweeper.publisher.events}
    assert swept == set(responders[2:])
    assert sweeper.publisher.dones[0]["addresses_probed"] == 1024 - 2

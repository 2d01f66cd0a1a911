"""The agent core without Kafka: vetting, refusal, exclusions mid-scan, sweeps, tallies, offsets.

Kafka is replaced by an in-memory recorder of what the agent *would* publish, and the network by a
toy backend that answers from a table; the real broker and real sockets are covered by
tests/integration/test_agent_*.py.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from connectors.avro_codec import encode, make_record
from probe_agent.backends import Backend, ProbeResult, ProbeStatus
from probe_agent.core import Agent
from probe_agent.offsets import OffsetTracker
from probe_agent.settings import AgentSettings
from scanflow.config import KafkaSettings, TopicsSettings


class Recorder:
    """Stands in for EventPublisher: keeps what would have been sent."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ProbeResult]] = []
        self.dones: list[dict] = []
        self.dead: list[tuple] = []
        self.listeners: list = []

    def event(self, scan_id, result):
        self.events.append((scan_id, result))

    def done(self, tally):
        self.dones.append(tally.record("test-agent"))

    def dead_letter(self, key, value, error_class, message, **kwargs):
        self.dead.append((key, value, error_class, message))

    def flush(self, timeout_s=None):
        pass

    def close(self, timeout_s=None):
        pass


class TableBackend(Backend):
    """A toy network: ``open`` maps (ip, port) to a banner (or None for a silent open port).
    It can call a hook after each probe, e.g. to edit the exclusion file mid-scan."""

    name = "table"

    def __init__(self, settings, open_ports, after_probe=None):
        super().__init__(settings)
        self.open_ports = open_ports
        self.after_probe = after_probe
        self.probed: list[tuple[str, int]] = []

    async def run(self, job):
        async for probe in job.probes():
            self.probed.append((probe.ip, probe.port))
            if (probe.ip, probe.port) in self.open_ports:
                banner = self.open_ports[(probe.ip, probe.port)]
                job.report(ProbeResult(probe.ip, probe.port, ProbeStatus.OPEN,
                                       kind="BANNER" if banner else "SYN_ACK", banner=banner,
                                       packets=4, bytes=220, timestamp_us=1, target=probe.target))
            else:
                job.report(ProbeResult(probe.ip, probe.port, ProbeStatus.CLOSED, packets=1, bytes=60,
                                       target=probe.target))
            if self.after_probe:
                self.after_probe(len(self.probed))


def make_agent(tmp_path, open_ports=None, after_probe=None, **changes):
    opts = dict(backend="sim", allowlist=("198.18.0.0/24",), rate_pps=1e6, per_target_pps=1e6,
                burst_s=1.0, agent_id="test-agent")
    opts.update(changes)
    settings = AgentSettings(**opts)
    backend = TableBackend(settings, open_ports or {}, after_probe)
    return Agent(settings, KafkaSettings(), TopicsSettings(), backend=backend, publisher=Recorder())


def command(targets, ports, **fields):
    return make_record("ScanCommand", command_id=fields.pop("command_id", "c-1"), targets=targets,
                       port_set={"name": None, "version": None, "ports": ports}, **fields)


def run(agent, cmd):
    return asyncio.run(agent.execute(cmd))


def test_a_command_yields_events_and_one_scan_done_per_target(tmp_path):
    ports = {("198.18.0.1", 22): b"SSH-2.0-x\r\n", ("198.18.0.9", 80): None}
    agent = make_agent(tmp_path, ports)
    tallies = run(agent, command(["198.18.0.1", "198.18.0.8/30"], [22, 80, 443], policy="EFFICIENT"))
    rec = agent.publisher
    assert sorted((r.ip, r.port, r.kind) for _, r in rec.events) == [
        ("198.18.0.1", 22, "BANNER"), ("198.18.0.9", 80, "SYN_ACK")]
    assert [d["target"] for d in rec.dones] == ["198.18.0.1", "198.18.0.8/30"]
    single, rng = rec.dones
    assert single["status"] == rng["status"] == "COMPLETE"
    assert single["scan_id"] == "c-1/198.18.0.1" and single["policy"] == "EFFICIENT"
    assert (single["ports_probed"], single["addresses_probed"], single["responses"]) == (3, 1, 1)
    assert (single["packets_sent"], single["bytes_sent"]) == (4 + 2, 220 + 120)
    assert (rng["ports_probed"], rng["addresses_probed"], rng["responses"]) == (3, 4, 1)
    assert rng["packets_sent"] == 4 + 11
    assert {scan_id for scan_id, _ in rec.events} == {"c-1/198.18.0.1", "c-1/198.18.0.8/30"}
    assert len(tallies) == 2 and agent.metrics.probes == 15


@pytest.mark.parametrize("targets, error_class", [
    (["198.18.0.1", "198.18.1.1"], "OutsideAllowlist"),       # one single IP outside
    (["198.18.0.0/23"], "OutsideAllowlist"),                   # overlapping CIDR
    (["2001:db8::1"], "OutsideAllowlist"),                     # IPv6
])
def test_a_target_outside_the_allowlist_refuses_the_whole_command(tmp_path, targets, error_class):
    agent = make_agent(tmp_path)
    cmd = command(targets, [80])
    run(agent, cmd)
    rec = agent.publisher
    assert agent.backend.probed == []                          # nothing sent to anyone
    assert len(rec.dead) == 1 and rec.dead[0][2] == error_class
    assert rec.dead[0][1] == encode("ScanCommand", cmd)        # the original bytes
    assert [d["status"] for d in rec.dones] == ["REFUSED"] * len(targets)
    assert all(d["packets_sent"] == 0 for d in rec.dones)


def test_an_empty_allowlist_refuses_everything(tmp_path):
    agent = make_agent(tmp_path, allowlist=())
    run(agent, command(["198.18.0.1"], [80]))
    assert agent.backend.probed == [] and agent.publisher.dones[0]["status"] == "REFUSED"


def test_oversized_ranges_and_unknown_port_sets_are_refused(tmp_path):
    agent = make_agent(tmp_path, max_range_addresses=16)
    run(agent, command(["198.18.0.0/27"], [80], command_id="big"))
    named = make_record("ScanCommand", command_id="named", targets=["198.18.0.1"],
                        port_set={"name": "silent", "version": 3, "ports": []})
    run(agent, named)
    assert [d[2] for d in agent.publisher.dead] == ["RangeTooLarge", "UnknownPortSet"]
    assert agent.backend.probed == []


def test_named_port_sets_resolve_from_the_published_directory(tmp_path):
    from scanflow.portsets import PortSet

    PortSet.named("silent", 3, [22, 80]).write(tmp_path / "silent-v3.json")
    agent = make_agent(tmp_path, portset_dir=str(tmp_path))
    named = make_record("ScanCommand", command_id="named", targets=["198.18.0.1"],
                        port_set={"name": "silent", "version": 3, "ports": []})
    run(agent, named)
    assert sorted(agent.backend.probed) == [("198.18.0.1", 22), ("198.18.0.1", 80)]
    assert agent.publisher.dones[0]["port_set"]["name"] == "silent"


def test_exclusions_win_over_the_allowlist_and_apply_mid_scan(tmp_path):
    optout = tmp_path / "optout.txt"
    optout.write_text("198.18.0.7\n")
    probed_before_edit = []

    def edit(n):
        if n == 40:  # a new opt-out arrives in the middle of the scan
            probed_before_edit.extend(agent.backend.probed)
            optout.write_text("198.18.0.7\n198.18.0.128/25\n")
            os.utime(optout, ns=(1, 9_000_000_000))
            agent.exclusions.refresh()

    agent = make_agent(tmp_path, after_probe=edit, exclude_file=str(optout))
    run(agent, command(["198.18.0.0/24", "198.18.0.7"], [80, 81]))
    probed = agent.backend.probed
    assert all(ip != "198.18.0.7" for ip, _ in probed)
    late = probed[len(probed_before_edit):]
    assert late and all(int(ip.rsplit(".", 1)[1]) < 128 for ip, _ in late)
    done = {d["target"]: d for d in agent.publisher.dones}
    assert done["198.18.0.7"]["status"] == "REFUSED" and "opt-out" in done["198.18.0.7"]["status_detail"]
    assert done["198.18.0.0/24"]["status"] == "COMPLETE"
    assert done["198.18.0.0/24"]["addresses_probed"] == len({ip for ip, _ in probed})
    assert done["198.18.0.0/24"]["addresses_probed"] < 255


def test_sweeps_skip_tracked_ips_other_commands_do_not(tmp_path):
    agent = make_agent(tmp_path)
    agent.tracked.update("198.18.0.2", "EFFICIENT")
    agent.tracked.caught_up.set()
    run(agent, command(["198.18.0.0/30"], [80], reason="SWEEP", policy="EFFICIENT", command_id="s"))
    assert sorted({ip for ip, _ in agent.backend.probed}) == ["198.18.0.0", "198.18.0.1", "198.18.0.3"]
    assert agent.publisher.dones[-1]["addresses_probed"] == 3
    agent.backend.probed.clear()
    run(agent, command(["198.18.0.2"], [80], reason="BACKOFF", policy="EFFICIENT", command_id="b"))
    assert agent.backend.probed == [("198.18.0.2", 80)]


def test_expired_commands_are_refused_without_probing(tmp_path):
    agent = make_agent(tmp_path)
    run(agent, command(["198.18.0.1"], [80], expires_at=1_000_000))
    assert agent.backend.probed == [] and agent.publisher.dones[0]["status"] == "REFUSED"
    assert "expired" in agent.publisher.dones[0]["status_detail"]
    assert agent.publisher.dead == []   # not an error of the record


def test_sharded_agents_split_a_range_and_keep_single_ips_whole(tmp_path):
    seen = []
    for shard in range(3):
        agent = make_agent(tmp_path, shards=3, shard=shard)
        run(agent, command(["198.18.0.0/26", "198.18.0.200"], [22, 80]))
        seen.append(agent)
    probed = [p for a in seen for p in a.backend.probed]
    assert len(probed) == len(set(probed)) == 65 * 2
    owners = [a for a in seen if ("198.18.0.200", 22) in a.backend.probed]
    assert len(owners) == 1 and ("198.18.0.200", 80) in owners[0].backend.probed
    range_done = [d for a in seen for d in a.publisher.dones if d["target"] == "198.18.0.0/26"]
    assert sum(d["addresses_probed"] for d in range_done) == 64
    assert len({d["scan_id"] for d in range_done}) == 3


def test_abandoned_commands_end_aborted(tmp_path):
    agent = make_agent(tmp_path, after_probe=lambda n: n == 10 and agent.abandon())
    run(agent, command(["198.18.0.0/24"], [80]))
    done = agent.publisher.dones[0]
    assert done["status"] == "ABORTED" and "abandon" in done["status_detail"]
    assert 0 < done["addresses_probed"] <= 11


def test_offset_tracker_commits_only_the_finished_prefix():
    tracker = OffsetTracker()
    for off in (5, 6, 7, 8):
        tracker.add("p0", off)
    tracker.add("p1", 0)
    tracker.finish("p0", 6)
    tracker.finish("p1", 0)
    assert tracker.take_committable() == {"p1": 1}           # p0: 5 still running
    tracker.finish("p0", 5)
    tracker.finish("p0", 8)
    assert tracker.take_committable() == {"p0": 7}           # 7 still running
    tracker.finish("p0", 7)
    assert tracker.take_committable() == {"p0": 9}
    assert tracker.take_committable() == {} and tracker.outstanding() == 0
    tracker.add("p2", 3)
    tracker.revoke(["p2"])
    tracker.finish("p2", 3)
    assert tracker.take_committable() == {}


@pytest.mark.parametrize("bad", ["198.18.0.300", "198.18.0.7/23", "198.18.0.1-198.18.0.5", ""])
def test_a_malformed_target_is_refused_with_a_dead_letter_never_raised(tmp_path, bad):
    """A command built in-process (``scanflow agent --scan``, tests) with a target that is not an
    address or CIDR: refused whole with InvalidIp and the record as written; the valid targets get
    their REFUSED ScanDone. (The dead letter's encoding used to raise InvalidIp out of execute.)"""
    agent = make_agent(tmp_path)
    tallies = run(agent, command(["198.18.0.1", bad], [80]))
    rec = agent.publisher
    assert agent.backend.probed == []
    assert len(rec.dead) == 1 and rec.dead[0][2] == "InvalidIp"
    assert rec.dead[0][1] is None or bad.encode() in rec.dead[0][1]
    assert [t.status for t in tallies] == ["REFUSED"] and rec.dones[0]["target"] == "198.18.0.1"


class InterleavingBackend(TableBackend):
    """Yields to the event loop after every probe, and notes which command each probe belonged to."""

    def __init__(self, settings):
        super().__init__(settings, {})
        self.order: list[str] = []

    async def run(self, job):
        async for probe in job.probes():
            self.order.append(job.prepared.command_id)
            job.report(ProbeResult(probe.ip, probe.port, ProbeStatus.CLOSED, packets=1, bytes=60,
                                   target=probe.target))
            await asyncio.sleep(0)


def test_two_scans_of_one_range_never_run_at_once(tmp_path):
    agent = make_agent(tmp_path)
    agent.tracked.caught_up.set()
    backend = agent.backend = InterleavingBackend(agent.settings)
    first = command(["198.18.0.0/28"], [22, 80], command_id="sweep-1", reason="SWEEP")
    second = command(["198.18.0.0/28"], [23, 443], command_id="sweep-2", reason="SWEEP")
    other = command(["198.18.0.64/28"], [22], command_id="other-block", reason="SWEEP")

    async def both():
        return await asyncio.gather(agent.execute(first), agent.execute(second), agent.execute(other))

    asyncio.run(both())
    ids = [i for i in backend.order if i != "other-block"]
    # All of the first sweep's probes, then all of the second's: never interleaved.
    assert ids == ["sweep-1"] * 32 + ["sweep-2"] * 32
    # A scan of another block is not held up: it ran while the first sweep did.
    first_other = backend.order.index("other-block")
    assert first_other < backend.order.index("sweep-2")
    assert agent.metrics.commands["waited-for-range"] == 1
    assert [d["status"] for d in agent.publisher.dones] == ["COMPLETE"] * 3

"""An agent cut off from the brokers for 2 minutes resumes without loss (issue 19, faults survived).

The loop of ``test_cluster_faults.py`` (a Prism job server with the live scheduler, two sim agents in
one group, the scheduler's archive branch writing decisions to a Parquet lake) on a three-node
cluster of the test's own whose client listeners are on the host end of a veth pair
(``SCANFLOW_INFRA_KAFKA_HOST``, 198.18.X.1). The scheduler and agent-b run on the host; agent-a runs
inside the pair's network namespace (``ip netns exec``, 198.18.X.2) and reaches the brokers only
through the veth pair. After the loop has made progress, firewall rules inside the namespace
(iptables DROP on the namespace end of the pair) cut agent-a off for 120 s: first what comes in (so
that records agent-a sends right then reach the brokers but are never acknowledged to it: the cut
starts with records in flight when agent-a sends any), after at most 10 s what goes out too. Its
connections stay open; nothing arrives, nothing comes back. Then the rules are removed.

- during the cut the loop keeps moving: agent-b takes over agent-a's partitions once the group
  coordinator has given up on agent-a's session (the longest gap is recorded);
- agent-a's process does not exit during the cut;
- after the cut agent-a rejoins and acknowledges commands again: ScanDones it produced after the
  rule was removed, for commands whose offsets are committed at the end;
- the counts reconcile as in the three-fault loop (``_reconcile``): every acknowledged command has
  its ScanDone, every event and scan is in the lake once after dedupe, no decision took effect twice.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest

from tests.conftest import running_cluster
from tests.e2e.conftest import Follow, wait_for
from tests.e2e.test_cluster_faults import Progress, _reconcile, create_replicated_topics
from tests.e2e.test_fault_loop import DAY_S, PROGRESS, Loop

CUT_S = 120.0                        # how long agent-a is cut off


@pytest.fixture
def veth_net():
    """A network namespace joined to the host by a veth pair of this test's own; always removed."""
    from tests.integration.netns import TestNet, require_root

    require_root()
    if not shutil.which("iptables"):
        pytest.fail("iptables not found: `make setup` installs it (infra/system-deps.sh iptables)")
    with TestNet() as net:
        yield net


@pytest.fixture
def veth_cluster(veth_net, tmp_path):
    """A three-node cluster whose client listeners are on the host end of ``veth_net``."""
    with running_cluster(tmp_path / "cluster", host=veth_net.host_ip) as cluster:
        yield cluster


class Cut:
    """DROP on the namespace end of the veth pair (inside the namespace): what comes in first
    (:meth:`inbound`), then what goes out too (:meth:`outbound`); :meth:`lift` removes both."""

    def __init__(self, net):
        self.net = net
        self.rules: list[list[str]] = []

    def _add(self, rule: list[str]) -> None:
        self.net.ns("iptables", "-I", *rule)
        self.rules.append(rule)

    def inbound(self) -> None:
        self._add(["INPUT", "-i", self.net.ns_if, "-j", "DROP"])

    def outbound(self) -> None:
        self._add(["OUTPUT", "-o", self.net.ns_if, "-j", "DROP"])

    def __enter__(self) -> "Cut":
        return self

    def lift(self) -> None:
        while self.rules:
            self.net.ns("iptables", "-D", *self.rules.pop(), check=False)

    def __exit__(self, *exc) -> None:
        self.lift()


def _dones_of(follow: Follow, agent: str, after_ms: int = 0) -> list:
    """(Kafka timestamp in ms, record) of ``agent``'s ScanDones sent at or after ``after_ms``."""
    from connectors.avro_codec import CodecError, decode

    out = []
    for rec in follow.raw:
        if rec.value is None or rec.timestamp < after_ms:
            continue
        try:
            d = decode(rec.value)
        except CodecError:
            continue
        if d.schema == "ScanDone" and d.record["agent_id"] == agent:
            out.append((rec.timestamp, d.record))
    return out


@pytest.mark.faults
@pytest.mark.root
def test_agent_cut_off_for_two_minutes_rejoins_and_counts_reconcile(veth_net, veth_cluster, prism_binary,
                                                                      tmp_path):
    from tests.e2e.test_faults import _archive_and_count

    net, cluster = veth_net, veth_cluster
    kafka = cluster.kafka()
    topics = create_replicated_topics(kafka)
    loop = Loop(tmp_path, cluster.bootstrap, topics, prism_binary, time.time())
    progress = Progress(loop, kafka)
    events = Follow(kafka, topics.events)
    inside = ("ip", "netns", "exec", net.name)
    figures: dict = {"bootstrap_servers": cluster.bootstrap, "agent_a_at": net.ns_ip, "cut_s": CUT_S,
                     "cut": "iptables DROP on the namespace end of the veth pair"}
    t0 = time.monotonic()
    try:
        loop.start_scheduler()
        loop.start_agent("agent-a", prefix=inside)
        loop.start_agent("agent-b")
        progress.start()
        n = progress.wait_more(0, "before the cut")

        def seen_from_a():
            events.poll()
            return _dones_of(events, "agent-a")
        # agent-a works through the veth pair before it is cut off
        wait_for(seen_from_a, timeout_s=240, step_s=0.5)
        n = progress.wait_more(n, "before the cut")

        with Cut(net) as cut:
            # Inbound first: agent-a's records still reach the brokers but no answer comes back, so
            # the cut starts with records of agent-a in flight (sent, never acknowledged to it);
            # once one is seen on the events topic (or after 10 s), outbound too. The 120 s count from
            # the first rule.
            cut.inbound()
            t_cut, cut_wall_ms = time.monotonic(), int(time.time() * 1000)
            figures["cut_at"] = n

            def a_sent_since_cut():
                loop.check_alive()
                events.poll()
                return _dones_of(events, "agent-a", cut_wall_ms) or time.monotonic() - t_cut > 10
            wait_for(a_sent_since_cut, timeout_s=60, step_s=0.2)
            cut.outbound()
            figures["unanswered_agent_a_dones"] = len(_dones_of(events, "agent-a", cut_wall_ms))
            figures["outbound_cut_after_s"] = round(time.monotonic() - t_cut, 1)
            while time.monotonic() - t_cut < CUT_S:
                loop.check_alive()                   # agent-a's process must not exit
                time.sleep(1.0)
            t_lift = time.monotonic()
            cut.lift()
        lift_wall_ms = int(time.time() * 1000)
        loop.check_alive()
        during = progress.latest() - n
        figures["progress_during_cut"] = during
        figures["longest_gap_during_cut_s"] = round(progress.longest_gap(t_cut, t_lift), 1)
        assert during >= PROGRESS, f"the loop did not keep moving while agent-a was cut off: {figures}"

        # agent-a rejoins: ScanDones it sent after the rule was removed.
        def a_after_lift():
            loop.check_alive()
            events.poll()
            return _dones_of(events, "agent-a", lift_wall_ms)
        try:
            first = wait_for(a_after_lift, timeout_s=300, step_s=0.5)
        except AssertionError as exc:
            raise AssertionError(f"agent-a sent no ScanDone after the cut; its log:\n"
                                 f"{(tmp_path / 'agent-a.log').read_text()[-4000:]}") from exc
        figures["rejoin_s"] = round((min(ts for ts, _ in first) - lift_wall_ms) / 1000, 1)
        n = progress.wait_more(progress.latest(), "after the cut")
        n = progress.wait_more(n, "after the cut")
        figures["longest_gap_from_cut_s"] = round(progress.longest_gap(t_cut, time.monotonic()), 1)
        loop.check_alive()
    finally:
        progress.stop()
        codes = loop.stop_all()
    figures["wall_s"] = round(time.monotonic() - t0, 1)
    figures["virtual_days"] = round(figures["wall_s"] / DAY_S, 1)
    assert all(code == 0 for code in codes.values()), codes

    events.drain()
    events.close()
    during_cut = [r for ts, r in _dones_of(events, "agent-a", cut_wall_ms) if ts < lift_wall_ms]
    after_lift = [r for _, r in _dones_of(events, "agent-a", lift_wall_ms)]
    acked: set = set()
    figures.update(_reconcile(kafka, loop, topics, tmp_path, cluster.bootstrap, _archive_and_count, acked))
    acked_after = {r["command_id"] for r in after_lift} & acked
    figures.update(agent_a_dones_made_during_cut=len(during_cut), agent_a_dones_after_cut=len(after_lift),
                   agent_a_acknowledged_after_cut=len(acked_after))
    assert acked_after, f"no command agent-a completed after the cut was acknowledged: {figures}"
    print("FIGURES agent-cutoff", json.dumps(figures))

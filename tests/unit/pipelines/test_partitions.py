"""Several scheduler jobs: the partition of an address, the shares of the jobs and what each owns."""

from __future__ import annotations

import ipaddress
import random

import pytest
from kafka.partitioner.default import DefaultPartitioner

from connectors.beam_kafka_source import ReadFromKafka
from connectors.kafka_io import StablePartitioner, partition_for
from pipelines.partitions import PartitionShare, check_shares, parse_share, worker_shares
from pipelines.sweeps import SweepPlan, sweep_blocks
from scanflow.config import ConfigError, KafkaSettings, PipelineSettings
from scanflow.policy import DAY


class _Cluster:
    """The three questions kafka-python's partitioners ask of the cluster metadata."""

    def __init__(self, count: int):
        self._parts = set(range(count))

    def topics(self):
        return {"events"}

    def partitions_for_topic(self, topic):
        return self._parts

    def available_partitions_for_topic(self, topic):
        return self._parts


def _ips(n: int, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    return [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(n)] + ["10.0.0.1", "0.0.0.0"]


@pytest.mark.parametrize("count", [1, 2, 3, 6, 12, 64])
def test_partition_of_an_address_is_kafka_pythons_default_partitioner(count):
    cluster = _Cluster(count)
    theirs, ours = DefaultPartitioner(), StablePartitioner()
    for ip in _ips(2000):
        key = ip.encode()
        expected = theirs.partition("events", ip, key, None, None, cluster)
        assert partition_for(key, count) == expected
        assert ours.partition("events", ip, key, None, None, cluster) == expected


def test_worker_shares_split_the_partitions_and_every_address_once():
    shares = check_shares(worker_shares(2), 6)
    assert [s.partitions for s in shares] == [(0, 2, 4), (1, 3, 5)]
    ips = _ips(3000)
    owners = [[j for j, s in enumerate(shares) if s.owns_ip(ip)] for ip in ips]
    assert all(len(o) == 1 for o in owners)
    assert all(shares[o[0]].partitions.count(partition_for(ip.encode(), 6)) == 1 for ip, o in zip(ips, owners))
    # both jobs get a fair part of a random address space
    assert 0.45 < sum(o == [0] for o in owners) / len(ips) < 0.55


def test_shares_in_the_forms_of_pipeline_partitions():
    assert parse_share("", 4) == PartitionShare((0, 1, 2, 3), 4) and parse_share("", 4).whole
    assert parse_share("all", 4).whole
    assert parse_share("1/3", 7).partitions == (1, 4)
    assert parse_share("0-2, 5", 6).partitions == (0, 1, 2, 5)
    assert parse_share("3,1", 4).partitions == (1, 3)
    assert parse_share("0/1", 5).whole
    assert parse_share("1/2", 4).label == "p1-3of4"


@pytest.mark.parametrize("text, count, says", [
    ("4", 4, "out of range: the events topic has 4 partitions (0-3)"),
    ("0-5", 4, "[4-5] out of range"),
    ("0,7,9-30", 4, "[7, 9-30] out of range"),
    ("0,1,1", 4, "more than once (overlapping)"),
    ("0-2,2", 4, "more than once (overlapping)"),
    ("2/2", 4, "0 <= i < n"),
    ("0/5", 4, "run at most 4 jobs"),
    ("3-1", 4, "runs backwards; write 1-3"),
    ("a", 4, "use i/n"),
])
def test_a_bad_share_is_one_line_naming_the_fix(text, count, says):
    with pytest.raises(ConfigError) as err:
        parse_share(text, count)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_shares_of_several_jobs_must_not_overlap_nor_leave_partitions_out():
    with pytest.raises(ConfigError, match=r"jobs 0 \('0/2'\) and 1 \('0-1'\) both own partition 0"):
        check_shares(["0/2", "0-1"], 4)
    with pytest.raises(ConfigError, match=r"partition\(s\) \[3\] of 4 are owned by no job"):
        check_shares(["0/2", "1"], 4)
    assert [s.partitions for s in check_shares(["0-1", "2-3"], 4)] == [(0, 1), (2, 3)]


def test_the_setting_is_checked_for_its_form():
    assert PipelineSettings(partitions="1/2").validate().partitions == "1/2"
    with pytest.raises(ConfigError, match="pipeline.partitions: '1/' is not a partition group"):
        PipelineSettings(partitions="1/").validate()


def test_each_sweep_block_is_swept_by_exactly_one_job_at_the_same_slot():
    nets = [ipaddress.IPv4Network("10.0.0.0/14")]
    period = 3.5 * DAY
    whole = SweepPlan(nets, 24, period).due(0, period)
    shares = [parse_share(t, 6) for t in worker_shares(2)]
    parts = [SweepPlan(nets, 24, period, keep=s.owns_block).due(0, period) for s in shares]
    assert all(parts) and not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(whole)
    assert len(whole) == len(sweep_blocks(nets, 24)) == 1024
    # the block's owner is the partition of its range command's key
    for at, block in parts[0]:
        assert partition_for(block.encode(), 6) in (0, 2, 4)


def test_the_kafka_reader_takes_a_partition_list():
    read = ReadFromKafka(KafkaSettings(), "events", group_id="g", partitions=[3, 1, 3])
    assert read.config.partitions == (1, 3)
    with pytest.raises(ValueError, match="at least one partition"):
        ReadFromKafka(KafkaSettings(), "events", group_id="g", partitions=[])


def test_devices_that_move_refuse_a_job_of_several_with_the_fix_named():
    from pipelines.partitions import refuse_split_moves
    from scanflow.adaptive import AdaptiveParams, make_policy
    from scanflow.estimate import Estimator
    from scanflow.knowledge import load_knowledge
    from scanflow.policy import PolicyPortSets
    from scanflow.portsets import PortSet

    ranking = tuple(range(1, 41))
    sets = PolicyPortSets(PortSet.named("standard", 1, ranking), PortSet.named("silent", 1, ranking[:5]),
                          PortSet.named("unknown", 1, ranking[:20]), ranking, (1.0,) * len(ranking))
    estimator = Estimator(load_knowledge())
    moving = make_policy("adaptive", sets, estimator, adaptive_params=AdaptiveParams(light_ports=3, moves=True))
    still = make_policy("adaptive", sets, estimator, adaptive_params=AdaptiveParams(light_ports=3))
    half = parse_share("0/2", 4)
    with pytest.raises(ConfigError, match="policy.moves.*leave pipeline.partitions empty"):
        refuse_split_moves(half, moving)
    refuse_split_moves(half, still)                              # per address: any share will do
    refuse_split_moves(None, moving)                             # one job owns every /24
    refuse_split_moves(PartitionShare.everything(4), moving)

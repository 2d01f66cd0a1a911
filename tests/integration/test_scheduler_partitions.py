"""Two live scheduler jobs on Prism, each owning half of the events partitions, against the real broker.

Every address is decided by exactly one of them (the one owning its events partition), every command
is issued once, every sweep block is swept by one job; after a restart a job restores only the states
of its own addresses and goes on from them. Time is compressed as in test_scheduler_kafka.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections import Counter

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that

from connectors.avro_codec import default_codec
from connectors.kafka_io import make_consumer, topic_partitions
from connectors.parquet_lake import table_files
from pipelines.partitions import check_shares, worker_shares
from pipelines.policy_setup import build_policy
from pipelines.scheduler import NO_STATE_CACHE, build_live, counters, replay_runner, restore_read
from pipelines.settings import PipelineSettings
from pipelines.sources import ReadIpStates
from scanflow.config import ConfigError
from scanflow.lifecycle.records import command_id, micros
from tests.integration.test_scheduler_kafka import LADDER_S, _check_prism, _ip, _produce_round, _Topic

N_IPS = 160
SWEEP_RANGE = "203.0.113.0/24"   # 16 blocks of /28


def _lake_ips(root) -> list[str]:
    """The addresses of every decision a job archived (one entry per decision)."""
    return [ip for f in table_files(root, "decisions") for ip in pq.read_table(f, columns=["ip"]).column("ip")
            .to_pylist()]


def _records_in(kafka, topic, partitions) -> int:
    """Records now in ``partitions`` of ``topic`` (end minus beginning offsets)."""
    consumer = make_consumer(kafka)
    try:
        tps = [tp for tp in topic_partitions(consumer, [topic]) if tp.partition in partitions]
        end, begin = consumer.end_offsets(tps), consumer.beginning_offsets(tps)
        return sum(end[tp] - begin[tp] for tp in tps)
    finally:
        consumer.close()


def _wait(cond, timeout_s: float = 120.0) -> None:
    # A deadline only so a broken pipeline fails instead of hanging.
    deadline = time.monotonic() + timeout_s
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.5)


def _start(options, cfg, pipeline):
    p = beam.Pipeline(options=options)
    build_live(p, cfg, pipeline, build_policy(cfg, pipeline))
    return p.run()


def test_two_jobs_split_the_addresses_and_restore_only_their_own(kafka, make_topic, settings, prism_options,
                                                                  prism_server, tmp_path):
    topics = dataclasses.replace(
        settings.topics, events=make_topic("split-events", partitions=4),
        commands=make_topic("split-commands", partitions=3),
        ip_state=make_topic("split-state", partitions=4, **{"cleanup.policy": "compact"}),
        dead_letter=make_topic("split-dead", partitions=1), kb_updates=make_topic("split-kb", partitions=1))
    policy_settings = dataclasses.replace(settings.policy, name="paper",
                                          ladder_hours=tuple(s / 3600 for s in LADDER_S), silent_interval_h=10 / 3600)
    cfg = dataclasses.replace(settings, topics=topics, policy=policy_settings)
    base = PipelineSettings(round_timeout_s=60, rewind_s=120, command_ttl_s=3600, watermark_lag_s=1.0,
                            group_id=f"split-test-{uuid.uuid4().hex[:8]}", sweep_ranges=(SWEEP_RANGE,),
                            sweep_prefix=28, sweep_tick_s=1.0)
    texts = worker_shares(2)
    shares = check_shares(texts, 4)
    jobs = [dataclasses.replace(base, partitions=t, archive_dir=str(tmp_path / f"lake-{j}"))
            for j, t in enumerate(texts)]
    policy = build_policy(cfg, base)
    codec = default_codec()
    commands, states = _Topic(kafka, topics.commands), _Topic(kafka, topics.ip_state)
    expected: list[str] = []
    plans, state_of = {}, {}

    def decide(rounds):
        for ip, (_, at, obs) in rounds.items():
            state, plan = policy.decide(state_of.get(ip), obs, at)
            if state.responsive:
                state_of[ip], plans[ip] = state, plan
                expected.append(command_id("EFFICIENT", ip, micros(plan.at)))
            else:
                state_of.pop(ip, None)
                plans.pop(ip, None)

    def per_ip(records):
        return [r for r in records if "/" not in r.key.decode()]

    try:
        # A share that does not fit the topic stops the job before it is submitted.
        with pytest.raises(ConfigError, match=r"partition\(s\) \[4-5\] out of range: the events topic has 4"):
            build_live(beam.Pipeline(), cfg, dataclasses.replace(base, partitions="2-5"), policy)

        # Run 1: both jobs at once over the first round of every address.
        decide(_produce_round(kafka, topics.events, policy, range(N_IPS), 1, plans, time.time()))
        tracked_1 = set(plans)
        options = [prism_options(NO_STATE_CACHE) for _ in jobs]
        results = [_start(o, cfg, job) for o, job in zip(options, jobs)]
        try:
            commands.until(lambda rs: len(per_ip(rs)) >= len(expected))
            states.until(lambda rs: sum(1 for r in rs if r.value is not None) >= 2 * len(tracked_1))
            _wait(lambda: set(_lake_ips(jobs[0].archive_dir)) | set(_lake_ips(jobs[1].archive_dir)) >= tracked_1)
            time.sleep(12)  # more than a sweep period (10 s): every block's slot comes up
            commands.until(lambda rs: False, timeout_s=1)
        finally:
            for r in results:
                r.cancel()
        for r, o in zip(results, options):
            _check_prism(r, prism_server, o)

        # Each address was decided by the job owning its events partition, and only by it.
        decided = [_lake_ips(job.archive_dir) for job in jobs]
        for share, ips in zip(shares, decided):
            assert ips and all(share.owns_ip(ip) for ip in ips)
        assert not set(decided[0]) & set(decided[1])
        assert set(decided[0]) | set(decided[1]) >= tracked_1
        ids = Counter(codec.decode(r.value).record["command_id"] for r in per_ip(commands.records))
        assert sorted(ids) == sorted(expected) and max(ids.values()) == 1

        # Every sweep block was swept, each slot of it once: the two jobs split the blocks.
        sweeps = [codec.decode(r.value).record for r in commands.records if "/" in r.key.decode()]
        slots = Counter((s["targets"][0], s["not_before"]) for s in sweeps)
        assert max(slots.values()) == 1
        blocks = {b for b, _ in slots}
        assert len(blocks) == 16
        assert all(any(s.owns_block(b) for s in shares) for b in blocks)
        assert all(any(s.owns_block(b) for b in blocks) for s in shares)

        # While nothing runs: the second round of every tracked address. Only job 0 comes back.
        round2 = _produce_round(kafka, topics.events, policy, [i for i in range(N_IPS) if _ip(i) in plans], 2,
                                plans, time.time())
        mine = {ip: v for ip, v in round2.items() if shares[0].owns_ip(ip)}
        before = len(expected)
        decide(mine)
        again = dataclasses.replace(jobs[0], archive_dir=str(tmp_path / "lake-0-again"))
        own_records = _records_in(kafka, topics.ip_state, shares[0].partitions)
        options_again = prism_options(NO_STATE_CACHE)
        restarted = _start(options_again, cfg, again)
        try:
            commands.until(lambda rs: len(per_ip(rs)) >= len(expected))
            _wait(lambda: set(_lake_ips(again.archive_dir)) >= set(mine))
            time.sleep(2 * LADDER_S[0])  # room for a wrong extra command to show up
            commands.until(lambda rs: False, timeout_s=1)
        finally:
            restarted.cancel()
        _check_prism(restarted, prism_server, options_again)
        # It read the ip-state records of its own partitions, all of them, and no other record.
        restored = counters(restarted)
        assert restored["scanflow.restore/records"] == own_records > 0
        assert "scanflow.restore/other_jobs_records" not in restored
        assert len(expected) > before
        # It went on from its own restored states (a camera's second answer is a back-off step, not a
        # new responder) and decided none of the other job's addresses.
        ids = Counter(codec.decode(r.value).record["command_id"] for r in per_ip(commands.records))
        assert sorted(ids) == sorted(expected) and max(ids.values()) == 1
        assert all(shares[0].owns_ip(ip) for ip in _lake_ips(again.archive_dir))
        reasons = {}
        for r in per_ip(commands.records):
            c = codec.decode(r.value).record
            reasons.setdefault(c["targets"][0], []).append(c["reason"])
        cameras = [ip for ip in mine if int(ip.rsplit(".", 1)[1]) % 10 == 4]  # _ip(i) ends in i % 200 + 1
        assert cameras and all(reasons[ip] == ["NEW_RESPONDER", "BACKOFF"] for ip in cameras)

        # What a job restores (the live job's own restore read, and the key filter alone reading every
        # ip-state partition): exactly the states of its own addresses.
        keys = {r.key.decode() for r in states.records}
        for share in shares:
            own = {ip for ip in keys if share.owns_ip(ip)}
            assert own and own != keys
            for read in (restore_read(kafka, topics, share),
                         ReadIpStates(kafka, topics.ip_state, topics.dead_letter, share=share)):
                with beam.Pipeline(runner=replay_runner()) as p:
                    got = p | read | beam.Map(lambda kv: kv[0]) | beam.combiners.ToList()
                    assert_that(got, lambda lists, own=own: _same_ips(lists, own))
    finally:
        commands.close()
        states.close()


def _same_ips(lists, own):
    (ips,) = lists
    assert set(ips) == own and own


@pytest.mark.parametrize("runner", ["flink", "dataflow"])
def test_a_jobs_share_builds_the_portable_graph_for_flink_and_dataflow(kafka, make_topic, settings, tmp_path, runner):
    """The same live graph, with a share, is built and serialized under the other runners' options
    (neither runs here: docs/RUNNERS.md); there the share is optional, the runner spreads the keys."""
    from pipelines.runners import pipeline_options

    jar = tmp_path / "job-server.jar"
    jar.write_bytes(b"")
    topics = dataclasses.replace(settings.topics, events=make_topic("split-events", partitions=4),
                                 ip_state=make_topic("split-state", partitions=2))
    cfg = dataclasses.replace(settings, topics=topics,
                              beam=dataclasses.replace(settings.beam, flink_job_server_jar=str(jar)))
    extra = ["--project=p", "--region=r", "--temp_location=gs://b/tmp"] if runner == "dataflow" else []
    options = pipeline_options(cfg, streaming=True, runner=runner, extra=extra)
    assert options.get_all_options()["runner"] == {"flink": "FlinkRunner", "dataflow": "DataflowRunner"}[runner]
    job = PipelineSettings(partitions="1/2", sweep_ranges=("203.0.113.0/24",), sweep_prefix=28)
    p = beam.Pipeline(runner="DirectRunner", options=options)   # built, never run
    build_live(p, cfg, job, build_policy(cfg, job), kb_updates=False)
    proto = p.to_runner_api()
    names = {t.unique_name for t in proto.components.transforms.values()}
    assert {"ReadEvents", "ReadIpStates", "Sweeps", "Schedule", "WriteCommandsThenStates"} <= names


def test_a_knowledge_update_is_applied_once_across_two_jobs(kafka, make_topic, settings, prism_options, tmp_path):
    """Both jobs read the update; each affected address is rescanned once, by the job that owns it."""
    from click.testing import CliRunner

    from connectors.kafka_io import AvroProducer, partition_for
    from scanflow.cli import main
    from scanflow.loop.scheduler import scaled_policy
    from tests.integration.test_scheduler_followup import SCALE, _Follow
    from tests.integration.test_scheduler_kb_update import AFFECTED, NEW_MALWARE, TRACKED, _state

    topics = dataclasses.replace(
        settings.topics, events=make_topic("split-kb-events", partitions=4),
        commands=make_topic("split-kb-commands", partitions=3),
        ip_state=make_topic("split-kb-state", partitions=4, **{"cleanup.policy": "compact"}),
        dead_letter=make_topic("split-kb-dead", partitions=1), kb_updates=make_topic("split-kb-updates", partitions=1))
    cfg = dataclasses.replace(settings, topics=topics,
                              policy=scaled_policy(dataclasses.replace(settings.policy, name="adaptive"), SCALE))
    base = PipelineSettings(round_timeout_s=60, rewind_s=120, command_ttl_s=600, watermark_lag_s=1.0,
                            group_id=f"split-kb-{uuid.uuid4().hex[:8]}", sweep_gather_s=2.0)
    kb_file = tmp_path / "kbtest-worm.toml"
    kb_file.write_text(NEW_MALWARE)
    shares = check_shares(worker_shares(2), 4)
    owners = {ip: [j for j, s in enumerate(shares) if s.owns_ip(ip)] for ip in TRACKED}
    assert all(len(o) == 1 for o in owners.values()) and {o[0] for o in owners.values()} == {0, 1}
    assert all(partition_for(ip.encode(), 4) in shares[owners[ip][0]].partitions for ip in AFFECTED)
    now = time.time()
    with AvroProducer(kafka) as producer:
        for ip, (device, ports) in TRACKED.items():
            producer.send(topics.ip_state, "IpState", _state(ip, device, ports, now))
    codec = default_codec()
    commands = _Follow(kafka, topics.commands)
    results = []
    try:
        for text in worker_shares(2):
            job = dataclasses.replace(base, partitions=text)
            p = beam.Pipeline(options=prism_options(NO_STATE_CACHE))
            build_live(p, cfg, job, build_policy(cfg, job), rewind=False, kb_updates=True)
            results.append(p.run())
        time.sleep(5)                     # the readers are assigned their partitions, the states restored
        r = CliRunner().invoke(main, ["--set", f"topics.kb_updates={topics.kb_updates}", "kb", "update",
                                      str(kb_file)], catch_exceptions=False)
        assert r.exit_code == 0 and "published kbu-" in r.output, r.output

        def urgent(records):
            return Counter(codec.decode(rec.value).record["targets"][0] for _, rec in records
                           if codec.decode(rec.value).record["reason"] == "URGENT")

        commands.until(lambda rs: AFFECTED <= set(urgent(rs)), timeout_s=120)
        time.sleep(5)                     # a second rescan, from the other job, would have come by now
        commands.until(lambda rs: False, timeout_s=1)
        assert urgent(commands.records) == Counter({ip: 1 for ip in AFFECTED})
    finally:
        for result in results:
            result.cancel()
        commands.close()

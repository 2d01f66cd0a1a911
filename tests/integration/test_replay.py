"""Replay of recorded topic ranges on the bounded pipeline (FnApiRunner, real Kafka): the
counterfactual replay of a simulator-recorded standard scan against the simulator's own efficient
run on the same world, determinism (same range, same policy -> same output), and the replay's
figures against its output lake's Table 4 when the recording holds a honeypot."""

from __future__ import annotations

import dataclasses
import json

import pyarrow.parquet as pq
import pytest

from connectors.duckdb_catalog import Catalog
from connectors.kafka_io import AvroProducer
from connectors.parquet_lake import table_files, write_table
from connectors.sim_recorder import world_standard_records
from pipelines.counterfactual import RecordedRound, replay_ip
from pipelines.replay import ReplaySpec, run_replay
from scanflow.estimate import Estimator
from scanflow.knowledge import load_knowledge
from scanflow.policy import EfficientPolicy, PolicyParams, PolicyPortSets
from scanflow.simulate import make_schedule, run_policy, run_standard
from scanflow.evaluation import EvaluationConfig, derive_policy_sets
from scanflow.lifecycle.untracked import bulk_silent_rule, first_probe_rounds
from scanflow.world import World


@pytest.fixture(scope="module")
def simulated():
    """A 2,000-address world over two weeks, the policy, both simulated runs and the recording."""
    kb = load_knowledge()
    cfg = EvaluationConfig(ips=2_000, weeks=2, seeds=(3,), survey_ips=30_000)
    derivation, _ = derive_policy_sets(cfg, kb)
    sets = PolicyPortSets(derivation.standard, derivation.silent, derivation.unknown)
    world = World.generate(cfg.world_config(), 3, horizon_days=14, kb=kb)
    policy = EfficientPolicy(sets, Estimator(kb), PolicyParams())
    rule = bulk_silent_rule(policy, PolicyParams().standard_interval)
    schedule = make_schedule(world.n_ips, 3, world.horizon, slot=PolicyParams().standard_interval,
                             silent_rounds=first_probe_rounds(rule))
    return {"world": world, "sets": sets, "policy": policy, "schedule": schedule,
            "standard": run_standard(world, schedule, sets.standard),
            "efficient": run_policy(world, schedule, policy),
            "records": list(world_standard_records(world, schedule, sets.standard))}


@pytest.fixture(scope="module")
def recorded_topic(simulated, kafka):
    """The recording produced to a fresh events topic (4 partitions, keyed by address)."""
    from kafka import KafkaAdminClient
    import uuid

    name = f"replay.{uuid.uuid4().hex[:12]}"
    admin = KafkaAdminClient(**kafka.client_options())
    admin.create_topics({name: {"num_partitions": 4, "replication_factor": 1, "configs": {}}},
                        timeout_ms=30_000, wait_for_metadata=True)
    with AvroProducer(kafka) as producer:
        futures = [producer.send(name, schema, record) for schema, record in simulated["records"]]
    metadata = [f.get(timeout=30) for f in futures]
    yield name, metadata
    admin.delete_topics([name])
    admin.close()


def _spec(simulated, topic, **kw) -> ReplaySpec:
    world, schedule = simulated["world"], simulated["schedule"]
    phases = {world.address(i): int(schedule.phase[i]) for i in range(world.n_ips)}
    return ReplaySpec(topic=topic, tolerance_s=60.0, phases=phases, **kw)


@pytest.fixture(scope="module")
def full_replay(simulated, recorded_topic, settings):
    """The counterfactual replay of the whole recorded range."""
    return run_replay(settings, _spec(simulated, recorded_topic[0]), policy=simulated["policy"])


def test_counterfactual_replay_agrees_with_the_simulators_efficient_run(simulated, full_replay):
    result = full_replay
    world, sets = simulated["world"], simulated["sets"]
    sim_eff, sim_std = simulated["efficient"], simulated["standard"]

    # the recording is the simulator's standard scan: same cells, same attempts
    assert result.standard_cells == len(sim_std.cells)
    assert result.standard_attempts == int(sim_std.attempts.sum())
    # same responses, same timing, only the policy differs: the same scans and probes ...
    assert result.replayed_attempts == int(sim_eff.attempts.sum())
    assert result.replayed_probes == int(sim_eff.probes.sum())
    # ... and the same cells, except those only a probe outside the standard set can find: the
    # recording never looked there (they read as closed, counted in unobserved_probes)
    sim_cells = {(world.address(int(c >> 16)), int(c & 0xFFFF)) for c in sim_eff.cells}
    outside = {c for c in sim_cells if c[1] not in sets.standard.ports}
    assert result.replayed_cells == len(sim_cells) - len(outside)
    assert result.unobserved_probes > 0
    assert result.ips == world.n_ips and result.events == sum(1 for s, _ in simulated["records"] if s == "ScanEvent")
    assert 0 < result.traffic_ratio < 0.5 and 0 < result.attempts_ratio < 0.5


def test_same_range_same_policy_same_output(simulated, recorded_topic, full_replay, settings, tmp_path):
    topic, metadata = recorded_topic
    # a range: the first two thirds of every partition
    ends: dict[int, int] = {}
    for m in metadata:
        ends[m.partition] = max(ends.get(m.partition, 0), m.offset + 1)
    stop = {(topic, p): (2 * n) // 3 for p, n in ends.items()}
    spec = _spec(simulated, topic, stop_offsets=stop)
    first = run_replay(settings, spec, policy=simulated["policy"], out_lake=str(tmp_path / "a"))
    second = run_replay(settings, spec, policy=simulated["policy"], out_lake=str(tmp_path / "b"))
    assert first == second
    assert first.standard_attempts < int(simulated["standard"].attempts.sum())  # it was a range, not all
    for table in ("decisions", "observations", "scans"):
        a = [p.relative_to(tmp_path / "a") for p in table_files(tmp_path / "a", table)]
        b = [p.relative_to(tmp_path / "b") for p in table_files(tmp_path / "b", table)]
        assert a and a == b  # content-named files: the same names mean the same rows
        rows = sum(pq.ParquetFile(p).metadata.num_rows for p in table_files(tmp_path / "a", table))
        assert rows > 0
    # the output lake is the evaluation: its Table 4 is the replay's comparison
    with Catalog(tmp_path / "a") as cat:
        table4 = cat.traffic()
    assert table4["pdr"] == pytest.approx(first.pdr) and table4["ddr"] == pytest.approx(first.ddr)
    assert (table4["standard_attempts"], table4["efficient_attempts"]) == (first.standard_attempts,
                                                                         first.replayed_attempts)
    assert (table4["standard_bytes"], table4["efficient_bytes"]) == (first.standard_bytes, first.replayed_bytes)
    # the same range by time gives the same answer as by offsets when it covers the same records
    by_time = run_replay(settings, _spec(simulated, topic, start="2019-12-01T00:00:00Z", end="2019-12-31T00:00:00Z"),
                         policy=simulated["policy"])
    assert by_time == full_replay


def test_replay_without_counterfactual_decides_on_every_recorded_round(simulated):
    policy = simulated["policy"]
    standard = simulated["sets"].standard
    rounds = [RecordedRound(1e9 + k * 43_200, f"s{k}", "STANDARD", frozenset({80}) if k % 3 else frozenset(),
                            ((80, b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\n"),) if k % 3 else (), standard, len(standard), True)
              for k in range(6)]
    full = replay_ip("192.0.2.7", rounds, policy, counterfactual=False)
    assert len(full.decisions) == 6 and full.replayed.attempts == 6
    assert [d["scan_id"] for d in full.decisions] == [f"s{k}~efficient" for k in range(6)]
    cf = replay_ip("192.0.2.7", rounds, policy, counterfactual=True, phase=0, tolerance_s=60)
    # the efficient policy first probes with its silent set and backs off: fewer rounds, fewer probes
    assert cf.replayed.attempts < 6 and cf.replayed.probes < full.replayed.probes
    assert all(d["policy"] == "EFFICIENT" for d in cf.decisions)
    assert dataclasses.asdict(cf.standard) == dataclasses.asdict(full.standard)


def test_a_simulated_run_gives_a_lake_that_query_and_report_work_on(tmp_path):
    from click.testing import CliRunner

    from scanflow.cli import main

    runner = CliRunner()
    recorded, evaluation = str(tmp_path / "recorded"), str(tmp_path / "evaluation")
    steps = [["lake", "record-sim", "--lake", recorded, "--ips", "500", "--weeks", "1", "--survey-ips", "10000"],
             ["replay", "--lake", recorded, "--port-sets", str(tmp_path / "recorded" / "_portsets"), "--out", evaluation,
              "--json"],
             ["report", "--lake", evaluation, "--out", str(tmp_path / "report"), "--no-plots"]]
    outputs = []
    for args in steps:
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    replayed = json.loads(outputs[1][outputs[1].index("{"):])
    assert replayed["standard_attempts"] == 500 * 14
    page = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    assert "Table 4" in page and f"{replayed['pdr']:.2%}" in page
    query = runner.invoke(main, ["query", "SELECT policy, count(*) AS n FROM scans_dedup GROUP BY policy ORDER BY policy",
                                 "--lake", evaluation, "--format", "json"])
    assert json.loads(query.output) == [{"policy": "EFFICIENT", "n": replayed["replayed_attempts"]},
                                        {"policy": "STANDARD", "n": 500 * 14}]


def test_the_adaptive_policy_replays_a_recording_from_the_cli(tmp_path):
    from click.testing import CliRunner

    from scanflow.cli import main

    runner = CliRunner()
    recorded = str(tmp_path / "recorded")
    made = runner.invoke(main, ["lake", "record-sim", "--lake", recorded, "--ips", "500", "--weeks", "1",
                                "--survey-ips", "10000"])
    assert made.exit_code == 0, made.output
    assert (tmp_path / "recorded" / "_portsets" / "ranking.json").is_file()
    results = {}
    for policy in ("efficient", "adaptive"):
        out = runner.invoke(main, ["replay", "--lake", recorded, "--port-sets", str(tmp_path / "recorded" / "_portsets"),
                                   "--policy", policy, "--out", str(tmp_path / policy), "--json"])
        assert out.exit_code == 0, out.output
        results[policy] = json.loads(out.output[out.output.index("{"):])
    paper, adaptive = results["efficient"], results["adaptive"]
    assert paper["standard_attempts"] == adaptive["standard_attempts"] == 500 * 14
    # the adaptive policy probes every address of a prefix where something answered every round
    assert adaptive["replayed_attempts"] > paper["replayed_attempts"] > 0
    query = runner.invoke(main, ["query", "SELECT DISTINCT port_set_name AS ps FROM scans_dedup "
                                 "WHERE policy = 'EFFICIENT' ORDER BY ps", "--lake", str(tmp_path / "adaptive"),
                                 "--format", "json"])
    names = {r["ps"] for r in json.loads(query.output)}
    assert "light" in names and names & {"followup", "followup-first"}, names


def _honeypot_recording(root):
    """A lake recorded from a tiny world with a static host, a sporadic one and a 150-port honeypot."""
    from scanflow.world.dynamics import HONEYPOT_CLASS, INITIAL
    from scanflow.world.hosts import HONEYPOT
    from tests.unit.scanflow.test_simulate import SPORADIC_HOST, STATIC_HOST, hand_sets, tiny_world, zero_schedule

    honeypot = (5, 0, 14 * 86400, set(range(1000, 1150)), HONEYPOT_CLASS, INITIAL, HONEYPOT)
    world = tiny_world([STATIC_HOST, SPORADIC_HOST, honeypot])
    sets = hand_sets(extra_standard=range(1000, 1150))
    records = list(world_standard_records(world, zero_schedule(10), sets.standard))
    write_table(root, "events", [r for schema, r in records if schema == "ScanEvent"])
    write_table(root, "scans", [r for schema, r in records if schema == "ScanDone"])
    (root / "_portsets").mkdir()
    for role in ("standard", "silent", "unknown"):
        getattr(sets, role).write(root / "_portsets" / f"{role}.json")
    return sets


def test_the_replay_and_its_report_leave_the_same_honeypots_out(tmp_path, settings):
    sets = _honeypot_recording(tmp_path / "rec")
    policy = EfficientPolicy(sets, Estimator(load_knowledge()), PolicyParams())
    results = {}
    for threshold in (100, 0):
        out = tmp_path / f"out-{threshold}"
        result = run_replay(settings, ReplaySpec(), policy=policy, lake=str(tmp_path / "rec"), out_lake=str(out),
                            honeypot_min_ports=threshold)
        with Catalog(out) as cat:
            table4 = cat.traffic(honeypot_min_ports=threshold)
        assert (table4["pdr"], table4["ddr"], table4["traffic_ratio"], table4["attempts_ratio"]) == (
            result.pdr, result.ddr, result.traffic_ratio, result.attempts_ratio)
        assert (table4["standard_cells"], table4["efficient_cells"]) == (result.standard_cells, result.replayed_cells)
        assert (table4["honeypot_min_ports"], table4["excluded_ips"]) == (result.honeypot_min_ports,
                                                                          result.excluded_ips)
        results[threshold] = result
    judged, every = results[100], results[0]
    assert (judged.excluded_ips, every.excluded_ips) == (1, 0)
    assert every.standard_cells == judged.standard_cells + 150
    assert judged.pdr != every.pdr  # the honeypot's ports count only without the exclusion
    assert (judged.traffic_ratio, judged.attempts_ratio) == (every.traffic_ratio, every.attempts_ratio)
    assert any("1 IP left out" in line for line in judged.lines())


def test_scanflow_replay_and_report_take_the_honeypot_threshold(tmp_path):
    from click.testing import CliRunner

    from scanflow.cli import main

    _honeypot_recording(tmp_path / "rec")
    runner = CliRunner()
    figures = {}
    for threshold in ("100", "0"):
        out, report = str(tmp_path / f"out-{threshold}"), tmp_path / f"report-{threshold}"
        replayed = runner.invoke(main, ["replay", "--lake", str(tmp_path / "rec"), "--port-sets",
                                        str(tmp_path / "rec" / "_portsets"), "--out", out, "--json",
                                        "--honeypot-min-ports", threshold])
        assert replayed.exit_code == 0, replayed.output
        figures[threshold] = json.loads(replayed.output[replayed.output.index("{"):])
        shown = runner.invoke(main, ["report", "--lake", out, "--out", str(report), "--no-plots",
                                     "--honeypot-min-ports", threshold])
        assert shown.exit_code == 0, shown.output
        page = (report / "index.html").read_text(encoding="utf-8")
        assert f"{figures[threshold]['pdr']:.2%}" in page and f"{figures[threshold]['ddr']:.2%}" in page
        assert ("leave out 1 IP the standard scan found with 100 or more" in page if threshold == "100"
                else "PDR and DDR count every IP" in page)
    assert (figures["100"]["honeypot_min_ports"], figures["100"]["excluded_ips"]) == (100, 1)
    assert (figures["0"]["honeypot_min_ports"], figures["0"]["excluded_ips"]) == (0, 0)
    assert figures["100"]["pdr"] != figures["0"]["pdr"]

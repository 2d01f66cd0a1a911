"""Replay throughput: ``python bench/bench_replay.py [--ips 20000] [--weeks 2] [--partitions 6]``.

A synthetic world's standard scan (:func:`connectors.sim_recorder.world_standard_records`: a ScanEvent per
open port and banner, a ScanDone per address and round) is produced to a fresh topic of the local
broker, then the counterfactual replay of the efficient policy runs over the whole range on the
FnApiRunner (:func:`pipelines.replay.run_replay`), and again from the same recording in a Parquet
lake. Timed: the replay only (read, decode, group per IP, the policy's decisions, the comparison),
not the world, the recording or producing it. Prints records/s (ScanEvent + ScanDone, everything the
events topic carries) and ScanEvents/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ips", type=int, default=20_000)
    parser.add_argument("--weeks", type=float, default=2.0)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1,
                        help="FnApiRunner worker processes (--direct_num_workers, multi_processing mode).")
    args = parser.parse_args(argv)

    from kafka import KafkaAdminClient

    from connectors.kafka_io import AvroProducer
    from connectors.parquet_lake import LakeWriter
    from connectors.sim_recorder import world_standard_records
    from pipelines.replay import ReplaySpec, run_replay
    from scanflow.config import load_settings
    from scanflow.estimate import Estimator
    from scanflow.knowledge import load_knowledge
    from scanflow.policy import EfficientPolicy, PolicyParams, PolicyPortSets
    from scanflow.simulate import make_schedule
    from scanflow.evaluation import EvaluationConfig, derive_policy_sets
    from scanflow.lifecycle.untracked import bulk_silent_rule, first_probe_rounds
    from scanflow.world import World

    settings = load_settings(environ={k: v for k, v in os.environ.items() if k.startswith("SCANFLOW_")})
    kb = load_knowledge()
    cfg = EvaluationConfig(ips=args.ips, weeks=args.weeks, seeds=(args.seed,), survey_ips=100_000)
    derivation, _ = derive_policy_sets(cfg, kb)
    sets = PolicyPortSets.of(derivation)
    world = World.generate(cfg.world_config(), args.seed, horizon_days=args.weeks * 7, kb=kb)
    policy = EfficientPolicy(sets, Estimator(kb), PolicyParams())
    rule = bulk_silent_rule(policy, PolicyParams().standard_interval)
    schedule = make_schedule(world.n_ips, args.seed, world.horizon, slot=PolicyParams().standard_interval,
                             silent_rounds=first_probe_rounds(rule))
    records = list(world_standard_records(world, schedule, sets.standard))
    n_events = sum(1 for schema, _ in records if schema == "ScanEvent")
    print(f"recording: {len(records):,} records ({n_events:,} ScanEvents, {len(records) - n_events:,} ScanDones), "
          f"{world.n_ips:,} IPs, {schedule.n_slots} rounds; standard set {len(sets.standard):,} ports")

    topic = f"bench.replay.{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(**settings.kafka.client_options())
    admin.create_topics({topic: {"num_partitions": args.partitions, "replication_factor": 1, "configs": {}}},
                        timeout_ms=30_000, wait_for_metadata=True)
    try:
        with AvroProducer(settings.kafka) as producer:
            for schema, record in records:
                producer.send(topic, schema, record)
        for label, spec, lake in (("kafka", ReplaySpec(topic=topic, tolerance_s=60.0), None),
                                  ("lake", ReplaySpec(tolerance_s=60.0), "lake")):
            with tempfile.TemporaryDirectory(prefix="scanflow-bench-replay-") as tmp:
                if lake:
                    with LakeWriter(tmp) as writer:
                        writer.write("events", [r for s, r in records if s == "ScanEvent"])
                        writer.write("scans", [r for s, r in records if s == "ScanDone"])
                cpu0, started = time.process_time(), time.perf_counter()
                extra = ([f"--direct_num_workers={args.workers}", "--direct_running_mode=multi_processing"]
                         if args.workers > 1 else None)
                result = run_replay(settings, spec, policy=policy, lake=tmp if lake else None, extra_args=extra)
                wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
            print(f"replay from {label:<5} ({args.workers} worker(s)): {wall:6.1f} s wall ({cpu:.1f} s CPU in this process): "
                  f"{len(records) / wall:,.0f} records/s, {n_events / wall:,.0f} ScanEvents/s; "
                  f"traffic {result.traffic_ratio:.2%}, attempts {result.attempts_ratio:.2%}, PDR {result.pdr:.2%}")
    finally:
        admin.delete_topics([topic])
        admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Throughput and state size of the scheduler pipeline.

Three measurements (pick with ``--only``):

``bounded``  events/s through the bounded pipeline (the replay) on the FnApiRunner: an event
             history of ``--hosts`` hosts over ``--days`` days (:mod:`tests.support.history`) from memory,
             and the same history from a Kafka topic (bounded read + decode + the stages); each with
             the batch decision stage replays use and with the live per-IP stage (state and timers).
             ``--workers N``: N worker processes instead of the in-process worker.
``live``     events/s through the live pipeline on Prism: the history (shifted to end now) is
             produced to a fresh events topic first, then the pipeline is started and timed until the
             ``scanflow.ip-state`` topic shows every IP's last decision (with and without job start).
             ``--jobs 1,2``: instead, the live scheduler as N jobs in N processes of their own (one
             Prism job server), job i owning the events partitions ``i/N`` (``pipeline.partitions``),
             against the same backlog; ``--runs`` rounds of every N, alternating.
``state``    bytes of scheduler state per tracked IP, over ``--tracked`` IPs (1 M by default) whose
             states come from the policy core (1-4 rounds each: new responder, unchanged, changed):
             the packed value plus the key, as the runner stores them.

Run with the broker up (``scanflow infra up``) for the Kafka parts::

    .venv/bin/python bench/bench_pipeline.py [--hosts 5000] [--days 10] [--tracked 1000000]

Figures are wall-clock; the load average is printed because other work on the machine changes them.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import random
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import apache_beam as beam  # noqa: E402
from apache_beam.transforms.window import TimestampedValue  # noqa: E402

from pipelines.decode import from_record  # noqa: E402
from scanflow.lifecycle.rounds import Done  # noqa: E402
from tests.support.history import record_history, toy_world  # noqa: E402
from pipelines.policy_setup import build_policy  # noqa: E402
from pipelines.scheduler import NO_STATE_CACHE, build_live, build_replay, replay_runner  # noqa: E402
from pipelines.settings import PipelineSettings  # noqa: E402
from scanflow.lifecycle.state import RefTable, Tracked, pack, short_hash  # noqa: E402
from scanflow.config import load_settings  # noqa: E402
from scanflow.policy import DAY, Observation  # noqa: E402


def _load() -> str:
    return "load average " + ", ".join(f"{x:.1f}" for x in os.getloadavg())


def _cpu_self() -> float:
    """CPU seconds (user + system) of this process so far, all threads (LOOPBACK workers included)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _cpu_of(pid: int) -> float:
    """CPU seconds of another process (the Prism job server) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stamp(item):
    return TimestampedValue(item, (item.ended_us if isinstance(item, Done) else item.ts_us) / 1e6)


def _history(policy, settings, hosts: int, days: float, start: float):
    world = toy_world(hosts, kb=policy.estimator.kb, silent=policy.port_sets.silent.ports, start=start, days=days)
    return record_history(world, policy, start=start, horizon=start + days * DAY, prefix=28,
                          round_timeout_s=settings.round_timeout_s, command_ttl_s=settings.command_ttl_s)


def _sweep_ranges(hosts: int) -> tuple[str, ...]:
    import ipaddress

    first = int(ipaddress.IPv4Address("198.51.100.0"))
    nets = ipaddress.summarize_address_range(ipaddress.IPv4Address(first),
                                             ipaddress.IPv4Address(first + hosts - 1))
    return tuple(str(n.supernet(new_prefix=min(n.prefixlen, 28))) for n in nets)


def _bounded_runner(workers: int):
    if workers <= 1:
        return replay_runner(), None
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    return FnApiRunner(), PipelineOptions([f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"])


def bench_bounded(cfg, hosts: int, days: float, workers: int = 1) -> None:
    start = 1_700_000_000.0
    ps = PipelineSettings(sweep_ranges=_sweep_ranges(hosts), sweep_prefix=28)
    policy = build_policy(cfg, ps)
    t = time.perf_counter()
    history = _history(policy, ps, hosts, days, start)
    items = [from_record(n, r) for n, r in history.records]
    print(f"history: {len(items):,} events, {len(history.decisions):,} decisions "
          f"({time.perf_counter() - t:.1f} s to generate, not timed below)")
    stages = (("batch", True), ("per-IP timers", False))
    for label, batch in stages:
        runner, options = _bounded_runner(workers)
        t, cpu = time.perf_counter(), _cpu_self()
        with beam.Pipeline(runner=runner, options=options) as p:
            events = p | beam.Create(items, reshuffle=False) | beam.Map(_stamp)
            build_replay(p, events, ps, policy, start=start, horizon=start + days * DAY, batch=batch)
        dt, cpu = time.perf_counter() - t, _cpu_self() - cpu
        print(f"bounded, FnApiRunner ({workers} worker(s)), {label:>13} stage, from memory: {len(items) / dt:>8,.0f} "
              f"events/s, {len(items) / cpu:,.0f} events/CPU-s of this process ({dt:.1f} s; {_load()})")

    from connectors.kafka_admin import admin_client
    from connectors.kafka_io import AvroProducer
    from kafka.admin import NewTopic

    topic = f"bench.pipeline.{uuid.uuid4().hex[:8]}"
    admin = admin_client(cfg.kafka)
    admin.create_topics([NewTopic(topic, 6, 1)])
    try:
        with AvroProducer(cfg.kafka, event_time_timestamps=True) as producer:
            for name, record in history.records:
                producer.send(topic, name, record)
        from pipelines.sources import ReadEvents

        for label, batch in stages:
            runner, options = _bounded_runner(workers)
            t, cpu = time.perf_counter(), _cpu_self()
            with beam.Pipeline(runner=runner, options=options) as p:
                events = p | ReadEvents(cfg.kafka, topic, cfg.topics.dead_letter, start_time_ms=int(start * 1000),
                                        stop_time_ms=int((start + days * DAY) * 1000) + 1)
                build_replay(p, events, ps, policy, start=start, horizon=start + days * DAY, batch=batch)
            dt, cpu = time.perf_counter() - t, _cpu_self() - cpu
            print(f"bounded, FnApiRunner ({workers} worker(s)), {label:>13} stage, from Kafka:  {len(items) / dt:>8,.0f} "
                  f"events/s, {len(items) / cpu:,.0f} events/CPU-s of this process ({dt:.1f} s; {_load()})")
    finally:
        admin.delete_topics([topic])
        admin.close()


def bench_live(cfg, hosts: int, days: float, state_cache: bool = False) -> None:
    from connectors.kafka_admin import admin_client
    from connectors.kafka_io import AvroProducer, make_consumer, topic_partitions
    from kafka.admin import NewTopic
    from pipelines.runners import PrismServer, pipeline_options, prism_binary

    now = time.time()
    start = now - days * DAY - 3600
    # catch_up off: the history ends now, so its old next scans would be moved to now (less work
    # than the history asks for, and not the figure measured before it existed)
    ps = PipelineSettings(group_id=f"bench-{uuid.uuid4().hex[:8]}", watermark_lag_s=1.0, catch_up=False)
    policy = build_policy(cfg, ps)
    history = _history(policy, ps, hosts, days, start)
    last = _last_decided(history)
    names = {k: f"bench.{k}.{uuid.uuid4().hex[:8]}" for k in ("events", "commands", "state", "dead")}
    admin = admin_client(cfg.kafka)
    admin.create_topics([NewTopic(names["events"], 6, 1), NewTopic(names["commands"], 3, 1),
                         NewTopic(names["state"], 6, 1, topic_configs={"cleanup.policy": "compact"}),
                         NewTopic(names["dead"], 1, 1)])
    topics = dataclasses.replace(cfg.topics, events=names["events"], commands=names["commands"],
                                 ip_state=names["state"], dead_letter=names["dead"])
    run_cfg = dataclasses.replace(cfg, topics=topics)
    try:
        with AvroProducer(cfg.kafka, event_time_timestamps=True) as producer:
            for name, record in history.records:
                producer.send(names["events"], name, record)
        consumer = make_consumer(cfg.kafka)
        consumer.assign(topic_partitions(consumer, [names["state"]]))
        log_path = Path(f"/tmp/bench-prism-{uuid.uuid4().hex[:6]}.log")
        with PrismServer(prism_binary(cfg), log_path) as server:
            options = pipeline_options(run_cfg, streaming=True, runner="prism",
                                       extra=[*([] if state_cache else [NO_STATE_CACHE]), *server.pipeline_args()])
            p = beam.Pipeline(options=options)
            build_live(p, run_cfg, ps, policy)
            t0, cpu0, prism0 = time.perf_counter(), _cpu_self(), _cpu_of(server._proc.pid)
            result = p.run()
            from connectors.avro_codec import default_codec

            codec = default_codec()
            try:
                first = _wait_for_states(consumer, codec, last, t0)
                done = time.perf_counter()
                cpu, prism_cpu = _cpu_self() - cpu0, _cpu_of(server._proc.pid) - prism0
            finally:
                result.cancel()
                consumer.close()
        n = len(history.records)
        print(f"live, Prism (SDK state cache {'on' if state_cache else 'off'}), {n:,} events backlog, "
              f"{len(last):,} tracked IPs: "
              f"{n / (done - t0):>8,.0f} events/s with job start ({done - t0:.1f} s), "
              f"{n / (done - first):,.0f} events/s after the first state record; "
              f"{n / (cpu + prism_cpu):,.0f} events/CPU-s (Python {cpu:.1f} s + Prism {prism_cpu:.1f} s; {_load()})")
    finally:
        admin.delete_topics(list(names.values()))
        admin.close()


def _last_decided(history) -> dict[str, int]:
    """Per IP still scheduled at the end of ``history``, the time of its last decision."""
    last: dict[str, int] = {}
    for d in history.decisions:
        if d["next_scan_at"] is not None:
            last[d["ip"]] = max(last.get(d["ip"], 0), d["decided_at"])
        else:
            last.pop(d["ip"], None)
    return last


def _wait_for_states(consumer, codec, last: dict, t0: float, alive=lambda: True) -> float | None:
    """Read the state topic until every IP of ``last`` has a state at least that recent (kept up to
    date per record: this loop may run in the process whose worker is measured, so it must cost next
    to nothing); returns when the first record came (None if none did)."""
    first, seen, waiting = None, {}, set(last)
    while waiting:
        for batch in consumer.poll(timeout_ms=200).values():
            for r in batch:
                first = first or time.perf_counter()
                if r.value is not None:
                    rec = codec.decode(r.value).record
                    ip = rec["ip"]
                    seen[ip] = max(seen.get(ip, 0), rec["updated_at"])
                    if ip in waiting and seen[ip] >= last[ip]:
                        waiting.discard(ip)
        if time.perf_counter() - t0 > 1800:
            raise SystemExit("live benchmark: not done after 30 minutes")
        if not alive():
            raise SystemExit("live benchmark: a scheduler job's process died")
    return first


def _live_job(cfg, ps, extra: list[str], ready, stop) -> None:
    """One scheduler job, in a process of its own (its LOOPBACK SDK worker too): run until ``stop``."""
    logging.disable(logging.WARNING)
    from pipelines.runners import pipeline_options

    policy = build_policy(cfg, ps)
    p = beam.Pipeline(options=pipeline_options(cfg, streaming=True, runner="prism", extra=extra))
    build_live(p, cfg, ps, policy)
    result = p.run()
    ready.set()
    stop.wait()
    try:
        result.cancel()
    finally:
        os._exit(0)  # Beam's worker threads would keep a cancelled job's process waiting


def bench_live_jobs(cfg, hosts: int, days: float, job_counts: list[int], runs: int,
                    state_cache: bool = False) -> None:
    """The live scheduler as 1..N jobs (processes) splitting the events partitions, same backlog."""
    import multiprocessing

    from connectors.avro_codec import default_codec
    from connectors.kafka_admin import admin_client
    from connectors.kafka_io import AvroProducer, make_consumer, topic_partitions
    from kafka.admin import NewTopic
    from pipelines.partitions import check_shares, worker_shares
    from pipelines.runners import PrismServer, prism_binary

    now = time.time()
    start = now - days * DAY - 3600
    base = PipelineSettings(watermark_lag_s=1.0, catch_up=False)  # catch_up off: see bench_live
    policy = build_policy(cfg, base)
    history = _history(policy, base, hosts, days, start)
    last = _last_decided(history)
    admin = admin_client(cfg.kafka)
    events = f"bench.events.{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(events, 6, 1)])
    made = [events]
    codec = default_codec()
    ctx = multiprocessing.get_context("spawn")
    figures: dict[int, list[tuple[float, float, float]]] = {n: [] for n in job_counts}
    try:
        with AvroProducer(cfg.kafka, event_time_timestamps=True) as producer:
            for name, record in history.records:
                producer.send(events, name, record)
        n_events = len(history.records)
        with PrismServer(prism_binary(cfg), Path(f"/tmp/bench-prism-{uuid.uuid4().hex[:6]}.log")) as server:
            for run in range(runs):
                for jobs in job_counts:
                    names = {k: f"bench.{k}.{uuid.uuid4().hex[:8]}" for k in ("commands", "state", "dead")}
                    admin.create_topics([NewTopic(names["commands"], 3, 1),
                                         NewTopic(names["state"], 6, 1, topic_configs={"cleanup.policy": "compact"}),
                                         NewTopic(names["dead"], 1, 1)])
                    made += list(names.values())
                    topics = dataclasses.replace(cfg.topics, events=events, commands=names["commands"],
                                                 ip_state=names["state"], dead_letter=names["dead"])
                    run_cfg = dataclasses.replace(cfg, topics=topics)
                    group = f"bench-{uuid.uuid4().hex[:8]}"
                    shares = worker_shares(jobs) if jobs > 1 else [""]
                    if jobs > 1:
                        check_shares(shares, 6)
                    extra = [*([] if state_cache else [NO_STATE_CACHE]), *server.pipeline_args()]
                    consumer = make_consumer(cfg.kafka)
                    consumer.assign(topic_partitions(consumer, [names["state"]]))
                    stop = ctx.Event()
                    procs, ready = [], []
                    t0, prism0 = time.perf_counter(), _cpu_of(server._proc.pid)
                    for share in shares:
                        ps = dataclasses.replace(base, group_id=group, partitions=share)
                        ready.append(ctx.Event())
                        procs.append(ctx.Process(target=_live_job, args=(run_cfg, ps, extra, ready[-1], stop)))
                        procs[-1].start()
                    try:
                        first = _wait_for_states(consumer, codec, last, t0,
                                                 alive=lambda: all(p.is_alive() for p in procs))
                        done = time.perf_counter()
                        cpu = sum(_cpu_of(p.pid) for p in procs)
                        prism_cpu = _cpu_of(server._proc.pid) - prism0
                    finally:
                        stop.set()
                        for p in procs:
                            p.join(30)
                            if p.is_alive():
                                p.kill()
                        consumer.close()
                    figures[jobs].append((n_events / (done - t0), n_events / (done - first),
                                          n_events / (cpu + prism_cpu)))
                    print(f"live, Prism, {jobs} job(s) {shares}, run {run + 1}: {n_events:,} events backlog, "
                          f"{len(last):,} tracked IPs: {n_events / (done - t0):>7,.0f} events/s with job start "
                          f"({done - t0:.1f} s), {n_events / (done - first):,.0f} events/s after the first state "
                          f"record; {n_events / (cpu + prism_cpu):,.0f} events/CPU-s (jobs {cpu:.1f} s + Prism "
                          f"{prism_cpu:.1f} s; {_load()})", flush=True)
        for jobs, rows in figures.items():
            if rows:
                col = list(zip(*rows))
                print(f"live, {jobs} job(s), {len(rows)} runs: with job start median {statistics.median(col[0]):,.0f} "
                      f"({min(col[0]):,.0f}-{max(col[0]):,.0f}) events/s; after the first state record median "
                      f"{statistics.median(col[1]):,.0f} ({min(col[1]):,.0f}-{max(col[1]):,.0f}); per CPU-s "
                      f"{statistics.median(col[2]):,.0f}")
    finally:
        admin.delete_topics(made)
        admin.close()


def bench_state(cfg, tracked: int, seed: int = 5) -> None:
    ps = PipelineSettings()
    policy = build_policy(cfg, ps)
    refs = RefTable.of_policy(policy)
    kb = policy.estimator.kb
    rng = random.Random(seed)
    devices = [d for d in kb.devices if d.keywords]
    silent = policy.port_sets.silent
    sizes, keys = [], []
    from apache_beam.coders import FastPrimitivesCoder

    coder = FastPrimitivesCoder()
    t = time.perf_counter()
    now = 1_700_000_000.0
    for i in range(tracked):
        ip = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        if rng.random() < 0.5:
            d = rng.choice(devices)
            ports = sorted(rng.sample(sorted(d.ports), min(len(d.ports), rng.randint(1, 3))))
            banners = {ports[0]: f"HTTP/1.1 200 OK\r\nServer: {d.keywords[0]}\r\n\r\n".encode()}
        else:
            ports = sorted(rng.sample([21, 22, 23, 25, 80, 443, 8080, 7547], rng.randint(1, 3)))
            banners = {p: f"SSH-2.0-OpenSSH_{rng.randint(6, 9)}\r\n".encode() for p in ports if rng.random() < 0.5}
        state, plan = policy.decide(None, Observation.of(ports, banners, probed=silent), now)
        recent = [short_hash(f"{ip}-0")]
        for k in range(rng.randint(0, 3)):
            state, plan = policy.decide(state, Observation.of(ports, banners, probed=plan.ports), plan.at)
            recent.insert(0, short_hash(f"{ip}-{k + 1}"))
        value = pack(Tracked(state, plan.at, plan.reason, rng.random() < 0.5, plan.at - 43200, plan.at - 43200,
                             tuple(recent[:ps.recent_scans])), refs)
        sizes.append(len(coder.encode(value)))      # as the IP's bag stores it (coder framing included)
        keys.append(len(ip))
    dt = time.perf_counter() - t
    total = [s + k for s, k in zip(sizes, keys)]
    total.sort()
    print(f"state: {tracked:,} tracked IPs ({dt:.0f} s to build): value {statistics.mean(sizes):.1f} B mean, "
          f"value + key {statistics.mean(total):.1f} B mean, p50 {total[len(total) // 2]} B, "
          f"p99 {total[int(len(total) * 0.99)]} B, max {total[-1]} B; "
          f"{sum(total) / 2**20:.0f} MiB for all")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hosts", type=int, default=5000)
    ap.add_argument("--days", type=float, default=10.0)
    ap.add_argument("--tracked", type=int, default=1_000_000)
    ap.add_argument("--only", choices=("bounded", "live", "state"), action="append")
    ap.add_argument("--workers", type=int, default=1,
                    help="bounded: FnApiRunner worker processes (multi_processing mode); 1 = in-process")
    ap.add_argument("--policy", choices=("adaptive", "paper"), default=None,
                    help="the efficient policy the pipeline runs (default: the configured one, adaptive)")
    ap.add_argument("--state-cache", action="store_true",
                    help="live: keep the SDK worker's state cache on (default: off, as the CLI runs it)")
    ap.add_argument("--jobs", default="",
                    help="live: comma-separated job counts, e.g. 1,2: the scheduler as N processes splitting "
                         "the events partitions (pipeline.partitions i/N)")
    ap.add_argument("--runs", type=int, default=1, help="live --jobs: rounds over the job counts")
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)
    cfg = load_settings()
    if args.policy:
        cfg = dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, name=args.policy))
    print(f"policy: {cfg.policy.name}", flush=True)
    for what in args.only or ("bounded", "live", "state"):
        if what == "bounded":
            bench_bounded(cfg, args.hosts, args.days, args.workers)
        elif what == "live" and args.jobs:
            bench_live_jobs(cfg, args.hosts, args.days, [int(j) for j in args.jobs.split(",")], args.runs,
                            args.state_cache)
        elif what == "live":
            bench_live(cfg, args.hosts, args.days, args.state_cache)
        else:
            bench_state(cfg, args.tracked)


if __name__ == "__main__":
    main()

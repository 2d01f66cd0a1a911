"""``scanflow query``, ``scanflow report``, ``scanflow replay`` and ``scanflow lake``: the data users live in.

I/O packages (DuckDB, pyarrow, Beam) are imported inside the commands so ``scanflow --help`` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from scanflow.cli import CliContext, pass_ctx
from scanflow.metrics import HONEYPOT_MIN_PORTS

_LAKE_HELP = "Lake root directory (default: the [lake] root setting)."
_HONEYPOT_HELP = ("Leave IPs the standard run found with this many open ports or more out of PDR and DDR "
                  "(honeypots, as scanflow evaluate does; 0 = keep every IP, the figures before this option).")


def _root(obj: CliContext, lake: str | None) -> Path:
    from connectors.lake_settings import lake_settings

    return Path(lake) if lake else lake_settings(obj.settings).root_path()


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"scanflow: error: {message}", err=True)
    sys.exit(code)


def _require_topics(obj: CliContext, needed: dict[str, str]) -> None:
    """The Kafka topics a command reads or writes must exist: else one line naming the fix and exit
    code 4 (``KafkaNotReady``), before any pipeline starts (its reader would fail after 30 s)."""
    from connectors.kafka_admin import require_topics

    require_topics(obj.settings.kafka, needed)


@click.command("query")
@click.argument("sql")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--lake", default=None, help=_LAKE_HELP)
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None,
              help="Write the result to this file instead of standard output.")
@click.option("--max-width", type=click.IntRange(min=8), default=60, show_default=True,
              help="Widest cell in --format table (longer ones are cut).")
@pass_ctx
def query(obj: CliContext, sql: str, fmt: str, lake: str | None, out_file: str | None, max_width: int) -> None:
    """Run SQL on the lake's DuckDB views: events, scans, observations, decisions, ip_state, their
    *_dedup views, ip_state_latest and responses. Text and banners are shown escaped; select
    hex(banner) for the raw bytes."""
    from connectors.duckdb_catalog import Catalog
    from connectors.report import format_table

    import duckdb

    with Catalog(_root(obj, lake)) as cat:
        try:
            result = cat.sql(sql)
        except duckdb.Error as exc:
            _fail(f"query failed: {str(exc).splitlines()[0]}", 2)
    text = format_table(result, fmt, max_width=max_width)
    if out_file:
        Path(out_file).write_text(text, encoding="utf-8")
        click.echo(f"{result.num_rows} rows -> {out_file}")
    else:
        click.echo(text, nl=False)


@click.command("report")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Directory for index.html, PNG and CSV.")
@click.option("--lake", default=None, help=_LAKE_HELP)
@click.option("--start", default=None, help="Only data from this time (ISO 8601 or epoch seconds).")
@click.option("--end", default=None, help="Only data before this time.")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots (no matplotlib needed).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="DuckDB threads (default: all cores).")
@click.option("--honeypot-min-ports", type=click.IntRange(min=0), default=HONEYPOT_MIN_PORTS, show_default=True,
              help=_HONEYPOT_HELP)
@pass_ctx
def report(obj: CliContext, out_dir: str, lake: str | None, start: str | None, end: str | None,
           no_plots: bool, threads: int | None, honeypot_min_ports: int) -> None:
    """Write the canned report: port ranking (Table 1), derived port sets, traffic and detection
    rates (Table 4), responsive and change rates, back-off (Figure 6), attempts (Figure 7), banners."""
    from connectors.duckdb_sql import as_time
    from connectors.report import build_report

    # A bad time is a usage error (exit 2), told before any work starts.
    for flag, value in (("--start", start), ("--end", end)):
        try:
            as_time(value)
        except ValueError as exc:
            _fail(f"{flag}: {exc}", 2)
    root = _root(obj, lake)
    try:
        from scanflow.cli.inventory import configured_kb

        result = build_report(root, out_dir, start=start, end=end, threads=threads, plots=not no_plots,
                              honeypot_min_ports=honeypot_min_ports, kb=configured_kb(obj))
    except (RuntimeError, ValueError) as exc:
        _fail(str(exc))
    total = sum(result.timings.values())
    click.echo(f"report: {result.index} ({len(result.files)} files, {total:.1f} s)")


@click.command("replay")
@click.option("--lake", default=None, help="Lake holding the recorded scan (default: the [lake] root setting).")
@click.option("--out", "out_lake", default=None, help="Lake to write the replay's observations and decisions to.")
@click.option("--policy", type=click.Choice(["efficient", "adaptive", "standard"]), default="efficient",
              show_default=True,
              help="efficient: the paper's method; adaptive: the adaptive policy (its light set is cut from the "
                   "ranking: ranking.json beside --port-sets, or the sets derived from the recording); "
                   "standard: the baseline.")
@click.option("--counterfactual/--no-counterfactual", default=True, show_default=True,
              help="Let the policy see only the (IP, port, round) cells it would have probed.")
@click.option("--source-policy", default="STANDARD", show_default=True, help="Policy of the recorded scan.")
@click.option("--start", default=None, help="Replay rounds from this time (ISO 8601 or epoch seconds).")
@click.option("--end", default=None, help="Replay rounds before this time.")
@click.option("--topic", default=None, help="Replay from this Kafka topic instead of the lake (events topic).")
@click.option("--from-offset", "from_offsets", multiple=True, metavar="PARTITION=OFFSET",
              help="Start offset of a partition (repeatable; others start at the beginning).")
@click.option("--to-offset", "to_offsets", multiple=True, metavar="PARTITION=OFFSET",
              help="Stop offset (exclusive) of a partition (repeatable; others stop at the current end).")
@click.option("--port-sets", "port_sets_dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="Directory with standard.json, silent.json and unknown.json (PortSet.write); default: "
                   "derived from the recording in the lake.")
@click.option("--tolerance", "tolerance_s", type=click.FloatRange(min=0), default=3600.0, show_default=True,
              help="Seconds a recorded round may come before the planned time and still be taken.")
@click.option("--honeypot-min-ports", type=click.IntRange(min=0), default=HONEYPOT_MIN_PORTS, show_default=True,
              help=_HONEYPOT_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@pass_ctx
def replay(obj: CliContext, lake, out_lake, policy, counterfactual, source_policy, start, end, topic,
           from_offsets, to_offsets, port_sets_dir, tolerance_s, honeypot_min_ports, as_json) -> None:
    """Replay a recorded scan through a policy on the bounded Beam pipeline (FnApiRunner) and
    compare it with the recording (Table 4 style). With --topic the recorded range is read from
    Kafka (--from-offset/--to-offset per partition, or --start/--end as a time range); otherwise
    from the lake's events and scans. --out writes the replay's decisions and observations to a lake."""
    import json

    root = _root(obj, lake)
    if topic:
        _require_topics(obj, {"--topic": topic})
    from pipelines.replay import ReplaySpec, run_replay

    try:
        # the adaptive policy is an efficient scan on the wire (its rounds are the EFFICIENT policy's)
        spec = ReplaySpec(policy="EFFICIENT" if policy == "adaptive" else policy.upper(),
                          counterfactual=counterfactual, source_policy=source_policy.upper(),
                          start=start, end=end, topic=topic, start_offsets=_offsets(topic, from_offsets),
                          stop_offsets=_offsets(topic, to_offsets), tolerance_s=tolerance_s)
        port_sets = _port_sets(port_sets_dir, root, spec, topic)
        chosen = _adaptive(obj.settings, port_sets) if policy == "adaptive" else None
        result = run_replay(obj.settings, spec, policy=chosen, port_sets=port_sets, lake=None if topic else str(root),
                            out_lake=out_lake, honeypot_min_ports=honeypot_min_ports)
    except ValueError as exc:
        _fail(str(exc), 2)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=1, default=str))
    else:
        for line in result.lines():
            click.echo(line)


def _adaptive(settings, port_sets):
    """The adaptive policy from the ``[policy]`` settings on ``port_sets`` (which carry the ranking)."""
    from pipelines.policy_setup import adaptive_params_from_settings
    from scanflow.adaptive import make_policy
    from scanflow.estimate import Estimator
    from scanflow.knowledge import load_knowledge

    ps = settings.policy
    kb = load_knowledge(ps.kb_paths(), builtin=ps.builtin_kb)
    return make_policy("adaptive", port_sets, Estimator(kb, min_confidence=ps.min_confidence),
                       adaptive_params=adaptive_params_from_settings(ps), exploited=kb.exploited_models())


def _port_sets(directory: str | None, root: Path, spec, topic: str | None):
    """The policy's port sets: published files (with ``ranking.json`` beside them when there is one),
    or derived from the recording in the lake."""
    from scanflow.policy import PolicyPortSets
    from scanflow.portsets import PortSet, Ranking

    if directory:
        sets = [PortSet.read(Path(directory) / f"{role}.json") for role in ("standard", "silent", "unknown")]
        ranking_file = Path(directory) / "ranking.json"
        if ranking_file.is_file():
            ranking = Ranking.read(ranking_file)
            if ranking.standard_digest == sets[0].digest:
                return PolicyPortSets(*sets, tuple(p for p, _ in ranking.ports), tuple(ranking.ddr_curve))
        return PolicyPortSets(*sets)
    if topic:
        raise ValueError("a replay from --topic needs --port-sets DIR (standard.json, silent.json, unknown.json)")
    from connectors.duckdb_catalog import Catalog
    from scanflow.knowledge import load_knowledge

    kb = load_knowledge()
    with Catalog(root) as cat:
        d = cat.derive_port_sets(policy=spec.source_policy, start=spec.start, end=spec.end,
                                 device_ports=kb.device_ports(), malware_ports=kb.malware_ports())
    click.echo(f"port sets derived from the recording: standard {len(d.standard):,}, silent {len(d.silent):,}, "
               f"unknown {len(d.unknown):,} ports", err=True)
    return PolicyPortSets.of(d)


def _offsets(topic: str | None, items: tuple[str, ...]) -> dict[tuple[str, int], int] | None:
    if not items:
        return None
    if not topic:
        raise ValueError("--from-offset/--to-offset need --topic")
    out = {}
    for item in items:
        partition, sep, offset = item.partition("=")
        if not sep or not partition.strip().isdigit() or not offset.strip().isdigit():
            raise ValueError(f"{item!r}: write PARTITION=OFFSET, e.g. 0=1200")
        out[(topic, int(partition))] = int(offset)
    return out


@click.group("lake")
def lake() -> None:
    """Look after the Parquet lake: archive the events topic, compact, show what it holds."""


@lake.command("compact")
@click.option("--lake", "lake_dir", default=None, help=_LAKE_HELP)
@click.option("--table", "tables", multiple=True,
              type=click.Choice(["events", "scans", "observations", "decisions", "ip_state"]),
              help="Compact only this table (repeatable; default: all).")
@click.option("--keep-duplicates", is_flag=True, help="Merge files without dropping duplicate keys.")
@pass_ctx
def lake_compact(obj: CliContext, lake_dir: str | None, tables: tuple[str, ...], keep_duplicates: bool) -> None:
    """Merge each hour partition's small files into files of about lake.target_file_mb, dropping
    duplicate keys; safe to run while writers and queries run."""
    from connectors.lake_settings import lake_settings
    from connectors.parquet_lake import compact

    results = compact(_root(obj, lake_dir), tables or None, lake_settings(obj.settings), dedupe=not keep_duplicates)
    for r in results:
        if r.skipped:
            click.echo(f"{r.table}: skipped ({r.skipped})")
        else:
            click.echo(f"{r.table}: {r.partitions} partitions compacted, files {r.files_before} -> {r.files_after}, "
                       f"rows {r.rows_before:,} -> {r.rows_after:,}")


@lake.command("info")
@click.option("--lake", "lake_dir", default=None, help=_LAKE_HELP)
@pass_ctx
def lake_info(obj: CliContext, lake_dir: str | None) -> None:
    """Files, rows and distinct rows of each table."""
    from connectors.duckdb_catalog import Catalog

    root = _root(obj, lake_dir)
    with Catalog(root) as cat:
        click.echo(f"lake {root}")
        for name, c in cat.counts().items():
            click.echo(f"{name:<13} {c['files']:>7,} files {c['rows']:>14,} rows {c['unique']:>14,} distinct")


@lake.command("archive")
@click.option("--lake", "lake_dir", default=None, help=_LAKE_HELP)
@click.option("--topic", default=None, help="Events topic (default: topics.events).")
@click.option("--live", is_flag=True, help="Keep archiving new records (consumer group scanflow-archive).")
@click.option("--start", default=None, help="Bounded: first record time (ISO 8601 or epoch seconds).")
@click.option("--end", default=None, help="Bounded: records before this time (default: up to the current end).")
@pass_ctx
def lake_archive(obj: CliContext, lake_dir: str | None, topic: str | None, live: bool, start: str | None,
                 end: str | None) -> None:
    """Archive the events topic (ScanEvent, ScanDone) into the lake's events and scans tables."""
    from connectors.duckdb_sql import as_time

    def ms(value, flag):
        # A bad time is the user's input, not a crash: one line naming the accepted forms.
        try:
            t = as_time(value)
        except ValueError as exc:
            _fail(f"{flag}: {exc}", 2)
        return None if t is None else int(t.timestamp() * 1000)

    start_ms, end_ms = ms(start, "--start"), ms(end, "--end")
    if live and (start or end):
        _fail("--live reads from the group's committed offsets; leave out --start/--end", 2)
    _require_topics(obj, {"--topic" if topic else "topics.events": topic or obj.settings.topics.events,
                          "topics.dead_letter": obj.settings.topics.dead_letter})
    from pipelines.archive import run_archive

    result = run_archive(obj.settings, root=str(_root(obj, lake_dir)), topic=topic,
                         stop=None if live else ("end" if end is None else None),
                         start_time_ms=start_ms, stop_time_ms=end_ms)
    if result is not None:
        click.echo(f"archived {result.rows:,} records into {result.files} files; {result.dead_letters} dead letters")


@lake.command("record-sim")
@click.option("--lake", "lake_dir", default=None, help=_LAKE_HELP)
@click.option("--ips", type=click.IntRange(min=100), default=10_000, show_default=True, help="Addresses in the world.")
@click.option("--weeks", type=click.FloatRange(min=0.5), default=2.0, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--survey-ips", type=click.IntRange(min=1000), default=100_000, show_default=True,
              help="Addresses of the full-port survey the port sets are derived from.")
@pass_ctx
def lake_record_sim(obj: CliContext, lake_dir: str | None, ips: int, weeks: float, seed: int, survey_ips: int) -> None:
    """Record a simulated standard scan into the lake: a synthetic world (scanflow.world) probed
    every 12 h on the standard set, as ScanEvents and ScanDones (events and scans tables), and the
    derived port sets in <lake>/_portsets/. Then evaluate the efficient policy on it with
    `scanflow replay --lake L --port-sets L/_portsets --out EVAL` and `scanflow report --lake EVAL`."""
    from connectors.lake_settings import lake_settings
    from connectors.parquet_lake import LakeWriter
    from connectors.sim_recorder import world_standard_records
    from scanflow.estimate import Estimator
    from scanflow.knowledge import load_knowledge
    from scanflow.policy import EfficientPolicy, PolicyPortSets, params_from_settings
    from scanflow.simulate import make_schedule
    from scanflow.evaluation import EvaluationConfig, derive_policy_sets
    from scanflow.lifecycle.untracked import bulk_silent_rule, first_probe_rounds
    from scanflow.world import World

    root = _root(obj, lake_dir)
    kb = load_knowledge()
    params = params_from_settings(obj.settings.policy)
    cfg = EvaluationConfig(ips=ips, weeks=weeks, seeds=(seed,), survey_ips=survey_ips)
    derivation, _ = derive_policy_sets(cfg, kb)
    from scanflow.portsets import write_derivation

    sets = PolicyPortSets.of(derivation)
    write_derivation(derivation, root / "_portsets")   # the three sets and ranking.json
    world = World.generate(cfg.world_config(), seed, horizon_days=weeks * 7, kb=kb)
    rule = bulk_silent_rule(EfficientPolicy(sets, Estimator(kb), params), params.standard_interval)
    schedule = make_schedule(world.n_ips, seed, world.horizon, slot=params.standard_interval,
                             silent_rounds=first_probe_rounds(rule))
    counts = {"ScanEvent": 0, "ScanDone": 0}
    batch: dict[str, list] = {"events": [], "scans": []}
    with LakeWriter(root, lake_settings(obj.settings)) as writer:
        for schema, record in world_standard_records(world, schedule, sets.standard):
            counts[schema] += 1
            table = "events" if schema == "ScanEvent" else "scans"
            batch[table].append(record)
            if len(batch[table]) >= 100_000:
                writer.write(table, batch[table])
                batch[table] = []
        for table, records in batch.items():
            writer.write(table, records)
    click.echo(f"recorded {counts['ScanEvent']:,} ScanEvents and {counts['ScanDone']:,} ScanDones of "
               f"{world.n_ips:,} addresses over {schedule.n_slots} rounds into {root}; port sets in {root / '_portsets'}")


COMMANDS = [query, report, replay, lake]

"""``scanflow pipeline``: run the Beam scheduler pipeline (live) or replay recorded events (bounded).

Beam and the ``pipelines`` package are imported inside the commands, so ``scanflow --help`` stays
fast and the core stays free of Beam.
"""

from __future__ import annotations

import datetime as dt
import logging

import click

from scanflow.cli import CliContext, pass_ctx

RUNNERS = ("prism", "flink", "dataflow")


def _when(value: str) -> float:
    """A time as POSIX seconds or ISO 8601 (UTC when no zone is given)."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither POSIX seconds nor an ISO 8601 time "
                                 "(e.g. 2024-01-31T12:00:00Z)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.timestamp()


def _print_counters(result) -> None:
    from pipelines.scheduler import counters

    for name, value in sorted(counters(result).items()):
        click.echo(f"  {name:<45} {value:>12,}")


@click.group("pipeline")
def pipeline() -> None:
    """The Beam scheduler pipeline (see docs/PIPELINE.md)."""


@pipeline.command("run")
@click.option("--runner", type=click.Choice(RUNNERS), default=None,
              help="Beam runner (default: the beam.runner setting, prism). flink needs Beam's Flink job "
                   "server jar, dataflow a GCP project: see docs/RUNNERS.md.")
@click.option("--job-endpoint", default=None, metavar="HOST:PORT",
              help="Submit to a running job server (e.g. a shared Prism) instead of starting one.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Cancel the pipeline after this long (default: run until Ctrl-C).")
@click.option("--pipeline-arg", "pipeline_args", multiple=True, metavar="ARG",
              help="Extra Beam pipeline argument, e.g. --pipeline-arg=--parallelism=2 (repeatable).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve the job's counters for Prometheus on 127.0.0.1:PORT/metrics "
                   "(scanflow_scheduler_*; 0 picks a free port). Default: off.")
@pass_ctx
def run(obj: CliContext, runner, job_endpoint, duration, pipeline_args, metrics_port) -> None:
    """Consume scanflow.events, decide per IP with the efficient policy and send ScanCommands to
    scanflow.commands (sweeps included); state changes go to scanflow.ip-state. Resumes from the
    consumer group's offsets and the ip-state topic after a restart."""
    from connectors.kafka_admin import require_topics
    from pipelines.runners import final_state
    from pipelines.scheduler import run_live
    from pipelines.settings import pipeline_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = obj.settings
    ps = pipeline_settings(settings)
    extra = list(pipeline_args)
    if job_endpoint:
        extra.append(f"--job_endpoint={job_endpoint}")
    chosen = runner or settings.beam.runner
    if chosen == "fnapi":
        raise click.UsageError("the FnApiRunner runs bounded pipelines only; use `scanflow pipeline replay`, "
                               "or --runner prism for the live scheduler")
    t = settings.topics
    # Bad input first (exit 2); then one line naming `scanflow topics create` (exit 4) instead of a
    # reader failing after 30 s.
    require_topics(settings.kafka, {"topics.events": t.events, "topics.commands": t.commands,
                                    "topics.ip_state": t.ip_state, "topics.dead_letter": t.dead_letter,
                                    "topics.kb_updates": t.kb_updates})
    click.echo(f"scheduler: {settings.topics.events} -> {settings.topics.commands} on {chosen}"
               f" (group {ps.group_id}; sweeps over {len(ps.sweep_ranges)} ranges)")

    def started(result):
        click.echo(f"scheduler: running ({'for %g s' % duration if duration else 'Ctrl-C to stop'})")
        if metrics_port is not None:
            from pipelines.metrics_endpoint import start_metrics_server

            server = start_metrics_server(result, "127.0.0.1", metrics_port)
            click.echo(f"scheduler: metrics on http://127.0.0.1:{server.server_address[1]}/metrics")

    result = run_live(settings, ps, runner=runner, extra=extra, duration_s=duration, on_start=started)
    click.echo(f"scheduler: {final_state(result)}")
    _print_counters(result)


@pipeline.command("replay")
@click.option("--since", "since", required=True, help="Start of the window (POSIX seconds or ISO 8601).")
@click.option("--until", "until", required=True, help="End of the window, exclusive.")
@click.option("--archive-dir", default="", help="Write observations and decisions to this Parquet lake.")
@click.option("--timers", is_flag=True,
              help="Decide with the live scheduler's per-IP stage (state and timers) instead of the batch "
                   "stage: the same decisions, several times slower.")
@pass_ctx
def replay(obj: CliContext, since, until, archive_dir, timers) -> None:
    """Replay scanflow.events of a time window through the same stages, bounded, on the FnApiRunner.
    Each IP's rounds are decided at once (batch), or with --timers as the live scheduler does.
    Nothing is sent to Kafka; decisions (and observations) go to --archive-dir when given."""
    from pipelines.scheduler import run_replay
    from pipelines.settings import pipeline_settings

    start, stop = _when(since), _when(until)
    if stop <= start:
        raise click.BadParameter("--until must be after --since", param_hint="--until")
    result = run_replay(obj.settings, pipeline_settings(obj.settings), since=start, until=stop,
                        archive_dir=archive_dir, batch=not timers)
    click.echo(f"replay {since} .. {until}: {result.state}")
    _print_counters(result)


COMMANDS = [pipeline]

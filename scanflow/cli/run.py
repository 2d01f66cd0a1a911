"""``scanflow run``: the main job, the whole loop on local defaults (see :mod:`scanflow.loop`)."""

from __future__ import annotations

import ipaddress
import sys
import time
from pathlib import Path

import click

from scanflow.cli import CliContext, pass_ctx


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"scanflow: error: {message}", err=True)
    sys.exit(code)


@click.command("run")
@click.option("--ips", type=int, default=20_000, show_default=True,
              help="Addresses in the synthetic world (sim backend).")
@click.option("--days", type=float, default=7.0, show_default=True, help="Virtual days to run.")
@click.option("--day-seconds", type=float, default=None,
              help="Wall seconds per virtual day (the policy's durations are compressed to match). "
                   "Default: 20 on the sim world; on a real network the fastest clock the scans fit in, "
                   "worked out from the address count, port sets and agent rates (printed at the start).")
@click.option("--agents", type=int, default=2, show_default=True, help="Agent processes.")
@click.option("--scheduler-jobs", type=int, default=1, show_default=True,
              help="Scheduler jobs on the one Prism, each owning an equal share of the events partitions "
                   "(pipeline.partitions j/n): one Python worker per job, so more than one core. At most the "
                   "events topic's partitions.")
@click.option("--backend", type=click.Choice(["sim", "connect", "masscan"]), default="sim", show_default=True,
              help="sim: synthetic world, no packets. connect: real TCP connects to --allow only. masscan: "
                   "SYN discovery with masscan (root; --set agent.masscan_interface=... "
                   "agent.masscan_router_mac=...), banners by connect.")
@click.option("--allow", multiple=True, metavar="CIDR",
              help="Allowlist for a real backend (required there; repeatable).")
@click.option("--policy", "policy_name", type=click.Choice(["adaptive", "paper"]), default=None,
              help="The efficient policy: adaptive (light sweeps every 12 h, a follow-up minutes after "
                   "anything new) or paper (the paper's method). Default: policy.name of the "
                   "configuration (adaptive).")
@click.option("--no-first-pass", is_flag=True,
              help="Do not begin with a first pass over every address (the policy's initial set); the "
                   "blocks' sweeps are then spread over the sweep period from the start.")
@click.option("--contact", default="", help="Operator contact sent as User-Agent (connect backend).")
@click.option("--rate", type=float, default=0.0, help="Packets/s cap per agent (default: agent setting; "
                                                      "sim: 1,000,000 virtual).")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the synthetic world.")
@click.option("--run-dir", type=click.Path(file_okay=False), default=None,
              help="Logs, port sets and spec of this run (default: <infra.state_dir>/runs/<run id>).")
@click.option("--lake", "lake_dir", type=click.Path(file_okay=False), default=None,
              help="Lake of this run (default: <run dir>/lake).")
@click.option("--out", "report_dir", type=click.Path(file_okay=False), default=None,
              help="Report directory (default: <run dir>/report).")
@click.option("--no-report", is_flag=True, help="Skip `scanflow report` at the end.")
@click.option("--keep-topics", is_flag=True, help="Keep the run's Kafka topics (default: deleted at the end; "
                                                  "the lake keeps the archive).")
@click.option("--skip-kafka-up", is_flag=True, help="Do not start the local broker (an external cluster).")
@click.option("--keep-kafka", is_flag=True,
              help="Leave the local broker running at the end when this run started it (default: stopped, "
                   "its data kept; a broker that was running before the run is always left running).")
@click.option("--dashboard/--no-dashboard", default=None,
              help="Start `scanflow serve` on the run's lake and print its address (default: on when the output "
                   "is a terminal). It runs on its own: the run does not wait for it, and it keeps serving the "
                   "finished lake after the run ends until it is killed (its pid is printed).")
@click.option("--dashboard-port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Port of the dashboard on 127.0.0.1 (0: a free one).")
@pass_ctx
def run(obj: CliContext, ips, days, day_seconds, agents, scheduler_jobs, backend, allow, policy_name, no_first_pass, contact, rate, seed,
        run_dir, lake_dir, report_dir, no_report, keep_topics, skip_kafka_up, keep_kafka, dashboard,
        dashboard_port) -> None:
    """The whole loop: Kafka up, the run's topics, the scheduler on Prism, sim agents scanning a
    synthetic internet in accelerated virtual time, the Parquet lake; a progress line while it runs;
    at the end of the virtual period a clean stop, a DuckDB summary and `scanflow report`.

    Defaults: 20,000 IPs, 7 virtual days of 20 s each (about 3 minutes), 2 agents, no packets sent.
    `--backend connect --allow CIDR` scans a real allowlist instead (nothing outside it)."""
    from scanflow.config import REPO_ROOT
    from scanflow.loop.spec import LoopSpec

    # Bad input: one line naming the fix, before anything starts.
    if ips < 1 or ips > 1 << 24:
        _fail(f"--ips {ips}: give 1..16777216 addresses, e.g. --ips 20000")
    if days <= 0:
        _fail(f"--days {days}: give a positive number of virtual days, e.g. --days 7")
    if day_seconds is not None and day_seconds < 1:
        _fail(f"--day-seconds {day_seconds}: give at least 1 wall second per virtual day, e.g. --day-seconds 20")
    if not 1 <= agents <= 64:
        _fail(f"--agents {agents}: give 1..64 agent processes, e.g. --agents 2")
    if rate < 0:
        _fail(f"--rate {rate}: give a positive packets/s cap, e.g. --rate 1000")
    if scheduler_jobs != 1:
        _check_scheduler_jobs(obj.settings, scheduler_jobs)
    if backend == "sim" and allow:
        _fail("--allow applies to --backend connect or masscan; the sim world is 10.0.0.0 + --ips addresses")
    if backend != "sim":
        if not allow:
            _fail(f"--backend {backend} scans real hosts: give an explicit allowlist, e.g. --allow 127.0.0.1/32")
        for entry in allow:
            try:
                net = ipaddress.ip_network(entry, strict=True)
            except ValueError:
                _fail(f"--allow {entry!r}: not a CIDR with zero host bits; write e.g. 127.0.0.0/24")
            if net.version != 4:
                _fail(f"--allow {entry}: the loop sweeps IPv4 ranges only")

    import dataclasses

    settings = obj.settings
    root = click.get_current_context().find_root()
    cli_args: list[str] = []
    if root.params.get("config_file"):
        cli_args += ["--config", root.params["config_file"]]
    set_items = list(root.params.get("set_items") or ())
    if policy_name:
        # Every child (scheduler, agents, report) sees the same policy as this process.
        set_items.append(f"policy.name={policy_name}")
        settings = dataclasses.replace(settings, policy=dataclasses.replace(settings.policy, name=policy_name))
    for item in set_items:
        cli_args += ["--set", item]

    spec = LoopSpec(run_dir=Path("."), lake_dir=Path("."), report_dir=Path("."), ips=ips, days=days,
                    day_seconds=day_seconds or 20.0, agents=agents, backend=backend, allow=tuple(allow), seed=seed,
                    rate=rate, contact=contact, keep_topics=keep_topics, report=not no_report,
                    cli_args=tuple(cli_args), config_file=root.params.get("config_file"),
                    set_items=tuple(set_items), first_pass=not no_first_pass, scheduler_jobs=scheduler_jobs)
    clock_line = ""
    if backend != "sim":
        from scanflow.loop.spec import plan_real_clock

        plan = plan_real_clock(spec, settings)
        spec.first_pass_window_s = plan.first_pass_s
        if day_seconds is None:
            spec.day_seconds = plan.day_seconds
            clock_line = f"clock: {plan.describe()}"
        elif day_seconds < plan.day_seconds:
            clock_line = (f"clock: warning: --day-seconds {day_seconds:g} is faster than the scans fit in "
                          f"({plan.describe()}); rescans may fall due before their scans end")
        if days * spec.day_seconds < plan.first_pass_s:
            clock_line += (f"\nclock: warning: the run ({days * spec.day_seconds:.0f} s) ends before the first pass "
                           f"(~{plan.first_pass_s:.0f} s) can cover every address; raise --days")
    day_seconds = spec.day_seconds
    state_dir = Path(settings.infra.state_dir)
    if not state_dir.is_absolute():
        state_dir = REPO_ROOT / state_dir
    spec.run_dir = Path(run_dir).resolve() if run_dir else state_dir / "runs" / spec.run_id
    spec.lake_dir = Path(lake_dir).resolve() if lake_dir else spec.run_dir / "lake"
    spec.report_dir = Path(report_dir).resolve() if report_dir else spec.run_dir / "report"

    what = (f"{ips:,} synthetic IPs (sim backend, no packets)" if backend == "sim"
            else f"allowlist {', '.join(allow)} ({backend} backend, real probes)")
    jobs = f", {scheduler_jobs} scheduler jobs" if scheduler_jobs > 1 else ""
    click.echo(f"scanflow run {spec.run_id}: {what}; {settings.policy.name} policy; {days:g} virtual days at "
               f"{day_seconds:g} s/day (~{days * day_seconds:.0f} s), {agents} agent(s){jobs}; run dir {spec.run_dir}")
    if clock_line:
        click.echo(clock_line)
    started = time.monotonic()
    started_kafka = False
    if not skip_kafka_up:
        from scanflow.cli.stack import run_kafka_script

        running = run_kafka_script(obj, "status", quiet=True, SCANFLOW_INFRA_STATUS_TIMEOUT_S="3") == 0
        click.echo(f"[1/7] kafka broker ({settings.kafka.bootstrap_servers}) ...")
        rc = run_kafka_script(obj, "up")
        if rc != 0:
            _fail(f"kafka broker failed (exit {rc}); see the lines above, or use --skip-kafka-up "
                  "with an external cluster", 1)
        started_kafka = not running
    try:
        _loop(spec, settings, dashboard, dashboard_port, started)
    finally:
        if started_kafka and not keep_kafka:
            click.echo("kafka: stopping the broker this run started (its data is kept; --keep-kafka leaves it "
                       "running) ...")
            run_kafka_script(obj, "down")


def _loop(spec, settings, dashboard, dashboard_port, started: float) -> None:
    """The run itself once the broker answers: the loop, its summary and the closing lines."""
    from connectors.kafka_admin import require_topics
    from scanflow.config import ConfigError
    from scanflow.loop.orchestrate import Loop
    from scanflow.loop.spec import LoopError
    from scanflow.loop.summary import format_summary

    require_topics(settings.kafka, {})   # the broker answers (one line and exit 4 if not); the run makes its topics
    loop = Loop(spec, settings, echo=click.echo)
    if dashboard if dashboard is not None else sys.stdout.isatty():
        from scanflow.loop.launch import start_dashboard

        loop.dashboard_url, pid = start_dashboard(spec, port=dashboard_port)
        click.echo(f"dashboard: {loop.dashboard_url}  (pid {pid}; it keeps serving the lake after the run; "
                   f"stop it with: kill {pid})")
    try:
        result = loop.run()
    except (LoopError, ConfigError) as exc:
        _fail(str(exc), 1)
    for line in format_summary(result, spec):
        click.echo(line)
    if not result.interrupted and result.progress.commands == 0:
        click.echo("scanflow run: warning: no scan command was issued in the whole run, so nothing was "
                   "scanned; run longer (--days) or keep the first pass (drop --no-first-pass)")
    elif not result.interrupted and result.progress.events == 0:
        click.echo("scanflow run: warning: scans ran but no address answered; check the allowlist and "
                   "the agents' logs in the run dir")
    click.echo(f"scanflow run: {'interrupted' if result.interrupted else 'done'} in "
               f"{time.monotonic() - started:.0f} s")
    if loop.dashboard_url:
        click.echo(f"dashboard: {loop.dashboard_url} (still serving this run's lake)")
    if result.interrupted:
        sys.exit(130)


def _check_scheduler_jobs(settings, jobs: int) -> None:
    """``--scheduler-jobs``: 1..the run's events partitions (each job must own at least one)."""
    from connectors.kafka_admin import load_topic_specs
    from scanflow.config import ConfigError

    try:
        events = next(t for t in load_topic_specs(settings.topics) if t.logical == "events")
    except ConfigError as exc:
        _fail(str(exc))
    if not 1 <= jobs <= events.partitions:
        _fail(f"--scheduler-jobs {jobs}: give 1..{events.partitions} (the events topic's partitions in "
              f"{settings.topics.file}), e.g. --scheduler-jobs 2")
    if jobs > 1 and settings.policy.moves:
        _fail(f"--scheduler-jobs {jobs}: policy.moves decides the addresses of a /24 together, which one job of "
              "several cannot (events are keyed by address); use --scheduler-jobs 1 or --set policy.moves=false")


COMMANDS = [run]

"""``scanflow infra``, ``scanflow topics`` and ``scanflow up``: the local stack."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import click

from scanflow.cli import CliContext, pass_ctx
from scanflow.config import REPO_ROOT

KAFKA_SCRIPT = REPO_ROOT / "infra" / "kafka" / "kafka.sh"
PRISM_SCRIPT = REPO_ROOT / "infra" / "prism" / "build.sh"
FLINK_SCRIPT = REPO_ROOT / "infra" / "flink" / "fetch.sh"


def run_kafka_script(obj: CliContext, action: str, *, quiet: bool = False, **extra_env: str) -> int:
    """Run infra/kafka/kafka.sh ACTION with the configured ports and state dir (``quiet``: its output
    dropped; ``extra_env``: more variables for the script, e.g. a shorter status timeout).

    The broker's port is ``infra.kafka_port``, the same setting clients derive their address from;
    an explicit ``kafka.bootstrap_servers`` on this machine that misses it is said once here (the
    script is given the CLI's resolved settings, not the raw client variable, so it does not say it
    again).
    """
    mismatch = obj.settings.bootstrap_mismatch()
    if mismatch and mismatch not in obj.warnings:
        click.echo(f"scanflow: warning: {mismatch}", err=True)
        obj.warnings.append(mismatch)
    env = {k: v for k, v in os.environ.items() if k != "SCANFLOW_KAFKA_BOOTSTRAP_SERVERS"}
    env.update(obj.settings.infra.script_env(), SCANFLOW_PYTHON=sys.executable, **extra_env)
    out = subprocess.DEVNULL if quiet else None
    return subprocess.call(["bash", str(KAFKA_SCRIPT), action], env=env, stdout=out, stderr=out)


def _kafka_action(action: str, doc: str) -> click.Command:
    @click.command(action, help=doc)
    @pass_ctx
    def command(obj: CliContext) -> None:
        sys.exit(run_kafka_script(obj, action))
    return command


@click.group("infra")
def infra() -> None:
    """Fetch, start, stop and inspect the local Kafka broker, or a three-node cluster (KRaft, 127.0.0.1)."""


for _action, _doc in (
    ("fetch", "Resolve the broker jars from Maven Central into infra/.cache (once)."),
    ("down", "Stop the broker, or every node of the cluster (TERM, then KILL after 30 s); data is kept."),
    ("status", "Exit 0 once the broker (every node of the cluster) answers; 3 if it is not running."),
    ("reset", "Stop the broker (or the cluster) and wipe its data dir."),
):
    infra.add_command(_kafka_action(_action, _doc))


@infra.command("up")
@click.option("--brokers", type=click.IntRange(1, 9), default=None,
              help="1 = one broker; 3 = a replicated cluster (replication 3, min.insync.replicas 2) on "
                   "infra.kafka_port, +2, +4 (default: infra.kafka_brokers).")
@pass_ctx
def infra_up(obj: CliContext, brokers: int | None) -> None:
    """Start the broker or cluster (idempotent: a node that is down is started) and wait until it answers."""
    if brokers is not None and brokers != obj.settings.infra.kafka_brokers:
        import dataclasses

        from scanflow.config import ConfigError

        infra_settings = dataclasses.replace(obj.settings.infra, kafka_brokers=brokers)
        try:
            infra_settings.validate()
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
        kafka = obj.settings.kafka
        if obj.settings.bootstrap_derived:
            kafka = dataclasses.replace(kafka, bootstrap_servers=infra_settings.local_bootstrap())
        obj.settings = dataclasses.replace(obj.settings, infra=infra_settings, kafka=kafka)
        if brokers > 1:
            click.echo(f"infra: clients reach this cluster with infra.kafka_brokers={brokers} "
                       f"(env SCANFLOW_INFRA_KAFKA_BROKERS={brokers}) or kafka.bootstrap_servers="
                       f"{infra_settings.local_bootstrap()}")
    sys.exit(run_kafka_script(obj, "up"))


@infra.command("prism")
def infra_prism() -> None:
    """Build (once) and cache Beam's Prism runner for the installed apache-beam version."""
    sys.exit(subprocess.call(["bash", str(PRISM_SCRIPT)]))


@infra.command("flink")
def infra_flink() -> None:
    """Fetch Beam's Flink job server jar for the installed Beam version (see docs/RUNNERS.md)."""
    sys.exit(subprocess.call(["bash", str(FLINK_SCRIPT)]))


@click.group("topics")
def topics() -> None:
    """Kafka topics from the declarative list (infra/topics.toml)."""


@topics.command("create")
@click.option("--file", "path", default=None, help="Topic list (default: topics.file setting).")
@pass_ctx
def topics_create(obj: CliContext, path: str | None) -> None:
    """Create or reconcile the four scanflow topics; safe to run any number of times."""
    from connectors.kafka_admin import admin_client, apply_topics, load_topic_specs, require_topics

    specs = load_topic_specs(obj.settings.topics, path)
    require_topics(obj.settings.kafka, {})      # no broker: one line and exit 4, not a 30 s traceback
    admin = admin_client(obj.settings.kafka)
    try:
        apply_topics(admin, specs, report=lambda line: click.echo(f"topics: {line}"))
    finally:
        admin.close()


@topics.command("list")
@pass_ctx
def topics_list(obj: CliContext) -> None:
    """List the topics on the cluster with their partition counts."""
    from connectors.kafka_admin import admin_client, require_topics

    require_topics(obj.settings.kafka, {})
    admin = admin_client(obj.settings.kafka)
    try:
        names = sorted(admin.list_topics())
        for t in admin.describe_topics(names):
            click.echo(f"{t['name']}\t{len(t['partitions'])} partitions")
    finally:
        admin.close()


@click.command("up")
@pass_ctx
def up(obj: CliContext) -> None:
    """Bring the local stack up: broker, topics, Prism runner; then print its status."""
    started = time.monotonic()
    steps = [("kafka broker", lambda: run_kafka_script(obj, "up")),
             ("prism runner", lambda: subprocess.call(["bash", str(PRISM_SCRIPT)]))]
    for i, (name, step) in enumerate(steps, 1):
        click.echo(f"[{i}/{len(steps) + 1}] {name} ...")
        rc = step()
        if rc != 0:
            click.echo(f"scanflow: error: {name} failed (exit {rc}); see the lines above", err=True)
            sys.exit(rc)
    click.echo(f"[{len(steps) + 1}/{len(steps) + 1}] topics ...")
    ctx = click.get_current_context()
    ctx.invoke(topics_create, path=None)
    ctx.invoke(topics_list)
    click.echo(f"stack up in {time.monotonic() - started:.1f} s; "
               f"Kafka at {obj.settings.kafka.bootstrap_servers}")


COMMANDS = [infra, topics, up]

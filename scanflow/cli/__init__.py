"""The ``scanflow`` command line.

Command groups live in their own modules and are registered explicitly in ``COMMANDS`` below. I/O
packages (``connectors``, ``pipelines``, ``probe_agent``) are imported inside commands, never at module
level, so ``scanflow --help`` is fast and the core stays free of Beam and Kafka.
"""

from __future__ import annotations

import sys

import click

from scanflow import __version__
from scanflow.config import ConfigError, KafkaNotReady, Settings, load_settings, parse_set_options


class CliContext:
    """What every command receives: the validated settings."""

    def __init__(self, settings: Settings, warnings: list[str] | None = None):
        self.settings = settings
        #: Warnings about the configuration already printed (one line each, on stderr).
        self.warnings = list(warnings or ())


pass_ctx = click.make_pass_decorator(CliContext)


class _Group(click.Group):
    """Turns configuration errors raised anywhere in a command into one line and exit code 2, and a
    broker that does not answer or a missing topic into one line and exit code 4."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            click.echo(f"scanflow: error: {exc}", err=True)
            sys.exit(2)
        except KafkaNotReady as exc:
            click.echo(f"scanflow: error: {exc}", err=True)
            sys.exit(KafkaNotReady.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="scanflow")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="TOML configuration file (default: $SCANFLOW_CONFIG or ./scanflow.toml).")
@click.option("--set", "set_items", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override one setting, e.g. --set kafka.bootstrap_servers=host:9092 (repeatable).")
@click.pass_context
def main(ctx: click.Context, config_file: str | None, set_items: tuple[str, ...]) -> None:
    """scanflow: continuous IoT scanning that finds what an exhaustive scan finds with a few
    percent of its traffic."""
    warnings: list[str] = []
    try:
        settings = load_settings(config_file, parse_set_options(set_items), warnings=warnings)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    for line in warnings:
        click.echo(f"scanflow: warning: {line}", err=True)
    ctx.obj = CliContext(settings, warnings)


@main.command("config")
@pass_ctx
def show_config(obj: CliContext) -> None:
    """Print the effective configuration (after file, environment and --set) as TOML."""
    import dataclasses

    for section in dataclasses.fields(obj.settings):
        click.echo(f"[{section.name}]")
        for key, value in dataclasses.asdict(getattr(obj.settings, section.name)).items():
            shown = "***" if "password" in key and value else value
            if isinstance(shown, str):
                shown = '"' + shown.replace("\\", "\\\\").replace('"', '\\"') + '"'
            elif isinstance(shown, bool):
                shown = str(shown).lower()
            elif isinstance(shown, (list, tuple)):
                shown = "[" + ", ".join(repr(v) for v in shown) + "]"
            note = ""
            if section.name == "kafka" and key == "bootstrap_servers" and obj.settings.bootstrap_derived:
                note = "   # not set: the local broker on infra.kafka_port"
            click.echo(f"{key} = {shown}{note}")
        click.echo()


def _register() -> None:
    from scanflow.cli import agent, evaluate, inventory, lake, pipeline, policy, portsets, run, serve, stack

    # ADD A COMMAND MODULE HERE: each module exposes COMMANDS, a list of click commands/groups.
    modules = [stack, policy, portsets, evaluate, lake, inventory, serve, agent, pipeline, run]
    for module in modules:
        for command in module.COMMANDS:
            main.add_command(command)


_register()

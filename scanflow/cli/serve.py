"""``scanflow serve``: the dashboard of a lake (:mod:`scanflow.dashboard.app`)."""

from __future__ import annotations

import sys

import click

from scanflow.cli import CliContext, pass_ctx


@click.command("serve")
@click.option("--lake", default=None, help="Lake root directory (default: the [lake] root setting).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. The pages show what was found and exposed: keep it on loopback "
                   "or behind an authenticating proxy.")
@click.option("--port", type=click.IntRange(0, 65535), default=8600, show_default=True, help="TCP port.")
@pass_ctx
def serve(obj: CliContext, lake: str | None, host: str, port: int) -> None:
    """Serve the dashboard: run progress and health, the inventory with search, changes, exposure to
    known malware, efficiency. Read-only (GET only); follows a lake that a run is still writing."""
    from scanflow.cli.lake import _root
    from scanflow.dashboard.app import serve as run_server

    root = _root(obj, lake)
    if not root.exists():
        click.echo(f"scanflow: error: no lake at {root}; pass --lake DIR (a run's lake is <run dir>/lake)", err=True)
        sys.exit(1)
    from scanflow.cli.inventory import configured_kb

    kb = configured_kb(obj)
    click.echo(f"scanflow serve: dashboard of {root} on http://{host}:{port}/ (Ctrl-C stops it)")
    run_server(root, host, port, kb=kb)


COMMANDS = [serve]

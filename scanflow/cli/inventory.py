"""``scanflow hosts``, ``scanflow host IP`` and ``scanflow exposure``: what the scans found, from the lake.

The queries are :mod:`connectors.inventory` and :mod:`connectors.exposure`; the same ones feed the
dashboard (``scanflow serve``), so the terminal and the pages agree. Banners are escaped in every
output (:func:`connectors.report.cell_text`).
"""

from __future__ import annotations

import json
import sys

import click

from scanflow.cli import CliContext, pass_ctx

_LAKE_HELP = "Lake root directory (default: the [lake] root setting)."


def configured_kb(obj: CliContext):
    """The knowledge base of the ``[policy]`` settings (built-in files plus ``kb_files``)."""
    from scanflow.knowledge import load_knowledge

    ps = obj.settings.policy
    return load_knowledge(ps.kb_paths(), builtin=ps.builtin_kb)


def _open(obj: CliContext, lake: str | None):
    from connectors.inventory import Inventory
    from scanflow.cli.lake import _root

    root = _root(obj, lake)
    if not root.exists():
        click.echo(f"scanflow: error: no lake at {root}; pass --lake DIR (a run's lake is <run dir>/lake)", err=True)
        sys.exit(1)
    return Inventory(root, configured_kb(obj))


def _day(value) -> str:
    return "" if value is None else f"{value:.2f}"


@click.command("hosts")
@click.option("--lake", default=None, help=_LAKE_HELP)
@click.option("--vendor", default=None, help="Vendor (exact, any case), e.g. Hikvision.")
@click.option("--model", default=None, help="Model id or name (substring), e.g. hikvision-ipc.")
@click.option("--category", default=None, help="Device category, e.g. camera, router, printer.")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Only hosts with this port open.")
@click.option("--malware", default=None, help="Only hosts exposed to this malware family (id or name), e.g. mirai.")
@click.option("--prefix", default=None, help="Only addresses in this CIDR, e.g. 10.0.4.0/24.")
@click.option("--since", default=None,
              help="Only hosts new or changed since: ISO 8601 time, epoch seconds, or Nd (N days before the "
                   "lake's last round; virtual days on a compressed run).")
@click.option("--state", type=click.Choice(["up", "gone"]), default=None, help="Only hosts up, or gone.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line (with the estimate's evidence).")
@pass_ctx
def hosts(obj: CliContext, lake, vendor, model, category, port, malware, prefix, since, state, as_json) -> None:
    """The inventory: each address that answered, with its device estimate, open ports, threats,
    first and last seen, last change, back-off step and next scan (days are virtual days of a
    compressed run)."""
    with _open(obj, lake) as inv:
        try:
            found = inv.hosts(vendor=vendor, model=model, category=category, port=port, malware=malware,
                              prefix=prefix, since=inv.parse_since(since), state=state, evidence=as_json)
        except ValueError as exc:
            click.echo(f"scanflow: error: {exc}", err=True)
            sys.exit(2)
        if as_json:
            for h in found:
                click.echo(json.dumps(h.to_json(), ensure_ascii=False, sort_keys=True))
            return
        import pyarrow as pa

        from connectors.report import format_table

        rows = [{"ip": h.ip, "state": h.state, "device": h.device or "?", "category": h.category or "",
                 "ports": " ".join(map(str, h.open_ports)), "threats": len(h.threats),
                 "first_day": _day(h.first_seen_day), "last_day": _day(h.last_seen_day),
                 "changed_day": _day(h.last_change_day), "step": h.backoff_step,
                 "next_day": _day(h.next_scan_day)} for h in found]
        names = ["ip", "state", "device", "category", "ports", "threats", "first_day", "last_day", "changed_day",
                 "step", "next_day"]
        table = pa.Table.from_pylist(rows) if rows else pa.table({n: pa.array([], pa.string()) for n in names})
        click.echo(format_table(table), nl=False)
        if inv.clock.compressed:
            click.echo(f"(days are virtual days since the run started; one took {inv.clock.scale * 86_400:g} "
                       "wall seconds)")


@click.command("host")
@click.argument("ip")
@click.option("--lake", default=None, help=_LAKE_HELP)
@click.option("--json", "as_json", is_flag=True, help="The picture and the timeline as one JSON object.")
@pass_ctx
def host(obj: CliContext, ip: str, lake, as_json: bool) -> None:
    """One address: its current picture and its timeline (every round and decision)."""
    from connectors.report import cell_text

    with _open(obj, lake) as inv:
        try:
            picture, timeline = inv.host(ip)
        except ValueError as exc:
            click.echo(f"scanflow: error: {exc}", err=True)
            sys.exit(2)
        if as_json:
            click.echo(json.dumps({"host": picture.to_json() if picture else None,
                                   "timeline": [_json_event(e) for e in timeline]}, ensure_ascii=False))
            return
        if picture is None and not timeline:
            click.echo(f"{cell_text(ip)}: never seen in this lake")
            return
        if picture is not None:
            h = picture
            click.echo(f"{h.ip}  {h.state}  {h.device or 'not estimated'}"
                       + (f" ({h.vendor} {h.model}, {h.category})" if h.model else ""))
            click.echo(f"  open ports {' '.join(map(str, h.open_ports))}; threats {', '.join(h.threats) or 'none'}")
            click.echo(f"  first seen day {_day(h.first_seen_day)}, last seen day {_day(h.last_seen_day)}, "
                       f"last change day {_day(h.last_change_day)}; back-off step {h.backoff_step}, "
                       f"next scan day {_day(h.next_scan_day) or '-'}")
            for e in h.evidence:
                click.echo(f"  evidence: {e['kind']} {cell_text(e['value'])}"
                           + (f" on {e['port']}" if e["port"] is not None else "") + f" ({e['weight']:.2f})")
            for port, banner in sorted(h.banners.items()):
                click.echo(f"  banner {port}: {cell_text(banner, 160)}")
        click.echo("timeline:")
        for e in timeline:
            if e["what"] == "round":
                click.echo(f"  day {_day(e['day'])}  round     {e['policy']:<9} ports {' '.join(map(str, e['ports'])) or '-'}"
                           f"  device {e['device'] or '?'}")
            else:
                click.echo(f"  day {_day(e['day'])}  decision  {e['reason']:<14} {e['status']}  step {e['backoff_step']}"
                           + (f"  next in {e['interval_days']:g} d" if e["interval_days"] is not None else ""))


def _json_event(e: dict) -> dict:
    from connectors.inventory import iso

    out = dict(e)
    out["at"] = iso(e["at"])
    if "next_scan" in out:
        out["next_scan"] = iso(e["next_scan"])
    return out


@click.command("exposure")
@click.option("--lake", default=None, help=_LAKE_HELP)
@click.option("--new-days", type=float, default=7.0, show_default=True,
              help="Exposures first seen in this many last days count as new.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per family and model.")
@pass_ctx
def exposure(obj: CliContext, lake, new_days: float, as_json: bool) -> None:
    """For each malware family and model: devices exposing the ports it uses, where, since when, new."""
    from dataclasses import asdict

    from connectors.exposure import exposure as build

    with _open(obj, lake) as inv:
        rep = build(inv, new_days=new_days)
        if as_json:
            for e in rep.malware + rep.models:
                click.echo(json.dumps(asdict(e), sort_keys=True))
            return
        click.echo(f"{'family':<16} {'devices':>7} {'of':>5} {'new':>4}  since day  top prefixes")
        for e in rep.malware:
            if e.devices:
                click.echo(f"{e.id:<16} {e.devices:>7} {e.total:>5} {e.new:>4}  {_day(e.since_day):>9}  "
                           + ", ".join(f"{p} ({n})" for p, n in e.prefixes[:3]))
        quiet = [e.id for e in rep.malware if not e.devices]
        if quiet:
            click.echo(f"no exposed device: {', '.join(quiet)}")


COMMANDS = [hosts, host, exposure]

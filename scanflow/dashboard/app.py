"""The dashboard's web application (Starlette, Jinja2 templates with autoescaping, DuckDB over the lake).

Pages (all GET):

``/``            the run (its ``_run.json``: status, virtual day, events, commands, lake rows, dead
                 letters, the scheduler's consumer lag, its processes) and the lake at a glance
``/hosts``       the inventory, with search and filters (the same query as ``scanflow hosts``)
``/host/{ip}``   one address: picture, evidence, banners, timeline
``/changes``     new, changed, gone and moved devices
``/exposure``    per malware family and per model: devices exposing its ports, where, since, trend, new
``/efficiency``  traffic and attempts per day, back-off intervals, and the comparison with a standard
                 scan only where the lake holds one
``/api/hosts``   the inventory as JSON (``scanflow hosts --json``)

Each request opens its own read-only view of the lake (an in-memory DuckDB over the Parquet files),
so the pages follow a lake that ``scanflow run`` is still writing. Nothing on the server changes
anything: no route accepts another method than GET (and HEAD).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from connectors.exposure import exposure
from connectors.inventory import Inventory, iso
from connectors.lake_meta import read_run_meta
from connectors.report import cell_text

TEMPLATES = Path(__file__).parent / "templates"
#: No script, no frame, nothing from elsewhere: a banner that gets past escaping still cannot run.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'"


def _finite(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def pct(value: Any) -> str:
    """A share as a percentage; "n/a" for anything that is not a finite number."""
    return f"{float(value):.1%}" if _finite(value) else "n/a"


def num(value: Any, digits: int = 0) -> str:
    """A number with thousands separators; "n/a" for None, NaN or infinity."""
    if not _finite(value):
        return "n/a"
    return f"{float(value):,.{digits}f}"


def day(value: Any) -> str:
    """A (virtual) day number, or a dash."""
    return f"{float(value):.2f}" if _finite(value) else "-"


def make_env() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=pct, num=num, day=day, safe_text=lambda v, n=200: cell_text(v, n), iso=iso)
    return env


class Dashboard:
    """The pages of one lake (see the module docstring)."""

    def __init__(self, lake: str | Path, kb: Any = None):
        self.lake = Path(lake)
        self.kb = kb
        self.env = make_env()

    def inventory(self) -> Inventory:
        if self.kb is None:
            from scanflow.knowledge import load_knowledge

            self.kb = load_knowledge()
        return Inventory(self.lake, self.kb)

    def render(self, name: str, **ctx: Any) -> HTMLResponse:
        meta = read_run_meta(self.lake)
        page = self.env.get_template(name).render(lake=self.lake.name, meta=meta, page=name.split(".")[0], **ctx)
        return HTMLResponse(page, headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                                           "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"})

    # -- pages ---------------------------------------------------------------------------------

    def overview(self, request: Request) -> HTMLResponse:
        meta = read_run_meta(self.lake)
        with self.inventory() as inv:
            counts = inv.cat.counts(distinct=False)
            hosts = inv.all_hosts()
            rep = exposure(inv)
            changes = inv.changes()
            _, last = inv.span()
            clock = inv.clock
        up = [h for h in hosts if h.state == "up"]
        summary = {"hosts": len(hosts), "up": len(up), "gone": len(hosts) - len(up),
                   "estimated": sum(1 for h in up if h.device), "exposed": sum(1 for h in up if h.threats),
                   "families": sum(1 for e in rep.malware if e.devices)}
        age = None if meta is None or meta.updated_at is None else max(0.0, time.time() - meta.updated_at)
        return self.render("overview.html", counts=counts, summary=summary, clock=clock, last=last,
                           recent=list(reversed(changes))[:15], age=age,
                           top=[e for e in rep.malware if e.devices][:5])

    def hosts(self, request: Request) -> HTMLResponse:
        q = request.query_params
        filters = {k: (q.get(k) or None) for k in ("vendor", "model", "category", "malware", "prefix", "state")}
        error = ""
        port = q.get("port") or None
        with self.inventory() as inv:
            try:
                found = inv.hosts(search=q.get("q") or None, port=int(port) if port else None,
                                  since=inv.parse_since(q.get("since") or None), **filters)
            except ValueError as exc:
                found, error = [], str(exc)
            clock = inv.clock
        return self.render("hosts.html", hosts=found, q=q.get("q", ""), filters=filters, port=port or "",
                           since=q.get("since", ""), error=error, clock=clock)

    def host(self, request: Request) -> HTMLResponse:
        ip = request.path_params["ip"]
        with self.inventory() as inv:
            try:
                picture, timeline = inv.host(ip)
            except ValueError:
                picture, timeline = None, []
            threats = [] if picture is None else inv.threats_of(picture)
            clock = inv.clock
        status = 200 if picture is not None or timeline else 404
        response = self.render("host.html", ip=ip, host=picture, timeline=timeline, threats=threats, clock=clock)
        response.status_code = status
        return response

    def changes(self, request: Request) -> HTMLResponse:
        with self.inventory() as inv:
            since = inv.parse_since(request.query_params.get("since") or None)
            changes = list(reversed(inv.changes(since)))
        return self.render("changes.html", changes=changes)

    def exposure(self, request: Request) -> HTMLResponse:
        with self.inventory() as inv:
            rep = exposure(inv)
            clock = inv.clock
        return self.render("exposure.html", rep=rep, clock=clock)

    def efficiency(self, request: Request) -> HTMLResponse:
        with self.inventory() as inv:
            cat = inv.cat
            cat.prepare()
            attempts = cat.attempts_over_time().to_pylist()
            latest = cat.backoff_latest().to_pylist()
            traffic = cat.traffic()
            daily = cat.sql("SELECT day, policy, CAST(sum(scans) AS BIGINT) AS scans, "
                            "CAST(sum(attempts) AS BIGINT) AS attempts, CAST(sum(packets) AS BIGINT) AS packets, "
                            "CAST(sum(bytes) AS BIGINT) AS bytes FROM _scans_daily GROUP BY ALL "
                            "ORDER BY day, policy").to_pylist()
            clock = inv.clock
        baseline = bool(traffic["standard_attempts"])
        if clock.compressed:   # the catalog's days are virtual days as dates; show their numbers
            first = min((r["day"] for r in daily + attempts), default=None)
            for r in daily + attempts:
                r["day"] = f"day {(r['day'] - first).days}"
        return self.render("efficiency.html", attempts=attempts, latest=latest, traffic=traffic, daily=daily,
                           baseline=baseline, clock=clock)

    def api_hosts(self, request: Request) -> JSONResponse:
        q = request.query_params
        with self.inventory() as inv:
            found = inv.hosts(search=q.get("q") or None, category=q.get("category") or None,
                              malware=q.get("malware") or None)
            return JSONResponse([h.to_json() for h in found])


def create_app(lake: str | Path, kb: Any = None) -> Starlette:
    """The ASGI application serving the lake at ``lake``."""
    d = Dashboard(lake, kb)
    routes = [Route("/", d.overview, methods=["GET"]), Route("/hosts", d.hosts, methods=["GET"]),
              Route("/host/{ip}", d.host, methods=["GET"]), Route("/changes", d.changes, methods=["GET"]),
              Route("/exposure", d.exposure, methods=["GET"]), Route("/efficiency", d.efficiency, methods=["GET"]),
              Route("/api/hosts", d.api_hosts, methods=["GET"])]
    return Starlette(routes=routes)


def serve(lake: str | Path, host: str = "127.0.0.1", port: int = 8600, *, kb: Any = None,
          log_level: str = "warning") -> None:
    """Serve the dashboard until interrupted (uvicorn, one process); ``kb``: the knowledge base that
    names models and threats (default: the built-in one)."""
    import uvicorn

    uvicorn.run(create_app(lake, kb), host=host, port=port, log_level=log_level, access_log=False,
                server_header=False)

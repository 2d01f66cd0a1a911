"""What the scans found, per address: the inventory of ``scanflow hosts``, ``scanflow host`` and the
dashboard, read from the lake with DuckDB (:class:`connectors.duckdb_catalog.Catalog`).

- :meth:`Inventory.hosts`: the current picture of every address that ever answered: its device
  estimate (model, vendor, category; the evidence on request), open ports and banners, a TLS
  certificate line if a banner carries one, first seen, last seen, last change, back-off step and
  next scan, and whether it is up or gone. Filters: vendor, model, category, port, malware, prefix,
  since.
- :meth:`Inventory.host`: one address: its picture and its timeline (every round and decision).
- :meth:`Inventory.changes`: what changed, as events: ``new`` (first answer), ``changed`` (the
  device estimate changed), ``gone`` (the scheduler demoted it: silent), ``moved`` (the same
  fingerprint, seen at exactly two addresses, left one and appeared at the other).

The picture comes from the ``observations`` (every round's answer; present in live and evaluation
lakes), the latest ``decisions`` (back-off step, next scan) and ``ip_state`` (the scheduler's own
first-seen and last-change times) when the lake has them. Times are the lake's wall-clock times;
``*_day`` fields are virtual days of a compressed run (:mod:`connectors.lake_meta`). Banners are raw
bytes here: show them through :func:`connectors.report.cell_text`.

Size: the picture holds one row per responsive address (a few percent of the space); filters run
in Python on it. A national lake with millions of responsive addresses would push them into SQL.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from connectors.lake_meta import LakeClock

#: Statuses of a decision that leave an address tracked as responsive.
RESPONSIVE = ("RESPONSIVE_ESTIMATED", "RESPONSIVE_UNESTIMATED")
_CERT = re.compile(rb"(?:cert\s+|subject=)(.*)", re.IGNORECASE)


def epoch(value: Any) -> float | None:
    """A DuckDB timestamp (aware datetime) as epoch seconds."""
    if value is None:
        return None
    if isinstance(value, _dt.datetime):
        return value.timestamp()
    return float(value)


@dataclass
class Host:
    """The current picture of one address."""

    ip: str
    state: str                      # "up" (answered in its latest round) or "gone"
    device: str | None
    vendor: str | None
    model: str | None
    category: str | None
    open_ports: list[int]
    banners: dict[int, bytes]
    certificates: dict[int, bytes]
    fingerprint: str | None
    first_seen: float | None
    last_seen: float | None
    last_change: float | None
    backoff_step: int | None
    next_scan: float | None
    threats: list[str] = field(default_factory=list)
    evidence: list[dict[str, Any]] = field(default_factory=list)
    first_seen_day: float | None = None
    last_seen_day: float | None = None
    last_change_day: float | None = None
    next_scan_day: float | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready (banners as escaped text, times as ISO 8601 UTC)."""
        from connectors.report import cell_text

        doc = asdict(self)
        doc["banners"] = {str(p): cell_text(b, 1 << 12) for p, b in self.banners.items()}
        doc["certificates"] = {str(p): cell_text(b, 1 << 12) for p, b in self.certificates.items()}
        for key in ("first_seen", "last_seen", "last_change", "next_scan"):
            doc[key] = iso(getattr(self, key))
        for key in ("first_seen_day", "last_seen_day", "last_change_day", "next_scan_day"):
            doc[key] = None if doc[key] is None else round(doc[key], 3)
        return doc


@dataclass
class Change:
    """One change of one address: ``new``, ``changed``, ``gone`` or ``moved`` (``other``: the address
    it moved from)."""

    kind: str
    ip: str
    at: float | None
    device: str | None = None
    previous: str | None = None
    other: str | None = None
    day: float | None = None

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["at"] = iso(self.at)
        doc["day"] = None if self.day is None else round(self.day, 3)
        return doc


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC text."""
    if ts is None:
        return None
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def certificate(banner: bytes | None) -> bytes | None:
    """The certificate line a TLS grabber put in a banner (``cert CN=...``), if any."""
    if not banner:
        return None
    m = _CERT.search(bytes(banner))
    return m.group(1).strip() if m else None


_PICTURE_SQL = """
WITH obs AS (SELECT ip, ended_at AS ts, device, fingerprint, responses, len(responses) > 0 AS up
             FROM observations_dedup),
     resp AS (SELECT * FROM obs WHERE up),
     seen AS (SELECT ip, min(ts) AS first_seen, max(ts) AS last_seen, arg_max(responses, ts) AS responses,
                     arg_max(device, ts) AS device, arg_max(fingerprint, ts) AS fingerprint
              FROM resp GROUP BY ip),
     chg AS (SELECT ip, ts, device, lag(device) OVER (PARTITION BY ip ORDER BY ts) AS prev,
                    row_number() OVER (PARTITION BY ip ORDER BY ts) AS n FROM resp WHERE device IS NOT NULL),
     last_change AS (SELECT s.ip, coalesce(max(c.ts) FILTER (WHERE c.n = 1 OR c.prev <> c.device), s.first_seen)
                            AS last_change
                     FROM seen s LEFT JOIN chg c USING (ip) GROUP BY s.ip, s.first_seen),
     latest AS (SELECT ip, arg_max(up, ts) AS up FROM obs GROUP BY ip),
     dec AS (SELECT ip, arg_max(backoff_step, decided_at) AS step, arg_max(next_scan_at, decided_at) AS next_scan,
                    arg_max(status, decided_at) AS status FROM decisions_dedup GROUP BY ip),
     st AS (SELECT ip, arg_max(first_seen_at, updated_at) AS st_first, arg_max(last_changed_at, updated_at) AS st_change,
                   arg_max(open_ports, updated_at) AS st_ports, arg_max(device, updated_at) AS st_device,
                   arg_max(status, updated_at) AS st_status
            FROM ip_state_dedup GROUP BY ip),
     ban AS (SELECT ip, map_from_entries(list(struct_pack(k := port, v := banner))) AS banners
             FROM (SELECT ip, r.port AS port, arg_max(r.banner, ended_at) AS banner
                   FROM (SELECT ip, ended_at, unnest(responses) AS r FROM observations_dedup)
                   WHERE r.banner IS NOT NULL GROUP BY ALL) GROUP BY ip)
SELECT s.ip, s.first_seen, s.last_seen, s.responses, coalesce(st.st_device, s.device) AS device, s.fingerprint,
       c.last_change, l.up, d.step, d.next_scan, coalesce(st.st_status, d.status) AS status, st.st_first, st.st_change, st.st_ports, b.banners
FROM seen s JOIN last_change c USING (ip) JOIN latest l USING (ip)
     LEFT JOIN dec d USING (ip) LEFT JOIN st USING (ip) LEFT JOIN ban b USING (ip)
ORDER BY s.ip
"""


class Inventory:
    """The inventory of the lake at ``root`` (see the module docstring). ``kb``: the knowledge base
    that names models, vendors, categories and threats (default: the built-in one)."""

    def __init__(self, root: str | Path, kb: Any = None, *, catalog: Any = None):
        from connectors.duckdb_catalog import Catalog

        if kb is None:
            from scanflow.knowledge import load_knowledge

            kb = load_knowledge()
        self.kb = kb
        self._own = catalog is None
        self.cat = catalog if catalog is not None else Catalog(root, threads=2)
        self.clock: LakeClock = self.cat.clock
        self._hosts: list[Host] | None = None

    def close(self) -> None:
        if self._own:
            self.cat.close()

    def __enter__(self) -> "Inventory":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the picture ---------------------------------------------------------------------------

    def all_hosts(self) -> list[Host]:
        """Every address that ever answered, in address order (computed once per Inventory)."""
        if self._hosts is None:
            rows = self.cat.sql(_PICTURE_SQL).to_pylist()
            self._hosts = sorted((self._host(r) for r in rows), key=lambda h: ipaddress.ip_address(h.ip))
        return self._hosts

    def _host(self, r: dict[str, Any]) -> Host:
        responses = r["responses"] or []
        # Open ports: the scheduler's state when the lake has it (a light probe of two ports does not
        # close the others), else the latest round. Banners: each open port's latest.
        ports = sorted(set(r["st_ports"]) if r["st_ports"] else {x["port"] for x in responses})
        latest = _as_dict(r["banners"])
        banners = {p: bytes(latest[p]) for p in ports if latest.get(p) is not None}
        certs = {p: c for p, b in banners.items() if (c := certificate(b)) is not None}
        model = self._model(r["device"])
        # Up or gone: the scheduler's latest word when the lake has one, else the latest round.
        gone = r["status"] not in RESPONSIVE if r["status"] is not None else not r["up"]
        h = Host(ip=r["ip"], state="gone" if gone else "up", device=r["device"],
                 vendor=model.vendor if model else None, model=model.name if model else None,
                 category=model.category if model else None, open_ports=ports, banners=banners,
                 certificates=certs, fingerprint=r["fingerprint"],
                 first_seen=epoch(r["st_first"]) or epoch(r["first_seen"]), last_seen=epoch(r["last_seen"]),
                 last_change=epoch(r["st_change"]) or epoch(r["last_change"]),
                 backoff_step=r["step"], next_scan=None if gone else epoch(r["next_scan"]))
        h.threats = [m.id for m in self.threats_of(h)]
        for key in ("first_seen", "last_seen", "last_change", "next_scan"):
            setattr(h, f"{key}_day", self.clock.day(getattr(h, key)))
        return h

    def _model(self, device: str | None):
        if not device:
            return None
        try:
            return self.kb.device(device)
        except KeyError:
            return None

    def threats_of(self, host: Host) -> list[Any]:
        """Malware families that infect the host's model and whose ports it has open."""
        model = self._model(host.device)
        if model is None:
            return []
        open_ports = set(host.open_ports)
        return [m for m in self.kb.malware_for(model) if open_ports & m.attack_on(model)[0]]

    def evidence(self, host: Host) -> list[dict[str, Any]]:
        """Why the estimator says what it says about this host (its latest answer, this knowledge)."""
        from scanflow.estimate import Estimator

        try:
            est = Estimator(self.kb).estimate(host.open_ports, host.banners)
        except Exception:  # noqa: BLE001 - evidence is an explanation, never a reason to fail a page
            return []
        return [{"kind": e.kind, "value": e.value, "port": e.port, "weight": round(e.weight, 3)}
                for e in est.evidence]

    def hosts(self, *, vendor: str | None = None, model: str | None = None, category: str | None = None,
              port: int | None = None, malware: str | None = None, prefix: str | None = None,
              since: float | None = None, state: str | None = None, search: str | None = None,
              evidence: bool = False) -> list[Host]:
        """The hosts matching every filter given. Text filters match case-insensitively: ``vendor``
        and ``category`` exactly, ``model`` the model id or name (substring), ``malware`` a family id
        or name among the host's threats; ``prefix`` is a CIDR (or a bare address); ``since``: new or
        changed at or after this time (epoch seconds); ``search``: a substring of the address,
        model, vendor, or a banner."""
        net = ipaddress.ip_network(prefix, strict=False) if prefix else None
        mw_ids = self._malware_ids(malware) if malware else None
        out = []
        for h in self.all_hosts():
            if vendor and (h.vendor or "").lower() != vendor.lower():
                continue
            if category and (h.category or "").lower() != category.lower():
                continue
            if model and model.lower() not in f"{h.device or ''} {h.model or ''}".lower():
                continue
            if port is not None and port not in h.open_ports:
                continue
            if mw_ids is not None and not set(h.threats) & mw_ids:
                continue
            if net is not None and ipaddress.ip_address(h.ip) not in net:
                continue
            if since is not None and max(h.first_seen or 0, h.last_change or 0) < since:
                continue
            if state and h.state != state:
                continue
            if search and not _matches(h, search.lower()):
                continue
            if evidence:
                h.evidence = self.evidence(h)
            out.append(h)
        return out

    def _malware_ids(self, text: str) -> set[str]:
        t = text.lower()
        return {m.id for m in self.kb.malware if t in (m.id.lower(), m.name.lower(), *map(str.lower, m.aliases))}

    # -- one address ---------------------------------------------------------------------------

    def host(self, ip: str) -> tuple[Host | None, list[dict[str, Any]]]:
        """One address's picture (None if it never answered) and its timeline: every round
        (``round``: ports, device, fingerprint) and decision (``decision``: reason, status, step,
        next scan), oldest first."""
        ip = str(ipaddress.ip_address(ip.strip()))
        picture = next((h for h in self.all_hosts() if h.ip == ip), None)
        if picture is not None:
            picture.evidence = self.evidence(picture)
        rounds = self.cat.sql(
            "SELECT ended_at AS ts, policy, status, device, fingerprint, "
            "list_sort(list_transform(responses, lambda r: r.port)) AS ports "
            "FROM observations_dedup WHERE ip = ? ORDER BY ended_at", [ip]).to_pylist()
        decisions = self.cat.sql(
            "SELECT decided_at AS ts, policy, reason, previous_status, status, device, backoff_step, next_scan_at "
            "FROM decisions_dedup WHERE ip = ? ORDER BY decided_at", [ip]).to_pylist()
        timeline = []
        for r in rounds:
            timeline.append({"at": epoch(r["ts"]), "what": "round", "policy": r["policy"], "status": r["status"],
                             "ports": r["ports"] or [], "device": r["device"], "fingerprint": r["fingerprint"]})
        for d in decisions:
            nxt = epoch(d["next_scan_at"])
            timeline.append({"at": epoch(d["ts"]), "what": "decision", "policy": d["policy"], "reason": d["reason"],
                             "status": d["status"], "previous_status": d["previous_status"], "device": d["device"],
                             "backoff_step": d["backoff_step"], "next_scan": nxt,
                             "interval_days": None if nxt is None else
                             round(self.clock.duration_s(nxt - epoch(d["ts"])) / 86_400, 2)})
        timeline.sort(key=lambda e: (e["at"] or 0, e["what"] != "round"))
        for e in timeline:
            e["day"] = None if (d := self.clock.day(e["at"])) is None else round(d, 3)
        return picture, timeline

    # -- changes -------------------------------------------------------------------------------

    def changes(self, since: float | None = None) -> list[Change]:
        """``new``, ``changed``, ``gone`` and ``moved`` events, oldest first (``since``: at or after)."""
        rows = self.cat.sql("""
            WITH resp AS (SELECT ip, ended_at AS ts, device, fingerprint FROM observations_dedup
                          WHERE len(responses) > 0),
                 first AS (SELECT ip, min(ts) AS ts, arg_min(device, ts) AS device FROM resp GROUP BY ip),
                 -- a round that could not estimate (a light probe of two ports) is not a change
                 est AS (SELECT *, lag(device) OVER (PARTITION BY ip ORDER BY ts) AS prev
                         FROM resp WHERE device IS NOT NULL)
            SELECT 'new' AS kind, ip, ts, device, NULL AS previous FROM first
            UNION ALL
            SELECT 'changed', ip, ts, device, prev FROM est WHERE prev IS NOT NULL AND prev <> device
            UNION ALL
            SELECT 'gone', ip, decided_at, device, previous_status FROM decisions_dedup
            WHERE previous_status IN ('RESPONSIVE_ESTIMATED', 'RESPONSIVE_UNESTIMATED')
              AND status NOT IN ('RESPONSIVE_ESTIMATED', 'RESPONSIVE_UNESTIMATED')""").to_pylist()
        out = [Change(r["kind"], r["ip"], epoch(r["ts"]), r["device"], r["previous"]) for r in rows]
        out += self._moves()
        for c in out:
            c.day = self.clock.day(c.at)
        out = [c for c in out if since is None or (c.at or 0) >= since]
        return sorted(out, key=lambda c: (c.at or 0, c.ip, c.kind))

    def _moves(self) -> list[Change]:
        """An estimated device's fingerprint seen at exactly two addresses, at the first only before
        the second, and the first address is gone (generic answers share fingerprints by chance)."""
        rows = self.cat.sql("""
            WITH fp AS (SELECT fingerprint, ip, min(ended_at) AS first, max(ended_at) AS last,
                               arg_max(device, ended_at) AS device
                        FROM observations_dedup
                        WHERE len(responses) > 0 AND fingerprint IS NOT NULL AND device IS NOT NULL GROUP BY ALL),
                 two AS (SELECT fingerprint FROM fp GROUP BY fingerprint HAVING count(*) = 2),
                 gone AS (SELECT ip FROM decisions_dedup GROUP BY ip
                          HAVING arg_max(status, decided_at) NOT IN ('RESPONSIVE_ESTIMATED', 'RESPONSIVE_UNESTIMATED'))
            SELECT a.ip AS src, b.ip AS dst, b.first AS at, b.device
            FROM fp a JOIN fp b USING (fingerprint) JOIN two USING (fingerprint) JOIN gone ON gone.ip = a.ip
            WHERE a.ip <> b.ip AND a.last < b.first""").to_pylist()
        return [Change("moved", r["dst"], epoch(r["at"]), r["device"], other=r["src"]) for r in rows]

    # -- the lake's span -----------------------------------------------------------------------

    def span(self) -> tuple[float | None, float | None]:
        """The first and last round's times in the lake."""
        row = self.cat.sql("SELECT min(ended_at) AS a, max(ended_at) AS b FROM observations").to_pylist()[0]
        return epoch(row["a"]), epoch(row["b"])

    def parse_since(self, text: str | None) -> float | None:
        """``--since``: ISO 8601, epoch seconds, or ``Nd`` (N virtual days before the lake's last round)."""
        if not text:
            return None
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*d\s*", text)
        if m:
            _, end = self.span()
            return None if end is None else end - float(m.group(1)) * 86_400 * self.clock.scale
        from connectors.duckdb_sql import as_time

        t = as_time(text)
        return None if t is None else t.timestamp()


def _as_dict(value: Any) -> dict[int, Any]:
    """A DuckDB MAP as Arrow gives it to Python (a list of pairs) or a dict."""
    if not value:
        return {}
    if isinstance(value, dict):
        return value
    return {k: v for k, v in value}


def _matches(h: Host, needle: str) -> bool:
    hay: Iterable[str] = (h.ip, h.device or "", h.model or "", h.vendor or "", h.category or "",
                          " ".join(map(str, h.open_ports)))
    if any(needle in x.lower() for x in hay):
        return True
    return any(needle.encode("utf-8", "replace") in b.lower() for b in h.banners.values())

"""Exposure: for each malware family and each device model, how many devices the scans found that
expose the ports it uses, where (prefixes), since when, the trend per day, and what is new.

A device is **exposed** to a malware family when the knowledge base says the family infects its
estimated model (its vendor, a trait of its family or the model itself: ``Malware.attack_on``) and the device's
latest answer has one of the family's ports open (``Malware.scan_ports``: ports it attacks or opens).
Only devices that are up count (their latest round answered and the scheduler has not demoted
them). The same definition, written as one DuckDB query, is in the tests.

``since``: the first round in which the device answered with one of those ports open. ``trend``:
per day (virtual days of a compressed run), the devices seen exposed in that day's rounds. ``new``:
exposures whose ``since`` is within the last ``new_days`` days (default 7) of the lake's last round.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from connectors.inventory import Host, Inventory, epoch


@dataclass
class Exposure:
    """One malware family (``kind="malware"``) or one model (``kind="model"``): its exposed devices."""

    kind: str
    id: str
    name: str
    ports: list[int]
    devices: int
    active: bool = False
    models: list[str] = field(default_factory=list)
    prefixes: list[tuple[str, int]] = field(default_factory=list)
    since: float | None = None
    since_day: float | None = None
    trend: list[tuple[int, int]] = field(default_factory=list)
    new: int = 0
    ips: list[str] = field(default_factory=list)
    #: Devices up of the models concerned (exposed or not).
    total: int = 0


@dataclass
class ExposureReport:
    """Every family's and model's exposure, and the devices newly exposed in the last ``new_days``
    days (``new``: one entry per address: ``ip``, ``since``, ``since_day``, ``malware`` ids)."""

    malware: list[Exposure]
    models: list[Exposure]
    new: list[dict[str, Any]]
    new_days: float


def _prefix(ip: str, bits: int = 24) -> str:
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))


def exposure(inv: Inventory, *, new_days: float = 7.0, prefix_bits: int = 24) -> ExposureReport:
    """The exposure report of the inventory's lake (see the module docstring)."""
    hosts = [h for h in inv.all_hosts() if h.state == "up"]
    first_open = _first_open(inv)
    day_rows = _daily_ports(inv)
    _, end = inv.span()
    new_after = None if end is None else end - new_days * 86_400 * inv.clock.scale
    new: list[dict[str, Any]] = []

    def build(kind: str, key: str, name: str, ports: set[int], exposed: list[Host], total: int,
              active: bool = False, models: list[str] | None = None) -> Exposure:
        firsts = {h.ip: min((first_open.get((h.ip, p)) for p in set(h.open_ports) & ports
                             if first_open.get((h.ip, p)) is not None), default=None) for h in exposed}
        since = min((t for t in firsts.values() if t is not None), default=None)
        ips = {h.ip for h in exposed}
        per_day: Counter[int] = Counter()
        for (ip, day), open_ports in day_rows.items():
            if ip in ips and open_ports & ports:
                per_day[day] += 1
        fresh = [ip for ip, t in firsts.items() if t is not None and new_after is not None and t >= new_after]
        if kind == "malware":
            new.extend({"malware": key, "ip": ip, "since": firsts[ip], "since_day": inv.clock.day(firsts[ip])}
                       for ip in fresh)
        return Exposure(kind, key, name, sorted(ports), len(exposed), active, models or [],
                        Counter(_prefix(h.ip, prefix_bits) for h in exposed).most_common(5), since,
                        inv.clock.day(since), sorted(per_day.items()), len(fresh), sorted(ips, key=ipaddress.ip_address),
                        total)

    # the ports a family uses on each model it attacks (its attack on that model, not every port it
    # uses anywhere: Satori's 37215 is a Huawei HG532 port, not a camera's)
    attack_ports: dict[tuple[str, str], frozenset[int]] = {}
    for d in inv.kb.devices:
        for m in inv.kb.malware:
            hit = m.attack_on(d)
            if hit is not None:
                attack_ports[(m.id, d.id)] = hit[0]
    malware = []
    for m in inv.kb.malware:
        infected = {d_id for (m_id, d_id) in attack_ports if m_id == m.id}
        exposed = [h for h in hosts if h.device in infected and set(h.open_ports) & attack_ports[(m.id, h.device)]]
        total = sum(1 for h in hosts if h.device in infected)
        used = set().union(*(attack_ports[(m.id, d_id)] for d_id in infected)) if infected else set(m.scan_ports)
        malware.append(build("malware", m.id, m.name, used, exposed, total, m.active,
                             sorted({h.device for h in exposed if h.device})))
    models = []
    for device_id in sorted({h.device for h in hosts if h.device}):
        try:
            d = inv.kb.device(device_id)
        except KeyError:
            continue
        families = inv.kb.malware_for(d)
        ports = set().union(*(attack_ports[(m.id, d.id)] for m in families)) if families else set()
        of_model = [h for h in hosts if h.device == device_id]
        exposed = [h for h in of_model if set(h.open_ports) & ports]
        e = build("model", d.id, d.name, ports, exposed, len(of_model), any(m.active for m in families),
                  sorted(m.id for m in families))
        models.append(e)
    malware.sort(key=lambda e: (-e.devices, e.id))
    models.sort(key=lambda e: (-e.devices, e.id))
    per_ip: dict[str, dict[str, Any]] = {}
    for x in new:
        entry = per_ip.setdefault(x["ip"], {"ip": x["ip"], "since": x["since"], "since_day": x["since_day"],
                                            "malware": []})
        entry["malware"].append(x["malware"])
        if x["since"] < entry["since"]:
            entry["since"], entry["since_day"] = x["since"], x["since_day"]
    grouped = sorted(per_ip.values(), key=lambda x: (x["since"] or 0, ipaddress.ip_address(x["ip"])))
    return ExposureReport(malware, models, grouped, new_days)


def _first_open(inv: Inventory) -> dict[tuple[str, int], float]:
    """(ip, port) -> the first round that found it open."""
    rows = inv.cat.sql("""
        SELECT ip, r.port AS port, min(ended_at) AS first
        FROM (SELECT ip, ended_at, unnest(responses) AS r FROM observations_dedup) GROUP BY ALL""").to_pylist()
    return {(r["ip"], r["port"]): epoch(r["first"]) for r in rows}


def _daily_ports(inv: Inventory) -> dict[tuple[str, int], set[int]]:
    """(ip, day index) -> ports seen open that day (days of the lake's clock, from its first round)."""
    rows = inv.cat.sql("""
        SELECT ip, _day(ended_at) - min(_day(ended_at)) OVER () AS day, list(DISTINCT r.port) AS ports
        FROM (SELECT ip, ended_at, unnest(responses) AS r FROM observations_dedup) GROUP BY ip, _day(ended_at)
        """).to_pylist()
    return {(r["ip"], int(r["day"])): set(r["ports"]) for r in rows}
